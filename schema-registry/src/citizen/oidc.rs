//! OpenID Connect for the citizen API: the verifier of ID tokens (signature against the
//! issuer's JWKS, `iss`, `aud`, `azp`, `exp`, `nbf`, `iat`, an algorithm allow-list, size
//! bounds), where the person's RUN comes from (`sub`, or ClaveÚnica's `RolUnico` claim, from the
//! ID token or the userinfo endpoint), the fetching of the issuer's keys (discovery checked,
//! refetched once on an unknown `kid`, no fetch storm while the issuer is down), and a
//! development issuer the registry serves itself when configured (`[oidc] dev_issuer = true`),
//! for `enlace up` and the tests. The development issuer signs a token for whoever asks: it is
//! never to be enabled in a federation with real people in it, and the registry refuses it
//! unless it listens only on loopback.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use enlace_certs::SigningKey;
use enlace_core::id::SubjectId;
use enlace_core::problem::{Problem, ProblemKind};
use serde::Deserialize;
use serde_json::{Value, json};

/// Longest ID token accepted.
pub const MAX_TOKEN: usize = 8 * 1024;
/// Longest access token accepted (ClaveÚnica mode).
pub const MAX_ACCESS_TOKEN: usize = 4 * 1024;
/// Largest discovery, JWKS or userinfo document read from the issuer.
const MAX_DOCUMENT: usize = 256 * 1024;
/// Clock skew allowed on `exp`, `nbf` and `iat`.
const LEEWAY_SECS: i64 = 60;
/// How long a development token lives.
const DEV_TOKEN_SECS: i64 = 600;
/// How long a fetched JWKS is trusted before it is fetched again.
const JWKS_TTL: Duration = Duration::from_secs(300);
/// After a fetch (successful or not), no other fetch for an unknown `kid` before this.
const REFETCH_INTERVAL: Duration = Duration::from_secs(30);
/// After a failed fetch, wait this long before trying again (doubling up to the maximum).
const RETRY_FIRST: Duration = Duration::from_secs(5);
const RETRY_MAX: Duration = Duration::from_secs(300);
/// Keys fetched before may be used this long after the TTL while the issuer is unreachable.
const STALE_GRACE: Duration = Duration::from_secs(3600);
/// Most userinfo answers remembered (ClaveÚnica mode).
const USERINFO_CACHE: usize = 10_000;
/// The audience when none is configured.
pub const DEFAULT_AUDIENCE: &str = "enlace-citizen";
/// The header carrying the OAuth access token for the userinfo endpoint (ClaveÚnica mode).
pub const ACCESS_TOKEN_HEADER: &str = "enlace-access-token";

/// Where the person's identifier comes from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SubjectFrom {
    /// The ID token's `sub` is the person's identifier (`CL-RUN:12345678-5`).
    #[default]
    Sub,
    /// ClaveÚnica: `sub` is an opaque account number; the RUN is in the `RolUnico` claim
    /// (`{"numero": 12345678, "DV": "5", "tipo": "RUN"}`) of the ID token or, when absent there,
    /// of the issuer's userinfo endpoint, called with the access token the page sends in
    /// `Enlace-Access-Token` (its `sub` must be the ID token's).
    ClaveUnica,
}

/// The `[oidc]` table of the registry's configuration.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcConfig {
    /// Serve a development issuer at the registry's own URL (DEVELOPMENT ONLY: it signs a token
    /// for any subject asked for). Its tokens are the only ones accepted unless `issuer` is set.
    #[serde(default)]
    pub dev_issuer: bool,
    /// The issuer whose ID tokens the citizen API accepts (its discovery document names the
    /// JWKS). Without it and without `dev_issuer`, the citizen API is off.
    #[serde(default)]
    pub issuer: Option<String>,
    /// The `aud` the ID tokens must carry (the registry's client id at the issuer).
    #[serde(default)]
    pub audience: Option<String>,
    /// Where the RUN comes from: `sub` (the default) or `clave-unica`.
    #[serde(default)]
    pub subject_from: SubjectFrom,
}

impl OidcConfig {
    pub fn validate(&self) -> anyhow::Result<()> {
        if let Some(i) = &self.issuer {
            anyhow::ensure!(
                i.starts_with("https://") || i.starts_with("http://127.0.0.1"),
                "oidc.issuer: must be an https:// URL"
            );
        }
        Ok(())
    }
}

/// The development issuer: a key generated at start, and (in ClaveÚnica mode) the access
/// tokens it gave out.
pub struct DevIssuer {
    key: SigningKey,
    kid: String,
    subject_from: SubjectFrom,
    /// Access token → (opaque `sub`, person), for the development userinfo endpoint.
    access: Mutex<HashMap<String, (String, SubjectId)>>,
}

/// What the development token endpoint gives.
pub struct DevTokens {
    pub id_token: String,
    /// In ClaveÚnica mode, the access token for the userinfo endpoint.
    pub access_token: Option<String>,
}

impl DevIssuer {
    pub fn generate(subject_from: SubjectFrom) -> Result<DevIssuer, Problem> {
        let key = SigningKey::generate()?;
        let kid = enlace_description::sha256_hex(&key.public_key_bytes())[..16].to_string();
        Ok(DevIssuer {
            key,
            kid,
            subject_from,
            access: Mutex::new(HashMap::new()),
        })
    }

    fn jwk(&self) -> Value {
        json!({
            "kty": "OKP",
            "crv": "Ed25519",
            "alg": "EdDSA",
            "use": "sig",
            "kid": self.kid,
            "x": B64URL.encode(self.key.public_key_bytes()),
        })
    }

    /// An ID token for `sub`, from `issuer` to `audience`.
    pub fn token(&self, issuer: &str, audience: &str, sub: &SubjectId) -> String {
        self.tokens(issuer, audience, sub).id_token
    }

    /// The tokens for a person: an ID token whose `sub` is the person (or, in ClaveÚnica mode,
    /// an opaque account number, with an access token for the userinfo endpoint that tells the
    /// RUN, as ClaveÚnica does).
    pub fn tokens(&self, issuer: &str, audience: &str, person: &SubjectId) -> DevTokens {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let sub = match self.subject_from {
            SubjectFrom::Sub => person.to_string(),
            SubjectFrom::ClaveUnica => {
                let h = enlace_description::sha256_hex(person.to_string().as_bytes());
                u64::from_str_radix(&h[..12], 16).unwrap_or(0).to_string()
            }
        };
        let claims = json!({
            "iss": issuer,
            "aud": audience,
            "sub": sub,
            "iat": now,
            "exp": now + DEV_TOKEN_SECS,
        });
        let id_token = self.sign_claims(&claims);
        let access_token = (self.subject_from == SubjectFrom::ClaveUnica).then(|| {
            let mut bytes = [0u8; 24];
            rand::fill(&mut bytes);
            let t = B64URL.encode(bytes);
            let mut access = self.access.lock().unwrap_or_else(|p| p.into_inner());
            if access.len() > USERINFO_CACHE {
                access.clear();
            }
            access.insert(t.clone(), (sub.clone(), person.clone()));
            t
        });
        DevTokens {
            id_token,
            access_token,
        }
    }

    /// The development userinfo answer for an access token, in ClaveÚnica's form.
    pub fn userinfo(&self, access_token: &str) -> Option<Value> {
        let access = self.access.lock().unwrap_or_else(|p| p.into_inner());
        let (sub, person) = access.get(access_token)?;
        let (numero, dv) = person.value().split_once('-')?;
        Some(json!({
            "sub": sub,
            "RolUnico": {"numero": numero.parse::<u64>().ok()?, "DV": dv, "tipo": "RUN"},
            "name": {"nombres": ["Persona"], "apellidos": ["De", "Prueba"]},
        }))
    }

    /// A token with exactly these claims, signed with the development key (for tests of the
    /// verifier: expired, another audience, another issuer).
    pub fn sign_claims(&self, claims: &Value) -> String {
        let header = json!({"alg": "EdDSA", "typ": "JWT", "kid": self.kid});
        sign_jwt(&header, claims, |m| self.key.sign(m))
    }
}

/// `base64url(header).base64url(claims).base64url(sign(...))`.
pub fn sign_jwt(header: &Value, claims: &Value, sign: impl FnOnce(&[u8]) -> Vec<u8>) -> String {
    let input = format!(
        "{}.{}",
        B64URL.encode(header.to_string()),
        B64URL.encode(claims.to_string())
    );
    let sig = sign(input.as_bytes());
    format!("{input}.{}", B64URL.encode(sig))
}

/// One usable key of a JWKS.
#[derive(Debug, Clone)]
enum Key {
    Ed25519 { kid: Option<String>, x: Vec<u8> },
    P256 { kid: Option<String>, point: Vec<u8> },
}

impl Key {
    fn kid(&self) -> Option<&str> {
        match self {
            Key::Ed25519 { kid, .. } | Key::P256 { kid, .. } => kid.as_deref(),
        }
    }
}

fn parse_jwks(v: &Value) -> Vec<Key> {
    let Some(keys) = v["keys"].as_array() else {
        return Vec::new();
    };
    let b64 = |v: &Value| v.as_str().and_then(|s| B64URL.decode(s).ok());
    keys.iter()
        .take(100)
        .filter_map(|k| {
            let kid = k["kid"].as_str().map(String::from);
            match (k["kty"].as_str()?, k["crv"].as_str()?) {
                ("OKP", "Ed25519") => {
                    let x = b64(&k["x"])?;
                    (x.len() == 32).then_some(Key::Ed25519 { kid, x })
                }
                ("EC", "P-256") => {
                    let (x, y) = (b64(&k["x"])?, b64(&k["y"])?);
                    if x.len() != 32 || y.len() != 32 {
                        return None;
                    }
                    let mut point = vec![0x04];
                    point.extend_from_slice(&x);
                    point.extend_from_slice(&y);
                    Some(Key::P256 { kid, point })
                }
                _ => None,
            }
        })
        .collect()
}

/// What is known of the issuer's keys and of the last attempts to fetch them.
#[derive(Default)]
struct KeyState {
    /// The keys and when they were fetched.
    keys: Option<(Instant, Vec<Key>)>,
    /// The userinfo endpoint the discovery document named.
    userinfo: Option<String>,
    /// When the last fetch started, and when the next may start after failures.
    last_attempt: Option<Instant>,
    retry_at: Option<Instant>,
    retry_wait: Duration,
    /// Fetches made (discovery and JWKS together count as one), for tests and logs.
    fetches: u64,
}

/// The registry's OpenID Connect state: the accepted issuer and audience, its keys, and the
/// development issuer when enabled.
pub struct Oidc {
    pub issuer: String,
    pub audience: String,
    pub subject_from: SubjectFrom,
    pub dev: Option<DevIssuer>,
    /// The accepted issuer is the development issuer served here: its keys are at hand.
    own: bool,
    http: reqwest::Client,
    state: Mutex<KeyState>,
    /// One fetch at a time: concurrent verifications wait for it instead of fetching too.
    fetching: tokio::sync::Mutex<()>,
    /// Userinfo answers by SHA-256 of the access token: (ID token `sub`, person, until).
    userinfo: Mutex<HashMap<String, (String, SubjectId, i64)>>,
    /// [`REFETCH_INTERVAL`] and [`RETRY_FIRST`] (shorter in tests).
    refetch_interval: Duration,
    retry_first: Duration,
}

fn unauthenticated(detail: impl Into<String>) -> Problem {
    Problem::new(ProblemKind::Unauthenticated, detail)
}

fn unreachable(detail: String) -> Problem {
    Problem::new(
        ProblemKind::PeerUnreachable,
        format!("the OpenID Connect issuer: {detail}"),
    )
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    /// RFC 7515 §4.1.11: extensions the verifier must understand. This verifier implements
    /// none, so a header that carries `crit` at all is refused.
    #[serde(default)]
    crit: Option<Value>,
}

/// The RUN in a ClaveÚnica `RolUnico` claim: `{"numero": 12345678, "DV": "5", "tipo": "RUN"}`.
pub fn run_from_rol_unico(v: &Value) -> Result<SubjectId, Problem> {
    if v["tipo"].as_str() != Some("RUN") {
        return Err(unauthenticated("RolUnico: tipo is not RUN"));
    }
    let numero = match &v["numero"] {
        Value::Number(n) => n.as_u64().map(|n| n.to_string()),
        Value::String(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
            Some(s.clone())
        }
        _ => None,
    }
    .ok_or_else(|| unauthenticated("RolUnico: numero is not a number"))?;
    let dv = v["DV"]
        .as_str()
        .ok_or_else(|| unauthenticated("RolUnico: DV is missing"))?
        .to_ascii_uppercase();
    format!("CL-RUN:{numero}-{dv}")
        .parse::<SubjectId>()
        .map_err(|e| unauthenticated(format!("RolUnico: {e}")))
}

impl Oidc {
    /// The state for `cfg`; `own_url` is the registry's base URL (the development issuer's
    /// `iss`). `None` when the citizen API is off.
    pub fn new(cfg: &OidcConfig, own_url: &str) -> Result<Option<Oidc>, Problem> {
        let dev = if cfg.dev_issuer {
            tracing::warn!(
                "the development OpenID Connect issuer is on: anyone can sign in as anyone"
            );
            Some(DevIssuer::generate(cfg.subject_from)?)
        } else {
            None
        };
        let issuer = match (&cfg.issuer, &dev) {
            (Some(i), _) => i.trim_end_matches('/').to_string(),
            (None, Some(_)) => own_url.trim_end_matches('/').to_string(),
            (None, None) => return Ok(None),
        };
        let own = dev.is_some() && issuer == own_url.trim_end_matches('/');
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| Problem::new(ProblemKind::Internal, format!("http client: {e}")))?;
        Ok(Some(Oidc {
            own,
            issuer,
            audience: cfg
                .audience
                .clone()
                .unwrap_or_else(|| DEFAULT_AUDIENCE.into()),
            subject_from: cfg.subject_from,
            dev,
            http,
            state: Mutex::new(KeyState::default()),
            fetching: tokio::sync::Mutex::new(()),
            userinfo: Mutex::new(HashMap::new()),
            refetch_interval: REFETCH_INTERVAL,
            retry_first: RETRY_FIRST,
        }))
    }

    /// The development issuer's discovery document.
    pub fn discovery(&self) -> Value {
        json!({
            "issuer": self.issuer,
            "jwks_uri": format!("{}/oidc/jwks", self.issuer),
            "token_endpoint": format!("{}/oidc/dev/token", self.issuer),
            "userinfo_endpoint": format!("{}/oidc/userinfo", self.issuer),
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["EdDSA"],
        })
    }

    /// The development issuer's JWKS.
    pub fn jwks(&self) -> Value {
        json!({ "keys": self.dev.iter().map(DevIssuer::jwk).collect::<Vec<_>>() })
    }

    /// How many times the issuer's keys were fetched.
    pub fn fetches(&self) -> u64 {
        self.lock().fetches
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, KeyState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A document from the issuer, at most [`MAX_DOCUMENT`] bytes, no redirects.
    async fn get_json(
        &self,
        url: &str,
        bearer: Option<&str>,
        post: bool,
    ) -> Result<Value, Problem> {
        let mut req = if post {
            self.http.post(url)
        } else {
            self.http.get(url)
        };
        if let Some(t) = bearer {
            req = req.bearer_auth(t);
        }
        let mut resp = req
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let status = resp.status();
        if bearer.is_some() && matches!(status.as_u16(), 401 | 403) {
            // The bearer (the person's access token) was refused, not the issuer broken.
            return Err(unauthenticated(
                "the issuer did not accept the access token",
            ));
        }
        if !status.is_success() {
            return Err(unreachable(format!("{url} answered {status}")));
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| unreachable(e.to_string()))? {
            if body.len() + chunk.len() > MAX_DOCUMENT {
                return Err(unreachable(format!(
                    "{url}: larger than {MAX_DOCUMENT} bytes"
                )));
            }
            body.extend_from_slice(&chunk);
        }
        serde_json::from_slice(&body).map_err(|e| unreachable(format!("{url}: {e}")))
    }

    /// Fetches discovery then the JWKS; the discovery document must name this issuer.
    async fn fetch(&self) -> Result<(Vec<Key>, Option<String>), Problem> {
        let discovery = self
            .get_json(
                &format!("{}/.well-known/openid-configuration", self.issuer),
                None,
                false,
            )
            .await?;
        let named = discovery["issuer"].as_str().unwrap_or("");
        if named.trim_end_matches('/') != self.issuer {
            return Err(unreachable(format!(
                "the discovery document names issuer `{named}`, not `{}`",
                self.issuer
            )));
        }
        let jwks_uri = discovery["jwks_uri"]
            .as_str()
            .ok_or_else(|| unreachable("the discovery document names no jwks_uri".into()))?
            .to_string();
        let userinfo = discovery["userinfo_endpoint"].as_str().map(String::from);
        let keys = parse_jwks(&self.get_json(&jwks_uri, None, false).await?);
        Ok((keys, userinfo))
    }

    /// The keys to check a token with `kid` against: the cached ones while fresh and knowing
    /// the kid; otherwise one fetch (others wait for it), at most one per
    /// [`REFETCH_INTERVAL`] for unknown kids and none while backing off after a failure, in
    /// which case keys fetched before serve for a grace period.
    async fn keys(&self, kid: Option<&str>) -> Result<Vec<Key>, Problem> {
        if self.own {
            return Ok(parse_jwks(&self.jwks()));
        }
        let usable = |st: &KeyState| -> Option<Vec<Key>> {
            let (at, keys) = st.keys.as_ref()?;
            let knows = kid.is_none_or(|k| keys.iter().any(|x| x.kid() == Some(k)));
            (at.elapsed() < JWKS_TTL && knows).then(|| keys.clone())
        };
        if let Some(keys) = usable(&self.lock()) {
            return Ok(keys);
        }
        let _one = self.fetching.lock().await;
        let may_fetch = {
            let st = self.lock();
            if let Some(keys) = usable(&st) {
                return Ok(keys);
            }
            let now = Instant::now();
            let backing_off = st.retry_at.is_some_and(|t| now < t);
            let fresh_but_unknown_kid = st
                .keys
                .as_ref()
                .is_some_and(|(at, _)| at.elapsed() < JWKS_TTL);
            let recently = st
                .last_attempt
                .is_some_and(|t| t.elapsed() < self.refetch_interval);
            !(backing_off || fresh_but_unknown_kid && recently)
        };
        if may_fetch {
            self.lock().last_attempt = Some(Instant::now());
            let fetched = self.fetch().await;
            let mut st = self.lock();
            st.fetches += 1;
            match fetched {
                Ok((keys, userinfo)) => {
                    st.keys = Some((Instant::now(), keys.clone()));
                    st.userinfo = userinfo;
                    st.retry_at = None;
                    st.retry_wait = self.retry_first;
                    return Ok(keys);
                }
                Err(p) => {
                    let wait = st.retry_wait.max(self.retry_first);
                    st.retry_at = Some(Instant::now() + wait);
                    st.retry_wait = (wait * 2).min(RETRY_MAX);
                    tracing::warn!(problem = %p, retry_in_s = wait.as_secs(), "could not fetch the OpenID Connect issuer's keys");
                    if let Some((at, keys)) = &st.keys
                        && at.elapsed() < JWKS_TTL + STALE_GRACE
                    {
                        return Ok(keys.clone());
                    }
                    return Err(p);
                }
            }
        }
        let st = self.lock();
        match &st.keys {
            Some((at, keys)) if at.elapsed() < JWKS_TTL + STALE_GRACE => Ok(keys.clone()),
            _ => Err(unreachable(
                "its keys could not be fetched; trying again shortly".into(),
            )),
        }
    }

    /// Verifies an ID token (and, in ClaveÚnica mode, reads the RUN) and returns the person.
    /// Every failure of the token is `unauthenticated`.
    pub async fn verify(
        &self,
        token: &str,
        access_token: Option<&str>,
    ) -> Result<SubjectId, Problem> {
        let claims = self.verified_claims(token).await?;
        let sub = claims["sub"]
            .as_str()
            .filter(|s| !s.is_empty() && s.len() <= 256)
            .ok_or_else(|| unauthenticated("the ID token has no sub"))?;
        match self.subject_from {
            SubjectFrom::Sub => sub
                .parse::<SubjectId>()
                .map_err(|e| unauthenticated(format!("the ID token's sub: {e}"))),
            SubjectFrom::ClaveUnica => {
                if !claims["RolUnico"].is_null() {
                    return run_from_rol_unico(&claims["RolUnico"]);
                }
                let exp = claims["exp"].as_i64().unwrap_or(0);
                self.run_from_userinfo(sub, exp, access_token).await
            }
        }
    }

    /// ClaveÚnica: the RUN from the userinfo endpoint, called with the access token; the
    /// answer's `sub` must be the ID token's. Remembered until the ID token expires.
    async fn run_from_userinfo(
        &self,
        sub: &str,
        exp: i64,
        access_token: Option<&str>,
    ) -> Result<SubjectId, Problem> {
        let access = access_token
            .filter(|t| !t.is_empty() && t.len() <= MAX_ACCESS_TOKEN)
            .ok_or_else(|| {
                unauthenticated(format!(
                    "the ID token carries no RolUnico: send the access token in {ACCESS_TOKEN_HEADER}"
                ))
            })?;
        let key = enlace_description::sha256_hex(access.as_bytes());
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        if let Some((s, person, until)) = self
            .userinfo
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            && s == sub
            && now < *until
        {
            return Ok(person.clone());
        }
        let info = if self.own {
            self.dev
                .as_ref()
                .and_then(|d| d.userinfo(access))
                .ok_or_else(|| unauthenticated("the access token is not known to the issuer"))?
        } else {
            let endpoint = self.lock().userinfo.clone().ok_or_else(|| {
                unreachable("the discovery document names no userinfo_endpoint".into())
            })?;
            // ClaveÚnica's userinfo endpoint takes a POST with the bearer access token.
            self.get_json(&endpoint, Some(access), true).await?
        };
        if info["sub"].as_str() != Some(sub) {
            return Err(unauthenticated(
                "the userinfo answer is about another account than the ID token",
            ));
        }
        let person = run_from_rol_unico(&info["RolUnico"])?;
        let mut cache = self.userinfo.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= USERINFO_CACHE {
            cache.retain(|_, (_, _, until)| now < *until);
            if cache.len() >= USERINFO_CACHE {
                cache.clear();
            }
        }
        cache.insert(key, (sub.to_string(), person.clone(), exp));
        Ok(person)
    }

    /// The claims of a token whose signature, issuer, audience and times verify.
    async fn verified_claims(&self, token: &str) -> Result<Value, Problem> {
        if token.len() > MAX_TOKEN {
            return Err(unauthenticated(format!(
                "the ID token is longer than {MAX_TOKEN} bytes"
            )));
        }
        let mut parts = token.split('.');
        let (Some(h), Some(c), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(unauthenticated(
                "the ID token is not a signed JWT (three parts)",
            ));
        };
        let decode = |part: &str, what: &str| {
            B64URL
                .decode(part)
                .map_err(|_| unauthenticated(format!("the ID token's {what} is not base64url")))
        };
        let header: Header = serde_json::from_slice(&decode(h, "header")?)
            .map_err(|_| unauthenticated("the ID token's header is not a JOSE header"))?;
        if header.crit.is_some() {
            return Err(unauthenticated(
                "the ID token's header names critical extensions (`crit`), which are not understood",
            ));
        }
        if header.alg != "EdDSA" && header.alg != "ES256" {
            return Err(unauthenticated(format!(
                "the ID token's algorithm `{}` is not accepted (EdDSA, ES256)",
                header.alg
            )));
        }
        let sig = decode(s, "signature")?;
        let input = &token.as_bytes()[..h.len() + 1 + c.len()];
        let keys = self.keys(header.kid.as_deref()).await?;
        let kid_ok = |kid: Option<&str>| header.kid.is_none() || kid == header.kid.as_deref();
        let verified = keys.iter().any(|k| match k {
            Key::Ed25519 { kid, x } if header.alg == "EdDSA" && kid_ok(kid.as_deref()) => {
                enlace_certs::verify_ed25519(x, input, &sig)
            }
            Key::P256 { kid, point } if header.alg == "ES256" && kid_ok(kid.as_deref()) => {
                aws_lc_rs::signature::UnparsedPublicKey::new(
                    &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED,
                    point,
                )
                .verify(input, &sig)
                .is_ok()
            }
            _ => false,
        });
        if !verified {
            return Err(unauthenticated(
                "the ID token's signature does not verify with the issuer's keys",
            ));
        }
        let claims: Value = serde_json::from_slice(&decode(c, "claims")?)
            .map_err(|_| unauthenticated("the ID token's claims are not JSON"))?;
        self.check_claims(&claims)?;
        Ok(claims)
    }

    /// `iss`, `aud` (and `azp` when several audiences, or whenever present), `exp`, `nbf`, `iat`.
    fn check_claims(&self, claims: &Value) -> Result<(), Problem> {
        if claims["iss"].as_str() != Some(self.issuer.as_str()) {
            return Err(unauthenticated("the ID token is from another issuer"));
        }
        let (aud_ok, several) = match &claims["aud"] {
            Value::String(a) => (a == &self.audience, false),
            Value::Array(a) => (
                a.iter().any(|v| v.as_str() == Some(self.audience.as_str())),
                a.len() > 1,
            ),
            _ => (false, false),
        };
        if !aud_ok {
            return Err(unauthenticated("the ID token is for another audience"));
        }
        match claims["azp"].as_str() {
            Some(azp) if azp != self.audience => {
                return Err(unauthenticated(
                    "the ID token was issued to another party (azp)",
                ));
            }
            None if several => {
                return Err(unauthenticated(
                    "the ID token has several audiences and no azp",
                ));
            }
            _ => {}
        }
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let exp = claims["exp"]
            .as_i64()
            .ok_or_else(|| unauthenticated("the ID token has no exp"))?;
        if now > exp + LEEWAY_SECS {
            return Err(unauthenticated("the ID token has expired"));
        }
        if !claims["nbf"].is_null() {
            let nbf = claims["nbf"]
                .as_i64()
                .ok_or_else(|| unauthenticated("the ID token's nbf is not a time"))?;
            if nbf > now + LEEWAY_SECS {
                return Err(unauthenticated("the ID token is not valid yet (nbf)"));
            }
        }
        let iat = claims["iat"]
            .as_i64()
            .ok_or_else(|| unauthenticated("the ID token has no iat"))?;
        if iat > now + LEEWAY_SECS {
            return Err(unauthenticated("the ID token was issued in the future"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;

//! OpenID Connect for the citizen API: the verifier of ID tokens (signature against the
//! issuer's JWKS, `iss`, `aud`, `exp`, `iat`, an algorithm allow-list, size bounds), and a
//! development issuer the registry serves itself when configured (`[oidc] dev_issuer = true`),
//! for `enlace up` and the tests. The development issuer signs a token for whoever asks: it is
//! never to be enabled in a federation with real people in it.

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
/// Clock skew allowed on `exp` and `iat`.
const LEEWAY_SECS: i64 = 60;
/// How long a development token lives.
const DEV_TOKEN_SECS: i64 = 600;
/// How long a fetched JWKS is trusted before it is fetched again.
const JWKS_TTL: Duration = Duration::from_secs(300);
/// The audience when none is configured.
pub const DEFAULT_AUDIENCE: &str = "enlace-citizen";

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

/// The development issuer: a key generated at start.
pub struct DevIssuer {
    key: SigningKey,
    kid: String,
}

impl DevIssuer {
    pub fn generate() -> Result<DevIssuer, Problem> {
        let key = SigningKey::generate()?;
        let kid = enlace_description::sha256_hex(&key.public_key_bytes())[..16].to_string();
        Ok(DevIssuer { key, kid })
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
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let header = json!({"alg": "EdDSA", "typ": "JWT", "kid": self.kid});
        let claims = json!({
            "iss": issuer,
            "aud": audience,
            "sub": sub.to_string(),
            "iat": now,
            "exp": now + DEV_TOKEN_SECS,
        });
        sign_jwt(&header, &claims, |m| self.key.sign(m))
    }
}

impl DevIssuer {
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

fn parse_jwks(v: &Value) -> Vec<Key> {
    let Some(keys) = v["keys"].as_array() else {
        return Vec::new();
    };
    let b64 = |v: &Value| v.as_str().and_then(|s| B64URL.decode(s).ok());
    keys.iter()
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

/// The registry's OpenID Connect state: the accepted issuer and audience, its keys, and the
/// development issuer when enabled.
pub struct Oidc {
    pub issuer: String,
    pub audience: String,
    pub dev: Option<DevIssuer>,
    /// The accepted issuer is the development issuer served here: its keys are at hand.
    own: bool,
    http: reqwest::Client,
    cached: Mutex<Option<(Instant, Vec<Key>)>>,
}

fn unauthenticated(detail: impl Into<String>) -> Problem {
    Problem::new(ProblemKind::Unauthenticated, detail)
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
}

impl Oidc {
    /// The state for `cfg`; `own_url` is the registry's base URL (the development issuer's
    /// `iss`). `None` when the citizen API is off.
    pub fn new(cfg: &OidcConfig, own_url: &str) -> Result<Option<Oidc>, Problem> {
        let dev = if cfg.dev_issuer {
            tracing::warn!(
                "the development OpenID Connect issuer is on: anyone can sign in as anyone"
            );
            Some(DevIssuer::generate()?)
        } else {
            None
        };
        let issuer = match (&cfg.issuer, &dev) {
            (Some(i), _) => i.trim_end_matches('/').to_string(),
            (None, Some(_)) => own_url.trim_end_matches('/').to_string(),
            (None, None) => return Ok(None),
        };
        let own = dev.is_some() && issuer == own_url.trim_end_matches('/');
        Ok(Some(Oidc {
            own,
            issuer,
            audience: cfg
                .audience
                .clone()
                .unwrap_or_else(|| DEFAULT_AUDIENCE.into()),
            dev,
            http: reqwest::Client::new(),
            cached: Mutex::new(None),
        }))
    }

    /// The development issuer's discovery document.
    pub fn discovery(&self) -> Value {
        json!({
            "issuer": self.issuer,
            "jwks_uri": format!("{}/oidc/jwks", self.issuer),
            "token_endpoint": format!("{}/oidc/dev/token", self.issuer),
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["EdDSA"],
        })
    }

    /// The development issuer's JWKS.
    pub fn jwks(&self) -> Value {
        json!({ "keys": self.dev.iter().map(DevIssuer::jwk).collect::<Vec<_>>() })
    }

    async fn keys(&self) -> Result<Vec<Key>, Problem> {
        if self.own {
            return Ok(parse_jwks(&self.jwks()));
        }
        if let Some((at, keys)) = self
            .cached
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            && at.elapsed() < JWKS_TTL
        {
            return Ok(keys.clone());
        }
        let unreachable = |e: String| {
            Problem::new(
                ProblemKind::PeerUnreachable,
                format!("the OpenID Connect issuer: {e}"),
            )
        };
        let get = |url: String| async move {
            let resp = self
                .http
                .get(&url)
                .timeout(Duration::from_secs(10))
                .send()
                .await
                .map_err(|e| unreachable(e.to_string()))?;
            if !resp.status().is_success() {
                return Err(unreachable(format!("{url} answered {}", resp.status())));
            }
            resp.json::<Value>()
                .await
                .map_err(|e| unreachable(e.to_string()))
        };
        let discovery = get(format!("{}/.well-known/openid-configuration", self.issuer)).await?;
        let jwks_uri = discovery["jwks_uri"]
            .as_str()
            .ok_or_else(|| unreachable("the discovery document names no jwks_uri".into()))?
            .to_string();
        let keys = parse_jwks(&get(jwks_uri).await?);
        *self.cached.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((Instant::now(), keys.clone()));
        Ok(keys)
    }

    /// Verifies an ID token and returns its subject. Every failure is `unauthenticated`.
    pub async fn verify(&self, token: &str) -> Result<SubjectId, Problem> {
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
        if header.alg != "EdDSA" && header.alg != "ES256" {
            return Err(unauthenticated(format!(
                "the ID token's algorithm `{}` is not accepted (EdDSA, ES256)",
                header.alg
            )));
        }
        let sig = decode(s, "signature")?;
        let input = &token.as_bytes()[..h.len() + 1 + c.len()];
        let keys = self.keys().await?;
        let kid_ok = |kid: &Option<String>| header.kid.is_none() || kid == &header.kid;
        let verified = keys.iter().any(|k| match k {
            Key::Ed25519 { kid, x } if header.alg == "EdDSA" && kid_ok(kid) => {
                enlace_certs::verify_ed25519(x, input, &sig)
            }
            Key::P256 { kid, point } if header.alg == "ES256" && kid_ok(kid) => {
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
        if claims["iss"].as_str() != Some(self.issuer.as_str()) {
            return Err(unauthenticated("the ID token is from another issuer"));
        }
        let aud_ok = match &claims["aud"] {
            Value::String(a) => a == &self.audience,
            Value::Array(a) => a.iter().any(|v| v.as_str() == Some(self.audience.as_str())),
            _ => false,
        };
        if !aud_ok {
            return Err(unauthenticated("the ID token is for another audience"));
        }
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let exp = claims["exp"]
            .as_i64()
            .ok_or_else(|| unauthenticated("the ID token has no exp"))?;
        if now > exp + LEEWAY_SECS {
            return Err(unauthenticated("the ID token has expired"));
        }
        let iat = claims["iat"]
            .as_i64()
            .ok_or_else(|| unauthenticated("the ID token has no iat"))?;
        if iat > now + LEEWAY_SECS {
            return Err(unauthenticated("the ID token was issued in the future"));
        }
        let sub = claims["sub"]
            .as_str()
            .ok_or_else(|| unauthenticated("the ID token has no sub"))?;
        sub.parse::<SubjectId>()
            .map_err(|e| unauthenticated(format!("the ID token's sub: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn dev_tokens_verify_and_tampering_does_not() {
        enlace_certs::install_crypto_provider();
        let cfg = OidcConfig {
            dev_issuer: true,
            ..Default::default()
        };
        let own = "http://127.0.0.1:1";
        let oidc = Oidc::new(&cfg, own).unwrap().unwrap();
        let sub: SubjectId = "CL-RUN:12345678-5".parse().unwrap();
        let token = oidc
            .dev
            .as_ref()
            .unwrap()
            .token(own, DEFAULT_AUDIENCE, &sub);
        assert_eq!(oidc.verify(&token).await.unwrap(), sub);
        let mut bad = token.clone().into_bytes();
        let n = bad.len() - 3;
        bad[n] = if bad[n] == b'A' { b'B' } else { b'A' };
        assert!(
            oidc.verify(std::str::from_utf8(&bad).unwrap())
                .await
                .is_err()
        );
        assert!(oidc.verify(&"a".repeat(MAX_TOKEN + 1)).await.is_err());
        assert!(oidc.verify("a.b").await.is_err());
    }
}

//! The ID token verifier against the development issuer and against an issuer served on a
//! loopback socket (discovery, JWKS and userinfo over real HTTP): claims, the issuer named by
//! discovery, key rotation, an issuer that is down, and where the RUN comes from.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::routing::{get, post};

use super::*;

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn person() -> SubjectId {
    "CL-RUN:12345678-5".parse().unwrap()
}

/// A development issuer that is also the accepted one.
fn own(subject_from: SubjectFrom) -> (Oidc, &'static str) {
    enlace_certs::install_crypto_provider();
    let url = "http://127.0.0.1:1";
    let cfg = OidcConfig {
        dev_issuer: true,
        subject_from,
        ..Default::default()
    };
    (Oidc::new(&cfg, url).unwrap().unwrap(), url)
}

#[tokio::test]
async fn dev_tokens_verify_and_tampering_does_not() {
    let (oidc, url) = own(SubjectFrom::Sub);
    let token = oidc
        .dev
        .as_ref()
        .unwrap()
        .token(url, DEFAULT_AUDIENCE, &person());
    assert_eq!(oidc.verify(&token, None).await.unwrap(), person());
    let mut bad = token.clone().into_bytes();
    let n = bad.len() - 3;
    bad[n] = if bad[n] == b'A' { b'B' } else { b'A' };
    assert!(
        oidc.verify(std::str::from_utf8(&bad).unwrap(), None)
            .await
            .is_err()
    );
    assert!(oidc.verify(&"a".repeat(MAX_TOKEN + 1), None).await.is_err());
    assert!(oidc.verify("a.b", None).await.is_err());
}

#[tokio::test]
async fn nbf_azp_and_audiences_are_checked() {
    let (oidc, url) = own(SubjectFrom::Sub);
    let dev = oidc.dev.as_ref().unwrap();
    let t = now();
    let base = json!({"iss": url, "aud": DEFAULT_AUDIENCE, "sub": person().to_string(), "iat": t, "exp": t + 300});
    let with = |k: &str, v: Value| {
        let mut c = base.clone();
        c[k] = v;
        dev.sign_claims(&c)
    };
    oidc.verify(&dev.sign_claims(&base), None).await.unwrap();
    oidc.verify(&with("nbf", json!(t - 10)), None)
        .await
        .unwrap();
    let refused = |token: String| {
        let oidc = &oidc;
        async move {
            let p = oidc.verify(&token, None).await.unwrap_err();
            assert_eq!(p.kind, ProblemKind::Unauthenticated, "{p:?}");
            p.detail
        }
    };
    assert!(refused(with("nbf", json!(t + 600))).await.contains("nbf"));
    assert!(refused(with("nbf", json!("soon"))).await.contains("nbf"));
    assert!(
        refused(with("azp", json!("another-client")))
            .await
            .contains("azp")
    );
    let several = json!([DEFAULT_AUDIENCE, "another-client"]);
    assert!(refused(with("aud", several.clone())).await.contains("azp"));
    let mut c = base.clone();
    c["aud"] = several;
    c["azp"] = json!(DEFAULT_AUDIENCE);
    oidc.verify(&dev.sign_claims(&c), None).await.unwrap();
    oidc.verify(&with("azp", json!(DEFAULT_AUDIENCE)), None)
        .await
        .unwrap();
}

/// RFC 7515 §4.1.11: a header with `crit` names extensions this verifier does not implement,
/// so the token is refused even though the configured issuer signed it.
#[tokio::test]
async fn a_token_with_critical_extensions_is_refused() {
    let (oidc, url) = own(SubjectFrom::Sub);
    let dev = oidc.dev.as_ref().unwrap();
    let t = now();
    let claims = json!({"iss": url, "aud": DEFAULT_AUDIENCE, "sub": person().to_string(), "iat": t, "exp": t + 300});
    for crit in [json!(["x-unknown"]), json!([]), json!("b64")] {
        let header =
            json!({"alg": "EdDSA", "typ": "JWT", "kid": dev.kid, "crit": crit, "x-unknown": 1});
        let token = sign_jwt(&header, &claims, |m| dev.key.sign(m));
        let p = oidc.verify(&token, None).await.unwrap_err();
        assert_eq!(p.kind, ProblemKind::Unauthenticated, "{p:?}");
        assert!(p.detail.contains("crit"), "{}", p.detail);
    }
    // The same claims without `crit` are accepted: the refusal is the header's.
    oidc.verify(&dev.sign_claims(&claims), None).await.unwrap();
}

#[test]
fn the_run_is_read_from_rol_unico() {
    let ok = json!({"numero": 12345678, "DV": "5", "tipo": "RUN"});
    assert_eq!(run_from_rol_unico(&ok).unwrap(), person());
    let as_text = json!({"numero": "12345678", "DV": "5", "tipo": "RUN"});
    assert_eq!(run_from_rol_unico(&as_text).unwrap(), person());
    let k = json!({"numero": 10000013, "DV": "k", "tipo": "RUN"});
    assert_eq!(
        run_from_rol_unico(&k).unwrap().to_string(),
        "CL-RUN:10000013-K"
    );
    for bad in [
        json!({"numero": 12345678, "DV": "6", "tipo": "RUN"}),
        json!({"numero": 12345678, "DV": "5", "tipo": "PASAPORTE"}),
        json!({"numero": -1, "DV": "5", "tipo": "RUN"}),
        json!({"numero": 12345678, "tipo": "RUN"}),
        json!(null),
    ] {
        assert!(run_from_rol_unico(&bad).is_err(), "{bad}");
    }
}

#[tokio::test]
async fn clave_unica_mode_reads_the_run_from_the_id_token_or_userinfo() {
    let (oidc, url) = own(SubjectFrom::ClaveUnica);
    let dev = oidc.dev.as_ref().unwrap();
    let tokens = dev.tokens(url, DEFAULT_AUDIENCE, &person());
    // The ID token's sub is an account number, not the RUN.
    let access = tokens.access_token.clone().unwrap();
    let p = oidc.verify(&tokens.id_token, None).await.unwrap_err();
    assert!(p.detail.contains(ACCESS_TOKEN_HEADER), "{p:?}");
    assert_eq!(
        oidc.verify(&tokens.id_token, Some(&access)).await.unwrap(),
        person()
    );
    // Someone else's access token does not lend their RUN to this ID token.
    let other: SubjectId = "CL-RUN:11111111-1".parse().unwrap();
    let theirs = dev.tokens(url, DEFAULT_AUDIENCE, &other);
    let p = oidc
        .verify(&tokens.id_token, theirs.access_token.as_deref())
        .await
        .unwrap_err();
    assert!(p.detail.contains("another account"), "{p:?}");
    // RolUnico in the ID token itself.
    let t = now();
    let claims = json!({"iss": url, "aud": DEFAULT_AUDIENCE, "sub": "4242", "iat": t, "exp": t + 300,
        "RolUnico": {"numero": 11111111, "DV": "1", "tipo": "RUN"}});
    assert_eq!(
        oidc.verify(&dev.sign_claims(&claims), None).await.unwrap(),
        other
    );
}

/// An issuer on a loopback socket: discovery (naming `named` as issuer), a JWKS that can be
/// replaced, and a ClaveÚnica-style userinfo endpoint; counts JWKS requests.
struct Remote {
    url: String,
    keys: Arc<Mutex<Vec<(String, SigningKey)>>>,
    jwks_requests: Arc<AtomicUsize>,
    stop: tokio::sync::oneshot::Sender<()>,
}

async fn remote(named: Option<&str>) -> Remote {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let keys: Arc<Mutex<Vec<(String, SigningKey)>>> = Arc::new(Mutex::new(Vec::new()));
    let jwks_requests = Arc::new(AtomicUsize::new(0));
    let issuer = named.map(String::from).unwrap_or_else(|| url.clone());
    let (k, n) = (keys.clone(), jwks_requests.clone());
    let base = url.clone();
    let app = Router::new()
        .route(
            "/.well-known/openid-configuration",
            get(move || {
                let (issuer, base) = (issuer.clone(), base.clone());
                async move {
                    axum::Json(json!({"issuer": issuer, "jwks_uri": format!("{base}/jwks"),
                        "userinfo_endpoint": format!("{base}/userinfo")}))
                }
            }),
        )
        .route(
            "/jwks",
            get(move || {
                let (k, n) = (k.clone(), n.clone());
                async move {
                    n.fetch_add(1, Ordering::SeqCst);
                    let keys: Vec<Value> = k
                        .lock()
                        .unwrap()
                        .iter()
                        .map(|(kid, key)| {
                            json!({"kty": "OKP", "crv": "Ed25519", "kid": kid,
                            "x": B64URL.encode(key.public_key_bytes())})
                        })
                        .collect();
                    axum::Json(json!({ "keys": keys }))
                }
            }),
        )
        .route(
            "/userinfo",
            post(|headers: axum::http::HeaderMap| async move {
                let auth = headers
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                if auth == "Bearer good-access-token" {
                    (
                        axum::http::StatusCode::OK,
                        axum::Json(json!({"sub": "987654",
                            "RolUnico": {"numero": 12345678, "DV": "5", "tipo": "RUN"}})),
                    )
                } else {
                    (axum::http::StatusCode::UNAUTHORIZED, axum::Json(json!({})))
                }
            }),
        );
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = rx.await;
            })
            .await
            .unwrap();
    });
    Remote {
        url,
        keys,
        jwks_requests,
        stop,
    }
}

impl Remote {
    fn add_key(&self, kid: &str) -> SigningKey {
        let key = SigningKey::generate().unwrap();
        let copy = SigningKey::from_pem(key.to_pem()).unwrap();
        self.keys.lock().unwrap().push((kid.to_string(), copy));
        key
    }

    fn token(&self, key: &SigningKey, kid: &str, sub: &str) -> String {
        let t = now();
        sign_jwt(
            &json!({"alg": "EdDSA", "typ": "JWT", "kid": kid}),
            &json!({"iss": self.url, "aud": DEFAULT_AUDIENCE, "sub": sub, "iat": t, "exp": t + 300}),
            |m| key.sign(m),
        )
    }
}

fn verifier(issuer: &str, subject_from: SubjectFrom) -> Oidc {
    enlace_certs::install_crypto_provider();
    let cfg = OidcConfig {
        issuer: Some(issuer.to_string()),
        subject_from,
        ..Default::default()
    };
    let mut oidc = Oidc::new(&cfg, "http://127.0.0.1:7400").unwrap().unwrap();
    oidc.refetch_interval = Duration::from_millis(300);
    oidc.retry_first = Duration::from_millis(300);
    oidc
}

#[tokio::test]
async fn a_new_key_is_fetched_once_and_unknown_kids_cause_no_storm() {
    let issuer = remote(None).await;
    let a = issuer.add_key("a");
    let oidc = verifier(&issuer.url, SubjectFrom::Sub);
    let sub = person().to_string();
    assert_eq!(
        oidc.verify(&issuer.token(&a, "a", &sub), None)
            .await
            .unwrap(),
        person()
    );
    oidc.verify(&issuer.token(&a, "a", &sub), None)
        .await
        .unwrap();
    assert_eq!(issuer.jwks_requests.load(Ordering::SeqCst), 1, "cached");

    // The issuer rotates to key b: the first token with kid b makes one fetch.
    let b = issuer.add_key("b");
    tokio::time::sleep(Duration::from_millis(400)).await;
    oidc.verify(&issuer.token(&b, "b", &sub), None)
        .await
        .unwrap();
    assert_eq!(issuer.jwks_requests.load(Ordering::SeqCst), 2);

    // Tokens with a kid the issuer never had, one after another: at most one more fetch.
    let stranger = SigningKey::generate().unwrap();
    let forged = issuer.token(&stranger, "zz", &sub);
    for _ in 0..30 {
        let p = oidc.verify(&forged, None).await.unwrap_err();
        assert_eq!(p.kind, ProblemKind::Unauthenticated);
    }
    assert!(
        issuer.jwks_requests.load(Ordering::SeqCst) <= 3,
        "{} fetches",
        issuer.jwks_requests.load(Ordering::SeqCst)
    );
    let _ = issuer.stop.send(());
}

#[tokio::test]
async fn an_issuer_that_is_down_is_not_hammered() {
    // A port where nothing listens.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let oidc = Arc::new(verifier(
        &format!("http://127.0.0.1:{port}"),
        SubjectFrom::Sub,
    ));
    let key = SigningKey::generate().unwrap();
    let t = now();
    let token = sign_jwt(
        &json!({"alg": "EdDSA", "typ": "JWT", "kid": "a"}),
        &json!({"iss": format!("http://127.0.0.1:{port}"), "aud": DEFAULT_AUDIENCE,
            "sub": person().to_string(), "iat": t, "exp": t + 300}),
        |m| key.sign(m),
    );
    let tasks: Vec<_> = (0..40)
        .map(|_| {
            let (oidc, token) = (oidc.clone(), token.clone());
            tokio::spawn(async move { oidc.verify(&token, None).await })
        })
        .collect();
    for t in tasks {
        let p = t.await.unwrap().unwrap_err();
        assert_eq!(p.kind, ProblemKind::PeerUnreachable, "{p:?}");
    }
    assert_eq!(oidc.fetches(), 1, "one attempt, the others wait for it");
    // While backing off, nothing is fetched.
    assert!(oidc.verify(&token, None).await.is_err());
    assert_eq!(oidc.fetches(), 1);
}

#[tokio::test]
async fn a_discovery_document_naming_another_issuer_is_refused() {
    let issuer = remote(Some("https://accounts.example")).await;
    let a = issuer.add_key("a");
    let oidc = verifier(&issuer.url, SubjectFrom::Sub);
    let p = oidc
        .verify(&issuer.token(&a, "a", &person().to_string()), None)
        .await
        .unwrap_err();
    assert!(p.detail.contains("names issuer"), "{p:?}");
    let _ = issuer.stop.send(());
}

#[tokio::test]
async fn clave_unica_userinfo_over_http() {
    let issuer = remote(None).await;
    let a = issuer.add_key("a");
    let oidc = verifier(&issuer.url, SubjectFrom::ClaveUnica);
    let id = issuer.token(&a, "a", "987654");
    assert_eq!(
        oidc.verify(&id, Some("good-access-token")).await.unwrap(),
        person()
    );
    // Remembered: the same pair again needs no userinfo call (the token is not checked twice).
    assert_eq!(
        oidc.verify(&id, Some("good-access-token")).await.unwrap(),
        person()
    );
    let p = oidc.verify(&id, Some("stolen")).await.unwrap_err();
    assert_eq!(p.kind, ProblemKind::Unauthenticated, "{p:?}");
    // An ID token of another account with a good access token: the accounts differ.
    let other = issuer.token(&a, "a", "111");
    let p = oidc
        .verify(&other, Some("good-access-token"))
        .await
        .unwrap_err();
    assert!(p.detail.contains("another account"), "{p:?}");
    let _ = issuer.stop.send(());
}

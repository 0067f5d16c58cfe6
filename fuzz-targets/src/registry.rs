//! Tokens: a citizen's OpenID Connect ID token at the registry, and an authorisation token (a
//! person's consent, signed by the registry) at a provider node.

use std::sync::OnceLock;

use enlace_certs::{FederationCa, TrustStore};
use enlace_core::authorisation;
use enlace_core::id::Instance;
use enlace_core::problem::ProblemKind;
use enlace_registry::citizen::oidc::{Oidc, OidcConfig, SubjectFrom};

/// The development issuer's URL: the registry's own, so its keys are at hand (no network).
const ISSUER: &str = "http://127.0.0.1:1";

fn issuer() -> &'static (tokio::runtime::Runtime, Oidc) {
    static ISSUER_STATE: OnceLock<(tokio::runtime::Runtime, Oidc)> = OnceLock::new();
    ISSUER_STATE.get_or_init(|| {
        enlace_certs::install_crypto_provider();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime");
        let cfg = OidcConfig {
            dev_issuer: true,
            subject_from: SubjectFrom::Sub,
            ..Default::default()
        };
        let oidc = Oidc::new(&cfg, ISSUER)
            .expect("a development issuer")
            .expect("the citizen API is on");
        (runtime, oidc)
    })
}

/// The first byte chooses. Even: the rest is a token as a browser sends it, never accepted (its
/// key is made in this process, so nothing the fuzzer writes can be signed with it). Odd: the
/// rest is a claims set, signed with the issuer's key; accepted only when it is from this
/// issuer, and then the person is its `sub`. Every refusal is `unauthenticated`.
pub fn oidc_token(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let (runtime, oidc) = issuer();
    let dev = oidc.dev.as_ref().expect("the development issuer");
    let (token, claims) = if mode % 2 == 0 {
        let Ok(token) = std::str::from_utf8(rest) else {
            return;
        };
        (token.to_string(), None)
    } else {
        let Ok(claims) = serde_json::from_slice::<serde_json::Value>(rest) else {
            return;
        };
        (dev.sign_claims(&claims), Some(claims))
    };
    match (runtime.block_on(oidc.verify(&token, None)), claims) {
        (Ok(person), Some(claims)) => {
            assert_eq!(claims["iss"], ISSUER);
            assert_eq!(claims["sub"].as_str(), Some(person.to_string().as_str()));
        }
        (Ok(person), None) => panic!("a token not signed here verified, for {person:?}"),
        (Err(p), _) => assert_eq!(p.kind, ProblemKind::Unauthenticated, "{p:?}"),
    }
}

fn trust() -> &'static TrustStore {
    static TRUST: OnceLock<TrustStore> = OnceLock::new();
    TRUST.get_or_init(|| {
        enlace_certs::install_crypto_provider();
        let instance: Instance = "CL-DEV".parse().expect("an instance");
        let ca = FederationCa::create(&instance, time::Duration::days(1)).expect("a CA");
        TrustStore::new(&[ca.cert_pem().to_string()], None).expect("a trust store")
    })
}

/// A token that decodes re-encodes (header, claims, certificate, signature) to one that decodes
/// to the same parts; its certificate never chains to a CA made in this process.
pub fn authorisation_token(data: &[u8]) {
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(decoded) = authorisation::decode(token) else {
        return;
    };
    let signature = decoded.signature.clone();
    let again = authorisation::encode(&decoded.claims, &decoded.certificate_der, |_| signature);
    let redecoded = authorisation::decode(&again).expect("a re-encoded token decodes");
    assert_eq!(redecoded.header, decoded.header);
    assert_eq!(redecoded.claims, decoded.claims);
    assert_eq!(redecoded.certificate_der, decoded.certificate_der);
    assert_eq!(redecoded.signature, decoded.signature);

    let pem = enlace_certs::certificate_pem(&decoded.certificate_der);
    let Ok(signed_at) = time::OffsetDateTime::from_unix_timestamp(decoded.claims.iat) else {
        return;
    };
    let issuer = enlace_certs::registry_uri(&"CL-DEV".parse().expect("an instance"));
    assert!(enlace_certs::verify_signer(trust(), &pem, &issuer, signed_at).is_err());
}

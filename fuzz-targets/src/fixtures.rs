//! The fixed parts the targets check fuzzed input against: one signed request of a consumer
//! node, its clock, and the RFC 9421 test key it is signed with.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use http::{HeaderMap, HeaderValue};

/// The consumer node that signs [`request_headers`]; the only key id the target knows.
pub const CONSUMER: &str = "CL-DEV/GOV/60803000-K/node/a";
/// The verifier's clock, Unix seconds, and the skew it allows.
pub const NOW: i64 = 1_760_000_000;
pub const SKEW: i64 = 300;
/// The request a consumer node relays.
pub const REQUEST_URI: &str =
    "/r/CL-DEV/GOV/61002000-3/registro-civil/personas/v1/persons/12345678-5?full=true";
pub const REQUEST_BODY: &[u8] = b"{\"reason\":\"tramite\"}";

/// RFC 9421 Appendix B.1.4, `test-key-ed25519`: published test data, never a real key.
const RFC_ED25519_PUBLIC_B64: &str = "JrQLj5P/89iXES9+vFgrIy29clF9CC/oPPsw3c5D0bs=";

/// The raw public key of RFC 9421's `test-key-ed25519`.
pub fn rfc_test_public_key() -> Vec<u8> {
    STANDARD
        .decode(RFC_ED25519_PUBLIC_B64)
        .expect("the RFC's key is base64")
}

/// The headers of the request before it is signed: every component a request signature must
/// cover.
pub fn request_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    let digest = enlace_httpsig::content_digest(REQUEST_BODY);
    for (name, value) in [
        ("content-type", "application/json"),
        ("content-digest", digest.as_str()),
        ("enlace-message-id", "0199c3e2-5b8a-7d41-9a53-6f0e4c1b2a77"),
        ("enlace-client", "CL-DEV/GOV/60803000-K/sii"),
        (
            "enlace-service",
            "CL-DEV/GOV/61002000-3/registro-civil/personas/v1",
        ),
        ("enlace-contract", "ctr_0199c3e25b8a7d419a536f0e4c1b2a77"),
    ] {
        h.insert(name, HeaderValue::from_str(value).expect("a fixed value"));
    }
    h
}

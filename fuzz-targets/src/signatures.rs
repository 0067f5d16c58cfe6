//! RFC 8941 structured fields, RFC 9421 `Signature-Input` / `Signature`, RFC 9530
//! `Content-Digest`.

use enlace_core::problem::{Problem, ProblemKind};
use enlace_httpsig::{
    self as signature, Message, REQUEST_COMPONENTS, SIGNATURE, SIGNATURE_INPUT, fuzzing,
};
use http::{HeaderValue, Method, Uri};

use crate::fixtures::{self, CONSUMER, NOW, REQUEST_BODY, REQUEST_URI, SKEW};

/// A dictionary or an item that parses serialises to text that parses to the same value:
/// serialising twice gives the same text.
pub fn structured_fields(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    type Reserialise = fn(&str) -> Option<String>;
    let forms: [(&str, Reserialise); 2] = [
        ("dictionary", fuzzing::reserialise_dictionary),
        ("item", fuzzing::reserialise_item),
    ];
    for (what, reserialise) in forms {
        if let Some(once) = reserialise(text) {
            assert_eq!(
                reserialise(&once).as_deref(),
                Some(once.as_str()),
                "the {what} {text:?} serialises to {once:?}, which does not read back the same"
            );
        }
    }
}

/// `Signature-Input` (before the first `\n`) and `Signature` (after it) on the fixed request:
/// a signature that verifies is by the one known key and covers every required component
/// within the skew; any other is refused as a bad signature, a stale one or an oversized header.
pub fn signature(data: &[u8]) {
    let (input, sig) = crate::split(data);
    let mut headers = fixtures::request_headers();
    for (name, value) in [(SIGNATURE_INPUT, input), (SIGNATURE, sig)] {
        let Ok(value) = HeaderValue::from_bytes(value) else {
            return;
        };
        headers.insert(name, value);
    }
    let uri: Uri = REQUEST_URI.parse().expect("a fixed URI");
    let key = fixtures::rfc_test_public_key();
    let keys = |keyid: &str| {
        if keyid == CONSUMER {
            Ok(key.clone())
        } else {
            Err(Problem::new(
                ProblemKind::SignatureInvalid,
                "unknown key id",
            ))
        }
    };
    let message = Message::request(&Method::POST, &uri, &headers);
    match signature::verify_request(message, REQUEST_BODY, keys, NOW, SKEW) {
        Ok(verified) => {
            assert_eq!(verified.keyid, CONSUMER);
            assert!((NOW - SKEW..=NOW + SKEW).contains(&verified.created));
            for c in REQUEST_COMPONENTS {
                assert!(verified.components.contains(c), "{c} is not covered");
            }
        }
        Err(p) => assert!(
            matches!(
                p.kind,
                ProblemKind::SignatureInvalid | ProblemKind::Stale | ProblemKind::BodyTooLarge
            ),
            "{p:?}"
        ),
    }
}

/// A `Content-Digest` value (before the first `\n`) against a body (after it): the body's own
/// digest always matches; a value that matches holds the body's SHA-256; a refusal is a bad
/// signature or an oversized header.
pub fn content_digest(data: &[u8]) {
    let (header, body) = crate::split(data);
    let own = signature::content_digest(body);
    signature::check_content_digest(&own, body).expect("a body's own digest matches it");
    let Ok(header) = std::str::from_utf8(header) else {
        return;
    };
    match signature::check_content_digest(header, body) {
        Ok(()) => {
            let sha256 = own.trim_start_matches("sha-256=");
            assert!(
                header.contains(sha256),
                "{header:?} matched without {sha256}"
            );
        }
        Err(p) => assert!(
            matches!(
                p.kind,
                ProblemKind::SignatureInvalid | ProblemKind::BodyTooLarge
            ),
            "{p:?}"
        ),
    }
}

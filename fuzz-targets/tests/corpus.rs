//! Every committed corpus replayed: each file under `fuzz/corpus/<target>/` (the hand-written
//! seeds, real values from the tests, and every input a fuzzer found a crash with) run through
//! the same function the fuzz target runs.

use std::path::{Path, PathBuf};

use enlace_certs::SigningKey;
use enlace_fuzz_targets::{
    CONSUMER, NOW, REQUEST_BODY, REQUEST_URI, SKEW, TARGETS, request_headers, rfc_test_public_key,
};
use enlace_httpsig::{self as signature, Message, SIGNATURE, SIGNATURE_INPUT};
use http::{HeaderValue, Method, Uri};

// RFC 9421 Appendix B.1.4, `test-key-ed25519`: published test data, never a real key.
const RFC_ED25519_PRIVATE_PEM: &str = "-----BEGIN PRIVATE KEY-----\n\
MC4CAQAwBQYDK2VwBCIEIJ+DYvh6SEqVTm50DFtMDoQikTmiCqirVv9mWG9qfSnF\n\
-----END PRIVATE KEY-----\n";

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target)
}

fn inputs(target: &str) -> Vec<PathBuf> {
    let dir = corpus_dir(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

#[test]
fn every_target_has_a_seeded_corpus_and_a_fuzz_binary() {
    for (name, _) in TARGETS {
        assert!(!inputs(name).is_empty(), "fuzz/corpus/{name}/ is empty");
        let binary = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fuzz/fuzz_targets")
            .join(format!("{name}.rs"));
        assert!(binary.is_file(), "{} is missing", binary.display());
    }
}

#[test]
fn every_corpus_input_passes_its_target() {
    for (name, run) in TARGETS {
        for file in inputs(name) {
            let data = std::fs::read(&file).expect("a corpus file");
            let outcome = std::panic::catch_unwind(|| run(&data));
            assert!(outcome.is_ok(), "{name}: {} fails", file.display());
        }
    }
}

/// The `signature` corpus starts from a signature that verifies, so the fuzzer begins on the
/// accepting path: the seed is the RFC test key's signature of the fixed request (Ed25519 is
/// deterministic), and it verifies with the key the target knows.
#[test]
fn the_signature_corpus_holds_a_signature_that_verifies() {
    let key = SigningKey::from_pem(RFC_ED25519_PRIVATE_PEM).expect("the RFC test key");
    let uri: Uri = REQUEST_URI.parse().expect("a fixed URI");
    let mut headers = request_headers();
    let (input, sig) = signature::sign_request(
        &key,
        CONSUMER,
        NOW,
        Message::request(&Method::POST, &uri, &headers),
    )
    .expect("the fixed request signs");
    let expected = format!("{input}\n{sig}");
    let seed = std::fs::read_to_string(corpus_dir("signature").join("signed-request"))
        .expect("the signed-request seed");
    assert_eq!(
        seed, expected,
        "fuzz/corpus/signature/signed-request is stale"
    );

    headers.insert(SIGNATURE_INPUT, HeaderValue::from_str(&input).unwrap());
    headers.insert(SIGNATURE, HeaderValue::from_str(&sig).unwrap());
    let verified = signature::verify_request(
        Message::request(&Method::POST, &uri, &headers),
        REQUEST_BODY,
        |_| Ok(rfc_test_public_key()),
        NOW,
        SKEW,
    )
    .expect("the seed verifies");
    assert_eq!(verified.keyid, CONSUMER);
}

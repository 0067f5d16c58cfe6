//! The bodies of Enlace's fuzz targets: one function per parser of untrusted input, each taking
//! the fuzzer's bytes. `fuzz/` wraps each in a `fuzz_target!`; this crate's `tests/corpus.rs`
//! runs each over its committed corpus (`fuzz/corpus/<name>/`), so every input a fuzzer once
//! found stays an ordinary test.
//!
//! A target panics only when an invariant breaks: a structured field that does not survive
//! serialise → parse, a refusal of the wrong kind, a message that re-encodes differently, a
//! forged token that verifies. Inputs that do not even reach the parser (bytes that cannot be a
//! header value, say) are skipped, not counted as findings.
#![forbid(unsafe_code)]

mod fixtures;
mod grpc;
mod http_headers;
mod registry;
mod signatures;
mod stores;

pub use fixtures::{
    CONSUMER, NOW, REQUEST_BODY, REQUEST_URI, SKEW, request_headers, rfc_test_public_key,
};
pub use grpc::{grpc_framing, protobuf_decode};
pub use http_headers::{enlace_headers, openapi_request};
pub use registry::{authorisation_token, oidc_token};
pub use signatures::{content_digest, signature, structured_fields};
pub use stores::{evidence_bundle, node_settings, signed_config};

/// A target's body: the fuzzer's bytes in, a panic when an invariant breaks.
pub type Target = fn(&[u8]);

/// Every target, by the name of its `fuzz/fuzz_targets/<name>.rs` and `fuzz/corpus/<name>/`.
pub const TARGETS: &[(&str, Target)] = &[
    ("structured_fields", structured_fields),
    ("signature", signature),
    ("content_digest", content_digest),
    ("enlace_headers", enlace_headers),
    ("openapi_request", openapi_request),
    ("protobuf_decode", protobuf_decode),
    ("grpc_framing", grpc_framing),
    ("oidc_token", oidc_token),
    ("authorisation_token", authorisation_token),
    ("evidence_bundle", evidence_bundle),
    ("node_settings", node_settings),
    ("signed_config", signed_config),
];

/// The bytes before the first `\n` and those after it (all of them and none without one): how
/// a target taking two inputs reads one buffer.
fn split(data: &[u8]) -> (&[u8], &[u8]) {
    match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[]),
    }
}

//! RFC 9421 HTTP Message Signatures (Ed25519) and RFC 9530 `Content-Digest` for exchanges.
//!
//! A consumer node signs each request it relays with [`sign_request`]; the provider node checks
//! it with [`verify_request`], and signs its response with [`sign_response`], which covers the
//! request's method, path, query, digest and message id with `;req` so that a response cannot be
//! replayed as the answer to another request. The consumer checks that with [`verify_response`].
//!
//! The lower layer ([`sign`], [`verify`], [`signature_base`]) implements the signature base of
//! RFC 9421 §2.5 for the derived components `@method`, `@target-uri`, `@authority`, `@scheme`,
//! `@request-target`, `@path`, `@query` and `@status`, HTTP fields by lower-case name, and the
//! `req` component parameter. Other component parameters (`sf`, `key`, `bs`, `tr`, `name`) and
//! other algorithms are refused. Header parsing is strict RFC 8941 (see `sf`): one signature per
//! message, at most [`MAX_SIGNATURE_HEADER_LEN`] bytes per header, no unknown parameters.
#![forbid(unsafe_code)]

mod base;
mod component;
mod digest;
#[doc(hidden)]
pub mod fuzzing;
mod message;
mod sf;
mod sign;
#[cfg(test)]
mod tests;
mod verify;

use enlace_core::problem::{Problem, ProblemKind};

pub use base::{SigParams, component_lines, signature_base};
pub use component::{
    Component, covered_field_names, request_components, response_components, tag_of,
};
pub use digest::{check_content_digest, content_digest};
pub use message::{Message, MessageContext};
pub use sign::{sign, sign_request, sign_request_covering, sign_response};
pub use verify::{
    Expected, PublicKeys, VerifiedSignature, signature_headers, verify, verify_request,
    verify_response,
};

/// The header carrying the covered components and signature parameters.
pub const SIGNATURE_INPUT: &str = "signature-input";
/// The header carrying the signature itself.
pub const SIGNATURE: &str = "signature";
/// The RFC 9530 header carrying the digest of the content.
pub const CONTENT_DIGEST: &str = "content-digest";
/// The only signature algorithm, stated in the `alg` parameter.
pub const ALGORITHM: &str = "ed25519";
/// The label Enlace signs under (any single label is accepted on verification).
pub const LABEL: &str = "sig1";
/// The `tag` of a request signature.
pub const REQUEST_TAG: &str = "enlace-request";
/// The `tag` of a response signature.
pub const RESPONSE_TAG: &str = "enlace-response";
/// The largest `Signature-Input` or `Signature` accepted, in bytes.
pub const MAX_SIGNATURE_HEADER_LEN: usize = 4096;
/// The largest `Content-Digest` accepted, in bytes.
pub const MAX_CONTENT_DIGEST_LEN: usize = 1024;

/// Components every request signature covers, in this order.
pub const REQUEST_COMPONENTS: &[Component] = &[
    Component::new("@method"),
    Component::new("@path"),
    Component::new("@query"),
    Component::new("content-digest"),
    Component::new("enlace-message-id"),
    Component::new("enlace-client"),
    Component::new("enlace-service"),
    Component::new("enlace-contract"),
];

/// Components a request signature covers when the header is present, after
/// [`REQUEST_COMPONENTS`]. A verifier requires each one the received message carries, so a
/// header added in transit is refused rather than silently trusted.
pub const OPTIONAL_REQUEST_COMPONENTS: &[Component] = &[
    Component::new("content-type"),
    Component::new("accept"),
    Component::new("enlace-subject"),
    Component::new("enlace-user"),
    Component::new("enlace-procedure"),
    Component::new("enlace-step"),
    Component::new("enlace-authorization"),
];

/// Components every response signature covers: the response's own status, digest and message
/// id, and (with `;req`) the request's method, path, query, digest and message id.
pub const RESPONSE_COMPONENTS: &[Component] = &[
    Component::new("@status"),
    Component::new("content-type"),
    Component::new("content-digest"),
    Component::new("enlace-message-id"),
    Component::from_request("@method"),
    Component::from_request("@path"),
    Component::from_request("@query"),
    Component::from_request("content-digest"),
    Component::from_request("enlace-message-id"),
];

/// The derived components (RFC 9421 §2.2) this crate can compute.
const DERIVED: &[&str] = &[
    "@method",
    "@target-uri",
    "@authority",
    "@scheme",
    "@request-target",
    "@path",
    "@query",
    "@status",
];

pub(crate) fn refused(detail: impl Into<String>) -> Problem {
    Problem::new(ProblemKind::SignatureInvalid, detail)
}

pub(crate) fn too_large(name: &str, len: usize, max: usize) -> Problem {
    Problem::new(
        ProblemKind::BodyTooLarge,
        format!("header `{name}` has {len} bytes, at most {max} are accepted"),
    )
    .with("header", name)
    .with("limit", max)
}

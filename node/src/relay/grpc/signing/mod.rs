//! The four RFC 9421 signatures (Ed25519) of a gRPC exchange, each with its own `tag`:
//!
//! - the request head, as for REST: with the `Content-Digest` of the whole body when the
//!   request is one message (unary, server streaming; tag `enlace-request`), without it when
//!   the request is streamed (client and bidirectional streaming; tag `enlace-request-stream`);
//! - the request trailers of a streamed request (tag `enlace-grpc-request-trailers`): the chain
//!   of the request messages, bound to the head by the message id, method and path;
//! - the response trailers (tag `enlace-grpc-trailers`: the final status and the chain of the
//!   response messages, and for a streamed request the chain of its messages as received),
//!   bound (`;req`) to the request head as the consumer node sent it;
//! - the response head of a server-streaming call (tag `enlace-grpc-headers`, bound the same
//!   way), whose messages are released before the final status. The head of a response of one
//!   message (unary, client streaming) is held with the message until the final status
//!   verifies, so it is not signed on its own: the final status carries its digest
//!   (`enlace-grpc-head-digest`) under the one signature, as a REST response is signed once.
//!
//! Custom metadata present in a signed section must be covered, so that metadata added on the
//! way is refused rather than passed on. See docs/PROTOCOL.md, "gRPC".

use enlace_certs::SigningKey;
use enlace_core::problem::{Problem, ProblemKind};
use enlace_description::grpc::{StreamDigest, parse_stream_digest};
use http::{HeaderMap, HeaderValue, StatusCode};

use super::{
    Bound, GRPC_MESSAGE, GRPC_STATUS, GRPC_STATUS_DETAILS, PROBLEM_TYPE, REQUEST_STREAM_DIGEST,
    STREAM_DIGEST, metadata,
};
use crate::relay::exchange::context;
use enlace_httpsig::{
    self as signature, Component, Expected, Message, MessageContext, SigParams, request_components,
};

/// The `tag` of the head of a streamed request (no `Content-Digest`: see the request trailers).
pub const REQUEST_STREAM_TAG: &str = "enlace-request-stream";
/// The `tag` of the trailers of a streamed request.
pub const REQUEST_TRAILERS_TAG: &str = "enlace-grpc-request-trailers";
/// The `tag` of a response head.
pub const HEADERS_TAG: &str = "enlace-grpc-headers";
/// The `tag` of the response trailers (or of a trailers-only response).
pub const TRAILERS_TAG: &str = "enlace-grpc-trailers";

/// The field of a final status binding the head of a response of one message: the
/// `Content-Digest`-style SHA-256 of the head's component lines (see [`head_digest`]).
pub const HEAD_DIGEST: &str = "enlace-grpc-head-digest";

/// Who signs, and when.
pub(super) struct Signer {
    pub key: std::sync::Arc<SigningKey>,
    pub keyid: String,
    pub created: i64,
}

/// What a verifier needs besides the message: its clock, the allowed skew, and the key of the
/// expected signer.
pub(super) struct Verifier<'a, K: Fn(&str) -> Result<Vec<Vec<u8>>, Problem> + ?Sized> {
    pub now: i64,
    pub max_skew_secs: i64,
    pub key_for: &'a K,
}

fn covered(names: Vec<&str>) -> impl Iterator<Item = Component> + '_ {
    names.into_iter().map(|n| Component::named(n, false))
}

fn insert_signature(
    headers: &mut HeaderMap,
    (input, sig): (String, String),
) -> Result<(), Problem> {
    let internal =
        |e: http::header::InvalidHeaderValue| Problem::new(ProblemKind::Internal, e.to_string());
    headers.insert(
        signature::SIGNATURE_INPUT,
        HeaderValue::from_str(&input).map_err(internal)?,
    );
    headers.insert(
        signature::SIGNATURE,
        HeaderValue::from_str(&sig).map_err(internal)?,
    );
    Ok(())
}

pub(super) fn verify_with<K: Fn(&str) -> Result<Vec<Vec<u8>>, Problem> + ?Sized>(
    headers: &HeaderMap,
    ctx: &MessageContext<'_>,
    required: &[Component],
    tag: &str,
    v: &Verifier<'_, K>,
) -> Result<(), Problem> {
    let (input, sig) = signature::signature_headers(headers)?;
    signature::verify(
        &input,
        &sig,
        ctx,
        &Expected {
            required,
            tag,
            now: v.now,
            max_skew_secs: v.max_skew_secs,
        },
        v.key_for,
    )?;
    Ok(())
}

fn field<'h>(headers: &'h HeaderMap, name: &str) -> &'h str {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

// ---- the request head ----

/// What a request head signature covers: Enlace's request components (without
/// `content-digest` for a streamed request) and every custom metadata name present.
pub(super) fn request_head_components(headers: &HeaderMap, streamed: bool) -> Vec<Component> {
    let mut c = request_components(headers);
    if streamed {
        c.retain(|c| c.name != signature::CONTENT_DIGEST);
    }
    c.extend(covered(metadata::custom_names(headers)));
    c
}

pub(super) fn request_tag(streamed: bool) -> &'static str {
    if streamed {
        REQUEST_STREAM_TAG
    } else {
        signature::REQUEST_TAG
    }
}

/// Signs the head of a request to the provider node, in place. A single-message request must
/// already carry its `Content-Digest`.
pub(super) fn sign_request_head(
    s: &Signer,
    request: &mut Bound,
    streamed: bool,
) -> Result<(), Problem> {
    let components = request_head_components(&request.headers, streamed);
    let signed = signature::sign(
        &s.key,
        &components,
        &SigParams::enlace(s.created, &s.keyid, request_tag(streamed)),
        &MessageContext::request(request.message()),
    )?;
    insert_signature(&mut request.headers, signed)
}

/// Verifies a request head; for a single-message request (`body` given), also its body
/// against `Content-Digest`. Which of the two a request is follows from the method's
/// descriptor, never from the request.
pub(super) fn verify_request_head<K: Fn(&str) -> Result<Vec<Vec<u8>>, Problem> + ?Sized>(
    request: &Bound,
    body: Option<&[u8]>,
    v: &Verifier<'_, K>,
) -> Result<(), Problem> {
    let streamed = body.is_none();
    let required = request_head_components(&request.headers, streamed);
    verify_with(
        &request.headers,
        &MessageContext::request(request.message()),
        &required,
        request_tag(streamed),
        v,
    )?;
    if let Some(body) = body {
        let digest = request
            .headers
            .get(signature::CONTENT_DIGEST)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                Problem::new(
                    ProblemKind::SignatureInvalid,
                    "a single-message request carries a content-digest",
                )
            })?;
        signature::check_content_digest(digest, body)?;
    }
    Ok(())
}

// ---- the request trailers of a streamed request ----

pub(super) const REQUEST_TRAILER_COMPONENTS: &[Component] = &[
    Component::new("@method"),
    Component::new("@path"),
    Component::new("@query"),
    Component::new("enlace-message-id"),
    Component::new(STREAM_DIGEST),
];

/// The trailers ending a streamed request: its message id and the chain of its messages,
/// signed over the request's method and path.
pub(super) fn request_trailers(
    s: &Signer,
    request: &Bound,
    chain: &StreamDigest,
) -> Result<HeaderMap, Problem> {
    let mut t = HeaderMap::new();
    super::put(&mut t, context::MESSAGE_ID, request.message_id());
    super::put(&mut t, STREAM_DIGEST, &chain.value());
    let signed = signature::sign(
        &s.key,
        REQUEST_TRAILER_COMPONENTS,
        &SigParams::enlace(s.created, &s.keyid, REQUEST_TRAILERS_TAG),
        &MessageContext::request(Message::request(&request.method, &request.uri, &t)),
    )?;
    insert_signature(&mut t, signed)?;
    Ok(t)
}

/// The trailers of a streamed request must be signed by the consumer node, carry the request's
/// message id, and sign the chain of the messages received.
pub(super) fn verify_request_trailers<K: Fn(&str) -> Result<Vec<Vec<u8>>, Problem> + ?Sized>(
    trailers: &HeaderMap,
    request: &Bound,
    received: &StreamDigest,
    v: &Verifier<'_, K>,
) -> Result<(), Problem> {
    verify_with(
        trailers,
        &MessageContext::request(Message::request(&request.method, &request.uri, trailers)),
        REQUEST_TRAILER_COMPONENTS,
        REQUEST_TRAILERS_TAG,
        v,
    )?;
    if field(trailers, context::MESSAGE_ID) != request.message_id() {
        return Err(Problem::new(
            ProblemKind::SignatureInvalid,
            "the request trailers belong to another message",
        ));
    }
    let claimed = parse_stream_digest(field(trailers, STREAM_DIGEST))?;
    if !claimed.matches(received) {
        return Err(Problem::new(
            ProblemKind::SignatureInvalid,
            format!(
                "the consumer node signed request messages chaining to {}, but those received \
                 chain to {}: a request message was altered, added, dropped or reordered",
                field(trailers, STREAM_DIGEST),
                received.value()
            ),
        ));
    }
    Ok(())
}

// ---- the response head and trailers ----

/// `;req` components binding a response to its request.
fn request_binding(request: &Bound) -> Vec<Component> {
    let mut c = vec![
        Component::from_request("@method"),
        Component::from_request("@path"),
        Component::from_request("@query"),
    ];
    if request.digest().is_some() {
        c.push(Component::from_request("content-digest"));
    }
    c.push(Component::from_request("enlace-message-id"));
    c
}

pub(super) fn response_head_components(headers: &HeaderMap, request: &Bound) -> Vec<Component> {
    let mut c = vec![
        Component::new("@status"),
        Component::new("content-type"),
        Component::new("enlace-message-id"),
    ];
    c.extend(covered(metadata::custom_names(headers)));
    c.extend(request_binding(request));
    c
}

/// Fields of the final status covered when present.
const OPTIONAL_TRAILERS: &[&str] = &[
    GRPC_MESSAGE,
    GRPC_STATUS_DETAILS,
    PROBLEM_TYPE,
    context::ERROR,
    REQUEST_STREAM_DIGEST,
    HEAD_DIGEST,
];

pub(super) fn trailer_components(trailers: &HeaderMap, request: &Bound) -> Vec<Component> {
    let mut c = vec![
        Component::new("@status"),
        Component::new(GRPC_STATUS),
        Component::new(STREAM_DIGEST),
        Component::new("enlace-message-id"),
    ];
    c.extend(
        OPTIONAL_TRAILERS
            .iter()
            .filter(|n| trailers.contains_key(**n))
            .map(|n| Component::named(*n, false)),
    );
    c.extend(covered(metadata::custom_names(trailers)));
    c.extend(request_binding(request));
    c
}

/// Signs a response head (status 200, content type, message id, custom metadata) in place.
pub(super) fn sign_response_head(
    s: &Signer,
    headers: &mut HeaderMap,
    request: &Bound,
) -> Result<(), Problem> {
    let components = response_head_components(headers, request);
    let signed = signature::sign(
        &s.key,
        &components,
        &SigParams::enlace(s.created, &s.keyid, HEADERS_TAG),
        &MessageContext::response(
            Message::response(StatusCode::OK, headers),
            request.message(),
        ),
    )?;
    insert_signature(headers, signed)
}

/// Verifies a response head against the request as sent.
pub(super) fn verify_response_head<K: Fn(&str) -> Result<Vec<Vec<u8>>, Problem> + ?Sized>(
    headers: &HeaderMap,
    sent: &Bound,
    v: &Verifier<'_, K>,
) -> Result<(), Problem> {
    let required = response_head_components(headers, sent);
    verify_with(
        headers,
        &MessageContext::response(Message::response(StatusCode::OK, headers), sent.message()),
        &required,
        HEADERS_TAG,
        v,
    )?;
    same_message(headers, sent)
}

fn same_message(section: &HeaderMap, sent: &Bound) -> Result<(), Problem> {
    if field(section, context::MESSAGE_ID) != sent.message_id() {
        return Err(Problem::new(
            ProblemKind::SignatureInvalid,
            "the response names another message id than the request",
        ));
    }
    Ok(())
}

/// What [`HEAD_DIGEST`] covers of a response head: its content type, message id and custom
/// metadata, as the lines of a signature base.
fn head_lines(headers: &HeaderMap) -> Result<String, Problem> {
    let mut c = vec![
        Component::new("content-type"),
        Component::new("enlace-message-id"),
    ];
    c.extend(covered(metadata::custom_names(headers)));
    let msg = MessageContext::response(
        Message::response(StatusCode::OK, headers),
        Message::response(StatusCode::OK, headers),
    );
    signature::component_lines(&c, &msg).map_err(|e| {
        Problem::new(
            ProblemKind::SignatureInvalid,
            format!("the response head cannot be digested: {e}"),
        )
    })
}

/// The [`HEAD_DIGEST`] value of a response head of one message, for its final status.
pub(super) fn head_digest(headers: &HeaderMap) -> Result<String, Problem> {
    Ok(signature::content_digest(head_lines(headers)?.as_bytes()))
}

/// Checks the head of a response of one message (`None`: no head came, a trailers-only
/// answer) against the [`HEAD_DIGEST`] its final status carries (the status's signature
/// verified first). A head without a digest to match, one that does not match, or a digest
/// binding a head that never came: the answer was altered on the way.
pub(super) fn check_head_digest(
    head: Option<&HeaderMap>,
    status: &HeaderMap,
) -> Result<(), Problem> {
    let claimed = field(status, HEAD_DIGEST);
    let head = match (head, claimed.is_empty()) {
        (None, true) => return Ok(()),
        (Some(head), false) => head,
        (Some(_), true) => {
            return Err(Problem::new(
                ProblemKind::SignatureInvalid,
                format!(
                    "the response head is not signed, and the final status has no {HEAD_DIGEST}"
                ),
            ));
        }
        (None, false) => {
            return Err(Problem::new(
                ProblemKind::SignatureInvalid,
                format!("the final status binds a response head ({HEAD_DIGEST}) that never came"),
            ));
        }
    };
    signature::check_content_digest(claimed, head_lines(head)?.as_bytes()).map_err(|p| {
        Problem::new(
            ProblemKind::SignatureInvalid,
            format!(
                "the response head is not the one the final status binds: {}",
                p.detail
            ),
        )
    })
}

/// Signs the final status (trailers, or the headers of a trailers-only response) in place.
pub(super) fn sign_trailers(
    s: &Signer,
    trailers: &mut HeaderMap,
    request: &Bound,
) -> Result<(), Problem> {
    let components = trailer_components(trailers, request);
    let signed = signature::sign(
        &s.key,
        &components,
        &SigParams::enlace(s.created, &s.keyid, TRAILERS_TAG),
        &MessageContext::response(
            Message::response(StatusCode::OK, trailers),
            request.message(),
        ),
    )?;
    insert_signature(trailers, signed)
}

/// The chains a consumer node checks the final status against: the response messages it
/// received and, for a streamed request, the request messages it sent.
pub(super) struct Chains<'a> {
    pub received: &'a StreamDigest,
    pub sent_request: Option<&'a StreamDigest>,
}

/// The final status must verify, bound to the request as sent; its chain must be the chain of
/// the messages received (a message dropped, added, altered or reordered in between is caught
/// here, before the status is released); and for a streamed request, the request chain the
/// provider node signs must be the one sent when it says it received as many messages (it may
/// have received fewer, if its backend ended the call first; never more).
pub(super) fn verify_trailers<K: Fn(&str) -> Result<Vec<Vec<u8>>, Problem> + ?Sized>(
    trailers: &HeaderMap,
    sent: &Bound,
    chains: &Chains<'_>,
    v: &Verifier<'_, K>,
) -> Result<(), Problem> {
    let required = trailer_components(trailers, sent);
    verify_with(
        trailers,
        &MessageContext::response(Message::response(StatusCode::OK, trailers), sent.message()),
        &required,
        TRAILERS_TAG,
        v,
    )?;
    same_message(trailers, sent)?;
    let claimed = parse_stream_digest(field(trailers, STREAM_DIGEST))?;
    if !claimed.matches(chains.received) {
        return Err(Problem::new(
            ProblemKind::SignatureInvalid,
            format!(
                "the signed response chain is {}, but the messages received chain to {}",
                field(trailers, STREAM_DIGEST),
                chains.received.value()
            ),
        ));
    }
    let Some(sent_request) = chains.sent_request else {
        return Ok(());
    };
    let value = field(trailers, REQUEST_STREAM_DIGEST);
    if value.is_empty() {
        return Err(Problem::new(
            ProblemKind::SignatureInvalid,
            format!("the final status of a streamed request has no {REQUEST_STREAM_DIGEST}"),
        ));
    }
    let got = parse_stream_digest(value)?;
    if got.count > sent_request.count()
        || (got.count == sent_request.count() && !got.matches(sent_request))
    {
        return Err(Problem::new(
            ProblemKind::SignatureInvalid,
            format!(
                "the provider node signs request messages chaining to {value}, but those sent \
                 chain to {}",
                sent_request.value()
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests;

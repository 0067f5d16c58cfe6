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
use crate::signature::{
    self, Component, Expected, Message, MessageContext, SigParams, request_components,
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
mod tests {
    use super::*;
    use crate::relay::grpc::put;

    /// A fresh signing key `$key`, and `$v`: a verifier trusting only that key, its clock at
    /// 1,000 s with 30 s of skew.
    macro_rules! key_and_verifier {
        ($key:ident, $v:ident) => {
            let $key = SigningKey::generate().unwrap();
            let public = $key.public_key_bytes();
            let key_for = |_: &str| Ok(vec![public.clone()]);
            let $v = Verifier {
                now: 1_000,
                max_skew_secs: 30,
                key_for: &key_for,
            };
        };
    }

    const ID: &str = "0193a0c0-0000-7000-8000-000000000001";
    const KEYID: &str = "CL-DEV/GOV/61002000-3/node/a";

    fn request(streamed: bool) -> Bound {
        let mut headers = HeaderMap::new();
        put(&mut headers, context::MESSAGE_ID, ID);
        put(&mut headers, context::CLIENT, "CL-DEV/GOV/60803000-K/renta");
        put(
            &mut headers,
            context::SERVICE,
            "CL-DEV/GOV/61002000-3/registro-civil/personas-grpc/v1.0",
        );
        put(
            &mut headers,
            context::CONTRACT,
            "ctr_01J0000000000000000000000",
        );
        put(&mut headers, "x-request-ref", "expediente-77");
        if !streamed {
            put(
                &mut headers,
                signature::CONTENT_DIGEST,
                &signature::content_digest(b"x"),
            );
        }
        Bound {
            method: http::Method::POST,
            uri: "https://127.0.0.1:1/g1/CL-DEV/GOV/61002000-3/registro-civil/personas-grpc/v1/personas.v1.Personas/ListDocuments"
                .parse()
                .unwrap(),
            headers,
        }
    }

    fn chain(messages: &[&[u8]]) -> StreamDigest {
        let mut c = StreamDigest::new();
        for m in messages {
            c.update(m);
        }
        c
    }

    fn signer(key: &SigningKey) -> Signer {
        Signer {
            key: std::sync::Arc::new(SigningKey::from_pem(key.to_pem()).unwrap()),
            keyid: KEYID.into(),
            created: 1_000,
        }
    }

    fn final_status(key: &SigningKey, sent: &StreamDigest, req: &Bound) -> HeaderMap {
        let mut t = HeaderMap::new();
        put(&mut t, GRPC_STATUS, "0");
        put(&mut t, context::MESSAGE_ID, ID);
        put(&mut t, STREAM_DIGEST, &sent.value());
        put(&mut t, "x-backend-note", "ok");
        if req.digest().is_none() {
            put(
                &mut t,
                REQUEST_STREAM_DIGEST,
                &chain(&[b"q1", b"q2"]).value(),
            );
        }
        sign_trailers(&signer(key), &mut t, req).unwrap();
        t
    }

    #[test]
    fn the_trailer_signature_covers_the_chain_the_status_and_the_metadata() {
        key_and_verifier!(key, v);
        let req = request(false);
        let sent = chain(&[b"one", b"two"]);
        let t = final_status(&key, &sent, &req);
        fn chains(received: &StreamDigest) -> Chains<'_> {
            Chains {
                received,
                sent_request: None,
            }
        }
        verify_trailers(&t, &req, &chains(&sent), &v).unwrap();

        // A message lost, reordered or altered on the way breaks the chain.
        for received in [
            chain(&[b"one"]),
            chain(&[b"two", b"one"]),
            chain(&[b"one", b"tw0"]),
        ] {
            let err = verify_trailers(&t, &req, &chains(&received), &v).unwrap_err();
            assert_eq!(err.kind, ProblemKind::SignatureInvalid, "{err:?}");
        }
        // A changed status, a changed or added metadata field, or a claimed chain changed to
        // match, breaks the signature.
        for (name, value) in [
            (GRPC_STATUS, "5"),
            ("x-backend-note", "changed"),
            ("x-added", "in transit"),
            (PROBLEM_TYPE, "urn:enlace:problem:replay"),
        ] {
            let mut changed = t.clone();
            put(&mut changed, name, value);
            assert!(
                verify_trailers(&changed, &req, &chains(&sent), &v).is_err(),
                "{name}"
            );
        }
        let mut forged = t.clone();
        let other = chain(&[b"one"]);
        put(&mut forged, STREAM_DIGEST, &other.value());
        assert!(verify_trailers(&forged, &req, &chains(&other), &v).is_err());
        // Bound to the request: another request's trailers do not verify.
        let mut another = request(false);
        put(
            &mut another.headers,
            context::MESSAGE_ID,
            "0193a0c0-0000-7000-8000-000000000002",
        );
        assert!(verify_trailers(&t, &another, &chains(&sent), &v).is_err());
    }

    #[test]
    fn the_final_status_of_a_streamed_request_binds_its_chain() {
        key_and_verifier!(key, v);
        let req = request(true);
        let received = chain(&[b"r"]);
        let t = final_status(&key, &received, &req);
        let check = |sent: &StreamDigest| {
            verify_trailers(
                &t,
                &req,
                &Chains {
                    received: &received,
                    sent_request: Some(sent),
                },
                &v,
            )
        };
        // The provider node received both messages sent.
        check(&chain(&[b"q1", b"q2"])).unwrap();
        // It may have stopped reading before a third one (its backend ended the call first).
        check(&chain(&[b"q1", b"q2", b"q3"])).unwrap();
        // It cannot have received other messages, nor more than were sent.
        assert!(check(&chain(&[b"q1", b"qX"])).is_err());
        assert!(check(&chain(&[b"q1"])).is_err());
        // Without the request chain, the final status of a streamed request is refused.
        let mut stripped = t.clone();
        stripped.remove(REQUEST_STREAM_DIGEST);
        let err = verify_trailers(
            &stripped,
            &req,
            &Chains {
                received: &received,
                sent_request: Some(&chain(&[b"q1", b"q2"])),
            },
            &v,
        )
        .unwrap_err();
        assert_eq!(err.kind, ProblemKind::SignatureInvalid);
    }

    #[test]
    fn request_trailers_sign_the_request_chain() {
        key_and_verifier!(key, v);
        let req = request(true);
        let sent = chain(&[b"a", b"b", b"c"]);
        let t = request_trailers(&signer(&key), &req, &sent).unwrap();
        verify_request_trailers(&t, &req, &sent, &v).unwrap();
        for received in [
            chain(&[b"a", b"b"]),
            chain(&[b"a", b"c", b"b"]),
            chain(&[b"a", b"b", b"C"]),
        ] {
            let err = verify_request_trailers(&t, &req, &received, &v).unwrap_err();
            assert_eq!(err.kind, ProblemKind::SignatureInvalid, "{err:?}");
        }
        // Another message's trailers, or a stale signature, do not verify.
        let mut another = request(true);
        put(
            &mut another.headers,
            context::MESSAGE_ID,
            "0193a0c0-0000-7000-8000-000000000002",
        );
        assert!(verify_request_trailers(&t, &another, &sent, &v).is_err());
        let late = Verifier { now: 2_000, ..v };
        let err = verify_request_trailers(&t, &req, &sent, &late).unwrap_err();
        assert_eq!(err.kind, ProblemKind::Stale);
    }

    #[test]
    fn request_heads_are_signed_with_or_without_a_body_digest() {
        key_and_verifier!(key, v);
        let mut single = request(false);
        sign_request_head(&signer(&key), &mut single, false).unwrap();
        verify_request_head(&single, Some(b"x"), &v).unwrap();
        assert!(verify_request_head(&single, Some(b"y"), &v).is_err());
        // A single-message request cannot be taken for a streamed one, nor the reverse.
        assert!(verify_request_head(&single, None, &v).is_err());
        let mut streamed = request(true);
        sign_request_head(&signer(&key), &mut streamed, true).unwrap();
        verify_request_head(&streamed, None, &v).unwrap();
        assert!(verify_request_head(&streamed, Some(b"x"), &v).is_err());
        // Custom metadata is covered: changed or added on the way, it is refused.
        for (name, value) in [("x-request-ref", "other"), ("x-added", "1")] {
            let mut changed = streamed.clone();
            put(&mut changed.headers, name, value);
            assert!(verify_request_head(&changed, None, &v).is_err(), "{name}");
        }
    }

    /// A response head with the backend's custom metadata, as the provider node sends it.
    fn backend_head() -> HeaderMap {
        let mut h = HeaderMap::new();
        put(&mut h, "content-type", "application/grpc");
        put(&mut h, context::MESSAGE_ID, ID);
        put(&mut h, "x-backend-trace", "t-1");
        h
    }

    #[test]
    fn response_heads_cover_their_metadata_and_message_id() {
        key_and_verifier!(key, v);
        let req = request(false);
        let mut h = backend_head();
        sign_response_head(&signer(&key), &mut h, &req).unwrap();
        verify_response_head(&h, &req, &v).unwrap();
        // Transport fields added on the way are not metadata and do not matter.
        let mut dated = h.clone();
        put(&mut dated, "date", "Tue, 01 Dec 2026 00:00:00 GMT");
        verify_response_head(&dated, &req, &v).unwrap();
        for (name, value) in [("x-backend-trace", "t-2"), ("x-added", "1")] {
            let mut changed = h.clone();
            put(&mut changed, name, value);
            assert!(verify_response_head(&changed, &req, &v).is_err(), "{name}");
        }
        let mut another = request(false);
        put(
            &mut another.headers,
            context::MESSAGE_ID,
            "0193a0c0-0000-7000-8000-000000000002",
        );
        assert!(verify_response_head(&h, &another, &v).is_err());
    }

    #[test]
    fn the_head_of_one_message_is_bound_by_the_signed_final_status() {
        key_and_verifier!(key, v);
        let req = request(false);
        let head = backend_head();
        let digest = head_digest(&head).unwrap();

        let mut t = HeaderMap::new();
        put(&mut t, GRPC_STATUS, "0");
        put(&mut t, context::MESSAGE_ID, ID);
        put(&mut t, STREAM_DIGEST, &StreamDigest::new().value());
        put(&mut t, HEAD_DIGEST, &digest);
        sign_trailers(&signer(&key), &mut t, &req).unwrap();
        let received = StreamDigest::new();
        let chains = Chains {
            received: &received,
            sent_request: None,
        };
        verify_trailers(&t, &req, &chains, &v).unwrap();
        check_head_digest(Some(&head), &t).unwrap();
        // Transport fields are not metadata and do not matter.
        let mut dated = head.clone();
        put(&mut dated, "date", "Tue, 01 Dec 2026 00:00:00 GMT");
        check_head_digest(Some(&dated), &t).unwrap();
        // Metadata changed, added or removed, another content type or message id: refused.
        let mut changes = Vec::new();
        for (name, value) in [
            ("x-backend-trace", "t-2"),
            ("x-added", "1"),
            ("content-type", "application/grpc+proto"),
            (context::MESSAGE_ID, "0193a0c0-0000-7000-8000-000000000002"),
        ] {
            let mut changed = head.clone();
            put(&mut changed, name, value);
            changes.push((name, changed));
        }
        let mut removed = head.clone();
        removed.remove("x-backend-trace");
        changes.push(("removed", removed));
        for (what, changed) in changes {
            let err = check_head_digest(Some(&changed), &t).unwrap_err();
            assert_eq!(err.kind, ProblemKind::SignatureInvalid, "{what}");
            assert!(err.detail.contains("not the one"), "{what}: {}", err.detail);
        }
        // The digest is under the signature: changing it breaks the final status.
        let mut swapped = t.clone();
        put(
            &mut swapped,
            HEAD_DIGEST,
            &signature::content_digest(b"another head"),
        );
        assert!(verify_trailers(&swapped, &req, &chains, &v).is_err());
        // A final status without a digest binds no head.
        let mut bare = HeaderMap::new();
        put(&mut bare, GRPC_STATUS, "0");
        let err = check_head_digest(Some(&head), &bare).unwrap_err();
        assert!(err.detail.contains("has no"), "{}", err.detail);
        check_head_digest(None, &bare).unwrap();
        // A digest binding a head that never came (a trailers-only answer made of the status).
        let err = check_head_digest(None, &t).unwrap_err();
        assert!(err.detail.contains("never came"), "{}", err.detail);
    }
}

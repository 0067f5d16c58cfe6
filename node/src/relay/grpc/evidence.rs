//! The signatures a gRPC exchange's log records hold, checked offline from the records alone
//! (for evidence bundles, `enlace log check`): each is rebuilt as it was signed and verified by
//! the rule it was made by.
//!
//! What a record holds (see [`super::final_record`] and docs/PROTOCOL.md, "gRPC", "Logging"):
//! a request record the request head (`enlace-request` or `enlace-request-stream`) with its
//! custom metadata; a record closing an exchange the final status (`enlace-grpc-trailers`)
//! unprefixed, the response head prefixed [`HEAD_PREFIX`] (signed, `enlace-grpc-headers`, for a
//! server stream; bound by the final status's [`HEAD_DIGEST`] for one message), and a
//! streamed request's trailers (`enlace-grpc-request-trailers`) prefixed
//! [`REQUEST_TRAILERS_PREFIX`]; a provider node's refusal its signed status, and the request as
//! the peer node sent it prefixed [`REFUSED_REQUEST_PREFIX`]. The request direction is signed
//! by the consumer node, the response direction by the provider node. A request counts as
//! streamed (no `content-digest` to bind to) when its record carries no content digest, and a
//! closing record's request when it carries the request chain (`enlace-request-stream-digest`).

use enlace_core::problem::{Problem, ProblemKind};
use enlace_description::grpc::{FrameDecoder, Side, StreamDigest, parse_stream_digest};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use time::OffsetDateTime;

use super::signing::{
    self, HEAD_DIGEST, HEADERS_TAG, REQUEST_STREAM_TAG, REQUEST_TRAILER_COMPONENTS,
    REQUEST_TRAILERS_TAG, TRAILERS_TAG, Verifier,
};
use super::{
    Bound, GRPC_PREFIX, HEAD_PREFIX, REFUSED_REQUEST_PREFIX, REQUEST_STREAM_DIGEST,
    REQUEST_TRAILERS_PREFIX, STREAM_DIGEST,
};
use crate::relay::exchange::context;
use enlace_httpsig::{self as signature, Message, MessageContext};
use enlace_msglog::{Record, RecordKind};

/// How far a signature's `created` may lie from the time its record gives, in seconds, as for
/// REST records.
const SKEW_SECS: i64 = 300;

/// Whether a record is of a gRPC exchange: its target is a gRPC path between nodes, or its
/// signature carries one of the tags only gRPC uses.
pub(crate) fn is_grpc(r: &Record) -> bool {
    if r.target
        .as_deref()
        .is_some_and(|t| t.starts_with(GRPC_PREFIX))
    {
        return true;
    }
    r.signature_input
        .as_deref()
        .and_then(signature::tag_of)
        .is_some_and(|t| [REQUEST_STREAM_TAG, TRAILERS_TAG].contains(&t.as_str()))
}

/// The nodes of the exchange: the consumer node signs the request direction, the provider
/// node the response direction.
pub(crate) struct Signers<'a> {
    pub consumer: Option<&'a str>,
    pub provider: Option<&'a str>,
}

/// A signer's public key, valid at the given time.
pub(crate) type KeyOf<'a> = dyn Fn(&str, OffsetDateTime) -> Result<Vec<u8>, String> + 'a;

/// A verifier's key lookup, as the signing functions take it.
type KeyFor<'a> = dyn Fn(&str) -> Result<Vec<Vec<u8>>, Problem> + 'a;

/// Checks every signature `r` holds, and where its bodies were kept that they are what was
/// signed; one line per check. `since` is when the exchange began as far as the evidence
/// shows: a closing record holds a response head and request trailers signed before it.
pub(crate) fn check(
    r: &Record,
    since: OffsetDateTime,
    signers: &Signers<'_>,
    key_of: &KeyOf<'_>,
) -> Result<Vec<String>, String> {
    let method: Method = r
        .method
        .as_deref()
        .unwrap_or("POST")
        .parse()
        .map_err(|_| "the record's method is malformed".to_string())?;
    let uri: Uri = r
        .target
        .as_deref()
        .ok_or("the record has no target")?
        .parse()
        .map_err(|_| "the record's target is malformed".to_string())?;
    let at = r.at.unix_timestamp();
    let closing = Window { from: at, to: at };
    let during = Window {
        from: since.unix_timestamp().min(at),
        to: at,
    };
    let check = Checker { r, key_of };
    let mut lines = Vec::new();

    if matches!(r.kind, RecordKind::RequestOut | RecordKind::RequestIn) {
        if r.signature.is_none() {
            return Ok(lines);
        }
        let mut headers = section(&r.headers, |n| Some(n.to_string()))?;
        put(
            &mut headers,
            signature::CONTENT_DIGEST,
            r.request_digest.as_deref(),
        )?;
        put_signature(&mut headers, r)?;
        let request = Bound {
            method,
            uri,
            headers,
        };
        let streamed = r.request_digest.is_none();
        let what = format!("request head ({})", signing::request_tag(streamed));
        lines.push(check.signature(&what, signers.consumer, &closing, &|v| {
            verify_request(&request, streamed, v)
        })?);
        if let (Some(digest), Some(body)) = (&r.request_digest, &r.body) {
            signature::check_content_digest(digest, body)
                .map_err(|p| format!("the request body kept: {}", p.detail))?;
            lines.push("the request body kept matches its signed content-digest".into());
        }
        return Ok(lines);
    }

    let refusal = r.kind == RecordKind::Refusal;
    let main = section(&r.headers, |n| {
        let other = n.starts_with(HEAD_PREFIX)
            || n.starts_with(REQUEST_TRAILERS_PREFIX)
            || (refusal && n.starts_with(REFUSED_REQUEST_PREFIX));
        (!other).then(|| n.to_string())
    })?;
    let streamed = main.contains_key(REQUEST_STREAM_DIGEST);
    let mut bound = HeaderMap::new();
    put(&mut bound, context::MESSAGE_ID, Some(&r.message_id))?;
    if !streamed {
        put(
            &mut bound,
            signature::CONTENT_DIGEST,
            r.request_digest.as_deref(),
        )?;
    }
    let request = Bound {
        method: method.clone(),
        uri: uri.clone(),
        headers: bound,
    };
    // A head with its own signature (server streaming) is checked here; one without (the
    // head of one message) must be bound by the final status's head digest, checked below.
    let mut unsigned_head = None;
    let head = section(&r.headers, |n| {
        n.strip_prefix(HEAD_PREFIX).map(String::from)
    })?;
    if !head.is_empty() {
        if head.contains_key(signature::SIGNATURE) {
            let what = format!("response head ({HEADERS_TAG})");
            lines.push(check.signature(&what, signers.provider, &during, &|v| {
                signing::verify_response_head(&head, &request, v)
            })?);
        } else {
            unsigned_head = Some(head);
        }
    }
    if unsigned_head.is_some() && r.signature.is_none() {
        return Err("the response head is not signed, and no signed final status binds it".into());
    }
    if r.signature.is_some() {
        let mut status = main;
        put_signature(&mut status, r)?;
        let what = format!("final status ({TRAILERS_TAG})");
        lines.push(check.signature(&what, signers.provider, &closing, &|v| {
            let required = signing::trailer_components(&status, &request);
            signing::verify_with(
                &status,
                &MessageContext::response(
                    Message::response(StatusCode::OK, &status),
                    request.message(),
                ),
                &required,
                TRAILERS_TAG,
                v,
            )
        })?);
        match &unsigned_head {
            Some(head) => {
                signing::check_head_digest(Some(head), &status).map_err(|p| p.detail)?;
                lines.push(format!(
                    "the response head matches the {HEAD_DIGEST} of the signed final status"
                ));
            }
            None if status.contains_key(HEAD_DIGEST) => {
                return Err(format!(
                    "the signed final status binds a response head ({HEAD_DIGEST}) that the \
                     record does not hold"
                ));
            }
            None => {}
        }
        if let Some(line) = check_kept_messages(r, &status)? {
            lines.push(line);
        }
    }
    if let Some(trailers) = prefixed(&r.headers, REQUEST_TRAILERS_PREFIX)? {
        let what = format!("request trailers ({REQUEST_TRAILERS_TAG})");
        lines.push(check.signature(&what, signers.consumer, &during, &|v| {
            signing::verify_with(
                &trailers,
                &MessageContext::request(Message::request(&method, &uri, &trailers)),
                REQUEST_TRAILER_COMPONENTS,
                REQUEST_TRAILERS_TAG,
                v,
            )
        })?);
    }
    if refusal && let Some(headers) = prefixed(&r.headers, REFUSED_REQUEST_PREFIX)? {
        // Told, never held against the evidence: a bad signature may be why it was refused.
        let request = Bound {
            method,
            uri,
            headers,
        };
        let streamed = !request.headers.contains_key(signature::CONTENT_DIGEST);
        let what = "the refused request as the peer node sent it";
        let checked = check.signature(what, signers.consumer, &closing, &|v| {
            verify_request(&request, streamed, v)
        });
        lines.push(
            checked.unwrap_or_else(|e| format!("{e} (a bad signature may be why it was refused)")),
        );
    }
    Ok(lines)
}

/// Verifies signatures of one record with its signers' keys.
struct Checker<'a> {
    r: &'a Record,
    key_of: &'a KeyOf<'a>,
}

impl Checker<'_> {
    /// Runs `verify` with `signer`'s key, the clock within `window`; the line saying so.
    fn signature(
        &self,
        what: &str,
        signer: Option<&str>,
        window: &Window,
        verify: &dyn Fn(&Verifier<'_, KeyFor<'_>>) -> Result<(), Problem>,
    ) -> Result<String, String> {
        let signer = signer.ok_or_else(|| format!("{what}: the record names no signer"))?;
        let key = (self.key_of)(signer, self.r.at).map_err(|e| format!("{what}: {e}"))?;
        let key_for = |keyid: &str| {
            if keyid != signer {
                return Err(Problem::new(
                    ProblemKind::SignatureInvalid,
                    format!("signed by {keyid}, not by {signer}"),
                ));
            }
            Ok(vec![key.clone()])
        };
        let (now, max_skew_secs) = window.now_and_skew();
        verify(&Verifier {
            now,
            max_skew_secs,
            key_for: &key_for,
        })
        .map_err(|p| format!("{what}: {}", p.detail))?;
        Ok(format!("{what}: RFC 9421 signature of {signer} verifies"))
    }
}

/// A request head's signature, by the rule of its kind: with `content-digest` (whose body the
/// record may not hold) for a single-message request, without for a streamed one.
fn verify_request(
    request: &Bound,
    streamed: bool,
    v: &Verifier<'_, KeyFor<'_>>,
) -> Result<(), Problem> {
    let required = signing::request_head_components(&request.headers, streamed);
    signing::verify_with(
        &request.headers,
        &MessageContext::request(request.message()),
        &required,
        signing::request_tag(streamed),
        v,
    )
}

/// The response messages kept with a closing record (`log_bodies`) must chain to the signed
/// `enlace-stream-digest`.
fn check_kept_messages(r: &Record, status: &HeaderMap) -> Result<Option<String>, String> {
    let Some(kept) = &r.body else {
        return Ok(None);
    };
    let signed = status
        .get(STREAM_DIGEST)
        .and_then(|v| v.to_str().ok())
        .ok_or("the final status has no enlace-stream-digest")?;
    let signed = parse_stream_digest(signed).map_err(|p| p.detail)?;
    let mut decoder = FrameDecoder::new(Side::Response, kept.len());
    let mut chain = StreamDigest::new();
    for m in decoder.push(kept).map_err(|p| p.detail)? {
        chain.update(&m.identity().map_err(|p| p.detail)?);
    }
    decoder
        .finish()
        .map_err(|p| format!("the messages kept: {}", p.detail))?;
    if !signed.matches(&chain) {
        return Err(format!(
            "the {} response messages kept chain to {}, not to the signed chain",
            chain.count(),
            chain.value()
        ));
    }
    Ok(Some(format!(
        "the {} response messages kept match the signed chain",
        chain.count()
    )))
}

/// The span of time a signature's `created` may fall in.
struct Window {
    from: i64,
    to: i64,
}

impl Window {
    /// The verifier's clock and skew covering the window widened by [`SKEW_SECS`].
    fn now_and_skew(&self) -> (i64, i64) {
        let (from, to) = (self.from - SKEW_SECS, self.to + SKEW_SECS);
        (from + (to - from) / 2, (to - from + 1) / 2)
    }
}

/// The record's fields whose names `keep` maps to a name, as a header section (values in order).
fn section(
    fields: &[(String, String)],
    keep: impl Fn(&str) -> Option<String>,
) -> Result<HeaderMap, String> {
    let mut h = HeaderMap::new();
    for (name, value) in fields {
        let Some(name) = keep(name) else { continue };
        let n: HeaderName = name
            .parse()
            .map_err(|_| format!("field name `{name}` is malformed"))?;
        let v = HeaderValue::from_str(value).map_err(|_| format!("field `{name}` is malformed"))?;
        h.append(n, v);
    }
    Ok(h)
}

/// The fields prefixed `prefix`, without it; `None` when the record holds no signature for
/// that section.
fn prefixed(fields: &[(String, String)], prefix: &str) -> Result<Option<HeaderMap>, String> {
    let h = section(fields, |n| n.strip_prefix(prefix).map(String::from))?;
    Ok(h.contains_key(signature::SIGNATURE_INPUT).then_some(h))
}

fn put(h: &mut HeaderMap, name: &'static str, value: Option<&str>) -> Result<(), String> {
    if let Some(v) = value {
        h.insert(
            name,
            HeaderValue::from_str(v).map_err(|_| format!("`{name}` is malformed"))?,
        );
    }
    Ok(())
}

fn put_signature(h: &mut HeaderMap, r: &Record) -> Result<(), String> {
    put(h, signature::SIGNATURE_INPUT, r.signature_input.as_deref())?;
    put(h, signature::SIGNATURE, r.signature.as_deref())
}

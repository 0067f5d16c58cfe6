//! The generic gRPC relay: a local backend's gRPC call relayed to the provider node and on to
//! its gRPC backend, message by message, driven by the service version's descriptor set (no
//! generated code), for every kind of call: unary, server, client and bidirectional streaming.
//!
//! `consumer/` is the consumer node's side, `provider/` the provider node's, each a sequence of
//! named phases, with the closing phase (`finish.rs`: the final status verified or signed, the
//! closing and access records) and the request direction of a streamed request
//! (`requests.rs`) in files of their own, and the provider's refusals in `refusal.rs`;
//! `stream.rs` moves messages (strictly decoded, bounded, chained)
//! in both directions at once; `signing/` holds the four signatures of an exchange (request
//! head, request trailers of a streamed request, response head, response trailers);
//! `metadata.rs` decides which gRPC metadata crosses the nodes; `evidence.rs` checks the
//! signatures the log records hold, offline. Each call runs in its own task, so that its ending
//! is recorded even when the caller resets the stream before any answer.
//! See docs/PROTOCOL.md, "gRPC".

mod consumer;
pub(crate) mod evidence;
mod metadata;
mod provider;
mod signing;
mod stream;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use enlace_core::problem::{Culprit, Problem, ProblemKind};
use enlace_description::grpc::StreamDigest;
use http::{HeaderMap, HeaderValue, Method, Response, Uri};
use http_body_util::{Either, Full};
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::exchange::context;
use super::exchange::log_record::{About, context_record, fill_signature, set_target};
use crate::net::{Body, ChannelBody};
use enlace_httpsig as signature;
use enlace_msglog::{Record, RecordKind};

pub(crate) use consumer::consumer;
pub(crate) use provider::provider;

pub use crate::relay::exchange::target::GRPC_PREFIX;
/// Metadata naming the provider service when several publish the same protobuf service.
pub const PROVIDER: &str = "enlace-provider";
/// Metadata (trailers) carrying the RFC 9457 problem type of an Enlace refusal.
pub const PROBLEM_TYPE: &str = "enlace-problem-type";
/// Trailer carrying the chain of the messages of the stream it ends: `COUNT:HEX`.
pub const STREAM_DIGEST: &str = "enlace-stream-digest";
/// Response trailer carrying the chain of a streamed request as the provider node received it.
pub const REQUEST_STREAM_DIGEST: &str = "enlace-request-stream-digest";
const GRPC_STATUS: &str = "grpc-status";
const GRPC_MESSAGE: &str = "grpc-message";
const GRPC_STATUS_DETAILS: &str = "grpc-status-details-bin";
const GRPC_TIMEOUT: &str = "grpc-timeout";
const GRPC_ENCODING: &str = "grpc-encoding";
const GRPC_ACCEPT_ENCODING: &str = "grpc-accept-encoding";
/// Frames that may wait between a relay task and the socket.
const CHANNEL_FRAMES: usize = 16;
/// Prefix of the response head's fields in the record closing an exchange.
pub(crate) const HEAD_PREFIX: &str = "enlace-head-";
/// Prefix of the request trailers' fields (a streamed request) in the record closing an
/// exchange.
pub(crate) const REQUEST_TRAILERS_PREFIX: &str = "enlace-request-trailers-";
pub(crate) use crate::relay::exchange::log_record::REFUSED_REQUEST_PREFIX;

/// What the relay's listeners answer with: a whole body (REST, trailers-only gRPC) or a stream.
pub(crate) type OutBody = Either<Body, ChannelBody>;

/// Whether a request is for the gRPC relay (its content type starts with `application/grpc`;
/// the relay then accepts `application/grpc` and `application/grpc+proto` only).
pub(crate) fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

// ---- statuses and answers ----

fn put(h: &mut HeaderMap, name: &'static str, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        h.insert(name, v);
    }
}

/// `grpc-message` is percent-encoded (gRPC over HTTP/2): bytes outside 0x20–0x7E, and `%`.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (0x20..0x7f).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The final status of a refusal: its gRPC code, its detail, its problem type and culprit.
fn problem_trailers(p: &Problem, message_id: Option<&str>) -> HeaderMap {
    let mut h = HeaderMap::new();
    put(&mut h, GRPC_STATUS, &p.kind.grpc_code().to_string());
    let detail: String = p.detail.chars().take(500).collect();
    put(&mut h, GRPC_MESSAGE, &percent_encode(&detail));
    put(&mut h, PROBLEM_TYPE, &p.type_uri());
    put(&mut h, context::ERROR, p.culprit().as_str());
    if let Some(id) = message_id {
        put(&mut h, context::MESSAGE_ID, id);
    }
    h
}

/// Headers every gRPC answer of a node carries: the content type, and the only message
/// encoding it accepts.
fn grpc_head(h: &mut HeaderMap) {
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    h.insert(GRPC_ACCEPT_ENCODING, HeaderValue::from_static("identity"));
}

/// A trailers-only response: HTTP 200, `application/grpc`, the status in the headers.
fn trailers_only(mut headers: HeaderMap) -> Response<OutBody> {
    grpc_head(&mut headers);
    let mut r = Response::new(Either::Left(Full::new(Bytes::new())));
    *r.headers_mut() = headers;
    r
}

/// A streamed response: `headers` now, the messages and trailers from `body`.
fn streamed(mut headers: HeaderMap, body: ChannelBody) -> Response<OutBody> {
    grpc_head(&mut headers);
    let mut r = Response::new(Either::Right(body));
    *r.headers_mut() = headers;
    r
}

fn grpc_status_of(h: &HeaderMap) -> String {
    h.get(GRPC_STATUS)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

/// The answer's head, handed to hyper once. Hyper drops the service future, and with it the
/// receiver, when the caller resets the stream before the head: [`Reply::closed`] tells.
pub(super) struct Reply {
    tx: Option<oneshot::Sender<Response<OutBody>>>,
}

impl Reply {
    /// A reply and the receiver the listener awaits.
    fn new() -> (Reply, oneshot::Receiver<Response<OutBody>>) {
        let (tx, rx) = oneshot::channel();
        (Reply { tx: Some(tx) }, rx)
    }

    /// Sends the head (once; later calls do nothing). False when the caller is gone.
    fn send(&mut self, resp: Response<OutBody>) -> bool {
        match self.tx.take() {
            Some(tx) => tx.send(resp).is_ok(),
            None => false,
        }
    }

    /// Resolves when the caller went away before the head was sent; never after.
    async fn closed(&mut self) {
        match &mut self.tx {
            Some(tx) => tx.closed().await,
            None => std::future::pending().await,
        }
    }
}

/// Runs one call in its own task and answers with the head it sends.
async fn answer<F>(call: impl FnOnce(Reply) -> F) -> Response<OutBody>
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let (reply, rx) = Reply::new();
    tokio::spawn(call(reply));
    match rx.await {
        Ok(resp) => resp,
        Err(_) => trailers_only(problem_trailers(
            &Problem::new(ProblemKind::Internal, "the call ended without an answer"),
            None,
        )),
    }
}

// ---- time: deadlines and idleness ----

/// `grpc-timeout`: 1 to 8 digits and a unit.
fn read_timeout(headers: &HeaderMap) -> Result<Option<Duration>, Problem> {
    let Some(s) = context::single(headers, GRPC_TIMEOUT, 9)? else {
        return Ok(None);
    };
    let bad = || {
        Problem::new(
            ProblemKind::InvalidRequest,
            format!("{GRPC_TIMEOUT}: `{s}` is not 1 to 8 digits and a unit (H M S m u n)"),
        )
    };
    let (digits, unit) = s.split_at(s.len() - 1);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let n: u64 = digits.parse().map_err(|_| bad())?;
    Ok(Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return Err(bad()),
    }))
}

fn timeout_value(d: Duration) -> String {
    format!("{}m", d.as_millis().clamp(1, 99_999_999))
}

/// The method called, from the service's compiled description (compiled once, within the
/// call's deadline).
async fn method_of(
    node: &crate::relay::Node,
    entry: &enlace_core::config::ServiceEntry,
    path: &str,
    clock: &Clock,
    reply: &mut Reply,
) -> Result<enlace_description::grpc::MethodInfo, Problem> {
    let mut no_pump = stream::Pump::finished(enlace_description::grpc::StreamDigest::new());
    let compiled = stream::until(
        node.compiled_grpc(entry),
        clock,
        reply.closed(),
        &mut no_pump,
    )
    .await
    .map_err(Problem::from)??;
    compiled.method(path)
}

fn deadline_passed() -> Problem {
    Problem::new(
        ProblemKind::PeerTimeout,
        "the call's deadline (grpc-timeout) passed",
    )
    .caused_by(Culprit::Client)
}

/// A call's clock: its deadline (`grpc-timeout`), or for a call without one, an idle timeout
/// (`limits.grpc_idle_timeout_ms`) counted from the last frame in either direction.
pub(super) struct Clock {
    origin: Instant,
    deadline: Option<Instant>,
    idle: Duration,
    /// Milliseconds from `origin` to the last frame seen.
    last_ms: AtomicU64,
}

impl Clock {
    fn new(origin: Instant, deadline: Option<Duration>, idle: Duration) -> Arc<Clock> {
        Arc::new(Clock {
            origin,
            deadline: deadline.map(|d| origin + d),
            idle,
            last_ms: AtomicU64::new(0),
        })
    }

    /// A frame moved: the call is not idle.
    pub(super) fn touch(&self) {
        let ms = u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.fetch_max(ms, Ordering::Relaxed);
    }

    fn idle_until(&self) -> Instant {
        self.origin + Duration::from_millis(self.last_ms.load(Ordering::Relaxed)) + self.idle
    }

    /// Resolves with the problem once the deadline passes or, without one, once nothing has
    /// moved in either direction for the idle timeout.
    pub(super) async fn expired(&self) -> Problem {
        if let Some(d) = self.deadline {
            tokio::time::sleep_until(d).await;
            return deadline_passed();
        }
        loop {
            let until = self.idle_until();
            if Instant::now() >= until {
                return Problem::new(
                    ProblemKind::PeerTimeout,
                    format!(
                        "nothing moved in either direction for {} ms (limits.grpc_idle_timeout_ms)",
                        self.idle.as_millis()
                    ),
                );
            }
            tokio::time::sleep_until(until).await;
        }
    }

    /// The time left before the deadline (or the idle timeout), at most `cap`; the deadline
    /// having passed is a refusal.
    fn budget(&self, cap: Duration) -> Result<Duration, Problem> {
        match self.deadline {
            None => Ok(cap.min(self.idle)),
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(deadline_passed());
                }
                Ok(left.min(cap))
            }
        }
    }

    /// What is left of the deadline, for the `grpc-timeout` of the next hop.
    fn left(&self) -> Option<Duration> {
        self.deadline
            .map(|d| d.saturating_duration_since(Instant::now()))
    }
}

// ---- shared phases ----

/// The request a signature is bound to, as sent (consumer) or received (provider).
#[derive(Clone)]
pub(super) struct Bound {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
}

impl Bound {
    fn message(&self) -> signature::Message<'_> {
        signature::Message::request(&self.method, &self.uri, &self.headers)
    }

    /// The `Content-Digest` of a single-message request; none for a streamed one.
    fn digest(&self) -> Option<String> {
        self.headers
            .get(signature::CONTENT_DIGEST)
            .and_then(|v| v.to_str().ok())
            .map(String::from)
    }

    fn message_id(&self) -> &str {
        self.headers
            .get(context::MESSAGE_ID)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

/// Whether a signature of a gRPC header section may cover the field `name`: `content-type`,
/// Enlace's fields, the status fields and custom metadata.
fn signable(name: &str) -> bool {
    name == "content-type"
        || name.starts_with("enlace-")
        || [GRPC_STATUS, GRPC_MESSAGE, GRPC_STATUS_DETAILS].contains(&name)
        || metadata::is_custom(name)
}

/// Keeps a signed header section in a log record, so that its signature can be checked from
/// the record alone: every field the signature may cover, each value as it came (cut at
/// [`metadata::MAX_VALUE`] characters, more than the relay accepts, so a signed value is kept
/// whole), names prefixed with `prefix`. The signature goes to the record's own fields
/// when `prefix` is empty (replacing the fields kept before), beside the others otherwise.
fn keep_section(rec: &mut Record, section: &HeaderMap, prefix: &str) {
    let kept = section
        .iter()
        .filter(|(n, _)| signable(n.as_str()))
        .filter_map(|(n, v)| {
            let v: String = v.to_str().ok()?.chars().take(metadata::MAX_VALUE).collect();
            Some((format!("{prefix}{n}"), v))
        });
    let signature_field = |name: &str| {
        section
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(String::from)
    };
    if prefix.is_empty() {
        rec.headers = kept.collect();
        rec.signature_input = signature_field(signature::SIGNATURE_INPUT);
        rec.signature = signature_field(signature::SIGNATURE);
        return;
    }
    rec.headers.extend(kept);
    for name in [signature::SIGNATURE_INPUT, signature::SIGNATURE] {
        if let Some(v) = signature_field(name) {
            rec.headers.push((format!("{prefix}{name}"), v));
        }
    }
}

/// A request record: the request head as [`fill_signature`] keeps it, and its custom metadata
/// (which the signature covers).
fn request_record(rec: &mut Record, head: &HeaderMap) {
    fill_signature(rec, head, true);
    for name in metadata::custom_names(head) {
        if rec.headers.iter().any(|(k, _)| k == name) {
            continue;
        }
        for v in head.get_all(name) {
            if let Ok(v) = v.to_str() {
                rec.headers.push((name.to_string(), v.to_string()));
            }
        }
    }
}

/// What closes an exchange in a node's log: the final status as sent or received (with its
/// signature), the signed response head, the chain of the response messages, the request
/// direction's chain and signed trailers (streamed requests), the problem, and the relayed
/// body when kept.
#[derive(Default)]
struct Closing {
    trailers: Option<HeaderMap>,
    head: Option<HeaderMap>,
    chain: Option<StreamDigest>,
    request_chain: Option<String>,
    request_trailers: Option<HeaderMap>,
    problem: Option<String>,
    body: Option<Vec<u8>>,
}

/// The log record closing an exchange on either side. The signed sections are kept as they
/// were signed (the final status unprefixed, the head and the request trailers prefixed); the
/// chains this node computed are `response_digest` and `request_digest`, and stand in for the
/// signed ones only where no final status came.
fn final_record(kind: RecordKind, about: About<'_>, request: &Bound, c: Closing) -> Record {
    let mut rec = context_record(kind, 200, about);
    set_target(&mut rec, &request.method, &request.uri);
    if let Some(t) = &c.trailers {
        keep_section(&mut rec, t, "");
        if !t.contains_key(GRPC_STATUS) {
            rec.headers.push((GRPC_STATUS.into(), grpc_status_of(t)));
        }
    }
    if let Some(h) = &c.head {
        keep_section(&mut rec, h, HEAD_PREFIX);
    }
    let chain = c.chain.unwrap_or_default().value();
    rec.response_digest = Some(chain.clone());
    if !rec.headers.iter().any(|(k, _)| k == STREAM_DIGEST) {
        rec.headers.push((STREAM_DIGEST.into(), chain));
    }
    rec.request_digest = request.digest().or_else(|| c.request_chain.clone());
    if let Some(v) = c.request_chain
        && !rec.headers.iter().any(|(k, _)| k == REQUEST_STREAM_DIGEST)
    {
        rec.headers.push((REQUEST_STREAM_DIGEST.into(), v));
    }
    if let Some(t) = &c.request_trailers {
        keep_section(&mut rec, t, REQUEST_TRAILERS_PREFIX);
    }
    rec.problem = c.problem.or_else(|| {
        c.trailers
            .as_ref()
            .and_then(|t| t.get(PROBLEM_TYPE))
            .and_then(|v| v.to_str().ok())
            .and_then(|t| t.rsplit(':').next())
            .map(String::from)
    });
    rec.body = c.body;
    rec
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_are_read_strictly() {
        let read = |v: &str| {
            let mut h = HeaderMap::new();
            put(&mut h, GRPC_TIMEOUT, v);
            read_timeout(&h)
        };
        assert_eq!(read("500m").unwrap(), Some(Duration::from_millis(500)));
        assert_eq!(read("2S").unwrap(), Some(Duration::from_secs(2)));
        assert_eq!(read("1H").unwrap(), Some(Duration::from_secs(3600)));
        for bad in ["m", "500", "5x", "-1S", "123456789S"] {
            assert!(read(bad).is_err(), "{bad}");
        }
        assert_eq!(timeout_value(Duration::from_micros(10)), "1m");
    }

    #[test]
    fn grpc_messages_are_percent_encoded() {
        assert_eq!(percent_encode("no such person: 1%"), "no such person: 1%25");
        assert_eq!(percent_encode("Pérez"), "P%C3%A9rez");
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_call_expires_but_a_moving_one_does_not() {
        let clock = Clock::new(Instant::now(), None, Duration::from_secs(10));
        let expired = clock.expired();
        tokio::pin!(expired);
        // Frames keep coming every 6 s: never 10 s of silence.
        for _ in 0..5 {
            tokio::select! {
                p = &mut expired => panic!("expired while moving: {p}"),
                () = tokio::time::sleep(Duration::from_secs(6)) => clock.touch(),
            }
        }
        let started = Instant::now();
        let p = expired.await;
        assert_eq!(p.kind, ProblemKind::PeerTimeout);
        assert!(p.detail.contains("grpc_idle_timeout_ms"), "{p}");
        assert_eq!(started.elapsed(), Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn a_deadline_expires_whatever_moves() {
        let clock = Clock::new(
            Instant::now(),
            Some(Duration::from_millis(500)),
            Duration::from_secs(10),
        );
        clock.touch();
        let started = Instant::now();
        let p = clock.expired().await;
        assert_eq!(p.kind, ProblemKind::PeerTimeout);
        assert_eq!(p.culprit(), Culprit::Client);
        assert_eq!(started.elapsed(), Duration::from_millis(500));
        assert!(clock.budget(Duration::from_secs(1)).is_err());
    }
}

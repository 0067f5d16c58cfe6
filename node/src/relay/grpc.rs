//! The generic gRPC relay: a local backend's gRPC call relayed to the provider node and on to
//! its gRPC backend, message by message, driven by the service version's descriptor set.
//!
//! Consumer side: authenticate backend → read context → resolve the service by its protobuf
//! method → check contract (fail fast) → validate request messages → sign request → log → send
//! over mutual TLS → relay each response message (strictly decoded, chained) → verify the
//! trailer signature and the chain → log → release the final status.
//!
//! Provider side: verify peer → verify signature, freshness and replay → resolve service →
//! enforce contract → validate request messages → count volume → log → forward to the gRPC
//! backend (h2c) → per response message: validate, minimise, re-encode, chain → sign the
//! trailers bound to the request → log → release the final status.
//!
//! Request messages are read whole before they are relayed (unary, server streaming, and client
//! streaming whose client half-closes); response messages stream. See docs/PROTOCOL.md.

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use enlace_core::config::{DescriptionKind, ServiceEntry};
use enlace_core::contract::Contract;
use enlace_core::id::{NodeId, ServiceId, SubsystemId};
use enlace_core::problem::{Culprit, Problem, ProblemKind};
use enlace_description::grpc::{self as wire, FrameDecoder, MethodInfo, Side, StreamDigest};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Either, Full};
use hyper::body::{Frame, Incoming};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::access_emit;
use super::consumer::{self, About, context_record, fill_signature, set_target};
use super::context::{self, Context};
use super::{Node, Snapshot, provider, unix_now};
use crate::msglog::{Record, RecordKind};
use crate::net::{Body, read_body};
use crate::signature::{self, Component, Expected, Message, MessageContext, SigParams};

/// Path prefix between nodes: `/g1/SERVICE-ID/vMAJOR/package.Service/Method`.
pub const GRPC_PREFIX: &str = "/g1/";
/// Metadata naming the provider service when several publish the same protobuf service.
pub const PROVIDER: &str = "enlace-provider";
/// Metadata (trailers) carrying the RFC 9457 problem type of an Enlace refusal.
pub const PROBLEM_TYPE: &str = "enlace-problem-type";
/// Trailer carrying the message chain of the response stream: `COUNT:HEX`.
pub const STREAM_DIGEST: &str = "enlace-stream-digest";
/// The `tag` of a trailer signature.
pub const TRAILERS_TAG: &str = "enlace-grpc-trailers";
const GRPC_STATUS: &str = "grpc-status";
const GRPC_MESSAGE: &str = "grpc-message";
const GRPC_TIMEOUT: &str = "grpc-timeout";
const GRPC_ENCODING: &str = "grpc-encoding";
/// The problem recorded in the log when the caller cancels a call.
const CANCELLED: &str = "cancelled";

/// What the relay's listeners answer with: a whole body (REST, trailers-only gRPC) or a stream.
pub(crate) type OutBody = Either<Body, ChannelBody>;

/// Whether a request is gRPC (its content type starts with `application/grpc`).
pub(crate) fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

/// A response body fed frame by frame (data, then trailers) by a relay task. When the receiver
/// goes (the caller cancelled), the task sees its sender closed.
pub(crate) struct ChannelBody {
    pub(super) rx: mpsc::Receiver<Frame<Bytes>>,
}

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.rx.poll_recv(cx).map(|f| f.map(Ok))
    }
}

// ---- statuses and trailers ----

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

/// The final status of a refusal: its gRPC code, its detail and its problem type.
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

/// A trailers-only response: HTTP 200, `application/grpc`, the status in the headers.
fn trailers_only(mut headers: HeaderMap) -> Response<OutBody> {
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    let mut r = Response::new(Either::Left(Full::new(Bytes::new())));
    *r.headers_mut() = headers;
    r
}

/// A streamed response: the headers now, the messages and trailers from `rx`.
fn streaming(message_id: &str, rx: mpsc::Receiver<Frame<Bytes>>) -> Response<OutBody> {
    let mut r = Response::new(Either::Right(ChannelBody { rx }));
    let h = r.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    put(h, context::MESSAGE_ID, message_id);
    r
}

fn chain_value(chain: &StreamDigest) -> String {
    let (n, hex) = chain.clone().finish();
    format!("{n}:{hex}")
}

/// Components of a trailer signature: the final status (with its message, problem type and
/// culprit when present), the chain of the response messages and the message id, bound
/// (`;req`) to the request as the consumer node sent it.
fn trailer_components(trailers: &HeaderMap) -> Vec<Component> {
    let mut c = vec![
        Component::new("@status"),
        Component::new(GRPC_STATUS),
        Component::new(STREAM_DIGEST),
        Component::new(context::MESSAGE_ID),
    ];
    for optional in [GRPC_MESSAGE, PROBLEM_TYPE, context::ERROR] {
        if trailers.contains_key(optional) {
            c.push(Component::new(optional));
        }
    }
    c.extend([
        Component::from_request("@method"),
        Component::from_request("@path"),
        Component::from_request("@query"),
        Component::from_request("content-digest"),
        Component::from_request("enlace-message-id"),
    ]);
    c
}

/// The request a signature is bound to, as sent (consumer) or received (provider).
#[derive(Clone)]
struct Bound {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
}

impl Bound {
    fn message(&self) -> Message<'_> {
        Message::request(&self.method, &self.uri, &self.headers)
    }

    fn digest(&self) -> Option<String> {
        self.headers
            .get(signature::CONTENT_DIGEST)
            .and_then(|v| v.to_str().ok())
            .map(String::from)
    }
}

fn sign_trailers(node: &Node, trailers: &mut HeaderMap, request: &Bound) -> Result<(), Problem> {
    sign_trailers_with(
        &node.signing_key,
        &node.settings.id.to_string(),
        unix_now(),
        trailers,
        request,
    )
}

/// Adds `Signature-Input` and `Signature` over [`trailer_components`] to `trailers`.
fn sign_trailers_with(
    key: &enlace_certs::SigningKey,
    keyid: &str,
    created: i64,
    trailers: &mut HeaderMap,
    request: &Bound,
) -> Result<(), Problem> {
    let components = trailer_components(trailers);
    let (input, sig) = signature::sign(
        key,
        &components,
        &SigParams::enlace(created, keyid, TRAILERS_TAG),
        &MessageContext::response(
            Message::response(StatusCode::OK, trailers),
            request.message(),
        ),
    )?;
    let internal =
        |e: http::header::InvalidHeaderValue| Problem::new(ProblemKind::Internal, e.to_string());
    trailers.insert(
        signature::SIGNATURE_INPUT,
        HeaderValue::from_str(&input).map_err(internal)?,
    );
    trailers.insert(
        signature::SIGNATURE,
        HeaderValue::from_str(&sig).map_err(internal)?,
    );
    Ok(())
}

/// Verifies the provider node's trailer signature and that its chain is the one received.
fn verify_trailers(
    node: &Node,
    snap: &Snapshot,
    trailers: &HeaderMap,
    sent: &Bound,
    peer: &str,
    received: &StreamDigest,
) -> Result<(), Problem> {
    verify_trailers_with(
        trailers,
        sent,
        received,
        unix_now(),
        node.settings.raw.limits.clock_skew_secs,
        |keyid| {
            if keyid != peer {
                return Err(Problem::new(
                    ProblemKind::SignatureInvalid,
                    format!("trailers signed by {keyid}, not by the provider node {peer}"),
                ));
            }
            node.peer_key(snap, keyid)
        },
    )
}

/// The trailer signature must verify, bound to the request as sent, and the chain it signs
/// must be the chain of the messages received: a message dropped, added, altered or reordered
/// in between is caught here, before the final status is released.
fn verify_trailers_with(
    trailers: &HeaderMap,
    sent: &Bound,
    received: &StreamDigest,
    now: i64,
    max_skew_secs: i64,
    key_for: impl Fn(&str) -> Result<Vec<u8>, Problem>,
) -> Result<(), Problem> {
    let (input, sig) = signature::signature_headers(trailers)?;
    let required = trailer_components(trailers);
    signature::verify(
        &input,
        &sig,
        &MessageContext::response(Message::response(StatusCode::OK, trailers), sent.message()),
        &Expected {
            required: &required,
            tag: TRAILERS_TAG,
            now,
            max_skew_secs,
        },
        key_for,
    )?;
    let claimed = trailers
        .get(STREAM_DIGEST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let ours = chain_value(received);
    if claimed != ours {
        return Err(Problem::new(
            ProblemKind::SignatureInvalid,
            format!(
                "the signed message chain is {claimed}, but the messages received chain to {ours}"
            ),
        ));
    }
    Ok(())
}

// ---- small phases shared by both sides ----

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

fn deadline_passed() -> Problem {
    Problem::new(
        ProblemKind::PeerTimeout,
        "the call's deadline (grpc-timeout) passed",
    )
    .caused_by(Culprit::Client)
}

/// The time left before `deadline`, capped at `cap`; the deadline passing is a refusal.
fn budget(deadline: Option<Instant>, cap: Duration) -> Result<Duration, Problem> {
    match deadline {
        None => Ok(cap),
        Some(d) => {
            let left = d.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(deadline_passed());
            }
            Ok(left.min(cap))
        }
    }
}

fn check_encoding(headers: &HeaderMap) -> Result<(), Problem> {
    let encoding = headers.get(GRPC_ENCODING).and_then(|v| v.to_str().ok());
    wire::check_encoding(encoding)
}

/// Decodes every request message strictly; returns their chain (`COUNT:HEX`).
fn check_requests(method: &MethodInfo, body: &[u8], max: usize) -> Result<String, Problem> {
    let mut decoder = FrameDecoder::new(Side::Request, max);
    let messages = decoder.push(body)?;
    decoder.finish()?;
    if !method.client_streaming && messages.len() != 1 {
        return Err(Problem::new(
            ProblemKind::RequestSchemaViolation,
            format!(
                "{} takes exactly one request message; {} were sent",
                method.full_name,
                messages.len()
            ),
        ));
    }
    let mut chain = StreamDigest::new();
    for m in messages {
        let payload = m.identity()?;
        method.decode_request(&payload)?;
        chain.update(&payload);
    }
    Ok(chain_value(&chain))
}

fn allow_operation(contract: &Contract, operation: &str) -> Result<(), Problem> {
    if contract.terms.operations.iter().any(|o| o == operation) {
        return Ok(());
    }
    Err(Problem::new(
        ProblemKind::ContractMissing,
        format!(
            "contract {} does not allow operation {operation}",
            contract.id
        ),
    ))
}

/// How a relayed response stream ended.
enum Ending {
    /// The sender's trailers, after every message was relayed.
    Trailers(HeaderMap),
    /// The receiver went away.
    Cancelled,
    Failed(Problem),
}

struct Relayed {
    ending: Ending,
    chain: StreamDigest,
    body: Option<Vec<u8>>,
}

async fn next_frame(
    body: &mut Incoming,
    deadline: Option<Instant>,
) -> Result<Option<Frame<Bytes>>, Problem> {
    let frame = body.frame();
    let next = match deadline {
        Some(d) => tokio::time::timeout_at(d, frame)
            .await
            .map_err(|_| deadline_passed())?,
        None => frame.await,
    };
    match next {
        None => Ok(None),
        Some(Ok(f)) => Ok(Some(f)),
        Some(Err(e)) => Err(Problem::new(
            ProblemKind::PeerUnreachable,
            format!("the response stream broke: {e}"),
        )),
    }
}

/// Relays the messages of `body` to `tx` as they complete, each through `transform` (which
/// decodes, and may minimise and re-encode), chaining what is sent; stops at the trailers, a
/// problem, the deadline, or the receiver going away.
async fn relay_messages(
    mut body: Incoming,
    tx: &mpsc::Sender<Frame<Bytes>>,
    max: usize,
    deadline: Option<Instant>,
    keep_body: bool,
    mut transform: impl FnMut(Vec<u8>) -> Result<Vec<u8>, Problem>,
) -> Relayed {
    let mut decoder = FrameDecoder::new(Side::Response, max);
    let mut chain = StreamDigest::new();
    let mut kept = keep_body.then(Vec::new);
    let ending = 'frames: loop {
        let next = tokio::select! {
            n = next_frame(&mut body, deadline) => n,
            () = tx.closed() => break Ending::Cancelled,
        };
        let frame = match next {
            Ok(Some(f)) => f,
            Ok(None) => {
                break Ending::Failed(Problem::new(
                    ProblemKind::PeerUnreachable,
                    "the response stream ended without trailers",
                ));
            }
            Err(p) => break Ending::Failed(p),
        };
        let data = match frame.into_data() {
            Ok(d) => d,
            Err(frame) => {
                if let Ok(t) = frame.into_trailers() {
                    if let Err(p) = decoder.finish() {
                        break Ending::Failed(p);
                    }
                    break Ending::Trailers(t);
                }
                continue;
            }
        };
        let messages = match decoder.push(&data) {
            Ok(m) => m,
            Err(p) => break Ending::Failed(p),
        };
        for m in messages {
            let relayed = m
                .identity()
                .and_then(&mut transform)
                .and_then(|b| Ok((wire::encode_frame(&b, false)?, b)));
            let (framed, bytes) = match relayed {
                Ok(x) => x,
                Err(p) => break 'frames Ending::Failed(p),
            };
            chain.update(&bytes);
            if let Some(k) = &mut kept {
                k.extend_from_slice(&framed);
            }
            if tx.send(Frame::data(Bytes::from(framed))).await.is_err() {
                break 'frames Ending::Cancelled;
            }
        }
    };
    Relayed {
        ending,
        chain,
        body: kept,
    }
}

/// The status fields a node passes on: code, message, problem type, culprit.
fn pass_status(from: &HeaderMap, message_id: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    for name in [GRPC_STATUS, GRPC_MESSAGE, PROBLEM_TYPE, context::ERROR] {
        if let Some(v) = from.get(name) {
            h.insert(name, v.clone());
        }
    }
    if !h.contains_key(GRPC_STATUS) {
        h = problem_trailers(
            &Problem::new(
                ProblemKind::ResponseSchemaViolation,
                "the final status has no grpc-status",
            ),
            None,
        );
    }
    put(&mut h, context::MESSAGE_ID, message_id);
    h
}

fn grpc_status_of(h: &HeaderMap) -> String {
    h.get(GRPC_STATUS)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

// ---- consumer side ----

/// What is known of an exchange so far, for its log records.
#[derive(Clone)]
struct Trace {
    message_id: String,
    client: Option<SubsystemId>,
    context: Option<Context>,
    service: String,
    operation: String,
    peer: Option<String>,
}

impl Trace {
    fn about(&self) -> About<'_> {
        About {
            message_id: &self.message_id,
            client: self.client.as_ref(),
            context: self.context.as_ref(),
            service: &self.service,
            operation: &self.operation,
            peer: self.peer.clone(),
        }
    }
}

/// A local backend's gRPC call.
pub(crate) async fn consumer(node: Arc<Node>, req: Request<Incoming>) -> Response<OutBody> {
    let mut trace = Trace {
        message_id: uuid::Uuid::now_v7().to_string(),
        client: None,
        context: None,
        service: String::new(),
        operation: String::new(),
        peer: None,
    };
    match consumer_run(&node, req, &mut trace).await {
        Ok(resp) => resp,
        Err(problem) => {
            tracing::info!(message_id = %trace.message_id, service = %trace.service, operation = %trace.operation, problem = problem.kind.slug(), detail = %problem.detail, "grpc call refused");
            let mut rec = context_record(RecordKind::Refusal, problem.kind.status(), trace.about());
            rec.problem = Some(problem.kind.slug().to_string());
            rec.headers
                .push((GRPC_STATUS.into(), problem.kind.grpc_code().to_string()));
            if let Err(p) = node.log.append(rec).await {
                tracing::error!(problem = %p, "could not log a refusal");
                return trailers_only(problem_trailers(&p, Some(&trace.message_id)));
            }
            trailers_only(problem_trailers(&problem, Some(&trace.message_id)))
        }
    }
}

/// The service version publishing `operation`: among the protobuf services whose operations
/// include it (only `requested`, if named), exactly one service id, its latest version.
fn resolve_by_operation<'a>(
    snap: &'a Snapshot,
    operation: &str,
    requested: Option<&ServiceId>,
) -> Result<&'a ServiceEntry, Problem> {
    let candidates: Vec<&ServiceEntry> = snap
        .config
        .services
        .iter()
        .filter(|s| s.kind == DescriptionKind::Protobuf)
        .filter(|s| s.operations.iter().any(|o| o == operation))
        .filter(|s| requested.is_none_or(|r| &s.id == r))
        .collect();
    let mut ids: Vec<&ServiceId> = Vec::new();
    for c in &candidates {
        if !ids.contains(&&c.id) {
            ids.push(&c.id);
        }
    }
    match ids.len() {
        0 => Err(Problem::new(
            ProblemKind::UnknownService,
            format!("no published service provides the gRPC method {operation}"),
        )),
        1 => candidates
            .into_iter()
            .max_by_key(|s| s.version)
            .ok_or_else(|| Problem::new(ProblemKind::Internal, "no candidate")),
        _ => Err(Problem::new(
            ProblemKind::InvalidRequest,
            format!(
                "several services provide {operation}; name one in {PROVIDER}: {}",
                ids.iter()
                    .map(|s| s.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
    }
}

async fn consumer_run(
    node: &Arc<Node>,
    req: Request<Incoming>,
    trace: &mut Trace,
) -> Result<Response<OutBody>, Problem> {
    let started = Instant::now();
    let limits = &node.settings.raw.limits;
    let (parts, body) = req.into_parts();
    context::check_header_section(&parts.headers, limits.max_header_bytes)?;
    let (client, log_bodies) = consumer::authenticate_backend(node, &parts.headers)?;
    trace.client = Some(client.clone());
    let ctx = consumer::read_context(&parts.headers, &client)?;
    trace.context = Some(ctx.clone());
    let path = parts.uri.path().to_string();
    trace.operation = path.strip_prefix('/').unwrap_or(&path).to_string();
    check_encoding(&parts.headers)?;
    let deadline = read_timeout(&parts.headers)?.map(|d| started + d);
    let snap = node.snapshot()?;
    let requested = context::single(&parts.headers, PROVIDER, 300)?
        .map(|s| s.parse::<ServiceId>())
        .transpose()?;
    let entry = resolve_by_operation(&snap, &trace.operation, requested.as_ref())?;
    trace.service = format!("{}/{}", entry.id, entry.version);
    let member = entry.id.member();
    let provider = snap
        .config
        .nodes
        .iter()
        .find(|n| &n.id.member == member)
        .ok_or_else(|| {
            Problem::new(
                ProblemKind::PeerUnreachable,
                format!("{member} has no approved node"),
            )
        })?;
    trace.peer = Some(provider.id.to_string());
    let contract = consumer::check_contract(&snap, &ctx, &entry.id, entry.version)?;
    allow_operation(contract, &trace.operation)?;
    let compiled = node.compiled_grpc(entry).await?;
    let method = compiled.method(&path)?;
    let read = read_body(body, limits.max_body_bytes);
    let body = match deadline {
        Some(d) => tokio::time::timeout_at(d, read)
            .await
            .map_err(|_| deadline_passed())??,
        None => read.await?,
    };
    let request_chain = check_requests(&method, &body, limits.max_grpc_message_bytes)?;

    let (outbound, sent) = sign_request(
        node,
        &parts,
        entry,
        &ctx,
        trace,
        &provider.address,
        &body,
        deadline,
    )?;
    let mut rec = context_record(RecordKind::RequestOut, 0, trace.about());
    fill_signature(&mut rec, &sent.headers, true);
    set_target(&mut rec, &sent.method, &sent.uri);
    rec.headers.push((STREAM_DIGEST.into(), request_chain));
    rec.body = log_bodies.then(|| body.to_vec());
    node.log.append(rec).await?;

    let wait = budget(deadline, Duration::from_millis(limits.upstream_timeout_ms))?;
    let resp = node
        .pool
        .send(&provider.id, &provider.address, outbound, wait)
        .await
        .map_err(|p| match deadline {
            Some(d) if Instant::now() >= d => deadline_passed(),
            _ => p,
        })?;
    let (rparts, rbody) = resp.into_parts();
    if rparts.status != StatusCode::OK || !is_grpc(&rparts.headers) {
        return Err(Problem::new(
            ProblemKind::PeerUnreachable,
            format!(
                "the provider node answered HTTP {} instead of a gRPC response",
                rparts.status
            ),
        )
        .caused_by(Culprit::PeerNode));
    }
    let peer = provider.id.to_string();
    if rparts.headers.contains_key(GRPC_STATUS) {
        // Trailers-only: the provider node's status (a refusal, or its backend's) in headers.
        verify_trailers(
            node,
            &snap,
            &rparts.headers,
            &sent,
            &peer,
            &StreamDigest::new(),
        )
        .map_err(|p| p.caused_by(Culprit::PeerNode))?;
        let rec = final_record(
            RecordKind::ResponseIn,
            trace.about(),
            &sent,
            Some(&rparts.headers),
            &StreamDigest::new(),
            None,
            None,
        );
        node.log.append(rec).await?;
        return Ok(trailers_only(pass_status(
            &rparts.headers,
            &trace.message_id,
        )));
    }

    let (tx, rx) = mpsc::channel(16);
    let relay = ConsumerStream {
        node: node.clone(),
        snap,
        sent,
        peer,
        method,
        deadline,
        trace: trace.clone(),
        log_bodies,
    };
    tokio::spawn(relay.run(rbody, tx));
    Ok(streaming(&trace.message_id, rx))
}

/// Builds and signs the request to the provider node: the context, the content type, the
/// message id, the service and the digest of the whole (framed) request body.
#[allow(clippy::too_many_arguments)]
fn sign_request(
    node: &Node,
    parts: &http::request::Parts,
    entry: &ServiceEntry,
    ctx: &Context,
    trace: &Trace,
    address: &str,
    body: &Bytes,
    deadline: Option<Instant>,
) -> Result<(Request<Body>, Bound), Problem> {
    let uri: Uri = format!(
        "https://{address}{GRPC_PREFIX}{}/v{}{}",
        entry.id,
        entry.version.major,
        parts.uri.path()
    )
    .parse()
    .map_err(|_| Problem::new(ProblemKind::InvalidRequest, "the path cannot be relayed"))?;
    let mut headers = HeaderMap::new();
    if let Some(v) = parts.headers.get(http::header::CONTENT_TYPE) {
        headers.insert(http::header::CONTENT_TYPE, v.clone());
    }
    ctx.write(&mut headers)?;
    put(&mut headers, context::MESSAGE_ID, &trace.message_id);
    put(
        &mut headers,
        context::SERVICE,
        &format!("{}/{}", entry.id, entry.version),
    );
    put(
        &mut headers,
        signature::CONTENT_DIGEST,
        &signature::content_digest(body),
    );
    let method = Method::POST;
    let (input, sig) = signature::sign_request(
        &node.signing_key,
        &node.settings.id.to_string(),
        unix_now(),
        Message::request(&method, &uri, &headers),
    )?;
    put(&mut headers, signature::SIGNATURE_INPUT, &input);
    put(&mut headers, signature::SIGNATURE, &sig);
    let mut out = Request::new(Full::new(body.clone()));
    *out.method_mut() = method.clone();
    *out.uri_mut() = uri.clone();
    *out.headers_mut() = headers.clone();
    // The deadline travels unsigned: it only ever shortens the call.
    if let Some(d) = deadline {
        let left = d.saturating_duration_since(Instant::now());
        put(out.headers_mut(), GRPC_TIMEOUT, &timeout_value(left));
    }
    Ok((
        out,
        Bound {
            method,
            uri,
            headers,
        },
    ))
}

/// The log record closing an exchange on either side.
fn final_record(
    kind: RecordKind,
    about: About<'_>,
    request: &Bound,
    trailers: Option<&HeaderMap>,
    chain: &StreamDigest,
    problem: Option<String>,
    body: Option<Vec<u8>>,
) -> Record {
    let mut rec = context_record(kind, 200, about);
    set_target(&mut rec, &request.method, &request.uri);
    if let Some(t) = trailers {
        fill_signature(&mut rec, t, false);
        rec.headers.push((GRPC_STATUS.into(), grpc_status_of(t)));
    }
    rec.request_digest = request.digest();
    rec.response_digest = Some(chain_value(chain));
    if !rec.headers.iter().any(|(k, _)| k == STREAM_DIGEST) {
        rec.headers.push((STREAM_DIGEST.into(), chain_value(chain)));
    }
    rec.problem = problem.or_else(|| {
        trailers
            .and_then(|t| t.get(PROBLEM_TYPE))
            .and_then(|v| v.to_str().ok())
            .and_then(|t| t.rsplit(':').next())
            .map(String::from)
    });
    rec.body = body;
    rec
}

/// The consumer node's half of a response stream.
struct ConsumerStream {
    node: Arc<Node>,
    snap: Arc<Snapshot>,
    sent: Bound,
    peer: String,
    method: MethodInfo,
    deadline: Option<Instant>,
    trace: Trace,
    log_bodies: bool,
}

impl ConsumerStream {
    async fn run(self, body: Incoming, tx: mpsc::Sender<Frame<Bytes>>) {
        let max = self.node.settings.raw.limits.max_grpc_message_bytes;
        let method = &self.method;
        let relayed = relay_messages(body, &tx, max, self.deadline, self.log_bodies, |payload| {
            method
                .decode_response(&payload)
                .map_err(|p| p.caused_by(Culprit::PeerNode))?;
            Ok(payload)
        })
        .await;
        let id = &self.trace.message_id;
        let (out, problem, trailers) = match relayed.ending {
            Ending::Trailers(t) => {
                match verify_trailers(
                    &self.node,
                    &self.snap,
                    &t,
                    &self.sent,
                    &self.peer,
                    &relayed.chain,
                ) {
                    Ok(()) => (Some(pass_status(&t, id)), None, Some(t)),
                    Err(p) => {
                        let p = p.caused_by(Culprit::PeerNode);
                        tracing::warn!(message_id = %id, detail = %p.detail, "grpc response chain refused");
                        (
                            Some(problem_trailers(&p, Some(id))),
                            Some(p.kind.slug().to_string()),
                            Some(t),
                        )
                    }
                }
            }
            Ending::Cancelled => {
                tracing::info!(message_id = %id, messages = relayed.chain.count(), "grpc call cancelled by the caller");
                (None, Some(CANCELLED.to_string()), None)
            }
            Ending::Failed(p) => {
                tracing::info!(message_id = %id, problem = p.kind.slug(), detail = %p.detail, "grpc response stream failed");
                (
                    Some(problem_trailers(&p, Some(id))),
                    Some(p.kind.slug().to_string()),
                    None,
                )
            }
        };
        let rec = final_record(
            RecordKind::ResponseIn,
            self.trace.about(),
            &self.sent,
            trailers.as_ref(),
            &relayed.chain,
            problem,
            relayed.body,
        );
        if let Err(p) = self.node.log.append(rec).await {
            tracing::error!(problem = %p, "could not log a grpc response");
            let _ = tx
                .send(Frame::trailers(problem_trailers(&p, Some(id))))
                .await;
            return;
        }
        if let Some(out) = out {
            let _ = tx.send(Frame::trailers(out)).await;
        }
    }
}

// ---- provider side ----

/// What is known of an incoming exchange, for its log records.
struct ProviderTrace {
    message_id: Option<String>,
    context: Option<Context>,
    service: String,
    operation: String,
    /// The service version resolved, for the access record of a refusal.
    entry: Option<ServiceEntry>,
}

impl ProviderTrace {
    fn about<'a>(&'a self, id: &'a str, peer: &NodeId) -> About<'a> {
        About {
            message_id: id,
            client: None,
            context: self.context.as_ref(),
            service: &self.service,
            operation: &self.operation,
            peer: Some(peer.to_string()),
        }
    }
}

/// A peer node's gRPC call.
pub(crate) async fn provider(
    node: Arc<Node>,
    req: Request<Incoming>,
    peer: NodeId,
) -> Response<OutBody> {
    let (parts, body) = req.into_parts();
    let bound = Bound {
        method: parts.method.clone(),
        uri: parts.uri.clone(),
        headers: parts.headers.clone(),
    };
    let mut trace = ProviderTrace {
        message_id: None,
        context: None,
        service: String::new(),
        operation: String::new(),
        entry: None,
    };
    let result = match read_body(body, node.settings.raw.limits.max_body_bytes).await {
        Ok(body) => provider_run(&node, &bound, body, &peer, &mut trace).await,
        Err(p) => Err(p),
    };
    let problem = match result {
        Ok(resp) => return resp,
        Err(p) => p,
    };
    let id = trace.message_id.clone().unwrap_or_default();
    tracing::info!(%peer, message_id = %id, service = %trace.service, problem = problem.kind.slug(), detail = %problem.detail, "incoming grpc call refused");
    let mut trailers = problem_trailers(&problem, trace.message_id.as_deref());
    put(
        &mut trailers,
        STREAM_DIGEST,
        &chain_value(&StreamDigest::new()),
    );
    if trace.message_id.is_some()
        && let Err(p) = sign_trailers(&node, &mut trailers, &bound)
    {
        tracing::error!(problem = %p, "could not sign a refusal");
    }
    let mut rec = context_record(
        RecordKind::Refusal,
        problem.kind.status(),
        trace.about(&id, &peer),
    );
    set_target(&mut rec, &bound.method, &bound.uri);
    fill_signature(&mut rec, &trailers, false);
    rec.request_digest = bound.digest();
    rec.problem = Some(problem.kind.slug().to_string());
    let access = grpc_refusal_record(&node, &trace, &problem, &bound);
    let (logged, queued) = tokio::join!(node.log.append(rec), access_emit::enqueue(&node, access));
    if let Err(p) = logged.and(queued) {
        tracing::error!(problem = %p, "could not log a refusal");
        return trailers_only(problem_trailers(&p, trace.message_id.as_deref()));
    }
    trailers_only(trailers)
}

/// The access record of a refused call, once the subject, the service and the contract are
/// known.
fn grpc_refusal_record(
    node: &Node,
    trace: &ProviderTrace,
    problem: &Problem,
    request: &Bound,
) -> Option<enlace_core::access::SignedAccessRecord> {
    let operation = if trace.operation.is_empty() {
        request.uri.path().to_string()
    } else {
        trace.operation.clone()
    };
    access_emit::refusal(
        node,
        problem,
        access_emit::Refused {
            context: trace.context.as_ref(),
            service: trace.entry.as_ref(),
            message_id: trace.message_id.as_deref(),
            operation,
            request_digest: request.digest(),
            response_digest: None,
        },
    )
}

/// `/g1/SERVICE-ID/vMAJOR/package.Service/Method`, read like a REST target.
fn read_grpc_target(uri: &Uri) -> Result<consumer::Target, Problem> {
    let rest = uri.path().strip_prefix(GRPC_PREFIX).ok_or_else(|| {
        Problem::new(
            ProblemKind::NotFound,
            format!(
                "gRPC calls between nodes go to {GRPC_PREFIX}SERVICE/vMAJOR/pkg.Service/Method"
            ),
        )
    })?;
    let as_rest: Uri = format!("{}{rest}", consumer::RELAY_PREFIX)
        .parse()
        .map_err(|_| Problem::new(ProblemKind::InvalidRequest, "the path is malformed"))?;
    consumer::read_target(&as_rest)
}

async fn provider_run(
    node: &Arc<Node>,
    req: &Bound,
    body: Bytes,
    peer: &NodeId,
    trace: &mut ProviderTrace,
) -> Result<Response<OutBody>, Problem> {
    let limits = &node.settings.raw.limits;
    context::check_header_section(&req.headers, limits.max_header_bytes)?;
    let message_id = provider::read_message_id(&req.headers)?;
    trace.message_id = Some(message_id.clone());
    let ctx = Context::read(&req.headers)?;
    trace.context = Some(ctx.clone());
    let snap = node.snapshot()?;
    provider::verify_peer(&snap, peer, &ctx)?;
    let parts = {
        let mut r = Request::new(());
        *r.method_mut() = req.method.clone();
        *r.uri_mut() = req.uri.clone();
        *r.headers_mut() = req.headers.clone();
        r.into_parts().0
    };
    provider::verify_signature(node, &snap, &parts, &body, peer)?;
    node.check_replay(&message_id)?;
    let target = read_grpc_target(&req.uri)?;
    let (entry, backend) = provider::resolve_service(node, &snap, &parts, &target)?;
    trace.service = format!("{}/{}", entry.id, entry.version);
    trace.entry = Some(entry.clone());
    let log_bodies = backend.1;
    let backend_addr = backend.0.strip_prefix("h2c://").ok_or_else(|| {
        Problem::new(
            ProblemKind::UnknownService,
            format!("this node provides {} over REST, not gRPC", target.service),
        )
    })?;
    let contract = consumer::check_contract(&snap, &ctx, &entry.id, entry.version)?;
    check_encoding(&req.headers)?;
    let compiled = node.compiled_grpc(entry).await?;
    let method = compiled.method(&target.rest)?;
    trace.operation = method.full_name.clone();
    allow_operation(contract, &method.full_name)?;
    let request_chain = check_requests(&method, &body, limits.max_grpc_message_bytes)?;
    let deadline = read_timeout(&req.headers)?.map(|d| Instant::now() + d);
    provider::admit(node, contract)?;

    let about = || trace.about(&message_id, peer);
    let mut rec = context_record(RecordKind::RequestIn, 0, about());
    fill_signature(&mut rec, &req.headers, true);
    set_target(&mut rec, &req.method, &req.uri);
    rec.headers.push((STREAM_DIGEST.into(), request_chain));
    rec.body = log_bodies.then(|| body.to_vec());
    node.log.append(rec).await?;

    let resp = forward(
        node,
        backend_addr,
        &target.rest,
        &ctx,
        &message_id,
        body,
        deadline,
    )
    .await?;
    let (bparts, bbody) = resp.into_parts();
    if bparts.status != StatusCode::OK || !is_grpc(&bparts.headers) {
        return Err(Problem::new(
            ProblemKind::ResponseSchemaViolation,
            format!(
                "the provider backend answered HTTP {} instead of a gRPC response",
                bparts.status
            ),
        )
        .caused_by(Culprit::ProviderBackend));
    }
    check_encoding(&bparts.headers).map_err(|p| p.caused_by(Culprit::ProviderBackend))?;
    if bparts.headers.contains_key(GRPC_STATUS) {
        // Trailers-only from the backend: its status passes on unchanged, signed.
        let mut trailers = pass_status(&bparts.headers, &message_id);
        put(
            &mut trailers,
            STREAM_DIGEST,
            &chain_value(&StreamDigest::new()),
        );
        sign_trailers(node, &mut trailers, req)?;
        let rec = final_record(
            RecordKind::ResponseOut,
            about(),
            req,
            Some(&trailers),
            &StreamDigest::new(),
            None,
            None,
        );
        let access = access_emit::record(
            node,
            access_emit::Exchange {
                message_id: &message_id,
                context: &ctx,
                service: entry,
                contract,
                operation: &trace.operation,
                fields: Vec::new(),
                refused: None,
                status: StatusCode::OK.as_u16(),
                request_digest: req.digest(),
                response_digest: None,
            },
        );
        let (logged, queued) =
            tokio::join!(node.log.append(rec), access_emit::enqueue(node, access));
        logged?;
        queued?;
        return Ok(trailers_only(trailers));
    }
    let (tx, rx) = mpsc::channel(16);
    let relay = ProviderStream {
        node: node.clone(),
        request: req.clone(),
        method,
        allowed: super::disclosure::allowed(node, &ctx, entry, contract, &trace.operation).await?,
        entry: entry.clone(),
        contract: contract.clone(),
        deadline,
        message_id: message_id.clone(),
        context: ctx,
        service: trace.service.clone(),
        operation: trace.operation.clone(),
        peer: peer.clone(),
        log_bodies,
    };
    tokio::spawn(relay.run(bbody, tx));
    Ok(streaming(&message_id, rx))
}

/// Forwards the request messages to the gRPC backend over h2c, with the context and what is
/// left of the deadline (capped by `limits.upstream_timeout_ms` for the response headers).
async fn forward(
    node: &Node,
    backend_addr: &str,
    method_path: &str,
    ctx: &Context,
    message_id: &str,
    body: Bytes,
    deadline: Option<Instant>,
) -> Result<Response<Incoming>, Problem> {
    let url = format!("http://{backend_addr}{method_path}");
    let mut req = Request::new(Full::new(body));
    *req.method_mut() = Method::POST;
    *req.uri_mut() = url.parse().map_err(|_| {
        Problem::new(
            ProblemKind::Internal,
            format!("backend URL {url} is invalid"),
        )
    })?;
    let h = req.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    h.insert(http::header::TE, HeaderValue::from_static("trailers"));
    ctx.write(h)?;
    h.remove(context::AUTHORIZATION);
    put(h, context::MESSAGE_ID, message_id);
    if let Some(d) = deadline {
        put(
            h,
            GRPC_TIMEOUT,
            &timeout_value(d.saturating_duration_since(Instant::now())),
        );
    }
    let cap = Duration::from_millis(node.settings.raw.limits.upstream_timeout_ms);
    let wait = budget(deadline, cap)?;
    match tokio::time::timeout(wait, node.grpc_backend.request(req)).await {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(e)) => Err(Problem::new(
            ProblemKind::PeerUnreachable,
            format!("provider backend: {e}"),
        )
        .caused_by(Culprit::ProviderBackend)),
        Err(_) => match deadline {
            Some(d) if Instant::now() >= d => Err(deadline_passed()),
            _ => Err(Problem::new(
                ProblemKind::PeerTimeout,
                format!(
                    "provider backend did not answer within {} ms",
                    wait.as_millis()
                ),
            )
            .caused_by(Culprit::ProviderBackend)),
        },
    }
}

/// The provider node's half of a response stream.
struct ProviderStream {
    node: Arc<Node>,
    request: Bound,
    method: MethodInfo,
    allowed: Vec<String>,
    /// The service version and contract, for the access record.
    entry: ServiceEntry,
    contract: Contract,
    deadline: Option<Instant>,
    message_id: String,
    context: Context,
    service: String,
    operation: String,
    peer: NodeId,
    log_bodies: bool,
}

impl ProviderStream {
    async fn run(self, body: Incoming, tx: mpsc::Sender<Frame<Bytes>>) {
        let max = self.node.settings.raw.limits.max_grpc_message_bytes;
        let mut disclosed = BTreeSet::new();
        let (method, allowed) = (&self.method, &self.allowed);
        let relayed = relay_messages(body, &tx, max, self.deadline, self.log_bodies, |payload| {
            let mut msg = method.decode_response(&payload)?;
            disclosed.extend(wire::minimise(&mut msg, allowed));
            Ok(wire::encode(&msg))
        })
        .await;
        let id = &self.message_id;
        let mut failure = None;
        let (trailers, problem) = match relayed.ending {
            Ending::Trailers(t) => (Some(pass_status(&t, id)), None),
            Ending::Cancelled => {
                tracing::info!(message_id = %id, messages = relayed.chain.count(), "grpc call cancelled by the peer node");
                (None, Some(CANCELLED.to_string()))
            }
            Ending::Failed(p) => {
                failure = Some(p.kind);
                let p = if p.kind == ProblemKind::PeerUnreachable {
                    p.caused_by(Culprit::ProviderBackend)
                } else {
                    p
                };
                tracing::info!(message_id = %id, problem = p.kind.slug(), detail = %p.detail, "grpc backend stream failed");
                (
                    Some(problem_trailers(&p, Some(id))),
                    Some(p.kind.slug().to_string()),
                )
            }
        };
        let trailers = trailers.map(|mut t| {
            put(&mut t, STREAM_DIGEST, &chain_value(&relayed.chain));
            match sign_trailers(&self.node, &mut t, &self.request) {
                Ok(()) => t,
                Err(p) => problem_trailers(&p, Some(id)),
            }
        });
        let about = About {
            message_id: id,
            client: None,
            context: Some(&self.context),
            service: &self.service,
            operation: &self.operation,
            peer: Some(self.peer.to_string()),
        };
        let mut rec = final_record(
            RecordKind::ResponseOut,
            about,
            &self.request,
            trailers.as_ref(),
            &relayed.chain,
            problem,
            relayed.body,
        );
        let disclosed: Vec<String> = disclosed.into_iter().collect();
        rec.headers
            .push(("enlace-disclosed".into(), disclosed.join(",")));
        let access = access_emit::record(
            &self.node,
            access_emit::Exchange {
                message_id: id,
                context: &self.context,
                service: &self.entry,
                contract: &self.contract,
                operation: &self.operation,
                fields: disclosed,
                refused: failure,
                status: StatusCode::OK.as_u16(),
                request_digest: self.request.digest(),
                response_digest: Some(chain_value(&relayed.chain)),
            },
        );
        let (logged, queued) = tokio::join!(
            self.node.log.append(rec),
            access_emit::enqueue(&self.node, access)
        );
        if let Err(p) = logged.and(queued) {
            tracing::error!(problem = %p, "could not log a grpc response");
            let _ = tx
                .send(Frame::trailers(problem_trailers(&p, Some(id))))
                .await;
            return;
        }
        if let Some(t) = trailers {
            let _ = tx.send(Frame::trailers(t)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> Bound {
        let mut headers = HeaderMap::new();
        put(
            &mut headers,
            context::MESSAGE_ID,
            "0193a0c0-0000-7000-8000-000000000001",
        );
        put(
            &mut headers,
            signature::CONTENT_DIGEST,
            &signature::content_digest(b"x"),
        );
        Bound {
            method: Method::POST,
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

    fn signed(key: &enlace_certs::SigningKey, sent: &StreamDigest) -> HeaderMap {
        let mut t = HeaderMap::new();
        put(&mut t, GRPC_STATUS, "0");
        put(
            &mut t,
            context::MESSAGE_ID,
            "0193a0c0-0000-7000-8000-000000000001",
        );
        put(&mut t, STREAM_DIGEST, &chain_value(sent));
        sign_trailers_with(
            key,
            "CL-DEV/GOV/61002000-3/node/a",
            1_000,
            &mut t,
            &request(),
        )
        .unwrap();
        t
    }

    #[test]
    fn the_trailer_signature_covers_the_chain_and_the_status() {
        let key = enlace_certs::SigningKey::generate().unwrap();
        let public = key.public_key_bytes();
        let key_for = |_: &str| Ok(public.clone());
        let sent = chain(&[b"one", b"two"]);
        let t = signed(&key, &sent);
        verify_trailers_with(&t, &request(), &sent, 1_000, 30, key_for).unwrap();

        // A message lost, reordered or altered on the way breaks the chain.
        for received in [
            chain(&[b"one"]),
            chain(&[b"two", b"one"]),
            chain(&[b"one", b"tw0"]),
        ] {
            let err =
                verify_trailers_with(&t, &request(), &received, 1_000, 30, key_for).unwrap_err();
            assert_eq!(err.kind, ProblemKind::SignatureInvalid, "{err:?}");
        }
        // A changed status, or a claimed chain changed to match, breaks the signature.
        let mut changed = t.clone();
        put(&mut changed, GRPC_STATUS, "5");
        assert!(verify_trailers_with(&changed, &request(), &sent, 1_000, 30, key_for).is_err());
        let mut forged = t.clone();
        let other = chain(&[b"one"]);
        put(&mut forged, STREAM_DIGEST, &chain_value(&other));
        assert!(verify_trailers_with(&forged, &request(), &other, 1_000, 30, key_for).is_err());
        // Bound to the request: another request's trailers do not verify.
        let mut another = request();
        put(
            &mut another.headers,
            context::MESSAGE_ID,
            "0193a0c0-0000-7000-8000-000000000002",
        );
        assert!(verify_trailers_with(&t, &another, &sent, 1_000, 30, key_for).is_err());
    }

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
}

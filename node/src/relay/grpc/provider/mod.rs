//! The provider node's side of a gRPC call: a peer node calls in over mutual TLS.
//!
//! verify peer → content type → resolve service → verify the request head's signature (with
//! the body's digest when the request is one message), freshness and replay → enforce
//! contract (the check that counts) → validate the request message → bind the subject (the
//! person a bound request field names is the one `enlace-subject` names) → count volume → log
//! → forward to the gRPC backend (h2c); a streamed request is relayed message by message by
//! its own task, each strictly decoded, bound to the subject and chained, and its end passed on
//! only once the consumer node's signed request trailers verify (otherwise the backend sees a
//! reset) → sign the
//! response head of a server stream, or digest the head of one message → per response message:
//! validate, minimise, re-encode, chain (the single message of a unary or client-streaming call
//! held until the final status) → sign the final status (with the head digest) bound to the
//! request → log → release it.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use enlace_core::config::ServiceEntry;
use enlace_core::contract::Contract;
use enlace_core::id::{NodeId, SubjectId};
use enlace_core::problem::{Culprit, Problem, ProblemKind};
use enlace_description::grpc::{self as wire, MethodInfo, Side, StreamDigest};
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use tokio::time::Instant;

use super::consumer::{altered, check_encoding, check_single_request, content_type, signer};
use super::signing::{self, Verifier};
use super::stream::{
    Ending, Forwarded, Inbound, Outlet, Progress, Pump, PumpDone, StopSignal, fail_stream,
    forward_messages, relay, until,
};
use super::{
    Bound, CHANNEL_FRAMES, Clock, Closing, GRPC_ACCEPT_ENCODING, GRPC_MESSAGE, GRPC_STATUS,
    GRPC_STATUS_DETAILS, GRPC_TIMEOUT, OutBody, REQUEST_STREAM_DIGEST, Reply, STREAM_DIGEST,
    answer, final_record, metadata, problem_trailers, put, read_timeout, streamed, timeout_value,
    trailers_only,
};
use crate::net::{BodySender, RelayBody, body_channel, read_body};
use crate::relay::exchange::access_record;
use crate::relay::exchange::context::{self, Context};
use crate::relay::exchange::contract::{admit, check_contract};
use crate::relay::exchange::log_record::{
    About, context_record, keep_request_signature, set_target,
};
use crate::relay::exchange::peer::admit_peer;
use crate::relay::exchange::resolve::resolve_service;
use crate::relay::exchange::subject;
use crate::relay::exchange::target::{Target, read_grpc_target};
use crate::relay::{Node, Snapshot};
use enlace_msglog::RecordKind;

/// How long a streamed call without a deadline may wait for the backend's head at most; its
/// idle timeout normally ends it much sooner.
const NO_DEADLINE: Duration = Duration::from_secs(24 * 3600);

/// A peer node's gRPC call.
pub(crate) async fn provider(
    node: Arc<Node>,
    req: Request<Incoming>,
    peer: NodeId,
) -> http::Response<OutBody> {
    answer(move |reply| run(node, req, peer, reply)).await
}

/// What is known of an incoming call, for its log records.
#[derive(Default)]
struct Trace {
    message_id: Option<String>,
    context: Option<Context>,
    service: String,
    operation: String,
    /// The service version resolved, for the access record of a refusal.
    entry: Option<ServiceEntry>,
    /// The chain of a streamed request, as far as it was received.
    request: Option<Progress>,
    /// The person a request message asked about, when not the one `enlace-subject` names.
    asked: Asked,
}

/// The person a request message asked about when `enlace-subject` named someone else (or no
/// one): the refusal's access record goes to them. Shared with the request direction's task,
/// which finds it in a streamed request.
#[derive(Clone, Default)]
struct Asked(Arc<std::sync::Mutex<Option<SubjectId>>>);

impl Asked {
    fn set(&self, subject: SubjectId) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(subject);
    }

    fn get(&self) -> Option<SubjectId> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The context an access record is filed under: the person asked about, if a request
    /// message asked about someone else than `enlace-subject` names.
    fn context(&self, named: &Context) -> Context {
        let mut c = named.clone();
        if let Some(s) = self.get() {
            c.subject = Some(s);
        }
        c
    }

    /// Notes the person asked about in a log record (whose `subject` stays the one named).
    fn note(&self, rec: &mut enlace_msglog::Record) {
        if let Some(s) = self.get() {
            rec.headers.push((ASKED_SUBJECT.into(), s.to_string()));
        }
    }
}

/// Log record field naming the person a request message asked about when `enlace-subject`
/// named someone else.
const ASKED_SUBJECT: &str = "enlace-asked-subject";

/// The person a request message asks about, where the method binds a field to the data
/// subject (`(enlace.subject)`), must be the one `enlace-subject` names (the shared decision in
/// `exchange/subject.rs`). A bound field left empty names nobody, so it does not match either.
fn bind_subject(
    method: &MethodInfo,
    msg: &wire::DynamicMessage,
    named: Option<&SubjectId>,
    asked: &Asked,
) -> Result<(), Problem> {
    let Some((scheme, value)) = method.subject_of(msg) else {
        return Ok(());
    };
    let field = method
        .subject
        .as_ref()
        .map(|b| b.field.name().to_string())
        .unwrap_or_default();
    if value.is_empty() {
        return Err(Problem::new(
            ProblemKind::SubjectMismatch,
            format!(
                "request field `{field}` names the person this call is about ({scheme}); it \
                 is empty, so it is not the person {} names",
                context::SUBJECT
            ),
        ));
    }
    let bound = format!("{scheme}:{value}");
    let place = format!("request field `{field}`");
    subject::bind_subject(Some(&bound), &place, named, &method.full_name).inspect_err(|p| {
        if p.kind == ProblemKind::SubjectMismatch
            && let Ok(s) = bound.parse()
        {
            asked.set(s);
        }
    })
}

impl Trace {
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

async fn run(node: Arc<Node>, req: Request<Incoming>, peer: NodeId, mut reply: Reply) {
    let (parts, body) = req.into_parts();
    let bound = Bound {
        method: parts.method.clone(),
        uri: parts.uri.clone(),
        headers: parts.headers.clone(),
    };
    let mut trace = Trace::default();
    if let Err(problem) = exchange(&node, &bound, body, &peer, &mut reply, &mut trace).await {
        refuse(&node, &bound, &peer, &trace, problem, &mut reply).await;
    }
}

async fn exchange(
    node: &Arc<Node>,
    req: &Bound,
    body: Incoming,
    peer: &NodeId,
    reply: &mut Reply,
    trace: &mut Trace,
) -> Result<(), Problem> {
    let started = Instant::now();
    let seen = (&mut trace.message_id, &mut trace.context);
    let (message_id, ctx, snap) = admit_peer(node, &req.headers, peer, seen)?;
    wire::check_content_type(content_type(&req.headers))?;
    let target = read_grpc_target(&req.uri)?;
    let (entry, backend_addr, log_bodies) = resolve(node, &snap, req, &target, trace)?;
    let clock = Clock::new(started, read_timeout(&req.headers)?, idle_timeout(node));
    let method = super::method_of(node, entry, &target.rest, &clock, reply).await?;
    trace.operation = method.full_name.clone();
    let (whole, body) = verify_request(
        node,
        &snap,
        req,
        body,
        peer,
        method.client_streaming,
        &clock,
        reply,
    )
    .await?;
    let asked = trace.asked.clone();
    let at = At {
        node,
        snap: &snap,
        req,
        peer,
        message_id,
        ctx,
        entry,
        method,
        asked: &asked,
        backend_addr,
        method_path: &target.rest,
    };
    let authorised = authorise(&at, whole, body)?;
    let contract = authorised.contract;
    let (resp, pump) = log_and_forward(&at, authorised, log_bodies, &clock, reply, trace).await?;
    let (bparts, bbody) = resp.into_parts();
    check_backend_head(&bparts)?;
    let call = Call::of(at, contract, trace).await?;
    relay_response(call, bparts.headers, bbody, &clock, pump, reply, log_bodies).await
}

/// The service version called and its gRPC backend on this node: its h2c address and whether
/// the subsystem logs bodies.
fn resolve<'a>(
    node: &'a Node,
    snap: &'a Snapshot,
    req: &Bound,
    target: &Target,
    trace: &mut Trace,
) -> Result<(&'a ServiceEntry, &'a str, bool), Problem> {
    let (entry, backend) = resolve_service(node, snap, &req.headers, target)?;
    trace.service = format!("{}/{}", entry.id, entry.version);
    trace.entry = Some(entry.clone());
    let backend_addr = backend.0.strip_prefix("h2c://").ok_or_else(|| {
        Problem::new(
            ProblemKind::UnknownService,
            format!("this node provides {} over REST, not gRPC", target.service),
        )
    })?;
    Ok((entry, backend_addr, backend.1))
}

/// A call without a deadline ends after this long without a frame in either direction.
fn idle_timeout(node: &Node) -> Duration {
    Duration::from_millis(node.settings.raw.limits.grpc_idle_timeout_ms)
}

/// What the phases after the signature's verification know of the call (what it owns passes
/// on to the closing phase, see [`Call::of`]).
struct At<'a, 's> {
    node: &'a Arc<Node>,
    /// The configuration the call is judged by (a contract found in it outlives the call's
    /// other borrows).
    snap: &'s Arc<Snapshot>,
    req: &'a Bound,
    peer: &'a NodeId,
    message_id: String,
    ctx: Context,
    entry: &'a ServiceEntry,
    method: MethodInfo,
    asked: &'a Asked,
    /// The gRPC backend's h2c address and the method's path there.
    backend_addr: &'a str,
    method_path: &'a str,
}

/// The verified request, as it goes on to the backend: one message, checked and chained; or a
/// stream, checked message by message by its own task.
enum Received {
    Whole { body: Bytes, chain: StreamDigest },
    Streamed(Incoming),
}

/// What the checks let through: the contract in force, the request, the volume it counts
/// against, and the caller's custom metadata for the backend.
struct Authorised<'s> {
    contract: &'s Contract,
    received: Received,
    usage: Vec<enlace_msglog::Usage>,
    custom: HeaderMap,
}

/// The checks that count, once the signature verified: not a replay, a contract in force that
/// covers the operation, an encoding this node reads, the request message valid and about the
/// person the context names, the contract's volume not exhausted.
fn authorise<'s>(
    at: &At<'_, 's>,
    whole: Option<Bytes>,
    body: Option<Incoming>,
) -> Result<Authorised<'s>, Problem> {
    at.node.check_replay(&at.message_id)?;
    let contract = check_contract(at.snap, &at.ctx, &at.entry.id, at.entry.version)?;
    check_encoding(&at.req.headers)?;
    contract.allows_operation(&at.method.full_name)?;
    let custom = metadata::custom(&at.req.headers)
        .map_err(|d| Problem::new(ProblemKind::InvalidRequest, d).caused_by(Culprit::PeerNode))?;
    let received = match (whole, body) {
        (Some(w), _) => {
            let max = at.node.settings.raw.limits.max_grpc_message_bytes;
            let (chain, msg) = check_single_request(&at.method, &w, max)?;
            bind_subject(&at.method, &msg, at.ctx.subject.as_ref(), at.asked)?;
            Received::Whole { body: w, chain }
        }
        (None, Some(body)) => Received::Streamed(body),
        (None, None) => return Err(Problem::new(ProblemKind::Internal, "no request body")),
    };
    let usage = admit(at.node, contract)?;
    Ok(Authorised {
        contract,
        received,
        usage,
        custom,
    })
}

/// Logs the request and forwards it. As on the consumer: a one-message request to a method
/// without side effects goes to the backend while its record commits; anything else only once
/// the record is durable.
async fn log_and_forward(
    at: &At<'_, '_>,
    authorised: Authorised<'_>,
    log_bodies: bool,
    clock: &Arc<Clock>,
    reply: &mut Reply,
    trace: &mut Trace,
) -> Result<(http::Response<Incoming>, Pump), Problem> {
    let Authorised {
        received,
        usage,
        custom,
        ..
    } = authorised;
    let rec = request_record(trace, at, &received, log_bodies);
    let logged = at.node.log.append_counted(rec, usage);
    let logged = if matches!(received, Received::Whole { .. }) && at.method.no_side_effects {
        Some(logged)
    } else {
        logged.await?;
        None
    };
    let forwarded = forward(at, received, &custom, clock, reply, trace).await?;
    if let Some(logged) = logged {
        logged.await?;
    }
    Ok(forwarded)
}

/// Forwards the request to the backend (the whole request, or its stream from its own task)
/// and waits for its response head.
async fn forward(
    at: &At<'_, '_>,
    received: Received,
    custom: &HeaderMap,
    clock: &Arc<Clock>,
    reply: &mut Reply,
    trace: &mut Trace,
) -> Result<(http::Response<Incoming>, Pump), Problem> {
    let streamed_request = matches!(received, Received::Streamed(_));
    let (backend_body, mut pump) = match received {
        Received::Whole { body, chain } => {
            (RelayBody::from(Full::new(body)), Pump::finished(chain))
        }
        Received::Streamed(body) => stream_request(at, body, clock, trace),
    };
    let forwarded = backend_request(
        at.backend_addr,
        at.method_path,
        &at.ctx,
        &at.message_id,
        custom,
        backend_body,
        clock,
    )?;
    let resp = await_backend(
        at.node,
        forwarded,
        streamed_request,
        clock,
        reply,
        &mut pump,
    )
    .await?;
    Ok((resp, pump))
}

/// Relays the backend's response: a trailers-only status passes on as it is, signed; otherwise
/// a head of its own (signed on its own for a server stream, digested for a response of one
/// message), then each message validated, minimised to the contract's fields, re-encoded and
/// chained (the one message of a unary call held until the final status), then the signed
/// final status (see `finish.rs`).
async fn relay_response(
    call: Call,
    backend_head: HeaderMap,
    bbody: Incoming,
    clock: &Arc<Clock>,
    mut pump: Pump,
    reply: &mut Reply,
    log_bodies: bool,
) -> Result<(), Problem> {
    if backend_head.contains_key(GRPC_STATUS) {
        // Trailers-only from the backend: its status passes on unchanged, signed.
        let outcome = Outcome {
            ending: Ending::Trailers(backend_head),
            chain: StreamDigest::new(),
            kept: None,
            disclosed: BTreeSet::new(),
            held: None,
            head: None,
            head_digest: None,
        };
        call.finish(outcome, pump, Deliver::Head(reply)).await;
        return Ok(());
    }
    let limits = &call.node.settings.raw.limits;
    let mut head = HeaderMap::new();
    put(&mut head, "content-type", "application/grpc");
    put(&mut head, context::MESSAGE_ID, &call.message_id);
    let custom = metadata::custom(&backend_head).map_err(|d| {
        Problem::new(ProblemKind::ResponseSchemaViolation, d).caused_by(Culprit::ProviderBackend)
    })?;
    metadata::append(&mut head, &custom);
    // The head of a server-streaming call is signed on its own: its messages go on before the
    // final status. The head of a response of one message is bound by the final status.
    let head_digest = if call.method.server_streaming {
        signing::sign_response_head(&signer(&call.node), &mut head, &call.request)?;
        None
    } else {
        Some(signing::head_digest(&head)?)
    };
    let sent_head = head.clone();
    let (tx, rx) = body_channel(CHANNEL_FRAMES);
    reply.send(streamed(head, rx));

    let mut inbound = Inbound::new(
        bbody,
        Side::Response,
        limits.max_grpc_message_bytes,
        clock.clone(),
        Culprit::ProviderBackend,
    );
    let keep = log_bodies.then_some(limits.max_body_bytes);
    let single = !call.method.server_streaming;
    let allowed = &call.allowed;
    let mut disclosed = BTreeSet::new();
    let mut held = None;
    let mut count = 0u64;
    let outlet = if single {
        Outlet::Hold(&mut held)
    } else {
        Outlet::Send(&tx)
    };
    let m = &call.method;
    let relayed = relay(
        &mut inbound,
        outlet,
        clock,
        tx.closed(),
        &mut pump,
        keep,
        |payload| {
            if single && count >= 1 {
                return Err(Problem::new(
                    ProblemKind::ResponseSchemaViolation,
                    format!(
                        "{} answers one message; the provider backend sent a second",
                        m.full_name
                    ),
                )
                .caused_by(Culprit::ProviderBackend));
            }
            count += 1;
            let mut msg = m.decode_response(&payload)?;
            disclosed.extend(wire::minimise(&mut msg, allowed));
            Ok(wire::encode(&msg))
        },
    )
    .await;
    let outcome = Outcome {
        ending: relayed.ending,
        chain: relayed.chain,
        kept: relayed.kept,
        disclosed,
        held,
        head: Some(sent_head),
        head_digest,
    };
    call.finish(outcome, pump, Deliver::Stream(tx)).await;
    Ok(())
}

/// Verifies the request's signature made by the TLS peer: of its head, and, when the request
/// is one message, of its whole body too (read here, within the call's deadline). Returns that
/// body, or the stream of a streamed request, whose chain its trailers sign.
#[allow(clippy::too_many_arguments)]
async fn verify_request(
    node: &Node,
    snap: &Snapshot,
    req: &Bound,
    body: Incoming,
    peer: &NodeId,
    streamed_request: bool,
    clock: &Clock,
    reply: &mut Reply,
) -> Result<(Option<Bytes>, Option<Incoming>), Problem> {
    let limits = &node.settings.raw.limits;
    let peer_name = peer.to_string();
    let key_for = |keyid: &str| node.keys_of(snap, &peer_name, "the TLS peer", keyid);
    let verifier = Verifier {
        now: node.unix_now(),
        max_skew_secs: limits.clock_skew_secs,
        key_for: &key_for,
    };
    if streamed_request {
        signing::verify_request_head(req, None, &verifier)
            .map_err(|p| node.config.registry_offset().blame_stale(p))?;
        return Ok((None, Some(body)));
    }
    let mut no_pump = Pump::finished(StreamDigest::new());
    let read = read_body(body, limits.max_body_bytes);
    let whole = until(read, clock, reply.closed(), &mut no_pump)
        .await
        .map_err(Problem::from)??;
    signing::verify_request_head(req, Some(&whole), &verifier)
        .map_err(|p| node.config.registry_offset().blame_stale(p))?;
    Ok((Some(whole), None))
}

/// The log record of the request as received: its signature, target, chain (of a request of
/// one message) and, when the subsystem logs bodies, the body.
fn request_record(
    trace: &Trace,
    at: &At<'_, '_>,
    received: &Received,
    log_bodies: bool,
) -> enlace_msglog::Record {
    let mut rec = context_record(
        RecordKind::RequestIn,
        0,
        trace.about(&at.message_id, at.peer),
    );
    super::request_record(&mut rec, &at.req.headers);
    set_target(&mut rec, &at.req.method, &at.req.uri);
    if let Received::Whole { body, chain } = received {
        rec.headers.push((STREAM_DIGEST.into(), chain.value()));
        rec.body = log_bodies.then(|| body.to_vec());
    }
    rec
}

/// Starts the task that relays a streamed request's messages to the backend (see
/// [`pump_requests`]); the backend reads them from the body returned.
fn stream_request(
    at: &At<'_, '_>,
    body: Incoming,
    clock: &Arc<Clock>,
    trace: &mut Trace,
) -> (RelayBody, Pump) {
    let (tx, rx) = body_channel(CHANNEL_FRAMES);
    let progress = Progress::default();
    trace.request = Some(progress.clone());
    let requests = RequestPump {
        body,
        method: at.method.clone(),
        named: at.ctx.subject.clone(),
        asked: at.asked.clone(),
        max: at.node.settings.raw.limits.max_grpc_message_bytes,
        clock: clock.clone(),
        node: at.node.clone(),
        snap: at.snap.clone(),
        peer: at.peer.clone(),
        received: at.req.clone(),
        out: tx,
        progress: progress.clone(),
    };
    let pump = Pump::spawn(progress, |stop| pump_requests(requests, stop));
    (RelayBody::from(rx), pump)
}

/// Sends the request to the backend and waits for its response head: within the call's
/// deadline, and for a request of one message within `upstream_timeout_ms` too. A call that
/// ends first (the consumer went away, the deadline passed) fails the request stream before
/// the request is dropped.
async fn await_backend(
    node: &Node,
    forwarded: http::Request<RelayBody>,
    streamed_request: bool,
    clock: &Clock,
    reply: &mut Reply,
    pump: &mut Pump,
) -> Result<http::Response<Incoming>, Problem> {
    let wait = if streamed_request {
        clock.left().unwrap_or(NO_DEADLINE)
    } else {
        clock.budget(Duration::from_millis(
            node.settings.raw.limits.upstream_timeout_ms,
        ))?
    };
    let answered = tokio::time::timeout(wait, node.grpc_backend.request(forwarded));
    let mut answered = std::pin::pin!(answered);
    match until(answered.as_mut(), clock, reply.closed(), pump).await {
        Err(stop) => {
            // The request stream fails before the unanswered request is dropped: the backend
            // sees a failed stream, never a cancelled one it might take for complete.
            pump.stop().await;
            Err(stop.into())
        }
        Ok(Ok(Ok(r))) => Ok(r),
        Ok(Ok(Err(e))) => {
            let p = super::stream::broke(&e, "provider backend's", Culprit::ProviderBackend);
            Err(pump.cause(p).await)
        }
        Ok(Err(_)) => Err(clock.budget(Duration::ZERO).err().unwrap_or_else(|| {
            Problem::new(
                ProblemKind::PeerTimeout,
                format!(
                    "provider backend did not answer within {} ms",
                    wait.as_millis()
                ),
            )
            .caused_by(Culprit::ProviderBackend)
        })),
    }
}

/// The backend's response head must be a gRPC response: HTTP 200, a gRPC content type, an
/// encoding we read.
fn check_backend_head(bparts: &http::response::Parts) -> Result<(), Problem> {
    let backend_fault = |p: Problem| {
        Problem::new(ProblemKind::ResponseSchemaViolation, p.detail)
            .caused_by(Culprit::ProviderBackend)
    };
    if bparts.status != StatusCode::OK {
        return Err(Problem::new(
            ProblemKind::ResponseSchemaViolation,
            format!(
                "the provider backend answered HTTP {} instead of a gRPC response",
                bparts.status
            ),
        )
        .caused_by(Culprit::ProviderBackend));
    }
    wire::check_content_type(content_type(&bparts.headers)).map_err(backend_fault)?;
    check_encoding(&bparts.headers).map_err(|p| p.caused_by(Culprit::ProviderBackend))
}

/// The request to the gRPC backend over h2c: the method path, the context (without the
/// consent token), the message id, what is left of the deadline, the caller's custom metadata.
fn backend_request(
    backend_addr: &str,
    method_path: &str,
    ctx: &Context,
    message_id: &str,
    custom: &HeaderMap,
    body: RelayBody,
    clock: &Clock,
) -> Result<Request<RelayBody>, Problem> {
    let url = format!("http://{backend_addr}{method_path}");
    let mut req = Request::new(body);
    *req.method_mut() = Method::POST;
    *req.uri_mut() = url.parse().map_err(|_| {
        Problem::new(
            ProblemKind::Internal,
            format!("backend URL {url} is invalid"),
        )
    })?;
    let h = req.headers_mut();
    metadata::append(h, custom);
    put(h, "content-type", "application/grpc");
    put(h, "te", "trailers");
    put(h, GRPC_ACCEPT_ENCODING, "identity");
    ctx.write(h)?;
    h.remove(context::AUTHORIZATION);
    put(h, context::MESSAGE_ID, message_id);
    if let Some(left) = clock.left() {
        put(h, GRPC_TIMEOUT, &timeout_value(left));
    }
    Ok(req)
}

mod finish;
mod refusal;
mod requests;

use finish::{Call, Deliver, Outcome};
use refusal::refuse;
use requests::{RequestPump, pump_requests};

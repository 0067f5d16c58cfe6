//! The consumer node's side of a gRPC call: a local backend calls out through this node.
//!
//! authenticate backend → read context, content type and deadline → resolve the service by
//! its protobuf method → check contract (fail fast) → the request: one message read whole,
//! validated and digested; or a stream, validated and chained message by message by its own
//! task and closed by signed trailers → sign the request head → log → send over mutual TLS →
//! verify the response head of a server stream (the head of one message is held) → relay each
//! response message (strictly decoded and chained; the single message of a unary or
//! client-streaming call held until verified) → verify the final status, both chains and a held
//! head's digest → log → release the final status.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use enlace_core::config::{DescriptionKind, NodeEntry, ServiceEntry};
use enlace_core::id::{NodeId, ServiceId, SubsystemId};
use enlace_core::problem::{Culprit, Problem, ProblemKind};
use enlace_description::grpc::{self as wire, MethodInfo, Side, StreamDigest};
use http::{HeaderMap, Method, Request, StatusCode, Uri};
use http_body_util::Full;
use hyper::body::Incoming;
use tokio::time::Instant;

use super::signing::{self, Chains, Signer, Verifier};
use super::stream::{
    Ending, Forwarded, Inbound, Outlet, Progress, Pump, PumpDone, StopSignal, fail_stream,
    forward_messages, relay, until,
};
use super::{
    Bound, CHANNEL_FRAMES, Clock, Closing, GRPC_ACCEPT_ENCODING, GRPC_ENCODING, GRPC_MESSAGE,
    GRPC_PREFIX, GRPC_STATUS, GRPC_STATUS_DETAILS, GRPC_TIMEOUT, OutBody, PROBLEM_TYPE, PROVIDER,
    Reply, STREAM_DIGEST, answer, final_record, metadata, problem_trailers, put, read_timeout,
    streamed, timeout_value, trailers_only,
};
use crate::net::{RelayBody, body_channel, read_body};
use crate::relay::exchange::backend::{authenticate_backend, within_rate};
use crate::relay::exchange::context::{self, Context, read_context};
use crate::relay::exchange::contract::check_contract;
use crate::relay::exchange::log_record::{About, context_record, set_target};
use crate::relay::{Node, Snapshot};
use enlace_httpsig as signature;
use enlace_msglog::RecordKind;

/// How long a streamed call without a deadline may wait for the response head at most; its
/// idle timeout normally ends it much sooner.
const NO_DEADLINE: Duration = Duration::from_secs(24 * 3600);

/// A local backend's gRPC call.
pub(crate) async fn consumer(node: Arc<Node>, req: Request<Incoming>) -> http::Response<OutBody> {
    answer(move |reply| run(node, req, reply)).await
}

/// What is known of the call so far, for its log records.
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

async fn run(node: Arc<Node>, req: Request<Incoming>, mut reply: Reply) {
    let mut trace = Trace {
        message_id: node.new_message_id(),
        client: None,
        context: None,
        service: String::new(),
        operation: String::new(),
        peer: None,
    };
    if let Err(problem) = exchange(&node, req, &mut reply, &mut trace).await {
        refuse(&node, &trace, problem, &mut reply).await;
    }
}

/// Logs a refusal (a cancellation before the answer included) like a success, then answers
/// with its status when the caller is still there.
async fn refuse(node: &Node, trace: &Trace, problem: Problem, reply: &mut Reply) {
    if problem.kind == ProblemKind::Cancelled {
        tracing::info!(message_id = %trace.message_id, service = %trace.service, operation = %trace.operation, "grpc call cancelled before its answer");
    } else if problem.kind != ProblemKind::LogUnavailable {
        // (the message log's writer says, once per interval, that it cannot commit)
        tracing::info!(message_id = %trace.message_id, service = %trace.service, operation = %trace.operation, problem = problem.kind.slug(), detail = %problem.detail, "grpc call refused");
    }
    let mut rec = context_record(RecordKind::Refusal, problem.kind.status(), trace.about());
    rec.problem = Some(problem.kind.slug().to_string());
    rec.headers
        .push((GRPC_STATUS.into(), problem.kind.grpc_code().to_string()));
    let out = match node.log.append(rec).await {
        Ok(_) => problem_trailers(&problem, Some(&trace.message_id)),
        Err(p) => {
            if p.kind != ProblemKind::LogUnavailable {
                tracing::error!(problem = %p, "could not log a refusal");
            }
            problem_trailers(&p, Some(&trace.message_id))
        }
    };
    reply.send(trailers_only(out));
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

fn provider_node<'a>(snap: &'a Snapshot, entry: &ServiceEntry) -> Result<&'a NodeEntry, Problem> {
    let member = entry.id.member();
    snap.config
        .nodes
        .iter()
        .find(|n| &n.id.member == member)
        .ok_or_else(|| {
            Problem::new(
                ProblemKind::PeerUnreachable,
                format!("{member} has no approved node"),
            )
        })
}

pub(super) fn content_type(h: &HeaderMap) -> Option<&str> {
    h.get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
}

pub(super) fn check_encoding(h: &HeaderMap) -> Result<(), Problem> {
    wire::check_encoding(h.get(GRPC_ENCODING).and_then(|v| v.to_str().ok()))
}

/// Decodes the single request message of a unary or server-streaming call strictly; returns
/// its chain and the message.
pub(super) fn check_single_request(
    method: &MethodInfo,
    body: &[u8],
    max: usize,
) -> Result<(StreamDigest, wire::DynamicMessage), Problem> {
    let mut decoder = wire::FrameDecoder::new(Side::Request, max);
    let messages = decoder.push(body)?;
    decoder.finish()?;
    if messages.len() != 1 {
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
    let mut decoded = None;
    for m in messages {
        let payload = m.identity()?;
        decoded = Some(method.decode_request(&payload)?);
        chain.update(&payload);
    }
    let decoded =
        decoded.ok_or_else(|| Problem::new(ProblemKind::Internal, "no request message"))?;
    Ok((chain, decoded))
}

pub(super) fn signer(node: &Node) -> Signer {
    Signer {
        key: node.signing_key.current(),
        keyid: node.settings.id.to_string(),
        created: node.unix_now(),
    }
}

/// The status fields a consumer node passes on from the provider node's (verified) final
/// status: code, message, details, problem type, culprit (restated from the backend's side, as
/// for REST: the provider's `this-node` is the backend's `peer-node`), and custom metadata.
fn pass_status(from: &HeaderMap, message_id: &str) -> Result<HeaderMap, Problem> {
    let mut h = HeaderMap::new();
    for name in [GRPC_STATUS, GRPC_MESSAGE, GRPC_STATUS_DETAILS, PROBLEM_TYPE] {
        if let Some(v) = from.get(name) {
            h.insert(name, v.clone());
        }
    }
    let theirs = from.get(context::ERROR).and_then(|v| v.to_str().ok());
    let ours = match theirs {
        Some("this-node") => Some(Culprit::PeerNode.as_str()),
        Some("peer-node") => Some(Culprit::ThisNode.as_str()),
        Some("client") => Some(Culprit::Client.as_str()),
        Some("provider-backend") => Some(Culprit::ProviderBackend.as_str()),
        _ => None,
    };
    if let Some(culprit) = ours {
        put(&mut h, context::ERROR, culprit);
    }
    let custom = metadata::custom(from).map_err(|d| {
        Problem::new(ProblemKind::ResponseSchemaViolation, d).caused_by(Culprit::PeerNode)
    })?;
    metadata::append(&mut h, &custom);
    put(&mut h, context::MESSAGE_ID, message_id);
    Ok(h)
}

/// The head of the request to the provider node, unsigned: the context, the content type,
/// the message id, the service, and the caller's custom metadata.
fn request_head(
    parts: &http::request::Parts,
    entry: &ServiceEntry,
    ctx: &Context,
    message_id: &str,
    address: &str,
    custom: &HeaderMap,
) -> Result<Bound, Problem> {
    let uri: Uri = format!(
        "https://{address}{GRPC_PREFIX}{}/v{}{}",
        entry.id,
        entry.version.major,
        parts.uri.path()
    )
    .parse()
    .map_err(|_| Problem::new(ProblemKind::InvalidRequest, "the path cannot be relayed"))?;
    let mut headers = HeaderMap::new();
    put(&mut headers, "content-type", "application/grpc");
    ctx.write(&mut headers)?;
    put(&mut headers, context::MESSAGE_ID, message_id);
    put(
        &mut headers,
        context::SERVICE,
        &format!("{}/{}", entry.id, entry.version),
    );
    metadata::append(&mut headers, custom);
    Ok(Bound {
        method: Method::POST,
        uri,
        headers,
    })
}

/// The signed request with its body, and the unsigned fields of the hop: `te`, the encoding
/// this node accepts, and what is left of the deadline (it can only shorten the call).
fn outbound(sent: &Bound, body: RelayBody, clock: &Clock) -> Request<RelayBody> {
    let mut out = Request::new(body);
    *out.method_mut() = sent.method.clone();
    *out.uri_mut() = sent.uri.clone();
    *out.headers_mut() = sent.headers.clone();
    let h = out.headers_mut();
    put(h, "te", "trailers");
    put(h, GRPC_ACCEPT_ENCODING, "identity");
    if let Some(left) = clock.left() {
        put(h, GRPC_TIMEOUT, &timeout_value(left));
    }
    out
}

async fn exchange(
    node: &Arc<Node>,
    req: Request<Incoming>,
    reply: &mut Reply,
    trace: &mut Trace,
) -> Result<(), Problem> {
    let started = Instant::now();
    let (parts, body) = req.into_parts();
    let caller = admit_caller(node, &parts, started, trace)?;
    let snap = node.snapshot()?;
    let (entry, provider) = resolve(&snap, &parts, &caller.ctx, trace)?;
    let method = super::method_of(node, entry, parts.uri.path(), &caller.clock, reply).await?;
    let mut sent = request_head(
        &parts,
        entry,
        &caller.ctx,
        &trace.message_id,
        &provider.address,
        &caller.custom,
    )?;
    let outgoing = read_request(node, &method, body, &mut sent, &caller, reply).await?;
    let (resp, pump) = send_logged(
        node, trace, &sent, outgoing, &method, provider, &caller, reply,
    )
    .await?;
    let (rparts, rbody) = resp.into_parts();
    check_response_head(&rparts)?;
    let call = Call {
        node: node.clone(),
        snap: snap.clone(),
        sent,
        peer: provider.id.clone(),
        method,
        clock: caller.clock,
        trace: trace.clone(),
    };
    relay_response(call, rparts.headers, rbody, pump, reply, caller.log_bodies).await
}

/// What the node knows of its backend's call once admitted.
struct Caller {
    ctx: Context,
    log_bodies: bool,
    clock: Arc<Clock>,
    custom: HeaderMap,
}

/// Admits the backend's call: a bounded header section, an authenticated client within its
/// rate, the context, a gRPC content type and encoding, its deadline, its custom metadata.
fn admit_caller(
    node: &Node,
    parts: &http::request::Parts,
    started: Instant,
    trace: &mut Trace,
) -> Result<Caller, Problem> {
    let limits = &node.settings.raw.limits;
    context::check_header_section(&parts.headers, limits.max_header_bytes)?;
    let (client, log_bodies) = authenticate_backend(node, &parts.headers, &parts.extensions)?;
    trace.client = Some(client.clone());
    within_rate(node, &client)?;
    let ctx = read_context(&parts.headers, &client)?;
    trace.context = Some(ctx.clone());
    let path = parts.uri.path();
    trace.operation = path.strip_prefix('/').unwrap_or(path).to_string();
    wire::check_content_type(content_type(&parts.headers))?;
    check_encoding(&parts.headers)?;
    let idle = Duration::from_millis(limits.grpc_idle_timeout_ms);
    let clock = Clock::new(started, read_timeout(&parts.headers)?, idle);
    let custom = metadata::custom(&parts.headers)
        .map_err(|d| Problem::new(ProblemKind::InvalidRequest, d))?;
    Ok(Caller {
        ctx,
        log_bodies,
        clock,
        custom,
    })
}

/// Resolves the service by its protobuf method (or the one `enlace-provider` names) and its
/// provider node, and checks the contract and the operation (fail fast: the provider node
/// checks them again).
fn resolve<'a>(
    snap: &'a Snapshot,
    parts: &http::request::Parts,
    ctx: &Context,
    trace: &mut Trace,
) -> Result<(&'a ServiceEntry, &'a NodeEntry), Problem> {
    let requested = context::single(&parts.headers, PROVIDER, 300)?
        .map(|s| s.parse::<ServiceId>())
        .transpose()?;
    let entry = resolve_by_operation(snap, &trace.operation, requested.as_ref())?;
    trace.service = format!("{}/{}", entry.id, entry.version);
    let provider = provider_node(snap, entry)?;
    trace.peer = Some(provider.id.to_string());
    let contract = check_contract(snap, ctx, &entry.id, entry.version)?;
    contract.allows_operation(&trace.operation)?;
    Ok((entry, provider))
}

/// The request as it leaves for the provider node: one message read whole, checked, digested
/// and signed with the head; or a stream whose head is signed now and whose messages a task
/// relays once the request's record is durable.
enum Outgoing {
    Whole {
        body: Bytes,
        chain: StreamDigest,
        logged_body: Option<Vec<u8>>,
    },
    Streamed {
        body: RelayBody,
        pump: Box<RequestPump>,
    },
}

async fn read_request(
    node: &Arc<Node>,
    method: &MethodInfo,
    body: Incoming,
    sent: &mut Bound,
    caller: &Caller,
    reply: &mut Reply,
) -> Result<Outgoing, Problem> {
    let limits = &node.settings.raw.limits;
    if method.client_streaming {
        signing::sign_request_head(&signer(node), sent, true)?;
        let (tx, rx) = body_channel(CHANNEL_FRAMES);
        let pump = RequestPump {
            body,
            method: method.clone(),
            max: limits.max_grpc_message_bytes,
            clock: caller.clock.clone(),
            node: node.clone(),
            sent: sent.clone(),
            out: tx,
            progress: Progress::default(),
        };
        return Ok(Outgoing::Streamed {
            body: RelayBody::from(rx),
            pump: Box::new(pump),
        });
    }
    let mut no_pump = Pump::finished(StreamDigest::new());
    let read = read_body(body, limits.max_body_bytes);
    let whole = until(read, &caller.clock, reply.closed(), &mut no_pump)
        .await
        .map_err(Problem::from)??;
    let (chain, _) = check_single_request(method, &whole, limits.max_grpc_message_bytes)?;
    put(
        &mut sent.headers,
        signature::CONTENT_DIGEST,
        &signature::content_digest(&whole),
    );
    signing::sign_request_head(&signer(node), sent, false)?;
    Ok(Outgoing::Whole {
        logged_body: caller.log_bodies.then(|| whole.to_vec()),
        body: whole,
        chain,
    })
}

/// Logs the request and sends it over the pooled mutual-TLS connection, then waits for the
/// response head. A one-message request to a method without side effects is sent while its
/// record commits (the log commits in order, so it is durable before the response's); any
/// other only once it is durable. A request stream starts only once the request is logged.
#[allow(clippy::too_many_arguments)]
async fn send_logged(
    node: &Node,
    trace: &Trace,
    sent: &Bound,
    mut outgoing: Outgoing,
    method: &MethodInfo,
    provider: &NodeEntry,
    caller: &Caller,
    reply: &mut Reply,
) -> Result<(http::Response<Incoming>, Pump), Problem> {
    let mut rec = context_record(RecordKind::RequestOut, 0, trace.about());
    super::request_record(&mut rec, &sent.headers);
    set_target(&mut rec, &sent.method, &sent.uri);
    let streamed_request = matches!(outgoing, Outgoing::Streamed { .. });
    if let Outgoing::Whole {
        chain, logged_body, ..
    } = &mut outgoing
    {
        rec.headers.push((STREAM_DIGEST.into(), chain.value()));
        rec.body = logged_body.take();
    }
    let logged = node.log.append(rec);
    let logged = if !streamed_request && method.no_side_effects {
        Some(logged)
    } else {
        logged.await?;
        None
    };
    let (body, mut pump) = match outgoing {
        Outgoing::Whole { body, chain, .. } => {
            (RelayBody::from(Full::new(body)), Pump::finished(chain))
        }
        Outgoing::Streamed { body, pump } => {
            let progress = pump.progress.clone();
            (
                body,
                Pump::spawn(progress, |stop| pump_requests(*pump, stop)),
            )
        }
    };
    let clock = &caller.clock;
    let limits = &node.settings.raw.limits;
    let wait = if streamed_request {
        clock.left().unwrap_or(NO_DEADLINE)
    } else {
        clock.budget(Duration::from_millis(limits.upstream_timeout_ms))?
    };
    let send = node.pool.send(
        &provider.id,
        &provider.address,
        outbound(sent, body, clock),
        wait,
    );
    let mut send = std::pin::pin!(send);
    let resp = match until(send.as_mut(), clock, reply.closed(), &mut pump).await {
        Err(stop) => {
            // The request stream fails before the unanswered request is dropped.
            pump.stop().await;
            return Err(stop.into());
        }
        Ok(Ok(r)) => r,
        Ok(Err(p)) => {
            return Err(match clock.left() {
                Some(left) if left.is_zero() => super::deadline_passed(),
                _ => pump.cause(p).await,
            });
        }
    };
    if let Some(logged) = logged {
        logged.await?;
    }
    Ok((resp, pump))
}

/// The provider node answers gRPC: HTTP 200 with a gRPC content type.
fn check_response_head(rparts: &http::response::Parts) -> Result<(), Problem> {
    if rparts.status == StatusCode::OK && super::is_grpc(&rparts.headers) {
        return Ok(());
    }
    Err(Problem::new(
        ProblemKind::PeerUnreachable,
        format!(
            "the provider node answered HTTP {} instead of a gRPC response",
            rparts.status
        ),
    )
    .caused_by(Culprit::PeerNode))
}

/// Relays the provider node's response: a trailers-only status as it is; a server stream's
/// messages as they come once its head verifies on its own (the head of one message is held
/// with it and checked against the final status); the single message of a unary or
/// client-streaming call held until the final status verifies (see `finish.rs`).
async fn relay_response(
    call: Call,
    received: HeaderMap,
    rbody: Incoming,
    mut pump: Pump,
    reply: &mut Reply,
    log_bodies: bool,
) -> Result<(), Problem> {
    if received.contains_key(GRPC_STATUS) {
        // Trailers-only: the provider node's status (a refusal, or its backend's) in headers.
        let relayed = Relayed::status_only(received);
        call.finish(relayed, pump, Deliver::Head(reply, None)).await;
        return Ok(());
    }
    if call.method.server_streaming {
        call.verifier(|v| signing::verify_response_head(&received, &call.sent, v))
            .map_err(|p| {
                let offset = call.node.config.registry_offset();
                offset.blame_stale(p.caused_by(Culprit::PeerNode))
            })?;
    }
    let mut head = HeaderMap::new();
    put(&mut head, context::MESSAGE_ID, &call.trace.message_id);
    let custom = metadata::custom(&received).map_err(|d| {
        Problem::new(ProblemKind::ResponseSchemaViolation, d).caused_by(Culprit::PeerNode)
    })?;
    metadata::append(&mut head, &custom);
    let limits = &call.node.settings.raw.limits;
    let mut inbound = Inbound::new(
        rbody,
        Side::Response,
        limits.max_grpc_message_bytes,
        call.clock.clone(),
        Culprit::PeerNode,
    );
    let keep = log_bodies.then_some(limits.max_body_bytes);
    if call.method.server_streaming {
        // Messages are released as they arrive; the final status only once verified.
        let (tx, rx) = body_channel(CHANNEL_FRAMES);
        reply.send(streamed(head, rx));
        let m = call.method.clone();
        let relayed = relay(
            &mut inbound,
            Outlet::Send(&tx),
            &call.clock,
            tx.closed(),
            &mut pump,
            keep,
            |payload| {
                m.decode_response(&payload).map_err(altered)?;
                Ok(payload)
            },
        )
        .await;
        let mut relayed = Relayed::from(relayed);
        relayed.head = Some(received);
        call.finish(relayed, pump, Deliver::Stream(tx)).await;
    } else {
        let mut held = None;
        let relayed = relay(
            &mut inbound,
            Outlet::Hold(&mut held),
            &call.clock,
            reply.closed(),
            &mut pump,
            keep,
            Ok,
        )
        .await;
        let mut relayed = Relayed::from(relayed);
        relayed.held = held;
        relayed.head = Some(received);
        call.finish(relayed, pump, Deliver::Head(reply, Some(head)))
            .await;
    }
    Ok(())
}

/// A message that fails to decode at the receiving node was altered on the way (or the
/// sending node is broken): the node that sent it checked it strictly before it left. The
/// chain would not match either; the message is refused as an integrity failure.
pub(super) fn altered(p: Problem) -> Problem {
    Problem::new(
        ProblemKind::SignatureInvalid,
        format!(
            "a message the other node checked before sending does not decode here, so it was \
             altered on the way: {}",
            p.detail
        ),
    )
    .caused_by(Culprit::PeerNode)
}

mod finish;
mod requests;

use finish::{Call, Deliver, Relayed};
use requests::{RequestPump, pump_requests};

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
    Ending, Event, Inbound, Outlet, Progress, Pump, PumpDone, StopSignal, relay, stopped, until,
};
use super::{
    Bound, CHANNEL_FRAMES, Clock, Closing, GRPC_ACCEPT_ENCODING, GRPC_MESSAGE, GRPC_STATUS,
    GRPC_STATUS_DETAILS, GRPC_TIMEOUT, OutBody, REQUEST_STREAM_DIGEST, Reply, STREAM_DIGEST,
    answer, final_record, metadata, problem_trailers, put, read_timeout, streamed, timeout_value,
    trailers_only,
};
use crate::msglog::RecordKind;
use crate::net::{BodySender, RelayBody, body_channel, read_body};
use crate::relay::exchange::access_record;
use crate::relay::exchange::context::{self, Context};
use crate::relay::exchange::contract::{admit, check_contract, check_operation};
use crate::relay::exchange::log_record::{
    About, context_record, keep_request_signature, set_target,
};
use crate::relay::exchange::peer::{read_message_id, verify_peer};
use crate::relay::exchange::resolve::resolve_service;
use crate::relay::exchange::target::read_grpc_target;
use crate::relay::{Node, Snapshot};

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
    fn note(&self, rec: &mut crate::msglog::Record) {
        if let Some(s) = self.get() {
            rec.headers.push((ASKED_SUBJECT.into(), s.to_string()));
        }
    }
}

/// Log record field naming the person a request message asked about when `enlace-subject`
/// named someone else.
const ASKED_SUBJECT: &str = "enlace-asked-subject";

/// The person a request message asks about, where the method binds a field to the data
/// subject (`(enlace.subject)`), must be the one `enlace-subject` names: the access log then
/// names the person whose data is read, and a consumer cannot read one person's data in
/// another's name. A bound field left empty names nobody, so it does not match either.
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
    let id = format!("{scheme}:{value}");
    let shown: String = id.chars().take(100).collect();
    let subject: SubjectId = id.parse().map_err(|e: enlace_core::IdError| {
        Problem::new(
            ProblemKind::RequestSchemaViolation,
            format!(
                "request field `{field}` asks about `{shown}`, which is not a valid person \
                 identifier: {e}"
            ),
        )
    })?;
    match named {
        Some(n) if *n == subject => Ok(()),
        Some(n) => {
            asked.set(subject.clone());
            Err(Problem::new(
                ProblemKind::SubjectMismatch,
                format!(
                    "{} names {n}, but request field `{field}` asks about {subject}",
                    context::SUBJECT
                ),
            ))
        }
        None => {
            asked.set(subject.clone());
            Err(Problem::new(
                ProblemKind::SubjectMismatch,
                format!(
                    "{} is about a person ({subject}); name them in {}",
                    method.full_name,
                    context::SUBJECT
                ),
            ))
        }
    }
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

/// Logs a refusal (a cancellation before the answer included) like a success, with its access
/// record, and answers with a signed status (signed when the request carried a message id to
/// bind it to).
async fn refuse(
    node: &Node,
    req: &Bound,
    peer: &NodeId,
    trace: &Trace,
    problem: Problem,
    reply: &mut Reply,
) {
    let id = trace.message_id.clone().unwrap_or_default();
    if problem.kind == ProblemKind::Cancelled {
        tracing::info!(%peer, message_id = %id, service = %trace.service, "incoming grpc call cancelled before its answer");
    } else if problem.kind != ProblemKind::LogUnavailable {
        // (the message log's writer says, once per interval, that it cannot commit)
        tracing::info!(%peer, message_id = %id, service = %trace.service, problem = problem.kind.slug(), detail = %problem.detail, "incoming grpc call refused");
    }
    let request_chain = trace.request.as_ref().map(Progress::get);
    let trailers = refusal_trailers(node, req, trace, &problem, request_chain.as_ref());
    let mut rec = context_record(
        RecordKind::Refusal,
        problem.kind.status(),
        trace.about(&id, peer),
    );
    set_target(&mut rec, &req.method, &req.uri);
    super::keep_section(&mut rec, &trailers, "");
    keep_refused_request(&mut rec, &req.headers);
    rec.request_digest = req
        .digest()
        .or_else(|| request_chain.as_ref().map(StreamDigest::value));
    rec.problem = Some(problem.kind.slug().to_string());
    trace.asked.note(&mut rec);
    let access = refusal_record(node, trace, &problem, req);
    if let Err(p) = node
        .log
        .append_with(rec, access_record::queued(access))
        .await
    {
        // The refusal could not be recorded: answer why, signed like any refusal.
        if p.kind != ProblemKind::LogUnavailable {
            tracing::error!(problem = %p, "could not log a refusal");
        }
        let trailers = refusal_trailers(node, req, trace, &p, request_chain.as_ref());
        reply.send(trailers_only(trailers));
        return;
    }
    reply.send(trailers_only(trailers));
}

/// The trailers of a refusal: the problem, no response message, how much of a streamed request
/// came, signed and bound to the request when it carried a message id.
fn refusal_trailers(
    node: &Node,
    req: &Bound,
    trace: &Trace,
    problem: &Problem,
    request_chain: Option<&StreamDigest>,
) -> HeaderMap {
    let mut trailers = problem_trailers(problem, trace.message_id.as_deref());
    put(&mut trailers, STREAM_DIGEST, &StreamDigest::new().value());
    if req.digest().is_none() {
        // A streamed request (or one that cannot be told apart): say how much of it came.
        let chain = request_chain.cloned().unwrap_or_default();
        put(&mut trailers, REQUEST_STREAM_DIGEST, &chain.value());
    }
    if trace.message_id.is_some()
        && let Err(p) = signing::sign_trailers(&signer(node), &mut trailers, req)
    {
        tracing::error!(problem = %p, "could not sign a refusal");
    }
    trailers
}

/// A refusal record holds the status it answered with; the request's Enlace fields, signature,
/// content type and custom metadata go beside it (prefixed `request-`, as for REST), so the log
/// shows what the peer node sent, and whether its signature held, even when it did not parse or
/// verify.
fn keep_refused_request(rec: &mut crate::msglog::Record, request: &HeaderMap) {
    keep_request_signature(rec, request);
    let mut names = vec![http::header::CONTENT_TYPE.as_str()];
    names.extend(
        metadata::custom_names(request)
            .into_iter()
            .take(metadata::MAX_CUSTOM),
    );
    for name in names {
        let kept = format!("{}{name}", super::REFUSED_REQUEST_PREFIX);
        if rec.headers.iter().any(|(k, _)| *k == kept) {
            continue; // covered by the signature, kept with it
        }
        for v in request.get_all(name) {
            if let Ok(v) = v.to_str() {
                rec.headers
                    .push((kept.clone(), v.chars().take(metadata::MAX_VALUE).collect()));
            }
        }
    }
}

/// The access record of a refused call, once the subject, the service and the contract are
/// known.
fn refusal_record(
    node: &Node,
    trace: &Trace,
    problem: &Problem,
    request: &Bound,
) -> Option<enlace_core::access::SignedAccessRecord> {
    let operation = if trace.operation.is_empty() {
        request.uri.path().to_string()
    } else {
        trace.operation.clone()
    };
    // A subject mismatch is recorded for the person the request asked about.
    let context = trace.context.as_ref().map(|c| trace.asked.context(c));
    access_record::refusal(
        node,
        problem,
        access_record::Refused {
            context: context.as_ref(),
            service: trace.entry.as_ref(),
            message_id: trace.message_id.as_deref(),
            operation,
            request_digest: request
                .digest()
                .or_else(|| trace.request.as_ref().map(|p| p.get().value())),
            response_digest: None,
        },
    )
}

/// The status fields a provider node passes on from its backend: code, message, details and
/// custom metadata. Never `enlace-*`: a backend cannot speak for the node.
fn backend_status(from: &HeaderMap, message_id: &str) -> Result<HeaderMap, Problem> {
    let violation = |detail: String| {
        Problem::new(ProblemKind::ResponseSchemaViolation, detail)
            .caused_by(Culprit::ProviderBackend)
    };
    let status = from
        .get(GRPC_STATUS)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| violation("the final status has no grpc-status".into()))?;
    if status.is_empty() || status.len() > 2 || !status.bytes().all(|b| b.is_ascii_digit()) {
        return Err(violation(format!(
            "grpc-status `{status}` is not a status code"
        )));
    }
    let mut h = HeaderMap::new();
    for name in [GRPC_STATUS, GRPC_MESSAGE, GRPC_STATUS_DETAILS] {
        if let Some(v) = from.get(name) {
            if v.len() > metadata::MAX_VALUE {
                return Err(violation(format!(
                    "{name} is longer than {} bytes",
                    metadata::MAX_VALUE
                )));
            }
            h.insert(name, v.clone());
        }
    }
    metadata::append(&mut h, &metadata::custom(from).map_err(violation)?);
    put(&mut h, context::MESSAGE_ID, message_id);
    Ok(h)
}

fn is_ok(status: &HeaderMap) -> bool {
    status.get(GRPC_STATUS).map(HeaderValue::as_bytes) == Some(b"0")
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
    let limits = &node.settings.raw.limits;
    context::check_header_section(&req.headers, limits.max_header_bytes)?;
    let message_id = read_message_id(&req.headers)?;
    trace.message_id = Some(message_id.clone());
    let ctx = Context::read(&req.headers)?;
    trace.context = Some(ctx.clone());
    let snap = node.snapshot()?;
    verify_peer(&snap, peer, &ctx)?;
    wire::check_content_type(content_type(&req.headers))?;
    let parts = {
        let mut r = Request::new(());
        *r.method_mut() = req.method.clone();
        *r.uri_mut() = req.uri.clone();
        *r.headers_mut() = req.headers.clone();
        r.into_parts().0
    };
    let target = read_grpc_target(&req.uri)?;
    let (entry, backend) = resolve_service(node, &snap, &parts, &target)?;
    trace.service = format!("{}/{}", entry.id, entry.version);
    trace.entry = Some(entry.clone());
    let log_bodies = backend.1;
    let backend_addr = backend.0.strip_prefix("h2c://").ok_or_else(|| {
        Problem::new(
            ProblemKind::UnknownService,
            format!("this node provides {} over REST, not gRPC", target.service),
        )
    })?;
    let idle = Duration::from_millis(limits.grpc_idle_timeout_ms);
    let clock = Clock::new(started, read_timeout(&req.headers)?, idle);
    let mut no_pump = Pump::finished(StreamDigest::new());
    let compiled = until(
        node.compiled_grpc(entry),
        &clock,
        reply.closed(),
        &mut no_pump,
    )
    .await
    .map_err(Problem::from)??;
    let method = compiled.method(&target.rest)?;
    trace.operation = method.full_name.clone();
    let streamed_request = method.client_streaming;

    // The signature: of the head, and of the whole body when the request is one message.
    let peer_name = peer.to_string();
    let key_for = |keyid: &str| {
        if keyid != peer_name {
            return Err(Problem::new(
                ProblemKind::SignatureInvalid,
                format!("signed by {keyid}, but the TLS peer is {peer_name}"),
            ));
        }
        node.peer_keys(&snap, keyid)
    };
    let verifier = Verifier {
        now: node.unix_now(),
        max_skew_secs: limits.clock_skew_secs,
        key_for: &key_for,
    };
    let (whole, body) = if streamed_request {
        signing::verify_request_head(req, None, &verifier)
            .map_err(|p| node.config.registry_offset().blame_stale(p))?;
        (None, Some(body))
    } else {
        let read = read_body(body, limits.max_body_bytes);
        let whole = until(read, &clock, reply.closed(), &mut no_pump)
            .await
            .map_err(Problem::from)??;
        signing::verify_request_head(req, Some(&whole), &verifier)
            .map_err(|p| node.config.registry_offset().blame_stale(p))?;
        (Some(whole), None)
    };
    node.check_replay(&message_id)?;
    let contract = check_contract(&snap, &ctx, &entry.id, entry.version)?;
    check_encoding(&req.headers)?;
    check_operation(contract, &method.full_name)?;
    let custom = metadata::custom(&req.headers)
        .map_err(|d| Problem::new(ProblemKind::InvalidRequest, d).caused_by(Culprit::PeerNode))?;
    let chain = match &whole {
        Some(w) => {
            let (chain, msg) = check_single_request(&method, w, limits.max_grpc_message_bytes)?;
            bind_subject(&method, &msg, ctx.subject.as_ref(), &trace.asked)?;
            Some(chain)
        }
        None => None,
    };
    let usage = admit(node, contract)?;

    let mut rec = context_record(RecordKind::RequestIn, 0, trace.about(&message_id, peer));
    super::request_record(&mut rec, &req.headers);
    set_target(&mut rec, &req.method, &req.uri);
    if let Some(c) = &chain {
        rec.headers.push((STREAM_DIGEST.into(), c.value()));
    }
    rec.body = whole.as_ref().filter(|_| log_bodies).map(|w| w.to_vec());
    let logged = node.log.append_counted(rec, usage);
    // As on the consumer: a one-message request to a method without side effects goes to the
    // backend while its record commits; anything else only once the record is durable.
    let logged = if whole.is_some() && method.no_side_effects {
        Some(logged)
    } else {
        logged.await?;
        None
    };

    // Forward to the backend: the whole request, or its stream from its own task.
    let (backend_body, mut pump) = match (whole, body, chain) {
        (Some(w), _, Some(c)) => (RelayBody::from(Full::new(w)), Pump::finished(c)),
        (_, Some(body), _) => {
            let (tx, rx) = body_channel(CHANNEL_FRAMES);
            let progress = Progress::default();
            trace.request = Some(progress.clone());
            let (method, clock, node, snap) =
                (method.clone(), clock.clone(), node.clone(), snap.clone());
            let (peer, received, max) = (peer.clone(), req.clone(), limits.max_grpc_message_bytes);
            let (named, asked) = (ctx.subject.clone(), trace.asked.clone());
            let pump = Pump::spawn(progress.clone(), move |stop| {
                pump_requests(RequestPump {
                    body,
                    method,
                    named,
                    asked,
                    max,
                    clock,
                    node,
                    snap,
                    peer,
                    received,
                    out: tx,
                    progress,
                    stop,
                })
            });
            (RelayBody::from(rx), pump)
        }
        _ => return Err(Problem::new(ProblemKind::Internal, "no request body")),
    };
    let forwarded = backend_request(
        backend_addr,
        &target.rest,
        &ctx,
        &message_id,
        &custom,
        backend_body,
        &clock,
    )?;
    let wait = if streamed_request {
        clock.left().unwrap_or(NO_DEADLINE)
    } else {
        clock.budget(Duration::from_millis(limits.upstream_timeout_ms))?
    };
    let answered = tokio::time::timeout(wait, node.grpc_backend.request(forwarded));
    let mut answered = std::pin::pin!(answered);
    let answered_or_stopped = until(answered.as_mut(), &clock, reply.closed(), &mut pump).await;
    let resp = match answered_or_stopped {
        Err(stop) => {
            // The request stream fails before the unanswered request is dropped: the backend
            // sees a failed stream, never a cancelled one it might take for complete.
            pump.stop().await;
            return Err(stop.into());
        }
        Ok(Ok(Ok(r))) => r,
        Ok(Ok(Err(e))) => {
            let p = super::stream::broke(&e, "provider backend's", Culprit::ProviderBackend);
            return Err(pump.cause(p).await);
        }
        Ok(Err(_)) => {
            return Err(clock.budget(Duration::ZERO).err().unwrap_or_else(|| {
                Problem::new(
                    ProblemKind::PeerTimeout,
                    format!(
                        "provider backend did not answer within {} ms",
                        wait.as_millis()
                    ),
                )
                .caused_by(Culprit::ProviderBackend)
            }));
        }
    };
    if let Some(logged) = logged {
        logged.await?;
    }
    let (bparts, bbody) = resp.into_parts();
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
    check_encoding(&bparts.headers).map_err(|p| p.caused_by(Culprit::ProviderBackend))?;

    // What the response may disclose: the contract's fields, less sensitive ones without the
    // person's authorisation and secret ones always.
    let allowed =
        crate::relay::exchange::disclosure::allowed(node, &ctx, entry, contract, &trace.operation)
            .await?;
    let call = Call {
        node: node.clone(),
        request: req.clone(),
        method,
        allowed,
        entry: entry.clone(),
        contract: contract.clone(),
        message_id: message_id.clone(),
        context: ctx,
        service: trace.service.clone(),
        operation: trace.operation.clone(),
        peer: peer.clone(),
        asked: trace.asked.clone(),
    };
    if bparts.headers.contains_key(GRPC_STATUS) {
        // Trailers-only from the backend: its status passes on unchanged, signed.
        let outcome = Outcome {
            ending: Ending::Trailers(bparts.headers),
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
    let mut head = HeaderMap::new();
    put(&mut head, "content-type", "application/grpc");
    put(&mut head, context::MESSAGE_ID, &message_id);
    let custom = metadata::custom(&bparts.headers).map_err(|d| {
        Problem::new(ProblemKind::ResponseSchemaViolation, d).caused_by(Culprit::ProviderBackend)
    })?;
    metadata::append(&mut head, &custom);
    // The head of a server-streaming call is signed on its own: its messages go on before the
    // final status. The head of a response of one message is bound by the final status.
    let head_digest = if call.method.server_streaming {
        signing::sign_response_head(&signer(node), &mut head, req)?;
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
        &clock,
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

/// How the backend's response came back.
struct Outcome {
    ending: Ending,
    /// The chain of the messages sent on (streams) or received (a held message).
    chain: StreamDigest,
    kept: Option<Vec<u8>>,
    disclosed: BTreeSet<String>,
    held: Option<Vec<u8>>,
    /// The response head as sent, for the log.
    head: Option<HeaderMap>,
    /// The digest of a head of one message, for the final status to carry.
    head_digest: Option<String>,
}

enum Deliver<'a> {
    /// The head went out: the rest of the stream.
    Stream(BodySender),
    /// Nothing went out yet: a trailers-only answer.
    Head(&'a mut Reply),
}

/// A call forwarded to the backend.
struct Call {
    node: Arc<Node>,
    request: Bound,
    method: MethodInfo,
    /// The fields the response may disclose (see `relay::disclosure`).
    allowed: Vec<String>,
    /// The service version and contract, for the access record.
    entry: ServiceEntry,
    contract: Contract,
    message_id: String,
    context: Context,
    service: String,
    operation: String,
    peer: NodeId,
    asked: Asked,
}

impl Call {
    /// Signs the final status bound to the request (with the chains of both directions), logs
    /// the closing record and the access record, then releases the held message and the status.
    async fn finish(self, o: Outcome, mut pump: Pump, deliver: Deliver<'_>) {
        let id = &self.message_id;
        let single = !self.method.server_streaming;
        let mut held = o.held;
        let mut disclosed = o.disclosed;
        let (status, failure) = match o.ending {
            Ending::Trailers(t) => match backend_status(&t, id) {
                Ok(s) if single && is_ok(&s) && held.is_none() => {
                    let p = Problem::new(
                        ProblemKind::ResponseSchemaViolation,
                        format!(
                            "{} answers one message; the provider backend answered OK with none",
                            self.method.full_name
                        ),
                    )
                    .caused_by(Culprit::ProviderBackend);
                    (Some(problem_trailers(&p, Some(id))), Some(p.kind))
                }
                Ok(s) => (Some(s), None),
                Err(p) => (Some(problem_trailers(&p, Some(id))), Some(p.kind)),
            },
            Ending::Gone => {
                tracing::info!(message_id = %id, messages = o.chain.count(), "grpc call cancelled by the peer node");
                (None, Some(ProblemKind::Cancelled))
            }
            Ending::Failed(p) => {
                tracing::info!(message_id = %id, problem = p.kind.slug(), detail = %p.detail, "grpc backend stream failed");
                (Some(problem_trailers(&p, Some(id))), Some(p.kind))
            }
        };
        // A single message goes on only with status OK; the chain signed is what goes on.
        let released = single && status.as_ref().is_some_and(is_ok) && failure.is_none();
        let chain = if single {
            let mut c = StreamDigest::new();
            match (&held, released) {
                (Some(m), true) => c.update(m),
                _ => {
                    held = None;
                    disclosed.clear();
                }
            }
            c
        } else {
            o.chain
        };
        let request_chain = pump.chain();
        let streamed_request = self.method.client_streaming;
        let status = status.map(|mut t| {
            put(&mut t, STREAM_DIGEST, &chain.value());
            if streamed_request {
                put(&mut t, REQUEST_STREAM_DIGEST, &request_chain.value());
            }
            if let Some(d) = &o.head_digest {
                put(&mut t, signing::HEAD_DIGEST, d);
            }
            match signing::sign_trailers(&signer(&self.node), &mut t, &self.request) {
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
        let disclosed: Vec<String> = disclosed.into_iter().collect();
        let mut rec = final_record(
            RecordKind::ResponseOut,
            about,
            &self.request,
            Closing {
                trailers: status.clone(),
                head: o.head,
                chain: Some(chain.clone()),
                request_chain: streamed_request.then(|| request_chain.value()),
                request_trailers: pump.trailers().cloned(),
                problem: failure.map(|k| k.slug().to_string()),
                body: o.kept,
            },
        );
        pump.stop().await;
        rec.headers
            .push(("enlace-disclosed".into(), disclosed.join(",")));
        self.asked.note(&mut rec);
        // A request message that asked about someone else is recorded for that person, unless
        // data of the person named had already left in this call: their record must show it
        // (the other person's data never reached the backend).
        let context = if disclosed.is_empty() {
            self.asked.context(&self.context)
        } else {
            self.context.clone()
        };
        let access = access_record::record(
            &self.node,
            access_record::Exchange {
                message_id: id,
                context: &context,
                service: &self.entry,
                contract: &self.contract,
                operation: &self.operation,
                fields: disclosed,
                refused: failure,
                status: StatusCode::OK.as_u16(),
                request_digest: self
                    .request
                    .digest()
                    .or_else(|| streamed_request.then(|| request_chain.value())),
                response_digest: Some(chain.value()),
            },
        );
        let logged = self
            .node
            .log
            .append_with(rec, access_record::queued(access))
            .await;
        let status = match logged {
            Ok(_) => status,
            Err(p) => {
                if p.kind != ProblemKind::LogUnavailable {
                    tracing::error!(problem = %p, "could not log a grpc response");
                }
                // Nothing more goes out; the status says why, signed, over what did go out.
                held = None;
                let mut t = problem_trailers(&p, Some(id));
                let sent = if single { StreamDigest::new() } else { chain };
                put(&mut t, STREAM_DIGEST, &sent.value());
                if streamed_request {
                    put(&mut t, REQUEST_STREAM_DIGEST, &request_chain.value());
                }
                if let Err(e) = signing::sign_trailers(&signer(&self.node), &mut t, &self.request) {
                    tracing::error!(problem = %e, "could not sign a grpc status");
                }
                Some(t)
            }
        };
        let Some(status) = status else { return };
        match deliver {
            Deliver::Head(reply) => {
                reply.send(trailers_only(status));
            }
            Deliver::Stream(tx) => {
                if let Some(m) = held.and_then(|m| wire::encode_frame(&m, false).ok())
                    && tx.data(Bytes::from(m)).await.is_err()
                {
                    return;
                }
                let _ = tx.trailers(status).await;
            }
        }
    }
}

/// The request direction of a streamed request.
struct RequestPump {
    body: Incoming,
    method: MethodInfo,
    /// The person `enlace-subject` names, whom every request message must be about where the
    /// method binds the subject.
    named: Option<SubjectId>,
    asked: Asked,
    max: usize,
    clock: Arc<Clock>,
    node: Arc<Node>,
    snap: Arc<Snapshot>,
    peer: NodeId,
    received: Bound,
    out: BodySender,
    progress: Progress,
    stop: StopSignal,
}

/// Relays the consumer node's request messages to the backend as they come, each strictly
/// decoded, bound to the subject and chained, and passes the end on only once the signed
/// request trailers verify against the chain received. A broken or missing chain, a message
/// that does not decode, or one about another person than `enlace-subject` names (which never
/// reaches the backend) fails the backend's stream (it sees a reset, not an end) and the call.
async fn pump_requests(p: RequestPump) -> Result<PumpDone, Problem> {
    let RequestPump {
        body,
        method,
        named,
        asked,
        max,
        clock,
        node,
        snap,
        peer,
        received,
        out,
        progress,
        mut stop,
    } = p;
    let mut inbound = Inbound::new(body, Side::Request, max, clock, Culprit::PeerNode);
    let failed = loop {
        let next = tokio::select! {
            biased;
            _ = &mut stop => break stopped(),
            n = inbound.next() => n,
        };
        let event = match next {
            Ok(e) => e,
            // Framing the consumer node checked before sending: altered on the way.
            Err(e) if e.kind == ProblemKind::RequestSchemaViolation => break altered(e),
            Err(e) => break e,
        };
        match event {
            Event::Message(payload) => {
                let msg = match method.decode_request(&payload) {
                    Ok(m) => m,
                    Err(e) => break altered(e),
                };
                if let Err(e) = bind_subject(&method, &msg, named.as_ref(), &asked) {
                    break e;
                }
                progress.update(&payload);
                let framed = match wire::encode_frame(&payload, false) {
                    Ok(f) => f,
                    Err(e) => break e,
                };
                let sent = tokio::select! {
                    biased;
                    _ = &mut stop => break stopped(),
                    r = out.data(Bytes::from(framed)) => r,
                };
                if sent.is_err() {
                    // The backend stopped reading: its answer tells the rest.
                    return Ok(PumpDone {
                        chain: progress.get(),
                        trailers: None,
                    });
                }
            }
            Event::Trailers(t) => {
                let chain = progress.get();
                let peer = peer.to_string();
                let key_for = |keyid: &str| {
                    if keyid != peer {
                        return Err(Problem::new(
                            ProblemKind::SignatureInvalid,
                            format!("request trailers signed by {keyid}, not by {peer}"),
                        ));
                    }
                    node.peer_keys(&snap, keyid)
                };
                let verifier = Verifier {
                    now: node.unix_now(),
                    max_skew_secs: node.settings.raw.limits.clock_skew_secs,
                    key_for: &key_for,
                };
                if let Err(e) = signing::verify_request_trailers(&t, &received, &chain, &verifier) {
                    break e.caused_by(Culprit::PeerNode);
                }
                let _ = out.finish().await;
                return Ok(PumpDone {
                    chain,
                    trailers: Some(t),
                });
            }
            Event::End => {
                break Problem::new(
                    ProblemKind::SignatureInvalid,
                    "the request stream ended without its signed trailers",
                )
                .caused_by(Culprit::PeerNode);
            }
        }
    };
    out.fail(super::stream::RESET).await;
    Err(failed)
}

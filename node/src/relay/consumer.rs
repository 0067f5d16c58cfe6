//! The consumer side of an exchange: a local backend calls out through this node.
//!
//! Phases: authenticate backend → read target → read context → resolve provider → check
//! contract (fail fast) → sign request → log → send over mutual TLS → verify response → log →
//! return.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use enlace_core::contract::Contract;
use enlace_core::id::{ServiceId, ServiceVersion, SubsystemId};
use enlace_core::problem::{Culprit, Problem, ProblemKind};
use http::{HeaderMap, HeaderValue, Method, Request, Response, Uri};
use http_body_util::Full;
use hyper::body::Incoming;

use super::context::{self, Context};
use super::{Node, Snapshot, problem_response};
use crate::msglog::{Record, RecordKind};
use crate::net::{Body, read_body};
use crate::signature;

/// Path prefix of relayed calls: `/r1/SERVICE-ID/vMAJOR/rest…`.
pub const RELAY_PREFIX: &str = "/r1/";

pub async fn handle(node: Arc<Node>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path();
    if path.starts_with(RELAY_PREFIX) {
        return exchange(node, req).await;
    }
    if path.starts_with("/meta/") {
        return super::meta::consumer(node, req).await;
    }
    let problem = Problem::new(
        ProblemKind::NotFound,
        format!("no such resource: {path}; relayed calls start with {RELAY_PREFIX}"),
    );
    refuse_outside_exchange(&node, req.method(), req.uri(), None, problem).await
}

/// Logs a refusal on the consumer listener that is not part of an exchange (an unknown path,
/// a metaservice call with a bad token) like any other, under a message id of its own, and
/// answers with the problem.
pub(crate) async fn refuse_outside_exchange(
    node: &Node,
    method: &Method,
    uri: &Uri,
    client: Option<&SubsystemId>,
    problem: Problem,
) -> Response<Body> {
    let message_id = node.new_message_id();
    tracing::info!(%message_id, client = ?client.map(|c| c.to_string()), path = %uri.path(), problem = problem.kind.slug(), detail = %problem.detail, "request refused");
    let about = About {
        message_id: &message_id,
        client,
        context: None,
        service: "",
        operation: "",
        peer: None,
    };
    let mut rec = context_record(RecordKind::Refusal, problem.kind.status(), about);
    set_target(&mut rec, method, uri);
    rec.problem = Some(problem.kind.slug().to_string());
    if let Err(p) = node.log.append(rec).await {
        if p.kind != ProblemKind::LogUnavailable {
            tracing::error!(problem = %p, "could not log a refusal");
        }
        return problem_response(&p, Some(&message_id));
    }
    problem_response(&problem, Some(&message_id))
}

/// What is known of an exchange so far, for the log record of a refusal.
struct Trace {
    message_id: String,
    client: Option<SubsystemId>,
    context: Option<Context>,
    service: String,
    operation: String,
    peer: Option<String>,
}

async fn exchange(node: Arc<Node>, req: Request<Incoming>) -> Response<Body> {
    let mut trace = Trace {
        message_id: node.new_message_id(),
        client: None,
        context: None,
        service: String::new(),
        operation: String::new(),
        peer: None,
    };
    match run(&node, req, &mut trace).await {
        Ok(resp) => resp,
        Err(problem) => refuse(&node, &trace, problem).await,
    }
}

/// Logs a refusal as carefully as a success, then answers with the problem.
async fn refuse(node: &Node, trace: &Trace, problem: Problem) -> Response<Body> {
    // The message log's writer says, once per interval, that it cannot commit; not each request.
    if problem.kind != ProblemKind::LogUnavailable {
        tracing::info!(message_id = %trace.message_id, client = ?trace.client.as_ref().map(|c| c.to_string()), service = %trace.service, problem = problem.kind.slug(), detail = %problem.detail, "exchange refused");
    }
    let mut rec = base_record(trace, RecordKind::Refusal, problem.kind.status());
    rec.problem = Some(problem.kind.slug().to_string());
    if let Err(p) = node.log.append(rec).await {
        if p.kind != ProblemKind::LogUnavailable {
            tracing::error!(problem = %p, "could not log a refusal");
        }
        return problem_response(&p, Some(&trace.message_id));
    }
    problem_response(&problem, Some(&trace.message_id))
}

/// Who and what a log record is about.
pub(crate) struct About<'a> {
    pub message_id: &'a str,
    pub client: Option<&'a SubsystemId>,
    pub context: Option<&'a Context>,
    pub service: &'a str,
    pub operation: &'a str,
    pub peer: Option<String>,
}

pub(crate) fn context_record(kind: RecordKind, status: u16, about: About<'_>) -> Record {
    let ctx = about.context;
    Record {
        message_id: about.message_id.to_string(),
        kind,
        at: time::OffsetDateTime::now_utc(),
        client: about
            .client
            .map(|c| c.to_string())
            .or_else(|| ctx.map(|c| c.client.to_string()))
            .unwrap_or_default(),
        service: about.service.to_string(),
        operation: about.operation.to_string(),
        method: None,
        target: None,
        contract: ctx.and_then(|c| c.contract.as_ref().map(|x| x.to_string())),
        subject: ctx.and_then(|c| c.subject.as_ref().map(|x| x.to_string())),
        user: ctx.and_then(|c| c.user.clone()),
        procedure: ctx.and_then(|c| c.procedure.clone()),
        step: ctx.and_then(|c| c.step.clone()),
        peer: about.peer,
        status,
        problem: None,
        request_digest: None,
        response_digest: None,
        signature_input: None,
        signature: None,
        headers: Vec::new(),
        body: None,
    }
}

fn base_record(trace: &Trace, kind: RecordKind, status: u16) -> Record {
    let about = About {
        message_id: &trace.message_id,
        client: trace.client.as_ref(),
        context: trace.context.as_ref(),
        service: &trace.service,
        operation: &trace.operation,
        peer: trace.peer.clone(),
    };
    context_record(kind, status, about)
}

async fn run(
    node: &Node,
    req: Request<Incoming>,
    trace: &mut Trace,
) -> Result<Response<Body>, Problem> {
    let limits = &node.settings.raw.limits;
    let (parts, body) = req.into_parts();
    context::check_header_section(&parts.headers, limits.max_header_bytes)?;
    let (client, log_bodies) = authenticate_backend(node, &parts.headers, &parts.extensions)?;
    trace.client = Some(client.clone());
    within_rate(node, &client)?;
    let target = read_target(&parts.uri)?;
    trace.service = target.service.to_string();
    let ctx = read_context(&parts.headers, &client)?;
    trace.context = Some(ctx.clone());
    let body = read_body(body, limits.max_body_bytes).await?;
    let snap = node.snapshot()?;
    let (entry, provider) = resolve_provider(&snap, &target)?;
    trace.service = format!("{}/{}", entry.id, entry.version);
    trace.peer = Some(provider.id.to_string());
    check_contract(&snap, &ctx, &entry.id, entry.version)?;
    // The operation is matched here for its header parameters; whether the contract allows it
    // the provider node decides, so that an attempt outside the contract reaches the access
    // log of the person it names.
    let compiled = node.compiled(entry).await?;
    let matched = compiled.match_request(parts.method.as_str(), &target.rest)?;
    trace.operation = compiled
        .operation_id(&matched)
        .unwrap_or_default()
        .to_string();
    let (outbound, sent_headers) = sign_request(
        node,
        &parts,
        &target,
        &entry.id,
        entry.version,
        &ctx,
        &trace.message_id,
        &provider.address,
        &compiled.header_params(&matched),
        body.clone(),
    )?;

    // Log the request; it is durable by the time the response record is (same writer, in order).
    let mut rec = base_record(trace, RecordKind::RequestOut, 0);
    fill_signature(&mut rec, &sent_headers, true);
    set_target(&mut rec, outbound.method(), outbound.uri());
    rec.body = log_bodies.then(|| body.to_vec());
    let request_logged = node.log.append(rec);
    let sent_method = outbound.method().clone();
    let sent_uri = outbound.uri().clone();
    // The provider node waits `upstream_timeout_ms` for its backend and then answers a signed
    // refusal naming that backend; the consumer waits a margin longer, so that refusal arrives
    // rather than being blamed on the peer node.
    let timeout = Duration::from_millis(limits.upstream_timeout_ms) + PEER_MARGIN;
    let send = node
        .pool
        .send(&provider.id, &provider.address, outbound, timeout);
    // As on the provider: a safe method is sent while its record commits, any other only
    // once its record is durable.
    let resp = if sent_method.is_safe() {
        let (logged, resp) = tokio::join!(request_logged, send);
        logged?;
        resp?
    } else {
        request_logged.await?;
        send.await?
    };

    // Verify the provider node's response, bound to our request.
    let (rparts, rbody) = resp.into_parts();
    let rbody = read_body(rbody, limits.max_body_bytes)
        .await
        .map_err(|p| p.caused_by(Culprit::PeerNode))?;
    let request_msg = signature::Message::request(&sent_method, &sent_uri, &sent_headers);
    let response_msg = signature::Message::response(rparts.status, &rparts.headers);
    let expected_peer = provider.id.to_string();
    signature::verify_response(
        response_msg,
        &rbody,
        request_msg,
        |keyid| {
            if keyid != expected_peer {
                return Err(Problem::new(
                    ProblemKind::SignatureInvalid,
                    format!("response signed by {keyid}, not by the provider node {expected_peer}"),
                ));
            }
            node.peer_keys(&snap, keyid)
        },
        node.unix_now(),
        limits.clock_skew_secs,
    )
    .map_err(|p| {
        node.config
            .registry_offset()
            .blame_stale(p.caused_by(Culprit::PeerNode))
    })?;

    let mut rec = base_record(trace, RecordKind::ResponseIn, rparts.status.as_u16());
    fill_signature(&mut rec, &rparts.headers, false);
    set_target(&mut rec, &sent_method, &sent_uri);
    rec.request_digest = sent_headers
        .get(signature::CONTENT_DIGEST)
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    rec.problem = problem_of(&rparts.headers, &rbody).map(|p| p.kind.slug().to_string());
    rec.body = log_bodies.then(|| rbody.to_vec());
    node.log.append(rec).await?;

    // Only what the provider node signed goes back: the status, the content type and the body.
    // Who caused an error is read from the signed problem body, never from an unsigned header,
    // and restated from the backend's point of view (the body as signed is in the log).
    let relayed = problem_of(&rparts.headers, &rbody).map(from_backend_view);
    let culprit = relayed.as_ref().map(Problem::culprit);
    let rbody = match &relayed {
        Some(p) => Bytes::from(p.to_json().to_string()),
        None => rbody,
    };
    let mut out = Response::new(Full::new(rbody));
    *out.status_mut() = rparts.status;
    let h = out.headers_mut();
    if let Some(v) = rparts.headers.get(http::header::CONTENT_TYPE) {
        h.insert(http::header::CONTENT_TYPE, v.clone());
    }
    if let Some(c) = culprit {
        h.insert(context::ERROR, HeaderValue::from_static(c.as_str()));
    }
    if let Some(secs) = relayed.as_ref().and_then(|p| p.retry_after()) {
        h.insert(http::header::RETRY_AFTER, HeaderValue::from(secs));
    }
    if let Ok(v) = HeaderValue::from_str(&trace.message_id) {
        h.insert(context::MESSAGE_ID, v);
    }
    Ok(out)
}

/// A provider node's problem as the consumer's backend should read it: the provider names
/// culprits from its side (its "peer node" is our node, its "this node" is the provider node).
/// The provider's own view stays in `provider_culprit`.
pub(crate) fn from_backend_view(p: Problem) -> Problem {
    let theirs = p.culprit();
    let ours = match theirs {
        Culprit::Client => Culprit::Client,
        Culprit::PeerNode => Culprit::ThisNode,
        Culprit::ThisNode => Culprit::PeerNode,
        Culprit::ProviderBackend => Culprit::ProviderBackend,
    };
    p.with("provider_culprit", theirs.as_str()).caused_by(ours)
}

/// Headers that never travel as an operation's header parameter: credentials, cookies,
/// Enlace's own, signatures and hop-by-hop headers (RFC 9110 §7.6.1).
pub(crate) fn is_reserved(name: &str) -> bool {
    name.starts_with("enlace-")
        || matches!(
            name,
            "authorization"
                | "proxy-authorization"
                | "cookie"
                | "set-cookie"
                | "host"
                | "content-length"
                | "content-digest"
                | "signature"
                | "signature-input"
                | "connection"
                | "keep-alive"
                | "proxy-connection"
                | "te"
                | "trailer"
                | "transfer-encoding"
                | "upgrade"
                | "forwarded"
                | "x-forwarded-for"
                | "x-forwarded-host"
                | "x-forwarded-proto"
        )
        || context::METHOD_OVERRIDES.contains(&name)
}

/// The problem a (signed) problem response carries.
fn problem_of(headers: &HeaderMap, body: &Bytes) -> Option<Problem> {
    let is_problem = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/problem+json"));
    if !is_problem {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    Problem::from_json(&v)
}

/// Records the method and target (path and query) of the request an exchange is about.
pub(crate) fn set_target(rec: &mut Record, method: &Method, uri: &Uri) {
    rec.method = Some(method.to_string());
    rec.target = uri.path_and_query().map(|p| p.to_string());
}

pub(crate) fn fill_signature(rec: &mut Record, headers: &HeaderMap, request: bool) {
    let get = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(String::from)
    };
    rec.signature_input = get(signature::SIGNATURE_INPUT);
    rec.signature = get(signature::SIGNATURE);
    if request {
        rec.request_digest = get(signature::CONTENT_DIGEST);
    } else {
        rec.response_digest = get(signature::CONTENT_DIGEST);
    }
    rec.headers = headers
        .iter()
        .filter(|(k, _)| {
            k.as_str().starts_with("enlace-")
                || *k == http::header::CONTENT_TYPE
                || *k == http::header::ACCEPT
        })
        .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
        .collect();
}

/// How much longer the consumer waits for the provider node than a provider waits for its
/// backend (the same `upstream_timeout_ms` on both, by default): time to log, sign and send
/// the provider's refusal.
pub(crate) const PEER_MARGIN: Duration = Duration::from_secs(2);

// ---- phases ----

/// Who the local backend is: the subsystem its TLS client certificate is pinned to (on the
/// TLS consumer listener), or the one its bearer token is bound to. When it shows both, they
/// must name the same subsystem.
pub(crate) fn authenticate_backend(
    node: &Node,
    headers: &HeaderMap,
    extensions: &http::Extensions,
) -> Result<(SubsystemId, bool), Problem> {
    if headers
        .get_all(http::header::AUTHORIZATION)
        .iter()
        .nth(1)
        .is_some()
    {
        return Err(Problem::repeated_authorization());
    }
    let token = match headers.get(http::header::AUTHORIZATION) {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|v| v.strip_prefix("Bearer "))
                .filter(|t| !t.is_empty() && t.len() <= 256)
                .ok_or_else(|| {
                    Problem::new(
                        ProblemKind::Unauthenticated,
                        "Authorization: must be `Bearer <token>` with a token of at most 256 characters",
                    )
                })?,
        ),
    };
    let by_token = match token {
        Some(t) => Some(
            node.settings
                .clients
                .get(&enlace_description::sha256_hex(t.as_bytes()))
                .cloned()
                .ok_or_else(|| {
                    Problem::new(ProblemKind::Unauthenticated, "unknown backend token")
                })?,
        ),
        None => None,
    };
    let by_cert = match extensions.get::<crate::consumer_tls::BackendCertificate>() {
        Some(c) => match node.settings.client_certs.get(&c.0) {
            Some(found) => Some(found.clone()),
            // An unknown certificate is no identity; a token may still be one.
            None if by_token.is_some() => None,
            None => {
                return Err(Problem::new(
                    ProblemKind::Unauthenticated,
                    format!(
                        "the client certificate (SHA-256 {}) is not pinned to a subsystem of this node",
                        c.0
                    ),
                ));
            }
        },
        None => None,
    };
    match (by_cert, by_token) {
        (Some(c), Some(t)) if c.0 != t.0 => Err(Problem::new(
            ProblemKind::Forbidden,
            format!(
                "the client certificate is pinned to {} but the token belongs to {}",
                c.0, t.0
            ),
        )),
        (Some(c), _) => Ok(c),
        (None, Some(t)) => Ok(t),
        (None, None) => Err(Problem::new(
            ProblemKind::Unauthenticated,
            "a local backend authenticates with a pinned TLS client certificate or Authorization: Bearer <token>",
        )),
    }
}

/// The calling subsystem is within its rate (`limits.requests_per_sec_per_subsystem`), or the
/// request is refused with 429 `rate-limited` and `Retry-After`.
pub(crate) fn within_rate(node: &Node, client: &SubsystemId) -> Result<(), Problem> {
    node.rate
        .check(client)
        .map_err(|wait| Problem::rate_limited(&format!("subsystem {client}"), wait))
}

pub(crate) struct Target {
    pub service: ServiceId,
    pub major: u16,
    /// The rest of the path, as received (still percent-encoded), starting with `/`.
    pub rest: String,
    pub query: Option<String>,
}

/// `/r1/INSTANCE/CLASS/CODE/SUBSYSTEM/SERVICE/vMAJOR/rest…`
pub(crate) fn read_target(uri: &Uri) -> Result<Target, Problem> {
    let path = uri.path();
    let rest = path.strip_prefix(RELAY_PREFIX).unwrap_or(path);
    let mut parts = rest.splitn(7, '/');
    let segs: Vec<&str> = (0..6).map_while(|_| parts.next()).collect();
    let tail = parts.next().unwrap_or("");
    if segs.len() < 6 {
        return Err(Problem::new(
            ProblemKind::InvalidRequest,
            format!("path must be {RELAY_PREFIX}INSTANCE/CLASS/CODE/SUBSYSTEM/SERVICE/vMAJOR/…"),
        ));
    }
    if segs.iter().any(|s| s.contains('%')) {
        return Err(Problem::new(
            ProblemKind::InvalidRequest,
            "the service part of the path must not be percent-encoded",
        ));
    }
    let service: ServiceId = segs[..5].join("/").parse()?;
    let version: ServiceVersion = segs[5].parse()?;
    if version.minor != 0 || segs[5].contains('.') {
        return Err(Problem::new(
            ProblemKind::InvalidRequest,
            "name the major version only in the path, e.g. v1",
        ));
    }
    Ok(Target {
        service,
        major: version.major,
        rest: format!("/{tail}"),
        query: uri.query().map(String::from),
    })
}

/// The context headers; `Enlace-Client` must be the authenticated subsystem.
pub(crate) fn read_context(headers: &HeaderMap, client: &SubsystemId) -> Result<Context, Problem> {
    let ctx = Context::read(headers)?;
    if &ctx.client != client {
        return Err(Problem::new(
            ProblemKind::Forbidden,
            format!(
                "{}: {} is not the subsystem this token belongs to ({client})",
                context::CLIENT,
                ctx.client
            ),
        ));
    }
    Ok(ctx)
}

fn resolve_provider<'a>(
    snap: &'a Snapshot,
    target: &Target,
) -> Result<
    (
        &'a enlace_core::config::ServiceEntry,
        &'a enlace_core::config::NodeEntry,
    ),
    Problem,
> {
    let entry = Node::resolve_service(snap, &target.service, target.major)?;
    let member = target.service.member();
    let provider = snap.node_of(member).ok_or_else(|| {
        Problem::new(
            ProblemKind::PeerUnreachable,
            format!("{member} has no approved node"),
        )
    })?;
    Ok((entry, provider))
}

/// The contract checks the consumer can make before anything leaves: it exists, binds this
/// client to this service, is active, and a subject is given if required. The provider node
/// checks again, and its check is the one that counts.
pub(crate) fn check_contract<'a>(
    snap: &'a Snapshot,
    ctx: &Context,
    service: &ServiceId,
    version: ServiceVersion,
) -> Result<&'a Contract, Problem> {
    let Some(id) = &ctx.contract else {
        return Err(Problem::new(
            ProblemKind::ContractMissing,
            format!(
                "{}: name the contract this call is made under",
                context::CONTRACT
            ),
        ));
    };
    let now = time::OffsetDateTime::now_utc();
    let contract = snap.contract(id).ok_or_else(|| {
        Problem::new(
            ProblemKind::ContractMissing,
            format!("contract {id} is not an approved contract of the federation"),
        )
    })?;
    if !snap.has_subsystem(&ctx.client) {
        return Err(Problem::new(
            ProblemKind::Forbidden,
            format!(
                "{} is not an approved subsystem of the federation",
                ctx.client
            ),
        ));
    }
    if contract.state == enlace_core::contract::ContractState::Revoked {
        return Err(Problem::new(
            ProblemKind::ContractRevoked,
            format!(
                "contract {id} was revoked: {}",
                contract.reason.as_deref().unwrap_or("no reason given")
            ),
        ));
    }
    if now >= contract.terms.valid_until {
        return Err(Problem::new(
            ProblemKind::ContractExpired,
            format!(
                "contract {id} expired at {}",
                enlace_core::rfc3339(contract.terms.valid_until)
            ),
        ));
    }
    if now < contract.terms.valid_from {
        return Err(Problem::new(
            ProblemKind::ContractMissing,
            format!(
                "contract {id} is valid only from {}",
                contract.terms.valid_from
            ),
        ));
    }
    if contract.terms.consumer != ctx.client || &contract.terms.provider != service {
        return Err(Problem::new(
            ProblemKind::ContractMissing,
            format!("contract {id} does not let {} call {service}", ctx.client),
        ));
    }
    if !contract.terms.versions.contains(version) {
        return Err(Problem::new(
            ProblemKind::ContractMissing,
            format!("contract {id} does not cover {service} {version}"),
        ));
    }
    if contract.terms.subject_required && ctx.subject.is_none() {
        return Err(Problem::new(
            ProblemKind::InvalidRequest,
            format!(
                "contract {id} requires {}: the person the data is about",
                context::SUBJECT
            ),
        ));
    }
    Ok(contract)
}

/// The operation must be one the contract names (the provider checks it again).
pub(crate) fn check_operation(contract: &Contract, operation: &str) -> Result<(), Problem> {
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

/// Builds the request to the provider node: only the Enlace context, the content type and
/// accept headers, and the header parameters the operation describes go on (no cookies, no
/// credentials, no hop-by-hop headers), then signs it, covering all of them.
#[allow(clippy::too_many_arguments)]
fn sign_request(
    node: &Node,
    parts: &http::request::Parts,
    target: &Target,
    service: &ServiceId,
    version: ServiceVersion,
    ctx: &Context,
    message_id: &str,
    address: &str,
    declared: &[&str],
    body: Bytes,
) -> Result<(Request<Body>, HeaderMap), Problem> {
    let path_and_query = match &target.query {
        Some(q) => format!(
            "{RELAY_PREFIX}{service}/v{}{}?{q}",
            target.major, target.rest
        ),
        None => format!("{RELAY_PREFIX}{service}/v{}{}", target.major, target.rest),
    };
    let uri: Uri = format!("https://{address}{path_and_query}")
        .parse()
        .map_err(|_| Problem::new(ProblemKind::InvalidRequest, "the path cannot be relayed"))?;
    let mut headers = HeaderMap::new();
    for name in [http::header::CONTENT_TYPE, http::header::ACCEPT] {
        if let Some(v) = parts.headers.get(&name) {
            headers.insert(name, v.clone());
        }
    }
    for name in declared {
        // Never a credential, an Enlace header or a hop-by-hop header, whatever a description
        // says.
        if is_reserved(name) {
            continue;
        }
        if let Some(v) = context::single(&parts.headers, name, 8192)?
            && let (Ok(n), Ok(v)) = (
                http::HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(&v),
            )
        {
            headers.insert(n, v);
        }
    }
    ctx.write(&mut headers)?;
    let put = |headers: &mut HeaderMap, name: &'static str, value: &str| -> Result<(), Problem> {
        let v = HeaderValue::from_str(value).map_err(|_| {
            Problem::new(ProblemKind::Internal, format!("{name}: not a header value"))
        })?;
        headers.insert(name, v);
        Ok(())
    };
    put(&mut headers, context::MESSAGE_ID, message_id)?;
    put(
        &mut headers,
        context::SERVICE,
        &format!("{service}/{version}"),
    )?;
    put(
        &mut headers,
        signature::CONTENT_DIGEST,
        &signature::content_digest(&body),
    )?;
    let method: Method = parts.method.clone();
    let (input, sig) = signature::sign_request_covering(
        &node.signing_key.current(),
        &node.settings.id.to_string(),
        node.unix_now(),
        signature::Message::request(&method, &uri, &headers),
        declared,
    )?;
    put(&mut headers, signature::SIGNATURE_INPUT, &input)?;
    put(&mut headers, signature::SIGNATURE, &sig)?;
    let mut out = Request::new(Full::new(body));
    *out.method_mut() = method;
    *out.uri_mut() = uri;
    *out.headers_mut() = headers.clone();
    Ok((out, headers))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_relayed_problem_names_culprits_from_the_backends_side() {
        let cases = [
            (Culprit::Client, "client"),
            (Culprit::PeerNode, "this-node"),
            (Culprit::ThisNode, "peer-node"),
            (Culprit::ProviderBackend, "provider-backend"),
        ];
        for (theirs, ours) in cases {
            let p = Problem::new(ProblemKind::Internal, "x").caused_by(theirs);
            let seen = from_backend_view(p);
            assert_eq!(seen.culprit().as_str(), ours, "{theirs:?}");
            assert_eq!(seen.to_json()["provider_culprit"], theirs.as_str());
        }
        // A signature the provider refused is our node's doing, as the backend sees it.
        let p = from_backend_view(Problem::new(ProblemKind::SignatureInvalid, "bad"));
        assert_eq!(p.culprit(), Culprit::ThisNode);
    }
}

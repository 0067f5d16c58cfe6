//! The consumer side of an exchange: a local backend calls out through this node.
//!
//! Phases: authenticate backend → read target → read context → resolve provider → check
//! contract (fail fast) → sign request → log → send over mutual TLS → verify response → log →
//! return.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use enlace_core::config::{NodeEntry, ServiceEntry};
use enlace_core::id::SubsystemId;
use enlace_core::problem::{Culprit, Problem, ProblemKind};
use http::{HeaderMap, HeaderValue, Method, Request, Response, Uri};
use http_body_util::Full;
use hyper::body::Incoming;

use crate::net::{Body, read_body};
use crate::relay::exchange::backend::{PEER_MARGIN, authenticate_backend, within_rate};
use crate::relay::exchange::context::{self, Context, is_reserved, read_context};
use crate::relay::exchange::contract::check_contract;
use crate::relay::exchange::log_record::{About, context_record, fill_signature, set_target};
use crate::relay::exchange::resolve::resolve_provider;
use crate::relay::exchange::target::{RELAY_PREFIX, Target, read_target};
use crate::relay::{Node, Snapshot, problem_response};
use enlace_httpsig as signature;
use enlace_msglog::{Record, RecordKind};

/// What is known of an exchange so far, for the log record of a refusal.
struct Trace {
    message_id: String,
    client: Option<SubsystemId>,
    context: Option<Context>,
    service: String,
    operation: String,
    peer: Option<String>,
}

pub(super) async fn exchange(node: Arc<Node>, req: Request<Incoming>) -> Response<Body> {
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
    let (parts, body) = req.into_parts();
    let (target, ctx, log_bodies) = admit_caller(node, &parts, trace)?;
    let body = read_body(body, node.settings.raw.limits.max_body_bytes).await?;
    let snap = node.snapshot()?;
    let (entry, provider) = resolve(&snap, &target, &ctx, trace)?;
    // The operation is matched here for its header parameters; whether the contract allows it
    // the provider node decides, so that an attempt outside the contract reaches the access
    // log of the person it names.
    let compiled = node.compiled(entry).await?;
    let matched = compiled.match_request(parts.method.as_str(), &target.rest)?;
    trace.operation = compiled
        .operation_id(&matched)
        .unwrap_or_default()
        .to_string();
    let to = Destination {
        entry,
        address: &provider.address,
        message_id: &trace.message_id,
    };
    let declared = compiled.header_params(&matched);
    let (outbound, sent) = sign_request(node, &parts, &target, &ctx, to, &declared, body.clone())?;
    let logged_body = log_bodies.then(|| body.to_vec());
    let resp = send_logged(node, trace, outbound, &sent, provider, logged_body).await?;
    let (rparts, rbody) = verify_response(node, &snap, &sent, provider, resp).await?;
    log_response(node, trace, &sent, &rparts, &rbody, log_bodies).await?;
    Ok(answer_backend(&rparts, rbody, &trace.message_id))
}

/// Admits the backend's request: a bounded header section, an authenticated client within its
/// rate (and whether its subsystem logs bodies), the target it names, its context.
fn admit_caller(
    node: &Node,
    parts: &http::request::Parts,
    trace: &mut Trace,
) -> Result<(Target, Context, bool), Problem> {
    context::check_header_section(&parts.headers, node.settings.raw.limits.max_header_bytes)?;
    let (client, log_bodies) = authenticate_backend(node, &parts.headers, &parts.extensions)?;
    trace.client = Some(client.clone());
    within_rate(node, &client)?;
    let target = read_target(&parts.uri)?;
    trace.service = target.service.to_string();
    let ctx = read_context(&parts.headers, &client)?;
    trace.context = Some(ctx.clone());
    Ok((target, ctx, log_bodies))
}

/// The service version and its provider node in the configuration, and a contract in force
/// for the client (fail fast: the provider node checks it again).
fn resolve<'a>(
    snap: &'a Snapshot,
    target: &Target,
    ctx: &Context,
    trace: &mut Trace,
) -> Result<(&'a ServiceEntry, &'a NodeEntry), Problem> {
    let (entry, provider) = resolve_provider(snap, target)?;
    trace.service = format!("{}/{}", entry.id, entry.version);
    trace.peer = Some(provider.id.to_string());
    check_contract(snap, ctx, &entry.id, entry.version)?;
    Ok((entry, provider))
}

/// Where a request goes: the service version, its provider node's address, the message id.
struct Destination<'a> {
    entry: &'a ServiceEntry,
    address: &'a str,
    message_id: &'a str,
}

/// The request as it went to the provider node, which its response is bound to.
struct Sent {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
}

/// Logs the request and sends it over the pooled mutual-TLS connection. The request's record is
/// durable by the time the response's is (same writer, in order); a safe method is sent while
/// its record commits, any other only once its record is durable (as on the provider).
async fn send_logged(
    node: &Node,
    trace: &Trace,
    outbound: Request<Body>,
    sent: &Sent,
    provider: &NodeEntry,
    logged_body: Option<Vec<u8>>,
) -> Result<Response<Incoming>, Problem> {
    let mut rec = base_record(trace, RecordKind::RequestOut, 0);
    fill_signature(&mut rec, &sent.headers, true);
    set_target(&mut rec, &sent.method, &sent.uri);
    rec.body = logged_body;
    let request_logged = node.log.append(rec);
    // The provider node waits `upstream_timeout_ms` for its backend and then answers a signed
    // refusal naming that backend; the consumer waits a margin longer, so that refusal arrives
    // rather than being blamed on the peer node.
    let timeout = Duration::from_millis(node.settings.raw.limits.upstream_timeout_ms) + PEER_MARGIN;
    let send = node
        .pool
        .send(&provider.id, &provider.address, outbound, timeout);
    if sent.method.is_safe() {
        let (logged, resp) = tokio::join!(request_logged, send);
        logged?;
        resp
    } else {
        request_logged.await?;
        send.await
    }
}

/// Reads the provider node's response and verifies its signature: made by that node, bound to
/// the request as sent, fresh.
async fn verify_response(
    node: &Node,
    snap: &Snapshot,
    sent: &Sent,
    provider: &NodeEntry,
    resp: Response<Incoming>,
) -> Result<(http::response::Parts, Bytes), Problem> {
    let limits = &node.settings.raw.limits;
    let (rparts, rbody) = resp.into_parts();
    let rbody = read_body(rbody, limits.max_body_bytes)
        .await
        .map_err(|p| p.caused_by(Culprit::PeerNode))?;
    let request_msg = signature::Message::request(&sent.method, &sent.uri, &sent.headers);
    let response_msg = signature::Message::response(rparts.status, &rparts.headers);
    let expected_peer = provider.id.to_string();
    signature::verify_response(
        response_msg,
        &rbody,
        request_msg,
        |keyid| node.keys_of(snap, &expected_peer, "the provider node", keyid),
        node.unix_now(),
        limits.clock_skew_secs,
    )
    .map_err(|p| {
        node.config
            .registry_offset()
            .blame_stale(p.caused_by(Culprit::PeerNode))
    })?;
    Ok((rparts, rbody))
}

/// Logs the verified response, beside the digest of the request it answers.
async fn log_response(
    node: &Node,
    trace: &Trace,
    sent: &Sent,
    rparts: &http::response::Parts,
    rbody: &Bytes,
    log_bodies: bool,
) -> Result<(), Problem> {
    let mut rec = base_record(trace, RecordKind::ResponseIn, rparts.status.as_u16());
    fill_signature(&mut rec, &rparts.headers, false);
    set_target(&mut rec, &sent.method, &sent.uri);
    rec.request_digest = sent
        .headers
        .get(signature::CONTENT_DIGEST)
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    rec.problem = problem_of(&rparts.headers, rbody).map(|p| p.kind.slug().to_string());
    rec.body = log_bodies.then(|| rbody.to_vec());
    node.log.append(rec).await?;
    Ok(())
}

/// Only what the provider node signed goes back: the status, the content type and the body.
/// Who caused an error is read from the signed problem body, never from an unsigned header,
/// and restated from the backend's point of view (the body as signed is in the log).
fn answer_backend(
    rparts: &http::response::Parts,
    rbody: Bytes,
    message_id: &str,
) -> Response<Body> {
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
    if let Ok(v) = HeaderValue::from_str(message_id) {
        h.insert(context::MESSAGE_ID, v);
    }
    out
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

// ---- phases ----

/// Builds the request to the provider node: only the Enlace context, the content type and
/// accept headers, and the header parameters the operation describes go on (no cookies, no
/// credentials, no hop-by-hop headers), then signs it, covering all of them.
fn sign_request(
    node: &Node,
    parts: &http::request::Parts,
    target: &Target,
    ctx: &Context,
    to: Destination<'_>,
    declared: &[&str],
    body: Bytes,
) -> Result<(Request<Body>, Sent), Problem> {
    let (service, version, address) = (&to.entry.id, to.entry.version, to.address);
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
    put(&mut headers, context::MESSAGE_ID, to.message_id)?;
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
    *out.method_mut() = method.clone();
    *out.uri_mut() = uri.clone();
    *out.headers_mut() = headers.clone();
    Ok((
        out,
        Sent {
            method,
            uri,
            headers,
        },
    ))
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

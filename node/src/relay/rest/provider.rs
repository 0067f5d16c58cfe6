//! The provider side of an exchange: a peer node calls in over mutual TLS.
//!
//! Phases: verify peer (TLS identity is an approved node of the client's member) → verify
//! signature, freshness and replay → resolve service → enforce contract (the check that counts)
//! → validate request → count volume → log → forward to the backend → validate response →
//! minimise to the contract's fields → sign response bound to the request → log → return.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use enlace_core::config::ServiceEntry;
use enlace_core::contract::Contract;
use enlace_core::id::{NodeId, SubjectId};
use enlace_core::problem::{Culprit, Problem, ProblemKind};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;

use crate::net::{Body, read_body};
use crate::relay::exchange::access_record;
use crate::relay::exchange::context::{self, Context};
use crate::relay::exchange::contract::{admit, check_contract};
use crate::relay::exchange::log_record::{
    About, context_record, fill_signature, keep_request_signature, set_target,
};
use crate::relay::exchange::peer::{admit_peer, covered_header_params, verify_signature};
use crate::relay::exchange::resolve::resolve_service;
use crate::relay::exchange::subject::bind_subject;
use crate::relay::exchange::target::{Target, read_target};
use crate::relay::{Node, Snapshot, problem_parts, problem_response};
use enlace_description::validate::{CompiledService, Matched};
use enlace_httpsig as signature;
use enlace_msglog::{RecordKind, Usage};

/// What is known of an incoming exchange, for its log records.
struct Trace {
    message_id: Option<String>,
    context: Option<Context>,
    service: String,
    operation: String,
    log_bodies: bool,
    /// The service version resolved, for the access record of a refusal.
    entry: Option<enlace_core::config::ServiceEntry>,
    /// The person the request asked about when `Enlace-Subject` named someone else: the
    /// refusal's access record goes to them.
    asked_subject: Option<SubjectId>,
}

pub async fn handle(node: Arc<Node>, req: Request<Incoming>, peer: NodeId) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let mut trace = Trace {
        message_id: None,
        context: None,
        service: String::new(),
        operation: String::new(),
        log_bodies: false,
        entry: None,
        asked_subject: None,
    };
    let body = read_body(body, node.settings.raw.limits.max_body_bytes).await;
    let result = match body {
        Ok(body) => run(&node, &parts, body, &peer, &mut trace).await,
        Err(p) => Err(p),
    };
    match result {
        Ok(resp) => resp,
        Err(problem) => refuse(&node, &parts, &peer, &trace, problem).await,
    }
}

/// Logs a refusal like a success and answers with a signed problem (signed when the request
/// carried a message id to bind it to).
async fn refuse(
    node: &Node,
    parts: &http::request::Parts,
    peer: &NodeId,
    trace: &Trace,
    problem: Problem,
) -> Response<Body> {
    let message_id = trace.message_id.clone().unwrap_or_default();
    // The message log's writer says, once per interval, that it cannot commit; not each request.
    if problem.kind != ProblemKind::LogUnavailable {
        tracing::info!(%peer, message_id = %message_id, service = %trace.service, problem = problem.kind.slug(), detail = %problem.detail, "incoming exchange refused");
    }
    let about = About {
        message_id: &message_id,
        client: None,
        context: trace.context.as_ref(),
        service: &trace.service,
        operation: &trace.operation,
        peer: Some(peer.to_string()),
    };
    let mut rec = context_record(RecordKind::Refusal, problem.kind.status(), about);
    set_target(&mut rec, &parts.method, &parts.uri);
    rec.problem = Some(problem.kind.slug().to_string());
    rec.request_digest = parts
        .headers
        .get(signature::CONTENT_DIGEST)
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    let resp = signed_problem(node, parts, trace.message_id.as_deref(), &problem);
    fill_signature(&mut rec, resp.headers(), false);
    keep_request_signature(&mut rec, &parts.headers);
    let access = refusal_record(node, parts, trace, &problem, resp.headers());
    if let Err(p) = node
        .log
        .append_with(rec, access_record::queued(access))
        .await
    {
        // The refusal could not be recorded: answer why, signed (the key needs no disk), so
        // the consumer node relays our refusal instead of calling it a bad signature.
        if p.kind != ProblemKind::LogUnavailable {
            tracing::error!(problem = %p, "could not log a refusal");
        }
        return signed_problem(node, parts, trace.message_id.as_deref(), &p);
    }
    resp
}

/// A problem response, signed and bound to the request when it carried a message id.
fn signed_problem(
    node: &Node,
    parts: &http::request::Parts,
    message_id: Option<&str>,
    problem: &Problem,
) -> Response<Body> {
    match message_id {
        Some(id) => {
            let (status, headers, body) = problem_parts(problem, Some(id));
            sign(node, parts, status, headers, body).unwrap_or_else(|p| problem_response(&p, None))
        }
        None => problem_response(problem, None),
    }
}

/// The access record of a refusal, once the subject, the service and the contract are known.
fn refusal_record(
    node: &Node,
    parts: &http::request::Parts,
    trace: &Trace,
    problem: &Problem,
    response: &HeaderMap,
) -> Option<enlace_core::access::SignedAccessRecord> {
    let operation = if trace.operation.is_empty() {
        format!("{} {}", parts.method, parts.uri.path())
    } else {
        trace.operation.clone()
    };
    // A subject mismatch is recorded for the person the request asked about.
    let asked = trace.asked_subject.as_ref().and_then(|s| {
        let mut c = trace.context.clone()?;
        c.subject = Some(s.clone());
        Some(c)
    });
    access_record::refusal(
        node,
        problem,
        access_record::Refused {
            context: asked.as_ref().or(trace.context.as_ref()),
            service: trace.entry.as_ref(),
            message_id: trace.message_id.as_deref(),
            operation,
            request_digest: header(&parts.headers, signature::CONTENT_DIGEST),
            response_digest: header(response, signature::CONTENT_DIGEST),
        },
    )
}

fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(String::from)
}

async fn run(
    node: &Node,
    parts: &http::request::Parts,
    body: Bytes,
    peer: &NodeId,
    trace: &mut Trace,
) -> Result<Response<Body>, Problem> {
    let seen = (&mut trace.message_id, &mut trace.context);
    let (message_id, ctx, snap) = admit_peer(node, &parts.headers, peer, seen)?;
    let verified = verify_signature(node, &snap, parts, &body, peer)?;
    node.check_replay(&message_id)?;
    let target = read_target(&parts.uri)?;
    let (entry, backend) = resolve(node, &snap, parts, &target, trace)?;
    let contract = check_contract(&snap, &ctx, &entry.id, entry.version)?;
    let compiled = node.compiled(entry).await?;
    let asked = Asked {
        parts,
        target: &target,
        body: &body,
        ctx: &ctx,
    };
    let (matched, declared) = check_request(&compiled, contract, &asked, &verified, trace)?;
    let usage = admit(node, contract)?;
    let (service, operation) = (trace.service.clone(), trace.operation.clone());
    let admitted = Admitted {
        message_id: &message_id,
        ctx: &ctx,
        service: &service,
        operation: &operation,
        peer,
        parts,
        log_bodies: trace.log_bodies,
    };
    let backend_answer =
        forward_logged(node, &admitted, usage, &target, backend, &declared, body).await?;
    let minimised = disclose(
        node,
        (&compiled, &matched),
        &admitted,
        (entry, contract),
        backend_answer,
    )
    .await?;
    respond(node, &admitted, (entry, contract), minimised).await
}

/// The service version called and its REST backend on this node (whether the subsystem logs
/// bodies goes to the trace).
fn resolve<'a>(
    node: &'a Node,
    snap: &'a Snapshot,
    parts: &http::request::Parts,
    target: &Target,
    trace: &mut Trace,
) -> Result<(&'a ServiceEntry, &'a str), Problem> {
    let (entry, backend) = resolve_service(node, snap, &parts.headers, target)?;
    trace.service = format!("{}/{}", entry.id, entry.version);
    trace.log_bodies = backend.1;
    trace.entry = Some(entry.clone());
    Ok((entry, &backend.0))
}

/// The request as the peer sent it: its head, target, body and context.
struct Asked<'a> {
    parts: &'a http::request::Parts,
    target: &'a Target,
    body: &'a Bytes,
    ctx: &'a Context,
}

/// The checks of the request against the contract and the description: an operation the
/// contract covers, the headers the operation declares covered by the signature, the request
/// valid against its schema, and about the person the context names. Answers the operation
/// matched and the declared headers to forward.
fn check_request<'c>(
    compiled: &'c CompiledService,
    contract: &Contract,
    asked: &Asked<'_>,
    verified: &signature::VerifiedSignature,
    trace: &mut Trace,
) -> Result<(Matched, Vec<&'c str>), Problem> {
    let parts = asked.parts;
    let matched = compiled.match_request(parts.method.as_str(), &asked.target.rest)?;
    let operation = compiled
        .operation_id(&matched)
        .unwrap_or_default()
        .to_string();
    trace.operation = operation.clone();
    contract.allows_operation(&operation)?;
    let declared =
        covered_header_params(&compiled.header_params(&matched), &parts.headers, verified)?;
    validate_request(compiled, &matched, asked.target, parts, asked.body)?;
    let bound = compiled.bound_subject(&matched, asked.target.query.as_deref())?;
    if let Err(p) = bind_subject(
        bound.as_deref(),
        "the request",
        asked.ctx.subject.as_ref(),
        &operation,
    ) {
        trace.asked_subject = bound.and_then(|b| b.parse().ok());
        return Err(p);
    }
    Ok((matched, declared))
}

/// The response, signed and bound to the request, once its record (with the fields disclosed)
/// and its access record are durable.
async fn respond(
    node: &Node,
    admitted: &Admitted<'_>,
    (entry, contract): (&ServiceEntry, &Contract),
    (status, out_body, content_type, disclosed): (StatusCode, Bytes, &'static str, Vec<String>),
) -> Result<Response<Body>, Problem> {
    let resp = answer(node, admitted, status, content_type, out_body.clone())?;
    log_response(
        node,
        admitted,
        (entry, contract),
        &resp,
        out_body,
        disclosed,
    )
    .await?;
    Ok(resp)
}

/// An exchange every check has let through: what its log records say about it.
struct Admitted<'a> {
    message_id: &'a str,
    ctx: &'a Context,
    service: &'a str,
    operation: &'a str,
    peer: &'a NodeId,
    parts: &'a http::request::Parts,
    log_bodies: bool,
}

impl Admitted<'_> {
    fn about(&self) -> About<'_> {
        About {
            message_id: self.message_id,
            client: None,
            context: Some(self.ctx),
            service: self.service,
            operation: self.operation,
            peer: Some(self.peer.to_string()),
        }
    }
}

/// The request against the operation's schema: path, query, headers and body.
fn validate_request(
    compiled: &CompiledService,
    matched: &Matched,
    target: &Target,
    parts: &http::request::Parts,
    body: &Bytes,
) -> Result<(), Problem> {
    let headers: Vec<(String, String)> = parts
        .headers
        .iter()
        .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
        .collect();
    let content_type = parts
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    compiled.validate_request(
        matched,
        target.query.as_deref(),
        &headers,
        body,
        content_type,
    )
}

/// Logs the request as received and forwards it; the response record is awaited later, and
/// the writer commits in order, so both are durable before the response leaves. A safe method
/// (GET, HEAD) changes nothing at the backend, so its record is committed while the backend
/// answers; any other is durable before the backend sees it.
async fn forward_logged(
    node: &Node,
    x: &Admitted<'_>,
    usage: Vec<Usage>,
    target: &Target,
    backend: &str,
    declared: &[&str],
    body: Bytes,
) -> Result<(StatusCode, Option<String>, Bytes), Problem> {
    let mut rec = context_record(RecordKind::RequestIn, 0, x.about());
    fill_signature(&mut rec, &x.parts.headers, true);
    set_target(&mut rec, &x.parts.method, &x.parts.uri);
    rec.body = x.log_bodies.then(|| body.to_vec());
    let logged = node.log.append_counted(rec, usage);
    let forwarded = forward(
        node,
        x.parts,
        target,
        x.ctx,
        x.message_id,
        backend,
        declared,
        body,
    );
    if x.parts.method.is_safe() {
        let (logged, forwarded) = tokio::join!(logged, forwarded);
        logged?;
        forwarded
    } else {
        logged.await?;
        forwarded.await
    }
}

/// A success validated against the operation's response schema and minimised to what the
/// contract discloses (with the fields disclosed); any other status as the backend's error.
async fn disclose(
    node: &Node,
    (compiled, matched): (&CompiledService, &Matched),
    x: &Admitted<'_>,
    (entry, contract): (&ServiceEntry, &Contract),
    (status, bcontent_type, bbody): (StatusCode, Option<String>, Bytes),
) -> Result<(StatusCode, Bytes, &'static str, Vec<String>), Problem> {
    if !status.is_success() {
        return Ok((
            status,
            backend_error_body(status, &bbody),
            "application/problem+json",
            Vec::new(),
        ));
    }
    let mut value = compiled
        .validate_response(matched, status.as_u16(), bcontent_type.as_deref(), &bbody)
        .map_err(|p| p.caused_by(Culprit::ProviderBackend))?;
    let allowed =
        crate::relay::exchange::disclosure::allowed(node, x.ctx, entry, contract, x.operation)
            .await?;
    let disclosed = enlace_description::validate::minimise(&mut value, &allowed);
    let bytes = serde_json::to_vec(&value)
        .map_err(|e| Problem::new(ProblemKind::Internal, e.to_string()))?;
    Ok((status, Bytes::from(bytes), "application/json", disclosed))
}

/// The response, signed and bound to the request.
fn answer(
    node: &Node,
    x: &Admitted<'_>,
    status: StatusCode,
    content_type: &'static str,
    out_body: Bytes,
) -> Result<Response<Body>, Problem> {
    let mut headers = HeaderMap::new();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static(content_type),
    );
    if let Ok(v) = HeaderValue::from_str(x.message_id) {
        headers.insert(context::MESSAGE_ID, v);
    }
    sign(node, x.parts, status, headers, out_body)
}

/// Logs the signed response with the fields disclosed, and queues its access record in the
/// same transaction.
async fn log_response(
    node: &Node,
    x: &Admitted<'_>,
    (entry, contract): (&ServiceEntry, &Contract),
    resp: &Response<Body>,
    out_body: Bytes,
    disclosed: Vec<String>,
) -> Result<(), Problem> {
    let status = resp.status();
    let mut rec = context_record(RecordKind::ResponseOut, status.as_u16(), x.about());
    fill_signature(&mut rec, resp.headers(), false);
    set_target(&mut rec, &x.parts.method, &x.parts.uri);
    rec.request_digest = x
        .parts
        .headers
        .get(signature::CONTENT_DIGEST)
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    rec.headers
        .push(("enlace-disclosed".into(), disclosed.join(",")));
    rec.body = x.log_bodies.then(|| out_body.to_vec());
    let access = access_record::record(
        node,
        access_record::Exchange {
            message_id: x.message_id,
            context: x.ctx,
            service: entry,
            contract,
            operation: x.operation,
            fields: disclosed,
            refused: None,
            status: status.as_u16(),
            request_digest: rec.request_digest.clone(),
            response_digest: header(resp.headers(), signature::CONTENT_DIGEST),
        },
    );
    node.log
        .append_with(rec, access_record::queued(access))
        .await?;
    Ok(())
}

/// Forwards to the provider backend: the method, the path after the service prefix, the
/// query, the content headers and the Enlace context. Redirects are not followed.
#[allow(clippy::too_many_arguments)]
async fn forward(
    node: &Node,
    parts: &http::request::Parts,
    target: &Target,
    ctx: &Context,
    message_id: &str,
    backend: &str,
    declared: &[&str],
    body: Bytes,
) -> Result<(StatusCode, Option<String>, Bytes), Problem> {
    let url = match &target.query {
        Some(q) => format!("{backend}{}?{q}", target.rest),
        None => format!("{backend}{}", target.rest),
    };
    let mut req = Request::new(Full::new(body));
    *req.method_mut() = parts.method.clone();
    *req.uri_mut() = url.parse().map_err(|_| {
        Problem::new(
            ProblemKind::Internal,
            format!("backend URL {url} is invalid"),
        )
    })?;
    let h = req.headers_mut();
    for name in [http::header::CONTENT_TYPE, http::header::ACCEPT] {
        if let Some(v) = parts.headers.get(&name) {
            h.insert(name, v.clone());
        }
    }
    for name in declared {
        if let (Some(v), Ok(n)) = (
            parts.headers.get(*name),
            http::HeaderName::from_bytes(name.as_bytes()),
        ) {
            h.insert(n, v.clone());
        }
    }
    ctx.write(h)?;
    h.remove(context::AUTHORIZATION);
    if let Ok(v) = HeaderValue::from_str(message_id) {
        h.insert(context::MESSAGE_ID, v);
    }
    let limits = &node.settings.raw.limits;
    let timeout = Duration::from_millis(limits.upstream_timeout_ms);
    let backend_problem =
        |kind, detail: String| Problem::new(kind, detail).caused_by(Culprit::ProviderBackend);
    let resp = match tokio::time::timeout(timeout, node.backend.request(req)).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            return Err(backend_problem(
                ProblemKind::PeerUnreachable,
                format!("provider backend: {e}"),
            ));
        }
        Err(_) => {
            return Err(backend_problem(
                ProblemKind::PeerTimeout,
                format!(
                    "provider backend did not answer within {} ms",
                    timeout.as_millis()
                ),
            ));
        }
    };
    let status = resp.status();
    if status.is_redirection() {
        return Err(backend_problem(
            ProblemKind::ResponseSchemaViolation,
            format!("provider backend answered a redirect ({status}); redirects are not followed"),
        ));
    }
    let ct = resp
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    let body = read_body(resp.into_body(), limits.max_body_bytes)
        .await
        .map_err(|p| p.caused_by(Culprit::ProviderBackend))?;
    Ok((status, ct, body))
}

/// An error from the backend passes on as a bare problem (its type and title, and the status):
/// a `detail` or anything else it carries may hold personal data the contract does not cover,
/// so it never leaves the provider node.
fn backend_error_body(status: StatusCode, body: &[u8]) -> Bytes {
    let parsed: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let mut out = serde_json::Map::new();
    if let Some(serde_json::Value::Object(m)) = parsed {
        for key in ["type", "title"] {
            // A backend's problem type is its own; it may not pass for one of Enlace's.
            if let Some(serde_json::Value::String(s)) = m.get(key)
                && !(key == "type" && s.starts_with(enlace_core::problem::PROBLEM_TYPE_PREFIX))
            {
                out.insert(
                    key.into(),
                    serde_json::Value::String(s.chars().take(200).collect()),
                );
            }
        }
    }
    out.insert("status".into(), serde_json::Value::from(status.as_u16()));
    out.entry("title").or_insert_with(|| {
        serde_json::Value::String(status.canonical_reason().unwrap_or("error").into())
    });
    out.insert(
        "culprit".into(),
        serde_json::Value::String(Culprit::ProviderBackend.as_str().into()),
    );
    Bytes::from(serde_json::Value::Object(out).to_string())
}

/// Adds `Content-Digest` and the response signature bound to the request.
fn sign(
    node: &Node,
    parts: &http::request::Parts,
    status: StatusCode,
    mut headers: HeaderMap,
    body: Bytes,
) -> Result<Response<Body>, Problem> {
    let internal =
        |e: http::header::InvalidHeaderValue| Problem::new(ProblemKind::Internal, e.to_string());
    headers.insert(
        signature::CONTENT_DIGEST,
        HeaderValue::from_str(&signature::content_digest(&body)).map_err(internal)?,
    );
    let (input, sig) = signature::sign_response(
        &node.signing_key.current(),
        &node.settings.id.to_string(),
        node.unix_now(),
        signature::Message::response(status, &headers),
        signature::Message::request(&parts.method, &parts.uri, &parts.headers),
    )?;
    headers.insert(
        signature::SIGNATURE_INPUT,
        HeaderValue::from_str(&input).map_err(internal)?,
    );
    headers.insert(
        signature::SIGNATURE,
        HeaderValue::from_str(&sig).map_err(internal)?,
    );
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = status;
    *resp.headers_mut() = headers;
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use enlace_httpsig::{Component, VerifiedSignature};

    fn verified(covered: &[&'static str]) -> VerifiedSignature {
        VerifiedSignature {
            label: "sig1".into(),
            keyid: "CL-DEV/GOV/60803000-K/node/a".into(),
            created: 0,
            components: covered.iter().map(|c| Component::new(c)).collect(),
            nonce: None,
        }
    }

    #[test]
    fn a_header_parameter_travels_only_if_the_signature_covers_it() {
        let mut headers = HeaderMap::new();
        headers.insert("x-folio", HeaderValue::from_static("F-1"));
        headers.insert("authorization", HeaderValue::from_static("Bearer x"));
        let declared = ["x-folio", "x-absent", "authorization"];
        let ok = covered_header_params(&declared, &headers, &verified(&["@method", "x-folio"]));
        assert_eq!(
            ok.unwrap(),
            ["x-folio"],
            "absent and reserved headers never travel"
        );
        let refused =
            covered_header_params(&declared, &headers, &verified(&["@method"])).unwrap_err();
        assert_eq!(refused.kind, ProblemKind::SignatureInvalid);
        assert!(refused.detail.contains("x-folio"), "{}", refused.detail);
    }
}

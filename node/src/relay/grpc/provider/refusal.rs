//! A refused call: logged like a success, with its access record, and answered with a signed
//! status.

use super::*;

/// Logs a refusal (a cancellation before the answer included) like a success, with its access
/// record, and answers with a signed status (signed when the request carried a message id to
/// bind it to).
pub(super) async fn refuse(
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
    crate::relay::grpc::keep_section(&mut rec, &trailers, "");
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
pub(super) fn refusal_trailers(
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
pub(super) fn keep_refused_request(rec: &mut enlace_msglog::Record, request: &HeaderMap) {
    keep_request_signature(rec, request);
    let mut names = vec![http::header::CONTENT_TYPE.as_str()];
    names.extend(
        metadata::custom_names(request)
            .into_iter()
            .take(metadata::MAX_CUSTOM),
    );
    for name in names {
        let kept = format!("{}{name}", crate::relay::grpc::REFUSED_REQUEST_PREFIX);
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
pub(super) fn refusal_record(
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

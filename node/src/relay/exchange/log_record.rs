//! The message log record of an exchange: who and what it is about, its target, and the
//! signatures it keeps.

use enlace_core::id::SubsystemId;
use http::{HeaderMap, Method, Uri};

use super::context::Context;
use enlace_httpsig as signature;
use enlace_msglog::{Record, RecordKind};

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
        client: about
            .client
            .map(|c| c.to_string())
            .or_else(|| ctx.map(|c| c.client.to_string()))
            .unwrap_or_default(),
        service: about.service.to_string(),
        operation: about.operation.to_string(),
        contract: ctx.and_then(|c| c.contract.as_ref().map(|x| x.to_string())),
        subject: ctx.and_then(|c| c.subject.as_ref().map(|x| x.to_string())),
        user: ctx.and_then(|c| c.user.clone()),
        procedure: ctx.and_then(|c| c.procedure.clone()),
        step: ctx.and_then(|c| c.step.clone()),
        peer: about.peer,
        status,
        ..Record::new(about.message_id, kind, time::OffsetDateTime::now_utc())
    }
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

/// Prefix of the fields of a refused request, as the peer node sent them, in the provider
/// node's refusal record (REST and gRPC).
pub(crate) const REFUSED_REQUEST_PREFIX: &str = "request-";

/// A refusal record holds the response's signature; the request's Enlace headers, signature,
/// and every other field its `Signature-Input` says it covers (a declared header parameter,
/// say; at most 32) go beside it (prefixed `request-`), so the log shows what the peer sent
/// even when it did not parse or verify, and a bundle can tell whether its signature held.
pub(crate) fn keep_request_signature(rec: &mut enlace_msglog::Record, request: &HeaderMap) {
    let covered = request
        .get(signature::SIGNATURE_INPUT)
        .and_then(|v| v.to_str().ok())
        .map(|input| signature::covered_field_names(input, 32))
        .unwrap_or_default();
    for (name, value) in request {
        let n = name.as_str();
        if (n.starts_with("enlace-")
            || n == signature::SIGNATURE_INPUT
            || n == signature::SIGNATURE
            || n == signature::CONTENT_DIGEST
            || covered.iter().any(|c| c == n))
            && let Ok(v) = value.to_str()
        {
            rec.headers.push((
                format!("{REFUSED_REQUEST_PREFIX}{n}"),
                v.chars().take(4096).collect(),
            ));
        }
    }
}

//! The access log: nodes ship signed access records and anchor their message-log heads; anyone
//! reads tree heads and consistency proofs; an admin or the person reads a record's inclusion
//! proof and evidence.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use enlace_core::id::NodeId;
use enlace_core::problem::{Problem, ProblemKind};
use serde::Deserialize;

use super::{
    ApiResult, App, access_token, actor, bearer, content_type, json_body, json_response, no_route,
    read_body, required, split_id,
};
use crate::access_log::AccessLog;
use crate::federation::Actor;

// ---- the access log ----

/// Largest body of `POST /v1/access-records` (1000 records of a few KiB).
const MAX_ACCESS_BODY: usize = 8 * 1024 * 1024;

/// A provider node ships signed access records; each record's signature is the authentication.
pub(super) async fn ingest_access_records(
    State(log): State<Arc<AccessLog>>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    if content_type(&headers) != "application/json" {
        return Err(Problem::new(
            ProblemKind::UnsupportedMediaType,
            "send Content-Type: application/json",
        )
        .into());
    }
    let bytes = read_body(body, MAX_ACCESS_BODY).await?;
    let records: Vec<enlace_core::access::SignedAccessRecord> = serde_json::from_slice(&bytes)
        .map_err(|e| Problem::new(ProblemKind::InvalidRequest, format!("body: {e}")))?;
    json_response(StatusCode::OK, log.ingest(records).await?)
}

pub(super) async fn tree_head(State(log): State<Arc<AccessLog>>) -> ApiResult {
    json_response(StatusCode::OK, log.current_tree_head().await?)
}

#[derive(Deserialize)]
pub(super) struct SizeQuery {
    size: Option<u64>,
}

pub(super) async fn tree_head_at(
    State(log): State<Arc<AccessLog>>,
    Query(q): Query<SizeQuery>,
) -> ApiResult {
    let size = required("size", q.size)?;
    json_response(StatusCode::OK, log.tree_head_at(size).await?)
}

#[derive(Deserialize)]
pub(super) struct InclusionQuery {
    message_id: Option<String>,
    /// The emitting node, when several nodes logged the message id.
    node: Option<String>,
    size: Option<u64>,
}

/// Who reads a record: an admin (bearer token) or the person (OpenID Connect ID token).
enum Reader {
    Admin(Actor),
    Person(enlace_core::id::SubjectId),
}

/// The reader, once the query is known to be well-formed. Not an extractor on purpose: checking
/// a person's ID token may cost the issuer's keys or, with ClaveÚnica, a call to its userinfo
/// endpoint, which a malformed request must not be able to cause.
async fn reader(app: &App, headers: &HeaderMap) -> Result<Reader, Problem> {
    match actor(&app.registry, headers) {
        Ok(who) => Ok(Reader::Admin(who)),
        // An ID token: the person reads the records about them, and only those.
        Err(_)
            if bearer(headers).is_some_and(|t| t.contains('.')) && app.citizens.oidc().is_ok() =>
        {
            let person = app
                .citizens
                .person(bearer(headers), access_token(headers))
                .await?;
            Ok(Reader::Person(person))
        }
        Err(p) => Err(p),
    }
}

fn node_param(node: Option<String>) -> Result<Option<String>, Problem> {
    match node {
        Some(n) => Ok(Some(n.parse::<NodeId>()?.to_string())),
        None => Ok(None),
    }
}

pub(super) async fn inclusion_proof(
    State(app): State<App>,
    Query(q): Query<InclusionQuery>,
    headers: HeaderMap,
) -> ApiResult {
    let message_id = required("message_id", q.message_id)?;
    let node = node_param(q.node)?;
    let (log, citizens) = (&app.access_log, &app.citizens);
    let proof = match reader(&app, &headers).await? {
        Reader::Person(person) => {
            citizens
                .record_proof(&person, message_id, node, q.size)
                .await?
        }
        Reader::Admin(who) => {
            log.access_record_proof(&who, message_id, node, q.size)
                .await?
        }
    };
    json_response(StatusCode::OK, proof)
}

/// A record's evidence for offline checking (see [`crate::access_log::evidence`]), for whoever may read it.
pub(super) async fn access_evidence(
    State(app): State<App>,
    Query(q): Query<InclusionQuery>,
    headers: HeaderMap,
) -> ApiResult {
    let message_id = required("message_id", q.message_id)?;
    let node = node_param(q.node)?;
    let (log, citizens) = (&app.access_log, &app.citizens);
    let found = match reader(&app, &headers).await? {
        Reader::Person(person) => {
            citizens
                .record(&person, &message_id, node.as_deref())
                .await?
        }
        Reader::Admin(who) => {
            log.readable_record(&who, &message_id, node.as_deref())
                .await?
        }
    };
    json_response(StatusCode::OK, log.access_evidence(found).await?)
}

pub(super) async fn consistency_evidence(
    State(log): State<Arc<AccessLog>>,
    Query(q): Query<ConsistencyQuery>,
) -> ApiResult {
    let (from, to) = (required("from", q.from)?, required("to", q.to)?);
    json_response(StatusCode::OK, log.consistency_evidence(from, to).await?)
}

#[derive(Deserialize)]
pub(super) struct ConsistencyQuery {
    from: Option<u64>,
    to: Option<u64>,
}

pub(super) async fn consistency_proof(
    State(log): State<Arc<AccessLog>>,
    Query(q): Query<ConsistencyQuery>,
) -> ApiResult {
    let (from, to) = (required("from", q.from)?, required("to", q.to)?);
    json_response(StatusCode::OK, log.consistency(from, to).await?)
}

// ---- anchored message-log heads ----

/// A node anchors a signed head of its message log; the signature is the authentication.
pub(super) async fn anchor_log_head(
    State(log): State<Arc<AccessLog>>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    let head: crate::model::LogHeadRecord = json_body(&headers, body).await?;
    log.anchor_log_head(head).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
pub(super) struct SeqQuery {
    seq: Option<u64>,
}

/// `NODE`: the node's anchored heads; `NODE/proof?seq=N`: one head's inclusion in the access
/// log's tree, against the latest signed tree head.
pub(super) async fn log_heads(
    State(log): State<Arc<AccessLog>>,
    Path(rest): Path<String>,
    Query(q): Query<SeqQuery>,
) -> ApiResult {
    let (id, tail) = split_id(&rest, 5)?;
    let node: NodeId = id.parse()?;
    match tail.as_slice() {
        [] => json_response(StatusCode::OK, log.log_heads(&node)?),
        ["proof"] => {
            let seq = required("seq", q.seq)?;
            json_response(StatusCode::OK, log.log_head_evidence(&node, seq).await?)
        }
        _ => Err(no_route(&rest)),
    }
}

//! The access log: nodes ship signed access records; anyone reads tree heads and consistency
//! proofs; an admin or the person reads a record's inclusion proof and evidence.

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use enlace_core::id::NodeId;
use enlace_core::problem::{Problem, ProblemKind};
use serde::Deserialize;

use super::{
    ApiResult, App, access_token, actor, bearer, content_type, json_response, read_body, required,
};
use crate::federation::{Actor, Registry};

// ---- the access log ----

/// Largest body of `POST /v1/access-records` (1000 records of a few KiB).
const MAX_ACCESS_BODY: usize = 8 * 1024 * 1024;

/// A provider node ships signed access records; each record's signature is the authentication.
pub(super) async fn ingest_access_records(
    State(app): State<App>,
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
    json_response(StatusCode::OK, app.ingest_access_records(records).await?)
}

pub(super) async fn tree_head(State(app): State<App>) -> ApiResult {
    json_response(StatusCode::OK, app.current_tree_head().await?)
}

#[derive(Deserialize)]
pub(super) struct SizeQuery {
    size: Option<u64>,
}

pub(super) async fn tree_head_at(State(app): State<App>, Query(q): Query<SizeQuery>) -> ApiResult {
    let size = required("size", q.size)?;
    json_response(StatusCode::OK, app.tree_head_at(size).await?)
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

async fn reader(app: &Registry, headers: &HeaderMap) -> Result<Reader, Problem> {
    match actor(app, headers) {
        Ok(who) => Ok(Reader::Admin(who)),
        // An ID token: the person reads the records about them, and only those.
        Err(_) if bearer(headers).is_some_and(|t| t.contains('.')) && app.oidc().is_ok() => Ok(
            Reader::Person(app.citizen(bearer(headers), access_token(headers)).await?),
        ),
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
    let proof = match reader(&app, &headers).await? {
        Reader::Person(person) => {
            app.citizen_record_proof(&person, message_id, node, q.size)
                .await?
        }
        Reader::Admin(who) => {
            app.access_record_proof(&who, message_id, node, q.size)
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
    let found = match reader(&app, &headers).await? {
        Reader::Person(person) => {
            app.citizen_record(&person, &message_id, node.as_deref())
                .await?
        }
        Reader::Admin(who) => {
            app.readable_record(&who, &message_id, node.as_deref())
                .await?
        }
    };
    json_response(StatusCode::OK, app.access_evidence(found).await?)
}

pub(super) async fn consistency_evidence(
    State(app): State<App>,
    Query(q): Query<ConsistencyQuery>,
) -> ApiResult {
    let (from, to) = (required("from", q.from)?, required("to", q.to)?);
    json_response(StatusCode::OK, app.consistency_evidence(from, to).await?)
}

#[derive(Deserialize)]
pub(super) struct ConsistencyQuery {
    from: Option<u64>,
    to: Option<u64>,
}

pub(super) async fn consistency_proof(
    State(app): State<App>,
    Query(q): Query<ConsistencyQuery>,
) -> ApiResult {
    let (from, to) = (required("from", q.from)?, required("to", q.to)?);
    json_response(StatusCode::OK, app.access_log_consistency(from, to).await?)
}

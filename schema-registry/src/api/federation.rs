//! The federation: members, subsystems, nodes, services, concepts and the once-only check,
//! contracts and the audit trail.

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use enlace_core::contract::{ContractAction, ContractTerms};
use enlace_core::id::{
    ConceptId, ContractId, MemberId, NodeId, ServiceId, ServiceVersion, SubsystemId,
};
use enlace_core::problem::{Problem, ProblemKind};
use enlace_description::{Description, MAX_DESCRIPTION_BYTES};
use serde::Deserialize;
use serde_json::{Value, json};

use std::sync::Arc;

use super::{
    ApiError, ApiResult, bearer, content_type, json_body, json_response, no_route, read_body,
    split_id,
};
use crate::federation::{Actor, Registry};
use crate::once_only;

// ---- members ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NewMember {
    id: String,
    name: String,
}

pub(super) async fn create_member(
    State(app): State<Arc<Registry>>,
    who: Actor,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    let req: NewMember = json_body(&headers, body).await?;
    let id: MemberId = req.id.parse()?;
    let rec = app.create_member(&who, id, req.name).await?;
    json_response(StatusCode::CREATED, rec)
}

pub(super) async fn list_members(State(app): State<Arc<Registry>>) -> ApiResult {
    json_response(
        StatusCode::OK,
        app.list::<crate::model::MemberRecord>(crate::model::kind::MEMBER)?,
    )
}

pub(super) async fn get_member(
    State(app): State<Arc<Registry>>,
    Path(rest): Path<String>,
    who: Result<Actor, ApiError>,
) -> ApiResult {
    let (id, tail) = split_id(&rest, 3)?;
    match tail.as_slice() {
        [] => json_response(StatusCode::OK, app.member(&id.parse()?)?),
        ["tokens"] => {
            let who = who?;
            json_response(StatusCode::OK, app.member_tokens(&who, &id.parse()?)?)
        }
        _ => Err(no_route(&rest)),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NewToken {
    label: String,
}

pub(super) async fn member_action(
    State(app): State<Arc<Registry>>,
    Path(rest): Path<String>,
    who: Result<Actor, ApiError>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    let (id, tail) = split_id(&rest, 3)?;
    let member: MemberId = id.parse()?;
    let who = who?;
    match tail.as_slice() {
        ["tokens"] => {
            let req: NewToken = json_body(&headers, body).await?;
            let token = app.issue_member_token(&who, &member, req.label).await?;
            json_response(
                StatusCode::CREATED,
                json!({ "member": member, "token": token }),
            )
        }
        ["tokens", "revoke"] => {
            let req: NewToken = json_body(&headers, body).await?;
            let revoked = app.revoke_member_tokens(&who, &member, &req.label).await?;
            json_response(
                StatusCode::OK,
                json!({ "member": member, "revoked": revoked }),
            )
        }
        _ => Err(no_route(&rest)),
    }
}

// ---- subsystems ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NewSubsystem {
    id: String,
}

pub(super) async fn register_subsystem(
    State(app): State<Arc<Registry>>,
    who: Actor,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    let req: NewSubsystem = json_body(&headers, body).await?;
    let rec = app.register_subsystem(&who, req.id.parse()?).await?;
    json_response(StatusCode::CREATED, rec)
}

pub(super) async fn list_subsystems(State(app): State<Arc<Registry>>) -> ApiResult {
    json_response(
        StatusCode::OK,
        app.list::<crate::model::SubsystemRecord>(crate::model::kind::SUBSYSTEM)?,
    )
}

pub(super) async fn subsystem_action(
    State(app): State<Arc<Registry>>,
    Path(rest): Path<String>,
    who: Result<Actor, ApiError>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    let (id, tail) = split_id(&rest, 4)?;
    let id: SubsystemId = id.parse()?;
    let who = who?;
    let rec = match tail.as_slice() {
        ["approve"] => app.approve_subsystem(&who, &id).await?,
        ["revoke"] => {
            let r: Reason = json_body(&headers, body).await?;
            app.revoke_subsystem(&who, &id, r.reason).await?
        }
        _ => return Err(no_route(&rest)),
    };
    json_response(StatusCode::OK, rec)
}

// ---- nodes ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NewNode {
    id: String,
    address: String,
    tls_csr: String,
    signing_csr: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Renewal {
    tls_csr: String,
    signing_csr: String,
    /// A reason to revoke the certificates this renewal replaces at once (a key thought
    /// compromised); without it they stay valid until they expire.
    #[serde(default)]
    revoke_previous: Option<String>,
    /// A node renewing itself, instead of an admin token: signed by its current signing key.
    #[serde(default)]
    proof: Option<RenewalProof>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RenewalProof {
    /// RFC 3339, within 5 minutes of the registry's clock and after the last renewal's.
    at: String,
    /// Ed25519 over `enlace-node-renew-v1\n{node}\n{at}\n{sha256(tls_csr)}\n{sha256(signing_csr)}`.
    signature: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Reason {
    reason: String,
}

pub(super) async fn register_node(
    State(app): State<Arc<Registry>>,
    who: Actor,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    let req: NewNode = json_body(&headers, body).await?;
    let rec = app
        .register_node(
            &who,
            req.id.parse()?,
            req.address,
            req.tls_csr,
            req.signing_csr,
        )
        .await?;
    json_response(StatusCode::CREATED, rec)
}

pub(super) async fn list_nodes(State(app): State<Arc<Registry>>) -> ApiResult {
    let nodes: Vec<crate::model::NodeRecord> = app.list(crate::model::kind::NODE)?;
    json_response(StatusCode::OK, nodes)
}

pub(super) async fn get_node(
    State(app): State<Arc<Registry>>,
    Path(rest): Path<String>,
) -> ApiResult {
    let (id, tail) = split_id(&rest, 5)?;
    if !tail.is_empty() {
        return Err(no_route(&rest));
    }
    json_response(StatusCode::OK, app.node(&id.parse()?)?)
}

pub(super) async fn node_action(
    State(app): State<Arc<Registry>>,
    Path(rest): Path<String>,
    who: Result<Actor, ApiError>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    let (id, tail) = split_id(&rest, 5)?;
    let id: NodeId = id.parse()?;
    if tail == ["renew"] && bearer(&headers).is_none() {
        // A node renewing itself: no token, a proof made with its current signing key.
        let r: Renewal = json_body(&headers, body).await?;
        let (Some(proof), None) = (r.proof, r.revoke_previous) else {
            return Err(Problem::new(
                ProblemKind::Unauthenticated,
                "a renewal needs an admin's Authorization: Bearer token, or a node's `proof` (and a node cannot revoke its previous certificates itself)",
            )
            .into());
        };
        let rec = app
            .renew_node_by_proof(&id, r.tls_csr, r.signing_csr, proof.at, proof.signature)
            .await?;
        return json_response(StatusCode::OK, rec);
    }
    let who = who?;
    let rec = match tail.as_slice() {
        ["approve"] => app.approve_node(&who, &id).await?,
        ["renew"] => {
            let r: Renewal = json_body(&headers, body).await?;
            if r.proof.is_some() {
                return Err(Problem::new(
                    ProblemKind::InvalidRequest,
                    "give an admin token or a node's proof, not both",
                )
                .into());
            }
            app.renew_node(&who, &id, r.tls_csr, r.signing_csr, r.revoke_previous)
                .await?
        }
        ["revoke"] => {
            let r: Reason = json_body(&headers, body).await?;
            app.revoke_node(&who, &id, r.reason).await?
        }
        _ => return Err(no_route(&rest)),
    };
    json_response(StatusCode::OK, rec)
}

// ---- services ----

pub(super) async fn list_services(State(app): State<Arc<Registry>>) -> ApiResult {
    json_response(StatusCode::OK, app.services()?)
}

/// `SERVICE`, `SERVICE/versions/V`, `SERVICE/versions/V/description`.
pub(super) async fn get_service(
    State(app): State<Arc<Registry>>,
    Path(rest): Path<String>,
) -> ApiResult {
    let (id, tail) = split_id(&rest, 5)?;
    let id: ServiceId = id.parse()?;
    match tail.as_slice() {
        [] => json_response(StatusCode::OK, app.service_versions(&id)?),
        ["versions", v] => json_response(StatusCode::OK, app.service(&id, v.parse()?)?),
        ["versions", v, "description"] => {
            let rec = app.service(&id, v.parse()?)?;
            description_response(&app, &rec.digest)
        }
        _ => Err(no_route(&rest)),
    }
}

fn description_response(app: &Registry, digest: &str) -> ApiResult {
    let bytes = app.blob(digest)?.ok_or_else(|| {
        Problem::new(
            ProblemKind::NotFound,
            format!("no description with digest {digest}"),
        )
    })?;
    let ct = if bytes.first() == Some(&b'{') {
        "application/json"
    } else {
        "application/x-protobuf"
    };
    Ok(([(header::CONTENT_TYPE, ct)], bytes).into_response())
}

pub(super) async fn get_description(
    State(app): State<Arc<Registry>>,
    Path(digest): Path<String>,
) -> ApiResult {
    if digest.len() != 64 || !digest.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ApiError(Problem::new(
            ProblemKind::InvalidRequest,
            "digest: must be 64 hex characters (SHA-256)",
        )));
    }
    description_response(&app, &digest.to_ascii_lowercase())
}

/// Media types accepted for a service description.
pub mod media {
    pub const OPENAPI_JSON: &str = "application/json";
    pub const OPENAPI_YAML: &str = "application/yaml";
    pub const DESCRIPTOR_SET: &str = "application/x-protobuf";
    pub const PROTO_SOURCES: &str = "application/vnd.enlace.proto-sources+json";
}

pub(super) async fn publish_service(
    State(app): State<Arc<Registry>>,
    Path(rest): Path<String>,
    who: Result<Actor, ApiError>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    let (id, tail) = split_id(&rest, 5)?;
    let ["versions", v] = tail.as_slice() else {
        return Err(no_route(&rest));
    };
    let id: ServiceId = id.parse()?;
    let version: ServiceVersion = v.parse()?;
    let who = who?;
    // Check who acts before reading megabytes from them.
    if who != Actor::MemberAdmin(id.member().clone()) {
        return Err(ApiError(Problem::new(
            ProblemKind::Forbidden,
            format!("only the admin of {} may publish its services", id.member()),
        )));
    }
    let ct = content_type(&headers);
    let bytes = read_body(body, MAX_DESCRIPTION_BYTES).await?;
    // Parsing megabytes of YAML or protobuf is CPU work: keep it off the async workers, so
    // that an upload does not stall `/healthz` and everyone else's requests.
    let description = tokio::task::spawn_blocking(move || parse_description(&ct, &bytes))
        .await
        .map_err(|e| Problem::new(ProblemKind::Internal, format!("parsing the upload: {e}")))??;
    let rec = app.publish_service(&who, id, version, description).await?;
    json_response(StatusCode::CREATED, rec)
}

fn parse_description(ct: &str, bytes: &[u8]) -> Result<Description, Problem> {
    match ct {
        media::OPENAPI_JSON | media::OPENAPI_YAML | "application/x-yaml" | "text/yaml" => {
            enlace_description::openapi::parse(bytes)
        }
        media::DESCRIPTOR_SET | "application/vnd.google.protobuf.filedescriptorset" => {
            enlace_description::protobuf::from_descriptor_set(bytes)
        }
        media::PROTO_SOURCES => {
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct Sources {
                files: std::collections::BTreeMap<String, String>,
            }
            let s: Sources = serde_json::from_slice(bytes)
                .map_err(|e| Problem::new(ProblemKind::InvalidRequest, format!("body: {e}")))?;
            let files: Vec<(String, String)> = s.files.into_iter().collect();
            enlace_description::protobuf::compile_sources(&files)
        }
        other => Err(Problem::new(
            ProblemKind::UnsupportedMediaType,
            format!(
                "Content-Type `{other}` is not a service description; use {}, {}, {} or {}",
                media::OPENAPI_JSON,
                media::OPENAPI_YAML,
                media::DESCRIPTOR_SET,
                media::PROTO_SOURCES
            ),
        )),
    }
}

// ---- concepts and the once-only check ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NewConcept {
    id: String,
    service: String,
    operation: String,
    field: String,
    #[serde(default)]
    aliases: Vec<String>,
}

pub(super) async fn claim_concept(
    State(app): State<Arc<Registry>>,
    who: Actor,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    let req: NewConcept = json_body(&headers, body).await?;
    let id: ConceptId = req.id.parse()?;
    let rec = app
        .claim_concept(
            &who,
            id,
            req.service.parse()?,
            req.operation,
            req.field,
            req.aliases,
        )
        .await?;
    json_response(StatusCode::CREATED, rec)
}

pub(super) async fn list_concepts(State(app): State<Arc<Registry>>) -> ApiResult {
    json_response(StatusCode::OK, app.concepts()?)
}

#[derive(Deserialize)]
pub(super) struct CheckQuery {
    consumer: Option<String>,
}

pub(super) async fn once_only_check(
    State(app): State<Arc<Registry>>,
    Query(q): Query<CheckQuery>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    let consumer: Option<SubsystemId> = q.consumer.as_deref().map(str::parse).transpose()?;
    let form: Value = json_body(&headers, body).await?;
    let report = once_only::check(&app, &form, consumer.as_ref())?;
    json_response(StatusCode::OK, report)
}

// ---- contracts ----

pub(super) async fn propose_contract(
    State(app): State<Arc<Registry>>,
    who: Actor,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    let terms: ContractTerms = json_body(&headers, body).await?;
    json_response(
        StatusCode::CREATED,
        app.propose_contract(&who, terms).await?,
    )
}

pub(super) async fn list_contracts(State(app): State<Arc<Registry>>, who: Actor) -> ApiResult {
    json_response(StatusCode::OK, app.contracts(&who)?)
}

pub(super) async fn get_contract(
    State(app): State<Arc<Registry>>,
    Path(id): Path<String>,
    who: Result<Actor, ApiError>,
) -> ApiResult {
    let id: ContractId = id.parse()?;
    let who = who?;
    json_response(StatusCode::OK, app.contract(&who, &id)?)
}

pub(super) async fn contract_action(
    State(app): State<Arc<Registry>>,
    Path(id): Path<String>,
    who: Result<Actor, ApiError>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    let id: ContractId = id.parse()?;
    let who = who?;
    let action: ContractAction = json_body(&headers, body).await?;
    json_response(
        StatusCode::OK,
        app.act_on_contract(&who, &id, action).await?,
    )
}

// ---- audit trail ----

#[derive(Deserialize)]
pub(super) struct AuditQuery {
    after: Option<u64>,
    limit: Option<u32>,
}

pub(super) async fn audit(
    State(app): State<Arc<Registry>>,
    Query(q): Query<AuditQuery>,
    who: Actor,
) -> ApiResult {
    let entries = app.audit_entries(&who, q.after.unwrap_or(0), q.limit.unwrap_or(100))?;
    json_response(StatusCode::OK, entries)
}

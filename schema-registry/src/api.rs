//! The registry's REST API (described in openapi/registry.json): routing, authentication,
//! bounded bodies, RFC 9457 problems, and an audit entry for every refused change.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use enlace_core::contract::{ContractAction, ContractTerms};
use enlace_core::id::{
    ConceptId, ContractId, MemberId, NodeId, ServiceId, ServiceVersion, SubsystemId,
};
use enlace_core::problem::{Problem, ProblemKind};
use enlace_description::{Description, MAX_DESCRIPTION_BYTES};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::once_only;
use crate::registry::{Actor, Registry};

/// Largest JSON body of an ordinary request.
const MAX_JSON_BODY: usize = 256 * 1024;
/// Longest a node may long-poll for the next configuration.
const MAX_WAIT: Duration = Duration::from_secs(60);

/// The registry's OpenAPI document.
pub const OPENAPI: &str = include_str!("../../openapi/registry.json");

type App = Arc<Registry>;

/// A refusal: rendered as `application/problem+json` and remembered for the audit trail.
#[derive(Debug)]
pub struct ApiError(pub Problem);

impl From<Problem> for ApiError {
    fn from(p: Problem) -> Self {
        ApiError(p)
    }
}
impl From<enlace_core::id::IdError> for ApiError {
    fn from(e: enlace_core::id::IdError) -> Self {
        ApiError(e.into())
    }
}

pub fn problem_response(p: &Problem) -> Response {
    let status = StatusCode::from_u16(p.kind.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = (status, p.to_json().to_string()).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    if let Ok(v) = HeaderValue::from_str(p.kind.culprit().as_str()) {
        resp.headers_mut().insert("enlace-error", v);
    }
    if let Some(secs) = p.kind.retry_after_secs() {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    resp.extensions_mut().insert(Refused(p.clone()));
    resp
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        problem_response(&self.0)
    }
}

#[derive(Clone)]
struct Refused(Problem);

type ApiResult = Result<Response, ApiError>;

fn json_response(status: StatusCode, v: impl serde::Serialize) -> ApiResult {
    let body =
        serde_json::to_vec(&v).map_err(|e| Problem::new(ProblemKind::Internal, e.to_string()))?;
    let mut resp = (status, body).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}

/// The bearer token, if exactly one `Authorization` header carries one (a repeated header is
/// no token at all: which one wins must never depend on the proxy in front).
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let mut all = headers.get_all(header::AUTHORIZATION).iter();
    let first = all.next()?;
    if all.next().is_some() {
        return None;
    }
    first.to_str().ok()?.strip_prefix("Bearer ")
}

/// The OAuth access token a person's page sends beside the ID token (ClaveÚnica mode).
fn access_token(headers: &HeaderMap) -> Option<&str> {
    headers.get(crate::oidc::ACCESS_TOKEN_HEADER)?.to_str().ok()
}

fn actor(app: &Registry, headers: &HeaderMap) -> Result<Actor, Problem> {
    if headers
        .get_all(header::AUTHORIZATION)
        .iter()
        .nth(1)
        .is_some()
    {
        return Err(Problem::repeated_authorization());
    }
    let token = bearer(headers).ok_or_else(|| {
        Problem::new(
            ProblemKind::Unauthenticated,
            "this needs an Authorization: Bearer token",
        )
    })?;
    app.authenticate(token)
}

/// Reads a body of at most `limit` bytes.
async fn read_body(body: Body, limit: usize) -> Result<Vec<u8>, Problem> {
    // A declared length over the limit is refused at once, not waited for.
    if hyper::body::Body::size_hint(&body).lower() > limit as u64 {
        return Err(Problem::body_too_large(limit));
    }
    match Limited::new(body, limit).collect().await {
        Ok(c) => Ok(c.to_bytes().to_vec()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
            Err(Problem::body_too_large(limit))
        }
        Err(e) => Err(Problem::new(
            ProblemKind::InvalidRequest,
            format!("could not read the body: {e}"),
        )),
    }
}

fn content_type(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default()
}

async fn json_body<T: DeserializeOwned>(headers: &HeaderMap, body: Body) -> Result<T, Problem> {
    if content_type(headers) != "application/json" {
        return Err(Problem::new(
            ProblemKind::UnsupportedMediaType,
            "send Content-Type: application/json",
        ));
    }
    let bytes = read_body(body, MAX_JSON_BODY).await?;
    serde_json::from_slice(&bytes)
        .map_err(|e| Problem::new(ProblemKind::InvalidRequest, format!("body: {e}")))
}

/// Splits `rest` (an id with slashes, then an action) after `n` segments.
fn split_id(rest: &str, n: usize) -> Result<(String, Vec<&str>), Problem> {
    let parts: Vec<&str> = rest.trim_start_matches('/').split('/').collect();
    if parts.len() < n {
        return Err(Problem::new(
            ProblemKind::NotFound,
            format!("no such resource: {rest}"),
        ));
    }
    Ok((parts[..n].join("/"), parts[n..].to_vec()))
}

fn no_route(rest: &str) -> ApiError {
    ApiError(Problem::new(
        ProblemKind::NotFound,
        format!("no such resource: {rest}"),
    ))
}

pub fn router(app: App) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/openapi.json", get(openapi))
        .route("/v1/ca", get(ca))
        .route("/v1/crl", get(crl))
        .route("/v1/config", get(config))
        .route("/v1/members", post(create_member).get(list_members))
        .route("/v1/members/{*rest}", get(get_member).post(member_action))
        .route(
            "/v1/subsystems",
            post(register_subsystem).get(list_subsystems),
        )
        .route("/v1/subsystems/{*rest}", post(subsystem_action))
        .route("/v1/nodes", post(register_node).get(list_nodes))
        .route("/v1/nodes/{*rest}", get(get_node).post(node_action))
        .route("/v1/services", get(list_services))
        .route(
            "/v1/services/{*rest}",
            get(get_service).put(publish_service),
        )
        .route("/v1/descriptions/{digest}", get(get_description))
        .route("/v1/concepts", post(claim_concept).get(list_concepts))
        .route("/v1/once-only-check", post(once_only_check))
        .route("/v1/contracts", post(propose_contract).get(list_contracts))
        .route("/v1/contracts/{id}", get(get_contract))
        .route("/v1/contracts/{id}/actions", post(contract_action))
        .route("/v1/audit", get(audit))
        .route("/v1/log-heads", post(anchor_log_head))
        .route("/v1/log-heads/{*node}", get(log_heads))
        .route("/v1/access-log/evidence", get(access_evidence))
        .route(
            "/v1/access-log/evidence/consistency",
            get(consistency_evidence),
        )
        .route(
            "/v1/authorisations",
            post(request_authorisation).get(list_authorisations),
        )
        .route("/v1/authorisations/{id}", get(get_authorisation))
        .route("/v1/citizen/authorisations", get(citizen_authorisations))
        .route(
            "/v1/citizen/authorisations/{id}/{action}",
            post(citizen_act),
        )
        .route("/v1/access-records", post(ingest_access_records))
        .route("/v1/access-log/tree-head", get(tree_head))
        .route("/v1/access-log/tree-heads", get(tree_head_at))
        .route("/v1/access-log/proof/inclusion", get(inclusion_proof))
        .route("/v1/access-log/proof/consistency", get(consistency_proof))
        .route(
            "/v1/access-log/hidings",
            post(create_hiding).get(list_hidings),
        )
        .route("/v1/citizen/access-records", get(citizen_records))
        .route("/.well-known/openid-configuration", get(oidc_discovery))
        .route("/oidc/jwks", get(oidc_jwks))
        .route("/oidc/dev/token", post(oidc_dev_token))
        .route("/oidc/userinfo", post(oidc_userinfo))
        .merge(crate::citizen_page::routes())
        .fallback(|req: Request| async move { no_route(req.uri().path()) })
        .layer(middleware::from_fn(framework_rejections_as_problems))
        .layer(middleware::from_fn_with_state(app.clone(), audit_refusals))
        .with_state(app)
}

/// Longest framework rejection text kept as a problem's `detail`.
const MAX_REJECTION_DETAIL: usize = 300;

/// The framework's own refusals (a query string or path that does not deserialise, a JSON body
/// of the wrong shape, a method the route does not take, a body over a limit) come out of axum
/// as `text/plain` or with no body at all. Each becomes an RFC 9457 problem like every other
/// refusal, keeping its status's meaning, and so is audited as one (this layer sits inside
/// [`audit_refusals`]).
async fn framework_rejections_as_problems(req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    let status = resp.status();
    if !(status.is_client_error() || status.is_server_error())
        || resp.extensions().get::<Refused>().is_some()
    {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let text = match Limited::new(body, 4096).collect().await {
        Ok(c) => String::from_utf8_lossy(&c.to_bytes()).trim().to_string(),
        Err(_) => String::new(),
    };
    let kind = match status {
        StatusCode::NOT_FOUND => ProblemKind::NotFound,
        StatusCode::METHOD_NOT_ALLOWED => ProblemKind::MethodNotAllowed,
        StatusCode::PAYLOAD_TOO_LARGE => ProblemKind::BodyTooLarge,
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ProblemKind::UnsupportedMediaType,
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => ProblemKind::HeadersTooLarge,
        StatusCode::UNAUTHORIZED => ProblemKind::Unauthenticated,
        StatusCode::FORBIDDEN => ProblemKind::Forbidden,
        s if s.is_server_error() => ProblemKind::Internal,
        // 400, and 422 (well-formed JSON of the wrong shape): the request is invalid.
        _ => ProblemKind::InvalidRequest,
    };
    let detail = if text.is_empty() {
        match kind {
            ProblemKind::MethodNotAllowed => {
                let allow = parts
                    .headers
                    .get(header::ALLOW)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                format!("this route does not take this method (it takes {allow})")
            }
            k => k.title().to_string(),
        }
    } else {
        text.chars().take(MAX_REJECTION_DETAIL).collect()
    };
    let mut out = problem_response(&Problem::new(kind, detail));
    if let Some(allow) = parts.headers.get(header::ALLOW) {
        out.headers_mut().insert(header::ALLOW, allow.clone());
    }
    out
}

/// Every refused change (any method but GET/HEAD) goes into the audit trail, like a success.
async fn audit_refusals(State(app): State<App>, req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path: String = req.uri().path().chars().take(512).collect();
    let who = match actor(&app, req.headers()) {
        Ok(a) => a.label(),
        // An OpenID Connect ID token: a person (who exactly is not known until it verifies).
        Err(_) if bearer(req.headers()).is_some_and(|t| t.contains('.')) => "citizen".to_string(),
        Err(_) if bearer(req.headers()).is_some() => "invalid-token".to_string(),
        Err(_) => "anonymous".to_string(),
    };
    let resp = next.run(req).await;
    if let Some(Refused(p)) = resp.extensions().get::<Refused>() {
        if method != Method::GET && method != Method::HEAD {
            let app = app.clone();
            let p = p.clone();
            let action = format!("{method} {path}");
            // The store is synchronous; keep it off the async workers.
            let _ =
                tokio::task::spawn_blocking(move || app.audit_refusal(&who, &action, &path, &p))
                    .await;
        } else {
            tracing::debug!(%path, problem = p.kind.slug(), "read refused");
        }
    }
    resp
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

async fn ca(State(app): State<App>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/x-pem-file")],
        app.ca_pem().to_string(),
    )
        .into_response()
}

async fn crl(State(app): State<App>) -> Response {
    let crl = app.current_config().crl.clone();
    ([(header::CONTENT_TYPE, "application/x-pem-file")], crl).into_response()
}

#[derive(Deserialize)]
struct ConfigQuery {
    /// Return only a configuration with a serial above this, waiting up to `wait` seconds.
    after: Option<u64>,
    wait: Option<u64>,
}

/// The signed configuration, with `ETag` = serial, `If-None-Match`, and long-polling.
async fn config(
    State(app): State<App>,
    Query(q): Query<ConfigQuery>,
    headers: HeaderMap,
) -> ApiResult {
    let current = match q.after {
        Some(after) => {
            let wait = Duration::from_secs(q.wait.unwrap_or(0)).min(MAX_WAIT);
            app.wait_for_config(after, wait).await
        }
        None => app.current_config(),
    };
    let etag = format!("\"{}\"", current.serial);
    let not_modified = q.after.is_some_and(|a| current.serial <= a)
        || headers
            .get(header::IF_NONE_MATCH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v == etag);
    let mut resp = if not_modified {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (StatusCode::OK, current.body.to_vec()).into_response()
    };
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    Ok(resp)
}

// ---- members ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewMember {
    id: String,
    name: String,
}

async fn create_member(State(app): State<App>, headers: HeaderMap, body: Body) -> ApiResult {
    let who = actor(&app, &headers)?;
    let req: NewMember = json_body(&headers, body).await?;
    let id: MemberId = req.id.parse()?;
    let rec = app.create_member(&who, id, req.name).await?;
    json_response(StatusCode::CREATED, rec)
}

async fn list_members(State(app): State<App>) -> ApiResult {
    json_response(
        StatusCode::OK,
        app.list::<crate::model::MemberRecord>(crate::model::kind::MEMBER)?,
    )
}

async fn get_member(
    State(app): State<App>,
    Path(rest): Path<String>,
    headers: HeaderMap,
) -> ApiResult {
    let (id, tail) = split_id(&rest, 3)?;
    match tail.as_slice() {
        [] => json_response(StatusCode::OK, app.member(&id.parse()?)?),
        ["tokens"] => {
            let who = actor(&app, &headers)?;
            json_response(StatusCode::OK, app.member_tokens(&who, &id.parse()?)?)
        }
        _ => Err(no_route(&rest)),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewToken {
    label: String,
}

async fn member_action(
    State(app): State<App>,
    Path(rest): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    let (id, tail) = split_id(&rest, 3)?;
    let member: MemberId = id.parse()?;
    let who = actor(&app, &headers)?;
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
struct NewSubsystem {
    id: String,
}

async fn register_subsystem(State(app): State<App>, headers: HeaderMap, body: Body) -> ApiResult {
    let who = actor(&app, &headers)?;
    let req: NewSubsystem = json_body(&headers, body).await?;
    let rec = app.register_subsystem(&who, req.id.parse()?).await?;
    json_response(StatusCode::CREATED, rec)
}

async fn list_subsystems(State(app): State<App>) -> ApiResult {
    json_response(
        StatusCode::OK,
        app.list::<crate::model::SubsystemRecord>(crate::model::kind::SUBSYSTEM)?,
    )
}

async fn subsystem_action(
    State(app): State<App>,
    Path(rest): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    let (id, tail) = split_id(&rest, 4)?;
    let id: SubsystemId = id.parse()?;
    let who = actor(&app, &headers)?;
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
struct NewNode {
    id: String,
    address: String,
    tls_csr: String,
    signing_csr: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Renewal {
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
struct RenewalProof {
    /// RFC 3339, within 5 minutes of the registry's clock and after the last renewal's.
    at: String,
    /// Ed25519 over `enlace-node-renew-v1\n{node}\n{at}\n{sha256(tls_csr)}\n{sha256(signing_csr)}`.
    signature: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Reason {
    reason: String,
}

async fn register_node(State(app): State<App>, headers: HeaderMap, body: Body) -> ApiResult {
    let who = actor(&app, &headers)?;
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

async fn list_nodes(State(app): State<App>) -> ApiResult {
    let nodes: Vec<crate::model::NodeRecord> = app.list(crate::model::kind::NODE)?;
    json_response(StatusCode::OK, nodes)
}

async fn get_node(State(app): State<App>, Path(rest): Path<String>) -> ApiResult {
    let (id, tail) = split_id(&rest, 5)?;
    if !tail.is_empty() {
        return Err(no_route(&rest));
    }
    json_response(StatusCode::OK, app.node(&id.parse()?)?)
}

async fn node_action(
    State(app): State<App>,
    Path(rest): Path<String>,
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
    let who = actor(&app, &headers)?;
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

async fn list_services(State(app): State<App>) -> ApiResult {
    json_response(StatusCode::OK, app.services()?)
}

/// `SERVICE`, `SERVICE/versions/V`, `SERVICE/versions/V/description`.
async fn get_service(State(app): State<App>, Path(rest): Path<String>) -> ApiResult {
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

async fn get_description(State(app): State<App>, Path(digest): Path<String>) -> ApiResult {
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

async fn publish_service(
    State(app): State<App>,
    Path(rest): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    let (id, tail) = split_id(&rest, 5)?;
    let ["versions", v] = tail.as_slice() else {
        return Err(no_route(&rest));
    };
    let id: ServiceId = id.parse()?;
    let version: ServiceVersion = v.parse()?;
    let who = actor(&app, &headers)?;
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
struct NewConcept {
    id: String,
    service: String,
    operation: String,
    field: String,
    #[serde(default)]
    aliases: Vec<String>,
}

async fn claim_concept(State(app): State<App>, headers: HeaderMap, body: Body) -> ApiResult {
    let who = actor(&app, &headers)?;
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

async fn list_concepts(State(app): State<App>) -> ApiResult {
    json_response(StatusCode::OK, app.concepts()?)
}

#[derive(Deserialize)]
struct CheckQuery {
    consumer: Option<String>,
}

async fn once_only_check(
    State(app): State<App>,
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

async fn propose_contract(State(app): State<App>, headers: HeaderMap, body: Body) -> ApiResult {
    let who = actor(&app, &headers)?;
    let terms: ContractTerms = json_body(&headers, body).await?;
    json_response(
        StatusCode::CREATED,
        app.propose_contract(&who, terms).await?,
    )
}

async fn list_contracts(State(app): State<App>, headers: HeaderMap) -> ApiResult {
    let who = actor(&app, &headers)?;
    json_response(StatusCode::OK, app.contracts(&who)?)
}

async fn get_contract(
    State(app): State<App>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult {
    let id: ContractId = id.parse()?;
    let who = actor(&app, &headers)?;
    json_response(StatusCode::OK, app.contract(&who, &id)?)
}

async fn contract_action(
    State(app): State<App>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    let id: ContractId = id.parse()?;
    let who = actor(&app, &headers)?;
    let action: ContractAction = json_body(&headers, body).await?;
    json_response(
        StatusCode::OK,
        app.act_on_contract(&who, &id, action).await?,
    )
}

// ---- audit trail ----

#[derive(Deserialize)]
struct AuditQuery {
    after: Option<u64>,
    limit: Option<u32>,
}

async fn audit(
    State(app): State<App>,
    Query(q): Query<AuditQuery>,
    headers: HeaderMap,
) -> ApiResult {
    let who = actor(&app, &headers)?;
    let entries = app.audit_entries(&who, q.after.unwrap_or(0), q.limit.unwrap_or(100))?;
    json_response(StatusCode::OK, entries)
}

// ---- anchored message-log heads ----

/// A node anchors a signed head of its message log; the signature is the authentication.
async fn anchor_log_head(State(app): State<App>, headers: HeaderMap, body: Body) -> ApiResult {
    let head: crate::model::LogHeadRecord = json_body(&headers, body).await?;
    app.anchor_log_head(head).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
struct SeqQuery {
    seq: Option<u64>,
}

/// `NODE`: the node's anchored heads; `NODE/proof?seq=N`: one head's inclusion in the access
/// log's tree, against the latest signed tree head.
async fn log_heads(
    State(app): State<App>,
    Path(rest): Path<String>,
    Query(q): Query<SeqQuery>,
) -> ApiResult {
    let (id, tail) = split_id(&rest, 5)?;
    let node: NodeId = id.parse()?;
    match tail.as_slice() {
        [] => json_response(StatusCode::OK, app.log_heads(&node)?),
        ["proof"] => {
            let seq = required("seq", q.seq)?;
            json_response(StatusCode::OK, app.log_head_evidence(&node, seq).await?)
        }
        _ => Err(no_route(&rest)),
    }
}

// ---- the access log ----

/// Largest body of `POST /v1/access-records` (1000 records of a few KiB).
const MAX_ACCESS_BODY: usize = 8 * 1024 * 1024;

/// A provider node ships signed access records; each record's signature is the authentication.
async fn ingest_access_records(
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

async fn tree_head(State(app): State<App>) -> ApiResult {
    json_response(StatusCode::OK, app.current_tree_head().await?)
}

#[derive(Deserialize)]
struct SizeQuery {
    size: Option<u64>,
}

fn required<T>(name: &str, v: Option<T>) -> Result<T, Problem> {
    v.ok_or_else(|| {
        Problem::new(
            ProblemKind::InvalidRequest,
            format!("the query parameter `{name}` is required"),
        )
    })
}

async fn tree_head_at(State(app): State<App>, Query(q): Query<SizeQuery>) -> ApiResult {
    let size = required("size", q.size)?;
    json_response(StatusCode::OK, app.tree_head_at(size).await?)
}

#[derive(Deserialize)]
struct InclusionQuery {
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

async fn inclusion_proof(
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

/// A record's evidence for offline checking (see [`crate::evidence`]), for whoever may read it.
async fn access_evidence(
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

async fn consistency_evidence(
    State(app): State<App>,
    Query(q): Query<ConsistencyQuery>,
) -> ApiResult {
    let (from, to) = (required("from", q.from)?, required("to", q.to)?);
    json_response(StatusCode::OK, app.consistency_evidence(from, to).await?)
}

// ---- authorisations (consents) ----

async fn request_authorisation(
    State(app): State<App>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    let who = actor(&app, &headers)?;
    let req: crate::authorisation::NewAuthorisation = json_body(&headers, body).await?;
    json_response(
        StatusCode::CREATED,
        app.request_authorisation(&who, req).await?,
    )
}

async fn list_authorisations(State(app): State<App>, headers: HeaderMap) -> ApiResult {
    let who = actor(&app, &headers)?;
    json_response(StatusCode::OK, app.authorisations_of_member(&who)?)
}

async fn get_authorisation(
    State(app): State<App>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult {
    let who = actor(&app, &headers)?;
    json_response(StatusCode::OK, app.authorisation_for(&who, &id)?)
}

async fn citizen_authorisations(State(app): State<App>, headers: HeaderMap) -> ApiResult {
    let person = app
        .citizen(bearer(&headers), access_token(&headers))
        .await?;
    json_response(StatusCode::OK, app.citizen_authorisations(&person)?)
}

async fn citizen_act(
    State(app): State<App>,
    Path((id, action)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult {
    let person = app
        .citizen(bearer(&headers), access_token(&headers))
        .await?;
    json_response(
        StatusCode::OK,
        app.citizen_act(&person, &id, &action).await?,
    )
}

/// The federation admin hides a person's records of one contract from the citizen view until a
/// date, for a stated legal reason (see [`crate::hiding`]).
async fn create_hiding(State(app): State<App>, headers: HeaderMap, body: Body) -> ApiResult {
    let who = actor(&app, &headers)?;
    let req: crate::hiding::NewHiding = json_body(&headers, body).await?;
    json_response(StatusCode::CREATED, app.create_hiding(&who, req).await?)
}

async fn list_hidings(State(app): State<App>, headers: HeaderMap) -> ApiResult {
    let who = actor(&app, &headers)?;
    json_response(StatusCode::OK, app.hidings(&who)?)
}

// ---- the citizen API and the development OpenID Connect issuer ----

async fn citizen_records(
    State(app): State<App>,
    Query(q): Query<crate::citizen::CitizenQuery>,
    headers: HeaderMap,
) -> ApiResult {
    let person = app
        .citizen(bearer(&headers), access_token(&headers))
        .await?;
    json_response(StatusCode::OK, app.citizen_records(&person, &q).await?)
}

/// The development issuer, or not-found when it is off.
fn dev_issuer(app: &Registry) -> Result<&crate::oidc::Oidc, Problem> {
    match app.oidc() {
        Ok(o) if o.dev.is_some() => Ok(o),
        _ => Err(Problem::new(
            ProblemKind::NotFound,
            "the development OpenID Connect issuer is off (oidc.dev_issuer)",
        )),
    }
}

async fn oidc_discovery(State(app): State<App>) -> ApiResult {
    json_response(StatusCode::OK, dev_issuer(&app)?.discovery())
}

async fn oidc_jwks(State(app): State<App>) -> ApiResult {
    json_response(StatusCode::OK, dev_issuer(&app)?.jwks())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DevLogin {
    sub: String,
}

/// DEVELOPMENT ONLY: an ID token for any subject asked for.
async fn oidc_dev_token(State(app): State<App>, headers: HeaderMap, body: Body) -> ApiResult {
    let oidc = dev_issuer(&app)?;
    let login: DevLogin = json_body(&headers, body).await?;
    let sub: enlace_core::id::SubjectId = login.sub.parse()?;
    let dev = oidc
        .dev
        .as_ref()
        .ok_or_else(|| Problem::new(ProblemKind::NotFound, "off"))?;
    let tokens = dev.tokens(&oidc.issuer, &oidc.audience, &sub);
    let mut body = json!({
        "id_token": tokens.id_token,
        "token_type": "Bearer",
        "expires_in": 600,
        "warning": "development issuer: anyone can sign in as anyone",
    });
    if let Some(access) = tokens.access_token {
        body["access_token"] = json!(access);
    }
    json_response(StatusCode::OK, body)
}

/// DEVELOPMENT ONLY: the userinfo endpoint of the development issuer in ClaveÚnica mode
/// (`POST` with the bearer access token, as ClaveÚnica's), answering with `RolUnico`.
async fn oidc_userinfo(State(app): State<App>, headers: HeaderMap) -> ApiResult {
    let oidc = dev_issuer(&app)?;
    let info = bearer(&headers)
        .and_then(|t| oidc.dev.as_ref()?.userinfo(t))
        .ok_or_else(|| Problem::new(ProblemKind::Unauthenticated, "unknown access token"))?;
    json_response(StatusCode::OK, info)
}

#[derive(Deserialize)]
struct ConsistencyQuery {
    from: Option<u64>,
    to: Option<u64>,
}

async fn consistency_proof(State(app): State<App>, Query(q): Query<ConsistencyQuery>) -> ApiResult {
    let (from, to) = (required("from", q.from)?, required("to", q.to)?);
    json_response(StatusCode::OK, app.access_log_consistency(from, to).await?)
}

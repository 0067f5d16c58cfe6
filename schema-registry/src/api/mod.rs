//! The registry's REST API (described in openapi/registry.json): routing, authentication,
//! bounded bodies, RFC 9457 problems, and an audit entry for every refused change.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, FromRef, FromRequestParts, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use enlace_core::problem::{Problem, ProblemKind};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::Deserialize;
use serde::de::DeserializeOwned;

mod access_log;
mod citizen;
mod federation;

pub use federation::media;

use crate::access_log::AccessLog;
use crate::citizen::Citizens;
use crate::federation::{Actor, Registry};
use crate::limits::Guards;

/// Largest JSON body of an ordinary request.
const MAX_JSON_BODY: usize = 256 * 1024;
/// Longest a node may long-poll for the next configuration.
const MAX_WAIT: Duration = Duration::from_secs(60);

/// The registry's OpenAPI document.
pub const OPENAPI: &str = include_str!("../../../openapi/registry.json");

/// What the API serves, each part its own type: the federation (members, nodes, services,
/// contracts, the signed configuration), the access log, and the citizen side. A handler takes
/// the part it needs (`State<Arc<Registry>>`, `State<Arc<AccessLog>>`, `State<Arc<Citizens>>`).
#[derive(Clone)]
pub struct App {
    pub registry: Arc<Registry>,
    pub access_log: Arc<AccessLog>,
    pub citizens: Arc<Citizens>,
}

impl FromRef<App> for Arc<Registry> {
    fn from_ref(app: &App) -> Self {
        app.registry.clone()
    }
}

impl FromRef<App> for Arc<AccessLog> {
    fn from_ref(app: &App) -> Self {
        app.access_log.clone()
    }
}

impl FromRef<App> for Arc<Citizens> {
    fn from_ref(app: &App) -> Self {
        app.citizens.clone()
    }
}

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
    if let Some(secs) = p.retry_after() {
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
    headers
        .get(crate::citizen::oidc::ACCESS_TOKEN_HEADER)?
        .to_str()
        .ok()
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

/// A handler that takes an [`Actor`] acts for the one `Authorization: Bearer` token's holder
/// (see [`actor`]), and refuses a request without one before it reads the body. A handler that
/// reads its path first (a malformed id is refused as such; a node may renew with a proof
/// instead of a token) takes `Result<Actor, ApiError>` and answers its refusal at that point.
impl FromRequestParts<App> for Actor {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Self, ApiError> {
        Ok(actor(&app.registry, &parts.headers)?)
    }
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

/// A query parameter the route cannot do without.
fn required<T>(name: &str, v: Option<T>) -> Result<T, Problem> {
    v.ok_or_else(|| {
        Problem::new(
            ProblemKind::InvalidRequest,
            format!("the query parameter `{name}` is required"),
        )
    })
}

fn no_route(rest: &str) -> ApiError {
    ApiError(Problem::new(
        ProblemKind::NotFound,
        format!("no such resource: {rest}"),
    ))
}

pub fn router(app: App, guards: Arc<Guards>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/openapi.json", get(openapi))
        .route("/v1/ca", get(ca))
        .route("/v1/crl", get(crl))
        .route("/v1/config", get(config))
        .route(
            "/v1/members",
            post(federation::create_member).get(federation::list_members),
        )
        .route(
            "/v1/members/{*rest}",
            get(federation::get_member).post(federation::member_action),
        )
        .route(
            "/v1/subsystems",
            post(federation::register_subsystem).get(federation::list_subsystems),
        )
        .route("/v1/subsystems/{*rest}", post(federation::subsystem_action))
        .route(
            "/v1/nodes",
            post(federation::register_node).get(federation::list_nodes),
        )
        .route(
            "/v1/nodes/{*rest}",
            get(federation::get_node).post(federation::node_action),
        )
        .route("/v1/services", get(federation::list_services))
        .route(
            "/v1/services/{*rest}",
            get(federation::get_service).put(federation::publish_service),
        )
        .route(
            "/v1/descriptions/{digest}",
            get(federation::get_description),
        )
        .route(
            "/v1/concepts",
            post(federation::claim_concept).get(federation::list_concepts),
        )
        .route("/v1/once-only-check", post(federation::once_only_check))
        .route(
            "/v1/contracts",
            post(federation::propose_contract).get(federation::list_contracts),
        )
        .route("/v1/contracts/{id}", get(federation::get_contract))
        .route(
            "/v1/contracts/{id}/actions",
            post(federation::contract_action),
        )
        .route("/v1/audit", get(federation::audit))
        .route("/v1/log-heads", post(access_log::anchor_log_head))
        .route("/v1/log-heads/{*node}", get(access_log::log_heads))
        .route("/v1/access-log/evidence", get(access_log::access_evidence))
        .route(
            "/v1/access-log/evidence/consistency",
            get(access_log::consistency_evidence),
        )
        .route(
            "/v1/authorisations",
            post(citizen::request_authorisation).get(citizen::list_authorisations),
        )
        .route("/v1/authorisations/{id}", get(citizen::get_authorisation))
        .route(
            "/v1/citizen/authorisations",
            get(citizen::citizen_authorisations),
        )
        .route(
            "/v1/citizen/authorisations/{id}/{action}",
            post(citizen::citizen_act),
        )
        .route(
            "/v1/access-records",
            post(access_log::ingest_access_records),
        )
        .route("/v1/access-log/tree-head", get(access_log::tree_head))
        .route("/v1/access-log/tree-heads", get(access_log::tree_head_at))
        .route(
            "/v1/access-log/proof/inclusion",
            get(access_log::inclusion_proof),
        )
        .route(
            "/v1/access-log/proof/consistency",
            get(access_log::consistency_proof),
        )
        .route(
            "/v1/access-log/hidings",
            post(citizen::create_hiding).get(citizen::list_hidings),
        )
        .route("/v1/citizen/access-records", get(citizen::citizen_records))
        .route(
            "/.well-known/openid-configuration",
            get(citizen::oidc_discovery),
        )
        .route("/oidc/jwks", get(citizen::oidc_jwks))
        .route("/oidc/dev/token", post(citizen::oidc_dev_token))
        .route("/oidc/userinfo", post(citizen::oidc_userinfo))
        .merge(crate::citizen::page::routes())
        .fallback(|req: Request| async move { no_route(req.uri().path()) })
        .layer(middleware::from_fn(framework_rejections_as_problems))
        .layer(middleware::from_fn_with_state(
            (app.clone(), guards.clone()),
            audit_refusals,
        ))
        .layer(middleware::from_fn_with_state(guards, rate_limits))
        .with_state(app)
}

/// Each source address and each bearer token within its rate, or 429 `rate-limited` with
/// `Retry-After`. Outside the audit layer: a flood's refusals are counted in a log line once
/// per interval, not written one by one anywhere.
async fn rate_limits(State(guards): State<Arc<Guards>>, req: Request, next: Next) -> Response {
    let source = req
        .extensions()
        .get::<ConnectInfo<std::net::SocketAddr>>()
        .map(|c| enlace_limits::source_key(c.0.ip()));
    let refused = match source.map(|ip| guards.per_source.check(&ip)) {
        Some(Err(wait)) => Some(("this source address", wait)),
        _ => match bearer(req.headers()).map(|t| guards.per_token.check(t)) {
            Some(Err(wait)) => Some(("this token", wait)),
            _ => None,
        },
    };
    let Some((who, wait)) = refused else {
        return next.run(req).await;
    };
    if let Some(unlogged) = guards.rate_refusals.hit() {
        tracing::warn!(
            limit = who,
            refused_since_last_line = unlogged,
            "requests refused for their rate"
        );
    }
    problem_response(&Problem::rate_limited(who, wait))
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
async fn audit_refusals(
    State((app, guards)): State<(App, Arc<Guards>)>,
    req: Request,
    next: Next,
) -> Response {
    let method = req.method().clone();
    let path: String = req.uri().path().chars().take(512).collect();
    let who = match actor(&app.registry, req.headers()) {
        Ok(a) => a.label(),
        // An OpenID Connect ID token: a person (who exactly is not known until it verifies).
        Err(_) if bearer(req.headers()).is_some_and(|t| t.contains('.')) => "citizen".to_string(),
        Err(_) if bearer(req.headers()).is_some() => "invalid-token".to_string(),
        Err(_) => "anonymous".to_string(),
    };
    let unknown = matches!(who.as_str(), "citizen" | "invalid-token" | "anonymous");
    let resp = next.run(req).await;
    if let Some(Refused(p)) = resp.extensions().get::<Refused>() {
        if method != Method::GET && method != Method::HEAD {
            // An unknown caller's refusals are written one by one up to a budget per minute,
            // then counted into one entry, so that a flood cannot grow the trail without bound.
            let admission = match unknown {
                true => guards.unknown_audit.admit(),
                false => crate::limits::Admission {
                    write: true,
                    summarise: 0,
                },
            };
            let app = app.clone();
            let p = p.clone();
            let action = format!("{method} {path}");
            // The store is synchronous; keep it off the async workers.
            let _ = tokio::task::spawn_blocking(move || {
                if admission.summarise > 0 {
                    app.registry.audit_summary(admission.summarise, 60);
                }
                if admission.write {
                    app.registry.audit_refusal(&who, &action, &path, &p);
                }
            })
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

async fn ca(State(app): State<Arc<Registry>>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/x-pem-file")],
        app.ca_pem().to_string(),
    )
        .into_response()
}

async fn crl(State(app): State<Arc<Registry>>) -> Response {
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
    State(app): State<Arc<Registry>>,
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

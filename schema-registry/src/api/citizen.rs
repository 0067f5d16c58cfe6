//! The citizen side: authorisations (consents), hidings, a person's own records, and the
//! development OpenID Connect issuer.

use axum::body::Body;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use enlace_core::id::SubjectId;
use enlace_core::problem::{Problem, ProblemKind};
use serde::Deserialize;
use serde_json::json;

use std::sync::Arc;

use super::{ApiError, ApiResult, App, access_token, bearer, json_body, json_response};
use crate::citizen::Citizens;
use crate::federation::Actor;

/// The person a request comes from, signed in by OpenID Connect: the ID token as the bearer
/// token (and, in ClaveÚnica mode, the access token beside it), checked by the registry.
pub(super) struct Person(SubjectId);

impl FromRequestParts<App> for Person {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Self, ApiError> {
        let headers = &parts.headers;
        Ok(Person(
            app.citizens
                .person(bearer(headers), access_token(headers))
                .await?,
        ))
    }
}

// ---- authorisations (consents) ----

pub(super) async fn request_authorisation(
    State(citizens): State<Arc<Citizens>>,
    who: Actor,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    let req: crate::citizen::authorisation::NewAuthorisation = json_body(&headers, body).await?;
    json_response(
        StatusCode::CREATED,
        citizens.request_authorisation(&who, req).await?,
    )
}

pub(super) async fn list_authorisations(
    State(citizens): State<Arc<Citizens>>,
    who: Actor,
) -> ApiResult {
    json_response(StatusCode::OK, citizens.authorisations_of_member(&who)?)
}

pub(super) async fn get_authorisation(
    State(citizens): State<Arc<Citizens>>,
    Path(id): Path<String>,
    who: Actor,
) -> ApiResult {
    json_response(StatusCode::OK, citizens.authorisation_for(&who, &id)?)
}

pub(super) async fn citizen_authorisations(
    State(citizens): State<Arc<Citizens>>,
    Person(person): Person,
) -> ApiResult {
    json_response(StatusCode::OK, citizens.authorisations_of_person(&person)?)
}

pub(super) async fn citizen_act(
    State(citizens): State<Arc<Citizens>>,
    Path((id, action)): Path<(String, String)>,
    Person(person): Person,
) -> ApiResult {
    json_response(StatusCode::OK, citizens.act(&person, &id, &action).await?)
}

/// The federation admin hides a person's records of one contract from the citizen view until a
/// date, for a stated legal reason (see [`crate::citizen::hiding`]).
pub(super) async fn create_hiding(
    State(citizens): State<Arc<Citizens>>,
    who: Actor,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    let req: crate::citizen::hiding::NewHiding = json_body(&headers, body).await?;
    json_response(
        StatusCode::CREATED,
        citizens.create_hiding(&who, req).await?,
    )
}

pub(super) async fn list_hidings(State(citizens): State<Arc<Citizens>>, who: Actor) -> ApiResult {
    json_response(StatusCode::OK, citizens.hidings(&who)?)
}

// ---- the citizen API and the development OpenID Connect issuer ----

pub(super) async fn citizen_records(
    State(citizens): State<Arc<Citizens>>,
    Query(q): Query<crate::citizen::CitizenQuery>,
    Person(person): Person,
) -> ApiResult {
    json_response(StatusCode::OK, citizens.records(&person, &q).await?)
}

/// The development issuer, or not-found when it is off.
fn dev_issuer(citizens: &Citizens) -> Result<&crate::citizen::oidc::Oidc, Problem> {
    match citizens.oidc() {
        Ok(o) if o.dev.is_some() => Ok(o),
        _ => Err(Problem::new(
            ProblemKind::NotFound,
            "the development OpenID Connect issuer is off (oidc.dev_issuer)",
        )),
    }
}

pub(super) async fn oidc_discovery(State(citizens): State<Arc<Citizens>>) -> ApiResult {
    json_response(StatusCode::OK, dev_issuer(&citizens)?.discovery())
}

pub(super) async fn oidc_jwks(State(citizens): State<Arc<Citizens>>) -> ApiResult {
    json_response(StatusCode::OK, dev_issuer(&citizens)?.jwks())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DevLogin {
    sub: String,
}

/// DEVELOPMENT ONLY: an ID token for any subject asked for.
pub(super) async fn oidc_dev_token(
    State(citizens): State<Arc<Citizens>>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    let oidc = dev_issuer(&citizens)?;
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
pub(super) async fn oidc_userinfo(
    State(citizens): State<Arc<Citizens>>,
    headers: HeaderMap,
) -> ApiResult {
    let oidc = dev_issuer(&citizens)?;
    let info = bearer(&headers)
        .and_then(|t| oidc.dev.as_ref()?.userinfo(t))
        .ok_or_else(|| Problem::new(ProblemKind::Unauthenticated, "unknown access token"))?;
    json_response(StatusCode::OK, info)
}

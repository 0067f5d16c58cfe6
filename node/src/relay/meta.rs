//! Metaservices for local backends (members, services, what the caller may call, a service's
//! OpenAPI document, the node's own) and the admin listener (`/healthz`, `/readyz`).

use std::sync::Arc;

use bytes::Bytes;
use enlace_core::problem::{Problem, ProblemKind};
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use serde_json::{Value, json};

use super::{Node, problem_response};
use crate::net::Body;

/// The consumer listener's own API (`/r1/…`, `/meta/…`), served at `/meta/openapi.json`.
pub const OPENAPI: &str = include_str!("../../openapi.json");
/// The admin listener's API (`/healthz`, `/readyz`), served there at `/openapi.json`.
pub const ADMIN_OPENAPI: &str = include_str!("../../admin-openapi.json");

fn json_response(v: &Value) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from(v.to_string())));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// `/meta/members`, `/meta/services`, `/meta/allowed`, `/meta/openapi/SERVICE/vMAJOR`, and
/// `/meta/openapi.json` (the node's own API, the one document served without a token).
pub async fn consumer(node: Arc<Node>, req: Request<Incoming>) -> Response<Body> {
    let mut client = None;
    match meta(&node, &req, &mut client).await {
        Ok(r) => r,
        Err(p) => {
            super::exchange::refusal::refuse_outside_exchange(
                &node,
                req.method(),
                req.uri(),
                client.as_ref(),
                p,
            )
            .await
        }
    }
}

async fn meta(
    node: &Node,
    req: &Request<Incoming>,
    client_out: &mut Option<enlace_core::id::SubsystemId>,
) -> Result<Response<Body>, Problem> {
    if req.method() != http::Method::GET {
        return Err(Problem::new(
            ProblemKind::InvalidRequest,
            "metaservices answer GET only",
        ));
    }
    if req.uri().path() == "/meta/openapi.json" {
        let mut resp = Response::new(Full::new(Bytes::from_static(OPENAPI.as_bytes())));
        resp.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        return Ok(resp);
    }
    let (client, _) =
        super::exchange::backend::authenticate_backend(node, req.headers(), req.extensions())?;
    *client_out = Some(client.clone());
    super::exchange::backend::within_rate(node, &client)?;
    let snap = node.snapshot()?;
    let cfg = &snap.config;
    let path = req.uri().path();
    match path.trim_end_matches('/') {
        "/meta/members" => Ok(json_response(&json!({
            "members": cfg.members,
            "subsystems": cfg.subsystems,
        }))),
        "/meta/services" => {
            let provider = req.uri().query().and_then(|q| q.strip_prefix("provider="));
            let services: Vec<&enlace_core::config::ServiceEntry> = cfg
                .services
                .iter()
                .filter(|s| provider.is_none_or(|p| s.id.member().to_string() == p))
                .collect();
            Ok(json_response(&json!({ "services": services })))
        }
        "/meta/allowed" => {
            let now = time::OffsetDateTime::now_utc();
            let allowed: Vec<Value> = cfg
                .contracts
                .iter()
                .filter(|c| c.terms.consumer == client && c.is_active(now))
                .map(|c| {
                    json!({
                        "contract": c.id,
                        "service": c.terms.provider,
                        "versions": c.terms.versions,
                        "operations": c.terms.operations,
                        "fields": c.terms.allowed_fields,
                        "purpose": c.terms.purpose,
                        "subject_required": c.terms.subject_required,
                        "valid_until": enlace_core::rfc3339(c.terms.valid_until),
                    })
                })
                .collect();
            Ok(json_response(
                &json!({ "client": client, "allowed": allowed }),
            ))
        }
        p if p.starts_with("/meta/openapi/") => {
            let uri: http::Uri = format!("/r1/{}", &p["/meta/openapi/".len()..])
                .parse()
                .map_err(|_| {
                    Problem::new(
                        ProblemKind::InvalidRequest,
                        "path: /meta/openapi/SERVICE/vMAJOR",
                    )
                })?;
            let target = super::exchange::target::read_target(&uri)?;
            // Exactly SERVICE/vMAJOR: nothing may follow (`…/v1/../../x` is no description).
            if !(target.rest.is_empty() || target.rest == "/") || req.uri().query().is_some() {
                return Err(Problem::new(
                    ProblemKind::NotFound,
                    "path: /meta/openapi/SERVICE/vMAJOR, with nothing after the major version",
                ));
            }
            let entry = Node::resolve_service(&snap, &target.service, target.major)?;
            if entry.kind != enlace_core::config::DescriptionKind::Openapi {
                return Err(Problem::new(
                    ProblemKind::NotFound,
                    format!("{} is described by protobuf, not OpenAPI", entry.id),
                ));
            }
            let bytes = node.description_bytes(entry).await?;
            let mut resp = Response::new(Full::new(Bytes::from(bytes)));
            resp.headers_mut().insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            Ok(resp)
        }
        _ => Err(Problem::new(
            ProblemKind::NotFound,
            format!(
                "no metaservice {path}; try /meta/members, /meta/services, /meta/allowed, /meta/openapi/SERVICE/vMAJOR, /meta/openapi.json"
            ),
        )),
    }
}

/// The admin listener: liveness and readiness (a verified, unexpired configuration, and a
/// message log whose last commit succeeded, and a clock that agrees with the registry's), and
/// its OpenAPI document.
pub async fn admin(node: Arc<Node>, req: Request<Incoming>) -> Response<Body> {
    match req.uri().path() {
        "/healthz" => {
            let mut resp = Response::new(Full::new(Bytes::from_static(b"ok")));
            resp.headers_mut().insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain"),
            );
            resp
        }
        "/openapi.json" => {
            let mut resp = Response::new(Full::new(Bytes::from_static(ADMIN_OPENAPI.as_bytes())));
            resp.headers_mut().insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            resp
        }
        "/readyz" => match node.log.unavailable().map_or_else(|| node.snapshot(), Err) {
            Ok(_) if let Some(p) = node.config.registry_offset().problem() => {
                problem_response(&p, None)
            }
            Ok(s) => json_response(
                &json!({"ready": true, "serial": s.config.serial, "expires_at": enlace_core::rfc3339(s.config.expires_at)}),
            ),
            Err(p) => problem_response(&p, None),
        },
        other => {
            let mut r = problem_response(
                &Problem::new(ProblemKind::NotFound, format!("no such resource: {other}")),
                None,
            );
            *r.status_mut() = StatusCode::NOT_FOUND;
            r
        }
    }
}

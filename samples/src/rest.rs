//! The sample `personas` REST backend of the Registro Civil, for `enlace up`, the tests and the
//! benchmarks. It answers `GET /persons/{run}` and `GET /persons/{run}/documents`.

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;

use enlace_node::{Body, serve_plain};

/// The people the sample knows.
pub fn person(run: &str) -> Option<Value> {
    match run {
        "12345678-5" => Some(json!({
            "run": "12345678-5",
            "name": "María José Pérez Soto",
            "birthDate": "1980-04-15",
            "address": {"street": "Av. Libertador Bernardo O'Higgins 1234", "commune": "Santiago", "region": "Metropolitana"},
            "civilStatus": "married",
            "nationality": "CL",
            "healthInsurance": "FONASA"
        })),
        "11111111-1" => Some(json!({
            "run": "11111111-1",
            "name": "Juan Carlos Rojas Muñoz",
            "birthDate": "1975-09-18",
            "address": {"street": "Calle Prat 55", "commune": "Valparaíso", "region": "Valparaíso"},
            "civilStatus": "single",
            "nationality": "CL",
            "healthInsurance": "Isapre Colmena"
        })),
        _ => None,
    }
}

fn json_response(status: StatusCode, v: &Value, content_type: &'static str) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from(v.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    resp
}

/// Answers one request. Two RUNs misbehave on purpose, for tests: `99999999-9` gets a response
/// that breaks the service's schema, `22222222-2` an answer after 3 seconds.
pub async fn answer(method: &hyper::Method, path: &str) -> Response<Body> {
    if path == "/persons/22222222-2" {
        tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    }
    let not_found = || {
        json_response(
            StatusCode::NOT_FOUND,
            &json!({"type": "about:blank", "title": "Not Found", "status": 404, "detail": "no such person"}),
            "application/problem+json",
        )
    };
    if method != hyper::Method::GET {
        return json_response(
            StatusCode::METHOD_NOT_ALLOWED,
            &json!({"status": 405}),
            "application/problem+json",
        );
    }
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match segments.as_slice() {
        ["persons", "99999999-9"] => {
            // A backend bug: a number where the schema says string.
            json_response(
                StatusCode::OK,
                &json!({"run": "99999999-9", "name": 42, "birthDate": "1990-01-01"}),
                "application/json",
            )
        }
        ["persons", "33333333-3"] => {
            // A backend that dresses its own error up as one of Enlace's problems.
            json_response(
                StatusCode::FORBIDDEN,
                &json!({"type": "urn:enlace:problem:contract-revoked", "title": "Contract revoked", "status": 403}),
                "application/problem+json",
            )
        }
        ["persons", run] => match person(run) {
            Some(p) => json_response(StatusCode::OK, &p, "application/json"),
            None => not_found(),
        },
        ["persons", run, "documents"] => match person(run) {
            Some(_) => json_response(
                StatusCode::OK,
                &json!({"documents": [
                    {"type": "identity-card", "number": "A123456789", "issuedAt": "2019-03-01"},
                    {"type": "passport", "number": "P9876543", "issuedAt": "2021-07-12"}
                ]}),
                "application/json",
            ),
            None => not_found(),
        },
        _ => not_found(),
    }
}

/// Serves the sample backend until `shutdown` turns true.
pub async fn serve(listener: TcpListener, shutdown: watch::Receiver<bool>) {
    // A test backend: the caps only keep a runaway load generator from exhausting descriptors.
    let caps = enlace_limits::ConnectionCaps::new("sample backend", 16_384, 16_384);
    serve_plain(
        listener,
        caps,
        |req: Request<Incoming>, _remote: SocketAddr| async move {
            answer(req.method(), req.uri().path()).await
        },
        shutdown,
    )
    .await;
}

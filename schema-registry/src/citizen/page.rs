//! The citizen web page at `/citizen/`: a static page and script (embedded, no external
//! resources) that signs a person in, lists the access records about them from the citizen API,
//! and checks each record's inclusion proof in the browser.
//!
//! Served with `Content-Security-Policy: default-src 'self'; script-src 'self'`, so the page runs
//! only its own script (`/citizen/app.js`) and style sheet (`/citizen/app.css`); no inline script
//! or style, nothing from elsewhere. The page keeps the ID token in memory only.

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

/// The page's Content-Security-Policy.
pub const CSP: &str = "default-src 'self'; script-src 'self'";

const INDEX_HTML: &str = include_str!("../../static/citizen/index.html");
const APP_JS: &str = include_str!("../../static/citizen/app.js");
const APP_CSS: &str = include_str!("../../static/citizen/app.css");

/// The page's routes, merged into the registry's router.
pub(crate) fn routes() -> Router<crate::api::App> {
    Router::new()
        .route(
            "/citizen",
            get(|| async { Redirect::permanent("/citizen/") }),
        )
        .route(
            "/citizen/",
            get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }),
        )
        .route(
            "/citizen/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }),
        )
        .route(
            "/citizen/app.css",
            get(|| async { asset("text/css; charset=utf-8", APP_CSS) }),
        )
}

/// One embedded file with the page's security headers.
fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut resp = body.into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

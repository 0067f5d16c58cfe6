//! What a consumer backend or a peer node puts in a request: the Enlace headers, and a
//! request checked against the demo `personas` OpenAPI description.

use std::sync::OnceLock;

use enlace_core::problem::ProblemKind;
use enlace_description::validate::CompiledService;
use enlace_node::context::{self, Context};
use http::{HeaderMap, HeaderName, HeaderValue};

/// Header lines `name: value` (one per `\n`): a context that reads writes back to headers that
/// read as the same context; a refusal is an invalid request or identifier, or headers too large.
pub fn enlace_headers(data: &[u8]) {
    let mut headers = HeaderMap::new();
    for line in data.split(|&b| b == b'\n') {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let value = line[colon + 1..].trim_ascii();
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&line[..colon]),
            HeaderValue::from_bytes(value),
        ) else {
            continue;
        };
        headers.append(name, value);
    }
    if let Err(p) = context::check_header_section(&headers, 4096) {
        assert!(
            matches!(
                p.kind,
                ProblemKind::InvalidRequest | ProblemKind::HeadersTooLarge
            ),
            "{p:?}"
        );
    }
    match Context::read(&headers) {
        Ok(ctx) => {
            let mut written = HeaderMap::new();
            ctx.write(&mut written)
                .expect("a context read from headers writes back");
            let again = Context::read(&written).expect("a written context reads back");
            assert_eq!(again, ctx);
        }
        Err(p) => assert!(
            matches!(
                p.kind,
                ProblemKind::InvalidRequest | ProblemKind::InvalidIdentifier
            ),
            "{p:?}"
        ),
    }
}

/// The demo description every node of the sample federation serves.
const PERSONAS: &str = include_str!("../../openapi/samples/personas-v1.json");

fn personas() -> &'static CompiledService {
    static COMPILED: OnceLock<CompiledService> = OnceLock::new();
    COMPILED.get_or_init(|| {
        let desc = enlace_description::openapi::parse(PERSONAS.as_bytes())
            .expect("the sample description parses");
        CompiledService::compile(&desc).expect("the sample description compiles")
    })
}

/// Lines: method, raw path, raw query, then the body (the rest), against `personas`: a matched
/// request names one of the description's operations; the request and, as a response with
/// status 200, the body are validated; a body accepted as a response is that JSON.
pub fn openapi_request(data: &[u8]) {
    let (method, rest) = crate::split(data);
    let (path, rest) = crate::split(rest);
    let (query, body) = crate::split(rest);
    let (Ok(method), Ok(path), Ok(query)) = (
        std::str::from_utf8(method),
        std::str::from_utf8(path),
        std::str::from_utf8(query),
    ) else {
        return;
    };
    let service = personas();
    let Ok(matched) = service.match_request(method, path) else {
        return;
    };
    assert!(
        ["getPerson", "listDocuments"].contains(&matched.operation_id.as_str()),
        "{matched:?}"
    );
    let query = (!query.is_empty()).then_some(query);
    let headers = [("accept".to_string(), "application/json".to_string())];
    let _ = service.validate_request(&matched, query, &headers, body, Some("application/json"));
    if let Ok(value) = service.validate_response(&matched, 200, Some("application/json"), body) {
        let parsed: serde_json::Value = if body.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_slice(body).expect("an accepted response body is JSON")
        };
        assert_eq!(value, parsed);
    }
}

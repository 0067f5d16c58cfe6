//! Tests of strict matching, request and response validation, and minimisation.

use super::*;
use proptest::prelude::*;
use serde_json::json;

const PERSONAS: &str = include_str!("../../samples/personas-v1.json");

fn personas() -> CompiledService {
    let desc = crate::openapi::parse(PERSONAS.as_bytes()).unwrap();
    CompiledService::compile(&desc).unwrap()
}

/// An OpenAPI 3.0 service with query, header and body inputs.
fn orders() -> CompiledService {
    let doc = json!({
        "openapi": "3.0.3",
        "info": { "title": "orders", "version": "1" },
        "paths": {
            "/orders": {
                "get": {
                    "operationId": "listOrders",
                    "parameters": [
                        { "name": "status", "in": "query",
                          "schema": { "type": "array", "items": { "type": "string", "enum": ["open", "closed"] } } },
                        { "name": "limit", "in": "query",
                          "schema": { "type": "integer", "minimum": 0, "exclusiveMinimum": true, "maximum": 100, "example": 5 } },
                        { "name": "urgent", "in": "query", "schema": { "type": "boolean" } },
                        { "name": "X-Tenant", "in": "header", "required": true, "schema": { "type": "string", "minLength": 2 } }
                    ],
                    "responses": {
                        "200": { "description": "ok", "content": { "application/json": {
                            "schema": { "$ref": "#/components/schemas/OrderList" } } } },
                        "204": { "description": "nothing" }
                    }
                },
                "post": {
                    "operationId": "createOrder",
                    "requestBody": { "required": true, "content": { "application/json": {
                        "schema": { "$ref": "#/components/schemas/NewOrder" } } } },
                    "responses": {
                        "201": { "description": "created", "content": { "application/json": {
                            "schema": { "$ref": "#/components/schemas/Order" } } } },
                        "default": { "description": "error", "content": { "application/problem+json": {
                            "schema": { "type": "object", "required": ["title"],
                                        "properties": { "title": { "type": "string" } } } } } }
                    }
                }
            },
            "/orders/mine": {
                "get": {
                    "operationId": "myOrders",
                    "responses": { "200": { "description": "ok", "content": { "application/json": {
                        "schema": { "$ref": "#/components/schemas/OrderList" } } } } }
                }
            },
            "/orders/{id}": {
                "get": {
                    "operationId": "getOrder",
                    "parameters": [ { "name": "id", "in": "path", "required": true,
                                      "schema": { "type": "integer", "format": "int32" } } ],
                    "responses": { "200": { "description": "ok", "content": { "application/json": {
                        "schema": { "$ref": "#/components/schemas/Order" } } } } }
                }
            }
        },
        "components": { "schemas": {
            "NewOrder": {
                "type": "object", "required": ["item"], "additionalProperties": false,
                "properties": {
                    "item": { "type": "string" },
                    "note": { "type": "string", "nullable": true },
                    "count": { "type": "integer", "minimum": 1 }
                }
            },
            "Order": {
                "type": "object", "x-enlace-class": "personal", "required": ["id", "item"],
                "properties": {
                    "id": { "type": "integer" },
                    "item": { "type": "string" },
                    "note": { "type": "string", "nullable": true }
                }
            },
            "OrderList": {
                "type": "object", "x-enlace-class": "personal",
                "properties": { "orders": { "type": "array", "items": { "$ref": "#/components/schemas/Order" } } }
            }
        } }
    });
    let desc = crate::openapi::parse(&serde_json::to_vec(&doc).unwrap()).unwrap();
    CompiledService::compile(&desc).unwrap()
}

fn trick_of(p: &Problem) -> &str {
    p.extensions
        .get("trick")
        .and_then(Value::as_str)
        .unwrap_or("")
}

fn errors_at(p: &Problem) -> Vec<String> {
    p.extensions["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["at"].as_str().unwrap().to_owned())
        .collect()
}

fn h(name: &str, value: &str) -> (String, String) {
    (name.into(), value.into())
}

fn s(list: &[&str]) -> Vec<String> {
    list.iter().map(|x| (*x).to_owned()).collect()
}

// ---- matching --------------------------------------------------------------------------------

#[test]
fn matches_the_personas_operations() {
    let svc = personas();
    let m = svc.match_request("GET", "/persons/12345678-5").unwrap();
    assert_eq!(m.operation_id, "getPerson");
    assert_eq!(m.params, vec![("run".to_owned(), "12345678-5".to_owned())]);
    assert_eq!(svc.operation_id(&m), Some("getPerson"));
    let m = svc
        .match_request("GET", "/persons/12345678-5/documents")
        .unwrap();
    assert_eq!(m.operation_id, "listDocuments");
    // Other percent-encoded characters are decoded (a space, non-ASCII text).
    let m = svc.match_request("GET", "/persons/1234%20%C3%B1").unwrap();
    assert_eq!(m.params[0].1, "1234 ñ");
    // A percent-encoded digit is refused: the subject check would read it decoded, the
    // backend raw (see `refuses_path_tricks`).
    assert!(svc.match_request("GET", "/persons/1234567%38-5").is_err());
}

#[test]
fn refuses_path_tricks() {
    let svc = personas();
    let long = format!("/persons/{}", "1".repeat(3 * 1024));
    let cases: &[(&str, &str)] = &[
        ("/persons/12345678-5%2Fdocuments", "encoded-slash"),
        ("/persons/12345678-5%2fdocuments", "encoded-slash"),
        ("/persons/..%2F..%2Fadmin", "encoded-slash"),
        ("/persons/../persons/1-9", "dot-segment"),
        ("/persons/./1-9", "dot-segment"),
        ("/persons/%2E%2E", "encoded-dot"),
        ("/persons/12345678%2d5", "encoded-unreserved"),
        ("/persons/%31%32345678-5", "encoded-unreserved"),
        ("/persons/1-9%7E", "encoded-unreserved"),
        ("//persons/1-9", "empty-segment"),
        ("/persons//1-9", "empty-segment"),
        ("/persons/1-9/", "trailing-slash"),
        ("/persons/1-9;x=1", "matrix-parameter"),
        ("/persons/1-9%3Bx=1", "matrix-parameter"),
        ("/persons/%00", "encoded-control-character"),
        ("/persons/%0a", "encoded-control-character"),
        ("/persons/%ZZ", "bad-percent-encoding"),
        ("/persons/%2", "bad-percent-encoding"),
        ("/persons/%C3%28", "not-utf8"),
        ("/persons\\1-9", "backslash"),
        ("/persons/%5C1-9", "encoded-backslash"),
        ("/persons/%252F", "encoded-percent"),
        ("/persons/1-9\t", "control-character"),
        ("/persons/ñ", "non-ascii"),
        ("persons/1-9", "not-absolute"),
        (long.as_str(), "too-long"),
    ];
    for (path, trick) in cases {
        let p = svc.match_request("GET", path).unwrap_err();
        assert_eq!(p.kind, ProblemKind::InvalidRequest, "{path}: {p}");
        assert_eq!(trick_of(&p), *trick, "{path}: {p}");
    }
}

#[test]
fn unknown_paths_and_methods_are_not_found() {
    let svc = personas();
    for path in [
        "/Persons/1-9",
        "/persons",
        "/persons/1-9/documents/x",
        "/",
        "/admin",
    ] {
        let p = svc.match_request("GET", path).unwrap_err();
        assert_eq!(p.kind, ProblemKind::NotFound, "{path}");
    }
    for method in ["HEAD", "OPTIONS", "TRACE", "CONNECT", "POST", "DELETE"] {
        let p = svc.match_request(method, "/persons/1-9").unwrap_err();
        assert_eq!(p.kind, ProblemKind::NotFound, "{method}");
        assert_eq!(p.extensions["allowed"], json!(["GET"]));
    }
    let p = svc.match_request("get", "/persons/1-9").unwrap_err();
    assert_eq!(trick_of(&p), "method");
}

#[test]
fn prefers_the_most_literal_template() {
    let svc = orders();
    assert_eq!(
        svc.match_request("GET", "/orders/mine")
            .unwrap()
            .operation_id,
        "myOrders"
    );
    assert_eq!(
        svc.match_request("GET", "/orders/42").unwrap().operation_id,
        "getOrder"
    );
    assert_eq!(
        svc.match_request("POST", "/orders").unwrap().operation_id,
        "createOrder"
    );
}

// ---- requests --------------------------------------------------------------------------------

#[test]
fn path_parameter_failing_its_pattern() {
    let svc = personas();
    let m = svc.match_request("GET", "/persons/abc").unwrap();
    let p = svc.validate_request(&m, None, &[], b"", None).unwrap_err();
    assert_eq!(p.kind, ProblemKind::RequestSchemaViolation);
    assert_eq!(errors_at(&p), vec!["/path/run"]);
    assert!(
        !p.detail.contains("abc"),
        "values are not quoted: {}",
        p.detail
    );
    let m = svc.match_request("GET", "/persons/12345678-5").unwrap();
    svc.validate_request(&m, None, &[], b"", None).unwrap();
    svc.validate_request(&m, Some(""), &[], b"", None).unwrap();
}

#[test]
fn unknown_query_parameter_and_body_are_refused() {
    let svc = personas();
    let m = svc.match_request("GET", "/persons/12345678-5").unwrap();
    let p = svc
        .validate_request(&m, Some("fields=all"), &[], b"", None)
        .unwrap_err();
    assert_eq!(p.kind, ProblemKind::RequestSchemaViolation);
    assert_eq!(errors_at(&p), vec!["/query/fields"]);
    let p = svc
        .validate_request(&m, None, &[], b"{}", Some("application/json"))
        .unwrap_err();
    assert_eq!(errors_at(&p), vec!["/body"]);
    let p = svc
        .validate_request(&m, Some("a=%ZZ"), &[], b"", None)
        .unwrap_err();
    assert_eq!(p.kind, ProblemKind::InvalidRequest);
}

#[test]
fn query_and_header_parameters() {
    let svc = orders();
    let m = svc.match_request("GET", "/orders").unwrap();
    let tenant = [h("x-tenant", "cl")];
    svc.validate_request(&m, None, &tenant, b"", None).unwrap();
    svc.validate_request(
        &m,
        Some("status=open&status=closed&limit=100&urgent=true"),
        &tenant,
        b"",
        None,
    )
    .unwrap();
    // Missing required header.
    let p = svc.validate_request(&m, None, &[], b"", None).unwrap_err();
    assert_eq!(errors_at(&p), vec!["/header/x-tenant"]);
    // exclusiveMinimum: true (3.0) with minimum 0: 0 is refused; not a number; too big.
    for (q, at) in [
        ("limit=0", "/query/limit"),
        ("limit=ten", "/query/limit"),
        ("limit=101", "/query/limit"),
        ("urgent=yes", "/query/urgent"),
        ("status=pending", "/query/status/0"),
        ("limit=1&limit=2", "/query/limit"),
    ] {
        let p = svc
            .validate_request(&m, Some(q), &tenant, b"", None)
            .unwrap_err();
        assert_eq!(p.kind, ProblemKind::RequestSchemaViolation, "{q}");
        assert_eq!(errors_at(&p), vec![at], "{q}");
    }
    // Several violations are listed together.
    let p = svc
        .validate_request(&m, Some("limit=0&x=1"), &[], b"", None)
        .unwrap_err();
    let mut at = errors_at(&p);
    at.sort();
    assert_eq!(at, vec!["/header/x-tenant", "/query/limit", "/query/x"]);
    // int32 path parameter.
    let m = svc.match_request("GET", "/orders/3000000000").unwrap();
    let p = svc.validate_request(&m, None, &[], b"", None).unwrap_err();
    assert_eq!(errors_at(&p), vec!["/path/id"]);
}

#[test]
fn request_bodies() {
    let svc = orders();
    let m = svc.match_request("POST", "/orders").unwrap();
    let ct = Some("application/json; charset=utf-8");
    svc.validate_request(&m, None, &[], br#"{"item":"book","note":null}"#, ct)
        .unwrap();
    let p = svc.validate_request(&m, None, &[], b"", None).unwrap_err();
    assert_eq!(errors_at(&p), vec!["/body"]);
    let p = svc
        .validate_request(&m, None, &[], br#"{"item":1,"count":0,"extra":true}"#, ct)
        .unwrap_err();
    let mut at = errors_at(&p);
    at.sort();
    assert_eq!(at, vec!["/body", "/body/count", "/body/item"]);
    let p = svc
        .validate_request(&m, None, &[], br#"{"item":"a","item":"b"}"#, ct)
        .unwrap_err();
    assert_eq!(errors_at(&p), vec!["/body"]);
    let deep = format!("{}{}", "[".repeat(65), "]".repeat(65));
    let p = svc
        .validate_request(&m, None, &[], deep.as_bytes(), ct)
        .unwrap_err();
    assert_eq!(errors_at(&p), vec!["/body"]);
    for ct in [
        None,
        Some("text/plain"),
        Some("application/json; charset=latin1"),
    ] {
        let p = svc
            .validate_request(&m, None, &[], br#"{"item":"a"}"#, ct)
            .unwrap_err();
        assert_eq!(p.kind, ProblemKind::UnsupportedMediaType, "{ct:?}");
    }
}

// ---- responses -------------------------------------------------------------------------------

fn person() -> Value {
    json!({
        "run": "12345678-5",
        "name": "Ana Pérez",
        "birthDate": "1980-02-29",
        "address": { "street": "Moneda 1", "commune": "Santiago", "region": "RM" },
        "civilStatus": "married",
        "nationality": "CL",
        "healthInsurance": "FONASA"
    })
}

#[test]
fn responses_are_validated() {
    let svc = personas();
    let m = svc.match_request("GET", "/persons/12345678-5").unwrap();
    let body = serde_json::to_vec(&person()).unwrap();
    let v = svc
        .validate_response(&m, 200, Some("application/json"), &body)
        .unwrap();
    assert_eq!(v, person());

    let mut wrong = person();
    wrong["name"] = json!(42);
    let p = svc
        .validate_response(
            &m,
            200,
            Some("application/json"),
            &serde_json::to_vec(&wrong).unwrap(),
        )
        .unwrap_err();
    assert_eq!(p.kind, ProblemKind::ResponseSchemaViolation);
    assert_eq!(errors_at(&p), vec!["/body/name"]);

    let mut missing = person();
    missing.as_object_mut().unwrap().remove("birthDate");
    let p = svc
        .validate_response(
            &m,
            200,
            Some("application/json"),
            &serde_json::to_vec(&missing).unwrap(),
        )
        .unwrap_err();
    assert_eq!(p.kind, ProblemKind::ResponseSchemaViolation);
    assert_eq!(errors_at(&p), vec!["/body"]);
    assert!(!p.to_string().contains("Ana"), "no values quoted: {p}");

    let mut bad_date = person();
    bad_date["birthDate"] = json!("29/02/1980");
    let p = svc
        .validate_response(
            &m,
            200,
            Some("application/json"),
            &serde_json::to_vec(&bad_date).unwrap(),
        )
        .unwrap_err();
    assert_eq!(errors_at(&p), vec!["/body/birthDate"]);

    for (status, ct, body) in [
        (200, Some("text/html"), &b"<html>"[..]),
        (200, None, &body[..]),
        (200, Some("application/json"), &b""[..]),
        (200, Some("application/json"), &b"{"[..]),
        (201, Some("application/json"), &body[..]),
        (302, None, &b""[..]),
        (
            404,
            Some("application/problem+json"),
            &br#"{"status":"x"}"#[..],
        ),
        (500, Some("text/plain"), &b"oops"[..]),
    ] {
        let p = svc.validate_response(&m, status, ct, body).unwrap_err();
        assert_eq!(
            p.kind,
            ProblemKind::ResponseSchemaViolation,
            "{status} {ct:?}"
        );
    }
}

#[test]
fn error_responses() {
    let svc = personas();
    let m = svc.match_request("GET", "/persons/12345678-5").unwrap();
    let problem = br#"{"type":"about:blank","title":"Not found","status":404}"#;
    let v = svc
        .validate_response(&m, 404, Some("application/problem+json"), problem)
        .unwrap();
    assert_eq!(v["status"], 404);
    // Documented with problem+json, sent as application/json: validated against it anyway.
    svc.validate_response(&m, 404, Some("application/json"), problem)
        .unwrap();
    assert_eq!(
        svc.validate_response(&m, 404, None, b"").unwrap(),
        Value::Null
    );
    // Undocumented error statuses: any JSON or nothing.
    assert_eq!(
        svc.validate_response(&m, 503, Some("application/json"), b"[1]")
            .unwrap(),
        json!([1])
    );
    assert_eq!(
        svc.validate_response(&m, 503, None, b"").unwrap(),
        Value::Null
    );

    let svc = orders();
    let m = svc.match_request("POST", "/orders").unwrap();
    // `default` covers errors.
    let p = svc
        .validate_response(&m, 400, Some("application/problem+json"), b"{}")
        .unwrap_err();
    assert_eq!(errors_at(&p), vec!["/body"]);
    let m = svc.match_request("GET", "/orders").unwrap();
    assert_eq!(
        svc.validate_response(&m, 204, None, b"").unwrap(),
        Value::Null
    );
    svc.validate_response(&m, 204, Some("application/json"), b"{}")
        .unwrap_err();
    let v = svc
        .validate_response(
            &m,
            200,
            Some("application/json"),
            br#"{"orders":[{"id":1,"item":"a","note":null}]}"#,
        )
        .unwrap();
    assert_eq!(v["orders"][0]["note"], Value::Null);
}

#[test]
fn compiled_service_can_be_shared() {
    fn shared<T: Send + Sync>() {}
    shared::<CompiledService>();
}

// ---- minimisation ----------------------------------------------------------------------------

#[test]
fn minimise_keeps_only_allowed_fields() {
    let mut v = person();
    v["internalScore"] = json!({ "value": 3 });
    let disclosed = minimise(&mut v, &s(&["/name", "/address"]));
    assert_eq!(
        v,
        json!({
            "name": "Ana Pérez",
            "address": { "street": "Moneda 1", "commune": "Santiago", "region": "RM" }
        })
    );
    assert_eq!(
        disclosed,
        s(&[
            "/address/commune",
            "/address/region",
            "/address/street",
            "/name"
        ])
    );
}

#[test]
fn minimise_nested_and_arrays() {
    let mut v = person();
    assert_eq!(
        minimise(&mut v, &s(&["/address/street"])),
        s(&["/address/street"])
    );
    assert_eq!(v, json!({ "address": { "street": "Moneda 1" } }));

    let docs = json!({
        "documents": [
            { "type": "passport", "number": "P1", "issuedAt": "2020-01-01" },
            { "type": "identity-card", "number": "C2", "secret": { "x": 1 } },
            { "type": "identity-card" }
        ],
        "extra": [1, 2]
    });
    let mut v = docs.clone();
    assert_eq!(
        minimise(&mut v, &s(&["/documents/*/number"])),
        s(&["/documents/*/number"])
    );
    assert_eq!(
        v,
        json!({ "documents": [{ "number": "P1" }, { "number": "C2" }] })
    );

    let mut v = docs.clone();
    minimise(&mut v, &s(&["/documents"]));
    assert_eq!(v, json!({ "documents": docs["documents"] }));
}

#[test]
fn minimise_removes_emptied_objects() {
    let mut v = json!({ "address": { "commune": "Santiago" }, "name": "x" });
    assert!(minimise(&mut v, &s(&["/address/street"])).is_empty());
    assert_eq!(v, json!({}));
    // A value of the wrong shape is not covered.
    let mut v = json!({ "address": "Moneda 1", "documents": "none" });
    assert!(minimise(&mut v, &s(&["/address/street", "/documents/*/number"])).is_empty());
    assert_eq!(v, json!({}));
    let mut v = json!({ "a": { "b": { "c": {} } } });
    assert!(minimise(&mut v, &s(&["/a/b/c/d"])).is_empty());
    assert_eq!(v, json!({}));
}

#[test]
fn minimise_handles_escapes() {
    let mut v = json!({ "a/b": 1, "c~d": { "e": 2, "f": 3 }, "a": { "b": 4 } });
    let disclosed = minimise(&mut v, &s(&["/a~1b", "/c~0d/e"]));
    assert_eq!(v, json!({ "a/b": 1, "c~d": { "e": 2 } }));
    assert_eq!(disclosed, s(&["/a~1b", "/c~0d/e"]));
}

#[test]
fn minimise_is_linear() {
    fn doc(n: usize) -> Value {
        let items: Vec<Value> = (0..n)
            .map(|i| {
                json!({ "type": "passport", "number": format!("P{i}"), "issuedAt": "2020-01-01",
                        "extra": { "a": i, "b": [i, i] } })
            })
            .collect();
        json!({ "name": "x", "documents": items, "healthInsurance": "FONASA" })
    }
    let allowed = s(&["/name", "/documents/*/number", "/documents/*/extra"]);
    let small = doc(1500);
    let large = doc(6000);
    assert!(serde_json::to_vec(&small).unwrap().len() >= 100 * 1024);
    let time = |v: &Value| {
        let mut best = std::time::Duration::MAX;
        for _ in 0..5 {
            let mut v = v.clone();
            let t = std::time::Instant::now();
            let d = minimise(&mut v, &allowed);
            best = best.min(t.elapsed());
            assert_eq!(d.len(), 4);
        }
        best
    };
    let (t1, t4) = (time(&small), time(&large));
    let ratio = t4.as_secs_f64() / t1.as_secs_f64().max(1e-9);
    // Four times the input: about four times the time; far from quadratic (16).
    assert!(ratio < 10.0, "4x input took {ratio:.1}x the time");
}

// ---- properties ------------------------------------------------------------------------------

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        "[a-z]{0,3}".prop_map(Value::String),
    ];
    leaf.prop_recursive(5, 64, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec(("[abc*/~]{1,2}", inner), 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn arb_pointer() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            Just("*".to_owned()),
            "[abc]{1,2}",
            Just("a~1b".to_owned()),
            Just("~0".to_owned())
        ],
        0..4,
    )
    .prop_map(|segs| segs.iter().map(|s| format!("/{s}")).collect())
}

/// Every leaf of `v` (scalars, empty containers) as escaped pointers with `*` for elements.
fn all_leaves(v: &Value, at: &mut String, out: &mut Vec<String>) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, x) in m {
                let len = at.len();
                at.push('/');
                at.push_str(&k.replace('~', "~0").replace('/', "~1"));
                all_leaves(x, at, out);
                at.truncate(len);
            }
        }
        Value::Array(a) if !a.is_empty() => {
            for x in a {
                let len = at.len();
                at.push_str("/*");
                all_leaves(x, at, out);
                at.truncate(len);
            }
        }
        _ => out.push(at.clone()),
    }
}

proptest! {
    #[test]
    fn minimise_discloses_only_covered_leaves(
        mut v in arb_json(),
        allowed in prop::collection::vec(arb_pointer(), 0..4),
    ) {
        let disclosed = minimise(&mut v, &allowed);
        let mut leaves = Vec::new();
        all_leaves(&v, &mut String::new(), &mut leaves);
        if disclosed.is_empty() && !allowed.iter().any(String::is_empty) {
            // Nothing allowed was found: the root is left empty.
            let emptied = match &v {
                Value::Null => true,
                Value::Object(m) => m.is_empty(),
                Value::Array(a) => a.is_empty(),
                _ => false,
            };
            prop_assert!(emptied, "nothing disclosed, but {v} is left");
            return Ok(());
        }
        for leaf in &leaves {
            let covered = allowed.iter().any(|a| leaf == a || leaf.starts_with(&format!("{a}/")));
            prop_assert!(covered, "leaf {leaf} not covered by {allowed:?}");
        }
        leaves.sort();
        leaves.dedup();
        prop_assert_eq!(leaves, disclosed);
    }

    #[test]
    fn match_request_never_panics(path in "\\PC{0,80}", raw in "[/a-z%0-9.;{}\\\\]{0,40}") {
        let svc = personas();
        let _ = svc.match_request("GET", &path);
        let _ = svc.match_request("GET", &raw);
        let _ = svc.match_request("GET", &format!("/persons/{raw}"));
    }
}

#[test]
fn bundling_refuses_anything_but_local_components() {
    let root =
        json!({ "components": { "schemas": { "A": { "type": "string", "nullable": true } } } });
    for r in [
        "http://example.com/s.json",
        "s.json",
        "#/paths/x",
        "#/components/schemas/B",
    ] {
        assert!(
            schema::bundle(&root, true, &json!({ "$ref": r })).is_err(),
            "{r}"
        );
    }
    let b = schema::bundle(
        &root,
        true,
        &json!({ "$ref": "#/components/schemas/A", "maxLength": 1 }),
    )
    .unwrap();
    // 3.0: siblings of `$ref` are ignored; `nullable` becomes a type union.
    assert_eq!(
        b,
        json!({ "$ref": "#/$defs/c0", "$defs": { "c0": { "type": ["string", "null"] } } })
    );
}

#[test]
fn the_bound_subject_comes_from_the_described_parameter() {
    let svc = personas();
    let m = svc.match_request("GET", "/persons/12345678-5").unwrap();
    assert_eq!(
        svc.bound_subject(&m, None).unwrap().as_deref(),
        Some("CL-RUN:12345678-5")
    );
    // A subject spelt with percent-encoded digits or `-` never reaches the subject check: the
    // path is refused, so the node and the backend cannot read two different people.
    for spelt in [
        "/persons/1234567%38-5",
        "/persons/12345678%2d5",
        "/persons/12345678%2D5",
    ] {
        let p = svc.match_request("GET", spelt).unwrap_err();
        assert_eq!(p.extensions["trick"], "encoded-unreserved", "{spelt}");
    }
    // An operation binding none, and one bound through a query parameter.
    assert_eq!(orders_bound(None), Ok(None));
    let doc = json!({
        "openapi": "3.0.3",
        "info": { "title": "t", "version": "1" },
        "paths": { "/benefits": { "get": {
            "operationId": "listBenefits",
            "parameters": [{ "name": "run", "in": "query", "required": true,
                "schema": { "type": "string" }, "x-enlace-subject": "CL-RUN" }],
            "responses": { "200": { "description": "ok", "content": { "application/json": {
                "schema": { "type": "object", "x-enlace-class": "personal",
                    "properties": { "total": { "type": "integer" } } } } } } }
        } } }
    });
    let desc = crate::openapi::parse(&serde_json::to_vec(&doc).unwrap()).unwrap();
    let svc = CompiledService::compile(&desc).unwrap();
    let m = svc.match_request("GET", "/benefits").unwrap();
    assert_eq!(
        svc.bound_subject(&m, Some("run=11111112-K"))
            .unwrap()
            .as_deref(),
        Some("CL-RUN:11111112-K")
    );
    for q in [None, Some("run=1-9&run=11111112-K")] {
        let p = svc.bound_subject(&m, q).unwrap_err();
        assert_eq!(p.kind, ProblemKind::RequestSchemaViolation, "{q:?}");
    }
}

fn orders_bound(query: Option<&str>) -> Result<Option<String>, ProblemKind> {
    let svc = orders();
    let m = svc.match_request("GET", "/orders").unwrap();
    svc.bound_subject(&m, query).map_err(|p| p.kind)
}

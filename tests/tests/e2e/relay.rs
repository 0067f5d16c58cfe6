//! The REST relay end to end: a registry, the Registro Civil node in front of the sample
//! backend, and the SII node, on loopback with real mutual TLS and real signatures.

use std::time::{Duration, Instant};

use enlace_registry::demo;
use enlace_tests::{Reply, TestFederation};
use reqwest::Method;
use serde_json::{Value, json};

fn culprit(r: &Reply) -> &str {
    r.body["culprit"].as_str().unwrap_or("")
}

#[tokio::test]
async fn a_person_is_fetched_through_both_nodes_cut_to_the_contract() {
    let f = TestFederation::start().await;
    let r = f.call(Method::GET, "/persons/12345678-5", &[]).await;
    assert_eq!(
        r.ok(200),
        &json!({
            "name": "María José Pérez Soto",
            "address": {"street": "Av. Libertador Bernardo O'Higgins 1234", "commune": "Santiago", "region": "Metropolitana"}
        }),
        "only the contract's fields: no birth date, no health insurance"
    );
    // Metaservices: what this backend may call.
    let allowed = f
        .registry
        .http
        .get(format!("{}/meta/allowed", f.consumer_url))
        .bearer_auth(&f.client_token)
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(allowed["allowed"][0]["contract"], f.demo.contract);
    assert_eq!(
        allowed["allowed"][0]["fields"],
        json!(["/name", "/address"])
    );
    // Times are RFC 3339, as everywhere in Enlace's answers.
    let rfc3339 = |v: &Value| {
        let s = v.as_str().unwrap_or_else(|| panic!("not a string: {v}"));
        time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
            .unwrap_or_else(|e| panic!("{s}: {e}"));
    };
    rfc3339(&allowed["allowed"][0]["valid_until"]);
    let doc = f
        .registry
        .http
        .get(format!(
            "{}/meta/openapi/{}/v1",
            f.consumer_url,
            demo::PERSONAS
        ))
        .bearer_auth(&f.client_token)
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(
        doc["paths"]["/persons/{run}"]["get"]["operationId"],
        "getPerson"
    );
    // Nothing may follow the major version.
    for tail in ["/extra", "/v1", "?x=1"] {
        let resp = f
            .registry
            .http
            .get(format!(
                "{}/meta/openapi/{}/v1{tail}",
                f.consumer_url,
                demo::PERSONAS
            ))
            .bearer_auth(&f.client_token)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 404, "{tail}");
        assert_eq!(resp.headers()["content-type"], "application/problem+json");
    }
    // As `curl --path-as-is` sends it (an HTTP client would resolve the dots itself).
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(f.consumer.consumer_addr)
            .await
            .unwrap();
        let req = format!(
            "GET /meta/openapi/{}/v1/../../../../x HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
            demo::PERSONAS,
            f.client_token
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
    }
    let services = f
        .registry
        .http
        .get(format!("{}/meta/services", f.consumer_url))
        .bearer_auth(&f.client_token)
        .send()
        .await
        .unwrap();
    assert_eq!(services.status(), 200);
    // The admin listener: alive, and ready with an unexpired configuration.
    let admin = format!("http://{}", f.consumer.admin_addr);
    let health = f
        .registry
        .http
        .get(format!("{admin}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let ready: Value = f
        .registry
        .http
        .get(format!("{admin}/readyz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["ready"], true);
    time::OffsetDateTime::parse(
        ready["expires_at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap_or_else(|e| panic!("{ready}: {e}"));
    let members = f
        .registry
        .http
        .get(format!("{}/meta/members", f.consumer_url))
        .send()
        .await
        .unwrap();
    assert_eq!(members.status(), 401, "metaservices need a backend token");
    f.stop().await;
}

#[tokio::test]
async fn the_consumer_node_refuses_bad_calls_with_problems_naming_the_cause() {
    let f = TestFederation::start().await;
    // A backend without a token, or with another subsystem's name.
    let r = f
        .call(
            Method::GET,
            "/persons/12345678-5",
            &[("authorization", "Bearer nope")],
        )
        .await;
    r.problem("unauthenticated", 401);
    let r = f
        .call(
            Method::GET,
            "/persons/12345678-5",
            &[("enlace-client", "CL-DEV/GOV/60803000-K/aduana")],
        )
        .await;
    r.problem("forbidden", 403);
    // No contract; a contract that does not exist.
    let r = f
        .call(
            Method::GET,
            "/persons/12345678-5",
            &[("enlace-contract", "")],
        )
        .await;
    r.problem("contract-missing", 403);
    let r = f
        .call(
            Method::GET,
            "/persons/12345678-5",
            &[("enlace-contract", "ctr_01JD0000000000000000000000")],
        )
        .await;
    r.problem("contract-missing", 403);
    // The contract requires a subject; a subject with a wrong check digit.
    let r = f
        .call(
            Method::GET,
            "/persons/12345678-5",
            &[("enlace-subject", "")],
        )
        .await;
    r.problem("invalid-request", 400);
    let r = f
        .call(
            Method::GET,
            "/persons/12345678-5",
            &[("enlace-subject", "CL-RUN:12345678-6")],
        )
        .await;
    assert_eq!(
        r.problem("invalid-identifier", 400)["field"],
        "subject.value"
    );
    // An unknown service.
    let url = format!(
        "{}/r1/{}/registro-civil/otro/v1/x",
        f.consumer_url,
        demo::REGISTRO_CIVIL
    );
    let resp = f
        .registry
        .http
        .get(url)
        .bearer_auth(&f.client_token)
        .header("enlace-client", demo::CONSUMER_SUBSYSTEM)
        .header("enlace-contract", &f.demo.contract)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    assert_eq!(
        resp.json::<Value>().await.unwrap()["type"],
        "urn:enlace:problem:unknown-service"
    );
    // A body larger than the node accepts.
    let big = "x".repeat(5 * 1024 * 1024);
    let url = format!(
        "{}/r1/{}/v1/persons/12345678-5",
        f.consumer_url,
        demo::PERSONAS
    );
    let resp = f
        .registry
        .http
        .post(url)
        .bearer_auth(&f.client_token)
        .header("enlace-client", demo::CONSUMER_SUBSYSTEM)
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    // A request that breaks the service's schema is refused by the provider node (400), with
    // the cause named and blamed on the client.
    let r = f.call(Method::GET, "/persons/not-a-run", &[]).await;
    let body = r.problem("request-schema-violation", 400);
    assert_eq!(body["errors"][0]["at"], "/path/run");
    assert_eq!(culprit(&r), "client");
    // An operation the contract does not allow (listDocuments): the provider's check counts.
    let r = f
        .call(Method::GET, "/persons/12345678-5/documents", &[])
        .await;
    r.problem("contract-missing", 403);
    f.stop().await;
}

#[tokio::test]
async fn path_tricks_and_method_overrides_are_refused() {
    let f = TestFederation::start().await;
    // Sent byte for byte (an HTTP library would normalise some of these before sending).
    for path in [
        "/persons/12345678-5%2Fdocuments",
        "/persons/..%2F..%2Fadmin",
        "/persons/%2e%2e/persons/12345678-5",
        "/persons/../persons/12345678-5",
        "/persons/./12345678-5",
        "//persons/12345678-5",
        "/persons/12345678-5/",
        "/persons/12345678-5;x=1",
        "/persons/%00",
        "/persons/12345678-5%252F",
        "/persons\\12345678-5",
    ] {
        let raw = format!("/r1/{}/v1{path}", demo::PERSONAS);
        let (status, body) = raw_get(&f, &raw).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert!(
            body.contains("urn:enlace:problem:invalid-request"),
            "{path}: {body}"
        );
    }
    // The control: the same request without a trick is served.
    let (status, _) = raw_get(&f, &format!("/r1/{}/v1/persons/12345678-5", demo::PERSONAS)).await;
    assert_eq!(status, 200);
    // Tricks in the service part of the path.
    let (status, _) = raw_get(
        &f,
        "/r1/CL-DEV/GOV/61002000-3/registro-civil%2Fpersonas/x/v1/persons/12345678-5",
    )
    .await;
    assert_eq!(status, 400);
    let r = f
        .call(
            Method::GET,
            "/persons/12345678-5",
            &[("x-http-method-override", "DELETE")],
        )
        .await;
    r.problem("invalid-request", 400);
    // A path that names no operation.
    let r = f.call(Method::GET, "/admin", &[]).await;
    r.problem("not-found", 404);
    let r = f.call(Method::DELETE, "/persons/12345678-5", &[]).await;
    r.problem("not-found", 404);
    f.stop().await;
}

/// A GET with the path sent exactly as given (no client-side normalisation): status and body.
async fn raw_get(f: &TestFederation, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(f.consumer.consumer_addr)
        .await
        .unwrap();
    let req = format!(
        "GET {path} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\nenlace-client: {}\r\nenlace-contract: {}\r\nenlace-subject: {}\r\nconnection: close\r\n\r\n",
        f.client_token,
        demo::CONSUMER_SUBSYSTEM,
        f.demo.contract,
        demo::PERSON
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, text)
}

#[tokio::test]
async fn a_person_cannot_be_read_in_another_persons_name() {
    let f = TestFederation::start().await;
    // The path asks about 11111112-K; the subject header names 12345678-5. If this passed, the
    // access log would tell the wrong person, and the person read would never know.
    let r = f.call(Method::GET, "/persons/11111112-K", &[]).await;
    let p = r.problem("subject-mismatch", 403);
    let detail = p["detail"].as_str().unwrap_or("");
    assert!(
        detail.contains("CL-RUN:12345678-5") && detail.contains("CL-RUN:11111112-K"),
        "{detail}"
    );
    assert_eq!(culprit(&r), "client");
    // An invalid RUN in the path is a request schema violation, not a lookup.
    let r = f
        .call(
            Method::GET,
            "/persons/11111112-1",
            &[("enlace-subject", "CL-RUN:12345678-5")],
        )
        .await;
    r.problem("request-schema-violation", 400);
    // Named correctly, the same request is served.
    let r = f
        .call(
            Method::GET,
            "/persons/11111112-K",
            &[("enlace-subject", "CL-RUN:11111112-K")],
        )
        .await;
    assert_eq!(
        r.status.as_u16(),
        404,
        "nobody has that RUN in the sample: {:#}",
        r.body
    );
    f.stop().await;
}

#[tokio::test]
async fn backend_faults_are_blamed_on_the_backend() {
    let f = TestFederation::start_with(|s, provider| {
        if provider {
            s.limits.upstream_timeout_ms = 1000;
        }
    })
    .await;
    // The sample backend breaks its schema for this RUN: 502, blamed on the provider backend.
    let r = f
        .call(
            Method::GET,
            "/persons/99999999-9",
            &[("enlace-subject", "CL-RUN:99999999-9")],
        )
        .await;
    r.problem("response-schema-violation", 502);
    assert_eq!(culprit(&r), "provider-backend");
    // And answers too slowly for this one: 504.
    let r = f
        .call(
            Method::GET,
            "/persons/22222222-2",
            &[("enlace-subject", "CL-RUN:22222222-2")],
        )
        .await;
    r.problem("peer-timeout", 504);
    assert_eq!(culprit(&r), "provider-backend");
    // An unknown person: the backend's 404 passes as a bare problem, nothing else.
    let r = f
        .call(
            Method::GET,
            "/persons/11111112-K",
            &[("enlace-subject", "CL-RUN:11111112-K")],
        )
        .await;
    assert_eq!(r.status.as_u16(), 404, "{:#}", r.body);
    assert!(
        r.body.get("detail").is_none(),
        "backend details do not leave the provider: {:#}",
        r.body
    );
    // A backend cannot pass its own error off as one of Enlace's: the type is dropped.
    let r = f
        .call(
            Method::GET,
            "/persons/33333333-3",
            &[("enlace-subject", "CL-RUN:33333333-3")],
        )
        .await;
    assert_eq!(r.status.as_u16(), 403, "{:#}", r.body);
    assert!(r.body.get("type").is_none(), "{:#}", r.body);
    assert_eq!(culprit(&r), "provider-backend");
    f.stop().await;
}

#[tokio::test]
async fn an_unreachable_provider_node_is_a_502() {
    let f = TestFederation::start().await;
    let TestFederation {
        registry,
        demo: _,
        provider,
        consumer,
        consumer_url,
        client_token,
        ..
    } = f;
    provider.stop().await;
    let url = format!("{consumer_url}/r1/{}/v1/persons/12345678-5", demo::PERSONAS);
    let resp = registry
        .http
        .get(url)
        .bearer_auth(&client_token)
        .header("enlace-client", demo::CONSUMER_SUBSYSTEM)
        .header(
            "enlace-contract",
            consumer
                .node
                .settings
                .raw
                .id
                .as_str()
                .replace("node/a", "x")
                .len()
                .to_string(),
        )
        .send()
        .await
        .unwrap();
    // (a malformed contract id is refused before anything is sent)
    assert_eq!(resp.status(), 400);
    let contract = registry
        .running
        .registry
        .contracts(&enlace_registry::Actor::FederationAdmin)
        .unwrap()[0]
        .id
        .to_string();
    let url = format!("{consumer_url}/r1/{}/v1/persons/12345678-5", demo::PERSONAS);
    let resp = registry
        .http
        .get(url)
        .bearer_auth(&client_token)
        .header("enlace-client", demo::CONSUMER_SUBSYSTEM)
        .header("enlace-contract", contract)
        .header("enlace-subject", demo::PERSON)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 502);
    assert_eq!(resp.headers()["enlace-error"], "peer-node");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["type"], "urn:enlace:problem:peer-unreachable");
    consumer.stop().await;
    registry.running.stop().await;
}

#[tokio::test]
async fn a_revoked_contract_is_refused_within_a_second() {
    let f = TestFederation::start().await;
    f.call(Method::GET, "/persons/12345678-5", &[])
        .await
        .ok(200);
    let revoked_at = Instant::now();
    f.registry
        .post(
            &format!("/v1/contracts/{}/actions", f.demo.contract),
            Some(&f.demo.registro_civil_token),
            &json!({"action": "revoke", "reason": "convenio terminado"}),
        )
        .await
        .ok(200);
    loop {
        let r = f.call(Method::GET, "/persons/12345678-5", &[]).await;
        if r.status.as_u16() == 403 {
            r.problem("contract-revoked", 403);
            break;
        }
        assert!(
            revoked_at.elapsed() < Duration::from_secs(1),
            "still served {:?} after revocation",
            revoked_at.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(revoked_at.elapsed() < Duration::from_secs(1));
    f.stop().await;
}

#[tokio::test]
async fn a_revoked_subsystem_is_refused_by_both_nodes_within_a_second() {
    let f = TestFederation::start().await;
    f.call(Method::GET, "/persons/12345678-5", &[])
        .await
        .ok(200);
    let sub = demo::CONSUMER_SUBSYSTEM;
    let reason = json!({"reason": "sistema dado de baja"});
    // Another member's admin cannot withdraw SII's subsystem; nothing changes.
    f.registry
        .post(
            &format!("/v1/subsystems/{sub}/revoke"),
            Some(&f.demo.registro_civil_token),
            &reason,
        )
        .await
        .problem("forbidden", 403);
    f.call(Method::GET, "/persons/12345678-5", &[])
        .await
        .ok(200);
    let revoked_at = Instant::now();
    let rec = f
        .registry
        .post(
            &format!("/v1/subsystems/{sub}/revoke"),
            Some(f.registry.admin()),
            &reason,
        )
        .await;
    assert_eq!(rec.ok(200)["state"], "revoked");
    loop {
        let r = f.call(Method::GET, "/persons/12345678-5", &[]).await;
        if r.status.as_u16() == 403 {
            r.problem("forbidden", 403);
            assert!(
                r.body["detail"]
                    .as_str()
                    .unwrap_or("")
                    .contains("not an approved subsystem"),
                "{}",
                r.body
            );
            break;
        }
        assert!(
            revoked_at.elapsed() < Duration::from_secs(1),
            "still served {:?} after the subsystem was revoked",
            revoked_at.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The provider node refuses it too, for a request signed by SII's node directly.
    let sii = f.node_keys("60803000-K", demo::CONSUMER_NODE);
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let req = f.signed_request(&sii, "GET", "/persons/12345678-5", b"", &[], now);
    let (status, _, body) = f.send_to_provider(&sii, req).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["type"], "urn:enlace:problem:forbidden");
    // Revoking twice is an invalid transition.
    f.registry
        .post(
            &format!("/v1/subsystems/{sub}/revoke"),
            Some(f.registry.admin()),
            &reason,
        )
        .await
        .problem("invalid-transition", 409);
    f.stop().await;
}

/// A backend that answers with the `X-Folio` header it received and the names of all the
/// headers that reached it.
async fn echo_backend() -> std::net::SocketAddr {
    use hyper::service::service_fn;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let svc = service_fn(|req: http::Request<hyper::body::Incoming>| async move {
                    let folio = req
                        .headers()
                        .get("x-folio")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_string();
                    let mut names: Vec<String> = req
                        .headers()
                        .keys()
                        .map(|k| k.as_str().to_string())
                        .collect();
                    names.sort();
                    let body = json!({"folio": folio, "headers": names}).to_string();
                    let mut resp =
                        http::Response::new(http_body_util::Full::new(bytes::Bytes::from(body)));
                    resp.headers_mut()
                        .insert("content-type", "application/json".parse().unwrap());
                    Ok::<_, std::convert::Infallible>(resp)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn header_parameters_travel_signed_and_no_other_header_reaches_the_backend() {
    const ECO: &str = "CL-DEV/GOV/61002000-3/registro-civil/eco";
    let backend = echo_backend().await;
    let f = TestFederation::start_with(move |s, provider| {
        if provider {
            s.services.push(enlace_node::settings::Provided {
                service: ECO.into(),
                backend: format!("http://{backend}"),
                log_bodies: false,
            });
        }
    })
    .await;
    let description = json!({
        "openapi": "3.0.3",
        "info": { "title": "eco", "version": "1" },
        "paths": { "/echo": { "get": {
            "operationId": "echo",
            "parameters": [{ "name": "X-Folio", "in": "header", "required": true,
                "schema": { "type": "string", "pattern": "^F-[0-9]+$" } }],
            "responses": { "200": { "description": "ok", "content": { "application/json": {
                "schema": { "type": "object", "x-enlace-class": "public",
                    "properties": {
                        "folio": { "type": "string" },
                        "headers": { "type": "array", "items": { "type": "string" } }
                    } } } } } }
        } } }
    });
    f.registry
        .send(
            Method::PUT,
            &format!("/v1/services/{ECO}/versions/v1"),
            Some(&f.demo.registro_civil_token),
            "application/json",
            description.to_string().into_bytes(),
        )
        .await
        .ok(201);
    let terms = json!({
        "consumer": demo::CONSUMER_SUBSYSTEM,
        "provider": ECO,
        "versions": {"min": "v1.0", "max": "v1.9999"},
        "operations": ["echo"],
        "purpose": "folio-echo",
        "legal_basis": "test",
        "allowed_fields": ["/folio", "/headers"],
        "subject_required": false,
        "usage": "permanent",
        "valid_from": "2026-01-01T00:00:00Z",
        "valid_until": "2099-01-01T00:00:00Z",
        "authorisation_required": false
    });
    let id = f
        .registry
        .post("/v1/contracts", Some(&f.demo.sii_token), &terms)
        .await
        .ok(201)["id"]
        .as_str()
        .unwrap()
        .to_string();
    f.registry
        .post(
            &format!("/v1/contracts/{id}/actions"),
            Some(&f.demo.registro_civil_token),
            &json!({"action": "approve"}),
        )
        .await
        .ok(200);
    for provider in [false, true] {
        f.await_config(provider, &format!("contract {id}"), |c| {
            c.contracts.iter().any(|c| c.id.as_str() == id)
        })
        .await;
    }
    let call = |folio: Option<&'static str>| {
        let mut req = f
            .registry
            .http
            .get(format!("{}/r1/{ECO}/v1/echo", f.consumer_url))
            .bearer_auth(&f.client_token)
            .header("enlace-client", demo::CONSUMER_SUBSYSTEM)
            .header("enlace-contract", &id)
            .header("cookie", "session=secreto")
            .header("x-internal-note", "no debe salir")
            .header("x-forwarded-for", "10.1.2.3");
        if let Some(v) = folio {
            req = req.header("x-folio", v);
        }
        req.send()
    };
    let resp = call(Some("F-2026")).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["folio"], "F-2026", "{body}");
    let seen: Vec<&str> = body["headers"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for absent in [
        "cookie",
        "x-internal-note",
        "x-forwarded-for",
        "authorization",
        "signature",
    ] {
        assert!(
            !seen.contains(&absent),
            "{absent} reached the backend: {seen:?}"
        );
    }
    // The required header missing, or not matching its schema: the provider's validation.
    let resp = call(None).await.unwrap();
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(
        body["type"], "urn:enlace:problem:request-schema-violation",
        "{body}"
    );
    f.stop().await;
}

/// Proposes (as SII) and approves (as Registro Civil) a contract for `getPerson` with `extra`
/// terms; returns its id once nodes can have seen it.
async fn approved_contract(f: &TestFederation, purpose: &str, extra: Value) -> String {
    let mut terms = json!({
        "consumer": demo::CONSUMER_SUBSYSTEM,
        "provider": demo::PERSONAS,
        "versions": {"min": "v1.0", "max": "v1.9999"},
        "operations": ["getPerson"],
        "purpose": purpose,
        "legal_basis": "test",
        "allowed_fields": ["/name"],
        "subject_required": true,
        "usage": "permanent",
        "valid_from": "2026-01-01T00:00:00Z",
        "valid_until": "2099-01-01T00:00:00Z",
        "authorisation_required": false
    });
    for (k, v) in extra.as_object().unwrap() {
        terms[k] = v.clone();
    }
    let id = f
        .registry
        .post("/v1/contracts", Some(&f.demo.sii_token), &terms)
        .await
        .ok(201)["id"]
        .as_str()
        .unwrap()
        .to_string();
    f.registry
        .post(
            &format!("/v1/contracts/{id}/actions"),
            Some(&f.demo.registro_civil_token),
            &json!({"action": "approve"}),
        )
        .await
        .ok(200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    id
}

#[tokio::test]
async fn volume_and_single_use_are_enforced_by_the_provider_across_restarts() {
    let f = TestFederation::start().await;
    let limited = approved_contract(
        &f,
        "two-checks-a-day",
        json!({"volume_limit": {"max_requests": 2, "period": "day"}}),
    )
    .await;
    let once = approved_contract(&f, "one-check-only", json!({"usage": "single-use"})).await;
    for _ in 0..2 {
        let r = f
            .call(
                Method::GET,
                "/persons/12345678-5",
                &[("enlace-contract", &limited)],
            )
            .await;
        assert_eq!(r.ok(200), &json!({"name": "María José Pérez Soto"}));
    }
    let r = f
        .call(
            Method::GET,
            "/persons/12345678-5",
            &[("enlace-contract", &once)],
        )
        .await;
    r.ok(200);
    let r = f
        .call(
            Method::GET,
            "/persons/12345678-5",
            &[("enlace-contract", &limited)],
        )
        .await;
    r.problem("volume-exceeded", 429);
    // A restarted provider node remembers both: the counts were committed with the log.
    let f = f.restart_provider().await;
    let r = f
        .call(
            Method::GET,
            "/persons/12345678-5",
            &[("enlace-contract", &limited)],
        )
        .await;
    r.problem("volume-exceeded", 429);
    let r = f
        .call(
            Method::GET,
            "/persons/12345678-5",
            &[("enlace-contract", &once)],
        )
        .await;
    let p = r.problem("contract-expired", 403);
    assert!(
        p["detail"].as_str().unwrap_or("").contains("single use"),
        "{p}"
    );
    f.stop().await;
}

#[tokio::test]
async fn the_configuration_expired_fails_closed() {
    // Configurations valid for 3 s, reissued only every 10 s: the nodes' copy expires.
    let f = TestFederation::start_custom(3, |_, _| {}).await;
    f.call(Method::GET, "/persons/12345678-5", &[])
        .await
        .ok(200);
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let r = f.call(Method::GET, "/persons/12345678-5", &[]).await;
    r.problem("configuration-expired", 503);
    assert_eq!(culprit(&r), "this-node");
    let ready = f
        .registry
        .http
        .get(format!("http://{}/readyz", f.consumer.admin_addr))
        .send()
        .await
        .unwrap();
    assert_eq!(
        ready.status(),
        503,
        "not ready without an unexpired configuration"
    );
    f.stop().await;
}

#[tokio::test]
async fn stopping_a_node_drains_exchanges_in_flight() {
    let f = TestFederation::start().await;
    // This RUN makes the sample backend answer after 3 s (with a 404: nobody has that RUN).
    let url = format!(
        "{}/r1/{}/v1/persons/22222222-2",
        f.consumer_url,
        demo::PERSONAS
    );
    let req = f
        .registry
        .http
        .get(url)
        .bearer_auth(&f.client_token)
        .header("enlace-client", demo::CONSUMER_SUBSYSTEM)
        .header("enlace-contract", &f.demo.contract)
        .header("enlace-subject", "CL-RUN:22222222-2")
        .send();
    let in_flight = tokio::spawn(req);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    let TestFederation {
        registry,
        provider,
        consumer,
        consumer_url,
        client_token,
        ..
    } = f;
    consumer.stop().await;
    let resp = in_flight
        .await
        .unwrap()
        .expect("the exchange in flight was answered, not cut");
    assert_eq!(resp.status(), 404, "the backend's answer came through");
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "stop waited for it"
    );
    // The stopped node accepts nothing new.
    let after = registry
        .http
        .get(format!("{consumer_url}/meta/allowed"))
        .bearer_auth(&client_token)
        .send()
        .await;
    assert!(after.is_err(), "the listener is closed");
    provider.stop().await;
    registry.running.stop().await;
}

#[tokio::test]
async fn an_expired_contract_is_refused_and_a_stopped_registry_changes_nothing() {
    let f = TestFederation::start().await;
    // A contract valid for two more seconds.
    let now = time::OffsetDateTime::now_utc();
    let fmt = |t: time::OffsetDateTime| {
        t.format(&time::format_description::well_known::Rfc3339)
            .unwrap()
    };
    let terms = json!({
        "consumer": demo::CONSUMER_SUBSYSTEM,
        "provider": demo::PERSONAS,
        "versions": {"min": "v1.0", "max": "v1.9999"},
        "operations": ["getPerson"],
        "purpose": "short-lived-check",
        "legal_basis": "test",
        "allowed_fields": ["/name"],
        "subject_required": true,
        "usage": "permanent",
        "valid_from": fmt(now - time::Duration::minutes(1)),
        "valid_until": fmt(now + time::Duration::seconds(2)),
        "authorisation_required": false
    });
    let id = f
        .registry
        .post("/v1/contracts", Some(&f.demo.sii_token), &terms)
        .await
        .ok(201)["id"]
        .as_str()
        .unwrap()
        .to_string();
    f.registry
        .post(
            &format!("/v1/contracts/{id}/actions"),
            Some(&f.demo.registro_civil_token),
            &json!({"action": "approve"}),
        )
        .await
        .ok(200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = f
        .call(
            Method::GET,
            "/persons/12345678-5",
            &[("enlace-contract", &id)],
        )
        .await;
    assert_eq!(r.ok(200), &json!({"name": "María José Pérez Soto"}));
    // With the registry gone, the nodes keep working on their verified configuration...
    let TestFederation {
        registry,
        demo: d,
        provider,
        consumer,
        consumer_url,
        client_token,
        ..
    } = f;
    let http = registry.http.clone();
    registry.running.stop().await;
    let call = |contract: String| {
        let (http, url, token) = (
            http.clone(),
            format!("{consumer_url}/r1/{}/v1/persons/12345678-5", demo::PERSONAS),
            client_token.clone(),
        );
        async move {
            let resp = http
                .get(url)
                .bearer_auth(token)
                .header("enlace-client", demo::CONSUMER_SUBSYSTEM)
                .header("enlace-contract", contract)
                .header("enlace-subject", demo::PERSON)
                .send()
                .await
                .unwrap();
            (resp.status().as_u16(), resp.json::<Value>().await.unwrap())
        }
    };
    let (status, _) = call(d.contract.clone()).await;
    assert_eq!(status, 200, "served from the cached configuration");
    // ...and the short contract expires on time, without the registry.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let (status, body) = call(id).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["type"], "urn:enlace:problem:contract-expired");
    consumer.stop().await;
    provider.stop().await;
}

#[tokio::test]
async fn a_request_captured_before_a_provider_restart_cannot_be_replayed_after_it() {
    let f = TestFederation::start().await;
    let sii = f.node_keys("60803000-K", demo::CONSUMER_NODE);
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let req = f.signed_request(&sii, "GET", "/persons/12345678-5", b"", &[], now);
    let copy = {
        let mut c = http::Request::new(req.body().clone());
        *c.method_mut() = req.method().clone();
        *c.uri_mut() = req.uri().clone();
        *c.headers_mut() = req.headers().clone();
        c
    };
    let (status, _, _) = f.send_to_provider(&sii, req).await;
    assert_eq!(status, 200);
    // Restart the provider node: its in-memory replay memory starts empty.
    let f = f.restart_provider().await;
    let (status, _, body) = f.send_to_provider(&sii, copy).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["type"], "urn:enlace:problem:replay");
    f.stop().await;
}

/// The consumer listener describes itself: `/meta/openapi.json` is served without a token (as
/// the registry's `/openapi.json` is), and the metaservices answer what it says they answer.
#[tokio::test]
async fn the_consumer_listener_serves_its_openapi_document_and_answers_match_it() {
    let f = TestFederation::start().await;
    let get = |path: &str, token: Option<&str>| {
        let mut req = f.registry.http.get(format!("{}{path}", f.consumer_url));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        async move {
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            let ct = resp.headers()["content-type"].to_str().unwrap().to_string();
            (status, ct, resp.json::<Value>().await.unwrap())
        }
    };
    let (status, ct, doc) = get("/meta/openapi.json", None).await;
    assert_eq!((status, ct.as_str()), (200, "application/json"));
    assert_eq!(doc["openapi"], "3.1.0");
    let response_schema = |path: &str| {
        let schema = json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "components": doc["components"],
            "allOf": [doc["paths"][path]["get"]["responses"]["200"]["content"]["application/json"]["schema"]],
        });
        jsonschema::options()
            .with_draft(jsonschema::Draft::Draft202012)
            .offline()
            .build(&schema)
            .unwrap_or_else(|e| panic!("{path}: {e}"))
    };
    for path in ["/meta/members", "/meta/services", "/meta/allowed"] {
        let (status, ct, body) = get(path, Some(&f.client_token)).await;
        assert_eq!((status, ct.as_str()), (200, "application/json"), "{path}");
        let errors: Vec<String> = response_schema(path)
            .iter_errors(&body)
            .map(|e| e.to_string())
            .collect();
        assert!(errors.is_empty(), "{path}: {errors:?}\n{body:#}");
    }
    // Everything else still needs the backend's token, and says so with a problem.
    let (status, ct, body) = get("/meta/members", None).await;
    assert_eq!((status, ct.as_str()), (401, "application/problem+json"));
    assert!(body["detail"].is_string());

    // The admin listener describes itself too, and `/healthz` says what its body is.
    let admin = format!("http://{}", f.consumer.admin_addr);
    let resp = f
        .registry
        .http
        .get(format!("{admin}/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let admin_doc: Value = resp.json().await.unwrap();
    assert!(admin_doc["paths"]["/readyz"]["get"].is_object());
    let health = f
        .registry
        .http
        .get(format!("{admin}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.headers()["content-type"], "text/plain");
    f.stop().await;
}

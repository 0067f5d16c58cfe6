//! The registry over real HTTP on loopback: members, subsystems, nodes and certificates,
//! services and compatibility, concepts and the once-only check, contracts, roles, the audit
//! trail, and refusals that change nothing.

use enlace_registry::demo;
use enlace_tests::{TestRegistry, start_registry};
use reqwest::Method;
use serde_json::{Value, json};

const RC: &str = demo::REGISTRO_CIVIL;
const SII: &str = demo::SII;

async fn member_with_token(r: &TestRegistry, id: &str, name: &str) -> String {
    r.post(
        "/v1/members",
        Some(r.admin()),
        &json!({"id": id, "name": name}),
    )
    .await
    .ok(201);
    let t = r
        .post(
            &format!("/v1/members/{id}/tokens"),
            Some(r.admin()),
            &json!({"label": "test"}),
        )
        .await;
    t.ok(201)["token"].as_str().unwrap().to_string()
}

async fn approved_subsystem(r: &TestRegistry, token: &str, id: &str) {
    r.post("/v1/subsystems", Some(token), &json!({"id": id}))
        .await
        .ok(201);
    r.post(
        &format!("/v1/subsystems/{id}/approve"),
        Some(r.admin()),
        &json!({}),
    )
    .await
    .ok(200);
}

async fn upload(
    r: &TestRegistry,
    token: &str,
    service: &str,
    version: &str,
    ct: &str,
    body: &[u8],
) -> enlace_tests::Reply {
    r.send(
        Method::PUT,
        &format!("/v1/services/{service}/versions/{version}"),
        Some(token),
        ct,
        body.to_vec(),
    )
    .await
}

fn sample(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/../openapi/samples/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

#[tokio::test]
async fn members_need_the_federation_admin_and_valid_identifiers() {
    let r = start_registry().await;
    // No token, a wrong token, a member admin: refused, and the refusals are audited.
    r.post("/v1/members", None, &json!({"id": RC, "name": "RC"}))
        .await
        .problem("unauthenticated", 401);
    r.post(
        "/v1/members",
        Some("enl_nope"),
        &json!({"id": RC, "name": "RC"}),
    )
    .await
    .problem("unauthenticated", 401);
    // A changed check digit names the field and the rule.
    let bad = r
        .post(
            "/v1/members",
            Some(r.admin()),
            &json!({"id": "CL-DEV/GOV/61002000-4", "name": "RC"}),
        )
        .await;
    let body = bad.problem("invalid-identifier", 400);
    assert_eq!(body["field"], "member.code");
    assert!(
        body["rule"].as_str().unwrap().contains("modulo-11"),
        "{body}"
    );
    // Another instance, an unknown JSON member, the wrong media type.
    r.post(
        "/v1/members",
        Some(r.admin()),
        &json!({"id": "CL/GOV/61002000-3", "name": "RC"}),
    )
    .await
    .problem("invalid-identifier", 400);
    r.post(
        "/v1/members",
        Some(r.admin()),
        &json!({"id": RC, "name": "RC", "admin": true}),
    )
    .await
    .problem("invalid-request", 400);
    r.send(
        Method::POST,
        "/v1/members",
        Some(r.admin()),
        "text/plain",
        b"{}".to_vec(),
    )
    .await
    .problem("unsupported-media-type", 415);
    // An oversized body.
    let huge = json!({"id": RC, "name": "x".repeat(300_000)});
    r.post("/v1/members", Some(r.admin()), &huge)
        .await
        .problem("body-too-large", 413);
    // Nothing changed.
    assert_eq!(r.get("/v1/members", None).await.ok(200), &json!([]));
    let audit = r.get("/v1/audit", Some(r.admin())).await;
    let outcomes: Vec<&str> = audit
        .ok(200)
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(
        outcomes,
        [
            "unauthenticated",
            "unauthenticated",
            "invalid-identifier",
            "invalid-identifier",
            "invalid-request",
            "unsupported-media-type",
            "body-too-large"
        ]
    );
    // The federation admin creates it; a second time is a conflict.
    let token = member_with_token(&r, RC, "Servicio de Registro Civil e Identificación").await;
    assert!(token.starts_with("enl_"));
    r.post(
        "/v1/members",
        Some(r.admin()),
        &json!({"id": RC, "name": "again"}),
    )
    .await
    .problem("already-exists", 409);
    // A member admin cannot create members or tokens.
    r.post(
        "/v1/members",
        Some(&token),
        &json!({"id": SII, "name": "SII"}),
    )
    .await
    .problem("forbidden", 403);
    r.post(
        &format!("/v1/members/{RC}/tokens"),
        Some(&token),
        &json!({"label": "x"}),
    )
    .await
    .problem("forbidden", 403);
    let m = r.get(&format!("/v1/members/{RC}"), None).await;
    assert_eq!(
        m.ok(200)["name"],
        "Servicio de Registro Civil e Identificación"
    );
    r.get("/v1/members/CL-DEV/GOV/60803000-K", None)
        .await
        .problem("not-found", 404);
}

#[tokio::test]
async fn a_member_admin_never_acts_for_another_member() {
    let r = start_registry().await;
    let rc = member_with_token(&r, RC, "RC").await;
    let sii = member_with_token(&r, SII, "SII").await;
    // SII's admin registering a subsystem or node of Registro Civil.
    refused_unchanged(
        &r,
        "/v1/subsystems",
        &sii,
        &json!({"id": demo::PROVIDER_SUBSYSTEM}),
    )
    .await;
    let node: enlace_core::NodeId = demo::PROVIDER_NODE.parse().unwrap();
    let keys = enlace_certs::node_init(&node).unwrap();
    let node_req = json!({"id": demo::PROVIDER_NODE, "address": "127.0.0.1:8443", "tls_csr": keys.tls_csr_pem, "signing_csr": keys.signing_csr_pem});
    refused_unchanged(&r, "/v1/nodes", &sii, &node_req).await;
    // Approvals are the federation admin's, not a member's.
    approved_subsystem(&r, &rc, demo::PROVIDER_SUBSYSTEM).await;
    r.post(
        "/v1/subsystems",
        Some(&sii),
        &json!({"id": demo::CONSUMER_SUBSYSTEM}),
    )
    .await
    .ok(201);
    refused_unchanged(
        &r,
        &format!("/v1/subsystems/{}/approve", demo::CONSUMER_SUBSYSTEM),
        &sii,
        &json!({}),
    )
    .await;
    // Registro Civil's node, approved: SII's admin can neither renew nor revoke it, nor
    // withdraw Registro Civil's subsystem.
    r.post("/v1/nodes", Some(&rc), &node_req).await.ok(201);
    r.post(
        &format!("/v1/nodes/{}/approve", demo::PROVIDER_NODE),
        Some(r.admin()),
        &json!({}),
    )
    .await
    .ok(200);
    let keys2 = enlace_certs::node_init(&node).unwrap();
    refused_unchanged(
        &r,
        &format!("/v1/nodes/{}/renew", demo::PROVIDER_NODE),
        &sii,
        &json!({"tls_csr": keys2.tls_csr_pem, "signing_csr": keys2.signing_csr_pem}),
    )
    .await;
    refused_unchanged(
        &r,
        &format!("/v1/nodes/{}/revoke", demo::PROVIDER_NODE),
        &sii,
        &json!({"reason": "hostile"}),
    )
    .await;
    refused_unchanged(
        &r,
        &format!("/v1/subsystems/{}/revoke", demo::PROVIDER_SUBSYSTEM),
        &sii,
        &json!({"reason": "hostile"}),
    )
    .await;
    // Publishing Registro Civil's service with SII's token.
    let before = state(&r).await;
    upload(
        &r,
        &sii,
        demo::PERSONAS,
        "v1",
        "application/json",
        &sample("personas-v1.json"),
    )
    .await
    .problem("forbidden", 403);
    assert_eq!(state(&r).await, before, "nothing changed");
    // Claiming a concept for Registro Civil's service.
    upload(
        &r,
        &rc,
        demo::PERSONAS,
        "v1",
        "application/json",
        &sample("personas-v1.json"),
    )
    .await
    .ok(201);
    let claim = json!({"id": "person.name", "service": demo::PERSONAS, "operation": "getPerson", "field": "/name"});
    refused_unchanged(&r, "/v1/concepts", &sii, &claim).await;
    // Proposing a contract in Registro Civil's name.
    let mut terms = contract_terms();
    terms["consumer"] = json!(demo::PROVIDER_SUBSYSTEM);
    refused_unchanged(&r, "/v1/contracts", &sii, &terms).await;
    assert_eq!(r.get("/v1/concepts", None).await.ok(200), &json!([]));
}

/// What the registry holds, as the federation admin sees it (not the audit trail, which
/// records the refusals themselves).
async fn state(r: &TestRegistry) -> Value {
    let mut out = serde_json::Map::new();
    for path in [
        "/v1/members",
        "/v1/subsystems",
        "/v1/nodes",
        "/v1/services",
        "/v1/contracts",
        "/v1/concepts",
    ] {
        out.insert(
            path.into(),
            r.get(path, Some(r.admin())).await.ok(200).clone(),
        );
    }
    Value::Object(out)
}

/// POSTs as `token`, expects `forbidden`, and checks that nothing changed.
async fn refused_unchanged(r: &TestRegistry, path: &str, token: &str, body: &Value) {
    let before = state(r).await;
    r.post(path, Some(token), body)
        .await
        .problem("forbidden", 403);
    assert_eq!(state(r).await, before, "{path}: nothing changed");
}

fn contract_terms() -> Value {
    json!({
        "consumer": demo::CONSUMER_SUBSYSTEM,
        "provider": demo::PERSONAS,
        "versions": {"min": "v1.0", "max": "v1.9999"},
        "operations": ["getPerson"],
        "purpose": "tax-refund-eligibility",
        "legal_basis": "DL 824",
        "allowed_fields": ["/name", "/address"],
        "subject_required": true,
        "usage": "permanent",
        "volume_limit": {"max_requests": 1000, "period": "day"},
        "valid_from": "2026-01-01T00:00:00Z",
        "valid_until": "2099-01-01T00:00:00Z",
        "authorisation_required": false
    })
}

#[tokio::test]
async fn nodes_get_short_lived_certificates_naming_them_and_can_renew_and_be_revoked() {
    let r = start_registry().await;
    let rc = member_with_token(&r, RC, "RC").await;
    let node: enlace_core::NodeId = demo::PROVIDER_NODE.parse().unwrap();
    let keys = enlace_certs::node_init(&node).unwrap();
    let mut req = json!({"id": demo::PROVIDER_NODE, "address": "127.0.0.1:8443", "tls_csr": keys.tls_csr_pem, "signing_csr": keys.signing_csr_pem});
    // A bad address, a garbage CSR: refused.
    req["address"] = json!("no port");
    r.post("/v1/nodes", Some(&rc), &req)
        .await
        .problem("invalid-request", 400);
    req["address"] = json!("127.0.0.1:8443");
    let mut garbage = req.clone();
    garbage["tls_csr"] =
        json!("-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n");
    r.post("/v1/nodes", Some(&rc), &garbage)
        .await
        .problem("invalid-request", 400);
    let pending = r.post("/v1/nodes", Some(&rc), &req).await;
    assert_eq!(pending.ok(201)["state"], "pending");
    assert!(pending.body["tls_certificate"].is_null());
    // A member admin cannot approve its own node.
    r.post(
        &format!("/v1/nodes/{}/approve", demo::PROVIDER_NODE),
        Some(&rc),
        &json!({}),
    )
    .await
    .problem("forbidden", 403);
    let approved = r
        .post(
            &format!("/v1/nodes/{}/approve", demo::PROVIDER_NODE),
            Some(r.admin()),
            &json!({}),
        )
        .await;
    let approved = approved.ok(200).clone();
    let tls = enlace_certs::cert_info(approved["tls_certificate"].as_str().unwrap()).unwrap();
    assert_eq!(tls.uris, vec![node.uri()]);
    let lifetime = tls.not_after - tls.not_before;
    assert!(
        lifetime <= time::Duration::hours(25),
        "short-lived: {lifetime}"
    );
    let signing =
        enlace_certs::cert_info(approved["signing_certificate"].as_str().unwrap()).unwrap();
    assert_eq!(signing.uris, vec![node.uri()]);
    assert_ne!(
        tls.spki_sha256_hex, signing.spki_sha256_hex,
        "separate keys"
    );
    // Renewal with new keys gives new certificates.
    let keys2 = enlace_certs::node_init(&node).unwrap();
    let renewed = r
        .post(
            &format!("/v1/nodes/{}/renew", demo::PROVIDER_NODE),
            Some(&rc),
            &json!({"tls_csr": keys2.tls_csr_pem, "signing_csr": keys2.signing_csr_pem}),
        )
        .await;
    assert_ne!(renewed.ok(200)["tls_serial"], approved["tls_serial"]);
    // Revocation puts the current serials into the configuration's CRL.
    let revoked = r
        .post(
            &format!("/v1/nodes/{}/revoke", demo::PROVIDER_NODE),
            Some(&rc),
            &json!({"reason": "key lost"}),
        )
        .await;
    let serial = revoked.ok(200)["tls_serial"].as_str().unwrap().to_string();
    r.post(
        &format!("/v1/nodes/{}/revoke", demo::PROVIDER_NODE),
        Some(&rc),
        &json!({"reason": "again"}),
    )
    .await
    .problem("invalid-transition", 409);
    let crl = r
        .http
        .get(format!("{}/v1/crl", r.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(crl.contains("BEGIN X509 CRL"));
    let ca = r
        .http
        .get(format!("{}/v1/ca", r.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let trust = enlace_certs::TrustStore::new(&[ca], Some(&crl)).unwrap();
    let cert = renewed.body["tls_certificate"].as_str().unwrap();
    let err = enlace_certs::verify_signer(
        &trust,
        renewed.body["signing_certificate"].as_str().unwrap(),
        &node.uri(),
        time::OffsetDateTime::now_utc(),
    );
    assert!(err.is_err(), "revoked signing certificate refused");
    assert!(!serial.is_empty() && cert.contains("BEGIN CERTIFICATE"));
    // The certificates the renewal replaced are revoked with the node too: a stolen old key
    // does not outlive the revocation.
    let old = enlace_certs::verify_signer(
        &trust,
        approved["signing_certificate"].as_str().unwrap(),
        &node.uri(),
        time::OffsetDateTime::now_utc(),
    );
    assert!(
        old.is_err(),
        "the pre-renewal signing certificate is revoked too"
    );
}

#[tokio::test]
async fn a_renewal_can_revoke_the_certificates_it_replaces_at_once() {
    let r = start_registry().await;
    let rc = member_with_token(&r, RC, "RC").await;
    let node: enlace_core::NodeId = demo::PROVIDER_NODE.parse().unwrap();
    let keys = enlace_certs::node_init(&node).unwrap();
    r.post(
        "/v1/nodes",
        Some(&rc),
        &json!({"id": demo::PROVIDER_NODE, "address": "127.0.0.1:1",
                "tls_csr": keys.tls_csr_pem, "signing_csr": keys.signing_csr_pem}),
    )
    .await
    .ok(201);
    let first = r
        .post(
            &format!("/v1/nodes/{}/approve", demo::PROVIDER_NODE),
            Some(r.admin()),
            &json!({}),
        )
        .await
        .ok(200)
        .clone();
    let keys2 = enlace_certs::node_init(&node).unwrap();
    let second = r
        .post(
            &format!("/v1/nodes/{}/renew", demo::PROVIDER_NODE),
            Some(&rc),
            &json!({"tls_csr": keys2.tls_csr_pem, "signing_csr": keys2.signing_csr_pem,
                    "revoke_previous": "the old signing key was copied to a laptop that was stolen"}),
        )
        .await
        .ok(200)
        .clone();
    let get = |path: &'static str| {
        let url = format!("{}{path}", r.url);
        let http = r.http.clone();
        async move { http.get(url).send().await.unwrap().text().await.unwrap() }
    };
    let trust =
        enlace_certs::TrustStore::new(&[get("/v1/ca").await], Some(&get("/v1/crl").await)).unwrap();
    let check = |cert: &Value| {
        enlace_certs::verify_signer(
            &trust,
            cert["signing_certificate"].as_str().unwrap(),
            &node.uri(),
            time::OffsetDateTime::now_utc(),
        )
    };
    assert!(
        check(&first).is_err(),
        "the replaced certificate is revoked"
    );
    assert!(check(&second).is_ok(), "the new one is not");
    assert_eq!(second["revoked"], false);
}

#[tokio::test]
async fn services_are_classified_checked_for_compatibility_and_bounded() {
    let r = start_registry().await;
    let rc = member_with_token(&r, RC, "RC").await;
    // The subsystem must be approved first.
    r.post(
        "/v1/subsystems",
        Some(&rc),
        &json!({"id": demo::PROVIDER_SUBSYSTEM}),
    )
    .await
    .ok(201);
    upload(
        &r,
        &rc,
        demo::PERSONAS,
        "v1",
        "application/json",
        &sample("personas-v1.json"),
    )
    .await
    .problem("invalid-transition", 409);
    r.post(
        &format!("/v1/subsystems/{}/approve", demo::PROVIDER_SUBSYSTEM),
        Some(r.admin()),
        &json!({}),
    )
    .await
    .ok(200);

    let v1 = upload(
        &r,
        &rc,
        demo::PERSONAS,
        "v1",
        "application/json",
        &sample("personas-v1.json"),
    )
    .await;
    let ops = v1.ok(201)["operations"].as_array().unwrap().clone();
    let get_person = ops.iter().find(|o| o["id"] == "getPerson").unwrap();
    let class_of = |p: &str| {
        get_person["fields"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["pointer"] == p)
            .map(|f| f["class"].clone())
    };
    assert_eq!(class_of("/healthInsurance"), Some(json!("sensitive")));
    assert_eq!(class_of("/address/street"), Some(json!("personal")));
    // Versions are immutable.
    upload(
        &r,
        &rc,
        demo::PERSONAS,
        "v1.0",
        "application/json",
        &sample("personas-v1.json"),
    )
    .await
    .problem("already-exists", 409);
    // A compatible minor version is accepted.
    upload(
        &r,
        &rc,
        demo::PERSONAS,
        "v1.1",
        "application/json",
        &sample("personas-v1.1.json"),
    )
    .await
    .ok(201);
    // A breaking change within the major version is refused with a report naming each break.
    let broken = upload(
        &r,
        &rc,
        demo::PERSONAS,
        "v1.2",
        "application/json",
        &sample("personas-v2-breaking.json"),
    )
    .await;
    let body = broken.problem("incompatible-version", 409);
    let kinds: Vec<&str> = body["breaks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["kind"].as_str().unwrap())
        .collect();
    for k in ["removed-field", "type-changed", "newly-required-input"] {
        assert!(kinds.contains(&k), "{k} in {kinds:?}");
    }
    // …and accepted as a new major version.
    upload(
        &r,
        &rc,
        demo::PERSONAS,
        "v2",
        "application/json",
        &sample("personas-v2-breaking.json"),
    )
    .await
    .ok(201);

    // A remote $ref is refused and nothing is fetched.
    let mut doc: Value = serde_json::from_slice(&sample("personas-v1.json")).unwrap();
    doc["components"]["schemas"]["Evil"] = json!({"$ref": "https://attacker.example/schema.json"});
    let other: enlace_core::ServiceId = format!("{}/otro", demo::PROVIDER_SUBSYSTEM)
        .parse()
        .unwrap();
    upload(
        &r,
        &rc,
        &other.to_string(),
        "v1",
        "application/json",
        doc.to_string().as_bytes(),
    )
    .await
    .problem("remote-reference", 422);
    // An unclassified response field.
    let mut doc: Value = serde_json::from_slice(&sample("personas-v1.json")).unwrap();
    let text = doc
        .to_string()
        .replace("\"x-enlace-class\"", "\"x-not-a-class\"");
    doc = serde_json::from_str(&text).unwrap();
    let unclassified = upload(
        &r,
        &rc,
        &other.to_string(),
        "v1",
        "application/json",
        doc.to_string().as_bytes(),
    )
    .await;
    assert!(
        !unclassified.problem("unclassified-field", 422)["fields"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    // Oversized, not a document, an unknown media type.
    let huge = vec![b' '; enlace_description::MAX_DESCRIPTION_BYTES + 100 * 1024];
    upload(&r, &rc, &other.to_string(), "v1", "application/json", &huge)
        .await
        .problem("body-too-large", 413);
    // One limit, one number: a byte over it is refused naming the same limit the parser uses.
    let just_over = vec![b' '; enlace_description::MAX_DESCRIPTION_BYTES + 1];
    let reply = upload(
        &r,
        &rc,
        &other.to_string(),
        "v1",
        "application/json",
        &just_over,
    )
    .await;
    assert_eq!(
        reply.problem("body-too-large", 413)["limit"],
        enlace_description::MAX_DESCRIPTION_BYTES
    );
    upload(
        &r,
        &rc,
        &other.to_string(),
        "v1",
        "application/json",
        b"{not json",
    )
    .await
    .problem("invalid-service-description", 422);
    upload(
        &r,
        &rc,
        &other.to_string(),
        "v1",
        "application/x-protobuf",
        b"\xff\xff\xff garbage",
    )
    .await
    .problem("invalid-service-description", 422);
    upload(&r, &rc, &other.to_string(), "v1", "text/html", b"<html>")
        .await
        .problem("unsupported-media-type", 415);
    let versions = r.get(&format!("/v1/services/{other}"), None).await;
    assert_eq!(versions.ok(200), &json!([]), "refusals changed nothing");

    // YAML uploads, descriptor sets and .proto sources are all accepted.
    let yaml = serde_norway_to_yaml(&serde_json::from_slice(&sample("personas-v1.json")).unwrap());
    upload(
        &r,
        &rc,
        &other.to_string(),
        "v1",
        "application/yaml",
        yaml.as_bytes(),
    )
    .await
    .ok(201);
    let grpc = upload(
        &r,
        &rc,
        demo::PERSONAS_GRPC,
        "v1",
        "application/x-protobuf",
        enlace_proto::PERSONAS_DESCRIPTOR_SET,
    )
    .await;
    assert!(
        grpc.ok(201)["operations"]
            .as_array()
            .unwrap()
            .iter()
            .any(|o| o["id"] == "personas.v1.Personas/GetPerson")
    );
    let sources = json!({"files": {"personas/v1/personas.proto": enlace_proto::PERSONAS_PROTO}});
    let from_src = format!("{}/personas-src", demo::PROVIDER_SUBSYSTEM);
    upload(
        &r,
        &rc,
        &from_src,
        "v1",
        "application/vnd.enlace.proto-sources+json",
        sources.to_string().as_bytes(),
    )
    .await
    .ok(201);
    // A reused protobuf field number within the major version is refused.
    let reused = enlace_proto::PERSONAS_PROTO.replace(
        "string name = 2 [(enlace.class) = \"personal\"];",
        "int32 age = 2 [(enlace.class) = \"personal\"];",
    );
    let sources = json!({"files": {"personas/v1/personas.proto": reused}});
    let refused = upload(
        &r,
        &rc,
        &from_src,
        "v1.1",
        "application/vnd.enlace.proto-sources+json",
        sources.to_string().as_bytes(),
    )
    .await;
    let kinds: Vec<String> = refused.problem("incompatible-version", 409)["breaks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["kind"].as_str().unwrap().to_string())
        .collect();
    assert!(
        kinds.iter().any(|k| k == "reused-field-number"),
        "{kinds:?}"
    );
    // The stored description is served by digest.
    let digest = v1.body["digest"].as_str().unwrap();
    let stored = r
        .http
        .get(format!("{}/v1/descriptions/{digest}", r.url))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(enlace_description::sha256_hex(&stored), digest);
}

fn serde_norway_to_yaml(v: &Value) -> String {
    // JSON is valid YAML 1.2; indent it as block YAML would not add anything for the parser.
    let mut s = String::from("# uploaded as YAML\n");
    s.push_str(&serde_json::to_string_pretty(v).unwrap());
    s
}

#[tokio::test]
async fn concepts_have_one_source_and_the_once_only_check_finds_them() {
    let r = start_registry().await;
    let d = r.seed_demo().await;
    let rc = &d.registro_civil_token;
    // A second claim of a concept is refused, naming the current source.
    let other = format!("{}/otro", demo::PROVIDER_SUBSYSTEM);
    upload(
        &r,
        rc,
        &other,
        "v1",
        "application/json",
        &sample("personas-v1.json"),
    )
    .await
    .ok(201);
    let claim = json!({"id": "person.address", "service": other, "operation": "getPerson", "field": "/address"});
    let refused = r.post("/v1/concepts", Some(rc), &claim).await;
    assert_eq!(
        refused.problem("concept-claimed", 409)["current_source"],
        demo::PERSONAS
    );
    // A field the service does not have.
    let claim = json!({"id": "person.shoe_size", "service": demo::PERSONAS, "operation": "getPerson", "field": "/shoeSize"});
    r.post("/v1/concepts", Some(rc), &claim)
        .await
        .problem("unknown-field", 422);

    let form = std::fs::read(format!(
        "{}/../deploy/samples/form-subsidio.schema.json",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let path = format!("/v1/once-only-check?consumer={}", demo::CONSUMER_SUBSYSTEM);
    let report = r
        .send(Method::POST, &path, None, "application/json", form)
        .await;
    let report = report.ok(200);
    let held: Vec<(&str, &str, Option<&str>)> = report["held"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h["field"].as_str().unwrap(),
                h["concept"].as_str().unwrap(),
                h["contract"].as_str(),
            )
        })
        .collect();
    assert!(
        held.contains(&("/nombre", "person.name", Some(d.contract.as_str()))),
        "{held:?}"
    );
    assert!(
        held.contains(&("/domicilio", "person.address", Some(d.contract.as_str()))),
        "{held:?}"
    );
    assert!(
        held.contains(&("/fecha_nacimiento", "person.birth_date", None)),
        "{held:?}"
    );
    assert!(
        held.contains(&("/estado", "person.civil_status", None)),
        "{held:?}"
    );
    let not_held: Vec<&str> = report["not_held"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        not_held.contains(&"/telefono") && not_held.contains(&"/cuenta_bancaria"),
        "{not_held:?}"
    );
    // A form that points elsewhere is refused, nothing fetched.
    let evil =
        json!({"type": "object", "properties": {"x": {"$ref": "https://attacker.example/x.json"}}});
    r.post("/v1/once-only-check", None, &evil)
        .await
        .problem("remote-reference", 422);
    // `$ref`s that loop name no schema: refused, not answered as a form with no fields.
    for looping in [
        json!({"$ref": "#"}),
        json!({"$ref": "#/$defs/a", "$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"$ref": "#/$defs/a"}}}),
        json!({"type": "object", "properties": {"x": {"$ref": "#/properties/x"}}}),
    ] {
        let reply = r.post("/v1/once-only-check", None, &looping).await;
        let body = reply.problem("invalid-request", 400);
        assert!(body["detail"].as_str().unwrap().contains("loop"), "{body}");
    }
}

#[tokio::test]
async fn contracts_follow_their_lifecycle_and_name_only_real_fields() {
    let r = start_registry().await;
    let d = r.seed_demo().await;
    let (rc, sii) = (&d.registro_civil_token, &d.sii_token);
    // A field the service does not have, an operation it does not have.
    let mut terms = contract_terms();
    terms["allowed_fields"] = json!(["/name", "/shoeSize"]);
    let body = r.post("/v1/contracts", Some(sii), &terms).await;
    assert_eq!(
        body.problem("unknown-field", 422)["fields"],
        json!(["/shoeSize"])
    );
    let mut terms = contract_terms();
    terms["operations"] = json!(["deletePerson"]);
    r.post("/v1/contracts", Some(sii), &terms)
        .await
        .problem("unknown-operation", 422);
    // A sensitive field needs the person's authorisation.
    let mut terms = contract_terms();
    terms["allowed_fields"] = json!(["/name", "/healthInsurance"]);
    r.post("/v1/contracts", Some(sii), &terms)
        .await
        .problem("invalid-contract", 422);
    terms["authorisation_required"] = json!(true);
    r.post("/v1/contracts", Some(sii), &terms).await.ok(201);
    // Bad shapes: purpose, dates, unknown keys.
    let mut terms = contract_terms();
    terms["purpose"] = json!("Tax Refund!");
    r.post("/v1/contracts", Some(sii), &terms)
        .await
        .problem("invalid-contract", 422);
    let mut terms = contract_terms();
    terms["valid_until"] = json!("2020-01-01T00:00:00Z");
    r.post("/v1/contracts", Some(sii), &terms)
        .await
        .problem("invalid-contract", 422);
    let mut terms = contract_terms();
    terms["approved"] = json!(true);
    r.post("/v1/contracts", Some(sii), &terms)
        .await
        .problem("invalid-request", 400);
    let mut terms = contract_terms();
    terms["versions"] = json!({"min": "v7.0", "max": "v7.9"});
    r.post("/v1/contracts", Some(sii), &terms)
        .await
        .problem("unknown-service", 404);
    // Of all those proposals only the valid one was stored (besides the demo's two).
    let listed = r.get("/v1/contracts", Some(sii)).await;
    assert_eq!(listed.ok(200).as_array().unwrap().len(), 3);

    // The lifecycle over HTTP.
    let proposed = r.post("/v1/contracts", Some(sii), &contract_terms()).await;
    let id = proposed.ok(201)["id"].as_str().unwrap().to_string();
    assert_eq!(proposed.body["state"], "proposed");
    let act = |action: Value, token: String| {
        let r = &r;
        let id = id.clone();
        async move {
            r.post(
                &format!("/v1/contracts/{id}/actions"),
                Some(&token),
                &action,
            )
            .await
        }
    };
    act(json!({"action": "approve"}), sii.clone())
        .await
        .problem("wrong-party", 403);
    act(json!({"action": "approve"}), r.admin().to_string())
        .await
        .problem("wrong-party", 403);
    act(json!({"action": "refuse", "reason": ""}), rc.clone())
        .await
        .problem("invalid-request", 400);
    act(json!({"action": "revoke", "reason": "x"}), rc.clone())
        .await
        .problem("invalid-transition", 409);
    act(json!({"action": "launch"}), rc.clone())
        .await
        .problem("invalid-request", 400);
    // None of those refusals changed the contract.
    let unchanged = r.get(&format!("/v1/contracts/{id}"), Some(sii)).await;
    assert_eq!(unchanged.ok(200)["state"], "proposed");
    assert_eq!(
        act(json!({"action": "approve"}), rc.clone()).await.ok(200)["state"],
        "approved"
    );
    act(json!({"action": "approve"}), rc.clone())
        .await
        .problem("invalid-transition", 409);
    let revoked = act(
        json!({"action": "revoke", "reason": "no longer needed"}),
        sii.clone(),
    )
    .await;
    assert_eq!(revoked.ok(200)["state"], "revoked");
    assert_eq!(revoked.body["reason"], "no longer needed");
    // A refused proposal, a withdrawn one.
    let p2 = r
        .post("/v1/contracts", Some(sii), &contract_terms())
        .await
        .ok(201)["id"]
        .as_str()
        .unwrap()
        .to_string();
    let refused = r
        .post(
            &format!("/v1/contracts/{p2}/actions"),
            Some(rc),
            &json!({"action": "refuse", "reason": "no legal basis"}),
        )
        .await;
    assert_eq!(refused.ok(200)["state"], "refused");
    let p3 = r
        .post("/v1/contracts", Some(sii), &contract_terms())
        .await
        .ok(201)["id"]
        .as_str()
        .unwrap()
        .to_string();
    r.post(
        &format!("/v1/contracts/{p3}/actions"),
        Some(rc),
        &json!({"action": "withdraw"}),
    )
    .await
    .problem("wrong-party", 403);
    assert_eq!(
        r.post(
            &format!("/v1/contracts/{p3}/actions"),
            Some(sii),
            &json!({"action": "withdraw"})
        )
        .await
        .ok(200)["state"],
        "withdrawn"
    );
    // A member that is neither party cannot see or touch it.
    let other = member_with_token(&r, "CL-DEV/GOV/12345678-5", "Otro").await;
    r.get(&format!("/v1/contracts/{id}"), Some(&other))
        .await
        .problem("not-found", 404);
    r.post(
        &format!("/v1/contracts/{}/actions", d.contract),
        Some(&other),
        &json!({"action": "revoke", "reason": "x"}),
    )
    .await
    .problem("not-found", 404);
    assert_eq!(
        r.get("/v1/contracts", Some(&other)).await.ok(200),
        &json!([])
    );
    // The federation admin may revoke any contract.
    let fed = r
        .post(
            &format!("/v1/contracts/{}/actions", d.contract),
            Some(r.admin()),
            &json!({"action": "revoke", "reason": "court order"}),
        )
        .await;
    assert_eq!(fed.ok(200)["state"], "revoked");
    r.get("/v1/contracts/ctr_nope", Some(sii))
        .await
        .problem("invalid-identifier", 400);
}

#[tokio::test]
async fn every_change_is_in_the_audit_trail_with_before_and_after() {
    let r = start_registry().await;
    let d = r.seed_demo().await;
    let entries = r
        .get("/v1/audit?limit=1000", Some(r.admin()))
        .await
        .ok(200)
        .as_array()
        .unwrap()
        .clone();
    let actions: Vec<&str> = entries
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for a in [
        "member.create",
        "member.token.issue",
        "subsystem.register",
        "subsystem.approve",
        "node.register",
        "node.approve",
        "service.publish",
        "concept.claim",
        "contract.propose",
        "contract.approve",
    ] {
        assert!(actions.contains(&a), "{a} missing from {actions:?}");
    }
    let approve = entries
        .iter()
        .find(|e| e["action"] == "contract.approve")
        .unwrap();
    assert_eq!(approve["actor"], format!("member-admin:{RC}"));
    assert_eq!(approve["before"]["state"], "proposed");
    assert_eq!(approve["after"]["state"], "approved");
    assert!(
        !entries.iter().any(|e| e.to_string().contains(&d.sii_token)),
        "tokens never appear"
    );
    // A member admin sees entries about its own member only.
    let mine = r
        .get("/v1/audit?limit=1000", Some(&d.sii_token))
        .await
        .ok(200)
        .as_array()
        .unwrap()
        .clone();
    assert!(!mine.is_empty() && mine.len() < entries.len());
    assert!(mine.iter().all(|e| e.to_string().contains(SII)), "{mine:?}");
    // Refusals are recorded with their cause.
    let before = r.audit_len().await;
    r.post(
        &format!("/v1/contracts/{}/actions", d.contract),
        Some(&d.sii_token),
        &json!({"action": "approve"}),
    )
    .await
    .problem("wrong-party", 403);
    let after = r
        .get("/v1/audit?after=0&limit=1000", Some(r.admin()))
        .await
        .ok(200)
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(after.len(), before + 1);
    let last = after.last().unwrap();
    assert_eq!(last["outcome"], "wrong-party");
    assert_eq!(last["actor"], format!("member-admin:{SII}"));
}

#[tokio::test]
async fn the_api_is_described_and_unknown_paths_are_problems() {
    let r = start_registry().await;
    let doc = r.get("/openapi.json", None).await;
    let doc = doc.ok(200);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    let paths = doc["paths"].as_object().unwrap();
    for p in [
        "/v1/members",
        "/v1/contracts",
        "/v1/config",
        "/v1/once-only-check",
        "/v1/services/{service}/versions/{version}",
        "/v1/authorisations",
        "/v1/authorisations/{id}",
        "/v1/citizen/authorisations",
        "/v1/citizen/authorisations/{id}/{action}",
        "/v1/access-log/evidence",
        "/v1/access-log/evidence/consistency",
        "/v1/log-heads/{node}/proof",
    ] {
        assert!(paths.contains_key(p), "{p} documented");
    }
    r.get("/v1/nothing-here", None)
        .await
        .problem("not-found", 404);
    r.get("/v1/members/CL-DEV/GOV/61002000-3/extra/segments", None)
        .await
        .problem("not-found", 404);
}

#[tokio::test]
async fn a_node_renews_itself_with_a_proof_of_its_current_signing_key() {
    let r = start_registry().await;
    let rc = member_with_token(&r, RC, "RC").await;
    let node: enlace_core::NodeId = demo::PROVIDER_NODE.parse().unwrap();
    let keys = enlace_certs::node_init(&node).unwrap();
    r.post(
        "/v1/nodes",
        Some(&rc),
        &json!({"id": demo::PROVIDER_NODE, "address": "127.0.0.1:1",
                "tls_csr": keys.tls_csr_pem, "signing_csr": keys.signing_csr_pem}),
    )
    .await
    .ok(201);
    let first = r
        .post(
            &format!("/v1/nodes/{}/approve", demo::PROVIDER_NODE),
            Some(r.admin()),
            &json!({}),
        )
        .await
        .ok(200)
        .clone();
    let current = enlace_certs::SigningKey::from_pem(&keys.signing_key_pem).unwrap();
    let next = enlace_certs::node_init(&node).unwrap();
    let path = format!("/v1/nodes/{}/renew", demo::PROVIDER_NODE);
    let body = |key: &enlace_certs::SigningKey, at: time::OffsetDateTime| {
        let at = at
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap();
        let text =
            enlace_core::renewal::proof_text(&node, &at, &next.tls_csr_pem, &next.signing_csr_pem);
        let sig = base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            key.sign(text.as_bytes()),
        );
        json!({"tls_csr": next.tls_csr_pem, "signing_csr": next.signing_csr_pem,
               "proof": {"at": at, "signature": sig}})
    };
    let now = time::OffsetDateTime::now_utc();
    // Signed by another key, or too old: refused, nothing changes.
    let stranger = enlace_certs::SigningKey::generate().unwrap();
    r.post(&path, None, &body(&stranger, now))
        .await
        .problem("unauthenticated", 401);
    r.post(
        &path,
        None,
        &body(&current, now - time::Duration::minutes(10)),
    )
    .await
    .problem("unauthenticated", 401);
    // A proof and a token together: one or the other.
    r.post(&path, Some(&rc), &body(&current, now))
        .await
        .problem("invalid-request", 400);
    let node_now = r
        .get(&format!("/v1/nodes/{}", demo::PROVIDER_NODE), None)
        .await;
    assert_eq!(node_now.ok(200)["signing_serial"], first["signing_serial"]);
    // The real proof renews, audited as the node itself.
    let good = body(&current, now);
    let renewed = r.post(&path, None, &good).await;
    assert_ne!(renewed.ok(200)["signing_serial"], first["signing_serial"]);
    let audit = r.get("/v1/audit", Some(r.admin())).await;
    assert!(
        audit
            .ok(200)
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "node.renew"
                && e["actor"] == format!("node:{}", demo::PROVIDER_NODE)
                && e["outcome"] == "ok"),
        "{:#}",
        audit.body
    );
    // The same proof again is a replay; and the old key no longer renews anything.
    r.post(&path, None, &good)
        .await
        .problem("unauthenticated", 401);
    r.post(
        &path,
        None,
        &body(&current, time::OffsetDateTime::now_utc()),
    )
    .await
    .problem("unauthenticated", 401);
}

#[tokio::test]
async fn a_reused_demo_directory_gets_fresh_certificates_for_stale_nodes() {
    let r = start_registry().await;
    r.seed_demo().await;
    let nodes = r.dir.path().join("nodes");
    let reg = &r.running.registry;
    assert!(
        demo::renew_stale_node_certs(reg, &nodes)
            .await
            .unwrap()
            .is_empty(),
        "fresh certificates are left alone"
    );
    // Registro Civil's TLS certificate is unusable (as an expired one would be).
    let tls = nodes.join("61002000-3/tls.pem");
    std::fs::write(&tls, "expired").unwrap();
    let renewed = demo::renew_stale_node_certs(reg, &nodes).await.unwrap();
    assert_eq!(
        renewed.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
        [demo::PROVIDER_NODE]
    );
    let pem = std::fs::read_to_string(&tls).unwrap();
    assert!(!enlace_certs::needs_renewal(
        &pem,
        time::OffsetDateTime::now_utc(),
        1.0 / 3.0
    ));
    let key = std::fs::read_to_string(nodes.join("61002000-3/tls-key.pem")).unwrap();
    assert!(key.contains("PRIVATE KEY"));
    assert!(
        demo::renew_stale_node_certs(reg, &nodes)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn a_leaked_member_token_is_revoked_by_its_member_or_the_federation_admin() {
    let r = start_registry().await;
    let rc = member_with_token(&r, RC, "RC").await;
    let sii = member_with_token(&r, SII, "SII").await;
    let leaked = r
        .post(
            &format!("/v1/members/{RC}/tokens"),
            Some(r.admin()),
            &json!({"label": "ci-pipeline"}),
        )
        .await
        .ok(201)["token"]
        .as_str()
        .unwrap()
        .to_string();
    r.get(&format!("/v1/members/{RC}/tokens"), Some(&leaked))
        .await
        .ok(200);
    // Another member cannot revoke, or even list, Registro Civil's tokens.
    refused_unchanged(
        &r,
        &format!("/v1/members/{RC}/tokens/revoke"),
        &sii,
        &json!({"label": "ci-pipeline"}),
    )
    .await;
    r.get(&format!("/v1/members/{RC}/tokens"), Some(&sii))
        .await
        .problem("forbidden", 403);
    // Registro Civil's admin revokes it; it authenticates nobody from then on.
    let done = r
        .post(
            &format!("/v1/members/{RC}/tokens/revoke"),
            Some(&rc),
            &json!({"label": "ci-pipeline"}),
        )
        .await;
    assert_eq!(done.ok(200)["revoked"], 1);
    let p = r
        .get(&format!("/v1/members/{RC}/tokens"), Some(&leaked))
        .await;
    assert!(
        p.problem("unauthenticated", 401)["detail"]
            .as_str()
            .unwrap()
            .contains("revoked")
    );
    // The list shows labels and times, never a hash; the other token still works.
    let list = r.get(&format!("/v1/members/{RC}/tokens"), Some(&rc)).await;
    let list = list.ok(200).as_array().unwrap().clone();
    assert_eq!(list.len(), 2);
    assert!(list.iter().all(|t| t.get("hash").is_none()));
    assert!(
        list.iter()
            .any(|t| t["label"] == "ci-pipeline" && t["revoked_at"].is_string())
    );
    // Nothing left under that label; the federation admin may revoke the other.
    r.post(
        &format!("/v1/members/{RC}/tokens/revoke"),
        Some(r.admin()),
        &json!({"label": "ci-pipeline"}),
    )
    .await
    .problem("not-found", 404);
    r.post(
        &format!("/v1/members/{RC}/tokens/revoke"),
        Some(r.admin()),
        &json!({"label": "test"}),
    )
    .await
    .ok(200);
    r.get(&format!("/v1/members/{RC}/tokens"), Some(&rc))
        .await
        .problem("unauthenticated", 401);
    let audit = r.get("/v1/audit", Some(r.admin())).await;
    assert!(
        audit
            .ok(200)
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "member.token.revoke" && e["outcome"] == "ok")
    );
}

/// Every refusal is an RFC 9457 problem, including the framework's own: a query string or path
/// that does not deserialise, a method a route does not take, a JSON body of the wrong shape.
/// A sweep over every documented path with garbage query values and unexpected methods finds no
/// `text/plain` or empty refusal.
#[tokio::test]
async fn every_refusal_of_every_route_is_a_problem() {
    let r = start_registry().await;
    r.seed_demo().await;
    for path in [
        "/v1/access-log/proof/consistency?from=-1&to=2",
        "/v1/access-log/tree-heads?size=x",
        "/v1/citizen/access-records?page=abc",
        "/v1/config?after=soon",
        "/v1/audit?limit=-3",
    ] {
        let reply = r.get(path, Some(r.admin())).await;
        assert!(reply.status.is_client_error(), "{path}: {reply:?}");
        reply.problem("invalid-request", 400);
    }
    let reply = r
        .send(
            Method::DELETE,
            "/v1/members",
            Some(r.admin()),
            "",
            Vec::new(),
        )
        .await;
    reply.problem("method-not-allowed", 405);

    let doc = r.get("/openapi.json", None).await.ok(200).clone();
    let garbage = "?page=abc&size=x&from=-1&to=x&after=x&wait=x&index=x&seq=x&limit=x&tree_size=x";
    let mut checked = 0;
    for (template, ops) in doc["paths"].as_object().unwrap() {
        let path: String = template
            .split('/')
            .map(|seg| if seg.starts_with('{') { "x" } else { seg })
            .collect::<Vec<_>>()
            .join("/");
        let documented: Vec<String> = ops.as_object().unwrap().keys().cloned().collect();
        for method in [
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::DELETE,
            Method::PATCH,
        ] {
            for token in [None, Some(r.admin())] {
                let target = format!("{path}{garbage}");
                let reply = r
                    .send(
                        method.clone(),
                        &target,
                        token,
                        "application/json",
                        b"{\"x\":".to_vec(),
                    )
                    .await;
                checked += 1;
                if reply.status.is_client_error() || reply.status.is_server_error() {
                    assert_eq!(
                        reply.content_type, "application/problem+json",
                        "{method} {target} ({documented:?}): {} {:?}",
                        reply.status, reply.body
                    );
                    assert_eq!(
                        reply.body["status"],
                        reply.status.as_u16(),
                        "{method} {target}"
                    );
                    assert!(
                        !reply.status.is_server_error(),
                        "{method} {target}: {:?}",
                        reply.body
                    );
                }
            }
        }
    }
    assert!(checked > 100, "{checked}");

    // A refused write the framework itself rejected is audited like any other.
    let before = r.audit_len().await;
    r.send(
        Method::DELETE,
        "/v1/members",
        Some(r.admin()),
        "",
        Vec::new(),
    )
    .await
    .problem("method-not-allowed", 405);
    assert_eq!(r.audit_len().await, before + 1);
}

/// The registry's answers match its own OpenAPI document: a real contract validates against
/// `Contract` (the `allOf` that adds `id`, `state` and `reason` to the terms), a proposal with
/// a member the terms do not have does not validate against `ContractTerms`, and a stored
/// description is served as one of the media types the document names.
#[tokio::test]
async fn answers_match_the_registry_openapi_document() {
    let r = start_registry().await;
    let demo = r.seed_demo().await;
    let doc = r.get("/openapi.json", None).await.ok(200).clone();
    let validator = |name: &str| {
        let schema = json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$ref": format!("#/components/schemas/{name}"),
            "components": doc["components"],
        });
        jsonschema::options()
            .with_draft(jsonschema::Draft::Draft202012)
            .offline()
            .build(&schema)
            .unwrap_or_else(|e| panic!("{name}: {e}"))
    };
    let contracts = r
        .get("/v1/contracts", Some(r.admin()))
        .await
        .ok(200)
        .clone();
    let contract = &contracts.as_array().unwrap()[0];
    assert_eq!(contract["id"], demo.contract.to_string());
    let v = validator("Contract");
    let errors: Vec<String> = v.iter_errors(contract).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{errors:?}\n{contract:#}");
    let mut extra = contract.clone();
    extra["colour"] = json!("blue");
    assert!(
        !v.is_valid(&extra),
        "unknown members are not part of a contract"
    );

    let terms = validator("ContractTerms");
    let mut proposal = contract.clone();
    for k in ["id", "state", "reason"] {
        proposal.as_object_mut().unwrap().remove(k);
    }
    assert!(terms.is_valid(&proposal), "{proposal:#}");
    proposal["id"] = contract["id"].clone();
    assert!(!terms.is_valid(&proposal), "a proposal names no id");

    // Every description the configuration lists is served as a documented media type.
    let served = doc["paths"]["/v1/descriptions/{digest}"]["get"]["responses"]["200"]["content"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect::<Vec<_>>();
    let mut checked = 0;
    for service in [demo::PERSONAS, demo::PERSONAS_GRPC] {
        let info = r
            .get(&format!("/v1/services/{service}"), None)
            .await
            .ok(200)
            .clone();
        let text = info.to_string();
        for d in text
            .split('"')
            .filter(|s| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            let reply = r.get(&format!("/v1/descriptions/{d}"), None).await;
            assert_eq!(reply.status, 200, "{d}");
            assert!(
                served.contains(&reply.content_type),
                "{} not in {served:?}",
                reply.content_type
            );
            checked += 1;
        }
    }
    assert!(checked > 0, "no description listed");
}

/// Issue 10: a `pattern` that is no regular expression was accepted (201) and then failed
/// every call through the nodes (422); a minor version adding a pattern to a response field
/// was accepted and then failed every call (502). Both are refused at upload now.
#[tokio::test]
async fn patterns_are_compiled_at_upload_and_a_new_one_is_a_break() {
    let r = start_registry().await;
    let rc = member_with_token(&r, RC, "RC").await;
    approved_subsystem(&r, &rc, demo::PROVIDER_SUBSYSTEM).await;
    let v1: Value = serde_json::from_slice(&sample("personas-v1.json")).unwrap();
    upload(
        &r,
        &rc,
        demo::PERSONAS,
        "v1",
        "application/json",
        &serde_json::to_vec(&v1).unwrap(),
    )
    .await
    .ok(201);
    let with_name_pattern = |pattern: &str| {
        let mut d = v1.clone();
        d["components"]["schemas"]["Person"]["properties"]["name"]["pattern"] = json!(pattern);
        serde_json::to_vec(&d).unwrap()
    };
    let at = "/components/schemas/Person/properties/name/pattern";
    for bad in ["(", "\\p{Nonexistent}"] {
        let reply = upload(
            &r,
            &rc,
            demo::PERSONAS,
            "v1.1",
            "application/json",
            &with_name_pattern(bad),
        )
        .await;
        let p = reply.problem("invalid-service-description", 422);
        assert_eq!(p["at"], at, "{bad}: {p:#}");
        let detail = p["detail"].as_str().unwrap();
        assert!(
            detail.contains(at) && detail.contains("cannot be compiled"),
            "{detail}"
        );
    }
    // A pattern that compiles, new on a response field, is a break within the major version.
    let reply = upload(
        &r,
        &rc,
        demo::PERSONAS,
        "v1.1",
        "application/json",
        &with_name_pattern("^[0-9]+$"),
    )
    .await;
    let p = reply.problem("incompatible-version", 409);
    let breaks: Vec<(&str, &str)> = p["breaks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["kind"].as_str().unwrap(),
                b["item"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(breaks, [("pattern-changed", "/name")], "{p:#}");
    // Nothing was published by the refusals: v1.1 is still free, and a minor version that only
    // drops the path parameter's pattern (more requests pass) is compatible.
    let mut looser = v1.clone();
    looser["components"]["parameters"]["Run"]["schema"]
        .as_object_mut()
        .unwrap()
        .remove("pattern");
    upload(
        &r,
        &rc,
        demo::PERSONAS,
        "v1.1",
        "application/json",
        &serde_json::to_vec(&looser).unwrap(),
    )
    .await
    .ok(201);
}

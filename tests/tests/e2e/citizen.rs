//! The citizen's view of the access log, end to end: the provider node emits a signed access
//! record for every exchange that names a person (served or refused, REST and gRPC), the registry
//! ingests it, and the message logs still verify.

use std::time::{Duration, Instant};

use enlace_core::access::SignedAccessRecord;
use enlace_msglog as msglog;
use enlace_proto::personas::v1::GetPersonRequest;
use enlace_registry::demo;
use enlace_tests::TestFederation;
use reqwest::Method;

/// The records the registry holds about `subject`, waiting until there are at least `n` and a
/// signed tree head covers them (heads are signed every second while the log grows).
pub(crate) async fn registry_records(
    f: &TestFederation,
    subject: &str,
    n: usize,
) -> Vec<SignedAccessRecord> {
    let path = f.registry.dir.path().join("registry").join("access.sqlite");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (found, leaves): (Vec<SignedAccessRecord>, u64) = {
            let conn = rusqlite::Connection::open(&path).unwrap();
            let mut stmt = conn
                .prepare("SELECT record FROM access_records WHERE subject = ?1 ORDER BY idx")
                .unwrap();
            let found = stmt
                .query_map([subject], |r| r.get::<_, Vec<u8>>(0))
                .unwrap()
                .map(|b| serde_json::from_slice(&b.unwrap()).unwrap())
                .collect();
            let max: Option<i64> = conn
                .query_row(
                    "SELECT MAX(idx) FROM access_records WHERE subject = ?1",
                    [subject],
                    |r| r.get(0),
                )
                .unwrap();
            (found, max.map_or(0, |m| m as u64 + 1))
        };
        let head = f.registry.get("/v1/access-log/tree-head", None).await;
        let covered = head.ok(200)["tree_head"]["tree_size"].as_u64().unwrap_or(0) >= leaves;
        if (found.len() >= n && covered) || Instant::now() > deadline {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_exchange_naming_a_person_reaches_the_access_log() {
    let f = TestFederation::start_grpc(|_, _| {}).await;
    // Served over REST: name and address only.
    let r = f
        .call(
            Method::GET,
            "/persons/12345678-5",
            &[
                ("enlace-authorization", "auth-0001"),
                ("enlace-step", "eligibility"),
            ],
        )
        .await;
    r.ok(200);
    // Refused by the provider: an operation outside the contract.
    let r = f
        .call(Method::GET, "/persons/12345678-5/documents", &[])
        .await;
    r.problem("contract-missing", 403);
    // Served over gRPC. (A gRPC call outside the contract is refused by the consumer node
    // already, so no provider sees it and no access record is due.)
    let mut client = f.grpc_client().await;
    client
        .get_person(f.grpc_request(
            GetPersonRequest {
                run: "12345678-5".into(),
            },
            &[],
        ))
        .await
        .expect("the grpc call succeeds");

    let records = registry_records(&f, demo::PERSON, 3).await;
    assert_eq!(records.len(), 3, "{records:#?}");
    let rest_served = records
        .iter()
        .find(|r| r.record.result == "served" && r.record.provider_service == demo::PERSONAS)
        .expect("the served REST exchange");
    let r = &rest_served.record;
    // The leaves disclosed: the name and the parts of the address, nothing else.
    assert!(r.fields.iter().any(|f| f == "/name"), "{:?}", r.fields);
    assert!(
        r.fields.iter().any(|f| f.starts_with("/address")),
        "{:?}",
        r.fields
    );
    assert!(
        r.fields
            .iter()
            .all(|f| f == "/name" || f.starts_with("/address")),
        "{:?}",
        r.fields
    );
    assert_eq!(r.consumer_member, demo::SII);
    assert_eq!(r.consumer_subsystem, demo::CONSUMER_SUBSYSTEM);
    assert_eq!(r.operation, "getPerson");
    assert_eq!(r.purpose, "tax-refund-eligibility");
    assert!(r.legal_basis.starts_with("Decreto Ley 824"));
    assert_eq!(r.contract, f.demo.contract);
    assert_eq!(r.procedure.as_deref(), Some("devolucion-renta-2026"));
    assert_eq!(r.step.as_deref(), Some("eligibility"));
    assert_eq!(r.user.as_deref(), Some("funcionaria-42"));
    // Not an authorisation token: nothing sensitive released, and the record says why.
    assert_eq!(r.authorisation, None);
    assert!(
        r.authorisation_refused
            .as_deref()
            .is_some_and(|w| w.starts_with("malformed")),
        "{r:?}"
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.node, demo::PROVIDER_NODE);
    assert!(r.at.ends_with('Z'), "{}", r.at);
    assert!(
        r.response_digest
            .as_deref()
            .unwrap()
            .starts_with("sha-256=:")
    );
    assert!(uuid::Uuid::parse_str(&r.message_id).is_ok());

    let rest_refused = records
        .iter()
        .find(|r| r.record.result != "served" && r.record.provider_service == demo::PERSONAS)
        .expect("the refused REST exchange");
    assert_eq!(rest_refused.record.result, "refused:contract-missing");
    assert_eq!(rest_refused.record.status, 403);
    assert!(rest_refused.record.fields.is_empty());

    let grpc_served = records
        .iter()
        .find(|r| r.record.result == "served" && r.record.provider_service == demo::PERSONAS_GRPC)
        .expect("the served gRPC call");
    assert_eq!(
        grpc_served.record.operation,
        "personas.v1.Personas/GetPerson"
    );
    assert!(grpc_served.record.fields.iter().any(|f| f == "/name"));
    assert!(
        !grpc_served
            .record
            .fields
            .iter()
            .any(|f| f.contains("health"))
    );
    // The message logs still verify.
    let (consumer_db, provider_db) = (f.log_db(false), f.log_db(true));
    let TestFederation {
        registry,
        provider,
        consumer,
        ..
    } = f;
    consumer.stop().await;
    provider.stop().await;
    for db in [consumer_db, provider_db] {
        let report = msglog::verify_file(&db, &[], None).unwrap();
        assert!(report.is_ok(), "{report:?}");
    }
    registry.running.stop().await;
}

/// The message id the consumer node gave a relayed REST call.
async fn relayed(f: &TestFederation) -> String {
    let resp = f
        .registry
        .http
        .get(format!(
            "{}/r1/{}/v1/persons/12345678-5",
            f.consumer_url,
            demo::PERSONAS
        ))
        .bearer_auth(&f.client_token)
        .header("enlace-client", demo::CONSUMER_SUBSYSTEM)
        .header("enlace-contract", &f.demo.contract)
        .header("enlace-subject", demo::PERSON)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.headers()["enlace-message-id"]
        .to_str()
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn audit_verify_checks_the_head_the_inclusion_and_the_consistency() {
    use enlace_node::audit::Auditor;
    let f = TestFederation::start().await;
    let first = relayed(&f).await;
    registry_records(&f, demo::PERSON, 1).await;
    let ca = f.registry.running.registry.ca_pem().to_string();
    let auditor = Auditor::new(&f.registry.url, &ca, reqwest::Client::new());
    let report = auditor
        .verify_inclusion(&first, f.registry.admin())
        .await
        .expect("the record's inclusion verifies");
    assert!(report.lines.len() == 3, "{report:?}");
    assert!(
        report.lines[0].contains("urn:enlace:registry:CL-DEV"),
        "{report:?}"
    );
    assert!(
        report.lines[2].contains(demo::PROVIDER_NODE),
        "the node's signature: {report:?}"
    );
    let size1 = f
        .registry
        .get("/v1/access-log/tree-head", None)
        .await
        .ok(200)["tree_head"]["tree_size"]
        .as_u64()
        .unwrap();

    let second = relayed(&f).await;
    registry_records(&f, demo::PERSON, 2).await;
    auditor
        .verify_inclusion(&second, f.registry.admin())
        .await
        .expect("the second record's inclusion verifies");
    let size2 = f
        .registry
        .get("/v1/access-log/tree-head", None)
        .await
        .ok(200)["tree_head"]["tree_size"]
        .as_u64()
        .unwrap();
    assert!(size2 > size1);
    let report = auditor
        .verify_consistency(size1, size2)
        .await
        .expect("the heads are consistent");
    assert!(report.lines.len() == 3, "{report:?}");

    // Another CA: the head's certificate does not chain, nothing verifies.
    let other = enlace_certs::FederationCa::create(
        &demo::INSTANCE.parse().unwrap(),
        time::Duration::days(1),
    )
    .unwrap();
    let stranger = Auditor::new(&f.registry.url, other.cert_pem(), reqwest::Client::new());
    assert!(
        stranger
            .verify_inclusion(&first, f.registry.admin())
            .await
            .is_err()
    );
    assert!(stranger.verify_consistency(size1, size2).await.is_err());
    // A record that is not there, or a token that may not read it.
    assert!(
        auditor
            .verify_inclusion(&uuid::Uuid::now_v7().to_string(), f.registry.admin())
            .await
            .is_err()
    );
    assert!(
        auditor
            .verify_inclusion(&first, "not-a-token")
            .await
            .is_err()
    );
    f.stop().await;
}

/// An ID token from the registry's development issuer.
async fn sign_in(f: &TestFederation, sub: &str) -> String {
    let r = f
        .registry
        .post("/oidc/dev/token", None, &serde_json::json!({ "sub": sub }))
        .await;
    r.ok(200)["id_token"].as_str().unwrap().to_string()
}

async fn citizen_get(f: &TestFederation, query: &str, token: &str) -> enlace_tests::Reply {
    f.registry
        .get(&format!("/v1/citizen/access-records{query}"), Some(token))
        .await
}

const OTHER_PERSON: &str = "CL-RUN:11111111-1";

#[tokio::test(flavor = "multi_thread")]
async fn a_person_sees_their_records_with_proofs_and_nobody_else_does() {
    use enlace_core::merkle::{InclusionProof, SignedTreeHead};
    let f = TestFederation::start().await;
    let first = relayed(&f).await;
    let _ = f
        .call(Method::GET, "/persons/12345678-5/documents", &[])
        .await;
    registry_records(&f, demo::PERSON, 2).await;

    let token = sign_in(&f, demo::PERSON).await;
    let r = citizen_get(&f, "", &token).await;
    let body = r.ok(200);
    assert_eq!(body["total"], 2, "{body:#}");
    assert_eq!(body["subject"], demo::PERSON);
    let head: SignedTreeHead =
        serde_json::from_value(body["tree_head"]["tree_head"].clone()).unwrap();
    let root = head.root_hash().unwrap();
    for item in body["records"].as_array().unwrap() {
        let record: SignedAccessRecord = serde_json::from_value(item["record"].clone()).unwrap();
        assert_eq!(record.record.subject, demo::PERSON);
        let proof: InclusionProof = serde_json::from_value(item["proof"].clone()).unwrap();
        assert_eq!(proof.tree_size, head.tree_size);
        assert!(
            proof.verify(&record.leaf_hash(), &root),
            "the proof leads to the signed root"
        );
    }
    let served = &body["records"][0];
    let sentence = served["sentence"].as_str().unwrap();
    assert!(
        sentence
            .starts_with("The Servicio de Impuestos Internos consulted your address and name on "),
        "{sentence}"
    );
    assert!(
        sentence.contains(" UTC for tax-refund-eligibility, under contract ctr_"),
        "{sentence}"
    );
    let refused = body["records"][1]["sentence"].as_str().unwrap();
    assert!(refused.contains("refused (contract-missing)"), "{refused}");

    // Filters and pages.
    let r = citizen_get(&f, "?page_size=1&page=2", &token).await;
    assert_eq!(r.ok(200)["records"].as_array().unwrap().len(), 1);
    let r = citizen_get(&f, "?purpose=another-purpose", &token).await;
    assert_eq!(r.ok(200)["total"], 0);
    let r = citizen_get(&f, &format!("?institution={}", demo::SII), &token).await;
    assert_eq!(r.ok(200)["total"], 2);
    let r = citizen_get(&f, "?from=2999-01-01T00:00:00Z", &token).await;
    assert_eq!(r.ok(200)["total"], 0);
    citizen_get(&f, "?page_size=101", &token)
        .await
        .problem("invalid-request", 400);

    // The person verifies a record with the audit tool, using their own token.
    let ca = f.registry.running.registry.ca_pem().to_string();
    let auditor = enlace_node::audit::Auditor::new(&f.registry.url, &ca, reqwest::Client::new());
    auditor
        .verify_inclusion(&first, &token)
        .await
        .expect("the person verifies their record");

    // Another person sees none of them, and cannot fetch them by message id.
    let other = sign_in(&f, OTHER_PERSON).await;
    let r = citizen_get(&f, "", &other).await;
    assert_eq!(r.ok(200)["total"], 0);
    let r = f
        .registry
        .get(
            &format!("/v1/access-log/proof/inclusion?message_id={first}"),
            Some(&other),
        )
        .await;
    r.problem("not-found", 404);
    assert!(auditor.verify_inclusion(&first, &other).await.is_err());
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_id_tokens_are_refused() {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    use enlace_registry::citizen::oidc::{DEFAULT_AUDIENCE, sign_jwt};
    use serde_json::json;
    let f = TestFederation::start().await;
    let oidc = f.registry.running.citizens.oidc().unwrap().clone();
    let dev = oidc.dev.as_ref().unwrap();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let claims = |iss: &str, aud: &str, iat: i64, exp: i64| json!({"iss": iss, "aud": aud, "sub": demo::PERSON, "iat": iat, "exp": exp});
    let good = dev.sign_claims(&claims(&oidc.issuer, DEFAULT_AUDIENCE, now, now + 300));
    citizen_get(&f, "", &good).await.ok(200);

    let expired = dev.sign_claims(&claims(
        &oidc.issuer,
        DEFAULT_AUDIENCE,
        now - 900,
        now - 120,
    ));
    let future = dev.sign_claims(&claims(
        &oidc.issuer,
        DEFAULT_AUDIENCE,
        now + 900,
        now + 1200,
    ));
    let audience = dev.sign_claims(&claims(&oidc.issuer, "another-client", now, now + 300));
    let issuer = dev.sign_claims(&claims(
        "https://issuer.example",
        DEFAULT_AUDIENCE,
        now,
        now + 300,
    ));
    let stranger = enlace_certs::SigningKey::generate().unwrap();
    let other_key = sign_jwt(
        &json!({"alg": "EdDSA", "typ": "JWT"}),
        &claims(&oidc.issuer, DEFAULT_AUDIENCE, now, now + 300),
        |m| stranger.sign(m),
    );
    let body = B64.encode(claims(&oidc.issuer, DEFAULT_AUDIENCE, now, now + 300).to_string());
    let none = format!("{}.{body}.", B64.encode(r#"{"alg":"none","typ":"JWT"}"#));
    let hs256 = format!(
        "{}.{body}.{}",
        B64.encode(r#"{"alg":"HS256","typ":"JWT"}"#),
        B64.encode([0u8; 32])
    );
    let huge = format!("{good}{}", "A".repeat(9000));
    for (what, token) in [
        ("expired", expired),
        ("issued in the future", future),
        ("another audience", audience),
        ("another issuer", issuer),
        ("another key", other_key),
        ("alg none", none),
        ("alg HS256", hs256),
        ("too long", huge),
        ("not a JWT", "abc".to_string()),
    ] {
        let r = citizen_get(&f, "", &token).await;
        assert_eq!(r.status, 401, "{what}: {:?}", r.body);
        assert_eq!(r.content_type, "application/problem+json", "{what}");
    }
    // No token at all.
    let r = f.registry.get("/v1/citizen/access-records", None).await;
    r.problem("unauthenticated", 401);
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_development_issuer_serves_discovery_and_keys() {
    let f = TestFederation::start().await;
    let d = f
        .registry
        .get("/.well-known/openid-configuration", None)
        .await;
    let d = d.ok(200);
    assert_eq!(d["issuer"], f.registry.url);
    assert_eq!(d["jwks_uri"], format!("{}/oidc/jwks", f.registry.url));
    let jwks = f.registry.get("/oidc/jwks", None).await;
    let key = &jwks.ok(200)["keys"][0];
    assert_eq!(key["kty"], "OKP");
    assert_eq!(key["crv"], "Ed25519");
    // A subject that is not an identifier is refused.
    let r = f
        .registry
        .post(
            "/oidc/dev/token",
            None,
            &serde_json::json!({ "sub": "CL-RUN:12345678-6" }),
        )
        .await;
    assert_eq!(r.status, 400, "{:?}", r.body);
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_registry_stopped_for_a_while_loses_no_records_of_real_exchanges() {
    let mut f = TestFederation::start().await;
    let before = relayed(&f).await;
    registry_records(&f, demo::PERSON, 1).await;

    // The registry goes down; both nodes keep serving on their cached configuration, and the
    // provider node queues the records of every exchange.
    f.stop_registry().await;
    let mut during = Vec::new();
    for _ in 0..5 {
        during.push(relayed(&f).await);
    }
    let refused = f
        .call(Method::GET, "/persons/12345678-5/documents", &[])
        .await;
    refused.problem("contract-missing", 403);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        f.provider.node.outbox.pending().unwrap(),
        6,
        "queued while the registry is down"
    );

    // Back on the same address and data: everything arrives, exactly once.
    f.start_registry_again().await;
    let records = registry_records(&f, demo::PERSON, 7).await;
    assert_eq!(records.len(), 7, "{records:#?}");
    let ids: Vec<&str> = records
        .iter()
        .map(|r| r.record.message_id.as_str())
        .collect();
    for id in std::iter::once(&before).chain(during.iter()) {
        assert_eq!(ids.iter().filter(|i| **i == id.as_str()).count(), 1, "{id}");
    }
    assert_eq!(
        records
            .iter()
            .filter(|r| r.record.result == "refused:contract-missing")
            .count(),
        1
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while f.provider.node.outbox.pending().unwrap() > 0 {
        assert!(Instant::now() < deadline, "the queue drains");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(f.provider.node.outbox.rejected().unwrap(), 0);
    // The person sees all of them, each with a proof.
    let token = sign_in(&f, demo::PERSON).await;
    let body = citizen_get(&f, "", &token).await.ok(200).clone();
    assert_eq!(body["total"], 7, "{body:#}");
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_grpc_refusal_at_the_provider_is_in_the_persons_log_as_refused() {
    let f = TestFederation::start_grpc(|_, _| {}).await;
    // A gRPC contract for one exchange a minute: the provider node counts, and refuses the
    // second (the consumer node does not count).
    let now = time::OffsetDateTime::now_utc();
    let rfc = |t: time::OffsetDateTime| {
        t.format(&time::format_description::well_known::Rfc3339)
            .unwrap()
    };
    let terms = serde_json::json!({
        "consumer": demo::CONSUMER_SUBSYSTEM, "provider": demo::PERSONAS_GRPC,
        "versions": {"min": "v1.0", "max": "v1.9999"},
        "operations": ["personas.v1.Personas/GetPerson"],
        "purpose": "tax-audit", "legal_basis": "Código Tributario, art. 60",
        "allowed_fields": ["/name"], "subject_required": true, "usage": "permanent",
        "volume_limit": {"max_requests": 1, "period": "minute"},
        "valid_from": rfc(now - time::Duration::minutes(1)),
        "valid_until": rfc(now + time::Duration::days(1)), "authorisation_required": false,
    });
    let c = f
        .registry
        .post("/v1/contracts", Some(&f.demo.sii_token), &terms)
        .await;
    let contract = c.ok(201)["id"].as_str().unwrap().to_string();
    f.registry
        .post(
            &format!("/v1/contracts/{contract}/actions"),
            Some(&f.demo.registro_civil_token),
            &serde_json::json!({"action": "approve"}),
        )
        .await
        .ok(200);
    let call = || async {
        let mut client = f.grpc_client().await;
        client
            .get_person(f.grpc_request(
                GetPersonRequest {
                    run: "12345678-5".into(),
                },
                &[("enlace-contract", &contract)],
            ))
            .await
    };
    // Until both nodes know the contract.
    let deadline = Instant::now() + Duration::from_secs(10);
    let first = loop {
        match call().await {
            Ok(r) => break r,
            Err(s) if s.code() == tonic::Code::PermissionDenied => {
                assert!(Instant::now() < deadline, "{s:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(s) => panic!("{s:?}"),
        }
    };
    assert_eq!(first.into_inner().name, "María José Pérez Soto");
    let second = call().await.unwrap_err();
    assert_eq!(second.code(), tonic::Code::ResourceExhausted, "{second:?}");

    let records = registry_records(&f, demo::PERSON, 2).await;
    let refused: Vec<_> = records
        .iter()
        .filter(|r| r.record.contract == contract && r.record.result != "served")
        .collect();
    assert_eq!(refused.len(), 1, "{records:#?}");
    let r = &refused[0].record;
    assert_eq!(r.result, "refused:volume-exceeded");
    assert_eq!(r.provider_service, demo::PERSONAS_GRPC);
    assert_eq!(r.operation, "personas.v1.Personas/GetPerson");
    assert!(r.fields.is_empty());
    // As the person reads it.
    let token = sign_in(&f, demo::PERSON).await;
    let body = citizen_get(&f, "", &token).await.ok(200).clone();
    let sentences: Vec<&str> = body["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["sentence"].as_str().unwrap())
        .collect();
    assert!(
        sentences
            .iter()
            .any(|s| s.contains("for tax-audit") && s.contains("refused (volume-exceeded)")),
        "{sentences:#?}"
    );
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn in_clave_unica_mode_the_run_comes_from_rol_unico() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = enlace_tests::registry_config(dir.path());
    cfg.oidc.subject_from = enlace_registry::citizen::oidc::SubjectFrom::ClaveUnica;
    let r = enlace_tests::start_registry_configured(dir, cfg).await;
    let tokens = r
        .post(
            "/oidc/dev/token",
            None,
            &serde_json::json!({ "sub": demo::PERSON }),
        )
        .await
        .ok(200)
        .clone();
    let id_token = tokens["id_token"].as_str().unwrap();
    let access = tokens["access_token"].as_str().unwrap();
    // The ID token's sub is an account number, not the RUN.
    let claims = id_token.split('.').nth(1).unwrap();
    use base64::Engine;
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(claims)
            .unwrap(),
    )
    .unwrap();
    assert!(
        !claims["sub"].as_str().unwrap().contains("CL-RUN"),
        "{claims}"
    );
    // Without the access token the registry cannot learn the RUN.
    r.get("/v1/citizen/access-records", Some(id_token))
        .await
        .problem("unauthenticated", 401);
    let resp = r
        .http
        .get(format!("{}/v1/citizen/access-records", r.url))
        .bearer_auth(id_token)
        .header("enlace-access-token", access)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["subject"], demo::PERSON);
    // Another person's access token does not lend their RUN.
    let other = r
        .post(
            "/oidc/dev/token",
            None,
            &serde_json::json!({ "sub": OTHER_PERSON }),
        )
        .await
        .ok(200)["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    let resp = r
        .http
        .get(format!("{}/v1/citizen/access-records", r.url))
        .bearer_auth(id_token)
        .header("enlace-access-token", &other)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    r.running.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_records_saved_evidence_verifies_offline_and_fails_when_altered() {
    use enlace_node::audit::{Auditor, Evidence};
    let f = TestFederation::start().await;
    let id = relayed(&f).await;
    registry_records(&f, demo::PERSON, 1).await;
    let token = sign_in(&f, demo::PERSON).await;
    // The person saves the evidence of their record (as `enlace audit evidence` does)…
    let auditor = Auditor::new(&f.registry.url, "", reqwest::Client::new());
    let saved = auditor
        .fetch_access_evidence(&id, None, &token)
        .await
        .unwrap();
    let bytes = serde_json::to_vec_pretty(&saved).unwrap();
    let ca = f.registry.running.registry.ca_pem().to_string();
    f.stop().await;

    // …and checks it later, with the registry gone: only the file and the CA.
    let report = Evidence::parse(&bytes).unwrap().verify(&ca).unwrap();
    assert_eq!(report.lines.len(), 3, "{report:?}");
    let mut v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    for (path, value) in [
        ("/record/record/purpose", serde_json::json!("statistics")),
        ("/record/signature_b64", serde_json::json!("c2lnbmF0dXJl")),
        ("/proof/leaf_index", serde_json::json!(5)),
        (
            "/tree_head/tree_head/root_hash_hex",
            serde_json::json!("00".repeat(32)),
        ),
    ] {
        let original = v.pointer(path).unwrap().clone();
        *v.pointer_mut(path).unwrap() = value;
        let altered = Evidence::parse(v.to_string().as_bytes()).unwrap();
        assert!(
            altered.verify(&ca).is_err(),
            "{path} altered still verifies"
        );
        *v.pointer_mut(path).unwrap() = original;
    }
    // Another federation's CA verifies nothing.
    let other = enlace_certs::FederationCa::create(
        &demo::INSTANCE.parse().unwrap(),
        time::Duration::days(1),
    )
    .unwrap();
    assert!(
        Evidence::parse(&bytes)
            .unwrap()
            .verify(other.cert_pem())
            .is_err()
    );
}

/// Checking a person's ID token may cost a call to the issuer (its keys; with ClaveÚnica, its
/// userinfo endpoint). A request to the access log's proof or evidence routes whose query is
/// malformed is refused before the token is looked at, so that it cannot make the registry
/// call out; a well-formed one is.
#[tokio::test(flavor = "multi_thread")]
async fn a_malformed_record_query_never_makes_the_registry_call_the_issuer() {
    use enlace_registry::citizen::oidc::{DEFAULT_AUDIENCE, sign_jwt};
    use serde_json::json;
    // An issuer where nothing listens: every look at its keys fails, and is counted.
    let issuer = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://127.0.0.1:{}", l.local_addr().unwrap().port())
    };
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = enlace_tests::registry_config(dir.path());
    cfg.oidc.dev_issuer = false;
    cfg.oidc.issuer = Some(issuer.clone());
    let r = enlace_tests::start_registry_configured(dir, cfg).await;
    let key = enlace_certs::SigningKey::generate().unwrap();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let token = sign_jwt(
        &json!({"alg": "EdDSA", "typ": "JWT", "kid": "a"}),
        &json!({"iss": issuer, "aud": DEFAULT_AUDIENCE, "sub": demo::PERSON, "iat": now, "exp": now + 300}),
        |m| key.sign(m),
    );
    let oidc = r.running.citizens.oidc().unwrap().clone();
    for path in ["/v1/access-log/proof/inclusion", "/v1/access-log/evidence"] {
        r.get(path, Some(&token))
            .await
            .problem("invalid-request", 400);
        r.get(
            &format!("{path}?message_id=x&node=not-a-node"),
            Some(&token),
        )
        .await
        .problem("invalid-identifier", 400);
    }
    assert_eq!(oidc.fetches(), 0, "a malformed query called the issuer");
    // A well-formed one does look at the token (and so the issuer): the count is not stuck.
    let id = "0190f3a2-0000-7000-8000-000000000000";
    r.get(
        &format!("/v1/access-log/proof/inclusion?message_id={id}"),
        Some(&token),
    )
    .await
    .problem("peer-unreachable", 502);
    assert_eq!(oidc.fetches(), 1);
    r.running.stop().await;
}

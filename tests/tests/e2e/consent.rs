//! Authorisations (consents) end to end through both nodes: a sensitive field is withheld
//! without the person's authorisation and released with it (REST and gRPC); a token of another
//! person, contract or procedure, an expired, forged or revoked one releases nothing and the
//! access record says why; revocation reaches the provider node within seconds and is not
//! retroactive; only the person named acts; a later minor version cannot leak a sensitive or
//! secret field under an allowed prefix.

use std::time::{Duration, Instant};

use enlace_core::access::SignedAccessRecord;
use enlace_core::authorisation::{self as token, Claims};
use enlace_proto::personas::v1::GetPersonRequest;
use enlace_registry::demo;
use enlace_tests::{Reply, TestFederation};
use reqwest::Method;
use serde_json::{Value, json};

const PROCEDURE: &str = "deduccion-salud-2026";
const OTHER_PERSON: &str = "CL-RUN:11111111-1";

/// An ID token from the development issuer.
async fn sign_in(f: &TestFederation, sub: &str) -> String {
    f.registry
        .post("/oidc/dev/token", None, &json!({ "sub": sub }))
        .await
        .ok(200)["id_token"]
        .as_str()
        .unwrap()
        .to_string()
}

/// SII's admin asks `subject` for an authorisation under `contract` for `procedure`.
pub(crate) async fn request(
    f: &TestFederation,
    contract: &str,
    subject: &str,
    procedure: &str,
) -> String {
    let r = f
        .registry
        .post(
            "/v1/authorisations",
            Some(&f.demo.sii_token),
            &json!({"contract": contract, "subject": subject, "procedure": procedure,
                    "reason": "Para deducir sus gastos de salud de la renta 2026"}),
        )
        .await;
    let body = r.ok(201);
    assert_eq!(body["state"], "pending");
    body["id"].as_str().unwrap().to_string()
}

/// The person acts on an authorisation.
async fn act(f: &TestFederation, person: &str, id: &str, action: &str) -> Reply {
    f.registry
        .post(
            &format!("/v1/citizen/authorisations/{id}/{action}"),
            Some(person),
            &json!({}),
        )
        .await
}

/// The token SII's admin reads once the person granted.
pub(crate) async fn token_of(f: &TestFederation, id: &str) -> String {
    let r = f
        .registry
        .get(&format!("/v1/authorisations/{id}"), Some(&f.demo.sii_token))
        .await;
    let body = r.ok(200);
    assert_eq!(body["state"], "granted", "{body:#}");
    // The federation admin sees the authorisation, never its token: that is the consumer's.
    let seen = f
        .registry
        .get(
            &format!("/v1/authorisations/{id}"),
            Some(f.registry.admin()),
        )
        .await;
    let seen = seen.ok(200);
    assert_eq!(seen["state"], "granted", "{seen:#}");
    assert!(seen["token"].is_null(), "{seen:#}");
    body["token"].as_str().unwrap().to_string()
}

/// A granted authorisation for the demo person under the consent contract.
async fn granted(
    f: &TestFederation,
    subject: &str,
    contract: &str,
    procedure: &str,
) -> (String, String) {
    let id = request(f, contract, subject, procedure).await;
    let person = sign_in(f, subject).await;
    act(f, &person, &id, "grant").await.ok(200);
    (id.clone(), token_of(f, &id).await)
}

/// SII reads the demo person under the consent contract, with `authorization` if given.
pub(crate) async fn read(
    f: &TestFederation,
    authorization: Option<&str>,
    procedure: &str,
) -> Value {
    let mut extra = vec![
        ("enlace-contract", f.demo.consent_contract.as_str()),
        ("enlace-procedure", procedure),
    ];
    if let Some(t) = authorization {
        extra.push(("enlace-authorization", t));
    }
    f.call(Method::GET, "/persons/12345678-5", &extra)
        .await
        .ok(200)
        .clone()
}

/// The person's access records from the registry database, once `n` are there.
async fn records_of_consent(f: &TestFederation, n: usize) -> Vec<SignedAccessRecord> {
    let path = f.registry.dir.path().join("registry").join("access.sqlite");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let found: Vec<SignedAccessRecord> = {
            let conn = rusqlite::Connection::open(&path).unwrap();
            let mut stmt = conn
                .prepare("SELECT record FROM access_records WHERE contract = ?1 ORDER BY idx")
                .unwrap();
            stmt.query_map([&f.demo.consent_contract], |r| r.get::<_, Vec<u8>>(0))
                .unwrap()
                .map(|b| serde_json::from_slice(&b.unwrap()).unwrap())
                .collect()
        };
        if found.len() >= n {
            return found;
        }
        assert!(Instant::now() < deadline, "{} of {n} records", found.len());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A token signed as the registry would, by a signing key the test's own CA certifies (`ca`):
/// the federation CA for a token that is well signed but expired, another CA for a forgery.
fn signed_by(ca: &enlace_certs::FederationCa, claims: &Claims) -> String {
    let key = enlace_certs::SigningKey::generate().unwrap();
    let csr = enlace_certs::csr_for(key.to_pem(), "Enlace registry CL-DEV").unwrap();
    let cert = ca
        .issue_registry_signing(
            &csr,
            &demo::INSTANCE.parse().unwrap(),
            time::Duration::hours(1),
        )
        .unwrap();
    let der = enlace_certs::certificate_der(&cert.pem).unwrap();
    token::encode(claims, &der, |m| key.sign(m))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sensitive_field_needs_the_persons_authorisation_for_this_contract_and_procedure() {
    let f = TestFederation::start().await;
    let consent = f.demo.consent_contract.clone();

    // Without an authorisation: the name, not the health insurance (not the whole response
    // refused).
    let body = read(&f, None, PROCEDURE).await;
    assert_eq!(body["name"], "María José Pérez Soto");
    assert!(body.get("healthInsurance").is_none(), "{body:#}");

    // The person grants; with the token, the health insurance is released.
    let (id, good) = granted(&f, demo::PERSON, &consent, PROCEDURE).await;
    assert!(good.len() <= token::MAX_TOKEN_BYTES, "{} bytes", good.len());
    let body = read(&f, Some(&good), PROCEDURE).await;
    assert_eq!(body["healthInsurance"], "FONASA", "{body:#}");

    // The same token for another procedure, another person's token, a token for another
    // contract: nothing sensitive.
    assert!(
        read(&f, Some(&good), "otro-tramite")
            .await
            .get("healthInsurance")
            .is_none()
    );
    assert!(
        read(&f, Some(&good), "")
            .await
            .get("healthInsurance")
            .is_none()
    );
    let (_, theirs) = granted(&f, OTHER_PERSON, &consent, PROCEDURE).await;
    assert!(
        read(&f, Some(&theirs), PROCEDURE)
            .await
            .get("healthInsurance")
            .is_none()
    );
    let other_contract = second_consent_contract(&f).await;
    let (_, elsewhere) = granted(&f, demo::PERSON, &other_contract, PROCEDURE).await;
    assert!(
        read(&f, Some(&elsewhere), PROCEDURE)
            .await
            .get("healthInsurance")
            .is_none()
    );

    // Expired (well signed by a registry certificate from the federation CA), forged (signed
    // under another CA), and tampered with.
    let ca = enlace_registry::load_or_create_ca(
        &f.registry.dir.path().join("registry"),
        &demo::INSTANCE.parse().unwrap(),
    )
    .unwrap();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let claims = Claims {
        iss: format!("urn:enlace:registry:{}", demo::INSTANCE),
        jti: id.clone(),
        sub: demo::PERSON.into(),
        contract: consent.clone(),
        procedure: PROCEDURE.into(),
        iat: now,
        exp: now + 1,
    };
    let expired = signed_by(&ca, &claims);
    let stranger_ca = enlace_certs::FederationCa::create(
        &demo::INSTANCE.parse().unwrap(),
        time::Duration::days(1),
    )
    .unwrap();
    let forged = signed_by(
        &stranger_ca,
        &Claims {
            exp: now + 3600,
            ..claims.clone()
        },
    );
    let mut tampered = good.clone().into_bytes();
    let n = tampered.len() - 5;
    tampered[n] = if tampered[n] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    for t in [&expired, &forged, &tampered, &"not-a-token".to_string()] {
        let body = read(&f, Some(t), PROCEDURE).await;
        assert!(body.get("healthInsurance").is_none(), "{body:#}");
        assert_eq!(body["name"], "María José Pérez Soto");
    }

    // The access records say which authorisation released the field, and why others did not.
    let records = records_of_consent(&f, 10).await;
    let reasons: Vec<(Option<&str>, Option<&str>, bool)> = records
        .iter()
        .map(|r| {
            let r = &r.record;
            (
                r.authorisation.as_deref(),
                r.authorisation_refused.as_deref(),
                r.fields.iter().any(|f| f == "/healthInsurance"),
            )
        })
        .collect();
    let slug = |s: Option<&str>| s.map(|s| s.split(':').next().unwrap_or(s).to_string());
    assert_eq!(reasons[0], (None, None, false), "no token");
    assert_eq!(reasons[1], (Some(id.as_str()), None, true), "granted");
    let refused: Vec<Option<String>> = reasons[2..].iter().map(|r| slug(r.1)).collect();
    assert_eq!(
        refused,
        [
            "another-procedure",
            "another-procedure",
            "another-person",
            "another-contract",
            "expired",
            "signer-invalid",
            "signature-invalid",
            "malformed",
        ]
        .map(|s| Some(s.to_string()))
    );
    assert!(reasons[2..].iter().all(|r| r.0.is_none() && !r.2));
    f.stop().await;
}

/// A second approved contract of SII's that requires an authorisation (another purpose).
async fn second_consent_contract(f: &TestFederation) -> String {
    let now = time::OffsetDateTime::now_utc();
    let rfc = |t: time::OffsetDateTime| {
        t.format(&time::format_description::well_known::Rfc3339)
            .unwrap()
    };
    let terms = json!({
        "consumer": demo::CONSUMER_SUBSYSTEM, "provider": demo::PERSONAS,
        "versions": {"min": "v1.0", "max": "v1.9999"}, "operations": ["getPerson"],
        "purpose": "disability-benefit", "legal_basis": "Ley 20.422",
        "allowed_fields": ["/name", "/healthInsurance"], "subject_required": true,
        "usage": "permanent", "valid_from": rfc(now - time::Duration::minutes(1)),
        "valid_until": rfc(now + time::Duration::days(30)), "authorisation_required": true,
    });
    approved_contract(f, terms).await
}

/// Proposes `terms` as SII, approves them as the Registro Civil, and waits until the SII node
/// knows the contract.
async fn approved_contract(f: &TestFederation, terms: Value) -> String {
    let c = f
        .registry
        .post("/v1/contracts", Some(&f.demo.sii_token), &terms)
        .await;
    let id = c.ok(201)["id"].as_str().unwrap().to_string();
    f.registry
        .post(
            &format!("/v1/contracts/{id}/actions"),
            Some(&f.demo.registro_civil_token),
            &json!({"action": "approve"}),
        )
        .await
        .ok(200);
    f.await_config(false, &format!("contract {id}"), |c| {
        c.contracts.iter().any(|c| c.id.as_str() == id)
    })
    .await;
    id
}

#[tokio::test(flavor = "multi_thread")]
async fn a_revocation_reaches_the_provider_within_seconds_and_is_not_retroactive() {
    let f = TestFederation::start().await;
    let consent = f.demo.consent_contract.clone();
    let (id, t) = granted(&f, demo::PERSON, &consent, PROCEDURE).await;
    assert_eq!(
        read(&f, Some(&t), PROCEDURE).await["healthInsurance"],
        "FONASA"
    );

    let person = sign_in(&f, demo::PERSON).await;
    let revoked_at = Instant::now();
    act(&f, &person, &id, "revoke").await.ok(200);
    loop {
        let body = read(&f, Some(&t), PROCEDURE).await;
        if body.get("healthInsurance").is_none() {
            break;
        }
        assert!(
            revoked_at.elapsed() < Duration::from_secs(5),
            "still released 5 s after the revocation"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = revoked_at.elapsed();
    println!("a revocation took {took:?} to reach the provider node");

    // Not retroactive: the record of the first read still names the authorisation and the
    // field; the reads after the revocation say it was revoked.
    let records = records_of_consent(&f, 2).await;
    let first = &records[0].record;
    assert_eq!(first.authorisation.as_deref(), Some(id.as_str()));
    assert!(first.fields.iter().any(|f| f == "/healthInsurance"));
    let last = &records.last().unwrap().record;
    assert_eq!(last.authorisation_refused.as_deref(), Some("revoked"));
    assert!(!last.fields.iter().any(|f| f == "/healthInsurance"));

    // The person's history: requested, granted, revoked; a revoked one cannot be revoked again.
    let mine = f
        .registry
        .get("/v1/citizen/authorisations", Some(&person))
        .await
        .ok(200)
        .clone();
    let a = &mine["authorisations"][0];
    assert_eq!(a["state"], "revoked");
    let events: Vec<&str> = a["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(events, ["requested", "granted", "revoked"]);
    assert_eq!(a["sensitive_fields"], json!(["/healthInsurance"]));
    assert!(
        a.get("token").is_none(),
        "the person's view carries no token"
    );
    act(&f, &person, &id, "revoke")
        .await
        .problem("invalid-transition", 409);
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn only_the_person_named_acts_and_every_event_is_audited() {
    let f = TestFederation::start().await;
    let consent = f.demo.consent_contract.clone();
    let id = request(&f, &consent, demo::PERSON, PROCEDURE).await;
    // The same request again while pending is refused.
    f.registry
        .post(
            "/v1/authorisations",
            Some(&f.demo.sii_token),
            &json!({"contract": consent, "subject": demo::PERSON, "procedure": PROCEDURE, "reason": "otra vez"}),
        )
        .await
        .problem("already-exists", 409);
    // Only for the consumer's own contract that requires it, by its member admin.
    for (token, contract, slug, status) in [
        (
            f.demo.registro_civil_token.as_str(),
            consent.as_str(),
            "not-found",
            404,
        ),
        (f.registry.admin(), consent.as_str(), "forbidden", 403),
        (
            f.demo.sii_token.as_str(),
            f.demo.contract.as_str(),
            "invalid-contract",
            422,
        ),
    ] {
        f.registry
            .post(
                "/v1/authorisations",
                Some(token),
                &json!({"contract": contract, "subject": demo::PERSON, "procedure": PROCEDURE, "reason": "r"}),
            )
            .await
            .problem(slug, status);
    }
    f.registry
        .post(
            "/v1/authorisations",
            Some(&f.demo.sii_token),
            &json!({"contract": consent, "subject": demo::PERSON, "procedure": "a b", "reason": "r"}),
        )
        .await
        .problem("invalid-request", 400);

    // Another person can neither see nor act on it; nothing changes.
    let other = sign_in(&f, OTHER_PERSON).await;
    for action in ["grant", "refuse", "revoke"] {
        act(&f, &other, &id, action).await.problem("not-found", 404);
    }
    let theirs = f
        .registry
        .get("/v1/citizen/authorisations", Some(&other))
        .await
        .ok(200)
        .clone();
    assert_eq!(theirs["authorisations"], json!([]));
    // Nor can the provider's admin read it.
    f.registry
        .get(
            &format!("/v1/authorisations/{id}"),
            Some(&f.demo.registro_civil_token),
        )
        .await
        .problem("not-found", 404);
    let person = sign_in(&f, demo::PERSON).await;
    let mine = f
        .registry
        .get("/v1/citizen/authorisations", Some(&person))
        .await
        .ok(200)
        .clone();
    assert_eq!(mine["pending"].as_array().unwrap().len(), 1, "{mine:#}");
    assert_eq!(mine["pending"][0]["id"], id.as_str());
    assert_eq!(
        mine["pending"][0]["institution"],
        "Servicio de Impuestos Internos"
    );
    let pending = f
        .registry
        .get(&format!("/v1/authorisations/{id}"), Some(&f.demo.sii_token))
        .await
        .ok(200)
        .clone();
    assert_eq!(pending["state"], "pending");
    assert!(pending["token"].is_null());

    // The person refuses; a refused request cannot be granted after.
    act(&f, &person, &id, "refuse").await.ok(200);
    let refused = act(&f, &person, &id, "grant").await;
    let detail = refused.problem("invalid-transition", 409)["detail"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(detail.ends_with("it cannot be granted"), "{detail}");
    act(&f, &person, &id, "undo")
        .await
        .problem("not-found", 404);

    // The audit trail: requested by SII's admin, refused by the person; the refused tries
    // are there too.
    let audit = f
        .registry
        .get("/v1/audit?limit=1000", Some(f.registry.admin()))
        .await
        .ok(200)
        .clone();
    let entries = audit.as_array().unwrap();
    let of = |action: &str| {
        entries
            .iter()
            .find(|e| e["action"] == action && e["object"] == id.as_str())
            .unwrap_or_else(|| panic!("no {action} entry: {audit:#}"))
    };
    assert_eq!(
        of("authorisation.request")["actor"],
        format!("member-admin:{}", demo::SII)
    );
    assert_eq!(
        of("authorisation.refuse")["actor"],
        format!("citizen:{}", demo::PERSON)
    );
    assert_eq!(of("authorisation.refuse")["after"]["state"], "refused");
    assert!(
        entries.iter().any(|e| e["outcome"] == "not-found"
            && e["actor"] == "citizen"
            && e["action"].as_str().unwrap().contains("/grant")),
        "{audit:#}"
    );
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sensitive_field_is_released_over_grpc_only_with_the_authorisation() {
    let f = TestFederation::start_grpc(|_, _| {}).await;
    let now = time::OffsetDateTime::now_utc();
    let rfc = |t: time::OffsetDateTime| {
        t.format(&time::format_description::well_known::Rfc3339)
            .unwrap()
    };
    let contract = approved_contract(
        &f,
        json!({
            "consumer": demo::CONSUMER_SUBSYSTEM, "provider": demo::PERSONAS_GRPC,
            "versions": {"min": "v1.0", "max": "v1.9999"},
            "operations": ["personas.v1.Personas/GetPerson"],
            "purpose": demo::CONSENT_PURPOSE, "legal_basis": "Ley 19.628, art. 10",
            "allowed_fields": ["/name", "/health_insurance"], "subject_required": true,
            "usage": "permanent", "valid_from": rfc(now - time::Duration::minutes(1)),
            "valid_until": rfc(now + time::Duration::days(30)), "authorisation_required": true,
        }),
    )
    .await;
    let call = |authorization: Option<String>| {
        let f = &f;
        let contract = contract.clone();
        async move {
            let mut extra = vec![
                ("enlace-contract", contract.clone()),
                ("enlace-procedure", PROCEDURE.to_string()),
            ];
            if let Some(t) = authorization {
                extra.push(("enlace-authorization", t));
            }
            let extra: Vec<(&str, &str)> = extra.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let mut client = f.grpc_client().await;
            client
                .get_person(f.grpc_request(
                    GetPersonRequest {
                        run: "12345678-5".into(),
                    },
                    &extra,
                ))
                .await
                .expect("the call succeeds")
                .into_inner()
        }
    };
    let without = call(None).await;
    assert_eq!(without.name, "María José Pérez Soto");
    assert_eq!(without.health_insurance, "", "withheld");
    assert!(without.address.is_none(), "not in the contract");
    let (_, t) = granted(&f, demo::PERSON, &contract, PROCEDURE).await;
    let with = call(Some(t)).await;
    assert_eq!(with.health_insurance, "FONASA");
    assert_eq!(with.name, "María José Pérez Soto");
    f.stop().await;
}

/// A `personas` backend that answers a person with two fields under `address` that a later
/// minor version describes: `x` (sensitive) and `y` (secret).
async fn backend_with_new_fields() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().route(
        "/persons/{run}",
        axum::routing::get(|| async {
            axum::Json(json!({
                "run": "12345678-5", "name": "María José Pérez Soto", "birthDate": "1980-04-15",
                "address": {"street": "Av. Libertador Bernardo O'Higgins 1234", "commune": "Santiago",
                            "region": "Metropolitana", "x": "sensible", "y": "secreto"},
                "healthInsurance": "FONASA"
            }))
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

#[tokio::test(flavor = "multi_thread")]
async fn a_later_minor_version_cannot_leak_sensitive_or_secret_fields_under_an_allowed_prefix() {
    let backend = backend_with_new_fields().await;
    let f = TestFederation::start_with(move |s, provider| {
        if provider {
            s.services[0].backend = format!("http://{backend}");
        }
    })
    .await;
    // personas v1.1 adds /address/x (sensitive) and /address/y (secret): a compatible change.
    let mut v11: Value = serde_json::from_str(demo::PERSONAS_OPENAPI).unwrap();
    let props = &mut v11["components"]["schemas"]["Address"]["properties"];
    props["x"] = json!({"type": "string", "x-enlace-class": "sensitive"});
    props["y"] = json!({"type": "string", "x-enlace-class": "secret"});
    f.registry
        .send(
            Method::PUT,
            &format!("/v1/services/{}/versions/v1.1", demo::PERSONAS),
            Some(&f.demo.registro_civil_token),
            "application/json",
            v11.to_string().into_bytes(),
        )
        .await
        .ok(201);
    f.await_config(true, "v1.1", |c| {
        c.services.iter().any(|s| s.version.to_string() == "v1.1")
    })
    .await;
    // The demo contract allows /address whole: the new fields under it stay behind.
    let body = f
        .call(Method::GET, "/persons/12345678-5", &[])
        .await
        .ok(200)
        .clone();
    assert_eq!(
        body["address"]["street"],
        "Av. Libertador Bernardo O'Higgins 1234"
    );
    assert!(body["address"].get("x").is_none(), "{body:#}");
    assert!(body["address"].get("y").is_none(), "{body:#}");
    assert!(body.get("healthInsurance").is_none(), "{body:#}");
    // Even with the person's authorisation (under the consent contract, which allows the
    // health insurance), a secret field never leaves.
    let (_, t) = granted(
        &f,
        demo::PERSON,
        &f.demo.consent_contract.clone(),
        PROCEDURE,
    )
    .await;
    let body = read(&f, Some(&t), PROCEDURE).await;
    assert_eq!(body["healthInsurance"], "FONASA");
    assert!(body.get("address").is_none(), "{body:#}");
    f.stop().await;
}

//! Hidden access records over real HTTP on loopback: only the federation admin hides a person's
//! records of one contract, until a future date and for a stated reason; the citizen view leaves
//! them out until the date and then shows them with the reason, the authority and the period
//! (and so does the page, in a browser); the hiding is in the audit trail.

use std::time::Duration;

use enlace_core::access::{AccessRecord, SignedAccessRecord};
use enlace_core::id::ContractId;
use enlace_msglog::outbox::sign_record;
use enlace_registry::demo;
use enlace_tests::{TestRegistry, start_registry};
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

const AUTHORITY: &str = "Fiscalía Regional Metropolitana Centro Norte, causa RUC 2600012345-6";
const REASON: &str = "Investigación penal en curso (Código Procesal Penal, art. 182)";

fn utc(t: OffsetDateTime) -> String {
    t.replace_nanosecond(0).unwrap().format(&Rfc3339).unwrap()
}

/// A record, made now, of SII reading the demo person under `contract`, signed by the
/// Registro Civil's node.
fn record(r: &TestRegistry, contract: &str) -> SignedAccessRecord {
    let pem = std::fs::read_to_string(
        r.dir
            .path()
            .join("nodes")
            .join("61002000-3")
            .join("signing-key.pem"),
    )
    .unwrap();
    let key = enlace_certs::SigningKey::from_pem(&pem).unwrap();
    let rec = AccessRecord {
        message_id: uuid::Uuid::now_v7().to_string(),
        at: utc(OffsetDateTime::now_utc()),
        consumer_member: demo::SII.into(),
        consumer_subsystem: demo::CONSUMER_SUBSYSTEM.into(),
        provider_service: demo::PERSONAS.into(),
        provider_version: "v1.0".into(),
        operation: "GET /persons/{run}".into(),
        subject: demo::PERSON.into(),
        fields: vec!["/name".into()],
        purpose: "tax-refund-eligibility".into(),
        legal_basis: "Decreto Ley 824".into(),
        contract: contract.into(),
        procedure: None,
        step: None,
        user: None,
        authorisation: None,
        result: "served".into(),
        status: 200,
        request_digest: None,
        response_digest: None,
        node: demo::PROVIDER_NODE.into(),
        authorisation_refused: None,
    };
    sign_record(rec, &key)
}

async fn citizen(r: &TestRegistry, token: &str) -> Value {
    r.get("/v1/citizen/access-records", Some(token))
        .await
        .ok(200)
        .clone()
}

fn contracts(body: &Value) -> Vec<String> {
    body["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            i["record"]["record"]["contract"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn records_hidden_for_an_investigation_appear_after_the_date_with_the_reason() {
    let r = start_registry().await;
    let d = r.seed_demo().await;
    let hiding = |until: String, reason: Option<&str>| {
        let mut b = json!({
            "subject": demo::PERSON,
            "contract": d.contract,
            "until": until,
            "authority": AUTHORITY,
        });
        if let Some(reason) = reason {
            b["legal_reason"] = json!(reason);
        }
        b
    };
    let soon = || utc(OffsetDateTime::now_utc() + time::Duration::seconds(3));

    // Only the federation admin hides records; a past date, no reason, too long a reason, or
    // too far a date are refused.
    r.post(
        "/v1/access-log/hidings",
        Some(&d.sii_token),
        &hiding(soon(), Some(REASON)),
    )
    .await
    .problem("forbidden", 403);
    let past = utc(OffsetDateTime::now_utc() - time::Duration::hours(1));
    for body in [
        hiding(past, Some(REASON)),
        hiding(soon(), None),
        hiding(soon(), Some("  ")),
        hiding(soon(), Some(&"x".repeat(1001))),
        hiding(
            utc(OffsetDateTime::now_utc() + time::Duration::days(6 * 365)),
            Some(REASON),
        ),
    ] {
        let reply = r
            .post("/v1/access-log/hidings", Some(r.admin()), &body)
            .await;
        reply.problem("invalid-request", 400);
    }
    r.get("/v1/access-log/hidings", Some(&d.sii_token))
        .await
        .problem("forbidden", 403);

    // Hidden until three seconds from now.
    let created = r
        .post(
            "/v1/access-log/hidings",
            Some(r.admin()),
            &hiding(soon(), Some(REASON)),
        )
        .await
        .ok(201)
        .clone();
    let hid = created["id"].as_str().unwrap().to_string();
    assert!(hid.starts_with("hid_"), "{created:#}");
    let until = created["until"].as_str().unwrap().to_string();
    let listed = r
        .get("/v1/access-log/hidings", Some(r.admin()))
        .await
        .ok(200)
        .clone();
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed:#}");
    assert_eq!(listed[0]["id"], hid.as_str());

    // A record of the hidden contract, made while hidden, and one of another contract.
    let other_contract = ContractId::generate().to_string();
    let hidden = record(&r, &d.contract);
    let shown = record(&r, &other_contract);
    r.post(
        "/v1/access-records",
        None,
        &serde_json::to_value([&hidden, &shown]).unwrap(),
    )
    .await
    .ok(200);

    let token = r
        .post("/oidc/dev/token", None, &json!({ "sub": demo::PERSON }))
        .await
        .ok(200)["id_token"]
        .as_str()
        .unwrap()
        .to_string();
    // Once a signed tree head covers both records.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while r.get("/v1/access-log/tree-head", None).await.ok(200)["tree_head"]["tree_size"] != 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "no tree head of 2 leaves"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let body = citizen(&r, &token).await;
    assert_eq!(body["total"], 1, "{body:#}");
    assert_eq!(contracts(&body), vec![other_contract.clone()]);
    assert!(body["records"][0].get("hidden_until").is_none());
    // Nor can the person fetch the hidden record's proof by its message id.
    r.get(
        &format!(
            "/v1/access-log/proof/inclusion?message_id={}",
            hidden.record.message_id
        ),
        Some(&token),
    )
    .await
    .problem("not-found", 404);
    // The record is in the log all the same: the federation admin proves its inclusion.
    r.get(
        &format!(
            "/v1/access-log/proof/inclusion?message_id={}",
            hidden.record.message_id
        ),
        Some(r.admin()),
    )
    .await
    .ok(200);

    // After the date, the record appears with the reason, the authority and the period.
    let deadline = OffsetDateTime::parse(&until, &Rfc3339).unwrap();
    while OffsetDateTime::now_utc() < deadline + time::Duration::milliseconds(300) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let body = citizen(&r, &token).await;
    assert_eq!(body["total"], 2, "{body:#}");
    let item = body["records"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["record"]["record"]["contract"] == d.contract.as_str())
        .expect("the hidden record, disclosed");
    assert_eq!(item["hidden_until"], until.as_str());
    assert_eq!(item["hidden_reason"], REASON);
    assert_eq!(item["hidden_authority"], AUTHORITY);
    assert!(item["hidden_from"].as_str().unwrap() < until.as_str());
    let other = body["records"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["record"]["record"]["contract"] == other_contract.as_str())
        .unwrap();
    assert!(other.get("hidden_until").is_none());

    // The hiding is in the audit trail: who, what, when; and so is the member's refused try.
    let audit = r
        .get("/v1/audit?limit=1000", Some(r.admin()))
        .await
        .ok(200)
        .clone();
    let entries = audit.as_array().unwrap();
    let entry = entries
        .iter()
        .find(|e| e["action"] == "access-log.hide")
        .expect("the hiding's audit entry");
    assert_eq!(entry["actor"], "federation-admin");
    assert_eq!(entry["object"], hid.as_str());
    assert_eq!(entry["outcome"], "ok");
    assert_eq!(entry["after"]["legal_reason"], REASON);
    assert_eq!(entry["after"]["subject"], demo::PERSON);
    assert!(entry["at"].as_str().unwrap().ends_with('Z'));
    assert!(
        entries
            .iter()
            .any(|e| e["action"] == "POST /v1/access-log/hidings"
                && e["outcome"] == "forbidden"
                && e["actor"].as_str().unwrap().starts_with("member-admin:")),
        "{audit:#}"
    );
    // The page tells the person, in plain words, that the record was withheld, until when, at
    // whose request and why.
    let mut page =
        crate::browser::Browser::open(&format!("{}/citizen/?dev_run=12345678-5", r.url)).await;
    page.wait_for(
        "document.body.dataset.state === 'done'",
        Duration::from_secs(30),
    )
    .await;
    let note = page
        .eval(&format!(
            "document.querySelector('li.record[data-message-id=\"{}\"] .hidden-note').textContent",
            hidden.record.message_id
        ))
        .await;
    let note = note.as_str().unwrap();
    assert!(
        note.starts_with("Este registro le estuvo reservado desde "),
        "{note}"
    );
    assert!(
        note.contains(&format!("a pedido de {AUTHORITY}. Motivo: {REASON}")),
        "{note}"
    );
    let plain = page
        .eval(&format!(
            "document.querySelector('li.record[data-message-id=\"{}\"] .hidden-note') === null",
            shown.record.message_id
        ))
        .await;
    assert_eq!(plain, json!(true));
    page.close().await;

    // A member admin's audit view does not show the hiding.
    let theirs = r
        .get("/v1/audit?limit=1000", Some(&d.sii_token))
        .await
        .ok(200)
        .clone();
    assert!(
        !theirs
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "access-log.hide")
    );
    r.running.stop().await;
}

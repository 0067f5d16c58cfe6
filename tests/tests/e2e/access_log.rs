//! The citizen access log over real HTTP on loopback: signed access records ingested exactly
//! once, forged records refused with nothing ingested, signed tree heads, inclusion and
//! consistency proofs checked with core's verifiers, tampering detected, the node's durable
//! queue surviving a registry outage, and the ingestion rate.

use std::time::{Duration, Instant};

use enlace_certs::SigningKey;
use enlace_core::access::{AccessRecord, SignedAccessRecord};
use enlace_core::merkle::{ConsistencyProof, InclusionProof, SignedTreeHead};
use enlace_node::access::{AccessQueue, sign_record, spawn_shipper};
use enlace_registry::demo;
use enlace_tests::{TestRegistry, free_port, registry_config, start_registry};
use serde_json::{Value, json};

/// The signing key `seed_demo` wrote for a member's node.
fn node_key(r: &TestRegistry, member_code: &str) -> SigningKey {
    let pem = std::fs::read_to_string(
        r.dir
            .path()
            .join("nodes")
            .join(member_code)
            .join("signing-key.pem"),
    )
    .expect("signing key file");
    SigningKey::from_pem(&pem).expect("signing key")
}

fn rc_key(r: &TestRegistry) -> SigningKey {
    node_key(r, "61002000-3")
}

fn sii_key(r: &TestRegistry) -> SigningKey {
    node_key(r, "60803000-K")
}

/// A record of the demo exchange: SII reads a person from Registro Civil's `personas`.
fn record(contract: &str, node: &str) -> AccessRecord {
    AccessRecord {
        message_id: uuid::Uuid::now_v7().to_string(),
        at: "2026-11-22T10:00:00Z".into(),
        consumer_member: demo::SII.into(),
        consumer_subsystem: demo::CONSUMER_SUBSYSTEM.into(),
        provider_service: demo::PERSONAS.into(),
        provider_version: "v1.0".into(),
        operation: "GET /persons/{run}".into(),
        subject: demo::PERSON.into(),
        fields: vec!["name".into(), "birthDate".into()],
        purpose: "tax refund eligibility".into(),
        legal_basis: "Ley sobre Impuesto a la Renta, art. 1".into(),
        contract: contract.into(),
        procedure: Some("devolucion-renta-2026".into()),
        step: Some("eligibility".into()),
        user: Some("funcionario-17".into()),
        authorisation: None,
        result: "served".into(),
        status: 200,
        request_digest: None,
        response_digest: Some("sha-256=:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=:".into()),
        node: node.into(),
    }
}

fn rc_records(r: &TestRegistry, contract: &str, n: usize) -> Vec<SignedAccessRecord> {
    let key = rc_key(r);
    (0..n)
        .map(|_| sign_record(record(contract, demo::PROVIDER_NODE), &key))
        .collect()
}

async fn ship(r: &TestRegistry, records: &[SignedAccessRecord]) -> enlace_tests::Reply {
    r.post(
        "/v1/access-records",
        None,
        &serde_json::to_value(records).unwrap(),
    )
    .await
}

/// The latest signed tree head, its signature checked with the certificate served beside it,
/// which must be the registry's signing certificate from the federation CA.
async fn verified_head(r: &TestRegistry) -> SignedTreeHead {
    let body = r
        .get("/v1/access-log/tree-head", None)
        .await
        .ok(200)
        .clone();
    check_head(r, &body).await
}

async fn check_head(r: &TestRegistry, body: &Value) -> SignedTreeHead {
    let head: SignedTreeHead = serde_json::from_value(body["tree_head"].clone()).unwrap();
    let cert = body["signer_certificate"].as_str().unwrap();
    let ca = r
        .http
        .get(format!("{}/v1/ca", r.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let trust = enlace_certs::TrustStore::new(&[ca], None).unwrap();
    let instance: enlace_core::Instance = demo::INSTANCE.parse().unwrap();
    let key = enlace_certs::verify_signer(
        &trust,
        cert,
        &enlace_certs::registry_uri(&instance),
        time::OffsetDateTime::now_utc(),
    )
    .expect("the registry's signing certificate");
    use base64::Engine;
    let sig = base64::engine::general_purpose::STANDARD
        .decode(&head.signature_b64)
        .unwrap();
    assert!(
        enlace_certs::verify_ed25519(&key, head.signed_text().as_bytes(), &sig),
        "the tree head's signature verifies"
    );
    assert_eq!(head.signer, enlace_certs::registry_uri(&instance));
    head
}

/// Fetches a record's inclusion proof and checks it against `head`: the leaf hash is recomputed
/// from the served record. Returns whether it verified.
async fn included(r: &TestRegistry, token: &str, message_id: &str, head: &SignedTreeHead) -> bool {
    let body = r
        .get(
            &format!(
                "/v1/access-log/proof/inclusion?message_id={message_id}&size={}",
                head.tree_size
            ),
            Some(token),
        )
        .await
        .ok(200)
        .clone();
    let served: SignedAccessRecord = serde_json::from_value(body["record"].clone()).unwrap();
    assert_eq!(served.record.message_id, message_id);
    let proof: InclusionProof = serde_json::from_value(body["proof"].clone()).unwrap();
    assert_eq!(proof.tree_size, head.tree_size);
    proof.verify(&served.leaf_hash(), &head.root_hash().unwrap())
}

#[tokio::test]
async fn records_are_ingested_once_and_proved_in_signed_tree_heads() {
    let r = start_registry().await;
    let d = r.seed_demo().await;
    let records = rc_records(&r, &d.contract, 3);

    let first = ship(&r, &records).await;
    assert_eq!(
        first.ok(200),
        &json!({"accepted": 3, "duplicates": 0, "tree_size": 3})
    );
    // At least once from the node, exactly once in the log.
    let again = ship(&r, &records).await;
    assert_eq!(
        again.ok(200),
        &json!({"accepted": 0, "duplicates": 3, "tree_size": 3})
    );
    let mixed = ship(&r, &[records[0].clone(), records[0].clone()]).await;
    assert_eq!(mixed.ok(200)["tree_size"], 3);

    // Another record under a logged message id is refused, and nothing is added.
    let mut other = record(&d.contract, demo::PROVIDER_NODE);
    other.message_id = records[1].record.message_id.clone();
    other.fields.push("address".into());
    let other = sign_record(other, &rc_key(&r));
    ship(&r, &[other]).await.problem("already-exists", 409);

    let head1 = verified_head(&r).await;
    assert_eq!(head1.tree_size, 3);
    for rec in &records {
        assert!(included(&r, r.admin(), &rec.record.message_id, &head1).await);
    }
    // The provider's and the consumer's member admins see the record; anonymous callers don't.
    assert!(
        included(
            &r,
            &d.registro_civil_token,
            &records[0].record.message_id,
            &head1
        )
        .await
    );
    assert!(included(&r, &d.sii_token, &records[0].record.message_id, &head1).await);
    r.get(
        &format!(
            "/v1/access-log/proof/inclusion?message_id={}",
            records[0].record.message_id
        ),
        None,
    )
    .await
    .problem("unauthenticated", 401);

    // The anchored log heads of nodes are leaves too.
    let rc = rc_key(&r);
    let at = "2026-11-22T10:00:01Z";
    let hash_hex = "ab".repeat(32);
    let text = enlace_core::loghead::head_text(demo::PROVIDER_NODE, 7, &hash_hex, at);
    use base64::Engine;
    let log_head = json!({
        "node": demo::PROVIDER_NODE, "seq": 7, "hash_hex": hash_hex, "at": at,
        "signature_b64": base64::engine::general_purpose::STANDARD.encode(rc.sign(text.as_bytes())),
    });
    r.post("/v1/log-heads", None, &log_head).await.ok(204);
    r.post("/v1/log-heads", None, &log_head).await.ok(204);

    let more = rc_records(&r, &d.contract, 5);
    assert_eq!(ship(&r, &more).await.ok(200)["tree_size"], 9);
    let head2 = verified_head(&r).await;
    assert_eq!(head2.tree_size, 9, "3 records, 1 log head, 5 records");
    assert!(included(&r, r.admin(), &records[2].record.message_id, &head2).await);
    assert!(included(&r, r.admin(), &more[4].record.message_id, &head2).await);

    // The older head is still served, and the log only grew between the two.
    let old = r
        .get("/v1/access-log/tree-heads?size=3", None)
        .await
        .ok(200)
        .clone();
    assert_eq!(check_head(&r, &old).await, head1);
    r.get("/v1/access-log/tree-heads?size=4", None)
        .await
        .problem("not-found", 404);
    let body = r
        .get("/v1/access-log/proof/consistency?from=3&to=9", None)
        .await
        .ok(200)
        .clone();
    let proof: ConsistencyProof = serde_json::from_value(body).unwrap();
    assert!(proof.verify(&head1.root_hash().unwrap(), &head2.root_hash().unwrap()));
    assert!(!proof.verify(&head2.root_hash().unwrap(), &head1.root_hash().unwrap()));
    r.get("/v1/access-log/proof/consistency?from=3&to=99", None)
        .await
        .problem("not-found", 404);
}

#[tokio::test]
async fn forged_records_are_refused_and_nothing_is_ingested() {
    let r = start_registry().await;
    let d = r.seed_demo().await;
    let good = rc_records(&r, &d.contract, 2);

    // Registro Civil's record signed with SII's node key.
    let forged = sign_record(record(&d.contract, demo::PROVIDER_NODE), &sii_key(&r));
    let p = ship(&r, &[good[0].clone(), forged, good[1].clone()]).await;
    p.problem("signature-invalid", 401);

    // SII's node, with its own key, claiming an access to Registro Civil's service.
    let impostor = sign_record(record(&d.contract, demo::CONSUMER_NODE), &sii_key(&r));
    ship(&r, &[good[0].clone(), impostor])
        .await
        .problem("forbidden", 403);

    // A record altered after signing.
    let mut altered = good[1].clone();
    altered.record.fields.push("address".into());
    ship(&r, &[altered]).await.problem("signature-invalid", 401);

    // A record without its subject, and one from an unknown node.
    let mut no_subject = record(&d.contract, demo::PROVIDER_NODE);
    no_subject.subject = String::new();
    ship(&r, &[sign_record(no_subject, &rc_key(&r))])
        .await
        .problem("invalid-request", 400);
    let stranger = sign_record(
        record(&d.contract, "CL-DEV/GOV/61002000-3/node/zz"),
        &rc_key(&r),
    );
    ship(&r, &[stranger]).await.problem("not-found", 404);

    assert_eq!(verified_head(&r).await.tree_size, 0, "nothing was ingested");
    r.get(
        &format!(
            "/v1/access-log/proof/inclusion?message_id={}",
            good[0].record.message_id
        ),
        Some(r.admin()),
    )
    .await
    .problem("not-found", 404);
}

#[tokio::test]
async fn a_record_altered_in_the_database_fails_its_inclusion_check() {
    let r = start_registry().await;
    let d = r.seed_demo().await;
    let records = rc_records(&r, &d.contract, 4);
    ship(&r, &records).await.ok(200);
    let head = verified_head(&r).await;
    let target = &records[2].record.message_id;
    assert!(included(&r, r.admin(), target, &head).await);

    // Someone with the database file rewrites the purpose of one record.
    let db = rusqlite::Connection::open(r.dir.path().join("registry/access.sqlite")).unwrap();
    db.execute_batch("DROP TRIGGER access_records_no_update")
        .unwrap();
    let bytes: Vec<u8> = db
        .query_row(
            "SELECT record FROM access_records WHERE message_id = ?1",
            [target],
            |row| row.get(0),
        )
        .unwrap();
    let text = String::from_utf8(bytes).unwrap();
    let altered = text.replace("tax refund eligibility", "routine statistics");
    assert_ne!(altered, text);
    db.execute(
        "UPDATE access_records SET record = ?1 WHERE message_id = ?2",
        rusqlite::params![altered.into_bytes(), target],
    )
    .unwrap();

    assert!(
        !included(&r, r.admin(), target, &head).await,
        "the altered record no longer matches its leaf"
    );
    assert!(included(&r, r.admin(), &records[1].record.message_id, &head).await);
}

#[tokio::test]
async fn the_node_queue_keeps_records_while_the_registry_is_down() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = registry_config(dir.path());
    cfg.listen = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let running = enlace_registry::start(&cfg).await.unwrap();
    let url = format!("http://{}", running.addr);
    let r = TestRegistry {
        running,
        url: url.clone(),
        dir,
        http: reqwest::Client::new(),
    };
    let d = r.seed_demo().await;
    let records = rc_records(&r, &d.contract, 1200);
    let TestRegistry {
        running, dir, http, ..
    } = r;
    running.stop().await;

    // The registry is down: the node queues durably, the shipper keeps trying.
    let queue = AccessQueue::open(&dir.path().join("access-queue.sqlite")).unwrap();
    for rec in &records {
        queue.enqueue(rec).await.unwrap();
    }
    let shipper = spawn_shipper(
        queue.clone(),
        url.clone(),
        http.clone(),
        Duration::from_millis(100),
    );
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(queue.pending().unwrap(), 1200, "nothing is lost while down");

    // The registry comes back on the same address: everything arrives, once.
    let running = enlace_registry::start(&cfg).await.unwrap();
    let r = TestRegistry {
        running,
        url,
        dir,
        http,
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while queue.pending().unwrap() > 0 {
        assert!(Instant::now() < deadline, "the queue drains");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    shipper.abort();
    assert_eq!(queue.rejected().unwrap(), 0);
    let head = verified_head(&r).await;
    assert_eq!(head.tree_size, 1200);
    assert!(included(&r, r.admin(), &records[1199].record.message_id, &head).await);
}

#[tokio::test]
async fn ingestion_rate() {
    let r = start_registry().await;
    let d = r.seed_demo().await;
    const BATCHES: usize = 10;
    let bodies: Vec<Vec<u8>> = (0..BATCHES)
        .map(|_| serde_json::to_vec(&rc_records(&r, &d.contract, 1000)).unwrap())
        .collect();
    let started = Instant::now();
    for body in bodies {
        r.send(
            reqwest::Method::POST,
            "/v1/access-records",
            None,
            "application/json",
            body,
        )
        .await
        .ok(200);
    }
    let elapsed = started.elapsed();
    let rate = (BATCHES * 1000) as f64 / elapsed.as_secs_f64();
    println!(
        "access log ingestion: {} records in {:.2?}: {rate:.0} records/s over HTTP, verification included ({} build)",
        BATCHES * 1000,
        elapsed,
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
    );
    assert_eq!(verified_head(&r).await.tree_size, (BATCHES * 1000) as u64);
}

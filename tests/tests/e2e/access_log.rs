//! The citizen access log over real HTTP on loopback: signed access records ingested exactly
//! once (per message id and emitting node), forged records refused with nothing ingested,
//! records signed before a key renewal still accepted, signed tree heads on a schedule,
//! inclusion and consistency proofs checked with core's verifiers, tampering with a record or a
//! tree node detected, anchored log heads proved, and the node's durable queue surviving a
//! registry outage.

use std::time::{Duration, Instant};

use enlace_certs::SigningKey;
use enlace_core::access::{AccessRecord, SignedAccessRecord};
use enlace_core::merkle::{ConsistencyProof, InclusionProof, SignedTreeHead};
use enlace_msglog::outbox::{AccessQueue, sign_record, spawn_shipper};
use enlace_msglog::{Extras, MessageLog, Record, RecordKind};
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

/// Now, as records state it: RFC 3339 UTC, whole seconds.
fn now_utc() -> String {
    time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

/// A record of the demo exchange: SII reads a person from Registro Civil's `personas`.
fn record(contract: &str, node: &str) -> AccessRecord {
    AccessRecord {
        message_id: uuid::Uuid::now_v7().to_string(),
        at: now_utc(),
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
        authorisation_refused: None,
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

/// The latest signed tree head once it covers `size` leaves (heads are signed on a schedule,
/// every second while the log grows), its signature checked with the certificate served beside
/// it, which must be the registry's signing certificate from the federation CA.
async fn verified_head(r: &TestRegistry, size: u64) -> SignedTreeHead {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let body = r
            .get("/v1/access-log/tree-head", None)
            .await
            .ok(200)
            .clone();
        if body["tree_head"]["tree_size"].as_u64() == Some(size) {
            return check_head(r, &body).await;
        }
        assert!(
            Instant::now() < deadline,
            "no tree head of size {size}: {body:#}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
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

    let head1 = verified_head(&r, 3).await;
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
    let at = &now_utc();
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
    // 3 records, 1 log head, 5 records.
    let head2 = verified_head(&r, 9).await;
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

    // Nothing was ingested.
    verified_head(&r, 0).await;
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
    let head = verified_head(&r, 4).await;
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

/// What a provider node does as it closes an exchange: its last log record and the exchange's
/// signed access record, committed together.
async fn log_with_access_record(log: &MessageLog, rec: &SignedAccessRecord) {
    let id = rec.record.message_id.clone();
    let closing = Record {
        client: rec.record.consumer_subsystem.clone(),
        service: rec.record.provider_service.clone(),
        operation: rec.record.operation.clone(),
        contract: Some(rec.record.contract.clone()),
        status: rec.record.status,
        ..Record::new(
            id.clone(),
            RecordKind::ResponseOut,
            time::OffsetDateTime::now_utc(),
        )
    };
    let extras = Extras {
        usage: Vec::new(),
        access: Some((id, rec.canonical_bytes())),
    };
    log.append_with(closing, extras).await.unwrap();
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

    // The registry is down: the node queues durably (each record committed with the log
    // record closing its exchange), the shipper keeps trying.
    let log_path = dir.path().join("messages.sqlite");
    let log = MessageLog::open(&log_path, Default::default()).unwrap();
    let queue = AccessQueue::in_log(&log_path).unwrap();
    for rec in &records {
        log_with_access_record(&log, rec).await;
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
    let head = verified_head(&r, 1200).await;
    assert!(included(&r, r.admin(), &records[1199].record.message_id, &head).await);
}

#[tokio::test]
async fn a_consistency_proof_fails_when_a_stored_tree_node_is_altered() {
    use enlace_node::audit::Evidence;
    let r = start_registry().await;
    let d = r.seed_demo().await;
    ship(&r, &rc_records(&r, &d.contract, 3)).await.ok(200);
    let head1 = verified_head(&r, 3).await;
    ship(&r, &rc_records(&r, &d.contract, 5)).await.ok(200);
    let head2 = verified_head(&r, 8).await;
    let proof_of = |body: Value| serde_json::from_value::<ConsistencyProof>(body).unwrap();
    let body = r
        .get("/v1/access-log/proof/consistency?from=3&to=8", None)
        .await
        .ok(200)
        .clone();
    let (root1, root2) = (head1.root_hash().unwrap(), head2.root_hash().unwrap());
    assert!(proof_of(body).verify(&root1, &root2));
    let ca = r.running.registry.ca_pem().to_string();
    let saved = r
        .get("/v1/access-log/evidence/consistency?from=3&to=8", None)
        .await
        .ok(200)
        .clone();
    let saved = Evidence::parse(saved.to_string().as_bytes()).unwrap();
    assert_eq!(saved.verify(&ca).unwrap().lines.len(), 3);

    // Someone with the database file rewrites the stored root of leaves 0 and 1, a node the
    // proof from 3 to 8 leaves carries.
    let db = rusqlite::Connection::open(r.dir.path().join("registry/access.sqlite")).unwrap();
    db.execute_batch("DROP TRIGGER merkle_nodes_no_update")
        .unwrap();
    let changed = db
        .execute(
            "UPDATE merkle_nodes SET hash = ?1 WHERE level = 1 AND idx = 0",
            [vec![7u8; 32]],
        )
        .unwrap();
    assert_eq!(changed, 1);

    let body = r
        .get("/v1/access-log/proof/consistency?from=3&to=8", None)
        .await
        .ok(200)
        .clone();
    assert!(
        !proof_of(body).verify(&root1, &root2),
        "the altered node no longer leads to the signed roots"
    );
    let altered = r
        .get("/v1/access-log/evidence/consistency?from=3&to=8", None)
        .await
        .ok(200)
        .clone();
    let altered = Evidence::parse(altered.to_string().as_bytes()).unwrap();
    let p = altered.verify(&ca).unwrap_err();
    assert!(p.detail.contains("rewritten"), "{p:?}");
    // The evidence saved before still verifies, offline.
    saved.verify(&ca).unwrap();
}

#[tokio::test]
async fn records_signed_before_a_key_renewal_are_still_accepted() {
    let r = start_registry().await;
    let d = r.seed_demo().await;
    let old = rc_records(&r, &d.contract, 2);
    // A node's record dated before its certificate existed: no key to verify it with.
    let mut before = record(&d.contract, demo::PROVIDER_NODE);
    before.at = "2020-01-01T00:00:00Z".into();
    let before = sign_record(before, &rc_key(&r));

    // The Registro Civil renews its node's keys: the records queued with the old key remain
    // good, and the new key signs from now on.
    let node: enlace_core::NodeId = demo::PROVIDER_NODE.parse().unwrap();
    let keys = enlace_certs::node_init(&node).unwrap();
    r.post(
        &format!("/v1/nodes/{}/renew", demo::PROVIDER_NODE),
        Some(&d.registro_civil_token),
        &json!({"tls_csr": keys.tls_csr_pem, "signing_csr": keys.signing_csr_pem}),
    )
    .await
    .ok(200);
    let new_key = SigningKey::from_pem(&keys.signing_key_pem).unwrap();
    let new = sign_record(record(&d.contract, demo::PROVIDER_NODE), &new_key);

    ship(&r, &old).await.ok(200);
    ship(&r, &[new]).await.ok(200);
    ship(&r, &[before]).await.problem("signature-invalid", 401);
    verified_head(&r, 3).await;
}

/// Registers and approves a second node of the Registro Civil; returns its signing key.
async fn second_provider_node(r: &TestRegistry, d: &demo::Demo) -> (String, SigningKey) {
    let id = "CL-DEV/GOV/61002000-3/node/b".to_string();
    let keys = enlace_certs::node_init(&id.parse().unwrap()).unwrap();
    r.post(
        "/v1/nodes",
        Some(&d.registro_civil_token),
        &json!({"id": id, "address": "127.0.0.1:3", "tls_csr": keys.tls_csr_pem, "signing_csr": keys.signing_csr_pem}),
    )
    .await
    .ok(201);
    r.post(
        &format!("/v1/nodes/{id}/approve"),
        Some(r.admin()),
        &json!({}),
    )
    .await
    .ok(200);
    (id, SigningKey::from_pem(&keys.signing_key_pem).unwrap())
}

#[tokio::test]
async fn a_message_id_reused_at_another_provider_is_logged_twice_and_shown() {
    let r = start_registry().await;
    let d = r.seed_demo().await;
    let (node_b, key_b) = second_provider_node(&r, &d).await;
    // A consumer sends the same message id to two provider nodes: both accesses are logged.
    let at_a = sign_record(record(&d.contract, demo::PROVIDER_NODE), &rc_key(&r));
    let mut b = record(&d.contract, &node_b);
    b.message_id = at_a.record.message_id.clone();
    let at_b = sign_record(b, &key_b);
    ship(&r, std::slice::from_ref(&at_a)).await.ok(200);
    let second = ship(&r, std::slice::from_ref(&at_b)).await;
    assert_eq!(second.ok(200)["accepted"], 1, "{:#}", second.body);
    // Each once.
    assert_eq!(
        ship(&r, &[at_a.clone(), at_b.clone()]).await.ok(200)["duplicates"],
        2
    );
    let head = verified_head(&r, 2).await;

    // The person sees both.
    let token = r
        .post("/oidc/dev/token", None, &json!({ "sub": demo::PERSON }))
        .await
        .ok(200)["id_token"]
        .as_str()
        .unwrap()
        .to_string();
    let mine = r.get("/v1/citizen/access-records", Some(&token)).await;
    assert_eq!(mine.ok(200)["total"], 2, "{:#}", mine.body);
    // By message id alone the record is ambiguous; naming the node picks one.
    let id = &at_a.record.message_id;
    r.get(
        &format!("/v1/access-log/proof/inclusion?message_id={id}"),
        Some(r.admin()),
    )
    .await
    .problem("invalid-request", 400);
    let body = r
        .get(
            &format!(
                "/v1/access-log/proof/inclusion?message_id={id}&node={node_b}&size={}",
                head.tree_size
            ),
            Some(r.admin()),
        )
        .await
        .ok(200)
        .clone();
    let served: SignedAccessRecord = serde_json::from_value(body["record"].clone()).unwrap();
    assert_eq!(served, at_b);
    let proof: InclusionProof = serde_json::from_value(body["proof"].clone()).unwrap();
    assert!(proof.verify(&at_b.leaf_hash(), &head.root_hash().unwrap()));
}

#[tokio::test]
async fn whose_record_it_is_is_checked_before_the_tree_size() {
    let r = start_registry().await;
    let d = r.seed_demo().await;
    let records = rc_records(&r, &d.contract, 2);
    ship(&r, &records).await.ok(200);
    verified_head(&r, 2).await;
    let id = &records[1].record.message_id;
    let unknown = uuid::Uuid::now_v7().to_string();
    // Another person, and a member with no part in the exchange, asking with size=0 (or any
    // size) learn exactly what they learn of a message id that does not exist.
    let other = r
        .post(
            "/oidc/dev/token",
            None,
            &json!({ "sub": "CL-RUN:11111111-1" }),
        )
        .await
        .ok(200)["id_token"]
        .as_str()
        .unwrap()
        .to_string();
    r.post(
        "/v1/members",
        Some(r.admin()),
        &json!({"id": "CL-DEV/GOV/61979440-0", "name": "Servicio Nacional de Migraciones"}),
    )
    .await
    .ok(201);
    let third = r
        .post(
            "/v1/members/CL-DEV/GOV/61979440-0/tokens",
            Some(r.admin()),
            &json!({"label": "t"}),
        )
        .await
        .ok(201)["token"]
        .as_str()
        .unwrap()
        .to_string();
    for token in [&other, &third] {
        for size in ["0", "1", "2"] {
            let theirs = r
                .get(
                    &format!("/v1/access-log/proof/inclusion?message_id={id}&size={size}"),
                    Some(token),
                )
                .await;
            let none = r
                .get(
                    &format!("/v1/access-log/proof/inclusion?message_id={unknown}&size={size}"),
                    Some(token),
                )
                .await;
            let detail = theirs.problem("not-found", 404)["detail"].clone();
            none.problem("not-found", 404);
            assert_eq!(detail, format!("no access record with message id {id}"));
            assert!(theirs.body.get("leaf_index").is_none(), "{:#}", theirs.body);
        }
    }
    // The admin asking for a size the record is beyond is told so.
    r.get(
        &format!("/v1/access-log/proof/inclusion?message_id={id}&size=1"),
        Some(r.admin()),
    )
    .await
    .problem("not-found", 404);
}

#[tokio::test]
async fn an_anchored_log_head_is_proved_in_the_signed_tree() {
    use base64::Engine;
    use enlace_node::audit::Evidence;
    let r = start_registry().await;
    let _ = r.seed_demo().await;
    let hash_hex = "cd".repeat(32);
    let at = now_utc();
    let text = enlace_core::loghead::head_text(demo::PROVIDER_NODE, 3, &hash_hex, &at);
    let head = json!({
        "node": demo::PROVIDER_NODE, "seq": 3, "hash_hex": hash_hex, "at": at,
        "signature_b64": base64::engine::general_purpose::STANDARD.encode(rc_key(&r).sign(text.as_bytes())),
    });
    r.post("/v1/log-heads", None, &head).await.ok(204);
    // A head signed with another node's key is refused and leaves no leaf.
    let mut forged = head.clone();
    forged["seq"] = json!(4);
    let text4 = enlace_core::loghead::head_text(demo::PROVIDER_NODE, 4, &hash_hex, &at);
    forged["signature_b64"] =
        json!(base64::engine::general_purpose::STANDARD.encode(sii_key(&r).sign(text4.as_bytes())));
    r.post("/v1/log-heads", None, &forged)
        .await
        .problem("signature-invalid", 401);
    verified_head(&r, 1).await;
    let ca = r.running.registry.ca_pem().to_string();
    let body = r
        .get(
            &format!("/v1/log-heads/{}/proof?seq=3", demo::PROVIDER_NODE),
            None,
        )
        .await
        .ok(200)
        .clone();
    let evidence = Evidence::parse(body.to_string().as_bytes()).unwrap();
    let report = evidence.verify(&ca).unwrap();
    assert!(report.lines[1].contains("seq 3"), "{report:?}");
    // The same evidence with another hash in the head does not verify.
    let mut altered = body.clone();
    altered["head"]["hash_hex"] = json!("ef".repeat(32));
    let altered = Evidence::parse(altered.to_string().as_bytes()).unwrap();
    assert!(altered.verify(&ca).is_err());
    r.get(
        &format!("/v1/log-heads/{}/proof?seq=4", demo::PROVIDER_NODE),
        None,
    )
    .await
    .problem("not-found", 404);
    let listed = r
        .get(&format!("/v1/log-heads/{}", demo::PROVIDER_NODE), None)
        .await
        .ok(200)
        .clone();
    assert_eq!(listed.as_array().unwrap().len(), 1);
}

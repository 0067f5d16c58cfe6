//! The access log on its own: exactly-once ingestion keyed on message id and node, the migration
//! of a first-version database, and log heads anchored in the same transaction as their leaf.

use enlace_core::access::{AccessRecord, SignedAccessRecord};
use enlace_core::merkle::SignedTreeHead;

use super::*;

fn record(n: usize) -> SignedAccessRecord {
    SignedAccessRecord {
        record: AccessRecord {
            message_id: format!("0190f3a2-{n:012}"),
            at: "2026-11-22T10:00:00Z".into(),
            consumer_member: "CL-DEV/GOV/60803000-K".into(),
            consumer_subsystem: "CL-DEV/GOV/60803000-K/renta".into(),
            provider_service: "CL-DEV/GOV/61002000-3/registro-civil/personas".into(),
            provider_version: "v1.0".into(),
            operation: "GET /persons/{run}".into(),
            subject: "CL-RUN:12345678-5".into(),
            fields: vec!["name".into(), "birthDate".into()],
            purpose: "tax refund eligibility".into(),
            legal_basis: "Ley sobre Impuesto a la Renta".into(),
            contract: "ctr_01JAAAAAAAAAAAAAAAAAAAAAAA".into(),
            procedure: None,
            step: None,
            user: Some("funcionario-17".into()),
            authorisation: None,
            result: "served".into(),
            status: 200,
            request_digest: None,
            response_digest: None,
            node: "CL-DEV/GOV/61002000-3/node/a".into(),
            authorisation_refused: None,
        },
        signature_b64: "c2lnbmF0dXJl".into(),
    }
}

#[test]
fn ingestion_is_idempotent_and_refuses_a_second_record_under_one_id() {
    let dir = tempfile::tempdir().unwrap();
    let log = AccessLogStore::open(&dir.path().join("access.sqlite")).unwrap();
    let batch: Vec<_> = (0..5).map(record).collect();
    let first = log.ingest(&batch).unwrap();
    assert_eq!(
        (first.accepted, first.duplicates, first.tree_size),
        (5, 0, 5)
    );
    let again = log.ingest(&batch[1..3]).unwrap();
    assert_eq!(
        (again.accepted, again.duplicates, again.tree_size),
        (0, 2, 5)
    );

    let mut other = record(3);
    other.record.purpose = "something else".into();
    let p = log.ingest(&[record(9), other]).unwrap_err();
    assert_eq!(p.kind, ProblemKind::AlreadyExists);
    assert_eq!(log.size().unwrap(), 5, "the whole batch was refused");

    // Stored rows and leaves agree, and the tree's root is the reference one.
    let leaves: Vec<Hash> = batch.iter().map(SignedAccessRecord::leaf_hash).collect();
    assert_eq!(log.current().unwrap(), (5, merkle::root(&leaves)));
    let found = log.find(&batch[3].record.message_id, None).unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].record, batch[3]);
    let proof = log.inclusion_proof(found[0].idx, 5).unwrap();
    assert!(proof.verify(&leaves[3], &merkle::root(&leaves)));
    assert_eq!(
        log.inclusion_proof(found[0].idx, 3).unwrap_err().kind,
        ProblemKind::NotFound
    );
}

#[test]
fn one_message_id_from_two_nodes_is_two_records() {
    let dir = tempfile::tempdir().unwrap();
    let log = AccessLogStore::open(&dir.path().join("access.sqlite")).unwrap();
    let first = record(1);
    let mut second = record(1);
    second.record.node = "CL-DEV/GOV/61002000-3/node/b".into();
    assert_eq!(
        log.ingest(&[first.clone(), second.clone()])
            .unwrap()
            .accepted,
        2
    );
    assert_eq!(log.find(&first.record.message_id, None).unwrap().len(), 2);
    let b = log
        .find(
            &first.record.message_id,
            Some("CL-DEV/GOV/61002000-3/node/b"),
        )
        .unwrap();
    assert_eq!(b.len(), 1);
    assert_eq!(b[0].record, second);
    // Each is ingested once: sent again, both are duplicates.
    let again = log.ingest(&[second, first]).unwrap();
    assert_eq!((again.accepted, again.duplicates), (0, 2));
}

/// The first schema's table (records keyed on the message id alone) is migrated in place:
/// rows, leaves and proofs stay as they were.
#[test]
fn a_first_version_log_is_migrated_and_keeps_its_tree() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("access.sqlite");
    let batch: Vec<_> = (0..7).map(record).collect();
    {
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(
            "CREATE TABLE access_records (idx INTEGER PRIMARY KEY, message_id TEXT NOT NULL UNIQUE,
                subject TEXT NOT NULL, at TEXT NOT NULL, consumer_member TEXT NOT NULL,
                purpose TEXT NOT NULL, record BLOB NOT NULL);
             CREATE INDEX access_records_subject_at ON access_records (subject, at);
             CREATE TRIGGER access_records_no_update BEFORE UPDATE ON access_records
                BEGIN SELECT RAISE(ABORT, 'append-only'); END;",
        )
        .unwrap();
        let mut store = MerkleStore::with_connection(conn).unwrap();
        store
            .append_with(|tx, first| -> Result<Vec<Hash>, MerkleStoreError> {
                for (i, r) in batch.iter().enumerate() {
                    tx.execute(
                        "INSERT INTO access_records VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                        params![
                            (first + i as u64) as i64,
                            r.record.message_id,
                            r.record.subject,
                            r.record.at,
                            r.record.consumer_member,
                            r.record.purpose,
                            r.canonical_bytes()
                        ],
                    )?;
                }
                Ok(batch.iter().map(SignedAccessRecord::leaf_hash).collect())
            })
            .unwrap();
    }
    let log = AccessLogStore::open(&path).unwrap();
    let leaves: Vec<Hash> = batch.iter().map(SignedAccessRecord::leaf_hash).collect();
    assert_eq!(log.current().unwrap(), (7, merkle::root(&leaves)));
    let found = log
        .find(&batch[4].record.message_id, Some(&batch[4].record.node))
        .unwrap();
    assert_eq!(found[0].record, batch[4]);
    // Still append-only, and keyed on (message id, node) now.
    let mut other_node = record(4);
    other_node.record.node = "CL-DEV/GOV/61002000-3/node/b".into();
    assert_eq!(log.ingest(&[other_node]).unwrap().tree_size, 8);
    let conn = Connection::open(&path).unwrap();
    assert!(conn.execute("DELETE FROM access_records", []).is_err());
    drop(log);
    // Opening again changes nothing.
    let log = AccessLogStore::open(&path).unwrap();
    assert_eq!(log.size().unwrap(), 8);
}

#[test]
fn log_heads_are_checked_and_appended_in_one_transaction() {
    let dir = tempfile::tempdir().unwrap();
    let log = AccessLogStore::open(&dir.path().join("access.sqlite")).unwrap();
    let head = |seq: u64, hash: &str| enlace_core::loghead::SignedHead {
        node: "CL-DEV/GOV/61002000-3/node/a".into(),
        seq,
        hash_hex: hash.repeat(32),
        at: "2026-11-22T10:00:00Z".into(),
        signature_b64: "c2ln".into(),
    };
    assert!(log.anchor_log_head(&head(5, "ab")).unwrap());
    assert!(!log.anchor_log_head(&head(5, "ab")).unwrap(), "once");
    assert_eq!(
        log.anchor_log_head(&head(5, "cd")).unwrap_err().kind,
        ProblemKind::AlreadyExists
    );
    assert_eq!(
        log.anchor_log_head(&head(4, "cd")).unwrap_err().kind,
        ProblemKind::InvalidRequest
    );
    assert!(log.anchor_log_head(&head(9, "ef")).unwrap());
    assert_eq!(log.size().unwrap(), 2, "refused heads left no leaf");
    let heads = log.log_heads("CL-DEV/GOV/61002000-3/node/a").unwrap();
    assert_eq!(heads.iter().map(|h| h.seq).collect::<Vec<_>>(), vec![5, 9]);
    let (h, proof) = log
        .log_head_proof("CL-DEV/GOV/61002000-3/node/a", 9, 2)
        .unwrap();
    let leaf = merkle::leaf_hash(&serde_json::to_vec(&h).unwrap());
    assert!(proof.verify(&leaf, &log.current().unwrap().1));
}

/// A tree head of the current tree, stored as the scheduler would (unsigned: the check reads
/// roots, not signatures).
fn store_current_head(log: &AccessLogStore) {
    let (size, root) = log.current().unwrap();
    let head = PublishedTreeHead {
        tree_head: SignedTreeHead {
            tree_size: size,
            root_hash_hex: hex::encode(root),
            timestamp: "2026-11-22T10:00:00Z".into(),
            signature_b64: String::new(),
            signer: "urn:enlace:registry:CL-DEV".into(),
        },
        signer_certificate: String::new(),
    };
    log.store_head(&head).unwrap();
}

#[test]
fn the_consistency_check_passes_a_log_and_names_the_leaf_that_was_altered() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("access.sqlite");
    let log = AccessLogStore::open(&path).unwrap();
    for n in 0..3 {
        log.ingest(&[record(2 * n), record(2 * n + 1)]).unwrap();
        store_current_head(&log);
    }
    log.ingest(&[record(6)]).unwrap();
    let checked = check::check_file(&path).unwrap();
    assert_eq!(
        (
            checked.leaves,
            checked.records,
            checked.log_heads,
            checked.tree_heads
        ),
        (7, 7, 0, 3)
    );
    // Three subtrees of two leaves, one of four.
    assert_eq!(checked.subtrees, 4, "{checked:?}");
    drop(log);

    // Tamper behind the triggers' back: a record's bytes, then a stored subtree.
    let conn = Connection::open(&path).unwrap();
    let triggers: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'trigger'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    for t in triggers {
        conn.execute_batch(&format!("DROP TRIGGER {t}")).unwrap();
    }
    conn.execute(
        "UPDATE access_records SET record = CAST('{}' AS BLOB) WHERE idx = 4",
        [],
    )
    .unwrap();
    let e = check::check_file(&path).unwrap_err();
    assert!(e.contains("leaf 4"), "{e}");
    conn.execute("DELETE FROM access_records WHERE idx = 4", [])
        .unwrap();
    let e = check::check_file(&path).unwrap_err();
    assert!(e.contains("leaf 4 has no access record"), "{e}");
}

#[test]
fn the_consistency_check_finds_a_stored_subtree_that_is_not_the_hash_of_its_leaves() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("access.sqlite");
    let log = AccessLogStore::open(&path).unwrap();
    log.ingest(&(0..4).map(record).collect::<Vec<_>>()).unwrap();
    store_current_head(&log);
    drop(log);
    let conn = Connection::open(&path).unwrap();
    for t in ["merkle_nodes_no_update", "merkle_leaves_no_update"] {
        conn.execute_batch(&format!("DROP TRIGGER IF EXISTS {t}"))
            .unwrap();
    }
    let zero = [0u8; 32];
    let changed = conn
        .execute(
            "UPDATE merkle_nodes SET hash = ?1 WHERE level = 1 AND idx = 1",
            [zero.as_slice()],
        )
        .unwrap();
    assert_eq!(changed, 1);
    let e = check::check_file(&path).unwrap_err();
    assert!(e.contains("subtree (level 1, index 1)"), "{e}");
}

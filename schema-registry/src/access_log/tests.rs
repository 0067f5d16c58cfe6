use std::time::Instant;

use enlace_core::access::{AccessRecord, SignedAccessRecord};

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
        },
        signature_b64: "c2lnbmF0dXJl".into(),
    }
}

#[test]
fn ingestion_is_idempotent_and_refuses_a_second_record_under_one_id() {
    let dir = tempfile::tempdir().unwrap();
    let log = AccessLog::open(&dir.path().join("access.sqlite")).unwrap();
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
    let (proof, parsed) = log.inclusion(&batch[3].record.message_id, 5).unwrap();
    assert_eq!(parsed, batch[3]);
    assert!(proof.proof.verify(&leaves[3], &merkle::root(&leaves)));
}

/// Storage-only ingestion rate, against a baseline measured in the same run: the same rows
/// inserted in one transaction per batch into a plain table, without the tree or the
/// duplicate check.
#[test]
fn storage_ingestion_rate_against_plain_inserts() {
    const N: usize = 20_000;
    const BATCH: usize = 1000;
    let records: Vec<_> = (0..N).map(record).collect();
    let dir = tempfile::tempdir().unwrap();

    let plain = Connection::open(dir.path().join("plain.sqlite")).unwrap();
    plain.pragma_update(None, "journal_mode", "WAL").unwrap();
    plain.pragma_update(None, "synchronous", "FULL").unwrap();
    plain
        .execute_batch("CREATE TABLE t (idx INTEGER PRIMARY KEY, message_id TEXT, record BLOB)")
        .unwrap();
    let mut plain = plain;
    let started = Instant::now();
    for (b, chunk) in records.chunks(BATCH).enumerate() {
        let tx = plain.transaction().unwrap();
        {
            let mut stmt = tx
                .prepare_cached("INSERT INTO t (idx, message_id, record) VALUES (?1, ?2, ?3)")
                .unwrap();
            for (i, r) in chunk.iter().enumerate() {
                stmt.execute(params![
                    (b * BATCH + i) as i64,
                    r.record.message_id,
                    r.canonical_bytes()
                ])
                .unwrap();
            }
        }
        tx.commit().unwrap();
    }
    let baseline = started.elapsed();

    let log = AccessLog::open(&dir.path().join("access.sqlite")).unwrap();
    let started = Instant::now();
    for chunk in records.chunks(BATCH) {
        log.ingest(chunk).unwrap();
    }
    let elapsed = started.elapsed();
    assert_eq!(log.size().unwrap(), N as u64);
    println!(
        "access log storage: {N} records in batches of {BATCH}: {:.0} records/s, {:.2}x the time of plain inserts ({:.0} records/s) ({} build)",
        N as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64() / baseline.as_secs_f64(),
        N as f64 / baseline.as_secs_f64(),
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
    );
}

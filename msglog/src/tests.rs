//! Tests of the message log: durability, group commit, the chain, tampering, pruning, heads
//! and evidence.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use enlace_certs::SigningKey;
use rusqlite::Connection;
use time::{Duration, OffsetDateTime, UtcOffset};

use super::*;

fn record(i: u32, message_id: &str, kind: RecordKind, at: OffsetDateTime) -> Record {
    Record {
        message_id: message_id.to_string(),
        kind,
        at,
        client: "CL-DEV/GOV/61002000-3/sii".into(),
        service: format!("svc-{i:04}"),
        operation: "getPerson".into(),
        method: None,
        target: None,
        contract: Some("c-1".into()),
        subject: Some("12345678-5".into()),
        user: Some("official-9".into()),
        procedure: None,
        step: None,
        peer: Some("node-rc".into()),
        status: if matches!(kind, RecordKind::RequestOut | RecordKind::RequestIn) {
            0
        } else {
            200
        },
        problem: None,
        request_digest: Some("sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:".into()),
        response_digest: None,
        signature_input: Some("sig1=(\"@method\" \"content-digest\");keyid=\"k\"".into()),
        signature: Some("sig1=:AAAA:".into()),
        headers: vec![("Enlace-Client".into(), "sii".into())],
        body: None,
    }
}

fn rec(i: u32) -> Record {
    record(
        i,
        &uuid::Uuid::now_v7().to_string(),
        RecordKind::RequestOut,
        OffsetDateTime::now_utc(),
    )
}

fn db(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("msglog.db")
}

async fn log_with(path: &Path, n: u32) -> MessageLog {
    let log = MessageLog::open(path, LogOptions::default()).unwrap();
    for i in 1..=n {
        log.append(rec(i)).await.unwrap();
    }
    log
}

#[test]
fn canonical_bytes_are_utc_and_body_is_base64() {
    let mut r = rec(1);
    r.body = Some(vec![0, 1, 2, 255]);
    let utc = r.canonical_bytes();
    r.at = r.at.to_offset(UtcOffset::from_hms(2, 0, 0).unwrap());
    assert_eq!(
        r.canonical_bytes(),
        utc,
        "the offset does not change the bytes"
    );
    let text = String::from_utf8(utc.clone()).unwrap();
    assert!(text.contains("\"body\":\"AAEC/w==\""), "{text}");
    assert!(text.contains("\"kind\":\"request-out\""), "{text}");
    let back: Record = serde_json::from_slice(&utc).unwrap();
    assert_eq!(back.canonical_bytes(), utc);
}

#[test]
fn chain_hash_construction() {
    let digest = record_digest(b"{}");
    let mut input = b"enlace-msglog-v1\0".to_vec();
    input.extend_from_slice(&1u64.to_be_bytes());
    input.extend_from_slice(&[0; 32]);
    input.extend_from_slice(&digest);
    use sha2::Digest;
    let expected: [u8; 32] = sha2::Sha256::digest(&input).into();
    assert_eq!(chain_hash(1, &GENESIS, &digest), expected);
}

#[tokio::test]
async fn append_survives_reopen_and_seq_continues() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir);
    let log = MessageLog::open(&path, LogOptions::default()).unwrap();
    assert_eq!(log.head(), (0, GENESIS));
    let mut last = None;
    for i in 1..=5 {
        let a = log.append(rec(i)).await.unwrap();
        assert_eq!(a.seq, u64::from(i));
        last = Some(a);
    }
    let last = last.unwrap();
    assert_eq!(log.head(), (5, last.hash));
    log.close().await.unwrap();

    let log = MessageLog::open(&path, LogOptions::default()).unwrap();
    assert_eq!(log.head(), (5, last.hash), "the head is read back");
    let next = log.append(rec(6)).await.unwrap();
    assert_eq!(next.seq, 6);
    drop(log); // dropping flushes too

    let conn = Connection::open(&path).unwrap();
    let prev: Vec<u8> = conn
        .query_row("SELECT prev_hash FROM records WHERE seq = 6", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(prev, last.hash.to_vec(), "record 6 links to record 5");
    drop(conn);

    let report = verify_file(&path, &[], None).unwrap();
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(report.records, 6);
    assert_eq!(report.head_seq, 6);
    assert_eq!(report.head_hash_hex, next.hash_hex());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_are_group_committed() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir);
    let log = Arc::new(MessageLog::open(&path, LogOptions::default()).unwrap());

    // Baseline in the same run: 64 appends one after the other, one commit each.
    let started = Instant::now();
    for i in 0..64 {
        log.append(rec(i)).await.unwrap();
    }
    let sequential = started.elapsed();
    assert_eq!(log.commits(), 64);

    let before = log.commits();
    let started = Instant::now();
    let tasks: Vec<_> = (0..64)
        .map(|i| {
            let log = log.clone();
            tokio::spawn(async move { log.append(rec(100 + i)).await.unwrap() })
        })
        .collect();
    let mut seqs = Vec::new();
    for t in tasks {
        seqs.push(t.await.unwrap().seq);
    }
    let concurrent = started.elapsed();
    let commits = log.commits() - before;
    seqs.sort_unstable();
    assert_eq!(
        seqs,
        (65..=128).collect::<Vec<u64>>(),
        "every append got its own seq"
    );
    eprintln!(
        "64 concurrent appends: {commits} commits (64 sequential: 64 commits); \
         time concurrent/sequential = {:.3}",
        concurrent.as_secs_f64() / sequential.as_secs_f64()
    );
    assert!(
        commits <= 16,
        "64 concurrent appends took {commits} commits"
    );

    let log = Arc::into_inner(log).unwrap();
    log.close().await.unwrap();
    let log = MessageLog::open(&path, LogOptions::default()).unwrap();
    assert_eq!(log.head().0, 128, "every acknowledged append is on disk");
    drop(log);
    let report = verify_file(&path, &[], None).unwrap();
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(report.records, 128);
}

#[tokio::test]
async fn max_batch_bounds_a_transaction() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir);
    let log = Arc::new(
        MessageLog::open(
            &path,
            LogOptions {
                retention: None,
                max_batch: 4,
            },
        )
        .unwrap(),
    );
    let tasks: Vec<_> = (0..32)
        .map(|i| {
            let log = log.clone();
            tokio::spawn(async move { log.append(rec(i)).await.unwrap() })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert!(
        log.commits() >= 8,
        "at most 4 per commit: {}",
        log.commits()
    );
    assert_eq!(log.head().0, 32);
}

#[tokio::test]
async fn a_flipped_byte_in_a_stored_record_is_the_first_broken() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir);
    log_with(&path, 10).await.close().await.unwrap();
    assert!(verify_file(&path, &[], None).unwrap().is_ok());

    let conn = Connection::open(&path).unwrap();
    let (mut blob, message_id): (Vec<u8>, String) = conn
        .query_row(
            "SELECT record, message_id FROM records WHERE seq = 4",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    blob[40] ^= 0x01;
    conn.execute("UPDATE records SET record = ?1 WHERE seq = 4", [&blob])
        .unwrap();
    drop(conn);

    let report = verify_file(&path, &[], None).unwrap();
    assert_eq!(report.first_broken, Some(4), "{report:?}");
    assert_eq!(report.records, 3);
    let reason = report.reason.unwrap();
    assert!(reason.contains("hash"), "{reason}");
    // The record is named by its message id, not only its position.
    assert!(
        reason.contains(&format!("record 4 (message {message_id}, request-out)")),
        "{reason}"
    );
}

#[tokio::test]
async fn a_flipped_byte_in_the_file_is_the_first_broken() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir);
    log_with(&path, 10).await.close().await.unwrap();

    let mut bytes = std::fs::read(&path).unwrap();
    let needle = b"\"service\":\"svc-0007\"";
    let at = bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("record 7 is in the database file after close");
    assert_eq!(
        bytes[at + 1..]
            .windows(needle.len())
            .filter(|w| *w == needle)
            .count(),
        0,
        "the service name occurs once"
    );
    bytes[at + needle.len() - 2] ^= 0x01; // svc-0007 -> svc-0006
    std::fs::write(&path, &bytes).unwrap();

    let report = verify_file(&path, &[], None).unwrap();
    assert_eq!(report.first_broken, Some(7), "{report:?}");
    assert_eq!(report.records, 6);
}

#[tokio::test]
async fn unparseable_record_bytes_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir);
    log_with(&path, 3).await.close().await.unwrap();
    // Rewrite record 2 as garbage with a consistent hash: only the parse check catches it.
    let conn = Connection::open(&path).unwrap();
    let prev: Vec<u8> = conn
        .query_row("SELECT prev_hash FROM records WHERE seq = 2", [], |r| {
            r.get(0)
        })
        .unwrap();
    let garbage = b"not json".to_vec();
    let hash = chain_hash(2, &prev.try_into().unwrap(), &record_digest(&garbage));
    conn.execute(
        "UPDATE records SET record = ?1, hash = ?2 WHERE seq = 2",
        rusqlite::params![garbage, hash.as_slice()],
    )
    .unwrap();
    drop(conn);
    let report = verify_file(&path, &[], None).unwrap();
    assert_eq!(report.first_broken, Some(2), "{report:?}");
    assert!(report.reason.unwrap().contains("parse"));
}

#[tokio::test]
async fn a_deleted_row_is_a_gap() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir);
    log_with(&path, 10).await.close().await.unwrap();
    let conn = Connection::open(&path).unwrap();
    let next: String = conn
        .query_row("SELECT message_id FROM records WHERE seq = 7", [], |r| {
            r.get(0)
        })
        .unwrap();
    conn.execute("DELETE FROM records WHERE seq IN (5, 6)", [])
        .unwrap();
    drop(conn);

    let report = verify_file(&path, &[], None).unwrap();
    assert_eq!(report.first_broken, Some(5), "{report:?}");
    let reason = report.reason.unwrap();
    assert!(reason.contains("gap"), "{reason}");
    // The gap is located: what is missing, and the stored record after it.
    assert!(reason.contains("records 5 to 6 were deleted"), "{reason}");
    assert!(
        reason.contains(&format!("record 7 follows: message {next}")),
        "{reason}"
    );
}

#[tokio::test]
async fn prune_keeps_a_checkpoint_the_rest_verifies_from() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir);
    let key = SigningKey::generate().unwrap();
    let log = MessageLog::open(&path, LogOptions::default()).unwrap();
    let old = OffsetDateTime::now_utc() - Duration::days(40);
    for i in 1..=5 {
        let id = uuid::Uuid::now_v7().to_string();
        log.append(record(i, &id, RecordKind::RequestIn, old))
            .await
            .unwrap();
    }
    let early_head = log.sign_head(&key, "node-a").await.unwrap();
    for i in 6..=10 {
        log.append(rec(i)).await.unwrap();
    }
    let late_head = log.sign_head(&key, "node-a").await.unwrap();

    let pruned = log
        .prune(OffsetDateTime::now_utc() - Duration::days(30))
        .await
        .unwrap();
    assert_eq!(pruned.deleted, 5);
    assert_eq!(pruned.checkpoint_seq, 5);
    assert_eq!(hex::encode(pruned.checkpoint_hash), early_head.hash_hex);
    // Nothing more to prune.
    let again = log
        .prune(OffsetDateTime::now_utc() - Duration::days(30))
        .await
        .unwrap();
    assert_eq!(again.deleted, 0);
    assert_eq!(again.checkpoint_seq, 5);

    let a = log.append(rec(11)).await.unwrap();
    assert_eq!(a.seq, 11);
    log.close().await.unwrap();

    let pk = key.public_key_bytes();
    let report = verify_file(&path, &[early_head, late_head], Some(&pk)).unwrap();
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(report.from_seq, 5);
    assert_eq!(report.records, 6);
    assert_eq!(report.heads_checked, 2);

    // Pruning everything leaves the checkpoint at the head; appends continue the chain.
    let log = MessageLog::open(&path, LogOptions::default()).unwrap();
    let all = log
        .prune(OffsetDateTime::now_utc() + Duration::days(1))
        .await
        .unwrap();
    assert_eq!((all.deleted, all.checkpoint_seq), (6, 11));
    assert_eq!(all.checkpoint_hash, a.hash);
    log.close().await.unwrap();
    let log = MessageLog::open(&path, LogOptions::default()).unwrap();
    assert_eq!(log.head(), (11, a.hash));
    assert_eq!(log.append(rec(12)).await.unwrap().seq, 12);
    log.close().await.unwrap();
    let report = verify_file(&path, &[], None).unwrap();
    assert!(report.is_ok(), "{report:?}");
    assert_eq!((report.from_seq, report.records), (11, 1));
}

#[tokio::test]
async fn retention_prunes_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir);
    let log = MessageLog::open(&path, LogOptions::default()).unwrap();
    let old = OffsetDateTime::now_utc() - Duration::days(400);
    for i in 1..=3 {
        let id = uuid::Uuid::now_v7().to_string();
        log.append(record(i, &id, RecordKind::Refusal, old))
            .await
            .unwrap();
    }
    log.append(rec(4)).await.unwrap();
    log.close().await.unwrap();

    let log = MessageLog::open(
        &path,
        LogOptions {
            retention: Some(Duration::days(365)),
            max_batch: 16,
        },
    )
    .unwrap();
    // The writer prunes before serving its first command.
    log.append(rec(5)).await.unwrap();
    log.close().await.unwrap();
    let report = verify_file(&path, &[], None).unwrap();
    assert!(report.is_ok(), "{report:?}");
    assert_eq!((report.from_seq, report.records), (3, 2));
}

#[tokio::test]
async fn signed_heads_verify_and_a_wrong_head_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir);
    let key = SigningKey::generate().unwrap();
    let other = SigningKey::generate().unwrap();
    let log = log_with(&path, 4).await;
    let head = log.sign_head(&key, "node-a").await.unwrap();
    assert_eq!(head.seq, 4);
    assert_eq!(head.hash_hex, hex::encode(log.head().1));
    assert!(head_verifies(&head, &key.public_key_bytes()));
    assert!(!head_verifies(&head, &other.public_key_bytes()));
    assert!(head.signed_text().starts_with(&format!(
        "enlace-log-head-v1\nnode-a\n4\n{}\n",
        head.hash_hex
    )));
    let mut forged = head.clone();
    forged.seq = 3;
    assert!(
        !head_verifies(&forged, &key.public_key_bytes()),
        "the seq is signed"
    );

    log.append(rec(5)).await.unwrap();
    log.append(rec(6)).await.unwrap();
    let later = log.sign_head(&key, "node-a").await.unwrap();
    log.close().await.unwrap();
    assert_eq!(
        stored_heads(&path).unwrap(),
        vec![head.clone(), later.clone()]
    );

    let pk = key.public_key_bytes();
    let report = verify_file(&path, &[head.clone(), later.clone()], Some(&pk)).unwrap();
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(report.heads_checked, 2);

    // A validly signed head whose hash is not the log's hash at that seq.
    let wrong = sign_head(&key, "node-a", 4, &[7; 32]);
    // A head past the end of the log: anchored records were removed.
    let beyond = sign_head(&key, "node-a", 9, &[7; 32]);
    let report = verify_file(&path, &[head.clone(), wrong, beyond, forged], Some(&pk)).unwrap();
    assert_eq!(report.first_broken, None);
    assert_eq!(report.heads_checked, 4);
    let failed: Vec<(u64, &str)> = report
        .head_failures
        .iter()
        .map(|f| (f.seq, f.reason.as_str()))
        .collect();
    assert_eq!(failed.len(), 3, "{failed:?}");
    assert_eq!(failed[0].0, 4);
    assert!(failed[0].1.contains("the log has hash"), "{failed:?}");
    assert_eq!(failed[1].0, 9);
    assert!(failed[1].1.contains("ends at seq 6"), "{failed:?}");
    assert_eq!(failed[2].0, 3);
    assert!(failed[2].1.contains("signature"), "{failed:?}");

    // Truncating the log's tail is caught by the head the registry holds.
    let conn = Connection::open(&path).unwrap();
    conn.execute("DELETE FROM records WHERE seq >= 5", [])
        .unwrap();
    drop(conn);
    let report = verify_file(&path, &[later], Some(&pk)).unwrap();
    assert!(!report.is_ok(), "{report:?}");
    assert_eq!(report.first_broken, None);
    assert_eq!(report.head_failures[0].seq, 6);
    let reason = &report.head_failures[0].reason;
    assert!(
        reason.contains("records 5 to 6, cut from its tail"),
        "{reason}"
    );
}

#[tokio::test]
async fn export_verifies_offline_and_tampering_fails() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir);
    let key = SigningKey::generate().unwrap();
    let log = log_with(&path, 3).await;
    let id = uuid::Uuid::now_v7().to_string();
    let now = OffsetDateTime::now_utc();
    let req = log
        .append(record(50, &id, RecordKind::RequestOut, now))
        .await
        .unwrap();
    log.append(rec(4)).await.unwrap();
    let mut response = record(51, &id, RecordKind::ResponseIn, now);
    response.response_digest = Some("sha-256=:abc=:".into());
    response.body = Some(b"{\"name\":\"Ana\"}".to_vec());
    let resp = log.append(response).await.unwrap();
    for i in 5..=9 {
        log.append(rec(i)).await.unwrap();
    }
    let head = log.sign_head(&key, "node-a").await.unwrap();
    // A message logged after the last signed head has no proof yet.
    let unanchored = uuid::Uuid::now_v7().to_string();
    log.append(record(60, &unanchored, RecordKind::Refusal, now))
        .await
        .unwrap();
    log.close().await.unwrap();

    let evidence = export(&path, &id).unwrap();
    assert_eq!(evidence.entries.len(), 2);
    assert_eq!(evidence.entries[0].seq, req.seq);
    assert_eq!(evidence.entries[0].record.kind, RecordKind::RequestOut);
    assert_eq!(evidence.entries[1].seq, resp.seq);
    assert_eq!(evidence.entries[1].hash_hex, resp.hash_hex());
    for e in &evidence.entries {
        let proof = e.proof.as_ref().unwrap();
        assert_eq!(proof.head, head);
        assert_eq!(proof.record_digests_hex.len() as u64, head.seq - e.seq);
    }
    evidence.verify_offline().unwrap();
    evidence
        .verify_offline_with_key(&key.public_key_bytes())
        .unwrap();
    let other = SigningKey::generate().unwrap();
    assert!(
        evidence
            .verify_offline_with_key(&other.public_key_bytes())
            .is_err()
    );

    // The CLI writes it as JSON; it verifies after a round trip.
    let json = serde_json::to_string_pretty(&evidence).unwrap();
    let back: Evidence = serde_json::from_str(&json).unwrap();
    back.verify_offline().unwrap();

    // Tampered canonical bytes (and the parsed record to match): the hash no longer matches.
    let mut t = evidence.clone();
    t.entries[1].canonical = t.entries[1]
        .canonical
        .replace("\"status\":200", "\"status\":404");
    t.entries[1].record.status = 404;
    assert!(
        t.verify_offline()
            .unwrap_err()
            .contains("hash does not match")
    );
    // The parsed record alone changed.
    let mut t = evidence.clone();
    t.entries[0].record.subject = Some("99999999-9".into());
    assert!(t.verify_offline().is_err());
    // A proof digest changed.
    let mut t = evidence.clone();
    t.entries[0].proof.as_mut().unwrap().record_digests_hex[1] = hex::encode([1u8; 32]);
    assert!(t.verify_offline().unwrap_err().contains("head"));
    // A proof cut short.
    let mut t = evidence.clone();
    t.entries[0]
        .proof
        .as_mut()
        .unwrap()
        .record_digests_hex
        .pop();
    assert!(t.verify_offline().is_err());
    // The head's hash changed: the proof no longer leads to it, and its signature breaks.
    let mut t = evidence.clone();
    t.entries[1].proof.as_mut().unwrap().head.hash_hex = hex::encode([2u8; 32]);
    assert!(t.verify_offline().is_err());

    let later = export(&path, &unanchored).unwrap();
    assert!(later.entries[0].proof.is_none());
    assert!(
        later.entries[0]
            .note
            .as_deref()
            .unwrap()
            .contains("no head")
    );
    later.verify_offline().unwrap();

    let missing = export(&path, "0190-none").unwrap_err();
    assert_eq!(missing.kind, enlace_core::problem::ProblemKind::NotFound);
}

#[tokio::test]
async fn appends_are_queued_in_call_order() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir);
    let log = MessageLog::open(&path, LogOptions::default()).unwrap();
    // Created first, polled last: still logged first.
    let first = log.append(rec(1));
    let second = log.append(rec(2));
    let second = second.await.unwrap();
    let first = first.await.unwrap();
    assert_eq!((first.seq, second.seq), (1, 2));
    let head = log
        .sign_head(&SigningKey::generate().unwrap(), "node-a")
        .await
        .unwrap();
    assert!(
        head.signed_text()
            .starts_with("enlace-log-head-v1\nnode-a\n2\n")
    );
    log.close().await.unwrap();
}

#[tokio::test]
async fn verify_reads_a_log_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir);
    let log = log_with(&path, 5).await;
    let report = verify_file(&path, &[], None).unwrap();
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(report.records, 5);
    log.append(rec(6)).await.unwrap();
    assert_eq!(verify_file(&path, &[], None).unwrap().records, 6);
    log.close().await.unwrap();
}

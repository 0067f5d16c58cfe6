//! Evidence for one message: its records, their chain links, and a proof up to a signed head
//! that a third party checks without the database.

use std::path::Path;

use enlace_core::problem::{Problem, ProblemKind};
use rusqlite::Connection;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::anchor::SignedHead;
use super::chain::{chain_hash, hash_from_hex, record_digest};
use super::internal;
use super::record::Record;
use super::verify::{Row, open_read_only, read_heads};

/// The `format` of [`Evidence`].
pub const EVIDENCE_FORMAT: &str = "enlace-evidence-v1";

/// The most records a proof spans between a record and its signed head.
pub const MAX_PROOF_RECORDS: u64 = 10_000;

/// Everything a node's log holds about one message id, for the CLI to write as JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Evidence {
    /// [`EVIDENCE_FORMAT`].
    pub format: String,
    pub message_id: String,
    /// When the evidence was exported, RFC 3339 UTC.
    pub exported_at: String,
    /// The records with this message id (request, response, refusal), in log order.
    pub entries: Vec<EvidenceEntry>,
}

/// One record and its place in the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EvidenceEntry {
    pub seq: u64,
    /// The chain hash of record `seq - 1` (or the checkpoint, or genesis), hex.
    pub prev_hash_hex: String,
    /// `SHA-256("enlace-msglog-v1\0" || u64_be(seq) || prev_hash || SHA-256(canonical))`, hex.
    pub hash_hex: String,
    /// The record's canonical bytes exactly as stored and hashed (they are UTF-8 JSON).
    pub canonical: String,
    /// The same record, parsed, for reading.
    pub record: Record,
    /// The proof from this record to the nearest signed head at or after it, when there is one
    /// within [`MAX_PROOF_RECORDS`].
    pub proof: Option<HeadProof>,
    /// Why `proof` is missing.
    pub note: Option<String>,
}

/// A chain-position proof: the record digests of records `seq + 1 ..= head.seq`, which carry
/// the entry's hash forward to the head's hash without revealing those records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeadProof {
    pub head: SignedHead,
    /// `SHA-256(canonical bytes)` of each following record, hex, in seq order.
    pub record_digests_hex: Vec<String>,
}

impl Evidence {
    /// Recomputes every entry's hash from its `prev_hash` and canonical bytes, checks that the
    /// parsed record is the canonical one, and carries each hash forward through its proof to
    /// the signed head's hash. Does not check head signatures: see
    /// [`Evidence::verify_offline_with_key`].
    pub fn verify_offline(&self) -> Result<(), String> {
        if self.format != EVIDENCE_FORMAT {
            return Err(format!("unknown evidence format `{}`", self.format));
        }
        if self.entries.is_empty() {
            return Err("the evidence holds no record".into());
        }
        for e in &self.entries {
            verify_entry(e, &self.message_id).map_err(|m| format!("record {}: {m}", e.seq))?;
        }
        Ok(())
    }

    /// [`Evidence::verify_offline`], and every head's signature by the node's 32-byte Ed25519
    /// `public_key`.
    pub fn verify_offline_with_key(&self, public_key: &[u8]) -> Result<(), String> {
        self.verify_offline()?;
        for e in &self.entries {
            if let Some(p) = &e.proof
                && !super::anchor::head_verifies(&p.head, public_key)
            {
                return Err(format!(
                    "record {}: the signature of the head at seq {} is invalid",
                    e.seq, p.head.seq
                ));
            }
        }
        Ok(())
    }
}

fn verify_entry(e: &EvidenceEntry, message_id: &str) -> Result<(), String> {
    let parsed: Record = serde_json::from_str(&e.canonical)
        .map_err(|err| format!("canonical bytes do not parse: {err}"))?;
    if parsed != e.record {
        return Err("the parsed record differs from the canonical bytes".into());
    }
    if parsed.message_id != message_id {
        return Err(format!("belongs to message {}", parsed.message_id));
    }
    let prev = hash_from_hex(&e.prev_hash_hex).ok_or("prev_hash is not a 32-byte hex hash")?;
    let claimed = hash_from_hex(&e.hash_hex).ok_or("hash is not a 32-byte hex hash")?;
    let hash = chain_hash(e.seq, &prev, &record_digest(e.canonical.as_bytes()));
    if hash != claimed {
        return Err("hash does not match prev_hash and the canonical bytes".into());
    }
    let Some(proof) = &e.proof else {
        return Ok(());
    };
    if proof.head.seq != e.seq + proof.record_digests_hex.len() as u64 {
        return Err(format!(
            "the proof holds {} digests, the head is at seq {}",
            proof.record_digests_hex.len(),
            proof.head.seq
        ));
    }
    let mut running = hash;
    for (i, d) in proof.record_digests_hex.iter().enumerate() {
        let digest = hash_from_hex(d).ok_or("a proof digest is not a 32-byte hex hash")?;
        running = chain_hash(e.seq + 1 + i as u64, &running, &digest);
    }
    let head = hash_from_hex(&proof.head.hash_hex).ok_or("the head hash is not 32-byte hex")?;
    if running != head {
        return Err(format!(
            "the proof does not lead to the head's hash at seq {}",
            proof.head.seq
        ));
    }
    Ok(())
}

/// Exports the evidence for `message_id` from the log file at `path` (read-only; the node may
/// be running): every record with that id, its chain link, and a proof to the nearest head
/// this node signed at or after it (from the `anchors` table).
pub fn export(path: &Path, message_id: &str) -> Result<Evidence, Problem> {
    let conn = open_read_only(path)?;
    conn.execute_batch("BEGIN").map_err(internal)?;
    let sql = format!(
        "SELECT {} FROM records WHERE message_id = ?1 ORDER BY seq",
        Row::COLUMNS
    );
    let rows: Vec<Row> = {
        let mut stmt = conn.prepare(&sql).map_err(internal)?;
        stmt.query_map([message_id], Row::read)
            .map_err(internal)?
            .collect::<Result<_, _>>()
            .map_err(internal)?
    };
    if rows.is_empty() {
        return Err(Problem::new(
            ProblemKind::NotFound,
            format!("message log: no record of message {message_id}"),
        ));
    }
    let mut entries = Vec::with_capacity(rows.len());
    for row in rows {
        let seq = row.seq as u64;
        let canonical = String::from_utf8(row.record)
            .map_err(|_| internal(format!("record {seq} is not UTF-8: the log is damaged")))?;
        let record: Record = serde_json::from_str(&canonical)
            .map_err(|e| internal(format!("record {seq} does not parse: {e}")))?;
        let (proof, note) = proof_for(&conn, seq)?;
        entries.push(EvidenceEntry {
            seq,
            prev_hash_hex: hex::encode(&row.prev_hash),
            hash_hex: hex::encode(&row.hash),
            canonical,
            record,
            proof,
            note,
        });
    }
    Ok(Evidence {
        format: EVIDENCE_FORMAT.into(),
        message_id: message_id.into(),
        exported_at: OffsetDateTime::now_utc()
            .format(&Rfc3339)
            .map_err(internal)?,
        entries,
    })
}

fn proof_for(conn: &Connection, seq: u64) -> Result<(Option<HeadProof>, Option<String>), Problem> {
    let head = read_heads(
        conn,
        "SELECT seq, hash_hex, node, at, signature_b64 FROM anchors
         WHERE seq >= ?1 ORDER BY seq, rowid LIMIT 1",
        [seq as i64],
    )?
    .pop();
    let Some(head) = head else {
        return Ok((
            None,
            Some("no head has been signed since this record".into()),
        ));
    };
    let span = head.seq - seq;
    if span > MAX_PROOF_RECORDS {
        return Ok((
            None,
            Some(format!(
                "the nearest signed head (seq {}) is {span} records later, more than {MAX_PROOF_RECORDS}",
                head.seq
            )),
        ));
    }
    let mut stmt = conn
        .prepare("SELECT seq, record FROM records WHERE seq > ?1 AND seq <= ?2 ORDER BY seq")
        .map_err(internal)?;
    let mut rows = stmt
        .query([seq as i64, head.seq as i64])
        .map_err(internal)?;
    let mut digests = Vec::with_capacity(span as usize);
    let mut expected = seq + 1;
    while let Some(r) = rows.next().map_err(internal)? {
        let (s, bytes): (i64, Vec<u8>) = (r.get(0).map_err(internal)?, r.get(1).map_err(internal)?);
        if s as u64 != expected {
            return Ok((None, Some(format!("the log has a gap at seq {expected}"))));
        }
        digests.push(hex::encode(record_digest(&bytes)));
        expected += 1;
    }
    if digests.len() as u64 != span {
        return Ok((
            None,
            Some(format!("the log ends before the head at seq {}", head.seq)),
        ));
    }
    Ok((
        Some(HeadProof {
            head,
            record_digests_hex: digests,
        }),
        None,
    ))
}

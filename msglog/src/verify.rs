//! Offline verification of a log file: recompute the chain and check signed heads against it.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use enlace_core::problem::Problem;
use rusqlite::{Connection, OpenFlags, OptionalExtension};
use serde::{Deserialize, Serialize};

use super::anchor::SignedHead;
use super::chain::{GENESIS, chain_hash, hash_from_hex, hash32, record_digest};
use super::internal;
use super::record::Record;

/// What [`verify_file`] found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyReport {
    /// Records whose chain link verified (all of them when nothing is broken).
    pub records: u64,
    /// The seq the chain was verified from: the checkpoint after pruning, else 0 (genesis).
    pub from_seq: u64,
    /// The last verified `(seq, hash hex)`.
    pub head_seq: u64,
    pub head_hash_hex: String,
    /// The first record that does not verify (for a gap, the first missing seq).
    pub first_broken: Option<u64>,
    /// Why it does not verify.
    pub reason: Option<String>,
    /// How many signed heads were examined.
    pub heads_checked: usize,
    /// Signed heads older than the checkpoint, which pruning has made uncheckable.
    pub heads_pruned: usize,
    /// The signed heads that do not match this log or whose signature is invalid.
    pub head_failures: Vec<HeadFailure>,
}

impl VerifyReport {
    /// Whether the chain and every checkable head verified.
    pub fn is_ok(&self) -> bool {
        self.first_broken.is_none() && self.head_failures.is_empty()
    }
}

/// A signed head that failed, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeadFailure {
    pub seq: u64,
    pub reason: String,
}

/// Opens a log file read-only (it may be in use by a running node: WAL readers do not block
/// the writer).
pub(crate) fn open_read_only(path: &Path) -> Result<Connection, Problem> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| internal(format!("opening {} read-only: {e}", path.display())))?;
    conn.busy_timeout(std::time::Duration::from_secs(10))
        .map_err(internal)?;
    Ok(conn)
}

/// The checkpoint `(seq, hash)` the remaining records verify from: `(0, GENESIS)` if never
/// pruned. A malformed checkpoint hash is an error.
pub(crate) fn checkpoint(conn: &Connection) -> Result<(u64, [u8; 32]), Problem> {
    let row: Option<(i64, Vec<u8>)> = conn
        .query_row("SELECT seq, hash FROM checkpoint WHERE id = 1", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .optional()
        .map_err(internal)?;
    match row {
        None => Ok((0, GENESIS)),
        Some((seq, hash)) => {
            let hash = hash32(&hash).ok_or_else(|| internal("checkpoint hash is not 32 bytes"))?;
            Ok((seq as u64, hash))
        }
    }
}

/// The heads this node signed, from the log's `anchors` table, oldest first.
pub fn stored_heads(path: &Path) -> Result<Vec<SignedHead>, Problem> {
    let conn = open_read_only(path)?;
    read_heads(
        &conn,
        "SELECT seq, hash_hex, node, at, signature_b64 FROM anchors ORDER BY seq, rowid",
        [],
    )
}

pub(crate) fn read_heads(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
) -> Result<Vec<SignedHead>, Problem> {
    let mut stmt = conn.prepare(sql).map_err(internal)?;
    let rows = stmt
        .query_map(params, |r| {
            Ok(SignedHead {
                seq: r.get::<_, i64>(0)? as u64,
                hash_hex: r.get(1)?,
                node: r.get(2)?,
                at: r.get(3)?,
                signature_b64: r.get(4)?,
            })
        })
        .map_err(internal)?;
    rows.collect::<Result<_, _>>().map_err(internal)
}

/// One stored row of the `records` table.
pub(crate) struct Row {
    pub seq: i64,
    pub message_id: String,
    pub kind: String,
    pub at_ns: i64,
    pub record: Vec<u8>,
    pub prev_hash: Vec<u8>,
    pub hash: Vec<u8>,
}

impl Row {
    pub(crate) const COLUMNS: &'static str =
        "seq, message_id, kind, at_ns, record, prev_hash, hash";

    pub(crate) fn read(r: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
        Ok(Row {
            seq: r.get(0)?,
            message_id: r.get(1)?,
            kind: r.get(2)?,
            at_ns: r.get(3)?,
            record: r.get(4)?,
            prev_hash: r.get(5)?,
            hash: r.get(6)?,
        })
    }

    /// Checks this row against the expected position and predecessor; returns its hash.
    pub(crate) fn check(&self, expected_seq: u64, prev: &[u8; 32]) -> Result<[u8; 32], String> {
        if self.seq != expected_seq as i64 {
            return Err(format!(
                "seq gap: expected {expected_seq}, found {}",
                self.seq
            ));
        }
        if self.prev_hash.as_slice() != prev.as_slice() {
            return Err("prev_hash does not match the previous record's hash".into());
        }
        let hash = chain_hash(expected_seq, prev, &record_digest(&self.record));
        if self.hash.as_slice() != hash.as_slice() {
            return Err("hash does not match the record bytes".into());
        }
        let rec: Record = serde_json::from_slice(&self.record)
            .map_err(|e| format!("record bytes do not parse: {e}"))?;
        if rec.message_id != self.message_id
            || rec.kind.as_str() != self.kind
            || i64::try_from(rec.at.unix_timestamp_nanos()).unwrap_or(i64::MAX) != self.at_ns
        {
            return Err("indexed columns (message_id, kind, at) do not match the record".into());
        }
        Ok(hash)
    }
}

/// Verifies the log file at `path`: recomputes the chain from the checkpoint (or genesis) and
/// reports the first record that does not verify (hash or prev mismatch, seq gap, bytes that
/// do not parse, indexed columns that disagree with the record). Then checks each of `heads`:
/// its signature (when `key_for_heads`, the node's 32-byte Ed25519 public key, is given) and
/// that the recomputed chain has exactly that hash at that seq. A head beyond the end of the
/// log means records that were anchored have been removed.
pub fn verify_file(
    path: &Path,
    heads: &[SignedHead],
    key_for_heads: Option<&[u8]>,
) -> Result<VerifyReport, Problem> {
    let conn = open_read_only(path)?;
    // One read transaction, so a running writer cannot move the tail under us.
    conn.execute_batch("BEGIN").map_err(internal)?;
    let (from_seq, from_hash) = checkpoint(&conn)?;

    let wanted: HashSet<u64> = heads
        .iter()
        .map(|h| h.seq)
        .filter(|&s| s > from_seq)
        .collect();
    let mut at_heads: HashMap<u64, [u8; 32]> = HashMap::new();

    let mut report = VerifyReport {
        records: 0,
        from_seq,
        head_seq: from_seq,
        head_hash_hex: hex::encode(from_hash),
        first_broken: None,
        reason: None,
        heads_checked: 0,
        heads_pruned: 0,
        head_failures: Vec::new(),
    };

    let (mut seq, mut prev) = (from_seq, from_hash);
    {
        let sql = format!("SELECT {} FROM records ORDER BY seq", Row::COLUMNS);
        let mut stmt = conn.prepare(&sql).map_err(internal)?;
        let mut rows = stmt.query([]).map_err(internal)?;
        while let Some(r) = rows.next().map_err(internal)? {
            let row = Row::read(r).map_err(internal)?;
            match row.check(seq + 1, &prev) {
                Ok(hash) => {
                    seq += 1;
                    prev = hash;
                    report.records += 1;
                    if wanted.contains(&seq) {
                        at_heads.insert(seq, hash);
                    }
                }
                Err(reason) => {
                    report.first_broken = Some(seq + 1);
                    report.reason = Some(broken(seq + 1, &row, &reason));
                    break;
                }
            }
        }
    }
    report.head_seq = seq;
    report.head_hash_hex = hex::encode(prev);

    for head in heads {
        report.heads_checked += 1;
        let outcome = check_head(
            head,
            key_for_heads,
            from_seq,
            &from_hash,
            &at_heads,
            &report,
        );
        match outcome {
            HeadOutcome::Matches => {}
            HeadOutcome::Pruned => report.heads_pruned += 1,
            HeadOutcome::Fails(reason) => report.head_failures.push(HeadFailure {
                seq: head.seq,
                reason,
            }),
        }
    }
    Ok(report)
}

/// Why record `seq` does not verify, naming it: by message id and kind when it is stored,
/// and, when it is missing, the stored record that follows the gap.
fn broken(seq: u64, row: &Row, reason: &str) -> String {
    if row.seq != seq as i64 {
        return format!(
            "record {seq}: missing, {reason} (record {} follows: message {}, {}); records {seq} to {} were deleted",
            row.seq,
            row.message_id,
            row.kind,
            row.seq - 1
        );
    }
    format!(
        "record {seq} (message {}, {}): {reason}",
        row.message_id, row.kind
    )
}

enum HeadOutcome {
    Matches,
    Pruned,
    Fails(String),
}

fn check_head(
    head: &SignedHead,
    key: Option<&[u8]>,
    from_seq: u64,
    from_hash: &[u8; 32],
    at_heads: &HashMap<u64, [u8; 32]>,
    report: &VerifyReport,
) -> HeadOutcome {
    if let Some(key) = key
        && !super::anchor::head_verifies(head, key)
    {
        return HeadOutcome::Fails("signature is invalid".into());
    }
    let Some(claimed) = hash_from_hex(&head.hash_hex) else {
        return HeadOutcome::Fails("hash_hex is not a 32-byte hex hash".into());
    };
    let actual = match head.seq {
        s if s < from_seq => return HeadOutcome::Pruned,
        s if s == from_seq => *from_hash,
        s => match (at_heads.get(&s), report.first_broken) {
            (Some(actual), _) => *actual,
            (None, Some(broken)) => {
                return HeadOutcome::Fails(format!(
                    "the chain is broken at seq {broken}, before this head"
                ));
            }
            (None, None) => {
                return HeadOutcome::Fails(format!(
                    "the log ends at seq {}: anchored records are missing (records {} to {s}, cut from its tail)",
                    report.head_seq,
                    report.head_seq + 1
                ));
            }
        },
    };
    if actual == claimed {
        HeadOutcome::Matches
    } else {
        HeadOutcome::Fails(format!(
            "the log has hash {} at seq {}, the head says {}",
            hex::encode(actual),
            head.seq,
            head.hash_hex
        ))
    }
}

/// The message ids (UUIDv7, as `u128`) of requests received (`request-in` and refusals)
/// whose UUIDv7 time is at or after `since_secs`: an index range scan, since a lower-case
/// hyphenated UUIDv7 sorts by its time. A provider node reads them at start so that its replay
/// memory covers requests received before a restart.
pub fn received_since(path: &Path, since_secs: i64) -> Result<Vec<u128>, Problem> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    let ms = u64::try_from(since_secs.max(0))
        .unwrap_or(0)
        .saturating_mul(1000);
    let lower = uuid::Uuid::from_u128(u128::from(ms) << 80)
        .hyphenated()
        .to_string();
    let conn = open_read_only(path)?;
    let mut stmt = conn
        .prepare(
            "SELECT DISTINCT message_id FROM records WHERE message_id >= ?1 AND kind IN ('request-in', 'refusal')",
        )
        .map_err(internal)?;
    let rows = stmt
        .query_map(rusqlite::params![lower], |r| r.get::<_, String>(0))
        .map_err(internal)?;
    let mut ids = Vec::new();
    for row in rows {
        if let Ok(id) = uuid::Uuid::parse_str(&row.map_err(internal)?) {
            ids.push(id.as_u128());
        }
    }
    Ok(ids)
}

/// The exchanges counted against contracts, as committed: `(contract, period, count)`. A
/// provider node reads them at start to restore its volume and single-use guards.
pub fn usage_counts(path: &Path) -> Result<Vec<(String, i64, u64)>, Problem> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    let conn = open_read_only(path)?;
    let has_table: bool = conn
        .query_row(
            "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'usage')",
            [],
            |r| r.get(0),
        )
        .map_err(internal)?;
    if !has_table {
        return Ok(Vec::new());
    }
    let mut stmt = conn
        .prepare("SELECT contract, period, count FROM usage")
        .map_err(internal)?;
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })
        .map_err(internal)?;
    let mut out = Vec::new();
    for row in rows {
        let (c, p, n) = row.map_err(internal)?;
        out.push((c, p, u64::try_from(n).unwrap_or(0)));
    }
    Ok(out)
}

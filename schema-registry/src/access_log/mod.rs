//! The access log: signed access records from provider nodes, verified and ingested exactly once
//! (by emitting node and message id) into SQLite and the RFC 9162 Merkle tree in one
//! transaction; the anchored node log heads as further leaves; signed tree heads on a schedule;
//! inclusion and consistency proofs.
//!
//! Storage: `access.sqlite` in the data directory, holding `access_records` (one row per leaf
//! that is an access record, `idx` = leaf index, the canonical JSON of the signed record as
//! stored bytes), `log_head_leaves` (the same for anchored node log heads), `tree_heads` (every
//! signed tree head), `signing_certificates` (every signing certificate a node has had, see
//! [`crate::access_log::signing_history`]) and the tree's own tables (see [`crate::access_log::merkle_store`]).
//!
//! One writer connection appends; queries run on a small pool of read-only connections, each in
//! a read transaction (WAL: readers see a consistent snapshot and never wait for the writer).
//! Citizens and auditors get proofs against the latest *scheduled* signed tree head, so a query
//! never signs and never waits for an ingestion.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, RwLock};

use enlace_core::access::SignedAccessRecord;
use enlace_core::loghead::SignedHead;
use enlace_core::merkle::{self, ConsistencyProof, Hash, InclusionProof};
use enlace_core::outage::{Outage, Say};
use enlace_core::problem::{Problem, ProblemKind};
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use serde::{Deserialize, Serialize};

pub use enlace_core::evidence::PublishedTreeHead;

pub(crate) mod anchors;
pub mod check;
pub(crate) mod evidence;
pub mod merkle_store;
mod operations;
pub(crate) mod signing_history;

pub use operations::AccessLog;
pub(crate) use operations::sign_tree_heads;

use merkle_store::{MerkleStore, MerkleStoreError};

/// Most records one `POST /v1/access-records` may carry.
pub const MAX_RECORDS_PER_REQUEST: usize = 1000;
/// How often a tree head is signed when the log grew.
pub const TREE_HEAD_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);
/// Read connections kept open for queries.
const READERS: usize = 8;
/// The schema version `PRAGMA user_version` holds once migrated.
const SCHEMA_VERSION: i64 = 2;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS access_records (
    idx INTEGER PRIMARY KEY,
    node TEXT NOT NULL,
    message_id TEXT NOT NULL,
    subject TEXT NOT NULL,
    at TEXT NOT NULL,
    consumer_member TEXT NOT NULL,
    purpose TEXT NOT NULL,
    contract TEXT NOT NULL,
    record BLOB NOT NULL,
    UNIQUE (message_id, node)
);
CREATE INDEX IF NOT EXISTS access_records_subject ON access_records (subject, idx);
CREATE TRIGGER IF NOT EXISTS access_records_no_update BEFORE UPDATE ON access_records
    BEGIN SELECT RAISE(ABORT, 'access_records is append-only'); END;
CREATE TRIGGER IF NOT EXISTS access_records_no_delete BEFORE DELETE ON access_records
    BEGIN SELECT RAISE(ABORT, 'access_records is append-only'); END;
CREATE TABLE IF NOT EXISTS log_head_leaves (
    idx INTEGER PRIMARY KEY,
    node TEXT NOT NULL,
    seq INTEGER NOT NULL,
    entry BLOB NOT NULL,
    UNIQUE (node, seq)
);
CREATE TABLE IF NOT EXISTS tree_heads (
    tree_size INTEGER PRIMARY KEY,
    head TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS signing_certificates (
    node TEXT NOT NULL,
    serial TEXT NOT NULL,
    not_before INTEGER NOT NULL,
    not_after INTEGER NOT NULL,
    certificate TEXT NOT NULL,
    first_seen TEXT NOT NULL,
    PRIMARY KEY (node, serial)
) WITHOUT ROWID;
";

/// The first schema keyed records on the message id alone: a consumer could keep an access
/// out of the log by reusing an id with a second provider. Records are now keyed on (message id,
/// emitting node), and carry the node and contract as columns.
const MIGRATE_V1: &str = "
CREATE TABLE access_records_v2 (
    idx INTEGER PRIMARY KEY,
    node TEXT NOT NULL,
    message_id TEXT NOT NULL,
    subject TEXT NOT NULL,
    at TEXT NOT NULL,
    consumer_member TEXT NOT NULL,
    purpose TEXT NOT NULL,
    contract TEXT NOT NULL,
    record BLOB NOT NULL,
    UNIQUE (message_id, node)
);
INSERT INTO access_records_v2
    SELECT idx, json_extract(CAST(record AS TEXT), '$.record.node'), message_id, subject, at,
           consumer_member, purpose, json_extract(CAST(record AS TEXT), '$.record.contract'),
           record
    FROM access_records ORDER BY idx;
DROP TABLE access_records;
ALTER TABLE access_records_v2 RENAME TO access_records;
";

/// What one ingestion did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ingested {
    /// Records appended as new leaves.
    pub accepted: u64,
    /// Records already in the log with the same bytes (not appended again).
    pub duplicates: u64,
    /// The tree's size afterwards.
    pub tree_size: u64,
}

/// An access record with its inclusion proof in the tree of `proof.tree_size` leaves.
#[derive(Debug, Clone, Serialize)]
pub struct RecordProof {
    /// The record as stored (its canonical JSON is the leaf's entry).
    pub record: serde_json::Value,
    pub proof: InclusionProof,
}

/// A stored record found by message id: its leaf and bytes.
pub(crate) struct Found {
    pub idx: u64,
    pub bytes: Vec<u8>,
    pub record: SignedAccessRecord,
}

/// The access log's database and tree: one writer, a pool of readers.
pub struct AccessLogStore {
    writer: Mutex<MerkleStore>,
    readers: Mutex<Vec<Connection>>,
    path: PathBuf,
    /// The latest signed tree head (also in `tree_heads`).
    latest: RwLock<Option<PublishedTreeHead>>,
    /// Serialises signing tree heads.
    signing: tokio::sync::Mutex<()>,
    /// Whether writes fail, said once per interval (see [`AccessLogStore::wrote`]).
    outage: Mutex<Outage>,
}

pub(crate) fn db(e: impl std::fmt::Display) -> Problem {
    tracing::error!(error = %e, "access log storage failed");
    Problem::new(
        ProblemKind::Internal,
        "the access log's storage failed; nothing was ingested",
    )
}

/// A failure of the storage while writing, not logged here: [`AccessLogStore::wrote`] says it once
/// per interval and answers `log-unavailable`; [`AccessLogStore::read`] logs a failed read.
fn storage(e: impl std::fmt::Display) -> Problem {
    Problem::new(ProblemKind::Internal, e.to_string())
}

/// What a node gets while the access log cannot commit; it names no SQLite error.
fn unavailable() -> Problem {
    Problem::new(
        ProblemKind::LogUnavailable,
        "the registry's access log cannot commit (its disk is full or failing); nothing was written; retry later",
    )
}

/// The least time between two lines saying that the access log still cannot commit.
const OUTAGE_SUMMARY_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

impl From<MerkleStoreError> for Problem {
    fn from(e: MerkleStoreError) -> Self {
        match e {
            MerkleStoreError::OutOfRange(detail) => Problem::new(ProblemKind::NotFound, detail),
            other => storage(other),
        }
    }
}

fn not_found(message_id: &str) -> Problem {
    Problem::new(
        ProblemKind::NotFound,
        format!("no access record with message id {message_id}"),
    )
    .with("message_id", message_id)
}

impl AccessLogStore {
    /// Opens (creating or migrating if needed) the log in the SQLite file at `path`: WAL,
    /// `synchronous=FULL`.
    pub fn open(path: &Path) -> anyhow::Result<AccessLogStore> {
        let mut conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        // Ingestion inserts into indices at random places: keep their pages in memory.
        conn.pragma_update(None, "cache_size", -256 * 1024)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        migrate(&mut conn)?;
        conn.execute_batch(SCHEMA)?;
        conn.pragma_update(None, "user_version", SCHEMA_VERSION)?;
        let store = MerkleStore::with_connection(conn)?;
        let latest: Option<String> = store
            .connection()
            .query_row(
                "SELECT head FROM tree_heads ORDER BY tree_size DESC LIMIT 1",
                [],
                |r| r.get(0),
            )
            .optional()?;
        let latest = latest.map(|t| serde_json::from_str(&t)).transpose()?;
        Ok(AccessLogStore {
            writer: Mutex::new(store),
            readers: Mutex::new(Vec::new()),
            path: path.to_path_buf(),
            latest: RwLock::new(latest),
            signing: tokio::sync::Mutex::new(()),
            outage: Mutex::new(Outage::new(OUTAGE_SUMMARY_EVERY)),
        })
    }

    /// The outcome of a write: a storage failure becomes `log-unavailable` and is said at the
    /// first failure, then at most once every [`OUTAGE_SUMMARY_EVERY`], and at the end; a
    /// refusal of the request itself passes unchanged.
    fn wrote<T>(&self, result: Result<T, Problem>) -> Result<T, Problem> {
        let now = std::time::Instant::now();
        let mut outage = self.outage.lock().unwrap_or_else(|p| p.into_inner());
        match result {
            Ok(v) => {
                if let Say::Over { failed, for_secs } = outage.succeeded(now) {
                    tracing::info!(
                        failed_writes = failed,
                        outage_secs = for_secs,
                        "access log commits again"
                    );
                }
                Ok(v)
            }
            Err(p) if p.kind == ProblemKind::Internal => {
                match outage.failed(now) {
                    Say::Began => {
                        tracing::error!(error = %p.detail, "access log cannot commit; refusing writes with log-unavailable until one succeeds")
                    }
                    Say::Still { failed, for_secs } => {
                        tracing::error!(error = %p.detail, failed_writes = failed, outage_secs = for_secs, "access log still cannot commit")
                    }
                    Say::Nothing | Say::Over { .. } => {}
                }
                Err(unavailable())
            }
            Err(p) => Err(p),
        }
    }

    fn writer(&self) -> MutexGuard<'_, MerkleStore> {
        // A panic while holding the lock leaves no partial transaction (SQLite rolled it back).
        self.writer.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` with the writer's tree (blocking: call off the async workers).
    pub(crate) fn write<T>(
        &self,
        f: impl FnOnce(&mut MerkleStore) -> Result<T, Problem>,
    ) -> Result<T, Problem> {
        f(&mut self.writer())
    }

    /// Runs `f` on a read-only connection inside one read transaction, so that every query it
    /// makes sees the same snapshot (blocking: call off the async workers).
    pub(crate) fn read<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, Problem>,
    ) -> Result<T, Problem> {
        let pooled = self.readers.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let conn = match pooled {
            Some(c) => c,
            None => {
                let c = Connection::open_with_flags(
                    &self.path,
                    OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )
                .map_err(db)?;
                c.busy_timeout(std::time::Duration::from_secs(5))
                    .map_err(db)?;
                c.pragma_update(None, "cache_size", -32 * 1024)
                    .map_err(db)?;
                c
            }
        };
        let result = (|| {
            let tx = conn.unchecked_transaction().map_err(db)?;
            let out = f(&tx)?;
            tx.finish().map_err(db)?;
            Ok(out)
        })()
        .inspect_err(|p: &Problem| {
            if p.kind == ProblemKind::Internal {
                tracing::error!(error = %p.detail, "access log read failed");
            }
        });
        let mut pool = self.readers.lock().unwrap_or_else(|p| p.into_inner());
        if pool.len() < READERS {
            pool.push(conn);
        }
        result
    }

    /// Appends the records that are new (by message id and emitting node) in one transaction; a
    /// record whose (message id, node) is stored with other bytes refuses the whole batch.
    /// Records must have been verified.
    pub fn ingest(&self, records: &[SignedAccessRecord]) -> Result<Ingested, Problem> {
        // Serialised and hashed before the writer is taken: it holds only the inserts.
        let prepared: Vec<(&SignedAccessRecord, Vec<u8>, Hash)> = records
            .iter()
            .map(|r| {
                let bytes = r.canonical_bytes();
                let leaf = merkle::leaf_hash(&bytes);
                (r, bytes, leaf)
            })
            .collect();
        let (mut accepted, mut duplicates) = (0u64, 0u64);
        let mut store = self.writer();
        let appended = store.append_with(|tx, first| -> Result<Vec<Hash>, Problem> {
            let mut find = tx
                .prepare_cached(
                    "SELECT record FROM access_records WHERE message_id = ?1 AND node = ?2",
                )
                .map_err(storage)?;
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO access_records \
                     (idx, node, message_id, subject, at, consumer_member, purpose, contract, record) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) \
                     ON CONFLICT (message_id, node) DO NOTHING",
                )
                .map_err(storage)?;
            let mut seen: HashMap<(&str, &str), &[u8]> = HashMap::new();
            let mut leaves = Vec::with_capacity(prepared.len());
            for (signed, bytes, leaf) in &prepared {
                let r = &signed.record;
                let key = (r.message_id.as_str(), r.node.as_str());
                let idx = first + leaves.len() as u64;
                let inserted = match seen.get(&key) {
                    Some(_) => 0,
                    None => insert
                        .execute(params![
                            idx as i64,
                            r.node,
                            r.message_id,
                            r.subject,
                            r.at,
                            r.consumer_member,
                            r.purpose,
                            r.contract,
                            bytes,
                        ])
                        .map_err(storage)?,
                };
                if inserted == 1 {
                    seen.insert(key, bytes);
                    leaves.push(*leaf);
                    continue;
                }
                // Logged already (earlier, or earlier in this batch): the same bytes, or refused.
                let stored: Option<Vec<u8>> = match seen.get(&key) {
                    Some(b) => Some(b.to_vec()),
                    None => find
                        .query_row(params![r.message_id, r.node], |row| row.get(0))
                        .optional()
                        .map_err(storage)?,
                };
                if stored.as_deref() != Some(bytes.as_slice()) {
                    return Err(Problem::new(
                        ProblemKind::AlreadyExists,
                        format!(
                            "node {} already logged another record under message id {}",
                            r.node, r.message_id
                        ),
                    )
                    .with("message_id", &r.message_id));
                }
                duplicates += 1;
            }
            accepted = leaves.len() as u64;
            Ok(leaves)
        });
        let (_, tree_size) = self.wrote(appended)?;
        Ok(Ingested {
            accepted,
            duplicates,
            tree_size,
        })
    }

    /// Anchors a node's signed log head (verified by the caller) and appends it as a leaf, in
    /// one transaction: a head that contradicts one already anchored (same sequence number,
    /// another hash) or goes backwards is refused. Returns whether it was new.
    pub fn anchor_log_head(&self, head: &SignedHead) -> Result<bool, Problem> {
        let entry = serde_json::to_vec(head).map_err(storage)?;
        let mut fresh = false;
        let appended = self
            .writer()
            .append_with(|tx, first| -> Result<Vec<Hash>, Problem> {
                let same: Option<Vec<u8>> = tx
                    .query_row(
                        "SELECT entry FROM log_head_leaves WHERE node = ?1 AND seq = ?2",
                        params![head.node, head.seq as i64],
                        |r| r.get(0),
                    )
                    .optional()
                    .map_err(storage)?;
                if let Some(same) = same {
                    let same: SignedHead = serde_json::from_slice(&same).map_err(storage)?;
                    if same.hash_hex == head.hash_hex {
                        return Ok(Vec::new());
                    }
                    return Err(Problem::new(
                        ProblemKind::AlreadyExists,
                        format!(
                            "node {} already anchored another hash at seq {}: its log was rewritten",
                            head.node, head.seq
                        ),
                    ));
                }
                let last: Option<i64> = tx
                    .query_row(
                        "SELECT MAX(seq) FROM log_head_leaves WHERE node = ?1",
                        [&head.node],
                        |r| r.get(0),
                    )
                    .map_err(storage)?;
                if let Some(last) = last
                    && last as u64 > head.seq
                {
                    return Err(Problem::new(
                        ProblemKind::InvalidRequest,
                        format!("seq {} is below the last anchored seq {last}", head.seq),
                    ));
                }
                tx.execute(
                    "INSERT INTO log_head_leaves (idx, node, seq, entry) VALUES (?1, ?2, ?3, ?4)",
                    params![first as i64, head.node, head.seq as i64, entry],
                )
                .map_err(storage)?;
                fresh = true;
                Ok(vec![merkle::leaf_hash(&entry)])
            });
        self.wrote(appended)?;
        Ok(fresh)
    }

    /// A node's anchored heads, oldest first.
    pub fn log_heads(&self, node: &str) -> Result<Vec<SignedHead>, Problem> {
        self.read(|conn| {
            let mut stmt = conn
                .prepare_cached("SELECT entry FROM log_head_leaves WHERE node = ?1 ORDER BY seq")
                .map_err(db)?;
            let rows = stmt
                .query_map([node], |r| r.get::<_, Vec<u8>>(0))
                .map_err(db)?;
            let mut out = Vec::new();
            for row in rows {
                out.push(serde_json::from_slice(&row.map_err(db)?).map_err(db)?);
            }
            Ok(out)
        })
    }

    /// An anchored head and its inclusion proof in the tree of `size` leaves.
    pub fn log_head_proof(
        &self,
        node: &str,
        seq: u64,
        size: u64,
    ) -> Result<(SignedHead, InclusionProof), Problem> {
        self.read(|conn| {
            let row: Option<(i64, Vec<u8>)> = conn
                .query_row(
                    "SELECT idx, entry FROM log_head_leaves WHERE node = ?1 AND seq = ?2",
                    params![node, seq as i64],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()
                .map_err(db)?;
            let (idx, entry) = row.ok_or_else(|| {
                Problem::new(
                    ProblemKind::NotFound,
                    format!("node {node} anchored no head at seq {seq}"),
                )
            })?;
            if idx as u64 >= size {
                return Err(Problem::new(
                    ProblemKind::NotFound,
                    format!("the head is leaf {idx}, beyond the tree of {size} leaves"),
                ));
            }
            let head = serde_json::from_slice(&entry).map_err(db)?;
            let proof = merkle_store::inclusion_proofs_at(conn, &[idx as u64], size)?.remove(0);
            Ok((head, proof))
        })
    }

    /// The number of leaves.
    pub fn size(&self) -> Result<u64, Problem> {
        self.read(|conn| Ok(merkle_store::size_at(conn)?))
    }

    /// The latest signed tree head, if any was signed.
    pub fn latest_head(&self) -> Option<PublishedTreeHead> {
        self.latest
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The signed tree head of `size` leaves, if one was signed.
    pub fn head_at(&self, size: u64) -> Result<Option<PublishedTreeHead>, Problem> {
        self.read(|conn| {
            let text: Option<String> = conn
                .query_row(
                    "SELECT head FROM tree_heads WHERE tree_size = ?1",
                    [size as i64],
                    |r| r.get(0),
                )
                .optional()
                .map_err(db)?;
            text.map(|t| serde_json::from_str(&t).map_err(db))
                .transpose()
        })
    }

    /// The current size and root.
    fn current(&self) -> Result<(u64, Hash), Problem> {
        self.read(|conn| {
            let size = merkle_store::size_at(conn)?;
            Ok((size, merkle_store::root_at(conn, size)?))
        })
    }

    /// Stores a signed head (the first one signed for a size is kept) and makes it the latest.
    fn store_head(&self, head: &PublishedTreeHead) -> Result<(), Problem> {
        let text = serde_json::to_string(head).map_err(db)?;
        let stored = self
            .writer()
            .connection()
            .execute(
                "INSERT OR IGNORE INTO tree_heads (tree_size, head) VALUES (?1, ?2)",
                params![head.tree_head.tree_size as i64, text],
            )
            .map_err(storage);
        self.wrote(stored)?;
        let mut latest = self.latest.write().unwrap_or_else(|p| p.into_inner());
        if latest
            .as_ref()
            .is_none_or(|l| l.tree_head.tree_size < head.tree_head.tree_size)
        {
            *latest = Some(head.clone());
        }
        Ok(())
    }

    /// The stored records with `message_id` (one per emitting node; `node` narrows to one).
    pub(crate) fn find(&self, message_id: &str, node: Option<&str>) -> Result<Vec<Found>, Problem> {
        self.read(|conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT idx, record FROM access_records WHERE message_id = ?1 \
                     AND (?2 IS NULL OR node = ?2) ORDER BY idx",
                )
                .map_err(db)?;
            let rows = stmt
                .query_map(params![message_id, node], |r| {
                    Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?))
                })
                .map_err(db)?;
            let mut out = Vec::new();
            for row in rows {
                let (idx, bytes) = row.map_err(db)?;
                let record = serde_json::from_slice(&bytes).map_err(db)?;
                out.push(Found {
                    idx: idx as u64,
                    bytes,
                    record,
                });
            }
            Ok(out)
        })
    }

    /// The inclusion proof of leaf `idx` in the tree of `size` leaves.
    pub(crate) fn inclusion_proof(&self, idx: u64, size: u64) -> Result<InclusionProof, Problem> {
        if idx >= size {
            return Err(Problem::new(
                ProblemKind::NotFound,
                format!("the record is leaf {idx}, beyond the tree of {size} leaves"),
            )
            .with("leaf_index", idx));
        }
        self.read(|conn| Ok(merkle_store::inclusion_proofs_at(conn, &[idx], size)?.remove(0)))
    }

    /// A page of the records about `subject` within the tree of `size` leaves, oldest first,
    /// filtered, with each record's inclusion proof; and how many records match in all. One
    /// read transaction: the count, the page and the proofs see the same snapshot.
    pub(crate) fn subject_page(
        &self,
        subject: &str,
        filter: &crate::citizen::Filter,
        size: u64,
    ) -> Result<(Vec<RecordProof>, u64), Problem> {
        use rusqlite::types::Value as Sql;
        let mut cond = String::from(
            "subject = ?1 AND idx < ?2 AND (?3 IS NULL OR at >= ?3) AND (?4 IS NULL OR at < ?4) \
             AND (?5 IS NULL OR consumer_member = ?5) AND (?6 IS NULL OR purpose = ?6)",
        );
        let opt = |v: &Option<String>| v.clone().map_or(Sql::Null, Sql::Text);
        let mut args: Vec<Sql> = vec![
            Sql::Text(subject.to_string()),
            Sql::Integer(size as i64),
            opt(&filter.from),
            opt(&filter.to),
            opt(&filter.institution),
            opt(&filter.purpose),
        ];
        // Hidings in force: the records of a contract made before a date are left out.
        for (contract, until) in &filter.hidden {
            let n = args.len();
            cond.push_str(&format!(
                " AND NOT (contract = ?{} AND at < ?{})",
                n + 1,
                n + 2
            ));
            args.push(Sql::Text(contract.clone()));
            args.push(Sql::Text(until.clone()));
        }
        self.read(|conn| {
            let total: i64 = conn
                .prepare_cached(&format!("SELECT COUNT(*) FROM access_records WHERE {cond}"))
                .map_err(db)?
                .query_row(rusqlite::params_from_iter(args.iter()), |r| r.get(0))
                .map_err(db)?;
            let n = args.len();
            let mut page_args = args.clone();
            page_args.push(Sql::Integer(filter.limit as i64));
            page_args.push(Sql::Integer(filter.offset as i64));
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT idx, record FROM access_records WHERE {cond} \
                     ORDER BY idx LIMIT ?{} OFFSET ?{}",
                    n + 1,
                    n + 2
                ))
                .map_err(db)?;
            let rows: Vec<(i64, Vec<u8>)> = stmt
                .query_map(rusqlite::params_from_iter(page_args.iter()), |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
                .map_err(db)?
                .collect::<Result<_, _>>()
                .map_err(db)?;
            let indices: Vec<u64> = rows.iter().map(|(i, _)| *i as u64).collect();
            let proofs = merkle_store::inclusion_proofs_at(conn, &indices, size)?;
            let mut out = Vec::with_capacity(rows.len());
            for ((_, bytes), proof) in rows.into_iter().zip(proofs) {
                out.push(RecordProof {
                    record: serde_json::from_slice(&bytes).map_err(db)?,
                    proof,
                });
            }
            Ok((out, total as u64))
        })
    }

    /// The consistency proof between the trees of `from` and `to` leaves.
    pub fn consistency(&self, from: u64, to: u64) -> Result<ConsistencyProof, Problem> {
        if from > to {
            return Err(Problem::new(
                ProblemKind::InvalidRequest,
                format!("from ({from}) must not exceed to ({to})"),
            ));
        }
        self.read(|conn| Ok(merkle_store::consistency_proof_at(conn, from, to)?))
    }
}

/// Moves a first-version database to the current schema, in one transaction.
fn migrate(conn: &mut Connection) -> anyhow::Result<()> {
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let has_node: bool = conn
        .prepare("SELECT 1 FROM pragma_table_info('access_records') WHERE name = 'node'")?
        .exists([])?;
    let exists: bool = conn
        .prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'access_records'")?
        .exists([])?;
    if version >= SCHEMA_VERSION || !exists || has_node {
        return Ok(());
    }
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    tx.execute_batch(MIGRATE_V1)?;
    tx.commit()?;
    tracing::info!("migrated the access log to records keyed by message id and node");
    Ok(())
}

/// Runs blocking log work off the async workers.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Problem> + Send + 'static,
) -> Result<T, Problem> {
    tokio::task::spawn_blocking(f).await.map_err(db)?
}

#[cfg(test)]
mod tests;

//! The access log: signed access records from provider nodes, verified and ingested exactly once
//! (by message id) into SQLite and the RFC 9162 Merkle tree in one transaction; the anchored
//! node log heads as further leaves; signed tree heads; inclusion and consistency proofs.
//!
//! Storage: `access.sqlite` in the data directory, holding `access_records` (one row per leaf
//! that is an access record, `idx` = leaf index, the canonical JSON of the signed record as
//! stored bytes), `log_head_leaves` (the same for anchored node log heads), `tree_heads` (every
//! signed tree head) and the tree's own tables (see [`crate::merkle_store`]).

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use base64::Engine;
use enlace_core::access::SignedAccessRecord;
use enlace_core::id::{NodeId, ServiceId};
use enlace_core::merkle::{self, ConsistencyProof, Hash, InclusionProof, SignedTreeHead};
use enlace_core::problem::{Problem, ProblemKind};
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

use crate::merkle_store::{MerkleStore, MerkleStoreError};
use crate::registry::{Actor, Registry, now, rfc3339};

/// Most records one `POST /v1/access-records` may carry.
pub const MAX_RECORDS_PER_REQUEST: usize = 1000;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS access_records (
    idx INTEGER PRIMARY KEY,
    message_id TEXT NOT NULL UNIQUE,
    subject TEXT NOT NULL,
    at TEXT NOT NULL,
    consumer_member TEXT NOT NULL,
    purpose TEXT NOT NULL,
    record BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS access_records_subject_at ON access_records (subject, at);
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
";

/// A signed tree head as served: the head and the certificate of the key that signed it (the
/// registry's configuration signer at that time).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishedTreeHead {
    pub tree_head: SignedTreeHead,
    pub signer_certificate: String,
}

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

/// The access log's database and tree; one writer at a time.
pub struct AccessLog {
    store: Mutex<MerkleStore>,
    /// Serialises signing tree heads.
    signing: tokio::sync::Mutex<()>,
}

fn db(e: impl std::fmt::Display) -> Problem {
    tracing::error!(error = %e, "access log storage failed");
    Problem::new(
        ProblemKind::Internal,
        "the access log's storage failed; nothing was ingested",
    )
}

impl From<MerkleStoreError> for Problem {
    fn from(e: MerkleStoreError) -> Self {
        match e {
            MerkleStoreError::OutOfRange(detail) => Problem::new(ProblemKind::NotFound, detail),
            other => db(other),
        }
    }
}

impl AccessLog {
    /// Opens (creating if needed) the log in the SQLite file at `path`: WAL, `synchronous=FULL`.
    pub fn open(path: &Path) -> anyhow::Result<AccessLog> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(SCHEMA)?;
        Ok(AccessLog {
            store: Mutex::new(MerkleStore::with_connection(conn)?),
            signing: tokio::sync::Mutex::new(()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, MerkleStore> {
        // A panic while holding the lock leaves no partial transaction (SQLite rolled it back).
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends the records that are new (by message id) in one transaction; a record whose
    /// message id is stored with other bytes refuses the whole batch. Records must have been
    /// verified.
    pub fn ingest(&self, records: &[SignedAccessRecord]) -> Result<Ingested, Problem> {
        let prepared: Vec<(&SignedAccessRecord, Vec<u8>)> =
            records.iter().map(|r| (r, r.canonical_bytes())).collect();
        let (mut accepted, mut duplicates) = (0u64, 0u64);
        let mut store = self.lock();
        let (_, tree_size) = store.append_with(|tx, first| -> Result<Vec<Hash>, Problem> {
            let mut find = tx
                .prepare_cached("SELECT record FROM access_records WHERE message_id = ?1")
                .map_err(db)?;
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO access_records \
                     (idx, message_id, subject, at, consumer_member, purpose, record) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) \
                     ON CONFLICT (message_id) DO NOTHING",
                )
                .map_err(db)?;
            let mut seen: HashMap<&str, &[u8]> = HashMap::new();
            let mut leaves = Vec::with_capacity(prepared.len());
            for (signed, bytes) in &prepared {
                let r = &signed.record;
                let idx = first + leaves.len() as u64;
                let inserted = match seen.get(r.message_id.as_str()) {
                    Some(_) => 0,
                    None => insert
                        .execute(params![
                            idx as i64,
                            r.message_id,
                            r.subject,
                            r.at,
                            r.consumer_member,
                            r.purpose,
                            bytes,
                        ])
                        .map_err(db)?,
                };
                if inserted == 1 {
                    seen.insert(&r.message_id, bytes);
                    leaves.push(merkle::leaf_hash(bytes));
                    continue;
                }
                // Logged already (earlier, or earlier in this batch): the same bytes, or refused.
                let stored: Option<Vec<u8>> = match seen.get(r.message_id.as_str()) {
                    Some(b) => Some(b.to_vec()),
                    None => find
                        .query_row([&r.message_id], |row| row.get(0))
                        .optional()
                        .map_err(db)?,
                };
                if stored.as_deref() != Some(bytes.as_slice()) {
                    return Err(Problem::new(
                        ProblemKind::AlreadyExists,
                        format!(
                            "message id {} is already logged with another record",
                            r.message_id
                        ),
                    )
                    .with("message_id", &r.message_id));
                }
                duplicates += 1;
            }
            accepted = leaves.len() as u64;
            Ok(leaves)
        })?;
        Ok(Ingested {
            accepted,
            duplicates,
            tree_size,
        })
    }

    /// Appends an anchored node log head (its canonical JSON) as a leaf, once per node and
    /// sequence number.
    pub fn append_log_head(&self, head: &enlace_core::loghead::SignedHead) -> Result<(), Problem> {
        let entry = serde_json::to_vec(head).map_err(db)?;
        let mut store = self.lock();
        store.append_with(|tx, first| -> Result<Vec<Hash>, Problem> {
            let inserted = tx
                .execute(
                    "INSERT OR IGNORE INTO log_head_leaves (idx, node, seq, entry) \
                     VALUES (?1, ?2, ?3, ?4)",
                    params![first as i64, head.node, head.seq as i64, entry],
                )
                .map_err(db)?;
            Ok(if inserted == 1 {
                vec![merkle::leaf_hash(&entry)]
            } else {
                Vec::new()
            })
        })?;
        Ok(())
    }

    /// The number of leaves.
    pub fn size(&self) -> Result<u64, Problem> {
        Ok(self.lock().size()?)
    }

    /// The latest signed tree head, if any was signed.
    pub fn latest_head(&self) -> Result<Option<PublishedTreeHead>, Problem> {
        self.head_where("ORDER BY tree_size DESC LIMIT 1", [])
    }

    /// The signed tree head of `size` leaves, if one was signed.
    pub fn head_at(&self, size: u64) -> Result<Option<PublishedTreeHead>, Problem> {
        self.head_where("WHERE tree_size = ?1", [size as i64])
    }

    fn head_where<P: rusqlite::Params>(
        &self,
        clause: &str,
        p: P,
    ) -> Result<Option<PublishedTreeHead>, Problem> {
        let store = self.lock();
        let text: Option<String> = store
            .connection()
            .query_row(&format!("SELECT head FROM tree_heads {clause}"), p, |r| {
                r.get(0)
            })
            .optional()
            .map_err(db)?;
        text.map(|t| serde_json::from_str(&t).map_err(db))
            .transpose()
    }

    /// The current size and root.
    fn current(&self) -> Result<(u64, Hash), Problem> {
        let store = self.lock();
        let size = store.size()?;
        Ok((size, store.root(size)?))
    }

    /// Stores a signed head (the first one signed for a size is kept).
    fn store_head(&self, head: &PublishedTreeHead) -> Result<(), Problem> {
        let text = serde_json::to_string(head).map_err(db)?;
        self.lock()
            .connection()
            .execute(
                "INSERT OR IGNORE INTO tree_heads (tree_size, head) VALUES (?1, ?2)",
                params![head.tree_head.tree_size as i64, text],
            )
            .map_err(db)?;
        Ok(())
    }

    /// The stored record with `message_id` and its inclusion proof in the tree of `size`
    /// leaves, with the parsed record (for the caller's access check).
    pub fn inclusion(
        &self,
        message_id: &str,
        size: u64,
    ) -> Result<(RecordProof, SignedAccessRecord), Problem> {
        let store = self.lock();
        let row: Option<(i64, Vec<u8>)> = store
            .connection()
            .query_row(
                "SELECT idx, record FROM access_records WHERE message_id = ?1",
                [message_id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(db)?;
        let not_found = || {
            Problem::new(
                ProblemKind::NotFound,
                format!("no access record with message id {message_id}"),
            )
            .with("message_id", message_id)
        };
        let (idx, bytes) = row.ok_or_else(not_found)?;
        let value: serde_json::Value = serde_json::from_slice(&bytes).map_err(db)?;
        let parsed: SignedAccessRecord = serde_json::from_slice(&bytes).map_err(db)?;
        if idx as u64 >= size {
            return Err(Problem::new(
                ProblemKind::NotFound,
                format!("the record is leaf {idx}, beyond the tree of {size} leaves"),
            )
            .with("leaf_index", idx));
        }
        let proof = store.inclusion_proof(idx as u64, size)?;
        Ok((
            RecordProof {
                record: value,
                proof,
            },
            parsed,
        ))
    }

    /// A page of the records about `subject` within the tree of `size` leaves, oldest first,
    /// filtered (each filter `None` for all), with each record's inclusion proof; and how many
    /// records match in all.
    pub(crate) fn subject_page(
        &self,
        subject: &str,
        filter: &crate::citizen::Filter,
        size: u64,
    ) -> Result<(Vec<RecordProof>, u64), Problem> {
        let store = self.lock();
        let conn = store.connection();
        let cond = "subject = ?1 AND idx < ?2 AND (?3 IS NULL OR at >= ?3) \
                    AND (?4 IS NULL OR at < ?4) AND (?5 IS NULL OR consumer_member = ?5) \
                    AND (?6 IS NULL OR purpose = ?6) \
                    AND NOT EXISTS (SELECT 1 FROM json_each(?7) h \
                        WHERE json_extract(h.value, '$[0]') = json_extract(CAST(record AS TEXT), '$.record.contract') \
                        AND at < json_extract(h.value, '$[1]'))";
        let args = params![
            subject,
            size as i64,
            filter.from,
            filter.to,
            filter.institution,
            filter.purpose,
            filter.hidden
        ];
        let total: i64 = conn
            .query_row(
                &format!("SELECT COUNT(*) FROM access_records WHERE {cond}"),
                args,
                |r| r.get(0),
            )
            .map_err(db)?;
        let mut stmt = conn
            .prepare(&format!(
                "SELECT idx, record FROM access_records WHERE {cond} ORDER BY idx LIMIT ?8 OFFSET ?9"
            ))
            .map_err(db)?;
        let rows: Vec<(i64, Vec<u8>)> = stmt
            .query_map(
                params![
                    subject,
                    size as i64,
                    filter.from,
                    filter.to,
                    filter.institution,
                    filter.purpose,
                    filter.hidden,
                    filter.limit as i64,
                    filter.offset as i64
                ],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(db)?
            .collect::<Result<_, _>>()
            .map_err(db)?;
        let mut out = Vec::with_capacity(rows.len());
        for (idx, bytes) in rows {
            out.push(RecordProof {
                record: serde_json::from_slice(&bytes).map_err(db)?,
                proof: store.inclusion_proof(idx as u64, size)?,
            });
        }
        Ok((out, total as u64))
    }

    /// The consistency proof between the trees of `from` and `to` leaves.
    pub fn consistency(&self, from: u64, to: u64) -> Result<ConsistencyProof, Problem> {
        if from > to {
            return Err(Problem::new(
                ProblemKind::InvalidRequest,
                format!("from ({from}) must not exceed to ({to})"),
            ));
        }
        Ok(self.lock().consistency_proof(from, to)?)
    }
}

/// Runs blocking log work off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Problem> + Send + 'static,
) -> Result<T, Problem> {
    tokio::task::spawn_blocking(f).await.map_err(db)?
}

impl Registry {
    /// Verifies and ingests signed access records: each must validate, be signed by the node it
    /// names with that node's current signing key, and be about a service of that node's member.
    /// One bad record refuses the request and nothing is ingested.
    pub async fn ingest_access_records(
        &self,
        records: Vec<SignedAccessRecord>,
    ) -> Result<Ingested, Problem> {
        let log = self.access_log()?.clone();
        if records.len() > MAX_RECORDS_PER_REQUEST {
            return Err(Problem::new(
                ProblemKind::BodyTooLarge,
                format!("at most {MAX_RECORDS_PER_REQUEST} records per request"),
            )
            .with("limit", MAX_RECORDS_PER_REQUEST));
        }
        let mut keys: HashMap<String, Vec<u8>> = HashMap::new();
        for signed in &records {
            let r = &signed.record;
            r.validate()?;
            let node: NodeId = r.node.parse()?;
            let service: ServiceId = r.provider_service.parse()?;
            if service.member() != &node.member {
                return Err(Problem::new(
                    ProblemKind::Forbidden,
                    format!(
                        "node {node} cannot emit access records about {service}, a service of another member"
                    ),
                )
                .with("message_id", &r.message_id));
            }
            if !keys.contains_key(&r.node) {
                keys.insert(r.node.clone(), self.node_signing_key(&node)?);
            }
        }
        blocking(move || {
            for signed in &records {
                let key = &keys[&signed.record.node];
                let ok = signed.signature().is_some_and(|sig| {
                    enlace_certs::verify_ed25519(key, &signed.record.signed_bytes(), &sig)
                });
                if !ok {
                    return Err(Problem::new(
                        ProblemKind::SignatureInvalid,
                        format!(
                            "the access record's signature does not verify with {}'s signing key",
                            signed.record.node
                        ),
                    )
                    .with("message_id", &signed.record.message_id));
                }
            }
            log.ingest(&records)
        })
        .await
    }

    /// The latest signed tree head, signing one first when the tree grew since (or none was
    /// signed yet).
    pub async fn sign_tree_head(&self) -> Result<PublishedTreeHead, Problem> {
        let log = self.access_log()?.clone();
        let _one = log.signing.lock().await;
        let (latest, (size, root)) = {
            let log = log.clone();
            blocking(move || Ok((log.latest_head()?, log.current()?))).await?
        };
        if let Some(latest) = latest
            && latest.tree_head.tree_size == size
        {
            return Ok(latest);
        }
        let timestamp = rfc3339(now());
        let root_hash_hex = hex::encode(root);
        let text = merkle::tree_head_text(size, &root_hash_hex, &timestamp);
        let (signature, signer_certificate) = {
            let signer = self.signer.lock().await;
            let (sig, cert) = signer.sign_bytes(text.as_bytes());
            (sig, cert.to_string())
        };
        let head = PublishedTreeHead {
            tree_head: SignedTreeHead {
                tree_size: size,
                root_hash_hex,
                timestamp,
                signature_b64: base64::engine::general_purpose::STANDARD.encode(signature),
                signer: enlace_certs::registry_uri(self.instance()),
            },
            signer_certificate,
        };
        let stored = head.clone();
        let store = log.clone();
        blocking(move || store.store_head(&stored)).await?;
        tracing::debug!(tree_size = size, "signed an access log tree head");
        Ok(head)
    }

    /// A stored signed tree head of `size` leaves.
    pub async fn tree_head_at(&self, size: u64) -> Result<PublishedTreeHead, Problem> {
        let log = self.access_log()?.clone();
        blocking(move || log.head_at(size)).await?.ok_or_else(|| {
            Problem::new(
                ProblemKind::NotFound,
                format!("no tree head was signed for size {size}"),
            )
            .with("size", size)
        })
    }

    /// A record and its inclusion proof in the tree of `size` leaves (the latest signed head's
    /// size when `None`). The federation admin sees every record; a member admin those its
    /// member consumed or provided; others learn nothing (not found).
    pub async fn access_record_proof(
        &self,
        actor: &Actor,
        message_id: String,
        size: Option<u64>,
    ) -> Result<RecordProof, Problem> {
        let log = self.access_log()?.clone();
        let size = match size {
            Some(s) => s,
            None => self.sign_tree_head().await?.tree_head.tree_size,
        };
        let id = message_id.clone();
        let (proof, record) = blocking(move || log.inclusion(&id, size)).await?;
        let allowed = match actor {
            Actor::FederationAdmin => true,
            Actor::MemberAdmin(m) => {
                m.to_string() == record.record.consumer_member
                    || record
                        .record
                        .provider_service
                        .parse::<ServiceId>()
                        .is_ok_and(|s| s.member() == m)
            }
        };
        if !allowed {
            return Err(Problem::new(
                ProblemKind::NotFound,
                format!("no access record with message id {message_id}"),
            )
            .with("message_id", message_id));
        }
        Ok(proof)
    }

    /// The consistency proof between two tree sizes.
    pub async fn access_log_consistency(
        &self,
        from: u64,
        to: u64,
    ) -> Result<ConsistencyProof, Problem> {
        let log = self.access_log()?.clone();
        blocking(move || log.consistency(from, to)).await
    }
}

/// Signs a tree head every `every` when the log grew, until aborted.
pub(crate) async fn sign_tree_heads(registry: Arc<Registry>, every: std::time::Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(p) = registry.sign_tree_head().await {
            tracing::error!(problem = %p, "could not sign an access log tree head");
        }
    }
}

#[cfg(test)]
mod tests;

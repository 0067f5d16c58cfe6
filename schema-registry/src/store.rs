//! The registry's storage interface (documents, blobs, audit trail, settings) and its SQLite
//! implementation; a PostgreSQL backend implements the same trait.

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// What a store can fail with: always our side, never the caller's.
#[derive(Debug, thiserror::Error)]
#[error("storage: {0}")]
pub struct StoreError(String);

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError(e.to_string())
    }
}
impl From<serde_json::Error> for StoreError {
    fn from(e: serde_json::Error) -> Self {
        StoreError(e.to_string())
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// One entry of the audit trail: who changed what, when, from what to what, or what was refused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Assigned by the store, increasing.
    #[serde(default)]
    pub seq: u64,
    /// RFC 3339 UTC.
    pub at: String,
    /// `federation-admin`, `member-admin:MEMBER`, `anonymous`, or `registry`.
    pub actor: String,
    /// e.g. `member.create`, `contract.approve`, or `POST /v1/contracts` for a refusal.
    pub action: String,
    /// The object's id.
    pub object: String,
    /// `ok`, or the problem slug of a refusal.
    pub outcome: String,
    pub before: Option<Value>,
    pub after: Option<Value>,
}

/// Everything one change writes, applied atomically.
#[derive(Debug, Default)]
pub struct Change {
    /// (kind, id, document)
    pub puts: Vec<(&'static str, String, Value)>,
    /// (digest, bytes): content-addressed blobs such as service descriptions.
    pub blobs: Vec<(String, Vec<u8>)>,
    pub audit: Vec<AuditEntry>,
    /// (key, value) settings such as the configuration serial.
    pub settings: Vec<(&'static str, String)>,
}

/// The registry's storage. Writes are serialised by the registry itself; `commit` must apply
/// a whole [`Change`] or nothing, durably, before returning.
pub trait Store: Send + Sync + 'static {
    fn get(&self, kind: &str, id: &str) -> StoreResult<Option<Value>>;
    fn list(&self, kind: &str) -> StoreResult<Vec<Value>>;
    fn blob(&self, digest: &str) -> StoreResult<Option<Vec<u8>>>;
    fn setting(&self, key: &str) -> StoreResult<Option<String>>;
    fn audit(&self, after_seq: u64, limit: u32) -> StoreResult<Vec<AuditEntry>>;
    fn commit(&self, change: Change) -> StoreResult<()>;
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS documents (
    kind TEXT NOT NULL,
    id   TEXT NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (kind, id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS blobs (
    digest TEXT PRIMARY KEY,
    bytes  BLOB NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS audit (
    seq     INTEGER PRIMARY KEY AUTOINCREMENT,
    at      TEXT NOT NULL,
    actor   TEXT NOT NULL,
    action  TEXT NOT NULL,
    object  TEXT NOT NULL,
    outcome TEXT NOT NULL,
    before  TEXT,
    after   TEXT
);
CREATE TABLE IF NOT EXISTS settings (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
";

/// SQLite store: one file, WAL, `synchronous=FULL`.
pub struct SqliteStore {
    conn: Mutex<Connection>,
}

impl SqliteStore {
    pub fn open(path: &Path) -> StoreResult<SqliteStore> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.execute_batch(SCHEMA)?;
        Ok(SqliteStore {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave a half-applied transaction (SQLite rolls
        // it back), so a poisoned lock is safe to reuse.
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn parse_opt(s: Option<String>) -> StoreResult<Option<Value>> {
    Ok(match s {
        Some(s) => Some(serde_json::from_str(&s)?),
        None => None,
    })
}

impl Store for SqliteStore {
    fn get(&self, kind: &str, id: &str) -> StoreResult<Option<Value>> {
        let body: Option<String> = self
            .conn()
            .query_row(
                "SELECT body FROM documents WHERE kind = ?1 AND id = ?2",
                params![kind, id],
                |r| r.get(0),
            )
            .optional()?;
        parse_opt(body)
    }

    fn list(&self, kind: &str) -> StoreResult<Vec<Value>> {
        let conn = self.conn();
        let mut stmt =
            conn.prepare_cached("SELECT body FROM documents WHERE kind = ?1 ORDER BY id")?;
        let rows = stmt.query_map(params![kind], |r| r.get::<_, String>(0))?;
        let mut out = Vec::new();
        for row in rows {
            out.push(serde_json::from_str(&row?)?);
        }
        Ok(out)
    }

    fn blob(&self, digest: &str) -> StoreResult<Option<Vec<u8>>> {
        Ok(self
            .conn()
            .query_row(
                "SELECT bytes FROM blobs WHERE digest = ?1",
                params![digest],
                |r| r.get(0),
            )
            .optional()?)
    }

    fn setting(&self, key: &str) -> StoreResult<Option<String>> {
        Ok(self
            .conn()
            .query_row(
                "SELECT value FROM settings WHERE key = ?1",
                params![key],
                |r| r.get(0),
            )
            .optional()?)
    }

    fn audit(&self, after_seq: u64, limit: u32) -> StoreResult<Vec<AuditEntry>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT seq, at, actor, action, object, outcome, before, after FROM audit
             WHERE seq > ?1 ORDER BY seq LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![after_seq as i64, limit], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, String>(5)?,
                r.get::<_, Option<String>>(6)?,
                r.get::<_, Option<String>>(7)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (seq, at, actor, action, object, outcome, before, after) = row?;
            out.push(AuditEntry {
                seq: seq as u64,
                at,
                actor,
                action,
                object,
                outcome,
                before: parse_opt(before)?,
                after: parse_opt(after)?,
            });
        }
        Ok(out)
    }

    fn commit(&self, change: Change) -> StoreResult<()> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        for (kind, id, body) in &change.puts {
            tx.execute(
                "INSERT INTO documents (kind, id, body) VALUES (?1, ?2, ?3)
                 ON CONFLICT (kind, id) DO UPDATE SET body = excluded.body",
                params![kind, id, serde_json::to_string(body)?],
            )?;
        }
        for (digest, bytes) in &change.blobs {
            tx.execute(
                "INSERT INTO blobs (digest, bytes) VALUES (?1, ?2) ON CONFLICT (digest) DO NOTHING",
                params![digest, bytes],
            )?;
        }
        for e in &change.audit {
            tx.execute(
                "INSERT INTO audit (at, actor, action, object, outcome, before, after)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    e.at,
                    e.actor,
                    e.action,
                    e.object,
                    e.outcome,
                    e.before.as_ref().map(Value::to_string),
                    e.after.as_ref().map(Value::to_string),
                ],
            )?;
        }
        for (key, value) in &change.settings {
            tx.execute(
                "INSERT INTO settings (key, value) VALUES (?1, ?2)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                params![key, value],
            )?;
        }
        tx.commit()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn entry(action: &str) -> AuditEntry {
        AuditEntry {
            seq: 0,
            at: "2026-11-22T12:00:00Z".into(),
            actor: "federation-admin".into(),
            action: action.into(),
            object: "x".into(),
            outcome: "ok".into(),
            before: None,
            after: Some(json!({"a": 1})),
        }
    }

    #[test]
    fn a_change_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.sqlite");
        {
            let s = SqliteStore::open(&path).unwrap();
            s.commit(Change {
                puts: vec![("member", "m1".into(), json!({"name": "one"}))],
                blobs: vec![("d1".into(), vec![1, 2, 3])],
                audit: vec![entry("member.create")],
                settings: vec![("serial", "7".into())],
            })
            .unwrap();
        }
        let s = SqliteStore::open(&path).unwrap();
        assert_eq!(s.get("member", "m1").unwrap(), Some(json!({"name": "one"})));
        assert_eq!(s.list("member").unwrap().len(), 1);
        assert_eq!(s.blob("d1").unwrap(), Some(vec![1, 2, 3]));
        assert_eq!(s.setting("serial").unwrap().as_deref(), Some("7"));
        let audit = s.audit(0, 10).unwrap();
        assert_eq!(audit.len(), 1);
        assert_eq!(audit[0].seq, 1);
        assert_eq!(audit[0].after, Some(json!({"a": 1})));
    }

    #[test]
    fn a_failing_change_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&dir.path().join("r.sqlite")).unwrap();
        // Break the audit table so the last statement of the transaction fails.
        s.conn().execute_batch("DROP TABLE audit; CREATE TABLE audit (seq INTEGER PRIMARY KEY, at TEXT NOT NULL CHECK (at = 'never'), actor TEXT, action TEXT, object TEXT, outcome TEXT, before TEXT, after TEXT);").unwrap();
        let err = s.commit(Change {
            puts: vec![("member", "m1".into(), json!({}))],
            audit: vec![entry("member.create")],
            ..Change::default()
        });
        assert!(err.is_err());
        assert_eq!(s.get("member", "m1").unwrap(), None);
    }
}

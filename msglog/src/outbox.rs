//! The provider node's outbox of signed access records: the `access_queue` table of the node's
//! message log, where each record is committed in the same transaction as the log record
//! closing its exchange ([`AccessQueue::in_log`]), and a shipper that sends batches to the
//! registry's `POST /v1/access-records` and deletes them only after a 2xx, retrying with
//! backoff while the registry is unreachable. The message log is the only way in: a record is
//! queued exactly when its exchange's closing log record commits.
//!
//! Delivery is at least once: a batch the registry ingested whose response was lost is sent
//! again, and the registry, idempotent on (message id, node), does not log it twice. A record the
//! registry refuses for good (a 4xx other than 408 and 429) is moved to `rejected`, kept for an
//! operator, so that it does not block the records behind it.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use enlace_certs::SigningKey;
use enlace_core::access::{AccessRecord, SignedAccessRecord};
use enlace_core::outage::{Outage, Say};
use enlace_core::problem::{Problem, ProblemKind};
use rusqlite::{Connection, params};

/// Most records in one request to the registry.
pub const MAX_BATCH: usize = 500;

/// Longest wait between two attempts while the registry is down.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// The queue's tables, which the message log creates in its file too (`crate::MessageLog`): a
/// node's queue lives in its `messages.sqlite`, where each access record is committed in the
/// same transaction as the log record of its exchange.
pub(crate) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS access_queue (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id TEXT NOT NULL,
    record BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS access_rejected (
    id INTEGER PRIMARY KEY,
    message_id TEXT NOT NULL,
    record BLOB NOT NULL,
    problem TEXT NOT NULL,
    at TEXT NOT NULL
);
";

/// A failure of the queue; whoever gets it says so (the shipper once per interval).
fn internal(e: impl std::fmt::Display) -> Problem {
    Problem::internal(format!("the access record queue failed: {e}"))
}

/// Signs an access record with the node's signing key.
pub fn sign_record(record: AccessRecord, key: &SigningKey) -> SignedAccessRecord {
    SignedAccessRecord::sign(record, |msg| key.sign(msg))
}

/// The durable queue of signed access records awaiting shipment.
pub struct AccessQueue {
    /// Reads and deletions by the shipper.
    reader: Mutex<Connection>,
}

fn open_conn(path: &Path) -> Result<Connection, Problem> {
    let conn = Connection::open(path).map_err(internal)?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(internal)?;
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(internal)?;
    conn.busy_timeout(Duration::from_secs(10))
        .map_err(internal)?;
    Ok(conn)
}

impl AccessQueue {
    /// The queue in a node's message log at `log_path` (opened by [`crate::MessageLog`]
    /// first, which creates the tables): records arrive with the log records of their
    /// exchanges (`Extras::access`), and this only ships them. A queue left by an older node in
    /// `access-queue.sqlite` beside the log is moved in first.
    pub fn in_log(log_path: &Path) -> Result<Arc<AccessQueue>, Problem> {
        let reader = open_conn(log_path)?;
        reader.execute_batch(SCHEMA).map_err(internal)?;
        if let Some(dir) = log_path.parent() {
            migrate_old_queue(&reader, &dir.join("access-queue.sqlite"))?;
        }
        Ok(Arc::new(AccessQueue {
            reader: Mutex::new(reader),
        }))
    }

    /// Records waiting to be shipped.
    pub fn pending(&self) -> Result<u64, Problem> {
        self.count("access_queue")
    }

    /// Records the registry refused for good (kept in `rejected`).
    pub fn rejected(&self) -> Result<u64, Problem> {
        self.count("access_rejected")
    }

    fn count(&self, table: &str) -> Result<u64, Problem> {
        let conn = self.reader.lock().unwrap_or_else(|p| p.into_inner());
        let n: i64 = conn
            .query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))
            .map_err(internal)?;
        Ok(n as u64)
    }

    /// The oldest `limit` queued records: (queue id, canonical signed JSON).
    fn oldest(&self, limit: usize) -> Result<Vec<(i64, Vec<u8>)>, Problem> {
        let conn = self.reader.lock().unwrap_or_else(|p| p.into_inner());
        let mut stmt = conn
            .prepare_cached("SELECT id, record FROM access_queue ORDER BY id LIMIT ?1")
            .map_err(internal)?;
        let rows = stmt
            .query_map([limit as i64], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(internal)?;
        rows.collect::<Result<_, _>>().map_err(internal)
    }

    /// Deletes shipped records.
    fn delete(&self, ids: &[i64]) -> Result<(), Problem> {
        let mut conn = self.reader.lock().unwrap_or_else(|p| p.into_inner());
        let tx = conn.transaction().map_err(internal)?;
        {
            let mut stmt = tx
                .prepare_cached("DELETE FROM access_queue WHERE id = ?1")
                .map_err(internal)?;
            for id in ids {
                stmt.execute([id]).map_err(internal)?;
            }
        }
        tx.commit().map_err(internal)
    }

    /// Moves a record the registry refused for good to `rejected`.
    fn reject(&self, id: i64, problem: &str) -> Result<(), Problem> {
        let mut conn = self.reader.lock().unwrap_or_else(|p| p.into_inner());
        let tx = conn.transaction().map_err(internal)?;
        let at = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        tx.execute(
            "INSERT INTO access_rejected (id, message_id, record, problem, at) \
             SELECT id, message_id, record, ?2, ?3 FROM access_queue WHERE id = ?1",
            params![id, problem, at],
        )
        .map_err(internal)?;
        tx.execute("DELETE FROM access_queue WHERE id = ?1", [id])
            .map_err(internal)?;
        tx.commit().map_err(internal)
    }

    /// Sends the oldest batch (up to [`MAX_BATCH`]) to the registry and deletes what it
    /// accepted. Returns how many records left the queue; an error when the registry could not
    /// be reached or failed (the records stay queued).
    pub async fn ship_once(
        self: &Arc<Self>,
        registry_url: &str,
        http: &reqwest::Client,
    ) -> Result<usize, Problem> {
        let queue = self.clone();
        let batch = tokio::task::spawn_blocking(move || queue.oldest(MAX_BATCH))
            .await
            .map_err(internal)??;
        if batch.is_empty() {
            return Ok(0);
        }
        let url = format!("{}/v1/access-records", registry_url.trim_end_matches('/'));
        match post(http, &url, &batch).await? {
            Sent::Accepted => {
                let ids: Vec<i64> = batch.iter().map(|(id, _)| *id).collect();
                self.run_blocking(move |q| q.delete(&ids)).await?;
                Ok(batch.len())
            }
            Sent::Refused(problem) if batch.len() == 1 => {
                tracing::error!(problem = %problem, "the registry refused an access record; kept in `rejected`");
                let id = batch[0].0;
                self.run_blocking(move |q| q.reject(id, &problem)).await?;
                Ok(1)
            }
            Sent::Refused(_) => {
                // Find the refused record(s): send one at a time.
                let mut moved = 0;
                for one in batch {
                    let id = one.0;
                    match post(http, &url, std::slice::from_ref(&one)).await? {
                        Sent::Accepted => self.run_blocking(move |q| q.delete(&[id])).await?,
                        Sent::Refused(problem) => {
                            tracing::error!(problem = %problem, "the registry refused an access record; kept in `rejected`");
                            self.run_blocking(move |q| q.reject(id, &problem)).await?
                        }
                    }
                    moved += 1;
                }
                Ok(moved)
            }
        }
    }

    async fn run_blocking(
        self: &Arc<Self>,
        f: impl FnOnce(&AccessQueue) -> Result<(), Problem> + Send + 'static,
    ) -> Result<(), Problem> {
        let queue = self.clone();
        tokio::task::spawn_blocking(move || f(&queue))
            .await
            .map_err(internal)?
    }
}

/// Moves the records of an older node's stand-alone queue (`access-queue.sqlite`, tables
/// `queue` and `rejected`) into the log's tables, in one transaction, then renames the old file
/// to `access-queue.sqlite.migrated`, so that nothing is shipped twice or lost.
fn migrate_old_queue(conn: &Connection, old: &Path) -> Result<(), Problem> {
    if !old.exists() {
        return Ok(());
    }
    let path = old.to_string_lossy().to_string();
    conn.execute("ATTACH DATABASE ?1 AS old", [&path])
        .map_err(internal)?;
    let moved = (|| -> rusqlite::Result<usize> {
        let has = |t: &str| -> rusqlite::Result<bool> {
            conn.query_row(
                "SELECT EXISTS (SELECT 1 FROM old.sqlite_master WHERE type = 'table' AND name = ?1)",
                [t],
                |r| r.get(0),
            )
        };
        conn.execute_batch("BEGIN IMMEDIATE")?;
        let mut n = 0;
        if has("queue")? {
            n += conn.execute(
                "INSERT INTO main.access_queue (message_id, record) \
                 SELECT message_id, record FROM old.queue ORDER BY id",
                [],
            )?;
        }
        if has("rejected")? {
            conn.execute(
                "INSERT INTO main.access_rejected (message_id, record, problem, at) \
                 SELECT message_id, record, problem, at FROM old.rejected",
                [],
            )?;
        }
        conn.execute_batch("COMMIT")?;
        Ok(n)
    })();
    if moved.is_err() {
        let _ = conn.execute_batch("ROLLBACK");
    }
    let _ = conn.execute_batch("DETACH DATABASE old");
    let moved = moved.map_err(|e| {
        internal(format!(
            "moving {} into the message log: {e}",
            old.display()
        ))
    })?;
    let mut done = old.as_os_str().to_owned();
    done.push(".migrated");
    std::fs::rename(old, &done).map_err(internal)?;
    tracing::info!(
        records = moved,
        "moved the access records of access-queue.sqlite into the message log"
    );
    Ok(())
}

enum Sent {
    Accepted,
    /// Refused for good: a 4xx other than 408 and 429, with the problem's text.
    Refused(String),
}

async fn post(
    http: &reqwest::Client,
    url: &str,
    batch: &[(i64, Vec<u8>)],
) -> Result<Sent, Problem> {
    let mut body = Vec::with_capacity(batch.iter().map(|(_, r)| r.len() + 1).sum::<usize>() + 2);
    body.push(b'[');
    for (i, (_, record)) in batch.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(record);
    }
    body.push(b']');
    let resp = http
        .post(url)
        .header("content-type", "application/json")
        .body(body)
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .map_err(|e| {
            Problem::new(
                ProblemKind::PeerUnreachable,
                format!("the registry is unreachable: {e}"),
            )
        })?;
    let status = resp.status();
    if status.is_success() {
        return Ok(Sent::Accepted);
    }
    let text = resp.text().await.unwrap_or_default();
    if status.is_client_error() && status.as_u16() != 408 && status.as_u16() != 429 {
        return Ok(Sent::Refused(format!("{status}: {text}")));
    }
    Err(Problem::new(
        ProblemKind::PeerUnreachable,
        format!("the registry answered {status}: {text}"),
    ))
}

/// Ships queued records every `interval` (at once while a full batch waits), backing off up
/// to a minute while the registry is unreachable. Runs until aborted.
pub fn spawn_shipper(
    queue: Arc<AccessQueue>,
    registry_url: String,
    http: reqwest::Client,
    interval: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut backoff = interval;
        let mut outage = Outage::new(OUTAGE_SUMMARY_EVERY);
        loop {
            match queue.ship_once(&registry_url, &http).await {
                Ok(n) if n >= MAX_BATCH => {
                    report(&mut outage, None);
                    backoff = interval;
                    continue;
                }
                Ok(_) => {
                    report(&mut outage, None);
                    backoff = interval;
                    tokio::time::sleep(interval).await;
                }
                Err(p) => {
                    report(&mut outage, Some((&p, backoff)));
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF.max(interval));
                }
            }
        }
    })
}

/// The least time between two lines saying that shipping still fails.
const OUTAGE_SUMMARY_EVERY: Duration = Duration::from_secs(10);

/// Says that shipping fails (the registry unreachable, the log's disk full) at the first
/// failure, then at most once every [`OUTAGE_SUMMARY_EVERY`], and when it works again.
fn report(outage: &mut Outage, failure: Option<(&Problem, Duration)>) {
    let now = std::time::Instant::now();
    let Some((p, backoff)) = failure else {
        if let Say::Over { failed, for_secs } = outage.succeeded(now) {
            tracing::info!(
                failed_attempts = failed,
                for_secs,
                "access records ship again"
            );
        }
        return;
    };
    let retry_in_ms = backoff.as_millis() as u64;
    match outage.failed(now) {
        Say::Began => {
            tracing::warn!(problem = %p, retry_in_ms, "could not ship access records; they stay queued");
        }
        Say::Still { failed, for_secs } => {
            tracing::warn!(problem = %p, failed_attempts = failed, for_secs, retry_in_ms, "still cannot ship access records");
        }
        Say::Nothing | Say::Over { .. } => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(n: u32) -> SignedAccessRecord {
        let r = AccessRecord {
            message_id: format!("m-{n}"),
            at: "2026-01-02T03:04:05Z".into(),
            consumer_member: "CL-DEV/GOV/60803000-K".into(),
            consumer_subsystem: "CL-DEV/GOV/60803000-K/renta".into(),
            provider_service: "CL-DEV/GOV/61002000-3/registro-civil/personas".into(),
            provider_version: "v1.0".into(),
            operation: "GET /persons/{run}".into(),
            subject: "CL-RUN:12345678-5".into(),
            fields: vec!["name".into()],
            purpose: "p".into(),
            legal_basis: "l".into(),
            contract: "ctr_01JAAAAAAAAAAAAAAAAAAAAAAA".into(),
            procedure: None,
            step: None,
            user: None,
            authorisation: None,
            result: "served".into(),
            status: 200,
            request_digest: None,
            response_digest: None,
            node: "CL-DEV/GOV/61002000-3/node/a".into(),
            authorisation_refused: None,
        };
        let key = SigningKey::generate().unwrap();
        sign_record(r, &key)
    }

    #[tokio::test]
    async fn records_survive_reopening_and_stay_until_shipped() {
        enlace_certs::install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("messages.sqlite");
        let log = crate::MessageLog::open(&path, Default::default()).unwrap();
        let q = AccessQueue::in_log(&path).unwrap();
        let writes: Vec<_> = (0..50)
            .map(|n| {
                let r = record(n);
                let extras = crate::Extras {
                    usage: Vec::new(),
                    access: Some((r.record.message_id.clone(), r.canonical_bytes())),
                };
                log.append_with(closing_record(&r.record.message_id), extras)
            })
            .collect();
        for w in writes {
            w.await.unwrap();
        }
        assert_eq!(q.pending().unwrap(), 50);
        log.close().await.unwrap();
        drop(q);
        let q = AccessQueue::in_log(&path).unwrap();
        assert_eq!(q.pending().unwrap(), 50);
        // Nobody listens on this port: shipping fails and nothing leaves the queue.
        let http = reqwest::Client::new();
        assert!(q.ship_once("http://127.0.0.1:9", &http).await.is_err());
        assert_eq!(q.pending().unwrap(), 50);
        let oldest = q.oldest(MAX_BATCH).unwrap();
        assert_eq!(oldest.len(), 50);
        let first: SignedAccessRecord = serde_json::from_slice(&oldest[0].1).unwrap();
        assert!(first.record.message_id.starts_with("m-"));
    }

    #[tokio::test]
    async fn an_older_nodes_queue_moves_into_the_log_once_and_records_ride_with_log_records() {
        enlace_certs::install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        // The stand-alone file of an older node: three pending, one rejected.
        let old = dir.path().join("access-queue.sqlite");
        {
            let c = Connection::open(&old).unwrap();
            c.execute_batch(
                "CREATE TABLE queue (id INTEGER PRIMARY KEY AUTOINCREMENT, message_id TEXT NOT NULL, record BLOB NOT NULL);
                 CREATE TABLE rejected (id INTEGER PRIMARY KEY, message_id TEXT NOT NULL, record BLOB NOT NULL, problem TEXT NOT NULL, at TEXT NOT NULL);",
            )
            .unwrap();
            for n in 0..3 {
                let r = record(n);
                c.execute(
                    "INSERT INTO queue (message_id, record) VALUES (?1, ?2)",
                    params![r.record.message_id, r.canonical_bytes()],
                )
                .unwrap();
            }
            c.execute(
                "INSERT INTO rejected (message_id, record, problem, at) VALUES ('m-x', x'00', 'bad', 'then')",
                [],
            )
            .unwrap();
        }
        let log_path = dir.path().join("messages.sqlite");
        let log = crate::MessageLog::open(&log_path, Default::default()).unwrap();
        let q = AccessQueue::in_log(&log_path).unwrap();
        assert_eq!((q.pending().unwrap(), q.rejected().unwrap()), (3, 1));
        assert!(!old.exists() && dir.path().join("access-queue.sqlite.migrated").exists());
        // Opening again moves nothing twice.
        let q = AccessQueue::in_log(&log_path).unwrap();
        assert_eq!(q.pending().unwrap(), 3);
        // A record appended with its access record commits both.
        let r = record(7);
        let rec = closing_record("m-7");
        let extras = crate::Extras {
            usage: Vec::new(),
            access: Some((r.record.message_id.clone(), r.canonical_bytes())),
        };
        log.append_with(rec, extras).await.unwrap();
        assert_eq!(q.pending().unwrap(), 4);
        assert_eq!(q.oldest(10).unwrap().last().unwrap().1, r.canonical_bytes());
    }

    /// The log record closing an exchange, as a provider node writes it.
    fn closing_record(message_id: &str) -> crate::Record {
        crate::Record {
            status: 200,
            ..crate::Record::new(
                message_id,
                crate::RecordKind::ResponseOut,
                time::OffsetDateTime::now_utc(),
            )
        }
    }
}

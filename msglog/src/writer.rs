//! The log's single writer: a dedicated thread that group-commits queued appends in one
//! SQLite transaction, and serialises pruning and anchor storage with them.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::{Duration as StdDuration, Instant};

use enlace_certs::SigningKey;
use enlace_core::outage::{Outage, Say};
use enlace_core::problem::{Problem, ProblemKind};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use time::OffsetDateTime;
use tokio::sync::oneshot;

use super::anchor::SignedHead;
use super::chain::{GENESIS, chain_hash, hash32, record_digest};
use super::internal;
use super::record::Record;

/// How often the writer applies the retention period when one is set.
const PRUNE_EVERY: StdDuration = StdDuration::from_secs(3600);

/// While the log cannot commit, how often the writer tries a small commit of its own, so that
/// the node becomes ready again when space returns even if no traffic arrives.
const PROBE_EVERY: StdDuration = StdDuration::from_secs(1);

/// While the log cannot commit, the least time between two lines saying so.
const OUTAGE_SUMMARY_EVERY: StdDuration = StdDuration::from_secs(10);

/// The schema; `records.seq` is the rowid, so reading in seq order is a plain table scan.
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS records (
    seq        INTEGER PRIMARY KEY,
    message_id TEXT    NOT NULL,
    kind       TEXT    NOT NULL,
    at_ns      INTEGER NOT NULL,
    record     BLOB    NOT NULL,
    prev_hash  BLOB    NOT NULL,
    hash       BLOB    NOT NULL
);
CREATE INDEX IF NOT EXISTS records_message_id ON records (message_id);
CREATE TABLE IF NOT EXISTS checkpoint (
    id        INTEGER PRIMARY KEY CHECK (id = 1),
    seq       INTEGER NOT NULL,
    hash      BLOB    NOT NULL,
    pruned_at TEXT    NOT NULL
);
CREATE TABLE IF NOT EXISTS anchors (
    seq           INTEGER NOT NULL,
    hash_hex      TEXT    NOT NULL,
    node          TEXT    NOT NULL,
    at            TEXT    NOT NULL,
    signature_b64 TEXT    NOT NULL
);
CREATE INDEX IF NOT EXISTS anchors_seq ON anchors (seq);
CREATE TABLE IF NOT EXISTS usage (
    contract TEXT    NOT NULL,
    period   INTEGER NOT NULL,
    count    INTEGER NOT NULL,
    PRIMARY KEY (contract, period)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS probe (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    at TEXT    NOT NULL
);
";

/// One exchange counted against a contract's volume limit (`period` is the period's index)
/// or its single use (`period` = [`SINGLE_USE_PERIOD`]), committed with the record that
/// admitted it so that a restart neither forgets nor double-counts it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Usage {
    pub contract: String,
    pub period: i64,
}

/// The `period` under which a single-use contract's use is counted.
pub const SINGLE_USE_PERIOD: i64 = -1;

/// What is committed with a record besides it: contract usage it counts, and the signed access
/// record of its exchange, queued in `access_queue` for the shipper (`crate::access`) in the
/// same transaction, so that the access record is durable exactly when the record is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Extras {
    pub usage: Vec<Usage>,
    /// (message id, canonical bytes of the signed access record)
    pub access: Option<(String, Vec<u8>)>,
}

/// How the log is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogOptions {
    /// Records older than this are pruned (checked at open and hourly); `None` keeps all.
    pub retention: Option<time::Duration>,
    /// The most appends committed in one transaction (0 counts as 1).
    pub max_batch: usize,
}

impl Default for LogOptions {
    fn default() -> Self {
        LogOptions {
            retention: None,
            max_batch: 512,
        }
    }
}

/// Where an appended record landed: its position and chain hash, durable on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub seq: u64,
    pub hash: [u8; 32],
}

impl Appended {
    /// The chain hash in lower-case hex.
    pub fn hash_hex(&self) -> String {
        hex::encode(self.hash)
    }
}

/// What a prune did: how many records it deleted and the checkpoint the rest verifies from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pruned {
    pub deleted: u64,
    pub checkpoint_seq: u64,
    pub checkpoint_hash: [u8; 32],
}

/// The head and commit count, written by the writer after each commit, read by anyone; and
/// whether the last commit failed.
#[derive(Debug)]
struct Shared {
    head: Mutex<(u64, [u8; 32])>,
    commits: AtomicU64,
    failing: AtomicBool,
}

/// The problem every caller gets while the log cannot commit. It names no path and no SQLite
/// error: it travels to peers; the writer logs the cause.
pub(crate) fn unavailable() -> Problem {
    Problem::new(
        ProblemKind::LogUnavailable,
        "this node's message log cannot commit (its disk is full or failing); retry later",
    )
}

struct PendingAppend {
    message_id: String,
    kind: &'static str,
    at_ns: i64,
    bytes: Vec<u8>,
    extras: Extras,
    reply: oneshot::Sender<Result<Appended, Problem>>,
}

enum Command {
    Append(PendingAppend),
    Anchor(SignedHead, oneshot::Sender<Result<(), Problem>>),
    Prune(OffsetDateTime, oneshot::Sender<Result<Pruned, Problem>>),
    Close(oneshot::Sender<Result<(), Problem>>),
}

/// The node's message log. Share it behind an `Arc`; every method takes `&self`.
#[derive(Debug)]
pub struct MessageLog {
    tx: Sender<Command>,
    shared: Arc<Shared>,
}

impl MessageLog {
    /// Opens (creating if needed) the log at `path` and starts its writer thread.
    ///
    /// The database is put in WAL mode with `synchronous=FULL`, so a commit is fsynced.
    pub fn open(path: &Path, opts: LogOptions) -> Result<MessageLog, Problem> {
        let conn = Connection::open(path)
            .map_err(|e| internal(format!("opening {}: {e}", path.display())))?;
        let mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .map_err(internal)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(internal(format!(
                "{}: journal mode is {mode}, WAL is required",
                path.display()
            )));
        }
        conn.execute_batch("PRAGMA synchronous = FULL; PRAGMA busy_timeout = 10000;")
            .map_err(internal)?;
        conn.execute_batch(SCHEMA).map_err(internal)?;
        // The node's access-record queue lives here too (crate::access).
        conn.execute_batch(crate::outbox::SCHEMA)
            .map_err(internal)?;
        let head = tail(&conn).map_err(internal)?;

        let shared = Arc::new(Shared {
            head: Mutex::new(head),
            commits: AtomicU64::new(0),
            failing: AtomicBool::new(false),
        });
        let (tx, rx) = mpsc::channel();
        let mut writer = Writer {
            conn,
            shared: shared.clone(),
            max_batch: opts.max_batch.max(1),
            retention: opts.retention,
            last_retention: None,
            outage: Outage::new(OUTAGE_SUMMARY_EVERY),
        };
        std::thread::Builder::new()
            .name("msglog-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| internal(format!("starting the writer thread: {e}")))?;
        Ok(MessageLog { tx, shared })
    }

    /// Appends `rec`; the returned future resolves once it is committed and fsynced, with its
    /// seq and hash.
    ///
    /// The record is queued when this is called, not when the future is first polled, so the
    /// log's order is the order of the calls (a request record queued before the request is
    /// forwarded precedes the response record whatever the polling).
    pub fn append(
        &self,
        rec: Record,
    ) -> impl Future<Output = Result<Appended, Problem>> + Send + 'static {
        self.append_counted(rec, Vec::new())
    }

    /// [`MessageLog::append`], also counting `usage` against contracts in the same transaction.
    pub fn append_counted(
        &self,
        rec: Record,
        usage: Vec<Usage>,
    ) -> impl Future<Output = Result<Appended, Problem>> + Send + 'static {
        self.append_with(
            rec,
            Extras {
                usage,
                access: None,
            },
        )
    }

    /// [`MessageLog::append`], committing `extras` in the same transaction.
    pub fn append_with(
        &self,
        rec: Record,
        extras: Extras,
    ) -> impl Future<Output = Result<Appended, Problem>> + Send + 'static {
        let at_ns = i64::try_from(rec.at.unix_timestamp_nanos()).unwrap_or(i64::MAX);
        let (reply, rx) = oneshot::channel();
        let queued = self.send(Command::Append(PendingAppend {
            bytes: rec.canonical_bytes(),
            message_id: rec.message_id,
            kind: rec.kind.as_str(),
            at_ns,
            extras,
            reply,
        }));
        async move {
            queued?;
            rx.await.map_err(|_| stopped())?
        }
    }

    /// The last durable record's `(seq, hash)`; `(0, GENESIS)` for an empty log.
    pub fn head(&self) -> (u64, [u8; 32]) {
        *self.shared.head.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `log-unavailable` while the last commit the writer tried failed; `None` once one succeeds.
    pub fn unavailable(&self) -> Option<Problem> {
        self.shared
            .failing
            .load(Ordering::Relaxed)
            .then(unavailable)
    }

    /// How many write transactions the writer has committed since [`MessageLog::open`].
    pub fn commits(&self) -> u64 {
        self.shared.commits.load(Ordering::Relaxed)
    }

    /// Signs the current head with the node's signing key, stores it in the `anchors` table
    /// and returns it, for the relay to send to the registry.
    pub async fn sign_head(&self, key: &SigningKey, node_id: &str) -> Result<SignedHead, Problem> {
        let (seq, hash) = self.head();
        let head = super::anchor::sign_head(key, node_id, seq, &hash);
        let (reply, rx) = oneshot::channel();
        self.send(Command::Anchor(head.clone(), reply))?;
        rx.await.map_err(|_| stopped())??;
        Ok(head)
    }

    /// Deletes the oldest records whose time is before `before`, always a prefix of the chain
    /// (it stops at the first newer record), keeping the last deleted one's `(seq, hash)` as
    /// the checkpoint. Runs on the writer, between group commits.
    pub async fn prune(&self, before: OffsetDateTime) -> Result<Pruned, Problem> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Prune(before, reply))?;
        rx.await.map_err(|_| stopped())?
    }

    /// Lets the writer finish everything queued, checkpoints the WAL into the database file
    /// and stops the writer. Dropping the log does the same without waiting.
    pub async fn close(self) -> Result<(), Problem> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Close(reply))?;
        rx.await.map_err(|_| stopped())?
    }

    fn send(&self, cmd: Command) -> Result<(), Problem> {
        self.tx.send(cmd).map_err(|_| stopped())
    }
}

fn stopped() -> Problem {
    internal("the writer has stopped")
}

/// The last record's `(seq, hash)`, else the checkpoint's, else genesis.
fn tail(conn: &Connection) -> rusqlite::Result<(u64, [u8; 32])> {
    let last: Option<(i64, Vec<u8>)> = conn
        .prepare_cached("SELECT seq, hash FROM records ORDER BY seq DESC LIMIT 1")?
        .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let last = match last {
        Some(row) => Some(row),
        None => conn
            .query_row("SELECT seq, hash FROM checkpoint WHERE id = 1", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()?,
    };
    match last {
        None => Ok((0, GENESIS)),
        Some((seq, hash)) => {
            let hash = hash32(&hash).ok_or_else(|| {
                rusqlite::Error::InvalidColumnType(1, "hash".into(), rusqlite::types::Type::Blob)
            })?;
            Ok((seq as u64, hash))
        }
    }
}

struct Writer {
    conn: Connection,
    shared: Arc<Shared>,
    max_batch: usize,
    retention: Option<time::Duration>,
    last_retention: Option<Instant>,
    /// Whether commits fail, so that it is said at the start, then at most once every
    /// [`OUTAGE_SUMMARY_EVERY`], and at the end, whatever the traffic.
    outage: Outage,
}

impl Writer {
    fn run(&mut self, rx: Receiver<Command>) {
        let mut carried: Option<Command> = None;
        loop {
            self.apply_retention();
            let wait = if self.outage.is_on() {
                PROBE_EVERY
            } else {
                PRUNE_EVERY
            };
            let cmd = match carried.take() {
                Some(cmd) => cmd,
                None => match rx.recv_timeout(wait) {
                    Ok(cmd) => cmd,
                    Err(RecvTimeoutError::Timeout) => {
                        if self.outage.is_on() {
                            let probed = self.probe();
                            self.outcome(probed.as_ref().map(|_| ()), 0);
                        }
                        continue;
                    }
                    Err(RecvTimeoutError::Disconnected) => break,
                },
            };
            match cmd {
                Command::Append(first) => {
                    let mut batch = vec![first];
                    while batch.len() < self.max_batch {
                        match rx.try_recv() {
                            Ok(Command::Append(next)) => batch.push(next),
                            Ok(other) => {
                                carried = Some(other);
                                break;
                            }
                            Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
                        }
                    }
                    self.commit_batch(batch);
                }
                Command::Anchor(head, reply) => {
                    let stored = self.store_anchor(&head);
                    self.outcome(stored.as_ref().map(|_| ()), 0);
                    let _ = reply.send(stored.map_err(|_| unavailable()));
                }
                Command::Prune(before, reply) => {
                    let _ = reply.send(self.prune(before).map_err(internal));
                }
                Command::Close(reply) => {
                    let _ = reply.send(self.checkpoint_wal().map_err(internal));
                    return;
                }
            }
        }
        if let Err(e) = self.checkpoint_wal() {
            tracing::warn!(error = %e, "message log: final wal checkpoint failed");
        }
    }

    /// Writes the whole batch in one transaction, commits (fsync), then answers every caller;
    /// if the commit fails, every caller gets `log-unavailable` and nothing of the batch is
    /// acknowledged.
    fn commit_batch(&mut self, batch: Vec<PendingAppend>) {
        let written = self.write_batch(&batch);
        self.outcome(written.as_ref().map(|_| ()), batch.len());
        match written {
            Ok(appended) => {
                for (pending, done) in batch.into_iter().zip(appended) {
                    // A caller that gave up still has its record logged.
                    let _ = pending.reply.send(Ok(done));
                }
            }
            Err(_) => {
                for pending in batch {
                    let _ = pending.reply.send(Err(unavailable()));
                }
            }
        }
    }

    /// Records whether a commit succeeded: the shared flag `/readyz` reads, and the lines that
    /// say the log cannot commit (the first failure, a summary at most every
    /// [`OUTAGE_SUMMARY_EVERY`], the recovery), never one per request.
    fn outcome(&mut self, result: Result<(), &rusqlite::Error>, records: usize) {
        let now = Instant::now();
        let say = match result {
            Ok(()) => self.outage.succeeded(now),
            Err(_) => self.outage.failed(now),
        };
        self.shared
            .failing
            .store(self.outage.is_on(), Ordering::Relaxed);
        let error = result.err().map(ToString::to_string).unwrap_or_default();
        match say {
            Say::Nothing => {}
            Say::Began => {
                tracing::error!(%error, records, "message log cannot commit; answering log-unavailable and not ready until a commit succeeds");
            }
            Say::Still { failed, for_secs } => {
                tracing::error!(%error, failed_commits = failed, outage_secs = for_secs, "message log still cannot commit");
            }
            Say::Over { failed, for_secs } => {
                tracing::info!(
                    failed_commits = failed,
                    outage_secs = for_secs,
                    "message log commits again; node ready"
                );
            }
        }
    }

    /// A commit of one small row outside the chain, tried while the log cannot commit.
    fn probe(&mut self) -> rusqlite::Result<()> {
        let at = OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        let done = self.conn.execute(
            "INSERT INTO probe (id, at) VALUES (1, ?1) ON CONFLICT (id) DO UPDATE SET at = ?1",
            [at],
        );
        if done.is_err() && !self.conn.is_autocommit() {
            let _ = self.conn.execute_batch("ROLLBACK");
        }
        done.map(|_| ())
    }

    fn write_batch(&mut self, batch: &[PendingAppend]) -> rusqlite::Result<Vec<Appended>> {
        // BEGIN and COMMIT as cached statements: a transaction per commit parsed them anew.
        self.conn.prepare_cached("BEGIN IMMEDIATE")?.execute([])?;
        let written = self.write_in_transaction(batch);
        let done = written.and_then(|w| {
            self.conn.prepare_cached("COMMIT")?.execute([])?;
            Ok(w)
        });
        match done {
            Ok((appended, head)) => {
                self.committed(head);
                Ok(appended)
            }
            Err(e) => {
                if !self.conn.is_autocommit() {
                    let _ = self.conn.execute_batch("ROLLBACK");
                }
                Err(e)
            }
        }
    }

    /// The inserts of [`Writer::write_batch`], inside its transaction; the new head.
    #[allow(clippy::type_complexity)]
    fn write_in_transaction(
        &mut self,
        batch: &[PendingAppend],
    ) -> rusqlite::Result<(Vec<Appended>, (u64, [u8; 32]))> {
        let tx = &self.conn;
        // Read the tail inside the write transaction rather than trusting memory, so that the
        // chain stays linear even if another process wrote to the file.
        let (mut seq, mut prev) = tail(tx)?;
        let mut appended = Vec::with_capacity(batch.len());
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO records (seq, message_id, kind, at_ns, record, prev_hash, hash)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?;
            for p in batch {
                seq += 1;
                let hash = chain_hash(seq, &prev, &record_digest(&p.bytes));
                insert.execute(params![
                    seq as i64,
                    p.message_id,
                    p.kind,
                    p.at_ns,
                    p.bytes,
                    prev.as_slice(),
                    hash.as_slice()
                ])?;
                appended.push(Appended { seq, hash });
                prev = hash;
            }
            let mut count = tx.prepare_cached(
                "INSERT INTO usage (contract, period, count) VALUES (?1, ?2, 1)
                 ON CONFLICT (contract, period) DO UPDATE SET count = count + 1",
            )?;
            for u in batch.iter().flat_map(|p| &p.extras.usage) {
                count.execute(params![u.contract, u.period])?;
            }
            let mut queue =
                tx.prepare_cached("INSERT INTO access_queue (message_id, record) VALUES (?1, ?2)")?;
            for (message_id, record) in batch.iter().filter_map(|p| p.extras.access.as_ref()) {
                queue.execute(params![message_id, record])?;
            }
        }
        Ok((appended, (seq, prev)))
    }

    fn committed(&self, head: (u64, [u8; 32])) {
        self.shared.commits.fetch_add(1, Ordering::Relaxed);
        *self.shared.head.lock().unwrap_or_else(|e| e.into_inner()) = head;
    }

    fn store_anchor(&mut self, head: &SignedHead) -> rusqlite::Result<()> {
        self.conn.execute(
            "INSERT INTO anchors (seq, hash_hex, node, at, signature_b64)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                head.seq as i64,
                head.hash_hex,
                head.node,
                head.at,
                head.signature_b64
            ],
        )?;
        self.shared.commits.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn prune(&mut self, before: OffsetDateTime) -> rusqlite::Result<Pruned> {
        let before_ns = i64::try_from(before.unix_timestamp_nanos()).unwrap_or(i64::MAX);
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let checkpoint: Option<(i64, Vec<u8>)> = tx
            .query_row("SELECT seq, hash FROM checkpoint WHERE id = 1", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()?;
        let (checkpoint_seq, checkpoint_hash) = match checkpoint {
            Some((seq, hash)) => (seq, hash32(&hash).unwrap_or(GENESIS)),
            None => (0, GENESIS),
        };
        // The first record to keep: the oldest one at or after `before` (scanning in seq
        // order stops early, old records come first). Everything before it goes.
        let first_kept: Option<i64> = tx
            .query_row(
                "SELECT seq FROM records WHERE at_ns >= ?1 ORDER BY seq LIMIT 1",
                [before_ns],
                |r| r.get(0),
            )
            .optional()?;
        let last_deleted: Option<(i64, Vec<u8>)> = match first_kept {
            Some(kept) => tx
                .query_row(
                    "SELECT seq, hash FROM records WHERE seq < ?1 ORDER BY seq DESC LIMIT 1",
                    [kept],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?,
            None => tx
                .query_row(
                    "SELECT seq, hash FROM records ORDER BY seq DESC LIMIT 1",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?,
        };
        let Some((last_seq, last_hash)) = last_deleted else {
            return Ok(Pruned {
                deleted: 0,
                checkpoint_seq: checkpoint_seq as u64,
                checkpoint_hash,
            });
        };
        let last_hash = hash32(&last_hash).ok_or_else(|| {
            rusqlite::Error::InvalidColumnType(1, "hash".into(), rusqlite::types::Type::Blob)
        })?;
        let deleted = tx.execute("DELETE FROM records WHERE seq <= ?1", [last_seq])?;
        let pruned_at = OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        tx.execute(
            "INSERT INTO checkpoint (id, seq, hash, pruned_at) VALUES (1, ?1, ?2, ?3)
             ON CONFLICT (id) DO UPDATE SET seq = ?1, hash = ?2, pruned_at = ?3",
            params![last_seq, last_hash.as_slice(), pruned_at],
        )?;
        tx.commit()?;
        self.shared.commits.fetch_add(1, Ordering::Relaxed);
        tracing::info!(deleted, checkpoint = last_seq, "message log pruned");
        Ok(Pruned {
            deleted: deleted as u64,
            checkpoint_seq: last_seq as u64,
            checkpoint_hash: last_hash,
        })
    }

    /// Applies the retention period at start and then every [`PRUNE_EVERY`].
    fn apply_retention(&mut self) {
        let Some(retention) = self.retention else {
            return;
        };
        if self
            .last_retention
            .is_some_and(|last| last.elapsed() < PRUNE_EVERY)
        {
            return;
        }
        self.last_retention = Some(Instant::now());
        if let Err(e) = self.prune(OffsetDateTime::now_utc() - retention) {
            tracing::error!(error = %e, "message log: retention prune failed");
        }
    }

    fn checkpoint_wal(&mut self) -> rusqlite::Result<()> {
        self.conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
    }
}

//! Storage faults injected at the syscall level into real `enlace` processes: the shim in
//! `tests/fault/shim.c`, compiled here with the machine's `gcc` and loaded with `LD_PRELOAD`,
//! makes the writes and fsyncs of files under a chosen directory fail while a control file
//! says so. The registry, the sample backend and both nodes run as child processes of the
//! binary, as `enlace bench` runs them; only the process under test gets the shim.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

mod support;

use support::{BIN, free_base, text};

const PERSON_PATH: &str = "/r1/CL-DEV/GOV/61002000-3/registro-civil/personas/v1/persons/12345678-5";
const PROVIDER: &str = "61002000-3";
const CONSUMER: &str = "60803000-K";

/// Compiles the shim into `dir`; fails the test (never skips it) when there is no `gcc`.
fn build_shim(dir: &Path) -> PathBuf {
    let src = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fault/shim.c");
    let out = dir.join("fault-shim.so");
    let built = Command::new("gcc")
        .args([
            "-shared", "-fPIC", "-O2", "-Wall", "-Wextra", "-Werror", "-o",
        ])
        .arg(&out)
        .arg(src)
        .arg("-ldl")
        .output()
        .unwrap_or_else(|e| {
            panic!("these tests compile tests/fault/shim.c with gcc, which did not run: {e}")
        });
    assert!(
        built.status.success(),
        "gcc could not compile the fault shim:\n{}",
        String::from_utf8_lossy(&built.stderr)
    );
    out
}

/// A child process, its stderr in a file; killed when dropped.
struct Proc {
    child: Child,
    stderr: PathBuf,
}

impl Proc {
    fn spawn(args: &[&str], stderr: PathBuf, fault: Option<&Fault>) -> Proc {
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).expect("stderr file"));
        if let Some(f) = fault {
            cmd.env("LD_PRELOAD", &f.shim)
                .env("ENLACE_FAULT_UNDER", &f.under)
                .env("ENLACE_FAULT_CONTROL", &f.control);
        }
        let child = cmd.spawn().expect("enlace starts");
        Proc { child, stderr }
    }

    /// SIGINT, as Ctrl-C: a node drains and anchors its head.
    fn stop(&mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-INT", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.kill();
    }

    /// SIGKILL: a crash, nothing flushed or closed.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.kill();
        }
    }
}

/// The shim's settings for one process: the library, the files it fails, its control file.
struct Fault {
    shim: PathBuf,
    under: PathBuf,
    control: PathBuf,
}

impl Fault {
    fn set(&self, mode: &str) {
        std::fs::write(&self.control, mode).expect("control file");
    }

    /// How many writes and fsyncs of the watched files the shim has seen since the last `set`.
    fn count(&self) -> u64 {
        let mut path = self.control.clone().into_os_string();
        path.push(".count");
        std::fs::read_to_string(path)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }
}

/// The demo federation seeded by `enlace up` in a temp dir, then served by separate processes:
/// the registry, the sample backend and both nodes.
struct Federation {
    dir: tempfile::TempDir,
    base: u16,
    token: String,
    contract: String,
    grpc_contract: String,
    registry: Proc,
    _backends: [Proc; 2],
    provider: Proc,
    consumer: Proc,
    http: reqwest::Client,
}

/// Seeds a federation with `enlace up` (which prints its tokens and the contract), and stops it.
fn seed(dir: &Path, base: u16) -> (String, String, String) {
    let mut child = Command::new(BIN)
        .args(["up", "--dir"])
        .arg(dir)
        .args(["--base-port", &base.to_string()])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("enlace up starts");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !lines
        .last()
        .is_some_and(|l: &String| l.contains("Press Ctrl-C to stop."))
    {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => lines.push(line),
            Err(_) => {
                let _ = child.kill();
                panic!("enlace up did not get ready:\n{}", lines.join("\n"));
            }
        }
    }
    let value = |label: &str| {
        lines
            .iter()
            .find(|l| l.trim_start().starts_with(label))
            .and_then(|l| l.split_whitespace().nth(label.split_whitespace().count()))
            .unwrap_or_else(|| panic!("`{label}` not printed:\n{}", lines.join("\n")))
            .to_string()
    };
    let found = (
        value("SII renta backend token"),
        value("contract"),
        value("gRPC contract"),
    );
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = child.wait().expect("enlace up exits");
    assert!(status.success(), "enlace up exited with {status}");
    found
}

impl Federation {
    /// A federation whose `faulty` process ("registry", "provider" or "consumer"; "none") runs
    /// under the shim.
    async fn start(shim: &Path, faulty: &str) -> (Federation, Fault) {
        enlace_certs::install_crypto_provider();
        let dir = tempfile::tempdir().expect("tempdir");
        let base = free_base();
        let (token, contract, grpc_contract) = seed(dir.path(), base);
        let d = dir.path();
        let registry_cfg = d.join("registry.toml");
        std::fs::write(
            &registry_cfg,
            format!(
                "instance = \"CL-DEV\"\nlisten = \"127.0.0.1:{base}\"\ndata_dir = \"{}\"\nconfig_validity_secs = 600\n",
                d.join("registry").display()
            ),
        )
        .expect("registry.toml");
        let fault = Fault {
            shim: shim.to_path_buf(),
            under: match faulty {
                "registry" => d.join("registry/access.sqlite"),
                "consumer" => d.join(format!("nodes/{CONSUMER}/data")),
                _ => d.join(format!("nodes/{PROVIDER}/data")),
            },
            control: d.join("fault-mode"),
        };
        fault.set("off");
        let registry = spawn_registry(d, (faulty == "registry").then_some(&fault));
        let backend = Proc::spawn(
            &[
                "sample-backend",
                "--listen",
                &format!("127.0.0.1:{}", base + 1),
            ],
            d.join("backend.log"),
            None,
        );
        let grpc_backend = Proc::spawn(
            &[
                "sample-grpc-backend",
                "--listen",
                &format!("127.0.0.1:{}", base + 2),
            ],
            d.join("grpc-backend.log"),
            None,
        );
        let http = reqwest::Client::new();
        wait_for(
            &http,
            &format!("http://127.0.0.1:{base}/v1/config"),
            "the registry",
        )
        .await;
        let provider = spawn_node(d, PROVIDER, (faulty == "provider").then_some(&fault));
        let consumer = spawn_node(d, CONSUMER, (faulty == "consumer").then_some(&fault));
        let f = Federation {
            dir,
            base,
            token,
            contract,
            grpc_contract,
            registry,
            _backends: [backend, grpc_backend],
            provider,
            consumer,
            http,
        };
        f.wait_ready().await;
        (f, fault)
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn provider_admin(&self) -> String {
        format!("http://127.0.0.1:{}", self.base + 5)
    }

    /// Both nodes ready and a person served through them.
    async fn wait_ready(&self) {
        wait_for(
            &self.http,
            &format!("{}/readyz", self.provider_admin()),
            "the provider node",
        )
        .await;
        let consumer_admin = format!("http://127.0.0.1:{}/readyz", self.base + 8);
        wait_for(&self.http, &consumer_admin, "the consumer node").await;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(a) = self.call().await
                && a.status == 200
            {
                return;
            }
            assert!(Instant::now() < deadline, "no exchange succeeds");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// One GET of the demo person through both nodes.
    async fn call(&self) -> reqwest::Result<Answer> {
        let resp = self
            .http
            .get(format!("http://127.0.0.1:{}{PERSON_PATH}", self.base + 7))
            .bearer_auth(&self.token)
            .header("Enlace-Client", "CL-DEV/GOV/60803000-K/renta")
            .header("Enlace-Contract", &self.contract)
            .header("Enlace-Subject", "CL-RUN:12345678-5")
            .header("Enlace-User", "funcionaria-42")
            .timeout(Duration::from_secs(20))
            .send()
            .await?;
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(String::from)
        };
        let status = resp.status().as_u16();
        let message_id = header("enlace-message-id").unwrap_or_default();
        let retry_after = header("retry-after");
        let body: serde_json::Value = resp.json().await.unwrap_or_default();
        Ok(Answer {
            status,
            message_id,
            retry_after,
            body,
        })
    }

    /// GetPerson over gRPC through both nodes: the name, or the status.
    async fn grpc_call(&self) -> Result<String, tonic::Status> {
        use enlace_proto::personas::v1::GetPersonRequest;
        use enlace_proto::personas::v1::personas_client::PersonasClient;
        let mut client = PersonasClient::connect(format!("http://127.0.0.1:{}", self.base + 7))
            .await
            .expect("the consumer node accepts h2c");
        let mut req = tonic::Request::new(GetPersonRequest {
            run: "12345678-5".into(),
        });
        for (k, v) in [
            ("authorization", format!("Bearer {}", self.token)),
            ("enlace-client", "CL-DEV/GOV/60803000-K/renta".to_string()),
            ("enlace-contract", self.grpc_contract.clone()),
            ("enlace-subject", "CL-RUN:12345678-5".to_string()),
        ] {
            req.metadata_mut()
                .insert(k, v.parse().expect("metadata value"));
        }
        Ok(client.get_person(req).await?.into_inner().name)
    }

    fn restart_provider(&mut self, fault: Option<&Fault>) {
        self.provider.kill();
        self.provider = spawn_node(self.dir.path(), PROVIDER, fault);
    }

    /// Kills the registry (a crash) and starts it again on the same files.
    async fn restart_registry(&mut self, fault: Option<&Fault>) {
        self.registry.kill();
        self.registry = spawn_registry(self.dir.path(), fault);
        let url = format!("http://127.0.0.1:{}/v1/config", self.base);
        wait_for(&self.http, &url, "the restarted registry").await;
    }

    /// Waits until the provider's outbox is empty: the registry accepted every access record.
    async fn wait_shipped(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let conn = rusqlite::Connection::open_with_flags(
                self.db(PROVIDER),
                rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
            )
            .expect("open the log");
            let queued: i64 = conn
                .query_row("SELECT COUNT(*) FROM access_queue", [], |r| r.get(0))
                .expect("count the outbox");
            if queued == 0 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{queued} access records never shipped"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `enlace registry check-access-log`, and every exchange whose access record the registry
    /// accepted is in it.
    fn check_access_log(&self, accepted: &[String], after: &str) {
        let db = self.path().join("registry/access.sqlite");
        let o = Command::new(BIN)
            .args(["registry", "check-access-log", "--db"])
            .arg(&db)
            .env("RUST_LOG", "warn")
            .output()
            .expect("enlace registry check-access-log runs");
        assert!(o.status.success(), "{after}:\n{}", text(&o));
        let conn =
            rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
                .expect("open the access log");
        for id in accepted {
            let n: i64 = conn
                .query_row(
                    "SELECT COUNT(*) FROM access_records WHERE message_id = ?1 AND node = ?2",
                    [id.as_str(), "CL-DEV/GOV/61002000-3/node/a"],
                    |r| r.get(0),
                )
                .expect("count");
            assert_eq!(n, 1, "{after}: the access record of {id}");
        }
    }

    fn db(&self, member: &str) -> PathBuf {
        self.path()
            .join(format!("nodes/{member}/data/messages.sqlite"))
    }

    /// `enlace log verify --config` (the chain, and the heads anchored in the registry).
    fn verify(&self, member: &str) -> String {
        let config = self.path().join(format!("nodes/{member}/node.toml"));
        let o = Command::new(BIN)
            .args(["log", "verify", "--config"])
            .arg(config)
            .env("RUST_LOG", "warn")
            .output()
            .expect("enlace log verify runs");
        let out = text(&o);
        assert!(o.status.success(), "log verify of {member}:\n{out}");
        out
    }

    /// The kinds of the records a node's log holds for one message id.
    fn kinds(&self, member: &str, message_id: &str) -> BTreeSet<String> {
        let conn = rusqlite::Connection::open_with_flags(
            self.db(member),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .expect("open the log");
        let mut stmt = conn
            .prepare("SELECT kind FROM records WHERE message_id = ?1")
            .expect("query");
        stmt.query_map([message_id], |r| r.get::<_, String>(0))
            .expect("rows")
            .map(|k| k.expect("kind"))
            .collect()
    }

    /// Every acknowledged exchange has its records in both logs.
    fn assert_durable(&self, acknowledged: &[String]) {
        let both = |a: &str, b: &str| BTreeSet::from([a.to_string(), b.to_string()]);
        for id in acknowledged {
            assert_eq!(
                self.kinds(CONSUMER, id),
                both("request-out", "response-in"),
                "consumer log for acknowledged {id}"
            );
            assert_eq!(
                self.kinds(PROVIDER, id),
                both("request-in", "response-out"),
                "provider log for acknowledged {id}"
            );
        }
    }
}

fn spawn_registry(dir: &Path, fault: Option<&Fault>) -> Proc {
    let config = dir.join("registry.toml");
    Proc::spawn(
        &[
            "registry",
            "serve",
            "--config",
            config.to_str().expect("path"),
        ],
        dir.join("registry.log"),
        fault,
    )
}

fn spawn_node(dir: &Path, member: &str, fault: Option<&Fault>) -> Proc {
    let config = dir.join(format!("nodes/{member}/node.toml"));
    Proc::spawn(
        &["node", "serve", "--config", config.to_str().expect("path")],
        dir.join(format!("{member}.log")),
        fault,
    )
}

async fn wait_for(http: &reqwest::Client, url: &str, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = http.get(url).send().await
            && r.status().is_success()
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what} did not get ready ({url})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

struct Answer {
    status: u16,
    message_id: String,
    retry_after: Option<String>,
    body: serde_json::Value,
}

impl Answer {
    /// A 200, or the provider's signed `log-unavailable` relayed as its refusal; anything else
    /// (a 401 `signature-invalid` above all) fails the test.
    fn is_ok_or_provider_log_unavailable(&self) -> bool {
        if self.status == 200 {
            return false;
        }
        assert_eq!(self.status, 503, "{}", self.body);
        assert_eq!(
            self.body["type"], "urn:enlace:problem:log-unavailable",
            "{}",
            self.body
        );
        assert_eq!(
            self.body["culprit"], "peer-node",
            "the consumer names the provider node: {}",
            self.body
        );
        assert_eq!(
            self.body["provider_culprit"], "this-node",
            "the provider signed its own refusal: {}",
            self.body
        );
        assert_eq!(self.retry_after.as_deref(), Some("5"));
        true
    }
}

/// Lines of a process's stderr about its log not committing (or any error or warning).
/// The lines a node wrote about the storage condition: its errors and warnings, less the ones
/// every start may print whatever the disk does (the descriptor limit lowering the connection
/// caps on a host whose limit is under the defaults).
fn condition_lines(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| {
            l.contains("ERROR")
                || l.contains("WARN")
                || l.contains("cannot commit")
                || l.contains("log-unavailable")
        })
        .filter(|l| !l.contains("enlace_limits::connections"))
        .collect()
}

#[tokio::test]
async fn a_full_disk_on_the_provider_is_refused_signed_reported_not_ready_and_recovered() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let shim = build_shim(tmp.path());
    let (mut f, fault) = Federation::start(&shim, "provider").await;

    let mut acknowledged = Vec::new();
    for _ in 0..5 {
        let a = f.call().await.expect("answer");
        assert_eq!(a.status, 200, "{}", a.body);
        acknowledged.push(a.message_id);
    }

    // The disk is full: every answer is a 200 whose records are durable, or the provider's
    // signed refusal; never an unsigned 500 that the consumer calls a bad signature.
    fault.set("enospc");
    let mut refused = 0;
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        let (a, b, c, d) = tokio::join!(f.call(), f.call(), f.call(), f.call());
        for a in [a, b, c, d] {
            let a = a.expect("answer");
            if a.is_ok_or_provider_log_unavailable() {
                refused += 1;
            } else {
                acknowledged.push(a.message_id);
            }
        }
    }
    assert!(
        refused >= 20,
        "only {refused} refusals while the disk was full"
    );
    let ready = f
        .http
        .get(format!("{}/readyz", f.provider_admin()))
        .send()
        .await
        .expect("readyz answers");
    assert_eq!(ready.status(), 503);
    let body: serde_json::Value = ready.json().await.expect("problem");
    assert_eq!(body["type"], "urn:enlace:problem:log-unavailable", "{body}");

    // The condition is said once, not per request (the summary comes at most every 10 s).
    let stderr = f.provider.stderr();
    let lines = condition_lines(&stderr);
    assert!(
        !lines.is_empty() && lines.len() <= 3,
        "{} lines about the condition for {refused} refusals:\n{}",
        lines.len(),
        lines.join("\n")
    );

    // Space returns: the node is ready again by itself, without traffic and without a restart.
    fault.set("off");
    wait_for(
        &f.http,
        &format!("{}/readyz", f.provider_admin()),
        "the provider node, again",
    )
    .await;
    for _ in 0..5 {
        let a = f.call().await.expect("answer");
        assert_eq!(a.status, 200, "{}", a.body);
        acknowledged.push(a.message_id);
    }
    assert!(
        f.provider.stderr().contains("message log commits again"),
        "the recovery is said"
    );

    f.consumer.stop();
    f.provider.stop();
    f.assert_durable(&acknowledged);
    for member in [PROVIDER, CONSUMER] {
        let out = f.verify(member);
        assert!(out.contains("the chain verifies"), "{out}");
    }
    f.registry.stop();
}

/// Tessera's fault sweep, for the message log: the 1st, 2nd, … Nth write or fsync of the
/// provider's log during a small workload fails in turn; after each, the provider is killed
/// (a crash right after the fault), started again on the same files, and its log must verify
/// with every acknowledged exchange in it.
#[tokio::test]
async fn failing_each_write_and_fsync_of_the_message_log_in_turn_loses_no_acknowledged_record() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let shim = build_shim(tmp.path());
    let (mut f, fault) = Federation::start(&shim, "provider").await;
    const WORKLOAD: usize = 2;

    // Count the writes and fsyncs of the workload first.
    let mut acknowledged = Vec::new();
    fault.set("count");
    for _ in 0..WORKLOAD {
        let a = f.call().await.expect("answer");
        assert_eq!(a.status, 200, "{}", a.body);
        acknowledged.push(a.message_id);
    }
    let ops = fault.count();
    assert!(
        ops >= 2 * WORKLOAD as u64,
        "only {ops} writes and fsyncs counted"
    );
    let ops = ops.min(24);
    eprintln!("sweeping over the first {ops} writes and fsyncs of a {WORKLOAD}-exchange workload");

    let mut refused = 0;
    for nth in 1..=ops {
        fault.set(&format!("fail-nth {nth}"));
        for _ in 0..WORKLOAD {
            let a = f.call().await.expect("answer");
            if a.is_ok_or_provider_log_unavailable() {
                refused += 1;
            } else {
                acknowledged.push(a.message_id);
            }
        }
        fault.set("off");
        f.restart_provider(Some(&fault));
        f.wait_ready().await;
        let db = f.db(PROVIDER);
        let o = Command::new(BIN)
            .args(["log", "verify", "--db"])
            .arg(&db)
            .env("RUST_LOG", "warn")
            .output()
            .expect("enlace log verify runs");
        assert!(o.status.success(), "after failing op {nth}:\n{}", text(&o));
        f.assert_durable(&acknowledged);
    }
    assert!(refused > 0, "no failed operation was ever refused");
    eprintln!(
        "{refused} exchanges refused, {} acknowledged and durable",
        acknowledged.len()
    );

    f.consumer.stop();
    f.provider.stop();
    for member in [PROVIDER, CONSUMER] {
        let out = f.verify(member);
        assert!(out.contains("the chain verifies"), "{out}");
    }
    f.registry.stop();
}

/// The same sweep for the registry's access log: each of the first writes and fsyncs of
/// `access.sqlite` (ingestion, tree heads, anchored log heads) fails in turn; the registry
/// refuses with `log-unavailable` and stays up, the provider's outbox keeps the records and
/// sends them again; after each, the registry is killed and started again, and its access log
/// must be consistent (`enlace registry check-access-log`) with every accepted record in it.
#[tokio::test]
async fn failing_each_write_and_fsync_of_the_access_log_in_turn_loses_no_accepted_record() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let shim = build_shim(tmp.path());
    let (mut f, fault) = Federation::start(&shim, "registry").await;
    const WORKLOAD: usize = 2;

    let mut accepted = Vec::new();
    fault.set("count");
    for _ in 0..WORKLOAD {
        let a = f.call().await.expect("answer");
        assert_eq!(a.status, 200, "{}", a.body);
        accepted.push(a.message_id);
    }
    f.wait_shipped().await;
    let ops = fault.count();
    assert!(ops >= 2, "only {ops} writes and fsyncs counted");
    let ops = ops.min(16);
    eprintln!("sweeping over the first {ops} writes and fsyncs of the access log");

    for nth in 1..=ops {
        fault.set(&format!("fail-nth {nth}"));
        for _ in 0..WORKLOAD {
            let a = f.call().await.expect("answer");
            assert_eq!(
                a.status, 200,
                "the nodes do not need the registry's disk: {}",
                a.body
            );
            accepted.push(a.message_id);
        }
        f.wait_shipped().await;
        fault.set("off");
        f.restart_registry(Some(&fault)).await;
        f.check_access_log(&accepted, &format!("after failing op {nth}"));
    }
    let shipper = f.provider.stderr();
    assert!(
        shipper.contains("log-unavailable"),
        "the registry refused with log-unavailable at least once:\n{shipper}"
    );
    let registry = f.registry.stderr();
    assert!(!registry.contains("panicked"), "{registry}");
    f.consumer.stop();
    f.provider.stop();
    f.registry.stop();
    f.check_access_log(&accepted, "at the end");
}

/// `enlace log verify` on the provider's log, altered three ways (each on a copy of the log as
/// it was): a flipped byte and a deleted record are located and named, and a tail cut together
/// with the node's own heads is found against the head anchored in the registry, which
/// `--db` alone (the file and its own heads) cannot see.
#[tokio::test]
async fn log_verify_locates_a_flipped_byte_a_deleted_record_and_a_truncated_tail() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let shim = build_shim(tmp.path());
    let (mut f, _) = Federation::start(&shim, "none").await;
    for _ in 0..4 {
        let a = f.call().await.expect("answer");
        assert_eq!(a.status, 200, "{}", a.body);
    }
    // A stopping node anchors its head in the registry.
    f.provider.stop();
    let db = f.db(PROVIDER);
    let pristine = tmp.path().join("pristine.sqlite");
    rusqlite::Connection::open(&db)
        .and_then(|c| c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())))
        .expect("everything in the database file");
    std::fs::copy(&db, &pristine).expect("copy the log");
    let restore = || {
        for suffix in ["-wal", "-shm"] {
            let mut side = db.clone().into_os_string();
            side.push(suffix);
            let _ = std::fs::remove_file(side);
        }
        std::fs::copy(&pristine, &db).expect("restore the log");
    };
    let verify = |args: &[&str]| {
        let o = Command::new(BIN)
            .args(["log", "verify"])
            .args(args)
            .env("RUST_LOG", "warn")
            .output()
            .expect("enlace log verify runs");
        (o.status.success(), text(&o))
    };
    let config = f.path().join(format!("nodes/{PROVIDER}/node.toml"));
    let config = config.to_str().expect("path");
    let (ok, out) = verify(&["--config", config]);
    assert!(ok, "{out}");
    let conn = || rusqlite::Connection::open(&db).expect("open the log");
    let message_id = |seq: i64| -> String {
        conn()
            .query_row(
                "SELECT message_id FROM records WHERE seq = ?1",
                [seq],
                |r| r.get(0),
            )
            .expect("a record")
    };

    // One flipped byte in record 3.
    let c = conn();
    let mut bytes: Vec<u8> = c
        .query_row("SELECT record FROM records WHERE seq = 3", [], |r| r.get(0))
        .expect("record 3");
    bytes[20] ^= 0x01;
    c.execute("UPDATE records SET record = ?1 WHERE seq = 3", [&bytes])
        .expect("flip");
    drop(c);
    let (ok, out) = verify(&["--config", config]);
    assert!(!ok, "{out}");
    assert!(
        out.contains(&format!(
            "BROKEN at record 3: record 3 (message {}",
            message_id(3)
        )),
        "{out}"
    );
    restore();

    // Record 4 deleted.
    let after = message_id(5);
    conn()
        .execute("DELETE FROM records WHERE seq = 4", [])
        .expect("delete");
    let (ok, out) = verify(&["--config", config]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("BROKEN at record 4: record 4: missing"),
        "{out}"
    );
    assert!(out.contains(&format!("message {after}")), "{out}");
    restore();

    // The tail cut after record 2, and the node's own heads with it.
    let c = conn();
    let last: i64 = c
        .query_row("SELECT MAX(seq) FROM records", [], |r| r.get(0))
        .expect("last seq");
    c.execute("DELETE FROM records WHERE seq > 2", [])
        .expect("cut");
    c.execute("DELETE FROM anchors", [])
        .expect("no local heads");
    drop(c);
    let (ok, out) = verify(&["--db", db.to_str().expect("path")]);
    assert!(ok, "the file alone looks whole:\n{out}");
    let (ok, out) = verify(&["--config", config]);
    assert!(!ok, "{out}");
    assert!(
        out.contains(&format!(
            "signed head at seq {last}: the log ends at seq 2: anchored records are missing (records 3 to {last}"
        )),
        "{out}"
    );

    f.consumer.stop();
    f.registry.stop();
}

/// The provider's full disk over gRPC: every call is answered, or refused with UNAVAILABLE and
/// the provider's signed `log-unavailable` in the trailers (never UNAUTHENTICATED for a missing
/// signature); the node recovers without a restart and both logs verify.
#[tokio::test]
async fn a_full_disk_on_the_provider_refuses_grpc_calls_with_a_signed_unavailable() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let shim = build_shim(tmp.path());
    let (mut f, fault) = Federation::start(&shim, "provider").await;
    f.grpc_call().await.expect("GetPerson through both nodes");

    fault.set("enospc");
    let mut refused = 0;
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        let Err(status) = f.grpc_call().await else {
            continue;
        };
        let meta = |k: &str| {
            status
                .metadata()
                .get(k)
                .and_then(|v| v.to_str().ok())
                .map(String::from)
        };
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
        assert_eq!(
            meta("enlace-problem-type").as_deref(),
            Some("urn:enlace:problem:log-unavailable"),
            "{status:?}"
        );
        assert_eq!(
            meta("enlace-error").as_deref(),
            Some("peer-node"),
            "{status:?}"
        );
        refused += 1;
    }
    assert!(
        refused >= 5,
        "only {refused} refusals while the disk was full"
    );
    let lines = condition_lines(&f.provider.stderr()).len();
    assert!(lines <= 3, "{lines} lines about the condition");

    fault.set("off");
    wait_for(
        &f.http,
        &format!("{}/readyz", f.provider_admin()),
        "the provider node, again",
    )
    .await;
    f.grpc_call().await.expect("GetPerson after space returned");
    f.consumer.stop();
    f.provider.stop();
    for member in [PROVIDER, CONSUMER] {
        let out = f.verify(member);
        assert!(out.contains("the chain verifies"), "{out}");
    }
    f.registry.stop();
}

/// The consumer's own full disk: it answers its backend `log-unavailable` as its own
/// (`culprit: this-node`), never a 200 it has not recorded, reports not ready, and recovers.
#[tokio::test]
async fn a_full_disk_on_the_consumer_answers_its_backend_log_unavailable_as_its_own() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let shim = build_shim(tmp.path());
    let (mut f, fault) = Federation::start(&shim, "consumer").await;
    let consumer_admin = format!("http://127.0.0.1:{}/readyz", f.base + 8);
    let mut acknowledged = Vec::new();

    fault.set("enospc");
    let mut refused = 0;
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        let a = f.call().await.expect("answer");
        if a.status == 200 {
            acknowledged.push(a.message_id);
            continue;
        }
        assert_eq!(a.status, 503, "{}", a.body);
        assert_eq!(
            a.body["type"], "urn:enlace:problem:log-unavailable",
            "{}",
            a.body
        );
        assert_eq!(a.body["culprit"], "this-node", "{}", a.body);
        assert_eq!(a.retry_after.as_deref(), Some("5"));
        refused += 1;
    }
    assert!(
        refused >= 5,
        "only {refused} refusals while the disk was full"
    );
    let ready = f.http.get(&consumer_admin).send().await.expect("readyz");
    assert_eq!(ready.status(), 503);
    let lines = condition_lines(&f.consumer.stderr()).len();
    assert!(lines <= 3, "{lines} lines about the condition");

    fault.set("off");
    wait_for(&f.http, &consumer_admin, "the consumer node, again").await;
    let a = f.call().await.expect("answer");
    assert_eq!(a.status, 200, "{}", a.body);
    acknowledged.push(a.message_id);
    f.consumer.stop();
    f.provider.stop();
    f.assert_durable(&acknowledged);
    for member in [PROVIDER, CONSUMER] {
        let out = f.verify(member);
        assert!(out.contains("the chain verifies"), "{out}");
    }
    f.registry.stop();
}

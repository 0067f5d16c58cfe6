//! Process faults, with real processes: the registry, the sample backends and both nodes run as
//! `enlace` child processes on loopback ports, and are killed with SIGKILL under load from
//! concurrent clients. Every exchange a client saw answered 200 with a message id must be in
//! both nodes' message logs and its access record in the registry exactly once; the registry
//! down, the nodes relay on the cached signed configuration until it expires and then fail
//! closed, and recover by themselves; the provider node down, the consumer answers a problem
//! naming the peer within a second. A flood of idle connections to the consumer node leaves it
//! no larger once they close.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use enlace_registry::demo;

mod support;

use support::{BIN, free_base, text};

/// The shortest validity the registry accepts (`config_validity_secs`), reissued every 10 s.
const CONFIG_VALIDITY_SECS: u64 = 30;

/// A child process, killed (SIGKILL) if still running when dropped.
struct Proc {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn spawn(name: &'static str, args: &[&str], log: &Path) -> Proc {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("log file");
        let child = Command::new(BIN)
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("{name} starts: {e}"));
        Proc {
            name,
            child,
            log: log.to_path_buf(),
        }
    }

    /// SIGKILL, as a crash or the OOM killer: no draining, no last anchor.
    fn kill9(&mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reaped");
    }

    /// SIGINT, as Ctrl-C: the process drains and exits by itself.
    async fn stop(&mut self) {
        let sent = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(sent.success());
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                assert!(status.success(), "{} exited with {status}", self.name);
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not stop on SIGINT:\n{}",
                self.name,
                self.tail()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The end of the process's log, for a failure message.
    fn tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// One node of the demo federation, as `enlace up` wrote it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Role {
    /// The Registro Civil node, in front of the sample backend.
    Provider,
    /// The SII node, where the clients call.
    Consumer,
}

impl Role {
    fn member_dir(self) -> &'static str {
        match self {
            Role::Provider => "61002000-3",
            Role::Consumer => "60803000-K",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Role::Provider => "provider node",
            Role::Consumer => "consumer node",
        }
    }

    fn node_id(self) -> &'static str {
        match self {
            Role::Provider => demo::PROVIDER_NODE,
            Role::Consumer => demo::CONSUMER_NODE,
        }
    }
}

/// What the clients need to call through the consumer node.
#[derive(Clone)]
struct Target {
    url: String,
    token: String,
    contract: String,
    /// The consumer node's listener, for h2c gRPC calls.
    grpc_url: String,
    grpc_contract: String,
}

/// Where the parts of a seeded federation live: its directory and its nine ports.
struct Layout {
    dir: PathBuf,
    base: u16,
}

impl Layout {
    fn config(&self, role: Role) -> PathBuf {
        self.dir
            .join("nodes")
            .join(role.member_dir())
            .join("node.toml")
    }

    fn message_log(&self, role: Role) -> PathBuf {
        self.dir
            .join("nodes")
            .join(role.member_dir())
            .join("data/messages.sqlite")
    }

    fn readyz(&self, role: Role) -> String {
        let port = match role {
            Role::Provider => self.base + 5,
            Role::Consumer => self.base + 8,
        };
        format!("http://127.0.0.1:{port}/readyz")
    }

    fn registry_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.base)
    }

    /// The port the provider node listens on for peers.
    fn provider_port(&self) -> u16 {
        self.base + 3
    }

    /// Starts the registry (on its data directory, kept across restarts) and waits until it
    /// serves its configuration.
    async fn start_registry(&self) -> Proc {
        let config = self.dir.join("registry.toml");
        let mut p = Proc::spawn(
            "registry",
            &["registry", "serve", "--config", config.to_str().unwrap()],
            &self.dir.join("registry.log"),
        );
        let url = format!("{}/v1/config?after=0&wait=0", self.registry_url());
        wait_200(&mut p, &url).await;
        p
    }

    /// Starts a node (on its data directory, kept across restarts) and waits until it is ready.
    async fn start_node(&self, role: Role) -> Proc {
        let config = self.config(role);
        let mut p = Proc::spawn(
            role.name(),
            &["node", "serve", "--config", config.to_str().unwrap()],
            &self.dir.join(format!("{}.log", role.member_dir())),
        );
        wait_200(&mut p, &self.readyz(role)).await;
        p
    }
}

/// Polls `url` until it answers 200, while `p` runs.
async fn wait_200(p: &mut Proc, url: &str) {
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = http.get(url).send().await
            && r.status() == 200
        {
            return;
        }
        assert!(
            p.child.try_wait().unwrap().is_none() && Instant::now() < deadline,
            "the {} did not get ready:\n{}",
            p.name,
            p.tail()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The demo federation, each part its own process, seeded by a first `enlace up`.
struct Fed {
    at: Layout,
    target: Target,
    registry: Proc,
    _backends: [Proc; 2],
    provider: Proc,
    consumer: Proc,
    /// Last: removed once every process above is killed.
    _dir: tempfile::TempDir,
}

impl Fed {
    async fn start() -> Fed {
        // reqwest is built without a default TLS provider in this workspace.
        enlace_certs::install_crypto_provider();
        let dir = tempfile::tempdir().expect("temp dir");
        let at = Layout {
            dir: dir.path().to_path_buf(),
            base: free_base(),
        };
        let base = at.base;
        seed_with_up(&at.dir, base);
        let secrets: serde_json::Value =
            serde_json::from_slice(&std::fs::read(at.dir.join("demo.json")).unwrap()).unwrap();
        std::fs::write(
            at.dir.join("registry.toml"),
            format!(
                "instance = \"{}\"\nlisten = \"127.0.0.1:{base}\"\ndata_dir = \"{}\"\nconfig_validity_secs = {CONFIG_VALIDITY_SECS}\n",
                demo::INSTANCE,
                at.dir.join("registry").display()
            ),
        )
        .unwrap();
        let backend = Proc::spawn(
            "sample backend",
            &[
                "sample-backend",
                "--listen",
                &format!("127.0.0.1:{}", base + 1),
            ],
            &at.dir.join("backend.log"),
        );
        let grpc_backend = Proc::spawn(
            "sample gRPC backend",
            &[
                "sample-grpc-backend",
                "--listen",
                &format!("127.0.0.1:{}", base + 2),
            ],
            &at.dir.join("grpc-backend.log"),
        );
        let registry = at.start_registry().await;
        let provider = at.start_node(Role::Provider).await;
        let consumer = at.start_node(Role::Consumer).await;
        Fed {
            target: Target {
                url: format!(
                    "http://127.0.0.1:{}/r1/{}/v1/persons/12345678-5",
                    base + 7,
                    demo::PERSONAS
                ),
                token: secrets["renta_token"].as_str().unwrap().to_string(),
                contract: secrets["demo"]["contract"].as_str().unwrap().to_string(),
                grpc_url: format!("http://127.0.0.1:{}", base + 7),
                grpc_contract: secrets["demo"]["grpc_contract"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            },
            _dir: dir,
            at,
            registry,
            _backends: [backend, grpc_backend],
            provider,
            consumer,
        }
    }

    fn node(&mut self, role: Role) -> &mut Proc {
        match role {
            Role::Provider => &mut self.provider,
            Role::Consumer => &mut self.consumer,
        }
    }

    async fn restart_node(&mut self, role: Role) {
        let p = self.at.start_node(role).await;
        *self.node(role) = p;
    }

    async fn restart_registry(&mut self) {
        self.registry = self.at.start_registry().await;
    }

    /// `enlace log verify --config` of a node (the registry must be up: it holds the anchors).
    fn log_verify(&self, role: Role) {
        let out = Command::new(BIN)
            .args(["log", "verify", "--config"])
            .arg(self.at.config(role))
            .env("RUST_LOG", "warn")
            .output()
            .expect("enlace log verify runs");
        let text = text(&out);
        assert!(
            out.status.success() && text.contains("the chain verifies"),
            "log verify of the {role:?} node failed:\n{text}"
        );
    }

    /// Waits until the provider node has shipped every queued access record to the registry.
    /// The shipper backs off up to 60 s while the registry is down, so this may take as long.
    async fn wait_access_queue_empty(&self) {
        let deadline = Instant::now() + Duration::from_secs(75);
        loop {
            let pending: i64 = read_only(&self.at.message_log(Role::Provider))
                .query_row("SELECT COUNT(*) FROM access_queue", [], |r| r.get(0))
                .unwrap();
            if pending == 0 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{pending} access record(s) still queued at the provider node:\n{}",
                self.provider.tail()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Seeds a federation in `dir` with `enlace up`, and stops it once it is ready: the registry's
/// data, the nodes' keys, certificates and `node.toml` files, and `demo.json` stay.
fn seed_with_up(dir: &Path, base: u16) {
    let mut child = Command::new(BIN)
        .args(["up", "--dir"])
        .arg(dir)
        .args(["--base-port", &base.to_string()])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("enlace up starts");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let ready = lines
        .by_ref()
        .map_while(Result::ok)
        .any(|l| l.contains("Press Ctrl-C to stop."));
    assert!(ready, "enlace up did not get ready");
    // Keep reading: `enlace up` prints as it stops, and a closed pipe would fail it.
    std::thread::spawn(move || lines.for_each(drop));
    let sent = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(sent.success());
    let status = child.wait().expect("enlace up exits");
    assert!(status.success(), "enlace up exited with {status}");
}

fn read_only(path: &Path) -> rusqlite::Connection {
    rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// What one client saw of one exchange: the HTTP status (0: no answer at all); for a gRPC call
/// 200 when it succeeded, else 600 plus the gRPC code.
#[derive(Debug, Clone)]
struct Outcome {
    grpc: bool,
    status: u16,
    message_id: Option<String>,
    problem: Option<serde_json::Value>,
    elapsed: Duration,
}

impl Outcome {
    fn problem_type(&self) -> &str {
        self.problem
            .as_ref()
            .and_then(|p| p["type"].as_str())
            .unwrap_or("")
    }

    fn culprit(&self) -> &str {
        self.problem
            .as_ref()
            .and_then(|p| p["culprit"].as_str())
            .unwrap_or("")
    }
}

fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("client")
}

/// One REST exchange through the consumer node: the demo person, under the demo contract.
async fn exchange(http: &reqwest::Client, t: &Target) -> Outcome {
    let start = Instant::now();
    let sent = http
        .get(&t.url)
        .header("authorization", format!("Bearer {}", t.token))
        .header("enlace-client", demo::CONSUMER_SUBSYSTEM)
        .header("enlace-contract", &t.contract)
        .header("enlace-subject", demo::PERSON)
        .send()
        .await;
    let resp = match sent {
        Ok(r) => r,
        Err(_) => {
            return Outcome {
                grpc: false,
                status: 0,
                message_id: None,
                problem: None,
                elapsed: start.elapsed(),
            };
        }
    };
    let status = resp.status().as_u16();
    let message_id = resp
        .headers()
        .get("enlace-message-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = resp.bytes().await;
    let elapsed = start.elapsed();
    let Ok(body) = body else {
        // The head arrived but not the whole body: the client did not get an answer.
        return Outcome {
            grpc: false,
            status: 0,
            message_id: None,
            problem: None,
            elapsed,
        };
    };
    let problem = if status == 200 {
        None
    } else {
        serde_json::from_slice(&body).ok()
    };
    Outcome {
        grpc: false,
        status,
        message_id,
        problem,
        elapsed,
    }
}

/// An h2c channel to the consumer node, (re)connecting when a call needs it.
fn grpc_channel(t: &Target) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(t.grpc_url.clone())
        .expect("endpoint")
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(20))
        .connect_lazy()
}

/// One unary gRPC call (GetPerson) through the consumer node, under the demo gRPC contract.
async fn grpc_exchange(channel: &tonic::transport::Channel, t: &Target) -> Outcome {
    use enlace_proto::personas::v1::GetPersonRequest;
    use enlace_proto::personas::v1::personas_client::PersonasClient;
    let start = Instant::now();
    let mut req = tonic::Request::new(GetPersonRequest {
        run: "12345678-5".into(),
    });
    for (k, v) in [
        ("authorization", format!("Bearer {}", t.token)),
        ("enlace-client", demo::CONSUMER_SUBSYSTEM.to_string()),
        ("enlace-contract", t.grpc_contract.clone()),
        ("enlace-subject", demo::PERSON.to_string()),
    ] {
        req.metadata_mut()
            .insert(k, v.parse().expect("metadata value"));
    }
    let message_id = |md: &tonic::metadata::MetadataMap| {
        md.get("enlace-message-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    match PersonasClient::new(channel.clone()).get_person(req).await {
        Ok(resp) => Outcome {
            grpc: true,
            status: 200,
            message_id: message_id(resp.metadata()),
            problem: None,
            elapsed: start.elapsed(),
        },
        Err(status) => Outcome {
            grpc: true,
            status: 600 + status.code() as u16,
            message_id: message_id(status.metadata()),
            problem: status
                .metadata()
                .get("enlace-problem-type")
                .and_then(|v| v.to_str().ok())
                .map(|t| serde_json::json!({ "type": t })),
            elapsed: start.elapsed(),
        },
    }
}

/// The first exchange through freshly started nodes, retried for a while: on a loaded machine
/// the first dial of a peer (a debug build's TLS handshake) may exceed the 1 s connect timeout.
async fn warm_up(http: &reqwest::Client, t: &Target) -> Outcome {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let o = exchange(http, t).await;
        if o.status == 200 {
            return o;
        }
        assert!(Instant::now() < deadline, "no first exchange: {o:?}");
        eprintln!("first exchange not answered yet: {o:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Concurrent clients calling through the consumer node until stopped, each recording every
/// outcome.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    tasks: Vec<tokio::task::JoinHandle<Vec<Outcome>>>,
}

impl Load {
    /// `rest` REST clients and `grpc` gRPC ones (each on its own HTTP/2 connection).
    fn start(target: &Target, rest: usize, grpc: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let tasks = (0..rest + grpc)
            .map(|i| {
                let (stop, ok, t) = (stop.clone(), ok.clone(), target.clone());
                tokio::spawn(async move {
                    let http = http_client();
                    let channel = grpc_channel(&t);
                    let mut seen = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        let o = if i < rest {
                            exchange(&http, &t).await
                        } else {
                            grpc_exchange(&channel, &t).await
                        };
                        if o.status == 200 {
                            ok.fetch_add(1, Ordering::Relaxed);
                        } else {
                            // Down or refusing: do not spin.
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        seen.push(o);
                    }
                    seen
                })
            })
            .collect();
        Load { stop, ok, tasks }
    }

    /// Waits until `more` further exchanges were answered 200.
    async fn wait_ok(&self, more: usize, what: &str) {
        let target = self.ok.load(Ordering::Relaxed) + more;
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.ok.load(Ordering::Relaxed) < target {
            assert!(
                Instant::now() < deadline,
                "no {more} exchanges answered 200 {what}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn finish(self) -> Vec<Outcome> {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = Vec::new();
        for t in self.tasks {
            all.extend(t.await.expect("client task"));
        }
        all
    }
}

/// The message ids of a node's log records of `kind`.
fn logged(db: &Path, kind: &str) -> std::collections::HashSet<String> {
    let conn = read_only(db);
    let mut stmt = conn
        .prepare("SELECT message_id FROM records WHERE kind = ?1")
        .unwrap();
    stmt.query_map([kind], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_of_each_process_under_load_loses_no_answered_exchange() {
    let mut fed = Fed::start().await;
    let load = Load::start(&fed.target, 4, 2);
    load.wait_ok(30, "before any kill").await;

    for role in [Role::Provider, Role::Consumer] {
        fed.node(role).kill9();
        tokio::time::sleep(Duration::from_millis(300)).await;
        fed.restart_node(role).await;
        load.wait_ok(30, &format!("after the {role:?} node's restart"))
            .await;
    }
    fed.registry.kill9();
    // The nodes go on relaying on the cached configuration; the access records queue up.
    load.wait_ok(30, "with the registry down").await;
    fed.restart_registry().await;
    load.wait_ok(30, "after the registry's restart").await;
    let outcomes = load.finish().await;

    let answered: Vec<&str> = outcomes
        .iter()
        .filter(|o| o.status == 200)
        .map(|o| {
            o.message_id
                .as_deref()
                .expect("a 200 carries Enlace-Message-Id")
        })
        .collect();
    let mut by_status = std::collections::BTreeMap::new();
    for o in &outcomes {
        *by_status
            .entry((o.grpc, o.status, o.problem_type().to_string()))
            .or_insert(0) += 1;
    }
    eprintln!("outcomes (grpc, status, problem type): {by_status:?}");
    // No client hung through the kills: each got an answer (or a closed connection) within the
    // consumer's wait for a peer (upstream_timeout_ms + 2 s).
    let slowest = outcomes.iter().map(|o| o.elapsed).max().unwrap_or_default();
    assert!(
        slowest < Duration::from_secs(12),
        "a client waited {slowest:?}"
    );
    let unique: std::collections::HashSet<&str> = answered.iter().copied().collect();
    assert_eq!(unique.len(), answered.len(), "a message id answered twice");
    assert!(answered.len() >= 150, "only {} answered", answered.len());
    let grpc_ok = outcomes
        .iter()
        .filter(|o| o.grpc && o.status == 200)
        .count();
    assert!(grpc_ok >= 20, "only {grpc_ok} gRPC calls answered");

    fed.wait_access_queue_empty().await;
    fed.provider.stop().await;
    fed.consumer.stop().await;
    fed.log_verify(Role::Provider);
    fed.log_verify(Role::Consumer);
    fed.registry.stop().await;

    let consumer_log = logged(&fed.at.message_log(Role::Consumer), "response-in");
    let provider_log = logged(&fed.at.message_log(Role::Provider), "response-out");
    let lost_c: Vec<&&str> = answered
        .iter()
        .filter(|m| !consumer_log.contains(**m))
        .collect();
    let lost_p: Vec<&&str> = answered
        .iter()
        .filter(|m| !provider_log.contains(**m))
        .collect();
    assert!(
        lost_c.is_empty() && lost_p.is_empty(),
        "of {} exchanges answered 200, {} are missing from the consumer's log and {} from the provider's: {lost_c:?} {lost_p:?}",
        answered.len(),
        lost_c.len(),
        lost_p.len()
    );

    assert_one_access_record_each(&fed.at, &answered);
}

/// Each answered exchange has exactly one access record in the registry (stopped), from the
/// provider node, and no message id has two.
fn assert_one_access_record_each(at: &Layout, answered: &[&str]) {
    let access = read_only(&at.dir.join("registry/access.sqlite"));
    let mut stmt = access
        .prepare("SELECT COUNT(*) FROM access_records WHERE message_id = ?1 AND node = ?2")
        .unwrap();
    for m in answered {
        let n: i64 = stmt
            .query_row([*m, Role::Provider.node_id()], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 1, "access records of {m} in the registry");
    }
    let twice: i64 = access
        .query_row(
            "SELECT COUNT(*) FROM (SELECT message_id FROM access_records GROUP BY message_id HAVING COUNT(*) > 1)",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(twice, 0, "message ids with more than one access record");
}

/// When the node's current configuration expires, as its `/readyz` says.
async fn config_expiry(at: &Layout, role: Role) -> time::OffsetDateTime {
    let ready: serde_json::Value = reqwest::get(at.readyz(role))
        .await
        .expect("readyz answers")
        .json()
        .await
        .expect("readyz is JSON");
    let expires = ready["expires_at"].as_str().expect("expires_at");
    time::OffsetDateTime::parse(expires, &time::format_description::well_known::Rfc3339)
        .expect("RFC 3339")
}

/// Waits until the node follows a configuration of the registry's short validity (it may
/// have started on the cached one of `enlace up`, valid ten minutes).
async fn wait_short_configuration(at: &Layout, role: Role) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let longest = time::Duration::seconds(CONFIG_VALIDITY_SECS as i64 + 2);
    while config_expiry(at, role).await > time::OffsetDateTime::now_utc() + longest {
        assert!(
            Instant::now() < deadline,
            "the {role:?} node kept its long configuration"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn registry_down_relays_on_the_cached_configuration_until_it_expires_then_fails_closed_and_recovers()
 {
    let mut fed = Fed::start().await;
    wait_short_configuration(&fed.at, Role::Provider).await;
    wait_short_configuration(&fed.at, Role::Consumer).await;
    let http = http_client();
    let mut answered = Vec::new();
    answered.extend(warm_up(&http, &fed.target).await.message_id);

    fed.registry.kill9();
    let killed = Instant::now();
    // Nothing can replace the configurations now; the first to expire decides.
    let expires = config_expiry(&fed.at, Role::Consumer)
        .await
        .min(config_expiry(&fed.at, Role::Provider).await);
    let mut last_ok = None;
    let refused = loop {
        let o = exchange(&http, &fed.target).await;
        if o.status != 200 {
            break o;
        }
        answered.extend(o.message_id);
        last_ok = Some(Instant::now());
        assert!(
            killed.elapsed() < Duration::from_secs(CONFIG_VALIDITY_SECS + 5),
            "still relaying {:?} after the registry went down, on a configuration that expired at {expires}",
            killed.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let refused_at = time::OffsetDateTime::now_utc();
    // Traffic went on: the configuration was reissued every 10 s, so it had at least 20 s left.
    let relayed_for = last_ok.expect("relayed once the registry was down") - killed;
    assert!(
        relayed_for >= Duration::from_secs(CONFIG_VALIDITY_SECS - 12),
        "relayed only {relayed_for:?} on the cached configuration"
    );
    // Then it failed closed, at the expiry and not before, with a problem saying so.
    assert!(
        refused_at >= expires - time::Duration::milliseconds(300)
            && refused_at <= expires + time::Duration::seconds(2),
        "refused at {refused_at}, the configuration expires at {expires}: {refused:?}"
    );
    assert_eq!(refused.status, 503, "{refused:?}");
    assert_eq!(
        refused.problem_type(),
        "urn:enlace:problem:configuration-expired",
        "{refused:?}"
    );
    // Both nodes follow the same signed configuration, so they hold the same expiry: the node
    // that reads its configuration after that instant refuses. Usually the consumer node
    // (culprit `this-node`); when the expiry falls between the consumer's check and the
    // provider's, the provider node's signed refusal is relayed (culprit `peer-node`, and the
    // provider names itself). Either way the node that refused says its configuration expired.
    let provider_culprit = refused.problem.as_ref().unwrap()["provider_culprit"]
        .as_str()
        .unwrap_or("");
    assert!(
        refused.culprit() == "this-node"
            || (refused.culprit() == "peer-node" && provider_culprit == "this-node"),
        "{refused:?}"
    );
    let detail = refused.problem.as_ref().unwrap()["detail"]
        .as_str()
        .unwrap_or("");
    assert!(detail.contains("registry"), "{refused:?}");
    // And it stays closed while the registry is down.
    let again = exchange(&http, &fed.target).await;
    assert_eq!(again.status, 503, "{again:?}");

    // The registry back, the nodes follow it again by themselves (no restart).
    let (provider_pid, consumer_pid) = (fed.provider.child.id(), fed.consumer.child.id());
    fed.restart_registry().await;
    let back = Instant::now();
    loop {
        let o = exchange(&http, &fed.target).await;
        if o.status == 200 {
            answered.extend(o.message_id);
            break;
        }
        // Failed closed, the nodes retry the registry every second (not every 10 s, as
        // while their cached copy is still valid).
        assert!(
            back.elapsed() < Duration::from_millis(2500),
            "not recovered {:?} after the registry returned: {o:?}",
            back.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("recovered {:?} after the registry returned", back.elapsed());
    assert!(fed.provider.child.try_wait().unwrap().is_none());
    assert!(fed.consumer.child.try_wait().unwrap().is_none());
    assert_eq!(
        (fed.provider.child.id(), fed.consumer.child.id()),
        (provider_pid, consumer_pid)
    );

    // The access records queued while the registry was down reach it, once each.
    fed.wait_access_queue_empty().await;
    fed.registry.stop().await;
    let answered: Vec<&str> = answered.iter().map(String::as_str).collect();
    assert!(answered.len() >= 50, "only {} answered", answered.len());
    assert_one_access_record_each(&fed.at, &answered);
}

#[tokio::test(flavor = "multi_thread")]
async fn provider_node_down_the_consumer_answers_a_problem_naming_the_peer_within_a_second() {
    let mut fed = Fed::start().await;
    let http = http_client();
    // A pooled connection to the provider node exists, and then dies with it.
    warm_up(&http, &fed.target).await;
    fed.provider.kill9();
    for _ in 0..3 {
        let o = exchange(&http, &fed.target).await;
        assert_eq!(o.status, 502, "{o:?}");
        assert_eq!(
            o.problem_type(),
            "urn:enlace:problem:peer-unreachable",
            "{o:?}"
        );
        assert_eq!(o.culprit(), "peer-node", "{o:?}");
        assert!(o.elapsed < Duration::from_secs(1), "{o:?}");
    }
    // The same over gRPC: UNAVAILABLE, with the problem type in the trailers.
    let channel = grpc_channel(&fed.target);
    let o = grpc_exchange(&channel, &fed.target).await;
    assert_eq!(o.status, 600 + tonic::Code::Unavailable as u16, "{o:?}");
    assert_eq!(
        o.problem_type(),
        "urn:enlace:problem:peer-unreachable",
        "{o:?}"
    );
    assert!(o.elapsed < Duration::from_secs(1), "{o:?}");

    // The provider's host accepts connections in the kernel but nothing ever answers (a hung
    // process, a blackhole): the consumer gives up after its connect timeout (1 s by default).
    let hole = std::net::TcpListener::bind(("127.0.0.1", fed.at.provider_port()))
        .expect("the provider node's port is free");
    for _ in 0..2 {
        let o = exchange(&http, &fed.target).await;
        assert_eq!(o.status, 504, "{o:?}");
        assert_eq!(o.problem_type(), "urn:enlace:problem:peer-timeout", "{o:?}");
        assert_eq!(o.culprit(), "peer-node", "{o:?}");
        assert!(
            o.elapsed < Duration::from_millis(1500),
            "answered after {:?}: {o:?}",
            o.elapsed
        );
    }
    let o = grpc_exchange(&channel, &fed.target).await;
    assert_eq!(
        o.status,
        600 + tonic::Code::DeadlineExceeded as u16,
        "{o:?}"
    );
    assert_eq!(o.problem_type(), "urn:enlace:problem:peer-timeout", "{o:?}");
    assert!(o.elapsed < Duration::from_millis(1500), "{o:?}");
    drop(hole);

    fed.restart_node(Role::Provider).await;
    let o = exchange(&http, &fed.target).await;
    assert_eq!(o.status, 200, "{o:?}");
}

/// The anonymous memory (`RssAnon`, kB) of a running process, from `/proc`.
fn rss_anon_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("RssAnon in /proc/<pid>/status")
}

/// `n` connections to `port`, each with one request answered and then left open (idle), from
/// four loopback addresses (127.0.0.2 to .5) as from four backend hosts: one source alone may
/// hold only an eighth of a listener's connections.
async fn idle_connections(port: u16, n: usize) -> Vec<tokio::net::TcpStream> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut open = Vec::with_capacity(n);
    for i in 0..n {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket
            .bind(std::net::SocketAddr::from((
                [127, 0, 0, 2 + (i % 4) as u8],
                0,
            )))
            .unwrap();
        let mut s = socket
            .connect(std::net::SocketAddr::from(([127, 0, 0, 1], port)))
            .await
            .expect("the consumer node accepts");
        s.write_all(b"GET /healthz HTTP/1.1\r\nhost: node\r\n\r\n")
            .await
            .unwrap();
        open.push(s);
    }
    for s in &mut open {
        let mut head = [0u8; 12];
        tokio::time::timeout(Duration::from_secs(20), s.read_exact(&mut head))
            .await
            .expect("answered in time")
            .expect("answered");
        assert!(head.starts_with(b"HTTP/1.1 "), "{head:?}");
    }
    open
}

/// Idle connections cost the node memory while they are open, and it is given back once they
/// close: a flood of them (each sending one request, then nothing) leaves the node no larger
/// than before, round after round, instead of holding its peak for good.
#[tokio::test(flavor = "multi_thread")]
async fn the_memory_of_a_flood_of_idle_connections_is_given_back_once_they_close() {
    const CONNECTIONS: usize = 2400;
    let descriptors = enlace_limits::raise_descriptor_limit();
    assert!(
        descriptors.soft > CONNECTIONS as u64 + 200,
        "this test needs {CONNECTIONS} sockets: {descriptors:?}"
    );
    let fed = Fed::start().await;
    let pid = fed.consumer.child.id();
    let port = fed.at.base + 7;
    // A first round, so that what is allocated once and kept (pools, caches) is in the baseline.
    drop(idle_connections(port, 200).await);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = rss_anon_kb(pid);
    let mut peak = before;
    let mut after = before;
    for round in 1..=2 {
        let open = idle_connections(port, CONNECTIONS).await;
        peak = peak.max(rss_anon_kb(pid));
        drop(open);
        // Given back within half a minute of the last connection closing.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            after = rss_anon_kb(pid);
            if after <= before + (peak - before) / 4 || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        eprintln!("round {round}: RssAnon {before} kB before, {peak} kB at peak, {after} kB after");
    }
    assert!(
        peak >= before + 8 * 1024,
        "{CONNECTIONS} open connections should cost memory ({before} kB → {peak} kB), or this measures nothing"
    );
    assert!(
        after <= before + (peak - before) / 4,
        "the node kept {} kB of the {} kB its idle connections took ({before} kB before, {peak} kB at peak, {after} kB after)",
        after - before,
        peak - before
    );
}

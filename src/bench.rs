//! `enlace bench`: measures the REST or the gRPC relay against the sample backend called
//! directly, in the same run, and prints ratios, the latency the two nodes add, and the nodes'
//! memory.
//!
//! The registry runs in this process (it is idle during the load); the sample backend and the
//! two nodes run as child processes of this executable (`enlace sample-backend` or `enlace
//! sample-grpc-backend`, `enlace node serve`), so their memory and CPU are measured on their
//! own. The load generator runs in this process: a pooled HTTP/1.1 keep-alive hyper client
//! (REST), or a tonic client multiplexing its calls on one HTTP/2 connection (gRPC). Every
//! process shares the same machine: on a small one the generator, the backend and both nodes
//! compete for the same cores.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use enlace_proto::personas::v1::GetPersonRequest;
use enlace_proto::personas::v1::personas_client::PersonasClient;
use enlace_registry::demo;
use http_body_util::{BodyExt, Empty};
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::{Request, StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tonic::metadata::MetadataMap;
use tonic::transport::{Channel, Endpoint};

use crate::federation::{self, Backends, Ports};

/// Warm-up before every measured run (connections, caches, the nodes' compiled descriptions).
const WARMUP: Duration = Duration::from_secs(2);
/// Clock ticks per second of `/proc/<pid>/stat` (`getconf CLK_TCK`, 100 on Linux).
const CLK_TCK: f64 = 100.0;
/// The person every call fetches.
const RUN: &str = "12345678-5";
const PATH: &str = "/persons/12345678-5";
/// The gRPC method every call makes.
const METHOD: &str = "personas.v1.Personas/GetPerson";

#[derive(clap::Subcommand)]
pub enum BenchCommand {
    /// REST exchanges through both nodes, against the sample backend called directly.
    Rest(LoadArgs),
    /// Unary gRPC calls (GetPerson) through both nodes, against the sample gRPC backend
    /// called directly.
    Grpc(LoadArgs),
    /// The access log: ingestion of N signed records and citizen queries at the end, against
    /// a plain indexed SQLite table.
    AccessLog(crate::bench_access::AccessLogArgs),
}

/// Which relay a benchmark measures.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Rest,
    Grpc,
}

#[derive(clap::Args)]
pub struct LoadArgs {
    /// Requests in flight in the closed-loop runs.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Length of each measured run, after a 2 s warm-up.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Request rate of the open-loop runs, per second.
    #[arg(long, default_value_t = 1000)]
    rate: u32,
}

pub async fn run(cmd: BenchCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        BenchCommand::Rest(args) => bench(args, Protocol::Rest).await,
        BenchCommand::Grpc(args) => bench(args, Protocol::Grpc).await,
        BenchCommand::AccessLog(args) => crate::bench_access::run(args).await,
    }
}

/// `enlace sample-backend`: the sample `personas` backend on its own, until Ctrl-C (SIGINT).
pub async fn sample_backend(listen: SocketAddr) -> anyhow::Result<ExitCode> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let (stop, rx) = tokio::sync::watch::channel(false);
    let serving = tokio::spawn(enlace_samples::rest::serve(listener, rx));
    tokio::signal::ctrl_c().await?;
    let _ = stop.send(true);
    let _ = serving.await;
    Ok(ExitCode::SUCCESS)
}

/// `enlace sample-grpc-backend`: the sample `personas.v1.Personas` gRPC backend (h2c) on its
/// own, until Ctrl-C (SIGINT).
pub async fn sample_grpc_backend(listen: SocketAddr) -> anyhow::Result<ExitCode> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let (stop, rx) = tokio::sync::watch::channel(false);
    let serving = tokio::spawn(enlace_samples::grpc::serve(listener, rx));
    tokio::signal::ctrl_c().await?;
    let _ = stop.send(true);
    let _ = serving.await;
    Ok(ExitCode::SUCCESS)
}

// ---- child processes ----

/// A child process of this executable, stopped with SIGINT (as Ctrl-C) when dropped.
struct Proc {
    name: &'static str,
    child: Child,
}

impl Proc {
    fn spawn(name: &'static str, args: &[&str], log: &Path) -> anyhow::Result<Proc> {
        let exe = std::env::current_exe()?;
        let child = std::process::Command::new(exe)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log)?)
            .spawn()?;
        Ok(Proc { name, child })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `VmRSS` and `VmHWM` (peak) in KiB.
    fn memory(&self) -> (u64, u64) {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    /// Stops the process as Ctrl-C would (nodes drain and anchor their log head).
    fn stop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-INT", &self.pid().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("{} did not stop on SIGINT; killing it", self.name);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.stop();
        }
    }
}

/// CPU time (user + system) a process has used so far, in seconds; `self` for this process.
fn cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces): state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|v| v.parse().ok())
        .collect();
    f.iter().sum::<u64>() as f64 / CLK_TCK
}

// ---- the load generator ----

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

fn client(pool: usize) -> HttpClient {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(pool)
        .build(http)
}

/// How a target is called, over which connections.
#[derive(Clone)]
enum Caller {
    /// A GET with these headers.
    Http {
        client: Box<HttpClient>,
        uri: Uri,
        headers: HeaderMap,
    },
    /// A unary GetPerson with this metadata, to the h2c endpoint.
    Grpc {
        client: PersonasClient<Channel>,
        endpoint: Box<Endpoint>,
        metadata: MetadataMap,
    },
}

/// Where a run sends its requests, and how many it has sent (warm-up included).
#[derive(Clone)]
struct Target {
    caller: Caller,
    sent: Arc<AtomicU64>,
}

fn grpc_client(endpoint: &Endpoint) -> PersonasClient<Channel> {
    PersonasClient::new(endpoint.connect_lazy())
}

impl Target {
    fn http(uri: &str, headers: HeaderMap) -> anyhow::Result<Target> {
        Ok(Target {
            caller: Caller::Http {
                client: Box::new(client(1)),
                uri: uri.parse()?,
                headers,
            },
            sent: Arc::new(AtomicU64::new(0)),
        })
    }

    fn grpc(url: &str, metadata: MetadataMap) -> anyhow::Result<Target> {
        let endpoint = Endpoint::from_shared(url.to_string())?.tcp_nodelay(true);
        Ok(Target {
            caller: Caller::Grpc {
                client: grpc_client(&endpoint),
                endpoint: Box::new(endpoint),
                metadata,
            },
            sent: Arc::new(AtomicU64::new(0)),
        })
    }

    /// The same target over new connections (up to `pool` kept for HTTP/1.1; one HTTP/2
    /// connection for gRPC), counting into the same total.
    fn fresh(&self, pool: usize) -> Target {
        let caller = match &self.caller {
            Caller::Http { uri, headers, .. } => Caller::Http {
                client: Box::new(client(pool)),
                uri: uri.clone(),
                headers: headers.clone(),
            },
            Caller::Grpc {
                endpoint, metadata, ..
            } => Caller::Grpc {
                client: grpc_client(endpoint),
                endpoint: endpoint.clone(),
                metadata: metadata.clone(),
            },
        };
        Target {
            caller,
            sent: self.sent.clone(),
        }
    }
}

/// One call: a GET, body read to the end, anything but 200 an error; or a unary GetPerson,
/// anything but OK an error.
async fn call(target: &Target) -> Result<(), String> {
    target.sent.fetch_add(1, Ordering::Relaxed);
    match &target.caller {
        Caller::Http {
            client,
            uri,
            headers,
        } => get(client, uri, headers).await,
        Caller::Grpc {
            client, metadata, ..
        } => {
            let mut req = tonic::Request::new(GetPersonRequest { run: RUN.into() });
            *req.metadata_mut() = metadata.clone();
            let mut client = client.clone();
            match client.get_person(req).await {
                Ok(_) => Ok(()),
                Err(s) => Err(format!("{:?}: {}", s.code(), s.message())),
            }
        }
    }
}

async fn get(client: &HttpClient, uri: &Uri, headers: &HeaderMap) -> Result<(), String> {
    let mut req = Request::new(Empty::new());
    *req.uri_mut() = uri.clone();
    *req.headers_mut() = headers.clone();
    let resp = client.request(req).await.map_err(|e| format!("{e:?}"))?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    if status != StatusCode::OK {
        return Err(format!("{status}: {}", String::from_utf8_lossy(&body)));
    }
    Ok(())
}

/// What a run measured: latencies in µs (sorted), errors, and the measured duration.
#[derive(Default)]
struct Measured {
    latencies_us: Vec<u32>,
    errors: u64,
    first_error: Option<String>,
    seconds: f64,
}

impl Measured {
    fn merge(&mut self, other: Measured) {
        self.latencies_us.extend(other.latencies_us);
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }

    fn record(&mut self, result: Result<(), String>, latency: Duration, counted: bool) {
        match result {
            Ok(()) if counted => self
                .latencies_us
                .push(u32::try_from(latency.as_micros()).unwrap_or(u32::MAX)),
            Ok(()) => {}
            Err(e) => {
                self.errors += 1;
                self.first_error.get_or_insert(e);
            }
        }
    }

    fn per_second(&self) -> f64 {
        self.latencies_us.len() as f64 / self.seconds
    }

    /// The `q` quantile in milliseconds.
    fn quantile_ms(&self, q: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return f64::NAN;
        }
        let i = ((q * self.latencies_us.len() as f64) as usize).min(self.latencies_us.len() - 1);
        f64::from(self.latencies_us[i]) / 1000.0
    }
}

/// Closed loop: `concurrency` workers, each sending its next request when the last is
/// answered, for the warm-up then `measure`. Only requests started and answered inside the
/// measured window count (errors count whenever they happen).
async fn closed_loop(target: &Target, concurrency: usize, measure: Duration) -> Measured {
    let target = target.fresh(concurrency);
    let from = Instant::now() + WARMUP;
    let until = from + measure;
    let mut workers = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        let target = target.clone();
        workers.push(tokio::spawn(async move {
            let mut m = Measured::default();
            loop {
                let start = Instant::now();
                if start >= until {
                    break;
                }
                let result = call(&target).await;
                let end = Instant::now();
                m.record(result, end - start, start >= from && end <= until);
            }
            m
        }));
    }
    let mut all = Measured {
        seconds: measure.as_secs_f64(),
        ..Measured::default()
    };
    for w in workers {
        if let Ok(m) = w.await {
            all.merge(m);
        }
    }
    all.latencies_us.sort_unstable();
    all
}

/// Open loop: a request every 1/`rate` s whatever the answers, for the warm-up then
/// `measure`. A latency runs from the moment the request is dispatched, not from its scheduled
/// time: tokio's timer has a 1 ms granularity, as long as the interval at 1,000 req/s, and the
/// scheduling lag would hide the latency the nodes add. A generator that falls behind still
/// sends at the rate on average (late requests go at once).
async fn open_loop(target: &Target, pool: usize, rate: u32, measure: Duration) -> Measured {
    let target = target.fresh(pool);
    let start = Instant::now();
    let from = start + WARMUP;
    let interval = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    let total = ((WARMUP + measure).as_secs_f64() * f64::from(rate)) as u32;
    let mut pending = Vec::with_capacity(total as usize);
    for i in 0..total {
        let at = start + interval * i;
        tokio::time::sleep_until(at.into()).await;
        let target = target.clone();
        pending.push(tokio::spawn(async move {
            let sent = Instant::now();
            let result = call(&target).await;
            (result, sent.elapsed(), at >= from)
        }));
    }
    let mut m = Measured {
        seconds: measure.as_secs_f64(),
        ..Measured::default()
    };
    for p in pending {
        if let Ok((result, latency, counted)) = p.await {
            m.record(result, latency, counted);
        }
    }
    m.latencies_us.sort_unstable();
    m
}

/// Calls `target` until it answers 200, for up to 30 s.
async fn wait_ready(target: &Target, what: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let last = call(target).await;
        match last {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() > deadline => anyhow::bail!("{what} not ready: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

// ---- the benchmark ----

fn header(name: &'static str, value: &str) -> anyhow::Result<(HeaderName, HeaderValue)> {
    Ok((HeaderName::from_static(name), HeaderValue::from_str(value)?))
}

/// Fails the benchmark when a run had errors: its figures would not mean anything.
fn check(what: &str, m: &Measured) -> anyhow::Result<()> {
    if m.errors > 0 {
        anyhow::bail!(
            "INVALID: {what}: {} error(s), first: {}",
            m.errors,
            m.first_error.as_deref().unwrap_or("?")
        );
    }
    if m.latencies_us.is_empty() {
        anyhow::bail!("INVALID: {what}: no request answered inside the measured window");
    }
    Ok(())
}

fn line(what: &str, m: &Measured) {
    println!(
        "  {what:<16} {:>9.0} exchanges/s   p50 {:>8.3} ms   p99 {:>8.3} ms   ({} answered)",
        m.per_second(),
        m.quantile_ms(0.50),
        m.quantile_ms(0.99),
        m.latencies_us.len()
    );
}

struct Processes {
    backend: Proc,
    provider: Proc,
    consumer: Proc,
}

async fn bench(args: LoadArgs, protocol: Protocol) -> anyhow::Result<ExitCode> {
    let dir = std::env::temp_dir().join(format!("enlace-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let result = bench_in(&dir, &args, protocol).await;
    if result.is_ok() {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        eprintln!("kept {} (node logs in *.log)", dir.display());
    }
    result
}

async fn bench_in(dir: &Path, args: &LoadArgs, protocol: Protocol) -> anyhow::Result<ExitCode> {
    let measure = Duration::from_secs(args.seconds.max(1));
    let n = args.concurrency.max(1);
    let backend_addr: SocketAddr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let backend_arg = backend_addr.to_string();
    let (command, backends) = match protocol {
        Protocol::Rest => (
            "sample-backend",
            Backends {
                rest: Some(backend_addr),
                grpc: None,
            },
        ),
        Protocol::Grpc => (
            "sample-grpc-backend",
            Backends {
                rest: None,
                grpc: Some(backend_addr),
            },
        ),
    };
    let backend = Proc::spawn(
        "sample backend",
        &[command, "--listen", &backend_arg],
        &dir.join("backend.log"),
    )?;
    let fed = federation::prepare(&dir.join("federation"), Ports::ANY, backends).await?;
    let node = |name, config: &PathBuf, log: &str| {
        let config = config.display().to_string();
        Proc::spawn(
            name,
            &["node", "serve", "--config", &config],
            &dir.join(log),
        )
    };
    let mut procs = Processes {
        backend,
        provider: node("Registro Civil node", &fed.provider_config, "provider.log")?,
        consumer: node("SII node", &fed.consumer_config, "consumer.log")?,
    };

    let s = &fed.secrets;
    let contract = match protocol {
        Protocol::Rest => &s.demo.contract,
        Protocol::Grpc => &s.demo.grpc_contract,
    };
    let headers: HeaderMap = [
        header("authorization", &format!("Bearer {}", s.renta_token))?,
        header("enlace-client", demo::CONSUMER_SUBSYSTEM)?,
        header("enlace-contract", contract)?,
        header("enlace-subject", demo::PERSON)?,
    ]
    .into_iter()
    .collect();
    let sii = format!("http://127.0.0.1:{}", fed.ports.sii_consumer);
    let (direct, nodes, what) = match protocol {
        Protocol::Rest => (
            Target::http(&format!("http://{backend_addr}{PATH}"), HeaderMap::new())?,
            Target::http(&format!("{sii}/r1/{}/v1{PATH}", demo::PERSONAS), headers)?,
            format!("rest: GET {PATH}"),
        ),
        Protocol::Grpc => (
            Target::grpc(&format!("http://{backend_addr}"), MetadataMap::new())?,
            Target::grpc(&sii, MetadataMap::from_headers(headers))?,
            format!("grpc: unary {METHOD} {{run: {RUN}}}"),
        ),
    };
    wait_ready(&direct, "the sample backend").await?;
    wait_ready(&nodes, "the nodes").await?;

    println!(
        "enlace bench {what}, {} core(s), closed loop at concurrency {n}, open loop at {} req/s, {} s per run after a {} s warm-up",
        std::thread::available_parallelism().map_or(0, |c| c.get()),
        args.rate,
        measure.as_secs(),
        WARMUP.as_secs()
    );
    println!(
        "processes: load generator + registry (pid {}), sample backend (pid {}), Registro Civil node (pid {}), SII node (pid {})",
        std::process::id(),
        procs.backend.pid(),
        procs.provider.pid(),
        procs.consumer.pid()
    );

    // (a) and (b): closed loop, directly and through both nodes.
    println!();
    println!("closed loop, {n} in flight:");
    let c_direct = closed_loop(&direct, n, measure).await;
    check("closed loop, direct", &c_direct)?;
    line("direct", &c_direct);
    let pids = [
        ("load generator", "self".to_string()),
        ("sample backend", procs.backend.pid().to_string()),
        ("Registro Civil node", procs.provider.pid().to_string()),
        ("SII node", procs.consumer.pid().to_string()),
    ];
    let cpu_before: Vec<f64> = pids.iter().map(|(_, p)| cpu_seconds(p)).collect();
    let sent_before = nodes.sent.load(Ordering::Relaxed);
    let wall = Instant::now();
    let c_nodes = closed_loop(&nodes, n, measure).await;
    let wall = wall.elapsed().as_secs_f64();
    let cpu: Vec<f64> = pids
        .iter()
        .zip(&cpu_before)
        .map(|((_, p), before)| cpu_seconds(p) - before)
        .collect();
    check("closed loop, through both nodes", &c_nodes)?;
    line("through nodes", &c_nodes);
    println!(
        "  ratio nodes/direct: throughput {:.3}x   p50 {:.2}x   p99 {:.2}x",
        c_nodes.per_second() / c_direct.per_second(),
        c_nodes.quantile_ms(0.50) / c_direct.quantile_ms(0.50),
        c_nodes.quantile_ms(0.99) / c_direct.quantile_ms(0.99)
    );
    let exchanges = (nodes.sent.load(Ordering::Relaxed) - sent_before) as f64;
    let total_cpu: f64 = cpu.iter().sum();
    println!(
        "  CPU during the through-nodes run ({wall:.1} s wall incl. warm-up, {:.0}% of {} core(s) busy):",
        100.0 * total_cpu
            / wall
            / std::thread::available_parallelism().map_or(1.0, |c| c.get() as f64),
        std::thread::available_parallelism().map_or(0, |c| c.get()),
    );
    for ((name, _), c) in pids.iter().zip(&cpu) {
        println!(
            "    {name:<20} {:>5.1}% of the CPU time   {:>6.1} µs per exchange",
            100.0 * c / total_cpu,
            1e6 * c / exchanges
        );
    }

    // (c): open loop at a fixed rate, through both nodes and directly.
    println!();
    println!("open loop, {} req/s:", args.rate);
    let o_nodes = open_loop(&nodes, n, args.rate, measure).await;
    check("open loop, through both nodes", &o_nodes)?;
    let o_direct = open_loop(&direct, n, args.rate, measure).await;
    check("open loop, direct", &o_direct)?;
    line("direct", &o_direct);
    line("through nodes", &o_nodes);
    println!(
        "  added by the nodes: p50 {:+.3} ms   p99 {:+.3} ms   (ratio p50 {:.2}x, p99 {:.2}x)",
        o_nodes.quantile_ms(0.50) - o_direct.quantile_ms(0.50),
        o_nodes.quantile_ms(0.99) - o_direct.quantile_ms(0.99),
        o_nodes.quantile_ms(0.50) / o_direct.quantile_ms(0.50),
        o_nodes.quantile_ms(0.99) / o_direct.quantile_ms(0.99)
    );

    // Memory, after the load.
    println!();
    println!("memory after the load (VmRSS now, VmHWM peak):");
    for p in [&procs.provider, &procs.consumer, &procs.backend] {
        let (rss, hwm) = p.memory();
        println!(
            "  {:<20} VmRSS {:>7.1} MiB   VmHWM {:>7.1} MiB",
            p.name,
            rss as f64 / 1024.0,
            hwm as f64 / 1024.0
        );
    }

    // Stop the nodes (they drain and anchor their log heads), then count log records.
    procs.consumer.stop();
    procs.provider.stop();
    procs.backend.stop();
    let sent = nodes.sent.load(Ordering::Relaxed) as f64;
    println!();
    println!(
        "message log records per exchange ({sent:.0} exchanges sent through the nodes, warm-ups included):"
    );
    for (name, config) in [
        ("Registro Civil node", &fed.provider_config),
        ("SII node", &fed.consumer_config),
    ] {
        let db = config
            .parent()
            .unwrap_or(Path::new("."))
            .join("data")
            .join("messages.sqlite");
        match enlace_msglog::verify_file(&db, &[], None) {
            Ok(r) => println!(
                "  {name:<20} {:>8} records, {:.2} per exchange, chain verifies: {}",
                r.records,
                r.records as f64 / sent,
                r.first_broken.is_none()
            ),
            Err(p) => println!("  {name:<20} could not read {}: {p}", db.display()),
        }
    }
    fed.registry.stop().await;
    Ok(ExitCode::SUCCESS)
}

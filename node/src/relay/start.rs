//! The start-up of a node: keys, a first configuration, the message log, the peer pool and
//! the backends' clients, then the listeners and the background tasks (configuration,
//! renewal, access record shipment, log head anchoring), and the orderly stop.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use enlace_certs::{SigningKey, TrustStore};
use enlace_core::problem::ProblemKind;
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::exchange::guard::{ReplayGuard, VolumeGuard};
use super::{Node, build_snapshot, grpc, meta, reflection, rest};
use crate::clock::Clock;
use crate::config::{ConfigClient, ConfigSource};
use crate::net::{PeerPool, serve_mtls, serve_plain};
use crate::renewal::{SigningKeyCell, TlsState};
use crate::settings::Checked;
use enlace_msglog::outbox::AccessQueue;
use enlace_msglog::{LogOptions, MessageLog};

/// A replay guard that already knows the message ids received within the freshness window
/// before this start (read from the message log by their UUIDv7 time).
fn warmed_replay_guard(
    log: &std::path::Path,
    skew_secs: i64,
    now: i64,
) -> anyhow::Result<ReplayGuard> {
    let guard = ReplayGuard::new(skew_secs);
    let ids = enlace_msglog::received_since(log, now - skew_secs - 1)
        .map_err(|p| anyhow::anyhow!("message log {}: {p}", log.display()))?;
    let n = ids.len();
    for id in ids {
        guard.first_sighting(id, now);
    }
    if n > 0 {
        tracing::info!(ids = n, "replay guard warmed from the message log");
    }
    Ok(guard)
}

/// A node serving on its three listeners.
pub struct RunningNode {
    pub node: Arc<Node>,
    pub consumer_addr: SocketAddr,
    /// The TLS consumer listener, when configured.
    pub consumer_tls_addr: Option<SocketAddr>,
    pub provider_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    background: Vec<JoinHandle<()>>,
}

impl RunningNode {
    /// Stops accepting, drains in-flight exchanges, anchors the final log head.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        for t in self.background {
            t.abort();
        }
        // One last shipment of the access records, best effort: what stays is shipped at the
        // next start.
        let (queue, url) = (&self.node.outbox, &self.node.settings.raw.registry_url);
        let last = queue.ship_once(url, &self.node.registry_http);
        if let Ok(Err(p)) = tokio::time::timeout(Duration::from_secs(2), last).await {
            tracing::warn!(problem = %p, "could not ship the last access records");
        }
        if let Err(p) = self.node.anchor_log_head().await {
            tracing::warn!(problem = %p, "could not anchor the final log head");
        }
    }
}

fn read(path: &std::path::Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// Starts a node: loads keys, follows the configuration (waiting for a first verified copy
/// up to `first_config_wait`), opens the message log, and serves.
pub async fn start(settings: Checked, first_config_wait: Duration) -> anyhow::Result<RunningNode> {
    start_with_clock(settings, first_config_wait, Clock::system()).await
}

/// As [`start`], reading the time from `clock` (the test harness runs nodes whose clocks are
/// set ahead or behind).
pub async fn start_with_clock(
    settings: Checked,
    first_config_wait: Duration,
    clock: Clock,
) -> anyhow::Result<RunningNode> {
    enlace_certs::install_crypto_provider();
    let raw = &settings.raw;
    std::fs::create_dir_all(&raw.data_dir)?;
    let ca_pem = read(&raw.ca_file)?;
    let tls_cert = read(&raw.tls_cert_file)?;
    let tls_key = read(&raw.tls_key_file)?;
    let signing_key = SigningKey::from_pem(&read(&raw.signing_key_file)?)
        .map_err(|p| anyhow::anyhow!("signing_key_file: {p}"))?;
    let config = ConfigClient::with_clock(
        ConfigSource {
            registry_url: raw.registry_url.clone(),
            instance: settings.instance.clone(),
            anchors: vec![ca_pem.clone()],
            cache_path: raw.data_dir.join("config.json"),
        },
        clock,
        raw.limits.clock_skew_secs,
    )?;
    if config.current().is_err() {
        let deadline = tokio::time::Instant::now() + first_config_wait;
        while tokio::time::Instant::now() < deadline {
            match config.fetch(Duration::ZERO).await {
                Ok(_) => break,
                // Waiting does not set the clock.
                Err(p) if p.kind == ProblemKind::ClockSkew => break,
                Err(p) => {
                    tracing::warn!(problem = %p, "waiting for a first configuration");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
        }
    }
    let cfg = config
        .current()
        .map_err(|p| anyhow::anyhow!("no usable configuration: {p}"))?;
    let snap = Arc::new(build_snapshot(cfg)?);
    let (tls, tls_rx, dial_rx) = TlsState::new(tls_cert, tls_key, &snap.trust)?;
    let limits = &raw.limits;
    let log = MessageLog::open(
        &raw.data_dir.join("messages.sqlite"),
        LogOptions {
            retention: raw
                .log
                .retention_days
                .map(|d| time::Duration::days(i64::from(d))),
            max_batch: 512,
        },
    )?;
    let volume = VolumeGuard::default();
    volume.restore(enlace_msglog::usage_counts(
        &raw.data_dir.join("messages.sqlite"),
    )?);
    let outbox = AccessQueue::in_log(&raw.data_dir.join("messages.sqlite"))?;
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.set_connect_timeout(Some(Duration::from_millis(limits.upstream_timeout_ms)));
    let backend = HttpClient::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(http.clone());
    let grpc_backend = HttpClient::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .http2_only(true)
        .build(http);
    let node = Arc::new(Node {
        signing_key: SigningKeyCell::new(signing_key),
        config: config.clone(),
        snapshot: watch::channel(Some(snap)).0,
        pool: PeerPool::new(dial_rx, Duration::from_millis(limits.connect_timeout_ms)),
        log,
        replay: warmed_replay_guard(
            &raw.data_dir.join("messages.sqlite"),
            limits.clock_skew_secs,
            config.clock().unix_now(),
        )?,
        volume,
        compiled: Mutex::new(HashMap::new()),
        grpc_compiled: Mutex::new(HashMap::new()),
        backend,
        grpc_backend,
        reflection: reflection::Cache::default(),
        registry_http: crate::config::registry_client(
            &raw.registry_url,
            &TrustStore::new(std::slice::from_ref(&ca_pem), None)?,
        )?,
        outbox,
        disclosure: Default::default(),
        rate: enlace_limits::RateLimiter::new(enlace_limits::RateLimits {
            per_sec: limits.requests_per_sec_per_subsystem,
            burst: limits.request_burst_per_subsystem,
        }),
        settings,
    });

    let (shutdown, shutdown_rx) = watch::channel(false);
    let raw = node.settings.raw.clone();
    let consumer_l = TcpListener::bind(raw.listen.consumer)
        .await
        .map_err(|e| anyhow::anyhow!("listen.consumer {}: {e}", raw.listen.consumer))?;
    let provider_l = TcpListener::bind(raw.listen.provider)
        .await
        .map_err(|e| anyhow::anyhow!("listen.provider {}: {e}", raw.listen.provider))?;
    let admin_l = TcpListener::bind(raw.listen.admin)
        .await
        .map_err(|e| anyhow::anyhow!("listen.admin {}: {e}", raw.listen.admin))?;
    let (consumer_addr, provider_addr, admin_addr) = (
        consumer_l.local_addr()?,
        provider_l.local_addr()?,
        admin_l.local_addr()?,
    );

    // Each listener's connections, bounded so that together they cannot take the descriptors
    // the logs, the stores and the peers need.
    let descriptors = enlace_limits::raise_descriptor_limit();
    tracing::info!(
        was = descriptors.was,
        soft = descriptors.soft,
        "descriptor limit"
    );
    let listeners = if raw.consumer_tls.is_some() { 4 } else { 3 };
    let caps = |name: &'static str| {
        enlace_limits::ConnectionCaps::for_listener(
            name,
            raw.limits.max_connections,
            raw.limits.max_connections_per_source,
            &descriptors,
            listeners,
        )
    };

    let mut tasks = Vec::new();
    let n = node.clone();
    let consumer_handler = move |req: http::Request<hyper::body::Incoming>, _remote| {
        let n = n.clone();
        async move {
            if grpc::is_grpc(req.headers()) && reflection::is_reflection(req.uri().path()) {
                reflection::serve(n, req).await
            } else if grpc::is_grpc(req.headers()) {
                grpc::consumer(n, req).await
            } else {
                rest::consumer(n, req)
                    .await
                    .map(http_body_util::Either::Left)
            }
        }
    };
    tasks.push(tokio::spawn(serve_plain(
        consumer_l,
        caps("consumer"),
        consumer_handler.clone(),
        shutdown_rx.clone(),
    )));
    let consumer_tls_addr = match &raw.consumer_tls {
        Some(t) => {
            let tls =
                enlace_certs::backend_server_config(&read(&t.cert_file)?, &read(&t.key_file)?)
                    .map_err(|p| anyhow::anyhow!("consumer_tls: {p}"))?;
            let l = TcpListener::bind(t.listen)
                .await
                .map_err(|e| anyhow::anyhow!("consumer_tls.listen {}: {e}", t.listen))?;
            let addr = l.local_addr()?;
            tasks.push(tokio::spawn(crate::consumer_tls::serve(
                l,
                caps("consumer-tls"),
                tls,
                Duration::from_millis(raw.limits.handshake_timeout_ms),
                consumer_handler,
                shutdown_rx.clone(),
            )));
            Some(addr)
        }
        None => None,
    };
    let n = node.clone();
    tasks.push(tokio::spawn(serve_mtls(
        provider_l,
        caps("provider"),
        tls_rx,
        Duration::from_millis(raw.limits.handshake_timeout_ms),
        move |req, peer| {
            let n = n.clone();
            async move {
                if grpc::is_grpc(req.headers()) {
                    grpc::provider(n, req, peer).await
                } else {
                    rest::provider(n, req, peer)
                        .await
                        .map(http_body_util::Either::Left)
                }
            }
        },
        shutdown_rx.clone(),
    )));
    let n = node.clone();
    tasks.push(tokio::spawn(serve_plain(
        admin_l,
        caps("admin"),
        move |req, _remote| meta::admin(n.clone(), req),
        shutdown_rx.clone(),
    )));

    let mut background = vec![config.follow()];
    // Rebuild trust (CA, CRL) and the TLS configurations whenever the configuration changes.
    let n = node.clone();
    let mut updates = config.subscribe();
    let tls_state = tls.clone();
    background.push(tokio::spawn(async move {
        let mut last_crl = String::new();
        while updates.changed().await.is_ok() {
            let Some(cfg) = updates.borrow_and_update().clone() else { continue };
            match build_snapshot(cfg) {
                Ok(s) => {
                    let s = Arc::new(s);
                    if s.config.crl != last_crl {
                        last_crl = s.config.crl.clone();
                        if let Err(p) = tls_state.rebuild(&s.trust) {
                            tracing::error!(problem = %p, "could not rebuild the TLS configuration");
                        }
                        n.pool.reset().await;
                    }
                    n.snapshot.send_replace(Some(s));
                }
                Err(p) => tracing::error!(problem = %p, "configuration unusable"),
            }
        }
    }));
    // Renew the node's certificates before they run out.
    let renewing = node.clone();
    background.push(tokio::spawn(async move {
        crate::renewal::run(&renewing.renewing(), &tls).await
    }));
    // Ship access records to the registry.
    background.push(enlace_msglog::outbox::spawn_shipper(
        node.outbox.clone(),
        raw.registry_url.clone(),
        node.registry_http.clone(),
        Duration::from_millis(500),
    ));
    // Anchor the log head every `anchor_interval_secs`, and sooner once `anchor_after_records`
    // records have been written since the last anchor: what a disk thief could cut or rewrite
    // undetected is bounded in time and in count.
    let n = node.clone();
    let every = Duration::from_secs(raw.log.anchor_interval_secs.max(1));
    let after_records = raw.log.anchor_after_records.max(1);
    background.push(tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1).min(every));
        let mut last = (tokio::time::Instant::now(), n.log.head().0);
        let mut first = true;
        loop {
            tick.tick().await;
            let seq = n.log.head().0;
            let due =
                first || last.0.elapsed() >= every || seq.saturating_sub(last.1) >= after_records;
            if !due {
                continue;
            }
            first = false;
            last = (tokio::time::Instant::now(), seq);
            if let Err(p) = n.anchor_log_head().await {
                tracing::warn!(problem = %p, "could not anchor the log head");
            }
        }
    }));
    tracing::info!(node = %node.settings.id, %consumer_addr, %provider_addr, %admin_addr, "node listening");
    Ok(RunningNode {
        node,
        consumer_addr,
        consumer_tls_addr,
        provider_addr,
        admin_addr,
        shutdown,
        tasks,
        background,
    })
}

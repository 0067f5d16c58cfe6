//! The node's relay: the state an exchange needs (identity, configuration snapshot, peer pool,
//! message log, guards, compiled service descriptions), the listeners, and the start-up.
//! The exchange itself is in `consumer.rs` (a local backend calls out) and `provider.rs` (a
//! peer node calls in), each a sequence of named phases; `grpc.rs` relays gRPC calls (any
//! request whose content type starts with `application/grpc`) on both sides; `reflection.rs`
//! answers gRPC server reflection on the consumer listener.

mod access_emit;
mod consumer;
pub mod context;
mod disclosure;
mod grpc;
mod guard;
mod meta;
mod provider;
mod reflection;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use enlace_certs::{SigningKey, TrustStore};
use enlace_core::config::{GlobalConfig, NodeEntry, ServiceEntry};
use enlace_core::id::{NodeId, ServiceId};
use enlace_core::problem::{Problem, ProblemKind};
use enlace_description::Description;
use enlace_description::validate::CompiledService;
use http::{HeaderValue, Response, StatusCode};
use http_body_util::Full;
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::{ConfigClient, ConfigSource};
use crate::msglog::{LogOptions, MessageLog};
use crate::net::{Body, DialMaterial, PeerPool, serve_mtls, serve_plain};
use crate::settings::Checked;
use guard::{ReplayGuard, VolumeGuard};

/// What the node derives from each configuration: trust (CA and CRL), and the peers.
pub struct Snapshot {
    pub config: Arc<GlobalConfig>,
    pub trust: TrustStore,
    pub nodes: HashMap<NodeId, NodeEntry>,
}

/// A running node's shared state.
pub struct Node {
    pub settings: Checked,
    pub(crate) signing_key: SigningKey,
    pub config: Arc<ConfigClient>,
    snapshot: watch::Sender<Option<Arc<Snapshot>>>,
    pub(crate) pool: PeerPool,
    pub(crate) log: MessageLog,
    pub(crate) replay: ReplayGuard,
    pub(crate) volume: VolumeGuard,
    /// Compiled OpenAPI descriptions by digest.
    compiled: Mutex<HashMap<String, Arc<CompiledService>>>,
    /// Decoded protobuf descriptor sets by digest.
    grpc_compiled: Mutex<HashMap<String, Arc<enlace_description::grpc::CompiledGrpc>>>,
    /// Verified signing keys of peers: (node, certificate PEM) → Ed25519 public key.
    peer_keys: Mutex<HashMap<(NodeId, String), Vec<u8>>>,
    pub(crate) backend: HttpClient<HttpConnector, Body>,
    /// HTTP/2 with prior knowledge (h2c), for gRPC backends.
    pub(crate) grpc_backend: HttpClient<HttpConnector, Body>,
    registry_http: reqwest::Client,
    /// Signed access records awaiting shipment to the registry (`access-queue.sqlite`).
    pub access: Arc<crate::access::AccessQueue>,
    /// Field classes and verified authorisation tokens, for the effective disclosure.
    pub(crate) disclosure: disclosure::Cache,
}

/// A problem with the message id it concerns: status, headers and body.
pub(crate) fn problem_parts(
    p: &Problem,
    message_id: Option<&str>,
) -> (StatusCode, http::HeaderMap, Bytes) {
    let status = StatusCode::from_u16(p.kind.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut h = http::HeaderMap::new();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    h.insert(
        context::ERROR,
        HeaderValue::from_static(p.culprit().as_str()),
    );
    if let Some(id) = message_id.and_then(|id| HeaderValue::from_str(id).ok()) {
        h.insert(context::MESSAGE_ID, id);
    }
    (status, h, Bytes::from(p.to_json().to_string()))
}

/// A problem rendered for a backend or a peer.
pub(crate) fn problem_response(p: &Problem, message_id: Option<&str>) -> Response<Body> {
    let (status, headers, body) = problem_parts(p, message_id);
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = status;
    *resp.headers_mut() = headers;
    resp
}

pub(crate) fn unix_now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

impl Node {
    /// The current configuration snapshot, or `configuration-expired` (fail closed).
    pub(crate) fn snapshot(&self) -> Result<Arc<Snapshot>, Problem> {
        let cfg = self.config.current()?;
        let snap = self.snapshot.borrow().clone();
        match snap {
            Some(s) if s.config.serial == cfg.serial => Ok(s),
            _ => {
                let s = Arc::new(build_snapshot(cfg)?);
                self.snapshot.send_replace(Some(s.clone()));
                Ok(s)
            }
        }
    }

    /// Refuses a message id seen before: in memory within the freshness window, and, while the
    /// node has been up for less than that window, in the message log too (a request captured
    /// before a restart must not be replayable after it).
    pub(crate) fn check_replay(&self, message_id: &str) -> Result<(), Problem> {
        let now = unix_now();
        let replayed = !self.replay.first_sighting(message_id, now)
            || (self.replay.still_warming_up(now)
                && crate::msglog::contains(
                    &self.settings.raw.data_dir.join("messages.sqlite"),
                    message_id,
                    crate::msglog::RecordKind::RequestIn,
                )?);
        if replayed {
            return Err(Problem::new(
                ProblemKind::Replay,
                format!("message {message_id} was already received"),
            ));
        }
        Ok(())
    }

    /// A peer's Ed25519 key for `keyid`, verified against the federation CA and CRL.
    pub(crate) fn peer_key(&self, snap: &Snapshot, keyid: &str) -> Result<Vec<u8>, Problem> {
        let node: NodeId = keyid
            .parse()
            .map_err(|e| Problem::new(ProblemKind::SignatureInvalid, format!("keyid: {e}")))?;
        let entry = snap.nodes.get(&node).ok_or_else(|| {
            Problem::new(
                ProblemKind::SignatureInvalid,
                format!("keyid {node} is not an approved node of the federation"),
            )
        })?;
        let cache_key = (node.clone(), entry.signing_certificate.clone());
        if let Some(k) = self
            .peer_keys
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&cache_key)
        {
            return Ok(k.clone());
        }
        let key = enlace_certs::verify_signer(
            &snap.trust,
            &entry.signing_certificate,
            &node.uri(),
            time::OffsetDateTime::now_utc(),
        )
        .map_err(|p| {
            Problem::new(
                ProblemKind::SignatureInvalid,
                format!("signing certificate of {node}: {}", p.detail),
            )
        })?;
        self.peer_keys
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(cache_key, key.clone());
        Ok(key)
    }

    /// The service version a request for `service` major `major` goes to: the latest minor.
    pub(crate) fn resolve_service<'a>(
        snap: &'a Snapshot,
        service: &ServiceId,
        major: u16,
    ) -> Result<&'a ServiceEntry, Problem> {
        snap.config
            .services
            .iter()
            .filter(|s| &s.id == service && s.version.major == major)
            .max_by_key(|s| s.version)
            .ok_or_else(|| {
                Problem::new(
                    ProblemKind::UnknownService,
                    format!("{service} has no published version v{major}"),
                )
            })
    }

    /// The stored description of a service version: from the disk cache, or from the registry
    /// (checked against the digest the signed configuration names).
    pub(crate) async fn description_bytes(&self, entry: &ServiceEntry) -> Result<Vec<u8>, Problem> {
        let cache = self
            .settings
            .raw
            .data_dir
            .join("descriptions")
            .join(&entry.digest);
        match std::fs::read(&cache) {
            Ok(b) if enlace_description::sha256_hex(&b) == entry.digest => Ok(b),
            _ => {
                let b = self.fetch_description(&entry.digest).await?;
                let _ = std::fs::create_dir_all(cache.parent().unwrap_or(&cache));
                let _ = std::fs::write(&cache, &b);
                Ok(b)
            }
        }
    }

    /// The compiled OpenAPI description of a service version, compiled once per digest.
    pub(crate) async fn compiled(
        &self,
        entry: &ServiceEntry,
    ) -> Result<Arc<CompiledService>, Problem> {
        if let Some(c) = self
            .compiled
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&entry.digest)
        {
            return Ok(c.clone());
        }
        let bytes = self.description_bytes(entry).await?;
        let desc = Description::load(entry.kind, &bytes)?;
        let compiled = Arc::new(CompiledService::compile(&desc)?);
        self.compiled
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(entry.digest.clone(), compiled.clone());
        Ok(compiled)
    }

    /// The decoded descriptor set of a protobuf service version, decoded once per digest.
    pub(crate) async fn compiled_grpc(
        &self,
        entry: &ServiceEntry,
    ) -> Result<Arc<enlace_description::grpc::CompiledGrpc>, Problem> {
        if let Some(c) = self
            .grpc_compiled
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&entry.digest)
        {
            return Ok(c.clone());
        }
        if entry.kind != enlace_core::config::DescriptionKind::Protobuf {
            return Err(Problem::new(
                ProblemKind::UnknownService,
                format!(
                    "{} {} is not described by protobuf",
                    entry.id, entry.version
                ),
            ));
        }
        let bytes = self.description_bytes(entry).await?;
        let compiled = Arc::new(enlace_description::grpc::CompiledGrpc::compile(&bytes)?);
        self.grpc_compiled
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(entry.digest.clone(), compiled.clone());
        Ok(compiled)
    }

    async fn fetch_description(&self, digest: &str) -> Result<Vec<u8>, Problem> {
        let url = format!(
            "{}/v1/descriptions/{digest}",
            self.settings.raw.registry_url
        );
        let unreachable = |e: String| {
            Problem::new(
                ProblemKind::PeerUnreachable,
                format!("registry: description {digest}: {e}"),
            )
        };
        let resp = self
            .registry_http
            .get(&url)
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        if !resp.status().is_success() {
            return Err(unreachable(format!("answered {}", resp.status())));
        }
        let bytes = resp.bytes().await.map_err(|e| unreachable(e.to_string()))?;
        if enlace_description::sha256_hex(&bytes) != digest {
            return Err(Problem::new(
                ProblemKind::ConfigSignatureInvalid,
                format!("description {digest} from the registry does not match its digest"),
            ));
        }
        Ok(bytes.to_vec())
    }

    /// Signs the log head and anchors it in the registry.
    pub async fn anchor_log_head(&self) -> Result<(), Problem> {
        let head = self
            .log
            .sign_head(&self.signing_key, &self.settings.id.to_string())
            .await?;
        let body = enlace_core::loghead::SignedHead {
            node: head.node.clone(),
            seq: head.seq,
            hash_hex: head.hash_hex.clone(),
            at: head.at.clone(),
            signature_b64: head.signature_b64.clone(),
        };
        let url = format!("{}/v1/log-heads", self.settings.raw.registry_url);
        let resp = self
            .registry_http
            .post(&url)
            .timeout(Duration::from_secs(30))
            .json(&body)
            .send()
            .await
            .map_err(|e| Problem::new(ProblemKind::PeerUnreachable, format!("registry: {e}")))?;
        if !resp.status().is_success() {
            let text = resp.text().await.unwrap_or_default();
            return Err(Problem::new(
                ProblemKind::PeerUnreachable,
                format!("registry refused the log head: {text}"),
            ));
        }
        Ok(())
    }
}

fn build_snapshot(config: Arc<GlobalConfig>) -> Result<Snapshot, Problem> {
    let trust = TrustStore::new(&config.federation_ca, Some(&config.crl))?;
    let nodes = config
        .nodes
        .iter()
        .map(|n| (n.id.clone(), n.clone()))
        .collect();
    Ok(Snapshot {
        config,
        trust,
        nodes,
    })
}

/// A node serving on its three listeners.
pub struct RunningNode {
    pub node: Arc<Node>,
    pub consumer_addr: SocketAddr,
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
        let (queue, url) = (&self.node.access, &self.node.settings.raw.registry_url);
        let last = queue.ship_once(url, &self.node.registry_http);
        if let Ok(Err(p)) = tokio::time::timeout(Duration::from_secs(2), last).await {
            tracing::warn!(problem = %p, "could not ship the last access records");
        }
        self.node.access.close();
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
    enlace_certs::install_crypto_provider();
    let raw = &settings.raw;
    std::fs::create_dir_all(&raw.data_dir)?;
    let ca_pem = read(&raw.ca_file)?;
    let tls_cert = read(&raw.tls_cert_file)?;
    let tls_key = read(&raw.tls_key_file)?;
    let signing_key = SigningKey::from_pem(&read(&raw.signing_key_file)?)
        .map_err(|p| anyhow::anyhow!("signing_key_file: {p}"))?;
    let config = ConfigClient::new(ConfigSource {
        registry_url: raw.registry_url.clone(),
        instance: settings.instance.clone(),
        anchors: vec![ca_pem.clone()],
        cache_path: raw.data_dir.join("config.json"),
    })?;
    if config.current().is_err() {
        let deadline = tokio::time::Instant::now() + first_config_wait;
        while tokio::time::Instant::now() < deadline {
            match config.fetch(Duration::ZERO).await {
                Ok(_) => break,
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
    let server_tls = enlace_certs::server_config(&snap.trust, &tls_cert, &tls_key)?;
    let (tls_tx, tls_rx) = watch::channel(server_tls);
    let material = {
        let (cert, key) = (tls_cert.clone(), tls_key.clone());
        move |trust: &TrustStore| {
            Arc::new(DialMaterial {
                trust: trust.clone(),
                cert_pem: cert.clone(),
                key_pem: key.clone(),
            })
        }
    };
    let (dial_tx, dial_rx) = watch::channel(material(&snap.trust));
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
    let access = crate::access::AccessQueue::open(&raw.data_dir.join("access-queue.sqlite"))?;
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
        signing_key,
        config: config.clone(),
        snapshot: watch::channel(Some(snap)).0,
        pool: PeerPool::new(dial_rx, Duration::from_millis(limits.upstream_timeout_ms)),
        log,
        replay: ReplayGuard::new(limits.clock_skew_secs),
        volume: VolumeGuard::default(),
        compiled: Mutex::new(HashMap::new()),
        grpc_compiled: Mutex::new(HashMap::new()),
        peer_keys: Mutex::new(HashMap::new()),
        backend,
        grpc_backend,
        registry_http: crate::config::registry_client(
            &raw.registry_url,
            &TrustStore::new(std::slice::from_ref(&ca_pem), None)?,
        )?,
        access,
        disclosure: Default::default(),
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

    let mut tasks = Vec::new();
    let n = node.clone();
    tasks.push(tokio::spawn(serve_plain(
        consumer_l,
        move |req, _remote| {
            let n = n.clone();
            async move {
                if grpc::is_grpc(req.headers()) && reflection::is_reflection(req.uri().path()) {
                    reflection::serve(n, req).await
                } else if grpc::is_grpc(req.headers()) {
                    grpc::consumer(n, req).await
                } else {
                    consumer::handle(n, req)
                        .await
                        .map(http_body_util::Either::Left)
                }
            }
        },
        shutdown_rx.clone(),
    )));
    let n = node.clone();
    tasks.push(tokio::spawn(serve_mtls(
        provider_l,
        tls_rx,
        Duration::from_millis(raw.limits.handshake_timeout_ms),
        move |req, peer| {
            let n = n.clone();
            async move {
                if grpc::is_grpc(req.headers()) {
                    grpc::provider(n, req, peer).await
                } else {
                    provider::handle(n, req, peer)
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
        move |req, _remote| meta::admin(n.clone(), req),
        shutdown_rx.clone(),
    )));

    let mut background = vec![config.follow()];
    // Rebuild trust (CA, CRL) and the TLS configurations whenever the configuration changes.
    let n = node.clone();
    let mut updates = config.subscribe();
    background.push(tokio::spawn(async move {
        let mut last_crl = String::new();
        while updates.changed().await.is_ok() {
            let Some(cfg) = updates.borrow_and_update().clone() else { continue };
            match build_snapshot(cfg) {
                Ok(s) => {
                    let s = Arc::new(s);
                    if s.config.crl != last_crl {
                        last_crl = s.config.crl.clone();
                        match enlace_certs::server_config(&s.trust, &tls_cert, &tls_key) {
                            Ok(c) => {
                                tls_tx.send_replace(c);
                            }
                            Err(p) => tracing::error!(problem = %p, "could not rebuild the TLS configuration"),
                        }
                        dial_tx.send_replace(material(&s.trust));
                        n.pool.reset().await;
                    }
                    n.snapshot.send_replace(Some(s));
                }
                Err(p) => tracing::error!(problem = %p, "configuration unusable"),
            }
        }
    }));
    // Ship access records to the registry.
    background.push(crate::access::spawn_shipper(
        node.access.clone(),
        raw.registry_url.clone(),
        node.registry_http.clone(),
        Duration::from_millis(500),
    ));
    // Anchor the log head periodically.
    let n = node.clone();
    let every = Duration::from_secs(raw.log.anchor_interval_secs.max(1));
    background.push(tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            if let Err(p) = n.anchor_log_head().await {
                tracing::warn!(problem = %p, "could not anchor the log head");
            }
        }
    }));
    tracing::info!(node = %node.settings.id, %consumer_addr, %provider_addr, %admin_addr, "node listening");
    Ok(RunningNode {
        node,
        consumer_addr,
        provider_addr,
        admin_addr,
        shutdown,
        tasks,
        background,
    })
}

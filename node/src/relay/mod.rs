//! The node's relay: the state an exchange needs (identity, configuration snapshot, peer pool,
//! message log, guards, compiled service descriptions). The phases of an exchange that both
//! transports share are in `exchange/`, one module per decision; `rest/` and `grpc/` are the
//! adapters (any request whose content type starts with `application/grpc` is relayed by
//! `grpc/`); `meta.rs` answers the metaservices and the admin listener; `reflection.rs`
//! answers gRPC server reflection on the consumer listener; `start.rs` starts and stops a node.

pub mod exchange;
mod grpc;
mod meta;
mod reflection;
mod rest;
mod start;

pub use exchange::context;
pub(crate) use exchange::log_record::REFUSED_REQUEST_PREFIX;
pub(crate) use grpc::evidence as grpc_evidence;
pub use start::{RunningNode, start, start_with_clock};

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use enlace_certs::TrustStore;
use enlace_core::config::{GlobalConfig, NodeEntry, ServiceEntry};
use enlace_core::contract::Contract;
use enlace_core::id::{ContractId, MemberId, NodeId, ServiceId, SubsystemId};
use enlace_core::problem::{Problem, ProblemKind};
use enlace_description::Description;
use enlace_description::validate::CompiledService;
use http::{HeaderValue, Response, StatusCode};
use http_body_util::Full;
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use tokio::sync::watch;

use crate::config::ConfigClient;
use crate::net::{Body, PeerPool, RelayBody};
use crate::renewal::SigningKeyCell;
use crate::settings::Checked;
use enlace_msglog::MessageLog;
use enlace_msglog::outbox::AccessQueue;
use exchange::disclosure;
use exchange::guard::{self, ReplayGuard, VolumeGuard};

/// A peer's verified Ed25519 key and its certificate's `notAfter` (Unix seconds).
type VerifiedKey = (Arc<[u8]>, i64);

/// What the node derives from each configuration: trust (CA and CRL), and the peers.
pub struct Snapshot {
    pub config: Arc<GlobalConfig>,
    pub trust: TrustStore,
    pub nodes: HashMap<NodeId, NodeEntry>,
    /// Peers' signing keys verified against this configuration's CA and CRL, with their
    /// certificates' `notAfter`. A new configuration (a new CRL, a renewed certificate) starts
    /// an empty cache, so a revoked key is never served from an older verification.
    peer_keys: Mutex<HashMap<NodeId, Vec<VerifiedKey>>>,
    /// Indices into `config`, built once per configuration so that no request scans a list.
    contracts: HashMap<ContractId, usize>,
    subsystems: HashSet<SubsystemId>,
    /// (service, major) → the latest minor version's entry.
    services: HashMap<(ServiceId, u16), usize>,
    /// member → its first approved node.
    member_nodes: HashMap<MemberId, NodeId>,
}

impl Snapshot {
    /// An approved or revoked contract of the federation.
    pub fn contract(&self, id: &ContractId) -> Option<&Contract> {
        self.contracts.get(id).map(|&i| &self.config.contracts[i])
    }

    /// Whether the subsystem is an approved one of the federation.
    pub fn has_subsystem(&self, id: &SubsystemId) -> bool {
        self.subsystems.contains(id)
    }

    /// The node that serves a member's services.
    pub fn node_of(&self, member: &MemberId) -> Option<&NodeEntry> {
        self.member_nodes
            .get(member)
            .and_then(|n| self.nodes.get(n))
    }
}

/// A running node's shared state.
pub struct Node {
    pub settings: Checked,
    pub(crate) signing_key: SigningKeyCell,
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
    pub(crate) backend: HttpClient<HttpConnector, Body>,
    /// HTTP/2 with prior knowledge (h2c), for gRPC backends; request bodies may stream.
    pub(crate) grpc_backend: HttpClient<HttpConnector, RelayBody>,
    /// gRPC server reflection services built per local subsystem and configuration serial.
    reflection: reflection::Cache,
    /// The HTTP client for the registry (trusting the federation CA for HTTPS).
    registry_http: reqwest::Client,
    /// Signed access records awaiting shipment to the registry (the `access_queue` table of
    /// `messages.sqlite`).
    pub outbox: Arc<AccessQueue>,
    /// Field classes and verified authorisation tokens, for the effective disclosure.
    pub(crate) disclosure: disclosure::Cache,
    /// Requests per second per calling subsystem (`limits.requests_per_sec_per_subsystem`).
    pub(crate) rate: enlace_limits::RateLimiter,
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
    if let Some(secs) = p.retry_after() {
        h.insert(http::header::RETRY_AFTER, HeaderValue::from(secs));
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

impl Node {
    /// The part of the node its certificate renewal uses.
    pub(crate) fn renewing(&self) -> crate::renewal::Renewing<'_> {
        crate::renewal::Renewing {
            settings: &self.settings,
            signing_key: &self.signing_key,
            registry_http: &self.registry_http,
            pool: &self.pool,
            config: &self.config,
        }
    }

    /// This node's clock.
    pub(crate) fn now(&self) -> time::OffsetDateTime {
        self.config.clock().now()
    }

    /// This node's clock, Unix seconds.
    pub(crate) fn unix_now(&self) -> i64 {
        self.config.clock().unix_now()
    }

    /// A new message id: a UUIDv7 of this node's clock.
    pub(crate) fn new_message_id(&self) -> String {
        let now = self.now();
        let ts = uuid::Timestamp::from_unix(
            uuid::NoContext,
            now.unix_timestamp().max(0) as u64,
            now.nanosecond(),
        );
        uuid::Uuid::new_v7(ts).to_string()
    }

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

    /// Refuses a message id whose UUIDv7 time is outside the clock-skew window (stale), and
    /// one seen before within it (a replay). Ids received before a restart are loaded from the
    /// message log when the node starts, so a captured request stays refused across restarts.
    pub(crate) fn check_replay(&self, message_id: &str) -> Result<(), Problem> {
        let now = self.unix_now();
        let id = uuid::Uuid::parse_str(message_id)
            .map_err(|_| Problem::new(ProblemKind::InvalidRequest, "message id: not a UUID"))?
            .as_u128();
        let created = guard::uuid_v7_secs(id);
        if !self.replay.fresh(created, now) {
            let stale = Problem::new(
                ProblemKind::Stale,
                format!(
                    "message {message_id} was created at {created}, more than {} s from this node's clock ({now})",
                    self.settings.raw.limits.clock_skew_secs
                ),
            );
            return Err(self.config.registry_offset().blame_stale(stale));
        }
        if !self.replay.first_sighting(id, now) {
            return Err(Problem::new(
                ProblemKind::Replay,
                format!("message {message_id} was already received"),
            ));
        }
        Ok(())
    }

    /// The signing keys of the one node a signature must come from, `expected` (`who` says
    /// which node that is, for the refusal): a signature by any other node is refused,
    /// whatever its keys.
    pub(crate) fn keys_of(
        &self,
        snap: &Snapshot,
        expected: &str,
        who: &str,
        keyid: &str,
    ) -> Result<Vec<Vec<u8>>, Problem> {
        if keyid != expected {
            return Err(Problem::new(
                ProblemKind::SignatureInvalid,
                format!("signed by {keyid}, not by {who} {expected}"),
            ));
        }
        self.peer_keys(snap, keyid)
    }

    /// The Ed25519 keys a peer may sign with: its current signing certificate's and, while it
    /// rolls its key over, those of its previous ones the configuration still lists; each
    /// verified against the federation CA and CRL of this configuration, and used only while
    /// its certificate is valid. The current key comes first; never empty.
    pub(crate) fn peer_keys(&self, snap: &Snapshot, keyid: &str) -> Result<Vec<Vec<u8>>, Problem> {
        let node: NodeId = keyid
            .parse()
            .map_err(|e| Problem::new(ProblemKind::SignatureInvalid, format!("keyid: {e}")))?;
        let now = self.now();
        let now_s = now.unix_timestamp();
        if let Some(keys) = snap
            .peer_keys
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&node)
        {
            let valid: Vec<Vec<u8>> = keys
                .iter()
                .filter(|(_, not_after)| now_s < *not_after)
                .map(|(k, _)| k.to_vec())
                .collect();
            if !valid.is_empty() {
                return Ok(valid);
            }
        }
        let entry = snap.nodes.get(&node).ok_or_else(|| {
            Problem::new(
                ProblemKind::SignatureInvalid,
                format!("keyid {node} is not an approved node of the federation"),
            )
        })?;
        let verify =
            |pem: &str| enlace_certs::verify_signer_until(&snap.trust, pem, &node.uri(), now);
        let current = verify(&entry.signing_certificate).map_err(|p| {
            Problem::new(
                ProblemKind::SignatureInvalid,
                format!("signing certificate of {node}: {}", p.detail),
            )
        })?;
        let mut verified = vec![current];
        verified.extend(
            entry
                .previous_signing_certificates
                .iter()
                .filter_map(|pem| verify(pem).ok()),
        );
        let out = verified.iter().map(|(k, _)| k.clone()).collect();
        snap.peer_keys
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                node,
                verified
                    .into_iter()
                    .map(|(k, not_after)| (Arc::<[u8]>::from(k), not_after))
                    .collect(),
            );
        Ok(out)
    }

    /// The service version a request for `service` major `major` goes to: the latest minor.
    pub(crate) fn resolve_service<'a>(
        snap: &'a Snapshot,
        service: &ServiceId,
        major: u16,
    ) -> Result<&'a ServiceEntry, Problem> {
        snap.services
            .get(&(service.clone(), major))
            .map(|&i| &snap.config.services[i])
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
        match tokio::fs::read(&cache).await {
            Ok(b) if enlace_description::sha256_hex(&b) == entry.digest => Ok(b),
            _ => {
                let b = self.fetch_description(&entry.digest).await?;
                let _ = tokio::fs::create_dir_all(cache.parent().unwrap_or(&cache)).await;
                let _ = tokio::fs::write(&cache, &b).await;
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
            .sign_head(&self.signing_key.current(), &self.settings.id.to_string())
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
    let contracts = config
        .contracts
        .iter()
        .enumerate()
        .map(|(i, c)| (c.id.clone(), i))
        .collect();
    let subsystems = config.subsystems.iter().cloned().collect();
    let mut services: HashMap<(ServiceId, u16), usize> = HashMap::new();
    for (i, s) in config.services.iter().enumerate() {
        let key = (s.id.clone(), s.version.major);
        match services.get(&key) {
            Some(&j) if config.services[j].version >= s.version => {}
            _ => {
                services.insert(key, i);
            }
        }
    }
    let mut member_nodes = HashMap::new();
    for n in &config.nodes {
        member_nodes
            .entry(n.id.member.clone())
            .or_insert_with(|| n.id.clone());
    }
    Ok(Snapshot {
        config,
        trust,
        nodes,
        peer_keys: Mutex::new(HashMap::new()),
        contracts,
        subsystems,
        services,
        member_nodes,
    })
}

//! The node's configuration file (TOML, `${ENV:-default}` expanded, unknown keys refused),
//! validated at load so a running node never meets a bad setting.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use enlace_core::id::{Instance, NodeId, ServiceId, SubsystemId};
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSettings {
    /// This node, e.g. `CL-DEV/GOV/61002000-3/node/a`.
    pub id: String,
    /// Base URL of the registry.
    pub registry_url: String,
    /// Directory of the configuration cache and the message log.
    pub data_dir: PathBuf,
    /// Federation CA certificate (PEM): the trust anchor.
    pub ca_file: PathBuf,
    pub tls_cert_file: PathBuf,
    pub tls_key_file: PathBuf,
    pub signing_cert_file: PathBuf,
    pub signing_key_file: PathBuf,
    #[serde(default)]
    pub listen: Listen,
    #[serde(default)]
    pub limits: Limits,
    /// Local backends that call through this node, each bound to one subsystem.
    #[serde(default)]
    pub clients: Vec<Client>,
    /// Services this node provides, and the backend that answers each.
    #[serde(default)]
    pub services: Vec<Provided>,
    #[serde(default)]
    pub log: LogSettings,
    /// A TLS listener for local backends, where they may authenticate by client certificate.
    #[serde(default)]
    pub consumer_tls: Option<ConsumerTls>,
    #[serde(default)]
    pub renewal: RenewalSettings,
}

/// When the node renews its own certificates (with a proof made by its current signing key).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenewalSettings {
    /// Renew when less than this fraction of a certificate's lifetime is left.
    #[serde(default = "default_remaining_fraction")]
    pub remaining_fraction: f64,
    /// How often to check, seconds (and once at start).
    #[serde(default = "default_renewal_check")]
    pub check_interval_secs: u64,
    /// How long after its own configuration lists the new signing certificate the node waits
    /// before signing with the new key (peers following the registry catch up), milliseconds.
    #[serde(default = "default_switch_grace")]
    pub switch_grace_ms: u64,
}

fn default_remaining_fraction() -> f64 {
    1.0 / 3.0
}
fn default_renewal_check() -> u64 {
    300
}
fn default_switch_grace() -> u64 {
    2000
}

impl Default for RenewalSettings {
    fn default() -> Self {
        RenewalSettings {
            remaining_fraction: default_remaining_fraction(),
            check_interval_secs: default_renewal_check(),
            switch_grace_ms: default_switch_grace(),
        }
    }
}

/// The TLS consumer listener: local backends connect over TLS (HTTP/1.1 or HTTP/2) and may
/// present a client certificate pinned in `[[clients]]` by its SHA-256, instead of a token.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsumerTls {
    pub listen: SocketAddr,
    /// The listener's certificate chain (PEM), from the institution's own PKI.
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listen {
    /// Local backends (HTTP/1.1 and h2c).
    #[serde(default = "default_consumer")]
    pub consumer: SocketAddr,
    /// Peer nodes (mutual TLS, HTTP/2, TLS 1.3).
    #[serde(default = "default_provider")]
    pub provider: SocketAddr,
    /// `/healthz`, `/readyz`.
    #[serde(default = "default_admin")]
    pub admin: SocketAddr,
}

fn default_consumer() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}
fn default_provider() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8443))
}
fn default_admin() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8081))
}

impl Default for Listen {
    fn default() -> Self {
        Listen {
            consumer: default_consumer(),
            provider: default_provider(),
            admin: default_admin(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Largest request or response body relayed, bytes.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// Largest total of request header bytes accepted.
    #[serde(default = "default_max_headers")]
    pub max_header_bytes: usize,
    /// How far a signature's `created` may be from our clock, and our clock from the
    /// registry's before this node reports `clock-skew`, seconds.
    #[serde(default = "default_skew")]
    pub clock_skew_secs: i64,
    /// How long to wait for the peer node or the provider backend, milliseconds.
    #[serde(default = "default_timeout")]
    pub upstream_timeout_ms: u64,
    /// How long to wait for a connection to a peer node (TCP connect, TLS handshake and HTTP/2
    /// preface), milliseconds: a peer whose host accepts nothing is reported this soon.
    #[serde(default = "default_connect")]
    pub connect_timeout_ms: u64,
    /// TLS handshake timeout, milliseconds.
    #[serde(default = "default_handshake")]
    pub handshake_timeout_ms: u64,
    /// Largest single gRPC message relayed (either direction), bytes.
    #[serde(default = "default_max_grpc_message")]
    pub max_grpc_message_bytes: usize,
    /// How long a gRPC call without a deadline (`grpc-timeout`) may go without a frame in
    /// either direction before the node ends it, milliseconds.
    #[serde(default = "default_grpc_idle")]
    pub grpc_idle_timeout_ms: u64,
    /// Connections each listener holds open at most (lowered at start if the descriptor limit
    /// is too small for it).
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Connections one source address (an IPv6 /64) holds open on a listener at most.
    #[serde(default = "default_max_connections_per_source")]
    pub max_connections_per_source: usize,
    /// Requests per second one calling subsystem may send through this node, sustained; 0 is
    /// no limit. Above it the node answers 429 `rate-limited` with `Retry-After`.
    #[serde(default = "default_subsystem_rate")]
    pub requests_per_sec_per_subsystem: u32,
    /// Requests one calling subsystem may send at once after a quiet spell.
    #[serde(default = "default_subsystem_burst")]
    pub request_burst_per_subsystem: u32,
}

fn default_max_body() -> usize {
    4 * 1024 * 1024
}
fn default_max_headers() -> usize {
    16 * 1024
}
fn default_skew() -> i64 {
    30
}
fn default_timeout() -> u64 {
    10_000
}
fn default_connect() -> u64 {
    1_000
}
fn default_handshake() -> u64 {
    5_000
}
fn default_max_grpc_message() -> usize {
    4 * 1024 * 1024
}
fn default_grpc_idle() -> u64 {
    60_000
}
// A node's listeners serve the institution's own backends (consumer) and a few peer nodes
// (provider): one backend host may well hold a thousand connections; 2,048 is an eighth of the
// listener, the most one source may take.
fn default_max_connections() -> usize {
    16_384
}
fn default_max_connections_per_source() -> usize {
    2048
}
// Above what one node serves on two cores (about 4,500 exchanges/s, BENCHMARKS.md): a limit
// against a runaway backend, not a quota; set it to what each subsystem is expected to send.
fn default_subsystem_rate() -> u32 {
    10_000
}
fn default_subsystem_burst() -> u32 {
    20_000
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: default_max_body(),
            max_header_bytes: default_max_headers(),
            clock_skew_secs: default_skew(),
            upstream_timeout_ms: default_timeout(),
            connect_timeout_ms: default_connect(),
            handshake_timeout_ms: default_handshake(),
            max_grpc_message_bytes: default_max_grpc_message(),
            grpc_idle_timeout_ms: default_grpc_idle(),
            max_connections: default_max_connections(),
            max_connections_per_source: default_max_connections_per_source(),
            requests_per_sec_per_subsystem: default_subsystem_rate(),
            request_burst_per_subsystem: default_subsystem_burst(),
        }
    }
}

/// A local backend: its subsystem, and how it authenticates: the SHA-256 (hex) of its bearer
/// token, of its TLS client certificate (DER, on the TLS consumer listener), or both.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Client {
    pub subsystem: String,
    #[serde(default)]
    pub token_sha256: Option<String>,
    #[serde(default)]
    pub certificate_sha256: Option<String>,
    /// Keep request and response bodies in the message log (hashes are always kept).
    #[serde(default)]
    pub log_bodies: bool,
}

/// A service this node provides: its id, and the base URL of the backend answering it:
/// `http://…` for REST, `h2c://host:port` for a gRPC backend (HTTP/2 with prior knowledge).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Provided {
    pub service: String,
    pub backend: String,
    #[serde(default)]
    pub log_bodies: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    /// Days to keep message-log records; none keeps everything.
    #[serde(default)]
    pub retention_days: Option<u32>,
    /// Seconds between signed chain heads sent to the registry.
    #[serde(default = "default_anchor")]
    pub anchor_interval_secs: u64,
    /// Records written after which the head is anchored without waiting for the interval.
    #[serde(default = "default_anchor_records")]
    pub anchor_after_records: u64,
}

fn default_anchor() -> u64 {
    60
}
fn default_anchor_records() -> u64 {
    10_000
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings {
            retention_days: None,
            anchor_interval_secs: default_anchor(),
            anchor_after_records: default_anchor_records(),
        }
    }
}

/// The settings, parsed and checked.
#[derive(Debug, Clone)]
pub struct Checked {
    pub raw: NodeSettings,
    pub id: NodeId,
    pub instance: Instance,
    /// token SHA-256 hex → (subsystem, log bodies)
    pub clients: BTreeMap<String, (SubsystemId, bool)>,
    /// client certificate SHA-256 hex → (subsystem, log bodies)
    pub client_certs: BTreeMap<String, (SubsystemId, bool)>,
    /// service → (backend base URL, log bodies); an `h2c://` URL is a gRPC backend
    pub services: BTreeMap<ServiceId, (String, bool)>,
}

impl NodeSettings {
    pub fn from_toml(text: &str) -> anyhow::Result<Checked> {
        let expanded = enlace_core::settings::expand_env(text, |k| std::env::var(k).ok())
            .map_err(anyhow::Error::msg)?;
        let raw: NodeSettings = toml::from_str(&expanded)?;
        raw.check()
    }

    pub fn check(self) -> anyhow::Result<Checked> {
        let id: NodeId = self.id.parse().map_err(|e| anyhow::anyhow!("id: {e}"))?;
        let instance = id.member.instance.clone();
        anyhow::ensure!(
            self.registry_url.starts_with("http://") || self.registry_url.starts_with("https://"),
            "registry_url: must start with http:// or https://"
        );
        anyhow::ensure!(
            (1024..=256 * 1024 * 1024).contains(&self.limits.max_body_bytes),
            "limits.max_body_bytes: must be between 1 KiB and 256 MiB"
        );
        anyhow::ensure!(
            (16..=256 * 1024 * 1024).contains(&self.limits.max_grpc_message_bytes),
            "limits.max_grpc_message_bytes: must be between 16 bytes and 256 MiB"
        );
        anyhow::ensure!(
            (100..=86_400_000).contains(&self.limits.grpc_idle_timeout_ms),
            "limits.grpc_idle_timeout_ms: must be between 100 ms and 24 hours"
        );
        anyhow::ensure!(
            (50..=60_000).contains(&self.limits.connect_timeout_ms),
            "limits.connect_timeout_ms: must be between 50 ms and 60 s"
        );
        anyhow::ensure!(
            (1..=600).contains(&self.limits.clock_skew_secs),
            "limits.clock_skew_secs: must be between 1 and 600"
        );
        anyhow::ensure!(
            self.renewal.remaining_fraction > 0.0 && self.renewal.remaining_fraction <= 1.0,
            "renewal.remaining_fraction: must be above 0 and at most 1"
        );
        anyhow::ensure!(
            (1..=86_400).contains(&self.renewal.check_interval_secs),
            "renewal.check_interval_secs: must be between 1 and 86400"
        );
        anyhow::ensure!(
            self.renewal.switch_grace_ms <= 60_000,
            "renewal.switch_grace_ms: must be at most 60000"
        );
        let mut clients = BTreeMap::new();
        let mut client_certs = BTreeMap::new();
        for (i, c) in self.clients.iter().enumerate() {
            let sub: SubsystemId = c
                .subsystem
                .parse()
                .map_err(|e| anyhow::anyhow!("clients[{i}].subsystem: {e}"))?;
            anyhow::ensure!(
                sub.member == id.member,
                "clients[{i}].subsystem: {sub} is not of this node's member {}",
                id.member
            );
            anyhow::ensure!(
                c.token_sha256.is_some() || c.certificate_sha256.is_some(),
                "clients[{i}]: give token_sha256, certificate_sha256, or both"
            );
            let hex64 = |v: &str| v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit());
            if let Some(t) = &c.token_sha256 {
                anyhow::ensure!(
                    hex64(t),
                    "clients[{i}].token_sha256: must be 64 hex characters"
                );
                anyhow::ensure!(
                    clients
                        .insert(t.to_ascii_lowercase(), (sub.clone(), c.log_bodies))
                        .is_none(),
                    "clients[{i}].token_sha256: the same token is given twice"
                );
            }
            if let Some(h) = &c.certificate_sha256 {
                anyhow::ensure!(
                    hex64(h),
                    "clients[{i}].certificate_sha256: must be 64 hex characters"
                );
                anyhow::ensure!(
                    self.consumer_tls.is_some(),
                    "clients[{i}].certificate_sha256: needs a [consumer_tls] listener"
                );
                anyhow::ensure!(
                    client_certs
                        .insert(h.to_ascii_lowercase(), (sub.clone(), c.log_bodies))
                        .is_none(),
                    "clients[{i}].certificate_sha256: the same certificate is given twice"
                );
            }
        }
        let mut services = BTreeMap::new();
        for (i, s) in self.services.iter().enumerate() {
            let svc: ServiceId = s
                .service
                .parse()
                .map_err(|e| anyhow::anyhow!("services[{i}].service: {e}"))?;
            anyhow::ensure!(
                svc.member() == &id.member,
                "services[{i}].service: {svc} is not of this node's member"
            );
            anyhow::ensure!(
                s.backend.starts_with("http://") || s.backend.starts_with("h2c://"),
                "services[{i}].backend: must be an http:// URL (REST) or h2c://host:port (gRPC)"
            );
            services.insert(
                svc,
                (s.backend.trim_end_matches('/').to_string(), s.log_bodies),
            );
        }
        Ok(Checked {
            id,
            instance,
            clients,
            client_certs,
            services,
            raw: self,
        })
    }
}

//! The Enlace schema registry, one type per role: the federation ([`Registry`]: members,
//! subsystems, nodes, services and their descriptions, data concepts, data contracts, the audit
//! trail, the signed global configuration), the access log ([`AccessLog`]: records, anchored log
//! heads, signed tree heads, proofs, evidence), and the citizen side ([`Citizens`]: a person's
//! records, the citizen page, authorisations, hidings). The API ([`App`]) holds all three.
#![forbid(unsafe_code)]

pub mod access_log;
mod api;
pub mod citizen;
pub mod demo;
mod federation;
pub mod limits;
mod model;
mod once_only;
mod store;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use enlace_certs::FederationCa;
use enlace_core::id::Instance;
use serde::Deserialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use access_log::AccessLog;
pub use api::{App, OPENAPI, media, router};
pub use citizen::Citizens;
pub use federation::publish::{ALGORITHM, Published, Signer};
pub use federation::{Actor, Registry, Settings};
pub use model::{
    Approval, ConceptRecord, MemberRecord, NodeRecord, ServiceRecord, SubsystemRecord,
};
pub use once_only::{Held, Report};
pub use store::{AuditEntry, Change, SqliteStore, Store, StoreError};

/// The registry's configuration file (TOML, `${ENV:-default}` expanded before parsing).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    /// Federation instance, e.g. `CL-DEV`.
    pub instance: String,
    /// Address of the REST API.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Directory of the database, the CA files and the admin token.
    pub data_dir: PathBuf,
    /// Storage backend: `sqlite` (the default; `registry.sqlite` in `data_dir`).
    #[serde(default = "default_storage")]
    pub storage: String,
    /// Seconds a signed configuration stays valid; reissued every third of that.
    #[serde(default = "default_config_validity")]
    pub config_validity_secs: u64,
    /// Hours a node certificate stays valid.
    #[serde(default = "default_cert_hours")]
    pub node_cert_validity_hours: u64,
    /// Serve HTTPS with a certificate the registry issues itself from the federation CA, for
    /// these DNS names or IP addresses (nodes trust it through their CA anchor). Empty: plain
    /// HTTP, for loopback only.
    #[serde(default)]
    pub tls_names: Vec<String>,
    /// OpenID Connect for the citizen API (`[oidc]`: `dev_issuer`, `issuer`, `audience`, …).
    #[serde(default)]
    pub oidc: citizen::oidc::OidcConfig,
    /// The longest, in days, a person's authorisation (consent) token is valid; never beyond
    /// the contract's end.
    #[serde(default = "default_consent_days")]
    pub consent_max_days: u32,
    /// Connections, request rates and the audit budget of unknown callers (`[limits]`).
    #[serde(default)]
    pub limits: limits::ApiLimits,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7400))
}
fn default_storage() -> String {
    "sqlite".into()
}
fn default_config_validity() -> u64 {
    600
}
fn default_cert_hours() -> u64 {
    7 * 24
}
fn default_consent_days() -> u32 {
    365
}

impl RegistryConfig {
    /// Reads, expands and validates a configuration file; errors name the key.
    pub fn from_toml(text: &str) -> anyhow::Result<RegistryConfig> {
        let expanded = enlace_core::settings::expand_env(text, |k| std::env::var(k).ok())
            .map_err(anyhow::Error::msg)?;
        let cfg: RegistryConfig = toml::from_str(&expanded)?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        self.instance
            .parse::<Instance>()
            .map_err(|e| anyhow::anyhow!("instance: {e}"))?;
        anyhow::ensure!(
            !self.tls_names.is_empty() || self.listen.ip().is_loopback(),
            "listen: {} is not a loopback address; a registry reachable from the network must serve HTTPS (set tls_names)",
            self.listen
        );
        anyhow::ensure!(
            self.storage == "sqlite",
            "storage: only `sqlite` is built in (got `{}`)",
            self.storage
        );
        anyhow::ensure!(
            (30..=86_400).contains(&self.config_validity_secs),
            "config_validity_secs: must be between 30 and 86400"
        );
        anyhow::ensure!(
            (1..=24 * 90).contains(&self.node_cert_validity_hours),
            "node_cert_validity_hours: must be between 1 and 2160"
        );
        anyhow::ensure!(
            (1..=366).contains(&self.consent_max_days),
            "consent_max_days: must be between 1 and 366"
        );
        self.check_dev_issuer()?;
        self.oidc.validate()?;
        Ok(())
    }

    /// The development issuer signs a token for anyone: refused unless the registry listens
    /// only on loopback.
    pub fn check_dev_issuer(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            !self.oidc.dev_issuer || self.listen.ip().is_loopback(),
            "oidc.dev_issuer: the development issuer signs a token for anyone; it is refused unless the registry listens only on loopback (listen = {})",
            self.listen
        );
        Ok(())
    }
}

/// A registry serving on a socket.
pub struct RunningRegistry {
    pub addr: SocketAddr,
    /// The registry's own base URL: `https://<first TLS name>:<port>` when it serves HTTPS,
    /// `http://<addr>` otherwise (what it names as the OIDC redirect and issuer base).
    pub url: String,
    /// The federation: members, nodes, services, contracts, the signed configuration.
    pub registry: Arc<Registry>,
    /// The access log: records, anchored log heads, tree heads, proofs and evidence.
    pub access_log: Arc<AccessLog>,
    /// The citizen side: people's records, authorisations, hidings.
    pub citizens: Arc<Citizens>,
    /// The federation admin's token.
    pub admin_token: String,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<()>,
    refresher: JoinHandle<()>,
    tree_heads: JoinHandle<()>,
    audit_flush: JoinHandle<()>,
}

impl RunningRegistry {
    /// Stops accepting, lets in-flight requests finish, and returns.
    pub async fn stop(mut self) {
        self.halt().await;
    }

    /// As [`RunningRegistry::stop`], through a handle that stays (for a caller that then
    /// replaces it with a registry started again on the same data directory).
    pub async fn halt(&mut self) {
        let _ = self.shutdown.send(true);
        self.refresher.abort();
        self.tree_heads.abort();
        self.audit_flush.abort();
        let _ = (&mut self.task).await;
    }
}

fn write_secret(path: &Path, contents: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(contents.as_bytes())?;
    f.sync_all()?;
    Ok(())
}

/// Loads the federation CA from `data_dir` (`ca.pem`, `ca-key.pem`), creating it on first start.
pub fn load_or_create_ca(data_dir: &Path, instance: &Instance) -> anyhow::Result<FederationCa> {
    let cert = data_dir.join("ca.pem");
    let key = data_dir.join("ca-key.pem");
    if cert.exists() {
        let ca = FederationCa::load(
            &std::fs::read_to_string(&cert)?,
            &std::fs::read_to_string(&key)?,
        )
        .map_err(|p| anyhow::anyhow!("{}: {p}", cert.display()))?;
        return Ok(ca);
    }
    let ca = FederationCa::create(instance, time::Duration::days(3650))
        .map_err(|p| anyhow::anyhow!("{p}"))?;
    write_secret(&key, ca.key_pem())?;
    std::fs::write(&cert, ca.cert_pem())?;
    tracing::info!(path = %cert.display(), "created the federation CA");
    Ok(ca)
}

/// Loads the federation admin token from `data_dir/admin.token`, creating it on first start.
fn load_or_create_admin_token(data_dir: &Path) -> anyhow::Result<String> {
    let path = data_dir.join("admin.token");
    if path.exists() {
        return Ok(std::fs::read_to_string(&path)?.trim().to_string());
    }
    let token = federation::new_admin_token();
    write_secret(&path, &token)?;
    Ok(token)
}

/// Opens the store, the CA and the token, issues a configuration, and serves the API.
pub async fn start(cfg: &RegistryConfig) -> anyhow::Result<RunningRegistry> {
    enlace_certs::install_crypto_provider();
    cfg.check_dev_issuer()?;
    let instance: Instance = cfg.instance.parse()?;
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("creating {}", cfg.data_dir.display()))?;
    let store = Arc::new(SqliteStore::open(&cfg.data_dir.join("registry.sqlite"))?);
    let ca = load_or_create_ca(&cfg.data_dir, &instance)?;
    let admin_token = load_or_create_admin_token(&cfg.data_dir)?;
    let validity = time::Duration::seconds(cfg.config_validity_secs as i64);
    let signer =
        Signer::create(&ca, &instance, validity * 4).map_err(|p| anyhow::anyhow!("{p}"))?;
    let settings = Settings {
        instance,
        config_validity: validity,
        node_cert_validity: time::Duration::hours(cfg.node_cert_validity_hours as i64),
        consent_validity: time::Duration::days(i64::from(cfg.consent_max_days)),
    };
    let registry = Registry::new(store, ca, signer, settings, &admin_token)
        .map_err(|p| anyhow::anyhow!("{p}"))?;
    let store = access_log::AccessLogStore::open(&cfg.data_dir.join("access.sqlite"))
        .context("opening access.sqlite")?;
    let access_log = AccessLog::new(registry.clone(), store);
    access_log
        .import_legacy_log_heads()
        .map_err(|p| anyhow::anyhow!("importing anchored log heads: {p}"))?;
    registry
        .publish()
        .await
        .map_err(|p| anyhow::anyhow!("{p}"))?;

    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("listen: cannot bind {}", cfg.listen))?;
    let addr = listener.local_addr()?;
    let tls = if cfg.tls_names.is_empty() {
        None
    } else {
        let (key, csr) =
            enlace_certs::server_key_and_csr(&format!("Enlace registry {}", cfg.instance))?;
        let cert = registry
            .ca
            .issue_server_tls(&csr, &cfg.tls_names, time::Duration::days(90))
            .map_err(|p| anyhow::anyhow!("tls_names: {p}"))?;
        Some(tokio_rustls::TlsAcceptor::from(
            enlace_certs::https_server_config(&cert.pem, &key)?,
        ))
    };
    let own_url = match cfg.tls_names.first() {
        None => format!("http://{addr}"),
        Some(name) => format!("https://{name}:{}", addr.port()),
    };
    let oidc =
        citizen::oidc::Oidc::new(&cfg.oidc, &own_url).map_err(|p| anyhow::anyhow!("oidc: {p}"))?;
    let citizens = Arc::new(Citizens::new(
        registry.clone(),
        access_log.clone(),
        oidc.map(Arc::new),
    ));
    let app = App {
        registry: registry.clone(),
        access_log: access_log.clone(),
        citizens: citizens.clone(),
    };
    let (shutdown, rx) = watch::channel(false);
    let descriptors = enlace_limits::raise_descriptor_limit();
    let caps = enlace_limits::ConnectionCaps::for_listener(
        "registry",
        cfg.limits.max_connections,
        cfg.limits.max_connections_per_source,
        &descriptors,
        1,
    );
    tracing::info!(
        was = descriptors.was,
        soft = descriptors.soft,
        max_connections = caps.max_total(),
        "descriptor limit"
    );
    let guards = Arc::new(limits::Guards::new(&cfg.limits));
    let task = tokio::spawn(serve(listener, caps, tls, router(app, guards.clone()), rx));
    // The last window of a flood of unknown callers' refusals is summarised even if nothing
    // follows it.
    let audit_flush = {
        let registry = registry.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(60));
            loop {
                tick.tick().await;
                let n = guards.unknown_audit.flush();
                if n > 0 {
                    let registry = registry.clone();
                    let _ =
                        tokio::task::spawn_blocking(move || registry.audit_summary(n, 60)).await;
                }
            }
        })
    };
    let refresher = {
        let registry = registry.clone();
        let every = std::time::Duration::from_secs((cfg.config_validity_secs / 3).max(10));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                if let Err(p) = registry.publish().await {
                    tracing::error!(problem = %p, "could not reissue the configuration");
                }
            }
        })
    };
    let tree_heads = tokio::spawn(access_log::sign_tree_heads(
        access_log.clone(),
        access_log::TREE_HEAD_INTERVAL,
    ));
    tracing::info!(%addr, https = !cfg.tls_names.is_empty(), "registry listening");
    Ok(RunningRegistry {
        addr,
        url: own_url,
        registry,
        access_log,
        citizens,
        admin_token,
        shutdown,
        task,
        refresher,
        tree_heads,
        audit_flush,
    })
}

/// How long a client has to send a whole request header section.
pub const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The accept loop: HTTP/1.1 and HTTP/2, over TLS when an acceptor is given (the handshake in
/// its own task, with a timeout); drains connections on shutdown.
async fn serve(
    listener: tokio::net::TcpListener,
    caps: Arc<enlace_limits::ConnectionCaps>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    app: axum::Router,
    mut shutdown: watch::Receiver<bool>,
) {
    use enlace_certs::ListenerStream;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use hyper_util::server::conn::auto::Builder;
    use hyper_util::service::TowerToHyperService;
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Some((stream, remote, permit)) = enlace_limits::admit(&caps, accepted).await else { continue };
                // Each request carries the address it came from, for the per-source limits.
                let svc = TowerToHyperService::new(tower::ServiceExt::map_request(
                    app.clone(),
                    move |mut req: hyper::Request<hyper::body::Incoming>| {
                        req.extensions_mut().insert(axum::extract::ConnectInfo(remote));
                        req
                    },
                ));
                let tls = tls.clone();
                let watcher = graceful.watcher();
                tokio::spawn(async move {
                    let _permit = permit;
                    let mut builder = Builder::new(TokioExecutor::new());
                    // With a timer, so that the header read timeout really runs: a slow or
                    // idle client is dropped instead of holding a descriptor forever.
                    builder
                        .http1()
                        .timer(hyper_util::rt::TokioTimer::new())
                        .header_read_timeout(HEADER_READ_TIMEOUT)
                        // The answers owed before a refused request (which ends the stream
                        // there) or a client's half-close still go out.
                        .half_close(true);
                    let result = match tls {
                        None => {
                            let stream = ListenerStream::new(stream, HEADER_READ_TIMEOUT);
                            watcher.watch(builder.serve_connection(TokioIo::new(stream), svc).into_owned()).await
                        }
                        Some(acceptor) => {
                            let hs = tokio::time::timeout(std::time::Duration::from_secs(10), acceptor.accept(stream)).await;
                            let Ok(Ok(tls_stream)) = hs else {
                                tracing::info!(%remote, "registry: TLS handshake failed or timed out");
                                return;
                            };
                            let stream = ListenerStream::new(tls_stream, HEADER_READ_TIMEOUT);
                            watcher.watch(builder.serve_connection(TokioIo::new(stream), svc).into_owned()).await
                        }
                    };
                    if let Err(e) = result {
                        tracing::debug!(%remote, error = %e, "registry connection ended");
                    }
                });
            }
            _ = async { let _ = shutdown.wait_for(|s| *s).await; } => break,
        }
    }
    drop(listener);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), graceful.shutdown()).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sample_configuration_loads() {
        let text = include_str!("../../deploy/registry.toml");
        let cfg = RegistryConfig::from_toml(text).unwrap();
        assert_eq!(cfg.instance, "CL-DEV");
        assert_eq!(cfg.config_validity_secs, 600);
        assert!(cfg.tls_names.is_empty());
        // As the container image sets it: listening on every address, with a TLS name.
        let image = |k: &str| match k {
            "ENLACE_REGISTRY_LISTEN" => Some("0.0.0.0:7400".to_string()),
            "ENLACE_REGISTRY_TLS_NAMES" => Some("\"enlace-registry\"".to_string()),
            _ => None,
        };
        let expanded = enlace_core::settings::expand_env(text, image).unwrap();
        let cfg: RegistryConfig = toml::from_str(&expanded).unwrap();
        cfg.validate().unwrap();
        assert_eq!(cfg.tls_names, ["enlace-registry"]);
    }

    #[test]
    fn bad_configuration_names_the_key() {
        let e = RegistryConfig::from_toml("instance = \"cl\"\ndata_dir = \"/x\"").unwrap_err();
        assert!(e.to_string().starts_with("instance:"), "{e}");
        let e = RegistryConfig::from_toml("instance = \"CL\"\ndata_dir = \"/x\"\nlisten_on = 1")
            .unwrap_err();
        assert!(e.to_string().contains("listen_on"), "{e}");
        let e =
            RegistryConfig::from_toml("instance = \"CL\"\ndata_dir = \"${NO_SUCH_VAR_ENLACE}\"")
                .unwrap_err();
        assert!(e.to_string().contains("NO_SUCH_VAR_ENLACE"), "{e}");
        let e = RegistryConfig::from_toml(
            "instance = \"CL\"\ndata_dir = \"/x\"\nlisten = \"0.0.0.0:7400\"",
        )
        .unwrap_err();
        assert!(e.to_string().starts_with("listen:"), "{e}");
        let e = RegistryConfig::from_toml(
            "instance = \"CL\"\ndata_dir = \"/x\"\nconfig_validity_secs = 1",
        )
        .unwrap_err();
        assert!(e.to_string().starts_with("config_validity_secs"), "{e}");
        let e = RegistryConfig::from_toml(
            "instance = \"CL\"\ndata_dir = \"/x\"\nlisten = \"0.0.0.0:7400\"\ntls_names = [\"registro.example\"]\n[oidc]\ndev_issuer = true",
        )
        .unwrap_err();
        assert!(e.to_string().starts_with("oidc.dev_issuer"), "{e}");
        let ok = RegistryConfig::from_toml(
            "instance = \"CL\"\ndata_dir = \"/x\"\nlisten = \"0.0.0.0:7400\"\ntls_names = [\"registro.example\"]\n[oidc]\nissuer = \"https://accounts.claveunica.gob.cl/openid\"\nsubject_from = \"clave-unica\"",
        )
        .unwrap();
        assert_eq!(ok.oidc.subject_from, citizen::oidc::SubjectFrom::ClaveUnica);
        let e = RegistryConfig::from_toml(
            "instance = \"CL\"\ndata_dir = \"/x\"\nconsent_max_days = 400",
        )
        .unwrap_err();
        assert!(e.to_string().starts_with("consent_max_days"), "{e}");
    }
}

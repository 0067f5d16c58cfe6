//! Certificate renewal: before its certificates run out, a node makes new keys, asks the
//! registry for new certificates with a proof signed by its current signing key, stores them,
//! switches its TLS at once and its signing key once peers can know the new certificate.

use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use base64::Engine as _;
use enlace_certs::{SigningKey, TrustStore};
use enlace_core::problem::{Problem, ProblemKind};
use rustls::ServerConfig;
use serde::Deserialize;
use tokio::sync::watch;

use crate::config::ConfigClient;
use crate::net::{DialMaterial, PeerPool};
use crate::settings::Checked;

/// The node's signing key, replaced when the node renews its signing certificate.
pub struct SigningKeyCell(RwLock<Arc<SigningKey>>);

impl SigningKeyCell {
    pub fn new(key: SigningKey) -> SigningKeyCell {
        SigningKeyCell(RwLock::new(Arc::new(key)))
    }

    /// The key to sign with now.
    pub fn current(&self) -> Arc<SigningKey> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn replace(&self, key: SigningKey) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(key);
    }
}

/// A [`TlsState`] and the receivers of its two configurations.
pub type Built = (
    Arc<TlsState>,
    watch::Receiver<Arc<ServerConfig>>,
    watch::Receiver<Arc<DialMaterial>>,
);

/// The node's TLS certificate and key, and the configurations built from them: the provider
/// listener's and the one it dials peers with. Rebuilt when the CRL changes or the node renews.
pub struct TlsState {
    pems: Mutex<(String, String)>,
    server: watch::Sender<Arc<ServerConfig>>,
    dial: watch::Sender<Arc<DialMaterial>>,
}

impl TlsState {
    /// Builds both configurations from `cert_pem`/`key_pem` and `trust`.
    pub fn new(cert_pem: String, key_pem: String, trust: &TrustStore) -> Result<Built, Problem> {
        let server = enlace_certs::server_config(trust, &cert_pem, &key_pem)?;
        let dial = Arc::new(DialMaterial {
            trust: trust.clone(),
            cert_pem: cert_pem.clone(),
            key_pem: key_pem.clone(),
        });
        let (server, server_rx) = watch::channel(server);
        let (dial, dial_rx) = watch::channel(dial);
        let state = Arc::new(TlsState {
            pems: Mutex::new((cert_pem, key_pem)),
            server,
            dial,
        });
        Ok((state, server_rx, dial_rx))
    }

    /// Rebuilds both configurations for `trust` (a new CRL) with the current certificate.
    pub fn rebuild(&self, trust: &TrustStore) -> Result<(), Problem> {
        let (cert, key) = self.pems.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let server = enlace_certs::server_config(trust, &cert, &key)?;
        self.server.send_replace(server);
        self.dial.send_replace(Arc::new(DialMaterial {
            trust: trust.clone(),
            cert_pem: cert,
            key_pem: key,
        }));
        Ok(())
    }

    fn set(&self, cert_pem: String, key_pem: String) {
        *self.pems.lock().unwrap_or_else(|e| e.into_inner()) = (cert_pem, key_pem);
    }
}

#[derive(Deserialize)]
struct Renewed {
    tls_certificate: Option<String>,
    signing_certificate: Option<String>,
}

/// What renewal needs of the running node, and nothing more of it: its settings, its signing
/// key (replaced at the switch), the registry's client, the pool of peer connections (reset when
/// the TLS certificate changes) and the verified configuration (the trust to check what the
/// registry issued, and whether it lists the new signing certificate yet).
pub struct Renewing<'a> {
    pub settings: &'a Checked,
    pub signing_key: &'a SigningKeyCell,
    pub registry_http: &'a reqwest::Client,
    pub pool: &'a PeerPool,
    pub config: &'a ConfigClient,
}

/// Checks the node's certificates every `renewal.check_interval_secs` (and once at start) and
/// renews them when less than `renewal.remaining_fraction` of their lifetime is left.
pub async fn run(node: &Renewing<'_>, tls: &TlsState) {
    let every = Duration::from_secs(node.settings.raw.renewal.check_interval_secs);
    loop {
        match renew_if_due(node, tls).await {
            Ok(true) => tracing::info!(node = %node.settings.id, "certificates renewed"),
            Ok(false) => {}
            Err(p) => tracing::warn!(problem = %p, "could not renew the node's certificates"),
        }
        tokio::time::sleep(every).await;
    }
}

/// Renews the node's certificates if they are due; true if it did.
pub async fn renew_if_due(node: &Renewing<'_>, tls: &TlsState) -> Result<bool, Problem> {
    let raw = &node.settings.raw;
    let fraction = raw.renewal.remaining_fraction;
    let now = time::OffsetDateTime::now_utc();
    let tls_cert = read(&raw.tls_cert_file)?;
    let signing_cert = read(&raw.signing_cert_file)?;
    if !enlace_certs::needs_renewal(&tls_cert, now, fraction)
        && !enlace_certs::needs_renewal(&signing_cert, now, fraction)
    {
        return Ok(false);
    }
    let id = &node.settings.id;
    let keys = enlace_certs::node_init(id)?;
    let at = now
        .format(&time::format_description::well_known::Rfc3339)
        .map_err(|e| Problem::new(ProblemKind::Internal, e.to_string()))?;
    let text = enlace_core::renewal::proof_text(id, &at, &keys.tls_csr_pem, &keys.signing_csr_pem);
    let signature = base64::engine::general_purpose::STANDARD
        .encode(node.signing_key.current().sign(text.as_bytes()));
    let url = format!("{}/v1/nodes/{id}/renew", raw.registry_url);
    let unreachable = |e: String| {
        Problem::new(
            ProblemKind::PeerUnreachable,
            format!("registry: renewal: {e}"),
        )
    };
    let resp = node
        .registry_http
        .post(&url)
        .timeout(Duration::from_secs(30))
        .json(&serde_json::json!({
            "tls_csr": keys.tls_csr_pem,
            "signing_csr": keys.signing_csr_pem,
            "proof": {"at": at, "signature": signature},
        }))
        .send()
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    if !resp.status().is_success() {
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        return Err(unreachable(format!("answered {status}: {text}")));
    }
    let renewed: Renewed = resp.json().await.map_err(|e| unreachable(e.to_string()))?;
    let (Some(new_tls), Some(new_signing)) = (renewed.tls_certificate, renewed.signing_certificate)
    else {
        return Err(unreachable("the answer holds no certificates".into()));
    };
    // What the registry issued must be what we asked for, for this node.
    let trust = {
        let cfg = node.config.current()?;
        TrustStore::new(&cfg.federation_ca, Some(&cfg.crl))?
    };
    let new_key = SigningKey::from_pem(&keys.signing_key_pem)?;
    let certified = enlace_certs::verify_signer(
        &trust,
        &new_signing,
        &id.uri(),
        time::OffsetDateTime::now_utc(),
    )?;
    if certified != new_key.public_key_bytes() {
        return Err(Problem::new(
            ProblemKind::Internal,
            "the renewed signing certificate is not for the key this node made",
        ));
    }
    let info = enlace_certs::cert_info(&new_tls)?;
    if !info.uris.contains(&id.uri()) {
        return Err(Problem::new(
            ProblemKind::Internal,
            "the renewed TLS certificate does not name this node",
        ));
    }

    // Store: every new file written beside its old one, then each renamed over it.
    let files = [
        (&raw.tls_key_file, &keys.tls_key_pem, true),
        (&raw.tls_cert_file, &new_tls, false),
        (&raw.signing_key_file, &keys.signing_key_pem, true),
        (&raw.signing_cert_file, &new_signing, false),
    ];
    for (path, content, secret) in &files {
        write_new(path, content, *secret)?;
    }
    for (path, _, _) in &files {
        std::fs::rename(new_path(path), path).map_err(|e| io(path, e))?;
    }

    // TLS: peers check the chain and the node name, not a pinned certificate, so switch now.
    tls.set(new_tls, keys.tls_key_pem.clone());
    tls.rebuild(&trust)?;
    node.pool.reset().await;

    // Signing: peers verify with the certificates the configuration lists. Switch once this
    // node's own copy lists the new one (peers follow the same registry), and a moment later.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let listed = node.config.current().is_ok_and(|cfg| {
            cfg.nodes
                .iter()
                .any(|n| &n.id == id && n.signing_certificate == new_signing)
        });
        if listed || tokio::time::Instant::now() > deadline {
            if !listed {
                tracing::warn!(
                    "the new signing certificate is not in the configuration after 60 s; switching anyway"
                );
            }
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(raw.renewal.switch_grace_ms)).await;
    node.signing_key.replace(new_key);
    tracing::info!(node = %id, not_after = %info.not_after, "switched to the renewed certificates");
    Ok(true)
}

fn read(path: &Path) -> Result<String, Problem> {
    std::fs::read_to_string(path).map_err(|e| io(path, e))
}

fn io(path: &Path, e: std::io::Error) -> Problem {
    Problem::new(ProblemKind::Internal, format!("{}: {e}", path.display()))
}

fn new_path(path: &Path) -> std::path::PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".new");
    p.into()
}

/// Writes `content` to `path.new`, synced (private keys readable by the owner only).
fn write_new(path: &Path, content: &str, secret: bool) -> Result<(), Problem> {
    use std::io::Write as _;
    let target = new_path(path);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = secret;
    let mut f = options.open(&target).map_err(|e| io(&target, e))?;
    f.write_all(content.as_bytes())
        .map_err(|e| io(&target, e))?;
    f.sync_all().map_err(|e| io(&target, e))?;
    Ok(())
}

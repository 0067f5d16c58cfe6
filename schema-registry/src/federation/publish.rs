//! Issuing the signed global configuration: serial numbers, the registry's signing key and
//! certificate, and the channel long-polling nodes wait on.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use enlace_certs::{FederationCa, SigningKey};
use enlace_core::config::{GlobalConfig, SignedConfig};
use enlace_core::id::Instance;
use enlace_core::problem::{Problem, ProblemKind};

use crate::federation::{Registry, now};
use crate::store::Change;

/// The algorithm name written in [`SignedConfig::algorithm`].
pub const ALGORITHM: &str = "ed25519";

/// The registry's configuration signer: an Ed25519 key and its certificate from the CA.
pub struct Signer {
    key: SigningKey,
    cert_pem: String,
    not_after: time::OffsetDateTime,
    validity: time::Duration,
}

impl Signer {
    /// A fresh key, certified by the CA for `validity`. The key lives only in memory: a
    /// restarted registry simply certifies a new one.
    pub fn create(
        ca: &FederationCa,
        instance: &Instance,
        validity: time::Duration,
    ) -> Result<Signer, Problem> {
        let key = SigningKey::generate()?;
        let csr = enlace_certs::csr_for(key.to_pem(), &format!("Enlace registry {instance}"))?;
        let cert = ca.issue_registry_signing(&csr, instance, validity)?;
        Ok(Signer {
            key,
            cert_pem: cert.pem,
            not_after: cert.not_after,
            validity,
        })
    }

    fn needs_renewal(&self, now: time::OffsetDateTime) -> bool {
        self.not_after - now < self.validity / 3
    }

    /// The signing certificate (PEM).
    pub fn certificate(&self) -> &str {
        &self.cert_pem
    }

    /// The Ed25519 signature of arbitrary bytes (a tree head's signed text), with the
    /// certificate it verifies under.
    pub fn sign_bytes(&self, msg: &[u8]) -> (Vec<u8>, &str) {
        (self.key.sign(msg), &self.cert_pem)
    }

    pub fn sign(&self, config: &GlobalConfig) -> Result<SignedConfig, Problem> {
        let payload = serde_json::to_vec(config)
            .map_err(|e| Problem::new(ProblemKind::Internal, format!("configuration: {e}")))?;
        let signature = self.key.sign(&payload);
        Ok(SignedConfig {
            algorithm: ALGORITHM.into(),
            payload: B64.encode(&payload),
            signature: B64.encode(signature),
            signer_certificate: self.cert_pem.clone(),
        })
    }
}

/// The configuration currently served.
#[derive(Debug, Clone)]
pub struct Published {
    pub serial: u64,
    /// The [`SignedConfig`] as JSON.
    pub body: Arc<[u8]>,
    /// The CRL it carries, PEM.
    pub crl: String,
}

impl Published {
    pub fn empty() -> Published {
        Published {
            serial: 0,
            body: Arc::from(&b""[..]),
            crl: String::new(),
        }
    }
}

impl Registry {
    /// Issues the next configuration: serial + 1, fresh times, signed, stored, announced.
    pub async fn publish(&self) -> Result<(), Problem> {
        let mut signer = self.signer.lock().await;
        let issued_at = now();
        if signer.needs_renewal(issued_at) {
            *signer = Signer::create(&self.ca, &self.settings.instance, signer.validity)?;
            tracing::info!("renewed the configuration signing certificate");
        }
        let serial = self
            .store
            .setting("config.serial")?
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(0)
            + 1;
        let config = self.config_body(serial, issued_at)?;
        self.publishing(&config);
        let signed = signer.sign(&config)?;
        let crl = config.crl.clone();
        let body = serde_json::to_vec(&signed)
            .map_err(|e| Problem::new(ProblemKind::Internal, format!("configuration: {e}")))?;
        self.store.commit(Change {
            settings: vec![("config.serial", serial.to_string())],
            ..Change::default()
        })?;
        self.published.send_replace(Arc::new(Published {
            serial,
            body: Arc::from(body),
            crl,
        }));
        tracing::debug!(serial, "configuration issued");
        Ok(())
    }

    /// The configuration now served.
    pub fn current_config(&self) -> Arc<Published> {
        self.published.borrow().clone()
    }

    /// Waits until a configuration with serial above `after` is served, or `wait` passes.
    pub async fn wait_for_config(&self, after: u64, wait: std::time::Duration) -> Arc<Published> {
        let mut rx = self.published.subscribe();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let current = rx.borrow_and_update().clone();
            if current.serial > after {
                return current;
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => continue,
                _ => return current,
            }
        }
    }
}

//! The history of every node's signing certificates: each certificate a node has held, as the
//! signed configuration published it, is kept in the access log's database, so that an access
//! record or a log head signed before a renewal still verifies, with the key that was valid at
//! the time it states, after the node's current key has changed.
//!
//! A signature is accepted only with a certificate that chains to the federation CA, is not on
//! the current CRL, names the node, and was valid at the record's time; the node itself must
//! still be approved and unrevoked.

use std::collections::HashMap;

use enlace_core::config::GlobalConfig;
use enlace_core::id::NodeId;
use enlace_core::problem::{Problem, ProblemKind};
use rusqlite::params;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::access_log::{AccessLog, AccessLogStore, blocking, db};
use crate::federation::{now, rfc3339};
use crate::model::Approval;

/// One verified signing key and the period its certificate was valid.
#[derive(Debug, Clone)]
struct Window {
    not_before: i64,
    not_after: i64,
    key: Vec<u8>,
}

/// The verified signing keys of the nodes of one batch, each with its validity period.
#[derive(Debug, Default)]
pub(crate) struct BatchKeys {
    by_node: HashMap<String, Vec<Window>>,
}

impl BatchKeys {
    /// Whether `sig` over `msg` verifies with a key of `node` whose certificate was valid at
    /// `at` (RFC 3339): during a renewal the old and the new certificates are both valid.
    pub(crate) fn verifies(&self, node: &str, at: &str, msg: &[u8], sig: &[u8]) -> bool {
        let Ok(t) = OffsetDateTime::parse(at, &Rfc3339).map(|t| t.unix_timestamp()) else {
            return false;
        };
        self.by_node.get(node).is_some_and(|windows| {
            windows
                .iter()
                .filter(|w| w.not_before <= t && t <= w.not_after)
                .any(|w| enlace_certs::verify_ed25519(&w.key, msg, sig))
        })
    }

    /// Whether `node` had a valid signing certificate at `at`.
    pub(crate) fn had_key_at(&self, node: &str, at: &str) -> bool {
        let Ok(t) = OffsetDateTime::parse(at, &Rfc3339).map(|t| t.unix_timestamp()) else {
            return false;
        };
        self.by_node
            .get(node)
            .is_some_and(|ws| ws.iter().any(|w| w.not_before <= t && t <= w.not_after))
    }
}

/// A verified key, cached by certificate and CRL.
pub(crate) type KeyCache = std::sync::Mutex<HashMap<(String, String), Option<(i64, i64, Vec<u8>)>>>;

impl AccessLogStore {
    /// Remembers a node's signing certificate (once per serial).
    fn remember_certificate(
        &self,
        node: &str,
        info: &enlace_certs::CertInfo,
        pem: &str,
    ) -> Result<(), Problem> {
        self.write(|store| {
            store
                .connection()
                .execute(
                    "INSERT OR IGNORE INTO signing_certificates \
                     (node, serial, not_before, not_after, certificate, first_seen) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    params![
                        node,
                        info.serial_hex,
                        info.not_before.unix_timestamp(),
                        info.not_after.unix_timestamp(),
                        pem,
                        rfc3339(now()),
                    ],
                )
                .map_err(db)?;
            Ok(())
        })
    }

    /// Every signing certificate `node` has held, oldest first.
    fn certificates_of(&self, node: &str) -> Result<Vec<String>, Problem> {
        self.read(|conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT certificate FROM signing_certificates WHERE node = ?1 \
                     ORDER BY not_before",
                )
                .map_err(db)?;
            let rows = stmt
                .query_map([node], |r| r.get::<_, String>(0))
                .map_err(db)?;
            rows.collect::<Result<_, _>>().map_err(db)
        })
    }
}

/// Remembers the signing certificates of the nodes a configuration publishes (called by the
/// registry each time it issues one, see [`AccessLog::new`], so every certificate a node was
/// given is kept).
pub(crate) fn remember_signing_certificates(log: &AccessLogStore, config: &GlobalConfig) {
    for n in &config.nodes {
        let result = enlace_certs::cert_info(&n.signing_certificate).and_then(|info| {
            log.remember_certificate(&n.id.to_string(), &info, &n.signing_certificate)
        });
        if let Err(p) = result {
            tracing::error!(node = %n.id, problem = %p, "could not remember a signing certificate");
        }
    }
}

impl AccessLog {
    /// The verified signing keys, with their validity periods, of `nodes`: every certificate
    /// each has held (and its current one) that chains to the CA, is not on the current CRL and
    /// names it. A node that is unknown is not found; one that is not approved, or revoked, has
    /// none.
    pub(crate) async fn batch_signing_keys(&self, nodes: &[NodeId]) -> Result<BatchKeys, Problem> {
        let log = self.store.clone();
        let crl = self.registry.current_config().crl.clone();
        let crl_digest = enlace_description::sha256_hex(crl.as_bytes());
        let mut keys = BatchKeys::default();
        for node in nodes {
            let rec = self.registry.node(node)?;
            let (Some(current), Approval::Approved, false) =
                (rec.signing_certificate.clone(), &rec.state, rec.revoked)
            else {
                return Err(Problem::new(
                    ProblemKind::SignatureInvalid,
                    format!("node {node} has no valid signing certificate"),
                ));
            };
            let name = node.to_string();
            let mut pems = {
                let log = log.clone();
                let name = name.clone();
                blocking(move || log.certificates_of(&name)).await?
            };
            if !pems.contains(&current) {
                pems.push(current);
            }
            let mut windows = Vec::new();
            for pem in pems {
                if let Some((not_before, not_after, key)) =
                    self.verified_key(node, &pem, (&crl, &crl_digest))?
                {
                    windows.push(Window {
                        not_before,
                        not_after,
                        key,
                    });
                }
            }
            keys.by_node.insert(name, windows);
        }
        Ok(keys)
    }

    /// The key of a signing certificate of `node` if it chains to the CA, is not on `crl` and
    /// names the node, with its validity; cached by the certificate's and the CRL's digests
    /// (`crl` as `(pem, digest)`, the digest taken once by the caller).
    fn verified_key(
        &self,
        node: &NodeId,
        pem: &str,
        (crl, crl_digest): (&str, &str),
    ) -> Result<Option<(i64, i64, Vec<u8>)>, Problem> {
        let cache_key = (
            enlace_description::sha256_hex(pem.as_bytes()),
            crl_digest.to_string(),
        );
        let cache = &self.signing_keys;
        if let Some(hit) = cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&cache_key)
        {
            return Ok(hit.clone());
        }
        let trust =
            enlace_certs::TrustStore::new(&[self.registry.ca_pem().to_string()], Some(crl))?;
        let verified = enlace_certs::cert_info(pem).ok().and_then(|info| {
            // Checked at a moment of its validity as close to now as it gets (the CRL is
            // today's, and is refused at a time after its next update).
            let at = now().clamp(info.not_before, info.not_after);
            enlace_certs::verify_signer(&trust, pem, &node.uri(), at)
                .ok()
                .map(|key| {
                    (
                        info.not_before.unix_timestamp(),
                        info.not_after.unix_timestamp(),
                        key,
                    )
                })
        });
        let mut cache = cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() > 10_000 {
            cache.clear();
        }
        cache.insert(cache_key, verified.clone());
        Ok(verified)
    }

    /// The signing certificate `node` held at `at` that verifies, for evidence.
    pub(crate) async fn signing_certificate_at(
        &self,
        node: &NodeId,
        at: &str,
    ) -> Result<String, Problem> {
        let log = self.store.clone();
        let crl = self.registry.current_config().crl.clone();
        let crl_digest = enlace_description::sha256_hex(crl.as_bytes());
        let t = OffsetDateTime::parse(at, &Rfc3339)
            .map_err(|_| Problem::new(ProblemKind::InvalidRequest, "at: not RFC 3339"))?
            .unix_timestamp();
        let name = node.to_string();
        let mut pems = blocking(move || log.certificates_of(&name)).await?;
        if let Some(current) = self.registry.node(node)?.signing_certificate {
            pems.push(current);
        }
        for pem in pems.into_iter().rev() {
            if let Some((nb, na, _)) = self.verified_key(node, &pem, (&crl, &crl_digest))?
                && nb <= t
                && t <= na
            {
                return Ok(pem);
            }
        }
        Err(Problem::new(
            ProblemKind::NotFound,
            format!("no signing certificate of {node} valid at {at} is known"),
        ))
    }
}

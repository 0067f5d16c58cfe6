//! The registry's operations on the access log: ingesting signed access records (each
//! signature checked against the key its node held at the record's time), signing tree heads,
//! and the proofs an admin or a person may read.

use std::sync::Arc;

use base64::Engine;
use enlace_core::access::SignedAccessRecord;
use enlace_core::id::{NodeId, ServiceId};
use enlace_core::merkle::{self, ConsistencyProof, SignedTreeHead};
use enlace_core::problem::{Problem, ProblemKind};

pub use enlace_core::evidence::PublishedTreeHead;

use super::signing_history::{KeyCache, remember_signing_certificates};
use super::{
    AccessLogStore, Found, Ingested, MAX_RECORDS_PER_REQUEST, RecordProof, blocking, db, not_found,
};
use crate::federation::{Actor, Registry, now, rfc3339};

/// Verifies each record's signature with the key of its node that was valid at the record's
/// time, on every core when the batch is large.
fn verify_signatures(
    records: &[SignedAccessRecord],
    keys: &crate::access_log::signing_history::BatchKeys,
) -> Result<(), Problem> {
    let check = |chunk: &[SignedAccessRecord]| -> Result<(), Problem> {
        for signed in chunk {
            let r = &signed.record;
            if !keys.had_key_at(&r.node, &r.at) {
                return Err(Problem::new(
                    ProblemKind::SignatureInvalid,
                    format!(
                        "node {} had no valid signing certificate at {}",
                        r.node, r.at
                    ),
                )
                .with("message_id", &r.message_id));
            }
            let ok = signed
                .signature()
                .is_some_and(|sig| keys.verifies(&r.node, &r.at, &r.signed_bytes(), &sig));
            if !ok {
                return Err(Problem::new(
                    ProblemKind::SignatureInvalid,
                    format!(
                        "the access record's signature does not verify with {}'s signing key",
                        r.node
                    ),
                )
                .with("message_id", &r.message_id));
            }
        }
        Ok(())
    };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    if records.len() < 64 || threads < 2 {
        return check(records);
    }
    let chunk = records.len().div_ceil(threads);
    std::thread::scope(|s| {
        let handles: Vec<_> = records
            .chunks(chunk)
            .map(|c| s.spawn(move || check(c)))
            .collect();
        for h in handles {
            h.join()
                .map_err(|_| Problem::new(ProblemKind::Internal, "a verifier thread panicked"))??;
        }
        Ok(())
    })
}

/// The access log as the registry serves it: its store, and the registry, whose records say which
/// signing key each node held when and whose configuration key signs the tree heads.
pub struct AccessLog {
    pub(crate) registry: Arc<Registry>,
    pub(crate) store: Arc<AccessLogStore>,
    /// Verified node signing keys (see [`crate::access_log::signing_history`]).
    pub(crate) signing_keys: KeyCache,
}

impl AccessLog {
    /// The access log kept in `store` for `registry`, which from now on hands it the signing
    /// certificates of every configuration it issues (so that the history is complete, this is
    /// made before the registry's first configuration).
    pub fn new(registry: Arc<Registry>, store: AccessLogStore) -> Arc<AccessLog> {
        let store = Arc::new(store);
        let history = store.clone();
        registry.on_publish(Box::new(move |config| {
            remember_signing_certificates(&history, config)
        }));
        Arc::new(AccessLog {
            registry,
            store,
            signing_keys: Default::default(),
        })
    }

    /// The log's storage.
    pub fn store(&self) -> &AccessLogStore {
        &self.store
    }

    /// Verifies and ingests signed access records: each must validate, be signed by the node it
    /// names with the signing key that node held at the record's time, and be about a service of
    /// that node's member. One bad record refuses the request and nothing is ingested.
    pub async fn ingest(&self, records: Vec<SignedAccessRecord>) -> Result<Ingested, Problem> {
        let log = self.store.clone();
        if records.len() > MAX_RECORDS_PER_REQUEST {
            return Err(Problem::new(
                ProblemKind::BodyTooLarge,
                format!("at most {MAX_RECORDS_PER_REQUEST} records per request"),
            )
            .with("limit", MAX_RECORDS_PER_REQUEST));
        }
        let latest_allowed = now() + time::Duration::minutes(5);
        let mut nodes: Vec<NodeId> = Vec::new();
        for signed in &records {
            let r = &signed.record;
            r.validate()?;
            let node: NodeId = r.node.parse()?;
            let service: ServiceId = r.provider_service.parse()?;
            if service.member() != &node.member {
                return Err(Problem::new(
                    ProblemKind::Forbidden,
                    format!(
                        "node {node} cannot emit access records about {service}, a service of another member"
                    ),
                )
                .with("message_id", &r.message_id));
            }
            let at =
                time::OffsetDateTime::parse(&r.at, &time::format_description::well_known::Rfc3339)
                    .map_err(|_| Problem::new(ProblemKind::InvalidRequest, "at: not RFC 3339"))?;
            if at > latest_allowed {
                return Err(Problem::new(
                    ProblemKind::InvalidRequest,
                    format!("the record's time {} is in the future", r.at),
                )
                .with("message_id", &r.message_id));
            }
            if !nodes.contains(&node) {
                nodes.push(node);
            }
        }
        let keys = self.batch_signing_keys(&nodes).await?;
        blocking(move || {
            verify_signatures(&records, &keys)?;
            log.ingest(&records)
        })
        .await
    }

    /// Signs a tree head of the current tree when it grew since the latest one (or none was
    /// signed yet), and returns the latest head. Called on a schedule; queries read the latest.
    pub async fn sign_tree_head(&self) -> Result<PublishedTreeHead, Problem> {
        let log = self.store.clone();
        let _one = log.signing.lock().await;
        let (latest, (size, root)) = {
            let log = log.clone();
            blocking(move || Ok((log.latest_head(), log.current()?))).await?
        };
        if let Some(latest) = latest
            && latest.tree_head.tree_size == size
        {
            return Ok(latest);
        }
        let timestamp = rfc3339(now());
        let root_hash_hex = hex::encode(root);
        let text = merkle::tree_head_text(size, &root_hash_hex, &timestamp);
        let (signature, signer_certificate) = {
            let signer = self.registry.signer.lock().await;
            let (sig, cert) = signer.sign_bytes(text.as_bytes());
            (sig, cert.to_string())
        };
        let head = PublishedTreeHead {
            tree_head: SignedTreeHead {
                tree_size: size,
                root_hash_hex,
                timestamp,
                signature_b64: base64::engine::general_purpose::STANDARD.encode(signature),
                signer: enlace_certs::registry_uri(self.registry.instance()),
            },
            signer_certificate,
        };
        let stored = head.clone();
        let store = log.clone();
        blocking(move || store.store_head(&stored)).await?;
        tracing::debug!(tree_size = size, "signed an access log tree head");
        Ok(head)
    }

    /// The latest scheduled signed tree head (signed now only if none was ever signed).
    pub async fn current_tree_head(&self) -> Result<PublishedTreeHead, Problem> {
        match self.store.latest_head() {
            Some(h) => Ok(h),
            None => self.sign_tree_head().await,
        }
    }

    /// A stored signed tree head of `size` leaves.
    pub async fn tree_head_at(&self, size: u64) -> Result<PublishedTreeHead, Problem> {
        let log = self.store.clone();
        blocking(move || log.head_at(size)).await?.ok_or_else(|| {
            Problem::new(
                ProblemKind::NotFound,
                format!("no tree head was signed for size {size}"),
            )
            .with("size", size)
        })
    }

    /// The records with `message_id` (narrowed to `node`'s if given) that `actor` may read: the
    /// federation admin every record, a member admin those its member consumed or provided.
    /// Whose record it is is checked before anything about the tree, so that a caller learns
    /// nothing of records it may not read.
    pub(crate) async fn readable_record(
        &self,
        actor: &Actor,
        message_id: &str,
        node: Option<&str>,
    ) -> Result<Found, Problem> {
        self.find_one(message_id, node, |f| match actor {
            Actor::FederationAdmin => true,
            Actor::MemberAdmin(m) => {
                m.to_string() == f.record.record.consumer_member
                    || f.record
                        .record
                        .provider_service
                        .parse::<ServiceId>()
                        .is_ok_and(|s| s.member() == m)
            }
        })
        .await
    }

    /// The one record with `message_id` (narrowed to `node`'s if given) that `may_read` lets the
    /// caller see: none is not found, whatever else exists; several (the id logged by several
    /// nodes) must be told apart with `node`.
    pub(crate) async fn find_one(
        &self,
        message_id: &str,
        node: Option<&str>,
        may_read: impl Fn(&Found) -> bool,
    ) -> Result<Found, Problem> {
        let log = self.store.clone();
        let (id, n) = (message_id.to_string(), node.map(String::from));
        let found = blocking(move || log.find(&id, n.as_deref())).await?;
        let mut mine: Vec<Found> = found.into_iter().filter(|f| may_read(f)).collect();
        match mine.len() {
            0 => Err(not_found(message_id)),
            1 => Ok(mine.remove(0)),
            _ => Err(Problem::new(
                ProblemKind::InvalidRequest,
                format!("several nodes logged message id {message_id}: name one with `node`"),
            )
            .with("message_id", message_id)),
        }
    }

    /// A record and its inclusion proof in the tree of `size` leaves (the latest signed head's
    /// size when `None`), for an admin who may read it (see [`AccessLog::readable_record`]).
    pub async fn access_record_proof(
        &self,
        actor: &Actor,
        message_id: String,
        node: Option<String>,
        size: Option<u64>,
    ) -> Result<RecordProof, Problem> {
        let found = self
            .readable_record(actor, &message_id, node.as_deref())
            .await?;
        self.record_proof(found, size).await
    }

    /// A found record's inclusion proof in the tree of `size` leaves (the latest head's size
    /// when `None`).
    pub(crate) async fn record_proof(
        &self,
        found: Found,
        size: Option<u64>,
    ) -> Result<RecordProof, Problem> {
        let log = self.store.clone();
        let size = match size {
            Some(s) => s,
            None => self.current_tree_head().await?.tree_head.tree_size,
        };
        let idx = found.idx;
        let proof = blocking(move || log.inclusion_proof(idx, size)).await?;
        Ok(RecordProof {
            record: serde_json::from_slice(&found.bytes).map_err(db)?,
            proof,
        })
    }

    /// The consistency proof between two tree sizes.
    pub async fn consistency(&self, from: u64, to: u64) -> Result<ConsistencyProof, Problem> {
        let log = self.store.clone();
        blocking(move || log.consistency(from, to)).await
    }
}

/// Signs a tree head every `every` when the log grew, until aborted.
pub async fn sign_tree_heads(log: Arc<AccessLog>, every: std::time::Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(p) = log.sign_tree_head().await
            && p.kind != ProblemKind::LogUnavailable
        {
            // (a storage failure is said by `AccessLogStore::wrote`, once per interval)
            tracing::error!(problem = %p, "could not sign an access log tree head");
        }
    }
}

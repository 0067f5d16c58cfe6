//! Nodes' anchored message-log heads: verified against the node's signing key of the head's
//! time, stored as leaves of the access log's Merkle tree in the same transaction that checks
//! them against the heads already anchored, listed per node, and proved included in a signed
//! tree head.

use enlace_core::evidence::{LOG_HEAD_EVIDENCE_FORMAT, LogHeadEvidence};
use enlace_core::id::NodeId;
use enlace_core::problem::{Problem, ProblemKind};

use crate::access_log::{AccessLog, blocking};
use crate::model::{LogHeadRecord, kind};

impl AccessLog {
    /// Anchors a node's signed log head: the signature must verify with the node's signing
    /// certificate valid at the head's time, and a head must never contradict one already
    /// anchored (same sequence number, other hash) or go backwards. The head is a leaf of the
    /// access log's tree from the moment it is anchored (one transaction).
    pub async fn anchor_log_head(&self, head: LogHeadRecord) -> Result<(), Problem> {
        use base64::Engine;
        let node: NodeId = head.node.parse()?;
        let hash_ok =
            head.hash_hex.len() == 64 && head.hash_hex.bytes().all(|b| b.is_ascii_hexdigit());
        let at_ok = head.at.len() <= 64
            && time::OffsetDateTime::parse(
                &head.at,
                &time::format_description::well_known::Rfc3339,
            )
            .is_ok();
        if !hash_ok || !at_ok {
            return Err(Problem::new(
                ProblemKind::InvalidRequest,
                "hash_hex: 64 hex characters; at: an RFC 3339 time",
            ));
        }
        let keys = self.batch_signing_keys(std::slice::from_ref(&node)).await?;
        let sig = base64::engine::general_purpose::STANDARD
            .decode(&head.signature_b64)
            .map_err(|_| {
                Problem::new(ProblemKind::SignatureInvalid, "signature_b64 is not base64")
            })?;
        let verified = keys.verifies(&head.node, &head.at, head.signed_text().as_bytes(), &sig);
        if !verified {
            return Err(Problem::new(
                ProblemKind::SignatureInvalid,
                format!("the head's signature does not verify with {node}'s signing key"),
            ));
        }
        let log = self.store.clone();
        blocking(move || log.anchor_log_head(&head)).await?;
        Ok(())
    }

    /// A node's anchored heads, oldest first.
    pub fn log_heads(&self, node: &NodeId) -> Result<Vec<LogHeadRecord>, Problem> {
        self.store.log_heads(&node.to_string())
    }

    /// An anchored head with its inclusion proof against the latest signed tree head.
    pub async fn log_head_evidence(
        &self,
        node: &NodeId,
        seq: u64,
    ) -> Result<LogHeadEvidence, Problem> {
        let tree_head = self.current_tree_head().await?;
        let log = self.store.clone();
        let (name, size) = (node.to_string(), tree_head.tree_head.tree_size);
        let (head, proof) = blocking(move || log.log_head_proof(&name, seq, size)).await?;
        Ok(LogHeadEvidence {
            format: LOG_HEAD_EVIDENCE_FORMAT.into(),
            head,
            proof,
            tree_head,
            federation_ca: self.registry.ca_pem().to_string(),
            crl: self.registry.current_config().crl.clone(),
        })
    }

    /// Heads anchored before they were kept in the access log (as registry documents) are
    /// appended to it once, at start, so every anchored head is a leaf.
    pub(crate) fn import_legacy_log_heads(&self) -> Result<(), Problem> {
        let mut old: Vec<LogHeadRecord> = self.registry.list(kind::LOG_HEAD)?;
        if old.is_empty() {
            return Ok(());
        }
        old.sort_by(|a, b| a.node.cmp(&b.node).then(a.seq.cmp(&b.seq)));
        let log = &self.store;
        let mut imported = 0;
        for head in &old {
            match log.anchor_log_head(head) {
                Ok(true) => imported += 1,
                Ok(false) => {}
                Err(p) => {
                    tracing::warn!(node = %head.node, seq = head.seq, problem = %p, "an old anchored head was not imported")
                }
            }
        }
        if imported > 0 {
            tracing::info!(imported, "imported anchored log heads into the access log");
        }
        Ok(())
    }
}

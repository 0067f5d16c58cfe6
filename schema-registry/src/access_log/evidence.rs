//! Evidence to keep and check offline: an access record with its inclusion proof, the signed
//! tree head it leads to, the node's signing certificate of the record's time, the CA and the
//! CRL (`GET /v1/access-log/evidence`); two signed heads and the consistency proof between them
//! (`GET /v1/access-log/evidence/consistency`). `enlace audit verify --evidence FILE` checks
//! either with no network.

use enlace_core::evidence::{
    ACCESS_EVIDENCE_FORMAT, AccessEvidence, CONSISTENCY_EVIDENCE_FORMAT, ConsistencyEvidence,
};
use enlace_core::id::NodeId;
use enlace_core::problem::Problem;

use crate::access_log::{AccessLog, Found, blocking, db};

impl AccessLog {
    /// The evidence of a record the caller may read (found by [`AccessLog::readable_record`] or
    /// [`crate::citizen::Citizens::record`]), against the latest signed tree head.
    pub(crate) async fn access_evidence(&self, found: Found) -> Result<AccessEvidence, Problem> {
        let tree_head = self.current_tree_head().await?;
        let node: NodeId = found.record.record.node.parse()?;
        let node_signing_certificate = self
            .signing_certificate_at(&node, &found.record.record.at)
            .await?;
        let log = self.store.clone();
        let (idx, size) = (found.idx, tree_head.tree_head.tree_size);
        let proof = blocking(move || log.inclusion_proof(idx, size)).await?;
        let record = found.record;
        Ok(AccessEvidence {
            format: ACCESS_EVIDENCE_FORMAT.into(),
            record,
            proof,
            tree_head,
            node_signing_certificate,
            federation_ca: self.registry.ca_pem().to_string(),
            crl: self.registry.current_config().crl.clone(),
        })
    }

    /// Two signed heads and the consistency proof between them.
    pub async fn consistency_evidence(
        &self,
        from: u64,
        to: u64,
    ) -> Result<ConsistencyEvidence, Problem> {
        let first = self.tree_head_at(from).await?;
        let second = self.tree_head_at(to).await?;
        let proof = self.consistency(from, to).await?;
        if proof.tree_size_1 != from || proof.tree_size_2 != to {
            return Err(db("a consistency proof of other sizes"));
        }
        Ok(ConsistencyEvidence {
            format: CONSISTENCY_EVIDENCE_FORMAT.into(),
            first,
            second,
            proof,
            federation_ca: self.registry.ca_pem().to_string(),
            crl: self.registry.current_config().crl.clone(),
        })
    }
}

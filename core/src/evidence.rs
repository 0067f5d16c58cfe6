//! Saved evidence from the access log, for checking offline: a record with its inclusion proof,
//! the signed tree head it leads to, the certificates and the CRL to check both signatures; or
//! two signed heads with the consistency proof between them. Pure: the checks are in
//! `enlace-node`'s `access::audit` (they need `enlace-certs`).

use serde::{Deserialize, Serialize};

use crate::access::SignedAccessRecord;
use crate::loghead::SignedHead;
use crate::merkle::{ConsistencyProof, InclusionProof, SignedTreeHead};

/// The `format` of [`AccessEvidence`].
pub const ACCESS_EVIDENCE_FORMAT: &str = "enlace-access-evidence-v1";
/// The `format` of [`ConsistencyEvidence`].
pub const CONSISTENCY_EVIDENCE_FORMAT: &str = "enlace-consistency-evidence-v1";
/// The `format` of [`LogHeadEvidence`].
pub const LOG_HEAD_EVIDENCE_FORMAT: &str = "enlace-log-head-evidence-v1";

/// A signed tree head as served: the head and the certificate of the key that signed it (the
/// registry's configuration signer at that time).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishedTreeHead {
    pub tree_head: SignedTreeHead,
    pub signer_certificate: String,
}

/// One access record and everything needed to check, offline, that the emitting node signed
/// it and that it is in the log the registry signed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessEvidence {
    pub format: String,
    /// The record as stored; its canonical JSON is the leaf's entry.
    pub record: SignedAccessRecord,
    pub proof: InclusionProof,
    pub tree_head: PublishedTreeHead,
    /// The emitting node's signing certificate that was valid at the record's time.
    pub node_signing_certificate: String,
    /// The federation CA as the registry served it (the verifier uses its own copy) and the
    /// CRL when the evidence was saved.
    pub federation_ca: String,
    pub crl: String,
}

/// Two signed heads and the proof that the later tree extends the earlier one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsistencyEvidence {
    pub format: String,
    pub first: PublishedTreeHead,
    pub second: PublishedTreeHead,
    pub proof: ConsistencyProof,
    pub federation_ca: String,
    pub crl: String,
}

/// A node's anchored message-log head and its inclusion in the access log's tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogHeadEvidence {
    pub format: String,
    /// The head as anchored; its canonical JSON is the leaf's entry.
    pub head: SignedHead,
    pub proof: InclusionProof,
    pub tree_head: PublishedTreeHead,
    pub federation_ca: String,
    pub crl: String,
}

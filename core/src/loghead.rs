//! A node's signed message-log head: the sequence number and hash of its chain at a moment,
//! signed with the node's Ed25519 key and anchored in the registry.

use serde::{Deserialize, Serialize};

/// A signed chain head as sent to the registry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedHead {
    /// The node whose log this is.
    pub node: String,
    /// Sequence number of the last record covered.
    pub seq: u64,
    /// Hash of that record, hex.
    pub hash_hex: String,
    /// When the head was signed, RFC 3339 UTC.
    pub at: String,
    /// Ed25519 signature over [`SignedHead::signed_text`], base64.
    pub signature_b64: String,
}

impl SignedHead {
    /// The exact bytes signed: `enlace-log-head-v1\n{node}\n{seq}\n{hash_hex}\n{at}`.
    pub fn signed_text(&self) -> String {
        head_text(&self.node, self.seq, &self.hash_hex, &self.at)
    }
}

/// The text a head's signature covers.
pub fn head_text(node: &str, seq: u64, hash_hex: &str, at: &str) -> String {
    format!("enlace-log-head-v1\n{node}\n{seq}\n{hash_hex}\n{at}")
}

//! A node's signed message-log head: the sequence number and hash of its chain at a moment,
//! signed with the node's Ed25519 key and anchored in the registry. One type for the node that
//! signs it, the registry that stores it, and whoever checks an evidence bundle.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// First line of the signed head text.
pub const HEAD_FORMAT: &str = "enlace-log-head-v1";

/// A signed chain head as sent to the registry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedHead {
    /// The node whose log this is.
    pub node: String,
    /// Sequence number of the last record covered.
    pub seq: u64,
    /// Lower-case hex of the chain hash of record `seq`.
    pub hash_hex: String,
    /// When the head was signed, RFC 3339 UTC, exactly as signed.
    pub at: String,
    /// Standard base64 of the Ed25519 signature over [`SignedHead::signed_text`].
    pub signature_b64: String,
}

impl SignedHead {
    /// Signs `(seq, hash)` of `node`'s log now with `sign` (the node's Ed25519 key:
    /// `|msg| key.sign(msg)`).
    pub fn sign(
        node: &str,
        seq: u64,
        hash: &[u8; 32],
        sign: impl FnOnce(&[u8]) -> Vec<u8>,
    ) -> SignedHead {
        let at = OffsetDateTime::now_utc()
            .format(&Rfc3339)
            .expect("the current time formats as RFC 3339");
        let mut head = SignedHead {
            node: node.to_string(),
            seq,
            hash_hex: hex::encode(hash),
            at,
            signature_b64: String::new(),
        };
        head.signature_b64 = B64.encode(sign(head.signed_text().as_bytes()));
        head
    }

    /// The exact bytes signed: `enlace-log-head-v1\n{node}\n{seq}\n{hash_hex}\n{at}`.
    pub fn signed_text(&self) -> String {
        head_text(&self.node, self.seq, &self.hash_hex, &self.at)
    }

    /// Whether the signature holds, checked by `verify(message, signature)` (Ed25519 with the
    /// node's public key); a signature that is not base64 does not.
    pub fn verify(&self, verify: impl FnOnce(&[u8], &[u8]) -> bool) -> bool {
        let Ok(sig) = B64.decode(&self.signature_b64) else {
            return false;
        };
        verify(self.signed_text().as_bytes(), &sig)
    }
}

/// The text a head's signature covers.
pub fn head_text(node: &str, seq: u64, hash_hex: &str, at: &str) -> String {
    format!("{HEAD_FORMAT}\n{node}\n{seq}\n{hash_hex}\n{at}")
}

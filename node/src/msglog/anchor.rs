//! Signed log heads: the node's signature over `(seq, hash)`, sent to the registry as anchors.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use enlace_certs::{SigningKey, verify_ed25519};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// First line of the signed head text.
pub const HEAD_FORMAT: &str = "enlace-log-head-v1";

/// A node's Ed25519 signature over its log head.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedHead {
    /// The node id.
    pub node: String,
    pub seq: u64,
    /// Lower-case hex of the chain hash of record `seq`.
    pub hash_hex: String,
    /// When it was signed, RFC 3339 UTC, exactly as signed.
    pub at: String,
    /// Standard base64 of the 64-byte Ed25519 signature of [`SignedHead::signed_text`].
    pub signature_b64: String,
}

impl SignedHead {
    /// Signs `(seq, hash)` of `node`'s log now.
    pub fn sign(key: &SigningKey, node: &str, seq: u64, hash: &[u8; 32]) -> SignedHead {
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
        head.signature_b64 = B64.encode(key.sign(head.signed_text().as_bytes()));
        head
    }

    /// `enlace-log-head-v1\n{node}\n{seq}\n{hash_hex}\n{at}`, the text that is signed.
    pub fn signed_text(&self) -> String {
        format!(
            "{HEAD_FORMAT}\n{}\n{}\n{}\n{}",
            self.node, self.seq, self.hash_hex, self.at
        )
    }

    /// Whether the signature is valid for the 32-byte Ed25519 `public_key`.
    pub fn verify(&self, public_key: &[u8]) -> bool {
        let Ok(sig) = B64.decode(&self.signature_b64) else {
            return false;
        };
        verify_ed25519(public_key, self.signed_text().as_bytes(), &sig)
    }
}

impl From<SignedHead> for enlace_core::loghead::SignedHead {
    fn from(h: SignedHead) -> Self {
        enlace_core::loghead::SignedHead {
            node: h.node,
            seq: h.seq,
            hash_hex: h.hash_hex,
            at: h.at,
            signature_b64: h.signature_b64,
        }
    }
}

impl From<enlace_core::loghead::SignedHead> for SignedHead {
    fn from(h: enlace_core::loghead::SignedHead) -> Self {
        SignedHead {
            node: h.node,
            seq: h.seq,
            hash_hex: h.hash_hex,
            at: h.at,
            signature_b64: h.signature_b64,
        }
    }
}

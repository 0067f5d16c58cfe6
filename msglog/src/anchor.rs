//! Signed log heads: the node's signature over `(seq, hash)`, sent to the registry as anchors.
//! The head is core's [`SignedHead`], one type for node, registry and evidence; here it meets
//! the node's key.

use enlace_certs::{SigningKey, verify_ed25519};
pub use enlace_core::loghead::{HEAD_FORMAT, SignedHead};

/// Signs `(seq, hash)` of `node`'s log now with the node's signing key.
pub fn sign_head(key: &SigningKey, node: &str, seq: u64, hash: &[u8; 32]) -> SignedHead {
    SignedHead::sign(node, seq, hash, |msg| key.sign(msg))
}

/// Whether `head`'s signature is valid for the 32-byte Ed25519 `public_key`.
pub fn head_verifies(head: &SignedHead, public_key: &[u8]) -> bool {
    head.verify(|msg, sig| verify_ed25519(public_key, msg, sig))
}

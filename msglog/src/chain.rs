//! The hash-chain construction shared by the writer, the verifier and offline evidence.

use sha2::{Digest, Sha256};

/// Domain-separation prefix of every chain hash (17 bytes, NUL-terminated).
pub const DOMAIN: &[u8] = b"enlace-msglog-v1\0";

/// The predecessor of record 1: 32 zero bytes.
pub const GENESIS: [u8; 32] = [0; 32];

/// `SHA-256(canonical bytes)` of one record.
pub fn record_digest(canonical: &[u8]) -> [u8; 32] {
    Sha256::digest(canonical).into()
}

/// `SHA-256(DOMAIN || u64_be(seq) || prev || record_digest)`: the chain hash of record `seq`.
pub fn chain_hash(seq: u64, prev: &[u8; 32], record_digest: &[u8; 32]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(DOMAIN);
    h.update(seq.to_be_bytes());
    h.update(prev);
    h.update(record_digest);
    h.finalize().into()
}

/// Reads a 32-byte hash from a blob, `None` when the length is wrong.
pub(crate) fn hash32(bytes: &[u8]) -> Option<[u8; 32]> {
    bytes.try_into().ok()
}

/// Reads a 32-byte hash from lower-case or upper-case hex.
pub(crate) fn hash_from_hex(s: &str) -> Option<[u8; 32]> {
    hex::decode(s).ok().and_then(|b| hash32(&b))
}

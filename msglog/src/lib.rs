//! The node's message log: an append-only, hash-chained SQLite log, group-committed.
//!
//! Every request and response the node sends, receives or refuses is appended as a [`Record`]
//! before the response is released. [`MessageLog::append`] resolves only once the record's
//! transaction is committed with `synchronous=FULL` in WAL mode, i.e. fsynced; one writer
//! thread commits everything queued at that moment in a single transaction (group commit).
//!
//! # The chain
//!
//! A record is stored as its canonical bytes: `serde_json` of [`Record`] (fields in declaration
//! order, `None` as `null`, `at` as RFC 3339 UTC, `body` as standard base64). Row `n` (the first
//! row is 1) carries
//!
//! ```text
//! record_digest(n) = SHA-256(canonical bytes of record n)
//! hash(n)          = SHA-256("enlace-msglog-v1\0" || u64_be(n) || hash(n-1) || record_digest(n))
//! hash(0)          = 32 zero bytes (genesis)
//! ```
//!
//! The input after the 17-byte prefix has a fixed length (8 + 32 + 32 bytes), so no two
//! different (position, predecessor, record) triples hash alike. Chaining the record's digest
//! rather than its bytes lets [`Evidence`] prove that a record precedes a signed head by
//! listing only the digests of the records in between, not their contents.
//!
//! # Signed heads
//!
//! [`MessageLog::sign_head`] signs, with the node's Ed25519 signing key, the UTF-8 text
//!
//! ```text
//! enlace-log-head-v1\n{node}\n{seq}\n{hash_hex}\n{at}
//! ```
//!
//! (`hash_hex` lower-case hex of `hash(seq)`, `at` RFC 3339 UTC, no trailing newline), stores
//! the [`SignedHead`] in the log's `anchors` table and returns it for the relay to send to the
//! registry. A head held by the registry pins the whole prefix of the log up to `seq`.
//!
//! # Retention
//!
//! [`MessageLog::prune`] deletes the oldest records (always a prefix of the chain) and stores
//! `(seq, hash)` of the last deleted one as the checkpoint; the remaining records verify from
//! it exactly as the first ones verify from genesis.
//!
//! # The outbox
//!
//! The provider node's signed access records wait in the same file ([`outbox`]), each
//! committed in the transaction of the log record that closes its exchange, until the shipper
//! has delivered them to the registry.

#![forbid(unsafe_code)]

mod anchor;
mod chain;
mod evidence;
pub mod outbox;
mod record;
mod verify;
mod writer;

#[cfg(test)]
mod tests;

pub use anchor::{HEAD_FORMAT, SignedHead, head_verifies, sign_head};
pub use chain::{DOMAIN, GENESIS, chain_hash, record_digest};
pub use evidence::{
    EVIDENCE_FORMAT, Evidence, EvidenceEntry, HeadProof, MAX_PROOF_RECORDS, export,
};
pub use record::{Record, RecordKind};
pub use verify::{
    HeadFailure, VerifyReport, received_since, stored_heads, usage_counts, verify_file,
};
pub use writer::{Appended, Extras, LogOptions, MessageLog, Pruned, SINGLE_USE_PERIOD, Usage};

use enlace_core::problem::Problem;

/// An internal failure of the message log (I/O, SQLite), caused by this node.
fn internal(detail: impl std::fmt::Display) -> Problem {
    Problem::internal(format!("message log: {detail}"))
}

//! The access log's Merkle tree (RFC 9162 §2.1): hashing, inclusion and consistency proofs,
//! their verification, and the signed tree head. Pure: no I/O, no keys.
//!
//! Hashes are SHA-256. A leaf hash is `SHA-256(0x00 || entry)`, an interior node
//! `SHA-256(0x01 || left || right)`, the tree of no leaves `SHA-256("")`, and a tree of `n > 1`
//! leaves splits at the largest power of two smaller than `n`.
//!
//! Proofs are generated over [`TreeHashes`], so the same code serves an in-memory tree in a test
//! and the registry's SQLite tree, which answers each subtree from a few stored nodes. The
//! verifiers follow RFC 9162 §2.1.3.2 and §2.1.4.2 step by step.
//!
//! What a proof does not bind: an inclusion or consistency proof is checked against a root and a
//! size; a proof for one size can verify for another size whose tree has the same shape along the
//! path. The size is bound to the root by the signed tree head, so verifiers take both from one
//! [`SignedTreeHead`] whose signature they have checked.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A SHA-256 hash: a leaf hash, a node hash or a tree root.
pub type Hash = [u8; 32];

/// `SHA-256(0x00 || entry)`: the hash of one log entry as a leaf.
pub fn leaf_hash(entry: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0x00]);
    h.update(entry);
    h.finalize().into()
}

/// `SHA-256(0x01 || left || right)`: an interior node.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([0x01]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The root of the tree of no leaves: `SHA-256("")`.
pub fn empty_root() -> Hash {
    Sha256::digest(b"").into()
}

/// The largest power of two strictly smaller than `n` (`n > 1`): where RFC 9162 splits a tree.
pub fn split(n: u64) -> u64 {
    debug_assert!(n > 1);
    1 << (63 - (n - 1).leading_zeros())
}

/// The Merkle Tree Hash of a list of leaf hashes, computed from all of them: the reference
/// definition, for tests and small trees.
pub fn root(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => empty_root(),
        1 => leaves[0],
        n => {
            let k = split(n as u64) as usize;
            node_hash(&root(&leaves[..k]), &root(&leaves[k..]))
        }
    }
}

/// A source of the hashes of one tree: its leaves and the root of any range of them.
pub trait TreeHashes {
    /// The hash of leaf `i`.
    fn leaf(&self, i: u64) -> Hash;
    /// The Merkle Tree Hash of leaves `[start, end)`.
    fn subtree(&self, start: u64, end: u64) -> Hash;
}

/// An in-memory tree: the leaf hashes themselves. Each subtree is computed from its leaves, so
/// this suits tests and small trees.
impl TreeHashes for [Hash] {
    fn leaf(&self, i: u64) -> Hash {
        self[i as usize]
    }
    fn subtree(&self, start: u64, end: u64) -> Hash {
        root(&self[start as usize..end as usize])
    }
}

/// The inclusion proof of leaf `index` in the tree of the first `size` leaves: RFC 9162
/// §2.1.3.1 `PATH(m, D[n])`, from the leaf's sibling up to the root's children. `None` when
/// `index >= size`.
pub fn inclusion_proof<S: TreeHashes + ?Sized>(
    src: &S,
    index: u64,
    size: u64,
) -> Option<Vec<Hash>> {
    if index >= size {
        return None;
    }
    let mut proof = Vec::new();
    path(src, index, 0, size, &mut proof);
    Some(proof)
}

/// `PATH(m, D[start:end])`, appended to `out` (deepest sibling first).
fn path<S: TreeHashes + ?Sized>(src: &S, m: u64, start: u64, end: u64, out: &mut Vec<Hash>) {
    let n = end - start;
    if n <= 1 {
        return;
    }
    let k = split(n);
    if m < k {
        path(src, m, start, start + k, out);
        out.push(src.subtree(start + k, end));
    } else {
        path(src, m - k, start + k, end, out);
        out.push(src.subtree(start, start + k));
    }
}

/// The consistency proof between the trees of the first `size1` and `size2` leaves: RFC 9162
/// §2.1.4.1 `PROOF(m, D[n])`. Empty when `size1` is 0 or equals `size2`; `None` when
/// `size1 > size2`.
pub fn consistency_proof<S: TreeHashes + ?Sized>(
    src: &S,
    size1: u64,
    size2: u64,
) -> Option<Vec<Hash>> {
    if size1 > size2 {
        return None;
    }
    let mut proof = Vec::new();
    if size1 > 0 && size1 < size2 {
        subproof(src, size1, 0, size2, true, &mut proof);
    }
    Some(proof)
}

/// `SUBPROOF(m, D[start:end], b)`, appended to `out`.
fn subproof<S: TreeHashes + ?Sized>(
    src: &S,
    m: u64,
    start: u64,
    end: u64,
    b: bool,
    out: &mut Vec<Hash>,
) {
    let n = end - start;
    if m == n {
        if !b {
            out.push(src.subtree(start, end));
        }
        return;
    }
    let k = split(n);
    if m <= k {
        subproof(src, m, start, start + k, b, out);
        out.push(src.subtree(start + k, end));
    } else {
        subproof(src, m - k, start + k, end, false, out);
        out.push(src.subtree(start, start + k));
    }
}

/// Verifies that `leaf_hash` is leaf `leaf_index` of the tree of `tree_size` leaves whose root is
/// `root`, following RFC 9162 §2.1.3.2.
pub fn verify_inclusion(
    leaf_index: u64,
    tree_size: u64,
    leaf_hash: &Hash,
    proof: &[Hash],
    root: &Hash,
) -> bool {
    // 1. The index must lie inside the tree.
    if leaf_index >= tree_size {
        return false;
    }
    // 2., 3.
    let mut fn_ = leaf_index;
    let mut sn = tree_size - 1;
    let mut r = *leaf_hash;
    // 4.
    for p in proof {
        if sn == 0 {
            return false;
        }
        if fn_ & 1 == 1 || fn_ == sn {
            r = node_hash(p, &r);
            if fn_ & 1 == 0 {
                while fn_ & 1 == 0 && fn_ != 0 {
                    fn_ >>= 1;
                    sn >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    // 5.
    sn == 0 && r == *root
}

/// Verifies that the tree of `size1` leaves with root `root1` is a prefix of the tree of `size2`
/// leaves with root `root2`, following RFC 9162 §2.1.4.2 for `0 < size1 < size2`. The cases the
/// RFC leaves to the caller: equal sizes need an empty proof and equal roots; size 0 needs an
/// empty proof and the empty tree's root; a shrinking tree never verifies.
pub fn verify_consistency(
    size1: u64,
    size2: u64,
    root1: &Hash,
    root2: &Hash,
    proof: &[Hash],
) -> bool {
    if size1 > size2 {
        return false;
    }
    if size1 == size2 {
        return proof.is_empty() && root1 == root2;
    }
    if size1 == 0 {
        return proof.is_empty() && *root1 == empty_root();
    }
    // 1.
    if proof.is_empty() {
        return false;
    }
    // 2. A first tree of 2^k leaves is a node of the second: its root starts the path.
    let (start, rest) = if size1.is_power_of_two() {
        (*root1, proof)
    } else {
        (proof[0], &proof[1..])
    };
    // 3.
    let mut fn_ = size1 - 1;
    let mut sn = size2 - 1;
    // 4.
    while fn_ & 1 == 1 {
        fn_ >>= 1;
        sn >>= 1;
    }
    // 5.
    let mut fr = start;
    let mut sr = start;
    // 6.
    for c in rest {
        if sn == 0 {
            return false;
        }
        if fn_ & 1 == 1 || fn_ == sn {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            if fn_ & 1 == 0 {
                while fn_ & 1 == 0 && fn_ != 0 {
                    fn_ >>= 1;
                    sn >>= 1;
                }
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    // 7.
    fr == *root1 && sr == *root2 && sn == 0
}

/// An inclusion proof as sent to a verifier (RFC 9162 §4.12 names, hashes as hex strings).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InclusionProof {
    pub leaf_index: u64,
    pub tree_size: u64,
    #[serde(with = "hex_hashes")]
    pub inclusion_path: Vec<Hash>,
}

impl InclusionProof {
    /// [`verify_inclusion`] of this proof.
    pub fn verify(&self, leaf_hash: &Hash, root: &Hash) -> bool {
        verify_inclusion(
            self.leaf_index,
            self.tree_size,
            leaf_hash,
            &self.inclusion_path,
            root,
        )
    }
}

/// A consistency proof as sent to a verifier (RFC 9162 §4.13 names, hashes as hex strings).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsistencyProof {
    pub tree_size_1: u64,
    pub tree_size_2: u64,
    #[serde(with = "hex_hashes")]
    pub consistency_path: Vec<Hash>,
}

impl ConsistencyProof {
    /// [`verify_consistency`] of this proof.
    pub fn verify(&self, root1: &Hash, root2: &Hash) -> bool {
        verify_consistency(
            self.tree_size_1,
            self.tree_size_2,
            root1,
            root2,
            &self.consistency_path,
        )
    }
}

/// Serde for one hash as a 64-character hex string.
pub mod hex_hash {
    use super::Hash;
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(hash: &Hash, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(hash))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Hash, D::Error> {
        let text = String::deserialize(d)?;
        super::parse_hash(&text).ok_or_else(|| {
            D::Error::custom(format!("`{text}` is not a SHA-256 hash (64 hex digits)"))
        })
    }
}

/// Serde for a list of hashes as a list of hex strings.
pub mod hex_hashes {
    use super::Hash;
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(hashes: &[Hash], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(hashes.iter().map(hex::encode))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Hash>, D::Error> {
        let texts = Vec::<String>::deserialize(d)?;
        texts
            .iter()
            .map(|t| {
                super::parse_hash(t).ok_or_else(|| {
                    D::Error::custom(format!("`{t}` is not a SHA-256 hash (64 hex digits)"))
                })
            })
            .collect()
    }
}

/// Parses 64 hex digits into a hash.
pub fn parse_hash(text: &str) -> Option<Hash> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(text, &mut out).ok()?;
    Some(out)
}

/// The registry's signed statement of the access log's size and root at a moment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedTreeHead {
    /// Number of leaves.
    pub tree_size: u64,
    /// Root of the tree of those leaves, lowercase hex.
    pub root_hash_hex: String,
    /// When the head was signed, RFC 3339 UTC.
    pub timestamp: String,
    /// Ed25519 signature over [`SignedTreeHead::signed_text`], base64.
    pub signature_b64: String,
    /// Name of the signing key's holder.
    pub signer: String,
}

impl SignedTreeHead {
    /// The exact bytes signed: `enlace-tree-head-v1\n{tree_size}\n{root_hex}\n{timestamp}`.
    pub fn signed_text(&self) -> String {
        tree_head_text(self.tree_size, &self.root_hash_hex, &self.timestamp)
    }

    /// The root as bytes; `None` when `root_hash_hex` is not 64 hex digits.
    pub fn root_hash(&self) -> Option<Hash> {
        parse_hash(&self.root_hash_hex)
    }
}

/// The text a tree head's signature covers.
pub fn tree_head_text(tree_size: u64, root_hash_hex: &str, timestamp: &str) -> String {
    format!("enlace-tree-head-v1\n{tree_size}\n{root_hash_hex}\n{timestamp}")
}

#[cfg(test)]
mod tests;

//! The access log's own consistency check (`enlace registry check-access-log`): read-only, on
//! the file at rest, it recomputes what the registry stored and names the first thing that
//! disagrees.
//!
//! Checked: the leaves are exactly `0..n`, each the entry of one access record or one anchored
//! log head (none missing, none both); each leaf hash is the RFC 9162 hash of its entry; every
//! stored subtree (`merkle_nodes`) is the hash of the leaves it covers; every stored signed tree
//! head's root is the root of that many leaves, so every head ever signed is a prefix of the
//! tree as it stands (consistency, without a proof). O(n) in the leaves, O(log n) a head.

use std::path::Path;

use enlace_core::evidence::PublishedTreeHead;
use enlace_core::merkle::{self, Hash};
use rusqlite::{Connection, OpenFlags};

/// What the check found in a consistent log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    pub leaves: u64,
    pub records: u64,
    pub log_heads: u64,
    pub subtrees: u64,
    pub tree_heads: u64,
}

/// Checks the access log in `path`; `Err` names the first inconsistency.
pub fn check_file(path: &Path) -> Result<Checked, String> {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| format!("opening {}: {e}", path.display()))?;
    let sql = |e: rusqlite::Error| format!("reading {}: {e}", path.display());
    let tx = conn.unchecked_transaction().map_err(sql)?;

    let leaves: Vec<Hash> = {
        let mut stmt = tx
            .prepare("SELECT idx, hash FROM merkle_leaves ORDER BY idx")
            .map_err(sql)?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?)))
            .map_err(sql)?;
        let mut out = Vec::new();
        for row in rows {
            let (idx, hash) = row.map_err(sql)?;
            if idx != out.len() as i64 {
                return Err(format!(
                    "leaf {} is missing (the next stored is {idx})",
                    out.len()
                ));
            }
            out.push(hash32(&hash).ok_or(format!("leaf {idx}: a hash of {} bytes", hash.len()))?);
        }
        out
    };

    let mut entry_of: Vec<Option<&'static str>> = vec![None; leaves.len()];
    let mut counts = [0u64; 2];
    for (i, (kind, query)) in [
        (
            "access record",
            "SELECT idx, record FROM access_records ORDER BY idx",
        ),
        (
            "log head",
            "SELECT idx, entry FROM log_head_leaves ORDER BY idx",
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let mut stmt = tx.prepare(query).map_err(sql)?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?)))
            .map_err(sql)?;
        for row in rows {
            let (idx, entry) = row.map_err(sql)?;
            let Some(leaf) = usize::try_from(idx).ok().and_then(|i| leaves.get(i)) else {
                return Err(format!(
                    "{kind} at leaf {idx}, beyond the {} leaves",
                    leaves.len()
                ));
            };
            let slot = &mut entry_of[idx as usize];
            if let Some(other) = slot {
                return Err(format!("leaf {idx} is both an {other} and a {kind}"));
            }
            *slot = Some(kind);
            if merkle::leaf_hash(&entry) != *leaf {
                return Err(format!("leaf {idx}: its hash is not that of its {kind}"));
            }
            counts[i] += 1;
        }
    }
    if let Some(idx) = entry_of.iter().position(Option::is_none) {
        return Err(format!("leaf {idx} has no access record and no log head"));
    }

    let levels = perfect_subtrees(&leaves);
    let mut subtrees = 0u64;
    {
        let mut stmt = tx
            .prepare("SELECT level, idx, hash FROM merkle_nodes ORDER BY level, idx")
            .map_err(sql)?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, Vec<u8>>(2)?,
                ))
            })
            .map_err(sql)?;
        for row in rows {
            let (level, idx, hash) = row.map_err(sql)?;
            let Some(expected) = usize::try_from(level)
                .ok()
                .and_then(|l| levels.get(l))
                .and_then(|l| l.get(usize::try_from(idx).ok()?))
            else {
                return Err(format!(
                    "subtree (level {level}, index {idx}) covers leaves beyond the {}",
                    leaves.len()
                ));
            };
            if hash32(&hash).as_ref() != Some(expected) {
                return Err(format!(
                    "subtree (level {level}, index {idx}) is not the hash of the leaves it covers"
                ));
            }
            subtrees += 1;
        }
    }

    let mut tree_heads = 0u64;
    {
        let mut stmt = tx
            .prepare("SELECT tree_size, head FROM tree_heads ORDER BY tree_size")
            .map_err(sql)?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))
            .map_err(sql)?;
        for row in rows {
            let (size, text) = row.map_err(sql)?;
            let head: PublishedTreeHead = serde_json::from_str(&text)
                .map_err(|e| format!("tree head of size {size} does not parse: {e}"))?;
            if size < 0 || size as usize > leaves.len() {
                return Err(format!(
                    "a tree head of size {size}, beyond the {} leaves",
                    leaves.len()
                ));
            }
            let root = range_root(&levels, 0, size as usize);
            if head.tree_head.tree_size != size as u64
                || head.tree_head.root_hash_hex != hex::encode(root)
            {
                return Err(format!(
                    "the signed tree head of size {size} is not the root of the first {size} leaves"
                ));
            }
            tree_heads += 1;
        }
    }
    Ok(Checked {
        leaves: leaves.len() as u64,
        records: counts[0],
        log_heads: counts[1],
        subtrees,
        tree_heads,
    })
}

/// Every complete perfect subtree, level by level: `levels[k][i]` covers leaves
/// `[i·2^k, (i+1)·2^k)`; `levels[0]` are the leaves. O(n) in all.
fn perfect_subtrees(leaves: &[Hash]) -> Vec<Vec<Hash>> {
    let mut levels = vec![leaves.to_vec()];
    while let Some(below) = levels.last().filter(|l| l.len() >= 2) {
        let up = below
            .chunks_exact(2)
            .map(|pair| merkle::node_hash(&pair[0], &pair[1]))
            .collect();
        levels.push(up);
    }
    levels
}

/// The RFC 9162 root of the `n` leaves from `start` (a multiple of a power of two at least as
/// large as `n`'s), from the perfect subtrees: O(log n).
fn range_root(levels: &[Vec<Hash>], start: usize, n: usize) -> Hash {
    if n == 0 {
        return merkle::empty_root();
    }
    if n.is_power_of_two() && start.is_multiple_of(n) {
        let level = n.trailing_zeros() as usize;
        return levels[level][start / n];
    }
    let k = merkle::split(n as u64) as usize;
    merkle::node_hash(
        &range_root(levels, start, k),
        &range_root(levels, start + k, n - k),
    )
}

fn hash32(bytes: &[u8]) -> Option<Hash> {
    bytes.try_into().ok()
}

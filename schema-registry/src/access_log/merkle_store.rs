//! The access log's Merkle tree, persistent and append-only in SQLite: leaf hashes and the root
//! of every complete perfect subtree, so any past root and any proof come from O(log n) stored
//! nodes and nothing is recomputed from the leaves.
//!
//! Layout (two tables, in the caller's database file or its own):
//!
//! - `merkle_leaves(idx, hash)`: leaf `idx`'s RFC 9162 leaf hash.
//! - `merkle_nodes(level, idx, hash)`: for `level >= 1`, the root of the perfect subtree over
//!   leaves `[idx·2^level, (idx+1)·2^level)`, written as soon as its last leaf is appended
//!   (level 0 is `merkle_leaves`). A tree of `n` leaves has fewer than `n` such nodes.
//!
//! Both tables refuse `UPDATE` and `DELETE` (triggers). Appends run in one `IMMEDIATE`
//! transaction per batch and keep the roots of the tree's right edge (its "frontier") in memory;
//! a handle notices when another connection appended and reloads it.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::Path;

use enlace_core::merkle::{
    self, ConsistencyProof, Hash, InclusionProof, TreeHashes, node_hash, split,
};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS merkle_leaves (
    idx INTEGER PRIMARY KEY,
    hash BLOB NOT NULL CHECK (length(hash) = 32)
);
CREATE TABLE IF NOT EXISTS merkle_nodes (
    level INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    hash BLOB NOT NULL CHECK (length(hash) = 32),
    PRIMARY KEY (level, idx)
) WITHOUT ROWID;
CREATE TRIGGER IF NOT EXISTS merkle_leaves_no_update BEFORE UPDATE ON merkle_leaves
    BEGIN SELECT RAISE(ABORT, 'merkle_leaves is append-only'); END;
CREATE TRIGGER IF NOT EXISTS merkle_leaves_no_delete BEFORE DELETE ON merkle_leaves
    BEGIN SELECT RAISE(ABORT, 'merkle_leaves is append-only'); END;
CREATE TRIGGER IF NOT EXISTS merkle_nodes_no_update BEFORE UPDATE ON merkle_nodes
    BEGIN SELECT RAISE(ABORT, 'merkle_nodes is append-only'); END;
CREATE TRIGGER IF NOT EXISTS merkle_nodes_no_delete BEFORE DELETE ON merkle_nodes
    BEGIN SELECT RAISE(ABORT, 'merkle_nodes is append-only'); END;
";

/// What can go wrong with the stored tree.
#[derive(Debug, thiserror::Error)]
pub enum MerkleStoreError {
    #[error("merkle store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A leaf index or tree size the tree does not have (yet).
    #[error("merkle store: {0}")]
    OutOfRange(String),
    /// A node that must exist is missing or malformed.
    #[error("merkle store is corrupt: {0}")]
    Corrupt(String),
}

pub type MerkleResult<T> = Result<T, MerkleStoreError>;

/// The append-only Merkle tree of the access log.
pub struct MerkleStore {
    conn: Connection,
    frontier: Frontier,
}

/// The right edge of the tree: for each bit `k` set in `size`, the root of the perfect subtree
/// `(k, (size >> k) - 1)`, which waits for a right sibling of the same level.
#[derive(Debug, Clone, Default)]
struct Frontier {
    size: u64,
    pending: Vec<Option<Hash>>,
}

impl MerkleStore {
    /// Opens (creating if needed) the tree in the SQLite file at `path`: WAL,
    /// `synchronous=FULL`.
    pub fn open(path: &Path) -> MerkleResult<MerkleStore> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        MerkleStore::with_connection(conn)
    }

    /// Uses a connection the caller opened and configured; creates the tables if needed.
    pub fn with_connection(conn: Connection) -> MerkleResult<MerkleStore> {
        conn.execute_batch(SCHEMA)?;
        let frontier = Frontier::load(&conn)?;
        Ok(MerkleStore { conn, frontier })
    }

    /// The number of leaves, as stored (including appends by other connections).
    pub fn size(&self) -> MerkleResult<u64> {
        stored_size(&self.conn)
    }

    /// Appends leaf hashes (`merkle::leaf_hash(entry)` of each entry) in one transaction.
    /// Returns the index of the first appended leaf and the new size.
    pub fn append_batch(&mut self, leaf_hashes: &[Hash]) -> MerkleResult<(u64, u64)> {
        self.append_with(|_, _| Ok::<_, MerkleStoreError>(leaf_hashes.to_vec()))
    }

    /// Appends, in one transaction, the leaf hashes `entries` returns. `entries` runs first,
    /// inside the transaction, with the index the first new leaf will take: it writes the
    /// caller's own rows (in tables of the same database) and returns their leaf hashes; an
    /// error from it rolls everything back. Returns the first index and the new size.
    pub fn append_with<E: From<MerkleStoreError>>(
        &mut self,
        entries: impl FnOnce(&rusqlite::Transaction<'_>, u64) -> Result<Vec<Hash>, E>,
    ) -> Result<(u64, u64), E> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(MerkleStoreError::from)?;
        let mut frontier = if stored_size(&tx)? == self.frontier.size {
            self.frontier.clone()
        } else {
            Frontier::load(&tx)?
        };
        let first = frontier.size;
        let leaf_hashes = entries(&tx, first)?;
        append_leaves(&tx, &mut frontier, &leaf_hashes)?;
        tx.commit().map_err(MerkleStoreError::from)?;
        let size = frontier.size;
        self.frontier = frontier;
        Ok((first, size))
    }

    /// The connection, for the caller's own tables in the same database (reads, and writes
    /// outside [`MerkleStore::append_with`] that do not touch the tree's tables).
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// The hash of leaf `index`.
    pub fn leaf(&self, index: u64) -> MerkleResult<Hash> {
        let size = self.size()?;
        if index >= size {
            return Err(out_of_range(format!(
                "leaf {index} is beyond the tree of {size} leaves"
            )));
        }
        node(&self.conn, 0, index)
    }

    /// The root of the tree of the first `size` leaves, for the current or any past size.
    pub fn root(&self, size: u64) -> MerkleResult<Hash> {
        root_at(&self.conn, size)
    }

    /// The inclusion proof of leaf `index` in the tree of the first `size` leaves.
    pub fn inclusion_proof(&self, index: u64, size: u64) -> MerkleResult<InclusionProof> {
        Ok(inclusion_proofs_at(&self.conn, &[index], size)?.remove(0))
    }

    /// The consistency proof between the trees of the first `size1` and `size2` leaves.
    pub fn consistency_proof(&self, size1: u64, size2: u64) -> MerkleResult<ConsistencyProof> {
        consistency_proof_at(&self.conn, size1, size2)
    }
}

// Reads on any connection to the tree's database (the writer's, or a read-only one): the
// registry answers queries on read connections while one writer appends.

/// The number of leaves stored.
pub fn size_at(conn: &Connection) -> MerkleResult<u64> {
    stored_size(conn)
}

/// The root of the tree of the first `size` leaves.
pub fn root_at(conn: &Connection, size: u64) -> MerkleResult<Hash> {
    check_size(conn, size)?;
    subtree(conn, 0, size)
}

/// The inclusion proofs of leaves `indices` in the tree of the first `size` leaves. The
/// subtrees the proofs share (the tree's right edge) are read once.
pub fn inclusion_proofs_at(
    conn: &Connection,
    indices: &[u64],
    size: u64,
) -> MerkleResult<Vec<InclusionProof>> {
    check_size(conn, size)?;
    let src = Source::new(conn);
    let mut out = Vec::with_capacity(indices.len());
    for &index in indices {
        let path = merkle::inclusion_proof(&src, index, size).ok_or_else(|| {
            out_of_range(format!("leaf {index} is beyond the tree of {size} leaves"))
        })?;
        out.push(InclusionProof {
            leaf_index: index,
            tree_size: size,
            inclusion_path: path,
        });
    }
    src.finish(())?;
    Ok(out)
}

/// The consistency proof between the trees of the first `size1` and `size2` leaves.
pub fn consistency_proof_at(
    conn: &Connection,
    size1: u64,
    size2: u64,
) -> MerkleResult<ConsistencyProof> {
    check_size(conn, size2)?;
    let src = Source::new(conn);
    let path = merkle::consistency_proof(&src, size1, size2)
        .ok_or_else(|| out_of_range(format!("size {size1} is larger than size {size2}")))?;
    Ok(ConsistencyProof {
        tree_size_1: size1,
        tree_size_2: size2,
        consistency_path: src.finish(path)?,
    })
}

fn check_size(conn: &Connection, size: u64) -> MerkleResult<()> {
    let stored = stored_size(conn)?;
    if size > stored {
        return Err(out_of_range(format!(
            "size {size} is beyond the tree of {stored} leaves"
        )));
    }
    Ok(())
}

impl Frontier {
    /// Reads the right edge of the stored tree: one node per bit of its size.
    fn load(conn: &Connection) -> MerkleResult<Frontier> {
        let size = stored_size(conn)?;
        let levels = (64 - size.leading_zeros()) as usize;
        let mut pending = vec![None; levels];
        for (level, slot) in pending.iter_mut().enumerate() {
            if size >> level & 1 == 1 {
                *slot = Some(node(conn, level as u32, (size >> level) - 1)?);
            }
        }
        Ok(Frontier { size, pending })
    }
}

/// Writes `leaf_hashes` after the tree's right edge `frontier`, with every perfect subtree they
/// complete, and advances `frontier`.
fn append_leaves(
    tx: &rusqlite::Transaction<'_>,
    frontier: &mut Frontier,
    leaf_hashes: &[Hash],
) -> MerkleResult<()> {
    let mut insert_leaf =
        tx.prepare_cached("INSERT INTO merkle_leaves (idx, hash) VALUES (?1, ?2)")?;
    let mut insert_node =
        tx.prepare_cached("INSERT INTO merkle_nodes (level, idx, hash) VALUES (?1, ?2, ?3)")?;
    for leaf in leaf_hashes {
        let index = frontier.size;
        insert_leaf.execute(params![to_sql(index)?, &leaf[..]])?;
        // Each trailing 1 bit of the index completes a perfect subtree one level up.
        let (mut hash, mut level, mut idx) = (*leaf, 0usize, index);
        while idx & 1 == 1 {
            let left = frontier.pending[level].take().ok_or_else(|| {
                MerkleStoreError::Corrupt(format!("no left sibling of leaf {index}"))
            })?;
            hash = node_hash(&left, &hash);
            level += 1;
            idx >>= 1;
            insert_node.execute(params![level as i64, to_sql(idx)?, &hash[..]])?;
        }
        if frontier.pending.len() <= level {
            frontier.pending.resize(level + 1, None);
        }
        frontier.pending[level] = Some(hash);
        frontier.size += 1;
    }
    Ok(())
}

fn stored_size(conn: &Connection) -> MerkleResult<u64> {
    let max: Option<i64> =
        conn.query_row("SELECT MAX(idx) FROM merkle_leaves", [], |r| r.get(0))?;
    Ok(max.map_or(0, |m| m as u64 + 1))
}

/// The stored root of the perfect subtree `(level, idx)`.
fn node(conn: &Connection, level: u32, idx: u64) -> MerkleResult<Hash> {
    let blob: Option<Vec<u8>> = if level == 0 {
        conn.prepare_cached("SELECT hash FROM merkle_leaves WHERE idx = ?1")?
            .query_row([to_sql(idx)?], |r| r.get(0))
            .optional()?
    } else {
        conn.prepare_cached("SELECT hash FROM merkle_nodes WHERE level = ?1 AND idx = ?2")?
            .query_row(params![level, to_sql(idx)?], |r| r.get(0))
            .optional()?
    };
    let blob =
        blob.ok_or_else(|| MerkleStoreError::Corrupt(format!("node ({level}, {idx}) is missing")))?;
    Hash::try_from(blob.as_slice())
        .map_err(|_| MerkleStoreError::Corrupt(format!("node ({level}, {idx}) is not 32 bytes")))
}

/// The root of leaves `[start, end)`: a stored node when the range is an aligned power of two,
/// otherwise split as RFC 9162 does. For the ranges proofs ask for (nodes of the tree) this
/// reads at most one stored node per level.
fn subtree(conn: &Connection, start: u64, end: u64) -> MerkleResult<Hash> {
    let n = end - start;
    if n == 0 {
        return Ok(merkle::empty_root());
    }
    if n.is_power_of_two() && start.is_multiple_of(n) {
        return node(conn, n.trailing_zeros(), start / n);
    }
    let k = split(n);
    Ok(node_hash(
        &subtree(conn, start, start + k)?,
        &subtree(conn, start + k, end)?,
    ))
}

/// [`TreeHashes`] over the stored tree. The trait cannot fail, so the first error is kept and
/// returned by [`Source::finish`] (the proof is discarded). Subtrees that are not stored nodes
/// (on the tree's right edge) are remembered, so proofs made with one source share them.
struct Source<'a> {
    conn: &'a Connection,
    error: RefCell<Option<MerkleStoreError>>,
    computed: RefCell<HashMap<(u64, u64), Hash>>,
}

impl<'a> Source<'a> {
    fn new(conn: &'a Connection) -> Source<'a> {
        Source {
            conn,
            error: RefCell::new(None),
            computed: RefCell::new(HashMap::new()),
        }
    }

    fn keep<T: Default>(&self, r: MerkleResult<T>) -> T {
        r.unwrap_or_else(|e| {
            self.error.borrow_mut().get_or_insert(e);
            T::default()
        })
    }

    fn finish<T>(self, proof: T) -> MerkleResult<T> {
        match self.error.into_inner() {
            Some(e) => Err(e),
            None => Ok(proof),
        }
    }
}

impl TreeHashes for Source<'_> {
    fn leaf(&self, i: u64) -> Hash {
        self.keep(node(self.conn, 0, i))
    }
    fn subtree(&self, start: u64, end: u64) -> Hash {
        let n = end - start;
        if n == 0 || (n.is_power_of_two() && start.is_multiple_of(n)) {
            return self.keep(subtree(self.conn, start, end));
        }
        if let Some(h) = self.computed.borrow().get(&(start, end)) {
            return *h;
        }
        let h = self.keep(subtree(self.conn, start, end));
        self.computed.borrow_mut().insert((start, end), h);
        h
    }
}

fn to_sql(v: u64) -> MerkleResult<i64> {
    i64::try_from(v).map_err(|_| out_of_range(format!("{v} does not fit the store")))
}

fn out_of_range(msg: String) -> MerkleStoreError {
    MerkleStoreError::OutOfRange(msg)
}

#[cfg(test)]
mod tests;

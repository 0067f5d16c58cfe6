//! The stored tree against the reference definition in `enlace_core::merkle`: every root, every
//! proof, across reopenings and concurrent handles, and its speed at 200,000 leaves.

use super::*;
use enlace_core::merkle::{leaf_hash, root, verify_consistency, verify_inclusion};
use rand::{Rng, SeedableRng, rngs::StdRng};
use std::time::{Duration, Instant};

fn leaves(from: u64, to: u64) -> Vec<Hash> {
    (from..to)
        .map(|i| leaf_hash(format!("access-record-{i}").as_bytes()))
        .collect()
}

/// Checks every root from `from` to the current size against `merkle::root`, and that proofs
/// verify and equal the ones generated over the leaves in memory.
fn check_sizes(store: &MerkleStore, all: &[Hash], from: u64, rng: &mut StdRng) {
    let size = store.size().unwrap();
    assert_eq!(size, all.len() as u64);
    let roots: Vec<Hash> = (0..=size).map(|n| root(&all[..n as usize])).collect();
    for n in from..=size {
        let want = roots[n as usize];
        assert_eq!(store.root(n).unwrap(), want, "root of size {n}");
        if n == 0 {
            continue;
        }
        let random = rng.random_range(0..n);
        for i in [0, n - 1, random] {
            let proof = store.inclusion_proof(i, n).unwrap();
            assert!(proof.verify(&all[i as usize], &want), "PATH({i}, D[{n}])");
            if i == random {
                assert_eq!(
                    Some(proof.inclusion_path),
                    merkle::inclusion_proof(all, i, n)
                );
            }
        }
        let random = rng.random_range(0..=n);
        for m in [0, 1, n / 2, n - 1, n, random] {
            let proof = store.consistency_proof(m, n).unwrap();
            assert!(
                proof.verify(&roots[m as usize], &want),
                "PROOF({m}, D[{n}])"
            );
            if m == random {
                assert_eq!(
                    Some(proof.consistency_path),
                    merkle::consistency_proof(all, m, n)
                );
            }
        }
    }
}

#[test]
fn merkle_batches_of_random_sizes_give_the_reference_roots_and_proofs() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.sqlite");
    let mut rng = StdRng::seed_from_u64(9162);
    let mut all = Vec::new();
    let mut store = MerkleStore::open(&path).unwrap();
    assert_eq!(store.size().unwrap(), 0);
    assert_eq!(store.root(0).unwrap(), merkle::empty_root());
    for _ in 0..30 {
        let batch = leaves(all.len() as u64, all.len() as u64 + rng.random_range(0..30));
        let before = all.len() as u64;
        let (first, size) = store.append_batch(&batch).unwrap();
        assert_eq!((first, size), (before, before + batch.len() as u64));
        all.extend(batch);
        check_sizes(&store, &all, before, &mut rng);
    }
    // Every proof of a small tree, exhaustively.
    let roots: Vec<Hash> = (0..=70).map(|n| root(&all[..n])).collect();
    for size in 1..=70u64 {
        let want = &roots[size as usize];
        for i in 0..size {
            let p = store.inclusion_proof(i, size).unwrap();
            let leaf = &all[i as usize];
            assert!(verify_inclusion(i, size, leaf, &p.inclusion_path, want));
        }
        for m in 0..=size {
            let p = store.consistency_proof(m, size).unwrap();
            let old = &roots[m as usize];
            assert!(verify_consistency(m, size, old, want, &p.consistency_path));
        }
    }

    // Reopen the file and go on appending.
    let before = all.len() as u64;
    drop(store);
    let mut store = MerkleStore::open(&path).unwrap();
    assert_eq!(store.size().unwrap(), before);
    assert_eq!(store.root(before).unwrap(), root(&all));
    for _ in 0..10 {
        let batch = leaves(all.len() as u64, all.len() as u64 + rng.random_range(1..50));
        store.append_batch(&batch).unwrap();
        all.extend(batch);
    }
    check_sizes(&store, &all, before.saturating_sub(5), &mut rng);
}

#[test]
fn merkle_handles_on_one_file_see_each_others_appends() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.sqlite");
    let mut a = MerkleStore::open(&path).unwrap();
    let mut b = MerkleStore::open(&path).unwrap();
    let all = leaves(0, 45);
    assert_eq!(a.append_batch(&all[..13]).unwrap(), (0, 13));
    assert_eq!(b.append_batch(&all[13..30]).unwrap(), (13, 30));
    assert_eq!(a.append_batch(&all[30..45]).unwrap(), (30, 45));
    let mut rng = StdRng::seed_from_u64(1);
    check_sizes(&a, &all, 0, &mut rng);
    check_sizes(&b, &all, 0, &mut rng);
}

#[test]
fn merkle_refuses_what_the_tree_does_not_have_and_rewrites() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.sqlite");
    let mut store = MerkleStore::open(&path).unwrap();
    assert_eq!(store.append_batch(&[]).unwrap(), (0, 0));
    store.append_batch(&leaves(0, 10)).unwrap();
    let out = |r: MerkleResult<_>| matches!(r, Err(MerkleStoreError::OutOfRange(_)));
    assert!(out(store.root(11).map(|_| ())));
    assert!(out(store.leaf(10).map(|_| ())));
    assert!(out(store.inclusion_proof(10, 10).map(|_| ())));
    assert!(out(store.inclusion_proof(0, 11).map(|_| ())));
    assert!(out(store.consistency_proof(5, 11).map(|_| ())));
    assert!(out(store.consistency_proof(6, 5).map(|_| ())));
    let e = store.inclusion_proof(10, 10).unwrap_err();
    assert_eq!(
        e.to_string(),
        "merkle store: leaf 10 is beyond the tree of 10 leaves"
    );
    assert_eq!(store.leaf(3).unwrap(), leaves(3, 4)[0]);

    let conn = Connection::open(&path).unwrap();
    let e = conn
        .execute(
            "UPDATE merkle_leaves SET hash = zeroblob(32) WHERE idx = 3",
            [],
        )
        .unwrap_err();
    assert!(e.to_string().contains("append-only"), "{e}");
    let e = conn
        .execute("DELETE FROM merkle_nodes WHERE level = 1", [])
        .unwrap_err();
    assert!(e.to_string().contains("append-only"), "{e}");
    assert_eq!(store.root(10).unwrap(), root(&leaves(0, 10)));
}

#[test]
fn merkle_200k_leaves_append_and_prove_quickly() {
    const TOTAL: u64 = 200_000;
    const BATCH: u64 = 1_000;
    let dir = tempfile::tempdir().unwrap();
    let mut store = MerkleStore::open(&dir.path().join("log.sqlite")).unwrap();

    let started = Instant::now();
    let mut hashing = Duration::ZERO;
    for b in 0..TOTAL / BATCH {
        let t = Instant::now();
        let batch = leaves(b * BATCH, (b + 1) * BATCH);
        hashing += t.elapsed();
        store.append_batch(&batch).unwrap();
    }
    let append = started.elapsed() - hashing;
    println!(
        "merkle store: appended {TOTAL} leaves in batches of {BATCH} in {append:?} ({:.1} µs a leaf)",
        append.as_secs_f64() * 1e6 / TOTAL as f64
    );
    assert!(append < Duration::from_secs(60), "append took {append:?}");

    let t = Instant::now();
    let reference = root(&leaves(0, TOTAL));
    let from_leaves = t.elapsed();
    let t = Instant::now();
    assert_eq!(store.root(TOTAL).unwrap(), reference);
    let from_nodes = t.elapsed();
    println!(
        "merkle store: root of {TOTAL} from stored nodes {from_nodes:?}, from the leaves {from_leaves:?} ({:.0}x)",
        from_leaves.as_secs_f64() / from_nodes.as_secs_f64()
    );

    let mut rng = StdRng::seed_from_u64(200_000);
    let (mut inclusion, mut consistency) = (Vec::new(), Vec::new());
    const QUERIES: u32 = 100;
    for _ in 0..QUERIES {
        let size = rng.random_range(1..=TOTAL);
        let index = rng.random_range(0..size);
        let t = Instant::now();
        let proof = store.inclusion_proof(index, size).unwrap();
        inclusion.push(t.elapsed());
        let size_root = store.root(size).unwrap();
        let leaf = leaves(index, index + 1)[0];
        assert!(proof.verify(&leaf, &size_root));

        let old = rng.random_range(0..=size);
        let t = Instant::now();
        let proof = store.consistency_proof(old, size).unwrap();
        consistency.push(t.elapsed());
        assert!(proof.verify(&store.root(old).unwrap(), &size_root));
    }
    println!(
        "merkle store: inclusion proof median {:?} worst {:?}; consistency proof median {:?} worst {:?} ({QUERIES} random queries)",
        median(&mut inclusion),
        inclusion.iter().max().unwrap(),
        median(&mut consistency),
        consistency.iter().max().unwrap(),
    );
    // The median, so that a test machine busy with other work does not fail the bound.
    assert!(
        median(&mut inclusion) < Duration::from_millis(50),
        "inclusion proof took {inclusion:?}"
    );
    assert!(
        median(&mut consistency) < Duration::from_millis(50),
        "consistency proof took {consistency:?}"
    );
}

fn median(times: &mut [Duration]) -> Duration {
    times.sort();
    times[times.len() / 2]
}

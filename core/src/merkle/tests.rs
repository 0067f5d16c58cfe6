//! The Merkle tree against the Certificate Transparency reference vectors and the RFC 9162 §2.1.5
//! examples, and proofs of every shape against every kind of tampering.

use super::*;
use proptest::prelude::*;

fn h(text: &str) -> Hash {
    parse_hash(text).unwrap()
}

fn hs(texts: &[&str]) -> Vec<Hash> {
    texts.iter().map(|t| h(t)).collect()
}

/// The eight leaves of the CT reference tree (RFC 6962 test data).
fn ct_leaves() -> Vec<Hash> {
    let data: [&[u8]; 8] = [
        b"",
        b"\x00",
        b"\x10",
        b"\x20\x21",
        b"\x30\x31",
        b"\x40\x41\x42\x43",
        b"\x50\x51\x52\x53\x54\x55\x56\x57",
        b"\x60\x61\x62\x63\x64\x65\x66\x67\x68\x69\x6a\x6b\x6c\x6d\x6e\x6f",
    ];
    data.iter().map(|d| leaf_hash(d)).collect()
}

/// The published roots of the first 0..=8 leaves.
const CT_ROOTS: [&str; 9] = [
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
];

#[test]
fn reference_roots() {
    let leaves = ct_leaves();
    assert_eq!(
        hex::encode(leaves[1]),
        "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7"
    );
    assert_eq!(empty_root(), h(CT_ROOTS[0]));
    for (n, want) in CT_ROOTS.iter().enumerate() {
        assert_eq!(hex::encode(root(&leaves[..n])), *want, "size {n}");
        assert_eq!(leaves[..n].subtree(0, n as u64), h(want));
    }
}

#[test]
fn reference_inclusion_proofs() {
    let leaves = ct_leaves();
    let cases: [(u64, u64, Vec<Hash>); 5] = [
        (0, 1, vec![]),
        (
            0,
            8,
            hs(&[
                "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
            ]),
        ),
        (
            5,
            8,
            hs(&[
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            ]),
        ),
        (
            2,
            3,
            hs(&["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
        ),
        (
            1,
            5,
            hs(&[
                "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            ]),
        ),
    ];
    for (index, size, want) in cases {
        let got = inclusion_proof(&leaves[..], index, size).unwrap();
        assert_eq!(got, want, "PATH({index}, D[{size}])");
        let root = h(CT_ROOTS[size as usize]);
        assert!(verify_inclusion(
            index,
            size,
            &leaves[index as usize],
            &want,
            &root
        ));
    }
    assert_eq!(inclusion_proof(&leaves[..], 8, 8), None);
    assert_eq!(inclusion_proof(&leaves[..], 0, 0), None);
}

#[test]
fn reference_consistency_proofs() {
    let leaves = ct_leaves();
    let cases: [(u64, u64, Vec<Hash>); 5] = [
        (1, 1, vec![]),
        (
            1,
            8,
            hs(&[
                "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
            ]),
        ),
        (
            6,
            8,
            hs(&[
                "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            ]),
        ),
        (
            2,
            5,
            hs(&[
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            ]),
        ),
        (
            6,
            7,
            hs(&[
                "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            ]),
        ),
    ];
    for (size1, size2, want) in cases {
        let got = consistency_proof(&leaves[..], size1, size2).unwrap();
        assert_eq!(got, want, "PROOF({size1}, D[{size2}])");
        let (r1, r2) = (h(CT_ROOTS[size1 as usize]), h(CT_ROOTS[size2 as usize]));
        assert!(verify_consistency(size1, size2, &r1, &r2, &want));
    }
    assert_eq!(consistency_proof(&leaves[..], 5, 4), None);
    assert_eq!(consistency_proof(&leaves[..], 0, 8), Some(vec![]));
}

/// RFC 9162 §2.1.5: the seven-leaf example tree, with the RFC's names for its nodes.
#[test]
fn rfc9162_examples() {
    let leaves = ct_leaves();
    let [a, b, c, d, e, f, j] = <[Hash; 7]>::try_from(&leaves[..7]).unwrap();
    let (g, hh, i) = (node_hash(&a, &b), node_hash(&c, &d), node_hash(&e, &f));
    let (k, l) = (node_hash(&g, &hh), node_hash(&i, &j));
    let seven = &leaves[..7];
    assert_eq!(root(seven), node_hash(&k, &l));
    assert_eq!(inclusion_proof(seven, 0, 7).unwrap(), vec![b, hh, l]);
    assert_eq!(inclusion_proof(seven, 3, 7).unwrap(), vec![c, g, l]);
    assert_eq!(inclusion_proof(seven, 4, 7).unwrap(), vec![f, j, k]);
    assert_eq!(inclusion_proof(seven, 6, 7).unwrap(), vec![i, k]);
    assert_eq!(consistency_proof(seven, 3, 7).unwrap(), vec![c, d, g, l]);
    assert_eq!(consistency_proof(seven, 4, 7).unwrap(), vec![l]);
    assert_eq!(consistency_proof(seven, 6, 7).unwrap(), vec![i, j, k]);
}

#[test]
fn edge_cases_of_consistency() {
    let leaves = ct_leaves();
    let r = |n: usize| root(&leaves[..n]);
    assert!(verify_consistency(0, 5, &empty_root(), &r(5), &[]));
    assert!(!verify_consistency(0, 5, &r(1), &r(5), &[]));
    assert!(!verify_consistency(0, 5, &empty_root(), &r(5), &[r(1)]));
    assert!(verify_consistency(5, 5, &r(5), &r(5), &[]));
    assert!(!verify_consistency(5, 5, &r(5), &r(4), &[]));
    assert!(!verify_consistency(5, 5, &r(5), &r(5), &[r(5)]));
    assert!(!verify_consistency(5, 4, &r(5), &r(4), &[]));
    assert!(!verify_consistency(2, 5, &r(2), &r(5), &[]));
    assert!(!verify_inclusion(0, 0, &leaves[0], &[], &empty_root()));
}

#[test]
fn proofs_and_heads_serialize_as_hex() {
    let leaves = ct_leaves();
    let proof = InclusionProof {
        leaf_index: 5,
        tree_size: 8,
        inclusion_path: inclusion_proof(&leaves[..], 5, 8).unwrap(),
    };
    let json = serde_json::to_value(&proof).unwrap();
    assert_eq!(
        json["inclusion_path"][0],
        "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"
    );
    let back: InclusionProof = serde_json::from_value(json).unwrap();
    assert_eq!(back, proof);
    assert!(back.verify(&leaves[5], &h(CT_ROOTS[8])));
    assert!(!back.verify(&leaves[4], &h(CT_ROOTS[8])));

    let bad = serde_json::json!({"leaf_index": 0, "tree_size": 2, "inclusion_path": ["abcd"]});
    let e = serde_json::from_value::<InclusionProof>(bad).unwrap_err();
    assert!(e.to_string().contains("not a SHA-256 hash"), "{e}");

    let proof = ConsistencyProof {
        tree_size_1: 6,
        tree_size_2: 8,
        consistency_path: consistency_proof(&leaves[..], 6, 8).unwrap(),
    };
    let text = serde_json::to_string(&proof).unwrap();
    let back: ConsistencyProof = serde_json::from_str(&text).unwrap();
    assert_eq!(back, proof);
    assert!(back.verify(&h(CT_ROOTS[6]), &h(CT_ROOTS[8])));
    assert!(!back.verify(&h(CT_ROOTS[5]), &h(CT_ROOTS[8])));

    let head = SignedTreeHead {
        tree_size: 8,
        root_hash_hex: CT_ROOTS[8].into(),
        timestamp: "2025-01-02T03:04:05Z".into(),
        signature_b64: "c2ln".into(),
        signer: "registry CL-DEV".into(),
    };
    assert_eq!(
        head.signed_text(),
        format!(
            "enlace-tree-head-v1\n8\n{}\n2025-01-02T03:04:05Z",
            CT_ROOTS[8]
        )
    );
    assert_eq!(head.root_hash(), Some(h(CT_ROOTS[8])));
    let back: SignedTreeHead =
        serde_json::from_str(&serde_json::to_string(&head).unwrap()).unwrap();
    assert_eq!(back, head);
}

/// The side of each sibling in `PATH(i, D[n])`, deepest first (`true`: on the right), derived
/// from the RFC's recursive definition independently of the verifier.
fn path_shape(i: u64, n: u64) -> Vec<bool> {
    if n <= 1 {
        return vec![];
    }
    let k = split(n);
    let mut v = if i < k {
        path_shape(i, k)
    } else {
        path_shape(i - k, n - k)
    };
    v.push(i < k);
    v
}

/// The shape of `PROOF(m, D[n])` for `0 < m < n`: whether the path starts from the first root
/// itself, and the side of each later node (`true`: on the right, so not part of the first tree).
fn proof_shape(m: u64, n: u64, b: bool) -> (bool, Vec<bool>) {
    if m == n {
        return (b, vec![]);
    }
    let k = split(n);
    let (start, mut v) = if m <= k {
        proof_shape(m, k, b)
    } else {
        proof_shape(m - k, n - k, false)
    };
    v.push(m <= k);
    (start, v)
}

fn flip(hash: &Hash, bit: usize) -> Hash {
    let mut out = *hash;
    out[bit / 8 % 32] ^= 1 << (bit % 8);
    out
}

/// A tree whose subtree roots are computed once each, so that generating every proof of a
/// tree stays cheap in a debug build.
struct Memo {
    leaves: Vec<Hash>,
    nodes: std::cell::RefCell<std::collections::HashMap<(u64, u64), Hash>>,
}

impl TreeHashes for Memo {
    fn leaf(&self, i: u64) -> Hash {
        self.leaves[i as usize]
    }
    fn subtree(&self, start: u64, end: u64) -> Hash {
        if end - start <= 1 {
            return self.leaves[start as usize..end as usize].subtree(0, end - start);
        }
        if let Some(h) = self.nodes.borrow().get(&(start, end)) {
            return *h;
        }
        let k = split(end - start);
        let h = node_hash(
            &self.subtree(start, start + k),
            &self.subtree(start + k, end),
        );
        self.nodes.borrow_mut().insert((start, end), h);
        h
    }
}

fn tree(seed: u64, n: u64) -> Vec<Hash> {
    (0..n)
        .map(|i| leaf_hash(&[seed.to_be_bytes(), i.to_be_bytes()].concat()))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn inclusion_proofs_verify_and_resist_tampering(seed: u64, n in 1u64..=300, bit in 0usize..256, other in 1u64..=600) {
        let leaves = tree(seed, n);
        let memo = Memo { leaves: leaves.clone(), nodes: Default::default() };
        let root_n = memo.subtree(0, n);
        prop_assert_eq!(root_n, root(&leaves));
        let wrong_root = root(&leaves[..n as usize - 1]);
        for i in 0..n {
            let leaf = leaves[i as usize];
            let proof = inclusion_proof(&memo, i, n).unwrap();
            prop_assert!(verify_inclusion(i, n, &leaf, &proof, &root_n), "PATH({i}, D[{n}])");
            prop_assert!(!verify_inclusion(i, n, &flip(&leaf, bit), &proof, &root_n));
            prop_assert!(!verify_inclusion(i, n, &leaf, &proof, &flip(&root_n, bit)));
            prop_assert!(!verify_inclusion(i, n, &leaf, &proof, &wrong_root));
            for j in 0..proof.len() {
                let mut bad = proof.clone();
                bad[j] = flip(&bad[j], bit);
                prop_assert!(!verify_inclusion(i, n, &leaf, &bad, &root_n));
            }
            if let Some((_, shorter)) = proof.split_last() {
                prop_assert!(!verify_inclusion(i, n, &leaf, shorter, &root_n));
            }
            let mut longer = proof.clone();
            longer.push(root_n);
            prop_assert!(!verify_inclusion(i, n, &leaf, &longer, &root_n));
            for i2 in [i.wrapping_sub(1), i + 1, other % n, other, n] {
                if i2 != i {
                    prop_assert!(!verify_inclusion(i2, n, &leaf, &proof, &root_n), "index {i2} for {i}");
                }
            }
            // A different size verifies only where the tree has the same shape along the path:
            // the signed tree head binds the size to the root.
            for n2 in [n - 1, n + 1, n * 2, n / 2, i, i + 1, other] {
                if n2 != n {
                    let same_shape = i < n2 && path_shape(i, n2) == path_shape(i, n);
                    prop_assert_eq!(verify_inclusion(i, n2, &leaf, &proof, &root_n), same_shape, "size {} for {}", n2, n);
                }
            }
        }
    }

    #[test]
    fn consistency_proofs_verify_and_resist_tampering(seed: u64, n in 1u64..=300, bit in 0usize..256, other in 0u64..=600) {
        let leaves = tree(seed, n);
        let memo = Memo { leaves: leaves.clone(), nodes: Default::default() };
        let roots: Vec<Hash> = (0..=n).map(|m| memo.subtree(0, m)).collect();
        prop_assert_eq!(roots[n as usize], root(&leaves));
        let root_n = roots[n as usize];
        for m in 0..=n {
            let root_m = roots[m as usize];
            let proof = consistency_proof(&memo, m, n).unwrap();
            prop_assert!(verify_consistency(m, n, &root_m, &root_n, &proof), "PROOF({m}, D[{n}])");
            prop_assert!(!verify_consistency(m, n, &flip(&root_m, bit), &root_n, &proof));
            // Every tree extends the empty one, whatever its root.
            prop_assert_eq!(verify_consistency(m, n, &root_m, &flip(&root_n, bit), &proof), m == 0);
            if m == 0 || m == n {
                prop_assert!(proof.is_empty());
                continue;
            }
            prop_assert!(!verify_consistency(m, n, &roots[m as usize - 1], &root_n, &proof));
            for j in 0..proof.len() {
                let mut bad = proof.clone();
                bad[j] = flip(&bad[j], bit);
                prop_assert!(!verify_consistency(m, n, &root_m, &root_n, &bad));
            }
            let (_, shorter) = proof.split_last().unwrap();
            prop_assert!(!verify_consistency(m, n, &root_m, &root_n, shorter));
            let mut longer = proof.clone();
            longer.push(root_n);
            prop_assert!(!verify_consistency(m, n, &root_m, &root_n, &longer));
            // Other sizes verify only where both trees have the same shape along the proof.
            let shape = proof_shape(m, n, true);
            for (m2, n2) in [(m - 1, n), (m + 1, n), (other, n), (m, n + 1), (m, n - 1), (m, other), (m, 2 * n), (m + 1, n + 1)] {
                if (m2, n2) != (m, n) {
                    let same_shape = 0 < m2 && m2 < n2 && proof_shape(m2, n2, true) == shape;
                    prop_assert_eq!(
                        verify_consistency(m2, n2, &root_m, &root_n, &proof),
                        same_shape,
                        "sizes {} {} for {} {}", m2, n2, m, n
                    );
                }
            }
        }
    }
}

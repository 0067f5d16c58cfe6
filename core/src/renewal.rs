//! What a node signs to renew its own certificates with the registry: the proof that it holds
//! the signing key of its current certificate (re-enrolment in the manner of RFC 7030).

use sha2::{Digest, Sha256};

use crate::id::NodeId;

/// The text of a renewal proof: `enlace-node-renew-v1\n{node}\n{at}\n{sha256 hex of the TLS
/// CSR}\n{sha256 hex of the signing CSR}`, signed with Ed25519 by the node's current signing
/// key. `at` is RFC 3339; the registry requires it within 5 minutes of its clock and after the
/// node's previous renewal, so a proof cannot be replayed.
pub fn proof_text(node: &NodeId, at: &str, tls_csr: &str, signing_csr: &str) -> String {
    format!(
        "enlace-node-renew-v1\n{node}\n{at}\n{}\n{}",
        hex::encode(Sha256::digest(tls_csr.as_bytes())),
        hex::encode(Sha256::digest(signing_csr.as_bytes()))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_proof_text_binds_node_time_and_both_csrs() {
        let node: NodeId = "CL-DEV/GOV/61002000-3/node/a".parse().unwrap();
        let t = proof_text(&node, "2026-12-01T00:00:00Z", "tls", "sig");
        assert_eq!(
            t,
            format!(
                "enlace-node-renew-v1\nCL-DEV/GOV/61002000-3/node/a\n2026-12-01T00:00:00Z\n{}\n{}",
                hex::encode(Sha256::digest(b"tls")),
                hex::encode(Sha256::digest(b"sig"))
            )
        );
        assert_ne!(t, proof_text(&node, "2026-12-01T00:00:00Z", "sig", "tls"));
    }
}

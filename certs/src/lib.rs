//! Enlace federation PKI: the federation CA, node keys and CSRs, certificate issuance, CRLs,
//! Ed25519 signing keys, signer verification and the rustls configurations of mutual TLS.
//!
//! Two keys per node, two certificates from the same federation CA:
//! - a TLS key (ECDSA P-256), certified with the node URI SAN and the serverAuth and clientAuth
//!   EKUs, used only for the mutual-TLS handshake between nodes;
//! - a signing key (Ed25519), certified with the node URI SAN and no TLS EKU, used only to sign
//!   messages, access records and log heads. The registry has one too, for the signed global
//!   configuration.
//!
//! Peer identity is the `urn:enlace:node:` URI SAN, checked by a server-certificate verifier
//! written for that purpose: webpki's chain, validity and CRL checks, no DNS-name check.
#![forbid(unsafe_code)]

mod ca;
mod csr;
mod encoding;
mod error;
mod inspect;
mod listener;
mod signing;
pub mod strict_http1;
mod tls;

#[cfg(test)]
mod tests;

pub use ca::{
    FederationCa, IssuedCert, REGISTRY_URI_PREFIX, RevocationReason, Revoked, Validity,
    registry_uri,
};
pub use csr::{NodeKeys, csr_for, node_init, server_key_and_csr};
pub use encoding::{MAX_CSR_PEM_LEN, MAX_PEM_LEN};
pub use error::Result;
pub use inspect::{CertInfo, KeyAlgorithm, cert_info, needs_renewal};
pub use listener::ListenerStream;
pub use signing::{SigningKey, verify_ed25519, verify_signer, verify_signer_until};
pub use tls::{
    TrustStore, backend_server_config, certificate_pem_sha256, certificate_sha256, client_config,
    https_client_config, https_server_config, install_crypto_provider, peer_node_id, server_config,
};

/// The DER of the first certificate in a PEM text (for a JOSE `x5c` header).
pub fn certificate_der(pem: &str) -> Result<Vec<u8>> {
    Ok(encoding::first_cert(pem)?.to_vec())
}

/// The PEM text of a DER certificate.
pub fn certificate_pem(der: &[u8]) -> String {
    encoding::to_pem("CERTIFICATE", der)
}

/// Checks a CSR's form, size and self-signature without issuing anything, so a registry can
/// refuse a bad one when it is submitted rather than when it is approved.
pub fn check_csr(csr_pem: &str) -> Result<()> {
    csr::verify_csr(csr_pem).map(|_| ())
}

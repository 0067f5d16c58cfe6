//! Node key generation and certificate signing requests: making them and checking them.

use std::fmt;

use enlace_core::id::NodeId;
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::prelude::FromDer;

use crate::encoding;
use crate::error::{Result, invalid};
use crate::inspect::KeyAlgorithm;
use enlace_core::problem::Problem;

/// A new node's private keys and the CSRs to send to the federation CA.
///
/// The two keys are deliberately separate: the TLS key authenticates connections, the signing key
/// makes statements that outlive them (signed messages, access records, log heads).
#[derive(Clone)]
pub struct NodeKeys {
    /// ECDSA P-256 private key, PKCS#8 PEM.
    pub tls_key_pem: String,
    /// CSR for the TLS key, subject CN = the node id.
    pub tls_csr_pem: String,
    /// Ed25519 private key, PKCS#8 PEM.
    pub signing_key_pem: String,
    /// CSR for the signing key, subject CN = the node id.
    pub signing_csr_pem: String,
}

impl fmt::Debug for NodeKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeKeys")
            .field("tls_key_pem", &"<redacted>")
            .field("tls_csr_pem", &self.tls_csr_pem)
            .field("signing_key_pem", &"<redacted>")
            .field("signing_csr_pem", &self.signing_csr_pem)
            .finish()
    }
}

/// Makes a node's TLS key (ECDSA P-256) and signing key (Ed25519), each with its CSR.
pub fn node_init(node: &NodeId) -> Result<NodeKeys> {
    let cn = node.to_string();
    let tls = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| Problem::internal(format!("generating the TLS key: {e}")))?;
    // Written as PKCS#8 v1, which OpenSSL 3.0 and Python's `cryptography` read (rcgen would
    // write v2, with the public key inside).
    let signing_pem = crate::SigningKey::generate()?.to_pem().to_string();
    let signing = KeyPair::from_pem(&signing_pem)
        .map_err(|e| Problem::internal(format!("reading the new signing key: {e}")))?;
    Ok(NodeKeys {
        tls_csr_pem: csr_with(&tls, &cn)?,
        tls_key_pem: tls.serialize_pem(),
        signing_csr_pem: csr_with(&signing, &cn)?,
        signing_key_pem: signing_pem,
    })
}

/// A CSR (PEM) for an existing private key (PEM), with subject CN `cn` and nothing else: the CA
/// decides the SANs, key usages and validity.
pub fn csr_for(key_pem: &str, cn: &str) -> Result<String> {
    // Size-checked and label-checked before rcgen sees it.
    encoding::private_key(key_pem)?;
    let key = KeyPair::from_pem(key_pem)
        .map_err(|e| invalid(format!("private key: unsupported or malformed: {e}")))?;
    csr_with(&key, cn)
}

fn csr_with(key: &KeyPair, cn: &str) -> Result<String> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    params.distinguished_name = dn;
    params
        .serialize_request(key)
        .and_then(|csr| csr.pem())
        .map_err(|e| Problem::internal(format!("encoding the CSR: {e}")))
}

/// A CSR whose self-signature verified: the only thing the CA takes from it is the public key.
pub(crate) struct VerifiedCsr {
    /// The DER SubjectPublicKeyInfo.
    pub spki_der: Vec<u8>,
    pub algorithm: KeyAlgorithm,
}

/// Parses a CSR (PEM, at most [`encoding::MAX_CSR_PEM_LEN`]) and verifies that it is signed by
/// the key it carries, which proves the requester holds that key.
pub(crate) fn verify_csr(csr_pem: &str) -> Result<VerifiedCsr> {
    let der = encoding::csr_der(csr_pem)?;
    let (rest, csr) = X509CertificationRequest::from_der(&der)
        .map_err(|e| invalid(format!("CSR: not a PKCS#10 request: {e}")))?;
    if !rest.is_empty() {
        return Err(invalid("CSR: trailing bytes after the request"));
    }
    csr.verify_signature().map_err(|_| {
        invalid("CSR: its self-signature does not verify with the public key it carries")
    })?;
    let spki = &csr.certification_request_info.subject_pki;
    Ok(VerifiedCsr {
        spki_der: spki.raw.to_vec(),
        algorithm: KeyAlgorithm::of(spki),
    })
}

/// A new TLS server key (ECDSA P-256, PKCS#8 PEM) and its CSR with subject CN `cn`, e.g. for
/// the registry's HTTPS listener.
pub fn server_key_and_csr(cn: &str) -> Result<(String, String)> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| Problem::internal(format!("generating the TLS key: {e}")))?;
    Ok((key.serialize_pem(), csr_with(&key, cn)?))
}

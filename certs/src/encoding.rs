//! PEM in and out, with size limits checked before any parsing.

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};

use crate::error::{Result, invalid, too_large};

/// Largest CSR (PEM text) the CA accepts.
pub const MAX_CSR_PEM_LEN: usize = 16 * 1024;
/// Largest certificate, chain or private key (PEM text) accepted.
pub const MAX_PEM_LEN: usize = 64 * 1024;
/// Largest CRL (PEM text) accepted.
pub(crate) const MAX_CRL_PEM_LEN: usize = 1024 * 1024;

fn check_len(what: &str, text: &str, max: usize) -> Result<()> {
    if text.len() > max {
        return Err(too_large(what, text.len(), max));
    }
    Ok(())
}

/// The PEM blocks of `text` whose tag is one of `tags`; at least one is required.
fn blocks(what: &str, text: &str, max: usize, tags: &[&str]) -> Result<Vec<Vec<u8>>> {
    check_len(what, text, max)?;
    let all = pem::parse_many(text).map_err(|e| invalid(format!("{what}: not PEM: {e}")))?;
    let wanted: Vec<Vec<u8>> = all
        .into_iter()
        .filter(|p| tags.contains(&p.tag()))
        .map(pem::Pem::into_contents)
        .collect();
    if wanted.is_empty() {
        return Err(invalid(format!(
            "{what}: no PEM block labelled {}",
            tags.join(" or ")
        )));
    }
    Ok(wanted)
}

/// The DER of the single CSR in `text`.
pub(crate) fn csr_der(text: &str) -> Result<Vec<u8>> {
    let mut found = blocks(
        "CSR",
        text,
        MAX_CSR_PEM_LEN,
        &["CERTIFICATE REQUEST", "NEW CERTIFICATE REQUEST"],
    )?;
    if found.len() != 1 {
        return Err(invalid("CSR: more than one certificate request in the PEM"));
    }
    Ok(found.remove(0))
}

/// The certificates in `text`, end entity first.
pub(crate) fn cert_chain(text: &str) -> Result<Vec<CertificateDer<'static>>> {
    Ok(blocks("certificate", text, MAX_PEM_LEN, &["CERTIFICATE"])?
        .into_iter()
        .map(CertificateDer::from)
        .collect())
}

/// The first certificate in `text` (the end entity of a chain).
pub(crate) fn first_cert(text: &str) -> Result<CertificateDer<'static>> {
    Ok(cert_chain(text)?.remove(0))
}

/// The private key in `text` (PKCS#8, SEC1 or PKCS#1).
pub(crate) fn private_key(text: &str) -> Result<PrivateKeyDer<'static>> {
    check_len("private key", text, MAX_PEM_LEN)?;
    PrivateKeyDer::from_pem_slice(text.as_bytes())
        .map_err(|e| invalid(format!("private key: not a PEM private key: {e}")))
}

/// The CRLs in `text` (one per federation CA).
pub(crate) fn crls(text: &str) -> Result<Vec<CertificateRevocationListDer<'static>>> {
    check_len("CRL", text, MAX_CRL_PEM_LEN)?;
    let all: Vec<_> = CertificateRevocationListDer::pem_slice_iter(text.as_bytes())
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| invalid(format!("CRL: not PEM: {e}")))?;
    if all.is_empty() {
        return Err(invalid("CRL: no PEM block labelled X509 CRL"));
    }
    Ok(all)
}

/// PEM text of `der` under `tag`.
pub(crate) fn to_pem(tag: &str, der: &[u8]) -> String {
    let config = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
    pem::encode_config(&pem::Pem::new(tag, der.to_vec()), config)
}

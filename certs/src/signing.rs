//! Ed25519 signing keys, raw signature verification, and checking a signer's certificate.

use std::fmt;

use aws_lc_rs::signature::{ED25519, Ed25519KeyPair, KeyPair as _, UnparsedPublicKey};
use time::OffsetDateTime;

use crate::encoding;
use crate::error::{Result, invalid, unauthenticated};
use crate::inspect::{KeyAlgorithm, parse_der, sans};
use crate::tls::{TrustStore, describe, unix_time, verify_chain};
use enlace_core::problem::Problem;

/// An Ed25519 private key (PKCS#8 PEM on disk) for signing messages, records and configuration.
pub struct SigningKey {
    pair: Ed25519KeyPair,
    pem: String,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("public_key", &hex::encode(self.public_key_bytes()))
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// A new random key.
    pub fn generate() -> Result<SigningKey> {
        let pair = Ed25519KeyPair::generate()
            .map_err(|_| Problem::internal("generating an Ed25519 key failed"))?;
        SigningKey::with_pem(pair)
    }

    /// Keeps the key with its PEM as PKCS#8 v1 (RFC 5208: no public key inside), the form
    /// OpenSSL 3.0 and Python's `cryptography` read; v2 (RFC 5958) is read but never written.
    fn with_pem(pair: Ed25519KeyPair) -> Result<SigningKey> {
        let der = pair
            .to_pkcs8v1()
            .map_err(|_| Problem::internal("encoding an Ed25519 key failed"))?;
        Ok(SigningKey {
            pem: encoding::to_pem("PRIVATE KEY", der.as_ref()),
            pair,
        })
    }

    /// Reads a PKCS#8 PEM Ed25519 key (v1 or v2, as written by [`crate::node_init`] or openssl).
    pub fn from_pem(pem: &str) -> Result<SigningKey> {
        let der = encoding::private_key(pem)?;
        let rustls_pki_types::PrivateKeyDer::Pkcs8(pkcs8) = der else {
            return Err(invalid("signing key: must be a PKCS#8 PEM (PRIVATE KEY)"));
        };
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(pkcs8.secret_pkcs8_der())
            .map_err(|e| invalid(format!("signing key: not an Ed25519 PKCS#8 key: {e}")))?;
        SigningKey::with_pem(pair)
    }

    /// The key as PKCS#8 v1 PEM.
    pub fn to_pem(&self) -> &str {
        &self.pem
    }

    /// The 64-byte Ed25519 signature of `msg`.
    pub fn sign(&self, msg: &[u8]) -> Vec<u8> {
        self.pair.sign(msg).as_ref().to_vec()
    }

    /// The 32-byte Ed25519 public key.
    pub fn public_key_bytes(&self) -> Vec<u8> {
        self.pair.public_key().as_ref().to_vec()
    }
}

/// Whether `sig` is a valid Ed25519 signature of `msg` by the 32-byte `public_key`.
pub fn verify_ed25519(public_key: &[u8], msg: &[u8], sig: &[u8]) -> bool {
    UnparsedPublicKey::new(&ED25519, public_key)
        .verify(msg, sig)
        .is_ok()
}

/// Checks that `cert_pem` is a signing certificate of `expected_uri` at `now`, and returns its
/// 32-byte Ed25519 public key.
///
/// The certificate must chain to a federation CA of `trust` (webpki, with the CRLs, at `now`),
/// carry no extended key usage (so a TLS certificate is refused), have key usage
/// digitalSignature, carry exactly one URI SAN equal to `expected_uri`, and hold an Ed25519 key.
pub fn verify_signer(
    trust: &TrustStore,
    cert_pem: &str,
    expected_uri: &str,
    now: OffsetDateTime,
) -> Result<Vec<u8>> {
    verify_signer_until(trust, cert_pem, expected_uri, now).map(|(key, _)| key)
}

/// [`verify_signer`], also returning the certificate's `notAfter` (Unix seconds), so that a
/// caller caching the key knows when to stop using it.
pub fn verify_signer_until(
    trust: &TrustStore,
    cert_pem: &str,
    expected_uri: &str,
    now: OffsetDateTime,
) -> Result<(Vec<u8>, i64)> {
    let der = encoding::first_cert(cert_pem)?;
    let cert = parse_der(&der)?;

    let algorithm = KeyAlgorithm::of(cert.public_key());
    if algorithm != KeyAlgorithm::Ed25519 {
        return Err(unauthenticated(format!(
            "signing certificate: key is {algorithm}, signing keys are ed25519"
        )));
    }
    let now_unix = unix_time(now)?;
    verify_chain(trust, &der, &[], now_unix, webpki::KeyUsage::client_auth())
        .map_err(|e| unauthenticated(format!("signing certificate: {}", describe(&e))))?;
    // webpki only knows "this EKU, if any"; signing certificates carry none at all, which is
    // what keeps a TLS certificate (serverAuth, clientAuth) from being used to sign.
    let eku = cert
        .extended_key_usage()
        .map_err(|e| unauthenticated(format!("signing certificate: bad extendedKeyUsage: {e}")))?;
    if eku.is_some() {
        return Err(unauthenticated(
            "signing certificate: has an extended key usage (a TLS certificate is not a signing certificate)",
        ));
    }
    let usage = cert
        .key_usage()
        .map_err(|e| unauthenticated(format!("signing certificate: bad keyUsage: {e}")))?;
    if !usage.is_some_and(|u| u.value.digital_signature()) {
        return Err(unauthenticated(
            "signing certificate: key usage does not allow digitalSignature",
        ));
    }
    let (uris, _, _) = sans(&cert).map_err(|e| unauthenticated(e.detail))?;
    if uris.len() != 1 || uris[0] != expected_uri {
        return Err(unauthenticated(format!(
            "signing certificate: names {uris:?}, expected exactly `{expected_uri}`"
        ))
        .with("expected", expected_uri));
    }
    let not_after = cert.validity().not_after.timestamp();
    Ok((
        cert.public_key().subject_public_key.data.to_vec(),
        not_after,
    ))
}

//! Reading certificates: serial, validity, SANs, key algorithm and SPKI fingerprint, renewal.

use std::fmt;

use serde::Serialize;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;
use x509_parser::x509::SubjectPublicKeyInfo;

use crate::encoding;
use crate::error::{Result, invalid};

const OID_ED25519: &str = "1.3.101.112";
const OID_EC_PUBLIC_KEY: &str = "1.2.840.10045.2.1";
const OID_P256: &str = "1.2.840.10045.3.1.7";
const OID_P384: &str = "1.3.132.0.34";
const OID_RSA: &str = "1.2.840.113549.1.1.1";

/// The algorithm of a certificate's or CSR's public key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyAlgorithm {
    Ed25519,
    EcdsaP256,
    EcdsaP384,
    Rsa,
    /// Anything else, by OID.
    Other(String),
}

impl KeyAlgorithm {
    pub(crate) fn of(spki: &SubjectPublicKeyInfo<'_>) -> KeyAlgorithm {
        let alg = spki.algorithm.algorithm.to_id_string();
        match alg.as_str() {
            OID_ED25519 => KeyAlgorithm::Ed25519,
            OID_RSA => KeyAlgorithm::Rsa,
            OID_EC_PUBLIC_KEY => {
                let curve = spki
                    .algorithm
                    .parameters
                    .as_ref()
                    .and_then(|p| p.as_oid().ok())
                    .map(|o| o.to_id_string());
                match curve.as_deref() {
                    Some(OID_P256) => KeyAlgorithm::EcdsaP256,
                    Some(OID_P384) => KeyAlgorithm::EcdsaP384,
                    other => KeyAlgorithm::Other(format!("ec:{}", other.unwrap_or("?"))),
                }
            }
            _ => KeyAlgorithm::Other(alg),
        }
    }

    /// Lower-case name: `ed25519`, `ecdsa-p256`, `ecdsa-p384`, `rsa`, or `oid:…`.
    pub fn as_str(&self) -> String {
        match self {
            KeyAlgorithm::Ed25519 => "ed25519".into(),
            KeyAlgorithm::EcdsaP256 => "ecdsa-p256".into(),
            KeyAlgorithm::EcdsaP384 => "ecdsa-p384".into(),
            KeyAlgorithm::Rsa => "rsa".into(),
            KeyAlgorithm::Other(oid) => format!("oid:{oid}"),
        }
    }
}

impl fmt::Display for KeyAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.as_str())
    }
}

/// What a certificate says, as far as Enlace cares.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CertInfo {
    /// Serial number, lower-case hex, minimal big-endian.
    pub serial_hex: String,
    /// The subject's common name, if any.
    pub subject_cn: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub not_before: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub not_after: OffsetDateTime,
    /// URI SANs (node and registry identities).
    pub uris: Vec<String>,
    /// DNS name SANs.
    pub dns: Vec<String>,
    /// IP address SANs, as text.
    pub ips: Vec<String>,
    /// `ed25519`, `ecdsa-p256`, … (see [`KeyAlgorithm::as_str`]).
    pub public_key_algorithm: String,
    /// SHA-256 of the DER SubjectPublicKeyInfo, lower-case hex: a stable key fingerprint.
    pub spki_sha256_hex: String,
    /// Whether basicConstraints says CA:true.
    pub is_ca: bool,
}

/// Parses one DER certificate, refusing trailing bytes.
pub(crate) fn parse_der(der: &[u8]) -> Result<X509Certificate<'_>> {
    let (rest, cert) = X509Certificate::from_der(der)
        .map_err(|e| invalid(format!("certificate: not a DER X.509 certificate: {e}")))?;
    if !rest.is_empty() {
        return Err(invalid("certificate: trailing bytes after the certificate"));
    }
    Ok(cert)
}

/// The serial of a parsed certificate, lower-case hex, minimal big-endian.
pub(crate) fn serial_hex(cert: &X509Certificate<'_>) -> String {
    hex::encode(cert.serial.to_bytes_be())
}

/// URI, DNS and IP SANs of a parsed certificate.
pub(crate) fn sans(cert: &X509Certificate<'_>) -> Result<(Vec<String>, Vec<String>, Vec<String>)> {
    let (mut uris, mut dns, mut ips) = (Vec::new(), Vec::new(), Vec::new());
    let ext = cert
        .subject_alternative_name()
        .map_err(|e| invalid(format!("certificate: bad subjectAltName: {e}")))?;
    let Some(ext) = ext else {
        return Ok((uris, dns, ips));
    };
    for name in &ext.value.general_names {
        match name {
            GeneralName::URI(u) => uris.push((*u).to_string()),
            GeneralName::DNSName(d) => dns.push((*d).to_string()),
            GeneralName::IPAddress(bytes) => ips.push(ip_text(bytes)),
            _ => {}
        }
    }
    Ok((uris, dns, ips))
}

fn ip_text(bytes: &[u8]) -> String {
    if let Ok(b) = <[u8; 4]>::try_from(bytes) {
        return std::net::Ipv4Addr::from(b).to_string();
    }
    if let Ok(b) = <[u8; 16]>::try_from(bytes) {
        return std::net::Ipv6Addr::from(b).to_string();
    }
    hex::encode(bytes)
}

/// Everything [`CertInfo`] holds, from a parsed certificate.
pub(crate) fn info_of(cert: &X509Certificate<'_>) -> Result<CertInfo> {
    let (uris, dns, ips) = sans(cert)?;
    let subject_cn = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_string);
    let spki = cert.public_key();
    Ok(CertInfo {
        serial_hex: serial_hex(cert),
        subject_cn,
        not_before: cert.validity().not_before.to_datetime(),
        not_after: cert.validity().not_after.to_datetime(),
        uris,
        dns,
        ips,
        public_key_algorithm: KeyAlgorithm::of(spki).as_str(),
        spki_sha256_hex: hex::encode(Sha256::digest(spki.raw)),
        is_ca: cert.is_ca(),
    })
}

/// Reads the first certificate of a PEM text.
pub fn cert_info(pem: &str) -> Result<CertInfo> {
    let der = encoding::first_cert(pem)?;
    info_of(&parse_der(&der)?)
}

/// Whether less than `fraction_remaining` of the certificate's lifetime is left at `now`
/// (e.g. `0.33` renews in the last third). An unreadable certificate needs renewal too.
pub fn needs_renewal(pem: &str, now: OffsetDateTime, fraction_remaining: f64) -> bool {
    let Ok(info) = cert_info(pem) else {
        return true;
    };
    let lifetime = (info.not_after - info.not_before).as_seconds_f64();
    let left = (info.not_after - now).as_seconds_f64();
    if lifetime <= 0.0 || left <= 0.0 {
        return true;
    }
    left < lifetime * fraction_remaining
}

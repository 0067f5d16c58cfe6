//! The federation CA: create or load it, issue certificates from CSRs, sign CRLs.

use std::fmt;
use std::net::IpAddr;

use enlace_core::id::{Instance, NodeId};
use rcgen::PublicKeyData as _;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    RevokedCertParams, SanType, SerialNumber,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::{Duration, OffsetDateTime};

use crate::csr::verify_csr;
use crate::encoding;
use crate::error::{Result, invalid};
use crate::inspect::{KeyAlgorithm, info_of, parse_der};
use enlace_core::problem::Problem;

/// Prefix of the URI SAN of a registry's signing certificate.
pub const REGISTRY_URI_PREFIX: &str = "urn:enlace:registry:";

/// The URI SAN of the registry of `instance`: `urn:enlace:registry:CL-DEV`.
pub fn registry_uri(instance: &Instance) -> String {
    format!("{REGISTRY_URI_PREFIX}{instance}")
}

/// Certificates start this long before they are issued, so that a peer whose clock is a little
/// behind does not refuse a certificate that was just issued.
const BACKDATE: Duration = Duration::minutes(5);

/// A certificate the CA issued.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuedCert {
    /// The certificate, PEM.
    pub pem: String,
    /// Its serial number, lower-case hex (what a CRL entry names).
    pub serial_hex: String,
    #[serde(with = "time::serde::rfc3339")]
    pub not_before: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub not_after: OffsetDateTime,
}

/// Why a certificate was revoked (RFC 5280 §5.3.1, the subset that applies here).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RevocationReason {
    Unspecified,
    KeyCompromise,
    AffiliationChanged,
    Superseded,
    CessationOfOperation,
    PrivilegeWithdrawn,
}

impl RevocationReason {
    fn to_rcgen(self) -> rcgen::RevocationReason {
        match self {
            RevocationReason::Unspecified => rcgen::RevocationReason::Unspecified,
            RevocationReason::KeyCompromise => rcgen::RevocationReason::KeyCompromise,
            RevocationReason::AffiliationChanged => rcgen::RevocationReason::AffiliationChanged,
            RevocationReason::Superseded => rcgen::RevocationReason::Superseded,
            RevocationReason::CessationOfOperation => rcgen::RevocationReason::CessationOfOperation,
            RevocationReason::PrivilegeWithdrawn => rcgen::RevocationReason::PrivilegeWithdrawn,
        }
    }
}

/// One CRL entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revoked {
    /// Serial of the revoked certificate, hex as in [`IssuedCert::serial_hex`].
    pub serial_hex: String,
    #[serde(with = "time::serde::rfc3339")]
    pub revoked_at: OffsetDateTime,
    pub reason: Option<RevocationReason>,
}

/// What a certificate is for; the CA derives every extension from this, never from the CSR.
enum Profile<'a> {
    NodeTls(&'a NodeId),
    NodeSigning(&'a NodeId),
    RegistrySigning(&'a Instance),
    ServerTls(&'a [String]),
}

impl Profile<'_> {
    fn name(&self) -> &'static str {
        match self {
            Profile::NodeTls(_) => "node TLS",
            Profile::NodeSigning(_) => "node signing",
            Profile::RegistrySigning(_) => "registry signing",
            Profile::ServerTls(_) => "server TLS",
        }
    }

    fn required_key(&self) -> KeyAlgorithm {
        match self {
            Profile::NodeTls(_) | Profile::ServerTls(_) => KeyAlgorithm::EcdsaP256,
            Profile::NodeSigning(_) | Profile::RegistrySigning(_) => KeyAlgorithm::Ed25519,
        }
    }

    /// Subject, SANs, key usages and EKUs.
    fn apply(&self, params: &mut CertificateParams) -> Result<()> {
        let (cn, sans) = match self {
            Profile::NodeTls(node) | Profile::NodeSigning(node) => {
                (node.to_string(), vec![uri_san(&node.uri())?])
            }
            Profile::RegistrySigning(instance) => (
                format!("Enlace registry {instance}"),
                vec![uri_san(&registry_uri(instance))?],
            ),
            Profile::ServerTls(names) => {
                let first = names
                    .first()
                    .ok_or_else(|| invalid("server certificate: at least one DNS name or IP"))?;
                let sans = names
                    .iter()
                    .map(|n| host_san(n))
                    .collect::<Result<Vec<_>>>()?;
                (first.clone(), sans)
            }
        };
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, cn);
        params.distinguished_name = dn;
        params.subject_alt_names = sans;
        params.is_ca = IsCa::ExplicitNoCa;
        params.use_authority_key_identifier_extension = true;
        match self {
            Profile::NodeTls(_) => {
                params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
                params.extended_key_usages = vec![
                    ExtendedKeyUsagePurpose::ServerAuth,
                    ExtendedKeyUsagePurpose::ClientAuth,
                ];
            }
            Profile::ServerTls(_) => {
                params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
                params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            }
            Profile::NodeSigning(_) | Profile::RegistrySigning(_) => {
                params.key_usages = vec![
                    KeyUsagePurpose::DigitalSignature,
                    KeyUsagePurpose::ContentCommitment,
                ];
                params.extended_key_usages = Vec::new();
            }
        }
        Ok(())
    }
}

fn uri_san(uri: &str) -> Result<SanType> {
    let s = uri
        .try_into()
        .map_err(|e| Problem::internal(format!("URI SAN `{uri}`: {e}")))?;
    Ok(SanType::URI(s))
}

fn host_san(name: &str) -> Result<SanType> {
    if let Ok(ip) = name.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    rustls_pki_types::DnsName::try_from(name).map_err(|_| {
        invalid(format!(
            "server certificate: `{name}` is not a DNS name or IP"
        ))
    })?;
    let s = name
        .try_into()
        .map_err(|e| invalid(format!("server certificate: `{name}`: {e}")))?;
    Ok(SanType::DnsName(s))
}

/// A random positive 16-byte serial whose DER encoding is exactly 16 bytes.
fn random_serial() -> Result<SerialNumber> {
    let mut bytes = [0u8; 16];
    aws_lc_rs::rand::fill(&mut bytes)
        .map_err(|_| Problem::internal("no randomness for a serial"))?;
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    Ok(SerialNumber::from_slice(&bytes))
}

/// The federation's certificate authority: one per federation instance, its key kept offline or
/// in the registry's protected storage.
pub struct FederationCa {
    cert_pem: String,
    key_pem: String,
    not_after: OffsetDateTime,
    issuer: Issuer<'static, KeyPair>,
}

impl fmt::Debug for FederationCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FederationCa")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

impl FederationCa {
    /// A new self-signed CA for `instance`: ECDSA P-256, CA:true with pathlen 0 (it issues
    /// end-entity certificates only), key usage keyCertSign and cRLSign.
    pub fn create(instance: &Instance, validity: Duration) -> Result<FederationCa> {
        if validity <= Duration::ZERO {
            return Err(invalid("CA validity must be positive"));
        }
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| Problem::internal(format!("generating the CA key: {e}")))?;
        let now = OffsetDateTime::now_utc();
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(
            DnType::CommonName,
            format!("Enlace federation CA {instance}"),
        );
        dn.push(DnType::OrganizationName, "Enlace");
        // Distinct names for distinct CA keys: during a rollover both CAs are trusted, and
        // certificates and CRLs are matched to their CA by issuer name.
        let fingerprint = hex::encode(Sha256::digest(key.subject_public_key_info()));
        dn.push(
            DnType::OrganizationalUnitName,
            format!("key {}", &fingerprint[..16]),
        );
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_before = now - BACKDATE;
        params.not_after = now + validity;
        params.serial_number = Some(random_serial()?);
        let cert = params
            .self_signed(&key)
            .map_err(|e| Problem::internal(format!("self-signing the CA: {e}")))?;
        Ok(FederationCa {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            not_after: params.not_after,
            issuer: Issuer::new(params, key),
        })
    }

    /// Loads a CA from its certificate and private key (PEM), checking that they belong together
    /// and that the certificate is a CA.
    pub fn load(cert_pem: &str, key_pem: &str) -> Result<FederationCa> {
        let der = encoding::first_cert(cert_pem)?;
        let cert = parse_der(&der)?;
        if !cert.is_ca() {
            return Err(invalid(
                "CA certificate: basicConstraints does not say CA:true",
            ));
        }
        encoding::private_key(key_pem)?;
        let key = KeyPair::from_pem(key_pem)
            .map_err(|e| invalid(format!("CA key: unsupported or malformed: {e}")))?;
        if key.subject_public_key_info() != cert.public_key().raw {
            return Err(invalid("CA key does not match the CA certificate"));
        }
        let not_after = cert.validity().not_after.to_datetime();
        let canonical_pem = encoding::to_pem("CERTIFICATE", &der);
        let issuer = Issuer::from_ca_cert_der(&der, key)
            .map_err(|e| invalid(format!("CA certificate: {e}")))?;
        Ok(FederationCa {
            cert_pem: canonical_pem,
            key_pem: issuer.key().serialize_pem(),
            not_after,
            issuer,
        })
    }

    /// The CA certificate, PEM: what every node and the registry trust.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA private key, PKCS#8 PEM. Store it with care.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// A node's TLS certificate: URI SAN `node.uri()`, EKU serverAuth and clientAuth, key usage
    /// digitalSignature; the key must be ECDSA P-256.
    pub fn issue_node_tls(
        &self,
        csr_pem: &str,
        node: &NodeId,
        validity: impl Into<Validity>,
    ) -> Result<IssuedCert> {
        self.issue(csr_pem, Profile::NodeTls(node), validity.into())
    }

    /// A node's signing certificate: URI SAN `node.uri()`, key usage digitalSignature and
    /// contentCommitment, no EKU (so it is useless for TLS); the key must be Ed25519.
    pub fn issue_node_signing(
        &self,
        csr_pem: &str,
        node: &NodeId,
        validity: impl Into<Validity>,
    ) -> Result<IssuedCert> {
        self.issue(csr_pem, Profile::NodeSigning(node), validity.into())
    }

    /// The registry's signing certificate for the signed global configuration: URI SAN
    /// `urn:enlace:registry:<INSTANCE>`, like a node signing certificate otherwise (Ed25519).
    pub fn issue_registry_signing(
        &self,
        csr_pem: &str,
        instance: &Instance,
        validity: impl Into<Validity>,
    ) -> Result<IssuedCert> {
        self.issue(csr_pem, Profile::RegistrySigning(instance), validity.into())
    }

    /// An HTTPS server certificate (the registry's listener): DNS and IP SANs from `dns_names`,
    /// EKU serverAuth, key usage digitalSignature; the key must be ECDSA P-256.
    pub fn issue_server_tls(
        &self,
        csr_pem: &str,
        dns_names: &[String],
        validity: impl Into<Validity>,
    ) -> Result<IssuedCert> {
        self.issue(csr_pem, Profile::ServerTls(dns_names), validity.into())
    }

    fn issue(&self, csr_pem: &str, profile: Profile<'_>, validity: Validity) -> Result<IssuedCert> {
        let (not_before, not_after) = validity.window()?;
        if not_after <= not_before {
            return Err(invalid(
                "certificate validity: not_after must be after not_before",
            ));
        }
        if not_after > self.not_after {
            return Err(invalid(format!(
                "certificate validity: ends {not_after}, after the federation CA itself ({})",
                self.not_after
            )));
        }
        let csr = verify_csr(csr_pem)?;
        let required = profile.required_key();
        if csr.algorithm != required {
            return Err(invalid(format!(
                "CSR: a {} certificate needs a {} key, the CSR carries {}",
                profile.name(),
                required,
                csr.algorithm
            ))
            .with("required_key", required.as_str())
            .with("csr_key", csr.algorithm.as_str()));
        }
        let public_key = rcgen::SubjectPublicKeyInfo::from_der(&csr.spki_der)
            .map_err(|e| invalid(format!("CSR: public key not usable: {e}")))?;

        let mut params = CertificateParams::default();
        profile.apply(&mut params)?;
        params.not_before = not_before;
        params.not_after = not_after;
        params.serial_number = Some(random_serial()?);
        let cert = params.signed_by(&public_key, &self.issuer).map_err(|e| {
            Problem::internal(format!("signing the {} certificate: {e}", profile.name()))
        })?;

        let info = info_of(&parse_der(cert.der())?)?;
        Ok(IssuedCert {
            pem: cert.pem(),
            serial_hex: info.serial_hex,
            not_before: info.not_before,
            not_after: info.not_after,
        })
    }

    /// A CRL (PEM) listing `revoked`, signed by the CA. Nodes refuse the listed certificates in
    /// TLS handshakes and in [`crate::verify_signer`] until they expire.
    pub fn crl_pem(
        &self,
        revoked: &[Revoked],
        crl_number: u64,
        this_update: OffsetDateTime,
        next_update: OffsetDateTime,
    ) -> Result<String> {
        if next_update <= this_update {
            return Err(invalid("CRL: next_update must be after this_update"));
        }
        let revoked_certs = revoked
            .iter()
            .map(|r| {
                Ok(RevokedCertParams {
                    serial_number: SerialNumber::from_slice(&parse_serial(&r.serial_hex)?),
                    revocation_time: r.revoked_at,
                    reason_code: r.reason.map(RevocationReason::to_rcgen),
                    invalidity_date: None,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let params = CertificateRevocationListParams {
            this_update,
            next_update,
            crl_number: SerialNumber::from(crl_number),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: KeyIdMethod::Sha256,
        };
        params
            .signed_by(&self.issuer)
            .and_then(|crl| crl.pem())
            .map_err(|e| Problem::internal(format!("signing the CRL: {e}")))
    }
}

/// Now minus [`BACKDATE`] to now plus `validity`.
/// When an issued certificate is valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validity {
    /// From now (backdated a little, for clocks slightly behind) for this long; a `Duration`
    /// converts into it.
    For(Duration),
    /// An explicit window, not before and not after (tests, backfills).
    Between(OffsetDateTime, OffsetDateTime),
}

impl From<Duration> for Validity {
    fn from(d: Duration) -> Validity {
        Validity::For(d)
    }
}

impl Validity {
    fn window(self) -> Result<(OffsetDateTime, OffsetDateTime)> {
        match self {
            Validity::For(validity) => {
                if validity <= Duration::ZERO {
                    return Err(invalid("certificate validity must be positive"));
                }
                let now = OffsetDateTime::now_utc();
                Ok((now - BACKDATE, now + validity))
            }
            Validity::Between(not_before, not_after) => Ok((not_before, not_after)),
        }
    }
}

/// A serial in hex: 1 to 20 bytes, leading zero bytes dropped.
fn parse_serial(serial_hex: &str) -> Result<Vec<u8>> {
    let bytes = hex::decode(serial_hex)
        .map_err(|_| invalid(format!("CRL: serial `{serial_hex}` is not hex")))?;
    let start = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    let bytes = bytes[start..].to_vec();
    if bytes.is_empty() || bytes.len() > 20 {
        return Err(invalid(format!(
            "CRL: serial `{serial_hex}` must be 1 to 20 non-zero bytes"
        )));
    }
    Ok(bytes)
}

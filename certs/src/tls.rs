//! rustls configurations: node-to-node mutual TLS by URI SAN, and HTTPS to the registry.

use std::fmt;
use std::sync::{Arc, OnceLock};

use enlace_core::id::{NODE_URI_PREFIX, NodeId};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, OtherError,
    RootCertStore, ServerConfig, SignatureScheme,
};
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, ServerName, UnixTime};
use time::OffsetDateTime;
use webpki::{
    CertRevocationList, EndEntityCert, ExpirationPolicy, KeyUsage, OwnedCertRevocationList,
    RevocationCheckDepth, RevocationOptionsBuilder, UnknownStatusPolicy,
};

use x509_parser::prelude::FromDer;

use crate::encoding;
use crate::error::{Result, invalid, unauthenticated};
use crate::inspect::{parse_der, sans};
use enlace_core::problem::Problem;

/// Installs rustls's aws-lc-rs provider as the process default. Idempotent; the configurations
/// built here name their provider explicitly and do not depend on it.
pub fn install_crypto_provider() {
    // Err means a provider is already installed, which is what we want.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .clone()
}

/// The federation CA certificates and their CRLs: what every certificate is checked against.
#[derive(Clone)]
pub struct TrustStore {
    inner: Arc<TrustInner>,
}

struct TrustInner {
    roots: Arc<RootCertStore>,
    crl_ders: Vec<CertificateRevocationListDer<'static>>,
    crls: Vec<CertRevocationList<'static>>,
}

impl fmt::Debug for TrustStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrustStore")
            .field("cas", &self.inner.roots.len())
            .field("crls", &self.inner.crls.len())
            .finish()
    }
}

impl TrustStore {
    /// Trusts the CA certificates in `ca_pems` (at least one; a PEM may hold several, e.g.
    /// during a CA rollover) and applies the CRLs in `crl_pem` (one PEM block per CA).
    ///
    /// With CRLs, revocation is checked strictly: a certificate whose CA has no CRL here is
    /// refused (unknown status), and so is any certificate once a CRL's nextUpdate has passed,
    /// so a node that stops receiving CRLs fails closed.
    pub fn new(ca_pems: &[String], crl_pem: Option<&str>) -> Result<TrustStore> {
        let mut roots = RootCertStore::empty();
        let mut ca_ders = Vec::new();
        for pem in ca_pems {
            for der in encoding::cert_chain(pem)? {
                if !parse_der(&der)?.is_ca() {
                    return Err(invalid(
                        "trust store: a certificate given as CA is not a CA",
                    ));
                }
                roots
                    .add(der.clone())
                    .map_err(|e| invalid(format!("trust store: CA certificate refused: {e}")))?;
                ca_ders.push(der);
            }
        }
        if roots.is_empty() {
            return Err(invalid("trust store: no federation CA certificate"));
        }
        let crl_ders = match crl_pem {
            Some(text) => encoding::crls(text)?,
            None => Vec::new(),
        };
        let mut crls = Vec::with_capacity(crl_ders.len());
        for der in &crl_ders {
            let crl = OwnedCertRevocationList::from_der(der)
                .map_err(|e| invalid(format!("CRL: not a valid X.509 CRL: {e:?}")))?;
            if !crl_signed_by_one_of(der, &ca_ders)? {
                return Err(invalid(
                    "CRL: not signed by a CA that is in the trust store",
                ));
            }
            crls.push(CertRevocationList::from(crl));
        }
        Ok(TrustStore {
            inner: Arc::new(TrustInner {
                roots: Arc::new(roots),
                crl_ders,
                crls,
            }),
        })
    }

    /// Whether CRLs are applied.
    pub fn has_crls(&self) -> bool {
        !self.inner.crls.is_empty()
    }
}

/// Whether the CRL `der` names one of `cas` as issuer and verifies with its key.
fn crl_signed_by_one_of(der: &[u8], cas: &[CertificateDer<'static>]) -> Result<bool> {
    let (_, crl) = x509_parser::revocation_list::CertificateRevocationList::from_der(der)
        .map_err(|e| invalid(format!("CRL: not a valid X.509 CRL: {e}")))?;
    for ca in cas {
        let ca = parse_der(ca)?;
        if ca.subject().as_raw() == crl.issuer().as_raw()
            && crl.verify_signature(ca.public_key()).is_ok()
        {
            return Ok(true);
        }
    }
    Ok(false)
}

/// A webpki refusal in words.
pub(crate) fn describe(e: &webpki::Error) -> String {
    use webpki::Error as W;
    match e {
        W::CertExpired { .. } => "certificate expired".into(),
        W::CertNotValidYet { .. } => "certificate not valid yet".into(),
        W::UnknownIssuer => "not issued by a trusted federation CA".into(),
        W::InvalidSignatureForPublicKey => {
            "signature does not verify with a federation CA's key".into()
        }
        W::CertRevoked => "certificate revoked".into(),
        W::UnknownRevocationStatus => "no CRL for the certificate's CA".into(),
        W::CrlExpired { .. } => "CRL past its nextUpdate; a fresh CRL is needed".into(),
        other => format!("{other:?}"),
    }
}

/// `now` as webpki's clock.
pub(crate) fn unix_time(now: OffsetDateTime) -> Result<UnixTime> {
    let secs = u64::try_from(now.unix_timestamp())
        .map_err(|_| invalid("verification time is before 1970"))?;
    Ok(UnixTime::since_unix_epoch(std::time::Duration::from_secs(
        secs,
    )))
}

/// webpki's chain check: signatures up to a federation CA, validity at `now`, the EKU `usage`
/// if the certificate has EKUs, and the CRLs (whole chain, unknown status denied, expired CRL
/// refused). No name check: callers check the URI SAN themselves.
pub(crate) fn verify_chain(
    trust: &TrustStore,
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    now: UnixTime,
    usage: KeyUsage,
) -> std::result::Result<(), webpki::Error> {
    let cert = EndEntityCert::try_from(end_entity)?;
    let crl_refs: Vec<&CertRevocationList<'_>> = trust.inner.crls.iter().collect();
    let revocation = match RevocationOptionsBuilder::new(&crl_refs) {
        Ok(builder) => Some(
            builder
                .with_depth(RevocationCheckDepth::Chain)
                .with_status_policy(UnknownStatusPolicy::Deny)
                .with_expiration_policy(ExpirationPolicy::Enforce)
                .build(),
        ),
        // No CRLs given: no revocation checking.
        Err(_) => None,
    };
    cert.verify_for_usage(
        provider().signature_verification_algorithms.all,
        &trust.inner.roots.roots,
        intermediates,
        now,
        usage,
        revocation,
        None,
    )?;
    Ok(())
}

/// The node id in the end-entity certificate (the first of `certs`): its one and only
/// `urn:enlace:node:` URI SAN.
pub fn peer_node_id(certs: &[CertificateDer<'_>]) -> Result<NodeId> {
    let end_entity = certs
        .first()
        .ok_or_else(|| unauthenticated("peer presented no certificate"))?;
    let cert = parse_der(end_entity).map_err(|p| unauthenticated(p.detail))?;
    let (uris, _, _) = sans(&cert).map_err(|p| unauthenticated(p.detail))?;
    let node_uris: Vec<&String> = uris
        .iter()
        .filter(|u| u.starts_with(NODE_URI_PREFIX))
        .collect();
    let [uri] = node_uris.as_slice() else {
        return Err(unauthenticated(format!(
            "peer certificate must carry exactly one {NODE_URI_PREFIX} URI, it carries {}",
            node_uris.len()
        )));
    };
    NodeId::from_uri(uri).map_err(|e| unauthenticated(format!("peer certificate: {e}")))
}

fn to_rustls(e: webpki::Error) -> rustls::Error {
    use webpki::Error as W;
    let c = match e {
        W::CertExpired { time, not_after } => CertificateError::ExpiredContext { time, not_after },
        W::CertNotValidYet { time, not_before } => {
            CertificateError::NotValidYetContext { time, not_before }
        }
        W::UnknownIssuer => CertificateError::UnknownIssuer,
        W::CertRevoked => CertificateError::Revoked,
        W::UnknownRevocationStatus => CertificateError::UnknownRevocationStatus,
        W::CrlExpired { time, next_update } => {
            CertificateError::ExpiredRevocationListContext { time, next_update }
        }
        W::InvalidSignatureForPublicKey => CertificateError::BadSignature,
        W::BadDer | W::BadDerTime | W::TrailingData(_) => CertificateError::BadEncoding,
        other => CertificateError::Other(OtherError(Arc::new(other))),
    };
    rustls::Error::InvalidCertificate(c)
}

#[derive(Debug, Clone, Copy)]
enum Purpose {
    Server,
    Client,
}

/// webpki checks an extended key usage only when the certificate has one. A node's signing
/// certificate has none (that is what keeps a TLS certificate from signing), so without this
/// it would also pass as a TLS certificate: a TLS certificate must state the purpose.
fn require_tls_usage(
    der: &CertificateDer<'_>,
    purpose: Purpose,
) -> std::result::Result<(), rustls::Error> {
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der.as_ref())
        .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
    let eku = cert
        .extended_key_usage()
        .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
    let ok = eku.is_some_and(|e| match purpose {
        Purpose::Server => e.value.server_auth,
        Purpose::Client => e.value.client_auth,
    });
    if ok {
        return Ok(());
    }
    Err(problem_to_rustls(unauthenticated(format!(
        "the certificate does not state the TLS {} purpose (extended key usage); a signing certificate is not a TLS certificate",
        match purpose {
            Purpose::Server => "server",
            Purpose::Client => "client",
        }
    ))))
}

fn problem_to_rustls(p: enlace_core::problem::Problem) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(p))))
}

/// Verifies a node's server certificate: webpki chain to the federation CA with CRLs and
/// validity, EKU serverAuth, and a node URI SAN instead of a DNS name (the name the client
/// dialled is ignored). With `expected`, the node must be exactly that one.
#[derive(Debug)]
struct NodeServerVerifier {
    trust: TrustStore,
    expected: Option<NodeId>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for NodeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        verify_chain(
            &self.trust,
            end_entity,
            intermediates,
            now,
            KeyUsage::server_auth(),
        )
        .map_err(to_rustls)?;
        require_tls_usage(end_entity, Purpose::Server)?;
        let node = peer_node_id(std::slice::from_ref(end_entity)).map_err(problem_to_rustls)?;
        match &self.expected {
            Some(expected) if node != *expected => Err(problem_to_rustls(unauthenticated(
                format!("server is node {node}, expected {expected}"),
            ))),
            _ => Ok(ServerCertVerified::assertion()),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// rustls's client-certificate verifier (chain, CRLs, validity, EKU clientAuth), plus: the
/// certificate must carry exactly one node URI SAN, so only nodes get in.
#[derive(Debug)]
struct NodeClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
}

impl ClientCertVerifier for NodeClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> std::result::Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        require_tls_usage(end_entity, Purpose::Client)?;
        peer_node_id(std::slice::from_ref(end_entity)).map_err(problem_to_rustls)?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

fn tls_error(e: rustls::Error) -> enlace_core::problem::Problem {
    invalid(format!("TLS configuration: {e}"))
}

/// The node's listener: TLS 1.3 only, ALPN `h2`, a client certificate required that chains to
/// the federation CA, is not revoked or expired, and names a node. Read the peer with
/// [`peer_node_id`] on the connection's peer certificates.
pub fn server_config(
    trust: &TrustStore,
    cert_pem: &str,
    key_pem: &str,
) -> Result<Arc<ServerConfig>> {
    let chain = encoding::cert_chain(cert_pem)?;
    let key = encoding::private_key(key_pem)?;
    let inner = WebPkiClientVerifier::builder_with_provider(trust.inner.roots.clone(), provider())
        .with_crls(trust.inner.crl_ders.clone())
        .enforce_revocation_expiration()
        .build()
        .map_err(|e| Problem::internal(format!("client verifier: {e}")))?;
    let verifier = Arc::new(NodeClientVerifier { inner });
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_error)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(tls_error)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// A node dialling another node: TLS 1.3 only, ALPN `h2`, presents `cert_pem`, and accepts a
/// server certificate that chains to the federation CA (CRLs, validity) and carries a node URI
/// SAN — equal to `expected.uri()` when `expected` is given. The DNS name dialled is not
/// checked, so any [`ServerName`] may be passed to the connector.
pub fn client_config(
    trust: &TrustStore,
    cert_pem: &str,
    key_pem: &str,
    expected: Option<NodeId>,
) -> Result<Arc<ClientConfig>> {
    let chain = encoding::cert_chain(cert_pem)?;
    let key = encoding::private_key(key_pem)?;
    let provider = provider();
    let verifier = Arc::new(NodeServerVerifier {
        trust: trust.clone(),
        expected,
        algorithms: provider.signature_verification_algorithms,
    });
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_error)?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(chain, key)
        .map_err(tls_error)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// HTTPS to the registry: TLS 1.3, the server verified by DNS name (or IP) against the
/// federation CA and its CRLs, no client certificate. ALPN `h2` then `http/1.1`.
pub fn https_client_config(trust: &TrustStore) -> Result<Arc<ClientConfig>> {
    let verifier =
        WebPkiServerVerifier::builder_with_provider(trust.inner.roots.clone(), provider())
            .with_crls(trust.inner.crl_ders.clone())
            .enforce_revocation_expiration()
            .build()
            .map_err(|e| Problem::internal(format!("server verifier: {e}")))?;
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_error)?
        .with_webpki_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The registry's HTTPS listener (certificate from [`crate::FederationCa::issue_server_tls`]):
/// TLS 1.3, no client certificate, ALPN `h2` then `http/1.1`.
pub fn https_server_config(cert_pem: &str, key_pem: &str) -> Result<Arc<ServerConfig>> {
    let chain = encoding::cert_chain(cert_pem)?;
    let key = encoding::private_key(key_pem)?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_error)?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(tls_error)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Local backends on a node's TLS consumer listener. A client certificate is asked for but not
/// required (a backend may use a bearer token instead). One that is presented need not chain
/// to anything: the node pins each backend's certificate by its SHA-256
/// ([`certificate_sha256`]) to one subsystem, as X-Road pins its members' internal TLS
/// certificates. It must be within its validity period, and the handshake proves the backend
/// holds its key.
#[derive(Debug)]
struct BackendClientVerifier {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for BackendClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> std::result::Result<ClientCertVerified, rustls::Error> {
        let (_, cert) = x509_parser::certificate::X509Certificate::from_der(end_entity.as_ref())
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        let now = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
        let validity = cert.validity();
        if now < validity.not_before.timestamp() {
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidYet,
            ));
        }
        if now > validity.not_after.timestamp() {
            return Err(rustls::Error::InvalidCertificate(CertificateError::Expired));
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// A node's TLS listener for local backends: its own server certificate (from the
/// institution's PKI, not the federation's), TLS 1.2 or 1.3, ALPN `h2` then `http/1.1`, and
/// an optional client certificate (see [`certificate_sha256`]).
pub fn backend_server_config(cert_pem: &str, key_pem: &str) -> Result<Arc<ServerConfig>> {
    let chain = encoding::cert_chain(cert_pem)?;
    let key = encoding::private_key(key_pem)?;
    let provider = provider();
    let verifier = Arc::new(BackendClientVerifier {
        algorithms: provider.signature_verification_algorithms,
    });
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(tls_error)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(tls_error)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The SHA-256 (lower-case hex) of a certificate's DER: how a node pins a backend's
/// certificate to a subsystem.
pub fn certificate_sha256(der: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(der))
}

/// [`certificate_sha256`] of the first certificate of a PEM file.
pub fn certificate_pem_sha256(pem: &str) -> Result<String> {
    let der = encoding::first_cert(pem)?;
    Ok(certificate_sha256(&der))
}

//! Tests of issuance, CRLs, signer checks and mutual TLS over real loopback sockets.

use std::sync::Arc;
use std::time::Duration as StdDuration;

use enlace_core::id::{Instance, NodeId};
use enlace_core::problem::ProblemKind;
use rustls::{ClientConfig, ServerConfig};
use rustls_pki_types::ServerName;
use time::{Duration, OffsetDateTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::*;

const REGISTRO_CIVIL: &str = "CL-DEV/GOV/61002000-3";
const SII: &str = "CL-DEV/GOV/60803000-K";

fn instance() -> Instance {
    "CL-DEV".parse().unwrap()
}

fn node(member: &str, name: &str) -> NodeId {
    format!("{member}/node/{name}").parse().unwrap()
}

fn new_ca() -> FederationCa {
    FederationCa::create(&instance(), Duration::days(365)).unwrap()
}

/// A node enrolled with a CA: keys and both certificates.
struct Enrolled {
    id: NodeId,
    keys: NodeKeys,
    tls: IssuedCert,
    signing: IssuedCert,
}

fn enrol(ca: &FederationCa, id: NodeId) -> Enrolled {
    let keys = node_init(&id).unwrap();
    let tls = ca
        .issue_node_tls(&keys.tls_csr_pem, &id, Duration::days(7))
        .unwrap();
    let signing = ca
        .issue_node_signing(&keys.signing_csr_pem, &id, Duration::days(7))
        .unwrap();
    Enrolled {
        id,
        keys,
        tls,
        signing,
    }
}

fn trust(ca: &FederationCa, crl: Option<&str>) -> TrustStore {
    TrustStore::new(&[ca.cert_pem().to_string()], crl).unwrap()
}

fn revoke(ca: &FederationCa, serials: &[&str]) -> String {
    let now = OffsetDateTime::now_utc();
    let revoked: Vec<Revoked> = serials
        .iter()
        .map(|s| Revoked {
            serial_hex: s.to_string(),
            revoked_at: now - Duration::minutes(1),
            reason: Some(RevocationReason::KeyCompromise),
        })
        .collect();
    ca.crl_pem(
        &revoked,
        1,
        now - Duration::minutes(1),
        now + Duration::days(1),
    )
    .unwrap()
}

fn server_for(trust: &TrustStore, n: &Enrolled) -> Arc<ServerConfig> {
    server_config(trust, &n.tls.pem, &n.keys.tls_key_pem).unwrap()
}

fn client_for(trust: &TrustStore, n: &Enrolled, expected: Option<NodeId>) -> Arc<ClientConfig> {
    client_config(trust, &n.tls.pem, &n.keys.tls_key_pem, expected).unwrap()
}

/// What each side of one handshake saw.
struct Outcome {
    /// The client's node id as the server read it, or the server's error.
    server: std::result::Result<NodeId, String>,
    /// The server's node id and the ALPN protocol as the client saw them, or the client's error.
    client: std::result::Result<(NodeId, Option<Vec<u8>>), String>,
}

/// One TLS handshake over a real loopback TCP connection. The server answers `ok` once it has
/// accepted the client, so a client refused by the server sees an error too (in TLS 1.3 the
/// client finishes its side of the handshake before the server checks the client certificate).
async fn handshake(server: Arc<ServerConfig>, client: Arc<ClientConfig>) -> Outcome {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server_task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.map_err(|e| e.to_string())?;
        let mut tls = TlsAcceptor::from(server)
            .accept(tcp)
            .await
            .map_err(|e| e.to_string())?;
        let peer = peer_node_id(tls.get_ref().1.peer_certificates().unwrap_or(&[]))
            .map_err(|e| e.to_string())?;
        tls.write_all(b"ok").await.map_err(|e| e.to_string())?;
        tls.shutdown().await.map_err(|e| e.to_string())?;
        Ok::<_, String>(peer)
    });
    let client_side = async {
        let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let name = ServerName::try_from("peer.enlace.invalid").unwrap();
        let mut tls = TlsConnector::from(client)
            .connect(name, tcp)
            .await
            .map_err(|e| e.to_string())?;
        let mut buf = [0u8; 2];
        tls.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
        let (_, conn) = tls.get_ref();
        let peer =
            peer_node_id(conn.peer_certificates().unwrap_or(&[])).map_err(|e| e.to_string())?;
        Ok::<_, String>((peer, conn.alpn_protocol().map(<[u8]>::to_vec)))
    };
    let limit = StdDuration::from_secs(10);
    let client = tokio::time::timeout(limit, client_side)
        .await
        .expect("client timed out");
    let server = tokio::time::timeout(limit, server_task)
        .await
        .expect("server timed out")
        .expect("server task panicked");
    Outcome { server, client }
}

#[tokio::test]
async fn two_nodes_complete_mutual_tls_and_see_each_other() {
    let ca = new_ca();
    let a = enrol(&ca, node(REGISTRO_CIVIL, "a"));
    let b = enrol(&ca, node(SII, "b"));
    let t = trust(&ca, Some(&revoke(&ca, &[])));
    let out = handshake(server_for(&t, &a), client_for(&t, &b, Some(a.id.clone()))).await;
    assert_eq!(out.server.unwrap(), b.id);
    let (server_id, alpn) = out.client.unwrap();
    assert_eq!(server_id, a.id);
    assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));
}

#[tokio::test]
async fn client_certificate_from_another_ca_is_refused() {
    let ca = new_ca();
    let rogue_ca = new_ca();
    let a = enrol(&ca, node(REGISTRO_CIVIL, "a"));
    let mallory = enrol(&rogue_ca, node(SII, "b"));
    let t = trust(&ca, None);
    // Mallory trusts the real CA, so she would accept the server; the server must refuse her.
    let out = handshake(server_for(&t, &a), client_for(&t, &mallory, None)).await;
    let err = out.server.unwrap_err();
    assert!(err.contains("UnknownIssuer"), "{err}");
    assert!(out.client.is_err());
}

#[tokio::test]
async fn revoked_client_certificate_is_refused() {
    let ca = new_ca();
    let a = enrol(&ca, node(REGISTRO_CIVIL, "a"));
    let b = enrol(&ca, node(SII, "b"));
    let c = enrol(&ca, node(SII, "c"));
    let crl = revoke(&ca, &[&b.tls.serial_hex]);
    let t = trust(&ca, Some(&crl));

    let out = handshake(server_for(&t, &a), client_for(&t, &b, None)).await;
    let err = out.server.unwrap_err();
    assert!(err.contains("Revoked"), "{err}");
    assert!(out.client.is_err());

    // The same CRL lets a certificate it does not list through.
    let out = handshake(server_for(&t, &a), client_for(&t, &c, None)).await;
    assert_eq!(out.server.unwrap(), c.id);
}

#[tokio::test]
async fn expired_client_certificate_is_refused() {
    let ca = new_ca();
    let a = enrol(&ca, node(REGISTRO_CIVIL, "a"));
    let mut b = enrol(&ca, node(SII, "b"));
    let now = OffsetDateTime::now_utc();
    b.tls = ca
        .issue_node_tls(
            &b.keys.tls_csr_pem,
            &b.id,
            Validity::Between(now - Duration::days(10), now - Duration::days(3)),
        )
        .unwrap();
    let t = trust(&ca, None);
    let out = handshake(server_for(&t, &a), client_for(&t, &b, None)).await;
    let err = out.server.unwrap_err();
    assert!(err.contains("expired"), "{err}");
}

#[tokio::test]
async fn expired_server_certificate_is_refused_by_the_client() {
    let ca = new_ca();
    let mut a = enrol(&ca, node(REGISTRO_CIVIL, "a"));
    let b = enrol(&ca, node(SII, "b"));
    let now = OffsetDateTime::now_utc();
    a.tls = ca
        .issue_node_tls(
            &a.keys.tls_csr_pem,
            &a.id,
            Validity::Between(now - Duration::days(10), now - Duration::days(3)),
        )
        .unwrap();
    let t = trust(&ca, None);
    let out = handshake(server_for(&t, &a), client_for(&t, &b, None)).await;
    let err = out.client.unwrap_err();
    assert!(err.contains("expired"), "{err}");
}

#[tokio::test]
async fn server_of_another_member_is_refused_when_a_node_is_expected() {
    let ca = new_ca();
    let wanted = node(REGISTRO_CIVIL, "a");
    let impostor = enrol(&ca, node(SII, "a"));
    let client = enrol(&ca, node(SII, "b"));
    let t = trust(&ca, None);

    let out = handshake(
        server_for(&t, &impostor),
        client_for(&t, &client, Some(wanted.clone())),
    )
    .await;
    let err = out.client.unwrap_err();
    assert!(err.contains("expected"), "{err}");
    assert!(err.contains(&wanted.to_string()), "{err}");

    // Without an expectation the same server is accepted, and is who its certificate says.
    let out = handshake(server_for(&t, &impostor), client_for(&t, &client, None)).await;
    assert_eq!(out.client.unwrap().0, impostor.id);
}

#[tokio::test]
async fn registry_https_certificate_is_not_a_node() {
    let ca = new_ca();
    let b = enrol(&ca, node(SII, "b"));
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let csr = csr_for(&key.serialize_pem(), "registry").unwrap();
    let names = vec![
        "registry.enlace.invalid".to_string(),
        "127.0.0.1".to_string(),
    ];
    let cert = ca
        .issue_server_tls(&csr, &names, Duration::days(30))
        .unwrap();
    let info = cert_info(&cert.pem).unwrap();
    assert_eq!(info.dns, vec!["registry.enlace.invalid"]);
    assert_eq!(info.ips, vec!["127.0.0.1"]);
    assert!(info.uris.is_empty());

    let t = trust(&ca, None);
    // A node client refuses it: no node URI (and no clientAuth to be a node client either).
    let server = https_server_config(&cert.pem, &key.serialize_pem()).unwrap();
    let out = handshake(server.clone(), client_for(&t, &b, None)).await;
    assert!(out.client.unwrap_err().contains("urn:enlace:node:"));

    // A plain HTTPS client accepts it by DNS name.
    let https = https_client_config(&t).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let srv = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        TlsAcceptor::from(server).accept(tcp).await.map(|_| ())
    });
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("registry.enlace.invalid").unwrap();
    TlsConnector::from(https).connect(name, tcp).await.unwrap();
    srv.await.unwrap().unwrap();
}

#[test]
fn issued_certificates_carry_what_the_ca_decides() {
    let ca = new_ca();
    let id = node(REGISTRO_CIVIL, "a");
    let n = enrol(&ca, id.clone());

    let tls = cert_info(&n.tls.pem).unwrap();
    assert_eq!(tls.uris, vec![id.uri()]);
    assert_eq!(tls.public_key_algorithm, "ecdsa-p256");
    assert_eq!(tls.serial_hex, n.tls.serial_hex);
    assert_eq!(tls.serial_hex.len(), 32);
    assert_eq!(tls.subject_cn.as_deref(), Some(id.to_string().as_str()));
    assert!(!tls.is_ca);
    assert!(tls.not_after - tls.not_before <= Duration::days(7) + Duration::minutes(5));

    let signing = cert_info(&n.signing.pem).unwrap();
    assert_eq!(signing.uris, vec![id.uri()]);
    assert_eq!(signing.public_key_algorithm, "ed25519");
    assert_ne!(signing.serial_hex, tls.serial_hex);
    assert_eq!(signing.spki_sha256_hex.len(), 64);

    let ca_info = cert_info(ca.cert_pem()).unwrap();
    assert!(ca_info.is_ca);
    assert_eq!(
        ca_info.subject_cn.as_deref(),
        Some("Enlace federation CA CL-DEV")
    );
}

#[test]
fn sans_requested_in_the_csr_are_ignored() {
    let ca = new_ca();
    let id = node(REGISTRO_CIVIL, "a");
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["evil.example".to_string()]).unwrap();
    params.subject_alt_names.push(rcgen::SanType::URI(
        node(SII, "z").uri().try_into().unwrap(),
    ));
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let csr = params.serialize_request(&key).unwrap().pem().unwrap();
    let cert = ca.issue_node_tls(&csr, &id, Duration::days(7)).unwrap();
    let info = cert_info(&cert.pem).unwrap();
    assert_eq!(info.uris, vec![id.uri()]);
    assert!(info.dns.is_empty());
    assert!(!info.is_ca);
}

#[test]
fn tampered_csr_is_refused() {
    let ca = new_ca();
    let id = node(REGISTRO_CIVIL, "a");
    let keys = node_init(&id).unwrap();
    let mut der = pem::parse(&keys.tls_csr_pem).unwrap().into_contents();
    // Rename the subject from node/a to node/b: the self-signature no longer matches.
    let needle = b"node/a";
    let at = der.windows(needle.len()).position(|w| w == needle).unwrap();
    der[at + needle.len() - 1] = b'b';
    let tampered = pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", der));
    let err = ca
        .issue_node_tls(&tampered, &id, Duration::days(7))
        .unwrap_err();
    assert_eq!(err.kind, ProblemKind::InvalidRequest);
    assert!(err.detail.contains("self-signature"), "{}", err.detail);

    // The untouched CSR is fine.
    ca.issue_node_tls(&keys.tls_csr_pem, &id, Duration::days(7))
        .unwrap();
}

#[test]
fn wrong_key_types_and_oversized_csrs_are_refused() {
    let ca = new_ca();
    let id = node(REGISTRO_CIVIL, "a");
    let keys = node_init(&id).unwrap();

    let err = ca
        .issue_node_signing(&keys.tls_csr_pem, &id, Duration::days(7))
        .unwrap_err();
    assert_eq!(err.kind, ProblemKind::InvalidRequest);
    assert!(err.detail.contains("needs a ed25519 key"), "{}", err.detail);

    let err = ca
        .issue_node_tls(&keys.signing_csr_pem, &id, Duration::days(7))
        .unwrap_err();
    assert!(err.detail.contains("ecdsa-p256"), "{}", err.detail);

    let big = format!("{}{}", keys.tls_csr_pem, " ".repeat(MAX_CSR_PEM_LEN));
    let err = ca.issue_node_tls(&big, &id, Duration::days(7)).unwrap_err();
    assert_eq!(err.kind, ProblemKind::BodyTooLarge);

    let err = ca
        .issue_node_tls("not a csr", &id, Duration::days(7))
        .unwrap_err();
    assert_eq!(err.kind, ProblemKind::InvalidRequest);
}

#[test]
fn ca_round_trips_through_pem() {
    let ca = new_ca();
    let loaded = FederationCa::load(ca.cert_pem(), ca.key_pem()).unwrap();
    let id = node(REGISTRO_CIVIL, "a");
    let n = enrol(&loaded, id.clone());
    let t = trust(&ca, Some(&revoke(&loaded, &[])));
    let key = verify_signer(&t, &n.signing.pem, &id.uri(), OffsetDateTime::now_utc()).unwrap();
    assert_eq!(key.len(), 32);

    let other = new_ca();
    let err = FederationCa::load(ca.cert_pem(), other.key_pem()).unwrap_err();
    assert!(err.detail.contains("does not match"), "{}", err.detail);
}

#[test]
fn verify_signer_accepts_only_the_right_signing_certificate() {
    let ca = new_ca();
    let a = enrol(&ca, node(REGISTRO_CIVIL, "a"));
    let b = enrol(&ca, node(SII, "b"));
    let now = OffsetDateTime::now_utc();
    let crl = revoke(&ca, &[&b.signing.serial_hex]);
    let t = trust(&ca, Some(&crl));

    // Good: the key in the certificate is the node's signing key.
    let key = verify_signer(&t, &a.signing.pem, &a.id.uri(), now).unwrap();
    let signer = SigningKey::from_pem(&a.keys.signing_key_pem).unwrap();
    assert_eq!(key, signer.public_key_bytes());
    assert!(verify_ed25519(&key, b"hello", &signer.sign(b"hello")));

    // Wrong URI: a's certificate does not speak for b.
    let err = verify_signer(&t, &a.signing.pem, &b.id.uri(), now).unwrap_err();
    assert_eq!(err.kind, ProblemKind::Unauthenticated);
    assert!(err.detail.contains("expected"), "{}", err.detail);

    // Revoked.
    let err = verify_signer(&t, &b.signing.pem, &b.id.uri(), now).unwrap_err();
    assert!(err.detail.contains("revoked"), "{}", err.detail);

    // A TLS certificate is not a signing certificate.
    let err = verify_signer(&t, &a.tls.pem, &a.id.uri(), now).unwrap_err();
    assert_eq!(err.kind, ProblemKind::Unauthenticated);
    assert!(err.detail.contains("ed25519"), "{}", err.detail);

    // Not yet valid / expired at the time asked.
    assert!(verify_signer(&t, &a.signing.pem, &a.id.uri(), now - Duration::days(1)).is_err());
    assert!(verify_signer(&t, &a.signing.pem, &a.id.uri(), now + Duration::days(8)).is_err());

    // A CRL past its nextUpdate fails closed.
    let err = verify_signer(&t, &a.signing.pem, &a.id.uri(), now + Duration::days(2)).unwrap_err();
    assert!(
        err.detail.contains("CRL past its nextUpdate"),
        "{}",
        err.detail
    );

    // From another CA.
    let rogue = new_ca();
    let m = enrol(&rogue, a.id.clone());
    let err = verify_signer(&t, &m.signing.pem, &a.id.uri(), now).unwrap_err();
    assert!(
        err.detail.contains("not issued by a trusted"),
        "{}",
        err.detail
    );
}

#[test]
fn verify_signer_refuses_an_ed25519_certificate_with_tls_usage() {
    // A TLS-profile certificate cannot carry an Ed25519 key from our CA, so build one directly.
    let ca = new_ca();
    let id = node(REGISTRO_CIVIL, "a");
    let ca_key = rcgen::KeyPair::from_pem(ca.key_pem()).unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_pem(ca.cert_pem(), ca_key).unwrap();
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = vec![rcgen::SanType::URI(id.uri().try_into().unwrap())];
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::hours(1);
    let cert = params.signed_by(&key, &issuer).unwrap();
    let t = trust(&ca, None);
    let err = verify_signer(&t, &cert.pem(), &id.uri(), now).unwrap_err();
    assert!(err.detail.contains("extended key usage"), "{}", err.detail);
}

#[test]
fn registry_signing_certificate_verifies_under_the_registry_uri() {
    let ca = new_ca();
    let key = SigningKey::generate().unwrap();
    let csr = csr_for(key.to_pem(), "Enlace registry CL-DEV").unwrap();
    let cert = ca
        .issue_registry_signing(&csr, &instance(), Duration::days(30))
        .unwrap();
    let t = trust(&ca, None);
    let uri = registry_uri(&instance());
    assert_eq!(uri, "urn:enlace:registry:CL-DEV");
    let pk = verify_signer(&t, &cert.pem, &uri, OffsetDateTime::now_utc()).unwrap();
    assert_eq!(pk, key.public_key_bytes());
    let node_uri = node(REGISTRO_CIVIL, "a").uri();
    assert!(verify_signer(&t, &cert.pem, &node_uri, OffsetDateTime::now_utc()).is_err());
}

#[test]
fn ed25519_signatures_verify_and_a_flipped_byte_fails() {
    let key = SigningKey::generate().unwrap();
    let again = SigningKey::from_pem(key.to_pem()).unwrap();
    assert_eq!(again.public_key_bytes(), key.public_key_bytes());
    let msg = b"GET /persons/12345678-5";
    let sig = key.sign(msg);
    assert_eq!(sig.len(), 64);
    let pk = key.public_key_bytes();
    assert_eq!(pk.len(), 32);
    assert!(verify_ed25519(&pk, msg, &sig));

    let mut bad_sig = sig.clone();
    bad_sig[10] ^= 1;
    assert!(!verify_ed25519(&pk, msg, &bad_sig));
    let mut bad_msg = msg.to_vec();
    bad_msg[0] ^= 1;
    assert!(!verify_ed25519(&pk, &bad_msg, &sig));
    let other = SigningKey::generate().unwrap();
    assert!(!verify_ed25519(&other.public_key_bytes(), msg, &sig));

    // A P-256 key is not a signing key.
    let p256 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    assert!(SigningKey::from_pem(&p256.serialize_pem()).is_err());
}

#[test]
fn needs_renewal_after_the_given_fraction() {
    let ca = new_ca();
    let id = node(REGISTRO_CIVIL, "a");
    let keys = node_init(&id).unwrap();
    let start = OffsetDateTime::now_utc() - Duration::hours(1);
    let cert = ca
        .issue_node_tls(
            &keys.tls_csr_pem,
            &id,
            Validity::Between(start, start + Duration::days(10)),
        )
        .unwrap();
    let at = |days: i64| start + Duration::days(days);
    assert!(!needs_renewal(&cert.pem, at(1), 0.3));
    assert!(!needs_renewal(&cert.pem, at(6), 0.3));
    assert!(needs_renewal(&cert.pem, at(8), 0.3));
    assert!(needs_renewal(&cert.pem, at(11), 0.3));
    assert!(needs_renewal("garbage", at(1), 0.3));
}

#[test]
fn trust_store_refuses_bad_input() {
    let ca = new_ca();
    let other = new_ca();
    let a = enrol(&ca, node(REGISTRO_CIVIL, "a"));
    assert!(TrustStore::new(&[], None).is_err());
    assert!(TrustStore::new(std::slice::from_ref(&a.tls.pem), None).is_err());
    let foreign_crl = revoke(&other, &[]);
    let err = TrustStore::new(&[ca.cert_pem().to_string()], Some(&foreign_crl)).unwrap_err();
    assert!(err.detail.contains("not signed by a CA"), "{}", err.detail);
    install_crypto_provider();
    install_crypto_provider();
}

#[tokio::test]
async fn a_signing_certificate_does_not_pass_as_a_tls_certificate() {
    let ca = new_ca();
    let a = enrol(&ca, node("CL-DEV/GOV/61002000-3", "a"));
    let b = enrol(&ca, node("CL-DEV/GOV/60803000-K", "a"));
    let t = trust(&ca, None);
    // b presents its Ed25519 signing certificate and key as its TLS client certificate.
    let sneaky_client = client_config(&t, &b.signing.pem, &b.keys.signing_key_pem, None).unwrap();
    let out = handshake(server_for(&t, &a), sneaky_client).await;
    let err = out.server.expect_err("the server refuses it");
    assert!(err.contains("purpose"), "{err}");
    // ...and as its TLS server certificate.
    let sneaky_server = server_config(&t, &b.signing.pem, &b.keys.signing_key_pem).unwrap();
    let out = handshake(sneaky_server, client_for(&t, &a, None)).await;
    let err = out.client.expect_err("the client refuses it");
    assert!(err.contains("purpose"), "{err}");
    // Control: the TLS certificates themselves still work.
    let out = handshake(server_for(&t, &a), client_for(&t, &b, None)).await;
    assert_eq!(out.server.unwrap(), b.id);
}

/// The DER of a PEM private key.
fn key_der(pem: &str) -> Vec<u8> {
    let rustls_pki_types::PrivateKeyDer::Pkcs8(k) = crate::encoding::private_key(pem).unwrap()
    else {
        panic!("not PKCS#8");
    };
    k.secret_pkcs8_der().to_vec()
}

/// Ed25519 keys are written as PKCS#8 v1 (RFC 5208: `SEQUENCE { INTEGER 0, algorithm, OCTET
/// STRING }`, 48 bytes), which OpenSSL 3.0 and Python's `cryptography` read; a v2 key (RFC 5958,
/// with the public key, as rcgen and older Enlace wrote them) is still read, and re-written as v1.
#[test]
fn ed25519_keys_are_written_as_pkcs8_v1_and_v2_is_still_read() {
    const V1_PREFIX: [u8; 5] = [0x30, 0x2e, 0x02, 0x01, 0x00];
    let generated = SigningKey::generate().unwrap();
    let der = key_der(generated.to_pem());
    assert_eq!((der.len(), &der[..5]), (48, &V1_PREFIX[..]), "{der:02x?}");
    let keys = node_init(&node(REGISTRO_CIVIL, "a")).unwrap();
    let der = key_der(&keys.signing_key_pem);
    assert_eq!((der.len(), &der[..5]), (48, &V1_PREFIX[..]), "{der:02x?}");
    SigningKey::from_pem(&keys.signing_key_pem).unwrap();
    // The CSR was made with that very key.
    assert!(keys.signing_csr_pem.contains("CERTIFICATE REQUEST"));

    let v2 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let v2_der = key_der(&v2.serialize_pem());
    assert_eq!(v2_der[4], 0x01, "rcgen writes v2: {v2_der:02x?}");
    let read = SigningKey::from_pem(&v2.serialize_pem()).unwrap();
    assert_eq!(read.public_key_bytes(), v2.public_key_raw());
    let der = key_der(read.to_pem());
    assert_eq!((der.len(), &der[..5]), (48, &V1_PREFIX[..]));
    // Same key, same signatures: the v1 re-encoding did not change it.
    let again = SigningKey::from_pem(read.to_pem()).unwrap();
    assert_eq!(again.sign(b"m"), read.sign(b"m"));
}

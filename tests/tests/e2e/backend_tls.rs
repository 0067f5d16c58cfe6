//! Local backends on the SII node's TLS consumer listener: a client certificate pinned to a
//! subsystem identifies the backend without a token; an unknown one does not; a certificate and
//! a token naming different subsystems are refused. Certificates are made at test time.

use std::sync::Arc;

use enlace_registry::demo;
use enlace_tests::{TestFederation, sha256_hex};
use serde_json::Value;

struct Pem {
    cert: String,
    key: String,
    der: Vec<u8>,
}

fn self_signed(name: &str) -> Pem {
    let key = rcgen::KeyPair::generate().expect("key");
    let params = rcgen::CertificateParams::new(vec![name.to_string()]).expect("params");
    let cert = params.self_signed(&key).expect("certificate");
    Pem {
        cert: cert.pem(),
        key: key.serialize_pem(),
        der: cert.der().to_vec(),
    }
}

/// An HTTPS client that trusts `server` and presents `client`, if any.
fn client(server: &Pem, client: Option<&Pem>) -> reqwest::Client {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls_pki_types::CertificateDer::from(server.der.clone()))
        .expect("root");
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots);
    let config = match client {
        Some(c) => {
            let chain = vec![rustls_pki_types::CertificateDer::from(c.der.clone())];
            let key = rustls_pki_types::PrivateKeyDer::try_from(
                pem::parse(&c.key).expect("key pem").contents().to_vec(),
            )
            .expect("key");
            builder
                .with_client_auth_cert(chain, key)
                .expect("client auth")
        }
        None => builder.with_no_client_auth(),
    };
    reqwest::Client::builder()
        .use_preconfigured_tls(config)
        .build()
        .expect("client")
}

#[tokio::test]
async fn a_backend_is_known_by_its_pinned_client_certificate() {
    enlace_certs::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let server = self_signed("localhost");
    let renta = self_signed("renta.sii.example");
    let stranger = self_signed("stranger.example");
    std::fs::write(dir.path().join("tls.pem"), &server.cert).unwrap();
    std::fs::write(dir.path().join("tls-key.pem"), &server.key).unwrap();
    let (cert_file, key_file) = (dir.path().join("tls.pem"), dir.path().join("tls-key.pem"));
    let renta_fp = enlace_certs::certificate_sha256(&renta.der);
    let f = TestFederation::start_with(move |s, provider| {
        if provider {
            return;
        }
        s.consumer_tls = Some(enlace_node::settings::ConsumerTls {
            listen: "127.0.0.1:0".parse().unwrap(),
            cert_file: cert_file.clone(),
            key_file: key_file.clone(),
        });
        s.clients[0].certificate_sha256 = Some(renta_fp.clone());
        // Another subsystem of SII, known by a token only.
        s.clients.push(enlace_node::settings::Client {
            subsystem: "CL-DEV/GOV/60803000-K/fiscalizacion".into(),
            token_sha256: Some(sha256_hex("fiscalizacion-token-0123456789")),
            certificate_sha256: None,
            log_bodies: false,
        });
    })
    .await;
    let addr = f.consumer.consumer_tls_addr.expect("TLS consumer listener");
    let url = format!(
        "https://localhost:{}/r1/{}/v1/persons/12345678-5",
        addr.port(),
        demo::PERSONAS
    );
    let call = |http: reqwest::Client, token: Option<&str>| {
        let mut req = http
            .get(&url)
            .header("enlace-client", demo::CONSUMER_SUBSYSTEM)
            .header("enlace-contract", &f.demo.contract)
            .header("enlace-subject", demo::PERSON);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        async move {
            let resp = req.send().await.expect("the TLS listener answers");
            let status = resp.status().as_u16();
            (status, resp.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    // Pinned certificate, no token: it is renta.
    let (status, body) = call(client(&server, Some(&renta)), None).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.get("name").is_some() && body.get("birthDate").is_none(),
        "{body}"
    );
    // An unknown certificate is no identity...
    let (status, body) = call(client(&server, Some(&stranger)), None).await;
    assert_eq!(status, 401, "{body}");
    assert!(
        body["detail"].as_str().unwrap_or("").contains("not pinned"),
        "{body}"
    );
    // ...though a token with it still is; and a token alone works over TLS too.
    let (status, body) = call(client(&server, Some(&stranger)), Some(&f.client_token)).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = call(client(&server, None), Some(&f.client_token)).await;
    assert_eq!(status, 200, "{body}");
    // A certificate and a token of different subsystems: refused.
    let (status, body) = call(
        client(&server, Some(&renta)),
        Some("fiscalizacion-token-0123456789"),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["type"], "urn:enlace:problem:forbidden", "{body}");
    // Neither: refused, and the plain listener knows nothing of certificates.
    let (status, _) = call(client(&server, None), None).await;
    assert_eq!(status, 401);
    f.stop().await;
}

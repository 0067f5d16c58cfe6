//! What an outside review found, fixed: a repeated `Authorization` header (which one wins
//! would depend on the proxy in front) is refused; a hung provider backend is blamed on it;
//! a bare-LF line end or a `#fragment` in the request target is refused with a `400` problem
//! on the registry and on the consumer listener, plain and TLS, on every request of a
//! kept-alive connection (written byte for byte over raw TCP).

use enlace_registry::demo;
use enlace_tests::TestFederation;

#[tokio::test]
async fn a_repeated_authorization_header_is_refused_on_the_registry_and_the_node() {
    let f = TestFederation::start().await;
    let admin = f.registry.admin().to_string();
    let http = &f.registry.http;
    // Even the valid token twice: one header, one token.
    for second in [admin.as_str(), "not-a-token"] {
        let resp = http
            .get(format!("{}/v1/audit", f.registry.url))
            .header("authorization", format!("Bearer {admin}"))
            .header("authorization", format!("Bearer {second}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401);
        assert_eq!(resp.headers()["content-type"], "application/problem+json");
    }
    // One header: served.
    let resp = http
        .get(format!("{}/v1/audit", f.registry.url))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    let path = format!(
        "{}/r1/{}/v1/persons/12345678-5",
        f.consumer_url,
        demo::PERSONAS
    );
    let send = |twice: bool| {
        let mut req = http
            .get(&path)
            .header("authorization", format!("Bearer {}", f.client_token))
            .header("enlace-client", demo::CONSUMER_SUBSYSTEM)
            .header("enlace-contract", f.demo.contract.to_string())
            .header("enlace-subject", demo::PERSON);
        if twice {
            req = req.header("authorization", format!("Bearer {}", f.client_token));
        }
        req.send()
    };
    let resp = send(true).await.unwrap();
    assert_eq!(resp.status(), 401);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["type"], "urn:enlace:problem:unauthenticated", "{body}");
    assert!(body["detail"].as_str().unwrap().contains("more than once"));
    assert_eq!(send(false).await.unwrap().status(), 200);
}

/// A provider backend that accepts and never answers (as one stopped with SIGSTOP): the
/// provider node's signed refusal names the backend, and the consumer relays it instead of
/// blaming the peer node.
#[tokio::test]
async fn a_hung_provider_backend_is_blamed_on_the_backend_not_the_peer() {
    let hung = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hung_addr = hung.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut conns = Vec::new();
        while let Ok((s, _)) = hung.accept().await {
            conns.push(s);
        }
    });
    let f = TestFederation::start_with(move |s, provider| {
        s.limits.upstream_timeout_ms = 1_000;
        if provider {
            s.services[0].backend = format!("http://{hung_addr}");
        }
    })
    .await;
    let started = std::time::Instant::now();
    let reply = f
        .call(reqwest::Method::GET, "/persons/12345678-5", &[])
        .await;
    let took = started.elapsed();
    let body = &reply.body;
    assert_eq!(reply.status.as_u16(), 504, "{body:#}");
    assert_eq!(body["type"], "urn:enlace:problem:peer-timeout", "{body:#}");
    assert!(
        body["detail"].as_str().unwrap().contains("backend"),
        "the provider's refusal, not the consumer's: {body:#}"
    );
    assert!(
        body.to_string().contains("provider-backend"),
        "culprit named: {body:#}"
    );
    assert!(took < std::time::Duration::from_millis(2_900), "{took:?}");
    held.abort();
}

/// Records after the last anchored head could be cut or rewritten undetected; under load the
/// head is anchored after `anchor_after_records` records, not only every interval.
#[tokio::test]
async fn the_log_head_is_anchored_after_enough_records_without_waiting_for_the_interval() {
    let f = TestFederation::start_with(|s, _| {
        s.log.anchor_interval_secs = 3600;
        s.log.anchor_after_records = 3;
    })
    .await;
    let db = f.log_db(true);
    let before = enlace_msglog::stored_heads(&db).unwrap().len();
    for _ in 0..3 {
        let reply = f
            .call(reqwest::Method::GET, "/persons/12345678-5", &[])
            .await;
        assert_eq!(reply.status, 200, "{:#}", reply.body);
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let heads = enlace_msglog::stored_heads(&db).unwrap();
        if heads.len() > before && heads.last().unwrap().seq >= 3 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no new anchor within 5 s: {} heads before, {} now",
            before,
            heads.len()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Writes `bytes` on a new connection to `addr` and reads until the server closes (or 5 s).
async fn raw(addr: std::net::SocketAddr, bytes: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

fn registry_addr(f: &TestFederation) -> std::net::SocketAddr {
    f.registry.running.addr
}

/// The statuses of the responses in `text`, in order (a status line is `HTTP/1.1 ` and three
/// digits; a body of the previous response may come right before it).
fn statuses(text: &str) -> Vec<&str> {
    text.match_indices("HTTP/1.1 ")
        .filter_map(|(i, _)| text.get(i + 9..i + 12))
        .filter(|code| code.bytes().all(|b| b.is_ascii_digit()))
        .collect()
}

#[tokio::test]
async fn a_bare_lf_line_end_is_refused_on_the_consumer_listener_and_the_registry() {
    let f = TestFederation::start().await;
    let path = format!("/r1/{}/v1/persons/12345678-5", demo::PERSONAS);
    for (addr, target) in [
        (f.consumer.consumer_addr, path.as_str()),
        (registry_addr(&f), "/v1/config"),
    ] {
        for request in [
            format!("GET {target} HTTP/1.1\nHost: x\r\n\r\n"),
            format!("GET {target} HTTP/1.1\r\nHost: x\n\r\n"),
            format!("GET {target} HTTP/1.1\r\nHost: x\r\n\n"),
        ] {
            let answer = raw(addr, request.as_bytes()).await;
            assert_eq!(statuses(&answer), ["400"], "{addr} {request:?}: {answer}");
            assert!(answer.contains("application/problem+json"), "{answer}");
            assert!(
                answer.contains("urn:enlace:problem:invalid-request"),
                "{answer}"
            );
            assert!(answer.contains("bare LF"), "{answer}");
        }
    }
}

#[tokio::test]
async fn a_fragment_in_the_request_target_is_refused_on_the_consumer_listener_and_the_registry() {
    let f = TestFederation::start().await;
    let path = format!("/r1/{}/v1/persons/12345678-5", demo::PERSONAS);
    for (addr, target) in [
        (f.consumer.consumer_addr, path.as_str()),
        (registry_addr(&f), "/v1/config"),
    ] {
        let request = format!("GET {target}#x HTTP/1.1\r\nHost: x\r\n\r\n");
        let answer = raw(addr, request.as_bytes()).await;
        assert_eq!(statuses(&answer), ["400"], "{addr}: {answer}");
        assert!(answer.contains("#fragment"), "{answer}");
    }
}

#[tokio::test]
async fn every_request_of_a_kept_alive_connection_is_checked() {
    let f = TestFederation::start().await;
    // A well-formed request with a body holding LF and `#` bytes, answered; then one with a
    // fragment on the same connection, refused; nothing after it is read.
    let body = "{\"a\":\"x\\n#\"}\n";
    let pipelined = format!(
        "GET /v1/config HTTP/1.1\r\nHost: x\r\n\r\n\
         POST /v1/members HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}\
         GET /v1/config#x HTTP/1.1\r\nHost: x\r\n\r\n\
         GET /v1/config HTTP/1.1\r\nHost: x\r\n\r\n",
        body.len()
    );
    let answer = raw(registry_addr(&f), pipelined.as_bytes()).await;
    let got = statuses(&answer);
    assert_eq!(got.len(), 3, "{answer}");
    assert_eq!(got[0], "200", "{answer}");
    assert_ne!(got[1], "400", "the body is not a head: {answer}");
    assert_eq!(got[2], "400", "{answer}");
    assert!(
        answer.ends_with('}'),
        "the refusal is the last answer: {answer}"
    );
}

/// Writes `bytes` over TLS (trusting `server_der`, no client certificate) to `addr` and reads
/// until the server closes (or 5 s).
async fn raw_tls(addr: std::net::SocketAddr, server_der: Vec<u8>, bytes: Vec<u8>) -> String {
    tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(rustls_pki_types::CertificateDer::from(server_der))
            .unwrap();
        let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name).unwrap();
        let tcp = std::net::TcpStream::connect(addr).unwrap();
        tcp.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        tls.write_all(&bytes).unwrap();
        let mut out = Vec::new();
        let _ = tls.read_to_end(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn the_tls_consumer_listener_refuses_a_bare_lf_and_a_fragment_too() {
    enlace_certs::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    std::fs::write(dir.path().join("tls.pem"), cert.pem()).unwrap();
    std::fs::write(dir.path().join("tls-key.pem"), key.serialize_pem()).unwrap();
    let (cert_file, key_file) = (dir.path().join("tls.pem"), dir.path().join("tls-key.pem"));
    let f = TestFederation::start_with(move |s, provider| {
        if !provider {
            s.consumer_tls = Some(enlace_node::settings::ConsumerTls {
                listen: "127.0.0.1:0".parse().unwrap(),
                cert_file: cert_file.clone(),
                key_file: key_file.clone(),
            });
        }
    })
    .await;
    let addr = f.consumer.consumer_tls_addr.expect("TLS consumer listener");
    let path = format!("/r1/{}/v1/persons/12345678-5", demo::PERSONAS);
    for (request, why) in [
        (format!("GET {path} HTTP/1.1\nHost: x\r\n\r\n"), "bare LF"),
        (
            format!("GET {path}#x HTTP/1.1\r\nHost: x\r\n\r\n"),
            "#fragment",
        ),
    ] {
        let answer = raw_tls(addr, cert.der().to_vec(), request.into_bytes()).await;
        assert_eq!(statuses(&answer), ["400"], "{answer}");
        assert!(answer.contains(why), "{answer}");
    }
    // A well-formed request on the same listener is served (refused for its missing token).
    let fine = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let answer = raw_tls(addr, cert.der().to_vec(), fine.into_bytes()).await;
    assert_eq!(statuses(&answer), ["401"], "{answer}");
}

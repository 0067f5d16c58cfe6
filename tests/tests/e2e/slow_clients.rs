//! Slow and idle clients: a header section sent byte by byte, or nothing at all, cannot hold a
//! listener's connections. Each is closed after the header read timeout, and while they are
//! held, other clients are served.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use enlace_tests::{TestFederation, start_registry};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Slow clients per listener, as the issue that found the gap had them: 2,000, from five
/// source addresses (400 each, within the per-source cap), while others come from 127.0.0.1.
const SLOW: usize = 2000;

/// Opens `SLOW` connections to `addr`: half send a partial header section, half send nothing.
async fn slow_clients(addr: SocketAddr) -> Vec<TcpStream> {
    // Each listener's connections and the test's own: more than the default soft limit.
    enlace_limits::raise_descriptor_limit();
    let mut held = Vec::new();
    for i in 0..SLOW {
        let sock = tokio::net::TcpSocket::new_v4().expect("socket");
        let source = SocketAddr::from(([127, 0, 0, 10 + (i % 5) as u8], 0));
        sock.bind(source).expect("bind");
        let mut s = sock.connect(addr).await.expect("connect");
        if i % 2 == 0 {
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                .await
                .expect("write");
        }
        held.push(s);
    }
    held
}

/// Every held connection is closed by the server within the header read timeout and a margin.
/// `opened` is when the last of them was opened: each must be closed within the timeout (and a
/// margin) of its own opening, so the limit runs from the last one.
async fn all_closed(held: Vec<TcpStream>, opened: Instant) {
    let limit = enlace_node::HEADER_READ_TIMEOUT + Duration::from_secs(5);
    for mut s in held {
        let left = limit.saturating_sub(opened.elapsed());
        let mut buf = [0u8; 512];
        // EOF, a reset, or a 408 answer all close it; only silence past the limit fails.
        loop {
            match tokio::time::timeout(left, s.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(_)) => continue,
                Err(_) => panic!(
                    "a slow client was still held {:?} after the last was opened",
                    opened.elapsed()
                ),
            }
        }
    }
}

#[tokio::test]
async fn slow_and_idle_clients_are_dropped_and_do_not_stop_others() {
    let f = TestFederation::start().await;
    let registry_addr: SocketAddr = f
        .registry
        .url
        .trim_start_matches("http://")
        .parse()
        .expect("registry address");
    let consumer_addr = f.consumer.consumer_addr;
    let started = Instant::now();
    let mut held = slow_clients(registry_addr).await;
    held.extend(slow_clients(consumer_addr).await);
    let opened = Instant::now();

    // Others are served meanwhile, on both listeners.
    let reply = f.registry.get("/v1/members", None).await;
    assert_eq!(reply.status, 200);
    let health = f
        .registry
        .http
        .get(format!("{}/meta/allowed", f.consumer_url))
        .bearer_auth(&f.client_token)
        .send()
        .await
        .expect("consumer answers");
    assert_eq!(health.status(), 200);

    all_closed(held, opened).await;
    assert!(
        started.elapsed() >= enlace_node::HEADER_READ_TIMEOUT - Duration::from_secs(1),
        "closed before the timeout: {:?}",
        started.elapsed()
    );
}

/// The registry alone, as `registry serve` runs it.
#[tokio::test]
async fn the_registry_drops_a_client_that_never_finishes_its_headers() {
    let r = start_registry().await;
    let addr: SocketAddr = r.url.trim_start_matches("http://").parse().expect("addr");
    let held = slow_clients(addr).await;
    let opened = Instant::now();
    assert_eq!(r.get("/healthz", None).await.status, 200);
    all_closed(held, opened).await;
}

/// Sends a request head declaring `length` body bytes, then two bytes, and returns the status
/// line, which must come within two seconds: a declared oversized body is refused on its
/// header, not waited for.
async fn declared_length_answer(addr: SocketAddr, head: &str, length: usize) -> String {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let req = format!(
        "{head}Host: x\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n\r\n{{}}"
    );
    s.write_all(req.as_bytes()).await.expect("write");
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf))
        .await
        .expect("an answer within 2 s, not a wait for the declared body")
        .expect("read");
    let text = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(text.contains("application/problem+json"), "{text}");
    text.lines().next().unwrap_or("").to_string()
}

#[tokio::test]
async fn a_declared_oversized_body_is_refused_on_its_header() {
    let f = TestFederation::start().await;
    let registry: SocketAddr = f
        .registry
        .url
        .trim_start_matches("http://")
        .parse()
        .unwrap();
    let admin = f.registry.admin().to_string();
    let line = declared_length_answer(
        registry,
        &format!("POST /v1/members HTTP/1.1\r\nAuthorization: Bearer {admin}\r\n"),
        1_000_000,
    )
    .await;
    assert!(line.starts_with("HTTP/1.1 413"), "{line}");
    let path = format!(
        "/r1/{}/v1/persons/12345678-5",
        enlace_registry::demo::PERSONAS
    );
    let line = declared_length_answer(
        f.consumer.consumer_addr,
        &format!(
            "POST {path} HTTP/1.1\r\nAuthorization: Bearer {}\r\nEnlace-Client: {}\r\nEnlace-Contract: {}\r\n",
            f.client_token,
            enlace_registry::demo::CONSUMER_SUBSYSTEM,
            f.demo.contract
        ),
        64 * 1024 * 1024,
    )
    .await;
    assert!(line.starts_with("HTTP/1.1 413"), "{line}");
}

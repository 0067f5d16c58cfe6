//! What an outside review found, fixed: a repeated `Authorization` header (which one wins
//! would depend on the proxy in front) is refused; a hung provider backend is blamed on it.

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
    let before = enlace_node::msglog::stored_heads(&db).unwrap().len();
    for _ in 0..3 {
        let reply = f
            .call(reqwest::Method::GET, "/persons/12345678-5", &[])
            .await;
        assert_eq!(reply.status, 200, "{:#}", reply.body);
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let heads = enlace_node::msglog::stored_heads(&db).unwrap();
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

//! Load and abuse: request rates per source address and per token on the registry, per calling
//! subsystem on the node, answered 429 `rate-limited` with `Retry-After`; an unknown caller's
//! flood of refusals grows the audit trail by a bounded number of entries; connections are
//! capped per source, and a source at its cap does not stop others being served.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use enlace_tests::{TestFederation, registry_config, start_registry_configured};
use http::Method;
use serde_json::{Value, json};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpSocket, TcpStream};

/// A client whose connections come from `source` (any address of 127.0.0.0/8 is loopback).
fn client_from(source: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(source.parse::<IpAddr>().expect("address"))
        .build()
        .expect("client")
}

/// Status, `Retry-After` and JSON body of a GET.
async fn get(
    client: &reqwest::Client,
    url: &str,
    token: Option<&str>,
) -> (u16, Option<u64>, Value) {
    let mut req = client.get(url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.expect("answers");
    let status = resp.status().as_u16();
    let retry = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let body = resp.json().await.unwrap_or(Value::Null);
    (status, retry, body)
}

#[track_caller]
fn assert_rate_limited(status: u16, retry: Option<u64>, body: &Value) {
    assert_eq!(status, 429, "{body:#}");
    assert_eq!(body["type"], "urn:enlace:problem:rate-limited", "{body:#}");
    let secs = retry.expect("Retry-After on a 429");
    assert!(secs >= 1, "Retry-After {secs}");
    assert_eq!(body["retry_after"], secs, "{body:#}");
}

#[tokio::test]
async fn the_registry_limits_each_source_and_each_token() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = registry_config(dir.path());
    cfg.limits.requests_per_sec_per_source = 1;
    cfg.limits.request_burst_per_source = 10;
    cfg.limits.requests_per_sec_per_token = 1;
    cfg.limits.request_burst_per_token = 5;
    let r = start_registry_configured(dir, cfg).await;
    let url = format!("{}/v1/members", r.url);

    // One source: its burst, then 429s.
    let a = client_from("127.0.0.1");
    let mut statuses = Vec::new();
    for _ in 0..15 {
        let (status, retry, body) = get(&a, &url, None).await;
        if status == 429 {
            assert_rate_limited(status, retry, &body);
        }
        statuses.push(status);
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        10,
        "{statuses:?}"
    );
    assert_eq!(statuses[10..], [429; 5], "{statuses:?}");

    // Another source is served meanwhile.
    let b = client_from("127.0.0.2");
    assert_eq!(get(&b, &url, None).await.0, 200);

    // One token, from many sources: the token's own limit.
    let token = r.admin().to_string();
    // (Clients made first: making one takes longer than the bucket takes to refill a token.)
    let clients: Vec<_> = (0..8)
        .map(|i| client_from(&format!("127.0.1.{}", i + 1)))
        .collect();
    let mut statuses = Vec::new();
    for c in &clients {
        let (status, retry, body) = get(c, &url, Some(&token)).await;
        if status == 429 {
            assert_rate_limited(status, retry, &body);
        }
        statuses.push(status);
    }
    assert_eq!(statuses, [200, 200, 200, 200, 200, 429, 429, 429]);

    // The source recovers at its sustained rate.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(get(&a, &url, None).await.0, 200);
}

#[tokio::test]
async fn an_unknown_callers_flood_of_refusals_grows_the_audit_trail_by_its_budget_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = registry_config(dir.path());
    cfg.limits.unknown_refusals_audited_per_minute = 5;
    let r = start_registry_configured(dir, cfg).await;
    let before = r.audit_len().await;
    let body = json!({"code": "X", "class": "GOV", "name": "flood"});
    for i in 0..200 {
        // No token, a token that is none, an ID token that does not verify: all unknown.
        let token = match i % 3 {
            0 => None,
            1 => Some("not-a-token"),
            _ => Some("e30.e30.e30"),
        };
        let reply = r.post("/v1/members", token, &body).await;
        assert_eq!(reply.status, 401, "{:#}", reply.body);
    }
    let after = r.audit_len().await;
    assert_eq!(after - before, 5, "one entry per refusal up to the budget");

    // A known caller's refusals are all written.
    for _ in 0..10 {
        let reply = r.post("/v1/members", Some(r.admin()), &json!({})).await;
        assert_eq!(reply.status, 400);
    }
    assert_eq!(r.audit_len().await - after, 10);
}

#[tokio::test]
async fn the_node_limits_each_calling_subsystem_over_rest_and_counts_the_refusals() {
    let f = TestFederation::start_custom(120, |s, provider| {
        if !provider {
            s.limits.requests_per_sec_per_subsystem = 1;
            s.limits.request_burst_per_subsystem = 3;
        }
    })
    .await;
    let mut statuses = Vec::new();
    let mut limited = None;
    for _ in 0..6 {
        let reply = f.call(Method::GET, "/persons/12345678-5", &[]).await;
        statuses.push(reply.status.as_u16());
        if reply.status == 429 {
            limited = Some(reply);
        }
    }
    assert_eq!(statuses[..3], [200; 3], "{statuses:?}");
    assert_eq!(statuses[3..], [429; 3], "{statuses:?}");
    let body = limited.expect("a 429").problem("rate-limited", 429).clone();
    assert!(
        body["detail"]
            .as_str()
            .is_some_and(|d| d.contains(enlace_registry::demo::CONSUMER_SUBSYSTEM)),
        "{body:#}"
    );

    // Retry-After, and every refusal is in the consumer's message log like a success.
    let resp = f
        .registry
        .http
        .get(format!("{}/meta/allowed", f.consumer_url))
        .bearer_auth(&f.client_token)
        .send()
        .await
        .expect("answers");
    assert_eq!(resp.status(), 429);
    assert!(resp.headers().get("retry-after").is_some());
    let db = rusqlite::Connection::open(f.log_db(false)).expect("log");
    let mut stmt = db.prepare("SELECT record FROM records").expect("query");
    let refused = stmt
        .query_map([], |r| r.get::<_, Vec<u8>>(0))
        .expect("records")
        .map(|r| serde_json::from_slice::<Value>(&r.expect("record")).expect("json"))
        .filter(|r| r["problem"] == "rate-limited")
        .count();
    assert_eq!(refused, 4);
}

#[tokio::test]
async fn the_node_limits_a_calling_subsystem_over_grpc_too() {
    let f = TestFederation::start_grpc(|s, provider| {
        if !provider {
            s.limits.requests_per_sec_per_subsystem = 1;
            s.limits.request_burst_per_subsystem = 2;
        }
    })
    .await;
    let mut client = f.grpc_client().await;
    let mut codes = Vec::new();
    for _ in 0..4 {
        let req = f.grpc_request(
            enlace_proto::personas::v1::GetPersonRequest {
                run: "12345678-5".into(),
            },
            &[],
        );
        codes.push(match client.get_person(req).await {
            Ok(_) => tonic::Code::Ok,
            Err(s) => s.code(),
        });
    }
    assert_eq!(
        codes,
        [
            tonic::Code::Ok,
            tonic::Code::Ok,
            tonic::Code::ResourceExhausted,
            tonic::Code::ResourceExhausted
        ]
    );
}

/// Opens `n` connections to `addr` from `source` that send nothing.
async fn idle_from(source: &str, addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut held = Vec::new();
    for _ in 0..n {
        let sock = TcpSocket::new_v4().expect("socket");
        sock.bind(SocketAddr::new(source.parse().expect("address"), 0))
            .expect("bind");
        held.push(sock.connect(addr).await.expect("connect"));
    }
    held
}

#[tokio::test]
async fn a_source_at_its_connection_cap_is_closed_at_once_and_others_are_served() {
    let f = TestFederation::start_custom(120, |s, provider| {
        if !provider {
            s.limits.max_connections_per_source = 20;
        }
    })
    .await;
    let addr = f.consumer.consumer_addr;
    let mut held = idle_from("127.0.0.3", addr, 20).await;
    // The 21st from that source is closed at once, with nothing read.
    let mut over = idle_from("127.0.0.3", addr, 5).await;
    for s in &mut over {
        let mut buf = [0u8; 16];
        match tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {}
            other => panic!("a connection over the cap was kept: {other:?}"),
        }
    }
    // Other sources are served while it holds its 20.
    let reply = f.call(Method::GET, "/persons/12345678-5", &[]).await;
    reply.ok(200);
    // Its places come back when it lets go.
    held.clear();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut again = idle_from("127.0.0.3", addr, 1).await;
    let mut buf = [0u8; 16];
    assert!(
        tokio::time::timeout(Duration::from_millis(500), again[0].read(&mut buf))
            .await
            .is_err(),
        "a place that came back is served (the server waits for a request)"
    );
}

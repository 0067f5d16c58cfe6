//! Clock skew, named on the right side: a node whose clock is off says that its own clock is
//! off (by how much, against the registry's `Date`), in its refusals, its `/readyz` and its
//! start-up error, instead of blaming the peer or the registry. The nodes run in-process with
//! an injected clock set ahead or behind; the registry keeps the system's.

use std::time::Duration;

use enlace_core::problem::ProblemKind;
use enlace_node::RunningNode;
use enlace_node::{ConfigClient, ConfigSource};
use enlace_registry::demo;
use enlace_tests::{TestFederation, TestRegistry, shifted_clock, start_registry};
use serde_json::Value;

const PERSON_PATH: &str = "/persons/12345678-5";

async fn readyz(node: &RunningNode) -> (u16, Value) {
    let resp = reqwest::get(format!("http://{}/readyz", node.admin_addr))
        .await
        .expect("admin answers");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// The offset a problem reports, checked to be `expected` give or take the `Date` header's
/// one-second resolution.
#[track_caller]
fn assert_offset(problem: &Value, expected: i64) {
    let offset = problem["clock_offset_secs"]
        .as_i64()
        .unwrap_or_else(|| panic!("no clock_offset_secs in {problem:#}"));
    assert!(
        (expected - 1..=expected + 1).contains(&offset),
        "offset {offset}, expected {expected}: {problem:#}"
    );
}

#[tokio::test]
async fn a_consumer_45_s_ahead_hears_that_its_own_clock_is_off() {
    let f = TestFederation::start_with_clocks(shifted_clock(0), shifted_clock(45)).await;
    let reply = f.call(reqwest::Method::GET, PERSON_PATH, &[]).await;
    let p = reply.problem("stale", 401);
    assert_eq!(p["culprit"], "this-node", "{p:#}");
    let detail = p["detail"].as_str().unwrap();
    assert!(
        detail.contains("this node's clock is") && detail.contains("s ahead of the registry's"),
        "{detail}"
    );
    assert_offset(p, 45);

    // Not ready, and the reason is the clock; the provider, whose clock is right, is ready.
    let (status, body) = readyz(&f.consumer).await;
    assert_eq!(status, 503, "{body:#}");
    assert_eq!(body["type"], "urn:enlace:problem:clock-skew", "{body:#}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("s ahead of the registry's")
    );
    assert_offset(&body, 45);
    assert_eq!(readyz(&f.provider).await.0, 200);
    f.stop().await;
}

#[tokio::test]
async fn a_request_from_a_consumer_ahead_blames_the_consumer_at_the_provider() {
    // The provider's clock is right: a request it refuses as signed 45 s in the future blames
    // the consumer node (its peer), and says that its own clock agrees with the registry's.
    let f = TestFederation::start_with_clocks(shifted_clock(0), shifted_clock(0)).await;
    let keys = f.node_keys("60803000-K", demo::CONSUMER_NODE);
    let created = time::OffsetDateTime::now_utc().unix_timestamp() + 45;
    let req = f.signed_request(&keys, "GET", PERSON_PATH, b"", &[], created);
    let (status, _, body) = f.send_to_provider(&keys, req).await;
    assert_eq!(status, 401, "{body:#}");
    assert_eq!(body["type"], "urn:enlace:problem:stale", "{body:#}");
    assert_eq!(body["culprit"], "peer-node", "{body:#}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("so the peer's clock looks wrong"),
        "{body:#}"
    );
    f.stop().await;
}

#[tokio::test]
async fn a_provider_700_s_ahead_says_its_clock_is_off_not_that_the_registry_is_unreachable() {
    let f = TestFederation::start().await;
    let TestFederation {
        provider, consumer, ..
    } = f;
    let settings = provider.node.settings.clone();
    provider.stop().await;
    let err = enlace_node::start_with_clock(settings, Duration::from_secs(10), shifted_clock(700))
        .await
        .err()
        .expect("a node 700 s ahead has no usable configuration");
    let err = err.to_string();
    assert!(err.contains("this node's clock is"), "{err}");
    assert!(err.contains("s ahead of the registry's"), "{err}");
    assert!(!err.contains("has not been reachable"), "{err}");
    consumer.stop().await;
}

fn source(r: &TestRegistry, dir: &std::path::Path) -> ConfigSource {
    ConfigSource {
        registry_url: r.url.clone(),
        instance: demo::INSTANCE.parse().unwrap(),
        anchors: vec![r.running.registry.ca_pem().to_string()],
        cache_path: dir.join("config.json"),
    }
}

#[tokio::test]
async fn a_node_120_s_behind_refuses_configurations_naming_its_own_clock() {
    let r = start_registry().await;
    r.seed_demo().await;
    let dir = tempfile::tempdir().unwrap();
    let client = ConfigClient::with_clock(source(&r, dir.path()), shifted_clock(-120), 30).unwrap();
    let p = client.fetch(Duration::ZERO).await.unwrap_err();
    assert_eq!(p.kind, ProblemKind::ClockSkew, "{p}");
    assert!(p.detail.contains("s behind the registry's"), "{p}");
    assert!(!p.detail.contains("issued in the future"), "{p}");
    let offset = client.registry_offset().secs().expect("measured");
    assert!((-121..=-119).contains(&offset), "{offset}");
    assert_eq!(client.current().unwrap_err().kind, ProblemKind::ClockSkew);

    // The same registry, the same configuration: a node whose clock is right takes it.
    let right = ConfigClient::with_clock(source(&r, dir.path()), shifted_clock(0), 30).unwrap();
    assert!(right.fetch(Duration::ZERO).await.unwrap());
    assert!(right.registry_offset().problem().is_none());
}

#[tokio::test]
async fn a_node_120_s_behind_does_not_start_and_says_why() {
    let f = TestFederation::start().await;
    let TestFederation {
        provider, consumer, ..
    } = f;
    let settings = consumer.node.settings.clone();
    consumer.stop().await;
    let err = enlace_node::start_with_clock(settings, Duration::from_secs(10), shifted_clock(-120))
        .await
        .err()
        .expect("a node 120 s behind has no usable configuration");
    let err = err.to_string();
    assert!(err.contains("s behind the registry's"), "{err}");
    assert!(!err.contains("issued in the future"), "{err}");
    provider.stop().await;
}

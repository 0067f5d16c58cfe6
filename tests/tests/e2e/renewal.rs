//! A node renews its own certificates before they run out, with a proof made by its current
//! signing key, and keeps relaying through the rollover: peers accept the old and the new
//! signing key while the configuration lists both.

use std::time::{Duration, Instant};

use enlace_registry::demo;
use enlace_tests::TestFederation;
use reqwest::Method;

#[tokio::test]
async fn a_node_renews_itself_and_keeps_relaying_through_the_rollover() {
    // SII's node renews at every check (as if always near the end of its certificates' life).
    let f = TestFederation::start_with(|s, provider| {
        if !provider {
            s.renewal.remaining_fraction = 1.0;
            s.renewal.check_interval_secs = 1;
            s.renewal.switch_grace_ms = 300;
        }
    })
    .await;
    let raw = f.consumer.node.settings.raw.clone();
    let first_signing = std::fs::read_to_string(&raw.signing_cert_file).unwrap();
    let first_tls = std::fs::read_to_string(&raw.tls_cert_file).unwrap();
    let started = Instant::now();
    loop {
        let now = std::fs::read_to_string(&raw.signing_cert_file).unwrap();
        if now != first_signing {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no renewal within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_ne!(
        std::fs::read_to_string(&raw.tls_cert_file).unwrap(),
        first_tls
    );
    // Exchanges keep working while the node switches keys, again and again.
    let until = Instant::now() + Duration::from_secs(3);
    let mut served = 0;
    while Instant::now() < until {
        f.call(Method::GET, "/persons/12345678-5", &[])
            .await
            .ok(200);
        served += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(served > 20, "{served}");
    // The registry audited the renewals as the node's own, and the key on disk is the one in
    // the configuration.
    let audit = f.registry.get("/v1/audit", Some(f.registry.admin())).await;
    let renewals = audit
        .ok(200)
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| {
            e["action"] == "node.renew" && e["actor"] == format!("node:{}", demo::CONSUMER_NODE)
        })
        .count();
    assert!(renewals >= 1, "{:#}", audit.body);
    let old_key = enlace_certs::cert_info(&first_signing).unwrap();
    let config = f.consumer.node.config.current().unwrap();
    let me = config
        .nodes
        .iter()
        .find(|n| n.id.to_string() == demo::CONSUMER_NODE)
        .unwrap();
    assert_ne!(
        enlace_certs::cert_info(&me.signing_certificate)
            .unwrap()
            .spki_sha256_hex,
        old_key.spki_sha256_hex,
        "the configuration lists the renewed signing certificate"
    );
    f.stop().await;
}

//! The signed global configuration: it verifies with the federation CA, fails when one byte
//! changes, is refused when replayed or expired, is fetched conditionally, reaches a waiting
//! node within a second of a change, and survives a registry restart.

use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use enlace_core::SignedConfig;
use enlace_core::problem::ProblemKind;
use enlace_node::verify_config as verify;
use enlace_node::{ConfigClient, ConfigSource};
use enlace_registry::demo;
use enlace_tests::{TestRegistry, start_registry, start_registry_in};
use serde_json::json;

async fn fetch_signed(r: &TestRegistry) -> (SignedConfig, String) {
    let resp = r
        .http
        .get(format!("{}/v1/config", r.url))
        .send()
        .await
        .unwrap();
    let etag = resp.headers()["etag"].to_str().unwrap().to_string();
    (resp.json().await.unwrap(), etag)
}

fn anchors(r: &TestRegistry) -> enlace_certs::TrustStore {
    enlace_certs::TrustStore::new(&[r.running.registry.ca_pem().to_string()], None).unwrap()
}

fn instance() -> enlace_core::Instance {
    demo::INSTANCE.parse().unwrap()
}

#[tokio::test]
async fn the_configuration_verifies_and_one_changed_byte_breaks_it() {
    let r = start_registry().await;
    let d = r.seed_demo().await;
    let (signed, _) = fetch_signed(&r).await;
    let now = time::OffsetDateTime::now_utc();
    let cfg = verify(&signed, &anchors(&r), &instance(), 0, now).unwrap();
    assert_eq!(cfg.members.len(), 2);
    assert_eq!(cfg.nodes.len(), 2);
    assert!(cfg.contracts.iter().any(|c| c.id.to_string() == d.contract));
    assert!(cfg.services.iter().all(|s| s.digest.len() == 64));
    assert!(cfg.crl.contains("BEGIN X509 CRL"));

    // Flip each of a sample of payload bytes: every change is refused.
    let payload = B64.decode(&signed.payload).unwrap();
    for i in (0..payload.len()).step_by(payload.len() / 50 + 1) {
        let mut p = payload.clone();
        p[i] ^= 0x01;
        let tampered = SignedConfig {
            payload: B64.encode(&p),
            ..signed.clone()
        };
        let err = verify(&tampered, &anchors(&r), &instance(), 0, now).unwrap_err();
        assert_eq!(
            err.kind,
            ProblemKind::ConfigSignatureInvalid,
            "byte {i}: {err}"
        );
    }
    // A changed signature byte.
    let mut sig = B64.decode(&signed.signature).unwrap();
    sig[10] ^= 0x80;
    let tampered = SignedConfig {
        signature: B64.encode(&sig),
        ..signed.clone()
    };
    assert_eq!(
        verify(&tampered, &anchors(&r), &instance(), 0, now)
            .unwrap_err()
            .kind,
        ProblemKind::ConfigSignatureInvalid
    );
    // A configuration signed by another federation's registry.
    let other = start_registry().await;
    let (foreign, _) = fetch_signed(&other).await;
    assert_eq!(
        verify(&foreign, &anchors(&r), &instance(), 0, now)
            .unwrap_err()
            .kind,
        ProblemKind::ConfigSignatureInvalid
    );
    // The wrong instance.
    let err = verify(&signed, &anchors(&r), &"CL".parse().unwrap(), 0, now).unwrap_err();
    assert_eq!(err.kind, ProblemKind::ConfigSignatureInvalid);
}

#[tokio::test]
async fn replayed_and_expired_configurations_are_refused() {
    let r = start_registry().await;
    let (old, _) = fetch_signed(&r).await;
    r.seed_demo().await;
    let (new, _) = fetch_signed(&r).await;
    let now = time::OffsetDateTime::now_utc();
    let new_cfg = verify(&new, &anchors(&r), &instance(), 0, now).unwrap();
    let err = verify(&old, &anchors(&r), &instance(), new_cfg.serial, now).unwrap_err();
    assert_eq!(err.kind, ProblemKind::ConfigReplayed);
    let later = new_cfg.expires_at + time::Duration::seconds(1);
    let err = verify(&new, &anchors(&r), &instance(), 0, later).unwrap_err();
    assert_eq!(err.kind, ProblemKind::ConfigurationExpired);
}

#[tokio::test]
async fn conditional_requests_and_a_change_reaching_a_waiting_node_within_a_second() {
    let r = start_registry().await;
    let d = r.seed_demo().await;
    let (_, etag) = fetch_signed(&r).await;
    let not_modified = r
        .http
        .get(format!("{}/v1/config", r.url))
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(not_modified.status(), 304);

    let dir = tempfile::tempdir().unwrap();
    let client = ConfigClient::new(ConfigSource {
        registry_url: r.url.clone(),
        instance: instance(),
        anchors: vec![r.running.registry.ca_pem().to_string()],
        cache_path: dir.path().join("config.json"),
    })
    .unwrap();
    assert_eq!(
        client.current().unwrap_err().kind,
        ProblemKind::ConfigurationExpired,
        "fails closed before the first fetch"
    );
    assert!(client.fetch(Duration::ZERO).await.unwrap());
    assert!(
        client
            .current()
            .unwrap()
            .contracts
            .iter()
            .any(|c| c.id.to_string() == d.contract)
    );
    let mut updates = client.subscribe();
    let follower = client.follow();
    tokio::time::sleep(Duration::from_millis(200)).await;

    // Revoke the contract; the following node sees it revoked within a second.
    let started = Instant::now();
    r.post(
        &format!("/v1/contracts/{}/actions", d.contract),
        Some(&d.sii_token),
        &json!({"action": "revoke", "reason": "test"}),
    )
    .await
    .ok(200);
    tokio::time::timeout(Duration::from_secs(1), async {
        loop {
            updates.changed().await.unwrap();
            let cfg = updates.borrow_and_update().clone().unwrap();
            if cfg.contracts.iter().any(|c| {
                c.id.to_string() == d.contract && c.state == enlace_core::ContractState::Revoked
            }) {
                break;
            }
        }
    })
    .await
    .expect("revocation reached the node within a second");
    assert!(started.elapsed() < Duration::from_secs(1));
    follower.abort();

    // The cached copy is used when the registry is gone.
    r.running.stop().await;
    let again = ConfigClient::new(ConfigSource {
        registry_url: "http://127.0.0.1:9".into(),
        instance: instance(),
        anchors: vec![
            std::fs::read_to_string(dir.path().join("config.json"))
                .map(|_| client_ca(&client))
                .unwrap(),
        ],
        cache_path: dir.path().join("config.json"),
    })
    .unwrap();
    assert!(again.current().is_ok(), "works on the cached configuration");
    assert_eq!(
        again.fetch(Duration::ZERO).await.unwrap_err().kind,
        ProblemKind::PeerUnreachable
    );
    assert!(again.current().is_ok());
}

fn client_ca(client: &ConfigClient) -> String {
    client.current().unwrap().federation_ca[0].clone()
}

#[tokio::test]
async fn a_restarted_registry_keeps_everything_and_serials_keep_growing() {
    let r = start_registry().await;
    let d = r.seed_demo().await;
    let (before, _) = fetch_signed(&r).await;
    let ca = r.running.registry.ca_pem().to_string();
    let admin = r.admin().to_string();
    let before = verify(
        &before,
        &anchors(&r),
        &instance(),
        0,
        time::OffsetDateTime::now_utc(),
    )
    .unwrap();
    let dir = {
        let enlace_tests::TestRegistry { running, dir, .. } = r;
        running.stop().await;
        dir
    };
    let r = start_registry_in(dir).await;
    assert_eq!(r.running.registry.ca_pem(), ca, "same CA");
    assert_eq!(r.admin(), admin, "same admin token");
    let (after, _) = fetch_signed(&r).await;
    let after = verify(
        &after,
        &anchors(&r),
        &instance(),
        before.serial + 1,
        time::OffsetDateTime::now_utc(),
    )
    .unwrap();
    assert_eq!(after.members, before.members);
    assert_eq!(after.nodes, before.nodes);
    assert_eq!(after.contracts, before.contracts);
    assert_eq!(after.services, before.services);
    // Tokens still work, contracts are still there.
    let c = r
        .get(&format!("/v1/contracts/{}", d.contract), Some(&d.sii_token))
        .await;
    assert_eq!(c.ok(200)["state"], "approved");
}

#[tokio::test]
async fn nodes_follow_a_registry_over_https_trusting_only_the_federation_ca() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = enlace_tests::registry_config(dir.path());
    cfg.tls_names = vec!["127.0.0.1".into(), "localhost".into()];
    let running = enlace_registry::start(&cfg).await.unwrap();
    let ca = running.registry.ca_pem().to_string();
    let https = format!("https://127.0.0.1:{}", running.addr.port());
    let cache = tempfile::tempdir().unwrap();
    let client = |url: &str, anchor: String| {
        ConfigClient::new(ConfigSource {
            registry_url: url.to_string(),
            instance: instance(),
            anchors: vec![anchor],
            cache_path: cache.path().join("config.json"),
        })
        .unwrap()
    };
    // With the federation CA as its anchor, a node fetches and verifies over HTTPS.
    let good = client(&https, ca.clone());
    assert!(good.fetch(Duration::ZERO).await.unwrap());
    // Anchored in another federation's CA, the TLS handshake itself is refused.
    let other = start_registry().await;
    let _ = std::fs::remove_file(cache.path().join("config.json"));
    let wrong = client(&https, other.running.registry.ca_pem().to_string());
    assert_eq!(
        wrong.fetch(Duration::ZERO).await.unwrap_err().kind,
        ProblemKind::PeerUnreachable
    );
    // Plain HTTP to the HTTPS listener gets nothing.
    let plain = client(&format!("http://127.0.0.1:{}", running.addr.port()), ca);
    assert!(plain.fetch(Duration::ZERO).await.is_err());
    running.stop().await;
}

/// A server that answers every request with whatever bytes are set: a registry gone wrong, or
/// someone in between serving an old configuration.
async fn rogue_registry(body: std::sync::Arc<std::sync::Mutex<Vec<u8>>>) -> String {
    use hyper::service::service_fn;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let body = body.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |_req: http::Request<hyper::body::Incoming>| {
                    let bytes = body.lock().unwrap().clone();
                    async move {
                        let mut resp = http::Response::new(http_body_util::Full::new(
                            bytes::Bytes::from(bytes),
                        ));
                        resp.headers_mut()
                            .insert("content-type", "application/json".parse().unwrap());
                        Ok::<_, std::convert::Infallible>(resp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    format!("http://{addr}")
}

#[tokio::test]
async fn a_node_refuses_a_replayed_configuration_served_over_http_and_keeps_the_newer() {
    let r = start_registry().await;
    let (old, _) = fetch_signed(&r).await;
    r.seed_demo().await;
    let (new, _) = fetch_signed(&r).await;
    let served = std::sync::Arc::new(std::sync::Mutex::new(serde_json::to_vec(&new).unwrap()));
    let url = rogue_registry(served.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let client = ConfigClient::new(ConfigSource {
        registry_url: url,
        instance: instance(),
        anchors: vec![r.running.registry.ca_pem().to_string()],
        cache_path: dir.path().join("config.json"),
    })
    .unwrap();
    assert!(
        client.fetch(Duration::ZERO).await.unwrap(),
        "the newer one is taken"
    );
    let serial = client.current().unwrap().serial;
    // The older, validly signed configuration comes back: refused, the newer one kept, also on
    // disk.
    *served.lock().unwrap() = serde_json::to_vec(&old).unwrap();
    let err = client.fetch(Duration::ZERO).await.unwrap_err();
    assert_eq!(err.kind, ProblemKind::ConfigReplayed, "{err}");
    assert_eq!(client.current().unwrap().serial, serial);
    let cached: SignedConfig =
        serde_json::from_slice(&std::fs::read(dir.path().join("config.json")).unwrap()).unwrap();
    assert_eq!(cached.payload, new.payload);
    // A configuration with one byte changed, and garbage: refused as badly signed.
    let mut forged = new.clone();
    let text = String::from_utf8(B64.decode(&new.payload).unwrap()).unwrap();
    forged.payload = B64.encode(text.replacen("CL-DEV", "CL-DEW", 1));
    assert_ne!(forged.payload, new.payload);
    *served.lock().unwrap() = serde_json::to_vec(&forged).unwrap();
    let err = client.fetch(Duration::ZERO).await.unwrap_err();
    assert_eq!(err.kind, ProblemKind::ConfigSignatureInvalid, "{err}");
    *served.lock().unwrap() = b"<html>not a configuration</html>".to_vec();
    let err = client.fetch(Duration::ZERO).await.unwrap_err();
    assert_eq!(err.kind, ProblemKind::ConfigSignatureInvalid, "{err}");
    assert_eq!(client.current().unwrap().serial, serial);
}

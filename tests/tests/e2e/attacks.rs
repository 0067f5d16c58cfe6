//! Attacks on the exchange between nodes, end to end on loopback with real mutual TLS and real
//! signatures: tampering with a signed request, replaying it, stale and future signatures,
//! headers added in transit, another member's node speaking for SII or posing as the provider,
//! and a man in the middle holding valid TLS keys that tampers with or replays responses.
//!
//! Every test also runs the legitimate case in the same federation, so none passes vacuously.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use enlace_core::NodeId;
use enlace_node::{DialMaterial, PeerPool, read_body, serve_mtls};
use enlace_registry::demo;
use enlace_tests::{NodeKeys, Reply, TestFederation, free_port};
use http::{HeaderMap, HeaderValue, StatusCode};
use http_body_util::Full;
use serde_json::{Value, json};

const RC_CODE: &str = "61002000-3";
const SII_CODE: &str = "60803000-K";
const PERSON_PATH: &str = "/persons/12345678-5";
/// A third member (Tesorería General de la República), its subsystem and its node.
const TGR: &str = "CL-DEV/GOV/60805000-0";
const TGR_SUBSYSTEM: &str = "CL-DEV/GOV/60805000-0/cobranza";
const TGR_NODE: &str = "CL-DEV/GOV/60805000-0/node/a";

/// Runs a test body with a deadline, so that a hang fails instead of blocking the suite.
async fn bounded<F: Future<Output = ()>>(test: F) {
    tokio::time::timeout(Duration::from_secs(90), test)
        .await
        .expect("the test finishes within 90 s");
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn sii_keys(f: &TestFederation) -> NodeKeys {
    f.node_keys(SII_CODE, demo::CONSUMER_NODE)
}

/// A copy of a request (an `http::Request` is not `Clone`).
fn copy(req: &http::Request<Bytes>) -> http::Request<Bytes> {
    let mut r = http::Request::new(req.body().clone());
    *r.method_mut() = req.method().clone();
    *r.uri_mut() = req.uri().clone();
    *r.headers_mut() = req.headers().clone();
    r
}

/// What the provider node answered, as a [`Reply`] (for `Reply::problem`), and its headers.
async fn send(
    f: &TestFederation,
    keys: &NodeKeys,
    req: http::Request<Bytes>,
) -> (Reply, HeaderMap) {
    let (status, headers, body) = f.send_to_provider(keys, req).await;
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    (
        Reply {
            status,
            content_type,
            body,
        },
        headers,
    )
}

/// Asserts a refusal blamed on the peer node, in the `enlace-error` header.
#[track_caller]
fn assert_blames_peer_node(headers: &HeaderMap) {
    assert_eq!(
        headers.get("enlace-error").map(|v| v.to_str().unwrap()),
        Some("peer-node"),
        "{headers:?}"
    );
}

fn culprit(r: &Reply) -> &str {
    r.body["culprit"].as_str().unwrap_or("")
}

/// The demo person as the contract cuts it.
fn cut_person() -> Value {
    json!({
        "name": "María José Pérez Soto",
        "address": {"street": "Av. Libertador Bernardo O'Higgins 1234", "commune": "Santiago", "region": "Metropolitana"}
    })
}

/// A relayed GET from SII's `renta` backend through the SII node: the reply and its headers.
async fn backend_get(f: &TestFederation, path: &str) -> (Reply, HeaderMap) {
    let url = format!("{}/r1/{}/v1{path}", f.consumer_url, demo::PERSONAS);
    let resp = f
        .registry
        .http
        .get(url)
        .bearer_auth(&f.client_token)
        .header("enlace-client", demo::CONSUMER_SUBSYSTEM)
        .header("enlace-contract", &f.demo.contract)
        .header("enlace-subject", demo::PERSON)
        .send()
        .await
        .expect("the consumer node answers");
    let status = resp.status();
    let headers = resp.headers().clone();
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let bytes = resp.bytes().await.expect("body");
    (
        Reply {
            status,
            content_type,
            body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        },
        headers,
    )
}

// ---------------------------------------------------------------------------------------------
// 1. Tampering with a signed request

#[tokio::test]
async fn a_request_changed_after_signing_is_refused_as_signature_invalid() {
    bounded(async {
        let f = TestFederation::start().await;
        let sii = sii_keys(&f);
        // A request with a body (the operation takes none, which the provider node checks only
        // after the signature, freshness, replay and contract).
        let body = br#"{"purpose":"tax-refund-eligibility"}"#;
        let with_body = f.signed_request(
            &sii,
            "GET",
            PERSON_PATH,
            body,
            &[("content-type", "application/json")],
            now(),
        );
        let mut flipped = copy(&with_body);
        let mut bytes = body.to_vec();
        bytes[3] ^= 0x01;
        *flipped.body_mut() = Bytes::from(bytes);
        let mut truncated = copy(&with_body);
        *truncated.body_mut() = Bytes::new();
        for (what, req) in [("a body byte", flipped), ("the body dropped", truncated)] {
            let (r, h) = send(&f, &sii, req).await;
            r.problem("signature-invalid", 401);
            assert_blames_peer_node(&h);
            eprintln!("{what}: {}", r.body["detail"]);
        }
        // Control: untouched, it passes the signature and gets as far as schema validation.
        let (r, _) = send(&f, &sii, with_body).await;
        r.problem("request-schema-violation", 400);
        assert_eq!(culprit(&r), "client");

        let original = f.signed_request(&sii, "GET", PERSON_PATH, b"", &[], now());
        // A covered header: another (well-formed) contract, another SII subsystem.
        let mut contract = copy(&original);
        contract.headers_mut().insert(
            "enlace-contract",
            HeaderValue::from_static("ctr_01JD0000000000000000000000"),
        );
        let mut client = copy(&original);
        client.headers_mut().insert(
            "enlace-client",
            HeaderValue::from_static("CL-DEV/GOV/60803000-K/aduana"),
        );
        let mut subject = copy(&original);
        subject.headers_mut().insert(
            "enlace-subject",
            HeaderValue::from_static("CL-RUN:11111111-1"),
        );
        // The path (another person) and the query.
        let mut path = copy(&original);
        *path.uri_mut() = original
            .uri()
            .to_string()
            .replace("12345678-5", "11111111-1")
            .parse()
            .unwrap();
        let mut query = copy(&original);
        *query.uri_mut() = format!("{}?fields=all", original.uri()).parse().unwrap();
        // The signature of another request, grafted on this one.
        let other = f.signed_request(&sii, "GET", "/persons/11111111-1", b"", &[], now());
        let mut grafted = copy(&original);
        for name in ["signature", "signature-input"] {
            grafted
                .headers_mut()
                .insert(name, other.headers()[name].clone());
        }

        // A body added to a request signed without one.
        let mut added_body = copy(&original);
        *added_body.body_mut() = Bytes::from_static(b"{}");
        for (what, req) in [
            ("a body added", added_body),
            ("enlace-contract", contract),
            ("enlace-client", client),
            ("enlace-subject", subject),
            ("the path", path),
            ("the query", query),
            ("another request's signature", grafted),
        ] {
            let (r, h) = send(&f, &sii, req).await;
            r.problem("signature-invalid", 401);
            assert_blames_peer_node(&h);
            eprintln!("{what}: {}", r.body["detail"]);
        }

        // Control: the untouched request, sent after its tampered copies (which therefore did
        // not burn its message id), passes every check and is served.
        let (r, _) = send(&f, &sii, original).await;
        assert_eq!(r.ok(200), &cut_person());
        f.stop().await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// 2. Replay

#[tokio::test]
async fn a_signed_request_sent_twice_is_a_replay() {
    bounded(async {
        let f = TestFederation::start().await;
        let sii = sii_keys(&f);
        let req = f.signed_request(&sii, "GET", PERSON_PATH, b"", &[], now());
        let (first, _) = send(&f, &sii, copy(&req)).await;
        assert_eq!(first.ok(200), &cut_person());
        let (second, h) = send(&f, &sii, copy(&req)).await;
        second.problem("replay", 409);
        assert_blames_peer_node(&h);
        // And again, a while later (still within the freshness window).
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let (third, _) = send(&f, &sii, req).await;
        third.problem("replay", 409);
        // A fresh request (new message id) for the same person is served.
        let fresh = f.signed_request(&sii, "GET", PERSON_PATH, b"", &[], now());
        let (r, _) = send(&f, &sii, fresh).await;
        assert_eq!(r.ok(200), &cut_person());
        f.stop().await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// 3. Freshness

#[tokio::test]
async fn a_signature_created_ten_minutes_off_is_stale() {
    bounded(async {
        let f = TestFederation::start().await;
        let sii = sii_keys(&f);
        for created in [now() - 600, now() + 600] {
            let req = f.signed_request(&sii, "GET", PERSON_PATH, b"", &[], created);
            let (r, h) = send(&f, &sii, req).await;
            r.problem("stale", 401);
            assert_blames_peer_node(&h);
        }
        // Control: created now, and within the allowed skew (default 30 s) either way.
        for created in [now(), now() - 20, now() + 20] {
            let req = f.signed_request(&sii, "GET", PERSON_PATH, b"", &[], created);
            let (r, _) = send(&f, &sii, req).await;
            assert_eq!(r.ok(200), &cut_person(), "created {created}");
        }
        f.stop().await;
    })
    .await;
}

/// A UUIDv7 message id as if created at `secs`: a consumer node cannot pick an old id to
/// outlive the provider's replay memory, because the id's own time must be fresh too.
fn message_id_at(secs: i64) -> String {
    let ms = u64::try_from(secs).expect("after 1970") * 1000;
    let random = u128::from(rand_u64()) << 12;
    let v = (u128::from(ms) << 80) | (0x7 << 76) | (0b10 << 62) | (random & ((1 << 62) - 1));
    uuid::Uuid::from_u128(v).to_string()
}

fn rand_u64() -> u64 {
    // The random tail of a fresh UUIDv7 is as good a source as any for a test.
    uuid::Uuid::now_v7().as_u64_pair().1
}

#[tokio::test]
async fn a_message_id_created_outside_the_window_is_stale_even_with_a_fresh_signature() {
    bounded(async {
        let f = TestFederation::start().await;
        let sii = sii_keys(&f);
        for id_time in [now() - 600, now() + 600] {
            let id = message_id_at(id_time);
            let req = f.signed_request(
                &sii,
                "GET",
                PERSON_PATH,
                b"",
                &[("enlace-message-id", &id)],
                now(),
            );
            let (r, h) = send(&f, &sii, req).await;
            r.problem("stale", 401);
            assert!(
                r.body["detail"].as_str().unwrap_or("").contains(&id),
                "{}",
                r.body
            );
            assert_blames_peer_node(&h);
        }
        // Control: an id made 20 s ago, within the allowed skew, is served once.
        let id = message_id_at(now() - 20);
        let req = f.signed_request(
            &sii,
            "GET",
            PERSON_PATH,
            b"",
            &[("enlace-message-id", &id)],
            now(),
        );
        let again = copy(&req);
        let (r, _) = send(&f, &sii, req).await;
        assert_eq!(r.ok(200), &cut_person());
        let (r, _) = send(&f, &sii, again).await;
        r.problem("replay", 409);
        f.stop().await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// 4. Headers added after signing

#[tokio::test]
async fn an_unsigned_context_header_added_in_transit_is_refused() {
    bounded(async {
        let f = TestFederation::start().await;
        let sii = sii_keys(&f);
        // Signed without a subject; a subject added in transit.
        let unsigned_subject = f.signed_request(
            &sii,
            "GET",
            PERSON_PATH,
            b"",
            &[("enlace-subject", "")],
            now(),
        );
        let mut added = copy(&unsigned_subject);
        added
            .headers_mut()
            .insert("enlace-subject", HeaderValue::from_static(demo::PERSON));
        let (r, h) = send(&f, &sii, added).await;
        r.problem("signature-invalid", 401);
        assert_blames_peer_node(&h);
        // Control: as signed, the request passes the signature and is refused only because
        // the contract requires a subject.
        let (r, _) = send(&f, &sii, unsigned_subject).await;
        r.problem("invalid-request", 400);

        // Signed without an acting official or a procedure; one added in transit.
        for (name, value) in [
            ("enlace-user", "funcionaria-42"),
            ("enlace-procedure", "devolucion-renta-2026"),
            ("enlace-step", "revision"),
        ] {
            let req = f.signed_request(&sii, "GET", PERSON_PATH, b"", &[], now());
            let mut added = copy(&req);
            added
                .headers_mut()
                .insert(name, HeaderValue::from_static(value));
            let (r, h) = send(&f, &sii, added).await;
            r.problem("signature-invalid", 401);
            assert_blames_peer_node(&h);
            // Control: the request as signed is served.
            let (r, _) = send(&f, &sii, req).await;
            assert_eq!(r.ok(200), &cut_person(), "{name}");
        }
        f.stop().await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// 5. Another member's node

/// Registers a third member with an approved subsystem and node through the registry API, and
/// returns the node's key material (as its operator would hold it).
async fn third_member_node(f: &TestFederation) -> NodeKeys {
    let r = &f.registry;
    r.post(
        "/v1/members",
        Some(r.admin()),
        &json!({"id": TGR, "name": "Tesorería General de la República"}),
    )
    .await
    .ok(201);
    let token = r
        .post(
            &format!("/v1/members/{TGR}/tokens"),
            Some(r.admin()),
            &json!({"label": "test"}),
        )
        .await
        .ok(201)["token"]
        .as_str()
        .expect("token")
        .to_string();
    r.post(
        "/v1/subsystems",
        Some(&token),
        &json!({"id": TGR_SUBSYSTEM}),
    )
    .await
    .ok(201);
    r.post(
        &format!("/v1/subsystems/{TGR_SUBSYSTEM}/approve"),
        Some(r.admin()),
        &json!({}),
    )
    .await
    .ok(200);
    let node: NodeId = TGR_NODE.parse().expect("node id");
    let keys = enlace_certs::node_init(&node).expect("node keys");
    r.post(
        "/v1/nodes",
        Some(&token),
        &json!({
            "id": TGR_NODE,
            "address": format!("127.0.0.1:{}", free_port()),
            "tls_csr": keys.tls_csr_pem,
            "signing_csr": keys.signing_csr_pem,
        }),
    )
    .await
    .ok(201);
    let approved = r
        .post(
            &format!("/v1/nodes/{TGR_NODE}/approve"),
            Some(r.admin()),
            &json!({}),
        )
        .await;
    let approved = approved.ok(200);
    NodeKeys {
        id: TGR_NODE.into(),
        tls_cert: approved["tls_certificate"]
            .as_str()
            .expect("TLS certificate")
            .to_string(),
        tls_key: keys.tls_key_pem.clone(),
        signing_key: enlace_certs::SigningKey::from_pem(&keys.signing_key_pem)
            .expect("signing key"),
    }
}

/// A request of the third member's own subsystem under SII's contract, signed by `signer`
/// under `keyid`.
fn tgr_request(
    f: &TestFederation,
    signer: &enlace_certs::SigningKey,
    keyid: &str,
) -> http::Request<Bytes> {
    let as_signer = NodeKeys {
        id: keyid.into(),
        tls_cert: String::new(),
        tls_key: String::new(),
        signing_key: enlace_certs::SigningKey::from_pem(signer.to_pem()).expect("key"),
    };
    f.signed_request(
        &as_signer,
        "GET",
        PERSON_PATH,
        b"",
        &[("enlace-client", TGR_SUBSYSTEM)],
        now(),
    )
}

#[tokio::test]
async fn another_members_node_cannot_speak_for_sii_nor_borrow_its_identity() {
    bounded(async {
        let f = TestFederation::start().await;
        let sii = sii_keys(&f);
        let tgr = third_member_node(&f).await;

        // Control, and wait until the provider node knows the new node: the third node, in its
        // own name, gets past the peer and signature checks and is refused only because SII's
        // contract is not its own.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let req = tgr_request(&f, &tgr.signing_key, TGR_NODE);
            let (r, _) = send(&f, &tgr, req).await;
            if r.body["type"] == "urn:enlace:problem:forbidden"
                && tokio::time::Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            r.problem("contract-missing", 403);
            break;
        }
        // Control: SII's node itself is served.
        let req = f.signed_request(&sii, "GET", PERSON_PATH, b"", &[], now());
        assert_eq!(send(&f, &sii, req).await.0.ok(200), &cut_person());

        // (a) The third node claims to be SII's `renta`, signing in its own name.
        let req = f.signed_request(&tgr, "GET", PERSON_PATH, b"", &[], now());
        let (r, h) = send(&f, &tgr, req).await;
        r.problem("forbidden", 403);
        assert_eq!(culprit(&r), "peer-node");
        assert_blames_peer_node(&h);

        // (b) Signed with its own key but naming SII's node as the signer.
        let req = tgr_request(&f, &tgr.signing_key, demo::CONSUMER_NODE);
        let (r, h) = send(&f, &tgr, req).await;
        r.problem("signature-invalid", 401);
        assert_blames_peer_node(&h);
        // ... and for SII's `renta`: the TLS identity is checked first.
        let posing = NodeKeys {
            id: demo::CONSUMER_NODE.into(),
            tls_cert: tgr.tls_cert.clone(),
            tls_key: tgr.tls_key.clone(),
            signing_key: enlace_certs::SigningKey::from_pem(tgr.signing_key.to_pem()).unwrap(),
        };
        let req = f.signed_request(&posing, "GET", PERSON_PATH, b"", &[], now());
        let (r, _) = send(&f, &tgr, req).await;
        r.problem("forbidden", 403);
        assert_eq!(culprit(&r), "peer-node");

        // (c) SII's signing key, stolen, used over the third node's TLS identity: under SII's
        // keyid (not the TLS peer), and under the third node's keyid (not its key).
        for keyid in [demo::CONSUMER_NODE, TGR_NODE] {
            let req = tgr_request(&f, &sii.signing_key, keyid);
            let (r, h) = send(&f, &tgr, req).await;
            r.problem("signature-invalid", 401);
            assert_blames_peer_node(&h);
        }
        // ... and claiming SII's `renta` with the stolen key: refused on the TLS identity.
        let stolen = NodeKeys {
            id: demo::CONSUMER_NODE.into(),
            tls_cert: tgr.tls_cert.clone(),
            tls_key: tgr.tls_key.clone(),
            signing_key: enlace_certs::SigningKey::from_pem(sii.signing_key.to_pem()).unwrap(),
        };
        let req = f.signed_request(&stolen, "GET", PERSON_PATH, b"", &[], now());
        let (r, _) = send(&f, &tgr, req).await;
        r.problem("forbidden", 403);
        assert_eq!(culprit(&r), "peer-node");

        // Control again: SII is still served after all this.
        let req = f.signed_request(&sii, "GET", PERSON_PATH, b"", &[], now());
        assert_eq!(send(&f, &sii, req).await.0.ok(200), &cut_person());
        f.stop().await;
    })
    .await;
}

#[tokio::test]
async fn a_provider_presenting_another_members_node_certificate_is_refused_by_the_consumer() {
    bounded(async {
        // The Registro Civil node serves with SII's TLS certificate and key.
        let f = TestFederation::start_with(|s, provider| {
            if provider {
                let nodes = s
                    .tls_cert_file
                    .parent()
                    .and_then(|d| d.parent())
                    .expect("nodes dir")
                    .join(SII_CODE);
                s.tls_cert_file = nodes.join("tls.pem");
                s.tls_key_file = nodes.join("tls-key.pem");
            }
        })
        .await;
        let (r, h) = backend_get(&f, PERSON_PATH).await;
        r.problem("peer-unreachable", 502);
        assert_blames_peer_node(&h);
        assert!(
            r.body["detail"].as_str().unwrap_or("").contains("TLS"),
            "{:#}",
            r.body
        );

        // Control: the same listener is up and serves a correctly signed request to a client
        // that expects SII's identity there; only the identity check refused it above.
        let sii = sii_keys(&f);
        let req = f.signed_request(&sii, "GET", PERSON_PATH, b"", &[], now());
        let (status, body) = dial(&f, &sii, demo::CONSUMER_NODE, req).await;
        assert_eq!(status, 200, "{body:#}");
        assert_eq!(body, cut_person());
        // And dialled expecting the Registro Civil node, as the consumer node does: refused.
        let req = f.signed_request(&sii, "GET", PERSON_PATH, b"", &[], now());
        let err = try_dial(&f, &sii, demo::PROVIDER_NODE, req)
            .await
            .expect_err("the handshake fails");
        assert_eq!(err.kind.slug(), "peer-unreachable", "{err}");
        f.stop().await;
    })
    .await;
}

/// Sends `req` to the provider node's listener with `keys`' TLS identity, expecting the peer to
/// be `expected`.
async fn try_dial(
    f: &TestFederation,
    keys: &NodeKeys,
    expected: &str,
    req: http::Request<Bytes>,
) -> Result<(StatusCode, Value), enlace_core::problem::Problem> {
    let material = DialMaterial {
        trust: f.trust().await,
        cert_pem: keys.tls_cert.clone(),
        key_pem: keys.tls_key.clone(),
    };
    let (_tx, rx) = tokio::sync::watch::channel(Arc::new(material));
    let pool = PeerPool::new(rx, Duration::from_secs(5));
    let expected: NodeId = expected.parse().expect("node id");
    let (parts, body) = req.into_parts();
    let resp = pool
        .send(
            &expected,
            &f.provider.provider_addr.to_string(),
            http::Request::from_parts(parts, Full::new(body)),
            Duration::from_secs(10),
        )
        .await?;
    let (parts, body) = resp.into_parts();
    let bytes = read_body(body, 1 << 20).await?;
    Ok((
        parts.status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    ))
}

async fn dial(
    f: &TestFederation,
    keys: &NodeKeys,
    expected: &str,
    req: http::Request<Bytes>,
) -> (StatusCode, Value) {
    try_dial(f, keys, expected, req)
        .await
        .expect("the provider node answers")
}

// ---------------------------------------------------------------------------------------------
// 6 and 7. A man in the middle with valid TLS keys (a compromised TLS terminator)

/// What the man in the middle does to each response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum Tamper {
    /// Passes requests and responses through unchanged.
    None = 0,
    /// Flips one bit of one byte of the response body.
    FlipBody = 1,
    /// Turns the status into 404 (a person who "does not exist").
    Status = 2,
    /// Puts another message id on the response.
    SwapMessageId = 3,
    /// Replaces the body and its `Content-Digest` consistently (the signature covers the digest).
    ReDigest = 4,
    /// Records the first response, then answers every later request with it.
    ReplayFirst = 5,
    /// Removes the signature headers.
    StripSignature = 6,
    /// Answers without forwarding, with an unsigned problem (a fake revocation).
    ForgeProblem = 7,
    /// Relabels the response's content type (the body and everything signed unchanged).
    ContentType = 8,
    /// Adds an `enlace-error` header blaming the client (everything signed unchanged).
    ErrorHeader = 9,
}

impl Tamper {
    fn from_u8(v: u8) -> Tamper {
        [
            Tamper::None,
            Tamper::FlipBody,
            Tamper::Status,
            Tamper::SwapMessageId,
            Tamper::ReDigest,
            Tamper::ReplayFirst,
            Tamper::StripSignature,
            Tamper::ForgeProblem,
            Tamper::ContentType,
            Tamper::ErrorHeader,
        ][usize::from(v)]
    }
}

type Recorded = (StatusCode, HeaderMap, Bytes);

/// A man in the middle on the provider's registered address: it presents the Registro Civil
/// node's own TLS certificate, dials the real provider node with the SII node's TLS material,
/// and tampers with responses as `mode` says.
struct Mitm {
    mode: Arc<AtomicU8>,
    forwarded: Arc<std::sync::atomic::AtomicUsize>,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Mitm {
    async fn start(f: &TestFederation, listen: SocketAddr) -> Mitm {
        let rc = f.node_keys(RC_CODE, demo::PROVIDER_NODE);
        let sii = sii_keys(f);
        let trust = f.trust().await;
        let server = enlace_certs::server_config(&trust, &rc.tls_cert, &rc.tls_key)
            .expect("server config with the provider's own keys");
        let (tls_tx, tls_rx) = tokio::sync::watch::channel(server);
        let (mat_tx, mat_rx) = tokio::sync::watch::channel(Arc::new(DialMaterial {
            trust,
            cert_pem: sii.tls_cert,
            key_pem: sii.tls_key,
        }));
        let pool = Arc::new(PeerPool::new(mat_rx, Duration::from_secs(5)));
        let upstream = f.provider.provider_addr.to_string();
        let mode = Arc::new(AtomicU8::new(Tamper::None as u8));
        let forwarded = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let recorded: Arc<Mutex<Option<Recorded>>> = Arc::new(Mutex::new(None));
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .expect("bind the registered address");
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let (m, fw) = (mode.clone(), forwarded.clone());
        let handler = move |req: http::Request<_>, _peer: NodeId| {
            let (pool, upstream, mode, forwarded, recorded) = (
                pool.clone(),
                upstream.clone(),
                m.clone(),
                fw.clone(),
                recorded.clone(),
            );
            {
                async move {
                    let mode = Tamper::from_u8(mode.load(Ordering::SeqCst));
                    if mode == Tamper::ReplayFirst
                        && let Some((status, headers, body)) = recorded.lock().unwrap().clone()
                    {
                        return response(status, headers, body);
                    }
                    if mode == Tamper::ForgeProblem {
                        let mut headers = HeaderMap::new();
                        headers.insert(
                            "content-type",
                            HeaderValue::from_static("application/problem+json"),
                        );
                        headers.insert("enlace-error", HeaderValue::from_static("client"));
                        let body = json!({
                            "type": "urn:enlace:problem:contract-revoked",
                            "title": "Contract revoked",
                            "status": 403,
                            "detail": "contract revoked",
                        });
                        return response(
                            StatusCode::FORBIDDEN,
                            headers,
                            Bytes::from(body.to_string()),
                        );
                    }
                    let (parts, body) = req.into_parts();
                    let body = read_body(body, 1 << 20).await.expect("request body");
                    let provider: NodeId = demo::PROVIDER_NODE.parse().unwrap();
                    let resp = pool
                        .send(
                            &provider,
                            &upstream,
                            http::Request::from_parts(parts, Full::new(body)),
                            Duration::from_secs(10),
                        )
                        .await
                        .expect("the real provider node answers the proxy");
                    forwarded.fetch_add(1, Ordering::SeqCst);
                    let (parts, body) = resp.into_parts();
                    let body = read_body(body, 1 << 20).await.expect("response body");
                    let (mut status, mut headers, mut body) =
                        (parts.status, parts.headers, body.to_vec());
                    match mode {
                        Tamper::None => {}
                        Tamper::FlipBody => {
                            let i = body.len() / 2;
                            body[i] ^= 0x01;
                        }
                        Tamper::Status => status = StatusCode::NOT_FOUND,
                        Tamper::SwapMessageId => {
                            let other = uuid::Uuid::now_v7().to_string();
                            headers.insert("enlace-message-id", other.parse().unwrap());
                        }
                        Tamper::ReDigest => {
                            body = serde_json::to_vec(&json!({"name": "Otra Persona"})).unwrap();
                            let digest = enlace_httpsig::content_digest(&body);
                            headers.insert("content-digest", digest.parse().unwrap());
                        }
                        Tamper::StripSignature => {
                            headers.remove("signature");
                            headers.remove("signature-input");
                        }
                        Tamper::ContentType => {
                            headers.insert("content-type", HeaderValue::from_static("text/html"));
                        }
                        Tamper::ErrorHeader => {
                            headers.insert("enlace-error", HeaderValue::from_static("client"));
                        }
                        Tamper::ForgeProblem => unreachable!("answered above"),
                        Tamper::ReplayFirst => {
                            *recorded.lock().unwrap() =
                                Some((status, headers.clone(), Bytes::from(body.clone())));
                        }
                    }
                    response(status, headers, Bytes::from(body))
                }
            }
        };
        let task = tokio::spawn(async move {
            serve_mtls(
                listener,
                enlace_limits::ConnectionCaps::new("test", 1024, 1024),
                tls_rx,
                Duration::from_secs(5),
                handler,
                stop_rx,
            )
            .await;
            drop((tls_tx, mat_tx));
        });
        Mitm {
            mode,
            forwarded,
            stop,
            task,
        }
    }

    fn set(&self, mode: Tamper) {
        self.mode.store(mode as u8, Ordering::SeqCst);
    }

    fn forwarded(&self) -> usize {
        self.forwarded.load(Ordering::SeqCst)
    }

    async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(5), self.task).await;
    }
}

fn response(
    status: StatusCode,
    mut headers: HeaderMap,
    body: Bytes,
) -> http::Response<Full<Bytes>> {
    headers.remove(http::header::CONTENT_LENGTH);
    let mut resp = http::Response::new(Full::new(body));
    *resp.status_mut() = status;
    *resp.headers_mut() = headers;
    resp
}

/// Asserts the SII backend got the consumer node's refusal of a bad response signature.
#[track_caller]
fn assert_response_refused(r: &Reply, h: &HeaderMap, what: &str) {
    assert_eq!(
        r.body["type"], "urn:enlace:problem:signature-invalid",
        "{what}: {:#}",
        r.body
    );
    r.problem("signature-invalid", 401);
    assert_eq!(culprit(r), "peer-node", "{what}");
    assert_blames_peer_node(h);
    assert!(
        r.body.get("name").is_none(),
        "{what}: nothing of the tampered response reaches the backend"
    );
}

#[tokio::test]
async fn a_response_tampered_in_transit_is_refused_by_the_consumer_node() {
    bounded(async {
        let (f, registered) = TestFederation::start_behind_proxy().await;
        let mitm = Mitm::start(&f, registered).await;

        // Control: the proxy passes everything through; the exchange succeeds through it.
        let (r, _) = backend_get(&f, PERSON_PATH).await;
        assert_eq!(r.ok(200), &cut_person());
        assert_eq!(mitm.forwarded(), 1, "the exchange went through the proxy");

        for mode in [
            Tamper::FlipBody,
            Tamper::Status,
            Tamper::SwapMessageId,
            Tamper::ReDigest,
            Tamper::StripSignature,
            Tamper::ForgeProblem,
        ] {
            mitm.set(mode);
            let before = mitm.forwarded();
            let (r, h) = backend_get(&f, PERSON_PATH).await;
            let expected = before + usize::from(mode != Tamper::ForgeProblem);
            assert_eq!(
                mitm.forwarded(),
                expected,
                "{mode:?}: went through the proxy"
            );
            assert_response_refused(&r, &h, &format!("{mode:?}"));
        }

        // Control again: the same path untampered is served.
        mitm.set(Tamper::None);
        let (r, _) = backend_get(&f, PERSON_PATH).await;
        assert_eq!(r.ok(200), &cut_person());
        mitm.stop().await;
        f.stop().await;
    })
    .await;
}

#[tokio::test]
async fn a_recorded_response_replayed_as_the_answer_to_another_request_is_refused() {
    bounded(async {
        let (f, registered) = TestFederation::start_behind_proxy().await;
        let mitm = Mitm::start(&f, registered).await;
        mitm.set(Tamper::ReplayFirst);

        // Control: the first exchange passes through (and is recorded by the proxy).
        let (r, _) = backend_get(&f, PERSON_PATH).await;
        assert_eq!(r.ok(200), &cut_person());
        assert_eq!(mitm.forwarded(), 1);

        // The recorded response, validly signed by the provider node, as the answer to a new
        // request for the same person, and to a request for someone else.
        for path in [PERSON_PATH, "/persons/11111112-K"] {
            let (r, h) = backend_get(&f, path).await;
            assert_response_refused(&r, &h, path);
        }
        assert_eq!(
            mitm.forwarded(),
            1,
            "the replays never reached the provider"
        );

        // Control: with the proxy passing through again, a new request is served.
        mitm.set(Tamper::None);
        let (r, _) = backend_get(&f, PERSON_PATH).await;
        assert_eq!(r.ok(200), &cut_person());
        mitm.stop().await;
        f.stop().await;
    })
    .await;
}

/// A man in the middle changing only headers the provider node's response signature does not
/// cover, which the consumer node nevertheless hands to the backend.
///
/// `content-type` is covered by the response signature, so changing it is refused;
/// `enlace-error` is not trusted from the wire at all: the consumer node derives it from the
/// signed problem body, so an injected one never reaches the backend.
#[tokio::test]
async fn a_response_relabelled_in_transit_is_refused_by_the_consumer_node() {
    bounded(async {
        let (f, registered) = TestFederation::start_behind_proxy().await;
        let mitm = Mitm::start(&f, registered).await;
        // Control: passed through unchanged, served.
        let (r, _) = backend_get(&f, PERSON_PATH).await;
        assert_eq!(r.ok(200), &cut_person());
        mitm.set(Tamper::ContentType);
        let (r, h) = backend_get(&f, PERSON_PATH).await;
        assert_response_refused(&r, &h, "ContentType");
        mitm.set(Tamper::ErrorHeader);
        let (r, h) = backend_get(&f, PERSON_PATH).await;
        assert_eq!(r.ok(200), &cut_person());
        assert!(
            h.get("enlace-error").is_none(),
            "an injected enlace-error is dropped: {h:?}"
        );
        mitm.stop().await;
        f.stop().await;
    })
    .await;
}

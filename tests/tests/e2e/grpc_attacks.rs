//! Tampering with gRPC messages between the nodes, end to end with real mutual TLS and real
//! signatures: a man in the middle holding valid TLS keys relays the HTTP/2 frames of each call
//! and alters one message on the way, in a unary response, a streamed response or a streamed
//! request, or drops the signed trailers of a streamed request. Every test also runs the
//! untouched call through the same man in the middle, so none passes vacuously.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use enlace_core::NodeId;
use enlace_msglog as msglog;
use enlace_node::{BodySender, ChannelBody, DialMaterial, PeerPool, body_channel, serve_mtls};
use enlace_proto::personas::v1::{GetPersonRequest, ListDocumentsRequest, VerifyIdentityRequest};
use enlace_registry::demo;
use enlace_tests::TestFederation;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::Value;
use tonic::Code;

const RC_CODE: &str = "61002000-3";
const SII_CODE: &str = "60803000-K";

/// Runs a test body with a deadline, so that a hang fails instead of blocking the suite.
async fn bounded<F: Future<Output = ()>>(test: F) {
    tokio::time::timeout(Duration::from_secs(90), test)
        .await
        .expect("the test finishes within 90 s");
}

/// What the man in the middle does to each call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum Tamper {
    /// Relays every frame unchanged.
    None = 0,
    /// Flips the lowest bit of the last byte of the first response message: it still decodes.
    ResponseValue = 1,
    /// Flips the first byte of the first response message (its first field's tag): it no
    /// longer decodes.
    ResponseTag = 2,
    /// Flips the lowest bit of the last byte of the first request message.
    RequestValue = 3,
    /// Ends the request stream without its signed trailers.
    DropRequestTrailers = 4,
    /// Adds custom metadata to the response head.
    ResponseHead = 5,
}

impl Tamper {
    fn from_u8(v: u8) -> Tamper {
        [
            Tamper::None,
            Tamper::ResponseValue,
            Tamper::ResponseTag,
            Tamper::RequestValue,
            Tamper::DropRequestTrailers,
            Tamper::ResponseHead,
        ][usize::from(v)]
    }
}

/// Which way a relayed body goes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Way {
    Request,
    Response,
}

/// Relays one body frame by frame, tampering as `mode` says; a broken stream is passed on
/// broken (a reset).
async fn relay_body(mut body: Incoming, tx: BodySender, mode: Tamper, way: Way) {
    let mut touched = false;
    loop {
        match body.frame().await {
            None => {
                let _ = tx.finish().await;
                return;
            }
            Some(Err(_)) => {
                tx.abort();
                return;
            }
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => {
                    let mut data = data.to_vec();
                    if !touched && data.len() > 5 {
                        touched = true;
                        match (mode, way) {
                            (Tamper::ResponseValue, Way::Response)
                            | (Tamper::RequestValue, Way::Request) => {
                                let last = data.len() - 1;
                                data[last] ^= 0x01;
                            }
                            (Tamper::ResponseTag, Way::Response) => data[5] ^= 0x01,
                            _ => {}
                        }
                    }
                    if tx.data(bytes::Bytes::from(data)).await.is_err() {
                        return;
                    }
                }
                Err(frame) => {
                    if let Ok(t) = frame.into_trailers() {
                        if mode == Tamper::DropRequestTrailers && way == Way::Request {
                            let _ = tx.finish().await;
                        } else {
                            let _ = tx.trailers(t).await;
                        }
                    }
                    return;
                }
            },
        }
    }
}

/// A man in the middle on the provider's registered address: it presents the Registro Civil
/// node's own TLS certificate, dials the real provider node with the SII node's TLS material,
/// and relays each call's frames as they come, tampering as its mode says.
struct Mitm {
    mode: Arc<AtomicU8>,
    forwarded: Arc<AtomicUsize>,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Mitm {
    async fn start(f: &TestFederation, listen: SocketAddr) -> Mitm {
        let rc = f.node_keys(RC_CODE, demo::PROVIDER_NODE);
        let sii = f.node_keys(SII_CODE, demo::CONSUMER_NODE);
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
        let forwarded = Arc::new(AtomicUsize::new(0));
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .expect("bind the registered address");
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let (m, fw) = (mode.clone(), forwarded.clone());
        let handler = move |req: http::Request<Incoming>, _peer: NodeId| {
            let (pool, upstream, mode, forwarded) =
                (pool.clone(), upstream.clone(), m.clone(), fw.clone());
            async move {
                let mode = Tamper::from_u8(mode.load(Ordering::SeqCst));
                let (parts, body) = req.into_parts();
                let (req_tx, req_body) = body_channel(16);
                tokio::spawn(relay_body(body, req_tx, mode, Way::Request));
                let provider: NodeId = demo::PROVIDER_NODE.parse().unwrap();
                let resp = pool
                    .send(
                        &provider,
                        &upstream,
                        http::Request::from_parts(parts, req_body),
                        Duration::from_secs(30),
                    )
                    .await
                    .expect("the real provider node answers the proxy");
                forwarded.fetch_add(1, Ordering::SeqCst);
                let (mut parts, body) = resp.into_parts();
                parts.headers.remove(http::header::CONTENT_LENGTH);
                if mode == Tamper::ResponseHead && !parts.headers.contains_key("grpc-status") {
                    parts
                        .headers
                        .insert("x-added", http::HeaderValue::from_static("on the way"));
                }
                let (tx, out): (BodySender, ChannelBody) = body_channel(16);
                tokio::spawn(relay_body(body, tx, mode, Way::Response));
                http::Response::from_parts(parts, out)
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

fn get(run: &str) -> GetPersonRequest {
    GetPersonRequest { run: run.into() }
}

fn claims() -> [VerifyIdentityRequest; 2] {
    [
        VerifyIdentityRequest {
            run: "12345678-5".into(),
            name: "María José Pérez Soto".into(),
            birth_date: "1980-04-15".into(),
        },
        // The same person (every claim names the person of `enlace-subject`), declared again.
        VerifyIdentityRequest {
            run: "12345678-5".into(),
            name: "María José Pérez Soto".into(),
            birth_date: "1980-04-15".into(),
        },
    ]
}

/// Asserts a refusal for a message altered between the nodes.
#[track_caller]
fn assert_integrity_refused(err: &tonic::Status, what: &str) {
    assert_eq!(err.code(), Code::Unauthenticated, "{what}: {err:?}");
    let problem = err
        .metadata()
        .get("enlace-problem-type")
        .and_then(|v| v.to_str().ok());
    assert_eq!(
        problem,
        Some("urn:enlace:problem:signature-invalid"),
        "{what}: {err:?}"
    );
}

/// Every record of a node's message log.
fn records(db: &std::path::Path) -> Vec<Value> {
    let conn = rusqlite::Connection::open(db).expect("log opens");
    let mut stmt = conn
        .prepare("SELECT record FROM records ORDER BY seq")
        .expect("query");
    stmt.query_map([], |r| r.get::<_, Vec<u8>>(0))
        .expect("rows")
        .map(|b| serde_json::from_slice(&b.expect("row")).expect("a record"))
        .collect()
}

/// Waits up to 5 s until `db` holds a record matching `pred`.
async fn wait_for_record(db: &std::path::Path, pred: impl Fn(&Value) -> bool) {
    let until = Instant::now() + Duration::from_secs(5);
    while !records(db).iter().any(&pred) {
        assert!(Instant::now() < until, "no such record in {}", db.display());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Stops everything, then checks both message logs still verify as chains.
async fn stop_and_verify_logs(f: TestFederation, mitm: Mitm) {
    mitm.stop().await;
    let (consumer_db, provider_db) = (f.log_db(false), f.log_db(true));
    let TestFederation {
        registry,
        provider,
        consumer,
        ..
    } = f;
    consumer.stop().await;
    provider.stop().await;
    for db in [consumer_db, provider_db] {
        let report = msglog::verify_file(&db, &[], None).unwrap();
        assert!(report.is_ok(), "{report:?}");
    }
    registry.running.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_unary_response_altered_in_transit_never_reaches_the_client() {
    bounded(async {
        let (f, registered) = TestFederation::start_grpc_behind_proxy().await;
        let mitm = Mitm::start(&f, registered).await;
        let mut client = f.grpc_client().await;

        // Control: through the proxy, untouched, the call succeeds.
        let person = client
            .get_person(f.grpc_request(get("12345678-5"), &[]))
            .await
            .expect("the untouched call succeeds")
            .into_inner();
        assert_eq!(person.name, "María José Pérez Soto");
        assert_eq!(mitm.forwarded(), 1, "the call went through the proxy");

        // One bit of the response message changed (it still decodes), or its first tag (it
        // does not), or metadata added to the response head: the consumer node holds the head
        // and the message until the provider node's signature, chain and head digest verify,
        // so the client gets the refusal and nothing of the message or the metadata.
        for mode in [
            Tamper::ResponseValue,
            Tamper::ResponseTag,
            Tamper::ResponseHead,
        ] {
            mitm.set(mode);
            let before = mitm.forwarded();
            let err = client
                .get_person(f.grpc_request(get("12345678-5"), &[]))
                .await
                .expect_err("an altered response is refused");
            assert_integrity_refused(&err, &format!("{mode:?}"));
            assert!(err.metadata().get("x-added").is_none(), "{err:?}");
            assert_eq!(mitm.forwarded(), before + 1, "{mode:?}: through the proxy");
        }
        wait_for_record(&f.log_db(false), |r| {
            r["kind"] == "response-in"
                && r["operation"] == "personas.v1.Personas/GetPerson"
                && r["problem"] == "signature-invalid"
        })
        .await;

        // Control again.
        mitm.set(Tamper::None);
        client
            .get_person(f.grpc_request(get("12345678-5"), &[]))
            .await
            .expect("untouched again, it succeeds");
        stop_and_verify_logs(f, mitm).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_streamed_response_altered_in_transit_ends_with_unauthenticated() {
    bounded(async {
        let (f, registered) = TestFederation::start_grpc_behind_proxy().await;
        let mitm = Mitm::start(&f, registered).await;
        let mut client = f.grpc_client().await;
        let list = || ListDocumentsRequest {
            run: "12345678-5".into(),
        };

        // Control.
        let mut docs = client
            .list_documents(f.grpc_request(list(), &[]))
            .await
            .expect("the call starts")
            .into_inner();
        let mut n = 0;
        while docs.message().await.expect("untouched").is_some() {
            n += 1;
        }
        assert_eq!(n, 2);

        // A value changed: messages stream as they come, and the broken chain ends the stream
        // with UNAUTHENTICATED instead of the provider's OK.
        mitm.set(Tamper::ResponseValue);
        let mut docs = client
            .list_documents(f.grpc_request(list(), &[]))
            .await
            .expect("the call starts")
            .into_inner();
        let err = loop {
            match docs.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("the altered stream ended with OK"),
                Err(e) => break e,
            }
        };
        assert_integrity_refused(&err, "a value");

        // A message that no longer decodes is refused when it arrives, as an integrity failure.
        mitm.set(Tamper::ResponseTag);
        let mut docs = client
            .list_documents(f.grpc_request(list(), &[]))
            .await
            .expect("the call starts")
            .into_inner();
        let err = docs
            .message()
            .await
            .expect_err("the first message is refused");
        assert_integrity_refused(&err, "a tag");

        // Metadata added to the head: a server stream's head is signed on its own and checked
        // before any message is released.
        mitm.set(Tamper::ResponseHead);
        let err = client
            .list_documents(f.grpc_request(list(), &[]))
            .await
            .expect_err("a head with metadata added is refused");
        assert_integrity_refused(&err, "a head");
        assert!(err.metadata().get("x-added").is_none(), "{err:?}");
        wait_for_record(&f.log_db(false), |r| {
            r["kind"] == "response-in"
                && r["operation"] == "personas.v1.Personas/ListDocuments"
                && r["problem"] == "signature-invalid"
        })
        .await;
        stop_and_verify_logs(f, mitm).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_streamed_request_altered_or_cut_in_transit_is_refused_and_the_backend_reset() {
    bounded(async {
        let (f, registered) = TestFederation::start_grpc_behind_proxy().await;
        let mitm = Mitm::start(&f, registered).await;
        let backend = f.grpc.as_ref().expect("the gRPC backend").service.clone();
        let mut client = f.grpc_client().await;

        // Control.
        let summary = client
            .verify_identities(f.grpc_request(tonic::codegen::tokio_stream::iter(claims()), &[]))
            .await
            .expect("the untouched call succeeds")
            .into_inner();
        assert_eq!((summary.checked, summary.matched), (2, 2));
        assert_eq!(backend.broken_request_streams(), 0);

        // A claim altered on the way (it still decodes), or the signed trailers dropped: the
        // provider node finds the request chain broken or missing at the end, resets the
        // backend's stream (which therefore never answers), and answers UNAUTHENTICATED.
        for (i, mode) in [Tamper::RequestValue, Tamper::DropRequestTrailers]
            .into_iter()
            .enumerate()
        {
            mitm.set(mode);
            let err = client
                .verify_identities(
                    f.grpc_request(tonic::codegen::tokio_stream::iter(claims()), &[]),
                )
                .await
                .expect_err("an altered request stream is refused");
            assert_integrity_refused(&err, &format!("{mode:?}"));
            let until = Instant::now() + Duration::from_secs(5);
            while backend.broken_request_streams() < i + 1 {
                assert!(
                    Instant::now() < until,
                    "{mode:?}: the backend saw a clean end"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        wait_for_record(&f.log_db(true), |r| {
            r["operation"] == "personas.v1.Personas/VerifyIdentities"
                && r["problem"] == "signature-invalid"
        })
        .await;

        // Control again.
        mitm.set(Tamper::None);
        client
            .verify_identities(f.grpc_request(tonic::codegen::tokio_stream::iter(claims()), &[]))
            .await
            .expect("untouched again, it succeeds");
        stop_and_verify_logs(f, mitm).await;
    })
    .await;
}

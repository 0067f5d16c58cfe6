//! The generic gRPC relay end to end: a tonic client (SII's `renta` backend) calls its node's
//! consumer listener; the call crosses both nodes to the sample `personas.v1.Personas` backend.

use std::time::{Duration, Instant};

use enlace_node::msglog;
use enlace_proto::personas::v1::{GetPersonRequest, ListDocumentsRequest};
use enlace_registry::demo;
use enlace_tests::TestFederation;
use http_body_util::BodyExt;
use serde_json::Value;
use tonic::Code;

fn get(run: &str) -> GetPersonRequest {
    GetPersonRequest { run: run.into() }
}

fn list(run: &str) -> ListDocumentsRequest {
    ListDocumentsRequest { run: run.into() }
}

/// Every record of a node's message log, oldest first.
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

fn header<'a>(rec: &'a Value, name: &str) -> Option<&'a str> {
    rec["headers"]
        .as_array()?
        .iter()
        .find(|h| h[0] == name)
        .and_then(|h| h[1].as_str())
}

/// Waits up to 5 s for a record matching `pred` in `db`.
async fn wait_for_record(db: &std::path::Path, pred: impl Fn(&Value) -> bool) -> Value {
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(r) = records(db).into_iter().find(|r| pred(r)) {
            return r;
        }
        assert!(Instant::now() < until, "no such record in {}", db.display());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn problem_type(status: &tonic::Status) -> String {
    status
        .metadata()
        .get("enlace-problem-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn unary_call_is_relayed_and_minimised_to_the_contract() {
    let f = TestFederation::start_grpc(|_, _| {}).await;
    let mut client = f.grpc_client().await;
    let resp = client
        .get_person(f.grpc_request(get("12345678-5"), &[]))
        .await
        .expect("the call succeeds");
    let message_id = resp
        .metadata()
        .get("enlace-message-id")
        .and_then(|v| v.to_str().ok())
        .expect("a message id")
        .to_string();
    let person = resp.into_inner();
    assert_eq!(person.name, "María José Pérez Soto");
    assert_eq!(
        person.address.as_ref().map(|a| a.commune.as_str()),
        Some("Santiago")
    );
    // Cut by the contract (only /name and /address are allowed).
    assert_eq!(person.birth_date, "");
    assert_eq!(person.health_insurance, "");
    assert_eq!(person.civil_status, "");
    assert_eq!(person.run, "");

    // Both nodes logged the exchange, with the chain of the relayed messages.
    let out = wait_for_record(&f.log_db(true), |r| {
        r["kind"] == "response-out" && r["message_id"] == message_id
    })
    .await;
    assert_eq!(out["operation"], "personas.v1.Personas/GetPerson");
    assert!(out["response_digest"].as_str().unwrap().starts_with("1:"));
    let disclosed = header(&out, "enlace-disclosed").unwrap();
    assert!(
        disclosed.contains("/name") && !disclosed.contains("health"),
        "{disclosed}"
    );
    assert!(out["signature"].as_str().is_some());
    let inn = wait_for_record(&f.log_db(false), |r| {
        r["kind"] == "response-in" && r["message_id"] == message_id
    })
    .await;
    assert_eq!(inn["response_digest"], out["response_digest"]);
    assert_eq!(header(&inn, "grpc-status"), Some("0"));
    assert!(
        records(&f.log_db(false))
            .iter()
            .any(|r| r["kind"] == "request-out" && r["message_id"] == message_id)
    );

    // A provider status passes through unchanged.
    let err = client
        .get_person(f.grpc_request(get("99999999-9"), &[]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn server_stream_is_relayed_message_by_message() {
    let f = TestFederation::start_grpc(|_, _| {}).await;
    let mut client = f.grpc_client().await;
    let mut stream = client
        .list_documents(f.grpc_request(list("12345678-5"), &[]))
        .await
        .expect("the call starts")
        .into_inner();
    let mut docs = Vec::new();
    while let Some(doc) = stream.message().await.expect("a document") {
        docs.push(doc);
    }
    assert_eq!(docs.len(), 2);
    for d in &docs {
        assert!(!d.r#type.is_empty() && !d.number.is_empty(), "{d:?}");
        assert_eq!(d.issued_at, "", "issued_at is not in the contract");
    }
    let out = wait_for_record(&f.log_db(true), |r| {
        r["kind"] == "response-out" && r["operation"] == "personas.v1.Personas/ListDocuments"
    })
    .await;
    assert!(out["response_digest"].as_str().unwrap().starts_with("2:"));
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn refusals_map_to_grpc_statuses_with_the_problem_type() {
    let f = TestFederation::start_grpc(|_, _| {}).await;
    let mut client = f.grpc_client().await;
    // No contract named.
    let err = client
        .get_person(f.grpc_request(get("12345678-5"), &[("enlace-contract", "")]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert_eq!(problem_type(&err), "urn:enlace:problem:contract-missing");
    // The REST contract does not cover the gRPC service.
    let rest_contract = f.demo.contract.clone();
    let err = client
        .get_person(f.grpc_request(get("12345678-5"), &[("enlace-contract", &rest_contract)]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    // A wrong token.
    let err = client
        .get_person(f.grpc_request(get("12345678-5"), &[("authorization", "Bearer nope")]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert_eq!(problem_type(&err), "urn:enlace:problem:unauthenticated");
    f.stop().await;
}

/// Sends one framed message to the consumer listener with a raw HTTP/2 client; returns the
/// final status fields (from the headers of a trailers-only response, or the trailers).
async fn raw_call(
    f: &TestFederation,
    path: &str,
    frame: Vec<u8>,
    extra: &[(&'static str, &str)],
) -> http::HeaderMap {
    let tcp = tokio::net::TcpStream::connect(f.consumer.consumer_addr)
        .await
        .unwrap();
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let mut req = http::Request::new(http_body_util::Full::new(bytes::Bytes::from(frame)));
    *req.method_mut() = http::Method::POST;
    *req.uri_mut() = format!("http://{}{path}", f.consumer.consumer_addr)
        .parse()
        .unwrap();
    let h = req.headers_mut();
    h.insert("content-type", "application/grpc".parse().unwrap());
    h.insert("te", "trailers".parse().unwrap());
    h.insert(
        "authorization",
        format!("Bearer {}", f.client_token).parse().unwrap(),
    );
    h.insert("enlace-client", demo::CONSUMER_SUBSYSTEM.parse().unwrap());
    h.insert("enlace-contract", f.demo.grpc_contract.parse().unwrap());
    h.insert("enlace-subject", demo::PERSON.parse().unwrap());
    for (k, v) in extra {
        h.insert(*k, v.parse().unwrap());
    }
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let (parts, body) = resp.into_parts();
    if parts.headers.contains_key("grpc-status") {
        return parts.headers;
    }
    let collected = body.collect().await.unwrap();
    collected.trailers().cloned().expect("trailers")
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_fields_and_compression_are_invalid_arguments() {
    let f = TestFederation::start_grpc(|_, _| {}).await;
    // GetPersonRequest { run = "12345678-5" } plus field 99 (varint 1), which it does not declare.
    let run = b"12345678-5";
    let mut msg = vec![0x0a, run.len() as u8];
    msg.extend_from_slice(run);
    let valid = msg.clone();
    msg.extend_from_slice(&[0x98, 0x06, 0x01]);
    let frame = enlace_description::grpc::encode_frame(&msg, false).unwrap();
    let status = raw_call(&f, "/personas.v1.Personas/GetPerson", frame, &[]).await;
    assert_eq!(status["grpc-status"], "3", "{status:?}");
    assert_eq!(
        status["enlace-problem-type"],
        "urn:enlace:problem:request-schema-violation"
    );
    // The same message without the unknown field goes through.
    let frame = enlace_description::grpc::encode_frame(&valid, false).unwrap();
    let status = raw_call(&f, "/personas.v1.Personas/GetPerson", frame, &[]).await;
    assert_eq!(status["grpc-status"], "0", "{status:?}");
    // A compressed message is refused, not inflated: UNIMPLEMENTED, as the gRPC spec has a
    // server answer an encoding it does not support, and identity advertised.
    let frame = enlace_description::grpc::encode_frame(&valid, true).unwrap();
    let status = raw_call(&f, "/personas.v1.Personas/GetPerson", frame, &[]).await;
    assert_eq!(status["grpc-status"], "12", "{status:?}");
    assert_eq!(
        status["enlace-problem-type"],
        "urn:enlace:problem:unsupported-encoding"
    );
    assert_eq!(status["grpc-accept-encoding"], "identity");
    let frame = enlace_description::grpc::encode_frame(&valid, false).unwrap();
    let status = raw_call(
        &f,
        "/personas.v1.Personas/GetPerson",
        frame.clone(),
        &[("grpc-encoding", "gzip")],
    )
    .await;
    assert_eq!(status["grpc-status"], "12", "{status:?}");
    // Only protobuf is relayed: `+json` and other codecs are refused, clearly.
    let status = raw_call(
        &f,
        "/personas.v1.Personas/GetPerson",
        frame.clone(),
        &[("content-type", "application/grpc+json")],
    )
    .await;
    assert_eq!(status["grpc-status"], "3", "{status:?}");
    assert_eq!(
        status["enlace-problem-type"],
        "urn:enlace:problem:unsupported-media-type"
    );
    let status = raw_call(
        &f,
        "/personas.v1.Personas/GetPerson",
        frame,
        &[("content-type", "application/grpc+proto")],
    )
    .await;
    assert_eq!(status["grpc-status"], "0", "{status:?}");
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deadline_is_propagated_and_enforced() {
    let f = TestFederation::start_grpc(|_, _| {}).await;
    // tonic enforces a deadline itself too (it answers CANCELLED "Timeout expired"), so the
    // call goes by a raw HTTP/2 client that only states `grpc-timeout`.
    let slow = enlace_node::sample_grpc::SLOW_RUN.as_bytes();
    let mut msg = vec![0x0a, slow.len() as u8];
    msg.extend_from_slice(slow);
    let frame = enlace_description::grpc::encode_frame(&msg, false).unwrap();
    let started = Instant::now();
    let status = raw_call(
        &f,
        "/personas.v1.Personas/GetPerson",
        frame,
        &[("grpc-timeout", "500m")],
    )
    .await;
    assert_eq!(status["grpc-status"], "4", "{status:?}");
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(450) && elapsed < Duration::from_millis(2500),
        "{elapsed:?}"
    );
    // The consumer node refused it for the deadline, and logged that.
    wait_for_record(&f.log_db(false), |r| {
        r["kind"] == "refusal"
            && r["operation"] == "personas.v1.Personas/GetPerson"
            && r["problem"] == "peer-timeout"
    })
    .await;
    // With the tonic client the call ends at the deadline as well.
    let mut client = f.grpc_client().await;
    let mut req = f.grpc_request(get(enlace_node::sample_grpc::SLOW_RUN), &[]);
    req.set_timeout(Duration::from_millis(500));
    let started = Instant::now();
    let err = client.get_person(req).await.unwrap_err();
    assert!(
        matches!(err.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{err:?}"
    );
    assert!(started.elapsed() < Duration::from_millis(2500));
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cancelled_stream_is_propagated_logged_and_the_logs_verify() {
    let f = TestFederation::start_grpc(|_, _| {}).await;
    let mut client = f.grpc_client().await;
    let mut stream = client
        .list_documents(f.grpc_request(list(enlace_node::sample_grpc::MANY_DOCUMENTS_RUN), &[]))
        .await
        .expect("the call starts")
        .into_inner();
    for _ in 0..3 {
        let doc = stream.message().await.unwrap().expect("a document");
        assert!(doc.number.starts_with('M'));
        assert_eq!(doc.issued_at, "");
    }
    drop(stream);
    let inn = wait_for_record(&f.log_db(false), |r| {
        r["kind"] == "response-in" && r["problem"] == "cancelled"
    })
    .await;
    let out = wait_for_record(&f.log_db(true), |r| {
        r["kind"] == "response-out" && r["problem"] == "cancelled"
    })
    .await;
    assert_eq!(inn["message_id"], out["message_id"]);
    // The backend's stream stopped too.
    let backend = &f.grpc.as_ref().unwrap().service;
    let until = Instant::now() + Duration::from_secs(5);
    while backend.open_streams() > 0 {
        assert!(Instant::now() < until, "the backend still streams");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Both message logs verify as chains once the nodes have stopped.
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
        assert!(report.records >= 2, "{report:?}");
    }
    registry.running.stop().await;
}

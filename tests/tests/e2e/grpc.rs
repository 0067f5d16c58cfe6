//! The generic gRPC relay end to end: a tonic client (SII's `renta` backend) calls its node's
//! consumer listener; the call crosses both nodes to the sample `personas.v1.Personas` backend.

use std::time::{Duration, Instant};

use enlace_msglog as msglog;
use enlace_proto::personas::v1::{GetPersonRequest, ListDocumentsRequest, VerifyIdentityRequest};
use enlace_registry::demo;
use enlace_tests::TestFederation;
use http_body_util::BodyExt;
use serde_json::Value;
use tonic::Code;
use tonic::codegen::tokio_stream::wrappers::ReceiverStream;

fn get(run: &str) -> GetPersonRequest {
    GetPersonRequest { run: run.into() }
}

fn list(run: &str) -> ListDocumentsRequest {
    ListDocumentsRequest { run: run.into() }
}

/// The `enlace-subject` naming the person of `run`: requests bind their RUN to it.
fn subject(run: &str) -> String {
    format!("CL-RUN:{run}")
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
        .get_person(f.grpc_request(
            get("99999999-9"),
            &[("enlace-subject", &subject("99999999-9"))],
        ))
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
    raw_stream_call(f, path, vec![(Duration::ZERO, frame)], extra).await
}

/// As [`raw_call`], sending each chunk after its pause, then ending the request stream.
async fn raw_stream_call(
    f: &TestFederation,
    path: &str,
    chunks: Vec<(Duration, Vec<u8>)>,
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
    let (tx, body) = enlace_node::body_channel(4);
    tokio::spawn(async move {
        for (pause, chunk) in chunks {
            tokio::time::sleep(pause).await;
            if tx.data(bytes::Bytes::from(chunk)).await.is_err() {
                return;
            }
        }
        let _ = tx.finish().await;
    });
    let mut req = http::Request::new(body);
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
    let slow = enlace_samples::grpc::SLOW_RUN.as_bytes();
    let mut msg = vec![0x0a, slow.len() as u8];
    msg.extend_from_slice(slow);
    let frame = enlace_description::grpc::encode_frame(&msg, false).unwrap();
    let started = Instant::now();
    let named = subject(enlace_samples::grpc::SLOW_RUN);
    let status = raw_call(
        &f,
        "/personas.v1.Personas/GetPerson",
        frame,
        &[("grpc-timeout", "500m"), ("enlace-subject", &named)],
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
    let mut req = f.grpc_request(
        get(enlace_samples::grpc::SLOW_RUN),
        &[("enlace-subject", &named)],
    );
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
    let many = enlace_samples::grpc::MANY_DOCUMENTS_RUN;
    let mut stream = client
        .list_documents(f.grpc_request(list(many), &[("enlace-subject", &subject(many))]))
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

// ---------------------------------------------------------------------------------------------
// Client and bidirectional streams

fn claim(run: &str, name: &str, birth_date: &str) -> VerifyIdentityRequest {
    VerifyIdentityRequest {
        run: run.into(),
        name: name.into(),
        birth_date: birth_date.into(),
    }
}

/// Both message logs verify as chains once the nodes have stopped; the registry stops too.
async fn stop_and_verify_logs(f: TestFederation) {
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

#[tokio::test(flavor = "multi_thread")]
async fn client_stream_is_relayed_and_its_chain_signed_in_request_trailers() {
    let f = TestFederation::start_grpc(|_, _| {}).await;
    let mut client = f.grpc_client().await;
    // Claims about the person named, as a form declared them: the second one misspelt.
    let claims = [
        claim("12345678-5", "María José Pérez Soto", "1980-04-15"),
        claim("12345678-5", "María José Peres Soto", "1980-04-15"),
        claim("12345678-5", "María José Pérez Soto", "1980-04-15"),
    ];
    let resp = client
        .verify_identities(f.grpc_request(tonic::codegen::tokio_stream::iter(claims), &[]))
        .await
        .expect("the call succeeds");
    let message_id = resp
        .metadata()
        .get("enlace-message-id")
        .and_then(|v| v.to_str().ok())
        .expect("a message id")
        .to_string();
    let summary = resp.into_inner();
    assert_eq!(summary.checked, 3);
    assert_eq!(summary.matched, 2);
    // Which claims failed is not in the contract.
    assert!(summary.mismatched_runs.is_empty(), "{summary:?}");

    // Both nodes logged the request direction's chain: three messages, the same digest, and
    // the consumer node's signature over it (its request trailers).
    let inn = wait_for_record(&f.log_db(false), |r| {
        r["kind"] == "response-in" && r["message_id"] == message_id
    })
    .await;
    let out = wait_for_record(&f.log_db(true), |r| {
        r["kind"] == "response-out" && r["message_id"] == message_id
    })
    .await;
    let sent = header(&inn, "enlace-request-stream-digest").expect("the request chain");
    assert!(sent.starts_with("3:"), "{sent}");
    assert_eq!(header(&out, "enlace-request-stream-digest"), Some(sent));
    assert_eq!(inn["request_digest"], sent);
    assert_eq!(out["request_digest"], sent);
    for rec in [&inn, &out] {
        let input = header(rec, "enlace-request-trailers-signature-input").unwrap_or("");
        assert!(
            input.contains("tag=\"enlace-grpc-request-trailers\""),
            "{rec:#}"
        );
    }
    assert_eq!(header(&inn, "grpc-status"), Some("0"));
    assert!(out["response_digest"].as_str().unwrap().starts_with("1:"));
    let request_out = wait_for_record(&f.log_db(false), |r| {
        r["kind"] == "request-out" && r["message_id"] == message_id
    })
    .await;
    assert!(
        request_out["signature_input"]
            .as_str()
            .unwrap()
            .contains("tag=\"enlace-request-stream\""),
        "{request_out:#}"
    );
    stop_and_verify_logs(f).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_stream_with_a_bad_message_is_refused_and_the_backend_sees_a_reset() {
    let f = TestFederation::start_grpc(|_, _| {}).await;
    let backend = f.grpc.as_ref().unwrap().service.clone();
    // The second claim carries field 9, which VerifyIdentityRequest does not declare: raw
    // frames, since a tonic client cannot send it.
    let good = {
        let mut m = vec![0x0a, 10];
        m.extend_from_slice(b"12345678-5");
        m
    };
    let mut bad = good.clone();
    bad.extend_from_slice(&[0x48, 0x01]);
    let chunks = vec![
        (
            Duration::ZERO,
            enlace_description::grpc::encode_frame(&good, false).unwrap(),
        ),
        // Time for the first claim to reach the backend.
        (
            Duration::from_millis(500),
            enlace_description::grpc::encode_frame(&bad, false).unwrap(),
        ),
    ];
    let status = raw_stream_call(&f, "/personas.v1.Personas/VerifyIdentities", chunks, &[]).await;
    assert_eq!(status["grpc-status"], "3", "{status:?}");
    assert_eq!(
        status["enlace-problem-type"],
        "urn:enlace:problem:request-schema-violation"
    );
    // The first claim had reached the backend; the stream was then reset, never ended.
    let until = Instant::now() + Duration::from_secs(5);
    while backend.broken_request_streams() == 0 {
        assert!(Instant::now() < until, "the backend never saw a reset");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bidirectional_stream_is_interactive() {
    let f = TestFederation::start_grpc(|_, _| {}).await;
    let mut client = f.grpc_client().await;
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let resp = client
        .lookup_persons(f.grpc_request(ReceiverStream::new(rx), &[]))
        .await
        .expect("the call starts");
    let message_id = resp
        .metadata()
        .get("enlace-message-id")
        .and_then(|v| v.to_str().ok())
        .expect("a message id")
        .to_string();
    let mut answers = resp.into_inner();
    // Ping-pong: each answer arrives while the request stream is still open, before the next
    // request is even sent. Every request names the person `enlace-subject` names.
    for (run, name) in [
        ("12345678-5", "María José Pérez Soto"),
        ("12345678-5", "María José Pérez Soto"),
        ("12345678-5", "María José Pérez Soto"),
    ] {
        tx.send(get(run)).await.expect("the request stream is open");
        let person = tokio::time::timeout(Duration::from_secs(5), answers.message())
            .await
            .expect("an answer before the next request")
            .expect("a message")
            .expect("not the end");
        assert_eq!(person.name, name);
        // Cut to the contract, message by message.
        assert_eq!(person.birth_date, "");
        assert_eq!(person.health_insurance, "");
    }
    drop(tx);
    assert!(answers.message().await.expect("a clean end").is_none());

    let inn = wait_for_record(&f.log_db(false), |r| {
        r["kind"] == "response-in" && r["message_id"] == message_id
    })
    .await;
    assert!(inn["response_digest"].as_str().unwrap().starts_with("3:"));
    assert_eq!(header(&inn, "grpc-status"), Some("0"));
    let out = wait_for_record(&f.log_db(true), |r| {
        r["kind"] == "response-out" && r["message_id"] == message_id
    })
    .await;
    assert_eq!(out["response_digest"], inn["response_digest"]);
    assert_eq!(
        header(&out, "enlace-request-stream-digest"),
        header(&inn, "enlace-request-stream-digest")
    );

    // An unknown person: the backend's NOT_FOUND ends the call, unchanged.
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let mut answers = client
        .lookup_persons(f.grpc_request(
            ReceiverStream::new(rx),
            &[("enlace-subject", &subject("10000000-8"))],
        ))
        .await
        .expect("the call starts")
        .into_inner();
    tx.send(get("10000000-8")).await.expect("open");
    let err = answers.message().await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    drop(tx);
    stop_and_verify_logs(f).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cancel_before_the_answer_is_logged_as_cancelled_on_both_nodes() {
    let f = TestFederation::start_grpc(|_, _| {}).await;
    let mut client = f.grpc_client().await;
    // The slow RUN answers after 3 s; the caller gives up after 300 ms, before any header.
    let slow = enlace_samples::grpc::SLOW_RUN;
    let req = f.grpc_request(get(slow), &[("enlace-subject", &subject(slow))]);
    let call = tokio::spawn(async move {
        let _ = client.get_person(req).await;
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    call.abort();
    let inn = wait_for_record(&f.log_db(false), |r| {
        r["operation"] == "personas.v1.Personas/GetPerson" && r["problem"] == "cancelled"
    })
    .await;
    let message_id = inn["message_id"].as_str().unwrap().to_string();
    assert!(
        records(&f.log_db(false))
            .iter()
            .any(|r| r["kind"] == "request-out" && r["message_id"] == message_id)
    );
    let out = wait_for_record(&f.log_db(true), |r| {
        r["message_id"] == message_id && r["problem"] == "cancelled"
    })
    .await;
    assert_eq!(out["operation"], "personas.v1.Personas/GetPerson");
    assert!(
        records(&f.log_db(true))
            .iter()
            .any(|r| r["kind"] == "request-in" && r["message_id"] == message_id)
    );
    stop_and_verify_logs(f).await;
}

// ---------------------------------------------------------------------------------------------
// A backend that breaks the rules

/// A gRPC backend written by hand (hyper, h2c) answering `GetPerson` as the caller's `x-raw`
/// metadata says, with what a generated server never sends. It records the request heads it
/// gets.
struct RawBackend {
    addr: std::net::SocketAddr,
    seen: std::sync::Arc<std::sync::Mutex<Vec<http::HeaderMap>>>,
    task: tokio::task::JoinHandle<()>,
}

/// `Person { name }` encoded, plus `extra` bytes.
fn person_bytes(name: &str, extra: &[u8]) -> Vec<u8> {
    let mut m = vec![0x12, name.len() as u8];
    m.extend_from_slice(name.as_bytes());
    m.extend_from_slice(extra);
    m
}

fn framed(payload: &[u8]) -> bytes::Bytes {
    bytes::Bytes::from(enlace_description::grpc::encode_frame(payload, false).unwrap())
}

fn trailers(pairs: &[(&'static str, &str)]) -> http::HeaderMap {
    let mut t = http::HeaderMap::new();
    for (k, v) in pairs {
        t.append(*k, v.parse().unwrap());
    }
    t
}

impl RawBackend {
    async fn start() -> RawBackend {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let recorded = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let recorded = recorded.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let recorded = recorded.clone();
                        async move {
                            Ok::<_, std::convert::Infallible>(Self::answer(req, recorded).await)
                        }
                    });
                    let _ = hyper::server::conn::http2::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
                });
            }
        });
        RawBackend { addr, seen, task }
    }

    async fn answer(
        req: http::Request<hyper::body::Incoming>,
        seen: std::sync::Arc<std::sync::Mutex<Vec<http::HeaderMap>>>,
    ) -> http::Response<enlace_node::ChannelBody> {
        seen.lock().unwrap().push(req.headers().clone());
        let run = req
            .headers()
            .get("x-raw")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let _ = req.into_body().collect().await;
        let (tx, rx) = enlace_node::body_channel(8);
        let mut resp = http::Response::new(rx);
        resp.headers_mut()
            .insert("content-type", "application/grpc".parse().unwrap());
        if run == "metadata" || run == "refused" {
            resp.headers_mut()
                .insert("x-backend-trace", "t-1".parse().unwrap());
        }
        let ok = || trailers(&[("grpc-status", "0")]);
        tokio::spawn(async move {
            match run.as_str() {
                "unknown-field" => {
                    // Field 99 (varint 1), which Person does not declare.
                    let _ = tx
                        .data(framed(&person_bytes("Ana", &[0x98, 0x06, 0x01])))
                        .await;
                    let _ = tx.trailers(ok()).await;
                }
                "malformed" => {
                    // A string field announcing 80 bytes and carrying 3.
                    let _ = tx.data(framed(&[0x12, 0x50, b'A', b'n', b'a'])).await;
                    let _ = tx.trailers(ok()).await;
                }
                "two" => {
                    let _ = tx.data(framed(&person_bytes("Ana", &[]))).await;
                    let _ = tx.data(framed(&person_bytes("Eva", &[]))).await;
                    let _ = tx.trailers(ok()).await;
                }
                "none" => {
                    let _ = tx.trailers(ok()).await;
                }
                "metadata" => {
                    let _ = tx.data(framed(&person_bytes("Ana", &[]))).await;
                    let _ = tx
                        .trailers(trailers(&[
                            ("grpc-status", "0"),
                            ("x-backend-note", "checked"),
                        ]))
                        .await;
                }
                "refused" => {
                    // A provider status with details and metadata, and Enlace fields a
                    // backend must not be able to set.
                    let _ = tx
                        .trailers(trailers(&[
                            ("grpc-status", "9"),
                            ("grpc-message", "expediente%20cerrado"),
                            ("grpc-status-details-bin", "CAkSEmV4cGVkaWVudGUgY2VycmFkbw"),
                            ("x-backend-note", "closed"),
                            ("enlace-problem-type", "urn:enlace:problem:replay"),
                            ("enlace-error", "client"),
                        ]))
                        .await;
                }
                "reset" => {
                    let _ = tx.data(framed(&person_bytes("Ana", &[]))).await;
                    tx.abort();
                }
                "stall" => {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    let _ = tx.trailers(ok()).await;
                }
                _ => {
                    let _ = tx
                        .trailers(trailers(&[
                            ("grpc-status", "5"),
                            ("grpc-message", "unknown"),
                        ]))
                        .await;
                }
            }
        });
        resp
    }

    /// Which request heads reached it.
    fn seen(&self) -> Vec<http::HeaderMap> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for RawBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The federation with the provider node's gRPC backend replaced by `raw`, and calls without
/// a deadline cut after a second of silence.
async fn federation_with(raw: &RawBackend) -> TestFederation {
    let addr = raw.addr;
    TestFederation::start_grpc(move |s, provider| {
        s.limits.grpc_idle_timeout_ms = 1_000;
        if provider {
            for p in &mut s.services {
                if p.backend.starts_with("h2c://") {
                    p.backend = format!("h2c://{addr}");
                }
            }
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_response_breaking_the_schema_is_refused_with_its_problem_type() {
    let raw = RawBackend::start().await;
    let f = federation_with(&raw).await;
    let mut client = f.grpc_client().await;
    for run in ["unknown-field", "malformed", "two", "none"] {
        let err = client
            .get_person(f.grpc_request(get("12345678-5"), &[("x-raw", run)]))
            .await
            .expect_err(run);
        assert_eq!(err.code(), Code::Internal, "{run}: {err:?}");
        assert_eq!(
            problem_type(&err),
            "urn:enlace:problem:response-schema-violation",
            "{run}"
        );
        assert_eq!(
            err.metadata().get("enlace-error").unwrap(),
            "provider-backend",
            "{run}"
        );
    }
    // Both nodes logged each refusal, and the provider node's access records name it.
    wait_for_record(&f.log_db(false), |r| {
        r["kind"] == "response-in" && r["problem"] == "response-schema-violation"
    })
    .await;
    wait_for_record(&f.log_db(true), |r| {
        r["kind"] == "response-out" && r["problem"] == "response-schema-violation"
    })
    .await;
    stop_and_verify_logs(f).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn backend_metadata_and_status_details_pass_through_but_never_enlace_fields() {
    let raw = RawBackend::start().await;
    let f = federation_with(&raw).await;
    let mut client = f.grpc_client().await;
    let resp = client
        .get_person(f.grpc_request(
            get("12345678-5"),
            &[("x-request-ref", "expediente-77"), ("x-raw", "metadata")],
        ))
        .await
        .expect("the call succeeds");
    assert_eq!(resp.metadata().get("x-backend-trace").unwrap(), "t-1");
    assert_eq!(resp.metadata().get("x-backend-note").unwrap(), "checked");
    let ok_id = resp
        .metadata()
        .get("enlace-message-id")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(resp.into_inner().name, "Ana");
    // The caller's custom metadata reached the backend; its token did not.
    let seen = raw.seen();
    let head = seen.last().expect("a request");
    assert_eq!(head.get("x-request-ref").unwrap(), "expediente-77");
    assert!(head.get("authorization").is_none(), "{head:?}");
    assert_eq!(head.get("enlace-client").unwrap(), demo::CONSUMER_SUBSYSTEM);

    // A provider status passes through unchanged, with its details and metadata; the Enlace
    // fields the backend tried to set do not.
    let err = client
        .get_person(f.grpc_request(get("12345678-5"), &[("x-raw", "refused")]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert_eq!(err.message(), "expediente cerrado");
    let details = base64::Engine::decode(
        &base64::engine::general_purpose::STANDARD_NO_PAD,
        "CAkSEmV4cGVkaWVudGUgY2VycmFkbw",
    )
    .unwrap();
    assert_eq!(err.details(), details.as_slice());
    assert_eq!(err.metadata().get("x-backend-note").unwrap(), "closed");
    assert_eq!(err.metadata().get("x-backend-trace").unwrap(), "t-1");
    assert!(
        err.metadata().get("enlace-problem-type").is_none(),
        "{err:?}"
    );
    assert!(err.metadata().get("enlace-error").is_none(), "{err:?}");

    // The records keep the metadata and status fields the signatures cover, so the exchanges'
    // evidence bundles verify offline on both nodes.
    let refused_id = err
        .metadata()
        .get("enlace-message-id")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    let config = f.consumer.node.config.current().unwrap();
    for id in [&ok_id, &refused_id] {
        for (db, node) in [
            (f.log_db(false), demo::CONSUMER_NODE),
            (f.log_db(true), demo::PROVIDER_NODE),
        ] {
            wait_for_record(&db, |r| {
                r["message_id"] == id.as_str()
                    && r["kind"].as_str().unwrap().starts_with("response")
            })
            .await;
            let bundle = enlace_node::bundle::create(&db, id, node, &config).unwrap();
            let lines = bundle.verify().unwrap_or_else(|e| panic!("{node}: {e}"));
            assert!(
                lines
                    .iter()
                    .any(|l| l.contains("final status (enlace-grpc-trailers)")),
                "{lines:#?}"
            );
        }
    }
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backend_reset_is_a_cancellation_and_silence_an_idle_timeout() {
    let raw = RawBackend::start().await;
    let f = federation_with(&raw).await;
    let mut client = f.grpc_client().await;
    let err = client
        .get_person(f.grpc_request(get("12345678-5"), &[("x-raw", "reset")]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Cancelled, "{err:?}");
    assert_eq!(problem_type(&err), "urn:enlace:problem:cancelled");
    assert_eq!(
        err.metadata().get("enlace-error").unwrap(),
        "provider-backend"
    );
    // Closed by a response record, or a refusal when the reset came before the head.
    wait_for_record(&f.log_db(true), |r| {
        r["operation"] == "personas.v1.Personas/GetPerson" && r["problem"] == "cancelled"
    })
    .await;
    wait_for_record(&f.log_db(false), |r| {
        r["kind"] == "response-in" && r["problem"] == "cancelled"
    })
    .await;

    // No deadline and a backend that says nothing: the idle timeout (1 s here) ends it.
    let started = Instant::now();
    let err = client
        .get_person(f.grpc_request(get("12345678-5"), &[("x-raw", "stall")]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert!(err.message().contains("grpc_idle_timeout_ms"), "{err:?}");
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(900) && elapsed < Duration::from_secs(4),
        "{elapsed:?}"
    );
    stop_and_verify_logs(f).await;
}

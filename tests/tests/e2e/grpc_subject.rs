//! The data subject over gRPC: `personas.v1` binds the RUN of every request message to
//! `enlace-subject` (`(enlace.subject) = "CL-RUN"`), so the provider node refuses any message,
//! in every kind of call, that asks about another person, and files the refusal's access record
//! under the person asked about.

use std::time::{Duration, Instant};

use enlace_core::access::SignedAccessRecord;
use enlace_proto::personas::v1::{GetPersonRequest, ListDocumentsRequest, VerifyIdentityRequest};
use enlace_registry::demo;
use enlace_tests::TestFederation;
use serde_json::Value;
use tonic::Code;
use tonic::codegen::tokio_stream::wrappers::ReceiverStream;

/// Someone else than the person named (`demo::PERSON`), known to the sample backend.
const OTHER_RUN: &str = "11111111-1";
const OTHER: &str = "CL-RUN:11111111-1";

fn get(run: &str) -> GetPersonRequest {
    GetPersonRequest { run: run.into() }
}

fn claim(run: &str) -> VerifyIdentityRequest {
    VerifyIdentityRequest {
        run: run.into(),
        name: "María José Pérez Soto".into(),
        birth_date: "1980-04-15".into(),
    }
}

#[track_caller]
fn assert_mismatch(err: &tonic::Status, what: &str) {
    assert_eq!(err.code(), Code::PermissionDenied, "{what}: {err:?}");
    assert_eq!(
        err.metadata()
            .get("enlace-problem-type")
            .and_then(|v| v.to_str().ok()),
        Some("urn:enlace:problem:subject-mismatch"),
        "{what}: {err:?}"
    );
}

/// The access records the registry holds about `subject` and `operation` with `result`,
/// waiting up to 10 s for at least `n`.
async fn access_records(
    f: &TestFederation,
    subject: &str,
    operation: &str,
    result: &str,
    n: usize,
) -> Vec<SignedAccessRecord> {
    let path = f.registry.dir.path().join("registry").join("access.sqlite");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let found: Vec<SignedAccessRecord> = {
            let conn = rusqlite::Connection::open(&path).unwrap();
            let mut stmt = conn
                .prepare("SELECT record FROM access_records WHERE subject = ?1 ORDER BY idx")
                .unwrap();
            stmt.query_map([subject], |r| r.get::<_, Vec<u8>>(0))
                .unwrap()
                .map(|b| serde_json::from_slice::<SignedAccessRecord>(&b.unwrap()).unwrap())
                .filter(|r| r.record.operation == operation && r.record.result == result)
                .collect()
        };
        if found.len() >= n || Instant::now() > deadline {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The provider node's record of `message_id` of `kind`, waiting up to 5 s.
async fn provider_record(f: &TestFederation, message_id: &str, kind: &str) -> Value {
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        let e = enlace_msglog::export(&f.log_db(true), message_id);
        if let Some(r) = e.ok().and_then(|e| {
            e.entries
                .into_iter()
                .find(|x| x.record.kind.as_str() == kind)
        }) {
            return serde_json::to_value(r.record).unwrap();
        }
        assert!(Instant::now() < until, "no {kind} record of {message_id}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn header<'a>(rec: &'a Value, name: &str) -> Option<&'a str> {
    rec["headers"]
        .as_array()?
        .iter()
        .find(|h| h[0] == name)
        .and_then(|h| h[1].as_str())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_unary_call_about_another_person_is_refused_and_filed_under_them() {
    let f = TestFederation::start_grpc(|_, _| {}).await;
    let mut client = f.grpc_client().await;
    // `enlace-subject` names 12345678-5; the message asks about 11111111-1. If this passed, the
    // access log would tell the wrong person, and the person read would never know.
    let err = client
        .get_person(f.grpc_request(get(OTHER_RUN), &[]))
        .await
        .unwrap_err();
    assert_mismatch(&err, "GetPerson");
    assert!(
        err.message().contains(demo::PERSON) && err.message().contains(OTHER),
        "{err:?}"
    );
    let message_id = err
        .metadata()
        .get("enlace-message-id")
        .and_then(|v| v.to_str().ok())
        .unwrap()
        .to_string();
    // The same for a server stream's single request, and for a bound field left empty.
    let err = client
        .list_documents(f.grpc_request(
            ListDocumentsRequest {
                run: OTHER_RUN.into(),
            },
            &[],
        ))
        .await
        .unwrap_err();
    assert_mismatch(&err, "ListDocuments");
    let err = client
        .get_person(f.grpc_request(get(""), &[]))
        .await
        .unwrap_err();
    assert_mismatch(&err, "an empty run");
    // A RUN that is no valid identifier is a schema violation, not a lookup.
    let err = client
        .get_person(f.grpc_request(get("11111111-2"), &[]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    // Named correctly, the same request is served.
    let person = client
        .get_person(f.grpc_request(get(OTHER_RUN), &[("enlace-subject", OTHER)]))
        .await
        .expect("served when named")
        .into_inner();
    assert_eq!(person.name, "Juan Carlos Rojas Muñoz");

    // The provider node refused it (the consumer node does not read the message's subject),
    // logged the person asked about, and filed the refusals under them.
    let refusal = provider_record(&f, &message_id, "refusal").await;
    assert_eq!(refusal["problem"], "subject-mismatch");
    assert_eq!(refusal["subject"], demo::PERSON);
    assert_eq!(header(&refusal, "enlace-asked-subject"), Some(OTHER));
    let refused = access_records(
        &f,
        OTHER,
        "personas.v1.Personas/GetPerson",
        "refused:subject-mismatch",
        1,
    )
    .await;
    assert_eq!(refused.len(), 1, "{refused:#?}");
    assert_eq!(refused[0].record.message_id, message_id);
    assert_eq!(refused[0].record.status, 403);
    assert!(refused[0].record.fields.is_empty());
    let listed = access_records(
        &f,
        OTHER,
        "personas.v1.Personas/ListDocuments",
        "refused:subject-mismatch",
        1,
    )
    .await;
    assert_eq!(listed.len(), 1, "{listed:#?}");
    // An empty field names nobody: that refusal stays with the person named.
    let empty = access_records(
        &f,
        demo::PERSON,
        "personas.v1.Personas/GetPerson",
        "refused:subject-mismatch",
        1,
    )
    .await;
    assert_eq!(empty.len(), 1, "{empty:#?}");
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_whose_later_message_names_another_person_is_ended_and_the_backend_reset() {
    let f = TestFederation::start_grpc(|_, _| {}).await;
    let backend = f.grpc.as_ref().unwrap().service.clone();
    let mut client = f.grpc_client().await;

    // Bidirectional: the first request, about the person named, is answered; the second asks
    // about someone else and ends the call.
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let resp = client
        .lookup_persons(f.grpc_request(ReceiverStream::new(rx), &[]))
        .await
        .expect("the call starts");
    let message_id = resp
        .metadata()
        .get("enlace-message-id")
        .and_then(|v| v.to_str().ok())
        .unwrap()
        .to_string();
    let mut answers = resp.into_inner();
    tx.send(get("12345678-5")).await.unwrap();
    let first = answers
        .message()
        .await
        .expect("an answer")
        .expect("a person");
    assert_eq!(first.name, "María José Pérez Soto");
    tx.send(get(OTHER_RUN)).await.unwrap();
    let err = tokio::time::timeout(Duration::from_secs(5), answers.message())
        .await
        .expect("the call ends")
        .expect_err("the second request is refused");
    assert_mismatch(&err, "LookupPersons");
    // The backend never got the second request: its request stream was reset, not ended.
    let until = Instant::now() + Duration::from_secs(5);
    while backend.broken_request_streams() < 1 {
        assert!(Instant::now() < until, "the backend saw a clean end");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The person named had data disclosed in this call, so the record stays theirs (with the
    // refusal); the provider node's log names the person asked about.
    let closing = provider_record(&f, &message_id, "response-out").await;
    assert_eq!(closing["problem"], "subject-mismatch");
    assert_eq!(header(&closing, "enlace-asked-subject"), Some(OTHER));
    let named = access_records(
        &f,
        demo::PERSON,
        "personas.v1.Personas/LookupPersons",
        "refused:subject-mismatch",
        1,
    )
    .await;
    assert_eq!(named.len(), 1, "{named:#?}");
    assert!(named[0].record.fields.iter().any(|f| f == "/name"));

    // Client streaming: nothing was answered yet, so the refusal goes to the person asked about.
    let err = client
        .verify_identities(f.grpc_request(
            tonic::codegen::tokio_stream::iter([claim("12345678-5"), claim(OTHER_RUN)]),
            &[],
        ))
        .await
        .unwrap_err();
    assert_mismatch(&err, "VerifyIdentities");
    let until = Instant::now() + Duration::from_secs(5);
    while backend.broken_request_streams() < 2 {
        assert!(Instant::now() < until, "the backend saw a clean end");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let asked = access_records(
        &f,
        OTHER,
        "personas.v1.Personas/VerifyIdentities",
        "refused:subject-mismatch",
        1,
    )
    .await;
    assert_eq!(asked.len(), 1, "{asked:#?}");
    assert!(asked[0].record.fields.is_empty());

    // Every message about the person named: served.
    let summary = client
        .verify_identities(f.grpc_request(
            tonic::codegen::tokio_stream::iter([claim("12345678-5"), claim("12345678-5")]),
            &[],
        ))
        .await
        .expect("served")
        .into_inner();
    assert_eq!((summary.checked, summary.matched), (2, 2));
    f.stop().await;
}

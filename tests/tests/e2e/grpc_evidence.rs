//! Evidence bundles of gRPC exchanges, exported from both nodes' message logs after real calls
//! of every kind: every signature they hold (request head, request trailers, response head,
//! final status) verifies offline, the bodies kept match what is signed, and a changed byte or
//! value fails. A provider node's refusal keeps the request as the peer node sent it.

use enlace_msglog::{self as msglog, RecordKind};
use enlace_node::bundle::Bundle;
use enlace_proto::personas::v1::{GetPersonRequest, ListDocumentsRequest, VerifyIdentityRequest};
use enlace_registry::demo;
use enlace_tests::TestFederation;
use tonic::codegen::tokio_stream;

fn get(run: &str) -> GetPersonRequest {
    GetPersonRequest { run: run.into() }
}

fn message_id<T>(resp: &tonic::Response<T>) -> String {
    resp.metadata()
        .get("enlace-message-id")
        .and_then(|v| v.to_str().ok())
        .expect("a message id")
        .to_string()
}

/// The bundle of `id` from the consumer (`false`) or provider (`true`) node's log, once it
/// holds `records` records (the request's and the one closing the exchange, or a refusal).
async fn bundle(f: &TestFederation, id: &str, provider: bool, records: usize) -> Bundle {
    let (db, node) = if provider {
        (f.log_db(true), demo::PROVIDER_NODE)
    } else {
        (f.log_db(false), demo::CONSUMER_NODE)
    };
    let config = f.consumer.node.config.current().unwrap();
    let until = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let b = enlace_node::bundle::create(&db, id, node, &config).unwrap();
        if b.evidence.entries.len() >= records || std::time::Instant::now() > until {
            return b;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[track_caller]
fn assert_lines(lines: &[String], expected: &[&str]) {
    for e in expected {
        assert!(lines.iter().any(|l| l.contains(e)), "`{e}` in {lines:#?}");
    }
}

/// `b` with record `i` changed by `change` and its canonical bytes and chain hash recomputed,
/// and no proof to a signed head: only the signatures can tell.
pub(crate) fn forged(b: &Bundle, i: usize, change: impl Fn(&mut msglog::Record)) -> Bundle {
    let mut b = b.clone();
    for e in &mut b.evidence.entries {
        e.proof = None;
        e.note = Some("no head".into());
    }
    let e = &mut b.evidence.entries[i];
    change(&mut e.record);
    e.canonical = String::from_utf8(e.record.canonical_bytes()).unwrap();
    let prev: [u8; 32] = hex::decode(&e.prev_hash_hex).unwrap().try_into().unwrap();
    e.hash_hex = hex::encode(msglog::chain_hash(
        e.seq,
        &prev,
        &msglog::record_digest(e.canonical.as_bytes()),
    ));
    b
}

pub(crate) fn set_field(r: &mut msglog::Record, name: &str, value: &str) {
    let i = r
        .headers
        .iter()
        .position(|(k, _)| k == name)
        .unwrap_or_else(|| panic!("no {name} in {:?}", r.headers));
    r.headers[i].1 = value.to_string();
}

const CONSUMER: &str = demo::CONSUMER_NODE;
const PROVIDER: &str = demo::PROVIDER_NODE;

#[tokio::test(flavor = "multi_thread")]
async fn bundles_of_every_kind_of_grpc_call_verify_offline_and_catch_a_change() {
    let f = TestFederation::start_grpc(|_, _| {}).await;
    let mut client = f.grpc_client().await;
    let unary = client
        .get_person(f.grpc_request(get("12345678-5"), &[("x-request-ref", "expediente-77")]))
        .await
        .expect("unary");
    let unary = message_id(&unary);
    let mut listed = client
        .list_documents(f.grpc_request(
            ListDocumentsRequest {
                run: "12345678-5".into(),
            },
            &[],
        ))
        .await
        .expect("server stream");
    let server = message_id(&listed);
    while listed.get_mut().message().await.unwrap().is_some() {}
    let claim = VerifyIdentityRequest {
        run: "12345678-5".into(),
        name: "María José Pérez Soto".into(),
        birth_date: "1980-04-15".into(),
    };
    let verified = client
        .verify_identities(f.grpc_request(tokio_stream::iter([claim.clone(), claim]), &[]))
        .await
        .expect("client stream");
    let client_stream = message_id(&verified);
    let mut looked = client
        .lookup_persons(f.grpc_request(
            tokio_stream::iter([get("12345678-5"), get("12345678-5")]),
            &[],
        ))
        .await
        .expect("bidirectional");
    let bidi = message_id(&looked);
    while looked.get_mut().message().await.unwrap().is_some() {}

    // The consumer node's bundles: its own request signatures, the provider node's response
    // signatures, and the bodies it kept (log_bodies is on for `renta`). The head of a response
    // of one message (unary, client streaming) is bound by the final status's head digest; the
    // head of a server stream is signed on its own.
    const SIGNED_HEAD_IN: &str = "response-in): response head (enlace-grpc-headers): RFC 9421 signature of CL-DEV/GOV/61002000-3/node/a verifies";
    const SIGNED_HEAD_OUT: &str = "response-out): response head (enlace-grpc-headers): RFC 9421 signature of CL-DEV/GOV/61002000-3/node/a";
    const BOUND_HEAD_IN: &str = "response-in): the response head matches the enlace-grpc-head-digest of the signed final status";
    const BOUND_HEAD_OUT: &str = "response-out): the response head matches the enlace-grpc-head-digest of the signed final status";
    let single = [
        "request-out): request head (enlace-request): RFC 9421 signature of CL-DEV/GOV/60803000-K/node/a verifies",
        "request-out): the request body kept matches its signed content-digest",
        "response-in): final status (enlace-grpc-trailers): RFC 9421 signature of CL-DEV/GOV/61002000-3/node/a verifies",
    ];
    let streamed = [
        "request-out): request head (enlace-request-stream): RFC 9421 signature of CL-DEV/GOV/60803000-K/node/a verifies",
        "response-in): request trailers (enlace-grpc-request-trailers): RFC 9421 signature of CL-DEV/GOV/60803000-K/node/a verifies",
        "response-in): final status (enlace-grpc-trailers): RFC 9421 signature of CL-DEV/GOV/61002000-3/node/a verifies",
    ];
    for (id, expected, messages, head) in [
        (&unary, &single, 1, BOUND_HEAD_IN),
        (&server, &single, 2, SIGNED_HEAD_IN),
        (&client_stream, &streamed, 1, BOUND_HEAD_IN),
        (&bidi, &streamed, 2, SIGNED_HEAD_IN),
    ] {
        let b = bundle(&f, id, false, 2).await;
        let lines = b.verify().unwrap_or_else(|e| panic!("{id}: {e}"));
        assert_lines(&lines, expected);
        assert_lines(
            &lines,
            &[
                head,
                &format!("the {messages} response messages kept match the signed chain"),
            ],
        );
        let other = if head == BOUND_HEAD_IN {
            SIGNED_HEAD_IN
        } else {
            BOUND_HEAD_IN
        };
        assert!(!lines.iter().any(|l| l.contains(other)), "{id}: {lines:?}");
    }
    // The provider node's bundles: the same signatures, seen from the other side.
    for (id, streamed_request, response_head) in [
        (&unary, false, BOUND_HEAD_OUT),
        (&server, false, SIGNED_HEAD_OUT),
        (&client_stream, true, BOUND_HEAD_OUT),
        (&bidi, true, SIGNED_HEAD_OUT),
    ] {
        let b = bundle(&f, id, true, 2).await;
        let lines = b.verify().unwrap_or_else(|e| panic!("{id}: {e}"));
        let head = if streamed_request {
            "request-in): request head (enlace-request-stream): RFC 9421 signature of CL-DEV/GOV/60803000-K/node/a verifies"
        } else {
            "request-in): request head (enlace-request): RFC 9421 signature of CL-DEV/GOV/60803000-K/node/a verifies"
        };
        assert_lines(
            &lines,
            &[
                head,
                response_head,
                "response-out): final status (enlace-grpc-trailers): RFC 9421 signature of CL-DEV/GOV/61002000-3/node/a",
            ],
        );
        if streamed_request {
            assert_lines(
                &lines,
                &[
                    "response-out): request trailers (enlace-grpc-request-trailers): RFC 9421 signature of CL-DEV/GOV/60803000-K/node/a",
                ],
            );
        }
    }

    // The custom metadata the request signature covers is in the records, so it verifies; a
    // changed value, status, chain or head field does not, even with the chain hashes redone.
    let b = bundle(&f, &unary, false, 2).await;
    assert_eq!(b.evidence.entries[0].record.kind, RecordKind::RequestOut);
    let kept = &b.evidence.entries[0].record.headers;
    assert!(
        kept.contains(&("x-request-ref".into(), "expediente-77".into())),
        "{kept:?}"
    );
    forged(&b, 0, |_| {})
        .verify()
        .expect("a bundle without head proofs");
    let changes: [(usize, &str, &str); 5] = [
        (0, "x-request-ref", "expediente-78"),
        (0, "enlace-subject", "CL-RUN:11111111-1"),
        (1, "grpc-status", "5"),
        (
            1,
            "enlace-stream-digest",
            "0:0000000000000000000000000000000000000000000000000000000000000000",
        ),
        (
            1,
            "enlace-grpc-head-digest",
            "sha-256=:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=:",
        ),
    ];
    for (i, name, value) in changes {
        let err = forged(&b, i, |r| set_field(r, name, value))
            .verify()
            .expect_err(name);
        assert!(err.contains("does not verify"), "{name}: {err}");
    }
    // The unary head is bound by the final status: a changed field, or metadata added to it,
    // no longer matches the digest signed there.
    let err = forged(&b, 1, |r| {
        set_field(r, "enlace-head-content-type", "application/grpc+proto")
    })
    .verify()
    .expect_err("a changed head");
    assert!(err.contains("not the one the final status binds"), "{err}");
    let err = forged(&b, 1, |r| {
        r.headers
            .push(("enlace-head-x-added".into(), "on the way".into()))
    })
    .verify()
    .expect_err("metadata added to the head");
    assert!(err.contains("not the one the final status binds"), "{err}");
    let err = forged(&b, 1, |r| {
        r.headers.retain(|(k, _)| !k.starts_with("enlace-head-"))
    })
    .verify()
    .expect_err("the head taken out of the record");
    assert!(err.contains("does not hold"), "{err}");
    // A server stream's head is signed on its own.
    let b = bundle(&f, &server, false, 2).await;
    let err = forged(&b, 1, |r| {
        set_field(r, "enlace-head-content-type", "application/grpc+proto")
    })
    .verify()
    .expect_err("a changed server-stream head");
    assert!(err.contains("does not verify"), "{err}");
    // The body kept is what the signatures cover.
    let err = forged(&b, 1, |r| {
        let body = r.body.as_mut().unwrap();
        let last = body.len() - 1;
        body[last] ^= 1;
    })
    .verify()
    .expect_err("a changed response message");
    assert!(err.contains("not to the signed chain"), "{err}");
    let err = forged(&b, 0, |r| r.body.as_mut().unwrap()[6] ^= 1)
        .verify()
        .expect_err("a changed request message");
    assert!(err.contains("request body"), "{err}");
    // A changed request-trailer signature of a streamed request.
    let b = bundle(&f, &bidi, true, 2).await;
    let err = forged(&b, 1, |r| {
        set_field(
            r,
            "enlace-request-trailers-enlace-stream-digest",
            "0:0000000000000000000000000000000000000000000000000000000000000000",
        )
    })
    .verify()
    .expect_err("changed request trailers");
    assert!(err.contains("request trailers"), "{err}");
    // And one changed byte breaks the chain, whatever it is.
    let mut flipped = b.clone();
    let canonical = &mut flipped.evidence.entries[0].canonical;
    *canonical = canonical.replacen("POST", "PUST", 1);
    assert!(flipped.verify().is_err());
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_grpc_refusal_keeps_the_request_the_peer_node_sent() {
    let f = TestFederation::start_grpc(|_, _| {}).await;
    let mut client = f.grpc_client().await;
    // Refused by the provider node: the message asks about someone else than the subject.
    let err = client
        .get_person(f.grpc_request(get("11111111-1"), &[("x-request-ref", "expediente-77")]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    let id = err
        .metadata()
        .get("enlace-message-id")
        .and_then(|v| v.to_str().ok())
        .unwrap()
        .to_string();
    let b = bundle(&f, &id, true, 1).await;
    let refusal = &b
        .evidence
        .entries
        .iter()
        .find(|e| e.record.kind == RecordKind::Refusal)
        .expect("a refusal record")
        .record;
    for kept in [
        "request-signature-input",
        "request-signature",
        "request-content-digest",
        "request-enlace-client",
        "request-enlace-subject",
        "request-enlace-message-id",
        "request-content-type",
        "request-x-request-ref",
    ] {
        assert!(
            refusal.headers.iter().any(|(k, _)| k == kept),
            "{kept} in {:?}",
            refusal.headers
        );
    }
    let lines = b.verify().unwrap();
    assert_lines(
        &lines,
        &[
            &format!(
                "refusal): final status (enlace-grpc-trailers): RFC 9421 signature of {PROVIDER} verifies"
            ),
            &format!(
                "refusal): the refused request as the peer node sent it: RFC 9421 signature of {CONSUMER} verifies"
            ),
        ],
    );
    // What the peer sent is shown as it came: changed, its signature no longer holds, which
    // the bundle tells without failing (a bad signature may be why a request was refused).
    let i = b
        .evidence
        .entries
        .iter()
        .position(|e| e.record.kind == RecordKind::Refusal)
        .unwrap();
    let lines = forged(&b, i, |r| {
        set_field(r, "request-x-request-ref", "expediente-78")
    })
    .verify()
    .unwrap();
    assert_lines(
        &lines,
        &[
            "refusal): the refused request as the peer node sent it: the signature does not verify (a bad signature may be why",
        ],
    );
    // The refusal's own signed status, changed, fails.
    let err = forged(&b, i, |r| set_field(r, "grpc-status", "0"))
        .verify()
        .expect_err("a changed refusal status");
    assert!(err.contains("final status"), "{err}");
    f.stop().await;
}

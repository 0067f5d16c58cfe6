//! The message logs of both nodes after real exchanges: every request, response and refusal is
//! there, the chains verify with heads anchored in the registry, an exported evidence bundle
//! verifies offline, and one altered byte in the SQLite file is found.

use enlace_msglog::{self as msglog, RecordKind};
use enlace_registry::demo;
use enlace_tests::TestFederation;

async fn call(f: &TestFederation, path: &str, contract: &str) -> (u16, String) {
    let resp = f
        .registry
        .http
        .get(format!("{}/r1/{}/v1{path}", f.consumer_url, demo::PERSONAS))
        .bearer_auth(&f.client_token)
        .header("enlace-client", demo::CONSUMER_SUBSYSTEM)
        .header("enlace-contract", contract)
        .header("enlace-subject", demo::PERSON)
        .send()
        .await
        .unwrap();
    let id = resp.headers()["enlace-message-id"]
        .to_str()
        .unwrap()
        .to_string();
    (resp.status().as_u16(), id)
}

#[tokio::test]
async fn logs_hold_every_exchange_verify_and_catch_one_altered_byte() {
    let f = TestFederation::start().await;
    let (status, ok_id) = call(&f, "/persons/12345678-5", &f.demo.contract.clone()).await;
    assert_eq!(status, 200);
    let (status, refused_id) = call(
        &f,
        "/persons/12345678-5/documents",
        &f.demo.contract.clone(),
    )
    .await;
    assert_eq!(status, 403, "listDocuments is not in the contract");
    let (status, local_refusal) =
        call(&f, "/persons/12345678-5", "ctr_01JD0000000000000000000000").await;
    assert_eq!(status, 403);

    let consumer_db = f
        .consumer
        .node
        .settings
        .raw
        .data_dir
        .join("messages.sqlite");
    let provider_db = f
        .provider
        .node
        .settings
        .raw
        .data_dir
        .join("messages.sqlite");
    let config = f.consumer.node.config.current().unwrap();
    let bundle =
        enlace_node::bundle::create(&consumer_db, &ok_id, demo::CONSUMER_NODE, &config).unwrap();
    let kinds: Vec<RecordKind> = bundle
        .evidence
        .entries
        .iter()
        .map(|e| e.record.kind)
        .collect();
    assert_eq!(kinds, [RecordKind::RequestOut, RecordKind::ResponseIn]);
    assert_eq!(
        bundle.evidence.entries[0].record.subject.as_deref(),
        Some(demo::PERSON)
    );
    // Refusals are logged as carefully as successes, on the side that refused.
    let refused = msglog::export(&provider_db, &refused_id).unwrap();
    assert!(
        refused
            .entries
            .iter()
            .any(|e| e.record.kind == RecordKind::Refusal
                && e.record.problem.as_deref() == Some("contract-missing"))
    );
    let local = msglog::export(&consumer_db, &local_refusal).unwrap();
    assert_eq!(local.entries[0].record.kind, RecordKind::Refusal);
    // So are refusals outside an exchange: a metaservice call with a bad token, a path that
    // names nothing, and the provider's refusal keeps what the peer sent.
    for (path, token, slug) in [
        ("/meta/members", "not-a-token", "unauthenticated"),
        ("/nothing/here", "", "not-found"),
    ] {
        let mut req = f.registry.http.get(format!("{}{path}", f.consumer_url));
        if !token.is_empty() {
            req = req.bearer_auth(token);
        }
        let resp = req.send().await.unwrap();
        let id = resp.headers()["enlace-message-id"]
            .to_str()
            .unwrap()
            .to_string();
        let e = msglog::export(&consumer_db, &id).unwrap();
        assert_eq!(e.entries[0].record.kind, RecordKind::Refusal, "{path}");
        assert_eq!(e.entries[0].record.problem.as_deref(), Some(slug), "{path}");
        assert_eq!(e.entries[0].record.target.as_deref(), Some(path));
    }
    let refusal = refused
        .entries
        .iter()
        .find(|e| e.record.kind == RecordKind::Refusal)
        .unwrap();
    for kept in [
        "request-signature-input",
        "request-signature",
        "request-enlace-client",
    ] {
        assert!(
            refusal.record.headers.iter().any(|(k, _)| k == kept),
            "{kept} in {:?}",
            refusal.record.headers
        );
    }
    // The provider's bundle of the refusal says whether the request it kept verifies, and
    // tells, without failing, when it does not (a bad signature may be why it was refused).
    let refused_bundle =
        enlace_node::bundle::create(&provider_db, &refused_id, demo::PROVIDER_NODE, &config)
            .unwrap();
    let lines = refused_bundle.verify().unwrap();
    let told = format!(
        "refusal): the refused request as the peer node sent it: RFC 9421 signature of {} verifies",
        demo::CONSUMER_NODE
    );
    assert!(lines.iter().any(|l| l.contains(&told)), "{lines:#?}");
    let i = refused_bundle
        .evidence
        .entries
        .iter()
        .position(|e| e.record.kind == RecordKind::Refusal)
        .unwrap();
    let changed = crate::grpc_evidence::forged(&refused_bundle, i, |r| {
        crate::grpc_evidence::set_field(r, "request-enlace-client", "CL-DEV/GOV/60803000-K/other")
    });
    let lines = changed.verify().expect("told, not failed");
    assert!(
        lines.iter().any(|l| l.contains(
            "the refused request as the peer node sent it: the signature of CL-DEV/GOV/60803000-K/node/a does not verify"
        )),
        "{lines:#?}"
    );
    let provider_side = msglog::export(&provider_db, &ok_id).unwrap();
    let disclosed = provider_side
        .entries
        .iter()
        .find(|e| e.record.kind == RecordKind::ResponseOut)
        .unwrap();
    assert!(
        disclosed.record.headers.contains(&(
            "enlace-disclosed".to_string(),
            "/address/commune,/address/region,/address/street,/name".to_string()
        )),
        "{:?}",
        disclosed.record.headers
    );

    // Stopping anchors each node's final head in the registry.
    let access_log = f.registry.running.access_log.clone();
    let TestFederation {
        registry: reg,
        provider,
        consumer,
        ..
    } = f;
    consumer.stop().await;
    provider.stop().await;
    let heads = access_log
        .log_heads(&demo::CONSUMER_NODE.parse().unwrap())
        .unwrap();
    assert!(!heads.is_empty(), "the consumer node anchored its head");
    let report = msglog::verify_file(&consumer_db, &heads, None).unwrap();
    assert!(report.is_ok(), "{report:?}");
    assert!(
        report.records >= 5 && report.heads_checked >= 1,
        "{report:?}"
    );
    let report = msglog::verify_file(&provider_db, &[], None).unwrap();
    assert!(report.is_ok(), "{report:?}");

    // The evidence bundle verifies offline, signatures included; a changed byte does not.
    let bundle =
        enlace_node::bundle::create(&consumer_db, &ok_id, demo::CONSUMER_NODE, &config).unwrap();
    let lines = bundle.verify().unwrap();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("RFC 9421 signature of CL-DEV/GOV/61002000-3/node/a verifies")),
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("RFC 9421 signature of CL-DEV/GOV/60803000-K/node/a verifies")),
        "{lines:?}"
    );
    let mut forged = bundle.clone();
    forged.evidence.entries[1].record.status = 404;
    forged.evidence.entries[1].canonical =
        String::from_utf8(forged.evidence.entries[1].record.canonical_bytes()).unwrap();
    assert!(
        forged.verify().is_err(),
        "a changed status breaks the chain"
    );

    // Alter one byte of one stored record in the SQLite file.
    let conn = rusqlite::Connection::open(&consumer_db).unwrap();
    let (seq, mut bytes): (i64, Vec<u8>) = conn
        .query_row(
            "SELECT seq, record FROM records ORDER BY seq LIMIT 1 OFFSET 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    let i = bytes.iter().position(|b| *b == b'G').unwrap_or(10);
    bytes[i] ^= 0x01;
    conn.execute(
        "UPDATE records SET record = ?1 WHERE seq = ?2",
        rusqlite::params![bytes, seq],
    )
    .unwrap();
    drop(conn);
    let report = msglog::verify_file(&consumer_db, &heads, None).unwrap();
    assert_eq!(report.first_broken, Some(seq as u64), "{report:?}");
    reg.running.stop().await;
}

/// The example in docs/PROTOCOL.md is a real capture, and it stays verifiable: the bundle
/// checks offline, the page shows its exact signature headers, and one changed byte fails.
#[test]
fn the_captured_example_in_the_protocol_doc_verifies() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../docs/examples/captured-exchange.json");
    let bundle = enlace_node::bundle::read(&path).unwrap();
    let lines = bundle.verify().unwrap();
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.contains("RFC 9421 signature"))
            .count(),
        2,
        "{lines:?}"
    );
    let doc = include_str!("../../../docs/PROTOCOL.md");
    for e in &bundle.evidence.entries {
        let input = e.record.signature_input.as_deref().unwrap();
        assert!(doc.contains(input), "PROTOCOL.md shows {input}");
    }
    let mut tampered = bundle.clone();
    let sig = tampered.evidence.entries[0]
        .record
        .signature
        .take()
        .unwrap();
    tampered.evidence.entries[0].record.signature = Some(sig.replacen('A', "B", 1));
    tampered.evidence.entries[0].canonical =
        String::from_utf8(tampered.evidence.entries[0].record.canonical_bytes()).unwrap();
    assert!(tampered.verify().is_err());
}

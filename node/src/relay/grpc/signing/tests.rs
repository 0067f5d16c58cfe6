use super::*;
use crate::relay::grpc::put;

/// A fresh signing key `$key`, and `$v`: a verifier trusting only that key, its clock at
/// 1,000 s with 30 s of skew.
macro_rules! key_and_verifier {
    ($key:ident, $v:ident) => {
        let $key = SigningKey::generate().unwrap();
        let public = $key.public_key_bytes();
        let key_for = |_: &str| Ok(vec![public.clone()]);
        let $v = Verifier {
            now: 1_000,
            max_skew_secs: 30,
            key_for: &key_for,
        };
    };
}

const ID: &str = "0193a0c0-0000-7000-8000-000000000001";
const KEYID: &str = "CL-DEV/GOV/61002000-3/node/a";

fn request(streamed: bool) -> Bound {
    let mut headers = HeaderMap::new();
    put(&mut headers, context::MESSAGE_ID, ID);
    put(&mut headers, context::CLIENT, "CL-DEV/GOV/60803000-K/renta");
    put(
        &mut headers,
        context::SERVICE,
        "CL-DEV/GOV/61002000-3/registro-civil/personas-grpc/v1.0",
    );
    put(
        &mut headers,
        context::CONTRACT,
        "ctr_01J0000000000000000000000",
    );
    put(&mut headers, "x-request-ref", "expediente-77");
    if !streamed {
        put(
            &mut headers,
            signature::CONTENT_DIGEST,
            &signature::content_digest(b"x"),
        );
    }
    Bound {
        method: http::Method::POST,
        uri: "https://127.0.0.1:1/g1/CL-DEV/GOV/61002000-3/registro-civil/personas-grpc/v1/personas.v1.Personas/ListDocuments"
            .parse()
            .unwrap(),
        headers,
    }
}

fn chain(messages: &[&[u8]]) -> StreamDigest {
    let mut c = StreamDigest::new();
    for m in messages {
        c.update(m);
    }
    c
}

fn signer(key: &SigningKey) -> Signer {
    Signer {
        key: std::sync::Arc::new(SigningKey::from_pem(key.to_pem()).unwrap()),
        keyid: KEYID.into(),
        created: 1_000,
    }
}

fn final_status(key: &SigningKey, sent: &StreamDigest, req: &Bound) -> HeaderMap {
    let mut t = HeaderMap::new();
    put(&mut t, GRPC_STATUS, "0");
    put(&mut t, context::MESSAGE_ID, ID);
    put(&mut t, STREAM_DIGEST, &sent.value());
    put(&mut t, "x-backend-note", "ok");
    if req.digest().is_none() {
        put(
            &mut t,
            REQUEST_STREAM_DIGEST,
            &chain(&[b"q1", b"q2"]).value(),
        );
    }
    sign_trailers(&signer(key), &mut t, req).unwrap();
    t
}

#[test]
fn the_trailer_signature_covers_the_chain_the_status_and_the_metadata() {
    key_and_verifier!(key, v);
    let req = request(false);
    let sent = chain(&[b"one", b"two"]);
    let t = final_status(&key, &sent, &req);
    fn chains(received: &StreamDigest) -> Chains<'_> {
        Chains {
            received,
            sent_request: None,
        }
    }
    verify_trailers(&t, &req, &chains(&sent), &v).unwrap();

    // A message lost, reordered or altered on the way breaks the chain.
    for received in [
        chain(&[b"one"]),
        chain(&[b"two", b"one"]),
        chain(&[b"one", b"tw0"]),
    ] {
        let err = verify_trailers(&t, &req, &chains(&received), &v).unwrap_err();
        assert_eq!(err.kind, ProblemKind::SignatureInvalid, "{err:?}");
    }
    // A changed status, a changed or added metadata field, or a claimed chain changed to
    // match, breaks the signature.
    for (name, value) in [
        (GRPC_STATUS, "5"),
        ("x-backend-note", "changed"),
        ("x-added", "in transit"),
        (PROBLEM_TYPE, "urn:enlace:problem:replay"),
    ] {
        let mut changed = t.clone();
        put(&mut changed, name, value);
        assert!(
            verify_trailers(&changed, &req, &chains(&sent), &v).is_err(),
            "{name}"
        );
    }
    let mut forged = t.clone();
    let other = chain(&[b"one"]);
    put(&mut forged, STREAM_DIGEST, &other.value());
    assert!(verify_trailers(&forged, &req, &chains(&other), &v).is_err());
    // Bound to the request: another request's trailers do not verify.
    let mut another = request(false);
    put(
        &mut another.headers,
        context::MESSAGE_ID,
        "0193a0c0-0000-7000-8000-000000000002",
    );
    assert!(verify_trailers(&t, &another, &chains(&sent), &v).is_err());
}

#[test]
fn the_final_status_of_a_streamed_request_binds_its_chain() {
    key_and_verifier!(key, v);
    let req = request(true);
    let received = chain(&[b"r"]);
    let t = final_status(&key, &received, &req);
    let check = |sent: &StreamDigest| {
        verify_trailers(
            &t,
            &req,
            &Chains {
                received: &received,
                sent_request: Some(sent),
            },
            &v,
        )
    };
    // The provider node received both messages sent.
    check(&chain(&[b"q1", b"q2"])).unwrap();
    // It may have stopped reading before a third one (its backend ended the call first).
    check(&chain(&[b"q1", b"q2", b"q3"])).unwrap();
    // It cannot have received other messages, nor more than were sent.
    assert!(check(&chain(&[b"q1", b"qX"])).is_err());
    assert!(check(&chain(&[b"q1"])).is_err());
    // Without the request chain, the final status of a streamed request is refused.
    let mut stripped = t.clone();
    stripped.remove(REQUEST_STREAM_DIGEST);
    let err = verify_trailers(
        &stripped,
        &req,
        &Chains {
            received: &received,
            sent_request: Some(&chain(&[b"q1", b"q2"])),
        },
        &v,
    )
    .unwrap_err();
    assert_eq!(err.kind, ProblemKind::SignatureInvalid);
}

#[test]
fn request_trailers_sign_the_request_chain() {
    key_and_verifier!(key, v);
    let req = request(true);
    let sent = chain(&[b"a", b"b", b"c"]);
    let t = request_trailers(&signer(&key), &req, &sent).unwrap();
    verify_request_trailers(&t, &req, &sent, &v).unwrap();
    for received in [
        chain(&[b"a", b"b"]),
        chain(&[b"a", b"c", b"b"]),
        chain(&[b"a", b"b", b"C"]),
    ] {
        let err = verify_request_trailers(&t, &req, &received, &v).unwrap_err();
        assert_eq!(err.kind, ProblemKind::SignatureInvalid, "{err:?}");
    }
    // Another message's trailers, or a stale signature, do not verify.
    let mut another = request(true);
    put(
        &mut another.headers,
        context::MESSAGE_ID,
        "0193a0c0-0000-7000-8000-000000000002",
    );
    assert!(verify_request_trailers(&t, &another, &sent, &v).is_err());
    let late = Verifier { now: 2_000, ..v };
    let err = verify_request_trailers(&t, &req, &sent, &late).unwrap_err();
    assert_eq!(err.kind, ProblemKind::Stale);
}

#[test]
fn request_heads_are_signed_with_or_without_a_body_digest() {
    key_and_verifier!(key, v);
    let mut single = request(false);
    sign_request_head(&signer(&key), &mut single, false).unwrap();
    verify_request_head(&single, Some(b"x"), &v).unwrap();
    assert!(verify_request_head(&single, Some(b"y"), &v).is_err());
    // A single-message request cannot be taken for a streamed one, nor the reverse.
    assert!(verify_request_head(&single, None, &v).is_err());
    let mut streamed = request(true);
    sign_request_head(&signer(&key), &mut streamed, true).unwrap();
    verify_request_head(&streamed, None, &v).unwrap();
    assert!(verify_request_head(&streamed, Some(b"x"), &v).is_err());
    // Custom metadata is covered: changed or added on the way, it is refused.
    for (name, value) in [("x-request-ref", "other"), ("x-added", "1")] {
        let mut changed = streamed.clone();
        put(&mut changed.headers, name, value);
        assert!(verify_request_head(&changed, None, &v).is_err(), "{name}");
    }
}

/// A response head with the backend's custom metadata, as the provider node sends it.
fn backend_head() -> HeaderMap {
    let mut h = HeaderMap::new();
    put(&mut h, "content-type", "application/grpc");
    put(&mut h, context::MESSAGE_ID, ID);
    put(&mut h, "x-backend-trace", "t-1");
    h
}

#[test]
fn response_heads_cover_their_metadata_and_message_id() {
    key_and_verifier!(key, v);
    let req = request(false);
    let mut h = backend_head();
    sign_response_head(&signer(&key), &mut h, &req).unwrap();
    verify_response_head(&h, &req, &v).unwrap();
    // Transport fields added on the way are not metadata and do not matter.
    let mut dated = h.clone();
    put(&mut dated, "date", "Tue, 01 Dec 2026 00:00:00 GMT");
    verify_response_head(&dated, &req, &v).unwrap();
    for (name, value) in [("x-backend-trace", "t-2"), ("x-added", "1")] {
        let mut changed = h.clone();
        put(&mut changed, name, value);
        assert!(verify_response_head(&changed, &req, &v).is_err(), "{name}");
    }
    let mut another = request(false);
    put(
        &mut another.headers,
        context::MESSAGE_ID,
        "0193a0c0-0000-7000-8000-000000000002",
    );
    assert!(verify_response_head(&h, &another, &v).is_err());
}

#[test]
fn the_head_of_one_message_is_bound_by_the_signed_final_status() {
    key_and_verifier!(key, v);
    let req = request(false);
    let head = backend_head();
    let digest = head_digest(&head).unwrap();

    let mut t = HeaderMap::new();
    put(&mut t, GRPC_STATUS, "0");
    put(&mut t, context::MESSAGE_ID, ID);
    put(&mut t, STREAM_DIGEST, &StreamDigest::new().value());
    put(&mut t, HEAD_DIGEST, &digest);
    sign_trailers(&signer(&key), &mut t, &req).unwrap();
    let received = StreamDigest::new();
    let chains = Chains {
        received: &received,
        sent_request: None,
    };
    verify_trailers(&t, &req, &chains, &v).unwrap();
    check_head_digest(Some(&head), &t).unwrap();
    // Transport fields are not metadata and do not matter.
    let mut dated = head.clone();
    put(&mut dated, "date", "Tue, 01 Dec 2026 00:00:00 GMT");
    check_head_digest(Some(&dated), &t).unwrap();
    // Metadata changed, added or removed, another content type or message id: refused.
    let mut changes = Vec::new();
    for (name, value) in [
        ("x-backend-trace", "t-2"),
        ("x-added", "1"),
        ("content-type", "application/grpc+proto"),
        (context::MESSAGE_ID, "0193a0c0-0000-7000-8000-000000000002"),
    ] {
        let mut changed = head.clone();
        put(&mut changed, name, value);
        changes.push((name, changed));
    }
    let mut removed = head.clone();
    removed.remove("x-backend-trace");
    changes.push(("removed", removed));
    for (what, changed) in changes {
        let err = check_head_digest(Some(&changed), &t).unwrap_err();
        assert_eq!(err.kind, ProblemKind::SignatureInvalid, "{what}");
        assert!(err.detail.contains("not the one"), "{what}: {}", err.detail);
    }
    // The digest is under the signature: changing it breaks the final status.
    let mut swapped = t.clone();
    put(
        &mut swapped,
        HEAD_DIGEST,
        &signature::content_digest(b"another head"),
    );
    assert!(verify_trailers(&swapped, &req, &chains, &v).is_err());
    // A final status without a digest binds no head.
    let mut bare = HeaderMap::new();
    put(&mut bare, GRPC_STATUS, "0");
    let err = check_head_digest(Some(&head), &bare).unwrap_err();
    assert!(err.detail.contains("has no"), "{}", err.detail);
    check_head_digest(None, &bare).unwrap();
    // A digest binding a head that never came (a trailers-only answer made of the status).
    let err = check_head_digest(None, &t).unwrap_err();
    assert!(err.detail.contains("never came"), "{}", err.detail);
}

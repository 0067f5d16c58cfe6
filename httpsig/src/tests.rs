//! Known-answer tests from RFC 9421 and RFC 9530, round trips, and every refusal.

use super::*;
use crate::base::build_base;
use crate::sign::sign_labelled;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use enlace_certs::{SigningKey, verify_ed25519};
use http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use proptest::prelude::*;

// RFC 9421 Appendix B.1.4, `test-key-ed25519`: published test data.
const RFC_ED25519_PRIVATE_PEM: &str = "-----BEGIN PRIVATE KEY-----\n\
MC4CAQAwBQYDK2VwBCIEIJ+DYvh6SEqVTm50DFtMDoQikTmiCqirVv9mWG9qfSnF\n\
-----END PRIVATE KEY-----\n";
/// The raw public key (the JWK `x` of B.1.4), base64.
const RFC_ED25519_PUBLIC_B64: &str = "JrQLj5P/89iXES9+vFgrIy29clF9CC/oPPsw3c5D0bs=";

// RFC 9421 Appendix B.2.6, "Signing a Request Using ed25519".
const B26_BASE: &str = "\"date\": Tue, 20 Apr 2021 02:07:55 GMT\n\
\"@method\": POST\n\
\"@path\": /foo\n\
\"@authority\": example.com\n\
\"content-type\": application/json\n\
\"content-length\": 18\n\
\"@signature-params\": (\"date\" \"@method\" \"@path\" \"@authority\" \"content-type\" \"content-length\");created=1618884473;keyid=\"test-key-ed25519\"";
const B26_INPUT: &str = "sig-b26=(\"date\" \"@method\" \"@path\" \"@authority\" \"content-type\" \"content-length\");created=1618884473;keyid=\"test-key-ed25519\"";
const B26_SIGNATURE: &str = "sig-b26=:wqcAqbmYJ2ji2glfAMaRy4gruYYnx2nEFN2HN6jrnDnQCK1u02Gb04v9EDgwUPiu4A0w6vuQv5lIp5WPpBKRCw==:";

// RFC 9530 §2 and Appendix B: the digests of `{"hello": "world"}`.
const HELLO: &[u8] = b"{\"hello\": \"world\"}";
const HELLO_SHA256: &str = "sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:";
const HELLO_SHA512: &str = "sha-512=:WZDPaVn/7XgHaAy8pmojAkGWoRx2UFChF41A2svX+TaPm+AbwAgBWnrIiYllu7BNNyealdVLvRwEmTHWXvJwew==:";

const CONSUMER: &str = "CL-DEV/GOV/60803000-K/node/a";
const PROVIDER: &str = "CL-DEV/GOV/61002000-3/node/a";
const NOW: i64 = 1_760_000_000;
const SKEW: i64 = 300;

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    map
}

fn b26_request() -> (Method, Uri, HeaderMap) {
    (
        Method::POST,
        "http://example.com/foo?param=Value&Pet=dog"
            .parse()
            .unwrap(),
        headers(&[
            ("host", "example.com"),
            ("date", "Tue, 20 Apr 2021 02:07:55 GMT"),
            ("content-type", "application/json"),
            ("content-length", "18"),
        ]),
    )
}

fn b26_components() -> Vec<Component> {
    [
        "date",
        "@method",
        "@path",
        "@authority",
        "content-type",
        "content-length",
    ]
    .into_iter()
    .map(Component::new)
    .collect()
}

fn b26_params() -> SigParams {
    SigParams {
        created: 1_618_884_473,
        keyid: "test-key-ed25519".into(),
        nonce: None,
        alg: false,
        tag: None,
    }
}

#[test]
fn rfc9421_b26_signature_base_and_signature_are_byte_exact() {
    let key = SigningKey::from_pem(RFC_ED25519_PRIVATE_PEM).unwrap();
    let public = STANDARD.decode(RFC_ED25519_PUBLIC_B64).unwrap();
    assert_eq!(key.public_key_bytes(), public);

    let (method, uri, headers) = b26_request();
    let msg = MessageContext::request(Message::request(&method, &uri, &headers));
    let base = signature_base(&b26_components(), &b26_params(), &msg).unwrap();
    assert_eq!(base, B26_BASE);

    let (input, signature) =
        sign_labelled("sig-b26", &key, &b26_components(), &b26_params(), &msg).unwrap();
    assert_eq!(input, B26_INPUT);
    assert_eq!(signature, B26_SIGNATURE);
}

#[test]
fn rfc9421_b26_rebuilds_the_base_from_the_received_headers() {
    // Our verifier rebuilds the same base from the RFC's headers; the raw signature checks.
    let (method, uri, headers) = b26_request();
    let msg = MessageContext::request(Message::request(&method, &uri, &headers));
    let public = STANDARD.decode(RFC_ED25519_PUBLIC_B64).unwrap();
    let expected = Expected {
        required: &[],
        tag: "",
        now: 1_618_884_473,
        max_skew_secs: 0,
    };
    // The RFC's example carries no tag, which Enlace requires: refused for that reason only.
    let err = verify(B26_INPUT, B26_SIGNATURE, &msg, &expected, |_| {
        Ok(public.clone())
    })
    .unwrap_err();
    assert_eq!(err.kind, ProblemKind::SignatureInvalid);
    assert!(err.detail.contains("no tag"), "{err}");

    let dict = sf::parse_dictionary(B26_INPUT).unwrap();
    let sf::Member::InnerList(items, params) = &dict[0].1 else {
        panic!("not an inner list")
    };
    let components: Vec<Component> = items
        .iter()
        .map(|i| Component::from_item(i).unwrap())
        .collect();
    let base = build_base(&components, &sf::inner_list_to_string(items, params), &msg).unwrap();
    assert_eq!(base, B26_BASE);
    let sig = STANDARD
        .decode("wqcAqbmYJ2ji2glfAMaRy4gruYYnx2nEFN2HN6jrnDnQCK1u02Gb04v9EDgwUPiu4A0w6vuQv5lIp5WPpBKRCw==")
        .unwrap();
    assert!(verify_ed25519(&public, base.as_bytes(), &sig));
}

#[test]
fn rfc9530_content_digest_vectors() {
    assert_eq!(content_digest(HELLO), HELLO_SHA256);
    check_content_digest(HELLO_SHA256, HELLO).unwrap();
    check_content_digest(&format!("{HELLO_SHA256}, {HELLO_SHA512}"), HELLO).unwrap();
    check_content_digest(&format!("{HELLO_SHA512},{HELLO_SHA256}"), HELLO).unwrap();
    // Unknown algorithms beside sha-256 are ignored.
    check_content_digest(
        &format!("md5=:+thA//8pGVGk2VYuJkFNvA==:, {HELLO_SHA256}"),
        HELLO,
    )
    .unwrap();
    // The empty body.
    assert_eq!(
        content_digest(b""),
        "sha-256=:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=:"
    );
}

#[test]
fn content_digest_refusals() {
    let refused = |header: &str, body: &[u8]| {
        let err = check_content_digest(header, body).unwrap_err();
        assert_eq!(err.kind, ProblemKind::SignatureInvalid, "{header}: {err}");
    };
    // One changed byte in the body.
    refused(HELLO_SHA256, b"{\"hello\": \"World\"}");
    // sha-512 alone: Enlace requires sha-256.
    refused(HELLO_SHA512, HELLO);
    // A matching sha-256 beside a wrong sha-512.
    refused(
        &format!("{HELLO_SHA256}, sha-512=:{}:", STANDARD.encode([0u8; 64])),
        HELLO,
    );
    // Unknown algorithms only.
    refused("md5=:+thA//8pGVGk2VYuJkFNvA==:, unixsum=26869", HELLO);
    // Malformed.
    refused("", HELLO);
    refused(
        "sha-256=X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=",
        HELLO,
    );
    refused(
        "sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE:",
        HELLO,
    );
    refused(
        "sha-256=\"X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=\"",
        HELLO,
    );
    refused(&format!("{HELLO_SHA256},"), HELLO);
    refused(&format!("{HELLO_SHA256}, {HELLO_SHA256}"), HELLO);
    refused(&format!("{HELLO_SHA256};x=1"), HELLO);
    refused(
        "SHA-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:",
        HELLO,
    );
    let err = check_content_digest(&"a".repeat(MAX_CONTENT_DIGEST_LEN + 1), HELLO).unwrap_err();
    assert_eq!(err.kind, ProblemKind::BodyTooLarge);
}

#[test]
fn component_identifiers_parse_and_serialise() {
    for text in [
        "\"@method\"",
        "\"content-digest\";req",
        "\"enlace-message-id\"",
    ] {
        let c = Component::parse(text).unwrap();
        assert_eq!(c.to_string(), text);
    }
    assert_eq!(
        Component::parse("\"@path\";req=?1").unwrap(),
        Component::from_request("@path")
    );
    for bad in [
        "@method",
        "\"Content-Type\"",
        "\"@signature-params\"",
        "\"@query-param\";name=\"a\"",
        "\"date\";sf",
        "\"date\";req=?0",
        "\"\"",
        "\"a b\"",
    ] {
        assert!(Component::parse(bad).is_err(), "{bad}");
    }
}

// ---------------------------------------------------------------------------------------------
// Enlace exchanges

struct Exchange {
    method: Method,
    uri: Uri,
    request_headers: HeaderMap,
    request_body: Vec<u8>,
    status: StatusCode,
    response_headers: HeaderMap,
    response_body: Vec<u8>,
}

fn unsigned_request(message_id: &str, body: &[u8]) -> (Method, Uri, HeaderMap) {
    let mut h = headers(&[
        ("content-type", "application/json"),
        ("enlace-message-id", message_id),
        ("enlace-client", "CL-DEV/GOV/60803000-K/renta"),
        (
            "enlace-service",
            "CL-DEV/GOV/61002000-3/registro-civil/personas/v1",
        ),
        ("enlace-contract", "0199a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b"),
        ("enlace-subject", "CL-RUN:12345678-5"),
        ("enlace-user", "CL-RUN:11111111-1"),
    ]);
    h.insert(
        CONTENT_DIGEST,
        HeaderValue::from_str(&content_digest(body)).unwrap(),
    );
    (
        Method::GET,
        "/r1/CL-DEV/GOV/61002000-3/registro-civil/personas/v1/persons/12345678-5?fields=name,address"
            .parse()
            .unwrap(),
        h,
    )
}

fn add_signature(h: &mut HeaderMap, (input, signature): (String, String)) {
    h.insert(SIGNATURE_INPUT, HeaderValue::from_str(&input).unwrap());
    h.insert(SIGNATURE, HeaderValue::from_str(&signature).unwrap());
}

fn signed_exchange(consumer: &SigningKey, provider: &SigningKey) -> Exchange {
    let request_body = Vec::new();
    let (method, uri, mut request_headers) =
        unsigned_request("0199a1b2-0000-7000-8000-000000000001", &request_body);
    let signed = sign_request(
        consumer,
        CONSUMER,
        NOW,
        Message::request(&method, &uri, &request_headers),
    )
    .unwrap();
    add_signature(&mut request_headers, signed);

    let response_body = br#"{"name":"Ana","address":"Calle 1"}"#.to_vec();
    let mut response_headers = headers(&[
        ("content-type", "application/json"),
        ("enlace-message-id", "0199a1b2-0000-7000-8000-000000000001"),
    ]);
    response_headers.insert(
        CONTENT_DIGEST,
        HeaderValue::from_str(&content_digest(&response_body)).unwrap(),
    );
    let status = StatusCode::OK;
    let signed = sign_response(
        provider,
        PROVIDER,
        NOW + 1,
        Message::response(status, &response_headers),
        Message::request(&method, &uri, &request_headers),
    )
    .unwrap();
    add_signature(&mut response_headers, signed);
    Exchange {
        method,
        uri,
        request_headers,
        request_body,
        status,
        response_headers,
        response_body,
    }
}

struct Keys {
    consumer: SigningKey,
    provider: SigningKey,
}

impl Keys {
    fn new() -> Self {
        Keys {
            consumer: SigningKey::generate().unwrap(),
            provider: SigningKey::generate().unwrap(),
        }
    }

    fn lookup(&self) -> impl Fn(&str) -> Result<Vec<u8>, Problem> + '_ {
        |keyid| match keyid {
            CONSUMER => Ok(self.consumer.public_key_bytes()),
            PROVIDER => Ok(self.provider.public_key_bytes()),
            other => Err(Problem::new(
                ProblemKind::SignatureInvalid,
                format!("unknown signer `{other}`"),
            )),
        }
    }
}

impl Exchange {
    fn verify_request(&self, keys: &Keys) -> Result<VerifiedSignature, Problem> {
        verify_request(
            Message::request(&self.method, &self.uri, &self.request_headers),
            &self.request_body,
            keys.lookup(),
            NOW,
            SKEW,
        )
    }

    fn verify_response(&self, keys: &Keys) -> Result<VerifiedSignature, Problem> {
        verify_response(
            Message::response(self.status, &self.response_headers),
            &self.response_body,
            Message::request(&self.method, &self.uri, &self.request_headers),
            keys.lookup(),
            NOW,
            SKEW,
        )
    }
}

fn assert_refused(result: Result<VerifiedSignature, Problem>, kind: ProblemKind, needle: &str) {
    let err = result.unwrap_err();
    assert_eq!(err.kind, kind, "{err}");
    assert!(err.detail.contains(needle), "`{needle}` not in: {err}");
}

#[test]
fn request_and_bound_response_round_trip() {
    let keys = Keys::new();
    let ex = signed_exchange(&keys.consumer, &keys.provider);

    let input = ex.request_headers[SIGNATURE_INPUT].to_str().unwrap();
    assert_eq!(
        input,
        format!(
            "sig1=(\"@method\" \"@path\" \"@query\" \"content-digest\" \"enlace-message-id\" \
             \"enlace-client\" \"enlace-service\" \"enlace-contract\" \"content-type\" \
             \"enlace-subject\" \"enlace-user\");created={NOW};keyid=\"{CONSUMER}\";alg=\"ed25519\";\
             tag=\"enlace-request\""
        )
    );
    let v = ex.verify_request(&keys).unwrap();
    assert_eq!(v.label, "sig1");
    assert_eq!(v.keyid, CONSUMER);
    assert_eq!(v.created, NOW);
    assert_eq!(v.components, request_components(&ex.request_headers));

    let input = ex.response_headers[SIGNATURE_INPUT].to_str().unwrap();
    assert!(input.starts_with(
        "sig1=(\"@status\" \"content-type\" \"content-digest\" \"enlace-message-id\" \"@method\";req \"@path\";req \
         \"@query\";req \"content-digest\";req \"enlace-message-id\";req);created="
    ));
    let v = ex.verify_response(&keys).unwrap();
    assert_eq!(v.keyid, PROVIDER);
    assert_eq!(v.components, RESPONSE_COMPONENTS);
}

#[test]
fn request_signature_base_is_as_documented() {
    let (method, uri, headers) = unsigned_request("0199a1b2-0000-7000-8000-000000000001", b"");
    let msg = MessageContext::request(Message::request(&method, &uri, &headers));
    let base = signature_base(
        &request_components(&headers),
        &SigParams::enlace(NOW, CONSUMER, REQUEST_TAG),
        &msg,
    )
    .unwrap();
    let expected = format!(
        "\"@method\": GET\n\
         \"@path\": /r1/CL-DEV/GOV/61002000-3/registro-civil/personas/v1/persons/12345678-5\n\
         \"@query\": ?fields=name,address\n\
         \"content-digest\": sha-256=:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=:\n\
         \"enlace-message-id\": 0199a1b2-0000-7000-8000-000000000001\n\
         \"enlace-client\": CL-DEV/GOV/60803000-K/renta\n\
         \"enlace-service\": CL-DEV/GOV/61002000-3/registro-civil/personas/v1\n\
         \"enlace-contract\": 0199a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b\n\
         \"content-type\": application/json\n\
         \"enlace-subject\": CL-RUN:12345678-5\n\
         \"enlace-user\": CL-RUN:11111111-1\n\
         \"@signature-params\": (\"@method\" \"@path\" \"@query\" \"content-digest\" \
         \"enlace-message-id\" \"enlace-client\" \"enlace-service\" \"enlace-contract\" \
         \"content-type\" \"enlace-subject\" \"enlace-user\");created={NOW};keyid=\"{CONSUMER}\";alg=\"ed25519\";\
         tag=\"enlace-request\""
    );
    assert_eq!(base, expected);
}

#[test]
fn derived_components_follow_rfc9421() {
    let h = headers(&[
        ("host", "Example.COM:443"),
        ("x-list", " a "),
        ("x-list", "b\t"),
    ]);
    let method = Method::from_bytes(b"post").unwrap();
    let origin: Uri = "/p%20q".parse().unwrap();
    let m = Message::request(&method, &origin, &h);
    assert_eq!(m.method(), Some("post"));
    assert_eq!(m.path(), Some("/p%20q"));
    assert_eq!(m.query().as_deref(), Some("?"));
    assert_eq!(m.authority().as_deref(), Some("example.com:443"));
    assert_eq!(m.target_uri(), None);
    assert_eq!(m.field("x-list").unwrap().as_deref(), Some("a, b"));
    assert_eq!(m.field("x-absent").unwrap(), None);

    let absolute: Uri = "https://Node.Example:443/a?b=c&d".parse().unwrap();
    let m = Message::request(&method, &absolute, &h);
    assert_eq!(m.authority().as_deref(), Some("node.example"));
    assert_eq!(m.query().as_deref(), Some("?b=c&d"));
    assert_eq!(m.request_target().as_deref(), Some("/a?b=c&d"));
    assert_eq!(
        m.target_uri().as_deref(),
        Some("https://node.example/a?b=c&d")
    );
    let empty_query: Uri = "/a?".parse().unwrap();
    let m = Message::request(&method, &empty_query, &h);
    assert_eq!(m.query().as_deref(), Some("?"));

    let r = Message::response(StatusCode::NOT_FOUND, &h);
    assert_eq!(r.status(), Some(404));
    assert_eq!(r.method(), None);

    let mut bad = HeaderMap::new();
    bad.insert("x-bin", HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap());
    let m = Message::request(&method, &origin, &bad);
    assert!(m.field("x-bin").is_err());
}

#[test]
fn sign_refuses_what_it_cannot_sign() {
    let key = SigningKey::generate().unwrap();
    let (method, uri, mut h) = unsigned_request("id", b"");
    h.remove("enlace-contract");
    let msg = Message::request(&method, &uri, &h);
    let err = sign_request(&key, CONSUMER, NOW, msg).unwrap_err();
    assert_eq!(err.kind, ProblemKind::InvalidRequest);
    assert!(err.detail.contains("enlace-contract"), "{err}");

    let ctx = MessageContext::request(msg);
    let twice = [Component::new("@method"), Component::new("@method")];
    let params = SigParams::enlace(NOW, CONSUMER, REQUEST_TAG);
    assert_eq!(
        sign(&key, &twice, &params, &ctx).unwrap_err().kind,
        ProblemKind::Internal
    );
    let req_on_request = [Component::from_request("@method")];
    assert_eq!(
        sign(&key, &req_on_request, &params, &ctx).unwrap_err().kind,
        ProblemKind::InvalidRequest
    );
    let bad_keyid = SigParams::enlace(NOW, "node\n", REQUEST_TAG);
    assert_eq!(
        sign(&key, &[Component::new("@method")], &bad_keyid, &ctx)
            .unwrap_err()
            .kind,
        ProblemKind::Internal
    );
}

#[test]
fn a_changed_body_byte_is_refused() {
    let keys = Keys::new();
    let mut ex = signed_exchange(&keys.consumer, &keys.provider);
    ex.request_body = b"x".to_vec();
    assert_refused(
        ex.verify_request(&keys),
        ProblemKind::SignatureInvalid,
        "content-digest",
    );
    let mut ex = signed_exchange(&keys.consumer, &keys.provider);
    ex.response_body[10] ^= 1;
    assert_refused(
        ex.verify_response(&keys),
        ProblemKind::SignatureInvalid,
        "does not match the body",
    );
}

#[test]
fn a_changed_path_or_query_is_refused() {
    let keys = Keys::new();
    let mut ex = signed_exchange(&keys.consumer, &keys.provider);
    ex.uri = "/r1/CL-DEV/GOV/61002000-3/registro-civil/personas/v1/persons/99999999-9?fields=name,address"
        .parse()
        .unwrap();
    assert_refused(
        ex.verify_request(&keys),
        ProblemKind::SignatureInvalid,
        "does not verify",
    );
    let mut ex = signed_exchange(&keys.consumer, &keys.provider);
    ex.uri = "/r1/CL-DEV/GOV/61002000-3/registro-civil/personas/v1/persons/12345678-5?fields=name,address,healthInsurance"
        .parse()
        .unwrap();
    assert_refused(
        ex.verify_request(&keys),
        ProblemKind::SignatureInvalid,
        "does not verify",
    );
}

#[test]
fn a_changed_covered_header_is_refused() {
    let keys = Keys::new();
    for name in ["enlace-contract", "enlace-subject", "enlace-client"] {
        let mut ex = signed_exchange(&keys.consumer, &keys.provider);
        ex.request_headers
            .insert(name, HeaderValue::from_static("tampered"));
        assert_refused(
            ex.verify_request(&keys),
            ProblemKind::SignatureInvalid,
            "does not verify",
        );
    }
    // A second line of a covered header changes its value too.
    let mut ex = signed_exchange(&keys.consumer, &keys.provider);
    ex.request_headers
        .append("enlace-user", HeaderValue::from_static("CL-RUN:22222222-2"));
    assert_refused(
        ex.verify_request(&keys),
        ProblemKind::SignatureInvalid,
        "does not verify",
    );
    // A removed covered header.
    let mut ex = signed_exchange(&keys.consumer, &keys.provider);
    ex.request_headers.remove("enlace-user");
    assert!(ex.verify_request(&keys).is_err());
}

#[test]
fn an_added_unsigned_optional_header_is_refused() {
    let keys = Keys::new();
    let mut ex = signed_exchange(&keys.consumer, &keys.provider);
    ex.request_headers
        .insert("enlace-procedure", HeaderValue::from_static("tramite-42"));
    assert_refused(
        ex.verify_request(&keys),
        ProblemKind::SignatureInvalid,
        "does not cover \"enlace-procedure\"",
    );

    // The same with a request signed without a subject, to which one is added.
    let (method, uri, mut h) = unsigned_request("id-2", b"");
    h.remove("enlace-subject");
    let signed = sign_request(
        &keys.consumer,
        CONSUMER,
        NOW,
        Message::request(&method, &uri, &h),
    )
    .unwrap();
    add_signature(&mut h, signed);
    let check = |h: &HeaderMap| {
        verify_request(
            Message::request(&method, &uri, h),
            b"",
            keys.lookup(),
            NOW,
            SKEW,
        )
    };
    check(&h).unwrap();
    h.insert(
        "enlace-subject",
        HeaderValue::from_static("CL-RUN:12345678-5"),
    );
    assert_refused(
        check(&h),
        ProblemKind::SignatureInvalid,
        "does not cover \"enlace-subject\"",
    );
}

#[test]
fn a_response_bound_to_another_request_is_refused() {
    let keys = Keys::new();
    // Another message id.
    let mut ex = signed_exchange(&keys.consumer, &keys.provider);
    ex.request_headers.insert(
        "enlace-message-id",
        HeaderValue::from_static("0199a1b2-0000-7000-8000-000000000002"),
    );
    assert_refused(
        ex.verify_response(&keys),
        ProblemKind::SignatureInvalid,
        "does not verify",
    );
    // Another request digest.
    let mut ex = signed_exchange(&keys.consumer, &keys.provider);
    ex.request_headers.insert(
        CONTENT_DIGEST,
        HeaderValue::from_str(&content_digest(b"other")).unwrap(),
    );
    assert_refused(
        ex.verify_response(&keys),
        ProblemKind::SignatureInvalid,
        "does not verify",
    );
    // Another path.
    let mut ex = signed_exchange(&keys.consumer, &keys.provider);
    ex.uri = "/r1/elsewhere".parse().unwrap();
    assert_refused(
        ex.verify_response(&keys),
        ProblemKind::SignatureInvalid,
        "does not verify",
    );
    // Another status.
    let mut ex = signed_exchange(&keys.consumer, &keys.provider);
    ex.status = StatusCode::NOT_FOUND;
    assert_refused(
        ex.verify_response(&keys),
        ProblemKind::SignatureInvalid,
        "does not verify",
    );
    // A request signature presented as a response signature.
    let mut ex = signed_exchange(&keys.consumer, &keys.provider);
    let (input, signature) = signature_headers(&ex.request_headers).unwrap();
    add_signature(&mut ex.response_headers, (input, signature));
    assert_refused(
        ex.verify_response(&keys),
        ProblemKind::SignatureInvalid,
        "tag",
    );
}

#[test]
fn a_signature_missing_a_required_component_is_refused() {
    let keys = Keys::new();
    let (method, uri, mut h) = unsigned_request("id-3", b"");
    let covered: Vec<Component> = request_components(&h)
        .into_iter()
        .filter(|c| c.name != "enlace-contract")
        .collect();
    let signed = sign(
        &keys.consumer,
        &covered,
        &SigParams::enlace(NOW, CONSUMER, REQUEST_TAG),
        &MessageContext::request(Message::request(&method, &uri, &h)),
    )
    .unwrap();
    add_signature(&mut h, signed);
    assert_refused(
        verify_request(
            Message::request(&method, &uri, &h),
            b"",
            keys.lookup(),
            NOW,
            SKEW,
        ),
        ProblemKind::SignatureInvalid,
        "does not cover \"enlace-contract\"",
    );

    // A response signature without the `;req` binding.
    let mut ex = signed_exchange(&keys.consumer, &keys.provider);
    let unbound: Vec<Component> = RESPONSE_COMPONENTS
        .iter()
        .filter(|c| !c.req)
        .cloned()
        .collect();
    let signed = sign(
        &keys.provider,
        &unbound,
        &SigParams::enlace(NOW, PROVIDER, RESPONSE_TAG),
        &MessageContext::response(
            Message::response(ex.status, &ex.response_headers),
            Message::request(&ex.method, &ex.uri, &ex.request_headers),
        ),
    )
    .unwrap();
    add_signature(&mut ex.response_headers, signed);
    assert_refused(
        ex.verify_response(&keys),
        ProblemKind::SignatureInvalid,
        "does not cover \"@method\";req",
    );
}

#[test]
fn a_wrong_tag_or_algorithm_is_refused() {
    let keys = Keys::new();
    let (method, uri, h) = unsigned_request("id-4", b"");
    let msg = MessageContext::request(Message::request(&method, &uri, &h));
    let components = request_components(&h);
    let required = components.clone();
    let expected = Expected {
        required: &required,
        tag: REQUEST_TAG,
        now: NOW,
        max_skew_secs: SKEW,
    };
    let (input, signature) = sign(
        &keys.consumer,
        &components,
        &SigParams::enlace(NOW, CONSUMER, RESPONSE_TAG),
        &msg,
    )
    .unwrap();
    assert_refused(
        verify(&input, &signature, &msg, &expected, keys.lookup()),
        ProblemKind::SignatureInvalid,
        "tag is `enlace-response`",
    );
    let mut params = SigParams::enlace(NOW, CONSUMER, REQUEST_TAG);
    params.tag = None;
    let (input, signature) = sign(&keys.consumer, &components, &params, &msg).unwrap();
    assert_refused(
        verify(&input, &signature, &msg, &expected, keys.lookup()),
        ProblemKind::SignatureInvalid,
        "no tag",
    );

    // No `alg` is fine; another one is not (even with a valid signature over it).
    let mut params = SigParams::enlace(NOW, CONSUMER, REQUEST_TAG);
    params.alg = false;
    let (input, signature) = sign(&keys.consumer, &components, &params, &msg).unwrap();
    verify(&input, &signature, &msg, &expected, keys.lookup()).unwrap();
    let input = input.replace(";tag=", ";alg=\"rsa-pss-sha512\";tag=");
    assert_refused(
        verify(&input, &signature, &msg, &expected, keys.lookup()),
        ProblemKind::SignatureInvalid,
        "rsa-pss-sha512",
    );
}

#[test]
fn created_outside_the_window_is_stale() {
    let keys = Keys::new();
    let ex = signed_exchange(&keys.consumer, &keys.provider);
    let at = |now: i64| {
        verify_request(
            Message::request(&ex.method, &ex.uri, &ex.request_headers),
            &ex.request_body,
            keys.lookup(),
            now,
            SKEW,
        )
    };
    at(NOW + SKEW).unwrap();
    at(NOW - SKEW).unwrap();
    assert_refused(at(NOW + SKEW + 1), ProblemKind::Stale, "ago");
    assert_refused(at(NOW - SKEW - 1), ProblemKind::Stale, "in the future");
    assert_refused(at(i64::MIN), ProblemKind::Stale, "in the future");
    assert_refused(at(i64::MAX), ProblemKind::Stale, "ago");
}

#[test]
fn an_expired_signature_is_stale() {
    let keys = Keys::new();
    let (method, uri, h) = unsigned_request("id-5", b"");
    let msg = MessageContext::request(Message::request(&method, &uri, &h));
    let components = [Component::new("@method")];
    let expected = Expected {
        required: &components,
        tag: REQUEST_TAG,
        now: NOW,
        max_skew_secs: SKEW,
    };
    // `expires` is not something we emit; build the signature by hand.
    let params_text = format!(
        "(\"@method\");created={};expires={};keyid=\"{CONSUMER}\";tag=\"enlace-request\"",
        NOW - 10,
        NOW - 1
    );
    let base = build_base(&components, &params_text, &msg).unwrap();
    let signature = format!(
        "sig1=:{}:",
        STANDARD.encode(keys.consumer.sign(base.as_bytes()))
    );
    assert_refused(
        verify(
            &format!("sig1={params_text}"),
            &signature,
            &msg,
            &expected,
            keys.lookup(),
        ),
        ProblemKind::Stale,
        "expired",
    );
}

#[test]
fn an_unknown_or_wrong_keyid_is_refused() {
    let keys = Keys::new();
    let (method, uri, mut h) = unsigned_request("id-6", b"");
    let signed = sign_request(
        &keys.consumer,
        "CL-DEV/GOV/99999999-9/node/z",
        NOW,
        Message::request(&method, &uri, &h),
    )
    .unwrap();
    add_signature(&mut h, signed);
    assert_refused(
        verify_request(
            Message::request(&method, &uri, &h),
            b"",
            keys.lookup(),
            NOW,
            SKEW,
        ),
        ProblemKind::SignatureInvalid,
        "unknown signer",
    );
    // Signed by the consumer's key but claiming to be the provider.
    let (method, uri, mut h) = unsigned_request("id-7", b"");
    let signed = sign_request(
        &keys.consumer,
        PROVIDER,
        NOW,
        Message::request(&method, &uri, &h),
    )
    .unwrap();
    add_signature(&mut h, signed);
    assert_refused(
        verify_request(
            Message::request(&method, &uri, &h),
            b"",
            keys.lookup(),
            NOW,
            SKEW,
        ),
        ProblemKind::SignatureInvalid,
        "does not verify",
    );
}

#[test]
fn malformed_signature_headers_are_refused() {
    let keys = Keys::new();
    let ex = signed_exchange(&keys.consumer, &keys.provider);
    let (input, signature) = signature_headers(&ex.request_headers).unwrap();
    let msg = MessageContext::request(Message::request(&ex.method, &ex.uri, &ex.request_headers));
    let required = request_components(&ex.request_headers);
    let expected = Expected {
        required: &required,
        tag: REQUEST_TAG,
        now: NOW,
        max_skew_secs: SKEW,
    };
    verify(&input, &signature, &msg, &expected, keys.lookup()).unwrap();

    let sig_bytes = signature
        .strip_prefix("sig1=")
        .unwrap()
        .trim_matches(':')
        .to_string();
    let cases: Vec<(String, String)> = vec![
        (String::new(), signature.clone()),
        (input.clone(), String::new()),
        (input.replace("sig1=(", "sig1="), signature.clone()),
        (input.replace(")", ""), signature.clone()),
        (
            input.replace("sig1", "Sig1"),
            signature.replace("sig1", "Sig1"),
        ),
        (input.replace("sig1", "sig2"), signature.clone()),
        (input.clone(), signature.replace("sig1=:", "sig1=")),
        (input.clone(), format!("sig1=:{}:", &sig_bytes[1..])),
        (input.clone(), format!("sig1=:{}:;x", sig_bytes)),
        (
            input.clone(),
            format!("sig1=:{}:", STANDARD.encode([0u8; 63])),
        ),
        (input.replace(";created=", ";created=-"), signature.clone()),
        (
            input.replace(";created=", ";created=\"1\";x="),
            signature.clone(),
        ),
        (
            input.replace(";keyid=", ";unknown=1;keyid="),
            signature.clone(),
        ),
        (
            input.replace(";keyid=", ";created=1;keyid="),
            signature.clone(),
        ),
        (input.replace(";keyid=", ";keyid=1;x="), signature.clone()),
        (
            input.replace("\"@method\"", "\"@method\";sf"),
            signature.clone(),
        ),
        (
            input.replace("\"@method\"", "\"@method\";req"),
            signature.clone(),
        ),
        (input.replace("\"@method\"", "\"@path\""), signature.clone()),
        (input.replace("\"@method\"", "@method"), signature.clone()),
        (
            input.replace("\"@method\"", "\"@METHOD\""),
            signature.clone(),
        ),
        (input.replace("\"@method\"", "\"@foo\""), signature.clone()),
        (
            input.replace("\"enlace-client\"", "\"Enlace-Client\""),
            signature.clone(),
        ),
        (input.replace(";created=", ";xcreated="), signature.clone()),
        (format!("{input},"), signature.clone()),
        (
            input.replace("tag=\"enlace-request\"", "tag=enlace-request"),
            signature.clone(),
        ),
        (input.replace('"', "'"), signature.clone()),
    ];
    for (i, s) in cases {
        let err = verify(&i, &s, &msg, &expected, keys.lookup()).unwrap_err();
        assert!(
            matches!(err.kind, ProblemKind::SignatureInvalid | ProblemKind::Stale),
            "{i} / {s}: {err}"
        );
    }

    // Missing headers.
    let mut h = ex.request_headers.clone();
    h.remove(SIGNATURE);
    assert_eq!(
        signature_headers(&h).unwrap_err().kind,
        ProblemKind::SignatureInvalid
    );
}

#[test]
fn whitespace_variants_of_an_input_rebuild_the_canonical_base() {
    // RFC 9421 rebuilds `@signature-params` from the parsed value, so optional whitespace and
    // `;req=?1` spelled out verify like the canonical form.
    let keys = Keys::new();
    let ex = signed_exchange(&keys.consumer, &keys.provider);
    let (input, signature) = signature_headers(&ex.response_headers).unwrap();
    let msg = MessageContext::response(
        Message::response(ex.status, &ex.response_headers),
        Message::request(&ex.method, &ex.uri, &ex.request_headers),
    );
    let expected = Expected {
        required: RESPONSE_COMPONENTS,
        tag: RESPONSE_TAG,
        now: NOW,
        max_skew_secs: SKEW,
    };
    let spaced = format!(
        "  {}  ",
        input
            .replace("sig1=(", "sig1=(  ")
            .replace(";req ", ";req=?1   ")
    );
    verify(&spaced, &signature, &msg, &expected, keys.lookup()).unwrap();
}

#[test]
fn two_signature_labels_are_refused() {
    let keys = Keys::new();
    let ex = signed_exchange(&keys.consumer, &keys.provider);
    let (input, signature) = signature_headers(&ex.request_headers).unwrap();
    let msg = MessageContext::request(Message::request(&ex.method, &ex.uri, &ex.request_headers));
    let required = request_components(&ex.request_headers);
    let expected = Expected {
        required: &required,
        tag: REQUEST_TAG,
        now: NOW,
        max_skew_secs: SKEW,
    };
    let input2 = format!("{input}, {}", input.replacen("sig1", "sig2", 1));
    let signature2 = format!("{signature}, {}", signature.replacen("sig1", "sig2", 1));
    assert_refused(
        verify(&input2, &signature2, &msg, &expected, keys.lookup()),
        ProblemKind::SignatureInvalid,
        "exactly one",
    );
    assert_refused(
        verify(&input, &signature2, &msg, &expected, keys.lookup()),
        ProblemKind::SignatureInvalid,
        "exactly one",
    );
    // The same label twice (two header lines) is refused by the parser.
    let mut h = ex.request_headers.clone();
    h.append(SIGNATURE_INPUT, HeaderValue::from_str(&input).unwrap());
    h.append(SIGNATURE, HeaderValue::from_str(&signature).unwrap());
    assert_refused(
        verify_request(
            Message::request(&ex.method, &ex.uri, &h),
            b"",
            keys.lookup(),
            NOW,
            SKEW,
        ),
        ProblemKind::SignatureInvalid,
        "duplicate",
    );
}

#[test]
fn oversized_headers_are_refused() {
    let keys = Keys::new();
    let ex = signed_exchange(&keys.consumer, &keys.provider);
    let (input, signature) = signature_headers(&ex.request_headers).unwrap();
    let msg = MessageContext::request(Message::request(&ex.method, &ex.uri, &ex.request_headers));
    let expected = Expected {
        required: &[],
        tag: REQUEST_TAG,
        now: NOW,
        max_skew_secs: SKEW,
    };
    let long_input = format!("{input};nonce=\"{}\"", "n".repeat(MAX_SIGNATURE_HEADER_LEN));
    assert_refused(
        verify(&long_input, &signature, &msg, &expected, keys.lookup()),
        ProblemKind::BodyTooLarge,
        "signature-input",
    );
    let long_signature = format!("{signature}{}", " ".repeat(MAX_SIGNATURE_HEADER_LEN));
    assert_refused(
        verify(&input, &long_signature, &msg, &expected, keys.lookup()),
        ProblemKind::BodyTooLarge,
        "signature",
    );
    // Through the headers, many short lines add up.
    let mut h = ex.request_headers.clone();
    for _ in 0..300 {
        h.append(SIGNATURE_INPUT, HeaderValue::from_static("a=(\"@method\")"));
    }
    assert_eq!(
        signature_headers(&h).unwrap_err().kind,
        ProblemKind::BodyTooLarge
    );
}

#[test]
fn structured_fields_parse_strictly() {
    let ok = [
        "a=1, b=?0, c, d=:AQID:, e=\"x\\\"y\", f=tok/en:1, g=-1.5;p",
        "a=(1 2);x=1, b=()",
        "",
        "   ",
    ];
    for s in ok {
        sf::parse_dictionary(s).unwrap_or_else(|e| panic!("{s}: {e}"));
    }
    let bad = [
        "a=1,",
        "a=1,,b=2",
        "A=1",
        "a=1 b=2",
        "a=(1 2",
        "a=(1,2)",
        "a=\"\\n\"",
        "a=\"unterminated",
        "a=:AQI:",
        "a=:AQID",
        "a=1234567890123456",
        "a=1.2345",
        "a=1.",
        "a=?2",
        "a=1;b;b",
        "a, a",
        "a=\u{e9}",
        "\ta=1",
    ];
    for s in bad {
        assert!(sf::parse_dictionary(s).is_err(), "{s}");
    }
    assert_eq!(
        sf::parse_dictionary("a=999999999999999, b=-999999999999999").unwrap()[1].1,
        sf::Member::Item(sf::Item {
            bare: sf::BareItem::Integer(-999_999_999_999_999),
            params: Vec::new()
        })
    );
}

fn sf_like() -> impl Strategy<Value = String> {
    proptest::string::string_regex(r#"[a-z0-9@"();=:,?*.\- \\/+A-Z\t]{0,80}"#).unwrap()
}

proptest! {
    #[test]
    fn parsers_never_panic_on_arbitrary_text(s in any::<String>(), t in sf_like()) {
        for text in [&s, &t] {
            let _ = sf::parse_dictionary(text);
            let _ = sf::parse_item(text);
            let _ = Component::parse(text);
            let _ = check_content_digest(text, b"");
        }
    }

    #[test]
    fn verify_never_panics_and_refuses_garbage(input in sf_like(), signature in sf_like()) {
        let h = headers(&[("enlace-message-id", "x")]);
        let method = Method::GET;
        let uri: Uri = "/".parse().unwrap();
        let msg = MessageContext::request(Message::request(&method, &uri, &h));
        let expected = Expected { required: &[], tag: REQUEST_TAG, now: NOW, max_skew_secs: SKEW };
        let result = verify(&input, &signature, &msg, &expected, |_| Ok(vec![0u8; 32]));
        prop_assert!(result.is_err());
    }

    #[test]
    fn mutated_signature_inputs_never_verify(pos in 0usize..400, byte in 0x20u8..0x7f) {
        // One changed byte anywhere in a valid Signature-Input fails to parse or to verify.
        let key = SigningKey::from_pem(RFC_ED25519_PRIVATE_PEM).unwrap();
        let (method, uri, h) = unsigned_request("id-p", b"");
        let msg = MessageContext::request(Message::request(&method, &uri, &h));
        let required = request_components(&h);
        let (input, signature) = sign(
            &key,
            &required,
            &SigParams::enlace(NOW, CONSUMER, REQUEST_TAG),
            &msg,
        )
        .unwrap();
        let mut bytes = input.clone().into_bytes();
        let pos = pos % bytes.len();
        let original = bytes[pos];
        bytes[pos] = byte;
        let mutated = String::from_utf8(bytes).unwrap();
        let expected = Expected { required: &required, tag: REQUEST_TAG, now: NOW, max_skew_secs: SKEW };
        let public = key.public_key_bytes();
        let result = verify(&mutated, &signature, &msg, &expected, |_| Ok(public.clone()));
        prop_assert_eq!(result.is_ok(), byte == original, "{}", mutated);
    }
}

#[test]
fn covered_field_names_lists_the_header_fields_a_signature_covers() {
    let input = r#"sig1=("@method" "@path" "content-digest" "enlace-client" "x-request-ref" "enlace-message-id";req);created=1;keyid="k";alg="ed25519";tag="enlace-request""#;
    assert_eq!(
        covered_field_names(input, 32),
        ["content-digest", "enlace-client", "x-request-ref"]
    );
    assert_eq!(covered_field_names(input, 1), ["content-digest"]);
    // Anything but one well-formed signature: nothing.
    assert!(covered_field_names("not a dictionary (", 32).is_empty());
    assert!(covered_field_names(r#"a=("x"), b=("y")"#, 32).is_empty());
    assert!(covered_field_names("sig1=token", 32).is_empty());
    let long = input.replace("x-request-ref", &"x".repeat(MAX_SIGNATURE_HEADER_LEN));
    assert!(covered_field_names(&long, 32).is_empty());
}

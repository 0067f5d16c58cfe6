use enlace_core::problem::ProblemKind;
use proptest::prelude::*;
use prost_reflect::{DynamicMessage, MapKey, Value};
use sha2::{Digest, Sha256};

use super::*;

// ---------------------------------------------------------------------------------------------
// Helpers

fn personas() -> CompiledGrpc {
    CompiledGrpc::compile(enlace_proto::PERSONAS_DESCRIPTOR_SET).expect("the demo set compiles")
}

/// A service with repeated messages, repeated scalars, a map, an enum, `optional`, a
/// well-known type and recursion, which the demo service lacks.
const TEST_PROTO: &str = r#"
syntax = "proto3";
package t.v1;
import "google/protobuf/timestamp.proto";

service Things {
  rpc Get(Req) returns (Holder);
  rpc Chat(stream Req) returns (stream Holder);
}
message Req { string id = 1; }
enum Kind { KIND_UNSPECIFIED = 0; KIND_A = 1; }
message Doc { string type = 1; string number = 2; Kind kind = 3; }
message Holder {
  string name = 1;
  repeated Doc documents = 2;
  repeated string tags = 3;
  map<string, Doc> by_id = 4;
  optional int32 age = 5;
  google.protobuf.Timestamp updated = 6;
  Holder next = 7;
}
"#;

struct TestResolver(protox::file::GoogleFileResolver);

impl protox::file::FileResolver for TestResolver {
    fn open_file(&self, name: &str) -> Result<protox::file::File, protox::Error> {
        if name == "t.proto" {
            return protox::file::File::from_source(name, TEST_PROTO);
        }
        self.0.open_file(name)
    }
}

fn things() -> CompiledGrpc {
    let mut compiler =
        protox::Compiler::with_file_resolver(TestResolver(protox::file::GoogleFileResolver::new()));
    compiler.include_imports(true);
    compiler
        .open_file("t.proto")
        .expect("the test proto compiles");
    CompiledGrpc::compile(&compiler.encode_file_descriptor_set()).expect("the test set decodes")
}

fn set(msg: &mut DynamicMessage, name: &str, value: Value) {
    msg.set_field_by_name(name, value);
}

fn s(v: &str) -> Value {
    Value::String(v.into())
}

fn address(grpc: &CompiledGrpc) -> DynamicMessage {
    let desc = grpc
        .pool()
        .get_message_by_name("personas.v1.Address")
        .unwrap();
    let mut a = DynamicMessage::new(desc);
    set(
        &mut a,
        "street",
        s("Av. Libertador Bernardo O'Higgins 1234"),
    );
    set(&mut a, "commune", s("Santiago"));
    set(&mut a, "region", s("Metropolitana"));
    a
}

fn person(grpc: &CompiledGrpc) -> DynamicMessage {
    let m = grpc.method("/personas.v1.Personas/GetPerson").unwrap();
    let mut p = DynamicMessage::new(m.output);
    set(&mut p, "run", s("12345678-5"));
    set(&mut p, "name", s("María José Pérez"));
    set(&mut p, "birth_date", s("1980-04-15"));
    set(&mut p, "address", Value::Message(address(grpc)));
    set(&mut p, "civil_status", s("casada"));
    set(&mut p, "nationality", s("chilena"));
    set(&mut p, "health_insurance", s("FONASA-B"));
    p
}

fn doc(grpc: &CompiledGrpc, name: &str, ty: &str, number: &str) -> DynamicMessage {
    let desc = grpc.pool().get_message_by_name(name).unwrap();
    let mut d = DynamicMessage::new(desc);
    if !ty.is_empty() {
        set(&mut d, "type", s(ty));
    }
    if !number.is_empty() {
        set(&mut d, "number", s(number));
    }
    d
}

/// A varint field 99 (key 99 << 3 = 792 = 0x98 0x06) with value 1.
const UNKNOWN_99: [u8; 3] = [0x98, 0x06, 0x01];

/// Appends a length-delimited field to an encoding.
fn push_len_field(out: &mut Vec<u8>, number: u32, bytes: &[u8]) {
    prost::encoding::encode_key(number, prost::encoding::WireType::LengthDelimited, out);
    prost::encoding::encode_varint(bytes.len() as u64, out);
    out.extend_from_slice(bytes);
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn set_names(msg: &DynamicMessage) -> Vec<String> {
    let mut names: Vec<String> = msg.fields().map(|(f, _)| f.name().to_string()).collect();
    names.sort();
    names
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

// ---------------------------------------------------------------------------------------------
// Framing

#[test]
fn frame_layout() {
    assert_eq!(
        encode_frame(b"abc", false).unwrap(),
        [0, 0, 0, 0, 3, b'a', b'b', b'c']
    );
    assert_eq!(encode_frame(b"", true).unwrap(), [1, 0, 0, 0, 0]);
}

#[test]
fn a_message_split_byte_by_byte() {
    let frame = encode_frame(b"hello", false).unwrap();
    let mut dec = FrameDecoder::new(Side::Request, 1024);
    let mut got = Vec::new();
    for b in &frame {
        got.extend(dec.push(std::slice::from_ref(b)).unwrap());
    }
    assert_eq!(
        got,
        [GrpcMessage {
            compressed: false,
            payload: b"hello".to_vec()
        }]
    );
    dec.finish().unwrap();
}

#[test]
fn several_messages_in_one_chunk_and_a_partial_one() {
    let mut stream = encode_frame(b"one", false).unwrap();
    stream.extend(encode_frame(b"", false).unwrap());
    stream.extend(encode_frame(b"three", false).unwrap());
    let cut = stream.len() - 2;
    let mut dec = FrameDecoder::new(Side::Response, 1024);
    let first = dec.push(&stream[..cut]).unwrap();
    assert_eq!(
        first
            .iter()
            .map(|m| m.payload.as_slice())
            .collect::<Vec<_>>(),
        [b"one".as_slice(), b""]
    );
    let rest = dec.push(&stream[cut..]).unwrap();
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0].payload, b"three");
    assert!(dec.push(&[]).unwrap().is_empty());
    dec.finish().unwrap();
}

#[test]
fn an_oversized_message_is_refused_from_its_prefix() {
    let mut dec = FrameDecoder::new(Side::Request, 16);
    // Only the prefix has arrived: 17 bytes declared.
    let err = dec.push(&[0, 0, 0, 0, 17]).unwrap_err();
    assert_eq!(err.kind, ProblemKind::BodyTooLarge);
    assert_eq!(err.extensions["limit"], 16);
    // The decoder stays failed.
    assert_eq!(dec.push(b"x").unwrap_err().kind, ProblemKind::BodyTooLarge);
    assert_eq!(dec.finish().unwrap_err().kind, ProblemKind::BodyTooLarge);

    // A 4 GiB declaration is refused the same way; exactly the limit is accepted.
    let mut dec = FrameDecoder::new(Side::Response, 16);
    let err = dec.push(&[0, 0xff, 0xff, 0xff, 0xff]).unwrap_err();
    assert_eq!(err.kind, ProblemKind::BodyTooLarge);
    assert_eq!(err.extensions["culprit"], "provider-backend");
    let mut dec = FrameDecoder::new(Side::Request, 16);
    let got = dec.push(&encode_frame(&[7; 16], false).unwrap()).unwrap();
    assert_eq!(got[0].payload, [7; 16]);
}

#[test]
fn a_truncated_stream_is_refused_at_finish() {
    let frame = encode_frame(b"hello", false).unwrap();
    for cut in 1..frame.len() {
        let mut dec = FrameDecoder::new(Side::Response, 1024);
        assert!(dec.push(&frame[..cut]).unwrap().is_empty());
        let err = dec.finish().unwrap_err();
        assert_eq!(err.kind, ProblemKind::ResponseSchemaViolation, "cut {cut}");
        assert_eq!(err.extensions["trick"], "grpc-truncated");
    }
    let mut dec = FrameDecoder::new(Side::Request, 1024);
    dec.push(&frame[..3]).unwrap();
    assert_eq!(
        dec.finish().unwrap_err().kind,
        ProblemKind::RequestSchemaViolation
    );
}

#[test]
fn a_flag_other_than_0_or_1_is_refused() {
    let mut dec = FrameDecoder::new(Side::Request, 1024);
    let err = dec.push(&[2, 0, 0, 0, 0]).unwrap_err();
    assert_eq!(err.kind, ProblemKind::RequestSchemaViolation);
    assert_eq!(err.extensions["trick"], "grpc-flag");
}

#[test]
fn compressed_messages_are_refused() {
    let mut dec = FrameDecoder::new(Side::Request, 1024);
    let got = dec.push(&encode_frame(b"zz", true).unwrap()).unwrap();
    assert!(got[0].compressed);
    let err = got[0].clone().identity().unwrap_err();
    assert_eq!(err.kind, ProblemKind::UnsupportedEncoding);
    assert_eq!(
        err.kind.grpc_code(),
        12,
        "UNIMPLEMENTED, as the gRPC spec has it"
    );
    assert_eq!(
        err.detail,
        "compressed gRPC messages are not relayed; send identity encoding \
         (grpc-accept-encoding: identity)"
    );
    let plain = GrpcMessage {
        compressed: false,
        payload: b"ok".to_vec(),
    };
    assert_eq!(plain.identity().unwrap(), b"ok");

    check_encoding(None).unwrap();
    check_encoding(Some("identity")).unwrap();
    let err = check_encoding(Some("gzip")).unwrap_err();
    assert_eq!(err.kind, ProblemKind::UnsupportedEncoding);
    assert_eq!(err.extensions["grpc-encoding"], "gzip");
}

#[test]
fn only_protobuf_content_types_are_relayed() {
    for ok in [
        "application/grpc",
        "application/grpc+proto",
        "Application/GRPC+Proto",
    ] {
        check_content_type(Some(ok)).unwrap();
    }
    for bad in [
        None,
        Some(""),
        Some("application/grpc+json"),
        Some("application/grpc+thrift"),
        Some("application/grpc-web"),
        Some("application/json"),
        Some("application/grpc;charset=utf-8"),
    ] {
        let err = check_content_type(bad).unwrap_err();
        assert_eq!(err.kind, ProblemKind::UnsupportedMediaType, "{bad:?}");
        assert!(err.detail.contains("application/grpc+proto"), "{err:?}");
    }
}

proptest! {
    #[test]
    fn any_chunking_gives_the_same_messages(
        messages in proptest::collection::vec(
            (any::<bool>(), proptest::collection::vec(any::<u8>(), 0..64)), 0..8),
        cuts in proptest::collection::vec(any::<usize>(), 0..16),
    ) {
        let mut stream = Vec::new();
        for (compressed, payload) in &messages {
            stream.extend(encode_frame(payload, *compressed).unwrap());
        }
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (stream.len() + 1)).collect();
        cuts.push(0);
        cuts.push(stream.len());
        cuts.sort_unstable();
        let mut dec = FrameDecoder::new(Side::Request, 64);
        let mut got = Vec::new();
        for pair in cuts.windows(2) {
            got.extend(dec.push(&stream[pair[0]..pair[1]]).unwrap());
        }
        dec.finish().unwrap();
        let want: Vec<GrpcMessage> = messages
            .into_iter()
            .map(|(compressed, payload)| GrpcMessage { compressed, payload })
            .collect();
        prop_assert_eq!(got, want);
    }

    #[test]
    fn random_bytes_never_panic_framing(
        chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..8),
        max in 0usize..128,
    ) {
        let mut dec = FrameDecoder::new(Side::Response, max);
        for chunk in &chunks {
            if let Ok(messages) = dec.push(chunk) {
                for m in messages {
                    prop_assert!(m.payload.len() <= max);
                }
            }
        }
        let _ = dec.finish();
    }

    #[test]
    fn random_bytes_never_panic_decoding(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let grpc = personas();
        let m = grpc.method("/personas.v1.Personas/GetPerson").unwrap();
        let _ = m.decode_response(&bytes);
        let t = things();
        let m = t.method("/t.v1.Things/Get").unwrap();
        if let Ok(mut msg) = m.decode_response(&bytes) {
            let _ = minimise(&mut msg, &strings(&["/documents/*/number", "/next/name"]));
            let _ = encode(&msg);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Methods

#[test]
fn methods_are_found_by_path() {
    let grpc = personas();
    let m = grpc.method("/personas.v1.Personas/GetPerson").unwrap();
    assert_eq!(m.full_name, "personas.v1.Personas/GetPerson");
    assert_eq!(m.input.full_name(), "personas.v1.GetPersonRequest");
    assert_eq!(m.output.full_name(), "personas.v1.Person");
    assert!(!m.client_streaming && !m.server_streaming);
    let m = grpc.method("/personas.v1.Personas/ListDocuments").unwrap();
    assert_eq!(m.output.full_name(), "personas.v1.Document");
    assert!(!m.client_streaming && m.server_streaming);
    let m = things().method("/t.v1.Things/Chat").unwrap();
    assert!(m.client_streaming && m.server_streaming);
}

#[test]
fn a_bound_method_reads_the_subject_of_each_request_message() {
    let grpc = personas();
    let m = grpc.method("/personas.v1.Personas/LookupPersons").unwrap();
    let binding = m.subject.as_ref().expect("LookupPersons binds the run");
    assert_eq!(
        (binding.field.name(), binding.scheme.as_str()),
        ("run", "CL-RUN")
    );
    // GetPersonRequest { run = "12345678-5" }, and the empty message.
    let mut bytes = vec![0x0a, 10];
    bytes.extend_from_slice(b"12345678-5");
    let msg = m.decode_request(&bytes).unwrap();
    assert_eq!(
        m.subject_of(&msg),
        Some(("CL-RUN", "12345678-5".to_string()))
    );
    let empty = m.decode_request(&[]).unwrap();
    assert_eq!(m.subject_of(&empty), Some(("CL-RUN", String::new())));
    // A method without a binding reads none.
    let t = things().method("/t.v1.Things/Get").unwrap();
    assert!(t.subject.is_none());
    assert_eq!(t.subject_of(&t.decode_request(&[]).unwrap()), None);
}

#[test]
fn malformed_paths_are_refused() {
    let grpc = personas();
    for path in [
        "",
        "/",
        "personas.v1.Personas/GetPerson",
        "/personas.v1.Personas/GetPerson/",
        "/personas.v1.Personas/GetPerson/x",
        "/personas.v1.Personas/GetPerson?x=1",
        "//personas.v1.Personas/GetPerson",
        "/personas.v1.Personas/",
        "/personas.v1.Personas",
        "/.personas.v1.Personas/GetPerson",
        "/personas..v1.Personas/GetPerson",
        "/personas.v1.Personas./GetPerson",
        "/personas.v1.Per%73onas/GetPerson",
        "/personas.v1.Personas/Get Person",
        "/1personas.v1.Personas/GetPerson",
    ] {
        let err = grpc.method(path).unwrap_err();
        assert_eq!(err.kind, ProblemKind::InvalidRequest, "{path:?}");
    }
    let long = format!("/{}/M", "a".repeat(2000));
    assert_eq!(
        grpc.method(&long).unwrap_err().kind,
        ProblemKind::InvalidRequest
    );
}

#[test]
fn unknown_methods_are_not_found() {
    let grpc = personas();
    for path in [
        "/personas.v1.Personas/Nope",
        "/personas.v2.Personas/GetPerson",
        "/personas.v1.Person/GetPerson",
        // Defined in the set (descriptor.proto has no service, but a message is no service).
        "/google.protobuf.FileDescriptorSet/Get",
    ] {
        let err = grpc.method(path).unwrap_err();
        assert_eq!(err.kind, ProblemKind::NotFound, "{path}");
    }
}

#[test]
fn a_bad_descriptor_set_is_refused() {
    // A file importing one the set does not hold.
    let missing_import = prost_types::FileDescriptorSet {
        file: vec![prost_types::FileDescriptorProto {
            name: Some("a.proto".into()),
            dependency: vec!["b.proto".into()],
            ..Default::default()
        }],
    }
    .encode_to_vec();
    for bytes in [&b"\xff\xff\xff"[..], b"\x0a\x03abc", &missing_import] {
        let err = CompiledGrpc::compile(bytes).unwrap_err();
        assert_eq!(err.kind, ProblemKind::InvalidServiceDescription);
    }
}

// ---------------------------------------------------------------------------------------------
// Strict decoding

#[test]
fn a_person_decodes() {
    let grpc = personas();
    let m = grpc.method("/personas.v1.Personas/GetPerson").unwrap();
    let p = person(&grpc);
    let decoded = m.decode_response(&p.encode_to_vec()).unwrap();
    assert_eq!(decoded, p);
    let empty = m.decode_response(&[]).unwrap();
    assert_eq!(empty.fields().count(), 0);
}

#[test]
fn an_unknown_field_is_refused() {
    let grpc = personas();
    let m = grpc.method("/personas.v1.Personas/GetPerson").unwrap();
    let mut bytes = person(&grpc).encode_to_vec();
    bytes.extend(UNKNOWN_99);
    let err = m.decode_response(&bytes).unwrap_err();
    assert_eq!(err.kind, ProblemKind::ResponseSchemaViolation);
    assert_eq!(err.extensions["field"], "");
    assert_eq!(err.extensions["number"], 99);
    assert_eq!(err.extensions["culprit"], "provider-backend");

    // The same in a request is the caller's fault.
    let mut req = DynamicMessage::new(m.input.clone());
    set(&mut req, "run", s("12345678-5"));
    let mut bytes = req.encode_to_vec();
    bytes.extend(UNKNOWN_99);
    let err = m.decode_request(&bytes).unwrap_err();
    assert_eq!(err.kind, ProblemKind::RequestSchemaViolation);
    assert!(!err.extensions.contains_key("culprit"));
}

#[test]
fn an_unknown_field_inside_address_is_refused() {
    let grpc = personas();
    let m = grpc.method("/personas.v1.Personas/GetPerson").unwrap();
    let mut p = person(&grpc);
    p.clear_field_by_name("address");
    let mut bytes = p.encode_to_vec();
    let mut addr = address(&grpc).encode_to_vec();
    addr.extend(UNKNOWN_99);
    push_len_field(&mut bytes, 4, &addr);
    let err = m.decode_response(&bytes).unwrap_err();
    assert_eq!(err.kind, ProblemKind::ResponseSchemaViolation);
    assert_eq!(err.extensions["field"], "/address");
    assert_eq!(err.extensions["message"], "personas.v1.Address");
    assert!(err.detail.contains("field number 99"), "{}", err.detail);
}

#[test]
fn unknown_fields_in_repeated_elements_and_map_values_are_refused() {
    let t = things();
    let m = t.method("/t.v1.Things/Get").unwrap();
    let mut d = doc(&t, "t.v1.Doc", "cedula", "1").encode_to_vec();
    d.extend(UNKNOWN_99);

    let mut bytes = Vec::new();
    push_len_field(
        &mut bytes,
        2,
        &doc(&t, "t.v1.Doc", "a", "2").encode_to_vec(),
    );
    push_len_field(&mut bytes, 2, &d);
    let err = m.decode_response(&bytes).unwrap_err();
    assert_eq!(err.extensions["field"], "/documents/*");

    // A map entry: key (1) "k", value (2) the document.
    let mut entry = Vec::new();
    push_len_field(&mut entry, 1, b"k");
    push_len_field(&mut entry, 2, &d);
    let mut bytes = Vec::new();
    push_len_field(&mut bytes, 4, &entry);
    let err = m.decode_response(&bytes).unwrap_err();
    assert_eq!(err.extensions["field"], "/by_id/*");

    // Deeper: in a document of the next holder.
    let mut next = Vec::new();
    push_len_field(&mut next, 2, &d);
    let mut bytes = Vec::new();
    push_len_field(&mut bytes, 7, &next);
    let err = m.decode_response(&bytes).unwrap_err();
    assert_eq!(err.extensions["field"], "/next/documents/*");
}

#[test]
fn malformed_bytes_are_refused() {
    let grpc = personas();
    let m = grpc.method("/personas.v1.Personas/GetPerson").unwrap();
    for bytes in [
        &b"\x0a\x05ab"[..],    // a string cut short
        b"\x0a",               // a key without its value
        b"\x08\x01",           // run (a string) sent as a varint
        b"\x0a\x02\xff\xfe",   // invalid UTF-8
        b"\x80",               // an unfinished varint key
        b"\x00\x01",           // field number 0
        b"\x0f",               // wire type 7
        b"\x22\x03\x0a\x05ab", // a broken address
    ] {
        let err = m.decode_response(bytes).unwrap_err();
        assert_eq!(err.kind, ProblemKind::ResponseSchemaViolation, "{bytes:?}");
        let err = m.decode_request(bytes).unwrap_err();
        assert_eq!(err.kind, ProblemKind::RequestSchemaViolation, "{bytes:?}");
    }
}

#[test]
fn an_undeclared_enum_number_is_refused() {
    let t = things();
    let m = t.method("/t.v1.Things/Get").unwrap();
    let mut d = doc(&t, "t.v1.Doc", "a", "1");
    set(&mut d, "kind", Value::EnumNumber(1));
    let mut bytes = Vec::new();
    push_len_field(&mut bytes, 2, &d.encode_to_vec());
    m.decode_response(&bytes).unwrap();

    set(&mut d, "kind", Value::EnumNumber(7));
    let mut bytes = Vec::new();
    push_len_field(&mut bytes, 2, &d.encode_to_vec());
    let err = m.decode_response(&bytes).unwrap_err();
    assert_eq!(err.extensions["field"], "/documents/*/kind");
}

#[test]
fn nesting_is_bounded() {
    let t = things();
    let m = t.method("/t.v1.Things/Get").unwrap();
    let nested = |levels: usize| {
        let mut bytes = Vec::new();
        push_len_field(&mut bytes, 1, b"leaf");
        for _ in 0..levels {
            let mut outer = Vec::new();
            push_len_field(&mut outer, 7, &bytes);
            bytes = outer;
        }
        bytes
    };
    m.decode_response(&nested(MAX_DEPTH)).unwrap();
    let err = m.decode_response(&nested(MAX_DEPTH + 1)).unwrap_err();
    assert_eq!(err.kind, ProblemKind::ResponseSchemaViolation);
    assert!(err.detail.contains("deeper"), "{}", err.detail);
    // Far deeper than prost's own limit: refused by the decoder, no stack overflow.
    let err = m.decode_response(&nested(5000)).unwrap_err();
    assert_eq!(err.kind, ProblemKind::ResponseSchemaViolation);
}

// ---------------------------------------------------------------------------------------------
// Minimisation

#[test]
fn name_and_whole_address() {
    let grpc = personas();
    let m = grpc.method("/personas.v1.Personas/GetPerson").unwrap();
    let mut p = person(&grpc);
    let disclosed = minimise(&mut p, &strings(&["/name", "/address"]));
    assert_eq!(
        disclosed,
        [
            "/address/commune",
            "/address/region",
            "/address/street",
            "/name"
        ]
    );
    let bytes = encode(&p);
    assert!(!contains(&bytes, b"FONASA"));
    assert!(!contains(&bytes, b"12345678-5"));
    let again = m.decode_response(&bytes).unwrap();
    assert_eq!(set_names(&again), ["address", "name"]);
    assert_eq!(again, p);
    let addr = again.get_field_by_name("address").unwrap();
    assert_eq!(
        set_names(addr.as_message().unwrap()),
        ["commune", "region", "street"]
    );
}

#[test]
fn only_the_street() {
    let grpc = personas();
    let m = grpc.method("/personas.v1.Personas/GetPerson").unwrap();
    let mut p = person(&grpc);
    let disclosed = minimise(&mut p, &strings(&["/address/street"]));
    assert_eq!(disclosed, ["/address/street"]);
    let again = m.decode_response(&encode(&p)).unwrap();
    assert_eq!(set_names(&again), ["address"]);
    let addr = again.get_field_by_name("address").unwrap();
    let addr = addr.as_message().unwrap();
    assert_eq!(set_names(addr), ["street"]);
    assert_eq!(
        addr.get_field_by_name("street").unwrap().as_str(),
        Some("Av. Libertador Bernardo O'Higgins 1234")
    );
}

#[test]
fn nothing_allowed_leaves_an_empty_message() {
    let grpc = personas();
    for allowed in [
        vec![],
        strings(&["/unknown"]),
        strings(&["name"]),
        strings(&["/name/x"]),
        strings(&["/address/*"]),
    ] {
        let mut p = person(&grpc);
        assert!(minimise(&mut p, &allowed).is_empty(), "{allowed:?}");
        assert!(encode(&p).is_empty(), "{allowed:?}");
    }
    // The empty pointer keeps everything.
    let mut p = person(&grpc);
    let disclosed = minimise(&mut p, &strings(&[""]));
    assert_eq!(disclosed.len(), 9);
    assert_eq!(p, person(&grpc));
}

#[test]
fn a_document_stream_keeps_only_the_type() {
    let grpc = personas();
    let m = grpc.method("/personas.v1.Personas/ListDocuments").unwrap();
    let allowed = strings(&["/type"]);
    let mut digest = StreamDigest::new();
    for (ty, number) in [("cedula", "A123"), ("pasaporte", "P456"), ("", "X789")] {
        let mut d = doc(&grpc, "personas.v1.Document", ty, number);
        set(&mut d, "issued_at", s("2020-01-01"));
        let payload = d.encode_to_vec();
        let mut d = m.decode_response(&payload).unwrap();
        let disclosed = minimise(&mut d, &allowed);
        let bytes = encode(&d);
        digest.update(&bytes);
        assert!(!contains(&bytes, number.as_bytes()));
        let again = m.decode_response(&bytes).unwrap();
        if ty.is_empty() {
            assert!(disclosed.is_empty());
            assert!(bytes.is_empty());
        } else {
            assert_eq!(disclosed, ["/type"]);
            assert_eq!(set_names(&again), ["type"]);
        }
    }
    assert_eq!(digest.finish().0, 3);
}

#[test]
fn repeated_messages_keep_the_named_field_of_each_element() {
    let t = things();
    let m = t.method("/t.v1.Things/Get").unwrap();
    let mut h = DynamicMessage::new(m.output.clone());
    set(&mut h, "name", s("h"));
    set(
        &mut h,
        "documents",
        Value::List(vec![
            Value::Message(doc(&t, "t.v1.Doc", "cedula", "111")),
            Value::Message(doc(&t, "t.v1.Doc", "pasaporte", "")),
            Value::Message(doc(&t, "t.v1.Doc", "licencia", "333")),
        ]),
    );
    let mut h2 = h.clone();

    let disclosed = minimise(&mut h, &strings(&["/documents/*/number"]));
    assert_eq!(disclosed, ["/documents/*/number"]);
    let again = m.decode_response(&encode(&h)).unwrap();
    assert_eq!(set_names(&again), ["documents"]);
    let docs = again.get_field_by_name("documents").unwrap();
    let docs = docs.as_list().unwrap();
    // The element without a number is dropped, not kept empty.
    assert_eq!(docs.len(), 2);
    for (d, n) in docs.iter().zip(["111", "333"]) {
        let d = d.as_message().unwrap();
        assert_eq!(set_names(d), ["number"]);
        assert_eq!(d.get_field_by_name("number").unwrap().as_str(), Some(n));
    }

    // Whole elements.
    let disclosed = minimise(&mut h2, &strings(&["/documents"]));
    assert_eq!(disclosed, ["/documents/*/number", "/documents/*/type"]);
    assert_eq!(
        h2.get_field_by_name("documents")
            .unwrap()
            .as_list()
            .unwrap()
            .len(),
        3
    );
}

#[test]
fn maps_repeated_scalars_optional_and_well_known_types() {
    let t = things();
    let m = t.method("/t.v1.Things/Get").unwrap();
    let ts = t
        .pool()
        .get_message_by_name("google.protobuf.Timestamp")
        .unwrap();
    let mut updated = DynamicMessage::new(ts);
    updated.set_field_by_name("seconds", Value::I64(1_700_000_000));
    let mut h = DynamicMessage::new(m.output.clone());
    set(&mut h, "name", s("h"));
    set(&mut h, "tags", Value::List(vec![s("x"), s("y")]));
    set(
        &mut h,
        "by_id",
        Value::Map(
            [(
                MapKey::String("k".into()),
                Value::Message(doc(&t, "t.v1.Doc", "a", "1")),
            )]
            .into(),
        ),
    );
    set(&mut h, "age", Value::I32(0)); // present although zero
    set(&mut h, "updated", Value::Message(updated));
    let full = h.clone();
    assert!(contains(&encode(&full), &[0x28, 0x00])); // field 5, varint 0

    let mut cut = full.clone();
    let disclosed = minimise(&mut cut, &strings(&["/name"]));
    assert_eq!(disclosed, ["/name"]);
    let bytes = encode(&cut);
    assert!(
        !contains(&bytes, &[0x28, 0x00]),
        "optional presence cleared"
    );
    let again = m.decode_response(&bytes).unwrap();
    assert_eq!(set_names(&again), ["name"]);

    let mut cut = full.clone();
    let disclosed = minimise(
        &mut cut,
        &strings(&["/tags", "/by_id", "/age", "/updated", "/by_id/k/type"]),
    );
    assert_eq!(disclosed, ["/age", "/by_id", "/tags", "/updated"]);
    let again = m.decode_response(&encode(&cut)).unwrap();
    assert_eq!(set_names(&again), ["age", "by_id", "tags", "updated"]);

    // `/tags/*` keeps repeated scalars too; a pointer into a map keeps nothing.
    let mut cut = full.clone();
    let disclosed = minimise(&mut cut, &strings(&["/tags/*", "/by_id/*/type"]));
    assert_eq!(disclosed, ["/tags"]);
    assert_eq!(set_names(&cut), ["tags"]);

    // Kept whole, the message discloses the well-known type and the map as leaves.
    let mut cut = full.clone();
    let disclosed = minimise(&mut cut, &strings(&["/name", ""]));
    assert_eq!(disclosed, ["/age", "/by_id", "/name", "/tags", "/updated"]);
    assert_eq!(cut, full);
}

#[test]
fn an_empty_message_kept_whole_is_disclosed_as_a_leaf() {
    let grpc = personas();
    let desc = grpc
        .pool()
        .get_message_by_name("personas.v1.Person")
        .unwrap();
    let addr = grpc
        .pool()
        .get_message_by_name("personas.v1.Address")
        .unwrap();
    let mut p = DynamicMessage::new(desc);
    set(&mut p, "address", Value::Message(DynamicMessage::new(addr)));
    let mut q = p.clone();
    assert_eq!(minimise(&mut p, &strings(&["/address"])), ["/address"]);
    assert_eq!(encode(&p), [0x22, 0x00]);
    // Not named whole: an empty address carries nothing allowed and is cleared.
    assert!(minimise(&mut q, &strings(&["/address/street"])).is_empty());
    assert!(encode(&q).is_empty());
}

#[test]
fn minimise_strips_unknown_fields_even_in_kept_subtrees() {
    let grpc = personas();
    let desc = grpc
        .pool()
        .get_message_by_name("personas.v1.Person")
        .unwrap();
    let mut p = person(&grpc);
    p.clear_field_by_name("address");
    let mut bytes = p.encode_to_vec();
    let mut addr = address(&grpc).encode_to_vec();
    addr.extend(UNKNOWN_99);
    push_len_field(&mut bytes, 4, &addr);
    bytes.extend(UNKNOWN_99);
    // Lenient decoding keeps the unknown fields; minimise drops them.
    let mut lenient = DynamicMessage::decode(desc, bytes.as_slice()).unwrap();
    minimise(&mut lenient, &strings(&["/address", "/name"]));
    let out = encode(&lenient);
    assert!(!contains(&out, &UNKNOWN_99));
    let m = grpc.method("/personas.v1.Personas/GetPerson").unwrap();
    m.decode_response(&out).unwrap();
}

// ---------------------------------------------------------------------------------------------
// Stream digests

fn digest_of(messages: &[&[u8]]) -> (u64, String) {
    let mut d = StreamDigest::new();
    for m in messages {
        d.update(m);
    }
    d.finish()
}

#[test]
fn stream_digest_is_deterministic_and_order_sensitive() {
    assert_eq!(digest_of(&[]), (0, "00".repeat(32)));
    let ab = digest_of(&[b"a", b"b"]);
    assert_eq!(ab, digest_of(&[b"a", b"b"]));
    assert_eq!(ab.0, 2);
    assert_ne!(ab.1, digest_of(&[b"b", b"a"]).1);
    // Boundaries count: the same bytes cut differently differ.
    assert_ne!(digest_of(&[b"ab", b"c"]).1, digest_of(&[b"a", b"bc"]).1);
    assert_ne!(digest_of(&[b"abc"]).1, digest_of(&[b"abc", b""]).1);
    let mut running = StreamDigest::default();
    running.update(b"a");
    assert_eq!(running.count(), 1);
}

#[test]
fn stream_digest_values_read_back_strictly() {
    let mut d = StreamDigest::new();
    d.update(b"one");
    d.update(b"two");
    let v = parse_stream_digest(&d.value()).unwrap();
    assert!(v.matches(&d));
    assert_eq!(v.count, 2);
    let mut other = d.clone();
    other.update(b"three");
    assert!(!v.matches(&other));
    assert!(
        parse_stream_digest(&StreamDigest::new().value())
            .unwrap()
            .count
            == 0
    );
    let zeros = "0".repeat(64);
    for bad in [
        String::new(),
        ":".into(),
        format!("1{zeros}"),
        format!(":{zeros}"),
        format!("01:{zeros}"),
        format!("-1:{zeros}"),
        format!("+1:{zeros}"),
        format!("1:{}", "0".repeat(63)),
        format!("1:{}", "0".repeat(65)),
        format!("1:{}", "A".repeat(64)),
        format!("1:{zeros}:"),
        format!("18446744073709551616:{zeros}"),
        format!(" 1:{zeros}"),
    ] {
        let err = parse_stream_digest(&bad).unwrap_err();
        assert_eq!(err.kind, ProblemKind::SignatureInvalid, "{bad:?}");
    }
}

proptest! {
    #[test]
    fn stream_digest_values_round_trip(
        messages in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..32), 0..6),
    ) {
        let mut d = StreamDigest::new();
        for m in &messages {
            d.update(m);
        }
        let v = parse_stream_digest(&d.value()).unwrap();
        prop_assert!(v.matches(&d));
        prop_assert_eq!(v.count, messages.len() as u64);
    }

    #[test]
    fn random_stream_digest_values_never_panic(value in "\\PC{0,90}") {
        if let Ok(v) = parse_stream_digest(&value) {
            // What parses prints back exactly: the form is canonical.
            prop_assert_eq!(format!("{}:{}", v.count, hex::encode(v.head)), value);
        }
    }
}

#[test]
fn reflection_sets_describe_only_the_allowed_methods() {
    let grpc = personas();
    let ops = strings(&["personas.v1.Personas/GetPerson"]);
    let set = grpc.reflection_set(&ops);
    let pool = prost_reflect::DescriptorPool::decode(set.as_slice()).expect("a whole set");
    let service = pool.get_service_by_name("personas.v1.Personas").unwrap();
    let methods: Vec<String> = service.methods().map(|m| m.name().to_string()).collect();
    assert_eq!(methods, ["GetPerson"]);
    // Messages stay, so the method resolves; no operation leaves no service at all.
    assert!(pool.get_message_by_name("personas.v1.Document").is_some());
    let none = grpc.reflection_set(&[]);
    let pool = prost_reflect::DescriptorPool::decode(none.as_slice()).unwrap();
    assert_eq!(pool.services().count(), 0);
}

#[test]
fn stream_digest_follows_the_documented_formula() {
    let mut h = [0u8; 32];
    for m in [&b"first"[..], b"", b"third message"] {
        let mut hasher = Sha256::new();
        hasher.update(b"enlace-grpc-stream-v1\0");
        hasher.update(h);
        hasher.update((m.len() as u64).to_be_bytes());
        hasher.update(m);
        h = hasher.finalize().into();
    }
    assert_eq!(
        digest_of(&[b"first", b"", b"third message"]),
        (3, hex::encode(h))
    );
}

#[test]
fn a_method_declared_without_side_effects_is_known_as_such() {
    let demo = personas();
    for m in [
        "GetPerson",
        "ListDocuments",
        "VerifyIdentities",
        "LookupPersons",
    ] {
        let info = demo.method(&format!("/personas.v1.Personas/{m}")).unwrap();
        assert!(info.no_side_effects, "{m} only reads");
    }
    // A method that says nothing may change something: it is logged before it is forwarded.
    let get = things().method("/t.v1.Things/Get").unwrap();
    assert!(!get.no_side_effects);
}

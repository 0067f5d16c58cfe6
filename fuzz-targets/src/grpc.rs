//! gRPC: the length-prefixed framing of a stream, and the strict protobuf decoding of one
//! message of the demo `personas.v1` service.

use std::sync::OnceLock;

use enlace_core::problem::{Problem, ProblemKind};
use enlace_description::grpc::{self as wire, CompiledGrpc, FrameDecoder, GrpcMessage, Side};

/// The largest message the framing target's decoder accepts: small, so that the limit is hit.
const MAX_MESSAGE: usize = 64;

/// A stream (after the first byte, which sets the chunk size) cut into messages: whole or in
/// chunks gives the same messages or the same refusal; no message is over the limit; the
/// messages framed again are the stream's bytes.
pub fn grpc_framing(data: &[u8]) {
    let Some((&chunk, stream)) = data.split_first() else {
        return;
    };
    let size = usize::from(chunk) + 1;
    let at_once = decode(stream, stream.len().max(1));
    let chunked = decode(stream, size);
    match (&at_once, &chunked) {
        (Ok(a), Ok(b)) => assert_eq!(a, b, "chunks of {size} bytes"),
        (Err(a), Err(b)) => assert_eq!(a.kind, b.kind),
        _ => panic!("whole: {at_once:?}, in chunks of {size} bytes: {chunked:?}"),
    }
    if let Ok(messages) = at_once {
        let mut framed = Vec::new();
        for m in &messages {
            assert!(m.payload.len() <= MAX_MESSAGE);
            framed.extend(wire::encode_frame(&m.payload, m.compressed).expect("a small message"));
        }
        assert_eq!(framed, stream);
    }
}

/// The messages of a whole stream pushed in chunks of `size` bytes.
fn decode(stream: &[u8], size: usize) -> Result<Vec<GrpcMessage>, Problem> {
    let mut decoder = FrameDecoder::new(Side::Request, MAX_MESSAGE);
    let mut messages = Vec::new();
    for part in stream.chunks(size) {
        messages.extend(decoder.push(part)?);
    }
    decoder.finish()?;
    Ok(messages)
}

fn personas() -> &'static CompiledGrpc {
    static COMPILED: OnceLock<CompiledGrpc> = OnceLock::new();
    COMPILED.get_or_init(|| {
        CompiledGrpc::compile(enlace_proto::PERSONAS_DESCRIPTOR_SET)
            .expect("the demo descriptor set compiles")
    })
}

const METHODS: [&str; 4] = [
    "/personas.v1.Personas/GetPerson",
    "/personas.v1.Personas/ListDocuments",
    "/personas.v1.Personas/VerifyIdentities",
    "/personas.v1.Personas/LookupPersons",
];

/// One message (after the first byte, which picks the method and the direction) decoded
/// strictly: a message that decodes re-encodes to bytes that decode and re-encode to the same
/// bytes (the encoding is canonical); a refusal is a schema violation of its side.
pub fn protobuf_decode(data: &[u8]) {
    let Some((&pick, payload)) = data.split_first() else {
        return;
    };
    let method = personas()
        .method(METHODS[usize::from(pick) % METHODS.len()])
        .expect("a method of the demo service");
    let (desc, side, violation) = if pick & 0x80 == 0 {
        (
            &method.input,
            Side::Request,
            ProblemKind::RequestSchemaViolation,
        )
    } else {
        (
            &method.output,
            Side::Response,
            ProblemKind::ResponseSchemaViolation,
        )
    };
    match wire::decode_strict(desc, payload, side) {
        Ok(message) => {
            let bytes = wire::encode(&message);
            let again = wire::decode_strict(desc, &bytes, side)
                .expect("a decoded message re-encodes to a valid one");
            assert_eq!(wire::encode(&again), bytes, "the encoding is not canonical");
        }
        Err(p) => assert_eq!(p.kind, violation, "{p:?}"),
    }
}

//! Generic gRPC relaying: message framing, method lookup, strict decoding, minimisation and
//! stream digests, all driven by the service version's FileDescriptorSet (no generated code).
//!
//! The pieces, in the order a relay uses them:
//! 1. [`FrameDecoder`] cuts HTTP/2 DATA bytes into length-prefixed gRPC messages as they
//!    arrive; [`encode_frame`] writes one back.
//! 2. [`CompiledGrpc::method`] finds the method of a request path (`/pkg.Service/Method`).
//! 3. [`decode_strict`] reads one message and refuses malformed bytes, fields the description
//!    does not declare (at every nesting level), extensions, undeclared enum numbers and nesting
//!    deeper than [`MAX_DEPTH`].
//! 4. [`minimise`] clears everything a contract's allowed field pointers do not cover;
//!    [`encode`] writes the message again.
//! 5. [`StreamDigest`] chains the messages of one stream into a digest a signature can cover.
//!
//! Compression: compressed messages are refused, never inflated ([`check_encoding`],
//! [`GrpcMessage::identity`]), as `unsupported-encoding` (gRPC UNIMPLEMENTED, as the gRPC spec
//! has a server answer an encoding it does not support). Inflating untrusted input needs a
//! bounded decompressor and buys little between nodes on a private network; a peer must send
//! `grpc-encoding: identity` (or no `grpc-encoding` at all), and a relay advertises
//! `grpc-accept-encoding: identity`.
//!
//! Content types: only `application/grpc` and `application/grpc+proto` ([`check_content_type`]);
//! `+json` and other codecs are refused, since messages are read as protobuf.

use std::collections::{BTreeSet, HashMap};
use std::panic::{AssertUnwindSafe, catch_unwind};

use enlace_core::problem::{Culprit, Problem, ProblemKind};
use prost::Message;
use prost_reflect::{
    DescriptorPool, FieldDescriptor, Kind, MessageDescriptor, ReflectMessage, Value,
};
use sha2::{Digest, Sha256};

use crate::model::MAX_DESCRIPTION_BYTES;

/// A decoded message, for callers that hold one without depending on prost-reflect.
pub use prost_reflect::DynamicMessage;

mod framing;
mod minimise;
#[cfg(test)]
mod tests;

pub use framing::*;
pub use minimise::*;

/// Length of the prefix before every gRPC message: a compressed flag and a big-endian u32.
pub const PREFIX_LEN: usize = 5;
/// Deepest nesting of messages [`decode_strict`] accepts (the root message is depth 0).
pub const MAX_DEPTH: usize = 32;
/// Domain separator of [`StreamDigest`].
pub const STREAM_DIGEST_DOMAIN: &[u8] = b"enlace-grpc-stream-v1\0";

/// Which way a message travels; decides the problem a bad message becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// From the consumer towards the provider: a bad message is the caller's fault.
    Request,
    /// From the provider's backend: a bad message is the backend's fault.
    Response,
}

impl Side {
    fn violation(self) -> ProblemKind {
        match self {
            Side::Request => ProblemKind::RequestSchemaViolation,
            Side::Response => ProblemKind::ResponseSchemaViolation,
        }
    }

    fn problem(self, kind: ProblemKind, detail: impl Into<String>) -> Problem {
        let problem = Problem::new(kind, detail);
        match self {
            Side::Request => problem,
            Side::Response => problem.caused_by(Culprit::ProviderBackend),
        }
    }

    fn what(self) -> &'static str {
        match self {
            Side::Request => "request",
            Side::Response => "response",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Methods

/// A service version's descriptor set, decoded once, for looking methods up.
#[derive(Debug, Clone)]
pub struct CompiledGrpc {
    pool: DescriptorPool,
}

/// One method of the service: its message types and streaming.
#[derive(Debug, Clone)]
pub struct MethodInfo {
    /// `package.Service/Method`, the operation id in the description.
    pub full_name: String,
    pub input: MessageDescriptor,
    pub output: MessageDescriptor,
    pub client_streaming: bool,
    pub server_streaming: bool,
    /// The request field naming the data subject (`(enlace.subject)`), if the method binds one.
    pub subject: Option<SubjectBinding>,
    /// The method declares `option idempotency_level = NO_SIDE_EFFECTS`: it only reads, like a
    /// REST GET, so a one-message request may be forwarded while its log record commits.
    pub no_side_effects: bool,
}

/// A request field bound to the data subject, and the scheme of the identifier it holds.
#[derive(Debug, Clone)]
pub struct SubjectBinding {
    pub field: FieldDescriptor,
    /// `CL-RUN`.
    pub scheme: String,
}

impl MethodInfo {
    /// The person a decoded request message asks about, where the method binds one: the
    /// scheme and the field's value (empty when the field is not set).
    pub fn subject_of(&self, msg: &DynamicMessage) -> Option<(&str, String)> {
        let binding = self.subject.as_ref()?;
        let value = match msg.get_field(&binding.field).as_ref() {
            Value::String(s) => s.clone(),
            _ => String::new(),
        };
        Some((binding.scheme.as_str(), value))
    }

    /// [`decode_strict`] of one request message.
    pub fn decode_request(&self, payload: &[u8]) -> Result<DynamicMessage, Problem> {
        decode_strict(&self.input, payload, Side::Request)
    }

    /// [`decode_strict`] of one response message.
    pub fn decode_response(&self, payload: &[u8]) -> Result<DynamicMessage, Problem> {
        decode_strict(&self.output, payload, Side::Response)
    }
}

impl CompiledGrpc {
    /// Decodes the descriptor set the registry stored for a service version (the `stored`
    /// bytes of a protobuf [`crate::Description`]). A malformed set is refused, including one
    /// on which the decoder panics.
    pub fn compile(stored_descriptor_set: &[u8]) -> Result<CompiledGrpc, Problem> {
        if stored_descriptor_set.len() > MAX_DESCRIPTION_BYTES {
            return Err(Problem::new(
                ProblemKind::BodyTooLarge,
                format!(
                    "the descriptor set is {} bytes; at most {MAX_DESCRIPTION_BYTES} are accepted",
                    stored_descriptor_set.len()
                ),
            )
            .with("limit", MAX_DESCRIPTION_BYTES));
        }
        let pool = crate::protobuf::decode_pool(stored_descriptor_set).map_err(|err| {
            invalid_set(format!(
                "not a valid, self-contained FileDescriptorSet: {err}"
            ))
        })?;
        Ok(CompiledGrpc { pool })
    }

    /// The descriptor pool, for callers that need more than [`CompiledGrpc::method`].
    pub fn pool(&self) -> &DescriptorPool {
        &self.pool
    }

    /// An encoded FileDescriptorSet for server reflection that describes only the methods in
    /// `operations` (`package.Service/Method`): other methods are removed, and so are services
    /// left without one. Messages, enums and imports stay, so every kept method resolves.
    /// Custom options (such as `(enlace.class)`) are not carried over.
    pub fn reflection_set(&self, operations: &[String]) -> Vec<u8> {
        let mut set = prost_types::FileDescriptorSet::default();
        for file in self.pool.file_descriptor_protos() {
            let mut file = file.clone();
            let package = file.package.clone().unwrap_or_default();
            for service in &mut file.service {
                let prefix = match package.as_str() {
                    "" => service.name().to_string(),
                    p => format!("{p}.{}", service.name()),
                };
                service.method.retain(|m| {
                    let op = format!("{prefix}/{}", m.name());
                    operations.contains(&op)
                });
            }
            file.service.retain(|s| !s.method.is_empty());
            set.file.push(file);
        }
        set.encode_to_vec()
    }

    /// The method of a gRPC request path, exactly `/package.Service/Method`. Anything else
    /// (a missing leading `/`, extra segments, a query, characters outside identifiers) is
    /// refused as `InvalidRequest`; a method the set does not define, or one of a service in
    /// the `google.*`, `grpc.*` or `enlace` packages (never an operation), is `NotFound`.
    pub fn method(&self, path: &str) -> Result<MethodInfo, Problem> {
        let (service_name, method_name) = split_method_path(path)?;
        let not_found = || {
            Problem::new(
                ProblemKind::NotFound,
                format!("the service version has no gRPC method `{service_name}/{method_name}`"),
            )
            .with("operation", format!("{service_name}/{method_name}"))
        };
        let Some(service) = self.pool.get_service_by_name(service_name) else {
            return Err(not_found());
        };
        if is_infrastructure_package(service.package_name()) {
            return Err(not_found());
        }
        let Some(method) = service.methods().find(|m| m.name() == method_name) else {
            return Err(not_found());
        };
        // Checked at upload already; a set that slipped through binds nothing it cannot say.
        let ext = crate::protobuf::subject_extension(&self.pool)?;
        let subject = crate::protobuf::subject_binding(&method.input(), ext.as_ref())?
            .map(|(field, scheme)| SubjectBinding { field, scheme });
        Ok(MethodInfo {
            full_name: format!("{}/{}", service.full_name(), method.name()),
            input: method.input(),
            output: method.output(),
            client_streaming: method.is_client_streaming(),
            server_streaming: method.is_server_streaming(),
            subject,
            no_side_effects: method
                .method_descriptor_proto()
                .options
                .as_ref()
                .and_then(|o| o.idempotency_level)
                == Some(prost_types::method_options::IdempotencyLevel::NoSideEffects as i32),
        })
    }
}

fn invalid_set(detail: impl Into<String>) -> Problem {
    Problem::new(ProblemKind::InvalidServiceDescription, detail)
}

/// Splits `/pkg.Service/Method` into (`pkg.Service`, `Method`), refusing any other shape.
fn split_method_path(path: &str) -> Result<(&str, &str), Problem> {
    let refuse = |why: &str| {
        Err(Problem::new(
            ProblemKind::InvalidRequest,
            format!("a gRPC path must be `/package.Service/Method`: {why}"),
        )
        .with("trick", "grpc-path"))
    };
    if path.len() > 1024 {
        return refuse("longer than 1024 bytes");
    }
    let Some(rest) = path.strip_prefix('/') else {
        return refuse("it does not start with `/`");
    };
    let Some((service, method)) = rest.split_once('/') else {
        return refuse("no `/` between the service and the method");
    };
    if !service.split('.').all(is_identifier) {
        return refuse("the service is not a dotted name of identifiers");
    }
    if !is_identifier(method) {
        return refuse("the method is not an identifier");
    }
    Ok((service, method))
}

/// A protobuf identifier: `[A-Za-z_][A-Za-z0-9_]*`.
fn is_identifier(s: &str) -> bool {
    let mut bytes = s.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Services in these packages are never operations (as in `protobuf::describe`).
fn is_infrastructure_package(package: &str) -> bool {
    let under = |root: &str| {
        package == root
            || package
                .strip_prefix(root)
                .is_some_and(|rest| rest.starts_with('.'))
    };
    under("google") || under("grpc") || package == "enlace"
}

// ---------------------------------------------------------------------------------------------
// Strict decoding

/// Decodes one message and checks it against its descriptor, at every nesting level (message
/// fields, repeated elements and map values): malformed bytes (bad varints, truncation, wrong
/// wire types, invalid UTF-8 in strings), fields the descriptor does not declare, extensions,
/// enum numbers the enum does not declare, and nesting deeper than [`MAX_DEPTH`] are refused
/// as `RequestSchemaViolation` or `ResponseSchemaViolation` after `side`, with the pointer of
/// the offending place in `field` (`""` for the root message).
pub fn decode_strict(
    desc: &MessageDescriptor,
    payload: &[u8],
    side: Side,
) -> Result<DynamicMessage, Problem> {
    let decoded = catch_unwind(AssertUnwindSafe(|| {
        DynamicMessage::decode(desc.clone(), payload)
    }));
    let message = match decoded {
        Ok(Ok(message)) => message,
        Ok(Err(err)) => {
            return Err(side.problem(
                side.violation(),
                format!(
                    "the {} message is not a valid `{}`: {err}",
                    side.what(),
                    desc.full_name()
                ),
            ));
        }
        Err(_) => {
            return Err(side.problem(
                side.violation(),
                format!(
                    "the {} message is not a valid `{}` (the decoder gave up)",
                    side.what(),
                    desc.full_name()
                ),
            ));
        }
    };
    let mut path = String::new();
    check_message(&message, side, &mut path, 0)?;
    Ok(message)
}

fn check_message(
    message: &DynamicMessage,
    side: Side,
    path: &mut String,
    depth: usize,
) -> Result<(), Problem> {
    let refuse = |path: &str, detail: String| {
        Err(side
            .problem(side.violation(), detail)
            .with("field", path)
            .with("message", message.descriptor().full_name()))
    };
    if depth > MAX_DEPTH {
        return refuse(
            path,
            format!(
                "the {} message nests deeper than {MAX_DEPTH} messages at `{path}`",
                side.what()
            ),
        );
    }
    if let Some(unknown) = message.unknown_fields().next() {
        let number = unknown.number();
        let detail = format!(
            "the {} message has field number {number} at `{path}`, which `{}` does not declare",
            side.what(),
            message.descriptor().full_name()
        );
        return refuse(path, detail).map_err(|p| p.with("number", number));
    }
    if let Some((extension, _)) = message.extensions().next() {
        return refuse(
            path,
            format!(
                "the {} message sets extension `{}` at `{path}`; extensions are not relayed",
                side.what(),
                extension.full_name()
            ),
        );
    }
    for (field, value) in message.fields() {
        let len = path.len();
        path.push('/');
        path.push_str(field.name());
        let result = check_value(&field, value, side, path, depth);
        path.truncate(len);
        result?;
    }
    Ok(())
}

fn check_value(
    field: &FieldDescriptor,
    value: &Value,
    side: Side,
    path: &mut String,
    depth: usize,
) -> Result<(), Problem> {
    match value {
        Value::Message(child) => check_message(child, side, path, depth + 1),
        Value::EnumNumber(number) => check_enum(field, *number, side, path),
        Value::List(items) => {
            let len = path.len();
            path.push_str("/*");
            let result = items
                .iter()
                .try_for_each(|item| check_value(field, item, side, path, depth));
            path.truncate(len);
            result
        }
        Value::Map(entries) => {
            let value_field = match field.kind() {
                Kind::Message(entry) if field.is_map() => entry.map_entry_value_field(),
                _ => return Ok(()),
            };
            let len = path.len();
            path.push_str("/*");
            let result = entries
                .values()
                .try_for_each(|v| check_value(&value_field, v, side, path, depth));
            path.truncate(len);
            result
        }
        _ => Ok(()),
    }
}

fn check_enum(field: &FieldDescriptor, number: i32, side: Side, path: &str) -> Result<(), Problem> {
    let Kind::Enum(declared) = field.kind() else {
        return Ok(());
    };
    if declared.get_value(number).is_some() {
        return Ok(());
    }
    Err(side
        .problem(
            side.violation(),
            format!(
                "the {} message has value {number} at `{path}`, which enum `{}` does not declare",
                side.what(),
                declared.full_name()
            ),
        )
        .with("field", path))
}

// ---------------------------------------------------------------------------------------------
// Stream digests

/// A hash chain over the messages of one gRPC stream, so one signature at the end of a stream
/// (in the trailers) covers every message, their order and their number.
///
/// `h_0` is 32 zero bytes; for the i-th message (its bytes as framed, without the 5-byte
/// prefix), `h_i = SHA-256("enlace-grpc-stream-v1\0" || h_{i-1} || u64_be(len) || bytes)`.
/// [`StreamDigest::finish`] gives the count and `h_n` in lower-case hex; an empty stream gives
/// `(0, "00…00")`. The length prefix keeps message boundaries unambiguous, the chaining makes
/// the result depend on order, and the domain separator keeps it apart from every other hash
/// Enlace signs. Each side computes it over the messages it sends or receives after
/// minimisation, so the digest covers exactly what was relayed.
#[derive(Debug, Clone)]
pub struct StreamDigest {
    head: [u8; 32],
    count: u64,
}

impl Default for StreamDigest {
    fn default() -> Self {
        StreamDigest::new()
    }
}

impl StreamDigest {
    pub fn new() -> StreamDigest {
        StreamDigest {
            head: [0; 32],
            count: 0,
        }
    }

    /// Chains the next message.
    pub fn update(&mut self, message_bytes: &[u8]) {
        let mut hasher = Sha256::new();
        hasher.update(STREAM_DIGEST_DOMAIN);
        hasher.update(self.head);
        hasher.update((message_bytes.len() as u64).to_be_bytes());
        hasher.update(message_bytes);
        self.head = hasher.finalize().into();
        self.count += 1;
    }

    /// Messages chained so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The number of messages and the last link in lower-case hex.
    pub fn finish(self) -> (u64, String) {
        (self.count, hex::encode(self.head))
    }

    /// The value carried in `enlace-stream-digest`: `COUNT:HEX`, the count in decimal and the
    /// last link in 64 lower-case hex digits.
    pub fn value(&self) -> String {
        format!("{}:{}", self.count, hex::encode(self.head))
    }
}

/// A `COUNT:HEX` value read back ([`parse_stream_digest`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainValue {
    pub count: u64,
    pub head: [u8; 32],
}

impl ChainValue {
    /// Whether `digest` is this value.
    pub fn matches(&self, digest: &StreamDigest) -> bool {
        self.count == digest.count && self.head == digest.head
    }
}

/// Reads a `COUNT:HEX` stream digest strictly: the count as 1 to 20 decimal digits without a
/// leading zero (`0` itself excepted) that fits in a u64, one `:`, 64 lower-case hex digits.
/// Anything else is refused as `SignatureInvalid` (the value arrives from a peer and is what
/// the peer's signature covers).
pub fn parse_stream_digest(value: &str) -> Result<ChainValue, Problem> {
    let bad = |why: &str| {
        let shown: String = value.chars().take(100).collect();
        Problem::new(
            ProblemKind::SignatureInvalid,
            format!("stream digest `{shown}` is malformed: {why}"),
        )
    };
    let (count, head) = value
        .split_once(':')
        .ok_or_else(|| bad("no `:` between the count and the digest"))?;
    if count.is_empty() || count.len() > 20 || !count.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad("the count is not 1 to 20 decimal digits"));
    }
    if count.len() > 1 && count.starts_with('0') {
        return Err(bad("the count has a leading zero"));
    }
    let count: u64 = count.parse().map_err(|_| bad("the count is too large"))?;
    if head.len() != 64 || !head.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(bad("the digest is not 64 lower-case hex digits"));
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(head, &mut out).map_err(|_| bad("the digest is not hex"))?;
    Ok(ChainValue { count, head: out })
}

//! gRPC message framing: the length-prefixed messages of HTTP/2 DATA, cut as they arrive and
//! written back, and the content-type and encoding checks.

use super::*;

// ---------------------------------------------------------------------------------------------
// Framing

/// One gRPC message as framed on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrpcMessage {
    /// The compressed flag (the message is encoded with the stream's `grpc-encoding`).
    pub compressed: bool,
    /// The message bytes, without the 5-byte prefix.
    pub payload: Vec<u8>,
}

impl GrpcMessage {
    /// The payload of an uncompressed message; a compressed one is refused
    /// (`UnsupportedEncoding`), since Enlace relays identity encoding only.
    pub fn identity(self) -> Result<Vec<u8>, Problem> {
        if self.compressed {
            return Err(compression_refused());
        }
        Ok(self.payload)
    }
}

/// Checks a `grpc-encoding` header: absent or `identity` is accepted, anything else is refused
/// with `UnsupportedEncoding`.
pub fn check_encoding(grpc_encoding: Option<&str>) -> Result<(), Problem> {
    match grpc_encoding.map(str::trim) {
        None | Some("identity") => Ok(()),
        Some(other) => Err(compression_refused().with("grpc-encoding", other)),
    }
}

pub(super) fn compression_refused() -> Problem {
    Problem::new(
        ProblemKind::UnsupportedEncoding,
        "compressed gRPC messages are not relayed; send identity encoding \
         (grpc-accept-encoding: identity)",
    )
}

/// The content types relayed: protobuf messages only.
pub const CONTENT_TYPES: &[&str] = &["application/grpc", "application/grpc+proto"];

/// Checks a gRPC `content-type`: `application/grpc` or `application/grpc+proto` (ASCII case
/// ignored) is accepted; anything else (`application/grpc+json`, another codec, none) is refused
/// with `UnsupportedMediaType`, naming what was sent.
pub fn check_content_type(content_type: Option<&str>) -> Result<(), Problem> {
    let sent = content_type.map(str::trim).unwrap_or("");
    if CONTENT_TYPES.iter().any(|ct| sent.eq_ignore_ascii_case(ct)) {
        return Ok(());
    }
    let shown: String = sent.chars().take(100).collect();
    Err(Problem::new(
        ProblemKind::UnsupportedMediaType,
        format!(
            "gRPC content type `{shown}` is not relayed: only application/grpc and \
             application/grpc+proto (protobuf messages)"
        ),
    )
    .with("content-type", shown))
}

/// Cuts a byte stream into gRPC messages incrementally, as DATA frames arrive: a message may
/// be split across chunks and a chunk may hold several messages.
///
/// A declared length above `max_message` is refused (`BodyTooLarge`) as soon as its prefix is
/// read, before any of the message is buffered; so the decoder never holds more than
/// `max_message + 4` bytes plus the last chunk. A compressed flag other than 0 or 1 is refused.
/// After an error the decoder refuses everything.
#[derive(Debug)]
pub struct FrameDecoder {
    side: Side,
    max_message: usize,
    buf: Vec<u8>,
    failed: Option<Problem>,
}

impl FrameDecoder {
    /// A decoder for messages of at most `max_message` bytes travelling `side`-wards.
    pub fn new(side: Side, max_message: usize) -> FrameDecoder {
        FrameDecoder {
            side,
            max_message,
            buf: Vec::new(),
            failed: None,
        }
    }

    /// Adds the next bytes of the stream and returns the messages they complete, in order.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<GrpcMessage>, Problem> {
        if let Some(problem) = &self.failed {
            return Err(problem.clone());
        }
        match self.take_messages(bytes) {
            Ok(messages) => Ok(messages),
            Err(problem) => {
                self.buf = Vec::new();
                self.failed = Some(problem.clone());
                Err(problem)
            }
        }
    }

    fn take_messages(&mut self, mut bytes: &[u8]) -> Result<Vec<GrpcMessage>, Problem> {
        let mut messages = Vec::new();
        loop {
            // Complete the prefix first, so the declared length is checked before buffering.
            if self.buf.len() < PREFIX_LEN {
                let want = (PREFIX_LEN - self.buf.len()).min(bytes.len());
                self.buf.extend_from_slice(&bytes[..want]);
                bytes = &bytes[want..];
                if self.buf.len() < PREFIX_LEN {
                    return Ok(messages);
                }
                self.check_prefix()?;
            }
            let total = PREFIX_LEN + self.declared_len();
            let want = (total - self.buf.len()).min(bytes.len());
            self.buf.extend_from_slice(&bytes[..want]);
            bytes = &bytes[want..];
            if self.buf.len() < total {
                return Ok(messages);
            }
            let mut payload = std::mem::take(&mut self.buf);
            let compressed = payload[0] == 1;
            payload.drain(..PREFIX_LEN);
            messages.push(GrpcMessage {
                compressed,
                payload,
            });
        }
    }

    fn declared_len(&self) -> usize {
        let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]);
        // u32 always fits in usize on the 32- and 64-bit targets Enlace builds for.
        usize::try_from(len).unwrap_or(usize::MAX - PREFIX_LEN)
    }

    fn check_prefix(&self) -> Result<(), Problem> {
        let flag = self.buf[0];
        if flag > 1 {
            return Err(self
                .side
                .problem(
                    self.side.violation(),
                    format!(
                        "a gRPC {} message has compressed flag {flag}; it must be 0 or 1",
                        self.side.what()
                    ),
                )
                .with("trick", "grpc-flag"));
        }
        let len = self.declared_len();
        if len > self.max_message {
            return Err(self
                .side
                .problem(
                    ProblemKind::BodyTooLarge,
                    format!(
                        "a gRPC {} message declares {len} bytes; at most {} are accepted",
                        self.side.what(),
                        self.max_message
                    ),
                )
                .with("limit", self.max_message));
        }
        Ok(())
    }

    /// Ends the stream: an error if it stopped inside a message (or after an earlier error).
    pub fn finish(self) -> Result<(), Problem> {
        if let Some(problem) = self.failed {
            return Err(problem);
        }
        if self.buf.is_empty() {
            return Ok(());
        }
        let detail = if self.buf.len() < PREFIX_LEN {
            format!(
                "the gRPC {} stream ended inside a message prefix ({} of {PREFIX_LEN} bytes)",
                self.side.what(),
                self.buf.len()
            )
        } else {
            format!(
                "the gRPC {} stream ended inside a message ({} of {} bytes received)",
                self.side.what(),
                self.buf.len() - PREFIX_LEN,
                self.declared_len()
            )
        };
        Err(self
            .side
            .problem(self.side.violation(), detail)
            .with("trick", "grpc-truncated"))
    }
}

/// Frames one message: the compressed flag, the length as a big-endian u32, the payload.
/// A payload of 4 GiB or more cannot be framed (`BodyTooLarge`).
pub fn encode_frame(payload: &[u8], compressed: bool) -> Result<Vec<u8>, Problem> {
    let Ok(len) = u32::try_from(payload.len()) else {
        return Err(Problem::new(
            ProblemKind::BodyTooLarge,
            format!("a gRPC message of {} bytes cannot be framed", payload.len()),
        )
        .caused_by(Culprit::ThisNode));
    };
    let mut frame = Vec::with_capacity(PREFIX_LEN + payload.len());
    frame.push(u8::from(compressed));
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(payload);
    Ok(frame)
}

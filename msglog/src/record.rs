//! One message-log record: what the relay saw of a request, a response or a refusal.

use serde::{Deserialize, Serialize};
use time::{OffsetDateTime, UtcOffset};

/// What a record is, seen from this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RecordKind {
    /// Consumer side: the request as signed and sent to the provider's node.
    RequestOut,
    /// Provider side: the request as received from the consumer's node.
    RequestIn,
    /// Provider side: the response as signed and returned.
    ResponseOut,
    /// Consumer side: the response as received from the provider's node.
    ResponseIn,
    /// Either side: a request refused by this node (the problem slug says why).
    Refusal,
}

impl RecordKind {
    /// The kebab-case name, as serialised.
    pub fn as_str(self) -> &'static str {
        match self {
            RecordKind::RequestOut => "request-out",
            RecordKind::RequestIn => "request-in",
            RecordKind::ResponseOut => "response-out",
            RecordKind::ResponseIn => "response-in",
            RecordKind::Refusal => "refusal",
        }
    }
}

/// One logged message. The relay fills it; the log stores its canonical bytes
/// ([`Record::canonical_bytes`]) and chains them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The message id (UUIDv7) shared by a request and its response on both nodes. Kept as
    /// sent, so that a refusal of a malformed id can still be logged.
    pub message_id: String,
    pub kind: RecordKind,
    /// When this node handled the message; stored as RFC 3339 in UTC.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// The consumer subsystem id.
    pub client: String,
    /// The provider service (with its version).
    pub service: String,
    /// The operation (OpenAPI operation id or gRPC method).
    pub operation: String,
    /// The request's method and target (path and query) as signed, so that the request's
    /// RFC 9421 signature (and a response's `;req` binding) can be checked from the log alone.
    #[serde(default)]
    pub method: Option<String>,
    #[serde(default)]
    pub target: Option<String>,
    pub contract: Option<String>,
    /// The data subject, for personal data.
    pub subject: Option<String>,
    /// The acting official.
    pub user: Option<String>,
    pub procedure: Option<String>,
    pub step: Option<String>,
    /// The other node's id.
    pub peer: Option<String>,
    /// The HTTP status sent or received (for a request record, 0).
    pub status: u16,
    /// The problem slug of a refusal or failure.
    pub problem: Option<String>,
    /// The request's `Content-Digest` value.
    pub request_digest: Option<String>,
    /// The response's `Content-Digest` value.
    pub response_digest: Option<String>,
    /// The message's `Signature-Input` value.
    pub signature_input: Option<String>,
    /// The message's `Signature` value.
    pub signature: Option<String>,
    /// The `Enlace-*` headers, in the order sent.
    pub headers: Vec<(String, String)>,
    /// The body, only when body logging is on for the subsystem (standard base64 when
    /// serialised).
    #[serde(with = "body_b64")]
    pub body: Option<Vec<u8>>,
}

impl Record {
    /// A record of `kind` for `message_id`, handled at `at`, with nothing else known yet: the
    /// relay fills in what it learns of the exchange (`relay::exchange::log_record`).
    pub fn new(message_id: impl Into<String>, kind: RecordKind, at: OffsetDateTime) -> Record {
        Record {
            message_id: message_id.into(),
            kind,
            at,
            client: String::new(),
            service: String::new(),
            operation: String::new(),
            method: None,
            target: None,
            contract: None,
            subject: None,
            user: None,
            procedure: None,
            step: None,
            peer: None,
            status: 0,
            problem: None,
            request_digest: None,
            response_digest: None,
            signature_input: None,
            signature: None,
            headers: Vec::new(),
            body: None,
        }
    }

    /// The bytes that are stored and hashed: `serde_json` of the record with `at` in UTC.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        if self.at.offset() == UtcOffset::UTC {
            return serde_json::to_vec(self).expect("a record always serialises");
        }
        let mut utc = self.clone();
        utc.at = self.at.to_offset(UtcOffset::UTC);
        serde_json::to_vec(&utc).expect("a record always serialises")
    }
}

mod body_b64 {
    //! `Option<Vec<u8>>` as an optional standard-base64 string.

    use base64::Engine;
    use base64::engine::general_purpose::STANDARD as B64;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(body: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match body {
            Some(b) => s.serialize_some(&B64.encode(b)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        match Option::<String>::deserialize(d)? {
            Some(text) => B64.decode(text).map(Some).map_err(serde::de::Error::custom),
            None => Ok(None),
        }
    }
}

//! One error vocabulary for the whole system: each kind mapped once to an HTTP status, an
//! RFC 9457 problem `type`, and a gRPC status code, plus who caused it.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::id::IdError;

/// Prefix of every problem `type` URI.
pub const PROBLEM_TYPE_PREFIX: &str = "urn:enlace:problem:";

/// The extension member that carries a problem's `Retry-After` (seconds).
pub const RETRY_AFTER_MEMBER: &str = "retry_after";

/// Who caused an error, sent in the `Enlace-Error` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Culprit {
    /// The caller: a backend, an administrator, a node fetching configuration.
    Client,
    /// The other node.
    PeerNode,
    /// The provider's backend behind the provider node.
    ProviderBackend,
    /// This process.
    ThisNode,
}

impl Culprit {
    pub fn as_str(self) -> &'static str {
        match self {
            Culprit::Client => "client",
            Culprit::PeerNode => "peer-node",
            Culprit::ProviderBackend => "provider-backend",
            Culprit::ThisNode => "this-node",
        }
    }
}

macro_rules! kinds {
    ($( $(#[$doc:meta])* $variant:ident = ($slug:literal, $status:literal, $grpc:literal, $culprit:ident, $title:literal) ),* $(,)?) => {
        /// Every cause of refusal or failure Enlace reports.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum ProblemKind { $( $(#[$doc])* $variant ),* }

        impl ProblemKind {
            /// All kinds, for documentation and tests.
            pub const ALL: &'static [ProblemKind] = &[ $(ProblemKind::$variant),* ];
            /// The stable slug in the problem `type`.
            pub fn slug(self) -> &'static str { match self { $(ProblemKind::$variant => $slug),* } }
            /// The HTTP status.
            pub fn status(self) -> u16 { match self { $(ProblemKind::$variant => $status),* } }
            /// The gRPC status code (numeric, as in `grpc-status`).
            pub fn grpc_code(self) -> u8 { match self { $(ProblemKind::$variant => $grpc),* } }
            /// Who usually causes it.
            pub fn culprit(self) -> Culprit { match self { $(ProblemKind::$variant => Culprit::$culprit),* } }
            /// A short human title.
            pub fn title(self) -> &'static str { match self { $(ProblemKind::$variant => $title),* } }
            /// Reads a kind back from its slug.
            pub fn from_slug(s: &str) -> Option<Self> {
                match s { $($slug => Some(ProblemKind::$variant),)* _ => None }
            }
        }
    };
}

// gRPC codes: 1 CANCELLED, 3 INVALID_ARGUMENT, 4 DEADLINE_EXCEEDED, 5 NOT_FOUND,
// 6 ALREADY_EXISTS, 7 PERMISSION_DENIED, 8 RESOURCE_EXHAUSTED, 9 FAILED_PRECONDITION,
// 12 UNIMPLEMENTED, 13 INTERNAL, 14 UNAVAILABLE, 16 UNAUTHENTICATED.
// HTTP 499 (a convention, not a registered status) marks a call the other side gave up on.
kinds! {
    InvalidIdentifier = ("invalid-identifier", 400, 3, Client, "Invalid identifier"),
    InvalidRequest = ("invalid-request", 400, 3, Client, "Invalid request"),
    BodyTooLarge = ("body-too-large", 413, 8, Client, "Body too large"),
    UnsupportedMediaType = ("unsupported-media-type", 415, 3, Client, "Unsupported media type"),
    /// The route exists but not with this method (`Allow` names the ones it takes).
    MethodNotAllowed = ("method-not-allowed", 405, 12, Client, "Method not allowed"),
    /// The request's header section is larger than the listener reads.
    HeadersTooLarge = ("headers-too-large", 431, 8, Client, "Request header fields too large"),
    /// A gRPC message encoding (compression) the relay does not implement.
    UnsupportedEncoding = ("unsupported-encoding", 415, 12, Client, "Unsupported message encoding"),
    InvalidServiceDescription = ("invalid-service-description", 422, 3, Client, "Invalid service description"),
    RemoteReference = ("remote-reference", 422, 3, Client, "Remote reference refused"),
    UnclassifiedField = ("unclassified-field", 422, 3, Client, "Response field without a class"),
    IncompatibleVersion = ("incompatible-version", 409, 9, Client, "Incompatible service version"),
    UnknownField = ("unknown-field", 422, 3, Client, "Field not in the service"),
    UnknownOperation = ("unknown-operation", 422, 3, Client, "Operation not in the service"),
    InvalidContract = ("invalid-contract", 422, 3, Client, "Invalid contract"),
    NotFound = ("not-found", 404, 5, Client, "Not found"),
    AlreadyExists = ("already-exists", 409, 6, Client, "Already exists"),
    ConceptClaimed = ("concept-claimed", 409, 6, Client, "Concept already has a source"),
    Unauthenticated = ("unauthenticated", 401, 16, Client, "Not authenticated"),
    Forbidden = ("forbidden", 403, 7, Client, "Not allowed"),
    WrongParty = ("wrong-party", 403, 7, Client, "Not this party's decision"),
    InvalidTransition = ("invalid-transition", 409, 9, Client, "Invalid state transition"),
    ConfigSignatureInvalid = ("configuration-signature-invalid", 502, 16, PeerNode, "Configuration signature invalid"),
    ConfigReplayed = ("configuration-replayed", 502, 9, PeerNode, "Configuration older than one already seen"),
    ConfigurationExpired = ("configuration-expired", 503, 14, ThisNode, "Configuration expired"),
    /// This node's clock differs from the registry's by more than the tolerance.
    ClockSkew = ("clock-skew", 503, 14, ThisNode, "This node's clock is off"),
    UnknownService = ("unknown-service", 404, 5, Client, "Unknown service"),
    ContractMissing = ("contract-missing", 403, 7, Client, "No contract"),
    ContractExpired = ("contract-expired", 403, 7, Client, "Contract expired"),
    ContractRevoked = ("contract-revoked", 403, 7, Client, "Contract revoked"),
    VolumeExceeded = ("volume-exceeded", 429, 8, Client, "Contract volume exceeded"),
    /// More requests than the caller's rate allows (`Retry-After` says when to try again).
    RateLimited = ("rate-limited", 429, 8, Client, "Too many requests"),
    /// `Enlace-Subject` names another person than the one the request asks about.
    SubjectMismatch = ("subject-mismatch", 403, 7, Client, "Data subject does not match the request"),
    SignatureInvalid = ("signature-invalid", 401, 16, PeerNode, "Signature invalid"),
    Replay = ("replay", 409, 16, PeerNode, "Message replayed"),
    Stale = ("stale", 401, 16, PeerNode, "Message outside the freshness window"),
    RequestSchemaViolation = ("request-schema-violation", 400, 3, Client, "Request does not match the service description"),
    ResponseSchemaViolation = ("response-schema-violation", 502, 13, ProviderBackend, "Response does not match the service description"),
    PeerUnreachable = ("peer-unreachable", 502, 14, PeerNode, "Peer unreachable"),
    PeerTimeout = ("peer-timeout", 504, 4, PeerNode, "Peer timed out"),
    /// A streamed call abandoned by one side (a reset or a client that went away).
    Cancelled = ("cancelled", 499, 1, Client, "Call cancelled"),
    /// This node's durable log cannot commit (a full or failing disk): nothing it would answer
    /// could be recorded, so it answers nothing but this until a commit succeeds again.
    LogUnavailable = ("log-unavailable", 503, 14, ThisNode, "Log unavailable"),
    Internal = ("internal", 500, 13, ThisNode, "Internal error"),
}

/// Seconds a caller should wait before retrying after `log-unavailable` (`Retry-After`).
pub const LOG_UNAVAILABLE_RETRY_SECS: u64 = 5;

impl ProblemKind {
    /// The `Retry-After` a response of this kind carries, in seconds, if any.
    pub fn retry_after_secs(self) -> Option<u64> {
        match self {
            ProblemKind::LogUnavailable => Some(LOG_UNAVAILABLE_RETRY_SECS),
            _ => None,
        }
    }
}

/// An RFC 9457 problem: the kind, a detail for humans, and extension members.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    pub kind: ProblemKind,
    pub detail: String,
    pub extensions: Map<String, Value>,
}

impl Problem {
    /// A request with more than one `Authorization` header: which one counts must never depend
    /// on the proxy in front, so neither does.
    pub fn repeated_authorization() -> Self {
        Problem::new(
            ProblemKind::Unauthenticated,
            "Authorization: given more than once; send one",
        )
    }

    /// A body over `limit` bytes, declared (`Content-Length`) or read.
    pub fn body_too_large(limit: usize) -> Self {
        Problem::new(
            ProblemKind::BodyTooLarge,
            format!("the body is larger than {limit} bytes"),
        )
        .with("limit", limit)
    }

    /// More requests than `who` may send; it may try again after `wait` (whole seconds, at
    /// least one: the `Retry-After` header and the `retry_after` member).
    pub fn rate_limited(who: &str, wait: std::time::Duration) -> Self {
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        let secs = secs.max(1);
        Problem::new(
            ProblemKind::RateLimited,
            format!("{who} is sending more requests than its rate allows; try again in {secs} s"),
        )
        .with(RETRY_AFTER_MEMBER, secs)
    }

    /// Seconds after which the caller may try again, when the problem says (sent as the
    /// `Retry-After` header too).
    pub fn retry_after(&self) -> Option<u64> {
        self.extensions
            .get(RETRY_AFTER_MEMBER)
            .and_then(Value::as_u64)
            .or_else(|| self.kind.retry_after_secs())
    }

    /// A failure of this process itself (storage, a thread, a key operation): the one constructor
    /// every crate uses, so that each internal failure says what failed in its detail.
    pub fn internal(detail: impl Into<String>) -> Self {
        Problem::new(ProblemKind::Internal, detail)
    }

    pub fn new(kind: ProblemKind, detail: impl Into<String>) -> Self {
        Problem {
            kind,
            detail: detail.into(),
            extensions: Map::new(),
        }
    }

    /// Adds an extension member (e.g. `errors`, `field`, `current_source`).
    pub fn with(mut self, key: &str, value: impl Serialize) -> Self {
        let v = serde_json::to_value(value).unwrap_or(Value::Null);
        self.extensions.insert(key.to_string(), v);
        self
    }

    /// The problem `type` URI.
    pub fn type_uri(&self) -> String {
        format!("{PROBLEM_TYPE_PREFIX}{}", self.kind.slug())
    }

    /// The RFC 9457 JSON body.
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("type".into(), Value::String(self.type_uri()));
        m.insert("title".into(), Value::String(self.kind.title().into()));
        m.insert("status".into(), Value::from(self.kind.status()));
        m.insert("detail".into(), Value::String(self.detail.clone()));
        m.insert(
            "culprit".into(),
            Value::String(self.culprit().as_str().into()),
        );
        for (k, v) in &self.extensions {
            m.entry(k.clone()).or_insert_with(|| v.clone());
        }
        Value::Object(m)
    }

    /// Who caused it: the kind's usual culprit, unless this problem says otherwise (a signature
    /// that fails on a response is the peer's doing, not the client's).
    pub fn culprit(&self) -> Culprit {
        match self.extensions.get("culprit").and_then(Value::as_str) {
            Some("client") => Culprit::Client,
            Some("peer-node") => Culprit::PeerNode,
            Some("provider-backend") => Culprit::ProviderBackend,
            Some("this-node") => Culprit::ThisNode,
            _ => self.kind.culprit(),
        }
    }

    /// Says who caused it, overriding the kind's usual culprit.
    pub fn caused_by(self, culprit: Culprit) -> Self {
        self.with("culprit", culprit.as_str())
    }

    /// Parses an RFC 9457 body produced by [`Problem::to_json`].
    pub fn from_json(v: &Value) -> Option<Problem> {
        let ty = v.get("type")?.as_str()?;
        let kind = ProblemKind::from_slug(ty.strip_prefix(PROBLEM_TYPE_PREFIX)?)?;
        let detail = v.get("detail").and_then(Value::as_str).unwrap_or("");
        let mut p = Problem::new(kind, detail);
        if let Value::Object(m) = v {
            for (k, val) in m {
                if !["type", "title", "status", "detail"].contains(&k.as_str()) {
                    p.extensions.insert(k.clone(), val.clone());
                }
            }
        }
        if p.extensions.get("culprit").and_then(Value::as_str) == Some(kind.culprit().as_str()) {
            p.extensions.remove("culprit");
        }
        Some(p)
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.kind.slug(), self.detail)
    }
}

impl std::error::Error for Problem {}

impl From<IdError> for Problem {
    fn from(e: IdError) -> Self {
        Problem::new(ProblemKind::InvalidIdentifier, e.to_string())
            .with("field", e.field)
            .with("rule", &e.rule)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_are_unique_and_round_trip() {
        let mut seen = std::collections::HashSet::new();
        for k in ProblemKind::ALL {
            assert!(seen.insert(k.slug()), "duplicate slug {}", k.slug());
            assert_eq!(ProblemKind::from_slug(k.slug()), Some(*k));
            assert!((400..600).contains(&k.status()));
            assert!(k.grpc_code() > 0 && k.grpc_code() <= 16);
        }
    }

    #[test]
    fn problem_json_round_trips() {
        let p = Problem::new(ProblemKind::ConceptClaimed, "person.address is held").with(
            "current_source",
            "CL-DEV/GOV/61002000-3/registro-civil/personas",
        );
        let j = p.to_json();
        assert_eq!(j["type"], "urn:enlace:problem:concept-claimed");
        assert_eq!(j["status"], 409);
        assert_eq!(Problem::from_json(&j).unwrap(), p);
    }

    #[test]
    fn identifier_errors_name_field_and_rule() {
        let e = "CL/GOV/61002000-4"
            .parse::<crate::id::MemberId>()
            .unwrap_err();
        let j = Problem::from(e).to_json();
        assert_eq!(j["field"], "member.code");
        assert!(j["rule"].as_str().unwrap().contains("modulo-11"));
    }
}

#[cfg(test)]
mod doc_tests {
    use super::*;

    /// docs/PROTOCOL.md lists every problem type with its status.
    #[test]
    fn protocol_doc_lists_every_problem() {
        let doc = include_str!("../../docs/PROTOCOL.md");
        for k in ProblemKind::ALL {
            let row = format!("| `{}` | {} |", k.slug(), k.status());
            assert!(doc.contains(&row), "docs/PROTOCOL.md lacks {row}");
        }
    }
}

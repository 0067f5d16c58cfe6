//! The access record: what a provider node states, signed, about one exchange that named a data
//! subject (who asked, for what, which fields left, under which contract), as the registry's
//! access log keeps it. Pure: signing and verifying are done by callers with `enlace-certs`.
//!
//! Canonical form: `serde_json` of the struct, fields in declaration order, no whitespace. The
//! node signs `enlace-access-record-v1\n` followed by the canonical bytes of the
//! [`AccessRecord`]; the registry stores the canonical bytes of the [`SignedAccessRecord`] and
//! appends their RFC 9162 leaf hash to the access log's Merkle tree.

use serde::{Deserialize, Serialize};

use crate::id::{ContractId, MemberId, NodeId, ServiceId, ServiceVersion, SubjectId, SubsystemId};
use crate::problem::{Problem, ProblemKind};

/// What the signature of an access record covers before the record's canonical bytes.
pub const SIGNING_CONTEXT: &[u8] = b"enlace-access-record-v1\n";

/// The `result` of an exchange that was served.
pub const SERVED: &str = "served";

/// The `result` prefix of a refused exchange: `refused:<problem slug>`.
pub const REFUSED_PREFIX: &str = "refused:";

/// Longest free-text value (purpose, legal basis) accepted.
const MAX_TEXT: usize = 1024;
/// Longest short value (operation, field name, procedure, user, digest) accepted.
const MAX_SHORT: usize = 256;
/// Most fields one record may list.
const MAX_FIELDS: usize = 1000;

/// One access to a person's data, as the provider node saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessRecord {
    /// The exchange's message id (unique in the federation); the log ingests it once.
    pub message_id: String,
    /// When the provider node answered, RFC 3339 UTC.
    pub at: String,
    /// The consumer member and subsystem that asked.
    pub consumer_member: String,
    pub consumer_subsystem: String,
    /// The provider service, its version and the operation called.
    pub provider_service: String,
    pub provider_version: String,
    pub operation: String,
    /// The person whose data was asked for (`SubjectId`, e.g. `CL-RUN:12345678-5`).
    pub subject: String,
    /// The response fields disclosed after minimisation (empty when refused).
    pub fields: Vec<String>,
    /// The contract's purpose and legal basis.
    pub purpose: String,
    pub legal_basis: String,
    /// The contract under which the data flowed.
    pub contract: String,
    /// The procedure and step of the consumer's case, when it gave them.
    pub procedure: Option<String>,
    pub step: Option<String>,
    /// The acting official at the consumer, when it named one.
    pub user: Option<String>,
    /// The person's authorisation (its id, `aut_…`) the exchange relied on to release sensitive
    /// fields, if any.
    pub authorisation: Option<String>,
    /// `served` or `refused:<problem slug>`.
    pub result: String,
    /// The HTTP status returned to the consumer.
    pub status: u16,
    /// Digests of the request and response bodies (`sha-256=:…:` or hex), when there were any.
    pub request_digest: Option<String>,
    pub response_digest: Option<String>,
    /// The provider node that emitted and signed this record.
    pub node: String,
    /// Why the authorisation token the request carried was not accepted (`expired`, `revoked`,
    /// `another-person`, …; see `authorisation::Refusal`): its sensitive fields were withheld.
    /// Absent when no token was refused, so records made before it existed keep their bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorisation_refused: Option<String>,
}

impl AccessRecord {
    /// The `result` of an exchange: `served` (`None`), or `refused:<slug>` of the problem.
    pub fn result_for(refused: Option<ProblemKind>) -> String {
        match refused {
            None => SERVED.to_string(),
            Some(kind) => format!("{REFUSED_PREFIX}{}", kind.slug()),
        }
    }

    /// The canonical bytes: compact JSON, fields in declaration order.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        // Serialising a struct of strings, numbers and lists cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// The exact bytes the node signs: [`SIGNING_CONTEXT`] then [`AccessRecord::canonical_bytes`].
    pub fn signed_bytes(&self) -> Vec<u8> {
        let mut out = SIGNING_CONTEXT.to_vec();
        out.extend_from_slice(&self.canonical_bytes());
        out
    }

    /// The emitting node, parsed.
    pub fn node_id(&self) -> Result<NodeId, Problem> {
        Ok(self.node.parse()?)
    }

    /// Checks every identifier parses, the subject is present, the result is `served` or
    /// `refused:<known slug>`, and values are within bounds; the consumer subsystem must belong
    /// to the consumer member.
    pub fn validate(&self) -> Result<(), Problem> {
        let bad = |detail: String| {
            Err(Problem::new(ProblemKind::InvalidRequest, detail)
                .with("message_id", self.message_id.clone()))
        };
        let id_ok = !self.message_id.is_empty()
            && self.message_id.len() <= 128
            && self
                .message_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b));
        if !id_ok {
            return bad("message_id: 1 to 128 characters of [A-Za-z0-9._:-]".into());
        }
        if time::OffsetDateTime::parse(&self.at, &time::format_description::well_known::Rfc3339)
            .is_err()
        {
            return bad(format!("at: `{}` is not an RFC 3339 time", self.at));
        }
        let member: MemberId = self.consumer_member.parse()?;
        let subsystem: SubsystemId = self.consumer_subsystem.parse()?;
        if subsystem.member != member {
            return bad("consumer_subsystem: does not belong to consumer_member".into());
        }
        let _: ServiceId = self.provider_service.parse()?;
        let _: ServiceVersion = self.provider_version.parse()?;
        if self.subject.is_empty() {
            return bad("subject: an access record names its data subject".into());
        }
        let _: SubjectId = self.subject.parse()?;
        let _: ContractId = self.contract.parse()?;
        let _: NodeId = self.node.parse()?;
        if !short_ok(&self.operation) || self.operation.is_empty() {
            return bad("operation: 1 to 256 characters, no control characters".into());
        }
        if self.fields.len() > MAX_FIELDS || !self.fields.iter().all(|f| short_ok(f)) {
            return bad(format!(
                "fields: at most {MAX_FIELDS} names of at most {MAX_SHORT} characters"
            ));
        }
        for (name, text) in [
            ("purpose", &self.purpose),
            ("legal_basis", &self.legal_basis),
        ] {
            if text.is_empty() || text.len() > MAX_TEXT || text.chars().any(char::is_control) {
                return bad(format!(
                    "{name}: 1 to {MAX_TEXT} characters, no control characters"
                ));
            }
        }
        for (name, value) in [
            ("procedure", &self.procedure),
            ("step", &self.step),
            ("user", &self.user),
            ("authorisation", &self.authorisation),
            ("authorisation_refused", &self.authorisation_refused),
            ("request_digest", &self.request_digest),
            ("response_digest", &self.response_digest),
        ] {
            if value.as_deref().is_some_and(|v| !short_ok(v)) {
                return bad(format!(
                    "{name}: at most {MAX_SHORT} characters, no control characters"
                ));
            }
        }
        let result_ok = self.result == SERVED
            || self
                .result
                .strip_prefix(REFUSED_PREFIX)
                .is_some_and(|slug| ProblemKind::from_slug(slug).is_some());
        if !result_ok {
            return bad(format!(
                "result: `served` or `refused:<problem slug>`, not `{}`",
                self.result
            ));
        }
        if !(100..=599).contains(&self.status) {
            return bad(format!("status: {} is not an HTTP status", self.status));
        }
        Ok(())
    }
}

fn short_ok(s: &str) -> bool {
    s.len() <= MAX_SHORT && !s.chars().any(char::is_control)
}

/// An access record with the emitting node's Ed25519 signature over
/// [`AccessRecord::signed_bytes`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedAccessRecord {
    pub record: AccessRecord,
    /// Ed25519 signature, standard base64.
    pub signature_b64: String,
}

impl SignedAccessRecord {
    /// Signs `record` with `sign` (the node's Ed25519 key: `|msg| key.sign(msg)`).
    pub fn sign(record: AccessRecord, sign: impl FnOnce(&[u8]) -> Vec<u8>) -> SignedAccessRecord {
        use base64::Engine;
        let signature = sign(&record.signed_bytes());
        SignedAccessRecord {
            record,
            signature_b64: base64::engine::general_purpose::STANDARD.encode(signature),
        }
    }

    /// The signature bytes; `None` when `signature_b64` is not base64.
    pub fn signature(&self) -> Option<Vec<u8>> {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD
            .decode(&self.signature_b64)
            .ok()
    }

    /// The canonical bytes of the signed record: what the registry stores and what its leaf in
    /// the access log hashes (`merkle::leaf_hash(canonical_bytes)`).
    pub fn canonical_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// The record's leaf hash in the access log.
    pub fn leaf_hash(&self) -> crate::merkle::Hash {
        crate::merkle::leaf_hash(&self.canonical_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> AccessRecord {
        AccessRecord {
            message_id: "0190f3a2-1111-7000-8000-000000000001".into(),
            at: "2026-01-02T03:04:05Z".into(),
            consumer_member: "CL-DEV/GOV/60803000-K".into(),
            consumer_subsystem: "CL-DEV/GOV/60803000-K/renta".into(),
            provider_service: "CL-DEV/GOV/61002000-3/registro-civil/personas".into(),
            provider_version: "v1.0".into(),
            operation: "GET /persons/{run}".into(),
            subject: "CL-RUN:12345678-5".into(),
            fields: vec!["name".into(), "birthDate".into()],
            purpose: "tax refund eligibility".into(),
            legal_basis: "Ley 21.658".into(),
            contract: "ctr_01JAAAAAAAAAAAAAAAAAAAAAAA".into(),
            procedure: None,
            step: None,
            user: Some("funcionario-17".into()),
            authorisation: None,
            result: SERVED.into(),
            status: 200,
            request_digest: None,
            response_digest: Some("sha-256=:abc=:".into()),
            node: "CL-DEV/GOV/61002000-3/node/a".into(),
            authorisation_refused: None,
        }
    }

    #[test]
    fn canonical_bytes_follow_declaration_order_and_round_trip() {
        let r = sample();
        let bytes = r.canonical_bytes();
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(text.starts_with("{\"message_id\":"), "{text}");
        assert!(text.ends_with("\"node\":\"CL-DEV/GOV/61002000-3/node/a\"}"));
        let back: AccessRecord = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(back.canonical_bytes(), bytes);
        assert!(r.signed_bytes().starts_with(SIGNING_CONTEXT));
    }

    #[test]
    fn a_refused_authorisation_is_recorded_and_older_records_keep_their_bytes() {
        let r = sample();
        let bytes = r.canonical_bytes();
        assert!(!String::from_utf8_lossy(&bytes).contains("authorisation_refused"));
        let mut refused = sample();
        refused.authorisation_refused = Some("revoked".into());
        let text = String::from_utf8(refused.canonical_bytes()).unwrap();
        assert!(
            text.ends_with(",\"authorisation_refused\":\"revoked\"}"),
            "{text}"
        );
        let back: AccessRecord = serde_json::from_str(&text).unwrap();
        assert_eq!(back, refused);
        refused.validate().unwrap();
    }

    #[test]
    fn unknown_fields_are_refused() {
        let mut v = serde_json::to_value(sample()).unwrap();
        v["extra"] = 1.into();
        assert!(serde_json::from_value::<AccessRecord>(v).is_err());
    }

    #[test]
    fn validation() {
        sample().validate().unwrap();
        let mut r = sample();
        r.subject = String::new();
        assert!(r.validate().is_err());
        let mut r = sample();
        r.subject = "CL-RUN:12345678-6".into();
        assert!(r.validate().is_err(), "bad check digit");
        let mut r = sample();
        r.result = "refused:no-such-slug".into();
        assert!(r.validate().is_err());
        r.result = AccessRecord::result_for(Some(ProblemKind::ContractMissing));
        assert_eq!(r.result, "refused:contract-missing");
        r.status = 403;
        assert!(r.validate().is_ok());
        let mut r = sample();
        r.consumer_subsystem = "CL-DEV/GOV/61002000-3/registro-civil".into();
        assert!(r.validate().is_err());
        let mut r = sample();
        r.at = "yesterday".into();
        assert!(r.validate().is_err());
        let mut r = sample();
        r.message_id = "a b".into();
        assert!(r.validate().is_err());
    }
}

//! Hidden access records: the federation admin, acting for a court or a prosecutor, hides a
//! person's access records of one contract from that person until a date, for a stated legal
//! reason (an investigation). The hiding is a registry document committed with its audit entry;
//! the records stay in the access log (the Merkle tree and its proofs are unchanged), only the
//! citizen view withholds them until the date, and then shows them with the hiding's reason,
//! authority and period.

use enlace_core::id::{ContractId, SubjectId};
use enlace_core::problem::{Problem, ProblemKind};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::citizen::Citizens;
use crate::federation::{Actor, Registry, now, rfc3339};

/// The kind of the registry documents holding hidings.
pub const HIDING: &str = "hiding";
/// Longest a hiding may last.
pub const MAX_HIDING: time::Duration = time::Duration::days(5 * 366);
/// Longest legal reason, in characters.
pub const MAX_REASON_CHARS: usize = 1000;
/// Longest authority name, in characters.
pub const MAX_AUTHORITY_CHARS: usize = 300;

/// `POST /v1/access-log/hidings`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewHiding {
    /// The person, `CL-RUN:…`.
    pub subject: String,
    /// The contract whose records about the person are hidden, `ctr_…`.
    pub contract: String,
    /// RFC 3339, in the future: the records are disclosed to the person from then on.
    pub until: String,
    /// The stated legal reason (required, at most 1000 characters).
    #[serde(default)]
    pub legal_reason: String,
    /// The court or prosecutor who asked for it, with the case reference.
    #[serde(default)]
    pub authority: String,
}

/// A hiding, as stored and served.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hiding {
    /// `hid_…`.
    pub id: String,
    pub subject: String,
    pub contract: String,
    /// RFC 3339 UTC, whole seconds.
    pub until: String,
    pub legal_reason: String,
    pub authority: String,
    /// When it was made (RFC 3339 UTC).
    pub created_at: String,
    /// Who made it (`federation-admin`).
    pub created_by: String,
}

fn invalid(detail: impl Into<String>) -> Problem {
    Problem::new(ProblemKind::InvalidRequest, detail)
}

/// A required, bounded, single-paragraph text field.
fn text(name: &str, v: &str, max: usize) -> Result<String, Problem> {
    let v = v.trim();
    if v.is_empty() {
        return Err(invalid(format!("{name}: required")));
    }
    if v.chars().count() > max {
        return Err(invalid(format!("{name}: at most {max} characters")));
    }
    if v.chars().any(|c| c.is_control() && c != '\n') {
        return Err(invalid(format!("{name}: no control characters")));
    }
    Ok(v.to_string())
}

/// RFC 3339 UTC, whole seconds, `Z`: the form of the access records' `at`.
fn utc_seconds(t: OffsetDateTime) -> String {
    rfc3339(
        t.to_offset(time::UtcOffset::UTC)
            .replace_nanosecond(0)
            .unwrap_or(t),
    )
}

impl NewHiding {
    fn check(
        &self,
        at: OffsetDateTime,
    ) -> Result<(SubjectId, ContractId, OffsetDateTime), Problem> {
        let subject: SubjectId = self.subject.parse()?;
        let contract: ContractId = self.contract.parse()?;
        let until = OffsetDateTime::parse(&self.until, &Rfc3339)
            .map_err(|_| invalid(format!("until: `{}` is not an RFC 3339 time", self.until)))?;
        if until <= at {
            return Err(invalid("until: must be in the future"));
        }
        if until - at > MAX_HIDING {
            return Err(invalid("until: at most 5 years ahead"));
        }
        Ok((subject, contract, until))
    }
}

impl Hiding {
    /// Whether the hiding still holds at `t` (RFC 3339 UTC, whole seconds).
    pub fn active_at(&self, t: &str) -> bool {
        t < self.until.as_str()
    }

    /// Whether it covers a record of `contract` made at `at`.
    pub fn covers(&self, contract: &str, at: &str) -> bool {
        self.contract == contract && at < self.until.as_str()
    }
}

impl Citizens {
    /// Hides `subject`'s access records of one contract from the citizen view until a date.
    pub async fn create_hiding(&self, actor: &Actor, req: NewHiding) -> Result<Hiding, Problem> {
        Registry::require_federation_admin(actor)?;
        let at = now();
        let (subject, contract, until) = req.check(at)?;
        let legal_reason = text("legal_reason", &req.legal_reason, MAX_REASON_CHARS)?;
        let authority = text("authority", &req.authority, MAX_AUTHORITY_CHARS)?;
        let _w = self.registry.write.lock().await;
        if self
            .registry
            .get::<serde_json::Value>(crate::model::kind::CONTRACT, contract.as_str())?
            .is_none()
        {
            return Err(Problem::new(
                ProblemKind::NotFound,
                format!("contract {contract} is not registered"),
            )
            .with("id", contract.as_str()));
        }
        let hiding = Hiding {
            id: format!("hid_{}", uuid::Uuid::now_v7().simple()),
            subject: subject.to_string(),
            contract: contract.to_string(),
            // Rounded up to the whole second, so that the records' `at` compare as strings.
            until: utc_seconds(if until.nanosecond() == 0 {
                until
            } else {
                until + time::Duration::SECOND
            }),
            legal_reason,
            authority,
            created_at: utc_seconds(at),
            created_by: actor.label(),
        };
        let doc = serde_json::to_value(&hiding)
            .map_err(|e| Problem::new(ProblemKind::Internal, e.to_string()))?;
        let committed = self
            .registry
            .commit(
                actor,
                "access-log.hide",
                vec![(HIDING, hiding.id.clone(), doc)],
                vec![],
            )
            .await;
        // Reloaded from the store at the next read, whether or not publishing failed after
        // the commit.
        *self.hidings.lock().unwrap_or_else(|p| p.into_inner()) = None;
        committed?;
        Ok(hiding)
    }

    /// Every hiding, for the federation admin.
    pub fn hidings(&self, actor: &Actor) -> Result<Vec<Hiding>, Problem> {
        Registry::require_federation_admin(actor)?;
        let mut all: Vec<Hiding> = self.registry.list(HIDING)?;
        all.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        Ok(all)
    }

    /// The hidings about `subject` (the index is loaded from the store on first use and again
    /// after each [`Citizens::create_hiding`]).
    pub(crate) fn hidings_of(&self, subject: &str) -> Result<Vec<Hiding>, Problem> {
        let mut index = self.hidings.lock().unwrap_or_else(|p| p.into_inner());
        if index.is_none() {
            let mut by: std::collections::HashMap<String, Vec<Hiding>> = Default::default();
            for h in self.registry.list::<Hiding>(HIDING)? {
                by.entry(h.subject.clone()).or_default().push(h);
            }
            *index = Some(by);
        }
        Ok(index
            .as_ref()
            .and_then(|i| i.get(subject).cloned())
            .unwrap_or_default())
    }
}

/// The current time in the records' form.
pub(crate) fn now_utc_seconds() -> String {
    utc_seconds(now())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(until: &str, reason: &str) -> NewHiding {
        NewHiding {
            subject: "CL-RUN:12345678-5".into(),
            contract: ContractId::generate().to_string(),
            until: until.into(),
            legal_reason: reason.into(),
            authority: "Fiscalía".into(),
        }
    }

    #[test]
    fn until_must_be_ahead_and_not_too_far() {
        let at = OffsetDateTime::parse("2026-11-22T10:00:00Z", &Rfc3339).unwrap();
        let e = |r: NewHiding| r.check(at).err().map(|p| p.detail);
        assert!(
            e(req("2026-11-22T09:00:00Z", "x"))
                .unwrap()
                .contains("future")
        );
        assert!(
            e(req("2036-11-22T09:00:00Z", "x"))
                .unwrap()
                .contains("5 years")
        );
        assert!(e(req("tomorrow", "x")).unwrap().contains("RFC 3339"));
        assert!(text("legal_reason", "  ", 10).is_err());
        assert!(text("legal_reason", &"a".repeat(11), 10).is_err());
        assert_eq!(text("legal_reason", " ok ", 10).unwrap(), "ok");
    }

    #[test]
    fn a_hiding_covers_the_contracts_records_before_the_date() {
        let h = Hiding {
            id: "hid_1".into(),
            subject: "CL-RUN:12345678-5".into(),
            contract: "ctr_a".into(),
            until: "2026-11-22T10:00:00Z".into(),
            legal_reason: "r".into(),
            authority: "a".into(),
            created_at: "2026-11-01T00:00:00Z".into(),
            created_by: "federation-admin".into(),
        };
        assert!(h.covers("ctr_a", "2026-11-22T09:59:59Z"));
        assert!(!h.covers("ctr_a", "2026-11-22T10:00:00Z"));
        assert!(!h.covers("ctr_b", "2026-11-22T09:00:00Z"));
        assert!(h.active_at("2026-11-22T09:59:59Z"));
        assert!(!h.active_at("2026-11-22T10:00:00Z"));
    }
}

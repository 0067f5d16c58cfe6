//! The citizen API: a person, signed in by OpenID Connect, reads the access records about them
//! (and only those), filtered and paginated, each with its inclusion proof against the latest
//! signed tree head and a sentence saying in plain words who looked at what, when and why.

pub mod authorisation;
pub mod hiding;
pub mod oidc;
pub mod page;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use enlace_core::access::{REFUSED_PREFIX, SignedAccessRecord};
use enlace_core::id::{MemberId, SubjectId};
use enlace_core::problem::{Problem, ProblemKind};
use serde::Deserialize;
use serde_json::{Value, json};
use time::format_description::well_known::Rfc3339;

use crate::access_log::{AccessLog, RecordProof};
use crate::citizen::hiding::Hiding;
use crate::citizen::oidc::Oidc;
use crate::federation::Registry;

/// Largest page of records.
pub const MAX_PAGE_SIZE: u64 = 100;
const DEFAULT_PAGE_SIZE: u64 = 20;

/// `GET /v1/citizen/access-records` query parameters.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CitizenQuery {
    /// RFC 3339 times: records at or after `from`, before `to`.
    pub from: Option<String>,
    pub to: Option<String>,
    /// The consumer member (`CL-DEV/GOV/60803000-K`).
    pub institution: Option<String>,
    pub purpose: Option<String>,
    /// From 1.
    pub page: Option<u64>,
    pub page_size: Option<u64>,
}

/// The filter the access log applies.
pub(crate) struct Filter {
    pub from: Option<String>,
    pub to: Option<String>,
    pub institution: Option<String>,
    pub purpose: Option<String>,
    /// Hidings in force, `(contract, until)`: the records of `contract` made before `until` are
    /// left out (see [`crate::citizen::hiding`]).
    pub hidden: Vec<(String, String)>,
    pub limit: u64,
    pub offset: u64,
}

fn invalid(detail: String) -> Problem {
    Problem::new(ProblemKind::InvalidRequest, detail)
}

/// An RFC 3339 time, normalised to the records' form (UTC, whole seconds, `Z`).
fn time_param(name: &str, v: &Option<String>) -> Result<Option<String>, Problem> {
    let Some(v) = v else { return Ok(None) };
    let t = time::OffsetDateTime::parse(v, &Rfc3339)
        .map_err(|_| invalid(format!("{name}: `{v}` is not an RFC 3339 time")))?;
    let t = t.to_offset(time::UtcOffset::UTC);
    Ok(Some(
        t.format(&Rfc3339).map_err(|e| invalid(e.to_string()))?,
    ))
}

impl CitizenQuery {
    fn filter(&self) -> Result<(Filter, u64, u64), Problem> {
        let page = self.page.unwrap_or(1);
        let size = self.page_size.unwrap_or(DEFAULT_PAGE_SIZE);
        if page == 0 || page > 1_000_000 {
            return Err(invalid("page: counts from 1".into()));
        }
        if size == 0 || size > MAX_PAGE_SIZE {
            return Err(invalid(format!("page_size: 1 to {MAX_PAGE_SIZE}")));
        }
        if let Some(i) = &self.institution {
            i.parse::<MemberId>()?;
        }
        if self.purpose.as_ref().is_some_and(|p| p.len() > 64) {
            return Err(invalid("purpose: at most 64 characters".into()));
        }
        Ok((
            Filter {
                from: time_param("from", &self.from)?,
                to: time_param("to", &self.to)?,
                institution: self.institution.clone(),
                purpose: self.purpose.clone(),
                hidden: Vec::new(),
                limit: size,
                offset: (page - 1) * size,
            },
            page,
            size,
        ))
    }
}

/// `birthDate` → `birth date`.
fn words(field: &str) -> String {
    let mut out = String::new();
    for c in field.chars() {
        if c.is_uppercase() {
            out.push(' ');
            out.extend(c.to_lowercase());
        } else if c == '_' || c == '-' {
            out.push(' ');
        } else {
            out.push(c);
        }
    }
    out
}

/// The fields disclosed, by their top-level name: `name and address`.
fn field_list(fields: &[String]) -> String {
    let mut names: Vec<String> = Vec::new();
    for f in fields {
        let top = f.trim_start_matches('/').split('/').next().unwrap_or("");
        let w = words(top);
        if !w.is_empty() && !names.contains(&w) {
            names.push(w);
        }
    }
    match names.len() {
        0 => "no data".into(),
        1 => names.remove(0),
        n => format!("{} and {}", names[..n - 1].join(", "), names[n - 1]),
    }
}

/// "The Servicio de Impuestos Internos consulted your name and address on 22 Nov 2026 at
/// 14:03 UTC for tax-refund-eligibility, under contract ctr_…".
pub fn sentence(record: &SignedAccessRecord, institution: &str) -> String {
    let r = &record.record;
    let when = time::OffsetDateTime::parse(&r.at, &Rfc3339)
        .ok()
        .map(|t| {
            let t = t.to_offset(time::UtcOffset::UTC);
            let month = format!("{}", t.month());
            format!(
                "{} {} {} at {:02}:{:02} UTC",
                t.day(),
                &month[..3],
                t.year(),
                t.hour(),
                t.minute()
            )
        })
        .unwrap_or_else(|| r.at.clone());
    match r.result.strip_prefix(REFUSED_PREFIX) {
        None => {
            let mut s = format!(
                "The {institution} consulted your {} on {when} for {}, under contract {}.",
                field_list(&r.fields),
                r.purpose,
                r.contract
            );
            if let Some(id) = &r.authorisation {
                s.push_str(&format!(" It relied on your authorisation {id}."));
            }
            if let Some(why) = &r.authorisation_refused {
                s.push_str(&format!(
                    " The authorisation it presented was not accepted ({why}): sensitive data was withheld."
                ));
            }
            s
        }
        Some(cause) => format!(
            "The {institution} asked for your data on {when} for {}, under contract {}; it was refused ({cause}) and nothing was disclosed.",
            r.purpose, r.contract
        ),
    }
}

/// The citizen side of the registry: people signed in by OpenID Connect reading the records
/// about them and acting on their authorisations; the authorisations member admins ask them for;
/// the hidings the federation admin puts on their records. Its documents live in the registry's
/// store, changed under the registry's write lock with an audit entry; its records in the
/// access log.
pub struct Citizens {
    registry: Arc<Registry>,
    log: Arc<AccessLog>,
    /// OpenID Connect, when a citizen API is configured.
    oidc: Option<Arc<Oidc>>,
    /// Hidings by person, loaded from the store on first use and again after each new hiding.
    hidings: Mutex<Option<HashMap<String, Vec<Hiding>>>>,
    /// Authorisation ids by person, loaded on first use, then kept up to date (every change to
    /// an authorisation goes through [`Citizens`], under the registry's write lock).
    authorisations: Mutex<Option<HashMap<String, Vec<String>>>>,
}

impl Citizens {
    pub fn new(registry: Arc<Registry>, log: Arc<AccessLog>, oidc: Option<Arc<Oidc>>) -> Citizens {
        Citizens {
            registry,
            log,
            oidc,
            hidings: Mutex::new(None),
            authorisations: Mutex::new(None),
        }
    }

    /// The OpenID Connect state, or not-found when the citizen API is off.
    pub fn oidc(&self) -> Result<&Arc<Oidc>, Problem> {
        self.oidc.as_ref().ok_or_else(|| {
            Problem::new(
                ProblemKind::NotFound,
                "this registry has no citizen API (no OpenID Connect issuer configured)",
            )
        })
    }

    /// The person an ID token (`Authorization: Bearer`) speaks for; in ClaveÚnica mode the
    /// access token (`Enlace-Access-Token`) lets the registry read the RUN from the userinfo
    /// endpoint when the ID token does not carry it.
    pub async fn person(
        &self,
        token: Option<&str>,
        access_token: Option<&str>,
    ) -> Result<SubjectId, Problem> {
        let oidc = self.oidc()?;
        let token = token.ok_or_else(|| {
            Problem::new(
                ProblemKind::Unauthenticated,
                "sign in: send Authorization: Bearer <ID token>",
            )
        })?;
        oidc.verify(token, access_token).await
    }

    fn institution_name(&self, member: &str) -> String {
        member
            .parse::<MemberId>()
            .ok()
            .and_then(|m| self.registry.member(&m).ok())
            .map(|m| m.name)
            .unwrap_or_else(|| member.to_string())
    }

    /// A page of the records about `subject`, each with its inclusion proof against the latest
    /// signed tree head and its sentence.
    pub async fn records(&self, subject: &SubjectId, q: &CitizenQuery) -> Result<Value, Problem> {
        let (mut filter, page, page_size) = q.filter()?;
        let hidings = self.hidings_of(&subject.to_string())?;
        let now = crate::citizen::hiding::now_utc_seconds();
        filter.hidden = hidings
            .iter()
            .filter(|h| h.active_at(&now))
            .map(|h| (h.contract.clone(), h.until.clone()))
            .collect();
        let head = self.log.current_tree_head().await?;
        let log = self.log.store.clone();
        let size = head.tree_head.tree_size;
        let who = subject.to_string();
        let (rows, total) =
            tokio::task::spawn_blocking(move || log.subject_page(&who, &filter, size))
                .await
                .map_err(|e| Problem::new(ProblemKind::Internal, e.to_string()))??;
        let mut records = Vec::with_capacity(rows.len());
        for RecordProof { record, proof } in rows {
            let parsed: SignedAccessRecord = serde_json::from_value(record.clone())
                .map_err(|e| Problem::new(ProblemKind::Internal, e.to_string()))?;
            let name = self.institution_name(&parsed.record.consumer_member);
            let mut item = json!({
                "sentence": sentence(&parsed, &name),
                "institution": name,
                "record": record,
                "proof": proof,
            });
            // A record that was hidden, now disclosed: why, on whose request, and until when.
            if let Some(h) = hidings
                .iter()
                .filter(|h| {
                    !h.active_at(&now) && h.covers(&parsed.record.contract, &parsed.record.at)
                })
                .max_by(|a, b| a.until.cmp(&b.until))
            {
                item["hidden_from"] = json!(h.created_at.as_str().max(parsed.record.at.as_str()));
                item["hidden_until"] = json!(h.until);
                item["hidden_reason"] = json!(h.legal_reason);
                item["hidden_authority"] = json!(h.authority);
            }
            records.push(item);
        }
        Ok(json!({
            "subject": subject.to_string(),
            "page": page,
            "page_size": page_size,
            "total": total,
            "tree_head": head,
            "records": records,
        }))
    }

    /// The record about `subject` with `message_id` (and `node`, when several nodes logged the
    /// id). Whose record it is, and whether it is hidden, is checked before anything else: another
    /// person's record, or a hidden one, is not found, whatever else is asked.
    pub(crate) async fn record(
        &self,
        subject: &SubjectId,
        message_id: &str,
        node: Option<&str>,
    ) -> Result<crate::access_log::Found, Problem> {
        let now = crate::citizen::hiding::now_utc_seconds();
        let hidings = self.hidings_of(&subject.to_string())?;
        let who = subject.to_string();
        self.log
            .find_one(message_id, node, |f| {
                let r = &f.record.record;
                r.subject == who
                    && !hidings
                        .iter()
                        .any(|h| h.active_at(&now) && h.covers(&r.contract, &r.at))
            })
            .await
    }

    /// A record about `subject` and its inclusion proof; another person's record is not found.
    pub async fn record_proof(
        &self,
        subject: &SubjectId,
        message_id: String,
        node: Option<String>,
        size: Option<u64>,
    ) -> Result<RecordProof, Problem> {
        let found = self.record(subject, &message_id, node.as_deref()).await?;
        self.log.record_proof(found, size).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_read_as_words() {
        let f = |v: &[&str]| field_list(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(
            f(&["/name", "/address/street", "/address/commune"]),
            "name and address"
        );
        assert_eq!(
            f(&["/name", "/birthDate", "/address"]),
            "name, birth date and address"
        );
        assert_eq!(f(&[]), "no data");
    }
}

//! Authorisations (consents): a consumer's member admin asks a person for access to the
//! sensitive fields of a contract that requires it, for one procedure; the person, signed in by
//! OpenID Connect, grants, refuses, or later revokes; a grant yields a token the registry signs
//! (see `enlace_core::authorisation`) that the provider node checks before releasing sensitive
//! fields. Every event is kept in the authorisation's history and in the audit trail; a
//! revocation is published in the next signed configuration so that nodes refuse the token
//! within seconds. Revocation is not retroactive: records already logged keep the
//! authorisation they used.

use enlace_core::authorisation::{self as token, Claims};
use enlace_core::config::RevokedAuthorisation;
use enlace_core::contract::{Contract, ContractState, FieldClass};
use enlace_core::id::{ContractId, MemberId, SubjectId};
use enlace_core::problem::{Problem, ProblemKind};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::citizen::Citizens;
use crate::federation::{Actor, Registry, internal, now, rfc3339};
use crate::store::{AuditEntry, Change};

/// The kind of the registry documents holding authorisations.
pub const AUTHORISATION: &str = "authorisation";
/// The kind of the small documents listing revoked authorisations (id and expiry), which the
/// signed configuration carries.
pub const REVOKED_AUTHORISATION: &str = "revoked-authorisation";
/// Longest reason a consumer gives, in characters.
pub const MAX_REASON_CHARS: usize = 500;
/// Most pending requests one institution may have open with one person at once: counted per
/// asking member, so that no institution can fill a person's list and keep others from asking.
pub const MAX_PENDING_PER_PERSON: usize = 50;

/// `POST /v1/authorisations`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewAuthorisation {
    pub contract: String,
    pub subject: String,
    pub procedure: String,
    pub reason: String,
}

/// Where an authorisation is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Pending,
    Granted,
    Refused,
    Revoked,
}

/// One event of an authorisation's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// `requested`, `granted`, `refused`, `revoked`.
    pub event: String,
    /// RFC 3339 UTC.
    pub at: String,
    /// `member-admin:…` or `citizen`.
    pub by: String,
}

/// An authorisation as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Authorisation {
    /// `aut_…`.
    pub id: String,
    pub contract: String,
    /// The consumer subsystem and member the contract binds, and the provider service.
    pub consumer: String,
    pub consumer_member: String,
    pub provider_service: String,
    pub purpose: String,
    pub legal_basis: String,
    /// The person, `CL-RUN:…`.
    pub subject: String,
    pub procedure: String,
    /// Why the consumer asks, in its words.
    pub reason: String,
    pub state: State,
    pub requested_at: String,
    /// When a granted authorisation's token expires (RFC 3339 UTC).
    #[serde(default)]
    pub expires_at: Option<String>,
    /// The token, once granted (given to the consumer's admin, never to anyone else).
    #[serde(default)]
    pub token: Option<String>,
    pub events: Vec<Event>,
}

impl Authorisation {
    fn expired(&self, at: OffsetDateTime) -> bool {
        self.expires_at
            .as_deref()
            .and_then(|e| OffsetDateTime::parse(e, &Rfc3339).ok())
            .is_some_and(|e| at >= e)
    }
}

/// The small document of a revocation.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Revoked {
    id: String,
    expires_at: String,
}

fn invalid(detail: impl Into<String>) -> Problem {
    Problem::new(ProblemKind::InvalidRequest, detail)
}

fn not_found(id: &str) -> Problem {
    Problem::new(
        ProblemKind::NotFound,
        format!("no authorisation {id} for you"),
    )
    .with("id", id)
}

/// A procedure label as the `Enlace-Procedure` header carries it: `[A-Za-z0-9._:@/+-]`, 1–128.
fn check_procedure(p: &str) -> Result<(), Problem> {
    let ok = (1..=128).contains(&p.len())
        && p.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:@/+-".contains(&b));
    if !ok {
        return Err(invalid(
            "procedure: 1 to 128 letters, digits and . _ : @ / + - (as Enlace-Procedure)",
        ));
    }
    Ok(())
}

/// An authorisation as someone other than its consumer sees it: everything but the token.
fn without_token(mut a: Authorisation) -> Authorisation {
    a.token = None;
    a
}

impl Citizens {
    fn authorisation(&self, id: &str) -> Result<Option<Authorisation>, Problem> {
        if !token::is_id(id) {
            return Ok(None);
        }
        self.registry.get(AUTHORISATION, id)
    }

    /// The authorisation ids of `subject` (loaded once from the store, then kept up to date).
    fn authorisation_ids_of(&self, subject: &str) -> Result<Vec<String>, Problem> {
        let mut index = self
            .authorisations
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if index.is_none() {
            let mut by: std::collections::HashMap<String, Vec<String>> = Default::default();
            for a in self.registry.list::<Authorisation>(AUTHORISATION)? {
                by.entry(a.subject).or_default().push(a.id);
            }
            *index = Some(by);
        }
        Ok(index
            .as_ref()
            .and_then(|i| i.get(subject).cloned())
            .unwrap_or_default())
    }

    /// Stores an authorisation with its audit entry (the token left out of the trail), and
    /// publishes a new configuration when the list of revoked authorisations changed.
    async fn commit_authorisation(
        &self,
        by: &str,
        action: &str,
        before: Option<&Authorisation>,
        after: &Authorisation,
        revoked: bool,
    ) -> Result<(), Problem> {
        let doc = serde_json::to_value(after).map_err(internal)?;
        let audited = |a: &Authorisation| {
            let mut v = serde_json::to_value(a).unwrap_or(Value::Null);
            if let Some(m) = v.as_object_mut()
                && m.get("token").is_some_and(|t| !t.is_null())
            {
                m.insert("token".into(), json!("(issued to the consumer)"));
            }
            v
        };
        let mut puts = vec![(AUTHORISATION, after.id.clone(), doc)];
        if revoked {
            let r = Revoked {
                id: after.id.clone(),
                expires_at: after.expires_at.clone().unwrap_or_default(),
            };
            puts.push((
                REVOKED_AUTHORISATION,
                after.id.clone(),
                serde_json::to_value(r).map_err(internal)?,
            ));
        }
        self.registry.store.commit(Change {
            puts,
            audit: vec![AuditEntry {
                seq: 0,
                at: rfc3339(now()),
                actor: by.to_string(),
                action: action.to_string(),
                object: after.id.clone(),
                outcome: "ok".into(),
                before: before.map(audited),
                after: Some(audited(after)),
            }],
            ..Change::default()
        })?;
        if before.is_none()
            && let Some(index) = self
                .authorisations
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .as_mut()
        {
            index
                .entry(after.subject.clone())
                .or_default()
                .push(after.id.clone());
        }
        tracing::info!(actor = by, action, id = %after.id, "authorisation changed");
        if revoked {
            self.registry.publish().await?;
        }
        Ok(())
    }

    /// The consumer's member admin asks a person for an authorisation under a contract of its
    /// own that is approved, in force, and requires one.
    pub async fn request_authorisation(
        &self,
        actor: &Actor,
        req: NewAuthorisation,
    ) -> Result<Authorisation, Problem> {
        let Actor::MemberAdmin(member) = actor else {
            return Err(Problem::new(
                ProblemKind::Forbidden,
                "only the consumer's member admin asks for an authorisation",
            ));
        };
        let contract_id: ContractId = req.contract.parse()?;
        let subject: SubjectId = req.subject.parse()?;
        check_procedure(&req.procedure)?;
        let reason = req.reason.trim();
        if reason.is_empty()
            || reason.chars().count() > MAX_REASON_CHARS
            || reason.chars().any(char::is_control)
        {
            return Err(invalid(format!(
                "reason: 1 to {MAX_REASON_CHARS} characters, no control characters"
            )));
        }
        let _w = self.registry.write.lock().await;
        let contract: Contract = self
            .registry
            .get(crate::model::kind::CONTRACT, contract_id.as_str())?
            .filter(|c: &Contract| &c.terms.consumer.member == member)
            .ok_or_else(|| {
                Problem::new(
                    ProblemKind::NotFound,
                    format!("{member} holds no contract {contract_id}"),
                )
            })?;
        let at = now();
        if contract.state != ContractState::Approved || !contract.is_active(at) {
            return Err(Problem::new(
                ProblemKind::InvalidTransition,
                format!("contract {contract_id} is not approved and in force"),
            ));
        }
        if !contract.terms.authorisation_required {
            return Err(Problem::new(
                ProblemKind::InvalidContract,
                format!(
                    "contract {contract_id} does not require the person's authorisation (it discloses no sensitive fields)"
                ),
            ));
        }
        let mine: Vec<Authorisation> = self
            .authorisation_ids_of(&subject.to_string())?
            .iter()
            .filter_map(|id| self.authorisation(id).transpose())
            .collect::<Result<_, _>>()?;
        let pending: Vec<&Authorisation> =
            mine.iter().filter(|a| a.state == State::Pending).collect();
        if let Some(same) = pending
            .iter()
            .find(|a| a.contract == contract_id.as_str() && a.procedure == req.procedure)
        {
            return Err(Problem::new(
                ProblemKind::AlreadyExists,
                format!("authorisation {} is already pending", same.id),
            )
            .with("id", &same.id));
        }
        let member_label = member.to_string();
        let ours = pending
            .iter()
            .filter(|a| a.consumer_member == member_label)
            .count();
        if ours >= MAX_PENDING_PER_PERSON {
            return Err(invalid(format!(
                "{member_label} already has {MAX_PENDING_PER_PERSON} requests pending with the person"
            )));
        }
        let by = actor.label();
        let a = Authorisation {
            id: token::new_id(),
            contract: contract_id.to_string(),
            consumer: contract.terms.consumer.to_string(),
            consumer_member: member.to_string(),
            provider_service: contract.terms.provider.to_string(),
            purpose: contract.terms.purpose.clone(),
            legal_basis: contract.terms.legal_basis.clone(),
            subject: subject.to_string(),
            procedure: req.procedure,
            reason: reason.to_string(),
            state: State::Pending,
            requested_at: rfc3339(at),
            expires_at: None,
            token: None,
            events: vec![Event {
                event: "requested".into(),
                at: rfc3339(at),
                by: by.clone(),
            }],
        };
        self.commit_authorisation(&by, "authorisation.request", None, &a, false)
            .await?;
        Ok(a)
    }

    /// An authorisation, for the consumer's member admin (with its token once granted) or the
    /// federation admin (without it: the token is for the consumer alone); anyone else learns
    /// nothing.
    pub fn authorisation_for(&self, actor: &Actor, id: &str) -> Result<Authorisation, Problem> {
        let a = self.authorisation(id)?.ok_or_else(|| not_found(id))?;
        match actor {
            Actor::FederationAdmin => Ok(without_token(a)),
            Actor::MemberAdmin(m) if m.to_string() == a.consumer_member => Ok(a),
            Actor::MemberAdmin(_) => Err(not_found(id)),
        }
    }

    /// The authorisations a member asked for (every member's for the federation admin, without
    /// their tokens), newest first.
    pub fn authorisations_of_member(&self, actor: &Actor) -> Result<Vec<Authorisation>, Problem> {
        let all: Vec<Authorisation> = self.registry.list(AUTHORISATION)?;
        let mut mine: Vec<Authorisation> = match actor {
            Actor::FederationAdmin => all.into_iter().map(without_token).collect(),
            Actor::MemberAdmin(m) => {
                let m = m.to_string();
                all.into_iter().filter(|a| a.consumer_member == m).collect()
            }
        };
        mine.sort_by(|a, b| b.requested_at.cmp(&a.requested_at));
        Ok(mine)
    }

    /// A person's authorisations: the pending requests and the whole history, newest first,
    /// each in plain words, without tokens.
    pub fn authorisations_of_person(&self, person: &SubjectId) -> Result<Value, Problem> {
        let at = now();
        let mut all: Vec<Authorisation> = self
            .authorisation_ids_of(&person.to_string())?
            .iter()
            .filter_map(|id| self.authorisation(id).transpose())
            .collect::<Result<_, _>>()?;
        all.sort_by(|a, b| b.requested_at.cmp(&a.requested_at));
        let mut sensitive: std::collections::HashMap<String, Vec<String>> = Default::default();
        let mut views = Vec::with_capacity(all.len());
        for a in &all {
            if !sensitive.contains_key(&a.contract) {
                let fields = self.sensitive_fields_of(&a.contract).unwrap_or_default();
                sensitive.insert(a.contract.clone(), fields);
            }
            views.push(self.citizen_view(a, &sensitive[&a.contract], at));
        }
        let pending: Vec<Value> = views
            .iter()
            .filter(|v| v["state"] == "pending")
            .cloned()
            .collect();
        Ok(json!({
            "subject": person.to_string(),
            "pending": pending,
            "authorisations": views,
        }))
    }

    fn citizen_view(&self, a: &Authorisation, sensitive: &[String], at: OffsetDateTime) -> Value {
        let institution = a
            .consumer_member
            .parse::<MemberId>()
            .ok()
            .and_then(|m| self.registry.member(&m).ok())
            .map(|m| m.name)
            .unwrap_or_else(|| a.consumer_member.clone());
        json!({
            "id": a.id,
            "institution": institution,
            "consumer_member": a.consumer_member,
            "consumer": a.consumer,
            "contract": a.contract,
            "provider_service": a.provider_service,
            "purpose": a.purpose,
            "legal_basis": a.legal_basis,
            "sensitive_fields": sensitive,
            "procedure": a.procedure,
            "reason": a.reason,
            "state": a.state,
            "expired": a.state == State::Granted && a.expired(at),
            "requested_at": a.requested_at,
            "expires_at": a.expires_at,
            "events": a.events.iter().map(|e| json!({"event": e.event, "at": e.at})).collect::<Vec<_>>(),
        })
    }

    /// The sensitive fields a contract discloses (from the latest service version it covers).
    fn sensitive_fields_of(&self, contract: &str) -> Result<Vec<String>, Problem> {
        let c: Contract = self
            .registry
            .get(crate::model::kind::CONTRACT, contract)?
            .ok_or_else(|| not_found(contract))?;
        let Some(latest) = self
            .registry
            .service_versions(&c.terms.provider)?
            .into_iter()
            .rfind(|s| c.terms.versions.contains(s.version))
        else {
            return Ok(Vec::new());
        };
        Ok(self
            .registry
            .description(&latest)?
            .classes_disclosed(&c.terms.operations, &c.terms.allowed_fields)
            .into_iter()
            .filter(|(_, class)| *class == FieldClass::Sensitive)
            .map(|(p, _)| p)
            .collect())
    }

    /// The person named acts on their authorisation: `grant`, `refuse` or `revoke`. Another
    /// person, or an id that does not exist, gets not-found and nothing changes.
    pub async fn act(&self, person: &SubjectId, id: &str, action: &str) -> Result<Value, Problem> {
        let _w = self.registry.write.lock().await;
        let before = self
            .authorisation(id)?
            .filter(|a| a.subject == person.to_string())
            .ok_or_else(|| not_found(id))?;
        let at = now();
        let mut a = before.clone();
        let transition = |from: State| -> Result<(), Problem> {
            if before.state != from {
                return Err(Problem::new(
                    ProblemKind::InvalidTransition,
                    format!(
                        "authorisation {id} is {}; it cannot be {}",
                        serde_json::to_value(before.state)
                            .ok()
                            .and_then(|v| v.as_str().map(String::from))
                            .unwrap_or_default(),
                        match action {
                            "grant" => "granted",
                            "refuse" => "refused",
                            "revoke" => "revoked",
                            other => other,
                        }
                    ),
                )
                .with("state", before.state));
            }
            Ok(())
        };
        let (event, revoked) = match action {
            "grant" => {
                transition(State::Pending)?;
                let (token, expires_at) = self.issue_token(&before, at).await?;
                a.state = State::Granted;
                a.token = Some(token);
                a.expires_at = Some(expires_at);
                ("granted", false)
            }
            "refuse" => {
                transition(State::Pending)?;
                a.state = State::Refused;
                ("refused", false)
            }
            "revoke" => {
                transition(State::Granted)?;
                if before.expired(at) {
                    return Err(Problem::new(
                        ProblemKind::InvalidTransition,
                        format!("authorisation {id} has expired already"),
                    ));
                }
                a.state = State::Revoked;
                ("revoked", true)
            }
            other => {
                return Err(Problem::new(
                    ProblemKind::NotFound,
                    format!("no action `{other}`: grant, refuse or revoke"),
                ));
            }
        };
        a.events.push(Event {
            event: event.into(),
            at: rfc3339(at),
            by: "citizen".into(),
        });
        let by = format!("citizen:{person}");
        self.commit_authorisation(
            &by,
            &format!("authorisation.{action}"),
            Some(&before),
            &a,
            revoked,
        )
        .await?;
        let fields = self.sensitive_fields_of(&a.contract).unwrap_or_default();
        Ok(self.citizen_view(&a, &fields, now()))
    }

    /// Signs the token of a grant: valid from now until the earlier of the contract's end and
    /// the configured longest validity.
    async fn issue_token(
        &self,
        a: &Authorisation,
        at: OffsetDateTime,
    ) -> Result<(String, String), Problem> {
        let contract: Contract = self
            .registry
            .get(crate::model::kind::CONTRACT, &a.contract)?
            .ok_or_else(|| not_found(&a.contract))?;
        if !contract.is_active(at) {
            return Err(Problem::new(
                ProblemKind::InvalidTransition,
                format!("contract {} is no longer in force", a.contract),
            ));
        }
        let iat = at.unix_timestamp();
        let exp = (at + self.registry.settings.consent_validity)
            .min(contract.terms.valid_until)
            .unix_timestamp()
            .min(iat + token::MAX_LIFETIME_SECS);
        let claims = Claims {
            iss: enlace_certs::registry_uri(self.registry.instance()),
            jti: a.id.clone(),
            sub: a.subject.clone(),
            contract: a.contract.clone(),
            procedure: a.procedure.clone(),
            iat,
            exp,
        };
        let signer = self.registry.signer.lock().await;
        let der = enlace_certs::certificate_der(signer.certificate())?;
        let t = token::encode(&claims, &der, |m| signer.sign_bytes(m).0);
        if t.len() > token::MAX_TOKEN_BYTES {
            return Err(internal(format!(
                "the token is {} bytes, over {}",
                t.len(),
                token::MAX_TOKEN_BYTES
            )));
        }
        let expires = OffsetDateTime::from_unix_timestamp(exp).map_err(internal)?;
        Ok((t, rfc3339(expires)))
    }
}

/// The revoked authorisations whose tokens have not expired at `at`, for the signed
/// configuration.
pub(crate) fn revoked_authorisations(
    registry: &Registry,
    at: OffsetDateTime,
) -> Result<Vec<RevokedAuthorisation>, Problem> {
    let all: Vec<Revoked> = registry.list(REVOKED_AUTHORISATION)?;
    Ok(all
        .into_iter()
        .filter_map(|r| {
            let expires_at = OffsetDateTime::parse(&r.expires_at, &Rfc3339).ok()?;
            (expires_at > at).then_some(RevokedAuthorisation {
                id: r.id,
                expires_at,
            })
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn procedures_follow_the_header_rule() {
        assert!(check_procedure("deduccion-salud-2026").is_ok());
        assert!(check_procedure("").is_err());
        assert!(check_procedure("a b").is_err());
        assert!(check_procedure(&"a".repeat(129)).is_err());
    }
}

//! Data contracts: the terms under which a consumer subsystem may call a provider service,
//! their lifecycle (proposed, approved, refused, withdrawn, revoked), and field classes.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::id::{ContractId, MemberId, ServiceId, ServiceVersion, SubsystemId};
use crate::problem::{Problem, ProblemKind};

/// The class of a field a service returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FieldClass {
    Public,
    Personal,
    Sensitive,
    Statistical,
    Reserved,
    Secret,
}

impl FieldClass {
    pub const ALL: [FieldClass; 6] = [
        FieldClass::Public,
        FieldClass::Personal,
        FieldClass::Sensitive,
        FieldClass::Statistical,
        FieldClass::Reserved,
        FieldClass::Secret,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            FieldClass::Public => "public",
            FieldClass::Personal => "personal",
            FieldClass::Sensitive => "sensitive",
            FieldClass::Statistical => "statistical",
            FieldClass::Reserved => "reserved",
            FieldClass::Secret => "secret",
        }
    }
    pub fn parse(s: &str) -> Option<FieldClass> {
        FieldClass::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

/// An inclusive range of service versions a contract covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionRange {
    pub min: ServiceVersion,
    pub max: ServiceVersion,
}

impl VersionRange {
    pub fn contains(&self, v: ServiceVersion) -> bool {
        self.min <= v && v <= self.max
    }
}

/// Whether a contract may be used once or until it expires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Usage {
    SingleUse,
    Permanent,
}

/// The period over which a volume limit counts requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Period {
    Minute,
    Hour,
    Day,
    Month,
}

/// At most `max_requests` exchanges per `period`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeLimit {
    pub max_requests: u64,
    pub period: Period,
}

/// What a consumer proposes. Field pointers are those of the service description
/// (`/name`, `/address/street`, `/documents/*/number`); naming an object allows all it holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContractTerms {
    pub consumer: SubsystemId,
    pub provider: ServiceId,
    pub versions: VersionRange,
    pub operations: Vec<String>,
    pub purpose: String,
    pub legal_basis: String,
    pub allowed_fields: Vec<String>,
    pub subject_required: bool,
    pub usage: Usage,
    #[serde(default)]
    pub volume_limit: Option<VolumeLimit>,
    #[serde(with = "time::serde::rfc3339")]
    pub valid_from: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub valid_until: OffsetDateTime,
    pub authorisation_required: bool,
}

impl ContractTerms {
    /// Checks what can be checked without the service description.
    pub fn check_shape(&self) -> Result<(), Problem> {
        let bad = |detail: String| Err(Problem::new(ProblemKind::InvalidContract, detail));
        if self.operations.is_empty() || self.operations.len() > 256 {
            return bad("operations: between 1 and 256 operations must be named".into());
        }
        if self.allowed_fields.is_empty() || self.allowed_fields.len() > 1024 {
            return bad("allowed_fields: between 1 and 1024 fields must be named".into());
        }
        if !is_slug(&self.purpose) {
            return bad("purpose: must be a lower-case slug [a-z0-9-], 1 to 64 characters, like tax-refund-eligibility".into());
        }
        if self.legal_basis.trim().is_empty() || self.legal_basis.len() > 1000 {
            return bad("legal_basis: must be given, at most 1000 characters".into());
        }
        if self.valid_until <= self.valid_from {
            return bad("valid_until: must be after valid_from".into());
        }
        if self.versions.max < self.versions.min {
            return bad("versions: max must not be below min".into());
        }
        if let Some(v) = self.volume_limit
            && v.max_requests == 0
        {
            return bad("volume_limit.max_requests: must be at least 1".into());
        }
        if self.consumer.member == *self.provider.member()
            && self.consumer == self.provider.subsystem
        {
            return bad("consumer: a subsystem does not need a contract with itself".into());
        }
        Ok(())
    }
}

fn is_slug(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Where a contract is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ContractState {
    Proposed,
    Approved,
    Refused,
    Withdrawn,
    Revoked,
}

/// Who is acting on a contract.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Party {
    FederationAdmin,
    MemberAdmin(MemberId),
}

/// A change requested to a contract's state.
///
/// Read strictly: `{"action": …}` plus `reason` where the action takes one, and nothing else
/// (serde's internally tagged unit variants would ignore unknown members).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "lowercase", try_from = "ActionWire")]
pub enum ContractAction {
    Approve,
    Refuse { reason: String },
    Withdraw,
    Revoke { reason: String },
}

/// The wire form of a [`ContractAction`], before the members each action takes are checked.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ActionWire {
    action: String,
    #[serde(default)]
    reason: Option<String>,
}

impl TryFrom<ActionWire> for ContractAction {
    type Error = String;

    fn try_from(w: ActionWire) -> Result<Self, String> {
        let no_reason = |a: ContractAction| match w.reason {
            None => Ok(a),
            Some(_) => Err(format!("`{}` takes no `reason`", w.action)),
        };
        let reason = || {
            w.reason
                .clone()
                .ok_or_else(|| format!("`{}` needs a `reason`", w.action))
        };
        match w.action.as_str() {
            "approve" => no_reason(ContractAction::Approve),
            "withdraw" => no_reason(ContractAction::Withdraw),
            "refuse" => Ok(ContractAction::Refuse { reason: reason()? }),
            "revoke" => Ok(ContractAction::Revoke { reason: reason()? }),
            other => Err(format!(
                "unknown action `{other}` (approve, refuse, withdraw, revoke)"
            )),
        }
    }
}

/// A contract with its lifecycle.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Contract {
    pub id: ContractId,
    #[serde(flatten)]
    pub terms: ContractTerms,
    pub state: ContractState,
    #[serde(default)]
    pub reason: Option<String>,
}

impl Contract {
    /// Whether the contract admits a call by `client` to `service` `version` at `now`: not
    /// revoked (nor anything but approved), in force, binding this client to this service, and
    /// covering the version. The decision both nodes make, the provider node's being the one
    /// that counts; pure, so the caller brings the contract from its configuration and its own
    /// time.
    pub fn admits(
        &self,
        client: &SubsystemId,
        service: &ServiceId,
        version: ServiceVersion,
        now: OffsetDateTime,
    ) -> Result<(), Problem> {
        let id = &self.id;
        let missing = |detail: String| Err(Problem::new(ProblemKind::ContractMissing, detail));
        match self.state {
            ContractState::Approved => {}
            ContractState::Revoked => {
                return Err(Problem::new(
                    ProblemKind::ContractRevoked,
                    format!(
                        "contract {id} was revoked: {}",
                        self.reason.as_deref().unwrap_or("no reason given")
                    ),
                ));
            }
            _ => return missing(format!("contract {id} is not approved")),
        }
        if now >= self.terms.valid_until {
            return Err(Problem::new(
                ProblemKind::ContractExpired,
                format!(
                    "contract {id} expired at {}",
                    crate::rfc3339(self.terms.valid_until)
                ),
            ));
        }
        if now < self.terms.valid_from {
            return missing(format!(
                "contract {id} is valid only from {}",
                self.terms.valid_from
            ));
        }
        if &self.terms.consumer != client || &self.terms.provider != service {
            return missing(format!(
                "contract {id} does not let {client} call {service}"
            ));
        }
        if !self.terms.versions.contains(version) {
            return missing(format!("contract {id} does not cover {service} {version}"));
        }
        Ok(())
    }

    /// Whether the contract names `operation` (an OpenAPI operation id or a gRPC method's full
    /// name).
    pub fn allows_operation(&self, operation: &str) -> Result<(), Problem> {
        if self.terms.operations.iter().any(|o| o == operation) {
            return Ok(());
        }
        Err(Problem::new(
            ProblemKind::ContractMissing,
            format!("contract {} does not allow operation {operation}", self.id),
        ))
    }

    /// Whether the contract can be used at `now`.
    pub fn is_active(&self, now: OffsetDateTime) -> bool {
        self.state == ContractState::Approved
            && self.terms.valid_from <= now
            && now < self.terms.valid_until
    }

    /// The state after `action` by `party`, or why it is not allowed. Pure: the caller stores it.
    pub fn next_state(
        &self,
        action: &ContractAction,
        party: &Party,
    ) -> Result<ContractState, Problem> {
        let consumer = &self.terms.consumer.member;
        let provider = self.terms.provider.member();
        let is = |m: &MemberId| matches!(party, Party::MemberAdmin(p) if p == m);
        let wrong = |who: &str| {
            Err(Problem::new(
                ProblemKind::WrongParty,
                format!(
                    "only {who} may {} contract {}",
                    action_name(action),
                    self.id
                ),
            ))
        };
        let (from_ok, to) = match action {
            ContractAction::Approve => {
                if !is(provider) {
                    return wrong("the provider's member admin");
                }
                (
                    self.state == ContractState::Proposed,
                    ContractState::Approved,
                )
            }
            ContractAction::Refuse { reason } => {
                if !is(provider) {
                    return wrong("the provider's member admin");
                }
                check_reason(reason)?;
                (
                    self.state == ContractState::Proposed,
                    ContractState::Refused,
                )
            }
            ContractAction::Withdraw => {
                if !is(consumer) {
                    return wrong("the consumer's member admin");
                }
                (
                    self.state == ContractState::Proposed,
                    ContractState::Withdrawn,
                )
            }
            ContractAction::Revoke { reason } => {
                if !(is(consumer) || is(provider) || *party == Party::FederationAdmin) {
                    return wrong(
                        "the consumer's or provider's member admin or the federation admin",
                    );
                }
                check_reason(reason)?;
                (
                    self.state == ContractState::Approved,
                    ContractState::Revoked,
                )
            }
        };
        if !from_ok {
            return Err(Problem::new(
                ProblemKind::InvalidTransition,
                format!(
                    "contract {} is {:?}; it cannot be {}",
                    self.id,
                    self.state,
                    past_tense(action)
                ),
            )
            .with("state", self.state));
        }
        Ok(to)
    }
}

fn check_reason(reason: &str) -> Result<(), Problem> {
    if reason.trim().is_empty() || reason.len() > 1000 {
        return Err(Problem::new(
            ProblemKind::InvalidRequest,
            "reason: must be given, at most 1000 characters",
        ));
    }
    Ok(())
}

fn action_name(a: &ContractAction) -> &'static str {
    match a {
        ContractAction::Approve => "approve",
        ContractAction::Refuse { .. } => "refuse",
        ContractAction::Withdraw => "withdraw",
        ContractAction::Revoke { .. } => "revoke",
    }
}

fn past_tense(a: &ContractAction) -> &'static str {
    match a {
        ContractAction::Approve => "approved",
        ContractAction::Refuse { .. } => "refused",
        ContractAction::Withdraw => "withdrawn",
        ContractAction::Revoke { .. } => "revoked",
    }
}

#[cfg(test)]
mod tests;

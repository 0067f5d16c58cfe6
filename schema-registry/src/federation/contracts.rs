//! Data contracts: proposal, the actions of their lifecycle, and who may read them.

use enlace_core::contract::{Contract, ContractAction, ContractState, ContractTerms, FieldClass};
use enlace_core::id::ContractId;
use enlace_core::problem::{Problem, ProblemKind};

use crate::model::{ServiceRecord, kind};

use super::{Actor, Registry, not_found, to_value};

impl Registry {
    pub async fn propose_contract(
        &self,
        actor: &Actor,
        terms: ContractTerms,
    ) -> Result<Contract, Problem> {
        Self::require_member(actor, &terms.consumer.member)?;
        terms.check_shape()?;
        let _w = self.write.lock().await;
        self.approved_subsystem(&terms.consumer)?;
        let versions: Vec<ServiceRecord> = self
            .service_versions(&terms.provider)?
            .into_iter()
            .filter(|s| terms.versions.contains(s.version))
            .collect();
        if versions.is_empty() {
            return Err(Problem::new(
                ProblemKind::UnknownService,
                format!(
                    "{} has no published version in {}..{}",
                    terms.provider, terms.versions.min, terms.versions.max
                ),
            ));
        }
        // Every covered version must offer the operations and fields named.
        for v in &versions {
            let desc = self.description(v)?;
            desc.check_contract_fields(&terms.operations, &terms.allowed_fields)
                .map_err(|p| {
                    let d = format!("{} {}: {}", terms.provider, v.version, p.detail);
                    Problem { detail: d, ..p }
                })?;
            let sensitive: Vec<String> = desc
                .classes_disclosed(&terms.operations, &terms.allowed_fields)
                .into_iter()
                .filter(|(_, c)| *c == FieldClass::Sensitive)
                .map(|(p, _)| p)
                .collect();
            if !sensitive.is_empty() && !terms.authorisation_required {
                return Err(Problem::new(
                    ProblemKind::InvalidContract,
                    format!("allowed_fields include sensitive fields ({}); authorisation_required must be true", sensitive.join(", ")),
                )
                .with("fields", &sensitive));
            }
            let forbidden_classes: Vec<String> = desc
                .classes_disclosed(&terms.operations, &terms.allowed_fields)
                .into_iter()
                .filter(|(_, c)| *c == FieldClass::Secret)
                .map(|(p, _)| p)
                .collect();
            if !forbidden_classes.is_empty() {
                return Err(Problem::new(
                    ProblemKind::InvalidContract,
                    format!(
                        "secret fields cannot be disclosed under a contract: {}",
                        forbidden_classes.join(", ")
                    ),
                )
                .with("fields", &forbidden_classes));
            }
        }
        let contract = Contract {
            id: ContractId::generate(),
            terms,
            state: ContractState::Proposed,
            reason: None,
        };
        self.commit(
            actor,
            "contract.propose",
            vec![(
                kind::CONTRACT,
                contract.id.to_string(),
                to_value(&contract)?,
            )],
            vec![],
        )
        .await?;
        Ok(contract)
    }

    pub async fn act_on_contract(
        &self,
        actor: &Actor,
        id: &ContractId,
        action: ContractAction,
    ) -> Result<Contract, Problem> {
        let _w = self.write.lock().await;
        let mut contract = self.contract_any(id)?;
        if let Actor::MemberAdmin(m) = actor
            && m != &contract.terms.consumer.member
            && m != contract.terms.provider.member()
        {
            return Err(not_found("contract", &id.to_string()));
        }
        let next = contract.next_state(&action, &actor.party())?;
        contract.state = next;
        contract.reason = match &action {
            ContractAction::Refuse { reason } | ContractAction::Revoke { reason } => {
                Some(reason.clone())
            }
            _ => contract.reason,
        };
        let name = match action {
            ContractAction::Approve => "contract.approve",
            ContractAction::Refuse { .. } => "contract.refuse",
            ContractAction::Withdraw => "contract.withdraw",
            ContractAction::Revoke { .. } => "contract.revoke",
        };
        self.commit(
            actor,
            name,
            vec![(kind::CONTRACT, id.to_string(), to_value(&contract)?)],
            vec![],
        )
        .await?;
        Ok(contract)
    }

    fn contract_any(&self, id: &ContractId) -> Result<Contract, Problem> {
        self.get(kind::CONTRACT, id.as_str())?
            .ok_or_else(|| not_found("contract", id.as_str()))
    }

    /// A contract, visible to the federation admin and the two members it binds.
    pub fn contract(&self, actor: &Actor, id: &ContractId) -> Result<Contract, Problem> {
        let c = self.contract_any(id)?;
        match actor {
            Actor::FederationAdmin => Ok(c),
            Actor::MemberAdmin(m)
                if m == &c.terms.consumer.member || m == c.terms.provider.member() =>
            {
                Ok(c)
            }
            // Do not reveal that it exists.
            Actor::MemberAdmin(_) => Err(not_found("contract", id.as_str())),
        }
    }

    pub fn contracts(&self, actor: &Actor) -> Result<Vec<Contract>, Problem> {
        let all: Vec<Contract> = self.list(kind::CONTRACT)?;
        Ok(match actor {
            Actor::FederationAdmin => all,
            Actor::MemberAdmin(m) => all
                .into_iter()
                .filter(|c| &c.terms.consumer.member == m || c.terms.provider.member() == m)
                .collect(),
        })
    }
}

//! Whether the contract lets this call through: it is in the configuration, the client is an
//! approved subsystem, the contract admits the call (the pure decision,
//! `enlace_core::contract::Contract::admits`, with `allows_operation` for the operation), the
//! person is named where it is required, and volume is left.

use enlace_core::contract::Contract;
use enlace_core::id::{ServiceId, ServiceVersion};
use enlace_core::problem::{Problem, ProblemKind};

use super::context::{self, Context};
use crate::relay::{Node, Snapshot};
use enlace_msglog::Usage;

/// The contract checks the consumer can make before anything leaves: it exists, binds this
/// client to this service, is active, and a subject is given if required. The provider node
/// checks again, and its check is the one that counts.
pub(crate) fn check_contract<'a>(
    snap: &'a Snapshot,
    ctx: &Context,
    service: &ServiceId,
    version: ServiceVersion,
) -> Result<&'a Contract, Problem> {
    let Some(id) = &ctx.contract else {
        return Err(Problem::new(
            ProblemKind::ContractMissing,
            format!(
                "{}: name the contract this call is made under",
                context::CONTRACT
            ),
        ));
    };
    let contract = snap.contract(id).ok_or_else(|| {
        Problem::new(
            ProblemKind::ContractMissing,
            format!("contract {id} is not an approved contract of the federation"),
        )
    })?;
    if !snap.has_subsystem(&ctx.client) {
        return Err(Problem::new(
            ProblemKind::Forbidden,
            format!(
                "{} is not an approved subsystem of the federation",
                ctx.client
            ),
        ));
    }
    contract.admits(
        &ctx.client,
        service,
        version,
        time::OffsetDateTime::now_utc(),
    )?;
    if contract.terms.subject_required && ctx.subject.is_none() {
        return Err(Problem::new(
            ProblemKind::InvalidRequest,
            format!(
                "contract {id} requires {}: the person the data is about",
                context::SUBJECT
            ),
        ));
    }
    Ok(contract)
}

/// Volume and single use, counted only once every other check has passed. Returns what to
/// commit with the request's log record, so that the counts survive a restart.
pub(crate) fn admit(node: &Node, contract: &Contract) -> Result<Vec<Usage>, Problem> {
    let now = node.now();
    let mut usage = Vec::new();
    if !node
        .volume
        .admit(&contract.id, contract.terms.volume_limit, now)
    {
        return Err(Problem::new(
            ProblemKind::VolumeExceeded,
            format!(
                "contract {} allows no more exchanges this period",
                contract.id
            ),
        ));
    }
    if let Some(limit) = contract.terms.volume_limit {
        usage.push(Usage {
            contract: contract.id.to_string(),
            period: super::guard::period_index(limit.period, now),
        });
    }
    if contract.terms.usage == enlace_core::contract::Usage::SingleUse {
        if !node.volume.use_once(&contract.id) {
            return Err(Problem::new(
                ProblemKind::ContractExpired,
                format!(
                    "contract {} was for a single use and has been used",
                    contract.id
                ),
            ));
        }
        usage.push(Usage {
            contract: contract.id.to_string(),
            period: enlace_msglog::SINGLE_USE_PERIOD,
        });
    }
    Ok(usage)
}

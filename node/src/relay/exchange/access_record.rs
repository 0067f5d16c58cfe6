//! The provider node's access records: one per exchange that names a data subject, served or
//! refused once the contract it named is known, signed by the node and queued durably before the
//! response leaves (the shipper in `access.rs` takes it to the registry).

use enlace_core::access::AccessRecord;
use enlace_core::config::ServiceEntry;
use enlace_core::contract::Contract;
use enlace_core::problem::{Problem, ProblemKind};

use super::context::Context;
use crate::relay::{Node, Snapshot};
use enlace_msglog::outbox::sign_record;

/// What an access record says about one exchange.
pub(crate) struct Exchange<'a> {
    pub message_id: &'a str,
    pub context: &'a Context,
    pub service: &'a ServiceEntry,
    pub contract: &'a Contract,
    pub operation: &'a str,
    /// Fields disclosed after minimisation.
    pub fields: Vec<String>,
    /// `None` when served.
    pub refused: Option<ProblemKind>,
    pub status: u16,
    pub request_digest: Option<String>,
    pub response_digest: Option<String>,
}

/// The contract a refused exchange named, as the configuration holds it (whatever its state):
/// a refusal is recorded only when the contract, and so the purpose, is known.
pub(crate) fn named_contract<'a>(snap: &'a Snapshot, ctx: &Context) -> Option<&'a Contract> {
    let id = ctx.contract.as_ref()?;
    snap.contract(id)
}

/// What is known of a refused exchange when it is refused.
pub(crate) struct Refused<'a> {
    pub context: Option<&'a Context>,
    pub service: Option<&'a ServiceEntry>,
    pub message_id: Option<&'a str>,
    /// The operation, or what names it when no operation was matched (the method and path).
    pub operation: String,
    pub request_digest: Option<String>,
    pub response_digest: Option<String>,
}

/// The signed record of a refusal: only once the subject, the service, the message id and the
/// contract named are known (the contract gives the purpose and legal basis).
pub(crate) fn refusal(
    node: &Node,
    problem: &Problem,
    r: Refused<'_>,
) -> Option<enlace_core::access::SignedAccessRecord> {
    let (context, service, message_id) = (r.context?, r.service?, r.message_id?);
    let snap = node.snapshot().ok()?;
    let contract = named_contract(&snap, context)?;
    record(
        node,
        Exchange {
            message_id,
            context,
            service,
            contract,
            operation: &r.operation,
            fields: Vec::new(),
            refused: Some(problem.kind),
            status: problem.kind.status(),
            request_digest: r.request_digest,
            response_digest: r.response_digest,
        },
    )
}

/// The signed record of an exchange; `None` when it names no data subject.
pub(crate) fn record(
    node: &Node,
    ex: Exchange<'_>,
) -> Option<enlace_core::access::SignedAccessRecord> {
    let subject = ex.context.subject.as_ref()?;
    let ctx = ex.context;
    // The authorisation the exchange relied on, or why the one it carried was not accepted.
    let (authorisation, authorisation_refused) =
        super::disclosure::outcome(node, ctx, ex.contract).for_record();
    let at = node
        .now()
        .replace_nanosecond(0)
        .unwrap_or_else(|_| time::OffsetDateTime::now_utc())
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let record = AccessRecord {
        message_id: ex.message_id.to_string(),
        at,
        consumer_member: ctx.client.member.to_string(),
        consumer_subsystem: ctx.client.to_string(),
        provider_service: ex.service.id.to_string(),
        provider_version: ex.service.version.to_string(),
        operation: if ex.operation.is_empty() {
            "unknown".to_string()
        } else {
            ex.operation.to_string()
        },
        subject: subject.to_string(),
        fields: ex.fields,
        purpose: ex.contract.terms.purpose.clone(),
        legal_basis: ex.contract.terms.legal_basis.clone(),
        contract: ex.contract.id.as_str().to_string(),
        procedure: ctx.procedure.clone(),
        step: ctx.step.clone(),
        user: ctx.user.clone(),
        authorisation,
        result: AccessRecord::result_for(ex.refused),
        status: ex.status,
        request_digest: ex.request_digest,
        response_digest: ex.response_digest,
        node: node.settings.id.to_string(),
        authorisation_refused,
    };
    Some(sign_record(record, &node.signing_key.current()))
}

/// Queues the record durably (a no-op without one); the response waits for this.
/// The access record as the message log queues it with its exchange's record
/// (`Extras::access`): committed in the same transaction, shipped later.
pub(crate) fn queued(
    record: Option<enlace_core::access::SignedAccessRecord>,
) -> enlace_msglog::Extras {
    enlace_msglog::Extras {
        usage: Vec::new(),
        access: record.map(|r| (r.record.message_id.clone(), r.canonical_bytes())),
    }
}

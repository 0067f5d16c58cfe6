//! Which service a call is for: on the consumer side, the provider node that serves it; on
//! the provider side, the local backend and the service entry the path names.

use enlace_core::id::ServiceId;
use enlace_core::problem::{Problem, ProblemKind};

use super::context;
use super::target::Target;
use crate::relay::{Node, Snapshot};

/// The service version a call goes to, and the node of the member that provides it.
pub(crate) fn resolve_provider<'a>(
    snap: &'a Snapshot,
    target: &Target,
) -> Result<
    (
        &'a enlace_core::config::ServiceEntry,
        &'a enlace_core::config::NodeEntry,
    ),
    Problem,
> {
    let entry = Node::resolve_service(snap, &target.service, target.major)?;
    let member = target.service.member();
    let provider = snap.node_of(member).ok_or_else(|| {
        Problem::new(
            ProblemKind::PeerUnreachable,
            format!("{member} has no approved node"),
        )
    })?;
    Ok((entry, provider))
}

/// The service this node provides that the path names, and its backend.
pub(crate) fn resolve_service<'a>(
    node: &'a Node,
    snap: &'a Snapshot,
    headers: &http::HeaderMap,
    target: &Target,
) -> Result<(&'a enlace_core::config::ServiceEntry, &'a (String, bool)), Problem> {
    let backend = node.settings.services.get(&target.service).ok_or_else(|| {
        Problem::new(
            ProblemKind::UnknownService,
            format!("this node does not provide {}", target.service),
        )
    })?;
    let entry = Node::resolve_service(snap, &target.service, target.major)?;
    let named = context::single(headers, context::SERVICE, 300)?.unwrap_or_default();
    let named_service = named.rsplit_once('/').map(|(s, _)| s).unwrap_or("");
    if named_service.parse::<ServiceId>().ok().as_ref() != Some(&target.service) {
        return Err(Problem::new(
            ProblemKind::InvalidRequest,
            format!(
                "{}: `{named}` does not name the service in the path",
                context::SERVICE
            ),
        ));
    }
    Ok((entry, backend))
}

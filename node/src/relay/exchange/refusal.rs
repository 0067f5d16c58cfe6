//! A refusal on the consumer listener that is not part of an exchange, logged like any other.

use enlace_core::id::SubsystemId;
use enlace_core::problem::{Problem, ProblemKind};
use http::{Method, Response, Uri};

use super::log_record::{About, context_record, set_target};
use crate::net::Body;
use crate::relay::{Node, problem_response};
use enlace_msglog::RecordKind;

/// Logs a refusal on the consumer listener that is not part of an exchange (an unknown path,
/// a metaservice call with a bad token) like any other, under a message id of its own, and
/// answers with the problem.
pub(crate) async fn refuse_outside_exchange(
    node: &Node,
    method: &Method,
    uri: &Uri,
    client: Option<&SubsystemId>,
    problem: Problem,
) -> Response<Body> {
    let message_id = node.new_message_id();
    tracing::info!(%message_id, client = ?client.map(|c| c.to_string()), path = %uri.path(), problem = problem.kind.slug(), detail = %problem.detail, "request refused");
    let about = About {
        message_id: &message_id,
        client,
        context: None,
        service: "",
        operation: "",
        peer: None,
    };
    let mut rec = context_record(RecordKind::Refusal, problem.kind.status(), about);
    set_target(&mut rec, method, uri);
    rec.problem = Some(problem.kind.slug().to_string());
    if let Err(p) = node.log.append(rec).await {
        if p.kind != ProblemKind::LogUnavailable {
            tracing::error!(problem = %p, "could not log a refusal");
        }
        return problem_response(&p, Some(&message_id));
    }
    problem_response(&problem, Some(&message_id))
}

//! The person a request asks about, where the service description binds one, must be the one
//! `Enlace-Subject` names.

use enlace_core::id::SubjectId;
use enlace_core::problem::{Problem, ProblemKind};

use super::context::{self, Context};

/// The person a request asks about, where the service description binds one
/// (`x-enlace-subject`), must be the one `Enlace-Subject` names: the access log then names the
/// person whose data was read, and a consumer cannot read one person's data in another's name.
/// A pure decision: the caller records the person asked about for the access record of a
/// refusal.
pub(crate) fn bind_subject(
    bound: Option<&str>,
    ctx: &Context,
    operation: &str,
) -> Result<(), Problem> {
    let Some(bound) = bound else {
        return Ok(());
    };
    let asked: SubjectId = bound.parse().map_err(|e: enlace_core::IdError| {
        Problem::new(
            ProblemKind::RequestSchemaViolation,
            format!(
                "the request asks about `{bound}`, which is not a valid person identifier: {e}"
            ),
        )
    })?;
    match &ctx.subject {
        Some(named) if *named == asked => Ok(()),
        Some(named) => Err(Problem::new(
            ProblemKind::SubjectMismatch,
            format!(
                "{} names {named}, but the request asks about {asked}",
                context::SUBJECT
            ),
        )),
        None => Err(Problem::new(
            ProblemKind::SubjectMismatch,
            format!(
                "operation {operation} is about a person ({asked}); name them in {}",
                context::SUBJECT
            ),
        )),
    }
}

//! The person a request asks about, where the service description binds one, must be the one
//! `Enlace-Subject` names.

use enlace_core::id::SubjectId;
use enlace_core::problem::{Problem, ProblemKind};

use super::context;

/// The person a request asks about, where the service description binds one
/// (`x-enlace-subject` in OpenAPI, `(enlace.subject)` in protobuf), must be the one
/// `Enlace-Subject` names: the access log then names the person whose data was read, and a
/// consumer cannot read one person's data in another's name. `place` says where the request
/// names them ("the request", "request field `run`"), for the refusal's wording.
///
/// A pure decision, the same for both transports: on a refusal the caller notes the person
/// asked about (`bound`, where it parses) for the refusal's access record.
pub(crate) fn bind_subject(
    bound: Option<&str>,
    place: &str,
    named: Option<&SubjectId>,
    operation: &str,
) -> Result<(), Problem> {
    let Some(bound) = bound else {
        return Ok(());
    };
    let asked: SubjectId = bound.parse().map_err(|e: enlace_core::IdError| {
        let shown: String = bound.chars().take(100).collect();
        Problem::new(
            ProblemKind::RequestSchemaViolation,
            format!("{place} asks about `{shown}`, which is not a valid person identifier: {e}"),
        )
    })?;
    match named {
        Some(named) if *named == asked => Ok(()),
        Some(named) => Err(Problem::new(
            ProblemKind::SubjectMismatch,
            format!(
                "{} names {named}, but {place} asks about {asked}",
                context::SUBJECT
            ),
        )),
        None => Err(Problem::new(
            ProblemKind::SubjectMismatch,
            format!(
                "{operation} is about a person ({asked}); name them in {}",
                context::SUBJECT
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(s: &str) -> SubjectId {
        s.parse().unwrap()
    }

    #[test]
    fn unbound_requests_pass_bound_ones_must_match() {
        let named = run("CL-RUN:12345678-5");
        assert!(bind_subject(None, "the request", None, "op").is_ok());
        assert!(bind_subject(Some("CL-RUN:12345678-5"), "the request", Some(&named), "op").is_ok());
        let other = bind_subject(Some("CL-RUN:11111111-1"), "the request", Some(&named), "op");
        assert_eq!(other.unwrap_err().kind, ProblemKind::SubjectMismatch);
        let unnamed = bind_subject(Some("CL-RUN:11111111-1"), "the request", None, "op");
        assert_eq!(unnamed.unwrap_err().kind, ProblemKind::SubjectMismatch);
        let invalid = bind_subject(Some("nobody"), "request field `run`", Some(&named), "op");
        let p = invalid.unwrap_err();
        assert_eq!(p.kind, ProblemKind::RequestSchemaViolation);
        assert!(p.detail.contains("request field `run`"), "{}", p.detail);
    }
}

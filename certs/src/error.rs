//! The crate's result type and short constructors of the problems it reports.

use enlace_core::problem::{Problem, ProblemKind};

/// Every fallible function of this crate returns an RFC 9457 [`Problem`].
pub type Result<T> = std::result::Result<T, Problem>;

/// Bad input from the caller: an unparsable PEM, a CSR that does not verify, a wrong key type.
pub(crate) fn invalid(detail: impl Into<String>) -> Problem {
    Problem::new(ProblemKind::InvalidRequest, detail)
}

/// A certificate that does not authenticate its holder: bad chain, revoked, expired, wrong URI.
pub(crate) fn unauthenticated(detail: impl Into<String>) -> Problem {
    Problem::new(ProblemKind::Unauthenticated, detail)
}

/// Input larger than we are willing to parse.
pub(crate) fn too_large(what: &str, len: usize, max: usize) -> Problem {
    Problem::new(
        ProblemKind::BodyTooLarge,
        format!("{what} is {len} bytes, more than the {max} allowed"),
    )
    .with("max_bytes", max)
}

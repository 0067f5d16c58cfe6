//! The vocabulary both sides of Enlace speak: identifiers, the error vocabulary (RFC 9457
//! problems), data contracts and the signed global configuration.
#![forbid(unsafe_code)]

pub mod access;
pub mod authorisation;
pub mod config;
pub mod contract;
pub mod evidence;
pub mod id;
pub mod loghead;
pub mod merkle;
pub mod outage;
pub mod problem;
pub mod renewal;
pub mod settings;

pub use config::{GlobalConfig, SignedConfig};
pub use contract::{Contract, ContractState, ContractTerms, FieldClass, Party};
pub use id::{
    ConceptId, ContractId, IdError, Instance, MemberClass, MemberId, NodeId, ServiceId,
    ServiceVersion, SubjectId, SubsystemId,
};
pub use problem::{Culprit, Problem, ProblemKind};

/// `t` as RFC 3339 (`2026-12-03T08:58:04.6Z`), the one time format Enlace's answers and
/// messages use.
pub fn rfc3339(t: time::OffsetDateTime) -> String {
    t.to_offset(time::UtcOffset::UTC)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}

#[cfg(test)]
mod time_tests {
    #[test]
    fn times_are_rfc3339_in_utc() {
        let t = time::macros::datetime!(2026-12-03 05:58:04.6 -3);
        assert_eq!(super::rfc3339(t), "2026-12-03T08:58:04.6Z");
    }
}

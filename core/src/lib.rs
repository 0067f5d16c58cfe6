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

//! The phases of an exchange that REST and gRPC share, one module per decision, in the order
//! a request meets them. The transports (`rest/`, `grpc/`) are adapters that read their
//! requests into these phases and write their refusals out.
//!
//! Consumer side: authenticate the backend (`backend`) → read the target (`target`) → read
//! the context (`context`) → resolve the provider (`resolve`) → check the contract and the
//! operation (`contract`) → sign → log (`log_record`) → send.
//!
//! Provider side: authenticate the peer and verify its signature (`peer`) → read the target
//! (`target`) → resolve the service (`resolve`) → check the contract, the operation
//! (`contract`) → bind the subject (`subject`) → count volume (`contract::admit`, with the
//! counters in `guard`) → log (`log_record`) → forward → compute the disclosure and minimise
//! (`disclosure`) → sign → log with the access record (`access_record`).

pub(crate) mod access_record;
pub(crate) mod backend;
pub mod context;
pub(crate) mod contract;
pub(crate) mod disclosure;
pub(crate) mod guard;
pub(crate) mod log_record;
pub(crate) mod peer;
pub(crate) mod refusal;
pub(crate) mod resolve;
pub(crate) mod subject;
pub(crate) mod target;

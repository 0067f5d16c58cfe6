//! The sample `personas` backends of the Registro Civil: what an institution's own systems
//! would be, behind its node. `enlace up` runs both, the tests and the benchmarks call them;
//! a node never needs them (it relays any service generically).
#![forbid(unsafe_code)]

pub mod grpc;
pub mod rest;

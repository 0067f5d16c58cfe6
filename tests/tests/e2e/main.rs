//! Enlace end to end, in one test binary: a registry and nodes on ephemeral loopback ports,
//! real mutual TLS, real signatures. One binary rather than one per file keeps the build
//! small enough for a CI disk (each binary links aws-lc, SQLite, tonic and hyper).

mod access_log;
mod attacks;
mod backend_tls;
mod browser;
mod citizen;
mod citizen_page;
mod clock;
mod config;
mod consent;
mod grpc;
mod grpc_attacks;
mod grpc_evidence;
mod grpc_reflection;
mod grpc_subject;
mod hidden_records;
mod message_log;
mod rate_limits;
mod registry;
mod relay;
mod renewal;
mod slow_clients;
mod strict_parsing;

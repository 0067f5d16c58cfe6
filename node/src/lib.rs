//! The Enlace node: consumer proxy, provider listener, RFC 9421 signing, message log, and the
//! configuration client.
#![forbid(unsafe_code)]

pub mod access;
pub mod bundle;
pub mod clock;
pub mod config;
pub mod consumer_tls;
pub mod msglog;
pub mod net;
pub mod relay;
pub mod renewal;
pub mod settings;

pub use config::{ConfigClient, ConfigSource};

//! The Enlace node. This crate holds the configuration client today; the consumer proxy,
//! provider listener, signing and message log come with the relay.
#![forbid(unsafe_code)]

pub mod config;

pub use config::{ConfigClient, ConfigSource};

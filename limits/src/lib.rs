//! Bounds on what one caller can take from a node or the registry: open connections per
//! listener and per source address, requests per second per key (a token bucket), the
//! process's descriptor limit, and log lines about all of these at most once per interval.
//!
//! Nothing here keeps a token or a person's identifier: rate-limit keys are hashed on entry
//! with a per-process random key, and log lines name listeners and counts, never addresses.
#![forbid(unsafe_code)]

mod connections;
mod descriptors;
mod rate;
mod throttle;

pub use connections::{ConnectionCaps, ConnectionPermit, admit, source_key};
pub use descriptors::{Descriptors, raise_descriptor_limit};
pub use rate::{RateLimiter, RateLimits};
pub use throttle::Throttle;

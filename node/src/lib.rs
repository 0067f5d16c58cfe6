//! The Enlace node: consumer proxy, provider listener, RFC 9421 signing, message log, and the
//! configuration client.
#![forbid(unsafe_code)]

pub mod audit;
pub mod bundle;
mod clock;
mod config;
mod consumer_tls;
mod net;
mod relay;
mod renewal;
pub mod settings;

// The node's surface: what the binary (`enlace node`, `enlace up`, `enlace audit`), the
// end-to-end tests, the benchmarks and the fuzz targets use. The modules behind it stay private.
pub use clock::Clock;
pub use config::{ConfigClient, ConfigSource, registry_client, verify as verify_config};
pub use net::{
    Body, BodySender, ChannelBody, DialMaterial, HEADER_READ_TIMEOUT, PeerPool, body_channel,
    read_body, serve_mtls, serve_plain,
};
pub use relay::{RunningNode, context, start, start_with_clock};

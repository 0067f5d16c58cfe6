//! Who the local backend is, and whether it is within its rate.

use std::time::Duration;

use enlace_core::id::SubsystemId;
use enlace_core::problem::{Problem, ProblemKind};
use http::HeaderMap;

use crate::relay::Node;

/// How much longer the consumer waits for the provider node than a provider waits for its
/// backend (the same `upstream_timeout_ms` on both, by default): time to log, sign and send
/// the provider's refusal.
pub(crate) const PEER_MARGIN: Duration = Duration::from_secs(2);

/// Who the local backend is: the subsystem its TLS client certificate is pinned to (on the
/// TLS consumer listener), or the one its bearer token is bound to. When it shows both, they
/// must name the same subsystem.
pub(crate) fn authenticate_backend(
    node: &Node,
    headers: &HeaderMap,
    extensions: &http::Extensions,
) -> Result<(SubsystemId, bool), Problem> {
    if headers
        .get_all(http::header::AUTHORIZATION)
        .iter()
        .nth(1)
        .is_some()
    {
        return Err(Problem::repeated_authorization());
    }
    let token = match headers.get(http::header::AUTHORIZATION) {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|v| v.strip_prefix("Bearer "))
                .filter(|t| !t.is_empty() && t.len() <= 256)
                .ok_or_else(|| {
                    Problem::new(
                        ProblemKind::Unauthenticated,
                        "Authorization: must be `Bearer <token>` with a token of at most 256 characters",
                    )
                })?,
        ),
    };
    let by_token = match token {
        Some(t) => Some(
            node.settings
                .clients
                .get(&enlace_description::sha256_hex(t.as_bytes()))
                .cloned()
                .ok_or_else(|| {
                    Problem::new(ProblemKind::Unauthenticated, "unknown backend token")
                })?,
        ),
        None => None,
    };
    let by_cert = match extensions.get::<crate::consumer_tls::BackendCertificate>() {
        Some(c) => match node.settings.client_certs.get(&c.0) {
            Some(found) => Some(found.clone()),
            // An unknown certificate is no identity; a token may still be one.
            None if by_token.is_some() => None,
            None => {
                return Err(Problem::new(
                    ProblemKind::Unauthenticated,
                    format!(
                        "the client certificate (SHA-256 {}) is not pinned to a subsystem of this node",
                        c.0
                    ),
                ));
            }
        },
        None => None,
    };
    match (by_cert, by_token) {
        (Some(c), Some(t)) if c.0 != t.0 => Err(Problem::new(
            ProblemKind::Forbidden,
            format!(
                "the client certificate is pinned to {} but the token belongs to {}",
                c.0, t.0
            ),
        )),
        (Some(c), _) => Ok(c),
        (None, Some(t)) => Ok(t),
        (None, None) => Err(Problem::new(
            ProblemKind::Unauthenticated,
            "a local backend authenticates with a pinned TLS client certificate or Authorization: Bearer <token>",
        )),
    }
}

/// The calling subsystem is within its rate (`limits.requests_per_sec_per_subsystem`), or the
/// request is refused with 429 `rate-limited` and `Retry-After`.
pub(crate) fn within_rate(node: &Node, client: &SubsystemId) -> Result<(), Problem> {
    node.rate
        .check(client)
        .map_err(|wait| Problem::rate_limited(&format!("subsystem {client}"), wait))
}

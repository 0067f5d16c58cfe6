//! Who the calling peer node is: its message id, that it is the node of the client's member,
//! and that its signature verifies.

use std::sync::Arc;

use enlace_core::id::NodeId;
use enlace_core::problem::{Culprit, Problem, ProblemKind};
use http::HeaderMap;

use super::context::{self, Context};
use crate::relay::{Node, Snapshot};
use enlace_httpsig as signature;

pub(crate) fn read_message_id(headers: &HeaderMap) -> Result<String, Problem> {
    let id = context::single(headers, context::MESSAGE_ID, 64)?.ok_or_else(|| {
        Problem::new(
            ProblemKind::SignatureInvalid,
            format!("{}: required", context::MESSAGE_ID),
        )
    })?;
    let uuid = uuid::Uuid::parse_str(&id).map_err(|_| {
        Problem::new(
            ProblemKind::InvalidRequest,
            format!("{}: not a UUID", context::MESSAGE_ID),
        )
    })?;
    if uuid.get_version_num() != 7 || uuid.hyphenated().to_string() != id {
        return Err(Problem::new(
            ProblemKind::InvalidRequest,
            format!(
                "{}: must be a UUIDv7 in lower-case hyphenated form",
                context::MESSAGE_ID
            ),
        ));
    }
    Ok(id)
}

/// Admits a peer node's call: a bounded header section, its message id and context (each noted
/// in `seen` as soon as it is read, for the log record of a refusal), the configuration it is
/// judged by, and a TLS peer that is an approved node of the member the context names as the
/// client. Answers the message id, the context and the configuration.
pub(crate) fn admit_peer(
    node: &Node,
    headers: &HeaderMap,
    peer: &NodeId,
    seen: (&mut Option<String>, &mut Option<Context>),
) -> Result<(String, Context, Arc<Snapshot>), Problem> {
    context::check_header_section(headers, node.settings.raw.limits.max_header_bytes)?;
    let message_id = read_message_id(headers)?;
    *seen.0 = Some(message_id.clone());
    let ctx = Context::read(headers)?;
    *seen.1 = Some(ctx.clone());
    let snap = node.snapshot()?;
    verify_peer(&snap, peer, &ctx)?;
    Ok((message_id, ctx, snap))
}

/// The TLS peer must be an approved, unrevoked node of the member the client belongs to: a
/// node never speaks for another member's subsystems.
pub(crate) fn verify_peer(snap: &Snapshot, peer: &NodeId, ctx: &Context) -> Result<(), Problem> {
    if !snap.nodes.contains_key(peer) {
        return Err(Problem::new(
            ProblemKind::Forbidden,
            format!("{peer} is not an approved node of the federation (revoked or unknown)"),
        )
        .caused_by(Culprit::PeerNode));
    }
    if ctx.client.member != peer.member {
        return Err(Problem::new(
            ProblemKind::Forbidden,
            format!(
                "node {peer} cannot call on behalf of {}, a subsystem of another member",
                ctx.client
            ),
        )
        .caused_by(Culprit::PeerNode));
    }
    Ok(())
}

/// RFC 9421: signed by the TLS peer's signing key, covering everything Enlace requires,
/// fresh, and with a body matching its `Content-Digest`.
pub(crate) fn verify_signature(
    node: &Node,
    snap: &Snapshot,
    parts: &http::request::Parts,
    body: &[u8],
    peer: &NodeId,
) -> Result<signature::VerifiedSignature, Problem> {
    let expected = peer.to_string();
    signature::verify_request(
        signature::Message::request(&parts.method, &parts.uri, &parts.headers),
        body,
        |keyid| node.keys_of(snap, &expected, "the TLS peer", keyid),
        node.unix_now(),
        node.settings.raw.limits.clock_skew_secs,
    )
    .map_err(|p| node.config.registry_offset().blame_stale(p))
}

/// The operation's header parameters present in the request, each of which the consumer
/// node's signature must cover: only those travel on to the backend.
pub(crate) fn covered_header_params<'a>(
    declared: &[&'a str],
    headers: &HeaderMap,
    verified: &signature::VerifiedSignature,
) -> Result<Vec<&'a str>, Problem> {
    let mut out = Vec::new();
    for name in declared
        .iter()
        .filter(|n| headers.contains_key(**n) && !context::is_reserved(n))
    {
        if !verified
            .components
            .iter()
            .any(|c| c.name == *name && !c.req)
        {
            return Err(Problem::new(
                ProblemKind::SignatureInvalid,
                format!("header parameter `{name}` is not covered by the request signature"),
            ));
        }
        out.push(*name);
    }
    Ok(out)
}

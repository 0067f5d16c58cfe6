//! The request direction of a client-streaming call: each message strictly decoded, bound to
//! the named person where the method binds one, chained, and passed on to the backend.

use super::*;

/// The request direction of a streamed request.
pub(super) struct RequestPump {
    pub(super) body: Incoming,
    pub(super) method: MethodInfo,
    /// The person `enlace-subject` names, whom every request message must be about where the
    /// method binds the subject.
    pub(super) named: Option<SubjectId>,
    pub(super) asked: Asked,
    pub(super) max: usize,
    pub(super) clock: Arc<Clock>,
    pub(super) node: Arc<Node>,
    pub(super) snap: Arc<Snapshot>,
    pub(super) peer: NodeId,
    pub(super) received: Bound,
    pub(super) out: BodySender,
    pub(super) progress: Progress,
}

/// Relays the consumer node's request messages to the backend as they come, each strictly
/// decoded, bound to the subject and chained, and passes the end on only once the signed
/// request trailers verify against the chain received. A broken or missing chain, a message
/// that does not decode, or one about another person than `enlace-subject` names (which never
/// reaches the backend) fails the backend's stream (it sees a reset, not an end) and the call.
pub(super) async fn pump_requests(
    p: RequestPump,
    mut stop: StopSignal,
) -> Result<PumpDone, Problem> {
    let RequestPump {
        body,
        method,
        named,
        asked,
        max,
        clock,
        node,
        snap,
        peer,
        received,
        out,
        progress,
    } = p;
    let mut inbound = Inbound::new(body, Side::Request, max, clock, Culprit::PeerNode);
    let forwarded = forward_messages(
        &mut inbound,
        &mut stop,
        &out,
        &progress,
        // Framing the consumer node checked before sending: altered on the way.
        |e| match e.kind {
            ProblemKind::RequestSchemaViolation => altered(e),
            _ => e,
        },
        |payload| {
            let msg = method.decode_request(payload).map_err(altered)?;
            bind_subject(&method, &msg, named.as_ref(), &asked)
        },
    )
    .await;
    let chain = progress.get();
    let trailers = match forwarded {
        Ok(Forwarded::Unread) => {
            return Ok(PumpDone {
                chain,
                trailers: None,
            });
        }
        Ok(Forwarded::Ended(Some(t))) => t,
        Ok(Forwarded::Ended(None)) => {
            let e = Problem::new(
                ProblemKind::SignatureInvalid,
                "the request stream ended without its signed trailers",
            );
            return fail_stream(out, e.caused_by(Culprit::PeerNode)).await;
        }
        Err(e) => return fail_stream(out, e).await,
    };
    let peer = peer.to_string();
    let key_for = |keyid: &str| node.keys_of(&snap, &peer, "the TLS peer", keyid);
    let verifier = Verifier {
        now: node.unix_now(),
        max_skew_secs: node.settings.raw.limits.clock_skew_secs,
        key_for: &key_for,
    };
    if let Err(e) = signing::verify_request_trailers(&trailers, &received, &chain, &verifier) {
        return fail_stream(out, e.caused_by(Culprit::PeerNode)).await;
    }
    let _ = out.finish().await;
    Ok(PumpDone {
        chain,
        trailers: Some(trailers),
    })
}

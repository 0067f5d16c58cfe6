//! The request direction of a client-streaming call: the backend's messages strictly decoded,
//! chained, and passed on to the provider node.

use super::*;

/// The request direction of a streamed request.
pub(super) struct RequestPump {
    pub(super) body: Incoming,
    pub(super) method: MethodInfo,
    pub(super) max: usize,
    pub(super) clock: Arc<Clock>,
    pub(super) node: Arc<Node>,
    pub(super) sent: Bound,
    pub(super) out: crate::net::BodySender,
    pub(super) progress: Progress,
}

/// Relays the caller's request messages to the provider node as they come, each strictly
/// decoded and chained, then signs the chain in the request trailers. A message refused (or a
/// caller that resets) fails the stream to the provider node: it sees a reset, never an end.
pub(super) async fn pump_requests(
    p: RequestPump,
    mut stop: StopSignal,
) -> Result<PumpDone, Problem> {
    let RequestPump {
        body,
        method,
        max,
        clock,
        node,
        sent,
        out,
        progress,
    } = p;
    let mut inbound = Inbound::new(body, Side::Request, max, clock, Culprit::Client);
    let forwarded = forward_messages(
        &mut inbound,
        &mut stop,
        &out,
        &progress,
        |e| e,
        |payload| method.decode_request(payload).map(drop),
    )
    .await;
    let chain = progress.get();
    match forwarded {
        Ok(Forwarded::Unread) => Ok(PumpDone {
            chain,
            trailers: None,
        }),
        Ok(Forwarded::Ended(_)) => match signing::request_trailers(&signer(&node), &sent, &chain) {
            Ok(trailers) => {
                let _ = out.trailers(trailers.clone()).await;
                Ok(PumpDone {
                    chain,
                    trailers: Some(trailers),
                })
            }
            Err(e) => fail_stream(out, e).await,
        },
        Err(e) => fail_stream(out, e).await,
    }
}

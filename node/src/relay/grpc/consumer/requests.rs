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
    pub(super) stop: StopSignal,
}

/// Relays the caller's request messages to the provider node as they come, each strictly
/// decoded and chained, then signs the chain in the request trailers. A message refused (or a
/// caller that resets) fails the stream to the provider node: it sees a reset, never an end.
pub(super) async fn pump_requests(p: RequestPump) -> Result<PumpDone, Problem> {
    let RequestPump {
        body,
        method,
        max,
        clock,
        node,
        sent,
        out,
        progress,
        mut stop,
    } = p;
    let mut inbound = Inbound::new(body, Side::Request, max, clock, Culprit::Client);
    let failed = loop {
        let next = tokio::select! {
            biased;
            _ = &mut stop => break stopped(),
            n = inbound.next() => n,
        };
        let payload = match next {
            Ok(Event::Message(payload)) => payload,
            Ok(Event::End | Event::Trailers(_)) => {
                let chain = progress.get();
                let trailers = match signing::request_trailers(&signer(&node), &sent, &chain) {
                    Ok(t) => t,
                    Err(e) => break e,
                };
                let _ = out.trailers(trailers.clone()).await;
                return Ok(PumpDone {
                    chain,
                    trailers: Some(trailers),
                });
            }
            Err(e) => break e,
        };
        if let Err(e) = method.decode_request(&payload) {
            break e;
        }
        progress.update(&payload);
        let framed = match wire::encode_frame(&payload, false) {
            Ok(f) => f,
            Err(e) => break e,
        };
        let sent = tokio::select! {
            biased;
            _ = &mut stop => break stopped(),
            r = out.data(Bytes::from(framed)) => r,
        };
        if sent.is_err() {
            // The provider node stopped reading: its answer tells the rest.
            return Ok(PumpDone {
                chain: progress.get(),
                trailers: None,
            });
        }
    };
    out.fail(crate::relay::grpc::stream::RESET).await;
    Err(failed)
}

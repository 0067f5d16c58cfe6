//! Moving messages: an inbound HTTP/2 body cut into gRPC messages as its frames arrive
//! ([`Inbound`]), the response direction relayed message by message ([`relay`]), the request
//! direction's task watched alongside ([`Pump`]), and waiting on anything while watching the
//! call's clock, its caller and its request direction ([`until`]).

use std::collections::VecDeque;
use std::future::Future;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use enlace_core::problem::{Culprit, Problem, ProblemKind};
use enlace_description::grpc::{self as wire, FrameDecoder, GrpcMessage, Side, StreamDigest};
use http::HeaderMap;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::Clock;
use crate::net::BodySender;

/// How long a failure of one direction waits for the other direction's own failure.
const SETTLE: std::time::Duration = std::time::Duration::from_millis(200);
/// How long a failed request stream waits for hyper to reset it before the call goes on.
pub(super) const RESET: std::time::Duration = std::time::Duration::from_secs(1);

/// What an inbound stream yields next.
pub(super) enum Event {
    /// One whole message (its bytes without the 5-byte prefix).
    Message(Vec<u8>),
    /// The trailers, after the last message.
    Trailers(HeaderMap),
    /// The end of the stream, without trailers.
    End,
}

/// An inbound body (a request from a caller, a response from a peer or a backend) read message
/// by message: at most one message (bounded by the decoder's limit) is buffered beyond the
/// frames already received, and every frame counts as activity on the call's clock.
pub(super) struct Inbound {
    body: Incoming,
    decoder: Option<FrameDecoder>,
    queue: VecDeque<GrpcMessage>,
    clock: Arc<Clock>,
    side: Side,
    /// Who is at fault when the stream itself breaks.
    from: Culprit,
}

impl Inbound {
    pub(super) fn new(
        body: Incoming,
        side: Side,
        max: usize,
        clock: Arc<Clock>,
        from: Culprit,
    ) -> Inbound {
        Inbound {
            body,
            decoder: Some(FrameDecoder::new(side, max)),
            queue: VecDeque::new(),
            clock,
            side,
            from,
        }
    }

    fn what(&self) -> &'static str {
        match self.side {
            Side::Request => "request",
            Side::Response => "response",
        }
    }

    /// The next message, the trailers, or the end. Cancel-safe: dropped while waiting for a
    /// frame, it loses nothing.
    pub(super) async fn next(&mut self) -> Result<Event, Problem> {
        loop {
            if let Some(m) = self.queue.pop_front() {
                return m.identity().map(Event::Message);
            }
            let frame = match self.body.frame().await {
                None => {
                    self.finish()?;
                    return Ok(Event::End);
                }
                Some(Err(e)) => return Err(broke(&e, self.what(), self.from)),
                Some(Ok(f)) => f,
            };
            self.clock.touch();
            match frame.into_data() {
                Ok(data) => {
                    let decoder = self.decoder.as_mut().ok_or_else(|| {
                        Problem::new(ProblemKind::Internal, "data after the end of a stream")
                    })?;
                    self.queue.extend(decoder.push(&data)?);
                }
                Err(frame) => {
                    if let Ok(t) = frame.into_trailers() {
                        self.finish()?;
                        return Ok(Event::Trailers(t));
                    }
                }
            }
        }
    }

    /// The stream ended: an error if it stopped inside a message.
    fn finish(&mut self) -> Result<(), Problem> {
        match self.decoder.take() {
            Some(d) => d.finish(),
            None => Ok(()),
        }
    }
}

/// A broken stream: reset by the other side (`cancelled`), or the connection lost.
pub(super) fn broke(e: &(dyn std::error::Error + 'static), what: &str, from: Culprit) -> Problem {
    if crate::net::is_reset(e) {
        return Problem::new(
            ProblemKind::Cancelled,
            format!("the {what} stream was reset: {e}"),
        )
        .caused_by(from);
    }
    Problem::new(
        ProblemKind::PeerUnreachable,
        format!("the {what} stream broke: {e}"),
    )
    .caused_by(from)
}

/// Why waiting stopped before what was awaited.
pub(super) enum Stop {
    /// The caller went away.
    Gone,
    Failed(Problem),
}

impl From<Stop> for Problem {
    fn from(s: Stop) -> Problem {
        match s {
            Stop::Gone => Problem::new(
                ProblemKind::Cancelled,
                "the caller cancelled the call before its answer",
            ),
            Stop::Failed(p) => p,
        }
    }
}

/// The chain of a streamed request as its messages pass, readable while the stream goes on.
#[derive(Clone, Default)]
pub(super) struct Progress(Arc<Mutex<StreamDigest>>);

impl Progress {
    pub(super) fn update(&self, message: &[u8]) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .update(message);
    }

    pub(super) fn get(&self) -> StreamDigest {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// How a request direction ended well: its chain, and the signed trailers that closed it
/// (none when the other side stopped reading before the end).
pub(super) struct PumpDone {
    pub chain: StreamDigest,
    pub trailers: Option<HeaderMap>,
}

/// The request direction of a streamed request, running as its own task while the call's task
/// relays the response. When the call ends first, [`Pump::stop`] has it fail its body (so the
/// stream upstream is reset as failed, not cancelled: some gRPC servers read a cancelled request
/// stream as complete); dropped, it is aborted.
pub(super) struct Pump {
    handle: Option<JoinHandle<Result<PumpDone, Problem>>>,
    stop: Option<oneshot::Sender<()>>,
    done: Option<PumpDone>,
    progress: Progress,
}

/// What a request direction's task is told when the call ends before it: stop, and fail the
/// body it feeds.
pub(super) type StopSignal = oneshot::Receiver<()>;

/// The problem a request direction stops with when told to.
pub(super) fn stopped() -> Problem {
    Problem::new(
        ProblemKind::Cancelled,
        "the call ended before its request stream",
    )
}

/// How the messages of a request direction stopped going on.
pub(super) enum Forwarded {
    /// The inbound stream ended, with its trailers if it had any.
    Ended(Option<HeaderMap>),
    /// The other side stopped reading: its answer tells the rest.
    Unread,
}

/// The loop both request directions run: each message of `inbound` checked by `check`, chained
/// in `progress`, and passed on to `out`, until the inbound stream ends, the other side stops
/// reading, or the call ends (`stop`). A read error goes through `read_failed` first (who is to
/// blame differs by side). On an error the caller fails `out` (see [`fail_stream`]).
pub(super) async fn forward_messages(
    inbound: &mut Inbound,
    stop: &mut StopSignal,
    out: &BodySender,
    progress: &Progress,
    read_failed: impl Fn(Problem) -> Problem,
    mut check: impl FnMut(&[u8]) -> Result<(), Problem>,
) -> Result<Forwarded, Problem> {
    loop {
        let next = tokio::select! {
            biased;
            _ = &mut *stop => return Err(stopped()),
            n = inbound.next() => n,
        };
        let payload = match next.map_err(&read_failed)? {
            Event::Message(payload) => payload,
            Event::Trailers(t) => return Ok(Forwarded::Ended(Some(t))),
            Event::End => return Ok(Forwarded::Ended(None)),
        };
        check(&payload)?;
        progress.update(&payload);
        let framed = wire::encode_frame(&payload, false)?;
        let sent = tokio::select! {
            biased;
            _ = &mut *stop => return Err(stopped()),
            r = out.data(Bytes::from(framed)) => r,
        };
        if sent.is_err() {
            return Ok(Forwarded::Unread);
        }
    }
}

/// Fails a request direction's outbound stream (the other side sees a reset, never an end)
/// and returns why.
pub(super) async fn fail_stream(out: BodySender, why: Problem) -> Result<PumpDone, Problem> {
    out.fail(RESET).await;
    Err(why)
}

impl Pump {
    /// A request already sent whole (one message), with its chain.
    pub(super) fn finished(chain: StreamDigest) -> Pump {
        Pump {
            handle: None,
            stop: None,
            done: Some(PumpDone {
                chain,
                trailers: None,
            }),
            progress: Progress::default(),
        }
    }

    /// Runs the task `start` makes from its stop signal; it reports its chain through
    /// `progress` as it goes.
    pub(super) fn spawn<F>(progress: Progress, start: impl FnOnce(StopSignal) -> F) -> Pump
    where
        F: Future<Output = Result<PumpDone, Problem>> + Send + 'static,
    {
        let (stop, signal) = oneshot::channel();
        Pump {
            handle: Some(tokio::spawn(start(signal))),
            stop: Some(stop),
            done: None,
            progress,
        }
    }

    /// Stops a request direction still running: it fails its body (the stream upstream is
    /// reset as failed) before this returns, so that the caller may then drop the response.
    pub(super) async fn stop(&mut self) {
        let Some(handle) = self.handle.take() else {
            return;
        };
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match tokio::time::timeout(RESET + SETTLE, handle).await {
            Ok(Ok(Ok(done))) => self.done = Some(done),
            Ok(_) => {}
            Err(_) => tracing::warn!("a request stream did not stop in time"),
        }
    }

    /// Resolves when the request direction fails (a caller that reset it is [`Stop::Gone`]);
    /// one that ends well is kept as done, and this never resolves. Cancel-safe.
    pub(super) async fn failed(&mut self) -> Stop {
        let Some(handle) = &mut self.handle else {
            return std::future::pending().await;
        };
        let outcome = handle.await;
        self.handle = None;
        match outcome {
            Ok(Ok(done)) => {
                self.done = Some(done);
                std::future::pending().await
            }
            Ok(Err(p)) if p.kind == ProblemKind::Cancelled => Stop::Gone,
            Ok(Err(p)) => Stop::Failed(p),
            Err(e) => Stop::Failed(Problem::new(
                ProblemKind::Internal,
                format!("the request stream task failed: {e}"),
            )),
        }
    }

    /// The problem to report for a failure of the other direction, `p`: when the request
    /// direction fails, the exchange fails for that reason (aborting it resets the stream, so
    /// the response side breaks too, a moment later or earlier).
    pub(super) async fn cause(&mut self, p: Problem) -> Problem {
        if self.handle.is_none() {
            return p;
        }
        match tokio::time::timeout(SETTLE, self.failed()).await {
            Ok(stop) => stop.into(),
            Err(_) => p,
        }
    }

    /// The chain of the request messages so far (all of them once done).
    pub(super) fn chain(&self) -> StreamDigest {
        match &self.done {
            Some(d) => d.chain.clone(),
            None => self.progress.get(),
        }
    }

    /// The signed trailers that ended the request direction, once done.
    pub(super) fn trailers(&self) -> Option<&HeaderMap> {
        self.done.as_ref().and_then(|d| d.trailers.as_ref())
    }
}

impl Drop for Pump {
    fn drop(&mut self) {
        if let Some(h) = &self.handle {
            h.abort();
        }
    }
}

/// Awaits `fut`, unless the caller goes away, the clock expires or the request direction
/// fails first.
pub(super) async fn until<T>(
    fut: impl Future<Output = T>,
    clock: &Clock,
    gone: impl Future<Output = ()>,
    pump: &mut Pump,
) -> Result<T, Stop> {
    tokio::select! {
        biased;
        v = fut => Ok(v),
        () = gone => Err(Stop::Gone),
        s = pump.failed() => Err(s),
        p = clock.expired() => Err(Stop::Failed(p)),
    }
}

/// Where relayed messages go: on downstream at once, or held (the first one; later ones are
/// only chained) until the final status is known.
pub(super) enum Outlet<'a> {
    Send(&'a BodySender),
    Hold(&'a mut Option<Vec<u8>>),
}

/// How a relayed response ended.
pub(super) enum Ending {
    /// The sender's trailers, after every message.
    Trailers(HeaderMap),
    /// The receiver went away (cancelled); nobody is left to tell.
    Gone,
    Failed(Problem),
}

impl From<Stop> for Ending {
    fn from(s: Stop) -> Ending {
        match s {
            Stop::Gone => Ending::Gone,
            Stop::Failed(p) => Ending::Failed(p),
        }
    }
}

/// A relayed response: how it ended, the chain of the messages relayed (or held), and their
/// framed bytes when kept for the log.
pub(super) struct Relayed {
    pub ending: Ending,
    pub chain: StreamDigest,
    pub kept: Option<Vec<u8>>,
}

/// Relays the messages of `inbound` to `out` as they complete, each through `transform` (which
/// decodes, and may minimise and re-encode), chaining what it gives; stops at the trailers, a
/// problem, the clock, the request direction failing, or `gone`. Keeps the framed bytes for the
/// log up to `keep` bytes (none at all beyond).
pub(super) async fn relay(
    inbound: &mut Inbound,
    mut out: Outlet<'_>,
    clock: &Clock,
    gone: impl Future<Output = ()>,
    pump: &mut Pump,
    keep: Option<usize>,
    mut transform: impl FnMut(Vec<u8>) -> Result<Vec<u8>, Problem>,
) -> Relayed {
    let mut gone = std::pin::pin!(gone);
    let mut chain = StreamDigest::new();
    let limit = keep.unwrap_or(0);
    let mut kept = keep.map(|_| Vec::new());
    let ending = loop {
        let event = tokio::select! {
            biased;
            () = &mut gone => break Ending::Gone,
            s = pump.failed() => break s.into(),
            e = inbound.next() => e,
            p = clock.expired() => break Ending::Failed(p),
        };
        let payload = match event {
            Ok(Event::Message(m)) => m,
            Ok(Event::Trailers(t)) => break Ending::Trailers(t),
            Ok(Event::End) => {
                break Ending::Failed(
                    Problem::new(
                        ProblemKind::PeerUnreachable,
                        "the response stream ended without trailers",
                    )
                    .caused_by(inbound.from),
                );
            }
            Err(p) => break Ending::Failed(pump.cause(p).await),
        };
        let bytes = match transform(payload) {
            Ok(b) => b,
            Err(p) => break Ending::Failed(p),
        };
        let framed = match wire::encode_frame(&bytes, false) {
            Ok(f) => f,
            Err(p) => break Ending::Failed(p),
        };
        chain.update(&bytes);
        if let Some(k) = &mut kept {
            if k.len() + framed.len() > limit {
                kept = None;
            } else {
                k.extend_from_slice(&framed);
            }
        }
        match &mut out {
            Outlet::Hold(slot) => {
                if slot.is_none() {
                    **slot = Some(bytes);
                }
            }
            Outlet::Send(tx) => {
                let sent = tokio::select! {
                    biased;
                    r = tx.data(Bytes::from(framed)) => r,
                    p = clock.expired() => break Ending::Failed(p),
                };
                if sent.is_err() {
                    break Ending::Gone;
                }
            }
        }
    };
    Relayed {
        ending,
        chain,
        kept,
    }
}

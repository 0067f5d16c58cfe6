//! Sockets: the one accept loop of the node's listeners, opened plain (HTTP/1.1 and h2c) or by a
//! TLS handshake in its own task with a timeout (mutual-TLS HTTP/2 between nodes, TLS for local
//! backends), the pooled mutual-TLS HTTP/2 connections to peers, bounded body reading, and the
//! streamed bodies a relay feeds frame by frame.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use enlace_certs::ListenerStream;
use enlace_core::id::NodeId;
use enlace_core::problem::{Problem, ProblemKind};
use enlace_limits::ConnectionCaps;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::client::conn::http2::SendRequest;
use hyper::{HeaderMap, Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::graceful::GracefulShutdown;
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

pub type Body = Full<Bytes>;

// ---- streamed bodies ----

/// The error a [`ChannelBody`] ends with when its feeder went away before the end: the relay
/// gave up on the stream, and HTTP/2 resets it (the receiver sees a reset, never a clean end).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Aborted;

impl std::fmt::Display for Aborted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the relay aborted the stream")
    }
}

impl std::error::Error for Aborted {}

/// The receiver of a [`BodySender`] went away (the other side cancelled).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Closed;

enum Piece {
    Frame(Frame<Bytes>),
    End,
    Abort,
}

/// A body fed frame by frame by a relay task through its [`BodySender`]. It ends cleanly only
/// when told to (trailers, or [`BodySender::finish`]); if the sender is dropped before that, the
/// body fails with [`Aborted`], so that hyper resets the HTTP/2 stream.
pub struct ChannelBody {
    rx: mpsc::Receiver<Piece>,
    done: bool,
}

/// Feeds a [`ChannelBody`]. Dropping it without [`BodySender::trailers`] or
/// [`BodySender::finish`] aborts the body.
pub struct BodySender {
    tx: mpsc::Sender<Piece>,
}

/// A streamed body and its feeder; at most `capacity` frames wait between them.
pub fn body_channel(capacity: usize) -> (BodySender, ChannelBody) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    (BodySender { tx }, ChannelBody { rx, done: false })
}

impl BodySender {
    /// Sends the next DATA bytes; `Closed` when the receiver is gone.
    pub async fn data(&self, bytes: Bytes) -> Result<(), Closed> {
        self.tx
            .send(Piece::Frame(Frame::data(bytes)))
            .await
            .map_err(|_| Closed)
    }

    /// Ends the body with trailers.
    pub async fn trailers(self, trailers: HeaderMap) -> Result<(), Closed> {
        self.tx
            .send(Piece::Frame(Frame::trailers(trailers)))
            .await
            .map_err(|_| Closed)
    }

    /// Ends the body cleanly, without trailers.
    pub async fn finish(self) -> Result<(), Closed> {
        self.tx.send(Piece::End).await.map_err(|_| Closed)
    }

    /// Gives up on the body: the receiver sees [`Aborted`] (HTTP/2 resets the stream).
    pub fn abort(self) {}

    /// Fails the body now, ahead of any frame still waiting, and waits up to `wait` for the
    /// receiver to take the failure (hyper then resets the stream with INTERNAL_ERROR). Unlike
    /// dropping the response the stream belongs to, which resets it with CANCEL: a gRPC server
    /// may read a cancelled request stream as ended cleanly, never a failed one.
    pub async fn fail(self, wait: Duration) {
        if self.tx.try_send(Piece::Abort).is_ok() {
            let _ = tokio::time::timeout(wait, self.tx.closed()).await;
        }
    }

    /// Resolves when the receiver is gone.
    pub async fn closed(&self) {
        self.tx.closed().await;
    }

    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Aborted;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Aborted>>> {
        if self.done {
            return Poll::Ready(None);
        }
        match self.rx.poll_recv(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Piece::Frame(f))) => {
                if f.is_trailers() {
                    self.done = true;
                }
                Poll::Ready(Some(Ok(f)))
            }
            Poll::Ready(Some(Piece::End)) => {
                self.done = true;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Piece::Abort)) => {
                self.done = true;
                Poll::Ready(Some(Err(Aborted)))
            }
            Poll::Ready(None) => {
                self.done = true;
                Poll::Ready(Some(Err(Aborted)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}

/// What a node sends to a peer node or a backend: a whole body, or a stream.
pub enum RelayBody {
    Full(Full<Bytes>),
    Channel(ChannelBody),
}

impl From<Full<Bytes>> for RelayBody {
    fn from(b: Full<Bytes>) -> Self {
        RelayBody::Full(b)
    }
}

impl From<ChannelBody> for RelayBody {
    fn from(b: ChannelBody) -> Self {
        RelayBody::Channel(b)
    }
}

impl hyper::body::Body for RelayBody {
    type Data = Bytes;
    type Error = Aborted;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Aborted>>> {
        match self.get_mut() {
            RelayBody::Full(b) => Pin::new(b)
                .poll_frame(cx)
                .map(|f| f.map(|r| r.map_err(|never| match never {}))),
            RelayBody::Channel(b) => Pin::new(b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RelayBody::Full(b) => b.is_end_stream(),
            RelayBody::Channel(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RelayBody::Full(b) => b.size_hint(),
            RelayBody::Channel(b) => b.size_hint(),
        }
    }
}

/// Reads a body of at most `limit` bytes; more is `body-too-large`.
pub async fn read_body<B>(body: B, limit: usize) -> Result<Bytes, Problem>
where
    B: hyper::body::Body,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    // A declared length over the limit is refused at once, not waited for.
    if hyper::body::Body::size_hint(&body).lower() > limit as u64 {
        return Err(Problem::body_too_large(limit));
    }
    match Limited::new(body, limit).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
            Err(Problem::body_too_large(limit))
        }
        Err(e) => Err(Problem::new(
            ProblemKind::InvalidRequest,
            format!("could not read the body: {e}"),
        )),
    }
}

/// Whether an error is an HTTP/2 stream reset by the other side (somewhere in its sources),
/// rather than a broken connection: the other side cancelled that one stream.
pub fn is_reset(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(e);
    while let Some(err) = source {
        if err
            .downcast_ref::<h2::Error>()
            .is_some_and(h2::Error::is_reset)
        {
            return true;
        }
        source = err.source();
    }
    false
}

/// How long a client has to send a whole request header section on an HTTP/1.1 connection
/// (its first request or the next one on a kept-alive connection); then the connection is
/// closed, so slow or idle clients cannot hold a listener's connections.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The server side of a plain (HTTP/1.1 or h2c) connection, with a timer so that the header
/// read timeout and HTTP/2 keep-alive pings really run (hyper's builder has no timer of its own).
pub fn http_server_builder() -> hyper_util::server::conn::auto::Builder<TokioExecutor> {
    use hyper_util::rt::TokioTimer;
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    // Half-close: a read that ends (a client that shut its side, or a request refused by
    // the `ListenerStream`, which ends the stream there) still gets the answers owed before it.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .half_close(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(HEADER_READ_TIMEOUT);
    builder
}

/// How a listener speaks HTTP on a connection it opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Http {
    /// HTTP/1.1 or HTTP/2, read through a [`ListenerStream`] (strict HTTP/1 heads, a
    /// first-read deadline) with the header read timeout of [`http_server_builder`].
    Any,
    /// HTTP/2 only (the peer nodes' mutual-TLS listener).
    Two,
}

/// The accept loop of every node listener, until `shutdown` turns true, then a drain: each
/// accepted connection is admitted under `caps`, then in its own task opened by `open` (which
/// yields the stream and who is at the other end, or `None` after logging why it refused) and
/// served as `http` says, each request handed to `handler` with who sent it. `name` says whose
/// connections these are in the log. The response body may stream (gRPC responses carry
/// trailers).
pub(crate) async fn serve<O, OFut, S, P, F, Fut, B>(
    listener: TcpListener,
    caps: Arc<ConnectionCaps>,
    open: O,
    http: Http,
    name: &'static str,
    handler: F,
    mut shutdown: watch::Receiver<bool>,
) where
    O: Fn(TcpStream, SocketAddr) -> OFut,
    OFut: Future<Output = Option<(S, P)>> + Send + 'static,
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    P: Clone + Send + Sync + 'static,
    F: Fn(Request<Incoming>, P) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let graceful = GracefulShutdown::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Some((stream, remote, permit)) = enlace_limits::admit(&caps, accepted).await else { continue };
                let _ = stream.set_nodelay(true);
                let opened = open(stream, remote);
                let handler = handler.clone();
                let watcher = graceful.watcher();
                tokio::spawn(async move {
                    let _permit = permit;
                    let Some((stream, peer)) = opened.await else { return };
                    let svc = hyper::service::service_fn(move |req| {
                        let handler = handler.clone();
                        let peer = peer.clone();
                        async move { Ok::<_, Infallible>(handler(req, peer).await) }
                    });
                    let ended: Result<(), Box<dyn std::error::Error + Send + Sync>> = match http {
                        Http::Any => {
                            let stream = ListenerStream::new(stream, HEADER_READ_TIMEOUT);
                            let conn = http_server_builder()
                                .serve_connection(TokioIo::new(stream), svc)
                                .into_owned();
                            watcher.watch(conn).await
                        }
                        Http::Two => {
                            let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
                            builder.max_concurrent_streams(1024).max_header_list_size(64 * 1024);
                            let conn = builder.serve_connection(TokioIo::new(stream), svc);
                            watcher.watch(conn).await.map_err(Into::into)
                        }
                    };
                    if let Err(e) = ended {
                        tracing::debug!(error = %e, "{name} connection ended");
                    }
                });
            }
            _ = async { let _ = shutdown.wait_for(|s| *s).await; } => break,
        }
    }
    drop(listener);
    let _ = tokio::time::timeout(Duration::from_secs(10), graceful.shutdown()).await;
}

/// Serves plain HTTP/1.1 and h2c on `listener` until `shutdown` turns true, then drains; the
/// handler learns the client's address.
pub async fn serve_plain<F, Fut, B>(
    listener: TcpListener,
    caps: Arc<ConnectionCaps>,
    handler: F,
    shutdown: watch::Receiver<bool>,
) where
    F: Fn(Request<Incoming>, SocketAddr) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let open = |stream: TcpStream, remote: SocketAddr| std::future::ready(Some((stream, remote)));
    serve(
        listener,
        caps,
        open,
        Http::Any,
        "consumer",
        handler,
        shutdown,
    )
    .await;
}

/// The TLS handshake of an accepted connection, bounded by `timeout`; a failure is logged
/// (naming `who` connected) and the connection dropped.
pub(crate) async fn handshake(
    acceptor: &tokio_rustls::TlsAcceptor,
    stream: TcpStream,
    remote: SocketAddr,
    timeout: Duration,
    who: &str,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
        Ok(Ok(s)) => Some(s),
        Ok(Err(e)) => {
            tracing::info!(%remote, error = %e, "{who} refused: TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::info!(%remote, "{who} refused: TLS handshake timed out");
            None
        }
    }
}

/// Serves mutual-TLS HTTP/2 on `listener` until `shutdown` turns true, then drains: each
/// handshake runs in its own task with a timeout, with the server configuration current when
/// the connection was accepted; the handler learns the peer's node id from its certificate.
pub async fn serve_mtls<F, Fut, B>(
    listener: TcpListener,
    caps: Arc<ConnectionCaps>,
    tls: watch::Receiver<Arc<ServerConfig>>,
    handshake_timeout: Duration,
    handler: F,
    shutdown: watch::Receiver<bool>,
) where
    F: Fn(Request<Incoming>, NodeId) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let open = move |stream: TcpStream, remote: SocketAddr| {
        let acceptor = tokio_rustls::TlsAcceptor::from(tls.borrow().clone());
        async move {
            let tls_stream =
                handshake(&acceptor, stream, remote, handshake_timeout, "peer").await?;
            let peer = tls_stream
                .get_ref()
                .1
                .peer_certificates()
                .map(enlace_certs::peer_node_id);
            match peer {
                Some(Ok(id)) => Some((tls_stream, id)),
                other => {
                    tracing::info!(%remote, error = ?other.map(|r| r.err()), "peer refused: no node identity");
                    None
                }
            }
        }
    };
    serve(listener, caps, open, Http::Two, "peer", handler, shutdown).await;
}

/// What a node presents and trusts when it dials a peer.
#[derive(Clone)]
pub struct DialMaterial {
    pub trust: enlace_certs::TrustStore,
    pub cert_pem: String,
    pub key_pem: String,
}

/// Pooled HTTP/2 connections to peer nodes, one multiplexed connection per peer.
pub struct PeerPool {
    conns: tokio::sync::Mutex<HashMap<NodeId, SendRequest<RelayBody>>>,
    material: watch::Receiver<Arc<DialMaterial>>,
    connect_timeout: Duration,
}

impl PeerPool {
    pub fn new(
        material: watch::Receiver<Arc<DialMaterial>>,
        connect_timeout: Duration,
    ) -> PeerPool {
        PeerPool {
            conns: tokio::sync::Mutex::new(HashMap::new()),
            material,
            connect_timeout,
        }
    }

    /// Drops every pooled connection (after the trust material changed, e.g. a new CRL).
    pub async fn reset(&self) {
        self.conns.lock().await.clear();
    }

    async fn sender(
        &self,
        peer: &NodeId,
        address: &str,
    ) -> Result<SendRequest<RelayBody>, Problem> {
        if let Some(s) = self.conns.lock().await.get(peer)
            && !s.is_closed()
            && s.is_ready()
        {
            return Ok(s.clone());
        }
        let sender = self.connect(peer, address).await?;
        self.conns.lock().await.insert(peer.clone(), sender.clone());
        Ok(sender)
    }

    async fn connect(
        &self,
        peer: &NodeId,
        address: &str,
    ) -> Result<SendRequest<RelayBody>, Problem> {
        let unreachable = |detail: String| {
            Problem::new(
                ProblemKind::PeerUnreachable,
                format!("peer node {peer} at {address}: {detail}"),
            )
        };
        let material = self.material.borrow().clone();
        let config = enlace_certs::client_config(
            &material.trust,
            &material.cert_pem,
            &material.key_pem,
            Some(peer.clone()),
        )?;
        let connect = async {
            let tcp = TcpStream::connect(address)
                .await
                .map_err(|e| unreachable(e.to_string()))?;
            let _ = tcp.set_nodelay(true);
            let name = rustls_pki_types::ServerName::try_from("enlace-node")
                .map_err(|e| unreachable(e.to_string()))?;
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await
                .map_err(|e| unreachable(format!("TLS: {e}")))?;
            let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
                .handshake(TokioIo::new(tls))
                .await
                .map_err(|e| unreachable(format!("HTTP/2: {e}")))?;
            let peer = peer.clone();
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(%peer, error = %e, "peer connection closed");
                }
            });
            Ok::<_, Problem>(sender)
        };
        match tokio::time::timeout(self.connect_timeout, connect).await {
            Ok(r) => r,
            Err(_) => Err(Problem::new(
                ProblemKind::PeerTimeout,
                format!("peer node {peer} at {address}: connect timed out"),
            )),
        }
    }

    /// Sends a request to a peer and waits up to `timeout` for the response head. The body may
    /// be whole or streamed: a request is sent again on a new connection only when hyper hands
    /// it back unsent (the pooled connection had died before any of it went out), so a stream
    /// is never replayed half-sent.
    pub async fn send<B: Into<RelayBody>>(
        &self,
        peer: &NodeId,
        address: &str,
        req: Request<B>,
        timeout: Duration,
    ) -> Result<Response<Incoming>, Problem> {
        let req = req.map(Into::into);
        let mut sender = self.sender(peer, address).await?;
        let first = tokio::time::timeout(timeout, sender.try_send_request(req)).await;
        let result = match first {
            Ok(Ok(resp)) => Ok(Ok(resp)),
            Ok(Err(mut e)) => match e.take_message() {
                Some(unsent) => {
                    self.conns.lock().await.remove(peer);
                    sender = self.sender(peer, address).await?;
                    tokio::time::timeout(timeout, sender.send_request(unsent)).await
                }
                None => Ok(Err(e.into_error())),
            },
            Err(elapsed) => Err(elapsed),
        };
        match result {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) if is_reset(&e) => Err(Problem::new(
                ProblemKind::Cancelled,
                format!("peer node {peer} reset the stream: {e}"),
            )
            .caused_by(enlace_core::problem::Culprit::PeerNode)),
            Ok(Err(e)) => Err(Problem::new(
                ProblemKind::PeerUnreachable,
                format!("peer node {peer}: {e}"),
            )),
            Err(_) => Err(Problem::new(
                ProblemKind::PeerTimeout,
                format!(
                    "peer node {peer} did not answer within {} ms",
                    timeout.as_millis()
                ),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;

    #[tokio::test]
    async fn a_channel_body_ends_cleanly_only_when_told() {
        let (tx, body) = body_channel(4);
        tx.data(Bytes::from_static(b"one")).await.unwrap();
        let mut t = HeaderMap::new();
        t.insert("grpc-status", "0".parse().unwrap());
        tx.trailers(t.clone()).await.unwrap();
        let collected = body.collect().await.unwrap();
        assert_eq!(collected.trailers(), Some(&t));
        assert_eq!(collected.to_bytes(), Bytes::from_static(b"one"));

        let (tx, body) = body_channel(4);
        tx.data(Bytes::from_static(b"one")).await.unwrap();
        tx.finish().await.unwrap();
        assert_eq!(body.collect().await.unwrap().to_bytes(), "one");

        // Dropped (or aborted) midway: an error, so HTTP/2 resets the stream.
        let (tx, body) = body_channel(4);
        tx.data(Bytes::from_static(b"one")).await.unwrap();
        tx.abort();
        assert_eq!(body.collect().await.unwrap_err(), Aborted);

        // Failed: an error too, and the feeder learns when it was taken.
        let (tx, body) = body_channel(4);
        tx.data(Bytes::from_static(b"one")).await.unwrap();
        let reader = tokio::spawn(body.collect());
        tx.fail(Duration::from_secs(5)).await;
        assert_eq!(reader.await.unwrap().unwrap_err(), Aborted);
    }

    #[tokio::test]
    async fn a_sender_learns_that_its_receiver_left() {
        let (tx, body) = body_channel(1);
        assert!(!tx.is_closed());
        drop(body);
        tx.closed().await;
        assert_eq!(tx.data(Bytes::new()).await, Err(Closed));
    }
}

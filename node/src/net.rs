//! Sockets: the plain accept loop (HTTP/1.1 and h2c), the mutual-TLS accept loop (handshake in
//! its own task with a timeout, HTTP/2), the pooled mutual-TLS HTTP/2 connections to peers, and
//! bounded body reading.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use enlace_core::id::NodeId;
use enlace_core::problem::{Problem, ProblemKind};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::graceful::GracefulShutdown;
use rustls::ServerConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub type Body = Full<Bytes>;

/// Reads a body of at most `limit` bytes; more is `body-too-large`.
pub async fn read_body<B>(body: B, limit: usize) -> Result<Bytes, Problem>
where
    B: hyper::body::Body,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    match Limited::new(body, limit).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(Problem::new(
            ProblemKind::BodyTooLarge,
            format!("the body is larger than {limit} bytes"),
        )
        .with("limit", limit)),
        Err(e) => Err(Problem::new(
            ProblemKind::InvalidRequest,
            format!("could not read the body: {e}"),
        )),
    }
}

/// Serves plain HTTP/1.1 and h2c on `listener` until `shutdown` turns true, then drains. The
/// response body may stream (gRPC responses carry trailers).
pub async fn serve_plain<F, Fut, B>(
    listener: TcpListener,
    handler: F,
    mut shutdown: watch::Receiver<bool>,
) where
    F: Fn(Request<Incoming>, SocketAddr) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let graceful = GracefulShutdown::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, remote)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                let handler = handler.clone();
                let svc = hyper::service::service_fn(move |req| {
                    let handler = handler.clone();
                    async move { Ok::<_, Infallible>(handler(req, remote).await) }
                });
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                let conn = builder.serve_connection(TokioIo::new(stream), svc).into_owned();
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "consumer connection ended");
                    }
                });
            }
            _ = shutdown.wait_for(|s| *s) => break,
        }
    }
    drop(listener);
    let _ = tokio::time::timeout(Duration::from_secs(10), graceful.shutdown()).await;
}

/// Serves mutual-TLS HTTP/2 on `listener`: each handshake runs in its own task with a timeout;
/// the handler learns the peer's node id from its certificate.
pub async fn serve_mtls<F, Fut, B>(
    listener: TcpListener,
    tls: watch::Receiver<Arc<ServerConfig>>,
    handshake_timeout: Duration,
    handler: F,
    mut shutdown: watch::Receiver<bool>,
) where
    F: Fn(Request<Incoming>, NodeId) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let graceful = GracefulShutdown::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, remote)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                let acceptor = tokio_rustls::TlsAcceptor::from(tls.borrow().clone());
                let handler = handler.clone();
                let watcher = graceful.watcher();
                tokio::spawn(async move {
                    let tls_stream = match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::info!(%remote, error = %e, "peer refused: TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::info!(%remote, "peer refused: TLS handshake timed out");
                            return;
                        }
                    };
                    let peer = match tls_stream.get_ref().1.peer_certificates().map(enlace_certs::peer_node_id) {
                        Some(Ok(id)) => id,
                        other => {
                            tracing::info!(%remote, error = ?other.map(|r| r.err()), "peer refused: no node identity");
                            return;
                        }
                    };
                    let svc = hyper::service::service_fn(move |req| {
                        let handler = handler.clone();
                        let peer = peer.clone();
                        async move { Ok::<_, Infallible>(handler(req, peer).await) }
                    });
                    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
                    builder.max_concurrent_streams(1024).max_header_list_size(64 * 1024);
                    let conn = builder.serve_connection(TokioIo::new(tls_stream), svc);
                    if let Err(e) = watcher.watch(conn).await {
                        tracing::debug!(error = %e, "peer connection ended");
                    }
                });
            }
            _ = shutdown.wait_for(|s| *s) => break,
        }
    }
    drop(listener);
    let _ = tokio::time::timeout(Duration::from_secs(10), graceful.shutdown()).await;
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
    conns: tokio::sync::Mutex<HashMap<NodeId, SendRequest<Body>>>,
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

    async fn sender(&self, peer: &NodeId, address: &str) -> Result<SendRequest<Body>, Problem> {
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

    async fn connect(&self, peer: &NodeId, address: &str) -> Result<SendRequest<Body>, Problem> {
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

    /// Sends a request to a peer, reconnecting once if the pooled connection had died.
    pub async fn send(
        &self,
        peer: &NodeId,
        address: &str,
        req: Request<Body>,
        timeout: Duration,
    ) -> Result<Response<Incoming>, Problem> {
        let mut sender = self.sender(peer, address).await?;
        let (parts, body) = req.into_parts();
        let retry = Request::from_parts(parts.clone(), body.clone());
        let first = tokio::time::timeout(
            timeout,
            sender.send_request(Request::from_parts(parts, body)),
        )
        .await;
        let result = match first {
            Ok(Err(e)) if e.is_closed() || e.is_canceled() => {
                self.conns.lock().await.remove(peer);
                sender = self.sender(peer, address).await?;
                tokio::time::timeout(timeout, sender.send_request(retry)).await
            }
            other => other,
        };
        match result {
            Ok(Ok(resp)) => Ok(resp),
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

//! The TLS consumer listener: local backends over TLS (HTTP/1.1 or HTTP/2), each request
//! tagged with the SHA-256 of the client certificate its connection presented, if any.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use rustls::ServerConfig;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// The SHA-256 (lower-case hex) of the client certificate a backend's TLS connection
/// presented: put in each request's extensions by [`serve`], read when authenticating it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendCertificate(pub String);

/// Serves local backends over TLS on `listener` until `shutdown` turns true, then drains. Each
/// handshake runs in its own task with a timeout; a failed one is logged and dropped.
pub async fn serve<F, Fut, B>(
    listener: TcpListener,
    caps: Arc<enlace_limits::ConnectionCaps>,
    tls: Arc<ServerConfig>,
    handshake_timeout: Duration,
    handler: F,
    mut shutdown: watch::Receiver<bool>,
) where
    F: Fn(Request<Incoming>, SocketAddr) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let graceful = GracefulShutdown::new();
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Some((stream, remote, permit)) = enlace_limits::admit(&caps, accepted).await else { continue };
                let _ = stream.set_nodelay(true);
                let acceptor = acceptor.clone();
                let handler = handler.clone();
                let watcher = graceful.watcher();
                tokio::spawn(async move {
                    let _permit = permit;
                    let Some(tls_stream) = crate::net::handshake(&acceptor, stream, remote, handshake_timeout, "backend").await else {
                        return;
                    };
                    let cert = tls_stream
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .map(|c| BackendCertificate(enlace_certs::certificate_sha256(c.as_ref())));
                    let svc = hyper::service::service_fn(move |mut req: Request<Incoming>| {
                        let handler = handler.clone();
                        if let Some(c) = &cert {
                            req.extensions_mut().insert(c.clone());
                        }
                        async move { Ok::<_, Infallible>(handler(req, remote).await) }
                    });
                    let builder = crate::net::http_server_builder();
                    let stream = enlace_certs::strict_http1::StrictHttp1::new(tls_stream);
                    let stream = enlace_certs::io::FirstReadDeadline::new(stream, crate::net::HEADER_READ_TIMEOUT);
                    let conn = builder.serve_connection(TokioIo::new(stream), svc).into_owned();
                    if let Err(e) = watcher.watch(conn).await {
                        tracing::debug!(error = %e, "backend connection ended");
                    }
                });
            }
            _ = async { let _ = shutdown.wait_for(|s| *s).await; } => break,
        }
    }
    drop(listener);
    let _ = tokio::time::timeout(Duration::from_secs(10), graceful.shutdown()).await;
}

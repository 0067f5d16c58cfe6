//! The TLS consumer listener: local backends over TLS (HTTP/1.1 or HTTP/2), each request
//! tagged with the SHA-256 of the client certificate its connection presented, if any.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::{Request, Response};
use rustls::ServerConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::net::{Http, handshake};

/// The SHA-256 (lower-case hex) of the client certificate a backend's TLS connection
/// presented: put in each request's extensions by [`serve`], read when authenticating it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendCertificate(pub String);

/// Serves local backends over TLS (HTTP/1.1 or HTTP/2) on `listener` until `shutdown` turns
/// true, then drains. Each handshake runs in its own task with a timeout; a failed one is
/// logged and dropped.
pub async fn serve<F, Fut, B>(
    listener: TcpListener,
    caps: Arc<enlace_limits::ConnectionCaps>,
    tls: Arc<ServerConfig>,
    handshake_timeout: Duration,
    handler: F,
    shutdown: watch::Receiver<bool>,
) where
    F: Fn(Request<Incoming>, SocketAddr) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let open = move |stream: TcpStream, remote: SocketAddr| {
        let acceptor = acceptor.clone();
        async move {
            let tls_stream =
                handshake(&acceptor, stream, remote, handshake_timeout, "backend").await?;
            let cert = tls_stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| BackendCertificate(enlace_certs::certificate_sha256(c.as_ref())));
            Some((tls_stream, (remote, cert)))
        }
    };
    let handler =
        move |mut req: Request<Incoming>,
              (remote, cert): (SocketAddr, Option<BackendCertificate>)| {
            if let Some(c) = cert {
                req.extensions_mut().insert(c);
            }
            handler(req, remote)
        };
    crate::net::serve(
        listener,
        caps,
        open,
        Http::Any,
        "backend",
        handler,
        shutdown,
    )
    .await;
}

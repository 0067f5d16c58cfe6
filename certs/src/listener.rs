//! The stream every accepted connection of a server is read through, so that no listener can
//! forget one of its two guards:
//!
//! - a first-read deadline: hyper's HTTP/1.1 header read timeout runs only once the connection
//!   has sent something, and the HTTP/1.1-or-HTTP/2 detection before it waits for bytes with no
//!   limit, so a client that connects and sends nothing would hold its connection (and a
//!   descriptor) forever;
//! - the strict HTTP/1 request check of [`crate::strict_http1`]: a request head reaches the
//!   server only once it has been checked, a refused one never (the stream answers it with a
//!   problem and closes).
//!
//! The deadline is lifted by the first byte handed to the server, so it covers the whole first
//! request head (which the check holds back until it is complete).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

use crate::strict_http1::{READ_CHUNK, Scanner, State, response_bytes};

/// `S` as a server reads it (see the module): its HTTP/1 requests are checked before the
/// server reads them, and its reads fail with [`io::ErrorKind::TimedOut`] if no byte has been
/// handed out by the deadline.
pub struct ListenerStream<S> {
    inner: S,
    /// Until the first byte is handed out.
    deadline: Option<Pin<Box<Sleep>>>,
    scanner: Scanner,
    /// Bytes read and not yet handed out: `buf[..released]` may go, `buf[released..]` is a
    /// head being received.
    buf: Vec<u8>,
    released: usize,
    /// Where in `buf` the current head begins (when the scanner is in a head).
    head_from: usize,
    /// The answer owed once the server has shut the stream, and how much of it is written.
    refusal: Option<(Vec<u8>, usize)>,
    eof: bool,
}

impl<S> ListenerStream<S> {
    /// `inner`, whose client must have a first byte reach the server `within` this long.
    pub fn new(inner: S, within: Duration) -> ListenerStream<S> {
        ListenerStream {
            inner,
            deadline: Some(Box::pin(tokio::time::sleep(within))),
            scanner: Scanner::new(),
            buf: Vec::new(),
            released: 0,
            head_from: 0,
            refusal: None,
            eof: false,
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Hands out released bytes; whether any were.
    fn hand_out(&mut self, out: &mut ReadBuf<'_>) -> bool {
        if self.released == 0 {
            return false;
        }
        let n = self.released.min(out.remaining());
        out.put_slice(&self.buf[..n]);
        self.buf.drain(..n);
        self.released -= n;
        self.head_from = self.head_from.saturating_sub(n);
        true
    }
}

impl<S: AsyncRead + Unpin> ListenerStream<S> {
    /// The checked read, without the deadline.
    fn poll_checked(
        &mut self,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if self.hand_out(out) {
                return Poll::Ready(Ok(()));
            }
            if self.refusal.is_some() || self.eof {
                // The end of the stream: a refused request never reaches the server.
                return Poll::Ready(Ok(()));
            }
            if self.scanner.state == State::Http2 && self.buf.is_empty() {
                return Pin::new(&mut self.inner).poll_read(cx, out);
            }
            let from = self.buf.len();
            self.buf.resize(from + READ_CHUNK, 0);
            let mut rb = ReadBuf::new(&mut self.buf[from..]);
            let polled = Pin::new(&mut self.inner).poll_read(cx, &mut rb);
            let got = rb.filled().len();
            self.buf.truncate(from + got);
            match polled {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) if got == 0 => {
                    // The client closed: what is held is an incomplete head; the server gets
                    // it and answers or drops it as it does any truncated request.
                    self.eof = true;
                    self.released = self.buf.len();
                }
                Poll::Ready(Ok(())) => {
                    let head_from = self.head_from;
                    match self.scanner.feed(&self.buf, head_from, from) {
                        Ok(released) => {
                            self.released = released;
                            self.head_from = released;
                        }
                        Err((released, refusal)) => {
                            // What came before the refused request still goes.
                            self.buf.truncate(released);
                            self.released = released;
                            self.refusal = Some((response_bytes(&refusal), 0));
                        }
                    }
                }
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ListenerStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        let before = out.filled().len();
        match me.poll_checked(cx, out) {
            Poll::Ready(Ok(())) => {
                if out.filled().len() > before {
                    me.deadline = None;
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                let expired = match me.deadline.as_mut() {
                    Some(d) => d.as_mut().poll(cx).is_ready(),
                    None => false,
                };
                if expired {
                    Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the client sent nothing in time",
                    )))
                } else {
                    Poll::Pending
                }
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ListenerStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        if let Some((bytes, written)) = &mut me.refusal {
            while *written < bytes.len() {
                match Pin::new(&mut me.inner).poll_write(cx, &bytes[*written..]) {
                    Poll::Ready(Ok(0)) => break,
                    Poll::Ready(Ok(n)) => *written += n,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => return Poll::Pending,
                }
            }
            std::task::ready!(Pin::new(&mut me.inner).poll_flush(cx))?;
        }
        Pin::new(&mut me.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const GET: &[u8] = b"GET / HTTP/1.1\r\nhost: a\r\n\r\n";

    #[tokio::test]
    async fn silence_times_out_and_a_first_request_lifts_the_deadline() {
        let (client, server) = tokio::io::duplex(64);
        let mut s = ListenerStream::new(server, Duration::from_millis(50));
        let mut buf = [0u8; 64];
        let e = s.read(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        drop(client);

        // A head begun but not finished does not lift it: nothing reached the server.
        let (mut client, server) = tokio::io::duplex(64);
        let mut s = ListenerStream::new(server, Duration::from_millis(50));
        client.write_all(b"GET / HT").await.unwrap();
        let e = s.read(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);

        let (mut client, server) = tokio::io::duplex(64);
        let mut s = ListenerStream::new(server, Duration::from_millis(50));
        client.write_all(GET).await.unwrap();
        assert_eq!(s.read(&mut buf).await.unwrap(), GET.len());
        // Past the deadline, a later silence is the protocol's business, not this stream's.
        tokio::time::sleep(Duration::from_millis(80)).await;
        client.write_all(GET).await.unwrap();
        assert_eq!(s.read(&mut buf).await.unwrap(), GET.len());
    }

    #[tokio::test]
    async fn a_refused_head_never_reaches_the_server_and_is_answered_on_shutdown() {
        let (mut client, server) = tokio::io::duplex(4096);
        let mut s = ListenerStream::new(server, Duration::from_secs(5));
        client
            .write_all(b"GET / HTTP/1.1\nhost: a\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 64];
        assert_eq!(s.read(&mut buf).await.unwrap(), 0);
        s.shutdown().await.unwrap();
        let mut answer = String::new();
        client.read_to_string(&mut answer).await.unwrap();
        assert!(
            answer.starts_with("HTTP/1.1 400 Bad Request\r\n"),
            "{answer}"
        );
    }
}

//! Open connections per listener and per source address, each held by a permit.
//!
//! An accept loop asks [`ConnectionCaps::admit`] for every accepted socket and closes it at
//! once when refused; the permit travels with the connection's task and gives its place back
//! when the connection ends. A refusal is logged at most once per interval, with a count.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::{Descriptors, Throttle};

/// One source holds at most this fraction of a listener's connections.
const SOURCE_SHARE: usize = 8;

/// How often a refused connection or a failing `accept` is logged, at most.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// How long an accept loop pauses after `accept` failed for lack of descriptors or memory:
/// retrying at once would spin on the same error.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// The caps of one listener.
pub struct ConnectionCaps {
    listener: &'static str,
    max_total: usize,
    max_per_source: usize,
    open: Mutex<Open>,
    refusals: Throttle,
    accept_errors: Throttle,
}

#[derive(Default)]
struct Open {
    total: usize,
    per_source: HashMap<IpAddr, usize>,
}

/// One admitted connection's place; given back when dropped.
pub struct ConnectionPermit {
    caps: Arc<ConnectionCaps>,
    source: IpAddr,
}

/// The address a per-source cap counts by: an IPv4 address as it is (an IPv4-mapped IPv6 one
/// as its IPv4 address), an IPv6 address by its /64, which one host or customer usually holds
/// whole.
pub fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

impl ConnectionCaps {
    /// Caps for the listener named `listener` (in log lines): at most `max_total` connections
    /// open at once, at most `max_per_source` of them from one source.
    pub fn new(
        listener: &'static str,
        max_total: usize,
        max_per_source: usize,
    ) -> Arc<ConnectionCaps> {
        Arc::new(ConnectionCaps {
            listener,
            max_total: max_total.max(1),
            max_per_source: max_per_source.max(1),
            open: Mutex::new(Open::default()),
            refusals: Throttle::new(LOG_EVERY),
            accept_errors: Throttle::new(LOG_EVERY),
        })
    }

    /// Caps for a server's listener, sized to the process: each of `listeners` listeners
    /// gets at most its share of the descriptor limit, and one source at most an eighth of
    /// its listener's cap, so that a handful of sources cannot fill it (both logged when they
    /// lower what is configured).
    pub fn for_listener(
        listener: &'static str,
        max_total: usize,
        max_per_source: usize,
        descriptors: &Descriptors,
        listeners: usize,
    ) -> Arc<ConnectionCaps> {
        let total = descriptors.share(max_total, listeners);
        let per_source = max_per_source.min((total / SOURCE_SHARE).max(1));
        if total < max_total || per_source < max_per_source {
            tracing::warn!(
                listener,
                descriptors = descriptors.soft,
                max_connections = total,
                max_connections_per_source = per_source,
                "the descriptor limit lowers the connection caps"
            );
        }
        ConnectionCaps::new(listener, total, per_source)
    }

    pub fn max_per_source(&self) -> usize {
        self.max_per_source
    }

    pub fn max_total(&self) -> usize {
        self.max_total
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.lock().total
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Open> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A permit for a connection from `peer`, or `None` (logged, throttled) when this
    /// listener or this source is at its cap.
    pub fn admit(self: &Arc<Self>, peer: IpAddr) -> Option<ConnectionPermit> {
        let source = source_key(peer);
        let refused = {
            let mut open = self.lock();
            let from_source = open.per_source.get(&source).copied().unwrap_or(0);
            if open.total >= self.max_total {
                Some("listener")
            } else if from_source >= self.max_per_source {
                Some("source")
            } else {
                open.total += 1;
                *open.per_source.entry(source).or_insert(0) += 1;
                None
            }
        };
        match refused {
            None => Some(ConnectionPermit {
                caps: self.clone(),
                source,
            }),
            Some(cap) => {
                if let Some(unlogged) = self.refusals.hit() {
                    tracing::warn!(
                        listener = self.listener,
                        cap,
                        max_total = self.max_total,
                        max_per_source = self.max_per_source,
                        refused_since_last_line = unlogged,
                        "connection cap reached: connection closed"
                    );
                }
                None
            }
        }
    }

    /// What an accept loop does after `accept` failed: logs it (throttled) and says how long to
    /// pause before accepting again. Running out of descriptors (`EMFILE`, `ENFILE`) or memory
    /// does not clear by itself within microseconds; a loop that retried at once would spin.
    pub fn accept_failed(&self, e: &io::Error) -> Duration {
        if let Some(unlogged) = self.accept_errors.hit() {
            tracing::error!(
                listener = self.listener,
                error = %e,
                open = self.open(),
                failed_since_last_line = unlogged,
                "could not accept a connection"
            );
        }
        match e.kind() {
            // A connection reset or aborted before it was accepted: the next one may be fine.
            io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted => Duration::ZERO,
            _ => ACCEPT_PAUSE,
        }
    }
}

/// The admission step of an accept loop: the accepted socket and its permit, or `None` when
/// `accept` failed (logged, throttled, after a pause where one helps) or a cap refused it (the
/// socket is closed by dropping it).
pub async fn admit<S>(
    caps: &Arc<ConnectionCaps>,
    accepted: io::Result<(S, SocketAddr)>,
) -> Option<(S, SocketAddr, ConnectionPermit)> {
    match accepted {
        Ok((stream, remote)) => {
            let permit = caps.admit(remote.ip())?;
            Some((stream, remote, permit))
        }
        Err(e) => {
            let pause = caps.accept_failed(&e);
            if !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
            None
        }
    }
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        let mut open = self.caps.lock();
        open.total = open.total.saturating_sub(1);
        if let Some(n) = open.per_source.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                open.per_source.remove(&self.source);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn caps_each_source_and_the_listener_and_gives_places_back() {
        let caps = ConnectionCaps::new("test", 3, 2);
        let a1 = caps.admit(ip("10.0.0.1")).expect("first from a");
        let a2 = caps.admit(ip("10.0.0.1")).expect("second from a");
        assert!(caps.admit(ip("10.0.0.1")).is_none(), "a is at its cap");
        let b1 = caps.admit(ip("10.0.0.2")).expect("b has room");
        assert!(
            caps.admit(ip("10.0.0.3")).is_none(),
            "the listener is at its cap"
        );
        assert_eq!(caps.open(), 3);
        drop(a1);
        assert!(caps.admit(ip("10.0.0.3")).is_some(), "a place came back");
        drop((a2, b1));
        assert_eq!(caps.open(), 0);
        assert!(caps.lock().per_source.is_empty(), "no entry stays behind");
    }

    #[test]
    fn an_ipv6_host_counts_by_its_64_and_a_mapped_ipv4_as_ipv4() {
        assert_eq!(
            source_key(ip("2001:db8:1:2:aaaa::1")),
            source_key(ip("2001:db8:1:2:bbbb::9"))
        );
        assert_ne!(
            source_key(ip("2001:db8:1:2::1")),
            source_key(ip("2001:db8:1:3::1"))
        );
        assert_eq!(source_key(ip("::ffff:10.0.0.1")), ip("10.0.0.1"));
        let caps = ConnectionCaps::new("test", 10, 1);
        let _held = caps.admit(ip("2001:db8::1")).unwrap();
        assert!(caps.admit(ip("2001:db8::2")).is_none());
    }

    #[test]
    fn a_small_descriptor_limit_lowers_both_caps() {
        let d = Descriptors {
            was: 1024,
            soft: 1100,
            hard: 1100,
        };
        let caps = ConnectionCaps::for_listener("test", 4096, 512, &d, 3);
        assert_eq!(caps.max_total(), 281);
        assert_eq!(caps.max_per_source(), 35);
        let roomy = Descriptors {
            was: 1024,
            soft: 1 << 20,
            hard: 1 << 20,
        };
        let caps = ConnectionCaps::for_listener("test", 4096, 512, &roomy, 3);
        assert_eq!((caps.max_total(), caps.max_per_source()), (4096, 512));
    }

    #[test]
    fn descriptor_exhaustion_pauses_the_accept_loop() {
        let caps = ConnectionCaps::new("test", 1, 1);
        let emfile = io::Error::from_raw_os_error(24);
        assert_eq!(caps.accept_failed(&emfile), ACCEPT_PAUSE);
        let reset = io::Error::from(io::ErrorKind::ConnectionAborted);
        assert_eq!(caps.accept_failed(&reset), Duration::ZERO);
    }
}

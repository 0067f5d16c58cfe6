//! The process's file descriptor limit: raised from the soft limit to the hard one at start.
//!
//! systemd starts services with a soft limit of 1024 descriptors and a much higher hard limit
//! (raising the soft one is what it expects a server to do, see systemd.exec(5) on
//! `LimitNOFILE=`). At 1024, a few hundred idle sockets are enough to make `accept` fail.

use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

/// The descriptor limit after [`raise_descriptor_limit`]; `u64::MAX` stands for unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Descriptors {
    /// The limit before it was raised.
    pub was: u64,
    /// The limit now in force.
    pub soft: u64,
    pub hard: u64,
}

/// Descriptors kept out of the connection caps, for the logs, the stores, the registry client
/// and the connections to peers.
const RESERVED: u64 = 256;

impl Descriptors {
    /// The most connections each of `listeners` listeners can hold without running the process
    /// out of descriptors: `configured`, lowered if the limit is too small for it.
    pub fn share(&self, configured: usize, listeners: usize) -> usize {
        let budget = self.soft.saturating_sub(RESERVED).max(64) / listeners.max(1) as u64;
        configured
            .min(usize::try_from(budget).unwrap_or(usize::MAX))
            .max(1)
    }
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit and says what it is now. If the raise is
/// refused, the limit stays as it was (and is returned as such).
pub fn raise_descriptor_limit() -> Descriptors {
    let before = getrlimit(Resource::Nofile);
    let was = before.current.unwrap_or(u64::MAX);
    let hard = before.maximum.unwrap_or(u64::MAX);
    if was >= hard {
        return Descriptors {
            was,
            soft: was,
            hard,
        };
    }
    let raised = Rlimit {
        current: before.maximum,
        maximum: before.maximum,
    };
    match setrlimit(Resource::Nofile, raised) {
        Ok(()) => Descriptors {
            was,
            soft: hard,
            hard,
        },
        Err(e) => {
            tracing::warn!(soft = was, hard, error = %e, "could not raise the descriptor limit");
            Descriptors {
                was,
                soft: was,
                hard,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_limit_lowers_each_listeners_share() {
        let d = |soft| Descriptors {
            was: 1024,
            soft,
            hard: soft,
        };
        assert_eq!(d(1024).share(4096, 3), 256);
        assert_eq!(d(1_048_576).share(4096, 3), 4096);
        assert_eq!(d(u64::MAX).share(4096, 3), 4096);
        assert_eq!(d(100).share(4096, 2), 32);
    }

    #[test]
    fn the_soft_limit_is_raised_to_the_hard_one() {
        let d = raise_descriptor_limit();
        assert_eq!(d.soft, d.hard);
        let now = getrlimit(Resource::Nofile);
        assert_eq!(now.current, now.maximum);
    }
}

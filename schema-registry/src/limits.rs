//! What one caller can take from the registry: connections, requests per second per source
//! address and per token, and how many of its refusals go into the audit trail one by one.
//!
//! A refusal of a caller who is not known (no token, a token that is not one, an ID token not
//! yet verified) is audited one by one only up to a budget per minute; past it, the refusals
//! are counted and one summary entry says how many there were. An anonymous flood so grows
//! the audit trail by a bounded number of entries per minute, not by one per request.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use enlace_limits::{RateLimiter, RateLimits};
use serde::Deserialize;

/// `[limits]` of the registry's configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiLimits {
    /// Connections the API listener holds open at most (lowered at start if the descriptor
    /// limit is too small for it).
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Connections one source address (an IPv6 /64) holds open at most.
    #[serde(default = "default_max_connections_per_source")]
    pub max_connections_per_source: usize,
    /// Requests per second from one source address, sustained; 0 is no limit.
    #[serde(default = "default_source_rate")]
    pub requests_per_sec_per_source: u32,
    #[serde(default = "default_source_burst")]
    pub request_burst_per_source: u32,
    /// Requests per second with one bearer token (an admin token or an ID token); 0 is no
    /// limit.
    #[serde(default = "default_token_rate")]
    pub requests_per_sec_per_token: u32,
    #[serde(default = "default_token_burst")]
    pub request_burst_per_token: u32,
    /// Refusals of unknown callers written to the audit trail one by one per minute; past it
    /// they are counted into one summary entry.
    #[serde(default = "default_unknown_audit")]
    pub unknown_refusals_audited_per_minute: u32,
}

fn default_max_connections() -> usize {
    4096
}
fn default_max_connections_per_source() -> usize {
    512
}
fn default_source_rate() -> u32 {
    200
}
fn default_source_burst() -> u32 {
    1000
}
fn default_token_rate() -> u32 {
    100
}
fn default_token_burst() -> u32 {
    500
}
fn default_unknown_audit() -> u32 {
    60
}

impl Default for ApiLimits {
    fn default() -> Self {
        ApiLimits {
            max_connections: default_max_connections(),
            max_connections_per_source: default_max_connections_per_source(),
            requests_per_sec_per_source: default_source_rate(),
            request_burst_per_source: default_source_burst(),
            requests_per_sec_per_token: default_token_rate(),
            request_burst_per_token: default_token_burst(),
            unknown_refusals_audited_per_minute: default_unknown_audit(),
        }
    }
}

/// The limiters the API applies to every request.
pub struct Guards {
    pub per_source: RateLimiter,
    pub per_token: RateLimiter,
    pub unknown_audit: AuditBudget,
    /// Requests refused for their rate, logged at most once per interval.
    pub rate_refusals: enlace_limits::Throttle,
}

impl Guards {
    pub fn new(l: &ApiLimits) -> Guards {
        Guards {
            per_source: RateLimiter::new(RateLimits {
                per_sec: l.requests_per_sec_per_source,
                burst: l.request_burst_per_source,
            }),
            per_token: RateLimiter::new(RateLimits {
                per_sec: l.requests_per_sec_per_token,
                burst: l.request_burst_per_token,
            }),
            unknown_audit: AuditBudget::new(
                l.unknown_refusals_audited_per_minute,
                Duration::from_secs(60),
            ),
            rate_refusals: enlace_limits::Throttle::new(Duration::from_secs(10)),
        }
    }
}

/// How many refusals of one kind of caller are audited one by one per window.
pub struct AuditBudget {
    per_window: u32,
    window: Duration,
    state: Mutex<BudgetState>,
}

struct BudgetState {
    started: Instant,
    written: u32,
    counted: u64,
}

/// What to do with one refusal.
#[derive(Debug, PartialEq, Eq)]
pub struct Admission {
    /// Audit this refusal on its own.
    pub write: bool,
    /// First write a summary entry for this many refusals of the window that ended.
    pub summarise: u64,
}

impl AuditBudget {
    pub fn new(per_window: u32, window: Duration) -> AuditBudget {
        AuditBudget {
            per_window,
            window,
            state: Mutex::new(BudgetState {
                started: Instant::now(),
                written: 0,
                counted: 0,
            }),
        }
    }

    pub fn admit(&self) -> Admission {
        self.admit_at(Instant::now())
    }

    fn admit_at(&self, now: Instant) -> Admission {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let summarise = self.roll(&mut s, now);
        let write = s.written < self.per_window;
        if write {
            s.written += 1;
        } else {
            s.counted += 1;
        }
        Admission { write, summarise }
    }

    /// The count of a window that has ended and not been summarised yet (0 if none): for a
    /// periodic flush, so that the last window of a flood is summarised too.
    pub fn flush(&self) -> u64 {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        self.roll(&mut s, Instant::now())
    }

    fn roll(&self, s: &mut BudgetState, now: Instant) -> u64 {
        if now.duration_since(s.started) < self.window {
            return 0;
        }
        s.started = now;
        s.written = 0;
        std::mem::take(&mut s.counted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_is_written_up_to_the_budget_then_summarised() {
        let b = AuditBudget::new(3, Duration::from_secs(60));
        let t0 = Instant::now();
        let mut written = 0;
        for _ in 0..1000 {
            let a = b.admit_at(t0);
            assert_eq!(a.summarise, 0);
            written += u32::from(a.write);
        }
        assert_eq!(written, 3);
        let next = b.admit_at(t0 + Duration::from_secs(61));
        assert_eq!(
            next,
            Admission {
                write: true,
                summarise: 997
            }
        );
        assert_eq!(b.admit_at(t0 + Duration::from_secs(200)).summarise, 0);
    }
}

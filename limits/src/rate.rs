//! Requests per second per key: a token bucket for each key, in a map of bounded size.
//!
//! Keys are hashed on entry (SipHash with a per-process random key), so the map never holds a
//! token or an address. When the map is full, idle keys (whose bucket has refilled) are
//! dropped; if none is idle, new keys share one overflow bucket until room comes back, so a
//! caller who invents keys cannot grow the map.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, RandomState};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A rate and a burst; `per_sec == 0` means no limit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimits {
    /// Sustained requests per second.
    pub per_sec: u32,
    /// Requests allowed at once after a quiet spell (the bucket's size).
    pub burst: u32,
}

/// Keys a limiter tracks at most (about 40 bytes each).
const MAX_KEYS: usize = 100_000;

/// The key that keys arriving while the map is full share.
const OVERFLOW: u64 = u64::MAX;

pub struct RateLimiter {
    limits: RateLimits,
    hasher: RandomState,
    max_keys: usize,
    buckets: Mutex<HashMap<u64, Bucket>>,
}

#[derive(Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl RateLimiter {
    pub fn new(limits: RateLimits) -> RateLimiter {
        RateLimiter::with_capacity(limits, MAX_KEYS)
    }

    fn with_capacity(limits: RateLimits, max_keys: usize) -> RateLimiter {
        RateLimiter {
            limits: RateLimits {
                per_sec: limits.per_sec,
                burst: limits.burst.max(1),
            },
            hasher: RandomState::new(),
            max_keys: max_keys.max(2),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    pub fn limits(&self) -> RateLimits {
        self.limits
    }

    /// Takes one request from `key`'s bucket: `Ok` if it may go on, `Err(wait)` with how long
    /// until it could (for `Retry-After`) if not.
    pub fn check<K: Hash + ?Sized>(&self, key: &K) -> Result<(), Duration> {
        if self.limits.per_sec == 0 {
            return Ok(());
        }
        self.check_at(self.hasher.hash_one(key), Instant::now())
    }

    fn check_at(&self, key: u64, now: Instant) -> Result<(), Duration> {
        let rate = f64::from(self.limits.per_sec);
        let burst = f64::from(self.limits.burst);
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        // One place stays free for the overflow bucket.
        let room = self.max_keys - 1;
        let key = if buckets.contains_key(&key) || buckets.len() < room {
            key
        } else {
            // Drop the keys whose bucket is full again: they are idle.
            buckets.retain(|k, b| {
                *k == OVERFLOW || b.tokens + now.duration_since(b.at).as_secs_f64() * rate < burst
            });
            if buckets.len() < room { key } else { OVERFLOW }
        };
        let b = buckets.entry(key).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * rate).min(burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - b.tokens) / rate))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_sustained_rate_then_a_wait() {
        let l = RateLimiter::new(RateLimits {
            per_sec: 10,
            burst: 3,
        });
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(l.check_at(1, t0).is_ok());
        }
        let wait = l.check_at(1, t0).unwrap_err();
        assert!(wait > Duration::from_millis(90) && wait <= Duration::from_millis(100));
        // Another key has a bucket of its own.
        assert!(l.check_at(2, t0).is_ok());
        // 100 ms later, one more.
        let t1 = t0 + Duration::from_millis(100);
        assert!(l.check_at(1, t1).is_ok());
        assert!(l.check_at(1, t1).is_err());
        // After a quiet second, the whole burst again, never more.
        let t2 = t1 + Duration::from_secs(5);
        for _ in 0..3 {
            assert!(l.check_at(1, t2).is_ok());
        }
        assert!(l.check_at(1, t2).is_err());
    }

    #[test]
    fn zero_means_no_limit() {
        let l = RateLimiter::new(RateLimits {
            per_sec: 0,
            burst: 0,
        });
        for _ in 0..10_000 {
            assert!(l.check("k").is_ok());
        }
    }

    #[test]
    fn invented_keys_cannot_grow_the_map() {
        let l = RateLimiter::with_capacity(
            RateLimits {
                per_sec: 1,
                burst: 1,
            },
            100,
        );
        let t0 = Instant::now();
        for k in 0..10_000u64 {
            let _ = l.check_at(k, t0);
        }
        assert!(l.buckets.lock().unwrap().len() <= 100);
        // Keys that arrived with the map full shared one bucket, so most were refused.
        let refused = (20_000..20_100u64)
            .filter(|k| l.check_at(*k, t0).is_err())
            .count();
        assert!(refused >= 99, "{refused}");
        // Once the old keys are idle, new keys get buckets of their own again.
        let later = t0 + Duration::from_secs(10);
        assert!(l.check_at(30_000, later).is_ok());
        assert!(l.check_at(30_001, later).is_ok());
    }
}

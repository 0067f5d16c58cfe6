//! A condition logged once per interval, with the count of what happened in between.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Says when a repeated condition is worth a log line: the first time, then at most once per
/// `every`, each time with how many occurrences went unlogged since the last line.
pub struct Throttle {
    every: Duration,
    state: Mutex<ThrottleState>,
}

struct ThrottleState {
    last: Option<Instant>,
    unlogged: u64,
}

impl Throttle {
    pub fn new(every: Duration) -> Throttle {
        Throttle {
            every,
            state: Mutex::new(ThrottleState {
                last: None,
                unlogged: 0,
            }),
        }
    }

    /// Records one occurrence. `Some(n)` when this one should be logged, `n` being how many
    /// were not logged since the last line; `None` when it should only be counted.
    pub fn hit(&self) -> Option<u64> {
        self.hit_at(Instant::now())
    }

    fn hit_at(&self, now: Instant) -> Option<u64> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match s.last {
            Some(last) if now.duration_since(last) < self.every => {
                s.unlogged += 1;
                None
            }
            _ => {
                s.last = Some(now);
                Some(std::mem::take(&mut s.unlogged))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_the_first_then_once_per_interval_with_the_count_between() {
        let t = Throttle::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(t.hit_at(t0), Some(0));
        for i in 1..=5 {
            assert_eq!(t.hit_at(t0 + Duration::from_secs(i)), None);
        }
        assert_eq!(t.hit_at(t0 + Duration::from_secs(10)), Some(5));
        assert_eq!(t.hit_at(t0 + Duration::from_secs(11)), None);
        assert_eq!(t.hit_at(t0 + Duration::from_secs(25)), Some(1));
    }
}

//! When to say that something keeps failing: at the first failure, then at most one summary
//! per interval with the count, and once when it works again; never once per attempt.
//!
//! It decides only; the caller writes the line, with its own words and fields.

use std::time::{Duration, Instant};

/// What a caller should say about an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Say {
    /// Nothing (a success while all was well, or a failure already summarised this interval).
    Nothing,
    /// The first failure after a success.
    Began,
    /// A failure an interval after the last line: `failed` since that line, `for_secs` since
    /// the outage began.
    Still { failed: u64, for_secs: u64 },
    /// A success ending an outage of `failed` failures over `for_secs`.
    Over { failed: u64, for_secs: u64 },
}

/// The state of one outage.
#[derive(Debug, Clone)]
pub struct Outage {
    every: Duration,
    current: Option<Current>,
}

#[derive(Debug, Clone)]
struct Current {
    since: Instant,
    last_line: Instant,
    failed: u64,
    unreported: u64,
}

impl Outage {
    /// Summaries at most once per `every`.
    pub fn new(every: Duration) -> Outage {
        Outage {
            every,
            current: None,
        }
    }

    /// Whether the last attempt failed.
    pub fn is_on(&self) -> bool {
        self.current.is_some()
    }

    /// An attempt failed at `now`.
    pub fn failed(&mut self, now: Instant) -> Say {
        let Some(c) = self.current.as_mut() else {
            self.current = Some(Current {
                since: now,
                last_line: now,
                failed: 1,
                unreported: 0,
            });
            return Say::Began;
        };
        c.failed += 1;
        c.unreported += 1;
        if now.saturating_duration_since(c.last_line) < self.every {
            return Say::Nothing;
        }
        let say = Say::Still {
            failed: c.unreported,
            for_secs: now.saturating_duration_since(c.since).as_secs(),
        };
        c.last_line = now;
        c.unreported = 0;
        say
    }

    /// An attempt succeeded at `now`.
    pub fn succeeded(&mut self, now: Instant) -> Say {
        match self.current.take() {
            None => Say::Nothing,
            Some(c) => Say::Over {
                failed: c.failed,
                for_secs: now.saturating_duration_since(c.since).as_secs(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thousand_failures_in_a_second_say_one_line_then_one_per_interval_then_the_end() {
        let mut o = Outage::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(o.succeeded(t0), Say::Nothing);
        assert_eq!(o.failed(t0), Say::Began);
        let said = (1..1000)
            .map(|i| o.failed(t0 + Duration::from_millis(i)))
            .filter(|s| *s != Say::Nothing)
            .count();
        assert_eq!(said, 0);
        assert_eq!(
            o.failed(t0 + Duration::from_secs(10)),
            Say::Still {
                failed: 1000,
                for_secs: 10
            }
        );
        assert_eq!(o.failed(t0 + Duration::from_secs(11)), Say::Nothing);
        assert!(o.is_on());
        assert_eq!(
            o.succeeded(t0 + Duration::from_secs(12)),
            Say::Over {
                failed: 1002,
                for_secs: 12
            }
        );
        assert!(!o.is_on());
        assert_eq!(o.failed(t0 + Duration::from_secs(13)), Say::Began);
    }
}

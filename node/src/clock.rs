//! The node's time source, and what it has learned about its own clock by comparing it with
//! the registry's (`Date` of each configuration response): how far off it is, and the problem
//! that names this node's clock when that is more than the tolerance.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use enlace_core::problem::{Culprit, Problem, ProblemKind};
use time::OffsetDateTime;

/// Where the node reads the time. Production nodes read the system clock; the in-process
/// test harness hands a node another source (a clock set ahead or behind) through
/// [`crate::relay::start_with_clock`], so skew is tested on the real code paths.
#[derive(Clone)]
pub struct Clock {
    source: Option<Arc<dyn Fn() -> OffsetDateTime + Send + Sync>>,
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.source.is_some() {
            "Clock(injected)"
        } else {
            "Clock(system)"
        })
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::system()
    }
}

impl Clock {
    /// The system clock.
    pub fn system() -> Clock {
        Clock { source: None }
    }

    /// A clock that reads `source`.
    pub fn from_fn(source: impl Fn() -> OffsetDateTime + Send + Sync + 'static) -> Clock {
        Clock {
            source: Some(Arc::new(source)),
        }
    }

    pub fn now(&self) -> OffsetDateTime {
        match &self.source {
            None => OffsetDateTime::now_utc(),
            Some(f) => f(),
        }
    }

    /// Unix seconds.
    pub fn unix_now(&self) -> i64 {
        self.now().unix_timestamp()
    }
}

/// Marks an offset not measured yet.
const UNKNOWN: i64 = i64::MIN;

/// This node's clock minus the registry's, in seconds, as last measured.
#[derive(Debug)]
pub struct RegistryOffset {
    secs: AtomicI64,
    /// How far the clocks may differ before this node's clock counts as wrong, seconds.
    tolerance_secs: i64,
}

impl RegistryOffset {
    pub fn new(tolerance_secs: i64) -> RegistryOffset {
        RegistryOffset {
            secs: AtomicI64::new(UNKNOWN),
            tolerance_secs: tolerance_secs.max(1),
        }
    }

    /// Records a measurement: this node read `local` when the registry's answer said
    /// `registry` (a `Date`, whole seconds). Logs an error when the clocks part, and once
    /// when they agree again.
    pub fn record(&self, local: OffsetDateTime, registry: OffsetDateTime) {
        let offset = local
            .unix_timestamp()
            .saturating_sub(registry.unix_timestamp());
        let before = self.secs.swap(offset, Ordering::Relaxed);
        let off = |s: i64| s != UNKNOWN && s.abs() > self.tolerance_secs;
        if off(offset) {
            tracing::error!(
                offset_secs = offset,
                tolerance_secs = self.tolerance_secs,
                "{}; set this node's clock (NTP)",
                describe(offset)
            );
        } else if off(before) {
            tracing::info!(
                offset_secs = offset,
                "this node's clock agrees with the registry's again"
            );
        }
    }

    /// The last measured offset (this node minus the registry), if any.
    pub fn secs(&self) -> Option<i64> {
        Some(self.secs.load(Ordering::Relaxed)).filter(|s| *s != UNKNOWN)
    }

    /// `clock-skew`, naming this node's clock, when it was last measured more than the
    /// tolerance away from the registry's.
    pub fn problem(&self) -> Option<Problem> {
        let offset = self.secs()?;
        if offset.abs() <= self.tolerance_secs {
            return None;
        }
        Some(
            Problem::new(
                ProblemKind::ClockSkew,
                format!("{} (tolerance {} s)", describe(offset), self.tolerance_secs),
            )
            .with("clock_offset_secs", offset),
        )
    }

    /// Says who to blame for a peer's `stale` message: this node when its own clock is known
    /// to be off (the detail says by how much), otherwise the peer. Other problems are
    /// returned as they are.
    pub fn blame_stale(&self, p: Problem) -> Problem {
        if p.kind != ProblemKind::Stale {
            return p;
        }
        match (self.problem(), self.secs()) {
            (Some(_), Some(offset)) => Problem {
                detail: format!("{}; {}", p.detail, describe(offset)),
                ..p
            }
            .with("clock_offset_secs", offset)
            .caused_by(Culprit::ThisNode),
            (None, Some(offset)) => Problem {
                detail: format!(
                    "{}; this node's clock agrees with the registry's (offset {offset} s), so the peer's clock looks wrong",
                    p.detail
                ),
                ..p
            }
            .with("clock_offset_secs", offset)
            .caused_by(Culprit::PeerNode),
            _ => p.caused_by(Culprit::PeerNode),
        }
    }
}

/// "this node's clock is 700 s ahead of the registry's".
fn describe(offset: i64) -> String {
    let side = if offset > 0 { "ahead of" } else { "behind" };
    format!(
        "this node's clock is {} s {side} the registry's",
        offset.unsigned_abs()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(secs).unwrap()
    }

    #[test]
    fn an_offset_beyond_the_tolerance_names_this_nodes_clock() {
        let o = RegistryOffset::new(30);
        assert_eq!(o.secs(), None);
        assert!(o.problem().is_none());
        o.record(at(1_000_700), at(1_000_000));
        let p = o.problem().expect("off");
        assert_eq!(p.kind, ProblemKind::ClockSkew);
        assert!(
            p.detail
                .starts_with("this node's clock is 700 s ahead of the registry's")
        );
        o.record(at(1_000_000), at(1_000_120));
        assert!(o.problem().unwrap().detail.contains("120 s behind"));
        o.record(at(1_000_000), at(1_000_030));
        assert!(o.problem().is_none(), "within the tolerance");
    }

    #[test]
    fn a_stale_signature_blames_this_node_only_when_its_clock_is_off() {
        let stale = || Problem::new(ProblemKind::Stale, "signature created 45s ago");
        let o = RegistryOffset::new(30);
        assert_eq!(o.blame_stale(stale()).culprit(), Culprit::PeerNode);
        o.record(at(1_000_045), at(1_000_000));
        let p = o.blame_stale(stale());
        assert_eq!(p.culprit(), Culprit::ThisNode);
        assert!(
            p.detail.contains("this node's clock is 45 s ahead"),
            "{}",
            p.detail
        );
        o.record(at(1_000_001), at(1_000_000));
        let p = o.blame_stale(stale());
        assert_eq!(p.culprit(), Culprit::PeerNode);
        assert!(
            p.detail.contains("the peer's clock looks wrong"),
            "{}",
            p.detail
        );
        let other = Problem::new(ProblemKind::BodyTooLarge, "no");
        assert_eq!(o.blame_stale(other.clone()), other);
    }
}

//! Replay and volume guards: message ids seen within the freshness window, and per-contract
//! request counts per period.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use enlace_core::contract::{Period, VolumeLimit};
use enlace_core::id::ContractId;

/// Remembers message ids for as long as a signature with them could still be fresh. Ids are
/// kept in one set per second of arrival, so forgetting old ones drops whole sets instead of
/// scanning every id on every request.
pub struct ReplayGuard {
    buckets: Mutex<std::collections::VecDeque<(i64, HashSet<String>)>>,
    window_secs: i64,
    /// When this guard started remembering: before `started + window`, an id it has not seen
    /// may still have arrived before a restart.
    started: i64,
}

impl ReplayGuard {
    pub fn new(max_skew_secs: i64) -> ReplayGuard {
        ReplayGuard {
            buckets: Mutex::new(std::collections::VecDeque::new()),
            window_secs: 2 * max_skew_secs + 5,
            started: time::OffsetDateTime::now_utc().unix_timestamp(),
        }
    }

    /// Whether the guard may have missed ids that arrived before it started (a restart).
    pub fn still_warming_up(&self, now: i64) -> bool {
        now < self.started + self.window_secs
    }

    /// Records `id`; false if it was already seen within the window (a replay).
    pub fn first_sighting(&self, id: &str, now: i64) -> bool {
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        while buckets
            .front()
            .is_some_and(|(second, _)| *second <= now - self.window_secs)
        {
            buckets.pop_front();
        }
        if buckets.iter().any(|(_, ids)| ids.contains(id)) {
            return false;
        }
        match buckets.back_mut() {
            Some((second, ids)) if *second >= now => {
                ids.insert(id.to_string());
            }
            _ => buckets.push_back((now, HashSet::from([id.to_string()]))),
        }
        true
    }
}

/// Counts exchanges per contract and period, and single-use contracts already used.
#[derive(Default)]
pub struct VolumeGuard {
    counts: Mutex<HashMap<(ContractId, i64), u64>>,
    used: Mutex<HashSet<ContractId>>,
}

fn period_index(period: Period, now: time::OffsetDateTime) -> i64 {
    let t = now.unix_timestamp();
    match period {
        Period::Minute => t / 60,
        Period::Hour => t / 3600,
        Period::Day => t / 86_400,
        Period::Month => i64::from(now.year()) * 12 + i64::from(u8::from(now.month())),
    }
}

impl VolumeGuard {
    /// Counts one exchange; false when the limit for this period is already reached.
    pub fn admit(
        &self,
        contract: &ContractId,
        limit: Option<VolumeLimit>,
        now: time::OffsetDateTime,
    ) -> bool {
        let Some(limit) = limit else { return true };
        let key = (contract.clone(), period_index(limit.period, now));
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let n = counts.entry(key).or_insert(0);
        if *n >= limit.max_requests {
            return false;
        }
        *n += 1;
        true
    }

    /// Marks a single-use contract used; false if it already was.
    pub fn use_once(&self, contract: &ContractId) -> bool {
        self.used
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(contract.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replays_are_caught_within_the_window_only() {
        let g = ReplayGuard::new(30);
        assert!(g.first_sighting("a", 1000));
        assert!(!g.first_sighting("a", 1001));
        assert!(g.first_sighting("b", 1030));
        assert!(!g.first_sighting("a", 1064));
        assert!(g.first_sighting("a", 1000 + 66));
        assert!(!g.first_sighting("b", 1094), "b is still remembered");
    }

    #[test]
    fn volume_is_counted_per_period() {
        let g = VolumeGuard::default();
        let c: ContractId = "ctr_01JD0000000000000000000000".parse().unwrap();
        let limit = Some(VolumeLimit {
            max_requests: 2,
            period: Period::Minute,
        });
        let t = time::macros::datetime!(2026-11-22 12:00:10 UTC);
        assert!(g.admit(&c, limit, t));
        assert!(g.admit(&c, limit, t));
        assert!(!g.admit(&c, limit, t));
        assert!(g.admit(&c, limit, t + time::Duration::minutes(1)));
        assert!(g.use_once(&c));
        assert!(!g.use_once(&c));
    }
}

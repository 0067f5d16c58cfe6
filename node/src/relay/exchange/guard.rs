//! Replay and volume guards: message ids seen within the freshness window, and per-contract
//! request counts per period.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;

use enlace_core::contract::{Period, VolumeLimit};
use enlace_core::id::ContractId;

/// Remembers message ids for as long as a signature with them could still be fresh.
///
/// A message id is a UUIDv7, whose first 48 bits are its creation time in milliseconds; an id
/// whose time is further than the clock-skew bound from ours is refused as stale before this
/// guard is asked, so the guard only has to remember ids from the window around now. Ids are
/// kept as `u128` in one set per second of their own timestamp: a lookup touches one set, and
/// forgetting drops whole sets.
pub struct ReplayGuard {
    buckets: Mutex<BTreeMap<i64, HashSet<u128>>>,
    skew_secs: i64,
}

/// The creation time of a UUIDv7 message id, in whole seconds since the Unix epoch.
pub fn uuid_v7_secs(id: u128) -> i64 {
    ((id >> 80) as i64) / 1000
}

impl ReplayGuard {
    pub fn new(max_skew_secs: i64) -> ReplayGuard {
        ReplayGuard {
            buckets: Mutex::new(BTreeMap::new()),
            skew_secs: max_skew_secs,
        }
    }

    /// Whether an id created at `id_secs` is within the window around `now`.
    pub fn fresh(&self, id_secs: i64, now: i64) -> bool {
        (id_secs - now).abs() <= self.skew_secs
    }

    /// Records `id` (a fresh UUIDv7 as `u128`); false if it was already seen (a replay).
    pub fn first_sighting(&self, id: u128, now: i64) -> bool {
        let second = uuid_v7_secs(id);
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        // Forget ids that can no longer pass the freshness check.
        while let Some(entry) = buckets.first_entry() {
            if *entry.key() >= now - self.skew_secs - 1 {
                break;
            }
            entry.remove();
        }
        buckets.entry(second).or_default().insert(id)
    }

    /// How many ids are remembered.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        let buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        buckets.values().map(HashSet::len).sum()
    }
}

/// Counts exchanges per contract and period, and single-use contracts already used.
#[derive(Default)]
pub struct VolumeGuard {
    counts: Mutex<HashMap<(ContractId, i64), u64>>,
    used: Mutex<HashSet<ContractId>>,
}

pub(crate) fn period_index(period: Period, now: time::OffsetDateTime) -> i64 {
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

    /// Restores counts committed before a restart: `(contract, period, count)`, with
    /// `period` = [`enlace_msglog::SINGLE_USE_PERIOD`] for a single use.
    pub fn restore(&self, rows: Vec<(String, i64, u64)>) {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let mut used = self.used.lock().unwrap_or_else(|e| e.into_inner());
        for (contract, period, n) in rows {
            let Ok(id) = contract.parse::<ContractId>() else {
                continue;
            };
            if period == enlace_msglog::SINGLE_USE_PERIOD {
                used.insert(id);
            } else {
                *counts.entry((id, period)).or_insert(0) += n;
            }
        }
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

    /// A UUIDv7-shaped id created at `secs` (plus `n` to tell ids apart).
    fn id(secs: i64, n: u128) -> u128 {
        ((secs as u128 * 1000) << 80) | (7 << 76) | n
    }

    #[test]
    fn replays_are_caught_and_old_ids_forgotten() {
        let g = ReplayGuard::new(30);
        assert_eq!(uuid_v7_secs(id(1000, 1)), 1000);
        assert!(g.first_sighting(id(1000, 1), 1000));
        assert!(!g.first_sighting(id(1000, 1), 1001), "the same id again");
        assert!(
            g.first_sighting(id(1000, 2), 1001),
            "another id of the same second"
        );
        assert!(g.first_sighting(id(1025, 1), 1025));
        assert!(
            !g.first_sighting(id(1000, 1), 1030),
            "still within the window"
        );
        // At 1032 ids of second 1000 can no longer be fresh, so they are forgotten...
        assert!(g.first_sighting(id(1040, 1), 1032));
        assert_eq!(g.len(), 2, "second 1000 dropped");
        // ...and the freshness check is what refuses them from then on.
        assert!(!g.fresh(1000, 1032));
        assert!(g.fresh(1002, 1032));
        assert!(g.fresh(1062, 1032));
        assert!(!g.fresh(1063, 1032), "too far in the future");
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

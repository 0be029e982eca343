//! The per-replica fallback while Redis is unreachable (and the only store when `REDIS_URL`
//! is unset): the same [`take_all`] arithmetic over a sharded map of bucket states.
//!
//! - **Atomic like the script.** A request's buckets may live in several shards; their locks
//!   are taken in shard order (so two requests never wait on each other in a cycle), the
//!   buckets are charged all-or-nothing, and the locks are released. Critical sections are
//!   a few map lookups: no I/O, no await.
//! - **Stored like the script.** Only an allowed request writes (a denied one charges
//!   nothing, and storing its refilled state would change nothing).
//! - **Bounded.** At most `capacity` buckets. A bucket that has refilled to full is the same
//!   as a missing one, so it can be dropped without changing any decision; a shard that is
//!   full first drops those, and only if none is idle does it drop the eighth of its
//!   buckets that are closest to full (the smallest forgiveness possible; it takes a flood
//!   of distinct devices or addresses to get there).

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::token_bucket::{take_all, BucketState, Charge, Limit, TakeAll};

/// Independent locks; a power of two is not needed, just enough to keep contention low on
/// a few cores.
const SHARDS: usize = 16;

pub struct MemoryBuckets {
    shards: Vec<Mutex<HashMap<String, Entry>>>,
    /// Most buckets one shard holds.
    capacity_per_shard: usize,
    hasher: RandomState,
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    state: BucketState,
    /// When the bucket will be full again; from then on the entry is the same as no entry.
    full_at_ms: i64,
}

impl MemoryBuckets {
    /// Holds at most about `capacity` buckets (at least one per shard).
    pub fn new(capacity: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            capacity_per_shard: capacity.div_ceil(SHARDS).max(1),
            hasher: RandomState::new(),
        }
    }

    /// Charges `charges` (named by `keys`, one each, all distinct) all-or-nothing at
    /// `now_ms`. The `state` of each charge is ignored: the stored one is used.
    pub fn take_all(&self, keys: &[String], charges: &[Charge<'_>], now_ms: i64) -> TakeAll {
        debug_assert_eq!(keys.len(), charges.len());
        let shard_of: Vec<usize> = keys.iter().map(|k| self.shard_index(k)).collect();
        let mut wanted = shard_of.clone();
        wanted.sort_unstable();
        wanted.dedup();
        // Ascending shard order: no two requests can wait on each other in a cycle.
        let mut guards: Vec<(usize, MutexGuard<'_, HashMap<String, Entry>>)> = wanted
            .iter()
            .map(|&i| {
                let guard = self.shards[i]
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                (i, guard)
            })
            .collect();
        let position = |shard: usize| wanted.binary_search(&shard).unwrap_or_default();

        let with_state: Vec<Charge<'_>> = charges
            .iter()
            .zip(keys)
            .zip(&shard_of)
            .map(|((charge, key), &shard)| Charge {
                state: guards[position(shard)].1.get(key).map(|e| e.state),
                ..*charge
            })
            .collect();
        let outcome = take_all(&with_state, now_ms);
        if outcome.allowed {
            for ((key, &shard), (charge, state)) in keys
                .iter()
                .zip(&shard_of)
                .zip(charges.iter().zip(&outcome.states))
            {
                let map = &mut guards[position(shard)].1;
                let entry = Entry {
                    state: *state,
                    full_at_ms: full_at_ms(state, charge.limit),
                };
                if let Some(existing) = map.get_mut(key) {
                    *existing = entry;
                } else {
                    if map.len() >= self.capacity_per_shard {
                        evict(map, now_ms);
                    }
                    map.insert(key.clone(), entry);
                }
            }
        }
        outcome
    }

    /// Buckets held (for tests and diagnostics).
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops every bucket that has refilled to full by `now_ms` (no decision changes).
    pub fn sweep(&self, now_ms: i64) {
        for shard in &self.shards {
            shard
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .retain(|_, e| e.full_at_ms > now_ms);
        }
    }

    fn shard_index(&self, key: &str) -> usize {
        (self.hasher.hash_one(key) % SHARDS as u64) as usize
    }
}

/// When a bucket in `state` is full again, in Unix ms (saturating for absurd limits).
fn full_at_ms(state: &BucketState, limit: &Limit) -> i64 {
    let missing = (limit.burst - state.tokens()).max(0.0);
    let ms = (missing * 1000.0 / limit.rate_per_sec).ceil();
    // `as` saturates; a NaN (impossible with a validated limit) reads as 0.
    state.updated_at_ms().saturating_add(ms as i64)
}

/// Makes room in a full shard: idle buckets first, else the eighth closest to full.
fn evict(map: &mut HashMap<String, Entry>, now_ms: i64) {
    let before = map.len();
    map.retain(|_, e| e.full_at_ms > now_ms);
    if map.len() < before {
        return;
    }
    let mut full_at: Vec<i64> = map.values().map(|e| e.full_at_ms).collect();
    let drop = (full_at.len() / 8).max(1);
    let (_, threshold, _) = full_at.select_nth_unstable(drop - 1);
    let threshold = *threshold;
    let mut dropped = 0;
    map.retain(|_, e| {
        if dropped < drop && e.full_at_ms <= threshold {
            dropped += 1;
            false
        } else {
            true
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token_bucket::Scope;

    fn limit(rate: f64, burst: f64) -> Limit {
        Limit::new(rate, burst).unwrap()
    }

    fn charge(scope: Scope, limit: &Limit, cost: f64) -> Charge<'_> {
        Charge {
            scope,
            limit,
            state: None,
            cost,
        }
    }

    fn keys(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn charges_persist_between_requests() {
        let m = MemoryBuckets::new(100);
        let l = limit(1.0, 10.0);
        let k = keys(&["user:a"]);
        assert!(m.take_all(&k, &[charge(Scope::User, &l, 6.0)], 0).allowed);
        let second = m.take_all(&k, &[charge(Scope::User, &l, 6.0)], 0);
        assert!(!second.allowed, "4 tokens left");
        assert_eq!(second.reported_decision().unwrap().retry_after_secs, 2);
        assert!(
            m.take_all(&k, &[charge(Scope::User, &l, 6.0)], 2_000)
                .allowed,
            "refilled after the advertised wait"
        );
    }

    #[test]
    fn all_or_nothing_across_shards() {
        let m = MemoryBuckets::new(1_000);
        let (user, device) = (limit(1.0, 10.0), limit(1.0, 3.0));
        // Enough keys that some land in different shards.
        let names: Vec<String> = (0..8).map(|i| format!("device:{i}")).collect();
        let mut k = vec!["user:a".to_string()];
        k.extend(names.iter().cloned());
        let mut charges = vec![charge(Scope::User, &user, 8.0)];
        charges.extend(names.iter().map(|_| charge(Scope::Device, &device, 1.0)));
        charges[3].cost = 4.0; // more than that device's burst of 3
        let out = m.take_all(&k, &charges, 0);
        assert!(!out.allowed);
        assert!(m.is_empty(), "a denied request stores nothing");
        charges[3].cost = 1.0;
        assert!(m.take_all(&k, &charges, 0).allowed);
        assert_eq!(m.len(), 9);
    }

    #[test]
    fn idle_buckets_are_dropped_first_and_the_bound_holds() {
        let m = MemoryBuckets::new(SHARDS * 4);
        let l = limit(10.0, 10.0);
        for i in 0..1_000 {
            let k = vec![format!("ip:{i}")];
            assert!(m.take_all(&k, &[charge(Scope::Ip, &l, 5.0)], i).allowed);
            assert!(m.len() <= SHARDS * 4);
        }
        // A bucket 5 tokens short at 10/s is full 500 ms later.
        m.sweep(10_000);
        assert!(m.is_empty());
    }

    #[test]
    fn eviction_forgives_the_buckets_closest_to_full() {
        let mut map = HashMap::new();
        for i in 0..16 {
            map.insert(
                format!("k{i}"),
                Entry {
                    state: BucketState::new(0.0, 0),
                    full_at_ms: 1_000 + i,
                },
            );
        }
        evict(&mut map, 0);
        assert_eq!(map.len(), 14);
        assert!(!map.contains_key("k0") && !map.contains_key("k1"));
        evict(&mut map, 1_005);
        assert_eq!(map.len(), 10, "idle ones (full_at <= now) go first");
    }

    #[test]
    fn full_at_saturates() {
        let huge = Limit {
            rate_per_sec: 1e-300,
            burst: 1e300,
        };
        assert_eq!(
            full_at_ms(&BucketState::new(0.0, 5), &huge),
            i64::MAX,
            "no overflow"
        );
        assert_eq!(
            full_at_ms(&BucketState::new(5.0, 1_000), &limit(10.0, 10.0)),
            1_500
        );
    }
}

//! Per-cache statistics without a contended counter on the hot path.
//!
//! Counters live in cache-line-padded shards, so two threads doing lookups never write the same
//! line. The first `EXCLUSIVE` threads of the process to touch any cache each own a shard
//! outright and bump it with a relaxed load and store (no locked instruction on the hot path);
//! later threads share the remaining shards round-robin and use atomic adds. A snapshot sums the
//! shards.

use crossbeam_utils::CachePadded;

use crate::sync::{AtomicU64, Ordering};

/// A snapshot of a cache's counters. `lookups == hits + misses`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CacheStats {
    /// Lookups performed.
    pub lookups: u64,
    /// Lookups that returned a value.
    pub hits: u64,
    /// Lookups that returned nothing.
    pub misses: u64,
    /// Values stored (new entries and updates of an existing tag).
    pub inserts: u64,
    /// Inserts refused because an invalidation covering the tag completed after the caller's
    /// token was taken, or because every way of the set was busy.
    pub refused: u64,
    /// Live entries displaced by an insert (capacity evictions).
    pub evictions: u64,
    /// Entries dropped by invalidation: removed by a selective scan, or — after an O(1)
    /// global/domain invalidation, which leaves dead entries in place — counted when an insert
    /// reclaims their way.
    pub invalidated: u64,
    /// Invalidation requests processed.
    pub invalidations: u64,
}

impl CacheStats {
    /// Hits as a fraction of lookups (0 when there were none).
    pub fn hit_rate(&self) -> f64 {
        if self.lookups == 0 {
            0.0
        } else {
            self.hits as f64 / self.lookups as f64
        }
    }
}

impl core::fmt::Display for CacheStats {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "lookups {} hits {} misses {} ({:.1}% hit) inserts {} refused {} evictions {} \
             invalidated {} invalidations {}",
            self.lookups,
            self.hits,
            self.misses,
            self.hit_rate() * 100.0,
            self.inserts,
            self.refused,
            self.evictions,
            self.invalidated,
            self.invalidations
        )
    }
}

#[derive(Clone, Copy)]
pub(crate) enum Counter {
    Hits = 0,
    Misses = 1,
    Inserts = 2,
    Refused = 3,
    Evictions = 4,
    Invalidated = 5,
    Invalidations = 6,
}

const COUNTERS: usize = 7;

/// Shards owned by one thread each.
#[cfg(not(loom))]
const EXCLUSIVE: usize = 16;
/// Shards shared (with atomic adds) by the threads that came later (so that the shard count
/// is a power of two and a shard index is masked, not bounds-checked).
#[cfg(not(loom))]
const SHARED: usize = 16;
// Loom explores every interleaving of every atomic; one shared shard keeps the models small.
#[cfg(loom)]
const EXCLUSIVE: usize = 0;
#[cfg(loom)]
const SHARED: usize = 1;
const SHARDS: usize = EXCLUSIVE + SHARED;
const _: () = assert!(SHARDS.is_power_of_two());

struct Shard {
    counters: [AtomicU64; COUNTERS],
}

pub(crate) struct Stats {
    shards: [CachePadded<Shard>; SHARDS],
}

/// Which exclusive shards a live thread owns (bit per shard).
#[cfg(not(loom))]
static CLAIMED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
#[cfg(not(loom))]
static NEXT_SHARED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// A thread's claim on a shard; an exclusive shard is handed back when the thread exits, so
/// short-lived threads do not use up the exclusive shards.
#[cfg(not(loom))]
struct ShardClaim {
    index: usize,
}

#[cfg(not(loom))]
impl ShardClaim {
    fn claim() -> Self {
        use std::sync::atomic::Ordering as StdOrdering;
        let all = (1u32 << EXCLUSIVE) - 1;
        let mut cur = CLAIMED.load(StdOrdering::Relaxed);
        // Each failed CAS means another thread claimed or released a shard; give up after a few
        // and share instead, which is always correct.
        for _ in 0..=EXCLUSIVE {
            let free = !cur & all;
            if free == 0 {
                break;
            }
            let bit = free.trailing_zeros();
            // Acquire: the previous owner's last counter stores (before its Release below)
            // happen before this thread's first load, so no update is lost.
            match CLAIMED.compare_exchange(
                cur,
                cur | (1 << bit),
                StdOrdering::AcqRel,
                StdOrdering::Relaxed,
            ) {
                Ok(_) => {
                    return Self {
                        index: bit as usize,
                    };
                }
                Err(now) => cur = now,
            }
        }
        Self {
            index: EXCLUSIVE + NEXT_SHARED.fetch_add(1, StdOrdering::Relaxed) % SHARED,
        }
    }
}

#[cfg(not(loom))]
impl Drop for ShardClaim {
    fn drop(&mut self) {
        // From now on this thread (in the destructors of other thread-locals) counts in a
        // shared shard, with atomic adds: the exclusive shard may go to another thread.
        let _ = SHARD_INDEX.try_with(|i| i.set(EXCLUSIVE));
        if self.index < EXCLUSIVE {
            CLAIMED.fetch_and(!(1u32 << self.index), std::sync::atomic::Ordering::Release);
        }
    }
}

/// Sentinel of [`SHARD_INDEX`]: this thread has not claimed a shard yet.
#[cfg(not(loom))]
const UNCLAIMED: usize = usize::MAX;

#[cfg(not(loom))]
thread_local! {
    /// This thread's shard, once claimed. Const-initialised and without a destructor, so
    /// reading it is one thread-local load: the hit path of every lookup goes through it.
    static SHARD_INDEX: core::cell::Cell<usize> = const { core::cell::Cell::new(UNCLAIMED) };
    /// The claim itself, whose destructor hands an exclusive shard back when the thread exits.
    static CLAIM: ShardClaim = ShardClaim::claim();
}

/// This thread's shard; below `EXCLUSIVE` it is this thread's alone while it lives.
#[cfg(not(loom))]
#[inline]
fn shard_index() -> usize {
    let i = SHARD_INDEX.with(core::cell::Cell::get);
    if i != UNCLAIMED { i } else { claim_shard() }
}

/// The first count of a thread: claims its shard and remembers it.
#[cfg(not(loom))]
#[cold]
#[inline(never)]
fn claim_shard() -> usize {
    // During thread teardown (a cache used from another thread-local's destructor) the claim
    // may be gone: fall back to the first shared shard.
    let i = CLAIM.try_with(|c| c.index).unwrap_or(EXCLUSIVE);
    SHARD_INDEX.with(|s| s.set(i));
    i
}

#[cfg(loom)]
fn shard_index() -> usize {
    0
}

#[cfg(not(loom))]
#[inline]
fn is_exclusive(shard: usize) -> bool {
    shard < EXCLUSIVE
}

#[cfg(loom)]
fn is_exclusive(_shard: usize) -> bool {
    false
}

impl Stats {
    pub(crate) fn new() -> Self {
        Self {
            shards: core::array::from_fn(|_| {
                CachePadded::new(Shard {
                    counters: core::array::from_fn(|_| AtomicU64::new(0)),
                })
            }),
        }
    }

    #[inline]
    pub(crate) fn add(&self, counter: Counter, n: u64) {
        if n != 0 {
            let shard = shard_index();
            let c = &self.shards[shard & (SHARDS - 1)].counters[counter as usize];
            if is_exclusive(shard) {
                // Only this thread writes this shard: a plain relaxed read-modify-write cannot
                // lose an update, and readers see some recent value.
                c.store(c.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
            } else {
                c.fetch_add(n, Ordering::Relaxed);
            }
        }
    }

    pub(crate) fn snapshot(&self) -> CacheStats {
        let mut sum = [0u64; COUNTERS];
        for shard in self.shards.iter() {
            for (s, c) in sum.iter_mut().zip(shard.counters.iter()) {
                *s = s.wrapping_add(c.load(Ordering::Relaxed));
            }
        }
        CacheStats {
            lookups: sum[Counter::Hits as usize].wrapping_add(sum[Counter::Misses as usize]),
            hits: sum[Counter::Hits as usize],
            misses: sum[Counter::Misses as usize],
            inserts: sum[Counter::Inserts as usize],
            refused: sum[Counter::Refused as usize],
            evictions: sum[Counter::Evictions as usize],
            invalidated: sum[Counter::Invalidated as usize],
            invalidations: sum[Counter::Invalidations as usize],
        }
    }
}

/// One event counter for a hot path shared by many threads, in the same padded shards as the
/// caches' statistics: a thread that owns an exclusive shard bumps it without a locked
/// instruction, later threads share the rest with atomic adds. [`ShardedCounter::get`] sums the
/// shards (a recent value, exact once the adding threads are quiescent).
pub struct ShardedCounter {
    shards: [CachePadded<AtomicU64>; SHARDS],
}

impl ShardedCounter {
    /// A counter at zero.
    pub fn new() -> Self {
        Self {
            shards: core::array::from_fn(|_| CachePadded::new(AtomicU64::new(0))),
        }
    }

    /// Adds `n` to the calling thread's shard.
    #[inline]
    pub fn add(&self, n: u64) {
        let shard = shard_index();
        let c = &self.shards[shard & (SHARDS - 1)];
        if is_exclusive(shard) {
            // Only this thread writes this shard (see `Stats::add`).
            c.store(c.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
        } else {
            c.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Adds one.
    #[inline]
    pub fn incr(&self) {
        self.add(1);
    }

    /// The sum over all shards.
    pub fn get(&self) -> u64 {
        self.shards
            .iter()
            .fold(0u64, |s, c| s.wrapping_add(c.load(Ordering::Relaxed)))
    }
}

impl Default for ShardedCounter {
    fn default() -> Self {
        Self::new()
    }
}

impl core::fmt::Debug for ShardedCounter {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_tuple("ShardedCounter").field(&self.get()).finish()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn shards_sum_across_threads() {
        let stats = Stats::new();
        // More threads than exclusive shards, so shared shards are exercised too; three waves,
        // so later threads reuse the exclusive shards earlier ones handed back.
        const WAVES: u64 = 3;
        for _ in 0..WAVES {
            std::thread::scope(|s| {
                for _ in 0..(EXCLUSIVE + 2 * SHARED) {
                    s.spawn(|| {
                        for _ in 0..1000 {
                            stats.add(Counter::Hits, 1);
                        }
                        stats.add(Counter::Misses, 3);
                    });
                }
            });
        }
        let snap = stats.snapshot();
        let threads = WAVES * (EXCLUSIVE + 2 * SHARED) as u64;
        assert_eq!(snap.hits, 1000 * threads);
        assert_eq!(snap.misses, 3 * threads);
        assert_eq!(snap.lookups, 1003 * threads);
        assert!((snap.hit_rate() - 1000.0 / 1003.0).abs() < 1e-12);
    }

    #[test]
    fn sharded_counter_sums_across_threads() {
        let c = ShardedCounter::new();
        assert_eq!(c.get(), 0);
        std::thread::scope(|s| {
            for t in 0..(EXCLUSIVE + 2 * SHARED) as u64 {
                let c = &c;
                s.spawn(move || {
                    for _ in 0..500 {
                        c.incr();
                    }
                    c.add(t);
                });
            }
        });
        let threads = (EXCLUSIVE + 2 * SHARED) as u64;
        assert_eq!(c.get(), 500 * threads + threads * (threads - 1) / 2);
    }
}

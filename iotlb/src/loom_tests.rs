//! Loom models of lookup vs insert vs invalidate, the invalidation race included.
//!
//! Run with `RUSTFLAGS="--cfg loom" cargo test -p iotlb --release --lib loom` (scripts/test does).
//! The caches are tiny (one set, one or two ways, one domain slot) so loom can explore every
//! interleaving, bounded to a few preemptions per execution.
//!
//! The race is modelled as it happens in the emulator: the guest updates a page-table entry (the
//! `pte` atomic) and then submits an invalidation; a device thread concurrently takes a token,
//! reads the entry (its walk) and inserts what it read. Once the invalidation has returned, no
//! lookup may return the old entry.

use loom::sync::Arc;
use loom::sync::atomic::{AtomicU64, Ordering};
use loom::thread;

use crate::*;

const OLD: u64 = 1;
const NEW: u64 = 2;

fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut b = loom::model::Builder::new();
    b.preemption_bound = Some(3);
    b.check(f);
}

fn tiny<V: Value>(ways: usize) -> Cache<V> {
    Cache::new(CacheConfig::new(1, ways).with_domain_slots(1)).unwrap()
}

/// Walker inserts what it read from `pte`; guest writes NEW then invalidates with `inv`; after
/// the invalidation returns (and after both threads finish) a lookup yields nothing or NEW.
fn race(tag: Tag, inv: Invalidation, ways: usize, preload: bool) {
    model(move || {
        let cache: Arc<Cache<u64>> = Arc::new(tiny(ways));
        let pte = Arc::new(AtomicU64::new(OLD));
        if preload {
            // An old entry already cached before the race.
            let t = cache.token();
            assert!(cache.insert(t, &tag, &OLD).unwrap().is_stored());
        }
        let walker = {
            let (cache, pte) = (cache.clone(), pte.clone());
            thread::spawn(move || {
                let token = cache.token();
                let v = pte.load(Ordering::Acquire);
                let _ = cache.insert(token, &tag, &v).unwrap();
            })
        };
        pte.store(NEW, Ordering::Release);
        cache.invalidate(&inv).unwrap();
        let seen = cache.lookup(&tag);
        assert!(
            seen.is_none() || seen == Some(NEW),
            "stale {seen:?} after {inv:?}"
        );
        walker.join().unwrap();
        let seen = cache.lookup(&tag);
        assert!(
            seen.is_none() || seen == Some(NEW),
            "stale {seen:?} at the end"
        );
    });
}

#[test]
fn loom_race_page_range_invalidation() {
    let tag = Tag::translation(1, None, 4, 0);
    let r = PageRange::vtd(1, PasidMatch::Any, 4 << 12, 0, false).unwrap();
    race(tag, Invalidation::Range(r), 1, false);
}

#[test]
fn loom_race_page_range_invalidation_with_old_entry() {
    let tag = Tag::translation(1, Some(3), 4, 0);
    let r = PageRange::vtd(1, PasidMatch::Exactly(Some(3)), 0, 3, false).unwrap();
    race(tag, Invalidation::Range(r), 2, true);
}

#[test]
fn loom_race_domain_invalidation() {
    race(
        Tag::translation(1, None, 4, 0),
        Invalidation::Domain(1),
        1,
        true,
    );
}

#[test]
fn loom_race_global_invalidation() {
    race(
        Tag::translation(1, None, 4, 0),
        Invalidation::Global,
        1,
        true,
    );
}

#[test]
fn loom_race_domain_pasid_invalidation() {
    race(
        Tag::pasid_entry(2, 9),
        Invalidation::DomainPasid {
            domain: 2,
            pasid: Some(9),
        },
        1,
        false,
    );
}

#[test]
fn loom_race_source_invalidation() {
    race(
        Tag::context(0x19, 1),
        Invalidation::Source(SourceSelector::exact(0x19)),
        1,
        true,
    );
}

/// Lookups never return a torn value while inserts of different tags fight over one way.
#[test]
fn loom_lookup_vs_insert_no_torn_values() {
    model(|| {
        let cache: Arc<Cache<[u64; 2]>> = Arc::new(tiny(1));
        let a = Tag::translation(0, None, 1, 0);
        let b = Tag::translation(0, None, 2, 0);
        let writer = {
            let cache = cache.clone();
            thread::spawn(move || {
                let t = cache.token();
                let _ = cache.insert(t, &a, &[1, !1]).unwrap();
                let _ = cache.insert(t, &b, &[2, !2]).unwrap();
            })
        };
        for (tag, want) in [(a, 1u64), (b, 2)] {
            if let Some([x, y]) = cache.lookup(&tag) {
                assert_eq!(x, want);
                assert_eq!(y, !want);
            }
        }
        writer.join().unwrap();
        // The last insert stands: nothing invalidated it.
        assert_eq!(cache.lookup(&b), Some([2, !2]));
    });
}

/// A walker inserts into a full one-way set while the main thread inserts another tag into
/// the same way and then runs a range invalidation of the walker's tag: neither the eviction
/// fight nor the scan may let the walker resurrect the invalidated old value.
#[test]
fn loom_insert_fight_and_an_invalidation() {
    model(|| {
        let cache: Arc<Cache<u64>> = Arc::new(tiny(1));
        let a = Tag::translation(1, None, 1, 0);
        let b = Tag::translation(1, None, 2, 0);
        let pte = Arc::new(AtomicU64::new(OLD));
        let walker = {
            let (cache, pte) = (cache.clone(), pte.clone());
            thread::spawn(move || {
                let t = cache.token();
                let v = pte.load(Ordering::Acquire);
                let _ = cache.insert(t, &a, &v).unwrap();
            })
        };
        let t = cache.token();
        let _ = cache.insert(t, &b, &7).unwrap();
        pte.store(NEW, Ordering::Release);
        let r = PageRange::vtd(1, PasidMatch::Any, 1 << 12, 0, true).unwrap();
        cache.invalidate(&Invalidation::Range(r)).unwrap();
        let seen = cache.lookup(&a);
        assert!(seen.is_none() || seen == Some(NEW), "stale {seen:?}");
        walker.join().unwrap();
        let seen = cache.lookup(&a);
        assert!(
            seen.is_none() || seen == Some(NEW),
            "stale {seen:?} at the end"
        );
        let seen_b = cache.lookup(&b);
        assert!(seen_b.is_none() || seen_b == Some(7));
    });
}

/// A third thread that learns of the invalidation's completion through its own
/// synchronization (a flag the guest sets after `invalidate` returns) must not see the stale
/// entry either: the generation marks and the scan's kills are published to it.
fn race_observed_elsewhere(inv: Invalidation) {
    let mut b = loom::model::Builder::new();
    b.preemption_bound = Some(2);
    b.check(move || {
        let cache: Arc<Cache<u64>> = Arc::new(tiny(1));
        let tag = Tag::translation(1, None, 4, 0);
        let t = cache.token();
        assert!(cache.insert(t, &tag, &OLD).unwrap().is_stored());
        let pte = Arc::new(AtomicU64::new(OLD));
        let done = Arc::new(AtomicU64::new(0));
        let walker = {
            let (cache, pte) = (cache.clone(), pte.clone());
            thread::spawn(move || {
                let token = cache.token();
                let v = pte.load(Ordering::Acquire);
                let _ = cache.insert(token, &tag, &v).unwrap();
            })
        };
        let guest = {
            let (cache, pte, done) = (cache.clone(), pte.clone(), done.clone());
            thread::spawn(move || {
                pte.store(NEW, Ordering::Release);
                cache.invalidate(&inv).unwrap();
                done.store(1, Ordering::Release);
            })
        };
        if done.load(Ordering::Acquire) == 1 {
            let seen = cache.lookup(&tag);
            assert!(seen.is_none() || seen == Some(NEW), "stale {seen:?}");
        }
        walker.join().unwrap();
        guest.join().unwrap();
    });
}

#[test]
fn loom_race_observed_by_a_third_thread_domain() {
    race_observed_elsewhere(Invalidation::Domain(1));
}

#[test]
fn loom_race_observed_by_a_third_thread_range() {
    let r = PageRange::vtd(1, PasidMatch::Exactly(None), 4 << 12, 0, false).unwrap();
    race_observed_elsewhere(Invalidation::Range(r));
}

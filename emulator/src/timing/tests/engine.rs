//! The engine: walker slots, coalescing, invalidation stalls, percentiles, determinism.

use proptest::prelude::*;

use super::*;
use crate::request::{AccessKind, DmaRequest};
use crate::timing::{Cost, CostModel, Engine, FrontCache, PortUse, Preset};
use crate::trace::Trace;

/// Parameters with `walkers` slots and the others from the VT-d preset.
fn params(walkers: u32) -> TimingParams {
    TimingParams {
        walkers,
        ..Preset::VtdServer.params()
    }
}

fn iotlb(cycles: u32) -> PortUse {
    PortUse {
        cache: FrontCache::Iotlb,
        cycles,
    }
}

/// A miss: link 10 each way, a 2-cycle IOTLB lookup, `walk` walker cycles, 5 others.
fn miss(walk: u64) -> Cost {
    Cost::synthetic((10, 10), &[iotlb(2)], walk, 5)
}

fn hit() -> Cost {
    Cost::synthetic((10, 10), &[iotlb(2)], 0, 0)
}

#[test]
fn with_one_walker_two_concurrent_misses_serialize() {
    let mut e = Engine::new(&params(1), 0);
    let c = miss(500);
    let a = e.translate(0, 0, 1, &c);
    let b = e.translate(0, 1, 2, &c);
    assert_eq!(a.queued_cycles, 0);
    assert_eq!(a.done, c.total);
    assert_eq!(b.queued_cycles, 500, "{b:?}");
    assert_eq!(b.done, a.done + 500);
    let r = e.report();
    assert_eq!(r.walks, 2);
    assert_eq!(r.queueing.queued_translations, 1);
    // The second entered the link one cycle later and waited the rest for the walker.
    assert_eq!(r.queueing.link_wait_cycles, 1);
    assert_eq!(r.queueing.walker_wait_cycles, 499);
}

#[test]
fn with_two_walkers_they_overlap() {
    let mut e = Engine::new(&params(2), 0);
    let c = miss(500);
    let a = e.translate(0, 0, 1, &c);
    let b = e.translate(0, 1, 2, &c);
    // Only the link's one transaction per cycle separates them.
    assert_eq!(b.queued_cycles, 1);
    assert_eq!(b.done, a.done + 1);
    assert_eq!(e.report().queueing.walker_wait_cycles, 0);
}

#[test]
fn a_second_request_to_a_page_in_flight_waits_for_the_walk_and_takes_no_walker() {
    let mut e = Engine::new(&params(1), 0);
    let w = miss(500);
    let a = e.translate(0, 0, 7, &w);
    // The function model ran the first request's walk already: the second hits.
    let b = e.translate(3, 1, 7, &hit());
    assert!(b.coalesced);
    assert!(
        b.done >= a.done - 10,
        "{b:?} before the walk of {a:?} ended"
    );
    // Its answer leaves after the walk's end, over the link back.
    assert_eq!(b.done, a.done + 1);
    // Another missing request to the same page also waits, and walks nothing.
    let c = e.translate(4, 1, 7, &w);
    assert!(c.coalesced);
    // A third page's walk is not held up by the coalesced requests: it takes the one slot
    // right after the first walk.
    let d = e.translate(5, 2, 8, &w);
    assert!(!d.coalesced);
    assert_eq!(d.done, a.done + 500);
    let r = e.report();
    assert_eq!((r.walks, r.coalesced), (2, 2));
    // Once the walk is over, a hit on the page does not wait.
    let late = e.translate(10_000, 0, 7, &hit());
    assert!(!late.coalesced);
    assert_eq!(late.done, 10_000 + hit().total);
}

#[test]
fn an_invalidation_stalls_translations_that_reach_the_unit_while_it_runs() {
    let mut p = params(4);
    p.queue.per_descriptor_cycles = 100;
    p.queue.per_wait_cycles = 50;
    let mut e = Engine::new(&p, 0);
    let before = e.translate(0, 0, 1, &hit());
    let inv = e.invalidate(100, 2, 1);
    assert_eq!((inv.start, inv.done, inv.queued_cycles), (100, 350, 0));
    // Reaches the unit at 110 + 10 = 120, inside [100, 350): waits for 350.
    let during = e.translate(110, 0, 2, &hit());
    assert_eq!(during.start, 350);
    assert_eq!(during.queued_cycles, 350 - 120);
    assert_eq!(during.done, 350 + 2 + 10);
    // A second invalidation queues behind the first; a translation in its window waits for it.
    let inv2 = e.invalidate(200, 1, 0);
    assert_eq!((inv2.start, inv2.done, inv2.queued_cycles), (350, 450, 150));
    let later = e.translate(400, 0, 3, &hit());
    assert_eq!(later.start, 450);
    // After both, nothing stalls.
    let after = e.translate(1000, 0, 4, &hit());
    assert_eq!(after.queued_cycles, 0);
    assert_eq!(before.queued_cycles, 0);
    let r = e.report();
    assert_eq!(r.invalidations, 2);
    assert_eq!(r.queueing.invalidation_stalls, 2);
    assert_eq!(r.queueing.invalidation_busy_cycles, 350);
    assert_eq!(r.queueing.invalidation_queued_cycles, 150);
}

#[test]
fn ports_limit_hits_per_cycle() {
    // One IOTLB port, 3-cycle lookups: back-to-back hits leave 3 cycles apart.
    let mut p = params(1);
    p.iotlb.ports = 1;
    let mut e = Engine::new(&p, 0);
    let c = Cost::synthetic((0, 0), &[iotlb(3)], 0, 0);
    let done: Vec<u64> = (0..4).map(|i| e.translate(0, 0, i, &c).done).collect();
    assert_eq!(done, [3, 6, 9, 12]);
    assert_eq!(e.report().queueing.port_wait_cycles, 3 + 6 + 9);
    // Three ports: three lookups at once.
    p.iotlb.ports = 3;
    let mut e = Engine::new(&p, 0);
    let done: Vec<u64> = (0..4).map(|i| e.translate(0, 0, i, &c).done).collect();
    assert_eq!(done, [3, 3, 3, 6]);
}

#[test]
fn a_hit_is_not_held_behind_a_slow_walks_return() {
    // The walk's answer takes the link back late; a later hit's earlier answer passes it.
    let mut e = Engine::new(&params(1), 0);
    let slow = e.translate(0, 0, 1, &miss(10_000));
    let fast = e.translate(1, 1, 2, &hit());
    assert!(fast.done < slow.done);
    assert_eq!(fast.done, 1 + hit().total);
}

#[test]
fn percentiles_and_throughput_on_a_known_distribution() {
    // One stream, requests far apart with latencies 1..=100: p50 50, p99 99, max 100.
    let mut e = Engine::new(&params(1), 0);
    for (i, l) in (1..=100u64).rev().enumerate() {
        let c = Cost::synthetic((0, 0), &[], 0, l);
        let done = e.translate(i as u64 * 1000, 5, i as u64, &c).done;
        assert_eq!(done, i as u64 * 1000 + l);
    }
    let r = e.report();
    assert_eq!(r.streams.len(), 1);
    let s = r.streams[0].latency;
    assert_eq!((s.count, s.min, s.p50, s.p99, s.max), (100, 1, 50, 99, 100));
    assert_eq!(r.latency, s);
    // The span runs from the first arrival to the last completion: 99_000 + 1.
    assert_eq!(r.span_cycles, 99_001);
    assert!((r.translations_per_cycle - 100.0 / 99_001.0).abs() < 1e-12);
    assert!((r.translations_per_second - r.translations_per_cycle * 2e9).abs() < 1e-3);
    let cdf = e.latency_cdf(Some(5));
    assert_eq!(cdf.first(), Some(&(1, 0.01)));
    assert_eq!(cdf.last(), Some(&(100, 1.0)));
    assert!(e.latency_cdf(Some(6)).is_empty());
}

#[test]
fn walker_occupancy_over_time() {
    let mut e = Engine::new(&params(2), 0);
    for i in 0..4 {
        e.translate(0, 0, i, &miss(1000));
    }
    let r = e.report();
    assert_eq!(r.walker_busy_cycles, 4000);
    let peak = r
        .occupancy
        .iter()
        .map(|s| s.mean_busy_walkers)
        .fold(0.0, f64::max);
    assert!((peak - 2.0).abs() < 1e-9, "{peak}");
    assert!(r.walker_utilization > 0.9 && r.walker_utilization <= 1.0);
}

#[test]
fn out_of_order_arrivals_are_counted_and_served_in_order() {
    let mut e = Engine::new(&params(1), 0);
    e.translate(100, 0, 1, &hit());
    let c = e.translate(50, 0, 2, &hit());
    assert!(c.start >= 100);
    assert_eq!(e.report().reordered_arrivals, 1);
}

/// A stream of real VT-d translations (a legacy unit, pages revisited) through the cost model
/// and the engine: the same seed gives the same report.
fn run(seed: u64, requests: &[(u64, u64)]) -> crate::timing::EngineReport {
    let p = Preset::VtdServer.params();
    let pages: Vec<u64> = (0..32).map(|i| 0x1000_0000 + i * 0x1000).collect();
    let unit = legacy_unit(&p, &pages);
    let mut e = Engine::new(&p, seed);
    let mut model = e.cost_model();
    let mut trace = Trace::new();
    let mut t = 0;
    for &(gap, page) in requests {
        t += gap;
        let iova = pages[(page % 32) as usize];
        let req = DmaRequest::new(SID, iova, 8, AccessKind::Read);
        unit.translate_with(&req, &mut trace).unwrap();
        let c = model.cost(&trace);
        e.translate(t, (page % 3) as u32, iova >> 12, &c);
    }
    e.report()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn the_engine_is_deterministic_for_a_seed(
        seed in any::<u64>(),
        requests in prop::collection::vec((0u64..200, any::<u64>()), 1..200),
    ) {
        prop_assert_eq!(run(seed, &requests), run(seed, &requests));
    }
}

proptest! {
    /// Against the costs: a request that did not coalesce is done exactly its unloaded cost
    /// plus its waits after arriving; one that coalesced is done no earlier than the walk it
    /// waited for; walkers are never oversubscribed. (No link back, so that a walk's end is
    /// its request's completion.)
    #[test]
    fn completions_add_up(
        walkers in 1u32..4,
        requests in prop::collection::vec(
            (0u64..50, 0u64..6, prop::sample::select(vec![0u64, 0, 0, 200, 900])),
            1..150,
        ),
    ) {
        let mut e = Engine::new(&params(walkers), 0);
        let mut t = 0;
        let mut walk_end = std::collections::HashMap::new();
        for (gap, page, walk) in requests {
            t += gap;
            let c = Cost::synthetic((10, 0), &[iotlb(2)], walk, if walk > 0 { 5 } else { 0 });
            let done = e.translate(t, page as u32, page, &c);
            prop_assert!(done.start >= t);
            if done.coalesced {
                let end = walk_end[&page];
                prop_assert!(done.done >= end, "{:?} before {}", done, end);
            } else {
                prop_assert_eq!(done.done, t + c.total + done.queued_cycles);
                if walk > 0 {
                    walk_end.insert(page, done.done);
                }
            }
        }
        let r = e.report();
        for s in &r.occupancy {
            prop_assert!(s.mean_busy_walkers <= f64::from(walkers) + 1e-9);
        }
        prop_assert_eq!(r.translations, r.streams.iter().map(|s| s.latency.count).sum::<u64>());
    }
}

#[test]
fn the_cost_model_and_the_engine_take_a_hit_without_allocating_state() {
    // Not a timing assertion: a hit-heavy run keeps one stream entry and no in-flight walks
    // beyond the first.
    let p = Preset::VtdServer.params();
    let unit = legacy_unit(&p, &[0x1000_0000]);
    let mut model = CostModel::new(&p);
    let mut e = Engine::new(&p, 1);
    let mut trace = Trace::new();
    let req = DmaRequest::new(SID, 0x1000_0000, 8, AccessKind::Read);
    for i in 0..10_000 {
        unit.translate_with(&req, &mut trace).unwrap();
        let c = model.cost(&trace);
        e.translate(i * 4, 0, 0x1000_0000 >> 12, &c);
    }
    let r = e.report();
    assert_eq!(r.walks, 1);
    assert_eq!(r.streams.len(), 1);
    assert_eq!(r.translations, 10_000);
}

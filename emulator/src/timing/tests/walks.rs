//! The cost of real walks: the VT-d unit's nested walks against Bhargava et al.'s reference
//! counts and the parameters' sum, and the `gem5-smmuv3` preset against gem5's own sums.

use std::collections::HashSet;

use super::*;
use crate::request::{AccessKind, DmaRequest};
use crate::timing::{CacheParams, Cost, CostModel, FrontCache, LlcParams, Preset, Replacement};
use crate::trace::{CacheId, MemTarget, Stage, Trace, TraceEvent};

/// Parameters whose every latency is a distinct prime, so that a cycle charged to the wrong
/// event changes the sum.
fn primes() -> TimingParams {
    let mut p = Preset::VtdServer.params();
    let base = p.iotlb;
    let cache = |lookup, fill| CacheParams {
        lookup_cycles: lookup,
        fill_cycles: fill,
        ..base
    };
    p.iotlb = cache(2, 3);
    p.context = cache(5, 7);
    p.pasid = cache(11, 13);
    p.pwc = cache(17, 19);
    p.walk.start_cycles = 23;
    p.walk.per_read_cycles = 29;
    p.link.to_iommu_cycles = 31;
    p.link.from_iommu_cycles = 37;
    p.miss_path.to_walker_cycles = 41;
    p.miss_path.from_walker_cycles = 43;
    p.memory.dram_cycles = 101;
    p.memory.llc = None;
    p
}

fn translate(unit: &Unit, iova: u64, pasid: Option<u32>) -> Trace {
    let mut req = DmaRequest::new(SID, iova | 0x18, 8, AccessKind::Read);
    req.pasid = pasid;
    let mut trace = Trace::new();
    unit.translate_with(&req, &mut trace).unwrap();
    assert!(!trace.overflowed());
    trace
}

/// Two pages with different top-level indices: no first-stage level's cached entry of one
/// covers the other.
fn two_pages(levels: u8) -> [u64; 2] {
    let first = 0x7000_0000u64;
    [first, first + (1u64 << (12 + 9 * (u32::from(levels) - 1)))]
}

/// Warms `unit`'s context and PASID caches and nothing else: a request whose non-canonical
/// address faults before any walk.
fn warm_structure_caches(unit: &Unit) {
    let mut req = DmaRequest::new(SID, 0x4000_0000_0000_0000, 8, AccessKind::Read);
    req.pasid = Some(PASID);
    let mut trace = Trace::new();
    assert!(unit.translate_with(&req, &mut trace).is_err());
    assert_eq!(trace.lookup(CacheId::Iotlb), None);
}

/// An uncached nested walk: the context and PASID caches are warm, the IOTLB and both stages'
/// paging-structure caches miss (cold), and the accessed flags along the path are already set
/// (an earlier unit walked it), so the walk only reads. Returns the trace of the walk.
fn uncached_nested_walk(params: &TimingParams, levels: u8) -> Trace {
    let [first, second] = two_pages(levels);
    let tables = nested_tables(levels, &[first, second]);
    translate(&tables.unit(params), second, Some(PASID));
    let unit = tables.unit(params);
    warm_structure_caches(&unit);
    let trace = translate(&unit, second, Some(PASID));
    assert_eq!(trace.lookup(CacheId::Iotlb), Some(false));
    assert_eq!(trace.lookup(CacheId::Context), Some(true));
    assert_eq!(trace.lookup(CacheId::Pasid), Some(true));
    trace
}

/// The cost of an uncached `n`-over-`n` nested walk from the parameters alone: the IOTLB, the
/// context and PASID caches and the `n - 1` first-stage paging-structure-cache levels looked
/// up, and the `n - 1` second-stage levels before each of the `n + 1` second-stage walks;
/// the first-stage levels, the [`ss_fills`] second-stage entries and the IOTLB filled; one
/// walk of `n*n + 2n` table reads.
fn nested_formula(p: &TimingParams, n: u64) -> u64 {
    let link = u64::from(p.link.to_iommu_cycles + p.link.from_iommu_cycles);
    let miss = u64::from(p.miss_path.to_walker_cycles + p.miss_path.from_walker_cycles);
    let lookups = u64::from(p.iotlb.lookup_cycles + p.context.lookup_cycles)
        + u64::from(p.pasid.lookup_cycles)
        + (n - 1) * u64::from(p.pwc.lookup_cycles)
        + ss_lookups(n) * u64::from(p.pwc.lookup_cycles);
    let fills =
        (n - 1 + ss_fills(n)) * u64::from(p.pwc.fill_cycles) + u64::from(p.iotlb.fill_cycles);
    let reads = n * n + 2 * n;
    let per_read = u64::from(p.memory.dram_cycles + p.walk.per_read_cycles);
    link + miss + lookups + fills + u64::from(p.walk.start_cycles) + reads * per_read
}

/// Second-stage paging-structure-cache lookups of a cold `n`-over-`n` nested walk: levels 2 to
/// `n`, all missing, before each of the `n + 1` second-stage walks.
fn ss_lookups(n: u64) -> u64 {
    (n + 1) * (n - 1)
}

/// The distinct second-stage non-leaf entries a walk of [`nested_tables`] fills: every guest
/// address is below 1 GiB, so one entry per level above 2; at level 2, one for the 2 MiB
/// holding the first-stage tables and one for the output's.
fn ss_fills(n: u64) -> u64 {
    (n - 2) + 2
}

fn check_uncached_nested(levels: u8, refs: u32) {
    let p = primes();
    let trace = uncached_nested_walk(&p, levels);
    let c = CostModel::new(&p).cost(&trace);
    assert_eq!(c.refs, refs, "{:?}", trace.events());
    assert_eq!(c.table_refs, refs);
    assert_eq!(c.ad_refs, 0);
    assert_eq!(c.total, nested_formula(&p, levels.into()), "{c:?}");
    assert_eq!(c.total, c.components());
    // Every reference and the walk's lookups and fills hold the walker.
    let n = u64::from(levels);
    let walk = (n - 1 + ss_lookups(n)) * u64::from(p.pwc.lookup_cycles)
        + (n - 1 + ss_fills(n)) * u64::from(p.pwc.fill_cycles)
        + u64::from(p.walk.start_cycles)
        + u64::from(refs) * u64::from(p.memory.dram_cycles + p.walk.per_read_cycles);
    assert_eq!(c.walk_cycles, walk);
    // n first-stage entries; n second-stage entries for each of them and for the output.
    let n16 = u16::from(levels);
    for level in 1..=levels {
        assert_eq!(c.walk_reads_at(Stage::First, level), 1);
        assert_eq!(c.walk_reads_at(Stage::Second, level), n16 + 1);
    }
}

/// Bhargava et al. (ASPLOS 2008): an uncached two-dimensional walk of a 4-level guest table
/// over a 4-level host table makes 24 references.
#[test]
fn an_uncached_4_over_4_nested_walk_makes_24_references_and_costs_their_sum() {
    check_uncached_nested(4, 24);
}

/// ... and 5-level over 5-level makes 35.
#[test]
fn an_uncached_5_over_5_nested_walk_makes_35_references_and_costs_their_sum() {
    check_uncached_nested(5, 35);
}

/// The first walk of a path sets each first-stage entry's accessed flag: one locked update
/// per level, charged as an A/D update beside the 24 reads.
#[test]
fn accessed_flag_updates_are_charged_beside_the_reads() {
    let p = primes();
    let [first, second] = two_pages(4);
    let unit = nested_tables(4, &[first, second]).unit(&p);
    warm_structure_caches(&unit);
    let trace = translate(&unit, second, Some(PASID));
    let c = CostModel::new(&p).cost(&trace);
    assert_eq!((c.refs, c.table_refs, c.ad_refs), (28, 24, 4));
    assert_eq!(c.ad_updates, 4 * u64::from(p.memory.dram_cycles));
    assert_eq!(c.total, nested_formula(&p, 4) + c.ad_updates);
    assert_eq!(c.walk_cycles - c.ad_updates, {
        let plain = CostModel::new(&p).cost(&uncached_nested_walk(&p, 4));
        plain.walk_cycles
    });
}

/// With an LLC larger than the tables, a line read again in the same walk costs the LLC hit:
/// the second-stage walks of neighbouring first-stage tables share their upper entries.
#[test]
fn the_llc_makes_rereads_of_table_lines_cheaper() {
    let mut p = primes();
    p.memory.llc = Some(LlcParams {
        size_bytes: 1 << 20,
        ways: 16,
        line_bytes: 64,
        hit_cycles: 7,
        replacement: Replacement::Lru,
    });
    let trace = uncached_nested_walk(&p, 4);
    let lines: HashSet<u64> = trace
        .events()
        .iter()
        .filter_map(|e| match e {
            TraceEvent::MemRead { addr, .. } => Some(addr >> 6),
            _ => None,
        })
        .collect();
    let distinct = lines.len() as u64;
    assert!(distinct < 24, "{distinct} distinct lines");
    let mut model = CostModel::new(&p);
    let c = model.cost(&trace);
    assert_eq!(u64::from(c.llc_hits), 24 - distinct);
    let saved = (24 - distinct) * u64::from(p.memory.dram_cycles - 7);
    assert_eq!(c.total, nested_formula(&p, 4) - saved);
    // The same walk again: every line is in the LLC now.
    let again = model.cost(&trace);
    assert_eq!(again.llc_hits, 24);
    assert_eq!(
        again.total,
        nested_formula(&p, 4) - 24 * u64::from(p.memory.dram_cycles - 7)
    );
}

/// gem5's SMMUv3 path, summed from its parameters (src/dev/arm/SMMUv3.py) and the delays of
/// src/dev/arm/smmu_v3_transl.cc, for a read of a stage-1-only 4-level 4 KiB translation with
/// a config-cache hit. `m` is the memory system's latency of one entry read.
mod gem5 {
    /// Device port beat (numResponderBeats = 1 for a read) + micro TLB miss (utlb_lat) + main
    /// TLB (tlb_lat), then on a hit completeTransaction's request port beat.
    pub const IOTLB_HIT: u64 = 1 + 1 + 3 + 1;
    /// Before the walk on a main-TLB miss: the three above, ifc_smmu_lat, cfg_lat.
    const TO_WALK: u64 = 1 + 1 + 3 + 8 + 3;
    /// After it: smmu_ifc_lat and the request port beat.
    const FROM_WALK: u64 = 8 + 1;
    /// A walk-cache hit on the level-2 entry (walk_lat once), then walkStage1And2 from the
    /// leaf level: its start cycle and one read followed by one cycle.
    pub fn walk_cache_hit(m: u64) -> u64 {
        TO_WALK + 4 + 1 + (m + 1) + FROM_WALK
    }
    /// Walk-cache lookups at levels 2, 1 and 0 (wc_s1_levels = 7 skips level 3), all missing,
    /// then a walk of four levels.
    pub fn full_walk(m: u64) -> u64 {
        TO_WALK + 3 * 4 + 1 + 4 * (m + 1) + FROM_WALK
    }
    /// What holds gem5's ptw slot (ptwSem): the walk-cache lookups and the walk.
    pub fn full_walk_ptw(m: u64) -> u64 {
        3 * 4 + 1 + 4 * (m + 1)
    }
}

#[test]
fn the_gem5_preset_costs_what_gem5s_parameters_sum_to() {
    let p = Preset::Gem5Smmuv3.params();
    let m = u64::from(p.memory.dram_cycles);
    let a = 0x1000_0000u64;
    // In the same leaf table as `a`; under another top-level entry.
    let (near, far) = (a + 0x1000, a + (1 << 39));
    let unit = legacy_unit(&p, &[a, near, far]);
    let mut model = CostModel::new(&p);
    let mut cost = |iova| -> Cost { model.cost(&translate(&unit, iova, None)) };
    // Warm the context cache and the paging-structure caches along `a`'s path.
    cost(a);
    let hit = cost(a);
    assert_eq!(hit.iotlb_hit, Some(true));
    assert_eq!(hit.total, gem5::IOTLB_HIT);
    assert_eq!(hit.walk_cycles, 0);
    let near = cost(near);
    assert_eq!(near.table_refs, 1);
    assert_eq!(near.total, gem5::walk_cache_hit(m));
    let far = cost(far);
    assert_eq!(far.table_refs, 4);
    assert_eq!(far.total, gem5::full_walk(m));
    assert_eq!(far.walk_cycles, gem5::full_walk_ptw(m));
    // gem5's order: the main TLB's port, then the config cache's.
    let order: Vec<FrontCache> = far.front().iter().map(|u| u.cache).collect();
    assert_eq!(order, [FrontCache::Iotlb, FrontCache::Context]);
}

#[test]
fn an_ats_request_pays_the_round_trip_and_a_device_tlb_hit_stays_in_the_device() {
    let p = primes();
    let unit = legacy_unit(&p, &[0x1000_0000]);
    let trace = translate(&unit, 0x1000_0000, None);
    let mut model = CostModel::new(&p);
    let plain = model.cost(&trace);
    let ats = model.cost_ats(&trace);
    let link = u64::from(p.link.to_iommu_cycles + p.link.from_iommu_cycles);
    assert_eq!(
        ats.total,
        plain.total - link + u64::from(p.ats.round_trip_cycles)
    );
    assert_eq!(
        u64::from(ats.link_to_iommu + ats.link_from_iommu),
        u64::from(p.ats.round_trip_cycles)
    );
    let d = model.device_tlb_hit();
    assert_eq!(d.total, u64::from(p.ats.devtlb_hit_cycles));
    assert!(!d.needs_walker() && d.front().is_empty());
}

/// The legacy walk's trace names its structure reads: the root and context entries on the
/// first translation, charged as structure reads, and not to the walker.
#[test]
fn structure_reads_are_charged_apart_from_the_walk() {
    let p = primes();
    let unit = legacy_unit(&p, &[0x1000_0000]);
    let trace = translate(&unit, 0x1000_0000, None);
    let structures = trace
        .events()
        .iter()
        .filter(|e| {
            matches!(
                e,
                TraceEvent::MemRead {
                    target: MemTarget::RootEntry | MemTarget::ContextEntry,
                    ..
                }
            )
        })
        .count() as u64;
    assert_eq!(structures, 2);
    let c = CostModel::new(&p).cost(&trace);
    assert_eq!(c.structure_reads, 2 * u64::from(p.memory.dram_cycles));
    assert_eq!(c.refs, 2 + 4);
    assert_eq!(c.total, c.components());
    assert!(c.walk_cycles < c.total - c.structure_reads);
}

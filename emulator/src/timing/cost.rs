//! The cost of one translation: its trace turned into cycles, with the breakdown by component
//! (the formula is in the [module notes](super)).

use serde::Serialize;

use super::llc::Llc;
use super::params::TimingParams;
use crate::trace::{CacheId, MemTarget, Stage, Trace, TraceEvent};

/// The highest paging level counted in [`Cost::walk_reads_by_level`] (AMD-Vi host tables have
/// six levels); deeper levels are counted at this one.
pub const MAX_LEVEL: usize = 6;

/// The caches every translation consults before any walk: the engine models their ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FrontCache {
    /// The IOTLB.
    #[default]
    Iotlb,
    /// The context (DTE) cache.
    Context,
    /// The PASID (GCR3) cache.
    Pasid,
}

/// One front cache's lookups in a translation: the cycles they hold one of its ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct PortUse {
    /// The cache.
    pub cache: FrontCache,
    /// Cycles of its lookups (one port held for all of them).
    pub cycles: u32,
}

/// The cycles of one translation and where they went. Every cycle is counted in exactly one
/// of `link`, `lookups`, `fills`, `structure_reads`, `walk_reads`, `walk_steps`,
/// `ad_updates` and `device`, whose sum is `total`; `walk_cycles` is the part of `total` that
/// occupies a walker slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Cost {
    /// All cycles of the translation, unloaded (no queueing).
    pub total: u64,
    /// The link both ways, and the miss path both ways when the IOTLB missed.
    pub link: u64,
    /// Cache lookups.
    pub lookups: u64,
    /// Cache fills.
    pub fills: u64,
    /// Reads of root, context, PASID-directory, PASID, DTE and GCR3 entries.
    pub structure_reads: u64,
    /// Memory cycles of page-table reads.
    pub walk_reads: u64,
    /// The walker's own cycles: walk starts and per-entry decoding.
    pub walk_steps: u64,
    /// Locked A/D updates (memory writes).
    pub ad_updates: u64,
    /// Cycles spent in the device (a device-TLB hit).
    pub device: u64,
    /// The cycles that hold a walker slot: paging-structure-cache lookups and fills, walk
    /// starts, page-table reads and A/D updates, and anything else recorded inside a walk.
    pub walk_cycles: u64,
    /// Memory references (reads and writes).
    pub refs: u32,
    /// Of which page-table reads.
    pub table_refs: u32,
    /// Of which A/D updates.
    pub ad_refs: u32,
    /// References the LLC model served.
    pub llc_hits: u32,
    /// Walks begun.
    pub walks: u8,
    /// Whether a walk ended in a fault.
    pub walk_faulted: bool,
    /// The outcome of the first IOTLB lookup, if there was one.
    pub iotlb_hit: Option<bool>,
    /// Page-table reads by stage (`[First, Second]`) and level (1 = leaf table).
    pub walk_reads_by_level: [[u16; MAX_LEVEL + 1]; 2],
    /// The link's way to the IOMMU (part of `link`).
    pub link_to_iommu: u32,
    /// The link's way back (part of `link`).
    pub link_from_iommu: u32,
    front: [PortUse; 3],
    front_len: u8,
}

impl Cost {
    /// The front caches' port uses, in the order of their first lookup.
    pub fn front(&self) -> &[PortUse] {
        &self.front[..usize::from(self.front_len)]
    }

    /// Adds `cycles` of `cache` lookups to the front (merged with earlier ones of the cache).
    #[inline(always)]
    pub fn add_front(&mut self, cache: FrontCache, cycles: u32) {
        let n = usize::from(self.front_len);
        if let Some(u) = self.front[..n].iter_mut().find(|u| u.cache == cache) {
            u.cycles = u.cycles.saturating_add(cycles);
        } else if n < self.front.len() {
            self.front[n] = PortUse { cache, cycles };
            self.front_len += 1;
        }
    }

    /// Page-table reads of `stage` at `level`.
    pub fn walk_reads_at(&self, stage: Stage, level: u8) -> u16 {
        self.walk_reads_by_level[stage_index(stage)][usize::from(level).min(MAX_LEVEL)]
    }

    /// Whether the translation needs a walker slot.
    #[inline]
    pub fn needs_walker(&self) -> bool {
        self.walk_cycles > 0
    }

    /// The sum of the components (equals `total`).
    pub fn components(&self) -> u64 {
        self.link
            + self.lookups
            + self.fills
            + self.structure_reads
            + self.walk_reads
            + self.walk_steps
            + self.ad_updates
            + self.device
    }

    /// A cost made of its engine-visible parts only, for synthetic workloads and tests: the
    /// link each way, `front` lookups, `walk` walker cycles (counted as page-table reads) and
    /// `other` cycles that queue for nothing (counted as structure reads).
    pub fn synthetic(link: (u32, u32), front: &[PortUse], walk: u64, other: u64) -> Self {
        let mut c = Self {
            link_to_iommu: link.0,
            link_from_iommu: link.1,
            link: u64::from(link.0) + u64::from(link.1),
            walk_cycles: walk,
            walk_reads: walk,
            structure_reads: other,
            walks: u8::from(walk > 0),
            ..Self::default()
        };
        for u in front {
            c.add_front(u.cache, u.cycles);
            c.lookups += u64::from(u.cycles);
        }
        c.total = c.components();
        c
    }
}

/// A component of [`Cost`] (each charge also adds to the total, so that the total is never
/// re-read from the components on the hot path).
#[derive(Clone, Copy)]
enum Part {
    Link,
    Lookups,
    Fills,
    StructureReads,
    WalkReads,
    WalkSteps,
    AdUpdates,
}

impl Cost {
    #[inline(always)]
    fn add(&mut self, part: Part, cycles: u64) {
        self.total += cycles;
        let f = match part {
            Part::Link => &mut self.link,
            Part::Lookups => &mut self.lookups,
            Part::Fills => &mut self.fills,
            Part::StructureReads => &mut self.structure_reads,
            Part::WalkReads => &mut self.walk_reads,
            Part::WalkSteps => &mut self.walk_steps,
            Part::AdUpdates => &mut self.ad_updates,
        };
        *f += cycles;
    }
}

fn stage_index(stage: Stage) -> usize {
    match stage {
        Stage::First => 0,
        Stage::Second => 1,
    }
}

/// Index of a cache in the model's tables.
const IOTLB: usize = 0;
const CONTEXT: usize = 1;
const PASID: usize = 2;
const PWC: usize = 3;

#[inline]
fn front_cache(slot: usize) -> FrontCache {
    match slot {
        IOTLB => FrontCache::Iotlb,
        CONTEXT => FrontCache::Context,
        _ => FrontCache::Pasid,
    }
}

#[inline]
fn slot(cache: CacheId) -> usize {
    match cache {
        CacheId::Iotlb => IOTLB,
        CacheId::Context => CONTEXT,
        CacheId::Pasid => PASID,
        CacheId::PagingStructure { .. } => PWC,
    }
}

/// Turns traces into [`Cost`]s. It keeps the LLC model's state between translations, so
/// costs depend on the order traces are given; the same traces in the same order with the same
/// seed give the same costs.
#[derive(Debug, Clone)]
pub struct CostModel {
    lookup: [u32; 4],
    fill: [u32; 4],
    dram: u32,
    llc_hit: u32,
    llc: Option<Llc>,
    walk_start: u32,
    per_read: u32,
    link: (u32, u32),
    /// Both ways of the miss path (two `u32`s: their sum may not fit one).
    miss_path: u64,
    ats_round_trip: u32,
    devtlb_hit: u32,
    iotlb_first: bool,
}

/// Per-trace bookkeeping of [`CostModel::charge`].
#[derive(Default)]
struct Walking {
    in_walk: bool,
    iotlb_seen: bool,
    /// Context and PASID lookup cycles held back until the IOTLB's outcome (`iotlb_first`).
    deferred: [u64; 2],
}

impl CostModel {
    /// A model of `params` (validated by the caller), its LLC empty, seeded with 0.
    pub fn new(params: &TimingParams) -> Self {
        Self::with_seed(params, 0)
    }

    /// A model whose LLC draws its random replacement choices from `seed`.
    pub fn with_seed(params: &TimingParams, seed: u64) -> Self {
        let caches = [&params.iotlb, &params.context, &params.pasid, &params.pwc];
        Self {
            lookup: caches.map(|c| c.lookup_cycles),
            fill: caches.map(|c| c.fill_cycles),
            dram: params.memory.dram_cycles,
            llc_hit: params.memory.llc.map_or(0, |l| l.hit_cycles),
            llc: params.memory.llc.as_ref().map(|l| Llc::new(l, seed)),
            walk_start: params.walk.start_cycles,
            per_read: params.walk.per_read_cycles,
            link: (params.link.to_iommu_cycles, params.link.from_iommu_cycles),
            miss_path: u64::from(params.miss_path.to_walker_cycles)
                + u64::from(params.miss_path.from_walker_cycles),
            ats_round_trip: params.ats.round_trip_cycles,
            devtlb_hit: params.ats.devtlb_hit_cycles,
            iotlb_first: params.iotlb_first,
        }
    }

    /// The cost of the untranslated DMA whose translation recorded `trace`.
    #[inline]
    pub fn cost(&mut self, trace: &Trace) -> Cost {
        let mut c = Cost::default();
        self.cost_over(trace, self.link, &mut c);
        c
    }

    /// The cost of an ATS translation request that recorded `trace`: the request's round trip
    /// (half each way, the odd cycle on the way back) instead of the link.
    pub fn cost_ats(&mut self, trace: &Trace) -> Cost {
        let to = self.ats_round_trip / 2;
        let mut c = Cost::default();
        self.cost_over(trace, (to, self.ats_round_trip - to), &mut c);
        c
    }

    /// The cost of a device-TLB hit: it never reaches the IOMMU.
    pub fn device_tlb_hit(&self) -> Cost {
        let mut c = Cost {
            device: self.devtlb_hit.into(),
            ..Cost::default()
        };
        c.total = c.components();
        c
    }

    /// [`Self::cost`] written into `out` (which it overwrites): no copy of the result, for
    /// the hot loop of a simulator.
    pub fn cost_into(&mut self, trace: &Trace, out: &mut Cost) {
        self.cost_over(trace, self.link, out);
    }

    #[inline]
    fn cost_over(&mut self, trace: &Trace, link: (u32, u32), c: &mut Cost) {
        let links = u64::from(link.0) + u64::from(link.1);
        *c = Cost {
            link_to_iommu: link.0,
            link_from_iommu: link.1,
            link: links,
            total: links,
            ..Cost::default()
        };
        let mut w = Walking::default();
        for e in trace.events() {
            self.charge(*e, c, &mut w);
        }
        // No IOTLB lookup (a fault or pass-through before it): the held-back lookups happened.
        if !w.iotlb_seen {
            self.release_deferred(c, &mut w);
        }
    }

    #[inline(always)]
    fn charge(&mut self, e: TraceEvent, c: &mut Cost, w: &mut Walking) {
        match e {
            TraceEvent::CacheLookup { cache, hit } => self.lookup(slot(cache), hit, c, w),
            TraceEvent::CacheFill { cache } => {
                let s = slot(cache);
                let cy = u64::from(self.fill[s]);
                c.add(Part::Fills, cy);
                if s == PWC || w.in_walk {
                    c.walk_cycles += cy;
                }
            }
            TraceEvent::WalkStart { .. } => {
                w.in_walk = true;
                c.walks = c.walks.saturating_add(1);
                c.add(Part::WalkSteps, u64::from(self.walk_start));
                c.walk_cycles += u64::from(self.walk_start);
            }
            TraceEvent::WalkEnd { faulted } => {
                w.in_walk = false;
                c.walk_faulted |= faulted;
            }
            TraceEvent::MemRead { target, addr } => {
                let m = self.memory(addr, c);
                c.refs += 1;
                if let MemTarget::PageTable { stage, level } = target {
                    c.table_refs += 1;
                    let n = &mut c.walk_reads_by_level[stage_index(stage)]
                        [usize::from(level).min(MAX_LEVEL)];
                    *n = n.saturating_add(1);
                    c.add(Part::WalkReads, m);
                    c.add(Part::WalkSteps, u64::from(self.per_read));
                    c.walk_cycles += m + u64::from(self.per_read);
                } else {
                    c.add(Part::StructureReads, m);
                    if w.in_walk {
                        c.walk_cycles += m;
                    }
                }
            }
            TraceEvent::MemWrite { addr, .. } => {
                let m = self.memory(addr, c);
                c.refs += 1;
                c.ad_refs += 1;
                c.add(Part::AdUpdates, m);
                c.walk_cycles += m;
            }
        }
    }

    #[inline(always)]
    fn lookup(&mut self, s: usize, hit: bool, c: &mut Cost, w: &mut Walking) {
        let cy = self.lookup[s];
        let walker = s == PWC || w.in_walk;
        w.in_walk = walker;
        if walker {
            c.walk_cycles += u64::from(cy);
        } else if s != IOTLB && self.iotlb_first && !w.iotlb_seen {
            // Held back until the IOTLB's outcome.
            w.deferred[s - CONTEXT] += u64::from(cy);
            return;
        } else {
            c.add_front(front_cache(s), cy);
        }
        c.add(Part::Lookups, u64::from(cy));
        if s == IOTLB && !w.iotlb_seen {
            w.iotlb_seen = true;
            c.iotlb_hit = Some(hit);
            if !hit {
                c.add(Part::Link, self.miss_path);
                self.release_deferred(c, w);
            }
        }
    }

    /// Charges the context and PASID lookups held back for the IOTLB's outcome.
    #[inline(always)]
    fn release_deferred(&self, c: &mut Cost, w: &mut Walking) {
        for (i, f) in [FrontCache::Context, FrontCache::Pasid]
            .into_iter()
            .enumerate()
        {
            let cy = std::mem::take(&mut w.deferred[i]);
            if cy > 0 {
                c.add(Part::Lookups, cy);
                // A port use is a `u32` of cycles, saturating as `add_front` does.
                c.add_front(f, u32::try_from(cy).unwrap_or(u32::MAX));
            }
        }
    }

    /// The cycles of one memory access at `addr`.
    #[inline(always)]
    fn memory(&mut self, addr: u64, c: &mut Cost) -> u64 {
        if let Some(llc) = &mut self.llc
            && llc.access(addr)
        {
            c.llc_hits += 1;
            return self.llc_hit.into();
        }
        self.dram.into()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::timing::{LlcParams, Preset, Replacement};
    use crate::trace::WalkKind;

    fn cache_id() -> impl Strategy<Value = CacheId> {
        prop_oneof![
            Just(CacheId::Iotlb),
            Just(CacheId::Context),
            Just(CacheId::Pasid),
            (2u8..=5).prop_map(|level| CacheId::PagingStructure {
                stage: Stage::First,
                level
            }),
        ]
    }

    fn event() -> impl Strategy<Value = TraceEvent> {
        let target = prop_oneof![
            Just(MemTarget::RootEntry),
            Just(MemTarget::ContextEntry),
            Just(MemTarget::PasidEntry),
            Just(MemTarget::DeviceTableEntry),
            (1u8..=3).prop_map(|level| MemTarget::Gcr3Entry { level }),
            (any::<bool>(), 1u8..=6).prop_map(|(s, level)| MemTarget::PageTable {
                stage: if s { Stage::First } else { Stage::Second },
                level
            }),
        ];
        prop_oneof![
            (cache_id(), any::<bool>())
                .prop_map(|(cache, hit)| TraceEvent::CacheLookup { cache, hit }),
            cache_id().prop_map(|cache| TraceEvent::CacheFill { cache }),
            Just(TraceEvent::WalkStart {
                kind: WalkKind::Nested,
                level: 4
            }),
            any::<bool>().prop_map(|faulted| TraceEvent::WalkEnd { faulted }),
            (target.clone(), 0u64..1 << 20).prop_map(|(target, a)| TraceEvent::MemRead {
                target,
                addr: a * 8
            }),
            (target, 0u64..1 << 20).prop_map(|(target, a)| TraceEvent::MemWrite {
                target,
                addr: a * 8
            }),
        ]
    }

    /// The module notes' table, written out event by event.
    fn reference(p: &TimingParams, events: &[TraceEvent]) -> u64 {
        let c = |id: CacheId| match id {
            CacheId::Iotlb => p.iotlb,
            CacheId::Context => p.context,
            CacheId::Pasid => p.pasid,
            _ => p.pwc,
        };
        let first_iotlb = events.iter().position(|e| {
            matches!(
                e,
                TraceEvent::CacheLookup {
                    cache: CacheId::Iotlb,
                    ..
                }
            )
        });
        let iotlb_hit =
            first_iotlb.map(|i| matches!(events[i], TraceEvent::CacheLookup { hit: true, .. }));
        let dram = u64::from(p.memory.dram_cycles);
        let mut total = u64::from(p.link.to_iommu_cycles + p.link.from_iommu_cycles);
        if iotlb_hit == Some(false) {
            total +=
                u64::from(p.miss_path.to_walker_cycles) + u64::from(p.miss_path.from_walker_cycles);
        }
        for (i, e) in events.iter().enumerate() {
            total += match *e {
                TraceEvent::CacheLookup { cache, .. } => {
                    let held = p.iotlb_first
                        && matches!(cache, CacheId::Context | CacheId::Pasid)
                        && first_iotlb.is_some_and(|f| i < f)
                        && iotlb_hit == Some(true)
                        // Inside a walk a lookup is the walker's, never held back.
                        && !events[..i].iter().rev().find_map(|e| match e {
                            TraceEvent::WalkStart { .. } => Some(true),
                            TraceEvent::WalkEnd { .. } => Some(false),
                            TraceEvent::CacheLookup { cache: CacheId::PagingStructure { .. }, .. } => Some(true),
                            _ => None,
                        }).unwrap_or(false);
                    if held {
                        0
                    } else {
                        u64::from(c(cache).lookup_cycles)
                    }
                }
                TraceEvent::CacheFill { cache } => u64::from(c(cache).fill_cycles),
                TraceEvent::WalkStart { .. } => u64::from(p.walk.start_cycles),
                TraceEvent::WalkEnd { .. } => 0,
                TraceEvent::MemRead {
                    target: MemTarget::PageTable { .. },
                    ..
                } => dram + u64::from(p.walk.per_read_cycles),
                TraceEvent::MemRead { .. } | TraceEvent::MemWrite { .. } => dram,
            };
        }
        total
    }

    fn trace(events: &[TraceEvent]) -> Trace {
        let mut t = Trace::new();
        for e in events {
            t.push(*e);
        }
        t
    }

    proptest! {
        /// Without an LLC, the cost is the table's sum; the parts the engine places are
        /// disjoint pieces of the total.
        #[test]
        fn the_cost_is_the_sum_of_its_events(
            events in prop::collection::vec(event(), 0..80),
            iotlb_first in any::<bool>(),
        ) {
            let mut p = Preset::VtdServer.params();
            p.memory.llc = None;
            p.iotlb_first = iotlb_first;
            p.miss_path.to_walker_cycles = 3;
            p.miss_path.from_walker_cycles = 5;
            let c = CostModel::new(&p).cost(&trace(&events));
            prop_assert_eq!(c.total, reference(&p, &events));
            prop_assert_eq!(c.total, c.components());
            let front: u64 = c.front().iter().map(|u| u64::from(u.cycles)).sum();
            let links = u64::from(c.link_to_iommu + c.link_from_iommu);
            prop_assert!(links + front + c.walk_cycles <= c.total);
            let mem = events.iter().filter(|e| matches!(e, TraceEvent::MemRead { .. } | TraceEvent::MemWrite { .. })).count();
            prop_assert_eq!(c.refs as usize, mem);
            let by_level: u32 = c.walk_reads_by_level.iter().flatten().map(|&n| u32::from(n)).sum();
            prop_assert_eq!(by_level, c.table_refs);
        }

        /// With an LLC, every access costs a hit or a DRAM access: the total lies between the
        /// all-hit and all-DRAM sums, at the count of hits the model reports.
        #[test]
        fn the_llc_only_replaces_dram_cycles_by_hit_cycles(
            events in prop::collection::vec(event(), 0..80),
            seed in any::<u64>(),
        ) {
            let mut p = Preset::VtdServer.params();
            let llc = p.memory.llc.unwrap();
            let plain = {
                let mut q = p.clone();
                q.memory.llc = None;
                CostModel::new(&q).cost(&trace(&events))
            };
            p.memory.llc = Some(LlcParams { replacement: Replacement::Random, ..llc });
            let c = CostModel::with_seed(&p, seed).cost(&trace(&events));
            let saved = u64::from(c.llc_hits) * u64::from(p.memory.dram_cycles - llc.hit_cycles);
            prop_assert_eq!(c.total + saved, plain.total);
        }
    }

    /// Cycle counts near `u32::MAX` (which a parameter file may give) add up without an
    /// overflow: the miss path's two ways, and the lookups held back for the IOTLB
    /// (`iotlb_first`) over a full trace (found by the `timing_params` fuzz target).
    #[test]
    fn the_largest_cycle_counts_add_up_without_overflow() {
        let mut p = Preset::VtdServer.params();
        p.memory.llc = None;
        p.miss_path.to_walker_cycles = u32::MAX;
        p.miss_path.from_walker_cycles = u32::MAX;
        p.context.lookup_cycles = u32::MAX;
        p.iotlb_first = true;
        let mut t = Trace::new();
        for _ in 0..crate::trace::TRACE_CAPACITY - 1 {
            t.cache(CacheId::Context, false);
        }
        t.cache(CacheId::Iotlb, false);
        let c = CostModel::new(&p).cost(&t);
        let held = (crate::trace::TRACE_CAPACITY as u64 - 1) * u64::from(u32::MAX);
        assert_eq!(c.lookups, held + u64::from(p.iotlb.lookup_cycles));
        assert_eq!(c.link, 40 + 2 * u64::from(u32::MAX));
        assert_eq!(c.total, c.components());
        assert_eq!(c.total, reference(&p, t.events()));
        assert_eq!(
            c.front()[1],
            PortUse {
                cache: FrontCache::Context,
                cycles: u32::MAX
            },
            "a port use saturates"
        );
    }

    #[test]
    fn an_iotlb_hit_costs_the_link_and_the_lookups() {
        let p = Preset::VtdServer.params();
        let mut t = Trace::new();
        t.cache(CacheId::Context, true);
        t.cache(CacheId::Iotlb, true);
        let c = CostModel::new(&p).cost(&t);
        let link = u64::from(p.link.to_iommu_cycles + p.link.from_iommu_cycles);
        assert_eq!(
            c.total,
            link + u64::from(p.context.lookup_cycles + p.iotlb.lookup_cycles)
        );
        assert_eq!(c.iotlb_hit, Some(true));
        assert!(!c.needs_walker());
        let order: Vec<FrontCache> = c.front().iter().map(|u| u.cache).collect();
        assert_eq!(order, [FrontCache::Context, FrontCache::Iotlb]);
        // The same with gem5's order: the context lookup is not needed for the hit.
        let g = Preset::Gem5Smmuv3.params();
        let c = CostModel::new(&g).cost(&t);
        assert_eq!(c.total, 2 + 3 + 1);
        assert_eq!(
            c.front(),
            [PortUse {
                cache: FrontCache::Iotlb,
                cycles: 3
            }]
        );
    }
}

//! The timing model: the cycles a translation costs, and a discrete-event engine that places
//! many concurrent translations on the IOMMU's shared resources.
//!
//! Function and timing stay separate (DESIGN.md): a unit translates and returns a typed
//! [`Trace`](crate::trace::Trace); this module reads only that trace and the parameters, and
//! never changes a translation.
//!
//! - [`params`]: [`TimingParams`], every value with its unit, loaded from TOML; the units'
//!   cache geometry comes from the same parameters ([`TimingParams::apply_to_vtd`],
//!   [`TimingParams::apply_to_amdvi`]).
//! - [`preset`]: [`Preset`]s, each a TOML file under `presets/` holding its values and their
//!   sources: `gem5-smmuv3` (gem5's SMMUv3 defaults), `vtd-server`, `amdvi-server`.
//! - [`cost`]: [`CostModel::cost`], one trace to one [`Cost`].
//! - [`engine`]: [`Engine`], many costs placed in time: walker slots, ports, links,
//!   coalescing, invalidation stalls; [`EngineReport`] with latency percentiles, occupancy
//!   over time, throughput and queueing.
//!
//! # The cost of one translation
//! Each trace event is charged once, with `M(a)` the cycles of a memory access at address `a`:
//! `memory.llc.hit_cycles` when the LLC model holds `a`'s line, else `memory.dram_cycles`
//! (without an LLC, always `dram_cycles`; the LLC is filled by every access, reads and A/D
//! updates alike).
//!
//! | event | component | cycles |
//! |---|---|---|
//! | (every translation) | `link` | `link.to_iommu_cycles + link.from_iommu_cycles` |
//! | first IOTLB lookup, a miss | `link` | `miss_path.to_walker_cycles + miss_path.from_walker_cycles` |
//! | lookup of cache `c` | `lookups` | `c.lookup_cycles` (hit or miss) |
//! | fill of cache `c` | `fills` | `c.fill_cycles` |
//! | walk start | `walk_steps` | `walk.start_cycles` |
//! | page-table read at `a` | `walk_reads`, `walk_steps` | `M(a)`, `walk.per_read_cycles` |
//! | root, context, PASID-directory, PASID, DTE or GCR3 read at `a` | `structure_reads` | `M(a)` |
//! | A/D update (locked write) at `a` | `ad_updates` | `M(a)` |
//!
//! `total = link + lookups + fills + structure_reads + walk_reads + walk_steps + ad_updates`
//! (+ `device` for a device-TLB hit, [`CostModel::device_tlb_hit`], which is
//! `ats.devtlb_hit_cycles` and nothing else). An ATS translation request
//! ([`CostModel::cost_ats`]) pays `ats.round_trip_cycles` instead of the link's two ways.
//! With `iotlb_first` (gem5's order), context and PASID lookups recorded before the IOTLB
//! lookup are charged only if the IOTLB missed (a hit needs no configuration); the structure
//! reads the function model made are charged either way.
//!
//! `walk_cycles`, the part of `total` that occupies a walker slot, counts the
//! paging-structure-cache lookups and fills, walk starts, page-table reads with their decode
//! cycles, A/D updates, and whatever else the trace records between a walk's start and its end.
//! `refs` counts memory references (reads and writes); `table_refs` the page-table reads, also
//! by stage and level ([`Cost::walk_reads_at`]).
//!
//! An uncached nested walk of an `n`-level first stage over an `m`-level second stage reads
//! `n*m + n + m` table entries (Bhargava et al., ASPLOS 2008: 24 for 4 over 4, 35 for 5 over
//! 5), so with the context and PASID caches hit and no LLC its cost is
//!
//! ```text
//! link + lookups(IOTLB, context, PASID, n-1 PWC levels) + fills(n-1 PWC levels, IOTLB)
//!      + walk.start_cycles + (n*m + n + m) * (dram_cycles + walk.per_read_cycles)
//! ```
//!
//! (`link` including the miss path); the tests check it against the VT-d unit's own walks.
//!
//! # Speed
//! [`CostModel::cost`] is one pass over the trace's events with no allocation;
//! [`Engine::translate`] for a hit is a few comparisons, a port scan and a histogram increment:
//! no allocation once the stream and its latency bucket were seen.
//!
//! # Randomness
//! Only the LLC model's `random` replacement draws random numbers (splitmix64 from the seed of
//! [`CostModel::with_seed`] or [`Engine::cost_model`]); the engine itself is deterministic.

pub mod cost;
pub mod engine;
mod llc;
pub mod params;
pub mod preset;
pub mod stats;
#[cfg(test)]
mod tests;

pub use cost::{Cost, CostModel, FrontCache, PortUse};
pub use engine::{Completion, Engine, EngineReport, QueueingReport, StreamReport};
pub use params::{
    AtsParams, CacheParams, LinkParams, LlcParams, MemoryParams, MissPathParams, ParamError,
    QueueParams, Replacement, TimingError, TimingParams, UnitDeviation, WalkParams,
};
pub use preset::{Preset, UnknownPreset};
pub use stats::{Histogram, LatencySummary, OccupancySample};

//! One simulation: a workload's (or a trace file's) requests translated by the platform's unit
//! in arrival order, each trace priced by the cost model and placed in time by the engine.
//!
//! The function model runs requests in arrival order; the engine then decides when each
//! finishes, given walker slots, ports, links and walks in flight. A request the function model
//! answered from the IOTLB because an earlier request to its page walked still waits, in time,
//! for that walk (the engine's coalescing).

use std::collections::BTreeMap;
use std::time::Instant;

use serde::Serialize;

use super::platform::{Platform, PlatformError, SimModel};
use super::trace_file::TraceRecord;
use super::workload::{Generator, Region, SimRequest, WorkloadKind};
use crate::timing::{Engine, EngineReport, TimingParams, UnitDeviation};
use crate::trace::Trace;
use crate::{AmdViConfig, VtdConfig};

/// What to simulate.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// The unit.
    pub model: SimModel,
    /// The timing parameters (the units' cache geometry comes from them too).
    pub params: TimingParams,
    /// Bytes per page the domains map with (4 KiB or 2 MiB).
    pub page_size: u64,
    /// The engine's and the workload's seed.
    pub seed: u64,
    /// Bytes per PCIe request (a DMA is split into requests of at most this, within 4 KiB).
    pub tlp_bytes: u64,
    /// Translations to simulate (a workload runs until then; a trace, at most that many).
    pub translations: u64,
    /// Ring workloads: every how many packets a device's driver unmaps and maps the buffer
    /// again (0: never), its invalidations run through the unit's queue and the engine's.
    pub remap_every: u64,
    /// How many translations a device may have outstanding (its PCIe tags, or its address
    /// translation's request slots): a request waits for the one this many before it to
    /// complete, so latency costs throughput. 0: no limit (the offered load arrives as
    /// offered).
    pub inflight: usize,
}

/// Where the requests come from.
#[derive(Debug, Clone)]
pub enum Source {
    /// A built-in workload.
    Workload(WorkloadKind),
    /// A trace file's records.
    Trace(Vec<TraceRecord>),
}

/// What a simulation did.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    /// The unit.
    pub model: &'static str,
    /// The workload, or `replay`.
    pub workload: String,
    /// Bytes per page mapped.
    pub page_size: u64,
    /// IOTLB entries.
    pub iotlb_entries: u64,
    /// Walker slots.
    pub walkers: u32,
    /// Translations simulated.
    pub translations: u64,
    /// Of which faulted.
    pub faults: u64,
    /// Buffers the drivers unmapped and mapped again.
    pub remaps: u64,
    /// IOTLB hits over first IOTLB lookups.
    pub iotlb_hit_rate: f64,
    /// Memory references per translation.
    pub refs_per_translation: f64,
    /// Page-table references per walk.
    pub table_refs_per_walk: f64,
    /// Mean unloaded cost, in cycles.
    pub mean_cost_cycles: f64,
    /// Where the unloaded cycles went, in total over the run.
    pub cost_breakdown: BTreeMap<&'static str, u64>,
    /// The engine's report: latency percentiles, walker occupancy, throughput, queueing.
    pub engine: EngineReport,
    /// Translations per second of wall-clock time (the simulator's own speed).
    pub sim_translations_per_second: f64,
    /// How the units' caches differ from the parameters (geometry the unit cannot take).
    pub deviations: Vec<String>,
    /// The latency CDF (cycles, fraction), for plots.
    #[serde(skip)]
    pub cdf: Vec<(u64, f64)>,
}

/// Why a simulation could not run.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The platform could not be built.
    #[error(transparent)]
    Platform(#[from] PlatformError),
    /// Bad parameters.
    #[error("timing parameters: {0}")]
    Params(String),
    /// Bad workload knobs.
    #[error("workload: {0}")]
    Workload(String),
    /// An empty trace.
    #[error("the trace holds no requests")]
    EmptyTrace,
}

/// How many translations pass between progress calls.
pub const PROGRESS_EVERY: u64 = 1 << 16;

/// Runs `source` as `cfg` says; `progress` is called with the translations done so far every
/// [`PROGRESS_EVERY`] translations.
pub fn run(
    cfg: &RunConfig,
    source: &Source,
    mut progress: impl FnMut(u64),
) -> Result<RunReport, SimError> {
    cfg.params
        .validate()
        .map_err(|e| SimError::Params(e.to_string()))?;
    let (mut vtd, mut amd) = (VtdConfig::default(), AmdViConfig::default());
    let mut deviations: Vec<UnitDeviation> = match cfg.model {
        SimModel::Amdvi => cfg.params.apply_to_amdvi(&mut amd),
        _ => cfg.params.apply_to_vtd(&mut vtd),
    };
    deviations.dedup();
    let mut platform = Platform::new(cfg.model, &vtd, &amd)?;
    let clock = cfg.params.clock_ghz;
    // The requests, and the regions their domains map.
    let (name, regions, requests): (String, Vec<Region>, Box<dyn Iterator<Item = SimRequest>>) =
        match source {
            Source::Workload(kind) => {
                kind.validate().map_err(SimError::Workload)?;
                (
                    kind.name().to_string(),
                    kind.regions(cfg.page_size),
                    Box::new(
                        Generator::new(kind, clock, cfg.tlp_bytes, cfg.seed)
                            .with_remap_every(cfg.remap_every)
                            .take(cfg.translations as usize),
                    ),
                )
            }
            Source::Trace(records) => {
                if records.is_empty() {
                    return Err(SimError::EmptyTrace);
                }
                let (regions, reqs) =
                    replay_requests(records, cfg.page_size, clock, cfg.translations);
                ("replay".to_string(), regions, Box::new(reqs.into_iter()))
            }
        };
    platform.map(&regions, cfg.page_size)?;
    let mut engine = Engine::new(&cfg.params, cfg.seed);
    let mut model = engine.cost_model();
    let mut trace = Trace::new();
    let mut cost = crate::timing::Cost::default();
    let (mut n, mut faults, mut lookups, mut hits) = (0u64, 0u64, 0u64, 0u64);
    let mut remaps = 0u64;
    // Each stream's outstanding completions, oldest first (with an in-flight limit), and the
    // latest arrival so far (arrivals stay in order).
    let mut outstanding: Vec<std::collections::VecDeque<u64>> = Vec::new();
    let mut latest = 0u64;
    let (mut refs, mut table_refs, mut walks, mut cost_sum) = (0u64, 0u64, 0u64, 0u64);
    let mut breakdown = [0u64; 8];
    let began = Instant::now();
    for r in requests {
        let result = platform.translate(&r, &mut trace);
        model.cost_into(&trace, &mut cost);
        let shift = result.as_ref().map_or(12, |t| t.page_shift.max(12));
        let key = (u64::from(r.stream) << 52) ^ (r.addr >> shift);
        let mut arrival = r.t.max(latest);
        if cfg.inflight > 0 {
            let i = r.stream as usize;
            if outstanding.len() <= i {
                outstanding.resize_with(i + 1, Default::default);
            }
            if outstanding[i].len() >= cfg.inflight
                && let Some(oldest) = outstanding[i].pop_front()
            {
                arrival = arrival.max(oldest);
            }
        }
        latest = arrival;
        let done = engine.translate(arrival, r.stream, key, &cost);
        if cfg.inflight > 0 {
            outstanding[r.stream as usize].push_back(done.done);
        }
        if let Some((iova, len)) = r.remap {
            // The driver unmaps and maps the buffer once the device's DMA is done.
            let (descriptors, waits) = platform.remap(r.stream, iova, len)?;
            engine.invalidate(done.done, descriptors, waits);
            remaps += 1;
        }
        n += 1;
        faults += u64::from(result.is_err());
        if let Some(hit) = cost.iotlb_hit {
            lookups += 1;
            hits += u64::from(hit);
        }
        refs += u64::from(cost.refs);
        table_refs += u64::from(cost.table_refs);
        walks += u64::from(cost.walks);
        cost_sum += cost.total;
        for (slot, v) in breakdown.iter_mut().zip([
            cost.link,
            cost.lookups,
            cost.fills,
            cost.structure_reads,
            cost.walk_reads,
            cost.walk_steps,
            cost.ad_updates,
            cost.device,
        ]) {
            *slot += v;
        }
        if n.is_multiple_of(PROGRESS_EVERY) {
            progress(n);
        }
    }
    progress(n);
    let wall = began.elapsed().as_secs_f64();
    let per = |x: u64, d: u64| if d == 0 { 0.0 } else { x as f64 / d as f64 };
    let names = [
        "link",
        "lookups",
        "fills",
        "structure_reads",
        "walk_reads",
        "walk_steps",
        "ad_updates",
        "device",
    ];
    Ok(RunReport {
        model: cfg.model.name(),
        workload: name,
        page_size: cfg.page_size,
        iotlb_entries: u64::from(cfg.params.iotlb.entries),
        walkers: cfg.params.walkers,
        translations: n,
        faults,
        remaps,
        iotlb_hit_rate: per(hits, lookups),
        refs_per_translation: per(refs, n),
        table_refs_per_walk: per(table_refs, walks),
        mean_cost_cycles: per(cost_sum, n),
        cost_breakdown: names.into_iter().zip(breakdown).collect(),
        cdf: engine.latency_cdf(None),
        engine: engine.report(),
        sim_translations_per_second: if wall > 0.0 { n as f64 / wall } else { 0.0 },
        deviations: deviations.iter().map(|d| format!("{d:?}")).collect(),
    })
}

/// A trace's requests, timed in cycles at `clock_ghz` (at most `limit`), and the regions that
/// map every page they touch: one stream per requester id (in order of first appearance), each
/// touched page mapped (aligned to `page_size`) to a distinct frame.
pub fn replay_requests(
    records: &[TraceRecord],
    page_size: u64,
    clock_ghz: f64,
    limit: u64,
) -> (Vec<Region>, Vec<SimRequest>) {
    let mut streams: BTreeMap<u16, u32> = BTreeMap::new();
    let mut order: Vec<u16> = Vec::new();
    let mut pages: BTreeMap<u32, std::collections::BTreeSet<u64>> = BTreeMap::new();
    let mut reqs = Vec::new();
    for rec in records.iter().take(limit as usize) {
        let next = streams.len() as u32;
        let stream = *streams.entry(rec.source).or_insert_with(|| {
            order.push(rec.source);
            next
        });
        let last = rec.addr.saturating_add(rec.len.max(1) - 1);
        let set = pages.entry(stream).or_default();
        for p in (rec.addr / page_size)..=(last / page_size) {
            set.insert(p);
        }
        reqs.push(SimRequest {
            remap: None,
            t: (rec.t as f64 * clock_ghz) as u64,
            stream,
            pasid: rec.pasid,
            addr: rec.addr,
            len: rec.len.max(1),
            access: rec.access.into(),
        });
    }
    // Contiguous runs of touched pages become regions.
    let mut regions = Vec::new();
    for (stream, set) in pages {
        let mut run: Option<(u64, u64)> = None;
        for p in set {
            run = match run {
                Some((s, e)) if e + 1 == p => Some((s, p)),
                Some((s, e)) => {
                    regions.push(Region {
                        stream,
                        iova: s * page_size,
                        len: (e - s + 1) * page_size,
                    });
                    Some((p, p))
                }
                None => Some((p, p)),
            };
        }
        if let Some((s, e)) = run {
            regions.push(Region {
                stream,
                iova: s * page_size,
                len: (e - s + 1) * page_size,
            });
        }
    }
    (regions, reqs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::trace_file::Access;
    use crate::timing::Preset;

    fn cfg(model: SimModel, page: u64, n: u64) -> RunConfig {
        RunConfig {
            model,
            params: Preset::VtdServer.params(),
            page_size: page,
            seed: 1,
            tlp_bytes: 256,
            translations: n,
            remap_every: 0,
            inflight: 0,
        }
    }

    #[test]
    fn a_nic_beyond_the_iotlbs_reach_misses_with_4k_pages_and_hits_with_2m() {
        let nic = WorkloadKind::by_name("nic").unwrap();
        let mut small = cfg(SimModel::VtdLegacy, 4096, 200_000);
        small.params.iotlb.entries = 64;
        small.params.iotlb.ways = 4;
        let four_k = run(&small, &Source::Workload(nic.clone()), |_| {}).unwrap();
        let mut big = small.clone();
        big.page_size = 2 << 20;
        let two_m = run(&big, &Source::Workload(nic), |_| {}).unwrap();
        assert_eq!(four_k.faults + two_m.faults, 0);
        assert_eq!(four_k.translations, 200_000);
        assert!(
            two_m.iotlb_hit_rate > four_k.iotlb_hit_rate,
            "{} vs {}",
            two_m.iotlb_hit_rate,
            four_k.iotlb_hit_rate
        );
        assert!(two_m.engine.latency.mean < four_k.engine.latency.mean);
        assert!(four_k.engine.walks > two_m.engine.walks);
        // The breakdown adds up to the mean cost.
        let sum: u64 = four_k.cost_breakdown.values().sum();
        assert!((sum as f64 / four_k.translations as f64 - four_k.mean_cost_cycles).abs() < 1e-6);
    }

    #[test]
    fn with_few_requests_in_flight_iotlb_misses_cost_throughput_and_2m_pages_recover_it() {
        let nic = WorkloadKind::Nic {
            ring: 4096,
            buffer_bytes: 2048,
            packet_bytes: 1500,
            gbps: 400.0,
        };
        let mut c = cfg(SimModel::VtdLegacy, 4096, 100_000);
        c.inflight = 6;
        c.params.iotlb.entries = 64;
        c.params.iotlb.ways = 4;
        let four_k = run(&c, &Source::Workload(nic.clone()), |_| {}).unwrap();
        let open = run(
            &RunConfig {
                inflight: 0,
                ..c.clone()
            },
            &Source::Workload(nic.clone()),
            |_| {},
        )
        .unwrap();
        c.page_size = 2 << 20;
        let two_m = run(&c, &Source::Workload(nic), |_| {}).unwrap();
        let tput = |r: &RunReport| r.engine.translations_per_second;
        assert!(
            tput(&four_k) < tput(&open),
            "the limit costs the 4 KiB run throughput"
        );
        assert!(
            tput(&two_m) > tput(&four_k),
            "{} vs {}",
            tput(&two_m),
            tput(&four_k)
        );
    }

    #[test]
    fn runs_are_deterministic_and_every_model_runs_every_workload() {
        for (_, model) in SimModel::ALL {
            for w in WorkloadKind::NAMES {
                let kind = WorkloadKind::by_name(w).unwrap();
                let c = cfg(model, 4096, 5_000);
                let a = run(&c, &Source::Workload(kind.clone()), |_| {}).unwrap();
                let b = run(&c, &Source::Workload(kind), |_| {}).unwrap();
                assert_eq!(a.faults, 0, "{model:?} {w}");
                assert_eq!(
                    a.engine, b.engine,
                    "{model:?} {w}: the same seed, the same run"
                );
                assert_eq!(a.translations, 5_000);
            }
        }
    }

    #[test]
    fn a_driver_remapping_its_buffers_invalidates_through_the_queue_and_stalls() {
        let nic = WorkloadKind::Nic {
            ring: 64,
            buffer_bytes: 2048,
            packet_bytes: 1500,
            gbps: 100.0,
        };
        for (_, model) in SimModel::ALL
            .into_iter()
            .filter(|(_, m)| *m != SimModel::VtdNested)
        {
            let plain = run(
                &cfg(model, 4096, 20_000),
                &Source::Workload(nic.clone()),
                |_| {},
            )
            .unwrap();
            let c = RunConfig {
                remap_every: 1,
                ..cfg(model, 4096, 20_000)
            };
            let r = run(&c, &Source::Workload(nic.clone()), |_| {}).unwrap();
            assert_eq!(r.faults, 0, "{model:?}: a remapped buffer is mapped again");
            assert_eq!(
                r.remaps,
                20_000 / 6 + u64::from(20_000 % 6 != 0) - 1,
                "{model:?}"
            );
            assert!(r.engine.invalidations >= r.remaps, "{model:?}");
            assert!(r.engine.queueing.invalidation_busy_cycles > 0, "{model:?}");
            // Each remap drops the page's translation: more walks than without.
            assert!(r.engine.walks > plain.engine.walks, "{model:?}");
        }
    }

    #[test]
    fn a_replay_maps_what_the_trace_touches_and_times_it_in_cycles() {
        let rec = |t, source, addr, len| TraceRecord {
            t,
            source,
            pasid: None,
            addr,
            len,
            access: Access::Read,
        };
        let records = vec![
            rec(0, 0x20, 0x10_0000, 4096),
            rec(10, 0x20, 0x10_0800, 0x1000),
            rec(20, 0x30, 0x90_0000, 64),
            rec(30, 0x20, 0x40_0000, 8),
        ];
        let (regions, reqs) = replay_requests(&records, 4096, 2.0, u64::MAX);
        assert_eq!(reqs.len(), 4);
        assert_eq!(reqs[1].t, 20, "10 ns at 2 GHz");
        assert_eq!((reqs[2].stream, reqs[3].stream), (1, 0));
        assert_eq!(
            regions,
            vec![
                Region {
                    stream: 0,
                    iova: 0x10_0000,
                    len: 0x2000
                },
                Region {
                    stream: 0,
                    iova: 0x40_0000,
                    len: 0x1000
                },
                Region {
                    stream: 1,
                    iova: 0x90_0000,
                    len: 0x1000
                },
            ]
        );
        let r = run(
            &cfg(SimModel::Amdvi, 4096, 100),
            &Source::Trace(records),
            |_| {},
        )
        .unwrap();
        assert_eq!((r.translations, r.faults), (4, 0));
        assert!(matches!(
            run(
                &cfg(SimModel::Amdvi, 4096, 100),
                &Source::Trace(vec![]),
                |_| {}
            ),
            Err(SimError::EmptyTrace)
        ));
    }
}

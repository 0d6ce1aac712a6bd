//! The timing model's overhead on translation: the same VT-d translations untimed and timed
//! (`iommu_emulator::timing`: `CostModel::cost` on the trace, then `Engine::translate`), side by
//! side in one group, each unit programmed through its registers and memory like a driver
//! would, over warm guest memory, with the `vtd-server` preset's timing and cache geometry.
//!
//! Group `timing` (one device cycling through 1024 scattered 4 KiB pages of 4-level
//! second-stage tables, legacy mode):
//! - `untimed_hit_trace_off`: the translation without a trace, as an untimed simulator runs it;
//! - `untimed_hit` (the baseline of `timed_hit`): the translation recording its trace;
//! - `timed_hit`: the same, then its cost (`CostModel::cost_into`) and its placement in the
//!   engine;
//! - `cost_hit` / `cost_into_hit` / `engine_hit`: each half of the timing alone, on the trace
//!   of a hit (`cost_into` writes into a caller's `Cost` instead of returning one);
//! - `untimed_miss` / `timed_miss`: with 8-entry caches (every request walks), so the timing of
//!   walks (LLC model, walker slots, coalescing map) is measured too.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use iommu_emulator::request::{AccessKind, DmaRequest};
use iommu_emulator::timing::{CacheParams, Cost, CostModel, Engine, Preset, TimingParams};
use iommu_emulator::trace::Trace;
use iommu_emulator::vtd::setup::RootTable;
use iommu_emulator::vtd::{Vtd, VtdConfig};
use pagewalk::{
    BumpAllocator, GuestMem, PageSizePolicy, Perms, TableBuilder, VtdSsConfig, WalkConfig,
};
use vm_memory::{GuestAddress, GuestMemoryMmap};

const PAGES: u64 = 1024;
const MEM_SIZE: usize = 512 << 20;
const TABLES: (u64, u64) = (0x100_0000, 0x800_0000);
const SID: u16 = 0x0010;

type Mem = GuestMem<GuestMemoryMmap<()>>;

fn iovas() -> Vec<u64> {
    (0..PAGES)
        .map(|i| (i.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 20) & ((1u64 << 47) - 1) & !0xfff)
        .collect()
}

/// A legacy-mode unit translating `SID` through 4-level second-stage tables mapping `list`,
/// its caches as `params` says.
fn unit(params: &TimingParams, list: &[u64]) -> Vtd<&'static Mem> {
    let mem: &'static Mem = Box::leak(Box::new(GuestMem(
        GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap(),
    )));
    let mut alloc = BumpAllocator::new(TABLES.0, TABLES.1);
    let ss = WalkConfig::VtdSecondStage(VtdSsConfig::new(4).with_haw(48));
    let mut t = TableBuilder::new(ss, mem, &mut alloc).unwrap();
    for (i, iova) in list.iter().enumerate() {
        let phys = 0x1000_0000 + i as u64 * 0x3000;
        t.map(
            mem,
            &mut alloc,
            *iova,
            phys,
            0x1000,
            Perms::RW,
            PageSizePolicy::Fixed(12),
        )
        .unwrap();
    }
    let mut rt = RootTable::new(mem, &mut alloc, false).unwrap();
    rt.legacy(mem, &mut alloc, SID, 1, 2, t.root()).unwrap();
    let mut cfg = VtdConfig::default();
    let _ = params.apply_to_vtd(&mut cfg);
    let vtd = Vtd::new(mem, cfg, Box::new(|_| {})).unwrap();
    rt.enable(&vtd);
    vtd
}

/// The preset with every cache `entries` large.
fn sized(entries: u32) -> TimingParams {
    let mut p = Preset::VtdServer.params();
    let size = |c: CacheParams| CacheParams { entries, ..c };
    p.iotlb = size(p.iotlb);
    p.context = size(p.context);
    p.pasid = size(p.pasid);
    p.pwc = size(p.pwc);
    p
}

/// One simulated request stream: the unit, a cost model, an engine and the time.
struct Sim {
    vtd: Vtd<&'static Mem>,
    list: Vec<u64>,
    i: usize,
    trace: Trace,
    model: CostModel,
    cost: Cost,
    engine: Engine,
    now: u64,
}

impl Sim {
    fn new(params: &TimingParams) -> Self {
        let list = iovas();
        let engine = Engine::new(params, 1);
        Self {
            vtd: unit(params, &list),
            model: engine.cost_model(),
            cost: Cost::default(),
            engine,
            list,
            i: 0,
            trace: Trace::new(),
            now: 0,
        }
    }

    #[inline]
    fn request(&mut self) -> DmaRequest {
        let iova = self.list[self.i % self.list.len()] | 0x18;
        self.i += 1;
        DmaRequest::new(SID, iova, 8, AccessKind::Read)
    }

    fn untimed(&mut self, trace_on: bool) -> u64 {
        let req = self.request();
        if !trace_on {
            let mut off = Trace::off();
            return self.vtd.translate_with(&req, &mut off).unwrap().addr;
        }
        let t = self.vtd.translate_with(&req, &mut self.trace).unwrap();
        t.addr ^ self.trace.len() as u64
    }

    fn timed(&mut self) -> u64 {
        let req = self.request();
        let t = self.vtd.translate_with(&req, &mut self.trace).unwrap();
        self.model.cost_into(&self.trace, &mut self.cost);
        self.now += 4;
        let c = self
            .engine
            .translate(self.now, 0, req.addr >> 12, &self.cost);
        t.addr ^ c.done
    }

    fn warm(&mut self) {
        for _ in 0..self.list.len() {
            self.timed();
        }
    }
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("timing");
    let big = sized(4096);

    let mut sim = Sim::new(&big);
    sim.warm();
    g.bench_function("untimed_hit_trace_off", |b| {
        b.iter(|| black_box(sim.untimed(false)))
    });
    g.bench_function("untimed_hit", |b| b.iter(|| black_box(sim.untimed(true))));
    g.bench_function("timed_hit", |b| b.iter(|| black_box(sim.timed())));

    // The two halves of the timing on one hit's trace.
    sim.untimed(true);
    let hit_trace = sim.trace.clone();
    let mut model = CostModel::new(&big);
    g.bench_function("cost_hit", |b| {
        b.iter(|| black_box(model.cost(&hit_trace).total))
    });
    let mut out = Cost::default();
    g.bench_function("cost_into_hit", |b| {
        b.iter(|| {
            model.cost_into(&hit_trace, &mut out);
            black_box(out.total)
        })
    });
    let cost = model.cost(&hit_trace);
    let mut engine = Engine::new(&big, 1);
    let mut now = 0u64;
    g.bench_function("engine_hit", |b| {
        b.iter(|| {
            now += 4;
            black_box(engine.translate(now, 0, now & 1023, &cost).done)
        })
    });

    let mut miss = Sim::new(&sized(8));
    g.bench_function("untimed_miss", |b| b.iter(|| black_box(miss.untimed(true))));
    g.bench_function("timed_miss", |b| b.iter(|| black_box(miss.timed())));
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

//! Copy throughput of the DMA engine (`vhost_device_iommu::endpoint`), driven as a vfio-user
//! client drives it: guest RAM given as a DMA region (a file, as QEMU's memfd), bus mastering
//! on, one COPY descriptor in guest RAM, `DESC_BASE` set, and per iteration one `DOORBELL`
//! write and a read of `STATUS`, which must say `DONE` with one descriptor completed (a run
//! that faults panics instead of reporting a number). Every descriptor fetch, source read,
//! destination write and `RESULT` write-back is translated by the translator under test;
//! criterion reports bytes copied per second.
//!
//! Group `dma_engine/copy_2mib` (one 2 MiB copy per doorbell) and group `dma_engine/copy_4kib`
//! (one 4 KiB copy per doorbell: the per-descriptor overhead):
//! - `no_iommu`: the `NoIommu` translator, every address its own physical address in one
//!   translation (the floor: what the engine and the memory copy cost on their own);
//! - `bypass`: the daemon in bypass: the core over the VT-d model (the default) with
//!   `bypass` set and the endpoint not attached, so every access is an identity translation
//!   made by the model (pass-through context entry);
//! - `<model>_4k` for `vtd`, `amdvi` and `soft`: the endpoint attached to a domain whose
//!   source and destination windows are mapped one 4 KiB page per MAP, the pages in reverse
//!   order in guest RAM (contiguous in IOVA, not in guest-physical memory), so the engine makes
//!   two translations per 4 KiB;
//! - `<model>_2m` (2 MiB copy only): the same windows mapped one 2 MiB MAP each, 2 MiB-aligned
//!   in IOVA and guest RAM, which the VT-d and AMD-Vi drivers realise as 2 MiB leaves.
//!
//! Before it is timed, every case checks that the copy put the source's bytes at the
//! destination's guest-physical pages, that a destination translation covered a whole page of
//! the case's size (4 KiB or 2 MiB), and for VT-d and AMD-Vi that it reported that page size
//! (the soft double keeps mapping trees, not page tables, and reports 4 KiB pages whatever the
//! mapping's size).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use criterion::{BenchmarkGroup, Criterion, Throughput, criterion_group, criterion_main};
use iommu_emulator::{Core, MapFlags};
use vfio_user::{DmaMapFlags, ServerBackend};
use vhost_device_iommu::config::{DaemonConfig, Model};
use vhost_device_iommu::endpoint::engine::{EndpointStats, OP_COPY, RESULT_OK, STATUS_DONE, reg};
use vhost_device_iommu::endpoint::server::EndpointFunction;
use vhost_device_iommu::endpoint::{DmaTranslator, NoIommu};
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};

/// The engine's requester id (00:04.0).
const EP: u16 = 0x20;
/// The domain the mapped cases attach it to.
const DOMAIN: u32 = 1;
/// Guest RAM: 8 MiB at guest-physical 0.
const RAM: u64 = 8 << 20;
const KIB4: u64 = 4 << 10;
const MIB2: u64 = 2 << 20;

/// Where the descriptor, the source and the destination are in guest RAM.
const DESC_GPA: u64 = 0x1000;
const SRC_GPA: u64 = 0x20_0000;
const DST_GPA: u64 = 0x40_0000;
/// Their IOVAs when the endpoint is attached to a paging domain.
const DESC_IOVA: u64 = 0x1000_0000;
const SRC_IOVA: u64 = 0x4000_0000;
const DST_IOVA: u64 = 0x8000_0000;

/// How the engine's addresses reach guest RAM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    /// IOVA = guest-physical (no IOMMU, bypass).
    Identity,
    /// Windows mapped in pages of this size, page i of a window of n pages at page n-1-i of
    /// its guest-physical block.
    Pages(u64),
}

impl Layout {
    fn desc_iova(self) -> u64 {
        match self {
            Layout::Identity => DESC_GPA,
            Layout::Pages(_) => DESC_IOVA,
        }
    }

    fn src_iova(self) -> u64 {
        match self {
            Layout::Identity => SRC_GPA,
            Layout::Pages(_) => SRC_IOVA,
        }
    }

    fn dst_iova(self) -> u64 {
        match self {
            Layout::Identity => DST_GPA,
            Layout::Pages(_) => DST_IOVA,
        }
    }

    /// Guest-physical address of byte `off` of a 2 MiB window at `gpa`.
    fn gpa_in(self, gpa: u64, off: u64) -> u64 {
        match self {
            Layout::Identity => gpa + off,
            Layout::Pages(page) => {
                let n = MIB2 / page;
                gpa + (n - 1 - off / page) * page + off % page
            }
        }
    }

    /// Maps the descriptor page and the two 2 MiB windows in `core`'s domain.
    fn map(self, core: &Core) {
        let Layout::Pages(page) = self else {
            return;
        };
        core.map(
            DOMAIN,
            DESC_IOVA,
            DESC_IOVA + KIB4 - 1,
            DESC_GPA,
            MapFlags::RW,
        )
        .expect("map the descriptor page");
        for (iova, gpa) in [(SRC_IOVA, SRC_GPA), (DST_IOVA, DST_GPA)] {
            for off in (0..MIB2).step_by(page as usize) {
                core.map(
                    DOMAIN,
                    iova + off,
                    iova + off + page - 1,
                    self.gpa_in(gpa, off),
                    MapFlags::RW,
                )
                .expect("map a window page");
            }
        }
    }

    /// The page size of the windows' mappings.
    fn page(self) -> Option<u64> {
        match self {
            Layout::Identity => None,
            Layout::Pages(page) => Some(page),
        }
    }
}

/// The daemon's core over `model`, as `vhost-device-iommu --model` builds it.
fn core(model: Model) -> Arc<Core> {
    let cfg = DaemonConfig {
        model,
        ..DaemonConfig::new("/unused").expect("default daemon configuration")
    };
    let ram = GuestMemoryAtomic::new(GuestMemoryMmap::new());
    vhost_device_iommu::daemon::build_device(&cfg, &ram)
        .expect("build the device")
        .core()
        .clone()
}

/// The core over `model` with the endpoint attached and the windows mapped in `page`s.
fn mapped(model: Model, page: u64) -> Arc<Core> {
    let c = core(model);
    c.attach(DOMAIN, u32::from(EP), false)
        .expect("attach the engine");
    Layout::Pages(page).map(&c);
    c
}

/// The core over the VT-d model in bypass, the engine not attached.
fn bypass() -> Arc<Core> {
    let c = core(Model::Vtd);
    c.set_bypass(true).expect("set bypass");
    c
}

/// An engine over `iommu` with guest RAM mapped, bus mastering on and one COPY of `len` bytes
/// from the source to the destination window in its descriptor ring.
struct Rig {
    f: EndpointFunction,
    ram: File,
    stats: Arc<EndpointStats>,
    layout: Layout,
    len: u64,
}

impl Rig {
    fn new(iommu: Arc<dyn DmaTranslator>, layout: Layout, len: u64) -> Rig {
        let stats = Arc::new(EndpointStats::default());
        let mut f = EndpointFunction::dma_engine(EP, iommu, stats.clone());
        let ram = vmm_sys_util::tempfile::TempFile::new()
            .expect("temporary file for guest RAM")
            .into_file();
        ram.set_len(RAM).expect("size guest RAM");
        f.dma_map(
            DmaMapFlags::READ_WRITE,
            0,
            0,
            RAM,
            Some(ram.try_clone().expect("clone the RAM descriptor")),
        )
        .expect("DMA_MAP guest RAM");
        // Command: Memory Space and Bus Master Enable.
        f.region_write(7, 4, &[0x06, 0])
            .expect("enable bus mastering");
        let mut d = [0u8; 32];
        d[0..4].copy_from_slice(&OP_COPY.to_le_bytes());
        d[8..16].copy_from_slice(&layout.src_iova().to_le_bytes());
        d[16..24].copy_from_slice(&layout.dst_iova().to_le_bytes());
        d[24..28].copy_from_slice(&(len as u32).to_le_bytes());
        ram.write_all_at(&d, DESC_GPA)
            .expect("write the descriptor");
        let mut r = Rig {
            f,
            ram,
            stats,
            layout,
            len,
        };
        let base = layout.desc_iova();
        r.wr(reg::DESC_BASE, base as u32);
        r.wr(reg::DESC_BASE + 4, (base >> 32) as u32);
        r
    }

    fn rd(&mut self, off: u64) -> u32 {
        let mut b = [0; 4];
        self.f.region_read(0, off, &mut b).expect("BAR0 read");
        u32::from_le_bytes(b)
    }

    fn wr(&mut self, off: u64, v: u32) {
        self.f
            .region_write(0, off, &v.to_le_bytes())
            .expect("BAR0 write");
    }

    /// One doorbell; the batch must complete.
    fn ring(&mut self) {
        self.wr(reg::DOORBELL, 1);
        let s = self.rd(reg::STATUS);
        assert_eq!(s, STATUS_DONE | (1 << 16), "STATUS {s:#x}: the copy failed");
    }

    /// Byte `off` of the source, as the check writes it: distinct in every 4-byte word.
    fn word(off: u64) -> [u8; 4] {
        ((off / 4) as u32 ^ 0x5a5a_0000).to_le_bytes()
    }

    /// Fills the source, copies once, and checks the destination's guest-physical pages and
    /// the destination's translations: each covers a whole page (`len`), and when `sized` the
    /// unit reports the page's size.
    fn check(&mut self, sized: bool) {
        let l = self.layout;
        for off in (0..self.len).step_by(4) {
            self.ram
                .write_all_at(&Self::word(off), l.gpa_in(SRC_GPA, off))
                .expect("write the source");
        }
        self.ring();
        let mut b = [0u8; 4];
        for off in (0..self.len).step_by(4) {
            self.ram
                .read_exact_at(&mut b, l.gpa_in(DST_GPA, off))
                .expect("read the destination");
            assert_eq!(b, Self::word(off), "{l:?}: destination byte {off}");
        }
        let mut r = [0u8; 4];
        self.ram
            .read_exact_at(&mut r, DESC_GPA + 28)
            .expect("read RESULT");
        assert_eq!(u32::from_le_bytes(r), RESULT_OK);
        if let Some(page) = l.page() {
            let recent = self.stats.recent.lock().expect("recent translations");
            let dst = recent
                .iter()
                .find(|t| t.write && t.iova >= DST_IOVA && t.iova < DST_IOVA + MIB2)
                .expect("a destination translation");
            assert_eq!(dst.len, page.min(self.len), "{l:?}: {dst:?}");
            if sized {
                let shift = page.trailing_zeros();
                assert_eq!(u32::from(dst.page_shift), shift, "{l:?}: {dst:?}");
            }
        }
        assert_eq!(self.stats.faults.load(Ordering::Relaxed), 0);
    }
}

fn case(
    g: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>,
    id: &str,
    iommu: Arc<dyn DmaTranslator>,
    layout: Layout,
    len: u64,
    sized: bool,
) {
    let mut rig = Rig::new(iommu, layout, len);
    rig.check(sized);
    g.bench_function(id, |b| b.iter(|| rig.ring()));
    assert_eq!(rig.stats.errors.load(Ordering::Relaxed), 0, "{id}");
}

const MODELS: [(&str, Model); 3] = [
    ("vtd", Model::Vtd),
    ("amdvi", Model::Amdvi),
    ("soft", Model::Soft),
];

fn bench_2mib(c: &mut Criterion) {
    let mut g = c.benchmark_group("dma_engine/copy_2mib");
    g.throughput(Throughput::Bytes(MIB2));
    case(&mut g, "bypass", bypass(), Layout::Identity, MIB2, false);
    let no_iommu = Arc::new(NoIommu);
    case(&mut g, "no_iommu", no_iommu, Layout::Identity, MIB2, false);
    for (name, model) in MODELS {
        for page in [KIB4, MIB2] {
            let id = format!("{name}_{}", if page == KIB4 { "4k" } else { "2m" });
            let sized = model != Model::Soft;
            let iommu = mapped(model, page);
            case(&mut g, &id, iommu, Layout::Pages(page), MIB2, sized);
        }
    }
    g.finish();
}

fn bench_4kib(c: &mut Criterion) {
    let mut g = c.benchmark_group("dma_engine/copy_4kib");
    g.throughput(Throughput::Bytes(KIB4));
    case(&mut g, "bypass", bypass(), Layout::Identity, KIB4, false);
    let no_iommu = Arc::new(NoIommu);
    case(&mut g, "no_iommu", no_iommu, Layout::Identity, KIB4, false);
    for (name, model) in &MODELS[..2] {
        let id = format!("{name}_4k");
        let iommu = mapped(*model, KIB4);
        case(&mut g, &id, iommu, Layout::Pages(KIB4), KIB4, true);
    }
    g.finish();
}

criterion_group!(benches, bench_2mib, bench_4kib);
criterion_main!(benches);

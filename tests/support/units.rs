//! The hardware units as the translation benchmarks and the instruction-count harness
//! (`examples/hot_paths.rs`) drive them: a VT-d or AMD-Vi unit programmed through its registers
//! and memory as a driver would, over warm guest memory (vm-memory `GuestMemoryMmap`), mapping
//! the same 1024 scattered IOVAs of one device with 4 KiB pages and 4-level tables.

use iommu_emulator::amdvi::layout::{Control, DevTabBase, DteQw0, DteQw1, with_gcr3_root};
use iommu_emulator::amdvi::{AmdVi, AmdViConfig, reg};
use iommu_emulator::vtd::layout::{PGTT_NESTED, PasidEntryQw0, PasidEntryQw1, PasidEntryQw2};
use iommu_emulator::vtd::setup::RootTable;
use iommu_emulator::vtd::{Vtd, VtdConfig};
use pagewalk::{
    AmdV1Config, BumpAllocator, FrameAllocator, GuestMem, PageSizePolicy, Perms, PhysMem,
    SecondStageView, TableBuilder, VtdSsConfig, WalkConfig, X86Config,
};
use vm_memory::{GuestAddress, GuestMemoryMmap};

pub const MAPPINGS: u64 = 1024;
pub const MEM_SIZE: usize = 512 << 20;
pub const TABLES: (u64, u64) = (0x100_0000, 0x800_0000);
pub const SID: u16 = 0x0010;

pub type Mem = GuestMem<GuestMemoryMmap<()>>;

pub fn memory() -> Mem {
    GuestMem(GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap())
}

pub fn iovas() -> Vec<u64> {
    (0..MAPPINGS)
        .map(|i| (i.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 20) & ((1u64 << 47) - 1) & !0xfff)
        .collect()
}

pub fn phys(i: usize) -> u64 {
    0x1000_0000 + i as u64 * 0x3000
}

pub fn zeroed(mem: &Mem, alloc: &mut BumpAllocator) -> u64 {
    let f = alloc.alloc_frame().unwrap();
    for i in 0..512 {
        mem.write_u64(f + i * 8, 0).unwrap();
    }
    f
}

pub fn config(cache_entries: usize) -> VtdConfig {
    VtdConfig {
        context_cache_entries: cache_entries,
        pasid_cache_entries: cache_entries,
        iotlb_entries: cache_entries,
        pwc_entries: cache_entries,
        ways: 8,
        ..VtdConfig::default()
    }
}

/// Second-stage tables mapping every IOVA; returns (root, sorted (iova, phys) list).
pub fn ss_tables(mem: &Mem, alloc: &mut BumpAllocator, list: &[u64]) -> TableBuilder {
    let mut t = TableBuilder::new(
        WalkConfig::VtdSecondStage(VtdSsConfig::new(4).with_haw(48)),
        mem,
        alloc,
    )
    .unwrap();
    for (i, iova) in list.iter().enumerate() {
        t.map(
            mem,
            alloc,
            *iova,
            phys(i),
            0x1000,
            Perms::RW,
            PageSizePolicy::Fixed(12),
        )
        .unwrap();
    }
    t
}

pub fn legacy_unit(cache_entries: usize) -> (Vtd<&'static Mem>, TableBuilder, &'static Mem) {
    let mem: &'static Mem = Box::leak(Box::new(memory()));
    let mut alloc = BumpAllocator::new(TABLES.0, TABLES.1);
    let t = ss_tables(mem, &mut alloc, &iovas());
    // AW = 2 (4-level), DID 1; T = 00b over the second-stage tables.
    let mut rt = RootTable::new(mem, &mut alloc, false).unwrap();
    rt.legacy(mem, &mut alloc, SID, 1, 2, t.root()).unwrap();
    let vtd = Vtd::new(mem, config(cache_entries), Box::new(|_| {})).unwrap();
    rt.enable(&vtd);
    (vtd, t, mem)
}

/// The two stages of a nested unit: `host` tables (second stage, or AMD-Vi's host table) map
/// GPA [0, 256 MiB) to SPA [0x1000_0000, ...) with 4 KiB pages, and `guest` tables (first
/// stage, or AMD-Vi's guest table), allocated from guest-physical [1 MiB, 16 MiB) through the
/// host tables, map every IOVA to a GPA at or above 16 MiB. Returns the host and guest tables
/// and the guest allocator, for more guest-physical structures (AMD-Vi's GCR3 table).
fn two_stage_tables(
    mem: &'static Mem,
    alloc: &mut BumpAllocator,
    host: WalkConfig,
    guest: WalkConfig,
) -> (TableBuilder, TableBuilder, BumpAllocator) {
    let mut host = TableBuilder::new(host, mem, alloc).unwrap();
    host.map(
        mem,
        alloc,
        0,
        0x1000_0000,
        0x1000_0000,
        Perms::RW,
        PageSizePolicy::Fixed(12),
    )
    .unwrap();
    let view = SecondStageView {
        mem,
        config: *host.config(),
        root: host.root(),
    };
    let mut galloc = BumpAllocator::new(0x10_0000, 0xf0_0000);
    let mut guest = TableBuilder::new(guest, &view, &mut galloc).unwrap();
    for (i, iova) in iovas().iter().enumerate() {
        let gpa = 0x100_0000 + i as u64 * 0x3000;
        guest
            .map(
                &view,
                &mut galloc,
                *iova,
                gpa,
                0x1000,
                Perms::RW | Perms::U,
                PageSizePolicy::Fixed(12),
            )
            .unwrap();
    }
    (host, guest, galloc)
}

pub fn nested_unit(cache_entries: usize) -> Vtd<&'static Mem> {
    let mem: &'static Mem = Box::leak(Box::new(memory()));
    let mut alloc = BumpAllocator::new(TABLES.0, TABLES.1);
    let mut fs = X86Config::vtd_first_stage(4);
    fs.out_width = 48;
    let (ss, fs, _) = two_stage_tables(
        mem,
        &mut alloc,
        WalkConfig::VtdSecondStage(VtdSsConfig::new(4).with_haw(48)),
        WalkConfig::VtdFirstStage(fs),
    );
    // PASID 1: nested, AW = 2, DID 3.
    let qw0 = PasidEntryQw0::new()
        .with_p(true)
        .with_aw(2)
        .with_pgtt(PGTT_NESTED)
        .with_ssptptr_page(ss.root() >> 12);
    let qw1 = PasidEntryQw1::new().with_did(3);
    let qw2 = PasidEntryQw2::new().with_fsptptr_page(fs.root() >> 12);
    let mut rt = RootTable::new(mem, &mut alloc, true).unwrap();
    let qw = [qw0.into_bits(), qw1.into_bits(), qw2.into_bits()];
    rt.pasid_entry(mem, &mut alloc, SID, 1, qw).unwrap();
    let vtd = Vtd::new(mem, config(cache_entries), Box::new(|_| {})).unwrap();
    rt.enable(&vtd);
    vtd
}

pub fn amd_config(cache_entries: usize) -> AmdViConfig {
    AmdViConfig {
        dte_cache_entries: cache_entries,
        gcr3_cache_entries: cache_entries,
        iotlb_entries: cache_entries,
        pdc_entries: cache_entries,
        ways: 8,
        ..AmdViConfig::default()
    }
}

/// An AMD-Vi unit whose device table (one page) holds `SID`'s DTE `(qw0, qw1)`, enabled with
/// guest translation.
pub fn amdvi_enable(
    mem: &'static Mem,
    dev_tab: u64,
    dte: (DteQw0, DteQw1),
    cache_entries: usize,
) -> AmdVi<&'static Mem> {
    let at = dev_tab + 32 * u64::from(SID);
    mem.write_u64(at + 8, dte.1.into_bits()).unwrap();
    mem.write_u64(at, dte.0.into_bits()).unwrap();
    let unit = AmdVi::new(mem, amd_config(cache_entries), Box::new(|_| {})).unwrap();
    let base = DevTabBase::new().with_base_page(dev_tab >> 12);
    unit.mmio_write(reg::DEV_TAB_BASE, 8, base.into_bits());
    let ctl = Control::new().with_iommu_en(true).with_gt_en(true);
    unit.mmio_write(reg::CONTROL, 8, ctl.into_bits());
    unit
}

pub fn amdvi_v1_unit(cache_entries: usize) -> AmdVi<&'static Mem> {
    let mem: &'static Mem = Box::leak(Box::new(memory()));
    let mut alloc = BumpAllocator::new(TABLES.0, TABLES.1);
    let mut t = TableBuilder::new(WalkConfig::AmdV1(AmdV1Config::new(4)), mem, &mut alloc).unwrap();
    for (i, iova) in iovas().iter().enumerate() {
        t.map(
            mem,
            &mut alloc,
            *iova,
            phys(i),
            0x1000,
            Perms::RW,
            PageSizePolicy::Fixed(12),
        )
        .unwrap();
    }
    let dev_tab = zeroed(mem, &mut alloc);
    let q0 = DteQw0::new()
        .with_v(true)
        .with_tv(true)
        .with_mode(4)
        .with_pt_root_page(t.root() >> 12)
        .with_ir(true)
        .with_iw(true);
    amdvi_enable(
        mem,
        dev_tab,
        (q0, DteQw1::new().with_domain_id(1)),
        cache_entries,
    )
}

pub fn amdvi_nested_unit(cache_entries: usize) -> AmdVi<&'static Mem> {
    let mem: &'static Mem = Box::leak(Box::new(memory()));
    let mut alloc = BumpAllocator::new(TABLES.0, TABLES.1);
    let mut g = X86Config::amd_v2(4);
    g.out_width = 48;
    let (host, guest, mut galloc) = two_stage_tables(
        mem,
        &mut alloc,
        WalkConfig::AmdV1(AmdV1Config::new(4)),
        WalkConfig::AmdV2(g),
    );
    let view = SecondStageView {
        mem,
        config: *host.config(),
        root: host.root(),
    };
    // One-level GCR3 table (guest-physical): PASID 1's entry holds the guest CR3.
    let gcr3 = galloc.alloc_frame().unwrap();
    for i in 0..512 {
        view.write_u64(gcr3 + 8 * i, 0).unwrap();
    }
    view.write_u64(gcr3 + 8, guest.root() | 1).unwrap();
    let dev_tab = zeroed(mem, &mut alloc);
    let q0 = DteQw0::new()
        .with_v(true)
        .with_tv(true)
        .with_mode(4)
        .with_pt_root_page(host.root() >> 12)
        .with_gv(true)
        .with_ir(true)
        .with_iw(true);
    let dte = with_gcr3_root(q0, DteQw1::new().with_domain_id(3), gcr3);
    amdvi_enable(mem, dev_tab, dte, cache_entries)
}

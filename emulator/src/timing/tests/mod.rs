//! Tests of the timing model against real translations: VT-d units programmed through their
//! registers and memory (as the benches do), their geometry from the timing parameters.

mod engine;
mod walks;

use pagewalk::{
    BumpAllocator, FrameAllocator, PageSizePolicy, Perms, PhysMem, SecondStageView, SparseMem,
    TableBuilder, VtdSsConfig, WalkConfig, X86Config,
};

use crate::timing::TimingParams;
use crate::vtd::layout::{
    ContextEntryHi, ContextEntryLo, PGTT_NESTED, PasidDirEntryRaw, PasidEntryQw0, PasidEntryQw1,
    PasidEntryQw2, RootEntryLo, RtaddrReg, ScalableContextQw0, ScalableRootHalfRaw,
};
use crate::vtd::regs::{GCMD_REG, GCMD_SRTP, GCMD_TE, RTADDR_REG, TTM_LEGACY, TTM_SCALABLE};
use crate::vtd::{Vtd, VtdConfig};

/// The requester every fixture translates for.
pub(super) const SID: u16 = 0x0010;
/// The PASID of the nested fixture.
pub(super) const PASID: u32 = 1;
const TABLES: (u64, u64) = (0x100_0000, 0x800_0000);
/// Guest-physical frames of the first-stage tables.
const GUEST_TABLES: (u64, u64) = (0x10_0000, 0xf0_0000);
/// Where the second stage puts guest-physical 0.
const GPA_BASE: u64 = 0x1000_0000;

pub(super) type Unit = Vtd<&'static SparseMem>;

fn memory() -> &'static SparseMem {
    Box::leak(Box::new(SparseMem::new(1 << 32)))
}

fn zeroed(mem: &SparseMem, alloc: &mut BumpAllocator) -> u64 {
    let f = alloc.alloc_frame().unwrap();
    for i in 0..512 {
        mem.write_u64(f + i * 8, 0).unwrap();
    }
    f
}

/// A unit over `mem` with `cfg` and the timing parameters' cache geometry, its root table at
/// `root` in translation table mode `ttm`, translating.
fn enable(
    mem: &'static SparseMem,
    mut cfg: VtdConfig,
    params: &TimingParams,
    root: u64,
    ttm: u64,
) -> Unit {
    // The deviations (replacement policy, rounding) do not matter to these tests.
    let _ = params.apply_to_vtd(&mut cfg);
    let vtd = Vtd::new(mem, cfg, Box::new(|_| {})).unwrap();
    let rtaddr = RtaddrReg::new()
        .with_ttm(ttm as u8)
        .with_rta_page(root >> 12);
    vtd.mmio_write(RTADDR_REG, 8, rtaddr.into_bits());
    vtd.mmio_write(GCMD_REG, 4, u64::from(GCMD_SRTP));
    vtd.mmio_write(GCMD_REG, 4, u64::from(GCMD_TE));
    vtd
}

/// A legacy-mode unit whose context entry for [`SID`] points at 4-level second-stage tables
/// mapping each of `iovas` (4 KiB pages).
pub(super) fn legacy_unit(params: &TimingParams, iovas: &[u64]) -> Unit {
    let mem = memory();
    let mut alloc = BumpAllocator::new(TABLES.0, TABLES.1);
    let mut t = TableBuilder::new(
        WalkConfig::VtdSecondStage(VtdSsConfig::new(4).with_haw(48)),
        mem,
        &mut alloc,
    )
    .unwrap();
    for (i, iova) in iovas.iter().enumerate() {
        let phys = 0x4000_0000 + i as u64 * 0x3000;
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
    let root = zeroed(mem, &mut alloc);
    let ctx = zeroed(mem, &mut alloc);
    let re = RootEntryLo::new().with_p(true).with_ctp_page(ctx >> 12);
    mem.write_u64(root + u64::from(SID >> 8) * 16, re.into_bits())
        .unwrap();
    let ce = ctx + u64::from(SID & 0xff) * 16;
    // AW = 2 (4-level), DID 1; T = 00b over the second-stage tables.
    let hi = ContextEntryHi::new().with_aw(2).with_did(1);
    let lo = ContextEntryLo::new()
        .with_p(true)
        .with_slptptr_page(t.root() >> 12);
    mem.write_u64(ce + 8, hi.into_bits()).unwrap();
    mem.write_u64(ce, lo.into_bits()).unwrap();
    enable(mem, VtdConfig::default(), params, root, TTM_LEGACY)
}

/// Tables for a scalable-mode unit, in their memory: units built over them
/// ([`NestedTables::unit`]) share the tables and the flags earlier walks set in them.
pub(super) struct NestedTables {
    mem: &'static SparseMem,
    root: u64,
    levels: u8,
}

impl NestedTables {
    /// A fresh unit (empty caches) over the tables.
    pub(super) fn unit(&self, params: &TimingParams) -> Unit {
        let cfg = VtdConfig {
            fs_5level: self.levels == 5,
            sagaw: 0b1100,
            mgaw: 57,
            ..VtdConfig::default()
        };
        enable(self.mem, cfg, params, self.root, TTM_SCALABLE)
    }
}

/// Tables translating [`SID`]'s [`PASID`] nested: an `levels`-level first stage (4 or 5)
/// mapping each of `iovas` over an `levels`-level second stage mapping guest-physical
/// [0, 256 MiB).
pub(super) fn nested_tables(levels: u8, iovas: &[u64]) -> NestedTables {
    let mem = memory();
    let mut alloc = BumpAllocator::new(TABLES.0, TABLES.1);
    let mut ss = TableBuilder::new(
        WalkConfig::VtdSecondStage(VtdSsConfig::new(levels).with_haw(48)),
        mem,
        &mut alloc,
    )
    .unwrap();
    ss.map(
        mem,
        &mut alloc,
        0,
        GPA_BASE,
        0x1000_0000,
        Perms::RW,
        PageSizePolicy::Fixed(12),
    )
    .unwrap();
    let view = SecondStageView {
        mem,
        config: *ss.config(),
        root: ss.root(),
    };
    let mut galloc = BumpAllocator::new(GUEST_TABLES.0, GUEST_TABLES.1);
    let mut c = X86Config::vtd_first_stage(levels);
    c.out_width = 48;
    let mut fs = TableBuilder::new(WalkConfig::VtdFirstStage(c), &view, &mut galloc).unwrap();
    for (i, iova) in iovas.iter().enumerate() {
        let gpa = 0x100_0000 + i as u64 * 0x3000;
        let rw = Perms::RW | Perms::U;
        fs.map(
            &view,
            &mut galloc,
            *iova,
            gpa,
            0x1000,
            rw,
            PageSizePolicy::Fixed(12),
        )
        .unwrap();
    }
    let root = zeroed(mem, &mut alloc);
    let ctx = zeroed(mem, &mut alloc);
    let dir = zeroed(mem, &mut alloc);
    let ptab = zeroed(mem, &mut alloc);
    let root_half = ScalableRootHalfRaw::new()
        .with_p(true)
        .with_ctp_page(ctx >> 12);
    mem.write_u64(root, root_half.into_bits()).unwrap();
    let ce = ctx + u64::from(SID & 0x7f) * 32;
    let ce0 = ScalableContextQw0::new()
        .with_p(true)
        .with_paside(true)
        .with_pasiddirptr_page(dir >> 12);
    mem.write_u64(ce, ce0.into_bits()).unwrap();
    let pde = PasidDirEntryRaw::new()
        .with_p(true)
        .with_smptblptr_page(ptab >> 12);
    mem.write_u64(dir, pde.into_bits()).unwrap();
    let pe = ptab + 64 * u64::from(PASID);
    // Nested, AW = levels - 2, DID 3; FSPM 01b for a 5-level first stage.
    let qw0 = PasidEntryQw0::new()
        .with_p(true)
        .with_aw(levels - 2)
        .with_pgtt(PGTT_NESTED)
        .with_ssptptr_page(ss.root() >> 12);
    let qw2 = PasidEntryQw2::new()
        .with_fspm(levels - 4)
        .with_fsptptr_page(fs.root() >> 12);
    mem.write_u64(pe + 8, PasidEntryQw1::new().with_did(3).into_bits())
        .unwrap();
    mem.write_u64(pe + 16, qw2.into_bits()).unwrap();
    mem.write_u64(pe, qw0.into_bits()).unwrap();
    NestedTables { mem, root, levels }
}

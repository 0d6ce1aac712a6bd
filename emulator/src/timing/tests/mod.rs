//! Tests of the timing model against real translations: VT-d units programmed through their
//! registers and memory (as the benches do), their geometry from the timing parameters.

mod engine;
mod walks;

use pagewalk::{
    BumpAllocator, PageSizePolicy, Perms, SecondStageView, SparseMem, TableBuilder, VtdSsConfig,
    WalkConfig, X86Config,
};

use crate::timing::TimingParams;
use crate::vtd::layout::{PGTT_NESTED, PasidEntryQw0, PasidEntryQw1, PasidEntryQw2};
use crate::vtd::setup::RootTable;
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

/// A unit over `mem` with `cfg` and the timing parameters' cache geometry, translating
/// through the root table `rt`.
fn enable(
    mem: &'static SparseMem,
    mut cfg: VtdConfig,
    params: &TimingParams,
    rt: &RootTable,
) -> Unit {
    // The deviations (replacement policy, rounding) do not matter to these tests.
    let _ = params.apply_to_vtd(&mut cfg);
    let vtd = Vtd::new(mem, cfg, Box::new(|_| {})).unwrap();
    rt.enable(&vtd);
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
    // AW = 2 (4-level), DID 1; T = 00b over the second-stage tables.
    let mut rt = RootTable::new(mem, &mut alloc, false).unwrap();
    rt.legacy(mem, &mut alloc, SID, 1, 2, t.root()).unwrap();
    enable(mem, VtdConfig::default(), params, &rt)
}

/// Tables for a scalable-mode unit, in their memory: units built over them
/// ([`NestedTables::unit`]) share the tables and the flags earlier walks set in them.
pub(super) struct NestedTables {
    mem: &'static SparseMem,
    rt: RootTable,
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
        enable(self.mem, cfg, params, &self.rt)
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
    // Nested, AW = levels - 2, DID 3; FSPM 01b for a 5-level first stage.
    let qw0 = PasidEntryQw0::new()
        .with_p(true)
        .with_aw(levels - 2)
        .with_pgtt(PGTT_NESTED)
        .with_ssptptr_page(ss.root() >> 12);
    let qw1 = PasidEntryQw1::new().with_did(3);
    let qw2 = PasidEntryQw2::new()
        .with_fspm(levels - 4)
        .with_fsptptr_page(fs.root() >> 12);
    let mut rt = RootTable::new(mem, &mut alloc, true).unwrap();
    rt.pasid_entry(
        mem,
        &mut alloc,
        SID,
        PASID,
        [qw0.into_bits(), qw1.into_bits(), qw2.into_bits()],
    )
    .unwrap();
    NestedTables { mem, rt, levels }
}

//! The nested platform: a VT-d unit in scalable mode whose PASID-table entries are nested
//! (PGTT 011b, §9.6): each stream's first-stage tables, as a guest kernel builds them, live at
//! guest-physical addresses that one shared second stage (the hypervisor's) translates, as
//! does every first-stage output. Every translation that misses the IOTLB is a
//! two-dimensional walk.
//!
//! No driver programs nested translation (it is the core issue's nested domain), so this
//! platform writes the structures itself before the unit starts, as firmware would, and then
//! only translates: the unit reads nothing but these structures.
//!
//! Layout, inside [`PRIVATE`]: host structures and second-stage tables in the first half;
//! guest RAM for the first-stage tables (GPA `[0, GUEST_TABLES)`) mapped by the second stage to
//! the second half; buffers at GPA [`GUEST_BUFFERS`] up, mapped to [`BUFFERS_BASE`] up (never
//! read, so unbacked).

use pagewalk::{
    BumpAllocator, FlatMem, PageSizePolicy, Perms, SecondStageView, TableBuilder, VtdSsConfig,
    WalkConfig, X86Config,
};

use super::platform::{BUFFERS_BASE, BUFFERS_STRIDE, PRIVATE, PlatformError};
use super::workload::{Region, stream_rid};
use crate::VtdConfig;
use crate::vtd::Vtd;
use crate::vtd::layout::{PGTT_NESTED, PasidEntryQw0, PasidEntryQw1, PasidEntryQw2};
use crate::vtd::setup::RootTable;

/// Guest-physical bytes reserved for the guests' first-stage tables.
pub const GUEST_TABLES: u64 = 32 << 20;
/// Where the streams' buffers are in guest-physical space.
pub const GUEST_BUFFERS: u64 = 1 << 32;

fn build_err(what: &str, e: impl std::fmt::Display) -> PlatformError {
    PlatformError::Build(format!("{what}: {e}"))
}

/// A nested VT-d unit translating `regions` (each stream its own device and first stage,
/// one second stage for all) with pages of `page_size` in both stages.
pub fn nested_unit(
    cfg: &VtdConfig,
    regions: &[Region],
    page_size: u64,
) -> Result<Vtd<FlatMem>, PlatformError> {
    let mem = FlatMem::new(PRIVATE.base, PRIVATE.size as usize);
    let half = PRIVATE.size / 2;
    let mut host = BumpAllocator::new(PRIVATE.base, PRIVATE.base + half);
    let policy = PageSizePolicy::Fixed(page_size.trailing_zeros() as u8);
    // The second stage: guest RAM for tables, and every stream's buffers.
    let mut ss = TableBuilder::new(
        WalkConfig::VtdSecondStage(VtdSsConfig::new(4).with_haw(48)),
        &mem,
        &mut host,
    )
    .map_err(|e| build_err("second stage", e))?;
    ss.map(
        &mem,
        &mut host,
        0,
        PRIVATE.base + half,
        GUEST_TABLES,
        Perms::RW,
        policy,
    )
    .map_err(|e| build_err("guest RAM", e))?;
    for r in regions {
        let off = r.iova - regions_base(regions, r.stream);
        let gpa = GUEST_BUFFERS + u64::from(r.stream) * BUFFERS_STRIDE + off;
        let spa = BUFFERS_BASE + u64::from(r.stream) * BUFFERS_STRIDE + off;
        ss.map(&mem, &mut host, gpa, spa, r.len, Perms::RW, policy)
            .map_err(|e| build_err("second-stage buffers", e))?;
    }
    let s2_root = ss.root();
    let view = SecondStageView {
        mem: &mem,
        config: *ss.config(),
        root: s2_root,
    };
    // The scalable-mode root table and each stream's PASID-table entry (RID_PASID 0).
    let mut rt = RootTable::new(&mem, &mut host, true).map_err(|e| build_err("root table", e))?;
    let mut guest = BumpAllocator::new(0x10_0000, GUEST_TABLES);
    let mut streams: Vec<u32> = regions.iter().map(|r| r.stream).collect();
    streams.sort_unstable();
    streams.dedup();
    for &s in &streams {
        // The stream's first stage (4-level), at guest-physical addresses.
        let mut c = X86Config::vtd_first_stage(4);
        c.out_width = 48;
        let mut fs = TableBuilder::new(WalkConfig::VtdFirstStage(c), &view, &mut guest)
            .map_err(|e| build_err("first stage", e))?;
        for r in regions.iter().filter(|r| r.stream == s) {
            let gpa =
                GUEST_BUFFERS + u64::from(s) * BUFFERS_STRIDE + (r.iova - regions_base(regions, s));
            fs.map(
                &view,
                &mut guest,
                r.iova,
                gpa,
                r.len,
                Perms::RW | Perms::U,
                policy,
            )
            .map_err(|e| build_err("first-stage buffers", e))?;
        }
        if stream_rid(s) & 0xff >= 128 {
            return Err(build_err("streams", "at most 128 streams"));
        }
        // Nested, AW 2 (4-level second stage), the stream's own domain id.
        let qw0 = PasidEntryQw0::new()
            .with_p(true)
            .with_aw(2)
            .with_pgtt(PGTT_NESTED)
            .with_ssptptr_page(s2_root >> 12);
        let qw1 = PasidEntryQw1::new().with_did(1 + s as u16);
        let qw2 = PasidEntryQw2::new().with_fsptptr_page(fs.root() >> 12);
        rt.pasid_entry(
            &mem,
            &mut host,
            stream_rid(s),
            0,
            [qw0.into_bits(), qw1.into_bits(), qw2.into_bits()],
        )
        .map_err(|e| build_err("PASID entries", e))?;
    }
    let vtd = Vtd::new(mem, cfg.clone(), Box::new(|_| {})).map_err(|e| build_err("the unit", e))?;
    rt.enable(&vtd);
    Ok(vtd)
}

/// The first IOVA of stream `s`'s regions (its buffers are laid out from there).
fn regions_base(regions: &[Region], s: u32) -> u64 {
    regions
        .iter()
        .filter(|r| r.stream == s)
        .map(|r| r.iova)
        .min()
        .unwrap_or(0)
}

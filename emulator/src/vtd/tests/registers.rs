//! The register file: version, capabilities, MMIO access rules, global commands.

use super::*;

#[test]
fn registers_report_version_and_capabilities() {
    let d = Driver::new(VtdConfig::default());
    let cfg = VtdConfig::default();
    assert_eq!(d.r32(VER_REG), 0x60);
    assert_eq!(d.r64(CAP_REG), cfg.cap());
    assert_eq!(d.r64(ECAP_REG), cfg.ecap());
    assert_eq!(u64::from(d.r32(CAP_REG)), cfg.cap() & 0xffff_ffff);
    assert_eq!(u64::from(d.r32(CAP_REG + 4)), cfg.cap() >> 32);
    // Read-only registers ignore writes.
    d.w64(CAP_REG, 0);
    d.w64(ECAP_REG, 0);
    d.w32(VER_REG, 0);
    d.w32(GSTS_REG, 0xffff_ffff);
    assert_eq!(d.r64(CAP_REG), cfg.cap());
    assert_eq!(d.r32(GSTS_REG), 0);
    // GCMD reads as zero.
    assert_eq!(d.r32(GCMD_REG), 0);
    // FECTL and IECTL come out of reset masked.
    assert_eq!(d.r32(FECTL_REG), CTL_IM);
    assert_eq!(d.r32(IECTL_REG), CTL_IM);
}

#[test]
fn bad_mmio_accesses_are_ignored() {
    let d = Driver::new(VtdConfig::default());
    for (off, size) in [
        (0x21, 4),
        (0x22, 8),
        (0x20, 2),
        (0x20, 16),
        (0x20, 0),
        (0xfffc, 4),
    ] {
        assert_eq!(d.vtd.mmio_read(off, size), 0);
        d.vtd.mmio_write(off, size, u64::MAX);
    }
    d.vtd.mmio_write(u64::MAX - 3, 4, 1);
    assert_eq!(d.vtd.mmio_read(u64::MAX - 7, 8), 0);
    assert_eq!(d.r64(RTADDR_REG), 0);
    assert_eq!(d.r32(GSTS_REG), 0);
    // An unimplemented offset inside the register page reads zero.
    assert_eq!(d.r32(0x200), 0);
}

#[test]
fn global_command_status_follows_each_command() {
    let mut d = Driver::new(VtdConfig::default());
    d.w64(RTADDR_REG, 0x12_3000 | (1 << 10) | 0x3ff);
    // Reserved bits 9:0 are not kept.
    assert_eq!(d.r64(RTADDR_REG), 0x12_3000 | (1 << 10));
    d.gcmd(GCMD_SRTP, false, true);
    d.gcmd(GCMD_TE, true, true);
    d.enable_qi(false);
    assert_eq!(d.r32(GSTS_REG), GCMD_TE | GCMD_SRTP | GCMD_QIE);
    // Write-buffer flush completes at once.
    d.w32(GCMD_REG, d.gcmd | GCMD_WBF);
    assert_eq!(d.r32(GSTS_REG) & GCMD_WBF, 0);
    d.gcmd(GCMD_QIE, true, false);
    d.gcmd(GCMD_TE, true, false);
    assert_eq!(d.r32(GSTS_REG) & (GCMD_TE | GCMD_QIE), 0);
    // 32-bit halves of a 64-bit register.
    d.w32(RTADDR_REG, 0x4000);
    d.w32(RTADDR_REG + 4, 0x1);
    assert_eq!(d.r64(RTADDR_REG), 0x1_0000_4000);
}

#[test]
fn translation_disabled_passes_dma_through() {
    let d = Driver::new(VtdConfig::default());
    let t = d
        .translate(DmaRequest::new(0x10, 0xdead_b000, 8, AccessKind::Write))
        .unwrap();
    assert!(t.identity);
    assert_eq!(t.addr, 0xdead_b000);
}

/// Translation Disable on a unit reporting ECAP.SMTS performs a global invalidation of every
/// DMA-remapping cache (§10.4.4 GCMD.TE): after TE 1 -> 0 -> 1 with no invalidation from
/// software, the context, PASID and paging-structure caches and the IOTLB hold nothing of
/// before. Review finding 5: the old translation kept being served.
#[test]
fn translation_disable_invalidates_every_cache() {
    let mut d = scalable();
    let dev = sid(0, 6, 0);
    let mut t = d.ss_domain(2);
    d.map(&mut t, 0x20_0000, 0x7000_0000, 0x1000, RW);
    let dir = d.sm_context(dev, 0, false, 0);
    d.pasid_entry(dir, 0, ss_pasid(&t, 9));
    let tr = d
        .translate(DmaRequest::new(dev, 0x20_0010, 4, AccessKind::Read))
        .unwrap();
    assert_eq!((tr.addr, tr.domain_id), (0x7000_0010, 9));
    // Behind the caches: a new context entry, PASID directory, PASID entry (new DID) and
    // tables, and the old tables changed too.
    let mut t2 = d.ss_domain(2);
    d.map(&mut t2, 0x20_0000, 0x7100_0000, 0x1000, RW);
    let dir2 = d.sm_context(dev, 0, false, 0);
    d.pasid_entry(dir2, 0, ss_pasid(&t2, 10));
    d.unmap(&mut t, 0x20_0000, 0x1000);
    d.gcmd(GCMD_TE, true, false);
    d.enable_translation();
    let (r, trace) = d
        .vtd
        .translate(&DmaRequest::new(dev, 0x20_0010, 4, AccessKind::Read));
    let tr = r.unwrap();
    assert_eq!((tr.addr, tr.domain_id), (0x7100_0010, 10));
    for cache in [CacheId::Context, CacheId::Pasid, CacheId::Iotlb] {
        assert_eq!(trace.lookup(cache), Some(false), "{cache:?} was emptied");
    }
    assert_eq!(
        trace.lookup(CacheId::PagingStructure {
            stage: Stage::Second,
            level: 2
        }),
        Some(false)
    );
}

/// The index of the fault recording register the next fault goes to returns to 0 when both
/// translations are disabled (§7.2.1: TES and IRES clear; interrupt remapping is not offered),
/// as QEMU resets it on Translation Disable. Review §4: it kept counting.
#[test]
fn translation_disable_resets_the_fault_recording_index() {
    let (mut d, _t, dev) = legacy_with_domain();
    d.read(dev, 0x50_0000).unwrap_err();
    assert_eq!(d.frcd(0)[1] >> 63, 1);
    d.clear_frcd(0);
    d.gcmd(GCMD_TE, true, false);
    d.enable_translation();
    d.read(dev, 0x60_0000).unwrap_err();
    assert_eq!(d.frcd(0)[1] >> 63, 1, "recorded at index 0 again");
    assert_eq!(d.frcd(0)[0], 0x60_0000);
    assert_eq!(d.frcd(1)[1] >> 63, 0);
    assert_eq!((d.r32(FSTS_REG) >> FSTS_FRI_SHIFT) & 0xff, 0);
}

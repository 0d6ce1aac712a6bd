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

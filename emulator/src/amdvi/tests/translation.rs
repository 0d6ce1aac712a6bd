//! Translation through the device table, v1, v2 and v2-over-v1 tables, and the events faults
//! write, checked bit by bit.

use super::*;

const DEV: u16 = 0x08; // 00:01.0
const DID: u16 = 0x42;

/// A device with a Mode-3 v1 table mapping 0x10_0000 (read-only) and 0x20_0000 (2 MiB,
/// read-write).
fn v1_device(s: &mut Sw) -> TableBuilder {
    let mut t = s.v1_tables(3);
    s.map(&mut t, 0x10_0000, 0x7770_0000, 0x1000, PwPerms::R);
    s.map(&mut t, 0x20_0000, 0x4000_0000, 0x20_0000, PwPerms::RW);
    s.set_dte(DEV, [dte_q0(3, t.root(), true, true), u64::from(DID), 0, 0]);
    t
}

#[test]
fn v1_tables_translate_and_their_faults_log_io_page_faults() {
    let mut s = Sw::new();
    v1_device(&mut s);
    assert_eq!(s.read(DEV, 0x10_0123), Ok(0x7770_0123));
    let t = s
        .translate(&DmaRequest::new(DEV, 0x21_2345, 8, AccessKind::Write))
        .unwrap();
    assert_eq!((t.addr, t.page_shift, t.domain_id), (0x4001_2345, 21, DID));
    assert!(s.drain_raw().is_empty());
    // A write to the read-only page: present, permission, write.
    let f = s.write(DEV, 0x10_0000).unwrap_err();
    assert_eq!(f.kind, FaultKind::Permission);
    assert_eq!(f.code, 2);
    assert!(matches!(
        f.site,
        FaultSite::PageTable { level: Some(1), .. }
    ));
    // A read of nothing.
    let f = s.read(DEV, 0x60_0000).unwrap_err();
    assert_eq!(f.kind, FaultKind::NotPresent);
    // Beyond Mode 3's 39 bits.
    let f = s.read(DEV, 1 << 40).unwrap_err();
    assert_eq!(f.kind, FaultKind::AddressWidth);
    assert_eq!(
        s.drain_raw(),
        vec![
            io_page_fault(DEV, u32::from(DID), PR | PE | RW, 0x10_0000),
            io_page_fault(DEV, u32::from(DID), 0, 0x60_0000),
            io_page_fault(DEV, u32::from(DID), 0, 1 << 40),
        ]
    );
    assert!(s.irqs.lock().unwrap().contains(&AmdViEvent::EventLog));
}

/// Found by the `amdvi_unit` fuzz target: an input beyond the mode's width hit the IOTLB
/// entry of the input with the same low bits.
#[test]
fn an_input_beyond_the_mode_never_hits_a_cached_translation() {
    let mut s = Sw::new();
    v1_device(&mut s);
    assert_eq!(s.read(DEV, 0x10_0018), Ok(0x7770_0018));
    let f = s.read(DEV, (1 << 39) | 0x10_0018).unwrap_err();
    assert_eq!(f.kind, FaultKind::AddressWidth);
}

/// Found by the `amdvi_unit` fuzz target: a cached page-directory entry that skips a level
/// served an input whose skipped index bits are not zero, which the walk faults.
#[test]
fn a_cached_entry_that_skips_levels_serves_only_inputs_with_zero_skipped_bits() {
    let mut s = Sw::new();
    // Mode 3, whose root entry 0 points straight at a level-1 table (Next Level 1).
    let (root, leaf) = (s.frame(), s.frame());
    s.mem
        .write_u64(root, leaf | (1 << 9) | (3 << 61) | 1)
        .unwrap();
    s.mem
        .write_u64(leaf + 8, 0x5000_0000 | (3 << 61) | 1)
        .unwrap();
    s.set_dte(DEV, [dte_q0(3, root, true, true), u64::from(DID), 0, 0]);
    assert_eq!(s.read(DEV, 0x1008), Ok(0x5000_0008));
    // Bits 29:21 (the skipped level 2) are not zero.
    let f = s.read(DEV, 0x1008_0000 | 0x1008).unwrap_err();
    assert_eq!(f.kind, FaultKind::AddressWidth);
}

#[test]
fn dte_ir_iw_limit_every_v1_translation() {
    let mut s = Sw::new();
    let t = v1_device(&mut s);
    s.set_dte(
        DEV,
        [dte_q0(3, t.root(), true, false), u64::from(DID), 0, 0],
    );
    assert_eq!(s.read(DEV, 0x20_0000), Ok(0x4000_0000));
    let f = s.write(DEV, 0x20_0000).unwrap_err();
    assert_eq!(f.kind, FaultKind::Permission);
}

#[test]
fn the_dte_mode_and_valid_bits_give_the_spec_cases() {
    let mut s = Sw::new();
    // V = 1, TV = 0: blocked.
    s.set_dte(DEV, [1, u64::from(DID), 0, 0]);
    let f = s.read(DEV, 0x1000).unwrap_err();
    assert_eq!(
        (f.kind, f.site),
        (FaultKind::NotPresent, FaultSite::DeviceTable)
    );
    // Mode 0, IR = IW = 1: untranslated. Mode 0, IR only: writes fault.
    s.set_dte(DEV, [dte_q0(0, 0, true, true), u64::from(DID), 0, 0]);
    s.submit(&[command::encode::invalidate_devtab_entry(DEV)]);
    assert_eq!(s.write(DEV, 0xabc_d000), Ok(0xabc_d000));
    s.set_dte(DEV, [dte_q0(0, 0, true, false), u64::from(DID), 0, 0]);
    s.submit(&[command::encode::invalidate_devtab_entry(DEV)]);
    assert_eq!(s.read(DEV, 0xabc_d000), Ok(0xabc_d000));
    assert_eq!(
        s.write(DEV, 0xabc_d000).unwrap_err().kind,
        FaultKind::Permission
    );
    // Mode 0, IR = IW = 0: blocked (Linux's blocked DTE).
    s.set_dte(DEV, [dte_q0(0, 0, false, false), u64::from(DID), 0, 0]);
    s.submit(&[command::encode::invalidate_devtab_entry(DEV)]);
    let f = s.read(DEV, 0x2000).unwrap_err();
    assert_eq!(
        (f.kind, f.site),
        (FaultKind::NotPresent, FaultSite::DeviceTable)
    );
    // Mode 7: an invalid level.
    s.set_dte(
        DEV,
        [dte_q0(7, 0x10_0000, true, true), u64::from(DID), 0, 0],
    );
    s.submit(&[command::encode::invalidate_devtab_entry(DEV)]);
    assert_eq!(
        s.read(DEV, 0x3000).unwrap_err().kind,
        FaultKind::InvalidEntry
    );
    assert_eq!(
        s.drain_raw(),
        vec![
            io_page_fault(DEV, u32::from(DID), 0, 0x1000),
            io_page_fault(DEV, u32::from(DID), PE | RW, 0xabc_d000),
            io_page_fault(DEV, u32::from(DID), 0, 0x2000),
            io_page_fault(DEV, u32::from(DID), PR, 0x3000),
        ]
    );
}

#[test]
fn a_dte_with_reserved_bits_is_an_illegal_dev_table_entry() {
    let mut s = Sw::new();
    let t = v1_device(&mut s);
    let good = dte_q0(3, t.root(), true, true);
    for (q, bit) in [(0usize, 2u32), (0, 63), (0, 7), (1, 42), (3, 0)] {
        let mut dte = [good, u64::from(DID), 0, 0];
        dte[q] |= 1 << bit;
        s.set_dte(DEV, dte);
        s.submit(&[command::encode::invalidate_devtab_entry(DEV)]);
        let f = s.read(DEV, 0x10_0000).unwrap_err();
        assert_eq!(
            (f.kind, f.site, f.code),
            (FaultKind::InvalidEntry, FaultSite::DeviceTable, 1),
            "qword {q} bit {bit}"
        );
        // Hand-built ILLEGAL_DEV_TABLE_ENTRY: DeviceID, code 1; the address.
        assert_eq!(
            s.drain_raw(),
            vec![[u64::from(DEV) | (1 << 60), 0x10_0000]],
            "qword {q} bit {bit}"
        );
    }
    // IoCtl = 11b is a reserved encoding.
    s.set_dte(DEV, [good, u64::from(DID) | (3 << 35), 0, 0]);
    s.submit(&[command::encode::invalidate_devtab_entry(DEV)]);
    assert_eq!(s.read(DEV, 0x10_0000).unwrap_err().code, 1);
}

#[test]
fn an_unreadable_dte_or_page_table_is_a_hardware_error() {
    let s = Sw::new();
    // A two-page device table whose second page (device ids 128-255) is beyond memory.
    s.w64(reg::DEV_TAB_BASE, (MEM - 0x1000) | 1);
    let far = sid(0, 16, 1);
    let f = s.read(far, 0x1000).unwrap_err();
    assert_eq!((f.kind, f.code), (FaultKind::MemoryAccess, 3));
    let dte_at = MEM - 0x1000 + 32 * u64::from(far);
    // Hand-built DEV_TAB_HARDWARE_ERROR: DeviceID, Type = 01b (bit 57), code 3; the DTE.
    assert_eq!(
        s.drain_raw(),
        vec![[u64::from(far) | (1 << 57) | (3 << 60), dte_at]]
    );
    s.w64(reg::DEV_TAB_BASE, DEV_TAB | 1);
    // A host table root beyond memory.
    s.set_dte(
        DEV,
        [dte_q0(3, MEM + 0x1000, true, true), u64::from(DID), 0, 0],
    );
    let f = s.read(DEV, 0x1000).unwrap_err();
    assert_eq!((f.kind, f.code), (FaultKind::MemoryAccess, 4));
    let ev = s.drain_raw();
    assert_eq!(
        ev[0][0],
        u64::from(DEV) | (u64::from(DID) << 32) | (1 << 57) | (4 << 60)
    );
    assert_eq!(ev[0][1], MEM + 0x1000);
}

/// Guest tables of `levels` levels at system-physical addresses mapping `gva` to `pa`.
fn guest_tables(s: &mut Sw, gva: u64, pa: u64) -> TableBuilder {
    let mut g =
        TableBuilder::new(WalkConfig::AmdV2(X86Config::amd_v2(4)), s.mem, &mut s.alloc).unwrap();
    s.map(&mut g, gva, pa, 0x1000, PwPerms::RW | PwPerms::U);
    g
}

#[test]
fn direct_mapped_v2_passes_dma_without_pasid_and_translates_pasid_dma() {
    let mut s = Sw::new();
    let g = guest_tables(&mut s, 0x7000_0000, 0x5555_5000);
    // One-level GCR3 table: PASID 5's entry holds the guest CR3.
    let gcr3 = s.frame();
    s.mem.write_u64(gcr3 + 8 * 5, g.root() | 1).unwrap();
    let [q0, q1] = dte_guest(dte_q0(0, 0, true, true), 0, gcr3, DID);
    s.set_dte(DEV, [q0, q1, 0, 0]);
    // DMA without a PASID: identity under Mode 0.
    let t = s
        .translate(&DmaRequest::new(DEV, 0x7000_0000, 4, AccessKind::Write))
        .unwrap();
    assert!(t.identity);
    assert_eq!(t.addr, 0x7000_0000);
    // PASID 5: through the v2 table.
    let req = DmaRequest::new(DEV, 0x7000_0123, 4, AccessKind::Write).with_pasid(5);
    let t = s.translate(&req).unwrap();
    assert_eq!((t.addr, t.identity), (0x5555_5123, false));
    // A second time from the IOTLB.
    let (r, trace) = s.unit.translate(&req);
    assert_eq!(r.unwrap().addr, 0x5555_5123);
    assert!(iotlb_hit(&trace));
    // PASID 6 has no GCR3 entry: IO_PAGE_FAULT with GN and the PASID.
    let f = s
        .translate(&DmaRequest::new(DEV, 0x7000_0000, 4, AccessKind::Read).with_pasid(6))
        .unwrap_err();
    assert_eq!(
        (f.kind, f.site),
        (FaultKind::NotPresent, FaultSite::PasidTable)
    );
    // Beyond a one-level table's 512 PASIDs.
    assert!(
        s.translate(&DmaRequest::new(DEV, 0, 4, AccessKind::Read).with_pasid(512))
            .is_err()
    );
    assert_eq!(
        s.drain_raw(),
        vec![
            io_page_fault(DEV, 6, GN | US, 0x7000_0000),
            io_page_fault(DEV, 512, GN | US, 0),
        ]
    );
}

#[test]
fn two_level_gcr3_tables_index_pasid_bits_17_9_then_8_0() {
    let mut s = Sw::new();
    let g = guest_tables(&mut s, 0x1000, 0x6666_6000);
    let (top, leaf) = (s.frame(), s.frame());
    let pasid = (3 << 9) | 7;
    s.mem.write_u64(top + 8 * 3, leaf | 1).unwrap();
    s.mem.write_u64(leaf + 8 * 7, g.root() | 1).unwrap();
    let [q0, q1] = dte_guest(dte_q0(0, 0, true, true), 1, top, DID);
    s.set_dte(DEV, [q0, q1, 0, 0]);
    let req = DmaRequest::new(DEV, 0x1008, 4, AccessKind::Read).with_pasid(pasid);
    assert_eq!(s.translate(&req).map(|t| t.addr), Ok(0x6666_6008));
    // A GCR3 entry with a reserved bit (63:52).
    s.mem
        .write_u64(leaf + 8 * 8, g.root() | 1 | (1 << 60))
        .unwrap();
    let f = s
        .translate(&DmaRequest::new(DEV, 0x1008, 4, AccessKind::Read).with_pasid(pasid + 1))
        .unwrap_err();
    assert_eq!(
        (f.kind, f.site),
        (FaultKind::InvalidEntry, FaultSite::PasidTable)
    );
    assert_eq!(
        s.drain_raw(),
        vec![io_page_fault(DEV, pasid + 1, GN | US | PR | RZ, 0x1008)]
    );
}

#[test]
fn a_pasid_without_guest_translation_is_an_invalid_device_request() {
    let mut s = Sw::new();
    v1_device(&mut s);
    let f = s
        .translate(&DmaRequest::new(DEV, 0x10_0000, 4, AccessKind::Read).with_pasid(1))
        .unwrap_err();
    assert_eq!((f.kind, f.code), (FaultKind::Blocked, 8));
    // Hand-built INVALID_DEVICE_REQUEST: DeviceID, PASID 1 at 47:32, GN and US, code 8.
    assert_eq!(
        s.drain_raw(),
        vec![[
            u64::from(DEV) | (1 << 32) | (u64::from(GN | US) << 48) | (8 << 60),
            0x10_0000
        ]]
    );
}

#[test]
fn ats_translation_requests_need_dte_i_and_never_log_page_faults() {
    let mut s = Sw::new();
    let t = v1_device(&mut s);
    let mut req = DmaRequest::new(DEV, 0x60_0000, 4, AccessKind::Read);
    req.at = AddressType::TranslationRequest;
    assert_eq!(s.translate(&req).unwrap_err().code, 8, "DTE.I = 0");
    s.drain_raw();
    s.set_dte(
        DEV,
        [
            dte_q0(3, t.root(), true, true),
            u64::from(DID) | (1 << 32),
            0,
            0,
        ],
    );
    s.submit(&[command::encode::invalidate_devtab_entry(DEV)]);
    let none = s.translate(&req).unwrap();
    assert!(none.perms.is_empty());
    req.addr = 0x10_0000;
    let ro = s.translate(&req).unwrap();
    assert_eq!((ro.addr, ro.perms.write()), (0x7770_0000, false));
    assert!(s.drain_raw().is_empty());
}

#[test]
fn the_exclusion_range_passes_dma_of_devices_with_ex() {
    let mut s = Sw::new();
    let t = v1_device(&mut s);
    s.w64(reg::EXCLUSION_BASE, 0x60_0000 | 1);
    s.w64(reg::EXCLUSION_LIMIT, 0x60_f000);
    // Without DTE.EX or Allow, the range is translated (and faults).
    assert!(s.read(DEV, 0x60_0000).is_err());
    s.set_dte(
        DEV,
        [
            dte_q0(3, t.root(), true, true),
            u64::from(DID) | (1 << 39),
            0,
            0,
        ],
    );
    s.submit(&[command::encode::invalidate_devtab_entry(DEV)]);
    assert_eq!(s.read(DEV, 0x60_0010), Ok(0x60_0010));
    assert_eq!(s.read(DEV, 0x60_fff0), Ok(0x60_fff0));
    assert!(s.read(DEV, 0x61_0000).is_err());
    // Allow applies it to every device.
    let other = DEV + 1;
    s.set_dte(
        other,
        [dte_q0(3, t.root(), true, true), u64::from(DID), 0, 0],
    );
    assert!(s.read(other, 0x60_0000).is_err());
    s.w64(reg::EXCLUSION_BASE, 0x60_0000 | 3);
    assert_eq!(s.read(other, 0x60_0000), Ok(0x60_0000));
}

#[test]
fn sa_suppresses_io_page_fault_events_and_se_keeps_only_the_first() {
    let mut s = Sw::new();
    let t = v1_device(&mut s);
    s.set_dte(
        DEV,
        [
            dte_q0(3, t.root(), true, true),
            u64::from(DID) | (1 << 34),
            0,
            0,
        ],
    );
    let f = s.read(DEV, 0x60_0000).unwrap_err();
    assert!(!f.recorded);
    assert!(s.drain_raw().is_empty());
    s.set_dte(
        DEV,
        [
            dte_q0(3, t.root(), true, true),
            u64::from(DID) | (1 << 33),
            0,
            0,
        ],
    );
    s.submit(&[command::encode::invalidate_devtab_entry(DEV)]);
    assert!(s.read(DEV, 0x60_0000).unwrap_err().recorded);
    assert!(!s.read(DEV, 0x61_0000).unwrap_err().recorded);
    assert_eq!(s.drain_raw().len(), 1);
}

#[test]
fn v2_over_v1_translates_every_guest_structure_through_the_host_tables() {
    let mut s = Sw::new();
    // Guest-physical [0, 8 MiB) and one page at 9 MiB are system-physical 0x4000_0000 higher.
    const OFF: u64 = 0x4000_0000;
    let mut host = s.v1_tables(4);
    s.map(&mut host, 0, OFF, 8 << 20, PwPerms::RW);
    s.map(&mut host, 0x90_0000, OFF + 0x90_0000, 0x1000, PwPerms::RW);
    // The guest's own tables and GCR3 table, at guest-physical addresses.
    let gmem = Shifted {
        mem: s.mem,
        off: OFF,
    };
    let mut galloc = BumpAllocator::new(0x10_0000, 0x80_0000);
    let mut g =
        TableBuilder::new(WalkConfig::AmdV2(X86Config::amd_v2(4)), &gmem, &mut galloc).unwrap();
    g.map(
        &gmem,
        &mut galloc,
        0x7f00_0000_0000,
        0x90_0000,
        0x1000,
        PwPerms::RW | PwPerms::U,
        PageSizePolicy::LARGEST,
    )
    .unwrap();
    let gcr3 = galloc.alloc_frame().unwrap();
    for i in 0..512 {
        gmem.write_u64(gcr3 + 8 * i, 0).unwrap();
    }
    gmem.write_u64(gcr3 + 8 * 9, g.root() | 1).unwrap();
    let [q0, q1] = dte_guest(dte_q0(4, host.root(), true, true), 0, gcr3, DID);
    s.set_dte(DEV, [q0, q1, 0, 0]);
    let req = DmaRequest::new(DEV, 0x7f00_0000_0abc, 4, AccessKind::Write).with_pasid(9);
    let (r, trace) = s.unit.translate(&req);
    assert_eq!(r.unwrap().addr, OFF + 0x90_0abc);
    // The GCR3 entry was read at its system-physical address.
    assert!(trace.events().iter().any(|e| matches!(
        e,
        TraceEvent::MemRead {
            target: crate::trace::MemTarget::Gcr3Entry { level: 1 },
            addr
        } if *addr == OFF + gcr3 + 8 * 9
    )));
    // Without PASID: the host tables alone.
    assert_eq!(s.read(DEV, 0x90_0000), Ok(OFF + 0x90_0000));
    // A host unmap of the guest page's frame, invalidated with GN = 0, faults the nested
    // translation in the second stage.
    host.unmap(s.mem, &mut s.alloc, 0x90_0000, 0x1000).unwrap();
    s.submit(&[command::encode::invalidate_range(
        DID, None, 0x90_0000, 0x1000,
    )]);
    let f = s.translate(&req).unwrap_err();
    assert!(
        matches!(
            f.site,
            FaultSite::PageTable {
                stage: crate::trace::Stage::Second,
                ..
            }
        ),
        "{f:?}"
    );
}

//! Every command kind, the illegal-command stop, and the event log's overflow.

use super::*;
use command::encode;

const DEV: u16 = 0x10; // 00:02.0
const DID: u16 = 7;

/// A device with four 4 KiB pages at 0x1000_0000 (frames 8 KiB apart, so no larger page
/// covers them).
fn device(s: &mut Sw) -> TableBuilder {
    let mut t = s.v1_tables(4);
    for p in 0..4 {
        s.map(
            &mut t,
            0x1000_0000 + p * 0x1000,
            0x2000_0000 + p * 0x2000,
            0x1000,
            PwPerms::RW,
        );
    }
    s.set_dte(DEV, [dte_q0(4, t.root(), true, true), u64::from(DID), 0, 0]);
    t
}

#[test]
fn completion_wait_stores_and_interrupts() {
    let mut s = Sw::new();
    s.queue(&[encode::completion_wait(
        STATUS_WORD,
        0xfeed_f00d_1234_5678,
        true,
        true,
    )]);
    assert_eq!(s.mem.read_u64(STATUS_WORD).unwrap(), 0xfeed_f00d_1234_5678);
    assert_ne!(s.status() & 0b100, 0, "ComWaitInt");
    assert_eq!(*s.irqs.lock().unwrap(), vec![AmdViEvent::CompletionWait]);
    // The interrupt is signalled on ComWaitInt's rising edge only.
    s.queue(&[encode::completion_wait(STATUS_WORD, 2, true, false)]);
    assert_eq!(s.irqs.lock().unwrap().len(), 1);
    s.w64(reg::STATUS, 0b100);
    s.queue(&[encode::completion_wait(STATUS_WORD, 3, true, false)]);
    assert_eq!(s.irqs.lock().unwrap().len(), 2);
    assert_eq!(s.r64(reg::CMD_BUF_HEAD), s.r64(reg::CMD_BUF_TAIL));
}

#[test]
fn invalidate_devtab_entry_removes_the_cached_dte() {
    let mut s = Sw::new();
    let t = device(&mut s);
    assert_eq!(s.read(DEV, 0x1000_0000), Ok(0x2000_0000));
    // Block the device in memory: the cached DTE still translates until invalidated.
    s.set_dte(DEV, [dte_q0(0, 0, false, false), u64::from(DID), 0, 0]);
    let (r, trace) = s
        .unit
        .translate(&DmaRequest::new(DEV, 0x1000_0000, 4, AccessKind::Read));
    assert!(
        r.is_ok(),
        "a cached DTE (or translation) may be used until invalidated"
    );
    assert!(trace.events().iter().any(|e| matches!(
        e,
        TraceEvent::CacheLookup {
            cache: CacheId::Context,
            hit: true
        } | TraceEvent::CacheLookup {
            cache: CacheId::Iotlb,
            hit: true
        }
    )));
    s.submit(&[encode::invalidate_devtab_entry(DEV)]);
    assert!(s.read(DEV, 0x1000_0000).is_err());
    let _ = t;
}

#[test]
fn invalidate_iommu_pages_removes_what_it_names_and_only_with_the_right_domain() {
    let mut s = Sw::new();
    let mut t = device(&mut s);
    for p in 0..4 {
        assert!(s.read(DEV, 0x1000_0000 + p * 0x1000).is_ok());
    }
    for p in 0..4 {
        t.unmap(s.mem, &mut s.alloc, 0x1000_0000 + p * 0x1000, 0x1000)
            .unwrap();
    }
    // Another domain's invalidation leaves the stale entries: a hit is still legal.
    s.submit(&[encode::invalidate_range(DID + 1, None, 0x1000_0000, 0x4000)]);
    assert!(s.read(DEV, 0x1000_0000).is_ok());
    // One page (S = 0).
    s.submit(&[encode::invalidate_range(DID, None, 0x1000_0000, 0x1000)]);
    assert!(s.read(DEV, 0x1000_0000).is_err());
    assert!(
        s.read(DEV, 0x1000_1000).is_ok(),
        "a page outside the range stays cached"
    );
    // A range (S = 1): pages 1-3.
    s.submit(&[encode::invalidate_range(DID, None, 0x1000_1000, 0x3000)]);
    for p in 1..4 {
        assert!(s.read(DEV, 0x1000_0000 + p * 0x1000).is_err(), "page {p}");
    }
}

#[test]
fn invalidate_all_pages_and_iommu_all_remove_everything() {
    let mut s = Sw::new();
    let mut t = device(&mut s);
    assert!(s.read(DEV, 0x1000_2000).is_ok());
    for p in 0..4 {
        t.unmap(s.mem, &mut s.alloc, 0x1000_0000 + p * 0x1000, 0x1000)
            .unwrap();
    }
    s.submit(&[encode::invalidate_domain(DID, None)]);
    assert!(s.read(DEV, 0x1000_2000).is_err());
    s.drain_raw();
    // INVALIDATE_IOMMU_ALL drops the DTE cache too.
    s.map(&mut t, 0x1000_0000, 0x2000_0000, 0x1000, PwPerms::RW);
    assert!(s.read(DEV, 0x1000_0000).is_ok());
    s.set_dte(DEV, [1, 0, 0, 0]);
    s.submit(&[encode::invalidate_all()]);
    assert!(s.read(DEV, 0x1000_0000).is_err(), "TV = 0 after the flush");
}

#[test]
fn a_guest_invalidation_names_one_pasid_and_its_gcr3_entry() {
    let mut s = Sw::new();
    let mut g =
        TableBuilder::new(WalkConfig::AmdV2(X86Config::amd_v2(4)), s.mem, &mut s.alloc).unwrap();
    s.map(&mut g, 0x4000, 0x8000, 0x1000, PwPerms::RW | PwPerms::U);
    let gcr3 = s.frame();
    s.mem.write_u64(gcr3 + 8, g.root() | 1).unwrap();
    s.mem.write_u64(gcr3 + 16, g.root() | 1).unwrap();
    let [q0, q1] = dte_guest(dte_q0(0, 0, true, true), 0, gcr3, DID);
    s.set_dte(DEV, [q0, q1, 0, 0]);
    let req = |p| DmaRequest::new(DEV, 0x4000, 4, AccessKind::Read).with_pasid(p);
    assert!(s.translate(&req(1)).is_ok() && s.translate(&req(2)).is_ok());
    // PASID 1's GCR3 entry cleared: cached until the PASID's invalidation (PDE = 1).
    s.mem.write_u64(gcr3 + 8, 0).unwrap();
    s.submit(&[encode::invalidate_domain(DID, Some(2))]);
    assert!(s.translate(&req(1)).is_ok());
    s.submit(&[encode::invalidate_domain(DID, Some(1))]);
    assert!(s.translate(&req(1)).is_err());
    assert!(s.translate(&req(2)).is_ok());
}

#[test]
fn prefetch_fills_the_iotlb_and_the_remote_commands_complete() {
    let mut s = Sw::new();
    device(&mut s);
    let q0 = PrefetchQw0::new()
        .with_device_id(DEV)
        .with_pf_count(2)
        .with_op(opcode::PREFETCH_IOMMU_PAGES);
    s.submit(&[[q0.into_bits(), 0x1000_0000]]);
    let (r, trace) = s
        .unit
        .translate(&DmaRequest::new(DEV, 0x1000_1000, 4, AccessKind::Read));
    assert_eq!(r.unwrap().addr, 0x2000_2000);
    assert!(iotlb_hit(&trace), "the prefetched page hits");
    // INVALIDATE_IOTLB_PAGES and INVALIDATE_INTERRUPT_TABLE complete (nothing is cached on the
    // device side or for interrupts).
    let iotlb = InvIotlbQw0::new()
        .with_device_id(DEV)
        .with_queue_id(DEV)
        .with_op(opcode::INVALIDATE_IOTLB_PAGES);
    let irt = DeviceCommand::new()
        .with_device_id(DEV)
        .with_op(opcode::INVALIDATE_INTERRUPT_TABLE);
    s.submit(&[[iotlb.into_bits(), 0x1000_0000], [irt.into_bits(), 0]]);
    assert_eq!(s.unit.stats().commands, 5);
}

#[test]
fn an_illegal_command_stops_the_buffer_and_logs_its_address() {
    let mut s = Sw::new();
    // COMPLETE_PPR_REQUEST without EFR.PPRSup, then a wait that must not run.
    let ppr = CompletePprQw0::new()
        .with_device_id(DEV)
        .with_op(opcode::COMPLETE_PPR_REQUEST);
    s.queue(&[
        [ppr.into_bits(), 0],
        encode::completion_wait(STATUS_WORD, 77, false, false),
    ]);
    assert_ne!(s.mem.read_u64(STATUS_WORD).unwrap(), 77);
    assert_eq!(s.status() & 0b1_0000, 0, "CmdBufRun clear");
    assert_eq!(
        s.r64(reg::CMD_BUF_HEAD),
        0,
        "the head stays on the illegal command"
    );
    // Hand-built ILLEGAL_COMMAND_ERROR: code 5; the command's address.
    assert_eq!(s.drain_raw(), vec![[5 << 60, CMD_BUF]]);
    // More commands do not run until the buffer is restarted.
    s.queue(&[encode::completion_wait(STATUS_WORD, 78, false, false)]);
    assert_ne!(s.mem.read_u64(STATUS_WORD).unwrap(), 78);
    // Restart as Linux does: CmdBufEn off, head and tail to 0, back on.
    let ctl = s.r64(reg::CONTROL);
    s.w64(reg::CONTROL, ctl & !(1 << 12));
    s.w64(reg::CMD_BUF_HEAD, 0);
    s.w64(reg::CMD_BUF_TAIL, 0);
    s.cmd_tail = 0;
    s.w64(reg::CONTROL, ctl);
    s.submit(&[]);
    // A reserved bit and an unknown opcode are illegal too.
    for bad in [
        [encode::invalidate_devtab_entry(DEV)[0] | (1 << 40), 0],
        [0xc << 60, 0],
    ] {
        let at = CMD_BUF + s.cmd_tail;
        s.queue(&[bad]);
        assert_eq!(s.drain_raw(), vec![[5 << 60, at]]);
        let ctl = s.r64(reg::CONTROL);
        s.w64(reg::CONTROL, ctl & !(1 << 12));
        s.w64(reg::CMD_BUF_HEAD, s.cmd_tail);
        s.w64(reg::CONTROL, ctl);
    }
}

#[test]
fn an_unreadable_command_is_a_command_hardware_error() {
    let s = Sw::new();
    // A 512-entry ring whose second page is beyond memory; the head on its first command.
    s.w64(reg::CMD_BUF_BASE, (MEM - 0x1000) | (9 << 56));
    s.w64(reg::CMD_BUF_HEAD, 0x1000);
    s.w64(reg::CMD_BUF_TAIL, 0x1000 + 16);
    assert_eq!(s.status() & 0b1_0000, 0);
    assert_eq!(s.drain_raw(), vec![[6 << 60, MEM]]);
}

#[test]
fn a_full_event_log_overflows_and_stops_until_logging_is_restarted() {
    let mut s = Sw::new();
    device(&mut s);
    // 256 entries: 255 fit (one slot stays free).
    for i in 0..256u64 {
        let f = s.read(DEV, 0x5000_0000 + i * 0x1000).unwrap_err();
        assert_eq!(f.recorded, i < 255, "fault {i}");
    }
    let st = s.status();
    assert_ne!(st & 1, 0, "EventOverflow");
    assert_eq!(st & 0b1000, 0, "EventLogRun clear");
    assert_eq!(s.drain_raw().len(), 255);
    assert!(
        !s.read(DEV, 0x6000_0000).unwrap_err().recorded,
        "the log is stopped"
    );
    // Restart: EventLogEn off and on.
    let ctl = s.r64(reg::CONTROL);
    s.w64(reg::CONTROL, ctl & !(1 << 2));
    s.w64(reg::CONTROL, ctl);
    assert_eq!(s.status() & 0b1001, 0b1000);
    assert!(s.read(DEV, 0x6000_0000).unwrap_err().recorded);
}

/// v2 tables of `levels` levels at system-physical addresses mapping the 4 KiB page `gva` to
/// `pa` (a supervisor page, so user and privileged requests reach it), whose guest CR3 is
/// PASID 1's GCR3 entry; the DTE has Mode 0 (no host translation) and, with `giov`, GIoV.
fn v2_device(s: &mut Sw, levels: u8, gva: u64, pa: u64, giov: bool) -> TableBuilder {
    let mut g = TableBuilder::new(
        WalkConfig::AmdV2(X86Config::amd_v2(levels)),
        s.mem,
        &mut s.alloc,
    )
    .unwrap();
    s.map(&mut g, gva, pa, 0x1000, PwPerms::RW | PwPerms::U);
    let gcr3 = s.frame();
    s.mem.write_u64(gcr3, g.root() | 1).unwrap();
    s.mem.write_u64(gcr3 + 8, g.root() | 1).unwrap();
    let [mut q0, q1] = dte_guest(dte_q0(0, 0, true, true), 0, gcr3, DID);
    if giov {
        q0 |= 1 << 54;
    }
    let q2 = u64::from(levels - 4) << 54; // GPM, DTE bits 183:182 (qword 2 bits 55:54)
    s.set_dte(DEV, [q0, q1, q2, 0]);
    g
}

/// Remaps `gva`'s page of `g` to `pa`, in memory only.
fn remap(s: &mut Sw, g: &mut TableBuilder, gva: u64, pa: u64) {
    g.unmap(s.mem, &mut s.alloc, gva, 0x1000).unwrap();
    s.map(g, gva, pa, 0x1000, PwPerms::RW | PwPerms::U);
}

/// Translates `req`: its output and whether the IOTLB served it.
fn xlate(s: &Sw, req: &DmaRequest) -> (u64, bool) {
    let (r, trace) = s.unit.translate(req);
    (r.unwrap().addr, iotlb_hit(&trace))
}

/// v2 (guest) addresses are sign-extended, x86-canonical (§2.2.6: the guest tables are x86
/// long-mode tables), and software names an upper-half page by that address in
/// INVALIDATE_IOMMU_PAGES (§2.4.3: Address[63:12]; Linux passes the IOVA as it is). The unit's
/// tags keep the low 57 bits of a v2 input (`xlate::tag_input`): the invalidation's address
/// must be reduced the same way, or an upper-half page's translation is never dropped (the
/// AMD-Vi side of VT-d review finding 8). Checked for 4- and 5-level guest tables, S = 0 and
/// S = 1.
#[test]
fn a_guest_page_invalidation_of_an_upper_half_address_drops_its_translation() {
    for (levels, high) in [
        (4, 0xffff_8000_0000_0000u64),
        (4, 0xffff_ffff_ffff_f000),
        (5, 0xff00_0000_0010_0000),
    ] {
        let mut s = Sw::with(AmdViConfig {
            guest_levels: 5,
            ..AmdViConfig::default()
        });
        s.bring_up(Control::new().with_gt_en(true));
        let mut g = v2_device(&mut s, levels, high, 0x6100_0000, false);
        let low = 0x0010_0000;
        s.map(&mut g, low, 0x6500_0000, 0x1000, PwPerms::RW | PwPerms::U);
        let req = DmaRequest::new(DEV, high | 0x20, 4, AccessKind::Read).with_pasid(1);
        let low_req = DmaRequest { addr: low, ..req };
        assert_eq!(s.translate(&req).unwrap().addr, 0x6100_0020, "{high:#x}");
        assert_eq!(xlate(&s, &req), (0x6100_0020, true), "warm: {high:#x}");
        assert_eq!(s.translate(&low_req).unwrap().addr, 0x6500_0000);

        // One page, S = 0, leaf entries only (PDE = 0).
        remap(&mut s, &mut g, high, 0x6200_0000);
        s.submit(&[encode::invalidate_iommu_pages(PagesInvalidation {
            domain: DID,
            pasid: Some(1),
            addr: high,
            s: false,
            pde: false,
        })]);
        assert_eq!(xlate(&s, &req), (0x6200_0020, false), "S=0: {high:#x}");
        assert_eq!(
            xlate(&s, &low_req),
            (0x6500_0000, true),
            "a lower-half page is not named: {high:#x}"
        );

        // A 16 KiB range around the page, S = 1 (bit 13 of the address is its lowest clear
        // bit at or above bit 12 when bit 12 is set), page-directory entries too.
        remap(&mut s, &mut g, high, 0x6300_0000);
        let base = high & !0x3fff;
        s.submit(&[encode::invalidate_range(DID, Some(1), base, 0x4000)]);
        assert_eq!(xlate(&s, &req), (0x6300_0020, false), "S=1: {high:#x}");
    }
}

/// Under GIoV a request without PASID is translated through PASID 0's v2 tables, and Linux's
/// v2 DMA domains invalidate them with GN = 1 and PASID 0 (`domain_flush_pages_v2`); GN = 0
/// names host addresses (§2.4.3), but the unit drops more than asked rather than keep an
/// upper-half guest translation it names: both find the page.
#[test]
fn an_upper_half_giov_translation_is_dropped_by_gn_1_pasid_0_and_by_gn_0() {
    for pasid in [Some(0), None] {
        let mut s = Sw::new();
        let high = 0xffff_c000_1234_5000u64;
        let mut g = v2_device(&mut s, 4, high, 0x6100_0000, true);
        let req = DmaRequest::new(DEV, high, 8, AccessKind::Write);
        assert_eq!(s.translate(&req).unwrap().addr, 0x6100_0000);
        assert!(xlate(&s, &req).1);
        remap(&mut s, &mut g, high, 0x6200_0000);
        s.submit(&[encode::invalidate_range(DID, pasid, high, 0x1000)]);
        assert_eq!(xlate(&s, &req), (0x6200_0000, false), "{pasid:?}");
    }
}

/// v1 (host) addresses are not sign-extended: a Mode-6 table translates all 64 bits, and a
/// GN = 0 invalidation of a page above bit 56 must still find it (reducing its address as a
/// v2 one is reduced would name another page). A Mode-4 table does not take an upper-half
/// address as its lower 48 bits: it is beyond the mode's width.
#[test]
fn a_host_page_invalidation_above_bit_56_drops_a_mode_6_translation() {
    let mut s = Sw::new();
    let mut t = s.v1_tables(6);
    let far = 0xffff_8000_0000_0000u64;
    s.map(&mut t, far, 0x6100_0000, 0x1000, PwPerms::RW);
    s.set_dte(DEV, [dte_q0(6, t.root(), true, true), u64::from(DID), 0, 0]);
    let req = DmaRequest::new(DEV, far | 0x10, 4, AccessKind::Read);
    assert_eq!(s.read(DEV, far | 0x10), Ok(0x6100_0010));
    assert!(xlate(&s, &req).1);
    t.unmap(s.mem, &mut s.alloc, far, 0x1000).unwrap();
    s.map(&mut t, far, 0x6200_0000, 0x1000, PwPerms::RW);
    s.submit(&[encode::invalidate_range(DID, None, far, 0x1000)]);
    assert_eq!(xlate(&s, &req), (0x6200_0010, false));

    let mut s = Sw::new();
    let mut t = s.v1_tables(4);
    let low48 = far & 0xffff_ffff_ffff;
    s.map(&mut t, low48, 0x6100_0000, 0x1000, PwPerms::RW);
    s.set_dte(DEV, [dte_q0(4, t.root(), true, true), u64::from(DID), 0, 0]);
    assert_eq!(s.read(DEV, low48), Ok(0x6100_0000));
    assert_eq!(
        s.read(DEV, far).unwrap_err().kind,
        FaultKind::AddressWidth,
        "v1 inputs are not sign-extended"
    );
}

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

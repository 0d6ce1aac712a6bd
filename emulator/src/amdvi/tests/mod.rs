//! A test-side driver that programs the unit only through its MMIO registers and memory, as a
//! guest's `amd_iommu` would, and the tests built on it. Event records are checked against
//! hand-built words, not against the unit's own encoder.

use std::sync::{Arc, Mutex};

use pagewalk::{
    AmdV1Config, BumpAllocator, FrameAllocator, MemError, PageSizePolicy, Perms as PwPerms,
    PhysMem, SparseMem, TableBuilder, WalkConfig, X86Config,
};

use super::layout::*;
use super::*;
use crate::request::{AccessKind, AddressType, DmaRequest, FaultKind, FaultSite, Translation};
use crate::trace::{CacheId, TraceEvent};

mod commands;
mod properties;
mod reset;
mod translation;

const MEM: u64 = 1 << 32;
/// Where the test driver's structures live.
const TABLES: (u64, u64) = (0x0100_0000, 0x0800_0000);
const DEV_TAB: u64 = 0x0080_0000;
const CMD_BUF: u64 = 0x00a0_0000;
const EVT_LOG: u64 = 0x00a1_0000;
const STATUS_WORD: u64 = 0x00a2_0000;

/// Drives an [`AmdVi`] the way a guest driver does.
struct Sw {
    unit: AmdVi<&'static SparseMem>,
    mem: &'static SparseMem,
    alloc: BumpAllocator,
    irqs: Arc<Mutex<Vec<AmdViEvent>>>,
    cmd_tail: u64,
    seq: u64,
}

fn sid(bus: u16, dev: u16, func: u16) -> u16 {
    (bus << 8) | (dev << 3) | func
}

impl Sw {
    fn with(cfg: AmdViConfig) -> Self {
        let mem: &'static SparseMem = Box::leak(Box::new(SparseMem::new(MEM)));
        let irqs = Arc::new(Mutex::new(Vec::new()));
        let i = irqs.clone();
        let unit = AmdVi::new(mem, cfg, Box::new(move |e| i.lock().unwrap().push(e))).unwrap();
        Self {
            unit,
            mem,
            alloc: BumpAllocator::new(TABLES.0, TABLES.1),
            irqs,
            cmd_tail: 0,
            seq: 0,
        }
    }

    /// A unit with the default configuration, brought up as Linux does: device table (two
    /// pages: device ids 0-255), command buffer and event log (256 entries each), then
    /// CmdBufEn, EventLogEn, EventIntEn, ComWaitIntEn, GTEn and IommuEn.
    fn new() -> Self {
        let mut s = Self::with(AmdViConfig::default());
        s.bring_up(Control::new().with_gt_en(true));
        s
    }

    fn bring_up(&mut self, extra: Control) {
        self.w64(reg::DEV_TAB_BASE, DEV_TAB | 1);
        self.w64(reg::CMD_BUF_BASE, CMD_BUF | (8 << 56));
        self.w64(reg::EVENT_LOG_BASE, EVT_LOG | (8 << 56));
        let ctl = extra
            .with_iommu_en(true)
            .with_cmd_buf_en(true)
            .with_event_log_en(true)
            .with_event_int_en(true)
            .with_com_wait_int_en(true);
        self.w64(reg::CONTROL, ctl.into_bits());
    }

    fn frame(&mut self) -> u64 {
        let f = self.alloc.alloc_frame().expect("table memory");
        for i in 0..512 {
            self.mem.write_u64(f + i * 8, 0).unwrap();
        }
        f
    }

    fn r64(&self, off: u64) -> u64 {
        self.unit.mmio_read(off, 8)
    }
    fn w64(&self, off: u64, v: u64) {
        self.unit.mmio_write(off, 8, v);
    }
    fn status(&self) -> u64 {
        self.r64(reg::STATUS)
    }

    /// Writes a DTE (qword 0 last, so V appears last).
    fn set_dte(&self, sid: u16, q: [u64; 4]) {
        let at = DEV_TAB + 32 * u64::from(sid);
        for i in [3, 2, 1, 0] {
            self.mem.write_u64(at + 8 * i, q[i as usize]).unwrap();
        }
    }

    /// Queues raw commands and moves the tail, without a wait.
    fn queue(&mut self, cmds: &[[u64; 2]]) {
        for c in cmds {
            let at = CMD_BUF + self.cmd_tail;
            self.mem.write_u64(at, c[0]).unwrap();
            self.mem.write_u64(at + 8, c[1]).unwrap();
            self.cmd_tail = (self.cmd_tail + 16) % 4096;
        }
        self.w64(reg::CMD_BUF_TAIL, self.cmd_tail);
    }

    /// Submits `cmds` and a COMPLETION_WAIT, and asserts the wait's store arrived.
    fn submit(&mut self, cmds: &[[u64; 2]]) {
        self.seq += 1;
        let mut all = cmds.to_vec();
        all.push(command::encode::completion_wait(
            STATUS_WORD,
            self.seq,
            false,
            false,
        ));
        self.queue(&all);
        assert_eq!(
            self.mem.read_u64(STATUS_WORD).unwrap(),
            self.seq,
            "COMPLETION_WAIT did not store (status {:#x})",
            self.status()
        );
    }

    /// The event-log records from head to tail, raw; the head is moved to the tail.
    fn drain_raw(&self) -> Vec<[u64; 2]> {
        let mut head = self.r64(reg::EVENT_LOG_HEAD);
        let tail = self.r64(reg::EVENT_LOG_TAIL);
        let mut out = Vec::new();
        while head != tail {
            let at = EVT_LOG + head;
            out.push([
                self.mem.read_u64(at).unwrap(),
                self.mem.read_u64(at + 8).unwrap(),
            ]);
            head = (head + 16) % 4096;
        }
        self.w64(reg::EVENT_LOG_HEAD, tail);
        out
    }

    fn translate(&self, req: &DmaRequest) -> Result<Translation, Fault> {
        self.unit.translate(req).0
    }

    fn read(&self, sid: u16, iova: u64) -> Result<u64, Fault> {
        self.translate(&DmaRequest::new(sid, iova, 4, AccessKind::Read))
            .map(|t| t.addr)
    }

    fn write(&self, sid: u16, iova: u64) -> Result<u64, Fault> {
        self.translate(&DmaRequest::new(sid, iova, 4, AccessKind::Write))
            .map(|t| t.addr)
    }

    /// New v1 host tables of `mode` levels.
    fn v1_tables(&mut self, mode: u8) -> TableBuilder {
        TableBuilder::new(
            WalkConfig::AmdV1(AmdV1Config::new(mode)),
            self.mem,
            &mut self.alloc,
        )
        .unwrap()
    }

    fn map(&mut self, t: &mut TableBuilder, iova: u64, pa: u64, len: u64, perms: PwPerms) {
        t.map(
            self.mem,
            &mut self.alloc,
            iova,
            pa,
            len,
            perms,
            PageSizePolicy::LARGEST,
        )
        .unwrap();
    }
}

/// Hand-built DTE qword 0: V, TV, Mode (11:9), host root (51:12), IR (61), IW (62).
fn dte_q0(mode: u64, root: u64, ir: bool, iw: bool) -> u64 {
    1 | 2 | (mode << 9) | root | (u64::from(ir) << 61) | (u64::from(iw) << 62)
}

/// Hand-built DTE qwords 0 and 1 for guest translation: GV (55), GLX (57:56), the GCR3 root
/// split across qword 0 bits 60:58 and qword 1 bits 31:16 and 63:43, DomainID in qword 1 15:0.
fn dte_guest(q0: u64, glx: u64, gcr3: u64, did: u16) -> [u64; 2] {
    let q0 = q0 | (1 << 55) | (glx << 56) | (((gcr3 >> 12) & 7) << 58);
    let q1 = u64::from(did) | (((gcr3 >> 15) & 0xffff) << 16) | ((gcr3 >> 31) << 43);
    [q0, q1]
}

/// A hand-built IO_PAGE_FAULT record (§2.5.3): DeviceID 15:0, DomainID or PASID[15:0] 47:32,
/// PASID[19:16] 19:16, flags 59:48, code 2 at 63:60; qword 1 the address.
fn io_page_fault(device: u16, did_or_pasid: u32, flags: u16, addr: u64) -> [u64; 2] {
    let q0 = u64::from(device)
        | (u64::from((did_or_pasid >> 16) & 0xf) << 16)
        | (u64::from(did_or_pasid & 0xffff) << 32)
        | (u64::from(flags) << 48)
        | (2 << 60);
    [q0, addr]
}

/// Flag bits, as the spec numbers them within the 12-bit field.
const GN: u16 = 1 << 0;
const US: u16 = 1 << 2;
const PR: u16 = 1 << 4;
const RW: u16 = 1 << 5;
const PE: u16 = 1 << 6;
const RZ: u16 = 1 << 7;

fn iotlb_hit(trace: &crate::trace::Trace) -> bool {
    trace.events().iter().any(|e| {
        matches!(
            e,
            TraceEvent::CacheLookup {
                cache: CacheId::Iotlb,
                hit: true
            }
        )
    })
}

/// A view of memory at an offset: guest-physical addresses `g` are system-physical `g + off`
/// (the guest side of a two-dimensional test).
struct Shifted {
    mem: &'static SparseMem,
    off: u64,
}

impl PhysMem for Shifted {
    fn read_u64(&self, a: u64) -> Result<u64, MemError> {
        self.mem.read_u64(a + self.off)
    }
    fn write_u64(&self, a: u64, v: u64) -> Result<(), MemError> {
        self.mem.write_u64(a + self.off, v)
    }
    fn compare_exchange_u64(&self, a: u64, c: u64, n: u64) -> Result<Result<u64, u64>, MemError> {
        self.mem.compare_exchange_u64(a + self.off, c, n)
    }
    fn write_u32(&self, a: u64, v: u32) -> Result<(), MemError> {
        self.mem.write_u32(a + self.off, v)
    }
    fn read_u32(&self, a: u64) -> Result<u32, MemError> {
        self.mem.read_u32(a + self.off)
    }
}

#[test]
fn efr_reports_the_configuration_at_its_spec_bits() {
    let s = Sw::with(AmdViConfig {
        prefetch: false,
        invalidate_all: true,
        host_levels: 5,
        guest_levels: 5,
        gcr3_levels: 2,
        pasid_bits: 16,
        ..AmdViConfig::default()
    });
    let efr = s.r64(reg::EFR);
    // Hand-built: NXSup (3), GTSup (4), IASup (6), HATS 01b (11:10), GATS 01b (13:12), GLXSup
    // 01b (15:14), PASmax 15 (36:32), GIoSup (48).
    let want =
        (1 << 3) | (1 << 4) | (1 << 6) | (1 << 10) | (1 << 12) | (1 << 14) | (15 << 32) | (1 << 48);
    assert_eq!(efr, want, "{efr:#x}");
    // EFR is read-only.
    s.w64(reg::EFR, 0);
    assert_eq!(s.r64(reg::EFR), want);
}

#[test]
fn registers_follow_their_write_semantics() {
    let mut s = Sw::with(AmdViConfig::default());
    // A base write resets the ring's head and tail.
    s.w64(reg::CMD_BUF_BASE, CMD_BUF | (8 << 56));
    s.w64(reg::CMD_BUF_HEAD, 0x30);
    s.w64(reg::CMD_BUF_TAIL, 0x7_fff0 | 0xf);
    assert_eq!(s.r64(reg::CMD_BUF_HEAD), 0x30);
    assert_eq!(s.r64(reg::CMD_BUF_TAIL), 0x7_fff0, "bits 18:4 only");
    s.w64(reg::CMD_BUF_BASE, CMD_BUF | (9 << 56));
    assert_eq!((s.r64(reg::CMD_BUF_HEAD), s.r64(reg::CMD_BUF_TAIL)), (0, 0));
    assert_eq!(s.r64(reg::CMD_BUF_BASE), CMD_BUF | (9 << 56));
    // 4-byte accesses reach each half.
    s.unit.mmio_write(reg::EXCLUSION_BASE + 4, 4, 0x1);
    s.unit.mmio_write(reg::EXCLUSION_BASE, 4, 0x5000_0003);
    assert_eq!(s.r64(reg::EXCLUSION_BASE), 0x1_5000_0003);
    assert_eq!(s.unit.mmio_read(reg::EXCLUSION_BASE + 4, 4), 1);
    assert_eq!(s.r64(reg::EXCLUSION_LIMIT), 0, "reset value");
    s.w64(reg::EXCLUSION_LIMIT, 0x1234_5678);
    assert_eq!(
        s.r64(reg::EXCLUSION_LIMIT),
        0x1234_5fff,
        "bits 11:0 read as ones"
    );
    // Unaligned and odd-sized accesses are ignored.
    s.unit.mmio_write(reg::CONTROL + 1, 4, u64::MAX);
    s.unit.mmio_write(reg::CONTROL, 2, u64::MAX);
    assert_eq!(s.r64(reg::CONTROL), 0);
    // The run bits follow IommuEn and the enables.
    s.w64(
        reg::CONTROL,
        Control::new().with_cmd_buf_en(true).into_bits(),
    );
    assert_eq!(s.status() & 0b1_1000, 0, "CmdBufRun needs IommuEn");
    s.bring_up(Control::new());
    assert_eq!(s.status() & 0b1_1000, 0b1_1000, "EventLogRun and CmdBufRun");
    // Status: only the write-1-to-clear bits clear.
    s.submit(&[]);
    s.queue(&[command::encode::completion_wait(
        STATUS_WORD,
        1,
        true,
        false,
    )]);
    assert_ne!(s.status() & 0b100, 0, "ComWaitInt");
    s.w64(reg::STATUS, u64::MAX);
    assert_eq!(s.status(), 0b1_1000);
}

#[test]
fn a_disabled_unit_and_an_invalid_dte_pass_dma_untranslated() {
    let s = Sw::with(AmdViConfig::default());
    assert_eq!(s.read(sid(0, 1, 0), 0xdead_b000), Ok(0xdead_b000));
    let s = Sw::new();
    // V = 0 (the device table is zero).
    assert_eq!(s.write(sid(0, 1, 0), 0x1234_5678), Ok(0x1234_5678));
    assert!(s.drain_raw().is_empty());
    // Beyond the device table (two pages: device ids 0-255): IO_PAGE_FAULT.
    let far = sid(2, 0, 0);
    assert!(s.read(far, 0x1000).is_err());
    assert_eq!(s.drain_raw(), vec![io_page_fault(far, 0, 0, 0x1000)]);
}

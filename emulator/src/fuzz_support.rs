//! The robustness checks shared by the cargo-fuzz targets (`fuzz/fuzz_targets/amdvi_unit.rs`,
//! `vtd_unit.rs`), their corpus replays (`tests/fuzz_replay.rs`) and proptests.
//!
//! [`check_vtd`] does for a VT-d unit what [`check_amdvi`] does for AMD-Vi: root, context and
//! PASID structures and second-stage entries in place of DTEs and GCR3 entries, invalidation
//! descriptors at the queue's tail in place of commands, and global context-cache, PASID-cache
//! and IOTLB invalidations with a wait as the flush. Its records are the fault recording
//! registers, which hold no memory, so it has no event oracle.
//!
//! [`check_amdvi`] reads its input as a program for an AMD-Vi unit over 64 KiB of memory:
//! memory writes (raw, or shaped as DTEs, GCR3 entries and page-table entries), MMIO writes,
//! commands placed at the command buffer's tail, translations, and a driver's full flush
//! (INVALIDATE_IOMMU_ALL through the command buffer). Every byte string is a valid program.
//! The oracles:
//! - nothing panics;
//! - every operation does bounded work: a translation at most [`MAX_TRANSLATION_REFS`] memory
//!   references, a register write at most [`MAX_COMMAND_REFS`] per command it ran;
//! - every record the unit writes to its event log decodes to a valid event;
//! - once a flush has completed and nothing has changed since, every translation equals the
//!   one the unit gives with every cache emptied (what it cached is what the tables say),
//!   except a translation through an AMD-Vi page of a Next Level 7 size, which software must
//!   replicate in every entry it covers and a program need not have.

mod files;

use std::sync::atomic::{AtomicU64, Ordering};

use pagewalk::{FlatMem, MemError, PhysMem};

use crate::amdvi::event::Event;
use crate::amdvi::layout::{RING_ENTRY, RingBase};
use crate::amdvi::{AmdVi, AmdViConfig, command, reg};
use crate::request::{AccessKind, AddressType, DmaRequest, Fault, Translation};
use crate::trace::Trace;
use crate::unit::Unit;

pub use files::{check_timing_params, check_trace_file};

/// Memory the programs run over: 16 pages at physical address 0.
pub const MEM_BYTES: usize = 16 * 4096;
/// The most memory references one translation may make (a two-dimensional walk through three
/// GCR3 levels, each translated by six host levels, is well below it).
pub const MAX_TRANSLATION_REFS: u64 = 512;
/// The most memory references one command may make (a PREFETCH of 255 pages, each walked
/// twice).
pub const MAX_COMMAND_REFS: u64 = 4 + 2 * 256 * MAX_TRANSLATION_REFS;

/// Memory that counts the references made through it.
#[derive(Debug)]
pub struct CountingMem {
    mem: FlatMem,
    refs: AtomicU64,
    writes: AtomicU64,
}

impl CountingMem {
    fn new() -> Self {
        Self {
            mem: FlatMem::new(0, MEM_BYTES),
            refs: AtomicU64::new(0),
            writes: AtomicU64::new(0),
        }
    }
    fn count(&self) -> u64 {
        self.refs.load(Ordering::Relaxed)
    }
    fn writes(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }
    fn tick(&self, write: bool) {
        self.refs.fetch_add(1, Ordering::Relaxed);
        if write {
            self.writes.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl PhysMem for CountingMem {
    fn read_u64(&self, addr: u64) -> Result<u64, MemError> {
        self.tick(false);
        self.mem.read_u64(addr)
    }
    fn write_u64(&self, addr: u64, val: u64) -> Result<(), MemError> {
        self.tick(true);
        self.mem.write_u64(addr, val)
    }
    fn compare_exchange_u64(
        &self,
        addr: u64,
        current: u64,
        new: u64,
    ) -> Result<Result<u64, u64>, MemError> {
        self.tick(true);
        self.mem.compare_exchange_u64(addr, current, new)
    }
    fn write_u32(&self, addr: u64, val: u32) -> Result<(), MemError> {
        self.tick(true);
        self.mem.write_u32(addr, val)
    }
    fn read_u32(&self, addr: u64) -> Result<u32, MemError> {
        self.tick(false);
        self.mem.read_u32(addr)
    }
}

/// The registers a program writes, by index (an index past them is an arbitrary offset).
const REGS: [u64; 13] = [
    reg::DEV_TAB_BASE,
    reg::CMD_BUF_BASE,
    reg::EVENT_LOG_BASE,
    reg::CONTROL,
    reg::EXCLUSION_BASE,
    reg::EXCLUSION_LIMIT,
    reg::EFR,
    reg::PPR_LOG_BASE,
    reg::CMD_BUF_HEAD,
    reg::CMD_BUF_TAIL,
    reg::EVENT_LOG_HEAD,
    reg::EVENT_LOG_TAIL,
    reg::STATUS,
];

/// Reads a fuzz program's operands, little-endian, from the front of its input; `None` once
/// the input runs out. Every fuzz harness of the workspace reads its input with this.
#[derive(Debug)]
pub struct Input<'a>(pub &'a [u8]);

impl Input<'_> {
    /// The next byte.
    pub fn u8(&mut self) -> Option<u8> {
        let (b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(*b)
    }
    /// The next two bytes.
    pub fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes([self.u8()?, self.u8()?]))
    }
    /// The next four bytes.
    pub fn u32(&mut self) -> Option<u32> {
        Some(u32::from(self.u16()?) | (u32::from(self.u16()?) << 16))
    }
    /// The next eight bytes.
    pub fn u64(&mut self) -> Option<u64> {
        Some(u64::from(self.u32()?) | (u64::from(self.u32()?) << 32))
    }
    /// The next `n` bytes.
    pub fn bytes(&mut self, n: usize) -> Option<Vec<u8>> {
        (0..n).map(|_| self.u8()).collect()
    }

    /// A DMA request of any kind from one of 8 devices: mostly to addresses the 64 KiB can
    /// map, anything with the top bit of the last byte; a PASID, privilege and ATS by its bits.
    fn dma_request(&mut self) -> Option<DmaRequest> {
        let (dev, p, addr, how) = (self.u8()?, self.u16()?, self.u64()?, self.u8()?);
        let access = match how % 4 {
            0 => AccessKind::Read,
            1 => AccessKind::Write,
            2 => AccessKind::Atomic,
            _ => AccessKind::Execute,
        };
        let addr = if how & 0x80 != 0 {
            addr
        } else {
            addr & 0x3f_ffff_ffff
        };
        let mut req = DmaRequest::new(u16::from(dev % 8), addr, 1 + u64::from(p >> 12), access);
        if how & 4 != 0 {
            req.pasid = Some(u32::from(p & 0x7ff));
        }
        req.privileged = how & 8 != 0;
        if how & 0x10 != 0 {
            req.at = AddressType::TranslationRequest;
        }
        Some(req)
    }
}

/// One translation under the oracles both units share: bounded memory references, and, when
/// nothing changed since a completed flush, the same outcome with every cache emptied
/// (`empty_caches`). `dirty` is updated with the unit's own writes.
fn checked_translation<U: Unit>(
    unit: &U,
    empty_caches: impl FnOnce(&U),
    mem: &CountingMem,
    dirty: &mut bool,
    trace: &mut Trace,
    req: &DmaRequest,
) {
    let (before, writes) = (mem.count(), mem.writes());
    let warm = unit.translate(req, trace);
    let refs = mem.count() - before;
    assert!(
        refs <= MAX_TRANSLATION_REFS,
        "{req:?} made {refs} memory references"
    );
    // The unit's own writes (A/D flags, event records) may land on any structure the program
    // placed there: after them, the caches may rightly hold the old contents.
    *dirty |= mem.writes() != writes;
    // An AMD-Vi v1 page of a Next Level 7 size must be written in every entry it covers
    // (§2.2.3.2); when a program wrote only one, a cached translation of the whole page is
    // what hardware may use, and the walk of another entry rightly differs.
    let sized = matches!(&warm, Ok(t) if !(t.page_shift - 12).is_multiple_of(9));
    if !*dirty && !sized {
        empty_caches(unit);
        let cold = unit.translate(req, trace);
        assert_eq!(
            outcome(&warm),
            outcome(&cold),
            "{req:?}: the caches gave what the tables do not"
        );
        *dirty |= mem.writes() != writes;
    }
}

/// What is compared between a warm and a cold translation (whether a fault was recorded
/// depends on the event log, not on the caches).
fn outcome(r: &Result<Translation, Fault>) -> Result<Translation, (crate::FaultKind, u16)> {
    r.map_err(|f| (f.kind, f.code))
}

struct Run<'m> {
    unit: AmdVi<&'m CountingMem>,
    mem: &'m CountingMem,
    /// Whether anything changed since the last completed flush.
    dirty: bool,
    trace: Trace,
}

impl Run<'_> {
    fn mmio(&mut self, off: u64, size: u32, v: u64) {
        let (before, cmds) = (self.mem.count(), self.unit.stats().commands);
        // Where the unit will write its next event, as it stands before the write.
        let log = self.event_log();
        self.unit.mmio_write(off, size, v);
        let ran = self.unit.stats().commands - cmds;
        let refs = self.mem.count() - before;
        assert!(
            refs <= (ran + 1) * MAX_COMMAND_REFS,
            "MMIO write {off:#x} made {refs} memory references for {ran} commands"
        );
        // Software moving the tail (or the ring) is not the unit writing records.
        if ![reg::EVENT_LOG_TAIL, reg::EVENT_LOG_BASE].contains(&(off & !7)) {
            self.check_events(log);
        }
    }

    /// The event log's base, length and tail.
    fn event_log(&self) -> (u64, u64, u64) {
        let b = RingBase::from_bits(self.unit.mmio_read(reg::EVENT_LOG_BASE, 8));
        (
            b.base_page() << 12,
            b.entries() * RING_ENTRY,
            self.unit.mmio_read(reg::EVENT_LOG_TAIL, 8),
        )
    }

    /// Every record the unit wrote since `before` decodes.
    fn check_events(&self, before: (u64, u64, u64)) {
        let (base, bytes, tail) = self.event_log();
        if (base, bytes) != (before.0, before.1) {
            return;
        }
        let mut at = before.2 % bytes;
        for _ in 0..bytes / RING_ENTRY {
            if at == tail % bytes {
                break;
            }
            let a = base + at;
            if let (Ok(q0), Ok(q1)) = (self.mem.mem.read_u64(a), self.mem.mem.read_u64(a + 8))
                && let Err(e) = Event::decode([q0, q1])
            {
                panic!("event record {q0:#x} {q1:#x} at {a:#x} does not decode: {e}");
            }
            at = (at + RING_ENTRY) % bytes;
        }
    }

    fn translate(&mut self, req: &DmaRequest) {
        let log = self.event_log();
        checked_translation(
            &self.unit,
            AmdVi::invalidate_caches,
            self.mem,
            &mut self.dirty,
            &mut self.trace,
            req,
        );
        self.check_events(log);
    }

    /// A driver's full flush: INVALIDATE_IOMMU_ALL then COMPLETION_WAIT (no store) at the
    /// command buffer's tail. The state is clean if both ran.
    fn flush(&mut self) {
        let b = RingBase::from_bits(self.unit.mmio_read(reg::CMD_BUF_BASE, 8));
        let (base, bytes) = (b.base_page() << 12, b.entries() * RING_ENTRY);
        let tail = self.unit.mmio_read(reg::CMD_BUF_TAIL, 8) % bytes;
        let wait = command::encode::completion_wait(0, 0, false, false);
        let wait = [wait[0] & !1, 0];
        let cmds = [command::encode::invalidate_all(), wait];
        let mut at = tail;
        for c in cmds {
            let a = base + at;
            if self.mem.write_u64(a, c[0]).is_err() || self.mem.write_u64(a + 8, c[1]).is_err() {
                self.dirty = true;
                return;
            }
            at = (at + RING_ENTRY) % bytes;
        }
        let done = self.unit.stats().commands;
        self.mmio(reg::CMD_BUF_TAIL, 8, at);
        let ran = self.unit.stats().commands - done;
        // The commands overwrote whatever memory held there, which changes nothing the
        // flush did not cover only if nothing but these two ran.
        self.dirty = !(ran == 2 && self.unit.mmio_read(reg::CMD_BUF_HEAD, 8) == at);
    }
}

/// Runs `data` as a program (see the module notes); panics only if an oracle fails.
pub fn check_amdvi(data: &[u8]) {
    let mut input = Input(data);
    let sel = input.u8().unwrap_or(0);
    let cfg = AmdViConfig {
        host_levels: 4 + sel % 3,
        guest_levels: 4 + (sel >> 2) % 2,
        gcr3_levels: 1 + (sel >> 3) % 3,
        pasid_bits: if sel & 0x20 != 0 { 20 } else { 9 },
        prefetch: sel & 0x40 != 0,
        invalidate_all: true,
        ppr: sel & 0x80 != 0,
        phys_addr_bits: 48,
        dte_cache_entries: 8,
        gcr3_cache_entries: 8,
        iotlb_entries: 16,
        pdc_entries: 8,
        ways: 2,
        ..AmdViConfig::default()
    };
    let counting = CountingMem::new();
    let mem = &counting;
    let Ok(unit) = AmdVi::new(mem, cfg, Box::new(|_| {})) else {
        return;
    };
    let mut run = Run {
        unit,
        mem,
        dirty: true,
        trace: Trace::new(),
    };
    // A driver's bring-up to start from: device table at 0 (128 DTEs), command buffer at
    // 0x1000 and event log at 0x2000 (256 entries each), everything enabled.
    run.mmio(reg::DEV_TAB_BASE, 8, 0);
    run.mmio(reg::CMD_BUF_BASE, 8, 0x1000 | (8 << 56));
    run.mmio(reg::EVENT_LOG_BASE, 8, 0x2000 | (8 << 56));
    run.mmio(reg::CONTROL, 8, 0x1_101f);
    for _ in 0..256 {
        let Some(op) = input.u8() else { break };
        let ok = match op % 8 {
            0 => (|| {
                let (addr, v) = (input.u16()?, input.u64()?);
                let a = u64::from(addr) * 8 % MEM_BYTES as u64;
                let _ = mem.mem.write_u64(a, v);
                run.dirty = true;
                Some(())
            })(),
            1 => (|| {
                let (r, v) = (input.u8()?, input.u64()?);
                let off = match REGS.get(usize::from(r & 0x3f)) {
                    Some(o) => *o,
                    None => u64::from(r) << 6,
                };
                let size = if r & 0x40 != 0 { 4 } else { 8 };
                let off = off + if size == 4 && r & 0x80 != 0 { 4 } else { 0 };
                run.mmio(off, size, v);
                run.dirty = true;
                Some(())
            })(),
            2 => (|| {
                // A command at the tail, then the tail moved past it.
                let (q0, q1) = (input.u64()?, input.u64()?);
                let b = RingBase::from_bits(run.unit.mmio_read(reg::CMD_BUF_BASE, 8));
                let bytes = b.entries() * RING_ENTRY;
                let tail = run.unit.mmio_read(reg::CMD_BUF_TAIL, 8) % bytes;
                let a = (b.base_page() << 12) + tail;
                let _ = mem.mem.write_u64(a, q0);
                let _ = mem.mem.write_u64(a + 8, q1);
                run.mmio(reg::CMD_BUF_TAIL, 8, (tail + RING_ENTRY) % bytes);
                run.dirty = true;
                Some(())
            })(),
            3 => (|| {
                let req = input.dma_request()?;
                run.translate(&req);
                Some(())
            })(),
            4 => {
                run.flush();
                Some(())
            }
            5 => (|| {
                // A DTE shaped like a driver's: V, TV, Mode, root page, GV, GLX, IR/IW,
                // DomainID and the GCR3 root page.
                let (dev, bits, root, gcr3) = (input.u8()?, input.u16()?, input.u8()?, input.u8()?);
                let root = u64::from(root % 16) << 12;
                let gcr3 = u64::from(gcr3 % 16) << 12;
                let q0 = (3 * u64::from(bits & 1 == 0))
                    | (u64::from((bits >> 1) & 7) << 9)
                    | root
                    | (u64::from((bits >> 4) & 1) << 55)
                    | (u64::from((bits >> 5) & 3) << 56)
                    | (((gcr3 >> 12) & 7) << 58)
                    | (u64::from((bits >> 7) & 3) << 61);
                let q1 = u64::from(bits >> 9) | (((gcr3 >> 15) & 0xffff) << 16);
                let at = u64::from(dev % 8) * 32;
                let _ = mem.mem.write_u64(at + 8, q1);
                let _ = mem.mem.write_u64(at, q0);
                run.dirty = true;
                Some(())
            })(),
            _ => (|| {
                // A page-table or GCR3 entry: present, pointing at one of the 16 pages, with
                // the permission and level bits given.
                let (slot, bits, page) = (input.u16()?, input.u16()?, input.u8()?);
                let a = 0x3000 + u64::from(slot) * 8 % (MEM_BYTES as u64 - 0x3000);
                let v = 1
                    | (u64::from(bits & 0xffe))
                    | (u64::from(page % 16) << 12)
                    | (u64::from(bits >> 12) << 60);
                let _ = mem.mem.write_u64(a, v);
                run.dirty = true;
                Some(())
            })(),
        };
        if ok.is_none() {
            break;
        }
    }
}

/// The VT-d registers a program writes, by index, with their access size.
const VTD_REGS: [(u64, u32); 12] = {
    use crate::vtd::regs::*;
    [
        (GCMD_REG, 4),
        (RTADDR_REG, 8),
        (CCMD_REG, 8),
        (FSTS_REG, 4),
        (FECTL_REG, 4),
        (IQH_REG, 8),
        (IQT_REG, 8),
        (IQA_REG, 8),
        (ICS_REG, 4),
        (IECTL_REG, 4),
        // IVA and IOTLB_REG at the default IRO, and the first FRCD's upper half.
        (0xf0, 8),
        (0xf8, 8),
    ]
};

struct VtdRun<'m> {
    unit: crate::vtd::Vtd<&'m CountingMem>,
    mem: &'m CountingMem,
    dirty: bool,
    trace: Trace,
    /// Whether the root table latched by the last SRTP is in scalable mode (a driver knows
    /// the mode it set; RTADDR may since hold another value).
    scalable: bool,
}

impl VtdRun<'_> {
    fn mmio(&mut self, off: u64, size: u32, v: u64) {
        use crate::vtd::regs::{GCMD_REG, GCMD_SRTP, RTADDR_REG, TTM_SCALABLE};
        let (before, descs) = (self.mem.count(), self.unit.stats().commands);
        if off == GCMD_REG && v & u64::from(GCMD_SRTP) != 0 {
            self.scalable = (self.unit.mmio_read(RTADDR_REG, 8) >> 10) & 3 == TTM_SCALABLE;
        }
        self.unit.mmio_write(off, size, v);
        let ran = self.unit.stats().commands - descs;
        let refs = self.mem.count() - before;
        assert!(
            refs <= (ran + 1) * 8,
            "MMIO write {off:#x} made {refs} memory references for {ran} descriptors"
        );
    }

    fn translate(&mut self, req: &DmaRequest) {
        checked_translation(
            &self.unit,
            crate::vtd::Vtd::invalidate_caches,
            self.mem,
            &mut self.dirty,
            &mut self.trace,
            req,
        );
    }

    /// The queue's base, size and descriptor size, and its tail.
    fn queue(&self) -> (u64, u64, u64, u64) {
        use crate::vtd::regs::{IQA_REG, IQT_REG};
        let iqa = crate::vtd::layout::IqaReg::from_bits(self.unit.mmio_read(IQA_REG, 8));
        (
            iqa.iqa_page() << 12,
            iqa.queue_bytes(),
            iqa.descriptor_bytes(),
            self.unit.mmio_read(IQT_REG, 8),
        )
    }

    /// Writes `descs` at the tail and moves it past them; returns the new tail, or `None` if
    /// the queue is not in memory.
    fn submit(&mut self, descs: &[[u64; 2]]) -> Option<u64> {
        let (base, bytes, size, tail) = self.queue();
        let mut at = tail % bytes;
        for d in descs {
            // IQA may put the queue anywhere in the 64-bit space.
            let a = base.wrapping_add(at);
            for q in 0..size / 8 {
                let v = d.get(q as usize).copied().unwrap_or(0);
                self.mem.write_u64(a.wrapping_add(8 * q), v).ok()?;
            }
            at = (at + size) % bytes;
        }
        self.mmio(crate::vtd::regs::IQT_REG, 8, at);
        Some(at)
    }

    /// Global context-cache, PASID-cache (scalable mode) and IOTLB invalidation and a wait:
    /// clean if all ran without a queue error.
    fn flush(&mut self) {
        use crate::vtd::qi::{ContextGranularity, IotlbGranularity, PasidCacheGranularity, encode};
        use crate::vtd::regs::*;
        let mut descs = vec![encode::context_cache(ContextGranularity::Global)];
        if self.scalable {
            descs.push(encode::pasid_cache(0, 0, PasidCacheGranularity::Global));
        }
        descs.push(encode::iotlb(IotlbGranularity::Global));
        descs.push(encode::wait(false, false, false, 0, 0));
        let done = self.unit.stats().commands;
        let Some(at) = self.submit(&descs) else {
            self.dirty = true;
            return;
        };
        let ran = self.unit.stats().commands - done;
        let clean = ran == descs.len() as u64
            && self.unit.mmio_read(IQH_REG, 8) == at
            && self.unit.mmio_read(FSTS_REG, 4) & u64::from(FSTS_IQE) == 0;
        self.dirty = !clean;
    }
}

/// Runs `data` as a program for a VT-d unit (see the module notes); panics only if an oracle
/// fails.
pub fn check_vtd(data: &[u8]) {
    use crate::vtd::regs::*;
    use crate::vtd::{Vtd, VtdConfig};
    let mut input = Input(data);
    let sel = input.u8().unwrap_or(0);
    let scalable = sel & 1 != 0;
    let cfg = VtdConfig {
        caching_mode: sel & 2 != 0,
        ss_ad: sel & 4 != 0,
        device_tlb: sel & 8 != 0,
        fs_5level: sel & 0x10 != 0,
        context_cache_entries: 8,
        pasid_cache_entries: 8,
        iotlb_entries: 16,
        pwc_entries: 8,
        ways: 2,
        ..VtdConfig::default()
    };
    let counting = CountingMem::new();
    let mem = &counting;
    let Ok(unit) = Vtd::new(mem, cfg, Box::new(|_| {})) else {
        return;
    };
    let mut run = VtdRun {
        unit,
        mem,
        dirty: true,
        trace: Trace::new(),
        scalable,
    };
    // A driver's bring-up: the root table at 0, the queue at 0x1000 (one page, 256-bit
    // descriptors in scalable mode), then SRTP, QIE and TE.
    let ttm = if scalable { TTM_SCALABLE } else { TTM_LEGACY };
    run.mmio(RTADDR_REG, 8, ttm << 10);
    run.mmio(GCMD_REG, 4, u64::from(GCMD_SRTP));
    run.mmio(IQA_REG, 8, 0x1000 | (u64::from(scalable) << 11));
    run.mmio(IQT_REG, 8, 0);
    run.mmio(GCMD_REG, 4, u64::from(GCMD_QIE));
    run.mmio(GCMD_REG, 4, u64::from(GCMD_QIE | GCMD_TE));
    for _ in 0..256 {
        let Some(op) = input.u8() else { break };
        let ok = match op % 8 {
            0 => (|| {
                let (addr, v) = (input.u16()?, input.u64()?);
                let _ = mem.mem.write_u64(u64::from(addr) * 8 % MEM_BYTES as u64, v);
                run.dirty = true;
                Some(())
            })(),
            1 => (|| {
                let (r, v) = (input.u8()?, input.u64()?);
                let (off, size) = match VTD_REGS.get(usize::from(r & 0x3f)) {
                    Some(x) => *x,
                    None => (u64::from(r) << 3, 4 << (r >> 7)),
                };
                run.mmio(off, size, v);
                run.dirty = true;
                Some(())
            })(),
            2 => (|| {
                let (q0, q1) = (input.u64()?, input.u64()?);
                run.submit(&[[q0, q1]]);
                run.dirty = true;
                Some(())
            })(),
            3 => (|| {
                let req = input.dma_request()?;
                run.translate(&req);
                Some(())
            })(),
            4 => {
                run.flush();
                Some(())
            }
            5 => (|| {
                // A root entry (bus 0) and a context entry shaped like a driver's: legacy P, T,
                // SLPTPTR, AW, DID; scalable P, PASIDDIRPTR (the PASID directory), RID_PASID.
                let (dev, bits, page, did) = (input.u8()?, input.u16()?, input.u8()?, input.u8()?);
                let ctx = 0x2000u64;
                let _ = mem.mem.write_u64(0, ctx | 1);
                let page = u64::from(page % 16) << 12;
                let (lo, hi, at) = if scalable {
                    let lo = u64::from(bits & 0xfff) | 1 | page;
                    (lo, 0, ctx + 32 * u64::from(dev % 8))
                } else {
                    let lo = 1 | (u64::from((bits >> 2) & 3) << 2) | page;
                    let hi = u64::from(bits >> 12 & 7) | (u64::from(did) << 8);
                    (lo, hi, ctx + 16 * u64::from(dev % 8))
                };
                let _ = mem.mem.write_u64(at + 8, hi);
                let _ = mem.mem.write_u64(at, lo);
                run.dirty = true;
                Some(())
            })(),
            _ => (|| {
                // A structure or paging entry: the low 12 bits given, pointing at one of the
                // 16 pages, the top 12 bits given.
                let (slot, bits, page, top) =
                    (input.u16()?, input.u16()?, input.u8()?, input.u8()?);
                let a = 0x3000 + u64::from(slot) * 8 % (MEM_BYTES as u64 - 0x3000);
                let v =
                    u64::from(bits & 0xfff) | (u64::from(page % 16) << 12) | (u64::from(top) << 56);
                let _ = mem.mem.write_u64(a, v);
                run.dirty = true;
                Some(())
            })(),
        };
        if ok.is_none() {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        /// Random programs keep every oracle (the fuzz targets run the same checks).
        #[test]
        fn random_programs_keep_the_oracles(data in prop::collection::vec(any::<u8>(), 0..600)) {
            super::check_amdvi(&data);
            super::check_vtd(&data);
        }
    }

    /// A hand-written program: a v1 device translated, cached, flushed, checked.
    #[test]
    fn a_hand_written_program_translates_through_a_v1_table() {
        let mut p = vec![0u8];
        // DTE of device 1: V, TV, Mode 1, root page 3, IR/IW, DomainID 5.
        let bits: u16 = (1 << 1) | (3 << 7) | (5 << 9);
        p.extend([5, 1]);
        p.extend(bits.to_le_bytes());
        p.extend([3, 0]);
        // Level-1 entry 0 of the table at 0x3000: page 4, IR/IW (bits 61, 62 -> 0b110 << 12).
        p.extend([7]);
        p.extend(0u16.to_le_bytes());
        p.extend((0x6u16 << 12).to_le_bytes());
        p.extend([4]);
        // Flush, then translate twice (the second from the caches).
        p.push(4);
        for _ in 0..2 {
            p.push(3);
            p.push(1);
            p.extend(0u16.to_le_bytes());
            p.extend(0x18u64.to_le_bytes());
            p.push(0);
        }
        super::check_amdvi(&p);
    }
}

//! An AMD-Vi IOMMU unit that software programs only through its MMIO registers and
//! memory-resident structures (AMD I/O Virtualization Technology (IOMMU) Specification #48882,
//! rev 3.08).
//!
//! - [`AmdVi::mmio_read`] / [`AmdVi::mmio_write`]: the register file of §3.4 (4- and 8-byte
//!   accesses; a 4-byte access reaches half of a 64-bit register).
//! - [`Unit::translate`]: one DMA request through the device table (§2.2.2), the GCR3 table
//!   (§2.2.6), the caches and the v1 (§2.2.3) and v2 (§2.2.6.2) page walkers, in one or two
//!   dimensions, with the trace of what it did.
//! - The command buffer (§2.4) runs synchronously when its tail is written; the event log
//!   (§2.5) is written as faults happen. Event-log and completion-wait interrupts reach the
//!   embedder through the callback given to [`AmdVi::new`].
//!
//! # Translation, by DTE (§2.2.2.1, "V, TV and GV fields in DTE")
//!
//! | Control / DTE | request without PASID | request with PASID |
//! |---|---|---|
//! | IommuEn = 0 | untranslated | untranslated |
//! | V = 0 | untranslated, no checks | untranslated |
//! | V = 1, TV = 0 | IO_PAGE_FAULT (blocked) | IO_PAGE_FAULT |
//! | Mode = 0 | untranslated if DTE IR/IW allow it, else IO_PAGE_FAULT | GV = 1: v2 tables at system-physical addresses (the direct-mapped v2 case); GV = 0: INVALID_DEVICE_REQUEST |
//! | Mode 1-6 | v1 host tables (IR/IW of the DTE and of every entry ANDed) | GV = 1: v2 over v1 in two dimensions (GCR3 entries, guest tables and the output translated by the host tables); GV = 0: INVALID_DEVICE_REQUEST |
//! | Mode 7, or above EFR.HATS | IO_PAGE_FAULT (invalid level) | IO_PAGE_FAULT |
//!
//! With GV = 1 and GIoV = 1, a request without PASID is translated as PASID 0. A request
//! without PASID from a device with DTE.EX = 1 (or any device, with the exclusion base's Allow
//! bit) to an address in the exclusion range passes untranslated. An ATS translation request
//! from a device whose DTE.I = 0 is an INVALID_DEVICE_REQUEST; one that finds no page is
//! answered with no permission and logs nothing.
//!
//! # What the model supports, by EFR bit (§3.4.7)
//!
//! | EFR | meaning | model |
//! |---|---|---|
//! | PreFSup | PREFETCH_IOMMU_PAGES | configurable (default 1): the pages are walked into the IOTLB |
//! | PPRSup | peripheral page requests | configurable (default 0): COMPLETE_PPR_REQUEST accepted, no PPR log |
//! | XTSup, GASup, HESup | x2APIC, guest vAPIC, hardware error registers | reported as configured, not modelled |
//! | NXSup | no-execute in guest tables | configurable (default 1) |
//! | GTSup, GIoSup | guest (v2) translation, GIoV | configurable (default 1) |
//! | IASup | INVALIDATE_IOMMU_ALL | configurable (default 1) |
//! | PCSup | performance counters | 0 |
//! | HATS | host levels | configurable 4-6 (default 6) |
//! | GATS | guest levels | configurable 4-5 (default 4) |
//! | GLXSup | GCR3 levels | configurable 1-3 (default 2) |
//! | PASmax | PASID width | configurable (default 16 bits) |
//! | HASup, HDSup | host A/D updates | 0: DTE.HAD is reserved |
//!
//! Interrupt remapping is not modelled: the DTE's interrupt fields are checked for reserved
//! encodings (IntCtl = 11b, IntTabLen too large) and otherwise accepted, and
//! INVALIDATE_INTERRUPT_TABLE completes with nothing to do. IoCtl and SysMgt are checked
//! (IoCtl = 11b is illegal) but the HyperTransport special ranges they govern are translated like
//! any other address. There is no device-side IOTLB: INVALIDATE_IOTLB_PAGES completes at once and
//! IOTLB_INV_TIMEOUT is never logged.

mod cache;
pub mod command;
pub mod config;
mod dte;
pub mod event;
mod inspect;
pub mod layout;
mod translate;

#[cfg(test)]
mod tests;

use std::collections::HashSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use pagewalk::PhysMem;

use self::cache::AmdViCaches;
pub use self::cache::PagesInvalidation;
use self::command::Command;
pub use self::config::{AmdViConfig, AmdViConfigError};
use self::event::{Event, EventCode};
use self::layout::*;
use crate::request::{DmaRequest, Fault, Translation};
use crate::trace::Trace;
use crate::unit::{CacheKind, Unit, UnitStats};

/// MMIO offsets of the registers (§3.4).
pub mod reg {
    /// Device Table Base Address.
    pub const DEV_TAB_BASE: u64 = 0x0000;
    /// Command Buffer Base Address.
    pub const CMD_BUF_BASE: u64 = 0x0008;
    /// Event Log Base Address.
    pub const EVENT_LOG_BASE: u64 = 0x0010;
    /// Control.
    pub const CONTROL: u64 = 0x0018;
    /// Exclusion Base.
    pub const EXCLUSION_BASE: u64 = 0x0020;
    /// Exclusion Range Limit.
    pub const EXCLUSION_LIMIT: u64 = 0x0028;
    /// Extended Feature Register.
    pub const EFR: u64 = 0x0030;
    /// PPR Log Base Address.
    pub const PPR_LOG_BASE: u64 = 0x0038;
    /// Command Buffer Head Pointer.
    pub const CMD_BUF_HEAD: u64 = 0x2000;
    /// Command Buffer Tail Pointer.
    pub const CMD_BUF_TAIL: u64 = 0x2008;
    /// Event Log Head Pointer.
    pub const EVENT_LOG_HEAD: u64 = 0x2010;
    /// Event Log Tail Pointer.
    pub const EVENT_LOG_TAIL: u64 = 0x2018;
    /// Status.
    pub const STATUS: u64 = 0x2020;
    /// Bytes of the register file (§3.4: 16 KiB without performance counters).
    pub const MMIO_SIZE: u64 = 0x4000;
}

/// Writable bits of the base registers (§3.4.1-§3.4.3).
const DEV_TAB_MASK: u64 = 0x000f_ffff_ffff_f1ff;
const RING_BASE_MASK: u64 = 0x0f0f_ffff_ffff_f000;
const EXCLUSION_BASE_MASK: u64 = 0x000f_ffff_ffff_f003;
const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

/// An interrupt the unit signals to the embedder (through the unit's MSI).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AmdViEvent {
    /// Status.EventLogInt (or EventOverflow) became set with Control.EventIntEn.
    EventLog,
    /// Status.ComWaitInt became set with Control.ComWaitIntEn.
    CompletionWait,
}

/// The embedder's interrupt callback.
pub type EventSink = Box<dyn Fn(AmdViEvent) + Send + Sync>;

/// The register state software programs (everything but EFR).
#[derive(Debug, Default)]
struct RegFile {
    dev_tab: u64,
    cmd_base: u64,
    evt_base: u64,
    control: u64,
    excl_base: u64,
    excl_limit: u64,
    ppr_base: u64,
    cmd_head: u64,
    cmd_tail: u64,
    evt_head: u64,
    evt_tail: u64,
    /// The write-1-to-clear status bits.
    status: u64,
    /// The command buffer stopped at an illegal command or a hardware error (CmdBufRun = 0
    /// until CmdBufEn is set again).
    cmd_stopped: bool,
    /// The event log overflowed (EventLogRun = 0 until EventLogEn is set again).
    evt_stopped: bool,
    /// Devices with DTE.SE = 1 that have logged their one IO_PAGE_FAULT.
    se_logged: HashSet<u16>,
}

impl RegFile {
    fn ctl(&self) -> Control {
        Control::from_bits(self.control)
    }
    fn cmd_running(&self) -> bool {
        let c = self.ctl();
        c.iommu_en() && c.cmd_buf_en() && !self.cmd_stopped
    }
    fn evt_running(&self) -> bool {
        let c = self.ctl();
        c.iommu_en() && c.event_log_en() && !self.evt_stopped
    }
    fn status_value(&self) -> u64 {
        Status::from_bits(self.status)
            .with_event_log_run(self.evt_running())
            .with_cmd_buf_run(self.cmd_running())
            .into_bits()
    }
    /// Sets status bits and reports whether any of `int` became set.
    fn set_status(&mut self, bits: u64, int: u64) -> bool {
        let rising = bits & int & !self.status != 0;
        self.status |= bits;
        rising
    }
}

/// What translations read once, without the register lock.
#[derive(Debug, Default)]
struct Fast {
    control: AtomicU64,
    dev_tab: AtomicU64,
    excl_base: AtomicU64,
    excl_limit: AtomicU64,
}

/// Counters of what the unit did.
#[derive(Debug, Default)]
struct AmdViStats {
    translations: iotlb::ShardedCounter,
    faults: AtomicU64,
    /// Translation faults written to the event log.
    faults_recorded: AtomicU64,
    commands: AtomicU64,
    /// The same by opcode, indexed as [`COMMAND_KINDS`].
    by_kind: [AtomicU64; COMMAND_KINDS.len()],
}

/// The commands (§2.4), as [`UnitStats::commands_by_kind`] names them.
const COMMAND_KINDS: [&str; 8] = [
    "COMPLETION_WAIT",
    "INVALIDATE_DEVTAB_ENTRY",
    "INVALIDATE_IOMMU_PAGES",
    "INVALIDATE_IOTLB_PAGES",
    "INVALIDATE_INTERRUPT_TABLE",
    "PREFETCH_IOMMU_PAGES",
    "COMPLETE_PPR_REQUEST",
    "INVALIDATE_IOMMU_ALL",
];

/// `cmd`'s index in [`COMMAND_KINDS`].
fn command_kind(cmd: &Command) -> usize {
    match cmd {
        Command::CompletionWait { .. } => 0,
        Command::InvalidateDevtabEntry { .. } => 1,
        Command::InvalidateIommuPages(_) => 2,
        Command::InvalidateIotlbPages { .. } => 3,
        Command::InvalidateInterruptTable { .. } => 4,
        Command::PrefetchIommuPages { .. } => 5,
        Command::CompletePprRequest { .. } => 6,
        Command::InvalidateIommuAll => 7,
    }
}

/// An AMD-Vi IOMMU over the memory `M`.
pub struct AmdVi<M: PhysMem> {
    mem: M,
    cfg: AmdViConfig,
    efr: Efr,
    fast: Fast,
    regs: Mutex<RegFile>,
    caches: AmdViCaches,
    sink: EventSink,
    stats: AmdViStats,
    /// Resets so far: a translation logs its event only if no reset came after it began.
    resets: AtomicU64,
}

impl<M: PhysMem> std::fmt::Debug for AmdVi<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmdVi")
            .field("cfg", &self.cfg)
            .field("control", &self.fast.control)
            .finish_non_exhaustive()
    }
}

impl<M: PhysMem> AmdVi<M> {
    /// A unit in its reset state (everything disabled), reading and writing structures through
    /// `mem`, reporting interrupts to `sink`.
    pub fn new(mem: M, cfg: AmdViConfig, sink: EventSink) -> Result<Self, AmdViConfigError> {
        cfg.validate()?;
        let caches = AmdViCaches::new(&cfg)?;
        Ok(Self {
            mem,
            efr: cfg.efr(),
            cfg,
            fast: Fast::default(),
            regs: Mutex::new(RegFile::default()),
            caches,
            sink,
            stats: AmdViStats::default(),
            resets: AtomicU64::new(0),
        })
    }

    /// Returns the unit to its power-on state, as a platform reset does (see [`Unit::reset`]):
    /// every register zero (§3.4: the IOMMU, its rings and logging disabled, the bases, heads,
    /// tails and Status cleared; EFR is what it was), every cache empty, nothing remembered of
    /// the page faults of devices with DTE.SE.
    pub fn reset(&self) {
        let mut r = self.regs();
        // IommuEn off first, so that no translation starting from now on uses the old device
        // table; the registers under their lock; the caches last: translations take their
        // cache tokens before they read Control (`translate_inner`), so one that saw the
        // IOMMU still on took its tokens before this invalidation, and its fills are refused.
        for f in [
            &self.fast.control,
            &self.fast.dev_tab,
            &self.fast.excl_base,
            &self.fast.excl_limit,
        ] {
            f.store(0, Ordering::Release);
        }
        self.resets.fetch_add(1, Ordering::AcqRel);
        *r = RegFile::default();
        self.caches.reset();
        log::debug!("amdvi: reset");
    }

    /// The configuration.
    pub fn config(&self) -> &AmdViConfig {
        &self.cfg
    }

    /// The memory the unit reads structures from.
    pub fn mem(&self) -> &M {
        &self.mem
    }

    /// Empties every cache, as INVALIDATE_IOMMU_ALL does, without the command buffer: for the
    /// fuzz oracle that compares cached translations with fresh ones.
    #[cfg(any(test, feature = "fuzz-support"))]
    pub(crate) fn invalidate_caches(&self) {
        self.caches.invalidate_all();
    }

    fn regs(&self) -> std::sync::MutexGuard<'_, RegFile> {
        self.regs.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn emit(&self, events: Vec<AmdViEvent>) {
        for e in events {
            log::debug!("amdvi: interrupt {e:?}");
            (self.sink)(e);
        }
    }

    /// Reads `size` (4 or 8) bytes at `offset`. Unaligned accesses, other sizes and offsets
    /// with no register read zero.
    pub fn mmio_read(&self, offset: u64, size: u32) -> u64 {
        if !matches!(size, 4 | 8) || !offset.is_multiple_of(u64::from(size)) {
            log::warn!("amdvi: bad MMIO read of {size} bytes at {offset:#x}");
            return 0;
        }
        let base = offset & !7;
        let v = self.read_q(&self.regs(), base);
        match (size, offset == base) {
            (8, _) => v,
            (_, true) => v & 0xffff_ffff,
            (_, false) => v >> 32,
        }
    }

    fn read_q(&self, r: &RegFile, base: u64) -> u64 {
        match base {
            reg::DEV_TAB_BASE => r.dev_tab,
            reg::CMD_BUF_BASE => r.cmd_base,
            reg::EVENT_LOG_BASE => r.evt_base,
            reg::CONTROL => r.control,
            reg::EXCLUSION_BASE => r.excl_base,
            reg::EXCLUSION_LIMIT => r.excl_limit,
            reg::EFR => self.efr.into_bits(),
            reg::PPR_LOG_BASE => r.ppr_base,
            reg::CMD_BUF_HEAD => r.cmd_head,
            reg::CMD_BUF_TAIL => r.cmd_tail,
            reg::EVENT_LOG_HEAD => r.evt_head,
            reg::EVENT_LOG_TAIL => r.evt_tail,
            reg::STATUS => r.status_value(),
            _ => 0,
        }
    }

    /// Writes `size` (4 or 8) bytes of `value` at `offset`, with the side effects §3.4 gives
    /// each register. Unaligned accesses, other sizes, read-only registers and offsets with no
    /// register are ignored.
    pub fn mmio_write(&self, offset: u64, size: u32, value: u64) {
        if !matches!(size, 4 | 8) || !offset.is_multiple_of(u64::from(size)) {
            log::warn!("amdvi: bad MMIO write of {size} bytes at {offset:#x}");
            return;
        }
        let base = offset & !7;
        let mut out = Vec::new();
        {
            let mut r = self.regs();
            // A 4-byte write replaces its half of the 64-bit register; a write-1-to-clear
            // register takes only the bits written.
            let (v, written) = match (size, offset == base) {
                (8, _) => (value, u64::MAX),
                (_, true) => (value & 0xffff_ffff, 0xffff_ffff),
                (_, false) => (value << 32, 0xffff_ffff << 32),
            };
            let merged = (self.read_q(&r, base) & !written) | (v & written);
            let tail_complete = written & 0xffff_ffff != 0;
            self.write_q(&mut r, base, merged, v, tail_complete, &mut out);
        }
        self.emit(out);
    }

    fn write_q(
        &self,
        r: &mut RegFile,
        base: u64,
        v: u64,
        raw: u64,
        low_written: bool,
        out: &mut Vec<AmdViEvent>,
    ) {
        match base {
            reg::DEV_TAB_BASE => {
                r.dev_tab = v & DEV_TAB_MASK;
                self.fast.dev_tab.store(r.dev_tab, Ordering::Release);
            }
            reg::CMD_BUF_BASE => {
                // Writing a ring's base resets its head and tail.
                r.cmd_base = v & RING_BASE_MASK;
                r.cmd_head = 0;
                r.cmd_tail = 0;
            }
            reg::EVENT_LOG_BASE => {
                r.evt_base = v & RING_BASE_MASK;
                r.evt_head = 0;
                r.evt_tail = 0;
            }
            reg::CONTROL => self.write_control(r, v, out),
            reg::EXCLUSION_BASE => {
                r.excl_base = v & EXCLUSION_BASE_MASK;
                self.fast.excl_base.store(r.excl_base, Ordering::Release);
            }
            reg::EXCLUSION_LIMIT => {
                r.excl_limit = (v & ADDR_MASK) | 0xfff;
                self.fast.excl_limit.store(r.excl_limit, Ordering::Release);
            }
            reg::PPR_LOG_BASE => r.ppr_base = v & RING_BASE_MASK,
            reg::CMD_BUF_HEAD => r.cmd_head = v & RING_PTR_MASK,
            reg::CMD_BUF_TAIL => {
                r.cmd_tail = v & RING_PTR_MASK;
                if low_written {
                    self.process_commands(r, out);
                }
            }
            reg::EVENT_LOG_HEAD => r.evt_head = v & RING_PTR_MASK,
            reg::EVENT_LOG_TAIL => r.evt_tail = v & RING_PTR_MASK,
            reg::STATUS => r.status &= !(raw & STATUS_RW1C),
            // EFR is read-only; other offsets hold nothing.
            _ => log::debug!("amdvi: write to {base:#x} ignored"),
        }
    }

    /// Control (§3.4.4): EventLogRun and CmdBufRun follow IommuEn and the enables; turning a
    /// ring on restarts it where its head points.
    fn write_control(&self, r: &mut RegFile, v: u64, out: &mut Vec<AmdViEvent>) {
        let old = r.ctl();
        let new = Control::from_bits(v);
        r.control = v;
        self.fast.control.store(v, Ordering::Release);
        if new.event_log_en() && !old.event_log_en() {
            r.evt_stopped = false;
            r.status &= !Status::new().with_event_overflow(true).into_bits();
        }
        if new.cmd_buf_en() && !old.cmd_buf_en() {
            r.cmd_stopped = false;
        }
        if new.iommu_en() != old.iommu_en() {
            log::debug!(
                "amdvi: translation {}",
                if new.iommu_en() {
                    "enabled"
                } else {
                    "disabled"
                }
            );
        }
        self.process_commands(r, out);
    }

    fn ring(base: u64) -> (u64, u64) {
        let b = RingBase::from_bits(base);
        (b.base_page() << 12, b.entries() * RING_ENTRY)
    }

    /// Runs the commands from the head to the tail (§2.4). Stops at an illegal command
    /// (ILLEGAL_COMMAND_ERROR) or one that cannot be read or completed
    /// (COMMAND_HARDWARE_ERROR), with the head left on it and CmdBufRun clear.
    fn process_commands(&self, r: &mut RegFile, out: &mut Vec<AmdViEvent>) {
        if !r.cmd_running() {
            return;
        }
        let (base, bytes) = Self::ring(r.cmd_base);
        for _ in 0..bytes / RING_ENTRY {
            let head = r.cmd_head % bytes;
            if head == r.cmd_tail % bytes {
                break;
            }
            let at = base + head;
            let fetched = self
                .mem
                .read_u64(at)
                .and_then(|a| Ok([a, self.mem.read_u64(at + 8)?]));
            let stop = match fetched {
                Err(e) => {
                    log::warn!("amdvi: fetching the command at {at:#x}: {e}");
                    Some(EventCode::CommandHardwareError)
                }
                Ok(qw) => match command::decode(qw, self.efr) {
                    Err(e) => {
                        log::warn!("amdvi: illegal command {qw:x?} at {at:#x}: {e}");
                        Some(EventCode::IllegalCommandError)
                    }
                    Ok(cmd) => {
                        log::trace!("amdvi: command {cmd:?} at {at:#x}");
                        self.stats.commands.fetch_add(1, Ordering::Relaxed);
                        self.stats.by_kind[command_kind(&cmd)].fetch_add(1, Ordering::Relaxed);
                        self.execute(r, cmd, out).err()
                    }
                },
            };
            if let Some(code) = stop {
                r.cmd_stopped = true;
                self.log_event(r, Event::command(code, at), out);
                return;
            }
            r.cmd_head = (head + RING_ENTRY) % bytes;
        }
    }

    fn execute(
        &self,
        r: &mut RegFile,
        cmd: Command,
        out: &mut Vec<AmdViEvent>,
    ) -> Result<(), EventCode> {
        match cmd {
            Command::CompletionWait {
                store,
                interrupt,
                addr,
                data,
                ..
            } => {
                // Every earlier command has completed (they run synchronously), which is what
                // both the plain and the fenced wait promise.
                if store && let Err(e) = self.mem.write_u64(addr, data) {
                    log::warn!("amdvi: COMPLETION_WAIT store to {addr:#x}: {e}");
                    return Err(EventCode::CommandHardwareError);
                }
                let bit = Status::new().with_com_wait_int(true).into_bits();
                if interrupt && r.set_status(bit, bit) && r.ctl().com_wait_int_en() {
                    out.push(AmdViEvent::CompletionWait);
                }
            }
            Command::InvalidateDevtabEntry { device_id } => {
                self.caches.invalidate_dte(device_id);
                r.se_logged.remove(&device_id);
            }
            Command::InvalidateIommuPages(p) => self.caches.invalidate_pages(p),
            Command::InvalidateIommuAll => {
                self.caches.invalidate_all();
                r.se_logged.clear();
            }
            Command::PrefetchIommuPages {
                device_id,
                pasid,
                addr,
                count,
                inval,
            } => self.prefetch(device_id, pasid, addr, count, inval),
            // No device-side IOTLB, no interrupt remapping and no PPR log are modelled: these
            // complete with nothing to do.
            Command::InvalidateIotlbPages { .. }
            | Command::InvalidateInterruptTable { .. }
            | Command::CompletePprRequest { .. } => {}
        }
        Ok(())
    }

    /// Writes `e` at the event log's tail (§2.5): sets EventLogInt (interrupting on its rising
    /// edge with EventIntEn), or, when the log is full, sets EventOverflow and stops the log
    /// until EventLogEn is set again. Returns whether the event was written.
    fn log_event(&self, r: &mut RegFile, e: Event, out: &mut Vec<AmdViEvent>) -> bool {
        if !r.evt_running() {
            return false;
        }
        let (base, bytes) = Self::ring(r.evt_base);
        let tail = r.evt_tail % bytes;
        let next = (tail + RING_ENTRY) % bytes;
        let int = Status::new()
            .with_event_overflow(true)
            .with_event_log_int(true)
            .into_bits();
        let int_en = r.ctl().event_int_en();
        if next == r.evt_head % bytes {
            log::warn!("amdvi: event log full; {e:?} lost");
            r.evt_stopped = true;
            let bit = Status::new().with_event_overflow(true).into_bits();
            if r.set_status(bit, int) && int_en {
                out.push(AmdViEvent::EventLog);
            }
            return false;
        }
        let [q0, q1] = e.encode();
        let at = base + tail;
        if let Err(err) = self
            .mem
            .write_u64(at + 8, q1)
            .and_then(|()| self.mem.write_u64(at, q0))
        {
            log::warn!("amdvi: writing the event log at {at:#x}: {err}");
            return false;
        }
        r.evt_tail = next;
        let bit = Status::new().with_event_log_int(true).into_bits();
        if r.set_status(bit, int) && int_en {
            out.push(AmdViEvent::EventLog);
        }
        true
    }

    /// Logs a translation event (from any thread) and reports whether it was written: not if
    /// the unit was reset after the translation began (`resets` was then `boot`).
    fn record(&self, e: Event, se: bool, boot: u64) -> bool {
        let mut out = Vec::new();
        let logged = {
            let mut r = self.regs();
            let current = self.resets.load(Ordering::Acquire) == boot;
            // A device with DTE.SE logs one IO_PAGE_FAULT until its DTE is invalidated.
            let once = se && e.code == EventCode::IoPageFault;
            current
                && (!once || r.se_logged.insert(e.device_id))
                && self.log_event(&mut r, e, &mut out)
        };
        self.emit(out);
        logged
    }
}

impl<M: PhysMem + Send + Sync> Unit for AmdVi<M> {
    fn structures(&self, rid: u16, pasid: Option<u32>) -> Option<crate::inspect::StructureView> {
        Some(AmdVi::structures(self, rid, pasid))
    }

    fn name(&self) -> &'static str {
        "amdvi"
    }

    fn translate(&self, req: &DmaRequest, trace: &mut Trace) -> Result<Translation, Fault> {
        self.translate_with(req, trace)
    }

    fn mmio_read(&self, offset: u64, size: u32) -> u64 {
        AmdVi::mmio_read(self, offset, size)
    }

    fn mmio_write(&self, offset: u64, size: u32, value: u64) {
        AmdVi::mmio_write(self, offset, size, value)
    }

    fn reset(&self) {
        AmdVi::reset(self)
    }

    fn stats(&self) -> UnitStats {
        let c = &self.caches;
        let mut caches = vec![
            (CacheKind::Iotlb, c.iotlb.stats()),
            (CacheKind::Context, c.dte.stats()),
            (CacheKind::Pasid, c.gcr3.stats()),
        ];
        for level in 2..=crate::cache::PSC_MAX_LEVEL {
            if let Some(p) = c.pdc.level(level) {
                caches.push((CacheKind::PagingStructure { level }, p.stats()));
            }
        }
        let s = &self.stats;
        UnitStats {
            translations: s.translations.get(),
            faults: s.faults.load(Ordering::Relaxed),
            faults_recorded: s.faults_recorded.load(Ordering::Relaxed),
            commands: s.commands.load(Ordering::Relaxed),
            commands_by_kind: COMMAND_KINDS
                .iter()
                .zip(&s.by_kind)
                .map(|(k, n)| (*k, n.load(Ordering::Relaxed)))
                .collect(),
            caches,
        }
    }
}

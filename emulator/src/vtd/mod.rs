//! An Intel VT-d DMA-remapping unit that software programs only through its registers and
//! memory-resident structures (Intel VT-d spec rev 4.1).
//!
//! - [`Vtd::mmio_read`] / [`Vtd::mmio_write`]: the register file of §10.4 (4- and 8-byte
//!   accesses; anything else is ignored and reads zero).
//! - [`Unit::translate`] ([`Vtd::translate`]): one DMA request through the root, context and (in scalable mode) PASID
//!   structures, the caches and the page walkers, with the event trace of what it did. Callable
//!   from many threads at once; lock-free unless it faults.
//! - Queued invalidation is processed synchronously when IQT is written. Register-based
//!   invalidation (CCMD_REG, IOTLB_REG) works only on a unit of major version below 6 (one
//!   without scalable mode) in legacy mode, with queued invalidation off.
//! - Translation Disable (GCMD.TE 1 -> 0) empties every cache when scalable mode is offered
//!   (ECAP.SMTS), and fault recording restarts at the first fault recording register.
//! - The interrupt address range 0xFEEx_xxxx (§3.15): translations that land in it fault
//!   (LGN.4 / SGN.8), as do pass-through requests with PASID to it; requests without PASID to
//!   it are not remapped: a DWORD write (an interrupt request) goes on untranslated, a
//!   zero-length read completes, anything else is blocked (interrupt-remapping fault 20h).
//!   Interrupt remapping itself is not modelled (ECAP.IR = 0).
//! - Fault events and invalidation-completion events reach the embedder through the callback
//!   given to [`Vtd::new`], as the MSI address/data pair software programmed.
//!
//! # What the model supports, by capability bit (§10.4.2 CAP_REG, §10.4.3 ECAP_REG)
//!
//! | bit | meaning | model |
//! |---|---|---|
//! | CAP.ND | domain ids | 2 (256 DIDs reported; any 16-bit DID is honoured) |
//! | CAP.AFL, GCMD.SFL/EAFL | advanced fault logging | 0: primary fault logging only |
//! | CAP.RWBF | write-buffer flushing required | 0 (GCMD.WBF accepted, completes at once) |
//! | CAP.PLMR/PHMR | protected memory regions | 0 |
//! | CAP.CM | caching mode | configurable (no not-present entries are cached either way) |
//! | CAP.SAGAW | 3/4/5-level second stage | configurable (default 4-level and 3-level); 0 on a scalable-mode unit without ECAP.SSTS |
//! | CAP.MGAW | max guest address width | configurable (default 48) |
//! | CAP.ZLR, DRD, DWD | zero-length reads, draining | 1 (a zero-length read needs read or write permission; requests complete synchronously) |
//! | CAP.FRO, NFR | fault recording registers | configurable offset and count |
//! | CAP.SLLPS | second-stage 2 MiB / 1 GiB pages | configurable (default both) |
//! | CAP.PSI, MAMV | page-selective invalidation | configurable (default MAMV 18) |
//! | CAP.FS1GP, FS5LP | first-stage 1 GiB pages, 5-level | configurable (default 1 GiB only) |
//! | CAP.PI, ESRTPS, ESIRTPS | posted interrupts, enhanced SRTP | 0 |
//! | ECAP.C, SC | coherency, snoop control | 1 (memory is coherent; SNP accepted) |
//! | ECAP.QI | queued invalidation | configurable (default 1); SMTS and DT need it |
//! | ECAP.DT | device TLBs | configurable: T = 01b, DTE, translation requests, device-TLB descriptors (no device-side TLB is modelled) |
//! | ECAP.IR, EIM | interrupt remapping (IEC descriptors are invalid) | 0 |
//! | ECAP.PT | pass-through | configurable (default 1) |
//! | ECAP.IRO | IOTLB register offset | configurable |
//! | ECAP.MTS, PRS, NWFS, EAFS, VCS, DIT, PDS, ADMS, RPRIVS | memory types, page requests, ... | 0 |
//! | ECAP.NEST | nested translation | configurable (default 1) |
//! | ECAP.ERS / SRS | execute / supervisor requests | configurable (default SRS only) |
//! | ECAP.PSS, PASID | PASID width | configurable (default 20 bits) |
//! | ECAP.SMTS | scalable mode | configurable (default 1) |
//! | ECAP.SSADS | second-stage A/D | configurable (default 0) |
//! | ECAP.SSTS, FSTS | second-/first-stage translation in scalable mode | configurable (default 1) |
//! | ECAP.RPS | RID_PASID | 1 with scalable mode |

mod cache;
pub mod fault;
mod inspect;
pub mod layout;
pub mod qi;
pub mod regs;
pub mod setup;
pub mod structs;
mod translate;

#[cfg(test)]
mod tests;

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use pagewalk::PhysMem;

use self::cache::VtdCaches;
use self::fault::FaultInfo;
use self::layout::{IqaReg, RtaddrReg};
use self::qi::{ContextGranularity, DecodeCtx, Descriptor, IotlbGranularity};
use self::regs::*;
pub use self::regs::{ConfigError, VtdConfig};
use crate::request::{DmaRequest, Fault, Translation};
use crate::trace::Trace;
use crate::unit::{CacheKind, Unit, UnitStats};

/// An interrupt message the unit sends to the embedder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VtdEvent {
    /// A fault event (§7.4.1 "Fault Event Interrupts"): the FEUADDR:FEADDR / FEDATA message.
    Fault {
        /// Message address.
        addr: u64,
        /// Message data.
        data: u32,
    },
    /// An invalidation-completion event (§6.5.2.8): the IEUADDR:IEADDR / IEDATA message.
    InvalidationComplete {
        /// Message address.
        addr: u64,
        /// Message data.
        data: u32,
    },
}

/// The embedder's event callback.
pub type EventSink = Box<dyn Fn(VtdEvent) + Send + Sync>;

/// Bit 0 of the active-state word: GSTS.TES. Bits 11:10 hold the TTM and 63:12 the root table
/// address latched by the last SRTP command.
const ACTIVE_TE: u64 = 1;

/// The register state software programs (everything but CAP/ECAP/VER).
#[derive(Debug)]
struct RegFile {
    gsts: u32,
    rtaddr: u64,
    ccmd: u64,
    /// FSTS without PPF (which is derived from the fault recording registers).
    fsts: u32,
    fectl: u32,
    fedata: u32,
    feaddr: u32,
    feuaddr: u32,
    frcd: Vec<[u64; 2]>,
    /// Index of the fault recording register the next fault goes to.
    next_frcd: usize,
    iqh: u64,
    iqt: u64,
    iqa: u64,
    ics: u32,
    iectl: u32,
    iedata: u32,
    ieaddr: u32,
    ieuaddr: u32,
    iqercd: u64,
    iva: u64,
    iotlb: u64,
}

impl RegFile {
    fn new(nfr: usize) -> Self {
        Self {
            gsts: 0,
            rtaddr: 0,
            ccmd: 0,
            fsts: 0,
            fectl: CTL_IM,
            fedata: 0,
            feaddr: 0,
            feuaddr: 0,
            frcd: vec![[0; 2]; nfr],
            next_frcd: 0,
            iqh: 0,
            iqt: 0,
            iqa: 0,
            ics: 0,
            iectl: CTL_IM,
            iedata: 0,
            ieaddr: 0,
            ieuaddr: 0,
            iqercd: 0,
            iva: 0,
            iotlb: 0,
        }
    }

    fn ppf(&self) -> bool {
        self.frcd.iter().any(|r| r[1] & FRCD_F != 0)
    }

    fn fsts_value(&self) -> u32 {
        let mut v = self.fsts;
        if self.ppf() {
            v |= FSTS_PPF;
        }
        v
    }

    /// Sets `bits` in FSTS and raises a fault event if nothing was pending before (§7.4.1:
    /// an interrupt is generated only when no earlier fault condition is still pending).
    fn set_fsts(&mut self, bits: u32, out: &mut Vec<VtdEvent>) {
        let before = self.fsts_value() & (FSTS_PFO | FSTS_PPF | FSTS_IQE | FSTS_ICE | FSTS_ITE);
        self.fsts |= bits & !FSTS_PPF;
        if before == 0 {
            self.fault_interrupt(out);
        }
    }

    fn fault_interrupt(&mut self, out: &mut Vec<VtdEvent>) {
        if self.fectl & CTL_IM != 0 {
            self.fectl |= CTL_IP;
        } else {
            self.fectl &= !CTL_IP;
            out.push(VtdEvent::Fault {
                addr: (u64::from(self.feuaddr) << 32) | u64::from(self.feaddr),
                data: self.fedata,
            });
        }
    }

    fn completion_interrupt(&mut self, out: &mut Vec<VtdEvent>) {
        if self.iectl & CTL_IM != 0 {
            self.iectl |= CTL_IP;
        } else {
            self.iectl &= !CTL_IP;
            out.push(VtdEvent::InvalidationComplete {
                addr: (u64::from(self.ieuaddr) << 32) | u64::from(self.ieaddr),
                data: self.iedata,
            });
        }
    }

    /// Primary fault logging (§7.2.1): record at the next fault recording register unless it is
    /// still full (then overflow), or overflow is already pending.
    fn record_fault(&mut self, info: &FaultInfo, out: &mut Vec<VtdEvent>) -> bool {
        if self.fsts & FSTS_PFO != 0 {
            return false;
        }
        let idx = self.next_frcd % self.frcd.len();
        if self.frcd[idx][1] & FRCD_F != 0 {
            self.set_fsts(FSTS_PFO, out);
            return false;
        }
        let had_ppf = self.ppf();
        self.frcd[idx] = info.frcd();
        self.next_frcd = (idx + 1) % self.frcd.len();
        if !had_ppf {
            // FRI names the register the first pending fault was recorded in.
            self.fsts = (self.fsts & !(0xff << FSTS_FRI_SHIFT)) | ((idx as u32) << FSTS_FRI_SHIFT);
            let before = self.fsts & (FSTS_PFO | FSTS_IQE | FSTS_ICE | FSTS_ITE);
            if before == 0 {
                self.fault_interrupt(out);
            }
        }
        true
    }
}

/// Counters of what the unit did (reported through [`Unit::stats`]).
///
/// `translations` is bumped on every translation from every thread, so it is sharded per
/// thread ([`iotlb::ShardedCounter`]); the others count rare events on paths that already
/// serialize (fault recording, queue processing) and are plain atomics.
#[derive(Debug, Default)]
struct VtdStats {
    /// Translations requested.
    translations: iotlb::ShardedCounter,
    /// Translations that faulted.
    faults: AtomicU64,
    /// Faults written to a fault recording register.
    faults_recorded: AtomicU64,
    /// Invalidation descriptors executed.
    descriptors: AtomicU64,
    /// The same by type, indexed as [`DESCRIPTOR_KINDS`].
    by_kind: [AtomicU64; DESCRIPTOR_KINDS.len()],
}

/// The invalidation descriptor types (§6.5.2), as [`UnitStats::commands_by_kind`] names them.
const DESCRIPTOR_KINDS: [&str; 7] = [
    "context-cache invalidate",
    "IOTLB invalidate",
    "device-TLB invalidate",
    "invalidation wait",
    "PASID-based IOTLB invalidate",
    "PASID-cache invalidate",
    "PASID-based device-TLB invalidate",
];

/// `desc`'s index in [`DESCRIPTOR_KINDS`].
fn descriptor_kind(desc: &Descriptor) -> usize {
    match desc {
        Descriptor::ContextCache(_) => 0,
        Descriptor::Iotlb(_) => 1,
        Descriptor::DeviceTlb { .. } => 2,
        Descriptor::Wait { .. } => 3,
        Descriptor::PasidIotlb { .. } => 4,
        Descriptor::PasidCache { .. } => 5,
        Descriptor::PasidDeviceTlb { .. } => 6,
    }
}

impl<M: PhysMem + Send + Sync> Unit for Vtd<M> {
    fn structures(&self, rid: u16, pasid: Option<u32>) -> Option<crate::inspect::StructureView> {
        Some(Vtd::structures(self, rid, pasid))
    }

    fn name(&self) -> &'static str {
        "vtd"
    }

    fn translate(&self, req: &DmaRequest, trace: &mut Trace) -> Result<Translation, Fault> {
        self.translate_with(req, trace)
    }

    fn mmio_read(&self, offset: u64, size: u32) -> u64 {
        Vtd::mmio_read(self, offset, size)
    }

    fn mmio_write(&self, offset: u64, size: u32, value: u64) {
        Vtd::mmio_write(self, offset, size, value)
    }

    fn reset(&self) {
        Vtd::reset(self)
    }

    fn stats(&self) -> UnitStats {
        let s = &self.stats;
        let mut caches = vec![
            (CacheKind::Iotlb, self.caches.iotlb.stats()),
            (CacheKind::Context, self.caches.context.stats()),
        ];
        if self.cfg.scalable_mode {
            caches.push((CacheKind::Pasid, self.caches.pasid.stats()));
        }
        for level in 2..=crate::cache::PSC_MAX_LEVEL {
            if let Some(c) = self.caches.psc.level(level) {
                caches.push((CacheKind::PagingStructure { level }, c.stats()));
            }
        }
        UnitStats {
            translations: s.translations.get(),
            faults: s.faults.load(Ordering::Relaxed),
            faults_recorded: s.faults_recorded.load(Ordering::Relaxed),
            commands: s.descriptors.load(Ordering::Relaxed),
            commands_by_kind: DESCRIPTOR_KINDS
                .iter()
                .zip(&s.by_kind)
                .map(|(k, n)| (*k, n.load(Ordering::Relaxed)))
                .collect(),
            caches,
        }
    }
}

/// A VT-d remapping hardware unit over the memory `M`.
pub struct Vtd<M: PhysMem> {
    mem: M,
    cfg: VtdConfig,
    cap: u64,
    ecap: u64,
    /// TE, TTM and the latched root table address, read once per translation.
    active: AtomicU64,
    /// Resets so far: a translation records its fault only if no reset came after it began.
    resets: AtomicU64,
    regs: Mutex<RegFile>,
    caches: VtdCaches,
    sink: EventSink,
    stats: VtdStats,
    /// Legacy mode's second-stage walk configuration for each context-entry AW value, made
    /// once (a context-cache hit then builds no configuration).
    legacy_ss: [pagewalk::VtdSsConfig; 8],
}

impl<M: PhysMem> std::fmt::Debug for Vtd<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vtd")
            .field("cfg", &self.cfg)
            .field("active", &self.active)
            .finish_non_exhaustive()
    }
}

/// How an MMIO access maps onto the register file.
enum RegAt {
    /// A 64-bit register at this base offset.
    Q(u64),
    /// A 32-bit register at this offset.
    D(u64),
}

impl<M: PhysMem> Vtd<M> {
    /// A unit in its reset state (translation and queued invalidation disabled), reading and
    /// writing structures through `mem`, reporting interrupts to `sink`.
    pub fn new(mem: M, cfg: VtdConfig, sink: EventSink) -> Result<Self, ConfigError> {
        cfg.validate()?;
        let caches = VtdCaches::new(&cfg).map_err(|e| ConfigError::CacheGeometry {
            entries: e.entries,
            ways: e.ways,
        })?;
        Ok(Self {
            mem,
            cap: cfg.cap(),
            ecap: cfg.ecap(),
            active: AtomicU64::new(0),
            resets: AtomicU64::new(0),
            regs: Mutex::new(RegFile::new(usize::from(cfg.nfr))),
            caches,
            legacy_ss: core::array::from_fn(|aw| {
                translate::ss_config_for(&cfg, aw as u8, false, false)
            }),
            cfg,
            sink,
            stats: VtdStats::default(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &VtdConfig {
        &self.cfg
    }

    /// The memory the unit reads structures from.
    pub fn mem(&self) -> &M {
        &self.mem
    }

    /// Empties every cache, as global invalidations do, without the queue: what Translation
    /// Disable does with ECAP.SMTS, and what the fuzz oracle that compares cached translations
    /// with fresh ones uses.
    pub(crate) fn invalidate_caches(&self) {
        self.caches
            .invalidate_context(ContextGranularity::Global, true);
        self.caches
            .invalidate_pasid_cache(0, 0, qi::PasidCacheGranularity::Global);
        self.caches.invalidate_iotlb(IotlbGranularity::Global);
    }

    /// Returns the unit to its power-on state, as a platform reset does (see [`Unit::reset`]):
    /// translation off, every register at its reset value (§10.4: FECTL and IECTL with IM set,
    /// everything else zero; VER, CAP and ECAP are what they were), the fault recording
    /// registers empty and the next fault going to the first, every cache empty.
    pub fn reset(&self) {
        let mut r = self.regs();
        // Translation off first, so that no translation starting from now on uses the old root
        // table; the registers under their lock, so that no MMIO access sees half of each; the
        // caches last: translations take their cache tokens before they read the active state
        // (`translate_inner`), so one that saw translation still on took its tokens before
        // this invalidation, and its fills are refused.
        self.active.store(0, Ordering::Release);
        self.resets.fetch_add(1, Ordering::AcqRel);
        *r = RegFile::new(usize::from(self.cfg.nfr));
        self.invalidate_caches();
        log::debug!("vtd: reset");
    }

    fn regs(&self) -> std::sync::MutexGuard<'_, RegFile> {
        self.regs.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn emit(&self, events: Vec<VtdEvent>) {
        for e in events {
            log::debug!("vtd: event {e:?}");
            (self.sink)(e);
        }
    }

    fn reg_at(&self, off: u64) -> Option<RegAt> {
        let fro = u64::from(self.cfg.fro);
        let fr_end = fro + u64::from(self.cfg.nfr) * 16;
        let iro = u64::from(self.cfg.iro);
        let q = |base: u64| Some(RegAt::Q(base));
        match off {
            CAP_REG..=0x0f => q(CAP_REG),
            ECAP_REG..=0x17 => q(ECAP_REG),
            RTADDR_REG..=0x27 => q(RTADDR_REG),
            CCMD_REG..=0x2f => q(CCMD_REG),
            AFLOG_REG..=0x5f => q(AFLOG_REG),
            IQH_REG..=0x87 => q(IQH_REG),
            IQT_REG..=0x8f => q(IQT_REG),
            IQA_REG..=0x97 => q(IQA_REG),
            IQERCD_REG..=0xb7 => q(IQERCD_REG),
            o if (iro..iro + 16).contains(&o) => q(o & !7),
            o if (fro..fr_end).contains(&o) => q(o & !7),
            VER_REG | GCMD_REG | GSTS_REG | FSTS_REG | FECTL_REG | FEDATA_REG | FEADDR_REG
            | FEUADDR_REG | PMEN_REG | ICS_REG | IECTL_REG | IEDATA_REG | IEADDR_REG
            | IEUADDR_REG => Some(RegAt::D(off)),
            _ => None,
        }
    }

    /// Reads `size` (4 or 8) bytes of the register file at `offset`. Unaligned accesses, other
    /// sizes and offsets with no register read zero.
    pub fn mmio_read(&self, offset: u64, size: u32) -> u64 {
        if !matches!(size, 4 | 8) || !offset.is_multiple_of(u64::from(size)) {
            log::warn!("vtd: bad MMIO read of {size} bytes at {offset:#x}");
            return 0;
        }
        let r = self.regs();
        match (self.reg_at(offset), size) {
            (Some(RegAt::Q(base)), 8) if base == offset => self.read_q(&r, base),
            (Some(RegAt::Q(base)), 4) => {
                let v = self.read_q(&r, base);
                if offset == base {
                    v & 0xffff_ffff
                } else {
                    v >> 32
                }
            }
            (Some(RegAt::D(o)), 4) => u64::from(self.read_d(&r, o)),
            (_, 8) => {
                // Two 32-bit registers read together.
                let lo = match self.reg_at(offset) {
                    Some(RegAt::D(o)) => u64::from(self.read_d(&r, o)),
                    _ => 0,
                };
                let hi = match self.reg_at(offset + 4) {
                    Some(RegAt::D(o)) => u64::from(self.read_d(&r, o)),
                    _ => 0,
                };
                lo | (hi << 32)
            }
            _ => 0,
        }
    }

    fn read_q(&self, r: &RegFile, base: u64) -> u64 {
        let fro = u64::from(self.cfg.fro);
        let iro = u64::from(self.cfg.iro);
        match base {
            CAP_REG => self.cap,
            ECAP_REG => self.ecap,
            RTADDR_REG => r.rtaddr,
            CCMD_REG => r.ccmd,
            IQH_REG => r.iqh,
            IQT_REG => r.iqt,
            IQA_REG => r.iqa,
            IQERCD_REG => r.iqercd,
            b if b == iro => r.iva,
            b if b == iro + 8 => r.iotlb,
            b if b >= fro => {
                let i = ((b - fro) / 16) as usize;
                r.frcd.get(i).map_or(0, |f| f[((b - fro) / 8 % 2) as usize])
            }
            _ => 0,
        }
    }

    fn read_d(&self, r: &RegFile, off: u64) -> u32 {
        match off {
            VER_REG => self.cfg.version(),
            GSTS_REG => r.gsts,
            FSTS_REG => r.fsts_value(),
            FECTL_REG => r.fectl,
            FEDATA_REG => r.fedata,
            FEADDR_REG => r.feaddr,
            FEUADDR_REG => r.feuaddr,
            ICS_REG => r.ics,
            IECTL_REG => r.iectl,
            IEDATA_REG => r.iedata,
            IEADDR_REG => r.ieaddr,
            IEUADDR_REG => r.ieuaddr,
            // GCMD is write-only; PMEN reads zero (no protected memory regions).
            _ => 0,
        }
    }

    /// Writes `size` (4 or 8) bytes of `value` to the register file at `offset`, with the side
    /// effects the spec gives each register. Unaligned accesses, other sizes, read-only
    /// registers and offsets with no register are ignored.
    pub fn mmio_write(&self, offset: u64, size: u32, value: u64) {
        if !matches!(size, 4 | 8) || !offset.is_multiple_of(u64::from(size)) {
            log::warn!("vtd: bad MMIO write of {size} bytes at {offset:#x}");
            return;
        }
        let mut events = Vec::new();
        {
            let mut r = self.regs();
            match (self.reg_at(offset), size) {
                (Some(RegAt::Q(base)), 8) if base == offset => {
                    self.write_q(&mut r, base, value, true, true, &mut events)
                }
                (Some(RegAt::Q(base)), 4) => {
                    let old = self.read_q(&r, base);
                    let (v, lo, hi) = if offset == base {
                        ((old & !0xffff_ffff) | (value & 0xffff_ffff), true, false)
                    } else {
                        ((old & 0xffff_ffff) | (value << 32), false, true)
                    };
                    self.write_q(&mut r, base, v, lo, hi, &mut events)
                }
                (Some(RegAt::D(o)), 4) => self.write_d(&mut r, o, value as u32, &mut events),
                (_, 8) => {
                    if let Some(RegAt::D(o)) = self.reg_at(offset) {
                        self.write_d(&mut r, o, value as u32, &mut events);
                    }
                    if let Some(RegAt::D(o)) = self.reg_at(offset + 4) {
                        self.write_d(&mut r, o, (value >> 32) as u32, &mut events);
                    }
                }
                _ => log::debug!("vtd: write to unimplemented register {offset:#x} ignored"),
            }
        }
        self.emit(events);
    }

    fn write_q(
        &self,
        r: &mut RegFile,
        base: u64,
        v: u64,
        lo: bool,
        hi: bool,
        out: &mut Vec<VtdEvent>,
    ) {
        let fro = u64::from(self.cfg.fro);
        let iro = u64::from(self.cfg.iro);
        match base {
            RTADDR_REG => r.rtaddr = v & !0x3ff,
            CCMD_REG => {
                r.ccmd = v & !(3 << CCMD_CAIG_SHIFT);
                if hi && v & CCMD_ICC != 0 {
                    self.register_context_invalidation(r);
                }
            }
            IQT_REG => {
                r.iqt = v & IQ_OFFSET_MASK;
                if lo {
                    self.process_queue(r, out);
                }
            }
            IQA_REG => {
                // DW is kept as written: a width the unit cannot use is an invalidation queue
                // error when descriptors are fetched (IQEI 5, §10.4.24), not a silent change.
                let w = IqaReg::from_bits(v);
                r.iqa = IqaReg::new()
                    .with_qs(w.qs())
                    .with_dw(w.dw())
                    .with_iqa_page(w.iqa_page())
                    .into_bits()
            }
            b if b == iro => r.iva = v & !(0x1f << 7),
            b if b == iro + 8 => {
                r.iotlb = v & !(3 << IOTLB_IAIG_SHIFT);
                if hi && v & IOTLB_IVT != 0 {
                    self.register_iotlb_invalidation(r);
                }
            }
            b if b >= fro && (b - fro) % 16 == 8 => {
                // FRCD: F (bit 127) is RW1C; everything else is read-only.
                let i = ((b - fro) / 16) as usize;
                if hi
                    && v & FRCD_F != 0
                    && let Some(f) = r.frcd.get_mut(i)
                {
                    f[1] &= !FRCD_F;
                    if !r.ppf() {
                        self.maybe_clear_fault_ip(r);
                    }
                }
            }
            // CAP, ECAP, IQH, IQERCD, AFLOG and FRCD low halves are read-only.
            _ => {}
        }
    }

    fn write_d(&self, r: &mut RegFile, off: u64, v: u32, out: &mut Vec<VtdEvent>) {
        match off {
            GCMD_REG => self.global_command(r, v, out),
            FSTS_REG => {
                let was_iqe = r.fsts & FSTS_IQE != 0;
                r.fsts &= !(v & FSTS_RW1C);
                self.maybe_clear_fault_ip(r);
                if was_iqe && r.fsts & FSTS_IQE == 0 {
                    // Hardware resumes fetching descriptors once IQE is cleared.
                    self.process_queue(r, out);
                }
            }
            FECTL_REG => {
                r.fectl = (r.fectl & !CTL_IM) | (v & CTL_IM);
                if r.fectl & (CTL_IM | CTL_IP) == CTL_IP {
                    r.fault_interrupt(out);
                }
            }
            FEDATA_REG => r.fedata = v & 0xffff,
            FEADDR_REG => r.feaddr = v & !3,
            FEUADDR_REG => r.feuaddr = v,
            ICS_REG if v & ICS_IWC != 0 => {
                r.ics &= !ICS_IWC;
                r.iectl &= !CTL_IP;
            }
            IECTL_REG => {
                r.iectl = (r.iectl & !CTL_IM) | (v & CTL_IM);
                if r.iectl & (CTL_IM | CTL_IP) == CTL_IP {
                    r.completion_interrupt(out);
                }
            }
            IEDATA_REG => r.iedata = v & 0xffff,
            IEADDR_REG => r.ieaddr = v & !3,
            IEUADDR_REG => r.ieuaddr = v,
            _ => {}
        }
    }

    /// FECTL.IP is cleared once software has serviced every pending fault condition.
    fn maybe_clear_fault_ip(&self, r: &mut RegFile) {
        if r.fsts_value() & (FSTS_PFO | FSTS_PPF | FSTS_IQE | FSTS_ICE | FSTS_ITE) == 0 {
            r.fectl &= !CTL_IP;
        }
    }

    /// GCMD (§10.4.4): TE, QIE, IRE and CFI are states software keeps writing; SRTP, SFL, WBF
    /// and SIRTP are one-shot commands. Each status bit in GSTS follows its command.
    fn global_command(&self, r: &mut RegFile, v: u32, out: &mut Vec<VtdEvent>) {
        if v & GCMD_SRTP != 0 {
            // Latch RTADDR: the root table and its mode take effect now.
            r.gsts |= GCMD_SRTP;
            let te = self.active.load(Ordering::Acquire) & ACTIVE_TE;
            self.active
                .store((r.rtaddr & !0x3ff) | te, Ordering::Release);
            log::debug!("vtd: root table pointer set to {:#x}", r.rtaddr);
        }
        if v & GCMD_WBF != 0 {
            // Write-buffer flushing completes at once: WBFS reads back clear.
            r.gsts &= !GCMD_WBF;
        }
        let te = v & GCMD_TE != 0;
        if te != (r.gsts & GCMD_TE != 0) {
            if te {
                r.gsts |= GCMD_TE;
                self.active.fetch_or(ACTIVE_TE, Ordering::AcqRel);
            } else {
                r.gsts &= !GCMD_TE;
                self.active.fetch_and(!ACTIVE_TE, Ordering::AcqRel);
                // §7.2.1: the index of the next fault recording register returns to 0 when
                // both translations are disabled (GSTS.TES and IRES clear; IR is not offered).
                r.next_frcd = 0;
                // GCMD.TE: with ECAP.SMTS reported, Translation Disable performs a global
                // invalidation of every DMA-remapping cache. Translation is already off, and
                // the invalidation moves every cache's generation on, so no walk that began
                // before can fill a cache after it (translations take their tokens before they
                // read whether translation is on).
                if self.cfg.scalable_mode {
                    self.invalidate_caches();
                }
            }
            log::debug!(
                "vtd: translation {}",
                if te { "enabled" } else { "disabled" }
            );
        }
        let qie = v & GCMD_QIE != 0;
        if qie != (r.gsts & GCMD_QIE != 0) && self.cfg.queued_invalidation {
            if qie {
                r.gsts |= GCMD_QIE;
                if r.iqt != r.iqh {
                    self.process_queue(r, out);
                }
            } else {
                // Disabling with descriptors pending is a programming error the spec leaves
                // undefined; the model drops them. IQH resets to 0 when QI is disabled.
                r.gsts &= !GCMD_QIE;
                r.iqh = 0;
            }
        }
        // SFL/EAFL (advanced fault logging), IRE/SIRTP/CFI (interrupt remapping) are not
        // supported: CAP.AFL and ECAP.IR are 0, so those commands are ignored.
    }

    /// Whether a CCMD_REG or IOTLB_REG invalidation request is an incorrect one, performing
    /// nothing and reporting an actual granularity of 00b (§10.4.7 CCMD_REG, §10.4.8.1
    /// IOTLB_REG): while queued invalidation is enabled, while the translation table mode is
    /// not legacy mode (TTM != 00b), and always on a unit of major version 6 or more.
    fn register_invalidation_refused(&self, r: &RegFile) -> bool {
        let why = if r.gsts & GCMD_QIE != 0 {
            "queued invalidation is enabled"
        } else if self.cfg.version() >> 4 >= 6 {
            "the unit's major version is 6 or more"
        } else if self.active_ttm() != TTM_LEGACY {
            "the translation table mode is not legacy mode"
        } else {
            return false;
        };
        log::warn!("vtd: register-based invalidation refused: {why}");
        true
    }

    /// CCMD-based context-cache invalidation (§10.4.7, §6.5.1.1).
    fn register_context_invalidation(&self, r: &mut RegFile) {
        let v = r.ccmd;
        let did = (v & 0xffff) as u16;
        let sid = ((v >> CCMD_SID_SHIFT) & 0xffff) as u16;
        let fm = ((v >> CCMD_FM_SHIFT) & 3) as u8;
        let cirg = (v >> CCMD_CIRG_SHIFT) & 3;
        let caig = if self.register_invalidation_refused(r) {
            0
        } else {
            let g = match cirg {
                1 => Some(ContextGranularity::Global),
                2 => Some(ContextGranularity::Domain(did)),
                3 => Some(ContextGranularity::Device { did, sid, fm }),
                _ => None,
            };
            match g {
                Some(g) => {
                    // Performed only in legacy mode, where cached context entries carry a DID.
                    self.caches.invalidate_context(g, false);
                    cirg
                }
                None => 0,
            }
        };
        r.ccmd = (v & !CCMD_ICC & !(3 << CCMD_CAIG_SHIFT)) | (caig << CCMD_CAIG_SHIFT);
    }

    /// IOTLB_REG-based invalidation (§10.4.8.1, §6.5.1.2). Page-selective requests beyond CAP.MAMV
    /// or without CAP.PSI are performed domain-selectively, as IAIG reports.
    fn register_iotlb_invalidation(&self, r: &mut RegFile) {
        let v = r.iotlb;
        let did = ((v >> IOTLB_DID_SHIFT) & 0xffff) as u16;
        let iirg = (v >> IOTLB_IIRG_SHIFT) & 3;
        let am = (r.iva & IVA_AM_MASK) as u8;
        let iaig = if self.register_invalidation_refused(r) {
            0
        } else {
            match iirg {
                1 => {
                    self.caches.invalidate_iotlb(IotlbGranularity::Global);
                    1
                }
                2 => {
                    self.caches.invalidate_iotlb(IotlbGranularity::Domain(did));
                    2
                }
                3 if self.cfg.mamv.is_some_and(|m| am <= m) => {
                    self.caches.invalidate_iotlb(IotlbGranularity::Page {
                        did,
                        addr: r.iva & !0xfff,
                        am,
                        ih: r.iva & IVA_IH != 0,
                    });
                    3
                }
                3 => {
                    self.caches.invalidate_iotlb(IotlbGranularity::Domain(did));
                    2
                }
                _ => 0,
            }
        };
        r.iotlb = (v & !IOTLB_IVT & !(3 << IOTLB_IAIG_SHIFT)) | (iaig << IOTLB_IAIG_SHIFT);
    }

    /// The translation table mode latched by the last SRTP command (RTADDR.TTM, §10.4.6).
    fn active_ttm(&self) -> u64 {
        u64::from(RtaddrReg::from_bits(self.active.load(Ordering::Acquire)).ttm())
    }

    /// Whether the latched root table is in scalable mode.
    fn scalable_active(&self) -> bool {
        self.active_ttm() == TTM_SCALABLE
    }

    fn iq_error(&self, r: &mut RegFile, iqei: qi::Iqei, out: &mut Vec<VtdEvent>) {
        log::warn!(
            "vtd: invalidation queue error {iqei:?} (IQEI {}) at IQH {:#x}",
            iqei.code(),
            r.iqh
        );
        r.iqercd = (r.iqercd & !0xf) | iqei.code();
        r.set_fsts(FSTS_IQE, out);
    }

    /// Fetches and executes descriptors from IQH up to IQT (§6.5.2). Stops at the first invalid
    /// descriptor with FSTS.IQE set and IQH pointing at it.
    fn process_queue(&self, r: &mut RegFile, out: &mut Vec<VtdEvent>) {
        if r.gsts & GCMD_QIE == 0 || r.fsts & FSTS_IQE != 0 {
            return;
        }
        let iqa = IqaReg::from_bits(r.iqa);
        let wide = iqa.dw();
        let dsize = iqa.descriptor_bytes();
        let qbytes = iqa.queue_bytes();
        let base = iqa.iqa_page() << 12;
        if r.iqt >= qbytes {
            return self.iq_error(r, qi::Iqei::TailBeyondQueue, out);
        }
        if wide && r.iqt & 0x10 != 0 {
            return self.iq_error(r, qi::Iqei::TailMisaligned, out);
        }
        if r.iqh == r.iqt {
            return;
        }
        let scalable = match self.queue_mode(wide) {
            Ok(scalable) => scalable,
            Err(iqei) => return self.iq_error(r, iqei, out),
        };
        let ctx = DecodeCtx {
            scalable,
            device_tlb: self.cfg.device_tlb,
            pasid: self.cfg.scalable_mode,
        };
        // At most one pass over the queue per tail write.
        for _ in 0..qbytes / dsize {
            if r.iqh == r.iqt {
                break;
            }
            let at = base.wrapping_add(r.iqh);
            let mut qw = [0u64; 4];
            let n = (dsize / 8) as usize;
            for (i, q) in qw.iter_mut().take(n).enumerate() {
                let fetched = at
                    .checked_add(8 * i as u64)
                    .ok_or(pagewalk::MemError::Unmapped(at))
                    .and_then(|a| self.mem.read_u64(a));
                match fetched {
                    Ok(v) => *q = v,
                    Err(e) => {
                        log::warn!("vtd: fetching invalidation descriptor at {at:#x}: {e}");
                        return self.iq_error(r, qi::Iqei::FetchError, out);
                    }
                }
            }
            let desc = match qi::decode(&qw[..n], ctx) {
                Ok(d) => d,
                Err(iqei) => return self.iq_error(r, iqei, out),
            };
            log::trace!("vtd: descriptor {desc:?} at {at:#x}");
            self.execute(r, desc, out);
            self.stats.descriptors.fetch_add(1, Ordering::Relaxed);
            r.iqh = (r.iqh + dsize) % qbytes;
        }
    }

    /// Whether the queue's descriptors are checked against scalable mode, or why none can be
    /// fetched: which types are valid depends on the translation table mode (§6.5.2), and a
    /// latched TTM the unit does not support leaves none valid (IQEI 7); scalable mode needs
    /// 256-bit descriptors, and 256-bit descriptors need ECAP.SMTS (or ADMS, not offered)
    /// (IQEI 5; IQA_REG.DW, §10.4.24).
    fn queue_mode(&self, wide: bool) -> Result<bool, qi::Iqei> {
        let scalable = match self.active_ttm() {
            TTM_LEGACY => false,
            TTM_SCALABLE if self.cfg.scalable_mode => true,
            _ => return Err(qi::Iqei::InvalidTtm),
        };
        if (scalable && !wide) || (wide && !self.cfg.scalable_mode) {
            return Err(qi::Iqei::InvalidWidth);
        }
        Ok(scalable)
    }

    fn execute(&self, r: &mut RegFile, desc: Descriptor, out: &mut Vec<VtdEvent>) {
        self.stats.by_kind[descriptor_kind(&desc)].fetch_add(1, Ordering::Relaxed);
        match desc {
            Descriptor::ContextCache(g) => {
                self.caches.invalidate_context(g, self.scalable_active())
            }
            Descriptor::Iotlb(g) => self.caches.invalidate_iotlb(g),
            Descriptor::PasidCache {
                did,
                pasid,
                granularity,
            } => self.caches.invalidate_pasid_cache(did, pasid, granularity),
            Descriptor::PasidIotlb {
                did,
                pasid,
                granularity,
            } => self.caches.invalidate_pasid_iotlb(did, pasid, granularity),
            // The model keeps no device-TLB state: ATS translation completions are not cached
            // on its side, so there is nothing to invalidate or wait for.
            Descriptor::DeviceTlb { .. } | Descriptor::PasidDeviceTlb { .. } => {}
            Descriptor::Wait {
                interrupt,
                status_write,
                data,
                addr,
                ..
            } => {
                // Every earlier descriptor has completed (they run synchronously), which is what
                // both the plain and the fenced wait promise.
                if status_write && let Err(e) = self.mem.write_u32(addr, data) {
                    log::warn!("vtd: invalidation wait status write to {addr:#x}: {e}");
                }
                if interrupt && r.ics & ICS_IWC == 0 {
                    r.ics |= ICS_IWC;
                    r.completion_interrupt(out);
                }
            }
        }
    }

    /// Records `info` in the fault recording registers and reports whether it was recorded:
    /// not if the unit was reset after the translation began (`resets` was then `boot`).
    fn record_fault(&self, info: &FaultInfo, boot: u64) -> bool {
        let mut events = Vec::new();
        let recorded = {
            let mut r = self.regs();
            self.resets.load(Ordering::Acquire) == boot && r.record_fault(info, &mut events)
        };
        self.emit(events);
        recorded
    }
}

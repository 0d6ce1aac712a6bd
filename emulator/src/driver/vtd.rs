//! The VT-d driver: domains realised in a VT-d unit ([`crate::vtd::Vtd`]), programmed the way
//! a kernel driver programs silicon: only through the register file and memory-resident
//! structures, and knowing only what the capability registers say.
//!
//! - Structures live in an IOMMU-private physical region (outside guest RAM): the legacy-mode
//!   root table, one context table per bus in use, the second-stage tables of every domain
//!   (built with pagewalk's [`TableBuilder`]), the invalidation queue and its wait-status word.
//! - Bring-up (VT-d spec rev 4.1, §10.4.4–§10.4.6, §6.5.2): RTADDR, GCMD.SRTP, IQA, GCMD.QIE,
//!   global context-cache and IOTLB invalidation, GCMD.TE.
//! - Every invalidation goes through the invalidation queue ([`InvalidationQueue`], a
//!   [`CommandQueue`]) and ends with an invalidation-wait descriptor whose status write the
//!   driver checks (§6.5.2.8).
//! - A paging domain is a domain id (DID) plus second-stage tables.
//! - Legacy mode ([`VtdMode::Legacy`], RTADDR.TTM = 00b): an endpoint's context entry (§9.3)
//!   points at the tables (T = 00b). Identity is T = 10b (pass-through, ECAP.PT). A blocked
//!   endpoint has no present context entry, so its DMA faults (fault reason 2h).
//! - Scalable mode ([`VtdMode::Scalable`], TTM = 01b): each endpoint gets a scalable-mode
//!   context entry (§9.4) with a PASID directory (§9.5) and PASID table; attach writes the
//!   PASID-table entry (§9.6) of RID_PASID 0: PGTT = 010b (second stage) with SSPTPTR and DID,
//!   or PGTT = 100b (pass-through); blocked clears its P bit (fault reason 59h). The invalidation
//!   queue then uses 256-bit descriptors (IQA.DW = 1), and PASID-entry changes add PASID-cache
//!   invalidations (§6.5.2.2).

// Keys are our handles, source ids and domain ids, never hashed by a guest's choice alone
// (the topology bounds them): a fast hash.
use rustc_hash::FxHashMap as HashMap;
use smallvec::{SmallVec, smallvec};
use std::sync::{Arc, Mutex};

use pagewalk::{PageSizePolicy, PhysMem, Reclaim, TableBuilder, VtdSsConfig, WalkConfig};

use super::{
    CommandQueue, DomainIds, Driver, DriverStats, EndpointMode, HwDomain, HwError, PAGE,
    PrivateMemory, PrivateRegion, Resource,
};
use crate::core::{EndpointId, Mapping};
use crate::unit::Unit;
use crate::vtd::layout::{
    CapReg, ContextEntryHi, ContextEntryLo, EcapReg, GlobalCommand, IqaReg, PGTT_PASS_THROUGH,
    PGTT_SECOND_STAGE, PasidDirEntryRaw, PasidEntryQw0, PasidEntryQw1, RootEntryLo, RtaddrReg,
    ScalableContextQw0, T_PASS_THROUGH, T_UNTRANSLATED,
};
use crate::vtd::qi::{ContextGranularity, IotlbGranularity, PasidCacheGranularity, encode};
use crate::vtd::regs::*;
use crate::vtd::{Vtd, VtdConfig};

/// The DID every pass-through context entry carries (the spec requires a DID even for T = 10b;
/// like Linux, we reserve one for identity).
pub const PASS_THROUGH_DID: u16 = 1;
/// First DID handed to paging domains (DID 0 is reserved when CAP.CM is set, §9.3).
pub const FIRST_DID: u16 = 2;

/// At most this many page-selective IOTLB descriptors for one unmap; more becomes one
/// domain-selective invalidation.
const MAX_PSI: usize = 32;

/// Invalidation descriptors of one request: inline for the common few (a single-page unmap
/// needs one), so building them allocates nothing.
type Descs = SmallVec<[[u64; 2]; 4]>;

/// How the driver programs the unit (RTADDR.TTM, §10.4.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VtdMode {
    /// Legacy mode: root and context entries (§9.1, §9.3).
    Legacy,
    /// Scalable mode: scalable root and context entries, PASID directory and table (§9.2,
    /// §9.4–§9.6); endpoints are attached through the PASID entry of RID_PASID 0.
    Scalable,
}

#[derive(Debug)]
struct DomainHw {
    did: u16,
    tables: TableBuilder,
}

/// The VT-d invalidation queue as the driver keeps it (§6.5.2): one page of descriptors, the
/// software tail, and the status word each invalidation-wait descriptor writes.
#[derive(Debug)]
pub struct InvalidationQueue {
    base: u64,
    tail: u64,
    /// Bytes per descriptor: 16, or 32 with IQA.DW = 1 (scalable mode).
    desc_size: u64,
    status_addr: u64,
    status_seq: u32,
}

impl<M: PhysMem> CommandQueue<Vtd<M>> for InvalidationQueue {
    type Command = [u64; 2];

    fn capacity(&self) -> usize {
        (PAGE / self.desc_size) as usize
    }

    fn write(&mut self, unit: &Vtd<M>, d: &[u64; 2]) -> Result<(), HwError> {
        let mem = unit.mem();
        let at = self.base + self.tail;
        mem.write_u64(at, d[0])?;
        mem.write_u64(at + 8, d[1])?;
        // 256-bit descriptors: the upper 128 bits are reserved (zero) for the types we use.
        for q in 2..self.desc_size / 8 {
            mem.write_u64(at + 8 * q, 0)?;
        }
        self.tail = (self.tail + self.desc_size) % PAGE;
        Ok(())
    }

    fn wait(&mut self, unit: &Vtd<M>) -> Result<(), HwError> {
        self.status_seq = self.status_seq.wrapping_add(1);
        let seq = self.status_seq;
        let wait = encode::wait(false, true, false, seq, self.status_addr);
        CommandQueue::<Vtd<M>>::write(self, unit, &wait)?;
        unit.mmio_write(IQT_REG, 8, self.tail);
        if unit.mem().read_u32(self.status_addr)? == seq {
            return Ok(());
        }
        let fsts = unit.mmio_read(FSTS_REG, 4);
        if fsts & u64::from(FSTS_IQE) != 0 {
            // Recover as Linux's qi_check_fault() does: the unit stopped at IQH on the bad
            // descriptor (§6.5.2.10), and the tail register ignores writes while IQE is set.
            // Overwrite that descriptor with a harmless wait (no status write, no
            // interrupt), then clear IQE: the unit resumes at IQH and runs the rest of the
            // queue, our wait included, so the queue is in step for the next submission.
            let at = self.base + (unit.mmio_read(IQH_REG, 8) & (PAGE - 1));
            let nop = encode::wait(false, false, false, 0, 0);
            let mem = unit.mem();
            mem.write_u64(at, nop[0])?;
            mem.write_u64(at + 8, nop[1])?;
            for q in 2..self.desc_size / 8 {
                mem.write_u64(at + 8 * q, 0)?;
            }
            unit.mmio_write(FSTS_REG, 4, u64::from(FSTS_IQE));
        }
        // Whatever went wrong, this submission failed: a descriptor of it was not run.
        Err(HwError::QueueWait { status: fsts })
    }
}

#[derive(Debug)]
struct Ctl {
    alloc: PrivateMemory,
    root: u64,
    /// Context tables by `bus << 1 | half` (half: devfn >= 128, scalable mode only).
    context_tables: HashMap<u16, u64>,
    /// Scalable mode: each endpoint's PASID directory and PASID table.
    pasid_tables: HashMap<u16, (u64, u64)>,
    queue: InvalidationQueue,
    domains: HashMap<HwDomain, DomainHw>,
    next_handle: u64,
    dids: DomainIds,
    /// The DID each endpoint's present context entry carries.
    endpoint_did: HashMap<u16, u16>,
}

/// A [`Driver`] that realises domains in a VT-d remapping unit.
pub struct VtdDriver<M: PhysMem> {
    unit: Arc<Vtd<M>>,
    mode: VtdMode,
    ctl: Mutex<Ctl>,
    ss: VtdSsConfig,
    aw: u64,
    psi_max_am: Option<u8>,
    /// Offset of the first fault recording register and how many there are (CAP.FRO, NFR).
    fault_regs: (u64, u64),
    /// CAP.CM (bit 7): not-present and erroneous entries may be cached.
    caching_mode: bool,
}

impl<M: PhysMem> std::fmt::Debug for VtdDriver<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VtdDriver")
            .field("unit", &self.unit)
            .field("ss", &self.ss)
            .finish_non_exhaustive()
    }
}

fn not_acknowledged(command: &'static str, status: u32) -> HwError {
    HwError::NotAcknowledged {
        command,
        status: u64::from(status),
    }
}

impl<M: PhysMem + Send + Sync + 'static> VtdDriver<M> {
    /// Brings `unit` up in `mode` with queued invalidation, translation enabled and every
    /// endpoint blocked, keeping its structures in `region` (memory the unit can read, outside
    /// guest RAM). Everything the driver needs to know about the unit it reads from CAP and
    /// ECAP (§10.4.2, §10.4.3), except `haw`, the host address width, which a driver learns
    /// from the DMAR table (its HAW field), not from the registers.
    pub fn new(
        unit: Arc<Vtd<M>>,
        region: PrivateRegion,
        mode: VtdMode,
        haw: u8,
    ) -> Result<Self, HwError> {
        let cap = CapReg::from_bits(unit.mmio_read(CAP_REG, 8));
        let ecap = EcapReg::from_bits(unit.mmio_read(ECAP_REG, 8));
        if !ecap.qi() || !ecap.pt() {
            return Err(HwError::Unsupported(
                "the VT-d driver needs queued invalidation and pass-through (ECAP.QI, ECAP.PT)",
            ));
        }
        if mode == VtdMode::Scalable && (!ecap.smts() || !ecap.ssts()) {
            return Err(HwError::Unsupported(
                "scalable mode needs ECAP.SMTS and ECAP.SSTS (second-stage translation)",
            ));
        }
        // SAGAW: prefer 4-level (48-bit), then 3-level, then 5-level (SAGAW bits 2, 1, 3).
        let levels = [4u8, 3, 5]
            .into_iter()
            .find(|l| cap.sagaw() & (1 << (l - 2)) != 0)
            .ok_or(HwError::Unsupported(
                "CAP.SAGAW offers no second-stage depth",
            ))?;
        // SLLPS: bit 0 2 MiB, bit 1 1 GiB.
        let mut ss = VtdSsConfig::new(levels);
        ss.input_width = ss.input_width.min(cap.mgaw());
        ss.haw = haw;
        ss.sp_2m = cap.sllps() & 1 != 0;
        ss.sp_1g = cap.sllps() & 2 != 0;
        let max_did = u16::try_from(cap.domain_ids() - 1).unwrap_or(u16::MAX);
        // Page-selective invalidation and its largest address mask.
        let psi_max_am = cap.psi().then_some(cap.mamv());
        let fault_regs = (cap.fault_regs_offset(), cap.fault_regs());
        let mut alloc = PrivateMemory::new(region)?;
        let [root, iq_base, status_page] = [0; 3].map(|_| alloc.page(unit.mem()));
        let (root, iq_base, status_page) = (root?, iq_base?, status_page?);
        let desc_size = match mode {
            VtdMode::Legacy => 16,
            VtdMode::Scalable => 32,
        };
        let hw = Self {
            unit,
            mode,
            ctl: Mutex::new(Ctl {
                alloc,
                root,
                context_tables: HashMap::default(),
                pasid_tables: HashMap::default(),
                queue: InvalidationQueue {
                    base: iq_base,
                    tail: 0,
                    desc_size,
                    status_addr: status_page,
                    status_seq: 0,
                },
                domains: HashMap::default(),
                next_handle: 1,
                dids: DomainIds::new(FIRST_DID, max_did),
                endpoint_did: HashMap::default(),
            }),
            ss,
            aw: u64::from(levels - 2),
            psi_max_am,
            fault_regs,
            caching_mode: cap.cm(),
        };
        hw.bring_up()?;
        Ok(hw)
    }

    /// [`VtdDriver::new`] over a new unit built from `cfg` on `mem`, whose fault and
    /// invalidation-completion interrupts are logged (this driver polls instead).
    pub fn with_unit(
        mem: M,
        cfg: VtdConfig,
        region: PrivateRegion,
        mode: VtdMode,
    ) -> Result<Self, HwError> {
        let haw = cfg.haw;
        let unit = Vtd::new(mem, cfg, Box::new(|e| log::debug!("vtd event {e:?}")))?;
        Self::new(Arc::new(unit), region, mode, haw)
    }

    /// The VT-d unit this driver programs (its registers and memory can be inspected; its
    /// caches cannot).
    pub fn vtd(&self) -> &Arc<Vtd<M>> {
        &self.unit
    }

    /// The mode the unit is programmed in.
    pub fn mode(&self) -> VtdMode {
        self.mode
    }

    /// The second-stage configuration domains are built with.
    pub fn second_stage(&self) -> &VtdSsConfig {
        &self.ss
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ctl> {
        self.ctl.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn mem(&self) -> &M {
        self.unit.mem()
    }

    fn gsts(&self) -> u32 {
        self.unit.mmio_read(GSTS_REG, 4) as u32
    }

    /// Issues a GCMD command with the persistent state bits (TE, QIE) kept, and checks that
    /// GSTS reports `expect` (§10.4.4: software reads GSTS, ORs in the command, writes GCMD).
    fn gcmd(&self, set: GlobalCommand) -> Result<(), HwError> {
        let gsts = GlobalCommand::from_bits_truncate(self.gsts());
        let keep = gsts & (GlobalCommand::TE | GlobalCommand::QIE);
        self.unit
            .mmio_write(GCMD_REG, 4, u64::from((keep | set).bits()));
        if !GlobalCommand::from_bits_truncate(self.gsts()).contains(set) {
            return Err(not_acknowledged("a GCMD command", self.gsts()));
        }
        Ok(())
    }

    fn bring_up(&self) -> Result<(), HwError> {
        let (root, iq_base) = {
            let c = self.lock();
            (c.root, c.queue.base)
        };
        // RTADDR with TTM = 00b (legacy) or 01b (scalable), then Set Root Table Pointer
        // (§10.4.6).
        let ttm = match self.mode {
            VtdMode::Legacy => TTM_LEGACY,
            VtdMode::Scalable => TTM_SCALABLE,
        };
        let rtaddr = RtaddrReg::new()
            .with_ttm(ttm as u8)
            .with_rta_page(root >> 12);
        self.unit.mmio_write(RTADDR_REG, 8, rtaddr.into_bits());
        self.gcmd(GlobalCommand::SRTP)?;
        // Invalidation queue: one page (IQA.QS = 0) of 128-bit descriptors, or 256-bit ones
        // (DW = 1) in scalable mode; IQT = 0; then Queued Invalidation Enable (§10.4.23,
        // §6.5.2).
        let iqa = IqaReg::new()
            .with_iqa_page(iq_base >> 12)
            .with_dw(self.mode == VtdMode::Scalable);
        self.unit.mmio_write(IQA_REG, 8, iqa.into_bits());
        self.unit.mmio_write(IQT_REG, 8, 0);
        self.gcmd(GlobalCommand::QIE)?;
        {
            let mut c = self.lock();
            self.submit(&mut c, &self.global_descs())?;
        }
        self.gcmd(GlobalCommand::TE)
    }

    /// Submits `descs` through the invalidation queue, with a wait after each chunk: when it
    /// returns, every descriptor has completed (§6.5.2.8).
    fn submit(&self, c: &mut Ctl, descs: &[[u64; 2]]) -> Result<(), HwError> {
        c.queue.submit(&*self.unit, descs)
    }

    /// The context table for `bus` (and, in scalable mode, the half of the devfn space
    /// `half` selects), created with its root entry (half) made present if needed.
    fn context_table(&self, c: &mut Ctl, bus: u8, half: u8) -> Result<u64, HwError> {
        let key = (u16::from(bus) << 1) | u16::from(half);
        if let Some(t) = c.context_tables.get(&key) {
            return Ok(*t);
        }
        let t = c.alloc.page(self.mem())?;
        // Legacy root entry (§9.1): lower qword CTP | P, upper qword reserved. Scalable root
        // entry (§9.2): lower qword LCTP | LP (devfn 0-127), upper UCTP | UP (128-255).
        let re = c.root + 16 * u64::from(bus) + 8 * u64::from(half);
        // A root entry half of either mode: P and the table's page (§9.1, §9.2).
        let root = RootEntryLo::new().with_p(true).with_ctp_page(t >> 12);
        if let Err(e) = self.mem().write_u64(re, root.into_bits()) {
            c.alloc.free(t);
            return Err(e.into());
        }
        c.context_tables.insert(key, t);
        Ok(t)
    }

    /// Scalable mode: `sid`'s PASID table, created with its context entry (§9.4: PASIDDIRPTR,
    /// PDTS = 0, RID_PASID = 0) and PASID-directory entry (§9.5) if needed.
    fn pasid_table(&self, c: &mut Ctl, sid: u16) -> Result<u64, HwError> {
        if let Some((_, t)) = c.pasid_tables.get(&sid) {
            return Ok(*t);
        }
        let [bus, devfn] = sid.to_be_bytes();
        let ctx = self.context_table(c, bus, devfn >> 7)?;
        let pages = c.alloc.alloc_zeroed(self.mem(), 2)?;
        let (dir, table) = (pages[0], pages[1]);
        let ce = ctx + 32 * u64::from(devfn & 0x7f);
        let wr = |addr: u64, v: u64| self.mem().write_u64(addr, v);
        let r = (|| {
            let pde = PasidDirEntryRaw::new()
                .with_p(true)
                .with_smptblptr_page(table >> 12);
            wr(dir, pde.into_bits())?;
            // Qwords 1-3 (RID_PASID = 0, reserved) first, then qword 0 with P.
            for q in 1..4 {
                wr(ce + 8 * q, 0)?;
            }
            let qw0 = ScalableContextQw0::new()
                .with_p(true)
                .with_pasiddirptr_page(dir >> 12);
            wr(ce, qw0.into_bits())
        })();
        if let Err(e) = r {
            c.alloc.free(dir);
            c.alloc.free(table);
            return Err(e.into());
        }
        c.pasid_tables.insert(sid, (dir, table));
        Ok(table)
    }

    /// The context entry (legacy) or PASID-table entry (scalable) `mode` needs, as its two
    /// low qwords, and the DID it carries.
    fn context_entry(
        &self,
        c: &Ctl,
        mode: EndpointMode,
    ) -> Result<Option<(u64, u64, u16)>, HwError> {
        let aw = self.aw as u8;
        // Legacy context entry (§9.3) with T and the table, or PASID-table entry (§9.6) with
        // PGTT and the table; both carry AW and the DID.
        let entry = |table: u64, did: u16, pass_through: bool| match self.mode {
            VtdMode::Legacy => {
                let t = if pass_through {
                    T_PASS_THROUGH
                } else {
                    T_UNTRANSLATED
                };
                let lo = ContextEntryLo::new()
                    .with_p(true)
                    .with_t(t)
                    .with_slptptr_page(table >> 12);
                let hi = ContextEntryHi::new().with_aw(aw).with_did(did);
                (lo.into_bits(), hi.into_bits(), did)
            }
            VtdMode::Scalable => {
                let pgtt = if pass_through {
                    PGTT_PASS_THROUGH
                } else {
                    PGTT_SECOND_STAGE
                };
                let qw0 = PasidEntryQw0::new()
                    .with_p(true)
                    .with_aw(aw)
                    .with_pgtt(pgtt)
                    .with_ssptptr_page(table >> 12);
                let qw1 = PasidEntryQw1::new().with_did(did);
                (qw0.into_bits(), qw1.into_bits(), did)
            }
        };
        Ok(match mode {
            EndpointMode::Blocked => None,
            EndpointMode::PassThrough => Some(entry(0, PASS_THROUGH_DID, true)),
            EndpointMode::Translated(h) => {
                let d = c.domains.get(&h).ok_or(HwError::NoDomain(h))?;
                Some(entry(d.tables.root(), d.did, false))
            }
        })
    }

    /// Writes `endpoint`'s context entry (legacy) or RID_PASID PASID-table entry (scalable)
    /// for `mode` and returns the DID it replaced (if the old entry was present). No
    /// invalidation.
    fn write_context(
        &self,
        c: &mut Ctl,
        endpoint: EndpointId,
        mode: EndpointMode,
    ) -> Result<Option<u16>, HwError> {
        let sid = u16::try_from(endpoint).map_err(|_| HwError::BadEndpoint(endpoint))?;
        let entry = self.context_entry(c, mode)?;
        let [bus, devfn] = sid.to_be_bytes();
        let at = match self.mode {
            VtdMode::Legacy => match (entry, c.context_tables.get(&(u16::from(bus) << 1))) {
                // Blocking an endpoint whose bus has no context table: nothing to write.
                (None, None) => return Ok(c.endpoint_did.remove(&sid)),
                _ => self.context_table(c, bus, 0)? + 16 * u64::from(devfn),
            },
            VtdMode::Scalable => match (entry, c.pasid_tables.get(&sid)) {
                (None, None) => return Ok(c.endpoint_did.remove(&sid)),
                _ => self.pasid_table(c, sid)?,
            },
        };
        let old = c.endpoint_did.get(&sid).copied();
        let wr = |addr: u64, v: u64| self.mem().write_u64(addr, v);
        match (entry, old) {
            (None, _) => {
                // Clear P first, so no walk sees a half-cleared entry as present.
                wr(at, 0)?;
                wr(at + 8, 0)?;
                c.endpoint_did.remove(&sid);
            }
            (Some((lo, hi, did)), None) => {
                // Upper qword first, P last.
                wr(at + 8, hi)?;
                wr(at, lo)?;
                c.endpoint_did.insert(sid, did);
            }
            (Some((lo, hi, did)), Some(_)) => {
                // Present to present (a domain switch): the entry stays present throughout, so
                // DMA never sees a blocked or pass-through state. A walk racing the two stores
                // may pair one half of each entry; the invalidation of both DIDs that follows
                // removes whatever it cached.
                wr(at, lo)?;
                wr(at + 8, hi)?;
                c.endpoint_did.insert(sid, did);
            }
        }
        Ok(old)
    }

    /// The invalidations a context-entry change for `sid` needs (§6.5.3.3 "Guidance to Software
    /// for Invalidations": device-selective context-cache invalidation with the old DID, then a
    /// domain-selective IOTLB invalidation of the old DID; the new DID too when a present
    /// entry was rewritten in place).
    fn context_change_descs(&self, sid: u16, old: Option<u16>, new: Option<u16>) -> Vec<[u64; 2]> {
        let cc_did = old.or(new).unwrap_or(0);
        let mut v = vec![encode::context_cache(ContextGranularity::Device {
            did: cc_did,
            sid,
            fm: 0,
        })];
        if self.mode == VtdMode::Scalable {
            // §6.5.3.3 for a PASID-table entry: PASID-selective PASID-cache invalidation (PASID
            // 0) for every DID the entry carried.
            let mut dids = vec![cc_did];
            if let (Some(o), Some(n)) = (old, new)
                && n != o
            {
                dids.push(n);
            }
            for did in dids {
                v.push(encode::pasid_cache(did, 0, PasidCacheGranularity::Pasid));
            }
        }
        if let Some(o) = old {
            v.push(encode::iotlb(IotlbGranularity::Domain(o)));
            if let Some(n) = new
                && n != o
            {
                v.push(encode::iotlb(IotlbGranularity::Domain(n)));
            }
        }
        v
    }

    /// Global invalidation of every cache.
    fn global_descs(&self) -> Vec<[u64; 2]> {
        let mut v = vec![encode::context_cache(ContextGranularity::Global)];
        if self.mode == VtdMode::Scalable {
            v.push(encode::pasid_cache(0, 0, PasidCacheGranularity::Global));
        }
        v.push(encode::iotlb(IotlbGranularity::Global));
        v
    }

    /// Page-selective IOTLB invalidations covering `[iova, iova + len)` in `did` (§6.5.2.3:
    /// 2^AM pages at an address aligned to them), or one domain-selective invalidation when PSI
    /// is unsupported or the range needs too many descriptors.
    fn iotlb_range_descs(&self, did: u16, iova: u64, len: u64) -> Descs {
        let domain = || smallvec![encode::iotlb(IotlbGranularity::Domain(did))];
        let Some(max_am) = self.psi_max_am else {
            return domain();
        };
        let mut v = Descs::new();
        let (mut page, end) = (iova >> 12, (iova.saturating_add(len)) >> 12);
        while page < end {
            let align = page.trailing_zeros().min(u32::from(max_am));
            let fit = 63 - (end - page).leading_zeros();
            let am = align.min(fit);
            v.push(encode::iotlb(IotlbGranularity::Page {
                did,
                addr: page << 12,
                am: am as u8,
                ih: false,
            }));
            page += 1 << am;
            if v.len() > MAX_PSI {
                return domain();
            }
        }
        v
    }

    /// Clears the fault recording registers and FSTS overflow, as a driver's fault handler
    /// does, so later faults are recorded too (§7.2.1, §10.4.14).
    fn clear_faults(&self) {
        let (fro, nfr) = self.fault_regs;
        for i in 0..nfr {
            let hi = fro + 16 * i + 8;
            if self.unit.mmio_read(hi, 8) & FRCD_F != 0 {
                self.unit.mmio_write(hi, 8, FRCD_F);
            }
        }
        self.unit.mmio_write(FSTS_REG, 4, u64::from(FSTS_PFO));
    }
}

/// A page-table builder error as the driver reports it: running out of frames is running out
/// of private memory.
fn tables_error(e: pagewalk::BuildError) -> HwError {
    match e {
        pagewalk::BuildError::AllocatorExhausted => HwError::Exhausted(Resource::PrivateMemory),
        e => HwError::Tables(e),
    }
}

impl<M: PhysMem + Send + Sync + 'static> Driver for VtdDriver<M> {
    fn name(&self) -> &'static str {
        "vtd"
    }

    fn unit(&self) -> Arc<dyn Unit> {
        self.unit.clone()
    }

    fn domain_alloc(&self) -> Result<HwDomain, HwError> {
        let mut c = self.lock();
        let c = &mut *c;
        let did = c.dids.alloc()?;
        let tables = match TableBuilder::new(
            WalkConfig::VtdSecondStage(self.ss),
            self.mem(),
            c.alloc.frames(),
        ) {
            // Linux's policy: an unmap frees only the tables it covers whole, so the DMA API's
            // map/unmap churn reuses the tables it emptied.
            Ok(t) => t.with_reclaim(Reclaim::Covered),
            Err(e) => {
                c.dids.free(did);
                return Err(tables_error(e));
            }
        };
        let h = HwDomain(c.next_handle);
        c.next_handle += 1;
        c.domains.insert(h, DomainHw { did, tables });
        log::debug!("vtd: domain {h:?} is DID {did}");
        Ok(h)
    }

    fn domain_free(&self, domain: HwDomain) -> Result<(), HwError> {
        let mut c = self.lock();
        let c = &mut *c;
        let d = c.domains.remove(&domain).ok_or(HwError::NoDomain(domain))?;
        let did = d.did;
        d.tables
            .destroy(self.mem(), c.alloc.frames())
            .map_err(tables_error)?;
        // Nothing cached under the DID may survive its reuse.
        self.submit(c, &[encode::iotlb(IotlbGranularity::Domain(did))])?;
        c.dids.free(did);
        Ok(())
    }

    fn map(&self, domain: HwDomain, m: &Mapping) -> Result<(), HwError> {
        if !m.flags.read && !m.flags.write {
            // Nothing to write: a second-stage entry with R = W = 0 is not present.
            return Ok(());
        }
        let len = m
            .size()
            .ok_or(HwError::Unsupported("a mapping of the whole address space"))?;
        let mut c = self.lock();
        let c = &mut *c;
        let d = c
            .domains
            .get_mut(&domain)
            .ok_or(HwError::NoDomain(domain))?;
        d.tables
            .map(
                self.mem(),
                c.alloc.frames(),
                m.virt_start,
                m.phys_start,
                len,
                m.flags.perms(),
                PageSizePolicy::LARGEST,
            )
            .map_err(tables_error)?;
        if self.caching_mode {
            // CAP.CM: not-present entries may be cached; invalidate what became present.
            let did = d.did;
            let descs = self.iotlb_range_descs(did, m.virt_start, len);
            self.submit(c, &descs)?;
        }
        Ok(())
    }

    fn unmap(&self, domain: HwDomain, mappings: &[Mapping]) -> Result<(), (usize, HwError)> {
        let mut c = self.lock();
        let c = &mut *c;
        let d = c
            .domains
            .get_mut(&domain)
            .ok_or((0, HwError::NoDomain(domain)))?;
        let did = d.did;
        let mut descs = Descs::new();
        let mut done = 0;
        let mut failure = None;
        for m in mappings {
            let Some(len) = m.size() else {
                failure = Some(HwError::Unsupported("a mapping of the whole address space"));
                break;
            };
            if let Err(e) = d
                .tables
                .unmap(self.mem(), c.alloc.frames(), m.virt_start, len)
            {
                failure = Some(tables_error(e));
                break;
            }
            descs.extend(self.iotlb_range_descs(did, m.virt_start, len));
            done += 1;
        }
        // One wait for the request; a domain-selective invalidation where the ranges need
        // too many page-selective ones (or one of them already fell back to it).
        let domain_wide = encode::iotlb(IotlbGranularity::Domain(did));
        if descs.len() > MAX_PSI || descs.contains(&domain_wide) {
            descs = smallvec![domain_wide];
        }
        if !descs.is_empty() {
            self.submit(c, &descs).map_err(|e| (done, e))?;
        }
        match failure {
            Some(e) => Err((done, e)),
            None => Ok(()),
        }
    }

    fn set_endpoint(&self, endpoint: EndpointId, mode: EndpointMode) -> Result<(), HwError> {
        let mut c = self.lock();
        let c = &mut *c;
        let old = self.write_context(c, endpoint, mode)?;
        let new = c.endpoint_did.get(&(endpoint as u16)).copied();
        if old.is_none() && new.is_none() {
            return Ok(());
        }
        let descs = self.context_change_descs(endpoint as u16, old, new);
        self.submit(c, &descs)
    }

    fn set_endpoints(
        &self,
        endpoints: &mut dyn Iterator<Item = EndpointId>,
        mode: EndpointMode,
    ) -> Result<(), HwError> {
        let mut c = self.lock();
        let c = &mut *c;
        let mut changed = false;
        let mut done: Vec<(EndpointId, Option<u16>)> = Vec::new();
        for ep in endpoints {
            match self.write_context(c, ep, mode) {
                Ok(old) => {
                    changed |= old.is_some() || mode != EndpointMode::Blocked;
                    done.push((ep, old));
                }
                Err(e) => {
                    // Put back what was switched (the structures exist, so this allocates
                    // nothing), leaving every endpoint as it was.
                    for (ep, old) in done.into_iter().rev() {
                        let back = match old {
                            None => EndpointMode::Blocked,
                            Some(PASS_THROUGH_DID) => EndpointMode::PassThrough,
                            Some(did) => c
                                .domains
                                .iter()
                                .find(|(_, d)| d.did == did)
                                .map_or(EndpointMode::Blocked, |(h, _)| {
                                    EndpointMode::Translated(*h)
                                }),
                        };
                        if let Err(e2) = self.write_context(c, ep, back) {
                            log::error!("vtd: restoring endpoint {ep:#x}: {e2}");
                        }
                    }
                    let descs = self.global_descs();
                    self.submit(c, &descs)?;
                    return Err(e);
                }
            }
        }
        if changed {
            // One global invalidation instead of one per endpoint (§6.5.3.3 allows coarser).
            self.submit(c, &self.global_descs())?;
        }
        Ok(())
    }

    fn fault_serviced(&self, fault: &crate::request::Fault) {
        if fault.recorded {
            self.clear_faults();
        }
    }

    fn reset(&self) -> Result<(), HwError> {
        let mut c = self.lock();
        let c = &mut *c;
        for (key, t) in std::mem::take(&mut c.context_tables) {
            // Root entry (half) for this table: not present.
            let re = c.root + 16 * u64::from(key >> 1) + 8 * u64::from(key & 1);
            self.mem().write_u64(re, 0)?;
            c.alloc.free(t);
        }
        for (_, (dir, table)) in std::mem::take(&mut c.pasid_tables) {
            c.alloc.free(dir);
            c.alloc.free(table);
        }
        for (_, d) in std::mem::take(&mut c.domains) {
            d.tables
                .destroy(self.mem(), c.alloc.frames())
                .map_err(tables_error)?;
        }
        c.endpoint_did.clear();
        c.dids.reset();
        let descs = self.global_descs();
        self.submit(c, &descs)
    }

    fn domain_hw_id(&self, domain: HwDomain) -> Option<u64> {
        self.lock().domains.get(&domain).map(|d| u64::from(d.did))
    }

    fn stats(&self) -> DriverStats {
        let c = self.lock();
        DriverStats {
            domains: c.domains.len() as u64,
            private_pages_in_use: c.alloc.in_use() as u64,
            mode: Some(match self.mode {
                VtdMode::Legacy => "legacy",
                VtdMode::Scalable => "scalable",
            }),
        }
    }
}

#[cfg(test)]
mod tests;

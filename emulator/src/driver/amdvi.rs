//! The AMD-Vi driver: domains realised in an AMD-Vi unit ([`crate::amdvi::AmdVi`]), programmed
//! the way a kernel driver programs silicon: only through the MMIO registers and
//! memory-resident structures, and knowing only what the Extended Feature Register says.
//!
//! - Structures live in an IOMMU-private physical region (outside guest RAM): the device table
//!   (2 MiB, every DeviceID; AMD IOMMU spec #48882 rev 3.08, §2.2.2), the v1 host tables of
//!   every domain (built with pagewalk's [`TableBuilder`], §2.2.3), the command buffer and the
//!   event log (one page, 256 entries each, §2.4, §2.5) and the COMPLETION_WAIT store word.
//! - Bring-up (§3.4): Control cleared, the device table, command buffer and event log bases,
//!   then CmdBufEn, EventLogEn and IommuEn, then INVALIDATE_IOMMU_ALL (or, without EFR.IASup,
//!   an INVALIDATE_DEVTAB_ENTRY per device and an all-pages INVALIDATE_IOMMU_PAGES per
//!   DomainID).
//! - Every change is followed by the invalidations the spec requires, through the command
//!   buffer ([`CommandBuffer`], a [`CommandQueue`]) and a COMPLETION_WAIT whose store the
//!   driver checks (§2.4.1).
//! - A paging domain is a DomainID plus v1 tables of four levels (Mode 4, 48-bit IOVAs).
//! - An endpoint's DTE (§2.2.2.1): translated is V = TV = 1, Mode 4, the table root, IR = IW =
//!   1 and the DomainID; identity is Mode 0 with IR = IW = 1 (translation disabled, access
//!   allowed); blocked is Mode 0 with IR = IW = 0, the encoding Linux uses, so DMA from it
//!   raises IO_PAGE_FAULT. Every DTE starts blocked.

// As in the VT-d driver: a fast hash over our own handles and topology ids.
use rustc_hash::FxHashMap as HashMap;
use smallvec::{SmallVec, smallvec};
use std::sync::{Arc, Mutex};

use pagewalk::{AmdV1Config, PageSizePolicy, PhysMem, Reclaim, TableBuilder, WalkConfig};

use super::{
    CommandQueue, DomainIds, Driver, DriverStats, EndpointMode, HwDomain, HwError, PAGE,
    PrivateMemory, PrivateRegion, Resource,
};
use crate::amdvi::command::encode;
use crate::amdvi::layout::{
    Control, DevTabBase, DteQw0, DteQw1, Efr, RING_ENTRY, RING_MIN_LEN, RingBase, Status,
};
use crate::amdvi::{AmdVi, AmdViConfig, reg};
use crate::core::{EndpointId, Mapping};
use crate::unit::Unit;

/// The DomainID of every identity DTE (like Linux, one is reserved for identity).
pub const PASS_THROUGH_DID: u16 = 1;
/// The first DomainID handed to paging domains (0 is reserved).
pub const FIRST_DID: u16 = 2;

/// Host table levels of every domain (DTE Mode).
const MODE: u8 = 4;
/// DeviceIDs the device table holds.
const DEVICES: u64 = 1 << 16;
/// Pages of the device table.
const DEV_TAB_PAGES: usize = (DEVICES * 32 / PAGE) as usize;
/// At most this many range invalidations for one unmap; more become one of the whole domain.
const MAX_RANGES: usize = 32;

/// The command buffer as the driver keeps it: one page of 16-byte commands, the software
/// tail, and the word each COMPLETION_WAIT stores.
#[derive(Debug)]
pub struct CommandBuffer {
    base: u64,
    tail: u64,
    status_addr: u64,
    seq: u64,
}

impl<M: PhysMem> CommandQueue<AmdVi<M>> for CommandBuffer {
    type Command = [u64; 2];

    fn capacity(&self) -> usize {
        (PAGE / RING_ENTRY) as usize
    }

    fn write(&mut self, unit: &AmdVi<M>, c: &[u64; 2]) -> Result<(), HwError> {
        let at = self.base + self.tail;
        unit.mem().write_u64(at, c[0])?;
        unit.mem().write_u64(at + 8, c[1])?;
        self.tail = (self.tail + RING_ENTRY) % PAGE;
        Ok(())
    }

    fn wait(&mut self, unit: &AmdVi<M>) -> Result<(), HwError> {
        self.seq = self.seq.wrapping_add(1);
        let wait = encode::completion_wait(self.status_addr, self.seq, false, false);
        CommandQueue::<AmdVi<M>>::write(self, unit, &wait)?;
        unit.mmio_write(reg::CMD_BUF_TAIL, 8, self.tail);
        if unit.mem().read_u64(self.status_addr)? == self.seq {
            return Ok(());
        }
        let status = unit.mmio_read(reg::STATUS, 8);
        // Recover as Linux does: command buffer off, head and tail to 0, back on.
        let ctl = Control::from_bits(unit.mmio_read(reg::CONTROL, 8));
        unit.mmio_write(reg::CONTROL, 8, ctl.with_cmd_buf_en(false).into_bits());
        unit.mmio_write(reg::CMD_BUF_HEAD, 8, 0);
        unit.mmio_write(reg::CMD_BUF_TAIL, 8, 0);
        unit.mmio_write(reg::CONTROL, 8, ctl.with_cmd_buf_en(true).into_bits());
        self.tail = 0;
        Err(HwError::QueueWait { status })
    }
}

#[derive(Debug)]
struct DomainHw {
    did: u16,
    tables: TableBuilder,
}

#[derive(Debug)]
struct Ctl {
    alloc: PrivateMemory,
    dev_tab: u64,
    queue: CommandBuffer,
    domains: HashMap<HwDomain, DomainHw>,
    next_handle: u64,
    dids: DomainIds,
    /// The DomainID each endpoint's non-blocked DTE carries.
    endpoint_did: HashMap<u16, u16>,
}

/// A [`Driver`] that realises domains in an AMD-Vi unit.
pub struct AmdViDriver<M: PhysMem> {
    unit: Arc<AmdVi<M>>,
    ctl: Mutex<Ctl>,
    v1: AmdV1Config,
    invalidate_all: bool,
}

impl<M: PhysMem> std::fmt::Debug for AmdViDriver<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmdViDriver")
            .field("unit", &self.unit)
            .field("v1", &self.v1)
            .finish_non_exhaustive()
    }
}

/// A page-table builder error as the driver reports it.
fn tables_error(e: pagewalk::BuildError) -> HwError {
    match e {
        pagewalk::BuildError::AllocatorExhausted => HwError::Exhausted(Resource::PrivateMemory),
        e => HwError::Tables(e),
    }
}

impl<M: PhysMem + Send + Sync + 'static> AmdViDriver<M> {
    /// Brings `unit` up with its command buffer, event log and translation enabled and every
    /// endpoint blocked, keeping its structures in `region` (memory the unit can read, outside
    /// guest RAM). What the driver needs to know of the unit it reads from EFR (§3.4.7), except
    /// `phys_addr_bits`, the system's physical address width, which a driver learns from the
    /// CPU, not from the IOMMU.
    pub fn new(
        unit: Arc<AmdVi<M>>,
        region: PrivateRegion,
        phys_addr_bits: u8,
    ) -> Result<Self, HwError> {
        let efr = Efr::from_bits(unit.mmio_read(reg::EFR, 8));
        if efr.host_levels() < MODE {
            return Err(HwError::Unsupported(
                "EFR.HATS offers no 4-level host tables",
            ));
        }
        let mut v1 = AmdV1Config::new(MODE);
        v1.out_width = phys_addr_bits;
        let mut alloc = PrivateMemory::new(region)?;
        let pages = alloc.alloc_zeroed(unit.mem(), DEV_TAB_PAGES + 3)?;
        let dev_tab = pages[0];
        if pages[DEV_TAB_PAGES - 1] != dev_tab + (DEV_TAB_PAGES as u64 - 1) * PAGE {
            return Err(HwError::Unsupported(
                "the private region cannot hold a contiguous device table",
            ));
        }
        let (cmd, evt, status) = (
            pages[DEV_TAB_PAGES],
            pages[DEV_TAB_PAGES + 1],
            pages[DEV_TAB_PAGES + 2],
        );
        let d = Self {
            unit,
            ctl: Mutex::new(Ctl {
                alloc,
                dev_tab,
                queue: CommandBuffer {
                    base: cmd,
                    tail: 0,
                    status_addr: status,
                    seq: 0,
                },
                domains: HashMap::default(),
                next_handle: 1,
                dids: DomainIds::new(FIRST_DID, u16::MAX),
                endpoint_did: HashMap::default(),
            }),
            v1,
            invalidate_all: efr.ia_sup(),
        };
        d.bring_up(evt)?;
        Ok(d)
    }

    /// [`AmdViDriver::new`] over a new unit built from `cfg` on `mem`, whose interrupts are
    /// logged (this driver polls instead).
    pub fn with_unit(mem: M, cfg: AmdViConfig, region: PrivateRegion) -> Result<Self, HwError> {
        let bits = cfg.phys_addr_bits;
        let unit = AmdVi::new(mem, cfg, Box::new(|e| log::debug!("amdvi event {e:?}")))?;
        Self::new(Arc::new(unit), region, bits)
    }

    /// The AMD-Vi unit this driver programs.
    pub fn amdvi(&self) -> &Arc<AmdVi<M>> {
        &self.unit
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ctl> {
        self.ctl.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn mem(&self) -> &M {
        self.unit.mem()
    }

    fn bring_up(&self, evt: u64) -> Result<(), HwError> {
        let mut c = self.lock();
        let c = &mut *c;
        self.unit.mmio_write(reg::CONTROL, 8, 0);
        // Every DTE blocked before translation is enabled.
        for id in 0..DEVICES {
            self.mem()
                .write_u64(c.dev_tab + 32 * id, blocked_dte().0.into_bits())?;
        }
        let dev_tab = DevTabBase::new()
            .with_size((DEV_TAB_PAGES - 1) as u16)
            .with_base_page(c.dev_tab >> 12);
        self.unit
            .mmio_write(reg::DEV_TAB_BASE, 8, dev_tab.into_bits());
        let ring = |base: u64| {
            RingBase::new()
                .with_base_page(base >> 12)
                .with_log2_len(RING_MIN_LEN)
                .into_bits()
        };
        // Writing the bases resets the heads and tails.
        self.unit
            .mmio_write(reg::CMD_BUF_BASE, 8, ring(c.queue.base));
        self.unit.mmio_write(reg::EVENT_LOG_BASE, 8, ring(evt));
        let ctl = Control::new()
            .with_cmd_buf_en(true)
            .with_event_log_en(true)
            .with_iommu_en(true);
        self.unit.mmio_write(reg::CONTROL, 8, ctl.into_bits());
        let st = Status::from_bits(self.unit.mmio_read(reg::STATUS, 8));
        if !st.cmd_buf_run() || !st.event_log_run() {
            return Err(HwError::NotAcknowledged {
                command: "Control.CmdBufEn/EventLogEn",
                status: st.into_bits(),
            });
        }
        let cmds = self.flush_all_cmds();
        c.queue.submit(&*self.unit, &cmds)
    }

    /// Everything cached: INVALIDATE_IOMMU_ALL, or every DTE and every domain in use.
    fn flush_all_cmds(&self) -> Vec<[u64; 2]> {
        if self.invalidate_all {
            return vec![encode::invalidate_all()];
        }
        (0..=u16::MAX)
            .map(encode::invalidate_devtab_entry)
            .chain((0..=u16::MAX).map(|d| encode::invalidate_domain(d, None)))
            .collect()
    }

    /// The DTE for `mode` (qw0, qw1) and the DomainID it carries (`None`: blocked).
    fn dte(&self, c: &Ctl, mode: EndpointMode) -> Result<(DteQw0, DteQw1, Option<u16>), HwError> {
        let valid = DteQw0::new().with_v(true).with_tv(true);
        Ok(match mode {
            EndpointMode::Blocked => {
                let (q0, q1) = blocked_dte();
                (q0, q1, None)
            }
            EndpointMode::PassThrough => (
                valid.with_ir(true).with_iw(true),
                DteQw1::new().with_domain_id(PASS_THROUGH_DID),
                Some(PASS_THROUGH_DID),
            ),
            EndpointMode::Translated(h) => {
                let d = c.domains.get(&h).ok_or(HwError::NoDomain(h))?;
                (
                    valid
                        .with_mode(MODE)
                        .with_pt_root_page(d.tables.root() >> 12)
                        .with_ir(true)
                        .with_iw(true),
                    DteQw1::new().with_domain_id(d.did),
                    Some(d.did),
                )
            }
        })
    }

    /// Writes `sid`'s DTE for `mode` and returns the DomainID it replaced. No invalidation.
    fn write_dte(&self, c: &mut Ctl, sid: u16, mode: EndpointMode) -> Result<Option<u16>, HwError> {
        let (q0, q1, did) = self.dte(c, mode)?;
        let at = c.dev_tab + 32 * u64::from(sid);
        // Towards blocked: qw0 first, so the DTE blocks before its DomainID changes. Otherwise
        // qw1 (the DomainID) first, then the mode and root. A walk racing the two stores may
        // pair the halves of two DTEs; the invalidation of both DomainIDs that follows removes
        // whatever it cached.
        if did.is_none() {
            self.mem().write_u64(at, q0.into_bits())?;
            self.mem().write_u64(at + 8, q1.into_bits())?;
        } else {
            self.mem().write_u64(at + 8, q1.into_bits())?;
            self.mem().write_u64(at, q0.into_bits())?;
        }
        Ok(match did {
            Some(d) => c.endpoint_did.insert(sid, d),
            None => c.endpoint_did.remove(&sid),
        })
    }

    /// The invalidations a DTE change needs (§2.4.2, §2.4.3): the DTE, then every page of the
    /// DomainIDs the device used and uses.
    fn dte_change_cmds(sid: u16, old: Option<u16>, new: Option<u16>, out: &mut Vec<[u64; 2]>) {
        out.push(encode::invalidate_devtab_entry(sid));
        for d in [old, new.filter(|n| Some(*n) != old)].into_iter().flatten() {
            out.push(encode::invalidate_domain(d, None));
        }
    }

    /// The mode whose DTE carries `did` (`None`: blocked).
    fn mode_of(&self, c: &Ctl, did: Option<u16>) -> EndpointMode {
        match did {
            None => EndpointMode::Blocked,
            Some(PASS_THROUGH_DID) => EndpointMode::PassThrough,
            Some(did) => c
                .domains
                .iter()
                .find(|(_, d)| d.did == did)
                .map_or(EndpointMode::Blocked, |(h, _)| EndpointMode::Translated(*h)),
        }
    }

    fn sid(endpoint: EndpointId) -> Result<u16, HwError> {
        u16::try_from(endpoint).map_err(|_| HwError::BadEndpoint(endpoint))
    }
}

/// The blocked DTE: V = TV = 1, Mode 0, IR = IW = 0.
fn blocked_dte() -> (DteQw0, DteQw1) {
    (DteQw0::new().with_v(true).with_tv(true), DteQw1::new())
}

impl<M: PhysMem + Send + Sync + 'static> Driver for AmdViDriver<M> {
    fn name(&self) -> &'static str {
        "amdvi"
    }

    fn unit(&self) -> Arc<dyn Unit> {
        self.unit.clone()
    }

    fn domain_alloc(&self) -> Result<HwDomain, HwError> {
        let mut c = self.lock();
        let c = &mut *c;
        let did = c.dids.alloc()?;
        let tables =
            match TableBuilder::new(WalkConfig::AmdV1(self.v1), self.mem(), c.alloc.frames()) {
                // As for VT-d: unmaps free only the tables they cover whole.
                Ok(t) => t.with_reclaim(Reclaim::Covered),
                Err(e) => {
                    c.dids.free(did);
                    return Err(tables_error(e));
                }
            };
        let h = HwDomain(c.next_handle);
        c.next_handle += 1;
        c.domains.insert(h, DomainHw { did, tables });
        log::debug!("amdvi: domain {h:?} is DomainID {did}");
        Ok(h)
    }

    fn domain_free(&self, domain: HwDomain) -> Result<(), HwError> {
        let mut c = self.lock();
        let c = &mut *c;
        let d = c.domains.remove(&domain).ok_or(HwError::NoDomain(domain))?;
        d.tables
            .destroy(self.mem(), c.alloc.frames())
            .map_err(tables_error)?;
        // Nothing cached under the DomainID may survive its reuse.
        c.queue
            .submit(&*self.unit, &[encode::invalidate_domain(d.did, None)])?;
        c.dids.free(d.did);
        Ok(())
    }

    fn map(&self, domain: HwDomain, m: &Mapping) -> Result<(), HwError> {
        if !m.flags.read && !m.flags.write {
            // A v1 PTE with IR = IW = 0 grants nothing: nothing to write.
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
        // The unit caches no not-present entries, so a new mapping needs no invalidation.
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
            .map_err(tables_error)
    }

    fn unmap(&self, domain: HwDomain, mappings: &[Mapping]) -> Result<(), (usize, HwError)> {
        let mut c = self.lock();
        let c = &mut *c;
        let d = c
            .domains
            .get_mut(&domain)
            .ok_or((0, HwError::NoDomain(domain)))?;
        let did = d.did;
        // Inline for the common few (a single-page unmap needs one command).
        let mut cmds: SmallVec<[_; 4]> = SmallVec::new();
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
            cmds.push(encode::invalidate_range(did, None, m.virt_start, len));
            done += 1;
        }
        // One wait for the request; one invalidation of the whole domain when the ranges need
        // too many.
        if cmds.len() > MAX_RANGES {
            cmds = smallvec![encode::invalidate_domain(did, None)];
        }
        if !cmds.is_empty() {
            c.queue.submit(&*self.unit, &cmds).map_err(|e| (done, e))?;
        }
        match failure {
            Some(e) => Err((done, e)),
            None => Ok(()),
        }
    }

    fn set_endpoint(&self, endpoint: EndpointId, mode: EndpointMode) -> Result<(), HwError> {
        self.set_endpoints(&mut std::iter::once(endpoint), mode)
    }

    fn set_endpoints(
        &self,
        endpoints: &mut dyn Iterator<Item = EndpointId>,
        mode: EndpointMode,
    ) -> Result<(), HwError> {
        let mut c = self.lock();
        let c = &mut *c;
        // Everything that can be refused is checked before any DTE changes.
        let sids = endpoints.map(Self::sid).collect::<Result<Vec<_>, _>>()?;
        let (_, _, new) = self.dte(c, mode)?;
        let mut cmds = Vec::new();
        let mut done = Vec::new();
        for sid in sids {
            match self.write_dte(c, sid, mode) {
                Ok(old) => {
                    Self::dte_change_cmds(sid, old, new, &mut cmds);
                    done.push((sid, old));
                }
                Err(e) => {
                    // Put back what was switched, leaving every endpoint as it was.
                    for (sid, old) in done.into_iter().rev() {
                        let back = self.mode_of(c, old);
                        if let Err(e2) = self.write_dte(c, sid, back) {
                            log::error!("amdvi: restoring the DTE of {sid:#06x}: {e2}");
                        }
                    }
                    c.queue.submit(&*self.unit, &cmds)?;
                    return Err(e);
                }
            }
        }
        c.queue.submit(&*self.unit, &cmds)
    }

    fn fault_serviced(&self, fault: &crate::request::Fault) {
        if !fault.recorded {
            return;
        }
        // Consume the event log as a driver's interrupt handler does: head to tail, the
        // interrupt and overflow bits cleared, and logging restarted after an overflow.
        let tail = self.unit.mmio_read(reg::EVENT_LOG_TAIL, 8);
        self.unit.mmio_write(reg::EVENT_LOG_HEAD, 8, tail);
        let st = Status::from_bits(self.unit.mmio_read(reg::STATUS, 8));
        self.unit.mmio_write(
            reg::STATUS,
            8,
            Status::new()
                .with_event_log_int(true)
                .with_event_overflow(true)
                .into_bits(),
        );
        if st.event_overflow() {
            let ctl = Control::from_bits(self.unit.mmio_read(reg::CONTROL, 8));
            self.unit
                .mmio_write(reg::CONTROL, 8, ctl.with_event_log_en(false).into_bits());
            self.unit.mmio_write(reg::CONTROL, 8, ctl.into_bits());
        }
    }

    fn reset(&self) -> Result<(), HwError> {
        let mut c = self.lock();
        let c = &mut *c;
        let mut cmds = Vec::new();
        for (sid, did) in std::mem::take(&mut c.endpoint_did) {
            let (q0, q1) = blocked_dte();
            let at = c.dev_tab + 32 * u64::from(sid);
            self.mem().write_u64(at, q0.into_bits())?;
            self.mem().write_u64(at + 8, q1.into_bits())?;
            Self::dte_change_cmds(sid, Some(did), None, &mut cmds);
        }
        for (_, d) in std::mem::take(&mut c.domains) {
            cmds.push(encode::invalidate_domain(d.did, None));
            d.tables
                .destroy(self.mem(), c.alloc.frames())
                .map_err(tables_error)?;
        }
        c.dids.reset();
        if self.invalidate_all {
            cmds = vec![encode::invalidate_all()];
        }
        c.queue.submit(&*self.unit, &cmds)
    }

    fn domain_hw_id(&self, domain: HwDomain) -> Option<u64> {
        self.lock().domains.get(&domain).map(|d| u64::from(d.did))
    }

    fn stats(&self) -> DriverStats {
        let c = self.lock();
        DriverStats {
            domains: c.domains.len() as u64,
            private_pages_in_use: c.alloc.in_use() as u64,
            mode: Some("v1"),
        }
    }
}

#[cfg(test)]
mod tests;

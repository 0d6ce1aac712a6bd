//! The AMD-Vi translation path (AMD IOMMU spec #48882 rev 3.08, §2.2 "Data Structures", §2.5
//! for the events faults become): what is AMD's. The DTE and GCR3 entries are read (through
//! their caches) into a [`Walk`]; the shared engine ([`crate::xlate`]) does the IOTLB, the
//! page-directory caches, the walks and the fills, and this module supplies the events faults
//! become ([`Vendor`]). The table in the [module notes](super) gives the cases.

use std::sync::atomic::Ordering;

use iotlb::{Tag, Token};
use pagewalk::{
    Access as PwAccess, AccessKind as PwKind, AmdV1Config, FaultKind as PwFault, PhysMem,
    WalkConfig, X86Config,
};

use super::AmdVi;
use super::dte::{Dte, DteCheck};
use super::event::{Event, EventCode};
use super::layout::{Control, DTE_BYTES, DevTabBase, EventFlags, ExclusionBase, Gcr3Entry};
use crate::request::{
    AccessKind, AddressType, DmaRequest, Fault, FaultKind, FaultSite, Perms, Translation,
};
use crate::trace::{MemTarget, Stage, Trace};
use crate::xlate::{self, Engine, Vendor, Walk, covered_len};

/// Why a translation failed: the event it logs (unless suppressed) and its vendor-neutral
/// class.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Fail {
    code: EventCode,
    flags: EventFlags,
    kind: FaultKind,
    site: FaultSite,
    /// The event's address when it is not the request's (a DTE's or an entry's).
    addr: Option<u64>,
    domain_id: u16,
    /// The DTE's SA and SE bits (IO_PAGE_FAULT suppression).
    sa: bool,
    se: bool,
}

impl Fail {
    fn new(code: EventCode, kind: FaultKind, site: FaultSite) -> Self {
        Self {
            code,
            flags: EventFlags::empty(),
            kind,
            site,
            addr: None,
            domain_id: 0,
            sa: false,
            se: false,
        }
    }
    fn page_fault(kind: FaultKind, site: FaultSite, flags: EventFlags) -> Self {
        Self {
            flags,
            ..Self::new(EventCode::IoPageFault, kind, site)
        }
    }
    fn with_dte(self, d: &Dte) -> Self {
        self.with_ctx(&AmdCtx::new(d, self.flags))
    }
    fn with_ctx(self, c: &AmdCtx) -> Self {
        Self {
            domain_id: c.domain_id,
            sa: c.sa,
            se: c.se,
            ..self
        }
    }
    fn at(self, addr: Option<u64>) -> Self {
        Self { addr, ..self }
    }
}

/// The tokens of every cache, taken before any structure is read.
#[derive(Clone, Copy)]
struct Tokens {
    dte: Token,
    gcr3: Token,
    engine: xlate::Tokens,
}

/// What the event encodings need to know of a walk: the DTE's DomainID and its SA and SE
/// bits, and the request's event flags (RW, NX, US, TR, GN).
#[derive(Debug, Clone, Copy)]
pub(crate) struct AmdCtx {
    domain_id: u16,
    sa: bool,
    se: bool,
    flags: EventFlags,
}

impl AmdCtx {
    fn new(d: &Dte, flags: EventFlags) -> Self {
        Self {
            domain_id: d.domain_id,
            sa: d.sa,
            se: d.se,
            flags,
        }
    }
}

/// AMD's side of the translation engine: the events faults become.
struct AmdVendor;

fn identity(req: &DmaRequest, did: u16) -> Translation {
    Translation {
        addr: req.addr,
        len: req.len.max(1),
        page_shift: 12,
        perms: Perms::ALL,
        domain_id: did,
        identity: true,
    }
}

/// The walker access for a request: an ATS translation request walks as a read and returns
/// the permissions found.
fn pw_access(req: &DmaRequest) -> PwAccess {
    let kind = match (req.at, req.access) {
        (AddressType::TranslationRequest, _) | (_, AccessKind::Read) => PwKind::Read,
        (_, AccessKind::Write | AccessKind::Atomic) => PwKind::Write,
        (_, AccessKind::Execute) => PwKind::Execute,
    };
    PwAccess {
        kind,
        privileged: req.privileged,
    }
}

/// The flags every translation event of `req` carries (§2.5.3).
fn request_flags(req: &DmaRequest, pasid: Option<u32>) -> EventFlags {
    let mut f = EventFlags::empty();
    if req.access.writes() {
        f |= EventFlags::RW;
    }
    if req.access.executes() {
        f |= EventFlags::NX;
    }
    if pasid.is_some() {
        f |= EventFlags::GN;
        if !req.privileged {
            f |= EventFlags::US;
        }
    }
    if req.at == AddressType::TranslationRequest {
        f |= EventFlags::TR;
    }
    f
}

/// The IO_PAGE_FAULT flags and fault class of a walker fault (§2.5.3: PR when the entry was
/// present, PE for permissions, RZ for a reserved bit; an invalid level is PR without RZ).
fn walk_fail(f: &pagewalk::Fault, flags: EventFlags) -> Fail {
    let site = FaultSite::PageTable {
        stage: f.stage,
        level: Some(f.level),
    };
    let pf = |kind, extra| Fail::page_fault(kind, site, flags | extra);
    match f.kind {
        PwFault::NotPresent => pf(FaultKind::NotPresent, EventFlags::empty()),
        PwFault::Permission => pf(FaultKind::Permission, EventFlags::PR | EventFlags::PE),
        PwFault::ReservedBit => pf(FaultKind::InvalidEntry, EventFlags::PR | EventFlags::RZ),
        PwFault::BadLevel => pf(FaultKind::InvalidEntry, EventFlags::PR),
        PwFault::AddressBeyondWidth => pf(FaultKind::AddressWidth, EventFlags::empty()),
        PwFault::MemoryRead(_) | PwFault::AdUpdateContention => Fail {
            flags: (flags & (EventFlags::GN | EventFlags::RW | EventFlags::TR)) | EventFlags::TYPE0,
            ..Fail::new(
                EventCode::PageTabHardwareError,
                FaultKind::MemoryAccess,
                site,
            )
        }
        .at(f.entry_addr),
    }
}

impl Vendor for AmdVendor {
    type Ctx = AmdCtx;
    type Fail = Fail;

    fn walk_fault(
        &self,
        w: &Walk<AmdCtx>,
        _access: PwAccess,
        _above: pagewalk::Perms,
        f: &pagewalk::Fault,
    ) -> Fail {
        walk_fail(f, w.vendor.flags).with_ctx(&w.vendor)
    }

    fn nested_fault(&self, w: &Walk<AmdCtx>, _access: PwAccess, f: &pagewalk::Fault) -> Fail {
        walk_fail(f, w.vendor.flags).with_ctx(&w.vendor)
    }

    fn read_denied(&self, w: &Walk<AmdCtx>) -> Fail {
        Fail::page_fault(
            FaultKind::Permission,
            FaultSite::PageTable {
                stage: w.stage,
                level: None,
            },
            w.vendor.flags | EventFlags::PR | EventFlags::PE,
        )
        .with_ctx(&w.vendor)
    }

    fn check_output(
        &self,
        _w: &Walk<AmdCtx>,
        _req: &DmaRequest,
        _addr: u64,
        _len: u64,
    ) -> Result<(), Fail> {
        Ok(())
    }
}

impl<M: PhysMem> AmdVi<M> {
    /// Translates one DMA request, logging the event a fault raises, and returns the
    /// translation or the fault with the trace of what the unit did. Safe to call from many
    /// threads at once.
    pub fn translate(&self, req: &DmaRequest) -> (Result<Translation, Fault>, Trace) {
        let mut trace = Trace::new();
        let r = self.translate_with(req, &mut trace);
        (r, trace)
    }

    /// [`AmdVi::translate`] recording into a caller-owned trace (cleared first).
    pub fn translate_with(
        &self,
        req: &DmaRequest,
        trace: &mut Trace,
    ) -> Result<Translation, Fault> {
        trace.clear();
        self.stats.translations.incr();
        let boot = self.resets.load(Ordering::Acquire);
        let fail = match self.translate_inner(req, trace) {
            Ok(t) => return Ok(t),
            Err(f) => f,
        };
        if req.at == AddressType::TranslationRequest && fail.code == EventCode::IoPageFault {
            // A translation request that finds no (or no permitted) page is answered with no
            // permission and logs nothing.
            return Ok(Translation {
                addr: 0,
                len: covered_len(req.addr, req.len, 12),
                page_shift: 12,
                perms: Perms::default(),
                domain_id: fail.domain_id,
                identity: false,
            });
        }
        self.stats.faults.fetch_add(1, Ordering::Relaxed);
        let pasid = fail
            .flags
            .contains(EventFlags::GN)
            .then_some(req.pasid.unwrap_or(0));
        let event = Event {
            code: fail.code,
            device_id: req.source_id,
            pasid,
            domain_id: fail.domain_id,
            flags: fail.flags,
            addr: fail.addr.unwrap_or(req.addr),
        };
        let suppressed = fail.code == EventCode::IoPageFault && fail.sa;
        let recorded = !suppressed && self.record(event, fail.se, boot);
        if recorded {
            self.stats.faults_recorded.fetch_add(1, Ordering::Relaxed);
        }
        log::debug!(
            "amdvi: {:?} flags {:?} device {:#06x} addr {:#x} recorded {recorded}",
            fail.code,
            fail.flags,
            req.source_id,
            req.addr
        );
        Err(Fault {
            kind: fail.kind,
            site: fail.site,
            code: u16::from(fail.code as u8),
            source_id: req.source_id,
            pasid: req.pasid,
            addr: req.addr,
            access: req.access,
            recorded,
        })
    }

    fn engine(&self) -> Engine<'_, M> {
        Engine {
            mem: &self.mem,
            iotlb: &self.caches.iotlb,
            psc: &self.caches.pdc,
        }
    }

    fn tokens(&self) -> Tokens {
        Tokens {
            dte: self.caches.dte.token(),
            gcr3: self.caches.gcr3.token(),
            engine: self.engine().tokens(),
        }
    }

    fn dte_check(&self) -> DteCheck {
        DteCheck {
            efr: self.efr,
            phys_addr_bits: self.cfg.phys_addr_bits,
        }
    }

    /// The DTE of `device_id` (§2.2.2), from the DTE cache or the device table. `None`: V = 0.
    fn dte(
        &self,
        device_id: u16,
        flags: EventFlags,
        tokens: Tokens,
        trace: &mut Trace,
    ) -> Result<Option<Dte>, Fail> {
        let illegal = || Fail {
            flags: flags & (EventFlags::GN | EventFlags::RW | EventFlags::TR),
            ..Fail::new(
                EventCode::IllegalDevTableEntry,
                FaultKind::InvalidEntry,
                FaultSite::DeviceTable,
            )
        };
        let decode = |w: [u64; 4]| {
            if w[0] & 1 == 0 {
                Ok(None)
            } else {
                Dte::decode(w, self.dte_check())
                    .map(Some)
                    .map_err(|()| illegal())
            }
        };
        if let Some(w) = self
            .caches
            .dte
            .lookup(&Tag::device_table(device_id, 0), trace)
        {
            // Only DTEs that decoded are cached: they need no second check.
            return Ok((w[0] & 1 != 0).then(|| Dte::unpack(w)));
        }
        let table = DevTabBase::from_bits(self.fast.dev_tab.load(Ordering::Acquire));
        let off = u64::from(device_id) * DTE_BYTES;
        if off + DTE_BYTES > table.bytes() {
            // A device id beyond the table: no DTE to read.
            return Err(Fail::page_fault(
                FaultKind::NotPresent,
                FaultSite::DeviceTable,
                flags,
            ));
        }
        let at = (table.base_page() << 12) + off;
        trace.read(MemTarget::DeviceTableEntry, at);
        let mut w = [0u64; 4];
        for (i, q) in w.iter_mut().enumerate() {
            *q = self.mem.read_u64(at + 8 * i as u64).map_err(|_| {
                Fail {
                    flags: (flags & (EventFlags::RW | EventFlags::TR)) | EventFlags::TYPE0,
                    ..Fail::new(
                        EventCode::DevTabHardwareError,
                        FaultKind::MemoryAccess,
                        FaultSite::DeviceTable,
                    )
                }
                .at(Some(at))
            })?;
        }
        let dte = decode(w)?;
        let did = dte.map_or(0, |d| d.domain_id);
        self.caches
            .dte
            .insert(tokens.dte, &Tag::device_table(device_id, did), &w, trace);
        Ok(dte)
    }

    pub(crate) fn translate_inner(
        &self,
        req: &DmaRequest,
        trace: &mut Trace,
    ) -> Result<Translation, Fail> {
        // The tokens before Control: a translation that sees the IOMMU enabled took its tokens
        // before any later reset emptied the caches, so what it fills from the old structures
        // is refused.
        let tokens = self.tokens();
        let ctl = Control::from_bits(self.fast.control.load(Ordering::Acquire));
        if !ctl.iommu_en() {
            // The IOMMU is disabled: DMA passes untranslated (§3.4.4 IommuEn).
            return Ok(identity(req, 0));
        }
        let mut flags = request_flags(req, req.pasid);
        let Some(dte) = self.dte(req.source_id, flags, tokens, trace)? else {
            // V = 0: untranslated, without checks.
            return Ok(identity(req, 0));
        };
        let blocked = |flags| {
            Fail::page_fault(FaultKind::NotPresent, FaultSite::DeviceTable, flags).with_dte(&dte)
        };
        if !dte.tv {
            // V = 1, TV = 0: no translation information, so the walk stops: blocked.
            return Err(blocked(flags));
        }
        let ats = req.at == AddressType::TranslationRequest;
        let guest = dte.gv && ctl.gt_en();
        if (ats && !dte.i) || (req.pasid.is_some() && !guest) {
            return Err(Fail {
                flags: flags & (EventFlags::GN | EventFlags::US | EventFlags::TR),
                ..Fail::new(
                    EventCode::InvalidDeviceRequest,
                    FaultKind::Blocked,
                    FaultSite::Request,
                )
            }
            .with_dte(&dte));
        }
        if req.pasid.is_none() && self.excluded(&dte, req.addr) {
            return Ok(identity(req, dte.domain_id));
        }
        let pasid = match req.pasid {
            Some(p) => p,
            None if guest && dte.giov => {
                // GIoV: a request without PASID is translated as PASID 0.
                flags |= EventFlags::GN;
                0
            }
            None => return self.host(req, &dte, flags, tokens, trace),
        };
        self.guest(req, &dte, pasid, flags, tokens, trace)
    }

    /// Whether `addr` is in the exclusion range for `dte` (§3.4.5, §3.4.6).
    fn excluded(&self, dte: &Dte, addr: u64) -> bool {
        let base = ExclusionBase::from_bits(self.fast.excl_base.load(Ordering::Acquire));
        if !base.ex_en() || !(base.allow() || dte.ex) {
            return false;
        }
        let limit = self.fast.excl_limit.load(Ordering::Acquire);
        (base.base_page() << 12..=limit).contains(&addr)
    }

    /// The host (v1) configuration of `dte`, or the fault of a mode that has none.
    fn host_config(&self, dte: &Dte, flags: EventFlags) -> Result<AmdV1Config, Fail> {
        if dte.mode == 7 || dte.mode > self.cfg.host_levels {
            // A reserved mode, or deeper than EFR.HATS: an invalid level.
            return Err(Fail::page_fault(
                FaultKind::InvalidEntry,
                FaultSite::DeviceTable,
                flags | EventFlags::PR,
            )
            .with_dte(dte));
        }
        let mut c = AmdV1Config::new(dte.mode).with_perms(dte.ir, dte.iw);
        c.out_width = self.cfg.phys_addr_bits;
        Ok(c)
    }

    /// A request without PASID: host translation (Mode 1-6) or none (Mode 0, under the DTE's
    /// IR/IW).
    fn host(
        &self,
        req: &DmaRequest,
        dte: &Dte,
        flags: EventFlags,
        tokens: Tokens,
        trace: &mut Trace,
    ) -> Result<Translation, Fail> {
        if dte.mode == 0 {
            let mut p = Perms::U;
            if dte.ir {
                p |= Perms::R | Perms::X;
            }
            if dte.iw {
                p |= Perms::W;
            }
            let allowed = if req.at == AddressType::TranslationRequest {
                !(p & Perms::RW).is_empty()
            } else {
                req.access.allowed_by(p)
            };
            if allowed {
                return Ok(Translation {
                    perms: p,
                    ..identity(req, dte.domain_id)
                });
            }
            return Err(if p == Perms::U {
                // IR = IW = 0: the device has no translation (a blocked device).
                Fail::page_fault(FaultKind::NotPresent, FaultSite::DeviceTable, flags)
            } else {
                Fail::page_fault(
                    FaultKind::Permission,
                    FaultSite::DeviceTable,
                    flags | EventFlags::PE,
                )
            }
            .with_dte(dte));
        }
        let cfg = self.host_config(dte, flags)?;
        let walk = Walk {
            did: dte.domain_id,
            pasid_tag: None,
            stage: Stage::Second,
            cfg: WalkConfig::AmdV1(cfg),
            root: dte.pt_root,
            nested: None,
            vendor: AmdCtx::new(dte, flags),
        };
        self.engine()
            .translate(&AmdVendor, &walk, req, pw_access(req), tokens.engine, trace)
    }

    /// A request with (or, under GIoV, as) `pasid`: the v2 tables its GCR3 entry names, over
    /// the host tables unless Mode = 0.
    fn guest(
        &self,
        req: &DmaRequest,
        dte: &Dte,
        pasid: u32,
        flags: EventFlags,
        tokens: Tokens,
        trace: &mut Trace,
    ) -> Result<Translation, Fail> {
        let host = if dte.mode == 0 {
            None
        } else {
            Some((
                WalkConfig::AmdV1(self.host_config(dte, flags)?),
                dte.pt_root,
            ))
        };
        let cr3 = self.gcr3(dte, pasid, host, flags, tokens, trace)?;
        let mut g = X86Config::amd_v2(dte.guest_levels);
        g.nxe = self.cfg.nx;
        // Guest-physical output is checked by the host walk; system-physical output here.
        g.out_width = if host.is_some() {
            52
        } else {
            self.cfg.phys_addr_bits
        };
        if host.is_some() {
            self.caches.note_nested();
        }
        let walk = Walk {
            did: dte.domain_id,
            pasid_tag: Some(pasid),
            stage: Stage::First,
            cfg: WalkConfig::AmdV2(g),
            root: cr3,
            nested: host,
            vendor: AmdCtx::new(dte, flags),
        };
        self.engine()
            .translate(&AmdVendor, &walk, req, pw_access(req), tokens.engine, trace)
    }

    /// The guest CR3 of `pasid` (§2.2.6): from the GCR3 cache, or by indexing each GCR3 table
    /// level with 9 bits of the PASID (top level first), every table address translated by
    /// `host` when there is one.
    fn gcr3(
        &self,
        dte: &Dte,
        pasid: u32,
        host: Option<(WalkConfig, u64)>,
        flags: EventFlags,
        tokens: Tokens,
        trace: &mut Trace,
    ) -> Result<u64, Fail> {
        let levels = dte.gcr3_levels;
        let site = FaultSite::PasidTable;
        let not_present = || Fail::page_fault(FaultKind::NotPresent, site, flags).with_dte(dte);
        if pasid >> self.cfg.pasid_bits != 0 || u64::from(pasid) >> (9 * u32::from(levels)) != 0 {
            // Beyond PASmax or beyond what the GCR3 table's levels index.
            return Err(not_present());
        }
        let key = dte.gcr3_root | u64::from(levels);
        let tag = Tag::pasid_entry(dte.domain_id, pasid);
        if let Some([e, k]) = self.caches.gcr3.lookup(&tag, trace)
            && k == key
        {
            return Ok(Gcr3Entry::from_bits(e).page() << 12);
        }
        let mut table = dte.gcr3_root;
        for level in (1..=levels).rev() {
            let index = (u64::from(pasid) >> (9 * u32::from(level - 1))) & 0x1ff;
            let gpa = table + 8 * index;
            let at = match host {
                None => gpa,
                Some((cfg, root)) => self
                    .engine()
                    .walk_structure_address(&cfg, root, gpa, trace)
                    .map_err(|f| walk_fail(&f, flags).with_dte(dte))?,
            };
            trace.read(MemTarget::Gcr3Entry { level }, at);
            let raw = self.mem.read_u64(at).map_err(|_| {
                Fail {
                    flags: (flags & (EventFlags::GN | EventFlags::RW | EventFlags::TR))
                        | EventFlags::TYPE0,
                    ..Fail::new(
                        EventCode::PageTabHardwareError,
                        FaultKind::MemoryAccess,
                        site,
                    )
                }
                .with_dte(dte)
                .at(Some(at))
            })?;
            let e = Gcr3Entry::from_bits(raw);
            if !e.v() {
                return Err(not_present());
            }
            let next = e.page() << 12;
            if e.rsvd() != 0 || next >> self.cfg.phys_addr_bits != 0 {
                return Err(Fail::page_fault(
                    FaultKind::InvalidEntry,
                    site,
                    flags | EventFlags::PR | EventFlags::RZ,
                )
                .with_dte(dte));
            }
            if level == 1 {
                self.caches
                    .gcr3
                    .insert(tokens.gcr3, &tag, &[raw, key], trace);
            }
            table = next;
        }
        Ok(table)
    }

    /// PREFETCH_IOMMU_PAGES (§2.4.6): walks `count` pages (at least one) from `addr` into the
    /// IOTLB as reads, after invalidating them with `inval`. Faults are not logged.
    pub(crate) fn prefetch(
        &self,
        device_id: u16,
        pasid: Option<u32>,
        addr: u64,
        count: u8,
        inval: bool,
    ) {
        let mut trace = Trace::off();
        for i in 0..u64::from(count.max(1)) {
            let page = (addr & !0xfff).wrapping_add(i << 12);
            let mut req = DmaRequest::new(device_id, page, 1, AccessKind::Read);
            req.pasid = pasid;
            if inval && let Ok(t) = self.translate_inner(&req, &mut trace) {
                self.caches.invalidate_pages(super::PagesInvalidation {
                    domain: t.domain_id,
                    pasid,
                    addr: page,
                    s: false,
                    pde: false,
                });
            }
            let _ = self.translate_inner(&req, &mut trace);
        }
    }
}

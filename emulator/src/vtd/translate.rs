//! The DMA-remapping translation path (VT-d spec rev 4.1, chapter 3 "DMA Remapping", §3.4
//! legacy mode, §3.5-§3.8 scalable mode and the stages, chapter 6 caching, §7.1 fault
//! conditions): what is VT-d's. The root, context and PASID structures are read (through the
//! context and PASID caches) into a [`Walk`]; the shared engine ([`crate::xlate`]) does the
//! IOTLB, the paging-structure caches, the walks and the fills, and this module supplies the
//! fault reasons and the interrupt-range check ([`Vendor`]).

use std::sync::atomic::Ordering;

use iotlb::{Tag, Token};
use pagewalk::{
    Access as PwAccess, AccessKind as PwKind, Decoded, FaultKind as PwFault, NestedPhase, PhysMem,
    VtdSsConfig, WalkConfig, X86Config,
};

use super::cache::CTX_LEGACY_MARK;
use super::fault::{FaultInfo, FaultReason};
use super::layout::RtaddrReg;
use super::regs::{TTM_LEGACY, TTM_SCALABLE, VtdConfig};
use super::structs::{
    ContextEntry, EntryError, PasidDirEntry, PasidEntry, PasidSupport, Pgtt, RootEntry,
    ScalableContextEntry, ScalableRootHalf, TranslationType, legacy_context_fpd,
};
use super::{ACTIVE_TE, Vtd};
use crate::request::{AccessKind, AddressType, DmaRequest, Fault, Perms, Translation};
use crate::trace::{MemTarget, Stage, Trace};
use crate::xlate::{self, Engine, Vendor, Walk, covered_len};

/// Why a translation failed, whether an FPD bit read on the way suppresses recording, and the
/// page-table entry (stage and level) a walk faulted at, if a walk found it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Fail {
    reason: FaultReason,
    fpd: bool,
    walk: Option<(Stage, u8)>,
}

impl Fail {
    fn new(reason: FaultReason) -> Self {
        Self::fpd(reason, false)
    }
    fn fpd(reason: FaultReason, fpd: bool) -> Self {
        Self {
            reason,
            fpd,
            walk: None,
        }
    }
    /// The same failure, found by a walk at `f`'s entry.
    fn at(self, f: &pagewalk::Fault) -> Self {
        Self {
            walk: Some((f.stage, f.level)),
            ..self
        }
    }
}

/// The tokens of every cache, taken before any structure is read.
#[derive(Clone, Copy)]
struct Tokens {
    context: Token,
    pasid: Token,
    engine: xlate::Tokens,
}

/// What VT-d's fault encodings need to know of a walk: the FPD bits read on the way and whether
/// the tables are second-stage tables of a legacy-mode context entry.
#[derive(Debug, Clone, Copy)]
pub(crate) struct VtdCtx {
    fpd: bool,
    legacy: bool,
}

/// VT-d's side of the translation engine: its fault reasons and its output check.
struct VtdVendor;

/// The walker access for a request. An ATS translation request asks what the page allows; it
/// walks as a write first ([`Vtd::walk`] retries a page that refuses writes as a read). A
/// zero-length read needs read or write permission.
#[inline]
fn pw_access(req: &DmaRequest, legacy: bool) -> PwAccess {
    let privileged = req.privileged;
    if req.at == AddressType::TranslationRequest {
        return PwAccess {
            kind: PwKind::Write,
            privileged,
        };
    }
    let kind = match req.access {
        // CAP.ZLR = 1 (§10.4.2): zero-length reads are supported to write-only pages.
        AccessKind::Read if req.len == 0 => PwKind::ZeroLengthRead,
        AccessKind::Read => PwKind::Read,
        AccessKind::Write | AccessKind::Atomic => PwKind::Write,
        // Legacy mode has no execute requests: an execute-requested read is a read.
        AccessKind::Execute if legacy => PwKind::Read,
        AccessKind::Execute => PwKind::Execute,
    };
    PwAccess { kind, privileged }
}

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

fn read_qwords<M: PhysMem, const N: usize>(mem: &M, addr: u64) -> Option<[u64; N]> {
    let mut out = [0u64; N];
    for (i, q) in out.iter_mut().enumerate() {
        *q = mem.read_u64(addr.checked_add(8 * i as u64)?).ok()?;
    }
    Some(out)
}

/// First byte of the interrupt address range (§3.15: 0xFEEx_xxxx).
const INTERRUPT_RANGE_FIRST: u64 = 0xfee0_0000;
/// Last byte of the interrupt address range.
const INTERRUPT_RANGE_LAST: u64 = 0xfeef_ffff;

/// Whether `len` bytes (at least one) from `addr` reach into the interrupt address range.
#[inline]
fn overlaps_interrupt_range(addr: u64, len: u64) -> bool {
    let last = addr.saturating_add(len.max(1) - 1);
    addr <= INTERRUPT_RANGE_LAST && last >= INTERRUPT_RANGE_FIRST
}

/// The address width check: the input is above 2^X - 1, X = min(MGAW, AGAW of the entry).
#[inline]
fn width_for_aw(mgaw: u8, aw: u8) -> u8 {
    (30 + 9 * aw).min(mgaw)
}

impl<M: PhysMem> Vtd<M> {
    /// Translates one DMA request. Returns the translation or the fault (recorded in the fault
    /// recording registers as hardware would), and the trace of cache lookups and memory
    /// references. Safe to call from many threads at once.
    pub fn translate(&self, req: &DmaRequest) -> (Result<Translation, Fault>, Trace) {
        let mut trace = Trace::new();
        let r = self.translate_with(req, &mut trace);
        (r, trace)
    }

    /// [`Vtd::translate`] recording into a caller-owned trace (cleared first), which saves
    /// building and moving a trace per request on hot paths.
    pub fn translate_with(
        &self,
        req: &DmaRequest,
        trace: &mut Trace,
    ) -> Result<Translation, Fault> {
        trace.clear();
        self.stats.translations.incr();
        let boot = self.resets.load(Ordering::Acquire);
        match self.translate_inner(req, trace) {
            Ok(t) => Ok(t),
            // A translation request that finds no (or no permitted) page is not a fault: the
            // completion reports R = W = 0 and nothing is recorded (§4.2.3).
            // CAP.MGAW: a translation request beyond the address width the second stage
            // translates gets the same null completion.
            Err(fail)
                if req.at == AddressType::TranslationRequest
                    && (fail.reason.page_condition()
                        || matches!(
                            fail.reason,
                            FaultReason::AddressBeyondAw | FaultReason::SmAddressBeyondAw
                        )) =>
            {
                Ok(Translation {
                    addr: 0,
                    len: covered_len(req.addr, req.len, 12),
                    page_shift: 12,
                    perms: Perms::default(),
                    domain_id: 0,
                    identity: false,
                })
            }
            Err(fail) => {
                self.stats.faults.fetch_add(1, Ordering::Relaxed);
                let info = FaultInfo {
                    reason: fail.reason,
                    source_id: req.source_id,
                    pasid: req.pasid,
                    addr: req.addr,
                    access: req.access,
                    privileged: req.privileged,
                    at: req.at,
                };
                let suppressed = fail.fpd && fail.reason.qualified();
                let recorded = !suppressed && self.record_fault(&info, boot);
                if recorded {
                    self.stats.faults_recorded.fetch_add(1, Ordering::Relaxed);
                }
                log::debug!(
                    "vtd: fault {:?} ({:#x}) sid {:#06x} addr {:#x} recorded {recorded}",
                    fail.reason,
                    fail.reason.code(),
                    req.source_id,
                    req.addr
                );
                Err(Fault {
                    kind: fail.reason.kind(),
                    site: fail.reason.site(fail.walk),
                    code: u16::from(fail.reason.code()),
                    source_id: req.source_id,
                    pasid: req.pasid,
                    addr: req.addr,
                    access: req.access,
                    recorded,
                })
            }
        }
    }

    fn engine(&self) -> Engine<'_, M> {
        Engine {
            mem: &self.mem,
            iotlb: &self.caches.iotlb,
            psc: &self.caches.psc,
        }
    }

    fn tokens(&self) -> Tokens {
        Tokens {
            context: self.caches.context.token(),
            pasid: self.caches.pasid.token(),
            engine: self.engine().tokens(),
        }
    }

    pub(crate) fn translate_inner(
        &self,
        req: &DmaRequest,
        trace: &mut Trace,
    ) -> Result<Translation, Fail> {
        // The tokens before the active state: a translation that sees translation enabled took
        // its tokens before any later Translation Disable or reset emptied the caches, so what
        // it fills from the old structures is refused.
        let tokens = self.tokens();
        let active = self.active.load(Ordering::Acquire);
        if active & ACTIVE_TE == 0 {
            // Translation disabled: DMA is not remapped (§10.4.4 GCMD.TE).
            return Ok(identity(req, 0));
        }
        let ttm = u64::from(RtaddrReg::from_bits(active).ttm());
        if req.pasid.is_none() && (INTERRUPT_RANGE_FIRST..=INTERRUPT_RANGE_LAST).contains(&req.addr)
        {
            return interrupt_range_request(req, ttm);
        }
        let rta = active & !0xfff;
        match ttm {
            TTM_LEGACY => self.legacy(rta, req, tokens, trace),
            TTM_SCALABLE if self.cfg.scalable_mode => self.scalable(rta, req, tokens, trace),
            // TTM = 10b is reserved; 11b (abort-DMA mode) needs ECAP.ADMS, not offered.
            _ => Err(Fail::new(FaultReason::InvalidRootTable)),
        }
    }

    // ---------------------------------------------------------------- legacy mode (§3.4.2)

    fn legacy_context(
        &self,
        rta: u64,
        sid: u16,
        tokens: Tokens,
        trace: &mut Trace,
    ) -> Result<ContextEntry, Fail> {
        let dec = |lo, hi| {
            ContextEntry::decode(
                lo,
                hi,
                self.cfg.haw,
                self.cfg.pass_through,
                self.cfg.device_tlb,
                |aw| self.cfg.supports_aw(aw),
            )
        };
        if let Some(w) = self.caches.context.lookup(&Tag::context(sid, 0), trace)
            && w[3] == CTX_LEGACY_MARK
            && let Ok(ce) = dec(w[0], w[1])
        {
            return Ok(ce);
        }
        let bus = u64::from(sid >> 8);
        let raddr = rta + bus * 16;
        trace.read(MemTarget::RootEntry, raddr);
        let [rlo, rhi] =
            read_qwords::<M, 2>(&self.mem, raddr).ok_or(Fail::new(FaultReason::RootAccessError))?;
        let root = RootEntry::decode(rlo, rhi, self.cfg.haw).map_err(|e| {
            Fail::new(match e {
                EntryError::NotPresent => FaultReason::RootNotPresent,
                _ => FaultReason::RootReserved,
            })
        })?;
        let caddr = root.ctp + u64::from(sid & 0xff) * 16;
        trace.read(MemTarget::ContextEntry, caddr);
        let [lo, hi] = read_qwords::<M, 2>(&self.mem, caddr)
            .ok_or(Fail::new(FaultReason::ContextAccessError))?;
        let ce = dec(lo, hi).map_err(|e| {
            Fail::fpd(
                match e {
                    EntryError::NotPresent => FaultReason::ContextNotPresent,
                    EntryError::Reserved => FaultReason::ContextReserved,
                    EntryError::Invalid => FaultReason::ContextInvalid,
                },
                legacy_context_fpd(lo),
            )
        })?;
        self.caches.context.insert(
            tokens.context,
            &Tag::context(sid, ce.did),
            &[lo, hi, 0, CTX_LEGACY_MARK],
            trace,
        );
        Ok(ce)
    }

    fn legacy(
        &self,
        rta: u64,
        req: &DmaRequest,
        tokens: Tokens,
        trace: &mut Trace,
    ) -> Result<Translation, Fail> {
        if req.pasid.is_some() {
            return Err(Fail::new(FaultReason::LegacyModePasid));
        }
        let ce = self.legacy_context(rta, req.source_id, tokens, trace)?;
        let fpd = ce.fpd;
        let ats = req.at == AddressType::TranslationRequest;
        match ce.tt {
            TranslationType::PassThrough if !ats => return Ok(identity(req, ce.did)),
            TranslationType::DeviceTlb => {}
            _ if ats => return Err(Fail::fpd(FaultReason::TranslationRequestBlocked, fpd)),
            _ => {}
        }
        let x = width_for_aw(self.cfg.mgaw, ce.aw);
        if req.addr >> x != 0 {
            return Err(Fail::fpd(FaultReason::AddressBeyondAw, fpd));
        }
        let walk = Walk {
            did: ce.did,
            pasid_tag: None,
            stage: Stage::Second,
            cfg: WalkConfig::VtdSecondStage(self.legacy_ss[usize::from(ce.aw & 7)]),
            root: ce.slptptr,
            nested: None,
            vendor: VtdCtx { fpd, legacy: true },
        };
        self.walk(&walk, req, tokens, trace)
    }

    /// Runs `walk` through the shared engine with VT-d's walker access and fault encodings.
    fn walk(
        &self,
        walk: &Walk<VtdCtx>,
        req: &DmaRequest,
        tokens: Tokens,
        trace: &mut Trace,
    ) -> Result<Translation, Fail> {
        let access = pw_access(req, walk.vendor.legacy);
        if walk.stage == Stage::First || walk.nested.is_some() {
            self.caches.note_first_stage(walk.did);
        }
        let r = self
            .engine()
            .translate(&VtdVendor, walk, req, access, tokens.engine, trace);
        // ECAP.NWFS = 0: hardware ignores a translation request's No-Write flag and behaves
        // as if it were 0, so the request seeks write permission: it walks for write, which
        // sets D where the page allows writes, so W is never granted on a clean page. A page
        // that refuses writes is walked again as a read, and its completion carries W = 0.
        match r {
            Err(f) if req.at == AddressType::TranslationRequest && f.reason.write_refusal() => {
                let read = PwAccess {
                    kind: PwKind::Read,
                    ..access
                };
                self.engine()
                    .translate(&VtdVendor, walk, req, read, tokens.engine, trace)
            }
            r => r,
        }
    }

    // ------------------------------------------------------------ scalable mode (§3.4.3)

    fn scalable_context(
        &self,
        rta: u64,
        sid: u16,
        tokens: Tokens,
        trace: &mut Trace,
    ) -> Result<ScalableContextEntry, Fail> {
        let dec = |qw| ScalableContextEntry::decode(qw, self.cfg.haw, self.cfg.device_tlb, false);
        if let Some(w) = self.caches.context.lookup(&Tag::context(sid, 0), trace)
            && w[3] != CTX_LEGACY_MARK
            && let Ok(ce) = dec(w)
        {
            return Ok(ce);
        }
        let devfn = u64::from(sid & 0xff);
        // The lower qword of the root entry serves devfn 0..=127, the upper one 128..=255.
        let raddr = rta + u64::from(sid >> 8) * 16 + if devfn >= 128 { 8 } else { 0 };
        trace.read(MemTarget::RootEntry, raddr);
        let rq = self
            .mem
            .read_u64(raddr)
            .map_err(|_| Fail::new(FaultReason::SmRootAccessError))?;
        let half = ScalableRootHalf::decode(rq, self.cfg.haw).map_err(|e| {
            Fail::new(match e {
                EntryError::NotPresent => FaultReason::SmRootNotPresent,
                _ => FaultReason::SmRootReserved,
            })
        })?;
        let caddr = half.ctp + (devfn & 0x7f) * 32;
        trace.read(MemTarget::ContextEntry, caddr);
        let qw = read_qwords::<M, 4>(&self.mem, caddr)
            .ok_or(Fail::new(FaultReason::SmContextAccessError))?;
        let ce = dec(qw).map_err(|e| {
            Fail::fpd(
                match e {
                    EntryError::NotPresent => FaultReason::SmContextNotPresent,
                    EntryError::Reserved => FaultReason::SmContextReserved,
                    EntryError::Invalid => FaultReason::SmContextInvalid,
                },
                qw[0] & 2 != 0,
            )
        })?;
        self.caches
            .context
            .insert(tokens.context, &Tag::context(sid, 0), &qw, trace);
        Ok(ce)
    }

    fn pasid_support(&self) -> PasidSupport {
        PasidSupport {
            first_stage: self.cfg.first_stage,
            second_stage: self.cfg.second_stage,
            nested: self.cfg.nested,
            pass_through: self.cfg.pass_through,
            fs_5level: self.cfg.fs_5level,
            srs: self.cfg.srs,
            ers: self.cfg.ers,
            ss_ad: self.cfg.ss_ad,
            sagaw: self.cfg.sagaw,
            haw: self.cfg.haw,
        }
    }

    /// The PASID-table entry of `pasid` and the FPD of the directory entry leading to it.
    fn pasid_entry(
        &self,
        ce: &ScalableContextEntry,
        sid: u16,
        pasid: u32,
        tokens: Tokens,
        trace: &mut Trace,
    ) -> Result<(PasidEntry, bool), Fail> {
        let support = self.pasid_support();
        let mut tag = Tag::pasid_entry(0, pasid);
        tag.source_id = sid;
        if let Some(w) = self.caches.pasid.lookup(&tag, trace)
            && let Ok(pe) = PasidEntry::decode([w[0], w[1], w[2], 0, 0, 0, 0, 0], &support)
        {
            return Ok((pe, w[3] != 0));
        }
        let mut fpd = ce.fpd;
        let daddr = ce.pasiddirptr + u64::from(pasid >> 6) * 8;
        trace.read(MemTarget::PasidDirEntry, daddr);
        let dq = self
            .mem
            .read_u64(daddr)
            .map_err(|_| Fail::fpd(FaultReason::PasidDirAccessError, fpd))?;
        let pde = PasidDirEntry::decode(dq, self.cfg.haw).map_err(|e| {
            Fail::fpd(
                match e {
                    EntryError::NotPresent => FaultReason::PasidDirNotPresent,
                    _ => FaultReason::PasidDirReserved,
                },
                fpd || dq & 2 != 0,
            )
        })?;
        fpd |= pde.fpd;
        let paddr = pde.smptblptr + u64::from(pasid & 0x3f) * 64;
        trace.read(MemTarget::PasidEntry, paddr);
        let qw = read_qwords::<M, 8>(&self.mem, paddr)
            .ok_or(Fail::fpd(FaultReason::PasidEntryAccessError, fpd))?;
        let pe = PasidEntry::decode(qw, &support).map_err(|e| {
            Fail::fpd(
                match e {
                    EntryError::NotPresent => FaultReason::PasidEntryNotPresent,
                    EntryError::Reserved => FaultReason::PasidEntryReserved,
                    EntryError::Invalid => FaultReason::PasidEntryInvalid,
                },
                fpd || qw[0] & 2 != 0,
            )
        })?;
        self.caches.pasid.insert(
            tokens.pasid,
            &tag,
            &[qw[0], qw[1], qw[2], u64::from(pde.fpd)],
            trace,
        );
        Ok((pe, pde.fpd))
    }

    fn scalable(
        &self,
        rta: u64,
        req: &DmaRequest,
        tokens: Tokens,
        trace: &mut Trace,
    ) -> Result<Translation, Fail> {
        let ce = self.scalable_context(rta, req.source_id, tokens, trace)?;
        if req.at == AddressType::TranslationRequest && !ce.dte {
            return Err(Fail::fpd(FaultReason::SmDteClear, ce.fpd));
        }
        let (pasid, privileged) = self.request_pasid(&ce, req)?;
        let (pe, pde_fpd) = self.pasid_entry(&ce, req.source_id, pasid, tokens, trace)?;
        let fpd = ce.fpd || pde_fpd || pe.fpd;
        let req_priv = DmaRequest { privileged, ..*req };
        match self.pasid_walk(&pe, pasid, fpd, &req_priv)? {
            Some(walk) => self.walk(&walk, &req_priv, tokens, trace),
            // §3.15: a request with PASID to the interrupt address range is translated
            // normally, but blocked (SGN.8) if it is processed with pass-through translation.
            // (One without PASID never gets here, see `interrupt_range_request`.)
            None if req.pasid.is_some() && overlaps_interrupt_range(req.addr, req.len) => {
                Err(Fail::fpd(FaultReason::SmInterruptAddress, fpd))
            }
            None => Ok(identity(req, pe.did)),
        }
    }

    /// The PASID whose PASID-table entry serves `req`, and the privilege it is translated
    /// with: the request's own PASID and privilege (the context entry must enable PASIDs), or,
    /// for a request without PASID, RID_PASID and RID_PRIV (ECAP.RPS; RID_PRIV reads as 0
    /// without ECAP.RPRIVS). The PASID must fit the unit's width and the directory (PDTS).
    fn request_pasid(
        &self,
        ce: &ScalableContextEntry,
        req: &DmaRequest,
    ) -> Result<(u32, bool), Fail> {
        let (pasid, privileged) = match req.pasid {
            Some(_) if !ce.paside => {
                return Err(Fail::fpd(FaultReason::SmPasidDisabled, ce.fpd));
            }
            Some(p) => (p, req.privileged),
            None => (ce.rid_pasid, ce.rid_priv),
        };
        if u64::from(pasid) >> self.cfg.pasid_bits != 0 || u64::from(pasid >> 6) >= ce.dir_entries()
        {
            return Err(Fail::fpd(FaultReason::SmPasidTooLarge, ce.fpd));
        }
        Ok((pasid, privileged))
    }

    /// The walk a PASID-table entry sets up for `req` (PGTT, §9.6), or `None` for
    /// pass-through; with the per-request checks of its translation type (address width,
    /// SRE, ERE, canonical first-stage input).
    fn pasid_walk(
        &self,
        pe: &PasidEntry,
        pasid: u32,
        fpd: bool,
        req: &DmaRequest,
    ) -> Result<Option<Walk<VtdCtx>>, Fail> {
        let walk = |stage, cfg, root, nested| {
            Some(Walk {
                did: pe.did,
                pasid_tag: Some(pasid),
                stage,
                cfg,
                root,
                nested,
                vendor: VtdCtx { fpd, legacy: false },
            })
        };
        let ss = || WalkConfig::VtdSecondStage(ss_config_for(&self.cfg, pe.aw, pe.ssade, pe.ssee));
        match pe.pgtt {
            Pgtt::PassThrough => Ok(None),
            Pgtt::SecondStage => {
                let x = width_for_aw(self.cfg.mgaw, pe.aw);
                if req.addr >> x != 0 {
                    return Err(Fail::fpd(FaultReason::SmAddressBeyondAw, fpd));
                }
                Ok(walk(Stage::Second, ss(), pe.ssptptr, None))
            }
            Pgtt::FirstStage | Pgtt::Nested => {
                if req.privileged && !pe.sre {
                    return Err(Fail::fpd(FaultReason::SreClear, fpd));
                }
                if req.access == AccessKind::Execute && !pe.ere {
                    return Err(Fail::fpd(FaultReason::EreClear, fpd));
                }
                let cfg = WalkConfig::VtdFirstStage(self.fs_config(pe));
                if !cfg.input_in_range(req.addr) {
                    return Err(Fail::fpd(FaultReason::NonCanonical, fpd));
                }
                // Nested (§3.8): the first-stage walk whose table addresses and output are
                // guest-physical, each translated by the second stage. The IOTLB caches the
                // combined translation, and the paging-structure caches the first-stage
                // non-leaf entries and the second-stage ones its sub-walks visit (tagged
                // with the DID alone, shared with one-dimensional second-stage walks).
                let nested = (pe.pgtt == Pgtt::Nested).then(|| (ss(), pe.ssptptr));
                Ok(walk(Stage::First, cfg, pe.fsptptr, nested))
            }
        }
    }

    /// The first-stage format a PASID-table entry selects (§3.6, §9.6).
    fn fs_config(&self, pe: &PasidEntry) -> X86Config {
        X86Config {
            levels: if pe.fs_5level { 5 } else { 4 },
            out_width: self.cfg.haw,
            sre: pe.sre,
            wpe: pe.wpe,
            // XD is always defined and supervisor execution from user pages refused for
            // first-stage tables (rev 4.x: the NXE and SMEP controls of earlier revisions are
            // gone).
            nxe: true,
            ere: pe.ere,
            smep: true,
            eafe: false,
            ad: true,
            ps_1g: self.cfg.fs_1g,
        }
    }
}

/// A request without PASID to the interrupt address range, which is not subjected to DMA
/// remapping whatever the tables say (§3.15 "Handling Requests to Interrupt Address Range"): a
/// DWORD write is an interrupt request, handed on untranslated (the unit does no interrupt
/// remapping, ECAP.IR = 0, so it goes to the interrupt controller as it is); a zero-length read
/// completes; every other untranslated request is blocked as an interrupt-remapping fault. A
/// translation request there has nothing to translate and is blocked (LGN.4 / SGN.8).
fn interrupt_range_request(req: &DmaRequest, ttm: u64) -> Result<Translation, Fail> {
    if req.at == AddressType::TranslationRequest {
        return Err(Fail::new(if ttm == TTM_LEGACY {
            FaultReason::InterruptAddress
        } else {
            FaultReason::SmInterruptAddress
        }));
    }
    let interrupt = req.access == AccessKind::Write && req.len == 4;
    let zero_length_read = req.access == AccessKind::Read && req.len == 0;
    if interrupt || zero_length_read {
        Ok(identity(req, 0))
    } else {
        Err(Fail::new(FaultReason::InterruptRequestBlocked))
    }
}

impl Vendor for VtdVendor {
    type Ctx = VtdCtx;
    type Fail = Fail;

    /// Maps a walker fault to the spec's fault reason for the mode and stage.
    fn walk_fault(
        &self,
        s: &Walk<VtdCtx>,
        access: PwAccess,
        above: pagewalk::Perms,
        f: &pagewalk::Fault,
    ) -> Fail {
        use FaultReason as R;
        let first_stage = s.stage == Stage::First;
        let levels = s.cfg.levels();
        let write = access.is_write();
        let reason = if s.vendor.legacy {
            match f.kind {
                PwFault::NotPresent | PwFault::Permission if write => R::WriteDenied,
                PwFault::NotPresent | PwFault::Permission => R::ReadDenied,
                PwFault::ReservedBit | PwFault::BadLevel => R::SlReserved,
                PwFault::AddressBeyondWidth => R::AddressBeyondAw,
                PwFault::MemoryRead(_) | PwFault::AdUpdateContention => R::SlAccessError,
            }
        } else if !first_stage {
            match f.kind {
                PwFault::NotPresent => R::SsNotPresent,
                PwFault::Permission if access.kind == PwKind::Execute => R::ExecuteDenied,
                PwFault::Permission if write => R::SmWriteDenied,
                PwFault::Permission => R::SmReadDenied,
                PwFault::ReservedBit | PwFault::BadLevel => R::SsReserved,
                PwFault::AddressBeyondWidth => R::SmAddressBeyondAw,
                // The root table SSPTPTR points at cannot be read: SSS.4, as SFS.4 below.
                PwFault::MemoryRead(_) if f.level == levels => R::SsptptrInvalid,
                PwFault::MemoryRead(_) | PwFault::AdUpdateContention => R::SsAccessError,
            }
        } else {
            match f.kind {
                PwFault::NotPresent => R::FsNotPresent,
                PwFault::ReservedBit | PwFault::BadLevel => R::FsReserved,
                PwFault::AddressBeyondWidth => R::NonCanonical,
                PwFault::MemoryRead(_) if f.level == levels => R::FsptptrAccessError,
                PwFault::MemoryRead(_) | PwFault::AdUpdateContention => R::FsAccessError,
                PwFault::Permission => fs_permission_reason(&s.cfg, access, above, f),
            }
        };
        Fail::fpd(reason, s.vendor.fpd).at(f)
    }

    fn nested_fault(&self, s: &Walk<VtdCtx>, access: PwAccess, f: &pagewalk::Fault) -> Fail {
        let ss_levels = s.nested.map_or(0, |(ss, _)| ss.levels());
        let reason = match f.kind {
            // Every second-stage walk of a nested translation starts at the table SSPTPTR
            // points at: an error reading it is SSS.4, whichever address was translated.
            PwFault::MemoryRead(_) if f.level == ss_levels => FaultReason::SsptptrInvalid,
            _ => nested_ss_fault(s.cfg.levels(), access, f),
        };
        Fail::fpd(reason, s.vendor.fpd).at(f)
    }

    fn read_denied(&self, s: &Walk<VtdCtx>) -> Fail {
        let reason = if s.vendor.legacy {
            FaultReason::ReadDenied
        } else {
            FaultReason::SmReadDenied
        };
        Fail::fpd(reason, s.vendor.fpd)
    }

    /// Untranslated and translation requests whose translation lands in the interrupt address
    /// range 0xFEE0_0000..=0xFEEF_FFFF are blocked (VT-d spec rev 4.1, §3.15 "Handling Requests
    /// to Interrupt Address Range"; LGN.4 in legacy mode, SGN.8 in scalable mode). Checked on
    /// every use, so a cached translation cannot bypass it.
    fn check_output(
        &self,
        s: &Walk<VtdCtx>,
        _req: &DmaRequest,
        addr: u64,
        len: u64,
    ) -> Result<(), Fail> {
        let last = addr.saturating_add(len - 1);
        if addr <= INTERRUPT_RANGE_LAST && last >= INTERRUPT_RANGE_FIRST {
            let reason = if s.vendor.legacy {
                FaultReason::InterruptAddress
            } else {
                FaultReason::SmInterruptAddress
            };
            return Err(Fail::fpd(reason, s.vendor.fpd));
        }
        Ok(())
    }
}

/// The fault reason of a first-stage permission fault (§3.6, Appendix A SGN.2/3/6), from the
/// permissions the walk accumulated above the faulting entry (`above`) and the entry itself:
/// a user/supervisor violation (SGN.2) when even a read at the request's privilege is refused,
/// otherwise an execute (SGN.3) or a write (SGN.6) violation. No second walk: what the walk
/// read is what decides, even if the tables change right after.
fn fs_permission_reason(
    cfg: &WalkConfig,
    access: PwAccess,
    above: pagewalk::Perms,
    f: &pagewalk::Fault,
) -> FaultReason {
    // A fault before any entry was read comes from the per-request controls (SRE/ERE, which
    // the PASID-entry checks have already turned into their own reasons).
    let leaf = match f.entry.map(|e| cfg.decode(f.level, e)) {
        Some(Decoded::Leaf { perms, .. }) => perms,
        _ => pagewalk::Perms::ALL,
    };
    let acc = above & leaf;
    let read = PwAccess {
        kind: PwKind::Read,
        privileged: access.privileged,
    };
    if !cfg.permits(acc, read) {
        FaultReason::UserSupervisor
    } else if access.kind == PwKind::Execute {
        FaultReason::ExecuteDenied
    } else {
        FaultReason::SmWriteDenied
    }
}

/// The fault reason of a second-stage fault inside a nested walk (§3.8, Appendix A), from the
/// phase the walker reports: translating a first-stage table's address (SFS.5 beyond the
/// address width, SFS.6 the first-stage root not readable, SFS.7 another first-stage table not
/// readable), writing a first-stage A/D flag (SFS.8), or translating the final guest-physical
/// output (the SSS.x / SGN.x conditions of a second-stage walk).
fn nested_ss_fault(fs_levels: u8, access: PwAccess, f: &pagewalk::Fault) -> FaultReason {
    use FaultReason as R;
    match f.nested {
        Some(NestedPhase::FirstStageTable { level }) => match f.kind {
            PwFault::AddressBeyondWidth => R::NestedFsBeyondAw,
            PwFault::NotPresent | PwFault::Permission if level == fs_levels => {
                R::NestedFsRootReadDenied
            }
            PwFault::NotPresent | PwFault::Permission => R::NestedFsReadDenied,
            PwFault::ReservedBit | PwFault::BadLevel => R::SsReserved,
            PwFault::MemoryRead(_) | PwFault::AdUpdateContention => R::SsAccessError,
        },
        Some(NestedPhase::FirstStageAdUpdate { .. }) => match f.kind {
            PwFault::NotPresent | PwFault::Permission => R::NestedFsWriteDenied,
            PwFault::ReservedBit | PwFault::BadLevel => R::SsReserved,
            PwFault::AddressBeyondWidth => R::NestedFsBeyondAw,
            PwFault::MemoryRead(_) | PwFault::AdUpdateContention => R::SsAccessError,
        },
        // The final output (and, defensively, a second-stage fault the walker did not place):
        // the conditions of a second-stage walk of that input, beyond its width SGN.5 (84h),
        // as its permissions are SGN.6/SGN.7 and not SFS.6/SFS.7.
        Some(NestedPhase::FinalOutput) | None => match f.kind {
            PwFault::NotPresent => R::SsNotPresent,
            PwFault::Permission if access.kind == PwKind::Execute => R::ExecuteDenied,
            PwFault::Permission if access.is_write() => R::SmWriteDenied,
            PwFault::Permission => R::SmReadDenied,
            PwFault::ReservedBit | PwFault::BadLevel => R::SsReserved,
            PwFault::AddressBeyondWidth => R::SmAddressBeyondAw,
            PwFault::MemoryRead(_) | PwFault::AdUpdateContention => R::SsAccessError,
        },
    }
}

/// The second-stage walk configuration of a context or PASID entry with address width `aw`
/// (and, scalable mode, SLADE and SLEE) on a unit configured as `cfg`.
pub(super) fn ss_config_for(cfg: &VtdConfig, aw: u8, slade: bool, slee: bool) -> VtdSsConfig {
    let levels = VtdSsConfig::levels_for_aw(aw).unwrap_or(4);
    let mut c = VtdSsConfig::new(levels).with_haw(cfg.haw);
    c.input_width = width_for_aw(cfg.mgaw, aw);
    c.slade = slade;
    c.slee = slee;
    c.sp_2m = cfg.sl_2m;
    c.sp_1g = cfg.sl_1g;
    c
}

//! The vendor-neutral translation engine every unit shares (`../shared/DESIGN.md`, "Layers").
//!
//! A unit resolves a request's structures itself (VT-d: root, context and PASID entries; AMD-Vi:
//! DTE and GCR3) into a [`Walk`]: the domain id and PASID that tag its cached translations, the
//! page-table format and root of the first (or only) stage, and, for a nested walk, the second
//! stage's. The [`Engine`] does the rest, the same way for every vendor:
//!
//! 1. the IOTLB lookup, trusting a hit only if it grants the access (and, for a write, if the
//!    leaf's dirty flag is known to be set);
//! 2. the paging-structure-cache lookups, deepest level first, for where the walk can start;
//! 3. the one- or two-dimensional walk through `pagewalk`, with its A/D updates, recording every
//!    memory reference and the walk's start and end in the trace; each second-stage walk of a
//!    nested walk (of a first-stage table's address, and of the output) starts from the
//!    second-stage paging-structure-cache entries the same way;
//! 4. the fills: the non-leaf entries the walk went through (a nested walk's of both stages),
//!    then the translation, each with the generation token taken before any structure was
//!    read, so a walk that began before an invalidation never inserts its result after that
//!    invalidation completed;
//! 5. the vendor's output check (VT-d: the interrupt address range) on every use, cached or not.
//!
//! A vendor supplies, through [`Vendor`], what differs: the fault a walker fault becomes (its
//! encodings depend on the mode and the stage), the fault of an atomic request to a page without
//! read permission, and its output check.

use iotlb::{Tag, Token};
use pagewalk::{
    Access as PwAccess, MemRef, PhysMem, RefKind, SecondStage, SecondStageStart, TableVisit,
    WalkConfig, WalkObserver, WalkStart, level_shift, walk_nested_cached,
};

use crate::cache::{FLAG_DIRTY_OK, PSC_MAX_LEVEL, PagingStructureCaches, PscEntry, TracedCache};
use crate::request::{AccessKind, AddressType, DmaRequest, Translation};
use crate::trace::{MemTarget, Stage, Trace, WalkKind};

/// What a unit's structure lookup decided for one request: how to walk it and how to tag
/// what the walk caches. `X` is the vendor's own context for its fault encodings.
#[derive(Debug, Clone, Copy)]
pub struct Walk<X> {
    /// The domain id cached translations are tagged with.
    pub did: u16,
    /// The PASID cached translations are tagged with (`None`: untagged). Second-stage
    /// paging-structure entries never carry it: they are PASID-independent, tagged with the
    /// domain alone (see `psc_tag`).
    pub pasid_tag: Option<u32>,
    /// The stage of a one-dimensional walk (a nested walk's is [`Stage::First`]).
    pub stage: Stage,
    /// The format of the first (or only) stage's tables.
    pub cfg: WalkConfig,
    /// Their root.
    pub root: u64,
    /// For a nested walk, the second stage's format and root: the first stage's table addresses
    /// and output are translated by it, each second-stage walk starting from the domain's
    /// cached second-stage entries.
    pub nested: Option<(WalkConfig, u64)>,
    /// The vendor's context (VT-d: the FPD bits read on the way, the mode).
    pub vendor: X,
}

/// What a vendor supplies to the engine (see the module notes).
pub trait Vendor {
    /// The vendor's context, carried in [`Walk::vendor`].
    type Ctx;
    /// The vendor's failure: its fault encoding plus whatever it needs to report it.
    type Fail;

    /// The failure a walker fault becomes: a one-dimensional walk's, or a nested walk's
    /// first-stage fault (`f.stage` is then [`pagewalk::Stage::First`]). `above` is what the
    /// non-leaf entries of the walked stage granted before the faulting entry.
    fn walk_fault(
        &self,
        w: &Walk<Self::Ctx>,
        access: PwAccess,
        above: pagewalk::Perms,
        f: &pagewalk::Fault,
    ) -> Self::Fail;

    /// The failure a second-stage fault inside a nested walk becomes (`f.nested` names the
    /// phase: a first-stage table's address, a first-stage A/D update, or the final output).
    fn nested_fault(
        &self,
        w: &Walk<Self::Ctx>,
        access: PwAccess,
        f: &pagewalk::Fault,
    ) -> Self::Fail;

    /// The failure of an atomic request to a page that grants write but not read.
    fn read_denied(&self, w: &Walk<Self::Ctx>) -> Self::Fail;

    /// Checks the translated output: `len` bytes of the request from `addr`. Runs on every
    /// translation, from the IOTLB or from a walk.
    fn check_output(
        &self,
        w: &Walk<Self::Ctx>,
        req: &DmaRequest,
        addr: u64,
        len: u64,
    ) -> Result<(), Self::Fail>;

    /// Whether `cfg`'s walks update accessed and dirty flags (a write then needs the leaf's
    /// dirty flag set before it may use a cached translation).
    fn ad_tracked(&self, cfg: &WalkConfig) -> bool {
        match cfg {
            WalkConfig::VtdFirstStage(c) | WalkConfig::AmdV2(c) => c.ad,
            WalkConfig::VtdSecondStage(c) => c.slade,
            WalkConfig::AmdV1(_) => false,
            // A format this engine does not know yet: assume it tracks A/D, which only costs a
            // walk (never a write through a translation whose dirty flag is unset).
            _ => true,
        }
    }
}

/// The generation tokens of the engine's caches: take them before reading any structure
/// (the unit's own structure caches take theirs at the same moment).
#[derive(Debug, Clone, Copy)]
pub struct Tokens {
    iotlb: Token,
    psc: [Token; PSC_MAX_LEVEL as usize - 1],
}

/// The engine over one unit's memory and its IOTLB and paging-structure caches.
#[derive(Debug)]
pub struct Engine<'a, M> {
    /// The memory the tables are read from.
    pub mem: &'a M,
    /// The IOTLB.
    pub iotlb: &'a TracedCache<iotlb::Translation>,
    /// The paging-structure caches.
    pub psc: &'a PagingStructureCaches,
}

/// The bytes of a request of `len` at `addr` (zero counts as one) inside its page of
/// 2^`shift` bytes.
#[inline]
pub fn covered_len(addr: u64, len: u64, shift: u8) -> u64 {
    let mask = (1u64 << shift.min(63)) - 1;
    let to_end = (addr | mask) - addr + 1;
    len.max(1).min(to_end)
}

/// Records the walker's memory references in the trace and keeps the non-leaf entries it
/// visited for the paging-structure caches: up to 8 of the walked stage's (a nested walk's
/// first stage), and up to `S` distinct second-stage ones of a nested walk's second-stage
/// walks (`S` is 0 for a one-dimensional walk).
struct Obs<'a, const S: usize> {
    trace: &'a mut Trace,
    /// The stage whose non-leaf entries are kept in `visits`.
    keep: Stage,
    visits: [TableVisit; 8],
    n: usize,
    /// A nested walk's second-stage entries, each once.
    ss_visits: [TableVisit; S],
    ss_n: usize,
}

/// Distinct second-stage non-leaf entries a nested walk can visit: `n + 1` second-stage walks
/// of `m - 1` non-leaf levels each, at most 24 for 5 levels over 5.
const NESTED_SS_VISITS: usize = 24;

impl<'a, const S: usize> Obs<'a, S> {
    fn new(trace: &'a mut Trace, keep: Stage) -> Self {
        Self {
            trace,
            keep,
            visits: [TableVisit::default(); 8],
            n: 0,
            ss_visits: [TableVisit::default(); S],
            ss_n: 0,
        }
    }

    /// The permissions accumulated by the kept stage's non-leaf entries this walk went
    /// through, starting from `start` (the root's, or a paging-structure-cache hit's).
    fn perms_above(&self, start: pagewalk::Perms) -> pagewalk::Perms {
        self.visits[..self.n]
            .iter()
            .rev()
            .find(|v| v.stage == self.keep)
            .map_or(start, |v| v.perms)
    }
}

impl<const S: usize> WalkObserver for Obs<'_, S> {
    fn mem_ref(&mut self, r: MemRef) {
        let target = MemTarget::PageTable {
            stage: r.stage,
            level: r.level,
        };
        match r.kind {
            RefKind::Read => self.trace.read(target, r.addr),
            RefKind::AdUpdate => self.trace.write(target, r.addr),
        }
    }
    fn table(&mut self, v: TableVisit) {
        if v.stage == self.keep {
            if let Some(slot) = self.visits.get_mut(self.n) {
                *slot = v;
                self.n += 1;
            }
            return;
        }
        // A nested walk's second-stage entry: the second-stage walks of neighbouring tables
        // go through the same upper entries, kept once.
        let seen = &self.ss_visits[..self.ss_n];
        if seen
            .iter()
            .any(|s| s.level == v.level && s.prefix == v.prefix)
        {
            return;
        }
        if let Some(slot) = self.ss_visits.get_mut(self.ss_n) {
            *slot = v;
            self.ss_n += 1;
        }
    }
}

/// Where each second-stage walk of a nested walk starts: the deepest second-stage
/// paging-structure-cache entry covering its guest-physical input, with the tags a
/// one-dimensional second-stage walk of the same domain uses ([`psc_tag`]).
struct SecondStagePsc<'e> {
    psc: &'e PagingStructureCaches,
    cfg: &'e WalkConfig,
    root: u64,
    did: u16,
}

impl<const S: usize> SecondStageStart<Obs<'_, S>> for SecondStagePsc<'_> {
    fn start(&mut self, obs: &mut Obs<'_, S>, gpa: u64) -> Option<WalkStart> {
        // An input beyond what the tables translate must not find another input's entry: it
        // walks from the root, which faults.
        if !self.cfg.input_in_range(gpa) {
            return None;
        }
        let start = psc_start(
            self.psc,
            self.cfg,
            self.root,
            self.did,
            None,
            iotlb::Stage::Second,
            tag_input(self.cfg, gpa),
            obs.trace,
        );
        Some(start)
    }
}

/// The widest input an x86-format (first-stage) table translates: 57 bits, 5-level paging.
pub const X86_TAG_INPUT_BITS: u8 = 57;

/// Input address bits a tag carries. First-stage addresses are sign-extended, and
/// software names them sign-extended in its invalidations (VT-d §6.5.2.4): their tags keep
/// the low 57 bits whatever the paging depth, which tells a 4-level table's upper and lower
/// halves apart (bits 56:47 are copies of bit 47) and lets an invalidation's address be
/// reduced the same way without knowing the depth ([`tag_address`]). Non-canonical inputs
/// never reach the tags (they go to the walk, which faults).
#[inline]
fn tag_input(cfg: &WalkConfig, addr: u64) -> u64 {
    let w = match cfg {
        WalkConfig::VtdFirstStage(_) | WalkConfig::AmdV2(_) => X86_TAG_INPUT_BITS,
        _ => cfg.input_width(),
    };
    if w >= 64 {
        addr
    } else {
        addr & ((1u64 << w) - 1)
    }
}

/// An invalidation's input address as the tags carry it: its low 57 bits, enough for every
/// input width a table translates (first-stage addresses sign-extended, see [`tag_input`]).
#[inline]
pub fn tag_address(addr: u64) -> u64 {
    addr & ((1u64 << X86_TAG_INPUT_BITS) - 1)
}

/// The cache-tag stage of a walk: the first-stage entries of a nested walk hold
/// guest-physical table addresses, so they are tagged with the nested stage and never serve a
/// first-stage-only walk.
fn tag_stage<X>(w: &Walk<X>) -> iotlb::Stage {
    match (w.nested, w.stage) {
        (Some(_), _) => iotlb::Stage::Nested,
        (None, Stage::First) => iotlb::Stage::First,
        (None, Stage::Second) => iotlb::Stage::Second,
    }
}

/// The tag of a paging-structure-cache entry of `stage` at `level` covering `input` (reduced
/// by [`tag_input`]). Second-stage entries are PASID-independent: they are tagged with the
/// domain alone (no PASID), so a one-dimensional second-stage walk and the second-stage walks
/// inside nested walks of the same domain share them (VT-d §6.2.5: in nested mode the PASID
/// entry's DID tags both stages' entries; AMD-Vi: the DTE's DomainID tags the host table's).
/// Invalidations that name the domain (any PASID) or a second-stage address range of it
/// reach them.
#[inline]
fn psc_tag(did: u16, pasid: Option<u32>, stage: iotlb::Stage, level: u8, input: u64) -> Tag {
    let pasid = if stage == iotlb::Stage::Second {
        None
    } else {
        pasid
    };
    let shift = level_shift(level);
    let page = (input >> shift) << (shift - 12);
    Tag::paging_structure(did, pasid, stage, level, page, shift - 12)
}

/// Where a walk of `cfg` rooted at `root` for `input` (reduced by [`tag_input`]) starts: the
/// deepest paging-structure-cache hit of the domain, or the root.
#[allow(clippy::too_many_arguments)]
fn psc_start(
    psc: &PagingStructureCaches,
    cfg: &WalkConfig,
    root: u64,
    did: u16,
    pasid: Option<u32>,
    stage: iotlb::Stage,
    input: u64,
    trace: &mut Trace,
) -> WalkStart {
    for level in 2..=cfg.levels() {
        let tag = psc_tag(did, pasid, stage, level, input);
        let Some(cache) = psc.level(level) else {
            break;
        };
        if let Some(e) = cache.lookup(&tag, trace) {
            // An entry that skips levels (AMD-Vi v1) translates only inputs whose index
            // bits of the skipped levels are zero; any other walks from the root, which
            // faults it.
            let skipped = ((1u64 << level_shift(level).min(63)) - 1)
                & !((1u64 << level_shift(e.next_level + 1).min(63)) - 1);
            if e.next_level >= 1 && e.next_level < level && input & skipped == 0 {
                return WalkStart {
                    level: e.next_level,
                    table: e.next_table,
                    perms: pagewalk::Perms::from_bits_truncate(e.perms),
                };
            }
            break;
        }
    }
    cfg.root_start(root)
}

/// Caches the non-leaf entries `visits` of `cfg`'s tables, tagged as [`psc_tag`] says.
#[allow(clippy::too_many_arguments)]
fn psc_fill(
    psc: &PagingStructureCaches,
    tokens: &Tokens,
    cfg: &WalkConfig,
    did: u16,
    pasid: Option<u32>,
    stage: iotlb::Stage,
    visits: &[TableVisit],
    trace: &mut Trace,
) {
    for t in visits {
        let tag = psc_tag(did, pasid, stage, t.level, tag_input(cfg, t.prefix));
        let (Some(cache), Some(token)) = (
            psc.level(t.level),
            tokens.psc.get(usize::from(t.level).wrapping_sub(2)),
        ) else {
            continue;
        };
        cache.insert(
            *token,
            &tag,
            &PscEntry {
                next_table: t.next_table,
                next_level: t.next_level,
                perms: t.perms.bits(),
            },
            trace,
        );
    }
}

impl<M: PhysMem> Engine<'_, M> {
    /// The engine caches' generation tokens (see [`Tokens`]).
    #[inline]
    pub fn tokens(&self) -> Tokens {
        Tokens {
            iotlb: self.iotlb.token(),
            psc: self.psc.tokens(),
        }
    }

    /// Translates `req` (walked as `access`) as `w` says: the IOTLB, then the
    /// paging-structure caches, then a one- or two-dimensional walk, then the fills (see the
    /// module notes).
    pub fn translate<V: Vendor>(
        &self,
        v: &V,
        w: &Walk<V::Ctx>,
        req: &DmaRequest,
        access: PwAccess,
        tokens: Tokens,
        trace: &mut Trace,
    ) -> Result<Translation, V::Fail> {
        // An atomic needs read permission as well as write; a translation request only asks
        // what the page allows.
        let needs_read = req.access == AccessKind::Atomic && req.at == AddressType::Untranslated;
        let input = tag_input(&w.cfg, req.addr);
        // Tags keep only the bits the tables translate: an input beyond them (too wide, or not
        // canonical) must not find another input's entry. It goes to the walk, which faults.
        let in_range = w.cfg.input_in_range(req.addr);
        let itag = Tag::translation(w.did, w.pasid_tag, input >> 12, 0);
        if in_range && let Some(hit) = self.iotlb_hit(v, w, req, access, needs_read, &itag, trace) {
            return hit;
        }
        let stage = tag_stage(w);
        let start = if in_range {
            psc_start(
                self.psc,
                &w.cfg,
                w.root,
                w.did,
                w.pasid_tag,
                stage,
                input,
                trace,
            )
        } else {
            w.cfg.root_start(w.root)
        };
        // The walked stage's non-leaf entries.
        let fill = |visits: &[TableVisit], trace: &mut Trace| {
            psc_fill(
                self.psc,
                &tokens,
                &w.cfg,
                w.did,
                w.pasid_tag,
                stage,
                visits,
                trace,
            );
        };
        let (res, above) = match w.nested {
            None => {
                trace.walk_start(WalkKind::OneD(w.stage), start.level);
                let mut obs = Obs::<0>::new(trace, w.stage);
                let res = pagewalk::walk_from(&w.cfg, self.mem, start, req.addr, access, &mut obs)
                    .map(|t| (t.output, t.page_shift, t.perms));
                obs.trace.walk_end(res.is_err());
                fill(&obs.visits[..obs.n], obs.trace);
                (res, obs.perms_above(start.perms))
            }
            Some((ss, ssptr)) => {
                let second = SecondStage::Tables {
                    config: ss,
                    root: ssptr,
                };
                trace.walk_start(WalkKind::Nested, start.level);
                let mut obs = Obs::<NESTED_SS_VISITS>::new(trace, Stage::First);
                let mut ss_start = SecondStagePsc {
                    psc: self.psc,
                    cfg: &ss,
                    root: ssptr,
                    did: w.did,
                };
                let res = walk_nested_cached(
                    &w.cfg,
                    start,
                    &second,
                    self.mem,
                    req.addr,
                    access,
                    &mut obs,
                    &mut ss_start,
                )
                .map(|t| (t.output, t.page_shift, t.perms));
                obs.trace.walk_end(res.is_err());
                fill(&obs.visits[..obs.n], obs.trace);
                // The second-stage entries, tagged as the domain's one-dimensional
                // second-stage walks tag theirs.
                psc_fill(
                    self.psc,
                    &tokens,
                    &ss,
                    w.did,
                    None,
                    iotlb::Stage::Second,
                    &obs.ss_visits[..obs.ss_n],
                    obs.trace,
                );
                (res, obs.perms_above(start.perms))
            }
        };
        let (output, shift, perms) = match res {
            Ok(t) => t,
            Err(f) if w.nested.is_some() && f.stage == Stage::Second => {
                return Err(v.nested_fault(w, access, &f));
            }
            Err(f) => return Err(v.walk_fault(w, access, above, &f)),
        };
        if needs_read && !perms.read() {
            return Err(v.read_denied(w));
        }
        let page = (input >> shift) << (shift - 12);
        // A write has set the leaf's dirty flag; a read leaves it as it was, so a later write
        // must walk again unless the stage tracks nothing.
        let dirty_ok = access.is_write() || (w.nested.is_none() && !v.ad_tracked(&w.cfg));
        self.iotlb.insert(
            tokens.iotlb,
            &Tag::translation(w.did, w.pasid_tag, page, shift - 12),
            &iotlb::Translation {
                output: output & !((1u64 << shift) - 1),
                page_shift: shift,
                perms,
                flags: if dirty_ok { FLAG_DIRTY_OK } else { 0 },
            },
            trace,
        );
        self.output(v, w, req, output, shift, perms)
    }

    /// The IOTLB's answer for `req`, when it holds an entry for `itag` that allows the access.
    /// A cached entry that does not allow it (or whose dirty flag still has to be set) is not
    /// trusted: `None` sends the caller to the walk, which decides.
    #[allow(clippy::too_many_arguments)]
    fn iotlb_hit<V: Vendor>(
        &self,
        v: &V,
        w: &Walk<V::Ctx>,
        req: &DmaRequest,
        access: PwAccess,
        needs_read: bool,
        itag: &Tag,
        trace: &mut Trace,
    ) -> Option<Result<Translation, V::Fail>> {
        let c = self.iotlb.lookup(itag, trace)?;
        let perms = c.perms;
        let usable = w.cfg.permits(perms, access)
            && (!needs_read || perms.read())
            && (!access.is_write() || c.flags & FLAG_DIRTY_OK != 0);
        usable.then(|| {
            let mask = (1u64 << c.page_shift.min(63)) - 1;
            self.output(v, w, req, c.output | (req.addr & mask), c.page_shift, perms)
        })
    }

    /// Translates the guest-physical address `addr` of a structure the unit reads (AMD-Vi: a
    /// GCR3 table under host translation) through the second-stage tables `cfg` at `root`, as
    /// a read, recording the walk in `trace`. Structure addresses are not cached.
    pub fn walk_structure_address(
        &self,
        cfg: &WalkConfig,
        root: u64,
        addr: u64,
        trace: &mut Trace,
    ) -> Result<u64, pagewalk::Fault> {
        trace.walk_start(WalkKind::OneD(Stage::Second), cfg.levels());
        // Keep nothing: the observer keeps only first-stage visits.
        let mut obs = Obs::<0>::new(trace, Stage::First);
        let res = pagewalk::walk(cfg, self.mem, root, addr, PwAccess::READ, &mut obs);
        obs.trace.walk_end(res.is_err());
        res.map(|t| t.output)
    }

    /// The translation of `req` to `addr` in a page of 2^`shift` bytes, after the vendor's
    /// output check.
    fn output<V: Vendor>(
        &self,
        v: &V,
        w: &Walk<V::Ctx>,
        req: &DmaRequest,
        addr: u64,
        shift: u8,
        perms: pagewalk::Perms,
    ) -> Result<Translation, V::Fail> {
        let len = covered_len(req.addr, req.len, shift);
        v.check_output(w, req, addr, len)?;
        Ok(Translation {
            addr,
            len,
            page_shift: shift,
            perms,
            domain_id: w.did,
            identity: false,
        })
    }
}

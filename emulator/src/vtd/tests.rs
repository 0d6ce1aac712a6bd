//! A test-side driver that programs the unit only through its registers and memory, as a guest
//! driver would, and the tests built on it.

use std::sync::{Arc, Mutex};

use pagewalk::{
    BumpAllocator, FrameAllocator, PageSizePolicy, Perms as PwPerms, SparseMem, TableBuilder,
    VtdSsConfig, WalkConfig, X86Config,
};
use proptest::prelude::*;

use super::regs::*;
use super::*;
use crate::request::{AccessKind, AddressType, DmaRequest, FaultKind, Translation};
use crate::trace::{CacheId, MemTarget, Stage, TraceEvent};

const MEM: u64 = 1 << 32;
const TABLES: (u64, u64) = (0x0100_0000, 0x0800_0000);

/// Drives a [`Vtd`] the way a guest driver does.
struct Driver {
    vtd: Vtd<&'static SparseMem>,
    mem: &'static SparseMem,
    alloc: BumpAllocator,
    events: Arc<Mutex<Vec<VtdEvent>>>,
    /// Persistent GCMD bits (TE, QIE), as Linux keeps them.
    gcmd: u32,
    root: u64,
    scalable: bool,
    iq: u64,
    iq_tail: u64,
    wide: bool,
    status: u64,
    status_seq: u32,
}

fn sid(bus: u16, dev: u16, func: u16) -> u16 {
    (bus << 8) | (dev << 3) | func
}

impl Driver {
    fn new(cfg: VtdConfig) -> Self {
        let mem: &'static SparseMem = Box::leak(Box::new(SparseMem::new(MEM)));
        let events = Arc::new(Mutex::new(Vec::new()));
        let ev = events.clone();
        let vtd = Vtd::new(mem, cfg, Box::new(move |e| ev.lock().unwrap().push(e))).unwrap();
        let mut d = Self {
            vtd,
            mem,
            alloc: BumpAllocator::new(TABLES.0, TABLES.1),
            events,
            gcmd: 0,
            root: 0,
            scalable: false,
            iq: 0,
            iq_tail: 0,
            wide: false,
            status: 0,
            status_seq: 0,
        };
        d.status = d.frame();
        d
    }

    fn legacy() -> Self {
        let mut d = Self::new(VtdConfig::default());
        d.set_root(false);
        d
    }

    fn frame(&mut self) -> u64 {
        let f = self.alloc.alloc_frame().expect("table memory");
        for i in 0..512 {
            self.mem.write_u64(f + i * 8, 0).unwrap();
        }
        f
    }

    fn r32(&self, off: u64) -> u32 {
        self.vtd.mmio_read(off, 4) as u32
    }
    fn r64(&self, off: u64) -> u64 {
        self.vtd.mmio_read(off, 8)
    }
    fn w32(&self, off: u64, v: u32) {
        self.vtd.mmio_write(off, 4, u64::from(v));
    }
    fn w64(&self, off: u64, v: u64) {
        self.vtd.mmio_write(off, 8, v);
    }

    /// One GCMD command on top of the persistent state, then waits for GSTS to follow.
    fn gcmd(&mut self, cmd: u32, persistent: bool, on: bool) {
        if persistent {
            if on {
                self.gcmd |= cmd;
            } else {
                self.gcmd &= !cmd;
            }
            self.w32(GCMD_REG, self.gcmd);
            assert_eq!(self.r32(GSTS_REG) & cmd != 0, on, "GSTS follows {cmd:#x}");
        } else {
            self.w32(GCMD_REG, self.gcmd | cmd);
            assert_ne!(
                self.r32(GSTS_REG) & cmd,
                0,
                "GSTS status of one-shot {cmd:#x}"
            );
        }
    }

    fn set_root(&mut self, scalable: bool) {
        self.root = self.frame();
        self.scalable = scalable;
        let ttm = if scalable { TTM_SCALABLE } else { TTM_LEGACY };
        self.w64(RTADDR_REG, self.root | (ttm << RTADDR_TTM_SHIFT));
        self.gcmd(GCMD_SRTP, false, true);
    }

    fn enable_translation(&mut self) {
        self.gcmd(GCMD_TE, true, true);
    }

    fn enable_qi(&mut self, wide: bool) {
        self.iq = self.frame();
        self.wide = wide;
        self.w64(IQT_REG, 0);
        self.iq_tail = 0;
        self.w64(IQA_REG, self.iq | if wide { IQA_DW } else { 0 });
        self.gcmd(GCMD_QIE, true, true);
        assert_eq!(self.r64(IQH_REG), 0);
    }

    /// Writes descriptors at the tail and moves IQT past them.
    fn submit(&mut self, descs: &[[u64; 2]]) {
        let size = if self.wide { 32 } else { 16 };
        for d in descs {
            let at = self.iq + self.iq_tail;
            self.mem.write_u64(at, d[0]).unwrap();
            self.mem.write_u64(at + 8, d[1]).unwrap();
            if self.wide {
                self.mem.write_u64(at + 16, 0).unwrap();
                self.mem.write_u64(at + 24, 0).unwrap();
            }
            self.iq_tail = (self.iq_tail + size) % 4096;
        }
        self.w64(IQT_REG, self.iq_tail);
    }

    /// Submits `descs` followed by a status-writing wait descriptor and checks the status.
    fn submit_and_wait(&mut self, descs: &[[u64; 2]]) {
        self.status_seq += 1;
        let mut v = descs.to_vec();
        v.push(wait_desc(false, true, self.status_seq, self.status));
        self.submit(&v);
        assert_eq!(self.r32(FSTS_REG) & FSTS_IQE, 0, "no queue error");
        assert_eq!(self.mem.read_u32(self.status).unwrap(), self.status_seq);
        assert_eq!(self.r64(IQH_REG), self.iq_tail);
    }

    fn context_table(&mut self, bus: u64) -> u64 {
        let re = self.root + bus * 16;
        let lo = self.mem.read_u64(re).unwrap();
        if lo & 1 != 0 {
            return lo & !0xfff;
        }
        let ct = self.frame();
        self.mem.write_u64(re, ct | 1).unwrap();
        ct
    }

    /// Writes a legacy context entry (upper half first, present bit last).
    fn legacy_context(&mut self, sid: u16, lo: u64, hi: u64) {
        let ct = self.context_table(u64::from(sid >> 8));
        let at = ct + u64::from(sid & 0xff) * 16;
        self.mem.write_u64(at, 0).unwrap();
        self.mem.write_u64(at + 8, hi).unwrap();
        self.mem.write_u64(at, lo).unwrap();
    }

    fn ss_domain(&mut self, aw: u8) -> TableBuilder {
        let levels = VtdSsConfig::levels_for_aw(aw).unwrap();
        TableBuilder::new(
            WalkConfig::VtdSecondStage(VtdSsConfig::new(levels).with_haw(48)),
            self.mem,
            &mut self.alloc,
        )
        .unwrap()
    }

    /// A legacy device `sid` in domain `did` translated by `tables` (AW = 2, 4-level).
    fn attach_legacy(&mut self, sid: u16, did: u16, tables: &TableBuilder) {
        self.legacy_context(sid, tables.root() | 1, 2 | (u64::from(did) << 8));
    }

    fn map(&mut self, t: &mut TableBuilder, iova: u64, phys: u64, len: u64, perms: PwPerms) {
        t.map(
            self.mem,
            &mut self.alloc,
            iova,
            phys,
            len,
            perms,
            PageSizePolicy::Fixed(12),
        )
        .unwrap();
    }

    fn unmap(&mut self, t: &mut TableBuilder, iova: u64, len: u64) {
        t.unmap(self.mem, &mut self.alloc, iova, len).unwrap();
    }

    fn translate(&self, req: DmaRequest) -> Result<Translation, crate::request::Fault> {
        self.vtd.translate(&req).0
    }

    fn read(&self, sid: u16, addr: u64) -> Result<u64, crate::request::Fault> {
        self.translate(DmaRequest::new(sid, addr, 4, AccessKind::Read))
            .map(|t| t.addr)
    }

    fn write(&self, sid: u16, addr: u64) -> Result<u64, crate::request::Fault> {
        self.translate(DmaRequest::new(sid, addr, 4, AccessKind::Write))
            .map(|t| t.addr)
    }

    fn frcd(&self, i: u64) -> [u64; 2] {
        let base = u64::from(self.vtd.config().fro) + i * 16;
        [self.r64(base), self.r64(base + 8)]
    }

    fn clear_frcd(&self, i: u64) {
        let base = u64::from(self.vtd.config().fro) + i * 16;
        self.w32(base + 12, (FRCD_F >> 32) as u32);
    }

    fn take_events(&self) -> Vec<VtdEvent> {
        std::mem::take(&mut *self.events.lock().unwrap())
    }

    // --------------------------------------------------------------- scalable mode

    fn sm_context_table(&mut self, sid: u16) -> u64 {
        let upper = sid & 0x80 != 0;
        let re = self.root + u64::from(sid >> 8) * 16 + if upper { 8 } else { 0 };
        let q = self.mem.read_u64(re).unwrap();
        if q & 1 != 0 {
            return q & !0xfff;
        }
        let ct = self.frame();
        self.mem.write_u64(re, ct | 1).unwrap();
        ct
    }

    /// A scalable-mode context entry with a PASID directory of 2^(PDTS+7) entries; returns the
    /// directory.
    fn sm_context(&mut self, sid: u16, pdts: u64, paside: bool, rid_pasid: u32) -> u64 {
        let ct = self.sm_context_table(sid);
        let dir = self.frame();
        let at = ct + u64::from(sid & 0x7f) * 32;
        for i in 0..4 {
            self.mem.write_u64(at + 8 * i, 0).unwrap();
        }
        self.mem.write_u64(at + 8, u64::from(rid_pasid)).unwrap();
        self.mem
            .write_u64(at, dir | (pdts << 9) | (u64::from(paside) << 3) | 1)
            .unwrap();
        dir
    }

    /// Writes the PASID-table entry of `pasid` under directory `dir`.
    fn pasid_entry(&mut self, dir: u64, pasid: u32, qw: [u64; 3]) {
        let de = dir + u64::from(pasid >> 6) * 8;
        let d = self.mem.read_u64(de).unwrap();
        let table = if d & 1 != 0 {
            d & !0xfff
        } else {
            let t = self.frame();
            self.mem.write_u64(de, t | 1).unwrap();
            t
        };
        let at = table + u64::from(pasid & 0x3f) * 64;
        for i in 0..8 {
            self.mem.write_u64(at + 8 * i, 0).unwrap();
        }
        self.mem.write_u64(at + 8, qw[1]).unwrap();
        self.mem.write_u64(at + 16, qw[2]).unwrap();
        self.mem.write_u64(at, qw[0]).unwrap();
    }

    fn fs_domain(&mut self) -> TableBuilder {
        let mut c = X86Config::vtd_first_stage(4);
        c.out_width = 48;
        c.sre = true;
        TableBuilder::new(WalkConfig::VtdFirstStage(c), self.mem, &mut self.alloc).unwrap()
    }
}

// Descriptor builders (§6.5.2), independent of the decoder under test.
fn cc_global() -> [u64; 2] {
    [0x1 | (1 << 4), 0]
}
fn cc_domain(did: u16) -> [u64; 2] {
    [0x1 | (2 << 4) | (u64::from(did) << 16), 0]
}
fn cc_device(did: u16, sid: u16, fm: u8) -> [u64; 2] {
    [
        0x1 | (3 << 4) | (u64::from(did) << 16) | (u64::from(sid) << 32) | (u64::from(fm) << 48),
        0,
    ]
}
fn iotlb_global() -> [u64; 2] {
    [0x2 | (1 << 4), 0]
}
fn iotlb_domain(did: u16) -> [u64; 2] {
    [0x2 | (2 << 4) | (u64::from(did) << 16), 0]
}
fn iotlb_page(did: u16, addr: u64, am: u8, ih: bool) -> [u64; 2] {
    [
        0x2 | (3 << 4) | (u64::from(did) << 16),
        addr | u64::from(am) | (u64::from(ih) << 6),
    ]
}
fn pc_pasid(did: u16, pasid: u32) -> [u64; 2] {
    [
        0x7 | (1 << 4) | (u64::from(did) << 16) | (u64::from(pasid) << 32),
        0,
    ]
}
fn pc_domain(did: u16) -> [u64; 2] {
    [0x7 | (u64::from(did) << 16), 0]
}
fn piotlb_pasid(did: u16, pasid: u32) -> [u64; 2] {
    [
        0x6 | (2 << 4) | (u64::from(did) << 16) | (u64::from(pasid) << 32),
        0,
    ]
}
fn piotlb_page(did: u16, pasid: u32, addr: u64, am: u8) -> [u64; 2] {
    [
        0x6 | (3 << 4) | (u64::from(did) << 16) | (u64::from(pasid) << 32),
        addr | u64::from(am),
    ]
}
fn wait_desc(interrupt: bool, sw: bool, data: u32, addr: u64) -> [u64; 2] {
    [
        0x5 | (u64::from(interrupt) << 4) | (u64::from(sw) << 5) | (u64::from(data) << 32),
        addr,
    ]
}

const RW: PwPerms = PwPerms::RW;
const R: PwPerms = PwPerms::R;

// ------------------------------------------------------------------------ registers

#[test]
fn registers_report_version_and_capabilities() {
    let d = Driver::new(VtdConfig::default());
    let cfg = VtdConfig::default();
    assert_eq!(d.r32(VER_REG), 0x60);
    assert_eq!(d.r64(CAP_REG), cfg.cap());
    assert_eq!(d.r64(ECAP_REG), cfg.ecap());
    assert_eq!(u64::from(d.r32(CAP_REG)), cfg.cap() & 0xffff_ffff);
    assert_eq!(u64::from(d.r32(CAP_REG + 4)), cfg.cap() >> 32);
    // Read-only registers ignore writes.
    d.w64(CAP_REG, 0);
    d.w64(ECAP_REG, 0);
    d.w32(VER_REG, 0);
    d.w32(GSTS_REG, 0xffff_ffff);
    assert_eq!(d.r64(CAP_REG), cfg.cap());
    assert_eq!(d.r32(GSTS_REG), 0);
    // GCMD reads as zero.
    assert_eq!(d.r32(GCMD_REG), 0);
    // FECTL and IECTL come out of reset masked.
    assert_eq!(d.r32(FECTL_REG), CTL_IM);
    assert_eq!(d.r32(IECTL_REG), CTL_IM);
}

#[test]
fn bad_mmio_accesses_are_ignored() {
    let d = Driver::new(VtdConfig::default());
    for (off, size) in [
        (0x21, 4),
        (0x22, 8),
        (0x20, 2),
        (0x20, 16),
        (0x20, 0),
        (0xfffc, 4),
    ] {
        assert_eq!(d.vtd.mmio_read(off, size), 0);
        d.vtd.mmio_write(off, size, u64::MAX);
    }
    d.vtd.mmio_write(u64::MAX - 3, 4, 1);
    assert_eq!(d.vtd.mmio_read(u64::MAX - 7, 8), 0);
    assert_eq!(d.r64(RTADDR_REG), 0);
    assert_eq!(d.r32(GSTS_REG), 0);
    // An unimplemented offset inside the register page reads zero.
    assert_eq!(d.r32(0x200), 0);
}

#[test]
fn global_command_status_follows_each_command() {
    let mut d = Driver::new(VtdConfig::default());
    d.w64(RTADDR_REG, 0x12_3000 | (1 << 10) | 0x3ff);
    // Reserved bits 9:0 are not kept.
    assert_eq!(d.r64(RTADDR_REG), 0x12_3000 | (1 << 10));
    d.gcmd(GCMD_SRTP, false, true);
    d.gcmd(GCMD_TE, true, true);
    d.enable_qi(false);
    assert_eq!(d.r32(GSTS_REG), GCMD_TE | GCMD_SRTP | GCMD_QIE);
    // Write-buffer flush completes at once.
    d.w32(GCMD_REG, d.gcmd | GCMD_WBF);
    assert_eq!(d.r32(GSTS_REG) & GCMD_WBF, 0);
    d.gcmd(GCMD_QIE, true, false);
    d.gcmd(GCMD_TE, true, false);
    assert_eq!(d.r32(GSTS_REG) & (GCMD_TE | GCMD_QIE), 0);
    // 32-bit halves of a 64-bit register.
    d.w32(RTADDR_REG, 0x4000);
    d.w32(RTADDR_REG + 4, 0x1);
    assert_eq!(d.r64(RTADDR_REG), 0x1_0000_4000);
}

#[test]
fn translation_disabled_passes_dma_through() {
    let d = Driver::new(VtdConfig::default());
    let t = d
        .translate(DmaRequest::new(0x10, 0xdead_b000, 8, AccessKind::Write))
        .unwrap();
    assert!(t.identity);
    assert_eq!(t.addr, 0xdead_b000);
}

// ---------------------------------------------------------- legacy-mode translation

fn legacy_with_domain() -> (Driver, TableBuilder, u16) {
    let mut d = Driver::legacy();
    let mut t = d.ss_domain(2);
    let dev = sid(0, 3, 0);
    d.map(&mut t, 0x10_0000, 0x9000_0000, 0x4000, RW);
    d.map(&mut t, 0x20_0000, 0x9100_0000, 0x1000, R);
    d.attach_legacy(dev, 5, &t);
    d.enable_translation();
    (d, t, dev)
}

#[test]
fn legacy_translation_walks_root_context_and_second_stage() {
    let (d, _t, dev) = legacy_with_domain();
    let (r, trace) = d
        .vtd
        .translate(&DmaRequest::new(dev, 0x10_1234, 8, AccessKind::Read));
    let t = r.unwrap();
    assert_eq!(t.addr, 0x9000_1234);
    assert_eq!(t.len, 8);
    assert_eq!(t.page_shift, 12);
    assert_eq!(t.domain_id, 5);
    assert!(t.perms.read() && t.perms.write());
    assert!(!t.identity);
    // Context-cache miss, then the root and context entries, the IOTLB miss and four
    // second-stage reads from level 4 down to 1.
    assert_eq!(trace.lookup(CacheId::Context), Some(false));
    assert_eq!(trace.lookup(CacheId::Iotlb), Some(false));
    let reads: Vec<MemTarget> = trace
        .events()
        .iter()
        .filter_map(|e| match e {
            TraceEvent::MemRead { target, .. } => Some(*target),
            _ => None,
        })
        .collect();
    let pt = |level| MemTarget::PageTable {
        stage: Stage::Second,
        level,
    };
    assert_eq!(
        reads,
        vec![
            MemTarget::RootEntry,
            MemTarget::ContextEntry,
            pt(4),
            pt(3),
            pt(2),
            pt(1)
        ]
    );
    // Writes, and a request crossing the page end is covered up to the end.
    let w = d
        .translate(DmaRequest::new(dev, 0x10_2ff8, 16, AccessKind::Write))
        .unwrap();
    assert_eq!(w.addr, 0x9000_2ff8);
    assert_eq!(w.len, 8);
    // A second read of the same page hits the context cache and the IOTLB: no memory reads.
    let (r2, trace2) = d
        .vtd
        .translate(&DmaRequest::new(dev, 0x10_1000, 4, AccessKind::Read));
    assert_eq!(r2.unwrap().addr, 0x9000_1000);
    assert_eq!(trace2.lookup(CacheId::Context), Some(true));
    assert_eq!(trace2.lookup(CacheId::Iotlb), Some(true));
    assert_eq!(trace2.mem_reads(), 0);
}

#[test]
fn paging_structure_cache_shortens_walks_of_neighbouring_pages() {
    let (d, _t, dev) = legacy_with_domain();
    d.read(dev, 0x10_0000).unwrap();
    let (r, trace) = d
        .vtd
        .translate(&DmaRequest::new(dev, 0x10_3000, 4, AccessKind::Read));
    assert_eq!(r.unwrap().addr, 0x9000_3000);
    assert_eq!(
        trace.lookup(CacheId::PagingStructure {
            stage: Stage::Second,
            level: 2
        }),
        Some(true)
    );
    assert_eq!(trace.mem_reads(), 1, "only the leaf table is read");
}

#[test]
fn legacy_pass_through_and_translation_types() {
    let mut d = Driver::legacy();
    let pt = sid(1, 0, 0);
    d.legacy_context(pt, (2 << 2) | 1, 7 << 8);
    d.enable_translation();
    let t = d
        .translate(DmaRequest::new(pt, 0x1234_5678, 4, AccessKind::Write))
        .unwrap();
    assert!(t.identity);
    assert_eq!(t.addr, 0x1234_5678);
    assert_eq!(t.domain_id, 7);
    // Untranslated-only context: an ATS translation request is blocked (LCT.5).
    let mut tables = d.ss_domain(2);
    d.map(&mut tables, 0, 0x5000_0000, 0x1000, RW);
    let dev = sid(1, 1, 0);
    d.attach_legacy(dev, 3, &tables);
    let mut ats = DmaRequest::new(dev, 0, 4, AccessKind::Read);
    ats.at = AddressType::TranslationRequest;
    let f = d.translate(ats).unwrap_err();
    assert_eq!(f.code, 0xd);
    // Device-TLB context: translation requests are translated, and answered with the page's
    // permissions; an unmapped page is an R = W = 0 completion, not a recorded fault.
    let dtlb = sid(1, 2, 0);
    d.map(&mut tables, 0x1000, 0x5000_1000, 0x1000, R);
    d.legacy_context(dtlb, tables.root() | (1 << 2) | 1, 2 | (3 << 8));
    ats.source_id = dtlb;
    assert_eq!(d.translate(ats).unwrap().addr, 0x5000_0000);
    ats.addr = 0x1000;
    ats.access = AccessKind::Write;
    let ro = d.translate(ats).unwrap();
    assert_eq!(ro.addr, 0x5000_1000);
    assert!(ro.perms.read() && !ro.perms.write());
    ats.addr = 0x8000;
    let fsts = d.r32(FSTS_REG);
    let none = d.translate(ats).unwrap();
    assert!(!none.perms.read() && !none.perms.write());
    assert_eq!(d.r32(FSTS_REG), fsts, "nothing recorded");
}

#[test]
fn legacy_faults_carry_the_spec_reasons_and_are_recorded() {
    let (mut d, mut t, dev) = legacy_with_domain();
    let cases: Vec<(DmaRequest, u16)> = vec![
        // Root entry of bus 9 not present.
        (DmaRequest::new(sid(9, 0, 0), 0, 4, AccessKind::Read), 0x1),
        // Context entry not present.
        (DmaRequest::new(sid(0, 4, 0), 0, 4, AccessKind::Read), 0x2),
        // Beyond the 48-bit AGAW.
        (DmaRequest::new(dev, 1 << 48, 4, AccessKind::Read), 0x4),
        // Write to a read-only page.
        (DmaRequest::new(dev, 0x20_0000, 4, AccessKind::Write), 0x5),
        // Read of an unmapped page.
        (DmaRequest::new(dev, 0x30_0000, 4, AccessKind::Read), 0x6),
        // Request with PASID in legacy mode.
        (
            DmaRequest::new(dev, 0, 4, AccessKind::Read).with_pasid(1),
            0x31,
        ),
    ];
    for (i, (req, code)) in cases.iter().enumerate() {
        let f = d.translate(*req).unwrap_err();
        assert_eq!(f.code, *code, "case {i}");
        assert!(f.recorded, "case {i}");
    }
    // The first six faults went to FRCD 0..=5, in order, with their fields.
    for (i, (req, code)) in cases.iter().enumerate() {
        let [lo, hi] = d.frcd(i as u64);
        assert_eq!(lo, req.addr & !0xfff, "FI of record {i}");
        assert_eq!(hi & 0xffff, u64::from(req.source_id));
        assert_eq!((hi >> 32) & 0xff, u64::from(*code));
        assert_ne!(hi & FRCD_F, 0);
        let read = req.access == AccessKind::Read;
        assert_eq!(hi & FRCD_T1 != 0, read, "T1 of record {i}");
        assert_eq!(hi & FRCD_PP != 0, req.pasid.is_some());
    }
    let fsts = d.r32(FSTS_REG);
    assert_ne!(fsts & FSTS_PPF, 0);
    assert_eq!((fsts >> 8) & 0xff, 0, "FRI names the first pending record");
    // Reserved and invalid entries.
    d.legacy_context(sid(0, 5, 0), t.root() | 1 | 0x10, 2 | (5 << 8));
    assert_eq!(d.read(sid(0, 5, 0), 0).unwrap_err().code, 0xb);
    d.legacy_context(sid(0, 6, 0), t.root() | 1, 3 | (5 << 8)); // AW=3 not in SAGAW
    assert_eq!(d.read(sid(0, 6, 0), 0).unwrap_err().code, 0x3);
    d.mem
        .write_u64(d.root + 3 * 16, 0x5000 | 1 | 0x100)
        .unwrap();
    assert_eq!(d.read(sid(3, 0, 0), 0).unwrap_err().code, 0xa);
    // A second-stage entry with a reserved bit (bit 7 in a 4 KiB leaf is not PS... use bit 62).
    d.map(&mut t, 0x40_0000, 0x9200_0000, 0x1000, RW);
    let leaf = {
        let mut tr = pagewalk::RecordingTrace::<16>::new();
        pagewalk::walk(
            t.config(),
            d.mem,
            t.root(),
            0x40_0000,
            pagewalk::Access::READ,
            &mut tr,
        )
        .unwrap()
        .entry_addr
    };
    let e = d.mem.read_u64(leaf).unwrap();
    d.mem.write_u64(leaf, e | (1 << 62)).unwrap();
    assert_eq!(d.read(dev, 0x40_0000).unwrap_err().code, 0xc);
    // A context entry pointing outside memory: second-stage access error.
    d.legacy_context(sid(0, 7, 0), (MEM + 0x1000) | 1, 2 | (6 << 8));
    assert_eq!(d.read(sid(0, 7, 0), 0).unwrap_err().code, 0x7);
    // A root entry pointing outside memory: context-entry access error.
    d.mem
        .write_u64(d.root + 4 * 16, (MEM + 0x2000) | 1)
        .unwrap();
    assert_eq!(d.read(sid(4, 0, 0), 0).unwrap_err().code, 0x9);
}

#[test]
fn root_table_outside_memory_is_a_root_access_error() {
    let mut d = Driver::new(VtdConfig::default());
    d.w64(RTADDR_REG, MEM + 0x10_0000);
    d.gcmd(GCMD_SRTP, false, true);
    d.enable_translation();
    let f = d.read(0x100, 0).unwrap_err();
    assert_eq!(f.code, 0x8);
    assert_eq!(f.kind, FaultKind::MemoryAccess);
    // TTM = 10b is reserved.
    d.w64(RTADDR_REG, d.status | (2 << 10));
    d.gcmd(GCMD_SRTP, false, true);
    assert_eq!(d.read(0x100, 0).unwrap_err().code, 0x30);
}

#[test]
fn fault_processing_disable_suppresses_recording() {
    let mut d = Driver::legacy();
    let t = d.ss_domain(2);
    let dev = sid(0, 1, 0);
    d.legacy_context(dev, t.root() | 1 | 2, 2 | (1 << 8)); // FPD
    d.enable_translation();
    let f = d.read(dev, 0x1000).unwrap_err();
    assert_eq!(f.code, 0x6);
    assert!(!f.recorded);
    assert_eq!(d.r32(FSTS_REG) & FSTS_PPF, 0);
    assert_eq!(d.frcd(0)[1] & FRCD_F, 0);
}

#[test]
fn fault_overflow_and_clearing() {
    let cfg = VtdConfig {
        nfr: 2,
        ..VtdConfig::default()
    };
    let mut d = Driver::new(cfg);
    d.set_root(false);
    d.enable_translation();
    d.w32(FECTL_REG, 0); // unmask
    d.w32(FEDATA_REG, 0x41);
    d.w32(FEADDR_REG, 0xfee0_0000);
    let bad = |bus| sid(bus, 0, 0);
    assert!(d.read(bad(1), 0x1000).unwrap_err().recorded);
    // One event for the first fault; none for the second while PPF is pending.
    assert!(d.read(bad(2), 0x2000).unwrap_err().recorded);
    assert_eq!(
        d.take_events(),
        vec![VtdEvent::Fault {
            addr: 0xfee0_0000,
            data: 0x41
        }]
    );
    // Both registers full: the third fault overflows.
    assert!(!d.read(bad(3), 0x3000).unwrap_err().recorded);
    assert_ne!(d.r32(FSTS_REG) & FSTS_PFO, 0);
    assert!(d.take_events().is_empty());
    // Clearing F of record 0 keeps PPF (record 1 is pending); PFO still blocks recording.
    d.clear_frcd(0);
    assert_eq!(d.frcd(0)[1] & FRCD_F, 0);
    assert_ne!(d.r32(FSTS_REG) & FSTS_PPF, 0);
    assert!(!d.read(bad(4), 0x4000).unwrap_err().recorded);
    d.clear_frcd(1);
    d.w32(FSTS_REG, FSTS_PFO);
    assert_eq!(d.r32(FSTS_REG) & (FSTS_PPF | FSTS_PFO), 0);
    // Recording resumes at the next register in turn (index 0 after wrapping).
    assert!(d.read(bad(5), 0x5000).unwrap_err().recorded);
    assert_eq!(d.frcd(0)[1] & 0xffff, u64::from(bad(5)));
    assert_eq!(d.take_events().len(), 1);
}

#[test]
fn masked_fault_event_is_pending_until_unmasked() {
    let mut d = Driver::legacy();
    d.enable_translation();
    d.w32(FEDATA_REG, 7);
    d.read(sid(1, 0, 0), 0).unwrap_err();
    assert!(d.take_events().is_empty());
    assert_ne!(d.r32(FECTL_REG) & CTL_IP, 0);
    d.w32(FECTL_REG, 0);
    assert_eq!(d.take_events(), vec![VtdEvent::Fault { addr: 0, data: 7 }]);
    assert_eq!(d.r32(FECTL_REG) & CTL_IP, 0);
}

// --------------------------------------------------------------- queued invalidation

#[test]
fn invalidation_wait_writes_status_and_raises_completion_event() {
    let mut d = Driver::legacy();
    d.enable_qi(false);
    d.w32(IECTL_REG, 0);
    d.w32(IEDATA_REG, 0x55);
    d.w32(IEADDR_REG, 0xfee0_1000);
    let st = d.status;
    d.submit(&[wait_desc(true, true, 0xabcd, st)]);
    assert_eq!(d.mem.read_u32(st).unwrap(), 0xabcd);
    assert_ne!(d.r32(ICS_REG) & ICS_IWC, 0);
    assert_eq!(
        d.take_events(),
        vec![VtdEvent::InvalidationComplete {
            addr: 0xfee0_1000,
            data: 0x55
        }]
    );
    // While IWC is set, another interrupt-flag wait raises no event.
    d.submit(&[wait_desc(true, false, 0, 0)]);
    assert!(d.take_events().is_empty());
    d.w32(ICS_REG, ICS_IWC);
    assert_eq!(d.r32(ICS_REG), 0);
    d.submit(&[wait_desc(true, false, 0, 0)]);
    assert_eq!(d.take_events().len(), 1);
    assert_eq!(d.r64(IQH_REG), 48);
}

#[test]
fn invalid_descriptor_stops_the_queue_with_iqe() {
    let mut d = Driver::legacy();
    d.enable_qi(false);
    let st = d.status;
    d.mem.write_u32(st, 0).unwrap();
    // A valid descriptor, an interrupt-entry-cache descriptor (unsupported type), then a wait.
    d.submit(&[iotlb_global(), [0x4, 0], wait_desc(false, true, 0x77, st)]);
    assert_ne!(d.r32(FSTS_REG) & FSTS_IQE, 0);
    assert_eq!(d.r64(IQERCD_REG) & 0xf, IQEI_INVALID_TYPE);
    assert_eq!(d.r64(IQH_REG), 16, "IQH stays at the bad descriptor");
    assert_eq!(d.mem.read_u32(st).unwrap(), 0, "nothing after it ran");
    // Software fixes the descriptor and clears IQE: the queue resumes.
    d.mem.write_u64(d.iq + 16, iotlb_global()[0]).unwrap();
    d.w32(FSTS_REG, FSTS_IQE);
    assert_eq!(d.r32(FSTS_REG) & FSTS_IQE, 0);
    assert_eq!(d.mem.read_u32(st).unwrap(), 0x77);
    assert_eq!(d.r64(IQH_REG), 48);
    // A reserved bit: IQEI 4.
    d.submit(&[[0x2 | (1 << 4) | (1 << 8), 0]]);
    assert_eq!(d.r64(IQERCD_REG) & 0xf, IQEI_RESERVED);
    d.w32(FSTS_REG, FSTS_IQE);
    // Fix by skipping: software would rewrite it; turn it into a wait.
    d.mem
        .write_u64(d.iq + 48, wait_desc(false, false, 0, 0)[0])
        .unwrap();
    d.mem.write_u64(d.iq + 56, 0).unwrap();
    d.w32(FSTS_REG, FSTS_IQE);
    assert_eq!(d.r64(IQH_REG), 64);
}

#[test]
fn queue_tail_errors() {
    let mut d = Driver::legacy();
    d.enable_qi(false);
    // QS = 0: one 4 KiB page; a tail past it is invalid (IQEI 1)... bits 18:4 allow 0x7fff0.
    d.w64(IQT_REG, 0x2000);
    assert_eq!(d.r64(IQERCD_REG) & 0xf, IQEI_TAIL_BEYOND_QUEUE);
    assert_ne!(d.r32(FSTS_REG) & FSTS_IQE, 0);
    assert_eq!(d.r64(IQH_REG), 0);
    // 256-bit descriptors need a 32-byte aligned tail (IQEI 6).
    let mut w = Driver::legacy();
    w.enable_qi(true);
    w.w64(IQT_REG, 0x10);
    assert_eq!(w.r64(IQERCD_REG) & 0xf, IQEI_TAIL_MISALIGNED);
    // A well-formed wide queue works.
    let mut w = Driver::legacy();
    w.enable_qi(true);
    w.submit_and_wait(&[iotlb_global()]);
    assert_eq!(w.r64(IQH_REG), 64);
    // A descriptor fetch outside memory (IQEI 2).
    let mut f = Driver::legacy();
    f.w64(IQA_REG, MEM);
    f.gcmd(GCMD_QIE, true, true);
    f.w64(IQT_REG, 0x10);
    assert_eq!(f.r64(IQERCD_REG) & 0xf, IQEI_FETCH_ERROR);
    // PASID-based descriptors in legacy mode (IQEI 7).
    let mut p = Driver::legacy();
    p.enable_qi(false);
    p.submit(&[piotlb_pasid(1, 1)]);
    assert_eq!(p.r64(IQERCD_REG) & 0xf, IQEI_INVALID_TTM);
}

/// Remaps `iova` to a new page behind the caches' back, checks the new translation appears after
/// `invalidate`.
fn stale_translation_goes_after(invalidate: impl FnOnce(&mut Driver, u16, u64)) {
    let (mut d, mut t, dev) = legacy_with_domain();
    d.enable_qi(false);
    let iova = 0x10_1000;
    assert_eq!(d.write(dev, iova).unwrap(), 0x9000_1000);
    d.unmap(&mut t, iova, 0x1000);
    d.map(&mut t, iova, 0xa000_0000, 0x1000, RW);
    // Without an invalidation the hardware may use the old or the new translation.
    let before = d.write(dev, iova).unwrap();
    assert!(before == 0x9000_1000 || before == 0xa000_0000);
    invalidate(&mut d, 5, iova);
    assert_eq!(d.write(dev, iova).unwrap(), 0xa000_0000);
    assert_eq!(d.read(dev, iova + 0x10).unwrap(), 0xa000_0010);
}

#[test]
fn iotlb_page_invalidation_removes_stale_translation() {
    stale_translation_goes_after(|d, did, iova| {
        d.submit_and_wait(&[iotlb_page(did, iova, 0, false)])
    });
}

#[test]
fn iotlb_page_invalidation_with_address_mask() {
    stale_translation_goes_after(|d, did, iova| {
        d.submit_and_wait(&[iotlb_page(did, iova & !0x3fff, 2, false)])
    });
}

#[test]
fn iotlb_domain_invalidation_removes_stale_translation() {
    stale_translation_goes_after(|d, did, _| d.submit_and_wait(&[iotlb_domain(did)]));
}

#[test]
fn iotlb_global_invalidation_removes_stale_translation() {
    stale_translation_goes_after(|d, _, _| d.submit_and_wait(&[iotlb_global()]));
}

#[test]
fn register_based_iotlb_invalidation_removes_stale_translation() {
    stale_translation_goes_after(|d, did, iova| {
        // Register-based invalidation needs QI off.
        d.gcmd(GCMD_QIE, true, false);
        let iro = u64::from(d.vtd.config().iro);
        d.w64(iro, iova);
        d.w64(
            iro + 8,
            IOTLB_IVT | (3 << IOTLB_IIRG_SHIFT) | (u64::from(did) << 32),
        );
        let v = d.r64(iro + 8);
        assert_eq!(v & IOTLB_IVT, 0, "IVT clears when done");
        assert_eq!((v >> IOTLB_IAIG_SHIFT) & 3, 3, "page-selective performed");
    });
}

#[test]
fn register_based_page_invalidation_beyond_mamv_is_domain_selective() {
    stale_translation_goes_after(|d, did, iova| {
        d.gcmd(GCMD_QIE, true, false);
        let iro = u64::from(d.vtd.config().iro);
        d.w64(iro, (iova & !((1 << 31) - 1)) | 19); // AM 19 > MAMV 18
        d.w64(
            iro + 8,
            IOTLB_IVT | (3 << IOTLB_IIRG_SHIFT) | (u64::from(did) << 32),
        );
        assert_eq!((d.r64(iro + 8) >> IOTLB_IAIG_SHIFT) & 3, 2);
    });
}

#[test]
fn invalidation_hint_keeps_paging_structures_but_not_leaves() {
    let (mut d, mut t, dev) = legacy_with_domain();
    d.enable_qi(false);
    assert_eq!(d.read(dev, 0x10_0000).unwrap(), 0x9000_0000);
    // Only the leaf changes: IH = 1 is allowed.
    d.unmap(&mut t, 0x10_0000, 0x1000);
    d.map(&mut t, 0x10_0000, 0xb000_0000, 0x1000, RW);
    d.submit_and_wait(&[iotlb_page(5, 0x10_0000, 0, true)]);
    assert_eq!(d.read(dev, 0x10_0000).unwrap(), 0xb000_0000);
}

/// Moves device `dev` from domain 5 to a new domain 6 with other tables; checks the new
/// translation after `invalidate`.
fn stale_context_goes_after(invalidate: impl FnOnce(&mut Driver, u16)) {
    let (mut d, _t, dev) = legacy_with_domain();
    d.enable_qi(false);
    assert_eq!(d.read(dev, 0x10_0000).unwrap(), 0x9000_0000);
    let mut t2 = d.ss_domain(2);
    d.map(&mut t2, 0x10_0000, 0xc000_0000, 0x1000, RW);
    d.attach_legacy(dev, 6, &t2);
    let before = d.read(dev, 0x10_0000).unwrap();
    assert!(before == 0x9000_0000 || before == 0xc000_0000);
    invalidate(&mut d, dev);
    let (r, trace) = d
        .vtd
        .translate(&DmaRequest::new(dev, 0x10_0000, 4, AccessKind::Read));
    let t = r.unwrap();
    assert_eq!(t.addr, 0xc000_0000);
    assert_eq!(t.domain_id, 6);
    assert!(trace.mem_reads() > 0);
}

#[test]
fn context_cache_global_invalidation() {
    stale_context_goes_after(|d, _| d.submit_and_wait(&[cc_global()]));
}

#[test]
fn context_cache_domain_invalidation() {
    stale_context_goes_after(|d, _| d.submit_and_wait(&[cc_domain(5)]));
}

#[test]
fn context_cache_device_invalidation() {
    stale_context_goes_after(|d, dev| d.submit_and_wait(&[cc_device(5, dev, 0)]));
}

#[test]
fn context_cache_device_invalidation_with_function_mask() {
    // FM = 3 ignores the function bits: function 5 of the same device covers function 0.
    stale_context_goes_after(|d, dev| d.submit_and_wait(&[cc_device(5, dev | 5, 3)]));
}

#[test]
fn register_based_context_invalidation() {
    stale_context_goes_after(|d, _| {
        d.gcmd(GCMD_QIE, true, false);
        d.w64(CCMD_REG, CCMD_ICC | (1 << CCMD_CIRG_SHIFT));
        let v = d.r64(CCMD_REG);
        assert_eq!(v & CCMD_ICC, 0);
        assert_eq!((v >> CCMD_CAIG_SHIFT) & 3, 1);
    });
}

#[test]
fn device_tlb_invalidation_completes() {
    let mut d = Driver::legacy();
    d.enable_qi(false);
    d.submit_and_wait(&[[0x3 | (0x18 << 32), 0x1000]]);
    let mut no_dt = Driver::new(VtdConfig {
        device_tlb: false,
        ..VtdConfig::default()
    });
    no_dt.set_root(false);
    no_dt.enable_qi(false);
    no_dt.submit(&[[0x3 | (0x18 << 32), 0x1000]]);
    assert_eq!(no_dt.r64(IQERCD_REG) & 0xf, IQEI_INVALID_TYPE);
}

// ------------------------------------------------------------------- scalable mode

fn scalable() -> Driver {
    let mut d = Driver::new(VtdConfig::default());
    d.set_root(true);
    d.enable_qi(false);
    d.enable_translation();
    d
}

/// PASID entry qwords for second-stage-only translation by `tables` in domain `did`.
fn ss_pasid(tables: &TableBuilder, did: u16) -> [u64; 3] {
    [tables.root() | (2 << 6) | (2 << 2) | 1, u64::from(did), 0]
}

/// PASID entry qwords for first-stage-only translation (4-level, SRE, WPE).
fn fs_pasid(tables: &TableBuilder, did: u16, sre: bool, wpe: bool) -> [u64; 3] {
    [
        (1 << 6) | 1,
        u64::from(did),
        tables.root() | u64::from(sre) | (u64::from(wpe) << 4),
    ]
}

#[test]
fn scalable_second_stage_with_rid_pasid() {
    let mut d = scalable();
    let dev = sid(0, 2, 0);
    let mut t = d.ss_domain(2);
    d.map(&mut t, 0x4000, 0x7000_0000, 0x1000, RW);
    let dir = d.sm_context(dev, 0, false, 0);
    d.pasid_entry(dir, 0, ss_pasid(&t, 9));
    let (r, trace) = d
        .vtd
        .translate(&DmaRequest::new(dev, 0x4008, 4, AccessKind::Write));
    let tr = r.unwrap();
    assert_eq!(tr.addr, 0x7000_0008);
    assert_eq!(tr.domain_id, 9);
    let targets: Vec<_> = trace
        .events()
        .iter()
        .filter_map(|e| match e {
            TraceEvent::MemRead { target, .. } => Some(*target),
            _ => None,
        })
        .take(4)
        .collect();
    assert_eq!(
        targets,
        vec![
            MemTarget::RootEntry,
            MemTarget::ContextEntry,
            MemTarget::PasidDirEntry,
            MemTarget::PasidEntry
        ]
    );
    // Requests with PASID are refused while PASIDE is clear (SCT.6).
    let f = d
        .translate(DmaRequest::new(dev, 0x4000, 4, AccessKind::Read).with_pasid(0))
        .unwrap_err();
    assert_eq!(f.code, 0x45);
    // Devfn >= 128 uses the upper half of the root entry.
    let hi = sid(0, 17, 0);
    let dir_hi = d.sm_context(hi, 0, false, 3);
    d.pasid_entry(dir_hi, 3, ss_pasid(&t, 10));
    assert_eq!(d.read(hi, 0x4000).unwrap(), 0x7000_0000);
    assert_ne!(d.mem.read_u64(d.root + 8).unwrap() & 1, 0);
}

#[test]
fn scalable_first_stage_privilege_and_write_protection() {
    let mut d = scalable();
    let dev = sid(0, 3, 0);
    let mut t = d.fs_domain();
    let user_rw = PwPerms::RW | PwPerms::U;
    d.map(&mut t, 0x1000, 0x6000_1000, 0x1000, user_rw);
    d.map(&mut t, 0x2000, 0x6000_2000, 0x1000, PwPerms::RW); // supervisor only
    d.map(&mut t, 0x3000, 0x6000_3000, 0x1000, PwPerms::R | PwPerms::U); // read-only
    let dir = d.sm_context(dev, 0, true, 0);
    d.pasid_entry(dir, 1, fs_pasid(&t, 4, true, false));
    let req = |addr, access| DmaRequest::new(dev, addr, 4, access).with_pasid(1);
    assert_eq!(
        d.translate(req(0x1010, AccessKind::Write)).unwrap().addr,
        0x6000_1010
    );
    // User access to a supervisor page (SGN.2).
    assert_eq!(
        d.translate(req(0x2000, AccessKind::Read)).unwrap_err().code,
        0x81
    );
    // Supervisor access is allowed there.
    assert_eq!(
        d.translate(req(0x2000, AccessKind::Write).privileged())
            .unwrap()
            .addr,
        0x6000_2000
    );
    // User write to a read-only page (SGN.6); without WPE a supervisor write succeeds.
    assert_eq!(
        d.translate(req(0x3000, AccessKind::Write))
            .unwrap_err()
            .code,
        0x85
    );
    assert_eq!(
        d.translate(req(0x3000, AccessKind::Write).privileged())
            .unwrap()
            .addr,
        0x6000_3000
    );
    // Not present (SFS.2) and non-canonical (SGN.1).
    assert_eq!(
        d.translate(req(0x9000, AccessKind::Read)).unwrap_err().code,
        0x71
    );
    assert_eq!(
        d.translate(req(0x0000_8000_0000_0000, AccessKind::Read))
            .unwrap_err()
            .code,
        0x80
    );
    // A PASID entry with WPE: supervisor writes honour R/W; without SRE, supervisor requests
    // are refused (SPT.6).
    d.pasid_entry(dir, 2, fs_pasid(&t, 4, true, true));
    let req2 = |addr, access| DmaRequest::new(dev, addr, 4, access).with_pasid(2);
    assert_eq!(
        d.translate(req2(0x3000, AccessKind::Write).privileged())
            .unwrap_err()
            .code,
        0x85
    );
    d.pasid_entry(dir, 3, fs_pasid(&t, 4, false, false));
    let req3 = DmaRequest::new(dev, 0x1000, 4, AccessKind::Read)
        .with_pasid(3)
        .privileged();
    assert_eq!(d.translate(req3).unwrap_err().code, 0x5d);
    // Execute requests need ERE (not offered: ECAP.ERS = 0): SPT.5.
    assert_eq!(
        d.translate(req(0x1000, AccessKind::Execute))
            .unwrap_err()
            .code,
        0x5c
    );
    // First-stage A/D: the leaf of a written page has A and D set.
    let mut tr = pagewalk::RecordingTrace::<16>::new();
    let leaf = pagewalk::walk(
        t.config(),
        d.mem,
        t.root(),
        0x1000,
        pagewalk::Access::READ,
        &mut tr,
    )
    .unwrap()
    .entry;
    assert_eq!(leaf & 0x60, 0x60);
}

#[test]
fn scalable_pass_through_and_structure_faults() {
    let mut d = scalable();
    let dev = sid(2, 0, 0);
    let dir = d.sm_context(dev, 0, true, 0);
    d.pasid_entry(dir, 5, [(4 << 6) | 1, 12, 0]);
    let t = d
        .translate(DmaRequest::new(dev, 0xabc0, 4, AccessKind::Write).with_pasid(5))
        .unwrap();
    assert!(t.identity);
    assert_eq!(t.domain_id, 12);
    let code = |d: &Driver, req: DmaRequest| d.translate(req).unwrap_err().code;
    let r = |pasid| DmaRequest::new(dev, 0, 4, AccessKind::Read).with_pasid(pasid);
    // PASID-directory entry not present (SPD.2), PASID entry not present (SPT.2).
    assert_eq!(code(&d, r(64)), 0x51);
    assert_eq!(code(&d, r(6)), 0x59);
    // PDTS = 0: 128 directory entries cover PASIDs below 8192 (SCT.7).
    assert_eq!(code(&d, r(8192)), 0x46);
    // Root not present for bus 7 (SRT.2); context not present (SCT.2).
    assert_eq!(
        code(&d, DmaRequest::new(sid(7, 0, 0), 0, 4, AccessKind::Read)),
        0x39
    );
    assert_eq!(
        code(&d, DmaRequest::new(sid(2, 1, 0), 0, 4, AccessKind::Read)),
        0x41
    );
    // PGTT 000b is invalid (SPT.4), reserved bits (SPT.3).
    d.pasid_entry(dir, 7, [1, 1, 0]);
    assert_eq!(code(&d, r(7)), 0x5b);
    d.pasid_entry(dir, 8, [(4 << 6) | 1 | 0x400, 1, 0]);
    assert_eq!(code(&d, r(8)), 0x5a);
    // Second-stage not present (SSS.2) and beyond AW (SGN.4).
    let t = d.ss_domain(2);
    d.pasid_entry(dir, 9, ss_pasid(&t, 3));
    assert_eq!(code(&d, r(9)), 0x79);
    let mut big = r(9);
    big.addr = 1 << 50;
    assert_eq!(code(&d, big), 0x83);
    // The fault record carries the PASID.
    let [_, hi] = d.frcd(0);
    assert_ne!(hi & FRCD_PP, 0);
    assert_eq!((hi >> FRCD_PV_SHIFT) & 0xfffff, 64);
}

#[test]
fn scalable_nested_translation() {
    let mut d = scalable();
    let dev = sid(0, 8, 0);
    // Second stage: GPA 0..16 MiB -> SPA 0x4000_0000.., guest first-stage tables live in GPA.
    let mut ss = d.ss_domain(2);
    let gpa_base = 0x4000_0000u64;
    d.map(&mut ss, 0, gpa_base, 0x100_0000, RW);
    // Build the first-stage tables in guest memory through the second stage.
    let view = pagewalk::SecondStageView {
        mem: d.mem,
        config: *ss.config(),
        root: ss.root(),
    };
    let mut galloc = BumpAllocator::new(0x10_0000, 0x20_0000);
    let mut c = X86Config::vtd_first_stage(4);
    c.out_width = 48;
    let mut fs = TableBuilder::new(WalkConfig::VtdFirstStage(c), &view, &mut galloc).unwrap();
    fs.map(
        &view,
        &mut galloc,
        0x7000_0000,
        0x30_0000,
        0x1000,
        PwPerms::RW | PwPerms::U,
        PageSizePolicy::Fixed(12),
    )
    .unwrap();
    let dir = d.sm_context(dev, 0, true, 0);
    d.pasid_entry(dir, 4, [ss.root() | (3 << 6) | (2 << 2) | 1, 2, fs.root()]);
    let (r, trace) = d
        .vtd
        .translate(&DmaRequest::new(dev, 0x7000_0044, 4, AccessKind::Write).with_pasid(4));
    let t = r.unwrap();
    assert_eq!(t.addr, gpa_base + 0x30_0044);
    // 4 x 4 nested: 24 table reads after the four structure reads.
    assert_eq!(trace.mem_reads(), 4 + 24);
    // A neighbouring page starts from the cached first-stage PDE: the second-stage walk of the
    // leaf table's address, the leaf, and the second-stage walk of the output.
    fs.map(
        &view,
        &mut galloc,
        0x7000_3000,
        0x30_3000,
        0x1000,
        PwPerms::RW | PwPerms::U,
        PageSizePolicy::Fixed(12),
    )
    .unwrap();
    let (r, trace) = d
        .vtd
        .translate(&DmaRequest::new(dev, 0x7000_3008, 4, AccessKind::Read).with_pasid(4));
    assert_eq!(r.unwrap().addr, gpa_base + 0x30_3008);
    assert_eq!(
        trace.lookup(CacheId::PagingStructure {
            stage: Stage::First,
            level: 2
        }),
        Some(true)
    );
    assert_eq!(trace.mem_reads(), 4 + 1 + 4);
    // An unmapped IOVA faults in the first stage.
    let code = |d: &Driver, pasid, addr| {
        d.translate(DmaRequest::new(dev, addr, 4, AccessKind::Read).with_pasid(pasid))
            .unwrap_err()
            .code
    };
    assert_eq!(code(&d, 4, 0x7100_0000), 0x71);
    // The first stage's output GPA has no second-stage mapping (SSS.2).
    fs.map(
        &view,
        &mut galloc,
        0x7000_1000,
        0x200_0000,
        0x1000,
        PwPerms::RW | PwPerms::U,
        PageSizePolicy::Fixed(12),
    )
    .unwrap();
    assert_eq!(code(&d, 4, 0x7000_1000), 0x79);
    // Second stages that grant the first-stage tables less: read-only tables make the A/D
    // update of a fresh entry fail (SFS.8); unmapped tables make the root unreadable (SFS.6).
    fs.map(
        &view,
        &mut galloc,
        0x7000_2000,
        0x30_2000,
        0x1000,
        PwPerms::RW | PwPerms::U,
        PageSizePolicy::Fixed(12),
    )
    .unwrap();
    let mut ro = d.ss_domain(2);
    d.map(&mut ro, 0, gpa_base, 0x10_0000, RW);
    d.map(&mut ro, 0x10_0000, gpa_base + 0x10_0000, 0x10_0000, R);
    d.map(&mut ro, 0x20_0000, gpa_base + 0x20_0000, 0xe0_0000, RW);
    d.pasid_entry(dir, 5, [ro.root() | (3 << 6) | (2 << 2) | 1, 3, fs.root()]);
    assert_eq!(code(&d, 5, 0x7000_2000), 0x77);
    let mut holes = d.ss_domain(2);
    d.map(&mut holes, 0, gpa_base, 0x10_0000, RW);
    d.map(&mut holes, 0x20_0000, gpa_base + 0x20_0000, 0xe0_0000, RW);
    d.pasid_entry(
        dir,
        6,
        [holes.root() | (3 << 6) | (2 << 2) | 1, 4, fs.root()],
    );
    assert_eq!(code(&d, 6, 0x7000_0000), 0x75);
}

#[test]
fn five_level_first_stage_and_second_stage_dirty_tracking() {
    let mut d = Driver::new(VtdConfig {
        fs_5level: true,
        ss_ad: true,
        ..VtdConfig::default()
    });
    d.set_root(true);
    d.enable_qi(false);
    d.enable_translation();
    let dev = sid(0, 9, 0);
    let mut c = X86Config::vtd_first_stage(5);
    c.out_width = 48;
    let mut fs = TableBuilder::new(WalkConfig::VtdFirstStage(c), d.mem, &mut d.alloc).unwrap();
    let high = 0x00ff_0000_0000_0000u64; // needs 57-bit (5-level) canonical addresses
    d.map(&mut fs, high, 0x5000_0000, 0x1000, PwPerms::RW | PwPerms::U);
    let dir = d.sm_context(dev, 0, true, 0);
    // FSPM = 01b: 5-level paging.
    d.pasid_entry(dir, 1, [(1 << 6) | 1, 2, fs.root() | (1 << 2)]);
    let (r, trace) = d
        .vtd
        .translate(&DmaRequest::new(dev, high | 0x10, 4, AccessKind::Read).with_pasid(1));
    assert_eq!(r.unwrap().addr, 0x5000_0010);
    let fs_reads = trace
        .events()
        .iter()
        .filter(|e| {
            matches!(
                e,
                TraceEvent::MemRead {
                    target: MemTarget::PageTable {
                        stage: Stage::First,
                        ..
                    },
                    ..
                }
            )
        })
        .count();
    assert_eq!(fs_reads, 5);
    // Second stage with SSADE: a write sets A and D in the leaf.
    let mut ss = d.ss_domain(2);
    d.map(&mut ss, 0x8000, 0x5100_0000, 0x1000, RW);
    d.pasid_entry(
        dir,
        2,
        [ss.root() | (1 << 9) | (2 << 6) | (2 << 2) | 1, 3, 0],
    );
    let w = DmaRequest::new(dev, 0x8000, 4, AccessKind::Write).with_pasid(2);
    assert_eq!(d.translate(w).unwrap().addr, 0x5100_0000);
    let mut tr = pagewalk::RecordingTrace::<16>::new();
    let leaf = pagewalk::walk(
        ss.config(),
        d.mem,
        ss.root(),
        0x8000,
        pagewalk::Access::READ,
        &mut tr,
    )
    .unwrap()
    .entry;
    assert_eq!(leaf & 0x300, 0x300, "A and D set");
    // Without SSADS the SSADE bit is invalid programming (SPT.4).
    let mut plain = scalable();
    let dir = plain.sm_context(dev, 0, true, 0);
    plain.pasid_entry(
        dir,
        2,
        [ss.root() | (1 << 9) | (2 << 6) | (2 << 2) | 1, 3, 0],
    );
    assert_eq!(plain.translate(w).unwrap_err().code, 0x5b);
}

#[test]
fn pasid_cache_and_pasid_iotlb_invalidations() {
    let mut d = scalable();
    let dev = sid(0, 4, 0);
    let mut t = d.fs_domain();
    let p = PwPerms::RW | PwPerms::U;
    d.map(&mut t, 0x1000, 0x6100_0000, 0x1000, p);
    let dir = d.sm_context(dev, 0, true, 0);
    d.pasid_entry(dir, 1, fs_pasid(&t, 4, true, false));
    let rd = |d: &Driver| {
        d.translate(DmaRequest::new(dev, 0x1000, 4, AccessKind::Read).with_pasid(1))
            .map(|t| (t.addr, t.domain_id))
    };
    assert_eq!(rd(&d).unwrap(), (0x6100_0000, 4));
    // Page remap: PASID-based page-selective IOTLB invalidation.
    d.unmap(&mut t, 0x1000, 0x1000);
    d.map(&mut t, 0x1000, 0x6200_0000, 0x1000, p);
    d.submit_and_wait(&[piotlb_page(4, 1, 0x1000, 0)]);
    assert_eq!(rd(&d).unwrap().0, 0x6200_0000);
    // PASID-selective.
    d.unmap(&mut t, 0x1000, 0x1000);
    d.map(&mut t, 0x1000, 0x6300_0000, 0x1000, p);
    d.submit_and_wait(&[piotlb_pasid(4, 1)]);
    assert_eq!(rd(&d).unwrap().0, 0x6300_0000);
    // A new PASID entry (new domain, new tables): PASID-cache then IOTLB invalidation.
    let mut t2 = d.fs_domain();
    d.map(&mut t2, 0x1000, 0x6400_0000, 0x1000, p);
    d.pasid_entry(dir, 1, fs_pasid(&t2, 8, true, false));
    d.submit_and_wait(&[pc_pasid(4, 1), piotlb_pasid(4, 1)]);
    assert_eq!(rd(&d).unwrap(), (0x6400_0000, 8));
    // Domain-selective PASID-cache invalidation.
    let mut t3 = d.fs_domain();
    d.map(&mut t3, 0x1000, 0x6500_0000, 0x1000, p);
    d.pasid_entry(dir, 1, fs_pasid(&t3, 9, true, false));
    d.submit_and_wait(&[pc_domain(8), piotlb_pasid(8, 1)]);
    assert_eq!(rd(&d).unwrap(), (0x6500_0000, 9));
    // Scalable-mode context change: context-cache (domain granularity), PASID cache, IOTLB.
    let dir2 = d.sm_context(dev, 0, true, 0);
    let mut t4 = d.fs_domain();
    d.map(&mut t4, 0x1000, 0x6600_0000, 0x1000, p);
    d.pasid_entry(dir2, 1, fs_pasid(&t4, 10, true, false));
    d.submit_and_wait(&[cc_domain(9), pc_domain(9), iotlb_domain(9)]);
    assert_eq!(rd(&d).unwrap(), (0x6600_0000, 10));
}

#[test]
fn scalable_second_stage_invalidations_and_global_pasid_cache() {
    let mut d = scalable();
    let dev = sid(3, 0, 0);
    let mut t = d.ss_domain(2);
    d.map(&mut t, 0x4000, 0x7100_0000, 0x1000, RW);
    let dir = d.sm_context(dev, 0, false, 0);
    d.pasid_entry(dir, 0, ss_pasid(&t, 20));
    assert_eq!(d.read(dev, 0x4000).unwrap(), 0x7100_0000);
    // Second-stage-only PASID entries are invalidated with the IOTLB descriptor (type 2).
    d.unmap(&mut t, 0x4000, 0x1000);
    d.map(&mut t, 0x4000, 0x7200_0000, 0x1000, RW);
    d.submit_and_wait(&[iotlb_page(20, 0x4000, 0, false)]);
    assert_eq!(d.read(dev, 0x4000).unwrap(), 0x7200_0000);
    // Global PASID-cache invalidation (G = 11b) picks up a rewritten RID_PASID entry.
    let mut t2 = d.ss_domain(2);
    d.map(&mut t2, 0x4000, 0x7300_0000, 0x1000, RW);
    d.pasid_entry(dir, 0, ss_pasid(&t2, 21));
    d.submit_and_wait(&[[0x7 | (3 << 4), 0], iotlb_domain(20)]);
    let t = d
        .translate(DmaRequest::new(dev, 0x4000, 4, AccessKind::Read))
        .unwrap();
    assert_eq!((t.addr, t.domain_id), (0x7300_0000, 21));
}

#[test]
fn scalable_fpd_and_mode_support() {
    let mut d = scalable();
    let dev = sid(4, 0, 0);
    let t = d.ss_domain(2);
    let dir = d.sm_context(dev, 0, true, 0);
    // FPD in the PASID-table entry suppresses recording of the second-stage fault.
    d.pasid_entry(dir, 1, [ss_pasid(&t, 3)[0] | 2, 3, 0]);
    let f = d
        .translate(DmaRequest::new(dev, 0x1000, 4, AccessKind::Read).with_pasid(1))
        .unwrap_err();
    assert_eq!((f.code, f.recorded), (0x79, false));
    // FPD in the PASID-directory entry suppresses the not-present PASID entry fault.
    let de = dir + 8; // PASIDs 64..=127
    let table = d.frame();
    d.mem.write_u64(de, table | 2 | 1).unwrap();
    let f = d
        .translate(DmaRequest::new(dev, 0x1000, 4, AccessKind::Read).with_pasid(65))
        .unwrap_err();
    assert_eq!((f.code, f.recorded), (0x59, false));
    // Without FPD the same fault is recorded.
    let f = d
        .translate(DmaRequest::new(dev, 0x1000, 4, AccessKind::Read).with_pasid(2))
        .unwrap_err();
    assert_eq!((f.code, f.recorded), (0x59, true));
    // A unit without scalable mode refuses a scalable root table (RTA.1).
    let mut legacy_only = Driver::new(VtdConfig {
        scalable_mode: false,
        nested: false,
        ..VtdConfig::default()
    });
    assert_eq!(legacy_only.r64(ECAP_REG) & ECAP_SMTS, 0);
    legacy_only.set_root(true);
    legacy_only.enable_translation();
    assert_eq!(legacy_only.read(0x100, 0).unwrap_err().code, 0x30);
}

#[test]
fn concurrent_translations_agree() {
    let (d, _t, dev) = legacy_with_domain();
    std::thread::scope(|s| {
        for i in 0..4u64 {
            let d = &d;
            s.spawn(move || {
                for n in 0..500u64 {
                    let off = ((n + i) % 4) * 0x1000 + (n % 0x100) * 8;
                    let t = d.read(dev, 0x10_0000 + off).unwrap();
                    assert_eq!(t, 0x9000_0000 + off);
                }
            });
        }
    });
    assert_eq!(Unit::stats(&d.vtd).translations, 2000);
}

/// While one thread keeps translating a page, another remaps it and invalidates through the
/// queue: once the invalidation wait has completed, no translation that starts afterwards may
/// return the old page (a walk that began before the invalidation must not have left it cached).
#[test]
fn no_stale_translation_after_a_concurrent_invalidation_completes() {
    use std::sync::atomic::{AtomicU64, Ordering};
    let (mut d, mut t, dev) = legacy_with_domain();
    d.enable_qi(false);
    let iova = 0x10_0000u64;
    let Driver {
        vtd,
        mem,
        alloc,
        iq,
        status,
        ..
    } = &mut d;
    let (vtd, mem, iq, status) = (&*vtd, *mem, *iq, *status);
    // Generation g maps the page to 0xd000_0000 + g * 0x1000; `done` is the newest generation
    // whose invalidation has completed.
    let done = AtomicU64::new(0);
    let rounds = 200u64;
    std::thread::scope(|s| {
        s.spawn(|| {
            for _ in 0..20_000 {
                let floor = done.load(Ordering::Acquire);
                // Between unmap and map the page is briefly absent: a fault is fine then.
                if let Ok(got) = vtd
                    .translate(&DmaRequest::new(dev, iova, 4, AccessKind::Read))
                    .0
                {
                    let g = got.addr.wrapping_sub(0xd000_0000) / 0x1000;
                    assert!(
                        got.addr < 0xd000_0000 && floor == 0
                            || (got.addr >= 0xd000_0000 && g >= floor),
                        "generation {g} seen after generation {floor} was invalidated"
                    );
                }
                if floor >= rounds {
                    break;
                }
            }
        });
        let mut tail = 0u64;
        for g in 1..=rounds {
            t.unmap(mem, alloc, iova, 0x1000).unwrap();
            t.map(
                mem,
                alloc,
                iova,
                0xd000_0000 + g * 0x1000,
                0x1000,
                RW,
                PageSizePolicy::Fixed(12),
            )
            .unwrap();
            let descs = [
                iotlb_page(5, iova, 0, false),
                wait_desc(false, true, g as u32, status),
            ];
            for desc in descs {
                mem.write_u64(iq + tail, desc[0]).unwrap();
                mem.write_u64(iq + tail + 8, desc[1]).unwrap();
                tail = (tail + 16) % 4096;
            }
            vtd.mmio_write(IQT_REG, 8, tail);
            assert_eq!(mem.read_u32(status).unwrap(), g as u32);
            done.store(g, Ordering::Release);
        }
    });
}

// ------------------------------------------------------------------------ properties

#[derive(Debug, Clone)]
enum Op {
    Map { page: u64, frame: u64, write: bool },
    Unmap { page: u64 },
    Translate { page: u64, write: bool },
    Attach { dev: u8, domain: u8 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..16u64, 0..64u64, any::<bool>()).prop_map(|(page, frame, write)| Op::Map {
            page,
            frame,
            write
        }),
        (0..16u64).prop_map(|page| Op::Unmap { page }),
        (0..16u64, any::<bool>()).prop_map(|(page, write)| Op::Translate { page, write }),
        (0..3u8, 0..2u8).prop_map(|(dev, domain)| Op::Attach { dev, domain }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Random programming with the invalidations the spec requires never yields a translation
    /// the current tables would not give.
    #[test]
    fn translations_follow_the_tables(ops in proptest::collection::vec(op(), 1..60)) {
        let mut d = Driver::legacy();
        d.enable_qi(false);
        let mut doms = [d.ss_domain(2), d.ss_domain(2)];
        let mut maps: [std::collections::BTreeMap<u64, (u64, bool)>; 2] = Default::default();
        let mut attached = [0usize; 3];
        let devs = [sid(0, 1, 0), sid(0, 2, 0), sid(1, 0, 0)];
        for (i, dev) in devs.iter().enumerate() {
            let root = doms[0].root();
            d.legacy_context(*dev, root | 1, 2 | (1 << 8));
            attached[i] = 0;
        }
        d.enable_translation();
        for op in ops {
            match op {
                Op::Map { page, frame, write } => {
                    for (k, dom) in doms.iter_mut().enumerate() {
                        if maps[k].contains_key(&page) {
                            continue;
                        }
                        let perms = if write { RW } else { R };
                        let phys = 0x8000_0000 + frame * 0x1000 + (k as u64) * 0x100_0000;
                        dom.map(d.mem, &mut d.alloc, page << 12, phys, 0x1000, perms,
                                PageSizePolicy::Fixed(12)).unwrap();
                        maps[k].insert(page, (phys, write));
                        // Not-present to present needs no invalidation (CAP.CM = 0).
                    }
                }
                Op::Unmap { page } => {
                    for (k, dom) in doms.iter_mut().enumerate() {
                        if maps[k].remove(&page).is_some() {
                            dom.unmap(d.mem, &mut d.alloc, page << 12, 0x1000).unwrap();
                            d.submit_and_wait(&[iotlb_page(k as u16 + 1, page << 12, 0, false)]);
                        }
                    }
                }
                Op::Attach { dev, domain } => {
                    let dev = usize::from(dev);
                    let k = usize::from(domain);
                    let root = doms[k].root();
                    d.legacy_context(devs[dev], root | 1, 2 | ((k as u64 + 1) << 8));
                    let old = attached[dev] as u16 + 1;
                    d.submit_and_wait(&[cc_device(old, devs[dev], 0), iotlb_domain(old)]);
                    attached[dev] = k;
                }
                Op::Translate { page, write } => {
                    for (i, dev) in devs.iter().enumerate() {
                        let k = attached[i];
                        let access = if write { AccessKind::Write } else { AccessKind::Read };
                        let r = d.translate(DmaRequest::new(*dev, (page << 12) | 0x18, 4, access));
                        match maps[k].get(&page) {
                            Some((phys, w)) if *w || !write => {
                                let t = r.unwrap();
                                prop_assert_eq!(t.addr, phys | 0x18);
                                prop_assert_eq!(t.domain_id, k as u16 + 1);
                            }
                            Some(_) => prop_assert_eq!(r.unwrap_err().code, 0x5),
                            None => {
                                let f = r.unwrap_err();
                                prop_assert_eq!(f.code, if write { 0x5 } else { 0x6 });
                            }
                        }
                    }
                }
            }
        }
        let _ = &mut doms;
    }

    /// Scalable mode, first-stage tables per PASID: random maps, unmaps and PASID-entry
    /// switches, each followed by the PASID-based invalidations the spec requires, never yield a
    /// translation the current tables would not give.
    #[test]
    fn first_stage_translations_follow_the_tables(
        ops in proptest::collection::vec(op(), 1..50),
    ) {
        let mut d = scalable();
        let dev = sid(0, 5, 0);
        let dir = d.sm_context(dev, 0, true, 0);
        let mut doms = [d.fs_domain(), d.fs_domain()];
        let mut maps: [std::collections::BTreeMap<u64, (u64, bool)>; 2] = Default::default();
        // PASID p (1..=3) uses tables `bound[p - 1]`, with DID 10 + table index.
        let mut bound = [0usize; 3];
        for p in 1..=3u32 {
            d.pasid_entry(dir, p, fs_pasid(&doms[0], 10, true, false));
        }
        let user = PwPerms::U;
        for op in ops {
            match op {
                Op::Map { page, frame, write } => {
                    for (k, dom) in doms.iter_mut().enumerate() {
                        if maps[k].contains_key(&page) {
                            continue;
                        }
                        let perms = if write { RW | user } else { R | user };
                        let phys = 0x8000_0000 + frame * 0x1000 + (k as u64) * 0x100_0000;
                        dom.map(d.mem, &mut d.alloc, page << 12, phys, 0x1000, perms,
                                PageSizePolicy::Fixed(12)).unwrap();
                        maps[k].insert(page, (phys, write));
                    }
                }
                Op::Unmap { page } => {
                    for (k, dom) in doms.iter_mut().enumerate() {
                        if maps[k].remove(&page).is_some() {
                            dom.unmap(d.mem, &mut d.alloc, page << 12, 0x1000).unwrap();
                            let descs: Vec<[u64; 2]> = (1..=3u32)
                                .filter(|p| bound[*p as usize - 1] == k)
                                .map(|p| piotlb_page(10 + k as u16, p, page << 12, 0))
                                .collect();
                            d.submit_and_wait(&descs);
                        }
                    }
                }
                Op::Attach { dev: p, domain } => {
                    let p = u32::from(p) + 1;
                    let k = usize::from(domain);
                    let old = 10 + bound[p as usize - 1] as u16;
                    d.pasid_entry(dir, p, fs_pasid(&doms[k], 10 + k as u16, true, false));
                    d.submit_and_wait(&[pc_pasid(old, p), piotlb_pasid(old, p)]);
                    bound[p as usize - 1] = k;
                }
                Op::Translate { page, write } => {
                    for p in 1..=3u32 {
                        let k = bound[p as usize - 1];
                        let access = if write { AccessKind::Write } else { AccessKind::Read };
                        let req = DmaRequest::new(dev, (page << 12) | 0x28, 4, access).with_pasid(p);
                        let r = d.translate(req);
                        match maps[k].get(&page) {
                            Some((phys, w)) if *w || !write => {
                                let t = r.unwrap();
                                prop_assert_eq!(t.addr, phys | 0x28);
                                prop_assert_eq!(t.domain_id, 10 + k as u16);
                            }
                            Some(_) => prop_assert_eq!(r.unwrap_err().code, 0x85),
                            None => prop_assert_eq!(r.unwrap_err().code, 0x71),
                        }
                    }
                }
            }
        }
    }

    /// A queue of random valid and invalid descriptors runs exactly up to the first invalid
    /// one: every wait descriptor before it writes its status, none after it does, IQH stops at
    /// it with IQE set and a fault event raised.
    #[test]
    fn queue_runs_up_to_the_first_invalid_descriptor(
        kinds in proptest::collection::vec(0u8..6, 1..40),
    ) {
        let mut d = Driver::legacy();
        d.enable_qi(false);
        d.w32(FECTL_REG, 0);
        let status = d.status;
        let mut descs = Vec::new();
        for (i, k) in kinds.iter().enumerate() {
            let slot = status + 4 * i as u64;
            d.mem.write_u32(slot, 0).unwrap();
            descs.push(match k {
                0 => wait_desc(false, true, i as u32 + 1, slot),
                1 => iotlb_domain(3),
                2 => cc_global(),
                3 => [0x4, 0],                       // interrupt entry cache: invalid type
                4 => [0x2 | (1 << 4) | (1 << 8), 0], // reserved bit
                _ => wait_desc(false, true, i as u32 + 1, slot),
            });
        }
        d.submit(&descs);
        let first_bad = kinds.iter().position(|k| *k == 3 || *k == 4);
        for (i, k) in kinds.iter().enumerate() {
            let ran = first_bad.is_none_or(|b| i < b);
            let written = d.mem.read_u32(status + 4 * i as u64).unwrap();
            if *k == 0 || *k == 5 {
                prop_assert_eq!(written == i as u32 + 1, ran, "descriptor {}", i);
            }
        }
        match first_bad {
            Some(b) => {
                prop_assert_eq!(d.r64(IQH_REG), 16 * b as u64);
                prop_assert_ne!(d.r32(FSTS_REG) & FSTS_IQE, 0);
                let iqei = if kinds[b] == 3 { IQEI_INVALID_TYPE } else { IQEI_RESERVED };
                prop_assert_eq!(d.r64(IQERCD_REG) & 0xf, iqei);
                prop_assert_eq!(d.take_events().len(), 1);
            }
            None => {
                prop_assert_eq!(d.r64(IQH_REG), d.iq_tail);
                prop_assert_eq!(d.r32(FSTS_REG) & FSTS_IQE, 0);
                prop_assert!(d.take_events().is_empty());
            }
        }
    }

    /// Arbitrary register writes never panic and leave the unit answering.
    #[test]
    fn arbitrary_register_writes_never_panic(
        writes in proptest::collection::vec((0u64..0x400, any::<bool>(), any::<u64>()), 1..64),
    ) {
        let mut d = Driver::new(VtdConfig::default());
        // Give the queue and root table real memory sometimes.
        let q = d.frame();
        d.w64(IQA_REG, q);
        for (off, wide, v) in writes {
            let (off, size) = if wide { (off & !7, 8) } else { (off & !3, 4) };
            d.vtd.mmio_write(off, size, v);
            let _ = d.vtd.mmio_read(off, size);
        }
        let _ = d.translate(DmaRequest::new(0x100, 0x1000, 4, AccessKind::Read));
    }

    /// Whatever the memory-resident structures hold, translation returns a translation or a
    /// typed fault and never panics; a fault of a structure entry is recorded with its SID.
    #[test]
    fn random_structures_never_panic(
        scalable in any::<bool>(),
        words in proptest::collection::vec(any::<u64>(), 16),
        pointer_bits in proptest::collection::vec(0u64..0x100, 8),
        pasid in proptest::option::of(0u32..0x100),
        addr in any::<u64>(),
        access in 0u8..4,
        privileged in any::<bool>(),
    ) {
        let mut d = Driver::new(VtdConfig::default());
        d.set_root(scalable);
        d.enable_translation();
        // Random entries: root entry of bus 0, context entry of devfn 8, a PASID directory and
        // table (pointers are steered into memory half of the time).
        let steer = |w: u64, k: usize| if pointer_bits[k] & 1 == 0 {
            (w & 0xfff) | ((pointer_bits[k] << 12) + TABLES.0)
        } else {
            w
        };
        d.mem.write_u64(d.root, steer(words[0], 0)).unwrap();
        d.mem.write_u64(d.root + 8, steer(words[1], 1)).unwrap();
        for (k, w) in words.iter().enumerate().skip(2) {
            let target = TABLES.0 + (pointer_bits[k % 8] << 12) + ((k as u64) % 8) * 8;
            d.mem.write_u64(target, steer(*w, k % 8)).unwrap();
        }
        let access = [AccessKind::Read, AccessKind::Write, AccessKind::Atomic, AccessKind::Execute]
            [usize::from(access)];
        let mut req = DmaRequest::new(sid(0, 1, 0), addr, 8, access);
        req.pasid = pasid;
        req.privileged = privileged;
        let (r, trace) = d.vtd.translate(&req);
        prop_assert!(trace.dropped() == 0);
        if let Err(f) = r {
            prop_assert!(f.code != 0);
            if f.recorded {
                let [_, hi] = d.frcd(0);
                prop_assert_eq!(hi & 0xffff, u64::from(req.source_id));
                prop_assert_eq!((hi >> 32) & 0xff, u64::from(f.code));
            }
        }
    }
}

/// The raw entry of `tables` (in `mem`) at `level` on the walk of `iova`, and its address.
fn entry_at(mem: &impl PhysMem, root: u64, iova: u64, level: u8) -> (u64, u64) {
    let mut table = root & !0xfff;
    let mut l = 4;
    loop {
        let at = table + pagewalk::level_index(l, iova) * 8;
        let e = mem.read_u64(at).unwrap();
        if l == level {
            return (at, e);
        }
        table = e & 0x000f_ffff_ffff_f000;
        l -= 1;
    }
}

/// A second-stage fault of a nested walk is classified by the phase the walker reports: the
/// second-stage walk of a first-stage table other than the root (SFS.7), of a first-stage
/// table address beyond the second stage's width (SFS.5), or of the final output (SSS.2).
#[test]
fn nested_second_stage_fault_phases() {
    let mut d = scalable();
    let dev = sid(0, 11, 0);
    let mut ss = d.ss_domain(2);
    let gpa_base = 0x4000_0000u64;
    d.map(&mut ss, 0, gpa_base, 0x100_0000, RW);
    let view = pagewalk::SecondStageView {
        mem: d.mem,
        config: *ss.config(),
        root: ss.root(),
    };
    let mut galloc = BumpAllocator::new(0x10_0000, 0x20_0000);
    let mut c = X86Config::vtd_first_stage(4);
    c.out_width = 48;
    let mut fs = TableBuilder::new(WalkConfig::VtdFirstStage(c), &view, &mut galloc).unwrap();
    let user_rw = PwPerms::RW | PwPerms::U;
    fs.map(
        &view,
        &mut galloc,
        0x7000_0000,
        0x30_0000,
        0x1000,
        user_rw,
        PageSizePolicy::Fixed(12),
    )
    .unwrap();
    let dir = d.sm_context(dev, 0, true, 0);
    let nested = |ss_root: u64, aw: u64| [ss_root | (3 << 6) | (aw << 2) | 1, 7, fs.root()];
    d.pasid_entry(dir, 1, nested(ss.root(), 2));
    let code = |d: &Driver, pasid, addr| {
        d.translate(DmaRequest::new(dev, addr, 4, AccessKind::Read).with_pasid(pasid))
            .unwrap_err()
            .code
    };
    assert_eq!(
        d.translate(DmaRequest::new(dev, 0x7000_0010, 4, AccessKind::Read).with_pasid(1))
            .unwrap()
            .addr,
        gpa_base + 0x30_0010
    );
    // The level-3 (PDPT) table's guest-physical page is not mapped by a second stage that maps
    // the root and everything else: SFS.7, not SFS.6 (root) and not SSS.2 (output).
    let (_, pml4e) = entry_at(&view, fs.root(), 0x7000_0000, 4);
    let pdpt = pml4e & 0x000f_ffff_ffff_f000;
    assert_ne!(pdpt >> 12, fs.root() >> 12);
    let mut holed = d.ss_domain(2);
    d.map(&mut holed, 0, gpa_base, pdpt, RW);
    d.map(
        &mut holed,
        pdpt + 0x1000,
        gpa_base + pdpt + 0x1000,
        0x100_0000 - pdpt - 0x1000,
        RW,
    );
    d.pasid_entry(dir, 2, nested(holed.root(), 2));
    assert_eq!(code(&d, 2, 0x7000_0000), 0x76);
    // The output GPA unmapped: SSS.2.
    let mut no_out = d.ss_domain(2);
    d.map(&mut no_out, 0, gpa_base, 0x30_0000, RW);
    d.pasid_entry(dir, 3, nested(no_out.root(), 2));
    assert_eq!(code(&d, 3, 0x7000_0000), 0x79);
    // A first-stage table pointer beyond a 39-bit second stage: SFS.5.
    let mut narrow = d.ss_domain(1);
    d.map(&mut narrow, 0, gpa_base, 0x100_0000, RW);
    d.pasid_entry(dir, 4, nested(narrow.root(), 1));
    assert_eq!(
        d.translate(DmaRequest::new(dev, 0x7000_0010, 4, AccessKind::Read).with_pasid(4))
            .unwrap()
            .addr,
        gpa_base + 0x30_0010
    );
    let (at, _) = entry_at(&view, fs.root(), 0x7000_0000, 4);
    view.write_u64(at, (pml4e & !0x000f_ffff_ffff_f000) | (1 << 40))
        .unwrap();
    d.submit(&[piotlb_pasid(7, 4), pc_pasid(7, 4)]);
    assert_eq!(code(&d, 4, 0x7000_0000), 0x74);
}

/// A first-stage user/supervisor violation found from a paging-structure-cache hit: the U/S
/// bit cleared in a directory entry the cached walk skipped still decides the reason (SGN.2),
/// not the leaf's own bits.
#[test]
fn first_stage_user_supervisor_from_a_cached_directory() {
    let mut d = scalable();
    let dev = sid(0, 12, 0);
    let mut t = d.fs_domain();
    let user_rw = PwPerms::RW | PwPerms::U;
    d.map(&mut t, 0x20_0000, 0x6000_0000, 0x2000, user_rw);
    let dir = d.sm_context(dev, 0, true, 0);
    d.pasid_entry(dir, 1, fs_pasid(&t, 4, true, false));
    // Supervisor-only directory: clear U/S in the PDE.
    let (at, pde) = entry_at(d.mem, t.root(), 0x20_0000, 2);
    d.mem.write_u64(at, pde & !4).unwrap();
    let req = |addr, access| DmaRequest::new(dev, addr, 4, access).with_pasid(1);
    // A supervisor request walks through and caches the directory entry.
    assert_eq!(
        d.translate(req(0x20_0010, AccessKind::Read).privileged())
            .unwrap()
            .addr,
        0x6000_0010
    );
    // A user read of the neighbouring page starts from the cached PDE.
    let (r, trace) = d.vtd.translate(&req(0x20_1000, AccessKind::Read));
    assert_eq!(
        trace.lookup(CacheId::PagingStructure {
            stage: Stage::First,
            level: 2
        }),
        Some(true)
    );
    assert_eq!(r.unwrap_err().code, 0x81);
    // A user write there is a U/S violation too, not a write violation.
    assert_eq!(
        d.translate(req(0x20_1000, AccessKind::Write))
            .unwrap_err()
            .code,
        0x81
    );
    // A supervisor write with WPE clear is allowed on the read/write page.
    assert!(
        d.translate(req(0x20_1000, AccessKind::Write).privileged())
            .is_ok()
    );
}

/// IQA.DW is reserved on a unit without scalable mode (ECAP.SMTS = 0): it reads back clear and
/// the queue keeps 128-bit descriptors (§10.4.24; QEMU honours DW only with ECAP.SMTS too).
#[test]
fn descriptor_width_is_reserved_without_scalable_mode() {
    let mut d = Driver::new(VtdConfig {
        scalable_mode: false,
        first_stage: false,
        nested: false,
        ..VtdConfig::default()
    });
    d.set_root(false);
    d.enable_qi(false);
    let iq = d.r64(IQA_REG);
    d.w32(GCMD_REG, d.gcmd & !GCMD_QIE);
    d.w64(IQA_REG, iq | IQA_DW);
    assert_eq!(d.r64(IQA_REG) & IQA_DW, 0);
    d.w32(GCMD_REG, d.gcmd);
    // Two 128-bit descriptors at offsets 0 and 0x10 both run: a 256-bit queue would have read
    // them as one descriptor with a non-zero upper half (a reserved-field error).
    let st = d.status;
    d.submit(&[iotlb_global(), wait_desc(false, true, 0x55, st)]);
    assert_eq!(d.r32(FSTS_REG) & FSTS_IQE, 0);
    assert_eq!(d.mem.read_u32(st).unwrap(), 0x55);
    assert_eq!(d.r64(IQH_REG), 0x20);
    // With scalable mode offered, DW is kept.
    let mut s = Driver::new(VtdConfig::default());
    s.enable_qi(true);
    assert_ne!(s.r64(IQA_REG) & IQA_DW, 0);
}

/// Requests whose translation lands in the interrupt address range 0xFEEx_xxxx are blocked:
/// LGN.4 in legacy mode, SGN.8 in scalable mode (§3.15), also when the translation comes from
/// the IOTLB, and recorded unless FPD is set.
#[test]
fn translations_into_the_interrupt_range_are_blocked() {
    let (mut d, mut t, dev) = legacy_with_domain();
    d.map(&mut t, 0x30_0000, 0xfee0_0000, 0x1000, RW);
    d.map(&mut t, 0x30_1000, 0xfeef_f000, 0x1000, RW);
    d.map(&mut t, 0x30_2000, 0xfef0_0000, 0x1000, RW);
    d.map(&mut t, 0x30_3000, 0xfedf_f000, 0x1000, RW);
    for _ in 0..2 {
        let f = d.write(dev, 0x30_0010).unwrap_err();
        assert_eq!(
            (f.code, f.kind, f.recorded),
            (0xe, FaultKind::Blocked, true)
        );
        d.clear_frcd(0);
        d.clear_frcd(1);
    }
    assert_eq!(d.read(dev, 0x30_1ffc).unwrap_err().code, 0xe);
    // Just outside the range on either side.
    assert_eq!(d.read(dev, 0x30_2000).unwrap(), 0xfef0_0000);
    assert_eq!(
        d.translate(DmaRequest::new(dev, 0x30_3ff0, 0x10, AccessKind::Read))
            .unwrap()
            .addr,
        0xfedf_fff0
    );
    // Scalable mode, second-stage translation: SGN.8; FPD in the PASID entry suppresses it.
    let mut s = scalable();
    let sdev = sid(0, 4, 0);
    let mut st = s.ss_domain(2);
    s.map(&mut st, 0x4000, 0xfee0_1000, 0x1000, RW);
    let dir = s.sm_context(sdev, 0, true, 0);
    s.pasid_entry(dir, 0, ss_pasid(&st, 3));
    let f = s.read(sdev, 0x4000).unwrap_err();
    assert_eq!((f.code, f.recorded), (0x87, true));
    let mut quiet = ss_pasid(&st, 3);
    quiet[0] |= 2;
    s.pasid_entry(dir, 1, quiet);
    let f = s
        .translate(DmaRequest::new(sdev, 0x4000, 4, AccessKind::Read).with_pasid(1))
        .unwrap_err();
    assert_eq!((f.code, f.recorded), (0x87, false));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// First-stage permission faults get the reason the spec gives for the permissions
    /// accumulated over all four levels (U/S and R/W of every entry), whether the walk starts
    /// at the root or from a paging-structure-cache hit left by an earlier supervisor request:
    /// SGN.2 for a user request when some level is supervisor-only, else SGN.6 for a user
    /// write when some level is read-only (WPE = 0 lets supervisor writes through).
    #[test]
    fn first_stage_permission_reasons_follow_the_accumulated_bits(
        user in proptest::array::uniform4(any::<bool>()),
        rw in proptest::array::uniform4(any::<bool>()),
        write in any::<bool>(),
        privileged in any::<bool>(),
        warm in any::<bool>(),
    ) {
        let mut d = scalable();
        let dev = sid(0, 13, 0);
        let mut t = d.fs_domain();
        d.map(&mut t, 0x20_0000, 0x6000_0000, 0x2000, PwPerms::RW | PwPerms::U);
        let dir = d.sm_context(dev, 0, true, 0);
        d.pasid_entry(dir, 1, fs_pasid(&t, 4, true, false));
        // Levels 4..=1 on the walk of 0x20_1000 (0x20_0000 shares every level but the leaf).
        for (i, level) in (1..=4u8).rev().enumerate() {
            let (at, e) = entry_at(d.mem, t.root(), 0x20_1000, level);
            let e = (e & !6) | (u64::from(user[i]) << 2) | (u64::from(rw[i]) << 1);
            d.mem.write_u64(at, e).unwrap();
        }
        let req = |addr, access: AccessKind, p: bool| {
            let r = DmaRequest::new(dev, addr, 4, access).with_pasid(1);
            if p { r.privileged() } else { r }
        };
        if warm {
            // A supervisor read of the neighbouring page fills the paging-structure caches
            // down to the leaf table.
            prop_assert!(d.translate(req(0x20_0000, AccessKind::Read, true)).is_ok());
        }
        let access = if write { AccessKind::Write } else { AccessKind::Read };
        let r = d.translate(req(0x20_1000, access, privileged));
        let all_user = user.iter().all(|&u| u);
        let all_rw = rw.iter().all(|&w| w);
        let expected = if !privileged && !all_user {
            Some(0x81)
        } else if write && !privileged && !all_rw {
            Some(0x85)
        } else {
            None
        };
        prop_assert_eq!(r.err().map(|f| f.code), expected);
    }
}

/// How a second stage maps one guest-physical page in the nested-fault property.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SsMap {
    Rw,
    ReadOnly,
    Absent,
}

fn ss_map() -> impl Strategy<Value = SsMap> {
    prop_oneof![Just(SsMap::Rw), Just(SsMap::ReadOnly), Just(SsMap::Absent)]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Nested walks over a second stage that maps each first-stage table page and the output
    /// page read/write, read-only or not at all fault with the reason of the first failing step
    /// in walk order: reading the table at level L (SFS.6 for the root, SFS.7 below), setting
    /// the accessed flag in it (SFS.8), then the output (SSS.2, or SGN.6 for a write to a
    /// read-only page).
    #[test]
    fn nested_fault_reasons_follow_the_walk_order(
        tables in proptest::array::uniform4(ss_map()),
        out in ss_map(),
        write in any::<bool>(),
    ) {
        let mut d = scalable();
        let dev = sid(0, 14, 0);
        let gpa_base = 0x4000_0000u64;
        let mut full = d.ss_domain(2);
        d.map(&mut full, 0, gpa_base, 0x100_0000, RW);
        let view = pagewalk::SecondStageView {
            mem: d.mem,
            config: *full.config(),
            root: full.root(),
        };
        let mut galloc = BumpAllocator::new(0x10_0000, 0x20_0000);
        let mut c = X86Config::vtd_first_stage(4);
        c.out_width = 48;
        let mut fs = TableBuilder::new(WalkConfig::VtdFirstStage(c), &view, &mut galloc).unwrap();
        let iova = 0x7000_0000u64;
        fs.map(&view, &mut galloc, iova, 0x30_0000, 0x1000, PwPerms::RW | PwPerms::U,
            PageSizePolicy::Fixed(12)).unwrap();
        // The table pages, root first, with the accessed/dirty flags of the walk's entries
        // cleared so that every level needs its A update.
        let mut pages = [0u64; 4];
        let mut table = fs.root();
        for (i, level) in (1..=4u8).rev().enumerate() {
            pages[i] = table & !0xfff;
            let (at, e) = entry_at(&view, fs.root(), iova, level);
            view.write_u64(at, e & !0x60).unwrap();
            table = e & 0x000f_ffff_ffff_f000;
        }
        let special: Vec<(u64, SsMap)> = pages
            .iter()
            .copied()
            .zip(tables)
            .chain([(0x30_0000, out)])
            .collect();
        let mut ss = d.ss_domain(2);
        let mut sorted: Vec<u64> = special.iter().map(|s| s.0).collect();
        sorted.sort_unstable();
        let mut next = 0u64;
        for &p in &sorted {
            if p > next {
                d.map(&mut ss, next, gpa_base + next, p - next, RW);
            }
            next = p + 0x1000;
        }
        d.map(&mut ss, next, gpa_base + next, 0x100_0000 - next, RW);
        for &(p, m) in &special {
            match m {
                SsMap::Rw => d.map(&mut ss, p, gpa_base + p, 0x1000, RW),
                SsMap::ReadOnly => d.map(&mut ss, p, gpa_base + p, 0x1000, R),
                SsMap::Absent => {}
            }
        }
        let dir = d.sm_context(dev, 0, true, 0);
        d.pasid_entry(dir, 1, [ss.root() | (3 << 6) | (2 << 2) | 1, 6, fs.root()]);
        let mut expected = None;
        for (i, m) in tables.iter().enumerate() {
            expected = match m {
                SsMap::Absent if i == 0 => Some(0x75),
                SsMap::Absent => Some(0x76),
                SsMap::ReadOnly => Some(0x77),
                SsMap::Rw => None,
            };
            if expected.is_some() {
                break;
            }
        }
        if expected.is_none() {
            expected = match out {
                SsMap::Absent => Some(0x79),
                SsMap::ReadOnly if write => Some(0x85),
                _ => None,
            };
        }
        let access = if write { AccessKind::Write } else { AccessKind::Read };
        let r = d.translate(DmaRequest::new(dev, iova, 4, access).with_pasid(1));
        prop_assert_eq!(r.err().map(|f| f.code), expected);
    }
}

/// The trace's capacity holds the worst translation without A/D contention: a write through an
/// uncached 5-level first stage nested over a 5-level second stage with second-stage A/D
/// (SSADE) and first-stage A/D, every cache looked up and filled. Nothing is dropped, and the
/// count is what the walk structure says it must be.
#[test]
fn the_worst_case_nested_walk_fits_the_trace() {
    use crate::trace::{TRACE_CAPACITY, WalkKind};
    let mut d = Driver::new(VtdConfig {
        fs_5level: true,
        ss_ad: true,
        sagaw: 0b1100,
        mgaw: 57,
        ..VtdConfig::default()
    });
    d.set_root(true);
    d.enable_qi(false);
    d.enable_translation();
    let dev = sid(0, 10, 0);
    // Second stage, 5-level (AW = 3) with A/D tracking: GPA 0..16 MiB -> SPA 0x4000_0000.
    let levels = VtdSsConfig::levels_for_aw(3).unwrap();
    let mut ssc = VtdSsConfig::new(levels).with_haw(48);
    ssc.slade = true;
    let mut ss = TableBuilder::new(WalkConfig::VtdSecondStage(ssc), d.mem, &mut d.alloc).unwrap();
    let gpa_base = 0x4000_0000u64;
    d.map(&mut ss, 0, gpa_base, 0x100_0000, RW);
    // First stage, 5-level, in guest memory.
    let view = pagewalk::SecondStageView {
        mem: d.mem,
        config: *ss.config(),
        root: ss.root(),
    };
    let mut galloc = BumpAllocator::new(0x10_0000, 0x20_0000);
    let mut c = X86Config::vtd_first_stage(5);
    c.out_width = 48;
    let mut fs = TableBuilder::new(WalkConfig::VtdFirstStage(c), &view, &mut galloc).unwrap();
    let iova = 0x00ff_0000_7000_0000u64;
    fs.map(
        &view,
        &mut galloc,
        iova,
        0x30_0000,
        0x1000,
        PwPerms::RW | PwPerms::U,
        PageSizePolicy::Fixed(12),
    )
    .unwrap();
    let dir = d.sm_context(dev, 0, true, 0);
    // PGTT = 011b (nested), AW = 3 (5-level), SSADE (bit 9); FSPM = 01b (5-level).
    d.pasid_entry(
        dir,
        4,
        [
            ss.root() | (1 << 9) | (3 << 6) | (3 << 2) | 1,
            2,
            fs.root() | (1 << 2),
        ],
    );
    let (r, trace) = d
        .vtd
        .translate(&DmaRequest::new(dev, iova | 0x44, 4, AccessKind::Write).with_pasid(4));
    assert_eq!(r.unwrap().addr, gpa_base + 0x30_0044);
    assert!(!trace.overflowed(), "{} dropped", trace.dropped());
    let n = trace.events().len();
    // Four structure reads; for each of the five first-stage levels a 5-level second-stage walk
    // of the table's address (5 reads, 5 A updates), the entry read and its A (and at the
    // leaf, D) update preceded by the second-stage D update of the page holding it; the final
    // 5-level second-stage walk of the output (5 reads, 5 A/D updates).
    let reads = trace.mem_reads();
    let writes = trace
        .events()
        .iter()
        .filter(|e| matches!(e, TraceEvent::MemWrite { .. }))
        .count();
    assert_eq!(reads, 4 + 5 * (5 + 1) + 5, "{:?}", trace.events());
    // The first-stage entries' A (and the leaf's D) flags, and the D flags of the output's
    // second-stage path, were set by this walk; the builder left A set elsewhere.
    assert!(writes >= 6, "{writes} A/D updates: {:?}", trace.events());
    assert_eq!(
        trace
            .events()
            .iter()
            .filter(|e| matches!(
                e,
                TraceEvent::WalkStart {
                    kind: WalkKind::Nested,
                    level: 5
                }
            ))
            .count(),
        1
    );
    // With every A/D flag clear, each table-entry read could bring one more update: the
    // capacity holds that bound with room for retried updates.
    let bound = n + (reads - 4 - writes);
    assert!(
        bound * 3 / 2 <= TRACE_CAPACITY,
        "{bound} events of {TRACE_CAPACITY}"
    );
    eprintln!("worst-case nested trace: {n} events ({reads} reads, {writes} writes)");
}

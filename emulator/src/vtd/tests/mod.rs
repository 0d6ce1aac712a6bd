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

// Fixtures shared by the topics.

fn legacy_with_domain() -> (Driver, TableBuilder, u16) {
    legacy_with_domain_on(VtdConfig::default())
}

/// [`legacy_with_domain`] on a unit configured as `cfg`.
fn legacy_with_domain_on(cfg: VtdConfig) -> (Driver, TableBuilder, u16) {
    let mut d = Driver::new(cfg);
    d.set_root(false);
    let mut t = d.ss_domain(2);
    let dev = sid(0, 3, 0);
    d.map(&mut t, 0x10_0000, 0x9000_0000, 0x4000, RW);
    d.map(&mut t, 0x20_0000, 0x9100_0000, 0x1000, R);
    d.attach_legacy(dev, 5, &t);
    d.enable_translation();
    (d, t, dev)
}

/// A unit in scalable mode, with its queue of 256-bit descriptors as scalable mode requires
/// (IQA.DW = 1, §10.4.24; Linux sets it whenever ECAP.SMTS is reported).
fn scalable() -> Driver {
    let mut d = Driver::new(VtdConfig::default());
    d.set_root(true);
    d.enable_qi(true);
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

mod faults;
mod legacy;
mod properties;
mod queue;

/// First-stage tables of `levels` levels (x86 format, 48-bit output) built in guest memory as
/// the second stage `ss` maps it: the view of that memory, the allocator of its table pages
/// (guest-physical 1 MiB to 2 MiB) and the builder.
fn guest_first_stage(
    d: &Driver,
    ss: &TableBuilder,
    levels: u8,
) -> (
    pagewalk::SecondStageView<'static, SparseMem>,
    BumpAllocator,
    TableBuilder,
) {
    let view = pagewalk::SecondStageView {
        mem: d.mem,
        config: *ss.config(),
        root: ss.root(),
    };
    let mut galloc = BumpAllocator::new(0x10_0000, 0x20_0000);
    let mut c = X86Config::vtd_first_stage(levels);
    c.out_width = 48;
    let fs = TableBuilder::new(WalkConfig::VtdFirstStage(c), &view, &mut galloc).unwrap();
    (view, galloc, fs)
}

mod registers;
mod reset;
mod scalable;
mod trace_bounds;

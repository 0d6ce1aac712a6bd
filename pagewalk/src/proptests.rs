//! Property tests: the builder and the walker against a plain `BTreeMap` model, and nested walks
//! against the composition of two one-dimensional walks.

use std::collections::BTreeMap;

use proptest::prelude::*;

use crate::builder::{BuildError, BumpAllocator, PageSizePolicy, Reclaim, TableBuilder};
use crate::format::{AmdV1Config, VtdSsConfig, WalkConfig, X86Config};
use crate::mem::{MemError, SparseMem};
use crate::nested::{
    SecondStage, SecondStageStart, SecondStageView, walk_nested, walk_nested_cached,
};
use crate::observer::{MemRef, TableVisit, WalkObserver};
use crate::types::{
    Access, AccessKind, FaultKind, NestedPhase, Perms, Stage, WalkStart, level_shift,
};
use crate::walk::walk;

/// Counts a walk's references and keeps the second-stage non-leaf entries it visits.
#[derive(Default)]
struct SsVisits {
    refs: usize,
    visits: Vec<TableVisit>,
}

impl WalkObserver for SsVisits {
    fn mem_ref(&mut self, _r: MemRef) {
        self.refs += 1;
    }
    fn table(&mut self, v: TableVisit) {
        if v.stage == Stage::Second {
            self.visits.push(v);
        }
    }
}

/// A second-stage paging-structure cache that never forgets: every non-leaf entry a walk
/// visited, by level and input prefix; a walk starts below the deepest one covering it.
#[derive(Default)]
struct SsMemo {
    levels: u8,
    entries: std::collections::HashMap<(u8, u64), TableVisit>,
}

impl SsMemo {
    fn fill(&mut self, visits: &[TableVisit]) {
        for v in visits {
            self.entries.insert((v.level, v.prefix), *v);
        }
    }
}

impl SecondStageStart<SsVisits> for SsMemo {
    fn start(&mut self, _obs: &mut SsVisits, gpa: u64) -> Option<WalkStart> {
        for level in 2..=self.levels {
            let prefix = gpa & !((1u64 << level_shift(level)) - 1);
            if let Some(v) = self.entries.get(&(level, prefix)) {
                // An AMD-Vi v1 entry that skips levels serves only inputs whose skipped index
                // bits are zero.
                let skipped = ((1u64 << level_shift(level)) - 1)
                    & !((1u64 << level_shift(v.next_level + 1)) - 1);
                return (gpa & skipped == 0).then_some(WalkStart {
                    level: v.next_level,
                    table: v.next_table,
                    perms: v.perms,
                });
            }
        }
        None
    }
}

/// The formats under test, with controls chosen so that every permission is expressible.
fn config(sel: u8) -> WalkConfig {
    match sel % 7 {
        0 => WalkConfig::VtdSecondStage(VtdSsConfig::new(4)),
        1 => WalkConfig::VtdSecondStage(VtdSsConfig::new(3)),
        2 => WalkConfig::VtdFirstStage(X86Config {
            sre: true,
            ere: true,
            wpe: true,
            ..X86Config::vtd_first_stage(4)
        }),
        3 => WalkConfig::VtdFirstStage(X86Config {
            sre: true,
            ere: true,
            wpe: true,
            ..X86Config::vtd_first_stage(5)
        }),
        4 => WalkConfig::AmdV1(AmdV1Config::new(3)),
        5 => WalkConfig::AmdV1(AmdV1Config::new(4)),
        _ => WalkConfig::AmdV2(X86Config::amd_v2(4)),
    }
}

/// What the model says the tables grant for requested permissions (each format's rules,
/// written here from the spec, not taken from the builder).
fn model_perms(cfg: &WalkConfig, p: Perms) -> Option<Perms> {
    match cfg {
        WalkConfig::VtdSecondStage(_) => {
            // No SLEE: X follows R; no U/S.
            if !p.read() && !p.write() {
                return None;
            }
            let mut q = Perms::U | (p & Perms::RW);
            if p.read() {
                q |= Perms::X;
            }
            Some(q)
        }
        WalkConfig::VtdFirstStage(_) | WalkConfig::AmdV2(_) => p.read().then_some(p),
        WalkConfig::AmdV1(_) => {
            let mut q = Perms::U | (p & Perms::RW);
            if p.read() {
                q |= Perms::X;
            }
            Some(q)
        }
    }
}

/// Whether the model allows `a` on a page with effective permissions `p`.
fn model_allows(cfg: &WalkConfig, p: Perms, a: Access) -> bool {
    let x86_smep = match cfg {
        WalkConfig::VtdFirstStage(c) | WalkConfig::AmdV2(c) => Some(c.smep),
        _ => None,
    };
    if let Some(smep) = x86_smep {
        if !a.privileged && !p.user() {
            return false;
        }
        return match a.kind {
            AccessKind::Read | AccessKind::ZeroLengthRead => p.read(),
            AccessKind::Write => p.write(),
            AccessKind::Execute => p.execute() && !(a.privileged && smep && p.user()),
        };
    }
    match a.kind {
        AccessKind::Read => p.read(),
        AccessKind::Write => p.write(),
        AccessKind::Execute => p.execute(),
        AccessKind::ZeroLengthRead => p.read() || p.write(),
    }
}

#[derive(Debug, Clone, Copy)]
struct Range {
    len: u64,
    phys: u64,
    perms: Perms,
    /// Page size if fixed.
    fixed: Option<u8>,
}

#[derive(Debug, Clone)]
enum Op {
    Map {
        n: u64,
        big_align: bool,
        m: u64,
        pages: u64,
        perms: u8,
        policy: u8,
    },
    UnmapExisting(usize),
    UnmapPart(usize, u64, u64),
    UnmapAll,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u64..64, any::<bool>(), 0u64..64, 1u64..1100, 0u8..16, 0u8..4).prop_map(
            |(n, big_align, m, pages, perms, policy)| Op::Map { n, big_align, m, pages, perms, policy }
        ),
        2 => any::<usize>().prop_map(Op::UnmapExisting),
        1 => (any::<usize>(), 0u64..64, 1u64..64).prop_map(|(i, a, b)| Op::UnmapPart(i, a, b)),
        1 => Just(Op::UnmapAll),
    ]
}

fn model_lookup(model: &BTreeMap<u64, Range>, a: u64) -> Option<(u64, Range)> {
    let (&s, r) = model.range(..=a).next_back()?;
    (a < s + r.len).then_some((s, *r))
}

fn overlaps(model: &BTreeMap<u64, Range>, s: u64, len: u64) -> bool {
    model.iter().any(|(&k, r)| k < s + len && s < k + r.len)
}

fn access(sel: u8) -> Access {
    let kind = match sel % 3 {
        0 => AccessKind::Read,
        1 => AccessKind::Write,
        _ => AccessKind::Execute,
    };
    Access {
        kind,
        privileged: sel & 4 != 0,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn builder_and_walker_agree_with_a_btreemap(
        fmt in 0u8..7,
        covered in any::<bool>(),
        ops in prop::collection::vec(op(), 1..24),
        probes in prop::collection::vec((0u64..(1 << 27), 0u8..8), 48),
    ) {
        let cfg = config(fmt);
        let mem = SparseMem::new(1 << 40);
        let mut alloc = BumpAllocator::new(0x80_0000_0000, 0x81_0000_0000);
        let reclaim = if covered { Reclaim::Covered } else { Reclaim::Empty };
        let mut b = TableBuilder::new(cfg, &mem, &mut alloc).unwrap().with_reclaim(reclaim);
        let mut model: BTreeMap<u64, Range> = BTreeMap::new();
        let is_amd_v1 = matches!(cfg, WalkConfig::AmdV1(_));
        for op in ops {
            match op {
                Op::Map { n, big_align, m, pages, perms, policy } => {
                    let perms = Perms::from_bits_truncate(perms);
                    let (policy, unit, len) = match policy {
                        0 => (PageSizePolicy::Fixed(12), 0x1000u64, (pages % 24 + 1) * 0x1000),
                        1 => (PageSizePolicy::Fixed(21), 0x20_0000, (pages % 3 + 1) * 0x20_0000),
                        2 if is_amd_v1 => (PageSizePolicy::Fixed(16), 0x1_0000, (pages % 40 + 1) * 0x1_0000),
                        _ => (PageSizePolicy::LARGEST, if big_align { 0x20_0000 } else { 0x1000 }, pages * 0x1000),
                    };
                    let iova = n * unit.max(0x20_0000) + if big_align { 0 } else { (m % 8) * unit };
                    let phys = m * unit.max(0x20_0000);
                    let r = b.map(&mem, &mut alloc, iova, phys, len, perms, policy);
                    match model_perms(&cfg, perms) {
                        None => prop_assert_eq!(r, Err(BuildError::UnsupportedPerms(perms))),
                        Some(p) if overlaps(&model, iova, len) => {
                            prop_assert!(matches!(r, Err(BuildError::Overlap { .. })), "{:?}", r);
                            let _ = p;
                        }
                        Some(p) => {
                            prop_assert_eq!(r, Ok(()));
                            let fixed = match policy {
                                PageSizePolicy::Fixed(s) => Some(s),
                                _ => None,
                            };
                            model.insert(iova, Range { len, phys, perms: p, fixed });
                        }
                    }
                }
                Op::UnmapExisting(i) => {
                    if model.is_empty() { continue; }
                    let (&s, r) = model.iter().nth(i % model.len()).unwrap();
                    let r = *r;
                    let gone = b.unmap(&mem, &mut alloc, s, r.len).unwrap();
                    let total: u64 = gone.iter().map(|m| 1u64 << m.shift).sum();
                    prop_assert_eq!(total, r.len);
                    for g in &gone {
                        prop_assert_eq!(g.phys, r.phys + (g.iova - s));
                        prop_assert_eq!(g.perms, r.perms);
                    }
                    model.remove(&s);
                }
                Op::UnmapPart(i, a, l) => {
                    // Only 4 KiB-page ranges can be cut anywhere.
                    let small: Vec<(u64, Range)> = model.iter()
                        .filter(|(_, r)| r.fixed == Some(12)).map(|(k, r)| (*k, *r)).collect();
                    if small.is_empty() { continue; }
                    let (s, r) = small[i % small.len()];
                    let pages = r.len / 0x1000;
                    let first = a % pages;
                    let count = (l % (pages - first)).max(1);
                    let cut = s + first * 0x1000;
                    let gone = b.unmap(&mem, &mut alloc, cut, count * 0x1000).unwrap();
                    prop_assert_eq!(gone.len() as u64, count);
                    model.remove(&s);
                    if first > 0 {
                        model.insert(s, Range { len: first * 0x1000, ..r });
                    }
                    let rest = pages - first - count;
                    if rest > 0 {
                        let ns = cut + count * 0x1000;
                        model.insert(ns, Range { len: rest * 0x1000, phys: r.phys + (ns - s), ..r });
                    }
                }
                Op::UnmapAll => {
                    let gone = b.unmap(&mem, &mut alloc, 0, 1 << 32).unwrap();
                    let total: u64 = gone.iter().map(|m| 1u64 << m.shift).sum();
                    prop_assert_eq!(total, model.values().map(|r| r.len).sum::<u64>());
                    model.clear();
                    if covered {
                        // Only tables wider than the 4 GiB unmapped stay: at most one per
                        // level below the root.
                        prop_assert!(alloc.in_use() <= usize::from(cfg.levels()), "{}", alloc.in_use());
                    } else {
                        prop_assert_eq!(alloc.in_use(), 1, "empty tables freed");
                    }
                }
            }
        }
        // Probe: random addresses plus the first, last and next byte of every range.
        let mut addrs: Vec<(u64, u8)> = probes.clone();
        for (&s, r) in &model {
            addrs.push((s, 0));
            addrs.push((s + r.len - 1, 1));
            addrs.push((s + r.len, 2));
            addrs.push((s + r.len / 2, 6));
        }
        for (a, acc) in addrs {
            let acc = access(acc);
            let got = walk(&cfg, &mem, b.root(), a, acc, &mut ());
            match model_lookup(&model, a) {
                None => {
                    let e = got.unwrap_err();
                    prop_assert_eq!(e.kind, FaultKind::NotPresent, "{:#x}", a);
                }
                Some((s, r)) => {
                    if model_allows(&cfg, r.perms, acc) {
                        let t = got.unwrap();
                        prop_assert_eq!(t.output, r.phys + (a - s), "{:#x}", a);
                        prop_assert_eq!(t.perms, r.perms);
                        // The page lies inside the mapped range, at matching offsets.
                        let size = 1u64 << t.page_shift;
                        let page = a & !(size - 1);
                        prop_assert!(page >= s && page + size <= s + r.len);
                        if let Some(f) = r.fixed {
                            prop_assert_eq!(t.page_shift, f);
                        }
                    } else {
                        let e = got.unwrap_err();
                        prop_assert_eq!(e.kind, FaultKind::Permission, "{:#x} {:?}", a, acc);
                    }
                }
            }
        }
        // The builder's own view agrees with the model too.
        let maps = b.mappings(&mem).unwrap();
        let total: u64 = maps.iter().map(|m| 1u64 << m.shift).sum();
        prop_assert_eq!(total, model.values().map(|r| r.len).sum::<u64>());
        b.destroy(&mem, &mut alloc).unwrap();
        prop_assert_eq!(alloc.in_use(), 0);
    }

    /// Also: the same walk with every second-stage walk started from a second-stage cache
    /// filled by the walks before it gives the same answer (or fault) in no more references.
    #[test]
    fn nested_walk_is_the_composition_of_two_1d_walks(
        pair in 0u8..3,
        ss_maps in prop::collection::vec((0u64..96, 0u64..64, 1u64..1100, 0u8..8), 1..16),
        fs_maps in prop::collection::vec((0u64..256, 0u64..96, 1u64..1100, 0u8..16), 1..12),
        ss_tables_rw in any::<bool>(),
        probes in prop::collection::vec((any::<usize>(), 0u64..(1 << 22), 0u8..8), 64),
    ) {
        let (fs_cfg, ss_cfg) = match pair {
            0 => (WalkConfig::VtdFirstStage(X86Config { ad: false, sre: true, ere: true, ..X86Config::vtd_first_stage(4) }),
                  Some(WalkConfig::VtdSecondStage(VtdSsConfig::new(4)))),
            1 => (WalkConfig::AmdV2(X86Config { ad: false, ..X86Config::amd_v2(4) }),
                  Some(WalkConfig::AmdV1(AmdV1Config::new(3)))),
            _ => (WalkConfig::AmdV2(X86Config { ad: false, ..X86Config::amd_v2(5) }), None),
        };
        let mem = SparseMem::new(1 << 40);
        // First-stage tables live at guest-physical [256 MiB, 272 MiB).
        let (fs_lo, fs_hi) = (0x1000_0000u64, 0x1100_0000u64);
        let (second, ss_root) = match ss_cfg {
            Some(ss) => {
                let mut ss_alloc = BumpAllocator::new(0x80_0000_0000, 0x81_0000_0000);
                let mut ssb = TableBuilder::new(ss, &mem, &mut ss_alloc).unwrap();
                let tp = if ss_tables_rw { Perms::RW } else { Perms::R };
                ssb.map(&mem, &mut ss_alloc, fs_lo, 0x40_0000_0000, fs_hi - fs_lo, Perms::RW, PageSizePolicy::LARGEST).unwrap();
                if !ss_tables_rw {
                    ssb.unmap(&mem, &mut ss_alloc, fs_lo, fs_hi - fs_lo).unwrap();
                    ssb.map(&mem, &mut ss_alloc, fs_lo, 0x40_0000_0000, fs_hi - fs_lo, tp, PageSizePolicy::Fixed(12)).unwrap();
                }
                // Random data mappings below the table region (overlaps simply refused).
                for (n, m, pages, p) in ss_maps {
                    let perms = [Perms::R, Perms::RW, Perms::W, Perms::RW][p as usize % 4];
                    let policy = if p >= 4 { PageSizePolicy::Fixed(12) } else { PageSizePolicy::LARGEST };
                    let _ = ssb.map(&mem, &mut ss_alloc, n * 0x20_0000, 0x1_0000_0000 + m * 0x20_0000, pages * 0x1000, perms, policy);
                }
                (SecondStage::Tables { config: ss, root: ssb.root() }, ssb.root())
            }
            None => (SecondStage::Identity, 0),
        };
        // Build the first stage through the second stage (or directly, for identity).
        let fs_root = {
            let build = |m: &dyn crate::mem::PhysMem| -> u64 {
                let mut fs_alloc = BumpAllocator::new(fs_lo, fs_hi);
                let mut fsb = TableBuilder::new(fs_cfg, &m, &mut fs_alloc).unwrap();
                for &(n, gm, pages, p) in &fs_maps {
                    let perms = Perms::from_bits_truncate(p) | Perms::R;
                    let _ = fsb.map(&m, &mut fs_alloc, n * 0x40_0000, gm * 0x20_0000, pages * 0x1000, perms, PageSizePolicy::LARGEST);
                }
                fsb.root()
            };
            match ss_cfg {
                Some(ss) => {
                    // Build with a writable view, whatever the final table permissions.
                    let view = SecondStageView { mem: &mem, config: ss, root: ss_root };
                    if ss_tables_rw {
                        build(&view)
                    } else {
                        // Read-only tables cannot be written through the view: build them at
                        // the same guest addresses through their fixed system location.
                        let shifted = Offset { mem: &mem, delta: 0x40_0000_0000 - fs_lo, lo: fs_lo, hi: fs_hi };
                        build(&shifted)
                    }
                }
                None => build(&mem),
            }
        };
        let mut memo = SsMemo { levels: ss_cfg.map_or(0, |c| c.levels()), ..SsMemo::default() };
        // Walks that got past their first second-stage walk, and the references they made
        // cold and warm.
        let (mut past_first, mut cold_refs, mut warm_refs) = (0, 0, 0);
        for (i, off, a) in probes {
            // Near a first-stage mapping (in it or just past it), or anywhere below 4 GiB.
            let (n, _, pages, _) = fs_maps[i % fs_maps.len()];
            let iova = if a & 1 == 0 {
                n * 0x40_0000 + off % (pages * 0x1000 + 0x2000)
            } else {
                off << 10
            };
            let acc = access(a >> 1);
            let mut cold = SsVisits::default();
            let nested = walk_nested(&fs_cfg, fs_root, &second, &mem, iova, acc, &mut cold);
            let mut warm = SsVisits::default();
            let cached = walk_nested_cached(&fs_cfg, fs_cfg.root_start(fs_root), &second, &mem, iova, acc, &mut warm, &mut memo);
            prop_assert_eq!(&cached, &nested);
            prop_assert!(warm.refs <= cold.refs, "{} > {}", warm.refs, cold.refs);
            memo.fill(&warm.visits);
            if cold.refs > usize::from(memo.levels) {
                past_first += 1;
                cold_refs += cold.refs;
                warm_refs += warm.refs;
            }
            match ss_cfg {
                None => {
                    let one = walk(&fs_cfg, &mem, fs_root, iova, acc, &mut ());
                    prop_assert_eq!(nested.map(|t| (t.output, t.page_shift, t.perms)), one.map(|t| (t.output, t.page_shift, t.perms)));
                }
                Some(ss) => {
                    let view = SecondStageView { mem: &mem, config: ss, root: ss_root };
                    let first = walk(&fs_cfg, &view, fs_root, iova, acc, &mut ());
                    match first {
                        Err(e) if matches!(e.kind, FaultKind::MemoryRead(MemError::Unmapped(_))) => {
                            let n = nested.unwrap_err();
                            prop_assert_eq!(n.stage, Stage::Second);
                            let in_table = matches!(n.nested, Some(NestedPhase::FirstStageTable { .. }));
                            prop_assert!(in_table, "{:?}", n);
                        }
                        Err(e) => {
                            let n = nested.unwrap_err();
                            prop_assert_eq!((n.stage, n.kind, n.level, n.input), (Stage::First, e.kind, e.level, iova));
                        }
                        Ok(f) => {
                            let s = walk(&ss, &mem, ss_root, f.output, acc, &mut ());
                            match s {
                                Err(e) => {
                                    let n = nested.unwrap_err();
                                    prop_assert_eq!((n.stage, n.kind, n.level, n.input), (Stage::Second, e.kind, e.level, f.output));
                                    prop_assert_eq!(n.nested, Some(NestedPhase::FinalOutput));
                                }
                                Ok(s) => {
                                    let n = nested.unwrap();
                                    prop_assert_eq!(n.output, s.output);
                                    prop_assert_eq!(n.page_shift, f.page_shift.min(s.page_shift));
                                    prop_assert_eq!(n.perms, f.perms & s.perms);
                                    prop_assert_eq!(n.first.output, f.output);
                                    prop_assert_eq!(n.second, Some(s));
                                }
                            }
                        }
                    }
                }
            }
        }
        if ss_cfg.is_some() && past_first >= 2 {
            // The first-stage root's second-stage path is cached after the first such walk.
            prop_assert!(warm_refs < cold_refs, "{} warm, {} cold", warm_refs, cold_refs);
        }
    }
}

/// A table-entry-like word made from random bits: mostly pointers into the first nine pages with
/// the low bits of present entries of each format (x86 P|RW|US, +A/D, +PS; VT-d R|W, +PS;
/// AMD-Vi PR with Next Level 0..3 and 7), sometimes high bits (IR/IW, XD, reserved) or anything.
fn entry_word(r: u64) -> u64 {
    const LOWS: [u64; 10] = [
        0x007, 0x067, 0x087, 0x003, 0x083, 0x001, 0x201, 0x401, 0x601, 0xe01,
    ];
    const HIGHS: [u64; 8] = [0, 0, 0, 0, 3 << 61, 1 << 61, 1 << 63, 1 << 55];
    match r % 10 {
        0 => 0,
        1 => r,
        _ => {
            let page = (r >> 8) % 9;
            let low = match (r >> 16) % 12 {
                i @ 0..10 => LOWS[i as usize],
                _ => (r >> 20) & 0xfff,
            };
            (page << 12) | low | HIGHS[((r >> 32) % 8) as usize]
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 160, ..ProptestConfig::default() })]

    /// Arbitrary memory contents in every format: no panic, bounded references, self-consistent
    /// results (see `fuzz_support::check_walks`).
    #[test]
    fn arbitrary_memory_never_breaks_a_walk(
        header in prop::collection::vec(any::<u8>(), crate::fuzz_support::HEADER),
        words in prop::collection::vec(any::<u64>(), (8 * 512)..(9 * 512)),
    ) {
        let mut data = header;
        for w in words {
            data.extend_from_slice(&entry_word(w).to_le_bytes());
        }
        crate::fuzz_support::check_walks(&data);
    }
}

/// Memory at `[lo, hi)` relocated by `delta` (test helper for building tables in place).
struct Offset<'a> {
    mem: &'a SparseMem,
    delta: u64,
    lo: u64,
    hi: u64,
}

impl Offset<'_> {
    fn at(&self, a: u64) -> Result<u64, MemError> {
        if a >= self.lo && a < self.hi {
            Ok(a + self.delta)
        } else {
            Err(MemError::Unmapped(a))
        }
    }
}

impl crate::mem::PhysMem for Offset<'_> {
    fn read_u64(&self, a: u64) -> Result<u64, MemError> {
        self.mem.read_u64(self.at(a)?)
    }
    fn write_u64(&self, a: u64, v: u64) -> Result<(), MemError> {
        self.mem.write_u64(self.at(a)?, v)
    }
    fn compare_exchange_u64(&self, a: u64, c: u64, n: u64) -> Result<Result<u64, u64>, MemError> {
        self.mem.compare_exchange_u64(self.at(a)?, c, n)
    }
    fn write_u32(&self, a: u64, v: u32) -> Result<(), MemError> {
        self.mem.write_u32(self.at(a)?, v)
    }
    fn read_u32(&self, a: u64) -> Result<u32, MemError> {
        self.mem.read_u32(self.at(a)?)
    }
}

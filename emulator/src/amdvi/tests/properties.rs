//! Properties: random programming sequences with the invalidations the spec requires never
//! give a translation the current tables would not; two-dimensional results equal the
//! composition of the two one-dimensional walks.

use proptest::prelude::*;

use super::*;
use command::encode;

const DEV: u16 = 0x20;

#[derive(Debug, Clone)]
enum Op {
    /// Map page `page` of table set `set` to frame `frame` with `write`.
    Map {
        set: usize,
        page: u64,
        frame: u64,
        write: bool,
    },
    /// Unmap page `page` of table set `set`, then invalidate it in that set's domain.
    Unmap { set: usize, page: u64 },
    /// Point the device at table set `set` (DTE write, then the DTE and both domains
    /// invalidated).
    Switch { set: usize },
    /// Translate page `page` (+ offset) for reading or writing.
    Translate { page: u64, off: u64, write: bool },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..2usize, 0..16u64, 0..64u64, any::<bool>()).prop_map(|(set, page, frame, write)| {
            Op::Map {
                set,
                page,
                frame,
                write,
            }
        }),
        (0..2usize, 0..16u64).prop_map(|(set, page)| Op::Unmap { set, page }),
        (0..2usize).prop_map(|set| Op::Switch { set }),
        (0..16u64, 0..4096u64, any::<bool>()).prop_map(|(page, off, write)| Op::Translate {
            page,
            off,
            write
        }),
    ]
}

/// Input page `page` of the test's address space: spread over levels so walks share and
/// skip page directories.
fn iova(page: u64) -> u64 {
    ((page & 3) << 12) | ((page >> 2) << 30)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn translations_always_equal_a_walk_of_the_current_tables(ops in prop::collection::vec(op(), 1..60)) {
        let mut s = Sw::new();
        let mut sets = [s.v1_tables(4), s.v1_tables(4)];
        let mut mapped = [std::collections::BTreeSet::new(), std::collections::BTreeSet::new()];
        let did = |set: usize| 10 + set as u16;
        let mut cur = 0usize;
        s.set_dte(DEV, [dte_q0(4, sets[0].root(), true, true), u64::from(did(0)), 0, 0]);
        for op in ops {
            match op {
                Op::Map { set, page, frame, write } => {
                    if mapped[set].insert(page) {
                        let perms = if write { PwPerms::RW } else { PwPerms::R };
                        let t = &mut sets[set];
                        t.map(s.mem, &mut s.alloc, iova(page), 0x4000_0000 + frame * 0x1000,
                            0x1000, perms, PageSizePolicy::LARGEST).unwrap();
                    }
                }
                Op::Unmap { set, page } => {
                    if mapped[set].remove(&page) {
                        sets[set].unmap(s.mem, &mut s.alloc, iova(page), 0x1000).unwrap();
                        s.submit(&[encode::invalidate_range(did(set), None, iova(page), 0x1000)]);
                    }
                }
                Op::Switch { set } => {
                    s.set_dte(DEV, [dte_q0(4, sets[set].root(), true, true), u64::from(did(set)), 0, 0]);
                    s.submit(&[
                        encode::invalidate_devtab_entry(DEV),
                        encode::invalidate_domain(did(cur), None),
                        encode::invalidate_domain(did(set), None),
                    ]);
                    cur = set;
                }
                Op::Translate { page, off, write } => {
                    let access = if write { AccessKind::Write } else { AccessKind::Read };
                    let addr = iova(page) + off;
                    let got = s.translate(&DmaRequest::new(DEV, addr, 1, access)).map(|t| t.addr);
                    let cfg = WalkConfig::AmdV1(AmdV1Config::new(4));
                    let pw = if write { pagewalk::Access::WRITE } else { pagewalk::Access::READ };
                    let want = pagewalk::walk(&cfg, s.mem, sets[cur].root(), addr, pw, &mut ())
                        .map(|t| t.output);
                    prop_assert_eq!(got.ok(), want.ok(), "{:#x} {:?}", addr, access);
                    s.drain_raw();
                }
            }
        }
    }

    #[test]
    fn nested_results_equal_the_composition_of_the_two_walks(
        guest in prop::collection::btree_map(0..32u64, (0..32u64, any::<bool>()), 1..24),
        host in prop::collection::btree_map(0..32u64, any::<bool>(), 1..32),
        probes in prop::collection::vec((0..32u64, any::<bool>()), 1..24),
    ) {
        let mut s = Sw::new();
        const OFF: u64 = 0x4000_0000;
        // Guest-physical memory: the guest's tables at [0, 4 MiB) (always host-mapped), data
        // pages at 8 MiB + n * 4 KiB (host-mapped as `host` says).
        let mut h = s.v1_tables(4);
        s.map(&mut h, 0, OFF, 4 << 20, PwPerms::RW);
        for (&n, &w) in &host {
            let p = if w { PwPerms::RW } else { PwPerms::R };
            s.map(&mut h, (8 << 20) + n * 0x1000, OFF + (8 << 20) + n * 0x1000, 0x1000, p);
        }
        let gmem = Shifted { mem: s.mem, off: OFF };
        let mut galloc = BumpAllocator::new(0x1000, 4 << 20);
        let gcfg = WalkConfig::AmdV2(X86Config::amd_v2(4));
        let mut g = TableBuilder::new(gcfg, &gmem, &mut galloc).unwrap();
        for (&page, &(n, w)) in &guest {
            let p = if w { PwPerms::RW | PwPerms::U } else { PwPerms::R | PwPerms::U };
            g.map(&gmem, &mut galloc, page << 21, (8 << 20) + n * 0x1000, 0x1000, p,
                PageSizePolicy::LARGEST).unwrap();
        }
        let gcr3 = galloc.alloc_frame().unwrap();
        for i in 0..512 {
            gmem.write_u64(gcr3 + 8 * i, 0).unwrap();
        }
        gmem.write_u64(gcr3, g.root() | 1).unwrap();
        let [q0, q1] = dte_guest(dte_q0(4, h.root(), true, true), 0, gcr3, 3);
        s.set_dte(DEV, [q0, q1, 0, 0]);
        let hcfg = WalkConfig::AmdV1(AmdV1Config::new(4));
        for (page, write) in probes {
            let gva = (page << 21) | 0x18;
            let access = if write { AccessKind::Write } else { AccessKind::Read };
            let pw = if write { pagewalk::Access::WRITE } else { pagewalk::Access::READ };
            let got = s.translate(&DmaRequest::new(DEV, gva, 1, access).with_pasid(0)).map(|t| t.addr);
            // The composition: the guest walk (its table reads through the host tables are
            // what the offset view does for always-mapped table pages), then the host walk.
            let want = pagewalk::walk(&gcfg, &gmem, g.root(), gva, pw, &mut ())
                .ok()
                .and_then(|t| pagewalk::walk(&hcfg, s.mem, h.root(), t.output, pw, &mut ()).ok())
                .map(|t| t.output);
            prop_assert_eq!(got.ok(), want, "{:#x} {:?}", gva, access);
            s.drain_raw();
        }
    }
}

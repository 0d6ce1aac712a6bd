//! Scalable mode (§3.4.3, §3.5-§3.8): scalable context and PASID entries, first-stage, second-stage and
//! nested translation, PASID-cache invalidation, concurrency.

use super::*;

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
    // Second-stage not present (SSS.2) and beyond AW (SGN.5, 84h; see
    // `FaultReason::SmAddressBeyondAw`).
    let t = d.ss_domain(2);
    d.pasid_entry(dir, 9, ss_pasid(&t, 3));
    assert_eq!(code(&d, r(9)), 0x79);
    let mut big = r(9);
    big.addr = 1 << 50;
    assert_eq!(code(&d, big), 0x84);
    // The fault record carries the PASID.
    let [_, hi] = d.frcd(0);
    assert_ne!(hi & FRCD_PP, 0);
    assert_eq!((hi >> FRCD_PV_SHIFT) & 0xfffff, 64);
}

/// Where the second stage of [`nested_at_pasid_4`] puts guest-physical 0.
const NESTED_SPA: u64 = 0x4000_0000;

/// A nested PASID entry and its tables.
struct Nested {
    ss: TableBuilder,
    /// The PASID directory.
    dir: u64,
    view: pagewalk::SecondStageView<'static, SparseMem>,
    galloc: BumpAllocator,
    fs: TableBuilder,
}

/// `dev`'s PASID 4 in domain 2, nested: a second stage mapping GPA 0..16 MiB to
/// [`NESTED_SPA`].., and guest first-stage tables, built in that guest-physical space, mapping
/// GVA 0x7000_0000 to GPA 0x30_0000.
fn nested_at_pasid_4(d: &mut Driver, dev: u16) -> Nested {
    let mut ss = d.ss_domain(2);
    d.map(&mut ss, 0, NESTED_SPA, 0x100_0000, RW);
    let (view, mut galloc, mut fs) = guest_first_stage(d, &ss, 4);
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
    Nested {
        ss,
        dir,
        view,
        galloc,
        fs,
    }
}

/// The table reads of a trace, as (stage, level), in order.
fn table_reads(trace: &crate::trace::Trace) -> Vec<(Stage, u8)> {
    trace
        .events()
        .iter()
        .filter_map(|e| match e {
            TraceEvent::MemRead {
                target: MemTarget::PageTable { stage, level },
                ..
            } => Some((*stage, *level)),
            _ => None,
        })
        .collect()
}

/// The second-stage paging-structure-cache lookups of a trace, as (level, hit), in order.
fn ss_psc_lookups(trace: &crate::trace::Trace) -> Vec<(u8, bool)> {
    trace
        .events()
        .iter()
        .filter_map(|e| match e {
            TraceEvent::CacheLookup {
                cache:
                    CacheId::PagingStructure {
                        stage: Stage::Second,
                        level,
                    },
                hit,
            } => Some((*level, *hit)),
            _ => None,
        })
        .collect()
}

/// The second-stage walks inside a nested walk look up and fill the second-stage
/// paging-structure caches, tagged as the domain's one-dimensional second-stage walks tag
/// theirs (the DID alone: second-stage entries are PASID-independent).
///
/// Cold, a 4-over-4 walk makes 24 reads and looks up levels 2..=4 before each of its five
/// second-stage walks, all missing. Warm (a page whose first-stage path shares no cached
/// first-stage entry, so all four first-stage levels are read), each second-stage walk starts
/// from a cached second-stage PDE and reads only its leaf: 4 + 5 = 9 reads. With the
/// first-stage PDE cached too: 1 + 2 = 3 (see `scalable_nested_translation`).
#[test]
fn nested_second_stage_walks_use_the_second_stage_paging_structure_caches() {
    let mut d = scalable();
    let dev = sid(0, 8, 1);
    let Nested {
        dir,
        ss,
        view,
        mut galloc,
        mut fs,
    } = nested_at_pasid_4(&mut d, dev);
    // A second page whose first-stage path shares only the root table with the first:
    // another PML4 slot; its output in the same 2 MiB of guest-physical space.
    let far = 0x7000_0000u64 + (1 << 39);
    fs.map(
        &view,
        &mut galloc,
        far,
        0x30_5000,
        0x1000,
        PwPerms::RW | PwPerms::U,
        PageSizePolicy::Fixed(12),
    )
    .unwrap();
    let read = |d: &Driver, addr| {
        let (r, trace) = d
            .vtd
            .translate(&DmaRequest::new(dev, addr, 4, AccessKind::Read).with_pasid(4));
        (r.unwrap().addr, trace)
    };
    let (addr, cold) = read(&d, 0x7000_0010);
    assert_eq!(addr, NESTED_SPA + 0x30_0010);
    assert_eq!(table_reads(&cold).len(), 24);
    let misses: Vec<(u8, bool)> = (0..5)
        .flat_map(|_| [(2, false), (3, false), (4, false)])
        .collect();
    assert_eq!(ss_psc_lookups(&cold), misses);
    // The second-stage entries filled: levels 4 and 3 once (every address is below 512 GiB
    // and 1 GiB), level 2 for the 2 MiB of the first-stage tables and that of the output.
    let ss_fills = |trace: &crate::trace::Trace| {
        trace
            .events()
            .iter()
            .filter(|e| {
                matches!(
                    e,
                    TraceEvent::CacheFill {
                        cache: CacheId::PagingStructure {
                            stage: Stage::Second,
                            ..
                        }
                    }
                )
            })
            .count()
    };
    assert_eq!(ss_fills(&cold), 4);

    let (addr, warm) = read(&d, far | 0x20);
    assert_eq!(addr, NESTED_SPA + 0x30_5020);
    // Every second-stage walk hits its PDE at once and reads the leaf; the first stage is
    // read at every level.
    assert_eq!(ss_psc_lookups(&warm), vec![(2, true); 5]);
    let mut want = Vec::new();
    for level in (1..=4).rev() {
        want.push((Stage::Second, 1));
        want.push((Stage::First, level));
    }
    want.push((Stage::Second, 1));
    assert_eq!(table_reads(&warm), want);
    assert_eq!(warm.mem_reads(), 4 + 5);

    // A one-dimensional second-stage walk of the same domain (PASID 5, PGTT = 010b, DID 2,
    // the same tables) finds the entries the nested walks filled: it reads only its leaf.
    d.pasid_entry(dir, 5, ss_pasid(&ss, 2));
    let (r, oned) = d
        .vtd
        .translate(&DmaRequest::new(dev, 0x30_0040, 4, AccessKind::Read).with_pasid(5));
    assert_eq!(r.unwrap().addr, NESTED_SPA + 0x30_0040);
    assert_eq!(ss_psc_lookups(&oned), vec![(2, true)]);
    assert_eq!(table_reads(&oned), vec![(Stage::Second, 1)]);
}

/// A one-dimensional second-stage walk fills entries a nested walk of the same domain then
/// uses: a fresh unit whose first translation is second-stage-only, of a guest address in the
/// 2 MiB of the first-stage tables, then the nested walk: its four table-address walks start
/// from that PDE (one read each), and the output's (another 2 MiB) from the cached PDPTE (two).
#[test]
fn one_dimensional_second_stage_entries_serve_nested_walks() {
    let mut d = scalable();
    let dev = sid(0, 8, 2);
    let Nested { dir, ss, .. } = nested_at_pasid_4(&mut d, dev);
    d.pasid_entry(dir, 5, ss_pasid(&ss, 2));
    d.translate(DmaRequest::new(dev, 0x10_0000, 4, AccessKind::Read).with_pasid(5))
        .unwrap();
    let (r, trace) = d
        .vtd
        .translate(&DmaRequest::new(dev, 0x7000_0010, 4, AccessKind::Read).with_pasid(4));
    assert_eq!(r.unwrap().addr, NESTED_SPA + 0x30_0010);
    let lookups = ss_psc_lookups(&trace);
    assert_eq!(&lookups[..4], &[(2, true); 4]);
    assert_eq!(&lookups[4..], &[(2, false), (3, true)]);
    assert_eq!(table_reads(&trace).len(), 4 + 4 + 2);
}

/// After the second stage under a nested translation changes, the page-selective IOTLB
/// invalidation software issues for it (type 2, the nested DID, the guest-physical address:
/// what Linux's cache_tag_flush_range sends for a nesting parent) drops the cached
/// second-stage entries it covers with the domain's nested translations (§6.5.2.3: every
/// first-stage and nested translation of the DID), so no walk uses the old guest-physical to
/// host-physical table translation afterwards.
#[test]
fn a_second_stage_change_invalidated_page_selectively_reaches_nested_walks() {
    let mut d = scalable();
    let dev = sid(0, 8, 3);
    let Nested {
        ss,
        view,
        mut galloc,
        mut fs,
        ..
    } = nested_at_pasid_4(&mut d, dev);
    // Two pages whose outputs share the second-stage page table of GPA [2 MiB, 4 MiB).
    fs.map(
        &view,
        &mut galloc,
        0x7000_1000,
        0x30_1000,
        0x1000,
        PwPerms::RW | PwPerms::U,
        PageSizePolicy::Fixed(12),
    )
    .unwrap();
    let read = |d: &Driver, addr| {
        d.translate(DmaRequest::new(dev, addr, 4, AccessKind::Read).with_pasid(4))
            .unwrap()
            .addr
    };
    // Warm: the first-stage and second-stage paging-structure caches, the IOTLB.
    assert_eq!(read(&d, 0x7000_0000), NESTED_SPA + 0x30_0000);
    // The host moves GPA [2 MiB, 4 MiB) to new memory: a new second-stage page table, the
    // PDE switched to it. The old table stays as it was (freed memory, still readable).
    const MOVED: u64 = 0x6000_0000;
    let (pde_at, pde) = entry_at(d.mem, ss.root(), 0x30_0000, 2);
    let old_pt = pde & 0x000f_ffff_ffff_f000;
    let new_pt = d.frame();
    for i in 0..512u64 {
        let e = d.mem.read_u64(old_pt + i * 8).unwrap();
        let moved = (e & !0x000f_ffff_ffff_f000) | (MOVED + 0x20_0000 + i * 0x1000);
        d.mem.write_u64(new_pt + i * 8, moved).unwrap();
    }
    d.mem
        .write_u64(pde_at, (pde & !0x000f_ffff_ffff_f000) | new_pt)
        .unwrap();
    // Before the invalidation a walk may still go through the cached PDE (the old table):
    // the second stage's entries are cached.
    assert_eq!(read(&d, 0x7000_1000), NESTED_SPA + 0x30_1000);
    // The invalidation software owes the change: page-selective, the nested domain's DID,
    // the guest-physical 2 MiB, IH = 0 (a non-leaf entry changed).
    d.submit_and_wait(&[iotlb_page(2, 0x20_0000, 9, false)]);
    // Every later walk uses the new table: a page the IOTLB held, and one it did not.
    assert_eq!(read(&d, 0x7000_0000), MOVED + 0x30_0000);
    assert_eq!(read(&d, 0x7000_1000), MOVED + 0x30_1000);
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
    assert_eq!(read(&d, 0x7000_2000), MOVED + 0x30_2000);
}

#[test]
fn scalable_nested_translation() {
    let mut d = scalable();
    let dev = sid(0, 8, 0);
    let gpa_base = NESTED_SPA;
    let Nested {
        dir,
        view,
        mut galloc,
        mut fs,
        ..
    } = nested_at_pasid_4(&mut d, dev);
    let (r, trace) = d
        .vtd
        .translate(&DmaRequest::new(dev, 0x7000_0044, 4, AccessKind::Write).with_pasid(4));
    let t = r.unwrap();
    assert_eq!(t.addr, gpa_base + 0x30_0044);
    // 4 x 4 nested: 24 table reads after the four structure reads.
    assert_eq!(trace.mem_reads(), 4 + 24);
    // A neighbouring page starts from the cached first-stage PDE, and each second-stage walk
    // from a cached second-stage PDE: the second-stage leaf of the leaf table's address, the
    // leaf, and the second-stage leaf of the output.
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
    for level in [1, 2] {
        assert_eq!(
            trace.lookup(CacheId::PagingStructure {
                stage: Stage::Second,
                level
            }),
            (level == 2).then_some(true)
        );
    }
    assert_eq!(trace.mem_reads(), 1 + 1 + 1);
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
    d.enable_qi(true);
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

/// A page-selective IOTLB invalidation (type 2) names a second-stage input address (a GPA),
/// but a nested translation is cached by its first-stage input address: it must still be
/// dropped, as every first-stage and nested translation of the DID is (§6.5.2.3; Linux's
/// flush of a nesting parent depends on it). Review finding 1: the old translation kept being
/// served after the second stage moved the page.
#[test]
fn page_selective_invalidation_drops_the_nested_translations_of_the_domain() {
    let mut d = scalable();
    let dev = sid(0, 8, 0);
    let gpa_base = NESTED_SPA;
    let Nested { mut ss, .. } = nested_at_pasid_4(&mut d, dev);
    let req = DmaRequest::new(dev, 0x7000_0044, 4, AccessKind::Read).with_pasid(4);
    assert_eq!(d.translate(req).unwrap().addr, gpa_base + 0x30_0044);
    // The host moves the GPA page under the guest's first stage and flushes that GPA.
    d.unmap(&mut ss, 0x30_0000, 0x1000);
    d.map(&mut ss, 0x30_0000, 0x6000_0000, 0x1000, RW);
    d.submit_and_wait(&[crate::vtd::qi::encode::iotlb(IotlbGranularity::Page {
        did: 2,
        addr: 0x30_0000,
        am: 0,
        ih: false,
    })]);
    assert_eq!(d.translate(req).unwrap().addr, 0x6000_0044);
    // A second-stage-only domain still loses only the range it names.
    let other = sid(0, 9, 0);
    let mut ss3 = d.ss_domain(2);
    d.map(&mut ss3, 0, 0x5000_0000, 0x2000, RW);
    let dir3 = d.sm_context(other, 0, true, 0);
    d.pasid_entry(dir3, 0, [ss3.root() | (2 << 6) | (2 << 2) | 1, 3, 0]);
    for iova in [0x10, 0x1010] {
        d.translate(DmaRequest::new(other, iova, 4, AccessKind::Read))
            .unwrap();
    }
    d.submit_and_wait(&[crate::vtd::qi::encode::iotlb(IotlbGranularity::Page {
        did: 3,
        addr: 0x1000,
        am: 0,
        ih: false,
    })]);
    let (_, trace) = d
        .vtd
        .translate(&DmaRequest::new(other, 0x10, 4, AccessKind::Read));
    assert_eq!(
        trace.lookup(CacheId::Iotlb),
        Some(true),
        "page 0 kept its entry"
    );
    let (_, trace) = d
        .vtd
        .translate(&DmaRequest::new(other, 0x1010, 4, AccessKind::Read));
    assert_eq!(
        trace.lookup(CacheId::Iotlb),
        Some(false),
        "page 1 lost its entry"
    );
}

/// ECAP.NWFS = 0: a translation request is treated as seeking write permission, so it walks
/// for write where the page allows it and sets D (and A) before W is granted; a read-only page
/// answers W = 0 without a fault or a D update (review finding 2: W was granted on a clean
/// page and D was never set, so a device writing through its device-TLB left no dirty mark).
#[test]
fn translation_requests_set_dirty_before_granting_write() {
    let mut d = scalable();
    let dev = sid(0, 4, 0);
    let mut t = d.fs_domain();
    d.map(
        &mut t,
        0x1000,
        0x6100_0000,
        0x1000,
        PwPerms::RW | PwPerms::U,
    );
    d.map(&mut t, 0x2000, 0x6200_0000, 0x1000, PwPerms::R | PwPerms::U);
    let dir = d.sm_context(dev, 0, true, 0);
    // Device-TLB Enable in the scalable context entry (qword 0 bit 2).
    let at = d.sm_context_table(dev) + u64::from(dev & 0x7f) * 32;
    let q0 = d.mem.read_u64(at).unwrap();
    d.mem.write_u64(at, q0 | 4).unwrap();
    d.pasid_entry(dir, 1, fs_pasid(&t, 4, true, false));
    let mut ats = DmaRequest::new(dev, 0x1000, 4, AccessKind::Read).with_pasid(1);
    ats.at = AddressType::TranslationRequest;
    let tr = d.translate(ats).unwrap();
    assert_eq!(tr.addr, 0x6100_0000);
    assert!(tr.perms.read() && tr.perms.write(), "{:?}", tr.perms);
    let (_, leaf) = entry_at(d.mem, t.root(), 0x1000, 1);
    assert_eq!(leaf & 0x60, 0x60, "A and D set before W is granted");
    let ro = DmaRequest {
        addr: 0x2000,
        ..ats
    };
    let tr = d.translate(ro).unwrap();
    assert_eq!(tr.addr, 0x6200_0000);
    assert!(tr.perms.read() && !tr.perms.write(), "{:?}", tr.perms);
    let (_, leaf) = entry_at(d.mem, t.root(), 0x2000, 1);
    assert_eq!(
        leaf & 0x60,
        0x20,
        "A but no D on a page that refuses writes"
    );
    assert_eq!(d.frcd(0)[1] >> 63, 0, "nothing recorded");
}

/// A PASID-based page-selective invalidation of an upper-half canonical address (a supervisor
/// SVA or upper-half IOVA; the descriptor's ADDR is the sign-extended input address, §6.5.2.4)
/// drops the translation cached for it. Review finding 8: tags kept 48 bits of the input, the
/// invalidation all 64, so they never matched and the old page kept being served.
#[test]
fn pasid_page_invalidation_of_an_upper_half_address() {
    let mut d = scalable();
    let dev = sid(0, 5, 0);
    let mut t = d.fs_domain();
    let high = 0xffff_8000_0010_0000u64;
    d.map(&mut t, high, 0x6100_0000, 0x1000, PwPerms::RW);
    let dir = d.sm_context(dev, 0, true, 0);
    d.pasid_entry(dir, 1, fs_pasid(&t, 4, true, false));
    let req = DmaRequest::new(dev, high | 0x20, 4, AccessKind::Read)
        .with_pasid(1)
        .privileged();
    assert_eq!(d.translate(req).unwrap().addr, 0x6100_0020);
    d.unmap(&mut t, high, 0x1000);
    d.map(&mut t, high, 0x6200_0000, 0x1000, PwPerms::RW);
    d.submit_and_wait(&[piotlb_page(4, 1, high, 0)]);
    let (r, trace) = d.vtd.translate(&req);
    assert_eq!(r.unwrap().addr, 0x6200_0020);
    assert_eq!(trace.lookup(CacheId::Iotlb), Some(false));
    // The lower-half address with the same low 48 bits is another page: it stays unmapped.
    let low = DmaRequest {
        addr: 0x0000_7fff_0010_0020,
        ..req
    };
    assert_eq!(d.translate(low).unwrap_err().code, 0x71);
}

/// A unit without ECAP.RPRIVS uses 0 for a context entry's RID_PRIV (§10.4.3): requests without
/// PASID are translated as user requests through RID_PASID, not refused as invalid
/// programming. Review finding 15: the context entry faulted (SCT.4, 43h).
#[test]
fn rid_priv_is_used_as_zero_without_rprivs() {
    let mut d = scalable();
    let ecap = crate::vtd::layout::EcapReg::from_bits(d.r64(ECAP_REG));
    assert!(!ecap.rprivs());
    let dev = sid(0, 18, 0);
    let mut t = d.fs_domain();
    d.map(
        &mut t,
        0x1000,
        0x6300_0000,
        0x1000,
        PwPerms::RW | PwPerms::U,
    );
    d.map(&mut t, 0x2000, 0x6400_0000, 0x1000, PwPerms::RW);
    let dir = d.sm_context(dev, 0, false, 0);
    // RID_PRIV (qword 1 bit 20) set; the PASID entry does not allow supervisor requests.
    let at = d.sm_context_table(dev) + u64::from(dev & 0x7f) * 32;
    d.mem.write_u64(at + 8, 1 << 20).unwrap();
    d.pasid_entry(dir, 0, fs_pasid(&t, 4, false, false));
    assert_eq!(d.read(dev, 0x1010).unwrap(), 0x6300_0010);
    // A user request to a supervisor page: SGN.2, the user privilege RID_PRIV = 0 gives.
    assert_eq!(d.read(dev, 0x2000).unwrap_err().code, 0x81);
}

//! Fault reasons of nested and first-stage walks, the interrupt range, descriptor widths.

use super::*;

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
    let (view, mut galloc, mut fs) = guest_first_stage(&d, &ss, 4);
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
    // Each second stage has its own DID: second-stage paging-structure entries are tagged
    // with the DID alone, so entries with one DID are taken to share one second stage.
    let nested =
        |ss_root: u64, aw: u64, did: u64| [ss_root | (3 << 6) | (aw << 2) | 1, did, fs.root()];
    d.pasid_entry(dir, 1, nested(ss.root(), 2, 7));
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
    d.pasid_entry(dir, 2, nested(holed.root(), 2, 8));
    assert_eq!(code(&d, 2, 0x7000_0000), 0x76);
    // The output GPA unmapped: SSS.2.
    let mut no_out = d.ss_domain(2);
    d.map(&mut no_out, 0, gpa_base, 0x30_0000, RW);
    d.pasid_entry(dir, 3, nested(no_out.root(), 2, 9));
    assert_eq!(code(&d, 3, 0x7000_0000), 0x79);
    // A first-stage table pointer beyond a 39-bit second stage: SFS.5.
    let mut narrow = d.ss_domain(1);
    d.map(&mut narrow, 0, gpa_base, 0x100_0000, RW);
    d.pasid_entry(dir, 4, nested(narrow.root(), 1, 10));
    assert_eq!(
        d.translate(DmaRequest::new(dev, 0x7000_0010, 4, AccessKind::Read).with_pasid(4))
            .unwrap()
            .addr,
        gpa_base + 0x30_0010
    );
    let (at, _) = entry_at(&view, fs.root(), 0x7000_0000, 4);
    view.write_u64(at, (pml4e & !0x000f_ffff_ffff_f000) | (1 << 40))
        .unwrap();
    d.submit(&[piotlb_pasid(10, 4), pc_pasid(10, 4)]);
    assert_eq!(code(&d, 4, 0x7000_0000), 0x74);
}

/// Nested translation whose final output (the first-stage leaf's guest-physical page) is
/// beyond the second stage's address width: the second stage's input-address condition, SGN.5
/// (84h), as for a second-stage-only translation, not SFS.5 (74h, a first-stage *table*
/// address beyond it, as SFS.6/SFS.7 are for table reads the second stage denies while the
/// final output's are SGN.7) and not SGN.4 (83h, the host-address-width condition). Review
/// finding 14 (last bullet); see `FaultReason::SmAddressBeyondAw`.
#[test]
fn nested_final_output_beyond_the_second_stage_width_is_sgn_5() {
    let mut d = scalable();
    let dev = sid(0, 13, 0);
    let gpa_base = 0x4000_0000u64;
    // A 39-bit (3-level) second stage mapping guest-physical 0..16 MiB.
    let mut ss = d.ss_domain(1);
    d.map(&mut ss, 0, gpa_base, 0x100_0000, RW);
    let (view, mut galloc, mut fs) = guest_first_stage(&d, &ss, 4);
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
    d.pasid_entry(dir, 1, [ss.root() | (3 << 6) | (1 << 2) | 1, 7, fs.root()]);
    let req = DmaRequest::new(dev, 0x7000_0010, 4, AccessKind::Read).with_pasid(1);
    assert_eq!(d.translate(req).unwrap().addr, gpa_base + 0x30_0010);
    // The leaf now names guest-physical 2^40 + 3 MiB: its table addresses are all in range.
    let (at, pte) = entry_at(&view, fs.root(), 0x7000_0000, 1);
    view.write_u64(at, pte | (1 << 40)).unwrap();
    d.submit(&[piotlb_pasid(7, 1)]);
    let f = d.translate(req).unwrap_err();
    assert_eq!((f.code, f.kind), (0x84, FaultKind::AddressWidth));
    assert_eq!(d.frcd(0)[1] >> 32 & 0xff, 0x84);
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

/// IQEI 5 (§10.4.30, IQA.DW §10.4.24): a queue of 128-bit descriptors while the root table is
/// in scalable mode, or of 256-bit descriptors on a unit without scalable mode (ECAP.SMTS and
/// ECAP.ADMS clear), is an invalid descriptor width; the queue stops before its first
/// descriptor. Review finding 6: the first ran, and DW was silently cleared on the second.
#[test]
fn invalid_descriptor_widths_stop_the_queue_with_iqei_5() {
    let stopped = |d: &mut Driver| {
        let st = d.status;
        d.submit(&[iotlb_global(), wait_desc(false, true, 0x55, st)]);
        assert_ne!(d.r32(FSTS_REG) & FSTS_IQE, 0);
        assert_eq!(d.r64(IQERCD_REG) & 0xf, IQEI_INVALID_WIDTH);
        assert_eq!(d.r64(IQH_REG), 0, "IQH stays at the first descriptor");
        assert_eq!(d.mem.read_u32(st).unwrap(), 0, "nothing ran");
    };
    // Scalable mode with DW = 0.
    let mut s = Driver::new(VtdConfig::default());
    s.set_root(true);
    s.enable_qi(false);
    stopped(&mut s);
    // No scalable mode: DW = 1 is kept as written, and is an error.
    let mut d = Driver::new(VtdConfig {
        scalable_mode: false,
        first_stage: false,
        nested: false,
        ..VtdConfig::default()
    });
    d.set_root(false);
    d.enable_qi(true);
    assert_ne!(d.r64(IQA_REG) & IQA_DW, 0);
    stopped(&mut d);
    // Software reprograms the width and clears IQE: the queue runs from IQH.
    d.gcmd(GCMD_QIE, true, false);
    d.w32(FSTS_REG, FSTS_IQE);
    d.enable_qi(false);
    d.submit_and_wait(&[iotlb_global()]);
    // A unit with scalable mode in legacy mode takes either width (Linux uses DW = 1).
    for wide in [false, true] {
        let mut l = Driver::new(VtdConfig::default());
        l.set_root(false);
        l.enable_qi(wide);
        l.submit_and_wait(&[iotlb_global()]);
    }
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
        let (view, mut galloc, mut fs) = guest_first_stage(&d, &full, 4);
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

/// Requests without PASID to the interrupt address range 0xFEEx_xxxx are not subjected to DMA
/// remapping, whatever the tables map there (§3.15): a DWORD write is an interrupt request and
/// goes on untranslated (there is no interrupt remapping, ECAP.IR = 0), a zero-length read
/// completes, and any other such request is blocked as an interrupt-remapping fault (20h). A
/// translation request without PASID there is blocked (LGN.4). Review finding 9: they were
/// remapped through the tables.
#[test]
fn requests_without_pasid_to_the_interrupt_range_are_not_remapped() {
    let (mut d, mut t, dev) = legacy_with_domain();
    d.map(&mut t, 0xfee0_0000, 0x9200_0000, 0x2000, RW);
    // The same IOVA outside translation's reach would be translated; this one is not.
    let (r, trace) = d
        .vtd
        .translate(&DmaRequest::new(dev, 0xfee0_1004, 4, AccessKind::Write));
    let tr = r.unwrap();
    assert_eq!((tr.addr, tr.identity), (0xfee0_1004, true));
    assert_eq!(trace.mem_reads(), 0, "no structure is read");
    let zlr = d
        .translate(DmaRequest::new(dev, 0xfee0_0000, 0, AccessKind::Read))
        .unwrap();
    assert_eq!((zlr.addr, zlr.identity), (0xfee0_0000, true));
    for (len, access) in [
        (4, AccessKind::Read),
        (8, AccessKind::Write),
        (2, AccessKind::Write),
        (8, AccessKind::Atomic),
    ] {
        let f = d
            .translate(DmaRequest::new(dev, 0xfee0_0100, len, access))
            .unwrap_err();
        assert_eq!(
            (f.code, f.kind, f.recorded),
            (0x20, FaultKind::Blocked, true)
        );
        assert_eq!(d.frcd(0)[1] >> 32 & 0xff, 0x20);
        d.clear_frcd(0);
        d.clear_frcd(1);
        d.w32(FSTS_REG, FSTS_PFO);
    }
    // Just below the range the tables translate as usual.
    d.map(&mut t, 0xfedf_f000, 0x9300_0000, 0x1000, RW);
    assert_eq!(d.read(dev, 0xfedf_fff0).unwrap(), 0x9300_0ff0);
    // A translation request without PASID into the range (T = 01b: device TLBs enabled).
    let ats_dev = sid(0, 7, 0);
    d.legacy_context(ats_dev, t.root() | (1 << 2) | 1, 2 | (5 << 8));
    let mut ats = DmaRequest::new(ats_dev, 0xfee0_0000, 4, AccessKind::Read);
    ats.at = AddressType::TranslationRequest;
    let f = d.translate(ats).unwrap_err();
    assert_eq!(
        (f.code, f.kind, f.recorded),
        (0xe, FaultKind::Blocked, true)
    );
}

/// Requests with PASID to the interrupt address range are translated normally, but one that
/// the PASID entry passes through is blocked (SGN.8, §3.15), and FPD suppresses the record.
/// Review finding 9: pass-through let them through.
#[test]
fn pass_through_requests_with_pasid_to_the_interrupt_range_are_blocked() {
    let mut d = scalable();
    let dev = sid(0, 8, 0);
    let mut t = d.ss_domain(2);
    d.map(&mut t, 0xfee0_0000, 0x7000_0000, 0x1000, RW);
    let dir = d.sm_context(dev, 0, true, 0);
    d.pasid_entry(dir, 1, ss_pasid(&t, 3));
    d.pasid_entry(dir, 2, [(4 << 6) | (2 << 2) | 1, 3, 0]);
    d.pasid_entry(dir, 3, [(4 << 6) | (2 << 2) | 2 | 1, 3, 0]);
    let req = |pasid, addr| DmaRequest::new(dev, addr, 4, AccessKind::Write).with_pasid(pasid);
    assert_eq!(d.translate(req(1, 0xfee0_0010)).unwrap().addr, 0x7000_0010);
    let f = d.translate(req(2, 0xfee0_0010)).unwrap_err();
    assert_eq!(
        (f.code, f.kind, f.recorded),
        (0x87, FaultKind::Blocked, true)
    );
    let f = d.translate(req(3, 0xfeef_fffc)).unwrap_err();
    assert_eq!((f.code, f.recorded), (0x87, false));
    // Outside the range pass-through passes, also for a request ending just below it.
    let below = d
        .translate(DmaRequest::new(dev, 0xfedf_fff0, 0x10, AccessKind::Read).with_pasid(2))
        .unwrap();
    assert_eq!((below.addr, below.identity), (0xfedf_fff0, true));
}

/// An error reading the second-stage root table SSPTPTR points at is SSS.4 (7Bh, "invalid
/// second-level page table pointer"), as an error reading the first-stage root FSPTPTR points
/// at is SFS.4 (73h); an error reading a lower second-stage table stays SSS.1 (78h). In a
/// nested walk the second stage's root is read through SSPTPTR too. Review finding 14: the
/// root-level error was 78h, and 7Bh was never reported.
#[test]
fn unreadable_root_tables_are_table_pointer_errors() {
    let mut d = scalable();
    let dev = sid(0, 15, 0);
    let outside = MEM; // beyond the memory, below HAW
    let dir = d.sm_context(dev, 0, true, 0);
    let code = |d: &Driver, pasid| {
        d.translate(DmaRequest::new(dev, 0x1000, 4, AccessKind::Read).with_pasid(pasid))
            .unwrap_err()
            .code
    };
    // Second stage, SSPTPTR outside memory: 7Bh. (Each second stage has its own DID: the
    // DID tags second-stage paging-structure entries.)
    d.pasid_entry(dir, 1, [outside | (2 << 6) | (2 << 2) | 1, 3, 0]);
    assert_eq!(code(&d, 1), 0x7b);
    // Second stage, a level-3 table outside memory: 78h.
    let mut t = d.ss_domain(2);
    d.map(&mut t, 0x1000, 0x7000_0000, 0x1000, RW);
    let (at, e) = entry_at(d.mem, t.root(), 0x1000, 4);
    d.mem.write_u64(at, (e & 0xfff) | outside).unwrap();
    d.pasid_entry(dir, 2, ss_pasid(&t, 4));
    assert_eq!(code(&d, 2), 0x78);
    // First stage, FSPTPTR outside memory: 73h.
    d.pasid_entry(dir, 3, [(1 << 6) | 1, 3, outside | 1]);
    assert_eq!(code(&d, 3), 0x73);
    // Nested, SSPTPTR outside memory: 7Bh from the first second-stage walk.
    let fs = d.fs_domain();
    d.pasid_entry(
        dir,
        4,
        [outside | (3 << 6) | (2 << 2) | 1, 5, fs.root() | 1],
    );
    assert_eq!(code(&d, 4), 0x7b);
}

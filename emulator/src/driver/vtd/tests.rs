use super::*;
use crate::core::{Core, CoreConfig, CoreError, EndpointSet, FaultReason, MapFlags};
use crate::request::{AccessKind, DmaRequest};
use crate::unit::CacheKind;
use crate::vtd::structs::{
    ContextEntry, PasidDirEntry, PasidEntry, PasidSupport, Pgtt, ScalableContextEntry,
    TranslationType,
};
use pagewalk::SparseMem;
use std::sync::Arc;

const BASE: u64 = 0x1000_0000;
const EP: u32 = 0x0108; // 01:01.0
const EP2: u32 = 0x0010; // 00:02.0

fn hw_mode(pages: u64, mode: VtdMode) -> VtdDriver<SparseMem> {
    VtdDriver::with_unit(
        SparseMem::new(0x2000_0000),
        VtdConfig::default(),
        PrivateRegion {
            base: BASE,
            size: pages * PAGE,
        },
        mode,
    )
    .unwrap()
}

fn hw_with(pages: u64) -> VtdDriver<SparseMem> {
    hw_mode(pages, VtdMode::Legacy)
}

const MODES: [VtdMode; 2] = [VtdMode::Legacy, VtdMode::Scalable];

fn cfg() -> CoreConfig {
    CoreConfig {
        endpoints: EndpointSet::from_ranges([0..=0x1ff]),
        ..CoreConfig::default()
    }
}

fn core_on(hw: Arc<VtdDriver<SparseMem>>) -> Core {
    Core::new(cfg(), hw).unwrap()
}

/// A one-byte request by `ep` at `iova`.
fn req(ep: u32, iova: u64, access: AccessKind) -> DmaRequest {
    DmaRequest::new(u16::try_from(ep).unwrap(), iova, 1, access)
}

fn phys(c: &Core, ep: u32, iova: u64, access: AccessKind) -> Result<u64, FaultReason> {
    c.translate(&req(ep, iova, access))
        .result
        .map(|t| t.addr)
        .map_err(|f| f.reason)
}

/// Reads and decodes `ep`'s context entry the way the hardware does.
fn context_of(hw: &VtdDriver<SparseMem>, ep: u32) -> Option<ContextEntry> {
    let mem = hw.vtd().mem();
    let root = mem.read_u64(BASE + 16 * u64::from(ep >> 8)).unwrap();
    if root & 1 == 0 {
        return None;
    }
    let ce = (root & !0xfff) + 16 * u64::from(ep & 0xff);
    let (lo, hi) = (mem.read_u64(ce).unwrap(), mem.read_u64(ce + 8).unwrap());
    ContextEntry::decode(lo, hi, 48, true, true, |aw| aw == 2).ok()
}

/// What an endpoint's entry says, in either mode: (DID, pass-through, second-stage pointer).
fn entry_of(hw: &VtdDriver<SparseMem>, ep: u32) -> Option<(u16, bool, u64)> {
    if hw.mode() == VtdMode::Legacy {
        return context_of(hw, ep)
            .map(|e| (e.did, e.tt == TranslationType::PassThrough, e.slptptr));
    }
    let mem = hw.vtd().mem();
    let (bus, devfn) = (u64::from(ep >> 8), u64::from(ep & 0xff));
    // §9.2: the lower half of the root entry serves devfn 0-127, the upper 128-255.
    let half = mem.read_u64(BASE + 16 * bus + 8 * (devfn >> 7)).unwrap();
    if half & 1 == 0 {
        return None;
    }
    let ce = (half & !0xfff) + 32 * (devfn & 0x7f);
    let qw: [u64; 4] = std::array::from_fn(|i| mem.read_u64(ce + 8 * i as u64).unwrap());
    let ctx = ScalableContextEntry::decode(qw, 48, true, false).ok()?;
    assert_eq!(ctx.rid_pasid, 0);
    let dir = PasidDirEntry::decode(mem.read_u64(ctx.pasiddirptr).unwrap(), 48).ok()?;
    let qw: [u64; 8] = std::array::from_fn(|i| mem.read_u64(dir.smptblptr + 8 * i as u64).unwrap());
    let c = VtdConfig::default();
    let support = PasidSupport {
        first_stage: c.first_stage,
        second_stage: c.second_stage,
        nested: c.nested,
        pass_through: c.pass_through,
        fs_5level: c.fs_5level,
        srs: c.srs,
        ers: c.ers,
        ss_ad: c.ss_ad,
        sagaw: c.sagaw,
        haw: c.haw,
    };
    let pe = PasidEntry::decode(qw, &support).ok()?;
    assert!(matches!(pe.pgtt, Pgtt::SecondStage | Pgtt::PassThrough));
    Some((pe.did, pe.pgtt == Pgtt::PassThrough, pe.ssptptr))
}

#[test]
fn scalable_bring_up_and_pasid_entries() {
    let hw = Arc::new(hw_mode(64, VtdMode::Scalable));
    let rtaddr = hw.vtd().mmio_read(RTADDR_REG, 8);
    assert_eq!((rtaddr >> RTADDR_TTM_SHIFT) & 3, TTM_SCALABLE);
    assert_ne!(hw.vtd().mmio_read(IQA_REG, 8) & IQA_DW, 0);
    let c = core_on(hw.clone());
    assert_eq!(entry_of(&hw, EP), None);
    c.attach(5, EP, false).unwrap();
    let hwd = c.domains()[0].hw.unwrap();
    let root = hw.lock().domains[&hwd].tables.root();
    assert_eq!(entry_of(&hw, EP), Some((FIRST_DID, false, root)));
    // devfn >= 128 uses the upper half of the root entry.
    c.attach(6, 0x180, true).unwrap();
    assert_eq!(
        entry_of(&hw, 0x180).map(|e| (e.0, e.1)),
        Some((PASS_THROUGH_DID, true))
    );
    c.detach(5, EP).unwrap();
    assert_eq!(entry_of(&hw, EP), None);
    assert_eq!(
        hw.vtd().mmio_read(FSTS_REG, 4),
        0,
        "no invalidation queue error"
    );
}

#[test]
fn bring_up_enables_translation_and_queued_invalidation() {
    let hw = hw_with(64);
    let gsts = hw.vtd().mmio_read(GSTS_REG, 4) as u32;
    assert_eq!(
        gsts & (GCMD_TE | GCMD_QIE | GCMD_SRTP),
        GCMD_TE | GCMD_QIE | GCMD_SRTP
    );
    assert_eq!(hw.vtd().mmio_read(RTADDR_REG, 8) & !0xfff, BASE);
    // The bring-up invalidations ran through the queue: IQH caught up with IQT.
    assert_eq!(
        hw.vtd().mmio_read(IQH_REG, 8),
        hw.vtd().mmio_read(IQT_REG, 8)
    );
    assert!(hw.vtd().mmio_read(IQT_REG, 8) > 0);
    assert_eq!(hw.vtd().mmio_read(FSTS_REG, 4), 0);
}

#[test]
fn attach_writes_a_context_entry_pointing_at_the_domain_tables() {
    let hw = Arc::new(hw_with(64));
    let c = core_on(hw.clone());
    assert_eq!(context_of(&hw, EP), None);
    c.attach(5, EP, false).unwrap();
    let ce = context_of(&hw, EP).unwrap();
    assert_eq!(ce.tt, TranslationType::UntranslatedOnly);
    assert_eq!(ce.aw, 2);
    assert_eq!(ce.did, FIRST_DID);
    assert_eq!(c.domains()[0].hw_id, Some(u64::from(FIRST_DID)));
    let hwd = c.domains()[0].hw.unwrap();
    let root = hw.lock().domains[&hwd].tables.root();
    assert_eq!(ce.slptptr, root);
    assert!(
        (BASE..BASE + 64 * PAGE).contains(&root),
        "tables in the private region"
    );
    // A bypass domain is pass-through.
    c.attach(6, EP2, true).unwrap();
    let pt = context_of(&hw, EP2).unwrap();
    assert_eq!(pt.tt, TranslationType::PassThrough);
    assert_eq!(pt.did, PASS_THROUGH_DID);
    // Detach blocks: the entry is no longer present.
    c.detach(5, EP).unwrap();
    assert_eq!(context_of(&hw, EP), None);
}

#[test]
fn map_translate_unmap_through_the_model() {
    for mode in MODES {
        let hw = Arc::new(hw_mode(64, mode));
        let c = core_on(hw.clone());
        c.attach(1, EP, false).unwrap();
        c.map(1, 0x20_0000, 0x3f_ffff, 0x8000_0000, MapFlags::RW)
            .unwrap();
        // A request of 2 MiB: the translation covers it up to the end of its page.
        let long = DmaRequest::new(EP as u16, 0x20_1234, 0x20_0000, AccessKind::Write);
        let first = c.translate(&long);
        let t = first.result.clone().unwrap();
        assert_eq!(t.addr, 0x8000_1234);
        // A 2 MiB mapping aligned on both sides is one 2 MiB page.
        assert_eq!(t.len, 0x20_0000 - 0x1234);
        assert_eq!(t.page_shift, 21);
        assert!(!first.trace.is_empty());
        // The untraced fast path gives the same answer.
        assert_eq!(c.translate_untraced(&long), first.result);
        // The second translation of the page hits the IOTLB and reads no table.
        let second = c.translate(&req(EP, 0x20_1238, AccessKind::Read));
        assert_eq!(second.result.unwrap().addr, 0x8000_1238);
        assert!(second.trace.len() < first.trace.len());
        // UNMAP edits the tables and invalidates the IOTLB: the cached translation is gone.
        c.unmap(1, 0x20_0000, 0x3f_ffff).unwrap();
        assert_eq!(
            phys(&c, EP, 0x20_1234, AccessKind::Read),
            Err(FaultReason::Mapping)
        );
        let stats = Unit::stats(&**hw.vtd());
        assert!(stats.cache(CacheKind::Iotlb).unwrap().hits >= 1);
        assert!(stats.commands > 4);
    }
}

#[test]
fn unmap_of_several_mappings_waits_once() {
    for mode in MODES {
        let hw = Arc::new(hw_mode(64, mode));
        let c = core_on(hw.clone());
        c.attach(1, EP, false).unwrap();
        let pages = [0x1000u64, 0x5000, 0x40_0000];
        for (i, &p) in pages.iter().enumerate() {
            c.map(
                1,
                p,
                p + 0xfff,
                0x8000_0000 + (i as u64) * 0x1000,
                MapFlags::RW,
            )
            .unwrap();
            // Warm the IOTLB: the unmap must invalidate each cached translation.
            assert!(phys(&c, EP, p, AccessKind::Read).is_ok());
        }
        let descs = |hw: &VtdDriver<SparseMem>| Unit::stats(&**hw.vtd()).commands;
        let before = descs(&hw);
        assert_eq!(c.unmap(1, 0, 0x7f_ffff).unwrap().len(), 3);
        // Three page-selective IOTLB invalidations and one wait (not one wait per mapping).
        assert_eq!(descs(&hw) - before, 4, "{mode:?}");
        for p in pages {
            assert_eq!(phys(&c, EP, p, AccessKind::Read), Err(FaultReason::Mapping));
        }
        // Many mappings in one request: one domain-selective invalidation and one wait.
        for i in 0..40u64 {
            c.map(1, i * 0x2000, i * 0x2000 + 0xfff, 0x8000_0000, MapFlags::RW)
                .unwrap();
        }
        assert!(phys(&c, EP, 39 * 0x2000, AccessKind::Read).is_ok());
        let before = descs(&hw);
        assert_eq!(c.unmap(1, 0, 0xff_ffff).unwrap().len(), 40);
        assert_eq!(descs(&hw) - before, 2, "{mode:?}");
        assert_eq!(
            phys(&c, EP, 39 * 0x2000, AccessKind::Read),
            Err(FaultReason::Mapping)
        );
    }
}

#[test]
fn read_only_and_write_only_mappings() {
    for mode in MODES {
        let hw = Arc::new(hw_mode(64, mode));
        let c = core_on(hw);
        c.attach(1, EP, false).unwrap();
        let ro = MapFlags {
            read: true,
            ..Default::default()
        };
        let wo = MapFlags {
            write: true,
            ..Default::default()
        };
        c.map(1, 0x1000, 0x1fff, 0x5000, ro).unwrap();
        c.map(1, 0x2000, 0x2fff, 0x6000, wo).unwrap();
        c.map(1, 0x3000, 0x3fff, 0x7000, MapFlags::default())
            .unwrap();
        assert_eq!(phys(&c, EP, 0x1008, AccessKind::Read), Ok(0x5008));
        assert_eq!(
            phys(&c, EP, 0x1008, AccessKind::Write),
            Err(FaultReason::Mapping)
        );
        assert_eq!(phys(&c, EP, 0x2008, AccessKind::Write), Ok(0x6008));
        assert_eq!(
            phys(&c, EP, 0x2008, AccessKind::Read),
            Err(FaultReason::Mapping)
        );
        assert_eq!(
            phys(&c, EP, 0x3008, AccessKind::Read),
            Err(FaultReason::Mapping)
        );
        // The no-access mapping is still a mapping: it can be unmapped, and it blocks overlaps.
        assert!(c.map(1, 0x3000, 0x3fff, 0, MapFlags::RW).is_err());
        c.unmap(1, 0x3000, 0x3fff).unwrap();
    }
}

#[test]
fn bypass_and_blocked_endpoints() {
    for mode in MODES {
        let hw = Arc::new(hw_mode(2048, mode));
        let c = core_on(hw.clone());
        assert_eq!(
            phys(&c, EP, 0x1000, AccessKind::Read),
            Err(FaultReason::Domain)
        );
        c.set_bypass(true).unwrap();
        assert_eq!(phys(&c, EP, 0x1000, AccessKind::Read), Ok(0x1000));
        assert_eq!(
            entry_of(&hw, 0x1ff).map(|e| (e.0, e.1)),
            Some((PASS_THROUGH_DID, true))
        );
        c.set_bypass(false).unwrap();
        assert_eq!(
            phys(&c, EP, 0x1000, AccessKind::Read),
            Err(FaultReason::Domain)
        );
        assert_eq!(entry_of(&hw, 0x1ff), None);
        // Faults keep being recorded: the driver clears the fault recording registers.
        for i in 0..20 {
            let _ = c.translate(&req(EP, i << 12, AccessKind::Write));
        }
        let stats = Unit::stats(&**hw.vtd());
        assert!(stats.faults_recorded >= 20, "{mode:?} {stats:?}");
    }
}

#[test]
fn bypass_that_runs_out_of_memory_changes_nothing() {
    // Scalable mode needs a PASID directory and table per endpoint: 48 pages cannot hold
    // 512 endpoints' worth.
    let hw = Arc::new(hw_mode(48, VtdMode::Scalable));
    let c = core_on(hw.clone());
    c.attach(1, EP, false).unwrap();
    c.map(1, 0, 0xfff, 0x9000, MapFlags::RW).unwrap();
    assert!(matches!(
        c.set_bypass(true),
        Err(CoreError::Hardware(HwError::Exhausted(_)))
    ));
    assert!(!c.bypass());
    for ep in [0, 1, 0x10, 0x1ff] {
        assert_eq!(
            phys(&c, ep, 0x1000, AccessKind::Read),
            Err(FaultReason::Domain)
        );
    }
    assert_eq!(phys(&c, EP, 0x10, AccessKind::Read), Ok(0x9010));
}

#[test]
fn moving_an_endpoint_switches_tables_without_stale_translations() {
    for mode in MODES {
        let hw = Arc::new(hw_mode(64, mode));
        let c = core_on(hw.clone());
        c.attach(1, EP, false).unwrap();
        c.map(1, 0x4000, 0x4fff, 0xa000, MapFlags::RW).unwrap();
        assert_eq!(phys(&c, EP, 0x4010, AccessKind::Read), Ok(0xa010));
        c.attach(2, EP, false).unwrap();
        // Domain 2 has nothing mapped: the IOTLB entry of domain 1 must not answer.
        assert_eq!(
            phys(&c, EP, 0x4010, AccessKind::Read),
            Err(FaultReason::Mapping)
        );
        c.map(2, 0x4000, 0x4fff, 0xb000, MapFlags::RW).unwrap();
        assert_eq!(phys(&c, EP, 0x4010, AccessKind::Read), Ok(0xb010));
        // Domain 1 was freed; its DID goes to the next domain, with nothing stale cached under it.
        c.attach(3, EP2, false).unwrap();
        assert_eq!(entry_of(&hw, EP2).unwrap().0, FIRST_DID);
        assert_eq!(
            phys(&c, EP2, 0x4010, AccessKind::Read),
            Err(FaultReason::Mapping)
        );
        // Identity to translated and back, in place.
        c.attach(4, EP, true).unwrap();
        assert_eq!(phys(&c, EP, 0x4010, AccessKind::Read), Ok(0x4010));
        c.attach(5, EP, false).unwrap();
        assert_eq!(
            phys(&c, EP, 0x4010, AccessKind::Read),
            Err(FaultReason::Mapping)
        );
    }
}

#[test]
fn domain_ids_and_private_memory_run_out_as_nomem() {
    let hw = Arc::new(hw_with(1024));
    let c = Core::new(
        CoreConfig {
            max_domains: 1000,
            ..cfg()
        },
        hw.clone(),
    )
    .unwrap();
    // CAP.ND = 2: 256 DIDs, 0 and 1 reserved.
    for d in 0..254u32 {
        c.attach(d + 1, d, false).unwrap();
    }
    assert!(matches!(
        c.attach(300, 254, false),
        Err(CoreError::Hardware(HwError::Exhausted(_)))
    ));
    assert_eq!(c.domains().len(), 254);

    // A region of a few pages: the tables of a scattered mapping set exhaust it.
    let hw = Arc::new(hw_with(8));
    let c = core_on(hw);
    c.attach(1, EP, false).unwrap();
    let mut exhausted = false;
    for i in 0..16u64 {
        match c.map(1, i << 30, (i << 30) + 0xfff, 0, MapFlags::RW) {
            Ok(()) => {}
            Err(CoreError::Hardware(HwError::Exhausted(_))) => {
                exhausted = true;
                // The refused mapping is not recorded.
                assert_eq!(c.stats().mappings as u64, i);
                break;
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert!(exhausted);
}

#[test]
fn reset_clears_every_structure() {
    for mode in MODES {
        let hw = Arc::new(hw_mode(64, mode));
        let c = core_on(hw.clone());
        c.attach(1, EP, false).unwrap();
        c.map(1, 0, 0xfff, 0x9000, MapFlags::RW).unwrap();
        assert_eq!(phys(&c, EP, 0x10, AccessKind::Read), Ok(0x9010));
        c.reset().unwrap();
        assert_eq!(entry_of(&hw, EP), None);
        assert_eq!(
            phys(&c, EP, 0x10, AccessKind::Read),
            Err(FaultReason::Domain)
        );
        // Root, queue and status pages remain.
        assert_eq!(Driver::stats(&*hw).private_pages_in_use, 3);
    }
}

#[test]
fn psi_covers_the_range_with_aligned_blocks() {
    let hw = hw_with(16);
    let d = hw.iotlb_range_descs(7, 0x3000, 0x5000);
    // Pages 3..8: 3 (am 0), 4-7 (am 2).
    assert_eq!(d.len(), 2);
    assert_eq!(d[0][1], 0x3000);
    assert_eq!(d[1][1], 0x4000 | 2);
    // Type 2 (IOTLB), G = 11b (page-selective), DID 7 (§6.5.2.3).
    assert!(d.iter().all(|x| x[0] == 0x32 | (7 << 16)));
    // A huge unaligned range falls back to one domain-selective invalidation.
    let d = hw.iotlb_range_descs(7, 0x1000, 0x10_0000_0000);
    // Type 2, G = 10b (domain-selective), DID 7.
    assert_eq!(d.as_slice(), [[0x22 | (7 << 16), 0]]);
}

/// An invalidation-queue error (a descriptor of a reserved type) fails that submission, and
/// the recovery leaves the queue in step: the next submission runs and reports success, and
/// IQE is clear (review finding 3: clearing IQE before dealing with the bad descriptor made
/// the unit stop on it again, and the next submission was reported failed although it ran).
#[test]
fn a_queue_error_fails_its_submission_and_the_next_one_succeeds() {
    for mode in [VtdMode::Legacy, VtdMode::Scalable] {
        let hw = hw_mode(64, mode);
        let mut c = hw.ctl.lock().unwrap();
        let bad = [0x0f, 0];
        let e = hw.submit(&mut c, &[bad]).unwrap_err();
        assert!(
            matches!(e, HwError::QueueWait { status } if status & u64::from(FSTS_IQE) != 0),
            "{mode:?}: {e:?}"
        );
        assert_eq!(
            hw.vtd().mmio_read(FSTS_REG, 4) & u64::from(FSTS_IQE),
            0,
            "{mode:?}"
        );
        let good =
            crate::vtd::qi::encode::context_cache(crate::vtd::qi::ContextGranularity::Global);
        hw.submit(&mut c, &[good, good]).unwrap();
        assert_eq!(
            hw.vtd().mmio_read(IQH_REG, 8),
            hw.vtd().mmio_read(IQT_REG, 8),
            "{mode:?}: the unit caught up with the tail"
        );
        assert_eq!(hw.vtd().mmio_read(FSTS_REG, 4), 0, "{mode:?}");
    }
}

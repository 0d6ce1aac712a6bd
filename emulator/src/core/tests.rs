use super::*;
use crate::driver::{Resource, SoftDriver};
use crate::request::AccessKind;

const EP: EndpointId = 0x08;
const EP2: EndpointId = 0x10;

/// A small core: 32 endpoints, domains 1 to 100, at most 4 domains and 8 mappings (the
/// conformance suite uses it too).
pub(crate) fn small_config() -> CoreConfig {
    CoreConfig {
        endpoints: EndpointSet::from_ranges([0..=0x1f]),
        domain_range: (1, 100),
        max_domains: 4,
        max_mappings: 8,
        ..CoreConfig::default()
    }
}

fn core_with(config: CoreConfig) -> Core {
    Core::new(config, Arc::new(SoftDriver::new())).unwrap()
}

fn core() -> Core {
    core_with(small_config())
}

/// A one-byte request by `ep` at `iova`.
fn req(ep: EndpointId, iova: u64, access: AccessKind) -> DmaRequest {
    DmaRequest::new(u16::try_from(ep).unwrap(), iova, 1, access)
}

fn phys(c: &Core, ep: EndpointId, iova: u64, access: AccessKind) -> Result<u64, FaultReason> {
    c.translate(&req(ep, iova, access))
        .result
        .map(|t| t.addr)
        .map_err(|f| f.reason)
}

const P: u64 = 0x1000;

/// virtio 1.3 §5.13.6.6: the UNMAP example sequences, each on a blank address space, in pages.
#[test]
fn spec_unmap_examples() {
    type Step = (&'static [(u64, u64)], (u64, u64), Result<usize, ()>, usize);
    // (maps, unmap range, expected result (mappings removed), mappings left)
    let cases: [Step; 7] = [
        (&[], (0, 4), Ok(0), 0),
        (&[(0, 9)], (0, 9), Ok(1), 0),
        (&[(0, 4), (5, 9)], (0, 9), Ok(2), 0),
        (&[(0, 9)], (0, 4), Err(()), 1),
        (&[(0, 4), (5, 9)], (0, 4), Ok(1), 1),
        (&[(0, 4)], (0, 9), Ok(1), 0),
        (&[(0, 4), (10, 14)], (0, 14), Ok(2), 0),
    ];
    for (i, (maps, (us, ue), expect, left)) in cases.into_iter().enumerate() {
        let c = core();
        c.attach(1, EP, false).unwrap();
        for &(s, e) in maps {
            c.map(1, s * P, (e + 1) * P - 1, 0x10_0000 + s * P, MapFlags::RW)
                .unwrap();
        }
        let r = c.unmap(1, us * P, (ue + 1) * P - 1);
        match expect {
            Ok(n) => assert_eq!(r.unwrap().len(), n, "case {}", i + 1),
            Err(()) => assert!(matches!(r, Err(CoreError::Split(_))), "case {}", i + 1),
        }
        assert_eq!(c.domains()[0].mappings.len(), left, "case {}", i + 1);
        assert_eq!(c.stats().mappings, left, "case {}", i + 1);
    }
}

#[test]
fn map_translate_unmap() {
    let c = core();
    c.attach(1, EP, false).unwrap();
    assert_eq!(
        phys(&c, EP, 0x1000, AccessKind::Read),
        Err(FaultReason::Mapping)
    );
    c.map(
        1,
        0x1000,
        0x1fff,
        0xa000,
        MapFlags {
            read: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(phys(&c, EP, 0x1234, AccessKind::Read), Ok(0xa234));
    let traced = c.translate(&req(EP, 0x1234, AccessKind::Read));
    assert!(!traced.trace.is_empty());
    assert_eq!(
        c.translate_untraced(&req(EP, 0x1234, AccessKind::Read)),
        traced.result
    );
    assert_eq!(
        phys(&c, EP, 0x1234, AccessKind::Write),
        Err(FaultReason::Mapping)
    );
    c.unmap(1, 0x1000, 0x1fff).unwrap();
    assert_eq!(
        phys(&c, EP, 0x1234, AccessKind::Read),
        Err(FaultReason::Mapping)
    );
    c.detach(1, EP).unwrap();
    assert_eq!(
        phys(&c, EP, 0x1234, AccessKind::Read),
        Err(FaultReason::Domain)
    );
    assert!(c.domains().is_empty());
    // Every fault was queued for the event queue, in order.
    let faults = c.take_faults(16);
    assert_eq!(faults.len(), 4);
    assert_eq!(faults[1].access, AccessKind::Write);
    assert_eq!(faults[3].reason, FaultReason::Domain);
    assert_eq!(c.stats().faults, 4);
    assert_eq!(c.stats().translations, 7);
}

#[test]
fn map_rejections_leave_state_unchanged() {
    let c = core();
    c.attach(1, EP, false).unwrap();
    c.attach(2, EP2, true).unwrap();
    c.map(1, 0x10000, 0x1ffff, 0x40000, MapFlags::RW).unwrap();
    let before = c.domains();
    let rw = MapFlags::RW;
    let cases: Vec<(CoreError, Result<(), CoreError>)> = vec![
        (CoreError::DomainOutOfRange(0), c.map(0, 0, 0xfff, 0, rw)),
        (
            CoreError::DomainOutOfRange(101),
            c.map(101, 0, 0xfff, 0, rw),
        ),
        (CoreError::NoDomain(3), c.map(3, 0, 0xfff, 0, rw)),
        (CoreError::BypassDomain(2), c.map(2, 0, 0xfff, 0, rw)),
        (
            CoreError::Reversed {
                start: 0x2000,
                end: 0xfff,
            },
            c.map(1, 0x2000, 0xfff, 0, rw),
        ),
        (CoreError::Unaligned(0x800), c.map(1, 0x800, 0xfff, 0, rw)),
        (CoreError::Unaligned(0x10), c.map(1, 0, 0xfff, 0x10, rw)),
        (CoreError::Unaligned(0x1800), c.map(1, 0, 0x17ff, 0, rw)),
        (
            CoreError::OutsideInputRange {
                start: 1 << 48,
                end: (1 << 48) + 0xfff,
            },
            c.map(1, 1 << 48, (1 << 48) + 0xfff, 0, rw),
        ),
        (
            CoreError::PhysOutOfRange(1 << 48),
            c.map(1, 0, 0xfff, 1 << 48, rw),
        ),
        (
            CoreError::PhysOutOfRange(u64::MAX - 0xfff),
            c.map(1, 0, 0x1fff, u64::MAX - 0xfff, rw),
        ),
        (
            CoreError::Overlap(0x10000),
            c.map(1, 0x1f000, 0x20fff, 0, rw),
        ),
        (
            CoreError::Overlap(0x10000),
            c.map(1, 0xf000, 0x10fff, 0, rw),
        ),
        (
            CoreError::Overlap(0x10000),
            c.map(1, 0x12000, 0x12fff, 0, rw),
        ),
        (
            CoreError::Reserved(0xfee0_0000),
            c.map(1, 0xfe00_0000, 0xfeff_ffff, 0, rw),
        ),
        (
            CoreError::Split(0x10000),
            c.unmap(1, 0x11000, 0x2ffff).map(|_| ()),
        ),
        (
            CoreError::Split(0x10000),
            c.unmap(1, 0, 0x10fff).map(|_| ()),
        ),
        (CoreError::NoDomain(5), c.unmap(5, 0, 0xfff).map(|_| ())),
        (CoreError::BypassDomain(2), c.unmap(2, 0, 0xfff).map(|_| ())),
    ];
    for (want, got) in cases {
        assert_eq!(got, Err(want));
    }
    assert_eq!(c.domains(), before);
    assert_eq!(phys(&c, EP, 0x10010, AccessKind::Write), Ok(0x40010));
}

#[test]
fn attach_detach_rejections() {
    let c = core();
    assert_eq!(c.attach(0, EP, false), Err(CoreError::DomainOutOfRange(0)));
    assert_eq!(c.attach(1, 0x20, false), Err(CoreError::NoEndpoint(0x20)));
    c.attach(1, EP, false).unwrap();
    assert_eq!(c.attach(1, EP2, true), Err(CoreError::BypassMismatch(1)));
    assert_eq!(c.detach(1, 0x20), Err(CoreError::NoEndpoint(0x20)));
    assert_eq!(
        c.detach(2, EP),
        Err(CoreError::NotAttached {
            domain: 2,
            endpoint: EP
        })
    );
    assert_eq!(
        c.detach(1, EP2),
        Err(CoreError::NotAttached {
            domain: 1,
            endpoint: EP2
        })
    );
    assert_eq!(c.endpoint_domain(EP), Some(1));
    assert_eq!(c.endpoint_domain(EP2), None);
    // Re-attaching to the same domain is a no-op.
    c.attach(1, EP, false).unwrap();
    assert_eq!(c.domains()[0].endpoints, vec![EP]);
}

#[test]
fn domain_and_mapping_limits_give_nomem() {
    let c = core();
    for d in 1..=4 {
        c.attach(d, d, false).unwrap();
    }
    assert_eq!(c.attach(5, 5, false), Err(CoreError::TooManyDomains(4)));
    // Moving the only endpoint of a domain to a new domain frees one: allowed at the limit.
    c.attach(5, 4, false).unwrap();
    assert_eq!(c.stats().domains, 4);
    for i in 0..8 {
        c.map(1, i * P, i * P + P - 1, 0, MapFlags::RW).unwrap();
    }
    assert_eq!(
        c.map(2, 0, P - 1, 0, MapFlags::RW),
        Err(CoreError::TooManyMappings(8))
    );
    // Freeing a domain frees its mappings' share of the limit.
    c.detach(1, 1).unwrap();
    assert_eq!(c.stats().mappings, 0);
    c.map(2, 0, P - 1, 0, MapFlags::RW).unwrap();
}

#[test]
fn bypass_config_applies_to_unattached_endpoints() {
    let c = core();
    assert!(!c.bypass());
    assert_eq!(
        phys(&c, EP, 0x5000, AccessKind::Read),
        Err(FaultReason::Domain)
    );
    c.set_bypass(true).unwrap();
    assert_eq!(phys(&c, EP, 0x5000, AccessKind::Read), Ok(0x5000));
    // An attached endpoint is translated, whatever bypass says.
    c.attach(1, EP2, false).unwrap();
    assert_eq!(
        phys(&c, EP2, 0x5000, AccessKind::Read),
        Err(FaultReason::Mapping)
    );
    c.set_bypass(false).unwrap();
    assert_eq!(
        phys(&c, EP, 0x5000, AccessKind::Read),
        Err(FaultReason::Domain)
    );
    assert_eq!(
        phys(&c, EP2, 0x5000, AccessKind::Read),
        Err(FaultReason::Mapping)
    );
    // Detached while bypass is on: pass-through.
    c.set_bypass(true).unwrap();
    c.detach(1, EP2).unwrap();
    assert_eq!(phys(&c, EP2, 0x5000, AccessKind::Write), Ok(0x5000));
}

#[test]
fn bypass_domain_is_identity() {
    let c = core();
    c.attach(7, EP, true).unwrap();
    assert_eq!(
        phys(&c, EP, 0x1234_5678, AccessKind::Write),
        Ok(0x1234_5678)
    );
    assert_eq!(c.domains()[0].kind, DomainKind::Bypass);
    assert_eq!(c.domains()[0].hw, None);
}

#[test]
fn attach_elsewhere_moves_and_frees_empty_domain() {
    let c = core();
    c.attach(1, EP, false).unwrap();
    c.map(1, 0, P - 1, 0x8000, MapFlags::RW).unwrap();
    c.attach(2, EP, false).unwrap();
    c.map(2, 0, P - 1, 0x9000, MapFlags::RW).unwrap();
    assert_eq!(phys(&c, EP, 0x10, AccessKind::Read), Ok(0x9010));
    // Domain 1 had no endpoint left: it is gone with its mapping.
    let doms = c.domains();
    assert_eq!(doms.len(), 1);
    assert_eq!(doms[0].id, 2);
    assert_eq!(c.stats().mappings, 1);
    assert_eq!(
        c.map(1, 0, P - 1, 0, MapFlags::RW),
        Err(CoreError::NoDomain(1))
    );
    // A domain shared by two endpoints survives one leaving.
    c.attach(2, EP2, false).unwrap();
    c.attach(3, EP, false).unwrap();
    assert_eq!(c.domains().len(), 2);
    assert_eq!(phys(&c, EP2, 0x10, AccessKind::Read), Ok(0x9010));
}

/// A hardware that records the order of endpoint switches, to check that a move is one step.
#[derive(Debug, Default)]
struct Recorder {
    soft: SoftDriver,
    log: Mutex<Vec<(EndpointId, EndpointMode)>>,
}

impl Driver for Recorder {
    fn unit(&self) -> Arc<dyn Unit> {
        self.soft.unit()
    }
    fn name(&self) -> &'static str {
        "recorder"
    }
    fn domain_alloc(&self) -> Result<HwDomain, HwError> {
        self.soft.domain_alloc()
    }
    fn domain_free(&self, d: HwDomain) -> Result<(), HwError> {
        self.soft.domain_free(d)
    }
    fn map(&self, d: HwDomain, m: &Mapping) -> Result<(), HwError> {
        self.soft.map(d, m)
    }
    fn unmap(&self, d: HwDomain, ms: &[Mapping]) -> Result<(), (usize, HwError)> {
        self.soft.unmap(d, ms)
    }
    fn set_endpoint(&self, ep: EndpointId, mode: EndpointMode) -> Result<(), HwError> {
        self.log.lock().unwrap().push((ep, mode));
        self.soft.set_endpoint(ep, mode)
    }
    fn reset(&self) -> Result<(), HwError> {
        self.soft.reset()
    }
    fn stats(&self) -> DriverStats {
        DriverStats::default()
    }
}

#[test]
fn move_is_a_single_hardware_switch() {
    let hw = Arc::new(Recorder::default());
    let c = Core::new(small_config(), hw.clone()).unwrap();
    c.attach(1, EP, false).unwrap();
    c.attach(2, EP, false).unwrap();
    let log = hw.log.lock().unwrap().clone();
    assert_eq!(log.len(), 2);
    assert!(matches!(log[0], (EP, EndpointMode::Translated(_))));
    assert!(matches!(log[1], (EP, EndpointMode::Translated(_))));
    assert_ne!(log[0].1, log[1].1);
}

/// A hardware whose allocations and endpoint switches fail.
#[derive(Debug, Default)]
struct Failing {
    soft: SoftDriver,
}

impl Driver for Failing {
    fn unit(&self) -> Arc<dyn Unit> {
        self.soft.unit()
    }
    fn name(&self) -> &'static str {
        "failing"
    }
    fn domain_alloc(&self) -> Result<HwDomain, HwError> {
        self.soft.domain_alloc()
    }
    fn domain_free(&self, d: HwDomain) -> Result<(), HwError> {
        self.soft.domain_free(d)
    }
    fn map(&self, _: HwDomain, _: &Mapping) -> Result<(), HwError> {
        Err(HwError::Exhausted(Resource::PrivateMemory))
    }
    fn unmap(&self, d: HwDomain, ms: &[Mapping]) -> Result<(), (usize, HwError)> {
        self.soft.unmap(d, ms)
    }
    fn set_endpoint(&self, ep: EndpointId, mode: EndpointMode) -> Result<(), HwError> {
        if ep == EP2 {
            return Err(HwError::Unsupported("context entry"));
        }
        self.soft.set_endpoint(ep, mode)
    }
    fn reset(&self) -> Result<(), HwError> {
        self.soft.reset()
    }
    fn stats(&self) -> DriverStats {
        DriverStats::default()
    }
}

#[test]
fn hardware_failures_leave_state_unchanged() {
    let c = Core::new(small_config(), Arc::new(Failing::default())).unwrap();
    assert!(matches!(
        c.attach(1, EP2, false),
        Err(CoreError::Hardware(HwError::Unsupported(_)))
    ));
    assert!(c.domains().is_empty());
    c.attach(1, EP, false).unwrap();
    assert!(matches!(
        c.map(1, 0, P - 1, 0, MapFlags::RW),
        Err(CoreError::Hardware(HwError::Exhausted(_)))
    ));
    assert_eq!(c.stats().mappings, 0);
    assert!(c.domains()[0].mappings.is_empty());
}

#[test]
fn a_reset_drops_the_faults_queued_for_the_event_queue() {
    for system in [false, true] {
        let c = core();
        assert_eq!(
            phys(&c, EP, 0x3000, AccessKind::Read),
            Err(FaultReason::Domain)
        );
        assert_eq!(c.take_faults(8).len(), 1);
        assert_eq!(
            phys(&c, EP, 0x4000, AccessKind::Read),
            Err(FaultReason::Domain)
        );
        if system {
            c.system_reset().unwrap();
        } else {
            c.reset().unwrap();
        }
        assert!(c.take_faults(8).is_empty(), "system reset {system}");
        // Faults after the reset are queued as before.
        assert_eq!(
            phys(&c, EP, 0x5000, AccessKind::Read),
            Err(FaultReason::Domain)
        );
        assert_eq!(c.take_faults(8)[0].address, 0x5000);
    }
}

#[test]
fn reset_keeps_bypass_system_reset_restores_it() {
    let c = core();
    c.attach(1, EP, false).unwrap();
    c.map(1, 0, P - 1, 0, MapFlags::RW).unwrap();
    c.set_bypass(true).unwrap();
    let g = c.generation();
    c.reset().unwrap();
    assert!(c.generation() > g);
    assert!(c.domains().is_empty());
    assert_eq!(c.endpoint_domain(EP), None);
    assert!(c.bypass());
    assert_eq!(phys(&c, EP, 0x3000, AccessKind::Read), Ok(0x3000));
    c.system_reset().unwrap();
    assert!(!c.bypass());
    assert_eq!(
        phys(&c, EP, 0x3000, AccessKind::Read),
        Err(FaultReason::Domain)
    );
}

#[test]
fn probe_reports_reserved_regions() {
    let c = core();
    assert_eq!(c.probe(EP).unwrap(), vec![ResvRegion::X86_MSI]);
    assert_eq!(c.probe(0x100), Err(CoreError::NoEndpoint(0x100)));
}

#[test]
fn fault_queue_is_bounded() {
    let c = core();
    let kicks = Arc::new(AtomicU64::new(0));
    let k = kicks.clone();
    c.set_fault_notifier(move || {
        k.fetch_add(1, Ordering::Relaxed);
    });
    for i in 0..(FAULT_QUEUE_DEPTH as u64 + 10) {
        c.translate(&req(EP, i * P, AccessKind::Read));
    }
    assert_eq!(c.stats().faults_dropped, 10);
    assert_eq!(kicks.load(Ordering::Relaxed), FAULT_QUEUE_DEPTH as u64);
    let first = c.take_faults(2);
    assert_eq!(first[0].address, 0);
    assert_eq!(first[1].address, P);
    c.requeue_faults(first);
    assert_eq!(c.take_faults(1)[0].address, 0);
}

#[test]
fn config_is_validated() {
    let bad = [
        CoreConfig {
            page_size_mask: 0,
            ..CoreConfig::default()
        },
        CoreConfig {
            input_range: (10, 9),
            ..CoreConfig::default()
        },
        CoreConfig {
            domain_range: (10, 9),
            ..CoreConfig::default()
        },
        CoreConfig {
            phys_addr_bits: 65,
            ..CoreConfig::default()
        },
    ];
    for cfg in bad {
        assert!(matches!(
            Core::new(cfg, Arc::new(SoftDriver::new())),
            Err(CoreError::Config(_))
        ));
    }
}

/// A hardware whose unmap of the mapping at `FAILING_IOVA` fails.
#[derive(Debug, Default)]
struct FailingUnmap {
    soft: SoftDriver,
}

const FAILING_IOVA: u64 = 0x5000;

impl Driver for FailingUnmap {
    fn unit(&self) -> Arc<dyn Unit> {
        self.soft.unit()
    }
    fn name(&self) -> &'static str {
        "failing-unmap"
    }
    fn domain_alloc(&self) -> Result<HwDomain, HwError> {
        self.soft.domain_alloc()
    }
    fn domain_free(&self, d: HwDomain) -> Result<(), HwError> {
        self.soft.domain_free(d)
    }
    fn map(&self, d: HwDomain, m: &Mapping) -> Result<(), HwError> {
        self.soft.map(d, m)
    }
    fn unmap(&self, d: HwDomain, ms: &[Mapping]) -> Result<(), (usize, HwError)> {
        for (i, m) in ms.iter().enumerate() {
            if m.virt_start == FAILING_IOVA {
                return Err((i, HwError::Unsupported("table page")));
            }
            self.soft
                .unmap(d, std::slice::from_ref(m))
                .map_err(|(_, e)| (i, e))?;
        }
        Ok(())
    }
    fn set_endpoint(&self, ep: EndpointId, mode: EndpointMode) -> Result<(), HwError> {
        self.soft.set_endpoint(ep, mode)
    }
    fn reset(&self) -> Result<(), HwError> {
        self.soft.reset()
    }
    fn stats(&self) -> DriverStats {
        DriverStats::default()
    }
}

#[test]
fn unmap_failing_partway_keeps_what_the_hardware_still_has() {
    let c = Core::new(small_config(), Arc::new(FailingUnmap::default())).unwrap();
    c.attach(1, EP, false).unwrap();
    for iova in [0x1000u64, FAILING_IOVA, 0x9000] {
        c.map(1, iova, iova + 0xfff, iova, MapFlags::RW).unwrap();
    }
    let before = c.generation();
    assert_eq!(
        c.unmap(1, 0, 0xffff),
        Err(CoreError::Hardware(HwError::Unsupported("table page")))
    );
    // The first mapping is gone (from the hardware too); the failing one and the rest stay.
    let left: Vec<u64> = c.domains()[0]
        .mappings
        .iter()
        .map(|m| m.virt_start)
        .collect();
    assert_eq!(left, vec![FAILING_IOVA, 0x9000]);
    assert!(c.generation() > before);
    assert!(
        c.translate(&req(EP, 0x1000, AccessKind::Read))
            .result
            .is_err()
    );
    assert_eq!(
        c.translate(&req(EP, 0x9000, AccessKind::Read))
            .result
            .unwrap()
            .addr,
        0x9000
    );
    // The mapping count followed: the limit (8) still allows 6 more.
    for i in 0..6u64 {
        let iova = 0x10_0000 + i * 0x1000;
        c.map(1, iova, iova + 0xfff, iova, MapFlags::RW).unwrap();
    }
    assert_eq!(
        c.map(1, 0x20_0000, 0x20_0fff, 0, MapFlags::RW),
        Err(CoreError::TooManyMappings(8))
    );
}

//! The AMD-Vi driver: the DTEs it writes, bit by bit; bring-up without INVALIDATE_IOMMU_ALL;
//! the event log it services.

use pagewalk::SparseMem;

use super::*;
use crate::core::MapFlags;
use crate::request::{AccessKind, DmaRequest};
use crate::trace::Trace;

const BASE: u64 = 0x1000_0000;

fn driver(cfg: AmdViConfig) -> AmdViDriver<SparseMem> {
    AmdViDriver::with_unit(
        SparseMem::new(0x2000_0000),
        cfg,
        PrivateRegion {
            base: BASE,
            size: 4096 * 4096,
        },
    )
    .unwrap()
}

fn dte(d: &AmdViDriver<SparseMem>, sid: u16) -> [u64; 2] {
    let at = BASE + 32 * u64::from(sid);
    [
        d.mem().read_u64(at).unwrap(),
        d.mem().read_u64(at + 8).unwrap(),
    ]
}

fn map(virt: u64, phys: u64) -> Mapping {
    Mapping {
        virt_start: virt,
        virt_end: virt + 0xfff,
        phys_start: phys,
        flags: MapFlags::RW,
    }
}

#[test]
fn the_dtes_are_the_spec_encodings() {
    let d = driver(AmdViConfig::default());
    // Every DTE starts blocked: V (bit 0), TV (bit 1), Mode 0, IR = IW = 0.
    assert_eq!(dte(&d, 0x0108), [0b11, 0]);
    let h = d.domain_alloc().unwrap();
    let did = d.domain_hw_id(h).unwrap();
    d.set_endpoint(0x0108, EndpointMode::Translated(h)).unwrap();
    let root = d.lock().domains[&h].tables.root();
    // Translated: V, TV, Mode 4 (11:9), the root (51:12), IR (61), IW (62); DomainID.
    assert_eq!(dte(&d, 0x0108), [0b11 | (4 << 9) | root | (3 << 61), did]);
    d.set_endpoint(0x0108, EndpointMode::PassThrough).unwrap();
    // Identity: Mode 0 with IR = IW = 1, the identity DomainID.
    assert_eq!(
        dte(&d, 0x0108),
        [0b11 | (3 << 61), u64::from(PASS_THROUGH_DID)]
    );
    d.set_endpoint(0x0108, EndpointMode::Blocked).unwrap();
    assert_eq!(dte(&d, 0x0108), [0b11, 0]);
    assert_eq!(d.stats().mode, Some("v1"));
}

#[test]
fn without_invalidate_all_the_driver_invalidates_each_dte_and_domain() {
    let d = driver(AmdViConfig {
        invalidate_all: false,
        ..AmdViConfig::default()
    });
    let unit = d.unit();
    // Bring-up ran one INVALIDATE_DEVTAB_ENTRY per device and one INVALIDATE_IOMMU_PAGES per
    // DomainID, each chunk followed by a COMPLETION_WAIT.
    let per_chunk = 128u64;
    let cmds = 2 * 65536u64;
    assert_eq!(unit.stats().commands, cmds + cmds / per_chunk);
    let h = d.domain_alloc().unwrap();
    d.set_endpoint(8, EndpointMode::Translated(h)).unwrap();
    d.map(h, &map(0x4000, 0x8000)).unwrap();
    let read = DmaRequest::new(8, 0x4010, 4, AccessKind::Read);
    assert_eq!(
        unit.translate(&read, &mut Trace::off()).unwrap().addr,
        0x8010
    );
    d.reset().unwrap();
    assert!(unit.translate(&read, &mut Trace::off()).is_err());
    assert_eq!(dte(&d, 8), [0b11, 0]);
}

#[test]
fn serviced_faults_keep_the_event_log_from_overflowing() {
    let d = driver(AmdViConfig::default());
    let unit = d.unit();
    // 300 faults from a blocked device: more than the 256-entry log holds.
    for i in 0..300u64 {
        let f = unit
            .translate(
                &DmaRequest::new(9, i << 12, 4, AccessKind::Read),
                &mut Trace::off(),
            )
            .unwrap_err();
        assert!(f.recorded, "fault {i} not recorded");
        d.fault_serviced(&f);
    }
    let status = Status::from_bits(unit.mmio_read(reg::STATUS, 8));
    assert!(!status.event_overflow() && status.event_log_run());
    assert_eq!(unit.stats().faults_recorded, 300);
}

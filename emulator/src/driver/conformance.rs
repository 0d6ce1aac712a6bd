//! The conformance suite every driver passes, written once (as Linux's generic_pt KUnit suite
//! runs once per format): the core over each driver in [`DRIVERS`] must accept exactly what a
//! plain reference model accepts, leave the state unchanged when it refuses, and translate
//! every endpoint as the model (and the soft double's mapping trees) say. A new driver joins by
//! adding its constructor to [`DRIVERS`].

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use pagewalk::SparseMem;
use proptest::prelude::*;

use super::amdvi::AmdViDriver;
use super::vtd::{VtdDriver, VtdMode};
use super::{Driver, PrivateRegion, SoftDriver};
use crate::amdvi::AmdViConfig;
use crate::core::tests::small_config;
use crate::core::{Core, CoreConfig, EndpointSet, FaultReason, MapFlags};
use crate::request::{AccessKind, DmaRequest};
use crate::vtd::VtdConfig;

fn vtd(mode: VtdMode) -> Arc<dyn Driver> {
    Arc::new(
        VtdDriver::with_unit(
            SparseMem::new(0x2000_0000),
            VtdConfig::default(),
            PrivateRegion {
                base: 0x1000_0000,
                size: 4096 * 4096,
            },
            mode,
        )
        .unwrap(),
    )
}

fn amdvi() -> Arc<dyn Driver> {
    Arc::new(
        AmdViDriver::with_unit(
            SparseMem::new(0x2000_0000),
            AmdViConfig::default(),
            PrivateRegion {
                base: 0x1000_0000,
                size: 4096 * 4096,
            },
        )
        .unwrap(),
    )
}

/// Builds a fresh driver (and the unit it programs).
type MakeDriver = fn() -> Arc<dyn Driver>;

/// Every driver, by name.
pub const DRIVERS: [(&str, MakeDriver); 4] = [
    ("soft", || Arc::new(SoftDriver::new())),
    ("vtd-legacy", || vtd(VtdMode::Legacy)),
    ("vtd-scalable", || vtd(VtdMode::Scalable)),
    ("amdvi", amdvi),
];

const P: u64 = 0x1000;

fn cfg() -> CoreConfig {
    CoreConfig {
        endpoints: EndpointSet::from_ranges([0..=0x1ff]),
        ..CoreConfig::default()
    }
}

fn phys(c: &Core, ep: u32, iova: u64, access: AccessKind) -> Result<u64, FaultReason> {
    c.translate(&DmaRequest::new(
        u16::try_from(ep).unwrap(),
        iova,
        1,
        access,
    ))
    .result
    .map(|t| t.addr)
    .map_err(|f| f.reason)
}

/// The virtio-level fault reasons every driver gives: an endpoint without a domain faults at the
/// device structures (`domain`), an address without a mapping or a mapping without the right
/// at the page tables (`mapping`); bypass passes through; a reset forgets everything.
#[test]
fn every_driver_reports_the_same_fault_reasons() {
    for (name, make) in DRIVERS {
        let c = Core::new(small_config(), make()).unwrap();
        assert_eq!(
            phys(&c, 1, 0x1000, AccessKind::Read),
            Err(FaultReason::Domain),
            "{name}"
        );
        c.attach(1, 1, false).unwrap();
        let ro = MapFlags {
            read: true,
            ..MapFlags::default()
        };
        c.map(1, 0x1000, 0x1fff, 0x9000, ro).unwrap();
        assert_eq!(phys(&c, 1, 0x1008, AccessKind::Read), Ok(0x9008), "{name}");
        assert_eq!(
            phys(&c, 1, 0x1008, AccessKind::Write),
            Err(FaultReason::Mapping),
            "{name}"
        );
        assert_eq!(
            phys(&c, 1, 0x1008, AccessKind::Atomic),
            Err(FaultReason::Mapping),
            "{name}"
        );
        assert_eq!(
            phys(&c, 1, 0x2000, AccessKind::Read),
            Err(FaultReason::Mapping),
            "{name}"
        );
        c.set_bypass(true).unwrap();
        assert_eq!(phys(&c, 2, 0x7008, AccessKind::Write), Ok(0x7008), "{name}");
        c.attach(2, 3, true).unwrap();
        assert_eq!(phys(&c, 3, 0x5000, AccessKind::Read), Ok(0x5000), "{name}");
        c.reset().unwrap();
        assert_eq!(
            phys(&c, 1, 0x1008, AccessKind::Read),
            Ok(0x1008),
            "{name}: bypass kept"
        );
        c.system_reset().unwrap();
        assert_eq!(
            phys(&c, 1, 0x1008, AccessKind::Read),
            Err(FaultReason::Domain),
            "{name}"
        );
        let faults = c.take_faults(16);
        assert!(faults.iter().all(|f| f.endpoint == 1), "{name}: {faults:?}");
    }
}

#[derive(Debug, Clone)]
enum Op {
    Attach(u32, u32, bool),
    Detach(u32, u32),
    Map(u32, u64, u64, u64),
    Unmap(u32, u64, u64),
    Bypass(bool),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (1u32..4, 0u32..4, prop::bool::weighted(0.2)).prop_map(|(d, e, b)| Op::Attach(d, e, b)),
        (1u32..4, 0u32..4).prop_map(|(d, e)| Op::Detach(d, e)),
        (1u32..4, 0u64..32, 1u64..6, 0u64..64).prop_map(|(d, s, n, p)| Op::Map(d, s, n, p)),
        (1u32..4, 0u64..34, 0u64..10).prop_map(|(d, s, n)| Op::Unmap(d, s, n)),
        any::<bool>().prop_map(Op::Bypass),
    ]
}

/// A reference model: plain maps, no hardware.
#[derive(Default, Clone, PartialEq, Debug)]
struct Model {
    bypass: bool,
    attached: BTreeMap<u32, u32>,
    kinds: BTreeMap<u32, bool>,
    maps: BTreeMap<u32, BTreeMap<u64, (u64, u64)>>, // domain -> start page -> (end page, phys page)
}

impl Model {
    fn gc(&mut self) {
        let live: BTreeSet<u32> = self.attached.values().copied().collect();
        self.kinds.retain(|d, _| live.contains(d));
        self.maps.retain(|d, _| live.contains(d));
    }
    fn apply(&mut self, op: &Op) -> bool {
        match *op {
            Op::Attach(d, e, b) => {
                if self.kinds.get(&d).is_some_and(|k| *k != b) {
                    return false;
                }
                self.kinds.insert(d, b);
                self.attached.insert(e, d);
                self.gc();
                true
            }
            Op::Detach(d, e) => {
                if self.attached.get(&e) != Some(&d) {
                    return false;
                }
                self.attached.remove(&e);
                self.gc();
                true
            }
            Op::Map(d, s, n, p) => {
                if self.kinds.get(&d) != Some(&false) {
                    return false;
                }
                let m = self.maps.entry(d).or_default();
                let e = s + n - 1;
                if m.iter().any(|(&ms, &(me, _))| ms <= e && s <= me) {
                    return false;
                }
                m.insert(s, (e, p));
                true
            }
            Op::Unmap(d, s, n) => {
                if self.kinds.get(&d) != Some(&false) {
                    return false;
                }
                let m = self.maps.entry(d).or_default();
                let e = s + n;
                let hit: Vec<u64> = m
                    .iter()
                    .filter(|(ms, (me, _))| **ms <= e && s <= *me)
                    .map(|(ms, _)| *ms)
                    .collect();
                if hit.iter().any(|ms| *ms < s || m[ms].0 > e) {
                    return false;
                }
                for ms in hit {
                    m.remove(&ms);
                }
                true
            }
            Op::Bypass(b) => {
                self.bypass = b;
                true
            }
        }
    }
    fn translate(&self, ep: u32, page: u64) -> Option<u64> {
        match self.attached.get(&ep) {
            None => self.bypass.then_some(page),
            Some(d) if self.kinds[d] => Some(page),
            Some(d) => self
                .maps
                .get(d)?
                .iter()
                .find(|(s, (e, _))| **s <= page && page <= *e)
                .map(|(s, (_, p))| p + page - s),
        }
    }
}

proptest! {
    /// Any sequence of operations leaves the core over every driver agreeing with a plain
    /// reference model, both in what it accepts and in how every endpoint translates; a
    /// rejected operation changes nothing.
    #[test]
    fn every_driver_matches_the_reference_model(ops in prop::collection::vec(op(), 1..60)) {
      for (name, make) in DRIVERS {
        let c = Core::new(CoreConfig { max_mappings: 1 << 10, ..small_config() }, make()).unwrap();
        let mut m = Model::default();
        for op in &ops {
            let before = c.domains();
            let ok = match *op {
                Op::Attach(d, e, b) => c.attach(d, e, b).is_ok(),
                Op::Detach(d, e) => c.detach(d, e).is_ok(),
                Op::Map(d, s, n, p) => c.map(d, s * P, (s + n) * P - 1, p * P, MapFlags::RW).is_ok(),
                Op::Unmap(d, s, n) => c.unmap(d, s * P, (s + n + 1) * P - 1).is_ok(),
                Op::Bypass(b) => c.set_bypass(b).is_ok(),
            };
            let want = m.apply(op);
            prop_assert_eq!(ok, want, "{}: {:?}", name, op);
            if !ok {
                prop_assert_eq!(c.domains(), before);
            }
        }
        for ep in 0..4 {
            for page in 0..40 {
                let got = phys(&c, ep, page * P + 8, AccessKind::Read).ok();
                prop_assert_eq!(got, m.translate(ep, page).map(|p| p * P + 8), "{}: ep {} page {}", name, ep, page);
            }
        }
    }
      }
}

#[derive(Debug, Clone)]
enum TreeOp {
    Attach(u32, u32, bool),
    Detach(u32, u32),
    Map(u32, u64, u64, u64, bool),
    Unmap(u32, u64, u64),
}

fn tree_op() -> impl Strategy<Value = TreeOp> {
    prop_oneof![
        (1u32..4, 0u32..3, prop::bool::weighted(0.2)).prop_map(|(d, e, b)| TreeOp::Attach(d, e, b)),
        (1u32..4, 0u32..3).prop_map(|(d, e)| TreeOp::Detach(d, e)),
        (1u32..4, 0u64..1100, 1u64..600, 0u64..4096, any::<bool>())
            .prop_map(|(d, s, n, p, w)| TreeOp::Map(d, s, n, p, w)),
        (1u32..4, 0u64..1100, 0u64..1100).prop_map(|(d, s, n)| TreeOp::Unmap(d, s, n)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    /// Every driver with hardware structures translates exactly as the soft double's mapping
    /// trees do, for any sequence of operations (including large pages and domain switches),
    /// and accepts the same ones.
    #[test]
    fn every_driver_translates_as_the_soft_double(ops in prop::collection::vec(tree_op(), 1..25)) {
      for (name, make) in DRIVERS.iter().filter(|(n, _)| *n != "soft") {
        let soft = Core::new(cfg(), Arc::new(SoftDriver::new())).unwrap();
        let vtd = Core::new(cfg(), make()).unwrap();
        const P: u64 = 0x1000;
        let mut probes = vec![];
        for op in &ops {
            let (a, b) = match *op {
                TreeOp::Attach(d, e, b) => (soft.attach(d, e, b), vtd.attach(d, e, b)),
                TreeOp::Detach(d, e) => (soft.detach(d, e), vtd.detach(d, e)),
                TreeOp::Map(d, s, n, p, w) => {
                    let f = MapFlags { read: true, write: w, mmio: false };
                    // Outputs stay out of the x86 interrupt window (0xfee0_0000, the 2 MiB
                    // slot 2039): a VT-d unit blocks DMA there (its output check) where the
                    // soft double, which knows no interrupts, would not. A mapping starts up
                    // to 511 pages into its slot and spans up to 600 pages, so it reaches two
                    // slots beyond its first: slots 2037 to 2039 move past the window.
                    const WINDOW: u64 = 0xfee0_0000 / 0x20_0000;
                    let p = if (WINDOW - 2..=WINDOW).contains(&p) { WINDOW + 1 } else { p };
                    let args = (s * P, (s + n) * P - 1, p * 0x20_0000 + (s % 512) * P);
                    probes.push(s * P);
                    probes.push((s + n) * P - 8);
                    (soft.map(d, args.0, args.1, args.2, f), vtd.map(d, args.0, args.1, args.2, f))
                }
                TreeOp::Unmap(d, s, n) => (
                    soft.unmap(d, s * P, (s + n + 1) * P - 1).map(|_| ()),
                    vtd.unmap(d, s * P, (s + n + 1) * P - 1).map(|_| ()),
                ),
            };
            prop_assert_eq!(a.is_ok(), b.is_ok(), "{}: {:?}: soft {:?} driver {:?}", name, op, a, b);
            // Probe after every step so that cached translations are exercised.
            for ep in 0..3 {
                for &iova in &probes {
                    for acc in [AccessKind::Read, AccessKind::Write] {
                        prop_assert_eq!(phys(&soft, ep, iova, acc), phys(&vtd, ep, iova, acc),
                            "{}: ep {} iova {:#x} {:?} after {:?}", name, ep, iova, acc, op);
                    }
                }
            }
        }
    }
      }
}

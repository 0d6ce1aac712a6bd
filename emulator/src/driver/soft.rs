//! The soft double: a driver and a unit with no memory-resident structures. Domains are mapping
//! trees and translation is a tree lookup. It serves the core's own tests, the conformance
//! suite's reference and `--model soft`.
//!
//! [`SoftUnit`] has no register file (MMIO reads zero, writes are ignored), no caches and no
//! tables in memory: its traces hold only the start and end of each mapping-tree walk. Its faults carry code 0 and a vendor-neutral kind and site: an endpoint
//! without a domain faults at the device table, an address without a mapping (or a mapping
//! without the permission) at the page table.

use std::collections::BTreeMap;

// Keys are our own handles and the topology's endpoint ids: a fast hash, no DoS concern.
use rustc_hash::FxHashMap as HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use super::{DriverStats, EndpointMode, HwDomain, HwError};
use crate::core::{EndpointId, Mapping};
use crate::driver::Driver;
use crate::request::{AddressType, DmaRequest, Fault, FaultKind, FaultSite, Perms, Translation};
use crate::trace::{Stage, Trace, WalkKind};
use crate::unit::{Unit, UnitStats};

#[derive(Debug, Default)]
struct SoftState {
    domains: HashMap<HwDomain, BTreeMap<u64, Mapping>>,
    endpoints: HashMap<EndpointId, EndpointMode>,
}

/// The soft double's unit: translation by mapping-tree lookup.
#[derive(Debug, Default)]
pub struct SoftUnit {
    state: RwLock<SoftState>,
    translations: AtomicU64,
    faults: AtomicU64,
}

/// The soft double's driver: writes the mapping trees its [`SoftUnit`] looks up.
#[derive(Debug, Default)]
pub struct SoftDriver {
    unit: Arc<SoftUnit>,
    next_id: AtomicU64,
}

impl SoftDriver {
    /// A soft driver and unit with every endpoint blocked.
    pub fn new() -> Self {
        Self::default()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, SoftState> {
        self.unit.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, SoftState> {
        self.unit.state.write().unwrap_or_else(|e| e.into_inner())
    }
}

impl Driver for SoftDriver {
    fn name(&self) -> &'static str {
        "soft"
    }

    fn unit(&self) -> Arc<dyn Unit> {
        self.unit.clone()
    }

    fn domain_alloc(&self) -> Result<HwDomain, HwError> {
        let id = HwDomain(self.next_id.fetch_add(1, Ordering::Relaxed) + 1);
        self.write().domains.insert(id, BTreeMap::new());
        Ok(id)
    }

    fn domain_free(&self, domain: HwDomain) -> Result<(), HwError> {
        self.write()
            .domains
            .remove(&domain)
            .map(|_| ())
            .ok_or(HwError::NoDomain(domain))
    }

    fn map(&self, domain: HwDomain, mapping: &Mapping) -> Result<(), HwError> {
        let mut st = self.write();
        let tree = st
            .domains
            .get_mut(&domain)
            .ok_or(HwError::NoDomain(domain))?;
        tree.insert(mapping.virt_start, *mapping);
        Ok(())
    }

    fn unmap(&self, domain: HwDomain, mappings: &[Mapping]) -> Result<(), (usize, HwError)> {
        let mut st = self.write();
        let tree = st
            .domains
            .get_mut(&domain)
            .ok_or((0, HwError::NoDomain(domain)))?;
        for m in mappings {
            tree.remove(&m.virt_start);
        }
        Ok(())
    }

    fn set_endpoint(&self, endpoint: EndpointId, mode: EndpointMode) -> Result<(), HwError> {
        self.write().endpoints.insert(endpoint, mode);
        Ok(())
    }

    fn reset(&self) -> Result<(), HwError> {
        // The state the driver brings the unit up in is its power-on state.
        Unit::reset(&*self.unit);
        Ok(())
    }

    fn stats(&self) -> DriverStats {
        DriverStats {
            domains: self.read().domains.len() as u64,
            ..DriverStats::default()
        }
    }
}

impl Unit for SoftUnit {
    fn name(&self) -> &'static str {
        "soft"
    }

    fn translate(&self, req: &DmaRequest, trace: &mut Trace) -> Result<Translation, Fault> {
        trace.clear();
        self.translations.fetch_add(1, Ordering::Relaxed);
        let st = self.state.read().unwrap_or_else(|e| e.into_inner());
        let endpoint = EndpointId::from(req.source_id);
        let mode = st
            .endpoints
            .get(&endpoint)
            .copied()
            .unwrap_or(EndpointMode::Blocked);
        let fault = |kind, site| {
            self.faults.fetch_add(1, Ordering::Relaxed);
            Fault::unrecorded(req, kind, site)
        };
        let table = FaultSite::PageTable {
            stage: Stage::Second,
            level: None,
        };
        let len = req.len.max(1);
        match mode {
            EndpointMode::Blocked => Err(fault(FaultKind::NotPresent, FaultSite::DeviceTable)),
            EndpointMode::PassThrough => Ok(Translation {
                addr: req.addr,
                len: len.min(0x1000 - (req.addr & 0xfff)),
                page_shift: 12,
                perms: Perms::ALL,
                domain_id: 0,
                identity: true,
            }),
            EndpointMode::Translated(d) => {
                // A walk of the domain's mapping tree: no caches, no memory references.
                trace.walk_start(WalkKind::OneD(Stage::Second), 1);
                let hit = st
                    .domains
                    .get(&d)
                    .and_then(|t| t.range(..=req.addr).next_back())
                    .map(|(_, m)| *m)
                    .filter(|m| req.addr <= m.virt_end);
                let Some(m) = hit else {
                    trace.walk_end(true);
                    return Err(fault(FaultKind::NotPresent, table));
                };
                let perms = m.flags.perms();
                // An ATS translation request asks what the mapping allows.
                let denied = req.at == AddressType::Untranslated && !req.access.allowed_by(perms);
                trace.walk_end(denied);
                if denied {
                    return Err(fault(FaultKind::Permission, table));
                }
                Ok(Translation {
                    addr: m.translate(req.addr),
                    len: len.min((m.virt_end - req.addr).saturating_add(1)),
                    page_shift: 12,
                    perms,
                    domain_id: u16::try_from(d.0).unwrap_or(u16::MAX),
                    identity: false,
                })
            }
        }
    }

    fn mmio_read(&self, _offset: u64, _size: u32) -> u64 {
        0
    }

    fn mmio_write(&self, _offset: u64, _size: u32, _value: u64) {}

    /// The soft unit keeps its mapping trees inside the unit, not in memory a driver could
    /// point it at again: its power-on state has no domains and every endpoint blocked.
    fn reset(&self) {
        let mut st = self.state.write().unwrap_or_else(|e| e.into_inner());
        st.domains.clear();
        st.endpoints.clear();
    }

    fn stats(&self) -> UnitStats {
        UnitStats {
            translations: self.translations.load(Ordering::Relaxed),
            faults: self.faults.load(Ordering::Relaxed),
            ..UnitStats::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::MapFlags;
    use crate::request::AccessKind;

    fn mapping(iova: u64, phys: u64) -> Mapping {
        Mapping {
            virt_start: iova,
            virt_end: iova + 0xfff,
            phys_start: phys,
            flags: MapFlags::RW,
        }
    }

    /// A reset unit forgets its endpoints and mapping trees: every endpoint is blocked again,
    /// its registers (none) read zero, and a driver programming it anew gets only the new
    /// mappings, also for the endpoint and IOVA it used before.
    #[test]
    fn reset_blocks_every_endpoint_and_forgets_the_mappings() {
        let d = SoftDriver::new();
        let unit = d.unit();
        let req = DmaRequest::new(7, 0x1040, 4, AccessKind::Read);
        let dom = d.domain_alloc().unwrap();
        d.map(dom, &mapping(0x1000, 0x8000_0000)).unwrap();
        d.set_endpoint(7, EndpointMode::Translated(dom)).unwrap();
        let mut trace = Trace::new();
        assert_eq!(unit.translate(&req, &mut trace).unwrap().addr, 0x8000_0040);

        unit.reset();

        assert_eq!(unit.mmio_read(0, 8), 0);
        let f = unit.translate(&req, &mut trace).unwrap_err();
        assert_eq!(
            (f.kind, f.site),
            (FaultKind::NotPresent, FaultSite::DeviceTable)
        );
        assert_eq!(d.stats().domains, 0, "the mapping trees are gone");
        // The old domain cannot be used again; a new one serves the new boot.
        assert!(d.map(dom, &mapping(0x1000, 0x8000_0000)).is_err());
        let dom2 = d.domain_alloc().unwrap();
        assert_ne!(dom2, dom);
        d.map(dom2, &mapping(0x1000, 0x9000_0000)).unwrap();
        d.set_endpoint(7, EndpointMode::Translated(dom2)).unwrap();
        assert_eq!(unit.translate(&req, &mut trace).unwrap().addr, 0x9000_0040);
        // The counters keep counting across the reset (see `Unit::reset`).
        assert_eq!(unit.stats().translations, 3);
    }
}

//! The simulated platform: one hardware unit programmed by its driver exactly as the daemon's
//! is (real root, context and PASID tables or device tables, real page tables, invalidations
//! through the queue), with a domain per stream mapping the workload's regions.
//!
//! The unit's structures live in a flat, lock-free memory that covers only the driver's
//! private region: the buffers the workload's DMA targets are never read (translation does not
//! touch the data), so their physical addresses, from [`BUFFERS_BASE`] up, need no backing.

use std::sync::Arc;

use pagewalk::FlatMem;

use super::workload::{Region, SimRequest, stream_rid};
use crate::core::{MapFlags, Mapping};
use crate::driver::{Driver, EndpointMode, HwError, PrivateRegion};
use crate::request::{DmaRequest, Fault, Translation};
use crate::trace::Trace;
use crate::unit::Unit;
use crate::{AmdViConfig, AmdViDriver, VtdConfig, VtdDriver, VtdMode};

/// Where the driver's structures and page tables live.
pub const PRIVATE: PrivateRegion = PrivateRegion {
    base: 0x1000_0000,
    size: 96 << 20,
};

/// The physical address the first stream's buffers map to; stream `s` maps from
/// `BUFFERS_BASE + s * BUFFERS_STRIDE`.
pub const BUFFERS_BASE: u64 = 1 << 36;
/// The physical span reserved for one stream's buffers.
pub const BUFFERS_STRIDE: u64 = 1 << 36;

/// The unit and the mode its driver programs it in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimModel {
    /// VT-d in legacy mode: context entries, second-stage tables.
    VtdLegacy,
    /// VT-d in scalable mode: PASID-table entries (second-stage tables, PGTT 010b).
    VtdScalable,
    /// AMD-Vi: DTEs and v1 host tables.
    Amdvi,
    /// VT-d in scalable mode with nested PASID-table entries: a first stage per stream over
    /// one second stage, every miss a two-dimensional walk ([`super::nested`]).
    VtdNested,
}

impl SimModel {
    /// Every model, by its command-line name.
    pub const ALL: [(&'static str, SimModel); 4] = [
        ("vtd", SimModel::VtdLegacy),
        ("vtd-scalable", SimModel::VtdScalable),
        ("amdvi", SimModel::Amdvi),
        ("vtd-nested", SimModel::VtdNested),
    ];

    /// The command-line name.
    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, m)| *m == self)
            .map(|(n, _)| *n)
            .unwrap_or("?")
    }
}

impl std::str::FromStr for SimModel {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .iter()
            .find(|(n, _)| *n == s)
            .map(|(_, m)| *m)
            .ok_or_else(|| {
                let known: Vec<&str> = Self::ALL.iter().map(|(n, _)| *n).collect();
                format!("unknown model {s:?} (known: {})", known.join(", "))
            })
    }
}

/// A unit, its driver, and the domains of the streams.
#[derive(Debug)]
pub struct Platform {
    model: SimModel,
    /// The driver (none for the nested platform, whose structures are built at
    /// [`Platform::map`]).
    driver: Option<Arc<dyn Driver>>,
    unit: Option<Arc<dyn Unit>>,
    vtd: VtdConfig,
    /// Each stream's domain, and the page size it maps with (once mapped).
    domains: std::collections::BTreeMap<u32, crate::driver::HwDomain>,
    regions: Vec<Region>,
    page_size: u64,
}

/// Why the platform could not be built.
#[derive(Debug, thiserror::Error)]
pub enum PlatformError {
    /// The driver refused the unit, a domain or a mapping.
    #[error("{what}: {source}")]
    Driver {
        /// What was being done.
        what: String,
        /// The driver's error.
        source: HwError,
    },
    /// The page size is not one the tables can map with.
    #[error("page size {0:#x} is neither 4 KiB nor 2 MiB")]
    PageSize(u64),
    /// The nested platform's structures could not be built.
    #[error("building the nested platform: {0}")]
    Build(String),
    /// The platform was used before it was mapped.
    #[error("the platform has no unit until its regions are mapped")]
    NotMapped,
}

impl Platform {
    /// The unit `model` (configured by `vtd` or `amd`, whichever applies), brought up by its
    /// driver with every endpoint blocked.
    pub fn new(model: SimModel, vtd: &VtdConfig, amd: &AmdViConfig) -> Result<Self, PlatformError> {
        let mem = FlatMem::new(PRIVATE.base, PRIVATE.size as usize);
        let err = |source| PlatformError::Driver {
            what: format!("bringing up {}", model.name()),
            source,
        };
        let driver: Arc<dyn Driver> = match model {
            SimModel::VtdNested => {
                return Ok(Platform {
                    model,
                    driver: None,
                    unit: None,
                    vtd: vtd.clone(),
                    domains: Default::default(),
                    regions: Vec::new(),
                    page_size: 4096,
                });
            }
            SimModel::VtdLegacy | SimModel::VtdScalable => {
                let mode = if model == SimModel::VtdLegacy {
                    VtdMode::Legacy
                } else {
                    VtdMode::Scalable
                };
                Arc::new(VtdDriver::with_unit(mem, vtd.clone(), PRIVATE, mode).map_err(err)?)
            }
            SimModel::Amdvi => {
                Arc::new(AmdViDriver::with_unit(mem, amd.clone(), PRIVATE).map_err(err)?)
            }
        };
        let unit = driver.unit();
        Ok(Platform {
            model,
            driver: Some(driver),
            unit: Some(unit),
            vtd: vtd.clone(),
            domains: Default::default(),
            regions: Vec::new(),
            page_size: 4096,
        })
    }

    /// The model.
    pub fn model(&self) -> SimModel {
        self.model
    }

    /// The unit (the nested platform's exists once its regions are mapped).
    pub fn unit(&self) -> Option<&Arc<dyn Unit>> {
        self.unit.as_ref()
    }

    /// Maps every region into its stream's domain (one domain per stream, created on first
    /// use) with pages of `page_size` (4 KiB or 2 MiB), and attaches each stream's device
    /// (requester id [`stream_rid`]) to its domain.
    pub fn map(&mut self, regions: &[Region], page_size: u64) -> Result<(), PlatformError> {
        if page_size != 4096 && page_size != 2 << 20 {
            return Err(PlatformError::PageSize(page_size));
        }
        let Some(driver) = self.driver.clone() else {
            let unit = super::nested::nested_unit(&self.vtd, regions, page_size)?;
            self.unit = Some(Arc::new(unit));
            return Ok(());
        };
        let mut domains = std::collections::BTreeMap::new();
        for r in regions {
            let what = |w: &str| format!("{w} for stream {}", r.stream);
            let d = match domains.get(&r.stream) {
                Some(d) => *d,
                None => {
                    let d = driver
                        .domain_alloc()
                        .map_err(|source| PlatformError::Driver {
                            what: what("allocating a domain"),
                            source,
                        })?;
                    domains.insert(r.stream, d);
                    d
                }
            };
            let phys = BUFFERS_BASE + u64::from(r.stream) * BUFFERS_STRIDE;
            // One mapping per page: the driver picks the page size from the mapping's
            // alignment and length, and page-sized mappings keep 4 KiB pages 4 KiB even where
            // a run could take a larger one.
            for off in (0..r.len).step_by(page_size as usize) {
                let m = Mapping {
                    virt_start: r.iova + off,
                    virt_end: r.iova + off + page_size - 1,
                    phys_start: phys + off,
                    flags: MapFlags::RW,
                };
                driver.map(d, &m).map_err(|source| PlatformError::Driver {
                    what: what(&format!("mapping {:#x}", m.virt_start)),
                    source,
                })?;
            }
        }
        self.page_size = page_size;
        self.domains = domains.clone();
        self.regions = regions.to_vec();
        for (stream, d) in domains {
            driver
                .set_endpoint(u32::from(stream_rid(stream)), EndpointMode::Translated(d))
                .map_err(|source| PlatformError::Driver {
                    what: format!("attaching stream {stream}"),
                    source,
                })?;
        }
        Ok(())
    }

    /// Unmaps the pages holding `[iova, iova + len)` from `stream`'s domain and maps them
    /// again, as a driver's DMA unmap and map do, through the driver (its invalidations go
    /// through the unit's queue). Returns the commands the unit ran for it: (invalidation
    /// descriptors or commands, waits).
    pub fn remap(&self, stream: u32, iova: u64, len: u64) -> Result<(u32, u32), PlatformError> {
        let (Some(driver), Some(&d), Some(unit)) =
            (&self.driver, self.domains.get(&stream), &self.unit)
        else {
            return Err(PlatformError::Build(format!(
                "{} cannot remap: no driver or no domain for stream {stream}",
                self.model.name()
            )));
        };
        let page = self.page_size;
        let first = iova / page * page;
        let end = (iova + len.max(1)).div_ceil(page) * page;
        // Each page maps back to the frame `map` gave it.
        let Some(region) = self
            .regions
            .iter()
            .find(|r| r.stream == stream && (r.iova..r.iova + r.len).contains(&first))
        else {
            return Err(PlatformError::Build(format!(
                "stream {stream} maps nothing at {first:#x}"
            )));
        };
        let phys = |a: u64| BUFFERS_BASE + u64::from(stream) * BUFFERS_STRIDE + (a - region.iova);
        let maps: Vec<Mapping> = (first..end)
            .step_by(page as usize)
            .map(|a| Mapping {
                virt_start: a,
                virt_end: a + page - 1,
                phys_start: phys(a),
                flags: MapFlags::RW,
            })
            .collect();
        let waits = |u: &Arc<dyn Unit>| {
            let s = u.stats();
            let w = s
                .commands_by_kind
                .iter()
                .filter(|(k, _)| *k == "invalidation wait" || *k == "COMPLETION_WAIT")
                .map(|(_, n)| n)
                .sum::<u64>();
            (s.commands, w)
        };
        let (c0, w0) = waits(unit);
        let err = |what: &str, source| PlatformError::Driver {
            what: format!("{what} {first:#x} for stream {stream}"),
            source,
        };
        driver
            .unmap(d, &maps)
            .map_err(|(_, e)| err("unmapping", e))?;
        for m in &maps {
            driver.map(d, m).map_err(|e| err("mapping", e))?;
        }
        let (c1, w1) = waits(unit);
        let w = (w1 - w0) as u32;
        Ok(((c1 - c0) as u32 - w, w))
    }

    /// Translates one request through the unit, recording into `trace`.
    pub fn translate(&self, r: &SimRequest, trace: &mut Trace) -> Result<Translation, Fault> {
        let mut req = DmaRequest::new(stream_rid(r.stream), r.addr, r.len, r.access);
        req.pasid = r.pasid;
        match &self.unit {
            Some(u) => u.translate(&req, trace),
            // Not mapped yet: as a blocked device (no unit translates it).
            None => Err(Fault::unrecorded(
                &req,
                crate::request::FaultKind::NotPresent,
                crate::request::FaultSite::Request,
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::AccessKind;
    use crate::sim::workload::WorkloadKind;
    use crate::trace::{CacheId, TraceEvent};

    #[test]
    fn every_model_translates_the_workloads_regions_to_their_buffers() {
        let kind = WorkloadKind::Nic {
            ring: 8,
            buffer_bytes: 2048,
            packet_bytes: 1500,
            gbps: 10.0,
        };
        for (name, model) in SimModel::ALL {
            for page in [4096u64, 2 << 20] {
                let mut p =
                    Platform::new(model, &VtdConfig::default(), &AmdViConfig::default()).unwrap();
                p.map(&kind.regions(page), page).unwrap();
                let mut trace = Trace::new();
                let r = SimRequest {
                    t: 0,
                    stream: 0,
                    pasid: None,
                    addr: (1 << 30) + 0x1234,
                    len: 8,
                    access: AccessKind::Write,
                    remap: None,
                };
                let t = p.translate(&r, &mut trace).unwrap();
                assert_eq!(t.addr, BUFFERS_BASE + 0x1234, "{name} {page:#x}");
                assert_eq!(1u64 << t.page_shift, page, "{name}: the page size mapped");
                // Again: an IOTLB hit.
                p.translate(&r, &mut trace).unwrap();
                assert!(
                    trace.events().contains(&TraceEvent::CacheLookup {
                        cache: CacheId::Iotlb,
                        hit: true
                    }),
                    "{name}: {:?}",
                    trace.events()
                );
                // Outside the regions: a fault.
                let outside = SimRequest { addr: 1 << 29, ..r };
                assert!(p.translate(&outside, &mut trace).is_err(), "{name}");
            }
        }
        assert_eq!("amdvi".parse::<SimModel>(), Ok(SimModel::Amdvi));
        assert!("intel".parse::<SimModel>().unwrap_err().contains("known"));
    }
}

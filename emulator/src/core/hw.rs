//! The surface through which the core layer realises domains in a hardware model.
//!
//! A [`Hardware`] owns everything that silicon would see: tables in memory, register state,
//! caches. The core layer decides *what* the hardware must do (allocate a domain, map a range,
//! point an endpoint at a domain) and the implementation decides *how* (write context entries,
//! build second-stage tables, submit invalidation descriptors). Nothing above this trait ever
//! builds a table or touches a cache.

use std::collections::{BTreeMap, HashMap};
use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};

use super::types::{
    Access, EndpointId, Fault, FaultReason, MapFlags, Mapping, Outcome, TraceStep, Translated,
};

/// An opaque handle to a domain realised in hardware (e.g. a VT-d domain id).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HwDomain(pub u64);

/// What the hardware must do with an endpoint's DMA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndpointMode {
    /// All DMA faults.
    Blocked,
    /// DMA passes untranslated (identity).
    PassThrough,
    /// DMA is translated by the given domain's tables.
    Translated(HwDomain),
}

/// Why the hardware could not do what the core asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HwError {
    /// The hardware (or its private memory) ran out of a resource: domain ids, table frames.
    #[error("hardware resources exhausted: {0}")]
    Exhausted(String),
    /// The hardware model refused or failed the operation.
    #[error("hardware failure: {0}")]
    Failed(String),
}

/// Named counters a hardware model reports (cache hits, walks, invalidations...).
pub type HwStats = Vec<(String, u64)>;

/// A hardware model that realises domains.
///
/// Every method takes `&self`: implementations synchronise internally so that
/// [`Hardware::translate`] can run concurrently with the control path. The core layer serialises
/// the control methods (everything but `translate` and `stats`).
pub trait Hardware: Send + Sync + std::fmt::Debug {
    /// A short name for logs and the control socket (`"vtd"`, `"soft"`).
    fn name(&self) -> &'static str;

    /// Allocates the hardware side of a new, empty paging domain.
    fn domain_alloc(&self) -> Result<HwDomain, HwError>;

    /// Frees a domain that no endpoint uses any more, with all its tables.
    fn domain_free(&self, domain: HwDomain) -> Result<(), HwError>;

    /// Maps `mapping` into `domain`. The range is aligned to the page granularity the core was
    /// configured with, does not overlap an existing mapping and fits the input range.
    fn map(&self, domain: HwDomain, mapping: &Mapping) -> Result<(), HwError>;

    /// Removes `mapping` (previously mapped) from `domain` and invalidates cached translations of
    /// its range. When this returns, no DMA can use the old translation.
    fn unmap(&self, domain: HwDomain, mapping: &Mapping) -> Result<(), HwError>;

    /// Removes every mapping of `mappings` (each previously mapped, in address order) from
    /// `domain` and invalidates cached translations of their ranges, as [`Hardware::unmap`]
    /// does for each; implementations may batch the invalidations (e.g. one invalidation wait
    /// for the whole request). When this returns, no DMA can use an old translation of what
    /// was removed. On failure, returns how many mappings were removed (a prefix of
    /// `mappings`) with the error.
    fn unmap_many(&self, domain: HwDomain, mappings: &[Mapping]) -> Result<(), (usize, HwError)> {
        for (i, m) in mappings.iter().enumerate() {
            self.unmap(domain, m).map_err(|e| (i, e))?;
        }
        Ok(())
    }

    /// Points `endpoint`'s DMA at `mode`, replacing what it had in one step (no DMA observes a
    /// blocked or pass-through state in between), and invalidates what the replaced state left
    /// cached.
    fn set_endpoint(&self, endpoint: EndpointId, mode: EndpointMode) -> Result<(), HwError>;

    /// Points every endpoint of `endpoints` at `mode` (as [`Hardware::set_endpoint`] does for
    /// one). Implementations may batch the invalidations.
    fn set_endpoints(
        &self,
        endpoints: &mut dyn Iterator<Item = EndpointId>,
        mode: EndpointMode,
    ) -> Result<(), HwError> {
        for ep in endpoints {
            self.set_endpoint(ep, mode)?;
        }
        Ok(())
    }

    /// Translates one access by `endpoint` at `iova`. The outcome carries the trace of what the
    /// hardware did when `traced` is set (and may leave it empty otherwise, the DMA fast path).
    fn translate(&self, endpoint: EndpointId, iova: u64, access: Access, traced: bool) -> Outcome;

    /// Returns the hardware to its power-on state: no domains, every endpoint blocked.
    fn reset(&self) -> Result<(), HwError>;

    /// Counters (cache statistics and the like).
    fn stats(&self) -> HwStats;

    /// The identifier the hardware itself uses for `domain` (e.g. the VT-d domain id), if it has
    /// one.
    fn domain_hw_id(&self, domain: HwDomain) -> Option<u64> {
        let _ = domain;
        None
    }
}

/// A hardware double with no memory-resident structures: domains are mapping trees and
/// translation is a tree lookup. It serves the core's own tests and `--model soft`.
#[derive(Debug, Default)]
pub struct SoftHardware {
    inner: RwLock<SoftState>,
    next_id: AtomicU64,
    lookups: AtomicU64,
}

#[derive(Debug, Default)]
struct SoftState {
    domains: HashMap<HwDomain, BTreeMap<u64, Mapping>>,
    endpoints: HashMap<EndpointId, EndpointMode>,
}

impl SoftHardware {
    /// A soft hardware with every endpoint blocked.
    pub fn new() -> Self {
        Self::default()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, SoftState> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, SoftState> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }
}

impl Hardware for SoftHardware {
    fn name(&self) -> &'static str {
        "soft"
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
            .ok_or_else(|| HwError::Failed(format!("no domain {domain:?}")))
    }

    fn map(&self, domain: HwDomain, mapping: &Mapping) -> Result<(), HwError> {
        let mut st = self.write();
        let tree = st
            .domains
            .get_mut(&domain)
            .ok_or_else(|| HwError::Failed(format!("no domain {domain:?}")))?;
        tree.insert(mapping.virt_start, *mapping);
        Ok(())
    }

    fn unmap(&self, domain: HwDomain, mapping: &Mapping) -> Result<(), HwError> {
        let mut st = self.write();
        let tree = st
            .domains
            .get_mut(&domain)
            .ok_or_else(|| HwError::Failed(format!("no domain {domain:?}")))?;
        tree.remove(&mapping.virt_start);
        Ok(())
    }

    fn set_endpoint(&self, endpoint: EndpointId, mode: EndpointMode) -> Result<(), HwError> {
        self.write().endpoints.insert(endpoint, mode);
        Ok(())
    }

    fn translate(&self, endpoint: EndpointId, iova: u64, access: Access, traced: bool) -> Outcome {
        self.lookups.fetch_add(1, Ordering::Relaxed);
        let st = self.read();
        let mode = st
            .endpoints
            .get(&endpoint)
            .copied()
            .unwrap_or(EndpointMode::Blocked);
        let mut trace = Vec::new();
        if traced {
            trace.push(TraceStep(format!("endpoint {endpoint:#x}: {mode:?}")));
        }
        let fault = |reason, detail: &str| Fault {
            reason,
            endpoint,
            address: iova,
            access,
            detail: detail.to_string(),
        };
        let result = match mode {
            EndpointMode::Blocked => Err(fault(FaultReason::Domain, "endpoint blocked")),
            EndpointMode::PassThrough => Ok(Translated {
                phys: iova,
                len: 0x1000 - (iova & 0xfff),
                perm: MapFlags::RW,
            }),
            EndpointMode::Translated(d) => {
                if traced {
                    trace.push(TraceStep(format!("mapping-tree lookup in {d:?}")));
                }
                let hit = st
                    .domains
                    .get(&d)
                    .and_then(|t| t.range(..=iova).next_back())
                    .map(|(_, m)| *m)
                    .filter(|m| iova <= m.virt_end);
                match hit {
                    None => Err(fault(FaultReason::Mapping, "no mapping")),
                    Some(m) if !m.flags.allows(access) => {
                        Err(fault(FaultReason::Mapping, "permission denied"))
                    }
                    Some(m) => Ok(Translated {
                        phys: m.translate(iova),
                        len: (m.virt_end - iova).saturating_add(1),
                        perm: m.flags,
                    }),
                }
            }
        };
        Outcome { result, trace }
    }

    fn reset(&self) -> Result<(), HwError> {
        let mut st = self.write();
        st.domains.clear();
        st.endpoints.clear();
        Ok(())
    }

    fn stats(&self) -> HwStats {
        let st = self.read();
        vec![
            ("lookups".into(), self.lookups.load(Ordering::Relaxed)),
            ("domains".into(), st.domains.len() as u64),
        ]
    }
}

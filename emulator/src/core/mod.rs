//! The domain core: domains, endpoints and mappings with the semantics a virtio-iommu (or any
//! guest-facing IOMMU front) needs, realised in a hardware unit through its [`Driver`], and
//! DMA translated by that unit ([`Core::translate`], from a full [`DmaRequest`]).
//!
//! The front (e.g. the virtio-iommu device) calls [`Core::attach`], [`Core::detach`],
//! [`Core::map`], [`Core::unmap`], [`Core::probe`], [`Core::set_bypass`] and [`Core::reset`].
//! Every operation validates its input completely before it changes anything: a rejected
//! operation leaves the state (and the hardware) as it was. The one exception is a driver
//! failing partway through an unmap (a command queue that stops completing): the mappings it
//! had already removed stay removed, in the hardware and in the core's books alike, and the
//! error is returned.
//!
//! Semantics (virtio 1.3 §5.13.6, and what the Linux `virtio-iommu` driver relies on):
//! - a domain is created by the first ATTACH naming it and freed, with its mappings, when its
//!   last endpoint leaves;
//! - attaching an endpoint that is attached elsewhere moves it in one step: the hardware switches
//!   it from the old domain to the new one without a blocked or pass-through window;
//! - unattached endpoints follow the `bypass` setting: pass-through when set, blocked otherwise;
//! - a bypass domain (`ATTACH_F_BYPASS`) is an identity domain: its endpoints pass through;
//! - mappings never overlap, and UNMAP removes whole mappings only (it never splits one).

mod types;

use std::collections::{BTreeMap, BTreeSet, VecDeque};

// Endpoint ids come from the topology: a fast hash.
use rustc_hash::FxHashMap as HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::driver::{Driver, DriverStats, EndpointMode, HwDomain, HwError};
use crate::request::{DmaRequest, FaultKind, FaultSite, Translation};
use crate::trace::Trace;
use crate::unit::{Unit, UnitStats};

pub use types::{
    DomainId, EndpointId, EndpointSet, Fault, FaultReason, MapFlags, Mapping, Outcome, ResvKind,
    ResvRegion,
};

/// How many unreported faults the core keeps before it drops new ones.
pub const FAULT_QUEUE_DEPTH: usize = 1024;

/// Why the core rejected an operation. The state is unchanged whenever one is returned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CoreError {
    /// The endpoint id names no endpoint of this IOMMU.
    #[error("endpoint {0:#x} does not exist")]
    NoEndpoint(EndpointId),
    /// The domain does not exist.
    #[error("domain {0} does not exist")]
    NoDomain(DomainId),
    /// DETACH named a domain the endpoint is not attached to.
    #[error("endpoint {endpoint:#x} is not attached to domain {domain}")]
    NotAttached {
        /// The domain named.
        domain: DomainId,
        /// The endpoint named.
        endpoint: EndpointId,
    },
    /// The domain id is outside the configured domain range.
    #[error("domain {0} is outside the domain range")]
    DomainOutOfRange(DomainId),
    /// ATTACH's bypass flag does not match the existing domain's kind.
    #[error("bypass flag does not match domain {0}")]
    BypassMismatch(DomainId),
    /// MAP or UNMAP on a bypass (identity) domain.
    #[error("domain {0} is a bypass domain")]
    BypassDomain(DomainId),
    /// `virt_end` is below `virt_start`.
    #[error("range {start:#x}..={end:#x} is reversed")]
    Reversed {
        /// `virt_start`.
        start: u64,
        /// `virt_end`.
        end: u64,
    },
    /// An address is not aligned to the page granularity.
    #[error("address {0:#x} is not aligned to the page granularity")]
    Unaligned(u64),
    /// The IOVA range is outside the input range.
    #[error("IOVA range {start:#x}..={end:#x} is outside the input range")]
    OutsideInputRange {
        /// `virt_start`.
        start: u64,
        /// `virt_end`.
        end: u64,
    },
    /// The physical range overflows or exceeds the physical address width.
    #[error("physical range starting at {0:#x} overflows or exceeds the address width")]
    PhysOutOfRange(u64),
    /// MAP overlaps an existing mapping.
    #[error("range overlaps the mapping at {0:#x}")]
    Overlap(u64),
    /// MAP overlaps a reserved region reported by PROBE.
    #[error("range overlaps the reserved region at {0:#x}")]
    Reserved(u64),
    /// UNMAP would split the mapping starting at the given IOVA.
    #[error("unmap would split the mapping at {0:#x}")]
    Split(u64),
    /// The configured domain limit is reached.
    #[error("too many domains (limit {0})")]
    TooManyDomains(usize),
    /// The configured mapping limit is reached.
    #[error("too many mappings (limit {0})")]
    TooManyMappings(usize),
    /// The configuration is inconsistent.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The hardware model failed.
    #[error(transparent)]
    Hardware(#[from] HwError),
}

/// The core's configuration (the values the virtio config space advertises, plus limits).
#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// Page sizes that can be mapped; the lowest set bit is the granularity.
    pub page_size_mask: u64,
    /// First and last IOVA a mapping may cover (inclusive).
    pub input_range: (u64, u64),
    /// First and last valid domain id (inclusive).
    pub domain_range: (DomainId, DomainId),
    /// Most domains that may exist at once.
    pub max_domains: usize,
    /// Most mappings that may exist at once, over all domains.
    pub max_mappings: usize,
    /// Bits of physical address a mapping may target.
    pub phys_addr_bits: u32,
    /// The endpoints this IOMMU manages.
    pub endpoints: EndpointSet,
    /// Reserved regions every endpoint reports through PROBE.
    pub reserved: Vec<ResvRegion>,
    /// Initial value of `bypass`.
    pub bypass: bool,
}

impl Default for CoreConfig {
    fn default() -> Self {
        Self {
            page_size_mask: 0x4020_1000, // 4 KiB, 2 MiB, 1 GiB
            input_range: (0, (1 << 48) - 1),
            domain_range: (0, 0xffff),
            max_domains: 4096,
            max_mappings: 1 << 20,
            phys_addr_bits: 48,
            endpoints: EndpointSet::all_pci(),
            reserved: vec![ResvRegion::X86_MSI],
            bypass: false,
        }
    }
}

impl CoreConfig {
    /// The page granularity (lowest bit of `page_size_mask`).
    pub fn granule(&self) -> u64 {
        1 << self.page_size_mask.trailing_zeros()
    }

    fn validate(&self) -> Result<(), CoreError> {
        let bad = |s: &str| Err(CoreError::Config(s.to_string()));
        if self.page_size_mask == 0 {
            return bad("page_size_mask must have at least one bit set");
        }
        if self.input_range.0 > self.input_range.1 {
            return bad("input_range start is above its end");
        }
        if self.domain_range.0 > self.domain_range.1 {
            return bad("domain_range start is above its end");
        }
        if !(12..=64).contains(&self.phys_addr_bits) {
            return bad("phys_addr_bits must be between 12 and 64");
        }
        if self.reserved.iter().any(|r| r.start > r.end) {
            return bad("a reserved region starts above its end");
        }
        Ok(())
    }
}

/// What kind of domain a virtio domain is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DomainKind {
    /// Translated through mappings.
    Paging,
    /// Identity (`ATTACH_F_BYPASS`).
    Bypass,
}

#[derive(Debug)]
struct Domain {
    kind: DomainKind,
    hw: Option<HwDomain>,
    endpoints: BTreeSet<EndpointId>,
    mappings: BTreeMap<u64, Mapping>,
}

#[derive(Debug)]
struct State {
    bypass: bool,
    domains: BTreeMap<DomainId, Domain>,
    attached: HashMap<EndpointId, DomainId>,
    mapping_count: usize,
}

/// A snapshot of one domain, for inspection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainInfo {
    /// The driver's domain id.
    pub id: DomainId,
    /// Paging or bypass.
    pub kind: DomainKind,
    /// The hardware handle, if the domain is realised in hardware (bypass domains are not).
    pub hw: Option<HwDomain>,
    /// The identifier the hardware uses for it (the VT-d domain id), if any.
    pub hw_id: Option<u64>,
    /// Attached endpoints, ascending.
    pub endpoints: Vec<EndpointId>,
    /// Mappings, ascending by IOVA.
    pub mappings: Vec<Mapping>,
}

/// Counters kept by the core.
#[derive(Debug, Default)]
struct Counters {
    /// Per-thread shards: every DMA counts here, and a shared counter would put a written
    /// cache line on every translation of every thread.
    translations: iotlb::ShardedCounter,
    faults: AtomicU64,
    faults_dropped: AtomicU64,
}

/// A snapshot of the core's counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoreStats {
    /// Live domains.
    pub domains: usize,
    /// Live mappings over all domains.
    pub mappings: usize,
    /// Translations requested.
    pub translations: u64,
    /// Translations that faulted.
    pub faults: u64,
    /// Faults dropped because the fault queue was full.
    pub faults_dropped: u64,
    /// The unit's counters (translations, faults, each cache's statistics).
    pub unit: UnitStats,
    /// The driver's counters (what it built).
    pub driver: DriverStats,
}

type Notifier = Box<dyn Fn() + Send + Sync>;

/// The domain core. See the module documentation.
pub struct Core {
    config: CoreConfig,
    driver: Arc<dyn Driver>,
    unit: Arc<dyn Unit>,
    state: Mutex<State>,
    /// Incremented whenever a translation may have been removed or restricted; translation
    /// caches outside the hardware model (e.g. a vm-memory IOTLB) flush when it changes.
    generation: AtomicU64,
    faults: Mutex<VecDeque<Fault>>,
    fault_notifier: Mutex<Option<Notifier>>,
    counters: Counters,
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core")
            .field("config", &self.config)
            .field("driver", &self.driver.name())
            .finish_non_exhaustive()
    }
}

impl Core {
    /// A core over the unit `driver` programs, which it resets: no domains, every endpoint
    /// following `config.bypass`.
    pub fn new(config: CoreConfig, driver: Arc<dyn Driver>) -> Result<Self, CoreError> {
        config.validate()?;
        let unit = driver.unit();
        let core = Self {
            state: Mutex::new(State {
                bypass: config.bypass,
                domains: BTreeMap::new(),
                attached: HashMap::default(),
                mapping_count: 0,
            }),
            config,
            driver,
            unit,
            generation: AtomicU64::new(0),
            faults: Mutex::new(VecDeque::new()),
            fault_notifier: Mutex::new(None),
            counters: Counters::default(),
        };
        core.reset_hw(core.config.bypass)?;
        Ok(core)
    }

    /// The configuration.
    pub fn config(&self) -> &CoreConfig {
        &self.config
    }

    /// The hardware model's name (its driver's).
    pub fn hardware_name(&self) -> &'static str {
        self.driver.name()
    }

    /// The unit DMA is translated by.
    pub fn unit(&self) -> &Arc<dyn Unit> {
        &self.unit
    }

    /// The invalidation generation (see [`Core::generation`]'s field documentation): it changes
    /// whenever a translation may have been removed or restricted.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn bump(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn unattached_mode(bypass: bool) -> EndpointMode {
        if bypass {
            EndpointMode::PassThrough
        } else {
            EndpointMode::Blocked
        }
    }

    /// The hardware half of a reset: the model's structures back to their initial state, every
    /// endpoint blocked or (with `bypass`) passed through, and the faults still queued for the
    /// event queue dropped: they describe the state the reset discarded, and a driver after
    /// the reset must not receive them.
    fn reset_hw(&self, bypass: bool) -> Result<(), CoreError> {
        self.driver.reset()?;
        self.faults
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        if bypass {
            self.driver
                .set_endpoints(&mut self.config.endpoints.iter(), EndpointMode::PassThrough)?;
        }
        Ok(())
    }

    fn check_domain_id(&self, domain: DomainId) -> Result<(), CoreError> {
        let (lo, hi) = self.config.domain_range;
        if domain < lo || domain > hi {
            return Err(CoreError::DomainOutOfRange(domain));
        }
        Ok(())
    }

    fn check_endpoint(&self, endpoint: EndpointId) -> Result<(), CoreError> {
        if !self.config.endpoints.contains(endpoint) {
            return Err(CoreError::NoEndpoint(endpoint));
        }
        Ok(())
    }

    /// Attaches `endpoint` to `domain`, creating the domain (of the kind `bypass` selects) if it
    /// does not exist. An endpoint attached elsewhere moves in one step; the domain it leaves is
    /// freed, with its mappings, if it is left empty.
    pub fn attach(
        &self,
        domain: DomainId,
        endpoint: EndpointId,
        bypass: bool,
    ) -> Result<(), CoreError> {
        self.check_domain_id(domain)?;
        self.check_endpoint(endpoint)?;
        let kind = if bypass {
            DomainKind::Bypass
        } else {
            DomainKind::Paging
        };
        let mut st = self.lock();
        let st = &mut *st;
        let old = st.attached.get(&endpoint).copied();
        if let Some(d) = st.domains.get(&domain) {
            if d.kind != kind {
                return Err(CoreError::BypassMismatch(domain));
            }
            if old == Some(domain) {
                return Ok(());
            }
        } else {
            // A moving endpoint frees its old domain, so the count stays within the limit when
            // that domain held only this endpoint.
            let frees_one = old
                .and_then(|o| st.domains.get(&o))
                .is_some_and(|d| d.endpoints.len() == 1);
            if st.domains.len() >= self.config.max_domains && !frees_one {
                return Err(CoreError::TooManyDomains(self.config.max_domains));
            }
            let hw = match kind {
                DomainKind::Paging => Some(self.driver.domain_alloc()?),
                DomainKind::Bypass => None,
            };
            st.domains.insert(
                domain,
                Domain {
                    kind,
                    hw,
                    endpoints: BTreeSet::new(),
                    mappings: BTreeMap::new(),
                },
            );
        }
        let target = st.domains.get(&domain).map(|d| d.hw);
        let mode = match target {
            Some(Some(h)) => EndpointMode::Translated(h),
            _ => EndpointMode::PassThrough,
        };
        if let Err(e) = self.driver.set_endpoint(endpoint, mode) {
            // Undo the creation of a domain nobody joined.
            if let Some(d) = st.domains.get(&domain)
                && d.endpoints.is_empty()
            {
                if let Some(h) = d.hw
                    && let Err(e2) = self.driver.domain_free(h)
                {
                    log::warn!("freeing domain {domain} after a failed attach: {e2}");
                }
                st.domains.remove(&domain);
            }
            return Err(e.into());
        }
        if let Some(d) = st.domains.get_mut(&domain) {
            d.endpoints.insert(endpoint);
        }
        st.attached.insert(endpoint, domain);
        if let Some(o) = old {
            self.leave(st, o, endpoint);
        }
        self.bump();
        log::debug!("attached endpoint {endpoint:#x} to domain {domain} ({kind:?})");
        Ok(())
    }

    /// Removes `endpoint` from domain `o`'s books (the hardware already points elsewhere) and
    /// frees the domain if it is now empty.
    fn leave(&self, st: &mut State, o: DomainId, endpoint: EndpointId) {
        let Some(d) = st.domains.get_mut(&o) else {
            return;
        };
        d.endpoints.remove(&endpoint);
        if d.endpoints.is_empty()
            && let Some(d) = st.domains.remove(&o)
        {
            st.mapping_count -= d.mappings.len();
            if let Some(h) = d.hw
                && let Err(e) = self.driver.domain_free(h)
            {
                log::warn!("freeing domain {o}: {e}");
            }
            log::debug!("freed domain {o} with {} mappings", d.mappings.len());
        }
    }

    /// Detaches `endpoint` from `domain`. The endpoint then follows `bypass`; the domain is freed
    /// with its mappings if no endpoint is left.
    pub fn detach(&self, domain: DomainId, endpoint: EndpointId) -> Result<(), CoreError> {
        self.check_domain_id(domain)?;
        self.check_endpoint(endpoint)?;
        let mut st = self.lock();
        if st.attached.get(&endpoint) != Some(&domain) {
            return Err(CoreError::NotAttached { domain, endpoint });
        }
        self.driver
            .set_endpoint(endpoint, Self::unattached_mode(st.bypass))?;
        st.attached.remove(&endpoint);
        self.leave(&mut st, domain, endpoint);
        self.bump();
        log::debug!("detached endpoint {endpoint:#x} from domain {domain}");
        Ok(())
    }

    /// Checks that `[virt_start, virt_end]` is a well-formed range for `domain`, returning the
    /// domain's entry.
    fn paging_domain<'a>(
        &self,
        st: &'a mut State,
        domain: DomainId,
        virt_start: u64,
        virt_end: u64,
    ) -> Result<&'a mut Domain, CoreError> {
        self.check_domain_id(domain)?;
        let d = st
            .domains
            .get_mut(&domain)
            .ok_or(CoreError::NoDomain(domain))?;
        if d.kind == DomainKind::Bypass {
            return Err(CoreError::BypassDomain(domain));
        }
        if virt_end < virt_start {
            return Err(CoreError::Reversed {
                start: virt_start,
                end: virt_end,
            });
        }
        Ok(d)
    }

    /// Maps `[virt_start, virt_end]` to `phys_start` in `domain`.
    pub fn map(
        &self,
        domain: DomainId,
        virt_start: u64,
        virt_end: u64,
        phys_start: u64,
        flags: MapFlags,
    ) -> Result<(), CoreError> {
        let mut st = self.lock();
        let st = &mut *st;
        let count = st.mapping_count;
        let d = self.paging_domain(st, domain, virt_start, virt_end)?;
        let g = self.config.granule();
        for a in [virt_start, phys_start, virt_end.wrapping_add(1)] {
            if a & (g - 1) != 0 {
                return Err(CoreError::Unaligned(a));
            }
        }
        let (lo, hi) = self.config.input_range;
        if virt_start < lo || virt_end > hi {
            return Err(CoreError::OutsideInputRange {
                start: virt_start,
                end: virt_end,
            });
        }
        let phys_end = phys_start
            .checked_add(virt_end - virt_start)
            .ok_or(CoreError::PhysOutOfRange(phys_start))?;
        if self.config.phys_addr_bits < 64 && phys_end >> self.config.phys_addr_bits != 0 {
            return Err(CoreError::PhysOutOfRange(phys_start));
        }
        if let Some((_, m)) = d.mappings.range(..=virt_end).next_back()
            && m.virt_end >= virt_start
        {
            return Err(CoreError::Overlap(m.virt_start));
        }
        if let Some(r) = self
            .config
            .reserved
            .iter()
            .find(|r| r.overlaps(virt_start, virt_end))
        {
            return Err(CoreError::Reserved(r.start));
        }
        if count >= self.config.max_mappings {
            return Err(CoreError::TooManyMappings(self.config.max_mappings));
        }
        let mapping = Mapping {
            virt_start,
            virt_end,
            phys_start,
            flags,
        };
        if let Some(h) = d.hw {
            self.driver.map(h, &mapping)?;
        }
        d.mappings.insert(virt_start, mapping);
        st.mapping_count += 1;
        Ok(())
    }

    /// Removes every mapping of `domain` inside `[virt_start, virt_end]`. Fails, removing
    /// nothing, if a mapping straddles either end of the range. Returns the removed mappings.
    pub fn unmap(
        &self,
        domain: DomainId,
        virt_start: u64,
        virt_end: u64,
    ) -> Result<Vec<Mapping>, CoreError> {
        let mut st = self.lock();
        let st = &mut *st;
        let d = self.paging_domain(st, domain, virt_start, virt_end)?;
        // A mapping that starts before the range but reaches into it would be split.
        if let Some((_, m)) = d.mappings.range(..virt_start).next_back()
            && m.virt_end >= virt_start
        {
            return Err(CoreError::Split(m.virt_start));
        }
        let mut victims: Vec<Mapping> = d
            .mappings
            .range(virt_start..=virt_end)
            .map(|(_, m)| *m)
            .collect();
        if let Some(last) = victims.last()
            && last.virt_end > virt_end
        {
            return Err(CoreError::Split(last.virt_start));
        }
        // One hardware call for the whole request, so the invalidations can be batched.
        let (done, failure) = match d.hw {
            Some(h) if !victims.is_empty() => match self.driver.unmap(h, &victims) {
                Ok(()) => (victims.len(), None),
                Err((n, e)) => (n.min(victims.len()), Some(e)),
            },
            _ => (victims.len(), None),
        };
        for m in &victims[..done] {
            d.mappings.remove(&m.virt_start);
        }
        st.mapping_count -= done;
        if let Some(e) = failure {
            // What was removed so far stays removed (the hardware no longer has it); the
            // rest stays mapped. Report the failure.
            self.bump();
            return Err(e.into());
        }
        if done > 0 {
            self.bump();
        }
        victims.truncate(done);
        Ok(victims)
    }

    /// The reserved regions PROBE reports for `endpoint`.
    pub fn probe(&self, endpoint: EndpointId) -> Result<Vec<ResvRegion>, CoreError> {
        self.check_endpoint(endpoint)?;
        Ok(self.config.reserved.clone())
    }

    /// The current `bypass` setting.
    pub fn bypass(&self) -> bool {
        self.lock().bypass
    }

    /// Changes `bypass`: every unattached endpoint switches to pass-through (set) or blocked.
    pub fn set_bypass(&self, bypass: bool) -> Result<(), CoreError> {
        let mut st = self.lock();
        if st.bypass == bypass {
            return Ok(());
        }
        let attached = &st.attached;
        self.driver.set_endpoints(
            &mut self
                .config
                .endpoints
                .iter()
                .filter(|ep| !attached.contains_key(ep)),
            Self::unattached_mode(bypass),
        )?;
        st.bypass = bypass;
        self.bump();
        log::info!("bypass set to {bypass}");
        Ok(())
    }

    /// Device reset: every domain is freed, every endpoint detached and every queued fault
    /// dropped. `bypass` keeps its value
    /// (virtio 1.3 §5.13.4: it "SHOULD NOT change on device reset"); use
    /// [`Core::system_reset`] to restore its initial value too.
    pub fn reset(&self) -> Result<(), CoreError> {
        let mut st = self.lock();
        self.reset_hw(st.bypass)?;
        st.domains.clear();
        st.attached.clear();
        st.mapping_count = 0;
        self.bump();
        Ok(())
    }

    /// System reset: [`Core::reset`] plus `bypass` back to its configured initial value.
    pub fn system_reset(&self) -> Result<(), CoreError> {
        let mut st = self.lock();
        self.reset_hw(self.config.bypass)?;
        st.bypass = self.config.bypass;
        st.domains.clear();
        st.attached.clear();
        st.mapping_count = 0;
        self.bump();
        Ok(())
    }

    /// The domain `endpoint` is attached to, if any.
    pub fn endpoint_domain(&self, endpoint: EndpointId) -> Option<DomainId> {
        self.lock().attached.get(&endpoint).copied()
    }

    /// A snapshot of every domain.
    pub fn domains(&self) -> Vec<DomainInfo> {
        let st = self.lock();
        st.domains
            .iter()
            .map(|(id, d)| DomainInfo {
                id: *id,
                kind: d.kind,
                hw: d.hw,
                hw_id: d.hw.and_then(|h| self.driver.domain_hw_id(h)),
                endpoints: d.endpoints.iter().copied().collect(),
                mappings: d.mappings.values().copied().collect(),
            })
            .collect()
    }

    /// Translates one DMA request through the unit, with the trace of what it did. A fault is
    /// also queued for the event queue (see [`Core::take_faults`]).
    pub fn translate(&self, req: &DmaRequest) -> Outcome {
        let mut trace = Trace::new();
        let result = self.translate_into(req, &mut trace);
        Outcome { result, trace }
    }

    /// [`Core::translate`] without a trace: the DMA fast path.
    pub fn translate_untraced(&self, req: &DmaRequest) -> Result<Translation, Fault> {
        self.translate_into(req, &mut Trace::off())
    }

    /// [`Core::translate`] recording into a caller-owned trace (cleared first).
    pub fn translate_into(
        &self,
        req: &DmaRequest,
        trace: &mut Trace,
    ) -> Result<Translation, Fault> {
        self.counters.translations.incr();
        self.unit.translate(req, trace).map_err(|f| {
            self.driver.fault_serviced(&f);
            self.counters.faults.fetch_add(1, Ordering::Relaxed);
            let fault = Fault {
                reason: virtio_reason(&f),
                endpoint: EndpointId::from(req.source_id),
                address: req.addr,
                access: req.access,
                unit: f,
            };
            self.record_fault(fault.clone());
            fault
        })
    }

    fn record_fault(&self, fault: Fault) {
        {
            let mut q = self.faults.lock().unwrap_or_else(|e| e.into_inner());
            if q.len() >= FAULT_QUEUE_DEPTH {
                self.counters.faults_dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
            q.push_back(fault);
        }
        if let Some(n) = &*self
            .fault_notifier
            .lock()
            .unwrap_or_else(|e| e.into_inner())
        {
            n();
        }
    }

    /// Installs the function called after a fault is queued (e.g. to kick the event queue).
    pub fn set_fault_notifier(&self, notifier: impl Fn() + Send + Sync + 'static) {
        *self
            .fault_notifier
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(Box::new(notifier));
    }

    /// Takes up to `max` queued faults, oldest first.
    pub fn take_faults(&self, max: usize) -> Vec<Fault> {
        let mut q = self.faults.lock().unwrap_or_else(|e| e.into_inner());
        let n = max.min(q.len());
        q.drain(..n).collect()
    }

    /// Puts faults back at the head of the queue (when they could not be delivered).
    pub fn requeue_faults(&self, faults: Vec<Fault>) {
        let mut q = self.faults.lock().unwrap_or_else(|e| e.into_inner());
        for f in faults.into_iter().rev() {
            q.push_front(f);
        }
        while q.len() > FAULT_QUEUE_DEPTH {
            q.pop_back();
            self.counters.faults_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The core's counters and the hardware's.
    pub fn stats(&self) -> CoreStats {
        let (domains, mappings) = {
            let st = self.lock();
            (st.domains.len(), st.mapping_count)
        };
        CoreStats {
            domains,
            mappings,
            translations: self.counters.translations.get(),
            faults: self.counters.faults.load(Ordering::Relaxed),
            faults_dropped: self.counters.faults_dropped.load(Ordering::Relaxed),
            unit: self.unit.stats(),
            driver: self.driver.stats(),
        }
    }
}

/// The virtio-iommu fault reason (virtio 1.3 §5.13.6.9) of a unit's fault, from its
/// vendor-neutral site and kind: a device or PASID structure that is not present means the
/// endpoint has no domain; a page-table entry that is not present or does not grant the access
/// (or an input beyond the tables' reach) means no mapping allows it; everything else (invalid
/// programming, memory errors, blocked requests) is an internal error of the device.
fn virtio_reason(f: &crate::request::Fault) -> FaultReason {
    match (f.site, f.kind) {
        (FaultSite::DeviceTable | FaultSite::PasidTable, FaultKind::NotPresent) => {
            FaultReason::Domain
        }
        (
            FaultSite::PageTable { .. },
            FaultKind::NotPresent | FaultKind::Permission | FaultKind::AddressWidth,
        ) => FaultReason::Mapping,
        _ => FaultReason::Unknown,
    }
}

#[cfg(test)]
pub(crate) mod tests;

//! The contract every IOMMU hardware unit keeps (`../shared/DESIGN.md`, "Layers").
//!
//! A unit is what silicon is: a register file, caches and walkers that read and update the
//! memory-resident structures software built. Software (our drivers in [`crate::driver`], or a
//! guest kernel's driver through a register front) reaches it only through
//! [`Unit::mmio_read`] and [`Unit::mmio_write`] and the memory it reads; DMA reaches it only as
//! a [`DmaRequest`] through [`Unit::translate`]. Nothing outside a unit can touch its caches:
//! what they did is reported in the [`Trace`] of each translation and, in total, by
//! [`Unit::stats`].

use std::fmt;

use iotlb::CacheStats;

use crate::request::{DmaRequest, Fault, Translation};
use crate::trace::Trace;

/// A physical cache of a unit, as its statistics name it. (A lookup in a [`Trace`] names a
/// [`crate::trace::CacheId`], which also says which stage's entry was looked for.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum CacheKind {
    /// The IOTLB (final translations).
    Iotlb,
    /// The context cache (VT-d context entries) or device-table cache (AMD-Vi DTEs).
    Context,
    /// The PASID cache (VT-d PASID-table entries) or GCR3-table cache (AMD-Vi).
    Pasid,
    /// The paging-structure cache of non-leaf entries at `level`.
    PagingStructure {
        /// The level of the cached entries (2 = entries pointing at leaf tables).
        level: u8,
    },
}

impl CacheKind {
    /// A short name for logs and the control socket (`iotlb`, `context`, `pasid`, `psc_l2`).
    pub fn name(self) -> String {
        match self {
            CacheKind::Iotlb => "iotlb".into(),
            CacheKind::Context => "context".into(),
            CacheKind::Pasid => "pasid".into(),
            CacheKind::PagingStructure { level } => format!("psc_l{level}"),
        }
    }
}

/// What a unit did, in total: the counters a simulator or the control socket reads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnitStats {
    /// Translations requested.
    pub translations: u64,
    /// Translations that faulted (ATS completions with no permission are not faults).
    pub faults: u64,
    /// Faults the unit recorded in its fault log or registers.
    pub faults_recorded: u64,
    /// Commands (invalidation descriptors, command-buffer entries) the unit executed.
    pub commands: u64,
    /// The same by kind, as the spec names them (VT-d descriptor types, §6.5.2; AMD-Vi
    /// command opcodes, §2.4), every kind the unit knows listed, executed or not.
    pub commands_by_kind: Vec<(&'static str, u64)>,
    /// Each cache's lookups, hits, misses, fills (inserts), refusals, evictions and
    /// invalidations.
    pub caches: Vec<(CacheKind, CacheStats)>,
}

impl UnitStats {
    /// The statistics of `cache`, if the unit has it.
    pub fn cache(&self, cache: CacheKind) -> Option<&CacheStats> {
        self.caches
            .iter()
            .find_map(|(k, s)| (*k == cache).then_some(s))
    }
}

/// An IOMMU hardware unit (see the module notes).
///
/// Every method takes `&self`: a unit serves translations from many threads at once while
/// software programs it.
pub trait Unit: Send + Sync + fmt::Debug {
    /// A short name for logs and the control socket (`"vtd"`, `"soft"`).
    fn name(&self) -> &'static str;

    /// Translates one DMA request, recording into `trace` (cleared first; a trace made with
    /// [`Trace::off`] records nothing) every cache lookup and fill, walk and memory reference.
    /// A fault is also handled as the hardware handles it (recorded in the fault log,
    /// signalled by its interrupt) before it is returned.
    fn translate(&self, req: &DmaRequest, trace: &mut Trace) -> Result<Translation, Fault>;

    /// Reads `size` bytes of the register file at `offset`. Accesses the unit does not
    /// implement read zero.
    fn mmio_read(&self, offset: u64, size: u32) -> u64;

    /// Writes `size` bytes of `value` to the register file at `offset`, with the side effects
    /// the specification gives the register. Accesses the unit does not implement are ignored.
    fn mmio_write(&self, offset: u64, size: u32, value: u64);

    /// Returns the unit to its power-on state, as a platform reset does: every register to its
    /// reset value (translation disabled), every cache empty, pending fault records and queued
    /// events gone, so that nothing of the previous boot's tables or caches can be used
    /// afterwards. A translation that began before the reset may still complete with what it
    /// found, but caches nothing and records no fault. Memory is not the unit's and is left as
    /// it is. The counters of [`Unit::stats`] keep counting across a reset: they say what the
    /// unit did since it was built, as a simulator's statistics do, not architectural state.
    fn reset(&self);

    /// The unit's counters.
    fn stats(&self) -> UnitStats;

    /// The memory-resident structures the unit follows for requester `rid` and `pasid`, read
    /// without translating (see [`crate::inspect`]); `None` for a unit that keeps none in
    /// memory.
    fn structures(&self, _rid: u16, _pasid: Option<u32>) -> Option<crate::inspect::StructureView> {
        None
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use pagewalk::SparseMem;

    use crate::core::{MapFlags, Mapping};
    use crate::driver::{Driver, EndpointMode, PrivateRegion};
    use crate::{AmdViConfig, AmdViDriver, VtdConfig, VtdDriver, VtdMode};

    /// A driver's programming shows in the unit's command counts by kind: they add up to the
    /// total, every kind is listed, and the kinds a driver uses to map and attach are there.
    #[test]
    fn commands_are_counted_by_kind() {
        let region = PrivateRegion {
            base: 0x1000_0000,
            size: 4096 * 4096,
        };
        let mem = || SparseMem::new(0x2000_0000);
        let drivers: [(Arc<dyn Driver>, usize, &[&str]); 3] = [
            (
                Arc::new(
                    VtdDriver::with_unit(mem(), VtdConfig::default(), region, VtdMode::Legacy)
                        .unwrap(),
                ),
                7,
                &[
                    "invalidation wait",
                    "context-cache invalidate",
                    "IOTLB invalidate",
                ],
            ),
            (
                Arc::new(
                    VtdDriver::with_unit(mem(), VtdConfig::default(), region, VtdMode::Scalable)
                        .unwrap(),
                ),
                7,
                &["invalidation wait", "PASID-cache invalidate"],
            ),
            (
                Arc::new(AmdViDriver::with_unit(mem(), AmdViConfig::default(), region).unwrap()),
                8,
                &["COMPLETION_WAIT", "INVALIDATE_DEVTAB_ENTRY"],
            ),
        ];
        for (driver, kinds, used) in drivers {
            let d = driver.domain_alloc().unwrap();
            let m = Mapping {
                virt_start: 0x10_0000,
                virt_end: 0x10_0fff,
                phys_start: 0x20_0000,
                flags: MapFlags::RW,
            };
            driver.map(d, &m).unwrap();
            driver
                .set_endpoint(0x20, EndpointMode::Translated(d))
                .unwrap();
            driver.unmap(d, &[m]).unwrap();
            let s = driver.unit().stats();
            assert_eq!(s.commands_by_kind.len(), kinds, "{s:?}");
            let total: u64 = s.commands_by_kind.iter().map(|(_, n)| n).sum();
            assert_eq!(total, s.commands, "{s:?}");
            for k in used {
                let n = s
                    .commands_by_kind
                    .iter()
                    .find(|(name, _)| name == k)
                    .unwrap()
                    .1;
                assert!(n > 0, "{}: no {k}: {s:?}", driver.name());
            }
        }
    }
}

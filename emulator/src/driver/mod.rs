//! Drivers: the software that programs a hardware unit, one per unit kind, plus the plumbing
//! every driver needs written once.
//!
//! A [`Driver`] realises what the core decides (allocate a domain, map a range, point an
//! endpoint at a domain) the way a kernel driver programs silicon: it writes memory-resident
//! structures in IOMMU-private memory, writes the unit's registers and submits commands to its
//! queue, and learns what the unit can do from its capability registers, never from the
//! model's Rust configuration. Translation is the unit's ([`crate::unit::Unit`]): a driver
//! hands out the unit it programs ([`Driver::unit`]) and the core translates through that.
//!
//! Written once, for every driver:
//! - [`PrivateMemory`]: the allocator of IOMMU-private pages (outside guest RAM) for tables,
//!   queues and status words, zeroed and handed out all-or-none;
//! - [`DomainIds`]: the allocator of the unit's domain identifiers;
//! - [`CommandQueue`]: a command queue whose wait command proves completion (VT-d's
//!   invalidation queue with its wait descriptor; AMD-Vi's command buffer with
//!   COMPLETION_WAIT), with submission in waited chunks.
//!
//! [`SoftDriver`] (with its [`SoftUnit`]) is the double without memory-resident structures.

pub mod amdvi;
#[cfg(test)]
mod conformance;
mod soft;
pub mod vtd;

use std::sync::Arc;

use pagewalk::{BumpAllocator, FrameAllocator, PhysMem};

use crate::core::{EndpointId, Mapping};
use crate::unit::Unit;

pub use soft::{SoftDriver, SoftUnit};

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

/// A resource a driver can run out of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Resource {
    /// IOMMU-private memory for tables and queues.
    PrivateMemory,
    /// The unit's domain identifiers.
    DomainIds,
}

impl std::fmt::Display for Resource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Resource::PrivateMemory => "IOMMU-private memory",
            Resource::DomainIds => "domain ids",
        })
    }
}

/// Why a driver could not do what the core asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HwError {
    /// A resource ran out.
    #[error("hardware resources exhausted: {0}")]
    Exhausted(Resource),
    /// The domain handle names no domain of this driver.
    #[error("no hardware domain {0:?}")]
    NoDomain(HwDomain),
    /// The endpoint id is not something the unit can name (e.g. not a PCI requester id).
    #[error("endpoint {0:#x} is not a requester id of this unit")]
    BadEndpoint(EndpointId),
    /// Building or changing page tables failed.
    #[error("page tables: {0}")]
    Tables(#[from] pagewalk::BuildError),
    /// Reading or writing a structure in memory failed.
    #[error("structure memory: {0}")]
    Memory(#[from] pagewalk::MemError),
    /// The unit did not complete a queue's wait command; `status` is the unit's fault status
    /// register when it was seen (VT-d FSTS).
    #[error("command queue wait did not complete (fault status {status:#x})")]
    QueueWait {
        /// The fault status register read back.
        status: u64,
    },
    /// The unit did not take a command written to its registers (a status bit stayed clear).
    #[error("the unit did not acknowledge {command} (status {status:#x})")]
    NotAcknowledged {
        /// The command.
        command: &'static str,
        /// The status register read back.
        status: u64,
    },
    /// The unit lacks a capability the driver needs, or the request cannot be expressed.
    #[error("unsupported: {0}")]
    Unsupported(&'static str),
    /// The unit could not be built from its configuration.
    #[error(transparent)]
    VtdConfig(#[from] crate::vtd::ConfigError),
    /// The AMD-Vi unit could not be built from its configuration.
    #[error(transparent)]
    AmdViConfig(#[from] crate::amdvi::AmdViConfigError),
}

/// Counters a driver keeps of what it built.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DriverStats {
    /// Domains realised.
    pub domains: u64,
    /// IOMMU-private pages in use (tables, queues, status words).
    pub private_pages_in_use: u64,
    /// The mode the unit is programmed in, for drivers with several (e.g. `"legacy"`,
    /// `"scalable"`).
    pub mode: Option<&'static str>,
}

/// A driver of one hardware unit.
///
/// Every method takes `&self`: implementations synchronise internally. The core serialises the
/// control methods; translation goes to the unit, concurrently.
pub trait Driver: Send + Sync + std::fmt::Debug {
    /// A short name for logs and the control socket (`"vtd"`, `"soft"`).
    fn name(&self) -> &'static str;

    /// The unit this driver programs: what DMA is translated by.
    fn unit(&self) -> Arc<dyn Unit>;

    /// Allocates the hardware side of a new, empty paging domain.
    fn domain_alloc(&self) -> Result<HwDomain, HwError>;

    /// Frees a domain that no endpoint uses any more, with all its tables.
    fn domain_free(&self, domain: HwDomain) -> Result<(), HwError>;

    /// Maps `mapping` into `domain`. The range is aligned to the page granularity the core was
    /// configured with, does not overlap an existing mapping and fits the input range.
    fn map(&self, domain: HwDomain, mapping: &Mapping) -> Result<(), HwError>;

    /// Removes every mapping of `mappings` (each previously mapped, in address order) from
    /// `domain` and invalidates cached translations of their ranges; implementations may batch
    /// the invalidations (e.g. one wait for the whole request). When this returns, no DMA can
    /// use an old translation of what was removed. On failure, returns how many mappings were
    /// removed (a prefix of `mappings`) with the error: tables already changed and invalidated
    /// cannot be put back once the unit may have seen them.
    fn unmap(&self, domain: HwDomain, mappings: &[Mapping]) -> Result<(), (usize, HwError)>;

    /// Points `endpoint`'s DMA at `mode`, replacing what it had in one step (no DMA observes a
    /// blocked or pass-through state in between), and invalidates what the replaced state left
    /// cached.
    fn set_endpoint(&self, endpoint: EndpointId, mode: EndpointMode) -> Result<(), HwError>;

    /// Points every endpoint of `endpoints` at `mode` (as [`Driver::set_endpoint`] does for
    /// one), all or none. Implementations may batch the invalidations.
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

    /// Returns the unit to the state the driver brought it up in: no domains, every endpoint
    /// blocked.
    fn reset(&self) -> Result<(), HwError>;

    /// Services the unit after a translation faulted, as a driver's fault handler does (VT-d:
    /// clears the fault recording registers so that later faults are recorded too).
    fn fault_serviced(&self, fault: &crate::request::Fault) {
        let _ = fault;
    }

    /// What the driver built.
    fn stats(&self) -> DriverStats;

    /// The identifier the unit itself uses for `domain` (e.g. the VT-d domain id), if any.
    fn domain_hw_id(&self, domain: HwDomain) -> Option<u64> {
        let _ = domain;
        None
    }
}

/// Where a driver keeps its structures: IOMMU-private memory outside guest RAM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrivateRegion {
    /// First byte (4 KiB aligned).
    pub base: u64,
    /// Size in bytes.
    pub size: u64,
}

/// Size of a structure page.
pub const PAGE: u64 = 4096;

/// The allocator of IOMMU-private pages over a [`PrivateRegion`]. Pages it hands out are
/// zeroed; the page-table builder takes it as its frame allocator.
#[derive(Debug)]
pub struct PrivateMemory {
    alloc: BumpAllocator,
}

impl PrivateMemory {
    /// An allocator of `region`'s pages.
    pub fn new(region: PrivateRegion) -> Result<Self, HwError> {
        let end = region
            .base
            .checked_add(region.size)
            .ok_or(HwError::Unsupported("the private region wraps"))?;
        Ok(Self {
            alloc: BumpAllocator::new(region.base, end),
        })
    }

    /// Allocates and zeroes `n` pages, all or none.
    pub fn alloc_zeroed<M: PhysMem + ?Sized>(
        &mut self,
        mem: &M,
        n: usize,
    ) -> Result<Vec<u64>, HwError> {
        let mut pages = Vec::with_capacity(n);
        for _ in 0..n {
            let zeroed = match self.alloc.alloc_frame() {
                Some(p) => {
                    let z = pagewalk::alloc::zero_page(mem, p).map_err(HwError::from);
                    pages.push(p);
                    z
                }
                None => Err(HwError::Exhausted(Resource::PrivateMemory)),
            };
            if let Err(e) = zeroed {
                for p in pages {
                    self.alloc.free_frame(p);
                }
                return Err(e);
            }
        }
        Ok(pages)
    }

    /// Allocates and zeroes one page.
    pub fn page<M: PhysMem + ?Sized>(&mut self, mem: &M) -> Result<u64, HwError> {
        Ok(self.alloc_zeroed(mem, 1)?[0])
    }

    /// Returns a page.
    pub fn free(&mut self, page: u64) {
        self.alloc.free_frame(page);
    }

    /// Pages in use.
    pub fn in_use(&self) -> usize {
        self.alloc.in_use()
    }

    /// The frame allocator, for the page-table builder.
    pub fn frames(&mut self) -> &mut BumpAllocator {
        &mut self.alloc
    }
}

/// The allocator of a unit's domain identifiers in `first..=last` (a driver learns `last` from
/// the unit's capability registers, e.g. VT-d CAP.ND, and reserves those below `first`).
#[derive(Debug, Clone)]
pub struct DomainIds {
    first: u16,
    last: u16,
    next: u32,
    free: Vec<u16>,
}

impl DomainIds {
    /// Identifiers `first..=last`, none in use.
    pub fn new(first: u16, last: u16) -> Self {
        Self {
            first,
            last,
            next: u32::from(first),
            free: Vec::new(),
        }
    }

    /// An identifier not in use: the most recently freed one, or the next never used.
    pub fn alloc(&mut self) -> Result<u16, HwError> {
        if let Some(id) = self.free.pop() {
            return Ok(id);
        }
        let id = u16::try_from(self.next)
            .ok()
            .filter(|id| *id <= self.last)
            .ok_or(HwError::Exhausted(Resource::DomainIds))?;
        self.next += 1;
        Ok(id)
    }

    /// Returns `id` (the caller has invalidated everything cached under it).
    pub fn free(&mut self, id: u16) {
        self.free.push(id);
    }

    /// Every identifier free again.
    pub fn reset(&mut self) {
        self.free.clear();
        self.next = u32::from(self.first);
    }
}

/// A command queue of a unit `U`, as a driver drives it: commands written to queue memory, the tail
/// register moved, and a wait command whose status write proves that every command before it
/// completed. VT-d's invalidation queue with its invalidation-wait descriptor (VT-d spec rev
/// 4.1, §6.5.2.8) and AMD-Vi's command buffer with COMPLETION_WAIT (AMD IOMMU spec #48882,
/// §2.4.1) both have this shape.
pub trait CommandQueue<U: ?Sized> {
    /// One command, encoded.
    type Command;

    /// How many commands the queue holds at once, waits included.
    fn capacity(&self) -> usize;

    /// Writes `cmd` at the queue's tail in memory (the unit does not see it yet).
    fn write(&mut self, unit: &U, cmd: &Self::Command) -> Result<(), HwError>;

    /// Appends a wait command, moves the tail register so the unit runs everything written,
    /// and checks the wait's status write. On a queue error, recovers the queue as a driver
    /// does and returns [`HwError::QueueWait`].
    fn wait(&mut self, unit: &U) -> Result<(), HwError>;

    /// Submits `cmds` in chunks, each followed by a wait, so that a chunk never fills the
    /// queue. Returns when every command completed.
    fn submit(&mut self, unit: &U, cmds: &[Self::Command]) -> Result<(), HwError> {
        let per_wait = (self.capacity() / 2).max(1);
        for chunk in cmds.chunks(per_wait) {
            for c in chunk {
                self.write(unit, c)?;
            }
            self.wait(unit)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domain_ids_reuse_freed_ids_and_run_out() {
        let mut ids = DomainIds::new(2, 4);
        assert_eq!(
            (ids.alloc(), ids.alloc(), ids.alloc()),
            (Ok(2), Ok(3), Ok(4))
        );
        assert_eq!(ids.alloc(), Err(HwError::Exhausted(Resource::DomainIds)));
        ids.free(3);
        assert_eq!(ids.alloc(), Ok(3));
        ids.reset();
        assert_eq!(ids.alloc(), Ok(2));
        let mut top = DomainIds::new(0xfffe, 0xffff);
        assert_eq!((top.alloc(), top.alloc()), (Ok(0xfffe), Ok(0xffff)));
        assert!(top.alloc().is_err());
    }

    #[test]
    fn private_memory_hands_out_zeroed_pages_all_or_none() {
        let mem = pagewalk::SparseMem::new(1 << 32);
        let mut pm = PrivateMemory::new(PrivateRegion {
            base: 0x10_0000,
            size: 3 * PAGE,
        })
        .unwrap();
        mem.write_u64(0x10_0000, 7).unwrap();
        let p = pm.page(&mem).unwrap();
        assert_eq!(mem.read_u64(p).unwrap(), 0);
        assert_eq!(
            pm.alloc_zeroed(&mem, 3),
            Err(HwError::Exhausted(Resource::PrivateMemory))
        );
        assert_eq!(pm.in_use(), 1, "a failed allocation takes nothing");
        assert_eq!(pm.alloc_zeroed(&mem, 2).unwrap().len(), 2);
        assert!(
            PrivateMemory::new(PrivateRegion {
                base: u64::MAX - PAGE + 1,
                size: 2 * PAGE
            })
            .is_err()
        );
    }

    /// A queue of `cap` slots that records what the unit saw.
    struct Recorder {
        cap: usize,
        pending: Vec<u32>,
        seen: Vec<Vec<u32>>,
    }

    impl CommandQueue<()> for Recorder {
        type Command = u32;
        fn capacity(&self) -> usize {
            self.cap
        }
        fn write(&mut self, _: &(), cmd: &u32) -> Result<(), HwError> {
            self.pending.push(*cmd);
            assert!(self.pending.len() < self.cap, "a chunk filled the queue");
            Ok(())
        }
        fn wait(&mut self, _: &()) -> Result<(), HwError> {
            self.seen.push(std::mem::take(&mut self.pending));
            Ok(())
        }
    }

    #[test]
    fn submission_waits_after_each_chunk_that_fits() {
        let mut q = Recorder {
            cap: 8,
            pending: Vec::new(),
            seen: Vec::new(),
        };
        let cmds: Vec<u32> = (0..10).collect();
        q.submit(&(), &cmds).unwrap();
        assert_eq!(q.seen, vec![vec![0, 1, 2, 3], vec![4, 5, 6, 7], vec![8, 9]]);
        q.submit(&(), &[]).unwrap();
        assert_eq!(q.seen.len(), 3, "nothing to submit, no wait");
    }
}

//! DMA for one endpoint through the hardware model, as a vm-memory [`Iommu`].
//!
//! Wrap guest memory in [`vm_memory::IommuMemory`] with an [`EndpointIommu`] and any rust-vmm
//! device code (virtio-queue, `Bytes`) performs its DMA as that endpoint: every access is
//! translated by the core's hardware model, faults are reported on the event queue, and unmaps
//! are honoured because the IOTLB kept here is flushed whenever the core's invalidation
//! generation moves.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard};

use iommu_emulator::core::Core;
use iommu_emulator::{AccessKind, DmaRequest, Perms};
use vm_memory::iommu::{Error as IommuError, Iommu, Iotlb, IotlbIterator, IovaRange};
use vm_memory::{GuestAddress, Permissions};

/// Largest single access translated at once (bounds the per-access work).
pub const MAX_DMA_LEN: usize = 1 << 30;

/// How many times a lookup is retried after filling the IOTLB (an invalidation racing with the
/// fill forces a retry).
const MAX_ROUNDS: usize = 8;

/// A vm-memory [`Iommu`] for one endpoint.
#[derive(Debug)]
pub struct EndpointIommu {
    core: Arc<Core>,
    /// The request every access starts from: the endpoint's source id and PASID, its privilege.
    template: DmaRequest,
    iotlb: RwLock<Iotlb>,
    seen_generation: AtomicU64,
}

fn perms(p: Perms) -> Permissions {
    match (p.read(), p.write()) {
        (true, true) => Permissions::ReadWrite,
        (true, false) => Permissions::Read,
        (false, true) => Permissions::Write,
        (false, false) => Permissions::No,
    }
}

impl EndpointIommu {
    /// DMA as the endpoint with PCI requester id `source_id` through `core`: untranslated,
    /// unprivileged requests without PASID.
    pub fn new(core: Arc<Core>, source_id: u16) -> Self {
        Self::with_request(core, DmaRequest::new(source_id, 0, 0, AccessKind::Read))
    }

    /// DMA through `core` with requests shaped like `template` (its source id, PASID and
    /// privilege; the address, length and access come from each access).
    pub fn with_request(core: Arc<Core>, template: DmaRequest) -> Self {
        let g = core.generation();
        Self {
            core,
            template,
            iotlb: RwLock::new(Iotlb::new()),
            seen_generation: AtomicU64::new(g),
        }
    }

    fn flush_if_stale(&self) -> u64 {
        let g = self.core.generation();
        if self.seen_generation.load(Ordering::Acquire) != g {
            let mut t = self.iotlb.write().unwrap_or_else(|e| e.into_inner());
            t.invalidate_all();
            self.seen_generation.store(g, Ordering::Release);
        }
        g
    }

    /// Translates `[start, start + len)` page by page through the model and fills the IOTLB.
    fn fill(
        &self,
        start: u64,
        len: u64,
        access: Permissions,
        generation: u64,
    ) -> Result<(), IommuError> {
        let probe = if access.has_write() {
            AccessKind::Write
        } else {
            AccessKind::Read
        };
        let mut fills = Vec::new();
        let mut addr = start;
        let end = start
            .checked_add(len)
            .ok_or_else(|| IommuError::CannotResolve {
                iova_range: IovaRange {
                    base: GuestAddress(start),
                    length: len as usize,
                },
                reason: "range wraps around the address space".into(),
            })?;
        // Each step covers at least one byte; the model's answers cover at least up to the end
        // of a page, so a range of `len` bytes takes at most len/4KiB + 1 steps.
        while addr < end {
            let req = DmaRequest {
                addr,
                len: end - addr,
                access: probe,
                ..self.template
            };
            let t = self
                .core
                .translate_untraced(&req)
                .map_err(|f| IommuError::CannotResolve {
                    iova_range: IovaRange {
                        base: GuestAddress(addr),
                        length: (end - addr) as usize,
                    },
                    reason: format!(
                        "{:?} fault ({:?} at {:?}, code {:#x})",
                        f.reason, f.unit.kind, f.unit.site, f.unit.code
                    ),
                })?;
            if !perms(t.perms).allow(access) {
                return Err(IommuError::CannotResolve {
                    iova_range: IovaRange {
                        base: GuestAddress(addr),
                        length: (end - addr) as usize,
                    },
                    reason: format!("the translation allows {:?}, not {access:?}", t.perms),
                });
            }
            let n = t.len.max(1).min(end - addr);
            fills.push((addr, t.addr, n, perms(t.perms)));
            addr += n;
        }
        let mut tlb = self.iotlb.write().unwrap_or_else(|e| e.into_inner());
        // Generation check at insert: a translation that began before an invalidation must not
        // land after it.
        if self.core.generation() != generation {
            return Ok(());
        }
        for (iova, phys, n, p) in fills {
            tlb.set_mapping(GuestAddress(iova), GuestAddress(phys), n as usize, p)?;
        }
        Ok(())
    }
}

impl Iommu for EndpointIommu {
    type IotlbGuard<'a> = RwLockReadGuard<'a, Iotlb>;

    fn translate(
        &self,
        iova: GuestAddress,
        length: usize,
        access: Permissions,
    ) -> Result<IotlbIterator<Self::IotlbGuard<'_>>, IommuError> {
        let range = || IovaRange { base: iova, length };
        if length > MAX_DMA_LEN || iova.0.checked_add(length as u64).is_none() {
            return Err(IommuError::CannotResolve {
                iova_range: range(),
                reason: "access too large or wrapping".into(),
            });
        }
        for _ in 0..MAX_ROUNDS {
            let generation = self.flush_if_stale();
            let guard = self.iotlb.read().unwrap_or_else(|e| e.into_inner());
            let fails = match Iotlb::lookup(guard, iova, length, access) {
                Ok(it) => return Ok(it),
                Err(fails) => fails,
            };
            for r in fails.misses.iter().chain(fails.access_fails.iter()) {
                self.fill(r.base.0, r.length as u64, access, generation)?;
            }
        }
        Err(IommuError::CannotResolve {
            iova_range: range(),
            reason: "translations kept being invalidated".into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use iommu_emulator::SoftDriver;
    use iommu_emulator::core::{CoreConfig, EndpointSet, FaultReason, MapFlags};
    use vm_memory::{Bytes, GuestMemoryMmap, IommuMemory};

    const EP: u16 = 0x18;

    fn setup() -> (Arc<Core>, GuestMemoryMmap) {
        let cfg = CoreConfig {
            endpoints: EndpointSet::from_ranges([0..=0xff]),
            ..CoreConfig::default()
        };
        let core = Arc::new(Core::new(cfg, Arc::new(SoftDriver::new())).unwrap());
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        (core, mem)
    }

    #[test]
    fn dma_goes_through_the_mappings_and_honours_unmap() {
        let (core, mem) = setup();
        core.attach(1, u32::from(EP), false).unwrap();
        // Two IOVA pages mapped to non-adjacent physical pages.
        core.map(1, 0x40_0000, 0x40_0fff, 0x3000, MapFlags::RW)
            .unwrap();
        core.map(1, 0x40_1000, 0x40_1fff, 0x8000, MapFlags::RW)
            .unwrap();
        let dma = IommuMemory::new(mem.clone(), EndpointIommu::new(core.clone(), EP), true, ());
        // An access that straddles the two pages lands in both physical pages.
        dma.write_obj(0x1122_3344_5566_7788u64, GuestAddress(0x40_0ffc))
            .unwrap();
        assert_eq!(
            mem.read_obj::<u32>(GuestAddress(0x3ffc)).unwrap(),
            0x5566_7788
        );
        assert_eq!(
            mem.read_obj::<u32>(GuestAddress(0x8000)).unwrap(),
            0x1122_3344
        );
        assert_eq!(
            dma.read_obj::<u64>(GuestAddress(0x40_0ffc)).unwrap(),
            0x1122_3344_5566_7788
        );
        // After UNMAP the cached translation is gone and the access faults.
        core.unmap(1, 0x40_1000, 0x40_1fff).unwrap();
        assert!(dma.read_obj::<u64>(GuestAddress(0x40_0ffc)).is_err());
        assert!(dma.read_obj::<u32>(GuestAddress(0x40_0ffc)).is_ok());
        let faults = core.take_faults(8);
        assert_eq!(faults.len(), 1);
        assert_eq!(faults[0].reason, FaultReason::Mapping);
        assert_eq!(faults[0].address, 0x40_1000);
    }

    #[test]
    fn read_only_mapping_refuses_writes() {
        let (core, mem) = setup();
        core.attach(1, u32::from(EP), false).unwrap();
        let ro = MapFlags {
            read: true,
            ..Default::default()
        };
        core.map(1, 0x1000, 0x1fff, 0x5000, ro).unwrap();
        mem.write_obj(0xabu8, GuestAddress(0x5010)).unwrap();
        let dma = IommuMemory::new(mem.clone(), EndpointIommu::new(core.clone(), EP), true, ());
        assert_eq!(dma.read_obj::<u8>(GuestAddress(0x1010)).unwrap(), 0xab);
        assert!(dma.write_obj(1u8, GuestAddress(0x1010)).is_err());
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0x5010)).unwrap(), 0xab);
    }

    #[test]
    fn unattached_endpoint_follows_bypass() {
        let (core, mem) = setup();
        let dma = IommuMemory::new(mem.clone(), EndpointIommu::new(core.clone(), EP), true, ());
        assert!(dma.write_obj(7u32, GuestAddress(0x2000)).is_err());
        core.set_bypass(true).unwrap();
        dma.write_obj(7u32, GuestAddress(0x2000)).unwrap();
        assert_eq!(mem.read_obj::<u32>(GuestAddress(0x2000)).unwrap(), 7);
        // Detaching from a domain and blocking again takes effect at once.
        core.set_bypass(false).unwrap();
        assert!(dma.read_obj::<u32>(GuestAddress(0x2000)).is_err());
    }

    #[test]
    fn huge_or_wrapping_accesses_are_refused() {
        let (core, _) = setup();
        core.set_bypass(true).unwrap();
        let iommu = EndpointIommu::new(core, EP);
        assert!(
            iommu
                .translate(GuestAddress(0), MAX_DMA_LEN + 1, Permissions::Read)
                .is_err()
        );
        assert!(
            iommu
                .translate(GuestAddress(u64::MAX - 3), 8, Permissions::Read)
                .is_err()
        );
        let it: Vec<_> = iommu
            .translate(GuestAddress(0x1ff8), 16, Permissions::ReadWrite)
            .unwrap()
            .collect();
        assert_eq!(it.iter().map(|m| m.length).sum::<usize>(), 16);
        assert_eq!(it[0].base, GuestAddress(0x1ff8));
    }
}

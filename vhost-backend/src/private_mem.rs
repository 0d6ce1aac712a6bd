//! The system physical address space the hardware model sees (DESIGN: "guest RAM regions
//! (from the vhost-user memory table) plus an IOMMU-private region, outside guest RAM").
//!
//! - [`PrivateMem`]: one anonymous mapping at a fixed physical base where the model's
//!   structures live. Access goes straight to the one region (no search through a region
//!   collection), with the naturally aligned 32- and 64-bit atomic operations [`PhysMem`] asks
//!   for; anything outside the region is [`MemError::Unmapped`].
//! - [`SystemMem`]: the private region plus guest RAM, read through the same
//!   `GuestMemoryAtomic` the vhost-user handler updates on every memory-table change. The
//!   private region is looked up first, so RAM a front end places over it is shadowed and can
//!   never stand in for the model's tables.

use pagewalk::{AtomicAccess, MemError, impl_phys_mem_via_atomics, region_atomic};
use vm_memory::{
    AtomicInteger, GuestAddress, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryBackend,
    GuestMemoryMmap, GuestRegionMmap, MemoryRegionAddress, MmapRegion,
};

/// Why the region could not be created.
#[derive(Debug, thiserror::Error)]
pub enum PrivateMemError {
    /// Size zero, not a multiple of 4 KiB, or base + size overflows.
    #[error("invalid private region {base:#x}+{size:#x}")]
    Invalid {
        /// Requested base.
        base: u64,
        /// Requested size.
        size: u64,
    },
    /// The anonymous mapping failed.
    #[error("cannot map the private region: {0}")]
    Map(String),
}

/// The IOMMU-private region.
#[derive(Debug)]
pub struct PrivateMem {
    base: u64,
    size: u64,
    region: GuestRegionMmap<()>,
}

impl PrivateMem {
    /// Maps `size` bytes (reserved address space; pages are touched only when written) at
    /// physical address `base`.
    pub fn new(base: u64, size: u64) -> Result<Self, PrivateMemError> {
        let invalid = PrivateMemError::Invalid { base, size };
        if size == 0 || size & 0xfff != 0 || base & 0xfff != 0 || base.checked_add(size).is_none() {
            return Err(invalid);
        }
        let len = usize::try_from(size).map_err(|_| invalid)?;
        let mapping = MmapRegion::new(len).map_err(|e| PrivateMemError::Map(e.to_string()))?;
        let region = GuestRegionMmap::new(mapping, GuestAddress(base))
            .ok_or_else(|| PrivateMemError::Map("region wraps".into()))?;
        Ok(Self { base, size, region })
    }

    /// First physical address of the region.
    pub fn base(&self) -> u64 {
        self.base
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Whether `addr` lies in the region.
    pub fn contains(&self, addr: u64) -> bool {
        addr.checked_sub(self.base).is_some_and(|o| o < self.size)
    }
}

/// The private region plus guest RAM: the model's system physical address space.
#[derive(Debug)]
pub struct SystemMem {
    private: PrivateMem,
    ram: GuestRam,
}

impl SystemMem {
    /// `private` plus whatever `ram` holds now and later.
    pub fn new(private: PrivateMem, ram: GuestMemoryAtomic<GuestMemoryMmap>) -> Self {
        Self {
            private,
            ram: GuestRam::new(ram),
        }
    }

    /// The private region.
    pub fn private(&self) -> &PrivateMem {
        &self.private
    }
}

impl AtomicAccess for PrivateMem {
    fn with_atomic<A: AtomicInteger, R>(
        &self,
        addr: u64,
        f: impl FnOnce(&A) -> R,
    ) -> Result<R, MemError> {
        let n = std::mem::size_of::<A>() as u64;
        if !addr.is_multiple_of(n) {
            return Err(MemError::Unaligned(addr));
        }
        let off = addr
            .checked_sub(self.base)
            .filter(|o| o.checked_add(n).is_some_and(|e| e <= self.size))
            .ok_or(MemError::Unmapped(addr))?;
        region_atomic(&self.region, MemoryRegionAddress(off), addr, f)
    }
}

impl_phys_mem_via_atomics!(PrivateMem);

impl AtomicAccess for SystemMem {
    fn with_atomic<A: AtomicInteger, R>(
        &self,
        addr: u64,
        f: impl FnOnce(&A) -> R,
    ) -> Result<R, MemError> {
        if self.private.contains(addr) {
            return self.private.with_atomic(addr, f);
        }
        self.ram.with_atomic(addr, f)
    }
}

impl_phys_mem_via_atomics!(SystemMem);

/// Guest RAM alone, as a unit under the register front reads it: the guest's own driver
/// builds every structure in guest RAM, and the RAM is what the vfio-user client's DMA
/// regions currently give ([`crate::vfio::regions::DmaRegions::with_sink`] keeps it
/// current).
#[derive(Debug, Clone)]
pub struct GuestRam {
    ram: GuestMemoryAtomic<GuestMemoryMmap>,
}

impl GuestRam {
    /// Guest RAM as `ram` holds it at each access.
    pub fn new(ram: GuestMemoryAtomic<GuestMemoryMmap>) -> Self {
        Self { ram }
    }
}

impl AtomicAccess for GuestRam {
    fn with_atomic<A: AtomicInteger, R>(
        &self,
        addr: u64,
        f: impl FnOnce(&A) -> R,
    ) -> Result<R, MemError> {
        if !addr.is_multiple_of(std::mem::size_of::<A>() as u64) {
            return Err(MemError::Unaligned(addr));
        }
        let ram = self.ram.memory();
        let (region, off) = ram
            .to_region_addr(GuestAddress(addr))
            .ok_or(MemError::Unmapped(addr))?;
        region_atomic(region, off, addr, f)
    }
}

impl_phys_mem_via_atomics!(GuestRam);

#[cfg(test)]
mod tests {
    use super::*;
    use pagewalk::PhysMem;

    const BASE: u64 = 0x4000_0000_0000;

    #[test]
    fn reads_writes_and_exchanges_inside_the_region_only() {
        let m = PrivateMem::new(BASE, 0x10000).unwrap();
        assert_eq!((m.base(), m.size()), (BASE, 0x10000));
        assert_eq!(m.read_u64(BASE + 0x10).unwrap(), 0);
        m.write_u64(BASE + 0x10, 0x1122_3344_5566_7788).unwrap();
        assert_eq!(m.read_u32(BASE + 0x10).unwrap(), 0x5566_7788);
        assert_eq!(m.read_u32(BASE + 0x14).unwrap(), 0x1122_3344);
        m.write_u32(BASE + 0x14, 0xdead_beef).unwrap();
        assert_eq!(m.read_u64(BASE + 0x10).unwrap(), 0xdead_beef_5566_7788);
        assert_eq!(
            m.compare_exchange_u64(BASE + 0x10, 1, 2).unwrap(),
            Err(0xdead_beef_5566_7788)
        );
        assert_eq!(
            m.compare_exchange_u64(BASE + 0x10, 0xdead_beef_5566_7788, 2)
                .unwrap(),
            Ok(0xdead_beef_5566_7788)
        );
        m.write_u64(BASE + 0xfff8, 5).unwrap();
        assert_eq!(m.read_u64(BASE + 0xfff8).unwrap(), 5);
        for bad in [BASE - 8, BASE + 0x10000, 0, u64::MAX - 7] {
            assert_eq!(m.read_u64(bad), Err(MemError::Unmapped(bad)));
            assert_eq!(m.write_u64(bad, 1), Err(MemError::Unmapped(bad)));
        }
        assert_eq!(m.read_u64(BASE + 4), Err(MemError::Unaligned(BASE + 4)));
        assert_eq!(m.write_u32(BASE + 2, 0), Err(MemError::Unaligned(BASE + 2)));
    }

    #[test]
    fn system_memory_is_the_private_region_plus_current_guest_ram() {
        let ram = GuestMemoryAtomic::new(GuestMemoryMmap::new());
        let m = SystemMem::new(PrivateMem::new(BASE, 0x2000).unwrap(), ram.clone());
        assert_eq!(m.read_u64(0x1000), Err(MemError::Unmapped(0x1000)));
        m.write_u64(BASE + 8, 3).unwrap();
        // The vhost-user handler replaces the memory table: the model sees the new RAM.
        let table = GuestMemoryMmap::<()>::from_ranges(&[
            (GuestAddress(0), 0x10000),
            (GuestAddress(BASE), 0x1000), // overlaps the private region: shadowed
        ])
        .unwrap();
        ram.lock().unwrap().replace(table.clone());
        m.write_u64(0x1000, 7).unwrap();
        assert_eq!(m.read_u32(0x1000).unwrap(), 7);
        assert_eq!(
            vm_memory::Bytes::read_obj::<u64>(&table, GuestAddress(0x1000)).unwrap(),
            7
        );
        assert_eq!(m.read_u64(BASE + 8).unwrap(), 3);
        assert_eq!(
            vm_memory::Bytes::read_obj::<u64>(&table, GuestAddress(BASE + 8)).unwrap(),
            0
        );
        assert_eq!(m.read_u64(0x10000), Err(MemError::Unmapped(0x10000)));
        assert_eq!(m.read_u64(0x1004), Err(MemError::Unaligned(0x1004)));
        assert_eq!(m.private().base(), BASE);
    }

    #[test]
    fn invalid_regions_are_refused() {
        for (b, s) in [
            (BASE, 0),
            (BASE, 0x1001),
            (BASE + 1, 0x1000),
            (!0xfff, 0x2000),
        ] {
            assert!(matches!(
                PrivateMem::new(b, s),
                Err(PrivateMemError::Invalid { .. })
            ));
        }
    }
}

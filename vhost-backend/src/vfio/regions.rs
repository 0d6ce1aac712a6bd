//! Guest RAM as a vfio-user endpoint sees it: the DMA regions the client (QEMU) mapped with
//! `VFIO_USER_DMA_MAP`, each a file descriptor (the guest's memfd) at an offset, at a
//! guest-physical address. A region sent without a descriptor (QEMU's BIOS ROM) is recorded
//! but cannot be reached. An address outside every region is a DMA error, never a host
//! access.

use std::fs::File;
use std::sync::Arc;

use vm_memory::bitmap::BitmapSlice;
use vm_memory::mmap::MmapRegion;
use vm_memory::volatile_memory::VolatileSlice;
use vm_memory::{
    FileOffset, GuestAddress, GuestMemoryAtomic, GuestMemoryMmap, GuestMemoryRegion,
    GuestRegionMmap, MemoryRegionAddress,
};

/// Most regions one connection may map (QEMU maps a handful: RAM below and above 4 GiB,
/// ROMs).
pub const MAX_REGIONS: usize = 256;

/// Why a DMA region could not be mapped or unmapped.
#[derive(Debug, thiserror::Error)]
pub enum RegionError {
    /// Zero size, a range that wraps, or an offset past what the file can hold.
    #[error("bad DMA region [{address:#x}, +{size:#x}) at file offset {offset:#x}")]
    Bad {
        /// Guest-physical base.
        address: u64,
        /// Size.
        size: u64,
        /// Offset into the descriptor.
        offset: u64,
    },
    /// The range overlaps a region already mapped.
    #[error("DMA region [{address:#x}, +{size:#x}) overlaps a mapped region")]
    Overlap {
        /// Guest-physical base.
        address: u64,
        /// Size.
        size: u64,
    },
    /// An unmap that would split a region, or names none.
    #[error("DMA unmap [{address:#x}, +{size:#x}) does not cover whole mapped regions")]
    Unmap {
        /// Guest-physical base.
        address: u64,
        /// Size.
        size: u64,
    },
    /// Too many regions.
    #[error("more than {MAX_REGIONS} DMA regions")]
    TooMany,
    /// The descriptor could not be mapped.
    #[error("cannot map the DMA region's descriptor: {0}")]
    Mmap(#[from] vm_memory::mmap::MmapRegionError),
}

/// What an access to guest RAM may do, from the `VFIO_USER_DMA_MAP` flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegionPerms {
    /// The device may read.
    pub read: bool,
    /// The device may write.
    pub write: bool,
}

#[derive(Debug)]
struct Region {
    start: u64,
    size: u64,
    perms: RegionPerms,
    /// The mapping, or none for a region sent without a descriptor.
    map: Option<Arc<GuestRegionMmap>>,
}

impl Region {
    fn end(&self) -> u64 {
        self.start + self.size
    }
}

/// The DMA regions of one connection, sorted by address and never overlapping.
#[derive(Debug, Default)]
pub struct DmaRegions {
    regions: Vec<Region>,
    /// Where the reachable regions are published after every change, for readers on other
    /// threads (a unit behind the register front walks the guest's tables in them).
    sink: Option<GuestMemoryAtomic<GuestMemoryMmap>>,
}

/// Why an access to guest RAM failed: the guest-physical address that could not be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("guest-physical {addr:#x} is outside every DMA region the device may {}", if *.write { "write" } else { "read" })]
pub struct NotRam {
    /// The first unreachable address.
    pub addr: u64,
    /// The access was a write.
    pub write: bool,
}

impl DmaRegions {
    /// No regions.
    pub fn new() -> Self {
        Self::default()
    }

    /// No regions; every change is published to `sink` as the guest memory of the regions
    /// that have a descriptor (their permissions are this type's to enforce, not the sink's:
    /// a unit reads and updates its structures in guest RAM as the hardware does).
    pub fn with_sink(sink: GuestMemoryAtomic<GuestMemoryMmap>) -> Self {
        let r = DmaRegions {
            regions: Vec::new(),
            sink: Some(sink),
        };
        r.publish();
        r
    }

    fn publish(&self) {
        let Some(sink) = &self.sink else { return };
        let maps: Vec<Arc<GuestRegionMmap>> =
            self.regions.iter().filter_map(|r| r.map.clone()).collect();
        // Sorted and disjoint by construction, so the collection always builds.
        let mem = if maps.is_empty() {
            GuestMemoryMmap::new()
        } else {
            GuestMemoryMmap::from_arc_regions(maps).unwrap_or_default()
        };
        sink.lock().unwrap_or_else(|e| e.into_inner()).replace(mem);
    }

    /// Maps `size` bytes of `fd` from `offset` at guest-physical `address`, or records a
    /// region without a descriptor. The state is unchanged on error.
    pub fn map(
        &mut self,
        address: u64,
        size: u64,
        offset: u64,
        perms: RegionPerms,
        fd: Option<File>,
    ) -> Result<(), RegionError> {
        let bad = RegionError::Bad {
            address,
            size,
            offset,
        };
        let end = address.checked_add(size).ok_or(bad)?;
        if size == 0 || offset.checked_add(size).is_none() || usize::try_from(size).is_err() {
            return Err(RegionError::Bad {
                address,
                size,
                offset,
            });
        }
        if self.regions.len() >= MAX_REGIONS {
            return Err(RegionError::TooMany);
        }
        let at = self.regions.partition_point(|r| r.end() <= address);
        if self.regions.get(at).is_some_and(|r| r.start < end) {
            return Err(RegionError::Overlap { address, size });
        }
        let map = match fd {
            Some(f) => {
                let mmap = MmapRegion::from_file(FileOffset::new(f, offset), size as usize)?;
                Some(Arc::new(
                    GuestRegionMmap::new(mmap, GuestAddress(address)).ok_or(RegionError::Bad {
                        address,
                        size,
                        offset,
                    })?,
                ))
            }
            None => None,
        };
        self.regions.insert(
            at,
            Region {
                start: address,
                size,
                perms,
                map,
            },
        );
        self.publish();
        Ok(())
    }

    /// Unmaps every region inside `[address, address + size)`; a range that would split a
    /// region, or covers none, is refused and changes nothing. Returns the regions removed.
    pub fn unmap(&mut self, address: u64, size: u64) -> Result<usize, RegionError> {
        let err = RegionError::Unmap { address, size };
        let end = address.checked_add(size).ok_or(err)?;
        let first = self.regions.partition_point(|r| r.end() <= address);
        let last = self.regions.partition_point(|r| r.start < end);
        let hit = &self.regions[first..last];
        if hit.is_empty()
            || hit.first().is_some_and(|r| r.start < address)
            || hit.last().is_some_and(|r| r.end() > end)
        {
            return Err(RegionError::Unmap { address, size });
        }
        self.regions.drain(first..last);
        self.publish();
        Ok(last - first)
    }

    /// Forgets every region (the connection is gone).
    pub fn clear(&mut self) {
        self.regions.clear();
        self.publish();
    }

    /// The regions, as (guest-physical start, size, reachable).
    pub fn list(&self) -> Vec<(u64, u64, bool)> {
        self.regions
            .iter()
            .map(|r| (r.start, r.size, r.map.is_some()))
            .collect()
    }

    /// The guest RAM at `[addr, addr + len)` inside one region, for an access of the kind
    /// `write` says, clipped at the region's end: the slice (at most `len` bytes, at least
    /// one).
    pub fn slice(
        &self,
        addr: u64,
        len: u64,
        write: bool,
    ) -> Result<VolatileSlice<'_, impl BitmapSlice + '_>, NotRam> {
        let not_ram = NotRam { addr, write };
        let i = self.regions.partition_point(|r| r.end() <= addr);
        let r = self
            .regions
            .get(i)
            .filter(|r| r.start <= addr)
            .ok_or(not_ram)?;
        let allowed = if write { r.perms.write } else { r.perms.read };
        let map = r.map.as_ref().filter(|_| allowed).ok_or(not_ram)?;
        let n = len.min(r.end() - addr).max(1);
        map.get_slice(MemoryRegionAddress(addr - r.start), n as usize)
            .map_err(|_| not_ram)
    }

    /// Reads `buf.len()` bytes of guest RAM at `addr`.
    pub fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), NotRam> {
        let mut done = 0usize;
        while done < buf.len() {
            let a = addr
                .checked_add(done as u64)
                .ok_or(NotRam { addr, write: false })?;
            let s = self.slice(a, (buf.len() - done) as u64, false)?;
            let n = s.len();
            s.copy_to(&mut buf[done..done + n]);
            done += n;
        }
        Ok(())
    }

    /// Writes `buf` to guest RAM at `addr`.
    pub fn write(&self, addr: u64, buf: &[u8]) -> Result<(), NotRam> {
        let mut done = 0usize;
        while done < buf.len() {
            let a = addr
                .checked_add(done as u64)
                .ok_or(NotRam { addr, write: true })?;
            let s = self.slice(a, (buf.len() - done) as u64, true)?;
            let n = s.len();
            s.copy_from(&buf[done..done + n]);
            done += n;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek, SeekFrom, Write};

    const RW: RegionPerms = RegionPerms {
        read: true,
        write: true,
    };

    /// A file standing in for the guest's memfd.
    fn backing(len: u64) -> File {
        let f = tempfile();
        f.set_len(len).unwrap();
        f
    }

    fn tempfile() -> File {
        let path = std::env::temp_dir().join(format!(
            "dma-regions-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        std::fs::remove_file(&path).unwrap();
        f
    }

    #[test]
    fn accesses_reach_the_file_at_the_region_offset() {
        let mut f = backing(0x4000);
        let mut r = DmaRegions::new();
        r.map(0x10_0000, 0x2000, 0x1000, RW, Some(f.try_clone().unwrap()))
            .unwrap();
        r.write(0x10_0ffe, &[1, 2, 3, 4]).unwrap();
        let mut b = [0u8; 4];
        f.seek(SeekFrom::Start(0x1ffe)).unwrap();
        f.read_exact(&mut b).unwrap();
        assert_eq!(b, [1, 2, 3, 4]);
        f.seek(SeekFrom::Start(0x2000)).unwrap();
        f.write_all(&[9, 8]).unwrap();
        r.read(0x10_1000, &mut b[..2]).unwrap();
        assert_eq!(&b[..2], &[9, 8]);
    }

    #[test]
    fn outside_regions_and_forbidden_accesses_are_not_ram() {
        let mut r = DmaRegions::new();
        let ro = RegionPerms {
            read: true,
            write: false,
        };
        r.map(0x1000, 0x1000, 0, ro, Some(backing(0x1000))).unwrap();
        r.map(0x3000, 0x1000, 0, RW, None).unwrap();
        let mut b = [0u8; 8];
        r.read(0x1ff8, &mut b).unwrap();
        // Crossing the end of a region into a hole.
        assert_eq!(
            r.read(0x1ffc, &mut b),
            Err(NotRam {
                addr: 0x2000,
                write: false
            })
        );
        assert!(r.write(0x1000, &b).is_err(), "read-only region");
        assert!(
            r.read(0x3000, &mut b).is_err(),
            "region without a descriptor"
        );
        assert!(r.read(0, &mut b).is_err());
        assert!(r.read(u64::MAX - 3, &mut b).is_err());
    }

    #[test]
    fn every_change_is_published_to_the_sink() {
        use vm_memory::{Bytes, GuestAddressSpace, GuestMemoryBackend};
        let sink = GuestMemoryAtomic::new(GuestMemoryMmap::new());
        let mut r = DmaRegions::with_sink(sink.clone());
        let f = backing(0x2000);
        r.map(0x1000, 0x2000, 0, RW, Some(f.try_clone().unwrap()))
            .unwrap();
        r.map(0x8000, 0x1000, 0, RW, None).unwrap();
        // The region without a descriptor is not guest memory a reader can reach.
        assert_eq!(sink.memory().num_regions(), 1);
        r.write(0x1ff8, &7u64.to_le_bytes()).unwrap();
        assert_eq!(
            sink.memory().read_obj::<u64>(GuestAddress(0x1ff8)).unwrap(),
            7
        );
        r.unmap(0x1000, 0x2000).unwrap();
        assert!(sink.memory().read_obj::<u64>(GuestAddress(0x1ff8)).is_err());
        r.map(0x1000, 0x1000, 0, RW, Some(f)).unwrap();
        r.clear();
        assert_eq!(sink.memory().num_regions(), 0);
    }

    #[test]
    fn overlaps_and_splitting_unmaps_are_refused() {
        let mut r = DmaRegions::new();
        r.map(0x1000, 0x2000, 0, RW, Some(backing(0x2000))).unwrap();
        r.map(0x8000, 0x1000, 0, RW, None).unwrap();
        assert!(matches!(
            r.map(0x2000, 0x1000, 0, RW, None),
            Err(RegionError::Overlap { .. })
        ));
        assert!(matches!(
            r.map(0x0, 0x1001, 0, RW, None),
            Err(RegionError::Overlap { .. })
        ));
        assert!(matches!(
            r.map(u64::MAX, 2, 0, RW, None),
            Err(RegionError::Bad { .. })
        ));
        assert!(matches!(
            r.map(0x4000, 0, 0, RW, None),
            Err(RegionError::Bad { .. })
        ));
        assert!(r.unmap(0x1000, 0x1000).is_err(), "splits a region");
        assert!(r.unmap(0x4000, 0x1000).is_err(), "covers none");
        assert_eq!(r.list().len(), 2);
        assert_eq!(r.unmap(0, 0x1_0000).unwrap(), 2);
        assert!(r.list().is_empty());
    }
}

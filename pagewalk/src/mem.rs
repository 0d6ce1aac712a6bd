//! The physical-memory surface that walkers, the table builder and the hardware models use.
//!
//! Hardware reads and A/D-updates paging entries with 64-bit locked cycles; [`PhysMem`] offers
//! exactly those operations, each fallible, so that a table pointer that leads outside memory
//! becomes a typed fault instead of a panic.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use vm_memory::{
    GuestAddress, GuestMemoryBackend, GuestMemoryRegion, MemoryRegionAddress, VolatileMemory,
};

/// Why a physical-memory access failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MemError {
    /// No memory backs the address.
    #[error("no memory at physical address {0:#x}")]
    Unmapped(u64),
    /// The address is not aligned to the access size.
    #[error("physical address {0:#x} is not aligned to the access size")]
    Unaligned(u64),
}

/// Naturally aligned 32- and 64-bit atomic access to system physical memory.
pub trait PhysMem {
    /// Reads the 64-bit entry at `addr` (8-byte aligned) with an atomic load.
    fn read_u64(&self, addr: u64) -> Result<u64, MemError>;

    /// Writes the 64-bit entry at `addr` (8-byte aligned) with an atomic store.
    fn write_u64(&self, addr: u64, val: u64) -> Result<(), MemError>;

    /// Atomically replaces the 64-bit entry at `addr` with `new` if it still holds `current`.
    ///
    /// Returns `Ok(Ok(current))` when the exchange happened and `Ok(Err(actual))` with the value
    /// found when it did not, as a locked compare-and-exchange cycle would.
    fn compare_exchange_u64(
        &self,
        addr: u64,
        current: u64,
        new: u64,
    ) -> Result<Result<u64, u64>, MemError>;

    /// Writes the 32-bit value at `addr` (4-byte aligned), as a status write does.
    fn write_u32(&self, addr: u64, val: u32) -> Result<(), MemError>;

    /// Reads the 32-bit value at `addr` (4-byte aligned).
    fn read_u32(&self, addr: u64) -> Result<u32, MemError>;
}

impl<T: PhysMem + ?Sized> PhysMem for &T {
    fn read_u64(&self, addr: u64) -> Result<u64, MemError> {
        (**self).read_u64(addr)
    }
    fn write_u64(&self, addr: u64, val: u64) -> Result<(), MemError> {
        (**self).write_u64(addr, val)
    }
    fn compare_exchange_u64(
        &self,
        addr: u64,
        current: u64,
        new: u64,
    ) -> Result<Result<u64, u64>, MemError> {
        (**self).compare_exchange_u64(addr, current, new)
    }
    fn write_u32(&self, addr: u64, val: u32) -> Result<(), MemError> {
        (**self).write_u32(addr, val)
    }
    fn read_u32(&self, addr: u64) -> Result<u32, MemError> {
        (**self).read_u32(addr)
    }
}

fn check_align(addr: u64, size: u64) -> Result<(), MemError> {
    if addr.is_multiple_of(size) {
        Ok(())
    } else {
        Err(MemError::Unaligned(addr))
    }
}

/// Memory whose bytes can be reached as naturally aligned atomics (vm-memory regions and
/// collections of them). [`impl_phys_mem_via_atomics!`](crate::impl_phys_mem_via_atomics) turns
/// this one method into the whole [`PhysMem`] surface, so every such memory performs the same
/// loads, stores and exchanges with the same orderings.
pub trait AtomicAccess {
    /// Runs `f` on the naturally aligned atomic of `A`'s size at physical address `addr`.
    ///
    /// Fails with [`MemError::Unaligned`] if `addr` is not a multiple of that size and with
    /// [`MemError::Unmapped`] if no memory backs the whole access.
    fn with_atomic<A: vm_memory::AtomicInteger, R>(
        &self,
        addr: u64,
        f: impl FnOnce(&A) -> R,
    ) -> Result<R, MemError>;
}

/// Implements [`PhysMem`] for a type that implements [`AtomicAccess`]: 64-bit loads with
/// Acquire, stores with Release, compare-exchange with AcqRel/Acquire, and the same for the
/// 32-bit accesses.
///
/// ```text
/// pagewalk::impl_phys_mem_via_atomics!(MyMem);
/// pagewalk::impl_phys_mem_via_atomics!(impl<M: vm_memory::GuestMemoryBackend> for Wrapper<M>);
/// ```
#[macro_export]
macro_rules! impl_phys_mem_via_atomics {
    (impl<$($g:ident : $b:path),*> for $ty:ty) => {
        impl<$($g: $b),*> $crate::PhysMem for $ty {
            fn read_u64(&self, addr: u64) -> Result<u64, $crate::MemError> {
                $crate::AtomicAccess::with_atomic(
                    self,
                    addr,
                    |a: &::std::sync::atomic::AtomicU64| {
                        a.load(::std::sync::atomic::Ordering::Acquire)
                    },
                )
            }
            fn write_u64(&self, addr: u64, val: u64) -> Result<(), $crate::MemError> {
                $crate::AtomicAccess::with_atomic(
                    self,
                    addr,
                    |a: &::std::sync::atomic::AtomicU64| {
                        a.store(val, ::std::sync::atomic::Ordering::Release)
                    },
                )
            }
            fn compare_exchange_u64(
                &self,
                addr: u64,
                current: u64,
                new: u64,
            ) -> Result<Result<u64, u64>, $crate::MemError> {
                $crate::AtomicAccess::with_atomic(
                    self,
                    addr,
                    |a: &::std::sync::atomic::AtomicU64| {
                        a.compare_exchange(
                            current,
                            new,
                            ::std::sync::atomic::Ordering::AcqRel,
                            ::std::sync::atomic::Ordering::Acquire,
                        )
                    },
                )
            }
            fn write_u32(&self, addr: u64, val: u32) -> Result<(), $crate::MemError> {
                $crate::AtomicAccess::with_atomic(
                    self,
                    addr,
                    |a: &::std::sync::atomic::AtomicU32| {
                        a.store(val, ::std::sync::atomic::Ordering::Release)
                    },
                )
            }
            fn read_u32(&self, addr: u64) -> Result<u32, $crate::MemError> {
                $crate::AtomicAccess::with_atomic(
                    self,
                    addr,
                    |a: &::std::sync::atomic::AtomicU32| {
                        a.load(::std::sync::atomic::Ordering::Acquire)
                    },
                )
            }
        }
    };
    ($ty:ty) => {
        $crate::impl_phys_mem_via_atomics!(impl<> for $ty);
    };
}

/// Runs `f` on the naturally aligned atomic of `A`'s size at `offset` within `region`; `addr`
/// is the physical address, for errors. The building block of [`AtomicAccess`] over vm-memory
/// regions.
pub fn region_atomic<G: GuestMemoryRegion, A: vm_memory::AtomicInteger, R>(
    region: &G,
    offset: MemoryRegionAddress,
    addr: u64,
    f: impl FnOnce(&A) -> R,
) -> Result<R, MemError> {
    let size = std::mem::size_of::<A>();
    check_align(addr, size as u64)?;
    let slice = region
        .get_slice(offset, size)
        .map_err(|_| MemError::Unmapped(addr))?;
    let atomic = slice
        .get_atomic_ref::<A>(0)
        .map_err(|_| MemError::Unaligned(addr))?;
    Ok(f(atomic))
}

/// [`PhysMem`] over any vm-memory [`GuestMemoryBackend`] (guest physical memory), with atomic
/// access to the backing pages.
#[derive(Debug, Clone)]
pub struct GuestMem<M>(pub M);

impl<M: GuestMemoryBackend> AtomicAccess for GuestMem<M> {
    fn with_atomic<A: vm_memory::AtomicInteger, R>(
        &self,
        addr: u64,
        f: impl FnOnce(&A) -> R,
    ) -> Result<R, MemError> {
        check_align(addr, std::mem::size_of::<A>() as u64)?;
        let (region, offset) = self
            .0
            .to_region_addr(GuestAddress(addr))
            .ok_or(MemError::Unmapped(addr))?;
        region_atomic(region, offset, addr, f)
    }
}

impl_phys_mem_via_atomics!(impl<M: GuestMemoryBackend> for GuestMem<M>);

/// Stores the 32-bit half of the 64-bit word `w` that 4-byte-aligned `addr` names (bit 2:
/// upper or lower; little-endian), leaving the other half as it is.
fn store_half(w: &AtomicU64, addr: u64, val: u32) {
    let shift = (addr & 4) * 8;
    let mask = 0xffff_ffffu64 << shift;
    let mut old = w.load(Ordering::Acquire);
    // Bounded by contention only: each failure means another writer made progress.
    loop {
        let new = (old & !mask) | (u64::from(val) << shift);
        match w.compare_exchange_weak(old, new, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return,
            Err(actual) => old = actual,
        }
    }
}

/// Loads the 32-bit half of the word `w` that 4-byte-aligned `addr` names.
fn load_half(w: &AtomicU64, addr: u64) -> u32 {
    (w.load(Ordering::Acquire) >> ((addr & 4) * 8)) as u32
}

/// Sparse test memory: 4 KiB pages created on first write, reading zero where never written,
/// limited to addresses below `limit`. Accesses at or above `limit` fail with
/// [`MemError::Unmapped`], which lets tests exercise memory-read faults.
#[derive(Debug)]
pub struct SparseMem {
    limit: u64,
    pages: Mutex<HashMap<u64, Box<[AtomicU64; 512]>>>,
}

impl SparseMem {
    /// Memory covering physical addresses `[0, limit)`.
    pub fn new(limit: u64) -> Self {
        Self {
            limit,
            pages: Mutex::new(HashMap::new()),
        }
    }

    /// The first address past the memory.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    fn with_word<R>(&self, addr: u64, f: impl FnOnce(&AtomicU64) -> R) -> Result<R, MemError> {
        if addr >= self.limit || self.limit - addr < 8 {
            return Err(MemError::Unmapped(addr));
        }
        let mut pages = self.pages.lock().unwrap_or_else(|e| e.into_inner());
        let page = pages
            .entry(addr >> 12)
            .or_insert_with(|| Box::new(std::array::from_fn(|_| AtomicU64::new(0))));
        Ok(f(&page[((addr & 0xfff) >> 3) as usize]))
    }
}

impl PhysMem for SparseMem {
    fn read_u64(&self, addr: u64) -> Result<u64, MemError> {
        check_align(addr, 8)?;
        self.with_word(addr, |w| w.load(Ordering::Acquire))
    }
    fn write_u64(&self, addr: u64, val: u64) -> Result<(), MemError> {
        check_align(addr, 8)?;
        self.with_word(addr, |w| w.store(val, Ordering::Release))
    }
    fn compare_exchange_u64(
        &self,
        addr: u64,
        current: u64,
        new: u64,
    ) -> Result<Result<u64, u64>, MemError> {
        check_align(addr, 8)?;
        self.with_word(addr, |w| {
            w.compare_exchange(current, new, Ordering::AcqRel, Ordering::Acquire)
        })
    }
    fn write_u32(&self, addr: u64, val: u32) -> Result<(), MemError> {
        check_align(addr, 4)?;
        self.with_word(addr & !7, |w| store_half(w, addr, val))
    }
    fn read_u32(&self, addr: u64) -> Result<u32, MemError> {
        check_align(addr, 4)?;
        self.with_word(addr & !7, |w| load_half(w, addr))
    }
}

/// Flat, lock-free memory: `Vec<AtomicU64>` covering `[base, base + len)`, for benchmarks,
/// fuzzing and tests that want every access to be a plain atomic operation.
#[derive(Debug)]
pub struct FlatMem {
    base: u64,
    words: Vec<AtomicU64>,
}

impl FlatMem {
    /// Zeroed memory covering `[base, base + len)`; `len` is rounded down to 8 bytes.
    pub fn new(base: u64, len: usize) -> Self {
        Self {
            base,
            words: (0..len / 8).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Memory at `base` initialised from `bytes` (little-endian 64-bit words; a trailing partial
    /// word is zero-padded).
    pub fn from_bytes(base: u64, bytes: &[u8]) -> Self {
        let words = bytes
            .chunks(8)
            .map(|c| {
                let mut w = [0u8; 8];
                w[..c.len()].copy_from_slice(c);
                AtomicU64::new(u64::from_le_bytes(w))
            })
            .collect();
        Self { base, words }
    }

    /// The first address covered.
    pub fn base(&self) -> u64 {
        self.base
    }

    /// Bytes covered.
    pub fn len(&self) -> usize {
        self.words.len() * 8
    }

    /// Whether no memory is covered.
    pub fn is_empty(&self) -> bool {
        self.words.is_empty()
    }

    fn word(&self, addr: u64) -> Result<&AtomicU64, MemError> {
        addr.checked_sub(self.base)
            .and_then(|off| usize::try_from(off / 8).ok())
            .and_then(|i| self.words.get(i))
            .ok_or(MemError::Unmapped(addr))
    }
}

impl PhysMem for FlatMem {
    #[inline]
    fn read_u64(&self, addr: u64) -> Result<u64, MemError> {
        check_align(addr, 8)?;
        Ok(self.word(addr)?.load(Ordering::Acquire))
    }
    #[inline]
    fn write_u64(&self, addr: u64, val: u64) -> Result<(), MemError> {
        check_align(addr, 8)?;
        self.word(addr)?.store(val, Ordering::Release);
        Ok(())
    }
    #[inline]
    fn compare_exchange_u64(
        &self,
        addr: u64,
        current: u64,
        new: u64,
    ) -> Result<Result<u64, u64>, MemError> {
        check_align(addr, 8)?;
        Ok(self
            .word(addr)?
            .compare_exchange(current, new, Ordering::AcqRel, Ordering::Acquire))
    }
    fn write_u32(&self, addr: u64, val: u32) -> Result<(), MemError> {
        check_align(addr, 4)?;
        store_half(self.word(addr & !7)?, addr, val);
        Ok(())
    }
    fn read_u32(&self, addr: u64) -> Result<u32, MemError> {
        check_align(addr, 4)?;
        Ok(load_half(self.word(addr & !7)?, addr))
    }
}

/// Memories for tests of racing updates.
#[cfg(test)]
pub(crate) mod test_support {
    use super::{MemError, PhysMem};
    use std::cell::Cell;

    /// Memory whose entry at `addr` changes (XOR with `flip`) just before each of the first
    /// `races` compare-exchanges on it, as if another agent wrote it between the walker's read
    /// and its A/D update.
    pub(crate) struct Racy<M> {
        pub(crate) inner: M,
        pub(crate) addr: u64,
        pub(crate) flip: u64,
        pub(crate) races: Cell<u32>,
    }

    impl<M: PhysMem> PhysMem for Racy<M> {
        fn read_u64(&self, a: u64) -> Result<u64, MemError> {
            self.inner.read_u64(a)
        }
        fn write_u64(&self, a: u64, v: u64) -> Result<(), MemError> {
            self.inner.write_u64(a, v)
        }
        fn compare_exchange_u64(
            &self,
            a: u64,
            c: u64,
            n: u64,
        ) -> Result<Result<u64, u64>, MemError> {
            if a == self.addr && self.races.get() > 0 {
                self.races.set(self.races.get() - 1);
                let v = self.inner.read_u64(a)? ^ self.flip;
                self.inner.write_u64(a, v)?;
            }
            self.inner.compare_exchange_u64(a, c, n)
        }
        fn write_u32(&self, a: u64, v: u32) -> Result<(), MemError> {
            self.inner.write_u32(a, v)
        }
        fn read_u32(&self, a: u64) -> Result<u32, MemError> {
            self.inner.read_u32(a)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    fn exercise(mem: &dyn PhysMem, base: u64) {
        assert_eq!(mem.read_u64(base).unwrap(), 0);
        mem.write_u64(base, 0x1122_3344_5566_7788).unwrap();
        assert_eq!(mem.read_u64(base).unwrap(), 0x1122_3344_5566_7788);
        assert_eq!(mem.read_u32(base).unwrap(), 0x5566_7788);
        assert_eq!(mem.read_u32(base + 4).unwrap(), 0x1122_3344);
        mem.write_u32(base + 4, 0xdead_beef).unwrap();
        assert_eq!(mem.read_u64(base).unwrap(), 0xdead_beef_5566_7788);
        assert_eq!(
            mem.compare_exchange_u64(base, 1, 2).unwrap(),
            Err(0xdead_beef_5566_7788)
        );
        assert_eq!(mem.read_u64(base).unwrap(), 0xdead_beef_5566_7788);
        assert_eq!(
            mem.compare_exchange_u64(base, 0xdead_beef_5566_7788, 7)
                .unwrap(),
            Ok(0xdead_beef_5566_7788)
        );
        assert_eq!(mem.read_u64(base).unwrap(), 7);
        assert_eq!(mem.read_u64(base + 4), Err(MemError::Unaligned(base + 4)));
        assert_eq!(
            mem.write_u32(base + 2, 0),
            Err(MemError::Unaligned(base + 2))
        );
    }

    #[test]
    fn sparse_mem_reads_writes_and_exchanges() {
        let mem = SparseMem::new(1 << 20);
        exercise(&mem, 0x1000);
        assert_eq!(mem.read_u64(1 << 20), Err(MemError::Unmapped(1 << 20)));
        assert_eq!(
            mem.write_u64(u64::MAX - 7, 1),
            Err(MemError::Unmapped(u64::MAX - 7))
        );
    }

    #[test]
    fn flat_mem_reads_writes_and_exchanges() {
        let mem = FlatMem::new(0x1000, 0x2000);
        assert_eq!(
            (mem.base(), mem.len(), mem.is_empty()),
            (0x1000, 0x2000, false)
        );
        exercise(&mem, 0x1000);
        exercise(&mem, 0x2ff0);
        assert_eq!(mem.read_u64(0x3000), Err(MemError::Unmapped(0x3000)));
        assert_eq!(mem.read_u64(0xff8), Err(MemError::Unmapped(0xff8)));
        assert_eq!(
            mem.read_u64(u64::MAX - 7),
            Err(MemError::Unmapped(u64::MAX - 7))
        );
        let m = FlatMem::from_bytes(0, &[1, 0, 0, 0, 0, 0, 0, 0, 2, 3]);
        assert_eq!(m.read_u64(0), Ok(1));
        assert_eq!(m.read_u64(8), Ok(0x0302));
        assert_eq!(m.read_u64(16), Err(MemError::Unmapped(16)));
    }

    #[test]
    fn guest_mem_reads_writes_and_exchanges() {
        let gm = GuestMemoryMmap::<()>::from_ranges(&[
            (GuestAddress(0), 0x10000),
            (GuestAddress(0x100000), 0x10000),
        ])
        .unwrap();
        let mem = GuestMem(gm);
        exercise(&mem, 0x2000);
        exercise(&mem, 0x100008);
        assert_eq!(mem.read_u64(0x10000), Err(MemError::Unmapped(0x10000)));
        assert_eq!(mem.read_u64(0x110000), Err(MemError::Unmapped(0x110000)));
        assert_eq!(
            mem.read_u64(u64::MAX - 7),
            Err(MemError::Unmapped(u64::MAX - 7))
        );
    }
}

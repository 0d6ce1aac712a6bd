//! Table pages: the [`FrameAllocator`] the table builder takes them from, and
//! [`BumpAllocator`], a bump allocator with a free list over a physical range (e.g. an
//! IOMMU-private table region).

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

use crate::mem::{MemError, PhysMem};

/// Size of a table page.
pub const TABLE_SIZE: u64 = 4096;

/// Writes zeros over the table page at `page`, entry by entry (the table builder's tables,
/// a driver's queues and structure pages).
pub fn zero_page<M: PhysMem + ?Sized>(mem: &M, page: u64) -> Result<(), MemError> {
    for i in 0..TABLE_SIZE / 8 {
        mem.write_u64(page + i * 8, 0)?;
    }
    Ok(())
}

/// Hashes page addresses (the keys of the builder's and the allocator's side tables) with one
/// multiplication (Fibonacci hashing of the page number). The keys are table pages this code
/// allocated, never values a guest chooses, so no keyed hash is needed.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct PageHasher(u64);

impl Hasher for PageHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0 ^ (v >> 12)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

pub(crate) type PageMap<V> = HashMap<u64, V, BuildHasherDefault<PageHasher>>;
pub(crate) type PageSet = HashSet<u64, BuildHasherDefault<PageHasher>>;

/// Source of zero-able 4 KiB pages for tables.
pub trait FrameAllocator {
    /// A 4 KiB-aligned physical page, or `None` if none is left. The builder zeroes it.
    fn alloc_frame(&mut self) -> Option<u64>;
    /// Returns a page obtained from [`FrameAllocator::alloc_frame`].
    fn free_frame(&mut self, addr: u64);
    /// Like [`FrameAllocator::alloc_frame`], and also whether the page is known to hold only
    /// zeros (it was returned with [`FrameAllocator::free_zeroed_frame`] and not handed out
    /// since), so the caller may skip zeroing it. The default knows nothing.
    fn alloc_frame_zeroed(&mut self) -> Option<(u64, bool)> {
        self.alloc_frame().map(|p| (p, false))
    }
    /// Returns a page the caller left all zeros. The default forgets that it is zero.
    fn free_zeroed_frame(&mut self, addr: u64) {
        self.free_frame(addr)
    }
}

impl<A: FrameAllocator + ?Sized> FrameAllocator for &mut A {
    fn alloc_frame(&mut self) -> Option<u64> {
        (**self).alloc_frame()
    }
    fn free_frame(&mut self, addr: u64) {
        (**self).free_frame(addr)
    }
    fn alloc_frame_zeroed(&mut self) -> Option<(u64, bool)> {
        (**self).alloc_frame_zeroed()
    }
    fn free_zeroed_frame(&mut self, addr: u64) {
        (**self).free_zeroed_frame(addr)
    }
}

/// A bump allocator with a free list over a physical range, e.g. the IOMMU-private table region.
///
/// The free list remembers which pages were returned known-zero
/// ([`FrameAllocator::free_zeroed_frame`]); pages never handed out are not assumed zero (the
/// allocator does not know the memory behind its range).
#[derive(Debug, Clone)]
pub struct BumpAllocator {
    start: u64,
    end: u64,
    next: u64,
    /// Freed pages and whether each is known to be all zeros.
    free: Vec<(u64, bool)>,
    /// The pages of `free`, for O(1) double-free detection.
    free_set: PageSet,
    in_use: usize,
}

impl BumpAllocator {
    /// Pages from `[start, end)`; `start` is rounded up and `end` down to 4 KiB.
    pub fn new(start: u64, end: u64) -> Self {
        let start = start.checked_next_multiple_of(TABLE_SIZE).unwrap_or(!0xfff);
        let end = (end & !(TABLE_SIZE - 1)).max(start);
        Self {
            start,
            end,
            next: start,
            free: Vec::new(),
            free_set: PageSet::default(),
            in_use: 0,
        }
    }

    /// Pages currently handed out.
    pub fn in_use(&self) -> usize {
        self.in_use
    }

    /// Whether `addr` is a page of this allocator's range.
    pub fn owns(&self, addr: u64) -> bool {
        addr >= self.start && addr < self.end && addr.is_multiple_of(TABLE_SIZE)
    }
}

impl BumpAllocator {
    fn push_free(&mut self, addr: u64, zero: bool) {
        if self.owns(addr) && addr < self.next && self.free_set.insert(addr) {
            self.free.push((addr, zero));
            self.in_use = self.in_use.saturating_sub(1);
        } else {
            log::warn!("BumpAllocator: ignoring free of {addr:#x}, not an allocated page");
        }
    }
}

impl FrameAllocator for BumpAllocator {
    fn alloc_frame(&mut self) -> Option<u64> {
        self.alloc_frame_zeroed().map(|(p, _)| p)
    }

    fn alloc_frame_zeroed(&mut self) -> Option<(u64, bool)> {
        let page = match self.free.pop() {
            Some((p, zero)) => {
                self.free_set.remove(&p);
                (p, zero)
            }
            None if self.end - self.next >= TABLE_SIZE => {
                let p = self.next;
                self.next += TABLE_SIZE;
                (p, false)
            }
            None => return None,
        };
        self.in_use += 1;
        Some(page)
    }

    fn free_frame(&mut self, addr: u64) {
        self.push_free(addr, false);
    }

    fn free_zeroed_frame(&mut self, addr: u64) {
        self.push_free(addr, true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bump_allocator_remembers_zeroed_frees() {
        let mut a = BumpAllocator::new(0x1000, 0x5000);
        assert_eq!(a.alloc_frame_zeroed(), Some((0x1000, false)));
        assert_eq!(a.alloc_frame_zeroed(), Some((0x2000, false)));
        assert_eq!(a.alloc_frame(), Some(0x3000));
        a.free_zeroed_frame(0x1000);
        a.free_frame(0x2000);
        a.free_zeroed_frame(0x2000); // double free ignored, the page stays not-known-zero
        a.free_zeroed_frame(0x4000); // never handed out: ignored
        assert_eq!(a.in_use(), 1);
        assert_eq!(a.alloc_frame_zeroed(), Some((0x2000, false)));
        assert_eq!(a.alloc_frame_zeroed(), Some((0x1000, true)));
        // Once handed out again it is no longer known zero.
        a.free_frame(0x1000);
        assert_eq!(a.alloc_frame_zeroed(), Some((0x1000, false)));
        assert_eq!(a.alloc_frame_zeroed(), Some((0x4000, false)));
        assert_eq!(a.alloc_frame_zeroed(), None);
        assert_eq!(a.in_use(), 4);
    }

    #[test]
    fn bump_allocator_reuses_and_exhausts() {
        let mut a = BumpAllocator::new(0x1001, 0x4000);
        assert_eq!(a.alloc_frame(), Some(0x2000));
        assert_eq!(a.alloc_frame(), Some(0x3000));
        assert_eq!(a.alloc_frame(), None);
        a.free_frame(0x2000);
        a.free_frame(0x2000); // double free ignored
        a.free_frame(0x9000); // foreign page ignored
        assert_eq!(a.in_use(), 1);
        assert_eq!(a.alloc_frame(), Some(0x2000));
        assert_eq!(a.alloc_frame(), None);
        assert!(a.owns(0x3000) && !a.owns(0x4000) && !a.owns(0x3008));
    }
}

//! `/proc/PID/pagemap` entries.
//!
//! Layout from the kernel's Documentation/admin-guide/mm/pagemap.rst ("pagemap, from the
//! userspace perspective"): one little-endian 64-bit entry per virtual page,
//! - bits 0-54  page frame number (PFN) if present (zero without CAP_SYS_ADMIN),
//! - bits 0-4   swap type if swapped, bits 5-54 swap offset if swapped,
//! - bit 55     PTE is soft-dirty,
//! - bit 56     page exclusively mapped,
//! - bit 57     PTE is uffd-wp write-protected,
//! - bit 58     PTE is a guard region,
//! - bits 59-60 zero,
//! - bit 61     page is file-page or shared-anon,
//! - bit 62     page swapped,
//! - bit 63     page present.

use crate::{AgentError, Result};

/// Bits 0-54: the PFN of a present page.
pub const PFN_MASK: u64 = (1 << 55) - 1;
/// Bit 55: soft-dirty.
pub const SOFT_DIRTY: u64 = 1 << 55;
/// Bit 56: exclusively mapped.
pub const EXCLUSIVE: u64 = 1 << 56;
/// Bit 57: uffd-wp write-protected.
pub const UFFD_WP: u64 = 1 << 57;
/// Bit 61: file page or shared anonymous.
pub const FILE_SHARED: u64 = 1 << 61;
/// Bit 62: swapped.
pub const SWAPPED: u64 = 1 << 62;
/// Bit 63: present.
pub const PRESENT: u64 = 1 << 63;

/// A decoded pagemap entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PagemapEntry {
    /// The raw 64-bit entry.
    pub raw: u64,
}

impl PagemapEntry {
    /// Wraps a raw entry.
    pub fn new(raw: u64) -> Self {
        PagemapEntry { raw }
    }

    /// Decodes the 8 little-endian bytes the kernel writes for one page.
    pub fn from_le_bytes(bytes: [u8; 8]) -> Self {
        Self::new(u64::from_le_bytes(bytes))
    }

    /// Bit 63.
    pub fn present(&self) -> bool {
        self.raw & PRESENT != 0
    }

    /// Bit 62.
    pub fn swapped(&self) -> bool {
        self.raw & SWAPPED != 0
    }

    /// Bit 61.
    pub fn file_or_shared(&self) -> bool {
        self.raw & FILE_SHARED != 0
    }

    /// Bit 56.
    pub fn exclusive(&self) -> bool {
        self.raw & EXCLUSIVE != 0
    }

    /// Bit 55.
    pub fn soft_dirty(&self) -> bool {
        self.raw & SOFT_DIRTY != 0
    }

    /// The PFN, if the page is present, not swapped, and the kernel showed it (a reader
    /// without CAP_SYS_ADMIN sees PFN 0).
    pub fn pfn(&self) -> Option<u64> {
        if !self.present() || self.swapped() {
            return None;
        }
        let pfn = self.raw & PFN_MASK;
        (pfn != 0).then_some(pfn)
    }

    /// The physical address of byte `offset_in_page` of this page, or a typed error that says
    /// why the entry gives none.
    pub fn phys_addr(&self, page_size: u64, offset_in_page: u64) -> Result<u64> {
        if !self.present() {
            return Err(AgentError::Pagemap(format!(
                "page not present (entry {:#018x})",
                self.raw
            )));
        }
        if self.swapped() {
            return Err(AgentError::Pagemap(format!(
                "page swapped (entry {:#018x})",
                self.raw
            )));
        }
        let pfn = self.pfn().ok_or_else(|| {
            AgentError::Pagemap("PFN hidden (reader lacks CAP_SYS_ADMIN)".to_string())
        })?;
        if offset_in_page >= page_size {
            return Err(AgentError::Pagemap(format!(
                "offset {offset_in_page:#x} outside a {page_size:#x}-byte page"
            )));
        }
        pfn.checked_mul(page_size)
            .and_then(|a| a.checked_add(offset_in_page))
            .ok_or_else(|| AgentError::Pagemap(format!("PFN {pfn:#x} overflows")))
    }
}

/// Reads the pagemap entries of `pages` pages starting at virtual address `vaddr` of the
/// calling process.
#[cfg(target_os = "linux")]
pub fn read_self(vaddr: u64, page_size: u64, pages: usize) -> Result<Vec<PagemapEntry>> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open("/proc/self/pagemap")
        .map_err(|e| AgentError::io("open /proc/self/pagemap", e))?;
    let mut buf = vec![0u8; pages * 8];
    let offset = (vaddr / page_size)
        .checked_mul(8)
        .ok_or_else(|| AgentError::Pagemap("virtual address too large".into()))?;
    f.read_exact_at(&mut buf, offset)
        .map_err(|e| AgentError::io("read /proc/self/pagemap", e))?;
    Ok(buf
        .chunks_exact(8)
        .map(|c| {
            let mut b = [0u8; 8];
            b.copy_from_slice(c);
            PagemapEntry::from_le_bytes(b)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn present_page_gives_pfn_and_address() {
        // present | exclusive | soft-dirty | PFN 0x12345
        let e = PagemapEntry::new((1 << 63) | (1 << 56) | (1 << 55) | 0x12345);
        assert!(e.present() && e.exclusive() && e.soft_dirty());
        assert!(!e.swapped() && !e.file_or_shared());
        assert_eq!(e.pfn(), Some(0x12345));
        assert_eq!(e.phys_addr(4096, 0x10).unwrap(), 0x1234_5010);
    }

    #[test]
    fn bytes_are_little_endian() {
        let e = PagemapEntry::from_le_bytes([0x45, 0x23, 0x01, 0, 0, 0, 0, 0x80]);
        assert_eq!(e.pfn(), Some(0x12345));
    }

    #[test]
    fn highest_pfn_bit_is_54() {
        let e = PagemapEntry::new((1 << 63) | (1 << 54));
        assert_eq!(e.pfn(), Some(1 << 54));
        // bit 55 is soft-dirty, not part of the PFN
        let e = PagemapEntry::new((1 << 63) | (1 << 55) | 1);
        assert_eq!(e.pfn(), Some(1));
    }

    #[test]
    fn absent_swapped_or_hidden_pages_give_typed_errors() {
        assert!(PagemapEntry::new(0x1234).phys_addr(4096, 0).is_err());
        let swapped = PagemapEntry::new((1 << 63) | (1 << 62) | 0x1234);
        assert_eq!(swapped.pfn(), None);
        assert!(swapped.phys_addr(4096, 0).is_err());
        let hidden = PagemapEntry::new(1 << 63);
        assert_eq!(hidden.pfn(), None);
        assert!(hidden.phys_addr(4096, 0).is_err());
        let ok = PagemapEntry::new((1 << 63) | 7);
        assert!(ok.phys_addr(4096, 4096).is_err());
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn reads_own_pagemap() {
        // Without CAP_SYS_ADMIN the PFN is hidden, but the entry count and present bit hold.
        let page = 4096u64;
        let v = vec![1u8; 3 * page as usize];
        let entries = read_self(v.as_ptr() as u64, page, 2).unwrap();
        assert_eq!(entries.len(), 2);
        assert!(entries.iter().all(|e| e.present()));
    }

    proptest! {
        #[test]
        fn pfn_is_low_55_bits_when_present(raw: u64) {
            let e = PagemapEntry::new(raw | PRESENT);
            let e = PagemapEntry::new(e.raw & !SWAPPED);
            let expect = raw & PFN_MASK;
            prop_assert_eq!(e.pfn(), (expect != 0).then_some(expect));
        }

        #[test]
        fn phys_addr_never_panics(raw: u64, ps in 1u64..(1 << 30), off: u64) {
            let _ = PagemapEntry::new(raw).phys_addr(ps, off);
        }
    }
}

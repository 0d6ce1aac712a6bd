//! Invalidation selectors: every granularity VT-d and AMD-Vi offer.
//!
//! VT-d spec rev 4.1, §6.5.2.1 (context-cache: global, domain-selective, device-selective with a
//! function mask), §6.5.2.2 (PASID-cache: domain-selective, PASID-selective), §6.5.2.3 (IOTLB:
//! global, domain-selective, page-selective-within-domain with ADDR/AM/IH) and §6.5.2.4
//! (PASID-based IOTLB: PASID-selective, page-selective-within-PASID).
//! AMD IOMMU spec rev 3.08, §2.4.2 INVALIDATE_DEVTAB_ENTRY (by device id), §2.4.3
//! INVALIDATE_IOMMU_PAGES (domain id, PASID with GN, address with the S size bit, PDE) and
//! §2.4.6 INVALIDATE_IOMMU_ALL.

use crate::InvalidationError;
use crate::tag::{EntryKind, MAX_SIZE_CLASS, PAGE_NUMBER_BITS, key, span_mask};

/// Which PASIDs a page-range invalidation applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PasidMatch {
    /// Entries with any PASID or none.
    Any,
    /// Entries whose PASID is exactly this (`None`: requests-without-PASID entries only).
    Exactly(Option<u32>),
}

impl PasidMatch {
    pub(crate) fn matches(self, pasid: Option<u32>) -> bool {
        match self {
            Self::Any => true,
            Self::Exactly(p) => p == pasid,
        }
    }
}

/// A page-range invalidation within a domain: the `2^order` 4 KiB pages starting at `base`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PageRange {
    /// Domain id the invalidation is for.
    pub domain: u16,
    /// PASIDs it applies to.
    pub pasid: PasidMatch,
    /// First 4 KiB page number (address >> 12), aligned to `2^order`.
    pub base: u64,
    /// log2 of the number of pages (VT-d AM).
    pub order: u8,
    /// Whether paging-structure (non-leaf) entries are invalidated too (VT-d IH=0, AMD PDE=1).
    /// When false only leaf translations go.
    pub paging_structures: bool,
}

impl PageRange {
    /// A VT-d page-selective invalidation (§6.5.2.3 IOTLB Invalidate / §6.5.2.4 PASID-based
    /// IOTLB Invalidate): `addr` is the ADDR field (bits 63:12 significant), `am` the address
    /// mask (2^AM pages; hardware masks the low AM bits of the page number), `ih` the
    /// invalidation hint (1: non-leaf entries may be preserved).
    pub fn vtd(
        domain: u16,
        pasid: PasidMatch,
        addr: u64,
        am: u8,
        ih: bool,
    ) -> Result<Self, InvalidationError> {
        if am > MAX_SIZE_CLASS {
            return Err(InvalidationError::AddressMaskTooLarge(am));
        }
        let page = addr >> 12;
        Ok(Self {
            domain,
            pasid,
            base: page & !span_mask(am),
            order: am,
            paging_structures: !ih,
        })
    }

    /// An AMD-Vi INVALIDATE_IOMMU_PAGES range (§2.4.3): with `s` clear, the single 4 KiB page at
    /// `address`; with `s` set, the size is given by the lowest clear bit of `address` at or
    /// above bit 12: if it is bit `n`, the range is `2^(n+1)` bytes, aligned, and bits 12..=n-1
    /// are ones (software sets address bits below the size to ones). An address whose bits
    /// 63:12 are all ones covers everything. `pde` also invalidates cached page-directory
    /// entries.
    pub fn amd(domain: u16, pasid: PasidMatch, address: u64, s: bool, pde: bool) -> Self {
        let page = address >> 12;
        let (base, order) = if !s {
            (page, 0)
        } else {
            // Number of consecutive ones in the page number from its bit 0.
            let ones = page.trailing_ones();
            let order = (ones + 1).min(PAGE_NUMBER_BITS) as u8;
            (page & !span_mask(order), order)
        };
        Self {
            domain,
            pasid,
            base: base & ((1u64 << PAGE_NUMBER_BITS) - 1),
            order,
            paging_structures: pde,
        }
    }

    /// Checks that `order` fits and `base` is in range and aligned.
    pub fn validate(&self) -> Result<(), InvalidationError> {
        if self.order > MAX_SIZE_CLASS {
            return Err(InvalidationError::AddressMaskTooLarge(self.order));
        }
        if self.base >> PAGE_NUMBER_BITS != 0 || self.base & span_mask(self.order) != 0 {
            return Err(InvalidationError::MisalignedRange {
                base: self.base,
                order: self.order,
            });
        }
        if let PasidMatch::Exactly(Some(p)) = self.pasid
            && p > crate::tag::PASID_MAX
        {
            return Err(InvalidationError::PasidOutOfRange(p));
        }
        Ok(())
    }

    /// Whether an entry spanning `[page, page + 2^size)` overlaps the range.
    pub(crate) fn overlaps(&self, page: u64, size: u8) -> bool {
        let lo = page.max(self.base);
        let entry_end = page | span_mask(size);
        let range_end = self.base | span_mask(self.order);
        lo <= entry_end.min(range_end)
    }
}

/// A source-id selector: matches `source_id` on every bit not set in `mask`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SourceSelector {
    /// The source id (bus << 8 | devfn; AMD-Vi device id).
    pub source_id: u16,
    /// Bits of the source id to ignore.
    pub mask: u16,
}

impl SourceSelector {
    /// One exact source id.
    pub const fn exact(source_id: u16) -> Self {
        Self { source_id, mask: 0 }
    }

    /// A VT-d device-selective context-cache invalidation (§6.5.2.1, and CCMD_REG §11.4.7.1)
    /// with function mask `fm`: 0 masks nothing, 1 masks bit 2 of the function number, 2 masks
    /// bits 2:1, 3 masks bits 2:0.
    pub fn vtd(source_id: u16, fm: u8) -> Result<Self, InvalidationError> {
        let mask = match fm {
            0 => 0b000,
            1 => 0b100,
            2 => 0b110,
            3 => 0b111,
            _ => return Err(InvalidationError::FunctionMaskOutOfRange(fm)),
        };
        Ok(Self { source_id, mask })
    }

    pub(crate) fn matches(&self, source_id: u16) -> bool {
        (source_id ^ self.source_id) & !self.mask == 0
    }

    /// Whether some matching source id falls in `slot` of `slots` (a power of two; a source
    /// id's slot is its value modulo `slots`).
    pub(crate) fn matches_slot(&self, slot: usize, slots: usize) -> bool {
        let low = slots as u16 - 1;
        ((slot as u16) ^ self.source_id) & !self.mask & low == 0
    }
}

/// An invalidation request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Invalidation {
    /// Everything (VT-d global invalidation; AMD INVALIDATE_IOMMU_ALL). O(1).
    Global,
    /// Every entry tagged with this domain id, of any kind and PASID (VT-d domain-selective
    /// invalidation of any cache; AMD INVALIDATE_IOMMU_PAGES with S=1 over the whole space and
    /// PDE=1). O(1) by a per-domain generation.
    Domain(u16),
    /// Every entry tagged with this domain id and exactly this PASID (`None`: without PASID),
    /// of any kind (VT-d PASID-selective PASID-cache and PASID-based-IOTLB invalidation).
    DomainPasid {
        /// Domain id.
        domain: u16,
        /// PASID, or `None` for requests-without-PASID entries.
        pasid: Option<u32>,
    },
    /// Translation-type entries overlapping a page range.
    Range(PageRange),
    /// Context-type entries (VT-d context cache, AMD-Vi DTE cache) of matching source ids.
    Source(SourceSelector),
}

impl Invalidation {
    /// Checks the selector's fields.
    pub fn validate(&self) -> Result<(), InvalidationError> {
        match self {
            Self::Global | Self::Domain(_) | Self::Source(_) => Ok(()),
            Self::DomainPasid { pasid, .. } => match pasid {
                Some(p) if *p > crate::tag::PASID_MAX => {
                    Err(InvalidationError::PasidOutOfRange(*p))
                }
                _ => Ok(()),
            },
            Self::Range(r) => r.validate(),
        }
    }

    /// Whether the selector covers an entry with these key words.
    pub(crate) fn matches(&self, key0: u64, key1: u64) -> bool {
        let Some(kind) = key::kind(key1) else {
            return false;
        };
        match self {
            Self::Global => true,
            Self::Domain(d) => key::domain(key1) == *d,
            Self::DomainPasid { domain, pasid } => {
                key::domain(key1) == *domain && key::pasid(key1) == *pasid
            }
            Self::Range(r) => {
                let kind_ok = match kind {
                    EntryKind::Translation => true,
                    EntryKind::PagingStructure => r.paging_structures,
                    _ => false,
                };
                kind_ok
                    && key::domain(key1) == r.domain
                    && r.pasid.matches(key::pasid(key1))
                    && r.overlaps(key::page(key0), key::size(key0))
            }
            Self::Source(s) => kind.is_context_type() && s.matches(key::source(key1)),
        }
    }

    /// Whether the selector could cover an entry with this tag (used by the sequential model
    /// in tests and by callers that want to reason about a tag).
    pub fn covers(&self, tag: &crate::Tag) -> bool {
        let [k0, k1] = tag.encode();
        self.matches(k0, k1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Tag;
    use proptest::prelude::*;

    /// How a driver encodes a byte range `[start, end]` for INVALIDATE_IOMMU_PAGES (AMD IOMMU
    /// spec rev 3.08, §2.4.3): one page with S=0; otherwise the bits below the highest bit in
    /// which `start` and `end` differ are set to ones and S=1; beyond bit 51, everything.
    fn amd_encode(start: u64, end: u64) -> (u64, bool) {
        let pages_differ = (start >> 12) != (end >> 12);
        if !pages_differ {
            return (start & !0xfff, false);
        }
        let msb = 63 - (start ^ end).leading_zeros();
        if msb > 51 {
            return (0x000f_ffff_ffff_f000, true);
        }
        ((start | ((1u64 << msb) - 1)) & !0xfff, true)
    }

    proptest! {
        #[test]
        fn amd_decoded_range_covers_what_software_asked(
            start in 0u64..(1 << 52),
            len in 1u64..(1 << 40),
        ) {
            let end = (start + len - 1).min((1 << 52) - 1);
            let (address, s) = amd_encode(start, end);
            let r = PageRange::amd(1, PasidMatch::Any, address, s, true);
            prop_assert!(r.validate().is_ok());
            let last = r.base | span_mask(r.order);
            prop_assert!(r.base <= start >> 12, "{:?} does not start by {:#x}", r, start);
            prop_assert!(last >= end >> 12, "{:?} does not reach {:#x}", r, end);
            // And not absurdly more: at most twice the aligned span software needed.
            let needed = 64 - ((start >> 12) ^ (end >> 12)).leading_zeros();
            prop_assert!(u32::from(r.order) <= needed.max(1), "{:?} for {:#x}..={:#x}", r, start, end);
        }
    }

    #[test]
    fn vtd_address_mask_masks_low_page_bits() {
        // ADDR 0x12345000, AM 4: 16 pages from 0x12340.
        let r = PageRange::vtd(3, PasidMatch::Exactly(None), 0x1234_5000, 4, false).unwrap();
        assert_eq!(r.base, 0x12340);
        assert_eq!(r.order, 4);
        assert!(r.paging_structures);
        let ih = PageRange::vtd(3, PasidMatch::Any, 0x1000, 0, true).unwrap();
        assert!(!ih.paging_structures);
        assert_eq!(
            PageRange::vtd(3, PasidMatch::Any, 0, 53, false),
            Err(InvalidationError::AddressMaskTooLarge(53))
        );
    }

    #[test]
    fn amd_size_bit_decodes_like_the_spec_examples() {
        // S=0: one page.
        let r = PageRange::amd(1, PasidMatch::Any, 0x5000, false, false);
        assert_eq!((r.base, r.order), (5, 0));
        // S=1, bit 12 clear: 8 KiB (2 pages).
        let r = PageRange::amd(1, PasidMatch::Any, 0x4000, true, false);
        assert_eq!((r.base, r.order), (4, 1));
        // S=1, bits 12..=19 ones, bit 20 clear: 2 MiB at 0x20_0000.
        let r = PageRange::amd(1, PasidMatch::Any, 0x20_0000 | 0xf_f000, true, true);
        assert_eq!((r.base, r.order), (0x200, 9));
        assert!(r.paging_structures);
        // Bits 63:12 all ones: the whole input space.
        let r = PageRange::amd(1, PasidMatch::Any, 0xffff_ffff_ffff_f000, true, true);
        assert_eq!((r.base, r.order), (0, 52));
        // Linux's CMD_INV_IOMMU_ALL_PAGES_ADDRESS: bits 50:12 ones, bit 51 clear: 2^52 bytes.
        let r = PageRange::amd(1, PasidMatch::Any, 0x7_ffff_ffff_f000, true, true);
        assert_eq!((r.base, r.order), (0, 40));
        assert!(r.validate().is_ok());
    }

    #[test]
    fn range_overlap() {
        let r = PageRange::vtd(1, PasidMatch::Any, 0x200 << 12, 9, false).unwrap();
        assert!(r.overlaps(0x200, 0));
        assert!(r.overlaps(0x3ff, 0));
        assert!(!r.overlaps(0x400, 0));
        assert!(!r.overlaps(0x1ff, 0));
        // A 1 GiB entry containing the range overlaps it.
        assert!(r.overlaps(0, 18));
        // A range inside a 2 MiB entry overlaps it.
        let small = PageRange::vtd(1, PasidMatch::Any, 0x234 << 12, 0, false).unwrap();
        assert!(small.overlaps(0x200, 9));
        assert!(!small.overlaps(0x400, 9));
    }

    #[test]
    fn vtd_function_mask() {
        // 00:03.5 with FM=2: function bits 2:1 are ignored, bit 0 must match: .1, .3, .5, .7.
        let s = SourceSelector::vtd(0x001d, 2).unwrap();
        let matching: Vec<u16> = (0x18..0x20).filter(|&sid| s.matches(sid)).collect();
        assert_eq!(matching, vec![0x19, 0x1b, 0x1d, 0x1f]);
        let all = SourceSelector::vtd(0x001d, 3).unwrap();
        assert_eq!((0..0x100).filter(|&sid| all.matches(sid)).count(), 8);
        assert!(SourceSelector::vtd(0, 4).is_err());
    }

    #[test]
    fn source_slots_cover_every_matching_source() {
        for (sid, fm) in [(0x1d, 0), (0x1d, 2), (0x318, 3), (0xffff, 1)] {
            let sel = SourceSelector::vtd(sid, fm).unwrap();
            for slots in [4usize, 256] {
                for other in 0..=u16::MAX {
                    if sel.matches(other) {
                        let slot = usize::from(other) % slots;
                        assert!(sel.matches_slot(slot, slots), "{sid:#x} fm {fm} {other:#x}");
                    }
                }
                // Slots no matching source id falls in are not marked.
                let marked = (0..slots).filter(|&s| sel.matches_slot(s, slots)).count();
                let needed: std::collections::HashSet<usize> = (0..=u16::MAX)
                    .filter(|&o| sel.matches(o))
                    .map(|o| usize::from(o) % slots)
                    .collect();
                assert_eq!(marked, needed.len());
            }
        }
    }

    #[test]
    fn selectors_pick_the_right_kinds() {
        let leaf = Tag::translation(1, Some(5), 0x10, 0);
        let pde = Tag::paging_structure(1, Some(5), crate::Stage::First, 2, 0, 9);
        let ctx = Tag::context(0x10, 1);
        let dte = Tag::device_table(0x10, 1);
        let pasid = Tag::pasid_entry(1, 5);

        let ih = Invalidation::Range(
            PageRange::vtd(1, PasidMatch::Exactly(Some(5)), 0x10 << 12, 0, true).unwrap(),
        );
        assert!(ih.covers(&leaf));
        assert!(!ih.covers(&pde));
        assert!(!ih.covers(&ctx));
        let no_ih = Invalidation::Range(
            PageRange::vtd(1, PasidMatch::Exactly(Some(5)), 0x10 << 12, 0, false).unwrap(),
        );
        assert!(no_ih.covers(&pde));
        let other_pasid = Invalidation::Range(
            PageRange::vtd(1, PasidMatch::Exactly(Some(6)), 0x10 << 12, 0, false).unwrap(),
        );
        assert!(!other_pasid.covers(&leaf));

        let src = Invalidation::Source(SourceSelector::exact(0x10));
        assert!(src.covers(&ctx) && src.covers(&dte));
        assert!(!src.covers(&leaf) && !src.covers(&pasid));

        let dp = Invalidation::DomainPasid {
            domain: 1,
            pasid: Some(5),
        };
        assert!(dp.covers(&leaf) && dp.covers(&pde) && dp.covers(&pasid));
        assert!(!dp.covers(&ctx));
        assert!(Invalidation::Domain(1).covers(&ctx));
        assert!(!Invalidation::Domain(2).covers(&leaf));
        assert!(Invalidation::Global.covers(&dte));
    }
}

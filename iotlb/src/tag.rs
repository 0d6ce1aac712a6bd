//! Cache tags: what identifies a cached entry, for both vendors and every kind of cache.
//!
//! VT-d spec rev 4.1, §6.2.1 "Tagging of Cached Translations": cached entries are tagged with the
//! domain id (DID), the PASID for requests-with-PASID, the input page number and, for
//! paging-structure caches (§6.2.5), the level and the stage (first-stage, second-stage or
//! nested). Context-cache entries (§6.2.2) are tagged with the source id (bus/devfn) and the DID
//! found in the context entry; PASID-cache entries (§6.2.3) with (DID, PASID).
//! AMD IOMMU spec rev 3.08, §2.4.2 and §2.4.3: the device-table cache is tagged with the 16-bit
//! device id; the IOTLB and the cached page-directory entries with the domain id, the PASID (for
//! guest translations, GN=1) and the input page.
//!
//! A tag packs into two 64-bit words so a cache entry can hold it in atomics:
//!
//! ```text
//! key0: bits 51:0  input page number (address >> 12, aligned to 2^size)
//!       bits 57:52 page-size class (log2 of the span in 4 KiB pages, 0..=52)
//!       bits 60:58 level (0..=7; 0 where not applicable)
//!       bits 62:61 stage (0 none, 1 first, 2 second, 3 nested)
//!       bit  63    always 0
//! key1: bits 15:0  domain id
//!       bits 35:16 PASID (20 bits)
//!       bit  36    PASID present
//!       bits 52:37 source id (requester id / AMD device id)
//!       bits 55:53 entry kind
//!       bits 63:56 always 0
//! ```

use crate::TagError;

/// Width of a PASID: 20 bits on both vendors (VT-d spec rev 4.1, §3.4.1; AMD IOMMU spec rev 3.08,
/// §2.2.6.3 "PASID").
pub const PASID_BITS: u32 = 20;
/// The largest valid PASID value.
pub const PASID_MAX: u32 = (1 << PASID_BITS) - 1;
/// Width of an input page number: a 64-bit input address shifted right by the 4 KiB page shift.
pub const PAGE_NUMBER_BITS: u32 = 52;
/// The largest page-size class: one entry spanning the whole 64-bit input address space.
pub const MAX_SIZE_CLASS: u8 = PAGE_NUMBER_BITS as u8;
/// The largest level a paging-structure entry can carry (5-level tables plus room for the
/// AMD-Vi v1 six-level mode).
pub const MAX_LEVEL: u8 = 7;

const PAGE_MASK: u64 = (1 << PAGE_NUMBER_BITS) - 1;
const SIZE_SHIFT: u32 = 52;
const LEVEL_SHIFT: u32 = 58;
const STAGE_SHIFT: u32 = 61;
const PASID_SHIFT: u32 = 16;
const PASID_PRESENT: u64 = 1 << 36;
const SOURCE_SHIFT: u32 = 37;
const KIND_SHIFT: u32 = 53;
pub(crate) const DOMAIN_FIELD: u64 = 0xffff;

/// What a cached entry is. One cache instance normally holds one kind, but a cache may hold
/// several (for example an AMD-Vi IOTLB that also caches page-directory entries); the kind is part
/// of the key and decides which invalidations apply.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EntryKind {
    /// A leaf translation (VT-d IOTLB, §6.2.4; AMD-Vi IOTLB).
    Translation = 0,
    /// A non-leaf paging-structure entry (VT-d §6.2.5 paging-structure caches; AMD-Vi cached PDEs).
    PagingStructure = 1,
    /// A VT-d context-cache entry (§6.2.2), keyed by source id; the domain id is an attribute.
    Context = 2,
    /// A VT-d PASID-cache entry (§6.2.3), keyed by domain id and PASID.
    Pasid = 3,
    /// An AMD-Vi device-table-entry cache entry, keyed by device id; the domain id is an attribute.
    DeviceTable = 4,
}

impl EntryKind {
    #[inline]
    fn from_bits(bits: u64) -> Option<Self> {
        match bits {
            0 => Some(Self::Translation),
            1 => Some(Self::PagingStructure),
            2 => Some(Self::Context),
            3 => Some(Self::Pasid),
            4 => Some(Self::DeviceTable),
            _ => None,
        }
    }

    /// Whether entries of this kind are context-type entries (keyed by source id; the target of
    /// source-id invalidations; their domain id is recorded but not part of the lookup key).
    #[inline]
    pub const fn is_context_type(self) -> bool {
        matches!(self, Self::Context | Self::DeviceTable)
    }

    /// Whether entries of this kind are translation-type (leaf or paging-structure), the target
    /// of page-range invalidations.
    #[inline]
    pub const fn is_translation_type(self) -> bool {
        matches!(self, Self::Translation | Self::PagingStructure)
    }
}

/// The translation stage a paging-structure or translation entry belongs to
/// (VT-d spec rev 4.1, §3.6-§3.8; AMD-Vi: v1 host table is second stage, v2 guest table first).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Stage {
    /// First-stage (VT-d first-level, AMD-Vi guest/v2) tables.
    First = 1,
    /// Second-stage (VT-d second-level, AMD-Vi host/v1) tables.
    Second = 2,
    /// The combined result of a nested (two-dimensional) walk.
    Nested = 3,
}

impl Stage {
    #[inline]
    fn encode(stage: Option<Stage>) -> u64 {
        stage.map_or(0, |s| s as u64)
    }

    fn decode(bits: u64) -> Option<Stage> {
        match bits {
            1 => Some(Self::First),
            2 => Some(Self::Second),
            3 => Some(Self::Nested),
            _ => None,
        }
    }
}

/// The tag of a cache entry. The same shape serves every cache of both vendors.
///
/// `page` is an input page number in 4 KiB units (input address >> 12). An entry spans
/// `2^size` such pages starting at `page`, which must be aligned to that span: a 2 MiB
/// translation has `size == 9`, a 1 GiB one `size == 18`, a paging-structure entry at VT-d
/// level 2 (a PDE pointing to a page table) spans `2^9` pages as well.
///
/// Fields a kind does not use are zero / `None` (the constructors below do this).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Tag {
    /// What the entry is.
    pub kind: EntryKind,
    /// Domain id (VT-d DID, AMD-Vi DomainID).
    pub domain: u16,
    /// PASID for requests-with-PASID, `None` for requests without.
    pub pasid: Option<u32>,
    /// Source id (VT-d requester id bus:dev.fn, AMD-Vi DeviceID); context-type entries only.
    pub source_id: u16,
    /// Stage, for paging-structure and translation entries.
    pub stage: Option<Stage>,
    /// Paging-structure level (the level of the table entry that was cached), or 0.
    pub level: u8,
    /// Input page number (address >> 12), aligned to `2^size`.
    pub page: u64,
    /// Page-size class: log2 of the span in 4 KiB pages.
    pub size: u8,
}

impl Tag {
    /// A leaf translation (IOTLB entry) for `page` (4 KiB page number) spanning `2^size` pages.
    pub const fn translation(domain: u16, pasid: Option<u32>, page: u64, size: u8) -> Self {
        Self {
            kind: EntryKind::Translation,
            domain,
            pasid,
            source_id: 0,
            stage: None,
            level: 0,
            page,
            size,
        }
    }

    /// A paging-structure-cache entry: the entry at `level` of the `stage` tables that
    /// translates the input pages `[page, page + 2^size)`.
    pub const fn paging_structure(
        domain: u16,
        pasid: Option<u32>,
        stage: Stage,
        level: u8,
        page: u64,
        size: u8,
    ) -> Self {
        Self {
            kind: EntryKind::PagingStructure,
            domain,
            pasid,
            source_id: 0,
            stage: Some(stage),
            level,
            page,
            size,
        }
    }

    /// A VT-d context-cache entry for requester `source_id`, whose context entry names `domain`.
    /// Lookups match on the source id only; `domain` serves domain-selective invalidation.
    pub const fn context(source_id: u16, domain: u16) -> Self {
        Self {
            kind: EntryKind::Context,
            domain,
            pasid: None,
            source_id,
            stage: None,
            level: 0,
            page: 0,
            size: 0,
        }
    }

    /// A VT-d PASID-cache entry for (`domain`, `pasid`).
    pub const fn pasid_entry(domain: u16, pasid: u32) -> Self {
        Self {
            kind: EntryKind::Pasid,
            domain,
            pasid: Some(pasid),
            source_id: 0,
            stage: None,
            level: 0,
            page: 0,
            size: 0,
        }
    }

    /// An AMD-Vi device-table-cache entry for `device_id`, whose DTE names `domain`.
    /// Lookups match on the device id only.
    pub const fn device_table(device_id: u16, domain: u16) -> Self {
        Self {
            kind: EntryKind::DeviceTable,
            domain,
            pasid: None,
            source_id: device_id,
            stage: None,
            level: 0,
            page: 0,
            size: 0,
        }
    }

    /// Checks the field ranges: PASID within 20 bits, page within 52 bits and aligned to its
    /// span, size class at most 52, level at most 7.
    pub fn validate(&self) -> Result<(), TagError> {
        if let Some(p) = self.pasid
            && p > PASID_MAX
        {
            return Err(TagError::PasidOutOfRange(p));
        }
        if self.size > MAX_SIZE_CLASS {
            return Err(TagError::SizeOutOfRange(self.size));
        }
        if self.level > MAX_LEVEL {
            return Err(TagError::LevelOutOfRange(self.level));
        }
        if self.page > PAGE_MASK {
            return Err(TagError::PageOutOfRange(self.page));
        }
        if self.page & span_mask(self.size) != 0 {
            return Err(TagError::Misaligned {
                page: self.page,
                size: self.size,
            });
        }
        Ok(())
    }

    /// The number of 4 KiB pages the entry spans.
    pub fn span_pages(&self) -> u64 {
        1u64 << self.size.min(MAX_SIZE_CLASS)
    }

    /// Whether the entry's span contains the 4 KiB page `page`.
    #[inline]
    pub fn covers(&self, page: u64) -> bool {
        page & !span_mask(self.size) == self.page
    }

    /// Packs the tag into its two key words (layout in the module documentation). The tag must
    /// be valid ([`Tag::validate`]); out-of-range bits are masked off.
    #[inline]
    pub fn encode(&self) -> [u64; 2] {
        let key0 = (self.page & PAGE_MASK)
            | (u64::from(self.size & 0x3f) << SIZE_SHIFT)
            | (u64::from(self.level & 0x7) << LEVEL_SHIFT)
            | (Stage::encode(self.stage) << STAGE_SHIFT);
        let key1 = u64::from(self.domain)
            | self.pasid.map_or(0, |p| {
                (u64::from(p & PASID_MAX) << PASID_SHIFT) | PASID_PRESENT
            })
            | (u64::from(self.source_id) << SOURCE_SHIFT)
            | ((self.kind as u64) << KIND_SHIFT);
        [key0, key1]
    }

    /// Unpacks two key words. Returns `None` for words no valid tag encodes to.
    pub fn decode(words: [u64; 2]) -> Option<Self> {
        let [key0, key1] = words;
        if key0 >> 63 != 0 || key1 >> 56 != 0 {
            return None;
        }
        let kind = EntryKind::from_bits((key1 >> KIND_SHIFT) & 0x7)?;
        let stage_bits = (key0 >> STAGE_SHIFT) & 0x3;
        let pasid_bits = ((key1 >> PASID_SHIFT) as u32) & PASID_MAX;
        let pasid = if key1 & PASID_PRESENT != 0 {
            Some(pasid_bits)
        } else if pasid_bits != 0 {
            return None;
        } else {
            None
        };
        let tag = Self {
            kind,
            domain: (key1 & DOMAIN_FIELD) as u16,
            pasid,
            source_id: ((key1 >> SOURCE_SHIFT) & 0xffff) as u16,
            stage: Stage::decode(stage_bits),
            level: ((key0 >> LEVEL_SHIFT) & 0x7) as u8,
            page: key0 & PAGE_MASK,
            size: ((key0 >> SIZE_SHIFT) & 0x3f) as u8,
        };
        tag.validate().ok()?;
        Some(tag)
    }
}

/// The low-bit mask of a span of `2^size` pages.
#[inline]
pub(crate) fn span_mask(size: u8) -> u64 {
    if u32::from(size) >= 64 {
        u64::MAX
    } else {
        (1u64 << size) - 1
    }
}

/// Field accessors on encoded key words, used by the cache's lookup and scan paths.
pub(crate) mod key {
    use super::*;

    #[inline]
    pub(crate) fn page(key0: u64) -> u64 {
        key0 & PAGE_MASK
    }
    #[inline]
    pub(crate) fn size(key0: u64) -> u8 {
        ((key0 >> SIZE_SHIFT) & 0x3f) as u8
    }
    /// `key0` with its page and size fields cleared.
    #[inline]
    pub(crate) fn without_page(key0: u64) -> u64 {
        key0 & !(PAGE_MASK | (0x3f << SIZE_SHIFT))
    }
    #[inline]
    pub(crate) fn with_page(base: u64, page: u64, size: u8) -> u64 {
        base | (page & PAGE_MASK) | (u64::from(size) << SIZE_SHIFT)
    }
    #[inline]
    pub(crate) fn domain(key1: u64) -> u16 {
        (key1 & DOMAIN_FIELD) as u16
    }
    #[inline]
    pub(crate) fn pasid(key1: u64) -> Option<u32> {
        if key1 & PASID_PRESENT != 0 {
            Some(((key1 >> PASID_SHIFT) as u32) & PASID_MAX)
        } else {
            None
        }
    }
    #[inline]
    pub(crate) fn source(key1: u64) -> u16 {
        ((key1 >> SOURCE_SHIFT) & 0xffff) as u16
    }
    #[inline]
    pub(crate) fn kind(key1: u64) -> Option<EntryKind> {
        EntryKind::from_bits((key1 >> KIND_SHIFT) & 0x7)
    }
    /// The mask of `key1` bits that take part in matching: context-type entries are looked up
    /// by source id alone, their domain id is an attribute.
    #[inline]
    pub(crate) fn match_mask(key1: u64) -> u64 {
        match kind(key1) {
            Some(k) if k.is_context_type() => !DOMAIN_FIELD,
            _ => u64::MAX,
        }
    }
    /// The words that choose the set, as (low-bit index source, offset source):
    /// translation-type entries by (page, size, domain), so a
    /// page-range invalidation can find them without knowing PASID, level or stage;
    /// context-type entries by source id; PASID entries by (domain, PASID).
    #[inline]
    pub(crate) fn index_words(key0: u64, key1: u64) -> (u64, u64) {
        match kind(key1) {
            Some(EntryKind::Translation | EntryKind::PagingStructure) | None => (
                page(key0) >> size(key0).min(63),
                (key1 & DOMAIN_FIELD) | (u64::from(size(key0)) << 16),
            ),
            Some(EntryKind::Context | EntryKind::DeviceTable) => {
                (u64::from(source(key1)), key1 & (0x7 << KIND_SHIFT))
            }
            Some(EntryKind::Pasid) => (
                (key1 >> PASID_SHIFT) & (PASID_MAX as u64),
                key1 & (DOMAIN_FIELD | (0x7 << KIND_SHIFT)),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn tags_round_trip_through_their_words(
            kind in 0u8..5,
            domain in any::<u16>(),
            pasid in proptest::option::of(0u32..=PASID_MAX),
            source in any::<u16>(),
            stage in 0u8..4,
            level in 0u8..=MAX_LEVEL,
            size in 0u8..=MAX_SIZE_CLASS,
            page in 0u64..(1 << 52),
        ) {
            let kind = [
                EntryKind::Translation,
                EntryKind::PagingStructure,
                EntryKind::Context,
                EntryKind::Pasid,
                EntryKind::DeviceTable,
            ][usize::from(kind)];
            let stage = [None, Some(Stage::First), Some(Stage::Second),
                Some(Stage::Nested)][usize::from(stage)];
            let tag = Tag { kind, domain, pasid, source_id: source, stage, level,
                page: page & !span_mask(size), size };
            prop_assert!(tag.validate().is_ok());
            prop_assert_eq!(Tag::decode(tag.encode()), Some(tag));
        }
    }

    #[test]
    fn translation_tag_encodes_to_hand_built_words() {
        // 2 MiB page at input address 0x4020_0000 (page 0x40200), domain 0x1234, PASID 0x12345.
        let t = Tag::translation(0x1234, Some(0x12345), 0x40200, 9);
        let [k0, k1] = t.encode();
        assert_eq!(k0, 0x40200 | (9 << 52));
        assert_eq!(
            k1,
            0x1234 | (0x12345 << 16) | (1 << 36) | ((EntryKind::Translation as u64) << 53)
        );
        assert_eq!(Tag::decode([k0, k1]), Some(t));
    }

    #[test]
    fn paging_structure_tag_carries_level_and_stage() {
        let t = Tag::paging_structure(7, None, Stage::Second, 3, 0x4_0000, 18);
        let [k0, k1] = t.encode();
        assert_eq!(k0, 0x4_0000 | (18 << 52) | (3 << 58) | (2 << 61));
        assert_eq!(k1, 7 | (1 << 53));
        assert_eq!(Tag::decode([k0, k1]), Some(t));
        let nested = Tag::paging_structure(7, Some(1), Stage::Nested, 1, 0, 0);
        assert_eq!(nested.encode()[0] >> 61, 3);
    }

    #[test]
    fn context_type_tags_encode_source_and_kind() {
        // Requester 03:1f.7 -> source id 0x03ff.
        let c = Tag::context(0x03ff, 42);
        let [k0, k1] = c.encode();
        assert_eq!(k0, 0);
        assert_eq!(k1, 42 | (0x03ff << 37) | (2 << 53));
        let d = Tag::device_table(0xffff, 0);
        assert_eq!(d.encode()[1], (0xffff << 37) | (4 << 53));
        let p = Tag::pasid_entry(5, PASID_MAX);
        assert_eq!(p.encode()[1], 5 | (0xfffff << 16) | (1 << 36) | (3 << 53));
        for t in [c, d, p] {
            assert_eq!(Tag::decode(t.encode()), Some(t));
        }
    }

    #[test]
    fn invalid_tags_are_rejected() {
        assert_eq!(
            Tag::translation(0, Some(PASID_MAX + 1), 0, 0).validate(),
            Err(TagError::PasidOutOfRange(PASID_MAX + 1))
        );
        assert_eq!(
            Tag::translation(0, None, 1 << 52, 0).validate(),
            Err(TagError::PageOutOfRange(1 << 52))
        );
        assert_eq!(
            Tag::translation(0, None, 0x201, 9).validate(),
            Err(TagError::Misaligned {
                page: 0x201,
                size: 9
            })
        );
        assert_eq!(
            Tag::translation(0, None, 0, 53).validate(),
            Err(TagError::SizeOutOfRange(53))
        );
        assert_eq!(
            Tag::paging_structure(0, None, Stage::First, 8, 0, 0).validate(),
            Err(TagError::LevelOutOfRange(8))
        );
    }

    #[test]
    fn decode_rejects_words_no_tag_produces() {
        assert_eq!(Tag::decode([1 << 63, 0]), None);
        assert_eq!(Tag::decode([0, 7 << 53]), None);
        // PASID bits without the present bit.
        assert_eq!(Tag::decode([0, 5 << 16]), None);
        // Misaligned page for its size class.
        assert_eq!(Tag::decode([1 | (1 << 52), 0]), None);
    }

    #[test]
    fn covers_uses_the_span() {
        let t = Tag::translation(1, None, 0x200, 9);
        assert!(t.covers(0x200));
        assert!(t.covers(0x3ff));
        assert!(!t.covers(0x400));
        assert!(!t.covers(0x1ff));
        assert_eq!(t.span_pages(), 512);
    }

    #[test]
    fn match_mask_ignores_domain_of_context_entries() {
        let a = Tag::context(0x10, 1).encode()[1];
        let b = Tag::context(0x10, 2).encode()[1];
        assert_eq!(a & key::match_mask(a), b & key::match_mask(b));
        let x = Tag::translation(1, None, 0, 0).encode()[1];
        let y = Tag::translation(2, None, 0, 0).encode()[1];
        assert_ne!(x & key::match_mask(x), y & key::match_mask(y));
    }
}

//! Lock-free set-associative translation caches with the hardware's invalidation semantics.
//!
//! One generic type, [`Cache`], serves every cache the VT-d and AMD-Vi models hold: the IOTLB,
//! the per-level first- and second-stage paging-structure caches, the VT-d context and PASID
//! caches and the AMD-Vi device-table cache. Entries are tagged by [`Tag`] (domain id, PASID or
//! none, input page number, page-size class, and for paging-structure caches the level and
//! stage; source id for context-type caches) and hold any small `Copy` [`Value`].
//!
//! * Lookups are lock-free and allocation-free: entries are arrays of `AtomicU64` guarded by a
//!   per-entry sequence word (no `unsafe` anywhere).
//! * Invalidation at every granularity the hardware offers ([`Invalidation`]): global and
//!   domain in O(1) by generations; domain+PASID, page range (VT-d ADDR/AM/IH, AMD-Vi S/PDE) and
//!   source id by scanning.
//! * The invalidation race is ruled out by [`Token`]s: take one before the walk, insert with it;
//!   the insert is refused if an invalidation that could cover the tag began in between.
//! * Statistics in sharded, padded counters, read as a [`CacheStats`] snapshot.
//!
//! ```
//! use iotlb::{Cache, CacheConfig, Invalidation, Perms, Tag, Translation};
//!
//! let iotlb: Cache<Translation> = Cache::new(CacheConfig::new(64, 8)).unwrap();
//! let tag = Tag::translation(1, None, 0x1234, 0);
//! let token = iotlb.token(); // before the walk
//! let t = Translation { output: 0x8000_0000, page_shift: 12, perms: Perms::R, flags: 0 };
//! assert!(iotlb.insert(token, &tag, &t).unwrap().is_stored());
//! assert_eq!(iotlb.lookup(&tag), Some(t));
//! iotlb.invalidate(&Invalidation::Domain(1)).unwrap();
//! assert_eq!(iotlb.lookup(&tag), None);
//! ```

mod cache;
mod invalidation;
mod stats;
mod sync;
mod tag;
mod value;

#[cfg(all(test, loom))]
mod loom_tests;
#[cfg(all(test, not(loom)))]
mod model_tests;
#[cfg(all(test, not(loom)))]
mod tests;

pub use cache::{
    Cache, CacheConfig, InsertOutcome, MAX_SETS, MAX_WAYS, Refusal, Replacement, Token,
};
pub use invalidation::{Invalidation, PageRange, PasidMatch, SourceSelector};
pub use stats::{CacheStats, ShardedCounter};
pub use tag::{EntryKind, MAX_LEVEL, MAX_SIZE_CLASS, PASID_MAX, Stage, Tag};
pub use value::{MAX_VALUE_WORDS, Perms, Translation, Value};

/// A tag with a field out of range.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TagError {
    /// PASIDs are 20 bits.
    #[error("PASID {0:#x} exceeds 20 bits")]
    PasidOutOfRange(u32),
    /// Input page numbers are 52 bits (64-bit addresses).
    #[error("input page number {0:#x} exceeds 52 bits")]
    PageOutOfRange(u64),
    /// The page number is not aligned to the entry's span.
    #[error("page {page:#x} is not aligned to its size class {size}")]
    Misaligned {
        /// The page number.
        page: u64,
        /// The size class.
        size: u8,
    },
    /// Size classes go up to 52.
    #[error("page-size class {0} exceeds 52")]
    SizeOutOfRange(u8),
    /// Levels go up to 7.
    #[error("paging-structure level {0} exceeds 7")]
    LevelOutOfRange(u8),
}

/// Why an insert could not be attempted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InsertError {
    /// The tag has a field out of range.
    #[error(transparent)]
    Tag(#[from] TagError),
    /// The token was taken from another cache: its epoch means nothing here.
    #[error("generation token taken from another cache")]
    ForeignToken,
}

/// An invalidation request with a field out of range.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InvalidationError {
    /// The address mask (VT-d AM) exceeds the 52-bit page number.
    #[error("address mask {0} exceeds 52")]
    AddressMaskTooLarge(u8),
    /// The range base is out of range or not aligned to its size.
    #[error("range base page {base:#x} is not a 52-bit page number aligned to 2^{order}")]
    MisalignedRange {
        /// The base page.
        base: u64,
        /// log2 of the page count.
        order: u8,
    },
    /// PASIDs are 20 bits.
    #[error("PASID {0:#x} exceeds 20 bits")]
    PasidOutOfRange(u32),
    /// The VT-d function mask is two bits.
    #[error("function mask {0} exceeds 3")]
    FunctionMaskOutOfRange(u8),
}

/// A cache geometry the cache cannot be built with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// Sets must be a power of two up to [`MAX_SETS`].
    #[error("{0} sets: must be a power of two up to 2^20")]
    Sets(usize),
    /// Ways must be 1..=[`MAX_WAYS`].
    #[error("{0} ways: must be 1..=64")]
    Ways(usize),
    /// Domain slots must be a power of two up to 65536.
    #[error("{0} domain slots: must be a power of two up to 65536")]
    DomainSlots(usize),
    /// Values must encode into 1..=[`MAX_VALUE_WORDS`] words.
    #[error("value of {0} words: must be 1..=8")]
    ValueWords(usize),
}

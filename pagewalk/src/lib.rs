//! Page-table formats of Intel VT-d and AMD-Vi, one- and two-dimensional walkers, and a table
//! builder.
//!
//! - [`format`](mod@format): entry layouts (VT-d first- and second-stage, AMD-Vi v1 and v2) and the per-walk
//!   configuration ([`WalkConfig`]) a hardware model builds once per context / PASID entry / DTE.
//! - [`walk()`] / [`walk_from`]: the one-dimensional walker, from the root or from a
//!   paging-structure-cache hit.
//! - [`walk_nested`] / [`walk_nested_from`] / [`walk_nested_cached`]: the two-dimensional
//!   walker (first stage over a second stage, or over the identity), the last with each
//!   second-stage walk starting where a [`SecondStageStart`] (a second-stage cache) says.
//! - [`WalkObserver`]: receives every memory reference and every non-leaf entry visited.
//! - [`TableBuilder`]: maps and unmaps ranges in any format, with tables from a
//!   [`FrameAllocator`].
//! - [`PhysMem`]: the memory surface (64-bit atomic reads and compare-and-exchange), over
//!   vm-memory ([`GuestMem`]), a sparse test memory ([`SparseMem`]) or a flat lock-free one
//!   ([`FlatMem`]).
//!
//! Formats supported: VT-d first-stage (IA-32e 4/5-level; 4K/2M/1G; R/W, U/S, XD; SRE, WPE,
//! ERE, EAFE; A/D), VT-d second-stage (3/4/5 levels; R/W/X; 2M/1G; A/D with SLADE), AMD-Vi v1
//! (modes 1..6; level skipping; Next Level 7 page sizes; IR/IW; FC; A/D with HAD), AMD-Vi v2
//! (x86 4/5-level; U/S, NX, A/D). Each layout is documented, with its spec section, in its
//! module under [`format`](mod@format).
//!
//! ```
//! use pagewalk::*;
//!
//! // Build 4-level VT-d second-stage tables in memory, then walk them.
//! let mem = SparseMem::new(1 << 32);
//! let mut alloc = BumpAllocator::new(0x10_0000, 0x20_0000);
//! let cfg = WalkConfig::VtdSecondStage(VtdSsConfig::new(4).with_slade(true));
//! let mut tables = TableBuilder::new(cfg, &mem, &mut alloc).unwrap();
//! tables
//!     .map(&mem, &mut alloc, 0x4000_0000, 0x8000_0000, 0x40_0000, Perms::RW,
//!          PageSizePolicy::LARGEST)
//!     .unwrap();
//!
//! let mut trace = RecordingTrace::<16>::new();
//! let t = walk(&cfg, &mem, tables.root(), 0x4020_1234, Access::WRITE, &mut trace).unwrap();
//! assert_eq!((t.output, t.page_shift), (0x8020_1234, 21));
//! assert_eq!(trace.reads(), 3); // PML4E, PDPE, then the 2 MiB PDE leaf
//!
//! // A write to an unmapped address names the stage, level and entry.
//! let f = walk(&cfg, &mem, tables.root(), 0x1000, Access::WRITE, &mut ()).unwrap_err();
//! assert_eq!((f.stage, f.kind, f.level), (Stage::Second, FaultKind::NotPresent, 3));
//! ```

#![forbid(unsafe_code)]

pub mod alloc;
pub mod builder;
pub mod format;
/// The walkers' fuzz oracle, shared by the fuzz target and the corpus replay (feature
/// `fuzz-support`; the crate's own proptests use it too).
#[cfg(any(test, feature = "fuzz-support"))]
pub mod fuzz_support;
#[cfg(all(test, loom))]
mod loom_tests;
pub mod mem;
pub mod nested;
pub mod observer;
#[cfg(test)]
mod proptests;
pub mod types;
pub mod walk;

pub use builder::{
    BuildError, BumpAllocator, FrameAllocator, Mapping, PageSizePolicy, Reclaim, TableBuilder,
};
pub use format::{AmdV1Config, Decoded, Format, VtdSsConfig, WalkConfig, X86Config};
pub use mem::{AtomicAccess, FlatMem, GuestMem, MemError, PhysMem, SparseMem, region_atomic};
pub use nested::{
    FromRoot, NestedTranslation, SecondStage, SecondStageStart, SecondStageView, walk_nested,
    walk_nested_cached, walk_nested_from,
};
pub use observer::{MemRef, RecordingTrace, RefKind, TableVisit, WalkObserver};
pub use types::{
    Access, AccessKind, Fault, FaultKind, NestedPhase, Perms, Stage, Translation, WalkStart,
    level_index, level_shift,
};
pub use walk::{MAX_AD_RETRIES, walk, walk_from};

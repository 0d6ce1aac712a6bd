//! Page-table formats of Intel VT-d and AMD-Vi, one- and two-dimensional walkers, and a table
//! builder.
//!
//! - [`format`]: entry layouts (VT-d first- and second-stage, AMD-Vi v1 and v2) and the per-walk
//!   configuration ([`WalkConfig`]) a hardware model builds once per context / PASID entry / DTE.
//! - [`walk()`] / [`walk_from`]: the one-dimensional walker, from the root or from a
//!   paging-structure-cache hit.
//! - [`walk_nested`] / [`walk_nested_from`]: the two-dimensional walker (first stage over a
//!   second stage, or over the identity).
//! - [`WalkObserver`]: receives every memory reference and every non-leaf entry visited.
//! - [`TableBuilder`]: maps and unmaps ranges in any format, with tables from a
//!   [`FrameAllocator`].

pub mod builder;
pub mod format;
#[doc(hidden)]
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
    BuildError, BumpAllocator, FrameAllocator, Mapping, PageSizePolicy, TableBuilder,
};
pub use format::{AmdV1Config, Decoded, Format, VtdSsConfig, WalkConfig, X86Config};
pub use mem::{FlatMem, GuestMem, MemError, PhysMem, SparseMem};
pub use nested::{NestedTranslation, SecondStage, SecondStageView, walk_nested, walk_nested_from};
pub use observer::{MemRef, RecordingTrace, RefKind, TableVisit, WalkObserver};
pub use types::{
    Access, AccessKind, Fault, FaultKind, NestedPhase, Perms, Stage, Translation, WalkStart,
    level_index, level_shift,
};
pub use walk::{MAX_AD_RETRIES, walk, walk_from};

//! Page-table formats of Intel VT-d and AMD-Vi, one- and two-dimensional walkers, and a table
//! builder.
//!
//! - [`format`]: entry layouts (VT-d first- and second-stage, AMD-Vi v1 and v2) and the per-walk
//!   configuration ([`WalkConfig`]) a hardware model builds once per context / PASID entry / DTE.
//! - [`walk()`] / [`walk_from`]: the one-dimensional walker, from the root or from a
//!   paging-structure-cache hit.
//! - [`WalkObserver`]: receives every memory reference and every non-leaf entry visited.

pub mod format;
pub mod mem;
pub mod observer;
pub mod types;
pub mod walk;

pub use format::{AmdV1Config, Decoded, Format, VtdSsConfig, WalkConfig, X86Config};
pub use mem::{GuestMem, MemError, PhysMem, SparseMem};
pub use observer::{MemRef, RecordingTrace, RefKind, TableVisit, WalkObserver};
pub use types::{
    Access, AccessKind, Fault, FaultKind, Perms, Stage, Translation, WalkStart, level_index,
    level_shift,
};
pub use walk::{MAX_AD_RETRIES, walk, walk_from};

//! The atomics the cache is built from: std's normally, loom's under `--cfg loom` so the loom
//! models in `loom_tests` explore every interleaving of the real code.

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicU64, Ordering, fence};
#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{AtomicU64, Ordering, fence};

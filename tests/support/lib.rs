//! Support code shared by the workspace's cross-crate tests and criterion benchmarks.

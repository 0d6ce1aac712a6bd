//! Support code shared by the workspace's cross-crate tests and criterion benchmarks.
//!
//! [`guest`] is the real-guest test harness: the provisioned environment, QEMU runs and their
//! agent reports, the scenarios written once for any virtio-iommu front end, and the daemon
//! with its control-socket client. [`models`] builds each hardware model's driver the way the
//! criterion benchmarks use them.

#![forbid(unsafe_code)]

pub mod guest;
pub mod models;
pub mod units;

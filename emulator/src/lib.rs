//! IOMMU hardware units (Intel VT-d and AMD-Vi), the drivers that program them, and the domain
//! core above the drivers.
//!
//! - [`vtd`]: the VT-d unit, programmed only through its registers and memory;
//! - [`amdvi`]: the AMD-Vi unit, the same way: device table, GCR3 tables, v1 and v2 tables,
//!   command buffer and event log;
//! - [`driver`]: the [`Driver`] trait, the VT-d and AMD-Vi drivers, the soft double, and the
//!   plumbing every driver shares (private memory, domain ids, command queues);
//! - [`core`]: domains, endpoints and mappings with virtio-iommu's semantics, over a driver;
//! - [`pci`]: PCI addresses.
//!
//! Vendor-neutral pieces shared by the hardware units:
//! - [`request`]: the DMA request, translation and fault types;
//! - [`trace`]: the bounded, typed event trace a translation returns;
//! - [`cache`]: cache wiring (traced lookups, generation tokens, geometry);
//! - [`unit`](mod@unit): the trait every hardware unit implements;
//! - [`xlate`]: the translation engine the units share (caches, walks, fills);
//! - [`timing`]: traces to cycles, and a discrete-event engine for concurrent streams.
//!
//! An embedder needs what the crate root re-exports: build a unit and its driver
//! ([`VtdDriver::with_unit`], [`AmdViDriver::with_unit`], or [`SoftDriver::new`]), put a [`Core`] over the driver, and send
//! [`DmaRequest`]s through [`Core::translate`] (or straight to a [`Unit`]).

#![forbid(unsafe_code)]

pub mod amdvi;
pub mod cache;
pub mod core;
pub mod driver;
#[cfg(any(test, feature = "fuzz-support"))]
pub mod fuzz_support;
pub mod inspect;
pub mod pci;
pub mod request;
pub mod sim;
pub mod timing;
pub mod trace;
pub mod unit;
pub mod vtd;
pub mod xlate;

pub use crate::amdvi::{AmdVi, AmdViConfig};
pub use crate::core::{Core, CoreConfig, CoreError, EndpointSet, MapFlags, Mapping, Outcome};
pub use crate::driver::amdvi::AmdViDriver;
pub use crate::driver::vtd::{VtdDriver, VtdMode};
pub use crate::driver::{Driver, HwError, PrivateRegion, SoftDriver, SoftUnit};
pub use crate::pci::PciBdf;
pub use crate::request::{AccessKind, AddressType, DmaRequest, Fault, FaultKind, FaultSite};
pub use crate::request::{Perms, Translation};
pub use crate::trace::{Trace, TraceEvent};
pub use crate::unit::{CacheKind, Unit, UnitStats};
pub use crate::vtd::{Vtd, VtdConfig};

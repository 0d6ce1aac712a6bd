//! IOMMU hardware models (Intel VT-d, AMD-Vi), the group and domain core, and the timing model.
//!
//! Vendor-neutral pieces shared by the hardware models:
//! - [`request`]: the DMA request, translation and fault types;
//! - [`trace`]: the fixed-capacity event trace a translation returns;
//! - [`cache`]: cache wiring (traced lookups, generation tokens, geometry);
//! - [`unit`]: the trait every hardware unit implements;
//! - [`xlate`]: the translation engine the units share (caches, walks, fills).

#![forbid(unsafe_code)]

pub mod cache;
pub mod core;
pub mod driver;
pub mod pci;
pub mod request;
pub mod trace;
pub mod unit;
pub mod vtd;
pub mod xlate;

pub use crate::core::{Core, CoreConfig, CoreError, EndpointSet, MapFlags, Mapping, Outcome};
pub use crate::driver::vtd::{VtdDriver, VtdMode};
pub use crate::driver::{Driver, HwError, PrivateRegion, SoftDriver, SoftUnit};
pub use crate::pci::PciBdf;
pub use crate::request::{AccessKind, AddressType, DmaRequest, Fault, FaultKind, FaultSite};
pub use crate::request::{Perms, Translation};
pub use crate::trace::{Trace, TraceEvent};
pub use crate::unit::{CacheKind, Unit, UnitStats};
pub use crate::vtd::{Vtd, VtdConfig};

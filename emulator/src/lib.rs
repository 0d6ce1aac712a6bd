//! IOMMU hardware models (Intel VT-d, AMD-Vi), the group and domain core, and the timing model.
//!
//! Vendor-neutral pieces shared by the hardware models:
//! - [`request`]: the DMA request, translation and fault types;
//! - [`trace`]: the fixed-capacity event trace a translation returns;
//! - [`cache`]: cache wiring (traced lookups, generation tokens, geometry).

pub mod cache;
pub mod core;
pub mod request;
pub mod trace;
pub mod vtd;

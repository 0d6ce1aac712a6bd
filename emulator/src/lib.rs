//! IOMMU hardware models (Intel VT-d, AMD-Vi), the group and domain core, and the timing model.

pub mod core;

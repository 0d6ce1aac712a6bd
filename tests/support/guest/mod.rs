//! The real-guest test harness (see `tests/guest/README.md`): [`harness`] provisions and boots
//! guests, [`scenarios`] are the guest-side scenarios written once for any front end, and
//! [`daemon`] runs `vhost-device-iommu` and talks to its control socket, and [`endpoint`] boots
//! guests with its DMA engine.

pub mod daemon;
pub mod endpoint;
pub mod harness;
pub mod scenarios;

//! Sends arbitrary request lines (raw, well-formed and near-valid) to the control socket's
//! handlers, in front of a virtio-iommu device over the VT-d model or of its unit as under the
//! register front, with an endpoint's DMA recorded between them; `record` writes only inside
//! a scratch directory. See `vhost_device_iommu::fuzz_support::check_control` for the oracles
//! and for how `record`'s paths are confined.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    vhost_device_iommu::fuzz_support::check_control(data);
});

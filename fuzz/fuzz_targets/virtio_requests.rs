//! Sends arbitrary virtio-iommu request sequences (raw and well-formed ATTACH, DETACH, MAP,
//! UNMAP, PROBE) and DMA translations to the device realised in the soft, VT-d and AMD-Vi
//! models at once; see `vhost_device_iommu::fuzz_support::check_requests` for the oracles.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    vhost_device_iommu::fuzz_support::check_requests(data);
});

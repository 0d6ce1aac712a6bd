//! Sends arbitrary vfio-user message streams (well-formed commands with fields from the input,
//! unknown commands, raw bodies, any flags, sizes that disagree with the body, descriptors
//! sent with DMA_MAP and SET_IRQS) to the daemon's vfio-user server in front of the DMA
//! engine's function; see `vhost_device_iommu::fuzz_support::check_vfio_messages` for the
//! oracles. Run it with `-malloc_limit_mb=16`: no single allocation may exceed what a message
//! can declare.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    vhost_device_iommu::fuzz_support::check_vfio_messages(data);
});

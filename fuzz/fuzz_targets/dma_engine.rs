//! Programs the DMA engine endpoint as a vfio-user client and its guest can: registers,
//! configuration space, descriptors in guest RAM, doorbells, DMA-region changes and SET_IRQS,
//! with its DMA translated by the VT-d model; see
//! `vhost_device_iommu::fuzz_support::check_dma_engine` for the oracles.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    vhost_device_iommu::fuzz_support::check_dma_engine(data);
});

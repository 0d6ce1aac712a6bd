//! `vhost-device-iommu`: a virtio-iommu device (virtio 1.3 §5.13) served as a vhost-user
//! backend, with the domain semantics and their hardware realisation in
//! [`iommu_emulator::core`].
//!
//! Endpoint ids are PCI requester ids of segment 0 (`bus << 8 | device << 3 | function`), the
//! ids the VIOT table's PCI range nodes hand to the guest's driver.

pub mod backend;
pub mod config;
pub mod control;
pub mod daemon;
pub mod device;
pub mod dma;
pub mod private_mem;
pub mod protocol;

/// The ACPI VIOT table that tells x86 guests which endpoints sit behind the virtio-iommu.
pub mod viot;

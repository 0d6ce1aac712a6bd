//! `vhost-device-iommu`: a virtio-iommu device served as a vhost-user backend.

/// The ACPI VIOT table that tells x86 guests which endpoints sit behind the virtio-iommu.
pub mod viot;

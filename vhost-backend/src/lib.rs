//! `vhost-device-iommu`: a virtio-iommu device served as a vhost-user backend.

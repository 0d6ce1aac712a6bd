//! The hardware models as the criterion benchmarks drive them: each driver over its own unit,
//! whose memory is an IOMMU-private region alone (the benchmarks DMA into no guest RAM).

use std::sync::Arc;

use iommu_emulator::{
    AmdViConfig, AmdViDriver, Driver, PrivateRegion, SoftDriver, VtdConfig, VtdDriver, VtdMode,
};
use vhost_device_iommu::config::Model;
use vhost_device_iommu::private_mem::PrivateMem;

/// The private region (base, size): room for the tables of a million 4 KiB mappings (about
/// 2,000 table pages), AMD-Vi's 2 MiB device table and the queues.
pub const PRIVATE: (u64, u64) = (1 << 40, 64 << 20);

/// A fresh driver of `model` (VT-d in legacy mode) with the units' default configurations.
pub fn driver(model: Model) -> Arc<dyn Driver> {
    let region = PrivateRegion {
        base: PRIVATE.0,
        size: PRIVATE.1,
    };
    let mem = || PrivateMem::new(PRIVATE.0, PRIVATE.1).expect("the private region maps");
    match model {
        Model::Vtd => Arc::new(
            VtdDriver::with_unit(mem(), VtdConfig::default(), region, VtdMode::Legacy)
                .expect("a VT-d unit with the default configuration"),
        ),
        Model::Amdvi => Arc::new(
            AmdViDriver::with_unit(mem(), AmdViConfig::default(), region)
                .expect("an AMD-Vi unit with the default configuration"),
        ),
        Model::Soft => Arc::new(SoftDriver::new()),
    }
}

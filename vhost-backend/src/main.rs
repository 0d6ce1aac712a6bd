//! `vhost-device-iommu`: the daemon's entry point.

use clap::Parser;
use vhost_device_iommu::config::{Args, DaemonConfig};

fn main() {
    env_logger::init();
    let config = match DaemonConfig::try_from(Args::parse()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("vhost-device-iommu: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = vhost_device_iommu::daemon::run(config) {
        log::error!("{e}");
        eprintln!("vhost-device-iommu: {e}");
        std::process::exit(1);
    }
}

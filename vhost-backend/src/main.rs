//! `vhost-device-iommu`: the daemon's entry point.

use clap::Parser;
use vhost_device_iommu::config::{Cli, Command, DaemonConfig};

fn main() {
    env_logger::init();
    let cli = Cli::parse();
    if let Some(Command::Viot(args)) = cli.command {
        let (path, topo) = match args.topology() {
            Ok(t) => t,
            Err(e) => {
                eprintln!("vhost-device-iommu viot: {e}");
                std::process::exit(2);
            }
        };
        if let Err(e) = vhost_device_iommu::viot::write_viot(&path, &topo) {
            eprintln!("vhost-device-iommu viot: {e}");
            std::process::exit(1);
        }
        return;
    }
    let config = match DaemonConfig::try_from(cli.serve) {
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

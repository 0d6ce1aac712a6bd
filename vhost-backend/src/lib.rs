//! `vhost-device-iommu`: a virtio-iommu device (virtio 1.3 §5.13) served as a vhost-user
//! backend, with the domain semantics and their hardware realisation in
//! [`iommu_emulator::core`].
//!
//! Endpoint ids are PCI requester ids of segment 0 (`bus << 8 | device << 3 | function`), the
//! ids the VIOT table's PCI range nodes hand to the guest's driver.
//!
//! # Serving the device from another program
//!
//! The daemon as the command line runs it, from a [`config::DaemonConfig`]:
//!
//! ```no_run
//! use vhost_device_iommu::config::DaemonConfig;
//!
//! let mut cfg = DaemonConfig::new("/tmp/viommu.sock")?; // the command line's defaults
//! cfg.control_socket = Some("/tmp/viommu-ctl.sock".into());
//! // Serves one vhost-user front end after another until a connection fails.
//! vhost_device_iommu::daemon::run(cfg)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Or the pieces, to serve them your own way: [`daemon::build_device`] gives the
//! [`device::IommuDevice`] (a hardware model's unit and driver under the core), and
//! [`backend::IommuBackend`] is its `vhost_user_backend::VhostUserBackend`. Device code of the
//! same process DMAs as an endpoint through the model with `vm_memory::IommuMemory` over a
//! [`dma::EndpointIommu`]:
//!
//! ```
//! use std::sync::Arc;
//! use iommu_emulator::{AccessKind, Core, CoreConfig, DmaRequest, MapFlags, SoftDriver};
//! use vhost_device_iommu::dma::EndpointIommu;
//! use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap, IommuMemory};
//!
//! let core = Arc::new(Core::new(CoreConfig::default(), Arc::new(SoftDriver::new()))?);
//! core.attach(1, 0x08, false)?; // endpoint 00:01.0 in domain 1
//! core.map(1, 0x10_0000, 0x10_0fff, 0x2000, MapFlags::RW)?;
//! // One request through the model, with its trace...
//! let t = core.translate(&DmaRequest::new(0x08, 0x10_0010, 4, AccessKind::Read));
//! assert_eq!(t.result.unwrap().addr, 0x2010);
//! // ...or the endpoint's DMA through vm-memory.
//! let ram = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)])?;
//! let dma = IommuMemory::new(ram, EndpointIommu::new(core, 0x08), true, ());
//! dma.write_obj(0xabu8, GuestAddress(0x10_0010))?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![forbid(unsafe_code)]

pub mod backend;
pub mod config;
pub mod control;
pub mod daemon;
pub mod device;
pub mod dma;
pub mod endpoint;
#[cfg(any(test, feature = "fuzz-support"))]
pub mod fuzz_support;
pub mod private_mem;
pub mod protocol;
pub mod register_front;

/// The ACPI DMAR table of the VT-d register front.
pub mod dmar;
/// The ACPI IVRS table of the AMD-Vi register front.
pub mod ivrs;
pub mod vfio;

/// The ACPI VIOT table that tells x86 guests which endpoints sit behind the virtio-iommu.
pub mod viot;

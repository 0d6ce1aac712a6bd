//! The daemon: builds the model, the core and the device from a [`DaemonConfig`], serves the
//! control socket and the endpoint devices (vfio-user), and serves one vhost-user front end
//! after another on the socket.

use std::sync::Arc;

use iommu_emulator::core::CoreError;
use iommu_emulator::{
    AmdVi, AmdViConfig, AmdViDriver, Core, Driver, HwError, PrivateRegion, SoftDriver, Unit, Vtd,
    VtdConfig, VtdDriver, VtdMode,
};
use vhost_user_backend::VhostUserDaemon;
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;

use crate::backend::{BackendError, FAULT_EVENT, IommuBackend};
use crate::config::{DaemonConfig, Model, VtdModeArg};
use crate::device::{DeviceError, IommuDevice};
use crate::dmar::DmarTopology;
use crate::endpoint::observe::Observers;
use crate::endpoint::server::EndpointHandle;
use crate::endpoint::{DmaTranslator, UnitTranslator};
use crate::ivrs::IvrsTopology;
use crate::private_mem::GuestRam;
use crate::private_mem::{PrivateMem, PrivateMemError, SystemMem};
use crate::register_front::{
    AMD_CAP_OFFSET, AMD_FUNCTION, FrontKind, FrontStats, Link, RegisterFrontSpec, UnitRegisters,
    amd_iommu_capability, amdvi_interrupts, vtd_interrupts,
};
use crate::vfio::function::{IrqLine, PciFunction};
use crate::vfio::regions::DmaRegions;

/// Errors that stop the daemon.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The IOMMU-private region could not be mapped.
    #[error(transparent)]
    PrivateRegion(#[from] PrivateMemError),
    /// The hardware model could not be brought up.
    #[error("cannot bring up the hardware model: {0}")]
    Hardware(#[from] HwError),
    /// The core could not be built.
    #[error("cannot build the IOMMU core: {0}")]
    Core(#[from] CoreError),
    /// The device could not be built.
    #[error("cannot build the device: {0}")]
    Device(#[from] DeviceError),
    /// The backend could not be built.
    #[error("cannot build the backend: {0}")]
    Backend(#[from] BackendError),
    /// The control socket could not be opened.
    #[error("cannot open the control socket: {0}")]
    Control(std::io::Error),
    /// The VIOT table could not be written.
    #[error("cannot write the VIOT table: {0}")]
    Viot(crate::viot::ViotError),
    /// vhost-user failure.
    #[error("vhost-user: {0}")]
    VhostUser(vhost_user_backend::Error),
    /// An endpoint device could not be served.
    #[error("cannot serve --endpoint {0}: {1}")]
    Endpoint(String, vfio_user::Error),
    /// The register front's ACPI table (DMAR or IVRS) could not be written.
    #[error("cannot write the {0} table: {1}")]
    AcpiTable(&'static str, std::io::Error),
    /// The fault event could not be registered with the worker.
    #[error("cannot register the fault event: {0}")]
    Register(std::io::Error),
}

/// With timing on, the unit's caches take the timing parameters' geometry (`apply` gives it
/// to the unit's configuration), so the cycles the model charges are those of the caches that
/// translate; what the unit cannot follow is logged.
fn timed_geometry(
    cfg: &DaemonConfig,
    apply: impl FnOnce(
        &iommu_emulator::timing::TimingParams,
    ) -> Vec<iommu_emulator::timing::UnitDeviation>,
) {
    if let Some(p) = &cfg.timing {
        for d in apply(p) {
            log::info!("timing: the unit's caches differ from the parameters: {d:?}");
        }
    }
}

/// Builds the hardware model the configuration names: a unit and the driver that programs
/// it. A VT-d or AMD-Vi unit's memory is the system physical address space: the
/// IOMMU-private region (an anonymous mapping at `cfg.private_region`'s physical base, holding
/// every structure the driver builds) plus guest RAM as the vhost-user memory table in `ram`
/// describes it.
pub fn build_driver(
    cfg: &DaemonConfig,
    ram: &GuestMemoryAtomic<GuestMemoryMmap>,
) -> Result<Arc<dyn Driver>, DaemonError> {
    let (base, size) = cfg.private_region;
    let region = PrivateRegion { base, size };
    let system = || -> Result<SystemMem, DaemonError> {
        let private = PrivateMem::new(base, size).map_err(DaemonError::PrivateRegion)?;
        Ok(SystemMem::new(private, ram.clone()))
    };
    // The host physical address width the drivers are told (a kernel reads it from the CPU);
    // the AMD-Vi model takes 32 to 52 bits.
    let phys_bits = |min| u8::try_from(cfg.core.phys_addr_bits.clamp(min, 52)).unwrap_or(52);
    Ok(match cfg.model {
        Model::Soft => Arc::new(SoftDriver::new()),
        Model::Vtd => {
            let mut vtd_cfg = VtdConfig {
                haw: phys_bits(0),
                ..VtdConfig::default()
            };
            timed_geometry(cfg, |p| p.apply_to_vtd(&mut vtd_cfg));
            let mode = match cfg.vtd_mode {
                VtdModeArg::Legacy => VtdMode::Legacy,
                VtdModeArg::Scalable => VtdMode::Scalable,
            };
            Arc::new(VtdDriver::with_unit(system()?, vtd_cfg, region, mode)?)
        }
        Model::Amdvi => {
            let mut amd_cfg = AmdViConfig {
                phys_addr_bits: phys_bits(32),
                ..AmdViConfig::default()
            };
            timed_geometry(cfg, |p| p.apply_to_amdvi(&mut amd_cfg));
            Arc::new(AmdViDriver::with_unit(system()?, amd_cfg, region)?)
        }
    })
}

/// Builds the device (model, core, virtio front) the configuration describes, over the guest
/// RAM `ram` will hold.
pub fn build_device(
    cfg: &DaemonConfig,
    ram: &GuestMemoryAtomic<GuestMemoryMmap>,
) -> Result<Arc<IommuDevice>, DaemonError> {
    let core = Arc::new(Core::new(cfg.core.clone(), build_driver(cfg, ram)?)?);
    Ok(Arc::new(IommuDevice::new(core, cfg.probe_size)?))
}

/// Serves the `--endpoint` devices, each translated by `iommu` (and observed by `obs`) unless
/// it bypasses the IOMMU.
fn spawn_endpoints(
    cfg: &DaemonConfig,
    iommu: &Arc<dyn DmaTranslator>,
    obs: &Observers,
) -> Result<Vec<Arc<EndpointHandle>>, DaemonError> {
    let mut endpoints = Vec::new();
    for spec in &cfg.endpoint_devices {
        let (translator, observed): (Arc<dyn DmaTranslator>, _) = if spec.bypass_iommu {
            (Arc::new(crate::endpoint::NoIommu), None)
        } else {
            let o = obs.endpoint(iommu.clone());
            (o.clone(), Some(o))
        };
        let e =
            crate::endpoint::server::spawn(spec.clone(), translator, observed).map_err(|e| {
                DaemonError::Endpoint(format!("{} at {}", spec.bdf, spec.socket.display()), e)
            })?;
        log::info!(
            "endpoint {} (DMA engine) served over vfio-user at {}{}",
            spec.bdf,
            spec.socket.display(),
            if spec.bypass_iommu {
                ", its DMA bypassing the IOMMU"
            } else {
                ""
            }
        );
        endpoints.push(e);
    }
    Ok(endpoints)
}

/// What the front does when the guest's firmware put BAR0 elsewhere than the ACPI `table`
/// names: the guest's driver would program registers at an address nothing serves, so the
/// daemon stops with the address to give instead.
fn mismatch(table: &'static str) -> impl Fn(u64, u64) + Send + 'static {
    move |expected, programmed| {
        let msg = format!(
            "the guest's firmware put the register front's BAR at {programmed:#x}, but the \
             {table} names {expected:#x}: give --register-front ...,base={programmed:#x}"
        );
        log::error!("{msg}");
        eprintln!("vhost-device-iommu: {msg}");
        std::process::exit(1);
    }
}

/// Runs the daemon until a vhost-user connection fails with an error other than a disconnect
/// (under the register front, until it is stopped).
pub fn run(cfg: DaemonConfig) -> Result<(), DaemonError> {
    if let Some((front, table)) = &cfg.register_front {
        return run_register_front(&cfg, front, table.as_deref());
    }
    let Some(socket_path) = cfg.socket_path.clone() else {
        return Err(DaemonError::Control(std::io::Error::other(
            "no --socket-path to serve the virtio-iommu on",
        )));
    };
    if let Some((path, topo)) = &cfg.viot {
        crate::viot::write_viot(path, topo).map_err(DaemonError::Viot)?;
        log::info!("VIOT table written to {}", path.display());
    }
    // One guest-memory handle for every connection: the vhost-user handler replaces its
    // contents on each memory-table change, and the model reads guest RAM through it.
    let ram = GuestMemoryAtomic::new(GuestMemoryMmap::new());
    let device = build_device(&cfg, &ram)?;
    let core: Arc<dyn DmaTranslator> = device.core().clone();
    let obs = Arc::new(Observers::new(cfg.timing.as_ref()));
    let endpoints = spawn_endpoints(&cfg, &core, &obs)?;
    if let Some(path) = &cfg.control_socket {
        crate::control::spawn(device.clone(), endpoints, obs, path)
            .map_err(DaemonError::Control)?;
        log::info!("control socket at {}", path.display());
    }
    let backend = Arc::new(IommuBackend::new(device.clone())?);
    backend.set_request_poll(cfg.request_poll);
    loop {
        backend.renew_exit_event()?;
        let mut daemon = VhostUserDaemon::new(
            "vhost-device-iommu".to_string(),
            backend.clone(),
            ram.clone(),
        )
        .map_err(DaemonError::VhostUser)?;
        for handler in daemon.get_epoll_handlers() {
            handler
                .register_listener(backend.fault_fd(), EventSet::IN, u64::from(FAULT_EVENT))
                .map_err(DaemonError::Register)?;
        }
        log::info!("waiting for a front end on {}", socket_path.display());
        daemon.serve(&socket_path).map_err(DaemonError::VhostUser)?;
        log::info!("front end disconnected; resetting the device");
        if let Err(e) = backend.front_end_gone() {
            log::error!("reset after disconnect: {e}");
        }
        // The front end's memory is gone with it.
        ram.lock()
            .unwrap_or_else(|e| e.into_inner())
            .replace(GuestMemoryMmap::new());
    }
}

/// The register front: the VT-d or AMD-Vi unit, reading guest RAM through the DMA regions
/// QEMU gives the front's function, its register file served over vfio-user for the guest's
/// own `intel_iommu` or `amd_iommu`; the endpoint devices translate straight through it.
/// Serves until stopped.
fn run_register_front(
    cfg: &DaemonConfig,
    front: &RegisterFrontSpec,
    table: Option<&std::path::Path>,
) -> Result<(), DaemonError> {
    let ram = GuestMemoryAtomic::new(GuestMemoryMmap::new());
    let stats = Arc::new(FrontStats::default());
    let endpoint_bdfs: Vec<_> = cfg.endpoint_devices.iter().map(|e| e.bdf).collect();
    let phys_bits = u8::try_from(cfg.core.phys_addr_bits.clamp(32, 52)).unwrap_or(48);
    // The front's current vfio-user connection, for VT-d's interrupt messages (§5.1.6 fault
    // events, §6.5.2.8 invalidation-completion events): DMA writes of the function to the
    // address and data the driver programmed, which QEMU delivers as MSIs.
    let link: Link = Arc::default();
    // The function's MSI vector, for AMD-Vi's interrupts (set once the function exists).
    let msi: Arc<std::sync::OnceLock<IrqLine>> = Arc::default();
    let (unit, registers): (Arc<dyn Unit>, _) = match front.kind {
        FrontKind::Vtd => {
            let mut vtd_cfg = VtdConfig {
                haw: phys_bits,
                ..VtdConfig::default()
            };
            timed_geometry(cfg, |p| p.apply_to_vtd(&mut vtd_cfg));
            let unit: Arc<dyn Unit> = Arc::new(
                Vtd::new(
                    GuestRam::new(ram.clone()),
                    vtd_cfg.clone(),
                    vtd_interrupts(stats.clone(), link.clone()),
                )
                .map_err(|e| DaemonError::Hardware(HwError::from(e)))?,
            );
            if let Some(path) = table {
                let topo = DmarTopology {
                    haw: vtd_cfg.haw,
                    register_base: front.base,
                    endpoints: endpoint_bdfs,
                };
                crate::dmar::write_dmar(path, &topo)
                    .map_err(|e| DaemonError::AcpiTable("DMAR", e))?;
                log::info!("DMAR table written to {}", path.display());
            }
            (
                unit.clone(),
                UnitRegisters::new(
                    unit,
                    front.kind.bar0_size(),
                    front.base,
                    stats.clone(),
                    mismatch("DMAR"),
                ),
            )
        }
        FrontKind::Amdvi => {
            let mut amd_cfg = AmdViConfig {
                phys_addr_bits: phys_bits,
                ..AmdViConfig::default()
            };
            timed_geometry(cfg, |p| p.apply_to_amdvi(&mut amd_cfg));
            let unit: Arc<dyn Unit> = Arc::new(
                AmdVi::new(
                    GuestRam::new(ram.clone()),
                    amd_cfg,
                    amdvi_interrupts(stats.clone(), msi.clone()),
                )
                .map_err(|e| DaemonError::Hardware(HwError::from(e)))?,
            );
            if let Some(path) = table {
                let topo = IvrsTopology {
                    phys_bits,
                    iommu: front.bdf,
                    cap_offset: AMD_CAP_OFFSET,
                    base: front.base,
                    endpoints: endpoint_bdfs,
                };
                crate::ivrs::write_ivrs(path, &topo)
                    .map_err(|e| DaemonError::AcpiTable("IVRS", e))?;
                log::info!("IVRS table written to {}", path.display());
            }
            let registers = UnitRegisters::new(
                unit.clone(),
                front.kind.bar0_size(),
                front.base,
                stats.clone(),
                mismatch("IVRS"),
            )
            .with_identity(
                AMD_FUNCTION,
                Some(amd_iommu_capability(front.base, phys_bits)),
            );
            (unit, registers)
        }
    };
    let function = PciFunction::new(registers, DmaRegions::with_sink(ram));
    let _ = msi.set(function.msi_line());
    crate::vfio::serve(
        format!("register front {}", front.bdf),
        &front.socket,
        function,
        move |c| *link.lock().unwrap_or_else(|p| p.into_inner()) = c,
        || {},
    )
    .map_err(|e| {
        DaemonError::Endpoint(format!("register front at {}", front.socket.display()), e)
    })?;
    log::info!(
        "{} register front at {} (BAR0 expected at {:#x}) served over vfio-user at {}",
        front.kind.name(),
        front.bdf,
        front.base,
        front.socket.display()
    );
    let translator: Arc<dyn DmaTranslator> = Arc::new(UnitTranslator(unit.clone()));
    let obs = Arc::new(Observers::new(cfg.timing.as_ref()));
    let endpoints = spawn_endpoints(cfg, &translator, &obs)?;
    if let Some(path) = &cfg.control_socket {
        crate::control::spawn_register_front(unit, stats, endpoints, obs, path)
            .map_err(DaemonError::Control)?;
        log::info!("control socket at {}", path.display());
    }
    loop {
        std::thread::park();
    }
}

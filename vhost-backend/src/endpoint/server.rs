//! One endpoint function served over vfio-user: its configuration space (region 7), its
//! registers (BAR0, region 0), the DMA regions the client maps, and its interrupts (INTx,
//! MSI) as the eventfds the client sets, on a thread of its own that serves one connection
//! after another.
//!
//! The `vfio_user` crate's [`Server`] speaks the protocol (0.0, as QEMU's `vfio-user-pci`
//! does) and hands each message to [`EndpointFunction`]. It serves one connection per
//! [`Server::run`]; the loop here runs it again after each disconnect (QEMU exits, the guest
//! reboots into a new QEMU), with the function reset and the old connection's memory and
//! eventfds dropped. A panic inside the crate on a malformed message ends that connection,
//! not the daemon.

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use vfio_bindings::bindings::vfio::{
    VFIO_IRQ_INFO_AUTOMASKED, VFIO_IRQ_INFO_EVENTFD, VFIO_IRQ_INFO_MASKABLE,
    VFIO_IRQ_INFO_NORESIZE, VFIO_IRQ_SET_ACTION_MASK, VFIO_IRQ_SET_ACTION_TRIGGER,
    VFIO_IRQ_SET_ACTION_TYPE_MASK, VFIO_IRQ_SET_ACTION_UNMASK, VFIO_IRQ_SET_DATA_EVENTFD,
    VFIO_IRQ_SET_DATA_NONE, VFIO_IRQ_SET_DATA_TYPE_MASK, VFIO_PCI_BAR0_REGION_INDEX,
    VFIO_PCI_CONFIG_REGION_INDEX, VFIO_PCI_INTX_IRQ_INDEX, VFIO_PCI_MSI_IRQ_INDEX,
    VFIO_PCI_NUM_IRQS, VFIO_PCI_NUM_REGIONS, VFIO_REGION_INFO_FLAG_READ,
    VFIO_REGION_INFO_FLAG_WRITE, vfio_region_info,
};
use vfio_user::{DmaMapFlags, DmaUnmapFlags, IrqInfo, Server, ServerBackend, ServerRegion};

use super::engine::{self, Bus, DmaEngine, EndpointStats};
use super::pci::{CONFIG_SIZE, ConfigSpace};
use super::regions::{DmaRegions, RegionPerms};
use super::{DmaTranslator, EndpointSpec};

fn invalid(msg: impl Into<String>) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidInput, msg.into())
}

/// The eventfds the client gave for the function's interrupts.
#[derive(Debug, Default)]
struct Irqs {
    intx: Option<File>,
    /// INTx was signalled and not yet unmasked (vfio INTx is automasked).
    intx_masked: bool,
    msi: Option<File>,
}

/// One endpoint function: what a connection talks to.
pub struct EndpointFunction {
    config: ConfigSpace,
    engine: DmaEngine,
    ram: DmaRegions,
    iommu: Arc<dyn DmaTranslator>,
    irqs: Irqs,
}

impl std::fmt::Debug for EndpointFunction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndpointFunction")
            .field("config", &self.config)
            .field("engine", &self.engine)
            .field("ram", &self.ram)
            .finish_non_exhaustive()
    }
}

fn bus<'a>(config: &ConfigSpace, ram: &'a DmaRegions, iommu: &'a dyn DmaTranslator) -> Bus<'a> {
    Bus {
        iommu,
        ram,
        bus_master: config.bus_master(),
        pasid_enabled: config.pasid_enabled(),
        pasid_privileged: config.pasid_privileged_enabled(),
        max_pasid: config.max_pasid(),
    }
}

fn signal(fd: &mut File) -> bool {
    match fd.write_all(&1u64.to_le_bytes()) {
        Ok(()) => true,
        Err(e) => {
            log::warn!("cannot signal an interrupt eventfd: {e}");
            false
        }
    }
}

impl EndpointFunction {
    /// A DMA engine with requester id `source_id` whose DMA `iommu` translates.
    pub fn dma_engine(
        source_id: u16,
        iommu: Arc<dyn DmaTranslator>,
        stats: Arc<EndpointStats>,
    ) -> Self {
        EndpointFunction {
            config: ConfigSpace::new(engine::FUNCTION, engine::BAR0_SIZE, engine::PASID_WIDTH),
            engine: DmaEngine::new(source_id, stats),
            ram: DmaRegions::new(),
            iommu,
            irqs: Irqs::default(),
        }
    }

    /// The regions a client sees: config space and BAR0; the others are absent.
    pub fn regions() -> Vec<ServerRegion> {
        (0..VFIO_PCI_NUM_REGIONS)
            .map(|index| {
                let size = match index {
                    VFIO_PCI_BAR0_REGION_INDEX => u64::from(engine::BAR0_SIZE),
                    VFIO_PCI_CONFIG_REGION_INDEX => CONFIG_SIZE as u64,
                    _ => 0,
                };
                ServerRegion {
                    region_info: vfio_region_info {
                        argsz: std::mem::size_of::<vfio_region_info>() as u32,
                        index,
                        size,
                        flags: if size > 0 {
                            VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE
                        } else {
                            0
                        },
                        ..Default::default()
                    },
                    sparse_areas: Vec::new(),
                    mmap_fd: None,
                }
            })
            .collect()
    }

    /// The interrupts a client sees: INTx (maskable, automasked) and one MSI vector.
    pub fn irqs() -> Vec<IrqInfo> {
        (0..VFIO_PCI_NUM_IRQS)
            .map(|index| match index {
                VFIO_PCI_INTX_IRQ_INDEX => IrqInfo {
                    index,
                    flags: VFIO_IRQ_INFO_EVENTFD
                        | VFIO_IRQ_INFO_MASKABLE
                        | VFIO_IRQ_INFO_AUTOMASKED,
                    count: 1,
                },
                VFIO_PCI_MSI_IRQ_INDEX => IrqInfo {
                    index,
                    flags: VFIO_IRQ_INFO_EVENTFD | VFIO_IRQ_INFO_NORESIZE,
                    count: 1,
                },
                _ => IrqInfo {
                    index,
                    flags: 0,
                    count: 0,
                },
            })
            .collect()
    }

    /// The configuration space.
    pub fn config(&self) -> &ConfigSpace {
        &self.config
    }

    /// The DMA regions.
    pub fn ram(&self) -> &DmaRegions {
        &self.ram
    }

    /// Back to power-on state: registers, configuration; the DMA regions and eventfds stay
    /// (a device reset does not unmap the client's memory).
    pub fn reset_function(&mut self) {
        self.engine.reset();
        self.config.reset();
        self.irqs.intx_masked = false;
    }

    /// The connection is gone: its memory and eventfds with it.
    pub fn disconnected(&mut self) {
        self.reset_function();
        self.ram.clear();
        self.irqs = Irqs::default();
    }

    /// Signals the completion interrupt: MSI when the client set it up, else INTx unless the
    /// Command register disables it or it is masked.
    fn interrupt(&mut self) {
        let sent = if let Some(fd) = self.irqs.msi.as_mut() {
            signal(fd)
        } else if let Some(fd) = self.irqs.intx.as_mut() {
            if self.config.intx_disabled() || self.irqs.intx_masked {
                false
            } else {
                self.irqs.intx_masked = true;
                signal(fd)
            }
        } else {
            false
        };
        if sent {
            self.engine
                .stats()
                .interrupts
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    fn check_bar(offset: u64, len: usize) -> std::io::Result<()> {
        match offset.checked_add(len as u64) {
            Some(end) if end <= u64::from(engine::BAR0_SIZE) && len <= 8 => Ok(()),
            _ => Err(invalid(format!(
                "BAR0 access of {len} bytes at {offset:#x} is outside the registers"
            ))),
        }
    }
}

impl ServerBackend for EndpointFunction {
    fn region_read(&mut self, region: u32, offset: u64, data: &mut [u8]) -> std::io::Result<()> {
        match region {
            VFIO_PCI_CONFIG_REGION_INDEX => self
                .config
                .read(offset, data)
                .map_err(|e| invalid(e.to_string())),
            VFIO_PCI_BAR0_REGION_INDEX => {
                Self::check_bar(offset, data.len())?;
                self.engine.mmio_read(offset, data);
                Ok(())
            }
            _ => Err(invalid(format!("region {region} is not implemented"))),
        }
    }

    fn region_write(&mut self, region: u32, offset: u64, data: &[u8]) -> std::io::Result<()> {
        match region {
            VFIO_PCI_CONFIG_REGION_INDEX => self
                .config
                .write(offset, data)
                .map_err(|e| invalid(e.to_string())),
            VFIO_PCI_BAR0_REGION_INDEX => {
                Self::check_bar(offset, data.len())?;
                let b = bus(&self.config, &self.ram, &*self.iommu);
                if self.engine.mmio_write(offset, data, &b) {
                    self.interrupt();
                }
                Ok(())
            }
            _ => Err(invalid(format!("region {region} is not implemented"))),
        }
    }

    fn dma_map(
        &mut self,
        flags: DmaMapFlags,
        offset: u64,
        address: u64,
        size: u64,
        fd: Option<File>,
    ) -> std::io::Result<()> {
        let perms = RegionPerms {
            read: flags.contains(DmaMapFlags::READ),
            write: flags.contains(DmaMapFlags::WRITE),
        };
        log::debug!(
            "DMA region [{address:#x}, +{size:#x}) {perms:?}{}",
            if fd.is_some() {
                ""
            } else {
                " without a descriptor"
            }
        );
        self.ram
            .map(address, size, offset, perms, fd)
            .map_err(|e| invalid(e.to_string()))
    }

    fn dma_unmap(&mut self, flags: DmaUnmapFlags, address: u64, size: u64) -> std::io::Result<()> {
        if flags.contains(DmaUnmapFlags::GET_DIRTY_PAGE_INFO) {
            return Err(invalid("dirty page tracking is not supported"));
        }
        if flags.contains(DmaUnmapFlags::UNMAP_ALL) {
            self.ram.clear();
            return Ok(());
        }
        self.ram
            .unmap(address, size)
            .map(|_| ())
            .map_err(|e| invalid(e.to_string()))
    }

    fn reset(&mut self) -> std::io::Result<()> {
        self.reset_function();
        Ok(())
    }

    fn set_irqs(
        &mut self,
        index: u32,
        flags: u32,
        start: u32,
        count: u32,
        mut fds: Vec<File>,
    ) -> std::io::Result<()> {
        if index != VFIO_PCI_INTX_IRQ_INDEX && index != VFIO_PCI_MSI_IRQ_INDEX {
            return if count == 0 {
                Ok(())
            } else {
                Err(invalid(format!("interrupt index {index} has no vectors")))
            };
        }
        if start != 0 || count > 1 {
            return Err(invalid(format!(
                "interrupt index {index} has one vector, not {start}+{count}"
            )));
        }
        let data = flags & VFIO_IRQ_SET_DATA_TYPE_MASK;
        match flags & VFIO_IRQ_SET_ACTION_TYPE_MASK {
            VFIO_IRQ_SET_ACTION_TRIGGER => {
                let slot = if index == VFIO_PCI_MSI_IRQ_INDEX {
                    &mut self.irqs.msi
                } else {
                    &mut self.irqs.intx
                };
                match (data, count) {
                    (VFIO_IRQ_SET_DATA_EVENTFD, 1) if fds.len() == 1 => *slot = fds.pop(),
                    (VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_DATA_NONE, 0) => *slot = None,
                    // Triggers the vector (a test of the path).
                    (VFIO_IRQ_SET_DATA_NONE, 1) => {
                        if let Some(fd) = slot.as_mut() {
                            signal(fd);
                        }
                    }
                    _ => return Err(invalid("bad SET_IRQS trigger")),
                }
                if index == VFIO_PCI_INTX_IRQ_INDEX {
                    self.irqs.intx_masked = false;
                }
                Ok(())
            }
            VFIO_IRQ_SET_ACTION_MASK | VFIO_IRQ_SET_ACTION_UNMASK
                if index == VFIO_PCI_INTX_IRQ_INDEX && data == VFIO_IRQ_SET_DATA_NONE =>
            {
                let unmask = flags & VFIO_IRQ_SET_ACTION_UNMASK != 0;
                self.irqs.intx_masked = !unmask;
                // A level interrupt still asserted fires again when unmasked.
                if unmask && self.engine.interrupt_asserted() && self.config.bus_master() {
                    self.interrupt();
                }
                Ok(())
            }
            _ => Err(invalid(format!("unsupported SET_IRQS flags {flags:#x}"))),
        }
    }
}

/// A served endpoint, as the control socket reports it.
#[derive(Debug)]
pub struct EndpointHandle {
    /// What was asked for.
    pub spec: EndpointSpec,
    /// Its counters.
    pub stats: Arc<EndpointStats>,
}

/// Binds `spec.socket` (replacing a stale socket file) and serves the endpoint on a thread
/// of its own, one connection after another, with its DMA translated by `iommu`.
pub fn spawn(
    spec: EndpointSpec,
    iommu: Arc<dyn DmaTranslator>,
) -> Result<Arc<EndpointHandle>, vfio_user::Error> {
    let path: PathBuf = spec.socket.clone();
    if path.exists() {
        std::fs::remove_file(&path).map_err(vfio_user::Error::SocketBind)?;
    }
    let server = Server::new(
        &path,
        true,
        EndpointFunction::irqs(),
        EndpointFunction::regions(),
    )?;
    let handle = Arc::new(EndpointHandle {
        spec,
        stats: Arc::new(EndpointStats::default()),
    });
    let h = handle.clone();
    let mut function = EndpointFunction::dma_engine(h.spec.bdf.rid(), iommu, h.stats.clone());
    std::thread::Builder::new()
        .name(format!("endpoint-{}", h.spec.bdf))
        .spawn(move || {
            loop {
                log::info!(
                    "endpoint {} waiting for a vfio-user client on {}",
                    h.spec.bdf,
                    h.spec.socket.display()
                );
                let served = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    server.run(&mut function)
                }));
                h.stats.connections.fetch_add(1, Ordering::Relaxed);
                match served {
                    Ok(Ok(())) => log::info!("endpoint {}: client disconnected", h.spec.bdf),
                    Ok(Err(e)) => log::warn!("endpoint {}: connection ended: {e}", h.spec.bdf),
                    Err(_) => log::error!(
                        "endpoint {}: the vfio-user server panicked on a message; connection \
                         dropped",
                        h.spec.bdf
                    ),
                }
                function.disconnected();
            }
        })
        .map_err(vfio_user::Error::SocketAccept)?;
    Ok(handle)
}

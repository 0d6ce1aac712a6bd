//! A PCI function served over vfio-user: its configuration space (region 7), BAR0 (region
//! 0, handed to the function's [`Device`]), the DMA regions the client maps, and its
//! interrupts (INTx, MSI, and the error and request notifiers) as the eventfds the client
//! sets. [`PciFunction`] speaks for every function the daemon serves; what differs between
//! them is the [`Device`] behind BAR0 (the DMA engine, a unit's register file).

use std::fs::File;
use std::io::Write;
use std::sync::{Arc, Mutex};

use vfio_bindings::bindings::vfio::{
    VFIO_IRQ_INFO_AUTOMASKED, VFIO_IRQ_INFO_EVENTFD, VFIO_IRQ_INFO_MASKABLE,
    VFIO_IRQ_INFO_NORESIZE, VFIO_IRQ_SET_ACTION_MASK, VFIO_IRQ_SET_ACTION_TRIGGER,
    VFIO_IRQ_SET_ACTION_TYPE_MASK, VFIO_IRQ_SET_ACTION_UNMASK, VFIO_IRQ_SET_DATA_EVENTFD,
    VFIO_IRQ_SET_DATA_NONE, VFIO_IRQ_SET_DATA_TYPE_MASK, VFIO_PCI_BAR0_REGION_INDEX,
    VFIO_PCI_CONFIG_REGION_INDEX, VFIO_PCI_ERR_IRQ_INDEX, VFIO_PCI_INTX_IRQ_INDEX,
    VFIO_PCI_MSI_IRQ_INDEX, VFIO_PCI_NUM_IRQS, VFIO_PCI_NUM_REGIONS, VFIO_PCI_REQ_IRQ_INDEX,
    VFIO_REGION_INFO_FLAG_READ, VFIO_REGION_INFO_FLAG_WRITE, vfio_region_info,
};
use vfio_user::{DmaMapFlags, DmaUnmapFlags, IrqInfo, ServerBackend, ServerRegion};

use super::pci::{CONFIG_SIZE, ConfigSpace, DeviceCapability, FunctionId};
use super::regions::{DmaRegions, RegionPerms};

fn invalid(msg: impl Into<String>) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidInput, msg.into())
}

/// What a function's configuration space declares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// Vendor, device, revision, class.
    pub id: FunctionId,
    /// Size of BAR0 (a power of two, at least 4 KiB).
    pub bar0_size: u32,
    /// The PASID capability's width, or none for a function without one.
    pub pasid_width: Option<u8>,
    /// A capability the device defines (the AMD IOMMU's capability block), if any.
    pub device_cap: Option<DeviceCapability>,
}

/// What BAR0 reaches, and the function's state around it.
#[derive(Clone, Copy)]
pub struct Context<'a> {
    /// The configuration space (Bus Master Enable, PASID Enable, ...).
    pub config: &'a ConfigSpace,
    /// Guest RAM as the client gave it.
    pub ram: &'a DmaRegions,
}

/// The device behind a function's BAR0.
pub trait Device: Send + 'static {
    /// The function's configuration-space layout.
    fn layout(&self) -> Layout;
    /// Reads `data.len()` bytes (1 to 8) of BAR0 at `offset` (inside BAR0).
    fn mmio_read(&mut self, offset: u64, data: &mut [u8], ctx: &Context<'_>);
    /// Writes BAR0; returns whether the function's interrupt must be signalled.
    fn mmio_write(&mut self, offset: u64, data: &[u8], ctx: &Context<'_>) -> bool;
    /// Whether the level interrupt (INTx) is asserted.
    fn interrupt_asserted(&self) -> bool;
    /// Back to the reset state (a function-level reset, or a disconnect).
    fn reset(&mut self);
    /// An interrupt was signalled (for the device's counters).
    fn interrupted(&self) {}
    /// The configuration space was written (after the write took effect).
    fn config_written(&mut self, _config: &ConfigSpace) {}
}

/// One of the function's interrupts (INTx, the MSI vector, the error and request notifiers)
/// as the eventfd the client set for it, if any, behind a handle any thread may signal: a
/// unit behind the register front raises its MSI from the threads that program it or
/// translate through it, not from the connection's.
#[derive(Debug, Clone, Default)]
pub struct IrqLine(Arc<Mutex<Option<File>>>);

impl IrqLine {
    fn slot(&self) -> std::sync::MutexGuard<'_, Option<File>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Signals the interrupt; whether the client had set it up (and the signal was written).
    /// For the MSI vector the client (QEMU) delivers the message software programmed in the
    /// MSI capability, and only while the function's Bus Master Enable is set.
    pub fn signal(&self) -> bool {
        self.slot().as_mut().is_some_and(signal)
    }

    /// Whether the client set the interrupt up.
    pub fn is_set(&self) -> bool {
        self.slot().is_some()
    }

    fn set(&self, fd: Option<File>) {
        *self.slot() = fd;
    }
}

/// The eventfds the client gave for the function's interrupts.
#[derive(Debug, Default)]
struct Irqs {
    intx: IrqLine,
    /// INTx was signalled and not yet unmasked (vfio INTx is automasked).
    intx_masked: bool,
    msi: IrqLine,
    /// The error (AER) and device-request notifiers: accepted, as a PCIe function's are, and
    /// never signalled (the function reports no errors and never asks to be unplugged).
    err: IrqLine,
    req: IrqLine,
}

impl Irqs {
    /// The line of interrupt `index` (one of the four the function has).
    fn line(&self, index: u32) -> &IrqLine {
        match index {
            VFIO_PCI_MSI_IRQ_INDEX => &self.msi,
            VFIO_PCI_ERR_IRQ_INDEX => &self.err,
            VFIO_PCI_REQ_IRQ_INDEX => &self.req,
            _ => &self.intx,
        }
    }
}

/// One PCI function: what a vfio-user connection talks to.
pub struct PciFunction<D: Device> {
    config: ConfigSpace,
    /// BAR0's size, from the device's layout.
    bar0_size: u32,
    ram: DmaRegions,
    irqs: Irqs,
    device: D,
}

impl<D: Device + std::fmt::Debug> std::fmt::Debug for PciFunction<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PciFunction")
            .field("config", &self.config)
            .field("device", &self.device)
            .field("ram", &self.ram)
            .finish_non_exhaustive()
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

impl<D: Device> PciFunction<D> {
    /// A function with `device` behind BAR0, and guest RAM kept in `ram`.
    pub fn new(device: D, ram: DmaRegions) -> Self {
        let l = device.layout();
        PciFunction {
            bar0_size: l.bar0_size,
            config: ConfigSpace::with_device_capability(
                l.id,
                l.bar0_size,
                l.pasid_width,
                l.device_cap.as_ref(),
            ),
            ram,
            irqs: Irqs::default(),
            device,
        }
    }

    /// The regions a client sees: config space and BAR0; the others are absent.
    pub fn regions(&self) -> Vec<ServerRegion> {
        let bar0 = u64::from(self.bar0_size);
        (0..VFIO_PCI_NUM_REGIONS)
            .map(|index| {
                let size = match index {
                    VFIO_PCI_BAR0_REGION_INDEX => bar0,
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

    /// The interrupts a client sees: INTx (maskable, automasked), one MSI vector, and the
    /// error and request notifiers.
    pub fn irqs() -> Vec<IrqInfo> {
        (0..VFIO_PCI_NUM_IRQS)
            .map(|index| match index {
                VFIO_PCI_ERR_IRQ_INDEX | VFIO_PCI_REQ_IRQ_INDEX => IrqInfo {
                    index,
                    flags: VFIO_IRQ_INFO_EVENTFD,
                    count: 1,
                },
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

    /// The device behind BAR0.
    pub fn device(&self) -> &D {
        &self.device
    }

    /// Back to power-on state: device, configuration; the DMA regions and eventfds stay
    /// (a device reset does not unmap the client's memory).
    pub fn reset_function(&mut self) {
        self.device.reset();
        self.config.reset();
        self.irqs.intx_masked = false;
    }

    /// The function's MSI vector, for a device that signals it from other threads.
    pub fn msi_line(&self) -> IrqLine {
        self.irqs.msi.clone()
    }

    /// The connection is gone: its memory and eventfds with it (the lines stay, empty, so
    /// handles given out keep reaching the next connection's eventfds).
    pub fn disconnected(&mut self) {
        self.reset_function();
        self.ram.clear();
        for l in [
            &self.irqs.intx,
            &self.irqs.msi,
            &self.irqs.err,
            &self.irqs.req,
        ] {
            l.set(None);
        }
    }

    /// Signals the function's interrupt: MSI when the client set it up, else INTx unless the
    /// Command register disables it or it is masked.
    fn interrupt(&mut self) {
        let sent = if self.irqs.msi.is_set() {
            self.irqs.msi.signal()
        } else if !self.irqs.intx.is_set() || self.config.intx_disabled() || self.irqs.intx_masked {
            false
        } else {
            self.irqs.intx_masked = true;
            self.irqs.intx.signal()
        };
        if sent {
            self.device.interrupted();
        }
    }

    fn check_bar(&self, offset: u64, len: usize) -> std::io::Result<()> {
        let size = u64::from(self.bar0_size);
        match offset.checked_add(len as u64) {
            Some(end) if end <= size && (1..=8).contains(&len) => Ok(()),
            _ => Err(invalid(format!(
                "BAR0 access of {len} bytes at {offset:#x} is outside the registers"
            ))),
        }
    }
}

impl<D: Device> ServerBackend for PciFunction<D> {
    fn region_read(&mut self, region: u32, offset: u64, data: &mut [u8]) -> std::io::Result<()> {
        match region {
            VFIO_PCI_CONFIG_REGION_INDEX => self
                .config
                .read(offset, data)
                .map_err(|e| invalid(e.to_string())),
            VFIO_PCI_BAR0_REGION_INDEX => {
                self.check_bar(offset, data.len())?;
                let ctx = Context {
                    config: &self.config,
                    ram: &self.ram,
                };
                self.device.mmio_read(offset, data, &ctx);
                Ok(())
            }
            _ => Err(invalid(format!("region {region} is not implemented"))),
        }
    }

    fn region_write(&mut self, region: u32, offset: u64, data: &[u8]) -> std::io::Result<()> {
        match region {
            VFIO_PCI_CONFIG_REGION_INDEX => {
                self.config
                    .write(offset, data)
                    .map_err(|e| invalid(e.to_string()))?;
                self.device.config_written(&self.config);
                Ok(())
            }
            VFIO_PCI_BAR0_REGION_INDEX => {
                self.check_bar(offset, data.len())?;
                let ctx = Context {
                    config: &self.config,
                    ram: &self.ram,
                };
                if self.device.mmio_write(offset, data, &ctx) {
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
        if ![
            VFIO_PCI_INTX_IRQ_INDEX,
            VFIO_PCI_MSI_IRQ_INDEX,
            VFIO_PCI_ERR_IRQ_INDEX,
            VFIO_PCI_REQ_IRQ_INDEX,
        ]
        .contains(&index)
        {
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
                let line = self.irqs.line(index);
                match (data, count) {
                    (VFIO_IRQ_SET_DATA_EVENTFD, 1) if fds.len() == 1 => line.set(fds.pop()),
                    (VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_DATA_NONE, 0) => line.set(None),
                    // Triggers the interrupt (a test of the path).
                    (VFIO_IRQ_SET_DATA_NONE, 1) => {
                        line.signal();
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
                if unmask && self.device.interrupt_asserted() && self.config.bus_master() {
                    self.interrupt();
                }
                Ok(())
            }
            _ => Err(invalid(format!("unsupported SET_IRQS flags {flags:#x}"))),
        }
    }
}

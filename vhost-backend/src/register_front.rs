//! The register front: a unit's register file served as BAR0 of a vfio-user PCI function, so
//! that a guest's own `intel_iommu` or `amd_iommu` driver programs the VT-d or AMD-Vi model
//! exactly as it programs silicon: through MMIO to the register file, and through the tables
//! and queues it builds in guest RAM (root, context, PASID and page tables and the
//! invalidation queue; the device table, command buffer and event log). The unit reads guest
//! RAM through the DMA regions QEMU gives this function; the endpoint devices the daemon
//! serves translate their DMA straight through the unit
//! ([`crate::endpoint::UnitTranslator`]). An ACPI table tells the guest where the register
//! file is: a DMAR ([`crate::dmar`]) or an IVRS ([`crate::ivrs`]), whose IVHD also names this
//! function and the offset of its IOMMU capability block ([`amd_iommu_capability`]).
//!
//! The register base is whatever the guest's firmware assigns to BAR0, and the DMAR must
//! name it before the guest boots. The firmware's assignment is predictable for a fixed set
//! of devices; the function checks the address the firmware actually programs, when it
//! enables memory decoding, against the table's, and reports a mismatch (the daemon then
//! stops with the address the table should have named).
//!
//! VT-d's fault and invalidation-completion events are MSI writes to the FEADDR/FEDATA and
//! IEADDR/IEDATA the driver programmed: the daemon sends each as a vfio-user DMA write of
//! this function ([`crate::vfio::Connection::dma_write`]), which QEMU performs as the
//! function's bus-master write, an MSI to the guest. AMD-Vi's event-log and completion-wait
//! interrupts are the function's own MSI (AMD IOMMU spec §3.2.2: the IOMMU's MSI capability),
//! which Linux enables with `pci_enable_msi`. Either way QEMU drops the message unless the
//! function's Bus Master Enable is set, and neither driver sets it (no driver binds the
//! function): the guest must.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use iommu_emulator::{PciBdf, Unit};

use crate::vfio::function::{Context, Device, IrqLine, Layout};
use crate::vfio::pci::{COMMAND_MEMORY, ConfigSpace, DEVICE_CAP, DeviceCapability, FunctionId};

/// PCI identity of the VT-d register front function: QEMU's vendor ID, class 08 06 00
/// (system peripheral, IOMMU). No guest driver binds it; `intel_iommu` finds the unit
/// through DMAR.
pub const FUNCTION: FunctionId = FunctionId {
    vendor: 0x1234,
    device: 0x1d7d,
    revision: 1,
    class: 0x08_06_00,
};

/// PCI identity of the AMD-Vi register front function (class 08 06 00, as AMD's IOMMU
/// functions report). `amd_iommu` finds it through the IVRS's IVHD device id.
pub const AMD_FUNCTION: FunctionId = FunctionId {
    vendor: 0x1234,
    device: 0x1d7e,
    revision: 1,
    class: 0x08_06_00,
};

/// Where the AMD IOMMU capability block sits in the AMD-Vi front's configuration space: the
/// IVHD's Capability Offset.
pub const AMD_CAP_OFFSET: u16 = DEVICE_CAP as u16;

/// Which unit a register front serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrontKind {
    /// The VT-d unit (DMAR).
    Vtd,
    /// The AMD-Vi unit (IVRS).
    Amdvi,
}

impl FrontKind {
    /// The unit's name, as `--register-front` and `--model` spell it.
    pub fn name(self) -> &'static str {
        match self {
            FrontKind::Vtd => "vtd",
            FrontKind::Amdvi => "amdvi",
        }
    }

    /// Bytes of BAR0: VT-d's register file is one 4 KiB page (the DMAR's DRHD Size 0);
    /// AMD-Vi's is 16 KiB (§3.4: the registers up to 0x2040 without performance counters;
    /// Linux maps 16 KiB when the IVHD reports no counters).
    pub fn bar0_size(self) -> u32 {
        match self {
            FrontKind::Vtd => 4096,
            FrontKind::Amdvi => 16384,
        }
    }
}

/// The AMD IOMMU capability block (AMD IOMMU spec #48882 §3.2.1, "IOMMU Capability
/// Block Registers") of the front's function, at [`AMD_CAP_OFFSET`], all read-only:
/// - Capability Header: ID 0Fh (Secure Device), CapType 011b, CapRev 00001b; IotlbSup 0
///   (the unit has no remote IOTLB support), HtTunnel 0, NpCache 0 (the unit caches no
///   not-present entries, so software need not flush after mapping), EFRSup 1 (software reads
///   the Extended Feature Register at MMIO 0x30), CapExt 0;
/// - Base Address Low/High: the MMIO base (`base`, 16 KiB aligned) with Enable set, as the
///   firmware leaves it;
/// - Range: RngValid 0 (the IVHD describes the devices);
/// - Misc Information 0: MsiNum 0 (the function's one MSI vector), GVAsize 010b (48 bits),
///   PAsize `phys_bits`, VAsize 64;
/// - Misc Information 1: MsiNumGA 0.
pub fn amd_iommu_capability(base: u64, phys_bits: u8) -> DeviceCapability {
    let header_hi: u16 = 0b011 | (0b00001 << 3) | (1 << 11);
    let base_lo = (base as u32 & 0xffff_c000) | 1;
    let base_hi = (base >> 32) as u32;
    let misc0 = (0b010 << 5) | (u32::from(phys_bits & 0x7f) << 8) | (64 << 15);
    let mut body = header_hi.to_le_bytes().to_vec();
    for dw in [base_lo, base_hi, 0, misc0, 0] {
        body.extend_from_slice(&dw.to_le_bytes());
    }
    DeviceCapability { id: 0x0f, body }
}

/// The client connection a register front's VT-d interrupts are written through (none between
/// clients).
pub type Link = Arc<std::sync::Mutex<Option<Arc<crate::vfio::Connection>>>>;

/// The VT-d unit's event callback under the register front: each fault event (§5.1.6) and
/// invalidation-completion event (§6.5.2.8) is the MSI write the driver programmed in
/// FEADDR/FEDATA or IEADDR/IEDATA, sent as a DMA write of the function through `link`, which
/// QEMU performs as the function's bus-master write; `stats` counts the events and the
/// writes delivered.
pub fn vtd_interrupts(stats: Arc<FrontStats>, link: Link) -> iommu_emulator::vtd::EventSink {
    use iommu_emulator::vtd::VtdEvent;
    Box::new(move |e| {
        stats.events.fetch_add(1, Ordering::Relaxed);
        let (VtdEvent::Fault { addr, data } | VtdEvent::InvalidationComplete { addr, data }) = e;
        let conn = link.lock().unwrap_or_else(|p| p.into_inner()).clone();
        match conn.map(|c| c.dma_write(addr, &data.to_le_bytes())) {
            Some(Ok(())) => {
                stats.interrupts.fetch_add(1, Ordering::Relaxed);
            }
            Some(Err(err)) => log::warn!("VT-d event {e:?} not delivered: {err}"),
            None => log::info!("VT-d event {e:?} with no client connected"),
        }
    })
}

/// The AMD-Vi unit's interrupt callback under the register front: each event-log or
/// completion-wait interrupt the unit raises (§2.5.1, §2.4.5 with the Control register's
/// EventIntEn, ComWaitIntEn) signals the function's MSI vector, once the function exists
/// and has set `msi`; `stats` counts the events and the interrupts delivered.
pub fn amdvi_interrupts(
    stats: Arc<FrontStats>,
    msi: Arc<OnceLock<IrqLine>>,
) -> iommu_emulator::amdvi::EventSink {
    Box::new(move |e| {
        stats.events.fetch_add(1, Ordering::Relaxed);
        if msi.get().is_some_and(IrqLine::signal) {
            stats.interrupts.fetch_add(1, Ordering::Relaxed);
        } else {
            log::info!("AMD-Vi interrupt {e:?} not delivered: the client set up no MSI");
        }
    })
}

/// One `--register-front vtd|amdvi,socket=PATH,addr=BB:DD.F,base=ADDR` option.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisterFrontSpec {
    /// The unit.
    pub kind: FrontKind,
    /// The vfio-user socket.
    pub socket: PathBuf,
    /// Where QEMU places the function.
    pub bdf: PciBdf,
    /// The register base the DMAR names: the address the guest's firmware gives BAR0.
    pub base: u64,
}

/// Why a `--register-front` option was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "bad --register-front {spec:?}: {why} (expected vtd|amdvi,socket=PATH,addr=BB:DD.F,base=ADDR)"
)]
pub struct RegisterFrontSpecError {
    /// The option's value.
    pub spec: String,
    /// What is wrong with it.
    pub why: String,
}

impl FromStr for RegisterFrontSpec {
    type Err = RegisterFrontSpecError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |why: &str| RegisterFrontSpecError {
            spec: s.to_string(),
            why: why.to_string(),
        };
        let mut parts = s.split(',');
        let kind = match parts.next() {
            Some("vtd") => FrontKind::Vtd,
            Some("amdvi") => FrontKind::Amdvi,
            Some(k) => return Err(err(&format!("unknown unit {k:?} (known: vtd, amdvi)"))),
            None => return Err(err("empty")),
        };
        let (mut socket, mut bdf, mut base) = (None, None, None);
        for opt in parts {
            match opt.split_once('=') {
                Some(("socket", p)) if !p.is_empty() && socket.is_none() => {
                    socket = Some(PathBuf::from(p))
                }
                Some(("addr", a)) if bdf.is_none() => {
                    bdf = Some(crate::endpoint::segment0_bdf(a).map_err(|why| err(&why))?);
                }
                Some(("base", v)) if base.is_none() => {
                    let t = v.trim_start_matches("0x");
                    let n = u64::from_str_radix(t, 16).map_err(|_| err("base= takes hex"))?;
                    base = Some(n);
                }
                _ => return Err(err(&format!("unknown or repeated option {opt:?}"))),
            }
        }
        let base = base.ok_or_else(|| err("no base"))?;
        // BAR0 is a 32-bit BAR, naturally aligned to its size.
        let size = u64::from(kind.bar0_size());
        if !base.is_multiple_of(size) || base > u64::from(u32::MAX) {
            return Err(err(&format!(
                "base= must be a {} KiB-aligned 32-bit address (the {} register file's BAR)",
                size / 1024,
                kind.name()
            )));
        }
        Ok(RegisterFrontSpec {
            kind,
            socket: socket.ok_or_else(|| err("no socket"))?,
            bdf: bdf.ok_or_else(|| err("no addr"))?,
            base,
        })
    }
}

/// The register front's counters.
#[derive(Debug, Default)]
pub struct FrontStats {
    /// Register reads.
    pub reads: AtomicU64,
    /// Register writes.
    pub writes: AtomicU64,
    /// The BAR0 address the firmware programmed (when memory decoding was enabled), or
    /// `u64::MAX` before it did.
    pub bar0: AtomicU64,
    /// Fault and invalidation-completion events the unit raised.
    pub events: AtomicU64,
    /// Their MSI writes sent to the client.
    pub interrupts: AtomicU64,
    /// The function's Command register as software last wrote it (QEMU performs the unit's
    /// interrupt writes only with Bus Master Enable set).
    pub command: AtomicU64,
    /// Function resets (QEMU resets the function when the machine starts and on a guest
    /// reboot, and the daemon when a client disconnects), each of which puts the unit back in
    /// its power-on state.
    pub resets: AtomicU64,
}

/// A unit's register file behind BAR0.
pub struct UnitRegisters {
    unit: Arc<dyn Unit>,
    id: FunctionId,
    bar0_size: u32,
    device_cap: Option<DeviceCapability>,
    expected_base: u64,
    stats: Arc<FrontStats>,
    on_mismatch: Box<dyn Fn(u64, u64) + Send>,
    checked: bool,
}

impl std::fmt::Debug for UnitRegisters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UnitRegisters")
            .field("unit", &self.unit.name())
            .field("expected_base", &format_args!("{:#x}", self.expected_base))
            .finish_non_exhaustive()
    }
}

impl UnitRegisters {
    /// `unit`'s registers in a BAR0 of `bar0_size` bytes, expected at `expected_base`;
    /// `on_mismatch(expected, programmed)` runs when the firmware programs another address.
    /// The function is the VT-d front's ([`FUNCTION`]) until [`UnitRegisters::with_identity`]
    /// says otherwise.
    pub fn new(
        unit: Arc<dyn Unit>,
        bar0_size: u32,
        expected_base: u64,
        stats: Arc<FrontStats>,
        on_mismatch: impl Fn(u64, u64) + Send + 'static,
    ) -> Self {
        stats.bar0.store(u64::MAX, Ordering::Relaxed);
        UnitRegisters {
            unit,
            id: FUNCTION,
            bar0_size,
            device_cap: None,
            expected_base,
            stats,
            on_mismatch: Box::new(on_mismatch),
            checked: false,
        }
    }
}

impl UnitRegisters {
    /// The function's PCI identity and the capability its configuration space carries
    /// besides MSI and PCI Express (the AMD IOMMU capability block).
    pub fn with_identity(mut self, id: FunctionId, cap: Option<DeviceCapability>) -> Self {
        self.id = id;
        self.device_cap = cap;
        self
    }
}

impl Device for UnitRegisters {
    fn layout(&self) -> Layout {
        Layout {
            id: self.id,
            bar0_size: self.bar0_size,
            pasid_width: None,
            device_cap: self.device_cap.clone(),
        }
    }

    /// 4- and 8-byte reads go to the unit as they are; narrower ones read the aligned
    /// doubleword around them.
    fn mmio_read(&mut self, offset: u64, data: &mut [u8], _ctx: &Context<'_>) {
        self.stats.reads.fetch_add(1, Ordering::Relaxed);
        match data.len() {
            4 | 8 if offset.is_multiple_of(data.len() as u64) => {
                let v = self.unit.mmio_read(offset, data.len() as u32);
                data.copy_from_slice(&v.to_le_bytes()[..data.len()]);
            }
            n => {
                for (i, b) in data.iter_mut().enumerate().take(n) {
                    let a = offset + i as u64;
                    let v = self.unit.mmio_read(a & !3, 4) as u32;
                    *b = v.to_le_bytes()[(a & 3) as usize];
                }
            }
        }
    }

    /// 4- and 8-byte aligned writes reach the unit; others are ignored, as the unit ignores
    /// accesses it does not implement.
    fn mmio_write(&mut self, offset: u64, data: &[u8], _ctx: &Context<'_>) -> bool {
        self.stats.writes.fetch_add(1, Ordering::Relaxed);
        match *data {
            [a, b, c, d] if offset.is_multiple_of(4) => {
                let v = u32::from_le_bytes([a, b, c, d]);
                self.unit.mmio_write(offset, 4, u64::from(v));
            }
            [a, b, c, d, e, f, g, h] if offset.is_multiple_of(8) => {
                let v = u64::from_le_bytes([a, b, c, d, e, f, g, h]);
                self.unit.mmio_write(offset, 8, v);
            }
            _ => log::debug!(
                "register front: {}-byte write at {offset:#x} ignored",
                data.len()
            ),
        }
        false
    }

    fn interrupt_asserted(&self) -> bool {
        false
    }

    /// A function reset is the unit's platform reset: its registers, caches and pending
    /// records go back to power-on ([`Unit::reset`]), so nothing of the tables a previous boot
    /// programmed is used again.
    fn reset(&mut self) {
        self.checked = false;
        self.unit.reset();
        self.stats.resets.fetch_add(1, Ordering::Relaxed);
        log::info!(
            "register front: function reset, {} unit back to power-on",
            self.unit.name()
        );
    }

    fn config_written(&mut self, config: &ConfigSpace) {
        self.stats
            .command
            .store(u64::from(config.command()), Ordering::Relaxed);
        if self.checked || config.command() & COMMAND_MEMORY == 0 {
            return;
        }
        self.checked = true;
        let bar = u64::from(config.bar0());
        self.stats.bar0.store(bar, Ordering::Relaxed);
        if bar != self.expected_base {
            (self.on_mismatch)(self.expected_base, bar);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vfio::function::PciFunction;
    use crate::vfio::regions::DmaRegions;
    use std::sync::Mutex;
    use vfio_user::ServerBackend;

    #[test]
    fn options_parse_and_bad_ones_say_why() {
        let s: RegisterFrontSpec = "vtd,socket=/tmp/r.sock,addr=05.0,base=0xfebfe000"
            .parse()
            .unwrap();
        assert_eq!(
            (s.kind, s.bdf.rid(), s.base),
            (FrontKind::Vtd, 0x28, 0xfebf_e000)
        );
        let a: RegisterFrontSpec = "amdvi,socket=/tmp/r.sock,addr=05.0,base=0xfebf8000"
            .parse()
            .unwrap();
        assert_eq!((a.kind, a.base), (FrontKind::Amdvi, 0xfebf_8000));
        for bad in [
            "intel,socket=s,addr=05.0,base=0x1000",
            "amdvi,socket=s,addr=05.0,base=0xfebfe000",
            "vtd,addr=05.0,base=0x1000",
            "vtd,socket=s,base=0x1000",
            "vtd,socket=s,addr=05.0",
            "vtd,socket=s,addr=05.0,base=0x1001",
            "vtd,socket=s,addr=05.0,base=0x100000000",
            "vtd,socket=s,addr=05.0,base=zz",
            "vtd,socket=s,addr=05.0,base=0x1000,base=0x2000",
        ] {
            let e = bad.parse::<RegisterFrontSpec>().unwrap_err();
            assert!(e.to_string().contains(bad), "{e}");
        }
    }

    #[test]
    fn the_amd_capability_block_has_the_spec_layout() {
        let c = amd_iommu_capability(0x1_febf_8000, 48);
        assert_eq!(c.id, 0x0f);
        let dw = |i: usize| {
            let mut b = [0u8; 4];
            // The body starts at byte 2 of the block.
            let full: Vec<u8> = [vec![c.id, 0], c.body.clone()].concat();
            b.copy_from_slice(&full[i * 4..i * 4 + 4]);
            u32::from_le_bytes(b)
        };
        // Header: CapType 3 (bits 18:16), CapRev 1 (23:19), EFRSup (27); no IotlbSup (24),
        // HtTunnel (25), NpCache (26).
        assert_eq!(dw(0) & 0xffff_00ff, 0x080b_000f);
        assert_eq!(dw(1), 0xfebf_8001, "base low, Enable");
        assert_eq!(dw(2), 1, "base high");
        assert_eq!(dw(3), 0, "no range");
        // GVAsize 010b (7:5), PAsize 48 (14:8), VAsize 64 (21:15).
        assert_eq!(dw(4), (2 << 5) | (48 << 8) | (64 << 15));
        assert_eq!(c.body.len(), 22);
    }

    fn vtd_unit() -> Arc<dyn Unit> {
        let mem = pagewalk::FlatMem::new(0, 0x1_0000);
        Arc::new(
            iommu_emulator::Vtd::new(mem, iommu_emulator::VtdConfig::default(), Box::new(|_| {}))
                .unwrap(),
        )
    }

    #[test]
    fn the_bar_reaches_the_units_registers_and_the_firmwares_address_is_checked() {
        let unit = vtd_unit();
        let stats = Arc::new(FrontStats::default());
        let seen = Arc::new(Mutex::new(None));
        let s2 = seen.clone();
        let regs = UnitRegisters::new(
            unit.clone(),
            4096,
            0xfebf_e000,
            stats.clone(),
            move |e, p| *s2.lock().unwrap() = Some((e, p)),
        );
        let mut f = PciFunction::new(regs, DmaRegions::new());
        // VER and CAP read through BAR0 as the unit has them.
        let mut b = [0u8; 4];
        f.region_read(0, 0, &mut b).unwrap();
        assert_eq!(u64::from(u32::from_le_bytes(b)), unit.mmio_read(0, 4));
        let mut q = [0u8; 8];
        f.region_read(0, 8, &mut q).unwrap();
        assert_eq!(u64::from_le_bytes(q), unit.mmio_read(8, 8));
        let mut one = [0u8; 1];
        f.region_read(0, 9, &mut one).unwrap();
        assert_eq!(one[0], q[1]);
        // A write reaches the unit: FEDATA (0x3c) is plain storage.
        f.region_write(0, 0x3c, &0x4321u32.to_le_bytes()).unwrap();
        assert_eq!(unit.mmio_read(0x3c, 4), 0x4321);
        assert!(f.region_read(0, 4096, &mut b).is_err());
        // Sizing, then the firmware's address, then memory decoding on: checked once.
        f.region_write(7, 0x10, &u32::MAX.to_le_bytes()).unwrap();
        f.region_write(7, 0x10, &0xfebf_d000u32.to_le_bytes())
            .unwrap();
        assert_eq!(*seen.lock().unwrap(), None, "not before decoding is on");
        f.region_write(7, 4, &[0x02, 0]).unwrap();
        assert_eq!(*seen.lock().unwrap(), Some((0xfebf_e000, 0xfebf_d000)));
        assert_eq!(stats.bar0.load(Ordering::Relaxed), 0xfebf_d000);
        // A function reset is the unit's: translation on, then a reset turns it off.
        f.region_write(0, 0x18, &(1u32 << 31).to_le_bytes())
            .unwrap();
        assert_ne!(unit.mmio_read(0x1c, 4) & (1 << 31), 0, "GSTS.TES");
        f.region_write(0, 0x3c, &0x4321u32.to_le_bytes()).unwrap();
        f.reset_function();
        assert_eq!(unit.mmio_read(0x1c, 4), 0, "GSTS at its reset value");
        assert_eq!(unit.mmio_read(0x3c, 4), 0, "FEDATA at its reset value");
        assert_eq!(stats.resets.load(Ordering::Relaxed), 1);
        // The right address is no mismatch.
        let seen = Arc::new(Mutex::new(None));
        let s2 = seen.clone();
        let regs = UnitRegisters::new(unit, 4096, 0xfebf_e000, stats, move |e, p| {
            *s2.lock().unwrap() = Some((e, p))
        });
        let mut f = PciFunction::new(regs, DmaRegions::new());
        f.region_write(7, 0x10, &0xfebf_e000u32.to_le_bytes())
            .unwrap();
        f.region_write(7, 4, &[0x06, 0]).unwrap();
        assert_eq!(*seen.lock().unwrap(), None);
    }

    #[test]
    fn the_amd_front_carries_the_capability_and_its_interrupts_reach_the_msi_vector() {
        use iommu_emulator::amdvi::command::encode;
        use iommu_emulator::amdvi::layout::Control;
        use iommu_emulator::amdvi::reg;
        use pagewalk::PhysMem;
        use std::io::Read;
        use std::os::unix::net::UnixStream;
        use vfio_bindings::bindings::vfio::{
            VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_IRQ_SET_DATA_EVENTFD, VFIO_PCI_MSI_IRQ_INDEX,
        };

        let mem: &'static pagewalk::FlatMem =
            Box::leak(Box::new(pagewalk::FlatMem::new(0, 0x10_0000)));
        let stats = Arc::new(FrontStats::default());
        let msi = Arc::new(OnceLock::new());
        let unit: Arc<dyn Unit> = Arc::new(
            iommu_emulator::AmdVi::new(
                mem,
                iommu_emulator::AmdViConfig::default(),
                amdvi_interrupts(stats.clone(), msi.clone()),
            )
            .unwrap(),
        );
        let regs = UnitRegisters::new(
            unit.clone(),
            FrontKind::Amdvi.bar0_size(),
            0xfebf_8000,
            stats.clone(),
            |_, _| {},
        )
        .with_identity(AMD_FUNCTION, Some(amd_iommu_capability(0xfebf_8000, 48)));
        let mut f = PciFunction::new(regs, DmaRegions::new());
        msi.set(f.msi_line()).unwrap();
        let rd32 = |f: &mut PciFunction<UnitRegisters>, region: u32, off: u64| {
            let mut b = [0u8; 4];
            f.region_read(region, off, &mut b).unwrap();
            u32::from_le_bytes(b)
        };
        // Identity, a 16 KiB BAR, and the capability block where the IVHD says.
        assert_eq!(rd32(&mut f, 7, 0), 0x1d7e_1234);
        f.region_write(7, 0x10, &u32::MAX.to_le_bytes()).unwrap();
        assert_eq!(rd32(&mut f, 7, 0x10), 0xffff_c000);
        let cap = u64::from(AMD_CAP_OFFSET);
        assert_eq!(rd32(&mut f, 7, cap) & 0xff, 0x0f);
        assert_eq!(rd32(&mut f, 7, cap + 4), 0xfebf_8001);
        // The register file answers at its offsets: EFR as the unit has it.
        let mut q = [0u8; 8];
        f.region_read(0, reg::EFR, &mut q).unwrap();
        assert_eq!(u64::from_le_bytes(q), unit.mmio_read(reg::EFR, 8));
        assert!(f.region_read(0, 0x4000, &mut q).is_err());

        // Before the client sets the vector up, an interrupt is counted and not delivered.
        let wait = |f: &mut PciFunction<UnitRegisters>, slot: u64| {
            let [c0, c1] = encode::completion_wait(0x9000, 7, true, false);
            mem.write_u64(0x2000 + slot * 16, c0).unwrap();
            mem.write_u64(0x2008 + slot * 16, c1).unwrap();
            f.region_write(0, reg::CMD_BUF_TAIL, &((slot + 1) * 16).to_le_bytes())
                .unwrap();
        };
        // A 256-entry command buffer at 0x2000, then the unit on with completion-wait
        // interrupts.
        f.region_write(0, reg::CMD_BUF_BASE, &(0x2000u64 | (8 << 56)).to_le_bytes())
            .unwrap();
        let on = Control::new()
            .with_iommu_en(true)
            .with_cmd_buf_en(true)
            .with_com_wait_int_en(true);
        f.region_write(0, reg::CONTROL, &on.into_bits().to_le_bytes())
            .unwrap();
        wait(&mut f, 0);
        assert_eq!(stats.events.load(Ordering::Relaxed), 1);
        assert_eq!(stats.interrupts.load(Ordering::Relaxed), 0);
        // With the vector set, the next one is the eventfd's.
        // The vector's "eventfd": the test reads the function's 8-byte signals from the other
        // end of a socket pair.
        let (theirs, mut ours) = UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        let signals = |ours: &mut UnixStream| {
            let mut b = [0u8; 64];
            ours.read(&mut b).map_or(0, |n| n / 8)
        };
        f.set_irqs(
            VFIO_PCI_MSI_IRQ_INDEX,
            VFIO_IRQ_SET_ACTION_TRIGGER | VFIO_IRQ_SET_DATA_EVENTFD,
            0,
            1,
            vec![std::fs::File::from(std::os::fd::OwnedFd::from(theirs))],
        )
        .unwrap();
        // Clear ComWaitInt (Status bit 2, write-one-to-clear) so the next wait raises it.
        f.region_write(0, reg::STATUS, &4u64.to_le_bytes()).unwrap();
        wait(&mut f, 1);
        assert_eq!(mem.read_u64(0x9000).unwrap(), 7, "the wait stored its data");
        assert_eq!(signals(&mut ours), 1, "one MSI");
        assert_eq!(stats.interrupts.load(Ordering::Relaxed), 1);
        // A disconnect takes the vector with it.
        f.disconnected();
        f.region_write(0, reg::CMD_BUF_BASE, &(0x2000u64 | (8 << 56)).to_le_bytes())
            .unwrap();
        f.region_write(0, reg::CONTROL, &on.into_bits().to_le_bytes())
            .unwrap();
        wait(&mut f, 0);
        assert_eq!(signals(&mut ours), 0, "no MSI after the disconnect");
    }

    #[test]
    fn vtd_events_with_no_client_are_counted_and_not_delivered() {
        use iommu_emulator::vtd::VtdEvent;
        let stats = Arc::new(FrontStats::default());
        let sink = vtd_interrupts(stats.clone(), Link::default());
        sink(VtdEvent::Fault {
            addr: 0xfee0_0000,
            data: 0x41,
        });
        assert_eq!(stats.events.load(Ordering::Relaxed), 1);
        assert_eq!(stats.interrupts.load(Ordering::Relaxed), 0);
    }
}

//! The register front: a unit's register file served as BAR0 of a vfio-user PCI function, so
//! that a guest's own `intel_iommu` driver programs the VT-d model exactly as it programs
//! silicon: through MMIO to the register file, and through the root, context and page tables
//! and the invalidation queue it builds in guest RAM. The unit reads guest RAM through the
//! DMA regions QEMU gives this function; the endpoint devices the daemon serves translate
//! their DMA straight through the unit ([`crate::endpoint::UnitTranslator`]). The ACPI DMAR
//! table ([`crate::dmar`]) tells the guest where the register file is.
//!
//! The register base is whatever the guest's firmware assigns to BAR0, and the DMAR must
//! name it before the guest boots. The firmware's assignment is predictable for a fixed set
//! of devices; the function checks the address the firmware actually programs, when it
//! enables memory decoding, against the table's, and reports a mismatch (the daemon then
//! stops with the address the table should have named).
//!
//! The unit's fault and invalidation-completion events are MSI writes to the FEADDR/FEDATA
//! and IEADDR/IEDATA the driver programmed: the daemon sends each as a vfio-user DMA write of
//! this function ([`crate::vfio::Connection::dma_write`]), which QEMU performs as the
//! function's bus-master write, an MSI to the guest. QEMU drops it unless the function's Bus
//! Master Enable is set, and no guest driver binds the function to set it: the guest must.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use iommu_emulator::{PciBdf, Unit};

use crate::vfio::function::{Context, Device, Layout};
use crate::vfio::pci::{COMMAND_MEMORY, ConfigSpace, FunctionId};

/// PCI identity of the register front function: QEMU's vendor ID, class 08 06 00 (system
/// peripheral, IOMMU). No guest driver binds it; `intel_iommu` finds the unit through DMAR.
pub const FUNCTION: FunctionId = FunctionId {
    vendor: 0x1234,
    device: 0x1d7d,
    revision: 1,
    class: 0x08_06_00,
};

/// Which unit a register front serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrontKind {
    /// The VT-d unit (DMAR).
    Vtd,
}

/// One `--register-front vtd,socket=PATH,addr=BB:DD.F,base=ADDR` option.
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
#[error("bad --register-front {spec:?}: {why} (expected vtd,socket=PATH,addr=BB:DD.F,base=ADDR)")]
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
            Some(k) => return Err(err(&format!("unknown unit {k:?} (known: vtd)"))),
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
                    if n & 0xfff != 0 || n > u64::from(u32::MAX) {
                        return Err(err("base= must be a 4 KiB-aligned 32-bit address"));
                    }
                    base = Some(n);
                }
                _ => return Err(err(&format!("unknown or repeated option {opt:?}"))),
            }
        }
        Ok(RegisterFrontSpec {
            kind,
            socket: socket.ok_or_else(|| err("no socket"))?,
            bdf: bdf.ok_or_else(|| err("no addr"))?,
            base: base.ok_or_else(|| err("no base"))?,
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
}

/// A unit's register file behind BAR0.
pub struct UnitRegisters {
    unit: Arc<dyn Unit>,
    bar0_size: u32,
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
            bar0_size,
            expected_base,
            stats,
            on_mismatch: Box::new(on_mismatch),
            checked: false,
        }
    }
}

impl Device for UnitRegisters {
    fn layout(&self) -> Layout {
        Layout {
            id: FUNCTION,
            bar0_size: self.bar0_size,
            pasid_width: None,
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

    fn reset(&mut self) {
        self.checked = false;
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
        for bad in [
            "amdvi,socket=s,addr=05.0,base=0x1000",
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
}

//! The configuration space of a function the daemon serves: a type 0 header with one 32-bit
//! memory BAR, an MSI capability, a PCI Express capability, optionally a capability the
//! device defines (the AMD IOMMU's capability block) and, in extended space, an optional PASID
//! capability. Offsets and bit layouts follow the PCI Local Bus spec 3.0 §6.1-6.2 (header),
//! §6.8.1 (MSI) and PCI Express Base spec 5.0 §7.5.3 (PCI Express capability) and §7.8.8
//! (PASID extended capability).
//!
//! Every byte has a write mask: a write changes only the writable bits, and the Status
//! register's error bits are write-one-to-clear. Reads and writes of any width at any offset
//! inside the 4 KiB space work; outside it they are refused.

/// Size of the configuration space (PCI Express: 4 KiB, extended capabilities from 0x100).
pub const CONFIG_SIZE: usize = 4096;

/// Command register (16 bits).
pub const COMMAND: usize = 0x04;
/// Command: Memory Space Enable.
pub const COMMAND_MEMORY: u16 = 1 << 1;
/// Command: Bus Master Enable: the function may issue DMA (and MSI) only while it is set.
pub const COMMAND_BUS_MASTER: u16 = 1 << 2;
/// Command: Interrupt Disable (INTx).
pub const COMMAND_INTX_DISABLE: u16 = 1 << 10;
/// Status register (16 bits).
pub const STATUS: usize = 0x06;
/// Status: Capabilities List.
const STATUS_CAP_LIST: u16 = 1 << 4;
/// Status bits that are write-one-to-clear (parity, aborts, SERR).
const STATUS_W1C: u16 = 0xf900;
/// BAR0.
pub const BAR0: usize = 0x10;
/// Capabilities Pointer.
const CAP_PTR: usize = 0x34;
/// Interrupt Line and Pin.
const INTERRUPT_LINE: usize = 0x3c;
const INTERRUPT_PIN: usize = 0x3d;

/// Where the MSI capability sits (PCI 3.0 §6.8.1: ID 05h, Message Control, 64-bit address,
/// data).
pub const MSI_CAP: usize = 0x40;
/// Where the PCI Express capability sits (PCIe 5.0 §7.5.3, version 2: 0x3c bytes).
pub const PCIE_CAP: usize = 0x50;
const PCIE_CAP_LEN: usize = 0x3c;
/// Where a device-defined capability sits when the function has one (after the PCI Express
/// capability), and the most bytes it may take.
pub const DEVICE_CAP: usize = 0x90;
/// The most bytes a device-defined capability takes (its header included).
pub const DEVICE_CAP_MAX: usize = 0x40;
/// Where the PASID extended capability sits (PCIe 5.0 §7.8.8).
pub const PASID_CAP: usize = 0x100;
/// PASID Control: PASID Enable.
const PASID_ENABLE: u16 = 1 << 0;
/// PASID Control: Privileged Mode Enable.
const PASID_PRIV_ENABLE: u16 = 1 << 2;

/// Identity of a function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FunctionId {
    /// Vendor ID.
    pub vendor: u16,
    /// Device ID.
    pub device: u16,
    /// Revision ID.
    pub revision: u8,
    /// Class code (base class, subclass, programming interface).
    pub class: u32,
}

/// A capability the device defines, placed at [`DEVICE_CAP`] as the last of the list: its
/// Capability ID and the read-only bytes after the two-byte header (the next pointer is the
/// list's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceCapability {
    /// Capability ID (PCI 3.0 Appendix H; 0Fh is the Secure Device capability an AMD IOMMU
    /// uses).
    pub id: u8,
    /// Bytes 2.. of the capability (at most [`DEVICE_CAP_MAX`] - 2).
    pub body: Vec<u8>,
}

/// A function's configuration space.
#[derive(Clone)]
pub struct ConfigSpace {
    bytes: Box<[u8; CONFIG_SIZE]>,
    writable: Box<[u8; CONFIG_SIZE]>,
    power_on: Box<[u8; CONFIG_SIZE]>,
    /// The PASID capability's width, 0 without one.
    pasid_width: u8,
}

impl std::fmt::Debug for ConfigSpace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigSpace")
            .field("command", &self.command())
            .field("bar0", &format_args!("{:#x}", self.u32_at(BAR0)))
            .field("msi_enabled", &self.msi_enabled())
            .field("pasid_enabled", &self.pasid_enabled())
            .finish()
    }
}

/// Why a configuration access was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("configuration access of {len} bytes at {offset:#x} is outside the 4 KiB space")]
pub struct ConfigAccessError {
    /// The offset.
    pub offset: u64,
    /// The length.
    pub len: usize,
}

impl ConfigSpace {
    /// The power-on configuration of a function `id` with a 32-bit non-prefetchable memory
    /// BAR0 of `bar0_size` bytes (a power of two, at least 4 KiB), INTA, MSI with one vector,
    /// and, given `pasid_width` (1..=20 bits), a PASID capability; without one, the
    /// [`ConfigSpace::with_device_capability`] of the same.
    pub fn new(id: FunctionId, bar0_size: u32, pasid_width: Option<u8>) -> Self {
        Self::with_device_capability(id, bar0_size, pasid_width, None)
    }

    /// [`ConfigSpace::new`], with `device_cap` (when given) at [`DEVICE_CAP`], after the PCI
    /// Express capability. A body longer than [`DEVICE_CAP_MAX`] - 2 bytes is cut there.
    pub fn with_device_capability(
        id: FunctionId,
        bar0_size: u32,
        pasid_width: Option<u8>,
        device_cap: Option<&DeviceCapability>,
    ) -> Self {
        debug_assert!(bar0_size.is_power_of_two() && bar0_size >= 4096);
        let mut c = ConfigSpace {
            bytes: Box::new([0; CONFIG_SIZE]),
            writable: Box::new([0; CONFIG_SIZE]),
            power_on: Box::new([0; CONFIG_SIZE]),
            pasid_width: pasid_width.map_or(0, |w| w.clamp(1, 20)),
        };
        c.set16(0x00, id.vendor);
        c.set16(0x02, id.device);
        c.bytes[0x08] = id.revision;
        c.bytes[0x09..0x0c].copy_from_slice(&id.class.to_le_bytes()[..3]);
        c.set16(STATUS, STATUS_CAP_LIST);
        c.mask16(
            COMMAND,
            0x0001 | COMMAND_MEMORY | COMMAND_BUS_MASTER | 0x0040 | 0x0100 | COMMAND_INTX_DISABLE,
        );
        // BAR0: bits 3:0 read 0 (memory, 32-bit, not prefetchable); the size's low bits are
        // hard-wired to 0, so software sizes it by writing all ones.
        c.mask32(BAR0, !(bar0_size - 1));
        c.bytes[CAP_PTR] = MSI_CAP as u8;
        c.writable[INTERRUPT_LINE] = 0xff;
        c.bytes[INTERRUPT_PIN] = 1;

        // MSI: next PCI Express; Message Control: 64-bit capable, one vector requestable;
        // MSI Enable and Multiple Message Enable writable. Address (dword aligned), upper
        // address and data writable.
        c.bytes[MSI_CAP] = 0x05;
        c.bytes[MSI_CAP + 1] = PCIE_CAP as u8;
        c.set16(MSI_CAP + 2, 1 << 7);
        c.mask16(MSI_CAP + 2, 0x0071);
        c.mask32(MSI_CAP + 4, !3);
        c.mask32(MSI_CAP + 8, !0);
        c.mask16(MSI_CAP + 12, !0);

        // PCI Express capability, version 2, a PCI Express endpoint (type 0); the last in the
        // list. Device Control is writable (error reporting, max payload and read request);
        // the rest is read-only (no link to train).
        c.bytes[PCIE_CAP] = 0x10;
        c.set16(PCIE_CAP + 2, 0x0002);
        c.mask16(PCIE_CAP + 8, 0x7fff);
        const { assert!(PCIE_CAP + PCIE_CAP_LEN <= DEVICE_CAP) };
        const { assert!(DEVICE_CAP + DEVICE_CAP_MAX <= 0x100) };
        if let Some(cap) = device_cap {
            c.bytes[PCIE_CAP + 1] = DEVICE_CAP as u8;
            c.bytes[DEVICE_CAP] = cap.id;
            let n = cap.body.len().min(DEVICE_CAP_MAX - 2);
            c.bytes[DEVICE_CAP + 2..DEVICE_CAP + 2 + n].copy_from_slice(&cap.body[..n]);
        }

        // PASID: the only extended capability (next 0). Capability: privileged mode
        // supported, max width; Control: PASID and Privileged Mode Enable writable. Without
        // it, extended space starts with a zero header: no extended capabilities.
        if c.pasid_width > 0 {
            c.set32(PASID_CAP, 0x001b | (1 << 16));
            c.set16(PASID_CAP + 4, (1 << 2) | (u16::from(c.pasid_width) << 8));
            c.mask16(PASID_CAP + 6, PASID_ENABLE | PASID_PRIV_ENABLE);
        }
        *c.power_on = *c.bytes;
        c
    }

    fn set16(&mut self, off: usize, v: u16) {
        self.bytes[off..off + 2].copy_from_slice(&v.to_le_bytes());
    }

    fn set32(&mut self, off: usize, v: u32) {
        self.bytes[off..off + 4].copy_from_slice(&v.to_le_bytes());
    }

    fn mask16(&mut self, off: usize, m: u16) {
        self.writable[off..off + 2].copy_from_slice(&m.to_le_bytes());
    }

    fn mask32(&mut self, off: usize, m: u32) {
        self.writable[off..off + 4].copy_from_slice(&m.to_le_bytes());
    }

    fn u16_at(&self, off: usize) -> u16 {
        u16::from_le_bytes([self.bytes[off], self.bytes[off + 1]])
    }

    fn u32_at(&self, off: usize) -> u32 {
        u32::from_le_bytes(self.bytes[off..off + 4].try_into().expect("4 bytes"))
    }

    fn range(offset: u64, len: usize) -> Result<std::ops::Range<usize>, ConfigAccessError> {
        let err = ConfigAccessError { offset, len };
        let start = usize::try_from(offset).map_err(|_| err)?;
        let end = start.checked_add(len).ok_or(err)?;
        if end > CONFIG_SIZE {
            return Err(err);
        }
        Ok(start..end)
    }

    /// Reads `data.len()` bytes at `offset`.
    pub fn read(&self, offset: u64, data: &mut [u8]) -> Result<(), ConfigAccessError> {
        let r = Self::range(offset, data.len())?;
        data.copy_from_slice(&self.bytes[r]);
        Ok(())
    }

    /// Writes `data` at `offset`: writable bits take the new value, read-only bits keep
    /// theirs, and a 1 written to a Status error bit clears it.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), ConfigAccessError> {
        let r = Self::range(offset, data.len())?;
        for (i, &v) in r.zip(data) {
            let m = self.writable[i];
            self.bytes[i] = (self.bytes[i] & !m) | (v & m);
            if i == STATUS || i == STATUS + 1 {
                let w1c = STATUS_W1C.to_le_bytes()[i - STATUS];
                self.bytes[i] &= !(v & w1c);
            }
        }
        Ok(())
    }

    /// Back to the power-on values (a function-level reset).
    pub fn reset(&mut self) {
        *self.bytes = *self.power_on;
    }

    /// The Command register.
    pub fn command(&self) -> u16 {
        self.u16_at(COMMAND)
    }

    /// Whether the function may master the bus (issue DMA and MSI writes).
    pub fn bus_master(&self) -> bool {
        self.command() & COMMAND_BUS_MASTER != 0
    }

    /// Whether INTx is disabled by the Command register.
    pub fn intx_disabled(&self) -> bool {
        self.command() & COMMAND_INTX_DISABLE != 0
    }

    /// Whether software enabled MSI (Message Control bit 0).
    pub fn msi_enabled(&self) -> bool {
        self.u16_at(MSI_CAP + 2) & 1 != 0
    }

    /// Whether software enabled PASID (PASID Control: PASID Enable).
    pub fn pasid_enabled(&self) -> bool {
        self.u16_at(PASID_CAP + 6) & PASID_ENABLE != 0
    }

    /// Whether software enabled privileged-mode requests with a PASID.
    pub fn pasid_privileged_enabled(&self) -> bool {
        self.u16_at(PASID_CAP + 6) & PASID_PRIV_ENABLE != 0
    }

    /// The largest PASID the function may send (0 without a PASID capability).
    pub fn max_pasid(&self) -> u32 {
        (1u32 << self.pasid_width) - 1
    }

    /// The address software programmed into BAR0.
    pub fn bar0(&self) -> u32 {
        self.u32_at(BAR0) & !0xf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn space() -> ConfigSpace {
        ConfigSpace::new(
            FunctionId {
                vendor: 0x1234,
                device: 0x1dae,
                revision: 1,
                class: 0x08_80_00,
            },
            4096,
            Some(20),
        )
    }

    fn rd32(c: &ConfigSpace, off: u64) -> u32 {
        let mut b = [0; 4];
        c.read(off, &mut b).unwrap();
        u32::from_le_bytes(b)
    }

    #[test]
    fn header_identifies_the_function() {
        let c = space();
        assert_eq!(rd32(&c, 0), 0x1dae_1234);
        // Revision 1, class 08 80 00.
        assert_eq!(rd32(&c, 8), 0x0880_0001);
        // Status has the capability list; the pointer names MSI, MSI names PCIe, PCIe ends.
        assert_eq!(rd32(&c, 4) >> 16, 0x0010);
        assert_eq!(rd32(&c, 0x34) & 0xff, 0x40);
        assert_eq!(rd32(&c, 0x40) & 0xffff, 0x5005);
        assert_eq!(rd32(&c, 0x50) & 0xffff, 0x0010);
        // Interrupt pin INTA.
        assert_eq!((rd32(&c, 0x3c) >> 8) & 0xff, 1);
        // PASID extended capability, version 1, last; width 20, privileged mode supported.
        assert_eq!(rd32(&c, 0x100), 0x0001_001b);
        assert_eq!(rd32(&c, 0x104) & 0xffff, 0x1404);
    }

    #[test]
    fn bar_sizing_reads_back_the_size_mask() {
        let mut c = space();
        c.write(0x10, &u32::MAX.to_le_bytes()).unwrap();
        assert_eq!(rd32(&c, 0x10), 0xffff_f000);
        c.write(0x10, &0xfebf_e123u32.to_le_bytes()).unwrap();
        assert_eq!(rd32(&c, 0x10), 0xfebf_e000);
        assert_eq!(c.bar0(), 0xfebf_e000);
        // BAR1..5 are not implemented: they read 0 whatever is written.
        c.write(0x14, &u32::MAX.to_le_bytes()).unwrap();
        assert_eq!(rd32(&c, 0x14), 0);
    }

    #[test]
    fn command_bits_and_status_write_one_to_clear() {
        let mut c = space();
        assert!(!c.bus_master());
        c.write(4, &0xffffu16.to_le_bytes()).unwrap();
        assert_eq!(c.command(), 0x0547);
        assert!(c.bus_master() && c.intx_disabled());
        // Status is not writable: writing ones neither sets bits nor clears the cap bit.
        c.write(6, &0xffffu16.to_le_bytes()).unwrap();
        assert_eq!(rd32(&c, 4) >> 16, 0x0010);
        c.write(4, &[0x04]).unwrap();
        assert_eq!(c.command(), 0x0504);
        c.reset();
        assert_eq!(c.command(), 0);
    }

    #[test]
    fn msi_and_pasid_enables_are_writable() {
        let mut c = space();
        c.write(0x42, &0xffffu16.to_le_bytes()).unwrap();
        // 64-bit capable stays, one vector requestable, enable and MME writable.
        assert_eq!(rd32(&c, 0x40) >> 16, 0x00f1);
        assert!(c.msi_enabled());
        c.write(0x44, &0xfee0_0003u32.to_le_bytes()).unwrap();
        assert_eq!(rd32(&c, 0x44), 0xfee0_0000);
        assert!(!c.pasid_enabled());
        c.write(0x106, &0xffffu16.to_le_bytes()).unwrap();
        assert!(c.pasid_enabled() && c.pasid_privileged_enabled());
        assert_eq!(rd32(&c, 0x104) >> 16, 0x0005);
        assert_eq!(c.max_pasid(), 0xf_ffff);
    }

    #[test]
    fn without_pasid_there_are_no_extended_capabilities() {
        let mut c = ConfigSpace::new(
            FunctionId {
                vendor: 0x1234,
                device: 1,
                revision: 0,
                class: 0x08_06_00,
            },
            16384,
            None,
        );
        assert_eq!(rd32(&c, 0x100), 0);
        c.write(0x106, &[0xff, 0xff]).unwrap();
        assert!(!c.pasid_enabled());
        assert_eq!(c.max_pasid(), 0);
        c.write(0x10, &u32::MAX.to_le_bytes()).unwrap();
        assert_eq!(rd32(&c, 0x10), 0xffff_c000, "a 16 KiB BAR");
    }

    #[test]
    fn a_device_capability_ends_the_list_and_is_read_only() {
        let cap = DeviceCapability {
            id: 0x0f,
            body: vec![0x03, 0x08, 0x11, 0x22, 0x33, 0x44],
        };
        let mut c = ConfigSpace::with_device_capability(
            FunctionId {
                vendor: 0x1234,
                device: 0x1d7e,
                revision: 1,
                class: 0x08_06_00,
            },
            16384,
            None,
            Some(&cap),
        );
        // MSI -> PCI Express -> the device's capability -> end.
        assert_eq!(rd32(&c, 0x40) & 0xffff, 0x5005);
        assert_eq!(rd32(&c, 0x50) & 0xffff, 0x9010);
        assert_eq!(rd32(&c, 0x90), 0x0803_000f);
        assert_eq!(rd32(&c, 0x94), 0x4433_2211);
        assert_eq!(rd32(&c, 0x98), 0);
        c.write(0x90, &[0xff; 8]).unwrap();
        assert_eq!(rd32(&c, 0x90), 0x0803_000f);
        assert_eq!(rd32(&c, 0x94), 0x4433_2211);
        // Without one, PCI Express ends the list.
        assert_eq!(rd32(&space(), 0x50) & 0xffff, 0x0010);
    }

    #[test]
    fn accesses_outside_the_space_are_refused() {
        let mut c = space();
        let mut b = [0; 4];
        assert!(c.read(4094, &mut b).is_err());
        assert!(c.write(4096, &[1]).is_err());
        assert!(c.read(u64::MAX, &mut b[..1]).is_err());
        c.read(4092, &mut b).unwrap();
        // Read-only identity bytes ignore writes.
        c.write(0, &[0xff, 0xff]).unwrap();
        assert_eq!(rd32(&c, 0), 0x1dae_1234);
    }
}

//! The VFIO container/group API, type1 IOMMU backend, and the device API of `vfio-pci`
//! (regions read and written with `pread`/`pwrite`, interrupts signalled through eventfds).
//!
//! Numbers and layouts from the kernel UAPI header `include/uapi/linux/vfio.h`: every ioctl is
//! `_IO(VFIO_TYPE, VFIO_BASE + n)` with `VFIO_TYPE = ';'` and `VFIO_BASE = 100` (no size is
//! encoded: each structure starts with `argsz`, which the caller sets).

use crate::{AgentError, Result};
use iommu_emulator::PciBdf;
use std::ffi::CString;
use std::fs::OpenOptions;
use std::ops::RangeInclusive;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

/// `VFIO_TYPE`, the ioctl type byte `';'`.
pub const VFIO_TYPE: u32 = b';' as u32;
/// `VFIO_BASE`, the first ioctl number.
pub const VFIO_BASE: u32 = 100;

/// `_IO(type, nr)` from `include/uapi/asm-generic/ioctl.h`: direction 0 (bits 30-31) and size
/// 0 (bits 16-29), so the request is `type << 8 | nr`.
pub const fn io(nr: u32) -> u32 {
    (VFIO_TYPE << 8) | (VFIO_BASE + nr)
}

/// `VFIO_GET_API_VERSION`.
pub const VFIO_GET_API_VERSION: u32 = io(0);
/// `VFIO_CHECK_EXTENSION`.
pub const VFIO_CHECK_EXTENSION: u32 = io(1);
/// `VFIO_SET_IOMMU`.
pub const VFIO_SET_IOMMU: u32 = io(2);
/// `VFIO_GROUP_GET_STATUS`.
pub const VFIO_GROUP_GET_STATUS: u32 = io(3);
/// `VFIO_GROUP_SET_CONTAINER`.
pub const VFIO_GROUP_SET_CONTAINER: u32 = io(4);
/// `VFIO_GROUP_UNSET_CONTAINER`.
pub const VFIO_GROUP_UNSET_CONTAINER: u32 = io(5);
/// `VFIO_GROUP_GET_DEVICE_FD`: the argument is the device's name, a NUL-terminated string.
pub const VFIO_GROUP_GET_DEVICE_FD: u32 = io(6);
/// `VFIO_DEVICE_GET_REGION_INFO`.
pub const VFIO_DEVICE_GET_REGION_INFO: u32 = io(8);
/// `VFIO_DEVICE_GET_IRQ_INFO`.
pub const VFIO_DEVICE_GET_IRQ_INFO: u32 = io(9);
/// `VFIO_DEVICE_SET_IRQS`.
pub const VFIO_DEVICE_SET_IRQS: u32 = io(10);
/// `VFIO_IOMMU_GET_INFO`.
pub const VFIO_IOMMU_GET_INFO: u32 = io(12);
/// `VFIO_IOMMU_MAP_DMA`.
pub const VFIO_IOMMU_MAP_DMA: u32 = io(13);
/// `VFIO_IOMMU_UNMAP_DMA`.
pub const VFIO_IOMMU_UNMAP_DMA: u32 = io(14);

/// `VFIO_API_VERSION`.
pub const VFIO_API_VERSION: i32 = 0;
/// `VFIO_TYPE1_IOMMU` extension / IOMMU type.
pub const VFIO_TYPE1_IOMMU: u32 = 1;
/// `VFIO_TYPE1v2_IOMMU` extension / IOMMU type.
pub const VFIO_TYPE1V2_IOMMU: u32 = 3;

/// `VFIO_GROUP_FLAGS_VIABLE`: every device of the group is bound to a VFIO driver (or none).
pub const VFIO_GROUP_FLAGS_VIABLE: u32 = 1 << 0;
/// `VFIO_GROUP_FLAGS_CONTAINER_SET`.
pub const VFIO_GROUP_FLAGS_CONTAINER_SET: u32 = 1 << 1;
/// `VFIO_DMA_MAP_FLAG_READ`: the device may read.
pub const VFIO_DMA_MAP_FLAG_READ: u32 = 1 << 0;
/// `VFIO_DMA_MAP_FLAG_WRITE`: the device may write.
pub const VFIO_DMA_MAP_FLAG_WRITE: u32 = 1 << 1;
/// `VFIO_IOMMU_INFO_PGSIZES`: `iova_pgsizes` is valid.
pub const VFIO_IOMMU_INFO_PGSIZES: u32 = 1 << 0;
/// `VFIO_IOMMU_INFO_CAPS`: a capability chain follows the info, from `cap_offset`.
pub const VFIO_IOMMU_INFO_CAPS: u32 = 1 << 1;
/// `VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE`: the capability listing the IOVA ranges a container
/// can map (`struct vfio_iommu_type1_info_cap_iova_range`: the 8-byte header, `nr_iovas`,
/// 4 reserved bytes, then `nr_iovas` pairs of `u64` start and inclusive end).
pub const VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE: u16 = 1;
/// The most bytes of `VFIO_IOMMU_GET_INFO` answer (info and capabilities) the agent reads: a
/// chain that claims more is refused rather than allocated.
pub const MAX_IOMMU_INFO: u32 = 1 << 16;

/// `VFIO_REGION_INFO_FLAG_READ`: the region can be read.
pub const VFIO_REGION_INFO_FLAG_READ: u32 = 1 << 0;
/// `VFIO_REGION_INFO_FLAG_WRITE`: the region can be written.
pub const VFIO_REGION_INFO_FLAG_WRITE: u32 = 1 << 1;
/// `VFIO_REGION_INFO_FLAG_MMAP`: the region can be mapped.
pub const VFIO_REGION_INFO_FLAG_MMAP: u32 = 1 << 2;
/// `VFIO_REGION_INFO_FLAG_CAPS`: the info has a capability chain.
pub const VFIO_REGION_INFO_FLAG_CAPS: u32 = 1 << 3;

/// `VFIO_IRQ_INFO_EVENTFD`: the index can signal an eventfd.
pub const VFIO_IRQ_INFO_EVENTFD: u32 = 1 << 0;
/// `VFIO_IRQ_INFO_MASKABLE`.
pub const VFIO_IRQ_INFO_MASKABLE: u32 = 1 << 1;
/// `VFIO_IRQ_INFO_AUTOMASKED`: VFIO masks the line after signalling it (level-triggered INTx);
/// the user unmasks it.
pub const VFIO_IRQ_INFO_AUTOMASKED: u32 = 1 << 2;
/// `VFIO_IRQ_INFO_NORESIZE`.
pub const VFIO_IRQ_INFO_NORESIZE: u32 = 1 << 3;

/// `VFIO_IRQ_SET_DATA_NONE`: no data follows the header.
pub const VFIO_IRQ_SET_DATA_NONE: u32 = 1 << 0;
/// `VFIO_IRQ_SET_DATA_BOOL`: one `u8` per interrupt follows.
pub const VFIO_IRQ_SET_DATA_BOOL: u32 = 1 << 1;
/// `VFIO_IRQ_SET_DATA_EVENTFD`: one `s32` eventfd per interrupt follows.
pub const VFIO_IRQ_SET_DATA_EVENTFD: u32 = 1 << 2;
/// `VFIO_IRQ_SET_ACTION_MASK`.
pub const VFIO_IRQ_SET_ACTION_MASK: u32 = 1 << 3;
/// `VFIO_IRQ_SET_ACTION_UNMASK`.
pub const VFIO_IRQ_SET_ACTION_UNMASK: u32 = 1 << 4;
/// `VFIO_IRQ_SET_ACTION_TRIGGER`: the kernel signals the user.
pub const VFIO_IRQ_SET_ACTION_TRIGGER: u32 = 1 << 5;

/// `VFIO_PCI_BAR0_REGION_INDEX`.
pub const VFIO_PCI_BAR0_REGION_INDEX: u32 = 0;
/// `VFIO_PCI_CONFIG_REGION_INDEX`: PCI configuration space.
pub const VFIO_PCI_CONFIG_REGION_INDEX: u32 = 7;
/// `VFIO_PCI_INTX_IRQ_INDEX`.
pub const VFIO_PCI_INTX_IRQ_INDEX: u32 = 0;
/// `VFIO_PCI_MSI_IRQ_INDEX`.
pub const VFIO_PCI_MSI_IRQ_INDEX: u32 = 1;
/// `VFIO_PCI_MSIX_IRQ_INDEX`.
pub const VFIO_PCI_MSIX_IRQ_INDEX: u32 = 2;

/// `PCI_COMMAND`: the 16-bit command register's offset in configuration space
/// (`include/uapi/linux/pci_regs.h`).
pub const PCI_COMMAND: u64 = 0x04;
/// `PCI_COMMAND_MEMORY`: the function answers memory-space accesses (its BARs).
pub const PCI_COMMAND_MEMORY: u16 = 0x2;
/// `PCI_COMMAND_MASTER`: bus master enable; the function may issue DMA.
pub const PCI_COMMAND_MASTER: u16 = 0x4;

/// `struct vfio_group_status` (8 bytes).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct VfioGroupStatus {
    /// Size of this structure.
    pub argsz: u32,
    /// `VFIO_GROUP_FLAGS_*`.
    pub flags: u32,
}

/// `struct vfio_iommu_type1_info` (24 bytes; `cap_offset` and padding since Linux 4.15).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct VfioIommuType1Info {
    /// Size of this structure.
    pub argsz: u32,
    /// `VFIO_IOMMU_INFO_*`.
    pub flags: u32,
    /// Bitmap of supported IOVA page sizes.
    pub iova_pgsizes: u64,
    /// Offset of the first capability, if `VFIO_IOMMU_INFO_CAPS`.
    pub cap_offset: u32,
    /// Padding.
    pub pad: u32,
}

/// `struct vfio_iommu_type1_dma_map` (32 bytes).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct VfioIommuType1DmaMap {
    /// Size of this structure.
    pub argsz: u32,
    /// `VFIO_DMA_MAP_FLAG_*`.
    pub flags: u32,
    /// Process virtual address of the buffer.
    pub vaddr: u64,
    /// I/O virtual address the device uses.
    pub iova: u64,
    /// Size in bytes.
    pub size: u64,
}

/// `struct vfio_iommu_type1_dma_unmap` without its trailing flexible `data[]` (24 bytes).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct VfioIommuType1DmaUnmap {
    /// Size of this structure.
    pub argsz: u32,
    /// `VFIO_DMA_UNMAP_FLAG_*`.
    pub flags: u32,
    /// First IOVA to unmap.
    pub iova: u64,
    /// Size in bytes; the kernel writes back the size actually unmapped.
    pub size: u64,
}

/// `struct vfio_region_info` (32 bytes).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct VfioRegionInfo {
    /// Size of this structure.
    pub argsz: u32,
    /// `VFIO_REGION_INFO_FLAG_*`.
    pub flags: u32,
    /// The region index (for `vfio-pci`: 0..=5 BARs, 6 ROM, 7 config space).
    pub index: u32,
    /// Offset of the first capability, if `VFIO_REGION_INFO_FLAG_CAPS`.
    pub cap_offset: u32,
    /// Region size in bytes (0: not implemented).
    pub size: u64,
    /// Offset of the region in the device file descriptor.
    pub offset: u64,
}

/// `struct vfio_irq_info` (16 bytes).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct VfioIrqInfo {
    /// Size of this structure.
    pub argsz: u32,
    /// `VFIO_IRQ_INFO_*`.
    pub flags: u32,
    /// The IRQ index (for `vfio-pci`: 0 INTx, 1 MSI, 2 MSI-X, 3 error, 4 request).
    pub index: u32,
    /// Interrupts in this index (0: not offered).
    pub count: u32,
}

/// `struct vfio_irq_set` without its flexible `data[]` (20 bytes): the form for
/// `VFIO_IRQ_SET_DATA_NONE`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct VfioIrqSet {
    /// Size of this structure.
    pub argsz: u32,
    /// `VFIO_IRQ_SET_DATA_*` | `VFIO_IRQ_SET_ACTION_*`.
    pub flags: u32,
    /// The IRQ index.
    pub index: u32,
    /// First interrupt of the index.
    pub start: u32,
    /// Interrupts set.
    pub count: u32,
}

/// `struct vfio_irq_set` followed by one `s32` eventfd in `data[]` (24 bytes): the form for
/// `VFIO_IRQ_SET_DATA_EVENTFD` with `count` 1.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct VfioIrqSetEventfd {
    /// Size of this structure.
    pub argsz: u32,
    /// `VFIO_IRQ_SET_DATA_EVENTFD` | `VFIO_IRQ_SET_ACTION_*`.
    pub flags: u32,
    /// The IRQ index.
    pub index: u32,
    /// First interrupt of the index.
    pub start: u32,
    /// Interrupts set (1).
    pub count: u32,
    /// The eventfd (-1 de-assigns).
    pub fd: i32,
}

fn argsz<T>() -> u32 {
    // The structures above are at most 32 bytes.
    std::mem::size_of::<T>() as u32
}

fn open_rw(path: &str) -> Result<OwnedFd> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| AgentError::io(format!("open {path}"), e))?;
    Ok(f.into())
}

/// ioctl with an integer argument.
fn ioctl_val(fd: &OwnedFd, req: u32, arg: libc::c_ulong, what: &str) -> Result<i32> {
    // SAFETY: `fd` is an open descriptor we own; the VFIO ioctls used with this helper take a
    // plain integer argument and read no memory through it.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), req as libc::Ioctl, arg) };
    if r < 0 {
        return Err(AgentError::last_os(what));
    }
    Ok(r)
}

/// ioctl with a pointer to a `#[repr(C)]` structure the kernel reads and may write.
fn ioctl_ptr<T>(fd: &OwnedFd, req: u32, arg: &mut T, what: &str) -> Result<i32> {
    // SAFETY: `arg` is a valid, exclusively borrowed `#[repr(C)]` structure laid out as the
    // kernel UAPI defines it for `req`, with `argsz` set to its size by the caller, so the
    // kernel reads and writes only within it.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), req as libc::Ioctl, arg as *mut T) };
    if r < 0 {
        return Err(AgentError::last_os(what));
    }
    Ok(r)
}

/// A VFIO container (`/dev/vfio/vfio`).
#[derive(Debug)]
pub struct Container {
    fd: OwnedFd,
}

impl Container {
    /// Opens `/dev/vfio/vfio` and checks the API version.
    pub fn open() -> Result<Self> {
        let fd = open_rw("/dev/vfio/vfio")?;
        let v = ioctl_val(&fd, VFIO_GET_API_VERSION, 0, "VFIO_GET_API_VERSION")?;
        if v != VFIO_API_VERSION {
            return Err(AgentError::Vfio(format!("unknown API version {v}")));
        }
        Ok(Container { fd })
    }

    /// Whether the container supports extension `ext` (e.g. [`VFIO_TYPE1V2_IOMMU`]).
    pub fn check_extension(&self, ext: u32) -> Result<bool> {
        Ok(ioctl_val(
            &self.fd,
            VFIO_CHECK_EXTENSION,
            libc::c_ulong::from(ext),
            "VFIO_CHECK_EXTENSION",
        )? > 0)
    }

    /// Picks the type1 backend (v2 when offered) once a group is in the container.
    pub fn set_iommu(&self) -> Result<u32> {
        let kind = if self.check_extension(VFIO_TYPE1V2_IOMMU)? {
            VFIO_TYPE1V2_IOMMU
        } else if self.check_extension(VFIO_TYPE1_IOMMU)? {
            VFIO_TYPE1_IOMMU
        } else {
            return Err(AgentError::Vfio("no type1 IOMMU backend".into()));
        };
        self.set_iommu_type(kind)?;
        Ok(kind)
    }

    /// `VFIO_SET_IOMMU` of backend `kind` ([`VFIO_TYPE1_IOMMU`] or [`VFIO_TYPE1V2_IOMMU`]),
    /// once a group is in the container.
    pub fn set_iommu_type(&self, kind: u32) -> Result<()> {
        ioctl_val(
            &self.fd,
            VFIO_SET_IOMMU,
            libc::c_ulong::from(kind),
            "VFIO_SET_IOMMU",
        )?;
        Ok(())
    }

    /// `VFIO_IOMMU_GET_INFO` without its capabilities.
    fn iommu_info(&self) -> Result<VfioIommuType1Info> {
        let mut info = VfioIommuType1Info {
            argsz: argsz::<VfioIommuType1Info>(),
            ..Default::default()
        };
        ioctl_ptr(
            &self.fd,
            VFIO_IOMMU_GET_INFO,
            &mut info,
            "VFIO_IOMMU_GET_INFO",
        )?;
        Ok(info)
    }

    /// `VFIO_IOMMU_GET_INFO`: the supported IOVA page sizes.
    pub fn iova_pgsizes(&self) -> Result<u64> {
        let info = self.iommu_info()?;
        if info.flags & VFIO_IOMMU_INFO_PGSIZES == 0 {
            return Err(AgentError::Vfio("IOMMU info gives no page sizes".into()));
        }
        Ok(info.iova_pgsizes)
    }

    /// The IOVA ranges the container can map, from the IOVA range capability of
    /// `VFIO_IOMMU_GET_INFO` (the IOMMU's aperture less its reserved regions, such as the MSI
    /// window), or `None` when the kernel reports no such capability. Asks twice: first for
    /// the size of the info with its capabilities, then for all of it.
    pub fn iova_ranges(&self) -> Result<Option<Vec<RangeInclusive<u64>>>> {
        let info = self.iommu_info()?;
        let want = info.argsz;
        if info.flags & VFIO_IOMMU_INFO_CAPS == 0 || want <= argsz::<VfioIommuType1Info>() {
            return Ok(None);
        }
        if want > MAX_IOMMU_INFO {
            return Err(AgentError::Vfio(format!(
                "VFIO_IOMMU_GET_INFO wants {want} bytes for its capabilities, more than \
                 {MAX_IOMMU_INFO}"
            )));
        }
        let mut buf = vec![0u8; want as usize];
        buf[..4].copy_from_slice(&want.to_ne_bytes());
        // SAFETY: `self.fd` is an open container we own; `buf` is an exclusively borrowed,
        // writable buffer of `want` bytes whose first field, `argsz`, says `want`, so the
        // kernel writes the info and its capability chain within it (it copies the chain only
        // when `argsz` holds all of it). The kernel needs no alignment of the pointer.
        let r = unsafe {
            libc::ioctl(
                self.fd.as_raw_fd(),
                VFIO_IOMMU_GET_INFO as libc::Ioctl,
                buf.as_mut_ptr(),
            )
        };
        if r < 0 {
            return Err(AgentError::last_os("VFIO_IOMMU_GET_INFO (capabilities)"));
        }
        parse_iova_ranges(&buf)
    }

    /// `VFIO_IOMMU_MAP_DMA` of `size` bytes at process address `vaddr` to `iova`, readable
    /// and writable by the device.
    pub fn map_dma(&self, vaddr: u64, iova: u64, size: u64) -> Result<()> {
        let mut m = VfioIommuType1DmaMap {
            argsz: argsz::<VfioIommuType1DmaMap>(),
            flags: VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE,
            vaddr,
            iova,
            size,
        };
        ioctl_ptr(&self.fd, VFIO_IOMMU_MAP_DMA, &mut m, "VFIO_IOMMU_MAP_DMA")?;
        Ok(())
    }

    /// `VFIO_IOMMU_UNMAP_DMA`; returns the number of bytes the kernel unmapped.
    pub fn unmap_dma(&self, iova: u64, size: u64) -> Result<u64> {
        let mut u = VfioIommuType1DmaUnmap {
            argsz: argsz::<VfioIommuType1DmaUnmap>(),
            flags: 0,
            iova,
            size,
        };
        ioctl_ptr(
            &self.fd,
            VFIO_IOMMU_UNMAP_DMA,
            &mut u,
            "VFIO_IOMMU_UNMAP_DMA",
        )?;
        Ok(u.size)
    }
}

/// A VFIO group (`/dev/vfio/N`).
#[derive(Debug)]
pub struct Group {
    fd: OwnedFd,
    /// The IOMMU group number.
    pub number: u32,
}

impl Group {
    /// Opens `/dev/vfio/<number>`.
    pub fn open(number: u32) -> Result<Self> {
        Ok(Group {
            fd: open_rw(&format!("/dev/vfio/{number}"))?,
            number,
        })
    }

    /// `VFIO_GROUP_GET_STATUS` flags.
    pub fn status(&self) -> Result<u32> {
        let mut s = VfioGroupStatus {
            argsz: argsz::<VfioGroupStatus>(),
            flags: 0,
        };
        ioctl_ptr(
            &self.fd,
            VFIO_GROUP_GET_STATUS,
            &mut s,
            "VFIO_GROUP_GET_STATUS",
        )?;
        Ok(s.flags)
    }

    /// `VFIO_GROUP_SET_CONTAINER`, after checking the group is viable.
    pub fn set_container(&self, c: &Container) -> Result<()> {
        if self.status()? & VFIO_GROUP_FLAGS_VIABLE == 0 {
            return Err(AgentError::Vfio(format!(
                "group {} is not viable (a device of it is not bound to vfio-pci)",
                self.number
            )));
        }
        let mut cfd: libc::c_int = c.fd.as_raw_fd();
        ioctl_ptr(
            &self.fd,
            VFIO_GROUP_SET_CONTAINER,
            &mut cfd,
            "VFIO_GROUP_SET_CONTAINER",
        )?;
        Ok(())
    }

    /// `VFIO_GROUP_UNSET_CONTAINER`: the group leaves its container. The kernel refuses
    /// (`EBUSY`) while a device of the group is open: close its [`Device`] first, and open it
    /// again once the group is in a container with an IOMMU set.
    pub fn unset_container(&self) -> Result<()> {
        ioctl_val(
            &self.fd,
            VFIO_GROUP_UNSET_CONTAINER,
            0,
            "VFIO_GROUP_UNSET_CONTAINER",
        )?;
        Ok(())
    }

    /// `VFIO_GROUP_GET_DEVICE_FD` for the device named `bdf` (its sysfs name,
    /// `SSSS:BB:DD.F`); the group must be in a container with an IOMMU set.
    pub fn device(&self, bdf: &PciBdf) -> Result<Device> {
        let name = bdf.to_string();
        let cname = CString::new(name.clone())
            .map_err(|_| AgentError::Vfio(format!("device name {name:?} holds a NUL")))?;
        // SAFETY: `self.fd` is an open group descriptor we own; the argument is a pointer to
        // a NUL-terminated string that lives across the call, which the kernel only reads
        // (strndup_user), and the call touches no other memory of ours.
        let r = unsafe {
            libc::ioctl(
                self.fd.as_raw_fd(),
                VFIO_GROUP_GET_DEVICE_FD as libc::Ioctl,
                cname.as_ptr(),
            )
        };
        if r < 0 {
            return Err(AgentError::last_os(format!(
                "VFIO_GROUP_GET_DEVICE_FD {name}"
            )));
        }
        // SAFETY: on success the ioctl returned a new file descriptor that nothing else owns;
        // `OwnedFd` takes it over and closes it once.
        let fd = unsafe { OwnedFd::from_raw_fd(r) };
        Ok(Device { fd, name })
    }
}

/// The `N` bytes at `off` of `buf`, if it holds them.
fn ne_bytes<const N: usize>(buf: &[u8], off: usize) -> Option<[u8; N]> {
    buf.get(off..off.checked_add(N)?)?.try_into().ok()
}

/// The IOVA ranges of the IOVA range capability ([`VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE`]) in
/// the bytes of a `VFIO_IOMMU_GET_INFO` answer (`struct vfio_iommu_type1_info` and its
/// capability chain, in the host's byte order), or `None` if the answer has no capability
/// chain or the chain no such capability. Each capability header is `id` (`u16`), `version`
/// (`u16`) and `next` (`u32`, the offset of the next header from the start of the info, 0 at
/// the end). A header, range or count outside the bytes, a range whose start lies above its
/// end, or a chain that loops is an error.
pub fn parse_iova_ranges(info: &[u8]) -> Result<Option<Vec<RangeInclusive<u64>>>> {
    let bad = |m: String| AgentError::Vfio(format!("VFIO_IOMMU_GET_INFO capabilities: {m}"));
    let u32_at = |off: usize| ne_bytes(info, off).map(u32::from_ne_bytes);
    let u64_at = |off: usize| ne_bytes(info, off).map(u64::from_ne_bytes);
    let (Some(flags), Some(first)) = (u32_at(4), u32_at(16)) else {
        return Err(bad(format!("{} bytes hold no info", info.len())));
    };
    if flags & VFIO_IOMMU_INFO_CAPS == 0 {
        return Ok(None);
    }
    let mut off = first as usize;
    // Every header takes 8 bytes, so a chain of more hops than that revisits one.
    for _ in 0..=info.len() / 8 {
        if off == 0 {
            return Ok(None);
        }
        let (Some(id), Some(next)) = (ne_bytes(info, off).map(u16::from_ne_bytes), u32_at(off + 4))
        else {
            return Err(bad(format!(
                "a header at {off:#x} outside the {} bytes",
                info.len()
            )));
        };
        if id != VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE {
            off = next as usize;
            continue;
        }
        let n = u32_at(off + 8).ok_or_else(|| bad(format!("no IOVA range count at {off:#x}")))?;
        let ranges_at = off + 16;
        let fits = (n as usize)
            .checked_mul(16)
            .and_then(|l| l.checked_add(ranges_at))
            .is_some_and(|end| end <= info.len());
        if !fits {
            return Err(bad(format!(
                "{n} IOVA ranges at {ranges_at:#x} do not fit the {} bytes",
                info.len()
            )));
        }
        let ranges = (0..n as usize)
            .map(|i| Some(u64_at(ranges_at + 16 * i)?..=u64_at(ranges_at + 16 * i + 8)?))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| bad(format!("IOVA ranges at {ranges_at:#x} cut short")))?;
        if let Some(r) = ranges.iter().find(|r| r.is_empty()) {
            return Err(bad(format!(
                "IOVA range {:#x}..={:#x} ends below its start",
                r.start(),
                r.end()
            )));
        }
        return Ok(Some(ranges));
    }
    Err(bad("the capability chain loops".into()))
}

/// One region of a device: where it lies in the device descriptor and how large it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    /// The region index.
    pub index: u32,
    /// `VFIO_REGION_INFO_FLAG_*`.
    pub flags: u32,
    /// Size in bytes.
    pub size: u64,
    /// Offset in the device descriptor.
    pub offset: u64,
}

impl Region {
    /// Whether the region can be both read and written.
    pub fn read_write(&self) -> bool {
        let rw = VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE;
        self.flags & rw == rw
    }

    /// The descriptor offset of bytes `[off, off + len)` of the region, or a typed error if
    /// they are not all inside it.
    pub fn file_offset(&self, off: u64, len: usize) -> Result<u64> {
        let end = off.checked_add(len as u64);
        if end.is_none_or(|e| e > self.size) {
            return Err(AgentError::Vfio(format!(
                "access of {len} bytes at {off:#x} outside region {} ({:#x} bytes)",
                self.index, self.size
            )));
        }
        self.offset
            .checked_add(off)
            .ok_or_else(|| AgentError::Vfio(format!("region {} offset overflows", self.index)))
    }
}

/// A VFIO device descriptor (from [`Group::device`]).
#[derive(Debug)]
pub struct Device {
    fd: OwnedFd,
    /// The name it was opened by (`SSSS:BB:DD.F`).
    pub name: String,
}

impl Device {
    /// `VFIO_DEVICE_GET_REGION_INFO` for region `index`.
    pub fn region(&self, index: u32) -> Result<Region> {
        let mut info = VfioRegionInfo {
            argsz: argsz::<VfioRegionInfo>(),
            index,
            ..Default::default()
        };
        ioctl_ptr(
            &self.fd,
            VFIO_DEVICE_GET_REGION_INFO,
            &mut info,
            "VFIO_DEVICE_GET_REGION_INFO",
        )?;
        Ok(Region {
            index,
            flags: info.flags,
            size: info.size,
            offset: info.offset,
        })
    }

    /// Reads `buf.len()` bytes at offset `off` of region `r` (one `pread`, which `vfio-pci`
    /// turns into accesses of the largest aligned size that fits).
    pub fn read(&self, r: &Region, off: u64, buf: &mut [u8]) -> Result<()> {
        let at = r.file_offset(off, buf.len())?;
        let at = libc::off_t::try_from(at)
            .map_err(|_| AgentError::Vfio(format!("offset {at:#x} too large")))?;
        // SAFETY: `self.fd` is an open descriptor we own and `buf` is a writable, exclusively
        // borrowed buffer of `buf.len()` bytes, the count passed.
        let n = unsafe { libc::pread(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), at) };
        let what = || format!("read {} bytes at {off:#x} of region {}", buf.len(), r.index);
        if n < 0 {
            return Err(AgentError::last_os(what()));
        }
        if n as usize != buf.len() {
            return Err(AgentError::Vfio(format!("{}: short read ({n})", what())));
        }
        Ok(())
    }

    /// Writes `buf` at offset `off` of region `r` (one `pwrite`).
    pub fn write(&self, r: &Region, off: u64, buf: &[u8]) -> Result<()> {
        let at = r.file_offset(off, buf.len())?;
        let at = libc::off_t::try_from(at)
            .map_err(|_| AgentError::Vfio(format!("offset {at:#x} too large")))?;
        // SAFETY: `self.fd` is an open descriptor we own and `buf` is a readable buffer of
        // `buf.len()` bytes, the count passed.
        let n = unsafe { libc::pwrite(self.fd.as_raw_fd(), buf.as_ptr().cast(), buf.len(), at) };
        let what = || {
            format!(
                "write {} bytes at {off:#x} of region {}",
                buf.len(),
                r.index
            )
        };
        if n < 0 {
            return Err(AgentError::last_os(what()));
        }
        if n as usize != buf.len() {
            return Err(AgentError::Vfio(format!("{}: short write ({n})", what())));
        }
        Ok(())
    }

    /// A little-endian 16-bit read.
    pub fn read16(&self, r: &Region, off: u64) -> Result<u16> {
        let mut b = [0u8; 2];
        self.read(r, off, &mut b)?;
        Ok(u16::from_le_bytes(b))
    }

    /// A little-endian 16-bit write.
    pub fn write16(&self, r: &Region, off: u64, v: u16) -> Result<()> {
        self.write(r, off, &v.to_le_bytes())
    }

    /// A little-endian 32-bit read.
    pub fn read32(&self, r: &Region, off: u64) -> Result<u32> {
        let mut b = [0u8; 4];
        self.read(r, off, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    /// A little-endian 32-bit write.
    pub fn write32(&self, r: &Region, off: u64, v: u32) -> Result<()> {
        self.write(r, off, &v.to_le_bytes())
    }

    /// A little-endian 64-bit read (one 8-byte access where the kernel does those, else two
    /// 4-byte ones, low half first).
    pub fn read64(&self, r: &Region, off: u64) -> Result<u64> {
        let mut b = [0u8; 8];
        self.read(r, off, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    /// A little-endian 64-bit write (as [`Device::read64`]).
    pub fn write64(&self, r: &Region, off: u64, v: u64) -> Result<()> {
        self.write(r, off, &v.to_le_bytes())
    }

    /// Sets Memory Space and Bus Master Enable in the configuration space's command register
    /// (region 7), keeping its other bits; returns the command register read back.
    pub fn enable_memory_and_bus_master(&self) -> Result<u16> {
        let cfg = self.region(VFIO_PCI_CONFIG_REGION_INDEX)?;
        let cmd = self.read16(&cfg, PCI_COMMAND)?;
        self.write16(
            &cfg,
            PCI_COMMAND,
            cmd | PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER,
        )?;
        self.read16(&cfg, PCI_COMMAND)
    }

    /// `VFIO_DEVICE_GET_IRQ_INFO` for IRQ index `index`.
    pub fn irq_info(&self, index: u32) -> Result<VfioIrqInfo> {
        let mut info = VfioIrqInfo {
            argsz: argsz::<VfioIrqInfo>(),
            index,
            ..Default::default()
        };
        ioctl_ptr(
            &self.fd,
            VFIO_DEVICE_GET_IRQ_INFO,
            &mut info,
            "VFIO_DEVICE_GET_IRQ_INFO",
        )?;
        Ok(info)
    }

    /// `VFIO_DEVICE_SET_IRQS` with `DATA_EVENTFD | ACTION_TRIGGER`: interrupt 0 of `index`
    /// signals `efd` (for MSI this enables MSI on the function).
    pub fn set_irq_eventfd(&self, index: u32, efd: &EventFd) -> Result<()> {
        let mut set = VfioIrqSetEventfd {
            argsz: argsz::<VfioIrqSetEventfd>(),
            flags: VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER,
            index,
            start: 0,
            count: 1,
            fd: efd.fd.as_raw_fd(),
        };
        ioctl_ptr(
            &self.fd,
            VFIO_DEVICE_SET_IRQS,
            &mut set,
            "VFIO_DEVICE_SET_IRQS (eventfd)",
        )?;
        Ok(())
    }

    /// `VFIO_DEVICE_SET_IRQS` with `DATA_NONE | ACTION_UNMASK` for interrupt 0 of `index`: the
    /// unmask an `AUTOMASKED` (INTx) line needs after each signal.
    pub fn unmask_irq(&self, index: u32) -> Result<()> {
        self.irq_set_none(
            index,
            VFIO_IRQ_SET_ACTION_UNMASK,
            1,
            "VFIO_DEVICE_SET_IRQS (unmask)",
        )
    }

    /// `VFIO_DEVICE_SET_IRQS` with `DATA_NONE | ACTION_TRIGGER` and count 0: disables the
    /// whole index.
    pub fn disable_irq(&self, index: u32) -> Result<()> {
        self.irq_set_none(
            index,
            VFIO_IRQ_SET_ACTION_TRIGGER,
            0,
            "VFIO_DEVICE_SET_IRQS (disable)",
        )
    }

    fn irq_set_none(&self, index: u32, action: u32, count: u32, what: &str) -> Result<()> {
        let mut set = VfioIrqSet {
            argsz: argsz::<VfioIrqSet>(),
            flags: VFIO_IRQ_SET_DATA_NONE | action,
            index,
            start: 0,
            count,
        };
        ioctl_ptr(&self.fd, VFIO_DEVICE_SET_IRQS, &mut set, what)?;
        Ok(())
    }
}

/// An eventfd (`eventfd(2)`, non-blocking) that VFIO signals on an interrupt.
#[derive(Debug)]
pub struct EventFd {
    fd: OwnedFd,
}

impl EventFd {
    /// A new eventfd with count 0.
    pub fn new() -> Result<Self> {
        // SAFETY: eventfd takes no pointers; the result is checked before it is used.
        let r = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if r < 0 {
            return Err(AgentError::last_os("eventfd"));
        }
        // SAFETY: `r` is a new descriptor returned to us alone; `OwnedFd` closes it once.
        let fd = unsafe { OwnedFd::from_raw_fd(r) };
        Ok(EventFd { fd })
    }

    /// Adds `n` to the count, as the kernel does when it signals.
    pub fn signal(&self, n: u64) -> Result<()> {
        let b = n.to_ne_bytes();
        // SAFETY: `self.fd` is an open eventfd we own; `b` is 8 readable bytes, the count
        // passed (an eventfd takes exactly 8).
        let r = unsafe { libc::write(self.fd.as_raw_fd(), b.as_ptr().cast(), b.len()) };
        if r != 8 {
            return Err(AgentError::last_os("write eventfd"));
        }
        Ok(())
    }

    /// Waits up to `timeout` for the count to become nonzero (`poll(2)`), then reads and
    /// resets it. Returns the count, or `None` if nothing was signalled in time.
    pub fn wait(&self, timeout: Duration) -> Result<Option<u64>> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            // Round up so that a short remaining wait still polls once with a timeout.
            let ms = left.as_micros().div_ceil(1000).min(i32::MAX as u128) as libc::c_int;
            let mut pfd = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: `pfd` is one valid, exclusively borrowed pollfd and the count passed is
            // 1; `self.fd` stays open across the call.
            let r = unsafe { libc::poll(&mut pfd, 1, ms) };
            if r < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted && !left.is_zero() {
                    continue;
                }
                return Err(AgentError::io("poll eventfd", e));
            }
            if r == 0 {
                return Ok(None);
            }
            let mut b = [0u8; 8];
            // SAFETY: `b` is 8 writable bytes, the count passed; `self.fd` is an open
            // eventfd we own.
            let n = unsafe { libc::read(self.fd.as_raw_fd(), b.as_mut_ptr().cast(), b.len()) };
            if n == 8 {
                return Ok(Some(u64::from_ne_bytes(b)));
            }
            let e = std::io::Error::last_os_error();
            if n < 0 && e.kind() == std::io::ErrorKind::WouldBlock {
                // Another reader took the count between poll and read.
                if left.is_zero() {
                    return Ok(None);
                }
                continue;
            }
            return Err(AgentError::io("read eventfd", e));
        }
    }
}

/// An anonymous, private buffer, every page touched so that it is backed.
#[derive(Debug)]
pub struct DmaBuffer {
    /// The whole mapping (larger than the buffer when it was aligned).
    map: *mut libc::c_void,
    map_len: usize,
    /// The buffer inside it.
    addr: *mut libc::c_void,
    len: usize,
}

/// 2 MiB: the x86 large page, and the alignment [`DmaBuffer::new_huge`] gives.
pub const HUGE_PAGE: usize = 2 << 20;

impl DmaBuffer {
    /// Maps `len` bytes (a multiple of the page size) and writes `fill` into every byte.
    pub fn new(len: usize, fill: u8) -> Result<Self> {
        Self::create(len, fill, false)
    }

    /// Like [`DmaBuffer::new`], but 2 MiB-aligned and advised to be backed by transparent
    /// huge pages (`MADV_HUGEPAGE`), so that VFIO can map it in 2 MiB pieces when the kernel
    /// gives contiguous frames.
    pub fn new_huge(len: usize, fill: u8) -> Result<Self> {
        Self::create(len, fill, true)
    }

    fn create(len: usize, fill: u8, huge: bool) -> Result<Self> {
        if len == 0 {
            return Err(AgentError::Vfio("empty buffer".into()));
        }
        let map_len = if huge {
            len.checked_add(HUGE_PAGE)
                .ok_or_else(|| AgentError::Vfio("buffer too large".into()))?
        } else {
            len
        };
        // SAFETY: an anonymous private mapping with a null hint: the kernel picks an unused
        // range, so no existing memory is affected; the result is checked against MAP_FAILED.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if map == libc::MAP_FAILED {
            return Err(AgentError::last_os("mmap"));
        }
        let offset = if huge {
            (HUGE_PAGE - (map as usize) % HUGE_PAGE) % HUGE_PAGE
        } else {
            0
        };
        let b = DmaBuffer {
            map,
            map_len,
            // In bounds: offset < HUGE_PAGE and map_len = len + HUGE_PAGE.
            addr: map.wrapping_byte_add(offset),
            len,
        };
        if huge {
            // SAFETY: [addr, addr + len) lies inside the mapping created above, which `b`
            // owns; madvise only changes how the kernel backs it.
            if unsafe { libc::madvise(b.addr, len, libc::MADV_HUGEPAGE) } != 0 {
                return Err(AgentError::last_os("madvise(MADV_HUGEPAGE)"));
            }
        }
        // SAFETY: [addr, addr + len) is inside a fresh readable and writable mapping owned by
        // `b` and not aliased.
        unsafe { std::ptr::write_bytes(b.addr.cast::<u8>(), fill, len) };
        Ok(b)
    }

    /// Locks the buffer's pages in memory (`mlock(2)`): they are backed already (every byte
    /// was written), and locked they stay resident (not swapped out) while the buffer lives.
    /// `mlock` does not stop the kernel from migrating a page to another frame (compaction,
    /// or a long-term pin such as `MAP_DMA`'s moving it out of a movable zone); only a pin
    /// fixes the frame. `munmap` in [`Drop`] unlocks it.
    pub fn lock(&self) -> Result<()> {
        // SAFETY: [addr, addr + len) lies inside the live mapping `self` owns; mlock only
        // changes whether the kernel may evict those pages and reads or writes no memory of
        // ours.
        if unsafe { libc::mlock(self.addr, self.len) } != 0 {
            return Err(AgentError::last_os(format!("mlock {:#x} bytes", self.len)));
        }
        Ok(())
    }

    /// The buffer's process virtual address.
    pub fn vaddr(&self) -> u64 {
        self.addr as u64
    }

    /// Its length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Never true: a buffer holds at least one byte.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn check_range(&self, offset: usize, len: usize) -> Result<()> {
        if offset.checked_add(len).is_none_or(|e| e > self.len) {
            return Err(AgentError::Vfio(format!(
                "{len} bytes at {offset:#x} outside a {:#x}-byte buffer",
                self.len
            )));
        }
        Ok(())
    }

    /// Copies `out.len()` bytes at `offset` of the buffer into `out`.
    ///
    /// A device writes the buffer by DMA only while the agent is inside a system call that
    /// starts it (a doorbell write) or waits for it (a status read): never during this copy,
    /// and the compiler cannot carry a value read before such a call past it, since the
    /// buffer's address has escaped to the kernel.
    pub fn read_at(&self, offset: usize, out: &mut [u8]) -> Result<()> {
        self.check_range(offset, out.len())?;
        // SAFETY: [addr + offset, addr + offset + out.len()) is inside the live mapping `self`
        // owns (checked above); `out` is a distinct Rust buffer, so the ranges do not overlap.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.addr.cast::<u8>().add(offset),
                out.as_mut_ptr(),
                out.len(),
            )
        };
        Ok(())
    }

    /// Copies `data` into the buffer at `offset` (see [`DmaBuffer::read_at`] on DMA).
    pub fn write_at(&mut self, offset: usize, data: &[u8]) -> Result<()> {
        self.check_range(offset, data.len())?;
        // SAFETY: [addr + offset, addr + offset + data.len()) is inside the live, writable
        // mapping `self` owns and borrows exclusively (checked above); `data` is a distinct
        // Rust buffer, so the ranges do not overlap.
        unsafe {
            std::ptr::copy_nonoverlapping(
                data.as_ptr(),
                self.addr.cast::<u8>().add(offset),
                data.len(),
            )
        };
        Ok(())
    }

    /// The whole buffer's contents.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = vec![0u8; self.len];
        // In range by construction.
        self.read_at(0, &mut v).expect("whole buffer is in range");
        v
    }
}

impl Drop for DmaBuffer {
    fn drop(&mut self) {
        // SAFETY: `map`/`map_len` are exactly the mapping created in `create`, unmapped only
        // here.
        unsafe { libc::munmap(self.map, self.map_len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{offset_of, size_of};

    #[test]
    fn ioctl_numbers_match_uapi() {
        // _IO(';', 100 + n) == 0x3b00 | (100 + n)
        assert_eq!(VFIO_GET_API_VERSION, 0x3b64);
        assert_eq!(VFIO_CHECK_EXTENSION, 0x3b65);
        assert_eq!(VFIO_SET_IOMMU, 0x3b66);
        assert_eq!(VFIO_GROUP_GET_STATUS, 0x3b67);
        assert_eq!(VFIO_GROUP_SET_CONTAINER, 0x3b68);
        assert_eq!(VFIO_GROUP_UNSET_CONTAINER, 0x3b69);
        assert_eq!(VFIO_IOMMU_GET_INFO, 0x3b70);
        assert_eq!(VFIO_IOMMU_MAP_DMA, 0x3b71);
        assert_eq!(VFIO_IOMMU_UNMAP_DMA, 0x3b72);
        // linux/vfio.h: VFIO_GROUP_GET_DEVICE_FD _IO(VFIO_TYPE, VFIO_BASE + 6),
        // VFIO_DEVICE_GET_REGION_INFO + 8, VFIO_DEVICE_GET_IRQ_INFO + 9,
        // VFIO_DEVICE_SET_IRQS + 10.
        assert_eq!(VFIO_GROUP_GET_DEVICE_FD, 0x3b6a);
        assert_eq!(VFIO_DEVICE_GET_REGION_INFO, 0x3b6c);
        assert_eq!(VFIO_DEVICE_GET_IRQ_INFO, 0x3b6d);
        assert_eq!(VFIO_DEVICE_SET_IRQS, 0x3b6e);
    }

    #[test]
    fn device_flags_and_indexes_match_uapi() {
        assert_eq!(
            [
                VFIO_REGION_INFO_FLAG_READ,
                VFIO_REGION_INFO_FLAG_WRITE,
                VFIO_REGION_INFO_FLAG_MMAP,
                VFIO_REGION_INFO_FLAG_CAPS
            ],
            [1, 2, 4, 8]
        );
        assert_eq!(
            [
                VFIO_IRQ_INFO_EVENTFD,
                VFIO_IRQ_INFO_MASKABLE,
                VFIO_IRQ_INFO_AUTOMASKED,
                VFIO_IRQ_INFO_NORESIZE
            ],
            [1, 2, 4, 8]
        );
        assert_eq!(
            [
                VFIO_IRQ_SET_DATA_NONE,
                VFIO_IRQ_SET_DATA_BOOL,
                VFIO_IRQ_SET_DATA_EVENTFD,
                VFIO_IRQ_SET_ACTION_MASK,
                VFIO_IRQ_SET_ACTION_UNMASK,
                VFIO_IRQ_SET_ACTION_TRIGGER
            ],
            [1, 2, 4, 8, 16, 32]
        );
        // The enums after "fixed region and IRQ index mapping" in linux/vfio.h.
        assert_eq!(
            (VFIO_PCI_BAR0_REGION_INDEX, VFIO_PCI_CONFIG_REGION_INDEX),
            (0, 7)
        );
        assert_eq!(
            (
                VFIO_PCI_INTX_IRQ_INDEX,
                VFIO_PCI_MSI_IRQ_INDEX,
                VFIO_PCI_MSIX_IRQ_INDEX
            ),
            (0, 1, 2)
        );
        // linux/pci_regs.h
        assert_eq!(
            (PCI_COMMAND, PCI_COMMAND_MEMORY, PCI_COMMAND_MASTER),
            (0x04, 0x2, 0x4)
        );
    }

    #[test]
    fn struct_layouts_match_uapi() {
        assert_eq!(size_of::<VfioGroupStatus>(), 8);
        assert_eq!(size_of::<VfioIommuType1Info>(), 24);
        assert_eq!(offset_of!(VfioIommuType1Info, iova_pgsizes), 8);
        assert_eq!(offset_of!(VfioIommuType1Info, cap_offset), 16);
        assert_eq!(size_of::<VfioIommuType1DmaMap>(), 32);
        assert_eq!(offset_of!(VfioIommuType1DmaMap, vaddr), 8);
        assert_eq!(offset_of!(VfioIommuType1DmaMap, iova), 16);
        assert_eq!(offset_of!(VfioIommuType1DmaMap, size), 24);
        assert_eq!(size_of::<VfioIommuType1DmaUnmap>(), 24);
        assert_eq!(offset_of!(VfioIommuType1DmaUnmap, iova), 8);
        assert_eq!(offset_of!(VfioIommuType1DmaUnmap, size), 16);
        assert_eq!(size_of::<VfioRegionInfo>(), 32);
        assert_eq!(offset_of!(VfioRegionInfo, flags), 4);
        assert_eq!(offset_of!(VfioRegionInfo, index), 8);
        assert_eq!(offset_of!(VfioRegionInfo, cap_offset), 12);
        assert_eq!(offset_of!(VfioRegionInfo, size), 16);
        assert_eq!(offset_of!(VfioRegionInfo, offset), 24);
        assert_eq!(size_of::<VfioIrqInfo>(), 16);
        assert_eq!(offset_of!(VfioIrqInfo, index), 8);
        assert_eq!(offset_of!(VfioIrqInfo, count), 12);
        // struct vfio_irq_set is 20 bytes; data[] (here one s32 eventfd) follows at 20.
        assert_eq!(size_of::<VfioIrqSet>(), 20);
        assert_eq!(offset_of!(VfioIrqSet, index), 8);
        assert_eq!(offset_of!(VfioIrqSet, start), 12);
        assert_eq!(offset_of!(VfioIrqSet, count), 16);
        assert_eq!(size_of::<VfioIrqSetEventfd>(), 24);
        assert_eq!(offset_of!(VfioIrqSetEventfd, index), 8);
        assert_eq!(offset_of!(VfioIrqSetEventfd, start), 12);
        assert_eq!(offset_of!(VfioIrqSetEventfd, count), 16);
        assert_eq!(offset_of!(VfioIrqSetEventfd, fd), 20);
    }

    /// The bytes of a `VFIO_IOMMU_GET_INFO` answer: the 24-byte info with `flags` and
    /// `cap_offset`, then `caps` as they lie from offset 24.
    fn info_bytes(flags: u32, cap_offset: u32, caps: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&(24 + caps.len() as u32).to_ne_bytes());
        b.extend_from_slice(&flags.to_ne_bytes());
        b.extend_from_slice(&0x1000u64.to_ne_bytes());
        b.extend_from_slice(&cap_offset.to_ne_bytes());
        b.extend_from_slice(&0u32.to_ne_bytes());
        b.extend_from_slice(caps);
        b
    }

    /// A capability header.
    fn cap_header(id: u16, next: u32) -> Vec<u8> {
        let mut b = id.to_ne_bytes().to_vec();
        b.extend_from_slice(&1u16.to_ne_bytes());
        b.extend_from_slice(&next.to_ne_bytes());
        b
    }

    /// An IOVA range capability with `next` and `ranges` (`nr_iovas` given apart, so that a
    /// count the ranges do not back can be built).
    fn iova_cap(next: u32, nr_iovas: u32, ranges: &[(u64, u64)]) -> Vec<u8> {
        let mut b = cap_header(VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE, next);
        b.extend_from_slice(&nr_iovas.to_ne_bytes());
        b.extend_from_slice(&0u32.to_ne_bytes());
        for (start, end) in ranges {
            b.extend_from_slice(&start.to_ne_bytes());
            b.extend_from_slice(&end.to_ne_bytes());
        }
        b
    }

    const FLAGS: u32 = VFIO_IOMMU_INFO_PGSIZES | VFIO_IOMMU_INFO_CAPS;

    #[test]
    fn iova_range_capability_is_found_along_the_chain() {
        assert_eq!(
            (VFIO_IOMMU_INFO_CAPS, VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE),
            (2, 1)
        );
        // The x86 layout: everything below the MSI window, and above it to 39 bits.
        let ranges = [(0, 0xfedf_ffff), (0xfef0_0000, 0x7f_ffff_ffff)];
        let want = Some(vec![0..=0xfedf_ffff, 0xfef0_0000..=0x7f_ffff_ffff]);
        let b = info_bytes(FLAGS, 24, &iova_cap(0, 2, &ranges));
        assert_eq!(parse_iova_ranges(&b).unwrap(), want);
        // Behind another capability (migration, id 2, 16 bytes in the kernel's order).
        let mut caps = cap_header(2, 40);
        caps.extend_from_slice(&[0; 8]);
        caps.extend(iova_cap(0, 2, &ranges));
        assert_eq!(
            parse_iova_ranges(&info_bytes(FLAGS, 24, &caps)).unwrap(),
            want
        );
        // One range that is a single page, and the whole space.
        let b = info_bytes(FLAGS, 24, &iova_cap(0, 1, &[(0x1000, 0x1000)]));
        assert_eq!(parse_iova_ranges(&b).unwrap(), Some(vec![0x1000..=0x1000]));
        let b = info_bytes(FLAGS, 24, &iova_cap(0, 1, &[(0, u64::MAX)]));
        assert_eq!(parse_iova_ranges(&b).unwrap(), Some(vec![0..=u64::MAX]));
    }

    #[test]
    fn no_iova_range_capability_is_none() {
        let caps = iova_cap(0, 1, &[(0, 0xffff)]);
        // No chain flag (an old kernel, or the first of the two calls' 24 bytes).
        let b = info_bytes(VFIO_IOMMU_INFO_PGSIZES, 24, &caps);
        assert_eq!(parse_iova_ranges(&b).unwrap(), None);
        assert_eq!(parse_iova_ranges(&info_bytes(FLAGS, 0, &[])).unwrap(), None);
        // A chain of one other capability.
        let mut other = cap_header(3, 0);
        other.extend_from_slice(&[0; 8]);
        let b = info_bytes(FLAGS, 24, &other);
        assert_eq!(parse_iova_ranges(&b).unwrap(), None);
    }

    #[test]
    fn malformed_capability_chains_are_errors() {
        let err = |b: &[u8]| match parse_iova_ranges(b) {
            Err(AgentError::Vfio(m)) => m,
            other => panic!("{other:?}"),
        };
        assert!(err(&[0; 12]).contains("no info"));
        // The first header beyond the bytes.
        assert!(err(&info_bytes(FLAGS, 200, &[])).contains("outside"));
        // A header pointing at itself.
        let m = err(&info_bytes(FLAGS, 24, &cap_header(2, 24)));
        assert!(m.contains("loops"), "{m}");
        // Two headers pointing at each other.
        let mut caps = cap_header(2, 32);
        caps.extend(cap_header(3, 24));
        assert!(err(&info_bytes(FLAGS, 24, &caps)).contains("loops"));
        // More ranges counted than the bytes hold, and a count that overflows.
        let m = err(&info_bytes(FLAGS, 24, &iova_cap(0, 3, &[(0, 0xfff)])));
        assert!(m.contains("3 IOVA ranges"), "{m}");
        let m = err(&info_bytes(FLAGS, 24, &iova_cap(0, u32::MAX, &[])));
        assert!(m.contains("do not fit"), "{m}");
        // The count itself cut off.
        let cut = &cap_header(VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE, 0);
        assert!(err(&info_bytes(FLAGS, 24, cut)).contains("count"));
        // A range ending below its start.
        let m = err(&info_bytes(FLAGS, 24, &iova_cap(0, 1, &[(0x2000, 0x1fff)])));
        assert!(m.contains("0x2000..=0x1fff"), "{m}");
    }

    /// A `Device` over a plain file, so that the region arithmetic and byte order of
    /// `read*`/`write*` can be checked without VFIO.
    fn file_device(tag: &str, len: usize) -> (Device, std::path::PathBuf) {
        let path =
            std::env::temp_dir().join(format!("guest-agent-vfio-{tag}-{}", std::process::id()));
        let f = std::fs::File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        f.set_len(len as u64).unwrap();
        let dev = Device {
            fd: f.into(),
            name: tag.into(),
        };
        (dev, path)
    }

    #[test]
    fn region_accesses_land_at_region_offset_little_endian() {
        let (dev, path) = file_device("rw", 0x3000);
        let r = Region {
            index: 0,
            flags: VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE,
            size: 0x1000,
            offset: 0x2000,
        };
        assert!(r.read_write());
        dev.write32(&r, 0x8, 0x1122_3344).unwrap();
        dev.write64(&r, 0x28, 0x0102_0304_0506_0708).unwrap();
        dev.write16(&r, 0x4, 0xbeef).unwrap();
        let raw = std::fs::read(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(&raw[0x2008..0x200c], &[0x44, 0x33, 0x22, 0x11]);
        assert_eq!(
            &raw[0x2028..0x2030],
            &[0x08, 0x07, 0x06, 0x05, 0x04, 0x03, 0x02, 0x01]
        );
        assert_eq!(&raw[0x2004..0x2006], &[0xef, 0xbe]);
        assert!(
            raw[..0x2000].iter().all(|&b| b == 0),
            "nothing below the region"
        );
        assert_eq!(dev.read32(&r, 0x8).unwrap(), 0x1122_3344);
        assert_eq!(dev.read32(&r, 0x2c).unwrap(), 0x0102_0304, "high half");
        assert_eq!(dev.read64(&r, 0x28).unwrap(), 0x0102_0304_0506_0708);
        assert_eq!(dev.read16(&r, 0x4).unwrap(), 0xbeef);
    }

    #[test]
    fn region_accesses_outside_the_region_are_refused() {
        let (dev, path) = file_device("bounds", 0x2000);
        let r = Region {
            index: 3,
            flags: VFIO_REGION_INFO_FLAG_READ,
            size: 0x1000,
            offset: 0x1000,
        };
        assert!(!r.read_write());
        assert!(matches!(dev.read32(&r, 0xffc), Ok(0)));
        assert!(matches!(dev.read32(&r, 0xffd), Err(AgentError::Vfio(_))));
        assert!(matches!(dev.read64(&r, 0xffc), Err(AgentError::Vfio(_))));
        assert!(matches!(
            dev.write32(&r, u64::MAX - 1, 0),
            Err(AgentError::Vfio(_))
        ));
        assert_eq!(r.file_offset(0x10, 4).unwrap(), 0x1010);
        // A short read (the file ends inside the region) is an error, not zeros.
        let r = Region { size: 0x2000, ..r };
        assert!(matches!(dev.read32(&r, 0x1000), Err(AgentError::Vfio(_))));
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn eventfd_wait_is_bounded_and_returns_the_count() {
        let e = EventFd::new().unwrap();
        let t = Instant::now();
        assert_eq!(e.wait(Duration::from_millis(30)).unwrap(), None);
        assert!(
            t.elapsed() >= Duration::from_millis(25),
            "{:?}",
            t.elapsed()
        );
        e.signal(2).unwrap();
        e.signal(3).unwrap();
        assert_eq!(e.wait(Duration::from_secs(5)).unwrap(), Some(5));
        assert_eq!(e.wait(Duration::ZERO).unwrap(), None, "the read reset it");
        e.signal(1).unwrap();
        assert_eq!(e.wait(Duration::ZERO).unwrap(), Some(1));
    }

    #[test]
    fn buffer_reads_and_writes_in_range_only() {
        let mut b = DmaBuffer::new(4096, 0x11).unwrap();
        b.write_at(4090, &[1, 2, 3, 4, 5, 6]).unwrap();
        let mut out = [0u8; 8];
        b.read_at(4088, &mut out).unwrap();
        assert_eq!(out, [0x11, 0x11, 1, 2, 3, 4, 5, 6]);
        assert!(b.write_at(4091, &[0; 6]).is_err());
        assert!(b.read_at(usize::MAX, &mut out).is_err());
        let v = b.to_vec();
        assert_eq!(v.len(), 4096);
        assert_eq!((v[0], v[4095]), (0x11, 6));
    }

    #[test]
    fn buffer_is_filled_and_page_aligned() {
        let b = DmaBuffer::new(8192, 0xa5).unwrap();
        assert_eq!(b.vaddr() % 4096, 0);
        assert_eq!(b.len(), 8192);
        // SAFETY: the buffer is a live 8192-byte mapping owned by `b`.
        let s = unsafe { std::slice::from_raw_parts(b.vaddr() as *const u8, b.len()) };
        assert!(s.iter().all(|&x| x == 0xa5));
        assert!(DmaBuffer::new(0, 0).is_err());
    }

    #[test]
    fn huge_buffer_is_2mib_aligned_and_filled() {
        let b = DmaBuffer::new_huge(HUGE_PAGE, 0x3c).unwrap();
        assert_eq!(b.vaddr() % HUGE_PAGE as u64, 0);
        assert_eq!(b.len(), HUGE_PAGE);
        // SAFETY: the buffer is a live HUGE_PAGE-byte region owned by `b`.
        let s = unsafe { std::slice::from_raw_parts(b.vaddr() as *const u8, b.len()) };
        assert!(s.iter().all(|&x| x == 0x3c));
        assert!(DmaBuffer::new_huge(0, 0).is_err());
    }

    #[test]
    fn missing_group_is_a_typed_error() {
        // No host in CI has VFIO group 4294967295.
        let e = Group::open(u32::MAX).unwrap_err();
        assert!(matches!(e, AgentError::Os { .. }), "{e}");
        assert!(e.to_string().contains("/dev/vfio/4294967295"), "{e}");
    }

    #[test]
    fn buffer_locks() {
        // 2 pages fit the smallest RLIMIT_MEMLOCK a test runner has (64 KiB); a runner with
        // a zero limit and no CAP_IPC_LOCK gets a typed error rather than a panic.
        let b = DmaBuffer::new(8192, 0x77).unwrap();
        match b.lock() {
            Ok(()) => {}
            Err(e) => assert!(matches!(e, AgentError::Os { .. }), "{e}"),
        }
        assert!(b.to_vec().iter().all(|&x| x == 0x77));
    }
}

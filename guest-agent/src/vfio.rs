//! The VFIO container/group API, type1 IOMMU backend.
//!
//! Numbers and layouts from the kernel UAPI header `include/uapi/linux/vfio.h`: every ioctl is
//! `_IO(VFIO_TYPE, VFIO_BASE + n)` with `VFIO_TYPE = ';'` and `VFIO_BASE = 100` (no size is
//! encoded: each structure starts with `argsz`, which the caller sets).

use crate::{AgentError, Result};
use std::fs::OpenOptions;
use std::os::fd::{AsRawFd, OwnedFd};

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
        ioctl_val(
            &self.fd,
            VFIO_SET_IOMMU,
            libc::c_ulong::from(kind),
            "VFIO_SET_IOMMU",
        )?;
        Ok(kind)
    }

    /// `VFIO_IOMMU_GET_INFO`: the supported IOVA page sizes.
    pub fn iova_pgsizes(&self) -> Result<u64> {
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
        if info.flags & VFIO_IOMMU_INFO_PGSIZES == 0 {
            return Err(AgentError::Vfio("IOMMU info gives no page sizes".into()));
        }
        Ok(info.iova_pgsizes)
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
    }
}

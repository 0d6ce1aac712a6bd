//! Plain value types shared by the core layer and its users.

use std::fmt;
use std::ops::RangeInclusive;

use crate::request::{AccessKind, Perms, Translation};
use crate::trace::Trace;

/// A domain identifier as the driver chose it (virtio-iommu `domain` field).
pub type DomainId = u32;

/// An endpoint identifier. For PCI endpoints this is the requester ID of PCI segment 0:
/// `bus << 8 | device << 3 | function` (the value the VIOT table's PCI range node maps to).
pub type EndpointId = u32;

/// Permission and memory-type flags of a mapping (virtio 1.3 §5.13.6.5, `VIRTIO_IOMMU_MAP_F_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct MapFlags {
    /// Reads are allowed (`VIRTIO_IOMMU_MAP_F_READ`).
    pub read: bool,
    /// Writes are allowed (`VIRTIO_IOMMU_MAP_F_WRITE`).
    pub write: bool,
    /// The target is device memory (`VIRTIO_IOMMU_MAP_F_MMIO`).
    pub mmio: bool,
}

impl MapFlags {
    /// Read and write access to normal memory.
    pub const RW: Self = Self {
        read: true,
        write: true,
        mmio: false,
    };

    /// The rights a translation through this mapping grants. virtio-iommu mappings have no
    /// execute or user flag: execution is not restricted beyond read, as in a VT-d second
    /// stage without SLEE, and user requests are not restricted at all.
    pub fn perms(self) -> Perms {
        let mut p = Perms::U;
        p.set(Perms::R | Perms::X, self.read);
        p.set(Perms::W, self.write);
        p
    }

    /// Whether this mapping allows `access`.
    pub fn allows(self, access: AccessKind) -> bool {
        access.allowed_by(self.perms())
    }
}

impl fmt::Display for MapFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}{}{}",
            if self.read { "r" } else { "-" },
            if self.write { "w" } else { "-" },
            if self.mmio { "m" } else { "" }
        )
    }
}

/// One mapping: the inclusive IOVA range `[virt_start, virt_end]` maps to the physical range
/// starting at `phys_start` (virtio 1.3 §5.13.6.5: `PA = VA - virt_start + phys_start`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mapping {
    /// First IOVA of the mapping.
    pub virt_start: u64,
    /// Last IOVA of the mapping (inclusive).
    pub virt_end: u64,
    /// Physical address `virt_start` maps to.
    pub phys_start: u64,
    /// Access permissions and memory type.
    pub flags: MapFlags,
}

impl Mapping {
    /// Number of bytes covered, or `None` for the full 64-bit space (which cannot be counted in
    /// a `u64`).
    pub fn size(&self) -> Option<u64> {
        (self.virt_end - self.virt_start).checked_add(1)
    }

    /// Translates `iova`, which must lie in the mapping.
    pub fn translate(&self, iova: u64) -> u64 {
        self.phys_start.wrapping_add(iova - self.virt_start)
    }
}

/// The subtype of a reserved region (virtio 1.3 §5.13.6.8.1, `VIRTIO_IOMMU_RESV_MEM_T_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResvKind {
    /// `VIRTIO_IOMMU_RESV_MEM_T_RESERVED` (0): the driver must not map these addresses.
    Reserved,
    /// `VIRTIO_IOMMU_RESV_MEM_T_MSI` (1): an MSI doorbell, translated by the platform.
    Msi,
}

/// A reserved IOVA region reported by PROBE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResvRegion {
    /// What kind of reserved region this is.
    pub kind: ResvKind,
    /// First address (inclusive).
    pub start: u64,
    /// Last address (inclusive).
    pub end: u64,
}

impl ResvRegion {
    /// The x86 MSI window `0xfee0_0000..=0xfeef_ffff`: writes there are interrupt messages, not
    /// memory writes (Intel SDM vol. 3 §11.11.1; VT-d spec rev 4.1 §3.15 "Handling Requests to
    /// Interrupt Address Range").
    pub const X86_MSI: Self = Self {
        kind: ResvKind::Msi,
        start: 0xfee0_0000,
        end: 0xfeef_ffff,
    };

    /// Whether the region overlaps `[start, end]`.
    pub fn overlaps(&self, start: u64, end: u64) -> bool {
        self.start <= end && start <= self.end
    }
}

/// A set of endpoint ids, as inclusive ranges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointSet {
    ranges: Vec<RangeInclusive<EndpointId>>,
}

impl EndpointSet {
    /// Every PCI requester ID of segment 0 (`0x0000..=0xffff`).
    pub fn all_pci() -> Self {
        Self {
            ranges: vec![0..=0xffff],
        }
    }

    /// A set made of the given ranges (empty ranges are dropped).
    pub fn from_ranges(ranges: impl IntoIterator<Item = RangeInclusive<EndpointId>>) -> Self {
        let mut ranges: Vec<_> = ranges.into_iter().filter(|r| !r.is_empty()).collect();
        ranges.sort_by_key(|r| *r.start());
        Self { ranges }
    }

    /// Whether `ep` is in the set.
    pub fn contains(&self, ep: EndpointId) -> bool {
        self.ranges.iter().any(|r| r.contains(&ep))
    }

    /// The ranges of the set.
    pub fn ranges(&self) -> &[RangeInclusive<EndpointId>] {
        &self.ranges
    }

    /// Iterates over every endpoint id in the set (ids present in several ranges repeat).
    pub fn iter(&self) -> impl Iterator<Item = EndpointId> + '_ {
        self.ranges.iter().flat_map(|r| r.clone())
    }
}

/// Why a translation faulted, in the terms of the virtio-iommu fault report
/// (virtio 1.3 §5.13.6.9, `VIRTIO_IOMMU_FAULT_R_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultReason {
    /// `VIRTIO_IOMMU_FAULT_R_UNKNOWN`: an internal error (e.g. a table read failed).
    Unknown,
    /// `VIRTIO_IOMMU_FAULT_R_DOMAIN`: the endpoint is not attached and not in bypass, or blocked.
    Domain,
    /// `VIRTIO_IOMMU_FAULT_R_MAPPING`: no mapping, or the mapping forbids the access.
    Mapping,
}

/// A translation fault, as the core reports it (on the event queue, to the control socket).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    /// The fault class, in virtio-iommu's terms.
    pub reason: FaultReason,
    /// The endpoint that made the access.
    pub endpoint: EndpointId,
    /// The faulting IOVA.
    pub address: u64,
    /// The access kind.
    pub access: AccessKind,
    /// The unit's own report: vendor-neutral kind and site, the vendor's code, whether the
    /// unit recorded it.
    pub unit: crate::request::Fault,
}

/// The answer to a traced translation: the result plus the trace of what the unit did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The translation, or the fault.
    pub result: Result<Translation, Fault>,
    /// What the unit did, event by event.
    pub trace: Trace,
}

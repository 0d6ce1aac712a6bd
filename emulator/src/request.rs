//! Vendor-neutral DMA request, translation and fault types shared by every hardware unit, the
//! core and the fronts.

use crate::trace::Stage;

/// What a DMA request does with the memory it targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AccessKind {
    /// A memory read.
    Read,
    /// A memory write.
    Write,
    /// An atomic operation: needs read and write permission.
    Atomic,
    /// An instruction fetch (PCIe "execute requested"): needs read and execute permission.
    Execute,
}

impl AccessKind {
    /// Whether the access needs read permission.
    pub fn reads(self) -> bool {
        !matches!(self, AccessKind::Write)
    }

    /// Whether the access needs write permission.
    pub fn writes(self) -> bool {
        matches!(self, AccessKind::Write | AccessKind::Atomic)
    }

    /// Whether the access needs execute permission.
    pub fn executes(self) -> bool {
        matches!(self, AccessKind::Execute)
    }

    /// Whether `perms` grant this access (user privilege is the walk's business).
    pub fn allowed_by(self, perms: Perms) -> bool {
        (!self.reads() || perms.read())
            && (!self.writes() || perms.write())
            && (!self.executes() || perms.execute())
    }
}

/// The PCIe address type (AT) of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum AddressType {
    /// An untranslated request (AT = 00b): the address is an IOVA to translate.
    #[default]
    Untranslated,
    /// An ATS translation request (AT = 01b) from a device TLB.
    TranslationRequest,
}

impl AddressType {
    /// The two-bit AT encoding (PCIe base spec, "Address Type").
    pub fn bits(self) -> u8 {
        match self {
            AddressType::Untranslated => 0,
            AddressType::TranslationRequest => 1,
        }
    }
}

/// One DMA request as it arrives at the IOMMU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DmaRequest {
    /// The PCI requester id (bus << 8 | device << 3 | function).
    pub source_id: u16,
    /// The PASID prefix, if the request carries one.
    pub pasid: Option<u32>,
    /// The input (IO virtual) address.
    pub addr: u64,
    /// The number of bytes accessed; zero is treated as one byte.
    pub len: u64,
    /// What the request does.
    pub access: AccessKind,
    /// Whether the request asks for supervisor privilege (PCIe PMR).
    pub privileged: bool,
    /// The PCIe address type.
    pub at: AddressType,
}

impl DmaRequest {
    /// An untranslated, unprivileged request without PASID.
    pub fn new(source_id: u16, addr: u64, len: u64, access: AccessKind) -> Self {
        Self {
            source_id,
            pasid: None,
            addr,
            len,
            access,
            privileged: false,
            at: AddressType::Untranslated,
        }
    }

    /// The same request tagged with `pasid`.
    pub fn with_pasid(mut self, pasid: u32) -> Self {
        self.pasid = Some(pasid);
        self
    }

    /// The same request with supervisor privilege requested.
    pub fn privileged(mut self) -> Self {
        self.privileged = true;
        self
    }
}

/// Access rights granted by a translation: the walkers' permission set (R, W, X and U).
pub use pagewalk::Perms;

/// A successful translation of (the first page of) a request.
///
/// For an identity translation (translation disabled, pass-through) `page_shift` is 12 and `len`
/// covers the whole request. An ATS translation request that finds no page, or a page that
/// grants nothing, gets the hardware's R = W = 0 completion: empty `perms` and `addr` 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Translation {
    /// The output (system physical) address of the request's first byte.
    pub addr: u64,
    /// Bytes of the request, from its first byte, that this translation covers. A request that
    /// crosses the end of the translated page is covered only up to that end; the rest needs
    /// another request.
    pub len: u64,
    /// Log2 of the size of the page that translated the request (12, 21, 30, ...).
    pub page_shift: u8,
    /// The rights the translation grants.
    pub perms: Perms,
    /// The domain id the request was translated in (vendor's domain identifier).
    pub domain_id: u16,
    /// True when the request was not translated (translation disabled or pass-through).
    pub identity: bool,
}

/// The vendor-neutral class of a translation fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FaultKind {
    /// A structure or paging entry on the path is not present.
    NotPresent,
    /// The translation exists but does not grant the access.
    Permission,
    /// The input address is beyond the configured address width.
    AddressWidth,
    /// A structure or paging entry has reserved bits set or invalid programming.
    InvalidEntry,
    /// Reading or updating a structure in memory failed.
    MemoryAccess,
    /// The request was blocked by configuration (e.g. translation type forbids it).
    Blocked,
}

/// Where a unit found the condition that faulted, in vendor-neutral terms: a front maps faults
/// to its own reasons from this and the [`FaultKind`], never from vendor codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FaultSite {
    /// The request itself, or the unit's global state: a PASID where none is allowed, a
    /// translation request the translation type forbids, an invalid root-table mode.
    Request,
    /// The per-device structures: VT-d root and context entries, AMD-Vi device-table entries.
    DeviceTable,
    /// The per-PASID structures: VT-d PASID directory and table, AMD-Vi GCR3 table.
    PasidTable,
    /// The page tables of `stage`, at `level` when one entry is to blame (1 = the leaf table);
    /// `None` when the condition belongs to the translation as a whole (an input beyond the
    /// address width found before the walk, an atomic request without read permission).
    PageTable {
        /// The stage whose tables faulted.
        stage: Stage,
        /// The level of the faulting entry.
        level: Option<u8>,
    },
    /// The translated output (e.g. an address in the interrupt range).
    Output,
}

/// A translation fault, as returned to the requester.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fault {
    /// The vendor-neutral class.
    pub kind: FaultKind,
    /// Where the unit found it.
    pub site: FaultSite,
    /// The vendor's fault reason code (VT-d: Appendix A fault reason; AMD-Vi: event code).
    pub code: u16,
    /// The requester id.
    pub source_id: u16,
    /// The PASID of the request, if any.
    pub pasid: Option<u32>,
    /// The faulting input address.
    pub addr: u64,
    /// The access that faulted.
    pub access: AccessKind,
    /// Whether the fault was recorded in the hardware's fault log (false when fault processing
    /// was disabled for the device, the log overflowed, or the fault is never recorded).
    pub recorded: bool,
}

impl Fault {
    /// An unrecorded fault of `req` (vendor code 0): what a translator with no unit behind
    /// it, or one that refuses a request before any unit sees it, reports.
    pub fn unrecorded(req: &DmaRequest, kind: FaultKind, site: FaultSite) -> Self {
        Fault {
            kind,
            site,
            code: 0,
            source_id: req.source_id,
            pasid: req.pasid,
            addr: req.addr,
            access: req.access,
            recorded: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_kinds_need_the_right_permissions() {
        let (ro, wo) = (Perms::R, Perms::W);
        assert!(AccessKind::Read.allowed_by(ro));
        assert!(!AccessKind::Write.allowed_by(ro));
        assert!(!AccessKind::Atomic.allowed_by(ro));
        assert!(!AccessKind::Execute.allowed_by(ro));
        assert!(AccessKind::Write.allowed_by(wo));
        assert!(!AccessKind::Read.allowed_by(wo));
        assert!(!AccessKind::Atomic.allowed_by(wo));
        assert!(AccessKind::Execute.allowed_by(Perms::ALL));
        assert!(AccessKind::Atomic.allowed_by(Perms::ALL));
    }

    #[test]
    fn request_builders_set_fields() {
        let r = DmaRequest::new(0x0108, 0x1000, 8, AccessKind::Write)
            .with_pasid(5)
            .privileged();
        assert_eq!(r.pasid, Some(5));
        assert!(r.privileged);
        assert_eq!(r.at, AddressType::Untranslated);
        assert_eq!(AddressType::TranslationRequest.bits(), 1);
    }
}

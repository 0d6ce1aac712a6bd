//! Requests, permissions, results and faults shared by every format and walker.

use crate::mem::MemError;

/// The 4 KiB granule every format in this crate is built on.
pub const PAGE_SHIFT: u8 = 12;

/// Number of input-address bits each table level resolves (512 eight-byte entries).
pub const LEVEL_BITS: u8 = 9;

/// The deepest table any supported format has (AMD-Vi v1 mode 6).
pub const MAX_LEVELS: u8 = 6;

/// log2 of the region one entry at `level` maps (level 1 = 4 KiB, 2 = 2 MiB, 3 = 1 GiB...).
///
/// `level` is expected in `1..=7`; larger values saturate at 63 so the result is always a valid
/// shift amount.
#[inline]
pub const fn level_shift(level: u8) -> u8 {
    let s = PAGE_SHIFT as u32 + LEVEL_BITS as u32 * (level as u32).saturating_sub(1);
    if s > 63 { 63 } else { s as u8 }
}

/// Index of the entry that translates `addr` in a table at `level`.
#[inline]
pub const fn level_index(level: u8, addr: u64) -> u64 {
    let s = PAGE_SHIFT as u32 + LEVEL_BITS as u32 * (level as u32).saturating_sub(1);
    if s >= 64 { 0 } else { (addr >> s) & 0x1ff }
}

/// Which translation stage a reference, visit or fault belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Stage {
    /// The first stage (VT-d first-stage, AMD-Vi v2 guest tables), or the only stage of a 1D walk
    /// over a first-stage format.
    #[default]
    First,
    /// The second stage (VT-d second-stage, AMD-Vi v1 host tables).
    Second,
}

/// Kind of a DMA access.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AccessKind {
    /// Memory read.
    Read,
    /// Memory write.
    Write,
    /// Instruction fetch (execute request).
    Execute,
    /// A zero-length read (VT-d CAP.ZLR, §10.4.2: supported to write-only pages): it reads
    /// nothing, so a page granting read or write allows it. It sets accessed flags as a read
    /// does, never dirty flags.
    ZeroLengthRead,
}

/// A translation request's access: kind and privilege (VT-d PR / AMD-Vi PRIV bit).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Access {
    /// Read, write or execute.
    pub kind: AccessKind,
    /// Supervisor (privileged) request.
    pub privileged: bool,
}

impl Access {
    /// A user-mode read.
    pub const READ: Access = Access {
        kind: AccessKind::Read,
        privileged: false,
    };
    /// A user-mode write.
    pub const WRITE: Access = Access {
        kind: AccessKind::Write,
        privileged: false,
    };
    /// A user-mode execute request.
    pub const EXECUTE: Access = Access {
        kind: AccessKind::Execute,
        privileged: false,
    };

    /// The same access as a supervisor request.
    pub const fn supervisor(self) -> Access {
        Access {
            kind: self.kind,
            privileged: true,
        }
    }

    /// Whether the access writes memory.
    pub const fn is_write(self) -> bool {
        matches!(self.kind, AccessKind::Write)
    }
}

bitflags::bitflags! {
    /// Effective permissions of a translation, accumulated over the levels walked: the one
    /// permission set of the workspace (walkers accumulate it, caches store it, translations
    /// report it).
    ///
    /// `U` is the x86 U/S meaning "user-mode accessible"; formats without a U/S bit (VT-d
    /// second-stage, AMD-Vi v1) leave it set so it never restricts.
    #[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct Perms: u8 {
        /// Read.
        const R = 1;
        /// Write.
        const W = 2;
        /// Execute.
        const X = 4;
        /// User-mode accessible.
        const U = 8;
        /// Read and write.
        const RW = 3;
        /// Everything: the starting point of a walk from the root.
        const ALL = 15;
    }
}

impl Perms {
    /// No permission.
    pub const NONE: Perms = Perms::empty();

    /// Read permission.
    pub const fn read(self) -> bool {
        self.contains(Perms::R)
    }
    /// Write permission.
    pub const fn write(self) -> bool {
        self.contains(Perms::W)
    }
    /// Execute permission.
    pub const fn execute(self) -> bool {
        self.contains(Perms::X)
    }
    /// User-mode accessible.
    pub const fn user(self) -> bool {
        self.contains(Perms::U)
    }
}

impl core::fmt::Debug for Perms {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let c = |b: bool, ch: char| if b { ch } else { '-' };
        write!(
            f,
            "Perms({}{}{}{})",
            c(self.read(), 'r'),
            c(self.write(), 'w'),
            c(self.execute(), 'x'),
            c(self.user(), 'u')
        )
    }
}

/// A successful translation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Translation {
    /// Output address (system physical for a 1D walk over a host format or a nested walk, guest
    /// physical for a 1D walk over a first-stage format used nested).
    pub output: u64,
    /// log2 of the page size that maps the input address.
    pub page_shift: u8,
    /// Effective permissions (R/W/X and user/supervisor).
    pub perms: Perms,
    /// AMD-Vi v1 FC (force coherent) bit of the leaf PTE; `false` for other formats.
    pub force_coherent: bool,
    /// Level of the leaf entry (1 = 4 KiB table).
    pub level: u8,
    /// Address (in the memory walked) of the leaf entry.
    pub entry_addr: u64,
    /// Value of the leaf entry after any A/D update.
    pub entry: u64,
}

impl Translation {
    /// Size in bytes of the page that maps the input address.
    pub const fn page_size(&self) -> u64 {
        1u64 << self.page_shift
    }
    /// Output address of the start of the page.
    pub const fn page_base(&self) -> u64 {
        self.output & !((1u64 << self.page_shift) - 1)
    }
}

/// What went wrong in a walk. Deliberately exhaustive (unlike the formats): every vendor maps
/// each kind to a fault reason of its specification, and a new kind must make them say which.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FaultKind {
    /// The entry is not present (P=0; VT-d second stage R=W=0; AMD-Vi PR=0).
    #[error("entry not present")]
    NotPresent,
    /// The access is not allowed by the accumulated permissions or the per-walk controls.
    #[error("permission denied")]
    Permission,
    /// A reserved bit is set in the entry.
    #[error("reserved bit set")]
    ReservedBit,
    /// The input address is beyond the width the table covers (or not canonical, or has
    /// non-zero bits in an AMD-Vi skipped level).
    #[error("address beyond the translated width")]
    AddressBeyondWidth,
    /// The entry (or the walk start) encodes a level that the format does not allow.
    #[error("bad level encoding")]
    BadLevel,
    /// A table entry could not be read or updated.
    #[error("memory access failed: {0}")]
    MemoryRead(MemError),
    /// The entry kept changing under the A/D compare-and-exchange for too many attempts (or,
    /// for the second-stage dirty update of a nested walk, was remapped under it).
    #[error("A/D update kept racing with entry changes")]
    AdUpdateContention,
}

/// A translation fault: which stage and level, which entry, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{stage:?}-stage fault at level {level} (input {input:#x}): {kind}")]
pub struct Fault {
    /// The stage whose walk faulted.
    pub stage: Stage,
    /// The level of the entry (or, for checks before any read, of the table the walk started at).
    pub level: u8,
    /// The input address of that stage's walk (IOVA for the first stage, GPA for the second).
    pub input: u64,
    /// Address of the entry involved, where one was located.
    pub entry_addr: Option<u64>,
    /// Raw value of the entry, where one was read.
    pub entry: Option<u64>,
    /// Why.
    pub kind: FaultKind,
    /// For a second-stage fault inside a nested walk: what the second stage was doing. `None`
    /// for first-stage faults and one-dimensional walks.
    pub nested: Option<NestedPhase>,
}

/// What a second-stage walk inside a nested walk was translating when it faulted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NestedPhase {
    /// The guest-physical address of the first-stage table at `level` (the first-stage root
    /// when `level` is the first stage's level count), read access.
    FirstStageTable {
        /// Level of that first-stage table.
        level: u8,
    },
    /// The write access of an accessed/dirty update to an entry of the first-stage table at
    /// `level`: the page holding it is not writable in the second stage (or changed under the
    /// second-stage dirty-flag update).
    FirstStageAdUpdate {
        /// Level of that first-stage table.
        level: u8,
    },
    /// The first stage's output address.
    FinalOutput,
}

/// Where a walk begins: the root (level = the format's level count, table = its root pointer,
/// perms = the context's permissions), or a paging-structure-cache hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalkStart {
    /// Level of the table `table` points to.
    pub level: u8,
    /// Address of that table (4 KiB aligned; low bits are ignored).
    pub table: u64,
    /// Permissions accumulated by the levels above.
    pub perms: Perms,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn level_geometry() {
        assert_eq!(level_shift(1), 12);
        assert_eq!(level_shift(2), 21);
        assert_eq!(level_shift(3), 30);
        assert_eq!(level_shift(4), 39);
        assert_eq!(level_shift(5), 48);
        assert_eq!(level_shift(6), 57);
        assert_eq!(level_shift(9), 63);
        assert_eq!(level_index(1, 0x0000_1234_5678_9abc), 0x189);
        assert_eq!(level_index(4, 0xff80_0000_0000), 0x1ff);
        // Level 6 resolves only bits 63:57.
        assert_eq!(level_index(6, u64::MAX), 0x7f);
        assert_eq!(level_index(8, u64::MAX), 0);
    }

    #[test]
    fn perms_algebra() {
        let p = Perms::R | Perms::W;
        assert!(p.contains(Perms::RW));
        assert!(!p.contains(Perms::X));
        assert_eq!(p & Perms::W, Perms::W);
        assert_eq!(
            Perms::ALL.difference(Perms::U),
            Perms::from_bits_truncate(7)
        );
        assert_eq!(format!("{:?}", Perms::R | Perms::U), "Perms(r--u)");
        assert_eq!(Perms::from_bits_truncate(0xff), Perms::ALL);
    }
}

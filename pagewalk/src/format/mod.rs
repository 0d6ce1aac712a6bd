//! Page-table entry formats and the per-walk configurations the hardware models build once per
//! context / PASID entry / DTE.
//!
//! Each format decodes a raw 64-bit entry at a given level into a [`Decoded`] value; the walkers
//! in [`crate::walk`](mod@crate::walk) are written against that, and the table builder in [`crate::builder`]
//! encodes entries with its own, independent code so that each checks the other.

pub mod amd_v1;
pub mod vtd_ss;
pub mod x86;

pub use amd_v1::AmdV1Config;
pub use vtd_ss::VtdSsConfig;
pub use x86::X86Config;

use crate::types::{Access, AccessKind, MAX_LEVELS, Perms, Stage};

/// The page-table formats this crate walks and builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// VT-d first-stage (IA-32e 4/5-level paging).
    VtdFirstStage,
    /// VT-d second-stage (3/4/5 levels).
    VtdSecondStage,
    /// AMD-Vi v1 host page tables (modes 1 to 6).
    AmdV1,
    /// AMD-Vi v2 guest page tables (x86 4/5-level).
    AmdV2,
}

impl Format {
    /// The stage this format plays in a nested translation.
    pub const fn stage(self) -> Stage {
        match self {
            Format::VtdFirstStage | Format::AmdV2 => Stage::First,
            Format::VtdSecondStage | Format::AmdV1 => Stage::Second,
        }
    }
}

/// One entry as a format sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoded {
    /// Not present.
    NotPresent,
    /// A reserved bit is set (or a page size the configuration does not support).
    Reserved,
    /// The entry encodes a level the format does not allow here.
    BadLevel,
    /// A pointer to the next table.
    Table {
        /// Address of the next table (4 KiB aligned).
        next: u64,
        /// Level of the next table.
        next_level: u8,
        /// Permissions this entry grants.
        perms: Perms,
    },
    /// A leaf that maps a page.
    Leaf {
        /// Output address of the start of the page.
        base: u64,
        /// log2 of the page size.
        shift: u8,
        /// Permissions this entry grants.
        perms: Perms,
        /// AMD-Vi v1 FC.
        force_coherent: bool,
    },
}

/// Everything a walker needs to know about one table hierarchy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum WalkConfig {
    /// VT-d first-stage tables.
    VtdFirstStage(X86Config),
    /// VT-d second-stage tables.
    VtdSecondStage(VtdSsConfig),
    /// AMD-Vi v1 host tables.
    AmdV1(AmdV1Config),
    /// AMD-Vi v2 guest tables.
    AmdV2(X86Config),
}

impl WalkConfig {
    /// Which format.
    pub const fn format(&self) -> Format {
        match self {
            WalkConfig::VtdFirstStage(_) => Format::VtdFirstStage,
            WalkConfig::VtdSecondStage(_) => Format::VtdSecondStage,
            WalkConfig::AmdV1(_) => Format::AmdV1,
            WalkConfig::AmdV2(_) => Format::AmdV2,
        }
    }

    /// Level of the root table.
    pub const fn levels(&self) -> u8 {
        match self {
            WalkConfig::VtdFirstStage(c) | WalkConfig::AmdV2(c) => c.levels,
            WalkConfig::VtdSecondStage(c) => c.levels,
            WalkConfig::AmdV1(c) => c.mode,
        }
    }

    /// Whether the level count is one the format allows.
    pub const fn levels_valid(&self) -> bool {
        let l = self.levels();
        match self {
            WalkConfig::VtdFirstStage(_) | WalkConfig::AmdV2(_) => l == 4 || l == 5,
            WalkConfig::VtdSecondStage(_) => l >= 3 && l <= 5,
            WalkConfig::AmdV1(_) => l >= 1 && l <= MAX_LEVELS,
        }
    }

    /// Permissions a walk from the root starts with (AMD-Vi v1: the DTE's IR/IW).
    pub const fn root_perms(&self) -> Perms {
        match self {
            WalkConfig::AmdV1(c) => c.dte_perms(),
            _ => Perms::ALL,
        }
    }

    /// Where a walk from `root` starts.
    #[inline]
    pub const fn root_start(&self, root: u64) -> crate::types::WalkStart {
        crate::types::WalkStart {
            level: self.levels(),
            table: root,
            perms: self.root_perms(),
        }
    }

    /// Number of input-address bits the tables translate.
    #[inline]
    pub const fn input_width(&self) -> u8 {
        match self {
            WalkConfig::VtdFirstStage(c) | WalkConfig::AmdV2(c) => c.input_width(),
            WalkConfig::VtdSecondStage(c) => c.input_width(),
            WalkConfig::AmdV1(c) => c.input_width(),
        }
    }

    /// Whether `addr` lies within the translated input range (x86 formats: canonical).
    #[inline]
    pub const fn input_in_range(&self, addr: u64) -> bool {
        let w = self.input_width();
        match self {
            WalkConfig::VtdFirstStage(_) | WalkConfig::AmdV2(_) => {
                // Canonical: bits 63:w-1 all equal (Intel SDM vol. 3 §4.5).
                let top = (addr as i64) >> (w - 1);
                top == 0 || top == -1
            }
            _ => w >= 64 || addr >> w == 0,
        }
    }

    /// Whether the request itself may be translated (VT-d SRE/ERE controls).
    pub const fn request_allowed(&self, access: Access) -> bool {
        match self {
            WalkConfig::VtdFirstStage(c) | WalkConfig::AmdV2(c) => c.request_allowed(access),
            _ => true,
        }
    }

    /// Decodes `entry`, read from a table at `level`.
    #[inline]
    pub fn decode(&self, level: u8, entry: u64) -> Decoded {
        match self {
            WalkConfig::VtdFirstStage(c) => c.decode(level, entry),
            WalkConfig::AmdV2(c) => match c.decode(level, entry) {
                // AMD64 APM vol. 2 §5.3.3 (figures 5-18, 5-19): bits 8:7 of a PML4E / PML5E
                // are MBZ (Intel leaves bit 8 ignored).
                Decoded::Table { .. } if level >= 4 && entry & x86::X86_G != 0 => Decoded::Reserved,
                d => d,
            },
            WalkConfig::VtdSecondStage(c) => c.decode(level, entry),
            WalkConfig::AmdV1(c) => c.decode(level, entry),
        }
    }

    /// The accessed/dirty bits the walker must set in `entry` (0 if none, or if A/D updates are
    /// off for this format and mode).
    #[inline]
    pub fn ad_bits(&self, entry: u64, leaf: bool, write: bool) -> u64 {
        let want = match self {
            WalkConfig::VtdFirstStage(c) | WalkConfig::AmdV2(c) => c.ad_mask(leaf, write),
            WalkConfig::VtdSecondStage(c) => c.ad_mask(leaf, write),
            WalkConfig::AmdV1(c) => c.ad_mask(leaf, write),
        };
        want & !entry
    }

    /// Whether a translation with effective permissions `perms` allows `access`.
    #[inline]
    pub const fn permits(&self, perms: Perms, access: Access) -> bool {
        match self {
            WalkConfig::VtdFirstStage(c) | WalkConfig::AmdV2(c) => c.permits(perms, access),
            // Host formats have no U/S and no privilege checks; VT-d second stage execute
            // needs X only when SLEE is on, otherwise X mirrors R (see `VtdSsConfig::decode`).
            _ => match access.kind {
                AccessKind::Read => perms.read(),
                AccessKind::Write => perms.write(),
                AccessKind::Execute => perms.execute(),
                AccessKind::ZeroLengthRead => perms.read() || perms.write(),
            },
        }
    }

    /// Page sizes (log2) a leaf may have at `level` in this format, as a bit mask over shifts.
    pub fn leaf_shifts(&self, level: u8) -> u64 {
        match self {
            WalkConfig::VtdFirstStage(c) | WalkConfig::AmdV2(c) => c.leaf_shifts(level),
            WalkConfig::VtdSecondStage(c) => c.leaf_shifts(level),
            WalkConfig::AmdV1(c) => c.leaf_shifts(level),
        }
    }
}

/// Mask of physical-address bits `[width, 52)`, which are reserved in every format here.
#[inline]
pub(crate) const fn addr_above_width(width: u8) -> u64 {
    if width >= 52 {
        0
    } else {
        ((1u64 << 52) - 1) & !((1u64 << width) - 1)
    }
}

/// An entry as the table builder understands it: each format parses what its builder side
/// writes (`encode_table`, `encode_leaf` and `parse` in the format modules). Anything it would
/// not write is reported as a table or leaf where unambiguous, or as foreign.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ent {
    Empty,
    Table(u64),
    /// A leaf of `1 << shift` bytes mapping `phys` (page-aligned).
    Leaf {
        phys: u64,
        shift: u8,
        perms: Perms,
    },
    /// Not an entry this builder writes at this level.
    Foreign,
}

/// Bits 51:12 of an entry: the address field shared by all formats.
pub(crate) const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

/// Mask of bits `[lo, hi]`.
#[inline]
pub(crate) const fn bits(hi: u8, lo: u8) -> u64 {
    (u64::MAX >> (63 - hi)) & !((1u64 << lo) - 1)
}

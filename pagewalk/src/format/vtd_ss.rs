//! VT-d second-stage paging entries.
//!
//! Layout: VT-d spec rev 4.1, §9.8 "Second-Stage Paging Entries" (SS-PML5E, SS-PML4E, SS-PDPE,
//! SS-PDE, SS-PTE); translation rules §3.7 "Second-Stage Translation"; A/D rules §3.7.2.
//!
//! | bits  | meaning                                                                    |
//! |-------|----------------------------------------------------------------------------|
//! | 0     | R — read                                                                   |
//! | 1     | W — write                                                                  |
//! | 2     | X — execute (used only when SLEE; otherwise ignored)                       |
//! | 5:3   | EMT (leaf), ignored in non-leaf                                            |
//! | 6     | IPAT (leaf), ignored in non-leaf                                           |
//! | 7     | PS in SS-PDPE / SS-PDE; reserved in SS-PML5E/SS-PML4E; ignored in SS-PTE    |
//! | 8     | A — accessed (when SLADE; otherwise ignored)                              |
//! | 9     | D — dirty, leaf only (when SLADE; otherwise ignored)                       |
//! | 10    | ignored                                                                    |
//! | 11    | SNP in leaves (scalable mode); reserved in non-leaf entries                |
//! | 51:12 | address (bits at and above the host address width are reserved);           |
//! |       | in a 2 MiB / 1 GiB leaf bits 20:12 / 29:12 are reserved                    |
//! | 61:52 | ignored                                                                    |
//! | 62    | reserved (rev 3.3 and later)                                               |
//! | 63    | ignored                                                                    |
//!
//! An entry with R=W=0 is not present (§3.7.1).

use super::{ADDR_MASK, Decoded, Ent, addr_above_width, bits};
use crate::types::{Perms, level_shift};

/// R (bit 0).
pub const SS_R: u64 = 1 << 0;
/// W (bit 1).
pub const SS_W: u64 = 1 << 1;
/// X (bit 2).
pub const SS_X: u64 = 1 << 2;
/// EMT (bits 5:3).
pub const SS_EMT: u64 = 0b111 << 3;
/// IPAT (bit 6).
pub const SS_IPAT: u64 = 1 << 6;
/// PS (bit 7).
pub const SS_PS: u64 = 1 << 7;
/// A (bit 8).
pub const SS_A: u64 = 1 << 8;
/// D (bit 9).
pub const SS_D: u64 = 1 << 9;
/// SNP (bit 11), leaves only.
pub const SS_SNP: u64 = 1 << 11;
/// Reserved bit 62.
pub const SS_RSVD62: u64 = 1 << 62;

/// Per-walk controls for VT-d second-stage tables (from the context / PASID entry and the
/// capability registers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VtdSsConfig {
    /// Table depth: 3 (39-bit AGAW), 4 (48-bit) or 5 (57-bit), from the entry's AW / SAGAW.
    pub levels: u8,
    /// Input (guest-physical) address width: the AGAW, possibly narrowed by MGAW.
    pub input_width: u8,
    /// Host address width (HAW): address bits at and above it are reserved.
    pub haw: u8,
    /// SLADE: accessed/dirty flags are updated.
    pub slade: bool,
    /// SLEE: the X bit is used for execute requests.
    pub slee: bool,
    /// SLLPS bit 0: 2 MiB pages supported.
    pub sp_2m: bool,
    /// SLLPS bit 1: 1 GiB pages supported.
    pub sp_1g: bool,
}

impl VtdSsConfig {
    /// A configuration with `levels` levels, full AGAW input width, 52-bit HAW, 2M/1G
    /// superpages, no A/D and no SLEE.
    pub const fn new(levels: u8) -> Self {
        let w = level_shift(levels) + 9;
        Self {
            levels,
            input_width: if w > 64 { 64 } else { w },
            haw: 52,
            slade: false,
            slee: false,
            sp_2m: true,
            sp_1g: true,
        }
    }

    /// Level count for a context/PASID-entry AW field (VT-d spec §9.3: 1 = 39-bit 3-level,
    /// 2 = 48-bit 4-level, 3 = 57-bit 5-level); `None` for encodings with no level count.
    pub const fn levels_for_aw(aw: u8) -> Option<u8> {
        match aw {
            1 => Some(3),
            2 => Some(4),
            3 => Some(5),
            _ => None,
        }
    }

    /// The configuration for an AW field, if it is one the SAGAW capability bits (CAP_REG
    /// bits 12:8, §11.4.2) support.
    pub const fn from_aw(aw: u8, sagaw: u8) -> Option<Self> {
        match Self::levels_for_aw(aw) {
            Some(l) if aw < 8 && sagaw & (1 << aw) != 0 => Some(Self::new(l)),
            _ => None,
        }
    }

    /// Sets SLADE.
    pub const fn with_slade(mut self, on: bool) -> Self {
        self.slade = on;
        self
    }

    /// Sets the host address width.
    pub const fn with_haw(mut self, haw: u8) -> Self {
        self.haw = haw;
        self
    }

    #[inline]
    pub(crate) const fn input_width(&self) -> u8 {
        self.input_width
    }

    /// Decodes an SS entry at `level` (§9.8).
    pub fn decode(&self, level: u8, e: u64) -> Decoded {
        if e & (SS_R | SS_W) == 0 {
            return Decoded::NotPresent;
        }
        let common_rsvd = SS_RSVD62 | addr_above_width(self.haw);
        let x = if self.slee {
            e & SS_X != 0
        } else {
            e & SS_R != 0
        };
        let perms = Perms::from_bits_truncate(
            (e & SS_R) as u8 | (e & SS_W) as u8 | if x { 4 } else { 0 } | Perms::U.bits(),
        );
        let leaf = match level {
            1 => true,
            2 | 3 => e & SS_PS != 0,
            4 | 5 => {
                if e & SS_PS != 0 {
                    return Decoded::Reserved;
                }
                false
            }
            _ => return Decoded::BadLevel,
        };
        if leaf {
            let shift = level_shift(level);
            let supported = match level {
                1 => true,
                2 => self.sp_2m,
                _ => self.sp_1g,
            };
            if !supported {
                return Decoded::Reserved;
            }
            let rsvd = common_rsvd | bits(shift - 1, 12);
            if e & rsvd != 0 {
                return Decoded::Reserved;
            }
            Decoded::Leaf {
                base: e & ADDR_MASK,
                shift,
                perms,
                force_coherent: false,
            }
        } else {
            if e & (common_rsvd | SS_SNP) != 0 {
                return Decoded::Reserved;
            }
            Decoded::Table {
                next: e & ADDR_MASK,
                next_level: level - 1,
                perms,
            }
        }
    }

    /// A/D bits to have set (§3.7.2): A on every entry used, D on the leaf for writes; none
    /// without SLADE.
    pub const fn ad_mask(&self, leaf: bool, write: bool) -> u64 {
        if !self.slade {
            0
        } else if leaf && write {
            SS_A | SS_D
        } else {
            SS_A
        }
    }

    /// Leaf page sizes at `level` (mask over log2 sizes).
    pub const fn leaf_shifts(&self, level: u8) -> u64 {
        match level {
            1 => 1 << 12,
            2 if self.sp_2m => 1 << 21,
            3 if self.sp_1g => 1 << 30,
            _ => 0,
        }
    }
}

// ------------------------------------------------------------------ the builder's side

/// A non-leaf entry pointing at `next` (R, W and X all granted: the leaves decide).
pub(crate) fn encode_table(next: u64) -> u64 {
    next | SS_R | SS_W | SS_X
}

/// A leaf at `level` mapping `phys` with `perms` (X only with SLEE; PS above level 1).
pub(crate) fn encode_leaf(c: &VtdSsConfig, level: u8, phys: u64, perms: Perms) -> u64 {
    let mut e = phys;
    if perms.read() {
        e |= SS_R;
    }
    if perms.write() {
        e |= SS_W;
    }
    if c.slee && perms.execute() {
        e |= SS_X;
    }
    if level > 1 {
        e |= SS_PS;
    }
    e
}

/// What the builder wrote at `level` (see [`Ent`]).
pub(crate) fn parse(c: &VtdSsConfig, level: u8, e: u64) -> Ent {
    if e & (SS_R | SS_W) == 0 {
        return Ent::Empty;
    }
    let own = level_shift(level);
    if level == 1 || (level <= 3 && e & SS_PS != 0) {
        let mut p = Perms::U;
        if e & SS_R != 0 {
            p |= Perms::R;
        }
        if e & SS_W != 0 {
            p |= Perms::W;
        }
        if (c.slee && e & SS_X != 0) || (!c.slee && e & SS_R != 0) {
            p |= Perms::X;
        }
        Ent::Leaf {
            phys: e & ADDR_MASK & !((1u64 << own) - 1),
            shift: own,
            perms: p,
        }
    } else if e & SS_PS != 0 {
        Ent::Foreign
    } else {
        Ent::Table(e & ADDR_MASK)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Hand-built entries, bit by bit against §9.8.
    #[test]
    fn decodes_hand_built_entries() {
        let c = VtdSsConfig::new(4);
        // SS-PTE: R=1 W=1 X=0, EMT=6 (WB), IPAT=1, SNP=1, addr 0x1234_5000, ignored bit 63.
        let pte = 0x1 | 0x2 | (6 << 3) | (1 << 6) | (1 << 11) | 0x1234_5000 | (1 << 63);
        assert_eq!(
            c.decode(1, pte),
            Decoded::Leaf {
                base: 0x1234_5000,
                shift: 12,
                perms: Perms::R | Perms::W | Perms::X | Perms::U,
                force_coherent: false
            }
        );
        // Read-only PTE; X mirrors R without SLEE.
        assert_eq!(
            c.decode(1, 0x1 | 0x5000),
            Decoded::Leaf {
                base: 0x5000,
                shift: 12,
                perms: Perms::R | Perms::X | Perms::U,
                force_coherent: false
            }
        );
        // With SLEE, X is bit 2.
        let slee = VtdSsConfig { slee: true, ..c };
        assert!(
            matches!(slee.decode(1, 0x1 | 0x5000), Decoded::Leaf { perms, .. } if !perms.execute())
        );
        assert!(
            matches!(slee.decode(1, 0x5 | 0x5000), Decoded::Leaf { perms, .. } if perms.execute())
        );
        // W-only is present; R=W=0 is not present even with X set.
        assert!(
            matches!(c.decode(1, 0x2 | 0x5000), Decoded::Leaf { perms, .. } if perms == Perms::W | Perms::U)
        );
        assert_eq!(c.decode(1, 0x4 | 0x5000), Decoded::NotPresent);
        assert_eq!(c.decode(4, 0), Decoded::NotPresent);
        // SS-PDE pointing to a table; bits 6:3 and 10 ignored in non-leaf.
        assert_eq!(
            c.decode(2, 0x3 | (0xf << 3) | (1 << 10) | 0xa_b000),
            Decoded::Table {
                next: 0xa_b000,
                next_level: 1,
                perms: Perms::ALL
            }
        );
        // 2 MiB leaf: PS=1, address 2 MiB aligned.
        assert_eq!(
            c.decode(2, 0x3 | SS_PS | 0x4020_0000),
            Decoded::Leaf {
                base: 0x4020_0000,
                shift: 21,
                perms: Perms::ALL,
                force_coherent: false
            }
        );
        // 1 GiB leaf.
        assert!(matches!(
            c.decode(3, 0x1 | SS_PS | 0x8000_0000),
            Decoded::Leaf {
                shift: 30,
                base: 0x8000_0000,
                ..
            }
        ));
    }

    #[test]
    fn reserved_bits() {
        let c = VtdSsConfig::new(5).with_haw(46);
        // PS in PML4E / PML5E is reserved.
        assert_eq!(c.decode(4, 0x3 | SS_PS | 0x1000), Decoded::Reserved);
        assert_eq!(c.decode(5, 0x3 | SS_PS | 0x1000), Decoded::Reserved);
        // Bit 11 reserved in non-leaf, allowed (SNP) in leaves.
        assert_eq!(c.decode(3, 0x3 | SS_SNP | 0x1000), Decoded::Reserved);
        assert!(matches!(
            c.decode(1, 0x3 | SS_SNP | 0x1000),
            Decoded::Leaf { .. }
        ));
        // Bit 62 reserved everywhere.
        for l in 1..=5 {
            assert_eq!(
                c.decode(l, 0x3 | SS_RSVD62 | 0x1000),
                Decoded::Reserved,
                "{l}"
            );
        }
        // Address bits at or above HAW (46) reserved.
        assert_eq!(c.decode(1, 0x3 | (1 << 46)), Decoded::Reserved);
        assert!(matches!(c.decode(1, 0x3 | (1 << 45)), Decoded::Leaf { .. }));
        // 2 MiB leaf with bits 20:12 set; 1 GiB leaf with bit 29 set.
        assert_eq!(c.decode(2, 0x3 | SS_PS | 0x1000), Decoded::Reserved);
        assert_eq!(c.decode(2, 0x3 | SS_PS | 0x10_0000), Decoded::Reserved);
        assert_eq!(c.decode(3, 0x3 | SS_PS | 0x2000_0000), Decoded::Reserved);
        // Unsupported superpage sizes are reserved.
        let no1g = VtdSsConfig { sp_1g: false, ..c };
        assert_eq!(no1g.decode(3, 0x3 | SS_PS), Decoded::Reserved);
        let no2m = VtdSsConfig { sp_2m: false, ..c };
        assert_eq!(no2m.decode(2, 0x3 | SS_PS), Decoded::Reserved);
        // Levels outside 1..=5.
        assert_eq!(c.decode(6, 0x3), Decoded::BadLevel);
        assert_eq!(c.decode(0, 0x3), Decoded::BadLevel);
    }

    #[test]
    fn ad_and_aw() {
        let c = VtdSsConfig::new(4);
        assert_eq!(c.ad_mask(true, true), 0);
        let c = c.with_slade(true);
        assert_eq!(c.ad_mask(false, true), 1 << 8);
        assert_eq!(c.ad_mask(true, false), 1 << 8);
        assert_eq!(c.ad_mask(true, true), (1 << 8) | (1 << 9));
        assert_eq!(VtdSsConfig::levels_for_aw(1), Some(3));
        assert_eq!(VtdSsConfig::levels_for_aw(3), Some(5));
        assert_eq!(VtdSsConfig::levels_for_aw(0), None);
        assert_eq!(VtdSsConfig::levels_for_aw(4), None);
        // SAGAW 0b00100 = 48-bit only.
        assert_eq!(VtdSsConfig::from_aw(2, 0b00100).map(|c| c.levels), Some(4));
        assert_eq!(VtdSsConfig::from_aw(3, 0b00100), None);
        assert_eq!(VtdSsConfig::new(3).input_width, 39);
        assert_eq!(VtdSsConfig::new(5).input_width, 57);
    }
}

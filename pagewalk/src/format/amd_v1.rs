//! AMD-Vi v1 host page tables (I/O page tables for host translation).
//!
//! Layout: AMD I/O Virtualization Technology (IOMMU) Specification rev 3.08, §2.2.3 "I/O Page
//! Tables for Host Translations" (figures "I/O Page Table Entry" / "I/O Page Directory Entry"),
//! §2.2.3.1 "Skipping Levels", §2.2.3.2 "Page sizes" (Next Level = 7), and the DTE Mode, IR,
//! IW and HAD fields (§2.2.2.1).
//!
//! | bits  | meaning                                                                     |
//! |-------|-----------------------------------------------------------------------------|
//! | 0     | PR — present                                                                |
//! | 4:1   | ignored                                                                     |
//! | 5     | A — accessed (when the DTE enables host A/D updates)                        |
//! | 6     | D — dirty, leaf only (same)                                                 |
//! | 8:7   | ignored                                                                     |
//! | 11:9  | Next Level: 0 = leaf of this level's size, 1..level-1 = next table level,   |
//! |       | 7 = leaf whose size is encoded in the address field                        |
//! | 51:12 | address (bits at and above the output width are reserved)                   |
//! | 58:52 | reserved                                                                    |
//! | 59    | U (ignored by the IOMMU)                                                    |
//! | 60    | FC — force coherent (leaf)                                                  |
//! | 61    | IR — read permission                                                        |
//! | 62    | IW — write permission                                                       |
//! | 63    | ignored                                                                     |
//!
//! Next Level = 7 page sizes: the number of consecutive 1 bits starting at address bit 12 is
//! `n`, and the page is `2^(13 + n)` bytes; bits below that size are not address bits. Such a
//! PTE is replicated across every entry the page covers. The size must be larger than the level's
//! own entry size and smaller than the table's coverage.

use super::{ADDR_MASK, Decoded, Ent, addr_above_width, bits};
use crate::types::{MAX_LEVELS, Perms, level_shift};

/// PR (bit 0).
pub const V1_PR: u64 = 1 << 0;
/// A (bit 5).
pub const V1_A: u64 = 1 << 5;
/// D (bit 6).
pub const V1_D: u64 = 1 << 6;
/// Shift of the Next Level field (bits 11:9).
pub const V1_NEXT_LEVEL_SHIFT: u32 = 9;
/// Next Level field mask.
pub const V1_NEXT_LEVEL: u64 = 0b111 << 9;
/// Next Level encoding for a leaf whose size is encoded in the address.
pub const V1_NL_SIZED: u64 = 7;
/// Reserved bits 58:52.
pub const V1_RSVD: u64 = 0x07f0_0000_0000_0000;
/// U (bit 59).
pub const V1_U: u64 = 1 << 59;
/// FC (bit 60).
pub const V1_FC: u64 = 1 << 60;
/// IR (bit 61).
pub const V1_IR: u64 = 1 << 61;
/// IW (bit 62).
pub const V1_IW: u64 = 1 << 62;

/// Per-walk controls for AMD-Vi v1 tables, from the DTE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AmdV1Config {
    /// DTE Mode: 1..=6 levels (0 = no translation and 7 are not table modes).
    pub mode: u8,
    /// DTE IR.
    pub ir: bool,
    /// DTE IW.
    pub iw: bool,
    /// DTE HAD: host accessed/dirty updates enabled.
    pub had: bool,
    /// Output (system physical) address width; address bits at and above it are reserved.
    pub out_width: u8,
}

impl AmdV1Config {
    /// Mode `mode` with IR=IW=1, no A/D updates, 52-bit output width.
    pub const fn new(mode: u8) -> Self {
        Self {
            mode,
            ir: true,
            iw: true,
            had: false,
            out_width: 52,
        }
    }

    /// Sets the DTE IR/IW.
    pub const fn with_perms(mut self, ir: bool, iw: bool) -> Self {
        self.ir = ir;
        self.iw = iw;
        self
    }

    /// Sets host A/D updates.
    pub const fn with_had(mut self, had: bool) -> Self {
        self.had = had;
        self
    }

    #[inline]
    pub(crate) const fn input_width(&self) -> u8 {
        let w = level_shift(self.mode) as u32 + 9;
        if w > 64 { 64 } else { w as u8 }
    }

    /// Permissions granted by the DTE IR/IW (execute follows read: host tables have no X).
    pub const fn dte_perms(&self) -> Perms {
        let mut p = Perms::U.bits();
        if self.ir {
            p |= Perms::R.bits() | Perms::X.bits();
        }
        if self.iw {
            p |= Perms::W.bits();
        }
        Perms::from_bits_truncate(p)
    }

    /// Decodes an entry at `level` (§2.2.3).
    pub fn decode(&self, level: u8, e: u64) -> Decoded {
        if level == 0 || level > MAX_LEVELS {
            return Decoded::BadLevel;
        }
        if e & V1_PR == 0 {
            return Decoded::NotPresent;
        }
        if e & (V1_RSVD | addr_above_width(self.out_width)) != 0 {
            return Decoded::Reserved;
        }
        let mut p = Perms::U.bits();
        if e & V1_IR != 0 {
            p |= Perms::R.bits() | Perms::X.bits();
        }
        if e & V1_IW != 0 {
            p |= Perms::W.bits();
        }
        let perms = Perms::from_bits_truncate(p);
        let nl = (e & V1_NEXT_LEVEL) >> V1_NEXT_LEVEL_SHIFT;
        let force_coherent = e & V1_FC != 0;
        let own = level_shift(level);
        match nl {
            0 => {
                let shift = own;
                if shift > 52 {
                    // A level-6 entry cannot be a leaf of its own 2^57 size: no address bits.
                    return Decoded::BadLevel;
                }
                Decoded::Leaf {
                    base: e & ADDR_MASK & !bits(shift - 1, 0),
                    shift,
                    perms,
                    force_coherent,
                }
            }
            V1_NL_SIZED => {
                let Some(shift) = sized_page_shift(e) else {
                    return Decoded::BadLevel;
                };
                if shift <= own || shift >= own + 9 {
                    return Decoded::BadLevel;
                }
                Decoded::Leaf {
                    base: e & ADDR_MASK & !bits(shift - 1, 0),
                    shift,
                    perms,
                    force_coherent,
                }
            }
            n if (n as u8) < level => Decoded::Table {
                next: e & ADDR_MASK,
                next_level: n as u8,
                perms,
            },
            _ => Decoded::BadLevel,
        }
    }

    /// A/D bits to have set when HAD is on: A on each entry used, D on the leaf for writes.
    pub const fn ad_mask(&self, leaf: bool, write: bool) -> u64 {
        if !self.had {
            0
        } else if leaf && write {
            V1_A | V1_D
        } else {
            V1_A
        }
    }

    /// Leaf page sizes at `level` (mask over log2 sizes): the level's own size (Next Level 0)
    /// and every size between it and the table's coverage (Next Level 7).
    pub const fn leaf_shifts(&self, level: u8) -> u64 {
        if level == 0 || level > MAX_LEVELS {
            return 0;
        }
        let own = level_shift(level) as u32;
        let mut m = 0u64;
        let mut s = own;
        while s < own + 9 && s <= 52 {
            m |= 1 << s;
            s += 1;
        }
        m
    }
}

/// Page size (log2) encoded in a Next Level = 7 PTE's address field, or `None` if the field is
/// all ones (no size encodable).
pub const fn sized_page_shift(e: u64) -> Option<u8> {
    let field = (e & ADDR_MASK) >> 12;
    let n = (!field).trailing_zeros();
    if n >= 40 { None } else { Some(13 + n as u8) }
}

// ------------------------------------------------------------------ the builder's side

/// A non-leaf entry at `level` pointing at the table of the level right below (the builder
/// never skips levels), with IR and IW.
pub(crate) fn encode_table(level: u8, next: u64) -> u64 {
    next | V1_PR | (u64::from(level - 1) << V1_NEXT_LEVEL_SHIFT) | V1_IR | V1_IW
}

/// A leaf at `level` mapping 2^`shift` bytes at `phys`: Next Level 0 for the level's own size,
/// Next Level 7 (ones from bit 12 up to bit shift-2, zero at bit shift-1) for the sizes
/// between the levels' own.
pub(crate) fn encode_leaf(level: u8, phys: u64, shift: u8, perms: Perms) -> u64 {
    let mut e = phys | V1_PR;
    if shift > level_shift(level) {
        e |= (V1_NL_SIZED << V1_NEXT_LEVEL_SHIFT) | (((1u64 << (shift - 1)) - 1) & !0xfff);
    }
    if perms.read() {
        e |= V1_IR;
    }
    if perms.write() {
        e |= V1_IW;
    }
    e
}

/// What the builder wrote at `level` (see [`Ent`]).
pub(crate) fn parse(level: u8, e: u64) -> Ent {
    if e & V1_PR == 0 {
        return Ent::Empty;
    }
    let own = level_shift(level);
    let mut p = Perms::U;
    if e & V1_IR != 0 {
        p |= Perms::R | Perms::X;
    }
    if e & V1_IW != 0 {
        p |= Perms::W;
    }
    match (e >> V1_NEXT_LEVEL_SHIFT) & 7 {
        0 => Ent::Leaf {
            phys: e & ADDR_MASK & !((1u64 << own.min(52)) - 1),
            shift: own,
            perms: p,
        },
        V1_NL_SIZED => {
            let ones = ((e & ADDR_MASK) >> 12).trailing_ones() as u8;
            let shift = (13 + ones).clamp(own + 1, own + 8);
            Ent::Leaf {
                phys: e & ADDR_MASK & !((1u64 << shift.min(63)) - 1),
                shift,
                perms: p,
            }
        }
        n if n + 1 == u64::from(level) => Ent::Table(e & ADDR_MASK),
        _ => Ent::Foreign,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_hand_built_entries() {
        let c = AmdV1Config::new(4);
        // PDE: PR, NL=3, address, IR, IW; ignored bits 4:1 and 63.
        let pde = 0x1 | (0xf << 1) | (3 << 9) | 0xabc_d000 | (1 << 61) | (1 << 62) | (1 << 63);
        assert_eq!(
            c.decode(4, pde),
            Decoded::Table {
                next: 0xabc_d000,
                next_level: 3,
                perms: Perms::ALL
            }
        );
        // PTE at level 1: PR, NL=0, FC, IR only, U (ignored).
        let pte = 0x1 | 0x1234_5000 | (1 << 59) | (1 << 60) | (1 << 61);
        assert_eq!(
            c.decode(1, pte),
            Decoded::Leaf {
                base: 0x1234_5000,
                shift: 12,
                perms: Perms::R | Perms::X | Perms::U,
                force_coherent: true
            }
        );
        // Level-2 PTE with NL=0: a 2 MiB page; IW only.
        assert_eq!(
            c.decode(2, 0x1 | 0x4060_0000 | (1 << 62)),
            Decoded::Leaf {
                base: 0x4060_0000,
                shift: 21,
                perms: Perms::W | Perms::U,
                force_coherent: false
            }
        );
        // Skipping: a level-4 PDE pointing to a level-1 table.
        assert!(matches!(
            c.decode(4, 0x1 | (1 << 9) | 0x5000),
            Decoded::Table { next_level: 1, .. }
        ));
        assert_eq!(c.decode(3, 0x1000 | (1 << 61)), Decoded::NotPresent);
    }

    #[test]
    fn next_level_seven_sizes() {
        let c = AmdV1Config::new(3);
        // 8 KiB: bit 12 = 0 → 2^13; at level 1.
        let e8k = 0x1 | (7 << 9) | 0x8_6000 | V1_IR;
        assert_eq!(sized_page_shift(e8k), Some(13));
        assert!(matches!(
            c.decode(1, e8k),
            Decoded::Leaf {
                shift: 13,
                base: 0x8_6000,
                ..
            }
        ));
        // 32 KiB: bits 13:12 = 11, bit 14 = 0 → 2^15; base aligned to 32 KiB.
        let e32k = 0x1 | (7 << 9) | 0x10_0000 | 0x3000 | V1_IR;
        assert!(matches!(
            c.decode(1, e32k),
            Decoded::Leaf {
                shift: 15,
                base: 0x10_0000,
                ..
            }
        ));
        // 1 MiB at level 1 (bits 18:12 ones, 19 zero).
        let e1m = 0x1 | (7 << 9) | 0x7f000 | 0x4000_0000 | V1_IR;
        assert!(matches!(
            c.decode(1, e1m),
            Decoded::Leaf {
                shift: 20,
                base: 0x4000_0000,
                ..
            }
        ));
        // 4 MiB at level 2 (bits 20:12 ones, 21 zero).
        let e4m = 0x1 | (7 << 9) | 0x1f_f000 | 0x4000_0000 | V1_IW;
        assert!(matches!(
            c.decode(2, e4m),
            Decoded::Leaf {
                shift: 22,
                base: 0x4000_0000,
                ..
            }
        ));
        // A size not larger than the level's own (8 KiB at level 2) is a bad encoding.
        assert_eq!(c.decode(2, e8k), Decoded::BadLevel);
        // A size reaching the table's coverage (2 MiB at level 1) is a bad encoding.
        let e2m = 0x1 | (7 << 9) | 0xf_f000;
        assert_eq!(sized_page_shift(e2m), Some(21));
        assert_eq!(c.decode(1, e2m), Decoded::BadLevel);
        // All-ones address field: no size.
        assert_eq!(c.decode(1, 0x1 | (7 << 9) | ADDR_MASK), Decoded::BadLevel);
    }

    #[test]
    fn bad_levels_and_reserved() {
        let c = AmdV1Config::new(6);
        // NL equal to or above the entry's level.
        assert_eq!(c.decode(3, 0x1 | (3 << 9)), Decoded::BadLevel);
        assert_eq!(c.decode(3, 0x1 | (5 << 9)), Decoded::BadLevel);
        // NL=1..6 at level 1 is not a table.
        assert_eq!(c.decode(1, 0x1 | (1 << 9)), Decoded::BadLevel);
        // Level 6 leaf of its own size: impossible.
        assert_eq!(c.decode(6, 0x1), Decoded::BadLevel);
        assert_eq!(c.decode(7, 0x1), Decoded::BadLevel);
        // Reserved 58:52.
        for b in 52..=58 {
            assert_eq!(c.decode(1, 0x1 | (1 << b)), Decoded::Reserved, "bit {b}");
        }
        let narrow = AmdV1Config { out_width: 48, ..c };
        assert_eq!(narrow.decode(1, 0x1 | (1 << 48)), Decoded::Reserved);
    }

    #[test]
    fn dte_perms_and_ad() {
        assert_eq!(AmdV1Config::new(3).dte_perms(), Perms::ALL);
        assert_eq!(
            AmdV1Config::new(3).with_perms(true, false).dte_perms(),
            Perms::R | Perms::X | Perms::U
        );
        assert_eq!(AmdV1Config::new(3).ad_mask(true, true), 0);
        let had = AmdV1Config::new(3).with_had(true);
        assert_eq!(had.ad_mask(false, true), 1 << 5);
        assert_eq!(had.ad_mask(true, true), (1 << 5) | (1 << 6));
        assert_eq!(AmdV1Config::new(6).input_width(), 64);
        assert_eq!(AmdV1Config::new(1).input_width(), 21);
        let ls = AmdV1Config::new(3).leaf_shifts(1);
        assert_eq!(ls, 0b1_1111_1111 << 12);
    }
}

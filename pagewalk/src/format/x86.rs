//! x86 (IA-32e) 4- and 5-level paging entries: VT-d first-stage tables and AMD-Vi v2 guest
//! tables.
//!
//! Layout: Intel SDM vol. 3A §4.5 "4-Level Paging and 5-Level Paging" (tables 4-15 to 4-20);
//! VT-d spec rev 4.1 §9.7 "First-Stage Paging Entries" and §3.6 "First-Stage Translation"
//! (access rights §3.6.1, A/D §3.6.2, SRE/WPE/ERE/EAFE controls in the scalable-mode PASID
//! entry §9.6); AMD IOMMU spec rev 3.08 §2.2.6.2 "Guest Page Tables" (x86 long-mode format,
//! CR0.WP treated as 1).
//!
//! | bits  | meaning                                                               |
//! |-------|-----------------------------------------------------------------------|
//! | 0     | P — present                                                           |
//! | 1     | R/W — writes allowed                                                  |
//! | 2     | U/S — user-mode accesses allowed                                      |
//! | 3, 4  | PWT, PCD (memory type, not modelled)                                  |
//! | 5     | A — accessed                                                          |
//! | 6     | D — dirty (leaf); ignored in non-leaf entries                         |
//! | 7     | PS in PDPE/PDE; reserved in PML5E/PML4E; PAT in PTE                   |
//! | 8     | G (leaf), ignored; MBZ in an AMD64 PML5E/PML4E (APM vol. 2 §5.3.3)     |
//! | 10    | EA — extended accessed (VT-d, when EAFE), otherwise ignored           |
//! | 12    | PAT in 1 GiB / 2 MiB leaves                                           |
//! | 51:12 | address; bits at and above the address width are reserved; in a       |
//! |       | 2 MiB / 1 GiB leaf bits 20:13 / 29:13 are reserved                    |
//! | 62:52 | ignored (protection keys are not used by DMA)                         |
//! | 63    | XD / NX — execute disable; reserved when NXE is off                   |

use super::{ADDR_MASK, Decoded, Ent, addr_above_width, bits};
use crate::types::{Access, AccessKind, Perms, level_shift};

/// P (bit 0).
pub const X86_P: u64 = 1 << 0;
/// R/W (bit 1).
pub const X86_RW: u64 = 1 << 1;
/// U/S (bit 2).
pub const X86_US: u64 = 1 << 2;
/// PWT (bit 3).
pub const X86_PWT: u64 = 1 << 3;
/// PCD (bit 4).
pub const X86_PCD: u64 = 1 << 4;
/// A (bit 5).
pub const X86_A: u64 = 1 << 5;
/// D (bit 6).
pub const X86_D: u64 = 1 << 6;
/// PS (bit 7).
pub const X86_PS: u64 = 1 << 7;
/// G (bit 8).
pub const X86_G: u64 = 1 << 8;
/// EA (bit 10), VT-d extended accessed.
pub const X86_EA: u64 = 1 << 10;
/// PAT in large leaves (bit 12).
pub const X86_PAT_LARGE: u64 = 1 << 12;
/// XD / NX (bit 63).
pub const X86_XD: u64 = 1 << 63;

/// Per-walk controls for x86-format tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct X86Config {
    /// 4 or 5 (VT-d FSPM / AMD-Vi GLX-derived paging mode).
    pub levels: u8,
    /// Output address width: address bits at and above it are reserved (VT-d: HAW, or the
    /// guest address width when nested; AMD: the physical address size).
    pub out_width: u8,
    /// Supervisor requests allowed (VT-d SRE). When off, privileged requests fault.
    pub sre: bool,
    /// Supervisor writes honour R/W (VT-d WPE; AMD: always, as if CR0.WP=1).
    pub wpe: bool,
    /// XD/NX is defined (otherwise bit 63 is reserved).
    pub nxe: bool,
    /// Execute requests allowed (VT-d ERE). When off, execute requests fault.
    pub ere: bool,
    /// Supervisor instruction fetches from user pages are refused (VT-d §3.6.1; SMEP-like).
    pub smep: bool,
    /// Set EA (bit 10) together with A (VT-d EAFE).
    pub eafe: bool,
    /// Accessed/dirty flags are updated.
    pub ad: bool,
    /// 1 GiB pages supported (VT-d FS1GP; always on AMD).
    pub ps_1g: bool,
}

impl X86Config {
    /// VT-d first-stage with `levels` levels and default controls: SRE, WPE, ERE and EAFE off,
    /// XD defined, A/D updated, 1 GiB pages, 52-bit output width.
    pub const fn vtd_first_stage(levels: u8) -> Self {
        Self {
            levels,
            out_width: 52,
            sre: false,
            wpe: false,
            nxe: true,
            ere: false,
            smep: true,
            eafe: false,
            ad: true,
            ps_1g: true,
        }
    }

    /// AMD-Vi v2 guest tables with `levels` levels: supervisor and execute requests allowed,
    /// CR0.WP treated as 1, NX defined, A/D updated, 1 GiB pages, 52-bit output width.
    pub const fn amd_v2(levels: u8) -> Self {
        Self {
            levels,
            out_width: 52,
            sre: true,
            wpe: true,
            nxe: true,
            ere: true,
            smep: false,
            eafe: false,
            ad: true,
            ps_1g: true,
        }
    }

    #[inline]
    pub(crate) const fn input_width(&self) -> u8 {
        level_shift(self.levels) + 9
    }

    pub(crate) const fn request_allowed(&self, access: Access) -> bool {
        (self.sre || !access.privileged)
            && (self.ere || !matches!(access.kind, AccessKind::Execute))
    }

    /// Decodes an entry at `level` (SDM tables 4-15..4-20).
    pub fn decode(&self, level: u8, e: u64) -> Decoded {
        if e & X86_P == 0 {
            return Decoded::NotPresent;
        }
        let mut rsvd = addr_above_width(self.out_width);
        if !self.nxe {
            rsvd |= X86_XD;
        }
        let leaf = match level {
            1 => true,
            2 => e & X86_PS != 0,
            3 => {
                if e & X86_PS != 0 && !self.ps_1g {
                    return Decoded::Reserved;
                }
                e & X86_PS != 0
            }
            4 | 5 => {
                rsvd |= X86_PS;
                false
            }
            _ => return Decoded::BadLevel,
        };
        let mut p = Perms::R.bits() | Perms::X.bits();
        if e & X86_RW != 0 {
            p |= Perms::W.bits();
        }
        if e & X86_US != 0 {
            p |= Perms::U.bits();
        }
        if self.nxe && e & X86_XD != 0 {
            p &= !Perms::X.bits();
        }
        let perms = Perms::from_bits_truncate(p);
        if leaf {
            let shift = level_shift(level);
            let (base, extra) = if level > 1 {
                // PAT is bit 12 in large leaves; bits shift-1:13 are reserved.
                (e & ADDR_MASK & !bits(shift - 1, 12), bits(shift - 1, 13))
            } else {
                (e & ADDR_MASK, 0)
            };
            if e & (rsvd | extra) != 0 {
                return Decoded::Reserved;
            }
            Decoded::Leaf {
                base,
                shift,
                perms,
                force_coherent: false,
            }
        } else {
            if e & rsvd != 0 {
                return Decoded::Reserved;
            }
            Decoded::Table {
                next: e & ADDR_MASK,
                next_level: level - 1,
                perms,
            }
        }
    }

    /// A/D bits to have set (VT-d §3.6.2; SDM §4.8): A (and EA with EAFE) on every entry
    /// used, D on the leaf for writes.
    pub const fn ad_mask(&self, leaf: bool, write: bool) -> u64 {
        if !self.ad {
            return 0;
        }
        let a = if self.eafe { X86_A | X86_EA } else { X86_A };
        if leaf && write { a | X86_D } else { a }
    }

    /// Access rights (VT-d §3.6.1, SDM §4.6): user requests need U/S=1 at every level; writes
    /// need R/W=1 at every level (supervisor writes only with WPE); execute needs XD=0 at every
    /// level and, for supervisor requests with SMEP semantics, a supervisor page.
    #[inline]
    pub const fn permits(&self, perms: Perms, access: Access) -> bool {
        if !self.request_allowed(access) {
            return false;
        }
        if !access.privileged && !perms.user() {
            return false;
        }
        match access.kind {
            // Present entries are readable: a zero-length read is a read here.
            AccessKind::Read | AccessKind::ZeroLengthRead => perms.read(),
            AccessKind::Write => perms.write() || (access.privileged && !self.wpe),
            AccessKind::Execute => {
                perms.execute() && !(access.privileged && self.smep && perms.user())
            }
        }
    }

    /// Leaf page sizes at `level` (mask over log2 sizes).
    pub const fn leaf_shifts(&self, level: u8) -> u64 {
        match level {
            1 => 1 << 12,
            2 => 1 << 21,
            3 if self.ps_1g => 1 << 30,
            _ => 0,
        }
    }
}

// ------------------------------------------------------------------ the builder's side

/// A non-leaf entry pointing at `next` (present, writable, user: the leaves decide).
pub(crate) fn encode_table(next: u64) -> u64 {
    next | X86_P | X86_RW | X86_US
}

/// A leaf at `level` mapping `phys` with `perms` (XD only when NXE defines it; PS above
/// level 1).
pub(crate) fn encode_leaf(c: &X86Config, level: u8, phys: u64, perms: Perms) -> u64 {
    let mut e = phys | X86_P;
    if perms.write() {
        e |= X86_RW;
    }
    if perms.user() {
        e |= X86_US;
    }
    if c.nxe && !perms.execute() {
        e |= X86_XD;
    }
    if level > 1 {
        e |= X86_PS;
    }
    e
}

/// What the builder wrote at `level` (see [`Ent`]).
pub(crate) fn parse(c: &X86Config, level: u8, e: u64) -> Ent {
    if e & X86_P == 0 {
        return Ent::Empty;
    }
    let own = level_shift(level);
    if level == 1 || (level <= 3 && e & X86_PS != 0) {
        let mut p = Perms::R;
        if e & X86_RW != 0 {
            p |= Perms::W;
        }
        if e & X86_US != 0 {
            p |= Perms::U;
        }
        if !(c.nxe && e & X86_XD != 0) {
            p |= Perms::X;
        }
        Ent::Leaf {
            phys: e & ADDR_MASK & !((1u64 << own) - 1),
            shift: own,
            perms: p,
        }
    } else if e & X86_PS != 0 {
        Ent::Foreign
    } else {
        Ent::Table(e & ADDR_MASK)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_hand_built_entries() {
        let c = X86Config::vtd_first_stage(4);
        // PTE: P, R/W, U/S, A, D, PAT(bit 7), G, addr, XD.
        let pte = 0x1 | 0x2 | 0x4 | 0x20 | 0x40 | 0x80 | 0x100 | 0x7_6543_2000 | (1 << 63);
        assert_eq!(
            c.decode(1, pte),
            Decoded::Leaf {
                base: 0x7_6543_2000,
                shift: 12,
                perms: Perms::R | Perms::W | Perms::U,
                force_coherent: false
            }
        );
        // Supervisor read-only PTE without XD.
        assert_eq!(
            c.decode(1, 0x1 | 0x3000),
            Decoded::Leaf {
                base: 0x3000,
                shift: 12,
                perms: Perms::R | Perms::X,
                force_coherent: false
            }
        );
        // PML4E: P, R/W, U/S, ignored bits 11:8 and 62:52.
        assert_eq!(
            c.decode(4, 0x7 | (0xf << 8) | (0x7ff << 52) | 0x12_3000),
            Decoded::Table {
                next: 0x12_3000,
                next_level: 3,
                perms: Perms::ALL
            }
        );
        // 2 MiB PDE with PAT (bit 12): base excludes bit 12.
        assert_eq!(
            c.decode(2, 0x3 | X86_PS | X86_PAT_LARGE | 0x60_0000),
            Decoded::Leaf {
                base: 0x60_0000,
                shift: 21,
                perms: Perms::R | Perms::W | Perms::X,
                force_coherent: false
            }
        );
        // 1 GiB PDPE.
        assert!(matches!(
            c.decode(3, 0x1 | X86_PS | 0x4000_0000),
            Decoded::Leaf {
                shift: 30,
                base: 0x4000_0000,
                ..
            }
        ));
        assert_eq!(c.decode(3, 0x6 | 0x1000), Decoded::NotPresent);
    }

    #[test]
    fn reserved_bits() {
        let c = X86Config {
            out_width: 40,
            ..X86Config::vtd_first_stage(5)
        };
        assert_eq!(c.decode(4, 0x1 | X86_PS | 0x1000), Decoded::Reserved);
        assert_eq!(c.decode(5, 0x1 | X86_PS | 0x1000), Decoded::Reserved);
        assert_eq!(c.decode(1, 0x1 | (1 << 40)), Decoded::Reserved);
        assert!(matches!(c.decode(1, 0x1 | (1 << 39)), Decoded::Leaf { .. }));
        // 2 MiB: bits 20:13 reserved; 1 GiB: bits 29:13.
        assert_eq!(c.decode(2, 0x1 | X86_PS | 0x2000), Decoded::Reserved);
        assert_eq!(c.decode(3, 0x1 | X86_PS | 0x1000_0000), Decoded::Reserved);
        // XD reserved without NXE.
        let nonx = X86Config { nxe: false, ..c };
        assert_eq!(nonx.decode(2, 0x1 | X86_XD | 0x1000), Decoded::Reserved);
        // 1 GiB pages unsupported.
        let no1g = X86Config { ps_1g: false, ..c };
        assert_eq!(no1g.decode(3, 0x1 | X86_PS), Decoded::Reserved);
        assert_eq!(c.decode(6, 0x1), Decoded::BadLevel);
    }

    #[test]
    fn access_rights() {
        let user_rw = Perms::R | Perms::W | Perms::U | Perms::X;
        let sup_ro = Perms::R | Perms::X;
        let c = X86Config {
            sre: true,
            ere: true,
            ..X86Config::vtd_first_stage(4)
        };
        assert!(c.permits(user_rw, Access::WRITE));
        assert!(
            !c.permits(sup_ro, Access::READ),
            "user access to a supervisor page"
        );
        assert!(c.permits(sup_ro, Access::READ.supervisor()));
        // WPE off: supervisor writes ignore R/W.
        assert!(c.permits(sup_ro, Access::WRITE.supervisor()));
        let wpe = X86Config { wpe: true, ..c };
        assert!(!wpe.permits(sup_ro, Access::WRITE.supervisor()));
        // SMEP-like: supervisor fetch from a user page.
        assert!(!c.permits(user_rw, Access::EXECUTE.supervisor()));
        assert!(c.permits(user_rw, Access::EXECUTE));
        assert!(!c.permits(Perms::R | Perms::U, Access::EXECUTE));
        // SRE / ERE off refuse the request outright.
        let strict = X86Config::vtd_first_stage(4);
        assert!(!strict.permits(Perms::ALL, Access::READ.supervisor()));
        assert!(!strict.permits(Perms::ALL, Access::EXECUTE));
        // AMD v2: supervisor may fetch from user pages; CR0.WP=1.
        let amd = X86Config::amd_v2(4);
        assert!(amd.permits(user_rw, Access::EXECUTE.supervisor()));
        assert!(!amd.permits(sup_ro, Access::WRITE.supervisor()));
    }

    #[test]
    fn ad_masks() {
        let c = X86Config::vtd_first_stage(4);
        assert_eq!(c.ad_mask(false, true), 1 << 5);
        assert_eq!(c.ad_mask(true, true), (1 << 5) | (1 << 6));
        let ea = X86Config { eafe: true, ..c };
        assert_eq!(ea.ad_mask(false, false), (1 << 5) | (1 << 10));
        let off = X86Config { ad: false, ..c };
        assert_eq!(off.ad_mask(true, true), 0);
    }
}

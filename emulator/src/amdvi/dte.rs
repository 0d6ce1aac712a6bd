//! The device-table entry as the unit reads it (AMD IOMMU spec #48882 rev 3.08, §2.2.2.1), with
//! the checks whose failure is an ILLEGAL_DEV_TABLE_ENTRY.

use super::layout::{DteQw0, DteQw1, DteQw2, Efr, dte_gcr3_root};

/// A decoded DTE with V = 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Dte {
    pub tv: bool,
    pub mode: u8,
    pub pt_root: u64,
    pub ir: bool,
    pub iw: bool,
    pub gv: bool,
    pub giov: bool,
    /// GCR3 table levels (GLX + 1).
    pub gcr3_levels: u8,
    pub gcr3_root: u64,
    /// Guest table levels (GPM: 4 or 5).
    pub guest_levels: u8,
    pub domain_id: u16,
    pub i: bool,
    pub se: bool,
    pub sa: bool,
    pub ex: bool,
}

/// What a DTE decode needs to know of the unit.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DteCheck {
    pub efr: Efr,
    /// Address bits at and above this are reserved in the DTE's pointers.
    pub phys_addr_bits: u8,
}

/// DTE qword 3 bits 53:0 are reserved in rev 3.05 (bits 63:54 are attribute overrides,
/// accepted and not modelled).
const QW3_RSVD: u64 = (1 << 54) - 1;

impl Dte {
    /// Decodes `w` (V = 1). `Err` is an ILLEGAL_DEV_TABLE_ENTRY: a reserved bit set, a
    /// reserved encoding, or a field of a feature EFR does not report.
    pub fn decode(w: [u64; 4], c: DteCheck) -> Result<Self, ()> {
        let q0 = DteQw0::from_bits(w[0]);
        let q1 = DteQw1::from_bits(w[1]);
        let q2 = DteQw2::from_bits(w[2]);
        let above = |addr: u64| addr >> c.phys_addr_bits != 0;
        let gt = c.efr.gt_sup();
        let gcr3_root = dte_gcr3_root(q0, q1);
        let illegal = q0.rsvd0() != 0
            || q0.rsvd63()
            // Host A/D updates (HASup/HDSup) and peripheral page requests (PPRSup) are features
            // the unit reports only as configured.
            || q0.had() != 0
            || ((q0.ppr() || q0.gprp()) && !c.efr.ppr_sup())
            || (!gt && (q0.gv() || q0.giov() || q0.glx() != 0 || gcr3_root != 0))
            || q0.glx() > c.efr.glx_sup()
            || above(q0.pt_root_page() << 12)
            || above(gcr3_root)
            || q1.rsvd106()
            || q1.ioctl() == 3
            || (q0.gv() && q2.gpm() > c.efr.gats())
            || (q2.iv() && (q2.rsvd52() != 0 || q2.int_ctl() == 3))
            || (q2.iv() && q2.int_ctl() == 2 && q2.int_tab_len() >= 12)
            || w[3] & QW3_RSVD != 0;
        if illegal {
            return Err(());
        }
        Ok(Self::unpack(w))
    }

    /// The fields of `w` (V = 1), without the checks: for DTEs [`Dte::decode`] accepted
    /// before (the DTE cache holds only those).
    pub fn unpack(w: [u64; 4]) -> Self {
        let q0 = DteQw0::from_bits(w[0]);
        let q1 = DteQw1::from_bits(w[1]);
        let q2 = DteQw2::from_bits(w[2]);
        Self {
            tv: q0.tv(),
            mode: q0.mode(),
            pt_root: q0.pt_root_page() << 12,
            ir: q0.ir(),
            iw: q0.iw(),
            gv: q0.gv(),
            giov: q0.giov(),
            gcr3_levels: q0.glx() + 1,
            gcr3_root: dte_gcr3_root(q0, q1),
            guest_levels: 4 + q2.gpm(),
            domain_id: q1.domain_id(),
            i: q1.i(),
            se: q1.se(),
            sa: q1.sa(),
            ex: q1.ex(),
        }
    }
}

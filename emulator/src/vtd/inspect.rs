//! The structures the VT-d unit follows for one requester, read without translating
//! ([`Vtd::structures`]): from the root table latched by the last SRTP (§10.4.6), the root
//! entry (§9.1 legacy, §9.2 scalable), the context entry (§9.3, §9.4) and, in scalable mode,
//! the PASID-directory (§9.5) and PASID-table (§9.6) entries of the request's PASID (RID_PASID
//! for a request without one).

use std::sync::atomic::Ordering;

use pagewalk::PhysMem;

use super::layout::*;
use super::regs::TTM_SCALABLE;
use super::{ACTIVE_TE, Vtd};
use crate::inspect::{StructureView, read_qwords};

impl<M: PhysMem> Vtd<M> {
    /// The chain of entries the unit would read for requester `rid` (bus 15:8, devfn 7:0)
    /// and `pasid` (scalable mode only; `None`: the context entry's RID_PASID).
    pub fn structures(&self, rid: u16, pasid: Option<u32>) -> StructureView {
        let mut v = StructureView::default();
        let active = self.active.load(Ordering::Acquire);
        let rtaddr = RtaddrReg::from_bits(active);
        let root_table = rtaddr.rta_page() << 12;
        let (bus, devfn) = (u64::from(rid >> 8), u64::from(rid & 0xff));
        v.push(
            "root table pointer",
            root_table,
            vec![active & !ACTIVE_TE],
            vec![
                ("TES", active & ACTIVE_TE),
                ("TTM", u64::from(rtaddr.ttm())),
                ("RTA", root_table),
            ],
        );
        if active & ACTIVE_TE == 0 {
            return v.stopped("translation is disabled (GSTS.TES = 0)");
        }
        let scalable = u64::from(rtaddr.ttm()) == TTM_SCALABLE;
        let root_addr = root_table + bus * 16;
        let root = match read_qwords(&self.mem, root_addr, 2) {
            Ok(q) => q,
            Err(e) => return v.stopped(e),
        };
        if !scalable {
            let lo = RootEntryLo::from_bits(root[0]);
            let ctp = lo.ctp_page() << 12;
            v.push(
                "root entry",
                root_addr,
                root,
                vec![("P", u64::from(lo.p())), ("CTP", ctp)],
            );
            if !lo.p() {
                return v.stopped("root entry not present");
            }
            let ctx_addr = ctp + devfn * 16;
            let ctx = match read_qwords(&self.mem, ctx_addr, 2) {
                Ok(q) => q,
                Err(e) => return v.stopped(e),
            };
            let (lo, hi) = (
                ContextEntryLo::from_bits(ctx[0]),
                ContextEntryHi::from_bits(ctx[1]),
            );
            v.push(
                "context entry",
                ctx_addr,
                ctx,
                vec![
                    ("P", u64::from(lo.p())),
                    ("FPD", u64::from(lo.fpd())),
                    ("T", u64::from(lo.t())),
                    ("SLPTPTR", lo.slptptr_page() << 12),
                    ("AW", u64::from(hi.aw())),
                    ("DID", u64::from(hi.did())),
                ],
            );
            return if lo.p() {
                v
            } else {
                v.stopped("context entry not present")
            };
        }
        // Scalable mode: the lower half of the root entry serves devfn 0-127, the upper half
        // 128-255; each context entry is 256 bits.
        let half = ScalableRootHalfRaw::from_bits(root[usize::from(devfn >= 128)]);
        let ctp = half.ctp_page() << 12;
        v.push(
            "scalable root entry",
            root_addr,
            root,
            vec![
                (if devfn < 128 { "LP" } else { "UP" }, u64::from(half.p())),
                (if devfn < 128 { "LCTP" } else { "UCTP" }, ctp),
            ],
        );
        if !half.p() {
            return v.stopped("root entry half not present");
        }
        let ctx_addr = ctp + (devfn & 0x7f) * 32;
        let ctx = match read_qwords(&self.mem, ctx_addr, 4) {
            Ok(q) => q,
            Err(e) => return v.stopped(e),
        };
        let (q0, q1) = (
            ScalableContextQw0::from_bits(ctx[0]),
            ScalableContextQw1::from_bits(ctx[1]),
        );
        let dir = q0.pasiddirptr_page() << 12;
        v.push(
            "scalable context entry",
            ctx_addr,
            ctx,
            vec![
                ("P", u64::from(q0.p())),
                ("FPD", u64::from(q0.fpd())),
                ("DTE", u64::from(q0.dte())),
                ("PASIDE", u64::from(q0.paside())),
                ("PRE", u64::from(q0.pre())),
                ("PDTS", u64::from(q0.pdts())),
                ("PASIDDIRPTR", dir),
                ("RID_PASID", u64::from(q1.rid_pasid())),
            ],
        );
        if !q0.p() {
            return v.stopped("context entry not present");
        }
        let pasid = u64::from(pasid.unwrap_or(q1.rid_pasid()));
        let dir_addr = dir + (pasid >> 6) * 8;
        let d = match read_qwords(&self.mem, dir_addr, 1) {
            Ok(q) => q,
            Err(e) => return v.stopped(e),
        };
        let de = PasidDirEntryRaw::from_bits(d[0]);
        let table = de.smptblptr_page() << 12;
        v.push(
            "PASID-directory entry",
            dir_addr,
            d,
            vec![
                ("PASID", pasid),
                ("P", u64::from(de.p())),
                ("FPD", u64::from(de.fpd())),
                ("SMPTBLPTR", table),
            ],
        );
        if !de.p() {
            return v.stopped("PASID-directory entry not present");
        }
        let pe_addr = table + (pasid & 0x3f) * 64;
        let pe = match read_qwords(&self.mem, pe_addr, 8) {
            Ok(q) => q,
            Err(e) => return v.stopped(e),
        };
        let (p0, p1, p2) = (
            PasidEntryQw0::from_bits(pe[0]),
            PasidEntryQw1::from_bits(pe[1]),
            PasidEntryQw2::from_bits(pe[2]),
        );
        v.push(
            "PASID-table entry",
            pe_addr,
            pe,
            vec![
                ("P", u64::from(p0.p())),
                ("FPD", u64::from(p0.fpd())),
                ("AW", u64::from(p0.aw())),
                ("PGTT", u64::from(p0.pgtt())),
                ("SSADE", u64::from(p0.ssade())),
                ("SSPTPTR", p0.ssptptr_page() << 12),
                ("DID", u64::from(p1.did())),
                ("SRE", u64::from(p2.sre())),
                ("FSPM", u64::from(p2.fspm())),
                ("FSPTPTR", p2.fsptptr_page() << 12),
            ],
        );
        if p0.p() {
            v
        } else {
            v.stopped("PASID-table entry not present")
        }
    }
}

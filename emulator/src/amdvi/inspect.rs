//! The structures the AMD-Vi unit follows for one device, read without translating
//! ([`AmdVi::structures`]): the Device Table Base register (§3.4.1), the device-table entry
//! (§2.2.2.1) and, when the DTE enables guest translation (GV = 1), the GCR3-table entries of
//! the request's PASID (§2.2.6; PASID 0 for a request without one under GIoV).

use std::sync::atomic::Ordering;

use pagewalk::PhysMem;

use super::AmdVi;
use super::layout::{DTE_BYTES, DevTabBase, DteQw0, DteQw1, DteQw2, Gcr3Entry, dte_gcr3_root};
use crate::inspect::{StructureView, read_qwords};

impl<M: PhysMem> AmdVi<M> {
    /// The chain of entries the unit would read for device `device_id` and `pasid`.
    pub fn structures(&self, device_id: u16, pasid: Option<u32>) -> StructureView {
        let mut v = StructureView::default();
        let raw = self.fast.dev_tab.load(Ordering::Acquire);
        let table = DevTabBase::from_bits(raw);
        let base = table.base_page() << 12;
        v.push(
            "device table base",
            base,
            vec![raw],
            vec![
                ("IommuEn", self.fast.control.load(Ordering::Acquire) & 1),
                ("DevTabBase", base),
                ("Size", u64::from(table.size())),
            ],
        );
        let off = u64::from(device_id) * DTE_BYTES;
        if off + DTE_BYTES > table.bytes() {
            return v.stopped(format!(
                "device id {device_id:#x} is beyond the device table"
            ));
        }
        let at = base + off;
        let w = match read_qwords(&self.mem, at, 4) {
            Ok(q) => q,
            Err(e) => return v.stopped(e),
        };
        let (q0, q1, q2) = (
            DteQw0::from_bits(w[0]),
            DteQw1::from_bits(w[1]),
            DteQw2::from_bits(w[2]),
        );
        let gcr3 = dte_gcr3_root(q0, q1);
        v.push(
            "DTE",
            at,
            w,
            vec![
                ("V", u64::from(q0.v())),
                ("TV", u64::from(q0.tv())),
                ("Mode", u64::from(q0.mode())),
                ("PtRoot", q0.pt_root_page() << 12),
                ("PPR", u64::from(q0.ppr())),
                ("GIoV", u64::from(q0.giov())),
                ("GV", u64::from(q0.gv())),
                ("GLX", u64::from(q0.glx())),
                ("GCR3", gcr3),
                ("IR", u64::from(q0.ir())),
                ("IW", u64::from(q0.iw())),
                ("DomainID", u64::from(q1.domain_id())),
                ("I", u64::from(q1.i())),
                ("GPM", u64::from(q2.gpm())),
            ],
        );
        if !q0.v() {
            return v.stopped("DTE not valid (V = 0): requests pass untranslated");
        }
        if !q0.gv() {
            return v;
        }
        let Some(pasid) = pasid.or(q0.giov().then_some(0)) else {
            return v;
        };
        if q0.mode() != 0 {
            return v.stopped(
                "the GCR3 table is at guest-physical addresses (Mode != 0): not followed",
            );
        }
        // Each GCR3 level indexes 9 bits of the PASID, the top level first.
        let levels = q0.glx() + 1;
        let mut table = gcr3;
        for level in (1..=levels).rev() {
            let index = (u64::from(pasid) >> (9 * u32::from(level - 1))) & 0x1ff;
            let at = table + 8 * index;
            let e = match read_qwords(&self.mem, at, 1) {
                Ok(q) => q,
                Err(e) => return v.stopped(e),
            };
            let g = Gcr3Entry::from_bits(e[0]);
            v.push(
                if level == 1 {
                    "GCR3 entry"
                } else {
                    "GCR3 table entry"
                },
                at,
                e,
                vec![
                    ("PASID", u64::from(pasid)),
                    ("level", u64::from(level)),
                    ("V", u64::from(g.v())),
                    ("pointer", g.page() << 12),
                ],
            );
            if !g.v() {
                return v.stopped("GCR3 entry not valid");
            }
            table = g.page() << 12;
        }
        v
    }
}

//! VT-d root, context and PASID structures written the way firmware or a hypervisor writes
//! them, for units no driver programs: the simulator's nested platform, the timing tests and
//! the benchmarks. Each structure is written in memory only (§9.1-§9.6); the unit reads them
//! once [`RootTable::enable`] has pointed RTADDR at the root table and turned translation on,
//! through its registers like any software.

use std::collections::BTreeMap;

use pagewalk::{BuildError, FrameAllocator, PhysMem};

use super::Vtd;
use super::layout::{
    ContextEntryHi, ContextEntryLo, PasidDirEntryRaw, RootEntryLo, RtaddrReg, ScalableContextQw0,
    ScalableRootHalfRaw,
};
use super::regs::{GCMD_REG, GCMD_SRTP, GCMD_TE, RTADDR_REG, TTM_LEGACY, TTM_SCALABLE};

/// A zeroed 4 KiB page from `alloc`.
fn page<M: PhysMem + ?Sized, A: FrameAllocator + ?Sized>(
    mem: &M,
    alloc: &mut A,
) -> Result<u64, BuildError> {
    let f = alloc.alloc_frame().ok_or(BuildError::AllocatorExhausted)?;
    for i in 0..512 {
        mem.write_u64(f + i * 8, 0)?;
    }
    Ok(f)
}

/// A root table in legacy or scalable mode, and the context, PASID-directory and PASID tables
/// written under it so far.
#[derive(Debug, Clone)]
pub struct RootTable {
    root: u64,
    scalable: bool,
    /// Context tables by bus (scalable mode: by bus and half, `bus << 1 | devfn >> 7`).
    contexts: BTreeMap<u16, u64>,
    /// Scalable mode: each requester's PASID directory.
    dirs: BTreeMap<u16, u64>,
    /// Scalable mode: PASID tables by requester and directory index.
    tables: BTreeMap<(u16, u32), u64>,
}

impl RootTable {
    /// An empty root table (every entry not present), legacy or `scalable`.
    pub fn new<M: PhysMem + ?Sized, A: FrameAllocator + ?Sized>(
        mem: &M,
        alloc: &mut A,
        scalable: bool,
    ) -> Result<Self, BuildError> {
        Ok(RootTable {
            root: page(mem, alloc)?,
            scalable,
            contexts: BTreeMap::new(),
            dirs: BTreeMap::new(),
            tables: BTreeMap::new(),
        })
    }

    /// The root table's address.
    pub fn root(&self) -> u64 {
        self.root
    }

    /// The context table holding `sid`'s entry, written into the root entry on first use.
    fn context_table<M: PhysMem + ?Sized, A: FrameAllocator + ?Sized>(
        &mut self,
        mem: &M,
        alloc: &mut A,
        sid: u16,
    ) -> Result<u64, BuildError> {
        let (bus, devfn) = (sid >> 8, sid & 0xff);
        let key = if self.scalable {
            bus << 1 | devfn >> 7
        } else {
            bus
        };
        if let Some(&c) = self.contexts.get(&key) {
            return Ok(c);
        }
        let c = page(mem, alloc)?;
        let at = self.root + u64::from(bus) * 16;
        if self.scalable {
            // §9.2: the lower half serves devfn 0-127, the upper half 128-255.
            let half = ScalableRootHalfRaw::new()
                .with_p(true)
                .with_ctp_page(c >> 12);
            mem.write_u64(at + u64::from(devfn >> 7) * 8, half.into_bits())?;
        } else {
            let re = RootEntryLo::new().with_p(true).with_ctp_page(c >> 12);
            mem.write_u64(at, re.into_bits())?;
        }
        self.contexts.insert(key, c);
        Ok(c)
    }

    /// Legacy mode (§9.3): `sid` translated by the `aw`-encoded second-stage tables at
    /// `slptptr` (T = 00b) in domain `did`.
    pub fn legacy<M: PhysMem + ?Sized, A: FrameAllocator + ?Sized>(
        &mut self,
        mem: &M,
        alloc: &mut A,
        sid: u16,
        did: u16,
        aw: u8,
        slptptr: u64,
    ) -> Result<(), BuildError> {
        debug_assert!(
            !self.scalable,
            "a legacy context entry in a scalable root table"
        );
        let ce = self.context_table(mem, alloc, sid)? + u64::from(sid & 0xff) * 16;
        let hi = ContextEntryHi::new().with_aw(aw).with_did(did);
        let lo = ContextEntryLo::new()
            .with_p(true)
            .with_slptptr_page(slptptr >> 12);
        // The present half last.
        mem.write_u64(ce + 8, hi.into_bits())?;
        mem.write_u64(ce, lo.into_bits())?;
        Ok(())
    }

    /// Scalable mode: `sid`'s PASID-table entry for `pasid` (§9.6), its qwords 0-2 as given
    /// (qword 0 written last, as it holds P). The context entry (§9.4: PASIDE set, RID_PASID
    /// 0, a one-page PASID directory) and the PASID-directory entry (§9.5) are written on
    /// first use.
    pub fn pasid_entry<M: PhysMem + ?Sized, A: FrameAllocator + ?Sized>(
        &mut self,
        mem: &M,
        alloc: &mut A,
        sid: u16,
        pasid: u32,
        qw: [u64; 3],
    ) -> Result<(), BuildError> {
        debug_assert!(self.scalable, "a PASID entry in a legacy root table");
        let dir = match self.dirs.get(&sid) {
            Some(&d) => d,
            None => {
                let d = page(mem, alloc)?;
                let ce = self.context_table(mem, alloc, sid)? + u64::from(sid & 0x7f) * 32;
                let q0 = ScalableContextQw0::new()
                    .with_p(true)
                    .with_paside(true)
                    .with_pasiddirptr_page(d >> 12);
                mem.write_u64(ce, q0.into_bits())?;
                self.dirs.insert(sid, d);
                d
            }
        };
        let index = pasid >> 6;
        let table = match self.tables.get(&(sid, index)) {
            Some(&t) => t,
            None => {
                let t = page(mem, alloc)?;
                let de = PasidDirEntryRaw::new()
                    .with_p(true)
                    .with_smptblptr_page(t >> 12);
                mem.write_u64(dir + u64::from(index) * 8, de.into_bits())?;
                self.tables.insert((sid, index), t);
                t
            }
        };
        let pe = table + u64::from(pasid & 0x3f) * 64;
        mem.write_u64(pe + 8, qw[1])?;
        mem.write_u64(pe + 16, qw[2])?;
        mem.write_u64(pe, qw[0])?;
        Ok(())
    }

    /// Points `vtd`'s RTADDR at the table in its mode, latches it (SRTP) and turns
    /// translation on (TE), through the registers.
    pub fn enable<M: PhysMem>(&self, vtd: &Vtd<M>) {
        let ttm = if self.scalable {
            TTM_SCALABLE
        } else {
            TTM_LEGACY
        };
        let rtaddr = RtaddrReg::new()
            .with_ttm(ttm as u8)
            .with_rta_page(self.root >> 12);
        vtd.mmio_write(RTADDR_REG, 8, rtaddr.into_bits());
        vtd.mmio_write(GCMD_REG, 4, u64::from(GCMD_SRTP));
        vtd.mmio_write(GCMD_REG, 4, u64::from(GCMD_TE));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::VtdConfig;
    use crate::request::{AccessKind, DmaRequest};
    use crate::trace::Trace;
    use crate::vtd::layout::{PGTT_SECOND_STAGE, PasidEntryQw0, PasidEntryQw1};
    use pagewalk::{
        BumpAllocator, FlatMem, PageSizePolicy, Perms, TableBuilder, VtdSsConfig, WalkConfig,
    };

    /// Both modes: the structures written here are the ones the unit follows (its own view
    /// of them, `Vtd::structures`) and translate through.
    #[test]
    fn the_unit_follows_the_structures_written() {
        for scalable in [false, true] {
            let mem = FlatMem::new(0, 16 << 20);
            let mut alloc = BumpAllocator::new(0x10_0000, 16 << 20);
            let mut ss = TableBuilder::new(
                WalkConfig::VtdSecondStage(VtdSsConfig::new(4).with_haw(48)),
                &mem,
                &mut alloc,
            )
            .unwrap();
            ss.map(
                &mem,
                &mut alloc,
                0x40_0000,
                0x80_0000,
                0x1000,
                Perms::RW,
                PageSizePolicy::Fixed(12),
            )
            .unwrap();
            let mut rt = RootTable::new(&mem, &mut alloc, scalable).unwrap();
            // Requesters in both halves of a scalable root entry, and on two buses.
            for sid in [0x0010u16, 0x0090, 0x0208] {
                if scalable {
                    let qw0 = PasidEntryQw0::new()
                        .with_p(true)
                        .with_aw(2)
                        .with_pgtt(PGTT_SECOND_STAGE)
                        .with_ssptptr_page(ss.root() >> 12);
                    let qw1 = PasidEntryQw1::new().with_did(7);
                    rt.pasid_entry(
                        &mem,
                        &mut alloc,
                        sid,
                        0,
                        [qw0.into_bits(), qw1.into_bits(), 0],
                    )
                    .unwrap();
                } else {
                    rt.legacy(&mem, &mut alloc, sid, 7, 2, ss.root()).unwrap();
                }
            }
            let vtd = Vtd::new(mem, VtdConfig::default(), Box::new(|_| {})).unwrap();
            rt.enable(&vtd);
            for sid in [0x0010u16, 0x0090, 0x0208] {
                let v = vtd.structures(sid, None);
                assert_eq!(v.stop, None, "{scalable} {sid:#x}: {v:?}");
                let t = vtd
                    .translate_with(
                        &DmaRequest::new(sid, 0x40_0010, 8, AccessKind::Read),
                        &mut Trace::new(),
                    )
                    .unwrap();
                assert_eq!((t.addr, t.domain_id), (0x80_0010, 7), "{scalable} {sid:#x}");
            }
            // A requester nothing was written for is not present.
            assert!(vtd.structures(0x0011, None).stop.is_some());
        }
    }
}

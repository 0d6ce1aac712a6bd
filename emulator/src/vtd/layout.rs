//! Register layouts declared once, with `bitfield-struct`: each declaration gives the unit its
//! encoder (the values it reports) and a driver its decoder (what it learns). The tests keep
//! hand-built register words as independent oracles.

use bitfield_struct::bitfield;

/// CAP_REG, the capability register (VT-d spec rev 4.1, §10.4.2).
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct CapReg {
    /// ND, bits 2:0: 2^(4 + 2 * ND) domain ids.
    #[bits(3)]
    pub nd: u8,
    /// AFL, bit 3: advanced fault logging.
    pub afl: bool,
    /// RWBF, bit 4: write-buffer flushing required.
    pub rwbf: bool,
    /// PLMR, bit 5: protected low-memory region.
    pub plmr: bool,
    /// PHMR, bit 6: protected high-memory region.
    pub phmr: bool,
    /// CM, bit 7: caching mode (not-present entries may be cached).
    pub cm: bool,
    /// SAGAW, bits 12:8: supported second-stage depths (bit 1 3-level, 2 4-level, 3 5-level).
    #[bits(5)]
    pub sagaw: u8,
    #[bits(3)]
    __: u8,
    /// MGAW, bits 21:16: the maximum guest address width, minus one.
    #[bits(6)]
    pub mgaw_minus_1: u8,
    /// ZLR, bit 22: zero-length reads.
    pub zlr: bool,
    __: bool,
    /// FRO, bits 33:24: the fault recording registers' offset, in 16-byte units.
    #[bits(10)]
    pub fro: u16,
    /// SLLPS, bits 37:34: second-stage large pages (bit 0 2 MiB, bit 1 1 GiB).
    #[bits(4)]
    pub sllps: u8,
    __: bool,
    /// PSI, bit 39: page-selective invalidation.
    pub psi: bool,
    /// NFR, bits 47:40: the number of fault recording registers, minus one.
    pub nfr_minus_1: u8,
    /// MAMV, bits 53:48: the largest address mask of a page-selective invalidation.
    #[bits(6)]
    pub mamv: u8,
    /// DWD, bit 54: write draining.
    pub dwd: bool,
    /// DRD, bit 55: read draining.
    pub drd: bool,
    /// FS1GP, bit 56: first-stage 1 GiB pages.
    pub fs1gp: bool,
    #[bits(2)]
    __: u8,
    /// PI, bit 59: posted interrupts.
    pub pi: bool,
    /// FS5LP, bit 60: first-stage 5-level paging.
    pub fs5lp: bool,
    /// ECMDS, bit 61: enhanced command support.
    pub ecmds: bool,
    /// ESIRTPS, bit 62: enhanced set interrupt-remap-table pointer.
    pub esirtps: bool,
    /// ESRTPS, bit 63: enhanced set root-table pointer.
    pub esrtps: bool,
}

impl CapReg {
    /// The number of domain ids ND encodes.
    pub fn domain_ids(&self) -> u32 {
        1 << (4 + 2 * u32::from(self.nd()))
    }

    /// The maximum guest address width.
    pub fn mgaw(&self) -> u8 {
        self.mgaw_minus_1() + 1
    }

    /// The fault recording registers' offset in bytes.
    pub fn fault_regs_offset(&self) -> u64 {
        u64::from(self.fro()) * 16
    }

    /// The number of fault recording registers.
    pub fn fault_regs(&self) -> u64 {
        u64::from(self.nfr_minus_1()) + 1
    }
}

/// ECAP_REG, the extended capability register (VT-d spec rev 4.1, §10.4.3).
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct EcapReg {
    /// C, bit 0: page-walk coherency.
    pub c: bool,
    /// QI, bit 1: queued invalidation.
    pub qi: bool,
    /// DT, bit 2: device TLBs.
    pub dt: bool,
    /// IR, bit 3: interrupt remapping.
    pub ir: bool,
    /// EIM, bit 4: extended interrupt mode.
    pub eim: bool,
    __: bool,
    /// PT, bit 6: pass-through.
    pub pt: bool,
    /// SC, bit 7: snoop control.
    pub sc: bool,
    /// IRO, bits 17:8: the IOTLB registers' offset, in 16-byte units.
    #[bits(10)]
    pub iro: u16,
    #[bits(2)]
    __: u8,
    /// MHMV, bits 23:20: the largest handle mask of an interrupt-entry-cache invalidation.
    #[bits(4)]
    pub mhmv: u8,
    __: bool,
    /// MTS, bit 25: memory-type support.
    pub mts: bool,
    /// NEST, bit 26: nested translation.
    pub nest: bool,
    #[bits(2)]
    __: u8,
    /// PRS, bit 29: page requests.
    pub prs: bool,
    /// ERS, bit 30: execute requests.
    pub ers: bool,
    /// SRS, bit 31: supervisor requests.
    pub srs: bool,
    __: bool,
    /// NWFS, bit 33: no write flag.
    pub nwfs: bool,
    /// EAFS, bit 34: extended accessed flag.
    pub eafs: bool,
    /// PSS, bits 39:35: the PASID width, minus one.
    #[bits(5)]
    pub pss: u8,
    /// PASID, bit 40: PASIDs.
    pub pasid: bool,
    /// DIT, bit 41: device-TLB invalidation throttling.
    pub dit: bool,
    /// PDS, bit 42: page-request drain.
    pub pds: bool,
    /// SMTS, bit 43: scalable mode.
    pub smts: bool,
    /// VCS, bit 44: virtual command support.
    pub vcs: bool,
    /// SSADS, bit 45: second-stage accessed/dirty.
    pub ssads: bool,
    /// SSTS, bit 46: second-stage translation in scalable mode.
    pub ssts: bool,
    /// FSTS, bit 47: first-stage translation in scalable mode.
    pub fsts: bool,
    /// SMPWCS, bit 48: scalable-mode page-walk coherency.
    pub smpwcs: bool,
    /// RPS, bit 49: RID_PASID.
    pub rps: bool,
    /// Bits 63:50, not modelled (reported zero).
    #[bits(14)]
    __: u16,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_fields_sit_where_the_spec_puts_them() {
        // Hand-built: ND 2, CM, SAGAW 0b0110, MGAW 47, ZLR, FRO 0x22, SLLPS 0b11, PSI, NFR 7,
        // MAMV 18, DWD, DRD, FS1GP, FS5LP.
        let word = 2
            | (1 << 7)
            | (0b0110 << 8)
            | (47 << 16)
            | (1 << 22)
            | (0x22 << 24)
            | (0b11 << 34)
            | (1 << 39)
            | (7 << 40)
            | (18 << 48)
            | (1 << 54)
            | (1 << 55)
            | (1 << 56)
            | (1 << 60);
        let c = CapReg::from_bits(word);
        assert_eq!(c.domain_ids(), 256);
        assert!(c.cm() && c.zlr() && c.psi() && c.dwd() && c.drd() && c.fs1gp() && c.fs5lp());
        assert!(!c.rwbf() && !c.afl() && !c.pi());
        assert_eq!((c.sagaw(), c.mgaw(), c.sllps()), (0b0110, 48, 0b11));
        assert_eq!(
            (c.fault_regs_offset(), c.fault_regs(), c.mamv()),
            (0x220, 8, 18)
        );
        let built = CapReg::new()
            .with_nd(2)
            .with_cm(true)
            .with_sagaw(0b0110)
            .with_mgaw_minus_1(47)
            .with_zlr(true)
            .with_fro(0x22)
            .with_sllps(0b11)
            .with_psi(true)
            .with_nfr_minus_1(7)
            .with_mamv(18)
            .with_dwd(true)
            .with_drd(true)
            .with_fs1gp(true)
            .with_fs5lp(true);
        assert_eq!(built.into_bits(), word);
    }

    #[test]
    fn ecap_fields_sit_where_the_spec_puts_them() {
        // Hand-built: C, QI, DT, PT, SC, IRO 0x50, NEST, ERS, SRS, PSS 19, PASID, SMTS, SSADS,
        // SSTS, FSTS, RPS.
        let word = 1
            | (1 << 1)
            | (1 << 2)
            | (1 << 6)
            | (1 << 7)
            | (0x50 << 8)
            | (1 << 26)
            | (1 << 30)
            | (1 << 31)
            | (19 << 35)
            | (1 << 40)
            | (1 << 43)
            | (1 << 45)
            | (1 << 46)
            | (1 << 47)
            | (1 << 49);
        let e = EcapReg::from_bits(word);
        assert!(e.c() && e.qi() && e.dt() && e.pt() && e.sc() && e.nest());
        assert!(e.ers() && e.srs() && e.pasid() && e.smts() && e.ssads() && e.ssts());
        assert!(e.fsts() && e.rps() && !e.ir() && !e.prs() && !e.vcs());
        assert_eq!((e.iro(), e.pss()), (0x50, 19));
        assert_eq!(
            EcapReg::new()
                .with_c(true)
                .with_qi(true)
                .with_dt(true)
                .with_pt(true)
                .with_sc(true)
                .with_iro(0x50)
                .with_nest(true)
                .with_ers(true)
                .with_srs(true)
                .with_pss(19)
                .with_pasid(true)
                .with_smts(true)
                .with_ssads(true)
                .with_ssts(true)
                .with_fsts(true)
                .with_rps(true)
                .into_bits(),
            word
        );
    }
}

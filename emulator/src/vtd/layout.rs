//! Register and structure layouts declared once, with `bitfield-struct`: each declaration
//! gives one side its encoder and the other its decoder (the unit encodes its capability
//! registers and a driver decodes them; a driver encodes root, context and PASID entries and
//! the unit decodes them). The tests keep hand-built words as independent oracles.

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
    #[bits(2)]
    __: u8,
    /// ADMS, bit 52: abort-DMA mode (TTM = 11b).
    pub adms: bool,
    /// RPRIVS, bit 53: the RID_PRIV field of scalable-mode context entries.
    pub rprivs: bool,
    /// Bits 63:54, not modelled (reported zero).
    #[bits(10)]
    __: u16,
}

bitflags::bitflags! {
    /// GCMD_REG's commands and GSTS_REG's matching status bits (§10.4.4, §10.4.5): one flag
    /// set, since each status bit sits where its command does.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct GlobalCommand: u32 {
        /// TE / TES: translation enable.
        const TE = 1 << 31;
        /// SRTP / RTPS: set root table pointer.
        const SRTP = 1 << 30;
        /// SFL / FLS: set fault log.
        const SFL = 1 << 29;
        /// EAFL / AFLS: enable advanced fault logging.
        const EAFL = 1 << 28;
        /// WBF / WBFS: write buffer flush.
        const WBF = 1 << 27;
        /// QIE / QIES: queued invalidation enable.
        const QIE = 1 << 26;
        /// IRE / IRES: interrupt remapping enable.
        const IRE = 1 << 25;
        /// SIRTP / IRTPS: set interrupt remap table pointer.
        const SIRTP = 1 << 24;
        /// CFI / CFIS: compatibility format interrupts.
        const CFI = 1 << 23;
    }
}

/// RTADDR_REG, the root table address (§10.4.6).
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct RtaddrReg {
    /// Bits 9:0.
    #[bits(10)]
    pub rsvd: u16,
    /// TTM: 00b legacy, 01b scalable, 11b abort DMA.
    #[bits(2)]
    pub ttm: u8,
    /// RTA: the root table's page number.
    #[bits(52)]
    pub rta_page: u64,
}

/// IQA_REG, the invalidation queue address (§10.4.24).
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct IqaReg {
    /// QS: the queue holds 2^QS 4 KiB pages.
    #[bits(3)]
    pub qs: u8,
    /// Bits 10:3.
    pub rsvd: u8,
    /// DW: 256-bit descriptors (needed in scalable mode; an error without ECAP.SMTS, IQEI 5).
    pub dw: bool,
    /// IQA: the queue's page number.
    #[bits(52)]
    pub iqa_page: u64,
}

impl IqaReg {
    /// The queue's size in bytes.
    pub fn queue_bytes(&self) -> u64 {
        1 << (12 + u32::from(self.qs()))
    }

    /// Bytes per descriptor.
    pub fn descriptor_bytes(&self) -> u64 {
        if self.dw() { 32 } else { 16 }
    }
}

// ----------------------------------------------------------------- memory-resident entries
// Each qword of the root, context and PASID structures, as software writes it and the unit
// reads it. Table pointers are 4 KiB-aligned addresses held as page numbers (bits 63:12).

/// Legacy root entry, lower qword (§9.1): P, reserved, CTP. The upper qword is reserved.
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct RootEntryLo {
    /// P: present.
    pub p: bool,
    /// Bits 11:1.
    #[bits(11)]
    pub rsvd: u16,
    /// CTP: the context table's page number.
    #[bits(52)]
    pub ctp_page: u64,
}

/// Legacy context entry, lower qword (§9.3): P, FPD, T, reserved, SLPTPTR.
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct ContextEntryLo {
    /// P: present.
    pub p: bool,
    /// FPD: fault processing disable.
    pub fpd: bool,
    /// T: 00b untranslated only, 01b with device TLB, 10b pass-through.
    #[bits(2)]
    pub t: u8,
    /// Bits 11:4.
    pub rsvd: u8,
    /// SLPTPTR: the second-stage root table's page number.
    #[bits(52)]
    pub slptptr_page: u64,
}

/// Legacy context entry, upper qword (§9.3): AW, ignored, reserved, DID, reserved.
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct ContextEntryHi {
    /// AW: 1 = 39-bit (3-level), 2 = 48-bit, 3 = 57-bit.
    #[bits(3)]
    pub aw: u8,
    /// Bits 6:3, ignored.
    #[bits(4)]
    pub ignored: u8,
    /// Bit 7.
    pub rsvd0: bool,
    /// DID: the domain id.
    pub did: u16,
    /// Bits 63:24.
    #[bits(40)]
    pub rsvd1: u64,
}

/// One half of a scalable-mode root entry (§9.2): LP/UP, reserved, LCTP/UCTP.
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct ScalableRootHalfRaw {
    /// LP / UP: present.
    pub p: bool,
    /// Bits 11:1.
    #[bits(11)]
    pub rsvd: u16,
    /// LCTP / UCTP: the scalable-mode context table's page number.
    #[bits(52)]
    pub ctp_page: u64,
}

/// Scalable-mode context entry, qword 0 (§9.4): P, FPD, DTE, PASIDE, PRE, reserved, PDTS,
/// PASIDDIRPTR.
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct ScalableContextQw0 {
    /// P: present.
    pub p: bool,
    /// FPD: fault processing disable.
    pub fpd: bool,
    /// DTE: device-TLB enable.
    pub dte: bool,
    /// PASIDE: requests with PASID enabled.
    pub paside: bool,
    /// PRE: page requests enabled.
    pub pre: bool,
    /// Bits 8:5.
    #[bits(4)]
    pub rsvd: u8,
    /// PDTS: the PASID directory has 2^(PDTS + 7) entries.
    #[bits(3)]
    pub pdts: u8,
    /// PASIDDIRPTR: the PASID directory's page number.
    #[bits(52)]
    pub pasiddirptr_page: u64,
}

/// Scalable-mode context entry, qword 1 (§9.4): RID_PASID, RID_PRIV, reserved. Qwords 2 and 3
/// are reserved.
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct ScalableContextQw1 {
    /// RID_PASID: the PASID of requests without one.
    #[bits(20)]
    pub rid_pasid: u32,
    /// RID_PRIV: their privilege.
    pub rid_priv: bool,
    /// Bits 63:21.
    #[bits(43)]
    pub rsvd: u64,
}

/// Scalable-mode PASID-directory entry (§9.5): P, FPD, reserved, SMPTBLPTR.
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct PasidDirEntryRaw {
    /// P: present.
    pub p: bool,
    /// FPD: fault processing disable.
    pub fpd: bool,
    /// Bits 11:2.
    #[bits(10)]
    pub rsvd: u16,
    /// SMPTBLPTR: the PASID table's page number.
    #[bits(52)]
    pub smptblptr_page: u64,
}

/// Scalable-mode PASID-table entry, qword 0 (§9.6): P, FPD, AW, SSEE, PGTT, SSADE, reserved,
/// SSPTPTR.
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct PasidEntryQw0 {
    /// P: present.
    pub p: bool,
    /// FPD: fault processing disable.
    pub fpd: bool,
    /// AW: the second stage's address width.
    #[bits(3)]
    pub aw: u8,
    /// SSEE: second-stage execute enable.
    pub ssee: bool,
    /// PGTT: 001b first stage, 010b second stage, 011b nested, 100b pass-through.
    #[bits(3)]
    pub pgtt: u8,
    /// SSADE: second-stage accessed/dirty enable.
    pub ssade: bool,
    /// Bits 11:10.
    #[bits(2)]
    pub rsvd: u8,
    /// SSPTPTR: the second-stage root table's page number.
    #[bits(52)]
    pub ssptptr_page: u64,
}

/// Scalable-mode PASID-table entry, qword 1 (§9.6): DID, reserved, PWSNP, PGSNP, CD, EMTE, EMT,
/// PWT, PCD, PAT.
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct PasidEntryQw1 {
    /// DID: the domain id.
    pub did: u16,
    /// Bits 22:16.
    #[bits(7)]
    pub rsvd: u8,
    /// PWSNP: page-walk snoop.
    pub pwsnp: bool,
    /// PGSNP: page snoop.
    pub pgsnp: bool,
    /// CD: cache disable.
    pub cd: bool,
    /// EMTE: extended memory type enable.
    pub emte: bool,
    /// EMT: extended memory type.
    #[bits(3)]
    pub emt: u8,
    /// PWT: page-level write-through.
    pub pwt: bool,
    /// PCD: page-level cache disable.
    pub pcd: bool,
    /// PAT: page attribute table.
    pub pat: u32,
}

/// Scalable-mode PASID-table entry, qword 2 (§9.6): SRE, ERE, FSPM, WPE, NXE, SMEP, EAFE,
/// reserved, FSPTPTR. Qwords 3 to 7 are reserved.
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct PasidEntryQw2 {
    /// SRE: supervisor requests enabled.
    pub sre: bool,
    /// ERE: execute requests enabled.
    pub ere: bool,
    /// FSPM: first-stage paging mode (00b 4-level, 01b 5-level).
    #[bits(2)]
    pub fspm: u8,
    /// WPE: write protect enable.
    pub wpe: bool,
    /// NXE: no-execute enable (earlier revisions; ignored by rev 4.x and by the model).
    pub nxe: bool,
    /// SMEP: supervisor-mode execute prevention (earlier revisions; ignored likewise).
    pub smep: bool,
    /// EAFE: extended accessed flag enable.
    pub eafe: bool,
    /// Bits 11:8.
    #[bits(4)]
    pub rsvd: u8,
    /// FSPTPTR: the first-stage root table's page number.
    #[bits(52)]
    pub fsptptr_page: u64,
}

/// The PGTT encodings (§9.6).
pub const PGTT_FIRST_STAGE: u8 = 0b001;
/// PGTT: second stage.
pub const PGTT_SECOND_STAGE: u8 = 0b010;
/// PGTT: nested.
pub const PGTT_NESTED: u8 = 0b011;
/// PGTT: pass-through.
pub const PGTT_PASS_THROUGH: u8 = 0b100;

/// The legacy context-entry T encodings (§9.3).
pub const T_UNTRANSLATED: u8 = 0b00;
/// T: untranslated and translation requests (device TLB).
pub const T_DEVICE_TLB: u8 = 0b01;
/// T: pass-through.
pub const T_PASS_THROUGH: u8 = 0b10;

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
    fn global_command_rtaddr_and_iqa_sit_where_the_spec_puts_them() {
        assert_eq!(GlobalCommand::TE.bits(), 0x8000_0000);
        assert_eq!(GlobalCommand::SRTP.bits(), 0x4000_0000);
        assert_eq!(GlobalCommand::QIE.bits(), 0x0400_0000);
        assert_eq!(GlobalCommand::WBF.bits(), 0x0800_0000);
        let rt = RtaddrReg::from_bits(0x1234_5000 | (1 << 10));
        assert_eq!((rt.ttm(), rt.rta_page(), rt.rsvd()), (1, 0x12345, 0));
        let iqa = IqaReg::from_bits(0xabc_d000 | (1 << 11) | 3);
        assert_eq!((iqa.qs(), iqa.dw(), iqa.iqa_page()), (3, true, 0xabcd));
        assert_eq!((iqa.queue_bytes(), iqa.descriptor_bytes()), (0x8000, 32));
        assert_eq!(
            IqaReg::new()
                .with_iqa_page(0xabcd)
                .with_dw(true)
                .with_qs(3)
                .into_bits(),
            0xabc_d000 | (1 << 11) | 3
        );
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

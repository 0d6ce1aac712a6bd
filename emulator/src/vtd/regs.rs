//! VT-d register offsets and bit fields (Intel VT-d spec rev 4.1, §10.4 "Register Descriptions"),
//! and the CAP/ECAP values the model reports for a [`VtdConfig`].

/// VER_REG, 32-bit (§10.4.1).
pub const VER_REG: u64 = 0x00;
/// CAP_REG, 64-bit (§10.4.2).
pub const CAP_REG: u64 = 0x08;
/// ECAP_REG, 64-bit (§10.4.3).
pub const ECAP_REG: u64 = 0x10;
/// GCMD_REG, 32-bit, write-only (§10.4.4).
pub const GCMD_REG: u64 = 0x18;
/// GSTS_REG, 32-bit, read-only (§10.4.5).
pub const GSTS_REG: u64 = 0x1c;
/// RTADDR_REG, 64-bit (§10.4.6).
pub const RTADDR_REG: u64 = 0x20;
/// CCMD_REG, 64-bit (§10.4.7).
pub const CCMD_REG: u64 = 0x28;
/// FSTS_REG, 32-bit (§10.4.9).
pub const FSTS_REG: u64 = 0x34;
/// FECTL_REG, 32-bit (§10.4.10).
pub const FECTL_REG: u64 = 0x38;
/// FEDATA_REG, 32-bit (§10.4.11).
pub const FEDATA_REG: u64 = 0x3c;
/// FEADDR_REG, 32-bit (§10.4.12).
pub const FEADDR_REG: u64 = 0x40;
/// FEUADDR_REG, 32-bit (§10.4.13).
pub const FEUADDR_REG: u64 = 0x44;
/// AFLOG_REG, 64-bit (§10.4.15); reads zero here: advanced fault logging is not supported.
pub const AFLOG_REG: u64 = 0x58;
/// PMEN_REG, 32-bit (§10.4.16); protected memory regions are not supported (CAP.PLMR/PHMR = 0).
pub const PMEN_REG: u64 = 0x64;
/// IQH_REG, 64-bit (§10.4.22).
pub const IQH_REG: u64 = 0x80;
/// IQT_REG, 64-bit (§10.4.23).
pub const IQT_REG: u64 = 0x88;
/// IQA_REG, 64-bit (§10.4.24).
pub const IQA_REG: u64 = 0x90;
/// ICS_REG, 32-bit (§10.4.25).
pub const ICS_REG: u64 = 0x9c;
/// IECTL_REG, 32-bit (§10.4.26).
pub const IECTL_REG: u64 = 0xa0;
/// IEDATA_REG, 32-bit (§10.4.27).
pub const IEDATA_REG: u64 = 0xa4;
/// IEADDR_REG, 32-bit (§10.4.28).
pub const IEADDR_REG: u64 = 0xa8;
/// IEUADDR_REG, 32-bit (§10.4.29).
pub const IEUADDR_REG: u64 = 0xac;
/// IQERCD_REG, 64-bit (§10.4.30).
pub const IQERCD_REG: u64 = 0xb0;

// GCMD_REG / GSTS_REG bits (§10.4.4, §10.4.5), from their one declaration (`GlobalCommand`).
/// GCMD.TE / GSTS.TES: translation enable.
pub const GCMD_TE: u32 = GlobalCommand::TE.bits();
/// GCMD.SRTP / GSTS.RTPS: set root table pointer.
pub const GCMD_SRTP: u32 = GlobalCommand::SRTP.bits();
/// GCMD.SFL / GSTS.FLS: set fault log.
pub const GCMD_SFL: u32 = GlobalCommand::SFL.bits();
/// GCMD.EAFL / GSTS.AFLS: enable advanced fault logging.
pub const GCMD_EAFL: u32 = GlobalCommand::EAFL.bits();
/// GCMD.WBF / GSTS.WBFS: write buffer flush.
pub const GCMD_WBF: u32 = GlobalCommand::WBF.bits();
/// GCMD.QIE / GSTS.QIES: queued invalidation enable.
pub const GCMD_QIE: u32 = GlobalCommand::QIE.bits();
/// GCMD.IRE / GSTS.IRES: interrupt remapping enable.
pub const GCMD_IRE: u32 = GlobalCommand::IRE.bits();
/// GCMD.SIRTP / GSTS.IRTPS: set interrupt remap table pointer.
pub const GCMD_SIRTP: u32 = GlobalCommand::SIRTP.bits();
/// GCMD.CFI / GSTS.CFIS: compatibility format interrupts.
pub const GCMD_CFI: u32 = GlobalCommand::CFI.bits();

// RTADDR_REG (§10.4.6).
/// RTADDR.RTA: root table address, bits 63:12.
pub const RTADDR_RTA_MASK: u64 = !0xfff;
/// RTADDR.TTM shift: translation table mode, bits 11:10.
pub const RTADDR_TTM_SHIFT: u32 = 10;
/// TTM = 00b: legacy mode.
pub const TTM_LEGACY: u64 = 0;
/// TTM = 01b: scalable mode.
pub const TTM_SCALABLE: u64 = 1;
/// TTM = 11b: abort-DMA mode.
pub const TTM_ABORT_DMA: u64 = 3;

// CCMD_REG (§10.4.7).
/// CCMD.ICC: invalidate context cache (bit 63).
pub const CCMD_ICC: u64 = 1 << 63;
/// CCMD.CIRG shift: requested granularity, bits 62:61.
pub const CCMD_CIRG_SHIFT: u32 = 61;
/// CCMD.CAIG shift: actual granularity, bits 60:59.
pub const CCMD_CAIG_SHIFT: u32 = 59;
/// CCMD.FM shift: function mask, bits 33:32.
pub const CCMD_FM_SHIFT: u32 = 32;
/// CCMD.SID shift: source id, bits 31:16.
pub const CCMD_SID_SHIFT: u32 = 16;

// IOTLB_REG and IVA_REG (§10.4.8.1, §10.4.8.2).
/// IOTLB.IVT: invalidate IOTLB (bit 63).
pub const IOTLB_IVT: u64 = 1 << 63;
/// IOTLB.IIRG shift: requested granularity, bits 61:60.
pub const IOTLB_IIRG_SHIFT: u32 = 60;
/// IOTLB.IAIG shift: actual granularity, bits 58:57.
pub const IOTLB_IAIG_SHIFT: u32 = 57;
/// IOTLB.DID shift: domain id, bits 47:32.
pub const IOTLB_DID_SHIFT: u32 = 32;
/// IVA.IH: invalidation hint (bit 6).
pub const IVA_IH: u64 = 1 << 6;
/// IVA.AM: address mask, bits 5:0.
pub const IVA_AM_MASK: u64 = 0x3f;

// FSTS_REG (§10.4.9).
/// FSTS.PFO: primary fault overflow (RW1C).
pub const FSTS_PFO: u32 = 1 << 0;
/// FSTS.PPF: primary pending fault (RO).
pub const FSTS_PPF: u32 = 1 << 1;
/// FSTS.IQE: invalidation queue error (RW1C).
pub const FSTS_IQE: u32 = 1 << 4;
/// FSTS.ICE: invalidation completion error (RW1C).
pub const FSTS_ICE: u32 = 1 << 5;
/// FSTS.ITE: invalidation time-out error (RW1C).
pub const FSTS_ITE: u32 = 1 << 6;
/// FSTS.FRI shift: fault record index, bits 15:8.
pub const FSTS_FRI_SHIFT: u32 = 8;
/// The FSTS bits software clears by writing one.
pub const FSTS_RW1C: u32 = FSTS_PFO | FSTS_IQE | FSTS_ICE | FSTS_ITE;

// FECTL_REG / IECTL_REG (§10.4.10, §10.4.26).
/// IM: interrupt mask.
pub const CTL_IM: u32 = 1 << 31;
/// IP: interrupt pending (RO).
pub const CTL_IP: u32 = 1 << 30;

// ICS_REG (§10.4.25).
/// ICS.IWC: invalidation wait descriptor complete (RW1C).
pub const ICS_IWC: u32 = 1;

// IQA_REG (§10.4.24).
/// IQA.IQA: queue base, bits 63:12.
pub const IQA_BASE_MASK: u64 = !0xfff;
/// IQA.DW: descriptor width (0 = 128-bit, 1 = 256-bit), bit 11.
pub const IQA_DW: u64 = 1 << 11;
/// IQA.QS: queue size (2^QS 4 KiB pages), bits 2:0.
pub const IQA_QS_MASK: u64 = 0x7;

// IQH_REG / IQT_REG (§10.4.22, §10.4.23): bits 18:4 hold the offset of a 128-bit slot.
/// IQH.QH / IQT.QT mask.
pub const IQ_OFFSET_MASK: u64 = 0x7fff0;

// IQERCD_REG (§10.4.30).
/// IQEI: no information.
pub const IQEI_NONE: u64 = 0;
/// IQEI: an invalid tail pointer (here: IQT beyond the queue). Values 0..=5 follow the IQEI
/// descriptions in Intel's register datasheets (IQERCD_REG); 6 and 7 follow the spec's order
/// (VirtualBox names 6 "queue tail misaligned" as well).
pub const IQEI_TAIL_BEYOND_QUEUE: u64 = 1;
/// IQEI: error fetching a descriptor.
pub const IQEI_FETCH_ERROR: u64 = 2;
/// IQEI: invalid (or unsupported) descriptor type, including a type the translation table
/// mode does not have (§6.5.2).
pub const IQEI_INVALID_TYPE: u64 = 3;
/// IQEI: reserved field set in a descriptor.
pub const IQEI_RESERVED: u64 = 4;
/// IQEI: an invalid descriptor width programmed in IQA_REG (§10.4.24, §10.4.30): 128-bit
/// descriptors (DW = 0) while the root table is in scalable mode (TTM = 01b), or 256-bit ones
/// (DW = 1) on a unit reporting neither ECAP.SMTS nor ECAP.ADMS.
pub const IQEI_INVALID_WIDTH: u64 = 5;
/// IQEI: IQT not aligned to 256 bits in a 256-bit queue.
pub const IQEI_TAIL_MISALIGNED: u64 = 6;
/// IQEI: an invalid value in the TTM field of RTADDR_REG (§10.4.30). A descriptor type the
/// translation table mode does not have is an invalid type (IQEI 3), not this.
pub const IQEI_INVALID_TTM: u64 = 7;

// FRCD (§10.4.14): two 64-bit halves per fault recording register.
/// FRCD high half: F (fault), bit 127.
pub const FRCD_F: u64 = 1 << 63;
/// FRCD high half: T1 (type bit 1: 0 write, 1 read/atomic), bit 126.
pub const FRCD_T1: u64 = 1 << 62;
/// FRCD high half: AT shift, bits 125:124.
pub const FRCD_AT_SHIFT: u32 = 60;
/// FRCD high half: PV (PASID value) shift, bits 123:104.
pub const FRCD_PV_SHIFT: u32 = 40;
/// FRCD high half: FR (fault reason) shift, bits 103:96.
pub const FRCD_FR_SHIFT: u32 = 32;
/// FRCD high half: PP (PASID present), bit 95.
pub const FRCD_PP: u64 = 1 << 31;
/// FRCD high half: EXE (execute requested), bit 94.
pub const FRCD_EXE: u64 = 1 << 30;
/// FRCD high half: PRIV (privilege mode requested), bit 93.
pub const FRCD_PRIV: u64 = 1 << 29;
/// FRCD high half: T2 (type bit 2: page request or atomic), bit 92.
pub const FRCD_T2: u64 = 1 << 28;

// CAP_REG fields (§10.4.2).
/// CAP.RWBF, bit 4.
pub const CAP_RWBF: u64 = 1 << 4;
/// CAP.CM (caching mode), bit 7.
pub const CAP_CM: u64 = 1 << 7;
/// CAP.SAGAW shift, bits 12:8.
pub const CAP_SAGAW_SHIFT: u32 = 8;
/// CAP.MGAW shift (value is MGAW - 1), bits 21:16.
pub const CAP_MGAW_SHIFT: u32 = 16;
/// CAP.ZLR, bit 22.
pub const CAP_ZLR: u64 = 1 << 22;
/// CAP.FRO shift (offset / 16), bits 33:24.
pub const CAP_FRO_SHIFT: u32 = 24;
/// CAP.SLLPS shift (bit 34 = 2 MiB, bit 35 = 1 GiB), bits 37:34.
pub const CAP_SLLPS_SHIFT: u32 = 34;
/// CAP.PSI, bit 39.
pub const CAP_PSI: u64 = 1 << 39;
/// CAP.NFR shift (value is NFR - 1), bits 47:40.
pub const CAP_NFR_SHIFT: u32 = 40;
/// CAP.MAMV shift, bits 53:48.
pub const CAP_MAMV_SHIFT: u32 = 48;
/// CAP.DWD, bit 54.
pub const CAP_DWD: u64 = 1 << 54;
/// CAP.DRD, bit 55.
pub const CAP_DRD: u64 = 1 << 55;
/// CAP.FS1GP (first-stage 1 GiB pages), bit 56.
pub const CAP_FS1GP: u64 = 1 << 56;
/// CAP.FS5LP (first-stage 5-level paging), bit 60.
pub const CAP_FS5LP: u64 = 1 << 60;
/// CAP.ND shift (number of domains: 2^(4 + 2 * ND)), bits 2:0.
pub const CAP_ND_SHIFT: u32 = 0;

// ECAP_REG fields (§10.4.3).
/// ECAP.C (page-walk coherency), bit 0.
pub const ECAP_C: u64 = 1 << 0;
/// ECAP.QI, bit 1.
pub const ECAP_QI: u64 = 1 << 1;
/// ECAP.DT (device-TLB), bit 2.
pub const ECAP_DT: u64 = 1 << 2;
/// ECAP.PT (pass-through), bit 6.
pub const ECAP_PT: u64 = 1 << 6;
/// ECAP.SC (snoop control), bit 7.
pub const ECAP_SC: u64 = 1 << 7;
/// ECAP.IRO shift (offset / 16), bits 17:8.
pub const ECAP_IRO_SHIFT: u32 = 8;
/// ECAP.MHMV shift, bits 23:20.
pub const ECAP_MHMV_SHIFT: u32 = 20;
/// ECAP.NEST, bit 26.
pub const ECAP_NEST: u64 = 1 << 26;
/// ECAP.ERS (execute requests), bit 30.
pub const ECAP_ERS: u64 = 1 << 30;
/// ECAP.SRS (supervisor requests), bit 31.
pub const ECAP_SRS: u64 = 1 << 31;
/// ECAP.PSS shift (PASID size - 1), bits 39:35.
pub const ECAP_PSS_SHIFT: u32 = 35;
/// ECAP.PASID, bit 40.
pub const ECAP_PASID: u64 = 1 << 40;
/// ECAP.SMTS (scalable mode), bit 43.
pub const ECAP_SMTS: u64 = 1 << 43;
/// ECAP.SSADS (second-stage accessed/dirty), bit 45.
pub const ECAP_SSADS: u64 = 1 << 45;
/// ECAP.SSTS (second-stage translation), bit 46.
pub const ECAP_SSTS: u64 = 1 << 46;
/// ECAP.FSTS (first-stage translation), bit 47.
pub const ECAP_FSTS: u64 = 1 << 47;
/// ECAP.RPS (RID_PASID), bit 49.
pub const ECAP_RPS: u64 = 1 << 49;

use super::layout::{CapReg, EcapReg, GlobalCommand};

/// What the embedder chooses about the remapping unit: the capabilities it reports and the
/// register layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VtdConfig {
    /// Supported adjusted guest address widths, CAP.SAGAW: bit 1 = 39-bit (3-level),
    /// bit 2 = 48-bit (4-level), bit 3 = 57-bit (5-level).
    pub sagaw: u8,
    /// Maximum guest address width in bits (CAP.MGAW + 1), 39..=57.
    pub mgaw: u8,
    /// Host address width: bits above it in structure pointers are reserved.
    pub haw: u8,
    /// Number of fault recording registers (1..=256).
    pub nfr: u16,
    /// Offset of the first fault recording register, a multiple of 16 (CAP.FRO * 16).
    pub fro: u16,
    /// Offset of the IOTLB registers (IVA at `iro`, IOTLB_REG at `iro + 8`), a multiple of 16
    /// (ECAP.IRO * 16).
    pub iro: u16,
    /// Second-stage large pages: 2 MiB (CAP.SLLPS bit 0).
    pub sl_2m: bool,
    /// Second-stage large pages: 1 GiB (CAP.SLLPS bit 1).
    pub sl_1g: bool,
    /// Page-selective invalidation and its maximum address mask (CAP.PSI, CAP.MAMV).
    pub mamv: Option<u8>,
    /// Queued invalidation (ECAP.QI).
    pub queued_invalidation: bool,
    /// Device TLBs (ECAP.DT).
    pub device_tlb: bool,
    /// Pass-through translation type (ECAP.PT).
    pub pass_through: bool,
    /// Scalable-mode translation (ECAP.SMTS) with PASID support.
    pub scalable_mode: bool,
    /// PASID width in bits (ECAP.PSS + 1), 1..=20; used in scalable mode.
    pub pasid_bits: u8,
    /// First-stage translation (ECAP.FSTS); scalable mode only.
    pub first_stage: bool,
    /// Second-stage translation in scalable mode (ECAP.SSTS).
    pub second_stage: bool,
    /// Nested translation (ECAP.NEST); needs first and second stage.
    pub nested: bool,
    /// First-stage 1 GiB pages (CAP.FS1GP).
    pub fs_1g: bool,
    /// First-stage 5-level paging (CAP.FS5LP).
    pub fs_5level: bool,
    /// Supervisor requests (ECAP.SRS) and execute requests (ECAP.ERS).
    pub srs: bool,
    /// Execute requests (ECAP.ERS).
    pub ers: bool,
    /// Second-stage accessed/dirty flags (ECAP.SSADS).
    pub ss_ad: bool,
    /// Caching mode (CAP.CM): not-present entries may be cached, so software must invalidate
    /// after making an entry present.
    pub caching_mode: bool,
    /// Entries of the context cache.
    pub context_cache_entries: usize,
    /// Entries of the PASID cache.
    pub pasid_cache_entries: usize,
    /// Entries of the IOTLB.
    pub iotlb_entries: usize,
    /// Entries of each paging-structure cache.
    pub pwc_entries: usize,
    /// Associativity of every cache.
    pub ways: usize,
}

impl Default for VtdConfig {
    fn default() -> Self {
        Self {
            sagaw: 0b0110,
            mgaw: 48,
            haw: 48,
            nfr: 8,
            fro: 0x220,
            iro: 0xf0,
            sl_2m: true,
            sl_1g: true,
            mamv: Some(18),
            queued_invalidation: true,
            device_tlb: true,
            pass_through: true,
            scalable_mode: true,
            pasid_bits: 20,
            first_stage: true,
            second_stage: true,
            nested: true,
            fs_1g: true,
            fs_5level: false,
            srs: true,
            ers: false,
            ss_ad: false,
            caching_mode: false,
            context_cache_entries: 256,
            pasid_cache_entries: 256,
            iotlb_entries: 1024,
            pwc_entries: 128,
            ways: 8,
        }
    }
}

/// Why a [`VtdConfig`] was refused: one variant per check, each naming the value refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// CAP.SAGAW (§10.4.2) offers 3-, 4- and 5-level tables in bits 1..=3 only.
    #[error("SAGAW {0:#x} must be a non-empty subset of bits 1..=3")]
    Sagaw(u8),
    /// CAP.MGAW: 39 to 57 bits.
    #[error("MGAW {0} must be 39..=57")]
    Mgaw(u8),
    /// The host address width (the DMAR table's HAW).
    #[error("HAW {0} must be 32..=52")]
    Haw(u8),
    /// CAP.NFR encodes 1 to 256 fault recording registers.
    #[error("NFR {0} must be 1..=256")]
    Nfr(u16),
    /// CAP.FRO: a 16-byte-aligned offset, past the architectural registers, in 10 bits.
    #[error("FRO {0:#x} must be a multiple of 16, at least 0x100, encodable in 10 bits")]
    Fro(u16),
    /// ECAP.IRO: a 16-byte-aligned offset outside the architectural registers, in 10 bits.
    #[error("IRO {0:#x} must be a multiple of 16 outside the architectural registers")]
    Iro(u16),
    /// The IOTLB registers and the fault recording registers overlap.
    #[error("the IOTLB registers at {iro:#x} overlap the fault recording registers at {fro:#x}")]
    IroOverlapsFro {
        /// The IOTLB registers' offset.
        iro: u16,
        /// The fault recording registers' offset.
        fro: u16,
    },
    /// CAP.MAMV is a 6-bit field.
    #[error("MAMV {0} must fit 6 bits")]
    Mamv(u8),
    /// ECAP.PSS: 1 to 20 PASID bits.
    #[error("PASID width {0} must be 1..=20")]
    PasidBits(u8),
    /// ECAP.NEST needs ECAP.FSTS and ECAP.SSTS.
    #[error("nested translation needs first- and second-stage support")]
    NestedWithoutStages,
    /// ECAP.SMTS: a unit reporting QI Clear also reports SMTS Clear (§10.4.3).
    #[error("scalable mode needs queued invalidation")]
    ScalableModeWithoutQueuedInvalidation,
    /// ECAP.DT: a unit reporting QI Clear also reports DT Clear (§10.4.3).
    #[error("device TLBs need queued invalidation")]
    DeviceTlbWithoutQueuedInvalidation,
    /// CAP.SAGAW: a unit reporting ECAP.SSTS Clear also reports SAGAW as 0 (§10.4.2).
    #[error("SAGAW {0:#x} must be 0 on a scalable-mode unit without second-stage translation")]
    SagawWithoutSecondStage(u8),
    /// A cache's size must be a non-zero multiple of its associativity.
    #[error("a cache of {entries} entries cannot be {ways}-way set-associative")]
    CacheGeometry {
        /// Entries asked for.
        entries: usize,
        /// Associativity asked for.
        ways: usize,
    },
}

impl VtdConfig {
    /// Checks that every field can be encoded, that the register blocks do not overlap and
    /// that the capabilities form a set the spec allows.
    pub fn validate(&self) -> Result<(), ConfigError> {
        // A scalable-mode unit without second-stage translation (ECAP.SSTS = 0) has no
        // second-stage tables at all, so SAGAW is 0 (§10.4.2) and legacy mode, which only has
        // second-stage tables, translates nothing. (ECAP.SSTS is reported only with SMTS: a
        // legacy-only unit keeps the SAGAW that pre-scalable-mode units report.)
        let no_second_stage = self.scalable_mode && !self.second_stage;
        if self.sagaw & !0b1110 != 0 || (self.sagaw == 0 && !no_second_stage) {
            return Err(ConfigError::Sagaw(self.sagaw));
        }
        if !(39..=57).contains(&self.mgaw) {
            return Err(ConfigError::Mgaw(self.mgaw));
        }
        if !(32..=52).contains(&self.haw) {
            return Err(ConfigError::Haw(self.haw));
        }
        if self.nfr == 0 || self.nfr > 256 {
            return Err(ConfigError::Nfr(self.nfr));
        }
        if !self.fro.is_multiple_of(16) || self.fro < 0x100 || u32::from(self.fro) / 16 > 0x3ff {
            return Err(ConfigError::Fro(self.fro));
        }
        if !self.iro.is_multiple_of(16)
            || self.iro < 0x100 && self.iro != 0xf0
            || self.iro / 16 > 0x3ff
        {
            return Err(ConfigError::Iro(self.iro));
        }
        let fr_end = u32::from(self.fro) + u32::from(self.nfr) * 16;
        let iro = u32::from(self.iro);
        if iro + 16 > u32::from(self.fro) && iro < fr_end {
            return Err(ConfigError::IroOverlapsFro {
                iro: self.iro,
                fro: self.fro,
            });
        }
        // FRO fits 10 bits of 16-byte units and NFR 256 registers: the fault recording
        // registers end below 0x5000, inside the 64 KiB register file.
        if let Some(m) = self.mamv
            && m > 63
        {
            return Err(ConfigError::Mamv(m));
        }
        if !(1..=20).contains(&self.pasid_bits) {
            return Err(ConfigError::PasidBits(self.pasid_bits));
        }
        if self.nested && !(self.first_stage && self.second_stage) {
            return Err(ConfigError::NestedWithoutStages);
        }
        if no_second_stage && self.sagaw != 0 {
            return Err(ConfigError::SagawWithoutSecondStage(self.sagaw));
        }
        if self.scalable_mode && !self.queued_invalidation {
            return Err(ConfigError::ScalableModeWithoutQueuedInvalidation);
        }
        if self.device_tlb && !self.queued_invalidation {
            return Err(ConfigError::DeviceTlbWithoutQueuedInvalidation);
        }
        for entries in [
            self.context_cache_entries,
            self.pasid_cache_entries,
            self.iotlb_entries,
            self.pwc_entries,
        ] {
            if entries == 0 || self.ways == 0 || entries % self.ways != 0 {
                return Err(ConfigError::CacheGeometry {
                    entries,
                    ways: self.ways,
                });
            }
        }
        Ok(())
    }

    /// The CAP_REG value (§10.4.2).
    pub fn cap(&self) -> u64 {
        let fs = self.scalable_mode && self.first_stage;
        CapReg::new()
            .with_nd(2) // 256 domain ids
            .with_cm(self.caching_mode)
            .with_sagaw(self.sagaw)
            .with_mgaw_minus_1(self.mgaw - 1)
            .with_zlr(true)
            .with_fro(self.fro / 16)
            .with_sllps(u8::from(self.sl_2m) | (u8::from(self.sl_1g) << 1))
            .with_psi(self.mamv.is_some())
            .with_nfr_minus_1((self.nfr - 1) as u8)
            .with_mamv(self.mamv.unwrap_or(0))
            .with_dwd(true)
            .with_drd(true)
            .with_fs1gp(fs && self.fs_1g)
            .with_fs5lp(fs && self.fs_5level)
            .into_bits()
    }

    /// The ECAP_REG value (§10.4.3).
    pub fn ecap(&self) -> u64 {
        let sm = self.scalable_mode;
        EcapReg::new()
            .with_c(true)
            .with_sc(true)
            .with_iro(self.iro / 16)
            .with_qi(self.queued_invalidation)
            .with_dt(self.device_tlb)
            .with_pt(self.pass_through)
            .with_smts(sm)
            .with_pasid(sm)
            .with_rps(sm)
            .with_pss(if sm { self.pasid_bits - 1 } else { 0 })
            .with_fsts(sm && self.first_stage)
            .with_ssts(sm && self.second_stage)
            .with_nest(sm && self.nested)
            .with_srs(sm && self.srs)
            .with_ers(sm && self.ers)
            .with_ssads(sm && self.ss_ad)
            // The model's memory is coherent: its walks of tables reached through PASID-table
            // entries see what software wrote without a flush (SMPWCS; SSADS requires it).
            .with_smpwcs(sm)
            .into_bits()
    }

    /// VER_REG: 6.0 when scalable mode is offered, 1.0 otherwise (§10.4.1). Major version 6
    /// refuses register-based invalidation (§10.4.7, §10.4.8.1).
    pub fn version(&self) -> u32 {
        if self.scalable_mode { 0x60 } else { 0x10 }
    }

    /// Whether an AW / SAGAW encoding (1 = 3-level, 2 = 4-level, 3 = 5-level) is supported.
    #[inline]
    pub fn supports_aw(&self, aw: u8) -> bool {
        (1..=3).contains(&aw) && self.sagaw & (1 << aw) != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_encodes_cap_and_ecap_fields() {
        let c = VtdConfig::default();
        c.validate().unwrap();
        let cap = c.cap();
        assert_eq!((cap >> CAP_SAGAW_SHIFT) & 0x1f, 0b0110);
        assert_eq!((cap >> CAP_MGAW_SHIFT) & 0x3f, 47);
        assert_eq!(((cap >> CAP_FRO_SHIFT) & 0x3ff) * 16, 0x220);
        assert_eq!(((cap >> CAP_NFR_SHIFT) & 0xff) + 1, 8);
        assert_eq!((cap >> CAP_SLLPS_SHIFT) & 0xf, 0b11);
        assert_ne!(cap & CAP_PSI, 0);
        assert_eq!((cap >> CAP_MAMV_SHIFT) & 0x3f, 18);
        let ecap = c.ecap();
        assert_eq!(((ecap >> ECAP_IRO_SHIFT) & 0x3ff) * 16, 0xf0);
        assert_ne!(ecap & ECAP_QI, 0);
        assert_ne!(ecap & ECAP_SMTS, 0);
        // Scalable-mode page walks are coherent, as SSADS needs (review finding 11).
        let e = crate::vtd::layout::EcapReg::from_bits(ecap);
        assert!(e.smpwcs(), "{ecap:#x}");
        assert_eq!((ecap >> ECAP_PSS_SHIFT) & 0x1f, 19);
        assert_ne!(ecap & ECAP_NEST, 0);
        assert!(c.supports_aw(2));
        assert!(!c.supports_aw(3));
        assert!(!c.supports_aw(0));
    }

    #[test]
    fn hand_built_cap_matches_linux_style_decoding() {
        // A CAP value built by hand: SAGAW=4-level only, MGAW=39, FRO=0x100, NFR=1, no PSI.
        let c = VtdConfig {
            sagaw: 0b0100,
            mgaw: 39,
            fro: 0x100,
            nfr: 1,
            mamv: None,
            sl_1g: false,
            sl_2m: false,
            scalable_mode: false,
            nested: false,
            ..VtdConfig::default()
        };
        c.validate().unwrap();
        let expected =
            (2u64) | (0b0100 << 8) | (38 << 16) | CAP_ZLR | (0x10 << 24) | CAP_DWD | CAP_DRD;
        assert_eq!(c.cap(), expected);
        assert_eq!(c.ecap() & ECAP_SMTS, 0);
        assert_eq!(c.version(), 0x10);
    }

    #[test]
    fn invalid_configs_are_refused() {
        let ok = VtdConfig::default();
        for bad in [
            VtdConfig {
                sagaw: 0,
                ..ok.clone()
            },
            VtdConfig {
                sagaw: 0b10001,
                ..ok.clone()
            },
            VtdConfig {
                mgaw: 64,
                ..ok.clone()
            },
            VtdConfig {
                nfr: 0,
                ..ok.clone()
            },
            VtdConfig {
                fro: 0x228,
                ..ok.clone()
            },
            VtdConfig {
                iro: 0x220,
                ..ok.clone()
            },
            VtdConfig {
                pasid_bits: 0,
                ..ok.clone()
            },
            VtdConfig {
                first_stage: false,
                ..ok.clone()
            },
            VtdConfig {
                iotlb_entries: 1001,
                ..ok.clone()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn each_check_names_what_it_refused() {
        let ok = VtdConfig::default();
        let cases = [
            (
                VtdConfig {
                    sagaw: 0b10001,
                    ..ok.clone()
                },
                ConfigError::Sagaw(0b10001),
            ),
            (
                VtdConfig {
                    mgaw: 64,
                    ..ok.clone()
                },
                ConfigError::Mgaw(64),
            ),
            (
                VtdConfig {
                    haw: 60,
                    ..ok.clone()
                },
                ConfigError::Haw(60),
            ),
            (
                VtdConfig {
                    nfr: 0,
                    ..ok.clone()
                },
                ConfigError::Nfr(0),
            ),
            (
                VtdConfig {
                    fro: 0x228,
                    ..ok.clone()
                },
                ConfigError::Fro(0x228),
            ),
            (
                VtdConfig {
                    iro: 0x228,
                    ..ok.clone()
                },
                ConfigError::Iro(0x228),
            ),
            (
                VtdConfig {
                    mamv: Some(64),
                    ..ok.clone()
                },
                ConfigError::Mamv(64),
            ),
            (
                VtdConfig {
                    pasid_bits: 21,
                    ..ok.clone()
                },
                ConfigError::PasidBits(21),
            ),
            (
                VtdConfig {
                    second_stage: false,
                    ..ok.clone()
                },
                ConfigError::NestedWithoutStages,
            ),
            (
                VtdConfig {
                    iotlb_entries: 1001,
                    ..ok.clone()
                },
                ConfigError::CacheGeometry {
                    entries: 1001,
                    ways: ok.ways,
                },
            ),
            // Capability sets the spec rules out (review finding 12): SMTS and DT need QI, and
            // a scalable-mode unit without second-stage translation reports SAGAW = 0.
            (
                VtdConfig {
                    queued_invalidation: false,
                    device_tlb: false,
                    ..ok.clone()
                },
                ConfigError::ScalableModeWithoutQueuedInvalidation,
            ),
            (
                VtdConfig {
                    queued_invalidation: false,
                    scalable_mode: false,
                    first_stage: false,
                    nested: false,
                    ..ok.clone()
                },
                ConfigError::DeviceTlbWithoutQueuedInvalidation,
            ),
            (
                VtdConfig {
                    second_stage: false,
                    nested: false,
                    ..ok.clone()
                },
                ConfigError::SagawWithoutSecondStage(ok.sagaw),
            ),
        ];
        for (cfg, want) in cases {
            assert_eq!(cfg.validate(), Err(want), "{cfg:?}");
        }
        let iro = ok.fro;
        assert_eq!(
            VtdConfig { iro, ..ok.clone() }.validate(),
            Err(ConfigError::IroOverlapsFro { iro, fro: ok.fro })
        );
    }

    /// The capability sets the spec allows at those edges are accepted, and report what the
    /// rules say: a first-stage-only scalable-mode unit reports SAGAW = 0, a unit without QI
    /// offers neither scalable mode nor device TLBs.
    #[test]
    fn capability_edges_the_spec_allows() {
        let ok = VtdConfig::default();
        let fs_only = VtdConfig {
            second_stage: false,
            nested: false,
            sagaw: 0,
            ..ok.clone()
        };
        fs_only.validate().unwrap();
        assert_eq!((fs_only.cap() >> CAP_SAGAW_SHIFT) & 0x1f, 0);
        assert_eq!(fs_only.ecap() & ECAP_SSTS, 0);
        let no_qi = VtdConfig {
            queued_invalidation: false,
            device_tlb: false,
            scalable_mode: false,
            first_stage: false,
            nested: false,
            ..ok.clone()
        };
        no_qi.validate().unwrap();
        assert_eq!(no_qi.ecap() & (ECAP_QI | ECAP_DT | ECAP_SMTS), 0);
        // SAGAW = 0 is refused wherever the second stage is offered, legacy mode included.
        for cfg in [
            VtdConfig {
                sagaw: 0,
                ..ok.clone()
            },
            VtdConfig {
                sagaw: 0,
                ..no_qi.clone()
            },
        ] {
            assert_eq!(cfg.validate(), Err(ConfigError::Sagaw(0)), "{cfg:?}");
        }
    }
}

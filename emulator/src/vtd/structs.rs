//! Decoders for the memory-resident VT-d structures: root and context entries (legacy and
//! scalable mode), PASID-directory and PASID-table entries.
//!
//! Each decoder takes the raw little-endian qwords, reads them through the layouts declared in
//! [`super::layout`] (which drivers encode entries with), and either returns the decoded entry
//! or says which check failed, so that the translation path can report the spec's fault reason.

use super::layout::{
    ContextEntryHi, ContextEntryLo, PGTT_FIRST_STAGE, PGTT_NESTED, PGTT_PASS_THROUGH,
    PGTT_SECOND_STAGE, PasidDirEntryRaw, PasidEntryQw0, PasidEntryQw1, PasidEntryQw2, RootEntryLo,
    ScalableContextQw0, ScalableContextQw1, ScalableRootHalfRaw, T_DEVICE_TLB, T_PASS_THROUGH,
    T_UNTRANSLATED,
};

/// Mask of address bits at or above `haw` (reserved in structure pointers).
#[inline]
pub(crate) fn above_haw(haw: u8) -> u64 {
    if haw >= 64 { 0 } else { !0u64 << haw }
}

/// Why an entry could not be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryError {
    /// The present bit is clear.
    NotPresent,
    /// A reserved bit is set in a present entry.
    Reserved,
    /// The entry is present and well-formed but programs something unsupported.
    Invalid,
}

/// A legacy-mode root entry (VT-d spec rev 4.1, §9.1 "Root Entry"): bit 0 P, bits 63:12 CTP;
/// bits 11:1 and the whole upper qword are reserved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RootEntry {
    /// Context-table pointer (4 KiB aligned).
    pub ctp: u64,
}

impl RootEntry {
    /// Decodes a root entry from its two qwords.
    pub fn decode(lo: u64, hi: u64, haw: u8) -> Result<Self, EntryError> {
        let e = RootEntryLo::from_bits(lo);
        if !e.p() {
            return Err(EntryError::NotPresent);
        }
        let ctp = e.ctp_page() << 12;
        if e.rsvd() != 0 || ctp & above_haw(haw) != 0 || hi != 0 {
            return Err(EntryError::Reserved);
        }
        Ok(Self { ctp })
    }
}

/// Legacy context-entry translation type, T field (§9.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TranslationType {
    /// 00b: untranslated requests translated through second-stage tables; translation requests
    /// blocked.
    UntranslatedOnly,
    /// 01b: untranslated and translation (device-TLB) requests translated.
    DeviceTlb,
    /// 10b: untranslated requests pass through.
    PassThrough,
}

/// A legacy-mode context entry (§9.3 "Context Entry"):
/// lower qword: bit 0 P, bit 1 FPD, bits 3:2 T, bits 11:4 reserved, bits 63:12 SLPTPTR;
/// upper qword: bits 2:0 AW, bits 6:3 ignored, bit 7 reserved, bits 23:8 DID, bits 63:24 reserved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContextEntry {
    /// Fault processing disable.
    pub fpd: bool,
    /// Translation type.
    pub tt: TranslationType,
    /// Second-stage page-table pointer.
    pub slptptr: u64,
    /// Address width encoding (1 = 39-bit 3-level, 2 = 48-bit, 3 = 57-bit).
    pub aw: u8,
    /// Domain identifier.
    pub did: u16,
}

/// Whether the FPD bit of a present-or-not context entry is set (faults after reading it are
/// qualified by FPD even when the entry is unusable).
pub fn legacy_context_fpd(lo: u64) -> bool {
    ContextEntryLo::from_bits(lo).fpd()
}

impl ContextEntry {
    /// Decodes a context entry. `supports` answers whether a translation type is offered
    /// (ECAP.PT / ECAP.DT) and whether an AW value is in SAGAW.
    pub fn decode(
        lo: u64,
        hi: u64,
        haw: u8,
        pt_ok: bool,
        dt_ok: bool,
        aw_ok: impl Fn(u8) -> bool,
    ) -> Result<Self, EntryError> {
        let (l, h) = (ContextEntryLo::from_bits(lo), ContextEntryHi::from_bits(hi));
        if !l.p() {
            return Err(EntryError::NotPresent);
        }
        if l.rsvd() != 0 || h.rsvd0() || h.rsvd1() != 0 {
            return Err(EntryError::Reserved);
        }
        let tt = match l.t() {
            T_UNTRANSLATED => TranslationType::UntranslatedOnly,
            T_DEVICE_TLB if dt_ok => TranslationType::DeviceTlb,
            T_PASS_THROUGH if pt_ok => TranslationType::PassThrough,
            _ => return Err(EntryError::Invalid),
        };
        let aw = h.aw();
        let slptptr = l.slptptr_page() << 12;
        // SLPTPTR is unused (ignored) by a pass-through entry.
        if tt != TranslationType::PassThrough && slptptr & above_haw(haw) != 0 {
            return Err(EntryError::Reserved);
        }
        // AW must name a supported AGAW whatever the type: for pass-through, the largest
        // (§9.3), which the model does not insist on.
        if !aw_ok(aw) {
            return Err(EntryError::Invalid);
        }
        Ok(Self {
            fpd: l.fpd(),
            tt,
            slptptr,
            aw,
            did: h.did(),
        })
    }
}

/// A scalable-mode root entry (§9.2 "Scalable-Mode Root Entry"): lower qword bit 0 LP,
/// bits 63:12 LCTP (devfn 0..=127); upper qword bit 0 UP, bits 63:12 UCTP (devfn 128..=255);
/// bits 11:1 of each are reserved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScalableRootHalf {
    /// The scalable-mode context-table pointer for this half.
    pub ctp: u64,
}

impl ScalableRootHalf {
    /// Decodes the half of a scalable-mode root entry (`qw` = lower qword for devfn < 128,
    /// upper otherwise).
    pub fn decode(qw: u64, haw: u8) -> Result<Self, EntryError> {
        let e = ScalableRootHalfRaw::from_bits(qw);
        if !e.p() {
            return Err(EntryError::NotPresent);
        }
        let ctp = e.ctp_page() << 12;
        if e.rsvd() != 0 || ctp & above_haw(haw) != 0 {
            return Err(EntryError::Reserved);
        }
        Ok(Self { ctp })
    }
}

/// A scalable-mode context entry (§9.4 "Scalable-Mode Context Entry"), 256 bits:
/// qword 0: bit 0 P, bit 1 FPD, bit 2 DTE, bit 3 PASIDE, bit 4 PRE, bits 8:5 reserved,
/// bits 11:9 PDTS, bits 63:12 PASIDDIRPTR; qword 1: bits 19:0 RID_PASID, bit 20 RID_PRIV,
/// bits 63:21 reserved; qwords 2 and 3 reserved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScalableContextEntry {
    /// Fault processing disable.
    pub fpd: bool,
    /// Device-TLB enable.
    pub dte: bool,
    /// Requests-with-PASID enable.
    pub paside: bool,
    /// Page request enable.
    pub pre: bool,
    /// PASID-directory size: the directory has 2^(PDTS + 7) entries.
    pub pdts: u8,
    /// PASID-directory pointer.
    pub pasiddirptr: u64,
    /// PASID used for requests without PASID.
    pub rid_pasid: u32,
    /// Privilege used for requests without PASID.
    pub rid_priv: bool,
}

impl ScalableContextEntry {
    /// Decodes a scalable-mode context entry.
    pub fn decode(
        qw: [u64; 4],
        haw: u8,
        dt_ok: bool,
        rid_priv_ok: bool,
    ) -> Result<Self, EntryError> {
        let (q0, q1) = (
            ScalableContextQw0::from_bits(qw[0]),
            ScalableContextQw1::from_bits(qw[1]),
        );
        if !q0.p() {
            return Err(EntryError::NotPresent);
        }
        let pasiddirptr = q0.pasiddirptr_page() << 12;
        if q0.rsvd() != 0
            || pasiddirptr & above_haw(haw) != 0
            || q1.rsvd() != 0
            || qw[2] != 0
            || qw[3] != 0
        {
            return Err(EntryError::Reserved);
        }
        let e = Self {
            fpd: q0.fpd(),
            dte: q0.dte(),
            paside: q0.paside(),
            pre: q0.pre(),
            pdts: q0.pdts(),
            pasiddirptr,
            rid_pasid: q1.rid_pasid(),
            // Without ECAP.RPRIVS the unit "uses the value of 0 for RID_PRIV" (§10.4.3).
            rid_priv: rid_priv_ok && q1.rid_priv(),
        };
        // Page requests are not supported (ECAP.PRS = 0): PRE must be clear. DTE needs ECAP.DT.
        if e.pre || (e.dte && !dt_ok) {
            return Err(EntryError::Invalid);
        }
        Ok(e)
    }

    /// Number of PASID-directory entries.
    pub fn dir_entries(&self) -> u64 {
        1u64 << (u32::from(self.pdts) + 7)
    }
}

/// A scalable-mode PASID-directory entry (§9.5): bit 0 P, bit 1 FPD, bits 11:2 reserved,
/// bits 63:12 SMPTBLPTR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PasidDirEntry {
    /// Fault processing disable.
    pub fpd: bool,
    /// Scalable-mode PASID-table pointer.
    pub smptblptr: u64,
}

impl PasidDirEntry {
    /// Decodes a PASID-directory entry.
    pub fn decode(qw: u64, haw: u8) -> Result<Self, EntryError> {
        let e = PasidDirEntryRaw::from_bits(qw);
        if !e.p() {
            return Err(EntryError::NotPresent);
        }
        let smptblptr = e.smptblptr_page() << 12;
        if e.rsvd() != 0 || smptblptr & above_haw(haw) != 0 {
            return Err(EntryError::Reserved);
        }
        Ok(Self {
            fpd: e.fpd(),
            smptblptr,
        })
    }
}

/// PASID-granular translation type, PGTT (§9.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pgtt {
    /// 001b: first-stage translation only.
    FirstStage,
    /// 010b: second-stage translation only.
    SecondStage,
    /// 011b: nested (first stage through second stage).
    Nested,
    /// 100b: pass-through.
    PassThrough,
}

/// A scalable-mode PASID-table entry (§9.6 "Scalable-Mode PASID Table Entry"), 512 bits:
/// qword 0: bit 0 P, bit 1 FPD, bits 4:2 AW, bit 5 SSEE, bits 8:6 PGTT, bit 9 SSADE,
/// bits 11:10 reserved, bits 63:12 SSPTPTR;
/// qword 1: bits 15:0 DID, bits 22:16 reserved, bit 23 PWSNP, bit 24 PGSNP, bit 25 CD, bit 26
/// EMTE, bits 29:27 EMT, bit 30 PWT, bit 31 PCD, bits 63:32 PAT;
/// qword 2: bit 0 SRE, bit 1 ERE, bits 3:2 FSPM (FLPM), bit 4 WPE, bit 5 NXE, bit 6 SMEP, bit 7
/// EAFE, bits 11:8 reserved, bits 63:12 FSPTPTR; qwords 3..=7 reserved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PasidEntry {
    /// Fault processing disable.
    pub fpd: bool,
    /// Second-stage address width (AW encoding).
    pub aw: u8,
    /// Second-stage execute enable.
    pub ssee: bool,
    /// Translation type.
    pub pgtt: Pgtt,
    /// Second-stage accessed/dirty enable.
    pub ssade: bool,
    /// Second-stage page-table pointer.
    pub ssptptr: u64,
    /// Domain identifier.
    pub did: u16,
    /// Supervisor request enable.
    pub sre: bool,
    /// Execute request enable.
    pub ere: bool,
    /// First-stage paging mode: false = 4-level, true = 5-level.
    pub fs_5level: bool,
    /// Write-protect enable (supervisor writes honour R/W).
    pub wpe: bool,
    // NXE and SMEP (qword 2 bits 5 and 6) are not decoded: rev 4.x removed those controls
    // (XD is always defined and SMEP semantics always apply, see `Vtd::fs_config`).
    /// First-stage page-table pointer.
    pub fsptptr: u64,
}

/// What the model supports, for checking PASID-table entries.
#[derive(Debug, Clone, Copy)]
pub struct PasidSupport {
    /// ECAP.FSTS.
    pub first_stage: bool,
    /// ECAP.SSTS.
    pub second_stage: bool,
    /// ECAP.NEST.
    pub nested: bool,
    /// ECAP.PT.
    pub pass_through: bool,
    /// CAP.FS5LP.
    pub fs_5level: bool,
    /// ECAP.SRS.
    pub srs: bool,
    /// ECAP.ERS.
    pub ers: bool,
    /// ECAP.SSADS.
    pub ss_ad: bool,
    /// CAP.SAGAW.
    pub sagaw: u8,
    /// Host address width.
    pub haw: u8,
}

impl PasidEntry {
    /// Decodes a PASID-table entry.
    pub fn decode(qw: [u64; 8], s: &PasidSupport) -> Result<Self, EntryError> {
        let (q0, q1, q2) = (
            PasidEntryQw0::from_bits(qw[0]),
            PasidEntryQw1::from_bits(qw[1]),
            PasidEntryQw2::from_bits(qw[2]),
        );
        if !q0.p() {
            return Err(EntryError::NotPresent);
        }
        let haw_mask = above_haw(s.haw);
        if q0.rsvd() != 0 || q1.rsvd() != 0 || q2.rsvd() != 0 || qw[3..].iter().any(|&q| q != 0) {
            return Err(EntryError::Reserved);
        }
        let pgtt = match q0.pgtt() {
            PGTT_FIRST_STAGE => Pgtt::FirstStage,
            PGTT_SECOND_STAGE => Pgtt::SecondStage,
            PGTT_NESTED => Pgtt::Nested,
            PGTT_PASS_THROUGH => Pgtt::PassThrough,
            _ => return Err(EntryError::Invalid),
        };
        let e = Self {
            fpd: q0.fpd(),
            aw: q0.aw(),
            ssee: q0.ssee(),
            pgtt,
            ssade: q0.ssade(),
            ssptptr: q0.ssptptr_page() << 12,
            did: q1.did(),
            sre: q2.sre(),
            ere: q2.ere(),
            fs_5level: q2.fspm() == 1,
            wpe: q2.wpe(),
            fsptptr: q2.fsptptr_page() << 12,
        };
        let uses_fs = matches!(pgtt, Pgtt::FirstStage | Pgtt::Nested);
        let uses_ss = matches!(pgtt, Pgtt::SecondStage | Pgtt::Nested);
        let supported = match pgtt {
            Pgtt::FirstStage => s.first_stage,
            Pgtt::SecondStage => s.second_stage,
            Pgtt::Nested => s.nested,
            Pgtt::PassThrough => s.pass_through,
        };
        if !supported {
            return Err(EntryError::Invalid);
        }
        if uses_fs {
            if q2.fspm() > 1 || (e.fs_5level && !s.fs_5level) {
                return Err(EntryError::Invalid);
            }
            // In nested mode FSPTPTR is a guest-physical address checked by the second stage.
            if pgtt == Pgtt::FirstStage && e.fsptptr & haw_mask != 0 {
                return Err(EntryError::Reserved);
            }
            // EAFE (qword 2 bit 7) needs ECAP.EAFS, which the model does not offer.
            if (e.sre && !s.srs) || (e.ere && !s.ers) || q2.eafe() {
                return Err(EntryError::Invalid);
            }
        }
        if uses_ss {
            if e.aw == 0 || e.aw > 3 || s.sagaw & (1 << e.aw) == 0 {
                return Err(EntryError::Invalid);
            }
            if e.ssptptr & haw_mask != 0 {
                return Err(EntryError::Reserved);
            }
            if e.ssade && !s.ss_ad {
                return Err(EntryError::Invalid);
            }
        }
        Ok(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HAW: u8 = 48;

    #[test]
    fn root_entry_decoder() {
        assert_eq!(
            RootEntry::decode(0x1234_5000 | 1, 0, HAW),
            Ok(RootEntry { ctp: 0x1234_5000 })
        );
        assert_eq!(
            RootEntry::decode(0x1234_5000, 0, HAW),
            Err(EntryError::NotPresent)
        );
        assert_eq!(
            RootEntry::decode(0x1000 | 3, 0, HAW),
            Err(EntryError::Reserved)
        );
        assert_eq!(RootEntry::decode(0x1001, 1, HAW), Err(EntryError::Reserved));
        assert_eq!(
            RootEntry::decode((1 << 50) | 0x1001, 0, HAW),
            Err(EntryError::Reserved)
        );
    }

    #[test]
    fn legacy_context_entry_decoder() {
        // P=1, FPD=1, T=00, SLPTPTR=0xabc000; AW=2 (48-bit), DID=0x1234.
        let lo = 0xabc000 | 0b0011;
        let hi = 2 | (0x1234 << 8);
        let aw_ok = |aw| aw == 2;
        let e = ContextEntry::decode(lo, hi, HAW, true, true, aw_ok).unwrap();
        assert_eq!(
            e,
            ContextEntry {
                fpd: true,
                tt: TranslationType::UntranslatedOnly,
                slptptr: 0xabc000,
                aw: 2,
                did: 0x1234,
            }
        );
        // T=01 needs device-TLB support, T=10 pass-through support, T=11 is reserved.
        let dt = lo | (1 << 2);
        assert_eq!(
            ContextEntry::decode(dt, hi, HAW, true, true, aw_ok)
                .unwrap()
                .tt,
            TranslationType::DeviceTlb
        );
        assert_eq!(
            ContextEntry::decode(dt, hi, HAW, true, false, aw_ok),
            Err(EntryError::Invalid)
        );
        let pt = lo | (2 << 2);
        assert_eq!(
            ContextEntry::decode(pt, 2 | (0x1234 << 8), HAW, true, true, aw_ok)
                .unwrap()
                .tt,
            TranslationType::PassThrough
        );
        // Pass-through needs a supported AW too.
        assert_eq!(
            ContextEntry::decode(pt, 0x1234 << 8, HAW, true, true, aw_ok),
            Err(EntryError::Invalid)
        );
        assert_eq!(
            ContextEntry::decode(pt, hi, HAW, false, true, aw_ok),
            Err(EntryError::Invalid)
        );
        assert_eq!(
            ContextEntry::decode(lo | (3 << 2), hi, HAW, true, true, aw_ok),
            Err(EntryError::Invalid)
        );
        // AW not in SAGAW.
        assert_eq!(
            ContextEntry::decode(lo, 3 | (0x1234 << 8), HAW, true, true, aw_ok),
            Err(EntryError::Invalid)
        );
        // Reserved bits: lower 11:4, upper bit 7 and 63:24.
        assert_eq!(
            ContextEntry::decode(lo | 0x10, hi, HAW, true, true, aw_ok),
            Err(EntryError::Reserved)
        );
        assert_eq!(
            ContextEntry::decode(lo, hi | 0x80, HAW, true, true, aw_ok),
            Err(EntryError::Reserved)
        );
        assert_eq!(
            ContextEntry::decode(lo, hi | (1 << 24), HAW, true, true, aw_ok),
            Err(EntryError::Reserved)
        );
        // Ignored bits 6:3 of the upper qword are ignored.
        assert!(ContextEntry::decode(lo, hi | 0x78, HAW, true, true, aw_ok).is_ok());
        assert_eq!(
            ContextEntry::decode(lo & !1, hi, HAW, true, true, aw_ok),
            Err(EntryError::NotPresent)
        );
        assert!(legacy_context_fpd(lo & !1));
    }

    #[test]
    fn scalable_root_and_context_decoders() {
        assert_eq!(
            ScalableRootHalf::decode(0x7000 | 1, HAW),
            Ok(ScalableRootHalf { ctp: 0x7000 })
        );
        assert_eq!(
            ScalableRootHalf::decode(0x7000, HAW),
            Err(EntryError::NotPresent)
        );
        assert_eq!(
            ScalableRootHalf::decode(0x7003, HAW),
            Err(EntryError::Reserved)
        );

        // P, FPD, PASIDE, PDTS=2, PASIDDIRPTR=0x55000; RID_PASID=0x12345.
        let qw0 = 0x55000 | (2 << 9) | 0b1011;
        let e = ScalableContextEntry::decode([qw0, 0x12345, 0, 0], HAW, false, false).unwrap();
        assert_eq!(
            e,
            ScalableContextEntry {
                fpd: true,
                dte: false,
                paside: true,
                pre: false,
                pdts: 2,
                pasiddirptr: 0x55000,
                rid_pasid: 0x12345,
                rid_priv: false,
            }
        );
        assert_eq!(e.dir_entries(), 512);
        let res = |q| ScalableContextEntry::decode(q, HAW, false, false);
        assert_eq!(res([qw0 | 0x20, 0, 0, 0]), Err(EntryError::Reserved));
        assert_eq!(res([qw0, 1 << 21, 0, 0]), Err(EntryError::Reserved));
        assert_eq!(res([qw0, 0, 1, 0]), Err(EntryError::Reserved));
        assert_eq!(res([qw0, 0, 0, 1 << 63]), Err(EntryError::Reserved));
        assert_eq!(res([qw0 | 4, 0, 0, 0]), Err(EntryError::Invalid)); // DTE without DT
        assert_eq!(res([qw0 | 0x10, 0, 0, 0]), Err(EntryError::Invalid)); // PRE
        assert_eq!(res([qw0 & !1, 0, 0, 0]), Err(EntryError::NotPresent));
        assert!(ScalableContextEntry::decode([qw0 | 4, 0, 0, 0], HAW, true, false).is_ok());
        // RID_PRIV without ECAP.RPRIVS is used as 0, not refused (§10.4.3 ECAP.RPRIVS).
        assert_eq!(res([qw0, 1 << 20, 0, 0]).map(|e| e.rid_priv), Ok(false));
        let with_rprivs = ScalableContextEntry::decode([qw0, 1 << 20, 0, 0], HAW, false, true);
        assert_eq!(with_rprivs.map(|e| e.rid_priv), Ok(true));
    }

    fn support() -> PasidSupport {
        PasidSupport {
            first_stage: true,
            second_stage: true,
            nested: true,
            pass_through: true,
            fs_5level: false,
            srs: true,
            ers: false,
            ss_ad: false,
            sagaw: 0b0110,
            haw: HAW,
        }
    }

    #[test]
    fn pasid_dir_entry_decoder() {
        assert_eq!(
            PasidDirEntry::decode(0x9000 | 3, HAW),
            Ok(PasidDirEntry {
                fpd: true,
                smptblptr: 0x9000
            })
        );
        assert_eq!(
            PasidDirEntry::decode(0x9000, HAW),
            Err(EntryError::NotPresent)
        );
        assert_eq!(
            PasidDirEntry::decode(0x9005, HAW),
            Err(EntryError::Reserved)
        );
    }

    #[test]
    fn pasid_entry_decoder() {
        // Second-stage only: P, AW=2, PGTT=010, SSPTPTR=0x20000; DID=7.
        let ss = [0x20000 | (2 << 6) | (2 << 2) | 1, 7, 0, 0, 0, 0, 0, 0];
        let e = PasidEntry::decode(ss, &support()).unwrap();
        assert_eq!(e.pgtt, Pgtt::SecondStage);
        assert_eq!(e.aw, 2);
        assert_eq!(e.ssptptr, 0x20000);
        assert_eq!(e.did, 7);
        assert!(!e.fpd);
        // First-stage only: PGTT=001, FSPTPTR=0x30000, SRE, WPE; DID=9.
        let fs = [(1 << 6) | 1, 9, 0x30000 | (1 << 4) | 1, 0, 0, 0, 0, 0];
        let e = PasidEntry::decode(fs, &support()).unwrap();
        assert_eq!(e.pgtt, Pgtt::FirstStage);
        assert_eq!(e.fsptptr, 0x30000);
        assert!(e.sre && e.wpe && !e.ere && !e.fs_5level);
        // Nested and pass-through.
        let nested = [ss[0] & !(7 << 6) | (3 << 6), 1, 0x30000, 0, 0, 0, 0, 0];
        assert_eq!(
            PasidEntry::decode(nested, &support()).unwrap().pgtt,
            Pgtt::Nested
        );
        let pt = [(4 << 6) | 1, 1, 0, 0, 0, 0, 0, 0];
        assert_eq!(
            PasidEntry::decode(pt, &support()).unwrap().pgtt,
            Pgtt::PassThrough
        );
        // Failures.
        let dec = |q| PasidEntry::decode(q, &support());
        assert_eq!(
            dec([ss[0] & !1, 7, 0, 0, 0, 0, 0, 0]),
            Err(EntryError::NotPresent)
        );
        assert_eq!(
            dec([ss[0] | 0x400, 7, 0, 0, 0, 0, 0, 0]),
            Err(EntryError::Reserved)
        );
        assert_eq!(
            dec([ss[0], 7 | (1 << 16), 0, 0, 0, 0, 0, 0]),
            Err(EntryError::Reserved)
        );
        assert_eq!(
            dec([ss[0], 7, 0x100, 0, 0, 0, 0, 0]),
            Err(EntryError::Reserved)
        );
        assert_eq!(dec([ss[0], 7, 0, 0, 0, 0, 0, 1]), Err(EntryError::Reserved));
        assert_eq!(
            dec([(5 << 6) | 1, 0, 0, 0, 0, 0, 0, 0]),
            Err(EntryError::Invalid)
        );
        assert_eq!(dec([1, 0, 0, 0, 0, 0, 0, 0]), Err(EntryError::Invalid)); // PGTT = 000b
        // AW=3 (5-level) is not in SAGAW.
        let aw3 = [0x20000 | (2 << 6) | (3 << 2) | 1, 7, 0, 0, 0, 0, 0, 0];
        assert_eq!(dec(aw3), Err(EntryError::Invalid));
        // 5-level first stage without FS5LP; ERE without ERS.
        assert_eq!(
            dec([(1 << 6) | 1, 9, 0x30000 | (1 << 2), 0, 0, 0, 0, 0]),
            Err(EntryError::Invalid)
        );
        assert_eq!(
            dec([(1 << 6) | 1, 9, 0x30000 | 2, 0, 0, 0, 0, 0]),
            Err(EntryError::Invalid)
        );
        // EAFE without ECAP.EAFS.
        assert_eq!(
            dec([(1 << 6) | 1, 9, 0x30000 | (1 << 7), 0, 0, 0, 0, 0]),
            Err(EntryError::Invalid)
        );
        let no_nest = PasidSupport {
            nested: false,
            ..support()
        };
        assert_eq!(
            PasidEntry::decode(nested, &no_nest),
            Err(EntryError::Invalid)
        );
    }

    #[test]
    fn above_haw_masks_the_high_address_bits() {
        assert_eq!(above_haw(48), 0xffff_0000_0000_0000);
        assert_eq!(above_haw(64), 0);
    }
}

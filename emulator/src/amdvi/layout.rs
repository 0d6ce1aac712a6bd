//! AMD-Vi register, structure, command and event layouts, declared once with `bitfield-struct`
//! (AMD I/O Virtualization Technology (IOMMU) Specification #48882, rev 3.08): the unit decodes
//! what a driver encodes and the other way round. The tests keep hand-built words as
//! independent oracles.
//!
//! Field positions were read from the spec's figures as Linux (`amd_iommu_types.h`), QEMU
//! (`hw/i386/amd_iommu.h`) and VirtualBox (`iommu-amd.h`) use them.

use bitfield_struct::bitfield;

// ------------------------------------------------------------------ MMIO registers (§3.4)

/// Device Table Base Address Register, MMIO offset 0000h (§3.4.1).
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct DevTabBase {
    /// Size, bits 8:0: the table's size in 4 KiB pages, minus one.
    #[bits(9)]
    pub size: u16,
    #[bits(3)]
    __: u8,
    /// DevTabBase, bits 51:12: the table's 4 KiB page.
    #[bits(40)]
    pub base_page: u64,
    #[bits(12)]
    __: u16,
}

impl DevTabBase {
    /// The table's length in bytes.
    pub fn bytes(&self) -> u64 {
        (u64::from(self.size()) + 1) * 4096
    }
}

/// Command Buffer Base Address Register (0008h, §3.4.2) and Event Log Base Address Register
/// (0010h, §3.4.3): a ring of 16-byte entries.
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct RingBase {
    #[bits(12)]
    __: u16,
    /// Base, bits 51:12: the ring's 4 KiB page.
    #[bits(40)]
    pub base_page: u64,
    #[bits(4)]
    __: u8,
    /// ComLen / EventLen, bits 59:56: 2^n entries; values below 8 (256 entries) are reserved.
    #[bits(4)]
    pub log2_len: u8,
    #[bits(4)]
    __: u8,
}

impl RingBase {
    /// Entries in the ring (256 when the length field is below its minimum of 8).
    pub fn entries(&self) -> u64 {
        1 << self.log2_len().max(RING_MIN_LEN)
    }
}

/// The smallest ring length field: 2^8 = 256 entries.
pub const RING_MIN_LEN: u8 = 8;
/// Bytes per command-buffer or event-log entry.
pub const RING_ENTRY: u64 = 16;

/// IOMMU Control Register, 0018h (§3.4.4).
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct Control {
    /// IommuEn, bit 0: the IOMMU translates and logs.
    pub iommu_en: bool,
    /// HtTunEn, bit 1: HyperTransport tunnel translation.
    pub ht_tun_en: bool,
    /// EventLogEn, bit 2: the event log is enabled.
    pub event_log_en: bool,
    /// EventIntEn, bit 3: an interrupt when an event is logged.
    pub event_int_en: bool,
    /// ComWaitIntEn, bit 4: an interrupt when COMPLETION_WAIT with I=1 completes.
    pub com_wait_int_en: bool,
    /// InvTimeOut, bits 7:5: the device-IOTLB invalidation timeout.
    #[bits(3)]
    pub inv_timeout: u8,
    /// PassPW, bit 8.
    pub pass_pw: bool,
    /// ResPassPW, bit 9.
    pub res_pass_pw: bool,
    /// Coherent, bit 10: table reads are coherent.
    pub coherent: bool,
    /// Isoc, bit 11.
    pub isoc: bool,
    /// CmdBufEn, bit 12: the command buffer is enabled.
    pub cmd_buf_en: bool,
    /// PPRLogEn, bit 13.
    pub ppr_log_en: bool,
    /// PPRIntEn, bit 14.
    pub ppr_int_en: bool,
    /// PPREn, bit 15: peripheral page requests.
    pub ppr_en: bool,
    /// GTEn, bit 16: guest (v2) translation.
    pub gt_en: bool,
    /// GAEn, bit 17: guest virtual APIC.
    pub ga_en: bool,
    /// Bits 63:18: CRW, SmiF, GAM, GALog, dual logs, XTEn (bit 50) and the rest, kept as
    /// written and not modelled.
    #[bits(46)]
    pub rest: u64,
}

/// IOMMU Exclusion Base Register, 0020h (§3.4.5).
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct ExclusionBase {
    /// ExEn, bit 0: the exclusion range is enabled.
    pub ex_en: bool,
    /// Allow, bit 1: the range applies to every device (otherwise only to DTEs with EX=1).
    pub allow: bool,
    #[bits(10)]
    __: u16,
    /// ExclusionBase, bits 51:12: the range's first page.
    #[bits(40)]
    pub base_page: u64,
    #[bits(12)]
    __: u16,
}

/// IOMMU Exclusion Range Limit Register, 0028h (§3.4.6): the range's last page (bits 11:0 of
/// the limit are taken as ones).
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct ExclusionLimit {
    #[bits(12)]
    __: u16,
    /// ExclusionLimit, bits 51:12.
    #[bits(40)]
    pub limit_page: u64,
    #[bits(12)]
    __: u16,
}

/// IOMMU Extended Feature Register, 0030h (§3.4.7), read-only.
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct Efr {
    /// PreFSup, bit 0: PREFETCH_IOMMU_PAGES.
    pub pref_sup: bool,
    /// PPRSup, bit 1: peripheral page requests.
    pub ppr_sup: bool,
    /// XTSup, bit 2: x2APIC interrupts.
    pub xt_sup: bool,
    /// NXSup, bit 3: no-execute protection in guest tables.
    pub nx_sup: bool,
    /// GTSup, bit 4: guest (v2) translation.
    pub gt_sup: bool,
    __: bool,
    /// IASup, bit 6: INVALIDATE_IOMMU_ALL.
    pub ia_sup: bool,
    /// GASup, bit 7: guest virtual APIC.
    pub ga_sup: bool,
    /// HESup, bit 8: hardware error registers.
    pub he_sup: bool,
    /// PCSup, bit 9: performance counters.
    pub pc_sup: bool,
    /// HATS, bits 11:10: host table depth: 00b 4 levels, 01b 5, 10b 6.
    #[bits(2)]
    pub hats: u8,
    /// GATS, bits 13:12: guest table depth: 00b 4 levels, 01b 5.
    #[bits(2)]
    pub gats: u8,
    /// GLXSup, bits 15:14: GCR3 table levels: 00b one, 01b two, 10b three.
    #[bits(2)]
    pub glx_sup: u8,
    /// SmiFSup, bits 17:16.
    #[bits(2)]
    pub smif_sup: u8,
    /// SmiFRC, bits 20:18.
    #[bits(3)]
    pub smif_rc: u8,
    /// GAMSup, bits 23:21.
    #[bits(3)]
    pub gam_sup: u8,
    #[bits(8)]
    __: u8,
    /// PASmax, bits 36:32: the largest PASID is 2^(PASmax + 1) - 1.
    #[bits(5)]
    pub pas_max: u8,
    #[bits(11)]
    __: u16,
    /// GIoSup, bit 48: guest I/O protection (DTE.GIoV).
    pub gio_sup: bool,
    #[bits(15)]
    __: u16,
}

impl Efr {
    /// Host table levels HATS allows (4, 5 or 6).
    pub fn host_levels(&self) -> u8 {
        4 + self.hats().min(2)
    }

    /// Guest table levels GATS allows (4 or 5).
    pub fn guest_levels(&self) -> u8 {
        4 + self.gats().min(1)
    }

    /// The number of PASID bits.
    pub fn pasid_bits(&self) -> u8 {
        self.pas_max() + 1
    }
}

/// IOMMU Status Register, 2020h (§3.4.12). EventOverflow, EventLogInt and ComWaitInt are
/// write-1-to-clear; the run bits are read-only.
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct Status {
    /// EventOverflow, bit 0: an event was lost because the log was full.
    pub event_overflow: bool,
    /// EventLogInt, bit 1: an event was logged.
    pub event_log_int: bool,
    /// ComWaitInt, bit 2: a COMPLETION_WAIT with I=1 completed.
    pub com_wait_int: bool,
    /// EventLogRun, bit 3: the event log is running.
    pub event_log_run: bool,
    /// CmdBufRun, bit 4: the command buffer is running.
    pub cmd_buf_run: bool,
    #[bits(59)]
    __: u64,
}

/// The write-1-to-clear bits of [`Status`].
pub const STATUS_RW1C: u64 = 0b111;

/// Ring pointer registers (command buffer head/tail 2000h/2008h, event log head/tail
/// 2010h/2018h, §3.4.10, §3.4.11): bits 18:4 are the byte offset of an entry.
pub const RING_PTR_MASK: u64 = 0x7_fff0;

// ------------------------------------------------------------ device table entry (§2.2.2.1)

/// DTE bits 63:0.
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct DteQw0 {
    /// V, bit 0: the DTE is valid.
    pub v: bool,
    /// TV, bit 1: the translation fields are valid.
    pub tv: bool,
    /// Bits 6:2, reserved.
    #[bits(5)]
    pub rsvd0: u8,
    /// HAD, bits 8:7: host accessed/dirty updates (00b none).
    #[bits(2)]
    pub had: u8,
    /// Mode, bits 11:9: host table levels (0: no host translation, 7 reserved).
    #[bits(3)]
    pub mode: u8,
    /// Host Page Table Root Pointer, bits 51:12.
    #[bits(40)]
    pub pt_root_page: u64,
    /// PPR, bit 52: peripheral page requests enabled.
    pub ppr: bool,
    /// GPRP, bit 53: guest PPR response with PASID.
    pub gprp: bool,
    /// GIoV, bit 54: guest I/O protection (requests without PASID use the guest tables of
    /// PASID 0).
    pub giov: bool,
    /// GV, bit 55: guest translation valid (the GCR3 table is used).
    pub gv: bool,
    /// GLX, bits 57:56: GCR3 table levels minus one (00b one level, 01b two, 10b three).
    #[bits(2)]
    pub glx: u8,
    /// GCR3 Table Root Pointer bits 14:12, DTE bits 60:58.
    #[bits(3)]
    pub gcr3_a: u8,
    /// IR, bit 61: reads allowed.
    pub ir: bool,
    /// IW, bit 62: writes allowed.
    pub iw: bool,
    /// Bit 63, reserved.
    pub rsvd63: bool,
}

/// DTE bits 127:64.
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct DteQw1 {
    /// DomainID, DTE bits 79:64.
    pub domain_id: u16,
    /// GCR3 Table Root Pointer bits 30:15, DTE bits 95:80.
    pub gcr3_b: u16,
    /// I, DTE bit 96: device IOTLB (ATS) enabled.
    pub i: bool,
    /// SE, DTE bit 97: suppress I/O page fault events.
    pub se: bool,
    /// SA, DTE bit 98: suppress all I/O page fault events.
    pub sa: bool,
    /// IoCtl, DTE bits 100:99: port I/O space accesses (00b abort, 01b forward, 10b translate).
    #[bits(2)]
    pub ioctl: u8,
    /// Cache, DTE bit 101: IOTLB caching hint.
    pub cache: bool,
    /// SD, DTE bit 102: snoop disable.
    pub sd: bool,
    /// EX, DTE bit 103: the exclusion range applies to this device.
    pub ex: bool,
    /// SysMgt, DTE bits 105:104: system management messages.
    #[bits(2)]
    pub sys_mgt: u8,
    /// DTE bit 106, reserved.
    pub rsvd106: bool,
    /// GCR3 Table Root Pointer bits 51:31, DTE bits 127:107.
    #[bits(21)]
    pub gcr3_c: u32,
}

/// DTE bits 191:128: interrupt remapping, accepted and not modelled, plus the guest paging
/// mode.
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct DteQw2 {
    /// IV, DTE bit 128: the interrupt map is valid.
    pub iv: bool,
    /// IntTabLen, bits 132:129.
    #[bits(4)]
    pub int_tab_len: u8,
    /// IG, bit 133: ignore unmapped interrupts.
    pub ig: bool,
    /// Interrupt Table Root Pointer, bits 179:134.
    #[bits(46)]
    pub int_table_root: u64,
    /// Bits 181:180, reserved.
    #[bits(2)]
    pub rsvd52: u8,
    /// GPM, bits 183:182: guest paging mode (00b 4-level, 01b 5-level).
    #[bits(2)]
    pub gpm: u8,
    /// InitPass, EIntPass, NMIPass (bits 186:184), reserved (187), IntCtl (189:188),
    /// Lint0Pass, Lint1Pass (191:190).
    pub init_pass: bool,
    /// EIntPass, bit 185.
    pub eint_pass: bool,
    /// NMIPass, bit 186.
    pub nmi_pass: bool,
    /// Bit 187, reserved.
    pub rsvd59: bool,
    /// IntCtl, bits 189:188.
    #[bits(2)]
    pub int_ctl: u8,
    /// Lint0Pass, bit 190.
    pub lint0_pass: bool,
    /// Lint1Pass, bit 191.
    pub lint1_pass: bool,
}

/// The GCR3 Table Root Pointer's three DTE fields.
pub fn dte_gcr3_root(q0: DteQw0, q1: DteQw1) -> u64 {
    (u64::from(q0.gcr3_a()) << 12) | (u64::from(q1.gcr3_b()) << 15) | (u64::from(q1.gcr3_c()) << 31)
}

/// `(qw0, qw1)` with the GCR3 Table Root Pointer `root` (4 KiB aligned) split into its fields.
pub fn with_gcr3_root(q0: DteQw0, q1: DteQw1, root: u64) -> (DteQw0, DteQw1) {
    (
        q0.with_gcr3_a(((root >> 12) & 0x7) as u8),
        q1.with_gcr3_b(((root >> 15) & 0xffff) as u16)
            .with_gcr3_c(((root >> 31) & 0x1f_ffff) as u32),
    )
}

/// Bytes per DTE.
pub const DTE_BYTES: u64 = 32;

// --------------------------------------------------------------------- GCR3 table (§2.2.6)

/// A GCR3 table entry, at either level: V, bit 0; the next table's or the guest CR3's page,
/// bits 51:12; bits 63:52 reserved. Bits 11:1 are ignored.
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct Gcr3Entry {
    /// V, bit 0.
    pub v: bool,
    #[bits(11)]
    __: u16,
    /// The pointer, bits 51:12.
    #[bits(40)]
    pub page: u64,
    /// Bits 63:52, reserved.
    #[bits(12)]
    pub rsvd: u16,
}

// ----------------------------------------------------------------------- commands (§2.4)

/// Command opcodes, bits 63:60 of a command's first qword (§2.4).
pub mod opcode {
    /// COMPLETION_WAIT (§2.4.1).
    pub const COMPLETION_WAIT: u8 = 0x1;
    /// INVALIDATE_DEVTAB_ENTRY (§2.4.2).
    pub const INVALIDATE_DEVTAB_ENTRY: u8 = 0x2;
    /// INVALIDATE_IOMMU_PAGES (§2.4.3).
    pub const INVALIDATE_IOMMU_PAGES: u8 = 0x3;
    /// INVALIDATE_IOTLB_PAGES (§2.4.4).
    pub const INVALIDATE_IOTLB_PAGES: u8 = 0x4;
    /// INVALIDATE_INTERRUPT_TABLE (§2.4.5).
    pub const INVALIDATE_INTERRUPT_TABLE: u8 = 0x5;
    /// PREFETCH_IOMMU_PAGES (§2.4.6).
    pub const PREFETCH_IOMMU_PAGES: u8 = 0x6;
    /// COMPLETE_PPR_REQUEST (§2.4.7).
    pub const COMPLETE_PPR_REQUEST: u8 = 0x7;
    /// INVALIDATE_IOMMU_ALL (§2.4.8).
    pub const INVALIDATE_IOMMU_ALL: u8 = 0x8;
}

/// The opcode of a command whose first qword is `qw0`.
pub fn command_opcode(qw0: u64) -> u8 {
    (qw0 >> 60) as u8
}

/// COMPLETION_WAIT, first qword (§2.4.1); the second qword is the 64-bit store data.
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct CompletionWait {
    /// S, bit 0: store the data at the address.
    pub s: bool,
    /// I, bit 1: set Status.ComWaitInt (and interrupt when ComWaitIntEn).
    pub i: bool,
    /// F, bit 2: flush queue (a fence).
    pub f: bool,
    /// Store address bits 51:3.
    #[bits(49)]
    pub store_qword: u64,
    /// Bits 59:52, reserved.
    #[bits(8)]
    pub rsvd: u8,
    /// Opcode, bits 63:60.
    #[bits(4)]
    pub op: u8,
}

/// INVALIDATE_DEVTAB_ENTRY (§2.4.2) and INVALIDATE_INTERRUPT_TABLE (§2.4.5), first qword;
/// the second qword is reserved.
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct DeviceCommand {
    /// DeviceID, bits 15:0.
    pub device_id: u16,
    /// Bits 59:16, reserved.
    #[bits(44)]
    pub rsvd: u64,
    /// Opcode, bits 63:60.
    #[bits(4)]
    pub op: u8,
}

/// INVALIDATE_IOMMU_PAGES, first qword (§2.4.3).
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct InvPagesQw0 {
    /// PASID, bits 19:0 (meaningful with GN=1).
    #[bits(20)]
    pub pasid: u32,
    /// Bits 31:20, reserved.
    #[bits(12)]
    pub rsvd0: u16,
    /// DomainID, bits 47:32.
    pub domain_id: u16,
    /// Bits 59:48, reserved.
    #[bits(12)]
    pub rsvd1: u16,
    /// Opcode, bits 63:60.
    #[bits(4)]
    pub op: u8,
}

/// The second qword of INVALIDATE_IOMMU_PAGES (§2.4.3), INVALIDATE_IOTLB_PAGES (§2.4.4) and
/// PREFETCH_IOMMU_PAGES (§2.4.6): the address and its flags.
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct PagesQw1 {
    /// S, bit 0: the address encodes a range (its lowest clear bit gives the size).
    pub s: bool,
    /// PDE, bit 1 (INVALIDATE_IOMMU_PAGES): page-directory entries too.
    pub pde: bool,
    /// GN, bit 2: the PASID field is meaningful (guest translations).
    pub gn: bool,
    /// Bits 11:3, reserved.
    #[bits(9)]
    pub rsvd: u16,
    /// Address bits 63:12.
    #[bits(52)]
    pub page: u64,
}

/// The all-pages address of INVALIDATE_IOMMU_PAGES with S=1 (§2.4.3): bits 62:12 ones.
pub const INV_ALL_PAGES: u64 = 0x7fff_ffff_ffff_f000;

/// INVALIDATE_IOTLB_PAGES, first qword (§2.4.4).
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct InvIotlbQw0 {
    /// DeviceID, bits 15:0.
    pub device_id: u16,
    /// PASID bits 15:8, bits 23:16.
    pub pasid_hi: u8,
    /// Maxpend, bits 31:24.
    pub maxpend: u8,
    /// QueueID, bits 47:32.
    pub queue_id: u16,
    /// PASID bits 7:0, bits 55:48.
    pub pasid_lo: u8,
    /// Bits 59:56, reserved.
    #[bits(4)]
    pub rsvd: u8,
    /// Opcode, bits 63:60.
    #[bits(4)]
    pub op: u8,
}

/// PREFETCH_IOMMU_PAGES, first qword (§2.4.6).
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct PrefetchQw0 {
    /// DeviceID, bits 15:0.
    pub device_id: u16,
    /// Bits 23:16, reserved.
    pub rsvd0: u8,
    /// PFCount, bits 31:24: pages to prefetch.
    pub pf_count: u8,
    /// PASID, bits 51:32.
    #[bits(20)]
    pub pasid: u32,
    /// Bits 59:52, reserved.
    #[bits(8)]
    pub rsvd1: u8,
    /// Opcode, bits 63:60.
    #[bits(4)]
    pub op: u8,
}

/// COMPLETE_PPR_REQUEST, first qword (§2.4.7); the second qword holds GN (bit 2) and the
/// completion tag (bits 47:32).
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct CompletePprQw0 {
    /// DeviceID, bits 15:0.
    pub device_id: u16,
    /// Bits 31:16, reserved.
    pub rsvd0: u16,
    /// PASID, bits 51:32.
    #[bits(20)]
    pub pasid: u32,
    /// Bits 59:52, reserved.
    #[bits(8)]
    pub rsvd1: u8,
    /// Opcode, bits 63:60.
    #[bits(4)]
    pub op: u8,
}

/// Reserved bits of COMPLETE_PPR_REQUEST's second qword (all but GN, bit 2, and the
/// completion tag, bits 47:32).
pub const COMPLETE_PPR_QW1_RSVD: u64 = !((1 << 2) | (0xffff << 32));

/// Reserved bits of INVALIDATE_IOTLB_PAGES's second qword: bit 1 and bits 11:3.
pub const INV_IOTLB_QW1_RSVD: u64 = 0xffa;

/// Inval, bit 4 of PREFETCH_IOMMU_PAGES's second qword: invalidate before prefetching.
pub const PREFETCH_INVAL: u64 = 1 << 4;
/// Reserved bits of PREFETCH_IOMMU_PAGES's second qword: all of 11:0 but S, GN and Inval.
pub const PREFETCH_QW1_RSVD: u64 = 0xfea;

// -------------------------------------------------------------------- event log (§2.5)

/// Event codes, bits 63:60 of an event's first qword (§2.5).
pub mod event_code {
    /// ILLEGAL_DEV_TABLE_ENTRY (§2.5.2).
    pub const ILLEGAL_DEV_TABLE_ENTRY: u8 = 0x1;
    /// IO_PAGE_FAULT (§2.5.3).
    pub const IO_PAGE_FAULT: u8 = 0x2;
    /// DEV_TAB_HARDWARE_ERROR (§2.5.4).
    pub const DEV_TAB_HARDWARE_ERROR: u8 = 0x3;
    /// PAGE_TAB_HARDWARE_ERROR (§2.5.5).
    pub const PAGE_TAB_HARDWARE_ERROR: u8 = 0x4;
    /// ILLEGAL_COMMAND_ERROR (§2.5.6).
    pub const ILLEGAL_COMMAND_ERROR: u8 = 0x5;
    /// COMMAND_HARDWARE_ERROR (§2.5.7).
    pub const COMMAND_HARDWARE_ERROR: u8 = 0x6;
    /// IOTLB_INV_TIMEOUT (§2.5.8).
    pub const IOTLB_INV_TIMEOUT: u8 = 0x7;
    /// INVALID_DEVICE_REQUEST (§2.5.9).
    pub const INVALID_DEVICE_REQUEST: u8 = 0x8;
}

/// An event-log entry's first qword (§2.5): the requester, the PASID or domain, the flags and
/// the code. The second qword is the address.
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct EventQw0 {
    /// DeviceID, bits 15:0.
    pub device_id: u16,
    /// PASID bits 19:16, bits 19:16.
    #[bits(4)]
    pub pasid_hi: u8,
    /// Bits 31:20, reserved.
    #[bits(12)]
    __: u16,
    /// DomainID, or PASID bits 15:0 when GN=1, bits 47:32.
    pub domain_or_pasid: u16,
    /// Flags, bits 59:48 (see [`EventFlags`]).
    #[bits(12)]
    pub flags: u16,
    /// EventCode, bits 63:60.
    #[bits(4)]
    pub code: u8,
}

bitflags::bitflags! {
    /// The flags of IO_PAGE_FAULT and the other translation events (§2.5.3): bits 59:48 of
    /// the first qword, shifted down.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct EventFlags: u16 {
        /// GN: the PASID field is valid (a guest-translation request).
        const GN = 1 << 0;
        /// NX: an execute request.
        const NX = 1 << 1;
        /// US: a user request.
        const US = 1 << 2;
        /// I: an interrupt request.
        const I = 1 << 3;
        /// PR: the page was present.
        const PR = 1 << 4;
        /// RW: a write.
        const RW = 1 << 5;
        /// PE: the permissions did not allow the access.
        const PE = 1 << 6;
        /// RZ: a reserved bit was set (or a bad level).
        const RZ = 1 << 7;
        /// TR: a translation request (ATS).
        const TR = 1 << 8;
        /// Type, bits 59:57 (hardware-error and invalid-request events), lowest bit: with no
        /// other Type bit, a master abort.
        const TYPE0 = 1 << 9;
        /// Type, second bit.
        const TYPE1 = 1 << 10;
        /// Type, third bit (INVALID_DEVICE_REQUEST only).
        const TYPE2 = 1 << 11;
    }
}

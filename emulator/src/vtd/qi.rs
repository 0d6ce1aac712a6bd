//! Invalidation descriptors (VT-d spec rev 4.1, §6.5.2 "Queued Invalidation Interface").
//!
//! Every descriptor has its type in bits 3:0 and 11:9 of the first qword. A 128-bit queue holds
//! two-qword descriptors; a 256-bit queue (IQA.DW = 1) four-qword ones, whose upper 128 bits are
//! reserved for all the descriptor types modelled here.

use super::regs::{
    IQEI_FETCH_ERROR, IQEI_INVALID_TTM, IQEI_INVALID_TYPE, IQEI_INVALID_WIDTH, IQEI_RESERVED,
    IQEI_TAIL_BEYOND_QUEUE, IQEI_TAIL_MISALIGNED,
};
use bitfield_struct::bitfield;

/// Why the unit stopped processing the invalidation queue: the IQEI it reports in IQERCD_REG
/// (§10.4.30; see the codes in [`super::regs`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Iqei {
    /// The tail register points beyond the queue.
    TailBeyondQueue,
    /// A descriptor could not be fetched from memory.
    FetchError,
    /// An invalid (or unsupported) descriptor type.
    InvalidType,
    /// A reserved field of a descriptor is set.
    Reserved,
    /// IQA.DW names a width the mode cannot use: 128-bit descriptors in scalable mode, or
    /// 256-bit ones without ECAP.SMTS.
    InvalidWidth,
    /// IQT is not 256-bit aligned in a queue of 256-bit descriptors.
    TailMisaligned,
    /// The translation table mode latched from RTADDR_REG is invalid (reserved, or a mode the
    /// unit does not support), so no descriptor can be checked against it.
    InvalidTtm,
}

impl Iqei {
    /// The IQERCD_REG.IQEI encoding.
    pub fn code(self) -> u64 {
        match self {
            Iqei::TailBeyondQueue => IQEI_TAIL_BEYOND_QUEUE,
            Iqei::FetchError => IQEI_FETCH_ERROR,
            Iqei::InvalidType => IQEI_INVALID_TYPE,
            Iqei::Reserved => IQEI_RESERVED,
            Iqei::InvalidWidth => IQEI_INVALID_WIDTH,
            Iqei::TailMisaligned => IQEI_TAIL_MISALIGNED,
            Iqei::InvalidTtm => IQEI_INVALID_TTM,
        }
    }
}

/// Descriptor type encodings (§6.5.2).
pub const TYPE_CONTEXT_CACHE: u64 = 1;
/// IOTLB invalidate descriptor.
pub const TYPE_IOTLB: u64 = 2;
/// Device-TLB invalidate descriptor.
pub const TYPE_DEVICE_TLB: u64 = 3;
/// Interrupt-entry-cache invalidate descriptor.
pub const TYPE_IEC: u64 = 4;
/// Invalidation wait descriptor.
pub const TYPE_WAIT: u64 = 5;
/// PASID-based IOTLB invalidate descriptor.
pub const TYPE_PASID_IOTLB: u64 = 6;
/// PASID-cache invalidate descriptor.
pub const TYPE_PASID_CACHE: u64 = 7;
/// PASID-based device-TLB invalidate descriptor.
pub const TYPE_PASID_DEVICE_TLB: u64 = 8;

// Descriptor layouts (§6.5.2), declared once: the decoder reads them and the encoders write
// them. A descriptor is handled as its two low qwords in one 128-bit word (qword 0 in bits
// 63:0); every descriptor keeps its type in bits 3:0 and 11:9. The `rsvd*` fields are the
// reserved bits the decoder refuses.

/// A descriptor's two low qwords as one 128-bit word.
fn word(q0: u64, q1: u64) -> u128 {
    u128::from(q0) | (u128::from(q1) << 64)
}

/// A 128-bit descriptor word as its two qwords.
fn qwords(w: u128) -> [u64; 2] {
    [w as u64, (w >> 64) as u64]
}

/// Context-cache invalidate descriptor (§6.5.2.1).
#[bitfield(u128)]
struct ContextCacheDesc {
    #[bits(4)]
    ty_lo: u8,
    /// G: 01b global, 10b domain, 11b device.
    #[bits(2)]
    g: u8,
    #[bits(3)]
    rsvd0: u8,
    #[bits(3)]
    ty_hi: u8,
    #[bits(4)]
    rsvd1: u8,
    did: u16,
    sid: u16,
    /// FM: function bits of the SID to ignore.
    #[bits(2)]
    fm: u8,
    #[bits(14)]
    rsvd2: u16,
    rsvd3: u64,
}

impl ContextCacheDesc {
    fn reserved(&self) -> bool {
        self.rsvd0() | self.rsvd1() != 0 || self.rsvd2() != 0 || self.rsvd3() != 0
    }
}

/// IOTLB invalidate descriptor (§6.5.2.3).
#[bitfield(u128)]
struct IotlbDesc {
    #[bits(4)]
    ty_lo: u8,
    /// G: 01b global, 10b domain, 11b page.
    #[bits(2)]
    g: u8,
    /// DW: drain writes (the model drains always).
    dw: bool,
    /// DR: drain reads.
    dr: bool,
    rsvd0: bool,
    #[bits(3)]
    ty_hi: u8,
    #[bits(4)]
    rsvd1: u8,
    did: u16,
    rsvd2: u32,
    /// AM: the address mask (2^AM pages).
    #[bits(6)]
    am: u8,
    /// IH: invalidation hint (only leaves changed).
    ih: bool,
    #[bits(5)]
    rsvd3: u8,
    /// ADDR: address bits 63:12.
    #[bits(52)]
    addr_page: u64,
}

impl IotlbDesc {
    fn reserved(&self) -> bool {
        self.rsvd0() || self.rsvd1() != 0 || self.rsvd2() != 0 || self.rsvd3() != 0
    }
}

/// Device-TLB invalidate descriptor (§6.5.2.5).
#[bitfield(u128)]
struct DeviceTlbDesc {
    #[bits(4)]
    ty_lo: u8,
    #[bits(5)]
    rsvd0: u8,
    #[bits(3)]
    ty_hi: u8,
    /// PFSID bits 3:0 (12..=15) and MIP (20:16).
    #[bits(9)]
    pfsid_lo_mip: u16,
    #[bits(11)]
    rsvd1: u16,
    sid: u16,
    #[bits(4)]
    rsvd2: u8,
    /// PFSID bits 15:4.
    #[bits(12)]
    pfsid_hi: u16,
    /// S: size of the invalidation range encoded in ADDR.
    size: bool,
    #[bits(11)]
    rsvd3: u16,
    #[bits(52)]
    addr_page: u64,
}

impl DeviceTlbDesc {
    fn reserved(&self) -> bool {
        self.rsvd0() != 0 || self.rsvd1() != 0 || self.rsvd2() != 0 || self.rsvd3() != 0
    }
}

/// Invalidation wait descriptor (§6.5.2.8).
#[bitfield(u128)]
struct WaitDesc {
    #[bits(4)]
    ty_lo: u8,
    /// IF: raise an invalidation-completion interrupt.
    interrupt: bool,
    /// SW: write STDATA at STADDR.
    status_write: bool,
    /// FN: fence.
    fence: bool,
    /// PD: page-request drain (needs page requests, not offered: reserved here).
    pd: bool,
    rsvd0: bool,
    #[bits(3)]
    ty_hi: u8,
    #[bits(20)]
    rsvd1: u32,
    /// STDATA.
    data: u32,
    #[bits(2)]
    rsvd2: u8,
    /// STADDR: address bits 63:2.
    #[bits(62)]
    addr_dword: u64,
}

impl WaitDesc {
    fn reserved(&self) -> bool {
        self.pd() || self.rsvd0() || self.rsvd1() != 0 || self.rsvd2() != 0
    }
}

/// PASID-based IOTLB invalidate (§6.5.2.4) and PASID-cache invalidate (§6.5.2.2) descriptors:
/// the same qword 0; qword 1 is the page range of the former and reserved in the latter.
#[bitfield(u128)]
struct PasidDesc {
    #[bits(4)]
    ty_lo: u8,
    /// G: PASID IOTLB 10b PASID, 11b page; PASID cache 00b domain, 01b PASID, 11b global.
    #[bits(2)]
    g: u8,
    #[bits(3)]
    rsvd0: u8,
    #[bits(3)]
    ty_hi: u8,
    #[bits(4)]
    rsvd1: u8,
    did: u16,
    #[bits(20)]
    pasid: u32,
    #[bits(12)]
    rsvd2: u16,
    /// AM.
    #[bits(6)]
    am: u8,
    /// IH.
    ih: bool,
    #[bits(5)]
    rsvd3: u8,
    /// ADDR: address bits 63:12.
    #[bits(52)]
    addr_page: u64,
}

impl PasidDesc {
    fn reserved_q0(&self) -> bool {
        self.rsvd0() | self.rsvd1() != 0 || self.rsvd2() != 0
    }
    fn q1(&self) -> u64 {
        (self.into_bits() >> 64) as u64
    }
}

/// PASID-based device-TLB invalidate descriptor (§6.5.2.6).
#[bitfield(u128)]
struct PasidDeviceTlbDesc {
    #[bits(4)]
    ty_lo: u8,
    #[bits(5)]
    other0: u8,
    #[bits(3)]
    ty_hi: u8,
    #[bits(4)]
    pfsid_lo: u8,
    sid: u16,
    #[bits(20)]
    pasid: u32,
    #[bits(12)]
    pfsid_hi: u16,
    /// G: global.
    global: bool,
    #[bits(10)]
    rsvd0: u16,
    /// S.
    size: bool,
    #[bits(52)]
    addr_page: u64,
}

/// Granularity of a context-cache invalidation (§6.5.2.1, CCMD.CIRG §10.4.7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContextGranularity {
    /// All context-cache entries.
    Global,
    /// Entries whose context entry names the domain.
    Domain(u16),
    /// Entries of the source id, ignoring the function bits the function mask (FM) names,
    /// belonging to the domain.
    Device {
        /// The domain id.
        did: u16,
        /// The source id.
        sid: u16,
        /// The function mask: 0 none, 1 bit 2, 2 bits 2:1, 3 bits 2:0 of the function are
        /// ignored.
        fm: u8,
    },
}

/// Granularity of an IOTLB invalidation (§6.5.2.3, IOTLB_REG.IIRG §10.4.8.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IotlbGranularity {
    /// Everything.
    Global,
    /// Everything of one domain.
    Domain(u16),
    /// The 2^AM pages at ADDR of one domain.
    Page {
        /// The domain id.
        did: u16,
        /// The first address (aligned to 2^(12 + AM)).
        addr: u64,
        /// The address mask.
        am: u8,
        /// Invalidation hint: only leaf entries changed; paging-structure caches may be kept.
        ih: bool,
    },
}

/// Granularity of a PASID-based IOTLB invalidation (§6.5.2.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PasidIotlbGranularity {
    /// All mappings of the PASID in the domain (G = 10b).
    Pasid,
    /// The 2^AM pages at ADDR of the PASID in the domain (G = 11b).
    Page {
        /// The first address.
        addr: u64,
        /// The address mask.
        am: u8,
        /// Invalidation hint.
        ih: bool,
    },
}

/// Granularity of a PASID-cache invalidation (§6.5.2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PasidCacheGranularity {
    /// All PASIDs of the domain (G = 00b).
    Domain,
    /// One PASID of the domain (G = 01b).
    Pasid,
    /// Everything (G = 11b).
    Global,
}

/// A decoded invalidation descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Descriptor {
    /// Context-cache invalidate (type 1): qword 0 bits 5:4 G, bits 31:16 DID, bits 47:32 SID,
    /// bits 49:48 FM.
    ContextCache(ContextGranularity),
    /// IOTLB invalidate (type 2): qword 0 bits 5:4 G, bit 6 DW, bit 7 DR, bits 31:16 DID;
    /// qword 1 bits 5:0 AM, bit 6 IH, bits 63:12 ADDR.
    Iotlb(IotlbGranularity),
    /// Device-TLB invalidate (type 3): qword 0 bits 47:32 SID; qword 1 bit 0 S, bits 63:12 ADDR.
    /// The model has no device TLBs of its own to invalidate; the descriptor completes at once.
    DeviceTlb {
        /// The source id of the device.
        sid: u16,
    },
    /// Invalidation wait (type 5): qword 0 bit 4 IF, bit 5 SW, bit 6 FN, bits 63:32 STDATA;
    /// qword 1 bits 63:2 STADDR.
    Wait {
        /// Raise an invalidation-completion interrupt (ICS.IWC).
        interrupt: bool,
        /// Write `data` at `addr`.
        status_write: bool,
        /// Fence: later descriptors wait for earlier ones (always true of this model).
        fence: bool,
        /// Status data.
        data: u32,
        /// Status address (4-byte aligned).
        addr: u64,
    },
    /// PASID-based IOTLB invalidate (type 6): qword 0 bits 5:4 G, bits 31:16 DID, bits 51:32
    /// PASID; qword 1 bits 5:0 AM, bit 6 IH, bits 63:12 ADDR.
    PasidIotlb {
        /// The domain id.
        did: u16,
        /// The PASID.
        pasid: u32,
        /// What to invalidate.
        granularity: PasidIotlbGranularity,
    },
    /// PASID-cache invalidate (type 7): qword 0 bits 5:4 G, bits 31:16 DID, bits 51:32 PASID.
    PasidCache {
        /// The domain id.
        did: u16,
        /// The PASID.
        pasid: u32,
        /// What to invalidate.
        granularity: PasidCacheGranularity,
    },
    /// PASID-based device-TLB invalidate (type 8); completes at once like [`Descriptor::DeviceTlb`].
    PasidDeviceTlb {
        /// The source id of the device.
        sid: u16,
    },
}

/// Descriptor encoders for software that drives the unit (the core layer, a guest-style
/// driver): each writes the two low qwords of a descriptor in the layout [`decode`] reads,
/// with every reserved bit zero. In a 256-bit queue the upper two qwords are zero.
pub mod encode {
    use super::{
        ContextCacheDesc, ContextGranularity, IotlbDesc, IotlbGranularity, PasidCacheGranularity,
        PasidDesc, PasidIotlbGranularity, TYPE_CONTEXT_CACHE, TYPE_IOTLB, TYPE_PASID_CACHE,
        TYPE_PASID_IOTLB, TYPE_WAIT, WaitDesc, qwords,
    };

    /// The low four bits of a type encoding (bits 3:0; the types used here have none above).
    const fn ty(t: u64) -> u8 {
        (t & 0xf) as u8
    }

    /// Context-cache invalidate (§6.5.2.1): G 01b global, 10b domain, 11b device with SID and
    /// FM.
    pub fn context_cache(gran: ContextGranularity) -> [u64; 2] {
        let d = ContextCacheDesc::new().with_ty_lo(ty(TYPE_CONTEXT_CACHE));
        let d = match gran {
            ContextGranularity::Global => d.with_g(1),
            ContextGranularity::Domain(did) => d.with_g(2).with_did(did),
            ContextGranularity::Device { did, sid, fm } => {
                d.with_g(3).with_did(did).with_sid(sid).with_fm(fm & 3)
            }
        };
        qwords(d.into_bits())
    }

    /// IOTLB invalidate (§6.5.2.3): G 01b global, 10b domain, 11b page with ADDR, IH and AM.
    pub fn iotlb(gran: IotlbGranularity) -> [u64; 2] {
        let d = IotlbDesc::new().with_ty_lo(ty(TYPE_IOTLB));
        let d = match gran {
            IotlbGranularity::Global => d.with_g(1),
            IotlbGranularity::Domain(did) => d.with_g(2).with_did(did),
            IotlbGranularity::Page { did, addr, am, ih } => d
                .with_g(3)
                .with_did(did)
                .with_addr_page(addr >> 12)
                .with_ih(ih)
                .with_am(am & 0x3f),
        };
        qwords(d.into_bits())
    }

    /// PASID-cache invalidate (§6.5.2.2): G 00b domain, 01b PASID, 11b global.
    pub fn pasid_cache(did: u16, pasid: u32, gran: PasidCacheGranularity) -> [u64; 2] {
        let g = match gran {
            PasidCacheGranularity::Domain => 0,
            PasidCacheGranularity::Pasid => 1,
            PasidCacheGranularity::Global => 3,
        };
        let d = PasidDesc::new()
            .with_ty_lo(ty(TYPE_PASID_CACHE))
            .with_g(g)
            .with_did(did)
            .with_pasid(pasid & 0xf_ffff);
        qwords(d.into_bits())
    }

    /// PASID-based IOTLB invalidate (§6.5.2.4): G 10b PASID, 11b page with ADDR, IH and AM.
    pub fn pasid_iotlb(did: u16, pasid: u32, gran: PasidIotlbGranularity) -> [u64; 2] {
        let d = PasidDesc::new()
            .with_ty_lo(ty(TYPE_PASID_IOTLB))
            .with_did(did)
            .with_pasid(pasid & 0xf_ffff);
        let d = match gran {
            PasidIotlbGranularity::Pasid => d.with_g(2),
            PasidIotlbGranularity::Page { addr, am, ih } => d
                .with_g(3)
                .with_addr_page(addr >> 12)
                .with_ih(ih)
                .with_am(am & 0x3f),
        };
        qwords(d.into_bits())
    }

    /// Invalidation wait (§6.5.2.8): IF, SW, FN, status data; status address (4-byte aligned).
    pub fn wait(
        interrupt: bool,
        status_write: bool,
        fence: bool,
        data: u32,
        addr: u64,
    ) -> [u64; 2] {
        let d = WaitDesc::new()
            .with_ty_lo(ty(TYPE_WAIT))
            .with_interrupt(interrupt)
            .with_status_write(status_write)
            .with_fence(fence)
            .with_data(data)
            .with_addr_dword(addr >> 2);
        qwords(d.into_bits())
    }
}

/// What the decoder needs to know about the model.
#[derive(Debug, Clone, Copy)]
pub struct DecodeCtx {
    /// The root table is in scalable mode (TTM = 01b).
    pub scalable: bool,
    /// Device TLBs are supported (ECAP.DT).
    pub device_tlb: bool,
    /// PASIDs are supported (scalable mode offered).
    pub pasid: bool,
}

/// Decodes the descriptor in `qw` (two or four qwords). On error returns why the queue stops.
pub fn decode(qw: &[u64], ctx: DecodeCtx) -> Result<Descriptor, Iqei> {
    let q0 = qw.first().copied().unwrap_or(0);
    let q1 = qw.get(1).copied().unwrap_or(0);
    if qw.iter().skip(2).any(|&q| q != 0) {
        return Err(Iqei::Reserved);
    }
    let w = word(q0, q1);
    let ty = (q0 & 0xf) | (((q0 >> 9) & 7) << 4);
    match ty {
        TYPE_CONTEXT_CACHE => decode_context_cache(ContextCacheDesc::from_bits(w)),
        TYPE_IOTLB => decode_iotlb(IotlbDesc::from_bits(w)),
        TYPE_DEVICE_TLB if ctx.device_tlb => {
            let d = DeviceTlbDesc::from_bits(w);
            refuse_reserved(d.reserved())?;
            Ok(Descriptor::DeviceTlb { sid: d.sid() })
        }
        TYPE_WAIT => {
            let d = WaitDesc::from_bits(w);
            refuse_reserved(d.reserved())?;
            Ok(Descriptor::Wait {
                interrupt: d.interrupt(),
                status_write: d.status_write(),
                fence: d.fence(),
                data: d.data(),
                addr: d.addr_dword() << 2,
            })
        }
        TYPE_PASID_IOTLB | TYPE_PASID_CACHE | TYPE_PASID_DEVICE_TLB if ctx.pasid => {
            // §6.5.2 lists the descriptor types valid in each translation table mode: the
            // PASID-based ones are not types of legacy mode, an invalid type (IQEI 3).
            if !ctx.scalable {
                return Err(Iqei::InvalidType);
            }
            match ty {
                TYPE_PASID_IOTLB => decode_pasid_iotlb(PasidDesc::from_bits(w)),
                TYPE_PASID_CACHE => decode_pasid_cache(PasidDesc::from_bits(w)),
                _ if !ctx.device_tlb => Err(Iqei::InvalidType),
                _ => {
                    let d = PasidDeviceTlbDesc::from_bits(w);
                    refuse_reserved(d.rsvd0() != 0)?;
                    Ok(Descriptor::PasidDeviceTlb { sid: d.sid() })
                }
            }
        }
        // Interrupt-entry-cache invalidation needs interrupt remapping (ECAP.IR = 0 here);
        // device-TLB descriptors need ECAP.DT; other encodings are undefined.
        _ => Err(Iqei::InvalidType),
    }
}

fn refuse_reserved(set: bool) -> Result<(), Iqei> {
    if set { Err(Iqei::Reserved) } else { Ok(()) }
}

fn decode_context_cache(d: ContextCacheDesc) -> Result<Descriptor, Iqei> {
    refuse_reserved(d.reserved())?;
    let g = match d.g() {
        1 => ContextGranularity::Global,
        2 => ContextGranularity::Domain(d.did()),
        3 => ContextGranularity::Device {
            did: d.did(),
            sid: d.sid(),
            fm: d.fm(),
        },
        _ => return Err(Iqei::Reserved),
    };
    Ok(Descriptor::ContextCache(g))
}

fn decode_iotlb(d: IotlbDesc) -> Result<Descriptor, Iqei> {
    refuse_reserved(d.reserved())?;
    let g = match d.g() {
        1 => IotlbGranularity::Global,
        2 => IotlbGranularity::Domain(d.did()),
        3 => IotlbGranularity::Page {
            did: d.did(),
            addr: d.addr_page() << 12,
            am: d.am(),
            ih: d.ih(),
        },
        _ => return Err(Iqei::Reserved),
    };
    Ok(Descriptor::Iotlb(g))
}

fn decode_pasid_iotlb(d: PasidDesc) -> Result<Descriptor, Iqei> {
    refuse_reserved(d.reserved_q0() || d.rsvd3() != 0)?;
    let granularity = match d.g() {
        2 => PasidIotlbGranularity::Pasid,
        3 => PasidIotlbGranularity::Page {
            addr: d.addr_page() << 12,
            am: d.am(),
            ih: d.ih(),
        },
        _ => return Err(Iqei::Reserved),
    };
    Ok(Descriptor::PasidIotlb {
        did: d.did(),
        pasid: d.pasid(),
        granularity,
    })
}

fn decode_pasid_cache(d: PasidDesc) -> Result<Descriptor, Iqei> {
    refuse_reserved(d.reserved_q0() || d.q1() != 0)?;
    let granularity = match d.g() {
        0 => PasidCacheGranularity::Domain,
        1 => PasidCacheGranularity::Pasid,
        3 => PasidCacheGranularity::Global,
        _ => return Err(Iqei::Reserved),
    };
    Ok(Descriptor::PasidCache {
        did: d.did(),
        pasid: d.pasid(),
        granularity,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iqei_codes_follow_the_register_datasheets() {
        // IQERCD_REG.IQEI (§10.4.30), hand-written.
        let want = [
            (Iqei::TailBeyondQueue, 1),
            (Iqei::FetchError, 2),
            (Iqei::InvalidType, 3),
            (Iqei::Reserved, 4),
            (Iqei::InvalidWidth, 5),
            (Iqei::TailMisaligned, 6),
            (Iqei::InvalidTtm, 7),
        ];
        for (e, code) in want {
            assert_eq!(e.code(), code, "{e:?}");
        }
    }

    const SM: DecodeCtx = DecodeCtx {
        scalable: true,
        device_tlb: true,
        pasid: true,
    };
    const LEGACY: DecodeCtx = DecodeCtx {
        scalable: false,
        device_tlb: true,
        pasid: true,
    };

    #[test]
    fn encoders_write_the_spec_layout() {
        // Hand-built words (§6.5.2.1, .2, .3, .4, .8).
        assert_eq!(encode::context_cache(ContextGranularity::Global), [0x11, 0]);
        assert_eq!(
            encode::context_cache(ContextGranularity::Domain(7)),
            [0x21 | (7 << 16), 0]
        );
        assert_eq!(
            encode::context_cache(ContextGranularity::Device {
                did: 7,
                sid: 0x0108,
                fm: 2
            }),
            [0x31 | (7 << 16) | (0x0108 << 32) | (2 << 48), 0]
        );
        assert_eq!(encode::iotlb(IotlbGranularity::Global), [0x12, 0]);
        assert_eq!(
            encode::iotlb(IotlbGranularity::Domain(3)),
            [0x22 | (3 << 16), 0]
        );
        assert_eq!(
            encode::iotlb(IotlbGranularity::Page {
                did: 3,
                addr: 0x12_3000,
                am: 2,
                ih: true
            }),
            [0x32 | (3 << 16), 0x12_3000 | (1 << 6) | 2]
        );
        assert_eq!(
            encode::pasid_cache(5, 0x12345, PasidCacheGranularity::Pasid),
            [0x17 | (5 << 16) | (0x12345 << 32), 0]
        );
        assert_eq!(
            encode::pasid_cache(5, 0, PasidCacheGranularity::Domain),
            [0x07 | (5 << 16), 0]
        );
        assert_eq!(
            encode::pasid_cache(0, 0, PasidCacheGranularity::Global),
            [0x37, 0]
        );
        assert_eq!(
            encode::pasid_iotlb(5, 9, PasidIotlbGranularity::Pasid),
            [0x26 | (5 << 16) | (9 << 32), 0]
        );
        assert_eq!(
            encode::pasid_iotlb(
                5,
                9,
                PasidIotlbGranularity::Page {
                    addr: 0x4000,
                    am: 1,
                    ih: false
                }
            ),
            [0x36 | (5 << 16) | (9 << 32), 0x4000 | 1]
        );
        assert_eq!(
            encode::wait(true, true, false, 0xdead_beef, 0x1000),
            [0x35 | (0xdead_beef << 32), 0x1000]
        );
        assert_eq!(encode::wait(false, false, true, 0, 0), [0x45, 0]);
    }

    proptest::proptest! {
        /// Whatever an encoder writes decodes back to what it was given.
        #[test]
        fn encoders_round_trip_through_the_decoder(
            d in proptest::prelude::any::<u16>(),
            sid in proptest::prelude::any::<u16>(),
            fm in 0u8..4,
            pasid in 0u32..(1 << 20),
            page in 0u64..(1 << 52),
            am in 0u8..64,
            ih in proptest::prelude::any::<bool>(),
            flags in 0u8..8,
            data in proptest::prelude::any::<u32>(),
            addr in proptest::prelude::any::<u64>(),
        ) {
            let addr12 = page << 12;
            let cases = [
                (encode::context_cache(ContextGranularity::Global),
                 Descriptor::ContextCache(ContextGranularity::Global)),
                (encode::context_cache(ContextGranularity::Domain(d)),
                 Descriptor::ContextCache(ContextGranularity::Domain(d))),
                (encode::context_cache(ContextGranularity::Device { did: d, sid, fm }),
                 Descriptor::ContextCache(ContextGranularity::Device { did: d, sid, fm })),
                (encode::iotlb(IotlbGranularity::Global),
                 Descriptor::Iotlb(IotlbGranularity::Global)),
                (encode::iotlb(IotlbGranularity::Domain(d)),
                 Descriptor::Iotlb(IotlbGranularity::Domain(d))),
                (encode::iotlb(IotlbGranularity::Page { did: d, addr: addr12, am, ih }),
                 Descriptor::Iotlb(IotlbGranularity::Page { did: d, addr: addr12, am, ih })),
                (encode::pasid_cache(d, pasid, PasidCacheGranularity::Pasid),
                 Descriptor::PasidCache { did: d, pasid, granularity: PasidCacheGranularity::Pasid }),
                (encode::pasid_iotlb(d, pasid, PasidIotlbGranularity::Page { addr: addr12, am, ih }),
                 Descriptor::PasidIotlb {
                     did: d,
                     pasid,
                     granularity: PasidIotlbGranularity::Page { addr: addr12, am, ih },
                 }),
                (encode::wait(flags & 1 != 0, flags & 2 != 0, flags & 4 != 0, data, addr),
                 Descriptor::Wait {
                     interrupt: flags & 1 != 0,
                     status_write: flags & 2 != 0,
                     fence: flags & 4 != 0,
                     data,
                     addr: addr & !3,
                 }),
            ];
            for (words, want) in cases {
                proptest::prop_assert_eq!(decode(&words, SM), Ok(want));
            }
        }
    }

    #[test]
    fn context_cache_descriptors() {
        assert_eq!(
            decode(&[0x11, 0], LEGACY),
            Ok(Descriptor::ContextCache(ContextGranularity::Global))
        );
        assert_eq!(
            decode(&[0x21 | (7 << 16), 0], LEGACY),
            Ok(Descriptor::ContextCache(ContextGranularity::Domain(7)))
        );
        let dev = 0x31 | (7 << 16) | (0x0108 << 32) | (2 << 48);
        assert_eq!(
            decode(&[dev, 0], LEGACY),
            Ok(Descriptor::ContextCache(ContextGranularity::Device {
                did: 7,
                sid: 0x0108,
                fm: 2
            }))
        );
        assert_eq!(decode(&[0x01, 0], LEGACY), Err(Iqei::Reserved)); // G = 00b
        assert_eq!(decode(&[0x11 | (1 << 50), 0], LEGACY), Err(Iqei::Reserved));
        assert_eq!(decode(&[0x11, 1], LEGACY), Err(Iqei::Reserved));
        assert_eq!(decode(&[0x11, 0, 0, 1], LEGACY), Err(Iqei::Reserved));
        assert!(decode(&[0x11, 0, 0, 0], LEGACY).is_ok());
    }

    #[test]
    fn iotlb_descriptors() {
        assert_eq!(
            decode(&[0x12, 0], LEGACY),
            Ok(Descriptor::Iotlb(IotlbGranularity::Global))
        );
        // DR and DW are allowed.
        assert_eq!(
            decode(&[0x22 | 0xc0 | (3 << 16), 0], LEGACY),
            Ok(Descriptor::Iotlb(IotlbGranularity::Domain(3)))
        );
        let q1 = 0x4000_0000 | (1 << 6) | 4;
        assert_eq!(
            decode(&[0x32 | (3 << 16), q1], LEGACY),
            Ok(Descriptor::Iotlb(IotlbGranularity::Page {
                did: 3,
                addr: 0x4000_0000,
                am: 4,
                ih: true
            }))
        );
        assert_eq!(decode(&[0x32, 0x80], LEGACY), Err(Iqei::Reserved));
        assert_eq!(decode(&[0x12 | (1 << 32), 0], LEGACY), Err(Iqei::Reserved));
    }

    #[test]
    fn wait_descriptor() {
        let q0 = 0x5 | (1 << 4) | (1 << 5) | (1 << 6) | (0xcafe_f00d << 32);
        assert_eq!(
            decode(&[q0, 0x1234_5678], LEGACY),
            Ok(Descriptor::Wait {
                interrupt: true,
                status_write: true,
                fence: true,
                data: 0xcafe_f00d,
                addr: 0x1234_5678
            })
        );
        assert_eq!(decode(&[q0, 0x1234_5679], LEGACY), Err(Iqei::Reserved));
        assert_eq!(decode(&[q0 | (1 << 7), 0], LEGACY), Err(Iqei::Reserved));
    }

    #[test]
    fn pasid_descriptors_and_types() {
        let piotlb = 0x36 | (5 << 16) | (0x42 << 32);
        assert_eq!(
            decode(&[piotlb, 0x9000 | 1], SM),
            Ok(Descriptor::PasidIotlb {
                did: 5,
                pasid: 0x42,
                granularity: PasidIotlbGranularity::Page {
                    addr: 0x9000,
                    am: 1,
                    ih: false
                }
            })
        );
        // Not a descriptor type of legacy mode (§6.5.2's table of types per mode): IQEI 3.
        assert_eq!(decode(&[piotlb, 0], LEGACY), Err(Iqei::InvalidType));
        assert_eq!(decode(&[0x17, 0], LEGACY), Err(Iqei::InvalidType));
        assert_eq!(decode(&[0x06, 0], SM), Err(Iqei::Reserved));
        let pc = 0x17 | (5 << 16) | (0x42 << 32);
        assert_eq!(
            decode(&[pc, 0], SM),
            Ok(Descriptor::PasidCache {
                did: 5,
                pasid: 0x42,
                granularity: PasidCacheGranularity::Pasid
            })
        );
        assert_eq!(decode(&[0x27, 0], SM), Err(Iqei::Reserved));
        // Type 4 (interrupt entry cache) and unknown types are invalid.
        assert_eq!(decode(&[0x04, 0], SM), Err(Iqei::InvalidType));
        assert_eq!(decode(&[0x0f, 0], SM), Err(Iqei::InvalidType));
        assert_eq!(decode(&[1 << 9, 0], SM), Err(Iqei::InvalidType)); // type 0x10
        // Device-TLB descriptors need ECAP.DT.
        let no_dt = DecodeCtx {
            device_tlb: false,
            ..SM
        };
        assert_eq!(
            decode(&[0x3 | (0x10 << 32), 0], no_dt),
            Err(Iqei::InvalidType)
        );
        assert_eq!(
            decode(&[0x3 | (0x10 << 32), 0], SM),
            Ok(Descriptor::DeviceTlb { sid: 0x10 })
        );
    }
}

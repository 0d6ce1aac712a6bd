//! Invalidation descriptors (VT-d spec rev 4.1, §6.5.2 "Queued Invalidation Interface").
//!
//! Every descriptor has its type in bits 3:0 and 11:9 of the first qword. A 128-bit queue holds
//! two-qword descriptors; a 256-bit queue (IQA.DW = 1) four-qword ones, whose upper 128 bits are
//! reserved for all the descriptor types modelled here.

use super::regs::{IQEI_INVALID_TTM, IQEI_INVALID_TYPE, IQEI_RESERVED};
use super::structs::bits;

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

/// Decodes the descriptor in `qw` (two or four qwords). On error returns the IQEI value
/// (IQERCD_REG.IQEI, §10.4.30) to report.
pub fn decode(qw: &[u64], ctx: DecodeCtx) -> Result<Descriptor, u64> {
    let q0 = qw.first().copied().unwrap_or(0);
    let q1 = qw.get(1).copied().unwrap_or(0);
    if qw.iter().skip(2).any(|&q| q != 0) {
        return Err(IQEI_RESERVED);
    }
    let ty = bits(q0, 3, 0) | (bits(q0, 11, 9) << 4);
    let reserved = |cond: bool| if cond { Err(IQEI_RESERVED) } else { Ok(()) };
    match ty {
        TYPE_CONTEXT_CACHE => {
            reserved(bits(q0, 8, 6) != 0 || bits(q0, 15, 12) != 0 || q0 >> 50 != 0 || q1 != 0)?;
            let did = bits(q0, 31, 16) as u16;
            let g = match bits(q0, 5, 4) {
                1 => ContextGranularity::Global,
                2 => ContextGranularity::Domain(did),
                3 => ContextGranularity::Device {
                    did,
                    sid: bits(q0, 47, 32) as u16,
                    fm: bits(q0, 49, 48) as u8,
                },
                _ => return Err(IQEI_RESERVED),
            };
            Ok(Descriptor::ContextCache(g))
        }
        TYPE_IOTLB => {
            reserved(q0 & (1 << 8) != 0 || bits(q0, 15, 12) != 0 || q0 >> 32 != 0)?;
            reserved(bits(q1, 11, 7) != 0)?;
            let did = bits(q0, 31, 16) as u16;
            let g = match bits(q0, 5, 4) {
                1 => IotlbGranularity::Global,
                2 => IotlbGranularity::Domain(did),
                3 => IotlbGranularity::Page {
                    did,
                    addr: q1 & !0xfff,
                    am: bits(q1, 5, 0) as u8,
                    ih: q1 & (1 << 6) != 0,
                },
                _ => return Err(IQEI_RESERVED),
            };
            Ok(Descriptor::Iotlb(g))
        }
        TYPE_DEVICE_TLB if ctx.device_tlb => {
            reserved(bits(q0, 8, 4) != 0 || bits(q0, 31, 21) != 0 || bits(q0, 51, 48) != 0)?;
            reserved(bits(q1, 11, 1) != 0)?;
            Ok(Descriptor::DeviceTlb {
                sid: bits(q0, 47, 32) as u16,
            })
        }
        TYPE_WAIT => {
            // PD (bit 7) needs page-request support, which the model does not offer.
            reserved(bits(q0, 8, 7) != 0 || bits(q0, 31, 12) != 0 || q1 & 3 != 0)?;
            Ok(Descriptor::Wait {
                interrupt: q0 & (1 << 4) != 0,
                status_write: q0 & (1 << 5) != 0,
                fence: q0 & (1 << 6) != 0,
                data: (q0 >> 32) as u32,
                addr: q1 & !3,
            })
        }
        TYPE_PASID_IOTLB | TYPE_PASID_CACHE | TYPE_PASID_DEVICE_TLB if ctx.pasid => {
            if !ctx.scalable {
                return Err(IQEI_INVALID_TTM);
            }
            let did = bits(q0, 31, 16) as u16;
            let pasid = bits(q0, 51, 32) as u32;
            match ty {
                TYPE_PASID_IOTLB => {
                    reserved(bits(q0, 8, 6) != 0 || bits(q0, 15, 12) != 0 || q0 >> 52 != 0)?;
                    reserved(bits(q1, 11, 7) != 0)?;
                    let granularity = match bits(q0, 5, 4) {
                        2 => PasidIotlbGranularity::Pasid,
                        3 => PasidIotlbGranularity::Page {
                            addr: q1 & !0xfff,
                            am: bits(q1, 5, 0) as u8,
                            ih: q1 & (1 << 6) != 0,
                        },
                        _ => return Err(IQEI_RESERVED),
                    };
                    Ok(Descriptor::PasidIotlb {
                        did,
                        pasid,
                        granularity,
                    })
                }
                TYPE_PASID_CACHE => {
                    reserved(
                        bits(q0, 8, 6) != 0 || bits(q0, 15, 12) != 0 || q0 >> 52 != 0 || q1 != 0,
                    )?;
                    let granularity = match bits(q0, 5, 4) {
                        0 => PasidCacheGranularity::Domain,
                        1 => PasidCacheGranularity::Pasid,
                        3 => PasidCacheGranularity::Global,
                        _ => return Err(IQEI_RESERVED),
                    };
                    Ok(Descriptor::PasidCache {
                        did,
                        pasid,
                        granularity,
                    })
                }
                _ => {
                    if !ctx.device_tlb {
                        return Err(IQEI_INVALID_TYPE);
                    }
                    reserved(bits(q1, 10, 1) != 0)?;
                    Ok(Descriptor::PasidDeviceTlb {
                        sid: bits(q0, 31, 16) as u16,
                    })
                }
            }
        }
        // Interrupt-entry-cache invalidation needs interrupt remapping (ECAP.IR = 0 here);
        // device-TLB descriptors need ECAP.DT; other encodings are undefined.
        _ => Err(IQEI_INVALID_TYPE),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vtd::regs::IQEI_INVALID_TYPE;

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
        assert_eq!(decode(&[0x01, 0], LEGACY), Err(IQEI_RESERVED)); // G = 00b
        assert_eq!(decode(&[0x11 | (1 << 50), 0], LEGACY), Err(IQEI_RESERVED));
        assert_eq!(decode(&[0x11, 1], LEGACY), Err(IQEI_RESERVED));
        assert_eq!(decode(&[0x11, 0, 0, 1], LEGACY), Err(IQEI_RESERVED));
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
        assert_eq!(decode(&[0x32, 0x80], LEGACY), Err(IQEI_RESERVED));
        assert_eq!(decode(&[0x12 | (1 << 32), 0], LEGACY), Err(IQEI_RESERVED));
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
        assert_eq!(decode(&[q0, 0x1234_5679], LEGACY), Err(IQEI_RESERVED));
        assert_eq!(decode(&[q0 | (1 << 7), 0], LEGACY), Err(IQEI_RESERVED));
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
        assert_eq!(decode(&[piotlb, 0], LEGACY), Err(IQEI_INVALID_TTM));
        assert_eq!(decode(&[0x06, 0], SM), Err(IQEI_RESERVED));
        let pc = 0x17 | (5 << 16) | (0x42 << 32);
        assert_eq!(
            decode(&[pc, 0], SM),
            Ok(Descriptor::PasidCache {
                did: 5,
                pasid: 0x42,
                granularity: PasidCacheGranularity::Pasid
            })
        );
        assert_eq!(decode(&[0x27, 0], SM), Err(IQEI_RESERVED));
        // Type 4 (interrupt entry cache) and unknown types are invalid.
        assert_eq!(decode(&[0x04, 0], SM), Err(IQEI_INVALID_TYPE));
        assert_eq!(decode(&[0x0f, 0], SM), Err(IQEI_INVALID_TYPE));
        assert_eq!(decode(&[1 << 9, 0], SM), Err(IQEI_INVALID_TYPE)); // type 0x10
        // Device-TLB descriptors need ECAP.DT.
        let no_dt = DecodeCtx {
            device_tlb: false,
            ..SM
        };
        assert_eq!(
            decode(&[0x3 | (0x10 << 32), 0], no_dt),
            Err(IQEI_INVALID_TYPE)
        );
        assert_eq!(
            decode(&[0x3 | (0x10 << 32), 0], SM),
            Ok(Descriptor::DeviceTlb { sid: 0x10 })
        );
    }
}

//! The virtio-iommu wire format (virtio 1.3 §5.13): feature bits, the configuration layout,
//! requests, statuses, PROBE properties and fault events.
//!
//! Every structure is little-endian and decoded from bytes by hand, so that no guest-controlled
//! content is ever reinterpreted in place.

use iommu_emulator::core::{FaultReason, MapFlags, ResvKind, ResvRegion};

/// The virtio device id of virtio-iommu (virtio 1.3 §5.13.1).
pub const VIRTIO_ID_IOMMU: u32 = 23;

/// Index of the request queue (virtio 1.3 §5.13.2).
pub const REQUEST_QUEUE: u16 = 0;
/// Index of the event queue (virtio 1.3 §5.13.2).
pub const EVENT_QUEUE: u16 = 1;
/// Number of virtqueues.
pub const NUM_QUEUES: usize = 2;

// Feature bits (virtio 1.3 §5.13.3).
/// `VIRTIO_IOMMU_F_INPUT_RANGE`: `input_range` is valid.
pub const VIRTIO_IOMMU_F_INPUT_RANGE: u32 = 0;
/// `VIRTIO_IOMMU_F_DOMAIN_RANGE`: `domain_range` is valid.
pub const VIRTIO_IOMMU_F_DOMAIN_RANGE: u32 = 1;
/// `VIRTIO_IOMMU_F_MAP_UNMAP`: MAP and UNMAP requests are available.
pub const VIRTIO_IOMMU_F_MAP_UNMAP: u32 = 2;
/// `VIRTIO_IOMMU_F_BYPASS` (legacy, superseded by BYPASS_CONFIG; not offered).
pub const VIRTIO_IOMMU_F_BYPASS: u32 = 3;
/// `VIRTIO_IOMMU_F_PROBE`: the PROBE request is available.
pub const VIRTIO_IOMMU_F_PROBE: u32 = 4;
/// `VIRTIO_IOMMU_F_MMIO`: the `VIRTIO_IOMMU_MAP_F_MMIO` flag is available.
pub const VIRTIO_IOMMU_F_MMIO: u32 = 5;
/// `VIRTIO_IOMMU_F_BYPASS_CONFIG`: `bypass` is valid and `ATTACH_F_BYPASS` is available.
pub const VIRTIO_IOMMU_F_BYPASS_CONFIG: u32 = 6;

// Request types (virtio 1.3 §5.13.6).
/// `VIRTIO_IOMMU_T_ATTACH`.
pub const VIRTIO_IOMMU_T_ATTACH: u8 = 1;
/// `VIRTIO_IOMMU_T_DETACH`.
pub const VIRTIO_IOMMU_T_DETACH: u8 = 2;
/// `VIRTIO_IOMMU_T_MAP`.
pub const VIRTIO_IOMMU_T_MAP: u8 = 3;
/// `VIRTIO_IOMMU_T_UNMAP`.
pub const VIRTIO_IOMMU_T_UNMAP: u8 = 4;
/// `VIRTIO_IOMMU_T_PROBE`.
pub const VIRTIO_IOMMU_T_PROBE: u8 = 5;

/// `VIRTIO_IOMMU_ATTACH_F_BYPASS` (virtio 1.3 §5.13.6.3).
pub const VIRTIO_IOMMU_ATTACH_F_BYPASS: u32 = 1 << 0;

/// `VIRTIO_IOMMU_MAP_F_READ` (virtio 1.3 §5.13.6.5).
pub const VIRTIO_IOMMU_MAP_F_READ: u32 = 1 << 0;
/// `VIRTIO_IOMMU_MAP_F_WRITE`.
pub const VIRTIO_IOMMU_MAP_F_WRITE: u32 = 1 << 1;
/// `VIRTIO_IOMMU_MAP_F_MMIO`.
pub const VIRTIO_IOMMU_MAP_F_MMIO: u32 = 1 << 2;

/// `VIRTIO_IOMMU_PROBE_T_NONE`.
pub const VIRTIO_IOMMU_PROBE_T_NONE: u16 = 0;
/// `VIRTIO_IOMMU_PROBE_T_RESV_MEM` (virtio 1.3 §5.13.6.8.1).
pub const VIRTIO_IOMMU_PROBE_T_RESV_MEM: u16 = 1;
/// `VIRTIO_IOMMU_RESV_MEM_T_RESERVED`.
pub const VIRTIO_IOMMU_RESV_MEM_T_RESERVED: u8 = 0;
/// `VIRTIO_IOMMU_RESV_MEM_T_MSI`.
pub const VIRTIO_IOMMU_RESV_MEM_T_MSI: u8 = 1;

/// `VIRTIO_IOMMU_FAULT_R_UNKNOWN` (virtio 1.3 §5.13.6.9).
pub const VIRTIO_IOMMU_FAULT_R_UNKNOWN: u8 = 0;
/// `VIRTIO_IOMMU_FAULT_R_DOMAIN`.
pub const VIRTIO_IOMMU_FAULT_R_DOMAIN: u8 = 1;
/// `VIRTIO_IOMMU_FAULT_R_MAPPING`.
pub const VIRTIO_IOMMU_FAULT_R_MAPPING: u8 = 2;
/// `VIRTIO_IOMMU_FAULT_F_READ`.
pub const VIRTIO_IOMMU_FAULT_F_READ: u32 = 1 << 0;
/// `VIRTIO_IOMMU_FAULT_F_WRITE`.
pub const VIRTIO_IOMMU_FAULT_F_WRITE: u32 = 1 << 1;
/// `VIRTIO_IOMMU_FAULT_F_EXEC`.
pub const VIRTIO_IOMMU_FAULT_F_EXEC: u32 = 1 << 2;
/// `VIRTIO_IOMMU_FAULT_F_ADDRESS`.
pub const VIRTIO_IOMMU_FAULT_F_ADDRESS: u32 = 1 << 8;

/// Size of `struct virtio_iommu_req_head` and of `struct virtio_iommu_req_tail`.
pub const HEAD_LEN: usize = 4;
/// Size of `struct virtio_iommu_req_tail`.
pub const TAIL_LEN: usize = 4;
/// Size of `struct virtio_iommu_config` (virtio 1.3 §5.13.4).
pub const CONFIG_LEN: usize = 40;
/// Offset of `bypass` in `struct virtio_iommu_config`.
pub const CONFIG_BYPASS_OFFSET: usize = 36;
/// Size of `struct virtio_iommu_fault`.
pub const FAULT_LEN: usize = 24;
/// Size of `struct virtio_iommu_probe_resv_mem`, header included.
pub const RESV_MEM_LEN: usize = 24;

/// A request status (virtio 1.3 §5.13.6, `VIRTIO_IOMMU_S_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Status {
    /// `VIRTIO_IOMMU_S_OK`.
    Ok = 0,
    /// `VIRTIO_IOMMU_S_IOERR`: virtio communication error.
    IoErr = 1,
    /// `VIRTIO_IOMMU_S_UNSUPP`: unsupported request.
    Unsupp = 2,
    /// `VIRTIO_IOMMU_S_DEVERR`: internal device error.
    DevErr = 3,
    /// `VIRTIO_IOMMU_S_INVAL`: invalid parameters.
    Inval = 4,
    /// `VIRTIO_IOMMU_S_RANGE`: out-of-range parameters.
    Range = 5,
    /// `VIRTIO_IOMMU_S_NOENT`: entry not found.
    NoEnt = 6,
    /// `VIRTIO_IOMMU_S_FAULT`: bad address.
    Fault = 7,
    /// `VIRTIO_IOMMU_S_NOMEM`: insufficient resources.
    NoMem = 8,
}

impl Status {
    /// Every status, in code order.
    pub const ALL: [Status; 9] = [
        Status::Ok,
        Status::IoErr,
        Status::Unsupp,
        Status::DevErr,
        Status::Inval,
        Status::Range,
        Status::NoEnt,
        Status::Fault,
        Status::NoMem,
    ];

    /// The spec's name without the prefix (`"OK"`, `"INVAL"`...).
    pub fn name(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::IoErr => "IOERR",
            Status::Unsupp => "UNSUPP",
            Status::DevErr => "DEVERR",
            Status::Inval => "INVAL",
            Status::Range => "RANGE",
            Status::NoEnt => "NOENT",
            Status::Fault => "FAULT",
            Status::NoMem => "NOMEM",
        }
    }
}

/// The request types this device knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RequestType {
    /// ATTACH.
    Attach,
    /// DETACH.
    Detach,
    /// MAP.
    Map,
    /// UNMAP.
    Unmap,
    /// PROBE.
    Probe,
}

impl RequestType {
    /// Every request type.
    pub const ALL: [RequestType; 5] = [
        RequestType::Attach,
        RequestType::Detach,
        RequestType::Map,
        RequestType::Unmap,
        RequestType::Probe,
    ];

    /// Decodes the `type` byte of a request head.
    pub fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            VIRTIO_IOMMU_T_ATTACH => Self::Attach,
            VIRTIO_IOMMU_T_DETACH => Self::Detach,
            VIRTIO_IOMMU_T_MAP => Self::Map,
            VIRTIO_IOMMU_T_UNMAP => Self::Unmap,
            VIRTIO_IOMMU_T_PROBE => Self::Probe,
            _ => return None,
        })
    }

    /// Size of the device-readable part after the head.
    pub fn body_len(self) -> usize {
        match self {
            // le32 domain, le32 endpoint, le32 flags, u8 reserved[4] (§5.13.6.3)
            Self::Attach => 16,
            // le32 domain, le32 endpoint, u8 reserved[8] (§5.13.6.4)
            Self::Detach => 16,
            // le32 domain, le64 virt_start, le64 virt_end, le64 phys_start, le32 flags (§5.13.6.5)
            Self::Map => 32,
            // le32 domain, le64 virt_start, le64 virt_end, u8 reserved[4] (§5.13.6.6)
            Self::Unmap => 24,
            // le32 endpoint, u8 reserved[64] (§5.13.6.7)
            Self::Probe => 68,
        }
    }

    /// Lower-case name for statistics.
    pub fn name(self) -> &'static str {
        match self {
            Self::Attach => "attach",
            Self::Detach => "detach",
            Self::Map => "map",
            Self::Unmap => "unmap",
            Self::Probe => "probe",
        }
    }
}

fn le32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn le64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// A decoded request body. Decoders take exactly `body_len()` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// `struct virtio_iommu_req_attach` (virtio 1.3 §5.13.6.3).
    Attach {
        /// `domain`.
        domain: u32,
        /// `endpoint`.
        endpoint: u32,
        /// `flags`.
        flags: u32,
        /// `reserved[4]`, as a little-endian word.
        reserved: u32,
    },
    /// `struct virtio_iommu_req_detach` (virtio 1.3 §5.13.6.4).
    Detach {
        /// `domain`.
        domain: u32,
        /// `endpoint`.
        endpoint: u32,
    },
    /// `struct virtio_iommu_req_map` (virtio 1.3 §5.13.6.5).
    Map {
        /// `domain`.
        domain: u32,
        /// `virt_start`.
        virt_start: u64,
        /// `virt_end` (inclusive).
        virt_end: u64,
        /// `phys_start`.
        phys_start: u64,
        /// `flags`.
        flags: u32,
    },
    /// `struct virtio_iommu_req_unmap` (virtio 1.3 §5.13.6.6).
    Unmap {
        /// `domain`.
        domain: u32,
        /// `virt_start`.
        virt_start: u64,
        /// `virt_end` (inclusive).
        virt_end: u64,
        /// `reserved[4]`, as a little-endian word.
        reserved: u32,
    },
    /// `struct virtio_iommu_req_probe`, device-readable part (virtio 1.3 §5.13.6.7).
    Probe {
        /// `endpoint`.
        endpoint: u32,
    },
}

impl Request {
    /// Decodes the body of a `ty` request. `body` must be exactly `ty.body_len()` bytes.
    pub fn decode(ty: RequestType, body: &[u8]) -> Option<Self> {
        if body.len() != ty.body_len() {
            return None;
        }
        Some(match ty {
            RequestType::Attach => Self::Attach {
                domain: le32(body, 0),
                endpoint: le32(body, 4),
                flags: le32(body, 8),
                reserved: le32(body, 12),
            },
            // DETACH's reserved bytes are ignored (§5.13.6.4: "The device MUST ignore reserved").
            RequestType::Detach => Self::Detach {
                domain: le32(body, 0),
                endpoint: le32(body, 4),
            },
            RequestType::Map => Self::Map {
                domain: le32(body, 0),
                virt_start: le64(body, 4),
                virt_end: le64(body, 12),
                phys_start: le64(body, 20),
                flags: le32(body, 28),
            },
            RequestType::Unmap => Self::Unmap {
                domain: le32(body, 0),
                virt_start: le64(body, 4),
                virt_end: le64(body, 12),
                reserved: le32(body, 20),
            },
            // PROBE's reserved bytes are ignored (§5.13.6.7: "The device MUST ignore reserved").
            RequestType::Probe => Self::Probe {
                endpoint: le32(body, 0),
            },
        })
    }
}

/// Decodes MAP flags; `None` if an unknown bit is set, or MMIO without `mmio_allowed`.
pub fn decode_map_flags(flags: u32, mmio_allowed: bool) -> Option<MapFlags> {
    let known = VIRTIO_IOMMU_MAP_F_READ | VIRTIO_IOMMU_MAP_F_WRITE | VIRTIO_IOMMU_MAP_F_MMIO;
    if flags & !known != 0 || (flags & VIRTIO_IOMMU_MAP_F_MMIO != 0 && !mmio_allowed) {
        return None;
    }
    Some(MapFlags {
        read: flags & VIRTIO_IOMMU_MAP_F_READ != 0,
        write: flags & VIRTIO_IOMMU_MAP_F_WRITE != 0,
        mmio: flags & VIRTIO_IOMMU_MAP_F_MMIO != 0,
    })
}

/// The device configuration (virtio 1.3 §5.13.4, `struct virtio_iommu_config`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConfigSpace {
    /// `page_size_mask`.
    pub page_size_mask: u64,
    /// `input_range.start`, `input_range.end`.
    pub input_range: (u64, u64),
    /// `domain_range.start`, `domain_range.end`.
    pub domain_range: (u32, u32),
    /// `probe_size`.
    pub probe_size: u32,
    /// `bypass`.
    pub bypass: bool,
}

impl ConfigSpace {
    /// Encodes the 40-byte layout: page_size_mask at 0, input_range at 8 and 16, domain_range
    /// at 24 and 28, probe_size at 32, bypass at 36, reserved[3] at 37.
    pub fn encode(&self) -> [u8; CONFIG_LEN] {
        let mut b = [0u8; CONFIG_LEN];
        b[0..8].copy_from_slice(&self.page_size_mask.to_le_bytes());
        b[8..16].copy_from_slice(&self.input_range.0.to_le_bytes());
        b[16..24].copy_from_slice(&self.input_range.1.to_le_bytes());
        b[24..28].copy_from_slice(&self.domain_range.0.to_le_bytes());
        b[28..32].copy_from_slice(&self.domain_range.1.to_le_bytes());
        b[32..36].copy_from_slice(&self.probe_size.to_le_bytes());
        b[CONFIG_BYPASS_OFFSET] = u8::from(self.bypass);
        b
    }
}

/// Encodes a RESV_MEM property (virtio 1.3 §5.13.6.8.1): `le16 type`, `le16 length` (size
/// without the 4-byte header, so 20), `u8 subtype`, `u8 reserved[3]`, `le64 start`, `le64 end`.
pub fn encode_resv_mem(r: &ResvRegion) -> [u8; RESV_MEM_LEN] {
    let mut b = [0u8; RESV_MEM_LEN];
    b[0..2].copy_from_slice(&VIRTIO_IOMMU_PROBE_T_RESV_MEM.to_le_bytes());
    b[2..4].copy_from_slice(&((RESV_MEM_LEN - 4) as u16).to_le_bytes());
    b[4] = match r.kind {
        ResvKind::Reserved => VIRTIO_IOMMU_RESV_MEM_T_RESERVED,
        ResvKind::Msi => VIRTIO_IOMMU_RESV_MEM_T_MSI,
    };
    b[8..16].copy_from_slice(&r.start.to_le_bytes());
    b[16..24].copy_from_slice(&r.end.to_le_bytes());
    b
}

/// Encodes `struct virtio_iommu_fault` (virtio 1.3 §5.13.6.9): `u8 reason`, `u8 reserved[3]`,
/// `le32 flags`, `le32 endpoint`, `le32 reserved1`, `le64 address`.
pub fn encode_fault(
    reason: FaultReason,
    flags: u32,
    endpoint: u32,
    address: u64,
) -> [u8; FAULT_LEN] {
    let mut b = [0u8; FAULT_LEN];
    b[0] = match reason {
        FaultReason::Unknown => VIRTIO_IOMMU_FAULT_R_UNKNOWN,
        FaultReason::Domain => VIRTIO_IOMMU_FAULT_R_DOMAIN,
        FaultReason::Mapping => VIRTIO_IOMMU_FAULT_R_MAPPING,
    };
    b[4..8].copy_from_slice(&flags.to_le_bytes());
    b[8..12].copy_from_slice(&endpoint.to_le_bytes());
    b[16..24].copy_from_slice(&address.to_le_bytes());
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_decoders_read_hand_built_bodies() {
        let mut attach = Vec::new();
        attach.extend_from_slice(&7u32.to_le_bytes());
        attach.extend_from_slice(&0x0108u32.to_le_bytes());
        attach.extend_from_slice(&1u32.to_le_bytes());
        attach.extend_from_slice(&[0, 0, 0, 9]);
        assert_eq!(
            Request::decode(RequestType::Attach, &attach),
            Some(Request::Attach {
                domain: 7,
                endpoint: 0x108,
                flags: 1,
                reserved: 9 << 24
            })
        );
        let mut map = Vec::new();
        map.extend_from_slice(&3u32.to_le_bytes());
        map.extend_from_slice(&0x1000u64.to_le_bytes());
        map.extend_from_slice(&0x1fffu64.to_le_bytes());
        map.extend_from_slice(&0xa000u64.to_le_bytes());
        map.extend_from_slice(&3u32.to_le_bytes());
        assert_eq!(
            Request::decode(RequestType::Map, &map),
            Some(Request::Map {
                domain: 3,
                virt_start: 0x1000,
                virt_end: 0x1fff,
                phys_start: 0xa000,
                flags: 3
            })
        );
        let mut unmap = map[..20].to_vec();
        unmap.extend_from_slice(&[1, 0, 0, 0]);
        assert_eq!(
            Request::decode(RequestType::Unmap, &unmap),
            Some(Request::Unmap {
                domain: 3,
                virt_start: 0x1000,
                virt_end: 0x1fff,
                reserved: 1
            })
        );
        let mut detach = vec![0u8; 16];
        detach[0] = 2;
        detach[4] = 0x10;
        detach[8] = 0xff; // reserved: ignored
        assert_eq!(
            Request::decode(RequestType::Detach, &detach),
            Some(Request::Detach {
                domain: 2,
                endpoint: 0x10
            })
        );
        let mut probe = vec![0xffu8; 68];
        probe[0..4].copy_from_slice(&0x20u32.to_le_bytes());
        assert_eq!(
            Request::decode(RequestType::Probe, &probe),
            Some(Request::Probe { endpoint: 0x20 })
        );
        assert_eq!(Request::decode(RequestType::Probe, &probe[..67]), None);
        assert_eq!(Request::decode(RequestType::Map, &attach), None);
    }

    #[test]
    fn type_codes_and_sizes_follow_the_spec() {
        for (code, ty, len) in [
            (1, RequestType::Attach, 20),
            (2, RequestType::Detach, 20),
            (3, RequestType::Map, 36),
            (4, RequestType::Unmap, 28),
            (5, RequestType::Probe, 72),
        ] {
            assert_eq!(RequestType::from_code(code), Some(ty));
            assert_eq!(HEAD_LEN + ty.body_len(), len);
        }
        assert_eq!(RequestType::from_code(0), None);
        assert_eq!(RequestType::from_code(6), None);
        for (i, s) in Status::ALL.iter().enumerate() {
            assert_eq!(*s as usize, i);
        }
    }

    #[test]
    fn map_flags_reject_unknown_bits() {
        assert_eq!(
            decode_map_flags(3, false),
            Some(MapFlags {
                read: true,
                write: true,
                mmio: false
            })
        );
        assert_eq!(decode_map_flags(4, false), None);
        assert_eq!(decode_map_flags(6, true).map(|f| f.mmio), Some(true));
        assert_eq!(decode_map_flags(8, true), None);
        assert_eq!(decode_map_flags(0, false), Some(MapFlags::default()));
    }

    #[test]
    fn config_layout_is_40_bytes_with_fields_in_place() {
        let c = ConfigSpace {
            page_size_mask: 0x1000,
            input_range: (0x10, 0xffff_ffff_ffff),
            domain_range: (1, 0xffff),
            probe_size: 512,
            bypass: true,
        };
        let b = c.encode();
        assert_eq!(b.len(), 40);
        assert_eq!(&b[0..8], &[0, 0x10, 0, 0, 0, 0, 0, 0]);
        assert_eq!(b[8], 0x10);
        assert_eq!(&b[16..24], &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0]);
        assert_eq!(&b[24..32], &[1, 0, 0, 0, 0xff, 0xff, 0, 0]);
        assert_eq!(&b[32..36], &[0, 2, 0, 0]);
        assert_eq!(&b[36..40], &[1, 0, 0, 0]);
    }

    #[test]
    fn resv_mem_and_fault_layouts() {
        let b = encode_resv_mem(&ResvRegion::X86_MSI);
        assert_eq!(&b[0..4], &[1, 0, 20, 0]);
        assert_eq!(&b[4..8], &[1, 0, 0, 0]);
        assert_eq!(&b[8..16], &0xfee0_0000u64.to_le_bytes());
        assert_eq!(&b[16..24], &0xfeef_ffffu64.to_le_bytes());
        let f = encode_fault(
            FaultReason::Mapping,
            VIRTIO_IOMMU_FAULT_F_WRITE | VIRTIO_IOMMU_FAULT_F_ADDRESS,
            0x08,
            0xdead_b000,
        );
        assert_eq!(&f[0..4], &[2, 0, 0, 0]);
        assert_eq!(&f[4..8], &[2, 1, 0, 0]);
        assert_eq!(&f[8..16], &[8, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&f[16..24], &0xdead_b000u64.to_le_bytes());
    }
}

//! The ACPI VIOT table (Virtual I/O Translation Table) for a virtio-iommu topology.
//!
//! x86 guests learn which endpoints sit behind a virtio-iommu only from this table (Linux
//! `drivers/acpi/viot.c`); QEMU takes it whole through `-acpitable file=PATH`. The layout is
//! the VIOT specification (revision 0 of the table, whose signature ACPI 6.4 §5.2.6 "System
//! Description Table Header", Table 5.6, reserves), §2 "Virtual I/O Translation Table":
//!
//! ```text
//! offset len  field                                           (§2.1 table header)
//!      0  36  ACPI SDT header, signature "VIOT"               (ACPI 6.4 §5.2.6)
//!     36   2  Node count
//!     38   2  Node offset (48: the first node)
//!     40   8  Reserved
//! nodes, each starting with: u8 Type, u8 Reserved, u16 Length  (§2.2 node header)
//!   type 1, PCI range, 24 bytes                                 (§2.3)
//!      4   4  Endpoint start      (endpoint ID of the first BDF)
//!      8   2  PCI segment start
//!     10   2  PCI segment end
//!     12   2  PCI BDF start
//!     14   2  PCI BDF end
//!     16   2  Output node         (offset of the IOMMU node in the table)
//!     18   6  Reserved
//!   type 3, virtio-pci IOMMU, 16 bytes                          (§2.5)
//!      4   2  PCI segment
//!      6   2  PCI BDF number
//!      8   8  Reserved
//! ```
//!
//! An endpoint whose segment and BDF fall inside a PCI range node is translated by the node's
//! output IOMMU, with endpoint ID `endpoint_start + (BDF - BDF start)`; virtio-iommu uses the
//! PCI requester ID as endpoint ID, so ranges are built with `endpoint_start = BDF start`.
//!
//! The bytes come from the `acpi_tables` crate's VIOT builder; [`parse_viot`] decodes a table
//! back (for checks, and for reading a table QEMU built).

use acpi_tables::Aml;
use acpi_tables::viot::{PciDevice, PciRange, VIOT, VirtIoPciIommu};
use std::fmt;
use std::path::Path;
use std::str::FromStr;
use thiserror::Error;

/// Length of the VIOT header (SDT header plus node count, node offset and reserved bytes).
pub const VIOT_HEADER_LEN: usize = 48;
/// Length of the ACPI SDT header (ACPI 6.4 §5.2.6).
pub const SDT_HEADER_LEN: usize = 36;
/// VIOT node type 1: PCI range (§2.3).
pub const NODE_PCI_RANGE: u8 = 1;
/// VIOT node type 2: single MMIO endpoint (§2.4).
pub const NODE_MMIO_ENDPOINT: u8 = 2;
/// VIOT node type 3: virtio-pci IOMMU (§2.5).
pub const NODE_VIRTIO_PCI_IOMMU: u8 = 3;
/// VIOT node type 4: virtio-mmio IOMMU (§2.6).
pub const NODE_VIRTIO_MMIO_IOMMU: u8 = 4;
/// Length of a PCI range node.
pub const PCI_RANGE_LEN: usize = 24;
/// Length of a virtio-pci IOMMU node.
pub const VIRTIO_PCI_IOMMU_LEN: usize = 16;
/// The most endpoint ranges a table may hold (node offsets are 16-bit; this keeps the table
/// far below that limit).
pub const MAX_RANGES: usize = 256;

/// OEM ID written into the SDT header.
pub const OEM_ID: [u8; 6] = *b"RVIOMU";
/// OEM table ID written into the SDT header.
pub const OEM_TABLE_ID: [u8; 8] = *b"VHOSTIOM";
/// OEM revision written into the SDT header.
pub const OEM_REVISION: u32 = 1;

/// What can go wrong building, writing or decoding a VIOT table.
#[derive(Debug, Error)]
pub enum ViotError {
    /// A PCI address did not parse, or its device/function is out of range.
    #[error(transparent)]
    BadBdf(#[from] BdfError),
    /// An endpoint range's first address comes after its last.
    #[error("endpoint range {0} is empty (first after last)")]
    EmptyRange(EndpointRange),
    /// Two endpoint ranges share an endpoint.
    #[error("endpoint ranges {0} and {1} overlap")]
    Overlap(EndpointRange, EndpointRange),
    /// The topology has no endpoint range.
    #[error("topology has no endpoint range")]
    NoEndpoints,
    /// The topology has more ranges than [`MAX_RANGES`].
    #[error("topology has {0} endpoint ranges, at most {MAX_RANGES} are allowed")]
    TooManyRanges(usize),
    /// Writing the table failed.
    #[error("writing VIOT table to {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A table being decoded is malformed.
    #[error("malformed VIOT table: {0}")]
    Malformed(String),
}

pub use iommu_emulator::pci::{BdfError, PciBdf};

/// (segment, BDF) as one ordered key.
fn key(b: &PciBdf) -> u32 {
    (u32::from(b.segment) << 16) | u32::from(b.rid())
}

fn to_acpi(b: PciBdf) -> PciDevice {
    // In range by construction (`PciBdf::new` and `from_rid` check or mask device and
    // function), so the crate's own range assertions hold.
    PciDevice::new(b.segment, b.bus, b.device, b.function)
}

/// An inclusive range of PCI endpoints behind the IOMMU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndpointRange {
    /// First endpoint.
    pub first: PciBdf,
    /// Last endpoint (inclusive).
    pub last: PciBdf,
}

impl EndpointRange {
    /// A range, checked to be non-empty.
    pub fn new(first: PciBdf, last: PciBdf) -> Result<Self, ViotError> {
        let r = EndpointRange { first, last };
        if key(&first) > key(&last) {
            return Err(ViotError::EmptyRange(r));
        }
        Ok(r)
    }

    /// One endpoint.
    pub fn single(bdf: PciBdf) -> Self {
        EndpointRange {
            first: bdf,
            last: bdf,
        }
    }

    /// A whole bus, device 0 function 0 through device 31 function 7.
    pub fn bus(segment: u16, bus: u8) -> Self {
        EndpointRange {
            first: PciBdf::from_rid(segment, u16::from(bus) << 8),
            last: PciBdf::from_rid(segment, (u16::from(bus) << 8) | 0xff),
        }
    }

    /// Whether `bdf` is inside, by the rule Linux applies to a PCI range node (segment within
    /// [start, end] and BDF within [start, end]).
    pub fn contains(&self, bdf: &PciBdf) -> bool {
        (self.first.segment..=self.last.segment).contains(&bdf.segment)
            && (self.first.rid()..=self.last.rid()).contains(&bdf.rid())
    }

    fn overlaps(&self, other: &EndpointRange) -> bool {
        let seg =
            self.first.segment <= other.last.segment && other.first.segment <= self.last.segment;
        let rid = self.first.rid() <= other.last.rid() && other.first.rid() <= self.last.rid();
        seg && rid
    }
}

impl fmt::Display for EndpointRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

impl FromStr for EndpointRange {
    type Err = ViotError;

    /// `BDF` or `BDF-BDF`.
    fn from_str(s: &str) -> Result<Self, ViotError> {
        match s.split_once('-') {
            Some((a, b)) => EndpointRange::new(a.parse()?, b.parse()?),
            None => Ok(EndpointRange::single(s.parse()?)),
        }
    }
}

/// One virtio-iommu on PCI and the endpoint ranges it translates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    /// Where the virtio-iommu PCI function sits.
    pub iommu: PciBdf,
    /// The endpoints behind it.
    pub endpoints: Vec<EndpointRange>,
}

impl Topology {
    /// Checks that the topology is non-empty, bounded and without overlapping ranges.
    pub fn validate(&self) -> Result<(), ViotError> {
        if self.endpoints.is_empty() {
            return Err(ViotError::NoEndpoints);
        }
        if self.endpoints.len() > MAX_RANGES {
            return Err(ViotError::TooManyRanges(self.endpoints.len()));
        }
        for (i, r) in self.endpoints.iter().enumerate() {
            if r.first.segment > r.last.segment || r.first.rid() > r.last.rid() {
                return Err(ViotError::EmptyRange(*r));
            }
            if let Some(o) = self.endpoints[..i].iter().find(|o| o.overlaps(r)) {
                return Err(ViotError::Overlap(*o, *r));
            }
        }
        Ok(())
    }
}

/// Builds the VIOT table for `topo`: the virtio-pci IOMMU node first (at offset 48), then one
/// PCI range node per endpoint range, all pointing at it.
pub fn build_viot(topo: &Topology) -> Result<Vec<u8>, ViotError> {
    topo.validate()?;
    let mut viot = VIOT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    let handle = viot.add_virtio_pci_iommu(VirtIoPciIommu::new(to_acpi(topo.iommu)));
    for r in &topo.endpoints {
        viot.add_pci_range(PciRange::new(to_acpi(r.first), to_acpi(r.last), &handle));
    }
    let mut bytes = Vec::new();
    viot.to_aml_bytes(&mut bytes);
    log::debug!(
        "VIOT: {} bytes, IOMMU at {}, {} endpoint range(s)",
        bytes.len(),
        topo.iommu,
        topo.endpoints.len()
    );
    Ok(bytes)
}

/// Builds the table for `topo` and writes it to `path` (for QEMU's `-acpitable file=`).
pub fn write_viot(path: &Path, topo: &Topology) -> Result<(), ViotError> {
    let bytes = build_viot(topo)?;
    std::fs::write(path, &bytes).map_err(|source| ViotError::Io {
        path: path.display().to_string(),
        source,
    })
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Decodes a VIOT table with one virtio-pci IOMMU and PCI range nodes (the shape QEMU and
/// [`build_viot`] produce). Checks the signature, length, checksum, node bounds and that every
/// range points at the IOMMU node; any other node type is an error.
pub fn parse_viot(b: &[u8]) -> Result<Topology, ViotError> {
    let bad = |m: String| Err(ViotError::Malformed(m));
    if b.len() < VIOT_HEADER_LEN {
        return bad(format!("{} bytes, shorter than the header", b.len()));
    }
    if &b[0..4] != b"VIOT" {
        return bad(format!("signature {:?}", &b[0..4]));
    }
    let len = le32(b, 4) as usize;
    if len != b.len() {
        return bad(format!("header length {len}, table has {} bytes", b.len()));
    }
    if b.iter().fold(0u8, |a, x| a.wrapping_add(*x)) != 0 {
        return bad("checksum does not sum to zero".into());
    }
    let count = le16(b, 36) as usize;
    let mut off = le16(b, 38) as usize;
    if off < VIOT_HEADER_LEN {
        return bad(format!("node offset {off} inside the header"));
    }
    let mut iommu: Option<(usize, PciBdf)> = None;
    let mut ranges: Vec<(usize, EndpointRange)> = Vec::new();
    for i in 0..count {
        if off + 4 > b.len() {
            return bad(format!("node {i} at {off} past the end"));
        }
        let (ty, nlen) = (b[off], le16(b, off + 2) as usize);
        if nlen < 4 || off + nlen > b.len() {
            return bad(format!("node {i} at {off}: length {nlen}"));
        }
        match (ty, nlen) {
            (NODE_VIRTIO_PCI_IOMMU, VIRTIO_PCI_IOMMU_LEN) => {
                if iommu.is_some() {
                    return bad("more than one virtio-pci IOMMU node".into());
                }
                iommu = Some((off, PciBdf::from_rid(le16(b, off + 4), le16(b, off + 6))));
            }
            (NODE_PCI_RANGE, PCI_RANGE_LEN) => {
                let ep_start = le32(b, off + 4);
                let (s0, s1) = (le16(b, off + 8), le16(b, off + 10));
                let (b0, b1) = (le16(b, off + 12), le16(b, off + 14));
                let out = le16(b, off + 16) as usize;
                if ep_start != u32::from(b0) {
                    return bad(format!(
                        "range at {off}: endpoint start {ep_start:#x} is not its BDF start {b0:#x}"
                    ));
                }
                let r = EndpointRange::new(PciBdf::from_rid(s0, b0), PciBdf::from_rid(s1, b1))
                    .map_err(|e| ViotError::Malformed(format!("range at {off}: {e}")))?;
                ranges.push((out, r));
            }
            _ => {
                return bad(format!(
                    "node {i} at {off}: type {ty} length {nlen} not supported"
                ));
            }
        }
        off += nlen;
    }
    if off != b.len() {
        return bad(format!("{} trailing bytes after the nodes", b.len() - off));
    }
    let (iommu_off, iommu) = iommu.ok_or_else(|| ViotError::Malformed("no IOMMU node".into()))?;
    if let Some((out, _)) = ranges.iter().find(|(out, _)| *out != iommu_off) {
        return bad(format!(
            "a range points at offset {out}, the IOMMU is at {iommu_off}"
        ));
    }
    let topo = Topology {
        iommu,
        endpoints: ranges.into_iter().map(|(_, r)| r).collect(),
    };
    topo.validate()
        .map_err(|e| ViotError::Malformed(e.to_string()))?;
    Ok(topo)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn bdf(s: &str) -> PciBdf {
        s.parse().unwrap()
    }

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    /// A table built by hand from the layout in the module comment, field by field.
    fn hand_built(iommu: PciBdf, ranges: &[EndpointRange]) -> Vec<u8> {
        let len = VIOT_HEADER_LEN + VIRTIO_PCI_IOMMU_LEN + PCI_RANGE_LEN * ranges.len();
        let mut b = Vec::new();
        b.extend_from_slice(b"VIOT");
        b.extend_from_slice(&(len as u32).to_le_bytes());
        b.push(0); // revision: patched below to what the crate writes
        b.push(0); // checksum, fixed at the end
        b.extend_from_slice(&OEM_ID);
        b.extend_from_slice(&OEM_TABLE_ID);
        b.extend_from_slice(&OEM_REVISION.to_le_bytes());
        b.extend_from_slice(&[0; 8]); // creator ID and revision: patched below
        assert_eq!(b.len(), SDT_HEADER_LEN);
        b.extend_from_slice(&(1 + ranges.len() as u16).to_le_bytes());
        b.extend_from_slice(&48u16.to_le_bytes());
        b.extend_from_slice(&[0; 8]);
        // virtio-pci IOMMU node at offset 48
        b.extend_from_slice(&[NODE_VIRTIO_PCI_IOMMU, 0]);
        b.extend_from_slice(&16u16.to_le_bytes());
        b.extend_from_slice(&iommu.segment.to_le_bytes());
        b.extend_from_slice(&iommu.rid().to_le_bytes());
        b.extend_from_slice(&[0; 8]);
        for r in ranges {
            b.extend_from_slice(&[NODE_PCI_RANGE, 0]);
            b.extend_from_slice(&24u16.to_le_bytes());
            b.extend_from_slice(&u32::from(r.first.rid()).to_le_bytes());
            b.extend_from_slice(&r.first.segment.to_le_bytes());
            b.extend_from_slice(&r.last.segment.to_le_bytes());
            b.extend_from_slice(&r.first.rid().to_le_bytes());
            b.extend_from_slice(&r.last.rid().to_le_bytes());
            b.extend_from_slice(&48u16.to_le_bytes());
            b.extend_from_slice(&[0; 6]);
        }
        b
    }

    fn fix_checksum(b: &mut [u8]) {
        b[9] = 0;
        b[9] = 0u8.wrapping_sub(sum(b));
    }

    #[test]
    fn bytes_match_the_spec_layout() {
        let topo = Topology {
            iommu: bdf("0000:00:04.0"),
            endpoints: vec![
                "0000:00:05.0-0000:00:06.7".parse().unwrap(),
                EndpointRange::single(bdf("0001:02:03.1")),
            ],
        };
        let got = build_viot(&topo).unwrap();
        let mut want = hand_built(topo.iommu, &topo.endpoints);
        // The crate's revision and creator fields are its own; take them from the output.
        want[8] = got[8];
        want[28..36].copy_from_slice(&got[28..36]);
        fix_checksum(&mut want);
        assert_eq!(got.len(), 48 + 16 + 2 * 24);
        assert_eq!(got, want);
        assert_eq!(sum(&got), 0, "ACPI 6.4 §5.2.6: all bytes sum to zero");
        // spot checks of single fields against literal values
        assert_eq!(&got[0..4], b"VIOT");
        assert_eq!(le32(&got, 4), 112);
        assert_eq!(le16(&got, 36), 3); // node count
        assert_eq!(le16(&got, 38), 48); // node offset
        assert_eq!(got[48], 3); // virtio-pci IOMMU
        assert_eq!(le16(&got, 54), 0x0020); // 00:04.0
        assert_eq!(got[64], 1); // PCI range
        assert_eq!(le32(&got, 68), 0x28); // endpoint start 00:05.0
        assert_eq!(le16(&got, 76), 0x28); // BDF start
        assert_eq!(le16(&got, 78), 0x37); // BDF end 00:06.7
        assert_eq!(le16(&got, 80), 48); // output node
        assert_eq!(le16(&got, 88 + 8), 1); // second range: segment start 1
        assert_eq!(le16(&got, 88 + 12), 0x0219); // 02:03.1
    }

    #[test]
    fn decodes_what_it_builds() {
        let topo = Topology {
            iommu: bdf("00:01.0"),
            endpoints: vec![EndpointRange::bus(0, 0), EndpointRange::bus(0, 1)],
        };
        let b = build_viot(&topo).unwrap();
        assert_eq!(parse_viot(&b).unwrap(), topo);
    }

    #[test]
    fn decodes_a_hand_built_qemu_shaped_table() {
        // QEMU's own VIOT for `-device virtio-iommu-pci` at 00:01.0 on q35: one range
        // covering bus 0 (0x0000..=0x00ff), 88 bytes.
        let mut b = hand_built(bdf("00:01.0"), &[EndpointRange::bus(0, 0)]);
        fix_checksum(&mut b);
        assert_eq!(b.len(), 0x58);
        let t = parse_viot(&b).unwrap();
        assert_eq!(t.iommu, bdf("00:01.0"));
        assert_eq!(t.endpoints, vec![EndpointRange::bus(0, 0)]);
        assert!(t.endpoints[0].contains(&bdf("00:1f.3")));
        assert!(!t.endpoints[0].contains(&bdf("01:00.0")));
    }

    #[test]
    fn rejects_malformed_tables() {
        let mut good = hand_built(bdf("00:01.0"), &[EndpointRange::bus(0, 0)]);
        fix_checksum(&mut good);
        type Corrupt = Box<dyn Fn(&mut Vec<u8>)>;
        let cases: Vec<(&str, Corrupt)> = vec![
            ("signature", Box::new(|b| b[0] = b'X')),
            ("checksum", Box::new(|b| b[70] ^= 1)),
            ("short", Box::new(|b| b.truncate(40))),
            ("length field", Box::new(|b| b[4] = 0x50)),
            ("node offset", Box::new(|b| b[38] = 8)),
            ("node count", Box::new(|b| b[36] = 3)),
            ("node type", Box::new(|b| b[48] = 4)),
            ("node length", Box::new(|b| b[50] = 0)),
            ("output node", Box::new(|b| b[80] = 0)),
            ("endpoint start", Box::new(|b| b[68] = 5)),
            ("empty range", Box::new(|b| b[76] = 0xff)),
            (
                "trailing bytes",
                Box::new(|b| {
                    b.extend_from_slice(&[0; 4]);
                    b[4] = b.len() as u8;
                }),
            ),
        ];
        for (name, corrupt) in cases {
            let mut b = good.clone();
            corrupt(&mut b);
            if name != "checksum" && b.len() >= 10 {
                fix_checksum(&mut b);
            }
            assert!(
                matches!(parse_viot(&b), Err(ViotError::Malformed(_))),
                "{name}: accepted"
            );
        }
    }

    #[test]
    fn bad_topologies_are_typed_errors() {
        let iommu = bdf("00:01.0");
        let t = |endpoints| Topology { iommu, endpoints };
        assert!(matches!(
            build_viot(&t(vec![])),
            Err(ViotError::NoEndpoints)
        ));
        let r = EndpointRange {
            first: bdf("00:05.0"),
            last: bdf("00:04.0"),
        };
        assert!(matches!(
            build_viot(&t(vec![r])),
            Err(ViotError::EmptyRange(_))
        ));
        let a: EndpointRange = "00:02.0-00:04.0".parse().unwrap();
        let b: EndpointRange = "00:04.0-00:05.0".parse().unwrap();
        assert!(matches!(
            build_viot(&t(vec![a, b])),
            Err(ViotError::Overlap(..))
        ));
        let many = (0..=MAX_RANGES as u16)
            .map(|i| EndpointRange::single(PciBdf::from_rid(i, 0)))
            .collect();
        assert!(matches!(
            build_viot(&t(many)),
            Err(ViotError::TooManyRanges(_))
        ));
        assert!(matches!(
            "00:04.0-00:02.0".parse::<EndpointRange>(),
            Err(ViotError::EmptyRange(_))
        ));
        for s in [
            "",
            "00:20.0",
            "00:00.8",
            "zz:00.0",
            "0:0:0:0.0",
            "00:00.0-",
            "00:000.0",
        ] {
            assert!(s.parse::<EndpointRange>().is_err(), "{s:?}");
        }
    }

    #[test]
    fn writes_a_file() {
        let dir = std::env::temp_dir().join(format!("viot-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("viot.bin");
        let topo = Topology {
            iommu: bdf("00:03.0"),
            endpoints: vec![EndpointRange::bus(0, 0)],
        };
        write_viot(&path, &topo).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), build_viot(&topo).unwrap());
        let err = write_viot(&dir.join("missing/viot.bin"), &topo).unwrap_err();
        assert!(matches!(err, ViotError::Io { .. }));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn arb_bdf() -> impl Strategy<Value = PciBdf> {
        (0u16..4, any::<u16>()).prop_map(|(s, r)| PciBdf::from_rid(s, r))
    }

    proptest! {
        #[test]
        fn build_parse_round_trip(iommu in arb_bdf(),
                                  singles in proptest::collection::btree_set((0u16..3, any::<u16>()), 1..20)) {
            let endpoints: Vec<_> = singles.iter()
                .map(|&(s, r)| EndpointRange::single(PciBdf::from_rid(s, r))).collect();
            let topo = Topology { iommu, endpoints };
            let b = build_viot(&topo).unwrap();
            prop_assert_eq!(sum(&b), 0);
            prop_assert_eq!(b.len(), 64 + 24 * topo.endpoints.len());
            prop_assert_eq!(parse_viot(&b).unwrap(), topo);
        }

        #[test]
        fn bdf_display_parse_round_trip(b in arb_bdf()) {
            prop_assert_eq!(b.to_string().parse::<PciBdf>().unwrap(), b);
        }

        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse_viot(&bytes);
        }

        #[test]
        fn parse_never_panics_on_mutated_tables(pos in 0usize..112, val: u8) {
            let topo = Topology {
                iommu: PciBdf::from_rid(0, 8),
                endpoints: vec![EndpointRange::bus(0, 0), EndpointRange::bus(0, 1)],
            };
            let mut b = build_viot(&topo).unwrap();
            b[pos] = val;
            fix_checksum(&mut b);
            let _ = parse_viot(&b);
        }
    }
}

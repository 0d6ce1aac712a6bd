//! The ACPI IVRS table (AMD I/O Virtualization Technology (IOMMU) Specification #48882 §5,
//! "I/O Virtualization Reporting Structure") that tells a guest's `amd_iommu` where the
//! register front's unit is and which devices it translates: one IVHD of type 10h naming the
//! IOMMU's own function, the offset of its capability block, its MMIO base, and a select
//! device entry for each endpoint the daemon serves. QEMU takes it whole with
//! `-acpitable file=...`.
//!
//! Devices outside the IVHD are not translated, as QEMU's own devices (which DMA around the
//! model) must not be. No IVHD special entries are given for the IOAPIC or HPET: they matter
//! only to interrupt remapping, which the unit does not model (guests boot with
//! `intremap=off`).

use acpi_tables::sdt::Sdt;
use iommu_emulator::PciBdf;

/// IVRS revision (§5.2.1): 2, the table may carry any IVHD type (this one has only 10h).
const IVRS_REVISION: u8 = 2;
/// IVHD block type 10h (§5.2.2.1): the fixed-length block without an EFR image.
const IVHD_TYPE_10H: u8 = 0x10;
/// IVHD device entry: select, one device (§5.2.2.3, Table 95: type 2, 4 bytes).
const DEV_SELECT: u8 = 2;

/// IVHD Flags (§5.2.2.1), bit 5: Coherent (the unit's table walks are coherent with the
/// processors' caches). HtTunEn, PassPW, ResPassPW, Isoc, IotlbSup, PreFSup and PPRSup are
/// clear: the software enables nothing from them.
const IVHD_FLAG_COHERENT: u8 = 1 << 5;

/// Why an IVRS table could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IvrsError {
    /// The MMIO base is not 16 KiB aligned.
    #[error("IOMMU base {0:#x} is not 16 KiB aligned")]
    Unaligned(u64),
    /// The physical address width is outside what IVinfo can say.
    #[error("physical address width {0} is not within 32..=64")]
    Width(u8),
    /// A device of another segment than the IOMMU's.
    #[error("{0} is not on segment 0, the IOMMU's")]
    Segment(PciBdf),
    /// Too many devices for one IVHD (its length is 16 bits).
    #[error("{0} devices do not fit in one IVHD")]
    TooMany(usize),
}

/// What the table describes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IvrsTopology {
    /// Physical address width of the platform, in bits (IVinfo PASize).
    pub phys_bits: u8,
    /// The IOMMU's own function (the IVHD's Device ID; segment 0).
    pub iommu: PciBdf,
    /// Offset of the IOMMU capability block in that function's configuration space.
    pub cap_offset: u16,
    /// The MMIO base of the register file (the BAR the firmware gives the register front).
    pub base: u64,
    /// The devices it translates (segment 0).
    pub endpoints: Vec<PciBdf>,
}

/// Builds the table: the header, IVinfo, and one IVHD type 10h for segment 0 with a select
/// entry per endpoint (DTE setting 0: no interrupt pass-through, as the unit has no interrupt
/// remapping to bypass).
pub fn build_ivrs(t: &IvrsTopology) -> Result<Vec<u8>, IvrsError> {
    if t.base & 0x3fff != 0 {
        return Err(IvrsError::Unaligned(t.base));
    }
    if !(32..=64).contains(&t.phys_bits) {
        return Err(IvrsError::Width(t.phys_bits));
    }
    if let Some(b) = std::iter::once(&t.iommu)
        .chain(&t.endpoints)
        .find(|b| b.segment != 0)
    {
        return Err(IvrsError::Segment(*b));
    }
    const HEADER_LEN: usize = 24;
    const ENTRY_LEN: usize = 4;
    let len = HEADER_LEN + ENTRY_LEN * t.endpoints.len();
    let len = u16::try_from(len).map_err(|_| IvrsError::TooMany(t.endpoints.len()))?;
    let mut ivrs = Sdt::new(*b"IVRS", 36, IVRS_REVISION, *b"RVIOMU", *b"REGFRONT", 1);
    // §5.2.1: IVinfo: EFRSup (bit 0) clear (a type 10h block carries no EFR image; the driver
    // reads the MMIO EFR), DMA remap (1) clear, GVAsize 010b (7:5, 48 bits), PAsize (14:8),
    // VAsize 64 (21:15), HtAtsResv (22) clear; then 8 reserved bytes.
    let ivinfo: u32 = (0b010 << 5) | (u32::from(t.phys_bits) << 8) | (64 << 15);
    ivrs.append_slice(&ivinfo.to_le_bytes());
    ivrs.append_slice(&[0; 8]);
    // §5.2.2.1: Type, Flags, Length, Device ID, Capability Offset, IOMMU Base Address, PCI
    // Segment Group, IOMMU Info (MSI number 0, UnitID 0), IOMMU Feature Reporting (no
    // performance counters or banks, so the driver maps 16 KiB of registers; XTSup, GASup
    // clear, as the EFR says).
    let mut ivhd = Vec::with_capacity(usize::from(len));
    ivhd.extend_from_slice(&[IVHD_TYPE_10H, IVHD_FLAG_COHERENT]);
    ivhd.extend_from_slice(&len.to_le_bytes());
    ivhd.extend_from_slice(&t.iommu.rid().to_le_bytes());
    ivhd.extend_from_slice(&t.cap_offset.to_le_bytes());
    ivhd.extend_from_slice(&t.base.to_le_bytes());
    ivhd.extend_from_slice(&0u16.to_le_bytes());
    ivhd.extend_from_slice(&0u16.to_le_bytes());
    ivhd.extend_from_slice(&0u32.to_le_bytes());
    for b in &t.endpoints {
        let [lo, hi] = b.rid().to_le_bytes();
        ivhd.extend_from_slice(&[DEV_SELECT, lo, hi, 0]);
    }
    ivrs.append_slice(&ivhd);
    Ok(ivrs.as_slice().to_vec())
}

/// Writes the table to `path`.
pub fn write_ivrs(path: &std::path::Path, t: &IvrsTopology) -> std::io::Result<()> {
    let bytes = build_ivrs(t).map_err(std::io::Error::other)?;
    std::fs::write(path, bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topo() -> IvrsTopology {
        IvrsTopology {
            phys_bits: 48,
            iommu: "00:05.0".parse().unwrap(),
            cap_offset: 0x90,
            base: 0xfebf_8000,
            endpoints: vec!["00:04.0".parse().unwrap(), "01:00.1".parse().unwrap()],
        }
    }

    #[test]
    fn the_table_is_the_spec_layout_byte_for_byte() {
        let b = build_ivrs(&topo()).unwrap();
        // 36 header + 4 IVinfo + 8 reserved + IVHD (24 + 2 x 4).
        assert_eq!(b.len(), 36 + 12 + 32);
        assert_eq!(&b[0..4], b"IVRS");
        assert_eq!(u32::from_le_bytes(b[4..8].try_into().unwrap()), 80);
        assert_eq!(b[8], 2, "revision");
        assert_eq!(b.iter().fold(0u8, |s, x| s.wrapping_add(*x)), 0, "checksum");
        assert_eq!(
            u32::from_le_bytes(b[36..40].try_into().unwrap()),
            0x0020_3040,
            "IVinfo: VAsize 64, PAsize 48, GVAsize 48"
        );
        assert_eq!(b[40..48], [0; 8]);
        let ivhd = &b[48..];
        assert_eq!(
            ivhd[..24],
            [
                0x10, 0x20, 32, 0, // type 10h, Coherent, length 32
                0x28, 0x00, // device id 00:05.0
                0x90, 0x00, // capability offset
                0x00, 0x80, 0xbf, 0xfe, 0, 0, 0, 0, // base
                0, 0, // segment
                0, 0, // IOMMU info
                0, 0, 0, 0, // feature reporting
            ]
        );
        assert_eq!(ivhd[24..28], [2, 0x20, 0x00, 0], "select 00:04.0");
        assert_eq!(ivhd[28..32], [2, 0x01, 0x01, 0], "select 01:00.1");
    }

    #[test]
    fn bad_topologies_are_refused() {
        assert!(build_ivrs(&topo()).is_ok());
        for (bad, want) in [
            (
                IvrsTopology {
                    base: 0xfebf_e000,
                    ..topo()
                },
                IvrsError::Unaligned(0xfebf_e000),
            ),
            (
                IvrsTopology {
                    phys_bits: 65,
                    ..topo()
                },
                IvrsError::Width(65),
            ),
            (
                IvrsTopology {
                    endpoints: vec!["0001:00:04.0".parse().unwrap()],
                    ..topo()
                },
                IvrsError::Segment("0001:00:04.0".parse().unwrap()),
            ),
            (
                IvrsTopology {
                    endpoints: vec!["00:04.0".parse().unwrap(); 20000],
                    ..topo()
                },
                IvrsError::TooMany(20000),
            ),
        ] {
            assert_eq!(build_ivrs(&bad), Err(want));
        }
    }
}

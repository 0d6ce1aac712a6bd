//! The ACPI DMAR table (Intel VT-d spec 4.x §8, "BIOS Considerations") that tells a guest's
//! `intel_iommu` where the register front's remapping unit is and which devices it
//! translates: one DRHD naming the register base and, in its device scope, the endpoints the
//! daemon serves. QEMU takes it whole with `-acpitable file=...`.

use acpi_tables::sdt::Sdt;
use iommu_emulator::PciBdf;

/// DMAR flags (§8.1): no interrupt remapping, so none of INTR_REMAP, X2APIC_OPT_OUT.
const DMAR_FLAGS: u8 = 0;
/// Remapping structure type of a DRHD (§8.3).
const DRHD: u16 = 0;
/// Device scope entry type of a PCI endpoint device (§8.3.1).
const SCOPE_PCI_ENDPOINT: u8 = 1;

/// Why a DMAR table could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DmarError {
    /// The register base is not 4 KiB aligned.
    #[error("register base {0:#x} is not 4 KiB aligned")]
    Unaligned(u64),
    /// The host address width is outside what DMAR can say.
    #[error("host address width {0} is not within 32..=64")]
    Width(u8),
    /// A device of another segment than the unit's.
    #[error("{0} is not on segment 0, the unit's")]
    Segment(PciBdf),
    /// Too many devices for one DRHD (its length is 16 bits).
    #[error("{0} devices do not fit in one DRHD")]
    TooMany(usize),
}

/// What the table describes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DmarTopology {
    /// Host address width (the DMA physical addressability of the platform), in bits.
    pub haw: u8,
    /// The unit's register base (the BAR the firmware gives the register front).
    pub register_base: u64,
    /// The devices it translates (segment 0).
    pub endpoints: Vec<PciBdf>,
}

/// Builds the table: header, host address width, flags, and one DRHD of segment 0 whose
/// device scope lists each endpoint as a PCI endpoint on its bus (a path of one
/// device/function pair). `INCLUDE_PCI_ALL` is clear: devices outside the scope are not
/// translated.
pub fn build_dmar(t: &DmarTopology) -> Result<Vec<u8>, DmarError> {
    if t.register_base & 0xfff != 0 {
        return Err(DmarError::Unaligned(t.register_base));
    }
    if !(32..=64).contains(&t.haw) {
        return Err(DmarError::Width(t.haw));
    }
    if let Some(b) = t.endpoints.iter().find(|b| b.segment != 0) {
        return Err(DmarError::Segment(*b));
    }
    const SCOPE_LEN: usize = 8;
    let drhd_len = 16 + SCOPE_LEN * t.endpoints.len();
    let drhd_len = u16::try_from(drhd_len).map_err(|_| DmarError::TooMany(t.endpoints.len()))?;
    let mut dmar = Sdt::new(*b"DMAR", 36, 1, *b"RVIOMU", *b"REGFRONT", 1);
    // §8.1: Host Address Width (N - 1), Flags, 10 reserved bytes.
    let mut head = [0u8; 12];
    head[0] = t.haw - 1;
    head[1] = DMAR_FLAGS;
    dmar.append_slice(&head);
    // §8.3: Type, Length, Flags (INCLUDE_PCI_ALL clear), Size (one 4 KiB page of registers:
    // 2^0), Segment, Register Base Address.
    let mut drhd = Vec::with_capacity(usize::from(drhd_len));
    drhd.extend_from_slice(&DRHD.to_le_bytes());
    drhd.extend_from_slice(&drhd_len.to_le_bytes());
    drhd.extend_from_slice(&[0, 0]);
    drhd.extend_from_slice(&0u16.to_le_bytes());
    drhd.extend_from_slice(&t.register_base.to_le_bytes());
    // §8.3.1: Type, Length, Flags, Reserved, Enumeration ID, Start Bus, Path (Device,
    // Function).
    for b in &t.endpoints {
        drhd.extend_from_slice(&[
            SCOPE_PCI_ENDPOINT,
            SCOPE_LEN as u8,
            0,
            0,
            0,
            b.bus,
            b.device,
            b.function,
        ]);
    }
    dmar.append_slice(&drhd);
    Ok(dmar.as_slice().to_vec())
}

/// Writes the table to `path`.
pub fn write_dmar(path: &std::path::Path, t: &DmarTopology) -> std::io::Result<()> {
    let bytes = build_dmar(t).map_err(std::io::Error::other)?;
    std::fs::write(path, bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_the_spec_layout_byte_for_byte() {
        let t = DmarTopology {
            haw: 48,
            register_base: 0xfebf_e000,
            endpoints: vec!["00:04.0".parse().unwrap(), "00:05.1".parse().unwrap()],
        };
        let b = build_dmar(&t).unwrap();
        // 36 header + 12 + DRHD (16 + 2 x 8).
        assert_eq!(b.len(), 36 + 12 + 32);
        assert_eq!(&b[0..4], b"DMAR");
        assert_eq!(u32::from_le_bytes(b[4..8].try_into().unwrap()), 80);
        assert_eq!(b[8], 1, "revision");
        assert_eq!(b.iter().fold(0u8, |s, x| s.wrapping_add(*x)), 0, "checksum");
        assert_eq!(b[36], 47, "HAW - 1");
        assert_eq!(b[37], 0, "no interrupt remapping");
        let drhd = &b[48..];
        assert_eq!(
            drhd[..16],
            [0, 0, 32, 0, 0, 0, 0, 0, 0x00, 0xe0, 0xbf, 0xfe, 0, 0, 0, 0]
        );
        assert_eq!(drhd[16..24], [1, 8, 0, 0, 0, 0, 4, 0]);
        assert_eq!(drhd[24..32], [1, 8, 0, 0, 0, 0, 5, 1]);
    }

    #[test]
    fn bad_topologies_are_refused() {
        let ok = DmarTopology {
            haw: 39,
            register_base: 0xfed9_0000,
            endpoints: vec![],
        };
        assert!(build_dmar(&ok).is_ok());
        for (bad, want) in [
            (
                DmarTopology {
                    register_base: 0xfed9_0010,
                    ..ok.clone()
                },
                DmarError::Unaligned(0xfed9_0010),
            ),
            (
                DmarTopology {
                    haw: 31,
                    ..ok.clone()
                },
                DmarError::Width(31),
            ),
            (
                DmarTopology {
                    endpoints: vec!["0001:00:04.0".parse().unwrap()],
                    ..ok.clone()
                },
                DmarError::Segment("0001:00:04.0".parse().unwrap()),
            ),
        ] {
            assert_eq!(build_dmar(&bad), Err(want));
        }
    }
}

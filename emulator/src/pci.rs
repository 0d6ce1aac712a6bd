//! PCI addresses: the one type every crate of the workspace names a PCI function with.

use std::fmt;
use std::str::FromStr;

/// Why a PCI address was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad PCI address {0:?} (expected [SSSS:]BB:DD.F in hex, device < 32, function < 8)")]
pub struct BdfError(pub String);

/// A PCI segment/bus/device/function address (PCI Local Bus spec 3.0 §6.2.2: 8-bit bus, 5-bit
/// device, 3-bit function). It prints as sysfs names functions (`SSSS:BB:DD.F`) and parses
/// that form or lspci's short `BB:DD.F` (segment 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PciBdf {
    /// Segment (domain).
    pub segment: u16,
    /// Bus.
    pub bus: u8,
    /// Device, 0..=31.
    pub device: u8,
    /// Function, 0..=7.
    pub function: u8,
}

impl PciBdf {
    /// A checked address.
    pub fn new(segment: u16, bus: u8, device: u8, function: u8) -> Result<Self, BdfError> {
        if device >= 32 || function >= 8 {
            return Err(BdfError(format!(
                "{segment:04x}:{bus:02x}:{device:02x}.{function:x}"
            )));
        }
        Ok(PciBdf {
            segment,
            bus,
            device,
            function,
        })
    }

    /// From a segment and a 16-bit requester id (bus << 8 | device << 3 | function).
    pub fn from_rid(segment: u16, rid: u16) -> Self {
        PciBdf {
            segment,
            bus: (rid >> 8) as u8,
            device: ((rid >> 3) & 0x1f) as u8,
            function: (rid & 7) as u8,
        }
    }

    /// The 16-bit requester id, which is also the function's virtio-iommu endpoint id (virtio
    /// 1.3 §5.13.2, with the VIOT's PCI range mapping ids one to one) and the source id of its
    /// DMA requests.
    pub fn rid(&self) -> u16 {
        (u16::from(self.bus) << 8) | (u16::from(self.device) << 3) | u16::from(self.function)
    }
}

impl fmt::Display for PciBdf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04x}:{:02x}:{:02x}.{:x}",
            self.segment, self.bus, self.device, self.function
        )
    }
}

impl FromStr for PciBdf {
    type Err = BdfError;

    fn from_str(s: &str) -> Result<Self, BdfError> {
        let bad = || BdfError(s.to_string());
        let (rest, func) = s.rsplit_once('.').ok_or_else(bad)?;
        let parts: Vec<&str> = rest.split(':').collect();
        let (seg, bus, dev) = match parts.as_slice() {
            [b, d] => ("0", *b, *d),
            [sg, b, d] => (*sg, *b, *d),
            _ => return Err(bad()),
        };
        let hex = |t: &str, max_len: usize| {
            if t.is_empty() || t.len() > max_len || !t.bytes().all(|c| c.is_ascii_hexdigit()) {
                return Err(bad());
            }
            u16::from_str_radix(t, 16).map_err(|_| bad())
        };
        let (seg, bus, dev, func) = (hex(seg, 4)?, hex(bus, 2)?, hex(dev, 2)?, hex(func, 1)?);
        PciBdf::new(seg, bus as u8, dev as u8, func as u8).map_err(|_| bad())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_sysfs_and_short_forms() {
        let b: PciBdf = "0000:00:03.0".parse().unwrap();
        assert_eq!(b, PciBdf::new(0, 0, 3, 0).unwrap());
        let b: PciBdf = "01:1f.7".parse().unwrap();
        assert_eq!(b, PciBdf::new(0, 1, 31, 7).unwrap());
        let b: PciBdf = "abcd:ff:00.1".parse().unwrap();
        assert_eq!(b.segment, 0xabcd);
        assert_eq!(b.to_string(), "abcd:ff:00.1");
    }

    #[test]
    fn rejects_out_of_range_and_garbage() {
        for s in [
            "",
            "00:20.0",
            "00:03.8",
            "00:03",
            "0:0:0:0.0",
            "g0:00.0",
            "100:00.0",
            "00:003.0",
            "00000:00:00.0",
            "00:03.-1",
            "00:03.00",
        ] {
            assert!(s.parse::<PciBdf>().is_err(), "{s:?} parsed");
        }
        assert!(PciBdf::new(0, 0, 32, 0).is_err());
    }

    #[test]
    fn requester_id_layout() {
        // bus 0x12, device 0x1f, function 5 -> 0x12 << 8 | 0x1f << 3 | 5 = 0x12fd
        assert_eq!(PciBdf::new(0, 0x12, 0x1f, 5).unwrap().rid(), 0x12fd);
        assert_eq!(
            PciBdf::from_rid(3, 0x12fd),
            PciBdf::new(3, 0x12, 0x1f, 5).unwrap()
        );
    }

    proptest! {
        #[test]
        fn display_parse_round_trip(seg: u16, bus: u8, dev in 0u8..32, func in 0u8..8) {
            let b = PciBdf::new(seg, bus, dev, func).unwrap();
            prop_assert_eq!(b.to_string().parse::<PciBdf>().unwrap(), b);
            prop_assert_eq!(PciBdf::from_rid(seg, b.rid()), b);
        }

        #[test]
        fn parse_never_panics(s in "\\PC{0,20}") {
            let _ = s.parse::<PciBdf>();
        }
    }
}

//! PCI addresses in the form sysfs uses (`SSSS:BB:DD.F`).

use crate::AgentError;
use std::fmt;
use std::str::FromStr;

/// A PCI segment/bus/device/function address. PCI Local Bus spec 3.0 §6.2.2 (configuration
/// addresses): 8-bit bus, 5-bit device, 3-bit function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Bdf {
    /// PCI segment (domain).
    pub segment: u16,
    /// Bus number.
    pub bus: u8,
    /// Device number, 0..=31.
    pub device: u8,
    /// Function number, 0..=7.
    pub function: u8,
}

impl Bdf {
    /// A BDF, or `None` if `device` or `function` is out of range.
    pub fn new(segment: u16, bus: u8, device: u8, function: u8) -> Option<Self> {
        (device < 32 && function < 8).then_some(Bdf {
            segment,
            bus,
            device,
            function,
        })
    }

    /// The 16-bit requester ID (bus << 8 | device << 3 | function), which is also the
    /// virtio-iommu endpoint ID of a PCI device (virtio spec 1.3 §5.13.2, with the VIOT
    /// PCI range mapping the ID one to one).
    pub fn rid(&self) -> u16 {
        (u16::from(self.bus) << 8) | (u16::from(self.device) << 3) | u16::from(self.function)
    }
}

impl fmt::Display for Bdf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04x}:{:02x}:{:02x}.{:x}",
            self.segment, self.bus, self.device, self.function
        )
    }
}

impl FromStr for Bdf {
    type Err = AgentError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || AgentError::BadBdf(s.to_string());
        let (rest, function) = s.rsplit_once('.').ok_or_else(bad)?;
        let parts: Vec<&str> = rest.split(':').collect();
        let (segment, bus, device) = match parts.as_slice() {
            [b, d] => ("0", *b, *d),
            [s, b, d] => (*s, *b, *d),
            _ => return Err(bad()),
        };
        let hex = |t: &str, max_len: usize| -> Result<u32, AgentError> {
            if t.is_empty() || t.len() > max_len || !t.bytes().all(|c| c.is_ascii_hexdigit()) {
                return Err(bad());
            }
            u32::from_str_radix(t, 16).map_err(|_| bad())
        };
        let segment = hex(segment, 4)?;
        let bus = hex(bus, 2)?;
        let device = hex(device, 2)?;
        let function = hex(function, 1)?;
        Bdf::new(
            u16::try_from(segment).map_err(|_| bad())?,
            u8::try_from(bus).map_err(|_| bad())?,
            u8::try_from(device).map_err(|_| bad())?,
            u8::try_from(function).map_err(|_| bad())?,
        )
        .ok_or_else(bad)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_sysfs_and_short_forms() {
        let b: Bdf = "0000:00:03.0".parse().unwrap();
        assert_eq!(b, Bdf::new(0, 0, 3, 0).unwrap());
        let b: Bdf = "01:1f.7".parse().unwrap();
        assert_eq!(b, Bdf::new(0, 1, 31, 7).unwrap());
        let b: Bdf = "abcd:ff:00.1".parse().unwrap();
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
            assert!(s.parse::<Bdf>().is_err(), "{s:?} parsed");
        }
    }

    #[test]
    fn requester_id_layout() {
        // bus 0x12, device 0x1f, function 5 -> 0x12 << 8 | 0x1f << 3 | 5 = 0x12fd
        assert_eq!(Bdf::new(0, 0x12, 0x1f, 5).unwrap().rid(), 0x12fd);
    }

    proptest! {
        #[test]
        fn display_parse_round_trip(seg: u16, bus: u8, dev in 0u8..32, func in 0u8..8) {
            let b = Bdf::new(seg, bus, dev, func).unwrap();
            prop_assert_eq!(b.to_string().parse::<Bdf>().unwrap(), b);
        }

        #[test]
        fn parse_never_panics(s in "\\PC{0,20}") {
            let _ = s.parse::<Bdf>();
        }
    }
}

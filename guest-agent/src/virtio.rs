//! Negotiated virtio features as the guest kernel shows them in
//! `/sys/bus/virtio/devices/virtioN/features`: one character per feature bit, `'0'` or `'1'`,
//! bit 0 first (drivers/virtio/virtio.c, `features_show`).

use crate::{AgentError, Result};

/// Feature bit names: virtio spec v1.3 §5.13.3 (virtio-iommu device features, bits 0-6) and
/// §6 (reserved, transport-level feature bits).
pub const FEATURE_NAMES: &[(u32, &str)] = &[
    (0, "INPUT_RANGE"),
    (1, "DOMAIN_RANGE"),
    (2, "MAP_UNMAP"),
    (3, "BYPASS"),
    (4, "PROBE"),
    (5, "MMIO"),
    (6, "BYPASS_CONFIG"),
    (28, "INDIRECT_DESC"),
    (29, "EVENT_IDX"),
    (32, "VERSION_1"),
    (33, "ACCESS_PLATFORM"),
    (34, "RING_PACKED"),
    (35, "IN_ORDER"),
    (36, "ORDER_PLATFORM"),
    (37, "SR_IOV"),
    (38, "NOTIFICATION_DATA"),
    (39, "NOTIF_CONFIG_DATA"),
    (40, "RING_RESET"),
    (41, "ADMIN_VQ"),
];

/// A 64-bit negotiated feature set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Features(u64);

impl Features {
    /// Parses the sysfs string (surrounding whitespace ignored). Bits past 63 must be `0`.
    pub fn from_sysfs(s: &str) -> Result<Self> {
        let s = s.trim();
        let mut bits = 0u64;
        for (i, c) in s.chars().enumerate() {
            match c {
                '0' => {}
                '1' if i < 64 => bits |= 1 << i,
                '1' => {
                    return Err(AgentError::Sysfs(format!(
                        "feature bit {i} is set, beyond 64 bits"
                    )));
                }
                _ => {
                    return Err(AgentError::Sysfs(format!(
                        "features: unexpected character {c:?} at bit {i}"
                    )));
                }
            }
        }
        Ok(Features(bits))
    }

    /// The raw bits.
    pub fn bits(&self) -> u64 {
        self.0
    }

    /// Whether bit `bit` is set.
    pub fn has(&self, bit: u32) -> bool {
        bit < 64 && self.0 & (1 << bit) != 0
    }

    /// Names of the set bits, in bit order; unnamed bits as `bitN`.
    pub fn names(&self) -> Vec<String> {
        (0..64)
            .filter(|&b| self.has(b))
            .map(|b| {
                FEATURE_NAMES
                    .iter()
                    .find(|(n, _)| *n == b)
                    .map_or_else(|| format!("bit{b}"), |(_, name)| name.to_string())
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn decodes_a_qemu_virtio_iommu_feature_string() {
        // bits 0,1,2,4,5,6 (no BYPASS), 28, 29, 32 (VERSION_1), 40
        let mut s = String::new();
        for b in 0..128 {
            s.push(if [0, 1, 2, 4, 5, 6, 28, 29, 32, 40].contains(&b) {
                '1'
            } else {
                '0'
            });
        }
        s.push('\n');
        let f = Features::from_sysfs(&s).unwrap();
        assert_eq!(f.bits(), 0b111_0111 | (0b11 << 28) | (1 << 32) | (1 << 40));
        assert!(f.has(2) && f.has(4) && !f.has(3) && !f.has(64));
        assert_eq!(
            f.names(),
            [
                "INPUT_RANGE",
                "DOMAIN_RANGE",
                "MAP_UNMAP",
                "PROBE",
                "MMIO",
                "BYPASS_CONFIG",
                "INDIRECT_DESC",
                "EVENT_IDX",
                "VERSION_1",
                "RING_RESET"
            ]
        );
    }

    #[test]
    fn unnamed_bits_and_bad_strings() {
        let f = Features::from_sysfs("00000001").unwrap();
        assert_eq!(f.names(), ["bit7"]);
        assert!(Features::from_sysfs("01x").is_err());
        let mut long = "0".repeat(64);
        long.push('1');
        assert!(Features::from_sysfs(&long).is_err());
        assert_eq!(Features::from_sysfs("").unwrap().bits(), 0);
    }

    proptest! {
        #[test]
        fn round_trip(bits: u64) {
            let s: String = (0..64).map(|b| if bits & (1 << b) != 0 { '1' } else { '0' }).collect();
            prop_assert_eq!(Features::from_sysfs(&s).unwrap().bits(), bits);
        }

        #[test]
        fn never_panics(s in "\\PC{0,140}") {
            let _ = Features::from_sysfs(&s);
        }
    }
}

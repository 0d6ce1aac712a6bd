//! Named parameter sets. Each preset is a TOML file under `presets/`, built into the crate:
//! its numbers and their sources (or the reasoning of each assumption) are written once, there,
//! and [`Preset::params`] parses that file.

use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

use super::params::TimingParams;

/// A built-in parameter set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Preset {
    /// gem5's SMMUv3 defaults mapped onto this model's caches (`gem5-smmuv3`), so that results
    /// can be set beside gem5's.
    Gem5Smmuv3,
    /// An x86 server's VT-d unit (`vtd-server`).
    VtdServer,
    /// An x86 server's AMD-Vi IOMMU (`amdvi-server`).
    AmdviServer,
}

/// A preset name that is none of [`Preset::all`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown timing preset {name:?}: expected one of gem5-smmuv3, vtd-server, amdvi-server")]
pub struct UnknownPreset {
    /// The name given.
    pub name: String,
}

const ALL: [Preset; 3] = [Preset::Gem5Smmuv3, Preset::VtdServer, Preset::AmdviServer];

impl Preset {
    /// Every preset.
    pub const fn all() -> &'static [Preset] {
        &ALL
    }

    /// The preset's name, as [`FromStr`] takes it.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Gem5Smmuv3 => "gem5-smmuv3",
            Self::VtdServer => "vtd-server",
            Self::AmdviServer => "amdvi-server",
        }
    }

    /// The preset's TOML file, with its comments.
    pub const fn toml(self) -> &'static str {
        match self {
            Self::Gem5Smmuv3 => include_str!("presets/gem5-smmuv3.toml"),
            Self::VtdServer => include_str!("presets/vtd-server.toml"),
            Self::AmdviServer => include_str!("presets/amdvi-server.toml"),
        }
    }

    /// The preset's parameters (parsed from [`Self::toml`] once).
    pub fn params(self) -> TimingParams {
        static PARSED: [OnceLock<TimingParams>; 3] =
            [OnceLock::new(), OnceLock::new(), OnceLock::new()];
        let slot = match self {
            Self::Gem5Smmuv3 => 0,
            Self::VtdServer => 1,
            Self::AmdviServer => 2,
        };
        PARSED[slot]
            .get_or_init(|| {
                // The files are part of the crate and a test parses each: a failure here is a
                // build defect, not an input error.
                TimingParams::from_toml_str(self.toml())
                    .unwrap_or_else(|e| panic!("preset {}: {e:?}", self.name()))
            })
            .clone()
    }
}

impl fmt::Display for Preset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Preset {
    type Err = UnknownPreset;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ALL.into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| UnknownPreset { name: s.to_owned() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::timing::params::Replacement;

    #[test]
    fn every_preset_parses_validates_and_names_itself() {
        for p in Preset::all() {
            let params = TimingParams::from_toml_str(p.toml()).unwrap();
            params.validate().unwrap();
            assert_eq!(params, p.params());
            assert_eq!(p.name().parse::<Preset>(), Ok(*p));
            assert_eq!(p.to_string(), p.name());
            // The TOML written back reads as the same parameters.
            let again = TimingParams::from_toml_str(&params.to_toml_string().unwrap()).unwrap();
            assert_eq!(again, params);
        }
        let e = "gem5".parse::<Preset>().unwrap_err();
        assert_eq!(e.name, "gem5");
        assert!(e.to_string().contains("gem5-smmuv3"), "{e}");
    }

    #[test]
    fn every_value_of_a_preset_has_its_source_or_is_marked_an_assumption() {
        // Each key line is preceded by a comment block or carries one on its line.
        for p in Preset::all() {
            let lines: Vec<&str> = p.toml().lines().collect();
            for (i, l) in lines.iter().enumerate() {
                let l = l.trim();
                if l.is_empty() || l.starts_with('#') || l.starts_with('[') {
                    continue;
                }
                let commented = l.contains('#')
                    || lines[..i]
                        .iter()
                        .rev()
                        .map(|l| l.trim())
                        .take_while(|l| !l.is_empty())
                        .any(|l| l.starts_with('#'));
                assert!(commented, "{}: {l:?} has no source", p.name());
            }
        }
    }

    /// The gem5 preset carries gem5's numbers (src/dev/arm/SMMUv3.py), written out here again
    /// as the independent oracle.
    #[test]
    fn the_gem5_preset_holds_gem5s_defaults() {
        let g = Preset::Gem5Smmuv3.params();
        // SMMUv3DeviceInterface: tlb_entries 2048, tlb_assoc 4, tlb_lat 3, tlb_slots 3.
        assert_eq!(
            (
                g.iotlb.entries,
                g.iotlb.ways,
                g.iotlb.lookup_cycles,
                g.iotlb.ports
            ),
            (2048, 4, 3, 3)
        );
        // SMMUv3: cfg_entries 64, cfg_assoc 4, cfg_lat 3, cfg_slots 3.
        assert_eq!(
            (g.context.entries, g.context.ways, g.context.lookup_cycles),
            (64, 4, 3)
        );
        // walk_S1L2 348, walk_assoc 4, walk_lat 4, walk_slots 4; ptw_slots 16.
        assert_eq!(
            (g.pwc.entries, g.pwc.ways, g.pwc.lookup_cycles, g.pwc.ports),
            (348, 4, 4, 4)
        );
        assert_eq!(g.walkers, 16);
        // ifc_smmu_lat 8, smmu_ifc_lat 8.
        assert_eq!(
            (g.miss_path.to_walker_cycles, g.miss_path.from_walker_cycles),
            (8, 8)
        );
        // tlb_policy = cfg_policy = walk_policy = "rr".
        for (_, c) in g.caches() {
            assert_eq!(c.replacement, Replacement::Fifo);
        }
        assert!(g.iotlb_first);
    }
}

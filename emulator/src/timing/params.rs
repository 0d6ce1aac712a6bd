//! The timing parameters: one struct, loadable from TOML, every value with its unit. The units'
//! cache geometry comes from the same parameters ([`TimingParams::apply_to_vtd`],
//! [`TimingParams::apply_to_amdvi`]), so a run's caches and its costs are described once.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::amdvi::AmdViConfig;
use crate::vtd::VtdConfig;

/// Every knob of the timing model. Cycles are cycles of the IOMMU clock ([`Self::clock_ghz`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimingParams {
    /// The IOMMU clock, in GHz: converts cycles to time (throughput per second).
    pub clock_ghz: f64,
    /// Concurrent page-table walks (walker slots, gem5's `ptw_slots`). A translation whose
    /// cost has walk cycles needs a free slot; it queues when all are busy.
    pub walkers: u32,
    /// Cycles the unit takes to answer one register (MMIO) access. Not part of a
    /// translation's cost: the simulator charges it to register-front traffic.
    pub mmio_cycles: u32,
    /// The IOMMU looks up its IOTLB with the request's source id (and PASID) before it
    /// consults the context and PASID caches: the context and PASID lookups the units make
    /// before their IOTLB lookup cost nothing when the IOTLB hits, and are charged after the
    /// IOTLB miss. gem5's SMMUv3 works so (its device interface's main TLB is tagged with the
    /// stream id); VT-d and AMD-Vi tag their IOTLBs with the domain id, found through the
    /// context entry or DTE first.
    pub iotlb_first: bool,
    /// The IOTLB (final translations).
    pub iotlb: CacheParams,
    /// The context cache (VT-d) or device-table-entry cache (AMD-Vi).
    pub context: CacheParams,
    /// The PASID cache (VT-d) or GCR3 cache (AMD-Vi).
    pub pasid: CacheParams,
    /// The paging-structure caches: one geometry applied to each level's cache (levels 2 to
    /// 5), as the units build them; lookups and fills cost the same at every level.
    pub pwc: CacheParams,
    /// Memory reads and A/D updates of the memory-resident structures.
    pub memory: MemoryParams,
    /// The walker's own cycles, beside the memory references.
    pub walk: WalkParams,
    /// The link between the device and the IOMMU, each way, crossed by every translation.
    pub link: LinkParams,
    /// The hop from the IOTLB to the unit behind it (structure caches, walkers) and back,
    /// crossed only by a translation whose IOTLB lookup missed.
    pub miss_path: MissPathParams,
    /// Address Translation Services.
    pub ats: AtsParams,
    /// Command and invalidation-queue processing.
    pub queue: QueueParams,
}

/// One cache: its geometry (given to the units) and its timing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheParams {
    /// Entries (for the paging-structure caches: per level).
    pub entries: u32,
    /// Associativity: ways per set; `entries` must be a multiple of it.
    pub ways: u32,
    /// Replacement policy. The units implement [`Replacement::Plru`] only; another value is
    /// reported by `apply_to_*` as a deviation.
    pub replacement: Replacement,
    /// Cycles of one lookup, hit or miss.
    pub lookup_cycles: u32,
    /// Cycles of one fill (an insert offered to the cache).
    pub fill_cycles: u32,
    /// Lookups the cache serves at once (gem5's `*_slots`): each lookup holds a port for
    /// `lookup_cycles`. The engine models the ports of the IOTLB, context and PASID caches;
    /// the paging-structure caches are looked up by a walker inside its slot.
    pub ports: u32,
}

/// A replacement policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Replacement {
    /// Least recently used.
    #[default]
    Lru,
    /// Bit pseudo-LRU (not-recently-used bits, `iotlb::Replacement::PseudoLru`): what the
    /// units' caches implement.
    Plru,
    /// A uniformly random way (the LLC model draws it from its seed).
    Random,
    /// First in, first out (gem5's round-robin `rr` is the nearest).
    Fifo,
}

impl Replacement {
    /// The policy's name in TOML.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Lru => "lru",
            Self::Plru => "plru",
            Self::Random => "random",
            Self::Fifo => "fifo",
        }
    }
}

/// Memory-resident structure accesses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryParams {
    /// Cycles of one read (or locked A/D update) served by DRAM.
    pub dram_cycles: u32,
    /// A last-level cache in front of DRAM for the unit's structure reads, or none (every
    /// access costs `dram_cycles`).
    pub llc: Option<LlcParams>,
}

/// The last-level-cache model: set-associative, deterministic, holding the lines the unit read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LlcParams {
    /// Capacity in bytes: a multiple of `line_bytes * ways`.
    pub size_bytes: u64,
    /// Associativity.
    pub ways: u32,
    /// Line size in bytes, a power of two.
    pub line_bytes: u32,
    /// Cycles of an access that hits (at most `dram_cycles`).
    pub hit_cycles: u32,
    /// Replacement policy (LRU when omitted).
    #[serde(default)]
    pub replacement: Replacement,
}

/// The walker's own cycles (gem5's `cycleSem` delays in `walkStage1And2` and `walkStage2`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WalkParams {
    /// Cycles at the start of each walk.
    pub start_cycles: u32,
    /// Cycles after each page-table read (decoding the entry), beside the read itself.
    pub per_read_cycles: u32,
}

/// The device-to-IOMMU link: a pipeline that accepts one transaction per cycle each way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkParams {
    /// Cycles from the device to the IOMMU.
    pub to_iommu_cycles: u32,
    /// Cycles from the IOMMU back to the device.
    pub from_iommu_cycles: u32,
}

/// The hop an IOTLB miss takes to the walk unit and back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MissPathParams {
    /// Cycles from the IOTLB to the unit behind it.
    pub to_walker_cycles: u32,
    /// Cycles back.
    pub from_walker_cycles: u32,
}

/// Address Translation Services.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AtsParams {
    /// Cycles of a translation request's round trip over the link (request and completion),
    /// charged instead of the link's two ways.
    pub round_trip_cycles: u32,
    /// Cycles of a device-TLB (ATC) hit, which never reaches the IOMMU.
    pub devtlb_hit_cycles: u32,
}

/// Command and invalidation-queue processing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueParams {
    /// Cycles to fetch and process one descriptor (command).
    pub per_descriptor_cycles: u32,
    /// Cycles of one wait descriptor (completion wait: its status write and ordering).
    pub per_wait_cycles: u32,
}

/// Why a parameter set was refused: one variant per check, each naming the field.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ParamError {
    /// The clock must be a finite positive frequency.
    #[error("clock_ghz = {0} must be a finite number above 0")]
    Clock(f64),
    /// A count that must not be zero.
    #[error("{field} must not be 0")]
    Zero {
        /// The field, as written in TOML (`iotlb.ways`).
        field: &'static str,
    },
    /// A cache's entries are not a multiple of its ways.
    #[error("{cache}.entries = {entries} is not a multiple of {cache}.ways = {ways}")]
    EntriesNotMultipleOfWays {
        /// The cache (`iotlb`, `context`, `pasid`, `pwc`).
        cache: &'static str,
        /// Its entries.
        entries: u32,
        /// Its ways.
        ways: u32,
    },
    /// A value above what the model or the units support.
    #[error("{field} = {value} exceeds {max}")]
    TooLarge {
        /// The field.
        field: &'static str,
        /// The value given.
        value: u64,
        /// The largest accepted.
        max: u64,
    },
    /// A value that must be a power of two.
    #[error("{field} = {value} must be a power of two")]
    NotPowerOfTwo {
        /// The field.
        field: &'static str,
        /// The value given.
        value: u64,
    },
    /// The LLC's size does not divide into whole sets.
    #[error("memory.llc.size_bytes = {size} is not a multiple of line_bytes x ways = {set_bytes}")]
    LlcSize {
        /// The size given.
        size: u64,
        /// Bytes per set.
        set_bytes: u64,
    },
    /// An LLC hit slower than DRAM.
    #[error("memory.llc.hit_cycles = {hit} exceeds memory.dram_cycles = {dram}")]
    LlcSlowerThanDram {
        /// The LLC hit cycles.
        hit: u32,
        /// The DRAM cycles.
        dram: u32,
    },
}

/// Why parameters could not be loaded or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TimingError {
    /// The file could not be read.
    #[error("reading timing parameters from {}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The TOML is malformed, has an unknown field or a value of the wrong type (the message
    /// names the field and its line).
    #[error("parsing timing parameters")]
    Parse(#[source] toml::de::Error),
    /// The parameters parse but are impossible.
    #[error("invalid timing parameters")]
    Invalid(#[source] ParamError),
    /// Serializing failed.
    #[error("writing timing parameters as TOML")]
    Serialize(#[source] toml::ser::Error),
}

/// The most ways a cache (the units', `iotlb::MAX_WAYS`) or the LLC model supports.
pub const MAX_WAYS: u32 = 64;
/// The most walker slots.
pub const MAX_WALKERS: u32 = 4096;
/// The most ports of a cache.
pub const MAX_PORTS: u32 = 64;
/// The largest LLC model, in bytes.
pub const MAX_LLC_BYTES: u64 = 1 << 30;
/// The most lines of the LLC model (1 GiB of 64-byte lines): the model keeps two words per
/// line, so a gigabyte of one-byte lines would take 16 GiB.
pub const MAX_LLC_LINES: u64 = 1 << 24;
/// The most entries of a cache (for the paging-structure caches, per level): the units
/// allocate every entry when they are built.
pub const MAX_CACHE_ENTRIES: u32 = 1 << 20;

impl TimingParams {
    /// Parses TOML and validates the result.
    pub fn from_toml_str(s: &str) -> Result<Self, TimingError> {
        let p: Self = toml::from_str(s).map_err(TimingError::Parse)?;
        p.validate().map_err(TimingError::Invalid)?;
        Ok(p)
    }

    /// Reads, parses and validates the TOML file at `path`.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, TimingError> {
        let path = path.as_ref();
        let s = std::fs::read_to_string(path).map_err(|source| TimingError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml_str(&s)
    }

    /// The parameters as TOML (without the presets' comments).
    pub fn to_toml_string(&self) -> Result<String, TimingError> {
        toml::to_string_pretty(self).map_err(TimingError::Serialize)
    }

    /// Checks every field (the first failure is returned).
    pub fn validate(&self) -> Result<(), ParamError> {
        if !(self.clock_ghz.is_finite() && self.clock_ghz > 0.0) {
            return Err(ParamError::Clock(self.clock_ghz));
        }
        if self.walkers == 0 {
            return Err(ParamError::Zero { field: "walkers" });
        }
        too_large("walkers", self.walkers.into(), MAX_WALKERS.into())?;
        for (name, c) in self.caches() {
            c.validate(name)?;
        }
        if let Some(llc) = &self.memory.llc {
            llc.validate(self.memory.dram_cycles)?;
        }
        Ok(())
    }

    /// The four caches with their TOML names.
    pub fn caches(&self) -> [(&'static str, &CacheParams); 4] {
        [
            ("iotlb", &self.iotlb),
            ("context", &self.context),
            ("pasid", &self.pasid),
            ("pwc", &self.pwc),
        ]
    }

    /// Gives the VT-d unit this parameter set's cache geometry: the context, PASID, IOTLB and
    /// per-level paging-structure cache entries, and the IOTLB's ways (the unit has one
    /// associativity for every cache). Returns what the unit cannot follow.
    #[must_use = "the deviations say where the unit differs from the parameters"]
    pub fn apply_to_vtd(&self, cfg: &mut VtdConfig) -> Vec<UnitDeviation> {
        cfg.context_cache_entries = self.unit_entries(&self.context) as usize;
        cfg.pasid_cache_entries = self.unit_entries(&self.pasid) as usize;
        cfg.iotlb_entries = self.unit_entries(&self.iotlb) as usize;
        cfg.pwc_entries = self.unit_entries(&self.pwc) as usize;
        cfg.ways = self.unit_ways() as usize;
        self.deviations()
    }

    /// Gives the AMD-Vi unit this parameter set's cache geometry (the DTE cache from
    /// `context`, the GCR3 cache from `pasid`, the page-directory caches from `pwc`), as
    /// [`Self::apply_to_vtd`] does.
    #[must_use = "the deviations say where the unit differs from the parameters"]
    pub fn apply_to_amdvi(&self, cfg: &mut AmdViConfig) -> Vec<UnitDeviation> {
        cfg.dte_cache_entries = self.unit_entries(&self.context) as usize;
        cfg.gcr3_cache_entries = self.unit_entries(&self.pasid) as usize;
        cfg.iotlb_entries = self.unit_entries(&self.iotlb) as usize;
        cfg.pdc_entries = self.unit_entries(&self.pwc) as usize;
        cfg.ways = self.unit_ways() as usize;
        self.deviations()
    }

    /// Where units built with [`Self::apply_to_vtd`] or [`Self::apply_to_amdvi`] differ from
    /// these parameters: one associativity for every cache (the IOTLB's), bit pseudo-LRU
    /// replacement, and a power-of-two set count (`crate::cache::geometry` rounds down).
    pub fn deviations(&self) -> Vec<UnitDeviation> {
        let ways = self.unit_ways();
        let mut out = Vec::new();
        for (cache, c) in self.caches() {
            if c.replacement != Replacement::Plru {
                out.push(UnitDeviation::Replacement {
                    cache,
                    asked: c.replacement,
                });
            }
            if c.ways != ways {
                out.push(UnitDeviation::Ways {
                    cache,
                    asked: c.ways,
                    used: ways,
                });
            }
            let used = self.unit_entries(c);
            if used != c.entries {
                out.push(UnitDeviation::Entries {
                    cache,
                    asked: c.entries,
                    used,
                });
            }
        }
        out
    }

    /// The associativity of every cache of a unit built from these parameters: the IOTLB's.
    fn unit_ways(&self) -> u32 {
        self.iotlb.ways.max(1)
    }

    /// The entries a unit's cache of geometry `c` holds: a power-of-two number of sets (at
    /// least one) of [`Self::unit_ways`] ways each. The units are given this number, so that a
    /// cache smaller than one set of the IOTLB's ways is one set, not refused.
    fn unit_entries(&self, c: &CacheParams) -> u32 {
        let ways = self.unit_ways();
        let sets = (c.entries / ways).max(1);
        (1u32 << (u32::BITS - 1 - sets.leading_zeros())) * ways
    }
}

impl CacheParams {
    fn validate(&self, cache: &'static str) -> Result<(), ParamError> {
        let zero = |field| Err(ParamError::Zero { field });
        if self.entries == 0 {
            return zero(field(cache, "entries"));
        }
        if self.ways == 0 {
            return zero(field(cache, "ways"));
        }
        if self.ports == 0 {
            return zero(field(cache, "ports"));
        }
        too_large(
            field(cache, "entries"),
            self.entries.into(),
            MAX_CACHE_ENTRIES.into(),
        )?;
        too_large(field(cache, "ways"), self.ways.into(), MAX_WAYS.into())?;
        too_large(field(cache, "ports"), self.ports.into(), MAX_PORTS.into())?;
        if !self.entries.is_multiple_of(self.ways) {
            return Err(ParamError::EntriesNotMultipleOfWays {
                cache,
                entries: self.entries,
                ways: self.ways,
            });
        }
        Ok(())
    }
}

impl LlcParams {
    fn validate(&self, dram: u32) -> Result<(), ParamError> {
        if self.line_bytes == 0 {
            return Err(ParamError::Zero {
                field: "memory.llc.line_bytes",
            });
        }
        if !self.line_bytes.is_power_of_two() {
            return Err(ParamError::NotPowerOfTwo {
                field: "memory.llc.line_bytes",
                value: self.line_bytes.into(),
            });
        }
        if self.ways == 0 {
            return Err(ParamError::Zero {
                field: "memory.llc.ways",
            });
        }
        too_large("memory.llc.ways", self.ways.into(), MAX_WAYS.into())?;
        if self.size_bytes == 0 {
            return Err(ParamError::Zero {
                field: "memory.llc.size_bytes",
            });
        }
        too_large("memory.llc.size_bytes", self.size_bytes, MAX_LLC_BYTES)?;
        let set_bytes = u64::from(self.line_bytes) * u64::from(self.ways);
        if !self.size_bytes.is_multiple_of(set_bytes) {
            return Err(ParamError::LlcSize {
                size: self.size_bytes,
                set_bytes,
            });
        }
        too_large(
            "memory.llc lines (size_bytes / line_bytes)",
            self.size_bytes / u64::from(self.line_bytes),
            MAX_LLC_LINES,
        )?;
        if self.hit_cycles > dram {
            return Err(ParamError::LlcSlowerThanDram {
                hit: self.hit_cycles,
                dram,
            });
        }
        Ok(())
    }

    /// Number of sets.
    pub fn sets(&self) -> u64 {
        self.size_bytes / (u64::from(self.line_bytes) * u64::from(self.ways))
    }
}

fn too_large(field: &'static str, value: u64, max: u64) -> Result<(), ParamError> {
    if value > max {
        return Err(ParamError::TooLarge { field, value, max });
    }
    Ok(())
}

/// `cache.name` for the caches' fields (static strings, for the `Copy` error).
fn field(cache: &'static str, name: &'static str) -> &'static str {
    const FIELDS: [[&str; 3]; 4] = [
        ["iotlb.entries", "iotlb.ways", "iotlb.ports"],
        ["context.entries", "context.ways", "context.ports"],
        ["pasid.entries", "pasid.ways", "pasid.ports"],
        ["pwc.entries", "pwc.ways", "pwc.ports"],
    ];
    let row = match cache {
        "iotlb" => 0,
        "context" => 1,
        "pasid" => 2,
        _ => 3,
    };
    let col = match name {
        "entries" => 0,
        "ways" => 1,
        _ => 2,
    };
    FIELDS[row][col]
}

/// What a unit built from the parameters does differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnitDeviation {
    /// The unit replaces by bit pseudo-LRU.
    Replacement {
        /// The cache.
        cache: &'static str,
        /// The policy asked for.
        asked: Replacement,
    },
    /// The unit gives every cache the IOTLB's associativity.
    Ways {
        /// The cache.
        cache: &'static str,
        /// The ways asked for.
        asked: u32,
        /// The ways the unit uses.
        used: u32,
    },
    /// The unit rounds the set count down to a power of two.
    Entries {
        /// The cache.
        cache: &'static str,
        /// The entries asked for.
        asked: u32,
        /// The entries the unit holds.
        used: u32,
    },
}

impl fmt::Display for UnitDeviation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Replacement { cache, asked } => write!(
                f,
                "{cache}: the unit replaces by bit pseudo-LRU, not {}",
                asked.name()
            ),
            Self::Ways { cache, asked, used } => write!(
                f,
                "{cache}: the unit uses {used} ways (the IOTLB's) instead of {asked}"
            ),
            Self::Entries { cache, asked, used } => write!(
                f,
                "{cache}: the unit holds {used} entries (a power-of-two set count) instead of {asked}"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::timing::Preset;

    fn cache() -> impl Strategy<Value = CacheParams> {
        (
            1u32..=16,
            1u32..=8,
            prop::sample::select(vec![
                Replacement::Lru,
                Replacement::Plru,
                Replacement::Random,
                Replacement::Fifo,
            ]),
            0u32..100,
            0u32..100,
            1u32..=8,
        )
            .prop_map(
                |(sets, ways, replacement, lookup, fill, ports)| CacheParams {
                    entries: sets * ways,
                    ways,
                    replacement,
                    lookup_cycles: lookup,
                    fill_cycles: fill,
                    ports,
                },
            )
    }

    fn params() -> impl Strategy<Value = TimingParams> {
        (
            (0.1f64..10.0, 1u32..64, any::<bool>(), 0u32..1000),
            [cache(), cache(), cache(), cache()],
            (1u32..1000, prop::option::of((1u64..64, 1u32..16, 0u32..=6))),
            prop::array::uniform8(0u32..1000),
        )
            .prop_map(
                |((clock, walkers, first, mmio), [i, c, p, w], (dram, llc), n)| TimingParams {
                    clock_ghz: clock,
                    walkers,
                    mmio_cycles: mmio,
                    iotlb_first: first,
                    iotlb: i,
                    context: c,
                    pasid: p,
                    pwc: w,
                    memory: MemoryParams {
                        dram_cycles: dram,
                        llc: llc.map(|(sets, ways, shift)| LlcParams {
                            size_bytes: (sets * u64::from(ways)) << (6 + shift),
                            ways,
                            line_bytes: 64 << shift,
                            hit_cycles: dram / 2,
                            replacement: Replacement::Lru,
                        }),
                    },
                    walk: WalkParams {
                        start_cycles: n[0],
                        per_read_cycles: n[1],
                    },
                    link: LinkParams {
                        to_iommu_cycles: n[2],
                        from_iommu_cycles: n[3],
                    },
                    miss_path: MissPathParams {
                        to_walker_cycles: n[4],
                        from_walker_cycles: n[5],
                    },
                    ats: AtsParams {
                        round_trip_cycles: n[6],
                        devtlb_hit_cycles: n[7],
                    },
                    queue: QueueParams {
                        per_descriptor_cycles: n[0] + 1,
                        per_wait_cycles: n[1] + 1,
                    },
                },
            )
    }

    proptest! {
        #[test]
        fn toml_round_trips(p in params()) {
            prop_assert_eq!(p.validate(), Ok(()));
            let s = p.to_toml_string().unwrap();
            prop_assert_eq!(TimingParams::from_toml_str(&s).unwrap(), p);
        }
    }

    /// A preset's TOML with one line replaced.
    fn edited(from: &str, to: &str) -> String {
        let s = Preset::VtdServer.toml();
        assert!(s.contains(from), "{from}");
        s.replacen(from, to, 1)
    }

    fn invalid(s: &str) -> ParamError {
        match TimingParams::from_toml_str(s) {
            Err(TimingError::Invalid(e)) => e,
            other => panic!("expected a validation error, got {other:?}"),
        }
    }

    fn parse_error(s: &str) -> String {
        match TimingParams::from_toml_str(s) {
            Err(TimingError::Parse(e)) => e.to_string(),
            other => panic!("expected a parse error, got {other:?}"),
        }
    }

    #[test]
    fn a_bad_file_gets_the_error_naming_its_field() {
        // Unknown, missing and mistyped fields: toml's message names them.
        let e = parse_error(&edited("lookup_cycles = 2", "lookup_cylces = 2"));
        assert!(e.contains("lookup_cylces"), "{e}");
        let e = parse_error(&edited("walkers = 8", ""));
        assert!(e.contains("walkers"), "{e}");
        let e = parse_error(&edited("ways = 4", "ways = \"four\""));
        assert!(e.contains("ways") && e.contains("line"), "{e}");
        let e = parse_error(&edited("replacement = \"plru\"", "replacement = \"mru\""));
        assert!(e.contains("mru") && e.contains("plru"), "{e}");
        // Impossible values: the typed error names the field.
        assert_eq!(
            invalid(&edited("ways = 4", "ways = 0")),
            ParamError::Zero {
                field: "iotlb.ways"
            }
        );
        assert_eq!(
            invalid(&edited("walkers = 8", "walkers = 0")),
            ParamError::Zero { field: "walkers" }
        );
        assert_eq!(
            invalid(&edited("entries = 64", "entries = 66")),
            ParamError::EntriesNotMultipleOfWays {
                cache: "iotlb",
                entries: 66,
                ways: 4
            }
        );
        assert_eq!(
            invalid(&edited("clock_ghz = 2.0", "clock_ghz = 0.0")),
            ParamError::Clock(0.0)
        );
        assert_eq!(
            invalid(&edited("clock_ghz = 2.0", "clock_ghz = -1.5")),
            ParamError::Clock(-1.5)
        );
        assert_eq!(
            invalid(&edited("line_bytes = 64", "line_bytes = 48")),
            ParamError::NotPowerOfTwo {
                field: "memory.llc.line_bytes",
                value: 48
            }
        );
        assert_eq!(
            invalid(&edited("size_bytes = 2097152", "size_bytes = 1000")),
            ParamError::LlcSize {
                size: 1000,
                set_bytes: 1024
            }
        );
        assert_eq!(
            invalid(&edited("hit_cycles = 60", "hit_cycles = 600")),
            ParamError::LlcSlowerThanDram {
                hit: 600,
                dram: 180
            }
        );
        let e = invalid(&edited("ports = 2", "ports = 0"));
        assert_eq!(
            e,
            ParamError::Zero {
                field: "iotlb.ports"
            }
        );
        assert_eq!(e.to_string(), "iotlb.ports must not be 0");
        let mut p = Preset::VtdServer.params();
        p.pwc.ways = 128;
        p.pwc.entries = 128;
        assert_eq!(
            p.validate(),
            Err(ParamError::TooLarge {
                field: "pwc.ways",
                value: 128,
                max: 64
            })
        );
    }

    /// Sizes a unit cannot allocate are refused: a cache of more than [`MAX_CACHE_ENTRIES`]
    /// entries, an LLC of more than [`MAX_LLC_LINES`] lines (a gigabyte of one-byte lines was
    /// an 8 GiB allocation, found by the `timing_params` fuzz target).
    #[test]
    fn sizes_the_models_cannot_allocate_are_refused() {
        let mut p = Preset::VtdServer.params();
        p.iotlb.entries = 1 << 26;
        assert_eq!(
            p.validate(),
            Err(ParamError::TooLarge {
                field: "iotlb.entries",
                value: 1 << 26,
                max: MAX_CACHE_ENTRIES.into()
            })
        );
        let mut p = Preset::VtdServer.params();
        let llc = p.memory.llc.as_mut().unwrap();
        (llc.size_bytes, llc.line_bytes, llc.ways) = (MAX_LLC_BYTES, 1, 1);
        assert!(
            matches!(p.validate(), Err(ParamError::TooLarge { value, .. }) if value == MAX_LLC_BYTES),
            "{:?}",
            p.validate()
        );
        p.memory.llc.as_mut().unwrap().line_bytes = 64;
        assert_eq!(
            p.validate(),
            Ok(()),
            "1 GiB of 64-byte lines is the largest"
        );
    }

    /// A cache smaller than one set of the IOTLB's ways is given to the units as one set, as
    /// the deviations say, instead of a geometry the units refuse (found by the
    /// `timing_params` fuzz target).
    #[test]
    fn a_cache_below_one_set_of_the_units_ways_is_one_set() {
        let mut p = Preset::VtdServer.params();
        (p.context.entries, p.context.ways) = (2, 2);
        assert_eq!(p.validate(), Ok(()));
        let mut v = VtdConfig::default();
        let d = p.apply_to_vtd(&mut v);
        assert!(d.contains(&UnitDeviation::Entries {
            cache: "context",
            asked: 2,
            used: 4
        }));
        assert_eq!(v.context_cache_entries, 4);
        v.validate().unwrap();
        let mut a = AmdViConfig::default();
        let _ = p.apply_to_amdvi(&mut a);
        assert_eq!(a.dte_cache_entries, 4);
        a.validate().unwrap();
    }

    #[test]
    fn load_names_the_file_it_cannot_read_and_reads_the_one_it_can() {
        let missing = std::env::temp_dir().join("iommu-timing-no-such-file.toml");
        match TimingParams::load(&missing) {
            Err(TimingError::Io { path, .. }) => assert_eq!(path, missing),
            other => panic!("{other:?}"),
        }
        let file = std::env::temp_dir().join(format!("iommu-timing-{}.toml", std::process::id()));
        std::fs::write(&file, Preset::AmdviServer.toml()).unwrap();
        let loaded = TimingParams::load(&file);
        std::fs::remove_file(&file).unwrap();
        assert_eq!(loaded.unwrap(), Preset::AmdviServer.params());
    }

    #[test]
    fn the_units_take_their_geometry_from_the_parameters() {
        let p = Preset::VtdServer.params();
        let mut v = VtdConfig::default();
        assert_eq!(p.apply_to_vtd(&mut v), []);
        assert_eq!(
            (
                v.context_cache_entries,
                v.pasid_cache_entries,
                v.iotlb_entries,
                v.pwc_entries,
                v.ways
            ),
            (64, 64, 64, 32, 4)
        );
        v.validate().unwrap();
        let mut a = AmdViConfig::default();
        assert_eq!(Preset::AmdviServer.params().apply_to_amdvi(&mut a), []);
        assert_eq!(
            (
                a.dte_cache_entries,
                a.gcr3_cache_entries,
                a.iotlb_entries,
                a.pdc_entries,
                a.ways
            ),
            (64, 64, 64, 32, 4)
        );
        // gem5's caches replace round-robin, and its 348-entry walk-cache partition is not a
        // power-of-two set count: the unit says so.
        let g = Preset::Gem5Smmuv3.params();
        let d = g.apply_to_vtd(&mut v);
        assert_eq!(v.iotlb_entries, 2048);
        assert!(d.contains(&UnitDeviation::Entries {
            cache: "pwc",
            asked: 348,
            used: 256
        }));
        assert_eq!(
            d.iter()
                .filter(|d| matches!(d, UnitDeviation::Replacement { .. }))
                .count(),
            4
        );
        let mut odd = Preset::VtdServer.params();
        odd.context.ways = 8;
        let d = odd.apply_to_vtd(&mut v);
        assert_eq!(
            d,
            [UnitDeviation::Ways {
                cache: "context",
                asked: 8,
                used: 4
            }]
        );
        assert!(d[0].to_string().contains("4 ways"), "{}", d[0]);
    }
}

//! The robustness checks of the files the simulator and the daemon read, shared by the
//! cargo-fuzz targets `trace_file` and `timing_params` and their corpus replays
//! (`tests/fuzz_replay.rs`).
//!
//! [`check_trace_file`] reads its input as a trace file ([`trace_file::read`]); the oracles:
//! - nothing panics;
//! - a file that reads holds one record per line that is neither blank nor a comment, each
//!   with `len >= 1`, in nondecreasing `t`;
//! - writing the records back ([`trace_file::write`]) and reading them again gives the same
//!   records, and writing those gives the same bytes;
//! - an error names a line of the input.
//!
//! [`check_timing_params`] reads its input as a timing-parameter file
//! ([`TimingParams::from_toml_str`]): either the whole input (lossily as UTF-8), or one of the
//! presets edited by the input (values replaced by small, huge, negative, fractional,
//! non-finite or mistyped ones, lines deleted, duplicated or inserted), which reaches past the
//! parser far more often than raw bytes do. The oracles, for every set that loads:
//! - it validates, and `to_toml_string` then `from_toml_str` gives it back equal;
//! - a cost model built from it prices fixed traces (an IOTLB hit, a cold walk, a nested walk
//!   with A/D updates, a fault before the IOTLB, and full traces of [`TRACE_CAPACITY`]
//!   events) without an arithmetic panic, every cost the sum of its components, the link,
//!   front-cache and walker cycles parts of its total;
//! - an engine built from it places those costs in time: a translation that did not coalesce
//!   is done exactly its cost plus its queueing after it arrived; invalidations complete after
//!   they arrive; the report counts every translation;
//! - the VT-d and AMD-Vi units take its cache geometry ([`TimingParams::apply_to_vtd`],
//!   [`TimingParams::apply_to_amdvi`]) and come up with it, holding the entries
//!   [`TimingParams::deviations`] says they hold.

use std::fmt::Write as _;

use pagewalk::FlatMem;

use super::Input;
use crate::amdvi::{AmdVi, AmdViConfig};
use crate::sim::trace_file;
use crate::timing::{CostModel, Engine, Preset, TimingParams, UnitDeviation};
use crate::trace::{CacheId, MemTarget, Stage, TRACE_CAPACITY, Trace, TraceEvent, WalkKind};
use crate::vtd::{Vtd, VtdConfig};

/// Runs `data` as a trace file (see the module notes); panics only if an oracle fails.
pub fn check_trace_file(data: &[u8]) {
    let lines = data.split(|&b| b == b'\n').count();
    let recs = match trace_file::read(data) {
        Ok(r) => r,
        Err(trace_file::TraceFileError::Parse { line, .. }) => {
            assert!(
                (1..=lines).contains(&line),
                "an error at line {line} of {lines}"
            );
            return;
        }
        Err(trace_file::TraceFileError::Io(_)) => return,
    };
    let text = std::str::from_utf8(data).expect("a file that reads is UTF-8");
    let records = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .count();
    assert_eq!(recs.len(), records, "one record per line");
    assert!(recs.iter().all(|r| r.len >= 1), "a record of no bytes");
    assert!(
        recs.windows(2).all(|w| w[0].t <= w[1].t),
        "records out of time order"
    );
    let mut out = Vec::new();
    for r in &recs {
        trace_file::write(&mut out, r).expect("writing to memory");
    }
    let again = trace_file::read(&out[..]).expect("what was written reads");
    assert_eq!(again, recs, "the records written read back different");
    let mut out2 = Vec::new();
    for r in &again {
        trace_file::write(&mut out2, r).expect("writing to memory");
    }
    assert_eq!(out, out2, "writing is not deterministic");
}

/// Runs `data` as a timing-parameter file (see the module notes); panics only if an oracle
/// fails.
pub fn check_timing_params(data: &[u8]) {
    let text = timing_text(data);
    let Ok(p) = TimingParams::from_toml_str(&text) else {
        return;
    };
    assert_eq!(p.validate(), Ok(()), "a loaded set that does not validate");
    let s = p.to_toml_string().expect("a valid set serializes");
    let back = TimingParams::from_toml_str(&s)
        .unwrap_or_else(|e| panic!("{s}\ndoes not load back: {e:?}"));
    assert_eq!(back, p, "the set changed through TOML:\n{s}");
    price(&p);
    build_units(&p);
}

/// The TOML text of `data`: the whole input, or a preset the input edits.
fn timing_text(data: &[u8]) -> String {
    let mut inp = Input(data);
    let Some(mode) = inp.u8() else {
        return String::new();
    };
    if mode & 0x80 == 0 {
        return String::from_utf8_lossy(inp.0).into_owned();
    }
    let preset = Preset::all()[usize::from(mode & 3) % Preset::all().len()];
    let mut lines: Vec<String> = preset.toml().lines().map(str::to_string).collect();
    for _ in 0..16 {
        let (Some(op), Some(at)) = (inp.u8(), inp.u8()) else {
            break;
        };
        let i = usize::from(at) % lines.len().max(1);
        let edited = match op % 8 {
            0..=3 => set_value(lines.get(i), &mut inp),
            4 if !lines.is_empty() => {
                lines.remove(i);
                continue;
            }
            5 => lines.get(i).cloned(),
            6 => {
                let n = usize::from(inp.u8().unwrap_or(0) % 32);
                inp.bytes(n)
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
            }
            _ => {
                // Drops the LLC's section, or sets its replacement (an optional field).
                if lines.iter().any(|l| l.trim() == "[memory.llc]") && at & 1 == 0 {
                    let start = lines.iter().position(|l| l.trim() == "[memory.llc]");
                    if let Some(s) = start {
                        let end = (s + 1..lines.len())
                            .find(|&j| lines[j].trim_start().starts_with('['))
                            .unwrap_or(lines.len());
                        lines.drain(s..end);
                    }
                    continue;
                }
                Some("replacement = \"random\"".to_string())
            }
        };
        match (edited, op % 8) {
            (Some(l), 0..=3) if i < lines.len() => lines[i] = l,
            (Some(l), _) => lines.insert(i.min(lines.len()), l),
            (None, _) => {}
        }
    }
    lines.join("\n")
}

/// Line `line` (`key = value  # comment`) with a value from the input; `None` for a line
/// without a value.
fn set_value(line: Option<&String>, inp: &mut Input<'_>) -> Option<String> {
    let (key, _) = line?.split_once('=')?;
    let sel = inp.u8()?;
    let v = match sel % 12 {
        0 => u32::from(inp.u8()?).to_string(),
        1 => inp.u32()?.to_string(),
        2 => (u32::MAX - u32::from(inp.u8()?)).to_string(),
        3 => inp.u64()?.to_string(),
        4 => format!("-{}", inp.u8()?),
        5 => [
            "0.0", "-0.0", "1e-300", "1e300", "inf", "nan", "2.5", "0.001",
        ][usize::from(inp.u8()? % 8)]
        .to_string(),
        6 => (1u64 << (inp.u8()? % 64)).to_string(),
        7 => [
            "\"lru\"",
            "\"plru\"",
            "\"random\"",
            "\"fifo\"",
            "\"mru\"",
            "\"\"",
        ][usize::from(inp.u8()? % 6)]
        .to_string(),
        8 => ["true", "false"][usize::from(inp.u8()? % 2)].to_string(),
        9 => ["{}", "[]", "[1, 2]", "1970-01-01"][usize::from(inp.u8()? % 4)].to_string(),
        10 => (u64::from(inp.u8()?) * 64).to_string(),
        _ => (u64::from(inp.u16()?) << (inp.u8()? % 24)).to_string(),
    };
    Some(format!("{}= {v}", key))
}

/// The traces every loaded parameter set must price.
fn fixed_traces() -> Vec<Trace> {
    let ss = |level| MemTarget::PageTable {
        stage: Stage::Second,
        level,
    };
    let fs = |level| MemTarget::PageTable {
        stage: Stage::First,
        level,
    };
    let pwc = |level| CacheId::PagingStructure {
        stage: Stage::Second,
        level,
    };
    let mut hit = Trace::new();
    hit.cache(CacheId::Context, true);
    hit.cache(CacheId::Iotlb, true);

    let mut cold = Trace::new();
    cold.cache(CacheId::Context, false);
    cold.read(MemTarget::RootEntry, 0x1000);
    cold.read(MemTarget::ContextEntry, 0x2008);
    cold.fill(CacheId::Context);
    cold.cache(CacheId::Iotlb, false);
    for level in (2..=4).rev() {
        cold.cache(pwc(level), false);
    }
    cold.walk_start(WalkKind::OneD(Stage::Second), 4);
    for level in (1..=4u8).rev() {
        cold.read(ss(level), 0x3000 + u64::from(level) * 0x1000);
    }
    for level in 2..=4 {
        cold.fill(pwc(level));
    }
    cold.walk_end(false);
    cold.fill(CacheId::Iotlb);

    let mut nested = Trace::new();
    nested.cache(CacheId::Context, true);
    nested.cache(CacheId::Pasid, false);
    nested.read(MemTarget::PasidDirEntry, 0x9000);
    nested.read(MemTarget::PasidEntry, 0xa000);
    nested.cache(CacheId::Iotlb, false);
    nested.walk_start(WalkKind::Nested, 4);
    for i in 0..24u64 {
        let t = if i % 5 == 4 {
            fs(4 - (i / 5) as u8)
        } else {
            ss(4 - (i % 5) as u8)
        };
        nested.read(t, 0x10_0000 + i * 0x40);
    }
    nested.write(fs(1), 0x10_0000);
    nested.write(ss(1), 0x10_0040);
    nested.walk_end(false);
    nested.fill(CacheId::Iotlb);

    let mut fault = Trace::new();
    fault.cache(CacheId::Context, false);
    fault.read(MemTarget::DeviceTableEntry, 0x8000);
    fault.read(MemTarget::Gcr3Entry { level: 1 }, 0x8100);

    // Full traces: lookups held back for the IOTLB (`iotlb_first`), and reads.
    let mut held = Trace::new();
    for i in 0..TRACE_CAPACITY {
        let c = if i % 2 == 0 {
            CacheId::Context
        } else {
            CacheId::Pasid
        };
        held.cache(c, false);
    }
    let mut reads = Trace::new();
    reads.walk_start(WalkKind::OneD(Stage::First), 5);
    for i in 0..TRACE_CAPACITY as u64 {
        reads.push(TraceEvent::MemRead {
            target: fs(1 + (i % 6) as u8),
            addr: i << 30,
        });
    }
    vec![hit, cold, nested, fault, held, reads, Trace::new()]
}

/// The cost model's and the engine's oracles (see the module notes).
fn price(p: &TimingParams) {
    let traces = fixed_traces();
    let mut model = CostModel::with_seed(p, 7);
    let dev = model.device_tlb_hit();
    assert_eq!(dev.total, u64::from(p.ats.devtlb_hit_cycles));
    let mut costs = Vec::new();
    for t in &traces {
        for c in [model.cost(t), model.cost_ats(t)] {
            assert_eq!(c.total, c.components(), "{c:?}");
            let front: u64 = c.front().iter().map(|u| u64::from(u.cycles)).sum();
            let links = u64::from(c.link_to_iommu) + u64::from(c.link_from_iommu);
            assert!(
                links + front + c.walk_cycles <= c.total,
                "the engine's parts exceed the total: {c:?}"
            );
            costs.push(c);
        }
    }
    let mut engine = Engine::new(p, 3);
    let mut translations = 0u64;
    let mut arrival = 0u64;
    for (i, c) in costs.iter().enumerate() {
        for _ in 0..3 {
            let done = engine.translate(arrival, (i % 3) as u32, (i % 4) as u64, c);
            translations += 1;
            assert!(arrival <= done.start && done.start <= done.done, "{done:?}");
            if !done.coalesced {
                assert_eq!(
                    done.done - arrival,
                    c.total + done.queued_cycles,
                    "{c:?} placed as {done:?}"
                );
            }
            if i % 5 == 0 {
                let inv = engine.invalidate(arrival, 1 + i as u32, 1);
                assert!(arrival <= inv.start && inv.start <= inv.done, "{inv:?}");
            }
            arrival += [0, 1, 7, 1 << 20][i % 4];
        }
    }
    let report = engine.report();
    assert_eq!(report.translations, translations);
}

/// The units take the set's cache geometry, hold what the deviations say, and come up with
/// it (small geometries only: each input builds them).
fn build_units(p: &TimingParams) {
    let mut vtd = VtdConfig::default();
    let dv = p.apply_to_vtd(&mut vtd);
    let mut amd = AmdViConfig::default();
    let da = p.apply_to_amdvi(&mut amd);
    assert_eq!(dv, da, "the two units deviate differently");
    for (name, c) in p.caches() {
        let used = dv
            .iter()
            .find_map(|d| match *d {
                UnitDeviation::Entries { cache, used, .. } if cache == name => Some(used),
                _ => None,
            })
            .unwrap_or(c.entries);
        let given = match name {
            "iotlb" => vtd.iotlb_entries,
            "context" => vtd.context_cache_entries,
            "pasid" => vtd.pasid_cache_entries,
            _ => vtd.pwc_entries,
        };
        let built = crate::cache::geometry(given, vtd.ways)
            .ok()
            .map(|g| g.sets * g.ways);
        assert_eq!(
            built,
            Some(used as usize),
            "{name}: the unit's cache is not what the deviations say ({dv:?})"
        );
    }
    vtd.validate()
        .unwrap_or_else(|e| panic!("VT-d refuses the geometry of a valid set: {e:?}"));
    let entries = vtd.iotlb_entries + vtd.context_cache_entries + vtd.pasid_cache_entries;
    if entries + 4 * vtd.pwc_entries > 4096 {
        return;
    }
    let mut why = String::new();
    if let Err(e) = Vtd::new(FlatMem::new(0, 4096), vtd, Box::new(|_| {})) {
        let _ = write!(why, "VT-d: {e:?} ");
    }
    if let Err(e) = AmdVi::new(FlatMem::new(0, 4096), amd, Box::new(|_| {})) {
        let _ = write!(why, "AMD-Vi: {e:?}");
    }
    assert!(
        why.is_empty(),
        "a unit refuses a valid set's geometry: {why}"
    );
}

//! The robustness check of the control socket's request handlers, shared by the cargo-fuzz
//! target `control_lines` and its corpus replay (`tests/fuzz_replay.rs`).
//!
//! [`check_control`] reads its input as a sequence of request lines sent to one of the
//! socket's two handlers, as `serve_connection` hands them over (lossily UTF-8, trimmed, blank
//! lines skipped): [`handle_line_observed`] in front of a virtio-iommu device over the VT-d
//! model (legacy or scalable mode, with a domain mapping two windows for requester 0x20), or
//! [`handle_register_front_observed`] in front of that device's unit, as under the register
//! front; timing on or off; one endpoint device whose DMA goes through the daemon's
//! observers. The lines are raw bytes, well-formed `translate`, `domains`, `stats`,
//! `endpoints` and `record` requests with fields from the input, and near-valid objects (known
//! and unknown commands and fields, values of every JSON type, duplicates); between them the
//! endpoint's DMA asks for translations, which a recording in progress records. The oracles:
//! - nothing panics, and every answer is a JSON object with a boolean `ok`;
//! - the answer is the one the request calls for: `ok: false` exactly for a line that does not
//!   parse as a command, a `translate` whose endpoint is no requester id, a `record` whose file
//!   cannot be created, and, under the register front, `translate` and `domains`; an `ok: true`
//!   translation has exactly one of `translation` and `fault`, and `cycles` exactly when timing
//!   is on;
//! - `domains`, `stats` and `endpoints` change nothing, and a refused request changes nothing
//!   they report (domains and mappings, core, unit, cache, front and endpoint counters), nor
//!   the recorder;
//! - `record` starts and stops as a model of the recorder says: the recording it names, the
//!   one it stops, and the file a stopped recording leaves, which reads as a trace file of as
//!   many records as the endpoint's DMA asked for while it ran.
//!
//! `record` writes only inside a scratch directory of the check's own (under the system's
//! temporary directory, removed at the end): every line is parsed as the handlers parse it
//! (`serde_json::from_str::<Command>`), and one that parses as a `record` with a path is
//! replaced by a `record` of a path inside the directory, chosen from the original: one of two
//! files, a file in a directory that does not exist, or the directory itself (the last two
//! are refused). No other command touches the file system, so no line the handlers see can
//! make them write elsewhere; the check also asserts that every recording started is inside
//! the directory.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use iommu_emulator::fuzz_support::Input;
use iommu_emulator::sim::trace_file;
use iommu_emulator::timing::Preset;
use iommu_emulator::{
    AccessKind, Core, CoreConfig, DmaRequest, EndpointSet, MapFlags, PciBdf, PrivateRegion, Unit,
    VtdConfig, VtdDriver, VtdMode,
};
use pagewalk::FlatMem;
use serde_json::{Value, json};

use crate::control::{Command, handle_line_observed, handle_register_front_observed};
use crate::device::IommuDevice;
use crate::endpoint::engine::EndpointStats;
use crate::endpoint::observe::{Observed, Observers};
use crate::endpoint::server::EndpointHandle;
use crate::endpoint::{DmaTranslator, EndpointKind, EndpointSpec, UnitTranslator};
use crate::register_front::FrontStats;

/// The endpoint device's requester id, attached to domain 3.
const RID: u16 = 0x20;
/// The IOMMU-private region the VT-d model keeps its structures in (and all it reads).
const PRIVATE: PrivateRegion = PrivateRegion {
    base: 0x1000_0000,
    size: 1 << 20,
};

/// What the lines are sent to.
struct Setup {
    device: Arc<IommuDevice>,
    unit: Arc<dyn Unit>,
    front: Option<FrontStats>,
    obs: Observers,
    endpoints: Vec<Arc<EndpointHandle>>,
    dma: Arc<Observed>,
    timing: bool,
    scratch: PathBuf,
}

impl Setup {
    fn new(flags: u8) -> Self {
        let mode = if flags & 4 == 0 {
            VtdMode::Legacy
        } else {
            VtdMode::Scalable
        };
        let cfg = VtdConfig {
            context_cache_entries: 8,
            pasid_cache_entries: 8,
            iotlb_entries: 16,
            pwc_entries: 8,
            ways: 2,
            ..VtdConfig::default()
        };
        let mem = FlatMem::new(PRIVATE.base, PRIVATE.size as usize);
        let driver = VtdDriver::with_unit(mem, cfg, PRIVATE, mode).expect("the VT-d model");
        let core_cfg = CoreConfig {
            endpoints: EndpointSet::from_ranges([0..=0xff]),
            ..CoreConfig::default()
        };
        let core = Arc::new(Core::new(core_cfg, Arc::new(driver)).expect("a core"));
        core.attach(3, u32::from(RID), false).expect("attach");
        core.map(3, 0x1000, 0x1fff, 0xa000, MapFlags::RW)
            .expect("map");
        core.map(3, 0x20_0000, 0x3f_ffff, 0x8000_0000, MapFlags::RW)
            .expect("map");
        let unit = core.unit().clone();
        let device = Arc::new(IommuDevice::new(core.clone(), 64).expect("a device"));
        let timing = flags & 2 != 0;
        let obs = Observers::new(timing.then(|| Preset::VtdServer.params()).as_ref());
        let front = (flags & 1 != 0).then(|| {
            let f = FrontStats::default();
            f.bar0.store(u64::MAX, Ordering::Relaxed);
            f
        });
        let translator: Arc<dyn DmaTranslator> = match front {
            Some(_) => Arc::new(UnitTranslator(unit.clone())),
            None => core,
        };
        let dma = obs.endpoint(translator);
        static SCRATCH: AtomicU64 = AtomicU64::new(0);
        let scratch = std::env::temp_dir().join(format!(
            "iommu-fuzz-control-{}-{}",
            std::process::id(),
            SCRATCH.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&scratch).expect("the scratch directory");
        let endpoints = vec![Arc::new(EndpointHandle {
            spec: EndpointSpec {
                kind: EndpointKind::Dma,
                bdf: PciBdf::from_rid(0, RID),
                socket: scratch.join("endpoint.sock"),
                bypass_iommu: false,
            },
            stats: Arc::new(EndpointStats::default()),
            observed: Some(dma.clone()),
        })];
        Setup {
            device,
            unit,
            front,
            obs,
            endpoints,
            dma,
            timing,
            scratch,
        }
    }

    fn answer(&self, line: &str) -> Value {
        match &self.front {
            None => handle_line_observed(&self.device, &self.endpoints, &self.obs, line),
            Some(f) => {
                handle_register_front_observed(&*self.unit, f, &self.endpoints, &self.obs, line)
            }
        }
    }

    /// What the read-only commands report, and whether the recorder is on.
    fn snapshot(&self) -> (Vec<Value>, bool) {
        let reads: &[&str] = match self.front {
            None => &[
                r#"{"cmd":"domains"}"#,
                r#"{"cmd":"stats"}"#,
                r#"{"cmd":"endpoints"}"#,
            ],
            Some(_) => &[r#"{"cmd":"stats"}"#, r#"{"cmd":"endpoints"}"#],
        };
        let v = reads.iter().map(|l| self.answer(l)).collect();
        (v, self.obs.recorder.is_on())
    }

    /// `line` with the path of a `record` replaced by one inside the scratch directory.
    fn confine(&self, line: &str) -> String {
        let Ok(Command::Record { path: Some(p) }) = serde_json::from_str::<Command>(line) else {
            return line.to_string();
        };
        let pick = p
            .as_os_str()
            .as_encoded_bytes()
            .iter()
            .fold(0u8, |a, b| a.wrapping_mul(31).wrapping_add(*b));
        let to = match pick % 6 {
            0..=3 => self.scratch.join(format!("rec{}.jsonl", pick % 2)),
            4 => self.scratch.join("missing").join("rec.jsonl"),
            _ => self.scratch.clone(),
        };
        json!({"cmd": "record", "path": to}).to_string()
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        self.obs.recorder.stop();
        let _ = std::fs::remove_dir_all(&self.scratch);
    }
}

/// The recording in progress, as the check expects it: its file and its records.
type Recording = Option<(String, u64)>;

fn recorded_json(r: &Recording) -> Value {
    r.as_ref()
        .map_or(Value::Null, |(p, n)| json!({"path": p, "records": n}))
}

/// A stopped recording's file reads as a trace file of the records it counted.
fn check_recording(r: &Recording, sum: &mut ControlSummary) {
    let Some((path, n)) = r else { return };
    sum.recordings += 1;
    sum.records += n;
    let file = std::fs::File::open(path).expect("a stopped recording's file");
    let recs = trace_file::read(std::io::BufReader::new(file))
        .unwrap_or_else(|e| panic!("the recording {path} does not read: {e}"));
    assert_eq!(
        recs.len() as u64,
        *n,
        "the recording {path} holds other records"
    );
}

/// What a sequence did (for tests that a seed reaches what it was written for).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ControlSummary {
    /// Lines answered `ok: true`.
    pub accepted: usize,
    /// Lines answered `ok: false`.
    pub refused: usize,
    /// Recordings stopped whose file was read back.
    pub recordings: usize,
    /// Records those files held.
    pub records: u64,
}

/// Runs `data` as a sequence of control lines (see the module notes); panics only if an
/// oracle fails.
pub fn check_control(data: &[u8]) -> ControlSummary {
    let mut sum = ControlSummary::default();
    let mut inp = Input(data);
    let s = Setup::new(inp.u8().unwrap_or(0));
    let mut rec: Recording = None;
    // What the read-only commands report, while nothing changed it (taken when needed).
    let mut snap = Some(s.snapshot());
    assert_eq!(snap, Some(s.snapshot()), "reading the state changed it");
    for _ in 0..48 {
        let Some(op) = inp.u8() else { break };
        if op % 8 == 7 {
            let Some(req) = dma_request(&mut inp) else {
                break;
            };
            let _ = s.dma.translate(&req);
            if let Some((_, n)) = &mut rec {
                *n += 1;
            }
            snap = None;
            continue;
        }
        let Some(raw) = line(op, &mut inp) else { break };
        let line = s.confine(raw.trim());
        if line.is_empty() {
            continue;
        }
        let cmd = serde_json::from_str::<Command>(&line);
        let want = match &cmd {
            Err(_) => false,
            Ok(Command::Translate { endpoint, .. }) => s.front.is_none() && *endpoint <= 0xffff,
            Ok(Command::Domains {}) => s.front.is_none(),
            Ok(Command::Stats {} | Command::Endpoints {}) => true,
            Ok(Command::Record { path: None }) => true,
            Ok(Command::Record { path: Some(p) }) => p.parent() == Some(s.scratch.as_path()),
        };
        // Only an accepted translation or recording may change what the reads report.
        let changes = want && matches!(cmd, Ok(Command::Translate { .. } | Command::Record { .. }));
        let before = match (&snap, changes) {
            (_, true) => None,
            (Some(v), false) => Some(v.clone()),
            (None, false) => Some(s.snapshot()),
        };
        let answer = s.answer(&line);
        let ok = match answer.get("ok") {
            Some(Value::Bool(b)) if answer.is_object() => *b,
            _ => panic!("{line:?}: the answer {answer} has no boolean ok"),
        };
        assert_eq!(ok, want, "{line:?} answered {answer}");
        if ok {
            sum.accepted += 1;
        } else {
            sum.refused += 1;
        }
        if let Some(before) = before {
            if !ok {
                assert!(answer["error"].is_string(), "{line:?}: {answer}");
            }
            let after = s.snapshot();
            assert_eq!(after, before, "{line:?} (ok: {ok}) changed the state");
            snap = Some(after);
            continue;
        }
        snap = None;
        match cmd {
            Ok(Command::Translate { .. }) => {
                assert!(
                    answer["translation"].is_object() != answer["fault"].is_object(),
                    "{line:?}: {answer}"
                );
                assert_eq!(answer["cycles"].is_object(), s.timing, "{answer}");
                let n = answer["trace"].as_array().map(Vec::len);
                assert_eq!(answer["trace_len"].as_u64(), n.map(|n| n as u64));
            }
            Ok(Command::Record { path }) => {
                assert_eq!(answer["stopped"], recorded_json(&rec), "{line:?}: {answer}");
                let stopped = rec.take();
                if let Some(p) = path {
                    let p = p.display().to_string();
                    assert_eq!(answer["recording"], json!(p));
                    assert!(Path::new(&p).starts_with(&s.scratch), "recording to {p}");
                    // A new recording to the stopped one's file truncates it.
                    if stopped.as_ref().is_some_and(|(q, _)| *q != p) {
                        check_recording(&stopped, &mut sum);
                    }
                    rec = Some((p, 0));
                } else {
                    check_recording(&stopped, &mut sum);
                }
                assert_eq!(s.obs.recorder.is_on(), rec.is_some());
            }
            _ => unreachable!("only translations and recordings change the state"),
        }
    }
    let answer = s.answer(r#"{"cmd":"record"}"#);
    assert_eq!(
        answer["stopped"],
        recorded_json(&rec),
        "the last stop: {answer}"
    );
    check_recording(&rec, &mut sum);
    sum
}

/// A DMA request of the endpoint: mostly to the mapped windows.
fn dma_request(inp: &mut Input<'_>) -> Option<DmaRequest> {
    let (how, addr, len) = (inp.u8()?, inp.u32()?, inp.u16()?);
    let access = [AccessKind::Read, AccessKind::Write][usize::from(how & 1)];
    let addr = match how >> 1 & 3 {
        0 => 0x1000 | u64::from(addr & 0xfff),
        1 => 0x20_0000 | u64::from(addr & 0x1f_ffff),
        _ => u64::from(addr),
    };
    let mut req = DmaRequest::new(RID, addr, u64::from(len), access);
    if how & 8 != 0 {
        req.pasid = Some(u32::from(how >> 4));
    }
    Some(req)
}

/// One request line from the input (see the module notes).
fn line(op: u8, inp: &mut Input<'_>) -> Option<String> {
    Some(match op % 8 {
        0 => {
            let n = usize::from(inp.u8()? % 96);
            String::from_utf8_lossy(&inp.bytes(n)?).into_owned()
        }
        1 | 2 => translate(inp)?,
        3 => [
            r#"{"cmd":"domains"}"#,
            r#"{"cmd":"stats"}"#,
            r#"{"cmd":"endpoints"}"#,
            r#"{"cmd":"record"}"#,
        ][usize::from(inp.u8()? % 4)]
        .to_string(),
        4 => {
            let n = usize::from(inp.u8()? % 16);
            let p = String::from_utf8_lossy(&inp.bytes(n)?).into_owned();
            json!({"cmd": "record", "path": p}).to_string()
        }
        _ => near_valid(inp)?,
    })
}

/// A well-formed `translate`, its fields from the input.
fn translate(inp: &mut Input<'_>) -> Option<String> {
    let (sel, flags) = (inp.u8()?, inp.u8()?);
    let endpoint: u64 = match sel % 4 {
        0 | 1 => RID.into(),
        2 => inp.u8()?.into(),
        _ => inp.u32()?.into(),
    };
    let iova = match sel >> 2 & 3 {
        0 => 0x1000 | u64::from(inp.u16()? & 0xfff),
        1 => 0x20_0000 | u64::from(inp.u32()? & 0x1f_ffff),
        _ => inp.u64()?,
    };
    let access = ["read", "write", "exec", "atomic"][usize::from(sel >> 4 & 3)];
    let mut v = json!({"cmd": "translate", "endpoint": endpoint, "iova": iova, "access": access});
    if flags & 1 != 0 {
        v["len"] = json!(inp.u64()? >> (inp.u8()? % 64));
    }
    if flags & 2 != 0 {
        v["pasid"] = json!(inp.u32()? >> (inp.u8()? % 32));
    }
    if flags & 4 != 0 {
        v["privileged"] = json!(flags & 8 != 0);
    }
    if flags & 16 != 0 {
        v["ats"] = json!(flags & 32 != 0);
    }
    Some(v.to_string())
}

/// An object near a request: a command name and fields of any JSON type, as text (so that
/// duplicates and out-of-range numbers reach the parser).
fn near_valid(inp: &mut Input<'_>) -> Option<String> {
    const CMDS: [&str; 7] = [
        "translate",
        "domains",
        "stats",
        "endpoints",
        "record",
        "nope",
        "",
    ];
    const KEYS: [&str; 10] = [
        "endpoint",
        "iova",
        "access",
        "len",
        "pasid",
        "privileged",
        "ats",
        "path",
        "cmd",
        "extra",
    ];
    const VALUES: [&str; 16] = [
        "32",
        "18446744073709551615",
        "18446744073709551616",
        "-1",
        "1.5",
        "1e400",
        "\"read\"",
        "\"write\"",
        "\"exec\"",
        "\"fetch\"",
        "true",
        "null",
        "[]",
        "{}",
        "\"r.jsonl\"",
        "65536",
    ];
    let c = inp.u8()?;
    let mut s = String::from("{");
    let mut parts = Vec::new();
    if c & 0x80 == 0 {
        parts.push(format!("\"cmd\":\"{}\"", CMDS[usize::from(c) % CMDS.len()]));
    }
    for _ in 0..(c >> 3 & 7) {
        let (k, v) = (inp.u8()?, inp.u8()?);
        let value = if v & 0x80 != 0 {
            inp.u64()?.to_string()
        } else {
            VALUES[usize::from(v) % VALUES.len()].to_string()
        };
        parts.push(format!("\"{}\":{value}", KEYS[usize::from(k) % KEYS.len()]));
    }
    s.push_str(&parts.join(","));
    s.push('}');
    Some(s)
}

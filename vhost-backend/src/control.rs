//! The control socket: JSON lines over a Unix stream socket, for tests, scripts and users.
//!
//! One request per line, one answer per line. Requests:
//! - `{"cmd":"translate","endpoint":8,"iova":4096,"access":"read"}` — one DMA request through
//!   the model. `access` is `read`, `write`, `exec` or `atomic`; optional fields: `len` (bytes,
//!   default 1), `pasid` (a PASID-tagged request), `privileged` (supervisor, default false),
//!   `ats` (an ATS translation request instead of an untranslated one, default false). The
//!   answer: `{"ok":true,"translation":{"phys":..,"len":..,"perm":"rw","exec":..,
//!   "page_shift":..,"domain_id":..,"identity":..},"fault":null,"trace":[..],"trace_len":N,
//!   "trace_dropped":0}`, or with `"fault":{"reason":"mapping","address":..,"access":"read",
//!   "kind":"not_present","site":{..},"code":..,"recorded":..,"detail":".."}`. The trace is
//!   one JSON object per event, addresses in hex: `{"event":"cache_lookup","cache":"iotlb",
//!   "hit":false}`, `{"event":"cache_fill","cache":"iotlb"}`, `{"event":"walk_start",
//!   "walk":"second","level":4}`, `{"event":"walk_end","faulted":false}`,
//!   `{"event":"mem_read","target":"page_table","stage":"second","level":4,"addr":"0x1000"}`,
//!   `{"event":"mem_write",..}`. A fault is also reported on the event queue, as any DMA fault
//!   is.
//!   With timing on (`--timing`), `"cycles"` gives the timing model's price of the translation:
//!   `total` and its breakdown (`link`, `lookups`, `fills`, `structure_reads`, `walk_reads`,
//!   `walk_steps`, `ad_updates`, `walk_cycles`, memory references `refs`, `table_refs`, ...).
//! - `{"cmd":"record","path":"/tmp/dma.jsonl"}` — records every translation the endpoint
//!   devices' DMA asks for, in the trace-file format `iommu-sim replay` reads;
//!   `{"cmd":"record"}` stops and answers `"stopped":{"path":..,"records":N}`.
//! - `{"cmd":"domains"}` — `{"ok":true,"bypass":false,"domains":[{"id":1,"kind":"paging",
//!   "hw_domain":1,"hw_domain_id":2,"endpoints":[8],"mappings":[{"virt_start":..,"virt_end":..,
//!   "phys_start":..,"flags":"rw"}]}]}`.
//! - `{"cmd":"stats"}` — request counts by type and status, core counters, the unit's counters
//!   with each cache's statistics (`hardware.caches.iotlb.hits`, ...) and the driver's, and
//!   each endpoint device's counters (`endpoints[i].descriptors`, `bytes`, `faults`, ...).
//! - `{"cmd":"endpoints"}` — the endpoint devices (`--endpoint`): address, requester id,
//!   socket, counters (`connections`, `doorbells`, `descriptors`, `bytes`, `errors`,
//!   `translations`, `faults`, `not_ram`, `interrupts`), the last error
//!   (`{"code":3,"name":"dst_fault","iova":..}`), and `last_batch`: the translations the
//!   IOMMU made for the last doorbell, `{"iova":..,"phys":..,"len":..,"page_shift":12,
//!   "access":"write","pasid":null}` (`phys` null where it faulted); with timing on, `cycles`:
//!   the distribution of the timing model's cycles of its translations (`count`, `mean`,
//!   `min`, `p50`, `p90`, `p99`, `max`).
//!
//! Bad input gets `{"ok":false,"error":"..."}`; lines longer than [`MAX_LINE`] close the
//! connection.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use iommu_emulator::core::{DomainKind, FaultReason};
use iommu_emulator::request::{FaultKind, FaultSite};
use iommu_emulator::trace::{CacheId, MemTarget, Stage, WalkKind};
use iommu_emulator::{AccessKind, AddressType, DmaRequest, Trace, TraceEvent};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::device::IommuDevice;
use crate::endpoint::observe::Observers;
use crate::endpoint::server::EndpointHandle;
use crate::register_front::FrontStats;
use iommu_emulator::Unit;

/// Longest request line accepted.
pub const MAX_LINE: usize = 64 * 1024;
/// Most connections served at once.
pub const MAX_CONNECTIONS: usize = 16;

/// A control request.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum Command {
    /// Translate one DMA request.
    Translate {
        /// Endpoint id (PCI requester id).
        endpoint: u32,
        /// I/O virtual address.
        iova: u64,
        /// `"read"`, `"write"`, `"exec"` or `"atomic"`.
        access: AccessArg,
        /// Bytes accessed (default 1).
        #[serde(default)]
        len: Option<u64>,
        /// The request's PASID, if it carries one.
        #[serde(default)]
        pasid: Option<u32>,
        /// A supervisor (privileged) request.
        #[serde(default)]
        privileged: bool,
        /// An ATS translation request.
        #[serde(default)]
        ats: bool,
    },
    /// List domains, endpoints and mappings.
    Domains {},
    /// Counters.
    Stats {},
    /// The endpoint devices, with the translations of each one's last batch.
    Endpoints {},
    /// Start recording every translation the endpoints' DMA asks for to the trace file at
    /// `path` (the format `iommu-sim replay` reads), or, without `path`, stop.
    Record {
        /// The file to write (created or truncated).
        #[serde(default)]
        path: Option<PathBuf>,
    },
}

/// The access kind of a `translate` command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AccessArg {
    /// A DMA read.
    Read,
    /// A DMA write.
    Write,
    /// An instruction fetch (execute requested).
    Exec,
    /// An atomic operation (reads and writes).
    Atomic,
}

impl From<AccessArg> for AccessKind {
    fn from(a: AccessArg) -> Self {
        match a {
            AccessArg::Read => AccessKind::Read,
            AccessArg::Write => AccessKind::Write,
            AccessArg::Exec => AccessKind::Execute,
            AccessArg::Atomic => AccessKind::Atomic,
        }
    }
}

fn reason_name(r: FaultReason) -> &'static str {
    match r {
        FaultReason::Unknown => "unknown",
        FaultReason::Domain => "domain",
        FaultReason::Mapping => "mapping",
    }
}

fn access_name(a: AccessKind) -> &'static str {
    match a {
        AccessKind::Read => "read",
        AccessKind::Write => "write",
        AccessKind::Execute => "exec",
        AccessKind::Atomic => "atomic",
    }
}

fn stage_name(s: Stage) -> &'static str {
    match s {
        Stage::First => "first",
        Stage::Second => "second",
    }
}

fn hex(v: u64) -> String {
    format!("{v:#x}")
}

fn cache_json(c: CacheId) -> Value {
    match c {
        CacheId::Iotlb => json!("iotlb"),
        CacheId::Context => json!("context"),
        CacheId::Pasid => json!("pasid"),
        CacheId::PagingStructure { stage, level } => {
            json!({"paging_structure": {"stage": stage_name(stage), "level": level}})
        }
        other => json!(format!("{other:?}")),
    }
}

fn target_json(t: MemTarget, addr: u64) -> serde_json::Map<String, Value> {
    let mut m = serde_json::Map::new();
    let name = match t {
        MemTarget::RootEntry => "root_entry",
        MemTarget::ContextEntry => "context_entry",
        MemTarget::PasidDirEntry => "pasid_dir_entry",
        MemTarget::PasidEntry => "pasid_entry",
        MemTarget::DeviceTableEntry => "device_table_entry",
        MemTarget::Gcr3Entry { level } => {
            m.insert("level".into(), json!(level));
            "gcr3_entry"
        }
        MemTarget::PageTable { stage, level } => {
            m.insert("stage".into(), json!(stage_name(stage)));
            m.insert("level".into(), json!(level));
            "page_table"
        }
        _ => "other",
    };
    m.insert("target".into(), json!(name));
    m.insert("addr".into(), json!(hex(addr)));
    m
}

/// One trace event as a JSON object (see the module notes).
pub fn event_json(e: &TraceEvent) -> Value {
    match *e {
        TraceEvent::CacheLookup { cache, hit } => {
            json!({"event": "cache_lookup", "cache": cache_json(cache), "hit": hit})
        }
        TraceEvent::CacheFill { cache } => {
            json!({"event": "cache_fill", "cache": cache_json(cache)})
        }
        TraceEvent::WalkStart { kind, level } => {
            let walk = match kind {
                WalkKind::OneD(s) => stage_name(s),
                WalkKind::Nested => "nested",
                _ => "other",
            };
            json!({"event": "walk_start", "walk": walk, "level": level})
        }
        TraceEvent::WalkEnd { faulted } => json!({"event": "walk_end", "faulted": faulted}),
        TraceEvent::MemRead { target, addr } => {
            let mut m = target_json(target, addr);
            m.insert("event".into(), json!("mem_read"));
            Value::Object(m)
        }
        TraceEvent::MemWrite { target, addr } => {
            let mut m = target_json(target, addr);
            m.insert("event".into(), json!("mem_write"));
            Value::Object(m)
        }
        other => json!({"event": format!("{other:?}")}),
    }
}

/// A whole trace as a JSON array.
pub fn trace_json(t: &Trace) -> Vec<Value> {
    t.events().iter().map(event_json).collect()
}

fn kind_name(k: FaultKind) -> &'static str {
    match k {
        FaultKind::NotPresent => "not_present",
        FaultKind::Permission => "permission",
        FaultKind::AddressWidth => "address_width",
        FaultKind::InvalidEntry => "invalid_entry",
        FaultKind::MemoryAccess => "memory_access",
        FaultKind::Blocked => "blocked",
        _ => "other",
    }
}

fn site_json(s: FaultSite) -> Value {
    match s {
        FaultSite::Request => json!({"structure": "request"}),
        FaultSite::DeviceTable => json!({"structure": "device_table"}),
        FaultSite::PasidTable => json!({"structure": "pasid_table"}),
        FaultSite::PageTable { stage, level } => {
            json!({"structure": "page_table", "stage": stage_name(stage), "level": level})
        }
        FaultSite::Output => json!({"structure": "output"}),
        _ => json!({"structure": "other"}),
    }
}

/// Answers one request line (for a daemon without endpoint devices).
pub fn handle_line(device: &IommuDevice, line: &str) -> Value {
    handle_line_with(device, &[], line)
}

fn endpoint_json(e: &EndpointHandle, recent: bool) -> Value {
    let s = &e.stats;
    let n = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    let last_error = s
        .last_error
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .map(|(code, addr)| json!({"code": code as u8, "name": code.name(), "iova": addr}));
    let mut v = json!({
        "bdf": e.spec.bdf.to_string(), "endpoint": e.spec.bdf.rid(), "kind": "dma",
        "iommu": if e.spec.bypass_iommu { "bypass" } else { "translate" },
        "socket": e.spec.socket.display().to_string(),
        "connections": n(&s.connections), "doorbells": n(&s.doorbells),
        "descriptors": n(&s.descriptors), "bytes": n(&s.bytes), "errors": n(&s.errors),
        "translations": n(&s.translations), "faults": n(&s.faults), "not_ram": n(&s.not_ram),
        "interrupts": n(&s.interrupts), "last_error": last_error,
    });
    // The timing model's cycles of the endpoint's translations, when it is timed.
    if let Some(c) = e.observed.as_ref().and_then(|o| o.cycles()) {
        v["cycles"] = serde_json::to_value(c).unwrap_or(Value::Null);
    }
    if recent {
        let list: Vec<Value> = s
            .recent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|t| {
                json!({"iova": t.iova, "phys": t.phys, "len": t.len, "page_shift": t.page_shift,
                       "access": if t.write { "write" } else { "read" }, "pasid": t.pasid})
            })
            .collect();
        v["last_batch"] = Value::Array(list);
    }
    v
}

/// Every endpoint device's report (with its last batch's translations when `recent`).
fn endpoints_json(endpoints: &[Arc<EndpointHandle>], recent: bool) -> Vec<Value> {
    endpoints.iter().map(|e| endpoint_json(e, recent)).collect()
}

/// A request line, or the answer that refuses it.
fn parse_command(line: &str) -> Result<Command, Value> {
    serde_json::from_str(line)
        .map_err(|e| json!({"ok": false, "error": format!("bad request: {e}")}))
}

/// Answers one request line, with `endpoints` the endpoint devices the daemon serves.
pub fn handle_line_with(
    device: &IommuDevice,
    endpoints: &[Arc<EndpointHandle>],
    line: &str,
) -> Value {
    handle_line_observed(device, endpoints, &Observers::default(), line)
}

/// [`handle_line_with`], with the daemon's observers: `translate` answers the cycles the
/// timing model gives the translation, and `record` starts and stops the recorder.
pub fn handle_line_observed(
    device: &IommuDevice,
    endpoints: &[Arc<EndpointHandle>],
    obs: &Observers,
    line: &str,
) -> Value {
    let cmd = match parse_command(line) {
        Ok(c) => c,
        Err(answer) => return answer,
    };
    let core = device.core();
    match cmd {
        Command::Translate {
            endpoint,
            iova,
            access,
            len,
            pasid,
            privileged,
            ats,
        } => {
            let Ok(source_id) = u16::try_from(endpoint) else {
                return json!({"ok": false,
                              "error": format!("bad request: endpoint {endpoint:#x} is not a PCI requester id")});
            };
            let req = DmaRequest {
                source_id,
                pasid,
                addr: iova,
                len: len.unwrap_or(1),
                access: access.into(),
                privileged,
                at: if ats {
                    AddressType::TranslationRequest
                } else {
                    AddressType::Untranslated
                },
            };
            let out = core.translate(&req);
            let (translation, fault) = match &out.result {
                Ok(t) => {
                    let perm = format!(
                        "{}{}",
                        if t.perms.read() { "r" } else { "-" },
                        if t.perms.write() { "w" } else { "-" }
                    );
                    (
                        json!({"phys": t.addr, "len": t.len, "perm": perm,
                               "exec": t.perms.execute(), "page_shift": t.page_shift,
                               "domain_id": t.domain_id, "identity": t.identity}),
                        Value::Null,
                    )
                }
                Err(f) => (
                    Value::Null,
                    json!({"reason": reason_name(f.reason), "address": f.address,
                           "access": access_name(f.access), "kind": kind_name(f.unit.kind),
                           "site": site_json(f.unit.site), "code": f.unit.code,
                           "recorded": f.unit.recorded,
                           "detail": format!("{} fault code {:#x} ({:?} at {:?})",
                                             core.hardware_name(), f.unit.code,
                                             f.unit.kind, f.unit.site)}),
                ),
            };
            let cycles = obs.cost(&out.trace).map_or(Value::Null, |c| {
                serde_json::to_value(c).unwrap_or(Value::Null)
            });
            let trace = trace_json(&out.trace);
            json!({"ok": true, "translation": translation, "fault": fault,
                   "cycles": cycles,
                   "trace_len": trace.len(), "trace_dropped": out.trace.dropped(),
                   "trace": trace})
        }
        Command::Domains {} => {
            let domains: Vec<Value> = core
                .domains()
                .into_iter()
                .map(|d| {
                    let mappings: Vec<Value> = d
                        .mappings
                        .iter()
                        .map(|m| {
                            json!({"virt_start": m.virt_start, "virt_end": m.virt_end,
                                   "phys_start": m.phys_start, "flags": m.flags.to_string()})
                        })
                        .collect();
                    json!({
                        "id": d.id,
                        "kind": match d.kind { DomainKind::Paging => "paging",
                                               DomainKind::Bypass => "bypass" },
                        "hw_domain": d.hw.map(|h| h.0),
                        "hw_domain_id": d.hw_id,
                        "endpoints": d.endpoints,
                        "mappings": mappings,
                    })
                })
                .collect();
            json!({"ok": true, "bypass": core.bypass(), "model": core.hardware_name(),
                   "domains": domains})
        }
        Command::Stats {} => {
            let s = core.stats();
            let mut hardware = unit_stats_json(&s.unit);
            hardware["domains"] = json!(s.driver.domains);
            hardware["private_pages_in_use"] = json!(s.driver.private_pages_in_use);
            hardware["mode"] = json!(s.driver.mode);
            json!({
                "ok": true,
                "requests": device.request_counts(),
                "core": {"domains": s.domains, "mappings": s.mappings,
                         "translations": s.translations, "faults": s.faults,
                         "faults_dropped": s.faults_dropped},
                "hardware": hardware,
                "model": core.hardware_name(),
                "endpoints": endpoints_json(endpoints, false),
            })
        }
        Command::Record { path } => record_json(obs, path.as_deref()),
        Command::Endpoints {} => {
            json!({"ok": true,
                   "endpoints": endpoints_json(endpoints, true)})
        }
    }
}

/// What the control socket answers for.
enum Target {
    /// The virtio-iommu: its core and device.
    Virtio(Arc<IommuDevice>),
    /// The register front: the unit the guest's driver programs, and the front's counters.
    Registers(Arc<dyn Unit>, Arc<FrontStats>),
}

fn unit_stats_json(u: &iommu_emulator::UnitStats) -> Value {
    let caches: serde_json::Map<String, Value> = u
        .caches
        .iter()
        .map(|(k, c)| {
            (
                k.name(),
                json!({"lookups": c.lookups, "hits": c.hits, "misses": c.misses,
                       "fills": c.inserts, "refused": c.refused,
                       "evictions": c.evictions, "invalidated": c.invalidated,
                       "invalidations": c.invalidations}),
            )
        })
        .collect();
    let by_kind: serde_json::Map<String, Value> = u
        .commands_by_kind
        .iter()
        .map(|&(k, n)| (k.to_string(), json!(n)))
        .collect();
    json!({"translations": u.translations, "faults": u.faults,
           "faults_recorded": u.faults_recorded, "commands": u.commands,
           "commands_by_kind": by_kind, "caches": caches})
}

/// The chain of structures `unit` follows for requester `rid` (without a PASID): each entry's
/// name, address, raw qwords and decoded fields, and why the chain stops early, if it does.
fn structures_json(unit: &dyn Unit, rid: u16) -> Value {
    let Some(v) = unit.structures(rid, None) else {
        return Value::Null;
    };
    let entries: Vec<Value> = v
        .entries
        .iter()
        .map(|e| {
            let fields: serde_json::Map<String, Value> = e
                .fields
                .iter()
                .map(|&(k, x)| (k.to_string(), json!(x)))
                .collect();
            json!({"name": e.name, "addr": e.addr, "raw": e.raw, "fields": fields})
        })
        .collect();
    json!({"entries": entries, "stop": v.stop})
}

/// Answers one request line under the register front: `endpoints`, and `stats` with the
/// unit's counters (`hardware`), the front's (`register_front`: register `reads`, `writes`,
/// the `bar0` the firmware programmed, unit `events`) and the endpoints'. The virtio-iommu's
/// commands (`translate`, `domains`) are refused: the guest's driver owns the unit.
pub fn handle_register_front_line(
    unit: &dyn Unit,
    front: &FrontStats,
    endpoints: &[Arc<EndpointHandle>],
    line: &str,
) -> Value {
    handle_register_front_observed(unit, front, endpoints, &Observers::default(), line)
}

/// [`handle_register_front_line`], with the daemon's observers (`record`).
pub fn handle_register_front_observed(
    unit: &dyn Unit,
    front: &FrontStats,
    endpoints: &[Arc<EndpointHandle>],
    obs: &Observers,
    line: &str,
) -> Value {
    let cmd = match parse_command(line) {
        Ok(c) => c,
        Err(answer) => return answer,
    };
    let n = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    match cmd {
        Command::Record { path } => record_json(obs, path.as_deref()),
        Command::Endpoints {} => {
            // Each endpoint with the structures the guest's driver built for it, as the unit
            // follows them (root, context and PASID entries; the DTE and GCR3 entry).
            let list: Vec<Value> = endpoints
                .iter()
                .map(|e| {
                    let mut v = endpoint_json(e, true);
                    v["structures"] = structures_json(unit, e.spec.bdf.rid());
                    v
                })
                .collect();
            json!({"ok": true, "endpoints": list})
        }
        Command::Stats {} => {
            let bar0 = n(&front.bar0);
            // The registers the guest's driver programs, as it last left them (VT-d §10.4;
            // AMD-Vi §3.4).
            const VTD: &[(&str, u64, u32)] = &[
                ("ver", 0x00, 4),
                ("cap", 0x08, 8),
                ("ecap", 0x10, 8),
                ("gsts", 0x1c, 4),
                ("rtaddr", 0x20, 8),
                ("fsts", 0x34, 4),
                ("fectl", 0x38, 4),
                ("fedata", 0x3c, 4),
                ("feaddr", 0x40, 4),
                ("iqh", 0x80, 8),
                ("iqt", 0x88, 8),
                ("iqa", 0x90, 8),
                ("ics", 0x9c, 4),
                ("iectl", 0xa0, 4),
                ("frcd0_lo", 0x220, 8),
                ("frcd0_hi", 0x228, 8),
                ("frcd1_hi", 0x238, 8),
            ];
            const AMDVI: &[(&str, u64, u32)] = &[
                ("dev_tab_base", 0x00, 8),
                ("cmd_buf_base", 0x08, 8),
                ("event_log_base", 0x10, 8),
                ("control", 0x18, 8),
                ("efr", 0x30, 8),
                ("cmd_buf_head", 0x2000, 8),
                ("cmd_buf_tail", 0x2008, 8),
                ("event_log_head", 0x2010, 8),
                ("event_log_tail", 0x2018, 8),
                ("status", 0x2020, 8),
            ];
            let list = match unit.name() {
                "vtd" => VTD,
                "amdvi" => AMDVI,
                _ => &[],
            };
            let registers: serde_json::Map<String, Value> = list
                .iter()
                .map(|&(name, off, size)| (name.to_string(), json!(unit.mmio_read(off, size))))
                .collect();
            json!({"ok": true, "model": unit.name(), "hardware": unit_stats_json(&unit.stats()),
                   "registers": registers,
                   "register_front": {"reads": n(&front.reads), "writes": n(&front.writes),
                                      "bar0": (bar0 != u64::MAX).then_some(bar0),
                                      "events": n(&front.events),
                                      "interrupts": n(&front.interrupts),
                                      "command": n(&front.command),
                                      "resets": n(&front.resets)},
                   "endpoints": endpoints_json(endpoints, false)})
        }
        Command::Translate { .. } | Command::Domains {} => json!({"ok": false,
            "error": "the daemon serves the register front: the guest's own driver programs \
                      the unit, and there is no virtio-iommu core to ask"}),
    }
}

fn answer(
    target: &Target,
    endpoints: &[Arc<EndpointHandle>],
    obs: &Observers,
    line: &str,
) -> Value {
    match target {
        Target::Virtio(d) => handle_line_observed(d, endpoints, obs, line),
        Target::Registers(u, f) => handle_register_front_observed(&**u, f, endpoints, obs, line),
    }
}

/// Starts (with `path`) or stops the recorder; the answer names what a stopped recording
/// holds.
fn record_json(obs: &Observers, path: Option<&Path>) -> Value {
    let done = |r: Option<crate::endpoint::observe::Recorded>| {
        r.map_or(
            Value::Null,
            |r| json!({"path": r.path.display().to_string(), "records": r.records}),
        )
    };
    match path {
        Some(p) => match obs.recorder.start(p) {
            Ok(prev) => json!({"ok": true, "recording": p.display().to_string(),
                               "stopped": done(prev)}),
            Err(e) => json!({"ok": false,
                             "error": format!("cannot record to {}: {e}", p.display())}),
        },
        None => json!({"ok": true, "recording": Value::Null, "stopped": done(obs.recorder.stop())}),
    }
}

fn serve_connection(
    target: &Target,
    endpoints: &[Arc<EndpointHandle>],
    obs: &Observers,
    stream: UnixStream,
) -> std::io::Result<()> {
    let mut out = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = (&mut reader)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut line)?;
        if n == 0 {
            return Ok(());
        }
        if line.len() > MAX_LINE {
            writeln!(out, "{}", json!({"ok": false, "error": "line too long"}))?;
            return Ok(());
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim();
        if text.is_empty() {
            continue;
        }
        let answer = answer(target, endpoints, obs, text);
        writeln!(out, "{answer}")?;
    }
}

use std::io::Read as _;

/// Binds `path` (replacing a stale socket file) and serves connections on a background thread.
pub fn spawn(
    device: Arc<IommuDevice>,
    endpoints: Vec<Arc<EndpointHandle>>,
    obs: Arc<Observers>,
    path: &Path,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    spawn_target(Target::Virtio(device), endpoints, obs, path)
}

/// [`spawn`] for the register front.
pub fn spawn_register_front(
    unit: Arc<dyn Unit>,
    front: Arc<FrontStats>,
    endpoints: Vec<Arc<EndpointHandle>>,
    obs: Arc<Observers>,
    path: &Path,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    spawn_target(Target::Registers(unit, front), endpoints, obs, path)
}

fn spawn_target(
    target: Target,
    endpoints: Vec<Arc<EndpointHandle>>,
    obs: Arc<Observers>,
    path: &Path,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let target = Arc::new(target);
    if path.exists() {
        std::fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path)?;
    let active = Arc::new(AtomicUsize::new(0));
    let endpoints: Arc<[Arc<EndpointHandle>]> = endpoints.into();
    std::thread::Builder::new()
        .name("control".into())
        .spawn(move || {
            for stream in listener.incoming() {
                let stream = match stream {
                    Ok(s) => s,
                    Err(e) => {
                        log::warn!("control socket accept: {e}");
                        continue;
                    }
                };
                if active.load(Ordering::Acquire) >= MAX_CONNECTIONS {
                    log::warn!("control socket: too many connections");
                    continue;
                }
                active.fetch_add(1, Ordering::AcqRel);
                let (target, active, endpoints, obs) = (
                    target.clone(),
                    active.clone(),
                    endpoints.clone(),
                    obs.clone(),
                );
                let spawned = std::thread::Builder::new()
                    .name("control-conn".into())
                    .spawn(move || {
                        if let Err(e) = serve_connection(&target, &endpoints, &obs, stream) {
                            log::debug!("control connection: {e}");
                        }
                        active.fetch_sub(1, Ordering::AcqRel);
                    });
                if let Err(e) = spawned {
                    log::warn!("control socket: cannot spawn a thread: {e}");
                }
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use iommu_emulator::SoftDriver;
    use iommu_emulator::core::{Core, CoreConfig, EndpointSet, MapFlags};

    fn device() -> Arc<IommuDevice> {
        let cfg = CoreConfig {
            endpoints: EndpointSet::from_ranges([0..=0xff]),
            ..CoreConfig::default()
        };
        let core = Arc::new(Core::new(cfg, Arc::new(SoftDriver::new())).unwrap());
        Arc::new(IommuDevice::new(core, 64).unwrap())
    }

    #[test]
    fn commands_answer_in_json() {
        let d = device();
        d.core().attach(3, 8, false).unwrap();
        d.core()
            .map(3, 0x1000, 0x1fff, 0xa000, MapFlags::RW)
            .unwrap();
        let t = handle_line(
            &d,
            r#"{"cmd":"translate","endpoint":8,"iova":4100,"access":"write"}"#,
        );
        assert_eq!(t["ok"], true);
        assert_eq!(t["translation"]["phys"], 0xa004);
        assert_eq!(t["translation"]["perm"], "rw");
        assert_eq!(t["trace_len"], t["trace"].as_array().unwrap().len());
        assert!(t["trace_len"].as_u64().unwrap() > 0);
        let f = handle_line(
            &d,
            r#"{"cmd":"translate","endpoint":8,"iova":8192,"access":"read"}"#,
        );
        assert_eq!(f["fault"]["reason"], "mapping");
        assert_eq!(f["translation"], Value::Null);
        let doms = handle_line(&d, r#"{"cmd":"domains"}"#);
        assert_eq!(doms["domains"][0]["id"], 3);
        assert_eq!(doms["domains"][0]["endpoints"][0], 8);
        assert_eq!(doms["domains"][0]["mappings"][0]["phys_start"], 0xa000);
        assert_eq!(doms["bypass"], false);
        let s = handle_line(&d, r#"{"cmd":"stats"}"#);
        assert_eq!(s["core"]["translations"], 2);
        assert_eq!(s["core"]["faults"], 1);
        assert_eq!(s["core"]["mappings"], 1);
    }

    fn vtd_device(mode: iommu_emulator::VtdMode) -> Arc<IommuDevice> {
        use iommu_emulator::{PrivateRegion, VtdConfig, VtdDriver};
        let base = 0x1000_0000;
        let driver = VtdDriver::with_unit(
            pagewalk::SparseMem::new(1 << 32),
            VtdConfig::default(),
            PrivateRegion {
                base,
                size: 1 << 20,
            },
            mode,
        )
        .unwrap();
        let cfg = CoreConfig {
            endpoints: EndpointSet::from_ranges([0..=0xff]),
            ..CoreConfig::default()
        };
        let core = Arc::new(Core::new(cfg, Arc::new(driver)).unwrap());
        Arc::new(IommuDevice::new(core, 64).unwrap())
    }

    #[test]
    fn translate_takes_the_whole_request_and_renders_a_typed_trace() {
        let d = vtd_device(iommu_emulator::VtdMode::Legacy);
        d.core().attach(3, 8, false).unwrap();
        d.core()
            .map(3, 0x20_0000, 0x3f_ffff, 0x8000_0000, MapFlags::RW)
            .unwrap();
        let t = handle_line(
            &d,
            r#"{"cmd":"translate","endpoint":8,"iova":2101248,"access":"atomic","len":4096}"#,
        );
        assert_eq!(t["translation"]["phys"], 0x8000_1000u64, "{t}");
        assert_eq!(t["translation"]["len"], 4096);
        assert_eq!(t["translation"]["page_shift"], 21);
        assert_eq!(t["trace_dropped"], 0);
        let trace = t["trace"].as_array().unwrap();
        // Cold caches: context-cache and IOTLB misses, the root and context entries read
        // (hex addresses), a walk from the top level, and the fills.
        assert_eq!(
            trace[0],
            json!({"event": "cache_lookup", "cache": "context", "hit": false})
        );
        let events: Vec<&str> = trace.iter().map(|e| e["event"].as_str().unwrap()).collect();
        for e in [
            "cache_lookup",
            "mem_read",
            "cache_fill",
            "walk_start",
            "walk_end",
        ] {
            assert!(events.contains(&e), "{e} missing from {t}");
        }
        let root = trace
            .iter()
            .find(|e| e["target"] == "root_entry")
            .expect("root entry read");
        assert_eq!(root["addr"], format!("{:#x}", 0x1000_0000u64));
        let walk = trace.iter().find(|e| e["event"] == "walk_start").unwrap();
        assert_eq!(
            (&walk["walk"], &walk["level"]),
            (&json!("second"), &json!(4))
        );
        let leaf = trace
            .iter()
            .find(|e| e["target"] == "page_table" && e["level"] == 2)
            .expect("the 2 MiB leaf read");
        assert_eq!(leaf["stage"], "second");
        assert!(leaf["addr"].as_str().unwrap().starts_with("0x"));
        // A second request hits the IOTLB.
        let t = handle_line(
            &d,
            r#"{"cmd":"translate","endpoint":8,"iova":2101248,"access":"read"}"#,
        );
        assert_eq!(
            t["trace"],
            json!([{"event": "cache_lookup", "cache": "context", "hit": true},
                   {"event": "cache_lookup", "cache": "iotlb", "hit": true}]),
            "{t}"
        );
        // A PASID in legacy mode is refused by the unit (VT-d RTA.2): a request-site fault.
        let f = handle_line(
            &d,
            r#"{"cmd":"translate","endpoint":8,"iova":2101248,"access":"read","pasid":5}"#,
        );
        assert_eq!(f["fault"]["code"], 0x31, "{f}");
        assert_eq!(f["fault"]["site"]["structure"], "request");
        assert_eq!(f["fault"]["reason"], "unknown");
        // An ATS translation request on a context that does not allow it (T = 00b, LCT.5).
        let f = handle_line(
            &d,
            r#"{"cmd":"translate","endpoint":8,"iova":2101248,"access":"read","ats":true}"#,
        );
        assert_eq!(f["fault"]["code"], 0xd, "{f}");
        // An unattached endpoint: the device table has no entry for it.
        let f = handle_line(
            &d,
            r#"{"cmd":"translate","endpoint":9,"iova":0,"access":"exec","privileged":true}"#,
        );
        assert_eq!(f["fault"]["reason"], "domain", "{f}");
        assert_eq!(f["fault"]["access"], "exec");
        assert_eq!(f["fault"]["kind"], "not_present");
        assert_eq!(f["fault"]["site"]["structure"], "device_table");
        assert_eq!(f["fault"]["recorded"], true);
        let s = handle_line(&d, r#"{"cmd":"stats"}"#);
        assert!(
            s["hardware"]["caches"]["iotlb"]["hits"].as_u64().unwrap() >= 1,
            "{s}"
        );
        assert!(s["hardware"]["caches"]["iotlb"]["fills"].as_u64().unwrap() >= 1);
        assert_eq!(s["hardware"]["mode"], "legacy");
        assert!(s["hardware"]["commands"].as_u64().unwrap() > 0);
    }

    #[test]
    fn the_amdvi_model_renders_its_device_table_reads_and_its_event_codes() {
        use iommu_emulator::{AmdViConfig, AmdViDriver, PrivateRegion};
        let driver = AmdViDriver::with_unit(
            pagewalk::SparseMem::new(1 << 32),
            AmdViConfig::default(),
            PrivateRegion {
                base: 0x1000_0000,
                size: 4 << 20,
            },
        )
        .unwrap();
        let cfg = CoreConfig {
            endpoints: EndpointSet::from_ranges([0..=0xff]),
            ..CoreConfig::default()
        };
        let core = Arc::new(Core::new(cfg, Arc::new(driver)).unwrap());
        let d = Arc::new(IommuDevice::new(core, 64).unwrap());
        d.core().attach(3, 8, false).unwrap();
        d.core()
            .map(3, 0x20_0000, 0x3f_ffff, 0x8000_0000, MapFlags::RW)
            .unwrap();
        let t = handle_line(
            &d,
            r#"{"cmd":"translate","endpoint":8,"iova":2101248,"access":"write"}"#,
        );
        assert_eq!(t["translation"]["phys"], 0x8000_1000u64, "{t}");
        let trace = t["trace"].as_array().unwrap();
        // The device table starts the private region; DeviceID 8's DTE is 32 bytes per id in.
        let dte = trace
            .iter()
            .find(|e| e["target"] == "device_table_entry")
            .expect("the DTE read");
        assert_eq!(
            dte["addr"],
            format!("{:#x}", 0x1000_0000u64 + 8 * 32),
            "{t}"
        );
        let walk = trace.iter().find(|e| e["event"] == "walk_start").unwrap();
        assert_eq!(
            (&walk["walk"], &walk["level"]),
            (&json!("second"), &json!(4))
        );
        // A PASID on a device without guest translation: INVALID_DEVICE_REQUEST (code 8).
        let f = handle_line(
            &d,
            r#"{"cmd":"translate","endpoint":8,"iova":2101248,"access":"read","pasid":5}"#,
        );
        assert_eq!(f["fault"]["code"], 8, "{f}");
        assert_eq!(f["fault"]["site"]["structure"], "request");
        // A blocked endpoint: IO_PAGE_FAULT (code 2) at the device table, reason `domain`.
        let f = handle_line(
            &d,
            r#"{"cmd":"translate","endpoint":9,"iova":0,"access":"read"}"#,
        );
        assert_eq!(f["fault"]["code"], 2, "{f}");
        assert_eq!(f["fault"]["reason"], "domain");
        assert_eq!(f["fault"]["recorded"], true);
        let s = handle_line(&d, r#"{"cmd":"stats"}"#);
        assert_eq!(s["model"], "amdvi", "{s}");
        assert_eq!(s["hardware"]["mode"], "v1");
        assert!(s["hardware"]["commands"].as_u64().unwrap() > 0);
    }

    #[test]
    fn scalable_mode_serves_pasid_and_privileged_requests_through_the_pasid_table() {
        let d = vtd_device(iommu_emulator::VtdMode::Scalable);
        d.core().attach(3, 8, false).unwrap();
        d.core()
            .map(3, 0x1000, 0x1fff, 0xa000, MapFlags::RW)
            .unwrap();
        // Without a PASID: RID_PASID's entry translates.
        let t = handle_line(
            &d,
            r#"{"cmd":"translate","endpoint":8,"iova":4100,"access":"write"}"#,
        );
        assert_eq!(t["translation"]["phys"], 0xa004, "{t}");
        assert!(
            t["trace"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["target"] == "pasid_entry"),
            "{t}"
        );
        // The privilege of a request without PASID is the context entry's RID_PRIV (0 here),
        // whatever the request asks.
        let p = handle_line(
            &d,
            r#"{"cmd":"translate","endpoint":8,"iova":4100,"access":"read","privileged":true}"#,
        );
        assert_eq!(p["translation"]["phys"], 0xa004, "{p}");
        // A PASID the driver did not set up: the context entry has PASIDE clear (SCT.6).
        let f = handle_line(
            &d,
            r#"{"cmd":"translate","endpoint":8,"iova":4100,"access":"read","pasid":7}"#,
        );
        assert_eq!(f["fault"]["code"], 0x45, "{f}");
        assert_eq!(f["fault"]["site"]["structure"], "device_table");
    }

    #[test]
    fn with_timing_translate_answers_cycles_and_record_starts_and_stops() {
        use iommu_emulator::timing::Preset;
        let d = vtd_device(iommu_emulator::VtdMode::Legacy);
        d.core().attach(3, 8, false).unwrap();
        d.core()
            .map(3, 0x1000, 0x1fff, 0xa000, MapFlags::RW)
            .unwrap();
        let obs = Observers::new(Some(&Preset::VtdServer.params()));
        let line = r#"{"cmd":"translate","endpoint":8,"iova":4100,"access":"write"}"#;
        let miss = handle_line_observed(&d, &[], &obs, line);
        let hit = handle_line_observed(&d, &[], &obs, line);
        let total = |v: &Value| v["cycles"]["total"].as_u64().unwrap();
        assert!(
            total(&miss) > total(&hit),
            "a walk costs more than a hit: {miss} {hit}"
        );
        assert_eq!(miss["cycles"]["iotlb_hit"], json!(false));
        assert_eq!(hit["cycles"]["iotlb_hit"], json!(true));
        assert!(miss["cycles"]["table_refs"].as_u64().unwrap() > 0, "{miss}");
        // Without timing, no cycles.
        assert_eq!(handle_line(&d, line)["cycles"], Value::Null);

        let dir = std::env::temp_dir().join(format!("ctl-record-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("r.jsonl");
        let start = handle_line_observed(
            &d,
            &[],
            &obs,
            &json!({"cmd": "record", "path": path}).to_string(),
        );
        assert_eq!(
            start["recording"],
            json!(path.display().to_string()),
            "{start}"
        );
        assert!(obs.recorder.is_on());
        let stop = handle_line_observed(&d, &[], &obs, r#"{"cmd":"record"}"#);
        assert_eq!(stop["stopped"]["records"], json!(0), "{stop}");
        assert!(!obs.recorder.is_on());
        let bad = handle_line_observed(
            &d,
            &[],
            &obs,
            &json!({"cmd": "record", "path": dir.join("no/dir/r")}).to_string(),
        );
        assert_eq!(bad["ok"], json!(false), "{bad}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_requests_get_errors() {
        let d = device();
        for line in [
            "not json",
            r#"{"cmd":"nope"}"#,
            r#"{"cmd":"translate","endpoint":8}"#,
            r#"{"cmd":"translate","endpoint":8,"iova":-1,"access":"read"}"#,
            r#"{"cmd":"translate","endpoint":8,"iova":1,"access":"fetch"}"#,
            r#"{"cmd":"translate","endpoint":65536,"iova":1,"access":"read"}"#,
            r#"{"cmd":"translate","endpoint":8,"iova":1,"access":"read","pasid":-1}"#,
            r#"{"cmd":"stats","extra":1}"#,
        ] {
            let v = handle_line(&d, line);
            assert_eq!(v["ok"], false, "{line}");
            assert!(v["error"].as_str().unwrap().starts_with("bad request"));
        }
    }

    proptest::proptest! {
        /// No request line, however malformed, panics the control handler.
        #[test]
        fn arbitrary_lines_never_panic(line in ".{0,200}", ep in 0u32..0x300, iova: u64) {
            let d = device();
            let v = handle_line(&d, &line);
            proptest::prop_assert!(v["ok"].is_boolean());
            let t = format!(r#"{{"cmd":"translate","endpoint":{ep},"iova":{iova},"access":"read"}}"#);
            let v = handle_line(&d, &t);
            proptest::prop_assert_eq!(&v["ok"], true);
            proptest::prop_assert!(v["fault"].is_object() != v["translation"].is_object());
        }
    }

    #[test]
    fn socket_serves_lines_and_refuses_long_ones() {
        let d = device();
        let dir = std::env::temp_dir().join(format!("viommu-ctl-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ctl.sock");
        spawn(d, Vec::new(), Arc::default(), &path).unwrap();
        let mut s = UnixStream::connect(&path).unwrap();
        writeln!(s, r#"{{"cmd":"stats"}}"#).unwrap();
        writeln!(s).unwrap();
        writeln!(s, r#"{{"cmd":"domains"}}"#).unwrap();
        let mut r = BufReader::new(s.try_clone().unwrap());
        let mut l = String::new();
        r.read_line(&mut l).unwrap();
        assert_eq!(serde_json::from_str::<Value>(&l).unwrap()["ok"], true);
        l.clear();
        r.read_line(&mut l).unwrap();
        assert!(serde_json::from_str::<Value>(&l).unwrap()["domains"].is_array());
        s.write_all(&vec![b'x'; MAX_LINE + 10]).unwrap();
        l.clear();
        r.read_line(&mut l).unwrap();
        assert_eq!(
            serde_json::from_str::<Value>(&l).unwrap()["error"],
            "line too long"
        );
        l.clear();
        assert_eq!(r.read_line(&mut l).unwrap(), 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn under_the_register_front_stats_and_endpoints_answer_and_core_commands_are_refused() {
        let unit: Arc<dyn Unit> = Arc::new(
            iommu_emulator::Vtd::new(
                pagewalk::FlatMem::new(0, 0x1_0000),
                iommu_emulator::VtdConfig::default(),
                Box::new(|_| {}),
            )
            .unwrap(),
        );
        let front = FrontStats::default();
        front.writes.store(3, Ordering::Relaxed);
        front.bar0.store(u64::MAX, Ordering::Relaxed);
        let s = handle_register_front_line(&*unit, &front, &[], r#"{"cmd":"stats"}"#);
        assert_eq!(s["ok"], json!(true), "{s}");
        assert_eq!(s["model"], json!("vtd"));
        assert_eq!(s["register_front"]["writes"], json!(3));
        assert_eq!(
            s["register_front"]["bar0"],
            Value::Null,
            "not programmed yet"
        );
        assert!(s["hardware"]["caches"]["iotlb"]["lookups"].is_u64(), "{s}");
        let e = handle_register_front_line(&*unit, &front, &[], r#"{"cmd":"endpoints"}"#);
        assert_eq!(e["endpoints"], json!([]));
        // With translation off, an endpoint's structures stop at the root table pointer.
        let v = structures_json(&*unit, 0x20);
        assert_eq!(v["entries"][0]["name"], json!("root table pointer"), "{v}");
        assert_eq!(v["entries"][0]["fields"]["TES"], json!(0), "{v}");
        assert!(v["stop"].as_str().unwrap().contains("disabled"), "{v}");
        for line in [
            r#"{"cmd":"domains"}"#,
            r#"{"cmd":"translate","endpoint":8,"iova":0,"access":"read"}"#,
            "not json",
        ] {
            let v = handle_register_front_line(&*unit, &front, &[], line);
            assert_eq!(v["ok"], json!(false), "{line}: {v}");
        }
    }
}

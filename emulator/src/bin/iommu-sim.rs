//! `iommu-sim`: the IOMMU timing simulator. Built-in workloads or a recorded trace run through
//! a unit programmed by its driver (VT-d legacy or scalable, AMD-Vi), every translation a real
//! walk through the unit's real caches, priced by the timing model and placed in time by its
//! discrete-event engine.
//!
//! ```text
//! iommu-sim run --model vtd --workload nic --page-size 4k --iotlb 1024 --walkers 4
//! iommu-sim replay dma.jsonl --model amdvi --json
//! iommu-sim sweep --param iotlb --values 64,128,256,512,1024 --workload nic --plot out/
//! iommu-sim params --preset gem5-smmuv3 > my.toml
//! ```

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use iommu_emulator::sim::platform::SimModel;
use iommu_emulator::sim::plot::{Chart, Series};
use iommu_emulator::sim::run::{RunConfig, RunReport, Source, run};
use iommu_emulator::sim::trace_file;
use iommu_emulator::sim::workload::WorkloadKind;
use iommu_emulator::timing::{Preset, TimingParams};

#[derive(Parser, Debug)]
#[command(name = "iommu-sim", version, about = "IOMMU timing simulator")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run a built-in workload.
    Run {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        workload: WorkloadArgs,
    },
    /// Replay a trace file (JSON lines: t in ns, source, pasid, addr, len, access), such as
    /// the daemon's `record` writes. Every page the trace touches is mapped first.
    Replay {
        /// The trace file.
        file: PathBuf,
        #[command(flatten)]
        common: Common,
    },
    /// Run a workload once per value of one parameter, the points in parallel threads.
    Sweep {
        /// The parameter swept.
        #[arg(long, value_enum)]
        param: SweepParam,
        /// Its values, comma separated (page sizes as 4k, 2m).
        #[arg(long, value_delimiter = ',', required = true)]
        values: Vec<String>,
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        workload: WorkloadArgs,
    },
    /// Print a preset's parameters as TOML (a starting point for --params).
    Params {
        /// The preset.
        #[arg(long, default_value = "vtd-server")]
        preset: String,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
enum SweepParam {
    /// IOTLB entries.
    Iotlb,
    /// Concurrent walker slots.
    Walkers,
    /// Paging-structure-cache entries per level.
    Pwc,
    /// Page size (4k or 2m).
    PageSize,
}

#[derive(Args, Debug, Clone)]
struct Common {
    /// The unit: vtd (legacy mode), vtd-scalable, amdvi.
    #[arg(long, default_value = "vtd")]
    model: String,
    /// A timing preset: gem5-smmuv3, vtd-server, amdvi-server (default: the model's server
    /// preset).
    #[arg(long, conflicts_with = "params")]
    preset: Option<String>,
    /// A TOML file of timing parameters.
    #[arg(long)]
    params: Option<PathBuf>,
    /// The page size the domains map with: 4k or 2m.
    #[arg(long, default_value = "4k")]
    page_size: String,
    /// IOTLB entries (overrides the parameters).
    #[arg(long)]
    iotlb: Option<u32>,
    /// Walker slots (overrides the parameters).
    #[arg(long)]
    walkers: Option<u32>,
    /// Paging-structure-cache entries per level (overrides the parameters).
    #[arg(long)]
    pwc: Option<u32>,
    /// Translations to simulate.
    #[arg(long, default_value_t = 2_000_000)]
    translations: u64,
    /// Bytes per PCIe request.
    #[arg(long, default_value_t = 256)]
    tlp_bytes: u64,
    /// Translations a device may have outstanding (0: no limit, the offered load arrives as
    /// offered); with a limit, latency costs throughput.
    #[arg(long, default_value_t = 0)]
    inflight: usize,
    /// The seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Write plots (SVG and PNG) into this directory.
    #[arg(long)]
    plot: Option<PathBuf>,
}

#[derive(Args, Debug, Clone)]
struct WorkloadArgs {
    /// nic, storage, gpu or tenants.
    #[arg(long, default_value = "nic")]
    workload: String,
    /// nic, tenants: buffers in the ring.
    #[arg(long)]
    ring: Option<u64>,
    /// nic, tenants, gpu: bytes per buffer.
    #[arg(long)]
    buffer_bytes: Option<u64>,
    /// nic, tenants: bytes per packet.
    #[arg(long)]
    packet_bytes: Option<u64>,
    /// nic, tenants, gpu: offered load per device, Gb/s.
    #[arg(long)]
    gbps: Option<f64>,
    /// storage: the file's size.
    #[arg(long)]
    file_bytes: Option<u64>,
    /// storage: bytes per read.
    #[arg(long)]
    io_bytes: Option<u64>,
    /// storage: reads per second.
    #[arg(long)]
    iops: Option<f64>,
    /// gpu: bytes per DMA.
    #[arg(long)]
    chunk_bytes: Option<u64>,
    /// tenants: how many.
    #[arg(long)]
    tenants: Option<u32>,
    /// nic, tenants: every N packets the driver unmaps the buffer and maps it again (the DMA
    /// API's strict mode is 1), invalidating through the unit's queue.
    #[arg(long, default_value_t = 0)]
    remap_every: u64,
}

impl WorkloadArgs {
    fn kind(&self) -> Result<WorkloadKind, String> {
        let mut k = WorkloadKind::by_name(&self.workload).ok_or_else(|| {
            format!(
                "unknown workload {:?} (known: {})",
                self.workload,
                WorkloadKind::NAMES.join(", ")
            )
        })?;
        let mut unused: Vec<&str> = Vec::new();
        macro_rules! set {
            ($field:ident, $flag:literal, [$($var:ident),*]) => {
                if let Some(v) = self.$field {
                    match &mut k {
                        $(WorkloadKind::$var { $field, .. } => *$field = v,)*
                        #[allow(unreachable_patterns)]
                        _ => unused.push($flag),
                    }
                }
            };
        }
        set!(ring, "--ring", [Nic, Tenants]);
        set!(buffer_bytes, "--buffer-bytes", [Nic, Tenants, Gpu]);
        set!(packet_bytes, "--packet-bytes", [Nic, Tenants]);
        set!(gbps, "--gbps", [Nic, Tenants, Gpu]);
        set!(file_bytes, "--file-bytes", [Storage]);
        set!(io_bytes, "--io-bytes", [Storage]);
        set!(iops, "--iops", [Storage]);
        set!(chunk_bytes, "--chunk-bytes", [Gpu]);
        set!(tenants, "--tenants", [Tenants]);
        if !unused.is_empty() {
            return Err(format!(
                "{} do not apply to the {} workload",
                unused.join(", "),
                k.name()
            ));
        }
        k.validate()?;
        Ok(k)
    }
}

fn page_size(s: &str) -> Result<u64, String> {
    match s.to_ascii_lowercase().as_str() {
        "4k" | "4096" => Ok(4096),
        "2m" | "2097152" => Ok(2 << 20),
        _ => Err(format!("page size {s:?}: give 4k or 2m")),
    }
}

impl Common {
    fn config(&self) -> Result<RunConfig, String> {
        let model: SimModel = self.model.parse()?;
        let mut params: TimingParams = match (&self.preset, &self.params) {
            (_, Some(path)) => {
                TimingParams::load(path).map_err(|e| format!("--params {}: {e}", path.display()))?
            }
            (Some(name), None) => name.parse::<Preset>().map_err(|e| e.to_string())?.params(),
            (None, None) => match model {
                SimModel::Amdvi => Preset::AmdviServer,
                _ => Preset::VtdServer,
            }
            .params(),
        };
        if let Some(n) = self.iotlb {
            params.iotlb.entries = n;
            params.iotlb.ways = params.iotlb.ways.min(n.max(1));
        }
        if let Some(n) = self.walkers {
            params.walkers = n;
        }
        if let Some(n) = self.pwc {
            params.pwc.entries = n;
            params.pwc.ways = params.pwc.ways.min(n.max(1));
        }
        params.validate().map_err(|e| e.to_string())?;
        if self.translations == 0 {
            return Err("--translations must be at least 1".into());
        }
        Ok(RunConfig {
            model,
            params,
            page_size: page_size(&self.page_size)?,
            seed: self.seed,
            tlp_bytes: self.tlp_bytes,
            translations: self.translations,
            remap_every: 0,
            inflight: self.inflight,
        })
    }
}

/// A progress bar on a terminal, nothing otherwise.
fn progress(total: u64, label: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::hidden());
    }
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(
            "{msg} [{elapsed_precise}] {wide_bar} {human_pos}/{human_len} ({per_sec})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_message(label.to_string());
    bar
}

fn table(r: &RunReport) -> String {
    let e = &r.engine;
    let mut s = String::new();
    let mut row = |k: &str, v: String| s.push_str(&format!("{k:<28} {v}\n"));
    row("model", r.model.to_string());
    row("workload", r.workload.clone());
    row("page size", format!("{} KiB", r.page_size / 1024));
    row("IOTLB entries", r.iotlb_entries.to_string());
    row("walkers", r.walkers.to_string());
    row("translations", r.translations.to_string());
    row("faults", r.faults.to_string());
    if r.remaps > 0 {
        row(
            "buffers remapped",
            format!(
                "{} ({} invalidations, {} translations stalled {} cycles)",
                r.remaps,
                e.invalidations,
                e.queueing.invalidation_stalls,
                e.queueing.invalidation_stall_cycles
            ),
        );
    }
    row("IOTLB hit rate", format!("{:.4}", r.iotlb_hit_rate));
    row(
        "memory refs / translation",
        format!("{:.3}", r.refs_per_translation),
    );
    row("table refs / walk", format!("{:.2}", r.table_refs_per_walk));
    row("walks", e.walks.to_string());
    row("coalesced with a walk", e.coalesced.to_string());
    row(
        "unloaded cost, mean",
        format!("{:.1} cycles", r.mean_cost_cycles),
    );
    row(
        "latency p50 / p99 / max",
        format!(
            "{} / {} / {} cycles (mean {:.1})",
            e.latency.p50, e.latency.p99, e.latency.max, e.latency.mean
        ),
    );
    row("walker utilization", format!("{:.3}", e.walker_utilization));
    row(
        "queued translations",
        format!(
            "{} ({} cycles waiting for a walker)",
            e.queueing.queued_translations, e.queueing.walker_wait_cycles
        ),
    );
    row(
        "throughput",
        format!(
            "{:.3} translations/cycle, {:.1} M/s at {} GHz",
            e.translations_per_cycle,
            e.translations_per_second / 1e6,
            e.clock_ghz
        ),
    );
    row(
        "simulator speed",
        format!(
            "{:.2} M translations/s",
            r.sim_translations_per_second / 1e6
        ),
    );
    let breakdown: Vec<String> = r
        .cost_breakdown
        .iter()
        .filter(|(_, v)| **v > 0)
        .map(|(k, v)| format!("{k} {:.1}", *v as f64 / r.translations.max(1) as f64))
        .collect();
    row("cycles / translation by part", breakdown.join(", "));
    for d in &r.deviations {
        row("unit deviation", d.clone());
    }
    s
}

/// The run's plots: the cycles CDF and walker occupancy over time.
fn run_plots(dir: &Path, r: &RunReport) -> Result<Vec<PathBuf>, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let label = format!("{} {} {} KiB", r.model, r.workload, r.page_size / 1024);
    let cdf = Chart {
        title: format!("translation latency CDF: {label}"),
        x: "cycles (arrival to completion)".into(),
        y: "fraction of translations".into(),
        log_x: true,
        series: vec![Series {
            name: label.clone(),
            points: r.cdf.iter().map(|&(c, f)| (c.max(1) as f64, f)).collect(),
        }],
    };
    let occ = Chart {
        title: format!("walker occupancy: {label}"),
        x: "cycles".into(),
        y: "busy walkers (mean per interval)".into(),
        log_x: false,
        series: vec![Series {
            name: label,
            points: r
                .engine
                .occupancy
                .iter()
                .map(|s| (s.start_cycle as f64, s.mean_busy_walkers))
                .collect(),
        }],
    };
    let mut out = Vec::new();
    for (c, stem) in [(cdf, "cdf"), (occ, "occupancy")] {
        out.extend(c.write(&dir.join(stem)).map_err(|e| e.to_string())?);
    }
    Ok(out)
}

fn main() -> ExitCode {
    match real_main() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("iommu-sim: {e}");
            ExitCode::from(2)
        }
    }
}

fn real_main() -> Result<(), String> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Params { preset } => {
            let p: Preset = preset
                .parse()
                .map_err(|e: iommu_emulator::timing::UnknownPreset| e.to_string())?;
            print!("{}", p.toml());
            Ok(())
        }
        Cmd::Run { common, workload } => {
            let mut cfg = common.config()?;
            cfg.remap_every = workload.remap_every;
            let kind = workload.kind()?;
            let bar = progress(cfg.translations, kind.name());
            let r = run(&cfg, &Source::Workload(kind), |n| bar.set_position(n))
                .map_err(|e| e.to_string())?;
            bar.finish_and_clear();
            report(&common, &r)
        }
        Cmd::Replay { file, common } => {
            let cfg = common.config()?;
            let f = std::fs::File::open(&file).map_err(|e| format!("{}: {e}", file.display()))?;
            let records = trace_file::read(std::io::BufReader::new(f))
                .map_err(|e| format!("{}: {e}", file.display()))?;
            let bar = progress(cfg.translations.min(records.len() as u64), "replay");
            let r = run(&cfg, &Source::Trace(records), |n| bar.set_position(n))
                .map_err(|e| e.to_string())?;
            bar.finish_and_clear();
            report(&common, &r)
        }
        Cmd::Sweep {
            param,
            values,
            common,
            workload,
        } => sweep(param, &values, &common, &workload),
    }
}

fn report(common: &Common, r: &RunReport) -> Result<(), String> {
    if common.json {
        println!(
            "{}",
            serde_json::to_string_pretty(r).map_err(|e| e.to_string())?
        );
    } else {
        print!("{}", table(r));
    }
    if let Some(dir) = &common.plot {
        for p in run_plots(dir, r)? {
            eprintln!("wrote {}", p.display());
        }
    }
    Ok(())
}

fn sweep(
    param: SweepParam,
    values: &[String],
    common: &Common,
    workload: &WorkloadArgs,
) -> Result<(), String> {
    let kind = workload.kind()?;
    let mut points = Vec::new();
    for v in values {
        let mut c = common.clone();
        let count = || -> Result<u32, String> {
            v.parse()
                .map_err(|_| format!("--values: {v:?} is not a count"))
        };
        match param {
            SweepParam::Iotlb => c.iotlb = Some(count()?),
            SweepParam::Walkers => c.walkers = Some(count()?),
            SweepParam::Pwc => c.pwc = Some(count()?),
            SweepParam::PageSize => {
                page_size(v)?;
                c.page_size = v.clone();
            }
        }
        let mut cfg = c.config()?;
        cfg.remap_every = workload.remap_every;
        points.push((v.clone(), cfg));
    }
    let total: u64 = points.iter().map(|(_, c)| c.translations).sum();
    let bar = progress(total, "sweep");
    let done = std::sync::atomic::AtomicU64::new(0);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    // The points run in parallel threads, a few at a time.
    let mut results: Vec<Option<Result<RunReport, String>>> =
        (0..points.len()).map(|_| None).collect();
    for chunk in (0..points.len()).collect::<Vec<_>>().chunks(threads) {
        std::thread::scope(|s| {
            let handles: Vec<_> = chunk
                .iter()
                .map(|&i| {
                    let (cfg, kind, bar, done) = (&points[i].1, &kind, &bar, &done);
                    s.spawn(move || {
                        let mut last = 0;
                        run(cfg, &Source::Workload(kind.clone()), |n| {
                            let d = done.fetch_add(n - last, std::sync::atomic::Ordering::Relaxed);
                            last = n;
                            bar.set_position(d + n - last);
                        })
                        .map_err(|e| e.to_string())
                    })
                })
                .collect();
            for (&i, h) in chunk.iter().zip(handles) {
                results[i] = Some(
                    h.join()
                        .unwrap_or_else(|_| Err("a sweep point panicked".into())),
                );
            }
        });
    }
    bar.finish_and_clear();
    let reports: Vec<(String, RunReport)> = points
        .iter()
        .zip(results)
        .map(|((v, _), r)| r.expect("every point ran").map(|r| (v.clone(), r)))
        .collect::<Result<_, _>>()?;
    let name = match param {
        SweepParam::Iotlb => "IOTLB entries",
        SweepParam::Walkers => "walkers",
        SweepParam::Pwc => "PWC entries per level",
        SweepParam::PageSize => "page size",
    };
    if common.json {
        let list: Vec<serde_json::Value> = reports
            .iter()
            .map(|(v, r)| serde_json::json!({"value": v, "report": r}))
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&list).map_err(|e| e.to_string())?
        );
    } else {
        println!(
            "{name:>14} {:>10} {:>10} {:>10} {:>8} {:>8} {:>10} {:>12}",
            "hit rate", "refs/xlat", "refs/walk", "p50", "p99", "mean", "M xlat/s"
        );
        for (v, r) in &reports {
            println!(
                "{v:>14} {:>10.4} {:>10.3} {:>10.2} {:>8} {:>8} {:>10.1} {:>12.1}",
                r.iotlb_hit_rate,
                r.refs_per_translation,
                r.table_refs_per_walk,
                r.engine.latency.p50,
                r.engine.latency.p99,
                r.engine.latency.mean,
                r.engine.translations_per_second / 1e6
            );
        }
    }
    if let Some(dir) = &common.plot {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let x = |v: &str| match param {
            SweepParam::PageSize => page_size(v).map(|p| p as f64 / 1024.0).unwrap_or(0.0),
            _ => v.parse::<f64>().unwrap_or(0.0),
        };
        let label = format!("{} {}", common.model, kind.name());
        let x_desc = match param {
            SweepParam::PageSize => "page size (KiB)".to_string(),
            _ => name.to_string(),
        };
        let line = |f: &dyn Fn(&RunReport) -> f64| Series {
            name: label.clone(),
            points: reports.iter().map(|(v, r)| (x(v), f(r))).collect(),
        };
        let charts = [
            (
                Chart {
                    title: format!("IOTLB hit rate against {name}: {label}"),
                    x: x_desc.clone(),
                    y: "IOTLB hit rate".into(),
                    log_x: param != SweepParam::Walkers,
                    series: vec![line(&|r| r.iotlb_hit_rate)],
                },
                "hit_rate",
            ),
            (
                Chart {
                    title: format!("throughput against {name}: {label}"),
                    x: x_desc.clone(),
                    y: "M translations/s".into(),
                    log_x: param != SweepParam::Walkers,
                    series: vec![line(&|r| r.engine.translations_per_second / 1e6)],
                },
                "throughput",
            ),
            (
                Chart {
                    title: format!("mean latency against {name}: {label}"),
                    x: x_desc.clone(),
                    y: "cycles".into(),
                    log_x: param != SweepParam::Walkers,
                    series: vec![line(&|r| r.engine.latency.mean)],
                },
                "latency",
            ),
            (
                Chart {
                    title: format!("page-table references per walk against {name}: {label}"),
                    x: x_desc.clone(),
                    y: "table references per walk".into(),
                    log_x: param != SweepParam::Walkers,
                    series: vec![line(&|r| r.table_refs_per_walk)],
                },
                "refs_per_walk",
            ),
        ];
        for (c, stem) in charts {
            for p in c.write(&dir.join(stem)).map_err(|e| e.to_string())? {
                eprintln!("wrote {}", p.display());
            }
        }
    }
    Ok(())
}

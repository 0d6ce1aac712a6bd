//! Command-line arguments and the validated daemon configuration (the rust-vmm vhost-device
//! convention: clap arguments turned into a checked config before anything starts).

use std::ops::RangeInclusive;
use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};
use iommu_emulator::core::{CoreConfig, EndpointSet, ResvRegion};

use crate::endpoint::EndpointSpec;
use crate::register_front::{FrontKind, RegisterFrontSpec};
use crate::viot::{EndpointRange, PciBdf, Topology};

/// The VIOT topology for endpoints `ranges` (segment 0) behind the IOMMU at `iommu`: the ranges
/// merged, with the IOMMU's own requester id cut out.
pub fn viot_topology(
    ranges: &[RangeInclusive<u32>],
    iommu: PciBdf,
) -> Result<Topology, ConfigError> {
    let mut sorted: Vec<(u32, u32)> = ranges.iter().map(|r| (*r.start(), *r.end())).collect();
    sorted.sort_unstable();
    let mut merged: Vec<(u32, u32)> = Vec::new();
    for (a, b) in sorted {
        match merged.last_mut() {
            Some(last) if a <= last.1.saturating_add(1) => last.1 = last.1.max(b),
            _ => merged.push((a, b)),
        }
    }
    let me = u32::from(iommu.rid());
    let mut endpoints = Vec::new();
    for (a, b) in merged {
        let mut pieces = Vec::new();
        if (a..=b).contains(&me) {
            if let Some(e) = me.checked_sub(1).filter(|e| *e >= a) {
                pieces.push((a, e));
            }
            if me < b {
                pieces.push((me + 1, b));
            }
        } else {
            pieces.push((a, b));
        }
        for (x, y) in pieces {
            let (Ok(x), Ok(y)) = (u16::try_from(x), u16::try_from(y)) else {
                return Err(ConfigError::Endpoint(u64::from(y)));
            };
            let r = EndpointRange::new(PciBdf::from_rid(0, x), PciBdf::from_rid(0, y))
                .map_err(|e| ConfigError::Invalid(e.to_string()))?;
            endpoints.push(r);
        }
    }
    let topo = Topology { iommu, endpoints };
    topo.validate()
        .map_err(|e| ConfigError::Invalid(format!("VIOT: {e}")))?;
    Ok(topo)
}

/// Errors in the command line.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A number could not be parsed.
    #[error("invalid number '{0}'")]
    Number(String),
    /// A range is malformed or reversed.
    #[error("invalid range '{0}'")]
    Range(String),
    /// An endpoint id outside PCI segment 0's requester ids.
    #[error("endpoint {0:#x} is not a PCI requester id (0x0000-0xffff)")]
    Endpoint(u64),
    /// A value outside what the device supports.
    #[error("{0}")]
    Invalid(String),
}

/// Which hardware model realises the domains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Model {
    /// Intel VT-d: context entries, second-stage tables and queued invalidation in an
    /// IOMMU-private memory region; translation through the model's caches and walkers.
    Vtd,
    /// AMD-Vi: a device table, v1 host tables, the command buffer and the event log in an
    /// IOMMU-private memory region; translation through the model's caches and walkers.
    Amdvi,
    /// No memory-resident structures: domains are mapping trees (for comparison and testing).
    Soft,
}

/// How the VT-d realisation programs the unit (RTADDR.TTM).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum VtdModeArg {
    /// Legacy mode: root and context entries.
    Legacy,
    /// Scalable mode: scalable context entries, PASID directories and tables.
    Scalable,
}

/// The whole command line: serve a device (the options at top level), or a subcommand.
#[derive(Debug, Parser)]
#[command(
    name = "vhost-device-iommu",
    version,
    about = "vhost-user virtio-iommu device backed by an IOMMU hardware model",
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
pub struct Cli {
    /// A subcommand; without one, the daemon serves the device.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Options of the daemon.
    #[command(flatten)]
    pub serve: Args,
}

/// Subcommands of `vhost-device-iommu`.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Write the ACPI VIOT table for a topology (for QEMU's `-acpitable file=`) and exit.
    Viot(ViotArgs),
}

/// Arguments of `vhost-device-iommu viot`.
#[derive(Debug, clap::Args)]
pub struct ViotArgs {
    /// PCI address (`BB:DD.F`, or a requester id) of the virtio-iommu device; it is left out of
    /// the endpoint ranges.
    #[arg(long)]
    pub iommu_bdf: String,

    /// Endpoints behind the IOMMU (PCI requester ids or `BB:DD.F`): comma-separated ids or
    /// `first-last` ranges, as for the daemon's --endpoints.
    #[arg(long, default_value = "0x0000-0xffff")]
    pub endpoints: String,

    /// The file to write.
    #[arg(long, short)]
    pub output: PathBuf,
}

impl ViotArgs {
    /// The validated output path and topology.
    pub fn topology(&self) -> Result<(PathBuf, Topology), ConfigError> {
        if self.output.as_os_str().is_empty() {
            return Err(ConfigError::Invalid("--output must not be empty".into()));
        }
        let ranges = parse_endpoint_ranges(&self.endpoints)?;
        let iommu = parse_endpoint(&self.iommu_bdf)?;
        Ok((
            self.output.clone(),
            viot_topology(&ranges, PciBdf::from_rid(0, iommu as u16))?,
        ))
    }
}

/// Parses `--endpoints`: comma-separated ids or `first-last` ranges; at least one.
fn parse_endpoint_ranges(s: &str) -> Result<Vec<RangeInclusive<u32>>, ConfigError> {
    let mut ranges = Vec::new();
    for part in s.split(',').filter(|p| !p.trim().is_empty()) {
        ranges.push(parse_range(part, parse_endpoint)?);
    }
    if ranges.is_empty() {
        return Err(ConfigError::Invalid("--endpoints names no endpoint".into()));
    }
    Ok(ranges)
}

/// Options of the daemon (`vhost-device-iommu --socket-path PATH ...`).
#[derive(Debug, Parser)]
#[command(version, about)]
pub struct Args {
    /// Location of the vhost-user Unix domain socket (required to serve).
    #[arg(long)]
    pub socket_path: Option<PathBuf>,

    /// Location of the JSON-lines control socket (translate, domains, stats).
    #[arg(long)]
    pub control_socket: Option<PathBuf>,

    /// Hardware model realising the domains.
    #[arg(long, value_enum, default_value = "vtd")]
    pub model: Model,

    /// The timing model's parameters: a preset (`gem5-smmuv3`, `vtd-server`, `amdvi-server`),
    /// a TOML file of them, `auto` (the server preset of --model's unit) or `off`. With
    /// timing on, `translate` answers the cycles of each translation and `stats` each
    /// endpoint's distribution of translation cycles.
    #[arg(long, default_value = "auto", value_name = "PRESET|FILE|auto|off")]
    pub timing: String,

    /// How the VT-d model is programmed: legacy (context entries) or scalable (PASID entries of
    /// RID_PASID; needs 8 KiB of private memory per endpoint ever made present).
    #[arg(long, value_enum, default_value = "legacy")]
    pub vtd_mode: VtdModeArg,

    /// Physical base of the IOMMU-private region holding the model's tables (outside guest RAM,
    /// below 2^phys-bits).
    #[arg(long, default_value = "0x400000000000")]
    pub private_base: String,

    /// Size of the IOMMU-private region in MiB (reserved address space; pages are touched only
    /// as tables are built).
    #[arg(long, default_value_t = 256)]
    pub private_mib: u64,

    /// Endpoints (PCI requester ids `bus<<8|dev<<3|fn`, or `BB:DD.F`) managed by the IOMMU:
    /// comma-separated ids or `first-last` ranges.
    #[arg(long, default_value = "0x0000-0xffff")]
    pub endpoints: String,

    /// Page sizes that can be mapped; the lowest set bit is the granularity.
    #[arg(long, default_value = "0x40201000")]
    pub page_size_mask: String,

    /// Width of the I/O virtual address space in bits (input_range is [0, 2^bits - 1]).
    #[arg(long, default_value_t = 48)]
    pub input_bits: u32,

    /// Width of the physical address space mappings may target, in bits.
    #[arg(long, default_value_t = 48)]
    pub phys_bits: u32,

    /// Valid domain ids, `first-last`.
    #[arg(long, default_value = "0-0xffff")]
    pub domain_range: String,

    /// Most domains that may exist at once (more gives VIRTIO_IOMMU_S_NOMEM).
    #[arg(long, default_value_t = 4096)]
    pub max_domains: usize,

    /// Most mappings that may exist at once (more gives VIRTIO_IOMMU_S_NOMEM).
    #[arg(long, default_value_t = 1 << 20)]
    pub max_mappings: usize,

    /// Bytes of PROBE properties (config field probe_size).
    #[arg(long, default_value_t = 512)]
    pub probe_size: u32,

    /// Initial value of config field `bypass`: unattached endpoints pass through.
    #[arg(long)]
    pub bypass: bool,

    /// After the request queue runs dry, keep polling it this many microseconds (with guest
    /// notifications still suppressed; only when EVENT_IDX is negotiated) so back-to-back
    /// requests are served without a kick or a thread wakeup. 0 disables polling; at most
    /// 1000000.
    #[arg(long, default_value_t = 100)]
    pub request_poll_us: u64,

    /// Do not report the x86 MSI window (0xfee00000-0xfeefffff) as a reserved region.
    #[arg(long)]
    pub no_msi_window: bool,

    /// Write the ACPI VIOT table describing this IOMMU and its endpoints to this file (for
    /// QEMU's `-acpitable file=`) before serving. Needs --iommu-bdf.
    #[arg(long, requires = "iommu_bdf")]
    pub viot_out: Option<PathBuf>,

    /// PCI address (`BB:DD.F`) at which QEMU places the virtio-iommu device, for --viot-out;
    /// it is left out of the endpoint ranges.
    #[arg(long)]
    pub iommu_bdf: Option<String>,

    /// Serve an endpoint device over vfio-user whose every DMA the IOMMU translates:
    /// `dma@BB:DD.F,socket=PATH` (the DMA engine, at the PCI address QEMU gives it with
    /// `vfio-user-pci`; its requester id must be one of --endpoints). `,iommu=bypass` makes its
    /// DMA bypass the IOMMU (guest-physical addresses; a benchmark baseline). Repeatable.
    #[arg(long = "endpoint", value_name = "KIND@BDF,socket=PATH[,iommu=bypass]")]
    pub endpoint_devices: Vec<String>,

    /// Serve a unit's register file over vfio-user instead of a virtio-iommu, for the
    /// guest's own intel_iommu or amd_iommu driver: `vtd|amdvi,socket=PATH,addr=BB:DD.F,
    /// base=ADDR` (the PCI address QEMU gives the function and the address the guest's
    /// firmware gives its BAR, which the DMAR or IVRS names). The unit is --model's (give
    /// `--model amdvi` for an amdvi front). Replaces --socket-path; the --endpoint devices
    /// translate through the unit.
    #[arg(long, value_name = "vtd|amdvi,socket=PATH,addr=BDF,base=ADDR")]
    pub register_front: Option<String>,

    /// Write the ACPI DMAR table of a VT-d register front (its base, the --endpoint devices
    /// in its scope) to this file, for QEMU's `-acpitable file=`.
    #[arg(long, requires = "register_front", conflicts_with = "ivrs_out")]
    pub dmar_out: Option<PathBuf>,

    /// Write the ACPI IVRS table of an AMD-Vi register front (an IVHD naming its function,
    /// capability offset and base, the --endpoint devices as its device entries) to this
    /// file, for QEMU's `-acpitable file=`.
    #[arg(long, requires = "register_front")]
    pub ivrs_out: Option<PathBuf>,
}

/// The validated daemon configuration.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    /// vhost-user socket path (none under the register front).
    pub socket_path: Option<PathBuf>,
    /// Control socket path.
    pub control_socket: Option<PathBuf>,
    /// Hardware model.
    pub model: Model,
    /// The timing model's parameters (none with `--timing off`).
    pub timing: Option<iommu_emulator::timing::TimingParams>,
    /// VT-d programming mode.
    pub vtd_mode: VtdModeArg,
    /// The core's configuration.
    pub core: CoreConfig,
    /// Base and size of the IOMMU-private region.
    pub private_region: (u64, u64),
    /// Where to write the VIOT table, and what it describes.
    pub viot: Option<(PathBuf, Topology)>,
    /// PROBE property bytes.
    pub probe_size: u32,
    /// How long the request queue is polled after it runs dry.
    pub request_poll: std::time::Duration,
    /// The endpoint devices served over vfio-user.
    pub endpoint_devices: Vec<EndpointSpec>,
    /// The register front, which replaces the virtio-iommu, and where to write its ACPI table
    /// (a DMAR for VT-d, an IVRS for AMD-Vi).
    pub register_front: Option<(RegisterFrontSpec, Option<PathBuf>)>,
}

impl DaemonConfig {
    /// The configuration the command line gives with only `--socket-path socket_path`: every
    /// other option at its default (the VT-d model in legacy mode, every endpoint of segment
    /// 0, no control socket). Change the fields before [`crate::daemon::run`].
    pub fn new(socket_path: impl Into<PathBuf>) -> Result<Self, ConfigError> {
        let mut args = Args::try_parse_from(["vhost-device-iommu"])
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        args.socket_path = Some(socket_path.into());
        Self::try_from(args)
    }
}

/// Largest probe_size accepted.
pub const MAX_PROBE_SIZE: u32 = 64 * 1024;

fn parse_u64(s: &str) -> Result<u64, ConfigError> {
    let t = s.trim();
    let r = match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(h, 16),
        None => t.parse(),
    };
    r.map_err(|_| ConfigError::Number(s.to_string()))
}

/// Parses the `--endpoint` options: each behind the IOMMU (among `ranges`), none at the
/// IOMMU's own address, no address or socket twice.
fn endpoint_devices(
    specs: &[String],
    ranges: &[RangeInclusive<u32>],
    iommu_bdf: Option<&str>,
) -> Result<Vec<EndpointSpec>, ConfigError> {
    let iommu = iommu_bdf.map(parse_endpoint).transpose()?;
    let mut out: Vec<EndpointSpec> = Vec::new();
    for s in specs {
        let e: EndpointSpec = s
            .parse()
            .map_err(|e: crate::endpoint::EndpointSpecError| ConfigError::Invalid(e.to_string()))?;
        let rid = u32::from(e.bdf.rid());
        let bad = |why: &str| Err(ConfigError::Invalid(format!("--endpoint {s}: {why}")));
        if !ranges.iter().any(|r| r.contains(&rid)) {
            return bad(
                "its requester id is not among --endpoints, so no DMA of it would be translated",
            );
        }
        if iommu == Some(rid) {
            return bad("it is the virtio-iommu's own address");
        }
        if out.iter().any(|o| o.bdf == e.bdf) {
            return bad("another --endpoint has that address");
        }
        if out.iter().any(|o| o.socket == e.socket) {
            return bad("another --endpoint has that socket");
        }
        out.push(e);
    }
    Ok(out)
}

/// Parses an endpoint id: a number, or a PCI address of segment 0 (`BB:DD.F` as lspci prints
/// it, or `0000:BB:DD.F`).
fn parse_endpoint(s: &str) -> Result<u32, ConfigError> {
    let t = s.trim();
    let v = if t.contains(':') {
        match t.parse::<iommu_emulator::PciBdf>() {
            Ok(b) if b.segment == 0 => u64::from(b.rid()),
            _ => return Err(ConfigError::Number(s.to_string())),
        }
    } else {
        parse_u64(t)?
    };
    if v > 0xffff {
        return Err(ConfigError::Endpoint(v));
    }
    Ok(v as u32)
}

fn parse_range<T>(
    s: &str,
    item: impl Fn(&str) -> Result<T, ConfigError>,
) -> Result<RangeInclusive<T>, ConfigError>
where
    T: PartialOrd + Copy,
{
    let (a, b) = match s.split_once('-') {
        Some((a, b)) => (item(a)?, item(b)?),
        None => {
            let v = item(s)?;
            (v, v)
        }
    };
    if a > b {
        return Err(ConfigError::Range(s.to_string()));
    }
    Ok(a..=b)
}

impl TryFrom<Args> for DaemonConfig {
    type Error = ConfigError;

    fn try_from(a: Args) -> Result<Self, ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        let register_front = match &a.register_front {
            Some(s) => {
                let spec = s
                    .parse::<RegisterFrontSpec>()
                    .map_err(|e| ConfigError::Invalid(e.to_string()))?;
                let table = match (spec.kind, &a.dmar_out, &a.ivrs_out) {
                    (FrontKind::Vtd, _, Some(_)) => {
                        return invalid(
                            "a vtd register front is described by a DMAR: use --dmar-out".into(),
                        );
                    }
                    (FrontKind::Amdvi, Some(_), _) => {
                        return invalid(
                            "an amdvi register front is described by an IVRS: use --ivrs-out"
                                .into(),
                        );
                    }
                    (FrontKind::Vtd, d, None) => d.clone(),
                    (FrontKind::Amdvi, None, i) => i.clone(),
                };
                Some((spec, table))
            }
            None => None,
        };
        let socket_path = match (a.socket_path, &register_front) {
            (Some(_), Some(_)) => {
                return invalid(
                    "--register-front replaces the virtio-iommu: give no --socket-path".into(),
                );
            }
            (Some(p), None) if !p.as_os_str().is_empty() => Some(p),
            (Some(_), None) => return invalid("--socket-path must not be empty".into()),
            (None, Some(_)) => None,
            (None, None) => {
                return invalid("--socket-path is required to serve the device".into());
            }
        };
        if let Some((front, _)) = &register_front {
            let model = match front.kind {
                FrontKind::Vtd => Model::Vtd,
                FrontKind::Amdvi => Model::Amdvi,
            };
            if a.model != model {
                return invalid(format!(
                    "a {0} register front serves the {0} unit: give --model {0}",
                    front.kind.name()
                ));
            }
            if a.viot_out.is_some() {
                return invalid(
                    "--register-front has no virtio-iommu to describe: use --dmar-out or \
                     --ivrs-out"
                        .into(),
                );
            }
        }
        let timing = timing_params(&a.timing, a.model)?;
        let page_size_mask = parse_u64(&a.page_size_mask)?;
        if page_size_mask == 0 {
            return invalid("--page-size-mask must have at least one bit set".into());
        }
        if page_size_mask.trailing_zeros() < 12 {
            return invalid("the page granularity must be at least 4 KiB".into());
        }
        if !(12..=64).contains(&a.input_bits) {
            return invalid("--input-bits must be between 12 and 64".into());
        }
        if !(12..=64).contains(&a.phys_bits) {
            return invalid("--phys-bits must be between 12 and 64".into());
        }
        let domains = parse_range(&a.domain_range, |x| {
            let v = parse_u64(x)?;
            u32::try_from(v).map_err(|_| ConfigError::Number(x.to_string()))
        })?;
        let ranges = parse_endpoint_ranges(&a.endpoints)?;
        if a.max_domains == 0 || a.max_mappings == 0 {
            return invalid("--max-domains and --max-mappings must be positive".into());
        }
        if a.probe_size > MAX_PROBE_SIZE {
            return invalid(format!("--probe-size must be at most {MAX_PROBE_SIZE}"));
        }
        let reserved = if a.no_msi_window {
            vec![]
        } else {
            vec![ResvRegion::X86_MSI]
        };
        let needed = reserved.len() as u32 * crate::protocol::RESV_MEM_LEN as u32;
        if a.probe_size < needed {
            return invalid(format!("--probe-size must be at least {needed}"));
        }
        let max_poll = crate::backend::MAX_REQUEST_POLL.as_micros() as u64;
        if a.request_poll_us > max_poll {
            return invalid(format!("--request-poll-us must be at most {max_poll}"));
        }
        let private_base = parse_u64(&a.private_base)?;
        let private_size = a
            .private_mib
            .checked_mul(1 << 20)
            .filter(|s| (1..=1 << 40).contains(s))
            .ok_or_else(|| ConfigError::Invalid("--private-mib must be 1..=1048576".into()))?;
        if private_base & 0xfff != 0 {
            return invalid("--private-base must be 4 KiB aligned".into());
        }
        match private_base.checked_add(private_size) {
            Some(end) if a.phys_bits == 64 || end <= 1u64 << a.phys_bits => {}
            _ => return invalid("the private region must end below 2^phys-bits".into()),
        }
        let viot = match (&a.viot_out, &a.iommu_bdf) {
            (Some(path), Some(bdf)) => {
                let iommu = parse_endpoint(bdf)?;
                Some((
                    path.clone(),
                    viot_topology(&ranges, PciBdf::from_rid(0, iommu as u16))?,
                ))
            }
            _ => None,
        };
        let endpoint_devices =
            endpoint_devices(&a.endpoint_devices, &ranges, a.iommu_bdf.as_deref())?;
        if let Some((front, _)) = &register_front
            && endpoint_devices.iter().any(|e| e.bdf == front.bdf)
        {
            return invalid(format!(
                "--register-front at {} and an --endpoint share the address",
                front.bdf
            ));
        }
        let input_end = if a.input_bits == 64 {
            u64::MAX
        } else {
            (1u64 << a.input_bits) - 1
        };
        Ok(Self {
            socket_path,
            control_socket: a.control_socket,
            model: a.model,
            vtd_mode: a.vtd_mode,
            probe_size: a.probe_size,
            request_poll: std::time::Duration::from_micros(a.request_poll_us),
            timing,
            private_region: (private_base, private_size),
            viot,
            endpoint_devices,
            register_front,
            core: CoreConfig {
                page_size_mask,
                input_range: (0, input_end),
                domain_range: (*domains.start(), *domains.end()),
                max_domains: a.max_domains,
                max_mappings: a.max_mappings,
                phys_addr_bits: a.phys_bits,
                endpoints: EndpointSet::from_ranges(ranges.clone()),
                reserved,
                bypass: a.bypass,
            },
        })
    }
}

/// The timing parameters `--timing` names: a preset, `auto` (the model's unit's server
/// preset; VT-d's for the soft model), `off`, or a TOML file.
fn timing_params(
    arg: &str,
    model: Model,
) -> Result<Option<iommu_emulator::timing::TimingParams>, ConfigError> {
    use iommu_emulator::timing::{Preset, TimingParams};
    Ok(match arg {
        "off" => None,
        "auto" => Some(
            match model {
                Model::Amdvi => Preset::AmdviServer,
                Model::Vtd | Model::Soft => Preset::VtdServer,
            }
            .params(),
        ),
        name => match name.parse::<Preset>() {
            Ok(p) => Some(p.params()),
            Err(_) if std::path::Path::new(name).exists() => Some(
                TimingParams::load(name)
                    .map_err(|e| ConfigError::Invalid(format!("--timing {name}: {e}")))?,
            ),
            Err(e) => {
                return Err(ConfigError::Invalid(format!(
                    "--timing {name:?}: {e}, and no such file"
                )));
            }
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &[&str]) -> Result<DaemonConfig, String> {
        let mut argv = vec!["vhost-device-iommu", "--socket-path", "/tmp/x.sock"];
        argv.extend_from_slice(extra);
        let args = Args::try_parse_from(argv).map_err(|e| e.to_string())?;
        DaemonConfig::try_from(args).map_err(|e| e.to_string())
    }

    #[test]
    fn timing_is_the_models_server_preset_unless_told() {
        use iommu_emulator::timing::Preset;
        assert_eq!(parse(&[]).unwrap().timing, Some(Preset::VtdServer.params()));
        assert_eq!(
            parse(&["--model", "amdvi"]).unwrap().timing,
            Some(Preset::AmdviServer.params())
        );
        assert_eq!(parse(&["--timing", "off"]).unwrap().timing, None);
        assert_eq!(
            parse(&["--timing", "gem5-smmuv3"]).unwrap().timing,
            Some(Preset::Gem5Smmuv3.params())
        );
        let dir = std::env::temp_dir().join(format!("timing-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("t.toml");
        std::fs::write(&file, Preset::AmdviServer.toml()).unwrap();
        assert_eq!(
            parse(&["--timing", file.to_str().unwrap()]).unwrap().timing,
            Some(Preset::AmdviServer.params())
        );
        std::fs::write(&file, "clock_ghz = 2.0\nbogus = 1\n").unwrap();
        let e = parse(&["--timing", file.to_str().unwrap()]).unwrap_err();
        assert!(e.contains("--timing"), "{e}");
        let e = parse(&["--timing", "fastest"]).unwrap_err();
        assert!(e.contains("no such file"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn defaults() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.core.page_size_mask, 0x4020_1000);
        assert_eq!(c.core.input_range, (0, (1 << 48) - 1));
        assert_eq!(c.core.domain_range, (0, 0xffff));
        assert!(c.core.endpoints.contains(0xffff));
        assert_eq!(c.core.reserved, vec![ResvRegion::X86_MSI]);
        assert_eq!(c.probe_size, 512);
        assert!(!c.core.bypass);
        assert_eq!(c.model, Model::Vtd);
        assert_eq!(c.vtd_mode, VtdModeArg::Legacy);
        let c = parse(&["--vtd-mode", "scalable", "--model", "soft"]).unwrap();
        assert_eq!((c.model, c.vtd_mode), (Model::Soft, VtdModeArg::Scalable));
        assert_eq!(parse(&["--model", "amdvi"]).unwrap().model, Model::Amdvi);
        assert_eq!(c.private_region, (0x4000_0000_0000, 256 << 20));
        assert_eq!(c.request_poll, crate::backend::DEFAULT_REQUEST_POLL);
        let c = parse(&["--request-poll-us", "0"]).unwrap();
        assert_eq!(c.request_poll, std::time::Duration::ZERO);
        let c = parse(&["--request-poll-us", "1000000"]).unwrap();
        assert_eq!(c.request_poll, crate::backend::MAX_REQUEST_POLL);
        let e = parse(&["--request-poll-us", "1000001"]).unwrap_err();
        assert!(
            e.contains("--request-poll-us must be at most 1000000"),
            "{e}"
        );
    }

    #[test]
    fn an_embedders_config_is_the_command_lines_defaults() {
        let c = DaemonConfig::new("/tmp/e.sock").unwrap();
        assert_eq!(c.socket_path, Some(PathBuf::from("/tmp/e.sock")));
        assert_eq!(c.control_socket, None);
        let p = parse(&[]).unwrap();
        assert_eq!((c.model, c.vtd_mode), (p.model, p.vtd_mode));
        assert_eq!(c.private_region, p.private_region);
        assert_eq!(
            (c.probe_size, c.request_poll),
            (p.probe_size, p.request_poll)
        );
        assert_eq!(c.core.page_size_mask, p.core.page_size_mask);
        assert_eq!(c.core.endpoints, p.core.endpoints);
    }

    #[test]
    fn endpoints_accept_numbers_ranges_and_bdfs() {
        let c = parse(&["--endpoints", "0x08, 00:03.0-00:04.7,16", "--bypass"]).unwrap();
        let e = &c.core.endpoints;
        assert!(e.contains(8) && e.contains(16) && e.contains(0x18) && e.contains(0x27));
        assert!(!e.contains(0x17) && !e.contains(0x28) && !e.contains(9));
        assert!(c.core.bypass);
        let c = parse(&["--endpoints", "01:1f.7"]).unwrap();
        assert!(c.core.endpoints.contains(0x1ff));
    }

    #[test]
    fn viot_ranges_leave_out_the_iommu() {
        let c = parse(&[
            "--endpoints",
            "00:00.0-00:1f.7,00:10.0",
            "--viot-out",
            "/tmp/v.bin",
            "--iommu-bdf",
            "00:03.0",
        ])
        .unwrap();
        let (path, topo) = c.viot.unwrap();
        assert_eq!(path, PathBuf::from("/tmp/v.bin"));
        assert_eq!(topo.iommu.rid(), 0x18);
        let r: Vec<(u16, u16)> = topo
            .endpoints
            .iter()
            .map(|r| (r.first.rid(), r.last.rid()))
            .collect();
        assert_eq!(r, vec![(0, 0x17), (0x19, 0xff)]);
        // The table round-trips through the decoder.
        let bytes = crate::viot::build_viot(&topo).unwrap();
        assert_eq!(crate::viot::parse_viot(&bytes).unwrap(), topo);
        // The IOMMU at an end of a range, or outside every range.
        let t = viot_topology(&[0..=0x18], PciBdf::from_rid(0, 0x18)).unwrap();
        assert_eq!(t.endpoints.len(), 1);
        assert_eq!(t.endpoints[0].last.rid(), 0x17);
        let t = viot_topology(&[0x18..=0x18, 0x20..=0x20], PciBdf::from_rid(0, 0x18)).unwrap();
        assert_eq!(t.endpoints.len(), 1);
        assert!(viot_topology(&[0x18..=0x18], PciBdf::from_rid(0, 0x18)).is_err());
        // --viot-out needs --iommu-bdf.
        assert!(parse(&["--viot-out", "/tmp/v.bin"]).is_err());
    }

    #[test]
    fn command_line_serves_or_runs_the_viot_subcommand() {
        let cli = Cli::try_parse_from(["vhost-device-iommu", "--socket-path", "/tmp/s"]).unwrap();
        assert!(cli.command.is_none());
        let c = DaemonConfig::try_from(cli.serve).unwrap();
        assert_eq!(c.socket_path, Some(PathBuf::from("/tmp/s")));
        // Serving needs a socket.
        let cli = Cli::try_parse_from(["vhost-device-iommu"]).unwrap();
        let err = DaemonConfig::try_from(cli.serve).unwrap_err().to_string();
        assert!(err.contains("--socket-path is required"), "{err}");

        let cli = Cli::try_parse_from([
            "vhost-device-iommu",
            "viot",
            "--iommu-bdf",
            "00:03.0",
            "--endpoints",
            "0-0x1f",
            "-o",
            "/tmp/v.bin",
        ])
        .unwrap();
        let Some(Command::Viot(v)) = cli.command else {
            panic!("not the viot subcommand")
        };
        let (path, topo) = v.topology().unwrap();
        assert_eq!(path, PathBuf::from("/tmp/v.bin"));
        assert_eq!(topo.iommu.rid(), 0x18);
        let r: Vec<(u16, u16)> = topo
            .endpoints
            .iter()
            .map(|r| (r.first.rid(), r.last.rid()))
            .collect();
        assert_eq!(r, vec![(0, 0x17), (0x19, 0x1f)]);

        // The subcommand checks its topology: an IOMMU that is the only endpoint, a bad BDF,
        // no endpoints.
        for bad in [
            &[
                "viot",
                "--iommu-bdf",
                "00:00.0",
                "--endpoints",
                "0",
                "-o",
                "/tmp/v",
            ][..],
            &["viot", "--iommu-bdf", "00:20.0", "-o", "/tmp/v"],
            &[
                "viot",
                "--iommu-bdf",
                "00:03.0",
                "--endpoints",
                ",",
                "-o",
                "/tmp/v",
            ],
        ] {
            let mut argv = vec!["vhost-device-iommu"];
            argv.extend_from_slice(bad);
            let cli = Cli::try_parse_from(argv).unwrap();
            let Some(Command::Viot(v)) = cli.command else {
                panic!("not the viot subcommand")
            };
            assert!(v.topology().is_err(), "{bad:?}");
        }
        // Missing required subcommand arguments, an empty output path, and daemon options
        // mixed in, are refused.
        assert!(Cli::try_parse_from(["vhost-device-iommu", "viot", "-o", "/tmp/v"]).is_err());
        assert!(
            Cli::try_parse_from(["vhost-device-iommu", "viot", "--iommu-bdf", "0", "-o", ""])
                .is_err()
        );
        assert!(
            Cli::try_parse_from([
                "vhost-device-iommu",
                "--socket-path",
                "/tmp/s",
                "viot",
                "--iommu-bdf",
                "00:03.0",
                "-o",
                "/tmp/v"
            ])
            .is_err()
        );
    }

    #[test]
    fn bad_arguments_are_rejected_with_a_message() {
        for (args, msg) in [
            (&["--endpoints", "0x10000"][..], "not a PCI requester id"),
            (&["--endpoints", "5-3"][..], "invalid range"),
            (&["--endpoints", "00:20.0"][..], "invalid number"),
            (&["--endpoints", ","][..], "names no endpoint"),
            (&["--page-size-mask", "0"][..], "at least one bit"),
            (&["--page-size-mask", "0x200"][..], "at least 4 KiB"),
            (&["--page-size-mask", "zz"][..], "invalid number"),
            (&["--domain-range", "10-1"][..], "invalid range"),
            (&["--domain-range", "0-0x100000000"][..], "invalid number"),
            (&["--input-bits", "8"][..], "--input-bits"),
            (&["--phys-bits", "65"][..], "--phys-bits"),
            (&["--probe-size", "8"][..], "at least 24"),
            (&["--probe-size", "1000000"][..], "at most"),
            (&["--max-domains", "0"][..], "positive"),
            (&["--model", "nope"][..], "invalid value"),
            (&["--private-base", "0x1001"][..], "4 KiB aligned"),
            (
                &["--private-base", "0xffffffff0000"][..],
                "below 2^phys-bits",
            ),
            (&["--private-mib", "0"][..], "--private-mib"),
            (&["--endpoint", "dma@04.0"][..], "no socket"),
            (
                &[
                    "--endpoints",
                    "0-0x1f",
                    "--endpoint",
                    "dma@04.0,socket=/tmp/e",
                ][..],
                "not among --endpoints",
            ),
            (
                &[
                    "--iommu-bdf",
                    "00:04.0",
                    "--endpoint",
                    "dma@04.0,socket=/tmp/e",
                ][..],
                "own address",
            ),
            (
                &[
                    "--endpoint",
                    "dma@04.0,socket=/tmp/e",
                    "--endpoint",
                    "dma@00:04.0,socket=/tmp/f",
                ][..],
                "that address",
            ),
            (
                &[
                    "--endpoint",
                    "dma@04.0,socket=/tmp/e",
                    "--endpoint",
                    "dma@05.0,socket=/tmp/e",
                ][..],
                "that socket",
            ),
        ] {
            let e = parse(args).unwrap_err();
            assert!(e.contains(msg), "{args:?}: {e}");
        }
        assert!(parse(&["--probe-size", "8", "--no-msi-window"]).is_ok());
        let c = parse(&[
            "--endpoint",
            "dma@04.0,socket=/tmp/e",
            "--endpoint",
            "dma@05.1,socket=/tmp/f",
        ])
        .unwrap();
        let rids: Vec<u16> = c.endpoint_devices.iter().map(|e| e.bdf.rid()).collect();
        assert_eq!(rids, [0x20, 0x29]);
        // The register front replaces the virtio-iommu's socket.
        let front = |extra: &[&str]| {
            let mut argv = vec![
                "vhost-device-iommu",
                "--register-front",
                "vtd,socket=/tmp/r,addr=05.0,base=0xfebfe000",
            ];
            argv.extend_from_slice(extra);
            DaemonConfig::try_from(Args::try_parse_from(argv).map_err(|e| e.to_string())?)
                .map_err(|e| e.to_string())
        };
        let c = front(&[
            "--dmar-out",
            "/tmp/d",
            "--endpoint",
            "dma@04.0,socket=/tmp/e",
        ])
        .unwrap();
        assert_eq!(c.socket_path, None);
        let (spec, dmar) = c.register_front.unwrap();
        assert_eq!((spec.bdf.rid(), spec.base), (0x28, 0xfebf_e000));
        assert_eq!(dmar, Some(PathBuf::from("/tmp/d")));
        for (extra, msg) in [
            (&["--socket-path", "/tmp/s"][..], "give no --socket-path"),
            (&["--model", "amdvi"][..], "--model vtd"),
            (
                &["--viot-out", "/tmp/v", "--iommu-bdf", "00:03.0"][..],
                "--dmar-out",
            ),
            (
                &["--endpoint", "dma@05.0,socket=/tmp/e"][..],
                "share the address",
            ),
        ] {
            let e = front(extra).unwrap_err();
            assert!(e.contains(msg), "{extra:?}: {e}");
        }
        assert!(
            parse(&["--dmar-out", "/tmp/d"]).is_err(),
            "--dmar-out needs the front"
        );
        assert!(
            parse(&["--ivrs-out", "/tmp/i"]).is_err(),
            "--ivrs-out needs the front"
        );
        // An AMD-Vi front: the IVRS, and the AMD-Vi model.
        let amd = |extra: &[&str]| {
            let mut argv = vec![
                "vhost-device-iommu",
                "--register-front",
                "amdvi,socket=/tmp/r,addr=05.0,base=0xfebf8000",
            ];
            argv.extend_from_slice(extra);
            DaemonConfig::try_from(Args::try_parse_from(argv).map_err(|e| e.to_string())?)
                .map_err(|e| e.to_string())
        };
        let c = amd(&["--model", "amdvi", "--ivrs-out", "/tmp/i"]).unwrap();
        let (spec, ivrs) = c.register_front.unwrap();
        assert_eq!((spec.kind, ivrs), (FrontKind::Amdvi, Some("/tmp/i".into())));
        for (extra, msg) in [
            (&["--ivrs-out", "/tmp/i"][..], "--model amdvi"),
            (
                &["--model", "amdvi", "--dmar-out", "/tmp/d"][..],
                "--ivrs-out",
            ),
        ] {
            let e = amd(extra).unwrap_err();
            assert!(e.contains(msg), "{extra:?}: {e}");
        }
        let e = front(&["--ivrs-out", "/tmp/i"]).unwrap_err();
        assert!(e.contains("use --dmar-out"), "{e}");
        // --socket-path is optional to the parser (the `viot` subcommand needs none) but
        // required to serve.
        let args = Args::try_parse_from(["vhost-device-iommu"]).unwrap();
        let e = DaemonConfig::try_from(args).unwrap_err().to_string();
        assert!(e.contains("--socket-path is required"), "{e}");
    }
}

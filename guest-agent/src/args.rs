//! The agent's command line.
//!
//! ```text
//! guest-agent info <BDF>
//! guest-agent find <VENDOR:DEVICE>                      (hex IDs, e.g. 1234:11e8)
//! guest-agent bind <BDF> [DRIVER]                       (default driver: vfio-pci)
//! guest-agent release <BDF>                             (unbind, clear driver_override)
//! guest-agent vfio-map <BDF> [--iova A] [--pages N] [--hold-ms MS] [--wait-stdin] [--keep]
//!                            [--huge]
//! guest-agent vfio-bench <BDF> [--count N] [--iova A] [--pages N] [--huge]
//! guest-agent dma-engine <BDF> [--iova A] [--pages N] [--count K] [--wait-stdin]
//!                              [--move-container]
//!                              (drive the DMA engine: copy/compare batches, faults, and K
//!                              one-page copies timed; pages 1..=512, default 4; K default 0;
//!                              --move-container: then move the device's group to a new
//!                              container, run the copy batch again there at IOVAs 1 GiB up
//!                              (or the lowest that fit its IOVA ranges), and check that the
//!                              first container's IOVA faults: see `dma_move`)
//! guest-agent dma-engine <BDF> --identity [--pages N] [--count K] [--wait-stdin]
//!                              (the same with identity IOVAs: mlocked buffers, every page
//!                              mapped through VFIO type1 at its own guest-physical address,
//!                              descriptors one page each, no fault steps; pages 1..=42;
//!                              dma-map's *_iova are the first frames; no
//!                              --move-container)
//! guest-agent acpi-table <SIG>                          (hex dump of an ACPI table, e.g. VIOT)
//! guest-agent virtio-iommu                              (bound virtio-iommu devices, features)
//! ```

use crate::dma_engine::{IDENTITY_DESCS_PER_PAGE, IDENTITY_MAX_PAGES, UNMAPPED_OFFSET};
use crate::report::parse_u64;
use crate::{AgentError, Result};
use iommu_emulator::PciBdf;

/// The default IOVA of `vfio-map` and `vfio-bench`: 1 MiB, inside every IOMMU's aperture and
/// clear of the x86 MSI window at 0xfee00000.
pub const DEFAULT_IOVA: u64 = 0x10_0000;
/// The most pages one mapping may span (4 MiB of 4 KiB pages).
pub const MAX_PAGES: u64 = 1024;
/// The most iterations of `vfio-bench` and `dma-engine --count`.
pub const MAX_COUNT: u64 = 100_000_000;
/// The default `dma-engine --pages`: pages in each of its source and destination buffers.
pub const DMA_DEFAULT_PAGES: u64 = 4;
/// The most `dma-engine --pages`: source and destination together span at most
/// [`MAX_PAGES`].
pub const DMA_MAX_PAGES: u64 = MAX_PAGES / 2;

/// One parsed command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Print what sysfs says about a device.
    Info(PciBdf),
    /// Print the devices with these vendor and device IDs.
    Find {
        /// PCI vendor ID.
        vendor: u16,
        /// PCI device ID.
        device: u16,
    },
    /// Bind a device to a driver through `driver_override`.
    Bind {
        /// The device.
        bdf: PciBdf,
        /// The driver.
        driver: String,
    },
    /// Unbind a device and clear its `driver_override`.
    Release(PciBdf),
    /// Map a buffer for a device through VFIO type1 and print IOVA and guest-physical
    /// addresses.
    VfioMap(MapArgs),
    /// Print the virtio-iommu devices bound to the driver and their negotiated features.
    VirtioIommu,
    /// Print an ACPI table from `/sys/firmware/acpi/tables/<SIG>` in hexadecimal.
    AcpiTable(String),
    /// Loop `MAP_DMA`/`UNMAP_DMA`.
    VfioBench {
        /// Common mapping arguments.
        map: MapArgs,
        /// Map/unmap pairs.
        count: u64,
    },
    /// Drive the DMA engine device through VFIO.
    DmaEngine(DmaArgs),
}

/// Arguments of `dma-engine`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DmaArgs {
    /// The device, bound to `vfio-pci`.
    pub bdf: PciBdf,
    /// The IOVA of the descriptor page; the source and destination buffers follow it.
    pub iova: u64,
    /// Pages in each of the source and destination buffers.
    pub pages: u64,
    /// One-page copies to time after the checks (0: none).
    pub count: u64,
    /// Read a line from standard input after the copy batch (the host reads the translations
    /// the IOMMU made for it).
    pub wait_stdin: bool,
    /// Identity IOVAs (`--identity`): the buffers are `mlock`ed, every page of them is mapped
    /// through VFIO type1 on its own at an IOVA equal to its guest-physical address, and the
    /// descriptors carry those addresses, one page each; the fault steps are skipped. `iova`
    /// is unused (and `--iova` refused).
    pub identity: bool,
    /// `--move-container`: after the other steps, move the device's group to a new
    /// container, run the copy batch there at other IOVAs, and check that a read at the
    /// first container's IOVA faults ([`crate::dma_move`]). Not with `identity`, whose
    /// unmapped IOVAs need not fault.
    pub move_container: bool,
}

/// Arguments shared by `vfio-map` and `vfio-bench`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapArgs {
    /// The device, bound to `vfio-pci`.
    pub bdf: PciBdf,
    /// The IOVA of the first page.
    pub iova: u64,
    /// Pages in the buffer.
    pub pages: u64,
    /// Milliseconds to hold the mapping before unmapping it.
    pub hold_ms: u64,
    /// Read a line from standard input before unmapping.
    pub wait_stdin: bool,
    /// Leave the mapping in place and exit (the kernel unmaps when the container closes).
    pub keep: bool,
    /// Back the buffer with transparent huge pages (2 MiB-aligned, `MADV_HUGEPAGE`).
    pub huge: bool,
}

fn usage(msg: impl Into<String>) -> AgentError {
    AgentError::Usage(msg.into())
}

fn number(opt: &str, v: Option<&String>) -> Result<u64> {
    let v = v.ok_or_else(|| usage(format!("{opt} needs a value")))?;
    parse_u64(v).ok_or_else(|| usage(format!("{opt}: not a number: {v:?}")))
}

fn bdf_arg(v: Option<&String>) -> Result<PciBdf> {
    Ok(v.ok_or_else(|| usage("missing PCI address"))?.parse()?)
}

/// Parses the arguments after the program name.
pub fn parse(args: &[String]) -> Result<Command> {
    let (cmd, rest) = args.split_first().ok_or_else(|| usage("missing command"))?;
    match cmd.as_str() {
        "info" => {
            expect_len(rest, 1)?;
            Ok(Command::Info(bdf_arg(rest.first())?))
        }
        "find" => {
            expect_len(rest, 1)?;
            let (v, d) = rest[0]
                .split_once(':')
                .ok_or_else(|| usage("find takes VENDOR:DEVICE"))?;
            let hex = |s: &str| {
                u16::from_str_radix(s, 16).map_err(|_| usage(format!("bad PCI ID {s:?}")))
            };
            Ok(Command::Find {
                vendor: hex(v)?,
                device: hex(d)?,
            })
        }
        "bind" => {
            if rest.is_empty() || rest.len() > 2 {
                return Err(usage("bind <BDF> [DRIVER]"));
            }
            let driver = rest.get(1).cloned().unwrap_or_else(|| "vfio-pci".into());
            if driver.is_empty() || driver.contains(['/', '\n']) {
                return Err(usage(format!("bad driver name {driver:?}")));
            }
            Ok(Command::Bind {
                bdf: bdf_arg(rest.first())?,
                driver,
            })
        }
        "acpi-table" => {
            expect_len(rest, 1)?;
            let sig = &rest[0];
            if sig.len() != 4 || !sig.bytes().all(|c| c.is_ascii_alphanumeric()) {
                return Err(usage(format!("bad ACPI signature {sig:?}")));
            }
            Ok(Command::AcpiTable(sig.clone()))
        }
        "virtio-iommu" => {
            expect_len(rest, 0)?;
            Ok(Command::VirtioIommu)
        }
        "release" => {
            expect_len(rest, 1)?;
            Ok(Command::Release(bdf_arg(rest.first())?))
        }
        "vfio-map" | "vfio-bench" => {
            let bench = cmd == "vfio-bench";
            let bdf = bdf_arg(rest.first())?;
            let mut m = MapArgs {
                bdf,
                iova: DEFAULT_IOVA,
                pages: 1,
                hold_ms: 0,
                wait_stdin: false,
                keep: false,
                huge: false,
            };
            let mut count = 1000;
            let mut it = rest[1..].iter();
            while let Some(opt) = it.next() {
                match opt.as_str() {
                    "--iova" => m.iova = number(opt, it.next())?,
                    "--pages" => m.pages = number(opt, it.next())?,
                    "--count" if bench => count = number(opt, it.next())?,
                    "--hold-ms" if !bench => m.hold_ms = number(opt, it.next())?,
                    "--wait-stdin" if !bench => m.wait_stdin = true,
                    "--keep" if !bench => m.keep = true,
                    "--huge" => m.huge = true,
                    _ => return Err(usage(format!("{cmd}: unknown option {opt:?}"))),
                }
            }
            if m.pages == 0 || m.pages > MAX_PAGES {
                return Err(usage(format!("--pages must be 1..={MAX_PAGES}")));
            }
            if m.hold_ms > 3_600_000 {
                return Err(usage("--hold-ms at most one hour"));
            }
            if bench {
                if count == 0 || count > MAX_COUNT {
                    return Err(usage(format!("--count must be 1..={MAX_COUNT}")));
                }
                Ok(Command::VfioBench { map: m, count })
            } else {
                Ok(Command::VfioMap(m))
            }
        }
        "dma-engine" => {
            let mut d = DmaArgs {
                bdf: bdf_arg(rest.first())?,
                iova: DEFAULT_IOVA,
                pages: DMA_DEFAULT_PAGES,
                count: 0,
                wait_stdin: false,
                identity: false,
                move_container: false,
            };
            let mut iova_given = false;
            let mut it = rest[1..].iter();
            while let Some(opt) = it.next() {
                match opt.as_str() {
                    "--iova" => {
                        d.iova = number(opt, it.next())?;
                        iova_given = true;
                    }
                    "--pages" => d.pages = number(opt, it.next())?,
                    "--count" => d.count = number(opt, it.next())?,
                    "--wait-stdin" => d.wait_stdin = true,
                    "--identity" => d.identity = true,
                    "--move-container" => d.move_container = true,
                    _ => return Err(usage(format!("{cmd}: unknown option {opt:?}"))),
                }
            }
            if d.identity {
                if d.move_container {
                    return Err(usage(
                        "--move-container has no meaning with --identity: its check, that \
                         the first container's IOVA faults in the new one, needs IOVAs that \
                         are not guest-physical addresses (see the fault steps --identity \
                         skips)",
                    ));
                }
                if iova_given {
                    return Err(usage(
                        "--iova has no meaning with --identity: every page is mapped at an \
                         IOVA equal to its guest-physical address",
                    ));
                }
                if d.pages == 0 || d.pages > IDENTITY_MAX_PAGES {
                    return Err(usage(format!(
                        "--pages must be 1..={IDENTITY_MAX_PAGES} with --identity: the copy \
                         batch takes {IDENTITY_DESCS_PER_PAGE} descriptors per 4 KiB page, \
                         and they must all fit one 4 KiB descriptor page (128 descriptors)"
                    )));
                }
            } else if d.pages == 0 || d.pages > DMA_MAX_PAGES {
                return Err(usage(format!("--pages must be 1..={DMA_MAX_PAGES}")));
            }
            if d.count > MAX_COUNT {
                return Err(usage(format!("--count must be 0..={MAX_COUNT}")));
            }
            if d.iova.checked_add(UNMAPPED_OFFSET).is_none() {
                return Err(usage(format!(
                    "--iova {:#x} leaves no room for the unmapped IOVA {UNMAPPED_OFFSET:#x} above it",
                    d.iova
                )));
            }
            Ok(Command::DmaEngine(d))
        }
        other => Err(usage(format!("unknown command {other:?}"))),
    }
}

fn expect_len(rest: &[String], n: usize) -> Result<()> {
    if rest.len() != n {
        return Err(usage(format!(
            "expected {n} argument(s), got {}",
            rest.len()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn p(s: &str) -> Result<Command> {
        let v: Vec<String> = s.split_whitespace().map(String::from).collect();
        parse(&v)
    }

    #[test]
    fn map_defaults_and_options() {
        let Command::VfioMap(m) = p("vfio-map 00:03.0").unwrap() else {
            panic!("not vfio-map")
        };
        assert_eq!(
            (m.iova, m.pages, m.hold_ms, m.wait_stdin, m.keep, m.huge),
            (DEFAULT_IOVA, 1, 0, false, false, false)
        );
        let Command::VfioMap(m) =
            p("vfio-map 0000:00:04.0 --iova 0x200000 --pages 4 --hold-ms 50 --wait-stdin --keep --huge")
                .unwrap()
        else {
            panic!("not vfio-map")
        };
        assert_eq!(m.bdf.device, 4);
        assert_eq!(
            (m.iova, m.pages, m.hold_ms, m.wait_stdin, m.keep, m.huge),
            (0x20_0000, 4, 50, true, true, true)
        );
    }

    #[test]
    fn bench_count() {
        let Command::VfioBench { map, count } =
            p("vfio-bench 00:03.0 --count 500 --pages 2").unwrap()
        else {
            panic!("not vfio-bench")
        };
        assert_eq!((count, map.pages), (500, 2));
        assert!(p("vfio-bench 00:03.0 --count 0").is_err());
        assert!(
            p("vfio-bench 00:03.0 --hold-ms 5").is_err(),
            "map-only option"
        );
        assert!(
            p("vfio-map 00:03.0 --count 5").is_err(),
            "bench-only option"
        );
    }

    #[test]
    fn dma_engine_defaults_and_options() {
        assert_eq!(
            p("dma-engine 00:04.0").unwrap(),
            Command::DmaEngine(DmaArgs {
                bdf: "0000:00:04.0".parse().unwrap(),
                iova: DEFAULT_IOVA,
                pages: 4,
                count: 0,
                wait_stdin: false,
                identity: false,
                move_container: false,
            })
        );
        assert_eq!(
            p("dma-engine 0000:00:05.0 --wait-stdin --count 1000 --pages 512 --iova 0x400000")
                .unwrap(),
            Command::DmaEngine(DmaArgs {
                bdf: "00:05.0".parse().unwrap(),
                iova: 0x40_0000,
                pages: 512,
                count: 1000,
                wait_stdin: true,
                identity: false,
                move_container: false,
            })
        );
        assert!(matches!(
            p("dma-engine 00:04.0 --pages 1"),
            Ok(Command::DmaEngine(DmaArgs { pages: 1, .. }))
        ));
        for s in [
            "dma-engine",
            "dma-engine 00:04.0 --pages 0",
            "dma-engine 00:04.0 --pages 513",
            "dma-engine 00:04.0 --count",
            "dma-engine 00:04.0 --count 100000001",
            "dma-engine 00:04.0 --iova 0xfffffffff0000000",
            "dma-engine 00:04.0 --huge",
            "dma-engine 00:04.0 --hold-ms 5",
            "dma-engine --pages 4",
        ] {
            assert!(
                matches!(p(s), Err(AgentError::Usage(_) | AgentError::BadBdf(_))),
                "{s:?} parsed"
            );
        }
    }

    #[test]
    fn dma_engine_identity() {
        assert_eq!(
            p("dma-engine 00:04.0 --identity").unwrap(),
            Command::DmaEngine(DmaArgs {
                bdf: "0000:00:04.0".parse().unwrap(),
                iova: DEFAULT_IOVA,
                pages: 4,
                count: 0,
                wait_stdin: false,
                identity: true,
                move_container: false,
            })
        );
        assert_eq!(
            p("dma-engine 00:04.0 --count 500 --identity --pages 42 --wait-stdin").unwrap(),
            Command::DmaEngine(DmaArgs {
                bdf: "0000:00:04.0".parse().unwrap(),
                iova: DEFAULT_IOVA,
                pages: 42,
                count: 500,
                wait_stdin: true,
                identity: true,
                move_container: false,
            })
        );
        assert!(matches!(
            p("dma-engine 00:04.0 --pages 1 --identity"),
            Ok(Command::DmaEngine(DmaArgs {
                pages: 1,
                identity: true,
                ..
            }))
        ));
        // The IOVA mode allows more pages than one descriptor page of per-page descriptors
        // holds.
        assert!(matches!(
            p("dma-engine 00:04.0 --pages 43"),
            Ok(Command::DmaEngine(DmaArgs {
                pages: 43,
                identity: false,
                ..
            }))
        ));
        for s in [
            "dma-engine 00:04.0 --identity --pages 0",
            "dma-engine 00:04.0 --identity --pages 43",
            "dma-engine 00:04.0 --pages 85 --identity",
            "dma-engine 00:04.0 --identity --pages 512",
            "dma-engine 00:04.0 --identity --iova 0x100000",
            "dma-engine 00:04.0 --iova 0x200000 --identity",
            "dma-engine 00:04.0 --identity --count 100000001",
            "dma-engine 00:04.0 --identity=1",
            "vfio-map 00:04.0 --identity",
            "dma-engine --identity",
            // The no-IOMMU mode is gone (the guest kernel has no CONFIG_VFIO_NOIOMMU).
            "dma-engine 00:04.0 --noiommu",
        ] {
            assert!(
                matches!(p(s), Err(AgentError::Usage(_) | AgentError::BadBdf(_))),
                "{s:?} parsed"
            );
        }
        let Err(AgentError::Usage(m)) = p("dma-engine 00:04.0 --identity --pages 43") else {
            panic!("parsed")
        };
        assert!(m.contains("1..=42") && m.contains("--identity"), "{m}");
    }

    #[test]
    fn dma_engine_move_container() {
        assert_eq!(
            p("dma-engine 00:04.0 --move-container").unwrap(),
            Command::DmaEngine(DmaArgs {
                bdf: "0000:00:04.0".parse().unwrap(),
                iova: DEFAULT_IOVA,
                pages: 4,
                count: 0,
                wait_stdin: false,
                identity: false,
                move_container: true,
            })
        );
        assert_eq!(
            p(
                "dma-engine 00:04.0 --wait-stdin --move-container --iova 0x200000 --pages 8 \
               --count 10"
            )
            .unwrap(),
            Command::DmaEngine(DmaArgs {
                bdf: "0000:00:04.0".parse().unwrap(),
                iova: 0x20_0000,
                pages: 8,
                count: 10,
                wait_stdin: true,
                identity: false,
                move_container: true,
            })
        );
        for s in [
            "dma-engine 00:04.0 --move-container --identity",
            "dma-engine 00:04.0 --identity --move-container",
            "dma-engine 00:04.0 --move-container=1",
            "dma-engine 00:04.0 --move-container 1",
            "dma-engine 00:04.0 --move",
            "dma-engine --move-container",
            "vfio-map 00:04.0 --move-container",
            "vfio-bench 00:04.0 --move-container",
        ] {
            assert!(
                matches!(p(s), Err(AgentError::Usage(_) | AgentError::BadBdf(_))),
                "{s:?} parsed"
            );
        }
        let Err(AgentError::Usage(m)) = p("dma-engine 00:04.0 --identity --move-container") else {
            panic!("parsed")
        };
        assert!(
            m.contains("--move-container") && m.contains("--identity"),
            "{m}"
        );
    }

    #[test]
    fn other_commands() {
        assert_eq!(
            p("find 1234:11e8").unwrap(),
            Command::Find {
                vendor: 0x1234,
                device: 0x11e8
            }
        );
        assert_eq!(
            p("bind 00:03.0").unwrap(),
            Command::Bind {
                bdf: "00:03.0".parse().unwrap(),
                driver: "vfio-pci".into()
            }
        );
        assert_eq!(
            p("bind 00:03.0 virtio-pci").unwrap(),
            Command::Bind {
                bdf: "00:03.0".parse().unwrap(),
                driver: "virtio-pci".into()
            }
        );
        assert_eq!(
            p("release 00:03.0").unwrap(),
            Command::Release("00:03.0".parse().unwrap())
        );
        assert_eq!(
            p("info 00:03.0").unwrap(),
            Command::Info("00:03.0".parse().unwrap())
        );
    }

    #[test]
    fn bad_input_is_a_usage_error() {
        for s in [
            "",
            "nope",
            "info",
            "info 00:03.0 extra",
            "find 1234",
            "find 12345:1",
            "bind",
            "bind 00:03.0 a/b",
            "vfio-map",
            "vfio-map 00:03.0 --iova",
            "vfio-map 00:03.0 --iova x",
            "vfio-map 00:03.0 --pages 0",
            "vfio-map 00:03.0 --pages 1025",
            "vfio-map 00:99.0",
            "vfio-map 00:03.0 --bogus",
        ] {
            assert!(p(s).is_err(), "{s:?} parsed");
        }
    }

    proptest! {
        #[test]
        fn parse_never_panics(v in proptest::collection::vec("\\PC{0,12}", 0..6)) {
            let _ = parse(&v);
        }
    }
}

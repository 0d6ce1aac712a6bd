//! The real-guest scenarios, written once for any virtio-iommu front end: QEMU's own
//! `virtio-iommu-pci` (the baseline) or a vhost-user backend such as `vhost-device-iommu`.
//! Each takes hooks where a test that owns the device (the daemon) checks what the device saw
//! while the guest holds a given state.

use super::harness::{GuestEnv, Qemu, QemuOpts, RunDir, bind_first, find};
use guest_agent::report::{Report, parse_u64};
use std::path::PathBuf;
use std::time::Duration;
use vhost_device_iommu::viot::{EndpointRange, PciBdf, Topology, build_viot};

/// QEMU's `edu` test device (hw/misc/edu.c): a PCI function no guest driver claims, so it is a
/// free endpoint for VFIO.
pub const EDU_ID: &str = "1234:11e8";
/// Guest RAM; every guest-physical page must lie below it (q35 puts all of it below 4 GiB).
pub const RAM_MB: u32 = 512;
/// Where the vhost-user virtio-iommu sits (and what the VIOT table names).
pub const VHOST_USER_IOMMU_ADDR: &str = "0000:00:03.0";

/// Which virtio-iommu the guest gets.
#[derive(Debug, Clone)]
pub enum Front {
    /// QEMU's built-in `virtio-iommu-pci`; QEMU writes the VIOT table itself.
    Qemu,
    /// QEMU's `vhost-user-test-device-pci` as a virtio-iommu (virtio id 23, 2 queues, 40-byte
    /// config) at [`VHOST_USER_IOMMU_ADDR`], talking to the backend listening on `socket`
    /// (a path inside the root), plus our VIOT table for bus 0 and shared guest memory.
    VhostUser {
        /// The backend's socket, as QEMU (inside the root) sees it.
        socket: PathBuf,
        /// The VIOT file, as QEMU sees it.
        viot: PathBuf,
    },
}

impl Front {
    /// A vhost-user front end for a backend that listens on `<run>/vu.sock`. Returns it and
    /// the socket's host path (where the backend must listen).
    pub fn vhost_user(run: &RunDir) -> (Front, PathBuf) {
        Self::vhost_user_with(run, &[EndpointRange::bus(0, 0)])
    }

    /// [`Front::vhost_user`] with a VIOT table that puts only `endpoints` behind the IOMMU.
    pub fn vhost_user_with(run: &RunDir, endpoints: &[EndpointRange]) -> (Front, PathBuf) {
        let topo = Topology {
            iommu: VHOST_USER_IOMMU_ADDR.parse().unwrap(),
            endpoints: endpoints.to_vec(),
        };
        let viot = run.write("viot.bin", &build_viot(&topo).expect("VIOT"));
        (
            Front::VhostUser {
                socket: run.guest.join("vu.sock"),
                viot,
            },
            run.host.join("vu.sock"),
        )
    }

    /// Adds this front end to `opts`.
    pub fn apply(&self, opts: &mut QemuOpts) {
        match self {
            Front::Qemu => opts
                .args
                .extend(["-device".into(), "virtio-iommu-pci".into()]),
            Front::VhostUser { socket, viot } => {
                let addr: PciBdf = VHOST_USER_IOMMU_ADDR.parse().unwrap();
                opts.machine = format!("{},memory-backend=mem", opts.machine);
                opts.args.extend([
                    "-object".into(),
                    format!(
                        "memory-backend-memfd,id=mem,size={}M,share=on",
                        opts.memory_mb
                    ),
                    "-chardev".into(),
                    format!("socket,id=vu,path={}", socket.display()),
                    "-device".into(),
                    format!(
                        "vhost-user-test-device-pci,chardev=vu,virtio-id=23,num_vqs=2,\
                         config_size=40,addr={:02x}.{:x}",
                        addr.device, addr.function
                    ),
                    "-acpitable".into(),
                    format!("file={}", viot.display()),
                ]);
            }
        }
    }
}

/// Decodes the agent's hex dumps.
pub fn hex_bytes(s: &str) -> Vec<u8> {
    assert!(s.len().is_multiple_of(2), "odd hex length");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

/// The IOMMU the guest reported.
pub fn iommu_bdf(reports: &[Report]) -> PciBdf {
    let r = reports
        .iter()
        .find(|r| r.event == "iommu")
        .expect("the guest reported no IOMMU");
    r.get("name")
        .unwrap()
        .parse()
        .expect("IOMMU name is a PCI address")
}

/// Checks a `vfio-map` report and returns the guest-physical frame of each page.
pub fn check_map(m: &Report, iova: u64, pages: u64) -> Vec<u64> {
    assert_eq!(m.get_u64("iova"), Some(iova), "{m:?}");
    assert_eq!(m.get_u64("size"), Some(pages * 4096), "{m:?}");
    assert_eq!(m.get("iommu_type"), Some("type1v2"), "{m:?}");
    let gpas: Vec<u64> = m
        .get("gpas")
        .unwrap()
        .split(',')
        .map(|g| parse_u64(g).expect("gpa"))
        .collect();
    assert_eq!(gpas.len() as u64, pages, "{m:?}");
    assert_eq!(m.get_u64("gpa"), Some(gpas[0]));
    let mut sorted = gpas.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), gpas.len(), "pages share a frame: {m:?}");
    for g in &gpas {
        assert_eq!(g % 4096, 0, "unaligned frame {g:#x}");
        assert!(
            *g != 0 && *g < u64::from(RAM_MB) << 20,
            "frame {g:#x} outside RAM"
        );
    }
    gpas
}

fn base_opts(front: &Front) -> QemuOpts {
    let mut opts = QemuOpts {
        memory_mb: RAM_MB,
        ..Default::default()
    };
    front.apply(&mut opts);
    opts
}

/// What the probe + VFIO map scenario saw.
#[derive(Debug)]
pub struct ProbeMap {
    /// Every report of the run.
    pub reports: Vec<Report>,
    /// The IOMMU's PCI address.
    pub iommu: PciBdf,
    /// The `edu` endpoint's PCI address.
    pub endpoint: PciBdf,
    /// The `vfio-map` report.
    pub map: Report,
    /// The guest frames behind the mapped IOVA range, page by page.
    pub gpas: Vec<u64>,
    /// The `acpi-table` report of the VIOT the guest saw.
    pub viot: Report,
    /// The whole console.
    pub log: String,
}

/// IOVA the probe scenario maps at.
pub const PROBE_IOVA: u64 = 0x20_0000;
/// Pages the probe scenario maps.
pub const PROBE_PAGES: u64 = 4;

/// Probe and translated DMA: the guest's virtio-iommu driver binds and probes its endpoints;
/// `edu` is bound to vfio-pci and the agent maps [`PROBE_PAGES`] pages at [`PROBE_IOVA`]
/// through VFIO type1. `while_mapped` runs while the mapping is live (the agent waits for the
/// host), `after_unmap` once the agent reported the unmap, before the guest powers off.
pub fn probe_and_vfio_map(
    env: &GuestEnv,
    front: &Front,
    while_mapped: impl FnOnce(&Report, &[u64]),
    after_unmap: impl FnOnce(&Report),
) -> ProbeMap {
    let run = RunDir::new(env);
    let mut opts = base_opts(front);
    opts.script = format!(
        "guest-agent acpi-table VIOT || exit 1\n{}\
         guest-agent info \"$bdf\" || exit 1\n\
         guest-agent vfio-map \"$bdf\" --iova {PROBE_IOVA:#x} --pages {PROBE_PAGES} \
         --wait-stdin || exit 1\n\
         echo AGENT ask what=poweroff; read -r _\n",
        bind_first(EDU_ID)
    );
    opts.args.extend(["-device".into(), "edu".into()]);
    let mut q = Qemu::spawn(env, &run, &opts);
    let boot = q.next("boot");
    assert!(boot.get("kernel").unwrap().contains("cloud-amd64"));
    let modules = q.next("modules");
    assert_eq!(modules.get_u64("failed"), Some(0), "{modules:?}");
    assert_eq!(q.next("acpi").get("viot"), Some("yes"));
    let viot = q.next("acpi-table");
    let bound = q.next("bound");
    assert_eq!(bound.get("driver"), Some("vfio-pci"));
    let endpoint: PciBdf = bound.get("bdf").unwrap().parse().unwrap();
    let map = q.next("vfio-map");
    let gpas = check_map(&map, PROBE_IOVA, PROBE_PAGES);
    q.next("vfio-wait");
    while_mapped(&map, &gpas);
    q.send_line("");
    let unmap = q.next("vfio-unmap");
    assert_eq!(unmap.get_u64("unmapped"), Some(PROBE_PAGES * 4096));
    q.next("ask");
    after_unmap(&unmap);
    q.send_line("");
    let finished = q.finish();
    let (reports, log) = (finished.reports, finished.log);

    let iommu = iommu_bdf(&reports);
    assert!(
        reports.iter().any(|r| r.event == "virtio-iommu"),
        "virtio_iommu did not bind"
    );
    let ep = find(&reports, "endpoint", "bdf", &endpoint.to_string()).expect("edu is no endpoint");
    assert_eq!(ep.get("iommu"), Some(iommu.to_string().as_str()));
    assert!(ep.get("domain").unwrap().starts_with("DMA"), "{ep:?}");
    let info = find(&reports, "info", "bdf", &endpoint.to_string()).unwrap();
    assert_eq!(info.get("iommu"), Some(iommu.to_string().as_str()));
    ProbeMap {
        reports,
        iommu,
        endpoint,
        map,
        gpas,
        viot,
        log,
    }
}

/// Identity: a virtio-blk endpoint, booted with `iommu.passthrough=1`, gets an identity
/// domain and reads the test's 4 MiB disk image intact; `after_read` runs (with the `disk`
/// report, whose `bdf` is the endpoint) while the guest is still up. Returns the endpoint and
/// the reports.
pub fn identity_virtio_blk(
    env: &GuestEnv,
    front: &Front,
    after_read: impl FnOnce(&Report),
) -> (PciBdf, Vec<Report>) {
    let run = RunDir::new(env);
    // 4 MiB of xorshift64 noise.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let image: Vec<u8> = (0..(4 << 20) / 8)
        .flat_map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()
        })
        .collect();
    let disk = run.write("disk.img", &image);
    let out = std::process::Command::new("sha256sum")
        .arg(run.host.join("disk.img"))
        .output()
        .expect("sha256sum");
    let want = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    let mut opts = base_opts(front);
    opts.append.push("iommu.passthrough=1".into());
    opts.script = "set -e\n\
                   echo \"AGENT disk sha256=$(sha256sum /dev/vda | cut -d' ' -f1) \
                   bdf=$(basename $(readlink -f /sys/block/vda/device/..))\"\n\
                   echo AGENT ask what=poweroff; read -r _\n"
        .into();
    opts.args.extend([
        "-drive".into(),
        format!(
            "file={},format=raw,if=none,id=d0,readonly=on",
            disk.display()
        ),
        "-device".into(),
        "virtio-blk-pci,drive=d0".into(),
    ]);
    let mut q = Qemu::spawn(env, &run, &opts);
    let d = q.next("disk");
    q.next("ask");
    after_read(&d);
    q.send_line("");
    let reports = q.finish().reports;
    assert_eq!(
        d.get("sha256"),
        Some(want.as_str()),
        "guest read a different image"
    );
    let blk = d.get("bdf").unwrap();
    let ep = find(&reports, "endpoint", "bdf", blk).expect("virtio-blk is no endpoint");
    assert_eq!(ep.get("domain"), Some("identity"), "{ep:?}");
    assert_eq!(ep.get("driver"), Some("virtio-pci"), "{ep:?}");
    (blk.parse().unwrap(), reports)
}

/// The guest benchmark: `runs` × `count` VFIO MAP_DMA/UNMAP_DMA pairs on `edu`. Checks the
/// figures are consistent and returns the pairs/s of each run, sorted.
pub fn vfio_bench(env: &GuestEnv, front: &Front, count: u64, runs: usize) -> Vec<f64> {
    let run = RunDir::new(env);
    let mut opts = base_opts(front);
    opts.script = format!(
        "{}for i in $(seq {runs}); do guest-agent vfio-bench \"$bdf\" --count {count} || exit 1; done\n",
        bind_first(EDU_ID)
    );
    opts.args.extend(["-device".into(), "edu".into()]);
    opts.timeout = Duration::from_secs(60 + count * runs as u64 / 100);
    let q = Qemu::spawn(env, &run, &opts);
    let reports = q.finish().reports;
    let results: Vec<&Report> = reports.iter().filter(|r| r.event == "vfio-bench").collect();
    assert_eq!(results.len(), runs);
    let mut rates: Vec<f64> = results
        .iter()
        .map(|r| {
            assert_eq!(r.get_u64("count"), Some(count));
            let elapsed = r.get_u64("elapsed_ns").unwrap();
            let per_pair = r.get_u64("map_ns_avg").unwrap() + r.get_u64("unmap_ns_avg").unwrap();
            // The timed parts fit inside the whole loop.
            assert!(per_pair * count <= elapsed, "{r:?}");
            let rate = r.get_f64("pairs_per_sec").unwrap();
            let expect = count as f64 / (elapsed as f64 / 1e9);
            assert!((rate - expect).abs() <= expect * 0.01 + 0.1, "{r:?}");
            rate
        })
        .collect();
    rates.sort_by(f64::total_cmp);
    rates
}

/// A guest with `edu` that may reboot (no `-no-reboot`, a longer time bound), whose script
/// asks the host for a word (`AGENT ask what=next`) and runs the `case` arm of that name from
/// `arms` (shell `case` arms; anything else exits with 3). An arm that creates `/tmp/reboot`
/// reboots the guest, which asks again on its next boot. Returns the run directory (it must
/// outlive QEMU) and QEMU.
fn two_boot_guest(env: &GuestEnv, front: &Front, arms: &str) -> (RunDir, Qemu) {
    let run = RunDir::new(env);
    let mut opts = base_opts(front);
    opts.no_reboot = false;
    opts.timeout = Duration::from_secs(180);
    opts.script = format!(
        "echo AGENT ask what=next\n\
         read -r cmd\n\
         case \"$cmd\" in\n\
         {arms}\
         *) exit 3 ;;\n\
         esac\n"
    );
    opts.args.extend(["-device".into(), "edu".into()]);
    let q = Qemu::spawn(env, &run, &opts);
    (run, q)
}

/// Reboot and detach: on the first boot `edu` is bound to vfio-pci, mapped, unmapped and
/// released (unbound: the guest detaches it from the VFIO domain and returns it to its default
/// domain); `after_detach` runs then. The guest reboots (a machine reset, which resets the
/// virtio-iommu); on the second boot the driver probes again, the endpoints and groups are the
/// same, and VFIO maps again; `after_reboot` runs while the guest waits before its second map.
/// Returns every report of both boots.
pub fn reboot_and_detach(
    env: &GuestEnv,
    front: &Front,
    after_detach: impl FnOnce(&Report),
    after_reboot: impl FnOnce(&[Report]),
) -> Vec<Report> {
    let bind = bind_first(EDU_ID);
    let (_run, mut q) = two_boot_guest(
        env,
        front,
        &format!(
            "detach)\n{bind}\
               guest-agent vfio-map \"$bdf\" --pages 1 || exit 1\n\
               guest-agent release \"$bdf\" || exit 1\n\
               touch /tmp/reboot ;;\n\
             check)\n{bind}\
               guest-agent vfio-map \"$bdf\" --pages 1 || exit 1 ;;\n"
        ),
    );

    // First boot: map, unmap, detach, reboot.
    q.next("boot");
    q.next("ask");
    q.send_line("detach");
    check_map(&q.next("vfio-map"), DEFAULT_IOVA, 1);
    assert_eq!(q.next("vfio-unmap").get_u64("unmapped"), Some(4096));
    let released = q.next("released");
    assert_eq!(released.get("driver"), Some("none"), "{released:?}");
    after_detach(&released);
    let done = q.next("script-done");
    assert_eq!(done.get_u64("rc"), Some(0), "{done:?}");
    let first: Vec<Report> = q.reports();

    // Second boot, after the reset.
    q.next("boot");
    q.next("ask");
    let so_far = q.reports();
    after_reboot(&so_far[first.len()..]);
    q.send_line("check");
    assert_eq!(q.next("bound").get("driver"), Some("vfio-pci"));
    check_map(&q.next("vfio-map"), DEFAULT_IOVA, 1);
    let reports = q.finish().reports;

    let endpoints = |rs: &[Report]| -> Vec<(String, String)> {
        rs.iter()
            .filter(|r| r.event == "endpoint")
            .map(|r| {
                (
                    r.get("bdf").unwrap().to_string(),
                    r.get("group").unwrap().to_string(),
                )
            })
            .collect()
    };
    let before = endpoints(&first);
    let after = endpoints(&reports[first.len()..]);
    assert!(!before.is_empty(), "no endpoints on the first boot");
    assert_eq!(
        before, after,
        "endpoints or groups changed across the reset"
    );
    assert_eq!(
        reports.iter().filter(|r| r.event == "boot").count(),
        2,
        "the guest did not boot twice"
    );
    reports
}

/// What [`reboot_with_mapping_held`] saw.
#[derive(Debug)]
pub struct HeldReboot {
    /// The first boot's map report (the mapping held across the reboot).
    pub first_map: Report,
    /// The guest frame the first boot mapped at [`DEFAULT_IOVA`].
    pub first_gpa: u64,
    /// The second boot's map report.
    pub second_map: Report,
    /// The guest frame the second boot mapped at [`DEFAULT_IOVA`].
    pub second_gpa: u64,
    /// Every report of both boots.
    pub reports: Vec<Report>,
}

/// Reboot with a VFIO mapping held: on the first boot `edu` is bound to vfio-pci and mapped
/// by an agent that keeps its container open (it waits on a pipe a background writer holds
/// open, so nothing ever unmaps); `while_held` runs with the map report. The guest then
/// reboots with `reboot -f`, the mapping still in place (no unmap, no unbind). On the second
/// boot `after_reboot` runs with that boot's reports before VFIO is touched; then edu is bound
/// and mapped again at the same IOVA, and `second_map` runs while that mapping is held.
pub fn reboot_with_mapping_held(
    env: &GuestEnv,
    front: &Front,
    while_held: impl FnOnce(&Report, u64),
    after_reboot: impl FnOnce(&[Report]),
    second_map: impl FnOnce(&Report, u64),
) -> HeldReboot {
    let bind = bind_first(EDU_ID);
    let (_run, mut q) = two_boot_guest(
        env,
        front,
        &format!(
            "hold)\n{bind}\
               mkfifo /tmp/hold || exit 1\n\
               sleep 100000 > /tmp/hold &\n\
               guest-agent vfio-map \"$bdf\" --pages 1 --wait-stdin < /tmp/hold > /tmp/map.out 2>&1 &\n\
               agent=$!\n\
               while ! grep -q vfio-wait /tmp/map.out; do\n\
                 kill -0 $agent 2>/dev/null || {{ cat /tmp/map.out; exit 1; }}\n\
                 sleep 0.1\n\
               done\n\
               cat /tmp/map.out\n\
               echo AGENT ask what=reboot\n\
               read -r cmd\n\
               touch /tmp/reboot ;;\n\
             check)\n{bind}\
               guest-agent vfio-map \"$bdf\" --pages 1 --wait-stdin || exit 1 ;;\n"
        ),
    );

    // First boot: map and hold, then reboot with the mapping live.
    q.next("boot");
    q.next("ask");
    q.send_line("hold");
    let first_map = q.next("vfio-map");
    let first_gpa = check_map(&first_map, DEFAULT_IOVA, 1)[0];
    q.next("vfio-wait");
    q.next("ask");
    while_held(&first_map, first_gpa);
    q.send_line("reboot");
    let done = q.next("script-done");
    assert_eq!(done.get_u64("rc"), Some(0), "{done:?}");
    let first: Vec<Report> = q.reports();
    assert!(
        !first.iter().any(|r| r.event == "vfio-unmap"),
        "the first boot unmapped before the reboot"
    );

    // Second boot.
    q.next("boot");
    q.next("ask");
    let so_far = q.reports();
    after_reboot(&so_far[first.len()..]);
    q.send_line("check");
    assert_eq!(q.next("bound").get("driver"), Some("vfio-pci"));
    let second = q.next("vfio-map");
    let second_gpa = check_map(&second, DEFAULT_IOVA, 1)[0];
    q.next("vfio-wait");
    second_map(&second, second_gpa);
    q.send_line("");
    assert_eq!(q.next("vfio-unmap").get_u64("unmapped"), Some(4096));
    let reports = q.finish().reports;
    assert_eq!(
        reports.iter().filter(|r| r.event == "boot").count(),
        2,
        "the guest did not boot twice"
    );
    HeldReboot {
        first_map,
        first_gpa,
        second_map: second,
        second_gpa,
        reports,
    }
}

/// The agent's default IOVA (`guest_agent::args::DEFAULT_IOVA`).
pub const DEFAULT_IOVA: u64 = guest_agent::args::DEFAULT_IOVA;

/// IOVA of the huge-page scenario (2 MiB-aligned).
pub const HUGE_IOVA: u64 = 0x40_0000;
/// 2 MiB in 4 KiB pages.
pub const HUGE_PAGES: u64 = 512;

/// A 2 MiB VFIO mapping backed by a transparent huge page: the agent maps a 2 MiB-aligned,
/// `MADV_HUGEPAGE` buffer at [`HUGE_IOVA`]; the guest frames must be one contiguous, 2 MiB-aligned
/// run (so VFIO and the virtio-iommu driver map it as one large page). `while_mapped` gets the
/// map report and the first frame. Returns the first frame.
pub fn vfio_map_huge(
    env: &GuestEnv,
    front: &Front,
    while_mapped: impl FnOnce(&Report, u64),
) -> u64 {
    let run = RunDir::new(env);
    let mut opts = base_opts(front);
    // Linux turns THP off by default below 512 MiB of RAM (mm/huge_memory.c, hugepage_init);
    // the guest turns it on for MADV_HUGEPAGE regions.
    opts.script = format!(
        "echo madvise > /sys/kernel/mm/transparent_hugepage/enabled || exit 1\n\
         echo madvise > /sys/kernel/mm/transparent_hugepage/defrag || exit 1\n\
         {}guest-agent vfio-map \"$bdf\" --iova {HUGE_IOVA:#x} --pages {HUGE_PAGES} --huge \
         --wait-stdin || exit 1\n",
        bind_first(EDU_ID)
    );
    opts.args.extend(["-device".into(), "edu".into()]);
    let mut q = Qemu::spawn(env, &run, &opts);
    let map = q.next("vfio-map");
    let gpas = check_map(&map, HUGE_IOVA, HUGE_PAGES);
    let first = gpas[0];
    assert_eq!(
        first % (2 << 20),
        0,
        "the guest did not back the buffer with a huge page (first frame {first:#x})"
    );
    for (i, g) in gpas.iter().enumerate() {
        assert_eq!(
            *g,
            first + i as u64 * 4096,
            "frames not contiguous at page {i}"
        );
    }
    q.next("vfio-wait");
    while_mapped(&map, first);
    q.send_line("");
    assert_eq!(
        q.next("vfio-unmap").get_u64("unmapped"),
        Some(HUGE_PAGES * 4096)
    );
    q.finish();
    first
}

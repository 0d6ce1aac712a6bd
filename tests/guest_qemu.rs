//! Real-guest tests against QEMU's OWN devices: the baseline the `vhost-device-iommu` daemon
//! is compared with, and the proof that the guest environment (provisioning, kernel, modules,
//! agent, VIOT) works before the daemon is attached.
//!
//! They boot a Debian cloud kernel under TCG inside the provisioned trixie root, so they need
//! root and a provisioned (or provisionable) environment, and take ~10 s each; they are
//! `#[ignore]`d in the ordinary `cargo test` and run by `scripts/guest-test`:
//! `cargo test --test guest_qemu -- --ignored --test-threads=1`.

#[path = "guest/harness.rs"]
mod harness;

use guest_agent::report::{Report, parse_u64};
use harness::{GuestEnv, Qemu, QemuOpts, RunDir, bind_first, find};
use std::io::Read;
use std::os::unix::net::UnixListener;
use std::time::{Duration, Instant};
use vhost_device_iommu::viot::{EndpointRange, PciBdf, Topology, build_viot, parse_viot};

/// QEMU's `edu` test device (hw/misc/edu.c): a PCI function no guest driver claims, so it is a
/// free endpoint for VFIO.
const EDU_ID: &str = "1234:11e8";
/// Guest RAM; every guest-physical page must lie below it (q35 puts all of it below 4 GiB).
const RAM_MB: u32 = 512;

fn hex_bytes(s: &str) -> Vec<u8> {
    assert!(s.len().is_multiple_of(2), "odd hex length");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

fn iommu_bdf(reports: &[Report]) -> PciBdf {
    let r = reports
        .iter()
        .find(|r| r.event == "iommu")
        .expect("the guest reported no IOMMU");
    r.get("name")
        .unwrap()
        .parse()
        .expect("IOMMU name is a PCI address")
}

fn check_map(m: &Report, iova: u64, pages: u64) -> Vec<u64> {
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

/// Probe + translated (VFIO) flow against QEMU's virtio-iommu-pci, and QEMU's own VIOT table
/// checked against our builder.
#[test]
#[ignore = "boots a guest: run by scripts/guest-test"]
fn qemu_virtio_iommu_probe_vfio_map_and_viot() {
    let env = GuestEnv::provision();
    let run = RunDir::new(&env);
    let opts = QemuOpts {
        memory_mb: RAM_MB,
        script: format!(
            "guest-agent acpi-table VIOT || exit 1\n{}\
             guest-agent info \"$bdf\" || exit 1\n\
             guest-agent vfio-map \"$bdf\" --iova 0x200000 --pages 4 --wait-stdin || exit 1\n\
             guest-agent info \"$bdf\" || exit 1\n",
            bind_first(EDU_ID)
        ),
        args: ["-device", "virtio-iommu-pci", "-device", "edu"]
            .map(String::from)
            .to_vec(),
        ..Default::default()
    };
    let mut q = Qemu::spawn(&env, &run, &opts);
    let boot = q.next("boot");
    assert!(boot.get("kernel").unwrap().contains("cloud-amd64"));
    let modules = q.next("modules");
    assert_eq!(modules.get_u64("failed"), Some(0), "{modules:?}");
    assert_eq!(q.next("acpi").get("viot"), Some("yes"));
    let table = q.next("acpi-table");
    let bound = q.next("bound");
    assert_eq!(bound.get("driver"), Some("vfio-pci"));
    let edu = bound.get("bdf").unwrap().to_string();
    let map = q.next("vfio-map");
    q.next("vfio-wait");
    // The mapping is live while the agent waits: this is where the daemon test asks the
    // device to translate the IOVA. Then let the agent unmap.
    q.send_line("");
    let unmap = q.next("vfio-unmap");
    let reports = q.finish().reports;

    // Probe: the driver bound and put every PCI function on bus 0 behind itself.
    let iommu = iommu_bdf(&reports);
    assert!(
        reports.iter().any(|r| r.event == "virtio-iommu"),
        "virtio_iommu did not bind"
    );
    let ep = find(&reports, "endpoint", "bdf", &edu).expect("edu is no endpoint");
    assert_eq!(ep.get("iommu"), Some(iommu.to_string().as_str()));
    assert!(ep.get("domain").unwrap().starts_with("DMA"), "{ep:?}");
    let info = find(&reports, "info", "bdf", &edu).unwrap();
    assert_eq!(info.get("iommu"), Some(iommu.to_string().as_str()));

    // Translated: 4 distinct guest frames behind IOVA 0x200000, then a full unmap.
    let gpas = check_map(&map, 0x20_0000, 4);
    eprintln!("vfio-map iova=0x200000 -> {gpas:#x?}");
    assert_eq!(unmap.get_u64("unmapped"), Some(4 * 4096));

    // QEMU's own VIOT: one virtio-pci IOMMU node and one range covering bus 0; our builder
    // gives the same nodes for the same topology.
    assert_eq!(table.get("sig"), Some("VIOT"));
    let qemu_viot = hex_bytes(table.get("hex").unwrap());
    let topo = parse_viot(&qemu_viot).expect("QEMU's VIOT decodes");
    assert_eq!(topo.iommu, iommu);
    assert_eq!(topo.endpoints, vec![EndpointRange::bus(0, 0)]);
    let ours = build_viot(&topo).unwrap();
    assert_eq!(ours.len(), qemu_viot.len());
    assert_eq!(ours[36..], qemu_viot[36..], "node bytes differ from QEMU's");
}

/// Identity: a virtio-blk endpoint behind QEMU's virtio-iommu, booted with
/// `iommu.passthrough=1`, gets an identity domain and reads the test's disk image intact.
#[test]
#[ignore = "boots a guest: run by scripts/guest-test"]
fn qemu_virtio_iommu_identity_virtio_blk() {
    let env = GuestEnv::provision();
    let run = RunDir::new(&env);
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
    let opts = QemuOpts {
        memory_mb: RAM_MB,
        append: vec!["iommu.passthrough=1".into()],
        script: "set -e\n\
                 echo \"AGENT disk sha256=$(sha256sum /dev/vda | cut -d' ' -f1) \
                 bdf=$(basename $(readlink -f /sys/block/vda/device/..))\"\n"
            .into(),
        args: vec![
            "-device".into(),
            "virtio-iommu-pci".into(),
            "-drive".into(),
            format!(
                "file={},format=raw,if=none,id=d0,readonly=on",
                disk.display()
            ),
            "-device".into(),
            "virtio-blk-pci,drive=d0".into(),
        ],
        ..Default::default()
    };
    let mut q = Qemu::spawn(&env, &run, &opts);
    let d = q.next("disk");
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
}

/// The guest benchmark mode against QEMU's virtio-iommu-pci: VFIO MAP_DMA/UNMAP_DMA pairs per
/// second. Prints the figure (the daemon run will print its own and the ratio).
#[test]
#[ignore = "boots a guest: run by scripts/guest-test"]
fn qemu_virtio_iommu_vfio_bench() {
    let count: u64 = std::env::var("GUEST_BENCH_COUNT")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5000);
    let env = GuestEnv::provision();
    let run = RunDir::new(&env);
    let opts = QemuOpts {
        memory_mb: RAM_MB,
        script: format!(
            "{}for i in 1 2 3; do guest-agent vfio-bench \"$bdf\" --count {count} || exit 1; done\n",
            bind_first(EDU_ID)
        ),
        args: ["-device", "virtio-iommu-pci", "-device", "edu"]
            .map(String::from)
            .to_vec(),
        timeout: Duration::from_secs(300),
        ..Default::default()
    };
    let q = Qemu::spawn(&env, &run, &opts);
    let reports = q.finish().reports;
    let runs: Vec<&Report> = reports.iter().filter(|r| r.event == "vfio-bench").collect();
    assert_eq!(runs.len(), 3);
    let mut rates: Vec<f64> = runs
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
    eprintln!(
        "BENCH qemu-virtio-iommu vfio map+unmap pairs/s: median {:.0} (runs {:.0?}), {count} pairs each",
        rates[1], rates
    );
}

/// Our VIOT table, passed with `-acpitable`, is taken by the guest's ACPI core (checksum and
/// header valid), read back intact, and parsed by Linux's VIOT driver, which looks for the
/// IOMMU at the BDF we named (none is there in this boot).
#[test]
#[ignore = "boots a guest: run by scripts/guest-test"]
fn our_viot_is_parsed_by_the_guest() {
    let env = GuestEnv::provision();
    let run = RunDir::new(&env);
    let topo = Topology {
        iommu: "00:03.0".parse().unwrap(),
        endpoints: vec![EndpointRange::bus(0, 0)],
    };
    let table = build_viot(&topo).unwrap();
    let path = run.write("viot.bin", &table);
    let opts = QemuOpts {
        memory_mb: RAM_MB,
        script: "guest-agent acpi-table VIOT || exit 1\n".into(),
        args: vec!["-acpitable".into(), format!("file={}", path.display())],
        ..Default::default()
    };
    let mut q = Qemu::spawn(&env, &run, &opts);
    let dumped = q.next("acpi-table");
    let log = q.finish().log;
    assert_eq!(
        hex_bytes(dumped.get("hex").unwrap()),
        table,
        "table changed on the way"
    );
    assert_eq!(parse_viot(&table).unwrap(), topo);
    let line = log
        .lines()
        .find(|l| l.contains("ACPI: VIOT 0x"))
        .expect("the guest's ACPI core did not list VIOT");
    assert!(line.contains("RVIOMU VHOSTIOM"), "{line}");
    assert!(
        !log.contains("Incorrect checksum in table [VIOT]"),
        "checksum rejected"
    );
    assert!(
        log.contains("VIOT: Could not find PCI IOMMU"),
        "the VIOT driver did not look for the IOMMU we named"
    );
}

/// The vhost-user path: QEMU 11's `vhost-user-test-device-pci` configured as a virtio-iommu
/// (virtio id 23, 2 queues, 40-byte config), shared guest memory, and our VIOT table naming
/// it. QEMU must connect to the backend socket and open the vhost-user handshake with
/// `VHOST_USER_GET_FEATURES`. The test plays the listening side only up to that message: the
/// daemon (`vhost-device-iommu`) is what answers it in the end-to-end tests.
#[test]
#[ignore = "boots a guest: run by scripts/guest-test"]
fn vhost_user_iommu_front_end_connects_to_backend() {
    let env = GuestEnv::provision();
    let run = RunDir::new(&env);
    let iommu: PciBdf = "00:03.0".parse().unwrap();
    let topo = Topology {
        iommu,
        endpoints: vec![EndpointRange::bus(0, 0)],
    };
    let viot = run.write("viot.bin", &build_viot(&topo).unwrap());
    let sock_host = run.host.join("vu.sock");
    let listener = UnixListener::bind(&sock_host).expect("bind vhost-user socket");
    listener.set_nonblocking(true).unwrap();
    let sock = run.guest.join("vu.sock");
    let opts = QemuOpts {
        memory_mb: RAM_MB,
        machine: "q35,memory-backend=mem".into(),
        args: vec![
            "-object".into(),
            format!("memory-backend-memfd,id=mem,size={RAM_MB}M,share=on"),
            "-chardev".into(),
            format!("socket,id=vu,path={}", sock.display()),
            "-device".into(),
            "vhost-user-test-device-pci,chardev=vu,virtio-id=23,num_vqs=2,config_size=40,addr=03.0"
                .into(),
            "-acpitable".into(),
            format!("file={}", viot.display()),
        ],
        timeout: Duration::from_secs(60),
        ..Default::default()
    };
    let q = Qemu::spawn(&env, &run, &opts);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut conn = loop {
        match listener.accept() {
            Ok((c, _)) => break c,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(
                    Instant::now() < deadline,
                    "QEMU did not connect to the vhost-user socket\n{}",
                    q.log()
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("accept: {e}"),
        }
    };
    conn.set_nonblocking(false).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    // vhost-user message header (QEMU docs/interop/vhost-user.rst, "Message Specification"):
    // u32 request, u32 flags (bits 0-1: version, 0x1), u32 payload size.
    let mut hdr = [0u8; 12];
    conn.read_exact(&mut hdr)
        .expect("read the first vhost-user message");
    let word = |i: usize| u32::from_le_bytes(hdr[i * 4..i * 4 + 4].try_into().unwrap());
    assert_eq!(word(0), 1, "first request is not VHOST_USER_GET_FEATURES");
    assert_eq!(word(1) & 0x3, 1, "vhost-user version");
    assert_eq!(word(2), 0, "GET_FEATURES carries no payload");
    eprintln!(
        "QEMU opened the vhost-user handshake {:.2} s after start",
        q.elapsed().as_secs_f64()
    );
    drop(q); // kills QEMU, which is waiting for our answer
}

//! Real-guest tests against QEMU's OWN devices: the baseline the `vhost-device-iommu` daemon
//! is compared with, and the proof that the guest environment (provisioning, kernel, modules,
//! agent, VIOT) works before the daemon is attached. The scenarios themselves
//! (`tests/guest/scenarios.rs`) take the virtio-iommu front end as a parameter, so the daemon's
//! tests run the same ones with `Front::vhost_user`.
//!
//! They boot a Debian cloud kernel under TCG inside the provisioned trixie root, so they need
//! root and a provisioned (or provisionable) environment, and take ~10 s each; they are
//! `#[ignore]`d in the ordinary `cargo test` and run by `scripts/guest-test`:
//! `cargo test --test guest_qemu -- --ignored --test-threads=1`.

use iommu_workspace::guest::harness::{GuestEnv, Qemu, QemuOpts, RunDir};
use iommu_workspace::guest::scenarios;
use iommu_workspace::guest::scenarios::{Front, RAM_MB, hex_bytes};
use std::io::Read;
use std::os::unix::net::UnixListener;
use std::time::{Duration, Instant};
use vhost_device_iommu::viot::{EndpointRange, Topology, build_viot, parse_viot};

/// Probe + translated (VFIO) flow against QEMU's virtio-iommu-pci, and QEMU's own VIOT table
/// checked against our builder.
#[test]
#[ignore = "boots a guest: run by scripts/guest-test"]
fn qemu_virtio_iommu_probe_vfio_map_and_viot() {
    let env = GuestEnv::provision();
    let mut live = Vec::new();
    let r = scenarios::probe_and_vfio_map(
        &env,
        &Front::Qemu,
        |_, gpas| live.extend_from_slice(gpas),
        |_| {},
    );
    assert_eq!(live, r.gpas, "the hook saw the frames the agent reported");
    eprintln!(
        "vfio-map iova={:#x} -> {:#x?}",
        scenarios::PROBE_IOVA,
        r.gpas
    );

    // QEMU's own VIOT: one virtio-pci IOMMU node and one range covering bus 0; our builder
    // gives the same nodes for the same topology.
    assert_eq!(r.viot.get("sig"), Some("VIOT"));
    let qemu_viot = hex_bytes(r.viot.get("hex").unwrap());
    let topo = parse_viot(&qemu_viot).expect("QEMU's VIOT decodes");
    assert_eq!(topo.iommu, r.iommu);
    assert_eq!(topo.endpoints, vec![EndpointRange::bus(0, 0)]);
    assert!(topo.endpoints[0].contains(&r.endpoint));
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
    let (blk, _) = scenarios::identity_virtio_blk(&env, &Front::Qemu, |_| {});
    eprintln!("virtio-blk {blk} read its image through an identity domain");
}

/// Reboot and detach against QEMU's virtio-iommu: the guest state the daemon's version of
/// this test checks the control socket against.
#[test]
#[ignore = "boots a guest: run by scripts/guest-test"]
fn qemu_virtio_iommu_reboot_and_detach() {
    let env = GuestEnv::provision();
    let mut detached = None;
    let mut second_boot = 0;
    scenarios::reboot_and_detach(
        &env,
        &Front::Qemu,
        |r| detached = r.get("domain").map(String::from),
        |rs| second_boot = rs.iter().filter(|r| r.event == "endpoint").count(),
    );
    // After the unbind the group is back in its default (DMA) domain.
    let domain = detached.expect("release reported no domain");
    assert!(domain.starts_with("DMA"), "{domain}");
    assert!(second_boot > 0, "no endpoints probed after the reset");
}

/// The guest benchmark mode against QEMU's virtio-iommu-pci: VFIO MAP_DMA/UNMAP_DMA pairs per
/// second. Prints the figure (the daemon run prints its own and the ratio).
#[test]
#[ignore = "boots a guest: run by scripts/guest-test"]
fn qemu_virtio_iommu_vfio_bench() {
    let count: u64 = std::env::var("GUEST_BENCH_COUNT")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5000);
    let env = GuestEnv::provision();
    let rates = scenarios::vfio_bench(&env, &Front::Qemu, count, 3);
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
    let (front, sock_host) = Front::vhost_user(&run);
    let listener = UnixListener::bind(&sock_host).expect("bind vhost-user socket");
    listener.set_nonblocking(true).unwrap();
    let mut opts = QemuOpts {
        memory_mb: RAM_MB,
        timeout: Duration::from_secs(60),
        ..Default::default()
    };
    front.apply(&mut opts);
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

/// The interactive mode users get from `scripts/guest-boot --iommu qemu --shell`: with no
/// script and `guest.shell=1`, init gives the console a shell that runs what is typed.
#[test]
#[ignore = "boots a guest: run by scripts/guest-test"]
fn guest_shell_takes_commands_from_the_console() {
    let env = GuestEnv::provision();
    let run = RunDir::new(&env);
    let opts = QemuOpts {
        memory_mb: RAM_MB,
        append: vec!["guest.shell=1".into()],
        args: ["-device", "virtio-iommu-pci", "-device", "edu"]
            .map(String::from)
            .to_vec(),
        ..Default::default()
    };
    let mut q = Qemu::spawn(&env, &run, &opts);
    q.next("shell");
    q.send_line("guest-agent find 1234:11e8; echo AGENT typed answer=$((6 * 7))");
    let found = q.next("found");
    assert_eq!(found.get("vendor"), Some("1234"));
    assert_eq!(q.next("typed").get_u64("answer"), Some(42));
    q.send_line("exit");
    q.next("halt");
    let status = q.wait_exit();
    assert!(status.success(), "QEMU exited with {status}");
}

/// A 2 MiB VFIO mapping backed by a transparent huge page, through QEMU's virtio-iommu.
#[test]
#[ignore = "boots a guest: run by scripts/guest-test"]
fn qemu_virtio_iommu_huge_page_vfio_map() {
    let env = GuestEnv::provision();
    let first = scenarios::vfio_map_huge(&env, &Front::Qemu, |_, _| {});
    eprintln!("2 MiB at IOVA {:#x} -> {first:#x}", scenarios::HUGE_IOVA);
}

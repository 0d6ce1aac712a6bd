//! Starts the daemon and drives it as a vhost-user front end would (QEMU's role): memory table,
//! both vrings, real requests on the request queue, config space, a fault on the event queue,
//! and translations checked through the control socket.

use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use vhost::vhost_user::message::{
    VhostUserConfigFlags, VhostUserProtocolFeatures, VhostUserVirtioFeatures,
};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{RawDescriptor, split::Descriptor as SplitDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{
    Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestRegionMmap,
    MmapRegion,
};
use vmm_sys_util::eventfd::EventFd;

const MEM_SIZE: usize = 4 << 20;
const QSIZE: u16 = 64;
const EP: u32 = 0x08;
const PROBE_SIZE: u32 = 512;

struct Daemon {
    child: Child,
    dir: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn wait_for(path: &Path) {
    let start = Instant::now();
    while !path.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{path:?} never appeared"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn start_daemon(name: &str, extra: &[&str]) -> (Daemon, PathBuf, PathBuf) {
    let dir = std::env::temp_dir().join(format!("vhost-iommu-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("vhost.sock");
    let ctl = dir.join("control.sock");
    let child = Command::new(env!("CARGO_BIN_EXE_vhost-device-iommu"))
        .arg("--socket-path")
        .arg(&sock)
        .arg("--control-socket")
        .arg(&ctl)
        .args(["--endpoints", "0x0-0xff"])
        .args(extra)
        .spawn()
        .unwrap();
    let d = Daemon { child, dir };
    wait_for(&sock);
    wait_for(&ctl);
    (d, sock, ctl)
}

struct Control(BufReader<UnixStream>);

impl Control {
    fn connect(path: &Path) -> Self {
        Self(BufReader::new(UnixStream::connect(path).unwrap()))
    }
    fn ask(&mut self, v: Value) -> Value {
        writeln!(self.0.get_mut(), "{v}").unwrap();
        let mut l = String::new();
        self.0.read_line(&mut l).unwrap();
        serde_json::from_str(&l).unwrap()
    }
}

/// Guest memory shared with the daemon through a file, as QEMU's memfd backend does.
fn shared_memory(dir: &Path) -> GuestMemoryMmap {
    let path = dir.join("guest-ram");
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    file.set_len(MEM_SIZE as u64).unwrap();
    let region = MmapRegion::from_file(FileOffset::new(file, 0), MEM_SIZE).unwrap();
    GuestMemoryMmap::from_regions(vec![GuestRegionMmap::new(region, GuestAddress(0)).unwrap()])
        .unwrap()
}

struct Vring<'a> {
    q: MockSplitQueue<'a, GuestMemoryMmap>,
    kick: EventFd,
    _call: EventFd,
    next_desc: u16,
    submitted: u16,
}

fn hva(mem: &GuestMemoryMmap, gpa: GuestAddress) -> u64 {
    mem.get_host_address(gpa).unwrap() as u64
}

/// A fresh ring at `base` in guest memory, started as QEMU starts one (see [`restart_vring`]).
fn setup_vring<'a>(
    fe: &mut Frontend,
    mem: &'a GuestMemoryMmap,
    index: usize,
    base: u64,
) -> Vring<'a> {
    let mut ring = Vring {
        q: MockSplitQueue::create(mem, GuestAddress(base), QSIZE),
        kick: EventFd::new(0).unwrap(),
        _call: EventFd::new(0).unwrap(),
        next_desc: 0,
        submitted: 0,
    };
    restart_vring(fe, mem, &mut ring, index, 0);
    ring
}

impl Vring<'_> {
    /// Adds a chain of (address, length, writable) buffers.
    fn add(&mut self, bufs: &[(u64, u32, bool)]) {
        let first = self.next_desc;
        let descs: Vec<RawDescriptor> = bufs
            .iter()
            .enumerate()
            .map(|(i, &(addr, len, w))| {
                let mut flags = if w { VRING_DESC_F_WRITE as u16 } else { 0 };
                let last = i + 1 == bufs.len();
                if !last {
                    flags |= VRING_DESC_F_NEXT as u16;
                }
                let next = if last { 0 } else { first + i as u16 + 1 };
                RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
            })
            .collect();
        self.q.add_desc_chains(&descs, first).unwrap();
        self.next_desc = (first + bufs.len() as u16) % QSIZE;
        self.submitted += 1;
    }

    fn used_idx(&self, mem: &GuestMemoryMmap) -> u16 {
        mem.read_obj::<u16>(self.q.used_addr().unchecked_add(2))
            .unwrap()
    }

    /// Waits until `n` chains in total were used; returns the length of used element `n - 1`.
    fn wait_used(&self, mem: &GuestMemoryMmap, n: u16) -> u32 {
        let start = Instant::now();
        while self.used_idx(mem) < n {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "request {n} never used"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        let elem = self
            .q
            .used_addr()
            .unchecked_add(4 + 8 * u64::from((n - 1) % QSIZE));
        mem.read_obj::<u32>(elem.unchecked_add(4)).unwrap()
    }
}

use vm_memory::Address;

struct Guest<'a> {
    mem: &'a GuestMemoryMmap,
    req: Vring<'a>,
    next_buf: u64,
}

impl Guest<'_> {
    /// Sends one request laid out as the Linux driver does (one readable, one writable
    /// buffer), waits for it, and returns (used length, writable bytes).
    fn request(&mut self, body: &[u8], writable: u32) -> (u32, Vec<u8>) {
        let rd = self.next_buf;
        let wr = rd + 0x1000;
        self.next_buf = if wr + 0x2000 >= MEM_SIZE as u64 {
            0x10_0000
        } else {
            wr + 0x1000
        };
        self.mem.write_slice(body, GuestAddress(rd)).unwrap();
        self.mem
            .write_slice(&vec![0xee; writable as usize], GuestAddress(wr))
            .unwrap();
        self.req
            .add(&[(rd, body.len() as u32, false), (wr, writable, true)]);
        self.req.kick.write(1).unwrap();
        let used = self.req.wait_used(self.mem, self.req.submitted);
        let mut out = vec![0u8; writable as usize];
        self.mem.read_slice(&mut out, GuestAddress(wr)).unwrap();
        (used, out)
    }

    fn status(&mut self, body: &[u8]) -> u8 {
        let (used, out) = self.request(body, 4);
        assert_eq!(used, 4);
        out[0]
    }
}

fn head(ty: u8) -> Vec<u8> {
    vec![ty, 0, 0, 0]
}

fn attach(domain: u32, ep: u32, flags: u32) -> Vec<u8> {
    let mut b = head(1);
    for v in [domain, ep, flags, 0] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    b
}

fn map(domain: u32, start: u64, end: u64, phys: u64, flags: u32) -> Vec<u8> {
    let mut b = head(3);
    b.extend_from_slice(&domain.to_le_bytes());
    for v in [start, end, phys] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    b.extend_from_slice(&flags.to_le_bytes());
    b
}

fn unmap(domain: u32, start: u64, end: u64) -> Vec<u8> {
    let mut b = head(4);
    b.extend_from_slice(&domain.to_le_bytes());
    for v in [start, end] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    b.extend_from_slice(&[0; 4]);
    b
}

fn probe(ep: u32) -> Vec<u8> {
    let mut b = head(5);
    b.extend_from_slice(&ep.to_le_bytes());
    b.extend_from_slice(&[0; 64]);
    b
}

const OK: u8 = 0;
const INVAL: u8 = 4;
const RANGE: u8 = 5;
const NOENT: u8 = 6;

fn connect_frontend(sock: &Path) -> (Frontend, u64) {
    let mut fe = Frontend::connect(sock, 2).unwrap();
    fe.set_owner().unwrap();
    let features = fe.get_features().unwrap();
    fe.set_features(features).unwrap();
    assert_ne!(
        features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits(),
        0
    );
    let pf = fe.get_protocol_features().unwrap();
    assert!(pf.contains(VhostUserProtocolFeatures::CONFIG));
    fe.set_protocol_features(
        VhostUserProtocolFeatures::CONFIG | VhostUserProtocolFeatures::REPLY_ACK,
    )
    .unwrap();
    (fe, features)
}

/// A daemon with a front end connected: features negotiated, shared guest memory and its
/// memory table sent. Rings are the test's to set up.
struct Session {
    daemon: Daemon,
    sock: PathBuf,
    ctl: PathBuf,
    mem: GuestMemoryMmap,
    fe: Frontend,
    features: u64,
    table: [VhostUserMemoryRegionInfo; 1],
}

fn connected(name: &str, extra: &[&str]) -> Session {
    let (daemon, sock, ctl) = start_daemon(name, extra);
    let mem = shared_memory(&daemon.dir);
    let (fe, features) = connect_frontend(&sock);
    let region = mem.find_region(GuestAddress(0)).unwrap();
    let table = [VhostUserMemoryRegionInfo::from_guest_region(region).unwrap()];
    fe.set_mem_table(&table).unwrap();
    Session {
        daemon,
        sock,
        ctl,
        mem,
        fe,
        features,
        table,
    }
}

#[test]
fn daemon_serves_requests_config_and_events_over_vhost_user() {
    let Session {
        daemon: _daemon,
        sock,
        ctl,
        mem,
        mut fe,
        features,
        ..
    } = connected("main", &[]);
    // Offered features: VERSION_1, MAP_UNMAP, INPUT_RANGE, DOMAIN_RANGE, PROBE, MMIO,
    // BYPASS_CONFIG, EVENT_IDX, INDIRECT_DESC.
    for bit in [32, 2, 0, 1, 4, 5, 6, 29, 28] {
        assert_ne!(features & (1 << bit), 0, "feature bit {bit}");
    }
    assert_eq!(features & (1 << 3), 0, "legacy BYPASS is not offered");

    let req = setup_vring(&mut fe, &mem, 0, 0x1000);
    let mut evt = setup_vring(&mut fe, &mem, 1, 0x8000);

    // Config space: 40 bytes, page_size_mask, ranges, probe_size, bypass.
    let (_, cfg) = fe
        .get_config(0, 40, VhostUserConfigFlags::WRITABLE, &[0; 40])
        .unwrap();
    assert_eq!(&cfg[0..8], &0x4020_1000u64.to_le_bytes());
    assert_eq!(&cfg[16..24], &((1u64 << 48) - 1).to_le_bytes());
    assert_eq!(&cfg[32..36], &PROBE_SIZE.to_le_bytes());
    assert_eq!(cfg[36], 0);

    let mut ctl = Control::connect(&ctl);
    let translate = |ctl: &mut Control, iova: u64, access: &str| {
        ctl.ask(json!({"cmd": "translate", "endpoint": EP, "iova": iova, "access": access}))
    };
    // Unattached and bypass off: the endpoint is blocked.
    let t = translate(&mut ctl, 0x1000, "read");
    assert_eq!(t["fault"]["reason"], "domain");

    let mut g = Guest {
        mem: &mem,
        req,
        next_buf: 0x10_0000,
    };
    assert_eq!(g.status(&attach(1, EP, 0)), OK);
    assert_eq!(g.status(&map(1, 0x4_0000, 0x5_ffff, 0x20_0000, 3)), OK);
    // Errors get the spec's statuses and change nothing.
    assert_eq!(g.status(&map(1, 0x5_0000, 0x6_ffff, 0, 3)), INVAL);
    assert_eq!(g.status(&map(9, 0, 0xfff, 0, 3)), NOENT);
    assert_eq!(g.status(&map(1, 0x10_0800, 0x10_0fff, 0, 3)), RANGE);
    assert_eq!(g.status(&unmap(1, 0x4_0000, 0x4_ffff)), RANGE);
    assert_eq!(g.status(&attach(1, 0x1000, 0)), NOENT);
    // An unknown request type: no write, used length zero.
    let (used, out) = g.request(&head(0x42), 4);
    assert_eq!((used, out), (0, vec![0xee; 4]));

    // PROBE: exactly probe_size bytes of properties, the MSI window first.
    let (used, out) = g.request(&probe(EP), PROBE_SIZE + 4);
    assert_eq!(used, PROBE_SIZE + 4);
    assert_eq!(&out[0..4], &[1, 0, 20, 0]);
    assert_eq!(out[4], 1);
    assert_eq!(&out[8..16], &0xfee0_0000u64.to_le_bytes());
    assert!(out[24..PROBE_SIZE as usize].iter().all(|b| *b == 0));
    assert_eq!(out[PROBE_SIZE as usize], OK);

    // The translation through the VT-d model, with its trace.
    let t = translate(&mut ctl, 0x4_1234, "write");
    assert_eq!(t["translation"]["phys"], 0x20_1234);
    assert_eq!(t["translation"]["perm"], "rw");
    let n = t["trace_len"].as_u64().unwrap();
    assert!(n > 0);
    assert_eq!(n as usize, t["trace"].as_array().unwrap().len());
    let doms = ctl.ask(json!({"cmd": "domains"}));
    assert_eq!(doms["model"], "vtd");
    assert_eq!(doms["domains"][0]["endpoints"], json!([EP]));
    // The VT-d domain id: the first one the realisation hands out (0 and 1 are reserved).
    assert_eq!(doms["domains"][0]["hw_domain_id"], 2);
    assert_eq!(doms["domains"][0]["mappings"][0]["virt_end"], 0x5_ffff);

    // Faults are reported on the event queue, oldest first: the blocked access from before the
    // driver gave the event queue any buffer, then a mapping fault.
    let eb = 0x3f_0000u64;
    mem.write_slice(&[0xee; 48], GuestAddress(eb)).unwrap();
    evt.add(&[(eb, 24, true)]);
    evt.add(&[(eb + 24, 24, true)]);
    evt.kick.write(1).unwrap();
    assert_eq!(evt.wait_used(&mem, 1), 24);
    let t = translate(&mut ctl, 0x9_0000, "write");
    assert_eq!(t["fault"]["reason"], "mapping");
    assert_eq!(evt.wait_used(&mem, 2), 24);
    let mut ev = [0u8; 48];
    mem.read_slice(&mut ev, GuestAddress(eb)).unwrap();
    assert_eq!(ev[0], 1, "VIRTIO_IOMMU_FAULT_R_DOMAIN");
    assert_eq!(&ev[4..8], &(1u32 | 0x100).to_le_bytes(), "READ | ADDRESS");
    assert_eq!(&ev[16..24], &0x1000u64.to_le_bytes());
    let ev = &ev[24..];
    assert_eq!(ev[0], 2, "VIRTIO_IOMMU_FAULT_R_MAPPING");
    assert_eq!(&ev[4..8], &(2u32 | 0x100).to_le_bytes(), "WRITE | ADDRESS");
    assert_eq!(&ev[8..12], &EP.to_le_bytes());
    assert_eq!(&ev[16..24], &0x9_0000u64.to_le_bytes());

    // UNMAP: the translation is gone from the model, caches included.
    assert_eq!(g.status(&unmap(1, 0x4_0000, 0x5_ffff)), OK);
    let t = translate(&mut ctl, 0x4_1234, "read");
    assert_eq!(t["fault"]["reason"], "mapping");

    // Bypass through the config space: unattached endpoints pass through.
    fe.set_config(36, VhostUserConfigFlags::WRITABLE, &[1])
        .unwrap();
    // SET_CONFIG has no reply; GET_CONFIG's reply comes after it was handled.
    let (_, cfg) = fe
        .get_config(36, 1, VhostUserConfigFlags::WRITABLE, &[0])
        .unwrap();
    assert_eq!(cfg, vec![1]);
    let t =
        ctl.ask(json!({"cmd": "translate", "endpoint": 0x10, "iova": 0x7000, "access": "read"}));
    assert_eq!(t["translation"]["phys"], 0x7000, "{t}");

    let stats = ctl.ask(json!({"cmd": "stats"}));
    assert_eq!(stats["requests"]["by_type"]["map"]["OK"], 1);
    assert_eq!(stats["requests"]["by_type"]["map"]["INVAL"], 1);
    assert_eq!(stats["requests"]["by_type"]["unmap"]["RANGE"], 1);
    assert_eq!(stats["requests"]["by_type"]["probe"]["OK"], 1);
    assert_eq!(stats["requests"]["unknown_type"], 1);
    assert_eq!(stats["requests"]["events_sent"], 2);
    assert!(
        stats["hardware"]["caches"]["iotlb"]["lookups"]
            .as_u64()
            .unwrap()
            > 0
    );

    // The front end goes away (QEMU quits or reconnects): the device returns to its initial
    // state and the daemon serves the next front end.
    drop(fe);
    let start = Instant::now();
    loop {
        let d = ctl.ask(json!({"cmd": "domains"}));
        if d["domains"].as_array().unwrap().is_empty() && d["bypass"] == false {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no reset after disconnect: {d}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let start = Instant::now();
    let (mut fe, _) = loop {
        match Frontend::connect(&sock, 2) {
            Ok(f) => {
                f.set_owner().unwrap();
                let features = f.get_features().unwrap();
                break (f, features);
            }
            Err(e) => {
                assert!(
                    start.elapsed() < Duration::from_secs(20),
                    "no second connection: {e}"
                );
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    };
    fe.set_features(DEVICE_FEATURES_ACKED).unwrap();
    fe.set_protocol_features(VhostUserProtocolFeatures::CONFIG)
        .unwrap();
    let (_, cfg) = fe
        .get_config(36, 1, VhostUserConfigFlags::WRITABLE, &[9])
        .unwrap();
    assert_eq!(cfg, vec![0], "bypass back to its initial value");
}

/// Starts `ring` (first or again after a stop) as QEMU's `vhost_dev_start` does
/// (hw/virtio/vhost.c, `vhost_virtqueue_start`): size, base, addresses, kick, call, then
/// enable. The ring keeps its place in guest memory; `base` is what QEMU holds as the queue's
/// `last_avail_idx`.
fn restart_vring(
    fe: &mut Frontend,
    mem: &GuestMemoryMmap,
    ring: &mut Vring,
    index: usize,
    base: u16,
) {
    fe.set_vring_num(index, QSIZE).unwrap();
    fe.set_vring_base(index, base).unwrap();
    fe.set_vring_addr(
        index,
        &VringConfigData {
            queue_max_size: QSIZE,
            queue_size: QSIZE,
            flags: 0,
            desc_table_addr: hva(mem, ring.q.desc_table_addr()),
            used_ring_addr: hva(mem, ring.q.used_addr()),
            avail_ring_addr: hva(mem, ring.q.avail_addr()),
            log_addr: None,
        },
    )
    .unwrap();
    let (kick, call) = (EventFd::new(0).unwrap(), EventFd::new(0).unwrap());
    fe.set_vring_kick(index, &kick).unwrap();
    fe.set_vring_call(index, &call).unwrap();
    fe.set_vring_enable(index, true).unwrap();
    ring.kick = kick;
    ring._call = call;
}

/// What QEMU's `vhost_dev_stop` sends at a virtio reset or a VM stop: `GET_VRING_BASE` on every
/// ring (no `RESET_DEVICE`; `SET_STATUS` needs a protocol feature the daemon does not offer).
/// Returns the request queue's base.
fn stop_rings(fe: &mut Frontend) -> u16 {
    let req = fe.get_vring_base(0).unwrap();
    fe.get_vring_base(1).unwrap();
    u16::try_from(req).unwrap()
}

/// A guest reboot with domains and mappings live, as QEMU's vhost-user-test-device-pci drives
/// it: the rings stop, the next driver negotiates its features and starts fresh rings at base 0.
/// Before that driver's first request is served the device is back in its initial state: no
/// endpoint attached, no domain (so the new driver's domain 1 is a new, empty domain and its
/// MAP at the old IOVA succeeds), `bypass` as it was.
#[test]
fn a_virtio_reset_signalled_only_by_the_rings_resets_the_device() {
    for model in ["vtd", "soft"] {
        let Session {
            daemon: _daemon,
            sock: _,
            ctl,
            mem,
            mut fe,
            features,
            table,
        } = connected(&format!("virtio-reset-{model}"), &["--model", model]);
        let req = setup_vring(&mut fe, &mem, 0, 0x1000);
        let _evt = setup_vring(&mut fe, &mem, 1, 0x8000);
        let mut ctl = Control::connect(&ctl);
        let translate = |ctl: &mut Control, ep: u32, iova: u64| {
            ctl.ask(json!({"cmd": "translate", "endpoint": ep, "iova": iova, "access": "read"}))
        };
        let mut g = Guest {
            mem: &mem,
            req,
            next_buf: 0x10_0000,
        };
        // First boot: two endpoints in domain 1, a mapping held.
        assert_eq!(g.status(&attach(1, EP, 0)), OK);
        assert_eq!(g.status(&attach(1, EP + 1, 0)), OK);
        assert_eq!(g.status(&map(1, 0x4_0000, 0x4_ffff, 0x20_0000, 3)), OK);
        assert_eq!(
            translate(&mut ctl, EP, 0x4_0010)["translation"]["phys"],
            0x20_0010
        );

        // Reboot: rings stopped, then the next driver's start. Its rings sit where the first
        // boot's did, zeroed by the new kernel.
        assert_eq!(stop_rings(&mut fe), 3);
        fe.set_features(features).unwrap();
        fe.set_mem_table(&table).unwrap();
        mem.write_slice(&[0; 0x7000], GuestAddress(0x1000)).unwrap();
        mem.write_slice(&[0; 0x8000], GuestAddress(0x8000)).unwrap();
        let req = setup_vring(&mut fe, &mem, 0, 0x1000);
        let _evt = setup_vring(&mut fe, &mem, 1, 0x8000);
        g.req = req;

        // The new driver's first request: domain 1 is gone with its mapping.
        assert_eq!(g.status(&map(1, 0x4_0000, 0x4_ffff, 0x30_0000, 3)), NOENT);
        let d = ctl.ask(json!({"cmd": "domains"}));
        assert_eq!(d["domains"], json!([]), "{d}");
        for ep in [EP, EP + 1] {
            let t = translate(&mut ctl, ep, 0x4_0010);
            assert_eq!(t["fault"]["reason"], "domain", "endpoint {ep:#x}: {t}");
        }
        // Its own domain 1 maps the old IOVA to its own page.
        assert_eq!(g.status(&attach(1, EP, 0)), OK);
        assert_eq!(g.status(&map(1, 0x4_0000, 0x4_ffff, 0x30_0000, 3)), OK);
        assert_eq!(
            translate(&mut ctl, EP, 0x4_0010)["translation"]["phys"],
            0x30_0010
        );
        let t = translate(&mut ctl, EP + 1, 0x4_0010);
        assert_eq!(t["fault"]["reason"], "domain", "{t}");
        let stats = ctl.ask(json!({"cmd": "stats"}));
        assert_eq!(stats["requests"]["device_resets"], 1, "{stats}");
        assert_eq!(stats["requests"]["system_resets"], 0, "{stats}");
        assert_eq!(
            stats["requests"]["by_type"]["map"]["INVAL"],
            Value::Null,
            "{stats}"
        );
    }
}

/// A VM stop and continue (QEMU's `stop`/`cont`, or a snapshot) stops and starts the rings just
/// as a reset does, but restarts them at the base they stopped at: the device keeps its state.
#[test]
fn rings_resumed_where_they_stopped_keep_the_device_state() {
    let Session {
        daemon: _daemon,
        sock: _,
        ctl,
        mem,
        mut fe,
        features,
        table,
    } = connected("vm-stop", &[]);
    let req = setup_vring(&mut fe, &mem, 0, 0x1000);
    let mut evt = setup_vring(&mut fe, &mem, 1, 0x8000);
    let mut ctl = Control::connect(&ctl);
    let mut g = Guest {
        mem: &mem,
        req,
        next_buf: 0x10_0000,
    };
    assert_eq!(g.status(&attach(1, EP, 0)), OK);
    assert_eq!(g.status(&map(1, 0x4_0000, 0x4_ffff, 0x20_0000, 3)), OK);
    for _ in 0..2 {
        let base = stop_rings(&mut fe);
        assert_eq!(base, g.req.submitted);
        fe.set_features(features).unwrap();
        fe.set_mem_table(&table).unwrap();
        restart_vring(&mut fe, &mem, &mut g.req, 0, base);
        restart_vring(&mut fe, &mem, &mut evt, 1, 0);
        // The next request is served in the same domain, the mapping still there.
        assert_eq!(g.status(&map(1, 0x4_0000, 0x4_0fff, 0, 3)), INVAL);
        let t = ctl
            .ask(json!({"cmd": "translate", "endpoint": EP, "iova": 0x4_0010, "access": "read"}));
        assert_eq!(t["translation"]["phys"], 0x20_0010, "{t}");
    }
    let stats = ctl.ask(json!({"cmd": "stats"}));
    assert_eq!(stats["requests"]["device_resets"], 0, "{stats}");
}

/// VERSION_1 | MAP_UNMAP | PROBE | BYPASS_CONFIG | PROTOCOL_FEATURES.
const DEVICE_FEATURES_ACKED: u64 = (1 << 32) | (1 << 2) | (1 << 4) | (1 << 6) | (1 << 30);

#[test]
fn daemon_writes_the_viot_table_for_its_endpoints() {
    let dir = std::env::temp_dir().join(format!("vhost-iommu-viot-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let viot = dir.join("viot.bin");
    let (_d, _, _) = start_daemon(
        "viot-daemon",
        &[
            "--viot-out",
            viot.to_str().unwrap(),
            "--iommu-bdf",
            "00:03.0",
        ],
    );
    wait_for(&viot);
    let topo = vhost_device_iommu::viot::parse_viot(&std::fs::read(&viot).unwrap()).unwrap();
    assert_eq!(topo.iommu.rid(), 0x18);
    let ranges: Vec<(u16, u16)> = topo
        .endpoints
        .iter()
        .map(|r| (r.first.rid(), r.last.rid()))
        .collect();
    assert_eq!(ranges, vec![(0, 0x17), (0x19, 0xff)]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_arguments_exit_non_zero_with_a_message() {
    let out = Command::new(env!("CARGO_BIN_EXE_vhost-device-iommu"))
        .args(["--socket-path", "/tmp/never.sock", "--domain-range", "9-1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("invalid range"), "{err}");
    let out = Command::new(env!("CARGO_BIN_EXE_vhost-device-iommu"))
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[test]
fn viot_subcommand_writes_the_table_and_exits() {
    let dir = std::env::temp_dir().join(format!("vhost-iommu-viot-sub-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let viot = dir.join("viot.bin");
    let out = Command::new(env!("CARGO_BIN_EXE_vhost-device-iommu"))
        .args([
            "viot",
            "--iommu-bdf",
            "00:02.0",
            "--endpoints",
            "00:01.0-00:04.7",
        ])
        .args(["--output", viot.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let topo = vhost_device_iommu::viot::parse_viot(&std::fs::read(&viot).unwrap()).unwrap();
    assert_eq!(topo.iommu.rid(), 0x10);
    let ranges: Vec<(u16, u16)> = topo
        .endpoints
        .iter()
        .map(|r| (r.first.rid(), r.last.rid()))
        .collect();
    assert_eq!(ranges, vec![(0x08, 0x0f), (0x11, 0x27)]);

    // Bad topology: exit status 2, a message, and no file written.
    let bad = dir.join("bad.bin");
    let out = Command::new(env!("CARGO_BIN_EXE_vhost-device-iommu"))
        .args([
            "viot",
            "--iommu-bdf",
            "00:20.0",
            "--output",
            bad.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("viot"));
    assert!(!bad.exists());
    // Daemon options do not mix with the subcommand.
    let out = Command::new(env!("CARGO_BIN_EXE_vhost-device-iommu"))
        .args([
            "--socket-path",
            "/tmp/never.sock",
            "viot",
            "--iommu-bdf",
            "00:02.0",
        ])
        .args(["--output", bad.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(!bad.exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

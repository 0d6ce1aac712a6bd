//! The DMA engine endpoint as the real-guest tests and the main job run it: a daemon serving
//! it over vfio-user beside its virtio-iommu, a guest with it attached through
//! `vfio-user-pci`, and readers of what the daemon reports about it.

use super::daemon::{Daemon, ENDPOINTS};
use super::harness::{GuestEnv, Qemu, QemuOpts, RunDir};
use super::scenarios::{Front, RAM_MB};
use guest_agent::report::{Report, parse_u64};
use serde_json::{Value, json};
use std::time::Duration;

/// Where the engine sits.
pub const ENGINE_ADDR: &str = "04.0";
/// Its requester id (the virtio-iommu endpoint id).
pub const ENGINE_RID: u64 = 0x20;
/// The engine's PCI IDs.
pub const ENGINE_ID: &str = "1234:1dae";
/// Pages per buffer.
pub const PAGES: u64 = 4;

/// A daemon with the engine, and a guest (that may reboot) with the engine attached.
/// Returns the run directories (the daemon's sockets, QEMU's boot files), which must outlive
/// both.
pub fn boot(env: &GuestEnv, model: &[&str], script: String) -> ([RunDir; 2], Daemon, Qemu) {
    let (dev, d) = daemon(env, model);
    let (run, q) = guest(env, &dev, script);
    ([dev, run], d, q)
}

/// A daemon (`--model` and other options in `extra`) serving the engine, with its sockets in
/// the returned run directory.
pub fn daemon(env: &GuestEnv, extra: &[&str]) -> (RunDir, Daemon) {
    daemon_with(env, extra, "")
}

/// [`daemon`], with `engine_opts` appended to the engine's `--endpoint` option (such as
/// `,iommu=bypass`).
pub fn daemon_with(env: &GuestEnv, extra: &[&str], engine_opts: &str) -> (RunDir, Daemon) {
    let dev = RunDir::new(env);
    let sock = dev.host.join("vu.sock");
    let endpoint = format!(
        "dma@{ENGINE_ADDR},socket={}{engine_opts}",
        dev.host.join("ep.sock").display()
    );
    let mut args = vec!["--endpoint", endpoint.as_str()];
    args.extend_from_slice(extra);
    let d = Daemon::spawn(&sock, ENDPOINTS, Duration::from_secs(600), &args);
    (dev, d)
}

/// A guest (that may reboot) against the daemon whose sockets are in `dev`, with the engine
/// attached through `vfio-user-pci`, running `script`. Returns its run directory and QEMU.
///
/// The script runs with the console's log level at 1: the engine's faults make the guest's
/// virtio_iommu print errors, which would otherwise land in the middle of the agent's report
/// lines on the same serial console (the kernel log keeps them; scripts read it with `dmesg`).
pub fn guest(env: &GuestEnv, dev: &RunDir, script: String) -> (RunDir, Qemu) {
    let script = format!("dmesg -n 1\n{script}");
    let (front, _) = Front::vhost_user(dev);
    let mut opts = QemuOpts {
        memory_mb: RAM_MB,
        no_reboot: false,
        timeout: Duration::from_secs(240),
        script,
        ..Default::default()
    };
    front.apply(&mut opts);
    opts.args.extend([
        "-device".into(),
        vfio_user_device(&dev.guest.join("ep.sock"), ENGINE_ADDR),
    ]);
    let run = RunDir::new(env);
    let q = Qemu::spawn(env, &run, &opts);
    (run, q)
}

/// QEMU's `-device` value for a vfio-user PCI function served on `socket` (a path inside the
/// root), placed at `addr` (`DD.F`); `vfio-user-pci` takes only the JSON form.
pub fn vfio_user_device(socket: &std::path::Path, addr: &str) -> String {
    json!({"driver": "vfio-user-pci", "socket": {"type": "unix", "path": socket}, "addr": addr})
        .to_string()
}

/// Whether some translation of `batch` (the daemon's `last_batch`) covers `iova` and reaches
/// guest-physical `gpa` there, for `access` (`"read"`, `"write"`, or any with `None`): a
/// translation of the page itself, or of a larger page around it.
pub fn batch_reaches(batch: &[Value], iova: u64, gpa: u64, access: Option<&str>) -> bool {
    batch.iter().any(|t| {
        let (Some(start), Some(len), Some(phys)) =
            (t["iova"].as_u64(), t["len"].as_u64(), t["phys"].as_u64())
        else {
            return false;
        };
        access.is_none_or(|a| t["access"] == json!(a))
            && (start..start + len).contains(&iova)
            && phys + (iova - start) == gpa
    })
}

/// The guest-physical frames listed in field `key` of an agent report.
pub fn gpas(r: &Report, key: &str) -> Vec<u64> {
    r.get(key)
        .unwrap_or_else(|| panic!("no {key}: {r:?}"))
        .split(',')
        .map(|g| parse_u64(g).expect("gpa"))
        .collect()
}

/// The daemon's report of its one endpoint device (`endpoints`).
pub fn endpoint(d: &Daemon) -> Value {
    let e = d.ctl(json!({"cmd": "endpoints"}));
    let list = e["endpoints"].as_array().expect("endpoints").clone();
    assert_eq!(list.len(), 1, "{e}");
    assert_eq!(list[0]["endpoint"], json!(ENGINE_RID));
    list[0].clone()
}

//! The `vhost-device-iommu` daemon as the real-guest tests run it: its binary, started with a
//! time bound in its own process group and killed when the handle drops, and a client for its
//! JSON-lines control socket.

use super::harness::{GuestEnv, RunDir};
use super::scenarios::Front;
use guest_agent::report::Report;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use vhost_device_iommu::viot::PciBdf;

/// The daemon binary: `$VHOST_DEVICE_IOMMU_BIN`, or `vhost-device-iommu` in the `release` or
/// `debug` directory of the target directory this test was built in (`scripts/guest-test`
/// builds it first).
pub fn daemon_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("VHOST_DEVICE_IOMMU_BIN") {
        return PathBuf::from(p);
    }
    // The test runs as <target>/<profile>/deps/<test>-<hash>.
    let exe = std::env::current_exe().expect("current exe");
    let target = exe
        .ancestors()
        .nth(3)
        .expect("test binary inside a target directory")
        .to_path_buf();
    for profile in ["release", "debug"] {
        let p = target.join(profile).join("vhost-device-iommu");
        if p.exists() {
            return p;
        }
    }
    panic!(
        "no vhost-device-iommu binary under {}: build it (cargo build --release -p \
         vhost-device-iommu) or set VHOST_DEVICE_IOMMU_BIN",
        target.display()
    );
}

/// A running daemon.
pub struct Daemon {
    child: Child,
    /// Its control socket.
    pub control: PathBuf,
    log: PathBuf,
}

impl Daemon {
    /// Starts the daemon serving vhost-user on `socket` (a host path), with its control socket
    /// next to it, for endpoints `endpoints` (the daemon's `--endpoints` syntax), bounded by
    /// `timeout`. Waits until both sockets exist.
    pub fn spawn(socket: &Path, endpoints: &str, timeout: Duration, extra: &[&str]) -> Daemon {
        let dir = socket.parent().expect("socket dir");
        let mut args = vec![
            "--socket-path".to_string(),
            socket.display().to_string(),
            "--endpoints".to_string(),
            endpoints.to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        Self::spawn_in(dir, &args, &[socket], timeout)
    }

    /// The daemon with `args` (and its control socket in `dir`), bounded by `timeout`. Waits
    /// until the control socket and every path of `wait_for` exist.
    pub fn spawn_in(dir: &Path, args: &[String], wait_for: &[&Path], timeout: Duration) -> Daemon {
        let control = dir.join("control.sock");
        let log = dir.join("daemon.log");
        let out = std::fs::File::create(&log).expect("daemon log");
        let child = Command::new("timeout")
            .args(["-k", "5", &timeout.as_secs().max(1).to_string()])
            .arg(daemon_bin())
            .arg("--control-socket")
            .arg(&control)
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log fd"))
            .stderr(out)
            .process_group(0)
            .spawn()
            .expect("spawn vhost-device-iommu");
        let mut d = Daemon {
            child,
            control,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !(wait_for.iter().all(|p| p.exists()) && d.control.exists()) {
            if let Ok(Some(s)) = d.child.try_wait() {
                panic!("daemon exited with {s} before listening:\n{}", d.log());
            }
            assert!(
                Instant::now() < deadline,
                "daemon sockets did not appear:\n{}",
                d.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        d
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// One control request; panics if the daemon answers `ok: false`.
    pub fn ctl(&self, req: Value) -> Value {
        let mut s = UnixStream::connect(&self.control).expect("connect control socket");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        writeln!(s, "{req}").expect("send control request");
        let mut line = String::new();
        BufReader::new(&s)
            .read_line(&mut line)
            .expect("read control answer");
        let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
        assert_eq!(v["ok"], json!(true), "control request {req} failed: {v}");
        v
    }

    /// `translate` for `endpoint` at `iova`.
    pub fn translate(&self, endpoint: u16, iova: u64, access: &str) -> Value {
        self.ctl(json!({"cmd": "translate", "endpoint": endpoint, "iova": iova, "access": access}))
    }

    /// `domains`.
    pub fn domains(&self) -> Vec<Value> {
        self.ctl(json!({"cmd": "domains"}))["domains"]
            .as_array()
            .expect("domains array")
            .clone()
    }

    /// The domain `endpoint` is attached to, if any; panics if it is in more than one.
    pub fn domain_of(&self, endpoint: u16) -> Option<Value> {
        let ds: Vec<Value> = self
            .domains()
            .into_iter()
            .filter(|d| {
                d["endpoints"]
                    .as_array()
                    .is_some_and(|e| e.contains(&json!(endpoint)))
            })
            .collect();
        assert!(
            ds.len() <= 1,
            "endpoint {endpoint} in several domains: {ds:?}"
        );
        ds.into_iter().next()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            eprintln!(
                "--- vhost-device-iommu log (last lines)\n{}\n---",
                tail.join("\n")
            );
        }
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", self.child.id())])
                .stderr(Stdio::null())
                .status();
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// Every requester ID of bus 0, as the VIOT table of [`Front::vhost_user`] declares.
pub const ENDPOINTS: &str = "00:00.0-00:1f.7";

/// A daemon for one test: a run directory for its sockets and the VIOT table, the front end
/// that points QEMU at it, and the daemon itself (bounded to 10 minutes).
pub fn start(env: &GuestEnv) -> (RunDir, Front, Daemon) {
    start_with(env, &[])
}

/// [`start`] with extra daemon options.
pub fn start_with(env: &GuestEnv, extra: &[&str]) -> (RunDir, Front, Daemon) {
    let dev = RunDir::new(env);
    let (front, sock) = Front::vhost_user(&dev);
    let d = Daemon::spawn(&sock, ENDPOINTS, Duration::from_secs(600), extra);
    (dev, front, d)
}

/// The requester ID of the `bdf` field of an agent report.
pub fn rid_of(r: &Report) -> u16 {
    r.get("bdf")
        .expect("bdf")
        .parse::<PciBdf>()
        .expect("PCI address")
        .rid()
}

/// Requests of type `ty` (`attach`, `probe`, `map`, ...) the daemon answered with OK.
pub fn ok_count(stats: &Value, ty: &str) -> u64 {
    stats["requests"]["by_type"][ty]["OK"].as_u64().unwrap_or(0)
}

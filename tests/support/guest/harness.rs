//! Host side of the real-guest tests: provisions the guest environment, boots QEMU (inside the
//! trixie root, under TCG) with a time bound, collects the serial console, and parses the
//! agent's `AGENT ...` reports. Every QEMU runs in its own process group under `timeout`, and
//! is killed when its [`Qemu`] handle drops, so no test leaves one behind on any exit.

use guest_agent::report::{Report, parse_line};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A provisioned guest environment.
#[derive(Debug, Clone)]
pub struct GuestEnv {
    /// The cache directory (`target/guest-env` unless `GUEST_ENV_DIR` says otherwise).
    pub dir: PathBuf,
    /// The trixie root that holds QEMU.
    pub root: PathBuf,
    /// The guest kernel (Debian's cloud flavour).
    pub kernel: PathBuf,
    /// The initramfs with busybox, the modules and the agent.
    pub initramfs: PathBuf,
    /// Debian's generic kernel flavour, which has `CONFIG_AMD_IOMMU` (the cloud one does
    /// not), and its initramfs (the same contents, its modules).
    pub generic: (PathBuf, PathBuf),
}

/// Which of the provisioned kernels a guest boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// The cloud flavour: every guest but the AMD-Vi register front's.
    Cloud,
    /// The generic flavour, for `amd_iommu`.
    Generic,
}

impl GuestEnv {
    /// Runs `tests/guest/provision` (idempotent; it serialises concurrent callers with a lock)
    /// and reads the paths it prints.
    pub fn provision() -> GuestEnv {
        let start = Instant::now();
        let out = Command::new(repo().join("tests/guest/provision"))
            .arg("--print-env")
            .stderr(Stdio::inherit())
            .output()
            .expect("run tests/guest/provision");
        assert!(out.status.success(), "provisioning failed: {}", out.status);
        let text = String::from_utf8_lossy(&out.stdout);
        let get = |k: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("{k}=")))
                .map(PathBuf::from)
                .unwrap_or_else(|| panic!("provision printed no {k}: {text}"))
        };
        eprintln!("guest env ready in {:.1} s", start.elapsed().as_secs_f64());
        GuestEnv {
            dir: get("GUEST_ENV_DIR"),
            root: get("GUEST_ROOT"),
            kernel: get("GUEST_KERNEL"),
            initramfs: get("GUEST_INITRAMFS"),
            generic: (get("GUEST_KERNEL_GENERIC"), get("GUEST_INITRAMFS_GENERIC")),
        }
    }
}

static RUN_COUNTER: AtomicU32 = AtomicU32::new(0);

/// A scratch directory inside the root (so QEMU, chrooted, sees it), removed on drop.
#[derive(Debug)]
pub struct RunDir {
    /// Its path on the host.
    pub host: PathBuf,
    /// Its path inside the root.
    pub guest: PathBuf,
}

impl RunDir {
    /// A fresh directory holding links to the (cloud) kernel and its initramfs.
    pub fn new(env: &GuestEnv) -> RunDir {
        RunDir::booting(env, Kernel::Cloud)
    }

    /// A fresh directory holding links to `kernel` and its initramfs.
    pub fn booting(env: &GuestEnv, kernel: Kernel) -> RunDir {
        let name = format!(
            "guest-run-{}-{}",
            std::process::id(),
            RUN_COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let guest = Path::new("/tmp").join(&name);
        let host = env.root.join("tmp").join(&name);
        let _ = std::fs::remove_dir_all(&host);
        std::fs::create_dir_all(&host).expect("create run dir");
        let (vmlinuz, initramfs) = match kernel {
            Kernel::Cloud => (&env.kernel, &env.initramfs),
            Kernel::Generic => (&env.generic.0, &env.generic.1),
        };
        for (src, dst) in [(vmlinuz, "vmlinuz"), (initramfs, "initramfs.gz")] {
            if std::fs::hard_link(src, host.join(dst)).is_err() {
                std::fs::copy(src, host.join(dst)).expect("copy boot file");
            }
        }
        RunDir { host, guest }
    }

    /// Writes a file into the directory; returns its path inside the root.
    pub fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        std::fs::write(self.host.join(name), bytes).expect("write run file");
        self.guest.join(name)
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.host);
    }
}

/// How to boot one guest.
#[derive(Debug, Clone)]
pub struct QemuOpts {
    /// Guest RAM in MiB.
    pub memory_mb: u32,
    /// Extra kernel command-line words.
    pub append: Vec<String>,
    /// The shell script the guest's init runs (passed through fw_cfg); none if empty.
    pub script: String,
    /// Further QEMU arguments (devices, drives, objects, `-acpitable` ...).
    pub args: Vec<String>,
    /// Replaces `-M q35` (e.g. `q35,memory-backend=mem` for vhost-user).
    pub machine: String,
    /// Hard bound on the QEMU process.
    pub timeout: Duration,
    /// `-no-reboot`: a guest reboot ends QEMU. Off for tests that reboot the guest (a device
    /// reset), which then end by powering off.
    pub no_reboot: bool,
}

impl Default for QemuOpts {
    fn default() -> Self {
        QemuOpts {
            memory_mb: 512,
            append: Vec::new(),
            script: String::new(),
            args: Vec::new(),
            machine: "q35".into(),
            timeout: Duration::from_secs(120),
            no_reboot: true,
        }
    }
}

#[derive(Default)]
struct Console {
    lines: Vec<String>,
    closed: bool,
}

/// What a finished guest printed.
#[derive(Debug)]
pub struct Finished {
    /// Every `AGENT` report.
    pub reports: Vec<Report>,
    /// The whole console (QEMU's stderr lines prefixed `QEMU-STDERR: `).
    pub log: String,
}

/// A running QEMU. Dropping it kills the whole process group.
pub struct Qemu {
    child: Child,
    stdin: Option<ChildStdin>,
    console: Arc<(Mutex<Console>, Condvar)>,
    cursor: usize,
    deadline: Instant,
    started: Instant,
    /// The command line, for messages.
    pub cmdline: String,
}

/// The QEMU command line for `opts`, with paths inside the root.
pub fn qemu_args(run: &RunDir, opts: &QemuOpts) -> Vec<String> {
    let mut append = vec![
        "console=ttyS0".to_string(),
        "panic=-1".into(),
        "loglevel=4".into(),
    ];
    append.extend(opts.append.iter().cloned());
    let g = |n: &str| run.guest.join(n).display().to_string();
    let mut a: Vec<String> = [
        "-M",
        &opts.machine,
        "-accel",
        "tcg",
        "-cpu",
        "max",
        "-smp",
        "1",
        "-m",
        &format!("{}M", opts.memory_mb),
        "-display",
        "none",
        "-vga",
        "none",
        "-nic",
        "none",
        "-monitor",
        "none",
        "-serial",
        "stdio",
        "-kernel",
        &g("vmlinuz"),
        "-initrd",
        &g("initramfs.gz"),
        "-append",
        &append.join(" "),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if opts.no_reboot {
        a.push("-no-reboot".into());
    }
    // No script: init runs a shell on the console (with `guest.shell=1`) or powers off.
    if !opts.script.is_empty() {
        a.push("-fw_cfg".into());
        a.push(format!("name=opt/guest/script,file={}", g("script")));
    }
    a.extend(opts.args.iter().cloned());
    a
}

impl Qemu {
    /// Boots a guest.
    pub fn spawn(env: &GuestEnv, run: &RunDir, opts: &QemuOpts) -> Qemu {
        run.write("script", opts.script.as_bytes());
        let args = qemu_args(run, opts);
        let secs = opts.timeout.as_secs().max(1);
        let mut cmd = Command::new("timeout");
        cmd.args(["-k", "5", &secs.to_string()])
            .arg("chroot")
            .arg(&env.root)
            .arg("qemu-system-x86_64")
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let cmdline = format!("qemu-system-x86_64 {}", args.join(" "));
        let mut child = cmd.spawn().expect("spawn qemu");
        let console = Arc::new((Mutex::new(Console::default()), Condvar::new()));
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        for (stream, prefix) in [
            (Box::new(stdout) as Box<dyn std::io::Read + Send>, ""),
            (Box::new(stderr), "QEMU-STDERR: "),
        ] {
            let console = Arc::clone(&console);
            std::thread::spawn(move || {
                let mut r = BufReader::new(stream);
                let mut buf = Vec::new();
                loop {
                    buf.clear();
                    match r.read_until(b'\n', &mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {
                            let line = String::from_utf8_lossy(&buf)
                                .trim_end_matches(['\r', '\n'])
                                .to_string();
                            let (m, cv) = &*console;
                            m.lock().unwrap().lines.push(format!("{prefix}{line}"));
                            cv.notify_all();
                        }
                    }
                }
                if prefix.is_empty() {
                    let (m, cv) = &*console;
                    m.lock().unwrap().closed = true;
                    cv.notify_all();
                }
            });
        }
        Qemu {
            stdin: child.stdin.take(),
            child,
            console,
            cursor: 0,
            deadline: Instant::now() + opts.timeout,
            started: Instant::now(),
            cmdline,
        }
    }

    /// Time since the spawn.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// The console so far.
    pub fn log(&self) -> String {
        self.console.0.lock().unwrap().lines.join("\n")
    }

    /// All reports so far.
    pub fn reports(&self) -> Vec<Report> {
        let c = self.console.0.lock().unwrap();
        c.lines.iter().filter_map(|l| parse_line(l)).collect()
    }

    fn fail(&self, msg: &str) -> ! {
        panic!(
            "{msg}\n--- command\n{}\n--- console\n{}\n---",
            self.cmdline,
            self.log()
        );
    }

    /// Waits for the next report (after the last one this returned) whose event is `event`.
    /// An `error` report from the agent on the way fails the test.
    pub fn next(&mut self, event: &str) -> Report {
        let (m, cv) = &*self.console;
        let mut c = m.lock().unwrap();
        loop {
            while self.cursor < c.lines.len() {
                let line = &c.lines[self.cursor];
                self.cursor += 1;
                if let Some(r) = parse_line(line) {
                    if r.event == event {
                        return r;
                    }
                    if r.event == "error" && event != "error" {
                        drop(c);
                        self.fail(&format!("agent error while waiting for {event}: {r:?}"));
                    }
                }
            }
            let now = Instant::now();
            if c.closed || now >= self.deadline {
                drop(c);
                self.fail(&format!(
                    "no `AGENT {event}` report before the console closed"
                ));
            }
            c = cv.wait_timeout(c, self.deadline - now).unwrap().0;
        }
    }

    /// Sends one line to the guest console.
    pub fn send_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin");
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .expect("write to QEMU stdin");
        stdin.flush().expect("flush QEMU stdin");
    }

    /// Waits for QEMU to exit (the guest powers off at the end of its script).
    pub fn wait_exit(&mut self) -> ExitStatus {
        loop {
            if let Some(s) = self.child.try_wait().expect("wait qemu") {
                // Let the reader threads drain the pipes.
                let (m, cv) = &*self.console;
                let c = m.lock().unwrap();
                let _ = cv.wait_timeout_while(c, Duration::from_secs(2), |c| !c.closed);
                return s;
            }
            if Instant::now() >= self.deadline {
                self.kill();
                self.fail("QEMU did not exit within its time bound");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs the guest to completion and checks that its script finished with status 0 and
    /// that QEMU exited cleanly. Returns every report and the console.
    pub fn finish(mut self) -> Finished {
        let done = self.next("script-done");
        if done.get_u64("rc") != Some(0) {
            self.fail(&format!("guest script failed: {done:?}"));
        }
        let status = self.wait_exit();
        if !status.success() {
            self.fail(&format!("QEMU exited with {status}"));
        }
        eprintln!("guest ran in {:.1} s", self.elapsed().as_secs_f64());
        Finished {
            reports: self.reports(),
            log: self.log(),
        }
    }

    /// Kills the process group (QEMU, chroot and timeout).
    pub fn kill(&mut self) {
        let pgid = self.child.id();
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{pgid}")])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.kill();
        }
    }
}

/// The first report with `event` whose field `key` equals `value`.
pub fn find<'a>(reports: &'a [Report], event: &str, key: &str, value: &str) -> Option<&'a Report> {
    reports
        .iter()
        .find(|r| r.event == event && r.get(key) == Some(value))
}

/// The shell snippet that binds the first device with `id` (VENDOR:DEVICE) to vfio-pci and
/// leaves its address in `$bdf`.
pub fn bind_first(id: &str) -> String {
    format!(
        "bdf=$(guest-agent find {id} | sed -n 's/^AGENT found bdf=\\([^ ]*\\).*/\\1/p' | head -n 1)\n\
         [ -n \"$bdf\" ] || {{ echo 'AGENT error msg=\"no device {id}\"'; exit 1; }}\n\
         guest-agent bind \"$bdf\" || exit 1\n"
    )
}

/// The number in environment variable `name`, or `default` when it is unset or not a number
/// (the benchmarks' knobs: `GUEST_BENCH_ROUNDS`, ...).
pub fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// The median of `v` (the upper one of an even count); `v` must not be empty.
pub fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

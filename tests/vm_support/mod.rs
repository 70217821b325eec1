//! Helpers for `tests/vm_boot.rs` (include with `mod vm_support;`):
//!
//! - required tools checked up front, a missing one failing the test with
//!   the Debian package that brings it ([`require_tools`]);
//! - external commands with a deadline ([`run`], [`run_ok`]);
//! - the VM fixture: `vm-images/build.sh` run once per test process
//!   ([`fixture`]), and manifests over its fragment files ([`manifest`]);
//! - a running `mosaic serve` ([`Server`]), waited for until it prints
//!   `listening on`, stopped with SIGTERM;
//! - a running guest ([`Vm`]): `vm-images/qemu.sh --batch`, its serial
//!   console read line by line, waited on for marker lines with deadlines,
//!   and written to (the guest's `hold` step waits for a line).
#![allow(dead_code)]

use std::ffi::OsStr;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long one guest may take from qemu's start to powering off (TCG; two
/// guests share two cores in one test).
pub const BOOT_DEADLINE: Duration = Duration::from_secs(150);
/// How long a host-side tool may take.
pub const TOOL_DEADLINE: Duration = Duration::from_secs(120);
/// How long the recipe may take (the first run downloads ~70 MB of packages).
pub const BUILD_DEADLINE: Duration = Duration::from_secs(900);

pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

pub fn mosaic_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_mosaic"))
}

// ---------------------------------------------------------------------------
// Tools

/// The tools these tests drive, with the Debian package of each.
pub const TOOLS: &[(&str, &str)] = &[
    ("qemu-system-x86_64", "qemu-system-x86"),
    ("cpio", "cpio"),
    ("dpkg-deb", "dpkg"),
    ("apt-get", "apt"),
    ("apt-cache", "apt"),
    ("debugfs", "e2fsprogs"),
    ("e2fsck", "e2fsprogs"),
    ("nbdcopy", "libnbd-bin"),
    ("qemu-io", "qemu-utils"),
    ("sha256sum", "coreutils"),
];

fn on_path(tool: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).any(|d| {
        let p = d.join(tool);
        fs::metadata(&p)
            .map(|m| {
                m.is_file()
                    && std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o111 != 0
            })
            .unwrap_or(false)
    })
}

/// Fails the test, naming every missing tool and its package.
pub fn require_tools() {
    let missing: Vec<String> = TOOLS
        .iter()
        .filter(|(t, _)| !on_path(t))
        .map(|(t, p)| format!("`{t}` (on Debian: apt-get install {p})"))
        .collect();
    assert!(
        missing.is_empty(),
        "the VM boot tests need tools that are not installed: {}; scripts/test.sh installs them",
        missing.join(", ")
    );
}

pub fn text(o: &Output) -> String {
    format!(
        "--- stdout\n{}\n--- stderr\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Sends `signal` ("TERM", "KILL") to `pid` with kill(1); errors ignored
/// (the process may be gone).
pub fn signal(pid: u32, signal: &str) {
    let _ = Command::new("/usr/bin/kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .output();
}

/// Runs `cmd` to completion with its output captured; kills it and fails
/// the test when it runs past `deadline`.
pub fn run_within(mut cmd: Command, deadline: Duration) -> Output {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let shown = format!("{cmd:?}");
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("could not run {shown}: {e}"));
    let pid = child.id();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if let Err(RecvTimeoutError::Timeout) = done_rx.recv_timeout(deadline) {
            signal(pid, "KILL");
            true
        } else {
            false
        }
    });
    let out = child.wait_with_output().expect("wait for a child process");
    let _ = done_tx.send(());
    let timed_out = watchdog.join().unwrap();
    assert!(
        !timed_out,
        "{shown} did not finish within {deadline:?} (killed):\n{}",
        text(&out)
    );
    out
}

pub fn run<I, S>(prog: impl AsRef<OsStr>, args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut c = Command::new(prog);
    c.args(args).env("LC_ALL", "C");
    run_within(c, TOOL_DEADLINE)
}

/// Like [`run`], but it must exit 0.
#[track_caller]
pub fn run_ok<I, S>(prog: impl AsRef<OsStr>, args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let prog = prog.as_ref().to_owned();
    let args: Vec<_> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
    let o = run(&prog, &args);
    assert!(
        o.status.success(),
        "{prog:?} {args:?} failed ({}):\n{}",
        o.status,
        text(&o)
    );
    o
}

/// `mosaic ARGS`, must exit 0.
#[track_caller]
pub fn mosaic_ok<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    run_ok(mosaic_bin(), args)
}

// ---------------------------------------------------------------------------
// The fixture: vm-images/build.sh, once per process

pub struct Fixture {
    /// build.sh's output: vmlinuz, initrd.img, trees/, *.frag, lab.key.pub.
    pub out: PathBuf,
}

impl Fixture {
    pub fn fragment(&self, name: &str) -> PathBuf {
        self.out.join(format!("{name}.frag"))
    }
    pub fn fragments(&self) -> Vec<PathBuf> {
        FRAGMENTS.iter().map(|n| self.fragment(n)).collect()
    }
    pub fn trust(&self) -> PathBuf {
        self.out.join("lab.key.pub")
    }
    /// The app fragment's payload (`mosaic fragment cat`), which the guest
    /// reads and checks at every boot.
    pub fn payload(&self) -> Vec<u8> {
        mosaic_ok([
            "fragment".as_ref(),
            "cat".as_ref(),
            self.fragment("app").as_os_str(),
            "/usr/share/mosaic-app/payload.txt".as_ref(),
        ])
        .stdout
    }
}

/// The fragments the recipe builds, in manifest order.
pub const FRAGMENTS: &[&str] = &["base", "modules", "app"];

static FIXTURE: OnceLock<Fixture> = OnceLock::new();

/// Runs `vm-images/build.sh` into `$CARGO_TARGET_TMPDIR/vm-boot` (once): the
/// kernel and busybox packages are cached in `vm-images/.cache` (or
/// `$MOSAIC_VM_CACHE`) and downloaded with apt-get when missing.
pub fn fixture() -> &'static Fixture {
    FIXTURE.get_or_init(|| {
        require_tools();
        let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("vm-boot");
        fs::create_dir_all(&out).unwrap();
        let mut c = Command::new(repo().join("vm-images/build.sh"));
        c.arg(&out).env("MOSAIC", mosaic_bin());
        let started = Instant::now();
        let o = run_within(c, BUILD_DEADLINE);
        assert!(
            o.status.success(),
            "vm-images/build.sh {} failed ({}):\n{}",
            out.display(),
            o.status,
            text(&o)
        );
        eprintln!(
            "vm-images/build.sh: {:.1} s\n{}",
            started.elapsed().as_secs_f64(),
            String::from_utf8_lossy(&o.stderr)
        );
        Fixture { out }
    })
}

/// Writes `DIR/NAME.toml`: export `name` over `fragments`, trusting the
/// fixture's key, with the overlay `DIR/NAME.overlay` when `overlay`.
pub fn manifest(
    dir: &Path,
    name: &str,
    fragments: &[PathBuf],
    trust: &Path,
    overlay: bool,
) -> PathBuf {
    let list: Vec<String> = fragments
        .iter()
        .map(|f| format!("{:?}", f.display().to_string()))
        .collect();
    let mut s = format!(
        "name = {name:?}\nfragments = [{}]\ntrust = [{:?}]\n[filesystem]\nlabel = \"mosaic-vm\"\nfree = \"256MiB\"\n",
        list.join(", "),
        trust.display().to_string()
    );
    if overlay {
        s.push_str(&format!("[overlay]\npath = \"{name}.overlay\"\n"));
    }
    let path = dir.join(format!("{name}.toml"));
    fs::write(&path, s).unwrap();
    path
}

// ---------------------------------------------------------------------------
// Line readers

/// Reads `r` line by line (lossy UTF-8, `\r` dropped) into a channel; the
/// channel closes at end of file.
fn line_reader(r: impl Read + Send + 'static) -> (Receiver<String>, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel();
    let h = std::thread::spawn(move || {
        let mut r = BufReader::new(r);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match r.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buf)
                        .trim_end_matches(['\n', '\r'])
                        .replace('\r', "");
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            }
        }
    });
    (rx, h)
}

/// Lines received so far from a [`line_reader`], and whether it closed.
struct Lines {
    rx: Receiver<String>,
    log: Vec<String>,
    closed: bool,
}

impl Lines {
    fn new(rx: Receiver<String>) -> Self {
        Lines {
            rx,
            log: Vec::new(),
            closed: false,
        }
    }

    fn drain(&mut self) {
        while let Ok(l) = self.rx.try_recv() {
            self.log.push(l);
        }
    }

    /// The first line (from the start) containing `marker`, waiting for it
    /// until `deadline`. Err(reason) when the stream ends or time is up.
    fn wait_for(&mut self, marker: &str, deadline: Instant) -> Result<String, &'static str> {
        let mut searched = 0;
        loop {
            if let Some(l) = self.log[searched..].iter().find(|l| l.contains(marker)) {
                return Ok(l.clone());
            }
            searched = self.log.len();
            if self.closed {
                return Err("the stream ended");
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(l) => self.log.push(l),
                Err(RecvTimeoutError::Timeout) => return Err("deadline passed"),
                Err(RecvTimeoutError::Disconnected) => self.closed = true,
            }
        }
    }

    /// Reads to the end of the stream (until `deadline`); false on timeout.
    fn wait_closed(&mut self, deadline: Instant) -> bool {
        while !self.closed {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(l) => self.log.push(l),
                Err(RecvTimeoutError::Timeout) => return false,
                Err(RecvTimeoutError::Disconnected) => self.closed = true,
            }
        }
        true
    }

    fn text(&mut self) -> String {
        self.drain();
        self.log.join("\n")
    }
}

// ---------------------------------------------------------------------------
// mosaic serve

pub struct Server {
    child: Option<Child>,
    pub socket: PathBuf,
    stderr: Arc<Mutex<Lines>>,
}

impl Server {
    /// `mosaic serve MANIFESTS --socket SOCKET`, returned once it printed
    /// `listening on`.
    #[track_caller]
    pub fn start(manifests: &[&Path], socket: &Path) -> Server {
        let _ = fs::remove_file(socket);
        let mut c = Command::new(mosaic_bin());
        c.arg("serve")
            .args(manifests)
            .arg("--socket")
            .arg(socket)
            .env_remove("RUST_LOG")
            .env_remove("LISTEN_PID")
            .env_remove("LISTEN_FDS")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = c
            .spawn()
            .unwrap_or_else(|e| panic!("could not run {c:?}: {e}"));
        let (rx, _) = line_reader(child.stderr.take().unwrap());
        let server = Server {
            child: Some(child),
            socket: socket.to_owned(),
            stderr: Arc::new(Mutex::new(Lines::new(rx))),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        let r = server
            .stderr
            .lock()
            .unwrap()
            .wait_for("listening on", deadline);
        if let Err(why) = r {
            let log = server.log();
            panic!("mosaic serve {manifests:?} did not start ({why}):\n{log}");
        }
        server
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Everything the server printed so far.
    pub fn log(&self) -> String {
        self.stderr.lock().unwrap().text()
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.as_mut().unwrap().try_wait(), Ok(None))
    }

    /// The `nbd+unix://` URI of `export` on this server.
    pub fn uri(&self, export: &str) -> String {
        format!("nbd+unix:///{export}?socket={}", self.socket.display())
    }

    /// SIGTERM; the server must exit 0 within 30 s.
    #[track_caller]
    pub fn stop(mut self) {
        let mut child = self.child.take().unwrap();
        let pid = child.id();
        signal(pid, "TERM");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait());
        });
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(Ok(status)) => assert!(
                status.success(),
                "mosaic serve exited with {status} after SIGTERM:\n{}",
                self.log()
            ),
            Ok(Err(e)) => panic!("waiting for mosaic serve: {e}"),
            Err(_) => {
                signal(pid, "KILL");
                panic!(
                    "mosaic serve did not stop within 30 s of SIGTERM (killed):\n{}",
                    self.log()
                );
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            signal(c.id(), "KILL");
            let _ = c.wait();
        }
    }
}

/// The fragment files (`*.frag`) process `pid` has open, as (path, count).
pub fn open_fragments(pid: u32) -> Vec<(PathBuf, usize)> {
    let mut counts: std::collections::BTreeMap<PathBuf, usize> = Default::default();
    for e in fs::read_dir(format!("/proc/{pid}/fd")).unwrap() {
        let Ok(target) = fs::read_link(e.unwrap().path()) else {
            continue;
        };
        if target.extension() == Some(OsStr::new("frag")) {
            *counts.entry(target).or_default() += 1;
        }
    }
    counts.into_iter().collect()
}

// ---------------------------------------------------------------------------
// Guests

pub struct Vm {
    pub name: String,
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    console: Lines,
    stderr: Arc<Mutex<String>>,
    started: Instant,
    deadline: Instant,
}

impl Vm {
    /// Boots the fixture's kernel and initramfs from `export` on `server`
    /// (`vm-images/qemu.sh --batch`), running `steps` after boot.
    pub fn boot(name: &str, fx: &Fixture, server: &Server, export: &str, steps: &str) -> Vm {
        let mut c = Command::new(repo().join("vm-images/qemu.sh"));
        c.arg("--out")
            .arg(&fx.out)
            .arg("--nbd")
            .arg(&server.socket)
            .arg("--export")
            .arg(export)
            .arg("--steps")
            .arg(steps)
            .arg("--batch")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let started = Instant::now();
        let mut child = c
            .spawn()
            .unwrap_or_else(|e| panic!("could not run {c:?}: {e}"));
        let stdin = child.stdin.take();
        let (rx, _) = line_reader(child.stdout.take().unwrap());
        let stderr = Arc::new(Mutex::new(String::new()));
        {
            let stderr = stderr.clone();
            let mut err = child.stderr.take().unwrap();
            std::thread::spawn(move || {
                let mut s = String::new();
                let _ = err.read_to_string(&mut s);
                stderr.lock().unwrap().push_str(&s);
            });
        }
        Vm {
            name: name.to_owned(),
            child: Some(child),
            stdin,
            console: Lines::new(rx),
            stderr,
            started,
            deadline: started + BOOT_DEADLINE,
        }
    }

    /// The console so far and qemu's stderr, for failure messages.
    pub fn transcript(&mut self) -> String {
        format!(
            "--- {} console\n{}\n--- qemu stderr\n{}",
            self.name,
            self.console.text(),
            self.stderr.lock().unwrap()
        )
    }

    /// The first console line containing `marker` (waits until the boot
    /// deadline).
    #[track_caller]
    pub fn wait_for(&mut self, marker: &str) -> String {
        match self.console.wait_for(marker, self.deadline) {
            Ok(l) => l,
            Err(why) => {
                let t = self.transcript();
                panic!(
                    "guest {}: no console line with {marker:?} ({why}, {:.1} s after start):\n{t}",
                    self.name,
                    self.started.elapsed().as_secs_f64()
                )
            }
        }
    }

    /// The first console line containing `marker`, if any yet (no waiting).
    pub fn seen(&mut self, marker: &str) -> Option<String> {
        self.console.drain();
        self.console
            .log
            .iter()
            .find(|l| l.contains(marker))
            .cloned()
    }

    /// Every console line so far.
    pub fn console(&mut self) -> Vec<String> {
        self.console.drain();
        self.console.log.clone()
    }

    /// Time since qemu was started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Writes a line to the guest's console (releases a `hold` step).
    pub fn send_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("the console input is open");
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
    }

    /// Waits for qemu to exit (the guest powered off) before the deadline;
    /// it must exit 0. Returns the whole console.
    #[track_caller]
    pub fn wait_exit(&mut self) -> Vec<String> {
        if !self.console.wait_closed(self.deadline) {
            let t = self.transcript();
            panic!("guest {}: did not power off in time:\n{t}", self.name);
        }
        let status: ExitStatus = self.child.take().unwrap().wait().unwrap();
        if !status.success() {
            let t = self.transcript();
            panic!("guest {}: qemu exited with {status}:\n{t}", self.name);
        }
        self.console()
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            signal(c.id(), "KILL");
            let _ = c.wait();
        }
    }
}

/// The bytes `write:TAG` puts in /var/lib/guest/TAG.dir/data.bin (see
/// vm-images/rootfs/base/sbin/init).
pub fn guest_data(tag: &str) -> Vec<u8> {
    let mut v = Vec::new();
    for i in 1..=12000 {
        v.extend_from_slice(format!("guest {tag} data line {i:06}\n").as_bytes());
    }
    v.truncate(262144);
    v
}

/// `debugfs -R CMD IMAGE`: its stdout (bytes); it must exit 0.
#[track_caller]
pub fn debugfs(image: &Path, cmd: &str) -> Vec<u8> {
    let o = run_ok("debugfs", ["-R".as_ref(), cmd.as_ref(), image.as_os_str()]);
    o.stdout
}

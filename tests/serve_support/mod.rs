//! Helpers for `tests/serve.rs` (include with `mod serve_support;`):
//!
//! - external tools run with a deadline, a missing tool failing the test
//!   with the Debian package that brings it ([`tool`], [`tool_ok`],
//!   [`python_nbd`]);
//! - the `mosaic` binary ([`mosaic`], [`mosaic_ok`]);
//! - a fixture volume built through the CLI: two fragments (one raw, one
//!   zstd) from generated trees, a key, `volume.toml` with an overlay, and
//!   the base image `mosaic volume export` writes ([`Fixture`]);
//! - a running `mosaic serve` ([`Server`]): started, waited for until it
//!   prints `listening on`, stopped with SIGTERM (or SIGKILL) on request
//!   or when dropped;
//! - an NBD client from the `nbd` crate ([`NbdConn`]).
#![allow(dead_code)]

use serde_json::Value;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long any external command may take before the test gives up.
pub const TOOL_DEADLINE: Duration = Duration::from_secs(60);
/// How long a server may take to print `listening on`.
pub const START_DEADLINE: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------
// External tools

/// The Debian package that brings a tool, for the "not installed" message.
pub fn package_of(tool: &str) -> &'static str {
    match tool {
        "qemu-img" | "qemu-io" | "qemu-nbd" => "qemu-utils",
        "nbdinfo" | "nbdcopy" | "nbdsh" => "libnbd-bin",
        "/usr/bin/python3" => "python3 python3-libnbd",
        "nbdkit" => "nbdkit",
        "fio" => "fio",
        "cmp" => "diffutils",
        "/usr/bin/kill" | "kill" => "procps",
        _ => "coreutils",
    }
}

/// Everything a process printed, for failure messages.
pub fn text(o: &Output) -> String {
    format!(
        "--- stdout\n{}\n--- stderr\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Sends `signal` (e.g. "TERM", "INT", "KILL") to `pid` with `kill(1)`.
pub fn signal(pid: u32, signal: &str) {
    let o = Command::new("/usr/bin/kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "could not run /usr/bin/kill (on Debian: apt-get install {}): {e}",
                package_of("kill")
            )
        });
    assert!(
        o.status.success(),
        "kill -{signal} {pid} failed:\n{}",
        text(&o)
    );
}

/// Spawns `cmd`, panicking with the Debian package when the program is
/// missing.
pub fn spawn(cmd: &mut Command) -> Child {
    match cmd.spawn() {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let prog = cmd.get_program().to_string_lossy().into_owned();
            panic!(
                "required tool `{prog}` is not installed (on Debian: apt-get install {}); \
                 this test cannot run without it",
                package_of(&prog)
            )
        }
        Err(e) => panic!("could not run {cmd:?}: {e}"),
    }
}

/// Runs `cmd` to completion with stdout and stderr captured; kills it and
/// fails the test if it runs longer than `deadline`.
pub fn output_within(mut cmd: Command, deadline: Duration) -> Output {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let shown = format!("{cmd:?}");
    let child = spawn(&mut cmd);
    let pid = child.id();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if let Err(mpsc::RecvTimeoutError::Timeout) = done_rx.recv_timeout(deadline) {
            let _ = Command::new("/usr/bin/kill")
                .args(["-KILL", &pid.to_string()])
                .output();
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

/// Runs an external tool (with [`TOOL_DEADLINE`]).
pub fn tool<I, S>(name: &str, args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut c = Command::new(name);
    c.args(args).env("LC_ALL", "C");
    output_within(c, TOOL_DEADLINE)
}

/// Like [`tool`], but it must exit 0; returns its stdout as text.
#[track_caller]
pub fn tool_ok<I, S>(name: &str, args: I) -> String
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<OsString> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
    let o = tool(name, &args);
    assert!(
        o.status.success(),
        "`{name} {args:?}` failed ({}):\n{}",
        o.status,
        text(&o)
    );
    stdout(&o)
}

/// Fails the test unless Debian's python can import libnbd's module.
pub fn require_python_nbd() {
    let o = tool("/usr/bin/python3", ["-c", "import nbd"]);
    assert!(
        o.status.success(),
        "/usr/bin/python3 cannot import libnbd's `nbd` module (on Debian: apt-get install \
         python3-libnbd):\n{}",
        text(&o)
    );
}

/// Runs a Python script with Debian's python (which has libnbd's module).
pub fn python<I, S>(script: &str, args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    require_python_nbd();
    let mut c = Command::new("/usr/bin/python3");
    c.arg("-c").arg(script).arg("--").args(args);
    output_within(c, TOOL_DEADLINE)
}

// ---------------------------------------------------------------------------
// The mosaic binary

pub fn mosaic_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_mosaic"))
}

/// `mosaic ARGS...` with no RUST_LOG and no SOURCE_DATE_EPOCH.
pub fn mosaic_cmd<I, S>(args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut c = Command::new(mosaic_bin());
    c.args(args)
        .env_remove("RUST_LOG")
        .env_remove("SOURCE_DATE_EPOCH")
        .env_remove("LISTEN_PID")
        .env_remove("LISTEN_FDS");
    c
}

pub fn mosaic<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    output_within(mosaic_cmd(args), TOOL_DEADLINE)
}

#[track_caller]
pub fn mosaic_ok<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<OsString> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
    let o = mosaic(&args);
    assert!(
        o.status.success(),
        "mosaic {args:?} failed ({}):\n{}",
        o.status,
        text(&o)
    );
    o
}

// ---------------------------------------------------------------------------
// Content

/// Deterministic bytes with no zero byte (xorshift).
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 24) as u8 | 1
        })
        .collect()
}

/// Compressible text of exactly `len` bytes.
pub fn text_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 64);
    let mut i = 0u64;
    while out.len() < len {
        out.extend_from_slice(
            format!("line {i:06} of file {seed}: the quick brown fox jumps\n").as_bytes(),
        );
        i += 1;
    }
    out.truncate(len);
    out
}

fn write_file(path: &Path, bytes: &[u8], mode: u32) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, bytes).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// First position of `needle` in `hay`.
pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    let first = needle[0];
    let mut at = 0;
    while let Some(p) = hay[at..].iter().position(|&b| b == first) {
        let i = at + p;
        if i + needle.len() > hay.len() {
            return None;
        }
        if &hay[i..i + needle.len()] == needle {
            return Some(i);
        }
        at = i + 1;
    }
    None
}

/// Block-aligned position of `needle` (whose length is a multiple of 4096)
/// in an image.
pub fn find_block(image: &[u8], needle: &[u8]) -> Option<u64> {
    image
        .chunks(4096)
        .enumerate()
        .position(|(i, _)| image[i * 4096..].starts_with(needle))
        .map(|i| i as u64 * 4096)
}

// ---------------------------------------------------------------------------
// The fixture volume

/// Files of the base tree whose content the tests look for in images.
pub const MARKER: &str = "usr/share/marker.bin";
pub const LIBFOO: &str = "usr/lib/libfoo.so";
pub const LIBBAR: &str = "usr/lib/libbar.so";

pub fn marker_bytes() -> Vec<u8> {
    noise(99, 256 * 1024 + 17)
}
pub fn libfoo_bytes() -> Vec<u8> {
    noise(11, 1_234_567)
}
pub fn libbar_bytes() -> Vec<u8> {
    noise(12, 345_679)
}

/// A directory with `lab.key(.pub)`, `base.frag` (raw), `app.frag` (zstd),
/// `volume.toml` (export "root", overlay `v.overlay`, 32 MiB free) and
/// `image.raw` (its base image).
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub manifest: PathBuf,
    pub image: PathBuf,
    pub base_frag: PathBuf,
    pub app_frag: PathBuf,
}

/// Writes a manifest over `base.frag` and `app.frag` in `dir`.
pub fn write_manifest(path: &Path, name: &str, free: &str, overlay: Option<&str>) {
    let mut s = format!(
        "name = \"{name}\"\nfragments = [\"base.frag\", \"app.frag\"]\ntrust = [\"lab.key.pub\"]\n\n\
         [filesystem]\nlabel = \"serve-test\"\nfree = \"{free}\"\n"
    );
    if let Some(o) = overlay {
        s.push_str(&format!("\n[overlay]\npath = \"{o}\"\n"));
    }
    fs::write(path, s).unwrap();
}

fn make_base_tree(root: &Path) {
    write_file(
        &root.join("etc/motd"),
        b"Served by mosaic, verified block by block.\n",
        0o644,
    );
    write_file(&root.join("etc/hostname"), b"fixture\n", 0o644);
    write_file(&root.join(LIBFOO), &libfoo_bytes(), 0o755);
    write_file(&root.join(LIBBAR), &libbar_bytes(), 0o755);
    write_file(&root.join("usr/bin/tool"), &noise(13, 77_777), 0o755);
    write_file(&root.join(MARKER), &marker_bytes(), 0o644);
    for i in 0..40u64 {
        let len = (1 + i * 97 + i * i * 3) as usize;
        write_file(
            &root.join(format!("usr/share/data/{i:02}.dat")),
            &noise(100 + i, len),
            0o644,
        );
    }
}

fn make_app_tree(root: &Path) {
    write_file(&root.join("opt/app/bin/app"), &noise(21, 999_999), 0o755);
    write_file(
        &root.join("opt/app/share/text.txt"),
        &text_bytes(22, 1_500_001),
        0o644,
    );
    write_file(
        &root.join("opt/app/share/mixed.bin"),
        &[noise(23, 300_003), text_bytes(24, 200_001)].concat(),
        0o644,
    );
    for i in 0..25u64 {
        write_file(
            &root.join(format!("opt/app/conf/{i:02}.conf")),
            &text_bytes(200 + i, 13 + i as usize * 211),
            0o640,
        );
    }
}

impl Fixture {
    pub fn new() -> Fixture {
        let dir = tempfile::Builder::new()
            .prefix("mosaic-serve-")
            .tempdir()
            .expect("create a temporary directory");
        let d = dir.path();
        make_base_tree(&d.join("src/base"));
        make_app_tree(&d.join("src/app"));
        let key = d.join("lab.key");
        mosaic_ok(["keygen".as_ref(), "-o".as_ref(), key.as_os_str()]);
        let base_frag = d.join("base.frag");
        let app_frag = d.join("app.frag");
        let build = |src: &str, out: &Path, extra: &[&str]| {
            let mut a: Vec<OsString> = vec![
                "fragment".into(),
                "build".into(),
                d.join(src).into(),
                "-o".into(),
                out.into(),
                "--key".into(),
                key.clone().into(),
            ];
            a.extend(extra.iter().map(OsString::from));
            mosaic_ok(&a);
        };
        build(
            "src/base",
            &base_frag,
            &["--name", "base", "--owns", "/etc", "--owns", "/usr"],
        );
        build(
            "src/app",
            &app_frag,
            &["--name", "app", "--owns", "/opt", "--compress", "zstd"],
        );
        let manifest = d.join("volume.toml");
        write_manifest(&manifest, "root", "32MiB", Some("v.overlay"));
        let image = d.join("image.raw");
        export(&manifest, &image, false);
        Fixture {
            dir,
            manifest,
            image,
            base_frag,
            app_frag,
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A socket path in the fixture's directory.
    pub fn socket(&self, name: &str) -> PathBuf {
        self.path(name)
    }

    pub fn image_bytes(&self) -> Vec<u8> {
        fs::read(&self.image).unwrap()
    }

    /// A read-only manifest `NAME.toml` over the same fragments.
    pub fn read_only_manifest(&self, name: &str) -> PathBuf {
        let p = self.path(&format!("{name}.toml"));
        write_manifest(&p, name, "32MiB", None);
        p
    }
}

impl Default for Fixture {
    fn default() -> Self {
        Fixture::new()
    }
}

/// `mosaic volume export MANIFEST -o OUT [--with-overlay]`, which must
/// succeed.
#[track_caller]
pub fn export(manifest: &Path, out: &Path, with_overlay: bool) {
    let mut a: Vec<OsString> = vec![
        "volume".into(),
        "export".into(),
        manifest.into(),
        "-o".into(),
        out.into(),
    ];
    if with_overlay {
        a.push("--with-overlay".into());
    }
    mosaic_ok(&a);
}

/// A TCP port that was free a moment ago.
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// `nbd+unix:///EXPORT?socket=PATH`.
pub fn uri(sock: &Path, export: &str) -> String {
    format!("nbd+unix:///{export}?socket={}", sock.display())
}

// ---------------------------------------------------------------------------
// A running server

/// A `mosaic serve` (or `mosaic demo`) process that has printed its
/// `listening on` lines. Dropping it sends SIGTERM and waits (SIGKILL after
/// a deadline).
pub struct Server {
    child: Option<Child>,
    log: Arc<Mutex<String>>,
    reader: Option<JoinHandle<()>>,
    /// Where it listens, as printed (`unix:/path`, `tcp:127.0.0.1:N`).
    pub addresses: Vec<String>,
}

/// A server that did not come up: its exit status and stderr.
#[derive(Debug)]
pub struct StartFailure {
    pub status: ExitStatus,
    pub stderr: String,
}

impl Server {
    /// `mosaic serve MANIFESTS... --socket SOCK EXTRA...`; panics unless
    /// it comes up.
    #[track_caller]
    pub fn start(manifests: &[&Path], sock: &Path, extra: &[&str]) -> Server {
        match Server::try_start(manifests, sock, extra) {
            Ok(s) => s,
            Err(f) => panic!(
                "mosaic serve {manifests:?} --socket {} {extra:?} did not start ({}):\n{}",
                sock.display(),
                f.status,
                f.stderr
            ),
        }
    }

    pub fn try_start(
        manifests: &[&Path],
        sock: &Path,
        extra: &[&str],
    ) -> Result<Server, StartFailure> {
        let mut a: Vec<OsString> = vec!["serve".into()];
        a.extend(manifests.iter().map(|m| m.as_os_str().to_owned()));
        a.push("--socket".into());
        a.push(sock.into());
        a.extend(extra.iter().map(OsString::from));
        let listeners = 1 + extra.iter().filter(|x| **x == "--listen").count();
        Server::spawn(mosaic_cmd(&a), listeners)
    }

    /// Spawns `cmd` (stdout discarded) and waits until its stderr has shown
    /// `listeners` lines starting with `listening on`.
    pub fn spawn(mut cmd: Command, listeners: usize) -> Result<Server, StartFailure> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = spawn(&mut cmd);
        let err = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel::<String>();
        let log2 = log.clone();
        let reader = std::thread::spawn(move || {
            let mut r = BufReader::new(err);
            let mut line = String::new();
            loop {
                line.clear();
                match r.read_line(&mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        log2.lock().unwrap().push_str(&line);
                        let _ = tx.send(line.trim_end().to_owned());
                    }
                }
            }
        });
        let mut server = Server {
            child: Some(child),
            log,
            reader: Some(reader),
            addresses: Vec::new(),
        };
        let deadline = Instant::now() + START_DEADLINE;
        while server.addresses.len() < listeners {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(a) = line.strip_prefix("listening on ") {
                        server.addresses.push(a.to_owned());
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    // stderr closed: the process is ending.
                    let status = server.wait_exit();
                    return Err(StartFailure {
                        status,
                        stderr: server.log(),
                    });
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let log = server.log();
                    server.kill9();
                    panic!("the server did not print `listening on` within {START_DEADLINE:?}; stderr:\n{log}");
                }
            }
        }
        Ok(server)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("server still running").id()
    }

    /// stderr so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Polls (there is no event for "a line was logged") until stderr
    /// contains `needle`, or 10 s have passed; returns whether it did.
    pub fn wait_log(&self, needle: &str) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if self.log().contains(needle) {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the process (SIGKILL after 30 s) and the stderr reader.
    fn wait_exit(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("server still running");
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let s = child.wait().unwrap();
                if let Some(r) = self.reader.take() {
                    let _ = r.join();
                }
                panic!(
                    "the server did not exit within 30 s (killed, {s}); stderr:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        status
    }

    /// Sends `sig` (TERM or INT) and waits; returns the exit status and
    /// the whole stderr.
    pub fn stop_with(mut self, sig: &str) -> (ExitStatus, String) {
        signal(self.pid(), sig);
        let status = self.wait_exit();
        (status, self.log())
    }

    /// SIGTERM, wait; asserts exit code 0 and returns stderr.
    #[track_caller]
    pub fn stop(self) -> String {
        let (status, log) = self.stop_with("TERM");
        assert_eq!(
            status.code(),
            Some(0),
            "the server did not stop cleanly on SIGTERM ({status}); stderr:\n{log}"
        );
        log
    }

    /// SIGKILL, wait; returns stderr.
    pub fn kill9(mut self) -> String {
        let mut child = self.child.take().expect("server still running");
        let _ = child.kill();
        let _ = child.wait();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        self.log()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(child) = &self.child {
            let _ = Command::new("/usr/bin/kill")
                .args(["-TERM", &child.id().to_string()])
                .output();
            let deadline = Instant::now() + Duration::from_secs(20);
            let mut child = self.child.take().unwrap();
            loop {
                match child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() > deadline => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
            if let Some(r) = self.reader.take() {
                let _ = r.join();
            }
        }
    }
}

// ---------------------------------------------------------------------------
// The `nbd` crate as an independent client

/// One connection made with the `nbd` crate (oldstyle EXPORT_NAME
/// handshake, simple replies).
pub struct NbdConn {
    pub export: nbd::Export,
    client: nbd::client::NbdClient<UnixStream>,
}

impl NbdConn {
    pub fn connect(sock: &Path, name: &str) -> std::io::Result<NbdConn> {
        let mut s = UnixStream::connect(sock)?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        let export = nbd::client::handshake(&mut s, name.as_bytes())?;
        let client = nbd::client::NbdClient::new(s, &export);
        Ok(NbdConn { export, client })
    }

    /// Reads `len` bytes at `offset` (one request per MiB).
    pub fn read(&mut self, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
        let mut out = vec![0u8; len];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(1 << 20);
            self.client.seek(SeekFrom::Start(offset + done as u64))?;
            self.client.read_exact(&mut out[done..done + n])?;
            done += n;
        }
        Ok(out)
    }

    pub fn write(&mut self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        self.client.seek(SeekFrom::Start(offset))?;
        self.client.write_all(data)
    }

    pub fn flush(&mut self) -> std::io::Result<()> {
        self.client.flush()
    }
}

/// A connection speaking raw transmission-phase NBD after the `nbd`
/// crate's handshake (simple replies): for malformed or unusual requests.
pub struct RawConn {
    pub export: nbd::Export,
    pub s: UnixStream,
}

impl RawConn {
    pub fn connect(sock: &Path, name: &str) -> std::io::Result<RawConn> {
        let mut s = UnixStream::connect(sock)?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        let export = nbd::client::handshake(&mut s, name.as_bytes())?;
        Ok(RawConn { export, s })
    }

    /// Sends one request header (and `payload`, which may be shorter than
    /// `len` on purpose).
    pub fn request(
        &mut self,
        flags: u16,
        cmd: u16,
        handle: u64,
        offset: u64,
        len: u32,
        payload: &[u8],
    ) -> std::io::Result<()> {
        let mut h = Vec::with_capacity(28 + payload.len());
        h.extend_from_slice(&0x2560_9513u32.to_be_bytes());
        h.extend_from_slice(&flags.to_be_bytes());
        h.extend_from_slice(&cmd.to_be_bytes());
        h.extend_from_slice(&handle.to_be_bytes());
        h.extend_from_slice(&offset.to_be_bytes());
        h.extend_from_slice(&len.to_be_bytes());
        h.extend_from_slice(payload);
        self.s.write_all(&h)
    }

    /// Reads one simple reply header: (error, handle).
    pub fn reply(&mut self) -> std::io::Result<(u32, u64)> {
        let mut b = [0u8; 16];
        self.s.read_exact(&mut b)?;
        let magic = u32::from_be_bytes(b[0..4].try_into().unwrap());
        if magic != 0x6744_6698 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("reply magic {magic:#x}"),
            ));
        }
        Ok((
            u32::from_be_bytes(b[4..8].try_into().unwrap()),
            u64::from_be_bytes(b[8..16].try_into().unwrap()),
        ))
    }

    /// A read request answered without error: its bytes.
    pub fn read(&mut self, handle: u64, offset: u64, len: u32) -> std::io::Result<Vec<u8>> {
        self.request(0, 0, handle, offset, len, &[])?;
        let (err, h) = self.reply()?;
        if err != 0 || h != handle {
            return Err(std::io::Error::other(format!(
                "read {offset}+{len}: error {err}, handle {h} (sent {handle})"
            )));
        }
        let mut out = vec![0u8; len as usize];
        self.s.read_exact(&mut out)?;
        Ok(out)
    }
}

// ---- checks shared by tests/serve.rs and tests/serve_faults.rs ----

pub const MIB: u64 = 1 << 20;

/// `qemu-io -f raw -c CMD... URI`: must exit 0 with no failure in its text.
#[track_caller]
pub fn qemu_io_ok(uri: &str, cmds: &[String]) -> String {
    let mut a: Vec<OsString> = vec!["-f".into(), "raw".into()];
    for c in cmds {
        a.push("-c".into());
        a.push(c.into());
    }
    a.push(uri.into());
    let o = tool("qemu-io", &a);
    let all = text(&o);
    assert!(
        o.status.success() && !all.contains("failed") && !all.contains("error"),
        "qemu-io {cmds:?} {uri} ({}):\n{all}",
        o.status
    );
    all
}

/// `qemu-img compare -f raw -F raw IMAGE URI`: identical.
#[track_caller]
pub fn assert_same_image(image: &Path, uri: &str) {
    let o = tool(
        "qemu-img",
        [
            "compare".as_ref(),
            "-f".as_ref(),
            "raw".as_ref(),
            "-F".as_ref(),
            "raw".as_ref(),
            image.as_os_str(),
            uri.as_ref(),
        ],
    );
    assert!(
        o.status.code() == Some(0) && stdout(&o).contains("Images are identical"),
        "qemu-img compare {} {uri}: not identical ({}):\n{}",
        image.display(),
        o.status,
        text(&o)
    );
}

pub fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}):\n{s}"))
}

pub fn overlay_info(manifest: &Path) -> Value {
    let o = mosaic_ok([
        "overlay".as_ref(),
        "info".as_ref(),
        manifest.as_os_str(),
        "--json".as_ref(),
    ]);
    json(&stdout(&o))
}

/// `nbdinfo --map --json URI`: the extents cover the volume, contiguous,
/// and every one the map says reads as zeros is zeros in `want`. Returns
/// (zero bytes, data bytes).
#[track_caller]
pub fn check_map(uri: &str, want: &[u8]) -> (u64, u64) {
    let map = json(&tool_ok("nbdinfo", ["--map", "--json", uri]));
    let map = map.as_array().expect("map is a list");
    let mut next = 0u64;
    let (mut zero, mut data) = (0u64, 0u64);
    for ext in map {
        let off = ext["offset"].as_u64().unwrap();
        let len = ext["length"].as_u64().unwrap();
        let ty = ext["type"].as_u64().unwrap();
        assert_eq!(off, next, "{uri}: map not contiguous at {ext}");
        next = off + len;
        if ty & 2 != 0 {
            zero += len;
            let range = &want[off as usize..next as usize];
            if let Some(p) = range.iter().position(|&b| b != 0) {
                panic!(
                    "{uri}: the map says {off}+{len} reads as zeros, but byte {} is {:#04x}",
                    off as usize + p,
                    range[p]
                );
            }
        } else {
            data += len;
        }
    }
    assert_eq!(next, want.len() as u64, "{uri}: map covers the volume");
    (zero, data)
}

/// The extent of the map holding `offset`: (offset, length, type).
pub fn map_extent(uri: &str, offset: u64) -> (u64, u64, u64) {
    let map = json(&tool_ok("nbdinfo", ["--map", "--json", uri]));
    map.as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["offset"].as_u64().unwrap(),
                e["length"].as_u64().unwrap(),
                e["type"].as_u64().unwrap(),
            )
        })
        .find(|&(o, l, _)| o <= offset && offset < o + l)
        .unwrap_or_else(|| panic!("{uri}: no extent holds {offset}"))
}

/// Asserts a refusal: exit 2 (environment: another process holds the
/// overlay) and "in use" in stderr.
#[track_caller]
pub fn assert_in_use(o: &std::process::Output, what: &str) {
    assert!(
        o.status.code() == Some(2) && stderr(o).contains("in use"),
        "{what}: expected exit 2 and a refusal saying \"in use\" ({}):\n{}",
        o.status,
        text(o)
    );
}

/// The first differing offset of two byte strings, for messages.
pub fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    if a.len() != b.len() {
        return Some(a.len().min(b.len()));
    }
    a.iter().zip(b).position(|(x, y)| x != y)
}

#[track_caller]
pub fn assert_bytes_eq(got: &[u8], want: &[u8], what: &str) {
    if let Some(at) = first_difference(got, want) {
        panic!(
            "{what}: differs at byte {at} (got {} bytes, want {}; got {:02x?}, want {:02x?})",
            got.len(),
            want.len(),
            got.get(at..(at + 16).min(got.len())),
            want.get(at..(at + 16).min(want.len()))
        );
    }
}

// ---------------------------------------------------------------------------
// 1. What is served is what `mosaic volume export` writes

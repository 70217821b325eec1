//! External programs, always run with a deadline. A program that is not
//! installed fails the test with the Debian package that brings it.

use crate::process::try_signal;
use serde_json::Value;
use std::ffi::{OsStr, OsString};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// How long one run of an external program may take before the test
/// kills it and fails.
pub const TOOL_DEADLINE: Duration = Duration::from_secs(120);

/// The Debian package that brings `program` (a name or a path; its file
/// name decides), for the "not installed" message.
pub fn package_of(program: &str) -> Option<&'static str> {
    let name = Path::new(program)
        .file_name()
        .and_then(OsStr::to_str)
        .unwrap_or(program);
    Some(match name {
        "qemu-img" | "qemu-io" | "qemu-nbd" => "qemu-utils",
        "qemu-system-x86_64" => "qemu-system-x86",
        "nbdinfo" | "nbdcopy" | "nbdsh" | "nbdfuse" => "libnbd-bin",
        "nbdkit" => "nbdkit",
        "fio" => "fio",
        "python3" => "python3 python3-libnbd",
        "e2fsck" | "debugfs" | "dumpe2fs" | "mke2fs" => "e2fsprogs",
        "mount" | "umount" => "mount",
        "cmp" | "diff" => "diffutils",
        "cp" | "df" | "du" | "sha256sum" | "stat" | "truncate" => "coreutils",
        "openssl" => "openssl",
        "cpio" => "cpio",
        "dpkg-deb" => "dpkg",
        "apt-get" | "apt-cache" => "apt",
        "sh" => "dash",
        "zstd" => "zstd",
        "getfattr" | "setfattr" => "attr",
        "psktool" => "gnutls-bin",
        _ => return None,
    })
}

/// Why `program` cannot be run: not installed, and where to get it.
fn missing(program: &str) -> String {
    match package_of(program) {
        Some(p) => format!(
            "required tool `{program}` is not installed (on Debian: apt-get install {p}); \
             this test cannot run without it"
        ),
        None => format!(
            "required program `{program}` was not found (no Debian package is known for \
             it: name it in testkit::package_of); this test cannot run without it"
        ),
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

/// The exit code of a finished process (panics if a signal killed it).
#[track_caller]
pub fn code(o: &Output) -> i32 {
    o.status
        .code()
        .unwrap_or_else(|| panic!("killed by a signal: {:?}\n{}", o.status, text(o)))
}

/// Asserts the exit code, showing both streams on failure.
#[track_caller]
pub fn expect_code(o: &Output, want: i32, what: &str) {
    assert_eq!(
        o.status.code(),
        Some(want),
        "{what}: expected exit code {want}\n{}",
        text(o)
    );
}

/// Parses JSON text, failing the test with the text.
#[track_caller]
pub fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}):\n{s}"))
}

/// Spawns `cmd`; a program that is not installed fails the test naming its
/// Debian package.
#[track_caller]
pub fn spawn(cmd: &mut Command) -> Child {
    match cmd.spawn() {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            panic!("{}", missing(&cmd.get_program().to_string_lossy()))
        }
        Err(e) => panic!("could not run {cmd:?}: {e}"),
    }
}

/// Runs `cmd` to completion (no input, stdout and stderr captured); kills
/// it and fails the test if it runs longer than `deadline`.
#[track_caller]
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
            // Not reaped yet (the waiter is blocked on it), so the pid is
            // still this child's.
            let _ = try_signal(pid, "KILL");
            true
        } else {
            false
        }
    });
    let out = child.wait_with_output().expect("wait for a child process");
    let _ = done_tx.send(());
    let timed_out = watchdog.join().expect("the watchdog thread");
    assert!(
        !timed_out,
        "{shown} did not finish within {deadline:?} (killed):\n{}",
        text(&out)
    );
    out
}

/// The command [`tool`] runs: `program ARGS...` in the C locale and UTC
/// (dates and messages are the same everywhere) with no pager.
pub fn tool_cmd<I, S>(program: impl AsRef<OsStr>, args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut c = Command::new(program);
    c.args(args)
        .env("LC_ALL", "C")
        .env("TZ", "UTC")
        .env("PAGER", "__none__")
        .env("DEBUGFS_PAGER", "__none__");
    c
}

/// Runs an external program (within [`TOOL_DEADLINE`]), whatever its exit
/// status.
#[track_caller]
pub fn tool<I, S>(program: impl AsRef<OsStr>, args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    output_within(tool_cmd(program, args), TOOL_DEADLINE)
}

/// Like [`tool`], but it must exit 0; returns the whole output.
#[track_caller]
pub fn tool_output_ok<I, S>(program: impl AsRef<OsStr>, args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let program = program.as_ref().to_owned();
    let args: Vec<OsString> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
    let o = tool(&program, &args);
    expect_code(&o, 0, &format!("`{} {args:?}`", program.to_string_lossy()));
    o
}

/// Like [`tool`], but it must exit 0; returns its stdout as text.
#[track_caller]
pub fn tool_ok<I, S>(program: impl AsRef<OsStr>, args: I) -> String
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    stdout(&tool_output_ok(program, args))
}

/// Like [`tool`], but it must exit 0; returns its stdout as bytes.
#[track_caller]
pub fn tool_ok_bytes<I, S>(program: impl AsRef<OsStr>, args: I) -> Vec<u8>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    tool_output_ok(program, args).stdout
}

/// Whether `program` is an executable file in a directory of `PATH`.
pub fn on_path(program: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).any(|d| {
        std::fs::metadata(d.join(program))
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    })
}

/// Fails the test up front, naming every program of `programs` that is not
/// installed and its Debian package.
#[track_caller]
pub fn require_tools(programs: &[&str]) {
    let missing: Vec<String> = programs
        .iter()
        .filter(|p| !on_path(p))
        .map(|p| missing(p))
        .collect();
    assert!(missing.is_empty(), "{}", missing.join("\n"));
}

/// Debian's python, which has libnbd's `nbd` module (the pyenv `python3`
/// first on PATH does not).
pub const PYTHON: &str = "/usr/bin/python3";

/// Fails the test unless Debian's python can import libnbd's module.
#[track_caller]
pub fn require_python_nbd() {
    let o = tool(PYTHON, ["-c", "import nbd"]);
    assert!(
        o.status.success(),
        "{PYTHON} cannot import libnbd's `nbd` module (on Debian: apt-get install \
         python3-libnbd):\n{}",
        text(&o)
    );
}

/// The command that runs a Python script with Debian's python:
/// `python3 -c SCRIPT -- ARGS...`.
pub fn python_cmd<I, S>(script: &str, args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut c = Command::new(PYTHON);
    c.arg("-c").arg(script).arg("--").args(args);
    c
}

/// Runs a Python script with Debian's python (within [`TOOL_DEADLINE`]),
/// after checking it can import libnbd's module.
#[track_caller]
pub fn python<I, S>(script: &str, args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    require_python_nbd();
    output_within(python_cmd(script, args), TOOL_DEADLINE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[should_panic(expected = "apt-get install qemu-utils")]
    fn a_missing_tool_names_its_package() {
        let mut c = Command::new("qemu-img");
        c.env("PATH", "/nonexistent");
        output_within(c, TOOL_DEADLINE);
    }

    #[test]
    #[should_panic(expected = "did not finish within")]
    fn a_tool_past_its_deadline_fails_the_test() {
        let mut c = Command::new("sleep");
        c.arg("30");
        output_within(c, Duration::from_millis(100));
    }

    #[test]
    fn tools_run_in_the_c_locale_and_utc() {
        let env = tool_ok("env", std::iter::empty::<&str>());
        assert!(env.lines().any(|l| l == "LC_ALL=C"), "{env}");
        assert!(env.lines().any(|l| l == "TZ=UTC"), "{env}");
        assert_eq!(package_of("/usr/bin/e2fsck"), Some("e2fsprogs"));
        assert_eq!(package_of("no-such-tool"), None);
    }
}

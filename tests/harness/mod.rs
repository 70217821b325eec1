//! Helpers for `tests/tamper.rs`, `tests/keys.rs`, `tests/golden.rs` and
//! `tests/cli.rs` (include with `mod harness;`). Independent of
//! `tests/common`, which belongs to the round-trip tests.
//!
//! - running the `mosaic` binary and external tools ([`mosaic`], [`tool`]),
//!   with a missing tool failing the test with its name;
//! - writing source trees with exact modes and timestamps ([`write_file`],
//!   [`set_mtime`]);
//! - byte flips in place on a working copy ([`Flipper`]).
#![allow(dead_code)]

use fragments::SigningKey;
use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A list of process arguments from strings and paths alike:
/// `args!["fragment", "verify", path, "--trust", key]`.
#[allow(unused_macros)]
macro_rules! args {
    ($($a:expr),* $(,)?) => {
        vec![$(std::ffi::OsString::from(AsRef::<std::ffi::OsStr>::as_ref(&$a))),*]
    };
}

/// A fresh temporary directory (on disk, not tmpfs), removed when dropped.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("mosaic-harness-")
        .tempdir()
        .expect("create a temporary directory")
}

/// A deterministic signing key whose secret is `[n; 32]`.
pub fn key(n: u8) -> SigningKey {
    SigningKey::from_bytes(&[n; 32])
}

/// Writes `dir/NAME` and `dir/NAME.pub` for `key`; returns both paths.
pub fn write_keys(dir: &Path, name: &str, key: &SigningKey) -> (PathBuf, PathBuf) {
    let secret = dir.join(name);
    fragments::keys::write_keypair(&secret, key, true).expect("write key pair");
    let public = fragments::keys::pub_path(&secret);
    (secret, public)
}

/// Runs the `mosaic` binary with `SOURCE_DATE_EPOCH` and `RUST_LOG` removed
/// from its environment (so builds are reproducible and stderr quiet).
pub fn mosaic<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    mosaic_env(args, &[])
}

/// Like [`mosaic`] with extra environment variables.
pub fn mosaic_env<I, S>(args: I, env: &[(&str, &str)]) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut c = Command::new(env!("CARGO_BIN_EXE_mosaic"));
    c.args(args)
        .env_remove("SOURCE_DATE_EPOCH")
        .env_remove("RUST_LOG");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("run the mosaic binary")
}

/// Runs an external tool; a tool that is not installed fails the test with
/// a message naming it.
pub fn tool<I, S>(name: &str, args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    match Command::new(name).args(args).output() {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "required tool `{name}` is not installed (on Debian: apt-get install {name}); \
             this test cannot run without it"
        ),
        Err(e) => panic!("could not run `{name}`: {e}"),
    }
}

/// Like [`tool`], but the tool must exit 0; returns its stdout.
pub fn tool_ok<I, S>(name: &str, args: I) -> Vec<u8>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<std::ffi::OsString> = args.into_iter().map(|a| a.as_ref().into()).collect();
    let o = tool(name, &args);
    assert!(
        o.status.success(),
        "`{name} {:?}` failed ({}):\n{}",
        args,
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    o.stdout
}

/// The exit code of a finished process (panics on a signal).
pub fn code(o: &Output) -> i32 {
    o.status
        .code()
        .unwrap_or_else(|| panic!("killed by a signal: {:?}", o.status))
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts the exit code, showing both streams on failure.
#[track_caller]
pub fn expect_code(o: &Output, want: i32, what: &str) {
    assert_eq!(
        o.status.code(),
        Some(want),
        "{what}: expected exit code {want}\n--- stdout\n{}\n--- stderr\n{}",
        stdout(o),
        stderr(o)
    );
}

/// Writes a file (creating parents) and sets its permission bits exactly
/// (the umask does not apply).
pub fn write_file(path: &Path, bytes: &[u8], mode: u32) {
    if let Some(p) = path.parent() {
        fs::create_dir_all(p).unwrap();
    }
    fs::write(path, bytes).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// Creates a directory (and parents) and sets its permission bits exactly.
pub fn make_dir(path: &Path, mode: u32) {
    fs::create_dir_all(path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// Sets atime and mtime of `path` (not following a symlink).
pub fn set_mtime(path: &Path, sec: i64, nsec: i64) {
    use nix::sys::stat::{utimensat, UtimensatFlags};
    use nix::sys::time::TimeSpec;
    let t = TimeSpec::new(sec, nsec);
    utimensat(None, path, &t, &t, UtimensatFlags::NoFollowSymlink)
        .unwrap_or_else(|e| panic!("utimensat {}: {e}", path.display()));
}

/// Deterministic bytes with no zero 4 KiB block (xorshift, never 0).
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

/// The whole content of a regular file of an open fragment, by path.
pub fn read_path(f: &fragments::Fragment, path: &str) -> fragments::Result<Vec<u8>> {
    let ino = f
        .metadata()
        .lookup(path.as_bytes())
        .unwrap_or_else(|| panic!("{path}: not in the fragment"));
    let size = f.metadata().inode(ino).size();
    let mut buf = vec![0u8; size as usize];
    let n = f.read_file(ino, 0, &mut buf)?;
    assert_eq!(n as u64, size, "{path}: short read");
    Ok(buf)
}

/// Every regular file's path (all hard-link names), sorted.
pub fn regular_paths(f: &fragments::Fragment) -> Vec<String> {
    let m = f.metadata();
    let mut out = Vec::new();
    for (ino, inode) in m.inodes.iter().enumerate() {
        if inode.kind == fragments::Kind::Regular {
            for p in m.paths_of(ino as u32) {
                out.push(String::from_utf8(p).unwrap());
            }
        }
    }
    out.sort();
    out
}

/// A working copy of a fragment in which single bytes are flipped in place
/// and restored, so that each trial sees the pristine file but one byte.
pub struct Flipper {
    pub path: PathBuf,
    file: File,
    pristine: Vec<u8>,
}

impl Flipper {
    /// Copies `src` to `dir/name` (a regular file on disk).
    pub fn new(src: &Path, dir: &Path, name: &str) -> Flipper {
        let path = dir.join(name);
        let pristine = fs::read(src).unwrap();
        fs::write(&path, &pristine).unwrap();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        Flipper {
            path,
            file,
            pristine,
        }
    }

    pub fn len(&self) -> u64 {
        self.pristine.len() as u64
    }

    pub fn pristine(&self) -> &[u8] {
        &self.pristine
    }

    /// Runs `check` with byte `offset` of the copy xor-ed with `mask`, then
    /// restores the byte.
    pub fn with_flip<T>(&self, offset: u64, mask: u8, check: impl FnOnce(&Path) -> T) -> T {
        let orig = self.pristine[offset as usize];
        self.file.write_all_at(&[orig ^ mask], offset).unwrap();
        let r = check(&self.path);
        self.file.write_all_at(&[orig], offset).unwrap();
        r
    }

    /// Asserts the working copy equals the original again.
    pub fn assert_restored(&self) {
        assert!(
            fs::read(&self.path).unwrap() == self.pristine,
            "the working copy was not restored"
        );
    }
}

/// `n` offsets spread evenly over `[start, end)`, first and last included.
pub fn spread(start: u64, end: u64, n: u64) -> Vec<u64> {
    assert!(end > start);
    let span = end - 1 - start;
    let mut v: Vec<u64> = (0..n).map(|i| start + span * i / (n - 1).max(1)).collect();
    v.dedup();
    v
}

//! Helpers shared by the integration tests of the `mosaic` package.
//!
//! Include with `mod common;` from a file in `tests/`. Not every test file
//! uses every helper, hence the `dead_code` allowance.
//!
//! What is here:
//! - temporary directories ([`tempdir`]) and deterministic keys ([`key`],
//!   [`write_keys`]);
//! - building and opening fragments through the library ([`build`],
//!   [`open`], [`read_all`]);
//! - running the `mosaic` binary ([`mosaic`], [`mosaic_ok`], [`mosaic_code`]);
//! - making special entries in a source tree ([`set_mtime`], [`mknod`],
//!   [`vfs_cap_v2`], [`posix_acl`]);
//! - snapshotting and comparing two trees ([`snapshot`],
//!   [`tree_differences`], [`assert_same_tree`]).
#![allow(dead_code)]

use fragments::{BuildOptions, BuildReport, Fragment, SigningKey, Trust};
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::Read;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

// ---------------------------------------------------------------------------
// Temporary directories and keys

/// A fresh temporary directory under the system temp dir (ext4 /tmp here),
/// removed when dropped.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("mosaic-test-")
        .tempdir()
        .expect("create a temporary directory")
}

/// A deterministic test signing key: the secret is `[n; 32]`.
pub fn key(n: u8) -> SigningKey {
    SigningKey::from_bytes(&[n; 32])
}

/// Writes `key` as `dir/NAME` (PKCS#8 PEM) and `dir/NAME.pub` (SPKI PEM),
/// the files the CLI reads; returns (secret path, public path).
pub fn write_keys(dir: &Path, name: &str, key: &SigningKey) -> (PathBuf, PathBuf) {
    let secret = dir.join(name);
    fragments::keys::write_keypair(&secret, key, true).expect("write key pair");
    let public = fragments::keys::pub_path(&secret);
    (secret, public)
}

// ---------------------------------------------------------------------------
// Fragments through the library

/// Default build options with the given small-file threshold and zstd level.
pub fn options(small_threshold: u64, zstd_level: Option<i32>) -> BuildOptions {
    BuildOptions {
        small_threshold,
        zstd_level,
        ..BuildOptions::default()
    }
}

/// Builds `src` into `out` with `key`, panicking with the error on failure.
pub fn build(src: &Path, out: &Path, key: &SigningKey, opts: &BuildOptions) -> BuildReport {
    fragments::build(src, out, key, opts, &fragments::NoProgress)
        .unwrap_or_else(|e| panic!("build {} -> {}: {e:#}", src.display(), out.display()))
}

/// Opens `path` trusting only `key`.
pub fn open(path: &Path, key: &SigningKey) -> Fragment {
    let trusted = [key.verifying_key()];
    Fragment::open(path, Trust::Keys(&trusted))
        .unwrap_or_else(|e| panic!("open {}: {e:#}", path.display()))
}

/// The whole content of regular file `ino`, read through `read_file` in
/// pieces of `piece` bytes (any size ≥ 1, to exercise odd boundaries).
pub fn read_all(frag: &Fragment, ino: u32, piece: usize) -> Vec<u8> {
    let size = frag.metadata().inode(ino).size();
    let mut out = Vec::with_capacity(size as usize);
    let mut buf = vec![0u8; piece.max(1)];
    loop {
        let n = frag
            .read_file(ino, out.len() as u64, &mut buf)
            .unwrap_or_else(|e| panic!("read_file inode {ino} at {}: {e:#}", out.len()));
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    assert_eq!(out.len() as u64, size, "inode {ino}: bytes read vs size");
    out
}

// ---------------------------------------------------------------------------
// The `mosaic` binary

/// Path of the `mosaic` binary cargo built for these tests.
pub fn mosaic_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_mosaic"))
}

/// A `Command` for `mosaic ARGS...` with a clean environment for logging and
/// reproducibility (no RUST_LOG, no SOURCE_DATE_EPOCH).
pub fn mosaic_cmd<I, S>(args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut c = Command::new(mosaic_bin());
    c.args(args)
        .env_remove("RUST_LOG")
        .env_remove("SOURCE_DATE_EPOCH");
    c
}

/// Runs `mosaic ARGS...` and returns its output, whatever the exit status.
pub fn mosaic<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    mosaic_cmd(args).output().expect("run the mosaic binary")
}

/// Runs `mosaic ARGS...`, panicking (with stderr) unless it exits 0.
pub fn mosaic_ok<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<OsString> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
    let out = mosaic(&args);
    assert!(
        out.status.success(),
        "mosaic {:?} failed ({}):\nstdout: {}\nstderr: {}",
        args,
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The exit code of an output (panics if killed by a signal).
pub fn code(out: &Output) -> i32 {
    out.status
        .code()
        .unwrap_or_else(|| panic!("killed by a signal: {:?}", out.status))
}

/// Runs `mosaic ARGS...` and returns (exit code, stderr as text).
pub fn mosaic_code<I, S>(args: I) -> (i32, String)
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let out = mosaic(args);
    (
        code(&out),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

// ---------------------------------------------------------------------------
// Making source trees

/// Sets atime and mtime of `path` without following a symlink.
pub fn set_mtime(path: &Path, sec: i64, nsec: u32) {
    use nix::sys::stat::{utimensat, UtimensatFlags};
    use nix::sys::time::TimeSpec;
    let t = TimeSpec::new(sec, nsec as _);
    utimensat(None, path, &t, &t, UtimensatFlags::NoFollowSymlink)
        .unwrap_or_else(|e| panic!("utimensat {}: {e}", path.display()));
}

/// `chown -h uid:gid path`.
pub fn lchown(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))
        .unwrap_or_else(|e| panic!("lchown {}: {e}", path.display()));
}

/// `chmod` (follows symlinks: do not call on one).
pub fn chmod(path: &Path, perm: u32) {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(perm))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

/// What [`mknod`] creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Special {
    Char(u32, u32),
    Block(u32, u32),
    Fifo,
    Socket,
}

/// Creates a device, fifo or socket node (mode 0600).
pub fn mknod(path: &Path, what: Special) {
    use nix::sys::stat::{makedev, Mode, SFlag};
    let (kind, dev) = match what {
        Special::Char(ma, mi) => (SFlag::S_IFCHR, makedev(ma as u64, mi as u64)),
        Special::Block(ma, mi) => (SFlag::S_IFBLK, makedev(ma as u64, mi as u64)),
        Special::Fifo => (SFlag::S_IFIFO, 0),
        Special::Socket => (SFlag::S_IFSOCK, 0),
    };
    nix::sys::stat::mknod(path, kind, Mode::from_bits_truncate(0o600), dev)
        .unwrap_or_else(|e| panic!("mknod {}: {e}", path.display()));
}

/// Sets an xattr without following symlinks.
pub fn set_xattr(path: &Path, name: &[u8], value: &[u8]) {
    xattr::set(path, OsStr::from_bytes(name), value)
        .unwrap_or_else(|e| panic!("setxattr {} {}: {e}", path.display(), name.escape_ascii()));
}

/// A VFS v2 file capability (`security.capability`, 20 bytes): magic
/// 0x02000000 (| 1 when `effective`), then permitted/inheritable low words,
/// then the high words.
pub fn vfs_cap_v2(permitted: u64, inheritable: u64, effective: bool) -> Vec<u8> {
    let magic: u32 = 0x0200_0000 | effective as u32;
    let mut v = Vec::with_capacity(20);
    v.extend_from_slice(&magic.to_le_bytes());
    v.extend_from_slice(&(permitted as u32).to_le_bytes());
    v.extend_from_slice(&(inheritable as u32).to_le_bytes());
    v.extend_from_slice(&((permitted >> 32) as u32).to_le_bytes());
    v.extend_from_slice(&((inheritable >> 32) as u32).to_le_bytes());
    v
}

pub const ACL_USER_OBJ: u16 = 0x01;
pub const ACL_USER: u16 = 0x02;
pub const ACL_GROUP_OBJ: u16 = 0x04;
pub const ACL_GROUP: u16 = 0x08;
pub const ACL_MASK: u16 = 0x10;
pub const ACL_OTHER: u16 = 0x20;
pub const ACL_UNDEFINED_ID: u32 = u32::MAX;

/// A POSIX ACL in the VFS xattr format (`system.posix_acl_access` /
/// `system.posix_acl_default`): le32 version 2, then (le16 tag, le16 perm,
/// le32 id) per entry. Entries must be in the kernel's order: USER_OBJ,
/// USER..., GROUP_OBJ, GROUP..., MASK, OTHER.
pub fn posix_acl(entries: &[(u16, u16, u32)]) -> Vec<u8> {
    let mut v = Vec::with_capacity(4 + 8 * entries.len());
    v.extend_from_slice(&2u32.to_le_bytes());
    for &(tag, perm, id) in entries {
        v.extend_from_slice(&tag.to_le_bytes());
        v.extend_from_slice(&perm.to_le_bytes());
        v.extend_from_slice(&id.to_le_bytes());
    }
    v
}

/// An extended ACL with named users and groups (ids sorted and deduplicated
/// here) and a mask, so the kernel keeps it as an xattr.
pub fn extended_acl(
    user_obj: u16,
    users: &[(u32, u16)],
    group_obj: u16,
    groups: &[(u32, u16)],
    mask: u16,
    other: u16,
) -> Vec<u8> {
    let sorted = |v: &[(u32, u16)]| {
        let mut m: BTreeMap<u32, u16> = BTreeMap::new();
        for &(id, p) in v {
            m.insert(id, p & 7);
        }
        m
    };
    let mut e = vec![(ACL_USER_OBJ, user_obj & 7, ACL_UNDEFINED_ID)];
    e.extend(sorted(users).into_iter().map(|(id, p)| (ACL_USER, p, id)));
    e.push((ACL_GROUP_OBJ, group_obj & 7, ACL_UNDEFINED_ID));
    e.extend(sorted(groups).into_iter().map(|(id, p)| (ACL_GROUP, p, id)));
    e.push((ACL_MASK, mask & 7, ACL_UNDEFINED_ID));
    e.push((ACL_OTHER, other & 7, ACL_UNDEFINED_ID));
    posix_acl(&e)
}

/// Deterministic pseudo-random bytes (splitmix64) for file contents.
pub fn fill_bytes(seed: u64, buf: &mut [u8]) {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    for chunk in buf.chunks_mut(8) {
        s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        chunk.copy_from_slice(&z.to_le_bytes()[..chunk.len()]);
    }
}

/// `n` deterministic pseudo-random bytes.
pub fn random_bytes(seed: u64, n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    fill_bytes(seed, &mut v);
    v
}

/// Entry names of a directory, sorted by bytes.
pub fn list_dir(dir: &Path) -> Vec<OsString> {
    let mut v: Vec<OsString> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()))
        .map(|e| e.expect("read_dir entry").file_name())
        .collect();
    v.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    v
}

/// `cp -a SRC DST` (panics on failure).
pub fn cp_a(src: &Path, dst: &Path) {
    let st = Command::new("cp")
        .arg("-a")
        .arg(src)
        .arg(dst)
        .status()
        .expect("run cp");
    assert!(
        st.success(),
        "cp -a {} {}: {st}",
        src.display(),
        dst.display()
    );
}

// ---------------------------------------------------------------------------
// Snapshots and comparison of trees

/// The file type of an entry, from `lstat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum FileKind {
    Regular,
    Directory,
    Symlink,
    CharDevice,
    BlockDevice,
    Fifo,
    Socket,
}

impl FileKind {
    pub fn of(ft: fs::FileType) -> FileKind {
        if ft.is_file() {
            FileKind::Regular
        } else if ft.is_dir() {
            FileKind::Directory
        } else if ft.is_symlink() {
            FileKind::Symlink
        } else if ft.is_char_device() {
            FileKind::CharDevice
        } else if ft.is_block_device() {
            FileKind::BlockDevice
        } else if ft.is_fifo() {
            FileKind::Fifo
        } else if ft.is_socket() {
            FileKind::Socket
        } else {
            panic!("unknown file type {ft:?}")
        }
    }
    /// The same kind in the fragment crate's terms.
    pub fn fragment_kind(self) -> fragments::Kind {
        match self {
            FileKind::Regular => fragments::Kind::Regular,
            FileKind::Directory => fragments::Kind::Directory,
            FileKind::Symlink => fragments::Kind::Symlink,
            FileKind::CharDevice => fragments::Kind::CharDevice,
            FileKind::BlockDevice => fragments::Kind::BlockDevice,
            FileKind::Fifo => fragments::Kind::Fifo,
            FileKind::Socket => fragments::Kind::Socket,
        }
    }
}

/// What `lstat`, `readlink` and `llistxattr` say about one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryStat {
    pub kind: FileKind,
    /// `st_mode & 07777`.
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime_sec: i64,
    pub mtime_nsec: i64,
    /// Regular files only (0 otherwise).
    pub size: u64,
    pub nlink: u64,
    /// Devices only: (major, minor).
    pub rdev: Option<(u64, u64)>,
    pub symlink_target: Option<Vec<u8>>,
    /// Sorted by name.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// (st_dev, st_ino): identity for hard-link grouping, not compared.
    pub identity: (u64, u64),
}

/// All xattrs of `path` (not following symlinks), sorted by name. A
/// filesystem without xattr support gives an empty list.
pub fn xattrs_of(path: &Path) -> Vec<(Vec<u8>, Vec<u8>)> {
    let names = match xattr::list(path) {
        Ok(n) => n,
        Err(e) if e.raw_os_error() == Some(nix::libc::ENOTSUP) => return Vec::new(),
        Err(e) => panic!("listxattr {}: {e}", path.display()),
    };
    let mut out: Vec<(Vec<u8>, Vec<u8>)> = names
        .filter_map(|n| {
            let v = xattr::get(path, &n)
                .unwrap_or_else(|e| panic!("getxattr {} {n:?}: {e}", path.display()))?;
            Some((n.into_vec(), v))
        })
        .collect();
    out.sort();
    out
}

/// `lstat` and friends of one path.
pub fn stat_entry(path: &Path) -> EntryStat {
    let md = fs::symlink_metadata(path).unwrap_or_else(|e| panic!("lstat {}: {e}", path.display()));
    let kind = FileKind::of(md.file_type());
    let rdev = matches!(kind, FileKind::CharDevice | FileKind::BlockDevice).then(|| {
        (
            nix::sys::stat::major(md.rdev()),
            nix::sys::stat::minor(md.rdev()),
        )
    });
    let symlink_target = (kind == FileKind::Symlink).then(|| {
        fs::read_link(path)
            .unwrap_or_else(|e| panic!("readlink {}: {e}", path.display()))
            .into_os_string()
            .into_vec()
    });
    EntryStat {
        kind,
        perm: md.mode() & 0o7777,
        uid: md.uid(),
        gid: md.gid(),
        mtime_sec: md.mtime(),
        mtime_nsec: md.mtime_nsec(),
        size: if kind == FileKind::Regular {
            md.len()
        } else {
            0
        },
        nlink: md.nlink(),
        rdev,
        symlink_target,
        xattrs: xattrs_of(path),
        identity: (md.dev(), md.ino()),
    }
}

/// Every entry under `root` (not following symlinks), keyed by its path
/// relative to `root` as bytes (`b""` is `root` itself, then `b"a"`,
/// `b"a/b"`...).
pub fn snapshot(root: &Path) -> BTreeMap<Vec<u8>, EntryStat> {
    let mut out = BTreeMap::new();
    let mut stack: Vec<(PathBuf, Vec<u8>)> = vec![(root.to_owned(), Vec::new())];
    while let Some((path, rel)) = stack.pop() {
        let st = stat_entry(&path);
        if st.kind == FileKind::Directory {
            for name in list_dir(&path) {
                let mut r = rel.clone();
                if !r.is_empty() {
                    r.push(b'/');
                }
                r.extend_from_slice(name.as_bytes());
                stack.push((path.join(&name), r));
            }
        }
        out.insert(rel, st);
    }
    out
}

/// Groups of paths naming the same non-directory inode, for every inode
/// with more than one name in the snapshot.
pub fn hard_link_groups(snap: &BTreeMap<Vec<u8>, EntryStat>) -> BTreeSet<Vec<Vec<u8>>> {
    let mut by_id: BTreeMap<(u64, u64), Vec<Vec<u8>>> = BTreeMap::new();
    for (p, st) in snap {
        if st.kind != FileKind::Directory {
            by_id.entry(st.identity).or_default().push(p.clone());
        }
    }
    by_id
        .into_values()
        .filter(|g| g.len() > 1)
        .map(|mut g| {
            g.sort();
            g
        })
        .collect()
}

fn files_equal(a: &Path, b: &Path) -> std::io::Result<bool> {
    let (mut fa, mut fb) = (fs::File::open(a)?, fs::File::open(b)?);
    let (mut ba, mut bb) = (vec![0u8; 1 << 16], vec![0u8; 1 << 16]);
    loop {
        let na = read_full(&mut fa, &mut ba)?;
        let nb = read_full(&mut fb, &mut bb)?;
        if na != nb || ba[..na] != bb[..nb] {
            return Ok(false);
        }
        if na == 0 {
            return Ok(true);
        }
    }
}

fn read_full(f: &mut fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Every difference between the trees at `a` and `b`: names, kinds,
/// contents, permission bits, owners, mtimes to the nanosecond, sizes, link
/// counts, device numbers, symlink targets, xattrs and hard-link groups.
/// The roots' own metadata is compared too. Empty: the trees are the same.
pub fn tree_differences(a: &Path, b: &Path) -> Vec<String> {
    let (sa, sb) = (snapshot(a), snapshot(b));
    let mut diffs = Vec::new();
    let show = |p: &[u8]| format!("/{}", p.escape_ascii());
    for p in sa.keys().filter(|p| !sb.contains_key(*p)) {
        diffs.push(format!("{}: only in {}", show(p), a.display()));
    }
    for p in sb.keys().filter(|p| !sa.contains_key(*p)) {
        diffs.push(format!("{}: only in {}", show(p), b.display()));
    }
    for (p, x) in &sa {
        let Some(y) = sb.get(p) else { continue };
        let mut field = |name: &str, l: String, r: String| {
            if l != r {
                diffs.push(format!("{}: {name} {l} != {r}", show(p)));
            }
        };
        field("kind", format!("{:?}", x.kind), format!("{:?}", y.kind));
        if x.kind != y.kind {
            continue;
        }
        field("perm", format!("{:o}", x.perm), format!("{:o}", y.perm));
        field("uid", x.uid.to_string(), y.uid.to_string());
        field("gid", x.gid.to_string(), y.gid.to_string());
        field(
            "mtime",
            format!("{}.{:09}", x.mtime_sec, x.mtime_nsec),
            format!("{}.{:09}", y.mtime_sec, y.mtime_nsec),
        );
        field("size", x.size.to_string(), y.size.to_string());
        field("nlink", x.nlink.to_string(), y.nlink.to_string());
        field("rdev", format!("{:?}", x.rdev), format!("{:?}", y.rdev));
        field(
            "symlink target",
            format!(
                "{:?}",
                x.symlink_target
                    .as_deref()
                    .map(|t| t.escape_ascii().to_string())
            ),
            format!(
                "{:?}",
                y.symlink_target
                    .as_deref()
                    .map(|t| t.escape_ascii().to_string())
            ),
        );
        let fmt_x = |v: &[(Vec<u8>, Vec<u8>)]| {
            v.iter()
                .map(|(n, v)| format!("{}={}", n.escape_ascii(), v.escape_ascii()))
                .collect::<Vec<_>>()
                .join(", ")
        };
        field("xattrs", fmt_x(&x.xattrs), fmt_x(&y.xattrs));
        if x.kind == FileKind::Regular && x.size == y.size {
            let pa = join_rel(a, p);
            let pb = join_rel(b, p);
            match files_equal(&pa, &pb) {
                Ok(true) => {}
                Ok(false) => diffs.push(format!("{}: contents differ", show(p))),
                Err(e) => diffs.push(format!("{}: cannot compare contents: {e}", show(p))),
            }
        }
    }
    let (ga, gb) = (hard_link_groups(&sa), hard_link_groups(&sb));
    for g in ga.difference(&gb) {
        let names: Vec<String> = g.iter().map(|p| show(p)).collect();
        diffs.push(format!(
            "hard-link group only in {}: {names:?}",
            a.display()
        ));
    }
    for g in gb.difference(&ga) {
        let names: Vec<String> = g.iter().map(|p| show(p)).collect();
        diffs.push(format!(
            "hard-link group only in {}: {names:?}",
            b.display()
        ));
    }
    diffs
}

/// Panics listing the differences (the first 40) unless the trees are the same.
pub fn assert_same_tree(a: &Path, b: &Path) {
    let d = tree_differences(a, b);
    assert!(
        d.is_empty(),
        "{} differences between {} and {}:\n  {}",
        d.len(),
        a.display(),
        b.display(),
        d.iter().take(40).cloned().collect::<Vec<_>>().join("\n  ")
    );
}

/// `root` joined with a relative path in bytes (`b""`: `root`).
pub fn join_rel(root: &Path, rel: &[u8]) -> PathBuf {
    if rel.is_empty() {
        root.to_owned()
    } else {
        root.join(OsStr::from_bytes(rel))
    }
}

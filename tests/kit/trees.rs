//! Source trees: temporary directories, entries with exact modes, owners,
//! times, device numbers, xattrs and ACLs; snapshots and comparison of
//! two trees.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::Read;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use testkit::tool_output_ok;

/// A fresh temporary directory under the system temp dir (ext4 /tmp here,
/// not tmpfs), removed when dropped.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("mosaic-test-")
        .tempdir()
        .expect("create a temporary directory")
}

/// Writes a file (creating parents) and sets its permission bits exactly
/// (the umask does not apply).
#[track_caller]
pub fn write_file(path: &Path, bytes: &[u8], mode: u32) {
    if let Some(p) = path.parent() {
        fs::create_dir_all(p).unwrap_or_else(|e| panic!("mkdir {}: {e}", p.display()));
    }
    fs::write(path, bytes).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    chmod(path, mode);
}

/// Creates a directory (and parents) and sets its permission bits exactly.
#[track_caller]
pub fn make_dir(path: &Path, mode: u32) {
    fs::create_dir_all(path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
    chmod(path, mode);
}

/// Every path under `root` (root included, symlinks not followed),
/// children before parents, so that setting times in this order leaves
/// every one as set.
pub fn all_paths(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(p) = stack.pop() {
        let md = fs::symlink_metadata(&p).unwrap_or_else(|e| panic!("lstat {}: {e}", p.display()));
        if md.is_dir() {
            for name in list_dir(&p) {
                stack.push(p.join(name));
            }
        }
        out.push(p);
    }
    out.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    out
}

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

/// Entry names of a directory, sorted by bytes.
pub fn list_dir(dir: &Path) -> Vec<OsString> {
    let mut v: Vec<OsString> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()))
        .map(|e| e.expect("read_dir entry").file_name())
        .collect();
    v.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    v
}

/// `cp -a SRC DST`, which must succeed.
#[track_caller]
pub fn cp_a(src: &Path, dst: &Path) {
    tool_output_ok("cp", [OsStr::new("-a"), src.as_os_str(), dst.as_os_str()]);
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

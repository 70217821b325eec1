//! The ext4 reader (`layout::ext4::read`) judged by real tools:
//!
//! - images a real kernel wrote (mke2fs with EXT4.md's feature set, and
//!   variants: 1 KiB blocks, 32-byte descriptors without checksums, ext3
//!   block maps, ea_inode), and a copy of a synthesized image modified
//!   through a read-write loop mount: every path's metadata, content,
//!   symlink target, device number and xattrs compared with what the
//!   mounted kernel showed (stat, statx btime, getxattr) before unmounting;
//!   every inode's fields, raw timestamps and extents with `debugfs`;
//! - unwritten extents read as zeros even when their blocks hold data;
//! - refused images: needs_recovery, orphans, inline_data, encrypt,
//!   casefold, verity, an unknown INCOMPAT bit;
//! - corruption: bytes flipped in every kind of metadata block never panic
//!   or hang, and with metadata_csum every flip in a checksummed structure
//!   the walk reaches is an error.
//!
//! Needs root (loop mounts), e2fsprogs, attr and acl (setfattr, setfacl).

use layout::ext4::read::{Ext4, Options, ReadError};
use layout::ext4::{export, Ext4Options, Image};
use std::collections::BTreeMap;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

// ---------------------------------------------------------------------------
// tools

fn run(cmd: &mut Command) -> (i32, String) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e} (is the tool installed?)"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

fn stdout_of(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e} (is the tool installed?)"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a shell script in `dir`; it must succeed.
fn sh(dir: &Path, script: &str) {
    let (c, t) = run(Command::new("sh").arg("-ec").arg(script).current_dir(dir));
    assert_eq!(c, 0, "script failed:\n{script}\n{t}");
}

/// `mke2fs -t ext4` with EXT4.md's feature set plus `features`.
fn mkfs(img: &Path, size: &str, block: u32, features: &str, extra: &[&str]) {
    let _ = fs::remove_file(img);
    let mut o = "^resize_inode,sparse_super2,^orphan_file".to_string();
    if !features.is_empty() {
        o.push(',');
        o.push_str(features);
    }
    let (c, t) = run(Command::new("mke2fs")
        .args(["-q", "-F", "-t", "ext4", "-b", &block.to_string(), "-O", &o])
        .args(["-E", "num_backup_sb=0,packed_meta_blocks=1"])
        .args(extra)
        .arg(img)
        .arg(size));
    assert_eq!(c, 0, "mke2fs: {t}");
}

struct Mount(PathBuf);
impl Mount {
    fn new(img: &Path, at: &Path) -> Mount {
        fs::create_dir_all(at).unwrap();
        let (c, t) = run(Command::new("mount").args(["-o", "loop"]).arg(img).arg(at));
        assert_eq!(c, 0, "mount: {t}");
        Mount(at.to_owned())
    }
    /// Unmounts (cleanly: no journal recovery needed afterwards).
    fn unmount(self) {
        let (c, t) = run(Command::new("umount").arg(&self.0));
        assert_eq!(c, 0, "umount: {t}");
        std::mem::forget(self);
    }
}
impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn open(img: &Path) -> Ext4<fs::File> {
    Ext4::open(fs::File::open(img).unwrap())
        .unwrap_or_else(|e| panic!("open {}: {e}", img.display()))
}

// ---------------------------------------------------------------------------
// what a path looks like, from the mounted kernel and from the reader

#[derive(Debug, Clone, PartialEq, Eq)]
struct Meta {
    ino: u64,
    mode: u32,
    uid: u32,
    gid: u32,
    size: u64,
    nlink: u64,
    mtime: (i64, u32),
    ctime: (i64, u32),
    crtime: Option<(i64, u32)>,
    rdev: u64,
    target: Option<Vec<u8>>,
    content: Option<blake3::Hash>,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

fn systime(t: SystemTime) -> (i64, u32) {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => (d.as_secs() as i64, d.subsec_nanos()),
        Err(e) => {
            let d = e.duration();
            if d.subsec_nanos() == 0 {
                (-(d.as_secs() as i64), 0)
            } else {
                (-(d.as_secs() as i64) - 1, 1_000_000_000 - d.subsec_nanos())
            }
        }
    }
}

/// Every path under a mounted filesystem, as the kernel reports it.
fn snapshot_mounted(root: &Path) -> BTreeMap<Vec<u8>, Meta> {
    let mut out = BTreeMap::new();
    let mut stack = vec![PathBuf::from("/")];
    while let Some(rel) = stack.pop() {
        let p = root.join(rel.strip_prefix("/").unwrap());
        let md = fs::symlink_metadata(&p).unwrap();
        let ft = md.file_type();
        let mut xattrs: Vec<(Vec<u8>, Vec<u8>)> = xattr::list(&p)
            .unwrap()
            .map(|n| {
                let v = xattr::get(&p, &n).unwrap().unwrap_or_default();
                (n.as_bytes().to_vec(), v)
            })
            .collect();
        xattrs.sort();
        out.insert(
            rel.as_os_str().as_bytes().to_vec(),
            Meta {
                ino: md.ino(),
                mode: md.mode(),
                uid: md.uid(),
                gid: md.gid(),
                size: md.size(),
                nlink: md.nlink(),
                mtime: (md.mtime(), md.mtime_nsec() as u32),
                ctime: (md.ctime(), md.ctime_nsec() as u32),
                crtime: md.created().ok().map(systime),
                rdev: md.rdev(),
                target: ft
                    .is_symlink()
                    .then(|| fs::read_link(&p).unwrap().as_os_str().as_bytes().to_vec()),
                content: ft.is_file().then(|| {
                    let mut h = blake3::Hasher::new();
                    h.update_reader(fs::File::open(&p).unwrap()).unwrap();
                    h.finalize()
                }),
                xattrs,
            },
        );
        if ft.is_dir() {
            for e in fs::read_dir(&p).unwrap() {
                stack.push(rel.join(e.unwrap().file_name()));
            }
        }
    }
    out
}

/// Every path the reader's walk yields, read the same way.
fn snapshot_reader<R: layout::ext4::read::ReadAt>(fs: &Ext4<R>) -> BTreeMap<Vec<u8>, Meta> {
    let mut out = BTreeMap::new();
    for e in fs.walk() {
        let e = e.unwrap_or_else(|e| panic!("walk: {e}"));
        let i = &e.inode;
        let content = (i.kind == fragments::Kind::Regular).then(|| {
            let f = fs.open_file(i.ino).unwrap();
            let mut h = blake3::Hasher::new();
            let mut buf = vec![0u8; 1 << 20];
            let mut off = 0u64;
            loop {
                let n = f.read_at(off, &mut buf).unwrap();
                if n == 0 {
                    break;
                }
                h.update(&buf[..n]);
                off += n as u64;
            }
            assert_eq!(
                off,
                i.size,
                "{}: read to the end",
                String::from_utf8_lossy(&e.path)
            );
            h.finalize()
        });
        let t = |t: layout::ext4::read::Timestamp| (t.sec, t.nsec);
        let prev = out.insert(
            e.path.clone(),
            Meta {
                ino: i.ino as u64,
                mode: i.mode as u32,
                uid: i.uid,
                gid: i.gid,
                size: i.size,
                nlink: i.links as u64,
                mtime: t(i.mtime),
                ctime: t(i.ctime),
                crtime: i.crtime.map(t),
                rdev: i.rdev(),
                target: i.symlink.clone(),
                content,
                xattrs: i
                    .xattrs
                    .iter()
                    .map(|x| (x.name.clone(), x.value.clone()))
                    .collect(),
            },
        );
        assert!(prev.is_none(), "walk yields {:?} twice", e.path);
    }
    out
}

fn assert_same(kernel: &BTreeMap<Vec<u8>, Meta>, reader: &BTreeMap<Vec<u8>, Meta>) {
    let mut problems = Vec::new();
    for (p, m) in kernel {
        match reader.get(p) {
            None => problems.push(format!(
                "{}: missing from the reader",
                String::from_utf8_lossy(p)
            )),
            Some(r) if r != m => problems.push(format!(
                "{}:\n   kernel {m:?}\n   reader {r:?}",
                String::from_utf8_lossy(p)
            )),
            _ => {}
        }
    }
    for p in reader.keys().filter(|p| !kernel.contains_key(*p)) {
        problems.push(format!(
            "{}: only in the reader",
            String::from_utf8_lossy(p)
        ));
    }
    assert!(
        problems.is_empty(),
        "{} differences (of {} paths):\n{}",
        problems.len(),
        kernel.len(),
        problems[..problems.len().min(20)].join("\n")
    );
}

// ---------------------------------------------------------------------------
// debugfs as the oracle of raw fields

/// Parses `debugfs -R "stat <ino>"` and `ex <ino>` output for every inode
/// the walk met and compares them with the reader's fields.
fn compare_with_debugfs<R: layout::ext4::read::ReadAt>(img: &Path, fs: &Ext4<R>) -> usize {
    let mut inos: Vec<u32> = fs.walk().map(|e| e.unwrap().inode.ino).collect();
    inos.sort_unstable();
    inos.dedup();
    let dir = tempfile::tempdir().unwrap();
    let cmds = dir.path().join("cmds");
    let mut script = String::new();
    for ino in &inos {
        script.push_str(&format!("stat <{ino}>\nex <{ino}>\n"));
    }
    fs::write(&cmds, script).unwrap();
    let out = stdout_of(Command::new("debugfs").arg("-f").arg(&cmds).arg(img));
    let mut sections = out.split("debugfs: ").skip(1);
    let mut multi_level = 0;
    for &ino in &inos {
        let stat = sections.next().expect("a stat section");
        let ex = sections.next().expect("an ex section");
        assert!(stat.starts_with(&format!("stat <{ino}>")), "{stat}");
        let i = fs.inode(ino).unwrap();
        let what = |f: &str| format!("inode {ino}: {f}\n{stat}");
        let field = |name: &str| -> &str {
            let at = stat
                .find(&format!("{name}: "))
                .unwrap_or_else(|| panic!("no {name} in\n{stat}"));
            stat[at + name.len() + 2..]
                .split_whitespace()
                .next()
                .unwrap()
        };
        assert_eq!(
            u32::from_str_radix(field("Mode"), 8).unwrap(),
            (i.mode & 0o7777) as u32,
            "{}",
            what("mode")
        );
        assert_eq!(
            field("User").parse::<u32>().unwrap(),
            i.uid,
            "{}",
            what("uid")
        );
        assert_eq!(
            field("Group").parse::<u32>().unwrap(),
            i.gid,
            "{}",
            what("gid")
        );
        assert_eq!(
            field("Size").parse::<u64>().unwrap(),
            i.size,
            "{}",
            what("size")
        );
        assert_eq!(
            field("Links").parse::<u16>().unwrap(),
            i.links,
            "{}",
            what("links")
        );
        assert_eq!(
            field("Blockcount").parse::<u64>().unwrap(),
            i.blocks_512,
            "{}",
            what("blocks")
        );
        assert_eq!(
            field("Generation").parse::<u32>().unwrap(),
            i.generation,
            "{}",
            what("generation")
        );
        assert_eq!(
            u32::from_str_radix(field("Flags").trim_start_matches("0x"), 16).unwrap(),
            i.flags,
            "{}",
            what("flags")
        );
        assert_eq!(
            field("File ACL").parse::<u64>().unwrap(),
            i.xattr_block,
            "{}",
            what("xattr block")
        );
        for (name, t) in [
            ("ctime", Some(i.ctime)),
            ("atime", Some(i.atime)),
            ("mtime", Some(i.mtime)),
            ("crtime", i.crtime),
        ] {
            let Some(t) = t else { continue };
            let raw = field(name);
            let hex = |h: &str| u32::from_str_radix(h.trim_start_matches("0x"), 16).unwrap();
            let encoded = layout::ext4::disk::encode_time(t.sec, t.nsec);
            match raw.split_once(':') {
                Some((lo, extra)) => {
                    assert_eq!(encoded, (hex(lo), hex(extra)), "{}", what(name))
                }
                // 128-byte inodes: seconds only.
                None => assert_eq!((encoded.0, t.nsec), (hex(raw), 0), "{}", what(name)),
            }
        }
        if let Some((ma, mi)) = i.device {
            let at = stat.find("Device major/minor number: ").unwrap();
            let s = stat[at + 27..].split_whitespace().next().unwrap();
            let (a, b) = s.split_once(':').unwrap();
            assert_eq!(
                (a.parse::<u32>().unwrap(), b.parse::<u32>().unwrap()),
                (ma, mi),
                "{}",
                what("device")
            );
        }
        if let Some(t) = &i.symlink {
            if let Some(at) = stat.find("Fast link dest: \"") {
                let rest = &stat[at + 17..];
                let end = rest.rfind('"').unwrap();
                assert_eq!(&rest.as_bytes()[..end], &t[..], "{}", what("fast symlink"));
            }
        }
        // Extents: debugfs's leaf lines "l/ L  e/ E  lstart - lend  pstart - pend  len [Uninit]".
        let mut theirs = Vec::new();
        let mut levels = 0;
        for line in ex.lines().skip(2) {
            let line2 = line.replace('/', " ");
            let nums: Vec<u64> = line2
                .split_whitespace()
                .filter(|t| *t != "-")
                .map_while(|t| t.parse::<u64>().ok())
                .collect();
            if nums.len() < 2 {
                continue;
            }
            levels = levels.max(nums[1]);
            if nums[0] == nums[1] && nums.len() >= 9 {
                theirs.push(layout::ext4::read::Extent {
                    logical: nums[4],
                    physical: nums[6],
                    len: nums[8] as u32,
                    unwritten: line.contains("Uninit"),
                });
            }
        }
        if levels >= 1 {
            multi_level += 1;
        }
        if i.has_extents() {
            let ours = fs.extents(ino).unwrap();
            let first_diff = ours.iter().zip(&theirs).position(|(a, b)| a != b);
            assert!(
                ours == theirs,
                "inode {ino}: {} extents, debugfs {}; first difference at {first_diff:?}",
                ours.len(),
                theirs.len()
            );
        }
    }
    multi_level
}

// ---------------------------------------------------------------------------
// what the kernel is asked to write

/// Creates, inside a mounted filesystem, everything the reader must get
/// back: several extents, sparse and preallocated files, a deep tree, an
/// htree directory (some names deleted again), symlinks short and long,
/// devices, a fifo, a socket, hard links, xattrs of each namespace (small
/// ones in the inode, large ones in a block), ACLs, owners, modes, and
/// times with nanoseconds before 1970 and after 2038.
fn kernel_writes(root: &Path, many: usize) {
    let bs = fs::metadata(root).unwrap().blksize();
    fs::create_dir_all(root.join("big")).unwrap();
    // Data islands: one extent each; 2000 of them need a depth-2 tree.
    let f = fs::File::create(root.join("big/islands")).unwrap();
    for k in 0..2000u64 {
        f.write_all_at(&[(k % 251) as u8 + 1; 4096], k * 16384)
            .unwrap();
    }
    let f = fs::File::create(root.join("big/few-islands")).unwrap();
    for k in 0..7u64 {
        f.write_all_at(&[k as u8 + 1; 5000], k * (1 << 20) + 77)
            .unwrap();
    }
    drop(f);
    let random: Vec<u8> = (0..3_000_001u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    fs::write(root.join("big/random"), &random).unwrap();
    // Sparse beyond the double-indirect range of 1 KiB block maps.
    let f = fs::File::create(root.join("big/sparse")).unwrap();
    f.set_len(200 << 20).unwrap();
    f.write_all_at(b"middle", 100 << 20).unwrap();
    f.write_all_at(b"end", (200 << 20) - 3).unwrap();
    drop(f);
    sh(
        root,
        &format!(
            "mkdir -p deep many links dev xa times
             printf 'hello\\n' > hello
             : > empty
             ln hello links/hello-1
             ln hello links/hello-2
             ln -s hello short-link
             ln -s {long} long-link
             ln -s {max} max-link
             ln -s /nowhere/at/all dangling
             mknod dev/null c 1 3
             mknod dev/big b 259 70000
             mknod dev/tty c 4 64
             mkfifo dev/fifo
             setfattr -n user.small -v x hello
             setfattr -n user.big -v \"$(head -c {half} /dev/zero | tr '\\0' 'b')\" xa
             setfattr -n trusted.t -v trusted-value xa
             setfattr -n security.s -v security-value xa
             setfattr -n user.empty xa
             setfacl -m u:1000:rw,g:100:r,m::rw hello
             setfacl -d -m u:1000:rwx,g::rx,o::- xa
             chmod 4755 hello
             chmod 1777 times
             chown 1234:70000 empty
             touch -d '2001-02-03 04:05:06.123456789' times/a
             touch -d '1960-06-07 08:09:10.5' times/pre-1970
             touch -d '2300-01-01 00:00:00.999999999' times/after-2038
             touch -h -d '2010-10-10 10:10:10.1' short-link",
            long = "l".repeat(300),
            max = "m".repeat(bs as usize - 1),
            half = bs / 2,
        ),
    );
    // Preallocated (unwritten) extents with data written in the middle,
    // and preallocation past the end of a file.
    sh(
        root,
        "printf 'short' > big/keep-size
         # (block-mapped filesystems cannot preallocate)
         if fallocate -l 3M big/prealloc 2>/dev/null; then
           printf 'written' | dd of=big/prealloc bs=1 seek=1048576 conv=notrunc status=none
           fallocate -n -o 0 -l 1M big/keep-size
         fi",
    );
    // A unix socket.
    nix::sys::stat::mknod(
        &root.join("dev/sock"),
        nix::sys::stat::SFlag::S_IFSOCK,
        nix::sys::stat::Mode::from_bits_truncate(0o755),
        0,
    )
    .unwrap();
    // A deep tree.
    let mut d = root.join("deep");
    for k in 0..60 {
        d = d.join(format!("level-{k}"));
    }
    fs::create_dir_all(&d).unwrap();
    fs::write(d.join("leaf"), b"deep leaf").unwrap();
    // A large directory (htree), some names deleted again.
    for k in 0..many {
        fs::write(
            root.join("many")
                .join(format!("entry-{k:06}-{}", "n".repeat(k % 50))),
            k.to_string(),
        )
        .unwrap();
    }
    for k in (0..many).step_by(7) {
        fs::remove_file(
            root.join("many")
                .join(format!("entry-{k:06}-{}", "n".repeat(k % 50))),
        )
        .unwrap();
    }
    fs::write(root.join("many").join("x".repeat(255)), b"long name").unwrap();
    fs::hard_link(root.join("hello"), root.join("many/hello-3")).unwrap();
    sh(root, "sync");
}

/// Mounts `img`, lets `write` fill it, snapshots what the kernel shows,
/// unmounts, and compares the reader with the snapshot and with debugfs.
/// Returns the opened image and how many inodes had multi-level trees.
fn kernel_round_trip(img: &Path, mnt: &Path, write: impl FnOnce(&Path)) -> (Ext4<fs::File>, usize) {
    let m = Mount::new(img, mnt);
    write(&m.0);
    let kernel = snapshot_mounted(&m.0);
    m.unmount();
    let (c, t) = run(Command::new("e2fsck").arg("-fn").arg(img));
    assert_eq!(c, 0, "e2fsck -fn after the kernel wrote: {t}");
    let fs = open(img);
    let reader = snapshot_reader(&fs);
    assert_same(&kernel, &reader);
    let multi = compare_with_debugfs(img, &fs);
    eprintln!(
        "{}: {} paths identical to the kernel's view, {multi} inodes with extent trees",
        img.display(),
        reader.len()
    );
    (fs, multi)
}

fn htree_dirs(img: &Path, dir: &str) -> bool {
    let (c, t) = run(Command::new("debugfs")
        .args(["-R", &format!("htree {dir}")])
        .arg(img));
    c == 0 && t.contains("Root node dump")
}

#[test]
fn kernel_written_ext4_reads_back() {
    let t = tempfile::tempdir().unwrap();
    let img = t.path().join("k.img");
    mkfs(&img, "256M", 4096, "", &[]);
    let (fs, multi) = kernel_round_trip(&img, &t.path().join("mnt"), |r| kernel_writes(r, 12_000));
    assert!(multi >= 1, "some file has an extent tree below its inode");
    assert!(htree_dirs(&img, "/many"), "/many is an htree directory");
    assert_eq!(fs.superblock().block_size, 4096);
    // The islands file needs a depth-2 tree.
    let ino = fs.lookup(b"/big/islands").unwrap().unwrap();
    assert_eq!(fs.extents(ino).unwrap().len(), 2000);
    let e = fs.read_dir(fs.lookup(b"/many").unwrap().unwrap()).unwrap();
    assert_eq!(e.len(), 12_000 - 12_000usize.div_ceil(7) + 2);
    assert_created(&fs, 4096);
}

/// What `kernel_writes` made, checked against what was asked for (not only
/// against the kernel's view of it).
fn assert_created<R: layout::ext4::read::ReadAt>(fs: &Ext4<R>, bs: usize) {
    let get = |p: &[u8]| {
        let ino = fs
            .lookup(p)
            .unwrap()
            .unwrap_or_else(|| panic!("{}", String::from_utf8_lossy(p)));
        fs.inode(ino).unwrap()
    };
    let hello = get(b"/hello");
    assert_eq!(hello.perm(), 0o4755);
    assert_eq!(hello.links, 4);
    let acl = &hello
        .xattrs
        .iter()
        .find(|x| x.name == b"system.posix_acl_access")
        .expect("an access ACL")
        .value;
    let mut want = 2u32.to_le_bytes().to_vec();
    // setfacl -m u:1000:rw,g:100:r,m::rw, then chmod 4755 (owner rwx,
    // mask and other r-x).
    for (tag, perm, id) in [
        (1u16, 7u16, u32::MAX),
        (2, 6, 1000),
        (4, 4, u32::MAX),
        (8, 4, 100),
        (0x10, 5, u32::MAX),
        (0x20, 5, u32::MAX),
    ] {
        want.extend_from_slice(&tag.to_le_bytes());
        want.extend_from_slice(&perm.to_le_bytes());
        want.extend_from_slice(&id.to_le_bytes());
    }
    assert_eq!(acl, &want, "the access ACL in the VFS format");
    let xa = get(b"/xa");
    let names: Vec<&[u8]> = xa.xattrs.iter().map(|x| &x.name[..]).collect();
    assert_eq!(
        names,
        [
            &b"security.s"[..],
            b"system.posix_acl_default",
            b"trusted.t",
            b"user.big",
            b"user.empty"
        ]
    );
    assert_ne!(xa.xattr_block, 0, "user.big lives in the xattr block");
    assert_eq!(xa.xattrs[3].value, vec![b'b'; bs / 2]);
    assert!(xa.xattrs[4].value.is_empty());
    let empty = get(b"/empty");
    assert_eq!((empty.uid, empty.gid, empty.size), (1234, 70000, 0));
    assert_eq!(get(b"/dev/null").device, Some((1, 3)));
    assert_eq!(get(b"/dev/tty").device, Some((4, 64)));
    assert_eq!(get(b"/dev/big").device, Some((259, 70000)));
    assert_eq!(get(b"/dev/fifo").kind, fragments::Kind::Fifo);
    assert_eq!(get(b"/dev/sock").kind, fragments::Kind::Socket);
    assert_eq!(get(b"/short-link").symlink.as_deref(), Some(&b"hello"[..]));
    assert_eq!(get(b"/long-link").symlink, Some(vec![b'l'; 300]));
    assert_eq!(get(b"/max-link").symlink, Some(vec![b'm'; bs - 1]));
    let t = |p: &[u8]| get(p).mtime;
    // 2001-02-03 04:05:06.123456789 UTC, 1960-06-07 08:09:10.5, 2300-01-01.
    assert_eq!(
        (t(b"/times/a").sec, t(b"/times/a").nsec),
        (981_173_106, 123_456_789)
    );
    assert_eq!(
        (t(b"/times/pre-1970").sec, t(b"/times/pre-1970").nsec),
        (-301_938_650, 500_000_000)
    );
    assert_eq!(t(b"/times/after-2038").sec, 10_413_792_000);
    let deep: Vec<u8> = (0..60)
        .map(|k| format!("/level-{k}"))
        .collect::<String>()
        .into_bytes();
    let leaf = fs
        .lookup(&[&b"/deep"[..], &deep, b"/leaf"].concat())
        .unwrap()
        .unwrap();
    let mut b = [0u8; 9];
    assert_eq!(fs.read(leaf, 0, &mut b).unwrap(), 9);
    assert_eq!(&b, b"deep leaf");
    let pre = fs.lookup(b"/big/prealloc").unwrap().unwrap();
    assert!(fs.extents(pre).unwrap().iter().any(|e| e.unwritten));
}

#[test]
fn kernel_written_variants_read_back() {
    // 1 KiB blocks; 32-byte descriptors and no checksums (gdt_csum); ext3
    // block maps (no extents); values in EA inodes; 128-byte inodes (no
    // nanoseconds, no creation time, no in-inode xattrs).
    let t = tempfile::tempdir().unwrap();
    for (name, block, features, extra) in [
        ("1k", 1024, "", &[][..]),
        ("nocsum", 4096, "^64bit,^metadata_csum,uninit_bg", &[][..]),
        (
            "ext3",
            1024,
            "^extent,^64bit,^flex_bg,^huge_file,^metadata_csum",
            &[][..],
        ),
        ("ea_inode", 4096, "ea_inode", &[][..]),
        ("small-inodes", 4096, "", &["-I", "128"][..]),
        ("meta_bg", 1024, "meta_bg,^64bit", &[][..]),
    ] {
        let img = t.path().join(format!("{name}.img"));
        mkfs(&img, "300M", block, features, extra);
        let (fs, _) = kernel_round_trip(&img, &t.path().join("mnt"), |r| {
            kernel_writes(r, 3000);
            if name == "ea_inode" {
                let v: Vec<u8> = (0..20_000u32).map(|i| (i % 253) as u8).collect();
                xattr::set(r.join("hello"), "user.huge", &v).unwrap();
                xattr::set(r.join("empty"), "user.huge", &v).unwrap();
            }
        });
        let ino = fs.lookup(b"/big/sparse").unwrap().unwrap();
        let mut b = [0u8; 6];
        assert_eq!(fs.read(ino, 100 << 20, &mut b).unwrap(), 6, "{name}");
        assert_eq!(&b, b"middle", "{name}");
        if ["1k", "nocsum", "ea_inode", "meta_bg"].contains(&name) {
            assert_created(&fs, block as usize);
        }
        if name == "ext3" {
            assert!(
                !fs.inode(ino).unwrap().has_extents(),
                "ext3 files use block maps"
            );
        }
        if name == "ea_inode" {
            let i = fs.inode(fs.lookup(b"/hello").unwrap().unwrap()).unwrap();
            let huge = i.xattrs.iter().find(|x| x.name == b"user.huge").unwrap();
            assert_eq!(huge.value.len(), 20_000);
        }
    }
}

#[test]
fn unwritten_extents_read_as_zeros_whatever_their_blocks_hold() {
    let t = tempfile::tempdir().unwrap();
    let img = t.path().join("u.img");
    mkfs(&img, "64M", 4096, "", &[]);
    {
        let m = Mount::new(&img, &t.path().join("mnt"));
        sh(
            &m.0,
            "fallocate -l 1M pre
             printf 'written' | dd of=pre bs=1 seek=300000 conv=notrunc status=none
             printf 'tail' > keep
             fallocate -n -o 4096 -l 64K keep
             sync",
        );
        m.unmount();
    }
    let fs = open(&img);
    let pre = fs.lookup(b"/pre").unwrap().unwrap();
    let keep = fs.lookup(b"/keep").unwrap().unwrap();
    let mut stale = 0;
    {
        let f = fs::OpenOptions::new().write(true).open(&img).unwrap();
        for ino in [pre, keep] {
            for e in fs.extents(ino).unwrap().iter().filter(|e| e.unwritten) {
                f.write_all_at(&vec![0xAA; e.len as usize * 4096], e.physical * 4096)
                    .unwrap();
                stale += 1;
            }
        }
    }
    assert!(stale >= 2, "fallocate made unwritten extents ({stale})");
    let fs = open(&img);
    let mut all = vec![0xFFu8; 1 << 20];
    assert_eq!(fs.read(pre, 0, &mut all).unwrap(), 1 << 20);
    let mut want = vec![0u8; 1 << 20];
    want[300_000..300_007].copy_from_slice(b"written");
    assert!(
        all == want,
        "unwritten blocks read as zeros, the written ones as written"
    );
    // Past the end: a short read, then nothing.
    let mut b = [0u8; 16];
    assert_eq!(fs.read(keep, 0, &mut b).unwrap(), 4);
    assert_eq!(&b[..4], b"tail");
    assert_eq!(fs.read(keep, 4, &mut b).unwrap(), 0);
    assert_eq!(fs.read(keep, 1 << 40, &mut b).unwrap(), 0);
}

// ---------------------------------------------------------------------------
// synthesized images

fn build_image(tree: &Path, dir: &Path, free: u64) -> PathBuf {
    let key = fragments::SigningKey::from_bytes(&[5; 32]);
    let frag_path = dir.join("t.frag");
    fragments::build(
        tree,
        &frag_path,
        &key,
        &fragments::BuildOptions::default(),
        &fragments::NoProgress,
    )
    .unwrap();
    let frag =
        fragments::Fragment::open(&frag_path, fragments::Trust::Keys(&[key.verifying_key()]))
            .unwrap();
    let merged = layout::merge(vec![Arc::new(frag)]).unwrap();
    let img = Image::build(
        &merged,
        &Ext4Options {
            label: "test".into(),
            free_bytes: free,
            uuid: None,
        },
    )
    .unwrap();
    let out = dir.join("t.img");
    let f = fs::File::create(&out).unwrap();
    export::write_image(&merged, &img, &f, &|_| {}).unwrap();
    out
}

/// A source tree for a fragment: files large and small, an extent tree,
/// a large directory, links, devices, xattrs, ACLs, owners, times.
fn source_tree(root: &Path) {
    fs::create_dir_all(root.join("etc/sub")).unwrap();
    fs::create_dir_all(root.join("many")).unwrap();
    fs::write(root.join("etc/hello"), b"hello\n").unwrap();
    fs::write(root.join("etc/empty"), b"").unwrap();
    fs::write(
        root.join("etc/sub/big"),
        (0..300_000u32).map(|i| (i % 251) as u8).collect::<Vec<_>>(),
    )
    .unwrap();
    let f = fs::File::create(root.join("etc/islands")).unwrap();
    f.set_len(64 << 20).unwrap();
    for k in 0..40u64 {
        f.write_all_at(&[k as u8 + 1; 5000], k * (1 << 20)).unwrap();
    }
    for k in 0..3000 {
        fs::write(root.join("many").join(format!("f{k:05}")), k.to_string()).unwrap();
    }
    sh(
        root,
        &format!(
            "ln etc/hello etc/hello-link
             ln -s hello etc/link
             ln -s {long} etc/longlink
             mknod etc/null c 1 3
             mknod etc/bigdev b 259 70000
             mkfifo etc/fifo
             setfattr -n user.comment -v 'a value' etc/hello
             setfattr -n user.big -v \"$(head -c 3000 /dev/zero | tr '\\0' 'b')\" etc/sub/big
             setfacl -m u:1000:rw etc/empty
             setfacl -d -m u:1000:rwx etc/sub
             chown 1234:70000 etc/sub/big
             chmod 4755 etc/hello
             touch -d '2001-02-03 04:05:06.123456789' etc/hello
             touch -d '1960-06-07 08:09:10.5' etc/sub/big",
            long = "x/".repeat(150)
        ),
    );
}

#[test]
fn synthesized_image_reads_like_the_kernel_sees_it() {
    let t = tempfile::tempdir().unwrap();
    let tree = t.path().join("tree");
    source_tree(&tree);
    let img = build_image(&tree, t.path(), 64 << 20);
    // Read-only mount: the kernel's view of the pristine image.
    let kernel = {
        let at = t.path().join("mnt");
        fs::create_dir_all(&at).unwrap();
        let (c, out) = run(Command::new("mount")
            .args(["-o", "loop,ro"])
            .arg(&img)
            .arg(&at));
        assert_eq!(c, 0, "mount: {out}");
        let m = Mount(at);
        let s = snapshot_mounted(&m.0);
        m.unmount();
        s
    };
    let fs = open(&img);
    assert_same(&kernel, &snapshot_reader(&fs));
    assert!(
        compare_with_debugfs(&img, &fs) >= 1,
        "/etc/islands has a tree"
    );
    // The source tree agrees on what fragments carry.
    let src = snapshot_mounted(&tree);
    let ours = snapshot_reader(&fs);
    for (p, s) in &src {
        let r = &ours[p];
        let what = String::from_utf8_lossy(p);
        assert_eq!(
            (s.mode, s.uid, s.gid, s.rdev, &s.target, &s.content, &s.xattrs),
            (r.mode, r.uid, r.gid, r.rdev, &r.target, &r.content, &r.xattrs),
            "{what}"
        );
        if p != b"/" {
            assert_eq!(s.mtime, r.mtime, "{what}: mtime");
        }
    }

    // A copy written by the kernel through a read-write mount: what a
    // guest does to the volume.
    let (fs, _) = kernel_round_trip(&img, &t.path().join("mnt"), |r| {
        sh(
            r,
            "rm -f etc/hello-link many/f0001*
             mv etc/sub/big etc/big-moved
             printf more >> etc/hello
             chmod 600 etc/empty
             setfattr -n user.new -v 1 etc/islands
             setfattr -x user.comment etc/hello
             mkdir -p new/dir
             head -c 5000000 /dev/urandom > new/dir/f
             fallocate -l 1M new/pre
             ln -s ../etc/hello new/link",
        );
        kernel_writes(&r.join("new"), 2000);
    });
    assert!(fs.lookup(b"/etc/sub/big").unwrap().is_none());
    assert!(fs.lookup(b"/etc/big-moved").unwrap().is_some());
}

// ---------------------------------------------------------------------------
// refused images

fn open_err(img: &Path) -> ReadError {
    match Ext4::open(fs::File::open(img).unwrap()) {
        Ok(_) => panic!("{} opened", img.display()),
        Err(e) => e,
    }
}

fn debugfs_w(img: &Path, cmd: &str) {
    let (c, t) = run(Command::new("debugfs").args(["-w", "-R", cmd]).arg(img));
    assert_eq!(c, 0, "debugfs -w -R {cmd}: {t}");
}

#[test]
fn refused_features_and_states() {
    let t = tempfile::tempdir().unwrap();
    let img = t.path().join("r.img");
    for (feature, name) in [
        ("inline_data", "inline_data"),
        ("encrypt", "encrypt"),
        ("casefold", "casefold"),
        ("verity", "verity"),
    ] {
        mkfs(&img, "16M", 4096, feature, &[]);
        let e = open_err(&img);
        assert!(
            matches!(&e, ReadError::Refused { feature: f, .. } if *f == name),
            "{feature}: {e}"
        );
        assert!(e.to_string().contains(name), "{e}");
    }

    mkfs(&img, "16M", 4096, "", &[]);
    open(&img);
    debugfs_w(&img, "feature needs_recovery");
    let e = open_err(&img);
    assert!(
        e.to_string()
            .starts_with("refused: needs_recovery: the journal"),
        "{e}"
    );

    mkfs(&img, "16M", 4096, "", &[]);
    debugfs_w(&img, "ssv last_orphan 12");
    let e = open_err(&img);
    assert!(e.to_string().contains("s_last_orphan is inode 12"), "{e}");

    // orphan_file is fine while it lists nothing, refused once it does.
    mkfs(&img, "16M", 4096, "orphan_file", &[]);
    open(&img);
    debugfs_w(&img, "feature orphan_present");
    let e = open_err(&img);
    assert!(e.to_string().contains("orphan_present"), "{e}");

    // An INCOMPAT bit nobody knows (with a correct superblock checksum).
    mkfs(&img, "16M", 4096, "", &[]);
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&img)
        .unwrap();
    let mut sb = [0u8; 1024];
    f.read_exact_at(&mut sb, 1024).unwrap();
    sb[0x63] |= 0x40; // bit 30
    let c = layout::ext4::disk::crc(!0, &sb[..0x3FC]);
    sb[0x3FC..].copy_from_slice(&c.to_le_bytes());
    f.write_all_at(&sb, 1024).unwrap();
    let e = open_err(&img);
    assert!(e.to_string().contains("bits 0x40000000"), "{e}");

    // Not ext4 at all, and a truncated image.
    fs::write(&img, vec![0u8; 8192]).unwrap();
    assert!(open_err(&img).to_string().contains("s_magic"));
    mkfs(&img, "16M", 4096, "", &[]);
    let bytes = fs::read(&img).unwrap();
    for n in [0, 1500, 4096, 4096 + 100, 8192, 1 << 20] {
        let r = Ext4::open(&bytes[..n]);
        if let Ok(fs) = r {
            assert!(
                fs.walk().any(|e| e.is_err()),
                "truncated to {n}: walk fails"
            );
        }
    }
}

// ---------------------------------------------------------------------------
// corruption

/// Opens and walks everything (reading every file up to a cap): Ok(paths)
/// or the first error. Never panics if the reader is right.
fn read_everything(img: &[u8]) -> Result<usize, ReadError> {
    read_everything_with(img, Options::default())
}

fn read_everything_with(img: &[u8], opts: Options) -> Result<usize, ReadError> {
    let fs = Ext4::open_with(img, opts)?;
    let mut n = 0;
    let mut buf = vec![0u8; 1 << 16];
    for e in fs.walk() {
        let e = e?;
        n += 1;
        match e.inode.kind {
            fragments::Kind::Regular => {
                let f = fs.open_file(e.ino())?;
                let mut off = 0;
                while off < (4 << 20) {
                    let r = f.read_at(off, &mut buf)?;
                    if r == 0 {
                        break;
                    }
                    off += r as u64;
                }
            }
            fragments::Kind::Directory => {
                fs.read_dir(e.ino())?;
            }
            _ => {
                fs.extents(e.ino())?;
            }
        }
    }
    Ok(n)
}

/// Runs `f` on another thread; fails if it panics or takes over `limit`.
fn bounded<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit)
        .unwrap_or_else(|e| panic!("did not finish within {limit:?} (a hang or a panic): {e}"))
}

/// A small kernel-written image with every structure worth corrupting:
/// an extent tree block, an htree directory, an xattr block.
fn corruption_image(dir: &Path, features: &str) -> Vec<u8> {
    let img = dir.join("c.img");
    mkfs(&img, "16M", 4096, features, &["-N", "4096"]);
    let m = Mount::new(&img, &dir.join("mnt"));
    let f = fs::File::create(m.0.join("islands")).unwrap();
    for k in 0..30u64 {
        f.write_all_at(&[k as u8 + 1; 4096], k * 16384).unwrap();
    }
    drop(f);
    fs::create_dir(m.0.join("dir")).unwrap();
    for k in 0..400 {
        fs::write(m.0.join("dir").join(format!("name-{k:04}")), b"x").unwrap();
    }
    sh(
        &m.0,
        "setfattr -n user.big -v \"$(head -c 1000 /dev/zero | tr '\\0' 'v')\" islands
         setfacl -m u:1000:r islands
         ln -s target link
         mknod dev c 1 3
         sync",
    );
    m.unmount();
    fs::read(&img).unwrap()
}

/// Byte ranges of the structures to corrupt: (name, start, len, checksummed).
fn structures(img: &[u8]) -> Vec<(String, usize, usize, bool)> {
    let fs = Ext4::open(img).unwrap();
    let bs = fs.superblock().block_size as usize;
    let islands = fs.lookup(b"/islands").unwrap().unwrap();
    let dir = fs.lookup(b"/dir").unwrap().unwrap();
    let i = fs.inode(islands).unwrap();
    let mut out = vec![
        ("superblock".to_string(), 1024, 1024, true),
        (
            "group descriptor 0".to_string(),
            bs,
            fs.superblock().desc_size as usize,
            true,
        ),
        (
            "islands inode".to_string(),
            fs.inode_offset(islands).unwrap() as usize,
            fs.superblock().inode_size as usize,
            true,
        ),
        (
            "dir inode".to_string(),
            fs.inode_offset(dir).unwrap() as usize,
            fs.superblock().inode_size as usize,
            true,
        ),
        (
            "root inode".to_string(),
            fs.inode_offset(2).unwrap() as usize,
            fs.superblock().inode_size as usize,
            true,
        ),
        (
            "xattr block".to_string(),
            i.xattr_block as usize * bs,
            bs,
            true,
        ),
    ];
    // The extent tree block: i_block's first index entry's leaf.
    let iblock = fs.inode_offset(islands).unwrap() as usize + 0x28;
    assert_eq!(
        u16::from_le_bytes([img[iblock + 6], img[iblock + 7]]),
        1,
        "depth-1 tree"
    );
    let leaf = u32::from_le_bytes(img[iblock + 16..iblock + 20].try_into().unwrap()) as usize;
    out.push(("extent block".into(), leaf * bs, bs, true));
    let dmap = fs.extents(dir).unwrap();
    assert!(
        fs.inode(dir).unwrap().flags & layout::ext4::disk::EXT4_INDEX_FL != 0,
        "/dir is an htree"
    );
    let phys = |l: u64| {
        let e = dmap
            .iter()
            .find(|e| e.logical <= l && l < e.logical + e.len as u64)
            .unwrap();
        (e.physical + l - e.logical) as usize * bs
    };
    out.push(("dx root".into(), phys(0), bs, false));
    out.push(("dir leaf".into(), phys(1), bs, true));
    let root = fs.extents(2).unwrap();
    out.push((
        "root dir block".into(),
        root[0].physical as usize * bs,
        bs,
        true,
    ));
    out
}

/// Flips `samples` bytes spread over each structure (xor 0x01, 0x80,
/// 0xFF, set to 0): never a panic or a hang; with checksums, an error.
fn flip_structures(img: Vec<u8>, checksummed: bool, samples: usize) -> (usize, usize) {
    let img = Arc::new(img);
    let baseline = read_everything(&img).expect("the intact image reads");
    let mut tried = 0;
    let mut unverified_ok = 0;
    for (name, start, len, covered) in structures(&img) {
        let step = (len / samples).max(1);
        for (k, off) in (start..start + len).step_by(step).enumerate() {
            let op = k % 4;
            let mut b = img.as_ref().clone();
            b[off] = match op {
                0 => b[off] ^ 0x01,
                1 => b[off] ^ 0x80,
                2 => b[off] ^ 0xFF,
                _ => 0,
            };
            if b[off] == img[off] {
                continue;
            }
            tried += 1;
            let what = format!("{name}: byte {} (image byte {off}) op {op}", off - start);
            let what2 = what.clone();
            let (r, unverified) = bounded(Duration::from_secs(20), move || {
                std::panic::catch_unwind(|| {
                    let unverified = read_everything_with(
                        &b,
                        Options {
                            verify_checksums: false,
                        },
                    );
                    (read_everything(&b), unverified)
                })
                .unwrap_or_else(|_| panic!("{what2}: panicked"))
            });
            // Checksums off, a flip that only broke a checksum reads as
            // the intact image did.
            if let (Err(ReadError::Checksum { .. }), Ok(n)) = (&r, &unverified) {
                unverified_ok += 1;
                assert!(*n <= baseline + 1, "{what}: {n} paths");
            }
            // With checksums: an error, or (bytes no checksum covers,
            // such as unused htree index slots) the same tree.
            if checksummed {
                match r {
                    Err(_) => {}
                    Ok(_) if covered => panic!("{what}: read without an error"),
                    Ok(n) => assert_eq!(n, baseline, "{what}: paths"),
                }
            }
        }
    }
    (tried, unverified_ok)
}

#[test]
fn flipped_metadata_bytes_are_errors_with_checksums() {
    let t = tempfile::tempdir().unwrap();
    let img = corruption_image(t.path(), "");
    let (tried, unverified_ok) = flip_structures(img, true, 96);
    assert!(tried > 500, "{tried} flips");
    assert!(
        unverified_ok > 50,
        "{unverified_ok} flips read with checksums ignored"
    );
}

#[test]
fn flipped_metadata_bytes_never_panic_without_checksums() {
    let t = tempfile::tempdir().unwrap();
    let img = corruption_image(t.path(), "^metadata_csum");
    let (tried, _) = flip_structures(img.clone(), false, 256);
    assert!(tried > 1000, "{tried} flips");
    // And random bytes anywhere in the first 64 blocks (all the metadata
    // of this image), a few at a time.
    let img = Arc::new(img);
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for _ in 0..400 {
        let mut b = img.as_ref().clone();
        for _ in 0..(next() % 4 + 1) {
            let off = (next() % (64 * 4096)) as usize;
            b[off] = next() as u8;
        }
        let _ = bounded(Duration::from_secs(20), move || {
            std::panic::catch_unwind(|| read_everything(&b)).expect("no panic")
        });
    }
}

#[test]
fn a_directory_cycle_is_an_error() {
    // Point a subdirectory's entry at its own parent: the walk must stop.
    let t = tempfile::tempdir().unwrap();
    let img = t.path().join("cy.img");
    mkfs(&img, "16M", 4096, "^metadata_csum", &[]);
    {
        let m = Mount::new(&img, &t.path().join("mnt"));
        fs::create_dir_all(m.0.join("a/b")).unwrap();
        m.unmount();
    }
    let fs = open(&img);
    let a = fs.lookup(b"/a").unwrap().unwrap();
    drop(fs);
    // Make /a/b's entry name /a's own inode: a hard-linked directory, a cycle.
    debugfs_w(&img, "unlink /a/b");
    debugfs_w(&img, &format!("link <{a}> /a/b"));
    let fs = open(&img);
    let r: Result<Vec<_>, _> = fs.walk().collect();
    let e = r.expect_err("a cycle is an error");
    assert!(e.to_string().contains("reached a second time"), "{e}");
}

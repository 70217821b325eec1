//! The generated ext4 image judged by real tools: e2fsck (read-only and
//! repairing, which must change nothing), a loop mount compared with the
//! source tree, and a read-write mount that allocates and frees, after
//! which e2fsck is clean again. Single-fragment volumes here: the tree maps
//! 1:1 to a fragment, and the merge has its own tests.

use fragments::{BuildOptions, Fragment, Kind, SigningKey, Trust};
use layout::ext4::{export, Ext4Options, Image};
use layout::merge::{Entry, Merged, Node, XattrSource};
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

fn single(frag: Fragment) -> Merged {
    let m = frag.metadata();
    let mut nodes = Vec::new();
    for (i, ino) in m.inodes.iter().enumerate() {
        let (first_entry, entry_count) = match &ino.body {
            fragments::Body::Directory { entries } => (entries.start, entries.end - entries.start),
            _ => (0, 0),
        };
        nodes.push(Node {
            kind: ino.kind,
            perm: ino.perm,
            uid: ino.uid,
            gid: ino.gid,
            mtime: ino.mtime,
            xattrs: if ino.xattrs.is_empty() {
                XattrSource::None
            } else {
                XattrSource::Inode {
                    frag: 0,
                    ino: i as u32,
                }
            },
            source: if ino.kind == Kind::Directory {
                None
            } else {
                Some((0, i as u32))
            },
            first_entry,
            entry_count,
            nlink: m.nlink[i],
            parent: m.parent[i],
        });
    }
    let entries = m
        .dentries
        .iter()
        .map(|d| Entry {
            name: m.name(d).to_vec(),
            node: d.inode,
        })
        .collect();
    Merged {
        fragments: vec![Arc::new(frag)],
        nodes,
        entries,
    }
}

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

/// e2fsck -fn: exit 0 and nothing but pass lines and the summary.
fn assert_fsck_clean(img: &Path) {
    let (code, text) = run(Command::new("e2fsck").arg("-fn").arg(img));
    let noise: Vec<&str> = text
        .lines()
        .filter(|l| {
            !(l.starts_with("Pass ")
                || l.starts_with("e2fsck ")
                || l.contains("non-contiguous")
                || l.trim().is_empty())
        })
        .collect();
    assert!(
        code == 0 && noise.is_empty(),
        "e2fsck -fn {}: exit {code}\n{text}",
        img.display()
    );
}

/// e2fsck -fy on a sparse copy exits 0 and changes nothing past block 0.
fn assert_fsck_fixes_nothing(img: &Path) {
    let copy = img.with_extension("fy");
    let (c, t) = run(Command::new("cp")
        .arg("--sparse=always")
        .arg(img)
        .arg(&copy));
    assert_eq!(c, 0, "{t}");
    let (code, text) = run(Command::new("e2fsck").arg("-fy").arg(&copy));
    assert_eq!(code, 0, "e2fsck -fy: {text}");
    let (c, t) = run(Command::new("cmp").args(["-i", "4096"]).arg(img).arg(&copy));
    assert_eq!(c, 0, "e2fsck -fy changed the image past block 0: {t}");
    fs::remove_file(copy).unwrap();
}

fn build_image(tree: &Path, dir: &Path, free: u64, opts: BuildOptions) -> (PathBuf, Image) {
    let key = SigningKey::from_bytes(&[5; 32]);
    let frag_path = dir.join("t.frag");
    fragments::build(tree, &frag_path, &key, &opts, &fragments::NoProgress).unwrap();
    let frag = Fragment::open(&frag_path, Trust::Keys(&[key.verifying_key()])).unwrap();
    let merged = single(frag);
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
    (out, img)
}

struct Mount(PathBuf);
impl Mount {
    fn new(img: &Path, at: &Path, ro: bool) -> Mount {
        fs::create_dir_all(at).unwrap();
        let opts = if ro { "loop,ro" } else { "loop" };
        let (c, t) = run(Command::new("mount").args(["-o", opts]).arg(img).arg(at));
        assert_eq!(c, 0, "mount: {t}");
        Mount(at.to_owned())
    }
}
impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// Compares every entry of `src` with `dst`: type, mode, owner, ns mtime,
/// link count, content, symlink target, device number, xattrs.
fn compare_trees(src: &Path, dst: &Path) {
    let (c, t) = run(Command::new("diff")
        .args(["-r", "--no-dereference"])
        .arg(src)
        .arg(dst)
        .args([
            "-x",
            "lost+found",
            "-x",
            "fifo",
            "-x",
            "sock",
            "-x",
            "null",
            "-x",
            "bigdev",
        ]));
    assert_eq!(c, 0, "diff -r: {t}");
    let mut stack = vec![PathBuf::new()];
    let mut count = 0;
    while let Some(rel) = stack.pop() {
        let (a, b) = (src.join(&rel), dst.join(&rel));
        let (ma, mb) = (
            fs::symlink_metadata(&a).unwrap(),
            fs::symlink_metadata(&b).unwrap(),
        );
        count += 1;
        let what = |f: &str| format!("{f} of {}", rel.display());
        assert_eq!(ma.mode(), mb.mode(), "{}", what("mode"));
        assert_eq!(
            (ma.uid(), ma.gid()),
            (mb.uid(), mb.gid()),
            "{}",
            what("owner")
        );
        if !rel.as_os_str().is_empty() {
            assert_eq!(
                (ma.mtime(), ma.mtime_nsec()),
                (mb.mtime(), mb.mtime_nsec()),
                "{}",
                what("mtime")
            );
        }
        assert_eq!(
            ma.nlink(),
            mb.nlink() - (rel.as_os_str().is_empty() as u64),
            "{}",
            what("nlink")
        );
        assert_eq!(ma.rdev(), mb.rdev(), "{}", what("rdev"));
        let xa: Vec<_> = xattr::list(&a)
            .unwrap()
            .map(|n| (n.clone(), xattr::get(&a, &n).unwrap()))
            .collect();
        let mut xb: Vec<_> = xattr::list(&b)
            .unwrap()
            .map(|n| (n.clone(), xattr::get(&b, &n).unwrap()))
            .collect();
        let mut xa = xa;
        xa.sort();
        xb.sort();
        assert_eq!(xa, xb, "{}", what("xattrs"));
        if ma.is_dir() {
            for e in fs::read_dir(&a).unwrap() {
                stack.push(rel.join(e.unwrap().file_name()));
            }
        }
    }
    assert!(count > 0);
}

fn set_mtime(p: &Path, sec: i64, nsec: i64) {
    let t = nix::sys::time::TimeSpec::new(sec, nsec);
    nix::sys::stat::utimensat(
        None,
        p,
        &t,
        &t,
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )
    .unwrap();
}

fn acl(entries: &[(u16, u16, u32)]) -> Vec<u8> {
    let mut v = 2u32.to_le_bytes().to_vec();
    for (tag, perm, id) in entries {
        v.extend_from_slice(&tag.to_le_bytes());
        v.extend_from_slice(&perm.to_le_bytes());
        v.extend_from_slice(&id.to_le_bytes());
    }
    v
}

/// A tree with every entry kind and attribute the volume must carry.
fn rich_tree(root: &Path) {
    fs::create_dir_all(root.join("etc/sub")).unwrap();
    fs::create_dir_all(root.join("usr/lib")).unwrap();
    fs::write(root.join("etc/hello"), b"hello\n").unwrap();
    fs::write(root.join("etc/empty"), b"").unwrap();
    fs::write(
        root.join("etc/sub/big"),
        (0..300_000u32).map(|i| (i % 251) as u8).collect::<Vec<_>>(),
    )
    .unwrap();
    fs::write(
        root.join("etc/sub/big-copy"),
        (0..300_000u32).map(|i| (i % 251) as u8).collect::<Vec<_>>(),
    )
    .unwrap();
    fs::hard_link(root.join("etc/hello"), root.join("usr/hello-link")).unwrap();
    std::os::unix::fs::symlink("hello", root.join("etc/link")).unwrap();
    std::os::unix::fs::symlink("x/".repeat(150), root.join("etc/longlink")).unwrap();
    // A sparse file with many data islands: more than 4 extents -> extent tree.
    let f = fs::File::create(root.join("usr/lib/islands")).unwrap();
    f.set_len(64 << 20).unwrap();
    for k in 0..40u64 {
        std::os::unix::fs::FileExt::write_all_at(&f, &[k as u8 + 1; 5000], k * (1 << 20)).unwrap();
    }
    // Devices, fifo, socket.
    use nix::sys::stat::{makedev, mknod, Mode, SFlag};
    mknod(
        &root.join("etc/null"),
        SFlag::S_IFCHR,
        Mode::from_bits_truncate(0o666),
        makedev(1, 3),
    )
    .unwrap();
    mknod(
        &root.join("etc/bigdev"),
        SFlag::S_IFBLK,
        Mode::from_bits_truncate(0o660),
        makedev(259, 70000),
    )
    .unwrap();
    mknod(
        &root.join("etc/fifo"),
        SFlag::S_IFIFO,
        Mode::from_bits_truncate(0o644),
        0,
    )
    .unwrap();
    mknod(
        &root.join("etc/sock"),
        SFlag::S_IFSOCK,
        Mode::from_bits_truncate(0o755),
        0,
    )
    .unwrap();
    // Xattrs: user, capability, ACLs (access on a file, default on a dir).
    xattr::set(root.join("etc/hello"), "user.comment", b"a value").unwrap();
    xattr::set(root.join("etc/sub/big"), "user.comment", b"a value").unwrap(); // identical set: shared block
    let cap: Vec<u8> = [0x0200_0001u32, 0x400, 0, 0, 0]
        .iter()
        .flat_map(|w| w.to_le_bytes())
        .collect();
    xattr::set(root.join("usr/lib/islands"), "security.capability", &cap).unwrap();
    xattr::set(
        root.join("etc/empty"),
        "system.posix_acl_access",
        &acl(&[
            (1, 6, 0),
            (2, 4, 1000),
            (4, 4, 0),
            (0x10, 6, 0),
            (0x20, 4, 0),
        ]),
    )
    .unwrap();
    xattr::set(
        root.join("etc/sub"),
        "system.posix_acl_default",
        &acl(&[
            (1, 7, 0),
            (4, 5, 0),
            (8, 5, 1000),
            (0x10, 7, 0),
            (0x20, 5, 0),
        ]),
    )
    .unwrap();
    // Owners, odd modes, ns and pre-1970 times.
    nix::unistd::chown(
        &root.join("etc/sub/big"),
        Some(nix::unistd::Uid::from_raw(1234)),
        Some(nix::unistd::Gid::from_raw(70000)),
    )
    .unwrap();
    fs::set_permissions(root.join("etc/hello"), fs::Permissions::from_mode(0o4755)).unwrap();
    fs::set_permissions(root.join("usr/lib"), fs::Permissions::from_mode(0o1777)).unwrap();
    set_mtime(&root.join("etc/hello"), 1_600_000_000, 123_456_789);
    set_mtime(&root.join("etc/sub/big"), -86_400 * 365, 5);
    set_mtime(&root.join("usr/lib/islands"), 1_000_000_000, 999_999_999);
    for d in ["etc/sub", "etc", "usr/lib", "usr", ""] {
        set_mtime(&root.join(d), 1_700_000_000, 42);
    }
}

#[test]
fn rich_tree_is_clean_and_mounts_identical() {
    let t = tempfile::tempdir().unwrap();
    let tree = t.path().join("tree");
    rich_tree(&tree);
    let (img, _) = build_image(&tree, t.path(), 16 << 20, BuildOptions::default());
    assert_fsck_clean(&img);
    assert_fsck_fixes_nothing(&img);
    let _ = run(Command::new("debugfs")
        .args(["-R", "stat /usr/lib/islands"])
        .arg(&img));
    {
        let m = Mount::new(&img, &t.path().join("mnt"), true);
        compare_trees(&tree, &m.0);
    }
}

#[test]
fn read_write_mount_allocates_and_stays_clean() {
    let t = tempfile::tempdir().unwrap();
    let tree = t.path().join("tree");
    rich_tree(&tree);
    let (img, _) = build_image(&tree, t.path(), 32 << 20, BuildOptions::default());
    {
        let m = Mount::new(&img, &t.path().join("mnt"), false);
        let (c, t2) = run(Command::new("df").arg("-B1").arg(&m.0));
        assert_eq!(c, 0, "{t2}");
        // Read everything, create, grow, delete.
        let (c, t2) = run(Command::new("sh").arg("-c").arg(format!(
            "cd {} && cat $(find . -type f) > /dev/null && mkdir -p new/dir && head -c 5000000 /dev/urandom > new/dir/f && \
             for i in $(seq 1 200); do echo $i > new/n$i; done && cat etc/sub/big >> etc/hello && rm -f etc/sub/big-copy usr/lib/islands && \
             rm -f new/n1* && sync",
            m.0.display()
        )));
        assert_eq!(c, 0, "{t2}");
    }
    assert_fsck_clean(&img);
}

#[test]
fn directory_of_100k_entries_uses_htree() {
    let t = tempfile::tempdir().unwrap();
    let tree = t.path().join("tree");
    fs::create_dir_all(tree.join("many")).unwrap();
    for i in 0..100_000 {
        fs::write(
            tree.join("many")
                .join(format!("entry-{i:06}-{}", "n".repeat(i % 40))),
            b"",
        )
        .unwrap();
    }
    // Many hard links to one file, across directories.
    fs::create_dir_all(tree.join("links")).unwrap();
    fs::write(tree.join("links/target"), b"linked").unwrap();
    for i in 0..2000 {
        let dir = if i % 2 == 0 { "links" } else { "many" };
        fs::hard_link(
            tree.join("links/target"),
            tree.join(dir).join(format!("hl-{i:05}")),
        )
        .unwrap();
    }
    // A 255-byte name and a deep path.
    fs::write(tree.join("many").join("l".repeat(255)), b"long name").unwrap();
    let mut deep = tree.join("deep");
    while deep.as_os_str().len() < 3900 {
        deep = deep.join("d".repeat(100));
    }
    fs::create_dir_all(&deep).unwrap();
    fs::write(deep.join("leaf"), b"deep").unwrap();
    let (img, _) = build_image(&tree, t.path(), 8 << 20, BuildOptions::default());
    assert_fsck_clean(&img);
    assert_fsck_fixes_nothing(&img);
    let (c, text) = run(Command::new("debugfs")
        .args(["-R", "htree /many"])
        .arg(&img));
    assert_eq!(c, 0, "{text}");
    assert!(
        text.contains("Root node dump") && text.contains("Number of entries"),
        "no htree: {}",
        &text[..text.len().min(2000)]
    );
    let m = Mount::new(&img, &t.path().join("mnt"), true);
    assert_eq!(fs::read_dir(m.0.join("many")).unwrap().count(), 101_001);
    let md = fs::metadata(m.0.join("many/hl-01999")).unwrap();
    assert_eq!(md.nlink(), 2001, "one inode for all the hard links");
    assert_eq!(
        md.ino(),
        fs::metadata(m.0.join("links/target")).unwrap().ino()
    );
    for i in [0usize, 1, 54_321, 99_999] {
        let name = format!("entry-{i:06}-{}", "n".repeat(i % 40));
        assert!(
            fs::symlink_metadata(m.0.join("many").join(&name)).is_ok(),
            "lookup of {name} through the htree"
        );
    }
    assert_eq!(
        fs::read(m.0.join("many").join("l".repeat(255))).unwrap(),
        b"long name"
    );
    let rel = deep.strip_prefix(&tree).unwrap();
    assert_eq!(fs::read(m.0.join(rel).join("leaf")).unwrap(), b"deep");
}

#[test]
fn sparse_5gib_file_and_compressed_fragment() {
    let t = tempfile::tempdir().unwrap();
    let tree = t.path().join("tree");
    fs::create_dir_all(&tree).unwrap();
    let f = fs::File::create(tree.join("sparse")).unwrap();
    f.set_len(5 << 30).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, b"middle", 3 << 30).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, b"end", (5 << 30) - 3).unwrap();
    fs::write(
        tree.join("data"),
        (0..1_000_000u32)
            .map(|i| (i * 7 % 256) as u8)
            .collect::<Vec<_>>(),
    )
    .unwrap();
    let opts = BuildOptions {
        zstd_level: Some(3),
        ..Default::default()
    };
    let (img, image) = build_image(&tree, t.path(), 4 << 20, opts);
    assert!(
        image.blocks < 10_000,
        "holes must not take volume blocks: {} blocks",
        image.blocks
    );
    assert_fsck_clean(&img);
    let m = Mount::new(&img, &t.path().join("mnt"), true);
    compare_trees(&tree, &m.0);
}

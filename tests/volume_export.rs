//! `mosaic volume export` end to end, judged by real tools: several
//! fragments merged into one ext4 image that e2fsck finds clean (and that
//! `e2fsck -fy` leaves alone), that a loop mount shows as the union of the
//! source trees (directory security following ownership, newest directory
//! mtimes), that does not depend on the manifest's order, whose free space
//! is what the manifest asks for, and whose bytes and metadata are pinned
//! by a golden dump (`tests/golden/volume.dump`, `tests/golden/volume.blake3`).
//!
//! Regenerate the golden files after an intended generator change (a
//! FORMAT BREAK, see `layout::ext4::GENERATOR_VERSION`) with
//! `MOSAIC_BLESS=1 cargo test --test volume_export`, then review the diff.
//!
//! Runs as root (loop mounts, chown, device nodes). A missing tool fails
//! the test naming it.

mod kit;

use fragments::{BuildOptions, SigningKey};
use kit::golden::{blake3_hex, compare_or_bless};
use kit::image::{
    assert_fsck_clean, assert_fsck_fixes_nothing, debugfs_text, export_image_with, Mount,
};
use kit::*;
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{OsStr, OsString};
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Output;

// ---------------------------------------------------------------------------
// A lab: keys, trees, fragments, manifests

/// The lab's signing key: its public half is `lab.key.pub`.
const LAB_KEY: u8 = 7;

struct Lab {
    dir: tempfile::TempDir,
}

impl Lab {
    fn new() -> Lab {
        let dir = kit::tempdir();
        write_keys(dir.path(), "lab.key", &key(LAB_KEY));
        Lab { dir }
    }
    fn path(&self) -> &Path {
        self.dir.path()
    }
    /// An empty directory `NAME.tree` for a source tree.
    fn tree_dir(&self, name: &str) -> PathBuf {
        let t = self.path().join(format!("{name}.tree"));
        fs::create_dir_all(&t).unwrap();
        t
    }
    /// Builds `tree` into `NAME.frag` with `key`, owning `owns` (empty:
    /// every directory but the root).
    fn build(&self, name: &str, tree: &Path, owns: &[&str], key: &SigningKey) -> PathBuf {
        let out = self.path().join(format!("{name}.frag"));
        let opts = BuildOptions {
            name: name.into(),
            version: "1".into(),
            owns: owns.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        kit::build(tree, &out, key, &opts);
        out
    }
    /// Writes `FILE` (in the lab) listing fragment files `frags`, trusting
    /// the lab key, with `extra` appended (a `[filesystem]` table).
    fn manifest(&self, file: &str, frags: &[&str], extra: &str) -> PathBuf {
        let list: Vec<String> = frags.iter().map(|f| format!("{f:?}")).collect();
        let text = format!(
            "name = \"root\"\nfragments = [{}]\ntrust = [\"lab.key.pub\"]\n{extra}",
            list.join(", ")
        );
        let p = self.path().join(file);
        fs::write(&p, text).unwrap();
        p
    }
}

/// `mosaic volume export MANIFEST -o OUT [--json]`.
fn export(manifest: &Path, out: &Path, json: bool) -> Output {
    export_image_with(manifest, out, if json { &["--json"] } else { &[] })
}

/// Exports and returns the `--json` summary, failing unless exit 0.
#[track_caller]
fn export_ok(manifest: &Path, out: &Path) -> serde_json::Value {
    let o = export(manifest, out, true);
    expect_code(&o, 0, &format!("volume export {}", manifest.display()));
    let stdout = String::from_utf8_lossy(&o.stdout);
    let v: serde_json::Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("--json output is not JSON ({e}): {stdout}"));
    let len = fs::metadata(out).unwrap().len();
    assert_eq!(v["bytes"].as_u64(), Some(len), "bytes vs file size: {v}");
    assert_eq!(len % 4096, 0, "the image is whole 4 KiB blocks");
    v
}

/// Pins the mtime of every entry of `root` to `base` plus a per-entry step
/// with a nonzero nanosecond part; `except` keeps the times already set.
fn pin_times(root: &Path, base: i64, except: &[&str]) {
    let keep: Vec<PathBuf> = except.iter().map(|e| root.join(e)).collect();
    for (k, p) in all_paths(root).into_iter().enumerate() {
        if keep.contains(&p) {
            continue;
        }
        let k = k as i64;
        set_mtime(
            &p,
            base + 1000 * k,
            ((k * 7919 + 13) % 1_000_000_000) as u32,
        );
    }
}

// ---------------------------------------------------------------------------
// Three fragments: base, app, tools

const BASE_OWNS: &[&str] = &["/etc", "/usr"];
const APP_OWNS: &[&str] = &["/usr/share/app"];
const TOOLS_OWNS: &[&str] = &["/srv"];

/// base: /etc and /usr (owned), binaries and libraries, a > 4 MiB file.
fn make_base(root: &Path) {
    make_dir(root, 0o755);
    make_dir(&root.join("etc"), 0o755);
    write_file(&root.join("etc/hostname"), b"mosaic\n", 0o644);
    write_file(&root.join("etc/r1023"), &random_bytes(1, 1023), 0o644);
    write_file(&root.join("etc/r1024"), &random_bytes(2, 1024), 0o644);
    write_file(&root.join("etc/r1025"), &random_bytes(3, 1025), 0o600);
    make_dir(&root.join("usr"), 0o751);
    lchown(&root.join("usr"), 0, 3);
    set_xattr(&root.join("usr"), b"user.owner", b"base");
    make_dir(&root.join("usr/bin"), 0o755);
    write_file(&root.join("usr/bin/sh"), &random_bytes(4, 4096), 0o755);
    make_dir(&root.join("usr/lib"), 0o755);
    write_file(&root.join("usr/lib/r4095"), &random_bytes(5, 4095), 0o644);
    write_file(&root.join("usr/lib/r4097"), &random_bytes(6, 4097), 0o644);
    write_file(
        &root.join("usr/lib/big.so"),
        &random_bytes(7, (4 << 20) + 512 * 1024 + 123),
        0o755,
    );
    pin_times(root, 1_500_000_000, &[]);
}

/// app: /usr/share/app (owned) and /etc/app.conf; its /, /etc, /usr and
/// /usr/share are pass-through (their modes and owners here are ignored).
fn make_app(root: &Path) {
    make_dir(root, 0o700);
    lchown(root, 9, 9);
    make_dir(&root.join("etc"), 0o700);
    lchown(&root.join("etc"), 77, 77);
    set_xattr(&root.join("etc"), b"user.owner", b"app");
    write_file(&root.join("etc/app.conf"), &random_bytes(10, 1024), 0o640);
    lchown(&root.join("etc/app.conf"), 0, 1000);
    make_dir(&root.join("usr/share/app/data"), 0o755);
    chmod(&root.join("usr"), 0o700);
    lchown(&root.join("usr"), 77, 77);
    set_xattr(&root.join("usr"), b"user.owner", b"app");
    chmod(&root.join("usr/share"), 0o711);
    lchown(&root.join("usr/share"), 77, 77);
    chmod(&root.join("usr/share/app"), 0o750);
    lchown(&root.join("usr/share/app"), 1000, 1000);
    set_xattr(&root.join("usr/share/app"), b"user.owner", b"app");
    write_file(
        &root.join("usr/share/app/data/r4096"),
        &random_bytes(11, 4096),
        0o644,
    );
    write_file(&root.join("usr/share/app/data/empty"), b"", 0o644);
    write_file(
        &root.join("usr/share/app/run"),
        b"#!/bin/sh\necho app\n",
        0o755,
    );
    // The newest of the three: its times win for shared directories.
    pin_times(root, 1_700_000_000, &[]);
}

/// tools: /usr/bin/tool (pass-through /usr and /usr/bin) and /srv (owned)
/// with every kind of entry and attribute.
fn make_tools(root: &Path) {
    make_dir(root, 0o755);
    make_dir(&root.join("usr/bin"), 0o700);
    chmod(&root.join("usr"), 0o700);
    lchown(&root.join("usr"), 88, 88);
    lchown(&root.join("usr/bin"), 88, 88);
    let tool_path = root.join("usr/bin/tool");
    write_file(&tool_path, &random_bytes(20, 8000), 0o755);
    set_xattr(
        &tool_path,
        b"security.capability",
        &vfs_cap_v2(1 << 10, 0, true),
    );

    let srv = root.join("srv");
    make_dir(&srv.join("sub"), 0o755);
    chmod(&srv, 0o750);
    lchown(&srv, 10, 20);
    // Hard links: to the capability binary across directories, a 3-name
    // data file, a 2-name small file.
    fs::hard_link(&tool_path, srv.join("tool-link")).unwrap();
    write_file(&srv.join("hard-a"), &random_bytes(21, 5000), 0o644);
    fs::hard_link(srv.join("hard-a"), srv.join("sub/hard-b")).unwrap();
    fs::hard_link(srv.join("hard-a"), srv.join("sub/hard-c")).unwrap();
    write_file(&srv.join("small-a"), b"small and linked\n", 0o644);
    fs::hard_link(srv.join("small-a"), srv.join("small-b")).unwrap();
    // Symlinks: fast (< 60 bytes), 59 and 60 bytes, long.
    symlink("../usr/bin/tool", srv.join("fast")).unwrap();
    symlink("f".repeat(59), srv.join("link59")).unwrap();
    symlink("g".repeat(60), srv.join("link60")).unwrap();
    symlink("long/".repeat(60), srv.join("long")).unwrap();
    set_xattr(&srv.join("fast"), b"trusted.note", b"on a symlink");
    // Devices, fifo, socket.
    mknod(&srv.join("null"), Special::Char(1, 3));
    chmod(&srv.join("null"), 0o666);
    mknod(&srv.join("bigdev"), Special::Block(259, 70000));
    chmod(&srv.join("bigdev"), 0o660);
    lchown(&srv.join("bigdev"), 0, 6);
    mknod(&srv.join("fifo"), Special::Fifo);
    chmod(&srv.join("fifo"), 0o644);
    mknod(&srv.join("sock"), Special::Socket);
    // Xattrs: an access ACL with a named user, user attributes (one set
    // shared by two files, one empty value).
    let acl_file = srv.join("acl-file");
    write_file(&acl_file, b"acl\n", 0o640);
    set_xattr(
        &acl_file,
        b"system.posix_acl_access",
        &extended_acl(6, &[(1000, 4), (1001, 6)], 4, &[(50, 4)], 6, 0),
    );
    set_xattr(&acl_file, b"user.comment", b"an ACL and a comment");
    for f in ["sub/hard-b", "small-a"] {
        set_xattr(&srv.join(f), b"user.shared", b"the same set");
    }
    write_file(&srv.join("empty"), b"", 0o600);
    set_xattr(&srv.join("empty"), b"user.empty", b"");
    // Owner, set-id bits (after chown, which clears them), odd times.
    let suid = srv.join("suid");
    write_file(&suid, &random_bytes(22, 3000), 0o755);
    lchown(&suid, 1234, 70000);
    chmod(&suid, 0o6755);
    // A sparse file: data islands at 0, 1 MiB + 100 and the end.
    let sparse = srv.join("sparse");
    let f = fs::File::create(&sparse).unwrap();
    f.set_len(3 << 20).unwrap();
    f.write_all_at(&random_bytes(23, 4096), 0).unwrap();
    f.write_all_at(&random_bytes(24, 5000), (1 << 20) + 100)
        .unwrap();
    f.write_all_at(b"the end", (3 << 20) - 7).unwrap();
    drop(f);
    // Last, so that nothing above inherits it.
    set_xattr(
        &srv,
        b"system.posix_acl_default",
        &extended_acl(7, &[(1000, 5)], 5, &[], 5, 0),
    );
    pin_times(root, 1_600_000_000, &[]);
    set_mtime(&srv.join("sub/hard-c"), -86_400 * 365, 5);
    set_mtime(&srv.join("small-b"), 1_750_000_000, 999_999_999);
}

/// Whether a fragment built with `owns` owns the security of directory
/// `rel` (relative, `b""` the root), as `fragment build --owns` decides.
fn owns_dir(owns: &[&str], rel: &[u8]) -> bool {
    let mut p = b"/".to_vec();
    p.extend_from_slice(rel);
    if owns.is_empty() {
        return !rel.is_empty();
    }
    owns.iter().any(|o| {
        let o = o.as_bytes();
        o == b"/" || p == o || (p.starts_with(o) && p.get(o.len()) == Some(&b'/'))
    })
}

/// What the volume must show: the union of the source trees.
/// Non-directories as in their one tree; directories with the newest mtime
/// among the trees providing them, security from the trees owning them (or
/// the nearest owned ancestor, or root:root 0755 without xattrs for an
/// unowned root), link count 2 + subdirectories (+ lost+found at the root).
/// Also returns, for regular files, the source file holding the contents.
fn expected_union(
    trees: &[(&Path, &[&str])],
) -> (BTreeMap<Vec<u8>, EntryStat>, BTreeMap<Vec<u8>, PathBuf>) {
    let snaps: Vec<BTreeMap<Vec<u8>, EntryStat>> = trees.iter().map(|t| snapshot(t.0)).collect();
    let paths: BTreeSet<&Vec<u8>> = snaps.iter().flat_map(|s| s.keys()).collect();
    let mut out: BTreeMap<Vec<u8>, EntryStat> = BTreeMap::new();
    let mut contents = BTreeMap::new();
    // Parents sort before their children (a prefix is smaller).
    for p in paths {
        let provs: Vec<usize> = (0..trees.len())
            .filter(|&i| snaps[i].contains_key(p))
            .collect();
        let first = &snaps[provs[0]][p];
        if first.kind != FileKind::Directory {
            assert_eq!(
                provs.len(),
                1,
                "test setup: /{} in several trees",
                p.escape_ascii()
            );
            if first.kind == FileKind::Regular {
                contents.insert(p.clone(), kit::join_rel(trees[provs[0]].0, p));
            }
            out.insert(p.clone(), first.clone());
            continue;
        }
        let mut e = first.clone();
        for &i in &provs {
            let s = &snaps[i][p];
            assert_eq!(
                s.kind,
                FileKind::Directory,
                "test setup: /{}",
                p.escape_ascii()
            );
            if (s.mtime_sec, s.mtime_nsec) > (e.mtime_sec, e.mtime_nsec) {
                (e.mtime_sec, e.mtime_nsec) = (s.mtime_sec, s.mtime_nsec);
            }
        }
        let owners: Vec<&EntryStat> = provs
            .iter()
            .filter(|&&i| owns_dir(trees[i].1, p))
            .map(|&i| &snaps[i][p])
            .collect();
        let security = |s: &EntryStat| (s.perm, s.uid, s.gid, s.xattrs.clone());
        let (perm, uid, gid, xattrs) = if let Some(o) = owners.first() {
            for other in &owners[1..] {
                assert_eq!(security(o), security(other), "test setup: owners disagree");
            }
            security(o)
        } else if p.is_empty() {
            (0o755, 0, 0, Vec::new())
        } else {
            let parent = match p.iter().rposition(|&c| c == b'/') {
                Some(i) => &p[..i],
                None => &p[..0],
            };
            security(&out[parent])
        };
        (e.perm, e.uid, e.gid, e.xattrs) = (perm, uid, gid, xattrs);
        out.insert(p.clone(), e);
    }
    // Directory link counts in the union.
    let mut subdirs: BTreeMap<Vec<u8>, u64> = BTreeMap::new();
    for (p, e) in &out {
        if e.kind == FileKind::Directory && !p.is_empty() {
            let parent = match p.iter().rposition(|&c| c == b'/') {
                Some(i) => p[..i].to_vec(),
                None => Vec::new(),
            };
            *subdirs.entry(parent).or_default() += 1;
        }
    }
    for (p, e) in out.iter_mut() {
        if e.kind == FileKind::Directory {
            e.nlink = 2 + subdirs.get(p).copied().unwrap_or(0) + p.is_empty() as u64;
        }
    }
    (out, contents)
}

/// Every difference between the expected union and the mounted volume
/// (lost+found excluded): names, kinds, modes, owners, ns mtimes, sizes,
/// link counts, devices, symlink targets, xattrs, contents, hard links.
fn union_differences(
    want: &BTreeMap<Vec<u8>, EntryStat>,
    contents: &BTreeMap<Vec<u8>, PathBuf>,
    mnt: &Path,
) -> Vec<String> {
    let mut got = snapshot(mnt);
    got.retain(|p, _| !(p == b"lost+found" || p.starts_with(b"lost+found/")));
    let show = |p: &[u8]| format!("/{}", p.escape_ascii());
    let mut diffs = Vec::new();
    for p in want.keys().filter(|p| !got.contains_key(*p)) {
        diffs.push(format!("{}: missing from the volume", show(p)));
    }
    for p in got.keys().filter(|p| !want.contains_key(*p)) {
        diffs.push(format!("{}: in the volume but in no fragment", show(p)));
    }
    for (p, w) in want {
        let Some(g) = got.get(p) else { continue };
        let fields = |e: &EntryStat| {
            vec![
                ("kind", format!("{:?}", e.kind)),
                ("perm", format!("{:o}", e.perm)),
                ("owner", format!("{}:{}", e.uid, e.gid)),
                ("mtime", format!("{}.{:09}", e.mtime_sec, e.mtime_nsec)),
                ("size", e.size.to_string()),
                ("nlink", e.nlink.to_string()),
                ("rdev", format!("{:?}", e.rdev)),
                (
                    "target",
                    format!(
                        "{:?}",
                        e.symlink_target
                            .as_ref()
                            .map(|t| t.escape_ascii().to_string())
                    ),
                ),
                (
                    "xattrs",
                    e.xattrs
                        .iter()
                        .map(|(n, v)| format!("{}={}", n.escape_ascii(), v.escape_ascii()))
                        .collect::<Vec<_>>()
                        .join(", "),
                ),
            ]
        };
        for ((name, a), (_, b)) in fields(w).into_iter().zip(fields(g)) {
            if a != b {
                diffs.push(format!("{}: {name}: want {a}, volume has {b}", show(p)));
            }
        }
        if let Some(src) = contents.get(p) {
            let (a, b) = (
                fs::read(src).unwrap(),
                fs::read(kit::join_rel(mnt, p)).unwrap(),
            );
            if a != b {
                diffs.push(format!("{}: contents differ", show(p)));
            }
        }
    }
    let (gw, gg) = (hard_link_groups(want), hard_link_groups(&got));
    for g in gw.symmetric_difference(&gg) {
        let names: Vec<String> = g.iter().map(|p| show(p)).collect();
        let side = if gw.contains(g) { "sources" } else { "volume" };
        diffs.push(format!("hard-link group only in the {side}: {names:?}"));
    }
    diffs
}

/// The three fragments of a lab (built once per call).
fn three_fragments(lab: &Lab) -> [(PathBuf, &'static [&'static str]); 3] {
    let (b, a, t) = (
        lab.tree_dir("base"),
        lab.tree_dir("app"),
        lab.tree_dir("tools"),
    );
    make_base(&b);
    make_app(&a);
    make_tools(&t);
    let k = key(LAB_KEY);
    lab.build("base", &b, BASE_OWNS, &k);
    lab.build("app", &a, APP_OWNS, &k);
    lab.build("tools", &t, TOOLS_OWNS, &k);
    [(b, BASE_OWNS), (a, APP_OWNS), (t, TOOLS_OWNS)]
}

#[test]
fn three_fragments_merge_into_a_clean_volume_that_mounts_as_their_union() {
    let lab = Lab::new();
    let trees = three_fragments(&lab);
    let m = lab.manifest(
        "volume.toml",
        &["base.frag", "app.frag", "tools.frag"],
        "[filesystem]\nlabel = \"union\"\nfree = \"8MiB\"\n",
    );
    let img = lab.path().join("v.img");
    export_ok(&m, &img);
    assert_fsck_clean(&img);
    assert_fsck_fixes_nothing(&img);

    // debugfs reads the merged tree's inodes, the capability and the ACL.
    let st = debugfs_text(&img, "stat /usr/bin/tool");
    for needle in [
        "Type: regular",
        "Mode:  0755",
        "Links: 2",
        "Size: 8000",
        // VFS_CAP_REVISION_2 | effective, CAP_NET_BIND_SERVICE (bit 10).
        "security.capability (20) = 01 00 00 02 00 04 00 00 00 00 00 00",
    ] {
        assert!(
            st.contains(needle),
            "stat /usr/bin/tool: no {needle:?}:\n{st}"
        );
    }
    // ACLs are stored in ext4's own format (version 1, 4-byte entries
    // but for named users and groups), not the 60-byte VFS form.
    let ea = debugfs_text(&img, "ea_list /srv/acl-file");
    assert!(
        ea.contains("system.posix_acl_access (44)")
            && ea.contains("user.comment (20) = \"an ACL and a comment\""),
        "ea_list /srv/acl-file:\n{ea}"
    );
    let ea = debugfs_text(&img, "ea_list /srv");
    assert!(
        ea.contains(
            "system.posix_acl_default (28) = 01 00 00 00 01 00 07 00 02 00 05 00 e8 03 00 00 \
             04 00 05 00 10 00 05 00 20 00 00 00"
        ),
        "ea_list /srv:\n{ea}"
    );
    let label = tool_ok("dumpe2fs", [OsStr::new("-h"), img.as_os_str()]);
    assert!(
        label
            .lines()
            .any(|l| l.starts_with("Filesystem volume name:") && l.ends_with(" union")),
        "label:\n{label}"
    );

    let specs: Vec<(&Path, &[&str])> = trees.iter().map(|(p, o)| (p.as_path(), *o)).collect();
    let (want, contents) = expected_union(&specs);
    // The setup exercises what it claims to.
    assert_eq!(want[b"usr".as_slice()].perm, 0o751, "/usr from base");
    assert_eq!(
        want[b"usr/share".as_slice()].perm,
        0o751,
        "/usr/share inherits"
    );
    assert_eq!(
        want[b"usr/bin".as_slice()].mtime_sec / 100_000_000,
        16,
        "from tools"
    );
    let mnt = Mount::new(&img, &lab.path().join("mnt"), true);
    let diffs = union_differences(&want, &contents, mnt.path());
    assert!(
        diffs.is_empty(),
        "{} differences between the fragments' union and the volume:\n  {}",
        diffs.len(),
        diffs.join("\n  ")
    );
    let lf = kit::stat_entry(&mnt.path().join("lost+found"));
    assert_eq!(
        (lf.kind, lf.perm, lf.uid, lf.gid, lf.nlink),
        (FileKind::Directory, 0o700, 0, 0, 2),
        "lost+found"
    );
    assert!(kit::list_dir(&mnt.path().join("lost+found")).is_empty());
    mnt.unmount();
}

#[test]
fn manifest_order_does_not_change_the_image() {
    let lab = Lab::new();
    three_fragments(&lab);
    let fs_table = "[filesystem]\nfree = \"2MiB\"\n";
    let m1 = lab.manifest(
        "one.toml",
        &["base.frag", "app.frag", "tools.frag"],
        fs_table,
    );
    let m2 = lab.manifest(
        "two.toml",
        &["tools.frag", "base.frag", "app.frag"],
        fs_table,
    );
    let (i1, i2) = (lab.path().join("one.img"), lab.path().join("two.img"));
    let v1 = export_ok(&m1, &i1);
    let v2 = export_ok(&m2, &i2);
    let id = v1["identity"].as_str().expect("identity in --json");
    assert_eq!(id.len(), 64, "identity is 32 bytes in hex: {id}");
    assert!(id.bytes().all(|c| c.is_ascii_hexdigit()), "{id}");
    assert_eq!(v1["identity"], v2["identity"]);
    assert_eq!(v1["uuid"], v2["uuid"]);
    let o = tool("cmp", [i1.as_os_str(), i2.as_os_str()]);
    assert_eq!(code(&o), 0, "images of the two orders differ: {}", text(&o));

    // Another fragment set, or other options, is another volume.
    let m3 = lab.manifest("three.toml", &["tools.frag", "base.frag"], fs_table);
    let v3 = export_ok(&m3, &lab.path().join("three.img"));
    assert_ne!(v3["identity"], v1["identity"]);
    let m4 = lab.manifest(
        "four.toml",
        &["app.frag", "tools.frag", "base.frag"],
        "[filesystem]\nfree = \"3MiB\"\n",
    );
    let v4 = export_ok(&m4, &lab.path().join("four.img"));
    assert_ne!(v4["identity"], v1["identity"]);
}

// ---------------------------------------------------------------------------
// Golden volume

const G_FILE: (i64, u32) = (1_000_000_000, 123_456_789);
const G_HELLO: (i64, u32) = (1_100_000_000, 1);
const G_LINK: (i64, u32) = (1_200_000_000, 999_999_999);
const G_DIR: (i64, u32) = (1_300_000_000, 500_000_000);
const G_ROOT: (i64, u32) = (1_400_000_000, 42);
const G_UUID: &str = "01234567-89ab-cdef-0123-456789abcdef";

/// The golden tree, every entry root-owned:
///
/// ```text
/// /             0755  G_ROOT
/// /data         0640  5000 bytes           G_FILE
/// /empty        0644  empty                G_FILE
/// /hello        0644  14 bytes, user.test  G_HELLO
/// /dir          0750                       G_DIR
/// /dir/again          hard link of /hello
/// /dir/link  -> ../hello                   G_LINK
/// ```
fn golden_tree(root: &Path) {
    make_dir(root, 0o755);
    write_file(
        &root.join("data"),
        &(0..5000u32)
            .map(|i| (i % 251) as u8 + 1)
            .collect::<Vec<_>>(),
        0o640,
    );
    write_file(&root.join("empty"), b"", 0o644);
    write_file(&root.join("hello"), b"hello, volume\n", 0o644);
    set_xattr(&root.join("hello"), b"user.test", b"golden-value");
    make_dir(&root.join("dir"), 0o750);
    fs::hard_link(root.join("hello"), root.join("dir/again")).unwrap();
    symlink("../hello", root.join("dir/link")).unwrap();
    for p in ["", "data", "empty", "hello", "dir", "dir/link"] {
        lchown(&root.join(p), 0, 0);
    }
    for p in ["data", "empty"] {
        set_mtime(&root.join(p), G_FILE.0, G_FILE.1);
    }
    set_mtime(&root.join("hello"), G_HELLO.0, G_HELLO.1);
    set_mtime(&root.join("dir/link"), G_LINK.0, G_LINK.1);
    set_mtime(&root.join("dir"), G_DIR.0, G_DIR.1);
    set_mtime(root, G_ROOT.0, G_ROOT.1);
    // Nothing may leak in (ACLs, security labels).
    for p in ["", "data", "empty", "hello", "dir", "dir/link"] {
        let x = kit::xattrs_of(&root.join(p));
        let names: Vec<&[u8]> = x.iter().map(|(n, _)| n.as_slice()).collect();
        let want: &[&[u8]] = if p == "hello" { &[b"user.test"] } else { &[] };
        assert_eq!(names, want, "unexpected xattrs on /{p}");
    }
}

/// Builds the golden fragment and exports its volume in a fresh lab.
fn golden_export() -> (tempfile::TempDir, PathBuf) {
    let lab = kit::tempdir();
    write_keys(lab.path(), "golden.key", &key(1));
    let tree = lab.path().join("tree");
    golden_tree(&tree);
    let opts = BuildOptions {
        name: "golden".into(),
        version: "1".into(),
        ..Default::default()
    };
    kit::build(&tree, &lab.path().join("golden.frag"), &key(1), &opts);
    let m = lab.path().join("volume.toml");
    fs::write(
        &m,
        format!(
            "name = \"golden\"\nfragments = [\"golden.frag\"]\ntrust = [\"golden.key.pub\"]\n\
             [filesystem]\nfree = \"1MiB\"\nuuid = \"{G_UUID}\"\n"
        ),
    )
    .unwrap();
    let img = lab.path().join("golden.img");
    export_ok(&m, &img);
    (lab, img)
}

/// The readable dump: dumpe2fs (superblock and group descriptors), the
/// root and lost+found inodes, every entry of the tree, and `ls -l /`.
fn golden_dump(img: &Path) -> String {
    let mut out = String::new();
    let mut section = |title: &str, body: String| {
        out.push_str(&format!("=== {title}\n"));
        out.push_str(&body);
        if !body.ends_with('\n') {
            out.push('\n');
        }
    };
    section("dumpe2fs", tool_ok("dumpe2fs", [img.as_os_str()]));
    for req in [
        "stat <2>",
        "stat <11>",
        "stat /data",
        "stat /empty",
        "stat /hello",
        "stat /dir",
        "stat /dir/again",
        "stat /dir/link",
        "ea_list /hello",
        "ls -l /",
        "ls -l /dir",
    ] {
        section(&format!("debugfs -R '{req}'"), debugfs_text(img, req));
    }
    // Trailing blanks are noise in a committed file.
    out.lines()
        .map(|l| l.trim_end())
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

/// What a difference from the golden files means.
const GOLDEN_WHAT: &str =
    "the ext4 generator (a FORMAT BREAK: bump layout::ext4::GENERATOR_VERSION)";

#[test]
fn tiny_volume_matches_golden_dump_and_hash() {
    let (_lab1, img1) = golden_export();
    let (_lab2, img2) = golden_export();
    let (b1, b2) = (fs::read(&img1).unwrap(), fs::read(&img2).unwrap());
    assert!(b1 == b2, "two exports of the golden volume differ");
    assert_fsck_clean(&img1);
    let (d1, d2) = (golden_dump(&img1), golden_dump(&img2));
    assert_eq!(d1, d2, "the dump varies between runs");
    // The dump says what the design promises.
    let features = d1
        .lines()
        .find(|l| l.starts_with("Filesystem features:"))
        .expect("a features line");
    let have: BTreeSet<&str> = features["Filesystem features:".len()..]
        .split_whitespace()
        .collect();
    let want: BTreeSet<&str> = [
        "has_journal",
        "ext_attr",
        "dir_index",
        "filetype",
        "extent",
        "64bit",
        "flex_bg",
        "sparse_super",
        "sparse_super2",
        "large_file",
        "huge_file",
        "dir_nlink",
        "extra_isize",
        "metadata_csum",
    ]
    .into_iter()
    .collect();
    assert_eq!(have, want, "{features}");
    let uuid_line = format!("Filesystem UUID:          {G_UUID}");
    for needle in [
        uuid_line.as_str(),
        "Filesystem volume name:   mosaic",
        "Block size:               4096",
        "Inode size:\t          256",
        "Reserved block count:     0",
    ] {
        assert!(d1.contains(needle), "dump lacks {needle:?}");
    }
    compare_or_bless("volume.dump", &d1, GOLDEN_WHAT);
    compare_or_bless(
        "volume.blake3",
        &format!("{}\n", blake3_hex(&b1)),
        GOLDEN_WHAT,
    );
}

// ---------------------------------------------------------------------------
// Free space

/// `free = "100MiB"`: the image's free space is holes, df in the guest
/// shows 100 MiB available (within 1 MiB), 50 MiB of it can be written and
/// the volume stays clean.
#[test]
fn free_space_is_what_the_manifest_asks_and_usable() {
    let lab = Lab::new();
    let t = lab.tree_dir("small");
    write_file(&t.join("etc/hostname"), b"free\n", 0o644);
    write_file(&t.join("usr/lib/blob"), &random_bytes(30, 300_000), 0o644);
    lab.build("small", &t, &[], &key(LAB_KEY));
    let m = lab.manifest(
        "volume.toml",
        &["small.frag"],
        "[filesystem]\nfree = \"100MiB\"\n",
    );
    let img = lab.path().join("v.img");
    export_ok(&m, &img);
    let md = fs::metadata(&img).unwrap();
    assert!(md.len() > 100 << 20, "{} bytes", md.len());
    assert!(
        md.blocks() * 512 < 16 << 20,
        "the free space must be holes: {} bytes allocated of {}",
        md.blocks() * 512,
        md.len()
    );
    assert_fsck_clean(&img);

    let rw = lab.path().join("rw.img");
    tool_ok(
        "cp",
        [
            OsStr::new("--sparse=always"),
            img.as_os_str(),
            rw.as_os_str(),
        ],
    );
    let mnt = Mount::new(&rw, &lab.path().join("mnt"), false);
    let df = tool_ok(
        "df",
        [
            OsStr::new("-B1"),
            OsStr::new("--output=avail"),
            mnt.path().as_os_str(),
        ],
    );
    let avail: i64 = df
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or_else(|| panic!("df output: {df}"));
    let data = random_bytes(31, 50 << 20);
    let f = mnt.path().join("fifty");
    fs::write(&f, &data).unwrap();
    fs::File::open(&f).unwrap().sync_all().unwrap();
    nix::unistd::sync();
    mnt.unmount();
    assert_fsck_clean(&rw);
    let mnt = Mount::new(&rw, &lab.path().join("mnt"), true);
    assert!(
        fs::read(mnt.path().join("fifty")).unwrap() == data,
        "fifty MiB read back"
    );
    assert_eq!(
        fs::read(mnt.path().join("etc/hostname")).unwrap(),
        b"free\n"
    );
    mnt.unmount();

    // What the guest sees is what the manifest asks for: the superblock's
    // free blocks, and df's "available", which the kernel reduces by its
    // own reservation (s_resv_clusters: 2% of the blocks, at most 4096).
    let sb = tool_ok("dumpe2fs", [OsStr::new("-h"), img.as_os_str()]);
    let free_blocks: u64 = sb
        .lines()
        .find_map(|l| l.strip_prefix("Free blocks:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no free blocks in\n{sb}"));
    assert!(free_blocks * 4096 >= 100 << 20, "{free_blocks} free blocks");
    let want: i64 = 100 << 20;
    assert!(
        (avail - want).abs() <= 1 << 20,
        "df shows {avail} bytes available ({:.2} MiB) on a volume whose manifest asks for \
         free = \"100MiB\" (superblock: {free_blocks} free blocks)",
        avail as f64 / (1 << 20) as f64
    );
}

/// A file dated in the future (clock skew, an archive from elsewhere) is
/// legitimate input; the volume must still be clean for e2fsck, whose clock
/// is the reader's: no superblock time may come from file times.
#[test]
fn a_file_dated_in_the_future_does_not_date_the_superblock() {
    let lab = Lab::new();
    let t = lab.tree_dir("future");
    write_file(&t.join("from-2096"), b"later\n", 0o644);
    pin_times(&t, 1_500_000_000, &[]);
    set_mtime(&t.join("from-2096"), 4_000_000_000, 999_999_999);
    lab.build("future", &t, &[], &key(LAB_KEY));
    let m = lab.manifest(
        "volume.toml",
        &["future.frag"],
        "[filesystem]\nfree = \"1MiB\"\n",
    );
    let img = lab.path().join("v.img");
    export_ok(&m, &img);
    assert_fsck_clean(&img);
    let mnt = Mount::new(&img, &lab.path().join("mnt"), true);
    let s = kit::stat_entry(&mnt.path().join("from-2096"));
    assert_eq!((s.mtime_sec, s.mtime_nsec), (4_000_000_000, 999_999_999));
    mnt.unmount();
}

// ---------------------------------------------------------------------------
// Errors

/// Entries of a directory whose name starts with `.mosaic-export` (the
/// export's temporary file).
fn leftovers(dir: &Path) -> Vec<OsString> {
    kit::list_dir(dir)
        .into_iter()
        .filter(|n| n.as_bytes().starts_with(b".mosaic-export"))
        .collect()
}

#[test]
fn failed_exports_write_nothing() {
    let lab = Lab::new();
    let k = key(LAB_KEY);
    for (name, files) in [("one", ["etc/x", "etc/one"]), ("two", ["etc/x", "etc/two"])] {
        let t = lab.tree_dir(name);
        for f in files {
            write_file(&t.join(f), f.as_bytes(), 0o644);
        }
        lab.build(name, &t, &[], &k);
    }
    let t = lab.tree_dir("stranger");
    write_file(&t.join("opt/s"), b"s", 0o644);
    lab.build("stranger", &t, &[], &key(99));

    // A conflict: exit 1, the path and both fragments named, no image.
    let m = lab.manifest("conflict.toml", &["one.frag", "two.frag"], "");
    let out = lab.path().join("conflict.img");
    let o = export(&m, &out, false);
    let err = text(&o);
    assert_eq!(code(&o), 1, "{err}");
    for n in ["/etc/x", "one.frag", "two.frag"] {
        assert!(err.contains(n), "{n} not named: {err}");
    }
    assert!(!out.exists(), "an image was written despite the conflict");
    // An existing output is left as it was.
    fs::write(&out, b"keep me").unwrap();
    let o = export(&m, &out, true);
    assert_eq!(code(&o), 1, "{}", text(&o));
    assert_eq!(fs::read(&out).unwrap(), b"keep me");

    // An untrusted fragment: exit 1, named, no image.
    let m = lab.manifest("untrusted.toml", &["one.frag", "stranger.frag"], "");
    let out = lab.path().join("untrusted.img");
    let o = export(&m, &out, false);
    let err = text(&o);
    assert_eq!(code(&o), 1, "{err}");
    assert!(
        err.contains("stranger.frag") && err.contains("untrusted"),
        "{err}"
    );
    assert!(
        !err.contains("one.frag"),
        "the good fragment is blamed: {err}"
    );
    assert!(!out.exists());

    // The output's directory does not exist: exit 2, nothing created.
    let m = lab.manifest("good.toml", &["one.frag"], "");
    let out = lab.path().join("no/such/dir/v.img");
    let o = export(&m, &out, false);
    let err = text(&o);
    assert_eq!(code(&o), 2, "{err}");
    assert!(
        err.contains("no/such/dir"),
        "the directory is not named: {err}"
    );
    assert!(!lab.path().join("no").exists());

    assert!(
        leftovers(lab.path()).is_empty(),
        "{:?}",
        leftovers(lab.path())
    );
    // And the good manifest does export.
    export_ok(&m, &lab.path().join("good.img"));
    assert!(
        leftovers(lab.path()).is_empty(),
        "{:?}",
        leftovers(lab.path())
    );
}

// ---------------------------------------------------------------------------
// Ownership

#[test]
fn directory_security_in_the_image_follows_ownership() {
    let lab = Lab::new();
    let k = key(LAB_KEY);
    // a owns /opt: 0750 5:6 with an xattr.
    let a = lab.tree_dir("a");
    make_dir(&a.join("opt"), 0o750);
    lchown(&a.join("opt"), 5, 6);
    set_xattr(&a.join("opt"), b"user.policy", b"from-a");
    write_file(&a.join("opt/a-file"), b"a\n", 0o644);
    pin_times(&a, 1_300_000_000, &[]);
    lab.build("a", &a, &["/opt"], &k);
    // b passes /opt through (0777 99:99, no xattr) and brings /opt/x/y/f
    // with unowned directories of its own modes; it owns only /var.
    let b = lab.tree_dir("b");
    make_dir(&b.join("opt/x/y"), 0o700);
    chmod(&b.join("opt"), 0o777);
    lchown(&b.join("opt"), 99, 99);
    chmod(&b.join("opt/x"), 0o777);
    lchown(&b.join("opt/x"), 42, 42);
    write_file(&b.join("opt/x/y/f"), b"f\n", 0o600);
    lchown(&b.join("opt/x/y/f"), 42, 43);
    make_dir(&b.join("var/lib"), 0o711);
    chmod(&b.join("var"), 0o1777);
    pin_times(&b, 1_200_000_000, &[]);
    lab.build("b", &b, &["/var"], &k);

    let m = lab.manifest("volume.toml", &["b.frag", "a.frag"], "");
    let img = lab.path().join("v.img");
    export_ok(&m, &img);
    assert_fsck_clean(&img);
    let mnt = Mount::new(&img, &lab.path().join("mnt"), true);
    let st = |p: &str| kit::stat_entry(&mnt.path().join(p));
    let policy = vec![(b"user.policy".to_vec(), b"from-a".to_vec())];
    for p in ["opt", "opt/x", "opt/x/y"] {
        let s = st(p);
        assert_eq!(
            (s.kind, s.perm, s.uid, s.gid, &s.xattrs),
            (FileKind::Directory, 0o750, 5, 6, &policy),
            "/{p}"
        );
    }
    // Directory mtimes are the newest among providers: a's for /opt, b's
    // for its own.
    let a_opt = fs::symlink_metadata(a.join("opt")).unwrap();
    assert_eq!(
        (st("opt").mtime_sec, st("opt").mtime_nsec),
        (a_opt.mtime(), a_opt.mtime_nsec())
    );
    let f = st("opt/x/y/f");
    assert_eq!(
        (f.kind, f.perm, f.uid, f.gid),
        (FileKind::Regular, 0o600, 42, 43)
    );
    assert!(f.xattrs.is_empty());
    let var = st("var");
    assert_eq!(
        (var.perm, var.uid, var.gid),
        (0o1777, 0, 0),
        "/var is b's own"
    );
    assert_eq!(st("var/lib").perm, 0o711);
    let root = st("");
    assert_eq!(
        (root.perm, root.uid, root.gid, root.xattrs.len()),
        (0o755, 0, 0, 0),
        "an unowned root"
    );
    assert_eq!(fs::read(mnt.path().join("opt/a-file")).unwrap(), b"a\n");
    mnt.unmount();
}

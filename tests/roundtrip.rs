//! Round trips through the fragment format: directory tree -> fragment ->
//! (read back | extracted tree), checked against the source tree.
//!
//! - `random_trees_round_trip` (proptest): random trees with every entry
//!   kind, odd sizes, holes, hard links, xattrs, capabilities, POSIX ACLs,
//!   odd modes, owners and timestamps; random small-file threshold and
//!   compression. Checks every entry through the library reader and through
//!   `extract`.
//! - `big_sparse_files_round_trip`: files above the streaming threshold.
//! - `extract_keeps_file_capabilities`: `security.capability` survives.
//! - `real_tree_through_the_cli`: a few thousand real files through
//!   `mosaic keygen / fragment build / verify / extract / ls / cat`.
//! - `build_is_deterministic*`: byte-identical fragments.
//! - `failed_builds_*`, `usage_errors_exit_2`: failures leave nothing behind.
//!
//! Needs root (owners, devices, `trusted.*` and `security.*` xattrs) and a
//! filesystem with xattrs, ACLs and nanosecond timestamps (ext4 /tmp).

mod kit;

use fragments::{Fragment, Kind};
use kit::*;
use proptest::prelude::*;
use proptest::sample::Index;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

// ---------------------------------------------------------------------------
// Random trees

#[derive(Debug, Clone)]
enum Name {
    Ascii(String),
    /// Bytes 0x80..=0xff (not UTF-8) then an ASCII tail.
    High(Vec<u8>, String),
    /// 255 bytes.
    Long(u8),
}

#[derive(Debug, Clone)]
enum Content {
    Random {
        size: u64,
        seed: u8,
    },
    Zeros {
        size: u64,
    },
    /// Whole blocks written, some all-zero (bit i % 64 of `zero_mask`), then
    /// a partial tail block.
    Blocks {
        blocks: u8,
        tail: u16,
        seed: u8,
        zero_mask: u64,
    },
    /// `set_len(size)` then a few pieces written at (per-mille offset, length).
    Holes {
        size: u64,
        pieces: Vec<(u16, u16, u8)>,
    },
}

#[derive(Debug, Clone)]
struct Acl {
    user_obj: u16,
    users: Vec<(u32, u16)>,
    group_obj: u16,
    groups: Vec<(u32, u16)>,
    mask: u16,
    other: u16,
}

impl Acl {
    fn bytes(&self) -> Vec<u8> {
        extended_acl(
            self.user_obj,
            &self.users,
            self.group_obj,
            &self.groups,
            self.mask,
            self.other,
        )
    }
}

#[derive(Debug, Clone)]
struct Attrs {
    perm: u32,
    uid: u32,
    gid: u32,
    mtime: (i64, u32),
    /// (index into USER_XATTR_NAMES, value): regular files and directories.
    user_xattrs: Vec<(usize, Vec<u8>)>,
    /// `trusted.mosaic`: any kind.
    trusted: Option<Vec<u8>>,
    /// (permitted, inheritable, effective): regular files.
    cap: Option<(u64, u64, bool)>,
    /// `system.posix_acl_access`: regular files and directories.
    acl: Option<Acl>,
    /// `system.posix_acl_default`: directories.
    default_acl: Option<Acl>,
}

#[derive(Debug, Clone)]
enum Node {
    File(Content),
    Dir(Vec<Child>),
    Symlink(Vec<u8>),
    Device {
        block: bool,
        major: u32,
        minor: u32,
    },
    Fifo,
    Socket,
    /// Another name for one of the tree's regular files (chosen once all
    /// exist); no entry if the tree has none.
    HardLink(Index),
}

#[derive(Debug, Clone)]
struct Child {
    name: Name,
    attrs: Attrs,
    node: Node,
}

#[derive(Debug, Clone)]
struct Case {
    root: Attrs,
    children: Vec<Child>,
    small_threshold: u64,
    zstd: Option<i32>,
}

fn user_xattr_names() -> Vec<Vec<u8>> {
    let mut long = b"user.".to_vec();
    long.extend(std::iter::repeat_n(b'n', 120));
    vec![
        b"user.a".to_vec(),
        b"user.mosaic.test".to_vec(),
        b"user.\xe9t\xe9\xff".to_vec(),
        long,
    ]
}

fn name_strategy() -> impl Strategy<Value = Name> {
    prop_oneof![
        4 => "[a-z0-9_.-]{1,12}".prop_map(Name::Ascii),
        1 => (prop::collection::vec(0x80u8..=0xff, 1..6), "[a-z]{0,4}")
            .prop_map(|(h, t)| Name::High(h, t)),
        1 => (b'a'..=b'z').prop_map(Name::Long),
    ]
}

const SIZES: [u64; 14] = [
    0, 1, 1023, 1024, 1025, 4095, 4096, 4097, 8191, 8192, 8193, 12305, 65536, 200_003,
];

fn content_strategy() -> impl Strategy<Value = Content> {
    let size = prop::sample::select(SIZES.to_vec());
    prop_oneof![
        4 => (size.clone(), 0u8..4).prop_map(|(size, seed)| Content::Random { size, seed }),
        1 => size.prop_map(|size| Content::Zeros { size }),
        2 => (1u8..40, 0u16..4096, 0u8..4, any::<u64>()).prop_map(
            |(blocks, tail, seed, zero_mask)| Content::Blocks { blocks, tail, seed, zero_mask }
        ),
        2 => (
            prop::sample::select(vec![40_960u64, 100_000, (1 << 20) + 5, 3 << 20]),
            prop::collection::vec((0u16..1000, 1u16..9000, any::<u8>()), 0..4),
        )
            .prop_map(|(size, pieces)| Content::Holes { size, pieces }),
    ]
}

fn acl_strategy() -> impl Strategy<Value = Acl> {
    let entry = (0u32..5000, 0u16..8);
    (
        0u16..8,
        prop::collection::vec(entry.clone(), 1..3),
        0u16..8,
        prop::collection::vec(entry, 0..3),
        0u16..8,
        0u16..8,
    )
        .prop_map(|(user_obj, users, group_obj, groups, mask, other)| Acl {
            user_obj,
            users,
            group_obj,
            groups,
            mask,
            other,
        })
}

fn id_strategy() -> impl Strategy<Value = u32> {
    prop_oneof![
        Just(0u32),
        Just(1000),
        Just(65534),
        Just(65535),
        Just(100_000),
        Just(4_000_000_000),
        0u32..u32::MAX,
    ]
}

fn attrs_strategy() -> impl Strategy<Value = Attrs> {
    let perm = prop_oneof![
        Just(0o644u32),
        Just(0o755),
        Just(0),
        Just(0o4755),
        Just(0o2755),
        Just(0o1777),
        Just(0o7777),
        Just(0o6000),
        0u32..0o10000,
    ];
    let sec = prop_oneof![
        Just(0i64),
        Just(-1),
        -2_000_000_000i64..0,
        0i64..2_000_000_000,
        2_000_000_000i64..10_000_000_000,
    ];
    let nsec = prop_oneof![Just(0u32), Just(999_999_999), 0u32..1_000_000_000];
    (
        (perm, id_strategy(), id_strategy(), (sec, nsec)),
        prop::collection::vec(
            (0usize..4, prop::collection::vec(any::<u8>(), 0..160)),
            0..3,
        ),
        prop::option::weighted(0.2, prop::collection::vec(any::<u8>(), 0..40)),
        prop::option::weighted(0.3, (0u64..(1 << 41), 0u64..(1 << 41), any::<bool>())),
        prop::option::weighted(0.3, acl_strategy()),
        prop::option::weighted(0.3, acl_strategy()),
    )
        .prop_map(
            |((perm, uid, gid, mtime), user_xattrs, trusted, cap, acl, default_acl)| Attrs {
                perm,
                uid,
                gid,
                mtime,
                user_xattrs,
                trusted,
                cap,
                acl,
                default_acl,
            },
        )
}

fn leaf_strategy() -> impl Strategy<Value = Node> {
    prop_oneof![
        6 => content_strategy().prop_map(Node::File),
        2 => prop_oneof![
            "[a-z./]{1,20}".prop_map(|s| s.into_bytes()),
            prop::collection::vec(1u8..=255, 1..300),
        ]
        .prop_map(Node::Symlink),
        1 => (any::<bool>(), 0u32..4096, 0u32..(1 << 20))
            .prop_map(|(block, major, minor)| Node::Device { block, major, minor }),
        1 => Just(Node::Fifo),
        1 => Just(Node::Socket),
        2 => any::<Index>().prop_map(Node::HardLink),
    ]
}

fn case_strategy() -> impl Strategy<Value = Case> {
    let leaf = (name_strategy(), attrs_strategy(), leaf_strategy())
        .prop_map(|(name, attrs, node)| Child { name, attrs, node });
    let child = leaf.prop_recursive(3, 40, 8, |inner| {
        (
            name_strategy(),
            attrs_strategy(),
            prop::collection::vec(inner, 0..8),
        )
            .prop_map(|(name, attrs, c)| Child {
                name,
                attrs,
                node: Node::Dir(c),
            })
    });
    (
        attrs_strategy(),
        prop::collection::vec(child, 1..12),
        prop::sample::select(vec![0u64, 1, 1023, 1024, 1025, 4096]),
        prop::sample::select(vec![None, Some(3), Some(1)]),
    )
        .prop_map(|(root, children, small_threshold, zstd)| Case {
            root,
            children,
            small_threshold,
            zstd,
        })
}

// ---------------------------------------------------------------------------
// Making a random tree on disk

#[derive(Default)]
struct Made {
    /// Regular files (first names), in creation order.
    files: Vec<PathBuf>,
    /// Hard links to create at the end.
    links: Vec<(PathBuf, Index)>,
    /// (path, mtime) of non-directories, set at the end.
    times: Vec<(PathBuf, (i64, u32))>,
    /// Directories in post-order (children before parents).
    dirs: Vec<(PathBuf, (i64, u32))>,
}

fn name_bytes(n: &Name) -> Vec<u8> {
    match n {
        Name::Ascii(s) if s == "." || s == ".." => b"dot".to_vec(),
        Name::Ascii(s) => s.as_bytes().to_vec(),
        Name::High(h, t) => {
            let mut v = h.clone();
            v.extend_from_slice(t.as_bytes());
            v
        }
        Name::Long(c) => vec![*c; 255],
    }
}

/// Unique within a directory: raw names never contain `~`.
fn unique_name(raw: Vec<u8>, used: &mut HashSet<Vec<u8>>, i: usize) -> Vec<u8> {
    let mut name = raw;
    if used.contains(&name) {
        let suffix = format!("~{i}");
        name.truncate(255 - suffix.len());
        name.extend_from_slice(suffix.as_bytes());
    }
    assert!(used.insert(name.clone()));
    name
}

fn write_content(path: &Path, c: &Content) {
    let f = fs::File::create(path).unwrap();
    match c {
        Content::Random { size, seed } => {
            f.write_all_at(&random_bytes(*seed as u64, *size as usize), 0)
                .unwrap();
        }
        Content::Zeros { size } => {
            f.write_all_at(&vec![0u8; *size as usize], 0).unwrap();
        }
        Content::Blocks {
            blocks,
            tail,
            seed,
            zero_mask,
        } => {
            let size = *blocks as usize * 4096 + *tail as usize;
            let mut data = random_bytes(*seed as u64 * 7919 + 1, size);
            for (i, b) in data.chunks_mut(4096).enumerate() {
                if zero_mask >> (i % 64) & 1 == 1 {
                    b.fill(0);
                }
            }
            f.write_all_at(&data, 0).unwrap();
        }
        Content::Holes { size, pieces } => {
            f.set_len(*size).unwrap();
            for &(permille, len, seed) in pieces {
                let off = size * permille as u64 / 1000;
                let len = (len as u64).min(size - off) as usize;
                if len > 0 {
                    f.write_all_at(&random_bytes(seed as u64 + 100, len), off)
                        .unwrap();
                }
            }
        }
    }
}

/// Applies owner, permissions and xattrs of `a` to `p`, as far as the kind
/// allows (xattrs after chown: chown drops `security.capability`).
fn apply_attrs(p: &Path, kind: FileKind, a: &Attrs) {
    lchown(p, a.uid, a.gid);
    if kind != FileKind::Symlink {
        chmod(p, a.perm);
    }
    let names = user_xattr_names();
    if matches!(kind, FileKind::Regular | FileKind::Directory) {
        let mut user: BTreeMap<&[u8], &[u8]> = BTreeMap::new();
        for (i, v) in &a.user_xattrs {
            user.insert(&names[*i], v);
        }
        for (n, v) in user {
            set_xattr(p, n, v);
        }
        if let Some(acl) = &a.acl {
            set_xattr(p, b"system.posix_acl_access", &acl.bytes());
        }
    }
    if kind == FileKind::Directory {
        if let Some(acl) = &a.default_acl {
            set_xattr(p, b"system.posix_acl_default", &acl.bytes());
        }
    }
    if let Some(t) = &a.trusted {
        set_xattr(p, b"trusted.mosaic", t);
    }
    if kind == FileKind::Regular {
        if let Some((pe, inh, eff)) = a.cap {
            set_xattr(p, b"security.capability", &vfs_cap_v2(pe, inh, eff));
        }
    }
}

fn make_children(dir: &Path, children: &[Child], made: &mut Made) {
    let mut used = HashSet::new();
    for (i, c) in children.iter().enumerate() {
        let name = unique_name(name_bytes(&c.name), &mut used, i);
        let p = dir.join(OsStr::from_bytes(&name));
        let kind = match &c.node {
            Node::File(content) => {
                write_content(&p, content);
                made.files.push(p.clone());
                FileKind::Regular
            }
            Node::Dir(ch) => {
                fs::create_dir(&p).unwrap();
                make_children(&p, ch, made);
                apply_attrs(&p, FileKind::Directory, &c.attrs);
                made.dirs.push((p, c.attrs.mtime));
                continue;
            }
            Node::Symlink(t) => {
                std::os::unix::fs::symlink(OsStr::from_bytes(t), &p).unwrap();
                FileKind::Symlink
            }
            Node::Device {
                block,
                major,
                minor,
            } => {
                if *block {
                    mknod(&p, Special::Block(*major, *minor));
                    FileKind::BlockDevice
                } else {
                    mknod(&p, Special::Char(*major, *minor));
                    FileKind::CharDevice
                }
            }
            Node::Fifo => {
                mknod(&p, Special::Fifo);
                FileKind::Fifo
            }
            Node::Socket => {
                mknod(&p, Special::Socket);
                FileKind::Socket
            }
            Node::HardLink(idx) => {
                made.links.push((p, *idx));
                continue;
            }
        };
        apply_attrs(&p, kind, &c.attrs);
        made.times.push((p, c.attrs.mtime));
    }
}

/// Creates the tree of `case` at `root` (which must not exist).
fn make_tree(root: &Path, case: &Case) {
    fs::create_dir(root).unwrap();
    let mut made = Made::default();
    make_children(root, &case.children, &mut made);
    if !made.files.is_empty() {
        for (p, idx) in &made.links {
            fs::hard_link(idx.get(&made.files), p).unwrap();
        }
    }
    apply_attrs(root, FileKind::Directory, &case.root);
    for (p, (s, n)) in &made.times {
        set_mtime(p, *s, *n);
    }
    for (p, (s, n)) in &made.dirs {
        set_mtime(p, *s, *n);
    }
    set_mtime(root, case.root.mtime.0, case.root.mtime.1);
}

// ---------------------------------------------------------------------------
// Checking a fragment against its source

/// Every entry of `src` is in `frag` with the same metadata and content,
/// and nothing else is; hard-link groups map to single inodes.
fn check_fragment_matches_source(frag: &Fragment, src: &Path) {
    let m = frag.metadata();
    let snap = snapshot(src);
    assert_eq!(
        m.dentries.len(),
        snap.len() - 1,
        "number of names in the fragment vs entries under the source"
    );
    let mut ino_of_identity: HashMap<(u64, u64), u32> = HashMap::new();
    let mut identity_of_ino: HashMap<u32, (u64, u64)> = HashMap::new();
    for (rel, st) in &snap {
        let what = format!("/{}", rel.escape_ascii());
        let ino = m
            .lookup(rel)
            .unwrap_or_else(|| panic!("{what}: not in the fragment"));
        let inode = m.inode(ino);
        assert_eq!(inode.kind, st.kind.fragment_kind(), "{what}: kind");
        assert_eq!(inode.perm as u32, st.perm, "{what}: permission bits");
        assert_eq!(inode.uid, st.uid, "{what}: uid");
        assert_eq!(inode.gid, st.gid, "{what}: gid");
        assert_eq!(inode.mtime.sec, st.mtime_sec, "{what}: mtime seconds");
        assert_eq!(
            inode.mtime.nsec as i64, st.mtime_nsec,
            "{what}: mtime nanoseconds"
        );
        let xattrs: Vec<(Vec<u8>, Vec<u8>)> = m
            .xattrs_of(ino)
            .map(|(n, v)| (n.to_vec(), v.to_vec()))
            .collect();
        assert_eq!(xattrs, st.xattrs, "{what}: xattrs");
        assert_eq!(
            m.symlink_target(ino).map(|t| t.to_vec()),
            st.symlink_target,
            "{what}: symlink target"
        );
        let dev = match inode.body {
            fragments::Body::Device { major, minor } => Some((major as u64, minor as u64)),
            _ => None,
        };
        assert_eq!(dev, st.rdev, "{what}: device numbers");
        assert_eq!(m.nlink[ino as usize] as u64, st.nlink, "{what}: link count");
        if st.kind == FileKind::Regular {
            assert_eq!(inode.size(), st.size, "{what}: size");
            let want = fs::read(join_rel(src, rel)).unwrap();
            let got = read_all(frag, ino, 1 << 16);
            assert!(got == want, "{what}: content read back differs");
            // Odd windows: across the small/data boundary, blocks, extents, EOF.
            let size = want.len() as u64;
            let mut buf = vec![0xAAu8; 5000];
            for off in [
                1,
                1023,
                4095,
                4097,
                size / 2,
                size.saturating_sub(1),
                size,
                size + 10,
            ] {
                let n = frag.read_file(ino, off, &mut buf).unwrap();
                let end = (off + buf.len() as u64).min(size);
                let exp: &[u8] = if off < size {
                    &want[off as usize..end as usize]
                } else {
                    &[]
                };
                assert_eq!(n, exp.len(), "{what}: read_file at {off}: length");
                assert!(buf[..n] == *exp, "{what}: read_file at {off}: bytes");
            }
        }
        if st.kind != FileKind::Directory {
            if let Some(&i) = ino_of_identity.get(&st.identity) {
                assert_eq!(i, ino, "{what}: hard link to another fragment inode");
            }
            ino_of_identity.insert(st.identity, ino);
            if let Some(&id) = identity_of_ino.get(&ino) {
                assert_eq!(
                    id, st.identity,
                    "{what}: distinct files share a fragment inode"
                );
            }
            identity_of_ino.insert(ino, st.identity);
        }
    }
}

/// Builds, opens, verifies, checks the reader and `extract` for one tree.
fn round_trip(src: &Path, work: &Path, opts: &fragments::BuildOptions) {
    let k = key(1);
    let out = work.join("t.frag");
    build(src, &out, &k, opts);
    let frag = open(&out, &k);
    let faults = frag.verify_all(&|_| {}).expect("verify_all");
    assert!(faults.is_empty(), "verify_all found faults: {faults:?}");
    check_fragment_matches_source(&frag, src);
    let dst = work.join("extracted");
    fragments::extract(&frag, &dst).expect("extract");
    assert_same_tree(src, &dst);
}

proptest! {
    #![proptest_config(ProptestConfig {
        // MOSAIC_PROPTEST_CASES=400 for a longer search.
        cases: std::env::var("MOSAIC_PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(32),
        max_shrink_iters: 64,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn random_trees_round_trip(case in case_strategy()) {
        let t = tempdir();
        let src = t.path().join("src");
        make_tree(&src, &case);
        round_trip(&src, t.path(), &options(case.small_threshold, case.zstd));
    }
}

// ---------------------------------------------------------------------------
// Fixed trees

/// Files at and above the builder's streaming size (32 MiB): holes found with
/// SEEK_DATA, a data run longer than one 8 MiB piece, a duplicate (dedup
/// rewinds the data region), an all-hole file and a file ending mid-block.
#[test]
fn big_sparse_files_round_trip() {
    let t = tempdir();
    let src = t.path().join("src");
    fs::create_dir(&src).unwrap();
    let f = fs::File::create(src.join("big")).unwrap();
    f.set_len(33 * MIB + 123).unwrap();
    f.write_all_at(&random_bytes(1, 4096), 0).unwrap();
    f.write_all_at(&random_bytes(2, 10_000), 5 * MIB + 100)
        .unwrap();
    f.write_all_at(&random_bytes(3, (9 * MIB) as usize), 12 * MIB)
        .unwrap();
    f.write_all_at(b"the end", 33 * MIB + 116).unwrap();
    drop(f);
    fs::copy(src.join("big"), src.join("big-copy")).unwrap();
    // fs::copy may fill holes; that must not matter for the content.
    fs::File::create(src.join("holes"))
        .unwrap()
        .set_len(32 * MIB)
        .unwrap();
    fs::write(src.join("small"), b"small").unwrap();
    for (name, t) in [
        ("big", 5),
        ("big-copy", 5),
        ("holes", 6),
        ("small", 7),
        ("", 8),
    ] {
        set_mtime(&src.join(name), 1_700_000_000 + t, 123);
    }
    for zstd in [None, Some(3)] {
        let w = t.path().join(format!("w{}", zstd.is_some()));
        fs::create_dir(&w).unwrap();
        let k = key(2);
        let report = build(&src, &w.join("t.frag"), &k, &options(1024, zstd));
        assert!(report.deduplicated_files >= 1, "{report:?}");
        // Stored once: the data region holds about 9 MiB + 3 pieces, not twice that.
        if zstd.is_none() {
            assert!(
                report.data_region_bytes < 10 * MIB,
                "data region {} bytes: duplicate or holes stored",
                report.data_region_bytes
            );
        }
        round_trip(&src, &w, &options(1024, zstd));
    }
}

/// More files than one read batch holds (4096 files, 64 MiB): duplicates
/// across batch boundaries are stored once, and everything reads back.
#[test]
fn files_across_read_batches() {
    let t = tempdir();
    let src = t.path().join("src");
    fs::create_dir_all(src.join("many")).unwrap();
    // Three 30 MiB files (under the streaming size): two fill a batch, the
    // third, a copy of the first, starts the next one.
    for (name, seed) in [("big-a", 1), ("big-b", 2)] {
        let f = fs::File::create(src.join(name)).unwrap();
        f.set_len(30 * MIB).unwrap();
        f.write_all_at(&random_bytes(seed, 70_000), 0).unwrap();
        f.write_all_at(&random_bytes(seed + 10, 5000), 29 * MIB + 7)
            .unwrap();
    }
    fs::copy(src.join("big-a"), src.join("big-c")).unwrap();
    // 4400 files in 300 content classes (class k: k*13 bytes from seed k).
    for i in 0..4400u64 {
        let k = i % 300;
        fs::write(
            src.join(format!("many/f{i:05}")),
            random_bytes(k, (k * 13) as usize),
        )
        .unwrap();
    }
    let k = key(7);
    let report = build(&src, &t.path().join("t.frag"), &k, &options(1024, None));
    // Classes 1..200 have 15 files, 200..300 have 14; class 0 is empty
    // files (nothing stored); plus big-c.
    assert_eq!(
        report.deduplicated_files,
        199 * 14 + 100 * 13 + 1,
        "{report:?}"
    );
    assert_eq!(report.regular_files, 4403);
    round_trip(&src, t.path(), &options(1024, None));
}

/// Degenerate trees: nothing at all, only small files, only holes; with
/// empty data and small-data regions, raw and compressed.
#[test]
fn degenerate_trees_round_trip() {
    type Maker = fn(&Path);
    let makers: [(&str, Maker); 4] = [
        ("empty", |_| {}),
        ("only-small", |d| {
            fs::write(d.join("a"), b"a").unwrap();
            fs::write(d.join("b"), random_bytes(1, 1023)).unwrap();
        }),
        ("only-holes", |d| {
            fs::File::create(d.join("h"))
                .unwrap()
                .set_len(1 << 20)
                .unwrap();
            fs::write(d.join("z"), vec![0u8; 8192]).unwrap();
            fs::write(d.join("e"), b"").unwrap();
        }),
        ("only-dirs", |d| {
            fs::create_dir_all(d.join("a/b/c/d")).unwrap();
            fs::create_dir_all(d.join("e")).unwrap();
        }),
    ];
    for (name, make) in makers {
        for zstd in [None, Some(3)] {
            let w = tempdir();
            let src = w.path().join("src");
            fs::create_dir(&src).unwrap();
            make(&src);
            for d in snapshot(&src).keys().rev() {
                set_mtime(&join_rel(&src, d), 86_400, 1);
            }
            round_trip(&src, w.path(), &options(1024, zstd));
            eprintln!("{name} {zstd:?}: ok");
        }
    }
}

/// `security.capability` (a VFS v2 blob) is kept by the builder and restored
/// by `extract`.
#[test]
fn extract_keeps_file_capabilities() {
    let t = tempdir();
    let src = t.path().join("src");
    fs::create_dir(&src).unwrap();
    let p = src.join("ping");
    fs::write(&p, b"#!/bin/true\n").unwrap();
    chmod(&p, 0o755);
    // cap_net_raw (13) permitted + effective.
    let cap = vfs_cap_v2(1 << 13, 0, true);
    set_xattr(&p, b"security.capability", &cap);
    let k = key(3);
    let out = t.path().join("t.frag");
    build(&src, &out, &k, &options(1024, None));
    let frag = open(&out, &k);
    let m = frag.metadata();
    let ino = m.lookup(b"/ping").unwrap();
    let stored: Vec<(Vec<u8>, Vec<u8>)> = m
        .xattrs_of(ino)
        .map(|(n, v)| (n.to_vec(), v.to_vec()))
        .collect();
    assert_eq!(
        stored,
        vec![(b"security.capability".to_vec(), cap.clone())],
        "the fragment records the capability"
    );
    let dst = t.path().join("out");
    fragments::extract(&frag, &dst).unwrap();
    assert_eq!(
        xattr::get(dst.join("ping"), "security.capability").unwrap(),
        Some(cap),
        "extract lost security.capability (chown after setxattr drops it)"
    );
}

// ---------------------------------------------------------------------------
// A real tree through the CLI

fn du(path: &Path) -> (u64, u64) {
    let md = fs::symlink_metadata(path).unwrap();
    if md.is_dir() {
        let mut t = (0, 1);
        for n in list_dir(path) {
            let (b, c) = du(&path.join(n));
            t.0 += b;
            t.1 += c;
        }
        t
    } else {
        (md.len(), 1)
    }
}

/// Copies a few thousand real files (and their symlinks) into `dst`:
/// /usr/share/doc packages of modest size, then the Python (or Perl)
/// standard library without its heavy parts.
fn copy_real_files(dst: &Path) -> u64 {
    let doc = dst.join("doc");
    fs::create_dir(&doc).unwrap();
    let mut files = 0;
    let mut bytes = 0;
    for n in list_dir(Path::new("/usr/share/doc")) {
        let p = Path::new("/usr/share/doc").join(&n);
        let (b, c) = du(&p);
        if b > 1_500_000 {
            continue;
        }
        cp_a(&p, &doc);
        files += c;
        bytes += b;
        if files > 3000 || bytes > 30_000_000 {
            break;
        }
    }
    let lib = [
        Path::new("/usr/lib/python3.11"),
        Path::new("/usr/share/perl5"),
    ]
    .into_iter()
    .find(|p| p.is_dir())
    .expect("neither /usr/lib/python3.11 nor /usr/share/perl5");
    let libdst = dst.join("lib");
    fs::create_dir(&libdst).unwrap();
    for n in list_dir(lib) {
        let p = lib.join(&n);
        let (b, c) = du(&p);
        if b > 3_000_000 || n.as_bytes().starts_with(b"__pycache__") {
            continue;
        }
        cp_a(&p, &libdst);
        files += c;
    }
    files
}

#[test]
fn real_tree_through_the_cli() {
    let t = tempdir();
    let src = t.path().join("src");
    fs::create_dir(&src).unwrap();
    let n = copy_real_files(&src);
    assert!((2000..9000).contains(&n), "{n} entries copied");

    // Hard links (within a directory and across directories) and xattrs.
    let regular: Vec<PathBuf> = snapshot(&src)
        .into_iter()
        .filter(|(_, s)| s.kind == FileKind::Regular && s.nlink == 1)
        .map(|(p, _)| join_rel(&src, &p))
        .take(200)
        .collect();
    let links = src.join("links");
    fs::create_dir(&links).unwrap();
    fs::hard_link(&regular[10], links.join("one")).unwrap();
    fs::hard_link(&regular[10], links.join("two")).unwrap();
    fs::hard_link(&regular[150], links.join("three")).unwrap();
    let mut beside = regular[20].clone().into_os_string();
    beside.push(".link");
    fs::hard_link(&regular[20], &beside).unwrap();
    set_xattr(&regular[30], b"user.mosaic", b"\x00\x01binary\xff");
    set_xattr(&regular[31], b"user.empty", b"");
    set_xattr(&links, b"user.dir", b"on a directory");
    set_xattr(
        &links,
        b"system.posix_acl_default",
        &extended_acl(7, &[(1000, 5)], 5, &[], 5, 0),
    );
    set_xattr(
        &regular[40],
        b"system.posix_acl_access",
        &extended_acl(6, &[(1000, 6)], 4, &[(100, 4)], 6, 4),
    );
    set_mtime(&links, 1_600_000_000, 1);

    // keygen
    let key_path = t.path().join("lab.key");
    mosaic_ok([OsStr::new("keygen"), OsStr::new("-o"), key_path.as_os_str()]);
    let pub_path = t.path().join("lab.key.pub");
    assert_eq!(
        fs::metadata(&key_path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(fs::read_to_string(&pub_path)
        .unwrap()
        .starts_with("-----BEGIN PUBLIC KEY-----"));

    // build, verify
    let frag = t.path().join("real.frag");
    mosaic_ok([
        OsStr::new("fragment"),
        OsStr::new("build"),
        src.as_os_str(),
        OsStr::new("-o"),
        frag.as_os_str(),
        OsStr::new("--key"),
        key_path.as_os_str(),
    ]);
    let out = mosaic_ok([
        OsStr::new("fragment"),
        OsStr::new("verify"),
        frag.as_os_str(),
        OsStr::new("--trust"),
        pub_path.as_os_str(),
    ]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("OK"));

    // extract; diff; metadata
    let dst = t.path().join("out");
    mosaic_ok([
        OsStr::new("fragment"),
        OsStr::new("extract"),
        frag.as_os_str(),
        dst.as_os_str(),
        OsStr::new("--trust"),
        pub_path.as_os_str(),
    ]);
    let diff = tool(
        "diff",
        [
            OsStr::new("-r"),
            OsStr::new("--no-dereference"),
            src.as_os_str(),
            dst.as_os_str(),
        ],
    );
    assert!(
        diff.status.success(),
        "diff -r --no-dereference: {}\n{}",
        diff.status,
        String::from_utf8_lossy(&diff.stdout)
    );
    assert_same_tree(&src, &dst);

    // ls of directories: names in byte order, one line each
    for dir in ["/lib", "/doc", "/links"] {
        let out = mosaic_ok([
            OsStr::new("fragment"),
            OsStr::new("ls"),
            frag.as_os_str(),
            OsStr::new(dir),
        ]);
        let text = String::from_utf8(out.stdout).unwrap();
        let names: Vec<&str> = text
            .lines()
            .map(|l| *l.split_whitespace().collect::<Vec<_>>().get(7).expect(l))
            .collect();
        let want: Vec<String> = list_dir(&src.join(&dir[1..]))
            .into_iter()
            .map(|n| n.into_string().unwrap())
            .collect();
        assert!(
            want.iter().all(|n| !n.contains(char::is_whitespace)),
            "pick another directory for ls"
        );
        assert_eq!(names, want, "mosaic fragment ls {dir}");
        for l in text.lines() {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f[0].starts_with('l') {
                let target = fs::read_link(src.join(&dir[1..]).join(f[7])).unwrap();
                assert_eq!(
                    f.get(8..),
                    Some(&["->", target.to_str().unwrap()][..]),
                    "{l}"
                );
            }
        }
    }
    // ls of one hard-linked file: type, permissions, link count, size
    let out = mosaic_ok([
        OsStr::new("fragment"),
        OsStr::new("ls"),
        frag.as_os_str(),
        OsStr::new("/links/one"),
    ]);
    let line = String::from_utf8(out.stdout).unwrap();
    let f: Vec<&str> = line.split_whitespace().collect();
    let md = fs::metadata(links.join("one")).unwrap();
    assert!(f[0].starts_with('-'), "{line}");
    assert_eq!(f[1], "3", "{line}");
    assert_eq!(f[4], md.len().to_string(), "{line}");

    // cat: exact bytes, binary and text, hard-linked, empty
    let mut cats: Vec<PathBuf> = vec![links.join("two"), regular[30].clone(), regular[199].clone()];
    let snap = snapshot(&src);
    for want in [".gz", ".py"] {
        if let Some((p, _)) = snap
            .iter()
            .find(|(p, s)| s.kind == FileKind::Regular && p.ends_with(want.as_bytes()))
        {
            cats.push(join_rel(&src, p));
        }
    }
    if let Some((p, _)) = snap
        .iter()
        .find(|(_, s)| s.kind == FileKind::Regular && s.size == 0)
    {
        cats.push(join_rel(&src, p));
    }
    assert!(cats.len() >= 5);
    eprintln!(
        "real tree: {n} entries copied, {} checked by cat",
        cats.len()
    );
    for p in &cats {
        let rel = format!("/{}", p.strip_prefix(&src).unwrap().display());
        let out = mosaic_ok([
            OsStr::new("fragment"),
            OsStr::new("cat"),
            frag.as_os_str(),
            OsStr::new(&rel),
        ]);
        assert!(
            out.stdout == fs::read(p).unwrap(),
            "mosaic fragment cat {rel}"
        );
    }

    // Invalid requests about a valid fragment: exit 1.
    let other = t.path().join("other.key");
    mosaic_ok([OsStr::new("keygen"), OsStr::new("-o"), other.as_os_str()]);
    let mut other_pub = other.into_os_string();
    other_pub.push(".pub");
    let frag_s = frag.as_os_str();
    for args in [
        vec!["fragment".as_ref(), "cat".as_ref(), frag_s, "/doc".as_ref()],
        vec![
            "fragment".as_ref(),
            "cat".as_ref(),
            frag_s,
            "/no/such".as_ref(),
        ],
        vec![
            "fragment".as_ref(),
            "ls".as_ref(),
            frag_s,
            "/no/such".as_ref(),
        ],
        vec![
            "fragment".as_ref(),
            "verify".as_ref(),
            frag_s,
            "--trust".as_ref(),
            other_pub.as_os_str(),
        ],
    ] {
        let (c, err) = mosaic_code(&args);
        assert_eq!(c, 1, "mosaic {args:?}: {err}");
    }
}

// ---------------------------------------------------------------------------
// Determinism

/// One entry of the determinism tree.
#[derive(Clone)]
enum Spec {
    File(Vec<u8>),
    Sparse(u64, Vec<(u64, Vec<u8>)>),
    Link(&'static str),
    Symlink(&'static [u8]),
    Node(Special),
    Dir,
}

fn det_entries() -> Vec<(&'static [u8], Spec)> {
    vec![
        (b"a", Spec::Dir),
        (b"a/b", Spec::Dir),
        (b"a/b/c", Spec::Dir),
        (b"z", Spec::Dir),
        (b"\xff\xfe", Spec::Dir),
        (b"a/small", Spec::File(b"tiny".to_vec())),
        (b"a/small-dup", Spec::File(b"tiny".to_vec())),
        (b"a/b/1023", Spec::File(random_bytes(1, 1023))),
        (b"a/b/1024", Spec::File(random_bytes(2, 1024))),
        (b"a/b/c/4097", Spec::File(random_bytes(3, 4097))),
        (b"z/big", Spec::File(random_bytes(4, 300_000))),
        (b"z/big-dup", Spec::File(random_bytes(4, 300_000))),
        (b"z/empty", Spec::File(Vec::new())),
        (
            b"z/sparse",
            Spec::Sparse(
                5 << 20,
                vec![(0, random_bytes(5, 100)), (3 << 20, random_bytes(6, 9000))],
            ),
        ),
        (b"\xff\xfe/\x80name", Spec::File(random_bytes(7, 5000))),
        (b"a/b/hard", Spec::Link("z/big")),
        (b"\xff\xfe/hard2", Spec::Link("z/big")),
        (b"a/sym", Spec::Symlink(b"../z/big")),
        (b"z/sym-long", Spec::Symlink(&[b'x'; 300])),
        (b"z/fifo", Spec::Node(Special::Fifo)),
        (b"z/sock", Spec::Node(Special::Socket)),
        (b"z/chr", Spec::Node(Special::Char(1, 3))),
        (b"a/blk", Spec::Node(Special::Block(8, 300))),
    ]
}

/// A deterministic shuffle (Fisher-Yates with splitmix bytes).
fn shuffle<T>(v: &mut [T], seed: u64) {
    let r = random_bytes(seed, v.len() * 8);
    for i in (1..v.len()).rev() {
        let x = u64::from_le_bytes(r[i * 8..i * 8 + 8].try_into().unwrap());
        v.swap(i, (x % (i as u64 + 1)) as usize);
    }
}

/// Creates the determinism tree at `root`, in an order given by `seed`
/// (files before their directories' metadata, links before or after their
/// originals, xattrs in any order), with `decoys` throwaway files first so
/// inode numbers differ.
fn make_det_tree(root: &Path, seed: u64, decoys: usize) {
    let scratch = root.with_extension("decoys");
    fs::create_dir(&scratch).unwrap();
    for i in 0..decoys {
        fs::write(scratch.join(i.to_string()), b"x").unwrap();
    }
    fs::create_dir(root).unwrap();
    let mut entries = det_entries();
    shuffle(&mut entries, seed);
    let path = |rel: &[u8]| root.join(OsStr::from_bytes(rel));
    // Create every entry, parents on demand. Members of a hard-link group
    // (an original and its `Link`s) link to whichever member exists first.
    let originals: BTreeMap<&[u8], Vec<u8>> = det_entries()
        .into_iter()
        .filter_map(|(r, s)| match s {
            Spec::File(b) => Some((r, b)),
            _ => None,
        })
        .collect();
    let group_of = |rel: &[u8], spec: &Spec| -> Option<&'static [u8]> {
        match spec {
            Spec::Link(o) => Some(o.as_bytes()),
            Spec::File(_) => det_entries().into_iter().find_map(|(_, s)| match s {
                Spec::Link(o) if o.as_bytes() == rel => Some(o.as_bytes()),
                _ => None,
            }),
            _ => None,
        }
    };
    let mut created: BTreeSet<Vec<u8>> = BTreeSet::new();
    for (rel, spec) in &entries {
        let p = path(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        match spec {
            Spec::Dir => fs::create_dir_all(&p).unwrap(),
            Spec::File(_) | Spec::Link(_) => {
                let orig = group_of(rel, spec).unwrap_or(rel);
                let first = det_entries()
                    .into_iter()
                    .find(|(r, s)| created.contains(*r) && group_of(r, s) == Some(orig));
                match first {
                    Some((r, _)) => fs::hard_link(path(r), &p).unwrap(),
                    None => fs::write(&p, &originals[orig]).unwrap(),
                }
            }
            Spec::Sparse(len, pieces) => {
                let f = fs::File::create(&p).unwrap();
                f.set_len(*len).unwrap();
                for (off, b) in pieces {
                    f.write_all_at(b, *off).unwrap();
                }
            }
            Spec::Symlink(t) => std::os::unix::fs::symlink(OsStr::from_bytes(t), &p).unwrap(),
            Spec::Node(s) => mknod(&p, *s),
        }
        created.insert(rel.to_vec());
    }
    // Metadata, in the shuffled order; xattrs in a seed-dependent order.
    let mut xattrs: Vec<(&[u8], Vec<u8>)> = vec![
        (b"user.one", b"1".to_vec()),
        (b"user.two", random_bytes(9, 100)),
        (b"user.three", Vec::new()),
        (
            b"system.posix_acl_access",
            extended_acl(7, &[(1000, 5), (7, 1)], 5, &[(50, 4)], 7, 0),
        ),
    ];
    for (i, (rel, spec)) in entries.iter().enumerate() {
        let p = path(rel);
        // Per inode, not per name: every name of a hard-linked file agrees.
        let k = group_of(rel, spec).unwrap_or(rel).len();
        let kind = FileKind::of(fs::symlink_metadata(&p).unwrap().file_type());
        lchown(&p, 1000 + k as u32 % 3, 100);
        if kind != FileKind::Symlink {
            chmod(&p, [0o644, 0o4755, 0o1777, 0][k % 4]);
        }
        if matches!(spec, Spec::File(_) | Spec::Link(_) | Spec::Dir) {
            shuffle(&mut xattrs, seed + i as u64);
            for (n, v) in &xattrs {
                set_xattr(&p, n, v);
            }
        }
    }
    for (rel, spec) in &entries {
        if !matches!(spec, Spec::Dir) {
            let k = group_of(rel, spec).unwrap_or(rel).len();
            set_mtime(&path(rel), -86_400 * 365 + k as i64, 999_999_999);
        }
    }
    let mut dirs: Vec<&[u8]> = entries
        .iter()
        .filter(|(_, s)| matches!(s, Spec::Dir))
        .map(|(r, _)| *r)
        .collect();
    dirs.sort_by_key(|r| std::cmp::Reverse(r.len()));
    for rel in dirs {
        set_mtime(&path(rel), 1_000_000_000 + rel.len() as i64, 5);
    }
    chmod(root, 0o755);
    set_mtime(root, 1_234_567_890, 42);
}

#[test]
fn build_is_deterministic() {
    let t = tempdir();
    let (a, b) = (t.path().join("a"), t.path().join("b"));
    make_det_tree(&a, 1, 0);
    make_det_tree(&b, 2, 37);
    // The two trees really are the same tree, created differently.
    assert_same_tree(&a, &b);
    let ia = fs::metadata(a.join("z")).unwrap().ino();
    let ib = fs::metadata(b.join("z")).unwrap().ino();
    assert_ne!(ia, ib);

    let k = key(4);
    for (i, zstd) in [None, Some(3)].into_iter().enumerate() {
        let opts = options(1024, zstd);
        let fa = t.path().join(format!("a{i}.frag"));
        let fb = t.path().join(format!("b{i}.frag"));
        let fa2 = t.path().join(format!("a{i}-again.frag"));
        build(&a, &fa, &k, &opts);
        build(&b, &fb, &k, &opts);
        build(&a, &fa2, &k, &opts);
        let (ba, bb, ba2) = (
            fs::read(&fa).unwrap(),
            fs::read(&fb).unwrap(),
            fs::read(&fa2).unwrap(),
        );
        assert!(
            ba == ba2,
            "zstd {zstd:?}: the same tree built twice differs"
        );
        if ba != bb {
            let at = ba.iter().zip(&bb).position(|(x, y)| x != y);
            panic!(
                "zstd {zstd:?}: equal trees give different fragments ({} vs {} bytes, first difference at {at:?})",
                ba.len(),
                bb.len()
            );
        }
        // And the fragment is the tree.
        let frag = open(&fa, &k);
        check_fragment_matches_source(&frag, &a);
    }
}

// ---------------------------------------------------------------------------
// Failures

fn build_args<'a>(src: &'a Path, out: &'a Path, key: &'a Path) -> Vec<&'a OsStr> {
    vec![
        OsStr::new("fragment"),
        OsStr::new("build"),
        src.as_os_str(),
        OsStr::new("-o"),
        out.as_os_str(),
        OsStr::new("--key"),
        key.as_os_str(),
    ]
}

/// A tree, a key pair, and an output directory holding one unrelated file.
struct Setup {
    t: tempfile::TempDir,
    src: PathBuf,
    key: PathBuf,
    outdir: PathBuf,
}

fn setup() -> Setup {
    let t = tempdir();
    let src = t.path().join("src");
    fs::create_dir_all(src.join("etc")).unwrap();
    fs::write(src.join("etc/hosts"), b"127.0.0.1 localhost\n").unwrap();
    let (key, _) = write_keys(t.path(), "k", &key(5));
    let outdir = t.path().join("out");
    fs::create_dir(&outdir).unwrap();
    fs::write(outdir.join("keep.txt"), b"keep").unwrap();
    Setup {
        t,
        src,
        key,
        outdir,
    }
}

#[test]
fn failed_builds_leave_nothing_behind() {
    let s = setup();
    let out = s.outdir.join("f.frag");
    let before = list_dir(&s.outdir);

    // Missing source directory.
    let missing = s.t.path().join("no-such-dir");
    let (c, err) = mosaic_code(build_args(&missing, &out, &s.key));
    assert_eq!(c, 2, "missing source: {err}");
    assert!(err.contains("no-such-dir"), "error names the source: {err}");
    assert_eq!(list_dir(&s.outdir), before);

    // Source is a file, not a directory.
    let (c, err) = mosaic_code(build_args(&s.src.join("etc/hosts"), &out, &s.key));
    assert_eq!(c, 2, "source is a file: {err}");
    assert_eq!(list_dir(&s.outdir), before);

    // --owns a directory that is not in the tree.
    let mut args = build_args(&s.src, &out, &s.key);
    args.extend([OsStr::new("--owns"), OsStr::new("/nonexistent")]);
    let (c, err) = mosaic_code(&args);
    assert_eq!(c, 2, "--owns /nonexistent: {err}");
    assert!(err.contains("/nonexistent"), "error names the path: {err}");
    assert_eq!(list_dir(&s.outdir), before);

    // --owns a file, not a directory.
    let mut args = build_args(&s.src, &out, &s.key);
    args.extend([OsStr::new("--owns"), OsStr::new("/etc/hosts")]);
    let (c, err) = mosaic_code(&args);
    assert_eq!(c, 2, "--owns a file: {err}");
    assert_eq!(list_dir(&s.outdir), before);

    // The same through the library: an error, no files.
    let opts = fragments::BuildOptions {
        owns: vec!["/nonexistent".into()],
        ..Default::default()
    };
    let r = fragments::build(&s.src, &out, &key(5), &opts, &fragments::NoProgress);
    assert!(
        matches!(r, Err(fragments::Error::Options(ref m)) if m.contains("/nonexistent")),
        "{r:?}"
    );
    assert_eq!(list_dir(&s.outdir), before);

    // Bad option values: rejected before anything is written.
    for extra in [
        &["--small-threshold", "5000"][..],
        &["--compress", "lz4"],
        &["--compress", "zstd:99"],
        &["--name", &"n".repeat(300)],
    ] {
        let mut args = build_args(&s.src, &out, &s.key);
        args.extend(extra.iter().map(OsStr::new));
        let (c, err) = mosaic_code(&args);
        assert_eq!(c, 2, "{extra:?}: {err}");
        assert_eq!(list_dir(&s.outdir), before, "{extra:?}");
    }

    // Output directory that does not exist.
    let (c, err) = mosaic_code(build_args(&s.src, &s.t.path().join("nodir/f.frag"), &s.key));
    assert_eq!(c, 2, "missing output directory: {err}");
}

/// A build that fails while reading contents (after its temporary file
/// exists): run unprivileged on a tree with an unreadable file. The
/// temporary file is removed and an existing output is left as it was.
#[test]
fn failed_builds_remove_their_temporary_file() {
    const NOBODY: u32 = 65534;
    let s = setup();
    let out = s.outdir.join("f.frag");
    // A good fragment already in place.
    mosaic_ok(build_args(&s.src, &out, &s.key));
    let good = fs::read(&out).unwrap();
    let before = list_dir(&s.outdir);

    let secret = s.src.join("etc/shadow");
    fs::write(&secret, b"root:*:19000:0:99999:7:::\n").unwrap();
    chmod(&secret, 0);
    chmod(s.t.path(), 0o755);
    lchown(&s.outdir, NOBODY, NOBODY);
    lchown(&s.key, NOBODY, NOBODY);

    let mut as_nobody = mosaic_cmd(build_args(&s.src, &out, &s.key));
    as_nobody.uid(NOBODY).gid(NOBODY);
    let o = output_within(as_nobody, MOSAIC_DEADLINE);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(code(&o), 2, "unreadable source file: {err}");
    assert!(err.contains("etc/shadow"), "error names the file: {err}");
    assert_eq!(list_dir(&s.outdir), before, "temporary file left behind");
    assert!(fs::read(&out).unwrap() == good, "existing output changed");

    // Sanity: the same user can build once the file is readable.
    chmod(&secret, 0o644);
    let mut as_nobody = mosaic_cmd(build_args(&s.src, &out, &s.key));
    as_nobody.uid(NOBODY).gid(NOBODY);
    let o = output_within(as_nobody, MOSAIC_DEADLINE);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(fs::read(&out).unwrap() != good);
    assert_eq!(list_dir(&s.outdir), before);
}

#[test]
fn usage_errors_exit_2() {
    let s = setup();
    let out = s.outdir.join("f.frag");
    let src = s.src.as_os_str();
    let cases: Vec<Vec<&OsStr>> = vec![
        vec![OsStr::new("frobnicate")],
        vec![OsStr::new("fragment"), OsStr::new("build")],
        vec![OsStr::new("fragment"), OsStr::new("build"), src],
        vec![
            OsStr::new("fragment"),
            OsStr::new("build"),
            src,
            OsStr::new("-o"),
            out.as_os_str(),
        ],
        {
            let mut a = build_args(&s.src, &out, &s.key);
            a.push(OsStr::new("--bogus"));
            a
        },
        {
            let mut a = build_args(&s.src, &out, &s.key);
            a.extend([OsStr::new("--small-threshold"), OsStr::new("abc")]);
            a
        },
        vec![
            OsStr::new("fragment"),
            OsStr::new("verify"),
            out.as_os_str(),
        ],
    ];
    for args in cases {
        let (c, err) = mosaic_code(&args);
        assert_eq!(c, 2, "mosaic {args:?}: {err}");
        assert!(!err.is_empty(), "mosaic {args:?}: no message");
    }
    assert_eq!(list_dir(&s.outdir), vec![OsStr::new("keep.txt").to_owned()]);
}

/// One entry of every kind: the helpers see every kind, device numbers
/// beyond 8 bits survive, and the fragment holds all seven kinds.
#[test]
fn snapshot_sees_every_kind() {
    let t = tempdir();
    let src = t.path().join("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("f"), b"x").unwrap();
    fs::create_dir(src.join("d")).unwrap();
    std::os::unix::fs::symlink("f", src.join("l")).unwrap();
    mknod(&src.join("c"), Special::Char(1, 7));
    mknod(&src.join("b"), Special::Block(259, 70_000));
    mknod(&src.join("p"), Special::Fifo);
    mknod(&src.join("s"), Special::Socket);
    let snap = snapshot(&src);
    let kinds: BTreeSet<_> = snap.values().map(|s| s.kind).collect();
    assert_eq!(kinds.len(), 7);
    assert_eq!(snap[&b"b".to_vec()].rdev, Some((259, 70_000)));
    let k = key(6);
    let out = t.path().join("k.frag");
    build(&src, &out, &k, &options(1024, None));
    let frag = open(&out, &k);
    let m = frag.metadata();
    let got: HashSet<Kind> = m.inodes.iter().map(|i| i.kind).collect();
    assert_eq!(got.len(), 7);
    check_fragment_matches_source(&frag, &src);
}

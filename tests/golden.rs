//! Golden fragment: a tiny tree with fixed contents, modes, owners and
//! nanosecond mtimes, built with a fixed key, must give exactly the
//! committed dump (`tests/golden/tiny.dump`, from `fragments::dump`) and
//! exactly the committed blake3 of the fragment's bytes
//! (`tests/golden/tiny.blake3`). Any change to the format shows up here.
//!
//! To regenerate after an intended format change (a FORMAT BREAK):
//! `MOSAIC_BLESS=1 cargo test --test golden`, then review the diff.

mod kit;

use fragments::{BuildOptions, Fragment, Trust};
use kit::golden::{blake3_hex, compare_or_bless};
use kit::*;
use std::fs;
use std::os::unix::fs::{lchown, symlink};
use std::path::{Path, PathBuf};

/// Fixed times: seconds and nanoseconds.
const T_FILE: (i64, u32) = (1_000_000_000, 123_456_789);
const T_SMALL: (i64, u32) = (1_100_000_000, 1);
const T_LINK: (i64, u32) = (1_200_000_000, 999_999_999);
const T_SUB: (i64, u32) = (1_300_000_000, 500_000_000);
const T_ROOT: (i64, u32) = (1_400_000_000, 42);

/// Contents of the 3-block file: data, a zero block (a hole), data (partial).
fn holey() -> Vec<u8> {
    let mut v = vec![b'A'; 4096];
    v.extend(vec![0u8; 4096]);
    v.extend(vec![b'C'; 3000]);
    v
}

fn five() -> Vec<u8> {
    (0..5000u32).map(|i| (i % 251) as u8 + 1).collect()
}

const SMALL: &[u8] = b"hello, golden\n";

/// The tree:
///
/// ```text
/// /            0755  T_ROOT
/// /empty       0644  empty file
/// /five        0755  5000 bytes
/// /holey       0600  A-block, zero block, 3000 bytes of C
/// /link     -> small.txt
/// /small.txt   0644  14 bytes, xattr user.test = "golden-value"
/// /sub         0700  T_SUB
/// /sub/again        hard link of /small.txt
/// ```
fn make_tree(root: &Path) {
    make_dir(root, 0o755);
    write_file(&root.join("empty"), b"", 0o644);
    write_file(&root.join("five"), &five(), 0o755);
    write_file(&root.join("holey"), &holey(), 0o600);
    write_file(&root.join("small.txt"), SMALL, 0o644);
    xattr::set(root.join("small.txt"), "user.test", b"golden-value")
        .expect("user xattrs must be supported on the temp directory's filesystem");
    symlink("small.txt", root.join("link")).unwrap();
    make_dir(&root.join("sub"), 0o700);
    fs::hard_link(root.join("small.txt"), root.join("sub/again")).unwrap();
    for p in ["", "empty", "five", "holey", "small.txt", "link", "sub"] {
        lchown(root.join(p), Some(0), Some(0))
            .unwrap_or_else(|e| panic!("chown 0:0 {p}: {e} (the golden test runs as root)"));
    }
    // Files first, then directories (children change a directory's mtime),
    // the root last.
    for p in ["empty", "five", "holey"] {
        set_mtime(&root.join(p), T_FILE.0, T_FILE.1);
    }
    set_mtime(&root.join("small.txt"), T_SMALL.0, T_SMALL.1);
    set_mtime(&root.join("link"), T_LINK.0, T_LINK.1);
    set_mtime(&root.join("sub"), T_SUB.0, T_SUB.1);
    set_mtime(root, T_ROOT.0, T_ROOT.1);
    // Nothing else may leak in (ACLs, security labels).
    for p in ["", "empty", "five", "holey", "small.txt", "sub"] {
        let names: Vec<_> = xattr::list(root.join(p)).unwrap().collect();
        let want: Vec<std::ffi::OsString> = if p == "small.txt" {
            vec!["user.test".into()]
        } else {
            vec![]
        };
        assert_eq!(names, want, "unexpected xattrs on /{p}");
    }
}

struct Golden {
    _dir: tempfile::TempDir,
    frag: PathBuf,
}

fn build() -> Golden {
    let dir = tempdir();
    let src = dir.path().join("tree");
    make_tree(&src);
    let frag = dir.path().join("tiny.frag");
    let opts = BuildOptions {
        name: "golden".into(),
        version: "1".into(),
        ..Default::default()
    };
    fragments::build(&src, &frag, &key(1), &opts, &fragments::NoProgress).expect("build");
    Golden { _dir: dir, frag }
}

/// What a difference from the golden files means.
const GOLDEN_WHAT: &str = "the fragment format (a FORMAT BREAK)";

#[test]
fn tiny_fragment_matches_golden_dump_and_hash() {
    let g = build();
    let f = Fragment::open(&g.frag, Trust::Keys(&[key(1).verifying_key()])).unwrap();
    assert!(f.verify_all(&|_| {}).unwrap().is_empty());
    compare_or_bless("tiny.dump", &fragments::dump::dump(&f), GOLDEN_WHAT);
    let bytes = fs::read(&g.frag).unwrap();
    compare_or_bless(
        "tiny.blake3",
        &format!("{}\n", blake3_hex(&bytes)),
        GOLDEN_WHAT,
    );
}

#[test]
fn tiny_fragment_is_reproducible() {
    let a = fs::read(build().frag).unwrap();
    let b = fs::read(build().frag).unwrap();
    assert!(a == b, "two builds of the same tree differ");
}

fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes(b[o..o + 2].try_into().unwrap())
}
fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
}
fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
}

/// The documented layout (`fragments::format`, `fragments::meta`), read
/// from the raw bytes of the golden fragment.
#[test]
fn tiny_fragment_header_bytes_at_documented_offsets() {
    let g = build();
    let b = fs::read(&g.frag).unwrap();
    assert_eq!(&b[0..8], b"MOSAICFR", "magic at 0");
    assert_eq!((u16_at(&b, 8), u16_at(&b, 10)), (1, 0), "version 1.0 at 8");
    assert_eq!(u32_at(&b, 12), 4096, "header size at 12");
    assert_eq!(u64_at(&b, 16), 0, "incompat features at 16");
    assert_eq!(u64_at(&b, 24), 0, "compat features at 24");
    assert_eq!(u64_at(&b, 32), b.len() as u64, "file size at 32");
    assert_eq!(u32_at(&b, 40), 4096, "block size at 40");
    assert_eq!(u32_at(&b, 44), 4, "region count at 44");
    // Inodes: / empty five holey link small.txt sub ; names: 6 + again.
    assert_eq!(u32_at(&b, 48), 7, "inode count at 48");
    assert_eq!(u32_at(&b, 52), 7, "entry count at 52");
    assert_eq!(u64_at(&b, 56), 0, "build time at 56 (no SOURCE_DATE_EPOCH)");
    assert_eq!(u32_at(&b, 64), 1024, "small threshold at 64");
    assert_eq!(u32_at(&b, 68), 0, "zstd level at 68");
    assert!(b[72..128].iter().all(|&c| c == 0), "reserved 72..128");
    assert_eq!(&b[128..135], b"golden\0", "name at 128");
    assert!(b[135..192].iter().all(|&c| c == 0));
    assert_eq!(&b[192..194], b"1\0", "version at 192");
    assert!(b[194..256].iter().all(|&c| c == 0));

    let mut expect_off = 4096u64;
    let mut expect_hash = 0u64;
    let mut regions = Vec::new();
    for (i, kind) in [1u8, 2, 3, 4].into_iter().enumerate() {
        let o = 256 + 96 * i;
        assert_eq!(b[o], kind, "region {i} kind at {o}");
        assert_eq!(b[o + 1], 0, "region {i} encoding (raw) at {}", o + 1);
        assert!(b[o + 2..o + 8].iter().all(|&c| c == 0));
        let (off, stored, logical, hidx) = (
            u64_at(&b, o + 8),
            u64_at(&b, o + 16),
            u64_at(&b, o + 24),
            u64_at(&b, o + 32),
        );
        assert_eq!(off, expect_off, "region {i} is contiguous");
        assert_eq!(stored % 4096, 0);
        assert!(logical <= stored);
        if kind == 4 {
            assert_eq!(hidx, 0);
            assert_eq!(logical, expect_hash * 32, "one 32-byte CV per block");
        } else {
            assert_eq!(hidx, expect_hash, "region {i} hash index");
            expect_hash += stored / 4096;
        }
        // The root is blake3 of the stored bytes (checkable here when the
        // region has two or more blocks).
        let bytes = &b[off as usize..(off + stored) as usize];
        if stored >= 8192 {
            assert_eq!(
                fragments::hash::root_from_cvs(&fragments::hash::cvs_of(bytes))
                    .unwrap()
                    .as_bytes(),
                &b[o + 40..o + 72],
                "region {i} root"
            );
        }
        assert!(b[o + 72..o + 96].iter().all(|&c| c == 0));
        regions.push((off, stored, logical));
        expect_off = off + stored;
    }
    assert_eq!(expect_off, b.len() as u64, "the hash region ends the file");
    assert!(
        b[256 + 4 * 96..4000].iter().all(|&c| c == 0),
        "reserved up to 4000"
    );
    assert_eq!(
        &b[4000..4032],
        key(1).verifying_key().as_bytes(),
        "signer at 4000"
    );

    // Data region: five's two blocks, then holey's two nonzero blocks (each
    // file starts on a block boundary); the zero block is a hole, not stored.
    assert_eq!(regions[0].1, 4 * 4096, "data region stored length");
    let d = regions[0].0 as usize;
    assert_eq!(&b[d..d + 5000], &five()[..]);
    assert!(
        b[d + 5000..d + 8192].iter().all(|&c| c == 0),
        "padding after five"
    );
    assert_eq!(&b[d + 8192..d + 12288], &holey()[..4096]);
    assert_eq!(&b[d + 12288..d + 15288], &holey()[8192..]);
    // Small-data region: small.txt only (the hard link shares it).
    assert_eq!(regions[1].2, SMALL.len() as u64);
    assert_eq!(
        &b[regions[1].0 as usize..regions[1].0 as usize + SMALL.len()],
        SMALL
    );

    // Metadata region: header, then the root inode at +64.
    let m = regions[2].0 as usize;
    assert_eq!(&b[m..m + 8], b"MOSMETA\0", "metadata magic");
    assert_eq!(u32_at(&b, m + 8), 7, "inodes");
    assert_eq!(u32_at(&b, m + 12), 7, "entries");
    assert_eq!(u32_at(&b, m + 20), 1, "xattrs");
    let root = m + 64;
    assert_eq!(b[root], 2, "inode 0 is a directory");
    assert_eq!(b[root + 1], 0, "the root directory is not owned by default");
    assert_eq!(u16_at(&b, root + 2), 0o755);
    assert_eq!((u32_at(&b, root + 4), u32_at(&b, root + 8)), (0, 0));
    assert_eq!(u32_at(&b, root + 12), T_ROOT.1, "root mtime ns");
    assert_eq!(u64_at(&b, root + 16) as i64, T_ROOT.0, "root mtime s");
    assert_eq!(
        (u32_at(&b, root + 32), u32_at(&b, root + 36)),
        (0, 6),
        "root entries 0..6"
    );
    // Inode 1 is "empty" (first name in byte order).
    let i1 = root + 64;
    assert_eq!(b[i1], 1, "inode 1 is a regular file");
    assert_eq!(u16_at(&b, i1 + 2), 0o644);
    assert_eq!(u32_at(&b, i1 + 12), T_FILE.1);
    assert_eq!(u64_at(&b, i1 + 32), 0, "size 0");
    assert_eq!(u32_at(&b, i1 + 44), 0, "no extents");
}

/// The dump's offsets are the documented ones: each metadata line sits at
/// its table's offset in the file.
#[test]
fn tiny_dump_offsets_follow_the_layout() {
    let g = build();
    let f = Fragment::open(&g.frag, Trust::AnySigner).unwrap();
    let dump = fragments::dump::dump(&f);
    let h = f.header();
    let meta = h.regions[h.region_of(fragments::RegionKind::Metadata)].file_offset;
    let at = |prefix: &str| -> u64 {
        let line = dump
            .lines()
            .find(|l| l[10..].starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix} line in\n{dump}"));
        u64::from_str_radix(&line[..8], 16).unwrap()
    };
    assert_eq!(at("header.magic"), 0);
    assert_eq!(at("header.signer"), 4000);
    assert_eq!(at("header.signature"), 4032);
    assert_eq!(at("region[2]"), 256 + 2 * 96);
    assert_eq!(at("meta.header"), meta);
    assert_eq!(at("inode[0]"), meta + 64);
    assert_eq!(at("inode[6]"), meta + 64 + 6 * 64);
    assert_eq!(at("dentry[0]"), meta + 64 + 7 * 64);
    assert_eq!(at("extent[0]"), meta + 64 + 7 * 64 + 7 * 16);
    let extents = f.metadata().extents.len() as u64;
    assert_eq!(extents, 4, "holey: 2, five: 1, small.txt: 1");
    assert_eq!(at("xattr[0]"), meta + 64 + 7 * 64 + 7 * 16 + extents * 32);
    assert_eq!(
        at("strings"),
        meta + 64 + 7 * 64 + 7 * 16 + extents * 32 + 16
    );
    // The hard link: /sub/again names the same inode as /small.txt.
    let m = f.metadata();
    assert_eq!(m.lookup(b"/sub/again"), m.lookup(b"/small.txt"));
    let ino = m.lookup(b"/small.txt").unwrap();
    assert_eq!(m.nlink[ino as usize], 2);
    assert_eq!(m.inode(ino).mtime.nsec, T_SMALL.1);
    let link = m.lookup(b"/link").unwrap();
    assert_eq!(m.inode(link).mtime.sec, T_LINK.0);
    assert_eq!(m.inode(link).mtime.nsec, T_LINK.1);
    let sub = m.lookup(b"/sub").unwrap();
    assert_eq!(
        (m.inode(sub).mtime.sec, m.inode(sub).mtime.nsec),
        (T_SUB.0, T_SUB.1)
    );
    assert!(m.inode(sub).owns_security);
}

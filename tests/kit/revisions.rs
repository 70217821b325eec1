//! The update tests' material: three revisions of one tree (base B,
//! intermediate N, target R) covering every kind of change, their
//! fragments built through the library, and byte flips at named places of
//! fragments, reverse-differential files and packages.

use super::{all_paths, set_mtime, write_file};
use fragments::{BuildOptions, Fragment, SigningKey, Trust};
use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use testkit::{noise, word_text};

/// `root/REL` with exact contents and permission bits.
fn put(root: &Path, rel: &str, bytes: &[u8], mode: u32) {
    write_file(&root.join(rel), bytes, mode);
}

/// Edits `base` at a few places (a rebuilt binary: mostly the same bytes).
pub fn edited(base: &[u8], seed: u64) -> Vec<u8> {
    let mut v = base.to_vec();
    let n = noise(seed, 64);
    for (k, at) in [v.len() / 7, v.len() / 3, v.len() / 2 + 11, v.len() - 100]
        .into_iter()
        .enumerate()
    {
        let s = at.min(v.len() - 16);
        v[s..s + 16].copy_from_slice(&n[k * 16..k * 16 + 16]);
    }
    // An insertion shifts everything after it.
    let mid = v.len() / 4;
    v.splice(mid..mid, noise(seed + 1, 300));
    v
}

/// A sparse file: data at 0 and at 512 KiB, holes around.
fn sparse(root: &Path, rel: &str, a: &[u8], b: &[u8]) {
    use std::os::unix::fs::FileExt;
    let p = root.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    let f = fs::File::create(&p).unwrap();
    f.set_len(1 << 20).unwrap();
    f.write_all_at(a, 0).unwrap();
    f.write_all_at(b, 512 << 10).unwrap();
}

/// Sets every entry's mtime to `sec` (nanoseconds 0).
fn mtimes(root: &Path, sec: i64) {
    for p in all_paths(root) {
        set_mtime(&p, sec, 0);
    }
}

/// The three trees. What changes, B -> N -> R:
///
/// | path | B | N | R |
/// |---|---|---|---|
/// | /bin/big (2 MiB) + hard link /bin/big-link | b | edited | edited again |
/// | /bin/tool (300 KiB) | t | edited | the same as N |
/// | /lib/libfoo-1.2.so (200 KiB) | l | l | renamed to /lib/libfoo-1.3.so, edited |
/// | /etc/conf (small text, xattr) | c | edited | edited, xattr changed |
/// | /etc/same, /etc/same-too (small) | s | s | s |
/// | /etc/mode-only | m 0644 | m | m 0600, newer mtime |
/// | /doc/readme (40 KiB text) | r | r | moved to /doc2/readme |
/// | /old/gone | g | deleted | deleted |
/// | /data/sparse (1 MiB, 2 data runs) | s1 | s1 | second run edited |
/// | /data/dup1 = /data/dup2 | d | d | d |
/// | /data/empty | empty | empty | empty |
/// | /data/link -> | dup1 | dup1 | dup2 |
/// | /var/new | - | added | deleted |
/// | /new/added (600 KiB), /new/small | - | - | added |
pub fn make_trees(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let (b, n, r) = (dir.join("tree-b"), dir.join("tree-n"), dir.join("tree-r"));
    let big = noise(1, 2 << 20);
    let tool = noise(2, 300 << 10);
    let lib = noise(3, 200 << 10);
    let conf = word_text(4, 700);
    let readme = word_text(5, 40 << 10);
    let dup = word_text(6, 5000);
    for (root, rev) in [(&b, 0), (&n, 1), (&r, 2)] {
        fs::create_dir_all(root).unwrap();
        let big_v = match rev {
            0 => big.clone(),
            1 => edited(&big, 10),
            _ => edited(&edited(&big, 10), 20),
        };
        put(root, "bin/big", &big_v, 0o755);
        fs::hard_link(root.join("bin/big"), root.join("bin/big-link")).unwrap();
        // Changed in N, kept in R: the device at N already has R's bytes.
        put(
            root,
            "bin/tool",
            &if rev >= 1 {
                edited(&tool, 30)
            } else {
                tool.clone()
            },
            0o755,
        );
        if rev == 2 {
            put(root, "lib/libfoo-1.3.so", &edited(&lib, 40), 0o755);
        } else {
            put(root, "lib/libfoo-1.2.so", &lib, 0o755);
        }
        let mut c = conf.clone();
        if rev >= 1 {
            c.extend_from_slice(b"option = 1\n");
        }
        if rev == 2 {
            c.extend_from_slice(b"option = 2\n");
        }
        put(root, "etc/conf", &c, 0o644);
        xattr::set(
            root.join("etc/conf"),
            "user.note",
            if rev == 2 { b"v2" } else { b"v1" },
        )
        .unwrap();
        put(root, "etc/same", b"unchanged small file\n", 0o644);
        put(root, "etc/same-too", &word_text(7, 3000), 0o644);
        put(
            root,
            "etc/mode-only",
            b"only the mode changes\n",
            if rev == 2 { 0o600 } else { 0o644 },
        );
        put(
            root,
            if rev == 2 {
                "doc2/readme"
            } else {
                "doc/readme"
            },
            &readme,
            0o644,
        );
        if rev == 0 {
            put(root, "old/gone", &word_text(8, 9000), 0o644);
        }
        let s2 = if rev == 2 {
            edited(&noise(9, 8192), 50)
        } else {
            noise(9, 8192)
        };
        sparse(root, "data/sparse", &noise(10, 8192), &s2);
        put(root, "data/dup1", &dup, 0o644);
        put(root, "data/dup2", &dup, 0o644);
        put(root, "data/empty", b"", 0o644);
        symlink(
            if rev == 2 { "dup2" } else { "dup1" },
            root.join("data/link"),
        )
        .unwrap();
        if rev == 1 {
            put(root, "var/new", &word_text(11, 20000), 0o644);
        }
        if rev == 2 {
            put(root, "new/added", &noise(12, 600 << 10), 0o644);
            put(root, "new/small", b"a small new file\n", 0o644);
        }
        mtimes(root, 1_600_000_000);
        if rev == 2 {
            set_mtime(&root.join("etc/mode-only"), 1_700_000_000, 0);
        }
    }
    (b, n, r)
}

/// Builds the three fragments with `key`; `zstd`: compressed regions.
pub fn build_all(
    dir: &Path,
    trees: &(PathBuf, PathBuf, PathBuf),
    k: &SigningKey,
    zstd: bool,
) -> (PathBuf, PathBuf, PathBuf) {
    let mut out = Vec::new();
    for (tree, name, version) in [
        (&trees.0, "B.frag", "1.0"),
        (&trees.1, "N.frag", "1.1"),
        (&trees.2, "R.frag", "1.2"),
    ] {
        let p = dir.join(name);
        let opts = BuildOptions {
            name: "app".into(),
            version: version.into(),
            zstd_level: zstd.then_some(3),
            ..BuildOptions::default()
        };
        fragments::build(tree, &p, k, &opts, &fragments::NoProgress).expect("build");
        out.push(p);
    }
    (out[0].clone(), out[1].clone(), out[2].clone())
}

pub fn flip(path: &Path, at: u64) {
    use std::os::unix::fs::FileExt;
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).unwrap();
    b[0] ^= 0x5a;
    f.write_all_at(&b, at).unwrap();
}

/// File offset of the first stored byte of `file` in fragment `frag`.
pub fn content_offset(frag: &Path, file: &str) -> u64 {
    let f = Fragment::open(frag, Trust::AnySigner).unwrap();
    let m = f.metadata();
    let ino = m
        .lookup(file.as_bytes())
        .unwrap_or_else(|| panic!("{file} not in {}", frag.display()));
    let e = m.extents_of(ino)[0];
    let r = f.region(e.region).unwrap();
    assert_eq!(
        r.encoding,
        fragments::Encoding::Raw,
        "flip targets need raw fragments"
    );
    r.file_offset + e.region_offset + e.len / 2
}

/// File offset of a byte in the reverse differential for base file `file`.
pub fn rev_offset(rev: &Path, base_frag_meta: &fragments::Metadata, file: &str) -> u64 {
    let r = update::rev::RevFile::open(rev).unwrap();
    let ino = base_frag_meta.lookup(file.as_bytes()).unwrap();
    let e = r
        .table
        .entry(ino)
        .unwrap_or_else(|| panic!("no entry for {file}"));
    match &e.source {
        update::rev::Source::Delta { payload, .. } | update::rev::Source::Full { payload } => {
            r.header.data_offset + payload.offset + payload.len / 2
        }
        s => panic!("entry for {file} is {s:?}, not a differential"),
    }
}

/// File offset of a byte in the package's differential for target `file`.
pub fn package_offset(pkg: &Path, file: &str) -> u64 {
    let p = update::Package::open(pkg, update::PackageTrust::AnySigner).unwrap();
    let pc = p
        .manifest
        .pieces
        .iter()
        .find(|pc| pc.path == file.as_bytes())
        .unwrap_or_else(|| panic!("no piece for {file}"));
    let pl = pc.payload.as_ref().expect("a piece with bytes");
    p.header.data_offset + pl.offset + pl.len / 2
}

/// Leftover temporary files in `dir`.
pub fn temp_files(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".mosaic"))
        .collect()
}

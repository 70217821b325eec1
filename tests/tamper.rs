//! Tampering: every byte of the header, metadata and hash regions, and a
//! spread of bytes of every data region, is flipped in turn; each flip must
//! be caught by `Fragment::open` + `verify_all`, and the error must name the
//! place. Also through the CLI, for truncated and untrusted fragments, for
//! compressed fragments, and for files changed under an open reader.

mod kit;

use fragments::{BuildOptions, Error, Fault, Fragment, RegionKind, Trust, VerifyingKey};
use kit::*;
use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::{symlink, FileExt};
use std::path::{Path, PathBuf};

const HEADER: u64 = 4096;

/// The tree: directories at several depths, small files that straddle the
/// small-data region's block boundaries (three blocks of it), multi-block
/// files (one aligned, two with a partial last block), a duplicate content,
/// a hard link, a symlink, xattrs, and enough entries that the metadata
/// region takes two blocks.
fn make_tree(root: &Path) {
    make_dir(root, 0o755);
    make_dir(&root.join("a/b"), 0o755);
    make_dir(&root.join("c"), 0o750);
    for i in 0..14u64 {
        let len = 700 + 20 * i as usize; // all < 1024: small-data region
        write_file(
            &root.join(format!("c/small{i}")),
            &nonzero_noise(i, len),
            0o644,
        );
    }
    write_file(
        &root.join("a/big1"),
        &nonzero_noise(100, 3 * 4096 + 100),
        0o644,
    );
    write_file(&root.join("a/b/big2"), &nonzero_noise(101, 5 * 4096), 0o755);
    write_file(
        &root.join("c/big3"),
        &nonzero_noise(102, 2 * 4096 + 1),
        0o600,
    );
    write_file(
        &root.join("c/dup"),
        &nonzero_noise(100, 3 * 4096 + 100),
        0o644,
    ); // = big1
    fs::hard_link(root.join("a/b/big2"), root.join("hard")).unwrap();
    symlink("../a/big1", root.join("c/link")).unwrap();
    xattr::set(root.join("a/big1"), "user.note", b"tampered?").unwrap();
    xattr::set(root.join("a"), "user.dir", b"d").unwrap();
    make_dir(&root.join("many"), 0o755);
    for i in 0..60 {
        write_file(&root.join(format!("many/e{i:02}")), b"", 0o644);
    }
}

struct Built {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    frag: PathBuf,
    key: VerifyingKey,
}

fn build(opts: &BuildOptions) -> Built {
    let dir = tempdir();
    let src = dir.path().join("src");
    make_tree(&src);
    let frag = dir.path().join("t.frag");
    let k = key(9);
    fragments::build(&src, &frag, &k, opts, &fragments::NoProgress).expect("build");
    Built {
        dir: dir.path().to_owned(),
        _dir: dir,
        frag,
        key: k.verifying_key(),
    }
}

fn opts() -> BuildOptions {
    BuildOptions {
        name: "tamper".into(),
        version: "1".into(),
        ..Default::default()
    }
}

/// Opens with `key` trusted and checks every block: Ok(faults) or the open error.
fn open_verify(path: &Path, key: &VerifyingKey) -> Result<(Fragment, Vec<Fault>), Error> {
    let f = Fragment::open(path, Trust::Keys(std::slice::from_ref(key)))?;
    let faults = f.verify_all(&|_| {})?;
    Ok((f, faults))
}

fn pristine_ok(b: &Built) -> Fragment {
    let (f, faults) = open_verify(&b.frag, &b.key).expect("the pristine fragment opens");
    assert!(
        faults.is_empty(),
        "pristine fragment has faults: {faults:?}"
    );
    f
}

/// Offsets in the header that are reserved (must be zero) for a fragment
/// with `n` regions, per the table in `fragments::format`.
fn header_reserved(n: usize) -> BTreeSet<u64> {
    let mut s: BTreeSet<u64> = (72..128).collect();
    for i in 0..n as u64 {
        let o = 256 + 96 * i;
        s.extend(o + 2..o + 8);
        s.extend(o + 72..o + 96);
    }
    s.extend(256 + 96 * n as u64..4000);
    s
}

#[test]
fn every_header_byte_flip_is_rejected_at_open() {
    let b = build(&opts());
    let f = pristine_ok(&b);
    let n = f.header().regions.len();
    assert_eq!(n, 4, "data, small-data, metadata, hashes");
    drop(f);
    let reserved = header_reserved(n);
    let w = Flipper::new(&b.frag, &b.dir, "work.frag");
    let mut printed = 0;
    for (off, mask) in (0..HEADER).flat_map(|o| [(o, 0x01u8), (o, 0x80)]) {
        let err = w.with_flip(off, mask, |p| match open_verify(p, &b.key) {
            Ok((_, faults)) => {
                panic!("header byte {off} flipped: open succeeded (faults: {faults:?})")
            }
            Err(e) => e,
        });
        if mask == 1 && (printed < 4 || off == 4000 || off == 4032) {
            eprintln!("header byte {off}: {err}");
            printed += 1;
        }
        let msg = err.to_string();
        assert!(
            msg.contains("work.frag"),
            "header byte {off}: error does not name the file: {msg}"
        );
        match &err {
            // The signer's key and the signature themselves: only the
            // signature check can notice.
            _ if off >= 4000 => assert!(
                matches!(err, Error::BadSignature { .. }),
                "header byte {off} (signer/signature): expected BadSignature, got {err:?}"
            ),
            // A reserved byte is rejected by the structure check, at its offset.
            _ if reserved.contains(&off) => assert!(
                matches!(err, Error::Corrupt { offset, .. } if offset == off),
                "header byte {off} (reserved): expected Corrupt at offset {off}, got {err:?}"
            ),
            Error::BadSignature { .. }
            | Error::Corrupt { .. }
            | Error::Unsupported { .. }
            | Error::Truncated { .. } => {}
            _ => panic!("header byte {off}: unexpected error kind {err:?}"),
        }
    }
    w.assert_restored();
    assert!(open_verify(&w.path, &b.key).unwrap().1.is_empty());
}

#[test]
fn every_metadata_byte_flip_is_rejected_at_open() {
    let b = build(&opts());
    let f = pristine_ok(&b);
    let mi = f.header().region_of(RegionKind::Metadata);
    let mr = f.header().regions[mi].clone();
    assert!(
        mr.stored_len >= 2 * 4096,
        "the tree should need a metadata region of 2+ blocks, got {}",
        mr.stored_len
    );
    drop(f);
    let w = Flipper::new(&b.frag, &b.dir, "work.frag");
    for (rel, mask) in (0..mr.stored_len).flat_map(|o| [(o, 0x01u8), (o, 0x80)]) {
        let off = mr.file_offset + rel;
        let block = rel / 4096;
        let err = w.with_flip(off, mask, |p| match open_verify(p, &b.key) {
            Ok((_, faults)) => panic!(
                "metadata byte {rel} (file offset {off}) flipped: open succeeded (faults: {faults:?})"
            ),
            Err(e) => e,
        });
        match &err {
            Error::BlockMismatch {
                region,
                kind,
                block: bb,
                file_offset,
                ..
            } => {
                assert_eq!(*region as usize, mi, "metadata byte {rel}: {err}");
                assert_eq!(*kind, RegionKind::Metadata, "metadata byte {rel}: {err}");
                assert_eq!(*bb, block, "metadata byte {rel}: {err}");
                assert_eq!(*file_offset, mr.file_offset + block * 4096);
            }
            Error::RootMismatch { region, kind, .. } => {
                assert_eq!(*region as usize, mi, "metadata byte {rel}: {err}");
                assert_eq!(*kind, RegionKind::Metadata, "metadata byte {rel}: {err}");
            }
            _ => panic!("metadata byte {rel}: expected a block or root mismatch of region {mi}, got {err:?}"),
        }
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("region {mi}")) && msg.contains("metadata"),
            "metadata byte {rel}: message does not name region {mi} (metadata): {msg}"
        );
    }
    w.assert_restored();
}

#[test]
fn every_hash_region_byte_flip_is_rejected_at_open() {
    let b = build(&opts());
    let f = pristine_ok(&b);
    let hi = f.header().regions.len() - 1;
    let hr = f.header().regions[hi].clone();
    assert_eq!(hr.kind, RegionKind::Hashes);
    drop(f);
    let w = Flipper::new(&b.frag, &b.dir, "work.frag");
    for (rel, mask) in (0..hr.stored_len).flat_map(|o| [(o, 0x01u8), (o, 0x80)]) {
        let off = hr.file_offset + rel;
        let err = w.with_flip(off, mask, |p| match open_verify(p, &b.key) {
            Ok((_, faults)) => panic!(
                "hash byte {rel} (file offset {off}) flipped: open succeeded (faults: {faults:?})"
            ),
            Err(e) => e,
        });
        assert!(
            matches!(err, Error::RootMismatch { region, kind: RegionKind::Hashes, .. } if region as usize == hi),
            "hash byte {rel}: expected RootMismatch of region {hi} (hashes), got {err:?}"
        );
        assert!(err.to_string().contains(&format!("region {hi} (hashes)")));
    }
    w.assert_restored();
}

/// Paths whose whole-file read fails with a block mismatch at (region, block):
/// the independent answer to "which files use this block".
fn failing_reads(f: &Fragment, region: u32, block: u64) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for p in regular_paths(f) {
        match read_path(f, &p) {
            Ok(_) => {}
            Err(Error::BlockMismatch {
                region: r,
                block: bb,
                ..
            }) => {
                assert_eq!((r, bb), (region, block), "{p}: read names another block");
                out.insert(p);
            }
            Err(e) => panic!("{p}: unexpected read error {e:?}"),
        }
    }
    out
}

/// Flips a spread of bytes of every data and small-data region.
fn data_flips(b: &Built, compressed: bool) -> usize {
    let f = pristine_ok(b);
    let regions: Vec<(u32, fragments::RegionEntry)> = f
        .header()
        .regions
        .iter()
        .enumerate()
        .filter(|(_, r)| matches!(r.kind, RegionKind::Data | RegionKind::Small))
        .map(|(i, r)| (i as u32, r.clone()))
        .collect();
    drop(f);
    let w = Flipper::new(&b.frag, &b.dir, "work.frag");
    let mut checked = 0;
    for (ri, r) in &regions {
        assert!(
            r.stored_len >= if compressed { 2 } else { 3 } * 4096,
            "region {ri} ({}) should span several blocks, has {} bytes",
            r.kind,
            r.stored_len
        );
        for rel in spread(0, r.stored_len, 64) {
            let off = r.file_offset + rel;
            let block = rel / 4096;
            let what = format!("region {ri} ({}) byte {rel} (block {block})", r.kind);
            w.with_flip(off, 0x01, |p| match open_verify(p, &b.key) {
                Ok((f, faults)) => {
                    assert_eq!(
                        faults.len(),
                        1,
                        "{what}: expected one fault, got {faults:?}"
                    );
                    let ft = &faults[0];
                    assert_eq!(ft.region, *ri, "{what}: {ft}");
                    assert_eq!(ft.kind, r.kind, "{what}: {ft}");
                    assert_eq!(ft.block, block, "{what}: {ft}");
                    assert_eq!(ft.file_offset, r.file_offset + block * 4096, "{what}: {ft}");
                    let named: BTreeSet<String> = ft.paths.iter().cloned().collect();
                    let failing = failing_reads(&f, *ri, block);
                    if !compressed {
                        assert!(
                            !failing.is_empty(),
                            "{what}: every stored block of an uncompressed region is used by a file"
                        );
                    }
                    assert_eq!(
                        named, failing,
                        "{what}: the fault's paths differ from the files whose reads fail"
                    );
                    let s = ft.to_string();
                    assert!(
                        s.contains(&format!("region {ri}"))
                            && s.contains(&format!("block {block}"))
                    );
                }
                Err(e) => {
                    // A compressed region's chunk index is read at open.
                    assert!(
                        compressed && block == 0,
                        "{what}: open failed, data blocks should be checked when read: {e:?}"
                    );
                    assert!(
                        matches!(e, Error::BlockMismatch { region, block: 0, .. } if region == *ri),
                        "{what}: {e:?}"
                    );
                }
            });
            checked += 1;
        }
    }
    w.assert_restored();
    checked
}

#[test]
fn data_byte_flips_are_found_by_verify_all_with_block_and_paths() {
    let b = build(&opts());
    assert!(data_flips(&b, false) >= 100);
}

#[test]
fn data_byte_flips_in_compressed_fragment_are_detected() {
    // Noise barely compresses, so the regions keep several blocks.
    let b = build(&BuildOptions {
        zstd_level: Some(1),
        ..opts()
    });
    let f = pristine_ok(&b);
    assert!(f
        .header()
        .regions
        .iter()
        .any(|r| r.encoding == fragments::Encoding::Zstd));
    drop(f);
    assert!(data_flips(&b, true) >= 100);
}

#[test]
fn hard_link_and_duplicate_are_named_in_a_fault() {
    let b = build(&opts());
    let f = pristine_ok(&b);
    let m = f.metadata();
    // The first data block of /a/b/big2 (also /hard).
    let ino = m.lookup(b"/hard").unwrap();
    let e = m.extents_of(ino)[0];
    let r = f.region(e.region).unwrap().clone();
    let block = e.region_offset / 4096;
    drop(f);
    let w = Flipper::new(&b.frag, &b.dir, "work.frag");
    w.with_flip(r.file_offset + block * 4096 + 17, 0x80, |p| {
        let (_, faults) = open_verify(p, &b.key).unwrap();
        assert_eq!(faults.len(), 1);
        let mut got = faults[0].paths.clone();
        got.sort();
        assert_eq!(got, vec!["/a/b/big2".to_string(), "/hard".to_string()]);
    });
    // /a/big1 and /c/dup share their contents.
    let f = pristine_ok(&b);
    let m = f.metadata();
    let e = m.extents_of(m.lookup(b"/c/dup").unwrap())[0];
    assert_eq!(
        e,
        m.extents_of(m.lookup(b"/a/big1").unwrap())[0],
        "identical contents are stored once"
    );
    drop(f);
    w.with_flip(r.file_offset + e.region_offset + 4096, 0x01, |p| {
        let (_, faults) = open_verify(p, &b.key).unwrap();
        let mut got = faults[0].paths.clone();
        got.sort();
        assert_eq!(got, vec!["/a/big1".to_string(), "/c/dup".to_string()]);
    });
}

#[test]
fn one_block_region_flip_is_caught_at_open_naming_the_region() {
    // A single small file: the small-data region is one block, whose root
    // can only be checked by reading it at open.
    let dir = tempdir();
    let src = dir.path().join("src");
    write_file(&src.join("only"), b"just one small file", 0o644);
    let frag = dir.path().join("one.frag");
    let k = key(9);
    fragments::build(&src, &frag, &k, &opts(), &fragments::NoProgress).unwrap();
    let vk = k.verifying_key();
    let f = Fragment::open(&frag, Trust::Keys(&[vk])).unwrap();
    let si = f.header().region_of(RegionKind::Small);
    let sr = f.header().regions[si].clone();
    assert_eq!(sr.stored_len, 4096);
    drop(f);
    let w = Flipper::new(&frag, dir.path(), "w.frag");
    for rel in [0u64, 5, 18, 19, 4095] {
        w.with_flip(sr.file_offset + rel, 0x01, |p| match open_verify(p, &vk) {
            Err(e) => assert!(
                matches!(e, Error::RootMismatch { region, .. } | Error::BlockMismatch { region, .. } if region as usize == si),
                "small byte {rel}: {e:?}"
            ),
            Ok((f, faults)) => {
                assert_eq!(faults.len(), 1, "small byte {rel}: {faults:?}");
                assert_eq!(faults[0].region as usize, si);
                assert!(read_path(&f, "/only").is_err());
            }
        });
    }
}

// ---------------------------------------------------------------------------
// Through the CLI

fn cli_setup() -> (Built, PathBuf) {
    let b = build(&opts());
    let (_, public) = write_keys(&b.dir, "k", &key(9));
    (b, public)
}

#[test]
fn cli_verify_names_region_block_and_path_of_a_data_flip() {
    let (b, public) = cli_setup();
    let ok = mosaic(args!["fragment", "verify", b.frag, "--trust", public]);
    expect_code(&ok, 0, "verify of the pristine fragment");

    let f = pristine_ok(&b);
    let m = f.metadata();
    // The last, partial block of /c/big3 (2 blocks + 1 byte, one extent).
    let e = m.extents_of(m.lookup(b"/c/big3").unwrap())[0];
    assert_eq!(e.len, 2 * 4096 + 1);
    let r = f.region(e.region).unwrap().clone();
    let block = e.region_offset / 4096 + 2;
    drop(f);
    let w = Flipper::new(&b.frag, &b.dir, "work.frag");
    w.with_flip(r.file_offset + block * 4096 + 4000, 0x01, |p| {
        let o = mosaic(args!["fragment", "verify", p, "--trust", public,]);
        expect_code(&o, 1, "verify of a fragment with a flipped data byte");
        let err = stderr(&o);
        assert!(
            err.contains(&format!("region {} (data) block {block}", e.region)),
            "stderr does not name region {} block {block}:\n{err}",
            e.region
        );
        assert!(
            err.contains("/c/big3"),
            "stderr does not name /c/big3:\n{err}"
        );
        assert!(err.contains("1 bad blocks"), "{err}");

        let o = mosaic(args!["fragment", "verify", p, "--trust", public, "--json",]);
        expect_code(&o, 1, "verify --json of a flipped fragment");
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
        assert_eq!(v["ok"], false);
        let fl = &v["faults"][0];
        assert_eq!(fl["region"], e.region);
        assert_eq!(fl["block"], block);
        assert_eq!(fl["paths"][0], "/c/big3");

        // cat of the damaged file fails and says where; cat of an intact file works.
        let o = mosaic(args!["fragment", "cat", p, "/c/big3"]);
        expect_code(&o, 1, "cat of a damaged file");
        assert!(
            stderr(&o).contains(&format!("block {block}")),
            "{}",
            stderr(&o)
        );
        let o = mosaic(args!["fragment", "cat", p, "/a/big1"]);
        expect_code(&o, 0, "cat of an intact file");
        assert_eq!(o.stdout, nonzero_noise(100, 3 * 4096 + 100));
    });
}

#[test]
fn cli_untrusted_signer_is_refused() {
    let (b, _) = cli_setup();
    let (_, other) = write_keys(&b.dir, "other", &key(10));
    let o = mosaic(args!["fragment", "verify", b.frag, "--trust", other,]);
    expect_code(&o, 1, "verify with a key that did not sign");
    assert!(stderr(&o).contains("untrusted"), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(&fragments::keys::key_id(key(9).verifying_key().as_bytes())),
        "the message names the signer: {}",
        stderr(&o)
    );
}

#[test]
fn cli_truncated_fragment_is_invalid_input() {
    let (b, public) = cli_setup();
    let len = fs::metadata(&b.frag).unwrap().len();
    let cut_dir = b.dir.join("cuts");
    fs::create_dir(&cut_dir).unwrap();
    for cut in [
        0,
        1,
        100,
        4095,
        4096,
        4097,
        8192,
        len / 2,
        len - 4096,
        len - 1,
    ] {
        let p = cut_dir.join(format!("cut{cut}.frag"));
        fs::write(&p, &fs::read(&b.frag).unwrap()[..cut as usize]).unwrap();
        for args in [
            args!["fragment", "verify", p, "--trust", public],
            args!["fragment", "inspect", p],
        ] {
            let o = mosaic(&args);
            expect_code(&o, 1, &format!("{args:?} of a fragment cut at {cut}"));
            let e = stderr(&o).to_lowercase();
            assert!(
                e.contains("truncated") || e.contains("corrupt"),
                "cut at {cut}: {e}"
            );
        }
    }
}

#[test]
fn cli_flips_in_header_metadata_and_hashes_exit_1_naming_the_part() {
    let (b, public) = cli_setup();
    let f = pristine_ok(&b);
    let h = f.header().clone();
    drop(f);
    let mi = h.region_of(RegionKind::Metadata);
    let hi = h.regions.len() - 1;
    let w = Flipper::new(&b.frag, &b.dir, "work.frag");
    for (off, expect) in [
        (56u64, "bad signature".to_string()),
        (4001, "bad signature".to_string()),
        (4095, "bad signature".to_string()),
        (
            h.regions[mi].file_offset + 70,
            format!("region {mi} (metadata)"),
        ),
        (
            h.regions[hi].file_offset + 5,
            format!("region {hi} (hashes)"),
        ),
    ] {
        w.with_flip(off, 0x01, |p| {
            for a in [
                args!["fragment", "verify", p, "--trust", public],
                args!["fragment", "inspect", p],
                args!["fragment", "ls", p],
                args!["fragment", "cat", p, "/a/big1"],
            ] {
                let o = mosaic(&a);
                expect_code(&o, 1, &format!("{a:?} with byte {off} flipped"));
                assert!(
                    stderr(&o).contains(&expect),
                    "byte {off}: {a:?}: {}",
                    stderr(&o)
                );
            }
        });
    }
    // A fragment with bytes appended is not the signed file either.
    let grown = b.dir.join("grown.frag");
    let mut bytes = w.pristine().to_vec();
    bytes.extend_from_slice(&[0; 4096]);
    fs::write(&grown, &bytes).unwrap();
    let o = mosaic(args!["fragment", "verify", grown, "--trust", public]);
    expect_code(&o, 1, "verify of a fragment with bytes appended");
    assert!(stderr(&o).contains("corrupt"), "{}", stderr(&o));
}

#[test]
fn cli_nonexistent_fragment_is_an_environment_error() {
    let (b, public) = cli_setup();
    let missing = b.dir.join("no-such.frag");
    let o = mosaic(args!["fragment", "verify", missing, "--trust", public,]);
    expect_code(&o, 2, "verify of a missing file");
    assert!(stderr(&o).contains("no-such.frag"), "{}", stderr(&o));
    let o = mosaic(args!["fragment", "inspect", missing]);
    expect_code(&o, 2, "inspect of a missing file");
}

// ---------------------------------------------------------------------------
// A file changed under an open reader

#[test]
fn truncated_under_the_reader_gives_errors_not_panics() {
    let b = build(&opts());
    let f = pristine_ok(&b);
    let len = fs::metadata(&b.frag).unwrap().len();
    let cut = len / 2;
    let m = f.metadata();
    // Which files lie wholly before / partly after the cut.
    let mut before = Vec::new();
    let mut after = Vec::new();
    for p in regular_paths(&f) {
        let ino = m.lookup(p.as_bytes()).unwrap();
        let ext = m.extents_of(ino);
        if ext.is_empty() {
            continue;
        }
        let end = ext
            .iter()
            .map(|e| {
                let r = f.region(e.region).unwrap();
                r.file_offset + (e.region_offset + e.len).div_ceil(4096) * 4096
            })
            .max()
            .unwrap();
        if end <= cut {
            before.push(p);
        } else {
            after.push(p);
        }
    }
    assert!(
        !before.is_empty() && !after.is_empty(),
        "{before:?} {after:?}"
    );
    let file = fs::OpenOptions::new().write(true).open(&b.frag).unwrap();
    file.set_len(cut).unwrap();
    for p in &after {
        match read_path(&f, p) {
            Err(e) => assert!(
                matches!(e, Error::Truncated { .. } | Error::Io { .. }),
                "{p}: {e:?}"
            ),
            Ok(_) => panic!("{p}: read succeeded past the cut at {cut}"),
        }
    }
    for p in &before {
        read_path(&f, p).unwrap_or_else(|e| panic!("{p} lies before the cut: {e}"));
    }
    let faults = f.verify_all(&|_| {});
    assert!(faults.is_err() || !faults.unwrap().is_empty());
}

#[test]
fn rewritten_under_the_reader_gives_block_mismatch_and_no_unverified_bytes() {
    let b = build(&opts());
    let f = pristine_ok(&b);
    let m = f.metadata();
    let ino = m.lookup(b"/a/b/big2").unwrap(); // 5 blocks, one extent
    let ext = m.extents_of(ino).to_vec();
    assert_eq!(ext.len(), 1);
    let e = ext[0];
    let r = f.region(e.region).unwrap().clone();
    let bad_block = e.region_offset / 4096 + 2;
    let file = fs::OpenOptions::new().write(true).open(&b.frag).unwrap();
    file.write_all_at(&[0x5a; 4096], r.file_offset + bad_block * 4096)
        .unwrap();

    // Whole-file read: aligned, straight into the caller's buffer.
    let mut buf = vec![0xaau8; 5 * 4096];
    match f.read_file(ino, 0, &mut buf) {
        Err(Error::BlockMismatch { region, block, .. }) => {
            assert_eq!((region, block), (e.region, bad_block));
        }
        other => panic!("expected BlockMismatch, got {other:?}"),
    }
    assert!(
        buf.iter().all(|&c| c == 0),
        "buffer holds unverified bytes after a failed aligned read"
    );

    // Unaligned read touching the bad block.
    let mut buf = vec![0xaau8; 3000];
    assert!(matches!(
        f.read_file(ino, 2 * 4096 + 100, &mut buf),
        Err(Error::BlockMismatch { .. })
    ));
    assert!(!buf.contains(&0x5a), "rewritten bytes reached the caller");

    // The region-level API too.
    let mut buf = vec![0xaau8; 3 * 4096];
    assert!(matches!(
        f.read_blocks_into(e.region, bad_block - 1, &mut buf),
        Err(Error::BlockMismatch { block, .. }) if block == bad_block
    ));
    assert!(buf.iter().all(|&c| c == 0));

    // Blocks around it still read and verify.
    let mut one = vec![0u8; 4096];
    f.read_file(ino, 0, &mut one).unwrap();
    assert_eq!(one, nonzero_noise(101, 5 * 4096)[..4096]);
    f.read_file(ino, 4 * 4096, &mut one).unwrap();
    assert_eq!(one, nonzero_noise(101, 5 * 4096)[4 * 4096..]);

    let faults = f.verify_all(&|_| {}).unwrap();
    assert_eq!(faults.len(), 1);
    assert_eq!(faults[0].block, bad_block);
    let mut paths = faults[0].paths.clone();
    paths.sort();
    assert_eq!(paths, vec!["/a/b/big2", "/hard"]);
}

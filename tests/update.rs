//! `mosaic update`: B -> N -> R hydration is byte-identical to the lab's
//! fragments (raw and zstd, small frames and scratch files), every
//! corruption case is found, named and repaired (or reported), and
//! packages from untrusted keys or for another base are refused.

mod kit;

use kit::revisions::*;
use kit::*;
use std::fs;
use std::path::{Path, PathBuf};

struct Lab {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    b: PathBuf,
    n: PathBuf,
    r: PathBuf,
    secret: PathBuf,
    public: PathBuf,
    n_pkg: PathBuf,
    r_pkg: PathBuf,
}

/// Trees, fragments, keys, and the packages B -> N and B -> R.
fn lab(zstd: bool, diff_extra: &[&str]) -> Lab {
    let d = tempfile::Builder::new()
        .prefix("mosaic-update-")
        .tempdir()
        .unwrap();
    let dir = d.path().to_owned();
    let trees = make_trees(&dir);
    let k = key(1);
    let (secret, public) = write_keys(&dir, "lab.key", &k);
    let (b, n, r) = build_all(&dir, &trees, &k, zstd);
    let (n_pkg, r_pkg) = (dir.join("N.mupd"), dir.join("R.mupd"));
    for (t, p) in [(&n, &n_pkg), (&r, &r_pkg)] {
        let mut args: Vec<&std::ffi::OsStr> = vec![
            "update".as_ref(),
            "diff".as_ref(),
            "--base".as_ref(),
            b.as_os_str(),
            "--target".as_ref(),
            t.as_os_str(),
            "--key".as_ref(),
            secret.as_os_str(),
            "-o".as_ref(),
            p.as_os_str(),
            "--level".as_ref(),
            "6".as_ref(),
        ];
        args.extend(diff_extra.iter().map(|a| std::ffi::OsStr::new(*a)));
        let o = mosaic(&args);
        assert_eq!(code(&o), 0, "diff: {}", stderr(&o));
    }
    Lab {
        _dir: d,
        dir,
        b,
        n,
        r,
        secret,
        public,
        n_pkg,
        r_pkg,
    }
}

fn apply(
    frag: &Path,
    pkg: &Path,
    trust: &Path,
    out: &Path,
    extra: &[&str],
) -> std::process::Output {
    let mut args: Vec<&std::ffi::OsStr> = vec![
        "update".as_ref(),
        "apply".as_ref(),
        "--fragment".as_ref(),
        frag.as_os_str(),
        "--package".as_ref(),
        pkg.as_os_str(),
        "--trust".as_ref(),
        trust.as_os_str(),
        "-o".as_ref(),
        out.as_os_str(),
    ];
    args.extend(extra.iter().map(|a| std::ffi::OsStr::new(*a)));
    mosaic(&args)
}

fn same_bytes(a: &Path, b: &Path) {
    let (x, y) = (fs::read(a).unwrap(), fs::read(b).unwrap());
    assert!(
        x == y,
        "{} and {} differ ({} vs {} bytes)",
        a.display(),
        b.display(),
        x.len(),
        y.len()
    );
}

fn rev_of(p: &Path) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(".rev");
    PathBuf::from(s)
}

/// A device directory holding B, then N hydrated from it (with N.frag.rev).
fn device_on_n(l: &Lab, name: &str, extra: &[&str]) -> (PathBuf, PathBuf) {
    let dev = l.dir.join(name);
    fs::create_dir_all(&dev).unwrap();
    fs::copy(&l.b, dev.join("B.frag")).unwrap();
    let n = dev.join("N.frag");
    let o = apply(&dev.join("B.frag"), &l.n_pkg, &l.public, &n, extra);
    assert_eq!(code(&o), 0, "B -> N: {}", stderr(&o));
    (dev, n)
}

fn full_chain(zstd: bool, diff_extra: &[&str], apply_extra: &[&str]) -> Lab {
    let l = lab(zstd, diff_extra);
    let (dev, n) = device_on_n(&l, "dev", apply_extra);
    same_bytes(&n, &l.n);
    assert!(!rev_of(&dev.join("B.frag")).exists());
    assert!(rev_of(&n).exists(), "N.frag.rev written beside N");

    // N -> R through N's reverse differentials.
    let r = dev.join("R.frag");
    let o = apply(&n, &l.r_pkg, &l.public, &r, apply_extra);
    assert_eq!(code(&o), 0, "N -> R: {}", stderr(&o));
    assert!(stdout(&o).contains("later revision"), "{}", stdout(&o));
    // /bin/tool changed from B to N and not from N to R.
    assert!(stdout(&o).contains("; 1 already current"), "{}", stdout(&o));
    same_bytes(&r, &l.r);
    assert!(rev_of(&r).exists());
    let v = mosaic([
        "fragment",
        "verify",
        r.to_str().unwrap(),
        "--trust",
        l.public.to_str().unwrap(),
    ]);
    assert_eq!(code(&v), 0, "{}", stderr(&v));

    // Back again: R (hydrated) + R.frag.rev -> B -> N, proving R's
    // reverse differentials give B back exactly.
    let n2 = dev.join("N2.frag");
    let o = apply(&r, &l.n_pkg, &l.public, &n2, apply_extra);
    assert_eq!(code(&o), 0, "R -> N: {}", stderr(&o));
    same_bytes(&n2, &l.n);

    // And straight from the base.
    let r2 = dev.join("R2.frag");
    let o = apply(&dev.join("B.frag"), &l.r_pkg, &l.public, &r2, apply_extra);
    assert_eq!(code(&o), 0, "B -> R: {}", stderr(&o));
    assert!(stdout(&o).contains("from the base"), "{}", stdout(&o));
    same_bytes(&r2, &l.r);
    assert!(temp_files(&dev).is_empty(), "{:?}", temp_files(&dev));
    l
}

#[test]
fn raw_fragments_hydrate_byte_identical() {
    full_chain(false, &[], &[]);
}

#[test]
fn zstd_fragments_hydrate_byte_identical() {
    full_chain(true, &[], &[]);
}

#[test]
fn small_frames_windows_and_scratch_contents_hydrate_byte_identical() {
    // 64 KiB frames over 256 KiB base windows (so the 2 MiB file's frames
    // each see part of the base), and contents over 100 kB in scratch files.
    let l = full_chain(
        false,
        &[
            "--frame-size",
            "65536",
            "--window-max",
            "262144",
            "--mem-limit",
            "100000",
        ],
        &["--mem-limit", "100000"],
    );
    let o = mosaic(["update", "inspect", l.r_pkg.to_str().unwrap(), "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let big = v["pieces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["path"] == "/bin/big")
        .unwrap();
    let frames = big["payload"]["frames"].as_array().unwrap();
    assert_eq!(
        frames.len(),
        (2u64 * 1048576 + 300 + 300).div_ceil(65536) as usize,
        "{big}"
    );
    assert!(frames.iter().all(|f| f["prefix_len"] == 262144), "{big}");
    let starts: std::collections::BTreeSet<u64> = frames
        .iter()
        .map(|f| f["prefix_start"].as_u64().unwrap())
        .collect();
    assert!(starts.len() > 10, "windows follow the frames: {starts:?}");
}

#[test]
fn inspect_names_every_change() {
    let l = lab(false, &[]);
    let o = mosaic(["update", "inspect", l.r_pkg.to_str().unwrap(), "--json"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let s = &v["stats"];
    // changed: big, tool, conf, sparse; renamed: libfoo (changed), readme
    // (copy); added: new/added, new/small; unchanged: same, same-too,
    // mode-only, dup1 (= dup2); deleted: libfoo-1.2.so, doc, doc/readme,
    // old, old/gone; metadata only: mode-only.
    for (k, want) in [
        ("changed", 4),
        ("renamed", 2),
        ("added", 2),
        ("unchanged", 4),
        ("deleted", 5),
        ("metadata_only", 1),
    ] {
        assert_eq!(s[k], want, "{k}: {s}");
    }
    let kind_of = |p: &str| {
        v["pieces"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["path"] == p)
            .map(|x| x["kind"].as_str().unwrap().to_owned())
    };
    assert_eq!(kind_of("/doc2/readme").as_deref(), Some("copy"));
    assert_eq!(kind_of("/new/added").as_deref(), Some("full"));
    assert_eq!(kind_of("/bin/big").as_deref(), Some("delta"));
    assert_eq!(kind_of("/lib/libfoo-1.3.so").as_deref(), Some("delta"));
    assert_eq!(kind_of("/etc/same"), None, "unchanged files are not listed");
    let pkg = v["package_bytes"].as_u64().unwrap();
    let frag = v["target_fragment_bytes"].as_u64().unwrap();
    // The 600 KiB of new noise cannot shrink; everything else is deltas.
    assert!(
        pkg < 700_000 && pkg * 5 < frag,
        "package {pkg} bytes, fragment {frag}"
    );
    let t = mosaic(["update", "inspect", l.r_pkg.to_str().unwrap()]);
    assert_eq!(code(&t), 0);
    assert!(
        stdout(&t).contains("4 changed, 2 added, 2 renamed"),
        "{}",
        stdout(&t)
    );
}

/// One corruption scenario on a device at N: applied without a repair
/// source it fails naming `names` (and only writes nothing); with one it
/// succeeds byte-identically.
fn corruption_case(
    l: &Lab,
    name: &str,
    corrupt: &dyn Fn(&Path, &Path, &Path),
    names: &[&str],
    count: usize,
) {
    assert!(count > 0);
    let (dev, n) = device_on_n(l, name, &[]);
    let pkg = dev.join("R.mupd");
    fs::copy(&l.r_pkg, &pkg).unwrap();
    corrupt(&n, &rev_of(&n), &pkg);
    let r = dev.join("R.frag");
    let o = apply(&n, &pkg, &l.public, &r, &[]);
    assert_eq!(code(&o), 1, "{name}: without repair: {}", stderr(&o));
    let err = stderr(&o);
    for want in names {
        assert!(err.contains(want), "{name}: {want} not named in: {err}");
    }
    assert!(
        err.contains(&format!("{count} item(s) could not be hydrated")),
        "{name}: expected {count} items: {err}"
    );
    assert!(
        !r.exists() && !rev_of(&r).exists(),
        "{name}: output written on failure"
    );
    assert!(
        temp_files(&dev).is_empty(),
        "{name}: {:?}",
        temp_files(&dev)
    );

    let o = apply(
        &n,
        &pkg,
        &l.public,
        &r,
        &["--repair-source", l.r.to_str().unwrap()],
    );
    assert_eq!(code(&o), 0, "{name}: with repair: {}", stderr(&o));
    assert!(
        stdout(&o).contains("repaired from"),
        "{name}: {}",
        stdout(&o)
    );
    for want in names.iter().filter(|n| n.starts_with('/')) {
        assert!(
            stdout(&o).contains(want),
            "{name}: repair of {want} not reported: {}",
            stdout(&o)
        );
    }
    same_bytes(&r, &l.r);
    assert!(
        temp_files(&dev).is_empty(),
        "{name}: {:?}",
        temp_files(&dev)
    );
}

#[test]
fn every_corruption_is_named_and_repaired() {
    let l = lab(false, &[]);
    let b = fragments::Fragment::open(&l.b, fragments::Trust::AnySigner).unwrap();
    let bm = b.metadata().clone();

    // A corrupt file of N that R keeps unchanged (read from N as is).
    corruption_case(
        &l,
        "n-file",
        &|n, _, _| flip(n, content_offset(n, "/etc/same-too")),
        &["/etc/same-too"],
        1,
    );
    // A corrupt file of N that is the start of a reverse differential.
    corruption_case(
        &l,
        "n-delta-source",
        &|n, _, _| flip(n, content_offset(n, "/bin/big")),
        &["/bin/big"],
        1,
    );
    // A corrupt reverse differential.
    corruption_case(
        &l,
        "rev-delta",
        &|_, rev, _| flip(rev, rev_offset(rev, &bm, "/bin/big")),
        &["/bin/big", "reverse differential is corrupt"],
        1,
    );
    // A corrupt forward differential in the package.
    corruption_case(
        &l,
        "package-delta",
        &|_, _, pkg| flip(pkg, package_offset(pkg, "/lib/libfoo-1.3.so")),
        &[
            "/lib/libfoo-1.3.so",
            "forward differential in the package is corrupt",
        ],
        1,
    );
    // The package's metadata differential: nothing can be laid out without it.
    corruption_case(
        &l,
        "package-metadata",
        &|_, _, pkg| {
            let p = update::Package::open(pkg, update::PackageTrust::AnySigner).unwrap();
            let pl = p.manifest.metadata.payload.clone().unwrap();
            flip(pkg, p.header.data_offset + pl.offset + pl.len / 2)
        },
        &["metadata region"],
        1,
    );
    // Several at once: every one is listed, all are repaired in one pass.
    corruption_case(
        &l,
        "several",
        &|n, rev, pkg| {
            flip(n, content_offset(n, "/etc/same-too"));
            flip(rev, rev_offset(rev, &bm, "/bin/big"));
            flip(pkg, package_offset(pkg, "/lib/libfoo-1.3.so"));
            flip(pkg, package_offset(pkg, "/new/added"));
        },
        &[
            "/etc/same-too",
            "/bin/big",
            "/lib/libfoo-1.3.so",
            "/new/added",
        ],
        4,
    );
    // Missing reverse differentials: the base, so its metadata, is gone; the
    // target's metadata is a delta against it. Named: the metadata, every
    // piece that needs the base, and the unchanged files as a group.
    let p = update::Package::open(&l.r_pkg, update::PackageTrust::AnySigner).unwrap();
    let need_base = p
        .manifest
        .pieces
        .iter()
        .filter(|x| x.base.is_some())
        .count();
    assert!(need_base >= 5, "{need_base}");
    corruption_case(
        &l,
        "rev-missing",
        &|_, rev, _| fs::remove_file(rev).unwrap(),
        &[
            "metadata region",
            "/bin/big",
            "/doc2/readme",
            "/lib/libfoo-1.3.so",
            "files unchanged from the base",
            "missing",
        ],
        need_base + 2,
    );
    // A truncated reverse file is unusable as a whole.
    corruption_case(
        &l,
        "rev-truncated",
        &|_, rev, _| {
            let len = fs::metadata(rev).unwrap().len();
            fs::OpenOptions::new()
                .write(true)
                .open(rev)
                .unwrap()
                .set_len(len - 10)
                .unwrap();
        },
        &["/bin/big", "unusable"],
        need_base + 2,
    );
    // A reverse file beside N that belongs to another fragment (stale).
    corruption_case(
        &l,
        "rev-stale",
        &|_, rev, _| {
            let (_, n2) = device_on_n(&l, "stale", &[]);
            // R.frag.rev of a hydrated R names R, not N.
            let r = l.dir.join("stale/R.frag");
            let o = apply(&n2, &l.r_pkg, &l.public, &r, &[]);
            assert_eq!(code(&o), 0, "{}", stderr(&o));
            fs::copy(rev_of(&r), rev).unwrap();
        },
        &["/bin/big", "another fragment"],
        need_base + 2,
    );
}

#[test]
fn refuses_untrusted_packages_other_bases_and_wrong_repair_sources() {
    let l = lab(false, &[]);
    let (dev, n) = device_on_n(&l, "dev", &[]);
    let out = dev.join("R.frag");

    // Signed by a key the device does not trust.
    let (other_secret, other_public) = write_keys(&l.dir, "other.key", &key(2));
    let evil = l.dir.join("evil.mupd");
    let o = mosaic([
        "update",
        "diff",
        "--base",
        l.b.to_str().unwrap(),
        "--target",
        l.r.to_str().unwrap(),
        "--key",
        other_secret.to_str().unwrap(),
        "-o",
        evil.to_str().unwrap(),
        "--level",
        "3",
    ]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let o = apply(&n, &evil, &l.public, &out, &[]);
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    assert!(stderr(&o).contains("untrusted key"), "{}", stderr(&o));
    assert!(!out.exists());
    // Trusting both keys, it applies (the fragments are signed by the lab key).
    let o = apply(
        &n,
        &evil,
        &l.public,
        &out,
        &["--trust", other_public.to_str().unwrap()],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    same_bytes(&out, &l.r);
    fs::remove_file(&out).unwrap();

    // A package for another base (made against R instead of B).
    let other = l.dir.join("other-base.mupd");
    let o = mosaic([
        "update",
        "diff",
        "--base",
        l.r.to_str().unwrap(),
        "--target",
        l.n.to_str().unwrap(),
        "--key",
        l.secret.to_str().unwrap(),
        "-o",
        other.to_str().unwrap(),
        "--level",
        "3",
    ]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let o = apply(&n, &other, &l.public, &out, &[]);
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    assert!(stderr(&o).contains("wrong base"), "{}", stderr(&o));
    // Even with a repair source: a package for another base is refused.
    let o = apply(
        &n,
        &other,
        &l.public,
        &out,
        &["--repair-source", l.n.to_str().unwrap()],
    );
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    // On a base fragment that is not its base (and has no reverse file).
    let o = apply(&dev.join("B.frag"), &other, &l.public, &out, &[]);
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    assert!(
        stderr(&o).contains("is not the package's base"),
        "{}",
        stderr(&o)
    );
    assert!(!out.exists());

    // A repair source that is not the package's target.
    let o = apply(
        &n,
        &l.r_pkg,
        &l.public,
        &out,
        &["--repair-source", l.n.to_str().unwrap()],
    );
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    assert!(
        stderr(&o).contains("repair source is not the target"),
        "{}",
        stderr(&o)
    );

    // A flipped header or manifest byte: the signature or the signed hash fails.
    for at in [100u64, 600] {
        let bad = l.dir.join(format!("bad-{at}.mupd"));
        fs::copy(&l.r_pkg, &bad).unwrap();
        flip(&bad, at);
        let o = apply(&n, &bad, &l.public, &out, &[]);
        assert_eq!(code(&o), 1, "flip at {at}: {}", stderr(&o));
        let o = mosaic(["update", "inspect", bad.to_str().unwrap()]);
        assert_eq!(code(&o), 1, "inspect, flip at {at}: {}", stderr(&o));
    }
    // Not a package at all; a missing file is an environment error.
    let o = apply(&n, &l.b, &l.public, &out, &[]);
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    let o = apply(&n, &l.dir.join("nope.mupd"), &l.public, &out, &[]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(!out.exists());
    assert!(temp_files(&dev).is_empty(), "{:?}", temp_files(&dev));
}

#[test]
fn reapplying_replaces_the_output_and_a_failed_apply_leaves_it_alone() {
    let l = lab(false, &[]);
    let (dev, n) = device_on_n(&l, "dev", &[]);
    let out = dev.join("R.frag");
    for _ in 0..2 {
        let o = apply(&n, &l.r_pkg, &l.public, &out, &[]);
        assert_eq!(code(&o), 0, "{}", stderr(&o));
        same_bytes(&out, &l.r);
    }
    let rev_before = fs::read(rev_of(&out)).unwrap();
    // A failing apply over an existing output leaves it and its .rev intact.
    let pkg = dev.join("bad.mupd");
    fs::copy(&l.r_pkg, &pkg).unwrap();
    flip(&pkg, package_offset(&pkg, "/bin/big"));
    let o = apply(&n, &pkg, &l.public, &out, &[]);
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    same_bytes(&out, &l.r);
    assert_eq!(fs::read(rev_of(&out)).unwrap(), rev_before);
    // Reverse differentials kept elsewhere, named with --reverse.
    let moved = dev.join("elsewhere.rev");
    fs::rename(rev_of(&n), &moved).unwrap();
    let o = apply(&n, &l.r_pkg, &l.public, &out, &[]);
    assert_eq!(code(&o), 1, "without N.frag.rev: {}", stderr(&o));
    let o = apply(
        &n,
        &l.r_pkg,
        &l.public,
        &out,
        &["--reverse", moved.to_str().unwrap()],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    same_bytes(&out, &l.r);
    fs::rename(&moved, rev_of(&n)).unwrap();
    // Applying in place: the device's own fragment is replaced by R.
    let o = apply(&n, &l.r_pkg, &l.public, &n, &[]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    same_bytes(&n, &l.r);
    assert!(temp_files(&dev).is_empty(), "{:?}", temp_files(&dev));
}

/// Byte flips anywhere in a package or a reverse file never panic: opening
/// refuses them or applying names what broke (or, for bytes the apply does
/// not need, succeeds byte-identically).
#[test]
fn flipped_bytes_in_packages_and_reverse_files_never_panic() {
    let l = lab(false, &[]);
    let (dev, n) = device_on_n(&l, "dev", &[]);
    let trusted = [key(1).verifying_key()];
    let pkg_bytes = fs::read(&l.r_pkg).unwrap();
    let rev_bytes = fs::read(rev_of(&n)).unwrap();
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut next = |m: usize| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x % m as u64) as usize
    };
    let out = dev.join("R.frag");
    let opts = update::ApplyOptions::default();
    let (mut refused, mut ok) = (0, 0);
    for round in 0..120 {
        let (pkg, rev) = (dev.join("f.mupd"), rev_of(&n));
        let mut p = pkg_bytes.clone();
        let mut r = rev_bytes.clone();
        if round % 2 == 0 {
            let at = next(p.len());
            p[at] ^= 1 << next(8);
        } else {
            let at = next(r.len());
            r[at] ^= 1 << next(8);
        }
        fs::write(&pkg, &p).unwrap();
        fs::write(&rev, &r).unwrap();
        let _ = update::Package::open(&pkg, update::PackageTrust::AnySigner);
        let _ = update::rev::RevFile::open(&rev);
        match update::apply(&n, &pkg, &trusted, &out, &opts, &fragments::NoProgress) {
            Ok(_) => {
                same_bytes(&out, &l.r);
                ok += 1;
            }
            Err(e) => {
                assert!(e.is_invalid_input(), "round {round}: {e}");
                refused += 1;
            }
        }
    }
    fs::write(rev_of(&n), &rev_bytes).unwrap();
    // Most bytes of both files are needed by this apply, so most flips are refused.
    assert!(
        refused > 60 && ok + refused == 120,
        "refused {refused}, ok {ok}"
    );
}

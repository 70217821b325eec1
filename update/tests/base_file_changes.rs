//! Fragment files that change on disk while `update::apply` or
//! `update::diff` runs: what was opened and verified is what is used, a
//! second read of the path never is, and a truncated base gives an error
//! naming it (never a crash: nothing of it is memory-mapped).
//!
//! The change happens from the `Progress` callback at the start of a named
//! phase, so it lands at a known point of the run without timing.

use fragments::{BuildOptions, Fragment, NoProgress, Progress, SigningKey, Trust, VerifyingKey};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use update::{ApplyOptions, DiffOptions, Error, Package, PackageTrust};

/// Runs `hook` once, when the phase `phase` starts.
struct OnPhase<F: Fn() + Sync> {
    phase: &'static str,
    hook: F,
    ran: AtomicBool,
}

impl<F: Fn() + Sync> OnPhase<F> {
    fn new(phase: &'static str, hook: F) -> Self {
        OnPhase {
            phase,
            hook,
            ran: AtomicBool::new(false),
        }
    }
    fn ran(&self) -> bool {
        self.ran.load(Ordering::SeqCst)
    }
}

impl<F: Fn() + Sync> Progress for OnPhase<F> {
    fn phase(&self, name: &str, _total: u64) {
        if name == self.phase && !self.ran.swap(true, Ordering::SeqCst) {
            (self.hook)();
        }
    }
}

fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn key() -> SigningKey {
    SigningKey::from_bytes(&[7; 32])
}

struct Lab {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    b: PathBuf,
    r: PathBuf,
    /// Another fragment, signed by the same key.
    x: PathBuf,
    pkg: PathBuf,
    trusted: Vec<VerifyingKey>,
}

fn build(dir: &Path, name: &str, files: &[(&str, Vec<u8>)]) -> PathBuf {
    let tree = dir.join(format!("tree-{name}"));
    for (p, bytes) in files {
        let at = tree.join(p);
        fs::create_dir_all(at.parent().unwrap()).unwrap();
        fs::write(at, bytes).unwrap();
    }
    let out = dir.join(format!("{name}.frag"));
    let opts = BuildOptions {
        name: name.into(),
        version: "1".into(),
        ..Default::default()
    };
    fragments::build(&tree, &out, &key(), &opts, &NoProgress).unwrap();
    out
}

/// B and R, raw fragments: `/bin/big` (one raw extent, changed: a forward
/// differential whose base is read during hydration), `/etc/same`
/// (unchanged: copied from the base), `/new` (added).
fn lab() -> Lab {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_owned();
    let big = noise(1, 300 << 10);
    let mut big_r = big.clone();
    big_r[1000..1016].copy_from_slice(&[0xee; 16]);
    big_r[200_000..200_020].copy_from_slice(&[0x11; 20]);
    let same = noise(2, 20 << 10);
    let b = build(&dir, "b", &[("bin/big", big), ("etc/same", same.clone())]);
    let r = build(
        &dir,
        "r",
        &[
            ("bin/big", big_r),
            ("etc/same", same),
            ("new", noise(3, 9000)),
        ],
    );
    let x = build(&dir, "x", &[("other", noise(4, 50_000))]);
    let pkg = dir.join("r.mupd");
    let opts = DiffOptions {
        level: 3,
        ..Default::default()
    };
    update::diff(&b, &r, &key(), &pkg, &opts, &NoProgress).unwrap();
    Lab {
        _tmp: tmp,
        trusted: vec![key().verifying_key()],
        dir,
        b,
        r,
        x,
        pkg,
    }
}

/// A device directory holding a copy of B.
fn device(l: &Lab, name: &str) -> (PathBuf, PathBuf) {
    let dev = l.dir.join(name);
    fs::create_dir_all(&dev).unwrap();
    let frag = dev.join("B.frag");
    fs::copy(&l.b, &frag).unwrap();
    (dev, frag)
}

fn header_of(p: &Path) -> Vec<u8> {
    fs::read(p).unwrap()[..4096].to_vec()
}

#[test]
fn a_base_replaced_on_disk_during_apply_is_not_read_again() {
    let l = lab();
    let (dev, frag) = device(&l, "renamed");
    let out = dev.join("R.frag");
    let stranger = dev.join("x.frag");
    fs::copy(&l.x, &stranger).unwrap();
    // Once hydration starts, B.frag's path names another valid fragment.
    let hook = OnPhase::new("hydrating", || fs::rename(&stranger, &frag).unwrap());
    let report = update::apply(
        &frag,
        &l.pkg,
        &l.trusted,
        &out,
        &ApplyOptions::default(),
        &hook,
    )
    .unwrap();
    assert!(hook.ran(), "the hook never ran: no 'hydrating' phase");
    assert!(report.from_base);
    assert!(header_of(&frag) == header_of(&l.x), "the rename happened");
    assert!(
        fs::read(&out).unwrap() == fs::read(&l.r).unwrap(),
        "R is not the lab's"
    );
    // The reverse file records the base that was opened and verified,
    // not what the path held afterwards.
    let rev = update::rev::RevFile::open(&update::apply::rev_path_of(&out)).unwrap();
    assert!(
        rev.base_header.to_vec() == header_of(&l.b),
        "the reverse file stores another header than B's"
    );
    let pkg = Package::open(&l.pkg, PackageTrust::AnySigner).unwrap();
    assert_eq!(rev.header.base_id, pkg.header.base_id);
    // And it serves the next apply: R + R.frag.rev -> R again.
    let again = dev.join("R2.frag");
    let r2 = update::apply(
        &out,
        &l.pkg,
        &l.trusted,
        &again,
        &ApplyOptions::default(),
        &NoProgress,
    )
    .unwrap();
    assert!(!r2.from_base);
    assert!(fs::read(&again).unwrap() == fs::read(&l.r).unwrap());
}

#[test]
fn a_base_truncated_during_apply_is_an_error_naming_it() {
    let l = lab();
    let (dev, frag) = device(&l, "truncated");
    let out = dev.join("R.frag");
    let truncate = || {
        fs::OpenOptions::new()
            .write(true)
            .open(&frag)
            .unwrap()
            .set_len(4096)
            .unwrap()
    };
    let hook = OnPhase::new("hydrating", truncate);
    let err = update::apply(
        &frag,
        &l.pkg,
        &l.trusted,
        &out,
        &ApplyOptions::default(),
        &hook,
    )
    .unwrap_err();
    assert!(hook.ran());
    assert_eq!(fs::metadata(&frag).unwrap().len(), 4096);
    let msg = err.to_string();
    let Error::Items {
        items,
        repair_tried: false,
    } = &err
    else {
        panic!("expected the failed items, got: {msg}");
    };
    // The changed file (its base read for the differential) and the
    // unchanged one (copied from the base) both fail, naming the base file.
    for want in ["/bin/big", "/etc/same"] {
        let item = items.iter().find(|i| i.path == want);
        let item = item.unwrap_or_else(|| panic!("{want} not listed: {msg}"));
        assert!(
            item.what.contains(&frag.display().to_string()),
            "{want}: the base file is not named: {}",
            item.what
        );
        assert!(item.what.contains("truncated"), "{}", item.what);
    }
    assert!(err.is_invalid_input());
    assert!(!out.exists() && !update::apply::rev_path_of(&out).exists());

    // With a repair source the same run completes, byte-identical.
    fs::copy(&l.b, &frag).unwrap();
    let hook = OnPhase::new("hydrating", truncate);
    let opts = ApplyOptions {
        repair_source: Some(l.r.clone()),
        ..Default::default()
    };
    let report = update::apply(&frag, &l.pkg, &l.trusted, &out, &opts, &hook).unwrap();
    assert!(hook.ran());
    assert!(fs::read(&out).unwrap() == fs::read(&l.r).unwrap());
    let repaired: Vec<&str> = report.repaired.iter().map(|i| i.path.as_str()).collect();
    assert!(
        repaired.contains(&"/bin/big") && repaired.contains(&"/etc/same"),
        "{repaired:?}"
    );
    // The base contents could not be read for the reverse file: recorded
    // as missing, with a warning, not invented.
    assert!(report.reverse_missing > 0, "{report:?}");
    assert!(!report.warnings.is_empty());
}

#[test]
fn a_target_replaced_on_disk_during_diff_is_not_read_again() {
    let l = lab();
    let r = l.dir.join("r-copy.frag");
    fs::copy(&l.r, &r).unwrap();
    let opened = Fragment::open(&l.r, Trust::AnySigner).unwrap();
    // The accessor holds the header as verified at open.
    assert!(opened.header_bytes().to_vec() == header_of(&l.r));
    assert_eq!(blake3::hash(opened.header_bytes()).as_bytes(), &opened.id());
    let stranger = l.dir.join("x-copy.frag");
    fs::copy(&l.x, &stranger).unwrap();
    let hook = OnPhase::new("differentials", || fs::rename(&stranger, &r).unwrap());
    let pkg = l.dir.join("again.mupd");
    let opts = DiffOptions {
        level: 3,
        ..Default::default()
    };
    update::diff(&l.b, &r, &key(), &pkg, &opts, &hook).unwrap();
    assert!(hook.ran());
    let p = Package::open(&pkg, PackageTrust::AnySigner).unwrap();
    assert_eq!(p.header.target_id, opened.id());
    assert!(p.manifest.target_header.to_vec() == header_of(&l.r));
    assert!(
        fs::read(&pkg).unwrap() == fs::read(&l.pkg).unwrap(),
        "not the same package as from the untouched target"
    );
}

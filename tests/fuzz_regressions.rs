//! Replays the fuzzers' findings, and inputs generated here, through the
//! exact bodies of the fuzz targets (`fuzz/src/lib.rs`, included below):
//!
//! - every file under `fuzz/regressions/<target>/` (crashes that
//!   `scripts/fuzz.sh` copied there) goes through the body of `<target>`;
//! - a small fragment built here, raw and zstd, valid, truncated, with bytes
//!   flipped, and re-signed after flipping metadata bytes, goes through all
//!   of them, so the bodies run even while the regressions are empty.
//!
//! Nothing here may panic: a fragment file is untrusted input.
//!
//! `fragment_resigned` signs with `openssl pkeyutl` (the root package has no
//! ed25519 signer of its own); `scripts/test.sh` installs openssl.

#[path = "../fuzz/src/lib.rs"]
mod fuzz_bodies;

use fragments::{BuildOptions, Fragment, SigningKey, Trust};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::Command;

const TARGETS: [&str; 4] = [
    "fragment_open",
    "fragment_unsigned_parse",
    "fragment_resigned",
    "update_tables",
];

/// Signs with `fuzz_bodies::RESIGN_SECRET` through the openssl CLI; the
/// signature is the one ed25519-dalek makes (ed25519 is deterministic).
struct OpensslSigner {
    dir: tempfile::TempDir,
    key: SigningKey,
}

impl OpensslSigner {
    fn new() -> OpensslSigner {
        let dir = tempfile::Builder::new()
            .prefix("mosaic-fuzz-sign-")
            .tempdir()
            .expect("temporary directory");
        let key = SigningKey::from_bytes(&fuzz_bodies::RESIGN_SECRET);
        std::fs::write(
            dir.path().join("key.pem"),
            fragments::keys::secret_pem(&key),
        )
        .expect("write key");
        OpensslSigner { dir, key }
    }
    fn public(&self) -> [u8; 32] {
        self.key.verifying_key().to_bytes()
    }
    fn sign(&self, msg: &[u8]) -> [u8; 64] {
        let m = self.dir.path().join("msg");
        std::fs::write(&m, msg).expect("write message");
        let out = Command::new("openssl")
            .args(["pkeyutl", "-sign", "-rawin", "-inkey"])
            .arg(self.dir.path().join("key.pem"))
            .arg("-in")
            .arg(&m)
            .output()
            .expect("run openssl (install it: apt-get install -y openssl)");
        assert!(
            out.status.success(),
            "openssl pkeyutl -sign failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
            .try_into()
            .expect("an ed25519 signature is 64 bytes")
    }
}

fn run_target(target: &str, data: &[u8], signer: &OpensslSigner) {
    match target {
        "fragment_open" => fuzz_bodies::fragment_open(data),
        "fragment_unsigned_parse" => fuzz_bodies::unsigned_parse(data),
        "update_tables" => fuzz_bodies::update_tables(data),
        "fragment_resigned" => {
            fuzz_bodies::fragment_resigned(data, signer.public(), &|m| signer.sign(m))
        }
        other => panic!("fuzz/regressions/{other}: no such fuzz target"),
    }
}

/// Runs every target on `data`; returns the names of those that panicked.
fn run_all(data: &[u8], signer: &OpensslSigner, targets: &[&str]) -> Vec<String> {
    targets
        .iter()
        .filter(|t| catch_unwind(AssertUnwindSafe(|| run_target(t, data, signer))).is_err())
        .map(|t| t.to_string())
        .collect()
}

#[test]
fn fuzz_regressions_replay() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions");
    let signer = OpensslSigner::new();
    let mut files: Vec<(String, PathBuf)> = Vec::new();
    if let Ok(dirs) = std::fs::read_dir(&root) {
        for d in dirs {
            let d = d.expect("read fuzz/regressions").path();
            if !d.is_dir() {
                continue;
            }
            let target = d.file_name().unwrap().to_string_lossy().into_owned();
            assert!(
                TARGETS.contains(&target.as_str()),
                "{}: not a fuzz target ({TARGETS:?})",
                d.display()
            );
            for f in std::fs::read_dir(&d).expect("read a regressions directory") {
                let f = f.expect("read a regressions directory").path();
                if f.is_file() {
                    files.push((target.clone(), f));
                }
            }
        }
    }
    files.sort();
    let mut failed = Vec::new();
    for (target, f) in &files {
        let data = std::fs::read(f).expect("read a regression input");
        if !run_all(&data, &signer, &[target]).is_empty() {
            failed.push(format!("{target}: {}", f.display()));
        }
    }
    eprintln!("replayed {} regression inputs", files.len());
    assert!(
        failed.is_empty(),
        "{} fuzz regression input(s) still panic (backtrace: RUST_BACKTRACE=1):\n  {}",
        failed.len(),
        failed.join("\n  ")
    );
}

/// A tiny tree: small files, a large file with a partial tail, a hard link,
/// a symlink, an empty file, nested directories.
fn tiny_tree(dir: &Path) {
    std::fs::create_dir_all(dir.join("d/e")).unwrap();
    std::fs::write(dir.join("a"), b"hello\n").unwrap();
    std::fs::write(dir.join("d/empty"), b"").unwrap();
    let big: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(dir.join("d/e/big"), &big).unwrap();
    std::fs::hard_link(dir.join("d/e/big"), dir.join("d/big-link")).unwrap();
    std::os::unix::fs::symlink("a", dir.join("link")).unwrap();
}

fn build_fragment(tmp: &Path, name: &str, zstd_level: Option<i32>) -> Vec<u8> {
    let src = tmp.join("tree");
    if !src.exists() {
        tiny_tree(&src);
    }
    let out = tmp.join(format!("{name}.frag"));
    let key = SigningKey::from_bytes(&[9; 32]);
    let opts = BuildOptions {
        zstd_level,
        ..BuildOptions::default()
    };
    fragments::build(&src, &out, &key, &opts, &fragments::NoProgress).expect("build");
    std::fs::read(&out).unwrap()
}

/// Offset and logical length of the metadata region of a valid fragment.
fn metadata_span(frag: &[u8]) -> (usize, usize) {
    let hb: &[u8; 4096] = frag[..4096].try_into().unwrap();
    let h = fragments::Header::decode(Path::new("x"), hb, frag.len() as u64).unwrap();
    let r = &h.regions[h.region_of(fragments::RegionKind::Metadata)];
    (r.file_offset as usize, r.logical_len as usize)
}

#[test]
fn generated_inputs_never_panic() {
    let tmp = tempfile::Builder::new()
        .prefix("mosaic-fuzz-gen-")
        .tempdir()
        .unwrap();
    let signer = OpensslSigner::new();
    let mut failed: Vec<String> = Vec::new();
    let mut check = |what: String, data: &[u8], targets: &[&str]| {
        for t in run_all(data, &signer, targets) {
            failed.push(format!("{t}: {what}"));
        }
    };
    for (name, level) in [("raw", None), ("zstd", Some(3))] {
        let frag = build_fragment(tmp.path(), name, level);

        // Valid: opens, and the re-signed form opens under the test key
        // (which proves the re-signer and the openssl signer right).
        let path = tmp.path().join(format!("{name}.frag"));
        let f = Fragment::open(&path, Trust::AnySigner).expect("a valid fragment opens");
        fuzz_bodies::exercise_fragment(&f);
        let resigned = fuzz_bodies::resign(&frag, signer.public(), &|m| signer.sign(m))
            .expect("a valid fragment re-signs");
        let rpath = tmp.path().join(format!("{name}-resigned.frag"));
        std::fs::write(&rpath, &resigned).unwrap();
        let trusted = [signer.key.verifying_key()];
        let r = Fragment::open(&rpath, Trust::Keys(&trusted)).expect("re-signed fragment opens");
        assert_eq!(r.metadata(), f.metadata());
        check(format!("{name} valid"), &frag, &TARGETS);

        // Truncated anywhere interesting.
        for n in [
            0,
            1,
            64,
            4095,
            4096,
            4097,
            8192,
            frag.len() - 4096,
            frag.len() - 1,
        ] {
            check(format!("{name} truncated to {n}"), &frag[..n], &TARGETS);
        }

        // Every header byte flipped: the unsigned parsers see them all.
        for i in 0..4096 {
            for x in [0x01u8, 0xff] {
                let mut b = frag.clone();
                b[i] ^= x;
                check(
                    format!("{name} header byte {i} ^ {x:#x}"),
                    &b,
                    &TARGETS[1..2],
                );
            }
        }

        // Every metadata byte flipped, set to 0 and to 0xff: unsigned parse
        // (behind the signature) and the bare metadata form.
        let (mo, ml) = metadata_span(&frag);
        for i in mo..mo + ml {
            for op in [0x01u8, 0x80, 0xff] {
                let mut b = frag.clone();
                b[i] ^= op;
                check(
                    format!("{name} metadata byte {} ^ {op:#x}", i - mo),
                    &b,
                    &TARGETS[1..2],
                );
                check(
                    format!("bare {name} metadata byte {} ^ {op:#x}", i - mo),
                    &b[mo..mo + ml],
                    &TARGETS[1..2],
                );
            }
        }

        // A sample through the signed paths: the signature check stops
        // fragment_open; re-signing takes the flip through open, verify,
        // reads and dump.
        for i in (mo..mo + ml).step_by(ml / 12 + 1) {
            let mut b = frag.clone();
            b[i] ^= 0x41;
            check(
                format!("{name} metadata byte {} ^ 0x41", i - mo),
                &b,
                &[TARGETS[0], TARGETS[2]],
            );
        }
        // A flipped data or small-data byte: unsigned, the fragment opens
        // and the bad block is an error when read; re-signed, the changed
        // bytes (a zstd frame that no longer decompresses, say) are read.
        for i in [4096 + 17, mo - 4096 + 3] {
            let mut b = frag.clone();
            b[i] ^= 0xff;
            check(format!("{name} byte {i} ^ 0xff"), &b, &TARGETS);
        }
    }
    assert!(
        failed.is_empty(),
        "{} generated input(s) panic:\n  {}",
        failed.len(),
        failed.join("\n  ")
    );
}

//! The `mosaic` CLI's contract: exit codes (0 success, 1 invalid input,
//! 2 usage or environment error), `inspect --json`, `ls` columns, `cat`,
//! build options, `demo`, and `SOURCE_DATE_EPOCH`.

mod kit;

use kit::*;
use serde_json::Value;
use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

/// 1_000_000_000 s is 2001-09-09 01:46:40 UTC.
const T: i64 = 1_000_000_000;
const DATE: &str = "2001-09-09";
const TIME: &str = "01:46:40";

/// ```text
/// /              0755
/// /bin           0755
/// /bin/tool      0755  6000 bytes
/// /data          0750
/// /data/big      0640  3 blocks
/// /data/hard          hard link of /data/big
/// /etc           0755
/// /etc/conf      0644  "x=1\n", xattr user.k=v
/// /etc/link   -> conf
/// /etc/mid       0644  3000 bytes
/// ```
fn make_tree(root: &Path) {
    make_dir(root, 0o755);
    make_dir(&root.join("bin"), 0o755);
    make_dir(&root.join("data"), 0o750);
    make_dir(&root.join("etc"), 0o755);
    write_file(&root.join("bin/tool"), &nonzero_noise(1, 6000), 0o755);
    write_file(&root.join("data/big"), &nonzero_noise(2, 3 * 4096), 0o640);
    fs::hard_link(root.join("data/big"), root.join("data/hard")).unwrap();
    write_file(&root.join("etc/conf"), b"x=1\n", 0o644);
    xattr::set(root.join("etc/conf"), "user.k", b"v").unwrap();
    write_file(&root.join("etc/mid"), &nonzero_noise(3, 3000), 0o644);
    symlink("conf", root.join("etc/link")).unwrap();
    for p in [
        "bin/tool", "data/big", "etc/conf", "etc/mid", "etc/link", "bin", "data", "etc",
    ] {
        set_mtime(&root.join(p), T, 5);
    }
    set_mtime(root, T, 5);
}

struct Setup {
    dir: tempfile::TempDir,
    src: PathBuf,
    key: PathBuf,
    public: PathBuf,
}

impl Setup {
    fn new() -> Setup {
        let dir = tempdir();
        let src = dir.path().join("src");
        make_tree(&src);
        let (key, public) = write_keys(dir.path(), "lab.key", &key(7));
        Setup {
            dir,
            src,
            key,
            public,
        }
    }
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    /// `mosaic fragment build SRC -o NAME --key KEY EXTRA...`
    fn build(&self, name: &str, extra: &[&str]) -> (PathBuf, std::process::Output) {
        self.build_env(name, extra, &[])
    }
    fn build_env(
        &self,
        name: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> (PathBuf, std::process::Output) {
        let out = self.path(name);
        let mut a = args!["fragment", "build", self.src, "-o", out, "--key", self.key];
        a.extend(extra.iter().map(Into::into));
        (out, mosaic_env(a, env))
    }
    fn build_ok(&self, name: &str, extra: &[&str]) -> PathBuf {
        let (p, o) = self.build(name, extra);
        expect_code(&o, 0, &format!("build {extra:?}"));
        p
    }
    fn verify(&self, frag: &Path) -> std::process::Output {
        mosaic(args!["fragment", "verify", frag, "--trust", self.public])
    }
}

fn inspect_json(frag: &Path) -> Value {
    let o = mosaic(args!["fragment", "inspect", frag, "--json"]);
    expect_code(&o, 0, "inspect --json");
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("inspect --json is not JSON ({e}):\n{}", stdout(&o)))
}

fn region(v: &Value, index: usize) -> &Value {
    &v["regions"][index]
}

#[test]
fn inspect_json_describes_the_fragment() {
    let s = Setup::new();
    let frag = s.build_ok("t.frag", &["--name", "tree", "--version", "2.5"]);
    let v = inspect_json(&frag);
    assert_eq!(v["name"], "tree");
    assert_eq!(v["version"], "2.5");
    assert_eq!(v["format_version"], "1.0");
    assert_eq!(v["file_size"], fs::metadata(&frag).unwrap().len());
    assert_eq!(v["build_time"], 0, "no SOURCE_DATE_EPOCH: build time 0");
    assert_eq!(v["small_threshold"], 1024);
    assert_eq!(v["zstd_level"], 0);
    assert_eq!(
        v["signer"],
        fragments::keys::key_id(key(7).verifying_key().as_bytes())
    );
    let regions = v["regions"].as_array().expect("regions array");
    assert_eq!(regions.len(), 4);
    // Region 1's kind name is checked by `inspect_json_region_kinds_...`.
    assert_eq!(
        [
            &region(&v, 0)["kind"],
            &region(&v, 2)["kind"],
            &region(&v, 3)["kind"]
        ],
        ["data", "metadata", "hashes"]
    );
    let mut off = 4096;
    for (i, r) in regions.iter().enumerate() {
        assert_eq!(r["index"], i);
        assert_eq!(r["encoding"], "raw");
        assert_eq!(r["file_offset"], off, "region {i} offset");
        assert_eq!(
            r["blocks"].as_u64().unwrap() * 4096,
            r["stored_len"].as_u64().unwrap()
        );
        assert_eq!(r["root"].as_str().unwrap().len(), 64);
        off += r["stored_len"].as_u64().unwrap();
    }
    assert_eq!(off, v["file_size"].as_u64().unwrap());
    // Small-data region: only /etc/conf is under 1024 bytes.
    assert_eq!(region(&v, 1)["logical_len"], 4);

    let c = &v["counts"];
    assert_eq!(c["inodes"], 9, "{c}");
    assert_eq!(c["entries"], 9, "{c}");
    assert_eq!(c["regular"], 4, "{c}");
    assert_eq!(c["directories"], 4, "{c}");
    assert_eq!(c["symlinks"], 1, "{c}");
    assert_eq!(c["devices"], 0, "{c}");
    assert_eq!(c["hard_linked_inodes"], 1, "{c}");
    assert_eq!(c["xattrs"], 1, "{c}");
    assert_eq!(
        c["owned_directories"], 3,
        "every directory but / by default: {c}"
    );
    assert_eq!(c["file_bytes"], 6000 + 3 * 4096 + 4 + 3000, "{c}");

    // The text form says the same.
    let o = mosaic(args!["fragment", "inspect", frag]);
    expect_code(&o, 0, "inspect");
    let t = stdout(&o);
    assert!(t.contains("name       tree  version 2.5"), "{t}");
    assert!(t.contains("small-data"), "{t}");
    assert!(
        !t.contains("built "),
        "no build time line without SOURCE_DATE_EPOCH: {t}"
    );
}

/// JSON names the region kinds as every other output does (`inspect`'s
/// table, error messages, `Fault`'s Display): data, small-data, metadata,
/// hashes.
#[test]
fn inspect_json_region_kinds_use_the_region_names() {
    let s = Setup::new();
    let frag = s.build_ok("t.frag", &[]);
    let v = inspect_json(&frag);
    let kinds: Vec<&str> = v["regions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["kind"].as_str().unwrap())
        .collect();
    let text = stdout(&mosaic(args!["fragment", "inspect", frag]));
    assert!(text.contains("small-data"), "{text}");
    assert_eq!(kinds, ["data", "small-data", "metadata", "hashes"]);
}

fn ls(frag: &Path, path: &str) -> Vec<Vec<String>> {
    let o = mosaic(args!["fragment", "ls", frag, path]);
    expect_code(&o, 0, &format!("ls {path}"));
    stdout(&o)
        .lines()
        .map(|l| l.split_whitespace().map(str::to_owned).collect())
        .collect()
}

/// An expected `ls` row: mode, links, size, name [-> target]; owner and
/// group are the test process's (root here), the time is `T`.
fn row(cols: &[&str]) -> Vec<String> {
    let (uid, gid) = (nix::unistd::getuid(), nix::unistd::getgid());
    let mut v: Vec<String> = vec![
        cols[0].into(),
        cols[1].into(),
        uid.to_string(),
        gid.to_string(),
    ];
    v.extend(cols[2..].iter().map(|s| s.to_string()));
    let name = v.split_off(5);
    v.push(DATE.into());
    v.push(format!("{TIME}.000000005"));
    v.extend(name);
    v
}

#[test]
fn ls_prints_ls_l_columns() {
    let s = Setup::new();
    let frag = s.build_ok("t.frag", &[]);
    assert_eq!(
        ls(&frag, "/"),
        vec![
            row(&["drwxr-xr-x", "2", "0", "bin"]),
            row(&["drwxr-x---", "2", "0", "data"]),
            row(&["drwxr-xr-x", "2", "0", "etc"]),
        ]
    );
    assert_eq!(
        ls(&frag, "/etc"),
        vec![
            row(&["-rw-r--r--", "1", "4", "conf"]),
            row(&["lrwxrwxrwx", "1", "4", "link", "->", "conf"]),
            row(&["-rw-r--r--", "1", "3000", "mid"]),
        ]
    );
    assert_eq!(
        ls(&frag, "/data"),
        vec![
            row(&["-rw-r-----", "2", "12288", "big"]),
            row(&["-rw-r-----", "2", "12288", "hard"]),
        ]
    );
    // One entry: listed under the path given.
    assert_eq!(
        ls(&frag, "/bin/tool"),
        vec![row(&["-rwxr-xr-x", "1", "6000", "/bin/tool"])]
    );
    let o = mosaic(args!["fragment", "ls", frag, "/nope"]);
    expect_code(&o, 1, "ls of a missing path");
    assert!(stderr(&o).contains("/nope"), "{}", stderr(&o));
}

#[test]
fn cat_prints_files_and_refuses_directories_and_missing_paths() {
    let s = Setup::new();
    let frag = s.build_ok("t.frag", &[]);
    for (p, want) in [
        ("/etc/conf", b"x=1\n".to_vec()),
        ("/bin/tool", nonzero_noise(1, 6000)),
        ("/data/hard", nonzero_noise(2, 3 * 4096)),
        ("etc/mid", nonzero_noise(3, 3000)),
    ] {
        let o = mosaic(args!["fragment", "cat", frag, p]);
        expect_code(&o, 0, &format!("cat {p}"));
        assert!(o.stdout == want, "cat {p}: wrong content");
    }
    for p in ["/etc", "/", "/etc/nope", "/missing/deeper"] {
        let o = mosaic(args!["fragment", "cat", frag, p]);
        expect_code(&o, 1, &format!("cat {p}"));
        assert!(
            stderr(&o).contains(p),
            "cat {p}: the message does not name the path: {}",
            stderr(&o)
        );
        assert!(o.stdout.is_empty());
    }
}

#[test]
fn build_options_produce_verifiable_fragments() {
    let s = Setup::new();
    for (name, extra, zstd, threshold, small_len) in [
        ("z19.frag", &["--compress", "zstd:19"][..], 19, 1024, 4),
        ("z.frag", &["--compress", "zstd"][..], 3, 1024, 4),
        ("t0.frag", &["--small-threshold", "0"][..], 0, 0, 0),
        (
            "t4096.frag",
            &["--small-threshold", "4096"][..],
            0,
            4096,
            3004,
        ),
    ] {
        let frag = s.build_ok(name, extra);
        let o = s.verify(&frag);
        expect_code(&o, 0, &format!("verify of a build with {extra:?}"));
        let v = inspect_json(&frag);
        assert_eq!(v["zstd_level"], zstd, "{extra:?}");
        assert_eq!(v["small_threshold"], threshold, "{extra:?}");
        if zstd > 0 {
            assert_eq!(v["incompat_features"], 1, "{extra:?}");
            assert_eq!(region(&v, 0)["encoding"], "zstd");
            assert_eq!(region(&v, 1)["encoding"], "zstd");
            assert_eq!(
                region(&v, 2)["encoding"],
                "raw",
                "metadata is never compressed"
            );
        }
        assert_eq!(
            region(&v, 1)["logical_len"],
            small_len,
            "{extra:?}: small-data bytes"
        );
        for (p, want) in [
            ("/etc/conf", b"x=1\n".to_vec()),
            ("/etc/mid", nonzero_noise(3, 3000)),
        ] {
            let o = mosaic(args!["fragment", "cat", frag, p]);
            expect_code(&o, 0, "cat");
            assert!(o.stdout == want, "{extra:?}: cat {p}");
        }
    }
}

#[test]
fn bad_build_options_are_usage_errors() {
    let s = Setup::new();
    for extra in [
        &["--compress", "lz4"][..],
        &["--compress", "zstd:abc"],
        &["--compress", "zstd:99"],
        &["--small-threshold", "4097"],
        &["--small-threshold", "-1"],
        &["--name", &"n".repeat(64)],
        &["--owns", "/nonexistent"],
    ] {
        let (out, o) = s.build("bad.frag", extra);
        expect_code(&o, 2, &format!("build {extra:?}"));
        assert!(!stderr(&o).is_empty());
        assert!(!out.exists(), "{extra:?}: an output was written");
    }
    // No temporary files left in the output directory.
    let left: Vec<String> = fs::read_dir(s.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn exit_codes_for_usage_and_environment_errors() {
    let s = Setup::new();
    let frag = s.build_ok("t.frag", &[]);
    // clap usage errors
    expect_code(&mosaic(args!["no-such-command"]), 2, "unknown command");
    expect_code(
        &mosaic(args!["fragment", "verify", frag]),
        2,
        "verify without --trust",
    );
    expect_code(
        &mosaic(args!["fragment", "build", s.src]),
        2,
        "build without -o/--key",
    );
    // environment: missing files
    let missing = s.path("missing");
    expect_code(
        &mosaic(args!["fragment", "verify", frag, "--trust", missing]),
        2,
        "missing trust file",
    );
    let o = mosaic(args![
        "fragment",
        "build",
        missing,
        "-o",
        s.path("y.frag"),
        "--key",
        s.key
    ]);
    expect_code(&o, 2, "build of a missing directory");
    assert!(stderr(&o).contains("missing"), "{}", stderr(&o));
    let o = mosaic(args![
        "fragment",
        "build",
        s.src,
        "-o",
        s.path("y.frag"),
        "--key",
        missing
    ]);
    expect_code(&o, 2, "build with a missing key");
    // success
    expect_code(&s.verify(&frag), 0, "verify");
    expect_code(&mosaic(args!["--version"]), 0, "--version");
}

#[test]
fn source_date_epoch_sets_build_time_and_changes_bytes() {
    let s = Setup::new();
    let plain = s.build_ok("plain.frag", &[]);
    let plain2 = s.build_ok("plain2.frag", &["--name", "plain"]);
    assert!(
        fs::read(&plain).unwrap() == fs::read(&plain2).unwrap(),
        "two builds of the same tree differ"
    );
    assert_eq!(inspect_json(&plain)["build_time"], 0);

    let env = [("SOURCE_DATE_EPOCH", "1700000000")];
    let (dated, o) = s.build_env("dated.frag", &["--name", "plain"], &env);
    expect_code(&o, 0, "build with SOURCE_DATE_EPOCH");
    let v = inspect_json(&dated);
    assert_eq!(v["build_time"], 1_700_000_000u64);
    assert!(
        fs::read(&plain).unwrap() != fs::read(&dated).unwrap(),
        "SOURCE_DATE_EPOCH did not change the fragment"
    );
    let (dated2, _) = s.build_env("dated2.frag", &["--name", "plain"], &env);
    assert!(fs::read(&dated).unwrap() == fs::read(&dated2).unwrap());
    expect_code(&s.verify(&dated), 0, "verify of a dated build");
    let o = mosaic(args!["fragment", "inspect", dated]);
    assert!(
        stdout(&o).contains("2023-11-14 22:13:20 UTC"),
        "{}",
        stdout(&o)
    );

    let (_, o) = s.build_env("bad.frag", &[], &[("SOURCE_DATE_EPOCH", "yesterday")]);
    expect_code(&o, 2, "build with a non-numeric SOURCE_DATE_EPOCH");
    assert!(stderr(&o).contains("SOURCE_DATE_EPOCH"), "{}", stderr(&o));
}

fn run_demo(dir: &Path) -> std::process::Output {
    let o = mosaic(args!["demo", "--no-serve", "--dir", dir]);
    expect_code(&o, 0, "demo");
    assert!(stdout(&o).contains("verified"), "{}", stdout(&o));
    o
}

#[test]
fn demo_runs_and_reuses_its_key() {
    let d = tempdir();
    let dir = d.path().join("demo");
    run_demo(&dir);
    let key = fs::read(dir.join("lab.key")).unwrap();
    let public = fs::read(dir.join("lab.key.pub")).unwrap();
    for f in ["base.frag", "app.frag"] {
        let o = mosaic(args![
            "fragment",
            "verify",
            dir.join(f),
            "--trust",
            dir.join("lab.key.pub")
        ]);
        expect_code(&o, 0, &format!("verify demo {f}"));
    }
    run_demo(&dir);
    assert_eq!(
        fs::read(dir.join("lab.key")).unwrap(),
        key,
        "lab.key changed"
    );
    assert_eq!(
        fs::read(dir.join("lab.key.pub")).unwrap(),
        public,
        "lab.key.pub changed"
    );
}

#[test]
fn demo_rerun_gives_byte_identical_fragments() {
    let d = tempdir();
    let dir = d.path().join("demo");
    let names = ["base.frag", "app.frag"];
    let dump = |f: &str| stdout(&mosaic(args!["fragment", "inspect", dir.join(f), "--dump"]));
    run_demo(&dir);
    let first: Vec<(Vec<u8>, String)> = names
        .iter()
        .map(|f| (fs::read(dir.join(f)).unwrap(), dump(f)))
        .collect();
    run_demo(&dir);
    for (f, (bytes, text)) in names.iter().zip(&first) {
        if fs::read(dir.join(f)).unwrap() != *bytes {
            let now = dump(f);
            let diff: Vec<String> = text
                .lines()
                .zip(now.lines())
                .filter(|(a, b)| a != b && !a.contains("root=") && !a.contains("signature"))
                .take(4)
                .map(|(a, b)| format!("  before {a}\n  after  {b}"))
                .collect();
            panic!(
                "demo {f} differs after a re-run; first differing metadata lines:\n{}",
                diff.join("\n")
            );
        }
    }
}

//! `mosaic volume check` and the layout library behind it: manifest errors
//! with key and line, conflicts all listed at once, order independence,
//! directory security (owners agree or conflict, inheritance, root
//! default), hard links, refused fragments named, the fragment cache.

mod kit;

use fragments::{BuildOptions, Fragment, Kind, SigningKey, Trust};
use kit::{chmod, lchown, mosaic, write_keys};
use layout::merge::{merge, merge_report, ConflictKind, Merged, Node, XattrSource};
use layout::{FragmentCache, Manifest};
use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

// ---------------------------------------------------------------------------
// Helpers

struct Lab {
    dir: tempfile::TempDir,
    key: SigningKey,
}

impl Lab {
    fn new() -> Lab {
        let dir = kit::tempdir();
        let key = kit::key(11);
        write_keys(dir.path(), "lab.key", &key);
        Lab { dir, key }
    }
    fn path(&self) -> &Path {
        self.dir.path()
    }
    /// A source tree `NAME.tree` from `files` ("d/" a directory, "a=>b" a
    /// hard link to b, anything else a file holding its own path).
    fn tree(&self, name: &str, files: &[&str]) -> PathBuf {
        let tree = self.path().join(format!("{name}.tree"));
        fs::create_dir_all(&tree).unwrap();
        for f in files {
            if let Some((link, target)) = f.split_once("=>") {
                let l = tree.join(link);
                fs::create_dir_all(l.parent().unwrap()).unwrap();
                fs::hard_link(tree.join(target), l).unwrap();
            } else if let Some(d) = f.strip_suffix('/') {
                fs::create_dir_all(tree.join(d)).unwrap();
            } else {
                let p = tree.join(f);
                fs::create_dir_all(p.parent().unwrap()).unwrap();
                fs::write(p, f.as_bytes()).unwrap();
            }
        }
        tree
    }
    /// Builds `NAME.tree` into `NAME.frag` (owning `owns`, default all but /).
    fn build(&self, name: &str, owns: &[&str], key: &SigningKey) -> PathBuf {
        let out = self.path().join(format!("{name}.frag"));
        let opts = BuildOptions {
            name: name.into(),
            version: "1.0".into(),
            owns: owns.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        kit::build(&self.path().join(format!("{name}.tree")), &out, key, &opts);
        out
    }
    fn frag(&self, name: &str, files: &[&str], owns: &[&str]) -> PathBuf {
        self.tree(name, files);
        self.build(name, owns, &self.key)
    }
    fn open(&self, path: &Path) -> Arc<Fragment> {
        Arc::new(kit::open(path, &self.key))
    }
    /// Writes `NAME.toml` listing `frags` (file names in the lab dir).
    fn manifest(&self, name: &str, frags: &[&str], extra: &str) -> PathBuf {
        let list: Vec<String> = frags.iter().map(|f| format!("{f:?}")).collect();
        let text = format!(
            "name = \"root\"\nfragments = [{}]\ntrust = [\"lab.key.pub\"]\n{extra}",
            list.join(", ")
        );
        let p = self.path().join(format!("{name}.toml"));
        fs::write(&p, text).unwrap();
        p
    }
}

fn check(manifest: &Path, json: bool) -> (i32, String, String) {
    let mut args = vec![
        "volume".into(),
        "check".into(),
        manifest.as_os_str().to_owned(),
    ];
    if json {
        args.push("--json".into());
    }
    let out = mosaic(&args);
    (
        kit::code(&out),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn check_json(manifest: &Path) -> (i32, serde_json::Value) {
    let (code, stdout, stderr) = check(manifest, true);
    let v = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}\nstderr: {stderr}"));
    (code, v)
}

/// Every path of a merged tree with its node, breadth first.
fn paths(m: &Merged) -> Vec<(String, u32)> {
    let mut out = vec![("/".to_string(), 0u32)];
    let mut i = 0;
    while i < out.len() {
        let (p, n) = out[i].clone();
        i += 1;
        if m.nodes[n as usize].kind != Kind::Directory {
            continue;
        }
        for e in m.entries_of(n) {
            let base = if p == "/" { "" } else { p.as_str() };
            out.push((
                format!("{base}/{}", String::from_utf8_lossy(&e.name)),
                e.node,
            ));
        }
    }
    out
}

fn node<'a>(m: &'a Merged, path: &str) -> &'a Node {
    let all = paths(m);
    let n = all
        .iter()
        .find(|(p, _)| p == path)
        .unwrap_or_else(|| panic!("{path} not in the merged tree"))
        .1;
    &m.nodes[n as usize]
}

// ---------------------------------------------------------------------------
// Manifest errors

#[test]
fn manifest_errors_name_key_and_line() {
    let lab = Lab::new();
    lab.frag("base", &["etc/a"], &[]);
    let head = "name = \"root\"\nfragments = [\"base.frag\"]\ntrust = [\"lab.key.pub\"]\n";
    let cases: &[(&str, &str, &[&str])] = &[
        ("[filesystem]\nsize = \"1GiB\"\n", ":5:", &["size"]),
        (
            "[filesystem]\nfree = \"12XB\"\n",
            ":5:",
            &["filesystem.free", "12XB"],
        ),
        (
            "[filesystem]\nuuid = \"1234\"\n",
            ":5:",
            &["filesystem.uuid", "1234"],
        ),
        (
            "[filesystem]\ntype = \"xfs\"\n",
            ":5:",
            &["filesystem.type", "xfs"],
        ),
        (
            "[filesystem]\nlabel = \"a-label-of-17-byte\"\n",
            ":5:",
            &["filesystem.label"],
        ),
        ("[overlay]\nfile = \"x\"\n", ":5:", &["file"]),
    ];
    for (tail, line, needles) in cases {
        let m = lab.path().join("volume.toml");
        fs::write(&m, format!("{head}{tail}")).unwrap();
        let (code, _, err) = check(&m, false);
        assert_eq!(code, 1, "{tail}: {err}");
        assert!(
            err.contains(&format!("volume.toml{line}")),
            "{tail}: no line: {err}"
        );
        for n in *needles {
            assert!(err.contains(n), "{tail}: {n} not named: {err}");
        }
    }

    // A missing fragment file and a missing key: both named, with lines.
    let m = lab.path().join("volume.toml");
    fs::write(
        &m,
        "name = \"root\"\nfragments = [\n  \"base.frag\",\n  \"gone.frag\",\n]\ntrust = [\"lab.key.pub\", \"nokey.pub\"]\n",
    )
    .unwrap();
    let (code, _, err) = check(&m, false);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("volume.toml:4: fragments:"), "{err}");
    assert!(err.contains("gone.frag: no such file"), "{err}");
    assert!(err.contains("volume.toml:6: trust:"), "{err}");
    assert!(err.contains("nokey.pub: no such file"), "{err}");

    // Duplicates, empty lists.
    fs::write(
        &m,
        "name = \"root\"\nfragments = [\"base.frag\", \"./base.frag\"]\ntrust = []\n",
    )
    .unwrap();
    let (code, _, err) = check(&m, false);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("volume.toml:2: fragments:") && err.contains("twice"),
        "{err}"
    );
    assert!(err.contains("volume.toml:3: trust: at least one"), "{err}");

    // JSON mode still reports (ok false, errors listed).
    let (code, v) = check_json(&m);
    assert_eq!(code, 1);
    assert_eq!(v["ok"], false);
    assert_eq!(v["errors"].as_array().unwrap().len(), 2, "{v}");

    // A manifest path that does not exist is a usage error.
    let (code, _, err) = check(&lab.path().join("absent.toml"), false);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("absent.toml"), "{err}");
}

#[test]
fn good_manifest_reports_fragments_and_options() {
    let lab = Lab::new();
    lab.frag("base", &["etc/a", "usr/bin/x"], &[]);
    lab.frag("app", &["opt/app/run", "usr/bin/y"], &[]);
    let m = lab.manifest(
        "volume",
        &["base.frag", "app.frag"],
        "[filesystem]\ntype = \"ext4\"\nlabel = \"vol\"\nfree = \"1GiB\"\nuuid = \"01234567-89AB-cdef-0123-456789abcdef\"\n[overlay]\npath = \"root.overlay\"\n",
    );
    let man = Manifest::load(&m).unwrap();
    assert_eq!(man.filesystem.free, 1 << 30);
    assert_eq!(man.overlay, Some(lab.path().join("root.overlay")));

    let (code, out, err) = check(&m, false);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("base.frag") && out.contains("app.frag"),
        "{out}"
    );
    assert!(out.contains("conflicts  none"), "{out}");

    let (code, v) = check_json(&m);
    assert_eq!(code, 0);
    assert_eq!(v["ok"], true);
    assert_eq!(v["name"], "root");
    assert_eq!(v["filesystem"]["label"], "vol");
    assert_eq!(v["filesystem"]["free"], 1u64 << 30);
    assert_eq!(
        v["filesystem"]["uuid"],
        "01234567-89ab-cdef-0123-456789abcdef"
    );
    let frags = v["fragments"].as_array().unwrap();
    assert_eq!(frags.len(), 2);
    assert_eq!(frags[0]["name"], "base");
    assert_eq!(frags[0]["version"], "1.0");
    assert_eq!(
        frags[0]["signer"],
        fragments::keys::key_id(lab.key.verifying_key().as_bytes())
    );
    // / etc usr opt etc/a usr/bin opt/app usr/bin/x usr/bin/y opt/app/run
    assert_eq!(v["entries"], 9);
    assert_eq!(v["nodes"], 10);
    assert!(v["conflicts"].as_array().unwrap().is_empty());
}

// ---------------------------------------------------------------------------
// Conflicts

#[test]
fn conflicts_are_all_reported_at_once() {
    let lab = Lab::new();
    lab.frag("one", &["etc/a", "etc/c", "one-only"], &[]);
    lab.frag("two", &["etc/a", "etc/b", "two-only"], &[]);
    lab.frag("three", &["etc/b", "etc/c", "three-only"], &[]);
    let m = lab.manifest("volume", &["one.frag", "two.frag", "three.frag"], "");

    let (code, out, err) = check(&m, false);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("conflicts  3"), "{out}");
    for (path, a, b) in [
        ("/etc/a", "one", "two"),
        ("/etc/b", "two", "three"),
        ("/etc/c", "one", "three"),
    ] {
        let line = out
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{path}:")))
            .unwrap_or_else(|| panic!("{path} not listed: {out}"));
        for f in [a, b] {
            assert!(line.contains(&format!("{f}.frag")), "{line}");
            assert!(line.contains(&format!("fragment \"{f}\"")), "{line}");
        }
    }
    assert!(err.contains("3 conflicts"), "{err}");

    let (code, v) = check_json(&m);
    assert_eq!(code, 1);
    assert_eq!(v["ok"], false);
    let c = v["conflicts"].as_array().unwrap();
    assert_eq!(c.len(), 3, "{v}");
    let mut got: Vec<(String, Vec<String>)> = c
        .iter()
        .map(|c| {
            assert_eq!(c["kind"], "overlap");
            let mut f: Vec<String> = c["fragments"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| {
                    Path::new(s.as_str().unwrap())
                        .file_name()
                        .unwrap()
                        .to_string_lossy()
                        .into_owned()
                })
                .collect();
            f.sort();
            (c["path"].as_str().unwrap().to_string(), f)
        })
        .collect();
    got.sort();
    assert_eq!(
        got,
        vec![
            ("/etc/a".into(), vec!["one.frag".into(), "two.frag".into()]),
            (
                "/etc/b".into(),
                vec!["three.frag".into(), "two.frag".into()]
            ),
            (
                "/etc/c".into(),
                vec!["one.frag".into(), "three.frag".into()]
            ),
        ]
    );
    // The rest of the tree is still counted.
    // / has etc, one-only, two-only, three-only; etc has a, b, c.
    assert_eq!(v["entries"], 7);
}

#[test]
fn file_against_directory_and_conflicts_below_it() {
    let lab = Lab::new();
    let a = lab.open(&lab.frag("a", &["srv", "lib/x"], &[]));
    let b = lab.open(&lab.frag("b", &["srv/data/f", "lib/x/"], &[]));
    let c = lab.open(&lab.frag("c", &["srv/data/f"], &[]));
    let r = merge_report(vec![a, b, c]).unwrap();
    let mut got: Vec<(String, ConflictKind)> = r
        .conflicts
        .iter()
        .map(|c| (c.path_display(), c.kind))
        .collect();
    got.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(
        got,
        vec![
            ("/lib/x".into(), ConflictKind::Overlap),
            ("/srv".into(), ConflictKind::Overlap),
            ("/srv".into(), ConflictKind::Overlap),
            ("/srv/data/f".into(), ConflictKind::Overlap),
        ]
    );
}

#[test]
fn merge_does_not_depend_on_fragment_order() {
    let lab = Lab::new();
    let a = lab.frag(
        "a",
        &["etc/a", "usr/bin/a", "usr/share/doc/a/README", "x/"],
        &[],
    );
    let b = lab.frag(
        "b",
        &["etc/b", "usr/bin/b", "usr/share/doc/b/README", "y"],
        &[],
    );
    let c = lab.frag(
        "c",
        &[
            "etc/c",
            "usr/lib/c.so",
            "usr/share/doc/c/README",
            "y2",
            "z=>y2",
        ],
        &[],
    );
    let show = |m: &Merged| format!("{:?}\n{:?}", m.nodes, m.entries);
    let (fa, fb, fc) = (lab.open(&a), lab.open(&b), lab.open(&c));
    let m1 = merge(vec![fa.clone(), fb.clone(), fc.clone()]).unwrap();
    let m2 = merge(vec![fc.clone(), fb.clone(), fa.clone()]).unwrap();
    let m3 = merge(vec![fb, fa, fc]).unwrap();
    assert_eq!(show(&m1), show(&m2));
    assert_eq!(show(&m1), show(&m3));
    let ids: Vec<[u8; 32]> = m1.fragments.iter().map(|f| f.id()).collect();
    let ids2: Vec<[u8; 32]> = m2.fragments.iter().map(|f| f.id()).collect();
    assert_eq!(ids, ids2);

    // Through the CLI: same report whatever the manifest's order (but the
    // fragment list, which follows the manifest).
    let m1 = lab.manifest("one", &["a.frag", "b.frag", "c.frag"], "");
    let m2 = lab.manifest("two", &["c.frag", "a.frag", "b.frag"], "");
    let (c1, v1) = check_json(&m1);
    let (c2, v2) = check_json(&m2);
    assert_eq!((c1, c2), (0, 0));
    assert_eq!(v1["entries"], v2["entries"]);
    assert_eq!(v1["nodes"], v2["nodes"]);
}

// ---------------------------------------------------------------------------
// Security

/// Builds `name` with its tree's `srv` set to (perm, uid, gid).
fn owned_srv(lab: &Lab, name: &str, perm: u32, uid: u32, gid: u32, files: &[&str]) -> PathBuf {
    let tree = lab.tree(name, files);
    fs::create_dir_all(tree.join("srv")).unwrap();
    chmod(&tree.join("srv"), perm);
    lchown(&tree.join("srv"), uid, gid);
    lab.build(name, &["/srv"], &lab.key)
}

#[test]
fn owners_that_agree_merge_owners_that_differ_conflict() {
    let lab = Lab::new();
    let a = owned_srv(&lab, "a", 0o750, 10, 20, &["srv/a"]);
    let b = owned_srv(&lab, "b", 0o750, 10, 20, &["srv/b"]);
    let c = owned_srv(&lab, "c", 0o755, 10, 21, &["srv/c"]);
    for p in [&a, &b] {
        xattr::set(
            lab.path().join(format!(
                "{}.tree/srv",
                p.file_stem().unwrap().to_str().unwrap()
            )),
            "user.tag",
            b"same",
        )
        .unwrap();
    }
    // Rebuild a and b with the xattr.
    let a = lab.build("a", &["/srv"], &lab.key);
    let b = lab.build("b", &["/srv"], &lab.key);
    let (fa, fb, fc) = (lab.open(&a), lab.open(&b), lab.open(&c));

    let m = merge(vec![fa.clone(), fb.clone()]).unwrap();
    let srv = node(&m, "/srv");
    assert_eq!((srv.perm, srv.uid, srv.gid), (0o750, 10, 20));
    let n = paths(&m).iter().find(|p| p.0 == "/srv").unwrap().1;
    assert_eq!(
        m.xattrs_of(n),
        vec![(b"user.tag".as_slice(), b"same".as_slice())]
    );

    // c differs in mode and owner (and has no xattr): one conflict with
    // each of a and b, whatever the sorted order.
    let r = merge_report(vec![fa.clone(), fb.clone(), fc]).unwrap();
    assert_eq!(r.conflicts.len(), 2, "{:?}", r.conflicts);
    for k in &r.conflicts {
        let mut names = [k.a.name.as_str(), k.b.name.as_str()];
        names.sort();
        assert!(names == ["a", "c"] || names == ["b", "c"], "{k}");
    }
    let r = merge_report(vec![fa.clone(), lab.open(&c)]).unwrap();
    assert_eq!(r.conflicts.len(), 1);
    let k = &r.conflicts[0];
    assert_eq!(k.kind, ConflictKind::Security);
    assert_eq!(k.path, b"/srv");
    for w in ["mode", "owner", "xattrs"] {
        assert!(k.detail.contains(w), "{}", k.detail);
    }

    // Same modes, different xattr values: a conflict too.
    xattr::set(lab.path().join("b.tree/srv"), "user.tag", b"other").unwrap();
    let b2 = lab.build("b", &["/srv"], &lab.key);
    let r = merge_report(vec![fa, lab.open(&b2)]).unwrap();
    assert_eq!(r.conflicts.len(), 1);
    assert_eq!(r.conflicts[0].detail, "xattrs differ");

    // Through the CLI: exit 1, both fragments named.
    let m = lab.manifest("volume", &["a.frag", "c.frag"], "");
    let (code, v) = check_json(&m);
    assert_eq!(code, 1);
    assert_eq!(v["conflicts"][0]["kind"], "security");
    assert_eq!(v["conflicts"][0]["path"], "/srv");
}

#[test]
fn unowned_directories_inherit_from_the_nearest_owned_ancestor() {
    let lab = Lab::new();
    // a owns /srv (0710 5:6, an xattr); b provides /srv/x/y/f owning only /opt.
    let ta = lab.tree("a", &["srv/"]);
    chmod(&ta.join("srv"), 0o710);
    lchown(&ta.join("srv"), 5, 6);
    xattr::set(ta.join("srv"), "user.policy", b"inherit-me").unwrap();
    let a = lab.build("a", &["/srv"], &lab.key);
    let tb = lab.tree("b", &["srv/x/y/f", "opt/"]);
    chmod(&tb.join("srv/x"), 0o777);
    lchown(&tb.join("srv/x"), 99, 99);
    let b = lab.build("b", &["/opt"], &lab.key);
    let (fa, fb) = (lab.open(&a), lab.open(&b));
    let m = merge(vec![fa, fb]).unwrap();
    let a_idx = m
        .fragments
        .iter()
        .position(|f| f.header().name == "a")
        .unwrap() as u16;
    let srv_ino = m.fragments[a_idx as usize]
        .metadata()
        .lookup(b"/srv")
        .unwrap();
    for p in ["/srv", "/srv/x", "/srv/x/y"] {
        let n = node(&m, p);
        assert_eq!((n.perm, n.uid, n.gid), (0o710, 5, 6), "{p}");
        assert_eq!(
            n.xattrs,
            XattrSource::Inode {
                frag: a_idx,
                ino: srv_ino
            },
            "{p}"
        );
    }
    let all = paths(&m);
    let y = all.iter().find(|p| p.0 == "/srv/x/y").unwrap().1;
    assert_eq!(
        m.xattrs_of(y),
        vec![(b"user.policy".as_slice(), b"inherit-me".as_slice())]
    );
    // /opt is b's own; the file keeps its own metadata.
    assert_eq!(node(&m, "/opt").perm, 0o755);
    assert_eq!(node(&m, "/srv/x/y/f").kind, Kind::Regular);
}

#[test]
fn unowned_root_is_root_0755_and_an_owned_root_is_its_owners() {
    let lab = Lab::new();
    let ta = lab.tree("a", &["etc/a"]);
    chmod(&ta, 0o700);
    lchown(&ta, 42, 43);
    xattr::set(&ta, "user.root", b"x").unwrap();
    let a = lab.build("a", &[], &lab.key);
    let m = merge(vec![lab.open(&a)]).unwrap();
    let root = &m.nodes[0];
    assert_eq!((root.perm, root.uid, root.gid), (0o755, 0, 0));
    assert_eq!(root.xattrs, XattrSource::None);
    assert_eq!(root.kind, Kind::Directory);
    assert_eq!(root.parent, 0);
    // /etc is owned by a (default: everything but /): its own mode.
    assert_eq!(node(&m, "/etc").perm, 0o755);

    let a_owns_root = lab.build("a", &["/"], &lab.key);
    let m = merge(vec![lab.open(&a_owns_root)]).unwrap();
    let root = &m.nodes[0];
    assert_eq!((root.perm, root.uid, root.gid), (0o700, 42, 43));
    assert_eq!(
        m.xattrs_of(0),
        vec![(b"user.root".as_slice(), b"x".as_slice())]
    );
}

// ---------------------------------------------------------------------------
// Hard links

#[test]
fn hard_links_become_one_node() {
    let lab = Lab::new();
    let a = lab.frag("a", &["bin/tool", "sbin/tool=>bin/tool", "bin/other"], &[]);
    let b = lab.frag(
        "b",
        &["bin/b", "usr/x", "usr/y=>usr/x", "usr/z=>usr/x"],
        &[],
    );
    let m = merge(vec![lab.open(&a), lab.open(&b)]).unwrap();
    let all = paths(&m);
    let id = |p: &str| all.iter().find(|x| x.0 == p).unwrap().1;
    assert_eq!(id("/bin/tool"), id("/sbin/tool"));
    assert_eq!(node(&m, "/bin/tool").nlink, 2);
    assert_eq!(node(&m, "/bin/other").nlink, 1);
    assert_eq!(id("/usr/x"), id("/usr/z"));
    assert_eq!(node(&m, "/usr/y").nlink, 3);
    // One node per inode: 1 root + bin sbin usr + tool other b + x.
    assert_eq!(m.nodes.len(), 8);
    assert_eq!(m.entries.len(), 10);
    // Directory link counts: 2 + subdirectories.
    assert_eq!(m.nodes[0].nlink, 5);
    assert_eq!(node(&m, "/bin").nlink, 2);
}

// ---------------------------------------------------------------------------
// Refused fragments

#[test]
fn untrusted_and_corrupt_fragments_are_refused_by_name() {
    let lab = Lab::new();
    lab.frag("good", &["good"], &[]);
    lab.tree("stranger", &["s"]);
    let other = kit::key(99);
    lab.build("stranger", &[], &other);
    let bad = lab.frag("bad", &["bad/file"], &[]);

    // Untrusted alone.
    let m = lab.manifest("untrusted", &["good.frag", "stranger.frag"], "");
    let (code, _, err) = check(&m, false);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("stranger.frag") && err.contains("untrusted"),
        "{err}"
    );
    assert!(!err.contains("good.frag"), "{err}");

    // Corrupt: flip a byte of the metadata region (the inode table).
    let f = lab.open(&bad);
    let meta = f
        .header()
        .regions
        .iter()
        .find(|r| r.kind == fragments::RegionKind::Metadata)
        .expect("a metadata region")
        .file_offset;
    drop(f);
    let file = fs::OpenOptions::new()
        .write(true)
        .read(true)
        .open(&bad)
        .unwrap();
    let mut b = [0u8; 1];
    file.read_exact_at(&mut b, meta + 70).unwrap();
    file.write_all_at(&[b[0] ^ 0x40], meta + 70).unwrap();
    drop(file);
    assert!(Fragment::open(&bad, Trust::Keys(&[lab.key.verifying_key()])).is_err());

    let m = lab.manifest("corrupt", &["good.frag", "bad.frag"], "");
    let (code, _, err) = check(&m, false);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("bad.frag"), "{err}");

    // Both at once: both named.
    let m = lab.manifest("both", &["stranger.frag", "good.frag", "bad.frag"], "");
    let (code, v) = check_json(&m);
    assert_eq!(code, 1);
    let errors: Vec<String> = v["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap().to_string())
        .collect();
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(errors[0].contains("stranger.frag"), "{errors:?}");
    assert!(errors[1].contains("bad.frag"), "{errors:?}");

    // A trust key that is not a key: named, exit 2 (the operator's file).
    fs::write(lab.path().join("junk.pub"), "not a key").unwrap();
    let p = lab.path().join("junk.toml");
    fs::write(
        &p,
        "name = \"r\"\nfragments = [\"good.frag\"]\ntrust = [\"junk.pub\"]\n",
    )
    .unwrap();
    let (code, _, err) = check(&p, false);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("junk.pub"), "{err}");
}

#[test]
fn the_same_fragment_listed_under_two_names_is_refused() {
    let lab = Lab::new();
    let a = lab.frag("a", &["x"], &[]);
    fs::copy(&a, lab.path().join("a-copy.frag")).unwrap();
    let m = lab.manifest("volume", &["a.frag", "a-copy.frag"], "");
    let (code, _, err) = check(&m, false);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("same fragment"), "{err}");
}

// ---------------------------------------------------------------------------
// The fragment cache

#[test]
fn one_open_per_file_across_manifests() {
    let lab = Lab::new();
    lab.frag("base", &["etc/a"], &[]);
    lab.frag("app", &["opt/app"], &[]);
    lab.frag("tool", &["opt/tool"], &[]);
    fs::create_dir_all(lab.path().join("sub")).unwrap();
    let m1 = Manifest::load(lab.manifest("one", &["base.frag", "app.frag"], "")).unwrap();
    let p2 = lab.path().join("sub/two.toml");
    fs::write(
        &p2,
        "name = \"two\"\nfragments = [\"../base.frag\", \"../tool.frag\"]\ntrust = [\"../lab.key.pub\"]\n",
    )
    .unwrap();
    let m2 = Manifest::load(&p2).unwrap();
    let cache = FragmentCache::new();
    let f1 = cache.open_manifest(&m1).unwrap();
    let f2 = cache.open_manifest(&m2).unwrap();
    assert!(Arc::ptr_eq(&f1[0], &f2[0]), "base.frag opened twice");
    assert_eq!(cache.len(), 3);

    // A cached fragment is still refused to a caller that does not trust it.
    let stranger = kit::key(77);
    let e = cache
        .open(&lab.path().join("base.frag"), &[stranger.verifying_key()])
        .unwrap_err();
    assert!(matches!(e, fragments::Error::Untrusted { .. }), "{e}");
}

// ---------------------------------------------------------------------------
// Scale (run with --ignored --release; prints timings)

#[test]
#[ignore]
fn merge_at_scale() {
    let files: usize = std::env::var("MERGE_FILES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200_000);
    let lab = Lab::new();
    let t0 = std::time::Instant::now();
    let mut frags = Vec::new();
    for f in 0..4 {
        let tree = lab.path().join(format!("f{f}.tree"));
        // Shared directories across fragments, distinct files.
        for i in 0..files / 4 {
            let d = tree.join(format!("d{:03}/s{:02}", i % 500, i % 37));
            if i < 500 * 37 {
                fs::create_dir_all(&d).unwrap();
            }
            fs::write(d.join(format!("frag{f}-file{i}")), b"").unwrap();
        }
        frags.push(lab.build(&format!("f{f}"), &[], &lab.key));
    }
    eprintln!(
        "built 4 fragments of {} files in {:?}",
        files / 4,
        t0.elapsed()
    );
    let t = std::time::Instant::now();
    let opened: Vec<_> = frags.iter().map(|p| lab.open(p)).collect();
    eprintln!("opened in {:?}", t.elapsed());
    let rss = || {
        fs::read_to_string("/proc/self/status")
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let before = rss();
    let t = std::time::Instant::now();
    let m = merge(opened.clone()).unwrap();
    let el = t.elapsed();
    eprintln!(
        "merged {} nodes, {} entries in {:?}; resident memory +{} MiB",
        m.nodes.len(),
        m.entries.len(),
        el,
        rss().saturating_sub(before) / 1024
    );
    assert!(m.entries.len() >= files);
}

//! Unit tests of the merge (`merge.rs`).
use super::*;
use fragments::{BuildOptions, SigningKey, Trust};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Builds a fragment from `files` (paths ending in `/` are directories;
/// `a=>b` makes `a` a hard link to `b`), owning `owns`.
fn frag(dir: &Path, name: &str, files: &[&str], owns: &[&str]) -> Arc<Fragment> {
    let tree = dir.join(format!("{name}.tree"));
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
    let out = dir.join(format!("{name}.frag"));
    let key = SigningKey::from_bytes(&[9; 32]);
    let opts = BuildOptions {
        name: name.into(),
        owns: owns.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    };
    fragments::build(&tree, &out, &key, &opts, &fragments::NoProgress).unwrap();
    Arc::new(Fragment::open(&out, Trust::Keys(&[key.verifying_key()])).unwrap())
}

/// Every path of the merged tree with its node, breadth first.
fn paths(m: &Merged) -> Vec<(String, u32)> {
    let mut out = vec![("/".to_string(), 0)];
    let mut i = 0;
    while i < out.len() {
        let (p, n) = out[i].clone();
        i += 1;
        if m.nodes[n as usize].kind != Kind::Directory {
            continue;
        }
        for e in m.entries_of(n) {
            let base = if p == "/" { String::new() } else { p.clone() };
            out.push((
                format!("{base}/{}", String::from_utf8_lossy(&e.name)),
                e.node,
            ));
        }
    }
    out
}

fn node<'a>(m: &'a Merged, path: &str) -> &'a Node {
    let n = paths(m)
        .into_iter()
        .find(|(p, _)| p == path)
        .unwrap_or_else(|| panic!("{path} missing"))
        .1;
    &m.nodes[n as usize]
}

/// Checks the interface invariants of a merged tree.
fn check_invariants(m: &Merged) {
    let mut seen_dir_entries = 0u32;
    let mut next_node = 1u32;
    let mut names_of = vec![0u32; m.nodes.len()];
    for (i, n) in m.nodes.iter().enumerate() {
        if n.kind != Kind::Directory {
            assert!(n.source.is_some());
            continue;
        }
        assert_eq!(n.first_entry, seen_dir_entries, "node {i}");
        seen_dir_entries += n.entry_count;
        let es = m.entries_of(i as u32);
        assert!(es.windows(2).all(|w| w[0].name < w[1].name));
        let mut subdirs = 0;
        for e in es {
            let c = &m.nodes[e.node as usize];
            names_of[e.node as usize] += 1;
            if c.kind == Kind::Directory {
                subdirs += 1;
                assert_eq!(c.parent, i as u32);
            }
            // Breadth first: a node first seen gets the next number.
            if e.node >= next_node {
                assert_eq!(e.node, next_node);
                next_node += 1;
                assert_eq!(c.parent, i as u32);
            }
        }
        assert_eq!(n.nlink, 2 + subdirs);
    }
    assert_eq!(seen_dir_entries as usize, m.entries.len());
    assert_eq!(next_node as usize, m.nodes.len());
    for (i, n) in m.nodes.iter().enumerate().skip(1) {
        if n.kind != Kind::Directory {
            assert_eq!(n.nlink, names_of[i]);
        } else {
            assert_eq!(names_of[i], 1);
        }
    }
}

#[test]
fn disjoint_files_shared_directories_any_order() {
    let t = tempfile::tempdir().unwrap();
    let a = frag(t.path(), "a", &["etc/a.conf", "usr/bin/a", "x/"], &[]);
    let b = frag(
        t.path(),
        "b",
        &["etc/b.conf", "usr/lib/b.so", "usr/bin/b"],
        &[],
    );
    let c = frag(t.path(), "c", &["opt/c/c", "usr/bin/c"], &[]);
    let m1 = merge(vec![a.clone(), b.clone(), c.clone()]).unwrap();
    let m2 = merge(vec![c, a, b]).unwrap();
    check_invariants(&m1);
    let show = |m: &Merged| format!("{:?}{:?}", m.nodes, m.entries);
    assert_eq!(show(&m1), show(&m2));
    let got: Vec<String> = paths(&m1).into_iter().map(|p| p.0).collect();
    assert_eq!(
        got,
        [
            "/",
            "/etc",
            "/opt",
            "/usr",
            "/x",
            "/etc/a.conf",
            "/etc/b.conf",
            "/opt/c",
            "/usr/bin",
            "/usr/lib",
            "/opt/c/c",
            "/usr/bin/a",
            "/usr/bin/b",
            "/usr/bin/c",
            "/usr/lib/b.so"
        ]
    );
    // Content comes from the providing fragment.
    let n = node(&m1, "/usr/bin/b");
    let (f, ino) = n.source.unwrap();
    let fr = &m1.fragments[f as usize];
    assert_eq!(fr.header().name, "b");
    assert_eq!(fr.metadata().path_of(ino), b"/usr/bin/b");
    // Fragments sorted by id.
    assert!(m1.fragments.windows(2).all(|w| w[0].id() < w[1].id()));
}

#[test]
fn every_conflict_is_found_with_paths() {
    let t = tempfile::tempdir().unwrap();
    let a = frag(t.path(), "a", &["d/e/f/same", "d/x", "top", "ok/a"], &[]);
    let b = frag(
        t.path(),
        "b",
        &["d/e/f/same", "d/x/", "d/x/under", "ok/b"],
        &[],
    );
    let c = frag(
        t.path(),
        "c",
        &["d/e/f/same", "d/x/", "d/x/under", "top/"],
        &[],
    );
    let r = merge_report(vec![a, b, c]).unwrap();
    check_invariants(&r.merged);
    let mut got: Vec<(String, String, String)> = r
        .conflicts
        .iter()
        .map(|c| (c.path_display(), c.a.name.clone(), c.b.name.clone()))
        .collect();
    // Sides are in sorted-fragment order; normalize for the check.
    for g in &mut got {
        if g.1 > g.2 {
            std::mem::swap(&mut g.1, &mut g.2);
        }
    }
    got.sort();
    let want = [
        ("/d/e/f/same", "a", "b"),
        ("/d/e/f/same", "a", "c"),
        ("/d/e/f/same", "b", "c"),
        ("/d/x", "a", "b"),
        ("/d/x", "a", "c"),
        ("/d/x/under", "b", "c"),
        ("/top", "a", "c"),
    ];
    let want: Vec<(String, String, String)> = want
        .iter()
        .map(|(p, a, b)| (p.to_string(), a.to_string(), b.to_string()))
        .collect();
    assert_eq!(got, want);
    // The report tree keeps directories where they clash with files.
    assert_eq!(node(&r.merged, "/top").kind, Kind::Directory);
    assert_eq!(node(&r.merged, "/d/x").kind, Kind::Directory);
    // merge() refuses with all of them.
    let Err(Error::Conflicts(c)) = merge(r.merged.fragments.clone()) else {
        panic!("conflicts expected")
    };
    assert_eq!(c.len(), 7);
    let text = Error::Conflicts(c).to_string();
    assert!(text.starts_with("7 conflicts"), "{text}");
    assert!(text.contains("/d/x: provided by both "), "{text}");
    assert!(text.contains("(fragment \"a\", file)"), "{text}");
}

#[test]
fn hard_links_share_a_node() {
    let t = tempfile::tempdir().unwrap();
    let a = frag(
        t.path(),
        "a",
        &["x/one", "y/two=>x/one", "y/three=>x/one", "z"],
        &[],
    );
    let b = frag(t.path(), "b", &["x/other"], &[]);
    let m = merge(vec![a, b]).unwrap();
    check_invariants(&m);
    let all = paths(&m);
    let id = |p: &str| all.iter().find(|x| x.0 == p).unwrap().1;
    assert_eq!(id("/x/one"), id("/y/two"));
    assert_eq!(id("/x/one"), id("/y/three"));
    let n = node(&m, "/x/one");
    assert_eq!(n.nlink, 3);
    assert_eq!(n.parent, id("/x"));
    assert_eq!(node(&m, "/z").nlink, 1);
    assert_eq!(node(&m, "/").nlink, 4);
}

#[test]
fn security_top_down() {
    let t = tempfile::tempdir().unwrap();
    let chmod =
        |p: &Path, mode: u32| fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
    // a owns /srv (0750, 7:8) but not /srv/sub; b provides both, owns nothing.
    let ta = t.path().join("a.tree");
    fs::create_dir_all(ta.join("srv/sub")).unwrap();
    chmod(&ta.join("srv"), 0o750);
    chmod(&ta.join("srv/sub"), 0o700);
    std::os::unix::fs::chown(ta.join("srv"), Some(7), Some(8)).unwrap();
    let a = frag(t.path(), "a", &["srv/sub/a"], &["/srv"]);
    // /srv/sub is owned by a too (owns covers the subtree): take it off
    // by building b, which owns only /other.
    let tb = t.path().join("b.tree");
    fs::create_dir_all(tb.join("srv/sub/deeper")).unwrap();
    fs::create_dir_all(tb.join("other")).unwrap();
    chmod(&tb.join("srv"), 0o777);
    chmod(&tb.join("srv/sub/deeper"), 0o777);
    let b = frag(t.path(), "b", &["srv/sub/deeper/b"], &["/other"]);
    let m = merge(vec![a.clone(), b.clone()]).unwrap();
    check_invariants(&m);
    let root = node(&m, "/");
    assert_eq!((root.perm, root.uid, root.gid), (0o755, 0, 0));
    assert_eq!(root.xattrs, XattrSource::None);
    let srv = node(&m, "/srv");
    assert_eq!((srv.perm, srv.uid, srv.gid), (0o750, 7, 8));
    // Owned by a (owns covers the subtree): its own mode.
    let sub = node(&m, "/srv/sub");
    assert_eq!(sub.perm, 0o700);
    // Provided only by b, which does not own it: inherits from /srv/sub.
    let deeper = node(&m, "/srv/sub/deeper");
    assert_eq!((deeper.perm, deeper.uid, deeper.gid), (0o700, 0, 0));

    // Two owners that agree.
    let c = frag(t.path(), "c", &["srv/sub/c"], &["/srv"]);
    let tc = t.path().join("c.tree");
    chmod(&tc.join("srv"), 0o750);
    chmod(&tc.join("srv/sub"), 0o700);
    std::os::unix::fs::chown(tc.join("srv"), Some(7), Some(8)).unwrap();
    let c = {
        drop(c);
        let out = t.path().join("c.frag");
        let key = SigningKey::from_bytes(&[9; 32]);
        let opts = BuildOptions {
            name: "c".into(),
            owns: vec!["/srv".into()],
            ..Default::default()
        };
        fragments::build(&tc, &out, &key, &opts, &fragments::NoProgress).unwrap();
        Arc::new(Fragment::open(&out, Trust::Keys(&[key.verifying_key()])).unwrap())
    };
    let m = merge(vec![a.clone(), c.clone(), b.clone()]).unwrap();
    assert_eq!(node(&m, "/srv").perm, 0o750);

    // Two owners that differ: one conflict per differing directory.
    chmod(&tc.join("srv"), 0o755);
    let out = t.path().join("c2.frag");
    let key = SigningKey::from_bytes(&[9; 32]);
    let opts = BuildOptions {
        name: "c2".into(),
        owns: vec!["/srv".into()],
        ..Default::default()
    };
    fragments::build(&tc, &out, &key, &opts, &fragments::NoProgress).unwrap();
    let c2 = Arc::new(Fragment::open(&out, Trust::Keys(&[key.verifying_key()])).unwrap());
    let r = merge_report(vec![a, c2, b]).unwrap();
    assert_eq!(r.conflicts.len(), 1, "{:?}", r.conflicts);
    let c = &r.conflicts[0];
    assert_eq!(c.kind, ConflictKind::Security);
    assert_eq!(c.path, b"/srv");
    assert!(c.detail.contains("mode"), "{}", c.detail);
}

#[test]
fn no_fragments_is_an_empty_root() {
    let m = merge(Vec::new()).unwrap();
    assert_eq!(m.nodes.len(), 1);
    assert!(m.entries.is_empty());
    let r = &m.nodes[0];
    assert_eq!((r.perm, r.uid, r.gid, r.nlink), (0o755, 0, 0, 2));
    assert_eq!(r.mtime, Timestamp::default());
}

#[test]
fn same_fragment_twice_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let a = frag(t.path(), "a", &["f"], &[]);
    let copy = t.path().join("copy.frag");
    fs::copy(a.path(), &copy).unwrap();
    let key = SigningKey::from_bytes(&[9; 32]);
    let b = Arc::new(Fragment::open(&copy, Trust::Keys(&[key.verifying_key()])).unwrap());
    assert!(matches!(merge(vec![a, b]), Err(Error::SameFragment { .. })));
}

#[test]
fn directory_mtime_is_the_newest() {
    let t = tempfile::tempdir().unwrap();
    let set = |p: &Path, s: u64| {
        let f = fs::File::open(p).unwrap();
        f.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(s))
            .unwrap();
    };
    for (n, s) in [("a", 1000u64), ("b", 3000), ("c", 2000)] {
        let tree = t.path().join(format!("{n}.tree"));
        fs::create_dir_all(tree.join("d")).unwrap();
        fs::write(tree.join("d").join(n), b"x").unwrap();
        set(&tree.join("d"), s);
        set(&tree, s + 1);
    }
    let fs_: Vec<_> = ["a", "b", "c"]
        .iter()
        .map(|n| frag(t.path(), n, &[], &[]))
        .collect();
    let m = merge(fs_).unwrap();
    assert_eq!(node(&m, "/d").mtime.sec, 3000);
    assert_eq!(node(&m, "/").mtime.sec, 3001);
}

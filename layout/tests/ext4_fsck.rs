//! The generated ext4 image judged by e2fsck, on single-fragment volumes
//! (the merge has its own tests; here the tree maps 1:1 to a fragment).

use fragments::{BuildOptions, Fragment, Kind, SigningKey, Trust};
use layout::ext4::{export, Ext4Options, Image};
use layout::merge::{Entry, Merged, Node, XattrSource};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

fn single(frag: Fragment) -> Merged {
    let m = frag.metadata();
    let mut nodes = Vec::new();
    for (i, ino) in m.inodes.iter().enumerate() {
        let (first_entry, entry_count) = match &ino.body {
            fragments::Body::Directory { entries } => (entries.start, entries.end - entries.start),
            _ => (0, 0),
        };
        let root_default = i == 0 && !ino.owns_security;
        nodes.push(Node {
            kind: ino.kind,
            perm: if root_default { 0o755 } else { ino.perm },
            uid: if root_default { 0 } else { ino.uid },
            gid: if root_default { 0 } else { ino.gid },
            mtime: ino.mtime,
            xattrs: if root_default || ino.xattrs.is_empty() {
                XattrSource::None
            } else {
                XattrSource::Inode {
                    frag: 0,
                    ino: i as u32,
                }
            },
            source: if ino.kind == Kind::Directory {
                None
            } else {
                Some((0, i as u32))
            },
            first_entry,
            entry_count,
            nlink: m.nlink[i],
            parent: m.parent[i],
        });
    }
    let entries = m
        .dentries
        .iter()
        .map(|d| Entry {
            name: m.name(d).to_vec(),
            node: d.inode,
        })
        .collect();
    Merged {
        fragments: vec![Arc::new(frag)],
        nodes,
        entries,
    }
}

fn fsck(img: &Path) -> (bool, String) {
    let out = Command::new("e2fsck")
        .args(["-fn"])
        .arg(img)
        .output()
        .expect("e2fsck (e2fsprogs) must be installed");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let noise = text
        .lines()
        .filter(|l| {
            !(l.starts_with("Pass ")
                || l.starts_with("e2fsck ")
                || l.contains("non-contiguous")
                || l.trim().is_empty())
        })
        .count();
    (out.status.success() && noise == 0, text)
}

fn build_image(tree: &Path, dir: &Path, free: u64) -> std::path::PathBuf {
    let key = SigningKey::from_bytes(&[5; 32]);
    let frag_path = dir.join("t.frag");
    fragments::build(
        tree,
        &frag_path,
        &key,
        &BuildOptions::default(),
        &fragments::NoProgress,
    )
    .unwrap();
    let frag = Fragment::open(&frag_path, Trust::Keys(&[key.verifying_key()])).unwrap();
    let merged = single(frag);
    let img = Image::build(
        &merged,
        &Ext4Options {
            label: "test".into(),
            free_bytes: free,
            uuid: None,
        },
    )
    .unwrap();
    let out = dir.join("t.img");
    let f = std::fs::File::create(&out).unwrap();
    export::write_image(&merged, &img, &f, &|_| {}).unwrap();
    out
}

#[test]
fn small_tree_is_clean() {
    let t = tempfile::tempdir().unwrap();
    let tree = t.path().join("tree");
    std::fs::create_dir_all(tree.join("etc/sub")).unwrap();
    std::fs::write(tree.join("etc/hello"), b"hello\n").unwrap();
    std::fs::write(tree.join("etc/sub/big"), vec![7u8; 100_000]).unwrap();
    std::os::unix::fs::symlink("hello", tree.join("etc/link")).unwrap();
    std::os::unix::fs::symlink("x".repeat(100), tree.join("etc/longlink")).unwrap();
    let img = build_image(&tree, t.path(), 16 << 20);
    let (ok, text) = fsck(&img);
    assert!(ok, "{text}");
}

//! Unit tests of the metadata tables (`meta.rs`).
use super::*;
use crate::format::{Encoding, RegionEntry, RegionKind};

fn regions() -> Vec<RegionEntry> {
    vec![
        RegionEntry {
            kind: RegionKind::Data,
            encoding: Encoding::Raw,
            file_offset: 4096,
            stored_len: 8192,
            logical_len: 8192,
            hash_index: 0,
            root: [0; 32],
        },
        RegionEntry {
            kind: RegionKind::Small,
            encoding: Encoding::Raw,
            file_offset: 12288,
            stored_len: 4096,
            logical_len: 10,
            hash_index: 2,
            root: [0; 32],
        },
    ]
}

/// / (dir) -> "a" (file, 10 bytes small), "d" (dir) -> "b" (hard link to a)
fn tiny() -> Metadata {
    let strings = b"adb".to_vec();
    let s = |off, len| StrRef { off, len };
    let t = Timestamp { sec: 1, nsec: 2 };
    Metadata {
        inodes: vec![
            Inode {
                kind: Kind::Directory,
                owns_security: false,
                perm: 0o755,
                uid: 0,
                gid: 0,
                mtime: t,
                xattrs: 0..0,
                body: Body::Directory { entries: 0..2 },
            },
            Inode {
                kind: Kind::Regular,
                owns_security: true,
                perm: 0o644,
                uid: 1,
                gid: 2,
                mtime: t,
                xattrs: 0..0,
                body: Body::Regular {
                    size: 10,
                    extents: 0..1,
                },
            },
            Inode {
                kind: Kind::Directory,
                owns_security: true,
                perm: 0o700,
                uid: 0,
                gid: 0,
                mtime: t,
                xattrs: 0..0,
                body: Body::Directory { entries: 2..3 },
            },
        ],
        dentries: vec![
            Dentry {
                name: s(0, 1),
                inode: 1,
            },
            Dentry {
                name: s(1, 1),
                inode: 2,
            },
            Dentry {
                name: s(2, 1),
                inode: 1,
            },
        ],
        extents: vec![Extent {
            file_offset: 0,
            region: 1,
            region_offset: 0,
            len: 10,
        }],
        xattrs: vec![],
        strings,
        nlink: vec![],
        parent: vec![],
        first_dentry: vec![],
    }
}

#[test]
fn round_trip_derives_links_and_paths() {
    let m = tiny();
    let b = m.encode();
    let d = Metadata::decode(&b, &regions(), 3, 3).unwrap();
    assert_eq!(d.inodes, m.inodes);
    assert_eq!(d.nlink, vec![3, 2, 2]);
    assert_eq!(d.lookup(b"/d/b"), Some(1));
    assert_eq!(d.path_of(2), b"/d");
    assert_eq!(d.paths_of(1), vec![b"/a".to_vec(), b"/d/b".to_vec()]);
}

#[test]
fn rejects_bad_names_and_cycles() {
    let good = tiny().encode();
    let dent = META_HEADER + 3 * INODE_SIZE;
    // Second dentry points back at the root.
    let mut b = good.clone();
    b[dent + 16 + 8] = 0;
    assert!(Metadata::decode(&b, &regions(), 3, 3).is_err());
    // Name "a" -> "/"
    let mut b = good.clone();
    let n = b.len();
    b[n - 3] = b'/';
    assert!(Metadata::decode(&b, &regions(), 3, 3)
        .unwrap_err()
        .what
        .contains("invalid name"));
    // Duplicate: make "d" into "a"
    let mut b = good.clone();
    b[n - 2] = b'a';
    assert!(Metadata::decode(&b, &regions(), 3, 3).is_err());
    // Extent outside its region.
    let mut b = good;
    let ext = dent + 3 * DENTRY_SIZE;
    b[ext + 24] = 200;
    assert!(Metadata::decode(&b, &regions(), 3, 3)
        .unwrap_err()
        .what
        .contains("outside region"));
}

#[test]
fn every_truncation_is_an_error_not_a_panic() {
    let b = tiny().encode();
    for n in 0..b.len() {
        assert!(Metadata::decode(&b[..n], &regions(), 3, 3).is_err());
    }
}

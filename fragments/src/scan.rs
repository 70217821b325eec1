//! Walking the source tree for a build: breadth first, entries in name-byte
//! order, hard links found by (device, inode), xattrs read without
//! following symlinks, directory ownership decided from `--owns`.

use crate::error::{Error, Result};
use crate::meta::{Kind, Timestamp};
use std::collections::{HashMap, VecDeque};
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

pub(crate) struct ScanInode {
    pub(crate) kind: Kind,
    pub(crate) perm: u16,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    pub(crate) mtime: Timestamp,
    pub(crate) size: u64,
    pub(crate) rdev: (u32, u32),
    pub(crate) owns: bool,
    pub(crate) path: PathBuf,
    pub(crate) target: Vec<u8>,
    pub(crate) xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    pub(crate) children: Vec<(Vec<u8>, u32)>,
}

pub(crate) fn src_err(path: &Path, what: &str) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.to_owned();
    let what = what.to_owned();
    move |e| Error::Source {
        path,
        what,
        source: Some(e),
    }
}

fn read_xattrs(path: &Path) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let names = match xattr::list(path) {
        Ok(n) => n,
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => return Ok(Vec::new()),
        Err(e) => return Err(src_err(path, "list xattrs")(e)),
    };
    let mut out = Vec::new();
    for n in names {
        match xattr::get(path, &n).map_err(src_err(path, "read xattr"))? {
            Some(v) => out.push((n.as_bytes().to_vec(), v)),
            None => continue, // removed meanwhile
        }
    }
    out.sort();
    Ok(out)
}

fn scan_inode(
    path: &Path,
    md: &fs::Metadata,
    tree_path: &[u8],
    owns: &[String],
) -> Result<ScanInode> {
    let ft = md.file_type();
    let kind = if ft.is_file() {
        Kind::Regular
    } else if ft.is_dir() {
        Kind::Directory
    } else if ft.is_symlink() {
        Kind::Symlink
    } else if ft.is_char_device() {
        Kind::CharDevice
    } else if ft.is_block_device() {
        Kind::BlockDevice
    } else if ft.is_fifo() {
        Kind::Fifo
    } else if ft.is_socket() {
        Kind::Socket
    } else {
        return Err(Error::Source {
            path: path.to_owned(),
            what: "unknown file type".into(),
            source: None,
        });
    };
    let target = if kind == Kind::Symlink {
        let t = fs::read_link(path).map_err(src_err(path, "read symlink"))?;
        let t = t.as_os_str().as_bytes().to_vec();
        if t.is_empty() || t.len() > crate::meta::SYMLINK_MAX {
            return Err(Error::Source {
                path: path.to_owned(),
                what: format!("symlink target of {} bytes", t.len()),
                source: None,
            });
        }
        t
    } else {
        Vec::new()
    };
    let owns = kind != Kind::Directory || owns_dir(tree_path, owns);
    let rdev = md.rdev();
    Ok(ScanInode {
        kind,
        perm: (md.mode() & 0o7777) as u16,
        uid: md.uid(),
        gid: md.gid(),
        mtime: Timestamp {
            sec: md.mtime(),
            nsec: md.mtime_nsec().clamp(0, 999_999_999) as u32,
        },
        size: if kind == Kind::Regular { md.len() } else { 0 },
        rdev: (libc::major(rdev), libc::minor(rdev)),
        owns,
        path: path.to_owned(),
        target,
        xattrs: read_xattrs(path)?,
        children: Vec::new(),
    })
}

/// Normalizes an `--owns` path to `/a/b` form.
pub(crate) fn normalize(p: &str) -> String {
    let parts: Vec<&str> = p
        .split('/')
        .filter(|s| !s.is_empty() && *s != ".")
        .collect();
    format!("/{}", parts.join("/"))
}

fn owns_dir(tree_path: &[u8], owns: &[String]) -> bool {
    if owns.is_empty() {
        return tree_path != b"/";
    }
    owns.iter().any(|o| {
        let o = o.as_bytes();
        o == b"/"
            || tree_path == o
            || (tree_path.starts_with(o) && tree_path.get(o.len()) == Some(&b'/'))
    })
}

/// Walks the tree breadth first, entries sorted by name bytes. `owns`:
/// the normalized `--owns` paths (empty: every directory but `/`).
pub(crate) fn scan(src: &Path, owns: &[String]) -> Result<Vec<ScanInode>> {
    let md = fs::symlink_metadata(src).map_err(src_err(src, "stat"))?;
    if !md.is_dir() {
        return Err(Error::Source {
            path: src.to_owned(),
            what: "not a directory".into(),
            source: None,
        });
    }
    let mut inodes = vec![scan_inode(src, &md, b"/", owns)?];
    let mut tree_paths: Vec<Vec<u8>> = vec![b"/".to_vec()];
    let mut links: HashMap<(u64, u64), u32> = HashMap::new();
    let mut queue = VecDeque::from([0u32]);
    while let Some(dir) = queue.pop_front() {
        let dir_path = inodes[dir as usize].path.clone();
        let dir_tree = tree_paths[dir as usize].clone();
        let mut names: Vec<Vec<u8>> = Vec::new();
        for e in fs::read_dir(&dir_path).map_err(src_err(&dir_path, "read directory"))? {
            let e = e.map_err(src_err(&dir_path, "read directory"))?;
            names.push(e.file_name().as_bytes().to_vec());
        }
        names.sort();
        let mut children = Vec::with_capacity(names.len());
        for name in names {
            if name.len() > crate::meta::NAME_MAX {
                return Err(Error::Source {
                    path: dir_path.clone(),
                    what: "a name longer than 255 bytes".into(),
                    source: None,
                });
            }
            let path = dir_path.join(std::ffi::OsStr::from_bytes(&name));
            let md = fs::symlink_metadata(&path)
                .map_err(src_err(&path, "stat (vanished during the build?)"))?;
            if !md.is_dir() && md.nlink() > 1 {
                if let Some(&ino) = links.get(&(md.dev(), md.ino())) {
                    children.push((name, ino));
                    continue;
                }
            }
            let mut tp = dir_tree.clone();
            if tp != b"/" {
                tp.push(b'/');
            }
            tp.extend_from_slice(&name);
            let ino = u32::try_from(inodes.len())
                .map_err(|_| Error::Options("more than 2^32 inodes".into()))?;
            let si = scan_inode(&path, &md, &tp, owns)?;
            if si.kind == Kind::Directory {
                queue.push_back(ino);
            } else if md.nlink() > 1 {
                links.insert((md.dev(), md.ino()), ino);
            }
            inodes.push(si);
            tree_paths.push(tp);
            children.push((name, ino));
        }
        inodes[dir as usize].children = children;
    }
    for o in owns {
        let found = tree_paths
            .iter()
            .zip(&inodes)
            .any(|(p, i)| p.as_slice() == o.as_bytes() && i.kind == Kind::Directory);
        if !found {
            return Err(Error::Options(format!(
                "--owns {o}: no such directory in {}",
                src.display()
            )));
        }
    }
    Ok(inodes)
}

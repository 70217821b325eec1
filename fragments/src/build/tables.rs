//! The metadata tables of a build: the scanned tree, in inode order, with
//! the extents where its contents were stored.

use crate::error::{Error, Result};
use crate::meta::{
    Body, Dentry, Extent, Inode, Kind, Metadata, StrRef, Xattr, XATTR_NAME_MAX, XATTR_VALUE_MAX,
};
use crate::scan::ScanInode;
use std::collections::HashMap;
use std::ops::Range;

/// Appends bytes to the strings table, reusing identical earlier strings
/// is not attempted (names are mostly unique); returns the reference.
struct Strings {
    bytes: Vec<u8>,
}
impl Strings {
    fn add(&mut self, s: &[u8]) -> Result<StrRef> {
        let off = u32::try_from(self.bytes.len())
            .map_err(|_| Error::Options("more than 4 GiB of names".into()))?;
        self.bytes.extend_from_slice(s);
        Ok(StrRef {
            off,
            len: s.len() as u32,
        })
    }
}

/// The tables of the scanned tree; `file_extents` are the stored contents
/// of regular files by inode (none: an empty file).
pub(super) fn metadata(
    scanned: Vec<ScanInode>,
    mut file_extents: HashMap<u32, Vec<Extent>>,
) -> Result<Metadata> {
    let mut strings = Strings { bytes: Vec::new() };
    let mut meta = Metadata::default();
    for (ino, si) in scanned.into_iter().enumerate() {
        let xattrs = add_xattrs(&mut meta, &mut strings, &si)?;
        let contents = file_extents.remove(&(ino as u32)).unwrap_or_default();
        let body = add_body(&mut meta, &mut strings, &si, contents)?;
        meta.inodes.push(Inode {
            kind: si.kind,
            owns_security: si.owns,
            perm: si.perm,
            uid: si.uid,
            gid: si.gid,
            mtime: si.mtime,
            xattrs,
            body,
        });
    }
    meta.strings = strings.bytes;
    Ok(meta)
}

/// Appends an inode's xattrs; returns their range in the xattr table.
fn add_xattrs(meta: &mut Metadata, strings: &mut Strings, si: &ScanInode) -> Result<Range<u32>> {
    let xs = meta.xattrs.len() as u32;
    for (n, v) in &si.xattrs {
        if n.len() > XATTR_NAME_MAX || v.len() > XATTR_VALUE_MAX {
            return Err(Error::Source {
                path: si.path.clone(),
                what: "xattr too large".into(),
                source: None,
            });
        }
        meta.xattrs.push(Xattr {
            name: strings.add(n)?,
            value: strings.add(v)?,
        });
    }
    Ok(xs..meta.xattrs.len() as u32)
}

/// The kind-specific part of an inode, appending a file's extents or a
/// directory's entries to their tables.
fn add_body(
    meta: &mut Metadata,
    strings: &mut Strings,
    si: &ScanInode,
    contents: Vec<Extent>,
) -> Result<Body> {
    Ok(match si.kind {
        Kind::Regular => {
            let es = meta.extents.len() as u32;
            meta.extents.extend(contents);
            Body::Regular {
                size: si.size,
                extents: es..meta.extents.len() as u32,
            }
        }
        Kind::Directory => {
            let ds = meta.dentries.len() as u32;
            for (name, child) in &si.children {
                meta.dentries.push(Dentry {
                    name: strings.add(name)?,
                    inode: *child,
                });
            }
            Body::Directory {
                entries: ds..meta.dentries.len() as u32,
            }
        }
        Kind::Symlink => Body::Symlink {
            target: strings.add(&si.target)?,
        },
        Kind::CharDevice | Kind::BlockDevice => Body::Device {
            major: si.rdev.0,
            minor: si.rdev.1,
        },
        Kind::Fifo | Kind::Socket => Body::Empty,
    })
}

//! Every path of the tree, depth first in name order, each with its inode:
//! hard links show up as several paths with one inode. Each directory is
//! entered once: a directory reached twice (a cycle, or a hard-linked
//! directory) is an error, so the walk always ends. Each directory's ".."
//! must name the directory it was reached from.

use super::dir::DirEntry;
use super::error::{ReadError, Result, Where};
use super::inode::Inode;
use super::source::ReadAt;
use super::Ext4;
use crate::ext4::disk::{dirent_type, ROOT_INO};
use fragments::Kind;
use std::collections::HashSet;

/// One path met by [`Ext4::walk`].
#[derive(Debug, Clone)]
pub struct WalkEntry {
    /// Absolute path: `/` for the root, `/a/b` below it.
    pub path: Vec<u8>,
    /// The inode, fully decoded (times, xattrs, symlink target).
    pub inode: Inode,
}

impl WalkEntry {
    pub fn ino(&self) -> u32 {
        self.inode.ino
    }
}

struct Frame {
    path: Vec<u8>,
    ino: u32,
    entries: std::vec::IntoIter<DirEntry>,
}

/// The iterator behind [`Ext4::walk`]. After the first error it ends.
pub struct Walk<'a, R: ReadAt> {
    fs: &'a Ext4<R>,
    stack: Vec<Frame>,
    seen_dirs: HashSet<u32>,
    started: bool,
    done: bool,
}

impl<R: ReadAt> Ext4<R> {
    /// Every path from the root, depth first, names in byte order.
    pub fn walk(&self) -> Walk<'_, R> {
        Walk {
            fs: self,
            stack: Vec::new(),
            seen_dirs: HashSet::new(),
            started: false,
            done: false,
        }
    }
}

fn lossy(p: &[u8]) -> String {
    String::from_utf8_lossy(p).into_owned()
}

impl<R: ReadAt> Walk<'_, R> {
    fn in_path(path: &[u8], e: ReadError) -> ReadError {
        ReadError::InPath {
            path: lossy(path),
            inner: Box::new(e),
        }
    }

    /// Reads directory `ino` (reached at `path` from `parent`) and pushes
    /// its entries.
    fn enter(&mut self, path: &[u8], ino: u32, parent: u32) -> Result<()> {
        let at = || Where::Path {
            path: lossy(path),
            ino,
        };
        if !self.seen_dirs.insert(ino) {
            return Err(ReadError::corrupt(
                at(),
                "directory",
                "reached a second time (a directory cycle or a hard-linked directory)",
            ));
        }
        let d = self.fs.directory(ino).map_err(|e| Self::in_path(path, e))?;
        if d.parent != parent {
            return Err(ReadError::corrupt(
                at(),
                "\"..\"",
                format!(
                    "names inode {}, not the parent directory {parent}",
                    d.parent
                ),
            ));
        }
        let mut entries = d.entries;
        entries.sort_unstable();
        self.stack.push(Frame {
            path: if path == b"/" {
                Vec::new()
            } else {
                path.to_vec()
            },
            ino,
            entries: entries.into_iter(),
        });
        Ok(())
    }

    fn step(&mut self) -> Option<Result<WalkEntry>> {
        if !self.started {
            self.started = true;
            let path = b"/".to_vec();
            let inode = match self.fs.inode(ROOT_INO) {
                Ok(i) => i,
                Err(e) => return Some(Err(Self::in_path(&path, e))),
            };
            if inode.kind != Kind::Directory {
                return Some(Err(ReadError::corrupt(
                    Where::Path {
                        path: "/".into(),
                        ino: ROOT_INO,
                    },
                    "i_mode",
                    "the root is not a directory",
                )));
            }
            if let Err(e) = self.enter(&path, ROOT_INO, ROOT_INO) {
                return Some(Err(e));
            }
            return Some(Ok(WalkEntry { path, inode }));
        }
        loop {
            let top = self.stack.last_mut()?;
            let Some(e) = top.entries.next() else {
                self.stack.pop();
                continue;
            };
            let parent = top.ino;
            let mut path = top.path.clone();
            path.push(b'/');
            path.extend_from_slice(&e.name);
            let inode = match self.fs.inode(e.ino) {
                Ok(i) => i,
                Err(err) => return Some(Err(Self::in_path(&path, err))),
            };
            if e.file_type != 0 && e.file_type != dirent_type(inode.kind) {
                return Some(Err(ReadError::corrupt(
                    Where::Path {
                        path: lossy(&path),
                        ino: e.ino,
                    },
                    "file_type",
                    format!(
                        "the entry says type {}, the inode is a {}",
                        e.file_type,
                        super::inode::kind_name(inode.kind)
                    ),
                )));
            }
            if inode.kind == Kind::Directory {
                if let Err(err) = self.enter(&path, e.ino, parent) {
                    return Some(Err(err));
                }
            }
            return Some(Ok(WalkEntry { path, inode }));
        }
    }
}

impl<R: ReadAt> Iterator for Walk<'_, R> {
    type Item = Result<WalkEntry>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let r = self.step();
        if !matches!(r, Some(Ok(_))) {
            self.done = true;
        }
        r
    }
}

//! The merged tree: what a merge produces and the ext4 generator consumes.
//!
//! INTERFACE (fixed; the ext4 generator consumes it):
//! - `Merged::fragments` are sorted by `Fragment::id()`, so the result does
//!   not depend on the manifest's order; `FragIdx` indexes this list.
//! - `Merged::nodes[0]` is the root directory. Nodes are numbered breadth
//!   first with entries in name-byte order. One node per inode: hard links
//!   within a fragment share a node.
//! - A directory's entries are `entries[first_entry .. first_entry + entry_count]`,
//!   sorted by name bytes, unique.

use fragments::{Fragment, Kind, Timestamp};
use std::sync::Arc;

/// Index into `Merged::fragments`.
pub type FragIdx = u16;

/// Where a node's security xattrs come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XattrSource {
    /// No xattrs.
    None,
    /// The xattrs of inode `ino` of fragment `frag`.
    Inode { frag: FragIdx, ino: u32 },
}

#[derive(Debug, Clone)]
pub struct Node {
    pub kind: Kind,
    pub perm: u16,
    pub uid: u32,
    pub gid: u32,
    /// Directories: the newest mtime among the fragments providing it.
    pub mtime: Timestamp,
    pub xattrs: XattrSource,
    /// Non-directories: the fragment inode providing content (regular file
    /// extents and size, symlink target, device numbers). Directories: None.
    pub source: Option<(FragIdx, u32)>,
    /// Directories: their entries (see module doc). Others: 0, 0.
    pub first_entry: u32,
    pub entry_count: u32,
    /// Link count as ext4 wants it: non-directories = number of entries
    /// naming the node; directories = 2 + subdirectories.
    pub nlink: u32,
    /// The directory holding the node's first entry (root: 0).
    pub parent: u32,
}

#[derive(Debug, Clone)]
pub struct Entry {
    pub name: Vec<u8>,
    pub node: u32,
}

/// The merged tree.
pub struct Merged {
    pub fragments: Vec<Arc<Fragment>>,
    pub nodes: Vec<Node>,
    pub entries: Vec<Entry>,
}

impl Merged {
    pub fn entries_of(&self, node: u32) -> &[Entry] {
        let n = &self.nodes[node as usize];
        &self.entries[n.first_entry as usize..(n.first_entry + n.entry_count) as usize]
    }
    /// The xattrs of a node, as (name, value) pairs sorted by name.
    pub fn xattrs_of(&self, node: u32) -> Vec<(&[u8], &[u8])> {
        match self.nodes[node as usize].xattrs {
            XattrSource::None => Vec::new(),
            XattrSource::Inode { frag, ino } => self.fragments[frag as usize]
                .metadata()
                .xattrs_of(ino)
                .collect(),
        }
    }
}

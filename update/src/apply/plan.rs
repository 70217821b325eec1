//! The work of the hydration pass. Unchanged contents whose base bytes
//! are a content of the device's fragment are copied in pieces (verified
//! as read, no hashing, large files spread over the cores); everything
//! else is one whole job. Largest first, so the cores finish together.

use super::base::{Base, BaseView};
use crate::blob::PIECE;
use crate::package::Piece;
use crate::rev::{Entry, Source};
use crate::wire::Hash;
use fragments::Metadata;
use std::collections::HashMap;

pub(super) enum Job {
    /// A whole content: a piece of the package, or an unchanged content
    /// whose base bytes must be reconstructed.
    Whole { ri: u32 },
    /// Part of an unchanged content copied from a content of the device's
    /// fragment (verified as read).
    Copy(CopyRange),
}

/// `[off, off + len)` of content `ri` of R: the same bytes of content
/// `src` of the device's fragment, which holds base content `bi`.
pub(super) struct CopyRange {
    pub(super) ri: u32,
    pub(super) src: u32,
    pub(super) bi: u32,
    pub(super) off: u64,
    pub(super) len: u64,
}

impl Job {
    pub(super) fn len(&self, rm: &Metadata) -> u64 {
        match self {
            Job::Whole { ri } => rm.inode(*ri).size(),
            Job::Copy(c) => c.len,
        }
    }
    pub(super) fn ri(&self) -> u32 {
        match self {
            Job::Whole { ri } | Job::Copy(CopyRange { ri, .. }) => *ri,
        }
    }
}

pub(super) struct Plan {
    /// Largest first.
    pub(super) jobs: Vec<Job>,
    /// Per content copied in pieces: the base content it is, and that
    /// content's blake3 when the reverse file records it.
    pub(super) copied: HashMap<u32, (u32, Option<Hash>)>,
}

/// The jobs for contents `order` of R (`pieces`: those the package names).
pub(super) fn plan(
    view: &BaseView,
    rm: &Metadata,
    order: &[u32],
    pieces: &HashMap<u32, &Piece>,
) -> Plan {
    let mut jobs: Vec<Job> = Vec::new();
    let mut copied: HashMap<u32, (u32, Option<Hash>)> = HashMap::new();
    for &ri in order {
        let size = rm.inode(ri).size();
        let src = if pieces.contains_key(&ri) {
            None
        } else {
            copy_source(view, rm, ri, size)
        };
        let Some((bi, src, hash)) = src else {
            jobs.push(Job::Whole { ri });
            continue;
        };
        copied.insert(ri, (bi, hash));
        let mut off = 0;
        while off < size {
            let len = PIECE.min(size - off);
            jobs.push(Job::Copy(CopyRange {
                ri,
                src,
                bi,
                off,
                len,
            }));
            off += len;
        }
    }
    jobs.sort_by_key(|j| std::cmp::Reverse(j.len(rm)));
    Plan { jobs, copied }
}

/// For an unchanged content `ri` of `size` bytes: the base content at its
/// path, the content of the device's fragment holding those bytes, and the
/// base hash when known; none when the bytes must be reconstructed.
fn copy_source(
    view: &BaseView,
    rm: &Metadata,
    ri: u32,
    size: u64,
) -> Option<(u32, u32, Option<Hash>)> {
    let bm = view.meta.as_ref()?;
    let bi = bm.contents.at_path(&bm.meta, &rm.path_of(ri))?;
    let (reader, src, hash) = match &view.base {
        Base::Direct { reader } => (reader, bi, None),
        Base::Rev { reader, rev, .. } => match rev.table.entry(bi) {
            Some(Entry {
                source: Source::Same { inode },
                hash,
                ..
            }) => (reader, *inode, Some(*hash).filter(|h| h != &[0; 32])),
            _ => return None,
        },
        Base::Unavailable(_) => return None,
    };
    let nm = reader.frag.metadata();
    let ok = (src as usize) < nm.inodes.len()
        && !nm.extents_of(src).is_empty()
        && nm.inode(src).size() == size;
    ok.then_some((bi, src, hash))
}

//! The contents of a fragment: one per distinct stored file content.
//!
//! The builder stores identical contents once, so several inodes may share
//! one extent list. An update works on *contents*, each named by its
//! canonical inode: the smallest inode number with that extent list. Both
//! the lab (`diff`) and the device (`apply`) derive canonical inodes from the
//! metadata alone, so they agree without the package saying more.
//! Regular files without extents (empty, or all holes) have no content:
//! the metadata region alone describes them.

use crate::blob::{Blob, BlobSink, PIECE};
use crate::error::{Error, Result};
use fragments::{Fragment, Metadata, RegionKind, BLOCK_SIZE};
use std::collections::HashMap;
use std::path::Path;

pub const NONE: u32 = u32::MAX;

/// Canonical inodes of a fragment's contents.
#[derive(Debug, Clone)]
pub struct Contents {
    /// Per inode: its canonical inode, or `NONE` (not a regular file with
    /// stored bytes).
    pub canon: Vec<u32>,
    /// Canonical inodes, ascending.
    pub list: Vec<u32>,
}

impl Contents {
    pub fn of(meta: &Metadata) -> Contents {
        let mut canon = vec![NONE; meta.inodes.len()];
        let mut list = Vec::new();
        let mut seen: HashMap<Vec<(u64, u32, u64, u64)>, u32> = HashMap::new();
        for ino in 0..meta.inodes.len() as u32 {
            let ext = meta.extents_of(ino);
            if ext.is_empty() {
                continue;
            }
            let key: Vec<_> = ext
                .iter()
                .map(|e| (e.file_offset, e.region, e.region_offset, e.len))
                .chain(std::iter::once((meta.inode(ino).size(), 0, 0, 0)))
                .collect();
            let c = *seen.entry(key).or_insert_with(|| {
                list.push(ino);
                ino
            });
            canon[ino as usize] = c;
        }
        Contents { canon, list }
    }

    /// The canonical content of the file at `path`, if it is one.
    pub fn at_path(&self, meta: &Metadata, path: &[u8]) -> Option<u32> {
        let ino = meta.lookup(path)?;
        Some(self.canon[ino as usize]).filter(|&c| c != NONE)
    }
}

/// Path of an inode for messages.
pub fn path_string(meta: &Metadata, ino: u32) -> String {
    String::from_utf8_lossy(&meta.path_of(ino)).into_owned()
}

/// Reads whole contents of one fragment, verified.
///
/// Positioned reads into buffers the bytes are then checked in, never a
/// memory map: a fragment file truncated or rewritten underneath gives an
/// error naming it, not a crash (a mapped page past the new end of the
/// file would raise SIGBUS in whichever thread touched it).
pub struct Reader<'a> {
    pub frag: &'a Fragment,
}

impl<'a> Reader<'a> {
    pub fn new(frag: &'a Fragment) -> Reader<'a> {
        Reader { frag }
    }

    /// The content of regular inode `ino`, in memory up to `mem_limit`
    /// bytes (else in a scratch file in `dir`).
    pub fn read(&self, ino: u32, mem_limit: u64, dir: &Path) -> Result<Blob> {
        let meta = self.frag.metadata();
        let size = meta.inode(ino).size();
        if size <= mem_limit {
            // Straight into the content's own buffer: no staging copy.
            let mut v = vec![0u8; size as usize];
            read_range(self.frag, ino, 0, &mut v)?;
            return Ok(Blob::Mem(v));
        }
        let mut sink =
            BlobSink::new(size, mem_limit, dir).map_err(Error::io(dir, "create a scratch file"))?;
        let mut buf = vec![0u8; PIECE.min(size) as usize];
        let mut off = 0;
        while off < size {
            let n = PIECE.min(size - off) as usize;
            read_range(self.frag, ino, off, &mut buf[..n])?;
            sink.push(&buf[..n])
                .map_err(Error::io(dir, "write a scratch file"))?;
            off += n as u64;
        }
        sink.finish()
            .map_err(Error::io(dir, "write a scratch file"))
    }
}

/// Reads `buf.len()` bytes of regular inode `ino` at `off` (inside the
/// file), verified: like `Fragment::read_file`, but only the holes are
/// zeroed, not the whole buffer first.
pub fn read_range(frag: &Fragment, ino: u32, off: u64, buf: &mut [u8]) -> fragments::Result<()> {
    let end = off + buf.len() as u64;
    let mut covered = off;
    for e in frag.metadata().extents_of(ino) {
        let (a, z) = (e.file_offset.max(off), (e.file_offset + e.len).min(end));
        if a >= z {
            continue;
        }
        if a > covered {
            buf[(covered - off) as usize..(a - off) as usize].fill(0);
        }
        let dst = &mut buf[(a - off) as usize..(z - off) as usize];
        let at = e.region_offset + (a - e.file_offset);
        // Whole blocks straight into the buffer; a partial last block (the
        // end of a file, zero padded in a raw region) through a block-sized
        // one, so the fragment reader needs no scratch copy of the range.
        let whole = if at.is_multiple_of(BLOCK_SIZE) && frag.chunk_size(e.region).is_none() {
            dst.len() / BLOCK_SIZE as usize * BLOCK_SIZE as usize
        } else {
            dst.len()
        };
        frag.read_region(e.region, at, &mut dst[..whole])?;
        if whole < dst.len() {
            let mut block = [0u8; BLOCK_SIZE as usize];
            let tail = at + whole as u64;
            let r = frag.region(e.region).expect("metadata checked at open");
            if tail + BLOCK_SIZE <= r.stored_len {
                frag.read_region(e.region, tail, &mut block)?;
                let n = dst.len() - whole;
                dst[whole..].copy_from_slice(&block[..n]);
            } else {
                frag.read_region(e.region, tail, &mut dst[whole..])?;
            }
        }
        covered = z;
    }
    if covered < end {
        buf[(covered - off) as usize..].fill(0);
    }
    Ok(())
}

/// The logical bytes of a fragment's metadata region, verified.
pub fn metadata_bytes(frag: &Fragment) -> Result<Vec<u8>> {
    let mi = frag.header().region_of(RegionKind::Metadata);
    let r = frag.header().regions[mi].clone();
    let mut b = vec![0u8; r.stored_len as usize];
    frag.read_stored(mi as u32, 0, &mut b)?;
    b.truncate(r.logical_len as usize);
    Ok(b)
}

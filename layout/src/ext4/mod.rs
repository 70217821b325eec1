//! ext4 synthesis: from a merged tree to a block map.
//!
//! ```text
//! block 0      superblock (at byte 1024)
//! 1..          group descriptors (64 bytes each)
//!              block bitmaps, inode bitmaps, inode tables (all groups, packed)
//!              journal: one jbd2 superblock, the rest zeros
//!              stored metadata: directory blocks, extent-tree blocks,
//!                xattr blocks, long-symlink blocks
//!              small files: one block each, from small-data regions
//!              data regions of every fragment, mapped contiguously
//!              second mappings of deduplicated contents
//!              free space: zeros
//! ```
//!
//! Everything but the stored metadata is generated when read: bitmaps and
//! inode tables come from compact per-inode records, so memory stays
//! proportional to the tree, not to the image. Inodes: 2 root, 8 journal,
//! 11 lost+found, then the merged nodes in breadth-first order.
//!
//! `Image::build` (`build.rs`) runs the phases: `content` (what does not
//! depend on placement), `geometry`, `place` (map and inode records), then
//! `generate` (extent trees, group descriptors, superblock). `dir` and
//! `disk` encode the on-disk structures, `export` reads the image out,
//! `limits` says what a tree must respect to become this volume.

mod build;
mod content;
pub mod dir;
pub mod disk;
pub mod export;
mod generate;
mod geometry;
pub(crate) mod limits;
mod place;
pub mod read;

pub use limits::{Ext4Error, DIR_MAX_ENTRIES, MAX_FREE_BYTES};

use crate::tree::{FragIdx, Merged};
use disk::PExtent;
use std::collections::HashMap;

/// Bump when the generator's output changes for the same inputs.
/// FORMAT BREAK: part of the volume identity.
pub const GENERATOR_VERSION: u32 = 1;

/// Filesystem options from the manifest.
#[derive(Debug, Clone)]
pub struct Ext4Options {
    pub label: String,
    /// Free space the guest sees, in bytes.
    pub free_bytes: u64,
    pub uuid: Option<[u8; 16]>,
}

/// Where the bytes of a run of volume blocks come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Synthesized metadata: `Image::read_meta`.
    Meta,
    /// Zeros.
    Zero,
    /// Blocks of a fragment region's logical bytes, starting at `block`.
    Fragment {
        frag: FragIdx,
        region: u32,
        block: u64,
    },
    /// Small files, one block each: block `k` of the run holds
    /// `Image::small[first + k]`, padded with zeros.
    Small { first: u32 },
}

/// Where one small file's block comes from: `len` bytes at `offset` of a
/// small-data region (16 bytes each: a million small files cost 16 MiB).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SmallBlock {
    pub offset: u64,
    pub len: u32,
    pub frag: FragIdx,
    pub region: u16,
}

/// A run of volume blocks with one source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapExtent {
    pub start: u64,
    pub len: u64,
    pub source: Source,
}

/// What the inode table needs for one inode.
#[derive(Debug, Clone, Default)]
struct InodeRec {
    /// Merged node, or u32::MAX for lost+found / journal.
    node: u32,
    mode: u16,
    links: u16,
    size: u64,
    flags: u32,
    ext_start: u32,
    ext_count: u32,
    tree_first: u64,
    tree_blocks: u32,
    xattr_block: u64,
    data_blocks: u64,
    /// For fast symlinks and devices, `i_block` comes from the node.
    special: bool,
}

/// The synthesized volume.
pub struct Image {
    pub blocks: u64,
    pub identity: [u8; 32],
    pub uuid: [u8; 16],
    pub map: Vec<MapExtent>,
    /// The small files of `Source::Small` runs, in block order.
    pub small: Vec<SmallBlock>,
    fs_seed: u32,
    groups: u64,
    ipg: u32,
    itable_per_group: u64,
    gdt_start: u64,
    gdt_blocks: u64,
    bb_start: u64,
    ib_start: u64,
    it_start: u64,
    journal_start: u64,
    journal_blocks: u64,
    stored_start: u64,
    stored: Vec<Vec<u8>>,
    used_end: u64,
    last_ino: u32,
    inodes: Vec<InodeRec>,
    extents: Vec<PExtent>,
    sb: Vec<u8>,
    gdt: Vec<u8>,
    time: (i64, u32),
    node_iblock: HashMap<u32, [u8; 60]>,
}

impl Image {
    /// The map extent holding `block`.
    pub fn lookup(&self, block: u64) -> Option<&MapExtent> {
        let i = self.map.partition_point(|m| m.start + m.len <= block);
        self.map.get(i).filter(|m| m.start <= block)
    }
}

/// Sorts the map and joins runs that continue each other, in place.
fn merge_adjacent(map: &mut Vec<MapExtent>) {
    map.sort_unstable_by_key(|m| m.start);
    let mut w = 0usize;
    for r in 0..map.len() {
        let m = map[r];
        if w > 0 {
            let l = &mut map[w - 1];
            let contiguous = match (l.source, m.source) {
                (Source::Meta, Source::Meta) | (Source::Zero, Source::Zero) => true,
                (
                    Source::Fragment {
                        frag: a,
                        region: ra,
                        block: ba,
                    },
                    Source::Fragment {
                        frag: b,
                        region: rb,
                        block: bb,
                    },
                ) => a == b && ra == rb && ba + l.len == bb,
                _ => false,
            };
            if contiguous && l.start + l.len == m.start {
                l.len += m.len;
                continue;
            }
        }
        map[w] = m;
        w += 1;
    }
    map.truncate(w);
    map.shrink_to_fit();
}

fn node_path(merged: &Merged, node: u32) -> String {
    let mut parts = Vec::new();
    let mut cur = node;
    while cur != 0 {
        let p = merged.nodes[cur as usize].parent;
        if let Some(e) = merged.entries_of(p).iter().find(|e| e.node == cur) {
            parts.push(String::from_utf8_lossy(&e.name).into_owned());
        }
        cur = p;
    }
    parts.reverse();
    format!("/{}", parts.join("/"))
}

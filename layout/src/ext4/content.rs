//! What the image holds that does not depend on where it is placed: the
//! identity and the seeds derived from it, inode numbers, directory
//! blocks, shared xattr blocks, long-symlink blocks, each file's extent
//! count, and the fragments' data regions with the contents several files
//! share. The geometry is computed from these sizes, then everything is
//! placed (`place`).

use super::dir;
use super::disk::*;
use super::limits::{Ext4Error, DIR_MAX_ENTRIES};
use super::{node_path, Ext4Options, GENERATOR_VERSION};
use crate::tree::{FragIdx, Merged};
use fragments::{Kind, RegionKind};
use std::collections::HashMap;

/// The volume identity and what derives from it.
pub(super) struct Seeds {
    /// blake3 of everything that determines the bytes.
    pub(super) identity: [u8; 32],
    pub(super) uuid: [u8; 16],
    /// The directory hash seed, as the superblock stores it and as words.
    pub(super) hash_seed_bytes: [u8; 16],
    pub(super) hash_seed: [u32; 4],
    /// The metadata checksum seed: crc32c of the uuid.
    pub(super) fs_seed: u32,
}

impl Seeds {
    pub(super) fn derive(merged: &Merged, opts: &Ext4Options) -> Seeds {
        let mut id = blake3::Hasher::new();
        id.update(b"mosaic ext4 volume");
        id.update(&GENERATOR_VERSION.to_le_bytes());
        for f in &merged.fragments {
            id.update(&f.id());
        }
        id.update(&(opts.label.len() as u64).to_le_bytes());
        id.update(opts.label.as_bytes());
        id.update(&opts.free_bytes.to_le_bytes());
        id.update(&opts.uuid.map(|u| u.to_vec()).unwrap_or_default());
        let identity = *id.finalize().as_bytes();
        let derived = blake3::derive_key("mosaic ext4 uuid and hash seed", &identity);
        let uuid = opts.uuid.unwrap_or_else(|| {
            let mut u = [0u8; 16];
            u.copy_from_slice(&derived[..16]);
            u[6] = (u[6] & 0x0f) | 0x40;
            u[8] = (u[8] & 0x3f) | 0x80;
            u
        });
        let mut hash_seed_bytes = [0u8; 16];
        hash_seed_bytes.copy_from_slice(&derived[16..32]);
        let hash_seed: [u32; 4] = std::array::from_fn(|i| {
            u32::from_le_bytes(
                hash_seed_bytes[4 * i..4 * i + 4]
                    .try_into()
                    .expect("4 bytes"),
            )
        });
        Seeds {
            identity,
            uuid,
            hash_seed_bytes,
            hash_seed,
            fs_seed: crc(!0, &uuid),
        }
    }
}

/// The newest mtime of the tree: the time of the inodes we make up and of
/// the superblock.
pub(super) fn newest_mtime(merged: &Merged) -> (i64, u32) {
    merged
        .nodes
        .iter()
        .map(|n| (n.mtime.sec, n.mtime.nsec))
        .max()
        .unwrap_or((0, 0))
}

/// Inode numbers: 2 root, 11 lost+found, then the merged nodes in order
/// (from 11 when the tree brings its own lost+found).
pub(super) struct InodeNumbers {
    /// The root of the tree has a `lost+found` entry.
    pub(super) has_lf: bool,
    base: u32,
    pub(super) last_ino: u32,
}

impl InodeNumbers {
    pub(super) fn new(merged: &Merged) -> InodeNumbers {
        let has_lf = merged.entries_of(0).iter().any(|e| e.name == b"lost+found");
        let base: u32 = if has_lf { 10 } else { 11 };
        let last_ino = base + merged.nodes.len() as u32 - 1;
        InodeNumbers {
            has_lf,
            base,
            last_ino: last_ino.max(LOST_FOUND_INO),
        }
    }

    /// The inode of merged node `node`.
    pub(super) fn of(&self, node: u32) -> u32 {
        if node == 0 {
            ROOT_INO
        } else {
            self.base + node
        }
    }
}

/// A directory's blocks in `stored`: (first index, count, htree).
pub(super) type DirBlocks = HashMap<u32, (usize, usize, bool)>;

/// The blocks of every directory (and of our lost+found when the tree has
/// none), appended to `stored`; by inode.
pub(super) fn directories(
    merged: &Merged,
    nums: &InodeNumbers,
    seeds: &Seeds,
    stored: &mut Vec<Vec<u8>>,
) -> Result<DirBlocks, Ext4Error> {
    let nodes = &merged.nodes;
    let mut dir_blocks = DirBlocks::new();
    let mut push_dir = |stored: &mut Vec<Vec<u8>>, ino: u32, parent: u32, list: &[dir::DirIn]| {
        let (blocks, htree) = dir::build(
            ino,
            parent,
            list,
            &seeds.hash_seed,
            inode_seed(seeds.fs_seed, ino, 0),
        );
        dir_blocks.insert(ino, (stored.len(), blocks.len(), htree));
        stored.extend(blocks);
    };
    for (i, n) in nodes.iter().enumerate() {
        if n.kind != Kind::Directory {
            continue;
        }
        let mut list: Vec<dir::DirIn> = merged
            .entries_of(i as u32)
            .iter()
            .map(|e| dir::DirIn {
                name: &e.name,
                ino: nums.of(e.node),
                ftype: dirent_type(nodes[e.node as usize].kind),
            })
            .collect();
        let lf_name: &[u8] = b"lost+found";
        if i == 0 && !nums.has_lf {
            let pos = list
                .binary_search_by(|d| d.name.cmp(lf_name))
                .unwrap_or_else(|p| p);
            list.insert(
                pos,
                dir::DirIn {
                    name: lf_name,
                    ino: LOST_FOUND_INO,
                    ftype: 2,
                },
            );
        }
        if list.len() > DIR_MAX_ENTRIES {
            return Err(Ext4Error::DirectoryTooLarge {
                path: node_path(merged, i as u32),
                n: list.len(),
            });
        }
        push_dir(stored, nums.of(i as u32), nums.of(n.parent), &list);
    }
    if !nums.has_lf {
        push_dir(stored, LOST_FOUND_INO, ROOT_INO, &[]);
    }
    Ok(dir_blocks)
}

/// A node without an xattr block.
pub(super) const NO_XATTR: u32 = u32::MAX;

/// The xattr blocks in `stored`, one per distinct set of xattrs.
pub(super) struct XattrBlocks {
    /// By node: the index of its block in `stored`, or `NO_XATTR`.
    pub(super) of_node: Vec<u32>,
    /// By index in `stored`: how many inodes share the block.
    refcount: HashMap<usize, u32>,
}

impl XattrBlocks {
    /// Builds the blocks, shared between nodes with identical sets, and
    /// appends them to `stored` in the order of their first user.
    pub(super) fn build(
        merged: &Merged,
        stored: &mut Vec<Vec<u8>>,
    ) -> Result<XattrBlocks, Ext4Error> {
        let nodes = &merged.nodes;
        let mut sets: HashMap<Vec<u8>, (usize, u32)> = HashMap::new(); // block bytes -> (stored idx, refcount)
        let mut of_node: Vec<u32> = vec![NO_XATTR; nodes.len()];
        for (i, _) in nodes.iter().enumerate() {
            let attrs = merged.xattrs_of(i as u32);
            if attrs.is_empty() {
                continue;
            }
            let blk = xattr_block(&attrs).ok_or_else(|| Ext4Error::XattrTooBig {
                path: node_path(merged, i as u32),
            })?;
            let e = sets.entry(blk).or_insert((usize::MAX, 0));
            e.1 += 1;
            of_node[i] = 0;
        }
        // Deterministic order of xattr blocks: by first user.
        for (i, _) in nodes.iter().enumerate() {
            if of_node[i] == NO_XATTR {
                continue;
            }
            let blk = xattr_block(&merged.xattrs_of(i as u32)).expect("built above");
            let e = sets.get_mut(&blk).expect("inserted above");
            if e.0 == usize::MAX {
                e.0 = stored.len();
                stored.push(blk);
            }
            of_node[i] = e.0 as u32;
        }
        Ok(XattrBlocks {
            of_node,
            refcount: sets.values().map(|&(idx, rc)| (idx, rc)).collect(),
        })
    }

    /// Seals the blocks (checksum, refcount) once the addresses of the
    /// stored blocks are known: `stored[0]` is volume block `stored_start`.
    pub(super) fn seal(&self, stored: &mut [Vec<u8>], fs_seed: u32, stored_start: u64) {
        for (idx, rc) in &self.refcount {
            seal_xattr_block(&mut stored[*idx], fs_seed, stored_start + *idx as u64, *rc);
        }
    }
}

/// The target blocks of symlinks of 60 bytes or more (shorter ones live in
/// the inode), appended to `stored`; by node.
pub(super) fn long_symlinks(merged: &Merged, stored: &mut Vec<Vec<u8>>) -> HashMap<u32, usize> {
    let mut symlink_block: HashMap<u32, usize> = HashMap::new();
    for (i, n) in merged.nodes.iter().enumerate() {
        if n.kind == Kind::Symlink {
            let (f, ino) = n.source.expect("non-directories have a source");
            let t = merged.fragments[f as usize]
                .metadata()
                .symlink_target(ino)
                .unwrap_or(b"");
            if t.len() >= 60 {
                let mut b = vec![0u8; BLOCK];
                b[..t.len()].copy_from_slice(t);
                symlink_block.insert(i as u32, stored.len());
                stored.push(b);
            }
        }
    }
    symlink_block
}

/// Blocks that depend on each file's extent count, which does not depend
/// on placement: counted now, placed later.
pub(super) struct ExtentCounts {
    /// Small files' blocks (one per small-data extent).
    pub(super) small_blocks: u64,
    /// Extent-tree blocks of files with more than 4 extents.
    pub(super) tree_blocks: u64,
}

impl ExtentCounts {
    pub(super) fn count(merged: &Merged) -> Result<ExtentCounts, Ext4Error> {
        let mut small_count = 0u64;
        let mut tree_total = 0usize;
        for (i, n) in merged.nodes.iter().enumerate() {
            if n.kind != Kind::Regular {
                continue;
            }
            let (f, ino) = n.source.expect("files have a source");
            let frag = &merged.fragments[f as usize];
            let mut count = 0usize;
            for e in frag.metadata().extents_of(ino) {
                if frag.region(e.region).map(|r| r.kind) == Some(RegionKind::Small) {
                    small_count += 1;
                    count += 1;
                } else {
                    count += (e.len.div_ceil(BLOCK as u64)).div_ceil(MAX_EXTENT_LEN) as usize;
                }
            }
            if count > 4 * EXTENTS_PER_BLOCK * EXTENTS_PER_BLOCK {
                return Err(Ext4Error::TooManyExtents {
                    path: node_path(merged, i as u32),
                    n: count,
                });
            }
            tree_total += extent_tree_blocks(count);
        }
        Ok(ExtentCounts {
            small_blocks: small_count,
            tree_blocks: tree_total as u64,
        })
    }
}

/// The fragments' data regions, mapped contiguously, and the contents
/// used by several inodes (deduplicated in a fragment), which get a
/// second mapping.
pub(super) struct DataPlan {
    /// (fragment, region index, logical blocks) of each data region.
    pub(super) regions: Vec<(FragIdx, u32, u64)>,
    /// The sum of their blocks.
    pub(super) data_blocks: u64,
    /// Shared contents by (fragment, region, region offset): whether the
    /// first use was placed.
    pub(super) shared: HashMap<(FragIdx, u32, u64), bool>,
    /// Blocks of the second mappings.
    pub(super) dup_blocks: u64,
}

impl DataPlan {
    pub(super) fn new(merged: &Merged) -> DataPlan {
        let regions: Vec<(FragIdx, u32, u64)> = merged
            .fragments
            .iter()
            .enumerate()
            .flat_map(|(fi, f)| {
                f.header()
                    .regions
                    .iter()
                    .enumerate()
                    .filter(|(_, r)| r.kind == RegionKind::Data)
                    .map(move |(ri, r)| {
                        (
                            fi as FragIdx,
                            ri as u32,
                            r.logical_len.div_ceil(BLOCK as u64),
                        )
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        let data_blocks: u64 = regions.iter().map(|r| r.2).sum();
        let (shared, dup_blocks) = shared_contents(merged);
        DataPlan {
            regions,
            data_blocks,
            shared,
            dup_blocks,
        }
    }
}

/// Contents used by several inodes: found by sorting every data extent
/// once, so only the shared ones are tracked while placing (memory: 16
/// bytes per extent, briefly). Returns them (none placed yet) and the
/// blocks of their second uses.
fn shared_contents(merged: &Merged) -> (HashMap<(FragIdx, u32, u64), bool>, u64) {
    let mut all: Vec<(FragIdx, u32, u64, u64)> = Vec::new();
    for n in merged.nodes.iter() {
        if n.kind != Kind::Regular {
            continue;
        }
        let (f, ino) = n.source.expect("files have a source");
        let frag = &merged.fragments[f as usize];
        for e in frag.metadata().extents_of(ino) {
            if frag.region(e.region).map(|r| r.kind) == Some(RegionKind::Data) {
                all.push((f, e.region, e.region_offset, e.len));
            }
        }
    }
    all.sort_unstable();
    let mut dup_blocks = 0u64;
    let mut shared: HashMap<(FragIdx, u32, u64), bool> = HashMap::new(); // key -> first use placed
    for w in all.windows(2) {
        if (w[0].0, w[0].1, w[0].2) == (w[1].0, w[1].1, w[1].2) {
            dup_blocks += w[1].3.div_ceil(BLOCK as u64);
            shared.insert((w[0].0, w[0].1, w[0].2), false);
        }
    }
    (shared, dup_blocks)
}

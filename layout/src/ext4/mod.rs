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

pub mod dir;
pub mod disk;
pub mod export;
mod generate;
pub(crate) mod limits;

pub use limits::{Ext4Error, DIR_MAX_ENTRIES, MAX_FREE_BYTES};

use crate::tree::{FragIdx, Merged};
use disk::*;
use fragments::{Body, Kind, RegionKind};
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

fn default_journal_blocks(total: u64) -> u64 {
    match total {
        t if t < 32768 => 1024,
        t if t < 256 * 1024 => 4096,
        t if t < 512 * 1024 => 8192,
        t if t < 4096 * 1024 => 16384,
        t if t < 8192 * 1024 => 32768,
        t if t < 16384 * 1024 => 65536,
        _ => 131072,
    }
}

fn split_extents(logical: u64, physical: u64, blocks: u64, out: &mut Vec<PExtent>) {
    let mut done = 0;
    while done < blocks {
        let n = (blocks - done).min(MAX_EXTENT_LEN);
        out.push(PExtent {
            logical: (logical + done) as u32,
            physical: physical + done,
            len: n as u16,
        });
        done += n;
    }
}

/// The pieces of the block map that do not depend on the front area size.
struct DataPlan {
    /// Per fragment: (region index, logical blocks) of each data region.
    regions: Vec<(FragIdx, u32, u64)>,
}

impl Image {
    /// Synthesizes the filesystem over `merged`.
    pub fn build(merged: &Merged, opts: &Ext4Options) -> Result<Image, Ext4Error> {
        let nodes = &merged.nodes;
        // Identity: everything that determines the bytes.
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
        let fs_seed = crc(!0, &uuid);
        let time = nodes
            .iter()
            .map(|n| (n.mtime.sec, n.mtime.nsec))
            .max()
            .unwrap_or((0, 0));

        let t0 = std::time::Instant::now();
        // Inode numbers.
        let has_lf = merged.entries_of(0).iter().any(|e| e.name == b"lost+found");
        let base: u32 = if has_lf { 10 } else { 11 };
        let ino_of = |node: u32| if node == 0 { ROOT_INO } else { base + node };
        let last_ino = base + nodes.len() as u32 - 1;
        let last_ino = last_ino.max(LOST_FOUND_INO);
        let mut inodes = vec![
            InodeRec {
                node: u32::MAX,
                ..Default::default()
            };
            last_ino as usize + 1
        ];

        // Directories (content independent of placement).
        let mut stored: Vec<Vec<u8>> = Vec::new();
        let mut dir_blocks: HashMap<u32, (usize, usize, bool)> = HashMap::new(); // ino -> first stored, count, htree
        let mut push_dir =
            |stored: &mut Vec<Vec<u8>>, ino: u32, parent: u32, list: &[dir::DirIn]| {
                let (blocks, htree) =
                    dir::build(ino, parent, list, &hash_seed, inode_seed(fs_seed, ino, 0));
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
                    ino: ino_of(e.node),
                    ftype: dirent_type(nodes[e.node as usize].kind),
                })
                .collect();
            let lf_name: &[u8] = b"lost+found";
            if i == 0 && !has_lf {
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
            push_dir(&mut stored, ino_of(i as u32), ino_of(n.parent), &list);
        }
        if !has_lf {
            push_dir(&mut stored, LOST_FOUND_INO, ROOT_INO, &[]);
        }

        tracing::debug!(ms = t0.elapsed().as_millis() as u64, "directories built");
        // Xattr blocks, shared between inodes with identical sets.
        let mut xattr_sets: HashMap<Vec<u8>, (usize, u32)> = HashMap::new(); // block bytes -> (stored idx, refcount)
        const NO_XATTR: u32 = u32::MAX;
        let mut node_xattr: Vec<u32> = vec![NO_XATTR; nodes.len()]; // stored index
        for (i, _) in nodes.iter().enumerate() {
            let attrs = merged.xattrs_of(i as u32);
            if attrs.is_empty() {
                continue;
            }
            let blk = xattr_block(&attrs).ok_or_else(|| Ext4Error::XattrTooBig {
                path: node_path(merged, i as u32),
            })?;
            let e = xattr_sets.entry(blk).or_insert((usize::MAX, 0));
            e.1 += 1;
            node_xattr[i] = 0;
        }
        // Deterministic order of xattr blocks: by first user.
        let mut xattr_order: Vec<Vec<u8>> = Vec::new();
        for (i, _) in nodes.iter().enumerate() {
            if node_xattr[i] == NO_XATTR {
                continue;
            }
            let blk = xattr_block(&merged.xattrs_of(i as u32)).expect("built above");
            let e = xattr_sets.get_mut(&blk).expect("inserted above");
            if e.0 == usize::MAX {
                e.0 = stored.len();
                stored.push(blk.clone());
                xattr_order.push(blk.clone());
            }
            node_xattr[i] = e.0 as u32;
        }
        let xattr_refcount: HashMap<usize, u32> =
            xattr_sets.values().map(|&(idx, rc)| (idx, rc)).collect();

        // Long symlinks.
        let mut symlink_block: HashMap<u32, usize> = HashMap::new();
        for (i, n) in nodes.iter().enumerate() {
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

        // Extent-tree block counts need each file's extent count, which
        // does not depend on placement: count now, place later.
        let mut small_count = 0u64;
        let mut tree_total = 0usize;
        for (i, n) in nodes.iter().enumerate() {
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
        let stored_meta_blocks = stored.len() as u64 + tree_total as u64;

        // Data regions and deduplicated second uses.
        let plan = DataPlan {
            regions: merged
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
                .collect(),
        };
        let data_blocks: u64 = plan.regions.iter().map(|r| r.2).sum();
        // Contents used by several inodes (deduplicated in the fragment):
        // found by sorting every data extent once, so only the shared ones
        // are tracked while placing (memory: 16 bytes per extent, briefly).
        let mut all: Vec<(FragIdx, u32, u64, u64)> = Vec::new();
        for n in nodes.iter() {
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
        drop(all);

        tracing::debug!(
            ms = t0.elapsed().as_millis() as u64,
            "xattrs, symlinks, counts"
        );
        // Geometry, iterated until stable.
        if opts.free_bytes > MAX_FREE_BYTES {
            return Err(Ext4Error::FreeTooLarge(opts.free_bytes));
        }
        let free_blocks = opts.free_bytes.div_ceil(BLOCK as u64);
        let tail = stored_meta_blocks + small_count + data_blocks + dup_blocks;
        let want_inodes = last_ino as u64 + (opts.free_bytes / 16384).max(64);
        let mut groups = 1u64;
        let journal_blocks = default_journal_blocks(tail + free_blocks);
        let (total, groups, ipg, itable_per_group, gdt_blocks) = loop {
            let groups_for_inodes = want_inodes.div_ceil(32768).max(1);
            let g = groups.max(groups_for_inodes);
            let ipg = (want_inodes.div_ceil(g).div_ceil(16) * 16).min(32768);
            if ipg * g < last_ino as u64 {
                return Err(Ext4Error::TooManyInodes(want_inodes));
            }
            let itpg = ipg * INODE_SIZE as u64 / BLOCK as u64;
            let gdtb = (g * DESC_SIZE as u64).div_ceil(BLOCK as u64);
            let front = 1 + gdtb + 2 * g + itpg * g;
            // The kernel keeps min(blocks/50, 4096) blocks back from df's
            // "available" (ext4_calculate_resv_clusters): add them, so the
            // guest sees the free space the manifest asks for.
            let base = front + journal_blocks + tail + free_blocks;
            let mut total = base;
            loop {
                let t = base + (total / 50).min(4096);
                if t == total {
                    break;
                }
                total = t;
            }
            let need_groups = total.div_ceil(BLOCKS_PER_GROUP);
            if need_groups < g {
                // More groups than blocks need (for inodes): grow the free
                // space so the last group is a real one.
                total = total.max((g - 1) * BLOCKS_PER_GROUP + 1024);
            }
            if total.div_ceil(BLOCKS_PER_GROUP) == g {
                break (total, g, ipg as u32, itpg, gdtb);
            }
            groups = total.div_ceil(BLOCKS_PER_GROUP);
        };
        let free_blocks = total
            - (1 + gdt_blocks + 2 * groups + itable_per_group * groups + journal_blocks + tail);
        let gdt_start = 1;
        let bb_start = gdt_start + gdt_blocks;
        let ib_start = bb_start + groups;
        let it_start = ib_start + groups;
        let journal_start = it_start + itable_per_group * groups;
        let stored_start = journal_start + journal_blocks;
        let tree_start = stored_start + stored.len() as u64;
        let small_start = stored_start + stored_meta_blocks;
        let data_start = small_start + small_count;
        let dup_start = data_start + data_blocks;
        let used_end = dup_start + dup_blocks;
        debug_assert_eq!(used_end + free_blocks, total);

        // The map, and file extents.
        let mut map = vec![
            MapExtent {
                start: 0,
                len: journal_start + 1,
                source: Source::Meta,
            },
            MapExtent {
                start: journal_start + 1,
                len: journal_blocks - 1,
                source: Source::Zero,
            },
            MapExtent {
                start: stored_start,
                len: stored_meta_blocks,
                source: Source::Meta,
            },
        ];
        let mut region_base: HashMap<(FragIdx, u32), u64> = HashMap::new();
        let mut at = data_start;
        map.reserve_exact(plan.regions.len() + 3);
        let mut small: Vec<SmallBlock> = Vec::with_capacity(small_count as usize);
        for &(f, r, n) in &plan.regions {
            region_base.insert((f, r), at);
            if n > 0 {
                map.push(MapExtent {
                    start: at,
                    len: n,
                    source: Source::Fragment {
                        frag: f,
                        region: r,
                        block: 0,
                    },
                });
            }
            at += n;
        }
        let mut extents: Vec<PExtent> = Vec::new();
        let mut small_at = small_start;
        let mut dup_at = dup_start;
        let mut tree_at = tree_start;
        let mut node_iblock: HashMap<u32, [u8; 60]> = HashMap::new();

        for (i, n) in nodes.iter().enumerate() {
            let ino = ino_of(i as u32);
            if n.kind != Kind::Directory && n.nlink > 65000 {
                return Err(Ext4Error::TooManyLinks {
                    path: node_path(merged, i as u32),
                    n: n.nlink,
                });
            }
            let xblock = if node_xattr[i] == NO_XATTR {
                0
            } else {
                stored_start + node_xattr[i] as u64
            };
            let mut rec = InodeRec {
                node: i as u32,
                mode: (n.kind.mode_bits() | n.perm as u32) as u16,
                links: if n.nlink > 65000 && n.kind == Kind::Directory {
                    1
                } else {
                    n.nlink as u16
                },
                xattr_block: xblock,
                ..Default::default()
            };
            match n.kind {
                Kind::Regular => {
                    let (f, fino) = n.source.expect("files have a source");
                    let frag = &merged.fragments[f as usize];
                    rec.size = frag.metadata().inode(fino).size();
                    if rec.size > (u32::MAX as u64) * BLOCK as u64 {
                        return Err(Ext4Error::FileTooLarge {
                            path: node_path(merged, i as u32),
                            size: rec.size,
                        });
                    }
                    rec.flags = EXT4_EXTENTS_FL;
                    rec.ext_start = extents.len() as u32;
                    for e in frag.metadata().extents_of(fino) {
                        let region = frag.region(e.region).expect("checked at open");
                        let lblock = e.file_offset / BLOCK as u64;
                        if region.kind == RegionKind::Small {
                            small.push(SmallBlock {
                                offset: e.region_offset,
                                len: e.len as u32,
                                frag: f,
                                region: e.region as u16,
                            });
                            split_extents(lblock, small_at, 1, &mut extents);
                            small_at += 1;
                            rec.data_blocks += 1;
                        } else {
                            let nb = e.len.div_ceil(BLOCK as u64);
                            let first_use = match shared.get_mut(&(f, e.region, e.region_offset)) {
                                None => true,
                                Some(placed) => !std::mem::replace(placed, true),
                            };
                            let phys = if first_use {
                                region_base[&(f, e.region)] + e.region_offset / BLOCK as u64
                            } else {
                                let p = dup_at;
                                map.push(MapExtent {
                                    start: p,
                                    len: nb,
                                    source: Source::Fragment {
                                        frag: f,
                                        region: e.region,
                                        block: e.region_offset / BLOCK as u64,
                                    },
                                });
                                dup_at += nb;
                                p
                            };
                            split_extents(lblock, phys, nb, &mut extents);
                            rec.data_blocks += nb;
                        }
                    }
                    rec.ext_count = extents.len() as u32 - rec.ext_start;
                    let tb = extent_tree_blocks(rec.ext_count as usize);
                    if tb > 0 {
                        rec.tree_first = tree_at;
                        rec.tree_blocks = tb as u32;
                        tree_at += tb as u64;
                    }
                }
                Kind::Directory => {
                    let (first, count, htree) = dir_blocks[&ino];
                    rec.size = count as u64 * BLOCK as u64;
                    rec.flags = EXT4_EXTENTS_FL | if htree { EXT4_INDEX_FL } else { 0 };
                    rec.ext_start = extents.len() as u32;
                    split_extents(0, stored_start + first as u64, count as u64, &mut extents);
                    rec.ext_count = extents.len() as u32 - rec.ext_start;
                    rec.data_blocks = count as u64;
                }
                Kind::Symlink => {
                    let (f, fino) = n.source.expect("symlinks have a source");
                    let t = merged.fragments[f as usize]
                        .metadata()
                        .symlink_target(fino)
                        .unwrap_or(b"");
                    rec.size = t.len() as u64;
                    if let Some(&s) = symlink_block.get(&(i as u32)) {
                        rec.flags = EXT4_EXTENTS_FL;
                        rec.ext_start = extents.len() as u32;
                        split_extents(0, stored_start + s as u64, 1, &mut extents);
                        rec.ext_count = 1;
                        rec.data_blocks = 1;
                    } else {
                        let mut ib = [0u8; 60];
                        ib[..t.len()].copy_from_slice(t);
                        node_iblock.insert(i as u32, ib);
                        rec.special = true;
                    }
                }
                Kind::CharDevice | Kind::BlockDevice => {
                    let (f, fino) = n.source.expect("devices have a source");
                    let mut ib = [0u8; 60];
                    if let Body::Device { major, minor } =
                        merged.fragments[f as usize].metadata().inode(fino).body
                    {
                        if major >= 1 << 12 || minor >= 1 << 20 {
                            return Err(Ext4Error::DeviceNumber {
                                path: node_path(merged, i as u32),
                                major,
                                minor,
                            });
                        }
                        if major < 256 && minor < 256 {
                            put32(&mut ib, 0, (major << 8) | minor);
                        } else {
                            put32(
                                &mut ib,
                                4,
                                (minor & 0xff) | (major << 8) | ((minor & !0xff) << 12),
                            );
                        }
                    }
                    node_iblock.insert(i as u32, ib);
                    rec.special = true;
                }
                Kind::Fifo | Kind::Socket => rec.special = true,
            }
            if !has_lf && i == 0 {
                // lost+found, then ext4's clamp of directory links to 1.
                let nl = n.nlink + 1;
                rec.links = if nl > 65000 { 1 } else { nl as u16 };
            }
            inodes[ino as usize] = rec;
        }
        debug_assert_eq!(tree_at, small_start);
        debug_assert_eq!(small_at, data_start);
        if !small.is_empty() {
            map.push(MapExtent {
                start: small_start,
                len: small.len() as u64,
                source: Source::Small { first: 0 },
            });
        }
        debug_assert_eq!(dup_at, used_end);

        tracing::debug!(ms = t0.elapsed().as_millis() as u64, "inodes placed");
        // lost+found and the journal.
        if !has_lf {
            let (first, count, _) = dir_blocks[&LOST_FOUND_INO];
            let mut rec = InodeRec {
                node: u32::MAX,
                mode: 0o040700,
                links: 2,
                size: count as u64 * BLOCK as u64,
                flags: EXT4_EXTENTS_FL,
                ..Default::default()
            };
            rec.ext_start = extents.len() as u32;
            split_extents(0, stored_start + first as u64, count as u64, &mut extents);
            rec.ext_count = extents.len() as u32 - rec.ext_start;
            rec.data_blocks = count as u64;
            inodes[LOST_FOUND_INO as usize] = rec;
        }
        let mut jrec = InodeRec {
            node: u32::MAX,
            mode: 0o100600,
            links: 1,
            size: journal_blocks * BLOCK as u64,
            flags: EXT4_EXTENTS_FL,
            ..Default::default()
        };
        jrec.ext_start = extents.len() as u32;
        split_extents(0, journal_start, journal_blocks, &mut extents);
        jrec.ext_count = extents.len() as u32 - jrec.ext_start;
        jrec.data_blocks = journal_blocks;
        let (jiblock, _) = extent_tree(
            &extents[jrec.ext_start as usize..(jrec.ext_start + jrec.ext_count) as usize],
            0,
            0,
        );
        inodes[JOURNAL_INO as usize] = jrec;

        // Seal the xattr blocks now that their addresses are known.
        for (idx, rc) in &xattr_refcount {
            seal_xattr_block(&mut stored[*idx], fs_seed, stored_start + *idx as u64, *rc);
        }

        if free_blocks > 0 {
            map.push(MapExtent {
                start: used_end,
                len: free_blocks,
                source: Source::Zero,
            });
        }
        map.retain(|m| m.len > 0);
        merge_adjacent(&mut map);

        let mut img = Image {
            blocks: total,
            identity,
            uuid,
            map,
            small,
            fs_seed,
            groups,
            ipg,
            itable_per_group,
            gdt_start,
            gdt_blocks,
            bb_start,
            ib_start,
            it_start,
            journal_start,
            journal_blocks,
            stored_start,
            stored,
            used_end,
            last_ino,
            inodes,
            extents,
            sb: Vec::new(),
            gdt: Vec::new(),
            time,
            node_iblock,
        };
        img.build_tree_blocks();
        img.build_gdt_and_sb(opts, &hash_seed_bytes, &jiblock);
        Ok(img)
    }

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

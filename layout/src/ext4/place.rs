//! Placing everything in the geometry: the block map (metadata, journal,
//! data regions, second mappings of shared contents, small files, free
//! space) and the record of every inode with its extents.

use super::content::{DataPlan, DirBlocks, InodeNumbers, XattrBlocks, NO_XATTR};
use super::disk::*;
use super::geometry::Geometry;
use super::limits::Ext4Error;
use super::{merge_adjacent, node_path, InodeRec, MapExtent, SmallBlock, Source};
use crate::tree::{FragIdx, Merged, Node};
use fragments::{Body, Kind, RegionKind};
use std::collections::HashMap;

/// What placement produces.
pub(super) struct Placed {
    /// Sorted, adjacent runs joined.
    pub(super) map: Vec<MapExtent>,
    pub(super) small: Vec<SmallBlock>,
    /// By inode number.
    pub(super) inodes: Vec<InodeRec>,
    pub(super) extents: Vec<PExtent>,
    /// `i_block` of fast symlinks and devices, by node.
    pub(super) node_iblock: HashMap<u32, [u8; 60]>,
    /// The journal inode's `i_block` (the superblock keeps a copy).
    pub(super) journal_iblock: [u8; 60],
}

/// The placement-independent content `place` lays out.
pub(super) struct Content<'a> {
    pub(super) nums: &'a InodeNumbers,
    pub(super) dirs: &'a DirBlocks,
    pub(super) xattrs: &'a XattrBlocks,
    pub(super) symlinks: &'a HashMap<u32, usize>,
    pub(super) small_blocks: u64,
}

/// Places every inode of `merged`, then lost+found and the journal, and
/// completes the map.
pub(super) fn place(
    merged: &Merged,
    geo: &Geometry,
    content: &Content,
    plan: DataPlan,
) -> Result<Placed, Ext4Error> {
    let nums = content.nums;
    let mut p = Placer::new(merged, geo, content, plan);
    let mut inodes = vec![
        InodeRec {
            node: u32::MAX,
            ..Default::default()
        };
        nums.last_ino as usize + 1
    ];
    for (i, n) in merged.nodes.iter().enumerate() {
        inodes[nums.of(i as u32) as usize] = p.node(i as u32, n)?;
    }
    debug_assert_eq!(p.tree_at, geo.small_start);
    debug_assert_eq!(p.small_at, geo.data_start);
    if !p.small.is_empty() {
        p.map.push(MapExtent {
            start: geo.small_start,
            len: p.small.len() as u64,
            source: Source::Small { first: 0 },
        });
    }
    debug_assert_eq!(p.dup_at, geo.used_end);
    if !nums.has_lf {
        inodes[LOST_FOUND_INO as usize] = p.lost_found();
    }
    let (journal, journal_iblock) = p.journal();
    inodes[JOURNAL_INO as usize] = journal;
    if geo.free_blocks > 0 {
        p.map.push(MapExtent {
            start: geo.used_end,
            len: geo.free_blocks,
            source: Source::Zero,
        });
    }
    p.map.retain(|m| m.len > 0);
    merge_adjacent(&mut p.map);
    Ok(Placed {
        map: p.map,
        small: p.small,
        inodes,
        extents: p.extents,
        node_iblock: p.node_iblock,
        journal_iblock,
    })
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

/// The placing state: the map and extents so far, and the next free block
/// of each area placed block by block.
struct Placer<'a> {
    merged: &'a Merged,
    geo: &'a Geometry,
    content: &'a Content<'a>,
    map: Vec<MapExtent>,
    extents: Vec<PExtent>,
    small: Vec<SmallBlock>,
    node_iblock: HashMap<u32, [u8; 60]>,
    /// Where each data region is mapped.
    region_base: HashMap<(FragIdx, u32), u64>,
    /// Shared contents: whether their first use was placed.
    shared: HashMap<(FragIdx, u32, u64), bool>,
    small_at: u64,
    dup_at: u64,
    tree_at: u64,
}

impl<'a> Placer<'a> {
    /// The fixed part of the map (metadata, journal, stored metadata) and
    /// the data regions, one after the other.
    fn new(
        merged: &'a Merged,
        geo: &'a Geometry,
        content: &'a Content<'a>,
        plan: DataPlan,
    ) -> Self {
        let stored_meta = geo.small_start - geo.stored_start;
        let mut map = vec![
            MapExtent {
                start: 0,
                len: geo.journal_start + 1,
                source: Source::Meta,
            },
            MapExtent {
                start: geo.journal_start + 1,
                len: geo.journal_blocks - 1,
                source: Source::Zero,
            },
            MapExtent {
                start: geo.stored_start,
                len: stored_meta,
                source: Source::Meta,
            },
        ];
        let mut region_base: HashMap<(FragIdx, u32), u64> = HashMap::new();
        let mut at = geo.data_start;
        map.reserve_exact(plan.regions.len() + 3);
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
        Placer {
            merged,
            geo,
            content,
            map,
            extents: Vec::new(),
            small: Vec::with_capacity(content.small_blocks as usize),
            node_iblock: HashMap::new(),
            region_base,
            shared: plan.shared,
            small_at: geo.small_start,
            dup_at: geo.dup_start,
            tree_at: geo.tree_start,
        }
    }

    /// The record of merged node `i`.
    fn node(&mut self, i: u32, n: &Node) -> Result<InodeRec, Ext4Error> {
        let merged = self.merged;
        if n.kind != Kind::Directory && n.nlink > 65000 {
            return Err(Ext4Error::TooManyLinks {
                path: node_path(merged, i),
                n: n.nlink,
            });
        }
        let xattr = self.content.xattrs.of_node[i as usize];
        let xblock = if xattr == NO_XATTR {
            0
        } else {
            self.geo.stored_start + xattr as u64
        };
        let mut rec = InodeRec {
            node: i,
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
            Kind::Regular => self.regular(&mut rec, i, n)?,
            Kind::Directory => {
                let ino = self.content.nums.of(i);
                let (first, count, htree) = self.content.dirs[&ino];
                self.directory_blocks(&mut rec, first, count);
                if htree {
                    rec.flags |= EXT4_INDEX_FL;
                }
            }
            Kind::Symlink => self.symlink(&mut rec, i, n),
            Kind::CharDevice | Kind::BlockDevice => self.device(&mut rec, i, n)?,
            Kind::Fifo | Kind::Socket => rec.special = true,
        }
        if !self.content.nums.has_lf && i == 0 {
            // lost+found, then ext4's clamp of directory links to 1.
            let nl = n.nlink + 1;
            rec.links = if nl > 65000 { 1 } else { nl as u16 };
        }
        Ok(rec)
    }

    /// A regular file: small files to their own block, data extents where
    /// their region is mapped (the second use of shared contents to a
    /// second mapping), extent-tree blocks when more than 4 extents.
    fn regular(&mut self, rec: &mut InodeRec, i: u32, n: &Node) -> Result<(), Ext4Error> {
        let (f, fino) = n.source.expect("files have a source");
        let frag = &self.merged.fragments[f as usize];
        rec.size = frag.metadata().inode(fino).size();
        if rec.size > (u32::MAX as u64) * BLOCK as u64 {
            return Err(Ext4Error::FileTooLarge {
                path: node_path(self.merged, i),
                size: rec.size,
            });
        }
        rec.flags = EXT4_EXTENTS_FL;
        rec.ext_start = self.extents.len() as u32;
        for e in frag.metadata().extents_of(fino) {
            let region = frag.region(e.region).expect("checked at open");
            let lblock = e.file_offset / BLOCK as u64;
            if region.kind == RegionKind::Small {
                self.small.push(SmallBlock {
                    offset: e.region_offset,
                    len: e.len as u32,
                    frag: f,
                    region: e.region as u16,
                });
                split_extents(lblock, self.small_at, 1, &mut self.extents);
                self.small_at += 1;
                rec.data_blocks += 1;
            } else {
                let nb = e.len.div_ceil(BLOCK as u64);
                let phys = self.data_blocks(f, e.region, e.region_offset, nb);
                split_extents(lblock, phys, nb, &mut self.extents);
                rec.data_blocks += nb;
            }
        }
        rec.ext_count = self.extents.len() as u32 - rec.ext_start;
        let tb = extent_tree_blocks(rec.ext_count as usize);
        if tb > 0 {
            rec.tree_first = self.tree_at;
            rec.tree_blocks = tb as u32;
            self.tree_at += tb as u64;
        }
        Ok(())
    }

    /// Where `nb` blocks of data at `region_offset` of region `region` of
    /// fragment `f` are: in the region's mapping, or (a shared content
    /// used again) in a second mapping made now.
    fn data_blocks(&mut self, f: FragIdx, region: u32, region_offset: u64, nb: u64) -> u64 {
        let first_use = match self.shared.get_mut(&(f, region, region_offset)) {
            None => true,
            Some(placed) => !std::mem::replace(placed, true),
        };
        if first_use {
            return self.region_base[&(f, region)] + region_offset / BLOCK as u64;
        }
        let p = self.dup_at;
        self.map.push(MapExtent {
            start: p,
            len: nb,
            source: Source::Fragment {
                frag: f,
                region,
                block: region_offset / BLOCK as u64,
            },
        });
        self.dup_at += nb;
        p
    }

    /// A directory's `count` blocks, stored from index `first`.
    fn directory_blocks(&mut self, rec: &mut InodeRec, first: usize, count: usize) {
        rec.size = count as u64 * BLOCK as u64;
        rec.flags = EXT4_EXTENTS_FL;
        rec.ext_start = self.extents.len() as u32;
        split_extents(
            0,
            self.geo.stored_start + first as u64,
            count as u64,
            &mut self.extents,
        );
        rec.ext_count = self.extents.len() as u32 - rec.ext_start;
        rec.data_blocks = count as u64;
    }

    /// A symlink: its stored block, or (fast symlink) its target in `i_block`.
    fn symlink(&mut self, rec: &mut InodeRec, i: u32, n: &Node) {
        let (f, fino) = n.source.expect("symlinks have a source");
        let t = self.merged.fragments[f as usize]
            .metadata()
            .symlink_target(fino)
            .unwrap_or(b"");
        rec.size = t.len() as u64;
        if let Some(&s) = self.content.symlinks.get(&i) {
            rec.flags = EXT4_EXTENTS_FL;
            rec.ext_start = self.extents.len() as u32;
            split_extents(0, self.geo.stored_start + s as u64, 1, &mut self.extents);
            rec.ext_count = 1;
            rec.data_blocks = 1;
        } else {
            let mut ib = [0u8; 60];
            ib[..t.len()].copy_from_slice(t);
            self.node_iblock.insert(i, ib);
            rec.special = true;
        }
    }

    /// A device: its number in `i_block`, old or new encoding.
    fn device(&mut self, rec: &mut InodeRec, i: u32, n: &Node) -> Result<(), Ext4Error> {
        let (f, fino) = n.source.expect("devices have a source");
        let mut ib = [0u8; 60];
        if let Body::Device { major, minor } = self.merged.fragments[f as usize]
            .metadata()
            .inode(fino)
            .body
        {
            if major >= 1 << 12 || minor >= 1 << 20 {
                return Err(Ext4Error::DeviceNumber {
                    path: node_path(self.merged, i),
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
        self.node_iblock.insert(i, ib);
        rec.special = true;
        Ok(())
    }

    /// Our lost+found (the tree has none): root's, mode 0700.
    fn lost_found(&mut self) -> InodeRec {
        let (first, count, _) = self.content.dirs[&LOST_FOUND_INO];
        let mut rec = InodeRec {
            node: u32::MAX,
            mode: 0o040700,
            links: 2,
            ..Default::default()
        };
        self.directory_blocks(&mut rec, first, count);
        rec
    }

    /// The journal inode, one extent over the journal area; and its `i_block`.
    fn journal(&mut self) -> (InodeRec, [u8; 60]) {
        let geo = self.geo;
        let mut rec = InodeRec {
            node: u32::MAX,
            mode: 0o100600,
            links: 1,
            size: geo.journal_blocks * BLOCK as u64,
            flags: EXT4_EXTENTS_FL,
            ..Default::default()
        };
        rec.ext_start = self.extents.len() as u32;
        split_extents(0, geo.journal_start, geo.journal_blocks, &mut self.extents);
        rec.ext_count = self.extents.len() as u32 - rec.ext_start;
        rec.data_blocks = geo.journal_blocks;
        let (iblock, _) = extent_tree(
            &self.extents[rec.ext_start as usize..(rec.ext_start + rec.ext_count) as usize],
            0,
            0,
        );
        (rec, iblock)
    }
}

//! The metadata generated when it is read: bitmaps, group descriptors,
//! the superblock and inode tables come from the compact per-inode records
//! of `Image`, so the image never holds its inode tables in memory.

use super::disk::*;
use super::{Ext4Options, Image};
use crate::tree::Merged;

impl Image {
    /// Generates the extent-tree blocks of big files into `stored`.
    pub(super) fn build_tree_blocks(&mut self) {
        let mut blocks: Vec<(u64, Vec<u8>)> = Vec::new();
        for (ino, r) in self.inodes.iter().enumerate() {
            if r.tree_blocks == 0 {
                continue;
            }
            let exts = &self.extents[r.ext_start as usize..(r.ext_start + r.ext_count) as usize];
            let (_, bl) = extent_tree(exts, r.tree_first, inode_seed(self.fs_seed, ino as u32, 0));
            for (k, b) in bl.into_iter().enumerate() {
                blocks.push((r.tree_first + k as u64, b));
            }
        }
        blocks.sort_by_key(|b| b.0);
        for (blk, b) in blocks {
            debug_assert_eq!(blk, self.stored_start + self.stored.len() as u64);
            self.stored.push(b);
        }
    }

    fn block_bitmap(&self, g: u64) -> Vec<u8> {
        let mut b = vec![0u8; BLOCK];
        let first = g * BLOCKS_PER_GROUP;
        for i in 0..BLOCKS_PER_GROUP {
            let blk = first + i;
            if blk < self.used_end || blk >= self.blocks {
                b[(i / 8) as usize] |= 1 << (i % 8);
            }
        }
        b
    }

    fn inode_bitmap(&self, g: u64) -> Vec<u8> {
        let mut b = vec![0u8; BLOCK];
        for i in 0..(BLOCK as u64 * 8) {
            let ino = g * self.ipg as u64 + i + 1;
            if i >= self.ipg as u64 || ino <= self.last_ino as u64 {
                b[(i / 8) as usize] |= 1 << (i % 8);
            }
        }
        b
    }

    pub(super) fn build_gdt_and_sb(
        &mut self,
        opts: &Ext4Options,
        hash_seed: &[u8; 16],
        jiblock: &[u8; 60],
    ) {
        let mut gdt = vec![0u8; (self.gdt_blocks as usize) * BLOCK];
        let mut free_total = 0u64;
        let mut free_inodes_total = 0u64;
        for g in 0..self.groups {
            let first = g * BLOCKS_PER_GROUP;
            let end = ((g + 1) * BLOCKS_PER_GROUP).min(self.blocks);
            let free = end.saturating_sub(self.used_end.max(first));
            let ino_first = g * self.ipg as u64 + 1;
            let used_inodes = (self.last_ino as u64 + 1)
                .saturating_sub(ino_first)
                .min(self.ipg as u64);
            let mut dirs = 0u32;
            for ino in ino_first..ino_first + used_inodes {
                let r = &self.inodes[ino as usize];
                if r.mode & 0o170000 == 0o040000 {
                    dirs += 1;
                }
            }
            let bb = self.block_bitmap(g);
            let ib = self.inode_bitmap(g);
            let d = GroupDesc {
                block_bitmap: self.bb_start + g,
                inode_bitmap: self.ib_start + g,
                inode_table: self.it_start + g * self.itable_per_group,
                free_blocks: free as u32,
                free_inodes: (self.ipg as u64 - used_inodes) as u32,
                used_dirs: dirs,
                // e2fsck's rule (ext2fs_set_gdt_csum): a group whose blocks
                // are all free, other than the last, is BLOCK_UNINIT.
                flags: BG_INODE_ZEROED
                    | if used_inodes == 0 { BG_INODE_UNINIT } else { 0 }
                    | if free == BLOCKS_PER_GROUP && g + 1 != self.groups {
                        BG_BLOCK_UNINIT
                    } else {
                        0
                    },
                itable_unused: (self.ipg as u64 - used_inodes) as u32,
                block_bitmap_csum: crc(self.fs_seed, &bb[..(BLOCKS_PER_GROUP / 8) as usize]),
                inode_bitmap_csum: crc(self.fs_seed, &ib[..(self.ipg / 8) as usize]),
            };
            let enc = encode_group_desc(self.fs_seed, g as u32, &d);
            gdt[g as usize * DESC_SIZE..(g as usize + 1) * DESC_SIZE].copy_from_slice(&enc);
            free_total += free;
            free_inodes_total += self.ipg as u64 - used_inodes;
        }
        let mut label = [0u8; 16];
        let lb = opts.label.as_bytes();
        label[..lb.len().min(16)].copy_from_slice(&lb[..lb.len().min(16)]);
        let mut jnl = [0u32; 17];
        for (i, w) in jnl.iter_mut().take(15).enumerate() {
            *w = u32::from_le_bytes(jiblock[4 * i..4 * i + 4].try_into().expect("4 bytes"));
        }
        let jsize = self.journal_blocks * BLOCK as u64;
        jnl[15] = (jsize >> 32) as u32;
        jnl[16] = jsize as u32;
        // The newest mtime, capped at the end of the signed 32-bit epoch so a
        // file dated far ahead does not put the superblock in the future.
        let time = self.time.0.clamp(0, i32::MAX as i64) as u32;
        self.sb = superblock_block(&SuperInfo {
            inodes_count: (self.ipg as u64 * self.groups) as u32,
            blocks_count: self.blocks,
            free_blocks: free_total,
            free_inodes: free_inodes_total as u32,
            inodes_per_group: self.ipg,
            time,
            uuid: self.uuid,
            label,
            hash_seed: *hash_seed,
            jnl_blocks: jnl,
            log_groups_per_flex: 4,
        });
        self.gdt = gdt;
    }

    fn inode_bytes(&self, merged: &Merged, ino: u32) -> [u8; INODE_SIZE] {
        if ino as usize >= self.inodes.len() || ino == 0 {
            return [0; INODE_SIZE];
        }
        let r = &self.inodes[ino as usize];
        if r.mode == 0 {
            // Reserved inodes we do not use: zeroed, with a valid checksum.
            let f = InodeFields {
                mode: 0,
                uid: 0,
                gid: 0,
                size: 0,
                mtime: (0, 0),
                links: 0,
                blocks_512: 0,
                flags: 0,
                iblock: [0; 60],
                xattr_block: 0,
            };
            return encode_inode(self.fs_seed, ino, &f);
        }
        let (uid, gid, mtime) = if r.node == u32::MAX {
            (0, 0, self.time)
        } else {
            let n = &merged.nodes[r.node as usize];
            (n.uid, n.gid, (n.mtime.sec, n.mtime.nsec))
        };
        let iblock = if r.special {
            self.node_iblock.get(&r.node).copied().unwrap_or([0; 60])
        } else {
            let exts = &self.extents[r.ext_start as usize..(r.ext_start + r.ext_count) as usize];
            extent_tree(exts, r.tree_first, inode_seed(self.fs_seed, ino, 0)).0
        };
        let blocks = r.data_blocks + r.tree_blocks as u64 + (r.xattr_block != 0) as u64;
        let f = InodeFields {
            mode: r.mode,
            uid,
            gid,
            size: r.size,
            mtime,
            links: r.links,
            blocks_512: blocks * 8,
            flags: r.flags,
            iblock,
            xattr_block: r.xattr_block,
        };
        encode_inode(self.fs_seed, ino, &f)
    }

    /// The bytes of a synthesized metadata block (`Source::Meta`).
    pub fn read_meta(&self, merged: &Merged, block: u64, buf: &mut [u8]) {
        debug_assert_eq!(buf.len(), BLOCK);
        buf.fill(0);
        if block == 0 {
            buf.copy_from_slice(&self.sb);
        } else if block < self.bb_start {
            let i = (block - self.gdt_start) as usize * BLOCK;
            buf.copy_from_slice(&self.gdt[i..i + BLOCK]);
        } else if block < self.ib_start {
            buf.copy_from_slice(&self.block_bitmap(block - self.bb_start));
        } else if block < self.it_start {
            buf.copy_from_slice(&self.inode_bitmap(block - self.ib_start));
        } else if block < self.journal_start {
            let rel = block - self.it_start;
            let g = rel / self.itable_per_group;
            let k = rel % self.itable_per_group;
            let per = (BLOCK / INODE_SIZE) as u64;
            for j in 0..per {
                let ino = g * self.ipg as u64 + k * per + j + 1;
                if ino <= self.last_ino as u64 {
                    let b = self.inode_bytes(merged, ino as u32);
                    buf[j as usize * INODE_SIZE..(j as usize + 1) * INODE_SIZE].copy_from_slice(&b);
                }
            }
        } else if block == self.journal_start {
            buf.copy_from_slice(&journal_superblock(self.journal_blocks as u32, &self.uuid));
        } else if block >= self.stored_start && block < self.stored_start + self.stored.len() as u64
        {
            buf.copy_from_slice(&self.stored[(block - self.stored_start) as usize]);
        }
    }
}

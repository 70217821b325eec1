//! The volume's geometry: size, groups and inodes per group, and where
//! each area starts. The front area's size depends on the group count,
//! which depends on the total size: iterated until stable.

use super::disk::*;
use super::limits::{Ext4Error, MAX_FREE_BYTES};
use super::Ext4Options;

/// The sizes, in blocks, of what follows the journal.
pub(super) struct Tail {
    /// Directory, xattr and long-symlink blocks (built already).
    pub(super) stored: u64,
    /// Extent-tree blocks (built once placed), right after `stored`.
    pub(super) tree: u64,
    pub(super) small: u64,
    pub(super) data: u64,
    pub(super) dup: u64,
}

impl Tail {
    /// Stored metadata: everything `Image::read_meta` serves after the journal.
    pub(super) fn stored_meta(&self) -> u64 {
        self.stored + self.tree
    }
    fn total(&self) -> u64 {
        self.stored_meta() + self.small + self.data + self.dup
    }
}

/// Sizes and the start of each area, in blocks.
pub(super) struct Geometry {
    pub(super) total: u64,
    pub(super) groups: u64,
    pub(super) ipg: u32,
    pub(super) itable_per_group: u64,
    pub(super) gdt_blocks: u64,
    pub(super) journal_blocks: u64,
    pub(super) free_blocks: u64,
    pub(super) gdt_start: u64,
    pub(super) bb_start: u64,
    pub(super) ib_start: u64,
    pub(super) it_start: u64,
    pub(super) journal_start: u64,
    pub(super) stored_start: u64,
    pub(super) tree_start: u64,
    pub(super) small_start: u64,
    pub(super) data_start: u64,
    pub(super) dup_start: u64,
    pub(super) used_end: u64,
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

impl Geometry {
    /// The geometry of a volume with inodes up to `last_ino`, `tail` after
    /// its journal, and the free space `opts` asks for.
    pub(super) fn compute(
        opts: &Ext4Options,
        last_ino: u32,
        tail: &Tail,
    ) -> Result<Geometry, Ext4Error> {
        if opts.free_bytes > MAX_FREE_BYTES {
            return Err(Ext4Error::FreeTooLarge(opts.free_bytes));
        }
        let free_blocks = opts.free_bytes.div_ceil(BLOCK as u64);
        let tail_blocks = tail.total();
        let want_inodes = last_ino as u64 + (opts.free_bytes / 16384).max(64);
        let mut groups = 1u64;
        let journal_blocks = default_journal_blocks(tail_blocks + free_blocks);
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
            let base = front + journal_blocks + tail_blocks + free_blocks;
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
            - (1 + gdt_blocks
                + 2 * groups
                + itable_per_group * groups
                + journal_blocks
                + tail_blocks);
        let gdt_start = 1;
        let bb_start = gdt_start + gdt_blocks;
        let ib_start = bb_start + groups;
        let it_start = ib_start + groups;
        let journal_start = it_start + itable_per_group * groups;
        let stored_start = journal_start + journal_blocks;
        let tree_start = stored_start + tail.stored;
        let small_start = stored_start + tail.stored_meta();
        let data_start = small_start + tail.small;
        let dup_start = data_start + tail.data;
        let used_end = dup_start + tail.dup;
        debug_assert_eq!(used_end + free_blocks, total);
        Ok(Geometry {
            total,
            groups,
            ipg,
            itable_per_group,
            gdt_blocks,
            journal_blocks,
            free_blocks,
            gdt_start,
            bb_start,
            ib_start,
            it_start,
            journal_start,
            stored_start,
            tree_start,
            small_start,
            data_start,
            dup_start,
            used_end,
        })
    }
}

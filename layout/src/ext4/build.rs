//! `Image::build`: the phases of the synthesis, in order. Content first
//! (what does not depend on placement, `content`), then the geometry its
//! sizes need (`geometry`), then placement (`place`), then the blocks that
//! need addresses (xattr seals, extent trees) and the superblock with the
//! group descriptors (`generate`).

use super::content::{
    directories, long_symlinks, newest_mtime, DataPlan, ExtentCounts, InodeNumbers, Seeds,
    XattrBlocks,
};
use super::geometry::{Geometry, Tail};
use super::limits::Ext4Error;
use super::place::{place, Content};
use super::{Ext4Options, Image};
use crate::tree::Merged;

impl Image {
    /// Synthesizes the filesystem over `merged`.
    pub fn build(merged: &Merged, opts: &Ext4Options) -> Result<Image, Ext4Error> {
        let seeds = Seeds::derive(merged, opts);
        let time = newest_mtime(merged);
        let t0 = std::time::Instant::now();
        let nums = InodeNumbers::new(merged);

        // Stored metadata that does not depend on placement.
        let mut stored: Vec<Vec<u8>> = Vec::new();
        let dirs = directories(merged, &nums, &seeds, &mut stored)?;
        tracing::debug!(ms = t0.elapsed().as_millis() as u64, "directories built");
        let xattrs = XattrBlocks::build(merged, &mut stored)?;
        let symlinks = long_symlinks(merged, &mut stored);
        let counts = ExtentCounts::count(merged)?;
        let plan = DataPlan::new(merged);
        tracing::debug!(
            ms = t0.elapsed().as_millis() as u64,
            "xattrs, symlinks, counts"
        );

        let geo = Geometry::compute(
            opts,
            nums.last_ino,
            &Tail {
                stored: stored.len() as u64,
                tree: counts.tree_blocks,
                small: counts.small_blocks,
                data: plan.data_blocks,
                dup: plan.dup_blocks,
            },
        )?;
        let content = Content {
            nums: &nums,
            dirs: &dirs,
            xattrs: &xattrs,
            symlinks: &symlinks,
            small_blocks: counts.small_blocks,
        };
        let placed = place(merged, &geo, &content, plan)?;
        tracing::debug!(ms = t0.elapsed().as_millis() as u64, "inodes placed");

        // Blocks that needed their addresses.
        xattrs.seal(&mut stored, seeds.fs_seed, geo.stored_start);
        let mut img = Image {
            blocks: geo.total,
            identity: seeds.identity,
            uuid: seeds.uuid,
            map: placed.map,
            small: placed.small,
            fs_seed: seeds.fs_seed,
            groups: geo.groups,
            ipg: geo.ipg,
            itable_per_group: geo.itable_per_group,
            gdt_start: geo.gdt_start,
            gdt_blocks: geo.gdt_blocks,
            bb_start: geo.bb_start,
            ib_start: geo.ib_start,
            it_start: geo.it_start,
            journal_start: geo.journal_start,
            journal_blocks: geo.journal_blocks,
            stored_start: geo.stored_start,
            stored,
            used_end: geo.used_end,
            last_ino: nums.last_ino,
            inodes: placed.inodes,
            extents: placed.extents,
            sb: Vec::new(),
            gdt: Vec::new(),
            time,
            node_iblock: placed.node_iblock,
        };
        img.build_tree_blocks();
        img.build_gdt_and_sb(opts, &seeds.hash_seed_bytes, &placed.journal_iblock);
        Ok(img)
    }
}

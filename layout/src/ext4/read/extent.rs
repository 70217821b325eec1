//! From an inode to its block map: extent trees of any depth (checked
//! node by node: magic, counts, depth, checksum, logical order, each tree
//! block used once), or the old direct/indirect block map; then file
//! bytes through the map, holes and unwritten extents reading as zeros.

use super::error::{check_csum, BlockKind, ReadError, Result, Where};
use super::inode::Inode;
use super::le::{le16, le32};
use super::source::ReadAt;
use super::Ext4;
use crate::ext4::disk::{crc, inode_seed};
use fragments::Kind;
use std::collections::HashSet;

const EXTENT_MAGIC: u16 = 0xF30A;
/// The kernel's EXT4_MAX_EXTENT_DEPTH.
const MAX_DEPTH: u16 = 5;
/// Largest initialized extent; longer lengths mark unwritten extents.
const INIT_MAX_LEN: u32 = 32768;
/// Logical blocks are 32-bit (EXT_MAX_BLOCKS).
const LOGICAL_END: u64 = 1 << 32;

/// A run of a file's logical blocks stored at consecutive physical blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub logical: u64,
    pub physical: u64,
    pub len: u32,
    /// Allocated but never written: reads as zeros, whatever the blocks hold.
    pub unwritten: bool,
}

struct TreeWalk<'a> {
    ino: u32,
    seed: Option<u32>,
    out: &'a mut Vec<Extent>,
    seen: HashSet<u64>,
}

impl<R: ReadAt> Ext4<R> {
    /// The block map of inode `ino`, sorted by logical block. Empty for
    /// inodes without data blocks (devices, fifos, sockets, fast symlinks).
    pub fn extents(&self, ino: u32) -> Result<Vec<Extent>> {
        let i = self.inode_core(ino)?;
        self.extents_of(&i)
    }

    pub(crate) fn extents_of(&self, i: &Inode) -> Result<Vec<Extent>> {
        match i.kind {
            Kind::Regular | Kind::Directory => {}
            Kind::Symlink if self.is_fast_symlink(i) => return Ok(Vec::new()),
            Kind::Symlink => {}
            _ => return Ok(Vec::new()),
        }
        let mut out = Vec::new();
        if i.has_extents() {
            let mut w = TreeWalk {
                ino: i.ino,
                seed: self
                    .sb
                    .csum_seed
                    .map(|s| inode_seed(s, i.ino, i.generation)),
                out: &mut out,
                seen: HashSet::new(),
            };
            self.extent_node(&mut w, &i.iblock, None, 0, LOGICAL_END)?;
        } else {
            self.block_map(i, &mut out)?;
        }
        self.check_physical_overlap(i.ino, &out)?;
        Ok(out)
    }

    /// Is `[start, start + len)` inside the filesystem, past the
    /// superblock's block?
    pub(crate) fn blocks_valid(&self, start: u64, len: u64) -> bool {
        start > self.sb.first_data_block as u64
            && start
                .checked_add(len)
                .is_some_and(|e| e <= self.sb.blocks_count)
    }

    /// One node: the root in i_block (`block` None, 60 bytes) or a tree
    /// block. Its entries must lie in `[lo, hi)` logical blocks.
    fn extent_node(
        &self,
        w: &mut TreeWalk,
        node: &[u8],
        block: Option<(u64, u16)>,
        lo: u64,
        hi: u64,
    ) -> Result<()> {
        let ino = w.ino;
        let at = |off: usize| match block {
            None => Where::Inode(ino),
            Some((b, _)) => Where::at(ino, BlockKind::ExtentTree, b, off),
        };
        let field = |off: usize, name: &'static str, problem: String| {
            Err(ReadError::corrupt(at(off), name, problem))
        };
        let magic = le16(node, 0);
        if magic != EXTENT_MAGIC {
            return field(
                0,
                "eh_magic",
                format!("{magic:#06x}, not {EXTENT_MAGIC:#06x}"),
            );
        }
        let entries = le16(node, 2) as usize;
        let max = le16(node, 4) as usize;
        let depth = le16(node, 6);
        let cap = (node.len() - 12) / 12;
        if max == 0 || max > cap {
            return field(4, "eh_max", format!("{max}: 1 to {cap} here"));
        }
        if entries > max {
            return field(
                2,
                "eh_entries",
                format!("{entries}, more than eh_max {max}"),
            );
        }
        match block {
            None if depth > MAX_DEPTH => {
                return field(6, "eh_depth", format!("{depth}, deeper than {MAX_DEPTH}"));
            }
            Some((_, want)) if depth != want => {
                return field(
                    6,
                    "eh_depth",
                    format!("{depth}, not {want} below its parent"),
                );
            }
            _ => {}
        }
        if entries == 0 && depth > 0 {
            return field(2, "eh_entries", "0 in an index node".into());
        }
        if let (Some((b, _)), Some(seed)) = (block, w.seed) {
            let t = 12 + 12 * max;
            if t + 4 > node.len() {
                return field(4, "eh_max", format!("{max}: no room for the checksum tail"));
            }
            let stored = le32(node, t);
            let computed = crc(seed, &node[..t]);
            check_csum(
                self.verify,
                Where::block(ino, BlockKind::ExtentTree, b),
                stored,
                computed,
            )?;
        }
        let mut next_free = lo; // first logical block the next entry may use
        for k in 0..entries {
            let off = 12 + 12 * k;
            let e = &node[off..off + 12];
            let logical = le32(e, 0) as u64;
            if logical < next_free || logical >= hi {
                return field(
                    off,
                    "ee_block",
                    format!(
                        "logical block {logical} out of order (expected {next_free} to {})",
                        hi - 1
                    ),
                );
            }
            if depth == 0 {
                let raw = le16(e, 4) as u32;
                let (len, unwritten) = if raw > INIT_MAX_LEN {
                    (raw - INIT_MAX_LEN, true)
                } else {
                    (raw, false)
                };
                if len == 0 {
                    return field(off + 4, "ee_len", "0".into());
                }
                let physical = (le16(e, 6) as u64) << 32 | le32(e, 8) as u64;
                if logical + len as u64 > hi {
                    return field(
                        off + 4,
                        "ee_len",
                        format!("{len} blocks from {logical} run past logical block {hi}"),
                    );
                }
                if !self.blocks_valid(physical, len as u64) {
                    return field(
                        off + 6,
                        "ee_start",
                        format!("blocks {physical}+{len} outside the filesystem"),
                    );
                }
                w.out.push(Extent {
                    logical,
                    physical,
                    len,
                    unwritten,
                });
                next_free = logical + len as u64;
            } else {
                let child = le32(e, 4) as u64 | (le16(e, 8) as u64) << 32;
                let child_hi = if k + 1 < entries {
                    le32(node, off + 12) as u64
                } else {
                    hi
                };
                if child_hi <= logical {
                    return field(
                        off + 12,
                        "ei_block",
                        format!("{child_hi} does not follow {logical}"),
                    );
                }
                if !self.blocks_valid(child, 1) {
                    return field(
                        off + 4,
                        "ei_leaf",
                        format!("block {child} outside the filesystem"),
                    );
                }
                if !w.seen.insert(child) {
                    return field(
                        off + 4,
                        "ei_leaf",
                        format!("block {child} appears twice in the tree"),
                    );
                }
                let mut buf = vec![0u8; self.sb.block_size as usize];
                self.read_block(child, &mut buf)?;
                self.extent_node(w, &buf, Some((child, depth - 1)), logical, child_hi)?;
                next_free = child_hi;
            }
        }
        Ok(())
    }

    /// The ext2/3 block map: 12 direct pointers, then single, double and
    /// triple indirect blocks. Only blocks below i_size are looked at.
    fn block_map(&self, i: &Inode, out: &mut Vec<Extent>) -> Result<()> {
        let bs = self.sb.block_size as u64;
        let nblocks = i.size.div_ceil(bs).min(LOGICAL_END);
        let per = bs / 4;
        let mut seen = HashSet::new();
        let mut base = 0u64;
        let mut span = 1u64;
        for slot in 0..15usize {
            let level = slot.saturating_sub(11) as u32; // 0 direct, 1..3 indirect
            if slot >= 12 {
                span = per.pow(level);
            }
            if base >= nblocks {
                break;
            }
            let ptr = le32(&i.iblock, 4 * slot) as u64;
            if ptr != 0 {
                if !self.blocks_valid(ptr, 1) {
                    return Err(ReadError::corrupt(
                        Where::Inode(i.ino),
                        "i_block",
                        format!("slot {slot}: block {ptr} outside the filesystem"),
                    ));
                }
                if level == 0 {
                    push_block(out, base, ptr);
                } else {
                    self.indirect(i.ino, ptr, level, base, nblocks, &mut seen, out)?;
                }
            }
            base += span;
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn indirect(
        &self,
        ino: u32,
        block: u64,
        level: u32,
        base: u64,
        nblocks: u64,
        seen: &mut HashSet<u64>,
        out: &mut Vec<Extent>,
    ) -> Result<()> {
        if !seen.insert(block) {
            return Err(ReadError::corrupt(
                Where::block(ino, BlockKind::IndirectMap, block),
                "block pointer",
                "the block appears twice in the map",
            ));
        }
        let mut buf = vec![0u8; self.sb.block_size as usize];
        self.read_block(block, &mut buf)?;
        let per = buf.len() as u64 / 4;
        let span = per.pow(level - 1);
        for k in 0..per {
            let child_base = base + k * span;
            if child_base >= nblocks {
                break;
            }
            let off = 4 * k as usize;
            let ptr = le32(&buf, off) as u64;
            if ptr == 0 {
                continue;
            }
            if !self.blocks_valid(ptr, 1) {
                return Err(ReadError::corrupt(
                    Where::at(ino, BlockKind::IndirectMap, block, off),
                    "block pointer",
                    format!("block {ptr} outside the filesystem"),
                ));
            }
            if level == 1 {
                push_block(out, child_base, ptr);
            } else {
                self.indirect(ino, ptr, level - 1, child_base, nblocks, seen, out)?;
            }
        }
        Ok(())
    }

    /// Two extents of one file on the same physical block is corruption
    /// (and would let a small image stand for a huge one).
    fn check_physical_overlap(&self, ino: u32, map: &[Extent]) -> Result<()> {
        let mut by_phys: Vec<(u64, u64)> = map
            .iter()
            .map(|e| (e.physical, e.physical + e.len as u64))
            .collect();
        by_phys.sort_unstable();
        for w in by_phys.windows(2) {
            if w[1].0 < w[0].1 {
                return Err(ReadError::corrupt(
                    Where::Inode(ino),
                    "extents",
                    format!(
                        "physical blocks {}..{} and {}..{} overlap",
                        w[0].0, w[0].1, w[1].0, w[1].1
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Reads file bytes at `offset` through `map` into `buf`, stopping at
    /// i_size: returns how many bytes were read (0 at or past the end).
    pub(crate) fn read_mapped(
        &self,
        i: &Inode,
        map: &[Extent],
        offset: u64,
        buf: &mut [u8],
    ) -> Result<usize> {
        if offset >= i.size {
            return Ok(0);
        }
        let n = (i.size - offset).min(buf.len() as u64) as usize;
        let bs = self.sb.block_size as u64;
        let mut done = 0usize;
        while done < n {
            let pos = offset + done as u64;
            let lblk = pos / bs;
            let in_block = pos % bs;
            let k = map.partition_point(|e| e.logical + e.len as u64 <= lblk);
            let want = n - done;
            let (len, src) = match map.get(k) {
                Some(e) if e.logical <= lblk => {
                    let room = (e.logical + e.len as u64 - lblk) * bs - in_block;
                    let len = room.min(want as u64) as usize;
                    let src =
                        (!e.unwritten).then(|| (e.physical + (lblk - e.logical)) * bs + in_block);
                    (len, src)
                }
                // A hole up to the next extent (or the end).
                next => {
                    let to = next.map_or(u64::MAX, |e| e.logical * bs);
                    ((to - pos).min(want as u64) as usize, None)
                }
            };
            let out = &mut buf[done..done + len];
            match src {
                Some(at) => self.read_bytes(at, out)?,
                None => out.fill(0),
            }
            done += len;
        }
        Ok(n)
    }

    /// Reads bytes of inode `ino`'s data at `offset`. Holes and unwritten
    /// extents read as zeros. Reads stop at i_size: the count returned is
    /// short there, and 0 at or past the end (like `pread`). Regular files
    /// and directories only.
    pub fn read(&self, ino: u32, offset: u64, buf: &mut [u8]) -> Result<usize> {
        self.open_file(ino)?.read_at(offset, buf)
    }

    /// Inode `ino` with its block map, for many reads without walking the
    /// extent tree each time. Regular files and directories only.
    pub fn open_file(&self, ino: u32) -> Result<File<'_, R>> {
        let inode = self.inode_core(ino)?;
        if !matches!(inode.kind, Kind::Regular | Kind::Directory) {
            return Err(ReadError::WrongKind {
                ino,
                expected: "regular file or directory",
                found: super::inode::kind_name(inode.kind),
            });
        }
        let map = self.extents_of(&inode)?;
        Ok(File {
            fs: self,
            inode,
            map,
        })
    }
}

/// Appends one block to the map, joining it to the last extent when both
/// continue each other.
fn push_block(out: &mut Vec<Extent>, logical: u64, physical: u64) {
    if let Some(l) = out.last_mut() {
        if l.logical + l.len as u64 == logical
            && l.physical + l.len as u64 == physical
            && l.len < u32::MAX
        {
            l.len += 1;
            return;
        }
    }
    out.push(Extent {
        logical,
        physical,
        len: 1,
        unwritten: false,
    });
}

/// An open file: its inode and block map.
pub struct File<'a, R: ReadAt> {
    fs: &'a Ext4<R>,
    inode: Inode,
    map: Vec<Extent>,
}

impl<R: ReadAt> File<'_, R> {
    pub fn inode(&self) -> &Inode {
        &self.inode
    }
    pub fn size(&self) -> u64 {
        self.inode.size
    }
    pub fn extents(&self) -> &[Extent] {
        &self.map
    }
    /// As [`Ext4::read`].
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        self.fs.read_mapped(&self.inode, &self.map, offset, buf)
    }
}

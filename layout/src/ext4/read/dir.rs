//! Directories read linearly, block by block, the way a non-htree reader
//! (and e2fsck's pass 2) does: htree index blocks (dx_root, dx_node) are
//! recognized, checked and skipped; leaf blocks carry a checksum tail with
//! metadata_csum. Every entry is checked (rec_len, name_len, name, inode
//! number); "." and ".." must come first and appear nowhere else; a name
//! appearing twice is an error.

use super::error::{check_csum, BlockKind, ReadError, Result, Where};
use super::inode::{kind_name, Inode};
use super::le::{le16, le32};
use super::source::ReadAt;
use super::superblock::INCOMPAT_LARGEDIR;
use super::Ext4;
use crate::ext4::disk::{self, crc, inode_seed};
use fragments::Kind;

/// One name in a directory ("." and ".." are not listed).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct DirEntry {
    pub name: Vec<u8>,
    pub ino: u32,
    /// The entry's file type code (1 regular .. 7 symlink; 0 unknown or
    /// without the filetype feature).
    pub file_type: u8,
}

/// A whole directory: its parent ("..") and its entries in disk order.
#[derive(Debug, Clone)]
pub struct Directory {
    pub ino: u32,
    pub parent: u32,
    pub entries: Vec<DirEntry>,
}

/// The size of an entry holding a name of `n` bytes.
fn rec_size(n: usize) -> usize {
    (8 + n).div_ceil(4) * 4
}

/// The dirent tail of a leaf block with metadata_csum.
const TAIL: usize = 12;

/// What reading one block found.
struct BlockState<'a> {
    dir: &'a Inode,
    seed: Option<u32>,
    indexed: bool,
    entries: Vec<DirEntry>,
    /// (".", "..") once seen.
    dot: Option<u32>,
    dotdot: Option<u32>,
}

impl<R: ReadAt> Ext4<R> {
    /// The entries of directory `ino` in disk order, without "." and "..".
    pub fn read_dir(&self, ino: u32) -> Result<Vec<DirEntry>> {
        Ok(self.directory(ino)?.entries)
    }

    /// Directory `ino` with its parent.
    pub fn directory(&self, ino: u32) -> Result<Directory> {
        let dir = self.inode_core(ino)?;
        if dir.kind != Kind::Directory {
            return Err(ReadError::WrongKind {
                ino,
                expected: "directory",
                found: kind_name(dir.kind),
            });
        }
        let bs = self.sb.block_size as u64;
        if dir.size % bs != 0 || dir.size == 0 {
            return Err(ReadError::corrupt(
                Where::Inode(ino),
                "i_size",
                format!(
                    "{}: a directory is a whole number of {bs}-byte blocks, at least one",
                    dir.size
                ),
            ));
        }
        let nblocks = dir.size / bs;
        let map = self.extents_of(&dir)?;
        if map.first().is_none_or(|e| e.logical != 0) {
            return Err(ReadError::corrupt(
                Where::Inode(ino),
                "extents",
                "the directory's first block is a hole",
            ));
        }
        let indexed =
            dir.flags & disk::EXT4_INDEX_FL != 0 && self.sb.has_compat(disk::COMPAT_DIR_INDEX);
        let mut st = BlockState {
            dir: &dir,
            seed: self
                .sb
                .csum_seed
                .map(|s| inode_seed(s, ino, dir.generation)),
            indexed,
            entries: Vec::new(),
            dot: None,
            dotdot: None,
        };
        let mut buf = vec![0u8; bs as usize];
        for e in &map {
            if e.logical >= nblocks {
                break;
            }
            if e.unwritten {
                return Err(ReadError::corrupt(
                    Where::Inode(ino),
                    "extents",
                    format!(
                        "unwritten extent at logical block {} of a directory",
                        e.logical
                    ),
                ));
            }
            let end = (e.logical + e.len as u64).min(nblocks);
            for lblk in e.logical..end {
                let pblk = e.physical + (lblk - e.logical);
                self.read_block(pblk, &mut buf)?;
                self.dir_block(&mut st, lblk, pblk, &buf)?;
            }
        }
        let (Some(_), Some(parent)) = (st.dot, st.dotdot) else {
            return Err(ReadError::corrupt(
                Where::Inode(ino),
                "entries",
                "no \".\" and \"..\" at the start",
            ));
        };
        let mut entries = st.entries;
        let mut order: Vec<usize> = (0..entries.len()).collect();
        order.sort_unstable_by(|&a, &b| entries[a].name.cmp(&entries[b].name));
        for w in order.windows(2) {
            if entries[w[0]].name == entries[w[1]].name {
                return Err(ReadError::corrupt(
                    Where::Inode(ino),
                    "entries",
                    format!(
                        "the name {:?} appears twice",
                        String::from_utf8_lossy(&entries[w[0]].name)
                    ),
                ));
            }
        }
        entries.shrink_to_fit();
        Ok(Directory {
            ino,
            parent,
            entries,
        })
    }

    /// Resolves an absolute path ("/a/b") from the root without following
    /// symlinks: the inode, or `None` when a component does not exist.
    pub fn lookup(&self, path: &[u8]) -> Result<Option<u32>> {
        let mut cur = disk::ROOT_INO;
        for comp in path.split(|&c| c == b'/').filter(|c| !c.is_empty()) {
            let entries = self.read_dir(cur)?;
            match entries.iter().find(|e| e.name == comp) {
                Some(e) => cur = e.ino,
                None => return Ok(None),
            }
        }
        Ok(Some(cur))
    }

    /// Inode numbers an entry may name: the root, or an ordinary inode
    /// (ext4_valid_inum).
    fn valid_entry_ino(&self, ino: u32) -> bool {
        ino == disk::ROOT_INO || (ino >= self.sb.first_ino && ino <= self.sb.inodes_count)
    }

    fn rec_len(&self, b: &[u8], off: usize) -> usize {
        let len = le16(b, off + 4) as usize;
        let bs = self.sb.block_size as usize;
        if bs < 65536 {
            len
        } else if len == 65535 || len == 0 {
            bs
        } else {
            (len & 65532) | ((len & 3) << 16)
        }
    }

    fn dir_block(&self, st: &mut BlockState, lblk: u64, pblk: u64, b: &[u8]) -> Result<()> {
        let ino = st.dir.ino;
        let bs = b.len();
        let at = |off: usize| Where::at(ino, BlockKind::Directory, pblk, off);
        if st.indexed && lblk == 0 {
            return self.dx_root(st, pblk, b);
        }
        if st.indexed && le32(b, 0) == 0 && self.rec_len(b, 0) == bs {
            // An htree interior node (or, without checksums, an empty
            // leaf: neither holds names).
            if st.seed.is_some() {
                self.dx_entries(st, pblk, b, 8)?;
            }
            return Ok(());
        }
        let end = if let Some(seed) = st.seed {
            let t = bs - TAIL;
            if le32(b, t) != 0
                || le16(b, t + 4) as usize != TAIL
                || b[t + 6] != 0
                || b[t + 7] != 0xDE
            {
                return Err(ReadError::corrupt(
                    at(t),
                    "dirent tail",
                    "missing: a leaf block with metadata_csum ends with a 12-byte checksum entry",
                ));
            }
            let stored = le32(b, t + 8);
            let computed = crc(seed, &b[..t]);
            check_csum(
                self.verify,
                Where::block(ino, BlockKind::Directory, pblk),
                stored,
                computed,
            )?;
            t
        } else {
            bs
        };
        self.dirents(st, lblk == 0, pblk, &b[..end])
    }

    /// The entries of a leaf (or the dx_root's "." and ".."): `b` ends where
    /// entries must end.
    fn dirents(&self, st: &mut BlockState, first_block: bool, pblk: u64, b: &[u8]) -> Result<()> {
        let ino = st.dir.ino;
        let at = |off: usize| Where::at(ino, BlockKind::Directory, pblk, off);
        let bad = |off: usize, field: &'static str, problem: String| {
            Err(ReadError::corrupt(at(off), field, problem))
        };
        let filetype = self.sb.has_incompat(disk::INCOMPAT_FILETYPE);
        let mut off = 0;
        let mut index = 0;
        while off < b.len() {
            if off + 8 > b.len() {
                return bad(off, "rec_len", "an entry header runs past the block".into());
            }
            let e_ino = le32(b, off);
            let rec_len = self.rec_len(b, off);
            let name_len = b[off + 6] as usize;
            if rec_len < 12 || !rec_len.is_multiple_of(4) {
                return bad(
                    off + 4,
                    "rec_len",
                    format!("{rec_len}: a multiple of 4, at least 12"),
                );
            }
            if rec_len < rec_size(name_len) {
                return bad(
                    off + 4,
                    "rec_len",
                    format!("{rec_len}, too small for a name of {name_len} bytes"),
                );
            }
            if off + rec_len > b.len() {
                return bad(
                    off + 4,
                    "rec_len",
                    format!(
                        "{rec_len}: the entry runs past the end of the entries ({})",
                        b.len()
                    ),
                );
            }
            if e_ino != 0 {
                let name = &b[off + 8..off + 8 + name_len];
                let ft = if filetype { b[off + 7] } else { 0 };
                self.dirent(st, first_block, index, off, e_ino, name, ft, &at)?;
                index += 1;
            } else if first_block && index < 2 {
                return bad(off, "inode", "\".\" and \"..\" must come first".into());
            }
            off += rec_len;
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn dirent(
        &self,
        st: &mut BlockState,
        first_block: bool,
        index: usize,
        off: usize,
        e_ino: u32,
        name: &[u8],
        ft: u8,
        at: &dyn Fn(usize) -> Where,
    ) -> Result<()> {
        let bad = |off: usize, field: &'static str, problem: String| {
            Err(ReadError::corrupt(at(off), field, problem))
        };
        if name.is_empty() {
            return bad(off + 6, "name_len", "0 in a used entry".into());
        }
        if !self.valid_entry_ino(e_ino) {
            return bad(
                off,
                "inode",
                format!("{e_ino}: not a valid inode number for an entry"),
            );
        }
        let want: Option<&[u8]> = match (first_block, index) {
            (true, 0) => Some(b"."),
            (true, 1) => Some(b".."),
            _ => None,
        };
        match want {
            Some(w) if name != w => {
                return bad(
                    off + 8,
                    "name",
                    format!(
                        "{:?} where {:?} must be",
                        String::from_utf8_lossy(name),
                        String::from_utf8_lossy(w)
                    ),
                );
            }
            Some(_) if index == 0 => {
                if e_ino != st.dir.ino {
                    return bad(
                        off,
                        "inode",
                        format!("\".\" names inode {e_ino}, not itself"),
                    );
                }
                st.dot = Some(e_ino);
            }
            Some(_) => st.dotdot = Some(e_ino),
            None => {
                if name == b"." || name == b".." {
                    return bad(
                        off + 8,
                        "name",
                        format!(
                            "{:?} past the start of the directory",
                            String::from_utf8_lossy(name)
                        ),
                    );
                }
                if let Some(p) = name.iter().position(|&c| c == b'/' || c == 0) {
                    return bad(
                        off + 8 + p,
                        "name",
                        format!(
                            "{:?} contains a '/' or a NUL byte",
                            String::from_utf8_lossy(name)
                        ),
                    );
                }
                st.entries.push(DirEntry {
                    name: name.to_vec(),
                    ino: e_ino,
                    file_type: ft,
                });
            }
        }
        Ok(())
    }

    /// Block 0 of an htree directory: "." and "..", the root info, the
    /// index entries and their checksum.
    fn dx_root(&self, st: &mut BlockState, pblk: u64, b: &[u8]) -> Result<()> {
        let ino = st.dir.ino;
        let at = |off: usize| Where::at(ino, BlockKind::Directory, pblk, off);
        let bs = b.len();
        if self.rec_len(b, 0) != 12 || self.rec_len(b, 12) != bs - 12 {
            return Err(ReadError::corrupt(
                at(4),
                "rec_len",
                "an htree root holds \".\" (12 bytes) and \"..\" (the rest of the block)",
            ));
        }
        let dot = le32(b, 0);
        if b[6] != 1 || b[8] != b'.' || dot != ino {
            return Err(ReadError::corrupt(
                at(0),
                "\".\"",
                format!(
                    "an htree root starts with \".\" naming itself (inode {dot}, name_len {})",
                    b[6]
                ),
            ));
        }
        let dotdot = le32(b, 12);
        if b[18] != 2 || &b[20..22] != b".." || !self.valid_entry_ino(dotdot) {
            return Err(ReadError::corrupt(
                at(12),
                "\"..\"",
                format!(
                    "an htree root's second entry is \"..\" (inode {dotdot}, name_len {})",
                    b[18]
                ),
            ));
        }
        st.dot = Some(dot);
        st.dotdot = Some(dotdot);
        let info_len = b[29] as usize;
        if le32(b, 24) != 0 || info_len != 8 {
            return Err(ReadError::corrupt(
                at(24),
                "dx_root_info",
                format!(
                    "reserved {:#x}, info_length {info_len}: not an htree root",
                    le32(b, 24)
                ),
            ));
        }
        let levels = b[30];
        let max_levels = if self.sb.has_incompat(INCOMPAT_LARGEDIR) {
            3
        } else {
            2
        };
        if levels >= max_levels {
            return Err(ReadError::corrupt(
                at(30),
                "indirect_levels",
                format!("{levels}: at most {}", max_levels - 1),
            ));
        }
        self.dx_entries(st, pblk, b, 24 + info_len)
    }

    /// The count/limit header at `co`, the entries and (with checksums)
    /// the dx_tail after `limit` entries.
    fn dx_entries(&self, st: &BlockState, pblk: u64, b: &[u8], co: usize) -> Result<()> {
        let ino = st.dir.ino;
        let at = |off: usize| Where::at(ino, BlockKind::Directory, pblk, off);
        let csum = if st.seed.is_some() { 8 } else { 0 };
        let limit = le16(b, co) as usize;
        let count = le16(b, co + 2) as usize;
        let want = (b.len() - co - csum) / 8;
        if limit != want {
            return Err(ReadError::corrupt(
                at(co),
                "dx limit",
                format!("{limit}, not {want}"),
            ));
        }
        if count == 0 || count > limit {
            return Err(ReadError::corrupt(
                at(co + 2),
                "dx count",
                format!("{count}: 1 to the limit {limit}"),
            ));
        }
        if let Some(seed) = st.seed {
            let t = co + limit * 8;
            let stored = le32(b, t + 4);
            let c = crc(crc(seed, &b[..co + count * 8]), &b[t..t + 4]);
            let computed = crc(c, &[0; 4]);
            check_csum(
                self.verify,
                Where::block(ino, BlockKind::Directory, pblk),
                stored,
                computed,
            )?;
        }
        Ok(())
    }
}

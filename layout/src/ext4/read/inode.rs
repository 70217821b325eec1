//! Inode records: located through the group table, checked (checksum,
//! extra size, flags this reader cannot honour), decoded into [`Inode`].

use super::error::{check_csum, ReadError, Result, Where};
use super::le::{le16, le32};
use super::source::ReadAt;
use super::superblock::Superblock;
use super::Ext4;
use crate::ext4::disk::{self, crc, inode_seed};
use fragments::Kind;

pub const GOOD_OLD_INODE_SIZE: usize = 128;

// Inode flags beyond disk.rs's.
pub const EXT4_ENCRYPT_FL: u32 = 0x800;
pub const EXT4_HUGE_FILE_FL: u32 = 0x40000;
pub const EXT4_VERITY_FL: u32 = 0x100000;
pub const EXT4_EA_INODE_FL: u32 = 0x200000;
pub const EXT4_INLINE_DATA_FL: u32 = 0x1000_0000;

/// A timestamp: seconds since the epoch (ext4's 34-bit range) and
/// nanoseconds (0 when the inode has no extra time fields).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Timestamp {
    pub sec: i64,
    pub nsec: u32,
}

impl Timestamp {
    /// Decodes `lo` (i_*time) and, when present, `extra`
    /// ((nsec << 2) | epoch bits), the inverse of `disk::encode_time`.
    pub fn decode(lo: u32, extra: Option<u32>) -> Timestamp {
        let mut sec = lo as i32 as i64;
        let mut nsec = 0;
        if let Some(x) = extra {
            sec += ((x & 3) as i64) << 32;
            nsec = x >> 2;
        }
        Timestamp { sec, nsec }
    }
}

/// One extended attribute as `getxattr` returns it: the full name with
/// its prefix, and the value (POSIX ACLs in the VFS format).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Xattr {
    pub name: Vec<u8>,
    pub value: Vec<u8>,
}

/// A decoded inode. [`Ext4::inode`] fills `symlink` and `xattrs`; the
/// lighter internal decode leaves them empty.
#[derive(Debug, Clone)]
pub struct Inode {
    pub ino: u32,
    pub kind: Kind,
    /// The full i_mode (type and permission bits).
    pub mode: u16,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub links: u16,
    pub flags: u32,
    pub atime: Timestamp,
    pub ctime: Timestamp,
    pub mtime: Timestamp,
    /// Creation time, when the inode is large enough to hold it.
    pub crtime: Option<Timestamp>,
    pub dtime: u32,
    pub generation: u32,
    /// Allocated space in 512-byte units (huge_file's block units converted).
    pub blocks_512: u64,
    /// The xattr block (i_file_acl), 0 for none.
    pub xattr_block: u64,
    /// (major, minor) of a character or block device.
    pub device: Option<(u32, u32)>,
    /// The target of a symlink.
    pub symlink: Option<Vec<u8>>,
    /// Extended attributes, sorted by name: in-inode ones and the xattr
    /// block's.
    pub xattrs: Vec<Xattr>,
    /// i_block: the extent root, block map, device number or fast symlink.
    pub(crate) iblock: [u8; 60],
    /// The raw record (`s_inode_size` bytes), for in-inode xattrs.
    pub(crate) raw: Vec<u8>,
}

impl Inode {
    /// Permission bits (mode & 0o7777).
    pub fn perm(&self) -> u16 {
        self.mode & 0o7777
    }
    /// st_rdev as Linux encodes it (`makedev`), 0 for non-devices.
    pub fn rdev(&self) -> u64 {
        self.device.map_or(0, |(ma, mi)| {
            let (ma, mi) = (ma as u64, mi as u64);
            ((ma & 0xffff_f000) << 32)
                | ((ma & 0xfff) << 8)
                | ((mi & 0xffff_ff00) << 12)
                | (mi & 0xff)
        })
    }
    pub fn has_extents(&self) -> bool {
        self.flags & disk::EXT4_EXTENTS_FL != 0
    }
}

pub fn kind_name(k: Kind) -> &'static str {
    match k {
        Kind::Regular => "regular file",
        Kind::Directory => "directory",
        Kind::Symlink => "symlink",
        Kind::CharDevice => "character device",
        Kind::BlockDevice => "block device",
        Kind::Fifo => "fifo",
        Kind::Socket => "socket",
    }
}

fn kind_of(mode: u16) -> Option<Kind> {
    Some(match mode & 0xF000 {
        0x1000 => Kind::Fifo,
        0x2000 => Kind::CharDevice,
        0x4000 => Kind::Directory,
        0x6000 => Kind::BlockDevice,
        0x8000 => Kind::Regular,
        0xA000 => Kind::Symlink,
        0xC000 => Kind::Socket,
        _ => return None,
    })
}

/// Whether the record is large enough for a field ending at `end`
/// (EXT4_FITS_IN_INODE).
fn fits(sb: &Superblock, extra_isize: usize, end: usize) -> bool {
    sb.inode_size as usize > GOOD_OLD_INODE_SIZE && GOOD_OLD_INODE_SIZE + extra_isize >= end
}

impl<R: ReadAt> Ext4<R> {
    /// Byte offset of inode `ino`'s record in the image (for tools and
    /// tests that look at the raw record).
    pub fn inode_offset(&self, ino: u32) -> Result<u64> {
        let sb = &self.sb;
        if ino == 0 || ino > sb.inodes_count {
            return Err(ReadError::corrupt(
                Where::Inode(ino),
                "number",
                format!("out of range (1 to {})", sb.inodes_count),
            ));
        }
        let group = (ino - 1) / sb.inodes_per_group;
        let index = (ino - 1) % sb.inodes_per_group;
        let g = &self.groups[group as usize];
        Ok(g.inode_table * sb.block_size as u64 + index as u64 * sb.inode_size as u64)
    }

    /// Reads and checks inode `ino`'s record, and decodes everything but
    /// the symlink target and the xattrs.
    pub(crate) fn inode_core(&self, ino: u32) -> Result<Inode> {
        let sb = &self.sb;
        let at = || Where::Inode(ino);
        let off = self.inode_offset(ino)?;
        let group = (ino - 1) / sb.inodes_per_group;
        let index = (ino - 1) % sb.inodes_per_group;
        if let Err(why) = self.groups[group as usize].slot_in_use(sb, index) {
            return Err(ReadError::corrupt(at(), "slot", why));
        }
        let isz = sb.inode_size as usize;
        let mut b = vec![0u8; isz];
        self.read_bytes(off, &mut b)?;
        if b.iter().all(|&x| x == 0) {
            return Err(ReadError::corrupt(at(), "record", "not in use (all zeros)"));
        }
        let extra_isize = if isz > GOOD_OLD_INODE_SIZE {
            let e = le16(&b, 0x80) as usize;
            if e > isz - GOOD_OLD_INODE_SIZE || !e.is_multiple_of(4) {
                return Err(ReadError::corrupt(
                    at(),
                    "i_extra_isize",
                    format!("{e}: a multiple of 4 up to {}", isz - GOOD_OLD_INODE_SIZE),
                ));
            }
            e
        } else {
            0
        };
        let generation = le32(&b, 0x64);
        if let Some(seed) = sb.csum_seed {
            let has_hi = fits(sb, extra_isize, 0x84);
            let mut stored = le16(&b, 0x7C) as u32;
            let mut z = b.clone();
            z[0x7C..0x7E].fill(0);
            if has_hi {
                stored |= (le16(&b, 0x82) as u32) << 16;
                z[0x82..0x84].fill(0);
            }
            let mut computed = crc(inode_seed(seed, ino, generation), &z);
            if !has_hi {
                computed &= 0xFFFF;
            }
            check_csum(self.verify, at(), stored, computed)?;
        }
        let mode = le16(&b, 0x0);
        let kind = kind_of(mode).ok_or_else(|| {
            ReadError::corrupt(at(), "i_mode", format!("{mode:#o}: no valid file type"))
        })?;
        let links = le16(&b, 0x1A);
        if links == 0 {
            return Err(ReadError::corrupt(
                at(),
                "i_links_count",
                "0: the inode is free (deleted)",
            ));
        }
        let flags = le32(&b, 0x20);
        for (bit, name) in [
            (EXT4_INLINE_DATA_FL, "INLINE_DATA"),
            (EXT4_ENCRYPT_FL, "ENCRYPT"),
            (EXT4_VERITY_FL, "VERITY"),
        ] {
            if flags & bit != 0 {
                return Err(ReadError::corrupt(
                    at(),
                    "i_flags",
                    format!("{flags:#x} has {name}, which this filesystem's features do not allow"),
                ));
            }
        }
        let mut size = le32(&b, 0x4) as u64;
        if kind == Kind::Regular || sb.has_incompat(super::superblock::INCOMPAT_LARGEDIR) {
            size |= (le32(&b, 0x6C) as u64) << 32;
        }
        if size > i64::MAX as u64 {
            return Err(ReadError::corrupt(
                at(),
                "i_size",
                format!("{size}: negative as a file offset"),
            ));
        }
        let huge = sb.has_ro_compat(disk::RO_COMPAT_HUGE_FILE);
        let mut blocks = le32(&b, 0x1C) as u64;
        if huge {
            blocks |= (le16(&b, 0x74) as u64) << 32;
            if flags & EXT4_HUGE_FILE_FL != 0 {
                blocks = blocks.saturating_mul(sb.block_size as u64 / 512);
            }
        }
        let mut xattr_block = le32(&b, 0x68) as u64;
        if sb.has_incompat(disk::INCOMPAT_64BIT) {
            xattr_block |= (le16(&b, 0x76) as u64) << 32;
        }
        let uid = le16(&b, 0x2) as u32 | (le16(&b, 0x78) as u32) << 16;
        let gid = le16(&b, 0x18) as u32 | (le16(&b, 0x7A) as u32) << 16;
        let extra = |end: usize| fits(sb, extra_isize, end).then(|| le32(&b, end - 4));
        let ctime = Timestamp::decode(le32(&b, 0xC), extra(0x88));
        let mtime = Timestamp::decode(le32(&b, 0x10), extra(0x8C));
        let atime = Timestamp::decode(le32(&b, 0x8), extra(0x90));
        let crtime =
            fits(sb, extra_isize, 0x94).then(|| Timestamp::decode(le32(&b, 0x90), extra(0x98)));
        let mut iblock = [0u8; 60];
        iblock.copy_from_slice(&b[0x28..0x64]);
        let device = match kind {
            Kind::CharDevice | Kind::BlockDevice => {
                let old = le32(&iblock, 0);
                Some(if old != 0 {
                    ((old >> 8) & 0xff, old & 0xff)
                } else {
                    let new = le32(&iblock, 4);
                    ((new & 0xfff00) >> 8, (new & 0xff) | ((new >> 12) & 0xfff00))
                })
            }
            _ => None,
        };
        Ok(Inode {
            ino,
            kind,
            mode,
            uid,
            gid,
            size,
            links,
            flags,
            atime,
            ctime,
            mtime,
            crtime,
            dtime: le32(&b, 0x14),
            generation,
            blocks_512: blocks,
            xattr_block,
            device,
            symlink: None,
            xattrs: Vec::new(),
            iblock,
            raw: b,
        })
    }

    /// Inode `ino` with everything decoded: fields, times, device numbers,
    /// symlink target (fast or through its blocks) and extended attributes
    /// (in-inode and the xattr block, POSIX ACLs in the VFS format).
    pub fn inode(&self, ino: u32) -> Result<Inode> {
        let mut i = self.inode_core(ino)?;
        if i.kind == Kind::Symlink {
            i.symlink = Some(self.symlink_target(&i)?);
        }
        i.xattrs = self.xattrs_of(&i)?;
        Ok(i)
    }

    /// The kernel's rule (ext4_inode_is_fast_symlink): a symlink with no
    /// blocks but its xattr block's keeps its target in i_block.
    pub(crate) fn is_fast_symlink(&self, i: &Inode) -> bool {
        let ea_blocks = if i.xattr_block != 0 {
            self.sb.block_size as u64 / 512
        } else {
            0
        };
        i.kind == Kind::Symlink && i.flags & EXT4_EA_INODE_FL == 0 && i.blocks_512 == ea_blocks
    }

    /// Fast symlinks keep the target in i_block; slow ones in a data block.
    fn symlink_target(&self, i: &Inode) -> Result<Vec<u8>> {
        let at = || Where::Inode(i.ino);
        if self.is_fast_symlink(i) {
            if i.size >= 60 {
                return Err(ReadError::corrupt(
                    at(),
                    "i_size",
                    format!("{}: a fast symlink holds at most 59 bytes", i.size),
                ));
            }
            return Ok(i.iblock[..i.size as usize].to_vec());
        }
        if i.size >= self.sb.block_size as u64 || i.size >= 4096 {
            return Err(ReadError::corrupt(
                at(),
                "i_size",
                format!(
                    "{}: a symlink target is shorter than a block and than 4096 bytes",
                    i.size
                ),
            ));
        }
        let map = self.extents_of(i)?;
        let mut t = vec![0u8; i.size as usize];
        let n = self.read_mapped(i, &map, 0, &mut t)?;
        t.truncate(n);
        Ok(t)
    }
}

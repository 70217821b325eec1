//! The superblock read back: checked field by field, features refused or
//! accepted, geometry derived. Offsets are the kernel's (`struct
//! ext4_super_block`); feature bits our generator sets come from `disk`.

use super::error::{check_csum, ReadError, Result, Where};
use super::le::{le16, le32};
use crate::ext4::disk::{self, crc};

/// Byte offset of the superblock in the image, and its size.
pub const SUPERBLOCK_OFFSET: u64 = 1024;
pub const SUPERBLOCK_SIZE: usize = 1024;

pub const MAGIC: u16 = 0xEF53;

// Feature bits beyond the ones the generator writes (disk.rs has those).
pub const INCOMPAT_COMPRESSION: u32 = 0x1;
pub const INCOMPAT_RECOVER: u32 = 0x4;
pub const INCOMPAT_JOURNAL_DEV: u32 = 0x8;
pub const INCOMPAT_META_BG: u32 = 0x10;
pub const INCOMPAT_MMP: u32 = 0x100;
pub const INCOMPAT_EA_INODE: u32 = 0x400;
pub const INCOMPAT_DIRDATA: u32 = 0x1000;
pub const INCOMPAT_CSUM_SEED: u32 = 0x2000;
pub const INCOMPAT_LARGEDIR: u32 = 0x4000;
pub const INCOMPAT_INLINE_DATA: u32 = 0x8000;
pub const INCOMPAT_ENCRYPT: u32 = 0x10000;
pub const INCOMPAT_CASEFOLD: u32 = 0x20000;
pub const RO_COMPAT_GDT_CSUM: u32 = 0x10;
pub const RO_COMPAT_VERITY: u32 = 0x8000;
pub const RO_COMPAT_ORPHAN_PRESENT: u32 = 0x10000;

/// INCOMPAT bits this reader knows (refused or read); any other is refused.
const INCOMPAT_KNOWN: u32 = INCOMPAT_COMPRESSION
    | disk::INCOMPAT_FILETYPE
    | INCOMPAT_RECOVER
    | INCOMPAT_JOURNAL_DEV
    | INCOMPAT_META_BG
    | disk::INCOMPAT_EXTENTS
    | disk::INCOMPAT_64BIT
    | INCOMPAT_MMP
    | disk::INCOMPAT_FLEX_BG
    | INCOMPAT_EA_INODE
    | INCOMPAT_DIRDATA
    | INCOMPAT_CSUM_SEED
    | INCOMPAT_LARGEDIR
    | INCOMPAT_INLINE_DATA
    | INCOMPAT_ENCRYPT
    | INCOMPAT_CASEFOLD;

/// INCOMPAT features that change how files or names are stored in ways
/// this reader does not decode: refused with the reason.
const INCOMPAT_REFUSED: [(u32, &str, &str); 7] = [
    (
        INCOMPAT_RECOVER,
        "needs_recovery",
        "the journal holds transactions not replayed yet; mount the filesystem once or run e2fsck -fy on it, then read it again",
    ),
    (
        INCOMPAT_JOURNAL_DEV,
        "journal_dev",
        "this is an external journal device, not a filesystem",
    ),
    (
        INCOMPAT_COMPRESSION,
        "compression",
        "compressed files are not read",
    ),
    (
        INCOMPAT_DIRDATA,
        "dirdata",
        "directory entries with extra data are not read",
    ),
    (
        INCOMPAT_INLINE_DATA,
        "inline_data",
        "files and directories stored inside their inodes are not read",
    ),
    (
        INCOMPAT_ENCRYPT,
        "encrypt",
        "encrypted names and contents cannot be read",
    ),
    (
        INCOMPAT_CASEFOLD,
        "casefold",
        "case-insensitive directories are not read",
    ),
];

/// Most block groups accepted: 2^20 groups are 128 TiB with 4 KiB blocks;
/// the group table is read at open and kept in memory.
pub const MAX_GROUPS: u64 = 1 << 20;

/// The superblock fields the reader uses, checked.
#[derive(Debug, Clone)]
pub struct Superblock {
    /// Block size in bytes: 1 KiB to 64 KiB.
    pub block_size: u32,
    pub blocks_count: u64,
    pub first_data_block: u32,
    pub blocks_per_group: u32,
    pub inodes_per_group: u32,
    pub inodes_count: u32,
    /// Size of an inode record: 128 to the block size, a power of two.
    pub inode_size: u16,
    /// First inode number for ordinary files (11 on every ext4 made here).
    pub first_ino: u32,
    /// Size of a group descriptor: 32, or 64 and more with `64bit`.
    pub desc_size: u16,
    pub groups: u32,
    pub feature_compat: u32,
    pub feature_incompat: u32,
    pub feature_ro_compat: u32,
    pub uuid: [u8; 16],
    pub label: [u8; 16],
    /// s_state: 1 cleanly unmounted, 2 errors detected.
    pub state: u16,
    pub hash_seed: [u32; 4],
    pub def_hash_version: u8,
    pub flags: u32,
    pub first_meta_bg: u32,
    pub backup_bgs: [u32; 2],
    pub journal_inum: u32,
    /// The metadata_csum seed: `Some` when checksums are on.
    pub csum_seed: Option<u32>,
}

fn corrupt(field: &'static str, problem: impl Into<String>) -> ReadError {
    ReadError::corrupt(Where::Superblock, field, problem)
}

impl Superblock {
    /// Checks and decodes the 1024 superblock bytes (its checksum only
    /// when `verify`).
    pub fn decode(b: &[u8; SUPERBLOCK_SIZE], verify: bool) -> Result<Superblock> {
        let magic = le16(b, 0x38);
        if magic != MAGIC {
            return Err(corrupt(
                "s_magic",
                format!("{magic:#06x}, not ext4's {MAGIC:#06x}"),
            ));
        }
        let compat = le32(b, 0x5C);
        let incompat = le32(b, 0x60);
        let ro_compat = le32(b, 0x64);
        // The checksum first: on a damaged superblock every other message
        // would be a guess.
        let csum = ro_compat & disk::RO_COMPAT_METADATA_CSUM != 0;
        if csum {
            if b[0x175] != 1 {
                return Err(corrupt(
                    "s_checksum_type",
                    format!("{}, not 1 (crc32c)", b[0x175]),
                ));
            }
            let stored = le32(b, 0x3FC);
            let computed = crc(!0, &b[..0x3FC]);
            check_csum(verify, Where::Superblock, stored, computed)?;
        }
        let rev = le32(b, 0x4C);
        if rev > 1 {
            return Err(corrupt(
                "s_rev_level",
                format!("{rev}: only revisions 0 and 1 exist"),
            ));
        }
        let os = le32(b, 0x48);
        if os != 0 {
            return Err(ReadError::Refused {
                feature: "creator OS",
                reason: format!(
                    "s_creator_os {os}: only Linux's inode layout is read (made with mke2fs -o hurd?)"
                ),
            });
        }
        for (bit, feature, reason) in INCOMPAT_REFUSED {
            if incompat & bit != 0 {
                return Err(ReadError::Refused {
                    feature,
                    reason: reason.to_string(),
                });
            }
        }
        if incompat & !INCOMPAT_KNOWN != 0 {
            return Err(ReadError::Refused {
                feature: "unknown incompatible feature",
                reason: format!(
                    "s_feature_incompat bits {:#x} are not known to this reader",
                    incompat & !INCOMPAT_KNOWN
                ),
            });
        }
        if ro_compat & RO_COMPAT_VERITY != 0 {
            return Err(ReadError::Refused {
                feature: "verity",
                reason: "fs-verity files carry Merkle trees that cannot be captured".into(),
            });
        }
        if ro_compat & RO_COMPAT_ORPHAN_PRESENT != 0 {
            return Err(ReadError::Refused {
                feature: "orphan_present",
                reason: "the orphan file lists inodes still being deleted or truncated; mount the filesystem once or run e2fsck -fy on it".into(),
            });
        }
        let last_orphan = le32(b, 0xE8);
        if last_orphan != 0 {
            return Err(ReadError::Refused {
                feature: "orphan list",
                reason: format!(
                    "s_last_orphan is inode {last_orphan}: inodes are still being deleted or truncated; mount the filesystem once or run e2fsck -fy on it"
                ),
            });
        }

        let log = le32(b, 0x18);
        if log > 6 {
            return Err(corrupt(
                "s_log_block_size",
                format!("{log}: blocks are 1 KiB to 64 KiB (0 to 6)"),
            ));
        }
        let block_size = 1024u32 << log;
        let bits_per_block = 8 * block_size;
        let blocks_per_group = le32(b, 0x20);
        if blocks_per_group == 0 || blocks_per_group > bits_per_block {
            return Err(corrupt(
                "s_blocks_per_group",
                format!("{blocks_per_group}: must be 1 to {bits_per_block}"),
            ));
        }
        let inodes_per_group = le32(b, 0x28);
        if inodes_per_group == 0 || inodes_per_group > bits_per_block {
            return Err(corrupt(
                "s_inodes_per_group",
                format!("{inodes_per_group}: must be 1 to {bits_per_block}"),
            ));
        }
        let (inode_size, first_ino) = if rev == 0 {
            (128u16, 11u32)
        } else {
            (le16(b, 0x58), le32(b, 0x54))
        };
        if inode_size < 128 || !inode_size.is_power_of_two() || inode_size as u32 > block_size {
            return Err(corrupt(
                "s_inode_size",
                format!("{inode_size}: a power of two from 128 to the block size"),
            ));
        }
        let b64 = incompat & disk::INCOMPAT_64BIT != 0;
        let mut blocks_count = le32(b, 0x4) as u64;
        if b64 {
            blocks_count |= (le32(b, 0x150) as u64) << 32;
        }
        let first_data_block = le32(b, 0x14);
        if first_data_block as u64 >= blocks_count {
            return Err(corrupt(
                "s_first_data_block",
                format!("{first_data_block}, past the {blocks_count} blocks of the filesystem"),
            ));
        }
        let groups = (blocks_count - first_data_block as u64).div_ceil(blocks_per_group as u64);
        if groups > MAX_GROUPS {
            return Err(corrupt(
                "s_blocks_count",
                format!("{blocks_count} blocks make {groups} block groups; this reader takes at most {MAX_GROUPS}"),
            ));
        }
        let inodes_count = le32(b, 0x0);
        if inodes_count as u64 != groups * inodes_per_group as u64 {
            return Err(corrupt(
                "s_inodes_count",
                format!("{inodes_count}, not {groups} groups of {inodes_per_group} inodes"),
            ));
        }
        if first_ino < 11 || first_ino > inodes_count {
            return Err(corrupt(
                "s_first_ino",
                format!("{first_ino}: must be 11 to s_inodes_count"),
            ));
        }
        let desc_size = if b64 {
            let d = le16(b, 0xFE);
            if !(64..=1024).contains(&d) || !d.is_power_of_two() {
                return Err(corrupt(
                    "s_desc_size",
                    format!("{d}: with 64bit, a power of two from 64 to 1024"),
                ));
            }
            d
        } else {
            32
        };
        if desc_size as u32 > block_size {
            return Err(corrupt(
                "s_desc_size",
                format!("{desc_size}, larger than a block"),
            ));
        }
        let csum_seed = if csum {
            Some(if incompat & INCOMPAT_CSUM_SEED != 0 {
                le32(b, 0x270)
            } else {
                crc(!0, &b[0x68..0x78])
            })
        } else {
            None
        };
        let mut uuid = [0u8; 16];
        uuid.copy_from_slice(&b[0x68..0x78]);
        let mut label = [0u8; 16];
        label.copy_from_slice(&b[0x78..0x88]);
        let mut hash_seed = [0u32; 4];
        for (i, w) in hash_seed.iter_mut().enumerate() {
            *w = le32(b, 0xEC + 4 * i);
        }
        Ok(Superblock {
            block_size,
            blocks_count,
            first_data_block,
            blocks_per_group,
            inodes_per_group,
            inodes_count,
            inode_size,
            first_ino,
            desc_size,
            groups: groups as u32,
            feature_compat: compat,
            feature_incompat: incompat,
            feature_ro_compat: ro_compat,
            uuid,
            label,
            state: le16(b, 0x3A),
            hash_seed,
            def_hash_version: b[0xFC],
            flags: le32(b, 0x160),
            first_meta_bg: le32(b, 0x104),
            backup_bgs: [le32(b, 0x24C), le32(b, 0x250)],
            journal_inum: le32(b, 0xE0),
            csum_seed,
        })
    }

    pub fn has_incompat(&self, bit: u32) -> bool {
        self.feature_incompat & bit != 0
    }
    pub fn has_ro_compat(&self, bit: u32) -> bool {
        self.feature_ro_compat & bit != 0
    }
    pub fn has_compat(&self, bit: u32) -> bool {
        self.feature_compat & bit != 0
    }

    /// Group descriptors carry a checksum (and the uninit flags mean
    /// something): metadata_csum or the older gdt_csum.
    pub fn group_csums(&self) -> bool {
        self.has_ro_compat(disk::RO_COMPAT_METADATA_CSUM) || self.has_ro_compat(RO_COMPAT_GDT_CSUM)
    }

    /// Blocks of one group's inode table.
    pub fn itable_blocks(&self) -> u64 {
        (self.inodes_per_group as u64 * self.inode_size as u64).div_ceil(self.block_size as u64)
    }

    /// Does group `g` hold a superblock backup (and so, with meta_bg, a
    /// descriptor block after it)?
    fn group_has_super(&self, g: u64) -> bool {
        if g == 0 {
            return true;
        }
        if self.has_compat(disk::COMPAT_SPARSE_SUPER2) {
            return self.backup_bgs.iter().any(|&b| b as u64 == g);
        }
        if g == 1 || !self.has_ro_compat(disk::RO_COMPAT_SPARSE_SUPER) {
            return true;
        }
        if g.is_multiple_of(2) {
            return false;
        }
        [3u64, 5, 7].iter().any(|&base| {
            let mut p = base;
            while p < g {
                p *= base;
            }
            p == g
        })
    }

    /// Physical block of the `i`-th block of group descriptors.
    pub fn desc_block(&self, i: u64) -> u64 {
        let fdb = self.first_data_block as u64;
        if !self.has_incompat(INCOMPAT_META_BG) || i < self.first_meta_bg as u64 {
            return fdb + 1 + i;
        }
        let per_block = (self.block_size / self.desc_size as u32) as u64;
        let g = i * per_block;
        fdb + g * self.blocks_per_group as u64 + self.group_has_super(g) as u64
    }
}

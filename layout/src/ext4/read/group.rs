//! Group descriptors (32 bytes, or `s_desc_size` with 64bit), checked
//! against their metadata_csum checksum and the filesystem's size. Only
//! what inode lookups need is kept: the inode table's place and how much
//! of it is initialized.

use super::error::{check_csum, ReadError, Result, Where};
use super::le::{le16, le32};
use super::superblock::Superblock;
use crate::ext4::disk::{crc, BG_INODE_UNINIT};

/// One group, as far as reading inodes goes.
#[derive(Debug, Clone, Copy)]
pub struct Group {
    pub inode_table: u64,
    pub flags: u16,
    /// Inodes at the end of the table never used (bg_itable_unused); only
    /// meaningful with group checksums.
    pub itable_unused: u32,
}

impl Group {
    /// Decodes descriptor `g` (`d` is `s_desc_size` bytes), verifying its
    /// checksum when `verify`.
    pub fn decode(sb: &Superblock, g: u32, d: &[u8], verify: bool) -> Result<Group> {
        let at = || Where::Group(g);
        if let Some(seed) = sb.csum_seed {
            let stored = le16(d, 0x1E) as u32;
            let c = crc(crc(seed, &g.to_le_bytes()), &d[..0x1E]);
            let c = crc(crc(c, &[0, 0]), &d[0x20..]);
            let computed = c & 0xFFFF;
            check_csum(verify, at(), stored, computed)?;
        }
        let wide = d.len() >= 64;
        let mut inode_table = le32(d, 0x8) as u64;
        let mut itable_unused = le16(d, 0x1C) as u32;
        if wide {
            inode_table |= (le32(d, 0x28) as u64) << 32;
            itable_unused |= (le16(d, 0x32) as u32) << 16;
        }
        let end = inode_table.checked_add(sb.itable_blocks());
        if inode_table <= sb.first_data_block as u64 || end.is_none_or(|e| e > sb.blocks_count) {
            return Err(ReadError::corrupt(
                at(),
                "bg_inode_table",
                format!(
                    "block {inode_table}: a table of {} blocks there does not fit the filesystem's {} blocks",
                    sb.itable_blocks(),
                    sb.blocks_count
                ),
            ));
        }
        let flags = le16(d, 0x12);
        if sb.group_csums() && itable_unused > sb.inodes_per_group {
            return Err(ReadError::corrupt(
                at(),
                "bg_itable_unused",
                format!(
                    "{itable_unused}, more than the {} inodes of a group",
                    sb.inodes_per_group
                ),
            ));
        }
        Ok(Group {
            inode_table,
            flags,
            itable_unused,
        })
    }

    /// Is inode slot `index` (0-based in its group) initialized? Without
    /// group checksums every slot is.
    pub fn slot_in_use(&self, sb: &Superblock, index: u32) -> Result<(), &'static str> {
        if !sb.group_csums() {
            return Ok(());
        }
        if self.flags & BG_INODE_UNINIT != 0 {
            return Err("its group's inode table is not initialized (INODE_UNINIT)");
        }
        if index >= sb.inodes_per_group - self.itable_unused {
            return Err("past the used part of its group's inode table (bg_itable_unused)");
        }
        Ok(())
    }
}

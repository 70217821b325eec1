//! Extended attributes: the in-inode area (after i_extra_isize) and the
//! xattr block, checked the way the kernel's `check_xattrs` does; names
//! get their prefixes back; POSIX ACLs go from ext4's compact form back to
//! the VFS form `getxattr` returns; values in EA inodes are read.

use super::error::{check_csum, BlockKind, ReadError, Result, Where};
use super::extent::Extent;
use super::inode::{Inode, Xattr, EXT4_EA_INODE_FL, GOOD_OLD_INODE_SIZE};
use super::le::{le16, le32};
use super::source::ReadAt;
use super::superblock::INCOMPAT_EA_INODE;
use super::Ext4;
use crate::ext4::disk::crc;
use fragments::Kind;

const XATTR_MAGIC: u32 = 0xEA02_0000;
/// EXT4_XATTR_SIZE_MAX: the largest value the kernel accepts.
const VALUE_MAX: u32 = 1 << 24;

/// ACL entry tags (linux/posix_acl.h).
const ACL_USER_OBJ: u16 = 0x01;
const ACL_USER: u16 = 0x02;
const ACL_GROUP_OBJ: u16 = 0x04;
const ACL_GROUP: u16 = 0x08;
const ACL_MASK: u16 = 0x10;
const ACL_OTHER: u16 = 0x20;
const ACL_UNDEFINED_ID: u32 = u32::MAX;

/// ext4's on-disk POSIX ACL (v1, 4-byte entries for the owner, group,
/// mask and other tags, 8-byte ones for named users and groups) to the VFS
/// form (v2, 8-byte entries, `ACL_UNDEFINED_ID` for the short ones): the
/// inverse of `disk::acl_to_disk`. `None` if malformed.
pub fn acl_from_disk(d: &[u8]) -> Option<Vec<u8>> {
    if d.len() < 4 || u32::from_le_bytes(d[0..4].try_into().ok()?) != 1 {
        return None;
    }
    let mut out = 2u32.to_le_bytes().to_vec();
    let mut p = &d[4..];
    while !p.is_empty() {
        if p.len() < 4 {
            return None;
        }
        let tag = u16::from_le_bytes([p[0], p[1]]);
        out.extend_from_slice(&p[0..4]);
        match tag {
            ACL_USER | ACL_GROUP => {
                if p.len() < 8 {
                    return None;
                }
                out.extend_from_slice(&p[4..8]);
                p = &p[8..];
            }
            ACL_USER_OBJ | ACL_GROUP_OBJ | ACL_MASK | ACL_OTHER => {
                out.extend_from_slice(&ACL_UNDEFINED_ID.to_le_bytes());
                p = &p[4..];
            }
            _ => return None,
        }
    }
    Some(out)
}

/// The full name of an attribute from its name index and suffix, `None`
/// for an index the kernel does not list or a suffix it cannot have.
fn full_name(index: u8, suffix: &[u8]) -> Option<Vec<u8>> {
    let (prefix, whole): (&[u8], bool) = match index {
        1 => (b"user.", false),
        2 => (b"system.posix_acl_access", true),
        3 => (b"system.posix_acl_default", true),
        4 => (b"trusted.", false),
        6 => (b"security.", false),
        7 => (b"system.", false),
        8 => (b"system.richacl", true),
        _ => return None,
    };
    if whole != suffix.is_empty() {
        return None;
    }
    let mut n = prefix.to_vec();
    n.extend_from_slice(suffix);
    Some(n)
}

/// One entry as stored: (name index, suffix, value location).
struct RawEntry<'a> {
    off: usize,
    index: u8,
    name: &'a [u8],
    value_offs: usize,
    value_inum: u32,
    value_size: u32,
}

impl<R: ReadAt> Ext4<R> {
    /// All extended attributes of `i`, sorted by name.
    pub(crate) fn xattrs_of(&self, i: &Inode) -> Result<Vec<Xattr>> {
        let mut out = Vec::new();
        let isz = i.raw.len();
        if isz > GOOD_OLD_INODE_SIZE {
            let start = GOOD_OLD_INODE_SIZE + super::le::le16(&i.raw, 0x80) as usize;
            if start + 4 <= isz && le32(&i.raw, start) == XATTR_MAGIC {
                self.parse_entries(
                    i.ino,
                    &i.raw,
                    start + 4,
                    start + 4,
                    &|_| Where::Inode(i.ino),
                    &mut out,
                )?;
            }
        }
        if i.xattr_block != 0 {
            self.xattr_block(i, &mut out)?;
        }
        out.sort();
        for w in out.windows(2) {
            if w[0].name == w[1].name {
                return Err(ReadError::corrupt(
                    Where::Inode(i.ino),
                    "xattrs",
                    format!("{} appears twice", String::from_utf8_lossy(&w[0].name)),
                ));
            }
        }
        Ok(out)
    }

    fn xattr_block(&self, i: &Inode, out: &mut Vec<Xattr>) -> Result<()> {
        let blk = i.xattr_block;
        if !self.blocks_valid(blk, 1) {
            return Err(ReadError::corrupt(
                Where::Inode(i.ino),
                "i_file_acl",
                format!("block {blk} outside the filesystem"),
            ));
        }
        let mut b = vec![0u8; self.sb.block_size as usize];
        self.read_block(blk, &mut b)?;
        let at = |off: usize| Where::at(i.ino, BlockKind::XattrBlock, blk, off);
        let magic = le32(&b, 0);
        if magic != XATTR_MAGIC {
            return Err(ReadError::corrupt(
                at(0),
                "h_magic",
                format!("{magic:#010x}, not {XATTR_MAGIC:#010x}"),
            ));
        }
        let nblocks = le32(&b, 8);
        if nblocks != 1 {
            return Err(ReadError::corrupt(
                at(8),
                "h_blocks",
                format!("{nblocks}, not 1"),
            ));
        }
        if let Some(seed) = self.sb.csum_seed {
            let stored = le32(&b, 16);
            let mut z = b.clone();
            z[16..20].fill(0);
            let computed = crc(crc(seed, &blk.to_le_bytes()), &z);
            check_csum(
                self.verify,
                Where::block(i.ino, BlockKind::XattrBlock, blk),
                stored,
                computed,
            )?;
        }
        self.parse_entries(i.ino, &b, 32, 0, &at, out)
    }

    /// Parses the entry list starting at `first` in `region`; values lie
    /// at `value_base + e_value_offs`, before the region's end.
    fn parse_entries(
        &self,
        ino: u32,
        region: &[u8],
        first: usize,
        value_base: usize,
        at: &dyn Fn(usize) -> Where,
        out: &mut Vec<Xattr>,
    ) -> Result<()> {
        let end = region.len();
        let bad = |off: usize, field: &'static str, problem: String| {
            Err(ReadError::corrupt(at(off), field, problem))
        };
        let mut entries = Vec::new();
        let mut off = first;
        loop {
            if off + 4 > end {
                return bad(off, "xattr entries", "the list runs past its area".into());
            }
            if le32(region, off) == 0 {
                break;
            }
            if off + 16 > end {
                return bad(off, "xattr entry", "runs past its area".into());
            }
            let name_len = region[off] as usize;
            let next = off + (16 + name_len).div_ceil(4) * 4;
            if next + 4 > end {
                return bad(
                    off,
                    "e_name_len",
                    format!("{name_len}: the name runs past its area"),
                );
            }
            let name = &region[off + 16..off + 16 + name_len];
            if name.contains(&0) {
                return bad(off + 16, "e_name", "contains a NUL byte".into());
            }
            entries.push(RawEntry {
                off,
                index: region[off + 1],
                name,
                value_offs: le16(region, off + 2) as usize,
                value_inum: le32(region, off + 4),
                value_size: le32(region, off + 8),
            });
            off = next;
        }
        let names_end = off + 4;
        for e in entries {
            let Some(name) = full_name(e.index, e.name) else {
                return bad(
                    e.off,
                    "e_name_index",
                    format!(
                        "index {} with name {:?}: not an attribute Linux lists",
                        e.index,
                        String::from_utf8_lossy(e.name)
                    ),
                );
            };
            if e.value_size > VALUE_MAX {
                return bad(
                    e.off + 8,
                    "e_value_size",
                    format!("{}, more than {VALUE_MAX}", e.value_size),
                );
            }
            let raw = if e.value_inum != 0 {
                self.ea_inode_value(ino, e.value_inum, e.value_size)
                    .map_err(|problem| ReadError::corrupt(at(e.off + 4), "e_value_inum", problem))?
            } else if e.value_size == 0 {
                Vec::new()
            } else {
                let size = e.value_size as usize;
                let v = value_base + e.value_offs;
                if v < names_end || v + size.div_ceil(4) * 4 > end {
                    return bad(
                        e.off + 2,
                        "e_value_offs",
                        format!(
                            "value of {size} bytes at {} overlaps the names or runs past the area",
                            e.value_offs
                        ),
                    );
                }
                region[v..v + size].to_vec()
            };
            let value = if e.index == 2 || e.index == 3 {
                acl_from_disk(&raw).ok_or_else(|| {
                    ReadError::corrupt(
                        at(e.off),
                        "ACL value",
                        format!(
                            "{} is not a valid ext4 POSIX ACL",
                            String::from_utf8_lossy(&name)
                        ),
                    )
                })?
            } else {
                raw
            };
            out.push(Xattr { name, value });
        }
        Ok(())
    }

    /// The value stored in an EA inode (ea_inode feature).
    fn ea_inode_value(&self, owner: u32, ea: u32, size: u32) -> Result<Vec<u8>, String> {
        if !self.sb.has_incompat(INCOMPAT_EA_INODE) {
            return Err(format!("inode {ea} named without the ea_inode feature"));
        }
        if ea == owner || ea < self.sb.first_ino {
            return Err(format!("inode {ea} cannot hold a value"));
        }
        let i = self.inode_core(ea).map_err(|e| e.to_string())?;
        if i.kind != Kind::Regular || i.flags & EXT4_EA_INODE_FL == 0 {
            return Err(format!("inode {ea} is not an EA inode"));
        }
        if i.size != size as u64 {
            return Err(format!(
                "inode {ea} holds {} bytes, the entry says {size}",
                i.size
            ));
        }
        let map: Vec<Extent> = self.extents_of(&i).map_err(|e| e.to_string())?;
        let mut v = vec![0u8; size as usize];
        let n = self
            .read_mapped(&i, &map, 0, &mut v)
            .map_err(|e| e.to_string())?;
        v.truncate(n);
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ext4::disk::acl_to_disk;

    fn vfs(entries: &[(u16, u16, u32)]) -> Vec<u8> {
        let mut v = 2u32.to_le_bytes().to_vec();
        for (tag, perm, id) in entries {
            v.extend_from_slice(&tag.to_le_bytes());
            v.extend_from_slice(&perm.to_le_bytes());
            v.extend_from_slice(&id.to_le_bytes());
        }
        v
    }

    #[test]
    fn acl_round_trips() {
        let u = ACL_UNDEFINED_ID;
        for acl in [
            vfs(&[(1, 6, u), (4, 4, u), (0x20, 4, u)]),
            vfs(&[
                (1, 7, u),
                (2, 6, 1000),
                (2, 4, 70000),
                (4, 5, u),
                (8, 5, 100),
                (0x10, 7, u),
                (0x20, 0, u),
            ]),
            vfs(&[]),
        ] {
            let d = acl_to_disk(&acl).unwrap();
            assert_eq!(acl_from_disk(&d).unwrap(), acl);
            assert_eq!(acl_to_disk(&acl_from_disk(&d).unwrap()).unwrap(), d);
        }
        // Short-entry ids other than ACL_UNDEFINED_ID are not kept on disk.
        let d = acl_to_disk(&vfs(&[(1, 6, 0)])).unwrap();
        assert_eq!(acl_from_disk(&d).unwrap(), vfs(&[(1, 6, u)]));
    }

    #[test]
    fn malformed_acls_are_refused() {
        assert!(acl_from_disk(b"").is_none());
        assert!(acl_from_disk(&2u32.to_le_bytes()).is_none());
        let mut d = 1u32.to_le_bytes().to_vec();
        d.extend_from_slice(&[2, 0, 6, 0, 1, 0]); // named user cut short
        assert!(acl_from_disk(&d).is_none());
        let mut d = 1u32.to_le_bytes().to_vec();
        d.extend_from_slice(&[0x40, 0, 6, 0]); // unknown tag
        assert!(acl_from_disk(&d).is_none());
        let mut d = 1u32.to_le_bytes().to_vec();
        d.extend_from_slice(&[1, 0]); // half an entry
        assert!(acl_from_disk(&d).is_none());
    }

    #[test]
    fn names_get_their_prefixes() {
        assert_eq!(full_name(1, b"a").unwrap(), b"user.a");
        assert_eq!(full_name(2, b"").unwrap(), b"system.posix_acl_access");
        assert_eq!(full_name(3, b"").unwrap(), b"system.posix_acl_default");
        assert_eq!(full_name(4, b"x").unwrap(), b"trusted.x");
        assert_eq!(full_name(6, b"selinux").unwrap(), b"security.selinux");
        assert_eq!(full_name(7, b"data").unwrap(), b"system.data");
        assert!(full_name(2, b"x").is_none());
        assert!(full_name(1, b"").is_none());
        assert!(full_name(5, b"x").is_none());
        assert!(full_name(0, b"x").is_none());
    }
}

//! The metadata region: the tree as flat, little-endian tables.
//!
//! ```text
//! +0    meta header (64 bytes)
//!         0  8  magic "MOSMETA\0"
//!         8  4  inode count          12 4  dentry count
//!        16  4  extent count         20 4  xattr count
//!        24  8  strings length       32 32 reserved, zero
//! +64   inode table   inode count  * 64 bytes
//!       dentry table  dentry count * 16 bytes
//!       extent table  extent count * 32 bytes
//!       xattr table   xattr count  * 16 bytes
//!       strings       names, symlink targets, xattr names and values
//!       zero padding to the region's stored length
//! ```
//!
//! Inode (64 bytes): `0` kind u8, `1` flags u8 (bit 0: owns security),
//! `2` permission bits u16 (mode & 07777), `4` uid u32, `8` gid u32,
//! `12` mtime nanoseconds u32, `16` mtime seconds i64, `24` first xattr u32,
//! `28` xattr count u32, `32..48` kind-specific, `48..64` reserved zero.
//! Kind-specific: regular `32` size u64, `40` first extent u32, `44` extent
//! count u32; directory `32` first dentry u32, `36` dentry count u32;
//! symlink `32` target string offset u32, `36` length u32; char/block device
//! `32` major u32, `36` minor u32; fifo and socket: zero.
//!
//! Dentry (16 bytes): `0` name offset u32, `4` name length u16, `6` zero u16,
//! `8` inode u32, `12` zero u32. A directory's entries are contiguous and
//! sorted by name bytes; directories own consecutive ranges in inode order.
//! Several dentries naming one inode form a hard-link group.
//!
//! Extent (32 bytes): `0` file offset u64, `8` region u32, `12` zero u32,
//! `16` region offset u64, `24` length u64. Blocks of a file not covered by
//! an extent are holes (read as zeros; runs of zero blocks are not stored).
//!
//! Xattr (16 bytes): `0` name offset u32, `4` name length u16, `6` zero u16,
//! `8` value offset u32, `12` value length u32. Sorted by name per inode.
//! POSIX ACLs are kept as the VFS `system.posix_acl_*` values.
//!
//! Inode 0 is the root directory. Inodes are numbered breadth first, entries
//! in name order, so a parent directory always has a smaller number than its
//! subdirectories (which rules out cycles).
//!
//! FORMAT BREAK: any change to these tables changes every fragment.

use std::ops::Range;

mod decode;

pub const META_MAGIC: [u8; 8] = *b"MOSMETA\0";
pub const META_HEADER: usize = 64;
pub const INODE_SIZE: usize = 64;
pub const DENTRY_SIZE: usize = 16;
pub const EXTENT_SIZE: usize = 32;
pub const XATTR_SIZE: usize = 16;
pub const NAME_MAX: usize = 255;
pub const XATTR_NAME_MAX: usize = 255;
pub const XATTR_VALUE_MAX: usize = 65536;
pub const SYMLINK_MAX: usize = 4095;

/// The kind of a tree entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Regular,
    Directory,
    Symlink,
    CharDevice,
    BlockDevice,
    Fifo,
    Socket,
}

impl Kind {
    fn code(self) -> u8 {
        match self {
            Kind::Regular => 1,
            Kind::Directory => 2,
            Kind::Symlink => 3,
            Kind::CharDevice => 4,
            Kind::BlockDevice => 5,
            Kind::Fifo => 6,
            Kind::Socket => 7,
        }
    }
    fn from_code(c: u8) -> Option<Kind> {
        Some(match c {
            1 => Kind::Regular,
            2 => Kind::Directory,
            3 => Kind::Symlink,
            4 => Kind::CharDevice,
            5 => Kind::BlockDevice,
            6 => Kind::Fifo,
            7 => Kind::Socket,
            _ => return None,
        })
    }
    /// The `S_IFMT` bits of this kind.
    pub fn mode_bits(self) -> u32 {
        match self {
            Kind::Regular => 0o100000,
            Kind::Directory => 0o040000,
            Kind::Symlink => 0o120000,
            Kind::CharDevice => 0o020000,
            Kind::BlockDevice => 0o060000,
            Kind::Fifo => 0o010000,
            Kind::Socket => 0o140000,
        }
    }
    /// The type letter `ls -l` prints.
    pub fn letter(self) -> char {
        match self {
            Kind::Regular => '-',
            Kind::Directory => 'd',
            Kind::Symlink => 'l',
            Kind::CharDevice => 'c',
            Kind::BlockDevice => 'b',
            Kind::Fifo => 'p',
            Kind::Socket => 's',
        }
    }
}

/// A reference to bytes in the strings table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StrRef {
    pub off: u32,
    pub len: u32,
}

/// Seconds and nanoseconds since the epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, serde::Serialize)]
pub struct Timestamp {
    pub sec: i64,
    pub nsec: u32,
}

/// What an inode's kind-specific fields hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    Regular { size: u64, extents: Range<u32> },
    Directory { entries: Range<u32> },
    Symlink { target: StrRef },
    Device { major: u32, minor: u32 },
    Empty,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inode {
    pub kind: Kind,
    /// For directories: this fragment owns the directory's security
    /// (mode, uid, gid, xattrs). Always true for other kinds.
    pub owns_security: bool,
    pub perm: u16,
    pub uid: u32,
    pub gid: u32,
    pub mtime: Timestamp,
    pub xattrs: Range<u32>,
    pub body: Body,
}

impl Inode {
    /// The full `st_mode`.
    pub fn mode(&self) -> u32 {
        self.kind.mode_bits() | self.perm as u32
    }
    pub fn size(&self) -> u64 {
        match self.body {
            Body::Regular { size, .. } => size,
            Body::Symlink { target } => target.len as u64,
            _ => 0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dentry {
    pub name: StrRef,
    pub inode: u32,
}

/// Where a piece of a regular file's content is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Extent {
    /// Offset in the file (a multiple of 4096 unless in the small region).
    pub file_offset: u64,
    /// Region index in the header's region table.
    pub region: u32,
    /// Offset in the region's logical bytes.
    pub region_offset: u64,
    /// Bytes; the last extent of a file may end mid-block at end of file.
    pub len: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Xattr {
    pub name: StrRef,
    pub value: StrRef,
}

/// The whole tree of a fragment, validated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Metadata {
    pub inodes: Vec<Inode>,
    pub dentries: Vec<Dentry>,
    pub extents: Vec<Extent>,
    pub xattrs: Vec<Xattr>,
    pub strings: Vec<u8>,
    /// Derived at decode: number of dentries naming each inode (directories:
    /// 2 + subdirectories, the POSIX count).
    pub nlink: Vec<u32>,
    /// Derived at decode: for every directory, its parent (root: itself);
    /// for other inodes, the directory of their first dentry.
    pub parent: Vec<u32>,
    /// Derived at decode: for each inode, the index of its first dentry (root: u32::MAX).
    pub first_dentry: Vec<u32>,
}

/// A structural fault found while decoding, before the path is attached.
#[derive(Debug)]
pub struct MetaFault {
    pub offset: u64,
    pub what: String,
}

fn fault(offset: usize, what: impl Into<String>) -> MetaFault {
    MetaFault {
        offset: offset as u64,
        what: what.into(),
    }
}

impl Metadata {
    pub fn str(&self, s: StrRef) -> &[u8] {
        &self.strings[s.off as usize..(s.off + s.len) as usize]
    }
    pub fn name(&self, d: &Dentry) -> &[u8] {
        self.str(d.name)
    }
    pub fn inode(&self, ino: u32) -> &Inode {
        &self.inodes[ino as usize]
    }
    /// Entries of directory `ino`, sorted by name (empty for other kinds).
    pub fn children(&self, ino: u32) -> &[Dentry] {
        match &self.inodes[ino as usize].body {
            Body::Directory { entries } => {
                &self.dentries[entries.start as usize..entries.end as usize]
            }
            _ => &[],
        }
    }
    pub fn xattrs_of(&self, ino: u32) -> impl Iterator<Item = (&[u8], &[u8])> {
        let r = self.inodes[ino as usize].xattrs.clone();
        self.xattrs[r.start as usize..r.end as usize]
            .iter()
            .map(|x| (self.str(x.name), self.str(x.value)))
    }
    pub fn extents_of(&self, ino: u32) -> &[Extent] {
        match &self.inodes[ino as usize].body {
            Body::Regular { extents, .. } => {
                &self.extents[extents.start as usize..extents.end as usize]
            }
            _ => &[],
        }
    }
    pub fn symlink_target(&self, ino: u32) -> Option<&[u8]> {
        match self.inodes[ino as usize].body {
            Body::Symlink { target } => Some(self.str(target)),
            _ => None,
        }
    }
    /// Finds a child of directory `dir` by name (binary search).
    pub fn lookup_child(&self, dir: u32, name: &[u8]) -> Option<u32> {
        let c = self.children(dir);
        c.binary_search_by(|d| self.name(d).cmp(name))
            .ok()
            .map(|i| c[i].inode)
    }
    /// Resolves an absolute or relative path (`/` separated, no symlinks
    /// followed) to an inode. `""` and `"/"` are the root.
    pub fn lookup(&self, path: &[u8]) -> Option<u32> {
        let mut ino = 0u32;
        for part in path
            .split(|&c| c == b'/')
            .filter(|p| !p.is_empty() && *p != b".")
        {
            ino = self.lookup_child(ino, part)?;
        }
        Some(ino)
    }
    /// The path of an inode through its first dentry, `/`-separated from the root.
    pub fn path_of(&self, ino: u32) -> Vec<u8> {
        let mut parts = Vec::new();
        let mut cur = ino;
        while cur != 0 {
            let d = self.first_dentry[cur as usize];
            if d == u32::MAX {
                break;
            }
            parts.push(self.name(&self.dentries[d as usize]).to_vec());
            cur = self.parent[cur as usize];
        }
        let mut out = Vec::new();
        for p in parts.iter().rev() {
            out.push(b'/');
            out.extend_from_slice(p);
        }
        if out.is_empty() {
            out.push(b'/');
        }
        out
    }
    /// Paths of every dentry naming `ino` (all hard links).
    pub fn paths_of(&self, ino: u32) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        if ino == 0 {
            return vec![b"/".to_vec()];
        }
        for (dir, inode) in self.inodes.iter().enumerate() {
            if let Body::Directory { entries } = &inode.body {
                for d in &self.dentries[entries.start as usize..entries.end as usize] {
                    if d.inode == ino {
                        let mut p = self.path_of(dir as u32);
                        if p != b"/" {
                            p.push(b'/');
                        }
                        p.extend_from_slice(self.name(d));
                        out.push(p);
                    }
                }
            }
        }
        out
    }

    /// Encodes the tables (without the trailing padding).
    pub fn encode(&self) -> Vec<u8> {
        let total = META_HEADER
            + self.inodes.len() * INODE_SIZE
            + self.dentries.len() * DENTRY_SIZE
            + self.extents.len() * EXTENT_SIZE
            + self.xattrs.len() * XATTR_SIZE
            + self.strings.len();
        let mut b = Vec::with_capacity(total);
        b.extend_from_slice(&META_MAGIC);
        b.extend_from_slice(&(self.inodes.len() as u32).to_le_bytes());
        b.extend_from_slice(&(self.dentries.len() as u32).to_le_bytes());
        b.extend_from_slice(&(self.extents.len() as u32).to_le_bytes());
        b.extend_from_slice(&(self.xattrs.len() as u32).to_le_bytes());
        b.extend_from_slice(&(self.strings.len() as u64).to_le_bytes());
        b.resize(META_HEADER, 0);
        for i in &self.inodes {
            let mut r = [0u8; INODE_SIZE];
            r[0] = i.kind.code();
            r[1] = (i.owns_security && i.kind == Kind::Directory) as u8;
            r[2..4].copy_from_slice(&i.perm.to_le_bytes());
            r[4..8].copy_from_slice(&i.uid.to_le_bytes());
            r[8..12].copy_from_slice(&i.gid.to_le_bytes());
            r[12..16].copy_from_slice(&i.mtime.nsec.to_le_bytes());
            r[16..24].copy_from_slice(&i.mtime.sec.to_le_bytes());
            r[24..28].copy_from_slice(&i.xattrs.start.to_le_bytes());
            r[28..32].copy_from_slice(&(i.xattrs.end - i.xattrs.start).to_le_bytes());
            match &i.body {
                Body::Regular { size, extents } => {
                    r[32..40].copy_from_slice(&size.to_le_bytes());
                    r[40..44].copy_from_slice(&extents.start.to_le_bytes());
                    r[44..48].copy_from_slice(&(extents.end - extents.start).to_le_bytes());
                }
                Body::Directory { entries } => {
                    r[32..36].copy_from_slice(&entries.start.to_le_bytes());
                    r[36..40].copy_from_slice(&(entries.end - entries.start).to_le_bytes());
                }
                Body::Symlink { target } => {
                    r[32..36].copy_from_slice(&target.off.to_le_bytes());
                    r[36..40].copy_from_slice(&target.len.to_le_bytes());
                }
                Body::Device { major, minor } => {
                    r[32..36].copy_from_slice(&major.to_le_bytes());
                    r[36..40].copy_from_slice(&minor.to_le_bytes());
                }
                Body::Empty => {}
            }
            b.extend_from_slice(&r);
        }
        for d in &self.dentries {
            b.extend_from_slice(&d.name.off.to_le_bytes());
            b.extend_from_slice(&(d.name.len as u16).to_le_bytes());
            b.extend_from_slice(&[0, 0]);
            b.extend_from_slice(&d.inode.to_le_bytes());
            b.extend_from_slice(&[0; 4]);
        }
        for e in &self.extents {
            b.extend_from_slice(&e.file_offset.to_le_bytes());
            b.extend_from_slice(&e.region.to_le_bytes());
            b.extend_from_slice(&[0; 4]);
            b.extend_from_slice(&e.region_offset.to_le_bytes());
            b.extend_from_slice(&e.len.to_le_bytes());
        }
        for x in &self.xattrs {
            b.extend_from_slice(&x.name.off.to_le_bytes());
            b.extend_from_slice(&(x.name.len as u16).to_le_bytes());
            b.extend_from_slice(&[0, 0]);
            b.extend_from_slice(&x.value.off.to_le_bytes());
            b.extend_from_slice(&x.value.len.to_le_bytes());
        }
        b.extend_from_slice(&self.strings);
        debug_assert_eq!(b.len(), total);
        b
    }
}

#[cfg(test)]
#[path = "meta_tests.rs"]
mod tests;

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

use crate::format::{get_u16, get_u32, get_u64, RegionEntry, RegionKind, BLOCK_SIZE};
use std::ops::Range;

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

    /// Decodes and validates the metadata region's bytes (`logical_len`
    /// bytes of it). `regions` is the header's region table, for extent
    /// bounds. Every rule of the module doc is checked; the first fault is
    /// returned with its offset in the region.
    pub fn decode(
        b: &[u8],
        regions: &[RegionEntry],
        inode_count: u32,
        dentry_count: u32,
    ) -> Result<Metadata, MetaFault> {
        if b.len() < META_HEADER {
            return Err(fault(
                0,
                format!(
                    "metadata region is {} bytes, shorter than its header",
                    b.len()
                ),
            ));
        }
        if b[0..8] != META_MAGIC {
            return Err(fault(0, "bad metadata magic"));
        }
        let n_inodes = get_u32(b, 8) as usize;
        let n_dentries = get_u32(b, 12) as usize;
        let n_extents = get_u32(b, 16) as usize;
        let n_xattrs = get_u32(b, 20) as usize;
        let strings_len = get_u64(b, 24);
        if let Some(p) = b[32..64].iter().position(|&c| c != 0) {
            return Err(fault(32 + p, "reserved byte is not zero"));
        }
        if n_inodes as u64 != inode_count as u64 || n_dentries as u64 != dentry_count as u64 {
            return Err(fault(
                8,
                "inode or entry count differs from the signed header",
            ));
        }
        // Sizes in u64 so absurd counts cannot overflow.
        // The tables fit in u64 (counts are u32), the strings length may
        // not: add it checked (found by the fuzzer).
        let tables = META_HEADER as u64
            + n_inodes as u64 * INODE_SIZE as u64
            + n_dentries as u64 * DENTRY_SIZE as u64
            + n_extents as u64 * EXTENT_SIZE as u64
            + n_xattrs as u64 * XATTR_SIZE as u64;
        let need = tables.saturating_add(strings_len);
        if need != b.len() as u64 {
            return Err(fault(
                8,
                format!("tables need {need} bytes, region holds {}", b.len()),
            ));
        }
        if n_inodes == 0 {
            return Err(fault(8, "no root inode"));
        }
        if strings_len > u32::MAX as u64 {
            return Err(fault(24, "strings table over 4 GiB"));
        }
        let inode_at = META_HEADER;
        let dentry_at = inode_at + n_inodes * INODE_SIZE;
        let extent_at = dentry_at + n_dentries * DENTRY_SIZE;
        let xattr_at = extent_at + n_extents * EXTENT_SIZE;
        let strings_at = xattr_at + n_xattrs * XATTR_SIZE;
        let strings = b[strings_at..].to_vec();
        let sref = |off: usize,
                    o: u32,
                    l: u32,
                    max: usize,
                    what: &str|
         -> Result<StrRef, MetaFault> {
            if (o as u64 + l as u64) > strings_len {
                return Err(fault(off, format!("{what} at strings[{o}..+{l}] is outside the strings table ({strings_len} bytes)")));
            }
            if l as usize > max {
                return Err(fault(off, format!("{what} is {l} bytes (at most {max})")));
            }
            Ok(StrRef { off: o, len: l })
        };

        // Xattrs.
        let mut xattrs = Vec::with_capacity(n_xattrs);
        for i in 0..n_xattrs {
            let o = xattr_at + i * XATTR_SIZE;
            if get_u16(b, o + 6) != 0 {
                return Err(fault(o + 6, "reserved byte is not zero"));
            }
            let name = sref(
                o,
                get_u32(b, o),
                get_u16(b, o + 4) as u32,
                XATTR_NAME_MAX,
                "xattr name",
            )?;
            let value = sref(
                o + 8,
                get_u32(b, o + 8),
                get_u32(b, o + 12),
                XATTR_VALUE_MAX,
                "xattr value",
            )?;
            let nb = &strings[name.off as usize..(name.off + name.len) as usize];
            if nb.is_empty() || nb.contains(&0) {
                return Err(fault(o, format!("xattr {i}: empty name or name with NUL")));
            }
            xattrs.push(Xattr { name, value });
        }

        // Extents.
        let mut extents = Vec::with_capacity(n_extents);
        for i in 0..n_extents {
            let o = extent_at + i * EXTENT_SIZE;
            if get_u32(b, o + 12) != 0 {
                return Err(fault(o + 12, "reserved byte is not zero"));
            }
            let e = Extent {
                file_offset: get_u64(b, o),
                region: get_u32(b, o + 8),
                region_offset: get_u64(b, o + 16),
                len: get_u64(b, o + 24),
            };
            let r = regions
                .get(e.region as usize)
                .ok_or_else(|| fault(o + 8, format!("extent {i}: no region {}", e.region)))?;
            match r.kind {
                RegionKind::Data => {
                    if !e.region_offset.is_multiple_of(BLOCK_SIZE)
                        || !e.file_offset.is_multiple_of(BLOCK_SIZE)
                    {
                        return Err(fault(
                            o,
                            format!("extent {i}: data extent not 4 KiB aligned"),
                        ));
                    }
                }
                RegionKind::Small => {
                    // A small file fits in one block (the builder's
                    // threshold is at most 4096): readers rely on it.
                    if e.len >= BLOCK_SIZE {
                        return Err(fault(
                            o + 24,
                            format!(
                                "extent {i}: small-data extent of {} bytes (at most 4095)",
                                e.len
                            ),
                        ));
                    }
                    if e.file_offset != 0 {
                        return Err(fault(
                            o,
                            format!(
                                "extent {i}: small-data extent at file offset {}",
                                e.file_offset
                            ),
                        ));
                    }
                }
                _ => {
                    return Err(fault(
                        o + 8,
                        format!("extent {i}: region {} holds no file data", e.region),
                    ))
                }
            }
            if e.len == 0
                || e.region_offset
                    .checked_add(e.len)
                    .is_none_or(|end| end > r.logical_len)
            {
                return Err(fault(
                    o + 16,
                    format!(
                        "extent {i}: {} bytes at {} outside region {} ({} bytes)",
                        e.len, e.region_offset, e.region, r.logical_len
                    ),
                ));
            }
            if e.file_offset.checked_add(e.len).is_none() {
                return Err(fault(o, format!("extent {i}: offset overflow")));
            }
            extents.push(e);
        }

        // Inodes.
        let mut inodes = Vec::with_capacity(n_inodes);
        let mut xattr_next = 0u32;
        let mut extent_next = 0u32;
        let mut dentry_next = 0u32;
        for i in 0..n_inodes {
            let o = inode_at + i * INODE_SIZE;
            let r = &b[o..o + INODE_SIZE];
            let kind = Kind::from_code(r[0])
                .ok_or_else(|| fault(o, format!("inode {i}: unknown kind {}", r[0])))?;
            if r[1] & !1 != 0 || (r[1] != 0 && kind != Kind::Directory) {
                return Err(fault(o + 1, format!("inode {i}: bad flags {:#x}", r[1])));
            }
            let perm = get_u16(r, 2);
            if perm & !0o7777 != 0 {
                return Err(fault(
                    o + 2,
                    format!("inode {i}: mode bits {perm:#o} beyond 07777"),
                ));
            }
            let nsec = get_u32(r, 12);
            if nsec >= 1_000_000_000 {
                return Err(fault(o + 12, format!("inode {i}: {nsec} nanoseconds")));
            }
            let xs = get_u32(r, 24);
            let xc = get_u32(r, 28);
            if xs != xattr_next || (xs as u64 + xc as u64) > n_xattrs as u64 {
                return Err(fault(o + 24, format!("inode {i}: xattrs {xs}..+{xc} not the next {xattr_next}.. within {n_xattrs}")));
            }
            xattr_next = xs + xc;
            for w in (xs as usize..(xs + xc) as usize)
                .collect::<Vec<_>>()
                .windows(2)
            {
                let (a, bb) = (&xattrs[w[0]], &xattrs[w[1]]);
                let (na, nb) = (
                    &strings[a.name.off as usize..(a.name.off + a.name.len) as usize],
                    &strings[bb.name.off as usize..(bb.name.off + bb.name.len) as usize],
                );
                if na >= nb {
                    return Err(fault(
                        xattr_at + w[1] * XATTR_SIZE,
                        format!("inode {i}: xattrs not sorted or duplicated"),
                    ));
                }
            }
            let a = get_u32(r, 32);
            let bw = get_u32(r, 36);
            let body = match kind {
                Kind::Regular => {
                    let size = get_u64(r, 32);
                    let es = get_u32(r, 40);
                    let ec = get_u32(r, 44);
                    if es != extent_next || (es as u64 + ec as u64) > n_extents as u64 {
                        return Err(fault(o + 40, format!("inode {i}: extents {es}..+{ec} not the next {extent_next}.. within {n_extents}")));
                    }
                    extent_next = es + ec;
                    let mut end = 0u64;
                    for (k, e) in extents[es as usize..(es + ec) as usize].iter().enumerate() {
                        if e.file_offset < end {
                            return Err(fault(
                                extent_at + (es as usize + k) * EXTENT_SIZE,
                                format!("inode {i}: extents overlap or are unsorted"),
                            ));
                        }
                        end = e.file_offset + e.len;
                        let small = regions[e.region as usize].kind == RegionKind::Small;
                        if end > size || (small && (ec != 1 || end != size)) {
                            return Err(fault(
                                extent_at + (es as usize + k) * EXTENT_SIZE,
                                format!("inode {i}: extent past end of file ({size} bytes)"),
                            ));
                        }
                        if !small && e.len % BLOCK_SIZE != 0 && end != size {
                            return Err(fault(
                                extent_at + (es as usize + k) * EXTENT_SIZE,
                                format!("inode {i}: partial block in the middle of the file"),
                            ));
                        }
                    }
                    Body::Regular {
                        size,
                        extents: es..es + ec,
                    }
                }
                Kind::Directory => {
                    if a != dentry_next || (a as u64 + bw as u64) > n_dentries as u64 {
                        return Err(fault(o + 32, format!("inode {i}: entries {a}..+{bw} not the next {dentry_next}.. within {n_dentries}")));
                    }
                    dentry_next = a + bw;
                    Body::Directory { entries: a..a + bw }
                }
                Kind::Symlink => {
                    let t = sref(o + 32, a, bw, SYMLINK_MAX, "symlink target")?;
                    if t.len == 0 || strings[t.off as usize..(t.off + t.len) as usize].contains(&0)
                    {
                        return Err(fault(
                            o + 32,
                            format!("inode {i}: empty symlink target or target with NUL"),
                        ));
                    }
                    Body::Symlink { target: t }
                }
                Kind::CharDevice | Kind::BlockDevice => Body::Device {
                    major: a,
                    minor: bw,
                },
                Kind::Fifo | Kind::Socket => Body::Empty,
            };
            let used_to = match kind {
                Kind::Regular => 48,
                Kind::Directory | Kind::Symlink | Kind::CharDevice | Kind::BlockDevice => 40,
                Kind::Fifo | Kind::Socket => 32,
            };
            if let Some(p) = r[used_to..].iter().position(|&c| c != 0) {
                return Err(fault(
                    o + used_to + p,
                    format!("inode {i}: reserved byte is not zero"),
                ));
            }
            inodes.push(Inode {
                kind,
                owns_security: kind != Kind::Directory || r[1] & 1 != 0,
                perm,
                uid: get_u32(r, 4),
                gid: get_u32(r, 8),
                mtime: Timestamp {
                    sec: get_u64(r, 16) as i64,
                    nsec,
                },
                xattrs: xs..xs + xc,
                body,
            });
        }
        if xattr_next as usize != n_xattrs {
            return Err(fault(20, "xattrs not owned by any inode"));
        }
        if extent_next as usize != n_extents {
            return Err(fault(16, "extents not owned by any inode"));
        }
        if dentry_next as usize != n_dentries {
            return Err(fault(12, "entries not owned by any directory"));
        }
        if inodes[0].kind != Kind::Directory {
            return Err(fault(inode_at, "inode 0 (the root) is not a directory"));
        }

        // Dentries: names, order, references; derive links and parents.
        let mut dentries = Vec::with_capacity(n_dentries);
        let mut nlink = vec![0u32; n_inodes];
        let mut parent = vec![u32::MAX; n_inodes];
        let mut first_dentry = vec![u32::MAX; n_inodes];
        parent[0] = 0;
        for (dir, inode) in inodes.iter().enumerate() {
            let Body::Directory { entries } = &inode.body else {
                continue;
            };
            nlink[dir] += 2;
            let mut prev: Option<&[u8]> = None;
            for k in entries.clone() {
                let o = dentry_at + k as usize * DENTRY_SIZE;
                if get_u16(b, o + 6) != 0 || get_u32(b, o + 12) != 0 {
                    return Err(fault(o + 6, "reserved byte is not zero"));
                }
                let name = sref(o, get_u32(b, o), get_u16(b, o + 4) as u32, NAME_MAX, "name")?;
                let nb = &strings[name.off as usize..(name.off + name.len) as usize];
                if nb.is_empty()
                    || nb.contains(&b'/')
                    || nb.contains(&0)
                    || nb == b"."
                    || nb == b".."
                {
                    return Err(fault(
                        o,
                        format!("entry {k}: invalid name {:?}", String::from_utf8_lossy(nb)),
                    ));
                }
                if prev.is_some_and(|p| p >= nb) {
                    return Err(fault(
                        o,
                        format!(
                            "entry {k}: name {:?} duplicated or out of order",
                            String::from_utf8_lossy(nb)
                        ),
                    ));
                }
                prev = Some(nb);
                let target = get_u32(b, o + 8);
                let ti = target as usize;
                if ti >= n_inodes || ti == 0 {
                    return Err(fault(
                        o + 8,
                        format!("entry {k}: inode {target} does not exist or is the root"),
                    ));
                }
                if inodes[ti].kind == Kind::Directory {
                    if ti <= dir {
                        return Err(fault(o + 8, format!("entry {k}: directory {target} inside {dir} breaks breadth-first order (a cycle?)")));
                    }
                    if first_dentry[ti] != u32::MAX {
                        return Err(fault(
                            o + 8,
                            format!("entry {k}: directory {target} linked twice"),
                        ));
                    }
                    nlink[dir] += 1;
                } else {
                    nlink[ti] += 1;
                }
                if first_dentry[ti] == u32::MAX {
                    first_dentry[ti] = k;
                    parent[ti] = dir as u32;
                }
                dentries.push(Dentry {
                    name,
                    inode: target,
                });
            }
        }
        // Dentries were pushed in directory order, which is table order
        // because ranges are consecutive.
        for (i, f) in first_dentry.iter().enumerate().skip(1) {
            if *f == u32::MAX {
                return Err(fault(
                    inode_at + i * INODE_SIZE,
                    format!("inode {i} is not reachable from the root"),
                ));
            }
        }
        Ok(Metadata {
            inodes,
            dentries,
            extents,
            xattrs,
            strings,
            nlink,
            parent,
            first_dentry,
        })
    }
}

#[cfg(test)]
#[path = "meta_tests.rs"]
mod tests;

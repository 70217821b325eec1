//! Decoding the metadata region: the header and where each table lies,
//! then the tables in dependency order (xattrs and extents, which inodes
//! reference; inodes, which own ranges of them; entries, which link the
//! inodes into one tree). The first fault found is returned with its
//! offset in the region.

use super::{
    fault, Body, Dentry, Extent, Inode, Kind, MetaFault, Metadata, StrRef, Timestamp, Xattr,
    DENTRY_SIZE, EXTENT_SIZE, INODE_SIZE, META_HEADER, META_MAGIC, NAME_MAX, SYMLINK_MAX,
    XATTR_NAME_MAX, XATTR_SIZE, XATTR_VALUE_MAX,
};
use crate::format::{get_u16, get_u32, get_u64, RegionEntry, RegionKind, BLOCK_SIZE};
use std::ops::Range;

impl Metadata {
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
        let t = TableLayout::read(b, inode_count, dentry_count)?;
        let strings = b[t.strings_at..].to_vec();
        let d = Decoder {
            b,
            t: &t,
            strings: &strings,
        };
        let xattrs = d.xattrs()?;
        let extents = d.extents(regions)?;
        let inodes = d.inodes(regions, &xattrs, &extents)?;
        let links = d.dentries(&inodes)?;
        Ok(Metadata {
            inodes,
            dentries: links.dentries,
            extents,
            xattrs,
            strings,
            nlink: links.nlink,
            parent: links.parent,
            first_dentry: links.first_dentry,
        })
    }
}

/// The counts of the meta header and where each table starts.
struct TableLayout {
    n_inodes: usize,
    n_dentries: usize,
    n_extents: usize,
    n_xattrs: usize,
    strings_len: u64,
    inode_at: usize,
    dentry_at: usize,
    extent_at: usize,
    xattr_at: usize,
    strings_at: usize,
}

impl TableLayout {
    /// The meta header, checked against the signed header's counts and the
    /// region's length.
    fn read(b: &[u8], inode_count: u32, dentry_count: u32) -> Result<TableLayout, MetaFault> {
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
        Ok(TableLayout {
            n_inodes,
            n_dentries,
            n_extents,
            n_xattrs,
            strings_len,
            inode_at,
            dentry_at,
            extent_at,
            xattr_at,
            strings_at,
        })
    }
}

/// The region's bytes with the layout of its tables.
struct Decoder<'a> {
    b: &'a [u8],
    t: &'a TableLayout,
    strings: &'a [u8],
}

/// The next unowned index of each table, while inodes claim their ranges.
#[derive(Default)]
struct NextOwned {
    xattr: u32,
    extent: u32,
    dentry: u32,
}

/// The entries, and what linking them derives for each inode.
struct Links {
    dentries: Vec<Dentry>,
    nlink: Vec<u32>,
    parent: Vec<u32>,
    first_dentry: Vec<u32>,
}

impl Decoder<'_> {
    fn str(&self, s: StrRef) -> &[u8] {
        &self.strings[s.off as usize..(s.off + s.len) as usize]
    }

    /// A reference into the strings table, named `what`, read at `off`.
    fn str_ref(
        &self,
        off: usize,
        o: u32,
        l: u32,
        max: usize,
        what: &str,
    ) -> Result<StrRef, MetaFault> {
        let strings_len = self.t.strings_len;
        if (o as u64 + l as u64) > strings_len {
            return Err(fault(off, format!("{what} at strings[{o}..+{l}] is outside the strings table ({strings_len} bytes)")));
        }
        if l as usize > max {
            return Err(fault(off, format!("{what} is {l} bytes (at most {max})")));
        }
        Ok(StrRef { off: o, len: l })
    }

    fn xattrs(&self) -> Result<Vec<Xattr>, MetaFault> {
        let b = self.b;
        let mut xattrs = Vec::with_capacity(self.t.n_xattrs);
        for i in 0..self.t.n_xattrs {
            let o = self.t.xattr_at + i * XATTR_SIZE;
            if get_u16(b, o + 6) != 0 {
                return Err(fault(o + 6, "reserved byte is not zero"));
            }
            let name = self.str_ref(
                o,
                get_u32(b, o),
                get_u16(b, o + 4) as u32,
                XATTR_NAME_MAX,
                "xattr name",
            )?;
            let value = self.str_ref(
                o + 8,
                get_u32(b, o + 8),
                get_u32(b, o + 12),
                XATTR_VALUE_MAX,
                "xattr value",
            )?;
            let nb = self.str(name);
            if nb.is_empty() || nb.contains(&0) {
                return Err(fault(o, format!("xattr {i}: empty name or name with NUL")));
            }
            xattrs.push(Xattr { name, value });
        }
        Ok(xattrs)
    }

    fn extents(&self, regions: &[RegionEntry]) -> Result<Vec<Extent>, MetaFault> {
        let b = self.b;
        let mut extents = Vec::with_capacity(self.t.n_extents);
        for i in 0..self.t.n_extents {
            let o = self.t.extent_at + i * EXTENT_SIZE;
            if get_u32(b, o + 12) != 0 {
                return Err(fault(o + 12, "reserved byte is not zero"));
            }
            let e = Extent {
                file_offset: get_u64(b, o),
                region: get_u32(b, o + 8),
                region_offset: get_u64(b, o + 16),
                len: get_u64(b, o + 24),
            };
            check_extent(i, o, &e, regions)?;
            extents.push(e);
        }
        Ok(extents)
    }

    fn inodes(
        &self,
        regions: &[RegionEntry],
        xattrs: &[Xattr],
        extents: &[Extent],
    ) -> Result<Vec<Inode>, MetaFault> {
        let t = self.t;
        let mut inodes = Vec::with_capacity(t.n_inodes);
        let mut next = NextOwned::default();
        for i in 0..t.n_inodes {
            inodes.push(self.inode(i, regions, xattrs, extents, &mut next)?);
        }
        if next.xattr as usize != t.n_xattrs {
            return Err(fault(20, "xattrs not owned by any inode"));
        }
        if next.extent as usize != t.n_extents {
            return Err(fault(16, "extents not owned by any inode"));
        }
        if next.dentry as usize != t.n_dentries {
            return Err(fault(12, "entries not owned by any directory"));
        }
        if inodes[0].kind != Kind::Directory {
            return Err(fault(t.inode_at, "inode 0 (the root) is not a directory"));
        }
        Ok(inodes)
    }

    /// Inode `i`: its fields, the xattrs it owns (the next ones, sorted by
    /// name) and its kind-specific body.
    fn inode(
        &self,
        i: usize,
        regions: &[RegionEntry],
        xattrs: &[Xattr],
        extents: &[Extent],
        next: &mut NextOwned,
    ) -> Result<Inode, MetaFault> {
        let o = self.t.inode_at + i * INODE_SIZE;
        let r = &self.b[o..o + INODE_SIZE];
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
        let own_xattrs = self.inode_xattrs(i, o, r, xattrs, next)?;
        let body = match kind {
            Kind::Regular => self.regular_body(i, o, r, regions, extents, next)?,
            Kind::Directory => self.directory_body(i, o, r, next)?,
            Kind::Symlink => self.symlink_body(i, o, r)?,
            Kind::CharDevice | Kind::BlockDevice => Body::Device {
                major: get_u32(r, 32),
                minor: get_u32(r, 36),
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
        Ok(Inode {
            kind,
            owns_security: kind != Kind::Directory || r[1] & 1 != 0,
            perm,
            uid: get_u32(r, 4),
            gid: get_u32(r, 8),
            mtime: Timestamp {
                sec: get_u64(r, 16) as i64,
                nsec,
            },
            xattrs: own_xattrs,
            body,
        })
    }

    /// The xattr range of inode `i` (record `r` at `o`): the next unowned
    /// ones, sorted by name without duplicates.
    fn inode_xattrs(
        &self,
        i: usize,
        o: usize,
        r: &[u8],
        xattrs: &[Xattr],
        next: &mut NextOwned,
    ) -> Result<Range<u32>, MetaFault> {
        let n_xattrs = self.t.n_xattrs;
        let xs = get_u32(r, 24);
        let xc = get_u32(r, 28);
        if xs != next.xattr || (xs as u64 + xc as u64) > n_xattrs as u64 {
            return Err(fault(
                o + 24,
                format!(
                    "inode {i}: xattrs {xs}..+{xc} not the next {}.. within {n_xattrs}",
                    next.xattr
                ),
            ));
        }
        next.xattr = xs + xc;
        for w in (xs as usize..(xs + xc) as usize)
            .collect::<Vec<_>>()
            .windows(2)
        {
            let (na, nb) = (self.str(xattrs[w[0]].name), self.str(xattrs[w[1]].name));
            if na >= nb {
                return Err(fault(
                    self.t.xattr_at + w[1] * XATTR_SIZE,
                    format!("inode {i}: xattrs not sorted or duplicated"),
                ));
            }
        }
        Ok(xs..xs + xc)
    }

    /// A regular file's size and extents: the next unowned ones, sorted,
    /// within the file, whole blocks but at its end (one small-data extent
    /// holds a whole small file).
    fn regular_body(
        &self,
        i: usize,
        o: usize,
        r: &[u8],
        regions: &[RegionEntry],
        extents: &[Extent],
        next: &mut NextOwned,
    ) -> Result<Body, MetaFault> {
        let n_extents = self.t.n_extents;
        let size = get_u64(r, 32);
        let es = get_u32(r, 40);
        let ec = get_u32(r, 44);
        if es != next.extent || (es as u64 + ec as u64) > n_extents as u64 {
            return Err(fault(
                o + 40,
                format!(
                    "inode {i}: extents {es}..+{ec} not the next {}.. within {n_extents}",
                    next.extent
                ),
            ));
        }
        next.extent = es + ec;
        let mut end = 0u64;
        for (k, e) in extents[es as usize..(es + ec) as usize].iter().enumerate() {
            let at = self.t.extent_at + (es as usize + k) * EXTENT_SIZE;
            if e.file_offset < end {
                return Err(fault(
                    at,
                    format!("inode {i}: extents overlap or are unsorted"),
                ));
            }
            end = e.file_offset + e.len;
            let small = regions[e.region as usize].kind == RegionKind::Small;
            if end > size || (small && (ec != 1 || end != size)) {
                return Err(fault(
                    at,
                    format!("inode {i}: extent past end of file ({size} bytes)"),
                ));
            }
            if !small && e.len % BLOCK_SIZE != 0 && end != size {
                return Err(fault(
                    at,
                    format!("inode {i}: partial block in the middle of the file"),
                ));
            }
        }
        Ok(Body::Regular {
            size,
            extents: es..es + ec,
        })
    }

    /// A directory's entries: the next unowned ones.
    fn directory_body(
        &self,
        i: usize,
        o: usize,
        r: &[u8],
        next: &mut NextOwned,
    ) -> Result<Body, MetaFault> {
        let n_dentries = self.t.n_dentries;
        let (a, n) = (get_u32(r, 32), get_u32(r, 36));
        if a != next.dentry || (a as u64 + n as u64) > n_dentries as u64 {
            return Err(fault(
                o + 32,
                format!(
                    "inode {i}: entries {a}..+{n} not the next {}.. within {n_dentries}",
                    next.dentry
                ),
            ));
        }
        next.dentry = a + n;
        Ok(Body::Directory { entries: a..a + n })
    }

    /// A symlink's target: in the strings table, not empty, no NUL.
    fn symlink_body(&self, i: usize, o: usize, r: &[u8]) -> Result<Body, MetaFault> {
        let t = self.str_ref(
            o + 32,
            get_u32(r, 32),
            get_u32(r, 36),
            SYMLINK_MAX,
            "symlink target",
        )?;
        if t.len == 0 || self.str(t).contains(&0) {
            return Err(fault(
                o + 32,
                format!("inode {i}: empty symlink target or target with NUL"),
            ));
        }
        Ok(Body::Symlink { target: t })
    }

    /// The entries of every directory, in directory order (which is table
    /// order, ranges being consecutive): names, order, references; then
    /// every inode but the root reachable. Derives links and parents.
    fn dentries(&self, inodes: &[Inode]) -> Result<Links, MetaFault> {
        let n_inodes = self.t.n_inodes;
        let mut links = Links {
            dentries: Vec::with_capacity(self.t.n_dentries),
            nlink: vec![0u32; n_inodes],
            parent: vec![u32::MAX; n_inodes],
            first_dentry: vec![u32::MAX; n_inodes],
        };
        links.parent[0] = 0;
        for (dir, inode) in inodes.iter().enumerate() {
            let Body::Directory { entries } = &inode.body else {
                continue;
            };
            links.nlink[dir] += 2;
            let mut prev: Option<&[u8]> = None;
            for k in entries.clone() {
                let o = self.t.dentry_at + k as usize * DENTRY_SIZE;
                let name = self.dentry_name(k, o, prev)?;
                prev = Some(self.str(name));
                let target = self.dentry_target(k, o, dir, inodes, &mut links)?;
                links.dentries.push(Dentry {
                    name,
                    inode: target,
                });
            }
        }
        for (i, f) in links.first_dentry.iter().enumerate().skip(1) {
            if *f == u32::MAX {
                return Err(fault(
                    self.t.inode_at + i * INODE_SIZE,
                    format!("inode {i} is not reachable from the root"),
                ));
            }
        }
        Ok(links)
    }

    /// The name of entry `k` (at `o`): valid, and after `prev` in its directory.
    fn dentry_name(&self, k: u32, o: usize, prev: Option<&[u8]>) -> Result<StrRef, MetaFault> {
        let b = self.b;
        if get_u16(b, o + 6) != 0 || get_u32(b, o + 12) != 0 {
            return Err(fault(o + 6, "reserved byte is not zero"));
        }
        let name = self.str_ref(o, get_u32(b, o), get_u16(b, o + 4) as u32, NAME_MAX, "name")?;
        let nb = self.str(name);
        if nb.is_empty() || nb.contains(&b'/') || nb.contains(&0) || nb == b"." || nb == b".." {
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
        Ok(name)
    }

    /// The inode entry `k` (at `o`, in directory `dir`) names: not the
    /// root, a directory only once and below `dir`; counted in `links`.
    fn dentry_target(
        &self,
        k: u32,
        o: usize,
        dir: usize,
        inodes: &[Inode],
        links: &mut Links,
    ) -> Result<u32, MetaFault> {
        let target = get_u32(self.b, o + 8);
        let ti = target as usize;
        if ti >= self.t.n_inodes || ti == 0 {
            return Err(fault(
                o + 8,
                format!("entry {k}: inode {target} does not exist or is the root"),
            ));
        }
        if inodes[ti].kind == Kind::Directory {
            if ti <= dir {
                return Err(fault(o + 8, format!("entry {k}: directory {target} inside {dir} breaks breadth-first order (a cycle?)")));
            }
            if links.first_dentry[ti] != u32::MAX {
                return Err(fault(
                    o + 8,
                    format!("entry {k}: directory {target} linked twice"),
                ));
            }
            links.nlink[dir] += 1;
        } else {
            links.nlink[ti] += 1;
        }
        if links.first_dentry[ti] == u32::MAX {
            links.first_dentry[ti] = k;
            links.parent[ti] = dir as u32;
        }
        Ok(target)
    }
}

/// Extent `i` (at `o`): in a region holding file data, aligned (data) or
/// one small file (small-data), inside the region, no overflow.
fn check_extent(i: usize, o: usize, e: &Extent, regions: &[RegionEntry]) -> Result<(), MetaFault> {
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
    Ok(())
}

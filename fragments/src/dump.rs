//! A readable, offset-annotated dump of a fragment's header and metadata,
//! for review and for golden tests: any change of a byte of the format
//! shows up as a changed line.
//!
//! Each line: the absolute file offset (hex), the structure, the field.

use crate::format::{Encoding, HEADER_SIZE, REGION_ENTRY_SIZE, REGION_TABLE_OFFSET};
use crate::meta::{Body, DENTRY_SIZE, EXTENT_SIZE, INODE_SIZE, META_HEADER, XATTR_SIZE};
use crate::read::Fragment;
use crate::RegionKind;
use std::fmt::Write;

fn hex(b: &[u8]) -> String {
    b.iter().map(|c| format!("{c:02x}")).collect()
}

fn esc(b: &[u8]) -> String {
    format!("\"{}\"", b.escape_ascii())
}

/// Dumps header, region table and every metadata table entry.
pub fn dump(f: &Fragment) -> String {
    let h = f.header();
    let m = f.metadata();
    let mut s = String::new();
    let mut line = |off: u64, what: String| {
        let _ = writeln!(s, "{off:08x}  {what}");
    };
    line(0, "header.magic = \"MOSAICFR\"".into());
    line(8, format!("header.version = {}.{}", h.major, h.minor));
    line(12, format!("header.header_size = {HEADER_SIZE}"));
    line(16, format!("header.incompat = {:#x}", h.incompat));
    line(24, format!("header.compat = {:#x}", h.compat));
    line(32, format!("header.file_size = {}", h.file_size));
    line(40, "header.block_size = 4096".into());
    line(44, format!("header.region_count = {}", h.regions.len()));
    line(48, format!("header.inode_count = {}", h.inode_count));
    line(52, format!("header.dentry_count = {}", h.dentry_count));
    line(56, format!("header.build_time = {}", h.build_time));
    line(
        64,
        format!("header.small_threshold = {}", h.small_threshold),
    );
    line(68, format!("header.zstd_level = {}", h.zstd_level));
    line(128, format!("header.name = {:?}", h.name));
    line(192, format!("header.version_label = {:?}", h.version));
    for (i, r) in h.regions.iter().enumerate() {
        let o = (REGION_TABLE_OFFSET + i * REGION_ENTRY_SIZE) as u64;
        line(
            o,
            format!(
                "region[{i}] kind={} encoding={} file_offset={} stored_len={} logical_len={} hash_index={} root={}",
                r.kind.name(),
                if r.encoding == Encoding::Raw { "raw" } else { "zstd" },
                r.file_offset,
                r.stored_len,
                r.logical_len,
                r.hash_index,
                hex(&r.root)
            ),
        );
    }
    line(4000, format!("header.signer = {}", hex(&h.signer)));
    line(4032, format!("header.signature = {}", hex(&h.signature)));

    let mr = &h.regions[h.region_of(RegionKind::Metadata)];
    let base = mr.file_offset;
    line(
        base,
        format!(
            "meta.header inodes={} dentries={} extents={} xattrs={} strings={}",
            m.inodes.len(),
            m.dentries.len(),
            m.extents.len(),
            m.xattrs.len(),
            m.strings.len()
        ),
    );
    let inode_at = base + META_HEADER as u64;
    for (i, ino) in m.inodes.iter().enumerate() {
        let body = match &ino.body {
            Body::Regular { size, extents } => {
                format!("size={size} extents={}..{}", extents.start, extents.end)
            }
            Body::Directory { entries } => format!("entries={}..{}", entries.start, entries.end),
            Body::Symlink { target } => format!("target={}", esc(m.str(*target))),
            Body::Device { major, minor } => format!("rdev={major}:{minor}"),
            Body::Empty => String::new(),
        };
        line(
            inode_at + (i * INODE_SIZE) as u64,
            format!(
                "inode[{i}] {:?} perm={:04o} uid={} gid={} mtime={}.{:09} owns={} nlink={} xattrs={}..{} {body}",
                ino.kind, ino.perm, ino.uid, ino.gid, ino.mtime.sec, ino.mtime.nsec, ino.owns_security, m.nlink[i], ino.xattrs.start, ino.xattrs.end
            ),
        );
    }
    let dentry_at = inode_at + (m.inodes.len() * INODE_SIZE) as u64;
    for (i, d) in m.dentries.iter().enumerate() {
        line(
            dentry_at + (i * DENTRY_SIZE) as u64,
            format!("dentry[{i}] name={} inode={}", esc(m.name(d)), d.inode),
        );
    }
    let extent_at = dentry_at + (m.dentries.len() * DENTRY_SIZE) as u64;
    for (i, e) in m.extents.iter().enumerate() {
        line(
            extent_at + (i * EXTENT_SIZE) as u64,
            format!(
                "extent[{i}] file_offset={} region={} region_offset={} len={}",
                e.file_offset, e.region, e.region_offset, e.len
            ),
        );
    }
    let xattr_at = extent_at + (m.extents.len() * EXTENT_SIZE) as u64;
    for (i, x) in m.xattrs.iter().enumerate() {
        line(
            xattr_at + (i * XATTR_SIZE) as u64,
            format!(
                "xattr[{i}] name={} value={}",
                esc(m.str(x.name)),
                esc(m.str(x.value))
            ),
        );
    }
    let strings_at = xattr_at + (m.xattrs.len() * XATTR_SIZE) as u64;
    line(strings_at, format!("strings {}", esc(&m.strings)));
    s
}

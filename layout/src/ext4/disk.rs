//! ext4 on-disk structures we synthesize, each encoded in one place with
//! the kernel's field names at their offsets (all little-endian except the
//! jbd2 superblock, which is big-endian), plus the checksums and hashes
//! they carry. Facts from docs.kernel.org/filesystems/ext4 and
//! `../shared/EXT4.md`.

pub const BLOCK: usize = 4096;
pub const INODE_SIZE: usize = 256;
pub const EXTRA_ISIZE: u16 = 32;
pub const BLOCKS_PER_GROUP: u64 = 32768;
pub const DESC_SIZE: usize = 64;
pub const MAX_EXTENT_LEN: u64 = 32768;

pub const ROOT_INO: u32 = 2;
pub const JOURNAL_INO: u32 = 8;
pub const LOST_FOUND_INO: u32 = 11;
pub const FIRST_INO: u32 = 11;

// Feature bits (ext4 superblock).
pub const COMPAT_HAS_JOURNAL: u32 = 0x4;
pub const COMPAT_EXT_ATTR: u32 = 0x8;
pub const COMPAT_DIR_INDEX: u32 = 0x20;
pub const COMPAT_SPARSE_SUPER2: u32 = 0x200;
pub const INCOMPAT_FILETYPE: u32 = 0x2;
pub const INCOMPAT_EXTENTS: u32 = 0x40;
pub const INCOMPAT_64BIT: u32 = 0x80;
pub const INCOMPAT_FLEX_BG: u32 = 0x200;
pub const RO_COMPAT_SPARSE_SUPER: u32 = 0x1;
pub const RO_COMPAT_LARGE_FILE: u32 = 0x2;
pub const RO_COMPAT_HUGE_FILE: u32 = 0x8;
pub const RO_COMPAT_DIR_NLINK: u32 = 0x20;
pub const RO_COMPAT_EXTRA_ISIZE: u32 = 0x40;
pub const RO_COMPAT_METADATA_CSUM: u32 = 0x400;

// Inode flags.
pub const EXT4_INDEX_FL: u32 = 0x1000;
pub const EXT4_EXTENTS_FL: u32 = 0x80000;

// Group descriptor flags.
pub const BG_INODE_UNINIT: u16 = 0x1;
pub const BG_BLOCK_UNINIT: u16 = 0x2;
pub const BG_INODE_ZEROED: u16 = 0x4;

/// File type codes in directory entries.
pub fn dirent_type(kind: fragments::Kind) -> u8 {
    use fragments::Kind::*;
    match kind {
        Regular => 1,
        Directory => 2,
        CharDevice => 3,
        BlockDevice => 4,
        Fifo => 5,
        Socket => 6,
        Symlink => 7,
    }
}

pub(crate) fn put16(b: &mut [u8], off: usize, v: u16) {
    b[off..off + 2].copy_from_slice(&v.to_le_bytes());
}
pub(crate) fn put32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}
fn put32be(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_be_bytes());
}

/// ext4's crc32c: the raw CRC register, no final inversion.
pub fn crc(seed: u32, data: &[u8]) -> u32 {
    !crc32c::crc32c_append(!seed, data)
}

/// Per-inode checksum seed: crc(fs seed, le32 ino, le32 generation).
pub fn inode_seed(fs_seed: u32, ino: u32, gen: u32) -> u32 {
    crc(crc(fs_seed, &ino.to_le_bytes()), &gen.to_le_bytes())
}

/// (nsec << 2) | epoch bits, and the low 32 bits of the seconds.
pub fn encode_time(sec: i64, nsec: u32) -> (u32, u32) {
    // ext4's range: -2^31 .. 2^34 + 2^31 - 1 seconds; clamp instead of wrapping.
    let sec = sec.clamp(-0x8000_0000, 0x3_7FFF_FFFF);
    let low = sec as i32;
    let epoch = ((sec - low as i64) >> 32) as u32 & 3;
    (low as u32, (nsec << 2) | epoch)
}

/// Everything the superblock needs.
pub struct SuperInfo {
    pub inodes_count: u32,
    pub blocks_count: u64,
    pub free_blocks: u64,
    pub free_inodes: u32,
    pub inodes_per_group: u32,
    pub time: u32,
    pub uuid: [u8; 16],
    pub label: [u8; 16],
    pub hash_seed: [u8; 16],
    pub jnl_blocks: [u32; 17],
    pub log_groups_per_flex: u8,
}

/// Block 0: 1024 zero bytes, then the superblock, then zeros.
pub fn superblock_block(s: &SuperInfo) -> Vec<u8> {
    let mut blk = vec![0u8; BLOCK];
    let b = &mut blk[1024..2048];
    put32(b, 0x0, s.inodes_count);
    put32(b, 0x4, s.blocks_count as u32);
    put32(b, 0xC, s.free_blocks as u32);
    put32(b, 0x10, s.free_inodes);
    put32(b, 0x14, 0); // s_first_data_block
    put32(b, 0x18, 2); // s_log_block_size: 4 KiB
    put32(b, 0x1C, 2); // s_log_cluster_size
    put32(b, 0x20, BLOCKS_PER_GROUP as u32);
    put32(b, 0x24, BLOCKS_PER_GROUP as u32);
    put32(b, 0x28, s.inodes_per_group);
    // s_wtime stays 0 (never written): e2fsck compares it with its clock,
    // and a fragment may carry files dated ahead of the reader's clock.
    put16(b, 0x36, 0xFFFF); // s_max_mnt_count: -1
    put16(b, 0x38, 0xEF53);
    put16(b, 0x3A, 1); // s_state: clean
    put16(b, 0x3C, 1); // s_errors: continue
    put32(b, 0x40, s.time); // s_lastcheck
    put32(b, 0x4C, 1); // s_rev_level: dynamic
    put32(b, 0x54, FIRST_INO);
    put16(b, 0x58, INODE_SIZE as u16);
    put32(
        b,
        0x5C,
        COMPAT_HAS_JOURNAL | COMPAT_EXT_ATTR | COMPAT_DIR_INDEX | COMPAT_SPARSE_SUPER2,
    );
    put32(
        b,
        0x60,
        INCOMPAT_FILETYPE | INCOMPAT_EXTENTS | INCOMPAT_64BIT | INCOMPAT_FLEX_BG,
    );
    put32(
        b,
        0x64,
        RO_COMPAT_SPARSE_SUPER
            | RO_COMPAT_LARGE_FILE
            | RO_COMPAT_HUGE_FILE
            | RO_COMPAT_DIR_NLINK
            | RO_COMPAT_EXTRA_ISIZE
            | RO_COMPAT_METADATA_CSUM,
    );
    b[0x68..0x78].copy_from_slice(&s.uuid);
    b[0x78..0x88].copy_from_slice(&s.label);
    put32(b, 0xE0, JOURNAL_INO);
    b[0xEC..0xFC].copy_from_slice(&s.hash_seed);
    b[0xFC] = 1; // s_def_hash_version: half_md4
    b[0xFD] = 1; // s_jnl_backup_type: EXT3_JNL_BACKUP_BLOCKS
    put16(b, 0xFE, DESC_SIZE as u16);
    put32(b, 0x100, 0x0C); // s_default_mount_opts: user_xattr, acl
    put32(b, 0x108, s.time); // s_mkfs_time
    for (i, w) in s.jnl_blocks.iter().enumerate() {
        put32(b, 0x10C + 4 * i, *w);
    }
    put32(b, 0x150, (s.blocks_count >> 32) as u32);
    put32(b, 0x158, (s.free_blocks >> 32) as u32);
    put16(b, 0x15C, EXTRA_ISIZE); // s_min_extra_isize
    put16(b, 0x15E, EXTRA_ISIZE); // s_want_extra_isize
    put32(b, 0x160, 0x2); // s_flags: unsigned directory hash
    b[0x174] = s.log_groups_per_flex;
    b[0x175] = 1; // s_checksum_type: crc32c
    let c = crc(!0, &b[..0x3FC]);
    put32(b, 0x3FC, c);
    blk
}

/// One group descriptor's contents (before its checksum).
pub struct GroupDesc {
    pub block_bitmap: u64,
    pub inode_bitmap: u64,
    pub inode_table: u64,
    pub free_blocks: u32,
    pub free_inodes: u32,
    pub used_dirs: u32,
    pub flags: u16,
    pub itable_unused: u32,
    pub block_bitmap_csum: u32,
    pub inode_bitmap_csum: u32,
}

pub fn encode_group_desc(fs_seed: u32, group: u32, g: &GroupDesc) -> [u8; DESC_SIZE] {
    let mut d = [0u8; DESC_SIZE];
    put32(&mut d, 0x0, g.block_bitmap as u32);
    put32(&mut d, 0x4, g.inode_bitmap as u32);
    put32(&mut d, 0x8, g.inode_table as u32);
    put16(&mut d, 0xC, g.free_blocks as u16);
    put16(&mut d, 0xE, g.free_inodes as u16);
    put16(&mut d, 0x10, g.used_dirs as u16);
    put16(&mut d, 0x12, g.flags);
    put16(&mut d, 0x18, g.block_bitmap_csum as u16);
    put16(&mut d, 0x1A, g.inode_bitmap_csum as u16);
    put16(&mut d, 0x1C, g.itable_unused as u16);
    put32(&mut d, 0x20, (g.block_bitmap >> 32) as u32);
    put32(&mut d, 0x24, (g.inode_bitmap >> 32) as u32);
    put32(&mut d, 0x28, (g.inode_table >> 32) as u32);
    put16(&mut d, 0x2C, (g.free_blocks >> 16) as u16);
    put16(&mut d, 0x2E, (g.free_inodes >> 16) as u16);
    put16(&mut d, 0x30, (g.used_dirs >> 16) as u16);
    put16(&mut d, 0x32, (g.itable_unused >> 16) as u16);
    put16(&mut d, 0x38, (g.block_bitmap_csum >> 16) as u16);
    put16(&mut d, 0x3A, (g.inode_bitmap_csum >> 16) as u16);
    let c = crc(crc(fs_seed, &group.to_le_bytes()), &d);
    put16(&mut d, 0x1E, c as u16);
    d
}

/// A physical extent of a file: logical block, physical block, length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PExtent {
    pub logical: u32,
    pub physical: u64,
    pub len: u16,
}

fn put_extent_header(b: &mut [u8], entries: u16, max: u16, depth: u16) {
    put16(b, 0, 0xF30A);
    put16(b, 2, entries);
    put16(b, 4, max);
    put16(b, 6, depth);
}

fn put_leaf(b: &mut [u8], e: &PExtent) {
    put32(b, 0, e.logical);
    put16(b, 4, e.len);
    put16(b, 6, (e.physical >> 32) as u16);
    put32(b, 8, e.physical as u32);
}

fn put_index(b: &mut [u8], logical: u32, leaf: u64) {
    put32(b, 0, logical);
    put32(b, 4, leaf as u32);
    put16(b, 8, (leaf >> 32) as u16);
}

pub const EXTENTS_PER_BLOCK: usize = (BLOCK - 12) / 12; // 340

/// How many tree blocks a file with `n` extents needs.
pub fn extent_tree_blocks(n: usize) -> usize {
    if n <= 4 {
        0
    } else {
        let leaves = n.div_ceil(EXTENTS_PER_BLOCK);
        if leaves <= 4 {
            leaves
        } else {
            leaves + leaves.div_ceil(EXTENTS_PER_BLOCK)
        }
    }
}

/// Builds `i_block` and the tree blocks (numbered from `first_block`, in
/// the order leaves then index nodes) for a list of extents.
pub fn extent_tree(
    exts: &[PExtent],
    first_block: u64,
    inode_seed: u32,
) -> ([u8; 60], Vec<Vec<u8>>) {
    let mut iblock = [0u8; 60];
    if exts.len() <= 4 {
        put_extent_header(&mut iblock, exts.len() as u16, 4, 0);
        for (i, e) in exts.iter().enumerate() {
            put_leaf(&mut iblock[12 + 12 * i..], e);
        }
        return (iblock, Vec::new());
    }
    let tail = |blk: &mut Vec<u8>| {
        let c = crc(inode_seed, &blk[..BLOCK - 4]);
        put32(blk, BLOCK - 4, c);
    };
    let mut blocks = Vec::new();
    let mut leaf_first = Vec::new();
    for chunk in exts.chunks(EXTENTS_PER_BLOCK) {
        let mut b = vec![0u8; BLOCK];
        put_extent_header(&mut b, chunk.len() as u16, EXTENTS_PER_BLOCK as u16, 0);
        for (i, e) in chunk.iter().enumerate() {
            put_leaf(&mut b[12 + 12 * i..], e);
        }
        tail(&mut b);
        leaf_first.push(chunk[0].logical);
        blocks.push(b);
    }
    let nleaves = blocks.len();
    if nleaves <= 4 {
        put_extent_header(&mut iblock, nleaves as u16, 4, 1);
        for i in 0..nleaves {
            put_index(
                &mut iblock[12 + 12 * i..],
                leaf_first[i],
                first_block + i as u64,
            );
        }
        return (iblock, blocks);
    }
    let mut idx_first = Vec::new();
    for (k, chunk) in (0..nleaves)
        .collect::<Vec<_>>()
        .chunks(EXTENTS_PER_BLOCK)
        .enumerate()
    {
        let mut b = vec![0u8; BLOCK];
        put_extent_header(&mut b, chunk.len() as u16, EXTENTS_PER_BLOCK as u16, 1);
        for (i, &leaf) in chunk.iter().enumerate() {
            put_index(
                &mut b[12 + 12 * i..],
                leaf_first[leaf],
                first_block + leaf as u64,
            );
        }
        tail(&mut b);
        idx_first.push((leaf_first[chunk[0]], first_block + (nleaves + k) as u64));
        blocks.push(b);
    }
    assert!(idx_first.len() <= 4, "depth-2 trees hold 4*340*340 extents");
    put_extent_header(&mut iblock, idx_first.len() as u16, 4, 2);
    for (i, (l, blk)) in idx_first.iter().enumerate() {
        put_index(&mut iblock[12 + 12 * i..], *l, *blk);
    }
    (iblock, blocks)
}

/// The fields of an inode we set.
pub struct InodeFields {
    pub mode: u16,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub mtime: (i64, u32),
    pub links: u16,
    pub blocks_512: u64,
    pub flags: u32,
    pub iblock: [u8; 60],
    pub xattr_block: u64,
}

pub fn encode_inode(fs_seed: u32, ino: u32, f: &InodeFields) -> [u8; INODE_SIZE] {
    let mut b = [0u8; INODE_SIZE];
    let (t, extra) = encode_time(f.mtime.0, f.mtime.1);
    put16(&mut b, 0x0, f.mode);
    put16(&mut b, 0x2, f.uid as u16);
    put32(&mut b, 0x4, f.size as u32);
    put32(&mut b, 0x8, t); // atime
    put32(&mut b, 0xC, t); // ctime
    put32(&mut b, 0x10, t); // mtime
    put16(&mut b, 0x18, f.gid as u16);
    put16(&mut b, 0x1A, f.links);
    put32(&mut b, 0x1C, f.blocks_512 as u32);
    put32(&mut b, 0x20, f.flags);
    b[0x28..0x64].copy_from_slice(&f.iblock);
    put32(&mut b, 0x68, f.xattr_block as u32);
    put32(&mut b, 0x6C, (f.size >> 32) as u32);
    put16(&mut b, 0x74, (f.blocks_512 >> 32) as u16);
    put16(&mut b, 0x76, (f.xattr_block >> 32) as u16);
    put16(&mut b, 0x78, (f.uid >> 16) as u16);
    put16(&mut b, 0x7A, (f.gid >> 16) as u16);
    put16(&mut b, 0x80, EXTRA_ISIZE);
    put32(&mut b, 0x84, extra); // ctime_extra
    put32(&mut b, 0x88, extra); // mtime_extra
    put32(&mut b, 0x8C, extra); // atime_extra
    put32(&mut b, 0x90, t); // crtime
    put32(&mut b, 0x94, extra);
    let c = crc(inode_seed(fs_seed, ino, 0), &b);
    put16(&mut b, 0x7C, c as u16);
    put16(&mut b, 0x82, (c >> 16) as u16);
    b
}

/// The jbd2 v2 superblock of an empty, clean journal (big-endian).
pub fn journal_superblock(maxlen: u32, uuid: &[u8; 16]) -> Vec<u8> {
    let mut b = vec![0u8; BLOCK];
    put32be(&mut b, 0, 0xC03B_3998);
    put32be(&mut b, 4, 4); // superblock v2
    put32be(&mut b, 12, BLOCK as u32);
    put32be(&mut b, 16, maxlen);
    put32be(&mut b, 20, 1); // s_first
    put32be(&mut b, 24, 1); // s_sequence
    b[48..64].copy_from_slice(uuid);
    put32be(&mut b, 64, 1); // s_nr_users
    b[0x100..0x110].copy_from_slice(uuid);
    b
}

/// ext4's half-MD4 directory hash (unsigned char variant), as (major, minor).
pub fn dx_hash(name: &[u8], seed: &[u32; 4]) -> (u32, u32) {
    let mut buf = if seed.iter().all(|&w| w == 0) {
        [0x6745_2301, 0xefcd_ab89, 0x98ba_dcfe, 0x1032_5476]
    } else {
        *seed
    };
    let mut p = name;
    let mut len = name.len() as i64;
    loop {
        let mut input = [0u32; 8];
        str2hashbuf(p, len as usize, &mut input);
        half_md4(&mut buf, &input);
        len -= 32;
        if len <= 0 {
            break;
        }
        p = &p[32..];
    }
    (buf[1] & !1, buf[2])
}

fn str2hashbuf(msg: &[u8], len: usize, out: &mut [u32; 8]) {
    let pad = {
        let p = (len as u32) | ((len as u32) << 8);
        p | (p << 16)
    };
    let mut val = pad;
    let n = len.min(32);
    let mut k = 0;
    for (i, &c) in msg[..n].iter().enumerate() {
        val = (c as u32).wrapping_add(val << 8);
        if i % 4 == 3 {
            out[k] = val;
            k += 1;
            val = pad;
        }
    }
    if k < 8 {
        out[k] = val;
        k += 1;
    }
    while k < 8 {
        out[k] = pad;
        k += 1;
    }
}

fn half_md4(buf: &mut [u32; 4], x: &[u32; 8]) {
    let f = |x: u32, y: u32, z: u32| z ^ (x & (y ^ z));
    let g = |x: u32, y: u32, z: u32| (x & y).wrapping_add((x ^ y) & z);
    let h = |x: u32, y: u32, z: u32| x ^ y ^ z;
    const K2: u32 = 0o13240474631;
    const K3: u32 = 0o15666365641;
    let (mut a, mut b, mut c, mut d) = (buf[0], buf[1], buf[2], buf[3]);
    macro_rules! round {
        ($fn:expr, $a:ident, $b:ident, $c:ident, $d:ident, $x:expr, $s:expr) => {
            $a = $a
                .wrapping_add($fn($b, $c, $d))
                .wrapping_add($x)
                .rotate_left($s);
        };
    }
    round!(f, a, b, c, d, x[0], 3);
    round!(f, d, a, b, c, x[1], 7);
    round!(f, c, d, a, b, x[2], 11);
    round!(f, b, c, d, a, x[3], 19);
    round!(f, a, b, c, d, x[4], 3);
    round!(f, d, a, b, c, x[5], 7);
    round!(f, c, d, a, b, x[6], 11);
    round!(f, b, c, d, a, x[7], 19);
    round!(g, a, b, c, d, x[1].wrapping_add(K2), 3);
    round!(g, d, a, b, c, x[3].wrapping_add(K2), 5);
    round!(g, c, d, a, b, x[5].wrapping_add(K2), 9);
    round!(g, b, c, d, a, x[7].wrapping_add(K2), 13);
    round!(g, a, b, c, d, x[0].wrapping_add(K2), 3);
    round!(g, d, a, b, c, x[2].wrapping_add(K2), 5);
    round!(g, c, d, a, b, x[4].wrapping_add(K2), 9);
    round!(g, b, c, d, a, x[6].wrapping_add(K2), 13);
    round!(h, a, b, c, d, x[3].wrapping_add(K3), 3);
    round!(h, d, a, b, c, x[7].wrapping_add(K3), 9);
    round!(h, c, d, a, b, x[2].wrapping_add(K3), 11);
    round!(h, b, c, d, a, x[6].wrapping_add(K3), 15);
    round!(h, a, b, c, d, x[1].wrapping_add(K3), 3);
    round!(h, d, a, b, c, x[5].wrapping_add(K3), 9);
    round!(h, c, d, a, b, x[0].wrapping_add(K3), 11);
    round!(h, b, c, d, a, x[4].wrapping_add(K3), 15);
    buf[0] = buf[0].wrapping_add(a);
    buf[1] = buf[1].wrapping_add(b);
    buf[2] = buf[2].wrapping_add(c);
    buf[3] = buf[3].wrapping_add(d);
}

/// Extended attribute name prefixes and their index numbers.
pub fn xattr_index(name: &[u8]) -> (u8, &[u8]) {
    const PREFIXES: [(&[u8], u8); 4] = [
        (b"user.", 1),
        (b"trusted.", 4),
        (b"security.", 6),
        (b"system.", 7),
    ];
    match name {
        b"system.posix_acl_access" => return (2, b""),
        b"system.posix_acl_default" => return (3, b""),
        b"system.richacl" => return (8, b""),
        _ => {}
    }
    for (p, i) in PREFIXES {
        if let Some(rest) = name.strip_prefix(p) {
            return (i, rest);
        }
    }
    (0, name)
}

/// VFS POSIX ACL (v2, 8-byte entries) to ext4's on-disk form (v1, short
/// entries for the owner/group/mask/other tags). `None` if malformed.
pub fn acl_to_disk(v: &[u8]) -> Option<Vec<u8>> {
    if v.len() < 4
        || !(v.len() - 4).is_multiple_of(8)
        || u32::from_le_bytes(v[0..4].try_into().ok()?) != 2
    {
        return None;
    }
    let mut out = 1u32.to_le_bytes().to_vec();
    for e in v[4..].chunks(8) {
        let tag = u16::from_le_bytes([e[0], e[1]]);
        out.extend_from_slice(&e[0..4]);
        match tag {
            0x02 | 0x08 => out.extend_from_slice(&e[4..8]),
            0x01 | 0x04 | 0x10 | 0x20 => {}
            _ => return None,
        }
    }
    Some(out)
}

/// ext4's hash of one xattr entry (name chars, then value words).
pub fn xattr_entry_hash(name: &[u8], value: &[u8]) -> u32 {
    let mut h: u32 = 0;
    for &c in name {
        h = (h << 5) ^ (h >> 27) ^ c as u32;
    }
    for w in value.chunks(4) {
        let mut a = [0u8; 4];
        a[..w.len()].copy_from_slice(w);
        h = (h << 16) ^ (h >> 16) ^ u32::from_le_bytes(a);
    }
    h
}

/// Builds an xattr block for (name, value) pairs (VFS names and values);
/// `None` when they do not fit in one block. The checksum depends on the
/// block number and is filled in by `seal_xattr_block`.
pub fn xattr_block(attrs: &[(&[u8], &[u8])]) -> Option<Vec<u8>> {
    let mut ents: Vec<(u8, &[u8], Vec<u8>)> = Vec::new();
    for (n, v) in attrs {
        let (idx, suffix) = xattr_index(n);
        // A name that is only a prefix ("user.") or too long for the
        // one-byte length has no ext4 encoding.
        if (suffix.is_empty() && !matches!(idx, 2 | 3 | 8)) || suffix.len() > 255 {
            return None;
        }
        let value = if idx == 2 || idx == 3 {
            acl_to_disk(v)?
        } else {
            v.to_vec()
        };
        ents.push((idx, suffix, value));
    }
    ents.sort_by(|a, b| (a.0, a.1.len(), a.1).cmp(&(b.0, b.1.len(), b.1)));
    let mut b = vec![0u8; BLOCK];
    put32(&mut b, 0, 0xEA02_0000);
    put32(&mut b, 4, 1); // refcount, set by caller when shared
    put32(&mut b, 8, 1); // h_blocks
    let mut eoff = 32;
    let mut vend = BLOCK;
    let mut block_hash: u32 = 0;
    for (idx, name, value) in &ents {
        let esize = (16 + name.len()).div_ceil(4) * 4;
        let vsize = value.len().div_ceil(4) * 4;
        if eoff + esize + 4 > vend.checked_sub(vsize)? {
            return None;
        }
        vend -= vsize;
        b[vend..vend + value.len()].copy_from_slice(value);
        let h = xattr_entry_hash(name, value);
        b[eoff] = name.len() as u8;
        b[eoff + 1] = *idx;
        put16(
            &mut b,
            eoff + 2,
            if value.is_empty() { 0 } else { vend as u16 },
        );
        put32(&mut b, eoff + 8, value.len() as u32);
        put32(&mut b, eoff + 12, h);
        b[eoff + 16..eoff + 16 + name.len()].copy_from_slice(name);
        eoff += esize;
        block_hash = (block_hash << 16) ^ (block_hash >> 16) ^ h;
    }
    put32(&mut b, 12, block_hash);
    Some(b)
}

/// Sets the refcount and checksum of an xattr block placed at `blocknr`.
pub fn seal_xattr_block(b: &mut [u8], fs_seed: u32, blocknr: u64, refcount: u32) {
    put32(b, 4, refcount);
    put32(b, 16, 0);
    let c = crc(crc(fs_seed, &blocknr.to_le_bytes()), b);
    put32(b, 16, c);
}

#[cfg(test)]
mod xattr_name_tests {
    use super::*;

    #[test]
    fn names_map_to_index_and_suffix() {
        assert_eq!(xattr_index(b"user.mime"), (1, &b"mime"[..]));
        assert_eq!(xattr_index(b"system.richacl"), (8, &b""[..]));
        assert_eq!(xattr_index(b"system.richaclx"), (7, &b"richaclx"[..]));
        assert_eq!(xattr_index(b"system.posix_acl_access"), (2, &b""[..]));
        assert_eq!(xattr_index(b"other.x"), (0, &b"other.x"[..]));
        assert!(xattr_block(&[(b"user.", b"v")]).is_none());
        assert!(xattr_block(&[(b"user.a", b"v")]).is_some());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_matches_ext4_convention() {
        // crc32c("123456789") with standard init/final is 0xE3069283;
        // the raw register form is its complement with seed ~0.
        assert_eq!(crc(!0, b"123456789"), !0xE306_9283);
    }

    #[test]
    fn half_md4_known_values() {
        // Unseeded hashes as computed by e2fsprogs' `debugfs -R "dx_hash -h half_md4 NAME"`
        // are checked end to end by e2fsck on generated images; here we pin stability.
        let seed = [0u32; 4];
        let (h1, _) = dx_hash(b"a", &seed);
        let (h2, _) = dx_hash(b"b", &seed);
        assert_ne!(h1, h2);
        assert_eq!(h1 & 1, 0);
        let long = vec![b'x'; 100];
        let _ = dx_hash(&long, &seed);
    }

    #[test]
    fn acl_conversion() {
        let mut v = 2u32.to_le_bytes().to_vec();
        for (tag, perm, id) in [
            (1u16, 6u16, 0u32),
            (2, 4, 1000),
            (4, 4, 0),
            (0x10, 6, 0),
            (0x20, 4, 0),
        ] {
            v.extend_from_slice(&tag.to_le_bytes());
            v.extend_from_slice(&perm.to_le_bytes());
            v.extend_from_slice(&id.to_le_bytes());
        }
        let d = acl_to_disk(&v).unwrap();
        assert_eq!(d.len(), 4 + 4 + 8 + 4 + 4 + 4);
        assert_eq!(&d[0..4], &1u32.to_le_bytes());
    }

    #[test]
    fn time_encoding() {
        assert_eq!(encode_time(1, 5), (1, 20));
        let (lo, extra) = encode_time(1 << 32, 0);
        assert_eq!((lo, extra), (0, 1));
        let (lo, extra) = encode_time(-1, 0);
        assert_eq!((lo as i32, extra & 3), (-1, 0));
    }
}

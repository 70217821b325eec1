//! Directory blocks: a single linear block for small directories, a real
//! htree (half-MD4, one or two index levels) for the others. All blocks
//! carry metadata_csum tails. Directory contents do not depend on where the
//! blocks are placed, so they are built before the layout is fixed.

use super::disk::{crc, dx_hash, put16, put32, BLOCK};

/// One name in a directory.
pub struct DirIn<'a> {
    pub name: &'a [u8],
    pub ino: u32,
    pub ftype: u8,
}

const TAIL: usize = 12;
const LEAF_SPACE: usize = BLOCK - TAIL;
const ROOT_LIMIT: usize = (BLOCK - 32 - 8) / 8; // 507
const NODE_LIMIT: usize = (BLOCK - 8 - 8) / 8; // 510

fn rec_len(name_len: usize) -> usize {
    (8 + name_len).div_ceil(4) * 4
}

fn put_entry(b: &mut [u8], off: usize, ino: u32, rec: usize, name: &[u8], ftype: u8) {
    put32(b, off, ino);
    put16(b, off + 4, rec as u16);
    b[off + 6] = name.len() as u8;
    b[off + 7] = ftype;
    b[off + 8..off + 8 + name.len()].copy_from_slice(name);
}

/// Writes the 12-byte checksum tail of a leaf block.
fn seal_leaf(b: &mut [u8], seed: u32) {
    let t = BLOCK - TAIL;
    put32(b, t, 0);
    put16(b, t + 4, TAIL as u16);
    b[t + 6] = 0;
    b[t + 7] = 0xDE;
    let c = crc(seed, &b[..t]);
    put32(b, t + 8, c);
}

/// Packs entries into leaf blocks (the last entry of each block stretches
/// to the tail). Returns the blocks and, per block, its first entry index.
fn pack_leaves(
    first: &[(Vec<u8>, u32, u8)],
    entries: &[&DirIn],
    seed: u32,
) -> (Vec<Vec<u8>>, Vec<usize>) {
    let mut blocks = Vec::new();
    let mut starts = Vec::new();
    let mut items: Vec<(&[u8], u32, u8)> = first
        .iter()
        .map(|(n, i, t)| (n.as_slice(), *i, *t))
        .collect();
    items.extend(entries.iter().map(|e| (e.name, e.ino, e.ftype)));
    let mut i = 0;
    while i < items.len() || blocks.is_empty() {
        let mut b = vec![0u8; BLOCK];
        let mut off = 0;
        let mut last = None;
        starts.push(i.saturating_sub(first.len()));
        while i < items.len() && off + rec_len(items[i].0.len()) <= LEAF_SPACE {
            let (n, ino, t) = items[i];
            put_entry(&mut b, off, ino, rec_len(n.len()), n, t);
            last = Some(off);
            off += rec_len(n.len());
            i += 1;
        }
        match last {
            Some(l) => put16(&mut b, l + 4, (LEAF_SPACE - l) as u16),
            None => put16(&mut b, 4, LEAF_SPACE as u16), // empty block: one unused entry
        }
        seal_leaf(&mut b, seed);
        blocks.push(b);
    }
    (blocks, starts)
}

fn seal_dx(b: &mut [u8], count_offset: usize, count: usize, limit: usize, seed: u32) {
    let tail = count_offset + limit * 8;
    put32(b, tail, 0);
    let size = count_offset + count * 8;
    let c = crc(crc(crc(seed, &b[..size]), &b[tail..tail + 4]), &[0; 4]);
    put32(b, tail + 4, c);
}

fn put_dx_entries(b: &mut [u8], at: usize, limit: usize, entries: &[(u32, u32)]) {
    put16(b, at, limit as u16);
    put16(b, at + 2, entries.len() as u16);
    put32(b, at + 4, entries[0].1);
    for (k, (h, blk)) in entries.iter().enumerate().skip(1) {
        put32(b, at + 8 * k, *h);
        put32(b, at + 8 * k + 4, *blk);
    }
}

/// Builds a directory's blocks. Returns (blocks, uses htree).
pub fn build(
    self_ino: u32,
    parent_ino: u32,
    entries: &[DirIn],
    hash_seed: &[u32; 4],
    seed: u32,
) -> (Vec<Vec<u8>>, bool) {
    let dots = vec![
        (b".".to_vec(), self_ino, 2u8),
        (b"..".to_vec(), parent_ino, 2u8),
    ];
    let need: usize = 24 + entries.iter().map(|e| rec_len(e.name.len())).sum::<usize>();
    if need <= LEAF_SPACE {
        let refs: Vec<&DirIn> = entries.iter().collect();
        let (blocks, _) = pack_leaves(&dots, &refs, seed);
        return (blocks, false);
    }
    // htree: entries sorted by hash, packed into leaves.
    let mut hashed: Vec<(u32, u32, &DirIn)> = entries
        .iter()
        .map(|e| {
            let (h, m) = dx_hash(e.name, hash_seed);
            (h, m, e)
        })
        .collect();
    hashed.sort_by(|a, b| (a.0, a.1, a.2.name).cmp(&(b.0, b.1, b.2.name)));
    let sorted: Vec<&DirIn> = hashed.iter().map(|h| h.2).collect();
    let (leaves, starts) = pack_leaves(&[], &sorted, seed);
    // Index hash of each leaf: its first hash, with the collision bit when
    // the previous leaf ends with the same hash.
    let leaf_hash: Vec<u32> = starts
        .iter()
        .map(|&s| {
            let h = hashed[s].0;
            if s > 0 && hashed[s - 1].0 == h {
                h | 1
            } else {
                h
            }
        })
        .collect();
    let nleaves = leaves.len();
    let mut root = vec![0u8; BLOCK];
    put_entry(&mut root, 0, self_ino, 12, b".", 2);
    put_entry(&mut root, 12, parent_ino, BLOCK - 12, b"..", 2);
    root[24 + 4] = 1; // hash_version: half_md4 (unsigned per s_flags)
    root[24 + 5] = 8; // info_length
    let mut out = Vec::new();
    if nleaves <= ROOT_LIMIT {
        let ents: Vec<(u32, u32)> = (0..nleaves).map(|k| (leaf_hash[k], 1 + k as u32)).collect();
        put_dx_entries(&mut root, 32, ROOT_LIMIT, &ents);
        seal_dx(&mut root, 32, ents.len(), ROOT_LIMIT, seed);
        out.push(root);
    } else {
        let nodes = nleaves.div_ceil(NODE_LIMIT);
        assert!(nodes <= ROOT_LIMIT, "two index levels hold 507*510 leaves");
        root[24 + 6] = 1; // indirect_levels
        let first_leaf = 1 + nodes as u32;
        let ents: Vec<(u32, u32)> = (0..nodes)
            .map(|n| (leaf_hash[n * NODE_LIMIT], 1 + n as u32))
            .collect();
        put_dx_entries(&mut root, 32, ROOT_LIMIT, &ents);
        seal_dx(&mut root, 32, ents.len(), ROOT_LIMIT, seed);
        out.push(root);
        for n in 0..nodes {
            let mut b = vec![0u8; BLOCK];
            put16(&mut b, 4, BLOCK as u16); // fake empty dirent spanning the block
            let lo = n * NODE_LIMIT;
            let hi = (lo + NODE_LIMIT).min(nleaves);
            let ents: Vec<(u32, u32)> = (lo..hi)
                .map(|k| (leaf_hash[k], first_leaf + k as u32))
                .collect();
            put_dx_entries(&mut b, 8, NODE_LIMIT, &ents);
            seal_dx(&mut b, 8, ents.len(), NODE_LIMIT, seed);
            out.push(b);
        }
    }
    out.extend(leaves);
    (out, true)
}

//! Block hashes as nodes of each region's own blake3 tree.
//!
//! Why a tree and which one: blake3 already *is* a Merkle tree over 1 KiB
//! chunks. Every region is a whole number of 4 KiB blocks, so every block is
//! a complete subtree of the region's blake3 tree, and so is every aligned
//! run of 2^k blocks. We store, per block, that subtree's chaining value
//! (CV). Then:
//!
//! - the signed root of a region is simply `blake3(stored bytes)` (so
//!   `b3sum` over the region agrees), and it is recomputed at open from the
//!   stored CVs alone, by merging: the whole hash list is checked against the
//!   signature without reading any data;
//! - one block is checked by hashing it at its offset;
//! - a large aligned run (say 1 MiB) is checked in one pass: hash the run as
//!   one subtree, with blake3's SIMD over its chunks, and compare with the
//!   merge of the stored CVs, which costs one compression per block instead
//!   of sixty-four.
//!
//! The list is flat (32 bytes per 4 KiB, 0.8 %), loaded and checked at open.

use blake3::hazmat::{merge_subtrees_non_root, merge_subtrees_root, HasherExt, Mode};
use rayon::prelude::*;

pub type Cv = [u8; 32];
pub const BLOCK: usize = 4096;

/// Chaining value of one 4 KiB block at `offset` (a multiple of 4096) of its region.
pub fn block_cv(offset: u64, block: &[u8]) -> Cv {
    subtree_cv(offset, block)
}

/// Chaining value of the subtree of `data` (2^k whole blocks) at `offset`,
/// which must be a multiple of `data.len()`.
pub fn subtree_cv(offset: u64, data: &[u8]) -> Cv {
    debug_assert!(data.len().is_multiple_of(BLOCK) && (data.len() / BLOCK).is_power_of_two());
    debug_assert!(offset.is_multiple_of(data.len() as u64));
    let mut h = blake3::Hasher::new();
    h.set_input_offset(offset);
    h.update(data);
    h.finalize_non_root()
}

/// Merges 2^k adjacent block CVs into the CV of their subtree.
pub fn merge_pow2(cvs: &[Cv]) -> Cv {
    debug_assert!(cvs.len().is_power_of_two());
    if cvs.len() == 1 {
        return cvs[0];
    }
    let half = cvs.len() / 2;
    merge_subtrees_non_root(
        &merge_pow2(&cvs[..half]),
        &merge_pow2(&cvs[half..]),
        Mode::Hash,
    )
}

/// Largest power of two strictly below `n` (n >= 2): blake3's left subtree.
fn left_len(n: usize) -> usize {
    1 << (usize::BITS - 1 - (n - 1).leading_zeros())
}

/// CV of an arbitrary (non-root) run of blocks that is a left-complete
/// subtree, i.e. an aligned run on the right edge of the region.
fn subtree_from_cvs(cvs: &[Cv]) -> Cv {
    if cvs.len() == 1 {
        return cvs[0];
    }
    let l = left_len(cvs.len());
    merge_subtrees_non_root(
        &subtree_from_cvs(&cvs[..l]),
        &subtree_from_cvs(&cvs[l..]),
        Mode::Hash,
    )
}

/// The region root from its block CVs. Returns `None` for a one-block
/// region, whose root can only be computed from the block itself.
pub fn root_from_cvs(cvs: &[Cv]) -> Option<blake3::Hash> {
    match cvs.len() {
        0 => Some(blake3::hash(b"")),
        1 => None,
        n => {
            let l = left_len(n);
            Some(merge_subtrees_root(
                &subtree_from_cvs(&cvs[..l]),
                &subtree_from_cvs(&cvs[l..]),
                Mode::Hash,
            ))
        }
    }
}

/// Block CVs of a whole region held in memory (length a multiple of 4096), in parallel.
pub fn cvs_of(region: &[u8]) -> Vec<Cv> {
    debug_assert!(region.len().is_multiple_of(BLOCK));
    region
        .par_chunks(BLOCK)
        .enumerate()
        .map(|(i, b)| block_cv((i * BLOCK) as u64, b))
        .collect()
}

/// Splits blocks `[first, first + n)` into maximal aligned power-of-two
/// runs, at most `max` blocks each: each is a subtree of the region's tree.
pub fn aligned_runs(first: u64, n: u64, max: u64) -> impl Iterator<Item = (u64, u64)> {
    let end = first + n;
    let mut p = first;
    std::iter::from_fn(move || {
        if p >= end {
            return None;
        }
        let align = if p == 0 {
            max
        } else {
            (1u64 << p.trailing_zeros()).min(max)
        };
        let mut size = align;
        while p + size > end {
            size /= 2;
        }
        let run = (p, size);
        p += size;
        Some(run)
    })
}

/// Checks `data` (whole blocks, starting at region block `first`) against
/// the stored CVs of those blocks. Returns the index (relative to `first`)
/// of the first bad block, or `None` when all match.
pub fn verify_blocks(first: u64, data: &[u8], cvs: &[Cv]) -> Option<u64> {
    debug_assert_eq!(data.len(), cvs.len() * BLOCK);
    const MAX_RUN: u64 = 256; // 1 MiB subtrees
    for (p, size) in aligned_runs(first, cvs.len() as u64, MAX_RUN) {
        let rel = (p - first) as usize;
        let bytes = &data[rel * BLOCK..(rel + size as usize) * BLOCK];
        let stored = &cvs[rel..rel + size as usize];
        if subtree_cv(p * BLOCK as u64, bytes) != merge_pow2(stored) {
            // Find the culprit block for the message.
            for (i, (b, cv)) in bytes.chunks(BLOCK).zip(stored).enumerate() {
                if block_cv((p + i as u64) * BLOCK as u64, b) != *cv {
                    return Some((rel + i) as u64);
                }
            }
            return Some(rel as u64);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn region(nblocks: usize) -> Vec<u8> {
        (0..nblocks * BLOCK).map(|i| (i * 7 % 251) as u8).collect()
    }

    #[test]
    fn root_from_cvs_is_blake3_of_region() {
        for n in [0usize, 2, 3, 4, 5, 7, 8, 9, 31, 33, 100] {
            let r = region(n);
            let cvs = cvs_of(&r);
            assert_eq!(root_from_cvs(&cvs).unwrap(), blake3::hash(&r), "{n} blocks");
        }
        assert!(root_from_cvs(&cvs_of(&region(1))).is_none());
    }

    #[test]
    fn aligned_runs_cover_exactly() {
        for first in 0..40u64 {
            for n in 0..70u64 {
                let runs: Vec<_> = aligned_runs(first, n, 16).collect();
                let mut p = first;
                for (s, len) in runs {
                    assert_eq!(s, p);
                    assert!(len.is_power_of_two() && len <= 16);
                    assert!(s == 0 || s % len == 0);
                    p += len;
                }
                assert_eq!(p, first + n);
            }
        }
    }

    #[test]
    fn verify_runs_and_names_bad_block() {
        let mut r = region(37);
        let cvs = cvs_of(&r);
        assert_eq!(verify_blocks(0, &r, &cvs), None);
        assert_eq!(
            verify_blocks(5, &r[5 * BLOCK..30 * BLOCK], &cvs[5..30]),
            None
        );
        r[17 * BLOCK + 9] ^= 1;
        assert_eq!(verify_blocks(0, &r, &cvs), Some(17));
        assert_eq!(
            verify_blocks(3, &r[3 * BLOCK..20 * BLOCK], &cvs[3..20]),
            Some(14)
        );
    }
}

//! Compressed regions: independently decompressible zstd frames with an index.
//!
//! ```text
//! +0   magic "MOSZSTD\0"
//! +8   chunk size u32 (logical bytes per frame, 65536)
//! +12  chunk count u32
//! +16  (chunk count + 1) u64 offsets, relative to the region start: frame i
//!      is stored at [off[i], off[i+1]); off[0] is the end of this index
//! ...  frames, then zero padding to the stored length
//! ```
//!
//! The block hashes cover the *stored* bytes, so a frame is verified before
//! it is handed to the decompressor. Every frame but the last decompresses
//! to exactly `chunk size` bytes; the last to the rest of the logical length.
//!
//! FORMAT BREAK: changing this layout or `CHUNK_SIZE` changes fragments.

use crate::format::get_u32;
use crate::format::get_u64;
use rayon::prelude::*;

pub const ZMAGIC: [u8; 8] = *b"MOSZSTD\0";
pub const CHUNK_SIZE: u64 = 65536;
pub const INDEX_HEADER: usize = 16;

/// The decoded chunk index of a compressed region.
#[derive(Debug, Clone)]
pub struct ChunkIndex {
    pub chunk_size: u64,
    pub offsets: Vec<u64>,
}

impl ChunkIndex {
    pub fn index_len(chunks: u64) -> u64 {
        INDEX_HEADER as u64 + (chunks + 1) * 8
    }
    pub fn chunks(&self) -> u64 {
        self.offsets.len() as u64 - 1
    }
    /// Stored byte range of frame `i`.
    pub fn frame(&self, i: u64) -> (u64, u64) {
        (self.offsets[i as usize], self.offsets[i as usize + 1])
    }

    /// Parses the index from the first bytes of a region and checks it
    /// against the region's logical and stored lengths.
    pub fn decode(
        b: &[u8],
        logical_len: u64,
        stored_len: u64,
    ) -> Result<ChunkIndex, (u64, String)> {
        if b.len() < INDEX_HEADER || b[..8] != ZMAGIC {
            return Err((0, "bad compressed-region magic".into()));
        }
        let chunk_size = get_u32(b, 8) as u64;
        if chunk_size != CHUNK_SIZE {
            return Err((8, format!("chunk size {chunk_size}, expected {CHUNK_SIZE}")));
        }
        let count = get_u32(b, 12) as u64;
        if count != logical_len.div_ceil(CHUNK_SIZE) {
            return Err((
                12,
                format!("{count} chunks for {logical_len} logical bytes"),
            ));
        }
        let need = Self::index_len(count);
        if need > stored_len || need > b.len() as u64 {
            return Err((
                12,
                format!("index of {count} chunks does not fit in the region"),
            ));
        }
        let mut offsets = Vec::with_capacity(count as usize + 1);
        let mut prev = need;
        for i in 0..=count {
            let o = INDEX_HEADER + i as usize * 8;
            let v = get_u64(b, o);
            if v < prev || v > stored_len || (i == 0 && v != need) {
                return Err((
                    o as u64,
                    format!("frame offset {v} out of order or outside the region"),
                ));
            }
            prev = v;
            offsets.push(v);
        }
        Ok(ChunkIndex {
            chunk_size,
            offsets,
        })
    }
}

/// Compresses `logical` into the stored form (index + frames), unpadded.
pub fn compress_region(logical: &[u8], level: i32) -> std::io::Result<Vec<u8>> {
    let frames: Vec<Vec<u8>> = logical
        .par_chunks(CHUNK_SIZE as usize)
        .map(|c| zstd::bulk::compress(c, level))
        .collect::<std::io::Result<_>>()?;
    let count = frames.len() as u64;
    let mut out = Vec::new();
    out.extend_from_slice(&ZMAGIC);
    out.extend_from_slice(&(CHUNK_SIZE as u32).to_le_bytes());
    out.extend_from_slice(&(count as u32).to_le_bytes());
    let mut off = ChunkIndex::index_len(count);
    out.extend_from_slice(&off.to_le_bytes());
    for f in &frames {
        off += f.len() as u64;
        out.extend_from_slice(&off.to_le_bytes());
    }
    for f in frames {
        out.extend_from_slice(&f);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_round_trip_and_frames_decompress() {
        let logical: Vec<u8> = (0..200_000u32).map(|i| (i / 1000) as u8).collect();
        let stored = compress_region(&logical, 3).unwrap();
        let idx = ChunkIndex::decode(&stored, logical.len() as u64, stored.len() as u64).unwrap();
        assert_eq!(idx.chunks(), 4);
        let mut back = Vec::new();
        for i in 0..idx.chunks() {
            let (a, b) = idx.frame(i);
            back.extend(
                zstd::bulk::decompress(&stored[a as usize..b as usize], CHUNK_SIZE as usize)
                    .unwrap(),
            );
        }
        assert_eq!(back, logical);
    }

    #[test]
    fn bad_index_is_an_error() {
        let stored = compress_region(&[7u8; 70_000], 3).unwrap();
        for n in 0..40 {
            let _ = ChunkIndex::decode(&stored[..n.min(stored.len())], 70_000, stored.len() as u64);
        }
        let mut bad = stored.clone();
        bad[16 + 8] = 0xff; // second offset beyond the region
        assert!(ChunkIndex::decode(&bad, 70_000, stored.len() as u64).is_err());
    }
}

//! The overlay file's on-disk format (all integers little-endian).
//!
//! ```text
//!  0            4096                      data_offset (1 MiB aligned)
//!  | header      | state table             | data area: block b at
//!  | (one block) | 2 bits per volume block | data_offset + b * 4096 (sparse)
//! ```
//!
//! Header (written once, when the overlay is created, never rewritten):
//!
//! | offset | size | field |
//! | --- | --- | --- |
//! | 0 | 8 | magic `MOSAICOV` |
//! | 8 | 2 | major version (1): a reader refuses a higher major |
//! | 10 | 2 | minor version (0): a higher minor is accepted |
//! | 12 | 4 | incompatible feature bits (none defined: any set bit is refused) |
//! | 16 | 4 | block size (4096) |
//! | 20 | 4 | reserved, zero |
//! | 24 | 8 | volume size in blocks |
//! | 32 | 32 | volume identity (layout's hash of everything that determines the image) |
//! | 64 | 8 | state table offset (4096) |
//! | 72 | 8 | state table length in bytes (a multiple of 4096) |
//! | 80 | 8 | data area offset |
//! | 88 | 4 | crc32c of bytes 0..88 |
//!
//! State table: block `b`'s state is bits `2*(b%32)..` of the `b/32`-th
//! u64 word: 0 = the base volume's bytes, 1 = the data area's block,
//! 2 = zeros; 3 is invalid.

use std::path::Path;

use crate::error::{Error, Result};

pub const MAGIC: [u8; 8] = *b"MOSAICOV";
pub const MAJOR: u16 = 1;
pub const MINOR: u16 = 0;
pub const HEADER_SIZE: usize = 4096;
pub const BLOCK: u64 = 4096;
const CRC_AT: usize = 88;
/// The data area starts on a 1 MiB boundary (so its blocks are aligned on
/// the host filesystem whatever the state table's size).
const DATA_ALIGN: u64 = 1 << 20;

/// Block states (two bits each in the state table).
pub const BASE: u64 = 0;
pub const DATA: u64 = 1;
pub const ZERO: u64 = 2;

/// Blocks described by one 4 KiB page of the state table.
pub const BLOCKS_PER_PAGE: u64 = BLOCK * 4;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub blocks: u64,
    pub identity: [u8; 32],
    pub state_offset: u64,
    pub state_len: u64,
    pub data_offset: u64,
}

impl Header {
    /// The geometry of a new overlay for a volume of `blocks` blocks.
    pub fn new(blocks: u64, identity: [u8; 32]) -> Header {
        let state_len = blocks.div_ceil(BLOCKS_PER_PAGE) * BLOCK;
        let data_offset = (HEADER_SIZE as u64 + state_len).div_ceil(DATA_ALIGN) * DATA_ALIGN;
        Header {
            blocks,
            identity,
            state_offset: HEADER_SIZE as u64,
            state_len,
            data_offset,
        }
    }

    /// The file's full (sparse) length.
    pub fn file_len(&self) -> u64 {
        self.data_offset + self.blocks * BLOCK
    }

    pub fn encode(&self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        b[0..8].copy_from_slice(&MAGIC);
        b[8..10].copy_from_slice(&MAJOR.to_le_bytes());
        b[10..12].copy_from_slice(&MINOR.to_le_bytes());
        b[16..20].copy_from_slice(&(BLOCK as u32).to_le_bytes());
        b[24..32].copy_from_slice(&self.blocks.to_le_bytes());
        b[32..64].copy_from_slice(&self.identity);
        b[64..72].copy_from_slice(&self.state_offset.to_le_bytes());
        b[72..80].copy_from_slice(&self.state_len.to_le_bytes());
        b[80..88].copy_from_slice(&self.data_offset.to_le_bytes());
        let crc = crc32c::crc32c(&b[..CRC_AT]);
        b[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Parses and checks a header read from `path` (a file of `file_len` bytes).
    pub fn decode(path: &Path, b: &[u8; HEADER_SIZE], file_len: u64) -> Result<Header> {
        let bad = |offset: u64, what: String| Error::OverlayCorrupt {
            path: path.to_owned(),
            offset,
            what,
        };
        let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
        let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let u64_at = |o: usize| {
            let mut x = [0u8; 8];
            x.copy_from_slice(&b[o..o + 8]);
            u64::from_le_bytes(x)
        };
        if b[0..8] != MAGIC {
            return Err(bad(0, "not a mosaic overlay (bad magic)".into()));
        }
        let crc = crc32c::crc32c(&b[..CRC_AT]);
        if crc != u32_at(CRC_AT) {
            return Err(bad(CRC_AT as u64, "header checksum mismatch".into()));
        }
        if u16_at(8) != MAJOR {
            return Err(bad(
                8,
                format!(
                    "format version {}.{} (this reader knows {MAJOR}.x)",
                    u16_at(8),
                    u16_at(10)
                ),
            ));
        }
        if u32_at(12) != 0 {
            return Err(bad(
                12,
                format!("unknown incompatible features {:#x}", u32_at(12)),
            ));
        }
        if u32_at(16) != BLOCK as u32 {
            return Err(bad(
                16,
                format!("block size {} (expected {BLOCK})", u32_at(16)),
            ));
        }
        let mut identity = [0u8; 32];
        identity.copy_from_slice(&b[32..64]);
        let h = Header {
            blocks: u64_at(24),
            identity,
            state_offset: u64_at(64),
            state_len: u64_at(72),
            data_offset: u64_at(80),
        };
        let expect = Header::new(h.blocks, identity);
        if h != expect {
            return Err(bad(
                64,
                format!(
                    "geometry (state {}+{}, data {}) does not match {} blocks",
                    h.state_offset, h.state_len, h.data_offset, h.blocks
                ),
            ));
        }
        if file_len < h.file_len() {
            return Err(bad(
                file_len,
                format!(
                    "file is {file_len} bytes, the overlay needs {}",
                    h.file_len()
                ),
            ));
        }
        Ok(h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_bytes_are_pinned() {
        let h = Header::new(70_000, [0xAB; 32]);
        assert_eq!(h.state_len, 5 * 4096);
        assert_eq!(h.data_offset, 1 << 20);
        let b = h.encode();
        let mut expect = Vec::new();
        expect.extend_from_slice(b"MOSAICOV");
        expect.extend_from_slice(&[1, 0, 0, 0]); // 1.0
        expect.extend_from_slice(&[0; 4]); // incompat
        expect.extend_from_slice(&4096u32.to_le_bytes());
        expect.extend_from_slice(&[0; 4]);
        expect.extend_from_slice(&70_000u64.to_le_bytes());
        expect.extend_from_slice(&[0xAB; 32]);
        expect.extend_from_slice(&4096u64.to_le_bytes());
        expect.extend_from_slice(&(5u64 * 4096).to_le_bytes());
        expect.extend_from_slice(&(1u64 << 20).to_le_bytes());
        assert_eq!(&b[..88], &expect[..]);
        assert_eq!(
            u32::from_le_bytes(b[88..92].try_into().unwrap()),
            crc32c::crc32c(&expect)
        );
        assert!(b[92..].iter().all(|&x| x == 0));
        let p = Path::new("x.overlay");
        assert_eq!(Header::decode(p, &b, h.file_len()).unwrap(), h);
    }

    #[test]
    fn decode_names_what_is_wrong() {
        let h = Header::new(10, [1; 32]);
        let p = Path::new("x.overlay");
        let good = h.encode();
        let msg = |b: &[u8; HEADER_SIZE], len| Header::decode(p, b, len).unwrap_err().to_string();
        let mut b = good;
        b[0] = b'X';
        assert!(msg(&b, h.file_len()).contains("bad magic"));
        let mut b = good;
        b[40] ^= 1;
        assert!(msg(&b, h.file_len()).contains("checksum"));
        assert!(msg(&good, h.file_len() - 1).contains("the overlay needs"));
        let mut b = good;
        b[8] = 2;
        let crc = crc32c::crc32c(&b[..CRC_AT]);
        b[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_le_bytes());
        assert!(msg(&b, h.file_len()).contains("format version 2.0"));
    }
}

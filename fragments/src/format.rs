//! The fragment file's fixed structures: the root header and its region
//! table. Every field is little-endian at the offset named beside it; this
//! module is the only place those offsets are written down.
//!
//! ```text
//! file:   [ header: block 0 ][ region 0 ][ region 1 ] ... [ hash region ]
//!           4096 bytes        each starts on a 4 KiB boundary, regions are
//!                             contiguous and the last one ends the file
//! ```
//!
//! Header (4096 bytes):
//!
//! | off  | size | field |
//! |------|------|-------|
//! | 0    | 8    | magic `MOSAICFR` |
//! | 8    | 2    | major version (a reader rejects a higher major) |
//! | 10   | 2    | minor version (a reader accepts a higher minor) |
//! | 12   | 4    | header size (4096) |
//! | 16   | 8    | incompatible feature bits (unknown bit: reject) |
//! | 24   | 8    | compatible feature bits (unknown bit: ignore) |
//! | 32   | 8    | file size |
//! | 40   | 4    | block size (4096) |
//! | 44   | 4    | region count (<= 32) |
//! | 48   | 4    | inode count |
//! | 52   | 4    | directory entry count |
//! | 56   | 8    | build time (SOURCE_DATE_EPOCH seconds, 0: none) |
//! | 64   | 4    | small-file threshold used by the builder |
//! | 68   | 4    | zstd level used by the builder (0: uncompressed) |
//! | 72   | 56   | reserved, zero |
//! | 128  | 64   | fragment name, UTF-8, NUL padded |
//! | 192  | 64   | fragment version, UTF-8, NUL padded |
//! | 256  | 96*N | region table, N = region count |
//! | ...  |      | reserved, zero up to 4000 |
//! | 4000 | 32   | ed25519 public key of the signer |
//! | 4032 | 64   | ed25519 signature over bytes 0..4032 |
//!
//! Region table entry (96 bytes):
//!
//! | off | size | field |
//! |-----|------|-------|
//! | 0   | 1    | kind: 1 data, 2 small-data, 3 metadata, 4 hashes |
//! | 1   | 1    | encoding: 0 raw, 1 zstd chunks |
//! | 2   | 6    | reserved, zero |
//! | 8   | 8    | file offset (multiple of 4096) |
//! | 16  | 8    | stored length (multiple of 4096) |
//! | 24  | 8    | logical length (raw: bytes before the final zero padding, which for a data region are whole blocks; zstd: uncompressed length) |
//! | 32  | 8    | index of the region's first block hash in the hash region |
//! | 40  | 32   | root: blake3 of the region's stored bytes |
//! | 72  | 24   | reserved, zero |
//!
//! FORMAT BREAK: changing any offset, size or constant here changes the bytes
//! of every fragment; bump the major version.

use crate::error::{Error, Result};
use std::path::Path;

pub const MAGIC: [u8; 8] = *b"MOSAICFR";
pub const VERSION_MAJOR: u16 = 1;
pub const VERSION_MINOR: u16 = 0;
pub const BLOCK_SIZE: u64 = 4096;
pub const HEADER_SIZE: usize = 4096;
pub const MAX_REGIONS: usize = 32;
pub const REGION_ENTRY_SIZE: usize = 96;
pub const NAME_LEN: usize = 64;
pub const REGION_TABLE_OFFSET: usize = 256;
pub const PUBKEY_OFFSET: usize = 4000;
pub const SIGNATURE_OFFSET: usize = 4032;
/// The signature covers everything before it, the signer's key included.
pub const SIGNED_LEN: usize = SIGNATURE_OFFSET;

/// Incompatible feature: at least one region is stored as zstd chunks.
pub const INCOMPAT_ZSTD: u64 = 1 << 0;
pub const INCOMPAT_KNOWN: u64 = INCOMPAT_ZSTD;

const _: () = assert!(REGION_TABLE_OFFSET + MAX_REGIONS * REGION_ENTRY_SIZE <= PUBKEY_OFFSET);
const _: () = assert!(SIGNATURE_OFFSET + 64 == HEADER_SIZE);

pub use crate::region::RegionKind;

/// The kind byte of a region table entry (`RegionKind` itself lives below
/// this module and `error`, which both need it).
impl RegionKind {
    fn code(self) -> u8 {
        match self {
            RegionKind::Data => 1,
            RegionKind::Small => 2,
            RegionKind::Metadata => 3,
            RegionKind::Hashes => 4,
        }
    }
    fn from_code(c: u8) -> Option<Self> {
        Some(match c {
            1 => RegionKind::Data,
            2 => RegionKind::Small,
            3 => RegionKind::Metadata,
            4 => RegionKind::Hashes,
            _ => return None,
        })
    }
}

/// How a region's bytes are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    Raw,
    /// Independently decompressible zstd frames with an index, see `compress`.
    Zstd,
}

/// One entry of the region table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionEntry {
    pub kind: RegionKind,
    pub encoding: Encoding,
    pub file_offset: u64,
    pub stored_len: u64,
    pub logical_len: u64,
    pub hash_index: u64,
    pub root: [u8; 32],
}

impl RegionEntry {
    pub fn blocks(&self) -> u64 {
        self.stored_len / BLOCK_SIZE
    }
}

/// The decoded root header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub major: u16,
    pub minor: u16,
    pub incompat: u64,
    pub compat: u64,
    pub file_size: u64,
    pub inode_count: u32,
    pub dentry_count: u32,
    pub build_time: u64,
    pub small_threshold: u32,
    pub zstd_level: u32,
    pub name: String,
    pub version: String,
    pub regions: Vec<RegionEntry>,
    pub signer: [u8; 32],
    pub signature: [u8; 64],
}

fn put_u16(b: &mut [u8], off: usize, v: u16) {
    b[off..off + 2].copy_from_slice(&v.to_le_bytes());
}
fn put_u32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}
fn put_u64(b: &mut [u8], off: usize, v: u64) {
    b[off..off + 8].copy_from_slice(&v.to_le_bytes());
}
pub(crate) fn get_u16(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([b[off], b[off + 1]])
}
pub(crate) fn get_u32(b: &[u8], off: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[off..off + 4]);
    u32::from_le_bytes(a)
}
pub(crate) fn get_u64(b: &[u8], off: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(a)
}

fn put_name(b: &mut [u8], off: usize, s: &str) {
    b[off..off + s.len()].copy_from_slice(s.as_bytes());
}

/// Checks a fragment name or version: UTF-8 (by type), no NUL, fits the field.
pub fn check_label(what: &str, s: &str) -> Result<()> {
    if s.len() >= NAME_LEN || s.contains('\0') {
        return Err(Error::Options(format!(
            "{what} {s:?}: at most {} bytes and no NUL",
            NAME_LEN - 1
        )));
    }
    Ok(())
}

impl Header {
    /// Encodes the header; the signature field holds `self.signature`.
    pub fn encode(&self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        b[0..8].copy_from_slice(&MAGIC);
        put_u16(&mut b, 8, self.major);
        put_u16(&mut b, 10, self.minor);
        put_u32(&mut b, 12, HEADER_SIZE as u32);
        put_u64(&mut b, 16, self.incompat);
        put_u64(&mut b, 24, self.compat);
        put_u64(&mut b, 32, self.file_size);
        put_u32(&mut b, 40, BLOCK_SIZE as u32);
        put_u32(&mut b, 44, self.regions.len() as u32);
        put_u32(&mut b, 48, self.inode_count);
        put_u32(&mut b, 52, self.dentry_count);
        put_u64(&mut b, 56, self.build_time);
        put_u32(&mut b, 64, self.small_threshold);
        put_u32(&mut b, 68, self.zstd_level);
        put_name(&mut b, 128, &self.name);
        put_name(&mut b, 192, &self.version);
        for (i, r) in self.regions.iter().enumerate() {
            let o = REGION_TABLE_OFFSET + i * REGION_ENTRY_SIZE;
            b[o] = r.kind.code();
            b[o + 1] = match r.encoding {
                Encoding::Raw => 0,
                Encoding::Zstd => 1,
            };
            put_u64(&mut b, o + 8, r.file_offset);
            put_u64(&mut b, o + 16, r.stored_len);
            put_u64(&mut b, o + 24, r.logical_len);
            put_u64(&mut b, o + 32, r.hash_index);
            b[o + 40..o + 72].copy_from_slice(&r.root);
        }
        b[PUBKEY_OFFSET..PUBKEY_OFFSET + 32].copy_from_slice(&self.signer);
        b[SIGNATURE_OFFSET..].copy_from_slice(&self.signature);
        b
    }

    /// Decodes and validates the header structure (not the signature, and
    /// not the regions' contents). `file_len` is the real length of the file.
    pub fn decode(path: &Path, b: &[u8; HEADER_SIZE], file_len: u64) -> Result<Header> {
        let raw = RawHeader { path, b };
        let fixed = raw.fixed_fields(file_len)?;
        let name = raw.label(128)?;
        let version = raw.label(192)?;
        raw.zero_check(72, 128)?;
        let regions = raw.region_table(&fixed)?;
        raw.zero_check(
            REGION_TABLE_OFFSET + fixed.region_count * REGION_ENTRY_SIZE,
            PUBKEY_OFFSET,
        )?;
        let mut signer = [0u8; 32];
        signer.copy_from_slice(&b[PUBKEY_OFFSET..PUBKEY_OFFSET + 32]);
        let mut signature = [0u8; 64];
        signature.copy_from_slice(&b[SIGNATURE_OFFSET..]);
        Ok(Header {
            major: fixed.major,
            minor: fixed.minor,
            incompat: fixed.incompat,
            compat: get_u64(b, 24),
            file_size: fixed.file_size,
            inode_count: get_u32(b, 48),
            dentry_count: get_u32(b, 52),
            build_time: get_u64(b, 56),
            small_threshold: get_u32(b, 64),
            zstd_level: get_u32(b, 68),
            name,
            version,
            regions,
            signer,
            signature,
        })
    }

    /// The file size field (offset 32) of raw header bytes, read without
    /// decoding the rest: for a header kept apart from its file.
    pub fn file_size_of(b: &[u8; HEADER_SIZE]) -> u64 {
        get_u64(b, 32)
    }

    /// Decodes a header kept apart from its fragment file (in an update
    /// package, in a reverse-differential file): the structure is checked
    /// against the file size the header itself declares.
    pub fn decode_detached(path: &Path, b: &[u8; HEADER_SIZE]) -> Result<Header> {
        Header::decode(path, b, Header::file_size_of(b))
    }

    /// Index of the single region of `kind` (metadata, small-data).
    pub fn region_of(&self, kind: RegionKind) -> usize {
        self.regions
            .iter()
            .position(|r| r.kind == kind)
            .expect("decode checked that the region exists")
    }
}

/// The fields of the header checked before anything else is read.
struct FixedFields {
    major: u16,
    minor: u16,
    incompat: u64,
    file_size: u64,
    region_count: usize,
}

/// Header bytes being decoded, with the file they came from: every check
/// names its byte offset.
struct RawHeader<'a> {
    path: &'a Path,
    b: &'a [u8; HEADER_SIZE],
}

impl RawHeader<'_> {
    fn corrupt(&self, offset: usize, what: String) -> Error {
        Error::Corrupt {
            path: self.path.to_owned(),
            offset: offset as u64,
            what,
        }
    }

    fn unsupported(&self, what: String) -> Error {
        Error::Unsupported {
            path: self.path.to_owned(),
            what,
        }
    }

    fn zero_check(&self, from: usize, to: usize) -> Result<()> {
        match self.b[from..to].iter().position(|&c| c != 0) {
            Some(p) => Err(self.corrupt(from + p, "reserved byte is not zero".into())),
            None => Ok(()),
        }
    }

    /// A NUL-padded UTF-8 name field at `off`.
    fn label(&self, off: usize) -> Result<String> {
        let raw = &self.b[off..off + NAME_LEN];
        let end = raw
            .iter()
            .position(|&c| c == 0)
            .ok_or_else(|| self.corrupt(off, "name field not NUL terminated".into()))?;
        if raw[end..].iter().any(|&c| c != 0) {
            return Err(self.corrupt(off, "bytes after the name's NUL".into()));
        }
        String::from_utf8(raw[..end].to_vec())
            .map_err(|_| self.corrupt(off, "name is not UTF-8".into()))
    }

    /// Magic, version, header and block sizes, feature bits, file size and
    /// region count, in that order.
    fn fixed_fields(&self, file_len: u64) -> Result<FixedFields> {
        let b = self.b;
        if b[0..8] != MAGIC {
            return Err(self.corrupt(0, "not a mosaic fragment (bad magic)".into()));
        }
        let major = get_u16(b, 8);
        let minor = get_u16(b, 10);
        if major != VERSION_MAJOR {
            return Err(self.unsupported(format!(
                "format version {major}.{minor}; this reader implements {VERSION_MAJOR}.x"
            )));
        }
        if get_u32(b, 12) != HEADER_SIZE as u32 {
            return Err(self.corrupt(
                12,
                format!("header size {} != {HEADER_SIZE}", get_u32(b, 12)),
            ));
        }
        let incompat = get_u64(b, 16);
        if incompat & !INCOMPAT_KNOWN != 0 {
            return Err(self.unsupported(format!(
                "incompatible feature bits {:#x}",
                incompat & !INCOMPAT_KNOWN
            )));
        }
        let file_size = get_u64(b, 32);
        if file_size != file_len {
            return Err(if file_len < file_size {
                Error::Truncated {
                    path: self.path.to_owned(),
                    offset: 0,
                    need: file_size,
                    have: file_len,
                }
            } else {
                self.corrupt(
                    32,
                    format!("header says {file_size} bytes, file has {file_len}"),
                )
            });
        }
        if get_u32(b, 40) != BLOCK_SIZE as u32 {
            return Err(self.corrupt(40, format!("block size {} != {BLOCK_SIZE}", get_u32(b, 40))));
        }
        let region_count = get_u32(b, 44) as usize;
        if region_count > MAX_REGIONS {
            return Err(self.corrupt(
                44,
                format!("{region_count} regions (at most {MAX_REGIONS})"),
            ));
        }
        Ok(FixedFields {
            major,
            minor,
            incompat,
            file_size,
            region_count,
        })
    }

    /// The region table: each entry decoded and placed (contiguous regions,
    /// consecutive hash indexes, the hash region last), then the set as a
    /// whole (one metadata and one small-data region, ending the file).
    fn region_table(&self, fixed: &FixedFields) -> Result<Vec<RegionEntry>> {
        let mut regions = Vec::with_capacity(fixed.region_count);
        let mut expect_offset = HEADER_SIZE as u64;
        let mut expect_hash = 0u64;
        for i in 0..fixed.region_count {
            let r = self.region_entry(i, fixed.incompat)?;
            expect_offset = self.region_extent(i, &r, expect_offset, fixed.file_size)?;
            expect_hash = self.region_hash_index(i, &r, fixed.region_count, expect_hash)?;
            regions.push(r);
        }
        if regions.last().map(|r| r.kind) != Some(RegionKind::Hashes) {
            return Err(self.corrupt(44, "no hash region".into()));
        }
        for (kind, what) in [
            (RegionKind::Metadata, "metadata"),
            (RegionKind::Small, "small-data"),
        ] {
            if regions.iter().filter(|r| r.kind == kind).count() != 1 {
                return Err(self.corrupt(44, format!("expected exactly one {what} region")));
            }
        }
        if expect_offset != fixed.file_size {
            return Err(self.corrupt(
                32,
                format!(
                    "regions end at {expect_offset}, file is {} bytes",
                    fixed.file_size
                ),
            ));
        }
        Ok(regions)
    }

    /// Table entry `i`: kind, encoding and reserved bytes checked.
    fn region_entry(&self, i: usize, incompat: u64) -> Result<RegionEntry> {
        let b = self.b;
        let o = REGION_TABLE_OFFSET + i * REGION_ENTRY_SIZE;
        let kind = RegionKind::from_code(b[o])
            .ok_or_else(|| self.corrupt(o, format!("region {i}: unknown kind {}", b[o])))?;
        let encoding = match b[o + 1] {
            0 => Encoding::Raw,
            1 if incompat & INCOMPAT_ZSTD != 0 => Encoding::Zstd,
            e => return Err(self.corrupt(o + 1, format!("region {i}: unknown encoding {e}"))),
        };
        self.zero_check(o + 2, o + 8)?;
        self.zero_check(o + 72, o + 96)?;
        let mut root = [0u8; 32];
        root.copy_from_slice(&b[o + 40..o + 72]);
        Ok(RegionEntry {
            kind,
            encoding,
            file_offset: get_u64(b, o + 8),
            stored_len: get_u64(b, o + 16),
            logical_len: get_u64(b, o + 24),
            hash_index: get_u64(b, o + 32),
            root,
        })
    }

    /// Where region `i` lies: at `expect_offset`, whole blocks, inside the
    /// file, its logical length and encoding fit. Returns where it ends.
    fn region_extent(
        &self,
        i: usize,
        r: &RegionEntry,
        expect_offset: u64,
        file_size: u64,
    ) -> Result<u64> {
        let o = REGION_TABLE_OFFSET + i * REGION_ENTRY_SIZE;
        if r.file_offset != expect_offset {
            return Err(self.corrupt(
                o + 8,
                format!(
                    "region {i} starts at {}, expected {expect_offset} (regions are contiguous)",
                    r.file_offset
                ),
            ));
        }
        if !r.stored_len.is_multiple_of(BLOCK_SIZE) {
            return Err(self.corrupt(
                o + 16,
                format!(
                    "region {i}: stored length {} not a multiple of 4096",
                    r.stored_len
                ),
            ));
        }
        let end = r
            .file_offset
            .checked_add(r.stored_len)
            .filter(|&e| e <= file_size)
            .ok_or_else(|| {
                self.corrupt(
                    o + 16,
                    format!(
                        "region {i} ({} bytes at {}) runs past the end of the file",
                        r.stored_len, r.file_offset
                    ),
                )
            })?;
        if r.encoding == Encoding::Raw && r.logical_len > r.stored_len {
            return Err(self.corrupt(
                o + 24,
                format!(
                    "region {i}: logical length {} > stored length {}",
                    r.logical_len, r.stored_len
                ),
            ));
        }
        if (r.kind == RegionKind::Hashes || r.kind == RegionKind::Metadata)
            && r.encoding != Encoding::Raw
        {
            return Err(self.corrupt(
                o + 1,
                format!("region {i}: {} region must be raw", r.kind.name()),
            ));
        }
        Ok(end)
    }

    /// Region `i`'s place in the hash region: the next hashes for a region
    /// of blocks, or (the hash region, last) exactly the hashes of all the
    /// others. Returns the next expected hash index.
    fn region_hash_index(
        &self,
        i: usize,
        r: &RegionEntry,
        region_count: usize,
        expect_hash: u64,
    ) -> Result<u64> {
        let o = REGION_TABLE_OFFSET + i * REGION_ENTRY_SIZE;
        if r.kind != RegionKind::Hashes {
            if r.hash_index != expect_hash {
                return Err(self.corrupt(
                    o + 32,
                    format!(
                        "region {i}: hash index {} expected {expect_hash}",
                        r.hash_index
                    ),
                ));
            }
            return Ok(expect_hash + r.blocks());
        }
        if i + 1 != region_count {
            return Err(self.corrupt(o, "the hash region must be the last region".into()));
        }
        if r.hash_index != 0 {
            return Err(self.corrupt(o + 32, "hash region has a hash index".into()));
        }
        if r.logical_len != expect_hash * 32 {
            return Err(self.corrupt(
                o + 24,
                format!(
                    "hash region holds {} bytes, the regions need {}",
                    r.logical_len,
                    expect_hash * 32
                ),
            ));
        }
        Ok(expect_hash)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Header {
        Header {
            major: 1,
            minor: 0,
            incompat: 0,
            compat: 0,
            file_size: 4096 * 3,
            inode_count: 1,
            dentry_count: 0,
            build_time: 0,
            small_threshold: 1024,
            zstd_level: 0,
            name: "n".into(),
            version: "v".into(),
            regions: vec![
                RegionEntry {
                    kind: RegionKind::Small,
                    encoding: Encoding::Raw,
                    file_offset: 4096,
                    stored_len: 0,
                    logical_len: 0,
                    hash_index: 0,
                    root: [1; 32],
                },
                RegionEntry {
                    kind: RegionKind::Metadata,
                    encoding: Encoding::Raw,
                    file_offset: 4096,
                    stored_len: 4096,
                    logical_len: 100,
                    hash_index: 0,
                    root: [2; 32],
                },
                RegionEntry {
                    kind: RegionKind::Hashes,
                    encoding: Encoding::Raw,
                    file_offset: 8192,
                    stored_len: 4096,
                    logical_len: 32,
                    hash_index: 0,
                    root: [3; 32],
                },
            ],
            signer: [4; 32],
            signature: [5; 64],
        }
    }

    #[test]
    fn header_round_trip_and_pinned_offsets() {
        let h = sample();
        let b = h.encode();
        assert_eq!(&b[0..8], b"MOSAICFR");
        assert_eq!(&b[8..12], &[1, 0, 0, 0]);
        assert_eq!(&b[32..40], &(4096u64 * 3).to_le_bytes());
        assert_eq!(b[REGION_TABLE_OFFSET + REGION_ENTRY_SIZE], 3); // metadata kind code
        assert_eq!(&b[4000..4032], &[4; 32]);
        assert_eq!(&b[4032..4096], &[5; 64]);
        let d = Header::decode(Path::new("x"), &b, 4096 * 3).unwrap();
        assert_eq!(d, h);
    }

    #[test]
    fn detached_headers_decode_against_their_own_file_size() {
        let h = sample();
        let b = h.encode();
        assert_eq!(Header::file_size_of(&b), 4096 * 3);
        assert_eq!(Header::decode_detached(Path::new("x"), &b).unwrap(), h);
        // The structure is still checked: regions must end where the file does.
        let mut short = h.clone();
        short.file_size = 4096 * 2;
        let b = short.encode();
        assert_eq!(Header::file_size_of(&b), 4096 * 2);
        assert!(matches!(
            Header::decode_detached(Path::new("x"), &b),
            Err(Error::Corrupt { .. })
        ));
    }

    #[test]
    fn rejects_higher_major_accepts_higher_minor() {
        let mut b = sample().encode();
        b[10] = 7;
        assert_eq!(
            Header::decode(Path::new("x"), &b, 4096 * 3).unwrap().minor,
            7
        );
        b[8] = 2;
        assert!(matches!(
            Header::decode(Path::new("x"), &b, 4096 * 3),
            Err(Error::Unsupported { .. })
        ));
    }

    #[test]
    fn rejects_unknown_incompat_feature() {
        let mut b = sample().encode();
        b[16] = 0x80;
        assert!(matches!(
            Header::decode(Path::new("x"), &b, 4096 * 3),
            Err(Error::Unsupported { .. })
        ));
        let mut b = sample().encode();
        b[24] = 0x80; // compat: fine
        assert!(Header::decode(Path::new("x"), &b, 4096 * 3).is_ok());
    }
}

//! The update package file (`R.mupd`): a signed header, a compressed
//! manifest, then the differentials' bytes.
//!
//! ```text
//! [ header: 512 bytes ][ manifest: one zstd frame ][ data: differentials back to back ]
//! ```
//!
//! Header (every integer little-endian):
//!
//! | off | size | field |
//! |-----|------|-------|
//! | 0   | 8    | magic `MOSAICUP` |
//! | 8   | 2    | major version (a reader rejects a higher major) |
//! | 10  | 2    | minor version (a reader accepts a higher minor) |
//! | 12  | 4    | header size (512) |
//! | 16  | 8    | incompatible feature bits (unknown bit: reject) |
//! | 24  | 8    | compatible feature bits (unknown bit: ignore) |
//! | 32  | 8    | file size |
//! | 40  | 8    | manifest offset (512) |
//! | 48  | 8    | manifest stored length (zstd frame) |
//! | 56  | 8    | manifest length once decompressed (at most 1 GiB) |
//! | 64  | 8    | data offset (manifest offset + stored length) |
//! | 72  | 8    | data length (the rest of the file) |
//! | 80  | 32   | blake3 of the manifest's stored bytes |
//! | 112 | 32   | base id: blake3 of the base fragment's 4 KiB header |
//! | 144 | 32   | target id: blake3 of the target fragment's 4 KiB header |
//! | 176 | 240  | reserved, zero |
//! | 416 | 32   | ed25519 public key of the signer |
//! | 448 | 64   | ed25519 signature over bytes 0..448 |
//!
//! The signature covers the manifest's hash, the manifest names the hash of
//! every differential: one signature vouches for every byte.
//!
//! Manifest (decompressed; `var` = unsigned LEB128, `bytes` = var length +
//! bytes, `hash` = 32 bytes):
//!
//! ```text
//! magic "MOSUMAN1"                      8 bytes
//! frame size                            var (target bytes per frame, 4 KiB..256 MiB)
//! base name, base version               bytes, bytes (for messages)
//! target header                         4096 bytes, verbatim and signed by the lab
//! metadata piece                        piece (the target's metadata region)
//! stats                                 9 var: unchanged changed added renamed deleted
//!                                       metadata-only base-contents target-contents target-bytes
//! piece count                           var
//! pieces                                piece each, strictly ascending target inode
//!
//! piece: target inode var, kind u8 (1 copy, 2 delta, 3 full), path bytes,
//!        size var,
//!        copy/delta: base inode var, input hash (blake3 of the base content),
//!        delta/full: output hash (blake3 of the target content),
//!                    data offset var, data length var, data hash,
//!                    frames: (prefix start var, prefix length var, stored length var)
//!                    for each of ceil(size / frame size) frames
//! ```
//!
//! A target content listed nowhere is the base content at the same path,
//! unchanged. A copy is a base content found under another path (a rename);
//! a delta is made against a base content; a full piece is a null
//! differential (compressed content, no base).
//!
//! FORMAT BREAK: changing any offset, size or constant here changes every
//! package; bump the major version.

use crate::codec::{frame_count, Frame};
use crate::error::{Error, PayloadError, Result};
use crate::wire::{fault, hex, Hash, Reader, WireFault, Writer};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use fragments::format::HEADER_SIZE as FRAG_HEADER;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

pub const MAGIC: [u8; 8] = *b"MOSAICUP";
pub const MANIFEST_MAGIC: [u8; 8] = *b"MOSUMAN1";
pub const VERSION_MAJOR: u16 = 1;
pub const VERSION_MINOR: u16 = 0;
pub const HEADER_SIZE: usize = 512;
pub const PUBKEY_OFFSET: usize = 416;
pub const SIGNATURE_OFFSET: usize = 448;
pub const SIGNED_LEN: usize = SIGNATURE_OFFSET;
pub const INCOMPAT_KNOWN: u64 = 0;
pub const MANIFEST_MAX: u64 = 1 << 30;
pub const FRAME_MIN: u64 = 4096;
pub const FRAME_MAX: u64 = 256 << 20;
const _: () = assert!(SIGNATURE_OFFSET + 64 == HEADER_SIZE);
const _: () = assert!(176 + 240 == PUBKEY_OFFSET);

/// The decoded package header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageHeader {
    pub major: u16,
    pub minor: u16,
    pub incompat: u64,
    pub compat: u64,
    pub file_size: u64,
    pub manifest_offset: u64,
    pub manifest_stored: u64,
    pub manifest_len: u64,
    pub data_offset: u64,
    pub data_len: u64,
    pub manifest_hash: Hash,
    pub base_id: Hash,
    pub target_id: Hash,
    pub signer: [u8; 32],
    pub signature: [u8; 64],
}

fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes(b[o..o + 2].try_into().expect("2 bytes"))
}
fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"))
}
fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"))
}

impl PackageHeader {
    pub fn encode(&self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        b[0..8].copy_from_slice(&MAGIC);
        b[8..10].copy_from_slice(&self.major.to_le_bytes());
        b[10..12].copy_from_slice(&self.minor.to_le_bytes());
        b[12..16].copy_from_slice(&(HEADER_SIZE as u32).to_le_bytes());
        b[16..24].copy_from_slice(&self.incompat.to_le_bytes());
        b[24..32].copy_from_slice(&self.compat.to_le_bytes());
        b[32..40].copy_from_slice(&self.file_size.to_le_bytes());
        b[40..48].copy_from_slice(&self.manifest_offset.to_le_bytes());
        b[48..56].copy_from_slice(&self.manifest_stored.to_le_bytes());
        b[56..64].copy_from_slice(&self.manifest_len.to_le_bytes());
        b[64..72].copy_from_slice(&self.data_offset.to_le_bytes());
        b[72..80].copy_from_slice(&self.data_len.to_le_bytes());
        b[80..112].copy_from_slice(&self.manifest_hash);
        b[112..144].copy_from_slice(&self.base_id);
        b[144..176].copy_from_slice(&self.target_id);
        b[PUBKEY_OFFSET..SIGNATURE_OFFSET].copy_from_slice(&self.signer);
        b[SIGNATURE_OFFSET..].copy_from_slice(&self.signature);
        b
    }

    /// Decodes and checks the structure (not the signature).
    pub fn decode(path: &Path, b: &[u8; HEADER_SIZE], file_len: u64) -> Result<PackageHeader> {
        let corrupt = |offset: usize, what: String| Error::Corrupt {
            path: path.to_owned(),
            what_file: "update package",
            offset: offset as u64,
            what,
        };
        if b[0..8] != MAGIC {
            return Err(corrupt(0, "not a mosaic update package (bad magic)".into()));
        }
        let (major, minor) = (u16_at(b, 8), u16_at(b, 10));
        if major != VERSION_MAJOR {
            return Err(Error::Unsupported {
                path: path.to_owned(),
                what_file: "update package",
                what: format!(
                    "format version {major}.{minor}; this reader implements {VERSION_MAJOR}.x"
                ),
            });
        }
        if u32_at(b, 12) != HEADER_SIZE as u32 {
            return Err(corrupt(
                12,
                format!("header size {} != {HEADER_SIZE}", u32_at(b, 12)),
            ));
        }
        let incompat = u64_at(b, 16);
        if incompat & !INCOMPAT_KNOWN != 0 {
            return Err(Error::Unsupported {
                path: path.to_owned(),
                what_file: "update package",
                what: format!(
                    "incompatible feature bits {:#x}",
                    incompat & !INCOMPAT_KNOWN
                ),
            });
        }
        if let Some(p) = b[176..PUBKEY_OFFSET].iter().position(|&c| c != 0) {
            return Err(corrupt(176 + p, "reserved byte is not zero".into()));
        }
        let h = PackageHeader {
            major,
            minor,
            incompat,
            compat: u64_at(b, 24),
            file_size: u64_at(b, 32),
            manifest_offset: u64_at(b, 40),
            manifest_stored: u64_at(b, 48),
            manifest_len: u64_at(b, 56),
            data_offset: u64_at(b, 64),
            data_len: u64_at(b, 72),
            manifest_hash: b[80..112].try_into().expect("32"),
            base_id: b[112..144].try_into().expect("32"),
            target_id: b[144..176].try_into().expect("32"),
            signer: b[PUBKEY_OFFSET..SIGNATURE_OFFSET].try_into().expect("32"),
            signature: b[SIGNATURE_OFFSET..].try_into().expect("64"),
        };
        if h.file_size != file_len {
            return Err(corrupt(
                32,
                format!("header says {} bytes, file has {file_len}", h.file_size),
            ));
        }
        if h.manifest_offset != HEADER_SIZE as u64 {
            return Err(corrupt(
                40,
                format!("manifest at {}, expected {HEADER_SIZE}", h.manifest_offset),
            ));
        }
        if h.manifest_len > MANIFEST_MAX {
            return Err(corrupt(
                56,
                format!(
                    "manifest of {} bytes (at most {MANIFEST_MAX})",
                    h.manifest_len
                ),
            ));
        }
        let data_at = h.manifest_offset.checked_add(h.manifest_stored);
        if data_at != Some(h.data_offset) {
            return Err(corrupt(64, "data does not follow the manifest".into()));
        }
        if h.data_offset.checked_add(h.data_len) != Some(file_len) {
            return Err(corrupt(72, "data does not end the file".into()));
        }
        Ok(h)
    }
}

/// Kinds of pieces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PieceKind {
    /// The content of a base file found under another path.
    Copy,
    /// A forward differential against a base content.
    Delta,
    /// A null differential: the content compressed, no base.
    Full,
}

impl PieceKind {
    fn code(self) -> u8 {
        match self {
            PieceKind::Copy => 1,
            PieceKind::Delta => 2,
            PieceKind::Full => 3,
        }
    }
}

/// The base content a piece starts from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct BaseRef {
    /// Canonical inode of the content in the base fragment (metadata
    /// piece: unused, zero).
    pub inode: u32,
    #[serde(serialize_with = "ser_hex")]
    pub hash: Hash,
}

/// Differential bytes in the package's data section.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Payload {
    pub offset: u64,
    pub len: u64,
    #[serde(serialize_with = "ser_hex")]
    pub hash: Hash,
    pub frames: Vec<Frame>,
}

/// One target content (or the target's metadata region).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Piece {
    pub inode: u32,
    pub kind: PieceKind,
    #[serde(serialize_with = "ser_lossy")]
    pub path: Vec<u8>,
    pub size: u64,
    pub base: Option<BaseRef>,
    #[serde(serialize_with = "ser_hex")]
    pub out_hash: Hash,
    pub payload: Option<Payload>,
}

pub(crate) fn ser_hex<S: serde::Serializer>(
    h: &Hash,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(&hex(h))
}
fn ser_lossy<S: serde::Serializer>(p: &[u8], s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(&String::from_utf8_lossy(p))
}

/// What changed between base and target, for `inspect`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Stats {
    /// Target contents identical to the base file at the same path.
    pub unchanged: u64,
    /// Files whose content changed at the same path.
    pub changed: u64,
    /// Files at a path the base does not have, from no base content.
    pub added: u64,
    /// Files at a new path whose content comes from another base path
    /// (renamed or copied, changed or not).
    pub renamed: u64,
    /// Base paths (any kind) the target does not have.
    pub deleted: u64,
    /// Entries whose mode, owner, times, xattrs or link target changed
    /// while the content did not.
    pub metadata_only: u64,
    pub base_contents: u64,
    pub target_contents: u64,
    /// Bytes of the target's contents.
    pub target_bytes: u64,
}

/// The decoded manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub frame_size: u64,
    pub base_name: String,
    pub base_version: String,
    pub target_header: Box<[u8; FRAG_HEADER]>,
    pub metadata: Piece,
    pub stats: Stats,
    pub pieces: Vec<Piece>,
}

fn put_piece(w: &mut Writer, p: &Piece) {
    w.var(p.inode as u64);
    w.u8(p.kind.code());
    w.bytes(&p.path);
    w.var(p.size);
    if let Some(b) = &p.base {
        w.var(b.inode as u64);
        w.hash(&b.hash);
    }
    if let Some(d) = &p.payload {
        w.hash(&p.out_hash);
        w.var(d.offset);
        w.var(d.len);
        w.hash(&d.hash);
        for f in &d.frames {
            w.var(f.prefix_start);
            w.var(f.prefix_len);
            w.var(f.stored_len);
        }
    }
}

fn get_piece(r: &mut Reader, frame_size: u64, data_len: u64) -> Result<Piece, WireFault> {
    let at = r.pos;
    let inode = r.var32("piece inode")?;
    let kind = match r.u8("piece kind")? {
        1 => PieceKind::Copy,
        2 => PieceKind::Delta,
        3 => PieceKind::Full,
        k => return Err(fault(at, format!("piece kind {k}"))),
    };
    let path = r.bytes(4096 * 64, "piece path")?.to_vec();
    let size = r.var("piece size")?;
    if size == 0 {
        return Err(fault(at, "piece of an empty content"));
    }
    let base = if kind != PieceKind::Full {
        Some(BaseRef {
            inode: r.var32("base inode")?,
            hash: r.hash("input hash")?,
        })
    } else {
        None
    };
    let (out_hash, payload) = if kind == PieceKind::Copy {
        (base.expect("copy has a base").hash, None)
    } else {
        let out_hash = r.hash("output hash")?;
        let offset = r.var("data offset")?;
        let len = r.var("data length")?;
        if offset.checked_add(len).is_none_or(|e| e > data_len) {
            return Err(fault(
                at,
                format!("data {offset}+{len} outside the data section ({data_len} bytes)"),
            ));
        }
        let hash = r.hash("data hash")?;
        let n = frame_count(size, frame_size);
        let mut frames = Vec::new();
        let mut sum = 0u64;
        for _ in 0..n {
            let f = Frame {
                prefix_start: r.var("prefix start")?,
                prefix_len: r.var("prefix length")?,
                stored_len: r.var("stored length")?,
            };
            if kind == PieceKind::Full && f.prefix_len != 0 {
                return Err(fault(at, "a full piece's frame has a prefix"));
            }
            sum = sum.saturating_add(f.stored_len);
            frames.push(f);
        }
        if sum != len {
            return Err(fault(
                at,
                format!("frames hold {sum} bytes, the data {len}"),
            ));
        }
        (
            out_hash,
            Some(Payload {
                offset,
                len,
                hash,
                frames,
            }),
        )
    };
    Ok(Piece {
        inode,
        kind,
        path,
        size,
        base,
        out_hash,
        payload,
    })
}

impl Manifest {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.raw(&MANIFEST_MAGIC);
        w.var(self.frame_size);
        w.bytes(self.base_name.as_bytes());
        w.bytes(self.base_version.as_bytes());
        w.raw(&self.target_header[..]);
        put_piece(&mut w, &self.metadata);
        let s = &self.stats;
        for v in [
            s.unchanged,
            s.changed,
            s.added,
            s.renamed,
            s.deleted,
            s.metadata_only,
            s.base_contents,
            s.target_contents,
            s.target_bytes,
        ] {
            w.var(v);
        }
        w.var(self.pieces.len() as u64);
        for p in &self.pieces {
            put_piece(&mut w, p);
        }
        w.buf
    }

    pub fn decode(b: &[u8], data_len: u64) -> Result<Manifest, WireFault> {
        let mut r = Reader::new(b);
        if r.raw(8, "manifest magic")? != MANIFEST_MAGIC {
            return Err(fault(0, "bad manifest magic"));
        }
        let at = r.pos;
        let frame_size = r.var("frame size")?;
        if !(FRAME_MIN..=FRAME_MAX).contains(&frame_size) {
            return Err(fault(
                at,
                format!("frame size {frame_size} outside {FRAME_MIN}..={FRAME_MAX}"),
            ));
        }
        let text = |r: &mut Reader, what: &str| -> Result<String, WireFault> {
            let at = r.pos;
            String::from_utf8(r.bytes(64, what)?.to_vec())
                .map_err(|_| fault(at, format!("{what} is not UTF-8")))
        };
        let base_name = text(&mut r, "base name")?;
        let base_version = text(&mut r, "base version")?;
        let target_header: Box<[u8; FRAG_HEADER]> = Box::new(
            r.raw(FRAG_HEADER, "target header")?
                .try_into()
                .expect("4096"),
        );
        let at = r.pos;
        let metadata = get_piece(&mut r, frame_size, data_len)?;
        if metadata.kind == PieceKind::Copy {
            return Err(fault(at, "the metadata piece is a copy"));
        }
        let mut v = [0u64; 9];
        for x in v.iter_mut() {
            *x = r.var("stats")?;
        }
        let stats = Stats {
            unchanged: v[0],
            changed: v[1],
            added: v[2],
            renamed: v[3],
            deleted: v[4],
            metadata_only: v[5],
            base_contents: v[6],
            target_contents: v[7],
            target_bytes: v[8],
        };
        let pieces = r.sorted_tail(
            "pieces",
            |r| get_piece(r, frame_size, data_len),
            |p| p.inode,
        )?;
        Ok(Manifest {
            frame_size,
            base_name,
            base_version,
            target_header,
            metadata,
            stats,
            pieces,
        })
    }
}

/// An opened package: header checked, signature checked, manifest decoded.
/// The data section is read on demand, each differential checked against
/// its hash from the manifest.
#[derive(Debug)]
pub struct Package {
    pub path: PathBuf,
    file: File,
    pub header: PackageHeader,
    pub manifest: Manifest,
}

/// Which signers to accept.
#[derive(Debug, Clone, Copy)]
pub enum PackageTrust<'a> {
    Keys(&'a [VerifyingKey]),
    /// Any key whose signature verifies (inspection only).
    AnySigner,
}

impl Package {
    pub fn open(path: &Path, trust: PackageTrust) -> Result<Package> {
        let file = File::open(path).map_err(Error::io(path, "open"))?;
        let len = file.metadata().map_err(Error::io(path, "stat"))?.len();
        let corrupt = |offset: u64, what: String| Error::Corrupt {
            path: path.to_owned(),
            what_file: "update package",
            offset,
            what,
        };
        if len < HEADER_SIZE as u64 {
            return Err(corrupt(0, format!("{len} bytes, shorter than the header")));
        }
        let mut hb = [0u8; HEADER_SIZE];
        file.read_exact_at(&mut hb, 0)
            .map_err(Error::io(path, "read"))?;
        let header = PackageHeader::decode(path, &hb, len)?;
        let signer = hex(&header.signer);
        let bad_sig = || Error::BadSignature {
            path: path.to_owned(),
            signer: signer.clone(),
            signed_len: SIGNED_LEN,
        };
        let key = VerifyingKey::from_bytes(&header.signer).map_err(|_| bad_sig())?;
        key.verify_strict(&hb[..SIGNED_LEN], &Signature::from_bytes(&header.signature))
            .map_err(|_| bad_sig())?;
        if let PackageTrust::Keys(keys) = trust {
            if !keys.iter().any(|k| k.as_bytes() == &header.signer) {
                return Err(Error::Untrusted {
                    path: path.to_owned(),
                    signer,
                });
            }
        }
        let mut stored = vec![0u8; header.manifest_stored as usize];
        file.read_exact_at(&mut stored, header.manifest_offset)
            .map_err(Error::io(path, "read"))?;
        if blake3::hash(&stored).as_bytes() != &header.manifest_hash {
            return Err(corrupt(
                header.manifest_offset,
                "manifest does not match the signed hash".into(),
            ));
        }
        // Signed: trusted from here on; the length is still bounded.
        let raw = zstd::bulk::decompress(&stored, header.manifest_len as usize).map_err(|e| {
            corrupt(
                header.manifest_offset,
                format!("manifest does not decompress ({e})"),
            )
        })?;
        if raw.len() as u64 != header.manifest_len {
            return Err(corrupt(
                header.manifest_offset,
                "manifest length differs from the header".into(),
            ));
        }
        let manifest = Manifest::decode(&raw, header.data_len)
            .map_err(|f| corrupt(f.offset, format!("manifest: {}", f.what)))?;
        if blake3::hash(&manifest.target_header[..]).as_bytes() != &header.target_id {
            return Err(corrupt(
                144,
                "target id is not the hash of the target header".into(),
            ));
        }
        Ok(Package {
            path: path.to_owned(),
            file,
            header,
            manifest,
        })
    }

    /// The bytes of a differential, checked against the signed manifest.
    pub fn payload(&self, p: &Payload) -> Result<Vec<u8>, PayloadError> {
        let mut b = vec![0u8; p.len as usize];
        self.file
            .read_exact_at(&mut b, self.header.data_offset + p.offset)
            .map_err(PayloadError::PackageUnreadable)?;
        if blake3::hash(&b).as_bytes() != &p.hash {
            return Err(PayloadError::PackageCorrupt {
                len: p.len,
                offset: p.offset,
            });
        }
        Ok(b)
    }
}

/// Writes a package: header signed with `key`, manifest compressed, then
/// the differentials (`pieces`, in manifest order, from `spool`).
pub(crate) fn write(
    out: &Path,
    key: &SigningKey,
    base_id: Hash,
    manifest: &Manifest,
    spool: &crate::Spool,
    pieces: &[(u64, u64)],
) -> Result<u64> {
    let data_len: u64 = pieces.iter().map(|p| p.1).sum();
    let raw = manifest.encode();
    let stored = zstd::bulk::compress(&raw, 19).map_err(Error::io(out, "compress the manifest"))?;
    let target_id = *blake3::hash(&manifest.target_header[..]).as_bytes();
    let mut h = PackageHeader {
        major: VERSION_MAJOR,
        minor: VERSION_MINOR,
        incompat: 0,
        compat: 0,
        file_size: (HEADER_SIZE + stored.len()) as u64 + data_len,
        manifest_offset: HEADER_SIZE as u64,
        manifest_stored: stored.len() as u64,
        manifest_len: raw.len() as u64,
        data_offset: (HEADER_SIZE + stored.len()) as u64,
        data_len,
        manifest_hash: *blake3::hash(&stored).as_bytes(),
        base_id,
        target_id,
        signer: key.verifying_key().to_bytes(),
        signature: [0; 64],
    };
    let unsigned = h.encode();
    h.signature = key.sign(&unsigned[..SIGNED_LEN]).to_bytes();
    crate::atomic_write_spooled(out, &[&h.encode(), &stored], spool, pieces)?;
    Ok(h.file_size)
}

#[cfg(test)]
mod tests;

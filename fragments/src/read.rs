//! Opening a fragment and reading verified bytes from it.
//!
//! `open` checks, in order: the header's structure, the signature (and that
//! the signer is trusted), the hash region against its signed root, every
//! region's block hashes against its signed root, the metadata region block
//! by block, then every rule of the metadata tables, and the index of every
//! compressed region. After that, data blocks are checked when read: opening
//! costs the metadata and the hash list, never a pass over the data.
//!
//! Reads use positioned reads (`pread`) into the buffer that is then hashed
//! and handed out: nothing is mapped, so a file truncated or rewritten under
//! a reader gives errors, never a crash, and never unverified bytes.

use crate::compress::ChunkIndex;
use crate::error::{Error, Result};
use crate::format::{
    Encoding, Header, RegionEntry, RegionKind, BLOCK_SIZE, HEADER_SIZE, SIGNED_LEN,
};
use crate::hash::{block_cv, root_from_cvs, verify_blocks, Cv, BLOCK};
use crate::keys::key_id;
use crate::meta::{Body, Kind, Metadata};
use ed25519_dalek::{Signature, VerifyingKey};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Which signers to accept.
#[derive(Debug, Clone, Copy)]
pub enum Trust<'a> {
    /// Any of these keys.
    Keys(&'a [VerifyingKey]),
    /// Any key, as long as the signature verifies against the key embedded
    /// in the header. For inspection tools only: the fragment is
    /// self-consistent but nobody vouches for it.
    AnySigner,
}

/// One fault found by a full verification.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Fault {
    pub region: u32,
    pub kind: RegionKind,
    pub block: u64,
    pub file_offset: u64,
    /// Paths of files whose content uses the block.
    pub paths: Vec<String>,
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "region {} ({}) block {} (file offset {}) fails its blake3 check",
            self.region,
            self.kind.name(),
            self.block,
            self.file_offset
        )?;
        if !self.paths.is_empty() {
            write!(f, "; used by {}", self.paths.join(", "))?;
        }
        Ok(())
    }
}

/// An open, structurally verified fragment.
pub struct Fragment {
    path: PathBuf,
    file: File,
    header: Header,
    header_bytes: [u8; HEADER_SIZE],
    cvs: Vec<Cv>,
    meta: Metadata,
    chunk_index: Vec<Option<ChunkIndex>>,
}

impl std::fmt::Debug for Fragment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fragment")
            .field("path", &self.path)
            .field("name", &self.header.name)
            .finish()
    }
}

fn pread(file: &File, path: &Path, buf: &mut [u8], offset: u64, have: u64) -> Result<()> {
    file.read_exact_at(buf, offset).map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            Error::Truncated {
                path: path.to_owned(),
                offset,
                need: buf.len() as u64,
                have,
            }
        } else {
            Error::Io {
                path: path.to_owned(),
                op: "read",
                source: e,
            }
        }
    })
}

impl Fragment {
    /// Opens and checks a fragment (see the module doc for what is checked).
    pub fn open(path: impl AsRef<Path>, trust: Trust) -> Result<Fragment> {
        let path = path.as_ref().to_owned();
        let file = File::open(&path).map_err(Error::io(&path, "open"))?;
        let len = file.metadata().map_err(Error::io(&path, "stat"))?.len();
        let (header_bytes, header) = read_header(&file, &path, len)?;
        // Signature first: nothing else in the header is believed before it.
        check_signature(&path, &header, &header_bytes, trust)?;
        let cvs = read_hash_list(&file, &path, &header, len)?;
        let mut frag = Fragment {
            path,
            file,
            header,
            header_bytes,
            cvs,
            meta: Metadata::default(),
            chunk_index: Vec::new(),
        };
        frag.check_region_roots(len)?;
        frag.chunk_index = frag.read_chunk_indexes()?;
        frag.meta = frag.read_metadata()?;
        Ok(frag)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn header(&self) -> &Header {
        &self.header
    }
    pub fn metadata(&self) -> &Metadata {
        &self.meta
    }
    /// The signer's public key.
    pub fn signer(&self) -> VerifyingKey {
        VerifyingKey::from_bytes(&self.header.signer).expect("checked at open")
    }
    /// A stable identity of this exact fragment: blake3 of its signed header
    /// (which commits to every region's root, so to every byte).
    pub fn id(&self) -> [u8; 32] {
        *blake3::hash(&self.header_bytes).as_bytes()
    }
    /// The 4 KiB header exactly as read and verified at open (its blake3
    /// is `id()`): for callers that store or forward the signed header,
    /// never to be read again from the file, which may have changed since.
    pub fn header_bytes(&self) -> &[u8; HEADER_SIZE] {
        &self.header_bytes
    }
    pub fn region(&self, region: u32) -> Option<&RegionEntry> {
        self.header.regions.get(region as usize)
    }
    /// For a zstd-compressed region, the logical size of its independently
    /// decodable chunks (`read_region` of one whole chunk decodes one frame);
    /// `None` for a raw region.
    pub fn chunk_size(&self, region: u32) -> Option<u64> {
        self.chunk_index
            .get(region as usize)?
            .as_ref()
            .map(|i| i.chunk_size)
    }
    fn region_cvs(&self, region: u32) -> &[Cv] {
        let r = &self.header.regions[region as usize];
        &self.cvs[r.hash_index as usize..(r.hash_index + r.blocks()) as usize]
    }

    /// Reads verified *stored* bytes of a region (raw regions: the same as
    /// logical bytes up to the stored length).
    pub fn read_stored(&self, region: u32, offset: u64, buf: &mut [u8]) -> Result<()> {
        let r = self.region(region).ok_or_else(|| Error::OutOfRange {
            path: self.path.clone(),
            region,
            offset,
            len: buf.len() as u64,
            size: 0,
        })?;
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|&e| e <= r.stored_len);
        if end.is_none() || r.kind == RegionKind::Hashes {
            return Err(Error::OutOfRange {
                path: self.path.clone(),
                region,
                offset,
                len: buf.len() as u64,
                size: r.stored_len,
            });
        }
        if buf.is_empty() {
            return Ok(());
        }
        let first = offset / BLOCK_SIZE;
        let last = (offset + buf.len() as u64).div_ceil(BLOCK_SIZE);
        if offset.is_multiple_of(BLOCK_SIZE) && buf.len().is_multiple_of(BLOCK) {
            self.read_blocks_into(region, first, buf)
        } else {
            let mut work = vec![0u8; ((last - first) * BLOCK_SIZE) as usize];
            self.read_blocks_into(region, first, &mut work)?;
            let skip = (offset - first * BLOCK_SIZE) as usize;
            let n = buf.len();
            buf.copy_from_slice(&work[skip..skip + n]);
            Ok(())
        }
    }

    /// Reads whole verified blocks of a region straight into `buf` (a
    /// multiple of 4096 bytes). On a failed check `buf` is zeroed.
    pub fn read_blocks_into(&self, region: u32, first: u64, buf: &mut [u8]) -> Result<()> {
        let r = self
            .region(region)
            .filter(|r| r.kind != RegionKind::Hashes && buf.len().is_multiple_of(BLOCK))
            .filter(|r| {
                first
                    .checked_add((buf.len() / BLOCK) as u64)
                    .is_some_and(|last| last <= r.blocks())
            });
        let Some(r) = r else {
            // Out of range: `check_blocks` reports it with the same error.
            return self.check_blocks(region, first, buf);
        };
        pread(
            &self.file,
            &self.path,
            buf,
            r.file_offset + first * BLOCK_SIZE,
            self.header.file_size,
        )?;
        self.check_blocks(region, first, buf).inspect_err(|_| {
            buf.fill(0); // never leave unverified bytes in the caller's buffer
        })
    }

    /// Checks bytes obtained elsewhere (e.g. through a memory map of this
    /// fragment's file) as whole stored blocks `first..` of `region`
    /// against the signed block hashes. `data` is a multiple of 4096 bytes.
    pub fn check_blocks(&self, region: u32, first: u64, data: &[u8]) -> Result<()> {
        let r = self.region(region).filter(|r| r.kind != RegionKind::Hashes);
        let last = first.checked_add((data.len() / BLOCK) as u64);
        let (r, last) = match (r, last) {
            (Some(r), Some(last)) if last <= r.blocks() && data.len().is_multiple_of(BLOCK) => {
                (r, last)
            }
            _ => {
                return Err(Error::OutOfRange {
                    path: self.path.clone(),
                    region,
                    offset: first.saturating_mul(BLOCK_SIZE),
                    len: data.len() as u64,
                    size: r.map_or(0, |r| r.stored_len),
                })
            }
        };
        let cvs = &self.region_cvs(region)[first as usize..last as usize];
        match verify_blocks(first, data, cvs) {
            None => Ok(()),
            Some(bad) => Err(Error::BlockMismatch {
                path: self.path.clone(),
                region,
                kind: r.kind,
                block: first + bad,
                file_offset: r.file_offset + (first + bad) * BLOCK_SIZE,
            }),
        }
    }

    /// Reads verified *logical* bytes of a data or small-data region
    /// (decompressing verified frames for compressed regions).
    pub fn read_region(&self, region: u32, offset: u64, buf: &mut [u8]) -> Result<()> {
        let r = self.region(region).ok_or_else(|| Error::OutOfRange {
            path: self.path.clone(),
            region,
            offset,
            len: buf.len() as u64,
            size: 0,
        })?;
        let idx = match &self.chunk_index[region as usize] {
            None => return self.read_stored(region, offset, buf),
            Some(i) => i,
        };
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|&e| e <= r.logical_len)
            .ok_or_else(|| Error::OutOfRange {
                path: self.path.clone(),
                region,
                offset,
                len: buf.len() as u64,
                size: r.logical_len,
            })?;
        let cs = idx.chunk_size;
        let mut pos = offset;
        while pos < end {
            let c = pos / cs;
            let (fa, fb) = idx.frame(c);
            let mut frame = vec![0u8; (fb - fa) as usize];
            self.read_stored(region, fa, &mut frame)?;
            let want = cs.min(r.logical_len - c * cs) as usize;
            let plain = zstd::bulk::decompress(&frame, want).map_err(|e| Error::Corrupt {
                path: self.path.clone(),
                offset: r.file_offset + fa,
                what: format!("region {region} chunk {c}: zstd frame does not decompress ({e})"),
            })?;
            if plain.len() != want {
                return Err(Error::Corrupt {
                    path: self.path.clone(),
                    offset: r.file_offset + fa,
                    what: format!(
                        "region {region} chunk {c}: decompresses to {} bytes, expected {want}",
                        plain.len()
                    ),
                });
            }
            let from = (pos - c * cs) as usize;
            let n = ((end - pos) as usize).min(want - from);
            let at = (pos - offset) as usize;
            buf[at..at + n].copy_from_slice(&plain[from..from + n]);
            pos += n as u64;
        }
        Ok(())
    }

    /// Reads bytes of a regular file (holes read as zeros).
    pub fn read_file(&self, ino: u32, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let inode = self.meta.inodes.get(ino as usize).ok_or(Error::NotFound {
            path: format!("inode {ino}"),
            what: "no such inode",
        })?;
        let Body::Regular { size, .. } = inode.body else {
            return Err(Error::NotFound {
                path: String::from_utf8_lossy(&self.meta.path_of(ino)).into_owned(),
                what: "not a regular file",
            });
        };
        if offset >= size {
            return Ok(0);
        }
        let n = ((size - offset) as usize).min(buf.len());
        let buf = &mut buf[..n];
        buf.fill(0);
        let end = offset + n as u64;
        for e in self.meta.extents_of(ino) {
            let (ea, eb) = (e.file_offset, e.file_offset + e.len);
            let (a, b) = (ea.max(offset), eb.min(end));
            if a >= b {
                continue;
            }
            self.read_region(
                e.region,
                e.region_offset + (a - ea),
                &mut buf[(a - offset) as usize..(b - offset) as usize],
            )?;
        }
        Ok(n)
    }

    /// Checks every block of every region; returns all faults found
    /// (empty: the fragment is intact). `progress` is called with bytes done.
    pub fn verify_all(&self, progress: &dyn Fn(u64)) -> Result<Vec<Fault>> {
        let mut faults = Vec::new();
        const STEP: u64 = 1 << 20;
        for (i, r) in self.header.regions.iter().enumerate() {
            if r.kind == RegionKind::Hashes {
                continue; // checked in full at open
            }
            let mut buf = vec![0u8; STEP as usize];
            let mut off = 0;
            while off < r.stored_len {
                let n = STEP.min(r.stored_len - off) as usize;
                match self.read_stored(i as u32, off, &mut buf[..n]) {
                    Ok(()) => {}
                    Err(Error::BlockMismatch { .. }) => {
                        // Per block, to list every bad one.
                        for b in 0..(n / BLOCK) as u64 {
                            let mut one = [0u8; BLOCK];
                            if let Err(Error::BlockMismatch {
                                block, file_offset, ..
                            }) = self.read_stored(i as u32, off + b * BLOCK_SIZE, &mut one)
                            {
                                faults.push(Fault {
                                    region: i as u32,
                                    kind: r.kind,
                                    block,
                                    file_offset,
                                    paths: Vec::new(),
                                });
                            }
                        }
                    }
                    Err(e) => return Err(e),
                }
                progress(n as u64);
                off += n as u64;
            }
        }
        self.attach_paths(&mut faults);
        Ok(faults)
    }

    /// Names the files whose stored bytes lie in each faulty block.
    fn attach_paths(&self, faults: &mut [Fault]) {
        if faults.is_empty() {
            return;
        }
        for (ino, inode) in self.meta.inodes.iter().enumerate() {
            if inode.kind != Kind::Regular {
                continue;
            }
            for e in self.meta.extents_of(ino as u32) {
                let (a, b) = match &self.chunk_index[e.region as usize] {
                    None => (
                        e.region_offset / BLOCK_SIZE,
                        (e.region_offset + e.len).div_ceil(BLOCK_SIZE),
                    ),
                    Some(idx) => {
                        let c0 = e.region_offset / idx.chunk_size;
                        let c1 = (e.region_offset + e.len - 1) / idx.chunk_size;
                        (
                            idx.frame(c0).0 / BLOCK_SIZE,
                            idx.frame(c1).1.div_ceil(BLOCK_SIZE),
                        )
                    }
                };
                for f in faults.iter_mut() {
                    if f.region == e.region && f.block >= a && f.block < b {
                        for p in self.meta.paths_of(ino as u32) {
                            let p = String::from_utf8_lossy(&p).into_owned();
                            if !f.paths.contains(&p) {
                                f.paths.push(p);
                            }
                        }
                    }
                }
            }
        }
    }
}

// The phases of `Fragment::open`, in the order it runs them.

/// The header block, decoded and structurally checked (not yet believed).
fn read_header(file: &File, path: &Path, len: u64) -> Result<([u8; HEADER_SIZE], Header)> {
    if len < HEADER_SIZE as u64 {
        return Err(Error::Truncated {
            path: path.to_owned(),
            offset: 0,
            need: HEADER_SIZE as u64,
            have: len,
        });
    }
    let mut header_bytes = [0u8; HEADER_SIZE];
    pread(file, path, &mut header_bytes, 0, len)?;
    let header = Header::decode(path, &header_bytes, len)?;
    Ok((header_bytes, header))
}

/// The signature over the header, by its embedded key, which `trust` accepts.
fn check_signature(
    path: &Path,
    header: &Header,
    header_bytes: &[u8; HEADER_SIZE],
    trust: Trust,
) -> Result<()> {
    let signer_hex = key_id(&header.signer);
    let bad_signature = || Error::BadSignature {
        path: path.to_owned(),
        signer: signer_hex.clone(),
        signed_len: SIGNED_LEN,
    };
    let key = VerifyingKey::from_bytes(&header.signer).map_err(|_| bad_signature())?;
    let sig = Signature::from_bytes(&header.signature);
    key.verify_strict(&header_bytes[..SIGNED_LEN], &sig)
        .map_err(|_| bad_signature())?;
    if let Trust::Keys(keys) = trust {
        if !keys.iter().any(|k| k.as_bytes() == &header.signer) {
            return Err(Error::Untrusted {
                path: path.to_owned(),
                signer: signer_hex,
            });
        }
    }
    Ok(())
}

/// The hash list (every stored block's chaining value), checked against
/// the hash region's signed root.
fn read_hash_list(file: &File, path: &Path, header: &Header, len: u64) -> Result<Vec<Cv>> {
    let hr_index = header.regions.len() - 1;
    let hr = &header.regions[hr_index];
    let mut hash_bytes = vec![0u8; hr.stored_len as usize];
    pread(file, path, &mut hash_bytes, hr.file_offset, len)?;
    if blake3::hash(&hash_bytes).as_bytes() != &hr.root {
        return Err(Error::RootMismatch {
            path: path.to_owned(),
            region: hr_index as u32,
            kind: RegionKind::Hashes,
        });
    }
    if let Some(p) = hash_bytes[hr.logical_len as usize..]
        .iter()
        .position(|&c| c != 0)
    {
        return Err(Error::Corrupt {
            path: path.to_owned(),
            offset: hr.file_offset + hr.logical_len + p as u64,
            what: "hash region padding is not zero".into(),
        });
    }
    Ok(hash_bytes[..hr.logical_len as usize]
        .chunks_exact(32)
        .map(|c| c.try_into().expect("chunks of 32"))
        .collect())
}

impl Fragment {
    /// Every region's hash list against its signed root.
    fn check_region_roots(&self, len: u64) -> Result<()> {
        let hr_index = self.header.regions.len() - 1;
        for (i, r) in self.header.regions.iter().enumerate().take(hr_index) {
            let cvs = self.region_cvs(i as u32);
            let ok = match root_from_cvs(cvs) {
                Some(root) => root.as_bytes() == &r.root,
                None => {
                    let mut b = vec![0u8; BLOCK];
                    pread(&self.file, &self.path, &mut b, r.file_offset, len)?;
                    blake3::hash(&b).as_bytes() == &r.root && block_cv(0, &b) == cvs[0]
                }
            };
            if !ok {
                return Err(Error::RootMismatch {
                    path: self.path.clone(),
                    region: i as u32,
                    kind: r.kind,
                });
            }
        }
        Ok(())
    }

    /// The chunk index of every compressed region (`None` for raw ones),
    /// read through verified blocks.
    fn read_chunk_indexes(&self) -> Result<Vec<Option<ChunkIndex>>> {
        let mut indexes = Vec::with_capacity(self.header.regions.len());
        for (i, r) in self.header.regions.iter().enumerate() {
            if r.encoding != Encoding::Zstd {
                indexes.push(None);
                continue;
            }
            let head = ChunkIndex::index_len(r.logical_len.div_ceil(crate::compress::CHUNK_SIZE));
            if head > r.stored_len {
                return Err(Error::Corrupt {
                    path: self.path.clone(),
                    offset: r.file_offset,
                    what: format!("region {i}: chunk index larger than the region"),
                });
            }
            let mut b = vec![0u8; head as usize];
            self.read_stored(i as u32, 0, &mut b)?;
            let idx =
                ChunkIndex::decode(&b, r.logical_len, r.stored_len).map_err(|(o, what)| {
                    Error::Corrupt {
                        path: self.path.clone(),
                        offset: r.file_offset + o,
                        what: format!("region {i}: {what}"),
                    }
                })?;
            indexes.push(Some(idx));
        }
        Ok(indexes)
    }

    /// The metadata region, verified block by block and decoded in full.
    fn read_metadata(&self) -> Result<Metadata> {
        let mi = self.header.region_of(RegionKind::Metadata);
        let mr = &self.header.regions[mi];
        let mut mb = vec![0u8; mr.stored_len as usize];
        self.read_stored(mi as u32, 0, &mut mb)?;
        if let Some(p) = mb[mr.logical_len as usize..].iter().position(|&c| c != 0) {
            return Err(Error::Corrupt {
                path: self.path.clone(),
                offset: mr.file_offset + mr.logical_len + p as u64,
                what: "metadata padding is not zero".into(),
            });
        }
        mb.truncate(mr.logical_len as usize);
        let meta = Metadata::decode(
            &mb,
            &self.header.regions,
            self.header.inode_count,
            self.header.dentry_count,
        )
        .map_err(|f| Error::Corrupt {
            path: self.path.clone(),
            offset: mr.file_offset + f.offset,
            what: format!("metadata: {}", f.what),
        })?;
        check_no_overlap(&self.path, &meta)?;
        Ok(meta)
    }
}

/// Distinct file contents must not partially overlap: equal extents are
/// shared contents (deduplicated), anything else is corruption.
fn check_no_overlap(path: &Path, meta: &Metadata) -> Result<()> {
    let mut v: Vec<(u32, u64, u64)> = meta
        .extents
        .iter()
        .map(|e| (e.region, e.region_offset, e.len))
        .collect();
    v.sort_unstable();
    v.dedup();
    for w in v.windows(2) {
        let (a, b) = (w[0], w[1]);
        if a.0 == b.0 && a.1 + a.2 > b.1 {
            // Data extents are block aligned: a shared tail block is also an overlap.
            return Err(Error::Corrupt {
                path: path.to_owned(),
                offset: 0,
                what: format!(
                    "metadata: contents overlap in region {}: {}+{} and {}+{}",
                    a.0, a.1, a.2, b.1, b.2
                ),
            });
        }
    }
    Ok(())
}

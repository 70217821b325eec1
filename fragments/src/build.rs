//! Building a fragment from a directory tree, deterministically.
//!
//! The tree is walked breadth first with entries in name-byte order, so the
//! inode numbers, the placement of contents and therefore every byte of the
//! output depend only on the tree, the options and the key (ed25519
//! signatures are deterministic). File contents are read and hashed in
//! parallel, then placed in inode order. The output is written to a
//! temporary file beside the target and renamed into place at the end, so a
//! failed build leaves nothing behind.
//!
//! File placement: files smaller than the threshold go to the small-data
//! region, packed; the others go to the data region, each starting on a
//! 4 KiB boundary, with all-zero blocks left out (holes); identical contents
//! are stored once.

use crate::compress::{compress_region, ChunkIndex, CHUNK_SIZE};
use crate::error::{Error, Result};
use crate::format::{
    check_label, Encoding, Header, RegionEntry, RegionKind, BLOCK_SIZE, HEADER_SIZE, INCOMPAT_ZSTD,
    SIGNATURE_OFFSET, SIGNED_LEN, VERSION_MAJOR, VERSION_MINOR,
};
use crate::hash::{cvs_of, root_from_cvs, Cv, BLOCK};
use crate::meta::{Body, Dentry, Extent, Inode, Kind, Metadata, StrRef, Xattr};
use crate::scan::{normalize, scan, src_err};
use crate::sink::DataSink;
use ed25519_dalek::{Signer, SigningKey};
use rayon::prelude::*;
use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Region indices the builder always uses.
pub const DATA_REGION: u32 = 0;
pub const SMALL_REGION: u32 = 1;

/// Files at least this large are streamed (holes skipped with SEEK_DATA)
/// instead of being read whole in a parallel batch.
const STREAM_MIN: u64 = 32 << 20;
const BATCH_BYTES: u64 = 64 << 20;
const BATCH_FILES: usize = 4096;
const PIECE: usize = 8 << 20;

/// What to build.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    pub name: String,
    pub version: String,
    /// `Some(level)`: store data and small-data regions as zstd chunks.
    pub zstd_level: Option<i32>,
    /// Files smaller than this go to the small-data region.
    pub small_threshold: u64,
    /// Subtrees (paths inside the tree, `/`-separated) whose directories
    /// this fragment owns. Empty: every directory but `/`.
    pub owns: Vec<String>,
    /// Recorded in the header when set (from `SOURCE_DATE_EPOCH`).
    pub build_time: Option<u64>,
}

impl Default for BuildOptions {
    fn default() -> Self {
        BuildOptions {
            name: "fragment".into(),
            version: "0".into(),
            zstd_level: None,
            small_threshold: 1024,
            owns: Vec::new(),
            build_time: None,
        }
    }
}

/// Progress callbacks for long builds (the CLI draws a bar).
pub trait Progress: Sync {
    fn phase(&self, _name: &str, _total: u64) {}
    fn advance(&self, _n: u64) {}
}

/// A `Progress` that ignores everything.
pub struct NoProgress;
impl Progress for NoProgress {}

/// Figures about a finished build.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct BuildReport {
    pub inodes: u64,
    pub entries: u64,
    pub regular_files: u64,
    pub file_bytes: u64,
    pub data_region_bytes: u64,
    pub small_region_bytes: u64,
    pub deduplicated_files: u64,
    pub fragment_bytes: u64,
}

/// Appends bytes to the strings table, reusing identical earlier strings
/// is not attempted (names are mostly unique); returns the reference.
struct Strings {
    bytes: Vec<u8>,
}
impl Strings {
    fn add(&mut self, s: &[u8]) -> Result<StrRef> {
        let off = u32::try_from(self.bytes.len())
            .map_err(|_| Error::Options("more than 4 GiB of names".into()))?;
        self.bytes.extend_from_slice(s);
        Ok(StrRef {
            off,
            len: s.len() as u32,
        })
    }
}

fn is_zero(b: &[u8]) -> bool {
    let (pre, mid, post) = unsafe { b.align_to::<u64>() };
    pre.iter().all(|&x| x == 0) && mid.iter().all(|&x| x == 0) && post.iter().all(|&x| x == 0)
}

/// Places a file's content held in memory: nonzero block runs, written
/// contiguously; returns its extents (file offsets relative to `file_base`).
fn place_runs(
    sink: &mut DataSink,
    data: &[u8],
    file_base: u64,
    extents: &mut Vec<Extent>,
) -> Result<()> {
    let nblocks = data.len().div_ceil(BLOCK);
    let mut b = 0;
    while b < nblocks {
        let block = |i: usize| &data[i * BLOCK..((i + 1) * BLOCK).min(data.len())];
        if is_zero(block(b)) {
            b += 1;
            continue;
        }
        let start = b;
        while b < nblocks && !is_zero(block(b)) {
            b += 1;
        }
        let bytes = &data[start * BLOCK..(b * BLOCK).min(data.len())];
        let at = sink.write(bytes)?;
        let fo = file_base + (start * BLOCK) as u64;
        match extents.last_mut() {
            Some(l)
                if l.file_offset + l.len == fo
                    && l.region_offset + l.len == at
                    && l.len % BLOCK_SIZE == 0 =>
            {
                l.len += bytes.len() as u64
            }
            _ => extents.push(Extent {
                file_offset: fo,
                region: DATA_REGION,
                region_offset: at,
                len: bytes.len() as u64,
            }),
        }
    }
    Ok(())
}

/// Reads a file of `size` bytes (as seen at scan) into `buf`, failing if
/// its size changed since.
fn read_into(path: &Path, buf: &mut [u8]) -> Result<()> {
    let mut f = File::open(path).map_err(src_err(path, "open"))?;
    let size = buf.len();
    let changed = |now: String| Error::Source {
        path: path.to_owned(),
        what: format!("changed during the build: {size} bytes at scan, {now} now"),
        source: None,
    };
    let mut done = 0;
    while done < buf.len() {
        match f.read(&mut buf[done..]) {
            Ok(0) => return Err(changed(done.to_string())),
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(src_err(path, "read")(e)),
        }
    }
    let mut probe = [0u8; 1];
    match f.read(&mut probe) {
        Ok(0) => Ok(()),
        Ok(_) => Err(changed("more".into())),
        Err(e) => Err(src_err(path, "read")(e)),
    }
}

/// Streams a big file, skipping holes, writing its nonzero blocks. Returns
/// its extents and a content key.
fn stream_big(
    sink: &mut DataSink,
    path: &Path,
    size: u64,
    want_key: bool,
) -> Result<(Vec<Extent>, Option<[u8; 32]>)> {
    use std::os::fd::AsRawFd;
    let f = File::open(path).map_err(src_err(path, "open"))?;
    let fd = f.as_raw_fd();
    let mut key = blake3::Hasher::new();
    key.update(b"mosaic big file v1");
    key.update(&size.to_le_bytes());
    let mut extents = Vec::new();
    let mut pos: u64 = 0;
    let mut buf = vec![0u8; PIECE];
    while pos < size {
        // SAFETY: lseek on a file descriptor we own; no memory is touched.
        let data = unsafe { libc::lseek(fd, pos as libc::off_t, libc::SEEK_DATA) };
        if data < 0 {
            break; // ENXIO: only a hole remains
        }
        // Whole blocks only, never before `pos`, so no block is read twice
        // even where the filesystem's holes are finer than 4 KiB.
        let data = (data as u64 / BLOCK_SIZE * BLOCK_SIZE).max(pos);
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, data as libc::off_t, libc::SEEK_HOLE) };
        let hole = if hole < 0 {
            size
        } else {
            (hole as u64).div_ceil(BLOCK_SIZE) * BLOCK_SIZE
        }
        .min(size);
        let hole = if hole <= data { size } else { hole }; // never skip data on odd answers
        let mut p = data;
        while p < hole {
            let n = ((hole - p) as usize).min(PIECE);
            let piece = &mut buf[..n];
            f.read_exact_at(piece, p)
                .map_err(src_err(path, "read (changed during the build?)"))?;
            if want_key {
                for (i, blk) in piece.chunks(BLOCK).enumerate() {
                    if !is_zero(blk) {
                        key.update(&(p / BLOCK_SIZE + i as u64).to_le_bytes());
                        key.update(blk);
                    }
                }
            }
            place_runs(sink, piece, p, &mut extents)?;
            p += n as u64;
        }
        pos = hole.div_ceil(BLOCK_SIZE) * BLOCK_SIZE;
    }
    let now = f.metadata().map_err(src_err(path, "stat"))?.len();
    if now != size {
        return Err(Error::Source {
            path: path.to_owned(),
            what: format!("changed during the build: {size} bytes at scan, {now} now"),
            source: None,
        });
    }
    Ok((extents, want_key.then(|| *key.finalize().as_bytes())))
}

/// Builds `out` from the tree at `src`, signed with `key`.
pub fn build(
    src: &Path,
    out: &Path,
    key: &SigningKey,
    opts: &BuildOptions,
    progress: &dyn Progress,
) -> Result<BuildReport> {
    check_label("fragment name", &opts.name)?;
    check_label("fragment version", &opts.version)?;
    if opts.small_threshold > BLOCK_SIZE {
        return Err(Error::Options(format!(
            "--small-threshold {} is above 4096 (a small file must fit in one block)",
            opts.small_threshold
        )));
    }
    if let Some(l) = opts.zstd_level {
        if !zstd::compression_level_range().contains(&l) {
            return Err(Error::Options(format!(
                "zstd level {l} outside {:?}",
                zstd::compression_level_range()
            )));
        }
    }
    let opts = BuildOptions {
        owns: opts.owns.iter().map(|o| normalize(o)).collect(),
        ..opts.clone()
    };
    let t0 = std::time::Instant::now();
    progress.phase("scanning", 0);
    let mut scanned = scan(src, &opts)?;

    let out_dir = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = tempfile::Builder::new()
        .prefix(".mosaic-build")
        .tempfile_in(out_dir)
        .map_err(Error::io(out_dir, "create a temporary file"))?;
    let scratch = if opts.zstd_level.is_some() {
        Some(tempfile::tempfile_in(out_dir).map_err(Error::io(out_dir, "create a scratch file"))?)
    } else {
        None
    };
    let mut sink = match &scratch {
        Some(s) => DataSink::new(s, None, 0, false, out)?,
        None => DataSink::new(
            tmp.as_file(),
            Some(tmp.path()),
            HEADER_SIZE as u64,
            true,
            out,
        )?,
    };

    // Contents, in inode order.
    let files: Vec<u32> = (0..scanned.len() as u32)
        .filter(|&i| scanned[i as usize].kind == Kind::Regular)
        .collect();
    let total: u64 = files.iter().map(|&i| scanned[i as usize].size).sum();
    tracing::info!(
        elapsed_ms = t0.elapsed().as_millis() as u64,
        "phase: storing contents"
    );
    progress.phase("storing contents", total);
    let mut file_extents: HashMap<u32, Vec<Extent>> = HashMap::new();
    let mut small: Vec<u8> = Vec::new();
    let mut small_seen: HashMap<[u8; 32], u64> = HashMap::new();
    let mut data_seen: HashMap<[u8; 32], Vec<Extent>> = HashMap::new();
    let mut report = BuildReport {
        regular_files: files.len() as u64,
        file_bytes: total,
        ..Default::default()
    };
    // Only files whose size is shared can have a twin: hash just those.
    let mut size_count: HashMap<u64, u32> = HashMap::new();
    for &f in &files {
        *size_count.entry(scanned[f as usize].size).or_default() += 1;
    }
    let shared_sizes: std::collections::HashSet<u64> = size_count
        .into_iter()
        .filter(|&(_, n)| n > 1)
        .map(|(s, _)| s)
        .collect();
    let mut arena = vec![0u8; BATCH_BYTES as usize];
    let mut i = 0;
    while i < files.len() {
        let ino = files[i];
        let size = scanned[ino as usize].size;
        if size >= STREAM_MIN {
            let start = sink.cursor();
            let maybe_dup = shared_sizes.contains(&size);
            let (ext, k) = stream_big(&mut sink, &scanned[ino as usize].path, size, maybe_dup)?;
            if let Some(prev) = k.and_then(|k| data_seen.get(&k)) {
                sink.rewind(start);
                file_extents.insert(ino, prev.clone());
                report.deduplicated_files += 1;
            } else {
                if let Some(k) = k {
                    data_seen.insert(k, ext.clone());
                }
                file_extents.insert(ino, ext);
            }
            progress.advance(size);
            i += 1;
            continue;
        }
        let mut j = i;
        let mut bytes = 0;
        while j < files.len() && j - i < BATCH_FILES {
            let s = scanned[files[j] as usize].size;
            if s >= STREAM_MIN || (j > i && bytes + s > BATCH_BYTES) {
                break;
            }
            bytes += s;
            j += 1;
        }
        let batch = &files[i..j];
        // One arena reused for every batch: fresh allocations per file
        // cost more in page zeroing than the reads themselves.
        let mut slices: Vec<&mut [u8]> = Vec::with_capacity(batch.len());
        let mut rest = &mut arena[..];
        for &ino in batch {
            let (a, b) = rest.split_at_mut(scanned[ino as usize].size as usize);
            slices.push(a);
            rest = b;
        }
        let keys: Vec<Result<Option<[u8; 32]>>> = batch
            .par_iter()
            .zip(slices.par_iter_mut())
            .map(|(&ino, buf)| {
                read_into(&scanned[ino as usize].path, buf)?;
                let maybe_dup = shared_sizes.contains(&(buf.len() as u64));
                Ok(maybe_dup.then(|| *blake3::hash(buf).as_bytes()))
            })
            .collect();
        for ((&ino, k), data) in batch.iter().zip(keys).zip(slices) {
            let k = k?;
            let data: &[u8] = data;
            let size = data.len() as u64;
            if size == 0 {
                continue;
            }
            if size < opts.small_threshold {
                let off = match k.and_then(|k| small_seen.get(&k)) {
                    Some(&o) => {
                        report.deduplicated_files += 1;
                        o
                    }
                    None => {
                        let o = small.len() as u64;
                        small.extend_from_slice(data);
                        if let Some(k) = k {
                            small_seen.insert(k, o);
                        }
                        o
                    }
                };
                file_extents.insert(
                    ino,
                    vec![Extent {
                        file_offset: 0,
                        region: SMALL_REGION,
                        region_offset: off,
                        len: size,
                    }],
                );
            } else if let Some(prev) = k.and_then(|k| data_seen.get(&k)) {
                report.deduplicated_files += 1;
                file_extents.insert(ino, prev.clone());
            } else {
                let mut ext = Vec::new();
                place_runs(&mut sink, data, 0, &mut ext)?;
                if let Some(k) = k {
                    data_seen.insert(k, ext.clone());
                }
                file_extents.insert(ino, ext);
            }
            progress.advance(size);
        }
        i = j;
    }

    // Metadata tables.
    tracing::info!(
        elapsed_ms = t0.elapsed().as_millis() as u64,
        "phase: writing metadata"
    );
    progress.phase("writing metadata", 0);
    let mut strings = Strings { bytes: Vec::new() };
    let mut meta = Metadata::default();
    for (ino, si) in scanned.iter_mut().enumerate() {
        let xs = meta.xattrs.len() as u32;
        for (n, v) in &si.xattrs {
            if n.len() > crate::meta::XATTR_NAME_MAX || v.len() > crate::meta::XATTR_VALUE_MAX {
                return Err(Error::Source {
                    path: si.path.clone(),
                    what: "xattr too large".into(),
                    source: None,
                });
            }
            meta.xattrs.push(Xattr {
                name: strings.add(n)?,
                value: strings.add(v)?,
            });
        }
        let xattrs = xs..meta.xattrs.len() as u32;
        let body = match si.kind {
            Kind::Regular => {
                let es = meta.extents.len() as u32;
                meta.extents
                    .extend(file_extents.remove(&(ino as u32)).unwrap_or_default());
                Body::Regular {
                    size: si.size,
                    extents: es..meta.extents.len() as u32,
                }
            }
            Kind::Directory => {
                let ds = meta.dentries.len() as u32;
                for (name, child) in std::mem::take(&mut si.children) {
                    meta.dentries.push(Dentry {
                        name: strings.add(&name)?,
                        inode: child,
                    });
                }
                Body::Directory {
                    entries: ds..meta.dentries.len() as u32,
                }
            }
            Kind::Symlink => Body::Symlink {
                target: strings.add(&si.target)?,
            },
            Kind::CharDevice | Kind::BlockDevice => Body::Device {
                major: si.rdev.0,
                minor: si.rdev.1,
            },
            Kind::Fifo | Kind::Socket => Body::Empty,
        };
        meta.inodes.push(Inode {
            kind: si.kind,
            owns_security: si.owns,
            perm: si.perm,
            uid: si.uid,
            gid: si.gid,
            mtime: si.mtime,
            xattrs,
            body,
        });
    }
    meta.strings = strings.bytes;
    report.inodes = meta.inodes.len() as u64;
    report.entries = meta.dentries.len() as u64;

    // Regions, in file order: data, small, metadata, hashes.
    let pad = |v: &mut Vec<u8>| v.resize((v.len() as u64).div_ceil(BLOCK_SIZE) as usize * BLOCK, 0);
    let out_file = tmp.as_file();
    let mut regions = Vec::new();
    let mut all_cvs: Vec<Cv> = Vec::new();
    let mut offset = HEADER_SIZE as u64;
    let level = opts.zstd_level;
    let encoding = if level.is_some() {
        Encoding::Zstd
    } else {
        Encoding::Raw
    };

    // Data region.
    sink.finish()?;
    let data_logical = sink.cursor();
    let (data_stored, data_cvs) = match (&scratch, level) {
        (Some(scratch), Some(level)) => {
            progress.phase("compressing", data_logical);
            let stored = compress_file_region(
                scratch,
                data_logical,
                out_file,
                offset,
                level,
                out,
                progress,
            )?;
            let cvs = cvs_of_file(out_file, offset, stored, out)?;
            (stored, cvs)
        }
        _ => (data_logical, std::mem::take(&mut sink.cvs)),
    };
    report.data_region_bytes = data_stored;
    regions.push(region_entry(
        RegionKind::Data,
        encoding,
        offset,
        data_stored,
        data_logical,
        0,
        &data_cvs,
        out_file,
        out,
    )?);
    all_cvs.extend(data_cvs);
    offset += data_stored;

    // Small-data region.
    let small_logical = small.len() as u64;
    let mut small_stored = match level {
        Some(l) => compress_region(&small, l).map_err(Error::io(out, "compress"))?,
        None => small,
    };
    pad(&mut small_stored);
    report.small_region_bytes = small_stored.len() as u64;
    offset = push_mem_region(
        &mut regions,
        &mut all_cvs,
        RegionKind::Small,
        encoding,
        offset,
        &small_stored,
        small_logical,
        out_file,
        out,
    )?;

    // Metadata region.
    let mut meta_bytes = meta.encode();
    let meta_logical = meta_bytes.len() as u64;
    pad(&mut meta_bytes);
    offset = push_mem_region(
        &mut regions,
        &mut all_cvs,
        RegionKind::Metadata,
        Encoding::Raw,
        offset,
        &meta_bytes,
        meta_logical,
        out_file,
        out,
    )?;

    // Hash region.
    let mut hash_bytes: Vec<u8> = all_cvs.iter().flat_map(|c| c.iter().copied()).collect();
    let hash_logical = hash_bytes.len() as u64;
    pad(&mut hash_bytes);
    out_file
        .write_all_at(&hash_bytes, offset)
        .map_err(Error::io(out, "write"))?;
    regions.push(RegionEntry {
        kind: RegionKind::Hashes,
        encoding: Encoding::Raw,
        file_offset: offset,
        stored_len: hash_bytes.len() as u64,
        logical_len: hash_logical,
        hash_index: 0,
        root: *blake3::hash(&hash_bytes).as_bytes(),
    });
    offset += hash_bytes.len() as u64;

    // Header, signed.
    let mut header = Header {
        major: VERSION_MAJOR,
        minor: VERSION_MINOR,
        incompat: if level.is_some() { INCOMPAT_ZSTD } else { 0 },
        compat: 0,
        file_size: offset,
        inode_count: meta.inodes.len() as u32,
        dentry_count: meta.dentries.len() as u32,
        build_time: opts.build_time.unwrap_or(0),
        small_threshold: opts.small_threshold as u32,
        zstd_level: level.unwrap_or(0) as u32,
        name: opts.name.clone(),
        version: opts.version.clone(),
        regions,
        signer: key.verifying_key().to_bytes(),
        signature: [0; 64],
    };
    let unsigned = header.encode();
    header.signature = key.sign(&unsigned[..SIGNED_LEN]).to_bytes();
    let bytes = header.encode();
    debug_assert_eq!(bytes[..SIGNATURE_OFFSET], unsigned[..SIGNATURE_OFFSET]);
    out_file
        .write_all_at(&bytes, 0)
        .map_err(Error::io(out, "write"))?;
    out_file
        .set_len(offset)
        .map_err(Error::io(out, "truncate"))?;
    tracing::info!(elapsed_ms = t0.elapsed().as_millis() as u64, "phase: sync");
    out_file.sync_all().map_err(Error::io(out, "sync"))?;
    tmp.persist(out).map_err(|e| Error::Io {
        path: out.to_owned(),
        op: "rename into place",
        source: e.error,
    })?;
    if let Ok(d) = File::open(out_dir) {
        let _ = d.sync_all();
    }
    report.fragment_bytes = offset;
    tracing::info!(elapsed_ms = t0.elapsed().as_millis() as u64, "build done");
    Ok(report)
}

#[allow(clippy::too_many_arguments)]
fn push_mem_region(
    regions: &mut Vec<RegionEntry>,
    all_cvs: &mut Vec<Cv>,
    kind: RegionKind,
    encoding: Encoding,
    offset: u64,
    stored: &[u8],
    logical: u64,
    out_file: &File,
    out: &Path,
) -> Result<u64> {
    out_file
        .write_all_at(stored, offset)
        .map_err(Error::io(out, "write"))?;
    let cvs = cvs_of(stored);
    let hash_index = all_cvs.len() as u64;
    regions.push(region_entry(
        kind,
        encoding,
        offset,
        stored.len() as u64,
        logical,
        hash_index,
        &cvs,
        out_file,
        out,
    )?);
    all_cvs.extend(cvs);
    Ok(offset + stored.len() as u64)
}

#[allow(clippy::too_many_arguments)]
fn region_entry(
    kind: RegionKind,
    encoding: Encoding,
    offset: u64,
    stored: u64,
    logical: u64,
    hash_index: u64,
    cvs: &[Cv],
    out_file: &File,
    out: &Path,
) -> Result<RegionEntry> {
    let root = match root_from_cvs(cvs) {
        Some(r) => *r.as_bytes(),
        None => {
            let mut b = vec![0u8; BLOCK];
            out_file
                .read_exact_at(&mut b, offset)
                .map_err(Error::io(out, "read back"))?;
            *blake3::hash(&b).as_bytes()
        }
    };
    Ok(RegionEntry {
        kind,
        encoding,
        file_offset: offset,
        stored_len: stored,
        logical_len: logical,
        hash_index,
        root,
    })
}

/// Block CVs of a region already written to `file`, read back in parallel.
fn cvs_of_file(file: &File, offset: u64, len: u64, path: &Path) -> Result<Vec<Cv>> {
    const STEP: u64 = 4 << 20;
    let pieces: Vec<u64> = (0..len).step_by(STEP as usize).collect();
    let parts: Vec<Result<Vec<Cv>>> = pieces
        .par_iter()
        .map(|&p| {
            let n = STEP.min(len - p) as usize;
            let mut b = vec![0u8; n];
            file.read_exact_at(&mut b, offset + p)
                .map_err(Error::io(path, "read back"))?;
            Ok(b.chunks(BLOCK)
                .enumerate()
                .map(|(i, c)| crate::hash::block_cv(p + (i * BLOCK) as u64, c))
                .collect())
        })
        .collect();
    let mut out = Vec::with_capacity((len / BLOCK_SIZE) as usize);
    for p in parts {
        out.extend(p?);
    }
    Ok(out)
}

/// Compresses the logical data region held in `scratch` into `out_file` at
/// `offset` (index + frames, padded); returns the stored length.
///
/// Public so that update hydration (crate `update`) lays out a compressed
/// region with exactly the builder's code, byte for byte.
pub fn compress_file_region(
    scratch: &File,
    logical: u64,
    out_file: &File,
    offset: u64,
    level: i32,
    out: &Path,
    progress: &dyn Progress,
) -> Result<u64> {
    let chunks = logical.div_ceil(CHUNK_SIZE);
    let index_len = ChunkIndex::index_len(chunks);
    let mut offsets = Vec::with_capacity(chunks as usize + 1);
    let mut pos = index_len;
    offsets.push(pos);
    const GROUP: u64 = 256;
    let mut c = 0;
    while c < chunks {
        let n = GROUP.min(chunks - c);
        let frames: Vec<Result<Vec<u8>>> = (c..c + n)
            .into_par_iter()
            .map(|k| {
                let start = k * CHUNK_SIZE;
                let len = CHUNK_SIZE.min(logical - start) as usize;
                let mut b = vec![0u8; len];
                scratch
                    .read_exact_at(&mut b, start)
                    .map_err(Error::io(out, "read scratch"))?;
                zstd::bulk::compress(&b, level).map_err(Error::io(out, "compress"))
            })
            .collect();
        for f in frames {
            let f = f?;
            out_file
                .write_all_at(&f, offset + pos)
                .map_err(Error::io(out, "write"))?;
            pos += f.len() as u64;
            offsets.push(pos);
        }
        progress.advance(n * CHUNK_SIZE);
        c += n;
    }
    let mut index = Vec::with_capacity(index_len as usize);
    index.extend_from_slice(&crate::compress::ZMAGIC);
    index.extend_from_slice(&(CHUNK_SIZE as u32).to_le_bytes());
    index.extend_from_slice(&(chunks as u32).to_le_bytes());
    for o in offsets {
        index.extend_from_slice(&o.to_le_bytes());
    }
    out_file
        .write_all_at(&index, offset)
        .map_err(Error::io(out, "write"))?;
    let stored = pos.div_ceil(BLOCK_SIZE) * BLOCK_SIZE;
    out_file
        .write_all_at(&vec![0u8; (stored - pos) as usize], offset + pos)
        .map_err(Error::io(out, "write"))?;
    Ok(stored)
}

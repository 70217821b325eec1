//! Storing the contents of regular files, in inode order: small files
//! packed into the small-data region, the others into the data region
//! through the sink, each starting on a 4 KiB boundary with all-zero
//! blocks left out (holes); identical contents are stored once.
//!
//! Files are read in parallel batches into one reused arena; files of
//! `STREAM_MIN` bytes or more are streamed one at a time, their holes
//! skipped with `SEEK_DATA`.

use super::options::{Progress, DATA_REGION, SMALL_REGION};
use crate::error::{Error, Result};
use crate::format::BLOCK_SIZE;
use crate::hash::BLOCK;
use crate::meta::Extent;
use crate::scan::{src_err, ScanInode};
use crate::sink::DataSink;
use rayon::prelude::*;
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Files at least this large are streamed (holes skipped with SEEK_DATA)
/// instead of being read whole in a parallel batch.
const STREAM_MIN: u64 = 32 << 20;
const BATCH_BYTES: u64 = 64 << 20;
const BATCH_FILES: usize = 4096;
const PIECE: usize = 8 << 20;

/// Where the contents went.
pub(super) struct Contents {
    /// The extents of every non-empty regular file, by inode.
    pub(super) file_extents: HashMap<u32, Vec<Extent>>,
    /// The small-data region's logical bytes.
    pub(super) small: Vec<u8>,
    /// Files whose content was already stored for another file.
    pub(super) deduplicated_files: u64,
}

/// Stores the contents of `files` (regular files, in inode order).
pub(super) fn store(
    scanned: &[ScanInode],
    files: &[u32],
    sink: &mut DataSink,
    small_threshold: u64,
    progress: &dyn Progress,
) -> Result<Contents> {
    let shared_sizes = shared_sizes(scanned, files);
    let mut placer = Placer {
        sink,
        small_threshold,
        out: Contents {
            file_extents: HashMap::new(),
            small: Vec::new(),
            deduplicated_files: 0,
        },
        small_seen: HashMap::new(),
        data_seen: HashMap::new(),
    };
    let mut arena = vec![0u8; BATCH_BYTES as usize];
    let mut i = 0;
    while i < files.len() {
        let ino = files[i];
        let size = scanned[ino as usize].size;
        if size >= STREAM_MIN {
            let maybe_dup = shared_sizes.contains(&size);
            placer.big_file(ino, &scanned[ino as usize].path, size, maybe_dup)?;
            progress.advance(size);
            i += 1;
            continue;
        }
        let j = batch_end(scanned, files, i);
        placer.batch(scanned, &files[i..j], &mut arena, &shared_sizes, progress)?;
        i = j;
    }
    Ok(placer.out)
}

/// Only files whose size is shared can have a twin: the sizes to hash.
fn shared_sizes(scanned: &[ScanInode], files: &[u32]) -> HashSet<u64> {
    let mut size_count: HashMap<u64, u32> = HashMap::new();
    for &f in files {
        *size_count.entry(scanned[f as usize].size).or_default() += 1;
    }
    size_count
        .into_iter()
        .filter(|&(_, n)| n > 1)
        .map(|(s, _)| s)
        .collect()
}

/// The end of the batch starting at `files[i]` (a file below `STREAM_MIN`):
/// at most `BATCH_FILES` files, `BATCH_BYTES` bytes (or the one file).
fn batch_end(scanned: &[ScanInode], files: &[u32], i: usize) -> usize {
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
    j
}

/// A content key: `Some` for files whose size is shared.
type Key = Option<[u8; 32]>;

/// Reads a batch in parallel into slices of `arena`, hashing the files
/// that may have a twin.
fn read_batch<'a>(
    scanned: &[ScanInode],
    batch: &[u32],
    arena: &'a mut [u8],
    shared_sizes: &HashSet<u64>,
) -> (Vec<&'a mut [u8]>, Vec<Result<Key>>) {
    // One arena reused for every batch: fresh allocations per file
    // cost more in page zeroing than the reads themselves.
    let mut slices: Vec<&mut [u8]> = Vec::with_capacity(batch.len());
    let mut rest = arena;
    for &ino in batch {
        let (a, b) = rest.split_at_mut(scanned[ino as usize].size as usize);
        slices.push(a);
        rest = b;
    }
    let keys = batch
        .par_iter()
        .zip(slices.par_iter_mut())
        .map(|(&ino, buf)| {
            read_into(&scanned[ino as usize].path, buf)?;
            let maybe_dup = shared_sizes.contains(&(buf.len() as u64));
            Ok(maybe_dup.then(|| *blake3::hash(buf).as_bytes()))
        })
        .collect();
    (slices, keys)
}

/// The placing state: contents stored so far, by content key.
struct Placer<'s> {
    sink: &'s mut DataSink,
    small_threshold: u64,
    out: Contents,
    small_seen: HashMap<[u8; 32], u64>,
    data_seen: HashMap<[u8; 32], Vec<Extent>>,
}

impl Placer<'_> {
    /// Streams one big file into the data region, or takes its twin's
    /// extents (the streamed bytes are then rewound).
    fn big_file(&mut self, ino: u32, path: &Path, size: u64, maybe_dup: bool) -> Result<()> {
        let start = self.sink.cursor();
        let (ext, k) = stream_big(self.sink, path, size, maybe_dup)?;
        if let Some(prev) = k.and_then(|k| self.data_seen.get(&k)) {
            self.sink.rewind(start);
            self.out.file_extents.insert(ino, prev.clone());
            self.out.deduplicated_files += 1;
        } else {
            if let Some(k) = k {
                self.data_seen.insert(k, ext.clone());
            }
            self.out.file_extents.insert(ino, ext);
        }
        Ok(())
    }

    /// Reads a batch of files and places each (empty files have no extents).
    fn batch(
        &mut self,
        scanned: &[ScanInode],
        batch: &[u32],
        arena: &mut [u8],
        shared_sizes: &HashSet<u64>,
        progress: &dyn Progress,
    ) -> Result<()> {
        let (slices, keys) = read_batch(scanned, batch, arena, shared_sizes);
        for ((&ino, k), data) in batch.iter().zip(keys).zip(slices) {
            let k = k?;
            let data: &[u8] = data;
            let size = data.len() as u64;
            if size == 0 {
                continue;
            }
            if size < self.small_threshold {
                self.small_file(ino, data, k);
            } else {
                self.data_file(ino, data, k)?;
            }
            progress.advance(size);
        }
        Ok(())
    }

    /// A small file: appended to the small-data region unless a twin is there.
    fn small_file(&mut self, ino: u32, data: &[u8], k: Key) {
        let off = match k.and_then(|k| self.small_seen.get(&k)) {
            Some(&o) => {
                self.out.deduplicated_files += 1;
                o
            }
            None => {
                let o = self.out.small.len() as u64;
                self.out.small.extend_from_slice(data);
                if let Some(k) = k {
                    self.small_seen.insert(k, o);
                }
                o
            }
        };
        self.out.file_extents.insert(
            ino,
            vec![Extent {
                file_offset: 0,
                region: SMALL_REGION,
                region_offset: off,
                len: data.len() as u64,
            }],
        );
    }

    /// A file read whole: its nonzero runs to the data region, unless a
    /// twin is there.
    fn data_file(&mut self, ino: u32, data: &[u8], k: Key) -> Result<()> {
        if let Some(prev) = k.and_then(|k| self.data_seen.get(&k)) {
            self.out.deduplicated_files += 1;
            self.out.file_extents.insert(ino, prev.clone());
        } else {
            let mut ext = Vec::new();
            place_runs(self.sink, data, 0, &mut ext)?;
            if let Some(k) = k {
                self.data_seen.insert(k, ext.clone());
            }
            self.out.file_extents.insert(ino, ext);
        }
        Ok(())
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

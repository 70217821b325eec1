//! Laying out the regions of a build in the output file, in file order:
//! data, small-data, metadata, then the hash region holding every block's
//! chaining value. Each region's table entry carries its signed root.

use super::options::Progress;
use crate::compress::{compress_region, ChunkIndex, CHUNK_SIZE, ZMAGIC};
use crate::error::{Error, Result};
use crate::format::{Encoding, RegionEntry, RegionKind, BLOCK_SIZE, HEADER_SIZE};
use crate::hash::{block_cv, cvs_of, root_from_cvs, Cv, BLOCK};
use crate::sink::DataSink;
use rayon::prelude::*;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// The regions written so far, and where the next one starts.
pub(super) struct RegionWriter<'a> {
    out_file: &'a File,
    /// The output's final path, for errors.
    out: &'a Path,
    regions: Vec<RegionEntry>,
    all_cvs: Vec<Cv>,
    offset: u64,
}

/// The finished region table.
pub(super) struct Regions {
    pub(super) entries: Vec<RegionEntry>,
    /// Where the last region ends: the file size.
    pub(super) end: u64,
}

/// Pads to whole blocks with zeros.
fn pad(v: &mut Vec<u8>) {
    v.resize((v.len() as u64).div_ceil(BLOCK_SIZE) as usize * BLOCK, 0)
}

impl<'a> RegionWriter<'a> {
    /// Regions start right after the header block.
    pub(super) fn new(out_file: &'a File, out: &'a Path) -> Self {
        RegionWriter {
            out_file,
            out,
            regions: Vec::new(),
            all_cvs: Vec::new(),
            offset: HEADER_SIZE as u64,
        }
    }

    /// The data region from the finished sink: already in place when raw;
    /// compressed from the `scratch` file it was written to otherwise.
    /// Returns its stored length.
    pub(super) fn data_region(
        &mut self,
        sink: &mut DataSink,
        scratch: Option<&File>,
        level: Option<i32>,
        progress: &dyn Progress,
    ) -> Result<u64> {
        sink.finish()?;
        let logical = sink.cursor();
        let (stored, cvs) = match (scratch, level) {
            (Some(scratch), Some(level)) => {
                progress.phase("compressing", logical);
                let stored = compress_file_region(
                    scratch,
                    logical,
                    self.out_file,
                    self.offset,
                    level,
                    self.out,
                    progress,
                )?;
                let cvs = cvs_of_file(self.out_file, self.offset, stored, self.out)?;
                (stored, cvs)
            }
            _ => (logical, std::mem::take(&mut sink.cvs)),
        };
        let encoding = encoding_of(level);
        let entry = self.entry(RegionKind::Data, encoding, stored, logical, 0, &cvs)?;
        self.regions.push(entry);
        self.all_cvs.extend(cvs);
        self.offset += stored;
        Ok(stored)
    }

    /// The small-data region, compressed when `level` is set. Returns its
    /// stored length.
    pub(super) fn small_region(&mut self, small: Vec<u8>, level: Option<i32>) -> Result<u64> {
        let logical = small.len() as u64;
        let mut stored = match level {
            Some(l) => compress_region(&small, l).map_err(Error::io(self.out, "compress"))?,
            None => small,
        };
        pad(&mut stored);
        self.memory_region(RegionKind::Small, encoding_of(level), &stored, logical)?;
        Ok(stored.len() as u64)
    }

    /// The metadata region (raw) from the encoded tables.
    pub(super) fn metadata_region(&mut self, mut tables: Vec<u8>) -> Result<()> {
        let logical = tables.len() as u64;
        pad(&mut tables);
        self.memory_region(RegionKind::Metadata, Encoding::Raw, &tables, logical)
    }

    /// Writes a region held in memory (padded) at the current offset.
    fn memory_region(
        &mut self,
        kind: RegionKind,
        encoding: Encoding,
        stored: &[u8],
        logical: u64,
    ) -> Result<()> {
        self.out_file
            .write_all_at(stored, self.offset)
            .map_err(Error::io(self.out, "write"))?;
        let cvs = cvs_of(stored);
        let hash_index = self.all_cvs.len() as u64;
        let entry = self.entry(
            kind,
            encoding,
            stored.len() as u64,
            logical,
            hash_index,
            &cvs,
        )?;
        self.regions.push(entry);
        self.all_cvs.extend(cvs);
        self.offset += stored.len() as u64;
        Ok(())
    }

    /// The table entry of a region written at the current offset.
    fn entry(
        &self,
        kind: RegionKind,
        encoding: Encoding,
        stored: u64,
        logical: u64,
        hash_index: u64,
        cvs: &[Cv],
    ) -> Result<RegionEntry> {
        let root = match root_from_cvs(cvs) {
            Some(r) => *r.as_bytes(),
            None => {
                let mut b = vec![0u8; BLOCK];
                self.out_file
                    .read_exact_at(&mut b, self.offset)
                    .map_err(Error::io(self.out, "read back"))?;
                *blake3::hash(&b).as_bytes()
            }
        };
        Ok(RegionEntry {
            kind,
            encoding,
            file_offset: self.offset,
            stored_len: stored,
            logical_len: logical,
            hash_index,
            root,
        })
    }

    /// Ends the layout with the hash region: every block's chaining value
    /// of the regions before it, in order.
    pub(super) fn finish(mut self) -> Result<Regions> {
        let mut hash_bytes: Vec<u8> = self
            .all_cvs
            .iter()
            .flat_map(|c| c.iter().copied())
            .collect();
        let logical = hash_bytes.len() as u64;
        pad(&mut hash_bytes);
        self.out_file
            .write_all_at(&hash_bytes, self.offset)
            .map_err(Error::io(self.out, "write"))?;
        self.regions.push(RegionEntry {
            kind: RegionKind::Hashes,
            encoding: Encoding::Raw,
            file_offset: self.offset,
            stored_len: hash_bytes.len() as u64,
            logical_len: logical,
            hash_index: 0,
            root: *blake3::hash(&hash_bytes).as_bytes(),
        });
        Ok(Regions {
            entries: self.regions,
            end: self.offset + hash_bytes.len() as u64,
        })
    }
}

fn encoding_of(level: Option<i32>) -> Encoding {
    if level.is_some() {
        Encoding::Zstd
    } else {
        Encoding::Raw
    }
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
                .map(|(i, c)| block_cv(p + (i * BLOCK) as u64, c))
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
    index.extend_from_slice(&ZMAGIC);
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

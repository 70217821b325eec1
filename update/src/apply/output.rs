//! The output file: where each region's logical bytes are written, block
//! hashes gathered as written.

use crate::blob::{Blob, PIECE};
use crate::error::{Error, Result};
use fragments::hash::{block_cv, Cv};
use fragments::{Encoding, Header, Metadata, RegionKind, BLOCK_SIZE};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Where the logical bytes of one region of R are written.
pub(super) enum Dest {
    /// Raw region: in place in the output file, at this file offset.
    Direct(u64),
    /// Compressed region: logical bytes in a scratch file, compressed at the end.
    Scratch(File),
    None,
}

/// Block CVs of a region gathered as written: (block, CV).
pub(super) type BlockCvs = Mutex<Vec<(u64, Cv)>>;

pub(super) struct Output {
    pub(super) file: File,
    pub(super) path: PathBuf,
    pub(super) dests: Vec<Dest>,
    /// Per region: block CVs computed from the bytes as they are written
    /// (raw data regions, where every block belongs to one content and
    /// ends in zero padding), so no pass reads the region back.
    pub(super) cvs: Vec<Option<BlockCvs>>,
}

impl Output {
    /// A temporary file beside the output, of R's size and all zeros, and
    /// where each of R's regions goes.
    pub(super) fn create(dir: &Path, header: &Header) -> Result<(tempfile::NamedTempFile, Output)> {
        let tmp = tempfile::Builder::new()
            .prefix(".mosaic-update")
            .tempfile_in(dir)
            .map_err(Error::io(dir, "create a temporary file"))?;
        tmp.as_file()
            .set_len(header.file_size)
            .map_err(Error::io(tmp.path(), "size"))?;
        let mut dests = Vec::new();
        for r in &header.regions {
            dests.push(match (r.kind, r.encoding) {
                (RegionKind::Data | RegionKind::Small, Encoding::Raw) => {
                    Dest::Direct(r.file_offset)
                }
                (RegionKind::Data | RegionKind::Small, Encoding::Zstd) => {
                    let f = tempfile::tempfile_in(dir)
                        .map_err(Error::io(dir, "create a scratch file"))?;
                    f.set_len(r.logical_len)
                        .map_err(Error::io(dir, "size a scratch file"))?;
                    Dest::Scratch(f)
                }
                _ => Dest::None,
            });
        }
        let output = Output {
            file: tmp
                .as_file()
                .try_clone()
                .map_err(Error::io(tmp.path(), "duplicate a handle"))?,
            path: tmp.path().to_owned(),
            cvs: header
                .regions
                .iter()
                .map(|r| {
                    (r.kind == RegionKind::Data && r.encoding == Encoding::Raw)
                        .then(|| Mutex::new(Vec::new()))
                })
                .collect(),
            dests,
        };
        Ok((tmp, output))
    }

    pub(super) fn write_at(&self, region: u32, at: u64, bytes: &[u8]) -> std::io::Result<()> {
        match self.dests.get(region as usize) {
            Some(Dest::Direct(off)) => {
                self.file.write_all_at(bytes, off + at)?;
                if bytes.len() >= 1 << 20 {
                    // Start writing this range back now, so the disk works
                    // while the cores hydrate the rest; fsync waits less.
                    start_writeback(&self.file, off + at, bytes.len() as u64);
                }
                if let Some(Some(cvs)) = self.cvs.get(region as usize) {
                    if at.is_multiple_of(BLOCK_SIZE) {
                        let list = written_cvs(at / BLOCK_SIZE, bytes);
                        cvs.lock().expect("cv lock").extend(list);
                    }
                }
                Ok(())
            }
            Some(Dest::Scratch(f)) => f.write_all_at(bytes, at),
            _ => Err(std::io::Error::other("extent in a region without data")),
        }
    }

    /// Writes content `ri` of `meta` where its extents say.
    pub(super) fn write_content(
        &self,
        meta: &Metadata,
        ri: u32,
        blob: &Blob,
    ) -> std::io::Result<()> {
        for e in meta.extents_of(ri) {
            let mut done = 0;
            while done < e.len {
                let n = PIECE.min(e.len - done);
                let w = blob.window(e.file_offset + done, n)?;
                self.write_at(e.region, e.region_offset + done, &w)?;
                done += n;
            }
        }
        Ok(())
    }
}

/// Block CVs of `bytes` written at block `first` of a raw data region (a
/// partial last block is the end of a content: zero padded).
fn written_cvs(first: u64, bytes: &[u8]) -> Vec<(u64, Cv)> {
    bytes
        .chunks(BLOCK_SIZE as usize)
        .enumerate()
        .map(|(i, b)| {
            let blk = first + i as u64;
            let cv = if b.len() == BLOCK_SIZE as usize {
                block_cv(blk * BLOCK_SIZE, b)
            } else {
                let mut p = [0u8; BLOCK_SIZE as usize];
                p[..b.len()].copy_from_slice(b);
                block_cv(blk * BLOCK_SIZE, &p)
            };
            (blk, cv)
        })
        .collect()
}

/// Asks the kernel to start writing a file's dirty pages back without
/// waiting (the durable `fsync` comes later).
pub(super) fn start_writeback(f: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    // SAFETY: a plain syscall on a descriptor we own; no memory is passed.
    unsafe {
        libc::sync_file_range(
            f.as_raw_fd(),
            offset as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

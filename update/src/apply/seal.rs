//! Sealing R: its regions laid out around the contents already written
//! (compressed exactly as the builder does), the metadata, the hash region
//! and R's signed header; then R is opened with the trusted keys, so its
//! signature decides.

use super::output::{Dest, Output};
use super::target::Target;
use super::Ctx;
use crate::blob::PIECE;
use crate::error::{Error, Result};
use fragments::format::HEADER_SIZE as FRAG_HEADER;
use fragments::hash::{block_cv, Cv};
use fragments::{Fragment, Header, Progress, RegionEntry, RegionKind, Trust, BLOCK_SIZE};
use rayon::prelude::*;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Writes R's regions, hashes and header to the output at `tmp`, syncs
/// it, and opens it against the trusted keys: the hydrated fragment.
pub(super) fn seal_and_verify(
    cx: &Ctx,
    target: &Target,
    output: &Output,
    tmp: &Path,
) -> Result<Fragment> {
    finish_regions(
        output,
        &target.header,
        &cx.pkg.manifest.target_header,
        &target.meta_bytes,
        cx.progress,
    )?;
    tracing::info!(
        elapsed_ms = cx.elapsed_ms(),
        "regions, hashes and header written"
    );
    output.file.sync_all().map_err(Error::io(tmp, "sync"))?;
    tracing::info!(elapsed_ms = cx.elapsed_ms(), "synced");
    cx.progress.phase("verifying", target.header.file_size);
    let hydrated = Fragment::open(tmp, Trust::Keys(cx.trusted)).map_err(|e| Error::Mismatch {
        what: format!("the hydrated fragment does not open against its signature: {e}"),
    })?;
    // The block hashes were computed from the bytes read back from the
    // file, and open() checked them against the signed roots: every byte is
    // vouched for. A second full pass is optional.
    let faults = if cx.opts.verify_all {
        hydrated.verify_all(&|n| cx.progress.advance(n))?
    } else {
        Vec::new()
    };
    if !faults.is_empty() {
        return Err(Error::Mismatch {
            what: format!(
                "{} block(s) differ from the lab's: {}",
                faults.len(),
                faults
                    .iter()
                    .map(|f| f.to_string())
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
        });
    }
    if hydrated.id() != cx.pkg.header.target_id {
        return Err(Error::Mismatch {
            what: "the hydrated header is not the package's target".into(),
        });
    }
    tracing::info!(elapsed_ms = cx.elapsed_ms(), "hydrated fragment verified");
    Ok(hydrated)
}

/// Lays out R's regions around the contents already written: compresses
/// compressed regions as the builder does, writes the metadata, the hash
/// region and R's signed header.
fn finish_regions(
    out: &Output,
    header: &Header,
    header_bytes: &[u8; FRAG_HEADER],
    meta: &[u8],
    progress: &dyn Progress,
) -> Result<()> {
    let io = |op| Error::io(&out.path, op);
    for (i, r) in header.regions.iter().enumerate() {
        match (r.kind, &out.dests[i]) {
            (RegionKind::Metadata, _) => {
                if meta.len() as u64 != r.logical_len {
                    return Err(Error::Mismatch {
                        what: format!(
                            "metadata is {} bytes, the header says {}",
                            meta.len(),
                            r.logical_len
                        ),
                    });
                }
                let mut b = meta.to_vec();
                b.resize(r.stored_len as usize, 0);
                out.file
                    .write_all_at(&b, r.file_offset)
                    .map_err(io("write"))?;
            }
            (RegionKind::Data | RegionKind::Small, Dest::Scratch(s)) => {
                compress_region(out, i, r, s, header.zstd_level as i32, progress)?
            }
            _ => {}
        }
    }
    // Every region is in place: hash them all.
    let mut all_cvs = Vec::new();
    for (i, r) in header.regions.iter().enumerate() {
        if r.kind != RegionKind::Hashes {
            all_cvs.extend(region_cvs(out, i, r).map_err(io("read back"))?);
        }
    }
    let hr = header.regions.last().expect("decode checked a hash region");
    let mut hb: Vec<u8> = all_cvs.iter().flatten().copied().collect();
    if hb.len() as u64 != hr.logical_len {
        return Err(Error::Mismatch {
            what: format!(
                "{} block hashes, the header has room for {}",
                all_cvs.len(),
                hr.logical_len / 32
            ),
        });
    }
    hb.resize(hr.stored_len as usize, 0);
    out.file
        .write_all_at(&hb, hr.file_offset)
        .map_err(io("write"))?;
    out.file
        .write_all_at(header_bytes, 0)
        .map_err(io("write"))?;
    Ok(())
}

/// Compresses region `i` (`r`) from its scratch file `s` into the output,
/// as the builder does; refused unless it is exactly the lab's size.
fn compress_region(
    out: &Output,
    i: usize,
    r: &RegionEntry,
    s: &File,
    level: i32,
    progress: &dyn Progress,
) -> Result<()> {
    let io = |op| Error::io(&out.path, op);
    let stored = if r.kind == RegionKind::Data {
        progress.phase("compressing", r.logical_len);
        fragments::build::compress_file_region(
            s,
            r.logical_len,
            &out.file,
            r.file_offset,
            level,
            &out.path,
            progress,
        )?
    } else {
        let mut logical = vec![0u8; r.logical_len as usize];
        s.read_exact_at(&mut logical, 0)
            .map_err(io("read a scratch file"))?;
        let mut c =
            fragments::compress::compress_region(&logical, level).map_err(io("compress"))?;
        c.resize(
            c.len().div_ceil(BLOCK_SIZE as usize) * BLOCK_SIZE as usize,
            0,
        );
        if c.len() as u64 == r.stored_len {
            out.file
                .write_all_at(&c, r.file_offset)
                .map_err(io("write"))?;
        }
        c.len() as u64
    };
    if stored != r.stored_len {
        return Err(Error::Mismatch {
            what: format!(
                "region {i} ({}) compresses to {stored} bytes, the lab's to {} (another zstd version?)",
                r.kind, r.stored_len
            ),
        });
    }
    Ok(())
}

/// Block CVs of region `i` (`r`) as now stored in the output: gathered as
/// written where that was done, read back for the rest.
fn region_cvs(out: &Output, i: usize, r: &RegionEntry) -> io::Result<Vec<Cv>> {
    let Some(Some(pre)) = out.cvs.get(i) else {
        return cvs_of(&out.file, r.file_offset, r.stored_len);
    };
    let pre = std::mem::take(&mut *pre.lock().expect("cv lock"));
    let mut dense: Vec<Option<Cv>> = vec![None; (r.stored_len / BLOCK_SIZE) as usize];
    for (blk, cv) in pre {
        if let Some(slot) = dense.get_mut(blk as usize) {
            *slot = Some(cv);
        }
    }
    // Blocks no content wrote (none in a builder's region): from the file.
    let mut block = [0u8; BLOCK_SIZE as usize];
    let mut cvs = Vec::with_capacity(dense.len());
    for (blk, slot) in dense.into_iter().enumerate() {
        let at = blk as u64 * BLOCK_SIZE;
        cvs.push(match slot {
            Some(cv) => cv,
            None => {
                out.file.read_exact_at(&mut block, r.file_offset + at)?;
                block_cv(at, &block)
            }
        });
    }
    Ok(cvs)
}

/// Block CVs of the region stored at `[offset, offset + len)` of `file`
/// (the output, once everything is written), region-relative; read back
/// with positioned reads in pieces, hashed over the cores.
fn cvs_of(file: &File, offset: u64, len: u64) -> io::Result<Vec<Cv>> {
    let mut cvs = Vec::with_capacity((len / BLOCK_SIZE) as usize);
    let mut buf = vec![0u8; PIECE.min(len) as usize];
    let mut done = 0u64;
    while done < len {
        let n = PIECE.min(len - done) as usize;
        file.read_exact_at(&mut buf[..n], offset + done)?;
        let part: Vec<Cv> = buf[..n]
            .par_chunks(BLOCK_SIZE as usize)
            .enumerate()
            .map(|(i, c)| block_cv(done + i as u64 * BLOCK_SIZE, c))
            .collect();
        cvs.extend(part);
        done += n as u64;
    }
    Ok(cvs)
}

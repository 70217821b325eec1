//! Writing the volume's bytes: the debugging view and the oracles' input.
//! Fragment bytes are read through the fragments' verified read path.

use super::disk::BLOCK;
use super::{Image, Source};
use crate::tree::Merged;
use std::fs::File;
use std::os::unix::fs::FileExt;

/// Errors while writing an image.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Fragment(#[from] fragments::Error),
    #[error("writing the image: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads volume bytes at block `block` into `buf` (whole blocks).
pub fn read_blocks(
    merged: &Merged,
    img: &Image,
    mut block: u64,
    buf: &mut [u8],
) -> Result<(), fragments::Error> {
    debug_assert_eq!(buf.len() % BLOCK, 0);
    let mut off = 0;
    while off < buf.len() {
        let m = *img
            .lookup(block)
            .expect("blocks below the volume size are mapped");
        let n = (((m.start + m.len - block) as usize) * BLOCK).min(buf.len() - off);
        let out = &mut buf[off..off + n];
        match m.source {
            Source::Meta => {
                for (k, b) in out.chunks_mut(BLOCK).enumerate() {
                    img.read_meta(merged, block + k as u64, b);
                }
            }
            Source::Zero => out.fill(0),
            Source::Fragment {
                frag,
                region,
                block: rb,
            } => {
                let f = &merged.fragments[frag as usize];
                f.read_region(region, (rb + block - m.start) * BLOCK as u64, out)?;
            }
            Source::Small { first } => {
                out.fill(0);
                for (k, b) in out.chunks_mut(BLOCK).enumerate() {
                    let s = img.small[first as usize + (block - m.start) as usize + k];
                    merged.fragments[s.frag as usize].read_region(
                        s.region as u32,
                        s.offset,
                        &mut b[..s.len as usize],
                    )?;
                }
            }
        }
        off += n;
        block += (n / BLOCK) as u64;
    }
    Ok(())
}

/// A verified window of a small-data region: small files are laid out in
/// the order their blocks appear, so one verified read serves many files
/// instead of hashing a 4 KiB block per file.
struct SmallWindow {
    key: (crate::tree::FragIdx, u32),
    start: u64,
    data: Vec<u8>,
}

impl SmallWindow {
    fn get<'a>(
        win: &'a mut Option<SmallWindow>,
        merged: &Merged,
        frag: crate::tree::FragIdx,
        region: u32,
        offset: u64,
        len: u64,
    ) -> Result<&'a [u8], fragments::Error> {
        let hit = win.as_ref().is_some_and(|w| {
            w.key == (frag, region)
                && offset >= w.start
                && offset + len <= w.start + w.data.len() as u64
        });
        if !hit {
            let f = &merged.fragments[frag as usize];
            let logical = f.region(region).map_or(0, |r| r.logical_len);
            let start = offset / BLOCK as u64 * BLOCK as u64;
            let end = (start + (1 << 20))
                .max(offset + len)
                .min(logical.max(offset + len));
            let mut data = vec![0u8; (end - start) as usize];
            f.read_region(region, start, &mut data)?;
            *win = Some(SmallWindow {
                key: (frag, region),
                start,
                data,
            });
        }
        let w = win.as_ref().expect("filled above");
        let at = (offset - w.start) as usize;
        Ok(&w.data[at..at + len as usize])
    }
}

/// Writes the whole volume to `file` as a sparse file (zero runs are holes).
pub fn write_image(
    merged: &Merged,
    img: &Image,
    file: &File,
    progress: &dyn Fn(u64),
) -> Result<(), ExportError> {
    file.set_len(0)?;
    file.set_len(img.blocks * BLOCK as u64)?;
    const STEP: u64 = 256; // 1 MiB
    let mut out: Vec<u8> = Vec::with_capacity(STEP as usize * BLOCK);
    let mut out_start = 0u64; // block where `out` goes
    let mut window = None;
    let flush = |out: &mut Vec<u8>, at: u64| -> std::io::Result<()> {
        if !out.is_empty() {
            file.write_all_at(out, at * BLOCK as u64)?;
            progress(out.len() as u64);
            out.clear();
        }
        Ok(())
    };
    for m in &img.map {
        if m.source == Source::Zero {
            flush(&mut out, out_start)?;
            progress(m.len * BLOCK as u64);
            continue;
        }
        let mut b = m.start;
        while b < m.start + m.len {
            let queued = (out.len() / BLOCK) as u64;
            if queued == STEP || (queued > 0 && out_start + queued != b) {
                flush(&mut out, out_start)?;
            }
            if out.is_empty() {
                out_start = b;
            }
            let room = STEP - (out.len() / BLOCK) as u64;
            let n = room.min(m.start + m.len - b);
            let at = out.len();
            out.resize(at + n as usize * BLOCK, 0);
            match m.source {
                Source::Small { first } => {
                    for k in 0..n as usize {
                        let s = img.small[first as usize + (b - m.start) as usize + k];
                        let bytes = SmallWindow::get(
                            &mut window,
                            merged,
                            s.frag,
                            s.region as u32,
                            s.offset,
                            s.len as u64,
                        )?;
                        let o = at + k * BLOCK;
                        out[o..o + bytes.len()].copy_from_slice(bytes);
                    }
                }
                _ => read_blocks(merged, img, b, &mut out[at..])?,
            }
            b += n;
        }
    }
    flush(&mut out, out_start)?;
    file.sync_all()?;
    Ok(())
}

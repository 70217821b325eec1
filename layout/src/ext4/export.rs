//! Writing the volume's bytes: the debugging view and the oracles' input.
//! Fragment bytes are read through the fragments' verified read path.

use super::{Image, Source, BLOCK};
use crate::merge::Merged;
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
            Source::Small {
                frag,
                region,
                offset,
                len,
            } => {
                out.fill(0);
                merged.fragments[frag as usize].read_region(
                    region,
                    offset,
                    &mut out[..len as usize],
                )?;
            }
        }
        off += n;
        block += (n / BLOCK) as u64;
    }
    Ok(())
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
    let mut buf = vec![0u8; STEP as usize * BLOCK];
    for m in &img.map {
        if m.source == Source::Zero {
            progress(m.len * BLOCK as u64);
            continue;
        }
        let mut b = m.start;
        while b < m.start + m.len {
            let n = STEP.min(m.start + m.len - b);
            let out = &mut buf[..n as usize * BLOCK];
            read_blocks(merged, img, b, out)?;
            file.write_all_at(out, b * BLOCK as u64)?;
            progress(n * BLOCK as u64);
            b += n;
        }
    }
    file.sync_all()?;
    Ok(())
}

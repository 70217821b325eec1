//! The output file: where each region's logical bytes are written, block
//! hashes gathered as written, and the regions finished at the end.

use super::*;
pub(super) enum Target {
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
    pub(super) targets: Vec<Target>,
    /// Per region: block CVs computed from the bytes as they are written
    /// (raw data regions, where every block belongs to one content and
    /// ends in zero padding), so no pass reads the region back.
    pub(super) cvs: Vec<Option<BlockCvs>>,
}

impl Output {
    pub(super) fn write_at(&self, region: u32, at: u64, bytes: &[u8]) -> std::io::Result<()> {
        match self.targets.get(region as usize) {
            Some(Target::Direct(off)) => {
                self.file.write_all_at(bytes, off + at)?;
                if bytes.len() >= 1 << 20 {
                    // Start writing this range back now, so the disk works
                    // while the cores hydrate the rest; fsync waits less.
                    start_writeback(&self.file, off + at, bytes.len() as u64);
                }
                if let Some(Some(cvs)) = self.cvs.get(region as usize) {
                    if at.is_multiple_of(BLOCK_SIZE) {
                        let first = at / BLOCK_SIZE;
                        let list: Vec<(u64, Cv)> = bytes
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
                            .collect();
                        cvs.lock().expect("cv lock").extend(list);
                    }
                }
                Ok(())
            }
            Some(Target::Scratch(f)) => f.write_all_at(bytes, at),
            _ => Err(std::io::Error::other("extent in a region without data")),
        }
    }

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

/// Block CVs of the region stored at `[offset, offset + len)` of `map`
/// (the output file, mapped once everything is written), region-relative.
pub(super) fn cvs_of(map: &[u8], offset: u64, len: u64) -> std::io::Result<Vec<[u8; 32]>> {
    let bytes = map
        .get(offset as usize..(offset + len) as usize)
        .ok_or_else(|| std::io::Error::other("region outside the output file"))?;
    Ok(bytes
        .par_chunks(BLOCK_SIZE as usize)
        .enumerate()
        .map(|(i, c)| block_cv(i as u64 * BLOCK_SIZE, c))
        .collect())
}

/// Lays out R's regions around the contents already written: compresses
/// compressed regions as the builder does, writes the metadata, the hash
/// region and R's signed header.
pub(super) fn finish_regions(
    out: &Output,
    header: &Header,
    header_bytes: &[u8; FRAG_HEADER],
    meta: &[u8],
    progress: &dyn Progress,
) -> Result<()> {
    let mismatch = |what: String| Error::Mismatch { what };
    let io = |op| Error::io(&out.path, op);
    let level = header.zstd_level as i32;
    let mut all_cvs = Vec::new();
    for (i, r) in header.regions.iter().enumerate() {
        match r.kind {
            RegionKind::Hashes => continue,
            RegionKind::Metadata => {
                let mut b = meta.to_vec();
                b.resize(r.stored_len as usize, 0);
                if meta.len() as u64 != r.logical_len {
                    return Err(mismatch(format!(
                        "metadata is {} bytes, the header says {}",
                        meta.len(),
                        r.logical_len
                    )));
                }
                out.file
                    .write_all_at(&b, r.file_offset)
                    .map_err(io("write"))?;
            }
            RegionKind::Data | RegionKind::Small => {
                if let Target::Scratch(s) = &out.targets[i] {
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
                        let mut c = fragments::compress::compress_region(&logical, level)
                            .map_err(io("compress"))?;
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
                        return Err(mismatch(format!(
                            "region {i} ({}) compresses to {stored} bytes, the lab's to {} (another zstd version?)",
                            r.kind, r.stored_len
                        )));
                    }
                }
            }
        }
    }
    // Every region is in place: hash them all from one read-only mapping
    // of the output (our own temporary file: nobody else truncates it).
    // SAFETY: see above; the mapping is dropped before the file is renamed.
    let map = unsafe { memmap2::MmapOptions::new().map(&out.file) }.map_err(io("map"))?;
    for (i, r) in header.regions.iter().enumerate() {
        if r.kind == RegionKind::Hashes {
            continue;
        }
        match out.cvs.get(i) {
            Some(Some(pre)) => {
                let pre = std::mem::take(&mut *pre.lock().expect("cv lock"));
                let mut dense: Vec<Option<Cv>> = vec![None; (r.stored_len / BLOCK_SIZE) as usize];
                for (blk, cv) in pre {
                    if let Some(slot) = dense.get_mut(blk as usize) {
                        *slot = Some(cv);
                    }
                }
                // Blocks no content wrote (none in a builder's region): from the file.
                for (blk, slot) in dense.iter_mut().enumerate() {
                    if slot.is_none() {
                        let at = (r.file_offset + blk as u64 * BLOCK_SIZE) as usize;
                        *slot = Some(block_cv(
                            blk as u64 * BLOCK_SIZE,
                            &map[at..at + BLOCK_SIZE as usize],
                        ));
                    }
                }
                all_cvs.extend(dense.into_iter().map(|c| c.expect("filled")));
            }
            _ => {
                all_cvs.extend(cvs_of(&map, r.file_offset, r.stored_len).map_err(io("read back"))?)
            }
        }
    }
    let hr = header.regions.last().expect("decode checked a hash region");
    let mut hb: Vec<u8> = all_cvs.iter().flatten().copied().collect();
    if hb.len() as u64 != hr.logical_len {
        return Err(mismatch(format!(
            "{} block hashes, the header has room for {}",
            all_cvs.len(),
            hr.logical_len / 32
        )));
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

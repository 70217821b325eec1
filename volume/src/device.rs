//! [`Volume`]: a layout's block map read with verification, plus the overlay.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use layout::ext4::Source;
use layout::{FragmentCache, Layout};

use crate::cache::{source_key, BlockCache, SourceKey, BLOCK};
use crate::error::{Error, Result};
use crate::overlay::{Overlay, BASE, DATA, ZERO};

const B: u64 = BLOCK as u64;
/// Reads of at most this many blocks (128 KiB: a guest's readahead) fill
/// the verified-block cache; larger ones (scans) only while it has room.
const ADMIT_MAX_BLOCKS: usize = 32;
/// Fragment reads are read and verified in pieces of this many blocks
/// (aligned in the region), so the bytes are still in the CPU cache when
/// hashed.
const PIECE_BLOCKS: usize = 32;

/// What every volume of one process shares: each fragment file opened
/// once, and one verified-block cache.
pub struct Shared {
    pub fragments: FragmentCache,
    pub blocks: Arc<BlockCache>,
}

impl Shared {
    /// `cache_bytes`: the verified-block cache's bound (0 disables it).
    pub fn new(cache_bytes: u64) -> Shared {
        Shared {
            fragments: FragmentCache::new(),
            blocks: Arc::new(BlockCache::new(cache_bytes)),
        }
    }
}

/// How to open a volume.
#[derive(Debug, Clone, Copy, Default)]
pub struct OpenOptions {
    /// Open the manifest's `[overlay]` (locking it); `false` gives a
    /// read-only view of the base volume.
    pub overlay: bool,
    /// Start from an empty overlay, replacing the existing one.
    pub discard_overlay: bool,
}

/// One run of a block-status answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub len: u64,
    /// Reads as zeros.
    pub zero: bool,
    /// Has no storage (zeros in the map or the overlay).
    pub hole: bool,
}

/// A merged volume, ready to serve.
pub struct Volume {
    manifest: PathBuf,
    name: String,
    layout: Layout,
    /// Cache key of each region of each fragment, by fragment index.
    sources: Vec<Vec<SourceKey>>,
    cache: Arc<BlockCache>,
    overlay: Option<Overlay>,
    size: u64,
}

impl std::fmt::Debug for Volume {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Volume")
            .field("manifest", &self.manifest)
            .field("size", &self.size)
            .finish()
    }
}

/// Runs of the same value in `hit`: `(start, end, value)`.
fn runs(hit: &[bool]) -> impl Iterator<Item = (usize, usize, bool)> + '_ {
    let mut i = 0;
    std::iter::from_fn(move || {
        if i >= hit.len() {
            return None;
        }
        let v = hit[i];
        let s = i;
        while i < hit.len() && hit[i] == v {
            i += 1;
        }
        Some((s, i, v))
    })
}

impl Volume {
    /// Loads `manifest`, opens its fragments through `shared` (each file
    /// once per process), merges, synthesizes and opens the overlay.
    pub fn open(manifest: &Path, shared: &Shared, opts: OpenOptions) -> Result<Volume> {
        let layout = Layout::open(manifest, &shared.fragments)?;
        let sources = layout
            .merged
            .fragments
            .iter()
            .map(|f| {
                let id = f.id();
                (0..f.header().regions.len() as u32)
                    .map(|r| source_key(&id, r))
                    .collect()
            })
            .collect();
        let size = layout.image.blocks * B;
        let overlay = match (&layout.manifest.overlay, opts.overlay) {
            (Some(path), true) => Some(Overlay::open(
                path,
                &layout.manifest.path,
                layout.image.blocks,
                layout.image.identity,
                opts.discard_overlay,
            )?),
            _ => None,
        };
        Ok(Volume {
            manifest: layout.manifest.path.clone(),
            name: layout.manifest.name.clone(),
            layout,
            sources,
            cache: shared.blocks.clone(),
            overlay,
            size,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn manifest(&self) -> &Path {
        &self.manifest
    }
    pub fn layout(&self) -> &Layout {
        &self.layout
    }
    pub fn overlay(&self) -> Option<&Overlay> {
        self.overlay.as_ref()
    }
    pub fn size(&self) -> u64 {
        self.size
    }
    pub fn read_only(&self) -> bool {
        self.overlay.is_none()
    }
    pub fn identity(&self) -> [u8; 32] {
        self.layout.image.identity
    }

    /// A one-line description: the fragments it merges.
    pub fn description(&self) -> String {
        let frags: Vec<String> = self
            .layout
            .merged
            .fragments
            .iter()
            .map(|f| format!("{} {}", f.header().name, f.header().version))
            .collect();
        format!("mosaic ext4 volume of {}", frags.join(", "))
    }

    fn check(&self, what: &'static str, offset: u64, len: u64) -> Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(Error::OutOfRange {
                what,
                offset,
                len,
                size: self.size,
            }),
        }
    }

    fn writable(&self) -> Result<&Overlay> {
        self.overlay.as_ref().ok_or_else(|| Error::ReadOnly {
            name: self.name.clone(),
        })
    }

    /// Fills `buf` with the volume's bytes at `offset` (any alignment).
    /// Fragment bytes are verified in `buf` itself (or come from the
    /// verified cache); on a failure nothing unverified is left in `buf`.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.check("read", offset, buf.len() as u64)?;
        if offset.is_multiple_of(B) && buf.len().is_multiple_of(BLOCK) {
            return self.read_blocks(offset / B, buf);
        }
        let first = offset / B;
        let last = (offset + buf.len() as u64).div_ceil(B);
        let mut tmp = vec![0u8; ((last - first) * B) as usize];
        self.read_blocks(first, &mut tmp)?;
        let skip = (offset - first * B) as usize;
        let n = buf.len();
        buf.copy_from_slice(&tmp[skip..skip + n]);
        Ok(())
    }

    /// Whole blocks from `block`, base plus overlay.
    fn read_blocks(&self, block: u64, buf: &mut [u8]) -> Result<()> {
        let Some(ov) = &self.overlay else {
            return self.read_base(block, buf);
        };
        let n = (buf.len() / BLOCK) as u64;
        let mut done = 0u64;
        while done < n {
            let (st, len) = ov.run(block + done, n - done);
            let out = &mut buf[(done * B) as usize..((done + len) * B) as usize];
            match st {
                DATA => ov.read_data(block + done, out)?,
                ZERO => out.fill(0),
                _ => self.read_base(block + done, out)?,
            }
            done += len;
        }
        Ok(())
    }

    /// Whole blocks of the base volume (the synthesized image).
    pub fn read_base(&self, mut block: u64, buf: &mut [u8]) -> Result<()> {
        let img = &self.layout.image;
        let merged = &self.layout.merged;
        let mut off = 0usize;
        while off < buf.len() {
            let m = *img.lookup(block).ok_or(Error::OutOfRange {
                what: "read",
                offset: block * B,
                len: (buf.len() - off) as u64,
                size: self.size,
            })?;
            let n = (((m.start + m.len - block) * B) as usize).min(buf.len() - off);
            let out = &mut buf[off..off + n];
            let res = match m.source {
                Source::Meta => {
                    for (k, b) in out.chunks_mut(BLOCK).enumerate() {
                        img.read_meta(merged, block + k as u64, b);
                    }
                    Ok(())
                }
                Source::Zero => {
                    out.fill(0);
                    Ok(())
                }
                Source::Fragment {
                    frag,
                    region,
                    block: rb,
                } => self.frag_blocks(frag as usize, region, rb + block - m.start, out, block),
                Source::Small { first } => {
                    let mut r = Ok(());
                    for (k, b) in out.chunks_mut(BLOCK).enumerate() {
                        let s = img.small[first as usize + (block - m.start) as usize + k];
                        r = self.small(s, b, block + k as u64);
                        if r.is_err() {
                            break;
                        }
                    }
                    r
                }
            };
            if let Err(e) = res {
                buf.fill(0); // never hand back a partly verified buffer
                return Err(e);
            }
            off += n;
            block += (n / BLOCK) as u64;
        }
        Ok(())
    }

    /// One small file's block: its bytes, then zeros.
    fn small(&self, s: layout::ext4::SmallBlock, out: &mut [u8], vblock: u64) -> Result<()> {
        let first = s.offset / B;
        let last = (s.offset + u64::from(s.len)).div_ceil(B);
        let mut tmp = [0u8; 2 * BLOCK];
        let span = ((last - first) * B) as usize;
        if span > tmp.len() {
            return Err(Error::OutOfRange {
                what: "small-file read",
                offset: s.offset,
                len: u64::from(s.len),
                size: 2 * B,
            });
        }
        self.frag_blocks(
            s.frag as usize,
            u32::from(s.region),
            first,
            &mut tmp[..span],
            vblock,
        )
        .map_err(|e| match e {
            // A small file occupies one volume block: name that block.
            Error::Fragment { source, .. } => Error::Fragment {
                volume_offset: vblock * B,
                source,
            },
            e => e,
        })?;
        let at = (s.offset - first * B) as usize;
        out.fill(0);
        out[..s.len as usize].copy_from_slice(&tmp[at..at + s.len as usize]);
        Ok(())
    }

    /// Logical blocks `[first, ..)` of a fragment region into `out`,
    /// through the verified cache. `vblock`: the volume block of `out[0]`,
    /// for error messages.
    fn frag_blocks(
        &self,
        frag: usize,
        region: u32,
        first: u64,
        out: &mut [u8],
        vblock: u64,
    ) -> Result<()> {
        let f = &self.layout.merged.fragments[frag];
        let src = self.sources[frag][region as usize];
        let n = out.len() / BLOCK;
        let mut hit = vec![false; n];
        if self.cache.get(src, first, out, &mut hit) == n {
            return Ok(());
        }
        let fail = |e: fragments::Error, rel: u64| {
            let rel = match &e {
                fragments::Error::BlockMismatch { block, .. } if f.chunk_size(region).is_none() => {
                    block.saturating_sub(first)
                }
                _ => rel,
            };
            let err = Error::Fragment {
                volume_offset: (vblock + rel) * B,
                source: e,
            };
            tracing::error!("{err}");
            err
        };
        match f.chunk_size(region) {
            None => {
                // Large reads are scans (a copy, a sequential read): caching
                // them would evict the hot blocks for bytes read once.
                let admit = n <= ADMIT_MAX_BLOCKS || self.cache.has_room();
                for (s, e, was_hit) in runs(&hit) {
                    if was_hit {
                        continue;
                    }
                    // Read and check in pieces that stay in the CPU cache
                    // between the copy from the page cache and the hash.
                    let mut a = s;
                    while a < e {
                        // Aligned in the region: whole hash subtrees.
                        let abs = first as usize + a;
                        let b = e.min((abs / PIECE_BLOCKS + 1) * PIECE_BLOCKS - first as usize);
                        let part = &mut out[a * BLOCK..b * BLOCK];
                        f.read_blocks_into(region, first + a as u64, part)
                            .map_err(|e| fail(e, a as u64))?;
                        if admit {
                            self.cache.insert(src, first + a as u64, part);
                        }
                        a = b;
                    }
                }
            }
            Some(cs) => {
                // Compressed: decode whole frames (verified stored bytes),
                // cache every logical block of each.
                let logical = f.region(region).map_or(0, |r| r.logical_len);
                if first + n as u64 > logical.div_ceil(B) {
                    return Err(fail(
                        fragments::Error::OutOfRange {
                            path: f.path().to_owned(),
                            region,
                            offset: first * B,
                            len: out.len() as u64,
                            size: logical,
                        },
                        0,
                    ));
                }
                let per = cs / B;
                let mut i = 0usize;
                while i < n {
                    if hit[i] {
                        i += 1;
                        continue;
                    }
                    let c = (first + i as u64) / per;
                    let start = c * cs;
                    let want = cs.min(logical - start);
                    let mut plain = vec![0u8; (want.div_ceil(B) * B) as usize];
                    f.read_region(region, start, &mut plain[..want as usize])
                        .map_err(|e| fail(e, i as u64))?;
                    self.cache.insert(src, c * per, &plain);
                    let chunk_end = c * per + plain.len() as u64 / B;
                    while i < n && first + (i as u64) < chunk_end {
                        let k = (first + i as u64 - c * per) as usize;
                        if !hit[i] {
                            out[i * BLOCK..(i + 1) * BLOCK]
                                .copy_from_slice(&plain[k * BLOCK..(k + 1) * BLOCK]);
                        }
                        i += 1;
                    }
                }
            }
        }
        Ok(())
    }

    /// Writes `data` at `offset` into the overlay (partial blocks are
    /// read-modify-written); with `fua`, durable before returning.
    pub fn write_at(&self, offset: u64, data: &[u8], fua: bool) -> Result<()> {
        let ov = self.writable()?;
        self.check("write", offset, data.len() as u64)?;
        let end = offset + data.len() as u64;
        let mut pos = offset;
        while pos < end {
            let block = pos / B;
            let within = pos - block * B;
            if within == 0 && end - pos >= B {
                let whole = (end - pos) / B;
                let at = (pos - offset) as usize;
                ov.write_data(block, &data[at..at + (whole * B) as usize])?;
                pos += whole * B;
            } else {
                let n = (B - within).min(end - pos);
                let at = (pos - offset) as usize;
                self.patch(
                    ov,
                    block,
                    within as usize,
                    Some(&data[at..at + n as usize]),
                    n,
                )?;
                pos += n;
            }
        }
        if fua {
            ov.flush()?;
        }
        Ok(())
    }

    /// Read-modify-write of part of one block: `bytes` (or `n` zeros) at `within`.
    fn patch(
        &self,
        ov: &Overlay,
        block: u64,
        within: usize,
        bytes: Option<&[u8]>,
        n: u64,
    ) -> Result<()> {
        let _g = ov.stripe(block);
        let mut cur = vec![0u8; BLOCK];
        self.read_blocks(block, &mut cur)?;
        match bytes {
            Some(b) => cur[within..within + b.len()].copy_from_slice(b),
            None => cur[within..within + n as usize].fill(0),
        }
        ov.write_data(block, &cur)
    }

    /// Discards `[offset, offset + len)`: whole blocks inside it read as
    /// zeros afterwards and release their storage; partial blocks at the
    /// edges are left alone (a trim is advisory).
    pub fn trim(&self, offset: u64, len: u64, fua: bool) -> Result<()> {
        let ov = self.writable()?;
        self.check("write (trim)", offset, len)?;
        let first = offset.div_ceil(B);
        let end = (offset + len) / B;
        if end > first {
            ov.zero(first, end - first)?;
        }
        if fua {
            ov.flush()?;
        }
        Ok(())
    }

    /// Zeroes `[offset, offset + len)`. `may_trim`: whole blocks become
    /// holes; otherwise zeros are written. `fast_only`: refuse (NotFast)
    /// what would need writing zeros.
    pub fn write_zeroes(
        &self,
        offset: u64,
        len: u64,
        may_trim: bool,
        fast_only: bool,
        fua: bool,
    ) -> Result<()> {
        let ov = self.writable()?;
        self.check("write (zeroes)", offset, len)?;
        if fast_only && !may_trim {
            return Err(Error::NotFast);
        }
        let end = offset + len;
        let first = offset.div_ceil(B);
        let last = end / B;
        if first > last {
            // Inside one block.
            let block = offset / B;
            self.patch(ov, block, (offset - block * B) as usize, None, len)?;
        } else {
            if offset < first * B {
                let block = offset / B;
                let within = offset - block * B;
                self.patch(ov, block, within as usize, None, B - within)?;
            }
            if last > first {
                if may_trim {
                    ov.zero(first, last - first)?;
                } else {
                    let zeros = vec![0u8; 1 << 20];
                    let mut b = first;
                    while b < last {
                        let k = (last - b).min(256);
                        ov.write_data(b, &zeros[..(k * B) as usize])?;
                        b += k;
                    }
                }
            }
            if end > last * B {
                self.patch(ov, last, 0, None, end - last * B)?;
            }
        }
        if fua {
            ov.flush()?;
        }
        Ok(())
    }

    /// Makes every write that returned before this call durable.
    pub fn flush(&self) -> Result<()> {
        match &self.overlay {
            Some(ov) => ov.flush(),
            None => Ok(()),
        }
    }

    /// Allocation of `[offset, offset + len)`: runs from `offset` on,
    /// at most `max_runs` of them (the last may stop short of `len`).
    pub fn block_status(&self, offset: u64, len: u64, max_runs: usize) -> Result<Vec<Extent>> {
        self.check("block status", offset, len)?;
        let mut out: Vec<Extent> = Vec::new();
        let end = offset + len;
        let mut b = offset / B;
        let last = end.div_ceil(B);
        let img = &self.layout.image;
        let push = |out: &mut Vec<Extent>, from: u64, to: u64, zero: bool| {
            let (from, to) = (from.max(offset), to.min(end));
            if to <= from {
                return;
            }
            match out.last_mut() {
                Some(l) if l.zero == zero => l.len += to - from,
                _ => out.push(Extent {
                    len: to - from,
                    zero,
                    hole: zero,
                }),
            }
        };
        while b < last && out.len() <= max_runs {
            let (st, n) = match &self.overlay {
                Some(ov) => ov.run(b, last - b),
                None => (BASE, last - b),
            };
            if st == BASE {
                let mut k = b;
                while k < b + n && out.len() <= max_runs {
                    let Some(m) = img.lookup(k) else { break };
                    let stop = (m.start + m.len).min(b + n);
                    push(&mut out, k * B, stop * B, m.source == Source::Zero);
                    k = stop;
                }
            } else {
                push(&mut out, b * B, (b + n) * B, st == ZERO);
            }
            b += n;
        }
        out.truncate(max_runs.max(1));
        Ok(out)
    }

    /// Writes the volume as the client sees it (base plus overlay) to
    /// `file`, sparse; `progress` gets bytes done.
    pub fn export(&self, file: &std::fs::File, progress: &dyn Fn(u64)) -> Result<()> {
        use std::os::unix::fs::FileExt;
        let werr = |offset: u64| {
            move |source| Error::OverlayIo {
                path: PathBuf::from("(export output)"),
                op: "write",
                offset,
                source,
            }
        };
        file.set_len(0).map_err(werr(0))?;
        file.set_len(self.size).map_err(werr(self.size))?;
        const STEP: u64 = 1 << 20;
        let mut buf = vec![0u8; STEP as usize];
        let mut pos = 0;
        while pos < self.size {
            let n = STEP.min(self.size - pos);
            let st = self.block_status(pos, n, 1)?;
            if st[0].zero {
                let k = st[0].len.min(n);
                progress(k);
                pos += k;
                continue;
            }
            let k = st[0].len.min(n);
            let part = &mut buf[..k as usize];
            self.read_at(pos, part)?;
            file.write_all_at(part, pos).map_err(werr(pos))?;
            progress(k);
            pos += k;
        }
        file.sync_all().map_err(werr(0))?;
        Ok(())
    }

    /// Cache statistics of the shared verified-block cache.
    pub fn cache_stats(&self) -> crate::cache::CacheStats {
        self.cache.stats()
    }
}

//! The device side: hydrate R from the fragment a device has (N), its
//! reverse differentials (N -> B) and R's package (B -> R).
//!
//! ```text
//! 1. package: signature, trust, manifest          (refused: exit 1)
//! 2. base view: N is B, or N + N.frag.rev -> B    (another base: refused)
//! 3. R's metadata: B's metadata + delta           (checked: output hash)
//! 4. per content of R, in parallel:
//!    unchanged from B: copied from N in 8 MiB pieces, N's block hashes
//!      checked as read (or rebuilt through the reverse delta, checked)
//!    already on the device (changed in N, kept in R): N's bytes once their
//!      blake3 is the signed output hash; N's reverse delta carried over
//!    else: base content (N, or N + reverse delta)  check: input hash
//!      forward differential                       check: its hash, output hash
//!      reverse differential R -> B, computed on the spot
//!    written where R's extents say, block hashes computed as written;
//!    every failure recorded, the rest goes on
//! 5. repair every recorded item from --repair-source (the full R), or fail
//!    naming every file
//! 6. regions (compressed exactly as the builder does), hash region, R's
//!    signed header; open with the trusted keys: the signed roots over the
//!    block hashes of the bytes as written vouch for every byte
//!    (`verify_all` reads it all back once more, optional)
//! 7. the remaining reverse differentials, from the verified R
//! 8. fsync, rename R.frag.rev then R.frag, fsync the directory
//! ```

use crate::blob::{Blob, BlobSink, PIECE};
use crate::codec::{decode, Encoder};
use crate::content::{metadata_bytes, path_string, read_range, Contents, Reader};
use crate::error::{CorruptItem, Error, Result};
use crate::package::{Package, PackageTrust, Piece, PieceKind};
use crate::rev::{self, Entry, RevFile, RevPayload, Source, Table};
use crate::wire::{hex, Hash};
use crate::{dir_of, sync_dir, Spool};
use fragments::format::HEADER_SIZE as FRAG_HEADER;
use fragments::hash::{block_cv, Cv};
use fragments::{
    Encoding, Fragment, Header, Metadata, Progress, RegionKind, Trust, VerifyingKey, BLOCK_SIZE,
};
use rayon::prelude::*;
use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

mod base;
mod output;
use base::*;
use output::*;

/// How to apply.
#[derive(Debug, Clone)]
pub struct ApplyOptions {
    /// Reverse differentials of the fragment (default: FRAGMENT.rev).
    pub reverse: Option<PathBuf>,
    /// The full, signed target fragment to repair from.
    pub repair_source: Option<PathBuf>,
    /// zstd level of the reverse differentials computed here.
    pub rev_level: i32,
    /// Contents larger than this are held in scratch files, not memory.
    pub mem_limit: u64,
    /// Largest base window one reverse frame refers to.
    pub window_max: u64,
    /// Target bytes per frame of the reverse differentials (smaller frames
    /// spread one large file's reverse differential over the cores).
    pub rev_frame_size: u64,
    /// Read the hydrated fragment back once more and check every block
    /// (`Fragment::verify_all`) after its signature and roots have been
    /// checked. Redundant: the block hashes are computed from the bytes as
    /// written, read back.
    pub verify_all: bool,
}

impl Default for ApplyOptions {
    fn default() -> Self {
        ApplyOptions {
            reverse: None,
            repair_source: None,
            rev_level: 1,
            mem_limit: 64 << 20,
            window_max: 64 << 20,
            rev_frame_size: 1 << 20,
            verify_all: false,
        }
    }
}

/// What an apply did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ApplyReport {
    pub output: PathBuf,
    /// Where the reverse differentials went (none when the base was unavailable).
    pub reverse_output: Option<PathBuf>,
    pub base_id: String,
    pub target_id: String,
    /// The fragment applied to was the base itself.
    pub from_base: bool,
    pub contents: u64,
    pub content_bytes: u64,
    pub fragment_bytes: u64,
    pub unchanged: u64,
    pub copies: u64,
    pub deltas: u64,
    pub fulls: u64,
    /// Differentials not needed: the fragment already held the target's
    /// bytes (counted among `deltas` and `fulls` too).
    pub already_current: u64,
    /// Items that failed and were repaired from the repair source.
    pub repaired: Vec<CorruptItem>,
    pub reverse_same: u64,
    pub reverse_deltas: u64,
    pub reverse_full: u64,
    pub reverse_missing: u64,
    pub reverse_bytes: u64,
    pub warnings: Vec<String>,
}

/// Where the logical bytes of each region of R are written.
/// A reverse differential made during hydration: (base inode, entry, bytes).
type RevDelta = (u32, Entry, Vec<u8>);

struct Done {
    ri: u32,
    /// blake3 of the content, when it was computed or is vouched for.
    hash: Option<Hash>,
    /// The base content it is identical to (unchanged or copied).
    same_as: Option<u32>,
    /// A reverse differential computed inline.
    rev: Option<RevDelta>,
    kind: Option<PieceKind>,
    /// The device's fragment already held these bytes.
    current: bool,
}

/// Work of the hydration pass.
enum Job {
    /// A whole content: a piece of the package, or an unchanged content
    /// whose base bytes must be reconstructed.
    Whole { ri: u32 },
    /// Part of an unchanged content copied from a content of the device's
    /// fragment (verified as read): `[off, off + len)` of it.
    Copy {
        ri: u32,
        src: u32,
        bi: u32,
        off: u64,
        len: u64,
    },
}

impl Job {
    fn len(&self, rm: &Metadata) -> u64 {
        match self {
            Job::Whole { ri } => rm.inode(*ri).size(),
            Job::Copy { len, .. } => *len,
        }
    }
    fn ri(&self) -> u32 {
        match self {
            Job::Whole { ri } | Job::Copy { ri, .. } => *ri,
        }
    }
}

/// Copies `[off, off + len)` of content `src` of `frag` (verified against
/// its block hashes as read) to where R's extents of `ri` put those bytes.
#[allow(clippy::too_many_arguments)]
fn copy_range(
    frag: &Fragment,
    src: u32,
    rm: &Metadata,
    ri: u32,
    off: u64,
    len: u64,
    buf: &mut [u8],
    out: &Output,
) -> std::result::Result<(), String> {
    let b = &mut buf[..len as usize];
    if off + len > frag.metadata().inode(src).size() {
        return Err(format!("{len} bytes at {off} are past its end"));
    }
    read_range(frag, src, off, b).map_err(|e| e.to_string())?;
    let end = off + len;
    for e in rm.extents_of(ri) {
        let (a, z) = (e.file_offset.max(off), (e.file_offset + e.len).min(end));
        if a >= z {
            continue;
        }
        out.write_at(
            e.region,
            e.region_offset + (a - e.file_offset),
            &b[(a - off) as usize..(z - off) as usize],
        )
        .map_err(|e| format!("writing the output: {e}"))?;
    }
    Ok(())
}

/// Applies `package` to `fragment`, writing `out` and `out.rev`.
pub fn apply(
    fragment: &Path,
    package: &Path,
    trusted: &[VerifyingKey],
    out: &Path,
    opts: &ApplyOptions,
    progress: &dyn Progress,
) -> Result<ApplyReport> {
    let t0 = std::time::Instant::now();
    let pkg = Package::open(package, PackageTrust::Keys(trusted))?;
    let m = &pkg.manifest;
    let dir = dir_of(out).to_owned();
    let mut report = ApplyReport {
        output: out.to_owned(),
        reverse_output: Some(rev_path_of(out)),
        base_id: hex(&pkg.header.base_id),
        target_id: hex(&pkg.header.target_id),
        ..Default::default()
    };
    let r_header = Header::decode(
        Path::new("package target header"),
        &m.target_header,
        u64::from_le_bytes(m.target_header[32..40].try_into().expect("8")),
    )?;

    // The base view.
    let n = match Fragment::open(fragment, Trust::Keys(trusted)) {
        Ok(n) => Some(n),
        Err(e) if opts.repair_source.is_some() => {
            report
                .warnings
                .push(format!("{e}: every item will come from the repair source"));
            None
        }
        Err(e) => return Err(e.into()),
    };
    let rev_in = opts
        .reverse
        .clone()
        .unwrap_or_else(|| rev_path_of(fragment));
    let base = match &n {
        None => Base::Unavailable(format!("{} cannot be opened", fragment.display())),
        Some(n) if n.id() == pkg.header.base_id => {
            report.from_base = true;
            Base::Direct { reader: Reader::new(n, true) }
        }
        Some(n) => match RevFile::open(&rev_in) {
            Ok(rev) if rev.header.base_id != pkg.header.base_id => {
                return Err(Error::WrongBase {
                    what: format!(
                        "{} derives from base {}; {} is for base {} ({} {})",
                        fragment.display(),
                        hex(&rev.header.base_id),
                        package.display(),
                        hex(&pkg.header.base_id),
                        m.base_name,
                        m.base_version
                    ),
                })
            }
            Ok(rev) if rev.header.fragment_id != n.id() => Base::Unavailable(format!(
                "{} belongs to another fragment than {} (stale reverse differentials)",
                rev_in.display(),
                fragment.display()
            )),
            Ok(rev) => Base::Rev {
                reader: Reader::new(n, true),
                rev: Box::new(rev),
                contents: Contents::of(n.metadata()),
            },
            Err(e) if rev_in.exists() => Base::Unavailable(format!("reverse differentials unusable: {e}")),
            Err(_) => Base::Unavailable(format!(
                "{} is not the package's base ({} {}, id {}) and its reverse differentials {} are missing",
                fragment.display(),
                m.base_name,
                m.base_version,
                hex(&pkg.header.base_id),
                rev_in.display()
            )),
        },
    };
    let mut view = BaseView {
        base,
        meta: None,
        meta_bytes: None,
        mem_limit: opts.mem_limit,
        rev_frame_size: opts.rev_frame_size,
        dir: dir.clone(),
    };
    // The base's metadata.
    let base_meta: std::result::Result<(Vec<u8>, [u8; FRAG_HEADER]), String> = match &view.base {
        Base::Unavailable(why) => Err(why.clone()),
        Base::Direct { reader } => (|| {
            let mut hb = [0u8; FRAG_HEADER];
            File::open(reader.frag.path())
                .and_then(|f| f.read_exact_at(&mut hb, 0))
                .map_err(|e| e.to_string())?;
            metadata_bytes(reader.frag)
                .map(|b| (b, hb))
                .map_err(|e| e.to_string())
        })(),
        Base::Rev { reader, rev, .. } => {
            let e = &rev.table.metadata;
            let n_meta = metadata_bytes(reader.frag).map_err(|e| e.to_string());
            // The reverse file is local, unsigned state: its metadata size
            // must be the one the stored base header signs for.
            let want = Header::decode(
                &rev.path,
                &rev.base_header,
                u64::from_le_bytes(rev.base_header[32..40].try_into().expect("8")),
            )
            .map(|h| h.regions[h.region_of(RegionKind::Metadata)].logical_len)
            .map_err(|e| e.to_string());
            let got = match (&e.source, n_meta, want) {
                (_, _, Err(x)) | (_, Err(x), _) => Err(x),
                (_, _, Ok(w)) if w != e.size => Err(format!(
                    "metadata entry of {} bytes, the base header says {w}",
                    e.size
                )),
                (Source::Same { .. }, Ok(nb), _) => Ok(nb),
                (Source::Delta { payload, .. }, Ok(nb), _)
                | (Source::Full { payload }, Ok(nb), _) => {
                    let base = matches!(e.source, Source::Delta { .. }).then(|| Blob::Mem(nb));
                    rev.payload(payload).and_then(|data| {
                        let mut sink =
                            BlobSink::new(e.size, u64::MAX, &dir).map_err(|x| x.to_string())?;
                        decode(
                            base.as_ref(),
                            &data,
                            &payload.frames,
                            e.size,
                            rev.table.frame_size,
                            &mut sink,
                        )?;
                        match sink.finish().map_err(|x| x.to_string())? {
                            Blob::Mem(v) => Ok(v),
                            _ => unreachable!("unbounded memory sink"),
                        }
                    })
                }
                (Source::Missing, _, _) => Err("its reverse differential is missing".into()),
            };
            got.and_then(|b| {
                if blake3::hash(&b).as_bytes() == &e.hash {
                    Ok((b, *rev.base_header))
                } else {
                    Err("reconstructed base metadata does not match its hash".into())
                }
            })
        }
    };
    match base_meta {
        Ok((bytes, bh)) => {
            let decoded = Header::decode(
                Path::new("base header"),
                &bh,
                u64::from_le_bytes(bh[32..40].try_into().expect("8")),
            )
            .map_err(|e| e.to_string())
            .and_then(|h| {
                Metadata::decode(&bytes, &h.regions, h.inode_count, h.dentry_count)
                    .map_err(|f| f.what)
            });
            match decoded {
                Ok(meta) => {
                    let c = Contents::of(&meta);
                    view.meta = Some((meta, c));
                    view.meta_bytes = Some(bytes);
                }
                Err(e) => view.base = Base::Unavailable(format!("base metadata unusable: {e}")),
            }
        }
        Err(e) => {
            if !matches!(view.base, Base::Unavailable(_)) {
                view.base = Base::Unavailable(format!("base metadata unavailable: {e}"));
            }
        }
    }

    let repair = match &opts.repair_source {
        Some(p) => {
            let src = Fragment::open(p, Trust::Keys(trusted))?;
            if src.id() != pkg.header.target_id {
                return Err(Error::WrongRepairSource {
                    path: p.clone(),
                    found: hex(&src.id()),
                    expected: hex(&pkg.header.target_id),
                });
            }
            Some(src)
        }
        None => None,
    };

    // R's metadata.
    let mut items: Vec<CorruptItem> = Vec::new();
    let r_meta_bytes: std::result::Result<Vec<u8>, String> = (|| {
        let p = &m.metadata;
        let payload = p.payload.as_ref().expect("decode checked");
        let data = pkg.payload(payload)?;
        let base = match p.kind {
            PieceKind::Delta => {
                let b = view.meta_bytes.clone().ok_or_else(|| match &view.base {
                    Base::Unavailable(w) => format!("base metadata unavailable: {w}"),
                    _ => "base metadata unavailable".into(),
                })?;
                if Some(blake3::hash(&b).as_bytes()) != p.base.as_ref().map(|b| &b.hash) {
                    return Err("input check failed: the base metadata is not the one the package was made against".into());
                }
                Some(Blob::Mem(b))
            }
            _ => None,
        };
        let mut sink = BlobSink::new(p.size, u64::MAX, &dir).map_err(|e| e.to_string())?;
        decode(
            base.as_ref(),
            &data,
            &payload.frames,
            p.size,
            m.frame_size,
            &mut sink,
        )?;
        let Blob::Mem(v) = sink.finish().map_err(|e| e.to_string())? else {
            unreachable!("unbounded memory sink")
        };
        if blake3::hash(&v).as_bytes() != &p.out_hash {
            return Err("output check failed: decoded metadata does not match the manifest".into());
        }
        Ok(v)
    })();
    let r_meta_bytes = match r_meta_bytes {
        Ok(v) => v,
        Err(what) => {
            let item = CorruptItem {
                path: "metadata region".into(),
                what,
            };
            match &repair {
                Some(src) => {
                    report.repaired.push(item);
                    metadata_bytes(src)?
                }
                None => {
                    // Without R's metadata nothing can be laid out: list
                    // what else is corrupt in the package, then stop.
                    let base_gone = match &view.base {
                        Base::Unavailable(w) => Some(w.clone()),
                        _ => None,
                    };
                    items.push(item);
                    for p in &m.pieces {
                        let what = match (&p.payload, &base_gone) {
                            (Some(pl), _) if pkg.payload(pl).is_err() => pkg.payload(pl).err(),
                            (_, Some(w)) if p.base.is_some() => Some(format!(
                                "its {} needs the base, which is unavailable: {w}",
                                kind_name(p.kind)
                            )),
                            _ => None,
                        };
                        if let Some(what) = what {
                            items.push(CorruptItem {
                                path: String::from_utf8_lossy(&p.path).into_owned(),
                                what,
                            });
                        }
                    }
                    if base_gone.is_some() {
                        items.push(CorruptItem {
                            path: "(files unchanged from the base)".into(),
                            what: "cannot be named: the target's metadata is a delta against the base's, which is unavailable; a --repair-source supplies it".into(),
                        });
                    }
                    return Err(Error::Items {
                        items,
                        repair_tried: false,
                    });
                }
            }
        }
    };
    let rm = Metadata::decode(
        &r_meta_bytes,
        &r_header.regions,
        r_header.inode_count,
        r_header.dentry_count,
    )
    .map_err(|f| Error::Mismatch {
        what: format!("target metadata does not decode: {}", f.what),
    })?;
    let rc = Contents::of(&rm);

    // The output: R's size, zeros, regions filled in.
    let tmp = tempfile::Builder::new()
        .prefix(".mosaic-update")
        .tempfile_in(&dir)
        .map_err(Error::io(&dir, "create a temporary file"))?;
    tmp.as_file()
        .set_len(r_header.file_size)
        .map_err(Error::io(tmp.path(), "size"))?;
    let mut targets = Vec::new();
    for r in &r_header.regions {
        targets.push(match (r.kind, r.encoding) {
            (RegionKind::Data | RegionKind::Small, Encoding::Raw) => Target::Direct(r.file_offset),
            (RegionKind::Data | RegionKind::Small, Encoding::Zstd) => {
                let f = tempfile::tempfile_in(&dir)
                    .map_err(Error::io(&dir, "create a scratch file"))?;
                f.set_len(r.logical_len)
                    .map_err(Error::io(&dir, "size a scratch file"))?;
                Target::Scratch(f)
            }
            _ => Target::None,
        });
    }
    let output = Output {
        file: tmp
            .as_file()
            .try_clone()
            .map_err(Error::io(tmp.path(), "duplicate a handle"))?,
        path: tmp.path().to_owned(),
        cvs: r_header
            .regions
            .iter()
            .map(|r| {
                (r.kind == RegionKind::Data && r.encoding == Encoding::Raw)
                    .then(|| Mutex::new(Vec::new()))
            })
            .collect(),
        targets,
    };

    // Hydrate every content.
    tracing::info!(
        elapsed_ms = t0.elapsed().as_millis() as u64,
        "phase: hydrating contents"
    );
    let pieces: HashMap<u32, &Piece> = m.pieces.iter().map(|p| (p.inode, p)).collect();
    let order = rc.list.clone();
    let total: u64 = order.iter().map(|&i| rm.inode(i).size()).sum();
    report.contents = order.len() as u64;
    report.content_bytes = total;
    progress.phase("hydrating", total);
    let rev_enc = Encoder {
        level: opts.rev_level,
        ldm: false,
        frame_size: opts.rev_frame_size,
        window_max: opts.window_max,
    };
    // Unchanged contents whose base bytes are a content of the device's
    // fragment are copied in pieces (verified as read, no hashing, large
    // files spread over the cores); everything else is a whole job.
    let mut jobs: Vec<Job> = Vec::new();
    let mut known: HashMap<u32, (u32, Option<Hash>)> = HashMap::new();
    for &ri in &order {
        let size = rm.inode(ri).size();
        let copy_src = match (&view.base, &view.meta, pieces.contains_key(&ri)) {
            (Base::Unavailable(_), _, _) | (_, None, _) | (_, _, true) => None,
            (base, Some((bm, bc)), false) => bc.at_path(bm, &rm.path_of(ri)).and_then(|bi| {
                let (reader, src, hash) = match base {
                    Base::Direct { reader } => (reader, bi, None),
                    Base::Rev { reader, rev, .. } => match rev.table.entry(bi) {
                        Some(Entry {
                            source: Source::Same { inode },
                            hash,
                            ..
                        }) => (reader, *inode, Some(*hash).filter(|h| h != &[0; 32])),
                        _ => return None,
                    },
                    Base::Unavailable(_) => return None,
                };
                let nm = reader.frag.metadata();
                let ok = (src as usize) < nm.inodes.len()
                    && !nm.extents_of(src).is_empty()
                    && nm.inode(src).size() == size;
                ok.then_some((bi, src, hash))
            }),
        };
        match copy_src {
            Some((bi, src, hash)) => {
                known.insert(ri, (bi, hash));
                let mut off = 0;
                while off < size {
                    let len = PIECE.min(size - off);
                    jobs.push(Job::Copy {
                        ri,
                        src,
                        bi,
                        off,
                        len,
                    });
                    off += len;
                }
            }
            None => jobs.push(Job::Whole { ri }),
        }
    }
    jobs.sort_by_key(|j| std::cmp::Reverse(j.len(&rm)));
    let n_frag: Option<&Fragment> = match &view.base {
        Base::Direct { reader } | Base::Rev { reader, .. } => Some(reader.frag),
        Base::Unavailable(_) => None,
    };
    let results: Vec<(u32, std::result::Result<Option<Done>, CorruptItem>)> = jobs
        .par_iter()
        .map(|job| {
            thread_local! {
                // One copy buffer per worker thread for the whole apply
                // (rayon's map_init would make one per split).
                static BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
            }
            BUF.with_borrow_mut(|buf| {
                if buf.len() < PIECE as usize {
                    buf.resize(PIECE as usize, 0);
                }
                let t = std::time::Instant::now();
                let ri = job.ri();
                let r = match job {
                    Job::Whole { ri } => hydrate_one(
                        *ri,
                        &rm,
                        pieces.get(ri).copied(),
                        &view,
                        &pkg,
                        &rev_enc,
                        &output,
                        &dir,
                    )
                    .map(Some),
                    Job::Copy {
                        ri,
                        src,
                        bi,
                        off,
                        len,
                    } => copy_range(
                        n_frag.expect("copy jobs only with a fragment"),
                        *src,
                        &rm,
                        *ri,
                        *off,
                        *len,
                        buf,
                        &output,
                    )
                    .map(|()| None)
                    .map_err(|w| CorruptItem {
                        path: path_string(&rm, *ri),
                        what: format!(
                            "unchanged from the base, but base file {} is corrupt: {w}",
                            view.bpath(*bi)
                        ),
                    }),
                };
                progress.advance(job.len(&rm));
                tracing::debug!(
                    path = %path_string(&rm, ri),
                    len = job.len(&rm),
                    us = t.elapsed().as_micros() as u64,
                    "hydrated"
                );
                (ri, r)
            })
        })
        .collect();
    let mut done: Vec<Done> = Vec::new();
    let mut failed: Vec<(u32, CorruptItem)> = Vec::new();
    let mut copied: HashMap<u32, bool> = HashMap::new();
    for (ri, r) in results {
        match r {
            Ok(Some(d)) => {
                report.already_current += d.current as u64;
                match d.kind {
                    None => report.unchanged += 1,
                    Some(PieceKind::Copy) => report.copies += 1,
                    Some(PieceKind::Delta) => report.deltas += 1,
                    Some(PieceKind::Full) => report.fulls += 1,
                }
                done.push(d)
            }
            Ok(None) => {
                copied.entry(ri).or_insert(true);
            }
            Err(item) => {
                if copied.insert(ri, false) != Some(false) {
                    failed.push((ri, item));
                }
            }
        }
    }
    let mut copied: Vec<(u32, bool)> = copied.into_iter().collect();
    copied.sort_unstable();
    for (ri, ok) in copied {
        if ok && !failed.iter().any(|f| f.0 == ri) {
            let (bi, hash) = known[&ri];
            report.unchanged += 1;
            done.push(Done {
                ri,
                hash,
                same_as: Some(bi),
                rev: None,
                kind: None,
                current: false,
            });
        }
    }
    failed.sort_by_key(|f| f.0);
    items.extend(failed.iter().map(|f| f.1.clone()));
    tracing::info!(
        elapsed_ms = t0.elapsed().as_millis() as u64,
        failed = failed.len(),
        "hydrated contents"
    );

    // Start writing the contents back now; the fsync at the end waits less.
    start_writeback(&output.file, 0, 0);

    // Repair.
    if !failed.is_empty() {
        let Some(src) = &repair else {
            items.sort_by(|a, b| a.path.cmp(&b.path));
            return Err(Error::Items {
                items,
                repair_tried: false,
            });
        };
        let sr = Reader::new(src, true);
        let need: u64 = failed.iter().map(|f| rm.inode(f.0).size()).sum();
        progress.phase("repairing", need);
        let mut still = Vec::new();
        for (ri, item) in failed {
            let got = sr
                .read(ri, opts.mem_limit, &dir)
                .map_err(|e| e.to_string())
                .and_then(|b| {
                    output
                        .write_content(&rm, ri, &b)
                        .map_err(|e| e.to_string())?;
                    b.hash().map_err(|e| e.to_string())
                });
            match got {
                Ok(hash) => {
                    tracing::warn!(path = %item.path, what = %item.what, "repaired from the repair source");
                    report.repaired.push(item);
                    done.push(Done {
                        ri,
                        hash: Some(hash),
                        same_as: None,
                        rev: None,
                        kind: None,
                        current: false,
                    });
                }
                Err(e) => still.push(CorruptItem {
                    path: item.path.clone(),
                    what: format!("{}; repair source: {e}", item.what),
                }),
            }
            progress.advance(rm.inode(ri).size());
        }
        if !still.is_empty() {
            return Err(Error::Items {
                items: still,
                repair_tried: true,
            });
        }
    }

    // Regions, hashes, header; then the signature decides.
    finish_regions(
        &output,
        &r_header,
        &m.target_header,
        &r_meta_bytes,
        progress,
    )?;
    tracing::info!(
        elapsed_ms = t0.elapsed().as_millis() as u64,
        "regions, hashes and header written"
    );
    tmp.as_file()
        .sync_all()
        .map_err(Error::io(tmp.path(), "sync"))?;
    tracing::info!(elapsed_ms = t0.elapsed().as_millis() as u64, "synced");
    progress.phase("verifying", r_header.file_size);
    let hydrated =
        Fragment::open(tmp.path(), Trust::Keys(trusted)).map_err(|e| Error::Mismatch {
            what: format!("the hydrated fragment does not open against its signature: {e}"),
        })?;
    // The block hashes were computed from the bytes read back from the
    // file, and open() checked them against the signed roots: every byte is
    // vouched for. A second full pass is optional.
    let faults = if opts.verify_all {
        hydrated.verify_all(&|n| progress.advance(n))?
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
    if hydrated.id() != pkg.header.target_id {
        return Err(Error::Mismatch {
            what: "the hydrated header is not the package's target".into(),
        });
    }
    tracing::info!(
        elapsed_ms = t0.elapsed().as_millis() as u64,
        "hydrated fragment verified"
    );

    // Reverse differentials R -> B.
    tracing::info!(
        elapsed_ms = t0.elapsed().as_millis() as u64,
        "phase: reverse differentials"
    );
    progress.phase("reverse differentials", 0);
    let rev_out = rev_path_of(out);
    let spool = Spool::new(&dir)?;
    let table = reverse_table(
        &view,
        &hydrated,
        &rm,
        &rc,
        &r_meta_bytes,
        done,
        &rev_enc,
        opts,
        &spool,
        &dir,
        &mut report,
    )?;
    let rev_tmp = if let Some(bh) = base_header_of(&view) {
        let data: Vec<(u64, u64)> = table.1.clone();
        let data_len = data.iter().map(|d| d.1).sum();
        let head = rev::encode_file(&bh, hydrated.id(), &table.0, data_len);
        report.reverse_bytes = head.len() as u64 + data_len;
        Some(crate::spooled_temp(&rev_out, &[&head], &spool, &data)?)
    } else {
        // No base header known (the base was unavailable and everything
        // came from the repair source): no reverse file can be made; an
        // old one beside the output must not stay.
        report.warnings.push(format!(
            "no reverse differentials written ({} removed if present): the base was unavailable; a later update of this fragment will need --repair-source",
            rev_out.display()
        ));
        report.reverse_output = None;
        let _ = std::fs::remove_file(&rev_out);
        None
    };
    tracing::info!(
        elapsed_ms = t0.elapsed().as_millis() as u64,
        "reverse differentials written"
    );
    drop(hydrated);
    // The reverse file first: a crash between the renames leaves the old
    // fragment beside a reverse file that names another fragment, which
    // the next apply sees (and a re-run fixes).
    if let Some(t) = rev_tmp {
        t.persist(&rev_out).map_err(|e| Error::Io {
            path: rev_out.clone(),
            op: "rename into place",
            source: e.error,
        })?;
    }
    tmp.persist(out).map_err(|e| Error::Io {
        path: out.to_owned(),
        op: "rename into place",
        source: e.error,
    })?;
    sync_dir(&dir);
    report.fragment_bytes = r_header.file_size;
    tracing::info!(elapsed_ms = t0.elapsed().as_millis() as u64, "apply done");
    Ok(report)
}

/// Asks the kernel to start writing a file's dirty pages back without
/// waiting (the durable `fsync` comes later).
fn start_writeback(f: &File, offset: u64, len: u64) {
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

/// `PATH.rev`.
pub fn rev_path_of(p: &Path) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(".rev");
    PathBuf::from(s)
}

fn base_header_of(view: &BaseView) -> Option<[u8; FRAG_HEADER]> {
    view.meta.as_ref()?;
    match &view.base {
        Base::Direct { reader } => {
            let mut hb = [0u8; FRAG_HEADER];
            File::open(reader.frag.path())
                .and_then(|f| f.read_exact_at(&mut hb, 0))
                .ok()?;
            Some(hb)
        }
        Base::Rev { rev, .. } => Some(*rev.base_header),
        Base::Unavailable(_) => None,
    }
}

#[allow(clippy::too_many_arguments)]
fn hydrate_one(
    ri: u32,
    rm: &Metadata,
    piece: Option<&Piece>,
    view: &BaseView,
    pkg: &Package,
    rev_enc: &Encoder,
    output: &Output,
    dir: &Path,
) -> std::result::Result<Done, CorruptItem> {
    let fail = |what: String| CorruptItem {
        path: path_string(rm, ri),
        what,
    };
    let size = rm.inode(ri).size();
    let expect_hash = |b: &Blob, want: &Hash, what: &str| -> std::result::Result<(), CorruptItem> {
        let h = b.hash().map_err(|e| fail(e.to_string()))?;
        if &h != want {
            return Err(fail(format!(
                "{what} check failed: blake3 {} where the manifest says {}",
                hex(&h),
                hex(want)
            )));
        }
        Ok(())
    };
    let bpath = |bi: u32| view.bpath(bi);
    let current = match piece {
        Some(p) if p.kind != PieceKind::Copy => already_current(ri, rm, p, view),
        _ => None,
    };
    let is_current = current.is_some();
    let (blob, hash, rev, same_as) = match piece {
        None => {
            // Unchanged: the base content at the same path.
            let (_, bc) = view.meta.as_ref().ok_or_else(|| {
                fail(match &view.base {
                    Base::Unavailable(w) => {
                        format!("unchanged from the base, which is unavailable: {w}")
                    }
                    _ => "unchanged from the base, whose metadata is unavailable".into(),
                })
            })?;
            let bm = &view.meta.as_ref().expect("checked").0;
            let bi = bc.at_path(bm, &rm.path_of(ri)).ok_or_else(|| {
                fail("the package has no piece for it and the base has no file at this path".into())
            })?;
            let (b, known) = view
                .get(bi)
                .map_err(|w| fail(format!("unchanged from the base, but {w}")))?;
            // Verified as read (N's block hashes, or the reverse
            // differential's hash); the signature checks the whole at the end.
            (b, known, None, Some(bi))
        }
        Some(p) if current.is_some() => {
            // The device already has the target's bytes (changed from the
            // base in N, unchanged from N to R): no differential to apply,
            // and N's reverse differential stays valid for R.
            let (nb, rev) = current.expect("checked");
            (nb, Some(p.out_hash), rev, None)
        }
        Some(p) => {
            let data = match &p.payload {
                Some(pl) => Some(pkg.payload(pl).map_err(fail)?),
                None => None,
            };
            let base = match &p.base {
                Some(br) => {
                    let (b, _) = view.get(br.inode).map_err(|w| {
                        fail(format!(
                            "base content for the {} from {} unavailable: {w}",
                            kind_name(p.kind),
                            bpath(br.inode)
                        ))
                    })?;
                    expect_hash(
                        &b,
                        &br.hash,
                        &format!("input (base file {})", bpath(br.inode)),
                    )?;
                    Some((br.inode, b))
                }
                None => None,
            };
            let (out, base) = match (&data, &p.payload) {
                (Some(data), Some(pl)) => {
                    let mut sink = BlobSink::new(p.size, view.mem_limit, dir)
                        .map_err(|e| fail(e.to_string()))?;
                    decode(
                        base.as_ref().map(|b| &b.1),
                        data,
                        &pl.frames,
                        p.size,
                        pkg.manifest.frame_size,
                        &mut sink,
                    )
                    .map_err(|w| fail(format!("forward differential does not decode: {w}")))?;
                    let out = sink.finish().map_err(|e| fail(e.to_string()))?;
                    expect_hash(&out, &p.out_hash, "output")?;
                    (out, base)
                }
                _ => {
                    let (_, b) = base.ok_or_else(|| fail("copy without a base".into()))?;
                    (b, None)
                }
            };
            // Reverse differential R -> B, while both are at hand.
            let rev = match (p.kind, &base) {
                (PieceKind::Delta, Some((bi, b))) => {
                    let mut bytes = Vec::new();
                    let frames = rev_enc
                        .encode(Some(&out), b, &mut bytes)
                        .map_err(|e| fail(format!("reverse differential: {e}")))?;
                    let entry = Entry {
                        inode: *bi,
                        size: b.len(),
                        hash: p.base.as_ref().expect("delta has a base").hash,
                        source: Source::Delta {
                            inode: ri,
                            payload: RevPayload {
                                offset: 0,
                                len: bytes.len() as u64,
                                hash: *blake3::hash(&bytes).as_bytes(),
                                frames,
                            },
                        },
                    };
                    Some((*bi, entry, bytes))
                }
                _ => None,
            };
            let same_as = match p.kind {
                PieceKind::Copy => p.base.as_ref().map(|b| b.inode),
                _ => None,
            };
            (out, Some(p.out_hash), rev, same_as)
        }
    };
    if blob.len() != size {
        return Err(fail(format!(
            "content is {} bytes, the metadata says {size}",
            blob.len()
        )));
    }
    output
        .write_content(rm, ri, &blob)
        .map_err(|e| fail(format!("writing the output: {e}")))?;
    Ok(Done {
        ri,
        hash,
        same_as,
        rev,
        kind: piece.map(|p| p.kind),
        current: is_current,
    })
}

/// On a device at N (not the base): when N's file at the target's path
/// already holds the target content (checked: blake3 against the signed
/// output hash), that content, and the reverse differential from it to the
/// base carried over from N's reverse file when it starts from that file.
fn already_current(
    ri: u32,
    rm: &Metadata,
    p: &Piece,
    view: &BaseView,
) -> Option<(Blob, Option<RevDelta>)> {
    let Base::Rev {
        reader,
        rev,
        contents,
    } = &view.base
    else {
        return None;
    };
    let nm = reader.frag.metadata();
    let nc = contents.at_path(nm, &rm.path_of(ri))?;
    if nm.inode(nc).size() != p.size {
        return None;
    }
    let nb = reader.read(nc, view.mem_limit, &view.dir).ok()?;
    if nb.hash().ok()? != p.out_hash {
        return None;
    }
    let carried = p.base.as_ref().and_then(|br| {
        let e = rev.table.entry(br.inode)?;
        match &e.source {
            Source::Delta { inode, payload }
                if *inode == nc && rev.table.frame_size == view.rev_frame_size =>
            {
                let bytes = rev.payload(payload).ok()?;
                Some((
                    br.inode,
                    Entry {
                        inode: br.inode,
                        size: e.size,
                        hash: e.hash,
                        source: Source::Delta {
                            inode: ri,
                            payload: RevPayload {
                                offset: 0,
                                ..payload.clone()
                            },
                        },
                    },
                    bytes,
                ))
            }
            _ => None,
        }
    });
    Some((nb, carried))
}

fn kind_name(k: PieceKind) -> &'static str {
    match k {
        PieceKind::Copy => "copy",
        PieceKind::Delta => "forward differential",
        PieceKind::Full => "content",
    }
}

/// Builds R's reverse table: inline deltas, `same` entries by hash, and for
/// the other base contents a differential from R's file at the same path
/// (or the compressed content), read from the verified hydrated fragment.
#[allow(clippy::too_many_arguments)]
fn reverse_table(
    view: &BaseView,
    hydrated: &Fragment,
    rm: &Metadata,
    rc: &Contents,
    r_meta: &[u8],
    done: Vec<Done>,
    enc: &Encoder,
    opts: &ApplyOptions,
    spool: &Spool,
    dir: &Path,
    report: &mut ApplyReport,
) -> Result<(Table, Vec<(u64, u64)>)> {
    let mut r_by_hash: HashMap<Hash, u32> = HashMap::new();
    // Base contents the target kept (unchanged or copied): the smallest
    // target content, with the base hash when one is known.
    let mut same: HashMap<u32, (u32, Option<Hash>)> = HashMap::new();
    for d in &done {
        if let Some(h) = d.hash {
            r_by_hash
                .entry(h)
                .and_modify(|v| *v = (*v).min(d.ri))
                .or_insert(d.ri);
        }
        if let Some(bi) = d.same_as {
            let e = same.entry(bi).or_insert((d.ri, d.hash));
            if d.ri < e.0 {
                *e = (d.ri, d.hash.or(e.1));
            }
        }
    }
    let Some((bm, bc)) = &view.meta else {
        return Ok((
            Table {
                frame_size: enc.frame_size,
                metadata: Entry {
                    inode: 0,
                    size: 0,
                    hash: [0; 32],
                    source: Source::Missing,
                },
                entries: Vec::new(),
            },
            Vec::new(),
        ));
    };
    // Inline deltas, the smallest target inode per base content.
    let mut inline: HashMap<u32, (Entry, Vec<u8>)> = HashMap::new();
    let mut inline_by: HashMap<u32, u32> = HashMap::new();
    for d in done {
        if let Some((bi, e, bytes)) = d.rev {
            let better = inline_by.get(&bi).is_none_or(|&r| d.ri < r);
            if better {
                inline_by.insert(bi, d.ri);
                inline.insert(bi, (e, bytes));
            }
        }
    }
    let rr = Reader::new(hydrated, true);
    let known_hash = |bi: u32| -> Option<Hash> {
        match &view.base {
            Base::Rev { rev, .. } => rev
                .table
                .entry(bi)
                .map(|e| e.hash)
                .filter(|h| h != &[0; 32]),
            _ => None,
        }
    };
    let work = |bi: u32| -> Result<(Entry, Option<Vec<u8>>)> {
        let size = bm.inode(bi).size();
        if let Some(&(ri, h)) = same.get(&bi) {
            return Ok((
                Entry {
                    inode: bi,
                    size,
                    hash: h.or_else(|| known_hash(bi)).unwrap_or([0; 32]),
                    source: Source::Same { inode: ri },
                },
                None,
            ));
        }
        if let Some(h) = known_hash(bi) {
            if let Some(&ri) = r_by_hash.get(&h) {
                return Ok((
                    Entry {
                        inode: bi,
                        size,
                        hash: h,
                        source: Source::Same { inode: ri },
                    },
                    None,
                ));
            }
        }
        if let Some((e, bytes)) = inline.get(&bi) {
            if let Some(&ri) = r_by_hash.get(&e.hash) {
                return Ok((
                    Entry {
                        inode: bi,
                        size,
                        hash: e.hash,
                        source: Source::Same { inode: ri },
                    },
                    None,
                ));
            }
            return Ok((e.clone(), Some(bytes.clone())));
        }
        let (b, known) = match view.get(bi) {
            Ok(x) => x,
            Err(why) => {
                tracing::warn!(base_file = %view.bpath(bi), %why, "reverse differential cannot be computed");
                let hash = known_hash(bi).unwrap_or([0; 32]);
                return Ok((
                    Entry {
                        inode: bi,
                        size,
                        hash,
                        source: Source::Missing,
                    },
                    None,
                ));
            }
        };
        let hash = match known {
            Some(h) => h,
            None => b.hash().map_err(Error::io(dir, "read a scratch file"))?,
        };
        if let Some(&ri) = r_by_hash.get(&hash) {
            return Ok((
                Entry {
                    inode: bi,
                    size,
                    hash,
                    source: Source::Same { inode: ri },
                },
                None,
            ));
        }
        let src = rc.at_path(rm, &bm.path_of(bi));
        let rb = match src {
            Some(ri) => Some((ri, rr.read(ri, opts.mem_limit, dir)?)),
            None => None,
        };
        let mut bytes = Vec::new();
        let frames = enc
            .encode(rb.as_ref().map(|x| &x.1), &b, &mut bytes)
            .map_err(Error::io(dir, "compress"))?;
        let payload = RevPayload {
            offset: 0,
            len: bytes.len() as u64,
            hash: *blake3::hash(&bytes).as_bytes(),
            frames,
        };
        let source = match rb {
            Some((ri, _)) => Source::Delta { inode: ri, payload },
            None => Source::Full { payload },
        };
        Ok((
            Entry {
                inode: bi,
                size,
                hash,
                source,
            },
            Some(bytes),
        ))
    };
    let results: Vec<Result<(Entry, Option<Vec<u8>>)>> =
        bc.list.par_iter().map(|&bi| work(bi)).collect();
    let mut entries = Vec::with_capacity(results.len());
    let mut data = Vec::new();
    let mut offset = 0u64;
    let mut place =
        |mut e: Entry, bytes: Option<Vec<u8>>, data: &mut Vec<(u64, u64)>| -> Result<Entry> {
            if let Some(bytes) = bytes {
                let at = spool
                    .append(&bytes)
                    .map_err(Error::io(dir, "write a scratch file"))?;
                data.push((at, bytes.len() as u64));
                match &mut e.source {
                    Source::Delta { payload, .. } | Source::Full { payload } => {
                        payload.offset = offset;
                    }
                    _ => unreachable!("bytes only for differentials"),
                }
                offset += bytes.len() as u64;
            }
            Ok(e)
        };
    // The metadata entry first.
    let meta_entry = match &view.meta_bytes {
        Some(bmb) => {
            let hash = *blake3::hash(bmb).as_bytes();
            if bmb.as_slice() == r_meta {
                (
                    Entry {
                        inode: 0,
                        size: bmb.len() as u64,
                        hash,
                        source: Source::Same { inode: 0 },
                    },
                    None,
                )
            } else {
                let mut bytes = Vec::new();
                let rmb = Blob::Mem(r_meta.to_vec());
                let frames = enc
                    .encode(Some(&rmb), &Blob::Mem(bmb.clone()), &mut bytes)
                    .map_err(Error::io(dir, "compress"))?;
                let payload = RevPayload {
                    offset: 0,
                    len: bytes.len() as u64,
                    hash: *blake3::hash(&bytes).as_bytes(),
                    frames,
                };
                (
                    Entry {
                        inode: 0,
                        size: bmb.len() as u64,
                        hash,
                        source: Source::Delta { inode: 0, payload },
                    },
                    Some(bytes),
                )
            }
        }
        None => (
            Entry {
                inode: 0,
                size: 0,
                hash: [0; 32],
                source: Source::Missing,
            },
            None,
        ),
    };
    let metadata = place(meta_entry.0, meta_entry.1, &mut data)?;
    for r in results {
        let (e, bytes) = r?;
        match &e.source {
            Source::Missing => report.reverse_missing += 1,
            Source::Same { .. } => report.reverse_same += 1,
            Source::Delta { .. } => report.reverse_deltas += 1,
            Source::Full { .. } => report.reverse_full += 1,
        }
        entries.push(place(e, bytes, &mut data)?);
    }
    if report.reverse_missing > 0 {
        report.warnings.push(format!(
            "{} reverse differential(s) could not be computed (their base content was unavailable); a later update that needs them will need --repair-source",
            report.reverse_missing
        ));
    }
    Ok((
        Table {
            frame_size: enc.frame_size,
            metadata,
            entries,
        },
        data,
    ))
}

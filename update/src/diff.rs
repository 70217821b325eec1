//! The lab side: `diff(B, R)` writes the package that takes any device on
//! a revision of B's line to R.
//!
//! Per content of R (see `content`), in this order of preference:
//! 1. the base file at the same path has the same bytes: nothing is stored;
//! 2. some base file has the same bytes (a rename or copy): a *copy* piece;
//! 3. a forward differential against a base content: the file at the same
//!    path, else a rename candidate (same path or file name once every
//!    alphanumeric run holding a digit is masked, closest size: versioned
//!    directories and hashed library names), at `level` with long-distance
//!    matching;
//! 4. a null differential (compressed content) when there is no base or
//!    when the differential is not smaller.
//!
//! R's metadata region goes the same way against B's.

use crate::blob::Blob;
use crate::codec::Encoder;
use crate::content::{metadata_bytes, Contents, Reader};
use crate::error::{Error, Result};
use crate::package::{self, BaseRef, Manifest, Payload, Piece, PieceKind, Stats};
use crate::wire::Hash;
use crate::{dir_of, Spool};
use fragments::{Body, Fragment, Kind, Metadata, Progress, SigningKey, Trust};
use rayon::prelude::*;
use std::collections::HashMap;
use std::path::Path;

/// How packages are made.
#[derive(Debug, Clone)]
pub struct DiffOptions {
    /// zstd level of the forward differentials (19 like `zstd -19`).
    pub level: i32,
    /// Target bytes per independently decodable frame.
    pub frame_size: u64,
    /// Largest base window one frame refers to.
    pub window_max: u64,
    /// Contents larger than this are held in scratch files, not memory.
    pub mem_limit: u64,
}

impl Default for DiffOptions {
    fn default() -> Self {
        DiffOptions {
            level: 19,
            frame_size: 8 << 20,
            window_max: 64 << 20,
            mem_limit: 64 << 20,
        }
    }
}

/// Figures about a package just written.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DiffReport {
    pub package_bytes: u64,
    pub target_fragment_bytes: u64,
    pub stats: Stats,
    pub copies: u64,
    pub deltas: u64,
    pub fulls: u64,
    pub metadata_kind: PieceKind,
    pub metadata_bytes: u64,
    pub data_bytes: u64,
}

/// Masks every alphanumeric run that holds a digit: `numpy-1.26.4.dist-info`
/// and `numpy-1.26.0.dist-info` both become `numpy-#.#.#.dist-info`.
pub fn rename_key(p: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(p.len());
    let mut i = 0;
    while i < p.len() {
        if p[i].is_ascii_alphanumeric() {
            let s = i;
            while i < p.len() && p[i].is_ascii_alphanumeric() {
                i += 1;
            }
            let run = &p[s..i];
            if run.iter().any(|c| c.is_ascii_digit()) {
                out.push(b'#');
            } else {
                out.extend_from_slice(run);
            }
        } else {
            out.push(p[i]);
            i += 1;
        }
    }
    out
}

fn file_name(p: &[u8]) -> &[u8] {
    p.rsplit(|&c| c == b'/').next().unwrap_or(p)
}

fn hash_all(
    reader: &Reader,
    list: &[u32],
    opts: &DiffOptions,
    dir: &Path,
    progress: &dyn Progress,
) -> Result<HashMap<u32, Hash>> {
    list.par_iter()
        .map(|&i| {
            let b = reader.read(i, opts.mem_limit, dir)?;
            let h = b.hash().map_err(Error::io(dir, "read a scratch file"))?;
            progress.advance(b.len());
            Ok((i, h))
        })
        .collect()
}

/// True when inode metadata (not content) differs.
fn meta_differs(bm: &Metadata, bi: u32, rm: &Metadata, ri: u32) -> bool {
    let (a, b) = (bm.inode(bi), rm.inode(ri));
    a.perm != b.perm
        || a.uid != b.uid
        || a.gid != b.gid
        || a.mtime != b.mtime
        || a.owns_security != b.owns_security
        || !bm.xattrs_of(bi).eq(rm.xattrs_of(ri))
}

fn stats(
    bm: &Metadata,
    bc: &Contents,
    bh: &HashMap<u32, Hash>,
    rm: &Metadata,
    rc: &Contents,
    rh: &HashMap<u32, Hash>,
) -> (u64, u64) {
    let mut deleted = 0;
    for bi in 1..bm.inodes.len() as u32 {
        if rm.lookup(&bm.path_of(bi)).is_none() {
            deleted += 1;
        }
    }
    let mut metadata_only = 0;
    for ri in 1..rm.inodes.len() as u32 {
        let Some(bi) = bm.lookup(&rm.path_of(ri)) else {
            continue;
        };
        let (a, b) = (bm.inode(bi), rm.inode(ri));
        if a.kind != b.kind {
            continue;
        }
        let same_content = match (&a.body, &b.body) {
            (Body::Regular { size: sa, .. }, Body::Regular { size: sb, .. }) => {
                let (ca, cb) = (bc.canon[bi as usize], rc.canon[ri as usize]);
                sa == sb && bh.get(&ca) == rh.get(&cb)
            }
            (Body::Symlink { .. }, Body::Symlink { .. }) => {
                bm.symlink_target(bi) == rm.symlink_target(ri)
            }
            (
                Body::Device {
                    major: a1,
                    minor: a2,
                },
                Body::Device {
                    major: b1,
                    minor: b2,
                },
            ) => a1 == b1 && a2 == b2,
            _ => a.kind == Kind::Directory || a.kind == Kind::Fifo || a.kind == Kind::Socket,
        };
        if same_content && meta_differs(bm, bi, rm, ri) {
            metadata_only += 1;
        }
    }
    (deleted, metadata_only)
}

enum Plan {
    Copy(u32),
    Encode(Option<u32>),
}

/// Encodes `target` against `base`, or as a null differential when that is
/// smaller (or there is no base). Returns the kind, the frames and where the
/// bytes went in the spool.
fn encode_piece(
    enc: &Encoder,
    base: Option<&Blob>,
    target: &Blob,
    spool: &Spool,
    dir: &Path,
) -> Result<(bool, Vec<crate::codec::Frame>, u64, u64, Hash)> {
    let io = |e| Error::io(dir, "compress")(e);
    let mut delta = Vec::new();
    let mut frames = None;
    if let Some(b) = base {
        frames = Some(enc.encode(Some(b), target, &mut delta).map_err(io)?);
    }
    // A differential far below the content's size is kept without trying
    // the null one (which, at level 19, costs as much again).
    let try_full = match &frames {
        None => true,
        Some(_) => delta.len() as u64 * 8 > target.len() || target.len() <= 1 << 16,
    };
    let mut use_delta = frames.is_some();
    if try_full {
        let mut full = Vec::new();
        let ff = enc.encode(None, target, &mut full).map_err(io)?;
        if frames.is_none() || full.len() < delta.len() {
            delta = full;
            frames = Some(ff);
            use_delta = false;
        }
    }
    let at = spool
        .append(&delta)
        .map_err(Error::io(dir, "write a scratch file"))?;
    Ok((
        use_delta,
        frames.expect("set above"),
        at,
        delta.len() as u64,
        *blake3::hash(&delta).as_bytes(),
    ))
}

/// Writes the package taking `base` to `target` to `out`, signed with `key`.
pub fn diff(
    base: &Path,
    target: &Path,
    key: &SigningKey,
    out: &Path,
    opts: &DiffOptions,
    progress: &dyn Progress,
) -> Result<DiffReport> {
    check_options(opts)?;
    let t0 = std::time::Instant::now();
    let b = Fragment::open(base, Trust::AnySigner)?;
    let r = Fragment::open(target, Trust::AnySigner)?;
    if r.signer().as_bytes() != key.verifying_key().as_bytes() {
        tracing::warn!("the target fragment is signed by another key than the package: devices must trust both");
    }
    let dir = dir_of(out);
    let sides = Sides::hash(&b, &r, opts, dir, progress)?;
    tracing::info!(
        elapsed_ms = t0.elapsed().as_millis() as u64,
        "hashed base and target"
    );
    let (stats, plans) = sides.plan();
    let maker = Maker {
        sides: &sides,
        enc: Encoder {
            level: opts.level,
            ldm: true,
            frame_size: opts.frame_size,
            window_max: opts.window_max,
        },
        spool: Spool::new(dir)?,
        mem_limit: opts.mem_limit,
        dir,
        progress,
    };
    // The metadata region first (small), then the contents.
    let (metadata, mat, mlen) = maker.metadata_piece()?;
    let made = maker.pieces(&plans)?;
    let mut pieces_data: Vec<(u64, u64)> = vec![(mat, mlen)];
    let mut pieces = Vec::with_capacity(made.len());
    let mut offset = mlen;
    let (mut copies, mut deltas, mut fulls) = (0, 0, 0);
    for (mut p, at, len) in made {
        match p.kind {
            PieceKind::Copy => copies += 1,
            PieceKind::Delta => deltas += 1,
            PieceKind::Full => fulls += 1,
        }
        if let Some(pl) = &mut p.payload {
            pl.offset = offset;
            offset += len;
            pieces_data.push((at, len));
        }
        pieces.push(p);
    }
    let manifest = Manifest {
        frame_size: opts.frame_size,
        base_name: b.header().name.clone(),
        base_version: b.header().version.clone(),
        target_header: Box::new(*r.header_bytes()),
        metadata,
        stats: stats.clone(),
        pieces,
    };
    progress.phase("writing package", 0);
    let package_bytes = package::write(out, key, b.id(), &manifest, &maker.spool, &pieces_data)?;
    tracing::info!(
        elapsed_ms = t0.elapsed().as_millis() as u64,
        package_bytes,
        "package written"
    );
    Ok(DiffReport {
        package_bytes,
        target_fragment_bytes: r.header().file_size,
        stats,
        copies,
        deltas,
        fulls,
        metadata_kind: manifest.metadata.kind,
        metadata_bytes: mlen,
        data_bytes: offset,
    })
}

fn check_options(opts: &DiffOptions) -> Result<()> {
    if !(package::FRAME_MIN..=package::FRAME_MAX).contains(&opts.frame_size) {
        return Err(Error::Options(format!(
            "frame size {} outside {}..={}",
            opts.frame_size,
            package::FRAME_MIN,
            package::FRAME_MAX
        )));
    }
    if opts.window_max == 0 {
        return Err(Error::Options("window must be at least one byte".into()));
    }
    Ok(())
}

/// Base and target: their contents and the contents' blake3.
struct Sides<'a> {
    b: &'a Fragment,
    r: &'a Fragment,
    bc: Contents,
    rc: Contents,
    bh: HashMap<u32, Hash>,
    rh: HashMap<u32, Hash>,
}

fn size_of(m: &Metadata, list: &[u32]) -> u64 {
    list.iter().map(|&i| m.inode(i).size()).sum()
}

impl<'a> Sides<'a> {
    fn hash(
        b: &'a Fragment,
        r: &'a Fragment,
        opts: &DiffOptions,
        dir: &Path,
        progress: &dyn Progress,
    ) -> Result<Sides<'a>> {
        let (bm, rm) = (b.metadata(), r.metadata());
        let (bc, rc) = (Contents::of(bm), Contents::of(rm));
        progress.phase("hashing", size_of(bm, &bc.list) + size_of(rm, &rc.list));
        let bh = hash_all(&Reader::new(b), &bc.list, opts, dir, progress)?;
        let rh = hash_all(&Reader::new(r), &rc.list, opts, dir, progress)?;
        Ok(Sides {
            b,
            r,
            bc,
            rc,
            bh,
            rh,
        })
    }

    /// What each content of R becomes (see the module doc), and the stats.
    fn plan(&self) -> (Stats, Vec<(u32, Plan)>) {
        let (bm, rm) = (self.b.metadata(), self.r.metadata());
        let (bc, rc, bh, rh) = (&self.bc, &self.rc, &self.bh, &self.rh);
        let mut b_by_hash: HashMap<Hash, u32> = HashMap::new();
        let mut by_key: HashMap<Vec<u8>, Vec<u32>> = HashMap::new();
        let mut by_name: HashMap<Vec<u8>, Vec<u32>> = HashMap::new();
        for &bi in &bc.list {
            b_by_hash.entry(bh[&bi]).or_insert(bi);
            let p = bm.path_of(bi);
            by_key.entry(rename_key(&p)).or_default().push(bi);
            by_name
                .entry(rename_key(file_name(&p)))
                .or_default()
                .push(bi);
        }
        let closest = |cands: Option<&Vec<u32>>, size: u64| -> Option<u32> {
            cands?
                .iter()
                .copied()
                .min_by_key(|&c| (bm.inode(c).size().abs_diff(size), c))
        };
        let mut st = Stats {
            base_contents: bc.list.len() as u64,
            target_contents: rc.list.len() as u64,
            target_bytes: size_of(rm, &rc.list),
            ..Default::default()
        };
        let mut plans: Vec<(u32, Plan)> = Vec::new();
        for &ri in &rc.list {
            let path = rm.path_of(ri);
            let at = bc.at_path(bm, &path);
            if at.is_some_and(|bi| bh[&bi] == rh[&ri]) {
                st.unchanged += 1;
                continue;
            }
            if let Some(&bi) = b_by_hash.get(&rh[&ri]) {
                if at.is_some() {
                    st.changed += 1;
                } else {
                    st.renamed += 1;
                }
                plans.push((ri, Plan::Copy(bi)));
                continue;
            }
            let size = rm.inode(ri).size();
            let base = at.or_else(|| {
                closest(by_key.get(&rename_key(&path)), size)
                    .or_else(|| closest(by_name.get(&rename_key(file_name(&path))), size))
            });
            match (at, base) {
                (Some(_), _) => st.changed += 1,
                (None, Some(_)) => st.renamed += 1,
                (None, None) => st.added += 1,
            }
            plans.push((ri, Plan::Encode(base)));
        }
        let (deleted, metadata_only) = stats(bm, bc, bh, rm, rc, rh);
        st.deleted = deleted;
        st.metadata_only = metadata_only;
        (st, plans)
    }
}

/// Makes the pieces: differentials encoded into the spool.
struct Maker<'a> {
    sides: &'a Sides<'a>,
    enc: Encoder,
    spool: Spool,
    mem_limit: u64,
    dir: &'a Path,
    progress: &'a dyn Progress,
}

impl Maker<'_> {
    /// R's metadata region against B's: the piece and where its bytes are.
    fn metadata_piece(&self) -> Result<(Piece, u64, u64)> {
        let bmeta = Blob::Mem(metadata_bytes(self.sides.b)?);
        let rmeta = Blob::Mem(metadata_bytes(self.sides.r)?);
        let (md, frames, at, len, hash) =
            encode_piece(&self.enc, Some(&bmeta), &rmeta, &self.spool, self.dir)?;
        let piece = Piece {
            inode: 0,
            kind: if md {
                PieceKind::Delta
            } else {
                PieceKind::Full
            },
            path: Vec::new(),
            size: rmeta.len(),
            base: md.then(|| BaseRef {
                inode: 0,
                hash: bmeta.hash().expect("in memory"),
            }),
            out_hash: rmeta.hash().expect("in memory"),
            payload: Some(Payload {
                offset: 0,
                len,
                hash,
                frames,
            }),
        };
        Ok((piece, at, len))
    }

    /// Every planned piece (made largest first, over the cores), in plan
    /// order, with where its bytes went in the spool.
    fn pieces(&self, plans: &[(u32, Plan)]) -> Result<Vec<(Piece, u64, u64)>> {
        let rm = self.sides.r.metadata();
        let mut order: Vec<usize> = (0..plans.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(rm.inode(plans[i].0).size()));
        let encode_total: u64 = plans
            .iter()
            .filter(|p| matches!(p.1, Plan::Encode(_)))
            .map(|p| rm.inode(p.0).size())
            .sum();
        self.progress.phase("differentials", encode_total);
        let done: Vec<Result<(usize, Piece, u64, u64)>> = order
            .par_iter()
            .map(|&i| {
                let (ri, plan) = &plans[i];
                self.piece(*ri, plan).map(|(p, at, len)| (i, p, at, len))
            })
            .collect();
        let mut slots: Vec<Option<(Piece, u64, u64)>> = vec![None; plans.len()];
        for d in done {
            let (i, p, at, len) = d?;
            slots[i] = Some((p, at, len));
        }
        Ok(slots
            .into_iter()
            .map(|s| s.expect("every plan done"))
            .collect())
    }

    fn piece(&self, ri: u32, plan: &Plan) -> Result<(Piece, u64, u64)> {
        let s = self.sides;
        let rm = s.r.metadata();
        let path = rm.path_of(ri);
        let size = rm.inode(ri).size();
        let base = match plan {
            Plan::Copy(bi) => {
                let piece = Piece {
                    inode: ri,
                    kind: PieceKind::Copy,
                    path,
                    size,
                    base: Some(BaseRef {
                        inode: *bi,
                        hash: s.bh[bi],
                    }),
                    out_hash: s.rh[&ri],
                    payload: None,
                };
                return Ok((piece, 0, 0));
            }
            Plan::Encode(base) => *base,
        };
        let tb = Reader::new(s.r).read(ri, self.mem_limit, self.dir)?;
        let bb = match base {
            Some(bi) => Some(Reader::new(s.b).read(bi, self.mem_limit, self.dir)?),
            None => None,
        };
        let (is_delta, frames, at, len, hash) =
            encode_piece(&self.enc, bb.as_ref(), &tb, &self.spool, self.dir)?;
        self.progress.advance(size);
        let piece = Piece {
            inode: ri,
            kind: if is_delta {
                PieceKind::Delta
            } else {
                PieceKind::Full
            },
            path,
            size,
            base: base.filter(|_| is_delta).map(|bi| BaseRef {
                inode: bi,
                hash: s.bh[&bi],
            }),
            out_hash: s.rh[&ri],
            payload: Some(Payload {
                offset: 0,
                len,
                hash,
                frames,
            }),
        };
        Ok((piece, at, len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rename_keys() {
        assert_eq!(
            rename_key(b"/numpy-1.26.0.dist-info/RECORD"),
            rename_key(b"/numpy-1.26.4.dist-info/RECORD")
        );
        assert_eq!(
            rename_key(b"/numpy.libs/libopenblas64_p-r0-0cf96a72.3.23.dev.so"),
            rename_key(b"/numpy.libs/libopenblas64_p-r0-5007b62f.3.23.dev.so")
        );
        assert_ne!(rename_key(b"/a/RECORD"), rename_key(b"/a/METADATA"));
        assert_eq!(rename_key(b"x/y-2"), b"x/y-#".to_vec());
    }
}

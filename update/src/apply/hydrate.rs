//! The hydration pass: every content of R, in parallel, checked at every
//! step and written where R's extents say. A failure is recorded against
//! its item (`Failed`) and the rest goes on.

use super::base::{Base, BaseView};
use super::fail::{CopyError, Failed, ItemError};
use super::output::Output;
use super::plan::{plan, CopyRange, Job};
use super::target::Target;
use super::{ApplyReport, Ctx};
use crate::blob::{Blob, BlobSink, PIECE};
use crate::codec::decode;
use crate::content::{path_string, read_range};
use crate::package::{BaseRef, Payload, Piece, PieceKind};
use crate::rev::{Entry, RevPayload, Source};
use crate::wire::Hash;
use fragments::Metadata;
use rayon::prelude::*;
use std::collections::HashMap;

/// A reverse differential made during hydration: (base inode, entry, bytes).
pub(super) type RevDelta = (u32, Entry, Vec<u8>);

/// One content of R hydrated.
pub(super) struct Done {
    pub(super) ri: u32,
    /// blake3 of the content, when it was computed or is vouched for.
    pub(super) hash: Option<Hash>,
    /// The base content it is identical to (unchanged or copied).
    pub(super) same_as: Option<u32>,
    /// A reverse differential computed inline.
    pub(super) rev: Option<RevDelta>,
    pub(super) kind: Option<PieceKind>,
    /// The device's fragment already held these bytes.
    pub(super) current: bool,
}

/// What the pass gives: the contents done, and the failures by R inode
/// (ascending), one per content.
pub(super) struct Hydration {
    pub(super) done: Vec<Done>,
    pub(super) failed: Vec<(u32, Failed)>,
}

/// A content's bytes and what is known about them, before they are written.
struct Got {
    blob: Blob,
    hash: Option<Hash>,
    rev: Option<RevDelta>,
    same_as: Option<u32>,
    current: bool,
}

/// What the hydration workers share.
struct Hydrator<'a> {
    cx: &'a Ctx<'a>,
    view: &'a BaseView<'a>,
    rm: &'a Metadata,
    pieces: HashMap<u32, &'a Piece>,
    output: &'a Output,
}

pub(super) fn run(
    cx: &Ctx,
    view: &BaseView,
    target: &Target,
    output: &Output,
    report: &mut ApplyReport,
) -> Hydration {
    tracing::info!(elapsed_ms = cx.elapsed_ms(), "phase: hydrating contents");
    let h = Hydrator {
        cx,
        view,
        rm: &target.meta,
        pieces: cx
            .pkg
            .manifest
            .pieces
            .iter()
            .map(|p| (p.inode, p))
            .collect(),
        output,
    };
    let order = &target.contents.list;
    let total: u64 = order.iter().map(|&i| h.rm.inode(i).size()).sum();
    report.contents = order.len() as u64;
    report.content_bytes = total;
    cx.progress.phase("hydrating", total);
    let plan = plan(view, h.rm, order, &h.pieces);
    let results: Vec<(u32, Result<Option<Done>, Failed>)> =
        plan.jobs.par_iter().map(|job| h.run_job(job)).collect();
    let hydration = collect(results, &plan.copied, report);
    tracing::info!(
        elapsed_ms = cx.elapsed_ms(),
        failed = hydration.failed.len(),
        "hydrated contents"
    );
    hydration
}

/// Counts what was done and keeps one failure per content; contents
/// copied in pieces are done once every piece is.
fn collect(
    results: Vec<(u32, Result<Option<Done>, Failed>)>,
    copied_from: &HashMap<u32, (u32, Option<Hash>)>,
    report: &mut ApplyReport,
) -> Hydration {
    let mut done: Vec<Done> = Vec::new();
    let mut failed: Vec<(u32, Failed)> = Vec::new();
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
            Err(f) => {
                if copied.insert(ri, false) != Some(false) {
                    failed.push((ri, f));
                }
            }
        }
    }
    let mut copied: Vec<(u32, bool)> = copied.into_iter().collect();
    copied.sort_unstable();
    for (ri, ok) in copied {
        if ok && !failed.iter().any(|f| f.0 == ri) {
            let (bi, hash) = *copied_from
                .get(&ri)
                .expect("copy jobs are planned with their source");
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
    Hydration { done, failed }
}

impl Hydrator<'_> {
    fn run_job(&self, job: &Job) -> (u32, Result<Option<Done>, Failed>) {
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
                Job::Whole { ri } => self.whole(*ri).map(Some),
                Job::Copy(c) => self.copy(c, buf).map(|()| None),
            };
            let r = r.map_err(|error| Failed {
                path: path_string(self.rm, ri),
                error,
            });
            self.cx.progress.advance(job.len(self.rm));
            tracing::debug!(
                path = %path_string(self.rm, ri),
                len = job.len(self.rm),
                us = t.elapsed().as_micros() as u64,
                "hydrated"
            );
            (ri, r)
        })
    }

    /// Copies part of an unchanged content from the device's fragment
    /// (verified against its block hashes as read) to where R's extents
    /// put those bytes.
    fn copy(&self, c: &CopyRange, buf: &mut [u8]) -> Result<(), ItemError> {
        let frag = self
            .view
            .fragment()
            .expect("copy jobs only with a fragment");
        let b = &mut buf[..c.len as usize];
        let copied = if c.off + c.len > frag.metadata().inode(c.src).size() {
            Err(CopyError::PastEnd {
                len: c.len,
                off: c.off,
            })
        } else {
            read_range(frag, c.src, c.off, b).map_err(|e| CopyError::Read(Box::new(e)))
        };
        copied
            .and_then(|()| self.place(c, b).map_err(CopyError::Write))
            .map_err(|error| ItemError::CopyFromBase {
                base_file: self.view.bpath(c.bi),
                error,
            })
    }

    /// Writes the bytes `b` of range `c` where R's extents say.
    fn place(&self, c: &CopyRange, b: &[u8]) -> std::io::Result<()> {
        let end = c.off + c.len;
        for e in self.rm.extents_of(c.ri) {
            let (a, z) = (e.file_offset.max(c.off), (e.file_offset + e.len).min(end));
            if a >= z {
                continue;
            }
            self.output.write_at(
                e.region,
                e.region_offset + (a - e.file_offset),
                &b[(a - c.off) as usize..(z - c.off) as usize],
            )?;
        }
        Ok(())
    }

    /// One whole content of R: obtained, checked, written.
    fn whole(&self, ri: u32) -> Result<Done, ItemError> {
        let size = self.rm.inode(ri).size();
        let piece = self.pieces.get(&ri).copied();
        let got = match piece {
            None => self.unchanged(ri)?,
            Some(p) => self.by_piece(ri, p)?,
        };
        if got.blob.len() != size {
            return Err(ItemError::Size {
                got: got.blob.len(),
                want: size,
            });
        }
        self.output
            .write_content(self.rm, ri, &got.blob)
            .map_err(ItemError::Write)?;
        Ok(Done {
            ri,
            hash: got.hash,
            same_as: got.same_as,
            rev: got.rev,
            kind: piece.map(|p| p.kind),
            current: got.current,
        })
    }

    /// Unchanged: the base content at the same path. Verified as read (N's
    /// block hashes, or the reverse differential's hash); the signature
    /// checks the whole at the end.
    fn unchanged(&self, ri: u32) -> Result<Got, ItemError> {
        let Some(bm) = &self.view.meta else {
            return Err(match self.view.unavailable() {
                Some(why) => ItemError::UnchangedBaseUnavailable(why.clone()),
                None => ItemError::UnchangedNoBaseMetadata,
            });
        };
        let bi = bm
            .contents
            .at_path(&bm.meta, &self.rm.path_of(ri))
            .ok_or(ItemError::NotInBase)?;
        let (blob, known) = self.view.get(bi).map_err(ItemError::Unchanged)?;
        Ok(Got {
            blob,
            hash: known,
            rev: None,
            same_as: Some(bi),
            current: false,
        })
    }

    /// A content the package names: a copy of a base content, a forward
    /// differential from one, or a null differential.
    fn by_piece(&self, ri: u32, p: &Piece) -> Result<Got, ItemError> {
        if p.kind != PieceKind::Copy {
            // The device already has the target's bytes (changed from the
            // base in N, unchanged from N to R): no differential to apply,
            // and N's reverse differential stays valid for R.
            if let Some((blob, rev)) = already_current(ri, self.rm, p, self.view) {
                return Ok(Got {
                    blob,
                    hash: Some(p.out_hash),
                    rev,
                    same_as: None,
                    current: true,
                });
            }
        }
        let data = match &p.payload {
            Some(pl) => Some(self.cx.pkg.payload(pl).map_err(ItemError::Payload)?),
            None => None,
        };
        let base = match &p.base {
            Some(br) => Some(self.checked_base(p.kind, br)?),
            None => None,
        };
        let (out, base) = match (&data, &p.payload) {
            (Some(data), Some(pl)) => {
                let out = self.decode_piece(p, pl, data, base.as_ref().map(|b| &b.1))?;
                (out, base)
            }
            _ => {
                let (_, b) = base.ok_or(ItemError::CopyWithoutBase)?;
                (b, None)
            }
        };
        // Reverse differential R -> B, while both are at hand.
        let rev = match (p.kind, &base) {
            (PieceKind::Delta, Some((br, b))) => Some(self.reverse_inline(ri, br, &out, b)?),
            _ => None,
        };
        let same_as = match p.kind {
            PieceKind::Copy => p.base.as_ref().map(|b| b.inode),
            _ => None,
        };
        Ok(Got {
            blob: out,
            hash: Some(p.out_hash),
            rev,
            same_as,
            current: false,
        })
    }

    /// The base content a piece starts from, checked against the input
    /// hash the signed manifest gives.
    fn checked_base<'p>(
        &self,
        kind: PieceKind,
        br: &'p BaseRef,
    ) -> Result<(&'p BaseRef, Blob), ItemError> {
        let (b, _) = self
            .view
            .get(br.inode)
            .map_err(|error| ItemError::BaseFor {
                kind,
                base_file: self.view.bpath(br.inode),
                error,
            })?;
        let h = b.hash().map_err(ItemError::Scratch)?;
        if h != br.hash {
            return Err(ItemError::InputCheck {
                base_file: self.view.bpath(br.inode),
                got: h,
                want: br.hash,
            });
        }
        Ok((br, b))
    }

    /// Decodes a piece's differential, checked against its output hash.
    fn decode_piece(
        &self,
        p: &Piece,
        pl: &Payload,
        data: &[u8],
        base: Option<&Blob>,
    ) -> Result<Blob, ItemError> {
        let mut sink =
            BlobSink::new(p.size, self.view.mem_limit, &self.cx.dir).map_err(ItemError::Scratch)?;
        decode(
            base,
            data,
            &pl.frames,
            p.size,
            self.cx.pkg.manifest.frame_size,
            &mut sink,
        )
        .map_err(ItemError::Decode)?;
        let out = sink.finish().map_err(ItemError::Scratch)?;
        let h = out.hash().map_err(ItemError::Scratch)?;
        if h != p.out_hash {
            return Err(ItemError::OutputCheck {
                got: h,
                want: p.out_hash,
            });
        }
        Ok(out)
    }

    /// The reverse differential from content `ri` of R (`out`) back to
    /// base content `br` (`b`).
    fn reverse_inline(
        &self,
        ri: u32,
        br: &BaseRef,
        out: &Blob,
        b: &Blob,
    ) -> Result<RevDelta, ItemError> {
        let mut bytes = Vec::new();
        let frames = self
            .cx
            .rev_enc
            .encode(Some(out), b, &mut bytes)
            .map_err(ItemError::ReverseEncode)?;
        let entry = Entry {
            inode: br.inode,
            size: b.len(),
            hash: br.hash,
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
        Ok((br.inode, entry, bytes))
    }
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

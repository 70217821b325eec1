//! R's reverse differentials (R -> B), written to `R.frag.rev`: the ones
//! made inline during hydration, `same` entries by hash, and for the other
//! base contents a differential from R's file at the same path (or the
//! compressed content), read from the verified hydrated fragment.

use super::base::{BaseMeta, BaseView};
use super::hydrate::Done;
use super::target::Target;
use super::{rev_path_of, ApplyReport, Ctx};
use crate::blob::Blob;
use crate::codec::Encoder;
use crate::content::{Contents, Reader};
use crate::error::{Error, Result};
use crate::rev::{self, Entry, RevPayload, Source, Table};
use crate::wire::Hash;
use crate::Spool;
use fragments::{Fragment, Metadata};
use rayon::prelude::*;
use std::collections::HashMap;
use std::path::Path;

/// An entry of the table, with the differential's bytes when it has some.
type Made = (Entry, Option<Vec<u8>>);

/// Writes the reverse file to a synced temporary beside it, for `commit`
/// to rename into place; none (and an old one removed) when the base was
/// unavailable, so no reverse differential can be made.
pub(super) fn write(
    cx: &Ctx,
    view: &BaseView,
    hydrated: &Fragment,
    target: &Target,
    done: Vec<Done>,
    report: &mut ApplyReport,
) -> Result<Option<tempfile::NamedTempFile>> {
    tracing::info!(elapsed_ms = cx.elapsed_ms(), "phase: reverse differentials");
    cx.progress.phase("reverse differentials", 0);
    let rev_out = rev_path_of(cx.out);
    let spool = Spool::new(&cx.dir)?;
    let rev_tmp = match &view.meta {
        Some(bm) => {
            let (table, data) = table(cx, view, bm, hydrated, target, done, &spool)?;
            count(&table, report);
            let data_len = data.iter().map(|d| d.1).sum();
            let head = rev::encode_file(&bm.header, hydrated.id(), &table, data_len);
            report.reverse_bytes = head.len() as u64 + data_len;
            Some(crate::spooled_temp(&rev_out, &[&head], &spool, &data)?)
        }
        None => {
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
        }
    };
    tracing::info!(
        elapsed_ms = cx.elapsed_ms(),
        "reverse differentials written"
    );
    Ok(rev_tmp)
}

/// What is known of R's contents for the reverse table.
struct Known {
    /// R's contents by hash: the smallest target inode.
    r_by_hash: HashMap<Hash, u32>,
    /// Base contents the target kept (unchanged or copied): the smallest
    /// target content, with the base hash when one is known.
    same: HashMap<u32, (u32, Option<Hash>)>,
    /// Inline deltas, the smallest target inode per base content.
    inline: HashMap<u32, (Entry, Vec<u8>)>,
}

impl Known {
    fn of(done: Vec<Done>) -> Known {
        let mut r_by_hash: HashMap<Hash, u32> = HashMap::new();
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
        let mut inline: HashMap<u32, (Entry, Vec<u8>)> = HashMap::new();
        let mut inline_by: HashMap<u32, u32> = HashMap::new();
        for d in done {
            if let Some((bi, e, bytes)) = d.rev {
                if inline_by.get(&bi).is_none_or(|&r| d.ri < r) {
                    inline_by.insert(bi, d.ri);
                    inline.insert(bi, (e, bytes));
                }
            }
        }
        Known {
            r_by_hash,
            same,
            inline,
        }
    }
}

/// Makes the entry of each base content, over the cores.
struct Maker<'a> {
    view: &'a BaseView<'a>,
    bm: &'a Metadata,
    rm: &'a Metadata,
    rc: &'a Contents,
    rr: Reader<'a>,
    known: Known,
    enc: &'a Encoder,
    mem_limit: u64,
    dir: &'a Path,
}

/// R's reverse table and where its differentials' bytes are in `spool`,
/// in table order.
fn table(
    cx: &Ctx,
    view: &BaseView,
    bm: &BaseMeta,
    hydrated: &Fragment,
    target: &Target,
    done: Vec<Done>,
    spool: &Spool,
) -> Result<(Table, Vec<(u64, u64)>)> {
    let maker = Maker {
        view,
        bm: &bm.meta,
        rm: &target.meta,
        rc: &target.contents,
        rr: Reader::new(hydrated),
        known: Known::of(done),
        enc: &cx.rev_enc,
        mem_limit: cx.opts.mem_limit,
        dir: &cx.dir,
    };
    let results: Vec<Result<Made>> = bm
        .contents
        .list
        .par_iter()
        .map(|&bi| maker.entry(bi))
        .collect();
    let mut placer = Placer {
        spool,
        dir: &cx.dir,
        offset: 0,
        data: Vec::new(),
    };
    // The metadata entry first.
    let meta = metadata_entry(&bm.bytes, &target.meta_bytes, &cx.rev_enc, &cx.dir)?;
    let metadata = placer.place(meta)?;
    let mut entries = Vec::with_capacity(results.len());
    for r in results {
        entries.push(placer.place(r?)?);
    }
    let table = Table {
        frame_size: cx.rev_enc.frame_size,
        metadata,
        entries,
    };
    Ok((table, placer.data))
}

/// Counts the entries by kind; warns about the missing ones.
fn count(table: &Table, report: &mut ApplyReport) {
    for e in &table.entries {
        match &e.source {
            Source::Missing => report.reverse_missing += 1,
            Source::Same { .. } => report.reverse_same += 1,
            Source::Delta { .. } => report.reverse_deltas += 1,
            Source::Full { .. } => report.reverse_full += 1,
        }
    }
    if report.reverse_missing > 0 {
        report.warnings.push(format!(
            "{} reverse differential(s) could not be computed (their base content was unavailable); a later update that needs them will need --repair-source",
            report.reverse_missing
        ));
    }
}

impl Maker<'_> {
    fn entry(&self, bi: u32) -> Result<Made> {
        let size = self.bm.inode(bi).size();
        let k = &self.known;
        let same = |hash: Hash, ri: u32| {
            Ok((
                Entry {
                    inode: bi,
                    size,
                    hash,
                    source: Source::Same { inode: ri },
                },
                None,
            ))
        };
        if let Some(&(ri, h)) = k.same.get(&bi) {
            let hash = h.or_else(|| self.view.known_hash(bi)).unwrap_or([0; 32]);
            return same(hash, ri);
        }
        if let Some(h) = self.view.known_hash(bi) {
            if let Some(&ri) = k.r_by_hash.get(&h) {
                return same(h, ri);
            }
        }
        if let Some((e, bytes)) = k.inline.get(&bi) {
            if let Some(&ri) = k.r_by_hash.get(&e.hash) {
                return same(e.hash, ri);
            }
            return Ok((e.clone(), Some(bytes.clone())));
        }
        self.computed(bi, size)
    }

    /// A base content no hydration step left a reverse differential for:
    /// read from the base (missing if it cannot be), then `same` by hash, or
    /// a differential from R's file at its path, or compressed whole.
    fn computed(&self, bi: u32, size: u64) -> Result<Made> {
        let (b, known) = match self.view.get(bi) {
            Ok(x) => x,
            Err(why) => {
                tracing::warn!(base_file = %self.view.bpath(bi), %why, "reverse differential cannot be computed");
                let hash = self.view.known_hash(bi).unwrap_or([0; 32]);
                let e = Entry {
                    inode: bi,
                    size,
                    hash,
                    source: Source::Missing,
                };
                return Ok((e, None));
            }
        };
        let hash = match known {
            Some(h) => h,
            None => b
                .hash()
                .map_err(Error::io(self.dir, "read a scratch file"))?,
        };
        if let Some(&ri) = self.known.r_by_hash.get(&hash) {
            let e = Entry {
                inode: bi,
                size,
                hash,
                source: Source::Same { inode: ri },
            };
            return Ok((e, None));
        }
        let rb = match self.rc.at_path(self.rm, &self.bm.path_of(bi)) {
            Some(ri) => Some((ri, self.rr.read(ri, self.mem_limit, self.dir)?)),
            None => None,
        };
        let (bytes, payload) = encode(self.enc, rb.as_ref().map(|x| &x.1), &b, self.dir)?;
        let source = match rb {
            Some((ri, _)) => Source::Delta { inode: ri, payload },
            None => Source::Full { payload },
        };
        let e = Entry {
            inode: bi,
            size,
            hash,
            source,
        };
        Ok((e, Some(bytes)))
    }
}

/// The entry of the base's metadata region: `same` when R's is identical,
/// else a differential from R's; missing without the base's.
fn metadata_entry(bmb: &[u8], r_meta: &[u8], enc: &Encoder, dir: &Path) -> Result<Made> {
    let hash = *blake3::hash(bmb).as_bytes();
    let size = bmb.len() as u64;
    if bmb == r_meta {
        let source = Source::Same { inode: 0 };
        let e = Entry {
            inode: 0,
            size,
            hash,
            source,
        };
        return Ok((e, None));
    }
    let from = Blob::Mem(r_meta.to_vec());
    let (bytes, payload) = encode(enc, Some(&from), &Blob::Mem(bmb.to_vec()), dir)?;
    let e = Entry {
        inode: 0,
        size,
        hash,
        source: Source::Delta { inode: 0, payload },
    };
    Ok((e, Some(bytes)))
}

/// A reverse differential of `to` from `from` (none: compressed whole).
fn encode(
    enc: &Encoder,
    from: Option<&Blob>,
    to: &Blob,
    dir: &Path,
) -> Result<(Vec<u8>, RevPayload)> {
    let mut bytes = Vec::new();
    let frames = enc
        .encode(from, to, &mut bytes)
        .map_err(Error::io(dir, "compress"))?;
    let payload = RevPayload {
        offset: 0,
        len: bytes.len() as u64,
        hash: *blake3::hash(&bytes).as_bytes(),
        frames,
    };
    Ok((bytes, payload))
}

/// Puts the differentials' bytes in the spool in table order, and their
/// offsets in the data section into the entries.
struct Placer<'a> {
    spool: &'a Spool,
    dir: &'a Path,
    offset: u64,
    data: Vec<(u64, u64)>,
}

impl Placer<'_> {
    fn place(&mut self, (mut e, bytes): Made) -> Result<Entry> {
        let Some(bytes) = bytes else {
            return Ok(e);
        };
        let at = self
            .spool
            .append(&bytes)
            .map_err(Error::io(self.dir, "write a scratch file"))?;
        self.data.push((at, bytes.len() as u64));
        match &mut e.source {
            Source::Delta { payload, .. } | Source::Full { payload } => {
                payload.offset = self.offset;
            }
            Source::Missing | Source::Same { .. } => {
                unreachable!("bytes only for differentials")
            }
        }
        self.offset += bytes.len() as u64;
        Ok(e)
    }
}

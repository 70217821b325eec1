//! How the device obtains base contents: the fragment itself, or the
//! fragment plus its reverse differentials; and the base's metadata.
//!
//! Everything comes from the one `Fragment` opened (and verified) at the
//! start, or from the reverse file checked against its checksum: the base
//! header is the one verified at open, never read again from the path.

use super::fail::{BaseError, BaseMetaError, RebuildError, Unavailable};
use super::{rev_path_of, ApplyReport, Ctx};
use crate::blob::{Blob, BlobSink};
use crate::codec::decode;
use crate::content::{metadata_bytes, path_string, Contents, Reader};
use crate::error::{Error, Result};
use crate::rev::{RevFile, RevPayload, Source};
use crate::wire::{hex, Hash};
use fragments::format::HEADER_SIZE as FRAG_HEADER;
use fragments::{Fragment, Header, Metadata, RegionKind, Trust};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// How base contents are obtained on this device.
pub(super) enum Base<'a> {
    /// The fragment is the base.
    Direct { reader: Reader<'a> },
    /// The fragment and its reverse differentials.
    Rev {
        reader: Reader<'a>,
        rev: Box<RevFile>,
        /// The contents of the device's fragment.
        contents: Contents,
    },
    /// Nothing of the base can be had (why).
    Unavailable(Arc<Unavailable>),
}

/// The base's metadata region, verified: the device fragment's own, or
/// rebuilt through the reverse file and checked against its hash.
pub(super) struct BaseMeta {
    pub(super) meta: Metadata,
    pub(super) contents: Contents,
    pub(super) bytes: Vec<u8>,
    /// The base's signed header: the device fragment's as verified at
    /// open, or the one the reverse file stores (and its id names).
    pub(super) header: Box<[u8; FRAG_HEADER]>,
}

pub(super) struct BaseView<'a> {
    pub(super) base: Base<'a>,
    /// The base's metadata, when known.
    pub(super) meta: Option<BaseMeta>,
    pub(super) mem_limit: u64,
    /// Frame size of the reverse differentials this apply writes.
    pub(super) rev_frame_size: u64,
    pub(super) dir: PathBuf,
}

/// Opens the device's fragment. Without it, a repair source supplies
/// every item (a warning says so); else the error stands.
pub(super) fn open_fragment(cx: &Ctx, report: &mut ApplyReport) -> Result<Option<Fragment>> {
    match Fragment::open(cx.fragment, Trust::Keys(cx.trusted)) {
        Ok(n) => Ok(Some(n)),
        Err(e) if cx.opts.repair_source.is_some() => {
            report
                .warnings
                .push(format!("{e}: every item will come from the repair source"));
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

impl<'a> BaseView<'a> {
    /// The base view of the device's fragment `n` (none: unavailable), with
    /// the base's metadata when it can be had.
    pub(super) fn open(
        cx: &Ctx,
        n: Option<&'a Fragment>,
        report: &mut ApplyReport,
    ) -> Result<BaseView<'a>> {
        let mut view = BaseView {
            base: choose(cx, n, report)?,
            meta: None,
            mem_limit: cx.opts.mem_limit,
            rev_frame_size: cx.opts.rev_frame_size,
            dir: cx.dir.clone(),
        };
        view.load_meta();
        Ok(view)
    }

    /// The base's metadata; on failure the whole base becomes unavailable.
    fn load_meta(&mut self) {
        let got = match &self.base {
            Base::Unavailable(_) => return,
            Base::Direct { reader } => metadata_bytes(reader.frag)
                .map(|b| (b, Box::new(*reader.frag.header_bytes())))
                .map_err(|e| BaseMetaError::Read(Box::new(e))),
            Base::Rev { reader, rev, .. } => rev_metadata(reader.frag, rev, &self.dir),
        };
        let (bytes, header) = match got {
            Ok(x) => x,
            Err(e) => {
                self.base = Base::Unavailable(Arc::new(Unavailable::NoMetadata(e)));
                return;
            }
        };
        let why = match Header::decode_detached(Path::new("base header"), &header) {
            Err(e) => Unavailable::BadMetaHeader(Box::new(e)),
            Ok(h) => match Metadata::decode(&bytes, &h.regions, h.inode_count, h.dentry_count) {
                Err(f) => Unavailable::BadMetaTables(f.what),
                Ok(meta) => {
                    let contents = Contents::of(&meta);
                    self.meta = Some(BaseMeta {
                        meta,
                        contents,
                        bytes,
                        header,
                    });
                    return;
                }
            },
        };
        self.base = Base::Unavailable(Arc::new(why));
    }

    /// Why nothing of the base can be had, if so.
    pub(super) fn unavailable(&self) -> Option<&Arc<Unavailable>> {
        match &self.base {
            Base::Unavailable(why) => Some(why),
            _ => None,
        }
    }

    /// The device's fragment, when the base comes from it.
    pub(super) fn fragment(&self) -> Option<&'a Fragment> {
        match &self.base {
            Base::Direct { reader } | Base::Rev { reader, .. } => Some(reader.frag),
            Base::Unavailable(_) => None,
        }
    }

    /// The blake3 of base content `bi` as the reverse file records it.
    pub(super) fn known_hash(&self, bi: u32) -> Option<Hash> {
        match &self.base {
            Base::Rev { rev, .. } => rev
                .table
                .entry(bi)
                .map(|e| e.hash)
                .filter(|h| h != &[0; 32]),
            _ => None,
        }
    }

    pub(super) fn bpath(&self, bi: u32) -> String {
        match &self.meta {
            Some(m) if (bi as usize) < m.meta.inodes.len() => path_string(&m.meta, bi),
            _ => format!("inode {bi}"),
        }
    }

    /// A base content with its hash when this view vouches for it already.
    pub(super) fn get(&self, bi: u32) -> Result<(Blob, Option<Hash>), BaseError> {
        match &self.base {
            Base::Unavailable(why) => Err(BaseError::Unavailable(why.clone())),
            Base::Direct { reader } => reader
                .read(bi, self.mem_limit, &self.dir)
                .map(|b| (b, None))
                .map_err(|error| BaseError::Unreadable {
                    base_file: self.bpath(bi),
                    error: Box::new(error),
                }),
            Base::Rev { reader, rev, .. } => self.get_through_rev(reader, rev, bi),
        }
    }

    fn get_through_rev(
        &self,
        reader: &Reader,
        rev: &RevFile,
        bi: u32,
    ) -> Result<(Blob, Option<Hash>), BaseError> {
        let e = rev.table.entry(bi).ok_or_else(|| BaseError::NoEntry {
            base_file: self.bpath(bi),
            rev: rev.path.clone(),
        })?;
        let rebuilt = |error| BaseError::Rebuild {
            base_file: self.bpath(bi),
            error,
        };
        let blob = match &e.source {
            Source::Missing => {
                return Err(BaseError::Missing {
                    base_file: self.bpath(bi),
                    fragment: reader.frag.path().to_owned(),
                })
            }
            // N's bytes are verified against N's signed block hashes and
            // the table against its checksum: no second hash pass here
            // (pieces that start from this content hash it, the input check).
            Source::Same { inode } => {
                let known = Some(e.hash).filter(|h| h != &[0; 32]);
                return Ok((self.read_device(reader, *inode)?, known));
            }
            Source::Delta { inode, payload } => {
                let n = self.read_device(reader, *inode)?;
                self.rebuild(rev, Some(&n), payload, e.size)
                    .map_err(rebuilt)?
            }
            Source::Full { payload } => {
                self.rebuild(rev, None, payload, e.size).map_err(rebuilt)?
            }
        };
        let h = blob.hash().map_err(BaseError::Scratch)?;
        if h != e.hash || blob.len() != e.size {
            return Err(BaseError::Reconstructed {
                base_file: self.bpath(bi),
                got: h,
                want: e.hash,
            });
        }
        Ok((blob, Some(h)))
    }

    /// Content `ni` of the device's fragment, named by a reverse entry.
    fn read_device(&self, reader: &Reader, ni: u32) -> Result<Blob, BaseError> {
        let n_meta = reader.frag.metadata();
        if ni as usize >= n_meta.inodes.len() || n_meta.extents_of(ni).is_empty() {
            return Err(BaseError::NoContent(ni));
        }
        reader
            .read(ni, self.mem_limit, &self.dir)
            .map_err(|error| BaseError::DeviceFile {
                file: path_string(n_meta, ni),
                fragment: reader.frag.path().to_owned(),
                error: Box::new(error),
            })
    }

    /// A base content of `size` bytes from its reverse differential.
    fn rebuild(
        &self,
        rev: &RevFile,
        base: Option<&Blob>,
        p: &RevPayload,
        size: u64,
    ) -> Result<Blob, RebuildError> {
        let data = rev.payload(p).map_err(RebuildError::Payload)?;
        let mut sink =
            BlobSink::new(size, self.mem_limit, &self.dir).map_err(RebuildError::Scratch)?;
        decode(
            base,
            &data,
            &p.frames,
            size,
            rev.table.frame_size,
            &mut sink,
        )
        .map_err(RebuildError::Decode)?;
        sink.finish().map_err(RebuildError::Scratch)
    }
}

/// Which base this device has: the fragment itself, the fragment and its
/// reverse differentials, or none (why). A reverse file for another base
/// than the package's is refused outright.
fn choose<'a>(cx: &Ctx, n: Option<&'a Fragment>, report: &mut ApplyReport) -> Result<Base<'a>> {
    let unavailable = |why| Ok(Base::Unavailable(Arc::new(why)));
    let Some(n) = n else {
        return unavailable(Unavailable::NotOpened(cx.fragment.to_owned()));
    };
    let (pkg, m) = (&cx.pkg, &cx.pkg.manifest);
    if n.id() == pkg.header.base_id {
        report.from_base = true;
        return Ok(Base::Direct {
            reader: Reader::new(n),
        });
    }
    let rev_in = cx
        .opts
        .reverse
        .clone()
        .unwrap_or_else(|| rev_path_of(cx.fragment));
    match RevFile::open(&rev_in) {
        Ok(rev) if rev.header.base_id != pkg.header.base_id => Err(Error::WrongBase {
            what: format!(
                "{} derives from base {}; {} is for base {} ({} {})",
                cx.fragment.display(),
                hex(&rev.header.base_id),
                cx.package.display(),
                hex(&pkg.header.base_id),
                m.base_name,
                m.base_version
            ),
        }),
        Ok(rev) if rev.header.fragment_id != n.id() => unavailable(Unavailable::StaleRev {
            rev: rev_in,
            fragment: cx.fragment.to_owned(),
        }),
        Ok(rev) => Ok(Base::Rev {
            reader: Reader::new(n),
            rev: Box::new(rev),
            contents: Contents::of(n.metadata()),
        }),
        Err(e) if rev_in.exists() => unavailable(Unavailable::RevUnusable(Box::new(e))),
        Err(_) => unavailable(Unavailable::NotBase {
            fragment: cx.fragment.to_owned(),
            base_name: m.base_name.clone(),
            base_version: m.base_version.clone(),
            base_id: pkg.header.base_id,
            rev: rev_in,
        }),
    }
}

/// The base's metadata bytes and header on a device at N: N's metadata,
/// or rebuilt from it through the reverse file's metadata entry.
fn rev_metadata(
    frag: &Fragment,
    rev: &RevFile,
    dir: &Path,
) -> Result<(Vec<u8>, Box<[u8; FRAG_HEADER]>), BaseMetaError> {
    let e = &rev.table.metadata;
    let n_meta = metadata_bytes(frag).map_err(|e| BaseMetaError::Read(Box::new(e)));
    // The reverse file is local, unsigned state: its metadata size must be
    // the one the stored base header signs for.
    let want = Header::decode_detached(&rev.path, &rev.base_header)
        .map(|h| h.regions[h.region_of(RegionKind::Metadata)].logical_len)
        .map_err(|e| BaseMetaError::Header(Box::new(e)));
    let bytes = match (&e.source, n_meta, want) {
        (_, _, Err(x)) | (_, Err(x), _) => return Err(x),
        (_, _, Ok(w)) if w != e.size => {
            return Err(BaseMetaError::Size {
                entry: e.size,
                header: w,
            })
        }
        (Source::Same { .. }, Ok(nb), _) => nb,
        (Source::Delta { payload, .. }, Ok(nb), _) => {
            rebuild_metadata(rev, Some(Blob::Mem(nb)), payload, e.size, dir)?
        }
        (Source::Full { payload }, Ok(_), _) => rebuild_metadata(rev, None, payload, e.size, dir)?,
        (Source::Missing, _, _) => return Err(BaseMetaError::Missing),
    };
    if blake3::hash(&bytes).as_bytes() != &e.hash {
        return Err(BaseMetaError::Hash);
    }
    Ok((bytes, rev.base_header.clone()))
}

fn rebuild_metadata(
    rev: &RevFile,
    base: Option<Blob>,
    p: &RevPayload,
    size: u64,
    dir: &Path,
) -> Result<Vec<u8>, BaseMetaError> {
    let data = rev.payload(p).map_err(BaseMetaError::Payload)?;
    let mut sink = BlobSink::new(size, u64::MAX, dir).map_err(BaseMetaError::Scratch)?;
    decode(
        base.as_ref(),
        &data,
        &p.frames,
        size,
        rev.table.frame_size,
        &mut sink,
    )
    .map_err(BaseMetaError::Decode)?;
    match sink.finish().map_err(BaseMetaError::Scratch)? {
        Blob::Mem(v) => Ok(v),
        Blob::Scratch { .. } => unreachable!("a sink without a memory limit stays in memory"),
    }
}

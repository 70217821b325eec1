//! How the device obtains base contents: the fragment itself, or the
//! fragment plus its reverse differentials.

use super::*;
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
    Unavailable(String),
}

pub(super) struct BaseView<'a> {
    pub(super) base: Base<'a>,
    /// The base's metadata and contents, when known.
    pub(super) meta: Option<(Metadata, Contents)>,
    pub(super) meta_bytes: Option<Vec<u8>>,
    pub(super) mem_limit: u64,
    /// Frame size of the reverse differentials this apply writes.
    pub(super) rev_frame_size: u64,
    pub(super) dir: PathBuf,
}

impl BaseView<'_> {
    pub(super) fn bpath(&self, bi: u32) -> String {
        match &self.meta {
            Some((m, _)) if (bi as usize) < m.inodes.len() => path_string(m, bi),
            _ => format!("inode {bi}"),
        }
    }

    /// A base content with its hash when this view vouches for it already.
    pub(super) fn get(&self, bi: u32) -> std::result::Result<(Blob, Option<Hash>), String> {
        let (reader, rev) = match &self.base {
            Base::Unavailable(why) => return Err(why.clone()),
            Base::Direct { reader } => {
                return reader
                    .read(bi, self.mem_limit, &self.dir)
                    .map(|b| (b, None))
                    .map_err(|e| format!("base file {} unreadable: {e}", self.bpath(bi)));
            }
            Base::Rev { reader, rev, .. } => (reader, rev),
        };
        let n_meta = reader.frag.metadata();
        let e = rev.table.entry(bi).ok_or_else(|| {
            format!(
                "no reverse differential for base file {} in {}",
                self.bpath(bi),
                rev.path.display()
            )
        })?;
        let read_n = |ni: u32| -> std::result::Result<Blob, String> {
            if ni as usize >= n_meta.inodes.len() || n_meta.extents_of(ni).is_empty() {
                return Err(format!(
                    "reverse differential names inode {ni}, which holds no content"
                ));
            }
            reader.read(ni, self.mem_limit, &self.dir).map_err(|err| {
                format!(
                    "file {} of {} is corrupt: {err}",
                    path_string(n_meta, ni),
                    reader.frag.path().display()
                )
            })
        };
        let decoded = |base: Option<&Blob>, p: &RevPayload| -> std::result::Result<Blob, String> {
            let data = rev.payload(p)?;
            let mut sink =
                BlobSink::new(e.size, self.mem_limit, &self.dir).map_err(|x| x.to_string())?;
            decode(
                base,
                &data,
                &p.frames,
                e.size,
                rev.table.frame_size,
                &mut sink,
            )
            .map_err(|x| format!("reverse differential does not decode: {x}"))?;
            sink.finish().map_err(|x| x.to_string())
        };
        let blob = match &e.source {
            Source::Missing => {
                return Err(format!(
                    "reverse differential for base file {} is missing (it could not be computed when {} was hydrated)",
                    self.bpath(bi),
                    reader.frag.path().display()
                ))
            }
            // N's bytes are verified against N's signed block hashes and
            // the table against its checksum: no second hash pass here
            // (pieces that start from this content hash it, the input check).
            Source::Same { inode } => {
                return Ok((read_n(*inode)?, Some(e.hash).filter(|h| h != &[0; 32])))
            }
            Source::Delta { inode, payload } => {
                let n = read_n(*inode)?;
                decoded(Some(&n), payload).map_err(|x| format!("base file {}: {x}", self.bpath(bi)))?
            }
            Source::Full { payload } => decoded(None, payload).map_err(|x| format!("base file {}: {x}", self.bpath(bi)))?,
        };
        let h = blob.hash().map_err(|x| x.to_string())?;
        if h != e.hash || blob.len() != e.size {
            return Err(format!(
                "base file {} as reconstructed has blake3 {}, its reverse differential promises {}",
                self.bpath(bi),
                hex(&h),
                hex(&e.hash)
            ));
        }
        Ok((blob, Some(h)))
    }
}

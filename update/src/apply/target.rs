//! R's metadata: the base's metadata and the package's metadata piece (a
//! delta, or the whole region), checked against the signed output hash.
//! Without it nothing can be laid out: it comes from the repair source, or
//! the apply stops listing everything else it can already see is broken.

use super::base::BaseView;
use super::fail::{Failed, ItemError, MetadataError};
use super::{ApplyReport, Ctx};
use crate::blob::{Blob, BlobSink};
use crate::codec::decode;
use crate::content::{metadata_bytes, Contents};
use crate::error::{Error, Result};
use crate::package::PieceKind;
use fragments::{Fragment, Header, Metadata};

/// The target fragment as far as its header and metadata describe it.
pub(super) struct Target {
    pub(super) header: Header,
    /// R's metadata region, logical bytes.
    pub(super) meta_bytes: Vec<u8>,
    pub(super) meta: Metadata,
    pub(super) contents: Contents,
}

impl Target {
    pub(super) fn load(
        cx: &Ctx,
        view: &BaseView,
        header: Header,
        repair: Option<&Fragment>,
        report: &mut ApplyReport,
    ) -> Result<Target> {
        let meta_bytes = match decode_metadata(cx, view) {
            Ok(v) => v,
            Err(e) => {
                let failed = Failed {
                    path: "metadata region".into(),
                    error: ItemError::Metadata(e),
                };
                let Some(src) = repair else {
                    return Err(unhydratable(cx, view, failed));
                };
                report.repaired.push(failed.into());
                metadata_bytes(src)?
            }
        };
        let meta = Metadata::decode(
            &meta_bytes,
            &header.regions,
            header.inode_count,
            header.dentry_count,
        )
        .map_err(|f| Error::Mismatch {
            what: format!("target metadata does not decode: {}", f.what),
        })?;
        let contents = Contents::of(&meta);
        Ok(Target {
            header,
            meta_bytes,
            meta,
            contents,
        })
    }
}

/// R's metadata region from the package, checked: its input (the base's
/// metadata) and its output against the signed manifest.
fn decode_metadata(cx: &Ctx, view: &BaseView) -> Result<Vec<u8>, MetadataError> {
    let m = &cx.pkg.manifest;
    let p = &m.metadata;
    let payload = p.payload.as_ref().expect("decode checked");
    let data = cx.pkg.payload(payload).map_err(MetadataError::Payload)?;
    let base = match p.kind {
        PieceKind::Delta => {
            let b = match (&view.meta, view.unavailable()) {
                (Some(bm), _) => bm.bytes.clone(),
                (None, Some(why)) => return Err(MetadataError::BaseUnavailable(why.clone())),
                (None, None) => return Err(MetadataError::NoBaseMetadata),
            };
            if Some(blake3::hash(&b).as_bytes()) != p.base.as_ref().map(|b| &b.hash) {
                return Err(MetadataError::InputCheck);
            }
            Some(Blob::Mem(b))
        }
        _ => None,
    };
    let mut sink = BlobSink::new(p.size, u64::MAX, &cx.dir).map_err(MetadataError::Scratch)?;
    decode(
        base.as_ref(),
        &data,
        &payload.frames,
        p.size,
        m.frame_size,
        &mut sink,
    )
    .map_err(MetadataError::Decode)?;
    let v = match sink.finish().map_err(MetadataError::Scratch)? {
        Blob::Mem(v) => v,
        Blob::Scratch { .. } => unreachable!("a sink without a memory limit stays in memory"),
    };
    if blake3::hash(&v).as_bytes() != &p.out_hash {
        return Err(MetadataError::OutputCheck);
    }
    Ok(v)
}

/// Without R's metadata nothing can be laid out: the error lists the
/// metadata, then what else is corrupt in the package (or needs the
/// unavailable base), then stops.
fn unhydratable(cx: &Ctx, view: &BaseView, metadata: Failed) -> Error {
    let base_gone = view.unavailable();
    let mut failed = vec![metadata];
    for p in &cx.pkg.manifest.pieces {
        let payload_err = p.payload.as_ref().and_then(|pl| cx.pkg.payload(pl).err());
        let error = match (payload_err, base_gone) {
            (Some(e), _) => ItemError::Payload(e),
            (None, Some(why)) if p.base.is_some() => ItemError::NeedsBase {
                kind: p.kind,
                why: why.clone(),
            },
            _ => continue,
        };
        failed.push(Failed {
            path: String::from_utf8_lossy(&p.path).into_owned(),
            error,
        });
    }
    if base_gone.is_some() {
        failed.push(Failed {
            path: "(files unchanged from the base)".into(),
            error: ItemError::UnchangedUnnamed,
        });
    }
    Error::Items {
        items: failed.into_iter().map(Into::into).collect(),
        repair_tried: false,
    }
}

//! Repair: every item the hydration pass could not make is read from the
//! repair source (the full, signed R), or the apply fails naming them all.

use super::fail::{Failed, ItemError, RepairError};
use super::hydrate::{Done, Hydration};
use super::output::Output;
use super::target::Target;
use super::{ApplyReport, Ctx};
use crate::content::Reader;
use crate::error::{CorruptItem, Error, Result};
use crate::wire::Hash;
use fragments::Fragment;

/// The contents done, the repaired ones included; or every failure.
pub(super) fn run(
    cx: &Ctx,
    target: &Target,
    output: &Output,
    hydration: Hydration,
    repair: Option<&Fragment>,
    report: &mut ApplyReport,
) -> Result<Vec<Done>> {
    let Hydration { mut done, failed } = hydration;
    if failed.is_empty() {
        return Ok(done);
    }
    let Some(src) = repair else {
        let mut items: Vec<CorruptItem> = failed.into_iter().map(|f| f.1.into()).collect();
        items.sort_by(|a, b| a.path.cmp(&b.path));
        return Err(Error::Items {
            items,
            repair_tried: false,
        });
    };
    let rm = &target.meta;
    let sr = Reader::new(src);
    let need: u64 = failed.iter().map(|f| rm.inode(f.0).size()).sum();
    cx.progress.phase("repairing", need);
    let mut still: Vec<CorruptItem> = Vec::new();
    for (ri, failed) in failed {
        match repair_one(cx, &sr, target, output, ri) {
            Ok(hash) => {
                tracing::warn!(path = %failed.path, what = %failed.error, "repaired from the repair source");
                report.repaired.push(failed.into());
                done.push(Done {
                    ri,
                    hash: Some(hash),
                    same_as: None,
                    rev: None,
                    kind: None,
                    current: false,
                });
            }
            Err(repair) => still.push(
                Failed {
                    path: failed.path,
                    error: ItemError::RepairFailed {
                        error: Box::new(failed.error),
                        repair,
                    },
                }
                .into(),
            ),
        }
        cx.progress.advance(rm.inode(ri).size());
    }
    if !still.is_empty() {
        return Err(Error::Items {
            items: still,
            repair_tried: true,
        });
    }
    Ok(done)
}

/// Content `ri` from the repair source, written; its blake3.
fn repair_one(
    cx: &Ctx,
    sr: &Reader,
    target: &Target,
    output: &Output,
    ri: u32,
) -> Result<Hash, RepairError> {
    let b = sr
        .read(ri, cx.opts.mem_limit, &cx.dir)
        .map_err(|e| RepairError::Read(Box::new(e)))?;
    output
        .write_content(&target.meta, ri, &b)
        .map_err(RepairError::Io)?;
    b.hash().map_err(RepairError::Io)
}

//! What can fail for one item of an apply, typed. A failure is recorded
//! with the path it belongs to and the apply goes on; the text of the
//! report (`CorruptItem`) is made from it only where the report or the
//! final `Error::Items` is built.
//!
//! The messages are the ones the CLI prints: tests and users match on them.

use crate::codec::DecodeError;
use crate::error::{CorruptItem, PayloadError};
use crate::package::PieceKind;
use crate::wire::{hex, Hash};
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

/// Why nothing of the base can be had on this device.
#[derive(Debug, thiserror::Error)]
pub(super) enum Unavailable {
    #[error("{} cannot be opened", .0.display())]
    NotOpened(PathBuf),
    #[error("{} belongs to another fragment than {} (stale reverse differentials)", rev.display(), fragment.display())]
    StaleRev { rev: PathBuf, fragment: PathBuf },
    #[error("reverse differentials unusable: {0}")]
    RevUnusable(Box<crate::Error>),
    #[error("{} is not the package's base ({base_name} {base_version}, id {}) and its reverse differentials {} are missing", fragment.display(), hex(base_id), rev.display())]
    NotBase {
        fragment: PathBuf,
        base_name: String,
        base_version: String,
        base_id: Hash,
        rev: PathBuf,
    },
    /// The base header (stored in the reverse file) does not decode.
    #[error("base metadata unusable: {0}")]
    BadMetaHeader(Box<fragments::Error>),
    /// The base metadata region does not decode (what fragments said).
    #[error("base metadata unusable: {0}")]
    BadMetaTables(String),
    #[error("base metadata unavailable: {0}")]
    NoMetadata(BaseMetaError),
}

/// Why the base's metadata region cannot be had.
#[derive(Debug, thiserror::Error)]
pub(super) enum BaseMetaError {
    /// Reading (and verifying) the device fragment's metadata region.
    #[error("{0}")]
    Read(Box<crate::Error>),
    /// The base header stored in the reverse file does not decode.
    #[error("{0}")]
    Header(Box<fragments::Error>),
    #[error("metadata entry of {entry} bytes, the base header says {header}")]
    Size { entry: u64, header: u64 },
    #[error("{0}")]
    Payload(PayloadError),
    #[error("{0}")]
    Scratch(io::Error),
    #[error("{0}")]
    Decode(DecodeError),
    #[error("its reverse differential is missing")]
    Missing,
    #[error("reconstructed base metadata does not match its hash")]
    Hash,
}

/// Why one base content cannot be had.
#[derive(Debug, thiserror::Error)]
pub(super) enum BaseError {
    #[error("{0}")]
    Unavailable(Arc<Unavailable>),
    #[error("base file {base_file} unreadable: {error}")]
    Unreadable {
        base_file: String,
        error: Box<crate::Error>,
    },
    #[error("no reverse differential for base file {base_file} in {}", rev.display())]
    NoEntry { base_file: String, rev: PathBuf },
    #[error("reverse differential names inode {0}, which holds no content")]
    NoContent(u32),
    #[error("file {file} of {} is corrupt: {error}", fragment.display())]
    DeviceFile {
        file: String,
        fragment: PathBuf,
        error: Box<crate::Error>,
    },
    #[error("reverse differential for base file {base_file} is missing (it could not be computed when {} was hydrated)", fragment.display())]
    Missing {
        base_file: String,
        fragment: PathBuf,
    },
    #[error("base file {base_file}: {error}")]
    Rebuild {
        base_file: String,
        error: RebuildError,
    },
    #[error("{0}")]
    Scratch(io::Error),
    #[error("base file {base_file} as reconstructed has blake3 {}, its reverse differential promises {}", hex(got), hex(want))]
    Reconstructed {
        base_file: String,
        got: Hash,
        want: Hash,
    },
}

/// Why a reverse differential does not give its base content.
#[derive(Debug, thiserror::Error)]
pub(super) enum RebuildError {
    #[error("{0}")]
    Payload(PayloadError),
    #[error("{0}")]
    Scratch(io::Error),
    #[error("reverse differential does not decode: {0}")]
    Decode(DecodeError),
}

/// Why part of an unchanged content could not be copied from the base.
#[derive(Debug, thiserror::Error)]
pub(super) enum CopyError {
    #[error("{len} bytes at {off} are past its end")]
    PastEnd { len: u64, off: u64 },
    #[error("{0}")]
    Read(Box<fragments::Error>),
    #[error("writing the output: {0}")]
    Write(io::Error),
}

/// Why the target's metadata region could not be decoded from the package.
#[derive(Debug, thiserror::Error)]
pub(super) enum MetadataError {
    #[error("{0}")]
    Payload(PayloadError),
    #[error("base metadata unavailable: {0}")]
    BaseUnavailable(Arc<Unavailable>),
    #[error("base metadata unavailable")]
    NoBaseMetadata,
    #[error("input check failed: the base metadata is not the one the package was made against")]
    InputCheck,
    #[error("{0}")]
    Scratch(io::Error),
    #[error("{0}")]
    Decode(DecodeError),
    #[error("output check failed: decoded metadata does not match the manifest")]
    OutputCheck,
}

/// Why the repair source did not give an item either.
#[derive(Debug, thiserror::Error)]
pub(super) enum RepairError {
    #[error("{0}")]
    Read(Box<crate::Error>),
    #[error("{0}")]
    Io(io::Error),
}

/// Why one item (a content of the target, its metadata region) could not
/// be hydrated.
#[derive(Debug, thiserror::Error)]
pub(super) enum ItemError {
    #[error("unchanged from the base, which is unavailable: {0}")]
    UnchangedBaseUnavailable(Arc<Unavailable>),
    #[error("unchanged from the base, whose metadata is unavailable")]
    UnchangedNoBaseMetadata,
    #[error("the package has no piece for it and the base has no file at this path")]
    NotInBase,
    #[error("unchanged from the base, but {0}")]
    Unchanged(BaseError),
    #[error("unchanged from the base, but base file {base_file} is corrupt: {error}")]
    CopyFromBase { base_file: String, error: CopyError },
    #[error("{0}")]
    Payload(PayloadError),
    #[error("base content for the {} from {base_file} unavailable: {error}", kind_name(*kind))]
    BaseFor {
        kind: PieceKind,
        base_file: String,
        error: BaseError,
    },
    #[error(
        "input (base file {base_file}) check failed: blake3 {} where the manifest says {}",
        hex(got),
        hex(want)
    )]
    InputCheck {
        base_file: String,
        got: Hash,
        want: Hash,
    },
    #[error(
        "output check failed: blake3 {} where the manifest says {}",
        hex(got),
        hex(want)
    )]
    OutputCheck { got: Hash, want: Hash },
    #[error("forward differential does not decode: {0}")]
    Decode(DecodeError),
    #[error("copy without a base")]
    CopyWithoutBase,
    #[error("reverse differential: {0}")]
    ReverseEncode(io::Error),
    #[error("content is {got} bytes, the metadata says {want}")]
    Size { got: u64, want: u64 },
    #[error("writing the output: {0}")]
    Write(io::Error),
    /// A scratch file, or a content held in one.
    #[error("{0}")]
    Scratch(io::Error),
    /// The target's metadata region.
    #[error("{0}")]
    Metadata(MetadataError),
    /// Listed when the target's metadata cannot be had without the base.
    #[error("its {} needs the base, which is unavailable: {why}", kind_name(*kind))]
    NeedsBase {
        kind: PieceKind,
        why: Arc<Unavailable>,
    },
    #[error("cannot be named: the target's metadata is a delta against the base's, which is unavailable; a --repair-source supplies it")]
    UnchangedUnnamed,
    #[error("{error}; repair source: {repair}")]
    RepairFailed {
        error: Box<ItemError>,
        repair: RepairError,
    },
}

/// One item that failed: the path it belongs to in the target fragment
/// (or a name such as `metadata region`) and why.
#[derive(Debug)]
pub(super) struct Failed {
    pub(super) path: String,
    pub(super) error: ItemError,
}

impl Failed {
    /// The report's form of this failure.
    pub(super) fn item(&self) -> CorruptItem {
        CorruptItem {
            path: self.path.clone(),
            what: self.error.to_string(),
        }
    }
}

impl From<Failed> for CorruptItem {
    fn from(f: Failed) -> CorruptItem {
        f.item()
    }
}

pub(super) fn kind_name(k: PieceKind) -> &'static str {
    match k {
        PieceKind::Copy => "copy",
        PieceKind::Delta => "forward differential",
        PieceKind::Full => "content",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The report's text is made from the typed errors only when the
    /// report is built; these are the messages the CLI prints.
    #[test]
    fn items_are_reported_with_their_causes() {
        let why = Arc::new(Unavailable::StaleRev {
            rev: "/d/N.frag.rev".into(),
            fragment: "/d/N.frag".into(),
        });
        let f = Failed {
            path: "/bin/big".into(),
            error: ItemError::BaseFor {
                kind: PieceKind::Delta,
                base_file: "/bin/big".into(),
                error: BaseError::Unavailable(why.clone()),
            },
        };
        let item: CorruptItem = f.into();
        assert_eq!(item.path, "/bin/big");
        assert_eq!(
            item.what,
            "base content for the forward differential from /bin/big unavailable: \
             /d/N.frag.rev belongs to another fragment than /d/N.frag (stale reverse differentials)"
        );
        let f = Failed {
            path: "/etc/same".into(),
            error: ItemError::RepairFailed {
                error: Box::new(ItemError::CopyFromBase {
                    base_file: "/etc/same".into(),
                    error: CopyError::PastEnd { len: 10, off: 4096 },
                }),
                repair: RepairError::Io(io::Error::other("disk on fire")),
            },
        };
        assert_eq!(
            f.item().what,
            "unchanged from the base, but base file /etc/same is corrupt: \
             10 bytes at 4096 are past its end; repair source: disk on fire"
        );
        let f = ItemError::Metadata(MetadataError::BaseUnavailable(Arc::new(
            Unavailable::NoMetadata(BaseMetaError::Size {
                entry: 5,
                header: 7,
            }),
        )));
        assert_eq!(
            f.to_string(),
            "base metadata unavailable: base metadata unavailable: \
             metadata entry of 5 bytes, the base header says 7"
        );
        let f = ItemError::NeedsBase {
            kind: PieceKind::Copy,
            why,
        };
        assert!(f
            .to_string()
            .starts_with("its copy needs the base, which is unavailable: /d/N.frag.rev"));
        let f = ItemError::InputCheck {
            base_file: "/a".into(),
            got: [0xab; 32],
            want: [0xcd; 32],
        };
        assert_eq!(
            f.to_string(),
            format!(
                "input (base file /a) check failed: blake3 {} where the manifest says {}",
                "ab".repeat(32),
                "cd".repeat(32)
            )
        );
    }
}

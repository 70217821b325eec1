//! The one error type of this crate: every variant says what and where.

use std::path::PathBuf;

/// What can go wrong opening or serving a volume.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The manifest, a fragment or the merge/layout failed.
    #[error(transparent)]
    Layout(#[from] layout::Error),

    /// A fragment block failed its blake3 check (or could not be read):
    /// nothing of it was returned.
    #[error("volume offset {volume_offset}: {source}")]
    Fragment {
        volume_offset: u64,
        #[source]
        source: fragments::Error,
    },

    /// A request outside the volume.
    #[error("{what} of {len} bytes at offset {offset} is outside the volume ({size} bytes)")]
    OutOfRange {
        what: &'static str,
        offset: u64,
        len: u64,
        size: u64,
    },

    /// A write to a volume without an overlay.
    #[error("volume {name} is read-only: its manifest has no [overlay]")]
    ReadOnly { name: String },

    /// I/O on the overlay file failed.
    #[error("overlay {path}: {op} at offset {offset}")]
    OverlayIo {
        path: PathBuf,
        op: &'static str,
        offset: u64,
        #[source]
        source: std::io::Error,
    },

    /// The overlay file is not a valid overlay.
    #[error("overlay {path}: corrupt at byte {offset}: {what}")]
    OverlayCorrupt {
        path: PathBuf,
        offset: u64,
        what: String,
    },

    /// The overlay was made for another volume (another fragment set or
    /// layout): its block-level writes cannot apply to this one.
    #[error(
        "overlay {path} belongs to volume {overlay_identity} ({overlay_blocks} blocks), \
         but {manifest} describes volume {volume_identity} ({volume_blocks} blocks); \
         an overlay holds block-level writes to one fragment set and cannot follow an update. \
         To start over with an empty overlay: `mosaic overlay reset {manifest}` \
         or `mosaic serve --discard-overlay`"
    )]
    OverlayMismatch {
        path: PathBuf,
        manifest: PathBuf,
        overlay_identity: String,
        overlay_blocks: u64,
        volume_identity: String,
        volume_blocks: u64,
    },

    /// Zeroing that would need writing zeros, asked to be fast only.
    #[error("zeroing without punching holes is not fast")]
    NotFast,

    /// Another process (a server) holds the overlay's lock.
    #[error(
        "overlay {path} is in use by another process (a running `mosaic serve`?); stop it first"
    )]
    OverlayBusy { path: PathBuf },
}

/// How a failed operation should be reported to a block-device client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Verification or I/O failure (EIO).
    Io,
    /// Bad offset or length (EINVAL).
    Invalid,
    /// A write past the end (ENOSPC).
    NoSpace,
    /// A write to a read-only volume (EPERM).
    ReadOnly,
    /// Cannot be done as asked (ENOTSUP): a fast zero that is not fast.
    NotSupported,
}

impl Error {
    /// The client-facing class of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::OutOfRange { what, .. } if what.starts_with("write") => ErrorKind::NoSpace,
            Error::OutOfRange { .. } => ErrorKind::Invalid,
            Error::ReadOnly { .. } => ErrorKind::ReadOnly,
            Error::NotFast => ErrorKind::NotSupported,
            _ => ErrorKind::Io,
        }
    }

    /// The volume offset the error concerns, when there is one.
    pub fn volume_offset(&self) -> Option<u64> {
        match self {
            Error::Fragment { volume_offset, .. } => Some(*volume_offset),
            _ => None,
        }
    }

    /// Whether the input (a file, the manifest) is at fault rather than the
    /// environment: the CLI's exit code 1.
    pub fn is_invalid_input(&self) -> bool {
        match self {
            Error::Layout(e) => e.is_invalid_input(),
            Error::Fragment { source, .. } => source.is_invalid_input(),
            Error::OverlayCorrupt { .. } | Error::OverlayMismatch { .. } => true,
            _ => false,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

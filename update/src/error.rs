//! The one error type of this crate: every variant says what and where.

use std::io;
use std::path::PathBuf;

/// One item that could not be hydrated, named by the file it belongs to.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CorruptItem {
    /// Path of the file in the target fragment (`metadata region` for the
    /// target's metadata).
    pub path: String,
    /// What failed, down to the root cause.
    pub what: String,
}

impl std::fmt::Display for CorruptItem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.what)
    }
}

fn list(items: &[CorruptItem]) -> String {
    items.iter().map(|i| format!("\n  {i}")).collect::<String>()
}

/// The bytes of one differential (in a package or a reverse-differential
/// file) could not be had intact.
#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    #[error("package data unreadable ({0})")]
    PackageUnreadable(io::Error),
    #[error("forward differential in the package is corrupt (blake3 of its {len} bytes at data offset {offset} does not match the signed manifest)")]
    PackageCorrupt { len: u64, offset: u64 },
    #[error("reverse differential unreadable ({0})")]
    RevUnreadable(io::Error),
    #[error("reverse differential is corrupt (blake3 of its {len} bytes at {at} does not match)")]
    RevCorrupt { len: u64, at: u64 },
}

/// Everything that can go wrong making, reading or applying an update.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A fragment could not be opened or read.
    #[error(transparent)]
    Fragment(#[from] fragments::Error),

    /// An I/O error on a file we were told to use: an environment problem.
    #[error("{path}: {op}")]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: io::Error,
    },

    /// The package (or reverse-differential file) is malformed.
    #[error("{path}: corrupt {what_file} at byte {offset}: {what}")]
    Corrupt {
        path: PathBuf,
        what_file: &'static str,
        offset: u64,
        what: String,
    },

    /// A format version or feature this reader does not implement.
    #[error("{path}: unsupported {what_file}: {what}")]
    Unsupported {
        path: PathBuf,
        what_file: &'static str,
        what: String,
    },

    /// The package's signature does not verify against its embedded key.
    #[error("{path}: bad package signature (header bytes 0..{signed_len} were changed or not signed by key {signer})")]
    BadSignature {
        path: PathBuf,
        signer: String,
        signed_len: usize,
    },

    /// The package is validly signed by a key that is not trusted.
    #[error("{path}: package signed by untrusted key {signer}")]
    Untrusted { path: PathBuf, signer: String },

    /// The package was made against another base than the fragment's.
    #[error("wrong base: {what}")]
    WrongBase { what: String },

    /// Items could not be hydrated and no repair source was given (or the
    /// repair source failed too): every one is listed.
    #[error("{} item(s) could not be hydrated{}:{}", items.len(), if *.repair_tried { " even from the repair source" } else { " (no --repair-source given)" }, list(items))]
    Items {
        items: Vec<CorruptItem>,
        repair_tried: bool,
    },

    /// The repair source is not the package's target.
    #[error("{path}: repair source is not the target fragment (id {found}, the package makes {expected})")]
    WrongRepairSource {
        path: PathBuf,
        found: String,
        expected: String,
    },

    /// The hydrated fragment is not byte-identical to the lab's.
    #[error("hydrated fragment refused: {what}")]
    Mismatch { what: String },

    /// Invalid options.
    #[error("{0}")]
    Options(String),
}

impl Error {
    /// True when the input is invalid (corrupt, untrusted, wrong base...):
    /// exit code 1 in the CLI. False for usage and environment errors.
    pub fn is_invalid_input(&self) -> bool {
        match self {
            Error::Fragment(e) => e.is_invalid_input(),
            Error::Io { .. } | Error::Options(_) => false,
            _ => true,
        }
    }

    pub(crate) fn io(
        path: impl Into<PathBuf>,
        op: &'static str,
    ) -> impl FnOnce(io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { path, op, source }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

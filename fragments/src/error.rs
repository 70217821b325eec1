//! The one error type of this crate: every variant says what and where.

use std::io;
use std::path::PathBuf;

/// Which part of a fragment file a fault was found in, for messages.
pub type RegionName = crate::region::RegionKind;

/// Everything that can go wrong building, opening or reading a fragment.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O error on a file we were told to use (the fragment, an output,
    /// a key): an environment problem, not bad input.
    #[error("{path}: {op}")]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: io::Error,
    },

    /// A file of the source tree could not be read during a build.
    #[error("source {path}: {what}")]
    Source {
        path: PathBuf,
        what: String,
        #[source]
        source: Option<io::Error>,
    },

    /// The build options are invalid (name too long, `--owns` not a directory...).
    #[error("{0}")]
    Options(String),

    /// The fragment file is malformed: a structural check failed at `offset`.
    #[error("{path}: corrupt fragment at byte {offset}: {what}")]
    Corrupt {
        path: PathBuf,
        offset: u64,
        what: String,
    },

    /// The fragment ends before a structure it declares.
    #[error("{path}: truncated: need {need} bytes at offset {offset}, file has {have}")]
    Truncated {
        path: PathBuf,
        offset: u64,
        need: u64,
        have: u64,
    },

    /// A format version or feature this reader does not implement.
    #[error("{path}: unsupported fragment format: {what}")]
    Unsupported { path: PathBuf, what: String },

    /// The header's signature does not verify against its embedded key.
    #[error("{path}: bad signature (header bytes 0..{signed_len} were changed or not signed by key {signer})")]
    BadSignature {
        path: PathBuf,
        signer: String,
        signed_len: usize,
    },

    /// The signature is valid but made by a key that is not trusted.
    #[error("{path}: signed by untrusted key {signer}")]
    Untrusted { path: PathBuf, signer: String },

    /// A region's stored hashes do not lead to the signed root.
    #[error("{path}: hash tree of region {region} ({kind}) does not match the signed root")]
    RootMismatch {
        path: PathBuf,
        region: u32,
        kind: RegionName,
    },

    /// A data block does not match its hash.
    #[error(
        "{path}: region {region} ({kind}) block {block} (file offset {file_offset}) fails its blake3 check"
    )]
    BlockMismatch {
        path: PathBuf,
        region: u32,
        kind: RegionName,
        block: u64,
        file_offset: u64,
    },

    /// A read asked for bytes outside a region.
    #[error(
        "{path}: read of {len} bytes at offset {offset} is outside region {region} ({size} bytes)"
    )]
    OutOfRange {
        path: PathBuf,
        region: u32,
        offset: u64,
        len: u64,
        size: u64,
    },

    /// A path looked up in the fragment does not exist or is not what was asked.
    #[error("{path}: {what}")]
    NotFound { path: String, what: &'static str },

    /// A key file could not be understood.
    #[error("{path}: {what}")]
    Key { path: PathBuf, what: String },
}

impl Error {
    /// True when the error means the *input* is invalid (a corrupt or
    /// untrusted fragment, a verification failure): exit code 1 in the CLI.
    /// False for usage and environment errors (including a key file that
    /// is not a key: the operator gave the wrong file): exit code 2.
    pub fn is_invalid_input(&self) -> bool {
        matches!(
            self,
            Error::Corrupt { .. }
                | Error::Truncated { .. }
                | Error::Unsupported { .. }
                | Error::BadSignature { .. }
                | Error::Untrusted { .. }
                | Error::RootMismatch { .. }
                | Error::BlockMismatch { .. }
        )
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

//! The error type of this crate: every variant names what and where.

use crate::conflict::Conflict;
use crate::ext4::limits::Ext4Error;
use std::path::PathBuf;

/// Everything that can go wrong reading a manifest, opening its fragments
/// or merging them.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The manifest file itself could not be read (an environment problem:
    /// the path given on the command line does not exist, permissions...).
    #[error("{path}: {op}")]
    ManifestIo {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },

    /// The manifest is malformed or names something invalid or missing.
    /// Displayed as one `FILE:LINE: message` line per problem (no `:LINE`
    /// when none applies). Never empty.
    #[error("{}", problems_text(path, problems))]
    Manifest {
        path: PathBuf,
        problems: Vec<Problem>,
    },

    /// One or more trust keys could not be read (each error names its file).
    #[error("{}", list("trust key", "could not be read", .0))]
    Keys(Vec<fragments::Error>),

    /// One or more fragments could not be opened: unreadable, corrupt,
    /// unsigned or untrusted (each error names its file).
    #[error("{}", list("fragment", "refused", .0))]
    Fragments(Vec<fragments::Error>),

    /// Two fragment files are the same fragment (same signed header).
    #[error("{} and {} are the same fragment (id {id}); list it once", a.display(), b.display())]
    SameFragment { a: PathBuf, b: PathBuf, id: String },

    /// More fragments than a merge can index.
    #[error("{0} fragments: at most 65535 can be merged")]
    TooManyFragments(usize),

    /// More nodes or entries than 32-bit numbers can hold.
    #[error("the merged tree has more than 2^32 - 1 {0}")]
    TooLarge(&'static str),

    /// The fragments overlap or disagree; every conflict is listed.
    #[error("{}", conflicts_text(.0))]
    Conflicts(Vec<Conflict>),

    /// The merged tree cannot be expressed as the ext4 volume.
    #[error(transparent)]
    Ext4(#[from] Ext4Error),
}

/// One thing wrong with a manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// 1-based line of the offending key or value, when known.
    pub line: Option<usize>,
    /// Names the key (and the file, for a missing one).
    pub message: String,
}

fn problems_text(path: &std::path::Path, problems: &[Problem]) -> String {
    let mut s = String::new();
    for (i, p) in problems.iter().enumerate() {
        if i > 0 {
            s.push('\n');
        }
        s.push_str(&path.display().to_string());
        if let Some(l) = p.line {
            s.push_str(&format!(":{l}"));
        }
        s.push_str(": ");
        s.push_str(&p.message);
    }
    s
}

fn list(what: &str, verb: &str, errors: &[fragments::Error]) -> String {
    let mut s = if errors.len() == 1 {
        format!("1 {what} {verb}:")
    } else {
        format!("{} {what}s {verb}:", errors.len())
    };
    for e in errors {
        s.push_str("\n  ");
        s.push_str(&e.to_string());
    }
    s
}

fn conflicts_text(c: &[Conflict]) -> String {
    let mut s = if c.len() == 1 {
        "1 conflict between fragments:".to_string()
    } else {
        format!("{} conflicts between fragments:", c.len())
    };
    for c in c {
        s.push_str("\n  ");
        s.push_str(&c.to_string());
    }
    s
}

impl Error {
    /// True when the *input* is invalid (a bad manifest, a corrupt,
    /// untrusted or conflicting fragment): exit code 1 in the CLI. False for
    /// environment errors (an unreadable manifest path, an I/O failure, a
    /// key file that is not a key): exit code 2.
    pub fn is_invalid_input(&self) -> bool {
        match self {
            Error::ManifestIo { .. } => false,
            Error::Manifest { .. }
            | Error::SameFragment { .. }
            | Error::TooManyFragments(_)
            | Error::TooLarge(_)
            | Error::Conflicts(_)
            | Error::Ext4(_) => true,
            Error::Keys(e) | Error::Fragments(e) => e.iter().any(|e| e.is_invalid_input()),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

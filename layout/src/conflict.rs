//! Conflicts between fragments: what a merge reports and errors list.
//! A module of its own, below both the merge (which finds them) and the
//! crate's error type (which carries them).

use crate::tree::FragIdx;
use fragments::Kind;
use std::path::PathBuf;

/// Why two fragments cannot be merged at a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ConflictKind {
    /// Both provide the path and at least one of them as a non-directory.
    Overlap,
    /// Both own the directory's security (mode, owner, xattrs) and disagree.
    Security,
}

impl ConflictKind {
    pub fn name(self) -> &'static str {
        match self {
            ConflictKind::Overlap => "overlap",
            ConflictKind::Security => "security",
        }
    }
}

/// One fragment's side of a conflict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConflictSide {
    /// Index into the merge's sorted fragment list.
    pub index: FragIdx,
    /// The fragment file.
    pub file: PathBuf,
    /// The fragment's header name and version.
    pub name: String,
    pub version: String,
    /// What this fragment has at the path.
    pub kind: Kind,
}

/// Two fragments that cannot both provide `path` as they do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// Absolute path in the merged tree (bytes: names need not be UTF-8).
    pub path: Vec<u8>,
    pub kind: ConflictKind,
    /// `a` comes first in the sorted fragment list.
    pub a: ConflictSide,
    pub b: ConflictSide,
    /// What differs, for people: "file vs directory", "mode 0755 vs 0700".
    pub detail: String,
}

impl Conflict {
    /// The path for display (non-UTF-8 bytes escaped).
    pub fn path_display(&self) -> String {
        String::from_utf8(self.path.clone())
            .unwrap_or_else(|_| self.path.escape_ascii().to_string())
    }
}

impl std::fmt::Display for Conflict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (a, b) = (&self.a, &self.b);
        match self.kind {
            ConflictKind::Overlap => write!(
                f,
                "{}: provided by both {} (fragment {:?}, {}) and {} (fragment {:?}, {})",
                self.path_display(),
                a.file.display(),
                a.name,
                kind_name(a.kind),
                b.file.display(),
                b.name,
                kind_name(b.kind),
            ),
            ConflictKind::Security => write!(
                f,
                "{}: owned by both {} (fragment {:?}) and {} (fragment {:?}), which disagree: {}",
                self.path_display(),
                a.file.display(),
                a.name,
                b.file.display(),
                b.name,
                self.detail,
            ),
        }
    }
}

/// The kind of a tree entry, for people.
pub(crate) fn kind_name(k: Kind) -> &'static str {
    match k {
        Kind::Regular => "file",
        Kind::Directory => "directory",
        Kind::Symlink => "symlink",
        Kind::CharDevice => "character device",
        Kind::BlockDevice => "block device",
        Kind::Fifo => "fifo",
        Kind::Socket => "socket",
    }
}

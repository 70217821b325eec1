//! The reader's error: every variant says what was read and where (the
//! superblock, a group descriptor, an inode, a block reached from an inode,
//! a path), and which field was wrong.

use std::fmt;

/// What kind of block an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockKind {
    ExtentTree,
    IndirectMap,
    Directory,
    XattrBlock,
    FileData,
}

impl fmt::Display for BlockKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BlockKind::ExtentTree => "extent tree block",
            BlockKind::IndirectMap => "indirect map block",
            BlockKind::Directory => "directory block",
            BlockKind::XattrBlock => "xattr block",
            BlockKind::FileData => "data block",
        })
    }
}

/// Where in the filesystem a problem was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Where {
    Superblock,
    /// Group descriptor of this group.
    Group(u32),
    /// The inode record itself (its table slot).
    Inode(u32),
    /// A block reached from inode `ino`: physical block number, and the
    /// byte offset in it when one applies.
    Block {
        ino: u32,
        kind: BlockKind,
        block: u64,
        offset: Option<u32>,
    },
    /// An entry met while walking the tree (a lossy rendering of its path)
    /// and its inode.
    Path {
        path: String,
        ino: u32,
    },
}

impl Where {
    pub(crate) fn block(ino: u32, kind: BlockKind, block: u64) -> Where {
        Where::Block {
            ino,
            kind,
            block,
            offset: None,
        }
    }
    pub(crate) fn at(ino: u32, kind: BlockKind, block: u64, offset: usize) -> Where {
        Where::Block {
            ino,
            kind,
            block,
            offset: Some(offset as u32),
        }
    }
}

impl fmt::Display for Where {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Where::Superblock => f.write_str("superblock"),
            Where::Group(g) => write!(f, "group descriptor {g}"),
            Where::Inode(i) => write!(f, "inode {i}"),
            Where::Block {
                ino,
                kind,
                block,
                offset,
            } => {
                write!(f, "inode {ino}, {kind} {block}")?;
                if let Some(o) = offset {
                    write!(f, " at byte {o}")?;
                }
                Ok(())
            }
            Where::Path { path, ino } => write!(f, "{path} (inode {ino})"),
        }
    }
}

/// Why an ext4 image could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The source failed or ended before the bytes the filesystem points
    /// to (a truncated image is reported here).
    #[error("reading {len} bytes at byte {offset} of the image")]
    Io {
        offset: u64,
        len: usize,
        #[source]
        source: std::io::Error,
    },

    /// A feature or state this reader does not read, refused as a whole
    /// (never read half).
    #[error("refused: {feature}: {reason}")]
    Refused {
        feature: &'static str,
        reason: String,
    },

    /// A field holds a value that a valid filesystem cannot have.
    #[error("{at}: {field}: {problem}")]
    Corrupt {
        at: Where,
        field: &'static str,
        problem: String,
    },

    /// A metadata_csum checksum does not match the structure it covers.
    #[error("{at}: checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    Checksum {
        at: Where,
        stored: u32,
        computed: u32,
    },

    /// An error met while walking the tree, with the path that led there.
    #[error("{path}: {inner}")]
    InPath { path: String, inner: Box<ReadError> },

    /// The call asked for something the inode is not (`read_dir` of a
    /// regular file, say).
    #[error("inode {ino} is a {found}, not a {expected}")]
    WrongKind {
        ino: u32,
        expected: &'static str,
        found: &'static str,
    },
}

impl ReadError {
    pub(crate) fn corrupt(at: Where, field: &'static str, problem: impl Into<String>) -> Self {
        ReadError::Corrupt {
            at,
            field,
            problem: problem.into(),
        }
    }

    /// True when the image is at fault (corrupt, refused, checksum); false
    /// for an I/O failure of the source and for API misuse.
    pub fn is_invalid_input(&self) -> bool {
        match self {
            ReadError::Io { source, .. } => source.kind() == std::io::ErrorKind::UnexpectedEof,
            ReadError::Refused { .. } | ReadError::Corrupt { .. } | ReadError::Checksum { .. } => {
                true
            }
            ReadError::InPath { inner, .. } => inner.is_invalid_input(),
            ReadError::WrongKind { .. } => false,
        }
    }
}

pub type Result<T, E = ReadError> = std::result::Result<T, E>;

/// A checksum mismatch is an error, unless the caller opened the image
/// with checksums ignored.
pub(crate) fn check_csum(verify: bool, at: Where, stored: u32, computed: u32) -> Result<()> {
    if verify && stored != computed {
        return Err(ReadError::Checksum {
            at,
            stored,
            computed,
        });
    }
    Ok(())
}

//! What a merged tree must respect to be expressed as the ext4 volume:
//! the limits, and the error naming the one broken. Below both the
//! synthesis (which checks them) and the crate's error type (which
//! carries them).

/// The most entries one directory may have: at least 15 entries fit a leaf
/// (255-byte names), and a directory must stay within 4 extents of 32768
/// blocks (the generator writes no extent tree for directories).
pub const DIR_MAX_ENTRIES: usize = 1_900_000;
/// Largest free space a manifest may ask for (keeps groups and inode
/// counts within ext4's 32-bit fields).
pub const MAX_FREE_BYTES: u64 = 1 << 44;

/// Why the merged tree cannot be expressed as the ext4 volume.
#[derive(Debug, thiserror::Error)]
pub enum Ext4Error {
    #[error(
        "{path}: extended attributes do not fit in one 4 KiB block (or a POSIX ACL or an attribute name is malformed)"
    )]
    XattrTooBig { path: String },
    #[error(
        "{path}: device number {major}:{minor} does not fit ext4's (12-bit major, 20-bit minor)"
    )]
    DeviceNumber {
        path: String,
        major: u32,
        minor: u32,
    },
    #[error("{path}: too many extents ({n})")]
    TooManyExtents { path: String, n: usize },
    #[error("the volume needs {0} inodes, more than ext4 allows")]
    TooManyInodes(u64),
    #[error(
        "{path}: {n} entries in one directory; a two-level htree holds at most {DIR_MAX_ENTRIES}"
    )]
    DirectoryTooLarge { path: String, n: usize },
    #[error("{path}: {n} hard links; ext4 allows at most 65000")]
    TooManyLinks { path: String, n: u32 },
    #[error("free space of {0} bytes: at most {MAX_FREE_BYTES} (16 TiB)")]
    FreeTooLarge(u64),
    #[error("{path}: {size} bytes; ext4 files with 4 KiB blocks end below 16 TiB")]
    FileTooLarge { path: String, size: u64 },
}

//! Reading an ext4 filesystem someone else wrote: the guest's view of a
//! volume (base image plus overlay), for capturing what it changed.
//!
//! ```text
//!  ReadAt (File, [u8], Vec<u8>, base+overlay)
//!     | Ext4::open: superblock (features refused or accepted, checksum),
//!     v           group descriptors (checksums, inode table in range)
//!  Ext4 --inode(ino)----> Inode: mode, owner, size, links, flags, times (ns),
//!     |                   device numbers, symlink target, xattrs (ACLs as VFS)
//!     +--extents(ino)---> Vec<Extent>: extent trees of any depth, or the old
//!     |                   indirect block map
//!     +--read(ino, ..)--> bytes; holes and unwritten extents read as zeros;
//!     |                   short at i_size, 0 past it (like pread)
//!     +--read_dir(ino)--> Vec<DirEntry>: linear, htree index blocks skipped
//!     +--walk()---------> every path with its inode, depth first, by name
//! ```
//!
//! Contract: the image is untrusted (a guest wrote it). Nothing here
//! panics on it, allocates a size taken from it without a bound (buffers
//! are a block, an inode record, or what was actually read), or loops
//! without end (each extent-tree and indirect block is used once per file,
//! each directory entered once per walk, depths are bounded). Every
//! checksum metadata_csum defines on what is read is verified: superblock,
//! group descriptors, inodes, extent blocks, directory leaves and htree
//! nodes, xattr blocks. Errors name the structure, the inode, the block,
//! the byte and the field. [`Options::verify_checksums`] off ignores
//! mismatches (damaged images, fuzzing) and checks everything else.
//!
//! Refused at open, never read half: `needs_recovery` (an unreplayed
//! journal), orphans (`s_last_orphan`, `orphan_present`), `inline_data`,
//! `encrypt`, `casefold`, `verity`, `compression`, `dirdata`,
//! `journal_dev`, any INCOMPAT bit not known here, a non-Linux creator.
//!
//! It does not read the journal, bitmaps or free counts, and does not
//! check that blocks of different files do not overlap (only within one
//! file).

mod dir;
mod error;
mod extent;
mod group;
mod inode;
mod le;
mod source;
mod superblock;
mod walk;
mod xattr;

pub use dir::{DirEntry, Directory};
pub use error::{BlockKind, ReadError, Result, Where};
pub use extent::{Extent, File};
pub use inode::{Inode, Timestamp, Xattr};
pub use source::ReadAt;
pub use superblock::{Superblock, MAX_GROUPS};
pub use walk::{Walk, WalkEntry};
pub use xattr::acl_from_disk;

use group::Group;
use superblock::{SUPERBLOCK_OFFSET, SUPERBLOCK_SIZE};

/// How to open an image.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Verify metadata_csum checksums (the default). Off, mismatches are
    /// ignored and everything else is checked as usual: for looking at
    /// damaged images, and for fuzzing the parsers behind the checksums.
    pub verify_checksums: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            verify_checksums: true,
        }
    }
}

/// An opened ext4 filesystem over a source of bytes. All reads take
/// `&self`; nothing is cached but the superblock and group table.
pub struct Ext4<R: ReadAt> {
    src: R,
    sb: Superblock,
    groups: Vec<Group>,
    verify: bool,
}

impl<R: ReadAt> Ext4<R> {
    /// Reads and checks the superblock and every group descriptor.
    pub fn open(src: R) -> Result<Ext4<R>> {
        Self::open_with(src, Options::default())
    }

    /// `open` with options.
    pub fn open_with(src: R, opts: Options) -> Result<Ext4<R>> {
        let verify = opts.verify_checksums;
        let mut b = [0u8; SUPERBLOCK_SIZE];
        read_exact(&src, SUPERBLOCK_OFFSET, &mut b)?;
        let sb = Superblock::decode(&b, verify)?;
        let bs = sb.block_size as usize;
        let ds = sb.desc_size as usize;
        let per_block = bs / ds;
        // Grown as descriptor blocks are read: a claimed group count never
        // allocates more than the image actually holds.
        let mut groups = Vec::new();
        let mut buf = vec![0u8; bs];
        let mut g = 0u32;
        let mut i = 0u64;
        while g < sb.groups {
            let blk = sb.desc_block(i);
            if blk >= sb.blocks_count {
                return Err(ReadError::corrupt(
                    Where::Group(g),
                    "location",
                    format!("descriptor block {blk} is past the filesystem's end"),
                ));
            }
            read_exact(&src, blk * bs as u64, &mut buf)?;
            for d in buf.chunks_exact(ds).take(per_block) {
                if g == sb.groups {
                    break;
                }
                groups.push(Group::decode(&sb, g, d, verify)?);
                g += 1;
            }
            i += 1;
        }
        Ok(Ext4 {
            src,
            sb,
            groups,
            verify,
        })
    }

    pub fn superblock(&self) -> &Superblock {
        &self.sb
    }

    /// The source the filesystem is read from.
    pub fn source(&self) -> &R {
        &self.src
    }

    pub(crate) fn read_bytes(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        read_exact(&self.src, offset, buf)
    }

    /// Reads block `block` (callers check it is inside the filesystem).
    pub(crate) fn read_block(&self, block: u64, buf: &mut [u8]) -> Result<()> {
        let off = block
            .checked_mul(self.sb.block_size as u64)
            .ok_or_else(|| ReadError::Io {
                offset: u64::MAX,
                len: buf.len(),
                source: std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "block number overflows",
                ),
            })?;
        self.read_bytes(off, buf)
    }
}

fn read_exact<R: ReadAt + ?Sized>(src: &R, offset: u64, buf: &mut [u8]) -> Result<()> {
    src.read_at(offset, buf).map_err(|source| ReadError::Io {
        offset,
        len: buf.len(),
        source,
    })
}

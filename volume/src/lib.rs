//! # volume: the verified block device over a layout's block map
//!
//! ```text
//!  read_at(offset, buf) --> overlay state of each block
//!        |  DATA: overlay data area     ZERO: zeros
//!        v  BASE: the layout's block map
//!   Meta (synthesized ext4) | Zero | Fragment blocks | Small files
//!                                    |
//!                 BlockCache (verified bytes, shared per fragment) --miss-->
//!                 pread into the caller's buffer, blake3-check it there
//! ```
//!
//! Contract:
//!
//! - [`Volume::read_at`] (`&self`, any alignment) returns only verified
//!   bytes: fragment blocks are read into the buffer that is returned and
//!   checked there against the fragment's signed per-block hashes (runs of
//!   blocks in one pass where the hash layout allows), or copied from the
//!   [`BlockCache`], which only ever holds bytes checked in memory. Nothing
//!   is re-read from a file after its check; a failing block fails the
//!   read with [`Error::Fragment`] naming fragment, region, block and
//!   volume offset, and the buffer is zeroed.
//! - Fragment files are read with positioned reads only (no mappings): a
//!   fragment truncated or rewritten under the server gives errors, not a
//!   crash.
//! - [`Shared`] holds what one process shares between volumes: each
//!   fragment file opened once, and one bounded verified-block cache keyed
//!   by fragment identity.
//! - Writes, trims and zeroing go to the [`overlay`] file named in the
//!   manifest (bound to the volume identity, locked while open, durable on
//!   flush/FUA); fragments are never written. Without an overlay the volume
//!   is read-only.
//! - [`Volume::block_status`] reports zero/hole runs (map zeros and
//!   overlay zeros) and data runs.

pub mod cache;
mod device;
pub mod error;
pub mod overlay;

pub use cache::{BlockCache, CacheStats};
pub use device::{Extent, OpenOptions, Shared, Volume};
pub use error::{Error, ErrorKind, Result};
pub use overlay::{Overlay, OverlayInfo};

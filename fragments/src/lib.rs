//! # fragments: the signed image fragment format
//!
//! An image fragment is one file capturing a directory tree, built once in
//! the lab, shipped signed, and read in place (never unpacked).
//!
//! ```text
//!  directory tree --build()--> F.frag --Fragment::open(trust)--> Fragment
//!                                          | read_region / read_file:
//!                                          |   pread -> blake3 check -> caller
//!                                          v
//!                                  layout, volume, CLI
//! ```
//!
//! What this crate promises:
//! - **Format** (`format`, `meta`, `compress`): a 4 KiB signed root header
//!   with a region table; a metadata region (inodes, entries, extents,
//!   xattrs); a small-data region; data regions whose files start on 4 KiB
//!   boundaries; a hash region with the blake3 chaining value of every
//!   stored 4 KiB block (`hash` explains the tree). All little-endian, pinned
//!   by tests.
//! - **Build** (`build`): deterministic: same tree, options and key give the
//!   same bytes, whatever the readdir order. Output appears atomically.
//! - **Open** (`read`): checks signature, trust, hash structures and the
//!   whole metadata region; rejects any malformed input with an error naming
//!   what and where, never a panic. Data blocks are checked when read.
//! - **Read**: bytes handed out were hashed in the buffer handed out;
//!   positioned reads only, so a file changed underneath gives errors.
//! - **Keys** (`keys`): ed25519 in the PEM forms OpenSSL reads and writes.
//!
//! What it does not do: merge fragments or know about filesystems (that is
//! `layout`), cache blocks (`volume`).

pub mod build;
pub mod compress;
pub mod dump;
pub mod error;
pub mod extract;
pub mod format;
pub mod hash;
pub mod keys;
pub mod meta;
pub mod read;
mod region;
mod scan;
mod sink;

pub use build::{build, BuildOptions, BuildReport, NoProgress, Progress};
pub use ed25519_dalek::{SigningKey, VerifyingKey};
pub use error::{Error, Result};
pub use extract::extract;
pub use format::{Encoding, Header, RegionEntry, RegionKind, BLOCK_SIZE};
pub use meta::{Body, Dentry, Extent, Inode, Kind, Metadata, Timestamp};
pub use read::{Fault, Fragment, Trust};

//! The one support kit of the `mosaic` package's integration tests. Every
//! test binary includes it with `mod kit;` and takes what it needs:
//! `use kit::*;` brings the common part, the fixtures of one subject come
//! by path (`use kit::serve::*;`).
//!
//! ```text
//!   testkit (crate)  tools with deadlines, signals, output lines, NBD URIs
//!                    and clients, deterministic bytes -- no storage stack,
//!                    shared with nbd-server's tests; re-exported here
//!   keys     deterministic signing keys and their PEM files
//!   bin      the `mosaic` binary
//!   trees    temporary directories, source trees with exact metadata,
//!            snapshots and comparison of trees
//!   frag     fragments through the library; byte flips in a working copy
//!   golden   golden files under tests/golden, blessed on purpose
//!   image    ext4 images judged by e2fsck and debugfs, loop mounts,
//!            `mosaic volume export`
//!   server   a running `mosaic serve` (or `mosaic demo`)
//!   serve    the served fixture volume and checks by real NBD clients
//!   vm       the VM recipe's fixture and running guests
//!   revisions  the update tests' three revisions of one tree, and
//!            offsets inside fragments, packages and reverse files
//! ```
//!
//! A binary uses only part of the kit, hence the `dead_code` allowance.
#![allow(dead_code)]

// Re-exports: a binary that uses none of a part must not warn.
#[allow(unused_imports)]
pub use testkit::*;

pub mod bin;
pub mod frag;
pub mod golden;
pub mod image;
pub mod keys;
pub mod revisions;
pub mod serve;
pub mod server;
pub mod trees;
pub mod vm;

#[allow(unused_imports)]
pub use {bin::*, frag::*, keys::*, trees::*};

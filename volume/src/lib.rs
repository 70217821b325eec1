//! # volume: the verified block device over a layout's block map
//!
//! Contract (not implemented yet; see the serve issue):
//!
//! - `read_at(&self, offset, buf)` walks the block map; every byte taken from
//!   a fragment is checked against its blake3 block hash in the buffer that is
//!   returned, never re-read after the check. A failing block fails the read.
//! - Writes, trims and zeroing go to a persistent overlay file bound to the
//!   volume identity; fragments are never written.
//! - `&self` on the read path: one volume serves many tasks without a global
//!   lock.

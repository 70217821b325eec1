//! # layout: merge fragments and synthesize an ext4 volume as a block map
//!
//! Contract (not implemented yet; see the layout issue):
//!
//! - Takes N opened, verified [`fragments`] and merges their namespaces.
//!   Fragments have equal priority: the result does not depend on their
//!   order. A non-directory path provided twice is a conflict; all conflicts
//!   are reported at once. Directory security comes from the owning fragment.
//! - Produces no image bytes. Its output is a *block map*: a sorted list of
//!   non-overlapping extents of the volume, each synthesized metadata, a run
//!   of a fragment's data-region blocks, a small file's bytes, or zeros; plus a
//!   volume identity hash over everything that determines the bytes.
//! - Deterministic: same fragments and options, same map and identity.
//!
//! It does not read file data or verify data blocks: that is `volume`'s job.

pub mod ext4;
pub mod merge;

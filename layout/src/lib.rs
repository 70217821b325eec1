//! # layout: merge fragments and synthesize an ext4 volume as a block map
//!
//! ```text
//!  volume.toml --Manifest::load--> Manifest (checked: keys, files, sizes)
//!       | open_fragments / FragmentCache::open_manifest
//!       v   (every fragment fully checked at open, each file opened once)
//!  Vec<Arc<Fragment>> --merge--> Merged (one namespace) --ext4--> block map
//! ```
//!
//! Contract:
//!
//! - [`manifest`]: `volume.toml` parsed into a [`Manifest`]; every problem
//!   is reported as `FILE:LINE: message` naming the key (and the file, for
//!   a missing one). [`FragmentCache`] opens each fragment file once per
//!   process; [`open_fragments`] loads the trust keys and opens every
//!   fragment, reporting all failures at once, each naming its file.
//! - [`merge`]: takes N opened, verified [`fragments`] and merges their
//!   namespaces. Fragments have equal priority: the result does not depend
//!   on their order (they are sorted by identity). A non-directory path
//!   provided twice is a conflict; all conflicts are reported at once.
//!   Directory security (mode, owner, xattrs) comes from the fragments
//!   owning the directory, which must agree; unowned directories inherit
//!   from their nearest owned ancestor. Hard links stay hard links.
//! - `ext4`: produces no image bytes. Its output is a *block map*: a sorted
//!   list of non-overlapping extents of the volume, each synthesized
//!   metadata, a run of a fragment's data-region blocks, a small file's
//!   bytes, or zeros; plus a volume identity hash over everything that
//!   determines the bytes.
//! - Deterministic: same fragments and options, same tree, map and identity.
//!
//! - `ext4::read`: the other direction, a reader of an ext4 image that a
//!   guest wrote (the synthesized volume plus the guest's overlay), for
//!   capturing what the guest changed. Its input is untrusted: every
//!   structure is checked (and its checksum, under metadata_csum) before it
//!   is used, features it cannot read faithfully (inline_data, encrypt,
//!   casefold, verity, a journal that needs recovery, a non-empty orphan
//!   list) are refused at open, and errors name the inode, block and field.
//!
//! When synthesizing, it does not read file data or verify data blocks:
//! that is `volume`'s job.

mod conflict;
pub mod error;
pub mod ext4;
pub mod manifest;
pub mod merge;
mod tree;

pub use error::{Error, Problem, Result};
pub use manifest::{open_fragments, FragmentCache, FsOptions, Manifest};
pub use merge::{merge, merge_report, Conflict, ConflictKind, MergeReport, Merged};

/// Resident memory of this process in MiB (Linux), for phase logs.
fn rss_mib() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<u64>().ok())
        })
        .map_or(0, |pages| (pages * 4096) >> 20)
}

/// A manifest turned into a volume: its fragments, the merged tree and the
/// synthesized ext4 image (block map and on-demand metadata).
pub struct Layout {
    pub manifest: Manifest,
    pub merged: Merged,
    pub image: ext4::Image,
}

impl Layout {
    /// Loads the manifest, opens and checks every fragment (through `cache`,
    /// so a process opens each file once), merges and synthesizes.
    pub fn open(manifest: impl AsRef<std::path::Path>, cache: &FragmentCache) -> Result<Layout> {
        let t = std::time::Instant::now();
        let manifest = Manifest::load(manifest)?;
        let fragments = cache.open_manifest(&manifest)?;
        tracing::info!(
            ms = t.elapsed().as_millis() as u64,
            rss_mib = rss_mib(),
            "fragments opened"
        );
        let merged = merge(fragments)?;
        tracing::info!(
            ms = t.elapsed().as_millis() as u64,
            rss_mib = rss_mib(),
            nodes = merged.nodes.len(),
            "merged"
        );
        let fs = &manifest.filesystem;
        let image = ext4::Image::build(
            &merged,
            &ext4::Ext4Options {
                label: fs.label.clone(),
                free_bytes: fs.free,
                uuid: fs.uuid,
            },
        )?;
        tracing::info!(
            ms = t.elapsed().as_millis() as u64,
            rss_mib = rss_mib(),
            blocks = image.blocks,
            map_extents = image.map.len(),
            "ext4 synthesized"
        );
        Ok(Layout {
            manifest,
            merged,
            image,
        })
    }

    /// Reads whole volume blocks starting at `block` into `buf` (fragment
    /// bytes through the fragments' verified reads).
    pub fn read_blocks(&self, block: u64, buf: &mut [u8]) -> fragments::Result<()> {
        ext4::export::read_blocks(&self.merged, &self.image, block, buf)
    }
}

//! What a build is asked for and what it reports: the options, the
//! progress callbacks and the figures of a finished build, below every
//! phase of the build that uses them.

use crate::error::{Error, Result};
use crate::format::{check_label, BLOCK_SIZE};
use crate::scan::normalize;

/// Region indices the builder always uses.
pub const DATA_REGION: u32 = 0;
pub const SMALL_REGION: u32 = 1;

/// What to build.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    pub name: String,
    pub version: String,
    /// `Some(level)`: store data and small-data regions as zstd chunks.
    pub zstd_level: Option<i32>,
    /// Files smaller than this go to the small-data region.
    pub small_threshold: u64,
    /// Subtrees (paths inside the tree, `/`-separated) whose directories
    /// this fragment owns. Empty: every directory but `/`.
    pub owns: Vec<String>,
    /// Recorded in the header when set (from `SOURCE_DATE_EPOCH`).
    pub build_time: Option<u64>,
}

impl Default for BuildOptions {
    fn default() -> Self {
        BuildOptions {
            name: "fragment".into(),
            version: "0".into(),
            zstd_level: None,
            small_threshold: 1024,
            owns: Vec::new(),
            build_time: None,
        }
    }
}

impl BuildOptions {
    /// The options checked (labels, threshold, zstd level), with the
    /// `--owns` paths normalized to `/a/b` form.
    pub(super) fn checked(&self) -> Result<BuildOptions> {
        check_label("fragment name", &self.name)?;
        check_label("fragment version", &self.version)?;
        if self.small_threshold > BLOCK_SIZE {
            return Err(Error::Options(format!(
                "--small-threshold {} is above 4096 (a small file must fit in one block)",
                self.small_threshold
            )));
        }
        if let Some(l) = self.zstd_level {
            if !zstd::compression_level_range().contains(&l) {
                return Err(Error::Options(format!(
                    "zstd level {l} outside {:?}",
                    zstd::compression_level_range()
                )));
            }
        }
        Ok(BuildOptions {
            owns: self.owns.iter().map(|o| normalize(o)).collect(),
            ..self.clone()
        })
    }
}

/// Progress callbacks for long builds (the CLI draws a bar).
pub trait Progress: Sync {
    fn phase(&self, _name: &str, _total: u64) {}
    fn advance(&self, _n: u64) {}
}

/// A `Progress` that ignores everything.
pub struct NoProgress;
impl Progress for NoProgress {}

/// Figures about a finished build.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct BuildReport {
    pub inodes: u64,
    pub entries: u64,
    pub regular_files: u64,
    pub file_bytes: u64,
    pub data_region_bytes: u64,
    pub small_region_bytes: u64,
    pub deduplicated_files: u64,
    pub fragment_bytes: u64,
}

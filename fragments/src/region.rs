//! What a region of a fragment holds. A module of its own, below both the
//! header format (`format`, which gives each kind its code byte) and the
//! errors (`error`, which name the region a fault was found in).

/// What a region holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RegionKind {
    /// File contents, every file starting on a 4 KiB boundary.
    Data,
    /// Contents of small files, packed without alignment.
    #[serde(rename = "small-data")]
    Small,
    /// The tree: inodes, entries, extents, xattrs, strings.
    Metadata,
    /// The blake3 chaining value of every 4 KiB block of the other regions.
    Hashes,
}

impl RegionKind {
    pub fn name(self) -> &'static str {
        match self {
            RegionKind::Data => "data",
            RegionKind::Small => "small-data",
            RegionKind::Metadata => "metadata",
            RegionKind::Hashes => "hashes",
        }
    }
}

impl std::fmt::Display for RegionKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

//! Building a fragment from a directory tree, deterministically.
//!
//! The tree is walked breadth first with entries in name-byte order, so the
//! inode numbers, the placement of contents and therefore every byte of the
//! output depend only on the tree, the options and the key (ed25519
//! signatures are deterministic). File contents are read and hashed in
//! parallel, then placed in inode order. The output is written to a
//! temporary file beside the target and renamed into place at the end, so a
//! failed build leaves nothing behind.
//!
//! File placement: files smaller than the threshold go to the small-data
//! region, packed; the others go to the data region, each starting on a
//! 4 KiB boundary, with all-zero blocks left out (holes); identical contents
//! are stored once.
//!
//! ```text
//!  options.checked -> scan -> contents::store -> tables::metadata
//!      -> RegionWriter (data, small-data, metadata, hashes) -> signed header
//!      -> Output::commit (sync, rename into place)
//! ```

mod contents;
mod options;
mod regions;
mod tables;

pub use options::{BuildOptions, BuildReport, NoProgress, Progress, DATA_REGION, SMALL_REGION};
pub use regions::compress_file_region;

use crate::error::{Error, Result};
use crate::format::{
    Header, RegionEntry, HEADER_SIZE, INCOMPAT_ZSTD, SIGNATURE_OFFSET, SIGNED_LEN, VERSION_MAJOR,
    VERSION_MINOR,
};
use crate::meta::{Kind, Metadata};
use crate::scan::scan;
use crate::sink::DataSink;
use ed25519_dalek::{Signer, SigningKey};
use regions::RegionWriter;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Builds `out` from the tree at `src`, signed with `key`.
pub fn build(
    src: &Path,
    out: &Path,
    key: &SigningKey,
    opts: &BuildOptions,
    progress: &dyn Progress,
) -> Result<BuildReport> {
    let opts = opts.checked()?;
    let t0 = std::time::Instant::now();
    progress.phase("scanning", 0);
    let scanned = scan(src, &opts.owns)?;
    let output = Output::create(out, opts.zstd_level.is_some())?;
    let mut sink = output.data_sink()?;

    // Contents, in inode order.
    let files: Vec<u32> = (0..scanned.len() as u32)
        .filter(|&i| scanned[i as usize].kind == Kind::Regular)
        .collect();
    let total: u64 = files.iter().map(|&i| scanned[i as usize].size).sum();
    tracing::info!(
        elapsed_ms = t0.elapsed().as_millis() as u64,
        "phase: storing contents"
    );
    progress.phase("storing contents", total);
    let contents = contents::store(&scanned, &files, &mut sink, opts.small_threshold, progress)?;
    let mut report = BuildReport {
        regular_files: files.len() as u64,
        file_bytes: total,
        deduplicated_files: contents.deduplicated_files,
        ..Default::default()
    };

    // Metadata tables.
    tracing::info!(
        elapsed_ms = t0.elapsed().as_millis() as u64,
        "phase: writing metadata"
    );
    progress.phase("writing metadata", 0);
    let meta = tables::metadata(scanned, contents.file_extents)?;
    report.inodes = meta.inodes.len() as u64;
    report.entries = meta.dentries.len() as u64;

    // Regions, in file order: data, small, metadata, hashes.
    let mut writer = RegionWriter::new(output.file(), out);
    let level = opts.zstd_level;
    report.data_region_bytes =
        writer.data_region(&mut sink, output.scratch.as_ref(), level, progress)?;
    report.small_region_bytes = writer.small_region(contents.small, level)?;
    writer.metadata_region(meta.encode())?;
    let regions = writer.finish()?;

    // Header, signed; then the file goes into place.
    let header = signed_header(&opts, key, &meta, regions.entries, regions.end);
    output.write_header(&header, regions.end)?;
    tracing::info!(elapsed_ms = t0.elapsed().as_millis() as u64, "phase: sync");
    output.commit()?;
    report.fragment_bytes = regions.end;
    tracing::info!(elapsed_ms = t0.elapsed().as_millis() as u64, "build done");
    Ok(report)
}

/// The header of the finished fragment, signed with `key`.
fn signed_header(
    opts: &BuildOptions,
    key: &SigningKey,
    meta: &Metadata,
    regions: Vec<RegionEntry>,
    file_size: u64,
) -> [u8; HEADER_SIZE] {
    let level = opts.zstd_level;
    let mut header = Header {
        major: VERSION_MAJOR,
        minor: VERSION_MINOR,
        incompat: if level.is_some() { INCOMPAT_ZSTD } else { 0 },
        compat: 0,
        file_size,
        inode_count: meta.inodes.len() as u32,
        dentry_count: meta.dentries.len() as u32,
        build_time: opts.build_time.unwrap_or(0),
        small_threshold: opts.small_threshold as u32,
        zstd_level: level.unwrap_or(0) as u32,
        name: opts.name.clone(),
        version: opts.version.clone(),
        regions,
        signer: key.verifying_key().to_bytes(),
        signature: [0; 64],
    };
    let unsigned = header.encode();
    header.signature = key.sign(&unsigned[..SIGNED_LEN]).to_bytes();
    let bytes = header.encode();
    debug_assert_eq!(bytes[..SIGNATURE_OFFSET], unsigned[..SIGNATURE_OFFSET]);
    bytes
}

/// The files a build writes: a temporary file beside the target, renamed
/// into place at the end, and (compressed builds) a scratch file holding
/// the logical data region before it is compressed.
struct Output<'a> {
    out: &'a Path,
    out_dir: &'a Path,
    tmp: tempfile::NamedTempFile,
    scratch: Option<File>,
}

impl<'a> Output<'a> {
    fn create(out: &'a Path, compressed: bool) -> Result<Self> {
        let out_dir = out
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let tmp = tempfile::Builder::new()
            .prefix(".mosaic-build")
            .tempfile_in(out_dir)
            .map_err(Error::io(out_dir, "create a temporary file"))?;
        let scratch = if compressed {
            Some(
                tempfile::tempfile_in(out_dir)
                    .map_err(Error::io(out_dir, "create a scratch file"))?,
            )
        } else {
            None
        };
        Ok(Output {
            out,
            out_dir,
            tmp,
            scratch,
        })
    }

    fn file(&self) -> &File {
        self.tmp.as_file()
    }

    /// Where the data region is written: the scratch file from its start,
    /// or the output file right after the header.
    fn data_sink(&self) -> Result<DataSink> {
        match &self.scratch {
            Some(s) => DataSink::new(s, None, 0, false, self.out),
            None => DataSink::new(
                self.tmp.as_file(),
                Some(self.tmp.path()),
                HEADER_SIZE as u64,
                true,
                self.out,
            ),
        }
    }

    /// The header block, and the file cut to `file_size`.
    fn write_header(&self, header: &[u8; HEADER_SIZE], file_size: u64) -> Result<()> {
        let out_file = self.tmp.as_file();
        out_file
            .write_all_at(header, 0)
            .map_err(Error::io(self.out, "write"))?;
        out_file
            .set_len(file_size)
            .map_err(Error::io(self.out, "truncate"))
    }

    /// Syncs the file and renames it into place.
    fn commit(self) -> Result<()> {
        self.tmp
            .as_file()
            .sync_all()
            .map_err(Error::io(self.out, "sync"))?;
        self.tmp.persist(self.out).map_err(|e| Error::Io {
            path: self.out.to_owned(),
            op: "rename into place",
            source: e.error,
        })?;
        if let Ok(d) = File::open(self.out_dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }
}

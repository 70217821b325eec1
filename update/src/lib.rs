//! # update: forward and reverse differentials of fragments
//!
//! Every revision of a fragment is described against one **base** revision,
//! so one package serves every device whatever revision it is on (the model
//! of Windows quality updates).
//!
//! ```text
//!  lab:    B.frag + R.frag --diff--> R.mupd   (signed: R's header, R's metadata
//!                                             as a delta, per content a forward
//!                                             differential B->R, a copy, or a null one)
//!
//!  device: N.frag + N.frag.rev + R.mupd --apply--> R.frag + R.frag.rev
//!            |         |                             ^          ^
//!            |         +-- N->B reverse diffs        |          +-- R->B, computed here
//!            +-- content of N --(reverse)--> B --(forward)--> R, checked at every step,
//!                written where R's metadata says; R must verify against its signature
//! ```
//!
//! What this crate promises:
//! - **Formats** (`package`, `rev`, `codec`): little-endian headers pinned by
//!   tests, versioned (higher major rejected, higher minor accepted).
//! - **Byte-identical hydration**: builds are deterministic, so R is
//!   rebuilt region by region from R's metadata and contents; the result is
//!   opened with the trusted keys (signed roots over the block hashes of
//!   the bytes as written), or refused.
//! - **Checks at every step**: the input (base content) and output of every
//!   differential against the blake3 in the signed manifest, each
//!   differential's own hash; failures are recorded, the rest goes on, and
//!   everything recorded is repaired at the end from a full R fragment
//!   (`repair_source`), or reported in one list naming every file.
//! - **Atomic output**: temporary files, fsync, rename (the `.rev` first).
//! - **Bounded memory**: contents over a limit live in scratch files,
//!   differentials are made of independently decodable frames over bounded
//!   windows of the base.
//! - **No mapping of input files**: fragments are read with positioned
//!   reads and checked in the buffer; a base truncated or replaced while an
//!   apply runs gives an error naming it, never a crash, and its header is
//!   the one verified at open (`Fragment::header_bytes`), never re-read.
//!
//! What it does not do: choose which packages a device needs, or download
//! anything.

pub mod apply;
pub mod blob;
pub mod codec;
pub mod content;
pub mod diff;
pub mod error;
pub mod package;
pub mod rev;
pub mod wire;

pub use apply::{apply, ApplyOptions, ApplyReport};
pub use diff::{diff, DiffOptions, DiffReport};
pub use error::{CorruptItem, Error, PayloadError, Result};
pub use package::{Package, PackageTrust};

use std::io::Write;
use std::path::Path;

/// Asks glibc to keep freed memory for reuse instead of handing every large
/// buffer back to the kernel: an apply allocates and frees many content
/// buffers of a few MiB, and fresh pages cost a fault and a zeroing each.
/// Process-wide: for the CLI to call once, not for library users.
pub fn tune_allocator() {
    // SAFETY: mallopt only changes allocator parameters.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20);
    }
}

/// The directory holding `path` ("." for a bare file name).
pub(crate) fn dir_of(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

pub(crate) fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Bytes produced out of order by parallel workers, kept in an unlinked
/// scratch file and copied out later in the order the format wants, so the
/// output is deterministic and memory stays bounded.
pub(crate) struct Spool {
    file: std::sync::Mutex<(std::fs::File, u64)>,
}

impl Spool {
    pub(crate) fn new(dir: &Path) -> Result<Spool> {
        let f = tempfile::tempfile_in(dir).map_err(Error::io(dir, "create a scratch file"))?;
        Ok(Spool {
            file: std::sync::Mutex::new((f, 0)),
        })
    }

    /// Appends `b`; returns where it went.
    pub(crate) fn append(&self, b: &[u8]) -> std::io::Result<u64> {
        use std::os::unix::fs::FileExt;
        let mut g = self.file.lock().expect("spool lock");
        let at = g.1;
        g.0.write_all_at(b, at)?;
        g.1 += b.len() as u64;
        Ok(at)
    }

    /// Copies `len` bytes at `at` to `w`.
    pub(crate) fn copy(&self, at: u64, len: u64, w: &mut impl Write) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        let g = self.file.lock().expect("spool lock");
        let mut buf = vec![0u8; (len.min(8 << 20)) as usize];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(buf.len() as u64) as usize;
            g.0.read_exact_at(&mut buf[..n], at + done)?;
            w.write_all(&buf[..n])?;
            done += n as u64;
        }
        Ok(())
    }
}

/// Writes `head` then the spooled `pieces` (at, len) to `out` atomically.
pub(crate) fn atomic_write_spooled(
    out: &Path,
    head: &[&[u8]],
    spool: &Spool,
    pieces: &[(u64, u64)],
) -> Result<()> {
    let tmp = spooled_temp(out, head, spool, pieces)?;
    tmp.persist(out).map_err(|e| Error::Io {
        path: out.to_owned(),
        op: "rename into place",
        source: e.error,
    })?;
    sync_dir(dir_of(out));
    Ok(())
}

/// Writes `head` then the spooled `pieces` to a temporary file beside
/// `out`, synced, for the caller to rename into place.
pub(crate) fn spooled_temp(
    out: &Path,
    head: &[&[u8]],
    spool: &Spool,
    pieces: &[(u64, u64)],
) -> Result<tempfile::NamedTempFile> {
    let dir = dir_of(out);
    let tmp = tempfile::Builder::new()
        .prefix(".mosaic-update")
        .tempfile_in(dir)
        .map_err(Error::io(dir, "create a temporary file"))?;
    {
        let mut w = std::io::BufWriter::with_capacity(1 << 20, tmp.as_file());
        for p in head {
            w.write_all(p).map_err(Error::io(out, "write"))?;
        }
        for &(at, len) in pieces {
            spool
                .copy(at, len, &mut w)
                .map_err(Error::io(out, "write"))?;
        }
        w.flush().map_err(Error::io(out, "write"))?;
    }
    tmp.as_file().sync_all().map_err(Error::io(out, "sync"))?;
    Ok(tmp)
}

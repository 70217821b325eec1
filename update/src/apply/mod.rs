//! The device side: hydrate R from the fragment a device has (N), its
//! reverse differentials (N -> B) and R's package (B -> R).
//!
//! ```text
//! 1. package: signature, trust, manifest          (refused: exit 1)
//! 2. base view: N is B, or N + N.frag.rev -> B    (another base: refused)    base.rs
//! 3. R's metadata: B's metadata + delta           (checked: output hash)     target.rs
//! 4. per content of R, in parallel:                                          plan.rs, hydrate.rs
//!    unchanged from B: copied from N in 8 MiB pieces, N's block hashes
//!      checked as read (or rebuilt through the reverse delta, checked)
//!    already on the device (changed in N, kept in R): N's bytes once their
//!      blake3 is the signed output hash; N's reverse delta carried over
//!    else: base content (N, or N + reverse delta)  check: input hash
//!      forward differential                       check: its hash, output hash
//!      reverse differential R -> B, computed on the spot
//!    written where R's extents say, block hashes computed as written;        output.rs
//!    every failure recorded (a typed `ItemError`), the rest goes on          fail.rs
//! 5. repair every recorded item from --repair-source (the full R), or fail  repair.rs
//!    naming every file
//! 6. regions (compressed exactly as the builder does), hash region, R's     seal.rs
//!    signed header; open with the trusted keys: the signed roots over the
//!    block hashes of the bytes as written vouch for every byte
//!    (`verify_all` reads it all back once more, optional)
//! 7. the remaining reverse differentials, from the verified R               reverse.rs
//! 8. fsync, rename R.frag.rev then R.frag, fsync the directory              commit()
//! ```
//!
//! The base fragment is opened once: its bytes are read with positioned
//! reads and checked against its signed block hashes, and its header is
//! the one verified at open. A base truncated or replaced on disk while
//! this runs gives errors naming it, never a crash, never other bytes.

use crate::codec::Encoder;
use crate::error::{CorruptItem, Error, Result};
use crate::package::{Package, PackageTrust};
use crate::wire::hex;
use crate::{dir_of, sync_dir};
use fragments::{Fragment, Header, Progress, Trust, VerifyingKey};
use std::path::{Path, PathBuf};
use std::time::Instant;

mod base;
mod fail;
mod hydrate;
mod output;
mod plan;
mod repair;
mod reverse;
mod seal;
mod target;

/// How to apply.
#[derive(Debug, Clone)]
pub struct ApplyOptions {
    /// Reverse differentials of the fragment (default: FRAGMENT.rev).
    pub reverse: Option<PathBuf>,
    /// The full, signed target fragment to repair from.
    pub repair_source: Option<PathBuf>,
    /// zstd level of the reverse differentials computed here.
    pub rev_level: i32,
    /// Contents larger than this are held in scratch files, not memory.
    pub mem_limit: u64,
    /// Largest base window one reverse frame refers to.
    pub window_max: u64,
    /// Target bytes per frame of the reverse differentials (smaller frames
    /// spread one large file's reverse differential over the cores).
    pub rev_frame_size: u64,
    /// Read the hydrated fragment back once more and check every block
    /// (`Fragment::verify_all`) after its signature and roots have been
    /// checked. Redundant: the block hashes are computed from the bytes as
    /// written, read back.
    pub verify_all: bool,
}

impl Default for ApplyOptions {
    fn default() -> Self {
        ApplyOptions {
            reverse: None,
            repair_source: None,
            rev_level: 1,
            mem_limit: 64 << 20,
            window_max: 64 << 20,
            rev_frame_size: 1 << 20,
            verify_all: false,
        }
    }
}

/// What an apply did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ApplyReport {
    pub output: PathBuf,
    /// Where the reverse differentials went (none when the base was unavailable).
    pub reverse_output: Option<PathBuf>,
    pub base_id: String,
    pub target_id: String,
    /// The fragment applied to was the base itself.
    pub from_base: bool,
    pub contents: u64,
    pub content_bytes: u64,
    pub fragment_bytes: u64,
    pub unchanged: u64,
    pub copies: u64,
    pub deltas: u64,
    pub fulls: u64,
    /// Differentials not needed: the fragment already held the target's
    /// bytes (counted among `deltas` and `fulls` too).
    pub already_current: u64,
    /// Items that failed and were repaired from the repair source.
    pub repaired: Vec<CorruptItem>,
    pub reverse_same: u64,
    pub reverse_deltas: u64,
    pub reverse_full: u64,
    pub reverse_missing: u64,
    pub reverse_bytes: u64,
    pub warnings: Vec<String>,
}

/// What every phase of one apply reads: the inputs, the checked package,
/// the options, where scratch files go, progress and the clock. Phases
/// take it by shared reference (the hydration workers too) and write what
/// they found to the `ApplyReport` they are handed.
struct Ctx<'a> {
    fragment: &'a Path,
    package: &'a Path,
    out: &'a Path,
    trusted: &'a [VerifyingKey],
    opts: &'a ApplyOptions,
    progress: &'a dyn Progress,
    pkg: Package,
    /// The output's directory: temporary and scratch files go there.
    dir: PathBuf,
    /// How the reverse differentials written here are made.
    rev_enc: Encoder,
    t0: Instant,
}

impl Ctx<'_> {
    fn elapsed_ms(&self) -> u64 {
        self.t0.elapsed().as_millis() as u64
    }
}

/// Applies `package` to `fragment`, writing `out` and `out.rev`.
pub fn apply(
    fragment: &Path,
    package: &Path,
    trusted: &[VerifyingKey],
    out: &Path,
    opts: &ApplyOptions,
    progress: &dyn Progress,
) -> Result<ApplyReport> {
    let t0 = Instant::now();
    let pkg = Package::open(package, PackageTrust::Keys(trusted))?;
    let cx = Ctx {
        fragment,
        package,
        out,
        trusted,
        opts,
        progress,
        dir: dir_of(out).to_owned(),
        rev_enc: Encoder {
            level: opts.rev_level,
            ldm: false,
            frame_size: opts.rev_frame_size,
            window_max: opts.window_max,
        },
        t0,
        pkg,
    };
    let mut report = ApplyReport {
        output: out.to_owned(),
        reverse_output: Some(rev_path_of(out)),
        base_id: hex(&cx.pkg.header.base_id),
        target_id: hex(&cx.pkg.header.target_id),
        ..Default::default()
    };
    let r_header = Header::decode_detached(
        Path::new("package target header"),
        &cx.pkg.manifest.target_header,
    )?;

    let n = base::open_fragment(&cx, &mut report)?;
    let view = base::BaseView::open(&cx, n.as_ref(), &mut report)?;
    let repair = open_repair_source(&cx)?;
    let target = target::Target::load(&cx, &view, r_header, repair.as_ref(), &mut report)?;
    let (tmp, output) = output::Output::create(&cx.dir, &target.header)?;
    let hydration = hydrate::run(&cx, &view, &target, &output, &mut report);
    // Start writing the contents back now; the fsync at the end waits less.
    output::start_writeback(&output.file, 0, 0);
    let done = repair::run(
        &cx,
        &target,
        &output,
        hydration,
        repair.as_ref(),
        &mut report,
    )?;
    let hydrated = seal::seal_and_verify(&cx, &target, &output, tmp.path())?;
    let rev_tmp = reverse::write(&cx, &view, &hydrated, &target, done, &mut report)?;
    drop(hydrated);
    commit(&cx, tmp, rev_tmp)?;
    report.fragment_bytes = target.header.file_size;
    tracing::info!(elapsed_ms = cx.elapsed_ms(), "apply done");
    Ok(report)
}

/// The repair source, when one is given: it must be the package's target.
fn open_repair_source(cx: &Ctx) -> Result<Option<Fragment>> {
    let Some(p) = &cx.opts.repair_source else {
        return Ok(None);
    };
    let src = Fragment::open(p, Trust::Keys(cx.trusted))?;
    if src.id() != cx.pkg.header.target_id {
        return Err(Error::WrongRepairSource {
            path: p.clone(),
            found: hex(&src.id()),
            expected: hex(&cx.pkg.header.target_id),
        });
    }
    Ok(Some(src))
}

/// Renames the synced outputs into place. The reverse file first: a crash
/// between the renames leaves the old fragment beside a reverse file that
/// names another fragment, which the next apply sees (and a re-run fixes).
fn commit(
    cx: &Ctx,
    tmp: tempfile::NamedTempFile,
    rev_tmp: Option<tempfile::NamedTempFile>,
) -> Result<()> {
    if let Some(t) = rev_tmp {
        let rev_out = rev_path_of(cx.out);
        t.persist(&rev_out).map_err(|e| Error::Io {
            path: rev_out,
            op: "rename into place",
            source: e.error,
        })?;
    }
    tmp.persist(cx.out).map_err(|e| Error::Io {
        path: cx.out.to_owned(),
        op: "rename into place",
        source: e.error,
    })?;
    sync_dir(&cx.dir);
    Ok(())
}

/// `PATH.rev`.
pub fn rev_path_of(p: &Path) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(".rev");
    PathBuf::from(s)
}

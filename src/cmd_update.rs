//! `mosaic update diff|apply|inspect`: fragment updates with forward
//! differentials in a signed package and reverse differentials kept on
//! the device (crate `update`).

use crate::util::{Bar, InvalidInput};
use anyhow::Result;
use clap::Subcommand;
use fragments::{keys, Header, VerifyingKey};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use update::package::{Piece, PieceKind, Stats};
use update::{ApplyOptions, DiffOptions, Package, PackageTrust};

#[derive(Subcommand)]
pub enum UpdateCmd {
    /// Make the package taking any revision of BASE's line to TARGET
    Diff {
        /// The base revision every device's revision derives from
        #[arg(long, value_name = "B.frag")]
        base: PathBuf,
        /// The new revision
        #[arg(long, value_name = "R.frag")]
        target: PathBuf,
        /// Secret key (PKCS#8 PEM) to sign the package with
        #[arg(long)]
        key: PathBuf,
        /// Output package
        #[arg(short, long, value_name = "R.mupd")]
        output: PathBuf,
        /// zstd level of the forward differentials
        #[arg(long, default_value_t = 19)]
        level: i32,
        /// Target bytes per independently decodable frame
        #[arg(long, hide = true, default_value_t = 8 << 20)]
        frame_size: u64,
        /// Largest base window a frame refers to
        #[arg(long, hide = true, default_value_t = 64 << 20)]
        window_max: u64,
        /// Contents above this many bytes are held in scratch files
        #[arg(long, hide = true, default_value_t = 64 << 20)]
        mem_limit: u64,
        /// Print the report as JSON
        #[arg(long)]
        json: bool,
    },
    /// Hydrate the package's target from the fragment this device has
    Apply {
        /// The fragment this device is on (the base or a later revision)
        #[arg(long, value_name = "N.frag")]
        fragment: PathBuf,
        /// Its reverse differentials (default: FRAGMENT.rev; a base needs none)
        #[arg(long, value_name = "N.frag.rev")]
        reverse: Option<PathBuf>,
        /// The update package
        #[arg(long, value_name = "R.mupd")]
        package: PathBuf,
        /// Trusted public key for the package and the fragments (repeatable)
        #[arg(long, required = true, value_name = "KEY.pub")]
        trust: Vec<PathBuf>,
        /// Output fragment; its reverse differentials go to OUTPUT.rev
        #[arg(short, long, value_name = "R.frag")]
        output: PathBuf,
        /// The full, signed target fragment to repair corrupt items from
        #[arg(long, value_name = "R-full.frag")]
        repair_source: Option<PathBuf>,
        /// zstd level of the reverse differentials computed here
        #[arg(long, hide = true, default_value_t = 1)]
        rev_level: i32,
        /// Read the hydrated fragment back and check every block once more
        /// (its block hashes are computed from the bytes as written anyway)
        #[arg(long)]
        verify_all: bool,
        /// Contents above this many bytes are held in scratch files
        #[arg(long, hide = true, default_value_t = 64 << 20)]
        mem_limit: u64,
        /// Print the report as JSON
        #[arg(long)]
        json: bool,
    },
    /// Show what a package holds (its signature is checked, not its signer's trust)
    Inspect {
        package: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

/// Exit code 1 for invalid input (corrupt, untrusted, wrong base), 2 else.
fn map_err(e: update::Error) -> anyhow::Error {
    if e.is_invalid_input() {
        anyhow::Error::new(InvalidInput(e.to_string()))
    } else {
        anyhow::Error::new(e)
    }
}

fn load_trust(paths: &[PathBuf]) -> Result<Vec<VerifyingKey>> {
    paths
        .iter()
        .map(|p| keys::read_public(p).map_err(Into::into))
        .collect()
}

pub fn run(cmd: UpdateCmd) -> Result<ExitCode> {
    update::tune_allocator();
    match cmd {
        UpdateCmd::Diff {
            base,
            target,
            key,
            output,
            level,
            frame_size,
            window_max,
            mem_limit,
            json,
        } => {
            let key = keys::read_secret(&key)?;
            let opts = DiffOptions {
                level,
                frame_size,
                window_max,
                mem_limit,
            };
            let bar = Bar::new();
            let r = update::diff(&base, &target, &key, &output, &opts, &bar);
            bar.finish();
            let r = r.map_err(map_err)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                println!(
                    "wrote {} ({} bytes; the target fragment is {} bytes, {:.2} %)",
                    output.display(),
                    r.package_bytes,
                    r.target_fragment_bytes,
                    100.0 * r.package_bytes as f64 / r.target_fragment_bytes.max(1) as f64
                );
                print_stats(&r.stats);
                println!(
                    "pieces:        {} differentials, {} null differentials, {} copies; metadata: {} ({} bytes)",
                    r.deltas,
                    r.fulls,
                    r.copies,
                    kind_str(r.metadata_kind),
                    r.metadata_bytes
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        UpdateCmd::Apply {
            fragment,
            reverse,
            package,
            trust,
            output,
            repair_source,
            rev_level,
            verify_all,
            mem_limit,
            json,
        } => {
            let trusted = load_trust(&trust)?;
            let opts = ApplyOptions {
                reverse,
                repair_source,
                rev_level,
                mem_limit,
                verify_all,
                ..ApplyOptions::default()
            };
            let bar = Bar::new();
            let t0 = std::time::Instant::now();
            let r = update::apply(&fragment, &package, &trusted, &output, &opts, &bar);
            bar.finish();
            let r = r.map_err(map_err)?;
            let secs = t0.elapsed().as_secs_f64();
            for w in &r.warnings {
                eprintln!("mosaic: warning: {w}");
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                let rev = match &r.reverse_output {
                    Some(p) => format!("{} ({} bytes)", p.display(), r.reverse_bytes),
                    None => "no reverse differentials".into(),
                };
                println!(
                    "wrote {} ({} bytes, verified against its signature) and {rev} in {secs:.2} s",
                    r.output.display(),
                    r.fragment_bytes,
                );
                println!(
                    "from {}: {} contents ({} bytes): {} unchanged, {} differentials, {} null differentials, {} copies; {} already current",
                    if r.from_base { "the base" } else { "a later revision and its reverse differentials" },
                    r.contents,
                    r.content_bytes,
                    r.unchanged,
                    r.deltas,
                    r.fulls,
                    r.copies,
                    r.already_current
                );
                println!(
                    "reverse differentials: {} same, {} differentials, {} full, {} missing",
                    r.reverse_same, r.reverse_deltas, r.reverse_full, r.reverse_missing
                );
                if !r.repaired.is_empty() {
                    println!(
                        "repaired from {}:",
                        opts.repair_source
                            .as_deref()
                            .unwrap_or(Path::new("?"))
                            .display()
                    );
                    for i in &r.repaired {
                        println!("  {i}");
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        UpdateCmd::Inspect { package, json } => inspect(&package, json),
    }
}

fn kind_str(k: PieceKind) -> &'static str {
    match k {
        PieceKind::Copy => "copy",
        PieceKind::Delta => "delta",
        PieceKind::Full => "full",
    }
}

fn print_stats(s: &Stats) {
    println!(
        "contents:      {} unchanged, {} changed, {} added, {} renamed; {} deleted, {} metadata-only",
        s.unchanged, s.changed, s.added, s.renamed, s.deleted, s.metadata_only
    );
}

#[derive(Serialize)]
struct Inspect<'a> {
    path: String,
    package_bytes: u64,
    version: String,
    signer: String,
    base_id: String,
    base_name: &'a str,
    base_version: &'a str,
    target_id: String,
    target_name: String,
    target_version: String,
    target_fragment_bytes: u64,
    frame_size: u64,
    manifest_bytes: u64,
    data_bytes: u64,
    stats: &'a Stats,
    metadata: &'a Piece,
    pieces: &'a [Piece],
}

fn inspect(path: &Path, json: bool) -> Result<ExitCode> {
    let p = Package::open(path, PackageTrust::AnySigner).map_err(map_err)?;
    let m = &p.manifest;
    let th = Header::decode_detached(Path::new("target header"), &m.target_header)?;
    let hex = |b: &[u8]| update::wire::hex(b);
    let v = Inspect {
        path: path.display().to_string(),
        package_bytes: p.header.file_size,
        version: format!("{}.{}", p.header.major, p.header.minor),
        signer: hex(&p.header.signer),
        base_id: hex(&p.header.base_id),
        base_name: &m.base_name,
        base_version: &m.base_version,
        target_id: hex(&p.header.target_id),
        target_name: th.name.clone(),
        target_version: th.version.clone(),
        target_fragment_bytes: th.file_size,
        frame_size: m.frame_size,
        manifest_bytes: p.header.manifest_stored,
        data_bytes: p.header.data_len,
        stats: &m.stats,
        metadata: &m.metadata,
        pieces: &m.pieces,
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "package:       {} ({} bytes, format {})",
        v.path, v.package_bytes, v.version
    );
    println!(
        "signer:        {} (signature valid; trust not checked)",
        v.signer
    );
    println!(
        "base:          {} {} (id {})",
        v.base_name, v.base_version, v.base_id
    );
    println!(
        "target:        {} {} (id {}, fragment {} bytes)",
        v.target_name, v.target_version, v.target_id, v.target_fragment_bytes
    );
    println!(
        "layout:        manifest {} bytes, differentials {} bytes, frames of {} bytes",
        v.manifest_bytes, v.data_bytes, v.frame_size
    );
    print_stats(v.stats);
    println!(
        "metadata:      {} ({} -> {} bytes)",
        kind_str(m.metadata.kind),
        m.metadata.size,
        m.metadata.payload.as_ref().map_or(0, |p| p.len)
    );
    println!("{:<6} {:>12} {:>10}  path", "kind", "size", "stored");
    for pc in &m.pieces {
        println!(
            "{:<6} {:>12} {:>10}  {}",
            kind_str(pc.kind),
            pc.size,
            pc.payload.as_ref().map_or(0, |p| p.len),
            crate::util::show(&pc.path)
        );
    }
    Ok(ExitCode::SUCCESS)
}

//! `mosaic volume ...`: check a `volume.toml` (manifest, signatures,
//! conflicts, security) and export its synthesized image.

use anyhow::Context as _;
use anyhow::Result;
use clap::Subcommand;
use fragments::{keys, Fragment, Kind};
use layout::merge::{merge_report, Conflict};
use layout::Manifest;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

#[derive(Subcommand)]
pub enum VolumeCmd {
    /// Check a volume manifest: every fragment's signature and metadata,
    /// the merged namespace (all conflicts listed at once) and security
    Check {
        /// The volume manifest (volume.toml)
        manifest: PathBuf,
        /// Print a machine-readable report
        #[arg(long)]
        json: bool,
    },
    /// Write the synthesized volume (exactly what clients read before any
    /// write) as a sparse raw image
    Export {
        /// The volume manifest (volume.toml)
        manifest: PathBuf,
        /// Output image file
        #[arg(short, long)]
        output: PathBuf,
        /// Print a machine-readable summary
        #[arg(long)]
        json: bool,
        /// Include the overlay's writes: the image a client sees now
        /// (refused while a server holds the overlay)
        #[arg(long)]
        with_overlay: bool,
    },
}

pub fn run(cmd: VolumeCmd) -> Result<ExitCode> {
    match cmd {
        VolumeCmd::Check { manifest, json } => check(&manifest, json),
        VolumeCmd::Export {
            manifest,
            output,
            json,
            with_overlay,
        } => export(&manifest, &output, json, with_overlay),
    }
}

fn export(manifest: &Path, output: &Path, json: bool, with_overlay: bool) -> Result<ExitCode> {
    let t = std::time::Instant::now();
    let shared = volume::Shared::new(0);
    let vol = volume::Volume::open(
        manifest,
        &shared,
        volume::OpenOptions {
            overlay: with_overlay,
            discard_overlay: false,
        },
    )?;
    if with_overlay && vol.overlay().is_none() {
        return Err(crate::util::InvalidInput(format!(
            "{}: --with-overlay, but the manifest has no [overlay] table",
            manifest.display()
        ))
        .into());
    }
    let lay = vol.layout();
    let map_secs = t.elapsed().as_secs_f64();
    let img = &lay.image;
    let bytes = img.blocks * fragments::BLOCK_SIZE;
    let dir = output
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = tempfile::Builder::new()
        .prefix(".mosaic-export")
        .tempfile_in(dir)
        .with_context(|| format!("create a temporary file in {}", dir.display()))?;
    let bar = crate::util::Bar::new();
    fragments::Progress::phase(&bar, "exporting", bytes);
    let progress = |n| fragments::Progress::advance(&bar, n);
    if with_overlay {
        let r = vol.export(tmp.as_file(), &progress);
        bar.finish();
        r.with_context(|| format!("write {}", output.display()))?;
    } else {
        let r = layout::ext4::export::write_image(&lay.merged, img, tmp.as_file(), &progress);
        bar.finish();
        r.map_err(|e| match e {
            layout::ext4::export::ExportError::Fragment(f) => anyhow::Error::new(f),
            layout::ext4::export::ExportError::Io(io) => {
                anyhow::Error::new(io).context(format!("write {}", output.display()))
            }
        })?;
    }
    tmp.as_file()
        .set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644))
        .with_context(|| format!("chmod {}", output.display()))?;
    tmp.persist(output)
        .with_context(|| format!("rename into {}", output.display()))?;
    let secs = t.elapsed().as_secs_f64();
    let identity: String = img.identity.iter().map(|b| format!("{b:02x}")).collect();
    let uuid = img
        .uuid
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>();
    if json {
        println!(
            "{}",
            serde_json::json!({
                "manifest": manifest.display().to_string(),
                "output": output.display().to_string(),
                "bytes": bytes,
                "blocks": img.blocks,
                "map_extents": img.map.len(),
                "identity": identity,
                "uuid": uuid,
                "map_seconds": map_secs,
                "seconds": secs,
            })
        );
    } else {
        eprintln!(
            "exported {} ({} bytes, {} map extents) in {:.2} s (map {:.2} s); identity {}",
            output.display(),
            bytes,
            img.map.len(),
            secs,
            map_secs,
            identity
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Serialize, Default)]
struct FragmentOut {
    path: String,
    name: String,
    version: String,
    signer: String,
    id: String,
    size: u64,
    inodes: u64,
    entries: u64,
    files: u64,
    directories: u64,
    owned_directories: u64,
    symlinks: u64,
    other: u64,
}

#[derive(Serialize)]
struct FilesystemOut {
    #[serde(rename = "type")]
    kind: &'static str,
    label: String,
    free: u64,
    uuid: Option<String>,
}

#[derive(Serialize)]
struct ConflictOut {
    path: String,
    kind: &'static str,
    /// The two fragment files.
    fragments: [String; 2],
    /// Their header names.
    names: [String; 2],
    /// What each has at the path.
    kinds: [Kind; 2],
    detail: String,
    message: String,
}

#[derive(Serialize)]
struct CheckOut {
    manifest: String,
    name: Option<String>,
    fragments: Vec<FragmentOut>,
    filesystem: Option<FilesystemOut>,
    overlay: Option<String>,
    /// Merged nodes (inodes of the volume, before ext4's own).
    nodes: u64,
    /// Merged directory entries.
    entries: u64,
    conflicts: Vec<ConflictOut>,
    /// Problems that stopped the check before the merge (manifest,
    /// keys, fragments), one message each.
    errors: Vec<String>,
    ok: bool,
}

fn fragment_out(f: &Fragment) -> FragmentOut {
    let h = f.header();
    let m = f.metadata();
    let mut o = FragmentOut {
        path: f.path().display().to_string(),
        name: h.name.clone(),
        version: h.version.clone(),
        signer: keys::key_id(&h.signer),
        id: keys::key_id(&f.id()),
        size: h.file_size,
        inodes: m.inodes.len() as u64,
        entries: m.dentries.len() as u64,
        ..Default::default()
    };
    for i in &m.inodes {
        match i.kind {
            Kind::Regular => o.files += 1,
            Kind::Directory => {
                o.directories += 1;
                o.owned_directories += i.owns_security as u64;
            }
            Kind::Symlink => o.symlinks += 1,
            _ => o.other += 1,
        }
    }
    o
}

fn conflict_out(c: &Conflict) -> ConflictOut {
    ConflictOut {
        path: c.path_display(),
        kind: c.kind.name(),
        fragments: [
            c.a.file.display().to_string(),
            c.b.file.display().to_string(),
        ],
        names: [c.a.name.clone(), c.b.name.clone()],
        kinds: [c.a.kind, c.b.kind],
        detail: c.detail.clone(),
        message: c.to_string(),
    }
}

fn uuid_string(u: &[u8; 16]) -> String {
    let h: String = u.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// Error messages of a layout error, one per problem.
fn messages(e: &layout::Error) -> Vec<String> {
    match e {
        layout::Error::Keys(v) | layout::Error::Fragments(v) => {
            v.iter().map(|e| e.to_string()).collect()
        }
        layout::Error::Manifest { .. } => e.to_string().lines().map(String::from).collect(),
        _ => vec![e.to_string()],
    }
}

fn check(path: &Path, json: bool) -> Result<ExitCode> {
    let mut out = CheckOut {
        manifest: path.display().to_string(),
        name: None,
        fragments: Vec::new(),
        filesystem: None,
        overlay: None,
        nodes: 0,
        entries: 0,
        conflicts: Vec::new(),
        errors: Vec::new(),
        ok: false,
    };
    // Stops the check: in JSON mode the report still goes to stdout; the
    // error itself goes to main, which prints it and picks the exit code.
    let fail = |out: &mut CheckOut, e: layout::Error| -> anyhow::Error {
        if json {
            out.errors = messages(&e);
            if let Ok(s) = serde_json::to_string_pretty(&*out) {
                println!("{s}");
            }
        }
        e.into()
    };

    let manifest = match Manifest::load(path) {
        Ok(m) => m,
        Err(e) => return Err(fail(&mut out, e)),
    };
    out.name = Some(manifest.name.clone());
    let fso = &manifest.filesystem;
    out.filesystem = Some(FilesystemOut {
        kind: "ext4",
        label: fso.label.clone(),
        free: fso.free,
        uuid: fso.uuid.as_ref().map(uuid_string),
    });
    out.overlay = manifest.overlay.as_ref().map(|p| p.display().to_string());

    let frags: Vec<Arc<Fragment>> = match layout::open_fragments(&manifest) {
        Ok(f) => f,
        Err(e) => return Err(fail(&mut out, e)),
    };
    out.fragments = frags.iter().map(|f| fragment_out(f)).collect();
    let report = match merge_report(frags) {
        Ok(r) => r,
        Err(e) => return Err(fail(&mut out, e)),
    };
    out.nodes = report.merged.nodes.len() as u64;
    out.entries = report.merged.entries.len() as u64;
    out.conflicts = report.conflicts.iter().map(conflict_out).collect();
    out.ok = out.conflicts.is_empty();

    if json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print_text(&out, &manifest);
    }
    if out.ok {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!(
            "mosaic: {}: {} conflict{} between fragments",
            path.display(),
            out.conflicts.len(),
            if out.conflicts.len() == 1 { "" } else { "s" }
        );
        Ok(ExitCode::from(1))
    }
}

fn print_text(out: &CheckOut, manifest: &Manifest) {
    println!("manifest   {}", out.manifest);
    println!("export     {:?}", manifest.name);
    println!("fragments  {}", out.fragments.len());
    for f in &out.fragments {
        println!("  {}", f.path);
        println!(
            "    name {:?} version {:?}, {} bytes, signer {} (trusted, signature valid)",
            f.name, f.version, f.size, f.signer
        );
        println!(
            "    {} inodes, {} entries: {} files, {} directories ({} owned), {} symlinks, {} other",
            f.inodes, f.entries, f.files, f.directories, f.owned_directories, f.symlinks, f.other
        );
    }
    if let Some(fs) = &out.filesystem {
        println!(
            "filesystem ext4, label {:?}, {} bytes free, uuid {}",
            fs.label,
            fs.free,
            fs.uuid
                .as_deref()
                .unwrap_or("derived from the volume identity")
        );
    }
    match &out.overlay {
        Some(p) => println!("overlay    {p}"),
        None => println!("overlay    none (read-only export)"),
    }
    println!(
        "merged     {} nodes, {} entries{}",
        out.nodes,
        out.entries,
        if out.ok { "" } else { " (with conflicts)" }
    );
    if out.conflicts.is_empty() {
        println!("conflicts  none");
    } else {
        println!("conflicts  {}", out.conflicts.len());
        for c in &out.conflicts {
            println!("  {}", c.message);
        }
    }
}

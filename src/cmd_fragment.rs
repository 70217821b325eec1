//! `mosaic keygen` and `mosaic fragment ...`.

use crate::util::{format_time, mode_string, show, Bar, InvalidInput};
use anyhow::{bail, Context, Result};
use clap::Subcommand;
use fragments::{keys, BuildOptions, Fragment, Kind, RegionKind, Trust, VerifyingKey};
use serde::Serialize;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Subcommand)]
pub enum FragmentCmd {
    /// Build a signed fragment from a directory tree
    Build {
        /// The tree to capture
        dir: PathBuf,
        /// Output fragment file
        #[arg(short, long)]
        output: PathBuf,
        /// Secret key (PKCS#8 PEM) to sign with
        #[arg(long)]
        key: PathBuf,
        /// Fragment name (default: the output file's stem)
        #[arg(long)]
        name: Option<String>,
        /// Fragment version label
        #[arg(long, default_value = "0")]
        version: String,
        /// Store regions as zstd chunks: `zstd` or `zstd:LEVEL`
        #[arg(long, value_name = "zstd[:LEVEL]")]
        compress: Option<String>,
        /// Files smaller than this many bytes go to the small-data region
        #[arg(long, default_value_t = 1024, value_name = "BYTES")]
        small_threshold: u64,
        /// Subtree whose directories this fragment owns (repeatable; default: all but /)
        #[arg(long, value_name = "PATH")]
        owns: Vec<String>,
        /// Print the build report as JSON
        #[arg(long)]
        json: bool,
    },
    /// Check the signature and every block
    Verify {
        fragment: PathBuf,
        /// Trusted public key (repeatable)
        #[arg(long, required = true, value_name = "KEY.pub")]
        trust: Vec<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Show the header, regions, counts and signer
    Inspect {
        fragment: PathBuf,
        #[arg(long)]
        json: bool,
        /// Print an offset-annotated dump of the header and every metadata entry
        #[arg(long, conflicts_with = "json")]
        dump: bool,
        /// Also require the signer to be one of these keys
        #[arg(long, value_name = "KEY.pub")]
        trust: Vec<PathBuf>,
    },
    /// List a directory (or one entry) like `ls -l`
    Ls {
        fragment: PathBuf,
        #[arg(default_value = "/")]
        path: String,
        #[arg(long, value_name = "KEY.pub")]
        trust: Vec<PathBuf>,
    },
    /// Write a file's content to stdout
    Cat {
        fragment: PathBuf,
        path: String,
        #[arg(long, value_name = "KEY.pub")]
        trust: Vec<PathBuf>,
    },
    /// Restore the tree with its metadata into DIR (inspection and tests)
    Extract {
        fragment: PathBuf,
        dir: PathBuf,
        #[arg(long, value_name = "KEY.pub")]
        trust: Vec<PathBuf>,
    },
}

pub fn keygen(output: &Path, force: bool) -> Result<ExitCode> {
    let key = keys::generate();
    keys::write_keypair(output, &key, force)?;
    eprintln!(
        "wrote {} and {} (key {})",
        output.display(),
        keys::pub_path(output).display(),
        keys::key_id(key.verifying_key().as_bytes())
    );
    Ok(ExitCode::SUCCESS)
}

fn load_trust(paths: &[PathBuf]) -> Result<Vec<VerifyingKey>> {
    paths
        .iter()
        .map(|p| keys::read_public(p).map_err(Into::into))
        .collect()
}

/// Opens with the given trust list, or any self-consistent signer when empty.
fn open(path: &Path, trust: &[PathBuf]) -> Result<Fragment> {
    let keys = load_trust(trust)?;
    let t = if keys.is_empty() {
        Trust::AnySigner
    } else {
        Trust::Keys(&keys)
    };
    Ok(Fragment::open(path, t)?)
}

fn parse_compress(s: &str) -> Result<i32> {
    match s.split_once(':') {
        None if s == "zstd" => Ok(3),
        Some(("zstd", l)) => l
            .parse()
            .with_context(|| format!("--compress {s}: level {l:?} is not a number")),
        _ => bail!("--compress {s}: expected zstd or zstd:LEVEL"),
    }
}

pub fn run(cmd: FragmentCmd) -> Result<ExitCode> {
    match cmd {
        FragmentCmd::Build {
            dir,
            output,
            key,
            name,
            version,
            compress,
            small_threshold,
            owns,
            json,
        } => {
            let signing = keys::read_secret(&key)?;
            let name = match name {
                Some(n) => n,
                None => output
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .filter(|s| !s.is_empty())
                    .unwrap_or_else(|| "fragment".into()),
            };
            let build_time = match std::env::var("SOURCE_DATE_EPOCH") {
                Ok(v) => Some(v.trim().parse::<u64>().with_context(|| {
                    format!("SOURCE_DATE_EPOCH={v:?} is not a number of seconds")
                })?),
                Err(_) => None,
            };
            let opts = BuildOptions {
                name,
                version,
                zstd_level: compress.as_deref().map(parse_compress).transpose()?,
                small_threshold,
                owns,
                build_time,
            };
            let bar = Bar::new();
            let t = std::time::Instant::now();
            let report = fragments::build(&dir, &output, &signing, &opts, &bar);
            bar.finish();
            let report = report?;
            let secs = t.elapsed().as_secs_f64();
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                eprintln!(
                    "built {}: {} entries, {} files, {:.1} MB of content in {:.2} s ({:.0} MB/s); fragment {:.1} MB, {} deduplicated files",
                    output.display(),
                    report.entries,
                    report.regular_files,
                    report.file_bytes as f64 / 1e6,
                    secs,
                    report.file_bytes as f64 / 1e6 / secs.max(1e-9),
                    report.fragment_bytes as f64 / 1e6,
                    report.deduplicated_files
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        FragmentCmd::Verify {
            fragment,
            trust,
            json,
        } => verify(&fragment, &trust, json),
        FragmentCmd::Inspect {
            fragment,
            json,
            dump,
            trust,
        } => {
            if dump {
                print!("{}", fragments::dump::dump(&open(&fragment, &trust)?));
                return Ok(ExitCode::SUCCESS);
            }
            inspect(&fragment, &trust, json)
        }
        FragmentCmd::Ls {
            fragment,
            path,
            trust,
        } => ls(&fragment, &path, &trust),
        FragmentCmd::Cat {
            fragment,
            path,
            trust,
        } => {
            let f = open(&fragment, &trust)?;
            let ino = resolve(&f, &path)?;
            if f.metadata().inode(ino).kind != Kind::Regular {
                bail!(InvalidInput(format!(
                    "{path}: not a regular file in {}",
                    fragment.display()
                )));
            }
            let mut out = std::io::stdout().lock();
            let mut buf = vec![0u8; 1 << 20];
            let mut off = 0u64;
            loop {
                let n = f.read_file(ino, off, &mut buf)?;
                if n == 0 {
                    break;
                }
                match out.write_all(&buf[..n]) {
                    Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                        return Ok(ExitCode::SUCCESS)
                    }
                    r => r.context("write to stdout")?,
                }
                off += n as u64;
            }
            out.flush().ok();
            Ok(ExitCode::SUCCESS)
        }
        FragmentCmd::Extract {
            fragment,
            dir,
            trust,
        } => {
            let f = open(&fragment, &trust)?;
            fragments::extract(&f, &dir)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn resolve(f: &Fragment, path: &str) -> Result<u32> {
    f.metadata().lookup(path.as_bytes()).ok_or_else(|| {
        anyhow::Error::new(InvalidInput(format!(
            "{path}: no such entry in {}",
            f.path().display()
        )))
    })
}

fn verify(path: &Path, trust: &[PathBuf], json: bool) -> Result<ExitCode> {
    let keys = load_trust(trust)?;
    let f = Fragment::open(path, Trust::Keys(&keys))?;
    let total: u64 = f
        .header()
        .regions
        .iter()
        .filter(|r| r.kind != RegionKind::Hashes)
        .map(|r| r.stored_len)
        .sum();
    let bar = Bar::new();
    fragments::Progress::phase(&bar, "verifying", total);
    let faults = f.verify_all(&|n| fragments::Progress::advance(&bar, n));
    bar.finish();
    let faults = faults?;
    let signer = keys::key_id(f.signer().as_bytes());
    if json {
        #[derive(Serialize)]
        struct Out<'a> {
            fragment: String,
            signer: String,
            ok: bool,
            faults: &'a [fragments::Fault],
        }
        println!(
            "{}",
            serde_json::to_string_pretty(&Out {
                fragment: path.display().to_string(),
                signer,
                ok: faults.is_empty(),
                faults: &faults
            })?
        );
    } else if faults.is_empty() {
        println!(
            "{}: OK (signed by {signer}, {} bytes of blocks checked)",
            path.display(),
            total
        );
    } else {
        for fault in &faults {
            eprintln!("{}: {fault}", path.display());
        }
        eprintln!("{}: {} bad blocks", path.display(), faults.len());
    }
    Ok(if faults.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

#[derive(Serialize)]
struct InspectOut {
    path: String,
    name: String,
    version: String,
    format_version: String,
    incompat_features: u64,
    compat_features: u64,
    file_size: u64,
    build_time: u64,
    small_threshold: u32,
    zstd_level: u32,
    signer: String,
    id: String,
    regions: Vec<RegionOut>,
    counts: Counts,
}

#[derive(Serialize)]
struct RegionOut {
    index: usize,
    kind: RegionKind,
    encoding: fragments::Encoding,
    file_offset: u64,
    stored_len: u64,
    logical_len: u64,
    blocks: u64,
    root: String,
}

#[derive(Serialize, Default)]
struct Counts {
    inodes: u64,
    entries: u64,
    regular: u64,
    directories: u64,
    symlinks: u64,
    devices: u64,
    fifos: u64,
    sockets: u64,
    hard_linked_inodes: u64,
    xattrs: u64,
    extents: u64,
    owned_directories: u64,
    file_bytes: u64,
}

fn inspect(path: &Path, trust: &[PathBuf], json: bool) -> Result<ExitCode> {
    let f = open(path, trust)?;
    let h = f.header();
    let m = f.metadata();
    let mut c = Counts {
        inodes: m.inodes.len() as u64,
        entries: m.dentries.len() as u64,
        xattrs: m.xattrs.len() as u64,
        extents: m.extents.len() as u64,
        ..Default::default()
    };
    for (i, ino) in m.inodes.iter().enumerate() {
        match ino.kind {
            Kind::Regular => {
                c.regular += 1;
                c.file_bytes += ino.size();
            }
            Kind::Directory => {
                c.directories += 1;
                c.owned_directories += ino.owns_security as u64;
            }
            Kind::Symlink => c.symlinks += 1,
            Kind::CharDevice | Kind::BlockDevice => c.devices += 1,
            Kind::Fifo => c.fifos += 1,
            Kind::Socket => c.sockets += 1,
        }
        if ino.kind != Kind::Directory && m.nlink[i] > 1 {
            c.hard_linked_inodes += 1;
        }
    }
    let out = InspectOut {
        path: path.display().to_string(),
        name: h.name.clone(),
        version: h.version.clone(),
        format_version: format!("{}.{}", h.major, h.minor),
        incompat_features: h.incompat,
        compat_features: h.compat,
        file_size: h.file_size,
        build_time: h.build_time,
        small_threshold: h.small_threshold,
        zstd_level: h.zstd_level,
        signer: keys::key_id(&h.signer),
        id: keys::key_id(&f.id()),
        regions: h
            .regions
            .iter()
            .enumerate()
            .map(|(i, r)| RegionOut {
                index: i,
                kind: r.kind,
                encoding: r.encoding,
                file_offset: r.file_offset,
                stored_len: r.stored_len,
                logical_len: r.logical_len,
                blocks: r.blocks(),
                root: keys::key_id(&r.root),
            })
            .collect(),
        counts: c,
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("fragment   {}", out.path);
    println!("name       {}  version {}", out.name, out.version);
    println!(
        "format     {} (incompat {:#x}, compat {:#x})",
        out.format_version, out.incompat_features, out.compat_features
    );
    println!("size       {} bytes", out.file_size);
    println!("signer     {} (signature valid)", out.signer);
    println!("id         {}", out.id);
    if out.build_time != 0 {
        println!(
            "built      {} UTC (SOURCE_DATE_EPOCH)",
            format_time(out.build_time as i64)
        );
    }
    println!(
        "options    small-threshold {} bytes, {}",
        out.small_threshold,
        if out.zstd_level == 0 {
            "uncompressed".to_string()
        } else {
            format!("zstd level {}", out.zstd_level)
        }
    );
    println!("regions");
    println!("  #  kind        enc    offset        stored        logical       root");
    for r in &out.regions {
        println!(
            "  {:<2} {:<11} {:<6} {:<13} {:<13} {:<13} {}",
            r.index,
            r.kind.name(),
            match r.encoding {
                fragments::Encoding::Raw => "raw",
                fragments::Encoding::Zstd => "zstd",
            },
            r.file_offset,
            r.stored_len,
            r.logical_len,
            &r.root[..16]
        );
    }
    let c = &out.counts;
    println!(
        "entries    {} inodes, {} names: {} files ({} bytes), {} directories ({} owned), {} symlinks, {} devices, {} fifos, {} sockets",
        c.inodes, c.entries, c.regular, c.file_bytes, c.directories, c.owned_directories, c.symlinks, c.devices, c.fifos, c.sockets
    );
    println!(
        "           {} hard-linked inodes, {} xattrs, {} extents",
        c.hard_linked_inodes, c.xattrs, c.extents
    );
    Ok(ExitCode::SUCCESS)
}

fn ls(path: &Path, target: &str, trust: &[PathBuf]) -> Result<ExitCode> {
    let f = open(path, trust)?;
    let m = f.metadata();
    let ino = resolve(&f, target)?;
    let rows: Vec<(Vec<u8>, u32)> = if m.inode(ino).kind == Kind::Directory {
        m.children(ino)
            .iter()
            .map(|d| (m.name(d).to_vec(), d.inode))
            .collect()
    } else {
        vec![(target.as_bytes().to_vec(), ino)]
    };
    let mut out = std::io::stdout().lock();
    for (name, i) in rows {
        let inode = m.inode(i);
        let size = match inode.body {
            fragments::Body::Device { major, minor } => format!("{major}, {minor}"),
            _ => inode.size().to_string(),
        };
        let mut line = format!(
            "{} {:>3} {:>5} {:>5} {:>10} {}.{:09} {}",
            mode_string(inode.kind, inode.perm),
            m.nlink[i as usize],
            inode.uid,
            inode.gid,
            size,
            format_time(inode.mtime.sec),
            inode.mtime.nsec,
            show(&name)
        );
        if let Some(t) = m.symlink_target(i) {
            line.push_str(" -> ");
            line.push_str(&show(t));
        }
        if writeln!(out, "{line}").is_err() {
            break;
        }
    }
    Ok(ExitCode::SUCCESS)
}

//! `mosaic serve` and `mosaic overlay ...`: open volumes (sharing fragment
//! files and the verified-block cache) and serve them over NBD.

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use nbd_server::{ExportConfig, Listen, Server, ServerConfig};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use volume::{OpenOptions, Overlay, Shared, Volume};

/// The TCP address used when no listener is given.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:10809";

#[derive(Args)]
pub struct ServeArgs {
    /// Volume manifests (volume.toml); each is one export, named by its
    /// `name`; the first is also the default export ""
    #[arg(required = true)]
    pub manifests: Vec<PathBuf>,
    /// Listen on a Unix socket (repeatable)
    #[arg(long = "socket", value_name = "PATH")]
    pub sockets: Vec<PathBuf>,
    /// Listen on TCP ADDR:PORT (repeatable); with neither --socket nor
    /// --listen: 127.0.0.1:10809
    #[arg(long = "listen", value_name = "ADDR:PORT")]
    pub listen: Vec<std::net::SocketAddr>,
    /// Start every overlay over, empty (its writes are lost)
    #[arg(long)]
    pub discard_overlay: bool,
    /// Bound of the verified-block cache shared by all exports
    #[arg(long, default_value = "256MiB", value_parser = parse_size)]
    pub cache_size: u64,
    /// Most simultaneous client connections
    #[arg(long, default_value_t = 128)]
    pub max_connections: usize,
}

fn parse_size(s: &str) -> Result<u64, String> {
    layout::manifest::parse_size(s)
}

#[derive(Subcommand)]
pub enum OverlayCmd {
    /// Show an overlay: the volume it belongs to, blocks written and zeroed,
    /// space used, whether a server holds it
    Info {
        manifest: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Replace the overlay by an empty one (its writes are lost); refused
    /// while a server holds it
    Reset { manifest: PathBuf },
}

/// Opens every manifest's volume through one `Shared`.
pub fn open_volumes(
    manifests: &[PathBuf],
    shared: &Shared,
    discard_overlay: bool,
) -> Result<Vec<Arc<Volume>>> {
    let mut out: Vec<Arc<Volume>> = Vec::new();
    for m in manifests {
        let v = Volume::open(
            m,
            shared,
            OpenOptions {
                overlay: true,
                discard_overlay,
            },
        )
        .with_context(|| format!("open volume {}", m.display()))?;
        if let Some(other) = out.iter().find(|o| o.name() == v.name()) {
            bail!(
                "{} and {} both name their export {:?}: export names must differ",
                other.manifest().display(),
                m.display(),
                v.name()
            );
        }
        tracing::info!(
            export = v.name(),
            bytes = v.size(),
            writable = !v.read_only(),
            "volume ready"
        );
        out.push(Arc::new(v));
    }
    Ok(out)
}

/// Serves `volumes` until SIGINT/SIGTERM; calls `ready` with the listening
/// addresses once clients can connect.
pub fn serve(
    volumes: Vec<Arc<Volume>>,
    mut listeners: Vec<Listen>,
    max_connections: usize,
    ready: impl FnOnce(&[String]),
) -> Result<()> {
    if listeners.is_empty() {
        listeners.push(Listen::Tcp(
            DEFAULT_LISTEN.parse().expect("valid default address"),
        ));
    }
    let exports = volumes
        .iter()
        .map(|v| ExportConfig {
            name: v.name().to_owned(),
            description: v.description(),
            export: v.clone() as Arc<dyn nbd_server::Export>,
        })
        .collect();
    let config = ServerConfig {
        exports,
        listeners,
        max_connections,
        ..ServerConfig::default()
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("mosaic-serve")
        .build()
        .context("start the async runtime")?;
    rt.block_on(async move {
        let server = Server::bind(config).await?;
        let addrs = server.addresses();
        for a in &addrs {
            eprintln!("listening on {a}");
        }
        ready(&addrs);
        server.run(shutdown_signal()).await?;
        anyhow::Ok(())
    })?;
    for v in &volumes {
        let s = v.cache_stats();
        tracing::info!(
            export = v.name(),
            cache_hits = s.hits,
            cache_misses = s.misses,
            "stopped"
        );
    }
    eprintln!("mosaic: stopped; overlays flushed");
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("cannot watch SIGTERM: {e}");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => eprintln!("mosaic: SIGINT, finishing in-flight requests"),
        _ = term.recv() => eprintln!("mosaic: SIGTERM, finishing in-flight requests"),
    }
}

pub fn run_serve(a: ServeArgs) -> Result<ExitCode> {
    let shared = Shared::new(a.cache_size);
    let volumes = open_volumes(&a.manifests, &shared, a.discard_overlay)?;
    let mut listeners: Vec<Listen> = a.sockets.into_iter().map(Listen::Unix).collect();
    for addr in a.listen {
        listeners.push(Listen::Tcp(addr));
    }
    serve(volumes, listeners, a.max_connections, |_| {})?;
    Ok(ExitCode::SUCCESS)
}

fn overlay_of(manifest: &Path) -> Result<(layout::Manifest, PathBuf)> {
    let m = layout::Manifest::load(manifest)?;
    let Some(p) = m.overlay.clone() else {
        return Err(crate::util::InvalidInput(format!(
            "{}: no [overlay] table: this volume is read-only and has no overlay",
            manifest.display()
        ))
        .into());
    };
    Ok((m, p))
}

pub fn run_overlay(cmd: OverlayCmd) -> Result<ExitCode> {
    match cmd {
        OverlayCmd::Info { manifest, json } => {
            let (_, path) = overlay_of(&manifest)?;
            if !path.exists() {
                if json {
                    println!(
                        "{}",
                        serde_json::json!({ "path": path.display().to_string(), "exists": false })
                    );
                } else {
                    println!(
                        "{}: does not exist yet (created empty by the first `mosaic serve`)",
                        path.display()
                    );
                }
                return Ok(ExitCode::SUCCESS);
            }
            let i = Overlay::info(&path)?;
            // Does it belong to the manifest's volume as it is now?
            let cache = layout::FragmentCache::new();
            let current = layout::Layout::open(&manifest, &cache).ok().map(|l| {
                l.image
                    .identity
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<String>()
            });
            let matches = current.as_deref().map(|c| c == i.identity);
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "path": i.path.display().to_string(),
                        "exists": true,
                        "identity": i.identity,
                        "volume_identity": current,
                        "matches_volume": matches,
                        "blocks": i.blocks,
                        "data_blocks": i.data_blocks,
                        "zero_blocks": i.zero_blocks,
                        "allocated_bytes": i.allocated_bytes,
                        "in_use": i.in_use,
                    })
                );
            } else {
                println!("overlay     {}", i.path.display());
                println!(
                    "volume      {} ({} blocks of 4096 bytes)",
                    i.identity, i.blocks
                );
                match matches {
                    Some(true) => println!("manifest    {}: same volume", manifest.display()),
                    Some(false) => println!(
                        "manifest    {}: DIFFERENT volume {} (the fragments or layout changed; `mosaic overlay reset` starts over)",
                        manifest.display(),
                        current.unwrap_or_default()
                    ),
                    None => println!("manifest    {}: cannot be opened", manifest.display()),
                }
                println!(
                    "written     {} blocks ({} MiB), zeroed {} blocks",
                    i.data_blocks,
                    (i.data_blocks * 4096) >> 20,
                    i.zero_blocks
                );
                println!("on disk     {} bytes allocated", i.allocated_bytes);
                println!(
                    "in use      {}",
                    if i.in_use {
                        "yes (a server holds it)"
                    } else {
                        "no"
                    }
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        OverlayCmd::Reset { manifest } => {
            let (_, path) = overlay_of(&manifest)?;
            let cache = layout::FragmentCache::new();
            let lay = layout::Layout::open(&manifest, &cache)?;
            Overlay::reset(&path, lay.image.blocks, lay.image.identity)?;
            eprintln!("{}: reset to an empty overlay", path.display());
            Ok(ExitCode::SUCCESS)
        }
    }
}

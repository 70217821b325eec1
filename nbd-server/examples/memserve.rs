//! Serves an in-memory export over NBD, for trying the server with real
//! clients and for benchmarks:
//!
//! ```text
//! cargo run --release -p nbd-server --example memserve -- --socket /tmp/mem.sock --size 1G
//! nbdinfo 'nbd+unix:///?socket=/tmp/mem.sock'
//! ```
//!
//! Options: `--socket PATH` and `--listen ADDR:PORT` (repeatable; default
//! `--socket ./memserve.sock`), `--size N[K|M|G]` (default 1G), `--name NAME`
//! (default "mem"), `--description TEXT`, `--read-only`, `--fill` (write a
//! pattern over the whole export first, so no page is a hole),
//! `--poison START:END` (reads touching that byte range fail with EIO).
//! Logs go to stderr (`RUST_LOG=debug` for per-request refusals). Stops on
//! Ctrl-C or SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use nbd_server::{Export, ExportConfig, Listen, MemoryExport, Server, ServerConfig};

struct Args {
    listeners: Vec<Listen>,
    size: u64,
    name: String,
    description: String,
    read_only: bool,
    fill: bool,
    poison: Option<(u64, u64)>,
}

fn parse_size(s: &str) -> Result<u64, String> {
    let (num, mult) = match s.chars().last() {
        Some('K' | 'k') => (&s[..s.len() - 1], 1u64 << 10),
        Some('M' | 'm') => (&s[..s.len() - 1], 1 << 20),
        Some('G' | 'g') => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("bad size {s:?}"))
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        listeners: Vec::new(),
        size: 1 << 30,
        name: "mem".into(),
        description: "in-memory export (nbd-server example)".into(),
        read_only: false,
        fill: false,
        poison: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--socket" => a.listeners.push(Listen::Unix(PathBuf::from(value()?))),
            "--listen" => {
                let v = value()?;
                let addr: SocketAddr = v.parse().map_err(|e| format!("bad address {v:?}: {e}"))?;
                a.listeners.push(Listen::Tcp(addr));
            }
            "--size" => a.size = parse_size(&value()?)?,
            "--name" => a.name = value()?,
            "--description" => a.description = value()?,
            "--read-only" => a.read_only = true,
            "--fill" => a.fill = true,
            "--poison" => {
                let v = value()?;
                let (s, e) = v.split_once(':').ok_or("--poison takes START:END")?;
                a.poison = Some((parse_size(s)?, parse_size(e)?));
            }
            "-h" | "--help" => {
                return Err("usage: memserve [--socket PATH]... [--listen ADDR:PORT]... [--size N[K|M|G]] \
                     [--name NAME] [--description TEXT] [--read-only] [--fill] [--poison START:END]"
                    .into())
            }
            other => return Err(format!("unknown argument {other:?} (try --help)")),
        }
    }
    if a.listeners.is_empty() {
        a.listeners
            .push(Listen::Unix(PathBuf::from("memserve.sock")));
    }
    Ok(a)
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("memserve: {e}");
            return ExitCode::from(2);
        }
    };
    let mut export = MemoryExport::new(args.size);
    if args.fill {
        let mut chunk = vec![0u8; 1 << 20];
        let mut off = 0;
        while off < args.size {
            let n = chunk.len().min((args.size - off) as usize);
            for (i, b) in chunk[..n].iter_mut().enumerate() {
                *b = ((off as usize + i) % 251) as u8 | 1;
            }
            export
                .write_at(off, &chunk[..n], false)
                .expect("filling memory cannot fail");
            off += n as u64;
        }
    }
    if let Some((s, e)) = args.poison {
        export = export.poisoned(s..e);
    }
    if args.read_only {
        export = export.read_only();
    }
    let config = ServerConfig {
        exports: vec![ExportConfig {
            name: args.name,
            description: args.description,
            export: Arc::new(export),
        }],
        listeners: args.listeners,
        ..ServerConfig::default()
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("building the tokio runtime");
    let result = rt.block_on(async {
        let server = Server::bind(config).await?;
        for a in server.addresses() {
            eprintln!("listening on {a}");
        }
        server.run(shutdown_signal()).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let mut msg = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                msg.push_str(&format!(": {s}"));
                src = s.source();
            }
            eprintln!("memserve: {msg}");
            ExitCode::from(1)
        }
    }
}

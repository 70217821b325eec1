//! `mosaic`: the command line. Library crates hold the logic; this file
//! parses arguments, draws progress, prints results and maps errors to
//! exit codes: 0 success, 1 invalid input (verification failure, conflict,
//! corrupt file), 2 usage or environment error.

mod cmd_demo;
mod cmd_fragment;
mod cmd_serve;
mod cmd_update;
mod cmd_volume;
mod util;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "mosaic",
    version,
    about = "Serve signed, merged image fragments as a verified block device"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate an ed25519 signing key: KEY (PKCS#8 PEM, 0600) and KEY.pub (SPKI PEM)
    Keygen {
        /// Where to write the secret key; the public key goes to KEY.pub
        #[arg(short, long)]
        output: PathBuf,
        /// Replace existing key files
        #[arg(long)]
        force: bool,
    },
    /// Build, check and look into fragments
    #[command(subcommand)]
    Fragment(cmd_fragment::FragmentCmd),
    /// Check volume manifests (volume.toml)
    #[command(subcommand)]
    Volume(cmd_volume::VolumeCmd),
    /// Serve volumes over NBD (verified reads, writes to each overlay)
    Serve(cmd_serve::ServeArgs),
    /// Inspect or reset a volume's overlay
    #[command(subcommand)]
    Overlay(cmd_serve::OverlayCmd),
    /// Update fragments: signed packages of forward differentials against a
    /// base; reverse differentials kept beside each hydrated fragment
    #[command(subcommand)]
    Update(cmd_update::UpdateCmd),
    /// Build demo fragments, merge them into a volume and serve it on
    /// DIR/nbd.sock and 127.0.0.1:10809
    Demo {
        /// Working directory (reused on a re-run)
        #[arg(long, default_value = "mosaic-demo")]
        dir: PathBuf,
        /// Prepare everything, but do not serve
        #[arg(long)]
        no_serve: bool,
        /// TCP address to serve on besides DIR/nbd.sock
        #[arg(long, default_value = cmd_serve::DEFAULT_LISTEN)]
        listen: std::net::SocketAddr,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Keygen { output, force } => cmd_fragment::keygen(&output, force),
        Command::Fragment(c) => cmd_fragment::run(c),
        Command::Volume(c) => cmd_volume::run(c),
        Command::Serve(a) => cmd_serve::run_serve(a),
        Command::Overlay(c) => cmd_serve::run_overlay(c),
        Command::Update(c) => cmd_update::run(c),
        Command::Demo {
            dir,
            no_serve,
            listen,
        } => cmd_demo::run(&dir, !no_serve, listen),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("mosaic: {e:#}");
            util::exit_code_for(&e)
        }
    }
}

//! The `mosaic` binary cargo built for these tests, run with a deadline and
//! a clean environment.

use std::ffi::{OsStr, OsString};
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;
use testkit::{code, output_within, text};

/// How long one `mosaic` command may take (a build of a real tree at the
/// test profile's opt-level 1 on a busy machine included).
pub const MOSAIC_DEADLINE: Duration = Duration::from_secs(300);

/// The repository's root (the root package's directory).
pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Path of the `mosaic` binary cargo built for these tests.
pub fn mosaic_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_mosaic"))
}

/// A `Command` for `mosaic ARGS...` with a clean environment: no RUST_LOG
/// (only errors are logged), no SOURCE_DATE_EPOCH (builds are
/// reproducible), no socket activation variables.
pub fn mosaic_cmd<I, S>(args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut c = Command::new(mosaic_bin());
    c.args(args)
        .env_remove("RUST_LOG")
        .env_remove("SOURCE_DATE_EPOCH")
        .env_remove("LISTEN_PID")
        .env_remove("LISTEN_FDS");
    c
}

/// Runs `mosaic ARGS...` (within [`MOSAIC_DEADLINE`]) and returns its
/// output, whatever the exit status.
#[track_caller]
pub fn mosaic<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    mosaic_env(args, &[])
}

/// Like [`mosaic`] with extra environment variables.
#[track_caller]
pub fn mosaic_env<I, S>(args: I, env: &[(&str, &str)]) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut c = mosaic_cmd(args);
    c.envs(env.iter().copied());
    output_within(c, MOSAIC_DEADLINE)
}

/// Runs `mosaic ARGS...`, failing the test (with both streams) unless it
/// exits 0.
#[track_caller]
pub fn mosaic_ok<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<OsString> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
    let o = mosaic(&args);
    assert!(
        o.status.success(),
        "mosaic {args:?} failed ({}):\n{}",
        o.status,
        text(&o)
    );
    o
}

/// Runs `mosaic ARGS...` and returns (exit code, stderr as text).
#[track_caller]
pub fn mosaic_code<I, S>(args: I) -> (i32, String)
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let out = mosaic(args);
    (
        code(&out),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

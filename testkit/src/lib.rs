//! Test support shared by the workspace's integration tests, free of the
//! storage stack (no `fragments`, `layout` or `volume`): `nbd-server`'s
//! tests use it as well as the `mosaic` package's.
//!
//! ```text
//!   tools    external programs with deadlines; a missing one fails the
//!            test naming its Debian package (never skip-and-pass)
//!   process  signals (asserted, or tried on purpose), waiting with a
//!            deadline, a process's output read line by line
//!   net      NBD URIs, free TCP ports, clients over a Unix socket
//!   bytes    deterministic contents, searching and comparing bytes
//! ```
//!
//! The storage-aware helpers (keys, fragments, trees, golden files, the
//! `mosaic` binary and its server, VMs) live in the root package's
//! `tests/kit/`, which re-exports this crate.

pub mod bytes;
pub mod net;
pub mod process;
pub mod tools;

pub use bytes::*;
pub use net::*;
pub use process::*;
pub use tools::*;

/// A list of process arguments from strings and paths alike:
/// `args!["fragment", "verify", path, "--trust", key]`.
#[macro_export]
macro_rules! args {
    ($($a:expr),* $(,)?) => {
        vec![$(std::ffi::OsString::from(AsRef::<std::ffi::OsStr>::as_ref(&$a))),*]
    };
}

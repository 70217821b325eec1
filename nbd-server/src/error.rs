//! Errors of the server as a whole: configuration, binding, shutdown.
//! Per-connection trouble (a client that breaks the protocol, an export
//! that fails a request) never surfaces here: it is answered on the wire
//! and logged, and the server keeps serving.

use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::path::PathBuf;

use crate::export::ExportError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no export configured")]
    NoExports,

    #[error("no listener configured (give a Unix socket path or a TCP address)")]
    NoListeners,

    #[error("export name {name:?} is configured twice")]
    DuplicateExport { name: String },

    #[error("export {name:?}: {what} is longer than the protocol's 4096 bytes")]
    StringTooLong { name: String, what: &'static str },

    #[error("export {name:?}: {what} contains a NUL byte, which the protocol forbids")]
    StringHasNul { name: String, what: &'static str },

    #[error("max_connections must be at least 1")]
    NoConnectionsAllowed,

    #[error("cannot listen on TCP {addr}")]
    BindTcp {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },

    #[error("cannot listen on Unix socket {path}")]
    BindUnix {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("another server is listening on {path}")]
    SocketInUse { path: PathBuf },

    #[error("{path} exists and is not a socket; refusing to replace it")]
    NotASocket { path: PathBuf },

    #[error("Unix socket path {path} is longer than the {max} bytes a socket address holds")]
    SocketPathTooLong { path: PathBuf, max: usize },

    #[error("systemd socket activation: {what}")]
    SocketActivation { what: String },

    #[error("systemd socket activation: fd {fd}: {what}")]
    ActivatedFd {
        fd: RawFd,
        what: &'static str,
        #[source]
        source: io::Error,
    },

    #[error("flushing export {name:?} at shutdown")]
    FlushAtShutdown {
        name: String,
        #[source]
        source: ExportError,
    },
}

//! # nbd-server: the NBD protocol over tokio, serving block-device exports
//!
//! The server speaks the fixed newstyle protocol of
//! [doc/proto.md](https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md)
//! to any number of clients (qemu, libnbd tools, nbd-client, fio) on Unix
//! and TCP sockets, and serves each client one of several [`Export`]s.
//!
//! ```text
//!  Server::bind ── listener.rs: Unix (temp name + rename), TCP, socket activation
//!       │
//!  Server::run ── server.rs: accept loops ─► connection limit ─► one task per connection
//!                                                                   │
//!       connection.rs: handshake.rs under a timeout ───────────────┘
//!         (OPT_GO/INFO/LIST/EXPORT_NAME, structured replies, base:allocation)
//!                 │
//!       transmission.rs: one task per connection owns the socket (socket.rs):
//!         read (framing.rs) ─► request.rs (validate) ─► execute.rs ─► batched writev
//!                                   long requests: blocking pool ─┘   (pool.rs buffers)
//!                 │                                   │
//!                 └──── proto.rs: every wire constant and header encoding
//!                                                     │
//!                                         export.rs: trait Export (the seam)
//! ```
//!
//! ## Promises
//! - Handshake: fixed newstyle with NO_ZEROES; `NBD_OPT_GO`/`INFO` (export,
//!   name, description, block size 1/4096/32 MiB), `LIST`, `EXPORT_NAME`,
//!   `ABORT`, `STRUCTURED_REPLY`, `LIST`/`SET_META_CONTEXT` with
//!   `base:allocation`; `STARTTLS` is refused (`ERR_POLICY`), unknown options
//!   get `ERR_UNSUP`. The export name "" is the first configured export.
//! - Transmission: READ (with structured replies, zero runs of 4 KiB or more
//!   become hole chunks; DF gives one data chunk), WRITE, FLUSH, TRIM,
//!   WRITE_ZEROES (NO_HOLE, FAST_ZERO), CACHE, BLOCK_STATUS (REQ_ONE), DISC;
//!   FUA everywhere; errors as the spec asks (EINVAL, EPERM, ENOSPC, EIO
//!   with `ERROR_OFFSET` when the export names the failing offset).
//! - Many requests in flight per connection, answered as they complete;
//!   memory per connection is bounded (about 64 MiB of requests and replies
//!   in flight, 32 MiB of reply buffers kept for reuse).
//! - Listeners: Unix sockets (the file appears only once it accepts, and is
//!   removed at shutdown; a stale one is replaced, a live one or a non-socket
//!   refused) and TCP (`TCP_NODELAY`). Under socket activation (`LISTEN_PID`
//!   naming this process, `LISTEN_FDS`) the inherited sockets are served and
//!   the configured listeners ignored.
//! - A client that breaks the protocol loses its own connection only; every
//!   connection's trouble is logged with `tracing` (connection id, peer,
//!   export, what).
//! - Graceful shutdown: stop accepting, remove Unix socket files, finish
//!   in-flight requests, close, flush every writable export.
//!
//! ## Not done here
//! - No TLS and no authentication: bind TCP to loopback unless the network
//!   is trusted (a warning is logged otherwise).
//! - No extended headers (64-bit lengths), no resize, no oldstyle handshake.
//! - Verifying data is the export's job: the server sends what `read_at`
//!   returns and never re-reads it.

pub mod error;
pub mod export;
pub mod memory;
pub mod proto;
mod volume_export;

mod connection;
mod execute;
mod framing;
mod handshake;
mod listener;
mod pool;
mod request;
mod server;
mod socket;
mod transmission;

pub use error::Error;
pub use export::*;
pub use memory::MemoryExport;
pub use server::{ExportConfig, Listen, Server, ServerConfig};

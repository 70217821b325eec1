//! # nbd-server: the NBD protocol over tokio, serving `volume` exports
//!
//! Contract (not implemented yet; see the serve issue): fixed newstyle
//! handshake with OPT_GO/INFO/LIST and structured replies, many requests in
//! flight per connection, Unix and TCP listeners, graceful shutdown. A
//! malformed request closes that connection only; the server keeps serving
//! its other clients.

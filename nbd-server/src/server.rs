//! The server: configuration, binding, the accept loop, the connection
//! limit and graceful shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinSet;

use crate::connection::{self, error_chain, ConnCtx};
use crate::error::Error;
use crate::export::{Errno, Export, ExportError};
use crate::handshake::Exports;
use crate::listener::{self, Listener, Stream};
use crate::proto::MAX_STRING_LEN;

/// How long a shutdown waits for connections to finish the requests they
/// have in flight before closing them regardless.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// One export as clients see it.
#[derive(Clone)]
pub struct ExportConfig {
    /// The NBD export name (NBD_OPT_GO / NBD_OPT_EXPORT_NAME / LIST).
    pub name: String,
    /// Shown by NBD_OPT_LIST and NBD_INFO_DESCRIPTION; may be empty.
    pub description: String,
    pub export: Arc<dyn Export>,
}

impl ExportConfig {
    pub fn new(name: impl Into<String>, export: Arc<dyn Export>) -> ExportConfig {
        ExportConfig {
            name: name.into(),
            description: String::new(),
            export,
        }
    }
}

impl std::fmt::Debug for ExportConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExportConfig")
            .field("name", &self.name)
            .field("description", &self.description)
            .field("size", &self.export.size())
            .field("read_only", &self.export.read_only())
            .finish()
    }
}

/// Where to listen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// In order; the first is the default export (name "").
    pub exports: Vec<ExportConfig>,
    /// Ignored when the process is socket-activated (see [`Server::bind`]).
    pub listeners: Vec<Listen>,
    /// Connections beyond this are accepted and closed at once, with a
    /// warning in the log (default 128).
    pub max_connections: usize,
    /// A client that has not finished the handshake by then is dropped
    /// (default 10 s).
    pub handshake_timeout: Duration,
}

impl Default for ServerConfig {
    fn default() -> ServerConfig {
        ServerConfig {
            exports: Vec::new(),
            listeners: Vec::new(),
            max_connections: 128,
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

/// A bound server, ready to [`run`](Server::run).
pub struct Server {
    listeners: Vec<Listener>,
    exports: Exports,
    max_connections: usize,
    handshake_timeout: Duration,
}

impl Server {
    /// Checks the configuration and binds every listener.
    ///
    /// Socket activation: when `LISTEN_PID` is this process's pid and
    /// `LISTEN_FDS` is n, the n inherited sockets from fd 3 on are served
    /// instead and `config.listeners` is ignored (this is how
    /// `nbdinfo -- [ mosaic serve ... ]` and systemd `.socket` units hand
    /// over a socket); the variables are removed from the environment.
    pub async fn bind(config: ServerConfig) -> Result<Server, Error> {
        let ServerConfig {
            exports,
            listeners,
            max_connections,
            handshake_timeout,
        } = config;
        check_exports(&exports)?;
        if max_connections == 0 {
            return Err(Error::NoConnectionsAllowed);
        }
        let bound = match listener::activated()? {
            Some(activated) => {
                if !listeners.is_empty() {
                    tracing::info!("socket-activated: the configured listeners are ignored");
                }
                activated
            }
            None => {
                if listeners.is_empty() {
                    return Err(Error::NoListeners);
                }
                let mut bound = Vec::with_capacity(listeners.len());
                for l in &listeners {
                    bound.push(match l {
                        Listen::Tcp(addr) => listener::bind_tcp(*addr).await?,
                        Listen::Unix(path) => listener::bind_unix(path)?,
                    });
                }
                bound
            }
        };
        Ok(Server {
            listeners: bound,
            exports: Exports(exports.into()),
            max_connections,
            handshake_timeout,
        })
    }

    /// What is being listened on, e.g. `unix:/run/nbd.sock`,
    /// `tcp:127.0.0.1:10809`, `systemd fd 3 (unix /tmp/x.sock)`.
    pub fn addresses(&self) -> Vec<String> {
        self.listeners
            .iter()
            .map(|l| l.describe().to_owned())
            .collect()
    }

    /// Serves until `shutdown` resolves. Then: stops accepting (Unix socket
    /// files are removed), closes connections still in their handshake,
    /// lets the others finish the requests they have in flight (at most
    /// 30 s), closes them, and flushes every writable export. Returns the
    /// first flush error, if any.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
        let Server {
            listeners,
            exports,
            max_connections,
            handshake_timeout,
        } = self;
        let (stop_tx, stop_rx) = watch::channel(false);
        let (accepted_tx, mut accepted_rx) = mpsc::channel(64);
        let mut acceptors = JoinSet::new();
        for l in listeners {
            acceptors.spawn(accept_loop(l, accepted_tx.clone()));
        }
        drop(accepted_tx);

        let limit = Arc::new(Semaphore::new(max_connections));
        let mut conns = JoinSet::new();
        let mut next_id = 0u64;
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                biased;
                _ = &mut shutdown => break,
                Some((stream, peer)) = accepted_rx.recv() => {
                    let Ok(permit) = limit.clone().try_acquire_owned() else {
                        tracing::warn!(peer = %peer, "connection refused: {max_connections} connections already open");
                        continue;
                    };
                    next_id += 1;
                    let ctx = ConnCtx {
                        id: next_id,
                        peer,
                        exports: exports.clone(),
                        handshake_timeout,
                        stop: stop_rx.clone(),
                    };
                    conns.spawn(async move {
                        let _permit = permit;
                        match stream {
                            Stream::Tcp(s) => connection::handle(s, ctx).await,
                            Stream::Unix(s) => connection::handle(s, ctx).await,
                        }
                    });
                }
                Some(joined) = conns.join_next() => {
                    if let Err(e) = joined {
                        if e.is_panic() {
                            tracing::error!("a connection task panicked: {e}");
                        }
                    }
                }
            }
        }

        tracing::info!(
            connections = conns.len(),
            "shutting down: no new connections; finishing the requests in flight"
        );
        acceptors.abort_all();
        while acceptors.join_next().await.is_some() {}
        drop(accepted_rx);
        let _ = stop_tx.send(true);
        let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
            while conns.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                connections = conns.len(),
                "connections still busy after {DRAIN_TIMEOUT:?}: closing them"
            );
            conns.abort_all();
            while conns.join_next().await.is_some() {}
        }

        let mut first_error = None;
        for e in exports.0.iter().filter(|e| !e.export.read_only()) {
            let export = e.export.clone();
            let result = match tokio::task::spawn_blocking(move || export.flush()).await {
                Ok(r) => r,
                Err(join) => Err(ExportError::new(
                    Errno::Io,
                    format!("flush panicked: {join}"),
                )),
            };
            if let Err(source) = result {
                let err = Error::FlushAtShutdown {
                    name: e.name.clone(),
                    source,
                };
                tracing::error!("{}", error_chain(&err));
                first_error.get_or_insert(err);
            }
        }
        tracing::info!("server stopped");
        first_error.map_or(Ok(()), Err)
    }
}

fn check_exports(exports: &[ExportConfig]) -> Result<(), Error> {
    if exports.is_empty() {
        return Err(Error::NoExports);
    }
    for (i, e) in exports.iter().enumerate() {
        if exports[..i].iter().any(|o| o.name == e.name) {
            return Err(Error::DuplicateExport {
                name: e.name.clone(),
            });
        }
        for (what, s) in [("the name", &e.name), ("the description", &e.description)] {
            if s.len() > MAX_STRING_LEN {
                return Err(Error::StringTooLong {
                    name: e.name.clone(),
                    what,
                });
            }
            if s.contains('\0') {
                return Err(Error::StringHasNul {
                    name: e.name.clone(),
                    what,
                });
            }
        }
    }
    Ok(())
}

async fn accept_loop(l: Listener, tx: mpsc::Sender<(Stream, String)>) {
    const BACKOFF_START: Duration = Duration::from_millis(10);
    let mut backoff = BACKOFF_START;
    loop {
        match l.accept().await {
            Ok(accepted) => {
                backoff = BACKOFF_START;
                if tx.send(accepted).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                // Out of fds, a connection reset before accept, ...: keep
                // listening, slower while it lasts.
                tracing::warn!(listener = l.describe(), error = %e, "accept failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}

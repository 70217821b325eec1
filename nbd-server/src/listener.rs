//! Listening sockets: TCP, Unix, and sockets handed over by systemd-style
//! socket activation.
//!
//! A Unix socket file appears only once it accepts connections: the socket
//! is bound and listening under a temporary name in the same directory,
//! then renamed onto its path. An existing path is checked first: a live
//! server there is an error, a stale socket is replaced, anything that is
//! not a socket is left alone (error). The file is removed when the
//! listener is dropped, if it is still ours.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};

use crate::error::Error;

/// First fd passed by socket activation (`SD_LISTEN_FDS_START`).
const LISTEN_FDS_START: RawFd = 3;

pub(crate) enum Listener {
    Tcp {
        inner: TcpListener,
        desc: String,
    },
    Unix {
        inner: UnixListener,
        desc: String,
        /// The socket file to remove on drop (not for activated sockets:
        /// their owner cleans up).
        _file: Option<SocketFile>,
    },
}

/// An accepted connection.
pub(crate) enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Listener {
    /// What this listens on, e.g. `unix:/run/nbd.sock`, `tcp:127.0.0.1:10809`.
    pub(crate) fn describe(&self) -> &str {
        match self {
            Listener::Tcp { desc, .. } | Listener::Unix { desc, .. } => desc,
        }
    }

    /// Accepts one connection; returns it with a peer description.
    pub(crate) async fn accept(&self) -> io::Result<(Stream, String)> {
        match self {
            Listener::Tcp { inner, .. } => {
                let (s, addr) = inner.accept().await?;
                // Replies are written whole; never wait for an ACK to send one.
                s.set_nodelay(true)?;
                Ok((Stream::Tcp(s), format!("tcp:{addr}")))
            }
            Listener::Unix { inner, desc, .. } => {
                let (s, _) = inner.accept().await?;
                set_send_buffer(&s, UNIX_SEND_BUFFER);
                let peer = match s.peer_cred().ok().and_then(|c| c.pid()) {
                    Some(pid) => format!("{desc} pid {pid}"),
                    None => desc.clone(),
                };
                Ok((Stream::Unix(s), peer))
            }
        }
    }
}

/// Send buffer asked for on Unix connections. The default (~208 KiB) is
/// all a Unix socket may hold unread, so a 1 MiB reply would take several
/// wait-for-writable rounds; the kernel caps the request at `wmem_max`.
const UNIX_SEND_BUFFER: libc::c_int = 4 << 20;

fn set_send_buffer(s: &UnixStream, bytes: libc::c_int) {
    use std::os::fd::AsRawFd;
    // SAFETY: setsockopt with a c_int option value on a socket we own.
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&bytes as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r != 0 {
        tracing::debug!(error = %io::Error::last_os_error(), "could not enlarge the socket send buffer");
    }
}

/// Binds a TCP listener. A non-loopback address gets a warning: NBD has no
/// authentication or encryption here.
pub(crate) async fn bind_tcp(addr: SocketAddr) -> Result<Listener, Error> {
    let inner = TcpListener::bind(addr)
        .await
        .map_err(|source| Error::BindTcp { addr, source })?;
    let local = inner.local_addr().unwrap_or(addr);
    if !addr.ip().is_loopback() {
        tracing::warn!(
            address = %local,
            "listening on a non-loopback address: NBD traffic is unauthenticated and \
             unencrypted, anyone who can reach {local} can read the exports"
        );
    }
    Ok(Listener::Tcp {
        inner,
        desc: format!("tcp:{local}"),
    })
}

/// A socket file this process created.
pub(crate) struct SocketFile {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        // Only if it is still the file we created (not a successor's).
        if let Ok(m) = std::fs::symlink_metadata(&self.path) {
            if m.dev() == self.dev && m.ino() == self.ino {
                if let Err(e) = std::fs::remove_file(&self.path) {
                    tracing::warn!(path = %self.path.display(), error = %e, "could not remove the socket file");
                }
            }
        }
    }
}

/// Longest path a `sockaddr_un` holds (108 bytes with the NUL).
const SUN_PATH_MAX: usize = 107;

/// Binds a Unix socket at `path` (see the module comment for the rules).
pub(crate) fn bind_unix(path: &Path) -> Result<Listener, Error> {
    use std::os::unix::ffi::OsStrExt;
    static COUNTER: AtomicU64 = AtomicU64::new(0);

    if path.as_os_str().as_bytes().len() > SUN_PATH_MAX {
        return Err(Error::SocketPathTooLong {
            path: path.to_owned(),
            max: SUN_PATH_MAX,
        });
    }
    let bind_err = |source: io::Error| Error::BindUnix {
        path: path.to_owned(),
        source,
    };
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => {
                return Err(Error::SocketInUse {
                    path: path.to_owned(),
                })
            }
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                tracing::info!(path = %path.display(), "replacing a stale socket");
            }
            Err(e) => return Err(bind_err(e)),
        },
        Ok(_) => {
            return Err(Error::NotASocket {
                path: path.to_owned(),
            })
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(bind_err(e)),
    }

    let dir = path.parent().unwrap_or(Path::new(""));
    let tmp_name = format!(
        ".nbd-{}-{}.tmp",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    let tmp = dir.join(tmp_name);
    if tmp.as_os_str().as_bytes().len() > SUN_PATH_MAX {
        return Err(Error::SocketPathTooLong {
            path: tmp,
            max: SUN_PATH_MAX,
        });
    }
    // A leftover of an earlier process that had our pid.
    let _ = std::fs::remove_file(&tmp);
    let std_listener = std::os::unix::net::UnixListener::bind(&tmp).map_err(bind_err)?;
    if let Err(e) = std::fs::rename(&tmp, path) {
        let _ = std::fs::remove_file(&tmp);
        return Err(bind_err(e));
    }
    let meta = std::fs::symlink_metadata(path).map_err(bind_err)?;
    let file = SocketFile {
        path: path.to_owned(),
        dev: meta.dev(),
        ino: meta.ino(),
    };
    std_listener.set_nonblocking(true).map_err(bind_err)?;
    let inner = UnixListener::from_std(std_listener).map_err(bind_err)?;
    Ok(Listener::Unix {
        inner,
        desc: format!("unix:{}", path.display()),
        _file: Some(file),
    })
}

/// Listeners passed by socket activation (`LISTEN_PID` equal to our pid,
/// `LISTEN_FDS=n`: fds 3..3+n), or `None` when not activated. The
/// variables are removed so that children do not inherit them.
pub(crate) fn activated() -> Result<Option<Vec<Listener>>, Error> {
    let Ok(pid) = std::env::var("LISTEN_PID") else {
        return Ok(None);
    };
    if pid.trim().parse::<u32>().ok() != Some(std::process::id()) {
        return Ok(None);
    }
    let fds = std::env::var("LISTEN_FDS").unwrap_or_default();
    let count: RawFd = fds.trim().parse().map_err(|_| Error::SocketActivation {
        what: format!("LISTEN_FDS={fds:?} is not a number"),
    })?;
    // Edition 2021: removing variables is safe to call; this runs in
    // bind(), before any thread of ours reads the environment.
    std::env::remove_var("LISTEN_PID");
    std::env::remove_var("LISTEN_FDS");
    std::env::remove_var("LISTEN_FDNAMES");
    if !(1..=1024).contains(&count) {
        return Err(Error::SocketActivation {
            what: format!("LISTEN_FDS={count}: expected between 1 and 1024 sockets"),
        });
    }
    let mut out = Vec::with_capacity(count as usize);
    for fd in LISTEN_FDS_START..LISTEN_FDS_START + count {
        out.push(adopt(fd)?);
    }
    Ok(Some(out))
}

/// Takes ownership of an inherited listening socket.
fn adopt(fd: RawFd) -> Result<Listener, Error> {
    let os_err = |what: &'static str| Error::ActivatedFd {
        fd,
        what,
        source: io::Error::last_os_error(),
    };
    let mut listening: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: plain getsockopt into a c_int of the given size.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ACCEPTCONN,
            (&mut listening as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(os_err("not a socket"));
    }
    if listening == 0 {
        return Err(Error::SocketActivation {
            what: format!("fd {fd} is a socket that is not listening"),
        });
    }
    // SAFETY: sockaddr_storage is plain data, large enough for any family.
    let mut addr: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut alen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: getsockname writes at most `alen` bytes into `addr`.
    let r = unsafe {
        libc::getsockname(
            fd,
            (&mut addr as *mut libc::sockaddr_storage).cast(),
            &mut alen,
        )
    };
    if r != 0 {
        return Err(os_err("getsockname failed"));
    }
    // SAFETY: fcntl on an fd we were handed; only sets the close-on-exec bit.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } != 0 {
        return Err(os_err("cannot set close-on-exec"));
    }
    let family = libc::c_int::from(addr.ss_family);
    let nonblocking = |e: io::Error| Error::ActivatedFd {
        fd,
        what: "cannot make it non-blocking",
        source: e,
    };
    match family {
        libc::AF_UNIX => {
            // SAFETY: a listening socket passed to us by our parent, taken
            // over exactly once (the variables are gone now).
            let l = unsafe { std::os::unix::net::UnixListener::from_raw_fd(fd) };
            l.set_nonblocking(true).map_err(nonblocking)?;
            let path = l
                .local_addr()
                .ok()
                .and_then(|a| a.as_pathname().map(|p| format!(" {}", p.display())))
                .unwrap_or_default();
            let inner = UnixListener::from_std(l).map_err(nonblocking)?;
            Ok(Listener::Unix {
                inner,
                desc: format!("systemd fd {fd} (unix{path})"),
                _file: None,
            })
        }
        libc::AF_INET | libc::AF_INET6 => {
            // SAFETY: as above.
            let l = unsafe { std::net::TcpListener::from_raw_fd(fd) };
            l.set_nonblocking(true).map_err(nonblocking)?;
            let local = l.local_addr().map(|a| format!(" {a}")).unwrap_or_default();
            let inner = TcpListener::from_std(l).map_err(nonblocking)?;
            Ok(Listener::Tcp {
                inner,
                desc: format!("systemd fd {fd} (tcp{local})"),
            })
        }
        other => Err(Error::SocketActivation {
            what: format!("fd {fd} is a socket of unsupported address family {other}"),
        }),
    }
}

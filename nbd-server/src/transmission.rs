//! The transmission phase of one connection.
//!
//! ```text
//!  socket read half                                         socket write half
//!        |                                                         ^
//!   reader (this task): header, payload,      writer task: drains every queued
//!   validate, take budget, dispatch            reply, one vectored write
//!        |                                                         ^
//!        +--> short READ/WRITE/BLOCK_STATUS: tokio task ---+       |
//!        +--> long ones, FLUSH, FUA, TRIM, zeroes: blocking pool --+-> mpsc
//!        +--> refused request: error reply ------------------------+
//! ```
//!
//! Replies go out in completion order, matched to requests by handle. A
//! per-connection budget (requests and bytes in flight) makes the reader
//! wait when the client sends faster than replies drain, so memory stays
//! bounded. The reader stops at NBD_CMD_DISC, end of stream, a broken
//! request, or server shutdown; the writer then sends every reply still
//! due and closes the connection.

use std::fmt;
use std::io::{self, IoSlice};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};

use crate::execute::{error_reply, execute, rejection_reply, ReplyMode};
use crate::export::{Errno, Export, ExportError};
use crate::framing::FramedReader;
use crate::proto::*;
use crate::request::{command_name, validate, Command, Limits};

/// Reads and writes of at most this many bytes run on the async workers
/// (page-cache copies of a few microseconds); everything else goes to the
/// blocking pool.
const INLINE_MAX: u32 = 128 * 1024;
/// Budget unit: one per request plus one per 64 KiB of payload.
const BUDGET_UNIT: u32 = 64 * 1024;
/// Budget per connection: up to 1024 small requests or ~64 MiB of data in
/// flight (a maximum-size request costs 513 units, so it always fits).
const BUDGET: usize = 1024;
/// Most replies gathered into one vectored write.
const MAX_BATCH: usize = 256;

/// One negotiated connection, shared by its request tasks.
pub(crate) struct Session {
    pub conn_id: u64,
    pub peer: String,
    pub export_name: String,
    pub export: Arc<dyn Export>,
    pub limits: Limits,
    pub mode: ReplyMode,
}

/// A reply ready to send; the budget it holds returns once it is written.
struct Reply {
    buf: Vec<u8>,
    _permit: OwnedSemaphorePermit,
}

/// Why the reader stopped.
pub(crate) enum End {
    Disconnect,
    Eof,
    Shutdown,
    WriterGone,
    Io(io::Error),
    Protocol(String),
}

impl fmt::Display for End {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            End::Disconnect => f.write_str("client sent NBD_CMD_DISC"),
            End::Eof => f.write_str("client closed the connection"),
            End::Shutdown => f.write_str("server shutting down"),
            End::WriterGone => f.write_str("replies can no longer be sent"),
            End::Io(e) => write!(f, "read error: {e}"),
            End::Protocol(m) => write!(f, "protocol violation: {m}"),
        }
    }
}

/// Serves requests until the connection ends; returns why.
pub(crate) async fn serve<R, W>(
    mut rd: FramedReader<R>,
    wr: W,
    session: Arc<Session>,
    mut stop: watch::Receiver<bool>,
) -> End
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (tx, rx) = mpsc::unbounded_channel();
    let writer = AbortOnDrop(tokio::spawn(write_loop(wr, rx)));
    let end = read_loop(&mut rd, &tx, &session, &mut stop).await;
    drop(tx);
    match writer.join().await {
        Some(Ok(())) | None => {}
        Some(Err(e)) => tracing::debug!(
            conn = session.conn_id,
            peer = %session.peer,
            error = %e,
            "could not send every reply"
        ),
    }
    end
}

async fn read_loop<R: AsyncRead + Unpin>(
    rd: &mut FramedReader<R>,
    tx: &mpsc::UnboundedSender<Reply>,
    session: &Arc<Session>,
    stop: &mut watch::Receiver<bool>,
) -> End {
    let budget = Arc::new(Semaphore::new(BUDGET));
    loop {
        let header = tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => return End::Shutdown,
            _ = tx.closed() => return End::WriterGone,
            r = rd.read_array::<REQUEST_HEADER_LEN>() => r,
        };
        let h = match header {
            Ok(Some(b)) => RequestHeader::parse(&b),
            Ok(None) => return End::Eof,
            Err(e) => return End::Io(e),
        };
        if h.magic != NBD_REQUEST_MAGIC {
            return End::Protocol(format!("request with bad magic {:#010x}", h.magic));
        }
        if h.command == NBD_CMD_DISC {
            return End::Disconnect;
        }
        if h.command == NBD_CMD_WRITE && h.length > MAX_BLOCK_SIZE {
            return End::Protocol(format!(
                "WRITE of {} bytes exceeds the maximum block size {MAX_BLOCK_SIZE}",
                h.length
            ));
        }
        let cost = match h.command {
            NBD_CMD_READ | NBD_CMD_WRITE => 1 + h.length.min(MAX_BLOCK_SIZE) / BUDGET_UNIT,
            _ => 1,
        };
        let permit = tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => return End::Shutdown,
            p = budget.clone().acquire_many_owned(cost) => p.expect("the budget semaphore is never closed"),
        };
        let payload = if h.command == NBD_CMD_WRITE {
            let data = tokio::select! {
                biased;
                _ = stop.wait_for(|s| *s) => return End::Shutdown,
                r = rd.read_exact(h.length as usize) => r,
            };
            match data {
                Ok(d) => Some(d),
                Err(e) => return End::Io(e),
            }
        } else {
            None
        };
        dispatch(h, payload, permit, session, tx);
    }
}

fn dispatch(
    h: RequestHeader,
    payload: Option<Bytes>,
    permit: OwnedSemaphorePermit,
    session: &Arc<Session>,
    tx: &mpsc::UnboundedSender<Reply>,
) {
    let cmd = match validate(&h, payload, &session.limits) {
        Ok(cmd) => cmd,
        Err(rej) => {
            tracing::debug!(
                conn = session.conn_id,
                peer = %session.peer,
                export = %session.export_name,
                command = command_name(h.command),
                offset = h.offset,
                length = h.length,
                errno = ?rej.errno,
                "request refused: {}",
                rej.message
            );
            let buf = rejection_reply(h.handle, session.mode, rej.errno, &rej.message);
            let _ = tx.send(Reply {
                buf,
                _permit: permit,
            });
            return;
        }
    };
    let inline = match &cmd {
        Command::Read { len, .. } | Command::BlockStatus { len, .. } => *len <= INLINE_MAX,
        Command::Write { data, fua, .. } => !fua && data.len() <= INLINE_MAX as usize,
        _ => false,
    };
    let job = Job {
        h,
        cmd,
        permit,
        session: session.clone(),
        tx: tx.clone(),
    };
    if inline {
        tokio::spawn(async move { job.run() });
    } else {
        tokio::task::spawn_blocking(move || job.run());
    }
}

/// One request on its way through the export.
struct Job {
    h: RequestHeader,
    cmd: Command,
    permit: OwnedSemaphorePermit,
    session: Arc<Session>,
    tx: mpsc::UnboundedSender<Reply>,
}

impl Job {
    fn run(self) {
        let Job {
            h,
            cmd,
            permit,
            session,
            tx,
        } = self;
        let s = &session;
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
            execute(s.export.as_ref(), h.handle, cmd, s.mode)
        }));
        let buf = match result {
            Ok(Ok(buf)) => buf,
            Ok(Err((buf, e))) => {
                tracing::warn!(
                    conn = s.conn_id,
                    peer = %s.peer,
                    export = %s.export_name,
                    command = command_name(h.command),
                    offset = h.offset,
                    length = h.length,
                    errno = ?e.errno,
                    error_offset = e.offset,
                    "request failed: {}",
                    e.message
                );
                buf
            }
            Err(_) => {
                tracing::error!(
                    conn = s.conn_id,
                    peer = %s.peer,
                    export = %s.export_name,
                    command = command_name(h.command),
                    offset = h.offset,
                    length = h.length,
                    "the export panicked serving this request"
                );
                let e = ExportError::new(Errno::Io, "internal server error");
                error_reply(h.handle, s.mode, &e, None)
            }
        };
        // The writer may be gone (client left): the reply has no reader.
        let _ = tx.send(Reply {
            buf,
            _permit: permit,
        });
    }
}

async fn write_loop<W: AsyncWrite + Unpin>(
    mut wr: W,
    mut rx: mpsc::UnboundedReceiver<Reply>,
) -> io::Result<()> {
    let mut batch: Vec<Reply> = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = rx.recv().await {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        write_batch(&mut wr, &batch).await?;
        batch.clear();
    }
    wr.shutdown().await
}

async fn write_batch<W: AsyncWrite + Unpin>(wr: &mut W, batch: &[Reply]) -> io::Result<()> {
    let mut slices: Vec<IoSlice<'_>> = batch.iter().map(|r| IoSlice::new(&r.buf)).collect();
    let mut rest = &mut slices[..];
    while !rest.is_empty() {
        let n = wr.write_vectored(rest).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "socket accepted no bytes",
            ));
        }
        IoSlice::advance_slices(&mut rest, n);
    }
    Ok(())
}

/// A task handle that aborts its task when dropped (a connection task
/// cancelled at the end of a shutdown takes its writer with it).
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> AbortOnDrop<T> {
    /// Waits for the task; `None` if it panicked or was cancelled.
    async fn join(mut self) -> Option<T> {
        (&mut self.0).await.ok()
    }
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

//! The transmission phase of one connection.
//!
//! ```text
//!  socket read half                                          socket write half
//!        |                                                          ^
//!   reader (this task): header, payload, validate,      writer task: drains every
//!   take budget, then                                    queued batch, one writev,
//!        |                                               buffers back to the pool
//!        +--> short READ/WRITE/BLOCK_STATUS: run here, --+          ^
//!        |    reply added to the current batch           +--> mpsc -+
//!        +--> long ones, FLUSH, FUA, TRIM, zeroes:       |
//!             blocking pool, one reply each -------------+
//! ```
//!
//! Replies go out in completion order, matched to requests by handle. The
//! reader runs short requests itself (page-cache copies of a few
//! microseconds) and hands their replies to the writer in batches: when no
//! complete request is left in its buffer, or the batch is full. At queue
//! depth 32 that is one wakeup and one `writev` for many replies instead of
//! one each. A per-connection budget (requests and bytes in flight) makes
//! the reader wait when replies do not drain, so memory stays bounded. The
//! reader stops at NBD_CMD_DISC, end of stream, a broken request, or server
//! shutdown; the writer then sends every reply still due and closes.

use std::fmt;
use std::io::{self, IoSlice};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};

use crate::execute::{error_reply, execute, rejection_reply, Out, ReplyMode};
use crate::export::{Errno, Export, ExportError};
use crate::framing::FramedReader;
use crate::pool::BufPool;
use crate::proto::*;
use crate::request::{command_name, validate, Command, Limits};

/// Reads and writes of at most this many bytes (without FUA) run on the
/// reader; everything else goes to the blocking pool.
const INLINE_MAX: u32 = 128 * 1024;
/// Budget unit: one per request plus one per 64 KiB of payload.
const BUDGET_UNIT: u32 = 64 * 1024;
/// Budget per connection: up to 1024 small requests or ~64 MiB of data in
/// flight (a maximum-size request costs 513 units, so it always fits).
const BUDGET: usize = 1024;
/// A batch goes to the writer once it holds this many replies or bytes.
const BATCH_REPLIES: usize = 32;
const BATCH_BYTES: usize = 512 * 1024;
/// Most replies gathered into one vectored write.
const MAX_WRITE_SLICES: usize = 512;

/// One negotiated connection, shared by its request tasks.
pub(crate) struct Session {
    pub conn_id: u64,
    pub peer: String,
    pub export_name: String,
    pub export: Arc<dyn Export>,
    pub limits: Limits,
    pub mode: ReplyMode,
    pub pool: BufPool,
}

/// A reply ready to send; the budget it holds returns once it is written.
struct Reply {
    out: Out,
    _permit: OwnedSemaphorePermit,
}

type Batch = Vec<Reply>;

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
    let writer = AbortOnDrop(tokio::spawn(write_loop(wr, rx, session.clone())));
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

/// Replies of requests run on the reader, waiting to go to the writer.
struct Pending<'a> {
    batch: Batch,
    bytes: usize,
    tx: &'a mpsc::UnboundedSender<Batch>,
}

impl Pending<'_> {
    fn push(&mut self, reply: Reply) {
        self.bytes += reply.out.len;
        self.batch.push(reply);
        if self.batch.len() >= BATCH_REPLIES || self.bytes >= BATCH_BYTES {
            self.flush();
        }
    }

    fn flush(&mut self) {
        if !self.batch.is_empty() {
            let batch = std::mem::replace(&mut self.batch, Vec::with_capacity(BATCH_REPLIES));
            self.bytes = 0;
            // A gone writer is noticed by the reader's select.
            let _ = self.tx.send(batch);
        }
    }
}

async fn read_loop<R: AsyncRead + Unpin>(
    rd: &mut FramedReader<R>,
    tx: &mpsc::UnboundedSender<Batch>,
    session: &Arc<Session>,
    stop: &mut watch::Receiver<bool>,
) -> End {
    let budget = Arc::new(Semaphore::new(BUDGET));
    let mut pending = Pending {
        batch: Vec::with_capacity(BATCH_REPLIES),
        bytes: 0,
        tx,
    };
    let end = loop {
        let header = match rd.take_buffered::<REQUEST_HEADER_LEN>() {
            Some(b) => b,
            None => {
                // Nothing complete left: send what is done before waiting.
                pending.flush();
                let r = tokio::select! {
                    biased;
                    _ = stop.wait_for(|s| *s) => Err(End::Shutdown),
                    _ = tx.closed() => Err(End::WriterGone),
                    r = rd.read_array::<REQUEST_HEADER_LEN>() => Ok(r),
                };
                match r {
                    Ok(Ok(Some(b))) => b,
                    Ok(Ok(None)) => break End::Eof,
                    Ok(Err(e)) => break End::Io(e),
                    Err(end) => break end,
                }
            }
        };
        let h = RequestHeader::parse(&header);
        if h.magic != NBD_REQUEST_MAGIC {
            break End::Protocol(format!("request with bad magic {:#010x}", h.magic));
        }
        if h.command == NBD_CMD_DISC {
            break End::Disconnect;
        }
        if h.command == NBD_CMD_WRITE && h.length > MAX_BLOCK_SIZE {
            break End::Protocol(format!(
                "WRITE of {} bytes exceeds the maximum block size {MAX_BLOCK_SIZE}",
                h.length
            ));
        }
        let cost = match h.command {
            NBD_CMD_READ | NBD_CMD_WRITE => 1 + h.length.min(MAX_BLOCK_SIZE) / BUDGET_UNIT,
            _ => 1,
        };
        let permit = match budget.clone().try_acquire_many_owned(cost) {
            Ok(p) => p,
            Err(_) => {
                pending.flush();
                tokio::select! {
                    biased;
                    _ = stop.wait_for(|s| *s) => break End::Shutdown,
                    p = budget.clone().acquire_many_owned(cost) => {
                        p.expect("the budget semaphore is never closed")
                    }
                }
            }
        };
        let payload = if h.command == NBD_CMD_WRITE {
            let len = h.length as usize;
            match rd.take_buffered_bytes(len) {
                Some(d) => Some(d),
                None => {
                    pending.flush();
                    let r = tokio::select! {
                        biased;
                        _ = stop.wait_for(|s| *s) => None,
                        r = rd.read_exact(len) => Some(r),
                    };
                    match r {
                        None => break End::Shutdown,
                        Some(Ok(d)) => Some(d),
                        Some(Err(e)) => break End::Io(e),
                    }
                }
            }
        } else {
            None
        };

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
                pending.push(Reply {
                    out: Out {
                        len: buf.len(),
                        buf,
                    },
                    _permit: permit,
                });
                continue;
            }
        };
        let inline = match &cmd {
            Command::Read { len, .. } | Command::BlockStatus { len, .. } => *len <= INLINE_MAX,
            Command::Write { data, fua, .. } => !fua && data.len() <= INLINE_MAX as usize,
            _ => false,
        };
        if inline {
            let out = run(session, &h, cmd);
            pending.push(Reply {
                out,
                _permit: permit,
            });
        } else {
            let session = session.clone();
            let tx = tx.clone();
            tokio::task::spawn_blocking(move || {
                let out = run(&session, &h, cmd);
                // The writer may be gone (client left): nobody to answer.
                let _ = tx.send(vec![Reply {
                    out,
                    _permit: permit,
                }]);
            });
        }
    };
    pending.flush();
    end
}

/// Runs one request against the export (blocking) and logs a failure.
fn run(s: &Session, h: &RequestHeader, cmd: Command) -> Out {
    let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
        execute(s.export.as_ref(), h.handle, cmd, s.mode, &s.pool)
    }));
    match result {
        Ok(Ok(out)) => out,
        Ok(Err((out, e))) => {
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
            out
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
            let buf = error_reply(h.handle, s.mode, &e, None);
            Out {
                len: buf.len(),
                buf,
            }
        }
    }
}

async fn write_loop<W: AsyncWrite + Unpin>(
    mut wr: W,
    mut rx: mpsc::UnboundedReceiver<Batch>,
    session: Arc<Session>,
) -> io::Result<()> {
    let mut replies: Vec<Reply> = Vec::with_capacity(MAX_WRITE_SLICES);
    while let Some(first) = rx.recv().await {
        replies.extend(first);
        while replies.len() < MAX_WRITE_SLICES {
            match rx.try_recv() {
                Ok(more) => replies.extend(more),
                Err(_) => break,
            }
        }
        write_batch(&mut wr, &replies).await?;
        for r in replies.drain(..) {
            session.pool.put(r.out.buf);
        }
    }
    wr.shutdown().await
}

async fn write_batch<W: AsyncWrite + Unpin>(wr: &mut W, batch: &[Reply]) -> io::Result<()> {
    let mut slices: Vec<IoSlice<'_>> = batch.iter().map(|r| IoSlice::new(r.out.bytes())).collect();
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

//! The transmission phase of one connection: one task owns the socket.
//!
//! ```text
//!            +------------------------------------------------------+
//!  socket -> | read what is there -> parse -> validate -> run short | -> replies -> writev -> socket
//!            |                                   |     READ/WRITE/  |      ^
//!            |                                   |     BLOCK_STATUS |      |
//!            |                                   v     here         |      |
//!            |                  long ones, FLUSH, FUA, TRIM, zeroes |      |
//!            +------------------ on the blocking pool --------------+------+ (completion channel)
//! ```
//!
//! Each round runs every complete request already buffered (short ones
//! right here: page-cache copies of a few microseconds), gathers what the
//! blocking pool finished, and writes all replies due with one vectored
//! write that never blocks. Only then does the task wait, for whichever
//! comes first: the socket readable, the socket writable again, a blocking
//! request done, or shutdown. At queue depth 32 that is one read and one
//! write system call for many requests; at queue depth 1 a request costs
//! one wakeup, one read and one write, with no hand-over between tasks.
//!
//! The price of running short requests here: replies batched in one round
//! wait for that round's last short request, and one connection's short
//! requests use one core at a time (connections run in parallel).
//!
//! Replies go out in completion order, matched to requests by handle. A
//! budget (requests and bytes in flight) stops reading while replies do not
//! drain, so memory stays bounded. Reading stops at NBD_CMD_DISC, end of
//! stream, a broken request or server shutdown; every reply still due is
//! then sent and the connection closed.

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, IoSlice};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, watch};

use crate::execute::{error_reply, execute, rejection_reply, Out, ReplyMode};
use crate::export::{Errno, Export, ExportError};
use crate::framing::InBuf;
use crate::pool::BufPool;
use crate::proto::*;
use crate::request::{command_name, validate, Command, Limits};
use crate::socket::{Socket, WriteHalf};

/// Reads and writes of at most this many bytes (without FUA) run on the
/// connection's task; everything else goes to the blocking pool.
const INLINE_MAX: u32 = 128 * 1024;
/// Budget unit: one per request plus one per 64 KiB of payload.
const BUDGET_UNIT: u32 = 64 * 1024;
/// Reading pauses while this many units are in flight: about 1024 small
/// requests or 64 MiB of data (one more request may add up to 513 units).
const BUDGET: u32 = 1024;
/// Replies gathered before writing while more requests are buffered.
const RUN_BEFORE_WRITE: usize = 32;
/// Most replies in one vectored write.
const MAX_WRITE_SLICES: usize = 64;

/// One negotiated connection, shared with its blocking requests.
pub(crate) struct Session {
    pub conn_id: u64,
    pub peer: String,
    pub export_name: String,
    pub export: Arc<dyn Export>,
    pub limits: Limits,
    pub mode: ReplyMode,
    pub pool: BufPool,
}

/// A reply ready to send and the budget it holds until written.
struct Reply {
    out: Out,
    units: u32,
}

/// Why a connection ended.
pub(crate) enum End {
    Disconnect,
    Eof,
    Shutdown,
    Io(io::Error),
    WriteFailed(io::Error),
    Protocol(String),
}

impl fmt::Display for End {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            End::Disconnect => f.write_str("client sent NBD_CMD_DISC"),
            End::Eof => f.write_str("client closed the connection"),
            End::Shutdown => f.write_str("server shutting down"),
            End::Io(e) => write!(f, "read error: {e}"),
            End::WriteFailed(e) => write!(f, "write error: {e}"),
            End::Protocol(m) => write!(f, "protocol violation: {m}"),
        }
    }
}

/// What woke the connection up.
enum Event {
    Stop,
    Done(Option<Reply>),
    Writable(io::Result<()>),
    Read(io::Result<usize>),
}

/// Serves requests until the connection ends; returns why.
pub(crate) async fn serve<S: Socket>(
    sock: S,
    inb: InBuf,
    session: Arc<Session>,
    mut stop: watch::Receiver<bool>,
) -> End {
    let (done_tx, done_rx) = mpsc::unbounded_channel();
    let (rd, wr) = sock.into_halves();
    let mut c = Conn {
        rd,
        wr,
        inb,
        session,
        out: VecDeque::new(),
        written: 0,
        units: 0,
        blocking: 0,
        done_tx,
        done_rx,
        end: None,
    };
    let end = c.run(&mut stop).await;
    let _ = c.wr.shutdown().await;
    end
}

struct Conn<R, W> {
    rd: R,
    wr: W,
    inb: InBuf,
    session: Arc<Session>,
    /// Replies due, in completion order; `written` bytes of the first are
    /// already sent.
    out: VecDeque<Reply>,
    written: usize,
    /// Budget units of requests whose replies are not written yet.
    units: u32,
    /// Requests running on the blocking pool.
    blocking: usize,
    done_tx: mpsc::UnboundedSender<Reply>,
    done_rx: mpsc::UnboundedReceiver<Reply>,
    /// Set once reading has stopped.
    end: Option<End>,
}

impl<R: AsyncRead + Unpin, W: WriteHalf> Conn<R, W> {
    async fn run(&mut self, stop: &mut watch::Receiver<bool>) -> End {
        loop {
            if self.end.is_none() {
                self.run_buffered();
            }
            while let Ok(r) = self.done_rx.try_recv() {
                self.blocking -= 1;
                self.out.push_back(r);
            }
            if let Err(e) = self.write_some() {
                return self.end.take().unwrap_or(End::WriteFailed(e));
            }
            let reading = self.end.is_none();
            if !reading && self.out.is_empty() && self.blocking == 0 {
                return self.end.take().expect("reading stopped for a reason");
            }
            if reading && self.units < BUDGET && self.inb.len() >= self.next_need() {
                // More complete requests buffered: go on, but let the other
                // tasks of this worker run once this one has had its share.
                tokio::task::consume_budget().await;
                continue;
            }
            let need = self.next_need();
            let event = tokio::select! {
                biased;
                _ = stop.wait_for(|s| *s), if reading => Event::Stop,
                r = self.done_rx.recv(), if self.blocking > 0 => Event::Done(r),
                r = self.wr.writable(), if !self.out.is_empty() => Event::Writable(r),
                r = self.rd.read_buf(self.inb.spare_for(need)), if reading && self.units < BUDGET => {
                    Event::Read(r)
                }
            };
            match event {
                Event::Stop => self.end = Some(End::Shutdown),
                Event::Done(Some(r)) => {
                    self.blocking -= 1;
                    self.out.push_back(r);
                }
                Event::Done(None) => unreachable!("this task holds a sender"),
                Event::Writable(Ok(())) => {}
                Event::Writable(Err(e)) => return self.end.take().unwrap_or(End::WriteFailed(e)),
                Event::Read(Ok(0)) => self.end = Some(self.eof(need)),
                Event::Read(Ok(_)) => {}
                Event::Read(Err(e)) => self.end = Some(End::Io(e)),
            }
        }
    }

    /// Bytes the next request needs buffered: its header, and for a WRITE
    /// its payload too (a WRITE too large to read counts as its header
    /// alone: `run_buffered` refuses it as soon as the header is there).
    fn next_need(&self) -> usize {
        let Some(head) = self.inb.bytes().get(..REQUEST_HEADER_LEN) else {
            return REQUEST_HEADER_LEN;
        };
        let h = RequestHeader::parse(head.try_into().expect("28 bytes"));
        if h.magic == NBD_REQUEST_MAGIC && h.command == NBD_CMD_WRITE && h.length <= MAX_BLOCK_SIZE
        {
            REQUEST_HEADER_LEN + h.length as usize
        } else {
            REQUEST_HEADER_LEN
        }
    }

    /// Why the stream ended: cleanly between requests, or inside one.
    fn eof(&self, need: usize) -> End {
        if self.inb.len() == 0 {
            End::Eof
        } else {
            End::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "connection closed {} bytes into a {need}-byte request",
                    self.inb.len()
                ),
            ))
        }
    }

    /// Writes replies until all are sent or the socket is full.
    fn write_some(&mut self) -> io::Result<()> {
        while !self.out.is_empty() {
            let mut slices = [IoSlice::new(&[]); MAX_WRITE_SLICES];
            let mut count = 0;
            for (i, r) in self.out.iter().take(MAX_WRITE_SLICES).enumerate() {
                let bytes = r.out.bytes();
                slices[i] = IoSlice::new(if i == 0 {
                    &bytes[self.written..]
                } else {
                    bytes
                });
                count += 1;
            }
            let mut n = match self.wr.try_write_slices(&slices[..count]) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "socket accepted no bytes",
                    ))
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            };
            while n > 0 {
                let front = self.out.front().expect("bytes written belong to a reply");
                let left = front.out.len - self.written;
                if n < left {
                    self.written += n;
                    break;
                }
                n -= left;
                self.written = 0;
                let done = self.out.pop_front().expect("front exists");
                self.units -= done.units;
                self.session.pool.put(done.out.buf);
            }
        }
        Ok(())
    }

    /// Runs the complete requests in the buffer (up to a batch), leaving
    /// their replies in `out`.
    fn run_buffered(&mut self) {
        let mut ran = 0;
        while self.end.is_none() && self.units < BUDGET && ran < RUN_BEFORE_WRITE {
            let Some(head) = self.inb.bytes().get(..REQUEST_HEADER_LEN) else {
                return;
            };
            let h = RequestHeader::parse(head.try_into().expect("28 bytes"));
            if h.magic != NBD_REQUEST_MAGIC {
                self.end = Some(End::Protocol(format!(
                    "request with bad magic {:#010x}",
                    h.magic
                )));
                return;
            }
            if h.command == NBD_CMD_DISC {
                self.inb.take_array::<REQUEST_HEADER_LEN>();
                self.end = Some(End::Disconnect);
                return;
            }
            let payload_len = if h.command == NBD_CMD_WRITE {
                if h.length > MAX_BLOCK_SIZE {
                    self.end = Some(End::Protocol(format!(
                        "WRITE of {} bytes exceeds the maximum block size {MAX_BLOCK_SIZE}",
                        h.length
                    )));
                    return;
                }
                h.length as usize
            } else {
                0
            };
            if self.inb.len() < REQUEST_HEADER_LEN + payload_len {
                return;
            }
            self.inb.take_array::<REQUEST_HEADER_LEN>();
            let payload = (h.command == NBD_CMD_WRITE).then(|| {
                self.inb
                    .take_bytes(payload_len)
                    .expect("payload is buffered")
            });
            self.dispatch(h, payload);
            ran += 1;
        }
    }

    fn dispatch(&mut self, h: RequestHeader, payload: Option<Bytes>) {
        let units = match h.command {
            NBD_CMD_READ | NBD_CMD_WRITE => 1 + h.length.min(MAX_BLOCK_SIZE) / BUDGET_UNIT,
            _ => 1,
        };
        self.units += units;
        let s = &self.session;
        let cmd = match validate(&h, payload, &s.limits) {
            Ok(cmd) => cmd,
            Err(rej) => {
                tracing::debug!(
                    conn = s.conn_id,
                    peer = %s.peer,
                    export = %s.export_name,
                    command = command_name(h.command),
                    offset = h.offset,
                    length = h.length,
                    errno = ?rej.errno,
                    "request refused: {}",
                    rej.message
                );
                let buf = rejection_reply(h.handle, s.mode, rej.errno, &rej.message);
                let out = Out {
                    len: buf.len(),
                    buf,
                };
                self.out.push_back(Reply { out, units });
                return;
            }
        };
        let inline = match &cmd {
            Command::Read { len, .. } | Command::BlockStatus { len, .. } => *len <= INLINE_MAX,
            Command::Write { data, fua, .. } => !fua && data.len() <= INLINE_MAX as usize,
            _ => false,
        };
        if inline {
            let out = run(s, &h, cmd);
            self.out.push_back(Reply { out, units });
        } else {
            let session = s.clone();
            let tx = self.done_tx.clone();
            self.blocking += 1;
            tokio::task::spawn_blocking(move || {
                let out = run(&session, &h, cmd);
                // The connection may be gone: nobody to answer.
                let _ = tx.send(Reply { out, units });
            });
        }
    }
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

//! Running a validated command against the export and encoding its reply.
//!
//! Every function here is blocking (it calls the export) and returns the
//! complete reply bytes of one request, read data included: a read's data
//! is read straight into the reply buffer after its header.

use bytes::BufMut;

use crate::export::{Errno, Export, ExportError, Extent};
use crate::pool::BufPool;
use crate::proto::*;
use crate::request::Command;

/// Reply encoding mode of a session.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ReplyMode {
    pub structured: bool,
}

/// An encoded reply: the first `len` bytes of `buf` (a pooled buffer may
/// be longer than its reply).
pub(crate) struct Out {
    pub buf: Vec<u8>,
    pub len: usize,
}

impl Out {
    fn whole(buf: Vec<u8>) -> Out {
        Out {
            len: buf.len(),
            buf,
        }
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// Runs `cmd` and returns the reply. `Err` carries the reply too (the
/// error reply), plus the error for the log.
pub(crate) fn execute(
    export: &dyn Export,
    handle: u64,
    cmd: Command,
    mode: ReplyMode,
    pool: &BufPool,
) -> Result<Out, (Out, ExportError)> {
    match cmd {
        Command::Read { offset, len, df } => read(export, handle, offset, len, df, mode, pool),
        Command::Write { offset, data, fua } => {
            let r = if data.is_empty() {
                Ok(())
            } else {
                export
                    .write_at(offset, &data, fua)
                    .map_err(|e| strict(e, false, false))
            };
            status(handle, mode, r, Some((offset, data.len() as u64)))
        }
        Command::Flush => {
            let r = export.flush().map_err(|e| strict(e, false, false));
            status(handle, mode, r, None)
        }
        Command::Trim { offset, len, fua } => {
            let r = if len == 0 {
                Ok(())
            } else {
                export
                    .trim(offset, u64::from(len), fua)
                    .map_err(|e| strict(e, false, false))
            };
            status(handle, mode, r, Some((offset, u64::from(len))))
        }
        Command::Cache { offset, len } => {
            let r = if len == 0 {
                Ok(())
            } else {
                export
                    .cache(offset, u64::from(len))
                    .map_err(|e| strict(e, false, false))
            };
            status(handle, mode, r, Some((offset, u64::from(len))))
        }
        Command::WriteZeroes {
            offset,
            len,
            may_trim,
            fast_only,
            fua,
        } => {
            let r = if len == 0 {
                Ok(())
            } else {
                export
                    .write_zeroes(offset, u64::from(len), may_trim, fast_only, fua)
                    .map_err(|e| strict(e, fast_only, false))
            };
            status(handle, mode, r, Some((offset, u64::from(len))))
        }
        Command::BlockStatus {
            offset,
            len,
            req_one,
        } => match block_status(export, handle, offset, len, req_one) {
            Ok(reply) => Ok(Out::whole(reply)),
            Err(e) => {
                let reply = error_reply(handle, mode, &e, Some((offset, u64::from(len))));
                Err((Out::whole(reply), e))
            }
        },
    }
}

/// Keeps to the errors the spec allows for a request: `ENOTSUP` only for a
/// FAST_ZERO write-zeroes, `EOVERFLOW` only for a DF read. Any other use
/// by the export becomes `EINVAL` (the message keeps what it said).
fn strict(mut e: ExportError, notsup_ok: bool, overflow_ok: bool) -> ExportError {
    let name = match e.errno {
        Errno::NotSup if !notsup_ok => "ENOTSUP",
        Errno::Overflow if !overflow_ok => "EOVERFLOW",
        _ => return e,
    };
    e.errno = Errno::Inval;
    e.message = format!("{} (the export answered {name})", e.message);
    e
}

/// The reply to a command without payload.
fn status(
    handle: u64,
    mode: ReplyMode,
    r: Result<(), ExportError>,
    range: Option<(u64, u64)>,
) -> Result<Out, (Out, ExportError)> {
    match r {
        Ok(()) => Ok(Out::whole(ok_reply(handle))),
        Err(e) => Err((Out::whole(error_reply(handle, mode, &e, range)), e)),
    }
}

/// Success without payload: a simple reply, which the spec allows even
/// once structured replies are negotiated.
pub(crate) fn ok_reply(handle: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(SIMPLE_REPLY_HEADER_LEN);
    put_simple_reply(&mut out, 0, handle);
    out
}

/// An error reply. With structured replies: `ERROR_OFFSET` when the error
/// carries an offset inside the request's `range`, else `ERROR`, both
/// with the message; otherwise a simple reply with the errno.
pub(crate) fn error_reply(
    handle: u64,
    mode: ReplyMode,
    e: &ExportError,
    range: Option<(u64, u64)>,
) -> Vec<u8> {
    let mut out = Vec::new();
    put_error(
        &mut out,
        handle,
        mode,
        e.errno,
        &e.message,
        error_offset(e, range),
    );
    out
}

fn error_offset(e: &ExportError, range: Option<(u64, u64)>) -> Option<u64> {
    let (start, len) = range?;
    let off = e.offset?;
    (off >= start && off - start < len).then_some(off)
}

fn put_error(
    out: &mut Vec<u8>,
    handle: u64,
    mode: ReplyMode,
    errno: Errno,
    msg: &str,
    offset: Option<u64>,
) {
    let errno = match errno.wire() {
        0 => Errno::Io.wire(),
        v => v,
    };
    if !mode.structured {
        put_simple_reply(out, errno, handle);
        return;
    }
    let msg = truncate_str(msg, MAX_STRING_LEN);
    let (ty, extra) = match offset {
        Some(_) => (NBD_REPLY_TYPE_ERROR_OFFSET, 8),
        None => (NBD_REPLY_TYPE_ERROR, 0),
    };
    put_chunk_header(
        out,
        NBD_REPLY_FLAG_DONE,
        ty,
        handle,
        (6 + msg.len() + extra) as u32,
    );
    out.put_u32(errno);
    out.put_u16(msg.len() as u16);
    out.put_slice(msg.as_bytes());
    if let Some(off) = offset {
        out.put_u64(off);
    }
}

/// The reply to a request refused before reaching the export.
pub(crate) fn rejection_reply(handle: u64, mode: ReplyMode, errno: Errno, msg: &str) -> Vec<u8> {
    let mut out = Vec::new();
    put_error(&mut out, handle, mode, errno, msg, None);
    out
}

/// A stretch of a read: data to read from the export, or zeros to send
/// as a hole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Segment {
    offset: u64,
    len: u64,
    hole: bool,
}

/// Splits `[offset, offset + len)` along the export's zero runs: runs of
/// at least `MIN_HOLE_CHUNK` bytes become holes, the rest (short zero
/// runs included) is data. A failing or short block-status answer leaves
/// the rest as data.
fn segments(export: &dyn Export, offset: u64, len: u64) -> Vec<Segment> {
    let end = offset + len;
    let mut segs: Vec<Segment> = Vec::with_capacity(2);
    let push = |segs: &mut Vec<Segment>, off: u64, len: u64, hole: bool| {
        if let Some(last) = segs.last_mut() {
            if last.hole == hole && last.offset + last.len == off {
                last.len += len;
                return;
            }
        }
        segs.push(Segment {
            offset: off,
            len,
            hole,
        });
    };
    let mut pos = offset;
    if len >= MIN_HOLE_CHUNK {
        // A few calls at most: each answer covers at least one byte, and
        // an export that answers in tiny steps gets the rest read as data.
        for _ in 0..8 {
            if pos >= end {
                break;
            }
            let Ok(extents) = export.block_status(pos, end - pos) else {
                break;
            };
            let before = pos;
            for Extent { len, zero, .. } in extents {
                if pos >= end {
                    break;
                }
                let len = len.min(end - pos);
                if len == 0 {
                    continue;
                }
                push(&mut segs, pos, len, zero && len >= MIN_HOLE_CHUNK);
                pos += len;
            }
            if pos == before {
                break;
            }
        }
    }
    if pos < end {
        push(&mut segs, pos, end - pos, false);
    }
    segs
}

fn read(
    export: &dyn Export,
    handle: u64,
    offset: u64,
    len: u32,
    df: bool,
    mode: ReplyMode,
    pool: &BufPool,
) -> Result<Out, (Out, ExportError)> {
    let range = Some((offset, u64::from(len)));
    let n = len as usize;
    if !mode.structured {
        let total = SIMPLE_REPLY_HEADER_LEN + n;
        let mut buf = pool.get(total);
        buf[..SIMPLE_REPLY_HEADER_LEN].copy_from_slice(&simple_reply(0, handle));
        let r = export
            .read_at(offset, &mut buf[SIMPLE_REPLY_HEADER_LEN..total])
            .map_err(|e| strict(e, false, false));
        return match r {
            Ok(()) => Ok(Out { buf, len: total }),
            Err(e) => {
                pool.put(buf);
                Err((Out::whole(error_reply(handle, mode, &e, range)), e))
            }
        };
    }
    if len == 0 {
        let header = chunk_header(NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_NONE, handle, 0);
        return Ok(Out::whole(header.to_vec()));
    }
    let segs = if df {
        vec![Segment {
            offset,
            len: u64::from(len),
            hole: false,
        }]
    } else {
        segments(export, offset, u64::from(len))
    };
    let total: usize = segs
        .iter()
        .map(|s| STRUCTURED_REPLY_HEADER_LEN + if s.hole { 12 } else { 8 + s.len as usize })
        .sum();
    let mut buf = pool.get(total);
    let mut pos = 0;
    let mut last = 0;
    for s in &segs {
        last = pos;
        let (ty, payload) = if s.hole {
            (NBD_REPLY_TYPE_OFFSET_HOLE, 12)
        } else {
            (NBD_REPLY_TYPE_OFFSET_DATA, 8 + s.len as u32)
        };
        buf[pos..pos + STRUCTURED_REPLY_HEADER_LEN]
            .copy_from_slice(&chunk_header(0, ty, handle, payload));
        pos += STRUCTURED_REPLY_HEADER_LEN;
        buf[pos..pos + 8].copy_from_slice(&s.offset.to_be_bytes());
        pos += 8;
        if s.hole {
            buf[pos..pos + 4].copy_from_slice(&(s.len as u32).to_be_bytes());
            pos += 4;
            continue;
        }
        let data = &mut buf[pos..pos + s.len as usize];
        if let Err(e) = export
            .read_at(s.offset, data)
            .map_err(|e| strict(e, false, df))
        {
            // The failed chunk is never sent: the chunks before it stand,
            // then the error.
            let mut out = Vec::with_capacity(last + 64 + e.message.len());
            out.extend_from_slice(&buf[..last]);
            pool.put(buf);
            put_error(
                &mut out,
                handle,
                mode,
                e.errno,
                &e.message,
                error_offset(&e, range),
            );
            return Err((Out::whole(out), e));
        }
        pos += s.len as usize;
    }
    buf[last + CHUNK_FLAGS_OFFSET..last + CHUNK_FLAGS_OFFSET + 2]
        .copy_from_slice(&NBD_REPLY_FLAG_DONE.to_be_bytes());
    Ok(Out { buf, len: pos })
}

/// `base:allocation` descriptors for `[offset, offset + len)`: merged
/// where consecutive runs have the same flags, clipped to the request,
/// one descriptor only with `req_one`.
fn block_status(
    export: &dyn Export,
    handle: u64,
    offset: u64,
    len: u32,
    req_one: bool,
) -> Result<Vec<u8>, ExportError> {
    /// Bound on descriptors in one reply (the spec lets a server answer
    /// less than asked; clients ask again from where the answer ends).
    const MAX_DESCRIPTORS: usize = 64 * 1024;
    let end = offset + u64::from(len);
    let extents = export
        .block_status(offset, u64::from(len))
        .map_err(|e| strict(e, false, false))?;
    let mut descs: Vec<(u32, u32)> = Vec::new();
    let mut pos = offset;
    for Extent {
        len: elen,
        hole,
        zero,
    } in extents
    {
        if pos >= end {
            break;
        }
        let elen = elen.min(end - pos);
        if elen == 0 {
            continue;
        }
        let flags = if hole { NBD_STATE_HOLE } else { 0 } | if zero { NBD_STATE_ZERO } else { 0 };
        // Fits: the sum of all lengths is at most `len`, a u32.
        let elen32 = elen as u32;
        match descs.last_mut() {
            Some((l, f)) if *f == flags => *l += elen32,
            _ => {
                if descs.len() == MAX_DESCRIPTORS || (req_one && !descs.is_empty()) {
                    break;
                }
                descs.push((elen32, flags));
            }
        }
        pos += elen;
    }
    if descs.is_empty() {
        // Nothing usable from the export: "status 0" is always correct.
        descs.push((len, 0));
    }
    let mut out = Vec::with_capacity(STRUCTURED_REPLY_HEADER_LEN + 4 + 8 * descs.len());
    put_chunk_header(
        &mut out,
        NBD_REPLY_FLAG_DONE,
        NBD_REPLY_TYPE_BLOCK_STATUS,
        handle,
        (4 + 8 * descs.len()) as u32,
    );
    out.put_u32(BASE_ALLOCATION_ID);
    for (l, f) in descs {
        out.put_u32(l);
        out.put_u32(f);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::MemoryExport;

    fn export_with_hole() -> MemoryExport {
        // 0..8K data, 8K..24K zero (unallocated), 24K..32K data.
        let mut data = vec![0xaau8; 32 * 1024];
        data[8 * 1024..24 * 1024].fill(0);
        MemoryExport::from_bytes(&data)
    }

    #[test]
    fn segments_split_on_long_zero_runs() {
        let e = export_with_hole();
        let s = segments(&e, 4096, 24 * 1024);
        assert_eq!(
            s,
            vec![
                Segment {
                    offset: 4096,
                    len: 4096,
                    hole: false
                },
                Segment {
                    offset: 8192,
                    len: 16384,
                    hole: true
                },
                Segment {
                    offset: 24576,
                    len: 4096,
                    hole: false
                },
            ]
        );
        // A zero run clipped below 4 KiB stays data, merged with its neighbour.
        let s = segments(&e, 4096, 6144);
        assert_eq!(
            s,
            vec![Segment {
                offset: 4096,
                len: 6144,
                hole: false
            }]
        );
        // Below 4 KiB no block status is asked at all.
        let s = segments(&e, 8192, 4095);
        assert_eq!(
            s,
            vec![Segment {
                offset: 8192,
                len: 4095,
                hole: false
            }]
        );
    }

    #[test]
    fn notsup_only_for_fast_zero() {
        let e = || ExportError::new(Errno::NotSup, "slow");
        assert_eq!(strict(e(), true, false).errno, Errno::NotSup);
        let mapped = strict(e(), false, false);
        assert_eq!(mapped.errno, Errno::Inval);
        assert!(mapped.message.contains("ENOTSUP"));
        let o = || ExportError::new(Errno::Overflow, "big");
        assert_eq!(strict(o(), false, true).errno, Errno::Overflow);
        assert_eq!(strict(o(), false, false).errno, Errno::Inval);
        assert_eq!(
            strict(ExportError::new(Errno::Io, "x"), false, false).errno,
            Errno::Io
        );
    }

    #[test]
    fn block_status_merges_and_clips() {
        let e = export_with_hole();
        let r = block_status(&e, 9, 4096, 26 * 1024, false).expect("status");
        // header(20) + id(4) + 3 descriptors
        assert_eq!(r.len(), 20 + 4 + 24);
        assert_eq!(&r[24..32], &[0, 0, 0x10, 0, 0, 0, 0, 0]); // 4K data
        assert_eq!(&r[32..40], &[0, 0, 0x40, 0, 0, 0, 0, 3]); // 16K hole|zero
        assert_eq!(&r[40..48], &[0, 0, 0x18, 0, 0, 0, 0, 0]); // 6K data (clipped)
        let r = block_status(&e, 9, 4096, 26 * 1024, true).expect("status");
        assert_eq!(r.len(), 20 + 4 + 8);
    }
}

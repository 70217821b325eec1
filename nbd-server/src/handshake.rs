//! The fixed newstyle handshake: greeting, client flags, then option
//! haggling until the client picks an export (`NBD_OPT_GO` or
//! `NBD_OPT_EXPORT_NAME`), aborts, or goes away.
//!
//! Every option's data is read in full before it is looked at, so a
//! malformed option is answered `NBD_REP_ERR_INVALID` and haggling goes
//! on in step with the client. Only what cannot be answered closes the
//! connection: unknown client flags, a bad option magic, and an
//! `NBD_OPT_EXPORT_NAME` naming no export (that option has no error reply).

use std::io;
use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::framing::InBuf;
use crate::proto::*;
use crate::server::ExportConfig;

/// The exports a server offers, in configuration order.
#[derive(Clone)]
pub(crate) struct Exports(pub(crate) Arc<[ExportConfig]>);

impl Exports {
    /// The export a client names; "" is the first one (the default
    /// export of the spec).
    pub(crate) fn find(&self, name: &[u8]) -> Option<usize> {
        if name.is_empty() {
            return if self.0.is_empty() { None } else { Some(0) };
        }
        self.0.iter().position(|e| e.name.as_bytes() == name)
    }
}

/// What the handshake settled.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Negotiated {
    /// Index into the server's exports.
    pub export: usize,
    /// Structured replies were negotiated.
    pub structured: bool,
    /// `base:allocation` was selected for this export: BLOCK_STATUS allowed.
    pub base_allocation: bool,
    /// The transmission flags sent to the client.
    pub flags: u16,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum HandshakeError {
    #[error("connection error during the handshake")]
    Io(#[from] io::Error),
    #[error("client sent unknown client flags {0:#x}")]
    UnknownClientFlags(u32),
    #[error("option with bad magic {0:#018x} (expected IHAVEOPT)")]
    BadOptionMagic(u64),
    #[error("NBD_OPT_EXPORT_NAME for unknown export {0:?}")]
    UnknownExport(String),
    #[error("NBD_OPT_EXPORT_NAME with {0} bytes of name")]
    ExportNameTooLong(u32),
}

/// Transmission flags for an export.
pub(crate) fn transmission_flags(read_only: bool, structured: bool) -> u16 {
    let mut flags = NBD_FLAG_HAS_FLAGS
        | NBD_FLAG_SEND_FLUSH
        | NBD_FLAG_SEND_FUA
        | NBD_FLAG_SEND_TRIM
        | NBD_FLAG_SEND_WRITE_ZEROES
        | NBD_FLAG_SEND_FAST_ZERO
        | NBD_FLAG_SEND_CACHE
        | NBD_FLAG_CAN_MULTI_CONN;
    if read_only {
        flags |= NBD_FLAG_READ_ONLY;
    }
    if structured {
        flags |= NBD_FLAG_SEND_DF;
    }
    flags
}

/// State carried between options.
struct Haggle<'a> {
    exports: &'a Exports,
    structured: bool,
    /// Export for which `base:allocation` was selected by the last
    /// SET_META_CONTEXT.
    meta_export: Option<usize>,
    out: Vec<u8>,
}

/// What one option led to.
enum Next {
    Continue,
    Abort,
    Go(Negotiated),
}

/// Runs the handshake. `Ok(None)`: the client aborted or left before
/// choosing an export.
pub(crate) async fn negotiate<S>(
    inb: &mut InBuf,
    wr: &mut S,
    exports: &Exports,
) -> Result<Option<Negotiated>, HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut greeting = Vec::with_capacity(18);
    greeting.put_u64(NBDMAGIC);
    greeting.put_u64(IHAVEOPT);
    greeting.put_u16(NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES);
    wr.write_all(&greeting).await?;
    wr.flush().await?;

    let Some(client_flags) = inb.read_array::<_, 4>(wr).await? else {
        return Ok(None);
    };
    let client_flags = u32::from_be_bytes(client_flags);
    if client_flags & !KNOWN_CLIENT_FLAGS != 0 {
        return Err(HandshakeError::UnknownClientFlags(client_flags));
    }
    let no_zeroes = client_flags & NBD_FLAG_C_NO_ZEROES != 0;

    let mut h = Haggle {
        exports,
        structured: false,
        meta_export: None,
        out: Vec::with_capacity(512),
    };
    loop {
        let Some(header) = inb.read_array::<_, 16>(wr).await? else {
            return Ok(None);
        };
        let mut header = &header[..];
        let magic = header.get_u64();
        let option = header.get_u32();
        let len = header.get_u32();
        if magic != IHAVEOPT {
            return Err(HandshakeError::BadOptionMagic(magic));
        }
        if len > MAX_OPTION_DATA {
            if option == NBD_OPT_EXPORT_NAME {
                return Err(HandshakeError::ExportNameTooLong(len));
            }
            inb.discard(wr, u64::from(len)).await?;
            tracing::debug!(option, len, "option data too large, skipped");
            let msg = format!("option data of {len} bytes exceeds the server's {MAX_OPTION_DATA}");
            put_option_reply(&mut h.out, option, NBD_REP_ERR_TOO_BIG, msg.as_bytes());
        } else {
            let data = inb.read_exact(wr, len as usize).await?;
            let next = if option == NBD_OPT_EXPORT_NAME {
                Next::Go(h.export_name(&data, no_zeroes)?)
            } else {
                h.option(option, data)
            };
            match next {
                Next::Continue => {}
                Next::Abort => {
                    // The client may already be gone; the spec asks both
                    // sides to take that gracefully.
                    let _ = wr.write_all(&h.out).await;
                    let _ = wr.flush().await;
                    return Ok(None);
                }
                Next::Go(n) => {
                    wr.write_all(&h.out).await?;
                    wr.flush().await?;
                    return Ok(Some(n));
                }
            }
        }
        wr.write_all(&h.out).await?;
        wr.flush().await?;
        h.out.clear();
    }
}

impl Haggle<'_> {
    fn reply(&mut self, option: u32, reply_type: u32, data: &[u8]) {
        put_option_reply(&mut self.out, option, reply_type, data);
    }

    fn error(&mut self, option: u32, reply_type: u32, message: &str) {
        tracing::debug!(
            option,
            reply_type = format_args!("{reply_type:#x}"),
            message,
            "option refused"
        );
        self.reply(
            option,
            reply_type,
            truncate_str(message, MAX_STRING_LEN).as_bytes(),
        );
    }

    fn negotiated(&self, export: usize) -> Negotiated {
        let read_only = self.exports.0[export].export.read_only();
        Negotiated {
            export,
            structured: self.structured,
            base_allocation: self.structured && self.meta_export == Some(export),
            flags: transmission_flags(read_only, self.structured),
        }
    }

    /// `NBD_OPT_EXPORT_NAME`: the old way in, with no error reply.
    fn export_name(&mut self, name: &[u8], no_zeroes: bool) -> Result<Negotiated, HandshakeError> {
        let Some(index) = self.exports.find(name) else {
            return Err(HandshakeError::UnknownExport(
                String::from_utf8_lossy(name).into_owned(),
            ));
        };
        let n = self.negotiated(index);
        self.out.put_u64(self.exports.0[index].export.size());
        self.out.put_u16(n.flags);
        if !no_zeroes {
            self.out.put_slice(&[0u8; 124]);
        }
        Ok(n)
    }

    fn option(&mut self, option: u32, data: Bytes) -> Next {
        match option {
            NBD_OPT_ABORT => {
                self.reply(option, NBD_REP_ACK, &[]);
                return Next::Abort;
            }
            NBD_OPT_LIST => self.list(option, &data),
            NBD_OPT_STARTTLS => {
                if data.is_empty() {
                    self.error(
                        option,
                        NBD_REP_ERR_POLICY,
                        "TLS is not supported by this server",
                    );
                } else {
                    self.error(
                        option,
                        NBD_REP_ERR_INVALID,
                        "NBD_OPT_STARTTLS carries no data",
                    );
                }
            }
            NBD_OPT_INFO | NBD_OPT_GO => {
                if let Some(n) = self.info(option, data) {
                    if option == NBD_OPT_GO {
                        return Next::Go(n);
                    }
                }
            }
            NBD_OPT_STRUCTURED_REPLY => {
                if data.is_empty() {
                    self.structured = true;
                    self.reply(option, NBD_REP_ACK, &[]);
                } else {
                    self.error(
                        option,
                        NBD_REP_ERR_INVALID,
                        "NBD_OPT_STRUCTURED_REPLY carries no data",
                    );
                }
            }
            NBD_OPT_LIST_META_CONTEXT | NBD_OPT_SET_META_CONTEXT => self.meta_context(option, data),
            _ => self.error(
                option,
                NBD_REP_ERR_UNSUP,
                &format!("option {option} is not supported"),
            ),
        }
        Next::Continue
    }

    fn list(&mut self, option: u32, data: &[u8]) {
        if !data.is_empty() {
            self.error(option, NBD_REP_ERR_INVALID, "NBD_OPT_LIST carries no data");
            return;
        }
        let exports = self.exports.clone();
        for e in exports.0.iter() {
            let mut d = Vec::with_capacity(4 + e.name.len() + e.description.len());
            d.put_u32(e.name.len() as u32);
            d.put_slice(e.name.as_bytes());
            d.put_slice(e.description.as_bytes());
            self.reply(option, NBD_REP_SERVER, &d);
        }
        self.reply(option, NBD_REP_ACK, &[]);
    }

    /// `NBD_OPT_INFO` and `NBD_OPT_GO`. Returns the settlement on success.
    fn info(&mut self, option: u32, mut data: Bytes) -> Option<Negotiated> {
        // 32-bit name length, name, 16-bit count, count 16-bit requests.
        if data.len() < 6 {
            self.error(
                option,
                NBD_REP_ERR_INVALID,
                "option data shorter than 6 bytes",
            );
            return None;
        }
        let name_len = data.get_u32() as usize;
        if name_len > data.len() - 2 {
            self.error(
                option,
                NBD_REP_ERR_INVALID,
                "export name longer than the option data",
            );
            return None;
        }
        let name = data.split_to(name_len);
        let count = data.get_u16() as usize;
        if data.len() != 2 * count {
            self.error(
                option,
                NBD_REP_ERR_INVALID,
                &format!(
                    "{count} information requests announced, {} bytes follow",
                    data.len()
                ),
            );
            return None;
        }
        let mut want_name = false;
        let mut want_description = false;
        while data.has_remaining() {
            match data.get_u16() {
                NBD_INFO_NAME => want_name = true,
                NBD_INFO_DESCRIPTION => want_description = true,
                _ => {} // BLOCK_SIZE is always sent; unknown ones are ignored.
            }
        }
        let Some(index) = self.exports.find(&name) else {
            let msg = format!("no export named {:?}", String::from_utf8_lossy(&name));
            self.error(option, NBD_REP_ERR_UNKNOWN, &msg);
            return None;
        };
        let n = self.negotiated(index);
        let exports = self.exports.clone();
        let e = &exports.0[index];

        let mut d = Vec::with_capacity(16);
        d.put_u16(NBD_INFO_EXPORT);
        d.put_u64(e.export.size());
        d.put_u16(n.flags);
        self.reply(option, NBD_REP_INFO, &d);

        if want_name {
            let mut d = Vec::with_capacity(2 + e.name.len());
            d.put_u16(NBD_INFO_NAME);
            d.put_slice(e.name.as_bytes());
            self.reply(option, NBD_REP_INFO, &d);
        }
        if want_description && !e.description.is_empty() {
            let mut d = Vec::with_capacity(2 + e.description.len());
            d.put_u16(NBD_INFO_DESCRIPTION);
            d.put_slice(e.description.as_bytes());
            self.reply(option, NBD_REP_INFO, &d);
        }
        let mut d = Vec::with_capacity(14);
        d.put_u16(NBD_INFO_BLOCK_SIZE);
        d.put_u32(MIN_BLOCK_SIZE);
        d.put_u32(PREFERRED_BLOCK_SIZE);
        d.put_u32(MAX_BLOCK_SIZE);
        self.reply(option, NBD_REP_INFO, &d);

        self.reply(option, NBD_REP_ACK, &[]);
        Some(n)
    }

    /// `NBD_OPT_LIST_META_CONTEXT` and `NBD_OPT_SET_META_CONTEXT`.
    fn meta_context(&mut self, option: u32, data: Bytes) {
        let set = option == NBD_OPT_SET_META_CONTEXT;
        if set {
            // A SET replaces the selection, even when it fails.
            self.meta_export = None;
            if !self.structured {
                self.error(
                    option,
                    NBD_REP_ERR_INVALID,
                    "NBD_OPT_SET_META_CONTEXT needs structured replies first",
                );
                return;
            }
        }
        let Some((name, queries)) = parse_meta_request(data) else {
            self.error(
                option,
                NBD_REP_ERR_INVALID,
                "malformed metadata context request",
            );
            return;
        };
        let Some(index) = self.exports.find(&name) else {
            let msg = format!("no export named {:?}", String::from_utf8_lossy(&name));
            self.error(option, NBD_REP_ERR_UNKNOWN, &msg);
            return;
        };
        let matches = if set {
            // "base:" alone selects nothing during SET (spec).
            queries.iter().any(|q| &q[..] == BASE_ALLOCATION.as_bytes())
        } else {
            queries.is_empty()
                || queries
                    .iter()
                    .any(|q| &q[..] == b"base:" || &q[..] == BASE_ALLOCATION.as_bytes())
        };
        if matches {
            let id = if set { BASE_ALLOCATION_ID } else { 0 };
            let mut d = Vec::with_capacity(4 + BASE_ALLOCATION.len());
            d.put_u32(id);
            d.put_slice(BASE_ALLOCATION.as_bytes());
            self.reply(option, NBD_REP_META_CONTEXT, &d);
            if set {
                self.meta_export = Some(index);
            }
        }
        self.reply(option, NBD_REP_ACK, &[]);
    }
}

/// Export name and queries of a metadata context option; `None` when the
/// lengths do not add up to the option data exactly.
fn parse_meta_request(mut data: Bytes) -> Option<(Bytes, Vec<Bytes>)> {
    fn string(data: &mut Bytes) -> Option<Bytes> {
        if data.len() < 4 {
            return None;
        }
        let len = data.get_u32() as usize;
        if len > data.len() {
            return None;
        }
        Some(data.split_to(len))
    }
    let name = string(&mut data)?;
    if data.len() < 4 {
        return None;
    }
    let count = data.get_u32() as usize;
    // Each query takes at least 4 bytes: bound the count before allocating.
    if count > data.len() / 4 {
        return None;
    }
    let mut queries = Vec::with_capacity(count);
    for _ in 0..count {
        queries.push(string(&mut data)?);
    }
    if data.has_remaining() {
        return None;
    }
    Some((name, queries))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(name: &[u8], queries: &[&[u8]]) -> Bytes {
        let mut v = Vec::new();
        v.put_u32(name.len() as u32);
        v.put_slice(name);
        v.put_u32(queries.len() as u32);
        for q in queries {
            v.put_u32(q.len() as u32);
            v.put_slice(q);
        }
        Bytes::from(v)
    }

    #[test]
    fn meta_request_parses_exactly() {
        let (n, q) = parse_meta_request(meta(b"root", &[b"base:", b"x-y:z"])).expect("valid");
        assert_eq!(&n[..], b"root");
        assert_eq!(q.len(), 2);
        assert_eq!(&q[1][..], b"x-y:z");

        let mut extra = meta(b"", &[]).to_vec();
        extra.push(0);
        assert!(parse_meta_request(Bytes::from(extra)).is_none());

        let mut short = meta(b"root", &[b"base:allocation"]).to_vec();
        short.pop();
        assert!(parse_meta_request(Bytes::from(short)).is_none());

        // A count far beyond the data is refused before allocating.
        let mut huge = Vec::new();
        huge.put_u32(0);
        huge.put_u32(u32::MAX);
        assert!(parse_meta_request(Bytes::from(huge)).is_none());
    }

    #[test]
    fn flags_follow_read_only_and_structured() {
        let rw = transmission_flags(false, false);
        assert_eq!(rw, 0b0000_1101_0110_1101);
        assert_eq!(transmission_flags(true, false), rw | NBD_FLAG_READ_ONLY);
        assert_eq!(transmission_flags(false, true), rw | NBD_FLAG_SEND_DF);
    }
}

//! Wire format of the NBD protocol (doc/proto.md of NetworkBlockDevice/nbd):
//! every magic number, flag and type code used by this server, named as in
//! the spec, and the encoders of the fixed-size messages. All integers on
//! the wire are big-endian.
//!
//! Changing any value here changes bytes on the wire: it is a protocol
//! break, and `tests/protocol.rs` pins the resulting bytes.

use bytes::BufMut;

// ---- Handshake --------------------------------------------------------

/// `NBDMAGIC`, first 8 bytes the server sends (also `INIT_PASSWD`).
pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
/// `IHAVEOPT`: second magic of the newstyle greeting, and the magic that
/// starts every option the client sends.
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
/// Magic that starts every option reply.
pub const NBD_OPT_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;

/// Handshake flags (16 bits, server to client).
pub const NBD_FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
pub const NBD_FLAG_NO_ZEROES: u16 = 1 << 1;

/// Client flags (32 bits). Any other bit set: the server drops the
/// connection (spec: "MUST drop the TCP connection if the client sets an
/// unknown flag").
pub const NBD_FLAG_C_FIXED_NEWSTYLE: u32 = 1 << 0;
pub const NBD_FLAG_C_NO_ZEROES: u32 = 1 << 1;
pub const KNOWN_CLIENT_FLAGS: u32 = NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES;

/// Options.
pub const NBD_OPT_EXPORT_NAME: u32 = 1;
pub const NBD_OPT_ABORT: u32 = 2;
pub const NBD_OPT_LIST: u32 = 3;
pub const NBD_OPT_STARTTLS: u32 = 5;
pub const NBD_OPT_INFO: u32 = 6;
pub const NBD_OPT_GO: u32 = 7;
pub const NBD_OPT_STRUCTURED_REPLY: u32 = 8;
pub const NBD_OPT_LIST_META_CONTEXT: u32 = 9;
pub const NBD_OPT_SET_META_CONTEXT: u32 = 10;

/// Option reply types. Errors have bit 31 set.
pub const NBD_REP_ACK: u32 = 1;
pub const NBD_REP_SERVER: u32 = 2;
pub const NBD_REP_INFO: u32 = 3;
pub const NBD_REP_META_CONTEXT: u32 = 4;
pub const NBD_REP_FLAG_ERROR: u32 = 1 << 31;
pub const NBD_REP_ERR_UNSUP: u32 = NBD_REP_FLAG_ERROR | 1;
pub const NBD_REP_ERR_POLICY: u32 = NBD_REP_FLAG_ERROR | 2;
pub const NBD_REP_ERR_INVALID: u32 = NBD_REP_FLAG_ERROR | 3;
pub const NBD_REP_ERR_PLATFORM: u32 = NBD_REP_FLAG_ERROR | 4;
pub const NBD_REP_ERR_TLS_REQD: u32 = NBD_REP_FLAG_ERROR | 5;
pub const NBD_REP_ERR_UNKNOWN: u32 = NBD_REP_FLAG_ERROR | 6;
pub const NBD_REP_ERR_SHUTDOWN: u32 = NBD_REP_FLAG_ERROR | 7;
pub const NBD_REP_ERR_BLOCK_SIZE_REQD: u32 = NBD_REP_FLAG_ERROR | 8;
pub const NBD_REP_ERR_TOO_BIG: u32 = NBD_REP_FLAG_ERROR | 9;

/// Information types of `NBD_REP_INFO` (replies to INFO and GO).
pub const NBD_INFO_EXPORT: u16 = 0;
pub const NBD_INFO_NAME: u16 = 1;
pub const NBD_INFO_DESCRIPTION: u16 = 2;
pub const NBD_INFO_BLOCK_SIZE: u16 = 3;

/// The one metadata context this server knows.
pub const BASE_ALLOCATION: &str = "base:allocation";
/// Its id in `NBD_REP_META_CONTEXT` replies to SET_META_CONTEXT and in
/// block status chunks (LIST replies carry 0, as the spec asks).
pub const BASE_ALLOCATION_ID: u32 = 1;

// ---- Transmission -----------------------------------------------------

/// Transmission flags (16 bits).
pub const NBD_FLAG_HAS_FLAGS: u16 = 1 << 0;
pub const NBD_FLAG_READ_ONLY: u16 = 1 << 1;
pub const NBD_FLAG_SEND_FLUSH: u16 = 1 << 2;
pub const NBD_FLAG_SEND_FUA: u16 = 1 << 3;
pub const NBD_FLAG_ROTATIONAL: u16 = 1 << 4;
pub const NBD_FLAG_SEND_TRIM: u16 = 1 << 5;
pub const NBD_FLAG_SEND_WRITE_ZEROES: u16 = 1 << 6;
pub const NBD_FLAG_SEND_DF: u16 = 1 << 7;
pub const NBD_FLAG_CAN_MULTI_CONN: u16 = 1 << 8;
pub const NBD_FLAG_SEND_RESIZE: u16 = 1 << 9;
pub const NBD_FLAG_SEND_CACHE: u16 = 1 << 10;
pub const NBD_FLAG_SEND_FAST_ZERO: u16 = 1 << 11;

/// Request magic and the fixed request header size.
pub const NBD_REQUEST_MAGIC: u32 = 0x2560_9513;
pub const REQUEST_HEADER_LEN: usize = 28;

/// Commands.
pub const NBD_CMD_READ: u16 = 0;
pub const NBD_CMD_WRITE: u16 = 1;
pub const NBD_CMD_DISC: u16 = 2;
pub const NBD_CMD_FLUSH: u16 = 3;
pub const NBD_CMD_TRIM: u16 = 4;
pub const NBD_CMD_CACHE: u16 = 5;
pub const NBD_CMD_WRITE_ZEROES: u16 = 6;
pub const NBD_CMD_BLOCK_STATUS: u16 = 7;

/// Command flags.
pub const NBD_CMD_FLAG_FUA: u16 = 1 << 0;
pub const NBD_CMD_FLAG_NO_HOLE: u16 = 1 << 1;
pub const NBD_CMD_FLAG_DF: u16 = 1 << 2;
pub const NBD_CMD_FLAG_REQ_ONE: u16 = 1 << 3;
pub const NBD_CMD_FLAG_FAST_ZERO: u16 = 1 << 4;

/// Simple reply: magic, error, handle (16 bytes), then data for a read.
pub const NBD_SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
pub const SIMPLE_REPLY_HEADER_LEN: usize = 16;

/// Structured reply chunk: magic, flags, type, handle, length (20 bytes).
pub const NBD_STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;
pub const STRUCTURED_REPLY_HEADER_LEN: usize = 20;
/// Structured reply flags.
pub const NBD_REPLY_FLAG_DONE: u16 = 1 << 0;
/// Structured reply types. Error types have bit 15 set.
pub const NBD_REPLY_TYPE_NONE: u16 = 0;
pub const NBD_REPLY_TYPE_OFFSET_DATA: u16 = 1;
pub const NBD_REPLY_TYPE_OFFSET_HOLE: u16 = 2;
pub const NBD_REPLY_TYPE_BLOCK_STATUS: u16 = 5;
pub const NBD_REPLY_TYPE_ERROR: u16 = (1 << 15) | 1;
pub const NBD_REPLY_TYPE_ERROR_OFFSET: u16 = (1 << 15) | 2;

/// `base:allocation` status flags.
pub const NBD_STATE_HOLE: u32 = 1 << 0;
pub const NBD_STATE_ZERO: u32 = 1 << 1;

// ---- Limits this server applies ---------------------------------------

/// Advertised minimum block size (any alignment works).
pub const MIN_BLOCK_SIZE: u32 = 1;
/// Advertised preferred block size.
pub const PREFERRED_BLOCK_SIZE: u32 = 4096;
/// Advertised maximum block size, and the largest READ or WRITE accepted
/// (2^25: the size the spec says must never be taken for an attack).
pub const MAX_BLOCK_SIZE: u32 = 32 * 1024 * 1024;
/// Largest option payload read into memory during the handshake; larger
/// ones are skipped and answered `NBD_REP_ERR_TOO_BIG`.
pub const MAX_OPTION_DATA: u32 = 64 * 1024;
/// Longest string (export name, description, message) the spec allows.
pub const MAX_STRING_LEN: usize = 4096;
/// A run of zeros at least this long is sent as an `OFFSET_HOLE` chunk.
pub const MIN_HOLE_CHUNK: u64 = 4096;

/// A request header as parsed (the magic is checked separately).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestHeader {
    pub magic: u32,
    pub flags: u16,
    pub command: u16,
    pub handle: u64,
    pub offset: u64,
    pub length: u32,
}

impl RequestHeader {
    /// Parses the 28 bytes of a request header.
    pub fn parse(b: &[u8; REQUEST_HEADER_LEN]) -> RequestHeader {
        RequestHeader {
            magic: u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
            flags: u16::from_be_bytes([b[4], b[5]]),
            command: u16::from_be_bytes([b[6], b[7]]),
            handle: u64::from_be_bytes([b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]]),
            offset: u64::from_be_bytes([b[16], b[17], b[18], b[19], b[20], b[21], b[22], b[23]]),
            length: u32::from_be_bytes([b[24], b[25], b[26], b[27]]),
        }
    }

    /// The 28 bytes of this header (for clients and tests).
    pub fn encode(&self) -> [u8; REQUEST_HEADER_LEN] {
        let mut b = [0u8; REQUEST_HEADER_LEN];
        b[0..4].copy_from_slice(&self.magic.to_be_bytes());
        b[4..6].copy_from_slice(&self.flags.to_be_bytes());
        b[6..8].copy_from_slice(&self.command.to_be_bytes());
        b[8..16].copy_from_slice(&self.handle.to_be_bytes());
        b[16..24].copy_from_slice(&self.offset.to_be_bytes());
        b[24..28].copy_from_slice(&self.length.to_be_bytes());
        b
    }
}

/// Appends an option reply: magic, option, type, length, data.
pub fn put_option_reply(out: &mut Vec<u8>, option: u32, reply_type: u32, data: &[u8]) {
    let len = u32::try_from(data.len()).expect("option replies are built from bounded strings");
    out.put_u64(NBD_OPT_REPLY_MAGIC);
    out.put_u32(option);
    out.put_u32(reply_type);
    out.put_u32(len);
    out.put_slice(data);
}

/// A simple reply header.
pub fn simple_reply(error: u32, handle: u64) -> [u8; SIMPLE_REPLY_HEADER_LEN] {
    let mut b = [0u8; SIMPLE_REPLY_HEADER_LEN];
    b[0..4].copy_from_slice(&NBD_SIMPLE_REPLY_MAGIC.to_be_bytes());
    b[4..8].copy_from_slice(&error.to_be_bytes());
    b[8..16].copy_from_slice(&handle.to_be_bytes());
    b
}

/// A structured reply chunk header; `length` is the payload length.
pub fn chunk_header(
    flags: u16,
    reply_type: u16,
    handle: u64,
    length: u32,
) -> [u8; STRUCTURED_REPLY_HEADER_LEN] {
    let mut b = [0u8; STRUCTURED_REPLY_HEADER_LEN];
    b[0..4].copy_from_slice(&NBD_STRUCTURED_REPLY_MAGIC.to_be_bytes());
    b[4..6].copy_from_slice(&flags.to_be_bytes());
    b[6..8].copy_from_slice(&reply_type.to_be_bytes());
    b[8..16].copy_from_slice(&handle.to_be_bytes());
    b[16..20].copy_from_slice(&length.to_be_bytes());
    b
}

/// Appends a simple reply header.
pub fn put_simple_reply(out: &mut Vec<u8>, error: u32, handle: u64) {
    out.put_slice(&simple_reply(error, handle));
}

/// Appends a structured reply chunk header; `length` is the payload length.
pub fn put_chunk_header(out: &mut Vec<u8>, flags: u16, reply_type: u16, handle: u64, length: u32) {
    out.put_slice(&chunk_header(flags, reply_type, handle, length));
}

/// Byte offset of the flags field inside a structured chunk header.
pub const CHUNK_FLAGS_OFFSET: usize = 4;

/// Cuts `s` to at most `max` bytes on a UTF-8 character boundary.
pub fn truncate_str(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn magics_spell_their_names() {
        assert_eq!(&NBDMAGIC.to_be_bytes(), b"NBDMAGIC");
        assert_eq!(&IHAVEOPT.to_be_bytes(), b"IHAVEOPT");
    }

    #[test]
    fn request_header_round_trip() {
        let h = RequestHeader {
            magic: NBD_REQUEST_MAGIC,
            flags: NBD_CMD_FLAG_FUA,
            command: NBD_CMD_WRITE,
            handle: 0x0102_0304_0506_0708,
            offset: 0x1122_3344_5566_7788,
            length: 0x99aa_bbcc,
        };
        let b = h.encode();
        assert_eq!(
            b,
            [
                0x25, 0x60, 0x95, 0x13, 0x00, 0x01, 0x00, 0x01, 1, 2, 3, 4, 5, 6, 7, 8, 0x11, 0x22,
                0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc
            ]
        );
        assert_eq!(RequestHeader::parse(&b), h);
    }

    #[test]
    fn reply_headers_bytes() {
        let mut v = Vec::new();
        put_simple_reply(&mut v, 22, 0xdead_beef_0000_0001);
        assert_eq!(
            v,
            [0x67, 0x44, 0x66, 0x98, 0, 0, 0, 22, 0xde, 0xad, 0xbe, 0xef, 0, 0, 0, 1]
        );
        let mut v = Vec::new();
        put_chunk_header(
            &mut v,
            NBD_REPLY_FLAG_DONE,
            NBD_REPLY_TYPE_ERROR_OFFSET,
            7,
            14,
        );
        assert_eq!(
            v,
            [0x66, 0x8e, 0x33, 0xef, 0, 1, 0x80, 2, 0, 0, 0, 0, 0, 0, 0, 7, 0, 0, 0, 14]
        );
        let mut v = Vec::new();
        put_option_reply(&mut v, NBD_OPT_LIST, NBD_REP_ERR_INVALID, b"x");
        assert_eq!(
            v,
            [
                0, 3, 0xe8, 0x89, 0x04, 0x55, 0x65, 0xa9, 0, 0, 0, 3, 0x80, 0, 0, 3, 0, 0, 0, 1,
                b'x'
            ]
        );
    }

    #[test]
    fn truncate_on_char_boundary() {
        assert_eq!(truncate_str("héllo", 2), "h");
        assert_eq!(truncate_str("héllo", 3), "hé");
        assert_eq!(truncate_str("abc", 10), "abc");
    }
}

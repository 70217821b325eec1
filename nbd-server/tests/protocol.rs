//! The protocol on the wire, byte by byte, with a raw client: handshake,
//! options, every command and its errors, pipelining, and broken clients.

mod common;

use std::sync::Arc;

use common::*;
use nbd_server::proto::*;
use nbd_server::{ExportConfig, MemoryExport};

/// HAS_FLAGS|SEND_FLUSH|SEND_FUA|SEND_TRIM|SEND_WRITE_ZEROES|CAN_MULTI_CONN|
/// SEND_CACHE|SEND_FAST_ZERO.
const RW_FLAGS: u16 = 0x0d6d;

#[test]
fn handshake_and_reply_header_bytes_are_pinned() {
    let (_, _, exports) = two_exports();
    let srv = TestServer::start(exports);
    let mut c = srv.connect();
    // NBDMAGIC, IHAVEOPT, handshake flags FIXED_NEWSTYLE|NO_ZEROES.
    assert_eq!(
        c.read_n(18),
        [
            0x4e, 0x42, 0x44, 0x4d, 0x41, 0x47, 0x49, 0x43, 0x49, 0x48, 0x41, 0x56, 0x45, 0x4f,
            0x50, 0x54, 0x00, 0x03
        ]
    );
    c.send(&[0, 0, 0, 3]); // C_FIXED_NEWSTYLE | C_NO_ZEROES
                           // NBD_OPT_EXPORT_NAME "" (the first export), by hand.
    c.send(&[
        0x49, 0x48, 0x41, 0x56, 0x45, 0x4f, 0x50, 0x54, 0, 0, 0, 1, 0, 0, 0, 0,
    ]);
    // Size (1 MiB), transmission flags, and no 124 zeroes.
    assert_eq!(c.read_n(10), [0, 0, 0, 0, 0, 0x10, 0, 0, 0x0d, 0x6d]);
    // A READ of 4 bytes at 0, handle 0x0102030405060708: simple reply.
    c.send(&[
        0x25, 0x60, 0x95, 0x13, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        0, 4,
    ]);
    assert_eq!(
        c.read_n(20),
        [0x67, 0x44, 0x66, 0x98, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0, 0]
    );
    // An unknown command: simple reply with EINVAL (22).
    c.request(0, 42, 9, 0, 0);
    assert_eq!(
        c.read_n(16),
        [0x67, 0x44, 0x66, 0x98, 0, 0, 0, 22, 0, 0, 0, 0, 0, 0, 0, 9]
    );
    srv.stop().expect("clean stop");
}

#[test]
fn structured_chunk_header_bytes_are_pinned() {
    let data = pattern(4096, 3);
    let export = Arc::new(MemoryExport::from_bytes(&data));
    let srv = TestServer::start(vec![ExportConfig::new("x", export)]);
    let mut c = Raw::connect_go(&srv.socket, "x", true, false);
    c.request(0, NBD_CMD_READ, 0x1122, 0, 8);
    // One OFFSET_DATA chunk with DONE: magic, flags 1, type 1, handle, length 16.
    assert_eq!(
        c.read_n(20),
        [0x66, 0x8e, 0x33, 0xef, 0, 1, 0, 1, 0, 0, 0, 0, 0, 0, 0x11, 0x22, 0, 0, 0, 16]
    );
    assert_eq!(c.read_n(16)[..8], [0u8; 8]);
    // Out of range: an ERROR chunk (type 0x8001) with DONE and a message.
    c.request(0, NBD_CMD_READ, 5, 4096, 1);
    let h = c.read_n(20);
    assert_eq!(
        h[..16],
        [0x66, 0x8e, 0x33, 0xef, 0, 1, 0x80, 1, 0, 0, 0, 0, 0, 0, 0, 5]
    );
    let len = u32::from_be_bytes(h[16..20].try_into().expect("4")) as usize;
    let payload = c.read_n(len);
    assert_eq!(payload[..4], [0, 0, 0, 22]);
    let msg_len = u16::from_be_bytes([payload[4], payload[5]]) as usize;
    assert_eq!(msg_len + 6, len);
    assert!(String::from_utf8_lossy(&payload[6..]).contains("beyond the end"));
    srv.stop().expect("clean stop");
}

#[test]
fn export_name_with_zeroes_and_unknown_name_closes() {
    let (_, _, exports) = two_exports();
    let srv = TestServer::start(exports);

    let mut c = srv.connect();
    c.greet(NBD_FLAG_C_FIXED_NEWSTYLE);
    c.option(NBD_OPT_EXPORT_NAME, b"second");
    assert_eq!(c.u64(), 64 * 1024);
    assert_eq!(c.u16(), RW_FLAGS | NBD_FLAG_READ_ONLY);
    assert_eq!(c.read_n(124), vec![0u8; 124]);
    c.request(0, NBD_CMD_READ, 1, 0, 3);
    assert_eq!(c.simple_reply(), (0, 1));
    assert_eq!(c.read_n(3), [1, 2, 3]);

    let mut c = srv.connect();
    c.greet(NBD_FLAG_C_FIXED_NEWSTYLE);
    c.option(NBD_OPT_EXPORT_NAME, b"nope");
    assert!(
        c.closed_by_server(),
        "EXPORT_NAME has no error reply: the server closes"
    );
    srv.stop().expect("clean stop");
}

#[test]
fn structured_replies_apply_after_export_name_too() {
    let (_, _, exports) = two_exports();
    let srv = TestServer::start(exports);
    let mut c = srv.connect();
    c.greet(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES);
    c.option(NBD_OPT_STRUCTURED_REPLY, &[]);
    assert_eq!(c.opt_reply().reply_type, NBD_REP_ACK);
    c.option(NBD_OPT_EXPORT_NAME, b"second");
    assert_eq!(c.u64(), 64 * 1024);
    assert_eq!(c.u16(), RW_FLAGS | NBD_FLAG_READ_ONLY | NBD_FLAG_SEND_DF);
    assert_eq!(c.read_structured(1, 0, 4), [1, 2, 3, 4]);
    srv.stop().expect("clean stop");
}

#[test]
fn maximum_size_write_and_unfragmented_read() {
    let e = Arc::new(MemoryExport::new(40 << 20));
    let srv = TestServer::start(vec![ExportConfig::new("big", e.clone())]);
    let mut c = Raw::connect_go(&srv.socket, "big", true, false);
    let data = pattern(MAX_BLOCK_SIZE as usize, 99);
    c.write(NBD_CMD_FLAG_FUA, 1, 4096, &data);
    assert_eq!(c.simple_reply(), (0, 1));
    c.request(NBD_CMD_FLAG_DF, NBD_CMD_READ, 2, 4096, MAX_BLOCK_SIZE);
    let chunks = c.structured_reply();
    assert_eq!(chunks.len(), 1);
    assert_eq!(chunks[0].reply_type, NBD_REPLY_TYPE_OFFSET_DATA);
    assert_eq!(chunks[0].u64_at(0), 4096);
    assert!(chunks[0].payload[8..] == data[..]);
    assert!(e.to_vec()[4096..4096 + data.len()] == data[..]);
    srv.stop().expect("clean stop");
}

#[test]
fn unknown_client_flags_close_the_connection() {
    let (_, _, exports) = two_exports();
    let srv = TestServer::start(exports);
    let mut c = srv.connect();
    c.greet(NBD_FLAG_C_FIXED_NEWSTYLE | 1 << 5);
    assert!(c.closed_by_server());
    // Bad option magic too.
    let mut c = srv.connect();
    c.greet(NBD_FLAG_C_FIXED_NEWSTYLE);
    c.send(&[0u8; 16]);
    assert!(c.closed_by_server());
    srv.stop().expect("clean stop");
}

#[test]
fn list_exports_and_list_with_data() {
    let (_, _, exports) = two_exports();
    let srv = TestServer::start(exports);
    let mut c = srv.connect();
    c.greet(NBD_FLAG_C_FIXED_NEWSTYLE);
    c.option(NBD_OPT_LIST, &[]);
    let r = c.opt_reply();
    assert_eq!(r.magic, 0x0003_e889_0455_65a9);
    assert_eq!((r.option, r.reply_type), (NBD_OPT_LIST, NBD_REP_SERVER));
    assert_eq!(r.data, b"\0\0\0\x05first");
    let r = c.opt_reply();
    assert_eq!(r.reply_type, NBD_REP_SERVER);
    assert_eq!(r.data, b"\0\0\0\x06secondthe read-only one");
    let r = c.opt_reply();
    assert_eq!((r.reply_type, r.data.len()), (NBD_REP_ACK, 0));

    c.option(NBD_OPT_LIST, b"junk");
    let r = c.opt_reply();
    assert_eq!(r.reply_type, NBD_REP_ERR_INVALID);
    // Haggling goes on.
    c.option(NBD_OPT_LIST, &[]);
    assert_eq!(c.opt_reply().reply_type, NBD_REP_SERVER);
    srv.stop().expect("clean stop");
}

#[test]
fn unknown_option_and_starttls_are_refused_then_go_works() {
    let (_, _, exports) = two_exports();
    let srv = TestServer::start(exports);
    let mut c = srv.connect();
    c.greet(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES);
    c.option(99, b"whatever data");
    let r = c.opt_reply();
    assert_eq!((r.option, r.reply_type), (99, 0x8000_0001));
    c.option(NBD_OPT_STARTTLS, &[]);
    assert_eq!(c.opt_reply().reply_type, 0x8000_0002);
    // An option beyond the 64 KiB limit is skipped, answered TOO_BIG.
    c.option(98, &vec![0u8; 70 * 1024]);
    assert_eq!(c.opt_reply().reply_type, NBD_REP_ERR_TOO_BIG);
    c.option(NBD_OPT_GO, &Raw::info_data("first", &[]));
    let r = c.opt_reply();
    assert_eq!(r.reply_type, NBD_REP_INFO);
    assert_eq!(r.data, [0, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0x0d, 0x6d]);
    let r = c.opt_reply();
    assert_eq!(r.reply_type, NBD_REP_INFO);
    assert_eq!(r.data, [0, 3, 0, 0, 0, 1, 0, 0, 0x10, 0, 0x02, 0, 0, 0]);
    assert_eq!(c.opt_reply().reply_type, NBD_REP_ACK);
    c.request(0, NBD_CMD_FLUSH, 77, 0, 0);
    assert_eq!(c.simple_reply(), (0, 77));
    srv.stop().expect("clean stop");
}

#[test]
fn info_go_replies_and_errors() {
    let (_, _, exports) = two_exports();
    let srv = TestServer::start(exports);
    let mut c = srv.connect();
    c.greet(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES);
    c.option(NBD_OPT_STRUCTURED_REPLY, &[]);
    assert_eq!(c.opt_reply().reply_type, NBD_REP_ACK);

    c.option(
        NBD_OPT_INFO,
        &Raw::info_data(
            "second",
            &[NBD_INFO_NAME, NBD_INFO_DESCRIPTION, NBD_INFO_BLOCK_SIZE, 77],
        ),
    );
    let mut infos = Vec::new();
    loop {
        let r = c.opt_reply();
        assert_eq!(r.option, NBD_OPT_INFO);
        if r.reply_type == NBD_REP_ACK {
            break;
        }
        assert_eq!(r.reply_type, NBD_REP_INFO);
        infos.push(r.data);
    }
    let export_info: Vec<u8> = [
        &[0u8, 0][..],
        &(64u64 * 1024).to_be_bytes(),
        &(RW_FLAGS | NBD_FLAG_READ_ONLY | NBD_FLAG_SEND_DF).to_be_bytes(),
    ]
    .concat();
    assert!(infos.contains(&export_info), "{infos:?}");
    assert!(infos.contains(&b"\0\x01second".to_vec()));
    assert!(infos.contains(&b"\0\x02the read-only one".to_vec()));
    assert!(infos.contains(&vec![0, 3, 0, 0, 0, 1, 0, 0, 0x10, 0, 0x02, 0, 0, 0]));
    assert_eq!(infos.len(), 4);

    c.option(NBD_OPT_INFO, &Raw::info_data("missing", &[]));
    let r = c.opt_reply();
    assert_eq!(r.reply_type, NBD_REP_ERR_UNKNOWN);
    assert!(String::from_utf8_lossy(&r.data).contains("missing"));

    // Name length beyond the data; request count not matching.
    let mut bad = Raw::info_data("first", &[]);
    bad[3] = 200;
    c.option(NBD_OPT_GO, &bad);
    assert_eq!(c.opt_reply().reply_type, NBD_REP_ERR_INVALID);
    let mut bad = Raw::info_data("first", &[NBD_INFO_NAME]);
    bad.pop();
    c.option(NBD_OPT_GO, &bad);
    assert_eq!(c.opt_reply().reply_type, NBD_REP_ERR_INVALID);
    c.option(NBD_OPT_GO, &[0, 0]);
    assert_eq!(c.opt_reply().reply_type, NBD_REP_ERR_INVALID);

    // GO with "" is the first export.
    c.option(NBD_OPT_GO, &Raw::info_data("", &[NBD_INFO_NAME]));
    let r = c.opt_reply();
    assert_eq!(r.data[..10], [0, 0, 0, 0, 0, 0, 0, 0x10, 0, 0]);
    assert_eq!(r.data[10..], (RW_FLAGS | NBD_FLAG_SEND_DF).to_be_bytes());
    let mut acked = false;
    let mut named = false;
    while !acked {
        let r = c.opt_reply();
        named |= r.reply_type == NBD_REP_INFO && r.data == b"\0\x01first";
        acked = r.reply_type == NBD_REP_ACK;
    }
    assert!(
        named,
        "NBD_INFO_NAME gives the canonical name of the default export"
    );
    assert_eq!(c.read_structured(1, 0, 16), vec![0u8; 16]);
    srv.stop().expect("clean stop");
}

#[test]
fn abort_is_acknowledged_then_closed() {
    let (_, _, exports) = two_exports();
    let srv = TestServer::start(exports);
    let mut c = srv.connect();
    c.greet(NBD_FLAG_C_FIXED_NEWSTYLE);
    c.option(NBD_OPT_ABORT, &[]);
    let r = c.opt_reply();
    assert_eq!(
        (r.option, r.reply_type, r.data.len()),
        (NBD_OPT_ABORT, NBD_REP_ACK, 0)
    );
    assert!(c.closed_by_server());
    srv.stop().expect("clean stop");
}

#[test]
fn meta_context_list_and_set() {
    let (_, _, exports) = two_exports();
    let srv = TestServer::start(exports);
    let mut c = srv.connect();
    c.greet(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES);
    c.option(
        NBD_OPT_SET_META_CONTEXT,
        &Raw::meta_data("first", &["base:allocation"]),
    );
    assert_eq!(
        c.opt_reply().reply_type,
        NBD_REP_ERR_INVALID,
        "SET needs structured replies"
    );
    c.option(NBD_OPT_STRUCTURED_REPLY, &[]);
    assert_eq!(c.opt_reply().reply_type, NBD_REP_ACK);

    for queries in [
        &[][..],
        &["base:"][..],
        &["base:allocation"][..],
        &["x-a:b", "base:"][..],
    ] {
        c.option(NBD_OPT_LIST_META_CONTEXT, &Raw::meta_data("first", queries));
        let r = c.opt_reply();
        assert_eq!(r.reply_type, NBD_REP_META_CONTEXT, "{queries:?}");
        assert_eq!(r.data, b"\0\0\0\0base:allocation");
        assert_eq!(c.opt_reply().reply_type, NBD_REP_ACK);
    }
    c.option(
        NBD_OPT_LIST_META_CONTEXT,
        &Raw::meta_data("first", &["x-foo:bar"]),
    );
    assert_eq!(
        c.opt_reply().reply_type,
        NBD_REP_ACK,
        "no match: a lone ACK"
    );
    c.option(NBD_OPT_LIST_META_CONTEXT, &Raw::meta_data("nope", &[]));
    assert_eq!(c.opt_reply().reply_type, NBD_REP_ERR_UNKNOWN);
    let mut bad = Raw::meta_data("first", &["base:"]);
    bad.push(0);
    c.option(NBD_OPT_LIST_META_CONTEXT, &bad);
    assert_eq!(c.opt_reply().reply_type, NBD_REP_ERR_INVALID);

    c.option(
        NBD_OPT_SET_META_CONTEXT,
        &Raw::meta_data("nope", &["base:allocation"]),
    );
    assert_eq!(c.opt_reply().reply_type, NBD_REP_ERR_UNKNOWN);
    c.option(
        NBD_OPT_SET_META_CONTEXT,
        &Raw::meta_data("first", &["base:"]),
    );
    assert_eq!(
        c.opt_reply().reply_type,
        NBD_REP_ACK,
        "base: selects nothing in SET"
    );
    c.option(
        NBD_OPT_SET_META_CONTEXT,
        &Raw::meta_data("first", &["base:allocation"]),
    );
    let r = c.opt_reply();
    assert_eq!(r.reply_type, NBD_REP_META_CONTEXT);
    assert_eq!(&r.data[4..], b"base:allocation");
    let id = u32::from_be_bytes(r.data[..4].try_into().expect("4"));
    assert_eq!(c.opt_reply().reply_type, NBD_REP_ACK);
    c.option(NBD_OPT_GO, &Raw::info_data("first", &[]));
    while c.opt_reply().reply_type != NBD_REP_ACK {}
    c.request(0, NBD_CMD_BLOCK_STATUS, 3, 0, 4096);
    let chunks = c.structured_reply();
    assert_eq!(chunks.len(), 1);
    assert_eq!(chunks[0].reply_type, NBD_REPLY_TYPE_BLOCK_STATUS);
    assert_eq!(chunks[0].u32_at(0), id, "the id given by SET_META_CONTEXT");
    srv.stop().expect("clean stop");
}

/// 28 KiB: 8 KiB data, 16 KiB zeros (holes), 4 KiB data.
fn holey() -> (Vec<u8>, Arc<MemoryExport>) {
    let mut data = pattern(28 * 1024, 11);
    data[8 * 1024..24 * 1024].fill(0);
    let e = Arc::new(MemoryExport::from_bytes(&data));
    (data, e)
}

#[test]
fn structured_read_sends_holes_and_df_sends_one_chunk() {
    let (data, e) = holey();
    let srv = TestServer::start(vec![ExportConfig::new("h", e)]);
    let mut c = Raw::connect_go(&srv.socket, "h", true, false);
    c.request(0, NBD_CMD_READ, 1, 0, 28 * 1024);
    let chunks = c.structured_reply();
    let kinds: Vec<(u16, u64, usize)> = chunks
        .iter()
        .map(|c| {
            let len = if c.reply_type == NBD_REPLY_TYPE_OFFSET_HOLE {
                c.u32_at(8) as usize
            } else {
                c.payload.len() - 8
            };
            (c.reply_type, c.u64_at(0), len)
        })
        .collect();
    assert_eq!(
        kinds,
        vec![
            (NBD_REPLY_TYPE_OFFSET_DATA, 0, 8192),
            (NBD_REPLY_TYPE_OFFSET_HOLE, 8192, 16384),
            (NBD_REPLY_TYPE_OFFSET_DATA, 24576, 4096),
        ]
    );
    assert_eq!(chunks.iter().filter(|c| c.done()).count(), 1);
    assert!(chunks[2].done());
    assert_eq!(chunks[0].payload[8..], data[..8192]);
    assert_eq!(chunks[2].payload[8..], data[24576..]);
    assert_eq!(c.read_structured(2, 100, 20000), data[100..20100]);

    // A zero run shorter than 4 KiB inside the range stays data.
    c.request(0, NBD_CMD_READ, 3, 6 * 1024, 4 * 1024);
    let chunks = c.structured_reply();
    assert_eq!(chunks.len(), 1);
    assert_eq!(chunks[0].payload[8..], data[6 * 1024..10 * 1024]);

    // DF: one data chunk with the zeros in it.
    c.request(NBD_CMD_FLAG_DF, NBD_CMD_READ, 4, 0, 28 * 1024);
    let chunks = c.structured_reply();
    assert_eq!(chunks.len(), 1);
    assert_eq!(chunks[0].reply_type, NBD_REPLY_TYPE_OFFSET_DATA);
    assert!(chunks[0].done());
    assert_eq!(chunks[0].payload[8..], data[..]);

    // Length 0: a lone NONE chunk.
    c.request(0, NBD_CMD_READ, 5, 0, 0);
    let chunks = c.structured_reply();
    assert_eq!(
        (chunks.len(), chunks[0].reply_type),
        (1, NBD_REPLY_TYPE_NONE)
    );
    srv.stop().expect("clean stop");
}

#[test]
fn simple_replies_and_request_errors() {
    let (first, _, exports) = two_exports();
    let srv = TestServer::start(exports);
    let mut c = Raw::connect_go(&srv.socket, "first", false, false);
    let data = pattern(5000, 2);
    c.write(NBD_CMD_FLAG_FUA, 1, 1000, &data);
    assert_eq!(c.simple_reply(), (0, 1));
    c.request(0, NBD_CMD_READ, 2, 1000, 5000);
    assert_eq!(c.simple_reply(), (0, 2));
    assert_eq!(c.read_n(5000), data);
    assert_eq!(first.to_vec()[1000..6000], data[..]);

    let einval = 22;
    // Out of range read: error, no payload.
    c.request(0, NBD_CMD_READ, 3, (1 << 20) - 10, 11);
    assert_eq!(c.simple_reply(), (einval, 3));
    // Write past the end: ENOSPC, and the payload is consumed.
    c.write(0, 4, (1 << 20) - 2, b"abcd");
    assert_eq!(c.simple_reply(), (28, 4));
    // Unknown flag; flag of another command; DF without structured replies.
    c.request(1 << 7, NBD_CMD_READ, 5, 0, 1);
    assert_eq!(c.simple_reply(), (einval, 5));
    c.request(NBD_CMD_FLAG_REQ_ONE, NBD_CMD_WRITE_ZEROES, 6, 0, 1);
    assert_eq!(c.simple_reply(), (einval, 6));
    c.request(NBD_CMD_FLAG_DF, NBD_CMD_READ, 7, 0, 1);
    assert_eq!(c.simple_reply(), (einval, 7));
    // Unknown command.
    c.request(0, 200, 8, 0, 0);
    assert_eq!(c.simple_reply(), (einval, 8));
    // Read larger than the maximum block size.
    c.request(0, NBD_CMD_READ, 9, 0, MAX_BLOCK_SIZE + 1);
    assert_eq!(c.simple_reply(), (einval, 9));
    // BLOCK_STATUS without a metadata context.
    c.request(0, NBD_CMD_BLOCK_STATUS, 10, 0, 512);
    assert_eq!(c.simple_reply(), (einval, 10));
    // Trim and zero, then the data reads back as zeros.
    c.request(0, NBD_CMD_TRIM, 11, 0, 4096);
    assert_eq!(c.simple_reply(), (0, 11));
    c.request(
        NBD_CMD_FLAG_NO_HOLE | NBD_CMD_FLAG_FUA,
        NBD_CMD_WRITE_ZEROES,
        12,
        4096,
        4096,
    );
    assert_eq!(c.simple_reply(), (0, 12));
    c.request(NBD_CMD_FLAG_FAST_ZERO, NBD_CMD_WRITE_ZEROES, 13, 0, 100);
    assert_eq!(c.simple_reply(), (0, 13));
    c.request(0, NBD_CMD_CACHE, 14, 0, 4096);
    assert_eq!(c.simple_reply(), (0, 14));
    c.request(0, NBD_CMD_READ, 15, 0, 8192);
    assert_eq!(c.simple_reply(), (0, 15));
    assert_eq!(c.read_n(8192), vec![0u8; 8192]);
    srv.stop().expect("clean stop");
}

#[test]
fn read_only_export_refuses_writes_with_eperm() {
    let (_, second, exports) = two_exports();
    let before = second.to_vec();
    let srv = TestServer::start(exports);
    let mut c = Raw::connect_go(&srv.socket, "second", true, false);
    c.write(0, 1, 0, b"nope");
    let chunks = c.structured_reply();
    assert_eq!(chunks[0].reply_type, NBD_REPLY_TYPE_ERROR);
    assert_eq!(chunks[0].error().0, 1, "EPERM");
    for (i, cmd) in [NBD_CMD_TRIM, NBD_CMD_WRITE_ZEROES].into_iter().enumerate() {
        c.request(0, cmd, 2 + i as u64, 0, 10);
        assert_eq!(c.structured_reply()[0].error().0, 1, "EPERM");
    }
    // Reads and flush still work.
    assert_eq!(c.read_structured(9, 0, 64 * 1024), before);
    c.request(0, NBD_CMD_FLUSH, 10, 0, 0);
    assert_eq!(c.simple_reply(), (0, 10));
    assert_eq!(second.to_vec(), before);
    srv.stop().expect("clean stop");
}

#[test]
fn poisoned_read_is_eio_with_the_offset() {
    let data = pattern(64 * 1024, 5);
    let e = Arc::new(MemoryExport::from_bytes(&data).poisoned(40_000..40_010));
    let srv = TestServer::start(vec![ExportConfig::new("p", e)]);
    let mut c = Raw::connect_go(&srv.socket, "p", true, false);
    c.request(0, NBD_CMD_READ, 1, 32 * 1024, 16 * 1024);
    let chunks = c.structured_reply();
    let last = chunks.last().expect("a chunk");
    assert_eq!(last.reply_type, NBD_REPLY_TYPE_ERROR_OFFSET);
    assert!(last.done());
    let (errno, msg) = last.error();
    assert_eq!(errno, 5, "EIO");
    assert!(msg.contains("poisoned"), "{msg}");
    assert_eq!(last.u64_at(last.payload.len() - 8), 40_000);
    // No data chunk claims the failed range.
    assert!(chunks
        .iter()
        .all(|c| c.reply_type != NBD_REPLY_TYPE_OFFSET_DATA));

    // Starting inside the poison: the offset is the request's own start.
    c.request(0, NBD_CMD_READ, 2, 40_005, 100);
    let last = c.structured_reply().pop().expect("chunk");
    assert_eq!(last.u64_at(last.payload.len() - 8), 40_005);

    // Clean reads around it still work.
    assert_eq!(c.read_structured(3, 0, 32 * 1024), data[..32 * 1024]);

    // Without structured replies: EIO in a simple reply, no payload.
    let mut s = Raw::connect_go(&srv.socket, "p", false, false);
    s.request(0, NBD_CMD_READ, 4, 39_000, 2000);
    assert_eq!(s.simple_reply(), (5, 4));
    s.request(0, NBD_CMD_READ, 5, 0, 4);
    assert_eq!(s.simple_reply(), (0, 5));
    assert_eq!(s.read_n(4), data[..4]);
    srv.stop().expect("clean stop");
}

#[test]
fn block_status_with_and_without_req_one() {
    let (_, e) = holey();
    let srv = TestServer::start(vec![ExportConfig::new("h", e)]);
    let mut c = Raw::connect_go(&srv.socket, "h", true, true);
    c.request(0, NBD_CMD_BLOCK_STATUS, 1, 4096, 24 * 1024);
    let chunks = c.structured_reply();
    assert_eq!(chunks.len(), 1);
    let p = &chunks[0].payload;
    assert_eq!(p.len(), 4 + 3 * 8);
    let descs: Vec<(u32, u32)> = (0..3)
        .map(|i| (chunks[0].u32_at(4 + 8 * i), chunks[0].u32_at(8 + 8 * i)))
        .collect();
    assert_eq!(
        descs,
        vec![
            (4096, 0),
            (16384, NBD_STATE_HOLE | NBD_STATE_ZERO),
            (4096, 0)
        ]
    );

    c.request(
        NBD_CMD_FLAG_REQ_ONE,
        NBD_CMD_BLOCK_STATUS,
        2,
        10_000,
        16 * 1024,
    );
    let chunk = &c.structured_reply()[0];
    assert_eq!(chunk.payload.len(), 12);
    assert_eq!((chunk.u32_at(4), chunk.u32_at(8)), (24576 - 10_000, 3));

    // Beyond the end, and length 0: EINVAL.
    c.request(0, NBD_CMD_BLOCK_STATUS, 3, 28 * 1024, 1);
    assert_eq!(c.structured_reply()[0].error().0, 22);
    c.request(0, NBD_CMD_BLOCK_STATUS, 4, 0, 0);
    assert_eq!(c.structured_reply()[0].error().0, 22);
    srv.stop().expect("clean stop");
}

#[test]
fn many_requests_in_flight_are_answered_by_handle() {
    let data = pattern(1 << 20, 9);
    let e = Arc::new(MemoryExport::from_bytes(&data));
    let srv = TestServer::start(vec![ExportConfig::new("m", e)]);
    let mut c = Raw::connect_go(&srv.socket, "m", false, false);
    // 64 reads of assorted sizes (some beyond the inline limit), one write.
    let mut burst = Vec::new();
    let mut want = std::collections::HashMap::new();
    for i in 0..64u64 {
        let len: u32 = if i % 16 == 0 {
            256 * 1024
        } else {
            512 + 100 * i as u32
        };
        let offset = (i * 12_345) % ((1 << 20) - u64::from(len));
        burst.extend_from_slice(&Raw::request_bytes(0, NBD_CMD_READ, 1000 + i, offset, len));
        want.insert(1000 + i, (offset, len));
    }
    c.send(&burst);
    for _ in 0..64 {
        let (err, handle) = c.simple_reply();
        assert_eq!(err, 0);
        let (offset, len) = want.remove(&handle).expect("each handle answered once");
        let got = c.read_n(len as usize);
        assert!(
            got == data[offset as usize..(offset + u64::from(len)) as usize],
            "handle {handle}"
        );
    }
    assert!(want.is_empty());
    srv.stop().expect("clean stop");
}

/// A burst whose 32nd request is a WRITE, then a READ: the READ is
/// already buffered when the server stops to send a batch, and must be
/// served without the client sending anything more.
#[test]
fn request_after_a_batch_ending_in_a_write_is_served() {
    let data = pattern(1 << 20, 6);
    let e = Arc::new(MemoryExport::from_bytes(&data));
    let srv = TestServer::start(vec![ExportConfig::new("m", e)]);
    let mut c = Raw::connect_go(&srv.socket, "m", false, false);
    let mut burst = Vec::new();
    for i in 0..31u64 {
        burst.extend_from_slice(&Raw::request_bytes(0, NBD_CMD_READ, i, i * 512, 512));
    }
    burst.extend_from_slice(&Raw::request_bytes(0, NBD_CMD_WRITE, 31, 900_000, 8192));
    burst.extend_from_slice(&[7u8; 8192]);
    burst.extend_from_slice(&Raw::request_bytes(0, NBD_CMD_READ, 32, 0, 16));
    c.send(&burst);
    let mut seen = [false; 33];
    for _ in 0..33 {
        let (err, handle) = c.simple_reply();
        assert_eq!(err, 0);
        match handle {
            31 => {}
            32 => assert_eq!(c.read_n(16), data[..16]),
            h => assert_eq!(
                c.read_n(512),
                data[h as usize * 512..h as usize * 512 + 512]
            ),
        }
        seen[handle as usize] = true;
    }
    assert!(seen.iter().all(|&s| s));
    srv.stop().expect("clean stop");
}

#[test]
fn broken_clients_lose_only_their_own_connection() {
    let data = pattern(1 << 20, 4);
    let e = Arc::new(MemoryExport::from_bytes(&data));
    let srv = TestServer::start(vec![ExportConfig::new("m", e)]);
    let mut good = Raw::connect_go(&srv.socket, "m", true, false);

    // Garbage instead of a request: that connection is closed.
    let mut bad = Raw::connect_go(&srv.socket, "m", true, false);
    bad.send(b"this is not an NBD request header");
    assert!(bad.closed_by_server());

    // Half a request, then the client vanishes.
    let mut half = Raw::connect_go(&srv.socket, "m", true, false);
    half.send(&Raw::request_bytes(0, NBD_CMD_WRITE, 1, 0, 4096)[..]);
    half.send(&[1u8; 100]);
    drop(half);

    // A write announcing more than the server will read: closed.
    let mut huge = Raw::connect_go(&srv.socket, "m", true, false);
    huge.request(0, NBD_CMD_WRITE, 1, 0, MAX_BLOCK_SIZE + 1);
    assert!(huge.closed_by_server());

    // A client that sends many reads and leaves without reading replies.
    let mut rude = Raw::connect_go(&srv.socket, "m", false, false);
    let mut burst = Vec::new();
    for i in 0..200 {
        burst.extend_from_slice(&Raw::request_bytes(0, NBD_CMD_READ, i, 0, 65536));
    }
    rude.send(&burst);
    drop(rude);

    assert_eq!(good.read_structured(7, 4096, 8192), data[4096..12288]);
    // And new clients are still welcome.
    let mut again = Raw::connect_go(&srv.socket, "m", true, false);
    assert_eq!(again.read_structured(8, 0, 100), data[..100]);
    srv.stop().expect("clean stop");
}

#[test]
fn disc_finishes_in_flight_requests_then_closes() {
    let (first, _, exports) = two_exports();
    let srv = TestServer::start(exports);
    let mut c = Raw::connect_go(&srv.socket, "first", false, false);
    let big = pattern(512 * 1024, 1);
    // A write (beyond the inline size: runs on the blocking pool), a
    // flush, then DISC, all sent at once.
    let mut b = Raw::request_bytes(0, NBD_CMD_WRITE, 1, 4096, big.len() as u32).to_vec();
    b.extend_from_slice(&big);
    b.extend_from_slice(&Raw::request_bytes(0, NBD_CMD_FLUSH, 2, 0, 0));
    b.extend_from_slice(&Raw::request_bytes(0, NBD_CMD_DISC, 3, 0, 0));
    c.send(&b);
    let mut handles = vec![c.simple_reply(), c.simple_reply()];
    handles.sort();
    assert_eq!(handles, vec![(0, 1), (0, 2)]);
    assert!(c.closed_by_server(), "no reply to DISC, then close");
    assert_eq!(first.to_vec()[4096..4096 + big.len()], big[..]);
    srv.stop().expect("clean stop");
}

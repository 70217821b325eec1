//! The server as a whole: an independent client (the `nbd` crate),
//! several connections, listeners, limits and shutdown.

mod common;

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use nbd_server::proto::*;
use nbd_server::{Error, ExportConfig, Listen, MemoryExport, Server, ServerConfig};

#[test]
fn nbd_crate_client_round_trip() {
    let (first, _, exports) = two_exports();
    let srv = TestServer::start(exports);
    let mut s = UnixStream::connect(&srv.socket).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    // The nbd crate uses NBD_OPT_EXPORT_NAME; "" is the first export.
    let export = nbd::client::handshake(&mut s, b"").expect("handshake");
    assert_eq!(export.size, 1 << 20);
    let mut client = nbd::client::NbdClient::new(&mut s, &export);
    let data = pattern(100_000, 42);
    client.seek(SeekFrom::Start(12_345)).expect("seek");
    client.write_all(&data).expect("write");
    client.flush().expect("flush");
    let mut back = vec![0u8; data.len()];
    client.seek(SeekFrom::Start(12_345)).expect("seek");
    client.read_exact(&mut back).expect("read");
    assert_eq!(back, data);
    assert_eq!(first.to_vec()[12_345..112_345], data[..]);
    srv.stop().expect("clean stop");
}

#[test]
fn write_on_one_connection_flush_on_another_read_on_a_third() {
    let (_, _, exports) = two_exports();
    let srv = TestServer::start(exports);
    let mut c1 = Raw::connect_go(&srv.socket, "first", true, false);
    let mut c2 = Raw::connect_go(&srv.socket, "first", true, false);
    let mut c3 = Raw::connect_go(&srv.socket, "first", false, false);
    let data = pattern(300_000, 8);
    c1.write(0, 1, 50_000, &data);
    assert_eq!(c1.simple_reply(), (0, 1));
    c2.request(0, NBD_CMD_FLUSH, 2, 0, 0);
    assert_eq!(c2.simple_reply(), (0, 2));
    c3.request(0, NBD_CMD_READ, 3, 50_000, data.len() as u32);
    assert_eq!(c3.simple_reply(), (0, 3));
    assert_eq!(c3.read_n(data.len()), data);
    srv.stop().expect("clean stop");
}

#[test]
fn shutdown_answers_requests_in_flight_then_removes_the_socket() {
    let (gated, entered, release) = GatedExport::new(1 << 20);
    let mut srv = TestServer::start_with(vec![ExportConfig::new("g", gated.clone())], |c| {
        // Only the shutdown can end the idle handshake below.
        c.handshake_timeout = Duration::from_secs(3600);
    });
    let socket = srv.socket.clone();
    let mut busy = Raw::connect_go(&socket, "g", true, false);
    let mut idle = Raw::connect(&socket);
    idle.read_n(18); // greeting, then nothing: mid-handshake

    // Two reads in one write: the first is held inside the export, the
    // second waits behind it in the server's buffer.
    let mut two = Raw::request_bytes(0, NBD_CMD_READ, 1, 4096, 4096).to_vec();
    two.extend_from_slice(&Raw::request_bytes(0, NBD_CMD_READ, 2, 8192, 4096));
    busy.send(&two);
    assert_eq!(
        entered
            .recv_timeout(Duration::from_secs(20))
            .expect("read entered"),
        4096
    );

    srv.signal_shutdown();
    // The mid-handshake connection is closed by the shutdown.
    assert!(idle.closed_by_server());
    // New clients are turned away: the socket file is gone.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while socket.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "socket file still there"
        );
        std::thread::yield_now();
    }
    assert!(UnixStream::connect(&socket).is_err());

    // Both requests already received complete and are answered in full.
    release.send(()).expect("release");
    release.send(()).expect("release");
    let content = gated.inner.to_vec();
    let mut answered = Vec::new();
    for _ in 0..2 {
        let c = busy.chunk();
        assert!(c.done());
        assert_eq!(c.reply_type, NBD_REPLY_TYPE_OFFSET_DATA);
        let offset = c.u64_at(0) as usize;
        assert_eq!(c.payload[8..], content[offset..offset + 4096]);
        answered.push(c.handle);
    }
    answered.sort();
    assert_eq!(answered, [1, 2]);
    assert!(busy.closed_by_server(), "then the connection is closed");

    srv.stop().expect("clean stop");
    assert!(!socket.exists());
    assert_eq!(
        gated.flushes.load(Ordering::SeqCst),
        1,
        "writable exports flushed at shutdown"
    );
}

#[test]
fn stale_socket_is_replaced_live_one_and_non_socket_refused() {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("dir");
    let export = Arc::new(MemoryExport::new(4096));
    let config = |path: &std::path::Path| ServerConfig {
        exports: vec![ExportConfig::new("x", export.clone())],
        listeners: vec![Listen::Unix(path.to_owned())],
        ..ServerConfig::default()
    };

    // Stale: a socket file nobody listens on.
    let stale = dir.path().join("stale.sock");
    drop(UnixListener::bind(&stale).expect("bind"));
    assert!(stale.exists());
    let server = rt
        .block_on(Server::bind(config(&stale)))
        .expect("stale socket replaced");
    assert_eq!(
        server.addresses(),
        vec![format!("unix:{}", stale.display())]
    );
    // Bound and listening (run() would accept).
    UnixStream::connect(&stale).expect("the new socket listens");
    drop(server);
    assert!(
        !stale.exists(),
        "dropping a bound server removes its socket file"
    );

    // Live: another server accepts there.
    let live = dir.path().join("live.sock");
    let _other = UnixListener::bind(&live).expect("bind");
    match rt.block_on(Server::bind(config(&live))) {
        Err(e @ Error::SocketInUse { .. }) => {
            assert_eq!(
                e.to_string(),
                format!("another server is listening on {}", live.display())
            )
        }
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("bound over a live socket"),
    }
    assert!(live.exists(), "the other server's socket is left alone");

    // Not a socket.
    let file = dir.path().join("file");
    std::fs::write(&file, b"precious").expect("write");
    assert!(matches!(
        rt.block_on(Server::bind(config(&file))),
        Err(Error::NotASocket { .. })
    ));
    assert_eq!(std::fs::read(&file).expect("read"), b"precious");

    // The socket file does not exist before bind; no temp files are left.
    let fresh = dir.path().join("fresh.sock");
    assert!(!fresh.exists());
    let server = rt.block_on(Server::bind(config(&fresh))).expect("bind");
    assert!(fresh.exists());
    drop(server);
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .expect("list")
        .map(|e| e.expect("entry").file_name())
        .filter(|n| n.to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn configuration_errors_name_what_is_wrong() {
    let rt = runtime();
    let e = Arc::new(MemoryExport::new(4096));
    let bind = |config: ServerConfig| rt.block_on(Server::bind(config)).err().expect("refused");
    let dir = tempfile::tempdir().expect("dir");
    let unix = Listen::Unix(dir.path().join("s"));
    assert!(matches!(
        bind(ServerConfig {
            listeners: vec![unix.clone()],
            ..ServerConfig::default()
        }),
        Error::NoExports
    ));
    let dup = vec![
        ExportConfig::new("a", e.clone()),
        ExportConfig::new("a", e.clone()),
    ];
    assert!(matches!(
        bind(ServerConfig {
            exports: dup,
            listeners: vec![unix.clone()],
            ..ServerConfig::default()
        }),
        Error::DuplicateExport { .. }
    ));
    assert!(matches!(
        bind(ServerConfig {
            exports: vec![ExportConfig::new("a", e.clone())],
            ..ServerConfig::default()
        }),
        Error::NoListeners
    ));
    let long = Listen::Unix(dir.path().join("x".repeat(120)));
    assert!(matches!(
        bind(ServerConfig {
            exports: vec![ExportConfig::new("a", e.clone())],
            listeners: vec![long],
            ..ServerConfig::default()
        }),
        Error::SocketPathTooLong { .. }
    ));
    // A TCP address already taken: the error names it.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr");
    let err = bind(ServerConfig {
        exports: vec![ExportConfig::new("a", e)],
        listeners: vec![Listen::Tcp(addr)],
        ..ServerConfig::default()
    });
    assert_eq!(err.to_string(), format!("cannot listen on TCP {addr}"));
}

#[test]
fn tcp_and_unix_listeners_serve_together() {
    let (_, _, exports) = two_exports();
    let dir = tempfile::tempdir().expect("dir");
    let sock = dir.path().join("a.sock");
    let rt = runtime();
    let server = rt
        .block_on(Server::bind(ServerConfig {
            exports,
            listeners: vec![
                Listen::Tcp("127.0.0.1:0".parse().expect("addr")),
                Listen::Unix(sock.clone()),
            ],
            ..ServerConfig::default()
        }))
        .expect("bind");
    let addrs = server.addresses();
    assert_eq!(addrs[1], format!("unix:{}", sock.display()));
    let port: u16 = addrs[0]
        .strip_prefix("tcp:127.0.0.1:")
        .expect("tcp address with the real port")
        .parse()
        .expect("port");
    assert_ne!(port, 0);
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = rt.spawn(server.run(async move {
        let _ = rx.await;
    }));

    let mut t = std::net::TcpStream::connect(("127.0.0.1", port)).expect("tcp connect");
    t.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let export = nbd::client::handshake(&mut t, b"second").expect("handshake over TCP");
    assert_eq!(export.size, 64 * 1024);
    let mut client = nbd::client::NbdClient::new(&mut t, &export);
    let mut b = [0u8; 4];
    client.read_exact(&mut b).expect("read over TCP");
    assert_eq!(b, [1, 2, 3, 4]);
    let mut u = Raw::connect_go(&sock, "second", true, false);
    assert_eq!(u.read_structured(1, 0, 4), [1, 2, 3, 4]);

    tx.send(()).expect("shutdown");
    rt.block_on(task).expect("join").expect("clean stop");
    assert!(!sock.exists());
}

#[test]
fn connection_limit_and_handshake_timeout() {
    let (_, _, exports) = two_exports();
    let srv = TestServer::start_with(exports, |c| {
        c.max_connections = 1;
        c.handshake_timeout = Duration::from_millis(300);
    });
    let mut first = Raw::connect_go(&srv.socket, "first", true, false);
    let mut second = Raw::connect(&srv.socket);
    assert!(
        second.closed_by_server(),
        "beyond the limit: closed at once"
    );
    assert_eq!(first.read_structured(1, 0, 4), [0, 0, 0, 0]);
    drop(first);

    // A client that never finishes the handshake is dropped after the
    // timeout (the connection slot frees up once the first one is gone).
    let start = std::time::Instant::now();
    let mut slow = loop {
        let mut c = Raw::connect(&srv.socket);
        let mut greeting = [0u8; 18];
        if c.s.read_exact(&mut greeting).is_ok() {
            break c;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "slot never freed"
        );
        std::thread::yield_now();
    };
    assert!(slow.closed_by_server());
    srv.stop().expect("clean stop");
}

/// Socket activation end to end: nbdinfo starts this test binary as the
/// server (`nbdinfo -- [ CMD ]` passes a listening socket as fd 3 with
/// LISTEN_PID/LISTEN_FDS), which serves it through the real `bind()`.
#[test]
fn socket_activation_with_nbdinfo() {
    let exe = std::env::current_exe().expect("test binary path");
    let mut nbdinfo = testkit::tool_cmd("nbdinfo", ["--size", "--"]);
    nbdinfo
        .arg("[")
        .arg(&exe)
        .args([
            "--exact",
            "activated_server_helper",
            "--nocapture",
            "--test-threads=1",
        ])
        .arg("]")
        .env("NBD_SERVER_TEST_ACTIVATED", "1");
    let out = testkit::output_within(nbdinfo, testkit::TOOL_DEADLINE);
    assert!(
        out.status.success(),
        "nbdinfo failed:\n{}",
        testkit::text(&out)
    );
    // The child (this harness) shares nbdinfo's stdout: the size comes last.
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.split_whitespace().last(), Some("12345"), "{stdout}");
}

/// Not a test on its own: the server half of `socket_activation_with_nbdinfo`.
#[test]
fn activated_server_helper() {
    if std::env::var_os("NBD_SERVER_TEST_ACTIVATED").is_none() {
        return;
    }
    let rt = runtime();
    let server = rt
        .block_on(Server::bind(ServerConfig {
            exports: vec![ExportConfig::new("a", Arc::new(MemoryExport::new(12345)))],
            // Ignored when activated: binding here would fail the test.
            listeners: vec![Listen::Unix("/nonexistent/dir/x.sock".into())],
            ..ServerConfig::default()
        }))
        .expect("bind to the activated socket");
    assert_eq!(server.addresses().len(), 1);
    assert!(server.addresses()[0].starts_with("systemd fd 3 (unix"));
    assert!(
        std::env::var_os("LISTEN_PID").is_none(),
        "variables removed"
    );
    // Serves until nbdinfo is done and terminates this process.
    let _ = rt.block_on(server.run(std::future::pending()));
}

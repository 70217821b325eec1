//! `mosaic serve` under faults, judged by real clients: a fragment tampered
//! or truncated while serving, kill -9 during FUA/flush writes, SIGTERM
//! with writes in flight, connection limits, malformed requests, socket
//! activation, command-line errors, and `mosaic demo`.
//!
//! A missing tool fails the test naming its Debian package. Every test has
//! its own directory and socket; no fixed TCP port is used.

mod kit;

use kit::image::export_image;
use kit::serve::*;
use kit::server::*;
use kit::*;
use serde_json::Value;
use std::ffi::OsString;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::time::{Duration, Instant};

#[test]
fn tampered_fragment_block_gets_eio_and_server_stays_up() {
    let fx = Fixture::new();
    let image = fx.image_bytes();
    let marker = marker_bytes();
    let frag = fs::read(&fx.base_frag).unwrap();
    let in_frag =
        find(&frag, &marker[..8192]).expect("the marker's bytes in base.frag (raw)") as u64;
    let in_image = find_block(&image, &marker[..8192]).expect("the marker in the image");
    let bad = in_image + 4096; // the volume block holding marker[4096..8192]
    let sock = fx.socket("s.sock");
    let srv = Server::start(&[&fx.manifest], &sock, &["--cache-size", "0"]);
    let u = uri(&sock, "root");

    let mut c = NbdConn::connect(&sock, "root").unwrap();
    assert_bytes_eq(&c.read(bad, 4096).unwrap(), &marker[4096..8192], "before");

    let file = fs::OpenOptions::new()
        .write(true)
        .open(&fx.base_frag)
        .unwrap();
    let flip_at = in_frag + 4096 + 100;
    let orig = frag[flip_at as usize];
    file.write_all_at(&[orig ^ 0x5a], flip_at).unwrap();

    // qemu-io: the read fails with EIO.
    let o = tool(
        "qemu-io",
        ["-f", "raw", "-c", &format!("read {bad} 4096"), &u],
    );
    assert!(
        !o.status.success() && text(&o).contains("Input/output error"),
        "qemu-io read of the tampered block ({}):\n{}",
        o.status,
        text(&o)
    );
    // A wider read covering it fails too.
    let o = tool(
        "qemu-io",
        ["-f", "raw", "-c", &format!("read {} 65536", in_image), &u],
    );
    assert!(
        !o.status.success() && text(&o).contains("Input/output error"),
        "qemu-io read over the tampered block ({}):\n{}",
        o.status,
        text(&o)
    );
    // The nbd crate: EIO, and the same connection goes on.
    let e = c.read(bad, 4096).expect_err("read of the tampered block");
    assert!(e.to_string().contains("EIO"), "error: {e}");
    assert_bytes_eq(
        &c.read(in_image + 8192, 4096).unwrap(),
        &marker[8192..12288],
        "the next block",
    );
    assert_bytes_eq(
        &c.read(in_image, 4096).unwrap(),
        &marker[..4096],
        "the previous block",
    );
    assert_bytes_eq(
        &c.read(0, 4 * MIB as usize).unwrap(),
        &image[..4 * MIB as usize],
        "the first 4 MiB",
    );
    // Another client is served.
    let info = json(&tool_ok("nbdinfo", ["--json", &u]));
    assert_eq!(
        info["exports"][0]["export-size"].as_u64(),
        Some(image.len() as u64)
    );
    assert!(
        srv.wait_log("base.frag"),
        "the server's stderr does not name the fragment:\n{}",
        srv.log()
    );
    let log = srv.log();
    let line = log.lines().find(|l| l.contains("base.frag")).unwrap();
    assert!(
        line.contains("region") && line.contains("block"),
        "the error line should name fragment, region and block: {line}"
    );
    // Restored: served again (nothing was cached, good or bad).
    file.write_all_at(&[orig], flip_at).unwrap();
    assert_bytes_eq(&c.read(bad, 4096).unwrap(), &marker[4096..8192], "restored");
    qemu_io_ok(&u, &[format!("read {bad} 4096")]);

    // A compressed fragment: flip a byte in the middle of its data region.
    let inspect = json(&stdout(&mosaic_ok([
        "fragment".as_ref(),
        "inspect".as_ref(),
        fx.app_frag.as_os_str(),
        "--json".as_ref(),
    ])));
    let region = inspect["regions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["kind"] == "data")
        .unwrap_or_else(|| panic!("no data region: {inspect}"))
        .clone();
    assert_eq!(region["encoding"], "zstd", "app.frag: {region}");
    let at = region["file_offset"].as_u64().unwrap() + region["stored_len"].as_u64().unwrap() / 2;
    let app = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&fx.app_frag)
        .unwrap();
    let mut b = [0u8];
    app.read_exact_at(&mut b, at).unwrap();
    app.write_all_at(&[b[0] ^ 0xff], at).unwrap();
    let mut bad_bytes = 0u64;
    let step = 65536u64;
    for off in (0..image.len() as u64).step_by(step as usize) {
        let len = step.min(image.len() as u64 - off) as usize;
        match c.read(off, len) {
            Ok(got) => assert_bytes_eq(
                &got,
                &image[off as usize..off as usize + len],
                &format!("read {off}+{len} with app.frag tampered"),
            ),
            Err(e) => {
                assert!(e.to_string().contains("EIO"), "read {off}: {e}");
                bad_bytes += len as u64;
            }
        }
    }
    assert!(
        bad_bytes > 0,
        "no read failed with a byte of app.frag's zstd data flipped"
    );
    assert!(
        bad_bytes <= 2 * MIB,
        "{bad_bytes} bytes failed for one flipped byte"
    );
    assert!(
        srv.wait_log("app.frag"),
        "the server's stderr does not name app.frag:\n{}",
        srv.log()
    );
    app.write_all_at(&b, at).unwrap();

    // A fragment truncated under the server: EIO, no crash; restored: served.
    file.set_len(MIB).unwrap();
    let e = c
        .read(bad, 4096)
        .expect_err("read of a block past the truncated end");
    assert!(e.to_string().contains("EIO"), "error: {e}");
    assert_bytes_eq(
        &c.read(0, 65536).unwrap(),
        &image[..65536],
        "metadata with base.frag truncated",
    );
    fs::write(&fx.base_frag, &frag).unwrap();
    assert_bytes_eq(
        &c.read(in_image, 8192).unwrap(),
        &marker[..8192],
        "after restoring base.frag",
    );
    drop(c);
    let log = srv.stop();
    assert!(!log.contains("panicked"), "server stderr:\n{log}");
}

// ---------------------------------------------------------------------------
// 7. kill -9 while writing: acknowledged writes survive

/// Writes 64 KiB slots from `base`; every third with FUA, the others in
/// pairs followed by a FLUSH; prints `ack OFFSET SEED` once a write is
/// acknowledged (its FUA reply, or the FLUSH after it returned).
const WRITER_PY: &str = r#"
import sys, nbd
sock, base, count, rnd = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
def content(off, seed):
    out = bytearray()
    for s in range(0, 65536, 512):
        out += (off + s).to_bytes(8, "little") + bytes([seed]) * 504
    return bytes(out)
h = nbd.NBD()
h.set_export_name("root")
h.connect_unix(sock)
pending = []
for i in range(count):
    off = base + i * 65536
    seed = (rnd * 61 + i) % 251 + 1
    if i % 3 == 0:
        h.pwrite(content(off, seed), off, nbd.CMD_FLAG_FUA)
        print("ack", off, seed, flush=True)
    else:
        h.pwrite(content(off, seed), off)
        pending.append((off, seed))
        if i % 3 == 2:
            h.flush()
            for o, s in pending:
                print("ack", o, s, flush=True)
            pending = []
"#;

fn slot_content(off: u64, seed: u8) -> Vec<u8> {
    let mut out = Vec::with_capacity(65536);
    for s in (0..65536u64).step_by(512) {
        out.extend_from_slice(&(off + s).to_le_bytes());
        out.extend(std::iter::repeat_n(seed, 504));
    }
    out
}

/// The next write a writer script reports acknowledged (its line
/// `ack OFFSET SEED`), or None once it has closed its output.
#[track_caller]
fn acknowledgement(writer: &Running, deadline: Instant) -> Option<(u64, u8)> {
    let line = match writer.stdout.next_line(deadline) {
        Ok(l) => l,
        Err(NoLine::Ended) => return None,
        Err(NoLine::Deadline) => panic!(
            "the writer did not finish within {TOOL_DEADLINE:?}:\n{}",
            writer.transcript()
        ),
    };
    let f: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(f.len(), 3, "writer printed {line:?}");
    Some((f[1].parse().unwrap(), f[2].parse().unwrap()))
}

#[test]
fn kill9_during_writes_keeps_acknowledged_writes() {
    require_python_nbd();
    let fx = Fixture::new();
    let sock = fx.socket("s.sock");
    let count = 45u64;
    let mut acked: Vec<(u64, u8)> = Vec::new();
    for round in 0..5u64 {
        let srv = Server::start(&[&fx.manifest], &sock, &[]);
        // Everything acknowledged before is there.
        let mut c = NbdConn::connect(&sock, "root").unwrap();
        for &(off, seed) in &acked {
            assert_bytes_eq(
                &c.read(off, 65536).unwrap(),
                &slot_content(off, seed),
                &format!("round {round}: acknowledged write at {off}"),
            );
        }
        drop(c);
        let base = MIB + round * count * 65536;
        let mut writer = Running::start(
            &mut python_cmd(
                WRITER_PY,
                [
                    sock.clone().into_os_string(),
                    base.to_string().into(),
                    count.to_string().into(),
                    round.to_string().into(),
                ],
            ),
            false,
        );
        let deadline = Instant::now() + TOOL_DEADLINE;
        let kill_after = 4 + 5 * round as usize;
        let mut this_round = Vec::new();
        let mut srv = Some(srv);
        while let Some(ack) = acknowledgement(&writer, deadline) {
            this_round.push(ack);
            if this_round.len() == kill_after {
                srv.take().unwrap().kill9();
            }
        }
        let status = writer
            .wait(TOOL_DEADLINE)
            .unwrap_or_else(|s| panic!("round {round}: the writer did not exit (killed, {s})"));
        let err = writer.stderr.text();
        assert!(
            srv.is_none(),
            "round {round}: the writer stopped after {} acknowledgements ({status}):\n{err}",
            this_round.len()
        );
        assert!(
            !status.success() && this_round.len() < count as usize,
            "round {round}: the writer finished all its writes before the kill ({status})"
        );
        acked.extend(this_round);
        let info = overlay_info(&fx.manifest);
        assert_eq!(info["in_use"], Value::Bool(false), "after kill -9: {info}");
    }
    // The overlay opens after the last kill, and everything is there.
    let srv = Server::start(&[&fx.manifest], &sock, &[]);
    let mut c = NbdConn::connect(&sock, "root").unwrap();
    for &(off, seed) in &acked {
        assert_bytes_eq(
            &c.read(off, 65536).unwrap(),
            &slot_content(off, seed),
            &format!("final: acknowledged write at {off}"),
        );
    }
    drop(c);
    srv.stop();
    assert!(acked.len() >= 4 + 9 + 14 + 19 + 24);
    let info = overlay_info(&fx.manifest);
    assert!(
        info["data_blocks"].as_u64().unwrap() >= acked.len() as u64 * 16,
        "overlay info: {info}"
    );
}

/// 8 plain writes (acknowledged, never flushed), then `count` writes
/// queued asynchronously; prints `sent`, waits for a line on stdin (the
/// test stops the server meanwhile), then prints `ack OFFSET SEED` for
/// every write that completed without error.
const GRACEFUL_PY: &str = r#"
import sys, nbd
sock, base, count = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
h = nbd.NBD()
h.set_export_name("root")
h.connect_unix(sock)
acked = []
for i in range(8):
    off = base + i * 65536
    h.pwrite(bytes([i + 1]) * 65536, off)
    acked.append((off, i + 1))
cookies = []
for i in range(count):
    off = base + (8 + i) * 65536
    buf = nbd.Buffer.from_bytearray(bytearray([i + 9]) * 65536)
    cookies.append((h.aio_pwrite(buf, off), off, i + 9, buf))
print("sent", flush=True)
sys.stdin.readline()
for c, off, seed, _ in cookies:
    try:
        while not h.aio_command_completed(c):
            h.poll(-1)
        acked.append((off, seed))
    except nbd.Error:
        pass
for off, seed in acked:
    print("ack", off, seed, flush=True)
"#;

#[test]
fn sigterm_keeps_acknowledged_unflushed_writes() {
    require_python_nbd();
    let fx = Fixture::new();
    let sock = fx.socket("s.sock");
    let srv = Server::start(&[&fx.manifest], &sock, &[]);
    let base = 16 * MIB;
    let mut writer = Running::start(
        &mut python_cmd(
            GRACEFUL_PY,
            [
                sock.clone().into_os_string(),
                base.to_string().into(),
                "32".into(),
            ],
        ),
        true,
    );
    let deadline = Instant::now() + TOOL_DEADLINE;
    let first = writer.stdout.next_line(deadline);
    if first.as_deref() != Ok("sent") {
        let status = writer.wait(Duration::ZERO);
        panic!("writer: {first:?} ({status:?}):\n{}", writer.transcript());
    }
    let log = srv.stop();
    assert!(log.contains("stopped"), "server stderr:\n{log}");
    writeln!(writer.stdin.take().unwrap()).unwrap();
    let mut acked: Vec<(u64, u8)> = Vec::new();
    while let Some(ack) = acknowledgement(&writer, deadline) {
        acked.push(ack);
    }
    let status = writer.wait(TOOL_DEADLINE);
    assert!(
        matches!(status, Ok(s) if s.success()),
        "writer ({status:?}):\n{}",
        writer.transcript()
    );
    assert!(acked.len() >= 8, "only {} writes acknowledged", acked.len());
    eprintln!(
        "{} of 32 in-flight writes were acknowledged around SIGTERM",
        acked.len() - 8
    );

    let srv = Server::start(&[&fx.manifest], &sock, &[]);
    let mut c = NbdConn::connect(&sock, "root").unwrap();
    for &(off, seed) in &acked {
        assert_bytes_eq(
            &c.read(off, 65536).unwrap(),
            &[seed; 65536],
            &format!("acknowledged write at {off} after SIGTERM"),
        );
    }
    drop(c);
    srv.stop();
}

#[test]
fn max_connections_is_enforced() {
    let fx = Fixture::new();
    let ro = fx.read_only_manifest("ro");
    let sock = fx.socket("s.sock");
    let Err(f) = Server::try_start(&[&ro], &sock, &["--max-connections", "0"]) else {
        panic!("served with --max-connections 0");
    };
    assert_ne!(f.status.code(), Some(0));
    assert!(!sock.exists());

    let srv = Server::start(&[&ro], &sock, &["--max-connections", "2"]);
    let image = fx.image_bytes();
    let mut a = NbdConn::connect(&sock, "ro").expect("connection 1");
    let mut b = NbdConn::connect(&sock, "ro").expect("connection 2");
    assert!(
        NbdConn::connect(&sock, "ro").is_err(),
        "a third connection was served with --max-connections 2"
    );
    assert_bytes_eq(&a.read(0, 65536).unwrap(), &image[..65536], "connection 1");
    assert_bytes_eq(&b.read(0, 65536).unwrap(), &image[..65536], "connection 2");
    drop(a);
    // The server notices the close on its own time: poll with a deadline.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut c = loop {
        match NbdConn::connect(&sock, "ro") {
            Ok(c) => break c,
            Err(e) if std::time::Instant::now() > deadline => {
                panic!("no connection accepted after one of two closed: {e}")
            }
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(20)),
        }
    };
    assert_bytes_eq(&c.read(0, 65536).unwrap(), &image[..65536], "connection 3");
    drop((b, c));
    srv.stop();
}

#[test]
fn malformed_requests_do_not_take_the_server_down() {
    let fx = Fixture::new();
    let image = fx.image_bytes();
    let size = image.len() as u64;
    let sock = fx.socket("s.sock");
    let srv = Server::start(&[&fx.manifest], &sock, &[]);

    // Garbage instead of the client's handshake: the server hangs up.
    {
        let mut s = std::os::unix::net::UnixStream::connect(&sock).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(30)))
            .unwrap();
        let _ = s.write_all(&nonzero_noise(5, 4096));
        let mut sink = Vec::new();
        let r = std::io::Read::read_to_end(&mut s, &mut sink);
        assert!(
            r.is_ok() || r.as_ref().unwrap_err().kind() == std::io::ErrorKind::ConnectionReset,
            "the server did not hang up on a garbage handshake: {r:?}"
        );
    }

    let mut c = RawConn::connect(&sock, "root").expect("handshake");
    assert_eq!(c.export.size, size);
    // An unknown command: EINVAL, and the connection goes on.
    c.request(0, 42, 1, 0, 4096, &[]).unwrap();
    assert_eq!(c.reply().unwrap(), (22, 1), "unknown command 42");
    // A read crossing the end: an error, no data.
    c.request(0, 0, 2, size - 512, 4096, &[]).unwrap();
    let (err, h) = c.reply().unwrap();
    assert!(
        err == 22 && h == 2,
        "read past the end: error {err}, handle {h}"
    );
    // A write crossing the end: ENOSPC (or EINVAL), nothing written.
    c.request(0, 1, 3, size - 512, 4096, &nonzero_noise(6, 4096))
        .unwrap();
    let (err, h) = c.reply().unwrap();
    assert!(
        (err == 28 || err == 22) && h == 3,
        "write past the end: error {err}, handle {h}"
    );
    assert_bytes_eq(
        &c.read(4, size - 4096, 4096).unwrap(),
        &image[(size - 4096) as usize..],
        "the last block after a refused write",
    );
    // A 4 GiB read: refused or disconnected, never served or fatal.
    c.request(0, 0, 5, 0, u32::MAX, &[]).unwrap();
    if let Ok((err, h)) = c.reply() {
        assert!(err != 0 && h == 5, "a 4 GiB read: error {err}, handle {h}");
    }
    drop(c);

    // A write announcing 1 MiB that sends 100 bytes and hangs up.
    let mut c = RawConn::connect(&sock, "root").expect("handshake");
    c.request(0, 1, 6, MIB, 1 << 20, &nonzero_noise(7, 100))
        .unwrap();
    drop(c);
    // A request with a bad magic.
    let mut c = RawConn::connect(&sock, "root").expect("handshake");
    c.s.write_all(&[0xde; 28]).unwrap();
    let mut sink = Vec::new();
    let r = std::io::Read::read_to_end(&mut c.s, &mut sink);
    assert!(
        r.is_ok() || r.as_ref().unwrap_err().kind() == std::io::ErrorKind::ConnectionReset,
        "the server did not hang up on a request with a bad magic: {r:?}"
    );
    drop(c);

    // Still serving, and the half-sent write did not land.
    let mut n = NbdConn::connect(&sock, "root").expect("a client after the abuse");
    assert_bytes_eq(
        &n.read(MIB, 1 << 20).unwrap(),
        &image[MIB as usize..2 * MIB as usize],
        "the range of the half-sent write",
    );
    drop(n);
    let log = srv.stop();
    assert!(!log.contains("panicked"), "server stderr:\n{log}");
}

// ---------------------------------------------------------------------------
// 8. systemd socket activation

#[test]
fn socket_activation_with_nbdinfo() {
    let fx = Fixture::new();
    let size = fs::metadata(&fx.image).unwrap().len();
    let out = tool_ok(
        "nbdinfo",
        [
            "--json".as_ref(),
            "--".as_ref(),
            "[".as_ref(),
            mosaic_bin().as_os_str(),
            "serve".as_ref(),
            fx.manifest.as_os_str(),
            "]".as_ref(),
        ],
    );
    let info = json(&out);
    assert_eq!(
        info["exports"][0]["export-size"].as_u64(),
        Some(size),
        "{info}"
    );
    assert_eq!(info["exports"][0]["is_read_only"], Value::Bool(false));

    // Two manifests: the default export is the first one's (here: ro).
    let ro = fx.path("ro.toml");
    write_manifest(&ro, "ro", "40MiB", None);
    let ro_img = fx.path("ro.raw");
    export_image(&ro, &ro_img, false);
    let ro_size = fs::metadata(&ro_img).unwrap().len();
    let out = tool_ok(
        "nbdinfo",
        [
            "--json".as_ref(),
            "--".as_ref(),
            "[".as_ref(),
            mosaic_bin().as_os_str(),
            "serve".as_ref(),
            ro.as_os_str(),
            fx.manifest.as_os_str(),
            "]".as_ref(),
        ],
    );
    let info = json(&out);
    assert_eq!(
        info["exports"][0]["export-size"].as_u64(),
        Some(ro_size),
        "{info}"
    );
    assert_eq!(info["exports"][0]["is_read_only"], Value::Bool(true));
    // The overlay lock was released when nbdinfo stopped the server.
    assert_eq!(overlay_info(&fx.manifest)["in_use"], Value::Bool(false));
}

// ---------------------------------------------------------------------------
// 9. Errors

#[test]
fn serve_missing_manifest_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope/volume.toml");
    let sock = dir.path().join("s.sock");
    let Err(f) = Server::try_start(&[&missing], &sock, &[]) else {
        panic!("mosaic serve on a missing manifest started");
    };
    assert!(
        matches!(f.status.code(), Some(1) | Some(2))
            && f.stderr.contains(&*missing.to_string_lossy()),
        "missing manifest ({}):\n{}",
        f.status,
        f.stderr
    );
    assert!(!sock.exists());
}

#[test]
fn serve_usage_errors_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    for args in [
        vec!["serve"],
        vec!["serve", "v.toml", "--listen", "not-an-address"],
        vec!["serve", "v.toml", "--cache-size", "lots"],
    ] {
        let o = mosaic(args.iter().map(|a| {
            if *a == "v.toml" {
                dir.path().join(a).into_os_string()
            } else {
                OsString::from(a)
            }
        }));
        assert_eq!(o.status.code(), Some(2), "mosaic {args:?}:\n{}", text(&o));
    }
}

#[test]
fn serve_refuses_duplicate_export_names() {
    let fx = Fixture::new();
    let other = fx.path("other.toml");
    write_manifest(&other, "root", "40MiB", None);
    let sock = fx.socket("s.sock");
    let Err(f) = Server::try_start(&[&fx.manifest, &other], &sock, &[]) else {
        panic!("two exports named root were served");
    };
    assert!(
        f.status.code() == Some(1) || f.status.code() == Some(2),
        "exit {}",
        f.status
    );
    assert!(
        f.stderr.contains("volume.toml")
            && f.stderr.contains("other.toml")
            && f.stderr.contains("root"),
        "duplicate names: the message should name both manifests and the name:\n{}",
        f.stderr
    );
    assert!(!sock.exists());
    // The refused start did not keep the overlay locked.
    assert_ne!(overlay_info(&fx.manifest)["in_use"], Value::Bool(true));
}

#[test]
fn serve_socket_in_missing_directory_is_a_clear_error() {
    let fx = Fixture::new();
    let sock = fx.path("no/such/dir/s.sock");
    let Err(f) = Server::try_start(&[&fx.manifest], &sock, &[]) else {
        panic!("served on a socket in a missing directory");
    };
    assert_eq!(f.status.code(), Some(2), "environment error:\n{}", f.stderr);
    assert!(
        f.stderr.contains(&*sock.to_string_lossy()) || f.stderr.contains("no/such/dir"),
        "the message should name the socket path:\n{}",
        f.stderr
    );
    assert!(
        f.stderr
            .to_lowercase()
            .contains("no such file or directory"),
        "the message should say why:\n{}",
        f.stderr
    );
    assert!(!f.stderr.contains("panicked"), "{}", f.stderr);
}

#[test]
fn stale_socket_replaced_live_one_refused_sigterm_removes_it() {
    let fx = Fixture::new();
    let ro = fx.read_only_manifest("ro");
    let sock = fx.socket("s.sock");
    // A stale socket file: bound, then its listener closed.
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    assert!(fs::symlink_metadata(&sock).unwrap().file_type().is_socket());
    let srv = Server::start(&[&ro], &sock, &[]);
    let info = json(&tool_ok("nbdinfo", ["--json", &uri(&sock, "ro")]));
    assert_eq!(info["exports"][0]["is_read_only"], Value::Bool(true));

    // A live server's socket is not taken over.
    let Err(f) = Server::try_start(&[&ro], &sock, &[]) else {
        panic!("a second server took over a live socket");
    };
    assert_ne!(f.status.code(), Some(0));
    assert!(
        f.stderr.contains(&*sock.to_string_lossy()),
        "the refusal should name the socket:\n{}",
        f.stderr
    );
    // ... and the first one still serves.
    tool_ok("nbdinfo", [uri(&sock, "ro")]);

    let (status, log) = srv.stop_with("TERM");
    assert_eq!(status.code(), Some(0), "SIGTERM: {status}\n{log}");
    assert!(!sock.exists(), "SIGTERM left {}", sock.display());

    // A regular file where the socket should go is left alone.
    fs::write(&sock, b"not a socket").unwrap();
    let Err(f) = Server::try_start(&[&ro], &sock, &[]) else {
        panic!("served over a regular file");
    };
    assert_ne!(f.status.code(), Some(0));
    assert_eq!(fs::read(&sock).unwrap(), b"not a socket");
}

#[test]
fn overlay_of_another_volume_is_refused_until_discarded() {
    let fx = Fixture::new();
    let sock = fx.socket("s.sock");
    let srv = Server::start(&[&fx.manifest], &sock, &[]);
    qemu_io_ok(&uri(&sock, "root"), &["write -P 0x77 0 8192".to_string()]);
    srv.stop();
    let before = overlay_info(&fx.manifest);
    let old_id = before["identity"].as_str().expect("identity").to_owned();

    // Another volume: more free space.
    write_manifest(&fx.manifest, "root", "48MiB", Some("v.overlay"));
    let info = overlay_info(&fx.manifest);
    assert_eq!(info["matches_volume"], Value::Bool(false), "{info}");
    let new_id = info["volume_identity"]
        .as_str()
        .expect("volume_identity")
        .to_owned();
    assert_ne!(old_id, new_id);
    let Err(f) = Server::try_start(&[&fx.manifest], &sock, &[]) else {
        panic!("served an overlay made for another volume");
    };
    assert_eq!(f.status.code(), Some(1), "invalid input:\n{}", f.stderr);
    assert!(
        f.stderr.contains(&old_id[..16])
            && f.stderr.contains(&new_id[..16])
            && f.stderr.contains("mosaic overlay reset"),
        "the refusal should name both identities ({old_id}, {new_id}) and `mosaic overlay reset`:\n{}",
        f.stderr
    );
    assert!(!sock.exists());
    // The refused overlay is untouched.
    assert_eq!(
        overlay_info(&fx.manifest)["identity"].as_str(),
        Some(&*old_id)
    );

    // --discard-overlay starts over: the new volume's base bytes.
    let new_image = fx.path("new.raw");
    export_image(&fx.manifest, &new_image, false);
    let srv = Server::start(&[&fx.manifest], &sock, &["--discard-overlay"]);
    assert_same_image(&new_image, &uri(&sock, "root"));
    srv.stop();
    let info = overlay_info(&fx.manifest);
    assert_eq!(info["matches_volume"], Value::Bool(true), "{info}");
    assert_eq!(info["data_blocks"].as_u64(), Some(0), "{info}");
}

// ---------------------------------------------------------------------------
// 10. `mosaic demo` serves

#[test]
fn demo_serves_until_sigint() {
    let dir = tempfile::Builder::new()
        .prefix("mosaic-demo-")
        .tempdir()
        .unwrap();
    let d = dir.path().join("demo");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let srv = Server::spawn(
        mosaic_cmd([
            "demo".as_ref(),
            "--dir".as_ref(),
            d.as_os_str(),
            "--listen".as_ref(),
            listen.as_ref(),
        ]),
        2,
    )
    .unwrap_or_else(|f| panic!("mosaic demo did not serve ({}):\n{}", f.status, f.stderr));
    let sock = fs::canonicalize(&d).unwrap().join("nbd.sock");
    assert!(
        srv.addresses.contains(&format!("unix:{}", sock.display()))
            && srv.addresses.contains(&format!("tcp:{listen}")),
        "demo listens on {:?}",
        srv.addresses
    );
    let info = json(&tool_ok("nbdinfo", ["--json", &uri(&sock, "root")]));
    let size = fs::metadata(d.join("volume.img")).unwrap().len();
    assert_eq!(
        info["exports"][0]["export-size"].as_u64(),
        Some(size),
        "{info}"
    );
    let tcp = json(&tool_ok(
        "nbdinfo",
        ["--json", &format!("nbd://{listen}/root")],
    ));
    assert_eq!(
        tcp["exports"][0]["export-size"].as_u64(),
        Some(size),
        "{tcp}"
    );
    assert_same_image(&d.join("volume.img"), &uri(&sock, "root"));

    // Every qemu-img and qemu-io line of the attach hints it prints once
    // listening (they end with the line saying how to stop) works as
    // printed: exit 0, and the compare finds the images identical.
    let printed = srv.wait_stdout("Ctrl-C stops the server");
    let hints: Vec<&str> = printed
        .iter()
        .skip_while(|l| !l.starts_with("serving export"))
        .map(|l| l.trim())
        .filter(|l| l.starts_with("qemu-img ") || l.starts_with("qemu-io "))
        .collect();
    assert!(
        hints.iter().any(|l| l.starts_with("qemu-img compare "))
            && hints.iter().any(|l| l.starts_with("qemu-io ")),
        "the demo's attach hints lack a qemu-img compare or a qemu-io line:\n{}",
        printed.join("\n")
    );
    for line in hints {
        let o = tool("sh", ["-c", line]);
        assert!(
            o.status.success(),
            "the demo's hint `{line}` failed ({}):\n{}",
            o.status,
            text(&o)
        );
        if line.starts_with("qemu-img compare ") {
            assert!(
                stdout(&o).contains("Images are identical"),
                "`{line}`:\n{}",
                text(&o)
            );
        }
    }

    let (status, log) = srv.stop_with("INT");
    assert_eq!(status.code(), Some(0), "demo on SIGINT: {status}\n{log}");
    assert!(!sock.exists(), "SIGINT left {}", sock.display());
    // The port is free again.
    std::net::TcpListener::bind(&listen).expect("the demo's port is released");
}

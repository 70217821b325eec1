//! `mosaic serve` end to end with real NBD clients: qemu-img, qemu-io,
//! nbdinfo, nbdcopy, libnbd (Debian's python), and the `nbd` crate as an
//! independent client. Covers: the image served is the exported image;
//! writes land in the overlay, persist across restarts, and are locked
//! while served; listing, block status and copies; multi-conn. Faults,
//! crashes, signals and errors are in `serve_faults.rs`.
//!
//! A missing tool fails the test naming its Debian package. Every test has
//! its own directory and socket; no fixed TCP port is used.

mod kit;

use kit::image::export_image;
use kit::serve::*;
use kit::server::*;
use kit::*;
use serde_json::Value;
use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::FileTypeExt;

#[test]
fn served_volume_equals_exported_image() {
    let fx = Fixture::new();
    let sock = fx.socket("s.sock");
    assert!(!sock.exists());
    let listen = format!("127.0.0.1:{}", free_port());
    let srv = Server::start(&[&fx.manifest], &sock, &["--listen", &listen]);
    assert_eq!(
        srv.addresses,
        vec![format!("unix:{}", sock.display()), format!("tcp:{listen}")],
        "listening lines"
    );
    assert!(
        fs::symlink_metadata(&sock)
            .map(|m| m.file_type().is_socket())
            .unwrap_or(false),
        "{} is not a socket once `listening on` was printed",
        sock.display()
    );
    assert_same_image(&fx.image, &uri(&sock, "root"));
    // The export named "" is the first manifest's.
    assert_same_image(&fx.image, &uri(&sock, ""));
    // Over TCP too.
    assert_same_image(&fx.image, &format!("nbd://{listen}/root"));
    // An unknown export name is refused, so the comparisons mean something.
    let o = qemu_img_compare(&fx.image, &uri(&sock, "nosuch"));
    assert!(
        !o.status.success(),
        "qemu-img compare against export `nosuch` succeeded:\n{}",
        text(&o)
    );
    let log = srv.stop();
    assert!(!log.contains("panicked"), "server stderr:\n{log}");
}

// ---------------------------------------------------------------------------
// 2. Writes: overlay, persistence, lock, export --with-overlay, reset

#[test]
fn overlay_writes_persist_are_locked_and_reset() {
    let fx = Fixture::new();
    let base = fx.image_bytes();
    let size = base.len() as u64;
    let libfoo = find_block(&base, &libfoo_bytes()[..4096]).expect("libfoo in the image");
    let libbar = find_block(&base, &libbar_bytes()[..4096]).expect("libbar in the image");
    let zero_at = libfoo + 65536;
    let zero_len = 131072u64;
    let discard_at = libbar;
    let discard_len = 65536u64;
    for (at, len) in [(zero_at, zero_len), (discard_at, discard_len)] {
        assert!(
            base[at as usize..(at + len) as usize]
                .iter()
                .any(|&b| b != 0),
            "base bytes at {at} are zero: the test would not see a change"
        );
    }
    // The volume as a client must see it after the writes below.
    let mut want = base.clone();
    want[4096..4096 + 65536].fill(0xab);
    want[1000..4000].fill(0x11);
    want[zero_at as usize..(zero_at + zero_len) as usize].fill(0);
    want[discard_at as usize..(discard_at + discard_len) as usize].fill(0);
    assert_ne!(want, base);

    let sock = fx.socket("s.sock");
    let u = uri(&sock, "root");
    let srv = Server::start(&[&fx.manifest], &sock, &[]);
    let reads = vec![
        "read -P 0xab 4096 65536".to_string(),
        "read -P 0x11 1000 3000".to_string(),
        format!("read -P 0 {zero_at} {zero_len}"),
        format!("read -P 0 {discard_at} {discard_len}"),
    ];
    let mut cmds = vec![
        "write -P 0xab 4096 65536".to_string(),
        "write -P 0x11 1000 3000".to_string(),
        format!("write -z {zero_at} {zero_len}"),
        format!("discard {discard_at} {discard_len}"),
        "flush".to_string(),
    ];
    cmds.extend(reads.iter().cloned());
    qemu_io_ok(&u, &cmds);
    // Byte for byte, unaligned edges included.
    let mut c = NbdConn::connect(&sock, "root").expect("nbd crate connects");
    assert_bytes_eq(
        &c.read(0, size as usize).unwrap(),
        &want,
        "volume after the writes",
    );
    drop(c);
    // Block status follows the overlay: what it calls zero is zero, and
    // the discarded blocks are zero.
    check_map(&u, &want);
    let (_, _, ty) = map_extent(&u, discard_at);
    assert!(
        ty & 2 != 0,
        "the discarded range {discard_at}+{discard_len} is not reported as zero (type {ty})"
    );
    let (_, _, ty) = map_extent(&u, 8192);
    assert!(
        ty & 2 == 0,
        "written blocks at 8192 are reported as zero (type {ty})"
    );

    // While served: the overlay is locked.
    let info = overlay_info(&fx.manifest);
    assert_eq!(info["in_use"], Value::Bool(true), "overlay info: {info}");
    let o = mosaic([
        "overlay".as_ref(),
        "reset".as_ref(),
        fx.manifest.as_os_str(),
    ]);
    assert_in_use(&o, "overlay reset while served");
    let held = fx.path("held.raw");
    let o = mosaic([
        "volume".as_ref(),
        "export".as_ref(),
        fx.manifest.as_os_str(),
        "-o".as_ref(),
        held.as_os_str(),
        "--with-overlay".as_ref(),
    ]);
    assert_in_use(&o, "volume export --with-overlay while served");
    assert!(!held.exists(), "a refused export left {}", held.display());
    let sock2 = fx.socket("s2.sock");
    match Server::try_start(&[&fx.manifest], &sock2, &[]) {
        Ok(s) => {
            let log = s.stop();
            panic!("a second server on the same overlay started:\n{log}");
        }
        Err(f) => assert!(
            f.stderr.contains("in use") && f.status.code() == Some(2),
            "second server: expected exit 2 and a refusal saying \"in use\" ({}):\n{}",
            f.status,
            f.stderr
        ),
    }
    assert!(
        !sock2.exists(),
        "the refused server left {}",
        sock2.display()
    );

    srv.stop();
    assert!(!sock.exists(), "SIGTERM left the socket file");
    let info = overlay_info(&fx.manifest);
    assert_eq!(info["in_use"], Value::Bool(false), "overlay info: {info}");
    assert_eq!(
        info["matches_volume"],
        Value::Bool(true),
        "overlay info: {info}"
    );
    let data_blocks = info["data_blocks"].as_u64().expect("data_blocks");
    assert!(
        data_blocks >= 17,
        "overlay info: {data_blocks} data blocks after writing 17 blocks: {info}"
    );

    // Persistence across a restart.
    let srv = Server::start(&[&fx.manifest], &sock, &[]);
    qemu_io_ok(&u, &reads);
    let mut c = NbdConn::connect(&sock, "root").expect("nbd crate connects");
    assert_bytes_eq(
        &c.read(0, size as usize).unwrap(),
        &want,
        "volume after a restart",
    );
    drop(c);
    srv.stop();

    // export --with-overlay: the base image changed exactly where written.
    let with = fx.path("with.raw");
    export_image(&fx.manifest, &with, true);
    assert_bytes_eq(&fs::read(&with).unwrap(), &want, "export --with-overlay");
    // Without --with-overlay: still the base.
    let plain = fx.path("plain.raw");
    export_image(&fx.manifest, &plain, false);
    assert_bytes_eq(&fs::read(&plain).unwrap(), &base, "export without overlay");

    // Reset: the base bytes again.
    mosaic_ok([
        "overlay".as_ref(),
        "reset".as_ref(),
        fx.manifest.as_os_str(),
    ]);
    let info = overlay_info(&fx.manifest);
    assert_eq!(info["data_blocks"].as_u64(), Some(0), "after reset: {info}");
    let srv = Server::start(&[&fx.manifest], &sock, &[]);
    assert_same_image(&fx.image, &u);
    srv.stop();
}

// ---------------------------------------------------------------------------
// 3. nbdinfo (list, flags, size, map) and nbdcopy

#[test]
fn nbdinfo_lists_maps_and_nbdcopy_copies() {
    let fx = Fixture::new();
    // A read-only export of another size (more free space).
    let ro = fx.path("ro.toml");
    write_manifest(&ro, "ro", "40MiB", None);
    let ro_image = fx.path("ro.raw");
    export_image(&ro, &ro_image, false);
    let root_size = fs::metadata(&fx.image).unwrap().len();
    let ro_size = fs::metadata(&ro_image).unwrap().len();
    assert_ne!(root_size, ro_size);

    let sock = fx.socket("s.sock");
    let srv = Server::start(&[&fx.manifest, &ro], &sock, &[]);

    let list = json(&tool_ok("nbdinfo", ["--list", "--json", &uri(&sock, "")]));
    let exports = list["exports"].as_array().expect("exports");
    let by_name: BTreeMap<&str, &Value> = exports
        .iter()
        .map(|e| (e["export-name"].as_str().unwrap(), e))
        .collect();
    assert!(
        by_name.contains_key("root") && by_name.contains_key("ro"),
        "nbdinfo --list shows {:?}",
        by_name.keys().collect::<Vec<_>>()
    );
    assert_eq!(by_name["root"]["is_read_only"], Value::Bool(false));
    assert_eq!(by_name["ro"]["is_read_only"], Value::Bool(true));
    assert_eq!(by_name["root"]["export-size"].as_u64(), Some(root_size));
    assert_eq!(by_name["ro"]["export-size"].as_u64(), Some(ro_size));

    for (name, size, read_only) in [
        ("root", root_size, false),
        ("ro", ro_size, true),
        ("", root_size, false),
    ] {
        let info = json(&tool_ok("nbdinfo", ["--json", &uri(&sock, name)]));
        let e = &info["exports"][0];
        assert_eq!(e["export-size"].as_u64(), Some(size), "{name:?}: {info}");
        assert_eq!(
            e["is_read_only"],
            Value::Bool(read_only),
            "{name:?}: {info}"
        );
        if !read_only {
            assert_eq!(e["can_flush"], Value::Bool(true), "{name:?}: {info}");
        }
    }

    // Block status: zero ranges read as zeros, and the free space is there.
    let (zero, data) = check_map(&uri(&sock, "root"), &fx.image_bytes());
    assert!(
        zero >= 16 * MIB,
        "map shows only {zero} zero bytes in a volume with 32 MiB free"
    );
    assert!(data >= 4 * MIB, "map shows only {data} data bytes");

    // nbdcopy of the default export.
    let copy = fx.path("copy.raw");
    tool_ok("nbdcopy", [uri(&sock, ""), copy.display().to_string()]);
    tool_ok("cmp", [&fx.image, &copy]);
    let copy = fx.path("ro-copy.raw");
    tool_ok("nbdcopy", [uri(&sock, "ro"), copy.display().to_string()]);
    tool_ok("cmp", [&ro_image, &copy]);
    srv.stop();
}

// ---------------------------------------------------------------------------
// 4. The `nbd` crate as an independent client

#[test]
fn nbd_crate_client_reads_and_writes() {
    let fx = Fixture::new();
    let image = fx.image_bytes();
    let ro = fx.read_only_manifest("ro");
    let sock = fx.socket("s.sock");
    let srv = Server::start(&[&fx.manifest, &ro], &sock, &[]);

    let mut c = NbdConn::connect(&sock, "root").expect("handshake with export root");
    assert_eq!(c.export.size, image.len() as u64);
    assert!(!c.export.readonly, "root is writable");
    assert!(c.export.send_flush, "root accepts FLUSH");
    assert_bytes_eq(&c.read(0, image.len()).unwrap(), &image, "whole volume");
    for (off, len) in [(1000u64, 3000usize), (4095, 2), (123_457, 70_001)] {
        let got = c.read(off, len).unwrap();
        assert_bytes_eq(
            &got,
            &image[off as usize..off as usize + len],
            &format!("read {off}+{len}"),
        );
    }
    let marker = find_block(&image, &marker_bytes()[..4096]).expect("marker in the image");
    let data = nonzero_noise(7, 3 * 4096);
    c.write(marker, &data).unwrap();
    let odd = nonzero_noise(8, 513);
    c.write(marker + 100_007, &odd).unwrap();
    c.flush().unwrap();
    assert_bytes_eq(
        &c.read(marker, data.len()).unwrap(),
        &data,
        "written blocks",
    );
    assert_bytes_eq(&c.read(marker + 100_007, 513).unwrap(), &odd, "odd write");
    assert_bytes_eq(
        &c.read(marker + 100_007 + 513, 1000).unwrap(),
        &image[(marker + 100_007 + 513) as usize..(marker + 100_007 + 1513) as usize],
        "after the odd write",
    );
    // Partial writes over zstd-compressed file data (read-modify-write of
    // a verified, decompressed block), one across a block boundary.
    let text = line_text(22, 1_500_001);
    let t = find_block(&image, &text[..8192]).expect("text.txt in the image");
    let mut want = image[t as usize..(t + 16384) as usize].to_vec();
    let a = nonzero_noise(9, 513);
    let b = nonzero_noise(10, 300);
    c.write(t + 5003, &a).unwrap();
    c.write(t + 8192 - 100, &b).unwrap();
    want[5003..5003 + 513].copy_from_slice(&a);
    want[8092..8092 + 300].copy_from_slice(&b);
    assert_bytes_eq(
        &c.read(t, 16384).unwrap(),
        &want,
        "partial writes over compressed data",
    );
    // Another connection, by the default name, sees the writes.
    let mut d = NbdConn::connect(&sock, "").expect("handshake with export \"\"");
    assert_bytes_eq(&d.read(marker, data.len()).unwrap(), &data, "conn 2");

    // The read-only export: flag, content, and a refused write.
    let mut r = NbdConn::connect(&sock, "ro").expect("handshake with export ro");
    assert!(r.export.readonly, "ro is read-only");
    assert_bytes_eq(
        &r.read(marker, 4096).unwrap(),
        &image[marker as usize..][..4096],
        "ro",
    );
    let e = r.write(marker, &data[..4096]).expect_err("a write to ro");
    assert_eq!(
        e.kind(),
        std::io::ErrorKind::PermissionDenied,
        "write to ro: {e}"
    );
    assert_bytes_eq(
        &r.read(marker, 4096).unwrap(),
        &image[marker as usize..][..4096],
        "ro after",
    );

    // An unknown export: the handshake fails.
    assert!(
        NbdConn::connect(&sock, "nosuch").is_err(),
        "handshake with an unknown export succeeded"
    );
    drop((c, d, r));
    srv.stop();
}

// ---------------------------------------------------------------------------
// 5. Multi-conn and read-only through libnbd

const MULTI_CONN_PY: &str = r#"
import errno, sys, nbd
sock = sys.argv[2]
off = int(sys.argv[3])
def eno(e):
    # libnbd's python gives the errno's name ("EPERM")
    return e.errno if isinstance(e.errno, int) else getattr(errno, str(e.errno), None)
hs = []
for i in range(3):
    h = nbd.NBD()
    h.set_export_name("root")
    h.connect_unix(sock)
    hs.append(h)
assert hs[0].can_multi_conn(), "root does not advertise multi-conn"
assert hs[0].can_flush(), "root does not advertise flush"
assert hs[0].can_fua(), "root does not advertise FUA"
assert not hs[0].is_read_only()
data = bytes((i * 7 + 3) & 0xff for i in range(65536 + 123))
hs[0].pwrite(data, off)
hs[1].flush()
got = hs[2].pread(len(data), off)
assert got == data, "connection 3 does not see connection 1's write"
hs[2].pwrite(b"\x5a" * 4096, off + 4096, nbd.CMD_FLAG_FUA)
assert hs[0].pread(4096, off + 4096) == b"\x5a" * 4096

ro = nbd.NBD()
ro.set_export_name("ro")
ro.connect_unix(sock)
assert ro.is_read_only(), "ro is not read-only"
before = ro.pread(4096, off)
try:
    ro.pwrite(b"x" * 4096, off)
    raise SystemExit("libnbd let a write to a read-only export through")
except nbd.Error as e:
    assert eno(e) == errno.EPERM, ("client-side", e.errno, str(e))
# Past libnbd's own check: the server must refuse.
ro.set_strict_mode(0)
for what, f in [
    ("write", lambda: ro.pwrite(b"x" * 4096, off)),
    ("zero", lambda: ro.zero(4096, off)),
    ("trim", lambda: ro.trim(4096, off)),
]:
    try:
        f()
        raise SystemExit("the server accepted a %s on a read-only export" % what)
    except nbd.Error as e:
        assert eno(e) == errno.EPERM, (what, e.errno, str(e))
assert ro.pread(4096, off) == before, "the read-only export changed"
print("ok")
"#;

#[test]
fn libnbd_multi_conn_and_read_only() {
    require_python_nbd();
    let fx = Fixture::new();
    let ro = fx.read_only_manifest("ro");
    let sock = fx.socket("s.sock");
    let srv = Server::start(&[&fx.manifest, &ro], &sock, &[]);
    let off = 8 * MIB + 512;
    let o = python(MULTI_CONN_PY, [sock.display().to_string(), off.to_string()]);
    assert!(
        o.status.success() && stdout(&o).trim() == "ok",
        "libnbd multi-conn script failed ({}):\n{}\nserver stderr:\n{}",
        o.status,
        text(&o),
        srv.log()
    );
    srv.stop();
}

// ---------------------------------------------------------------------------
// 6. A fragment tampered with while served

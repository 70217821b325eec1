//! Virtual machines booting from merged fragments served by `mosaic serve`:
//! the recipe in `vm-images/` (Debian's kernel, a busybox initramfs, a root
//! volume merged from three signed fragments: base, modules, app), qemu's
//! own NBD client, TCG. Proves:
//!
//! 1. the guest boots to its init on the merged volume and reports, on its
//!    serial console, evidence from every fragment;
//! 2. what the guest writes persists across a server restart and a second
//!    boot, and on the host `volume export --with-overlay` shows it to
//!    debugfs while `e2fsck -fn` finds the filesystem clean;
//! 3. two guests boot at once from two exports over the same fragment files
//!    served by one process, each with its own overlay: each sees only its
//!    own writes, the host copies a volume meanwhile with nbdcopy, and the
//!    process has each fragment file open once;
//! 4. a tampered fragment byte makes the guest's read of that file fail
//!    with an I/O error (never wrong bytes) and the server keeps serving.
//!
//! Guests are synchronised on console marker lines with deadlines. A
//! missing tool fails the test naming its Debian package. The tests take
//! turns (one lock): each boots its guests on the machine's two cores.

mod kit;

use kit::image::{assert_fsck_clean, debugfs, debugfs_text, export_image};
use kit::server::*;
use kit::vm::*;
use kit::*;
use std::fs;
use std::path::Path;
use std::sync::Mutex;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn turn() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// The lines every boot prints: one per fragment at least, from the base
/// init, the modules fragment's boot hook and the app fragment's report.
#[track_caller]
fn assert_fragment_evidence(vm: &mut Vm) {
    vm.wait_for("mosaic-initramfs: mounted /dev/vda (ext4, rw)");
    let base = vm.wait_for("mosaic-vm: base: ");
    assert!(
        base.contains("base 1.0") && base.contains("BusyBox"),
        "base line: {base}"
    );
    let root = vm.wait_for("mosaic-vm: root: ");
    assert!(
        root.ends_with("root: /dev/vda ext4 rw"),
        "root line: {root}"
    );
    let modules = vm.wait_for("mosaic-vm: modules: ");
    assert!(
        modules.contains("loaded: loop overlay squashfs"),
        "the modules fragment's hook did not load its modules: {modules}"
    );
    for f in FRAGMENTS {
        vm.wait_for(&format!("mosaic-vm: app: fragment {f}: {f} "));
    }
    let seen = vm.wait_for("mosaic-vm: app: fragments seen: ");
    assert!(
        seen.trim_end()
            .ends_with("fragments seen: app base modules"),
        "{seen}"
    );
    let payload = vm.wait_for("mosaic-vm: app: payload ");
    assert!(payload.contains("payload ok"), "{payload}");
    vm.wait_for("mosaic-vm: booted");
}

/// The names in a directory of an image, by debugfs (`ls -p`).
fn image_ls(image: &Path, dir: &str) -> Vec<String> {
    let out = debugfs_text(image, &format!("ls -p {dir}"));
    let mut names: Vec<String> = out
        .lines()
        .filter_map(|l| l.split('/').nth(5).map(str::to_owned))
        .filter(|n| !n.is_empty() && n != "." && n != "..")
        .collect();
    names.sort();
    names
}

/// The guest's writes of `write:TAG`, read back from an image on the host.
#[track_caller]
fn assert_guest_files_in_image(image: &Path, tag: &str) {
    let txt = debugfs(image, &format!("cat /var/lib/guest/{tag}.txt"));
    assert_eq!(
        String::from_utf8_lossy(&txt),
        format!("written by guest {tag}\n"),
        "{}: /var/lib/guest/{tag}.txt",
        image.display()
    );
    let data = debugfs(image, &format!("cat /var/lib/guest/{tag}.dir/data.bin"));
    assert!(
        data == guest_data(tag),
        "{}: /var/lib/guest/{tag}.dir/data.bin differs from what the guest wrote ({} bytes read)",
        image.display(),
        data.len()
    );
}

/// 1 and 2: boot, evidence from every fragment, write, power off; restart
/// the server, boot again and see the writes; then the host sees them too
/// and the filesystem is clean.
#[test]
fn guest_boots_from_fragments_and_its_writes_persist() {
    let _turn = turn();
    let fx = vm_fixture();
    let dir = tempdir();
    let manifest = vm_manifest(dir.path(), "root", &fx.fragments(), &fx.trust(), true);
    let socket = dir.path().join("nbd.sock");

    // First boot: evidence, then write a file and a directory, sync, power off.
    let server = Server::start(&[&manifest], &socket, &[]);
    let mut vm = Vm::boot("first boot", fx, &server, "root", "list,write:first,list");
    assert_fragment_evidence(&mut vm);
    let booted = vm.elapsed();
    let none = vm.wait_for("mosaic-vm: guest files: ");
    assert!(none.ends_with("(none)"), "a fresh overlay: {none}");
    let wrote = vm.wait_for("mosaic-vm: wrote first: ");
    let sha = wrote.rsplit(' ').next().unwrap().to_owned();
    vm.wait_for("mosaic-vm: guest files: first.dir first.txt");
    vm.wait_for("mosaic-vm: powering off");
    let console = vm.wait_exit();
    assert!(
        !console.iter().any(|l| l.contains("could not remount")),
        "{console:#?}"
    );
    eprintln!(
        "first boot: booted {:.1} s, powered off {:.1} s after qemu started",
        booted.as_secs_f64(),
        vm.elapsed().as_secs_f64()
    );
    server.stop();

    // mosaic restarted; the second boot sees the writes.
    let server = Server::start(&[&manifest], &socket, &[]);
    let mut vm = Vm::boot("second boot", fx, &server, "root", "list");
    assert_fragment_evidence(&mut vm);
    vm.wait_for("mosaic-vm: guest files: first.dir first.txt");
    vm.wait_for("mosaic-vm: guest first.txt: written by guest first");
    vm.wait_for(&format!("mosaic-vm: guest first.dir/data.bin sha256 {sha}"));
    vm.wait_for("mosaic-vm: powering off");
    vm.wait_exit();
    server.stop();

    // On the host, server stopped: the image with the overlay.
    let image = dir.path().join("with-overlay.raw");
    export_image(&manifest, &image, true);
    assert_eq!(
        image_ls(&image, "/var/lib/guest"),
        ["first.dir", "first.txt"]
    );
    assert_guest_files_in_image(&image, "first");
    let stat = debugfs_text(&image, "stat /var/lib/guest/first.dir");
    assert!(stat.contains("Type: directory"), "{stat}");
    assert_fsck_clean(&image);
}

/// 3: two guests at once, two exports over the same fragment files, one
/// server process; the host reads meanwhile.
#[test]
fn two_guests_share_fragments_with_separate_overlays() {
    let _turn = turn();
    let fx = vm_fixture();
    let dir = tempdir();
    let a = vm_manifest(dir.path(), "a", &fx.fragments(), &fx.trust(), true);
    let b = vm_manifest(dir.path(), "b", &fx.fragments(), &fx.trust(), true);
    let socket = dir.path().join("nbd.sock");
    let server = Server::start(&[&a, &b], &socket, &[]);

    let steps = |tag: &str| format!("write:{tag},list,hold,list");
    let mut va = Vm::boot("guest a", fx, &server, "a", &steps("a"));
    let mut vb = Vm::boot("guest b", fx, &server, "b", &steps("b"));
    for vm in [&mut va, &mut vb] {
        assert_fragment_evidence(vm);
        vm.wait_for("mosaic-vm: holding");
    }
    // Both guests are up, holding, with their writes synced: each lists
    // only its own.
    for (vm, tag) in [(&mut va, "a"), (&mut vb, "b")] {
        let files = vm.wait_for("mosaic-vm: guest files: ");
        assert_eq!(
            files.trim_end(),
            format!("mosaic-vm: guest files: {tag}.dir {tag}.txt"),
            "guest {tag}"
        );
    }

    // Meanwhile the host copies export a with nbdcopy, and the copy holds
    // the app fragment's payload byte for byte.
    let copy = dir.path().join("a-while-running.raw");
    tool_ok("nbdcopy", [server.uri("a").as_ref(), copy.as_os_str()]);
    let payload = fx.payload();
    assert!(
        debugfs(&copy, "cat /usr/share/mosaic-app/payload.txt") == payload,
        "the payload read from the copy of export a differs from the app tree's"
    );

    // One server process, each fragment file open once for both exports.
    let open = open_fragments(server.pid());
    let want: Vec<(std::path::PathBuf, usize)> = {
        let mut v: Vec<_> = fx.fragments().into_iter().map(|f| (f, 1)).collect();
        v.sort();
        v
    };
    assert_eq!(
        open, want,
        "fragment files open in mosaic serve (path, times)"
    );

    for vm in [&mut va, &mut vb] {
        vm.send_line("");
        vm.wait_for("mosaic-vm: released");
        vm.wait_for("mosaic-vm: powering off");
    }
    va.wait_exit();
    vb.wait_exit();
    assert!(
        !server.log().contains("ERROR"),
        "the server logged errors:\n{}",
        server.log()
    );
    server.stop();

    // Each overlay holds its own guest's writes and not the other's.
    for (manifest, tag, other) in [(&a, "a", "b"), (&b, "b", "a")] {
        let image = dir.path().join(format!("{tag}.raw"));
        export_image(manifest, &image, true);
        assert_eq!(
            image_ls(&image, "/var/lib/guest"),
            [format!("{tag}.dir"), format!("{tag}.txt")],
            "export {tag} (no {other}.* expected)"
        );
        assert_guest_files_in_image(&image, tag);
        assert_fsck_clean(&image);
    }
}

/// 4: one byte of the payload (read by the app's report at every boot)
/// flipped in a copy of the app fragment: the guest's read fails with an
/// I/O error, the server logs it and keeps serving.
#[test]
fn tampered_fragment_fails_the_guests_read() {
    let _turn = turn();
    let fx = vm_fixture();
    let dir = tempdir();
    let mut fragments = Vec::new();
    for name in FRAGMENTS {
        let copy = dir.path().join(format!("{name}.frag"));
        fs::copy(fx.fragment(name), &copy).unwrap();
        fragments.push(copy);
    }
    // The payload is stored verbatim (uncompressed, 4 KiB-aligned) in the
    // app fragment's data region: flip a byte in its second block.
    let payload = fx.payload();
    let app = dir.path().join("app.frag");
    let mut bytes = fs::read(&app).unwrap();
    let at = bytes
        .windows(4096)
        .position(|w| w == &payload[..4096])
        .expect("the payload's first block is in app.frag");
    bytes[at + 5000] ^= 0x01;
    fs::write(&app, &bytes).unwrap();

    let manifest = vm_manifest(dir.path(), "root", &fragments, &fx.trust(), true);
    let socket = dir.path().join("nbd.sock");
    let mut server = Server::start(&[&manifest], &socket, &[]);
    let mut vm = Vm::boot("tampered", fx, &server, "root", "list");
    let line = vm.wait_for("mosaic-vm: app: payload ");
    assert_eq!(line, "mosaic-vm: app: payload read failed");
    let console = vm.console();
    assert!(
        console
            .iter()
            .any(|l| l.contains("payload.txt") && l.contains("Input/output error")),
        "no I/O error reading the payload on the console:\n{}",
        console.join("\n")
    );
    // The rest of the boot works: other files read fine.
    vm.wait_for("mosaic-vm: modules: ");
    vm.wait_for("mosaic-vm: booted");
    vm.wait_for("mosaic-vm: powering off");
    let console = vm.wait_exit();
    assert!(
        !console
            .iter()
            .any(|l| l.contains("payload ok") || l.contains("MISMATCH")),
        "the guest read tampered bytes:\n{}",
        console.join("\n")
    );

    // The server names the block, and still serves.
    let log = server.log();
    assert!(
        log.contains("app.frag") && log.contains("fails its blake3 check"),
        "the server's log does not name the tampered fragment block:\n{log}"
    );
    assert!(server.alive(), "mosaic serve exited:\n{log}");
    let out = tool_ok(
        "qemu-io",
        [
            "-f",
            "raw",
            "-r",
            "-c",
            "read 0 1M",
            server.uri("root").as_str(),
        ],
    );
    assert!(out.contains("read 1048576/1048576"), "qemu-io: {out}");
    server.stop();
}

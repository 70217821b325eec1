//! `mosaic demo`: the README's main command. It builds a demo fragment set
//! from generated trees, verifies it, merges it into an ext4 volume (with
//! an overlay for writes), writes the base image for comparison, and
//! serves the volume on `DIR/nbd.sock` and TCP 127.0.0.1:10809.

use anyhow::{Context, Result};
use fragments::{keys, BuildOptions, Fragment, Trust};
use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;
use std::process::ExitCode;

/// A tiny deterministic generator (xorshift) for demo file contents.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn fill(&mut self, buf: &mut [u8]) {
        for c in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
}

fn write(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    if let Some(p) = path.parent() {
        fs::create_dir_all(p).with_context(|| format!("create {}", p.display()))?;
    }
    fs::write(path, bytes).with_context(|| format!("write {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", path.display()))
}

/// Two trees that share `/usr` and `/etc`: a "base" and an "app".
fn generate(root: &Path) -> Result<()> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let base = root.join("base");
    let app = root.join("app");
    write(
        &base.join("etc/os-release"),
        b"NAME=mosaic-demo\nID=mosaic\n",
        0o644,
    )?;
    write(
        &base.join("etc/motd"),
        b"Welcome to a volume merged from signed fragments.\n",
        0o644,
    )?;
    for i in 0..64 {
        let mut b = vec![0u8; 300 + i * 2048];
        rng.fill(&mut b);
        write(&base.join(format!("usr/lib/demo/lib{i:02}.so")), &b, 0o755)?;
    }
    let mut big = vec![0u8; 3 << 20];
    rng.fill(&mut big[..1 << 20]);
    write(&base.join("usr/share/demo/sparse.img"), &big, 0o644)?; // 2 MiB of zero blocks: holes
    write(
        &app.join("usr/bin/hello"),
        b"#!/bin/sh\necho hello from the app fragment\n",
        0o755,
    )?;
    write(&app.join("etc/app.conf"), b"greeting = hello\n", 0o640)?;
    for i in 0..200 {
        write(
            &app.join(format!("usr/share/app/data/{i:03}.txt")),
            format!("record {i}\n").repeat(i + 1).as_bytes(),
            0o644,
        )?;
    }
    let link = app.join("usr/bin/hi");
    if fs::symlink_metadata(&link).is_err() {
        symlink("hello", &link).context("symlink")?;
    }
    Ok(())
}

/// Gives every entry of the generated tree the same mtime, so a re-run
/// produces byte-identical fragments (directories after their children).
fn pin_times(root: &Path, sec: i64) -> Result<()> {
    use nix::sys::stat::{utimensat, UtimensatFlags};
    use nix::sys::time::TimeSpec;
    let t = TimeSpec::new(sec, 0);
    let mut dirs = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).with_context(|| format!("read {}", d.display()))? {
            let p = e?.path();
            if fs::symlink_metadata(&p)?.is_dir() {
                stack.push(p);
            } else {
                utimensat(None, &p, &t, &t, UtimensatFlags::NoFollowSymlink)
                    .with_context(|| format!("set times of {}", p.display()))?;
            }
        }
        dirs.push(d);
    }
    for d in dirs.iter().rev() {
        utimensat(None, d, &t, &t, UtimensatFlags::NoFollowSymlink)
            .with_context(|| format!("set times of {}", d.display()))?;
    }
    Ok(())
}

pub fn run(dir: &Path, serve: bool, listen: std::net::SocketAddr) -> Result<ExitCode> {
    fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let key_path = dir.join("lab.key");
    if !key_path.exists() {
        keys::write_keypair(&key_path, &keys::generate(), false)?;
        eprintln!("wrote {} and its .pub", key_path.display());
    }
    let key = keys::read_secret(&key_path)?;
    let trust = [keys::read_public(&keys::pub_path(&key_path))?];
    let src = dir.join("src");
    generate(&src)?;
    let epoch = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(1_700_000_000);
    pin_times(&src, epoch)?;
    for (name, owns) in [
        ("base", vec!["/etc".to_string(), "/usr".to_string()]),
        ("app", vec!["/usr/share/app".to_string()]),
    ] {
        let out = dir.join(format!("{name}.frag"));
        let opts = BuildOptions {
            name: name.into(),
            version: "1".into(),
            owns,
            ..Default::default()
        };
        let r = fragments::build(&src.join(name), &out, &key, &opts, &fragments::NoProgress)?;
        let f = Fragment::open(&out, Trust::Keys(&trust))?;
        let faults = f.verify_all(&|_| {})?;
        anyhow::ensure!(
            faults.is_empty(),
            "{}: {} bad blocks",
            out.display(),
            faults.len()
        );
        println!(
            "{}: {} entries, {} files, {} bytes of content in a {} byte fragment; signature and every block verified",
            out.display(),
            r.entries,
            r.regular_files,
            r.file_bytes,
            r.fragment_bytes
        );
    }
    // The volume: both fragments merged into one ext4 image.
    let manifest = dir.join("volume.toml");
    if !manifest.exists() {
        fs::write(
            &manifest,
            "name = \"root\"\nfragments = [\"base.frag\", \"app.frag\"]\ntrust = [\"lab.key.pub\"]\n\n[filesystem]\nlabel = \"mosaic-demo\"\nfree = \"64MiB\"\n\n[overlay]\npath = \"root.overlay\"\n",
        )
        .with_context(|| format!("write {}", manifest.display()))?;
    }
    let cache = layout::FragmentCache::new();
    let lay = layout::Layout::open(&manifest, &cache)?;
    let image = dir.join("volume.img");
    let out = fs::File::create(&image).with_context(|| format!("create {}", image.display()))?;
    layout::ext4::export::write_image(&lay.merged, &lay.image, &out, &|_| {})
        .map_err(|e| anyhow::anyhow!("{}: {e}", image.display()))?;
    println!(
        "{}: {} entries from {} fragments merged into a {} MiB ext4 volume, written to {} (identity {})",
        manifest.display(),
        lay.merged.entries.len(),
        lay.merged.fragments.len(),
        (lay.image.blocks * 4096) >> 20,
        image.display(),
        lay.image.identity[..8].iter().map(|b| format!("{b:02x}")).collect::<String>()
    );
    println!(
        "\nlook inside:\n  mosaic fragment inspect {0}/base.frag\n  mosaic fragment ls {0}/app.frag /usr/bin\n  mosaic fragment cat {0}/base.frag /etc/motd\n  mosaic volume check {0}/volume.toml\n  e2fsck -fn {0}/volume.img",
        dir.display()
    );
    if !serve {
        return Ok(ExitCode::SUCCESS);
    }
    drop(lay);
    let shared = volume::Shared::new(64 << 20);
    let volumes = crate::cmd_serve::open_volumes(std::slice::from_ref(&manifest), &shared, false)?;
    let abs = fs::canonicalize(dir).with_context(|| format!("resolve {}", dir.display()))?;
    let sock = abs.join("nbd.sock");
    let listeners = vec![
        nbd_server::Listen::Unix(sock.clone()),
        nbd_server::Listen::Tcp(listen),
    ];
    crate::cmd_serve::serve(volumes, listeners, 128, |_| {
        let s = sock.display();
        println!(
            "\nserving export \"root\" (writes go to {0}/root.overlay); attach with qemu's tools (package qemu-utils):\n  \
             qemu-img info 'nbd+unix:///root?socket={s}'\n  \
             qemu-img compare -f raw {0}/volume.img 'nbd+unix:///root?socket={s}'\n  \
             qemu-io -f raw -c 'read -v 1024 64' 'nbd+unix:///root?socket={s}'\n  \
             qemu-img map -f raw --output=json nbd://{listen}/root\n\
             with libnbd's tools (apt-get install libnbd-bin):\n  \
             nbdinfo 'nbd+unix:///root?socket={s}'\n  \
             nbdinfo --map nbd://{listen}/root\n\
             as a VM's disk (apt-get install qemu-system-x86):\n  \
             qemu-system-x86_64 -drive file=nbd+unix:///root?socket={s},format=raw,if=virtio ...\n\
             Ctrl-C stops the server (overlay writes are flushed first).",
            abs.display()
        );
    })?;
    Ok(ExitCode::SUCCESS)
}

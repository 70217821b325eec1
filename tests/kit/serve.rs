//! The served fixture volume and the checks real NBD clients make of it:
//! two fragments built through the CLI (one raw, one zstd) from generated
//! trees, a key, `volume.toml` with an overlay, and the base image
//! `mosaic volume export` writes ([`Fixture`]); qemu-io, qemu-img compare,
//! nbdinfo's map, `mosaic overlay info`.

use super::image::export_image;
use super::{mosaic_ok, tempdir, write_file};
use serde_json::Value;
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use testkit::{json, line_text, nonzero_noise, stderr, stdout, text, tool, tool_ok};

/// Files of the base tree whose content the tests look for in images.
pub const MARKER: &str = "usr/share/marker.bin";
pub const LIBFOO: &str = "usr/lib/libfoo.so";
pub const LIBBAR: &str = "usr/lib/libbar.so";

pub fn marker_bytes() -> Vec<u8> {
    nonzero_noise(99, 256 * 1024 + 17)
}
pub fn libfoo_bytes() -> Vec<u8> {
    nonzero_noise(11, 1_234_567)
}
pub fn libbar_bytes() -> Vec<u8> {
    nonzero_noise(12, 345_679)
}

/// A directory with `lab.key(.pub)`, `base.frag` (raw), `app.frag` (zstd),
/// `volume.toml` (export "root", overlay `v.overlay`, 32 MiB free) and
/// `image.raw` (its base image).
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub manifest: PathBuf,
    pub image: PathBuf,
    pub base_frag: PathBuf,
    pub app_frag: PathBuf,
}

/// Writes a manifest over `base.frag` and `app.frag` in `dir`.
pub fn write_manifest(path: &Path, name: &str, free: &str, overlay: Option<&str>) {
    let mut s = format!(
        "name = \"{name}\"\nfragments = [\"base.frag\", \"app.frag\"]\ntrust = [\"lab.key.pub\"]\n\n\
         [filesystem]\nlabel = \"serve-test\"\nfree = \"{free}\"\n"
    );
    if let Some(o) = overlay {
        s.push_str(&format!("\n[overlay]\npath = \"{o}\"\n"));
    }
    fs::write(path, s).unwrap();
}

fn make_base_tree(root: &Path) {
    write_file(
        &root.join("etc/motd"),
        b"Served by mosaic, verified block by block.\n",
        0o644,
    );
    write_file(&root.join("etc/hostname"), b"fixture\n", 0o644);
    write_file(&root.join(LIBFOO), &libfoo_bytes(), 0o755);
    write_file(&root.join(LIBBAR), &libbar_bytes(), 0o755);
    write_file(
        &root.join("usr/bin/tool"),
        &nonzero_noise(13, 77_777),
        0o755,
    );
    write_file(&root.join(MARKER), &marker_bytes(), 0o644);
    for i in 0..40u64 {
        let len = (1 + i * 97 + i * i * 3) as usize;
        write_file(
            &root.join(format!("usr/share/data/{i:02}.dat")),
            &nonzero_noise(100 + i, len),
            0o644,
        );
    }
}

fn make_app_tree(root: &Path) {
    write_file(
        &root.join("opt/app/bin/app"),
        &nonzero_noise(21, 999_999),
        0o755,
    );
    write_file(
        &root.join("opt/app/share/text.txt"),
        &line_text(22, 1_500_001),
        0o644,
    );
    write_file(
        &root.join("opt/app/share/mixed.bin"),
        &[nonzero_noise(23, 300_003), line_text(24, 200_001)].concat(),
        0o644,
    );
    for i in 0..25u64 {
        write_file(
            &root.join(format!("opt/app/conf/{i:02}.conf")),
            &line_text(200 + i, 13 + i as usize * 211),
            0o640,
        );
    }
}

impl Fixture {
    pub fn new() -> Fixture {
        let dir = tempdir();
        let d = dir.path();
        make_base_tree(&d.join("src/base"));
        make_app_tree(&d.join("src/app"));
        let key = d.join("lab.key");
        mosaic_ok(["keygen".as_ref(), "-o".as_ref(), key.as_os_str()]);
        let base_frag = d.join("base.frag");
        let app_frag = d.join("app.frag");
        let build = |src: &str, out: &Path, extra: &[&str]| {
            let mut a: Vec<OsString> = vec![
                "fragment".into(),
                "build".into(),
                d.join(src).into(),
                "-o".into(),
                out.into(),
                "--key".into(),
                key.clone().into(),
            ];
            a.extend(extra.iter().map(OsString::from));
            mosaic_ok(&a);
        };
        build(
            "src/base",
            &base_frag,
            &["--name", "base", "--owns", "/etc", "--owns", "/usr"],
        );
        build(
            "src/app",
            &app_frag,
            &["--name", "app", "--owns", "/opt", "--compress", "zstd"],
        );
        let manifest = d.join("volume.toml");
        write_manifest(&manifest, "root", "32MiB", Some("v.overlay"));
        let image = d.join("image.raw");
        export_image(&manifest, &image, false);
        Fixture {
            dir,
            manifest,
            image,
            base_frag,
            app_frag,
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A socket path in the fixture's directory.
    pub fn socket(&self, name: &str) -> PathBuf {
        self.path(name)
    }

    pub fn image_bytes(&self) -> Vec<u8> {
        fs::read(&self.image).unwrap()
    }

    /// A read-only manifest `NAME.toml` over the same fragments.
    pub fn read_only_manifest(&self, name: &str) -> PathBuf {
        let p = self.path(&format!("{name}.toml"));
        write_manifest(&p, name, "32MiB", None);
        p
    }
}

impl Default for Fixture {
    fn default() -> Self {
        Fixture::new()
    }
}

// ---------------------------------------------------------------------------
// Checks by real NBD clients

/// `qemu-io -f raw -c CMD... URI`: must exit 0 with no failure in its text.
#[track_caller]
pub fn qemu_io_ok(uri: &str, cmds: &[String]) -> String {
    let mut a: Vec<OsString> = vec!["-f".into(), "raw".into()];
    for c in cmds {
        a.push("-c".into());
        a.push(c.into());
    }
    a.push(uri.into());
    let o = tool("qemu-io", &a);
    let all = text(&o);
    assert!(
        o.status.success() && !all.contains("failed") && !all.contains("error"),
        "qemu-io {cmds:?} {uri} ({}):\n{all}",
        o.status
    );
    all
}

/// `qemu-img compare -f raw -F raw IMAGE URI`, whatever it finds.
#[track_caller]
pub fn qemu_img_compare(image: &Path, uri: &str) -> std::process::Output {
    tool(
        "qemu-img",
        [
            "compare".as_ref(),
            "-f".as_ref(),
            "raw".as_ref(),
            "-F".as_ref(),
            "raw".as_ref(),
            image.as_os_str(),
            uri.as_ref(),
        ],
    )
}

/// `qemu-img compare -f raw -F raw IMAGE URI`: identical.
#[track_caller]
pub fn assert_same_image(image: &Path, uri: &str) {
    let o = qemu_img_compare(image, uri);
    assert!(
        o.status.code() == Some(0) && stdout(&o).contains("Images are identical"),
        "qemu-img compare {} {uri}: not identical ({}):\n{}",
        image.display(),
        o.status,
        text(&o)
    );
}

pub fn overlay_info(manifest: &Path) -> Value {
    let o = mosaic_ok([
        "overlay".as_ref(),
        "info".as_ref(),
        manifest.as_os_str(),
        "--json".as_ref(),
    ]);
    json(&stdout(&o))
}

/// `nbdinfo --map --json URI`: the extents cover the volume, contiguous,
/// and every one the map says reads as zeros is zeros in `want`. Returns
/// (zero bytes, data bytes).
#[track_caller]
pub fn check_map(uri: &str, want: &[u8]) -> (u64, u64) {
    let map = json(&tool_ok("nbdinfo", ["--map", "--json", uri]));
    let map = map.as_array().expect("map is a list");
    let mut next = 0u64;
    let (mut zero, mut data) = (0u64, 0u64);
    for ext in map {
        let off = ext["offset"].as_u64().unwrap();
        let len = ext["length"].as_u64().unwrap();
        let ty = ext["type"].as_u64().unwrap();
        assert_eq!(off, next, "{uri}: map not contiguous at {ext}");
        next = off + len;
        if ty & 2 != 0 {
            zero += len;
            let range = &want[off as usize..next as usize];
            if let Some(p) = range.iter().position(|&b| b != 0) {
                panic!(
                    "{uri}: the map says {off}+{len} reads as zeros, but byte {} is {:#04x}",
                    off as usize + p,
                    range[p]
                );
            }
        } else {
            data += len;
        }
    }
    assert_eq!(next, want.len() as u64, "{uri}: map covers the volume");
    (zero, data)
}

/// The extent of the map holding `offset`: (offset, length, type).
pub fn map_extent(uri: &str, offset: u64) -> (u64, u64, u64) {
    let map = json(&tool_ok("nbdinfo", ["--map", "--json", uri]));
    map.as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["offset"].as_u64().unwrap(),
                e["length"].as_u64().unwrap(),
                e["type"].as_u64().unwrap(),
            )
        })
        .find(|&(o, l, _)| o <= offset && offset < o + l)
        .unwrap_or_else(|| panic!("{uri}: no extent holds {offset}"))
}

/// Asserts a refusal: exit 2 (environment: another process holds the
/// overlay) and "in use" in stderr.
#[track_caller]
pub fn assert_in_use(o: &std::process::Output, what: &str) {
    assert!(
        o.status.code() == Some(2) && stderr(o).contains("in use"),
        "{what}: expected exit 2 and a refusal saying \"in use\" ({}):\n{}",
        o.status,
        text(o)
    );
}

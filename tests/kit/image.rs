//! ext4 images judged by the real tools (e2fsck, debugfs, a loop mount),
//! and `mosaic volume export`, which writes them.

use super::mosaic;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;
use testkit::{code, expect_code, text, tool, tool_ok};

/// `mosaic volume export MANIFEST -o OUT EXTRA...`, whatever its exit.
#[track_caller]
pub fn export_image_with(manifest: &Path, out: &Path, extra: &[&str]) -> Output {
    let mut a: Vec<OsString> = vec![
        "volume".into(),
        "export".into(),
        manifest.into(),
        "-o".into(),
        out.into(),
    ];
    a.extend(extra.iter().map(OsString::from));
    mosaic(&a)
}

/// `mosaic volume export MANIFEST -o OUT [--with-overlay]`, which must
/// succeed (the server of the overlay stopped).
#[track_caller]
pub fn export_image(manifest: &Path, out: &Path, with_overlay: bool) {
    let extra: &[&str] = if with_overlay {
        &["--with-overlay"]
    } else {
        &[]
    };
    let o = export_image_with(manifest, out, extra);
    expect_code(&o, 0, &format!("volume export {}", manifest.display()));
}

/// `e2fsck -fn IMG` exits 0 and prints nothing but its banner, the pass
/// lines and one summary line (it exits 0 on some complaints under -n).
#[track_caller]
pub fn assert_fsck_clean(img: &Path) {
    let o = tool("e2fsck", [OsStr::new("-fn"), img.as_os_str()]);
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let mut summaries = 0;
    let complaints: Vec<&str> = all
        .lines()
        .filter(|l| {
            if l.contains(" files (") && l.contains("non-contiguous), ") && l.ends_with(" blocks") {
                summaries += 1;
                return false;
            }
            !(l.starts_with("Pass ") || l.starts_with("e2fsck ") || l.trim().is_empty())
        })
        .collect();
    assert!(
        code(&o) == 0 && complaints.is_empty() && summaries == 1,
        "e2fsck -fn {}: exit {}; unexpected lines {complaints:?}\n{all}",
        img.display(),
        code(&o)
    );
}

/// `e2fsck -fy` on a sparse copy exits 0 and changes nothing past block 0
/// (it rewrites superblock times even on a clean filesystem).
#[track_caller]
pub fn assert_fsck_fixes_nothing(img: &Path) {
    let copy = img.with_extension("fy");
    tool_ok(
        "cp",
        [
            OsStr::new("--sparse=always"),
            img.as_os_str(),
            copy.as_os_str(),
        ],
    );
    let o = tool("e2fsck", [OsStr::new("-fy"), copy.as_os_str()]);
    assert_eq!(code(&o), 0, "e2fsck -fy changed something:\n{}", text(&o));
    let o = tool(
        "cmp",
        [
            OsStr::new("-i"),
            OsStr::new("4096"),
            img.as_os_str(),
            copy.as_os_str(),
        ],
    );
    assert_eq!(
        code(&o),
        0,
        "e2fsck -fy changed the image past block 0: {}",
        text(&o)
    );
    fs::remove_file(copy).unwrap();
}

/// `debugfs -R REQUEST IMG`: exit 0 and no complaint; returns stdout (the
/// request's output, e.g. a file's bytes for `cat`).
#[track_caller]
pub fn debugfs(img: &Path, request: &str) -> Vec<u8> {
    let o = tool(
        "debugfs",
        [OsStr::new("-R"), OsStr::new(request), img.as_os_str()],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    // debugfs exits 0 even when a request fails; its complaints go to
    // stderr after the version banner.
    let complaints: Vec<&str> = err
        .lines()
        .filter(|l| !l.starts_with("debugfs ") && !l.trim().is_empty())
        .collect();
    assert!(
        o.status.success() && complaints.is_empty(),
        "debugfs -R '{request}' {}: {}\n{err}",
        img.display(),
        o.status
    );
    o.stdout
}

/// [`debugfs`]'s output as text.
#[track_caller]
pub fn debugfs_text(img: &Path, request: &str) -> String {
    String::from_utf8_lossy(&debugfs(img, request)).into_owned()
}

/// A loop mount, unmounted when dropped (or explicitly, checked).
pub struct Mount {
    at: PathBuf,
    mounted: bool,
}

impl Mount {
    #[track_caller]
    pub fn new(img: &Path, at: &Path, read_only: bool) -> Mount {
        fs::create_dir_all(at).unwrap();
        let opts = if read_only { "loop,ro" } else { "loop" };
        tool_ok(
            "mount",
            [
                OsStr::new("-t"),
                OsStr::new("ext4"),
                OsStr::new("-o"),
                OsStr::new(opts),
                img.as_os_str(),
                at.as_os_str(),
            ],
        );
        Mount {
            at: at.to_owned(),
            mounted: true,
        }
    }

    pub fn path(&self) -> &Path {
        &self.at
    }

    #[track_caller]
    pub fn unmount(mut self) {
        self.mounted = false;
        // "target is busy" can be transient and not this test's doing: a
        // sibling test thread that forks a tool holds copies of every open
        // descriptor (this test's too) until its child execs. Retry that
        // case only, for a bounded time; anything else fails at once.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let o = tool("umount", [self.at.as_os_str()]);
            if o.status.code() == Some(0) {
                return;
            }
            let busy = String::from_utf8_lossy(&o.stderr).contains("target is busy");
            if !busy || std::time::Instant::now() > deadline {
                panic!("umount {} failed:\n{}", self.at.display(), text(&o));
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if self.mounted {
            // Best effort while a test is already failing (a panic here
            // would abort): its own message is what matters.
            let _ = std::process::Command::new("umount").arg(&self.at).status();
        }
    }
}

//! The VM recipe's fixture and running guests: `vm-images/build.sh` run
//! once per test process ([`vm_fixture`]), manifests over its fragment
//! files ([`vm_manifest`]), and a guest ([`Vm`]) booted by
//! `vm-images/qemu.sh --batch` whose serial console is read line by line,
//! waited on for marker lines with deadlines, and written to (the guest's
//! `hold` step waits for a line).

use super::server::Server;
use super::{mosaic_bin, mosaic_ok, repo};
use std::ffi::OsStr;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use testkit::{expect_code, output_within, require_tools, Running};

/// How long one guest may take from qemu's start to powering off (TCG; two
/// guests share two cores in one test).
pub const BOOT_DEADLINE: Duration = Duration::from_secs(150);
/// How long the recipe may take (the first run downloads ~70 MB of packages).
pub const BUILD_DEADLINE: Duration = Duration::from_secs(900);

/// The programs the VM tests drive (a missing one fails them up front,
/// naming its Debian package).
pub const VM_TOOLS: &[&str] = &[
    "qemu-system-x86_64",
    "cpio",
    "dpkg-deb",
    "apt-get",
    "apt-cache",
    "debugfs",
    "e2fsck",
    "nbdcopy",
    "qemu-io",
    "sha256sum",
];

// ---------------------------------------------------------------------------
// The fixture: vm-images/build.sh, once per process

pub struct VmFixture {
    /// build.sh's output: vmlinuz, initrd.img, trees/, *.frag, lab.key.pub.
    pub out: PathBuf,
}

impl VmFixture {
    pub fn fragment(&self, name: &str) -> PathBuf {
        self.out.join(format!("{name}.frag"))
    }
    pub fn fragments(&self) -> Vec<PathBuf> {
        FRAGMENTS.iter().map(|n| self.fragment(n)).collect()
    }
    pub fn trust(&self) -> PathBuf {
        self.out.join("lab.key.pub")
    }
    /// The app fragment's payload (`mosaic fragment cat`), which the guest
    /// reads and checks at every boot.
    pub fn payload(&self) -> Vec<u8> {
        mosaic_ok([
            "fragment".as_ref(),
            "cat".as_ref(),
            self.fragment("app").as_os_str(),
            "/usr/share/mosaic-app/payload.txt".as_ref(),
        ])
        .stdout
    }
}

/// The fragments the recipe builds, in manifest order.
pub const FRAGMENTS: &[&str] = &["base", "modules", "app"];

static FIXTURE: OnceLock<VmFixture> = OnceLock::new();

/// Runs `vm-images/build.sh` into `$CARGO_TARGET_TMPDIR/vm-boot` (once): the
/// kernel and busybox packages are cached in `vm-images/.cache` (or
/// `$MOSAIC_VM_CACHE`) and downloaded with apt-get when missing.
pub fn vm_fixture() -> &'static VmFixture {
    FIXTURE.get_or_init(|| {
        require_tools(VM_TOOLS);
        let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("vm-boot");
        fs::create_dir_all(&out).unwrap();
        let mut c = Command::new(repo().join("vm-images/build.sh"));
        c.arg(&out).env("MOSAIC", mosaic_bin());
        let started = Instant::now();
        let o = output_within(c, BUILD_DEADLINE);
        expect_code(&o, 0, &format!("vm-images/build.sh {}", out.display()));
        eprintln!(
            "vm-images/build.sh: {:.1} s\n{}",
            started.elapsed().as_secs_f64(),
            String::from_utf8_lossy(&o.stderr)
        );
        VmFixture { out }
    })
}

/// Writes `DIR/NAME.toml`: export `name` over `fragments`, trusting the
/// fixture's key, with the overlay `DIR/NAME.overlay` when `overlay`.
pub fn vm_manifest(
    dir: &Path,
    name: &str,
    fragments: &[PathBuf],
    trust: &Path,
    overlay: bool,
) -> PathBuf {
    let list: Vec<String> = fragments
        .iter()
        .map(|f| format!("{:?}", f.display().to_string()))
        .collect();
    let mut s = format!(
        "name = {name:?}\nfragments = [{}]\ntrust = [{:?}]\n[filesystem]\nlabel = \"mosaic-vm\"\nfree = \"256MiB\"\n",
        list.join(", "),
        trust.display().to_string()
    );
    if overlay {
        s.push_str(&format!("[overlay]\npath = \"{name}.overlay\"\n"));
    }
    let path = dir.join(format!("{name}.toml"));
    fs::write(&path, s).unwrap();
    path
}

/// The fragment files (`*.frag`) process `pid` has open, as (path, count).
pub fn open_fragments(pid: u32) -> Vec<(PathBuf, usize)> {
    let mut counts: std::collections::BTreeMap<PathBuf, usize> = Default::default();
    for e in fs::read_dir(format!("/proc/{pid}/fd")).unwrap() {
        let Ok(target) = fs::read_link(e.unwrap().path()) else {
            continue;
        };
        if target.extension() == Some(OsStr::new("frag")) {
            *counts.entry(target).or_default() += 1;
        }
    }
    counts.into_iter().collect()
}

// ---------------------------------------------------------------------------
// Guests

pub struct Vm {
    pub name: String,
    /// qemu: its stdout is the guest's serial console.
    qemu: Running,
    started: Instant,
    deadline: Instant,
}

impl Vm {
    /// Boots the fixture's kernel and initramfs from `export` on `server`
    /// (`vm-images/qemu.sh --batch`), running `steps` after boot.
    #[track_caller]
    pub fn boot(name: &str, fx: &VmFixture, server: &Server, export: &str, steps: &str) -> Vm {
        let mut c = Command::new(repo().join("vm-images/qemu.sh"));
        c.arg("--out")
            .arg(&fx.out)
            .arg("--nbd")
            .arg(server.socket())
            .arg("--export")
            .arg(export)
            .arg("--steps")
            .arg(steps)
            .arg("--batch");
        let started = Instant::now();
        Vm {
            name: name.to_owned(),
            qemu: Running::start(&mut c, true),
            started,
            deadline: started + BOOT_DEADLINE,
        }
    }

    /// The console so far and qemu's stderr, for failure messages.
    pub fn transcript(&self) -> String {
        format!(
            "--- {} console\n{}\n--- qemu stderr\n{}",
            self.name,
            self.qemu.stdout.text(),
            self.qemu.stderr.text()
        )
    }

    /// The first console line containing `marker` (waits until the boot
    /// deadline).
    #[track_caller]
    pub fn wait_for(&mut self, marker: &str) -> String {
        match self.qemu.stdout.wait_for(marker, self.deadline) {
            Ok(l) => l,
            Err(why) => panic!(
                "guest {}: no console line with {marker:?} ({why}, {:.1} s after start):\n{}",
                self.name,
                self.started.elapsed().as_secs_f64(),
                self.transcript()
            ),
        }
    }

    /// The first console line containing `marker`, if any yet (no waiting).
    pub fn seen(&mut self, marker: &str) -> Option<String> {
        self.console().into_iter().find(|l| l.contains(marker))
    }

    /// Every console line so far.
    pub fn console(&mut self) -> Vec<String> {
        self.qemu.stdout.lines()
    }

    /// Time since qemu was started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Writes a line to the guest's console (releases a `hold` step).
    pub fn send_line(&mut self, line: &str) {
        let stdin = self.qemu.stdin.as_mut().expect("the console input is open");
        writeln!(stdin, "{line}").expect("write to the guest's console");
        stdin.flush().expect("write to the guest's console");
    }

    /// Waits for qemu to exit (the guest powered off) before the deadline;
    /// it must exit 0. Returns the whole console.
    #[track_caller]
    pub fn wait_exit(&mut self) -> Vec<String> {
        if !self.qemu.stdout.wait_closed(self.deadline) {
            panic!(
                "guest {}: did not power off in time:\n{}",
                self.name,
                self.transcript()
            );
        }
        let left = self.deadline.saturating_duration_since(Instant::now());
        match self.qemu.wait(left.max(Duration::from_secs(10))) {
            Ok(s) if s.success() => {}
            Ok(s) => panic!(
                "guest {}: qemu exited with {s}:\n{}",
                self.name,
                self.transcript()
            ),
            Err(s) => panic!(
                "guest {}: qemu did not exit in time (killed, {s}):\n{}",
                self.name,
                self.transcript()
            ),
        }
        self.console()
    }
}

/// The bytes `write:TAG` puts in /var/lib/guest/TAG.dir/data.bin (see
/// vm-images/rootfs/base/sbin/init).
pub fn guest_data(tag: &str) -> Vec<u8> {
    let mut v = Vec::new();
    for i in 1..=12000 {
        v.extend_from_slice(format!("guest {tag} data line {i:06}\n").as_bytes());
    }
    v.truncate(262144);
    v
}

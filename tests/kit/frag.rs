//! Fragments through the library: build, open, read; byte flips in a
//! working copy of a fragment.

use fragments::{BuildOptions, BuildReport, Fragment, SigningKey, Trust};
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Default build options with the given small-file threshold and zstd level.
pub fn options(small_threshold: u64, zstd_level: Option<i32>) -> BuildOptions {
    BuildOptions {
        small_threshold,
        zstd_level,
        ..BuildOptions::default()
    }
}

/// Builds `src` into `out` with `key`, panicking with the error on failure.
pub fn build(src: &Path, out: &Path, key: &SigningKey, opts: &BuildOptions) -> BuildReport {
    fragments::build(src, out, key, opts, &fragments::NoProgress)
        .unwrap_or_else(|e| panic!("build {} -> {}: {e:#}", src.display(), out.display()))
}

/// Opens `path` trusting only `key`.
pub fn open(path: &Path, key: &SigningKey) -> Fragment {
    let trusted = [key.verifying_key()];
    Fragment::open(path, Trust::Keys(&trusted))
        .unwrap_or_else(|e| panic!("open {}: {e:#}", path.display()))
}

/// The whole content of regular file `ino`, read through `read_file` in
/// pieces of `piece` bytes (any size ≥ 1, to exercise odd boundaries).
pub fn read_all(frag: &Fragment, ino: u32, piece: usize) -> Vec<u8> {
    let size = frag.metadata().inode(ino).size();
    let mut out = Vec::with_capacity(size as usize);
    let mut buf = vec![0u8; piece.max(1)];
    loop {
        let n = frag
            .read_file(ino, out.len() as u64, &mut buf)
            .unwrap_or_else(|e| panic!("read_file inode {ino} at {}: {e:#}", out.len()));
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    assert_eq!(out.len() as u64, size, "inode {ino}: bytes read vs size");
    out
}

/// The whole content of a regular file of an open fragment, by path.
pub fn read_path(f: &fragments::Fragment, path: &str) -> fragments::Result<Vec<u8>> {
    let ino = f
        .metadata()
        .lookup(path.as_bytes())
        .unwrap_or_else(|| panic!("{path}: not in the fragment"));
    let size = f.metadata().inode(ino).size();
    let mut buf = vec![0u8; size as usize];
    let n = f.read_file(ino, 0, &mut buf)?;
    assert_eq!(n as u64, size, "{path}: short read");
    Ok(buf)
}

/// Every regular file's path (all hard-link names), sorted.
pub fn regular_paths(f: &fragments::Fragment) -> Vec<String> {
    let m = f.metadata();
    let mut out = Vec::new();
    for (ino, inode) in m.inodes.iter().enumerate() {
        if inode.kind == fragments::Kind::Regular {
            for p in m.paths_of(ino as u32) {
                out.push(String::from_utf8(p).unwrap());
            }
        }
    }
    out.sort();
    out
}

/// A working copy of a fragment in which single bytes are flipped in place
/// and restored, so that each trial sees the pristine file but one byte.
pub struct Flipper {
    pub path: PathBuf,
    file: File,
    pristine: Vec<u8>,
}

impl Flipper {
    /// Copies `src` to `dir/name` (a regular file on disk).
    pub fn new(src: &Path, dir: &Path, name: &str) -> Flipper {
        let path = dir.join(name);
        let pristine = fs::read(src).unwrap();
        fs::write(&path, &pristine).unwrap();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        Flipper {
            path,
            file,
            pristine,
        }
    }

    pub fn len(&self) -> u64 {
        self.pristine.len() as u64
    }

    pub fn pristine(&self) -> &[u8] {
        &self.pristine
    }

    /// Runs `check` with byte `offset` of the copy xor-ed with `mask`, then
    /// restores the byte.
    pub fn with_flip<T>(&self, offset: u64, mask: u8, check: impl FnOnce(&Path) -> T) -> T {
        let orig = self.pristine[offset as usize];
        self.file.write_all_at(&[orig ^ mask], offset).unwrap();
        let r = check(&self.path);
        self.file.write_all_at(&[orig], offset).unwrap();
        r
    }

    /// Asserts the working copy equals the original again.
    pub fn assert_restored(&self) {
        assert!(
            fs::read(&self.path).unwrap() == self.pristine,
            "the working copy was not restored"
        );
    }
}

/// `n` offsets spread evenly over `[start, end)`, first and last included.
pub fn spread(start: u64, end: u64, n: u64) -> Vec<u64> {
    assert!(end > start);
    let span = end - 1 - start;
    let mut v: Vec<u64> = (0..n).map(|i| start + span * i / (n - 1).max(1)).collect();
    v.dedup();
    v
}

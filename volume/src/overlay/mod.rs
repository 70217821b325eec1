//! The persistent overlay: a block file holding the writes to a volume.
//!
//! Crash safety rests on three rules:
//!
//! - The header is written once, into a temporary file that is synced and
//!   renamed into place: an overlay file either has a full header or does
//!   not exist.
//! - Data goes to the data area first; a block's state in memory changes
//!   only after its data is written. The state table on disk is written
//!   only by [`Overlay::flush`], which first syncs the data, then writes
//!   the state pages that changed (snapshotted before that sync), then
//!   syncs again. So a state on disk never points at data that was not
//!   durable when the state was written.
//! - An acknowledged FUA write or flush has gone through that sequence.
//!
//! The overlay is locked (`flock`, exclusive) for as long as it is open:
//! a second server, or a reset, on a held overlay is refused.

pub mod format;

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use crate::error::{Error, Result};
pub use format::{Header, BASE, DATA, ZERO};
use format::{BLOCK, HEADER_SIZE};

const WORDS_PER_PAGE: usize = (BLOCK / 8) as usize;
/// Stripes of the read-modify-write locks for partial-block writes.
const STRIPES: usize = 64;

/// What `mosaic overlay info` shows.
#[derive(Debug, Clone)]
pub struct OverlayInfo {
    pub path: PathBuf,
    pub identity: String,
    pub blocks: u64,
    pub data_blocks: u64,
    pub zero_blocks: u64,
    /// Bytes the file occupies on its filesystem (it is sparse).
    pub allocated_bytes: u64,
    /// A process (a server) holds its lock.
    pub in_use: bool,
}

pub struct Overlay {
    path: PathBuf,
    file: File,
    header: Header,
    /// Block states, 32 per word (see the format).
    words: Vec<AtomicU64>,
    /// State pages changed since the last flush.
    dirty: Vec<AtomicBool>,
    stripes: Vec<Mutex<()>>,
    flush_lock: Mutex<()>,
    /// Bumped by every change; `synced` is its value at the last durable flush.
    changes: AtomicU64,
    synced: AtomicU64,
}

impl std::fmt::Debug for Overlay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Overlay").field("path", &self.path).finish()
    }
}

fn io<'a>(
    path: &'a Path,
    op: &'static str,
    offset: u64,
) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |source| Error::OverlayIo {
        path: path.to_owned(),
        op,
        offset,
        source,
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Takes the exclusive lock on `file` without waiting.
fn lock(file: &File, path: &Path) -> Result<()> {
    // SAFETY: flock on a valid, open descriptor.
    let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if r == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Err(Error::OverlayBusy {
            path: path.to_owned(),
        })
    } else {
        Err(Error::OverlayIo {
            path: path.to_owned(),
            op: "lock",
            offset: 0,
            source: e,
        })
    }
}

fn sync_dir(path: &Path) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir, "sync directory", 0))
}

/// Writes a fresh overlay for `header` at `path`, atomically: the returned
/// file is locked, complete and durable, and replaced whatever was there.
fn create(path: &Path, header: &Header) -> Result<File> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "overlay".into());
    let tmp = path.with_file_name(format!(".{name}.new-{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io(&tmp, "create", 0))?;
    let result = (|| {
        lock(&file, &tmp)?;
        file.write_all_at(&header.encode(), 0)
            .map_err(io(&tmp, "write header", 0))?;
        file.set_len(header.file_len())
            .map_err(io(&tmp, "set length", header.file_len()))?;
        file.sync_all().map_err(io(&tmp, "sync", 0))?;
        std::fs::rename(&tmp, path).map_err(io(path, "rename into place", 0))?;
        sync_dir(path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(file)
}

/// Opens `path` read-write and locks it, making sure the locked file is
/// the one at `path` (a concurrent reset may have replaced it).
fn open_locked(path: &Path) -> Result<Option<File>> {
    for _ in 0..8 {
        let file = match OpenOptions::new().read(true).write(true).open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(path, "open", 0)(e)),
        };
        lock(&file, path)?;
        let a = file.metadata().map_err(io(path, "stat", 0))?;
        match std::fs::metadata(path) {
            Ok(b) if a.ino() == b.ino() && a.dev() == b.dev() => return Ok(Some(file)),
            _ => continue,
        }
    }
    Err(Error::OverlayBusy {
        path: path.to_owned(),
    })
}

fn read_header(path: &Path, file: &File) -> Result<Header> {
    let len = file.metadata().map_err(io(path, "stat", 0))?.len();
    let mut b = [0u8; HEADER_SIZE];
    if len < HEADER_SIZE as u64 {
        return Err(Error::OverlayCorrupt {
            path: path.to_owned(),
            offset: len,
            what: format!("file is {len} bytes, shorter than the {HEADER_SIZE}-byte header"),
        });
    }
    file.read_exact_at(&mut b, 0)
        .map_err(io(path, "read header", 0))?;
    Header::decode(path, &b, len)
}

fn read_states(path: &Path, file: &File, h: &Header) -> Result<Vec<AtomicU64>> {
    let mut raw = vec![0u8; h.state_len as usize];
    file.read_exact_at(&mut raw, h.state_offset).map_err(io(
        path,
        "read state table",
        h.state_offset,
    ))?;
    let nwords = h.blocks.div_ceil(32) as usize;
    let mut words = Vec::with_capacity(raw.len() / 8);
    for (i, c) in raw.chunks_exact(8).enumerate() {
        let mut x = [0u8; 8];
        x.copy_from_slice(c);
        let w = u64::from_le_bytes(x);
        // Any pair 0b11, or any state past the last block, is corruption.
        let bad_pair = w & (w >> 1) & 0x5555_5555_5555_5555;
        let valid_blocks = h.blocks.saturating_sub(i as u64 * 32).min(32);
        let past = if valid_blocks == 32 {
            0
        } else {
            w >> (2 * valid_blocks)
        };
        if bad_pair != 0 || past != 0 || (i >= nwords && w != 0) {
            let k = if bad_pair != 0 {
                bad_pair.trailing_zeros() as u64 / 2
            } else {
                valid_blocks
            };
            return Err(Error::OverlayCorrupt {
                path: path.to_owned(),
                offset: h.state_offset + i as u64 * 8,
                what: format!("invalid state for block {}", i as u64 * 32 + k),
            });
        }
        words.push(AtomicU64::new(w));
    }
    Ok(words)
}

impl Overlay {
    /// Opens the overlay at `path` for a volume of `blocks` blocks with
    /// identity `identity` (from `manifest`), creating it when missing;
    /// `discard` replaces an existing one with an empty overlay. Refused
    /// when another process holds it or it belongs to another volume.
    pub fn open(
        path: &Path,
        manifest: &Path,
        blocks: u64,
        identity: [u8; 32],
        discard: bool,
    ) -> Result<Overlay> {
        let want = Header::new(blocks, identity);
        let file = match open_locked(path)? {
            Some(f) if !discard => f,
            Some(old) => {
                // Held: nobody else can be using it; replace it.
                let f = create(path, &want)?;
                drop(old);
                f
            }
            None => create(path, &want)?,
        };
        let header = read_header(path, &file)?;
        if header.identity != identity || header.blocks != blocks {
            return Err(Error::OverlayMismatch {
                path: path.to_owned(),
                manifest: manifest.to_owned(),
                overlay_identity: hex(&header.identity),
                overlay_blocks: header.blocks,
                volume_identity: hex(&identity),
                volume_blocks: blocks,
            });
        }
        let words = read_states(path, &file, &header)?;
        let pages = (header.state_len / BLOCK) as usize;
        tracing::info!(path = %path.display(), blocks, "overlay opened");
        Ok(Overlay {
            path: path.to_owned(),
            file,
            header,
            words,
            dirty: (0..pages).map(|_| AtomicBool::new(false)).collect(),
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            flush_lock: Mutex::new(()),
            changes: AtomicU64::new(0),
            synced: AtomicU64::new(0),
        })
    }

    /// Replaces the overlay at `path` by an empty one for this volume
    /// (refused while a server holds it).
    pub fn reset(path: &Path, blocks: u64, identity: [u8; 32]) -> Result<()> {
        let old = open_locked(path)?;
        create(path, &Header::new(blocks, identity))?;
        drop(old);
        Ok(())
    }

    /// Reads what the overlay file holds, without locking it.
    pub fn info(path: &Path) -> Result<OverlayInfo> {
        let file = File::open(path).map_err(io(path, "open", 0))?;
        let header = read_header(path, &file)?;
        let words = read_states(path, &file, &header)?;
        let (mut data, mut zero) = (0u64, 0u64);
        for w in &words {
            let w = w.load(Ordering::Relaxed);
            data += u64::from((w & !(w >> 1) & 0x5555_5555_5555_5555).count_ones());
            zero += u64::from(((w >> 1) & !w & 0x5555_5555_5555_5555).count_ones());
        }
        let meta = file.metadata().map_err(io(path, "stat", 0))?;
        // SAFETY: flock on a valid descriptor; a shared lock conflicts with
        // a server's exclusive one and is released when `file` closes.
        let free = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) } == 0;
        Ok(OverlayInfo {
            path: path.to_owned(),
            identity: hex(&header.identity),
            blocks: header.blocks,
            data_blocks: data,
            zero_blocks: zero,
            allocated_bytes: meta.blocks() * 512,
            in_use: !free,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn blocks(&self) -> u64 {
        self.header.blocks
    }

    /// The state of `block`.
    pub fn state(&self, block: u64) -> u64 {
        let w = self.words[(block / 32) as usize].load(Ordering::Acquire);
        (w >> (2 * (block % 32))) & 3
    }

    /// The state of `block` and how many blocks from it (at most `max`)
    /// share that state.
    pub fn run(&self, block: u64, max: u64) -> (u64, u64) {
        let st = self.state(block);
        let same_word = 0x5555_5555_5555_5555u64.wrapping_mul(st);
        let mut b = block + 1;
        let end = block + max;
        while b < end {
            if b.is_multiple_of(32)
                && b + 32 <= end
                && self.words[(b / 32) as usize].load(Ordering::Acquire) == same_word
            {
                b += 32;
                continue;
            }
            if self.state(b) != st {
                break;
            }
            b += 1;
        }
        (st, b - block)
    }

    /// Sets `[first, first + n)` to state `st`.
    fn set_state(&self, first: u64, n: u64, st: u64) {
        let mut b = first;
        let end = first + n;
        while b < end {
            let wi = (b / 32) as usize;
            let lo = b % 32;
            let hi = ((wi as u64 + 1) * 32).min(end) - wi as u64 * 32;
            let span = hi - lo;
            let mask = if span == 32 {
                u64::MAX
            } else {
                ((1u64 << (2 * span)) - 1) << (2 * lo)
            };
            let value = 0x5555_5555_5555_5555u64.wrapping_mul(st) & mask;
            let old = self.words[wi]
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |w| {
                    Some((w & !mask) | value)
                })
                .unwrap_or_else(|w| w);
            if old & mask != value {
                self.dirty[wi / WORDS_PER_PAGE].store(true, Ordering::Release);
            }
            b = wi as u64 * 32 + hi;
        }
        self.changes.fetch_add(1, Ordering::AcqRel);
    }

    /// Reads data-area blocks `[first, first + n)` into `buf`.
    pub fn read_data(&self, first: u64, buf: &mut [u8]) -> Result<()> {
        let at = self.header.data_offset + first * BLOCK;
        self.file
            .read_exact_at(buf, at)
            .map_err(io(&self.path, "read", at))
    }

    /// Writes whole blocks at `first` and marks them as overlay data.
    pub fn write_data(&self, first: u64, data: &[u8]) -> Result<()> {
        let at = self.header.data_offset + first * BLOCK;
        self.file
            .write_all_at(data, at)
            .map_err(io(&self.path, "write", at))?;
        self.set_state(first, data.len() as u64 / BLOCK, DATA);
        Ok(())
    }

    /// Marks `[first, first + n)` as zeros and releases their storage.
    pub fn zero(&self, first: u64, n: u64) -> Result<()> {
        self.set_state(first, n, ZERO);
        let at = self.header.data_offset + first * BLOCK;
        // SAFETY: fallocate on a valid descriptor.
        let r = unsafe {
            libc::fallocate(
                self.file.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                at as libc::off_t,
                (n * BLOCK) as libc::off_t,
            )
        };
        if r != 0 {
            // Not every filesystem punches holes: the state already says
            // zeros, the stale bytes are simply never read.
            tracing::debug!(path = %self.path.display(), "punch hole: {}", std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// The lock serializing read-modify-write of `block`.
    pub fn stripe(&self, block: u64) -> std::sync::MutexGuard<'_, ()> {
        self.stripes[(block % STRIPES as u64) as usize]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Makes every change made before this call durable (see the module doc).
    pub fn flush(&self) -> Result<()> {
        let _one = self.flush_lock.lock().unwrap_or_else(|p| p.into_inner());
        let gen = self.changes.load(Ordering::Acquire);
        if gen == self.synced.load(Ordering::Acquire) {
            // Every write bumps `changes`: nothing happened since the last
            // durable flush.
            return Ok(());
        }
        // Snapshot the changed state pages before syncing the data they
        // describe.
        let mut pages = Vec::new();
        for (p, d) in self.dirty.iter().enumerate() {
            if d.swap(false, Ordering::AcqRel) {
                let mut bytes = vec![0u8; BLOCK as usize];
                for (k, c) in bytes.chunks_exact_mut(8).enumerate() {
                    let wi = p * WORDS_PER_PAGE + k;
                    let w = self.words.get(wi).map_or(0, |w| w.load(Ordering::Acquire));
                    c.copy_from_slice(&w.to_le_bytes());
                }
                pages.push((p, bytes));
            }
        }
        let result = (|| {
            self.file
                .sync_data()
                .map_err(io(&self.path, "sync data", 0))?;
            if !pages.is_empty() {
                for (p, bytes) in &pages {
                    let at = self.header.state_offset + *p as u64 * BLOCK;
                    self.file.write_all_at(bytes, at).map_err(io(
                        &self.path,
                        "write state table",
                        at,
                    ))?;
                }
                self.file
                    .sync_data()
                    .map_err(io(&self.path, "sync state table", 0))?;
            }
            Ok(())
        })();
        match result {
            Ok(()) => {
                self.synced.store(gen, Ordering::Release);
                Ok(())
            }
            Err(e) => {
                for (p, _) in &pages {
                    self.dirty[*p].store(true, Ordering::Release);
                }
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(dir: &Path, blocks: u64, id: u8) -> Result<Overlay> {
        Overlay::open(
            &dir.join("o.overlay"),
            &dir.join("volume.toml"),
            blocks,
            [id; 32],
            false,
        )
    }

    #[test]
    fn states_persist_only_through_flush_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let o = open(dir.path(), 100, 1).unwrap();
        o.write_data(3, &[7u8; 8192]).unwrap();
        o.zero(40, 30).unwrap();
        assert_eq!(o.run(0, 100), (BASE, 3));
        assert_eq!(o.run(3, 97), (DATA, 2));
        assert_eq!(o.run(40, 60), (ZERO, 30));
        assert_eq!(o.run(70, 30), (BASE, 30));
        o.flush().unwrap();
        drop(o);
        let o = open(dir.path(), 100, 1).unwrap();
        assert_eq!(o.run(3, 97), (DATA, 2));
        assert_eq!(o.run(40, 60), (ZERO, 30));
        let mut b = vec![0u8; 8192];
        o.read_data(3, &mut b).unwrap();
        assert!(b.iter().all(|&x| x == 7));
        let info = Overlay::info(&dir.path().join("o.overlay")).unwrap();
        assert_eq!(
            (info.data_blocks, info.zero_blocks, info.in_use),
            (2, 30, true)
        );
    }

    #[test]
    fn second_opener_and_reset_are_refused_while_held() {
        let dir = tempfile::tempdir().unwrap();
        let o = open(dir.path(), 10, 1).unwrap();
        let e = open(dir.path(), 10, 1).unwrap_err();
        assert!(matches!(e, Error::OverlayBusy { .. }), "{e}");
        let e = Overlay::reset(&dir.path().join("o.overlay"), 10, [1; 32]).unwrap_err();
        assert!(e.to_string().contains("in use by another process"), "{e}");
        drop(o);
        Overlay::reset(&dir.path().join("o.overlay"), 10, [1; 32]).unwrap();
    }

    #[test]
    fn another_volume_is_refused_naming_both() {
        let dir = tempfile::tempdir().unwrap();
        drop(open(dir.path(), 10, 1).unwrap());
        let e = open(dir.path(), 10, 2).unwrap_err().to_string();
        assert!(
            e.contains(&hex(&[1; 32])) && e.contains(&hex(&[2; 32])),
            "{e}"
        );
        assert!(e.contains("mosaic overlay reset"), "{e}");
        // --discard-overlay starts over.
        let o = Overlay::open(
            &dir.path().join("o.overlay"),
            &dir.path().join("volume.toml"),
            10,
            [2; 32],
            true,
        )
        .unwrap();
        assert_eq!(o.run(0, 10), (BASE, 10));
    }

    #[test]
    fn corrupt_state_is_named() {
        let dir = tempfile::tempdir().unwrap();
        drop(open(dir.path(), 10, 1).unwrap());
        let p = dir.path().join("o.overlay");
        let f = OpenOptions::new().write(true).open(&p).unwrap();
        f.write_all_at(&[0b1100_0000], 4096).unwrap(); // block 3 = 0b11
        let e = open(dir.path(), 10, 1).unwrap_err().to_string();
        assert!(e.contains("invalid state for block 3"), "{e}");
    }
}

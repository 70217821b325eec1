//! File contents held while an update is made or applied.
//!
//! A content is a whole file as a reader sees it (holes read as zeros). It
//! lives in memory up to a limit, in an unlinked scratch file beyond it.
//! Windows of it are borrowed where the bytes are in memory and read where
//! they are not, so memory stays bounded by the frame and window sizes, not
//! by the file. Nothing is memory-mapped: a file truncated underneath gives
//! an error, never SIGBUS.

use std::borrow::Cow;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::wire::Hash;

/// One file's content.
pub enum Blob {
    Mem(Vec<u8>),
    Scratch { file: File, len: u64 },
}

impl std::fmt::Debug for Blob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self {
            Blob::Mem(_) => "mem",
            Blob::Scratch { .. } => "scratch",
        };
        write!(f, "Blob({kind}, {} bytes)", self.len())
    }
}

/// Pieces in which scratch-backed contents are hashed and copied.
pub const PIECE: u64 = 8 << 20;

impl Blob {
    pub fn len(&self) -> u64 {
        match self {
            Blob::Mem(v) => v.len() as u64,
            Blob::Scratch { len, .. } => *len,
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes `[off, off + len)`; the range must lie inside the content.
    pub fn window(&self, off: u64, len: u64) -> io::Result<Cow<'_, [u8]>> {
        let end = off
            .checked_add(len)
            .filter(|&e| e <= self.len())
            .ok_or_else(|| {
                io::Error::other(format!(
                    "window {off}+{len} outside a content of {} bytes",
                    self.len()
                ))
            })?;
        let (a, b) = (off as usize, end as usize);
        Ok(match self {
            Blob::Mem(v) => Cow::Borrowed(&v[a..b]),
            Blob::Scratch { file, .. } => {
                let mut v = vec![0u8; len as usize];
                file.read_exact_at(&mut v, off)?;
                Cow::Owned(v)
            }
        })
    }

    /// blake3 of the whole content.
    pub fn hash(&self) -> io::Result<Hash> {
        let mut h = blake3::Hasher::new();
        let mut off = 0;
        while off < self.len() {
            let n = PIECE.min(self.len() - off);
            let w = self.window(off, n)?;
            if w.len() >= 1 << 20 {
                h.update_rayon(&w);
            } else {
                h.update(&w);
            }
            off += n;
        }
        Ok(*h.finalize().as_bytes())
    }
}

/// Collects a content produced in order (a decoded differential, a file
/// read piece by piece): in memory up to `mem_limit`, else in an unlinked
/// scratch file in `dir`.
pub struct BlobSink {
    size: u64,
    written: u64,
    mem: Option<Vec<u8>>,
    file: Option<File>,
}

impl BlobSink {
    pub fn new(size: u64, mem_limit: u64, dir: &Path) -> io::Result<BlobSink> {
        if size <= mem_limit {
            Ok(BlobSink {
                size,
                written: 0,
                mem: Some(Vec::with_capacity(size as usize)),
                file: None,
            })
        } else {
            let f = tempfile::tempfile_in(dir)?;
            f.set_len(size)?;
            Ok(BlobSink {
                size,
                written: 0,
                mem: None,
                file: Some(f),
            })
        }
    }

    pub fn written(&self) -> u64 {
        self.written
    }

    pub fn push(&mut self, b: &[u8]) -> io::Result<()> {
        if self.written + b.len() as u64 > self.size {
            return Err(io::Error::other("content longer than announced"));
        }
        match (&mut self.mem, &self.file) {
            (Some(v), _) => v.extend_from_slice(b),
            (None, Some(f)) => f.write_all_at(b, self.written)?,
            (None, None) => unreachable!("a sink has memory or a file"),
        }
        self.written += b.len() as u64;
        Ok(())
    }

    pub fn finish(self) -> io::Result<Blob> {
        if self.written != self.size {
            return Err(io::Error::other(format!(
                "content is {} bytes, {} announced",
                self.written, self.size
            )));
        }
        Ok(match (self.mem, self.file) {
            (Some(v), _) => Blob::Mem(v),
            (None, Some(file)) => Blob::Scratch {
                file,
                len: self.size,
            },
            (None, None) => unreachable!("a sink has memory or a file"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sink_spills_to_scratch_and_windows_agree() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 31 % 251) as u8).collect();
        for limit in [1u64 << 30, 1000] {
            let mut s = BlobSink::new(data.len() as u64, limit, dir.path()).unwrap();
            for c in data.chunks(7777) {
                s.push(c).unwrap();
            }
            let b = s.finish().unwrap();
            assert_eq!(matches!(b, Blob::Scratch { .. }), limit == 1000);
            assert_eq!(&*b.window(5000, 20000).unwrap(), &data[5000..25000]);
            assert_eq!(b.hash().unwrap(), *blake3::hash(&data).as_bytes());
            assert!(b.window(99_999, 2).is_err());
        }
        let mut s = BlobSink::new(10, 100, dir.path()).unwrap();
        s.push(&[1; 5]).unwrap();
        assert!(s.push(&[1; 6]).is_err());
        assert!(s.finish().is_err());
    }
}

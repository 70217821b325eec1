//! The data region being written by the builder.
//!
//! Contents are gathered in a page-aligned buffer and written in large
//! pieces by a writer thread, so disk writes overlap reading and hashing
//! the next files (two buffers in turn). When the filesystem allows it the
//! pieces go out with `O_DIRECT`: on the machines we measured, buffered
//! writes of a multi-GB region run into dirty-page throttling at ~400 MB/s
//! while direct writes reach ~1.9 GB/s, and the build ends with an fsync
//! anyway. Block CVs are computed per piece, in parallel, at the piece's
//! region offset, before the piece is handed to the writer.

use crate::error::{Error, Result};
use crate::format::BLOCK_SIZE;
use crate::hash::{block_cv, Cv, BLOCK};
use rayon::prelude::*;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::thread::JoinHandle;

/// Bytes gathered before a write.
const BUF_PAGES: usize = 4096; // 16 MiB

#[repr(C, align(4096))]
#[derive(Clone, Copy)]
struct Page([u8; BLOCK]);

fn as_bytes(pages: &[Page]) -> &[u8] {
    // SAFETY: `Page` is a plain 4096-byte array with no padding, so the
    // slice's storage is `pages.len() * 4096` initialized bytes.
    unsafe { std::slice::from_raw_parts(pages.as_ptr().cast::<u8>(), std::mem::size_of_val(pages)) }
}

fn as_bytes_mut(pages: &mut [Page]) -> &mut [u8] {
    // SAFETY: as in `as_bytes`, with exclusive access through `&mut`.
    unsafe {
        std::slice::from_raw_parts_mut(
            pages.as_mut_ptr().cast::<u8>(),
            std::mem::size_of_val(pages),
        )
    }
}

struct Job {
    pages: Vec<Page>,
    len: usize,
    at: u64,
}

/// The writer thread: writes jobs in order, returns each buffer.
fn writer(
    file: File,
    mut direct: Option<File>,
    path: PathBuf,
    jobs: Receiver<Job>,
    done: SyncSender<Vec<Page>>,
) -> Result<()> {
    for job in jobs {
        let data = &as_bytes(&job.pages)[..job.len];
        let direct_ok = match &direct {
            Some(d) => d.write_all_at(data, job.at).is_ok(),
            None => false,
        };
        if !direct_ok {
            file.write_all_at(data, job.at)
                .map_err(Error::io(&path, "write"))?;
            direct = None; // a filesystem that refused O_DIRECT: buffered from now on
        }
        if done.send(job.pages).is_err() {
            break;
        }
    }
    Ok(())
}

pub(crate) struct DataSink {
    base: u64,
    pages: Vec<Page>,
    buf_len: usize,
    buf_start: u64,
    hash_inline: bool,
    pub(crate) cvs: Vec<Cv>,
    jobs: Option<SyncSender<Job>>,
    free: Receiver<Vec<Page>>,
    thread: Option<JoinHandle<Result<()>>>,
    out_path: PathBuf,
}

impl DataSink {
    /// A sink writing at `base` of `file`. `reopen` is a path of the same
    /// file to open again with `O_DIRECT` (when supported). `hash_inline`:
    /// compute block CVs as pieces are written.
    pub(crate) fn new(
        file: &File,
        reopen: Option<&Path>,
        base: u64,
        hash_inline: bool,
        out_path: &Path,
    ) -> Result<Self> {
        let direct = reopen.and_then(|p| {
            OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_DIRECT)
                .open(p)
                .ok()
        });
        let file = file
            .try_clone()
            .map_err(Error::io(out_path, "duplicate file handle"))?;
        let (jobs_tx, jobs_rx) = sync_channel::<Job>(1);
        let (free_tx, free_rx) = sync_channel::<Vec<Page>>(2);
        free_tx
            .send(vec![Page([0; BLOCK]); BUF_PAGES])
            .expect("channel has room");
        let path = out_path.to_owned();
        let thread = std::thread::Builder::new()
            .name("mosaic-writer".into())
            .spawn(move || writer(file, direct, path, jobs_rx, free_tx))
            .map_err(Error::io(out_path, "start the writer thread"))?;
        Ok(DataSink {
            base,
            pages: vec![Page([0; BLOCK]); BUF_PAGES],
            buf_len: 0,
            buf_start: 0,
            hash_inline,
            cvs: Vec::new(),
            jobs: Some(jobs_tx),
            free: free_rx,
            thread: Some(thread),
            out_path: out_path.to_owned(),
        })
    }

    /// Region offset where the next write lands.
    pub(crate) fn cursor(&self) -> u64 {
        self.buf_start + self.buf_len as u64
    }

    /// Appends `bytes` at the cursor, padding the last block with zeros;
    /// returns the region offset it was placed at.
    pub(crate) fn write(&mut self, mut bytes: &[u8]) -> Result<u64> {
        let at = self.cursor();
        let cap = BUF_PAGES * BLOCK;
        while !bytes.is_empty() {
            if self.buf_len == cap {
                self.flush()?;
            }
            let n = bytes.len().min(cap - self.buf_len);
            let from = self.buf_len;
            as_bytes_mut(&mut self.pages)[from..from + n].copy_from_slice(&bytes[..n]);
            self.buf_len += n;
            bytes = &bytes[n..];
        }
        let padded = self.buf_len.div_ceil(BLOCK) * BLOCK;
        let from = self.buf_len;
        as_bytes_mut(&mut self.pages)[from..padded].fill(0);
        self.buf_len = padded;
        Ok(at)
    }

    /// Moves the cursor back to `to` (forgetting what follows).
    pub(crate) fn rewind(&mut self, to: u64) {
        if to >= self.buf_start {
            self.buf_len = (to - self.buf_start) as usize;
        } else {
            // Already handed to the writer: later writes to the same
            // offsets are queued after it, so they win.
            self.buf_start = to;
            self.buf_len = 0;
            self.cvs.truncate((to / BLOCK_SIZE) as usize);
        }
    }

    fn writer_failed(&mut self) -> Error {
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(Err(e))) => e,
            _ => Error::Io {
                path: self.out_path.clone(),
                op: "write",
                source: std::io::Error::other("the writer thread stopped"),
            },
        }
    }

    /// Hands what is gathered to the writer.
    pub(crate) fn flush(&mut self) -> Result<()> {
        if self.buf_len == 0 {
            return Ok(());
        }
        let start = self.buf_start;
        if self.hash_inline {
            debug_assert_eq!(self.cvs.len() as u64, start / BLOCK_SIZE);
            let new: Vec<Cv> = as_bytes(&self.pages)[..self.buf_len]
                .par_chunks(BLOCK)
                .enumerate()
                .map(|(i, b)| block_cv(start + (i * BLOCK) as u64, b))
                .collect();
            self.cvs.extend(new);
        }
        let next = match self.free.recv() {
            Ok(p) => p,
            Err(_) => return Err(self.writer_failed()),
        };
        let pages = std::mem::replace(&mut self.pages, next);
        let job = Job {
            pages,
            len: self.buf_len,
            at: self.base + start,
        };
        let sent = self
            .jobs
            .as_ref()
            .map(|j| j.send(job).is_ok())
            .unwrap_or(false);
        if !sent {
            return Err(self.writer_failed());
        }
        self.buf_start += self.buf_len as u64;
        self.buf_len = 0;
        Ok(())
    }

    /// Flushes and waits until everything is written.
    pub(crate) fn finish(&mut self) -> Result<()> {
        self.flush()?;
        self.jobs = None; // closes the queue: the writer ends after the last job
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err(Error::Io {
                path: self.out_path.clone(),
                op: "write",
                source: std::io::Error::other("the writer thread panicked"),
            }),
            None => Ok(()),
        }
    }
}

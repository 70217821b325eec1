//! An in-memory, sparse export for tests, examples and benchmarks.
//!
//! Storage is a table of 4 KiB pages, each behind its own lock; a page
//! never written (or trimmed whole) holds no memory and is reported by
//! `block_status` as a hole that reads as zeros, like a sparse file. A
//! "poisoned" range fails every read that touches it with `Errno::Io` at
//! the first poisoned offset: fault injection for the error paths.

use std::ops::Range;
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::export::{Errno, Export, ExportError, Extent};

const PAGE: u64 = 4096;

type Page = Option<Box<[u8]>>;

pub struct MemoryExport {
    size: u64,
    pages: Vec<RwLock<Page>>,
    read_only: bool,
    poisoned: Option<Range<u64>>,
}

impl MemoryExport {
    /// An export of `size` bytes, all zeros (all holes).
    pub fn new(size: u64) -> MemoryExport {
        let count = usize::try_from(size.div_ceil(PAGE)).expect("size fits in memory");
        MemoryExport {
            size,
            pages: (0..count).map(|_| RwLock::new(None)).collect(),
            read_only: false,
            poisoned: None,
        }
    }

    /// An export holding `data`; pages of zeros are left as holes.
    pub fn from_bytes(data: &[u8]) -> MemoryExport {
        let e = MemoryExport::new(data.len() as u64);
        for (i, chunk) in data.chunks(PAGE as usize).enumerate() {
            if chunk.iter().any(|&b| b != 0) {
                let mut page = vec![0u8; PAGE as usize].into_boxed_slice();
                page[..chunk.len()].copy_from_slice(chunk);
                *e.write_page(i) = Some(page);
            }
        }
        e
    }

    /// Makes the export read-only (builder style).
    pub fn read_only(mut self) -> MemoryExport {
        self.read_only = true;
        self
    }

    /// Fails reads touching `range` with `Errno::Io` (builder style).
    pub fn poisoned(mut self, range: Range<u64>) -> MemoryExport {
        self.poisoned = Some(range);
        self
    }

    /// The whole content (for tests).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = vec![0u8; self.size as usize];
        self.copy_out(0, &mut v);
        v
    }

    /// Number of pages holding memory (for tests of trim and zeroing).
    pub fn allocated_pages(&self) -> usize {
        (0..self.pages.len())
            .filter(|&i| self.read_page(i).is_some())
            .count()
    }

    fn read_page(&self, i: usize) -> RwLockReadGuard<'_, Page> {
        // A panic while holding a page lock leaves plain bytes behind: the
        // data is still the data, so poisoning is ignored.
        self.pages[i].read().unwrap_or_else(|p| p.into_inner())
    }

    fn write_page(&self, i: usize) -> RwLockWriteGuard<'_, Page> {
        self.pages[i].write().unwrap_or_else(|p| p.into_inner())
    }

    fn check(&self, offset: u64, len: u64) -> Result<(), ExportError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(ExportError::new(
                Errno::Inval,
                format!(
                    "range {offset}+{len} beyond the {} bytes of the export",
                    self.size
                ),
            )
            .at(offset)),
        }
    }

    fn check_writable(&self, offset: u64, len: u64) -> Result<(), ExportError> {
        if self.read_only {
            return Err(ExportError::new(Errno::Perm, "read-only export"));
        }
        self.check(offset, len)
    }

    /// Calls `f(page index, offset in page, range in the caller's buffer)`
    /// for each page piece of `[offset, offset + len)`.
    fn pieces(offset: u64, len: u64, mut f: impl FnMut(usize, usize, Range<usize>)) {
        let mut done = 0u64;
        while done < len {
            let pos = offset + done;
            let in_page = pos % PAGE;
            let n = (PAGE - in_page).min(len - done);
            f(
                (pos / PAGE) as usize,
                in_page as usize,
                done as usize..(done + n) as usize,
            );
            done += n;
        }
    }

    fn copy_out(&self, offset: u64, buf: &mut [u8]) {
        Self::pieces(offset, buf.len() as u64, |i, at, r| {
            let page = self.read_page(i);
            match page.as_deref() {
                Some(p) => buf[r.clone()].copy_from_slice(&p[at..at + r.len()]),
                None => buf[r].fill(0),
            }
        });
    }

    /// Zeroes a range; whole pages are released when `release`.
    fn zero(&self, offset: u64, len: u64, release: bool) {
        Self::pieces(offset, len, |i, at, r| {
            let mut page = self.write_page(i);
            let whole = at == 0 && (r.len() as u64 == PAGE || i + 1 == self.pages.len());
            if release && whole {
                *page = None;
            } else if let Some(p) = page.as_deref_mut() {
                p[at..at + r.len()].fill(0);
            } else if !release {
                *page = Some(vec![0u8; PAGE as usize].into_boxed_slice());
            }
        });
    }
}

impl Export for MemoryExport {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), ExportError> {
        self.check(offset, buf.len() as u64)?;
        if let Some(p) = &self.poisoned {
            let end = offset + buf.len() as u64;
            if p.start < end && offset < p.end {
                let at = p.start.max(offset);
                return Err(ExportError::new(
                    Errno::Io,
                    format!("poisoned range {}..{} (fault injection)", p.start, p.end),
                )
                .at(at));
            }
        }
        self.copy_out(offset, buf);
        Ok(())
    }

    fn write_at(&self, offset: u64, data: &[u8], _fua: bool) -> Result<(), ExportError> {
        self.check_writable(offset, data.len() as u64)?;
        Self::pieces(offset, data.len() as u64, |i, at, r| {
            let mut page = self.write_page(i);
            let p = page.get_or_insert_with(|| vec![0u8; PAGE as usize].into_boxed_slice());
            p[at..at + r.len()].copy_from_slice(&data[r]);
        });
        Ok(())
    }

    fn flush(&self) -> Result<(), ExportError> {
        Ok(())
    }

    fn trim(&self, offset: u64, len: u64, _fua: bool) -> Result<(), ExportError> {
        self.check_writable(offset, len)?;
        self.zero(offset, len, true);
        Ok(())
    }

    fn write_zeroes(
        &self,
        offset: u64,
        len: u64,
        may_trim: bool,
        _fast_only: bool,
        _fua: bool,
    ) -> Result<(), ExportError> {
        self.check_writable(offset, len)?;
        self.zero(offset, len, may_trim);
        Ok(())
    }

    fn block_status(&self, offset: u64, len: u64) -> Result<Vec<Extent>, ExportError> {
        self.check(offset, len)?;
        let mut out: Vec<Extent> = Vec::new();
        Self::pieces(offset, len, |i, _, r| {
            let hole = self.read_page(i).is_none();
            let n = r.len() as u64;
            match out.last_mut() {
                Some(e) if e.hole == hole => e.len += n,
                _ => out.push(Extent {
                    len: n,
                    hole,
                    zero: hole,
                }),
            }
        });
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_round_trip() {
        let e = MemoryExport::new(5 * PAGE + 100);
        e.write_at(PAGE - 2, b"abcd", false).expect("write");
        let mut b = [0u8; 6];
        e.read_at(PAGE - 3, &mut b).expect("read");
        assert_eq!(&b, b"\0abcd\0");
        assert_eq!(e.allocated_pages(), 2);
        let st = e.block_status(0, 5 * PAGE + 100).expect("status");
        assert_eq!(
            st,
            vec![
                Extent {
                    len: 2 * PAGE,
                    hole: false,
                    zero: false
                },
                Extent {
                    len: 3 * PAGE + 100,
                    hole: true,
                    zero: true
                },
            ]
        );
        e.trim(0, 2 * PAGE, false).expect("trim");
        assert_eq!(e.allocated_pages(), 0);
        e.write_zeroes(5 * PAGE, 100, false, false, false)
            .expect("zero");
        assert_eq!(e.allocated_pages(), 1);
        e.write_zeroes(5 * PAGE, 100, true, false, false)
            .expect("zero");
        assert_eq!(e.allocated_pages(), 0);
        assert!(e.read_at(5 * PAGE, &mut [0u8; 101]).is_err());
    }

    #[test]
    fn poison_reports_first_bad_offset() {
        let e = MemoryExport::new(4 * PAGE).poisoned(PAGE..PAGE + 10);
        let err = e.read_at(0, &mut [0u8; 8192]).expect_err("poisoned");
        assert_eq!((err.errno, err.offset), (Errno::Io, Some(PAGE)));
        let err = e.read_at(PAGE + 5, &mut [0u8; 8]).expect_err("poisoned");
        assert_eq!(err.offset, Some(PAGE + 5));
        e.read_at(PAGE + 10, &mut [0u8; 8]).expect("clean");
    }
}

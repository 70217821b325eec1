//! Reply buffers, recycled per connection.
//!
//! A read reply is one buffer: header(s) then the data, read in place. A
//! fresh buffer costs a zeroing pass and page faults for every page (a
//! third of the server's time at 1 MiB reads), so buffers come back here
//! once written and are reused. Buffers are kept in power-of-two size
//! classes, each fully initialized (its `len` is its size), so reuse needs
//! no zeroing; how much of one a reply uses travels with the reply.

use std::sync::Mutex;

/// Smallest class: 8 KiB (one 4 KiB read with its headers fits).
const MIN_CLASS_SHIFT: u32 = 13;
/// Largest class kept for reuse: 16 MiB. Larger buffers are freed.
const MAX_KEPT_SHIFT: u32 = 24;
/// Bytes kept per class (at least one buffer).
const KEPT_BYTES_PER_CLASS: usize = 16 << 20;
/// Buffers kept per class at most.
const KEPT_COUNT_PER_CLASS: usize = 64;
/// Bytes kept in all classes together (per connection).
const KEPT_BYTES_TOTAL: usize = 32 << 20;

const CLASSES: usize = (MAX_KEPT_SHIFT - MIN_CLASS_SHIFT + 1) as usize;

pub(crate) struct BufPool {
    inner: Mutex<Kept>,
}

struct Kept {
    classes: [Vec<Vec<u8>>; CLASSES],
    bytes: usize,
}

fn class_of(len: usize) -> (u32, usize) {
    let shift = len
        .max(1)
        .next_power_of_two()
        .trailing_zeros()
        .max(MIN_CLASS_SHIFT);
    (shift, (shift - MIN_CLASS_SHIFT) as usize)
}

impl BufPool {
    pub(crate) fn new() -> BufPool {
        BufPool {
            inner: Mutex::new(Kept {
                classes: std::array::from_fn(|_| Vec::new()),
                bytes: 0,
            }),
        }
    }

    /// A zero-initialized-or-reused buffer whose `len()` is at least `len`
    /// (its contents are unspecified).
    pub(crate) fn get(&self, len: usize) -> Vec<u8> {
        let (shift, class) = class_of(len);
        if shift <= MAX_KEPT_SHIFT {
            let mut kept = self.lock();
            if let Some(buf) = kept.classes[class].pop() {
                kept.bytes -= buf.len();
                return buf;
            }
            drop(kept);
            // calloc: large sizes come as fresh zero pages, faulted lazily.
            return vec![0u8; 1 << shift];
        }
        vec![0u8; len]
    }

    /// Returns a buffer from [`get`](Self::get) for reuse.
    pub(crate) fn put(&self, buf: Vec<u8>) {
        let len = buf.len();
        if len < 1 << MIN_CLASS_SHIFT || !len.is_power_of_two() {
            return;
        }
        let (shift, class) = class_of(len);
        if shift > MAX_KEPT_SHIFT {
            return;
        }
        let keep = (KEPT_BYTES_PER_CLASS >> shift).clamp(1, KEPT_COUNT_PER_CLASS);
        let mut kept = self.lock();
        if kept.classes[class].len() < keep && kept.bytes + len <= KEPT_BYTES_TOTAL {
            kept.bytes += len;
            kept.classes[class].push(buf);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Kept> {
        // The lists hold plain buffers and a byte count updated with them:
        // a panic elsewhere cannot leave them inconsistent.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_reused_by_class() {
        let pool = BufPool::new();
        let a = pool.get(4096 + 28);
        assert_eq!(a.len(), 8192);
        let ptr = a.as_ptr();
        pool.put(a);
        let b = pool.get(5000);
        assert_eq!(b.as_ptr(), ptr);
        assert!(pool.get(8193).len() == 16384);
        // Beyond the largest class kept: exact size, not kept.
        let big = pool.get((16 << 20) + 1);
        assert_eq!(big.len(), (16 << 20) + 1);
        pool.put(big);
        // Small odd buffers are not taken.
        pool.put(vec![0u8; 16]);
        assert_eq!(pool.get(1).len(), 8192);
    }

    #[test]
    fn total_kept_is_bounded() {
        let pool = BufPool::new();
        let bufs: Vec<Vec<u8>> = (0..4).map(|_| pool.get(16 << 20)).collect();
        for b in bufs {
            pool.put(b);
        }
        // One 16 MiB buffer per class at most, 32 MiB in all.
        assert_eq!(pool.lock().bytes, 16 << 20);
        let small: Vec<Vec<u8>> = (0..64).map(|_| pool.get(1 << 20)).collect();
        for b in small {
            pool.put(b);
        }
        assert!(pool.lock().bytes <= KEPT_BYTES_TOTAL);
        assert_eq!(pool.lock().bytes, KEPT_BYTES_TOTAL);
    }
}

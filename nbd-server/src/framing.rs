//! Buffered input from the client. The handshake and the transmission
//! phase share one buffer, so bytes a client sends early are never lost
//! between the phases. Write payloads are read straight into the buffer
//! and handed out as `Bytes` without a copy.

use std::io;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Spare room kept for each read: enough for many pipelined request
/// headers in one system call.
pub(crate) const READ_AHEAD: usize = 64 * 1024;

pub(crate) struct InBuf {
    buf: BytesMut,
}

impl InBuf {
    pub(crate) fn new() -> Self {
        InBuf {
            buf: BytesMut::with_capacity(READ_AHEAD),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.buf.len()
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        &self.buf
    }

    /// Makes room for the next read so that `want` bytes in total fit
    /// (and at least some read-ahead), and returns the buffer to read into.
    pub(crate) fn spare_for(&mut self, want: usize) -> &mut BytesMut {
        let need = want.saturating_sub(self.buf.len()).max(READ_AHEAD / 4);
        if self.buf.capacity() - self.buf.len() < need {
            self.buf.reserve(need.max(READ_AHEAD));
        }
        &mut self.buf
    }

    /// Makes at least `n` bytes available from `r`. `Ok(false)`: the stream
    /// ended cleanly before any byte of this frame; a stream ending inside
    /// the frame is `UnexpectedEof`. Cancel-safe: bytes read stay buffered.
    pub(crate) async fn fill<R: AsyncRead + Unpin>(
        &mut self,
        r: &mut R,
        n: usize,
    ) -> io::Result<bool> {
        while self.buf.len() < n {
            let read = r.read_buf(self.spare_for(n)).await?;
            if read == 0 {
                if self.buf.is_empty() {
                    return Ok(false);
                }
                return Err(truncated(self.buf.len(), n));
            }
        }
        Ok(true)
    }

    /// Reads exactly `n` bytes; a stream ending first is `UnexpectedEof`.
    pub(crate) async fn read_exact<R: AsyncRead + Unpin>(
        &mut self,
        r: &mut R,
        n: usize,
    ) -> io::Result<Bytes> {
        if !self.fill(r, n).await? && n > 0 {
            return Err(truncated(0, n));
        }
        Ok(self.buf.split_to(n).freeze())
    }

    /// Reads `N` bytes into an array; `None` on a clean end of stream.
    pub(crate) async fn read_array<R: AsyncRead + Unpin, const N: usize>(
        &mut self,
        r: &mut R,
    ) -> io::Result<Option<[u8; N]>> {
        if !self.fill(r, N).await? {
            return Ok(None);
        }
        Ok(self.take_array())
    }

    /// Reads and throws away `n` bytes without holding them in memory.
    pub(crate) async fn discard<R: AsyncRead + Unpin>(
        &mut self,
        r: &mut R,
        mut n: u64,
    ) -> io::Result<()> {
        while n > 0 {
            let step = n.min(READ_AHEAD as u64) as usize;
            self.read_exact(r, step).await?;
            n -= step as u64;
        }
        Ok(())
    }

    /// `N` bytes if that many are buffered (no I/O).
    pub(crate) fn take_array<const N: usize>(&mut self) -> Option<[u8; N]> {
        if self.buf.len() < N {
            return None;
        }
        let mut a = [0u8; N];
        a.copy_from_slice(&self.buf[..N]);
        self.buf.advance(N);
        Some(a)
    }

    /// `n` bytes if that many are buffered (no I/O, no copy).
    pub(crate) fn take_bytes(&mut self, n: usize) -> Option<Bytes> {
        (self.buf.len() >= n).then(|| self.buf.split_to(n).freeze())
    }
}

fn truncated(have: usize, want: usize) -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        format!("connection closed {have} bytes into a {want}-byte message"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_across_reads_and_eof() {
        let (mut a, mut b) = tokio::io::duplex(8);
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            a.write_all(b"0123456789abcdefXYZ").await.expect("write");
        });
        let mut r = InBuf::new();
        assert_eq!(
            &r.read_array::<_, 4>(&mut b)
                .await
                .expect("io")
                .expect("data"),
            b"0123"
        );
        assert_eq!(
            &r.read_exact(&mut b, 10).await.expect("io")[..],
            b"456789abcd"
        );
        r.discard(&mut b, 2).await.expect("discard");
        writer.await.expect("join");
        // "XYZ" left: a 4-byte frame is cut short.
        let err = r.read_array::<_, 4>(&mut b).await.expect_err("truncated");
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[tokio::test]
    async fn clean_eof_is_none() {
        let (a, mut b) = tokio::io::duplex(8);
        drop(a);
        let mut r = InBuf::new();
        assert!(r.read_array::<_, 4>(&mut b).await.expect("io").is_none());
    }
}

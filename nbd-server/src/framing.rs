//! Buffered reading of the client's byte stream: the handshake and the
//! transmission phase share one buffer, so bytes a client sends early are
//! never lost between the phases. Write payloads are read straight into
//! the buffer and handed out as `Bytes` without a copy.

use std::io;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

/// How much to read ahead when the buffer runs dry: enough for many
/// pipelined request headers in one system call.
const READ_AHEAD: usize = 64 * 1024;

pub(crate) struct FramedReader<R> {
    inner: R,
    buf: BytesMut,
}

impl<R: AsyncRead + Unpin> FramedReader<R> {
    pub(crate) fn new(inner: R) -> Self {
        FramedReader {
            inner,
            buf: BytesMut::with_capacity(READ_AHEAD),
        }
    }

    /// Makes at least `n` bytes available. `Ok(false)`: the stream ended
    /// cleanly before any byte of this frame; a stream ending inside the
    /// frame is `UnexpectedEof`. Cancel-safe: bytes read stay buffered.
    pub(crate) async fn fill(&mut self, n: usize) -> io::Result<bool> {
        while self.buf.len() < n {
            let missing = n - self.buf.len();
            if self.buf.capacity() - self.buf.len() < missing {
                self.buf.reserve(missing.max(READ_AHEAD));
            }
            let read = self.inner.read_buf(&mut self.buf).await?;
            if read == 0 {
                if self.buf.is_empty() {
                    return Ok(false);
                }
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "connection closed {} bytes into a {n}-byte message",
                        self.buf.len()
                    ),
                ));
            }
        }
        Ok(true)
    }

    /// Reads exactly `n` bytes; a stream ending first is `UnexpectedEof`.
    pub(crate) async fn read_exact(&mut self, n: usize) -> io::Result<Bytes> {
        if !self.fill(n).await? && n > 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("connection closed before a {n}-byte message"),
            ));
        }
        Ok(self.buf.split_to(n).freeze())
    }

    /// Reads `N` bytes into an array.
    pub(crate) async fn read_array<const N: usize>(&mut self) -> io::Result<Option<[u8; N]>> {
        if !self.fill(N).await? {
            return Ok(None);
        }
        let mut a = [0u8; N];
        a.copy_from_slice(&self.buf[..N]);
        self.buf.advance(N);
        Ok(Some(a))
    }

    /// `N` bytes if that many are already buffered (no I/O).
    pub(crate) fn take_buffered<const N: usize>(&mut self) -> Option<[u8; N]> {
        if self.buf.len() < N {
            return None;
        }
        let mut a = [0u8; N];
        a.copy_from_slice(&self.buf[..N]);
        self.buf.advance(N);
        Some(a)
    }

    /// `n` bytes if that many are already buffered (no I/O, no copy).
    pub(crate) fn take_buffered_bytes(&mut self, n: usize) -> Option<Bytes> {
        (self.buf.len() >= n).then(|| self.buf.split_to(n).freeze())
    }

    /// Reads and throws away `n` bytes without holding them in memory.
    pub(crate) async fn discard(&mut self, mut n: u64) -> io::Result<()> {
        while n > 0 {
            let step = n.min(READ_AHEAD as u64) as usize;
            self.read_exact(step).await?;
            n -= step as u64;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_across_reads_and_eof() {
        let (mut a, b) = tokio::io::duplex(8);
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            a.write_all(b"0123456789abcdefXYZ").await.expect("write");
        });
        let mut r = FramedReader::new(b);
        assert_eq!(
            &r.read_array::<4>().await.expect("io").expect("data"),
            b"0123"
        );
        assert_eq!(&r.read_exact(10).await.expect("io")[..], b"456789abcd");
        r.discard(2).await.expect("discard");
        writer.await.expect("join");
        // 4 bytes left ("fXYZ" minus discarded "ef" = "XYZ"): a 4-byte frame is cut.
        let err = r.read_array::<4>().await.expect_err("truncated");
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[tokio::test]
    async fn clean_eof_is_none() {
        let (a, b) = tokio::io::duplex(8);
        drop(a);
        let mut r = FramedReader::new(b);
        assert!(r.read_array::<4>().await.expect("io").is_none());
    }
}

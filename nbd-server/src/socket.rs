//! The socket operations the transmission loop needs, for both Unix and
//! TCP connections: an `AsyncRead` half (tokio's read path notices a short
//! read and waits for the next readiness event instead of trying again),
//! and a write half that is written without blocking.

use std::future::Future;
use std::io::{self, IoSlice};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{tcp, unix, TcpStream, UnixStream};

pub(crate) trait Socket: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    type Read: AsyncRead + Unpin + Send + 'static;
    type Write: WriteHalf;
    fn into_halves(self) -> (Self::Read, Self::Write);
}

pub(crate) trait WriteHalf: AsyncWrite + Unpin + Send + 'static {
    fn writable(&self) -> impl Future<Output = io::Result<()>> + Send;
    fn try_write_slices(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize>;
}

macro_rules! socket_impl {
    ($stream:ty, $read:ty, $write:ty) => {
        impl Socket for $stream {
            type Read = $read;
            type Write = $write;
            fn into_halves(self) -> ($read, $write) {
                self.into_split()
            }
        }

        impl WriteHalf for $write {
            fn writable(&self) -> impl Future<Output = io::Result<()>> + Send {
                <$write>::writable(self)
            }
            fn try_write_slices(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
                self.try_write_vectored(bufs)
            }
        }
    };
}

socket_impl!(UnixStream, unix::OwnedReadHalf, unix::OwnedWriteHalf);
socket_impl!(TcpStream, tcp::OwnedReadHalf, tcp::OwnedWriteHalf);

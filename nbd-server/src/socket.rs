//! The non-blocking socket operations the transmission loop needs, for
//! both Unix and TCP connections.

use std::future::Future;
use std::io::{self, IoSlice};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpStream, UnixStream};

pub(crate) trait Socket: AsyncRead + AsyncWrite + Unpin + Send + Sync + 'static {
    fn readable(&self) -> impl Future<Output = io::Result<()>> + Send;
    fn writable(&self) -> impl Future<Output = io::Result<()>> + Send;
    fn try_read_into(&self, buf: &mut BytesMut) -> io::Result<usize>;
    fn try_write_slices(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize>;
}

macro_rules! socket_impl {
    ($t:ty) => {
        impl Socket for $t {
            fn readable(&self) -> impl Future<Output = io::Result<()>> + Send {
                <$t>::readable(self)
            }
            fn writable(&self) -> impl Future<Output = io::Result<()>> + Send {
                <$t>::writable(self)
            }
            fn try_read_into(&self, buf: &mut BytesMut) -> io::Result<usize> {
                self.try_read_buf(buf)
            }
            fn try_write_slices(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
                self.try_write_vectored(bufs)
            }
        }
    };
}

socket_impl!(UnixStream);
socket_impl!(TcpStream);

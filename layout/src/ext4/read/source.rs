//! The seam between the reader and the bytes: anything that can fill a
//! buffer from an offset (a file, a byte slice, later the volume as the
//! guest left it: base image plus overlay).

use std::io;
use std::sync::Arc;

/// Exact reads at an offset: `buf` is filled completely or an error is
/// returned (`UnexpectedEof` when the source ends first).
pub trait ReadAt {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
}

impl ReadAt for std::fs::File {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(self, buf, offset)
    }
}

impl ReadAt for [u8] {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let start = usize::try_from(offset).ok().filter(|&s| s <= self.len());
        let src = start.and_then(|s| self.get(s..s.checked_add(buf.len())?));
        match src {
            Some(src) => {
                buf.copy_from_slice(src);
                Ok(())
            }
            None => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("the image ends at byte {}", self.len()),
            )),
        }
    }
}

impl ReadAt for Vec<u8> {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.as_slice().read_at(offset, buf)
    }
}

impl<T: ReadAt + ?Sized> ReadAt for &T {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        (**self).read_at(offset, buf)
    }
}

impl<T: ReadAt + ?Sized> ReadAt for Box<T> {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        (**self).read_at(offset, buf)
    }
}

impl<T: ReadAt + ?Sized> ReadAt for Arc<T> {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        (**self).read_at(offset, buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_read_exactly_or_fail() {
        let v: Vec<u8> = (0..10).collect();
        let mut b = [0u8; 3];
        v.read_at(7, &mut b).unwrap();
        assert_eq!(b, [7, 8, 9]);
        assert!(v.read_at(8, &mut b).is_err());
        assert!(v.read_at(u64::MAX, &mut b).is_err());
        assert!(v.read_at(10, &mut []).is_ok());
        assert!(v.read_at(11, &mut []).is_err());
    }
}

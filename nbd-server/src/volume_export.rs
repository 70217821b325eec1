//! `volume::Volume` as an export.

use crate::export::{Errno, Export, ExportError, Extent};
use volume::{ErrorKind, Volume};

fn convert(e: volume::Error) -> ExportError {
    let errno = match e.kind() {
        ErrorKind::Io => Errno::Io,
        ErrorKind::Invalid => Errno::Inval,
        ErrorKind::NoSpace => Errno::NoSpc,
        ErrorKind::ReadOnly => Errno::Perm,
        ErrorKind::NotSupported => Errno::NotSup,
    };
    ExportError {
        errno,
        offset: e.volume_offset(),
        message: e.to_string(),
    }
}

/// The most runs one block-status reply carries.
const MAX_RUNS: usize = 1024;

impl Export for Volume {
    fn size(&self) -> u64 {
        Volume::size(self)
    }
    fn read_only(&self) -> bool {
        Volume::read_only(self)
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), ExportError> {
        Volume::read_at(self, offset, buf).map_err(convert)
    }
    fn write_at(&self, offset: u64, data: &[u8], fua: bool) -> Result<(), ExportError> {
        Volume::write_at(self, offset, data, fua).map_err(convert)
    }
    fn flush(&self) -> Result<(), ExportError> {
        Volume::flush(self).map_err(convert)
    }
    fn trim(&self, offset: u64, len: u64, fua: bool) -> Result<(), ExportError> {
        Volume::trim(self, offset, len, fua).map_err(convert)
    }
    fn write_zeroes(
        &self,
        offset: u64,
        len: u64,
        may_trim: bool,
        fast_only: bool,
        fua: bool,
    ) -> Result<(), ExportError> {
        Volume::write_zeroes(self, offset, len, may_trim, fast_only, fua).map_err(convert)
    }
    fn block_status(&self, offset: u64, len: u64) -> Result<Vec<Extent>, ExportError> {
        Ok(Volume::block_status(self, offset, len, MAX_RUNS)
            .map_err(convert)?
            .into_iter()
            .map(|e| Extent {
                len: e.len,
                hole: e.hole,
                zero: e.zero,
            })
            .collect())
    }
    fn cache(&self, offset: u64, len: u64) -> Result<(), ExportError> {
        // Reading verifies and fills the block cache.
        let end = offset.saturating_add(len).min(Volume::size(self));
        let mut buf = vec![0u8; 1 << 20];
        let mut pos = offset;
        while pos < end {
            let n = (end - pos).min(buf.len() as u64) as usize;
            Volume::read_at(self, pos, &mut buf[..n]).map_err(convert)?;
            pos += n as u64;
        }
        Ok(())
    }
}

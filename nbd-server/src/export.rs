//! The seam between the protocol and the block device: what an export must
//! do. `volume::Volume` implements it (see `volume_export.rs`); tests use an
//! in-memory export.
//!
//! Every method takes `&self`: one export serves many connections and many
//! in-flight requests at once. The methods are blocking (positioned file
//! I/O that normally hits the page cache); the server calls them from its
//! own tasks and moves long ones off the async workers.

/// The NBD error a failed request reports (`NBD_E*` on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Errno {
    /// NBD_EPERM: writing to a read-only export.
    Perm,
    /// NBD_EIO: an I/O or verification failure.
    Io,
    /// NBD_ENOMEM.
    NoMem,
    /// NBD_EINVAL: bad offset, length or flags.
    Inval,
    /// NBD_ENOSPC: a write past the end of the export.
    NoSpc,
    /// NBD_EOVERFLOW: a request larger than the server accepts.
    Overflow,
    /// NBD_ENOTSUP: the export cannot do this (e.g. FAST_ZERO that is not fast).
    NotSup,
    /// NBD_ESHUTDOWN: the server is shutting down.
    Shutdown,
}

impl Errno {
    /// The value on the wire (doc/proto.md, "Error values").
    pub fn wire(self) -> u32 {
        match self {
            Errno::Perm => 1,
            Errno::Io => 5,
            Errno::NoMem => 12,
            Errno::Inval => 22,
            Errno::NoSpc => 28,
            Errno::Overflow => 75,
            Errno::NotSup => 95,
            Errno::Shutdown => 108,
        }
    }
}

/// A failed export operation: the errno for the client, the volume offset
/// it concerns (sent as NBD_REPLY_TYPE_ERROR_OFFSET when known and inside
/// the request) and a message for the log and the structured error reply.
#[derive(Debug, Clone)]
pub struct ExportError {
    pub errno: Errno,
    pub offset: Option<u64>,
    pub message: String,
}

impl ExportError {
    pub fn new(errno: Errno, message: impl Into<String>) -> ExportError {
        ExportError {
            errno,
            offset: None,
            message: message.into(),
        }
    }
    pub fn at(mut self, offset: u64) -> ExportError {
        self.offset = Some(offset);
        self
    }
}

impl std::fmt::Display for ExportError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ExportError {}

/// One run of a block-status answer (`base:allocation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub len: u64,
    /// NBD_STATE_HOLE: no storage allocated (reads as zeros).
    pub hole: bool,
    /// NBD_STATE_ZERO: reads as zeros.
    pub zero: bool,
}

/// A block device the server can export.
pub trait Export: Send + Sync + 'static {
    /// Size in bytes.
    fn size(&self) -> u64;
    /// No overlay: writes, trims and zeroing are refused with EPERM and the
    /// export is advertised NBD_FLAG_READ_ONLY.
    fn read_only(&self) -> bool;
    /// Fills `buf` with the bytes at `offset` (inside the export; any
    /// alignment). Bytes are only returned once verified.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), ExportError>;
    /// Writes `data` at `offset`; with `fua`, durable before returning.
    fn write_at(&self, offset: u64, data: &[u8], fua: bool) -> Result<(), ExportError>;
    /// Makes every write that returned before this call durable.
    fn flush(&self) -> Result<(), ExportError>;
    /// Discards `[offset, offset + len)`: afterwards it reads as zeros.
    fn trim(&self, offset: u64, len: u64, fua: bool) -> Result<(), ExportError>;
    /// Zeroes `[offset, offset + len)`. `may_trim`: storage may be released
    /// (no NBD_CMD_FLAG_NO_HOLE). `fast_only`: fail with `Errno::NotSup`
    /// instead of writing zeros slowly (NBD_CMD_FLAG_FAST_ZERO).
    fn write_zeroes(
        &self,
        offset: u64,
        len: u64,
        may_trim: bool,
        fast_only: bool,
        fua: bool,
    ) -> Result<(), ExportError>;
    /// Allocation state of `[offset, offset + len)` from `offset` on, in
    /// order; the runs may stop short of `len` but cover at least one byte.
    fn block_status(&self, offset: u64, len: u64) -> Result<Vec<Extent>, ExportError>;
    /// Hint: read `[offset, offset + len)` into caches (NBD_CMD_CACHE).
    fn cache(&self, offset: u64, len: u64) -> Result<(), ExportError> {
        let _ = (offset, len);
        Ok(())
    }
}

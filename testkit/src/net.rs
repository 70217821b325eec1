//! NBD addresses and small clients over a Unix socket: the `nbd` crate as
//! an independent client ([`NbdConn`]) and raw transmission-phase requests
//! after its handshake ([`RawConn`]).

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// `nbd+unix:///EXPORT?socket=PATH`.
pub fn uri(sock: &Path, export: &str) -> String {
    format!("nbd+unix:///{export}?socket={}", sock.display())
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("a bound address").port()
}

/// One connection made with the `nbd` crate (oldstyle EXPORT_NAME
/// handshake, simple replies).
pub struct NbdConn {
    pub export: nbd::Export,
    client: nbd::client::NbdClient<UnixStream>,
}

impl NbdConn {
    pub fn connect(sock: &Path, name: &str) -> std::io::Result<NbdConn> {
        let mut s = UnixStream::connect(sock)?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        let export = nbd::client::handshake(&mut s, name.as_bytes())?;
        let client = nbd::client::NbdClient::new(s, &export);
        Ok(NbdConn { export, client })
    }

    /// Reads `len` bytes at `offset` (one request per MiB).
    pub fn read(&mut self, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
        let mut out = vec![0u8; len];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(1 << 20);
            self.client.seek(SeekFrom::Start(offset + done as u64))?;
            self.client.read_exact(&mut out[done..done + n])?;
            done += n;
        }
        Ok(out)
    }

    pub fn write(&mut self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        self.client.seek(SeekFrom::Start(offset))?;
        self.client.write_all(data)
    }

    pub fn flush(&mut self) -> std::io::Result<()> {
        self.client.flush()
    }
}

/// A connection speaking raw transmission-phase NBD after the `nbd`
/// crate's handshake (simple replies): for malformed or unusual requests.
pub struct RawConn {
    pub export: nbd::Export,
    pub s: UnixStream,
}

impl RawConn {
    pub fn connect(sock: &Path, name: &str) -> std::io::Result<RawConn> {
        let mut s = UnixStream::connect(sock)?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        let export = nbd::client::handshake(&mut s, name.as_bytes())?;
        Ok(RawConn { export, s })
    }

    /// Sends one request header (and `payload`, which may be shorter than
    /// `len` on purpose).
    pub fn request(
        &mut self,
        flags: u16,
        cmd: u16,
        handle: u64,
        offset: u64,
        len: u32,
        payload: &[u8],
    ) -> std::io::Result<()> {
        let mut h = Vec::with_capacity(28 + payload.len());
        h.extend_from_slice(&0x2560_9513u32.to_be_bytes());
        h.extend_from_slice(&flags.to_be_bytes());
        h.extend_from_slice(&cmd.to_be_bytes());
        h.extend_from_slice(&handle.to_be_bytes());
        h.extend_from_slice(&offset.to_be_bytes());
        h.extend_from_slice(&len.to_be_bytes());
        h.extend_from_slice(payload);
        self.s.write_all(&h)
    }

    /// Reads one simple reply header: (error, handle).
    pub fn reply(&mut self) -> std::io::Result<(u32, u64)> {
        let mut b = [0u8; 16];
        self.s.read_exact(&mut b)?;
        let be32 = |at: usize| u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
        let magic = be32(0);
        if magic != 0x6744_6698 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("reply magic {magic:#x}"),
            ));
        }
        let mut handle = [0u8; 8];
        handle.copy_from_slice(&b[8..16]);
        Ok((be32(4), u64::from_be_bytes(handle)))
    }

    /// A read request answered without error: its bytes.
    pub fn read(&mut self, handle: u64, offset: u64, len: u32) -> std::io::Result<Vec<u8>> {
        self.request(0, 0, handle, offset, len, &[])?;
        let (err, h) = self.reply()?;
        if err != 0 || h != handle {
            return Err(std::io::Error::other(format!(
                "read {offset}+{len}: error {err}, handle {h} (sent {handle})"
            )));
        }
        let mut out = vec![0u8; len as usize];
        self.s.read_exact(&mut out)?;
        Ok(out)
    }
}

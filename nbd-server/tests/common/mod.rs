//! The protocol tests' own harness: a server on its own tokio runtime on a
//! temporary Unix socket, exports for the tests, and a tiny blocking NBD
//! client that speaks raw bytes so the tests can check every field. What
//! is not about this crate's server (tools with deadlines, NBD URIs,
//! deterministic bytes) comes from the workspace's `testkit`, re-exported
//! here.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

pub use testkit::*;

use nbd_server::proto::*;
use nbd_server::{
    Errno, Error, Export, ExportConfig, ExportError, Extent, Listen, MemoryExport, Server,
    ServerConfig,
};

/// A running server; `stop()` shuts it down and returns `run()`'s result.
pub struct TestServer {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    rt: tokio::runtime::Runtime,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), Error>>>,
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

impl TestServer {
    pub fn start(exports: Vec<ExportConfig>) -> TestServer {
        Self::start_with(exports, |_| {})
    }

    pub fn start_with(
        exports: Vec<ExportConfig>,
        tweak: impl FnOnce(&mut ServerConfig),
    ) -> TestServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let socket = dir.path().join("nbd.sock");
        let mut config = ServerConfig {
            exports,
            listeners: vec![Listen::Unix(socket.clone())],
            ..ServerConfig::default()
        };
        tweak(&mut config);
        let rt = runtime();
        let server = rt.block_on(Server::bind(config)).expect("bind");
        assert!(
            socket.exists(),
            "the socket file exists once bind() returns"
        );
        let (tx, rx) = tokio::sync::oneshot::channel();
        let task = rt.spawn(server.run(async move {
            let _ = rx.await;
        }));
        TestServer {
            dir,
            socket,
            rt,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    /// Signals shutdown (without waiting).
    pub fn signal_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    /// Shuts down and waits for `run()` to return.
    pub fn stop(mut self) -> Result<(), Error> {
        self.signal_shutdown();
        let task = self.task.take().expect("stopped once");
        self.rt.block_on(task).expect("run() does not panic")
    }

    /// `nbd+unix:///EXPORT?socket=...` on this server.
    pub fn uri(&self, export: &str) -> String {
        testkit::uri(&self.socket, export)
    }

    pub fn connect(&self) -> Raw {
        Raw::connect(&self.socket)
    }
}

/// The standard pair of exports: "first" (1 MiB, writable) and "second"
/// (64 KiB, read-only, with a description).
pub fn two_exports() -> (Arc<MemoryExport>, Arc<MemoryExport>, Vec<ExportConfig>) {
    let first = Arc::new(MemoryExport::new(1 << 20));
    let mut second_data = vec![0u8; 64 * 1024];
    for (i, b) in second_data.iter_mut().enumerate() {
        *b = (i % 253) as u8 + 1;
    }
    let second = Arc::new(MemoryExport::from_bytes(&second_data).read_only());
    let exports = vec![
        ExportConfig {
            name: "first".into(),
            description: String::new(),
            export: first.clone(),
        },
        ExportConfig {
            name: "second".into(),
            description: "the read-only one".into(),
            export: second.clone(),
        },
    ];
    (first, second, exports)
}

/// An export that blocks reads until released, and counts flushes: for
/// tests of what happens to requests in flight.
pub struct GatedExport {
    pub inner: MemoryExport,
    pub entered: Mutex<mpsc::Sender<u64>>,
    pub release: Mutex<mpsc::Receiver<()>>,
    pub flushes: std::sync::atomic::AtomicUsize,
}

impl GatedExport {
    /// The export, a receiver told the offset of each read entering, and
    /// a sender releasing one read per message.
    pub fn new(size: u64) -> (Arc<GatedExport>, mpsc::Receiver<u64>, mpsc::Sender<()>) {
        let (entered_tx, entered_rx) = mpsc::channel();
        let (release_tx, release_rx) = mpsc::channel();
        let e = Arc::new(GatedExport {
            inner: MemoryExport::from_bytes(&pattern(size as usize, 7)),
            entered: Mutex::new(entered_tx),
            release: Mutex::new(release_rx),
            flushes: Default::default(),
        });
        (e, entered_rx, release_tx)
    }
}

impl Export for GatedExport {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn read_only(&self) -> bool {
        false
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), ExportError> {
        let _ = self.entered.lock().expect("lock").send(offset);
        self.release
            .lock()
            .expect("lock")
            .recv_timeout(Duration::from_secs(30))
            .map_err(|_| ExportError::new(Errno::Io, "gate never released"))?;
        self.inner.read_at(offset, buf)
    }
    fn write_at(&self, offset: u64, data: &[u8], fua: bool) -> Result<(), ExportError> {
        self.inner.write_at(offset, data, fua)
    }
    fn flush(&self) -> Result<(), ExportError> {
        self.flushes
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }
    fn trim(&self, offset: u64, len: u64, fua: bool) -> Result<(), ExportError> {
        self.inner.trim(offset, len, fua)
    }
    fn write_zeroes(&self, o: u64, l: u64, t: bool, f: bool, u: bool) -> Result<(), ExportError> {
        self.inner.write_zeroes(o, l, t, f, u)
    }
    fn block_status(&self, offset: u64, len: u64) -> Result<Vec<Extent>, ExportError> {
        self.inner.block_status(offset, len)
    }
}

// ---- raw client --------------------------------------------------------

pub struct OptReply {
    pub magic: u64,
    pub option: u32,
    pub reply_type: u32,
    pub data: Vec<u8>,
}

#[derive(Debug)]
pub struct Chunk {
    pub flags: u16,
    pub reply_type: u16,
    pub handle: u64,
    pub payload: Vec<u8>,
}

impl Chunk {
    pub fn done(&self) -> bool {
        self.flags & NBD_REPLY_FLAG_DONE != 0
    }
    pub fn u64_at(&self, at: usize) -> u64 {
        u64::from_be_bytes(self.payload[at..at + 8].try_into().expect("8 bytes"))
    }
    pub fn u32_at(&self, at: usize) -> u32 {
        u32::from_be_bytes(self.payload[at..at + 4].try_into().expect("4 bytes"))
    }
    /// Errno and message of an error chunk.
    pub fn error(&self) -> (u32, String) {
        let len = u16::from_be_bytes([self.payload[4], self.payload[5]]) as usize;
        (
            self.u32_at(0),
            String::from_utf8_lossy(&self.payload[6..6 + len]).into_owned(),
        )
    }
}

pub struct Raw {
    pub s: UnixStream,
}

impl Raw {
    pub fn connect(path: &Path) -> Raw {
        let s = UnixStream::connect(path).expect("connect");
        // A bug must fail the test, not hang it.
        s.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        Raw { s }
    }

    pub fn read_n(&mut self, n: usize) -> Vec<u8> {
        let mut b = vec![0u8; n];
        self.s.read_exact(&mut b).expect("read from server");
        b
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_be_bytes(self.read_n(2).try_into().expect("2"))
    }
    pub fn u32(&mut self) -> u32 {
        u32::from_be_bytes(self.read_n(4).try_into().expect("4"))
    }
    pub fn u64(&mut self) -> u64 {
        u64::from_be_bytes(self.read_n(8).try_into().expect("8"))
    }

    pub fn send(&mut self, b: &[u8]) {
        self.s.write_all(b).expect("write to server");
    }

    /// True when the server has closed the connection (EOF, or reset).
    pub fn closed_by_server(&mut self) -> bool {
        let mut b = [0u8; 1];
        match self.s.read(&mut b) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
        }
    }

    /// Reads the greeting and sends client flags.
    pub fn greet(&mut self, client_flags: u32) {
        let g = self.read_n(18);
        assert_eq!(&g[..16], b"NBDMAGICIHAVEOPT");
        self.send(&client_flags.to_be_bytes());
    }

    pub fn option(&mut self, option: u32, data: &[u8]) {
        let mut b = Vec::new();
        b.extend_from_slice(&IHAVEOPT.to_be_bytes());
        b.extend_from_slice(&option.to_be_bytes());
        b.extend_from_slice(&(data.len() as u32).to_be_bytes());
        b.extend_from_slice(data);
        self.send(&b);
    }

    pub fn opt_reply(&mut self) -> OptReply {
        let magic = self.u64();
        let option = self.u32();
        let reply_type = self.u32();
        let len = self.u32() as usize;
        let data = self.read_n(len);
        OptReply {
            magic,
            option,
            reply_type,
            data,
        }
    }

    /// INFO/GO option data.
    pub fn info_data(name: &str, requests: &[u16]) -> Vec<u8> {
        let mut d = Vec::new();
        d.extend_from_slice(&(name.len() as u32).to_be_bytes());
        d.extend_from_slice(name.as_bytes());
        d.extend_from_slice(&(requests.len() as u16).to_be_bytes());
        for r in requests {
            d.extend_from_slice(&r.to_be_bytes());
        }
        d
    }

    /// Metadata context option data.
    pub fn meta_data(name: &str, queries: &[&str]) -> Vec<u8> {
        let mut d = Vec::new();
        d.extend_from_slice(&(name.len() as u32).to_be_bytes());
        d.extend_from_slice(name.as_bytes());
        d.extend_from_slice(&(queries.len() as u32).to_be_bytes());
        for q in queries {
            d.extend_from_slice(&(q.len() as u32).to_be_bytes());
            d.extend_from_slice(q.as_bytes());
        }
        d
    }

    /// Full handshake with NBD_OPT_GO; returns (size, transmission flags).
    pub fn go(&mut self, name: &str, structured: bool, meta: bool) -> (u64, u16) {
        self.greet(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES);
        if structured {
            self.option(NBD_OPT_STRUCTURED_REPLY, &[]);
            assert_eq!(self.opt_reply().reply_type, NBD_REP_ACK);
        }
        if meta {
            self.option(
                NBD_OPT_SET_META_CONTEXT,
                &Self::meta_data(name, &["base:allocation"]),
            );
            let r = self.opt_reply();
            assert_eq!(r.reply_type, NBD_REP_META_CONTEXT);
            assert_eq!(self.opt_reply().reply_type, NBD_REP_ACK);
        }
        self.option(NBD_OPT_GO, &Self::info_data(name, &[]));
        let mut size_flags = None;
        loop {
            let r = self.opt_reply();
            match r.reply_type {
                NBD_REP_INFO => {
                    if u16::from_be_bytes([r.data[0], r.data[1]]) == NBD_INFO_EXPORT {
                        let size = u64::from_be_bytes(r.data[2..10].try_into().expect("8"));
                        let flags = u16::from_be_bytes([r.data[10], r.data[11]]);
                        size_flags = Some((size, flags));
                    }
                }
                NBD_REP_ACK => break,
                other => panic!("GO failed with reply type {other:#x}"),
            }
        }
        size_flags.expect("NBD_INFO_EXPORT before ACK")
    }

    pub fn connect_go(path: &Path, name: &str, structured: bool, meta: bool) -> Raw {
        let mut r = Raw::connect(path);
        r.go(name, structured, meta);
        r
    }

    pub fn request_bytes(
        flags: u16,
        command: u16,
        handle: u64,
        offset: u64,
        length: u32,
    ) -> [u8; 28] {
        RequestHeader {
            magic: NBD_REQUEST_MAGIC,
            flags,
            command,
            handle,
            offset,
            length,
        }
        .encode()
    }

    pub fn request(&mut self, flags: u16, command: u16, handle: u64, offset: u64, length: u32) {
        self.send(&Self::request_bytes(flags, command, handle, offset, length));
    }

    pub fn write(&mut self, flags: u16, handle: u64, offset: u64, data: &[u8]) {
        let mut b =
            Self::request_bytes(flags, NBD_CMD_WRITE, handle, offset, data.len() as u32).to_vec();
        b.extend_from_slice(data);
        self.send(&b);
    }

    /// A simple reply: (error, handle). Data, if any, is read separately.
    pub fn simple_reply(&mut self) -> (u32, u64) {
        let magic = self.u32();
        assert_eq!(magic, NBD_SIMPLE_REPLY_MAGIC, "simple reply magic");
        (self.u32(), self.u64())
    }

    pub fn chunk(&mut self) -> Chunk {
        let magic = self.u32();
        assert_eq!(magic, NBD_STRUCTURED_REPLY_MAGIC, "structured reply magic");
        let flags = self.u16();
        let reply_type = self.u16();
        let handle = self.u64();
        let len = self.u32() as usize;
        let payload = self.read_n(len);
        Chunk {
            flags,
            reply_type,
            handle,
            payload,
        }
    }

    /// Every chunk of one structured reply (until DONE).
    pub fn structured_reply(&mut self) -> Vec<Chunk> {
        let mut v = Vec::new();
        loop {
            let c = self.chunk();
            let done = c.done();
            v.push(c);
            if done {
                return v;
            }
        }
    }

    /// Reads `len` bytes at `offset` with structured replies, reassembling
    /// data and hole chunks; panics on an error chunk.
    pub fn read_structured(&mut self, handle: u64, offset: u64, len: u32) -> Vec<u8> {
        self.request(0, NBD_CMD_READ, handle, offset, len);
        let mut out = vec![0xeeu8; len as usize];
        for c in self.structured_reply() {
            assert_eq!(c.handle, handle);
            let at = (c.u64_at(0) - offset) as usize;
            match c.reply_type {
                NBD_REPLY_TYPE_OFFSET_DATA => {
                    out[at..at + c.payload.len() - 8].copy_from_slice(&c.payload[8..])
                }
                NBD_REPLY_TYPE_OFFSET_HOLE => {
                    let n = c.u32_at(8) as usize;
                    out[at..at + n].fill(0);
                }
                NBD_REPLY_TYPE_NONE => {}
                other => panic!("unexpected chunk type {other:#x}: {:?}", c.error()),
            }
        }
        out
    }
}

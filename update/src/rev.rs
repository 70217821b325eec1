//! The reverse-differential file (`R.frag.rev`), written by the device
//! beside a hydrated fragment: how to get back every content of the base
//! (and the base's metadata region) from this fragment.
//!
//! ```text
//! [ header: 192 bytes ][ base header: 4096 bytes ][ table ][ data ]
//! ```
//!
//! Header (every integer little-endian):
//!
//! | off | size | field |
//! |-----|------|-------|
//! | 0   | 8    | magic `MOSAICRV` |
//! | 8   | 2    | major version (a reader rejects a higher major) |
//! | 10  | 2    | minor version (a reader accepts a higher minor) |
//! | 12  | 4    | header size (192) |
//! | 16  | 8    | incompatible feature bits (unknown bit: reject) |
//! | 24  | 8    | compatible feature bits (unknown bit: ignore) |
//! | 32  | 8    | file size |
//! | 40  | 32   | base id: blake3 of the base header stored at 192 |
//! | 72  | 32   | fragment id: blake3 of the header of the fragment this file sits beside |
//! | 104 | 8    | table offset (192 + 4096) |
//! | 112 | 8    | table length |
//! | 120 | 8    | data offset (table offset + table length) |
//! | 128 | 8    | data length (the rest of the file) |
//! | 136 | 32   | checksum: blake3 of bytes 0..136, the base header and the table |
//! | 168 | 24   | reserved, zero |
//!
//! Table (`var` = unsigned LEB128, `hash` = 32 bytes):
//!
//! ```text
//! frame size                var
//! metadata entry            entry (the base's metadata region)
//! entry count               var
//! entries                   entry each, strictly ascending base inode
//!
//! entry: base inode var, size var, base hash (blake3 of the base content;
//!        all zero in a `same` entry whose content was copied without
//!        hashing: this fragment's signed block hashes vouch for it),
//!        source u8: 0 missing (could not be computed), 1 same (this
//!        fragment's content at inode), 2 delta (from this fragment's content
//!        at inode), 3 full (compressed base content);
//!        same/delta: inode var;
//!        delta/full: data offset var, data length var, data hash,
//!                    frames as in the package manifest
//! ```
//!
//! The checksum guards the table; each differential's own hash guards its
//! bytes. This file is local state, not signed: whatever it yields is
//! checked against the base hashes it records, which came from signed
//! packages or signed fragments, and the final fragment against its
//! signature.
//!
//! FORMAT BREAK: changing any offset, size or constant here changes every
//! reverse-differential file; bump the major version.

use crate::codec::{frame_count, Frame};
use crate::error::{Error, PayloadError, Result};
use crate::wire::{fault, Hash, Reader, WireFault, Writer};
use fragments::format::HEADER_SIZE as FRAG_HEADER;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

pub const MAGIC: [u8; 8] = *b"MOSAICRV";
pub const VERSION_MAJOR: u16 = 1;
pub const VERSION_MINOR: u16 = 0;
pub const HEADER_SIZE: usize = 192;
pub const INCOMPAT_KNOWN: u64 = 0;
pub const TABLE_MAX: u64 = 1 << 30;

/// How to get one base content back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// Could not be computed at hydration (the base content was unavailable).
    Missing,
    /// Identical to this fragment's content at `inode`.
    Same { inode: u32 },
    /// A differential from this fragment's content at `inode`.
    Delta { inode: u32, payload: RevPayload },
    /// The base content, compressed.
    Full { payload: RevPayload },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevPayload {
    pub offset: u64,
    pub len: u64,
    pub hash: Hash,
    pub frames: Vec<Frame>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Canonical base inode (metadata entry: 0).
    pub inode: u32,
    pub size: u64,
    pub hash: Hash,
    pub source: Source,
}

/// The table of a reverse-differential file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    pub frame_size: u64,
    pub metadata: Entry,
    pub entries: Vec<Entry>,
}

fn put_entry(w: &mut Writer, e: &Entry) {
    w.var(e.inode as u64);
    w.var(e.size);
    w.hash(&e.hash);
    let put_payload = |w: &mut Writer, p: &RevPayload| {
        w.var(p.offset);
        w.var(p.len);
        w.hash(&p.hash);
        for f in &p.frames {
            w.var(f.prefix_start);
            w.var(f.prefix_len);
            w.var(f.stored_len);
        }
    };
    match &e.source {
        Source::Missing => w.u8(0),
        Source::Same { inode } => {
            w.u8(1);
            w.var(*inode as u64);
        }
        Source::Delta { inode, payload } => {
            w.u8(2);
            w.var(*inode as u64);
            put_payload(w, payload);
        }
        Source::Full { payload } => {
            w.u8(3);
            put_payload(w, payload);
        }
    }
}

fn get_entry(r: &mut Reader, frame_size: u64, data_len: u64) -> Result<Entry, WireFault> {
    let at = r.pos;
    let inode = r.var32("entry inode")?;
    let size = r.var("entry size")?;
    let hash = r.hash("entry hash")?;
    let get_payload = |r: &mut Reader| -> Result<RevPayload, WireFault> {
        let offset = r.var("data offset")?;
        let len = r.var("data length")?;
        if offset.checked_add(len).is_none_or(|e| e > data_len) {
            return Err(fault(
                at,
                format!("data {offset}+{len} outside the data ({data_len} bytes)"),
            ));
        }
        let hash = r.hash("data hash")?;
        let mut frames = Vec::new();
        let mut sum = 0u64;
        for _ in 0..frame_count(size, frame_size) {
            let f = Frame {
                prefix_start: r.var("prefix start")?,
                prefix_len: r.var("prefix length")?,
                stored_len: r.var("stored length")?,
            };
            sum = sum.saturating_add(f.stored_len);
            frames.push(f);
        }
        if sum != len {
            return Err(fault(
                at,
                format!("frames hold {sum} bytes, the data {len}"),
            ));
        }
        Ok(RevPayload {
            offset,
            len,
            hash,
            frames,
        })
    };
    let source = match r.u8("entry source")? {
        0 => Source::Missing,
        1 => Source::Same {
            inode: r.var32("source inode")?,
        },
        2 => {
            let inode = r.var32("source inode")?;
            Source::Delta {
                inode,
                payload: get_payload(r)?,
            }
        }
        3 => Source::Full {
            payload: get_payload(r)?,
        },
        k => return Err(fault(at, format!("entry source {k}"))),
    };
    Ok(Entry {
        inode,
        size,
        hash,
        source,
    })
}

impl Table {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.var(self.frame_size);
        put_entry(&mut w, &self.metadata);
        w.var(self.entries.len() as u64);
        for e in &self.entries {
            put_entry(&mut w, e);
        }
        w.buf
    }

    pub fn decode(b: &[u8], data_len: u64) -> Result<Table, WireFault> {
        let mut r = Reader::new(b);
        let frame_size = r.var("frame size")?;
        if !(crate::package::FRAME_MIN..=crate::package::FRAME_MAX).contains(&frame_size) {
            return Err(fault(0, format!("frame size {frame_size}")));
        }
        let metadata = get_entry(&mut r, frame_size, data_len)?;
        let entries = r.sorted_tail(
            "entries",
            |r| get_entry(r, frame_size, data_len),
            |e| e.inode,
        )?;
        Ok(Table {
            frame_size,
            metadata,
            entries,
        })
    }

    pub fn entry(&self, inode: u32) -> Option<&Entry> {
        self.entries
            .binary_search_by_key(&inode, |e| e.inode)
            .ok()
            .map(|i| &self.entries[i])
    }
}

/// The fixed header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevHeader {
    pub major: u16,
    pub minor: u16,
    pub incompat: u64,
    pub compat: u64,
    pub file_size: u64,
    pub base_id: Hash,
    pub fragment_id: Hash,
    pub table_offset: u64,
    pub table_len: u64,
    pub data_offset: u64,
    pub data_len: u64,
    pub checksum: Hash,
}

fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"))
}

impl RevHeader {
    pub fn encode(&self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        b[0..8].copy_from_slice(&MAGIC);
        b[8..10].copy_from_slice(&self.major.to_le_bytes());
        b[10..12].copy_from_slice(&self.minor.to_le_bytes());
        b[12..16].copy_from_slice(&(HEADER_SIZE as u32).to_le_bytes());
        b[16..24].copy_from_slice(&self.incompat.to_le_bytes());
        b[24..32].copy_from_slice(&self.compat.to_le_bytes());
        b[32..40].copy_from_slice(&self.file_size.to_le_bytes());
        b[40..72].copy_from_slice(&self.base_id);
        b[72..104].copy_from_slice(&self.fragment_id);
        b[104..112].copy_from_slice(&self.table_offset.to_le_bytes());
        b[112..120].copy_from_slice(&self.table_len.to_le_bytes());
        b[120..128].copy_from_slice(&self.data_offset.to_le_bytes());
        b[128..136].copy_from_slice(&self.data_len.to_le_bytes());
        b[136..168].copy_from_slice(&self.checksum);
        b
    }
}

fn checksum(head: &[u8], base_header: &[u8], table: &[u8]) -> Hash {
    let mut h = blake3::Hasher::new();
    h.update(&head[..136]);
    h.update(base_header);
    h.update(table);
    *h.finalize().as_bytes()
}

/// Encodes a whole reverse-differential file.
pub fn encode_file(
    base_header: &[u8; FRAG_HEADER],
    fragment_id: Hash,
    table: &Table,
    data_len: u64,
) -> Vec<u8> {
    let t = table.encode();
    let table_offset = (HEADER_SIZE + FRAG_HEADER) as u64;
    let mut h = RevHeader {
        major: VERSION_MAJOR,
        minor: VERSION_MINOR,
        incompat: 0,
        compat: 0,
        file_size: table_offset + t.len() as u64 + data_len,
        base_id: *blake3::hash(base_header).as_bytes(),
        fragment_id,
        table_offset,
        table_len: t.len() as u64,
        data_offset: table_offset + t.len() as u64,
        data_len,
        checksum: [0; 32],
    };
    h.checksum = checksum(&h.encode(), base_header, &t);
    let mut out = Vec::with_capacity(table_offset as usize + t.len());
    out.extend_from_slice(&h.encode());
    out.extend_from_slice(base_header);
    out.extend_from_slice(&t);
    out
}

/// An opened reverse-differential file.
#[derive(Debug)]
pub struct RevFile {
    pub path: PathBuf,
    file: File,
    pub header: RevHeader,
    pub base_header: Box<[u8; FRAG_HEADER]>,
    pub table: Table,
}

impl RevFile {
    pub fn open(path: &Path) -> Result<RevFile> {
        let file = File::open(path).map_err(Error::io(path, "open"))?;
        let len = file.metadata().map_err(Error::io(path, "stat"))?.len();
        let corrupt = |offset: u64, what: String| Error::Corrupt {
            path: path.to_owned(),
            what_file: "reverse-differential file",
            offset,
            what,
        };
        let head_len = (HEADER_SIZE + FRAG_HEADER) as u64;
        if len < head_len {
            return Err(corrupt(0, format!("{len} bytes, shorter than its headers")));
        }
        let mut b = vec![0u8; head_len as usize];
        file.read_exact_at(&mut b, 0)
            .map_err(Error::io(path, "read"))?;
        if b[0..8] != MAGIC {
            return Err(corrupt(
                0,
                "not a reverse-differential file (bad magic)".into(),
            ));
        }
        let major = u16::from_le_bytes([b[8], b[9]]);
        let minor = u16::from_le_bytes([b[10], b[11]]);
        let incompat = u64_at(&b, 16);
        if major != VERSION_MAJOR || incompat & !INCOMPAT_KNOWN != 0 {
            return Err(Error::Unsupported {
                path: path.to_owned(),
                what_file: "reverse-differential file",
                what: format!("version {major}.{minor}, incompatible features {incompat:#x}"),
            });
        }
        if u32::from_le_bytes(b[12..16].try_into().expect("4")) != HEADER_SIZE as u32 {
            return Err(corrupt(12, "header size".into()));
        }
        if let Some(p) = b[168..HEADER_SIZE].iter().position(|&c| c != 0) {
            return Err(corrupt(168 + p as u64, "reserved byte is not zero".into()));
        }
        let h = RevHeader {
            major,
            minor,
            incompat,
            compat: u64_at(&b, 24),
            file_size: u64_at(&b, 32),
            base_id: b[40..72].try_into().expect("32"),
            fragment_id: b[72..104].try_into().expect("32"),
            table_offset: u64_at(&b, 104),
            table_len: u64_at(&b, 112),
            data_offset: u64_at(&b, 120),
            data_len: u64_at(&b, 128),
            checksum: b[136..168].try_into().expect("32"),
        };
        if h.file_size != len {
            return Err(corrupt(
                32,
                format!(
                    "header says {} bytes, file has {len} (truncated?)",
                    h.file_size
                ),
            ));
        }
        if h.table_offset != head_len
            || h.table_len > TABLE_MAX
            || h.table_offset.checked_add(h.table_len) != Some(h.data_offset)
            || h.data_offset.checked_add(h.data_len) != Some(len)
        {
            return Err(corrupt(104, "table and data do not tile the file".into()));
        }
        let base_header: Box<[u8; FRAG_HEADER]> =
            Box::new(b[HEADER_SIZE..].try_into().expect("4096"));
        if blake3::hash(&base_header[..]).as_bytes() != &h.base_id {
            return Err(corrupt(
                40,
                "base id is not the hash of the stored base header".into(),
            ));
        }
        let mut t = vec![0u8; h.table_len as usize];
        file.read_exact_at(&mut t, h.table_offset)
            .map_err(Error::io(path, "read"))?;
        if checksum(&b[..HEADER_SIZE], &base_header[..], &t) != h.checksum {
            return Err(corrupt(
                136,
                "checksum of the header and table does not match".into(),
            ));
        }
        let table = Table::decode(&t, h.data_len)
            .map_err(|f| corrupt(h.table_offset + f.offset, format!("table: {}", f.what)))?;
        Ok(RevFile {
            path: path.to_owned(),
            file,
            header: h,
            base_header,
            table,
        })
    }

    /// The bytes of a reverse differential, checked against its hash.
    pub fn payload(&self, p: &RevPayload) -> Result<Vec<u8>, PayloadError> {
        let mut b = vec![0u8; p.len as usize];
        let at = self.header.data_offset + p.offset;
        self.file
            .read_exact_at(&mut b, at)
            .map_err(PayloadError::RevUnreadable)?;
        if blake3::hash(&b).as_bytes() != &p.hash {
            return Err(PayloadError::RevCorrupt { len: p.len, at });
        }
        Ok(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Table {
        Table {
            frame_size: 65536,
            metadata: Entry {
                inode: 0,
                size: 200,
                hash: [1; 32],
                source: Source::Delta {
                    inode: 0,
                    payload: RevPayload {
                        offset: 0,
                        len: 10,
                        hash: [2; 32],
                        frames: vec![Frame {
                            prefix_start: 0,
                            prefix_len: 180,
                            stored_len: 10,
                        }],
                    },
                },
            },
            entries: vec![
                Entry {
                    inode: 2,
                    size: 5,
                    hash: [3; 32],
                    source: Source::Same { inode: 7 },
                },
                Entry {
                    inode: 4,
                    size: 5,
                    hash: [4; 32],
                    source: Source::Missing,
                },
                Entry {
                    inode: 300,
                    size: 70000,
                    hash: [5; 32],
                    source: Source::Full {
                        payload: RevPayload {
                            offset: 10,
                            len: 7,
                            hash: [6; 32],
                            frames: vec![
                                Frame {
                                    prefix_start: 0,
                                    prefix_len: 0,
                                    stored_len: 4,
                                },
                                Frame {
                                    prefix_start: 0,
                                    prefix_len: 0,
                                    stored_len: 3,
                                },
                            ],
                        },
                    },
                },
            ],
        }
    }

    #[test]
    fn file_bytes_are_pinned() {
        let base = [0xabu8; FRAG_HEADER];
        let b = encode_file(&base, [0xcd; 32], &sample(), 17);
        let t = sample().encode();
        // Table bytes, entry by entry.
        let mut want_t = vec![0x80, 0x80, 0x04]; // frame size 65536
        want_t.extend_from_slice(&[0, 0xc8, 0x01]); // metadata: inode 0, size 200
        want_t.extend_from_slice(&[1; 32]);
        want_t.extend_from_slice(&[2, 0, 0, 10]); // delta from inode 0, data 0+10
        want_t.extend_from_slice(&[2; 32]);
        want_t.extend_from_slice(&[0, 0xb4, 0x01, 10]); // frame: prefix 0+180, 10 bytes
        want_t.push(3); // 3 entries
        want_t.extend_from_slice(&[2, 5]);
        want_t.extend_from_slice(&[3; 32]);
        want_t.extend_from_slice(&[1, 7]); // same as inode 7
        want_t.extend_from_slice(&[4, 5]);
        want_t.extend_from_slice(&[4; 32]);
        want_t.push(0); // missing
        want_t.extend_from_slice(&[0xac, 0x02, 0xf0, 0xa2, 0x04]); // inode 300, size 70000
        want_t.extend_from_slice(&[5; 32]);
        want_t.extend_from_slice(&[3, 10, 7]); // full, data 10+7
        want_t.extend_from_slice(&[6; 32]);
        want_t.extend_from_slice(&[0, 0, 4, 0, 0, 3]);
        assert_eq!(t, want_t);
        // Header.
        assert_eq!(&b[0..8], b"MOSAICRV");
        assert_eq!(&b[8..16], &[1, 0, 0, 0, 192, 0, 0, 0]);
        let total = (192 + 4096 + t.len() + 17) as u64;
        assert_eq!(&b[32..40], &total.to_le_bytes());
        assert_eq!(&b[40..72], blake3::hash(&base).as_bytes());
        assert_eq!(&b[72..104], &[0xcd; 32]);
        assert_eq!(&b[104..112], &4288u64.to_le_bytes());
        assert_eq!(&b[112..120], &(t.len() as u64).to_le_bytes());
        assert_eq!(&b[168..192], &[0; 24]);
        assert_eq!(&b[192..192 + 4096], &base[..]);
        assert_eq!(&b[4288..], &t[..]);

        // Opened back from a file; then corrupted in several ways.
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.rev");
        let mut full = b.clone();
        full.extend_from_slice(&[0x11; 17]);
        std::fs::write(&p, &full).unwrap();
        let r = RevFile::open(&p).unwrap();
        assert_eq!(r.table, sample());
        assert_eq!(r.table.entry(4).unwrap().source, Source::Missing);
        assert!(r.table.entry(3).is_none());
        for (at, what) in [
            (4300usize, "table"),
            (150, "checksum"),
            (200, "base header"),
            (9, "version"),
        ] {
            let mut bad = full.clone();
            bad[at] ^= 1;
            std::fs::write(&p, &bad).unwrap();
            assert!(RevFile::open(&p).is_err(), "{what} flip accepted");
        }
        std::fs::write(&p, &full[..full.len() - 1]).unwrap();
        assert!(RevFile::open(&p).is_err(), "truncated file accepted");
    }
}

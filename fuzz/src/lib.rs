//! The bodies of the fuzz targets, shared by the libFuzzer binaries in
//! `fuzz_targets/` and by the regression replay in `tests/fuzz_regressions.rs`
//! (which includes this file with `#[path]`): a crash found by the fuzzer is
//! replayed through exactly this code by `cargo test`.
//!
//! Only `fragments`, `tempfile` and `std` are used here, the crates the root
//! package already has. Signing (for `fragment_resigned`) is passed in as a
//! closure, so that the test can sign without depending on ed25519-dalek.
//!
//! Targets:
//! - `fragment_open`: the bytes are a fragment file; `Fragment::open` with
//!   `Trust::AnySigner`, and on success everything a reader does with it.
//!   Mutations almost always stop at the signature check.
//! - `fragment_unsigned_parse`: the parsers behind the signature, called
//!   directly: `Header::decode`, `ChunkIndex::decode`, `Metadata::decode`.
//!   An input starting with the metadata magic `MOSMETA\0` is a bare
//!   metadata region, decoded against a fixed region table.
//! - `fragment_resigned`: the bytes are a fragment whose header structure is
//!   kept, but whose region roots, hash region and signature are recomputed
//!   (with a fixed key) before `fragment_open` runs: mutations of the
//!   metadata, chunk indexes and data reach the checks after the signature,
//!   the way a fragment made by a careless or hostile signer would.
#![allow(dead_code)]

use fragments::compress::{ChunkIndex, CHUNK_SIZE};
use fragments::format::HEADER_SIZE;
use fragments::hash::{cvs_of, root_from_cvs};
use fragments::meta::META_MAGIC;
use fragments::{Body, Encoding, Fragment, Header, Kind, Metadata, RegionEntry, RegionKind, Trust};
use std::io::Write;
use std::path::Path;

/// Read sizes: files and regions are read in pieces of this many bytes.
const PIECE: usize = 64 << 10;
/// At most this many bytes are read from each extent and each region (a
/// file of 2^60 bytes of holes is valid; reading it all is not a test).
const READ_CAP: u64 = 1 << 20;
/// `paths_of` is linear in the entries; call it for this many inodes only.
const PATHS_OF_INODES: usize = 256;
/// The re-signer refuses headers claiming files larger than this.
const RESIGN_MAX_FILE: u64 = 64 << 20;

/// The secret key the re-signer signs with: `[0x5a; 32]`.
pub const RESIGN_SECRET: [u8; 32] = [0x5a; 32];

/// Set `MOSAIC_FUZZ_SKIP_KNOWN=1` to skip inputs that hit a bug already
/// reported (see [`known_bug`]), so a long fuzzing run can look for new
/// ones. Unset (the default, and always in `cargo test`): they crash.
fn skip_known() -> bool {
    static SKIP: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *SKIP.get_or_init(|| std::env::var_os("MOSAIC_FUZZ_SKIP_KNOWN").is_some_and(|v| v == "1"))
}

/// Recognizes metadata bytes that trigger a bug already found and kept in
/// `fuzz/regressions/` but not fixed yet; add an entry (a cheap predicate
/// on the metadata bytes, returning a short name) while a fix is pending,
/// remove it once fixed. Empty: every bug found so far is fixed.
///
/// Fixed: "meta-need-overflow" (`Metadata::decode` summed the table sizes
/// and the u64 strings length unchecked; fragments commit 765c8e9).
pub fn known_bug(meta: &[u8]) -> Option<&'static str> {
    let _ = meta;
    None
}

/// Signs the 4032 signed bytes of a header with [`RESIGN_SECRET`].
pub type SignFn<'a> = &'a dyn Fn(&[u8]) -> [u8; 64];

// ---------------------------------------------------------------------------
// fragment_open

/// Writes `data` to a temporary file and opens it as a fragment; on success
/// verifies every block, reads every file and region, and dumps it.
pub fn fragment_open(data: &[u8]) {
    let mut tmp = tempfile::Builder::new()
        .prefix("mosaic-fuzz-")
        .suffix(".frag")
        .tempfile()
        .expect("create a temporary file");
    tmp.write_all(data).expect("write the input");
    tmp.flush().expect("flush the input");
    if let Ok(frag) = Fragment::open(tmp.path(), Trust::AnySigner) {
        exercise_fragment(&frag);
    }
}

/// Everything a reader of an opened fragment does. Errors are fine; panics
/// are bugs.
pub fn exercise_fragment(f: &Fragment) {
    let _ = f.verify_all(&|_| {});
    let h = f.header();
    for (i, r) in h.regions.iter().enumerate() {
        if r.kind == RegionKind::Hashes {
            continue;
        }
        let mut buf = vec![0u8; PIECE];
        let end = r.logical_len.min(READ_CAP);
        let mut off = 0;
        while off < end {
            let n = (end - off).min(PIECE as u64) as usize;
            if f.read_region(i as u32, off, &mut buf[..n]).is_err() {
                break;
            }
            off += n as u64;
        }
        // One odd-sized read straddling a block boundary.
        if r.logical_len > 4097 {
            let _ = f.read_region(i as u32, 4095, &mut buf[..2]);
        }
    }
    let m = f.metadata();
    exercise_metadata(m);
    let mut buf = vec![0u8; PIECE];
    for (ino, inode) in m.inodes.iter().enumerate() {
        let ino = ino as u32;
        let Body::Regular { size, .. } = inode.body else {
            // Not a regular file: an error, never a panic.
            let _ = f.read_file(ino, 0, &mut buf[..1]);
            continue;
        };
        // The start, every extent (capped), the last byte and past the end.
        let mut ranges = vec![(0, size.min(PIECE as u64))];
        for e in m.extents_of(ino) {
            ranges.push((e.file_offset, e.file_offset + e.len.min(READ_CAP)));
        }
        ranges.push((size.saturating_sub(1), size));
        ranges.push((size, size.saturating_add(1)));
        for (a, b) in ranges {
            let mut pos = a;
            while pos < b {
                let want = (b - pos).min(PIECE as u64) as usize;
                match f.read_file(ino, pos, &mut buf[..want]) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        assert!(n <= want, "read_file returned more than asked");
                        pos += n as u64;
                    }
                }
            }
        }
    }
    let _ = fragments::dump::dump(f);
}

/// Walks a decoded metadata table with every accessor, checking the
/// invariants `Metadata::decode` promises (every inode reachable, paths
/// resolve back to their inode).
pub fn exercise_metadata(m: &Metadata) {
    let n = m.inodes.len();
    assert_eq!(m.nlink.len(), n);
    assert_eq!(m.parent.len(), n);
    assert_eq!(m.first_dentry.len(), n);
    for ino in 0..n as u32 {
        let inode = m.inode(ino);
        let _ = (inode.mode(), inode.size());
        for d in m.children(ino) {
            let _ = m.name(d);
            assert!(
                (d.inode as usize) < n,
                "dentry names inode {} of {n}",
                d.inode
            );
        }
        for (name, value) in m.xattrs_of(ino) {
            let _ = (name.len(), value.len());
        }
        let _ = m.extents_of(ino);
        let _ = m.symlink_target(ino);
        let path = m.path_of(ino);
        assert_eq!(
            m.lookup(&path),
            Some(ino),
            "path_of({ino}) = {:?} does not resolve back",
            String::from_utf8_lossy(&path)
        );
        if (ino as usize) < PATHS_OF_INODES {
            for p in m.paths_of(ino) {
                assert_eq!(m.lookup(&p), Some(ino));
            }
        }
        if inode.kind == Kind::Directory {
            let _ = m.lookup_child(ino, b"a");
        }
    }
}

// ---------------------------------------------------------------------------
// fragment_unsigned_parse

/// `data[offset..offset + len]`, cut at the end of `data`.
fn clamp(data: &[u8], offset: u64, len: u64) -> &[u8] {
    let a = offset.min(data.len() as u64) as usize;
    let b = offset.saturating_add(len).min(data.len() as u64) as usize;
    &data[a..b]
}

/// The region table a bare metadata input is decoded against: the layout
/// the builder writes for a tree with large and small files.
fn synthetic_regions() -> Vec<RegionEntry> {
    let entry = |kind, file_offset, stored_len: u64, logical_len, hash_index| RegionEntry {
        kind,
        encoding: Encoding::Raw,
        file_offset,
        stored_len,
        logical_len,
        hash_index,
        root: [0; 32],
    };
    vec![
        entry(RegionKind::Data, 4096, 1 << 20, 1 << 20, 0),
        entry(RegionKind::Small, 4096 + (1 << 20), 4096, 4096, 256),
        entry(RegionKind::Metadata, 8192 + (1 << 20), 65536, 65536, 257),
        entry(RegionKind::Hashes, 73728 + (1 << 20), 12288, 273 * 32, 0),
    ]
}

fn le_u32(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().expect("4 bytes"))
}

/// Decodes metadata bytes, and when the signed header's counts disagree
/// with the metadata's own, once more with the metadata's (so mutating a
/// count does not stop every input at that cross-check).
fn decode_metadata(b: &[u8], regions: &[RegionEntry], inodes: u32, dentries: u32) {
    if skip_known() && known_bug(b).is_some() {
        return;
    }
    if let Ok(m) = Metadata::decode(b, regions, inodes, dentries) {
        exercise_metadata(&m);
    }
    if b.len() >= 16 {
        let (i, d) = (le_u32(b, 8), le_u32(b, 12));
        if (i, d) != (inodes, dentries) {
            if let Ok(m) = Metadata::decode(b, regions, i, d) {
                exercise_metadata(&m);
            }
        }
    }
}

/// The parsers behind the signature, called directly on the input.
pub fn unsigned_parse(data: &[u8]) {
    let path = Path::new("fuzz-input");
    if data.starts_with(&META_MAGIC) {
        decode_metadata(data, &synthetic_regions(), 0, 0);
        return;
    }
    if data.len() < HEADER_SIZE {
        return;
    }
    let hb: &[u8; HEADER_SIZE] = data[..HEADER_SIZE].try_into().expect("4096 bytes");
    let _ = Header::decode(path, hb, data.len() as u64);
    // The header's own idea of the file size, so that inputs whose length
    // changed still reach the regions.
    let claimed = u64::from_le_bytes(hb[32..40].try_into().expect("8 bytes"));
    let Ok(h) = Header::decode(path, hb, claimed) else {
        return;
    };
    let _ = h.encode();
    for r in &h.regions {
        if r.encoding != Encoding::Zstd {
            continue;
        }
        let bytes = clamp(data, r.file_offset, r.stored_len);
        let head = ChunkIndex::index_len(r.logical_len.div_ceil(CHUNK_SIZE));
        let b = clamp(bytes, 0, head);
        if let Ok(idx) = ChunkIndex::decode(b, r.logical_len, r.stored_len) {
            for c in 0..idx.chunks() {
                let (fa, fb) = idx.frame(c);
                assert!(fa <= fb && fb <= r.stored_len, "frame {c} outside region");
            }
        }
    }
    let mr = &h.regions[h.region_of(RegionKind::Metadata)];
    let mb = clamp(data, mr.file_offset, mr.logical_len);
    decode_metadata(mb, &h.regions, h.inode_count, h.dentry_count);
}

// ---------------------------------------------------------------------------
// fragment_resigned

/// Rebuilds `data` into a fragment that passes the signature and root
/// checks: the header (decoded with its own claimed file size) keeps its
/// region table's kinds, encodings, stored and logical lengths; each
/// region's bytes are taken from where the input has them (zero-filled past
/// its end); offsets, hash indexes, the hash region and every root are
/// recomputed; the header is signed by `public`'s key through `sign`.
///
/// Regions of one block are grown to two (a zero block; their padding must
/// be zero anyway), because the root of a one-block region is blake3 of the
/// block itself, which `fragments::hash` does not expose.
///
/// Returns `None` when the header does not decode.
pub fn resign(data: &[u8], public: [u8; 32], sign: SignFn) -> Option<Vec<u8>> {
    if data.len() < HEADER_SIZE {
        return None;
    }
    let hb: &[u8; HEADER_SIZE] = data[..HEADER_SIZE].try_into().expect("4096 bytes");
    let claimed = u64::from_le_bytes(hb[32..40].try_into().expect("8 bytes"));
    if claimed > RESIGN_MAX_FILE {
        return None;
    }
    let mut h = Header::decode(Path::new("fuzz-input"), hb, claimed).ok()?;
    let mut out = vec![0u8; HEADER_SIZE];
    let mut all_cvs = Vec::new();
    let mut regions = Vec::with_capacity(h.regions.len());
    let grow = |v: &mut Vec<u8>| {
        if v.len() == 4096 {
            v.resize(8192, 0);
        }
    };
    for r in h.regions.iter().filter(|r| r.kind != RegionKind::Hashes) {
        let mut bytes = clamp(data, r.file_offset, r.stored_len).to_vec();
        bytes.resize(r.stored_len as usize, 0);
        grow(&mut bytes);
        let cvs = cvs_of(&bytes);
        let root = root_from_cvs(&cvs).expect("not one block");
        regions.push(RegionEntry {
            file_offset: out.len() as u64,
            stored_len: bytes.len() as u64,
            hash_index: all_cvs.len() as u64,
            root: *root.as_bytes(),
            ..r.clone()
        });
        out.extend_from_slice(&bytes);
        all_cvs.extend(cvs);
    }
    let mut hashes: Vec<u8> = all_cvs.concat();
    let logical = hashes.len() as u64;
    hashes.resize(hashes.len().div_ceil(4096) * 4096, 0);
    grow(&mut hashes);
    let root = root_from_cvs(&cvs_of(&hashes)).expect("not one block");
    regions.push(RegionEntry {
        kind: RegionKind::Hashes,
        encoding: Encoding::Raw,
        file_offset: out.len() as u64,
        stored_len: hashes.len() as u64,
        logical_len: logical,
        hash_index: 0,
        root: *root.as_bytes(),
    });
    out.extend_from_slice(&hashes);
    h.regions = regions;
    h.file_size = out.len() as u64;
    h.signer = public;
    let mut header = h.encode();
    let sig = sign(&header[..fragments::format::SIGNED_LEN]);
    header[fragments::format::SIGNATURE_OFFSET..].copy_from_slice(&sig);
    out[..HEADER_SIZE].copy_from_slice(&header);
    Some(out)
}

/// `resign`, then `fragment_open` on the result.
pub fn fragment_resigned(data: &[u8], public: [u8; 32], sign: SignFn) {
    if let Some(frag) = resign(data, public, sign) {
        if skip_known() {
            let hb: &[u8; HEADER_SIZE] = frag[..HEADER_SIZE].try_into().expect("4096 bytes");
            let h = Header::decode(Path::new("resigned"), hb, frag.len() as u64)
                .expect("resign writes a valid header");
            let mr = &h.regions[h.region_of(RegionKind::Metadata)];
            if known_bug(clamp(&frag, mr.file_offset, mr.logical_len)).is_some() {
                return;
            }
        }
        fragment_open(&frag);
    }
}

/// The update formats' byte parsers, called directly: the package manifest
/// (behind the package signature) and the reverse-delta table (local to
/// the device, only checksummed). The first byte picks the parser.
pub fn update_tables(data: &[u8]) {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let data_len = rest.len() as u64 * 4;
    if which & 1 == 0 {
        if let Ok(m) = update::package::Manifest::decode(rest, data_len) {
            let _ = m.encode();
        }
    } else if let Ok(t) = update::rev::Table::decode(rest, data_len) {
        let _ = t.encode();
    }
}

// ---------------------------------------------------------------------------
// ext4_read
//
// The bytes are an ext4 image, the way a guest leaves a volume (base image
// plus overlay): `layout::ext4::read` opens it, walks every path, reads
// every file (capped), lists every directory and maps every inode's
// extents, checking what the reader promises (reads never return more
// than asked, extents sorted and disjoint, names without '/' or NUL).
// Seeds: generator images and small mke2fs images (scripts/fuzz-seeds.sh).

/// At most this many paths are walked per input.
const EXT4_MAX_PATHS: usize = 20_000;

/// Reads `ino` through an opened file: the start, each extent (capped),
/// the last byte and past the end.
fn ext4_read_file<R: layout::ext4::read::ReadAt>(
    fs: &layout::ext4::read::Ext4<R>,
    ino: u32,
    buf: &mut [u8],
) {
    let Ok(f) = fs.open_file(ino) else {
        return;
    };
    let size = f.size();
    let bs = fs.superblock().block_size as u64;
    let mut ranges = vec![(0, size.min(PIECE as u64))];
    let mut prev_end = 0u64;
    for e in f.extents() {
        assert!(e.len > 0, "inode {ino}: empty extent");
        assert!(e.logical >= prev_end, "inode {ino}: extents out of order");
        prev_end = e.logical + e.len as u64;
        let start = e.logical.saturating_mul(bs);
        ranges.push((
            start,
            start.saturating_add((e.len as u64 * bs).min(READ_CAP)),
        ));
    }
    ranges.push((size.saturating_sub(1), size));
    ranges.push((size, size.saturating_add(1)));
    let mut total = 0u64;
    for (a, b) in ranges {
        let mut pos = a;
        while pos < b && total < 4 * READ_CAP {
            let want = (b - pos).min(buf.len() as u64) as usize;
            match f.read_at(pos, &mut buf[..want]) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    assert!(n <= want, "inode {ino}: read returned more than asked");
                    pos += n as u64;
                    total += n as u64;
                }
            }
        }
    }
}

/// Opens the image twice: checksums verified (mutations mostly stop
/// there), then ignored, so the parsers behind them see mutated bytes.
pub fn ext4_read(data: &[u8]) {
    for verify_checksums in [true, false] {
        ext4_read_with(data, layout::ext4::read::Options { verify_checksums });
    }
}

fn ext4_read_with(data: &[u8], opts: layout::ext4::read::Options) {
    use layout::ext4::read::Ext4;
    let Ok(fs) = Ext4::open_with(data, opts) else {
        return;
    };
    let mut buf = vec![0u8; PIECE];
    for e in fs.walk().take(EXT4_MAX_PATHS) {
        let Ok(e) = e else {
            break;
        };
        let ino = e.ino();
        let _ = fs.extents(ino);
        for x in &e.inode.xattrs {
            assert!(!x.name.is_empty(), "inode {ino}: empty xattr name");
        }
        match e.inode.kind {
            fragments::Kind::Regular => ext4_read_file(&fs, ino, &mut buf),
            fragments::Kind::Directory => {
                if let Ok(entries) = fs.read_dir(ino) {
                    for d in entries {
                        assert!(
                            !d.name.is_empty() && !d.name.iter().any(|&c| c == b'/' || c == 0),
                            "inode {ino}: bad name {:?}",
                            d.name
                        );
                        assert!(d.name != b"." && d.name != b"..");
                    }
                }
                ext4_read_file(&fs, ino, &mut buf);
            }
            _ => {}
        }
    }
    // Inodes the walk may not reach: the reserved ones and the first few.
    let last = fs.superblock().inodes_count.min(64);
    for ino in 0..=last + 1 {
        let _ = fs.inode(ino);
        let _ = fs.extents(ino);
        let _ = fs.read_dir(ino);
        ext4_read_file(&fs, ino, &mut buf[..4096]);
    }
    let _ = fs.lookup(b"/lost+found/../a");
}

//! Differentials: zstd frames that use (a window of) a base content as a
//! reference prefix.
//!
//! A content of `size` bytes is cut into frames of `frame_size` target
//! bytes; frame `i` covers `[i * frame_size, min(size, (i + 1) * frame_size))`
//! and is one independent zstd frame. A frame names the window of the base
//! it was made against (`prefix_start`, `prefix_len`): the whole base when
//! the base is at most `window_max` bytes, else a `window_max` window
//! centred where the frame sits proportionally in the base. A frame with no
//! prefix is a plain compressed frame (a "null differential").
//!
//! Parameters follow what `zstd --patch-from` does: the window log is large
//! enough to reach from the end of the target back to the start of the
//! prefix, and long-distance matching is on (lab side; the device computes
//! its reverse differentials at a fast level, see `apply`).
//!
//! Decoding needs only the frame, its prefix window and the expected
//! length: memory is bounded by `frame_size + window_max` whatever the file.

use crate::blob::{Blob, BlobSink};
use rayon::prelude::*;
use std::io;
use zstd::zstd_safe::{self, CCtx, CParameter, DCtx, DParameter};

/// Largest window log a decoder accepts (zstd's maximum on 64-bit).
pub const WINDOW_LOG_MAX: u32 = 31;

/// One frame of a differential.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Frame {
    pub prefix_start: u64,
    pub prefix_len: u64,
    pub stored_len: u64,
}

/// How differentials are made.
#[derive(Debug, Clone, Copy)]
pub struct Encoder {
    pub level: i32,
    pub ldm: bool,
    pub frame_size: u64,
    pub window_max: u64,
}

pub fn frame_count(size: u64, frame_size: u64) -> u64 {
    size.div_ceil(frame_size)
}

/// The base window frame `[off, off + tlen)` of a `size`-byte target uses.
pub fn prefix_window(base_len: u64, size: u64, off: u64, tlen: u64, window_max: u64) -> (u64, u64) {
    if base_len <= window_max {
        return (0, base_len);
    }
    let centre = ((off + tlen / 2) as u128 * base_len as u128 / size.max(1) as u128) as u64;
    let start = centre
        .saturating_sub(window_max / 2)
        .min(base_len - window_max);
    (start, window_max)
}

fn window_log(n: u64) -> u32 {
    let ceil_log2 = 64 - n.max(1).saturating_sub(1).leading_zeros();
    ceil_log2.clamp(10, WINDOW_LOG_MAX)
}

fn zerr(what: &str, code: usize) -> io::Error {
    io::Error::other(format!("zstd {what}: {}", zstd_safe::get_error_name(code)))
}

/// Compresses `src` with `prefix` as reference (empty: none).
pub fn compress_frame(level: i32, ldm: bool, prefix: &[u8], src: &[u8]) -> io::Result<Vec<u8>> {
    let mut c = CCtx::create();
    let set = |c: &mut CCtx, p| c.set_parameter(p).map_err(|e| zerr("parameter", e));
    set(&mut c, CParameter::CompressionLevel(level))?;
    set(
        &mut c,
        CParameter::WindowLog(window_log((prefix.len() + src.len()) as u64)),
    )?;
    if ldm {
        set(&mut c, CParameter::EnableLongDistanceMatching(true))?;
    }
    set(&mut c, CParameter::ContentSizeFlag(true))?;
    if !prefix.is_empty() {
        c.ref_prefix(prefix).map_err(|e| zerr("prefix", e))?;
    }
    let mut out = Vec::with_capacity(zstd_safe::compress_bound(src.len()));
    c.compress2(&mut out, src)
        .map_err(|e| zerr("compress", e))?;
    Ok(out)
}

/// Why one zstd frame does not decode.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The decoder refused a parameter or the prefix (zstd's error name).
    #[error("{0}")]
    Setup(&'static str),
    #[error("zstd frame does not decode ({0})")]
    Zstd(&'static str),
    #[error("frame decodes to {got} bytes, expected {want}")]
    Length { got: usize, want: usize },
}

/// Why a differential does not decode, naming the frame.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("{frames} frames for {size} bytes in frames of {frame_size}")]
    FrameCount {
        frames: usize,
        size: u64,
        frame_size: u64,
    },
    #[error("frame {0} runs past the differential's bytes")]
    PastEnd(usize),
    #[error("frame {0} needs a base and there is none")]
    NoBase(usize),
    #[error("frame {frame}: base window: {error}")]
    BaseWindow { frame: usize, error: io::Error },
    #[error("frame {frame}: {error}")]
    Frame { frame: usize, error: FrameError },
    #[error("frame {frame}: writing the content: {error}")]
    Sink { frame: usize, error: io::Error },
    #[error("{0} bytes after the last frame")]
    Trailing(usize),
}

/// Decompresses one frame that must give exactly `want` bytes.
pub fn decompress_frame(prefix: &[u8], src: &[u8], want: usize) -> Result<Vec<u8>, FrameError> {
    let mut d = DCtx::create();
    d.set_parameter(DParameter::WindowLogMax(WINDOW_LOG_MAX))
        .map_err(|e| FrameError::Setup(zstd_safe::get_error_name(e)))?;
    if !prefix.is_empty() {
        d.ref_prefix(prefix)
            .map_err(|e| FrameError::Setup(zstd_safe::get_error_name(e)))?;
    }
    // One byte more than wanted, so a frame that is too long is noticed.
    let mut out = Vec::with_capacity(want + 1);
    d.decompress(&mut out, src)
        .map_err(|e| FrameError::Zstd(zstd_safe::get_error_name(e)))?;
    if out.len() != want {
        return Err(FrameError::Length {
            got: out.len(),
            want,
        });
    }
    Ok(out)
}

impl Encoder {
    /// Encodes `target` against `base` (none: null differential), appending
    /// the frames to `out`.
    pub fn encode(
        &self,
        base: Option<&Blob>,
        target: &Blob,
        out: &mut Vec<u8>,
    ) -> io::Result<Vec<Frame>> {
        let size = target.len();
        let n = frame_count(size, self.frame_size);
        let frames: Vec<io::Result<(Frame, Vec<u8>)>> = (0..n)
            .into_par_iter()
            .map(|i| {
                let off = i * self.frame_size;
                let tlen = self.frame_size.min(size - off);
                let t = target.window(off, tlen)?;
                let (ps, pl) = match base {
                    Some(b) if !b.is_empty() => {
                        prefix_window(b.len(), size, off, tlen, self.window_max)
                    }
                    _ => (0, 0),
                };
                let prefix = match base {
                    Some(b) if pl > 0 => b.window(ps, pl)?,
                    _ => std::borrow::Cow::Borrowed(&[][..]),
                };
                let bytes = compress_frame(self.level, self.ldm, &prefix, &t)?;
                Ok((
                    Frame {
                        prefix_start: ps,
                        prefix_len: pl,
                        stored_len: bytes.len() as u64,
                    },
                    bytes,
                ))
            })
            .collect();
        let mut list = Vec::with_capacity(n as usize);
        for f in frames {
            let (f, b) = f?;
            out.extend_from_slice(&b);
            list.push(f);
        }
        Ok(list)
    }
}

/// Decodes a differential of `size` bytes made of `frames` (stored back to
/// back in `data`) against `base` into `sink`. Errors say which frame.
pub fn decode(
    base: Option<&Blob>,
    data: &[u8],
    frames: &[Frame],
    size: u64,
    frame_size: u64,
    sink: &mut BlobSink,
) -> Result<(), DecodeError> {
    if frames.len() as u64 != frame_count(size, frame_size) {
        return Err(DecodeError::FrameCount {
            frames: frames.len(),
            size,
            frame_size,
        });
    }
    let mut at = 0usize;
    for (i, f) in frames.iter().enumerate() {
        let off = i as u64 * frame_size;
        let tlen = frame_size.min(size - off);
        let end = at
            .checked_add(f.stored_len as usize)
            .filter(|&e| e <= data.len())
            .ok_or(DecodeError::PastEnd(i))?;
        let prefix = if f.prefix_len == 0 {
            std::borrow::Cow::Borrowed(&[][..])
        } else {
            let b = base.ok_or(DecodeError::NoBase(i))?;
            b.window(f.prefix_start, f.prefix_len)
                .map_err(|error| DecodeError::BaseWindow { frame: i, error })?
        };
        let plain = decompress_frame(&prefix, &data[at..end], tlen as usize)
            .map_err(|error| DecodeError::Frame { frame: i, error })?;
        sink.push(&plain)
            .map_err(|error| DecodeError::Sink { frame: i, error })?;
        at = end;
    }
    if at != data.len() {
        return Err(DecodeError::Trailing(data.len() - at));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noise(seed: u64, n: usize) -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn delta_round_trip_small_frames_and_windows() {
        let dir = tempfile::tempdir().unwrap();
        let base = noise(1, 300_000);
        let mut target = base.clone();
        target[1000..1100].copy_from_slice(&noise(2, 100));
        target.splice(150_000..150_000, noise(3, 5000));
        let enc = Encoder {
            level: 3,
            ldm: true,
            frame_size: 65536,
            window_max: 100_000,
        };
        let (b, t) = (Blob::Mem(base.clone()), Blob::Mem(target.clone()));
        let mut out = Vec::new();
        let frames = enc.encode(Some(&b), &t, &mut out).unwrap();
        assert_eq!(frames.len(), 5);
        assert!(frames.iter().all(|f| f.prefix_len == 100_000));
        assert!(out.len() < 20_000, "delta of {} bytes", out.len());
        let mut sink = BlobSink::new(t.len(), 1000, dir.path()).unwrap();
        decode(Some(&b), &out, &frames, t.len(), 65536, &mut sink).unwrap();
        assert_eq!(
            sink.finish().unwrap().hash().unwrap(),
            *blake3::hash(&target).as_bytes()
        );

        // A null differential decodes without a base.
        let mut full = Vec::new();
        let ff = enc.encode(None, &t, &mut full).unwrap();
        assert!(ff.iter().all(|f| f.prefix_len == 0));
        let mut sink = BlobSink::new(t.len(), 1 << 30, dir.path()).unwrap();
        decode(None, &full, &ff, t.len(), 65536, &mut sink).unwrap();

        // Wrong base, flipped byte, wrong frame list: errors, never panics.
        let other = Blob::Mem(noise(9, 300_000));
        let mut sink = BlobSink::new(t.len(), 1 << 30, dir.path()).unwrap();
        let r = decode(Some(&other), &out, &frames, t.len(), 65536, &mut sink);
        let ok = r.is_ok()
            && sink.finish().unwrap().hash().unwrap() == *blake3::hash(&target).as_bytes();
        assert!(!ok, "a delta applied to the wrong base gave the target");
        let mut bad = out.clone();
        bad[10] ^= 0x40;
        let mut sink = BlobSink::new(t.len(), 1 << 30, dir.path()).unwrap();
        let _ = decode(Some(&b), &bad, &frames, t.len(), 65536, &mut sink);
        let mut sink = BlobSink::new(t.len(), 1 << 30, dir.path()).unwrap();
        assert!(decode(Some(&b), &out, &frames[1..], t.len(), 65536, &mut sink).is_err());
        let mut sink = BlobSink::new(t.len(), 1 << 30, dir.path()).unwrap();
        assert!(decode(None, &out, &frames, t.len(), 65536, &mut sink).is_err());
    }

    #[test]
    fn windows_stay_inside_the_base() {
        for (blen, size, off, tlen) in [
            (10u64, 5u64, 0u64, 5u64),
            (1000, 4000, 3990, 10),
            (1000, 10, 0, 10),
        ] {
            let (s, l) = prefix_window(blen, size, off, tlen, 300);
            assert!(s + l <= blen && l == blen.min(300), "{blen} {size} {off}");
        }
        assert_eq!(window_log(1), 10);
        assert_eq!(window_log(1 << 20), 20);
        assert_eq!(window_log((1 << 20) + 1), 21);
        assert_eq!(window_log(u64::MAX), 31);
    }
}

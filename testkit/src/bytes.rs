//! Deterministic contents, and searching and comparing bytes.
//!
//! Each generator makes its own bytes and is named by what it makes; tests
//! (and what they pin) depend on the exact bytes, so none of them changes
//! its output.

pub const KIB: u64 = 1 << 10;
pub const MIB: u64 = 1 << 20;

/// An endless xorshift64 byte stream from `seed` (one byte a step, bits 24
/// to 31 of the state): what [`noise`] and [`nonzero_noise`] are cut from.
fn xorshift(seed: u64) -> impl Iterator<Item = u8> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    std::iter::repeat_with(move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 24) as u8
    })
}

/// `len` deterministic pseudo-random bytes (xorshift), any value.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    xorshift(seed).take(len).collect()
}

/// `len` deterministic pseudo-random bytes with no zero byte, so no 4 KiB
/// block of them is a hole: [`noise`] with the low bit of every byte set.
pub fn nonzero_noise(seed: u64, len: usize) -> Vec<u8> {
    xorshift(seed).take(len).map(|b| b | 1).collect()
}

/// Fills `buf` with deterministic pseudo-random bytes (splitmix64).
pub fn fill_bytes(seed: u64, buf: &mut [u8]) {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    for chunk in buf.chunks_mut(8) {
        s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        chunk.copy_from_slice(&z.to_le_bytes()[..chunk.len()]);
    }
}

/// `n` deterministic pseudo-random bytes (splitmix64, see [`fill_bytes`]).
pub fn random_bytes(seed: u64, n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    fill_bytes(seed, &mut v);
    v
}

/// `len` bytes of a short period (253) with no zero byte: byte `i` is
/// `i * 31 + seed`, low bit set.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) | 1)
        .collect()
}

/// Compressible text of exactly `len` bytes: numbered lines
/// `line 000000 of file SEED: the quick brown fox jumps`.
pub fn line_text(seed: u64, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 64);
    let mut i = 0u64;
    while out.len() < len {
        out.extend_from_slice(
            format!("line {i:06} of file {seed}: the quick brown fox jumps\n").as_bytes(),
        );
        i += 1;
    }
    out.truncate(len);
    out
}

/// Text-like bytes of exactly `len` bytes (compressible, like source
/// files): words picked by [`noise`] from a list of seven.
pub fn word_text(seed: u64, len: usize) -> Vec<u8> {
    let words = [
        "alpha ", "beta ", "gamma ", "delta\n", "epsilon ", "zeta ", "eta\n",
    ];
    let n = noise(seed, len);
    let mut out = Vec::with_capacity(len + 8);
    let mut i = 0;
    while out.len() < len {
        out.extend_from_slice(words[n[i % n.len()] as usize % words.len()].as_bytes());
        i += 1;
    }
    out.truncate(len);
    out
}

/// First position of `needle` in `hay`.
pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    let first = needle[0];
    let mut at = 0;
    while let Some(p) = hay[at..].iter().position(|&b| b == first) {
        let i = at + p;
        if i + needle.len() > hay.len() {
            return None;
        }
        if &hay[i..i + needle.len()] == needle {
            return Some(i);
        }
        at = i + 1;
    }
    None
}

/// Block-aligned (4 KiB) position of `needle` in an image.
pub fn find_block(image: &[u8], needle: &[u8]) -> Option<u64> {
    image
        .chunks(4096)
        .enumerate()
        .position(|(i, _)| image[i * 4096..].starts_with(needle))
        .map(|i| i as u64 * 4096)
}

/// The first differing offset of two byte strings, for messages.
pub fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    if a.len() != b.len() {
        return Some(a.len().min(b.len()));
    }
    a.iter().zip(b).position(|(x, y)| x != y)
}

/// Asserts `got == want`, naming the first differing byte (not dumping
/// megabytes).
#[track_caller]
pub fn assert_bytes_eq(got: &[u8], want: &[u8], what: &str) {
    if let Some(at) = first_difference(got, want) {
        panic!(
            "{what}: differs at byte {at} (got {} bytes, want {}; got {:02x?}, want {:02x?})",
            got.len(),
            want.len(),
            got.get(at..(at + 16).min(got.len())),
            want.get(at..(at + 16).min(want.len()))
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The generators' first bytes, pinned: tests and what they pin depend
    /// on them (values from the formulas, computed apart from this code).
    #[test]
    fn generators_make_their_pinned_bytes() {
        assert_eq!(
            noise(1, 12),
            [0x0b, 0x02, 0xe5, 0x36, 0xa1, 0x4e, 0xd6, 0x1a, 0xb0, 0x49, 0xb8, 0x56]
        );
        assert_eq!(
            nonzero_noise(1, 12),
            [0x0b, 0x03, 0xe5, 0x37, 0xa1, 0x4f, 0xd7, 0x1b, 0xb1, 0x49, 0xb9, 0x57]
        );
        assert_eq!(
            random_bytes(1, 12),
            [0xb5, 0x1f, 0xe5, 0x78, 0x28, 0x9f, 0xa5, 0x1e, 0xf5, 0x64, 0xa1, 0x1f]
        );
        let n = noise(7, 1 << 16);
        let nz = nonzero_noise(7, 1 << 16);
        assert!(n.iter().zip(&nz).all(|(a, b)| a | 1 == *b));
        assert!(n.contains(&0) && !nz.contains(&0));
    }

    #[test]
    fn text_generators_have_the_asked_length() {
        for len in [0, 1, 51, 52, 53, 4097] {
            assert_eq!(line_text(3, len).len(), len);
            assert_eq!(word_text(3, len).len(), len);
        }
        assert!(line_text(3, 60).starts_with(b"line 000000 of file 3: the quick brown fox jumps\n"));
    }

    #[test]
    fn find_and_first_difference() {
        let hay = b"abcabd";
        assert_eq!(find(hay, b"abd"), Some(3));
        assert_eq!(find(hay, b"abe"), None);
        assert_eq!(first_difference(b"abc", b"abd"), Some(2));
        assert_eq!(first_difference(b"ab", b"abc"), Some(2));
        assert_eq!(first_difference(b"abc", b"abc"), None);
        let mut image = vec![0u8; 3 * 4096];
        image[4096..8192].copy_from_slice(&nonzero_noise(1, 4096));
        assert_eq!(find_block(&image, &nonzero_noise(1, 4096)), Some(4096));
    }
}

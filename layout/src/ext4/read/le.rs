//! Little-endian field reads. Callers check bounds first: every offset
//! handed here is either a constant inside a fixed-size record or was
//! checked against the buffer's length.

pub fn le16(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([b[off], b[off + 1]])
}

pub fn le32(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

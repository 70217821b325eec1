//! Little helpers to write and read the variable-length parts of the
//! package manifest and the reverse-differential table: unsigned LEB128
//! varints (little-endian base 128), length-prefixed byte strings and
//! 32-byte hashes. Fixed-size header fields use `to_le_bytes` directly.

pub type Hash = [u8; 32];

/// Appends encoded values to a buffer.
#[derive(Default)]
pub struct Writer {
    pub buf: Vec<u8>,
}

impl Writer {
    pub fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }
    pub fn var(&mut self, mut v: u64) {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                self.buf.push(b);
                return;
            }
            self.buf.push(b | 0x80);
        }
    }
    pub fn bytes(&mut self, b: &[u8]) {
        self.var(b.len() as u64);
        self.buf.extend_from_slice(b);
    }
    pub fn hash(&mut self, h: &Hash) {
        self.buf.extend_from_slice(h);
    }
    pub fn raw(&mut self, b: &[u8]) {
        self.buf.extend_from_slice(b);
    }
}

/// Reads encoded values, never past the end: every read fails with the
/// offset at which the input ran out or was invalid.
pub struct Reader<'a> {
    b: &'a [u8],
    pub pos: usize,
}

/// Where and why decoding failed.
#[derive(Debug)]
pub struct WireFault {
    pub offset: u64,
    pub what: String,
}

pub fn fault(offset: usize, what: impl Into<String>) -> WireFault {
    WireFault {
        offset: offset as u64,
        what: what.into(),
    }
}

impl<'a> Reader<'a> {
    pub fn new(b: &'a [u8]) -> Self {
        Reader { b, pos: 0 }
    }
    pub fn at_end(&self) -> bool {
        self.pos == self.b.len()
    }
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], WireFault> {
        if self.b.len() - self.pos < n {
            return Err(fault(
                self.pos,
                format!("truncated: {what} needs {n} bytes"),
            ));
        }
        let s = &self.b[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    pub fn u8(&mut self, what: &str) -> Result<u8, WireFault> {
        Ok(self.take(1, what)?[0])
    }
    pub fn var(&mut self, what: &str) -> Result<u64, WireFault> {
        let start = self.pos;
        let mut v = 0u64;
        for i in 0..10 {
            let b = self.u8(what)?;
            let bits = (b & 0x7f) as u64;
            if i == 9 && bits > 1 {
                return Err(fault(start, format!("{what}: varint overflows 64 bits")));
            }
            v |= bits << (7 * i);
            if b & 0x80 == 0 {
                if i > 0 && b == 0 {
                    return Err(fault(start, format!("{what}: varint not minimal")));
                }
                return Ok(v);
            }
        }
        Err(fault(start, format!("{what}: varint longer than 10 bytes")))
    }
    /// A varint that must fit in `u32`.
    pub fn var32(&mut self, what: &str) -> Result<u32, WireFault> {
        let at = self.pos;
        let v = self.var(what)?;
        u32::try_from(v).map_err(|_| fault(at, format!("{what}: {v} does not fit 32 bits")))
    }
    pub fn bytes(&mut self, max: usize, what: &str) -> Result<&'a [u8], WireFault> {
        let at = self.pos;
        let n = self.var(what)?;
        if n > max as u64 {
            return Err(fault(at, format!("{what}: {n} bytes (at most {max})")));
        }
        self.take(n as usize, what)
    }
    pub fn hash(&mut self, what: &str) -> Result<Hash, WireFault> {
        Ok(self.take(32, what)?.try_into().expect("32 bytes"))
    }
    pub fn raw(&mut self, n: usize, what: &str) -> Result<&'a [u8], WireFault> {
        self.take(n, what)
    }
}

impl<'a> Reader<'a> {
    /// The rest of the input as a counted list (`var` count, then items)
    /// in strictly ascending `key` order, ending exactly at the end of the
    /// input. `what` names the items ("pieces", "entries") in faults.
    pub fn sorted_tail<T>(
        &mut self,
        what: &str,
        mut item: impl FnMut(&mut Reader<'a>) -> Result<T, WireFault>,
        key: impl Fn(&T) -> u32,
    ) -> Result<Vec<T>, WireFault> {
        let at = self.pos;
        let n = self.var("count")?;
        if n > self.b.len() as u64 {
            return Err(fault(at, format!("{n} {what} in {} bytes", self.b.len())));
        }
        let mut out: Vec<T> = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let at = self.pos;
            let x = item(self)?;
            if out.last().is_some_and(|l| key(l) >= key(&x)) {
                return Err(fault(at, format!("{what} not in ascending inode order")));
            }
            out.push(x);
        }
        if !self.at_end() {
            return Err(fault(
                self.pos,
                format!("bytes after the last of the {what}"),
            ));
        }
        Ok(out)
    }
}

pub fn hex(h: &[u8]) -> String {
    h.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_round_trip_and_pin() {
        let mut w = Writer::default();
        for v in [0u64, 1, 127, 128, 300, u32::MAX as u64, u64::MAX] {
            w.var(v);
        }
        assert_eq!(&w.buf[..6], &[0, 1, 0x7f, 0x80, 0x01, 0xac]);
        let mut r = Reader::new(&w.buf);
        for v in [0u64, 1, 127, 128, 300, u32::MAX as u64, u64::MAX] {
            assert_eq!(r.var("v").unwrap(), v);
        }
        assert!(r.at_end());
        // Non-minimal, overlong and truncated forms are refused.
        assert!(Reader::new(&[0x80, 0x00]).var("v").is_err());
        assert!(Reader::new(&[0xff; 11]).var("v").is_err());
        assert!(Reader::new(&[0x80]).var("v").is_err());
        assert!(
            Reader::new(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02])
                .var("v")
                .is_err()
        );
    }
}

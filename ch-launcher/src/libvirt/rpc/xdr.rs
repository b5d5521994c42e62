//! The subset of XDR (RFC 4506) that libvirt's RPC protocol uses: 32-bit
//! ints, 64-bit hypers, strings, fixed and variable opaque data, optional
//! values (`T *` in the `.x` files: a bool then the value) and arrays.
//!
//! Hand-written because the crates that exist are unmaintained (`xdr-codec`),
//! GPL-licensed on a deprecated error crate (`serde-xdr`) or brand new
//! (`libvirt-xdr`); the whole codec is these few functions.

use std::fmt;

/// Everything is padded to a multiple of four bytes.
const UNIT: usize = 4;

/// Largest string or opaque the decoder accepts; libvirt's own bound
/// (`VIR_NET_MESSAGE_STRING_MAX`).
pub const STRING_MAX: usize = 4_194_304;

/// A body that does not decode as the type the procedure promises.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError(pub String);

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "malformed XDR: {}", self.0)
    }
}

impl std::error::Error for DecodeError {}

fn padding(len: usize) -> usize {
    (UNIT - len % UNIT) % UNIT
}

/// Appends XDR values to a byte buffer.
#[derive(Debug, Default)]
pub struct Encoder {
    buf: Vec<u8>,
}

impl Encoder {
    pub fn new() -> Encoder {
        Encoder::default()
    }

    /// An encoder continuing `buf` (the frame header already in it).
    pub fn with_buffer(buf: Vec<u8>) -> Encoder {
        Encoder { buf }
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.buf
    }

    pub fn bytes_mut(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }

    pub fn int(&mut self, v: i32) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    pub fn uint(&mut self, v: u32) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    pub fn hyper(&mut self, v: i64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    pub fn uhyper(&mut self, v: u64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    pub fn bool(&mut self, v: bool) -> &mut Self {
        self.uint(u32::from(v))
    }

    /// Fixed-length opaque data (`opaque x[N]`): no length word.
    pub fn fixed_opaque(&mut self, data: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(data);
        self.buf.resize(self.buf.len() + padding(data.len()), 0);
        self
    }

    /// Variable-length opaque data (`opaque x<>`): length, bytes, padding.
    /// Lengths beyond `u32` cannot be sent; the caller's data (domain XML,
    /// names) is far below libvirt's own 4 MiB string limit.
    pub fn opaque(&mut self, data: &[u8]) -> &mut Self {
        let len = u32::try_from(data.len()).unwrap_or(u32::MAX);
        self.uint(len);
        self.fixed_opaque(data)
    }

    pub fn string(&mut self, s: &str) -> &mut Self {
        self.opaque(s.as_bytes())
    }

    /// An optional value (`T *v`): a bool, then the value when present.
    pub fn optional<T>(&mut self, v: Option<T>, f: impl FnOnce(&mut Self, T)) -> &mut Self {
        match v {
            Some(v) => {
                self.bool(true);
                f(self, v);
            }
            None => {
                self.bool(false);
            }
        }
        self
    }

    pub fn optional_string(&mut self, s: Option<&str>) -> &mut Self {
        self.optional(s, |e, s| {
            e.string(s);
        })
    }
}

/// Reads XDR values from a byte slice, front to back.
#[derive(Debug)]
pub struct Decoder<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Decoder<'a> {
    pub fn new(data: &'a [u8]) -> Decoder<'a> {
        Decoder { data, pos: 0 }
    }

    /// Bytes not yet read.
    pub fn remaining(&self) -> usize {
        self.data.len() - self.pos
    }

    /// Fails unless the whole input was read: trailing bytes mean the
    /// message is not the type it was decoded as.
    pub fn finish(&self) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            n => Err(DecodeError(format!("{n} unexpected trailing bytes"))),
        }
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], DecodeError> {
        if self.remaining() < n {
            return Err(DecodeError(format!(
                "{what}: needs {n} bytes at offset {}, only {} left",
                self.pos,
                self.remaining()
            )));
        }
        let slice = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(slice)
    }

    fn word(&mut self, what: &str) -> Result<[u8; 4], DecodeError> {
        let mut w = [0u8; 4];
        w.copy_from_slice(self.take(4, what)?);
        Ok(w)
    }

    pub fn int(&mut self) -> Result<i32, DecodeError> {
        Ok(i32::from_be_bytes(self.word("int")?))
    }

    pub fn uint(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.word("unsigned int")?))
    }

    pub fn hyper(&mut self) -> Result<i64, DecodeError> {
        let mut w = [0u8; 8];
        w.copy_from_slice(self.take(8, "hyper")?);
        Ok(i64::from_be_bytes(w))
    }

    pub fn uhyper(&mut self) -> Result<u64, DecodeError> {
        let mut w = [0u8; 8];
        w.copy_from_slice(self.take(8, "unsigned hyper")?);
        Ok(u64::from_be_bytes(w))
    }

    pub fn bool(&mut self) -> Result<bool, DecodeError> {
        match self.uint()? {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(DecodeError(format!("bool must be 0 or 1, got {other}"))),
        }
    }

    pub fn fixed_opaque(&mut self, len: usize) -> Result<&'a [u8], DecodeError> {
        let data = self.take(len, "opaque data")?;
        let pad = self.take(padding(len), "padding")?;
        if pad.iter().any(|&b| b != 0) {
            return Err(DecodeError("non-zero padding".into()));
        }
        Ok(data)
    }

    pub fn opaque(&mut self) -> Result<&'a [u8], DecodeError> {
        let len = self.uint()? as usize;
        if len > STRING_MAX {
            return Err(DecodeError(format!(
                "length {len} exceeds the limit of {STRING_MAX}"
            )));
        }
        self.fixed_opaque(len)
    }

    pub fn string(&mut self) -> Result<String, DecodeError> {
        let bytes = self.opaque()?;
        String::from_utf8(bytes.to_vec()).map_err(|e| DecodeError(format!("string: {e}")))
    }

    pub fn optional<T>(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<T, DecodeError>,
    ) -> Result<Option<T>, DecodeError> {
        if self.bool()? {
            f(self).map(Some)
        } else {
            Ok(None)
        }
    }

    pub fn optional_string(&mut self) -> Result<Option<String>, DecodeError> {
        self.optional(|d| d.string())
    }

    /// A variable-length array (`T x<max>`): a count, then the elements.
    pub fn array<T>(
        &mut self,
        max: usize,
        mut f: impl FnMut(&mut Self) -> Result<T, DecodeError>,
    ) -> Result<Vec<T>, DecodeError> {
        let n = self.uint()? as usize;
        if n > max {
            return Err(DecodeError(format!(
                "array of {n} elements exceeds the limit of {max}"
            )));
        }
        // Each element takes at least 4 bytes: a count beyond that is a lie.
        if n > self.remaining() / UNIT {
            return Err(DecodeError(format!(
                "array of {n} elements in {} bytes",
                self.remaining()
            )));
        }
        (0..n).map(|_| f(self)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_are_big_endian_words() {
        let mut e = Encoder::new();
        e.int(-1).uint(0x2000_8086).hyper(-2).uhyper(7_002_022);
        let bytes = e.into_bytes();
        assert_eq!(
            bytes,
            [
                0xff, 0xff, 0xff, 0xff, 0x20, 0x00, 0x80, 0x86, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
                0xff, 0xfe, 0, 0, 0, 0, 0, 0x6a, 0xd7, 0xa6
            ]
        );
        let mut d = Decoder::new(&bytes);
        assert_eq!(d.int(), Ok(-1));
        assert_eq!(d.uint(), Ok(0x2000_8086));
        assert_eq!(d.hyper(), Ok(-2));
        assert_eq!(d.uhyper(), Ok(7_002_022));
        assert_eq!(d.finish(), Ok(()));
    }

    #[test]
    fn strings_carry_a_length_and_pad_to_four_bytes() {
        for (s, len) in [("", 4), ("a", 8), ("abcd", 8), ("abcde", 12)] {
            let mut e = Encoder::new();
            e.string(s);
            let bytes = e.into_bytes();
            assert_eq!(bytes.len(), len, "{s:?}");
            assert_eq!(&bytes[..4], &(s.len() as u32).to_be_bytes());
            let mut d = Decoder::new(&bytes);
            assert_eq!(d.string().as_deref(), Ok(s));
            assert_eq!(d.finish(), Ok(()));
        }
    }

    #[test]
    fn optional_values_are_a_bool_then_the_value() {
        let mut e = Encoder::new();
        e.optional_string(Some("x")).optional_string(None);
        let bytes = e.into_bytes();
        assert_eq!(bytes, [0, 0, 0, 1, 0, 0, 0, 1, b'x', 0, 0, 0, 0, 0, 0, 0]);
        let mut d = Decoder::new(&bytes);
        assert_eq!(d.optional_string(), Ok(Some("x".into())));
        assert_eq!(d.optional_string(), Ok(None));
    }

    #[test]
    fn fixed_opaque_has_no_length_word() {
        let mut e = Encoder::new();
        e.fixed_opaque(&[1, 2, 3]);
        assert_eq!(e.into_bytes(), [1, 2, 3, 0]);
    }

    #[test]
    fn truncated_input_is_an_error_not_a_panic() {
        let mut d = Decoder::new(&[0, 0, 0, 9, b'a']);
        assert!(d.string().is_err());
        let mut d = Decoder::new(&[0, 0]);
        assert!(d.int().is_err());
        let mut d = Decoder::new(&[0, 0, 0, 0, 0]);
        assert!(d.hyper().is_err());
    }

    #[test]
    fn hostile_lengths_and_counts_are_refused() {
        let mut d = Decoder::new(&[0xff, 0xff, 0xff, 0xff]);
        assert!(d.opaque().is_err());
        let mut d = Decoder::new(&[0, 0, 0, 200, 0, 0, 0, 1]);
        assert!(d.array(1000, |d| d.int()).is_err());
        let mut d = Decoder::new(&[0, 0, 0, 2, 0, 0, 0, 1]);
        assert!(d.array(1, |d| d.int()).is_err());
    }

    #[test]
    fn bools_other_than_0_and_1_and_non_zero_padding_are_refused() {
        assert!(Decoder::new(&[0, 0, 0, 2]).bool().is_err());
        assert!(Decoder::new(&[0, 0, 0, 1, b'a', 1, 0, 0]).string().is_err());
    }

    #[test]
    fn trailing_bytes_are_reported() {
        let d = Decoder::new(&[0, 0, 0, 0]);
        assert!(d.finish().is_err());
    }
}

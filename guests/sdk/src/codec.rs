//! A tiny fixed little-endian codec for configuration and state blobs.
//!
//! Blobs are opaque to the host, so each strategy picks its own layout; these helpers keep the
//! layouts short and the decoding total (a corrupt blob decodes to `None`, never a panic).

use alloc::string::String;
use alloc::vec::Vec;

/// Appends values to a blob.
#[derive(Default)]
pub struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    /// An empty blob.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a `u64`.
    pub fn u64(mut self, value: u64) -> Self {
        self.buf.extend_from_slice(&value.to_le_bytes());
        self
    }

    /// Appends a length-prefixed string.
    pub fn str(self, value: &str) -> Self {
        let mut this = self.u64(value.len() as u64);
        this.buf.extend_from_slice(value.as_bytes());
        this
    }

    /// The finished blob.
    pub fn finish(self) -> Vec<u8> {
        self.buf
    }
}

/// Reads values back from a blob in the order they were written.
pub struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    /// Starts reading `blob`.
    pub fn new(blob: &'a [u8]) -> Self {
        Self { rest: blob }
    }

    /// The next `u64`, or `None` when the blob is too short.
    pub fn u64(&mut self) -> Option<u64> {
        let (head, rest) = self.rest.split_first_chunk::<8>()?;
        self.rest = rest;
        Some(u64::from_le_bytes(*head))
    }

    /// The next string, or `None` when the blob is short or not UTF-8.
    pub fn str(&mut self) -> Option<String> {
        let len = usize::try_from(self.u64()?).ok()?;
        if len > self.rest.len() {
            return None;
        }
        let (head, rest) = self.rest.split_at(len);
        self.rest = rest;
        core::str::from_utf8(head).ok().map(String::from)
    }

    /// Whether every byte was read.
    pub fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }
}

/// Encodes a fixed array of `u64`s.
pub fn encode_u64s<const N: usize>(values: [u64; N]) -> Vec<u8> {
    values.iter().fold(Writer::new(), |w, v| w.u64(*v)).finish()
}

/// Decodes exactly `N` `u64`s, or `None` when the blob has another length.
pub fn decode_u64s<const N: usize>(blob: &[u8]) -> Option<[u64; N]> {
    if blob.len() != N * 8 {
        return None;
    }
    let mut reader = Reader::new(blob);
    let mut out = [0u64; N];
    for slot in &mut out {
        *slot = reader.u64()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn u64s_round_trip_and_reject_other_lengths() {
        let blob = encode_u64s([1, u64::MAX, 42]);
        assert_eq!(decode_u64s::<3>(&blob), Some([1, u64::MAX, 42]));
        assert_eq!(decode_u64s::<2>(&blob), None);
        assert_eq!(decode_u64s::<3>(&blob[..23]), None);
    }

    #[test]
    fn strings_round_trip_and_truncation_is_none() {
        let blob = Writer::new().str("gpt-4o").u64(7).finish();
        let mut r = Reader::new(&blob);
        assert_eq!(r.str().as_deref(), Some("gpt-4o"));
        assert_eq!(r.u64(), Some(7));
        assert!(r.is_empty());
        let mut short = Reader::new(&blob[..10]);
        assert_eq!(short.str(), None);
    }
}

//! Little-endian primitives shared by every message: a bounds-checked reader
//! over `Bytes` (zero-copy slices) and matching writers.

use bytes::{Buf, BufMut, Bytes};

use crate::error::DecodeError;

/// Longest string field (topic names, hosts, messages) accepted on decode.
pub(crate) const STRING_BYTES_MAX: usize = u16::MAX as usize;
/// Most elements in any list field accepted on decode.
pub(crate) const LIST_LEN_MAX: usize = 100_000;

pub(crate) struct Reader {
    buf: Bytes,
}

impl Reader {
    pub(crate) fn new(buf: Bytes) -> Self {
        Reader { buf }
    }

    fn need(&self, n: usize, field: &'static str) -> Result<(), DecodeError> {
        if self.buf.remaining() < n {
            Err(DecodeError::Truncated { field })
        } else {
            Ok(())
        }
    }

    pub(crate) fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        self.need(1, field)?;
        Ok(self.buf.get_u8())
    }
    pub(crate) fn u16(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        self.need(2, field)?;
        Ok(self.buf.get_u16_le())
    }
    pub(crate) fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        self.need(4, field)?;
        Ok(self.buf.get_u32_le())
    }
    pub(crate) fn u64(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        self.need(8, field)?;
        Ok(self.buf.get_u64_le())
    }
    pub(crate) fn u128(&mut self, field: &'static str) -> Result<u128, DecodeError> {
        self.need(16, field)?;
        Ok(self.buf.get_u128_le())
    }
    pub(crate) fn i64(&mut self, field: &'static str) -> Result<i64, DecodeError> {
        self.need(8, field)?;
        Ok(self.buf.get_i64_le())
    }
    pub(crate) fn bool(&mut self, field: &'static str) -> Result<bool, DecodeError> {
        match self.u8(field)? {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(DecodeError::Invalid {
                field,
                detail: format!("boolean byte {other}"),
            }),
        }
    }

    /// A `u32`-length-prefixed byte string, returned without copying.
    pub(crate) fn bytes(&mut self, field: &'static str, max: usize) -> Result<Bytes, DecodeError> {
        let len = self.u32(field)? as usize;
        if len > max {
            return Err(DecodeError::TooLarge {
                field,
                actual: len as u64,
                limit: max as u64,
            });
        }
        self.need(len, field)?;
        Ok(self.buf.split_to(len))
    }

    pub(crate) fn string(&mut self, field: &'static str) -> Result<String, DecodeError> {
        let len = self.u16(field)? as usize;
        if len > STRING_BYTES_MAX {
            return Err(DecodeError::TooLarge {
                field,
                actual: len as u64,
                limit: STRING_BYTES_MAX as u64,
            });
        }
        self.need(len, field)?;
        let raw = self.buf.split_to(len);
        String::from_utf8(raw.to_vec()).map_err(|_| DecodeError::InvalidUtf8 { field })
    }

    /// A `u32` element count, checked against [`LIST_LEN_MAX`] and against the
    /// bytes left (each element takes at least `min_elem_bytes`), so a forged
    /// count can never make us allocate more than the frame justifies.
    pub(crate) fn list_len(
        &mut self,
        field: &'static str,
        min_elem_bytes: usize,
    ) -> Result<usize, DecodeError> {
        let n = self.u32(field)? as usize;
        if n > LIST_LEN_MAX {
            return Err(DecodeError::TooLarge {
                field,
                actual: n as u64,
                limit: LIST_LEN_MAX as u64,
            });
        }
        if n.saturating_mul(min_elem_bytes.max(1)) > self.buf.remaining() {
            return Err(DecodeError::Truncated { field });
        }
        Ok(n)
    }

    pub(crate) fn finish(self) -> Result<(), DecodeError> {
        if self.buf.has_remaining() {
            Err(DecodeError::TrailingBytes(self.buf.remaining()))
        } else {
            Ok(())
        }
    }
}

pub(crate) fn put_string(out: &mut impl BufMut, s: &str) {
    let mut len = s.len().min(STRING_BYTES_MAX);
    while !s.is_char_boundary(len) {
        len -= 1;
    }
    out.put_u16_le(len as u16);
    out.put_slice(&s.as_bytes()[..len]);
}

pub(crate) fn put_bytes(out: &mut impl BufMut, b: &[u8]) {
    out.put_u32_le(b.len() as u32);
    out.put_slice(b);
}

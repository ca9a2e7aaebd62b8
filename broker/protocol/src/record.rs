//! The record batch: the unit a producer sends, the broker stores and a
//! consumer fetches. Stored bytes are exactly the bytes produced, except the
//! base offset, which the broker writes when it appends.
//!
//! Layout (little-endian):
//!
//! ```text
//! 0   base_offset      u64   assigned by the broker; NOT covered by the CRC
//! 8   batch_len        u32   bytes after this field (total length - 12)
//! 12  crc32c           u32   CRC-32C of bytes [16, end)
//! 16  magic            u8    = 1
//! 17  attributes       u8    bit 0: ATTR_SEQUENCE_PER_RECORD; others 0
//! 18  record_count     u32
//! 22  first_timestamp  i64   ms since the Unix epoch
//! 30  max_timestamp    i64
//! 38  producer_id      i64   -1 when none
//! 46  base_sequence    i32   -1 when none
//! 50  records...
//! ```
//!
//! Each record: `len u32` (bytes after this field), `offset_delta u32`,
//! `timestamp i64`, `key_len i32` (-1 = no key), key, `value_len i32`
//! (-1 = null value), value, `header_count u16`, then per header
//! `name_len u16`, name (UTF-8), `value_len u32`, value.
//!
//! Because the CRC excludes the base offset, the broker assigns offsets by
//! patching 8 bytes, without re-hashing the batch.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use thiserror::Error;

/// Size of the fixed batch header.
pub const BATCH_HEADER_BYTES: usize = 50;
/// Bytes before the CRC-covered region (base offset, length, crc).
const CRC_START: usize = 16;
/// The only batch format this build writes and reads.
pub const BATCH_MAGIC: u8 = 1;
/// Attribute bit: the batch's sequence numbers count records, not batches
/// (Kafka's idempotent producers number every record; the batch after one
/// of `n` records starting at `s` starts at `s + n`). Without it, Tern's
/// producers number batches.
pub const ATTR_SEQUENCE_PER_RECORD: u8 = 0x01;
/// Every attribute bit this build understands; a batch with another set is
/// refused rather than misread.
pub const ATTRS_KNOWN: u8 = ATTR_SEQUENCE_PER_RECORD;
/// Largest batch accepted anywhere (producer, broker, consumer).
pub const BATCH_BYTES_MAX: usize = 8 * 1024 * 1024;
/// Most headers on one record.
pub const RECORD_HEADERS_MAX: usize = 1024;
/// Fixed bytes of one record besides key, value and headers.
const RECORD_FIXED_BYTES: usize = 4 + 4 + 8 + 4 + 4 + 2;

/// What is wrong with a record batch.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum BatchError {
    /// Fewer bytes than a batch header, or than the header's length says.
    #[error("batch truncated: need {needed} bytes, have {have}")]
    Truncated {
        /// Bytes the header requires.
        needed: usize,
        /// Bytes available.
        have: usize,
    },
    /// The batch is larger than [`BATCH_BYTES_MAX`].
    #[error("batch of {0} bytes exceeds the limit of {BATCH_BYTES_MAX}")]
    TooLarge(usize),
    /// The CRC does not match: the bytes were corrupted in flight or on disk.
    #[error("batch CRC mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    CrcMismatch {
        /// The CRC in the header.
        stored: u32,
        /// The CRC of the bytes.
        computed: u32,
    },
    /// Unknown batch format.
    #[error("unknown batch magic {0}")]
    BadMagic(u8),
    /// The records do not match the header (count, lengths, offset deltas).
    #[error("malformed batch: {0}")]
    Malformed(String),
}

/// One record to be produced.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Record {
    /// Optional key; keyed records are routed by a consistent hash of it.
    pub key: Option<Bytes>,
    /// The payload; `None` is a null value (a tombstone).
    pub value: Option<Bytes>,
    /// Milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    /// Application headers.
    pub headers: Vec<(String, Bytes)>,
}

impl Record {
    /// Bytes this record takes inside a batch.
    pub fn encoded_len(&self) -> usize {
        RECORD_FIXED_BYTES
            + self.key.as_ref().map_or(0, |k| k.len())
            + self.value.as_ref().map_or(0, |v| v.len())
            + self
                .headers
                .iter()
                .map(|(k, v)| 2 + k.len() + 4 + v.len())
                .sum::<usize>()
    }
}

/// Accumulates records into one encoded batch.
#[derive(Debug)]
pub struct BatchBuilder {
    buf: BytesMut,
    attributes: u8,
    count: u32,
    first_timestamp: i64,
    max_timestamp: i64,
}

impl BatchBuilder {
    /// Starts an empty batch with room for `capacity` bytes.
    pub fn with_capacity(capacity: usize) -> Self {
        let mut buf = BytesMut::with_capacity(capacity.max(BATCH_HEADER_BYTES));
        buf.put_bytes(0, BATCH_HEADER_BYTES);
        BatchBuilder {
            buf,
            attributes: 0,
            count: 0,
            first_timestamp: 0,
            max_timestamp: i64::MIN,
        }
    }

    /// Sets the batch's attribute bits (see [`ATTR_SEQUENCE_PER_RECORD`]).
    pub fn set_attributes(&mut self, attributes: u8) {
        self.attributes = attributes;
    }

    /// Bytes the batch would take if finished now.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Number of records added.
    pub fn record_count(&self) -> u32 {
        self.count
    }

    /// Whether no record was added.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Appends a record. Headers beyond [`RECORD_HEADERS_MAX`] are rejected
    /// by the broker, so callers should check before adding.
    pub fn push(&mut self, record: &Record) {
        if self.count == 0 {
            self.first_timestamp = record.timestamp_ms;
        }
        self.max_timestamp = self.max_timestamp.max(record.timestamp_ms);
        let len = record.encoded_len() - 4;
        let b = &mut self.buf;
        b.put_u32_le(len as u32);
        b.put_u32_le(self.count);
        b.put_i64_le(record.timestamp_ms);
        match &record.key {
            Some(k) => {
                b.put_i32_le(k.len() as i32);
                b.put_slice(k);
            }
            None => b.put_i32_le(-1),
        }
        match &record.value {
            Some(v) => {
                b.put_i32_le(v.len() as i32);
                b.put_slice(v);
            }
            None => b.put_i32_le(-1),
        }
        b.put_u16_le(record.headers.len() as u16);
        for (name, value) in &record.headers {
            b.put_u16_le(name.len() as u16);
            b.put_slice(name.as_bytes());
            b.put_u32_le(value.len() as u32);
            b.put_slice(value);
        }
        self.count += 1;
    }

    /// Seals the batch: writes the header and CRC. `producer_id` and
    /// `base_sequence` are -1 for a non-idempotent producer.
    pub fn finish(self, producer_id: i64, base_sequence: i32) -> Bytes {
        stamp_batch(self.finish_unstamped(), producer_id, base_sequence)
    }

    /// Writes the header except the producer stamp and the CRC, which
    /// [`stamp_batch`] adds: a producer decides a batch's sequence number
    /// when it first sends it, not when it seals it.
    pub fn finish_unstamped(mut self) -> BytesMut {
        let total = self.buf.len();
        let mut h = &mut self.buf[..BATCH_HEADER_BYTES];
        h.put_u64_le(0);
        h.put_u32_le((total - 12) as u32);
        h.put_u32_le(0);
        h.put_u8(BATCH_MAGIC);
        h.put_u8(self.attributes);
        h.put_u32_le(self.count);
        h.put_i64_le(self.first_timestamp);
        h.put_i64_le(if self.count == 0 {
            self.first_timestamp
        } else {
            self.max_timestamp
        });
        h.put_i64_le(-1);
        h.put_i32_le(-1);
        self.buf
    }
}

/// The sequence number a producer gives the batch after the one numbered
/// `sequence`: sequences count up per partition and wrap to 0 after
/// `i32::MAX` (negative means "no sequence").
pub fn next_sequence(sequence: i32) -> i32 {
    sequence.wrapping_add(1) & i32::MAX
}

/// Writes a finished batch's producer id and base sequence and computes its
/// CRC. Restamping a stamped batch (copied into a `BytesMut`) is allowed.
///
/// # Panics
/// If `batch` is shorter than a batch header (it comes from
/// [`BatchBuilder::finish_unstamped`] or is a valid batch).
pub fn stamp_batch(mut batch: BytesMut, producer_id: i64, base_sequence: i32) -> Bytes {
    let mut h = &mut batch[38..BATCH_HEADER_BYTES];
    h.put_i64_le(producer_id);
    h.put_i32_le(base_sequence);
    let crc = crc32c::crc32c(&batch[CRC_START..]);
    batch[12..16].copy_from_slice(&crc.to_le_bytes());
    batch.freeze()
}

/// A validated view of one encoded batch.
#[derive(Debug, Clone)]
pub struct BatchView {
    bytes: Bytes,
}

/// A record borrowed from a batch, with its absolute offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordRef {
    /// Absolute offset in the partition.
    pub offset: u64,
    /// Milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    /// The key, if any.
    pub key: Option<Bytes>,
    /// The value, or `None` for a null value.
    pub value: Option<Bytes>,
    /// Application headers.
    pub headers: Vec<(String, Bytes)>,
}

impl BatchView {
    /// Length of the batch starting at the front of `buf`, read from its
    /// header, or an error if the header is incomplete or absurd. Used to
    /// split a concatenation of batches without parsing records.
    pub fn peek_len(buf: &[u8]) -> Result<usize, BatchError> {
        if buf.len() < 12 {
            return Err(BatchError::Truncated {
                needed: BATCH_HEADER_BYTES,
                have: buf.len(),
            });
        }
        let len = u32::from_le_bytes(buf[8..12].try_into().expect("4 bytes")) as usize + 12;
        if len > BATCH_BYTES_MAX {
            return Err(BatchError::TooLarge(len));
        }
        if len < BATCH_HEADER_BYTES {
            return Err(BatchError::Malformed(format!(
                "batch length {len} below the header size"
            )));
        }
        Ok(len)
    }

    /// Checks the header and CRC only (the read-path check: cheap, and
    /// enough to never serve corrupted bytes).
    pub fn check_crc(bytes: Bytes) -> Result<BatchView, BatchError> {
        let len = Self::peek_len(&bytes)?;
        if bytes.len() != len {
            return Err(BatchError::Truncated {
                needed: len,
                have: bytes.len(),
            });
        }
        let stored = u32::from_le_bytes(bytes[12..16].try_into().expect("4 bytes"));
        let computed = crc32c::crc32c(&bytes[CRC_START..]);
        if stored != computed {
            return Err(BatchError::CrcMismatch { stored, computed });
        }
        if bytes[16] != BATCH_MAGIC {
            return Err(BatchError::BadMagic(bytes[16]));
        }
        if bytes[17] & !ATTRS_KNOWN != 0 {
            return Err(BatchError::Malformed(format!(
                "unknown attribute bits {:#04x}",
                bytes[17] & !ATTRS_KNOWN
            )));
        }
        Ok(BatchView { bytes })
    }

    /// Full validation (the produce-path check): CRC, then every record's
    /// structure, count and offset deltas.
    pub fn validate(bytes: Bytes) -> Result<BatchView, BatchError> {
        let view = Self::check_crc(bytes)?;
        let mut n = 0u32;
        for r in view.records() {
            r?;
            n += 1;
        }
        if n != view.record_count() {
            return Err(BatchError::Malformed(format!(
                "header says {} records, found {n}",
                view.record_count()
            )));
        }
        if n == 0 {
            return Err(BatchError::Malformed("empty batch".into()));
        }
        Ok(view)
    }

    /// The raw bytes of the batch.
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// Consumes the view, returning its bytes.
    pub fn into_bytes(self) -> Bytes {
        self.bytes
    }

    fn u32_at(&self, at: usize) -> u32 {
        u32::from_le_bytes(self.bytes[at..at + 4].try_into().expect("4 bytes"))
    }
    fn i64_at(&self, at: usize) -> i64 {
        i64::from_le_bytes(self.bytes[at..at + 8].try_into().expect("8 bytes"))
    }

    /// Offset of the first record.
    pub fn base_offset(&self) -> u64 {
        self.i64_at(0) as u64
    }
    /// Number of records.
    pub fn record_count(&self) -> u32 {
        self.u32_at(18)
    }
    /// Offset after the last record.
    pub fn next_offset(&self) -> u64 {
        self.base_offset() + self.record_count() as u64
    }
    /// Timestamp of the first record.
    pub fn first_timestamp(&self) -> i64 {
        self.i64_at(22)
    }
    /// Largest record timestamp.
    pub fn max_timestamp(&self) -> i64 {
        self.i64_at(30)
    }
    /// Producer id, -1 when none.
    pub fn producer_id(&self) -> i64 {
        self.i64_at(38)
    }
    /// Sequence number of the first record, -1 when none.
    pub fn base_sequence(&self) -> i32 {
        self.u32_at(46) as i32
    }

    /// The attribute bits.
    pub fn attributes(&self) -> u8 {
        self.bytes[17]
    }

    /// The sequence number the batch ends at: its base sequence, or with
    /// [`ATTR_SEQUENCE_PER_RECORD`] that of its last record (wrapping like
    /// [`next_sequence`]). -1 when the batch has no sequence.
    pub fn last_sequence(&self) -> i32 {
        let base = self.base_sequence();
        if base < 0 || self.attributes() & ATTR_SEQUENCE_PER_RECORD == 0 {
            return base;
        }
        let records = self.record_count().saturating_sub(1) as i64;
        ((base as i64 + records) % (i32::MAX as i64 + 1)) as i32
    }

    /// Iterates the records, each checked against the batch bounds.
    pub fn records(&self) -> RecordIter {
        RecordIter {
            rest: self.bytes.slice(BATCH_HEADER_BYTES..),
            base_offset: self.base_offset(),
            expected_delta: 0,
            count: self.record_count(),
        }
    }

    /// Writes `base_offset` into an encoded batch (the broker's one mutation).
    pub fn set_base_offset(batch: &mut [u8], base_offset: u64) {
        batch[..8].copy_from_slice(&base_offset.to_le_bytes());
    }
}

/// Iterator over the records of a [`BatchView`].
#[derive(Debug)]
pub struct RecordIter {
    rest: Bytes,
    base_offset: u64,
    expected_delta: u32,
    count: u32,
}

impl RecordIter {
    fn malformed(&mut self, what: &str) -> Option<Result<RecordRef, BatchError>> {
        self.rest.clear();
        self.count = self.expected_delta;
        Some(Err(BatchError::Malformed(format!(
            "record {}: {what}",
            self.expected_delta
        ))))
    }
}

impl Iterator for RecordIter {
    type Item = Result<RecordRef, BatchError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.expected_delta >= self.count {
            if self.rest.has_remaining() {
                return self.malformed("bytes after the last record");
            }
            return None;
        }
        if self.rest.remaining() < 4 {
            return self.malformed("truncated length");
        }
        let len = self.rest.get_u32_le() as usize;
        if len > self.rest.remaining() || len < RECORD_FIXED_BYTES - 4 {
            return self.malformed("length out of bounds");
        }
        let mut r = self.rest.split_to(len);
        let delta = r.get_u32_le();
        if delta != self.expected_delta {
            return self.malformed("offset delta out of order");
        }
        let timestamp_ms = r.get_i64_le();
        let key = match take_optional(&mut r) {
            Ok(k) => k,
            Err(()) => return self.malformed("key length out of bounds"),
        };
        let value = match take_optional(&mut r) {
            Ok(v) => v,
            Err(()) => return self.malformed("value length out of bounds"),
        };
        if r.remaining() < 2 {
            return self.malformed("truncated header count");
        }
        let header_count = r.get_u16_le() as usize;
        if header_count > RECORD_HEADERS_MAX {
            return self.malformed("too many headers");
        }
        let mut headers = Vec::with_capacity(header_count.min(r.remaining() / 6));
        for _ in 0..header_count {
            if r.remaining() < 2 {
                return self.malformed("truncated header name");
            }
            let nlen = r.get_u16_le() as usize;
            if r.remaining() < nlen + 4 {
                return self.malformed("truncated header name");
            }
            let name = match std::str::from_utf8(&r[..nlen]) {
                Ok(s) => s.to_owned(),
                Err(_) => return self.malformed("header name is not UTF-8"),
            };
            r.advance(nlen);
            let vlen = r.get_u32_le() as usize;
            if r.remaining() < vlen {
                return self.malformed("truncated header value");
            }
            headers.push((name, r.split_to(vlen)));
        }
        if r.has_remaining() {
            return self.malformed("bytes after the record's headers");
        }
        let offset = self.base_offset + self.expected_delta as u64;
        self.expected_delta += 1;
        Some(Ok(RecordRef {
            offset,
            timestamp_ms,
            key,
            value,
            headers,
        }))
    }
}

fn take_optional(r: &mut Bytes) -> Result<Option<Bytes>, ()> {
    if r.remaining() < 4 {
        return Err(());
    }
    let len = r.get_i32_le();
    if len == -1 {
        return Ok(None);
    }
    if len < 0 || len as usize > r.remaining() {
        return Err(());
    }
    Ok(Some(r.split_to(len as usize)))
}

/// Splits a concatenation of batches (a fetch response) into validated
/// views, checking each CRC. Stops at the first bad batch with its error.
pub fn split_batches(mut data: Bytes) -> impl Iterator<Item = Result<BatchView, BatchError>> {
    std::iter::from_fn(move || {
        if data.is_empty() {
            return None;
        }
        match BatchView::peek_len(&data) {
            Ok(len) if len <= data.len() => Some(BatchView::check_crc(data.split_to(len))),
            Ok(len) => {
                let have = data.len();
                data.clear();
                Some(Err(BatchError::Truncated { needed: len, have }))
            }
            Err(e) => {
                data.clear();
                Some(Err(e))
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(i: u32) -> Record {
        Record {
            key: i.is_multiple_of(2).then(|| Bytes::from(format!("k{i}"))),
            value: Some(Bytes::from(format!("value-{i}"))),
            timestamp_ms: 1_700_000_000_000 + i as i64,
            headers: if i.is_multiple_of(3) {
                vec![("h".into(), Bytes::from_static(b"v"))]
            } else {
                vec![]
            },
        }
    }

    fn batch(n: u32) -> Bytes {
        let mut b = BatchBuilder::with_capacity(1024);
        for i in 0..n {
            b.push(&record(i));
        }
        b.finish(-1, -1)
    }

    #[test]
    fn a_restamped_batch_checks_out_with_its_new_stamp() {
        let mut b = BatchBuilder::with_capacity(256);
        b.push(&Record {
            key: Some(Bytes::from_static(b"k")),
            value: Some(Bytes::from_static(b"v")),
            ..Default::default()
        });
        let first = stamp_batch(b.finish_unstamped(), 7, 3);
        let view = BatchView::validate(first.clone()).expect("valid");
        assert_eq!((view.producer_id(), view.base_sequence()), (7, 3));
        let again = stamp_batch(BytesMut::from(&first[..]), 11, 0);
        let view = BatchView::validate(again).expect("valid after restamp");
        assert_eq!((view.producer_id(), view.base_sequence()), (11, 0));
        assert_eq!(view.records().count(), 1);
    }

    #[test]
    fn a_batch_round_trips_every_field() {
        let mut bytes = BytesMut::from(&batch(10)[..]);
        BatchView::set_base_offset(&mut bytes, 42);
        let view = BatchView::validate(bytes.freeze()).unwrap();
        assert_eq!(view.base_offset(), 42);
        assert_eq!(view.record_count(), 10);
        assert_eq!(view.max_timestamp(), 1_700_000_000_009);
        let got: Vec<_> = view.records().map(|r| r.unwrap()).collect();
        for (i, r) in got.iter().enumerate() {
            let want = record(i as u32);
            assert_eq!(r.offset, 42 + i as u64);
            assert_eq!(r.key, want.key);
            assert_eq!(r.value, want.value);
            assert_eq!(r.headers, want.headers);
            assert_eq!(r.timestamp_ms, want.timestamp_ms);
        }
    }

    #[test]
    fn a_flipped_bit_anywhere_after_the_offset_is_caught() {
        let good = batch(5);
        for i in 8..good.len() {
            let mut bad = BytesMut::from(&good[..]);
            bad[i] ^= 0x10;
            assert!(
                BatchView::validate(bad.freeze()).is_err(),
                "corruption at byte {i} went unnoticed"
            );
        }
    }

    #[test]
    fn random_bytes_never_panic_the_decoder() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let good = batch(4);
        for _ in 0..20_000 {
            let mut bytes = BytesMut::from(&good[..]);
            for _ in 0..rng.random_range(1..4) {
                let i = rng.random_range(0..bytes.len());
                bytes[i] = rng.random();
            }
            let cut = rng.random_range(0..=bytes.len());
            bytes.truncate(cut);
            // Re-seal the CRC so the structural checks are exercised too.
            if bytes.len() >= BATCH_HEADER_BYTES {
                let crc = crc32c::crc32c(&bytes[CRC_START..]);
                bytes[12..16].copy_from_slice(&crc.to_le_bytes());
            }
            let _ = BatchView::validate(bytes.freeze());
        }
    }

    #[test]
    fn split_batches_reads_a_concatenation_and_stops_at_truncation() {
        let mut all = BytesMut::new();
        all.extend_from_slice(&batch(2));
        all.extend_from_slice(&batch(3));
        let full = all.clone().freeze();
        let counts: Vec<_> = split_batches(full)
            .map(|b| b.unwrap().record_count())
            .collect();
        assert_eq!(counts, vec![2, 3]);
        all.truncate(all.len() - 1);
        let results: Vec<_> = split_batches(all.freeze()).collect();
        assert!(results[0].is_ok());
        assert!(matches!(results[1], Err(BatchError::Truncated { .. })));
    }
}

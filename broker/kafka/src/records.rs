//! Kafka record batches (format v2, any compression) to Tern batches and
//! back.
//!
//! A Kafka produce carries, per partition, one or more record batches. Each
//! becomes one Tern batch with the same records (key, value, headers,
//! timestamp) and, for an idempotent producer, the same producer id and base
//! sequence with [`ATTR_SEQUENCE_PER_RECORD`] set, so Tern's replicated
//! de-duplication follows Kafka's per-record numbering. A fetch turns each
//! stored Tern batch back into one uncompressed Kafka batch with the same
//! offsets.
//!
//! Untrusted input is bounded before anything is allocated for it: a batch
//! may declare at most [`KAFKA_BATCH_RECORDS_MAX`] records, and its records
//! may decompress to at most [`DECOMPRESSED_BYTES_MAX`] bytes (a
//! decompression bomb stops at the limit). Transactional and control
//! batches are refused: Tern has no transactions.

use std::io::Read;

use bytes::{Bytes, BytesMut};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{
    Compression, Record as KafkaRecord, RecordBatchDecoder, RecordBatchEncoder,
    RecordEncodeOptions, TimestampType,
};
use tern_protocol::record::{
    BatchBuilder, BatchView, Record, ATTR_SEQUENCE_PER_RECORD, BATCH_BYTES_MAX, RECORD_HEADERS_MAX,
};
use thiserror::Error;

/// Most bytes a Kafka batch's records may decompress to: a Tern batch
/// holds at most [`BATCH_BYTES_MAX`], so more could never be stored.
pub const DECOMPRESSED_BYTES_MAX: usize = BATCH_BYTES_MAX;
/// Most records one Kafka batch may declare (checked before decoding).
pub const KAFKA_BATCH_RECORDS_MAX: i32 = 100_000;

/// Why Kafka records could not become a Tern batch.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum RecordsError {
    /// The bytes are not valid record batches.
    #[error("corrupt record batch: {0}")]
    Corrupt(String),
    /// Over a named limit.
    #[error("record batch too large: {0}")]
    TooLarge(String),
    /// A feature Tern does not offer (transactions, old message formats).
    #[error("unsupported record batch: {0}")]
    Unsupported(String),
}

/// One Kafka batch converted: the Tern batch and what the produce answer
/// and de-duplication need.
#[derive(Debug, Clone)]
pub struct Converted {
    /// The encoded Tern batch (stamped, CRC computed).
    pub batch: Bytes,
    /// Records in it.
    pub records: u32,
}

/// Decompresses at most [`DECOMPRESSED_BYTES_MAX`] bytes.
fn decompress(data: &mut Bytes, compression: Compression) -> anyhow::Result<Bytes> {
    let limit = DECOMPRESSED_BYTES_MAX as u64 + 1;
    let mut out = Vec::new();
    let input = data.clone();
    match compression {
        Compression::None => return Ok(input),
        Compression::Gzip => {
            flate2::read::GzDecoder::new(&input[..])
                .take(limit)
                .read_to_end(&mut out)?;
        }
        Compression::Lz4 => {
            lz4::Decoder::new(&input[..])?
                .take(limit)
                .read_to_end(&mut out)?;
        }
        Compression::Zstd => {
            zstd::stream::read::Decoder::new(&input[..])?
                .take(limit)
                .read_to_end(&mut out)?;
        }
        Compression::Snappy => out = unsnappy(&input)?,
    }
    if out.len() > DECOMPRESSED_BYTES_MAX {
        anyhow::bail!("records decompress to more than {DECOMPRESSED_BYTES_MAX} bytes");
    }
    Ok(Bytes::from(out))
}

/// Kafka's snappy: either one raw snappy block, or the Java client's
/// ("xerial") framing: a 16-byte magic header, then blocks each preceded by
/// a big-endian u32 length.
fn unsnappy(input: &[u8]) -> anyhow::Result<Vec<u8>> {
    const XERIAL_MAGIC: &[u8] = b"\x82SNAPPY\x00";
    const XERIAL_HEADER_BYTES: usize = 16;
    let block = |b: &[u8], out: &mut Vec<u8>| -> anyhow::Result<()> {
        let n = snap::raw::decompress_len(b)?;
        if out.len() + n > DECOMPRESSED_BYTES_MAX {
            anyhow::bail!("records decompress to more than {DECOMPRESSED_BYTES_MAX} bytes");
        }
        let start = out.len();
        out.resize(start + n, 0);
        let written = snap::raw::Decoder::new().decompress(b, &mut out[start..])?;
        out.truncate(start + written);
        Ok(())
    };
    let mut out = Vec::new();
    if !input.starts_with(XERIAL_MAGIC) {
        block(input, &mut out)?;
        return Ok(out);
    }
    let mut rest = input
        .get(XERIAL_HEADER_BYTES..)
        .ok_or_else(|| anyhow::anyhow!("truncated snappy header"))?;
    while !rest.is_empty() {
        let (len, tail) = rest
            .split_first_chunk::<4>()
            .ok_or_else(|| anyhow::anyhow!("truncated snappy block length"))?;
        let len = u32::from_be_bytes(*len) as usize;
        let b = tail
            .get(..len)
            .ok_or_else(|| anyhow::anyhow!("truncated snappy block"))?;
        block(b, &mut out)?;
        rest = &tail[len..];
    }
    Ok(out)
}

/// Converts the record batches of one produced partition into Tern batches.
pub fn kafka_to_tern(records: Bytes) -> Result<Vec<Converted>, RecordsError> {
    let corrupt = |e: anyhow::Error| RecordsError::Corrupt(format!("{e:#}"));
    // Headers first: counts and flags are checked before records are
    // decoded (the codec reserves room for the declared count).
    let infos = RecordBatchDecoder::decode_batch_info(&mut records.clone()).map_err(corrupt)?;
    if infos.is_empty() {
        return Err(RecordsError::Unsupported(
            "no record batch of format v2 (message sets v0/v1 are not supported)".into(),
        ));
    }
    for info in &infos {
        if info.record_count > KAFKA_BATCH_RECORDS_MAX {
            return Err(RecordsError::TooLarge(format!(
                "{} records in one batch, over {KAFKA_BATCH_RECORDS_MAX}",
                info.record_count
            )));
        }
        if info.transactional || info.control {
            return Err(RecordsError::Unsupported(
                "transactional batches: Tern does not support Kafka transactions".into(),
            ));
        }
    }
    let mut buf = records;
    let mut out = Vec::with_capacity(infos.len());
    for info in infos {
        let set = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            RecordBatchDecoder::decode_with_custom_compression(&mut buf, Some(decompress))
        }))
        .map_err(|_| RecordsError::Corrupt("the codec panicked on this batch".into()))?
        .map_err(corrupt)?;
        if set.records.is_empty() {
            return Err(RecordsError::Corrupt("an empty record batch".into()));
        }
        let mut builder = BatchBuilder::with_capacity(1024);
        for r in &set.records {
            if r.headers.len() > RECORD_HEADERS_MAX {
                return Err(RecordsError::TooLarge(format!(
                    "{} headers on one record, over {RECORD_HEADERS_MAX}",
                    r.headers.len()
                )));
            }
            let headers = r
                .headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone().unwrap_or_default()))
                .collect();
            let record = Record {
                key: r.key.clone(),
                value: r.value.clone(),
                timestamp_ms: r.timestamp,
                headers,
            };
            if builder.len() + record.encoded_len() > BATCH_BYTES_MAX {
                return Err(RecordsError::TooLarge(format!(
                    "the batch's records take more than {BATCH_BYTES_MAX} bytes"
                )));
            }
            builder.push(&record);
        }
        let records = builder.record_count();
        let idempotent = info.producer_id >= 0 && info.base_sequence >= 0;
        let (producer_id, base_sequence) = if idempotent {
            builder.set_attributes(ATTR_SEQUENCE_PER_RECORD);
            (info.producer_id, info.base_sequence)
        } else {
            (-1, -1)
        };
        out.push(Converted {
            batch: builder.finish(producer_id, base_sequence),
            records,
        });
    }
    Ok(out)
}

/// Appends one stored Tern batch to `out` as a Kafka record batch (v2,
/// uncompressed, the same offsets, producer id and sequences).
pub fn tern_to_kafka(view: &BatchView, out: &mut BytesMut) -> Result<(), RecordsError> {
    let base = view.base_offset() as i64;
    let per_record = view.attributes() & ATTR_SEQUENCE_PER_RECORD != 0;
    let producer_id = view.producer_id();
    let mut records = Vec::with_capacity(view.record_count() as usize);
    for r in view.records() {
        let r = r.map_err(|e| RecordsError::Corrupt(e.to_string()))?;
        let delta = r.offset as i64 - base;
        // The codec derives the batch's base sequence from the first
        // record's; without a producer it must come out as -1.
        let sequence = if producer_id >= 0 && per_record {
            view.base_sequence().wrapping_add(delta as i32)
        } else {
            (delta as i32).wrapping_sub(1)
        };
        records.push(KafkaRecord {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: if per_record { producer_id } else { -1 },
            producer_epoch: if per_record && producer_id >= 0 {
                0
            } else {
                -1
            },
            timestamp_type: TimestampType::Creation,
            offset: r.offset as i64,
            sequence,
            timestamp: r.timestamp_ms,
            key: r.key,
            value: r.value,
            headers: r
                .headers
                .into_iter()
                .map(|(k, v)| (StrBytes::from_string(k), Some(v)))
                .collect(),
        });
    }
    RecordBatchEncoder::encode(
        out,
        &records,
        &RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        },
    )
    .map_err(|e| RecordsError::Corrupt(format!("{e:#}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kafka_records(n: usize, producer: Option<(i64, i32)>) -> Vec<KafkaRecord> {
        (0..n)
            .map(|i| KafkaRecord {
                transactional: false,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: -1,
                producer_id: producer.map_or(-1, |p| p.0),
                producer_epoch: if producer.is_some() { 0 } else { -1 },
                timestamp_type: TimestampType::Creation,
                offset: i as i64,
                sequence: producer.map_or(i as i32 - 1, |p| p.1 + i as i32),
                timestamp: 1_700_000_000_000 + i as i64,
                key: (i % 2 == 0).then(|| Bytes::from(format!("key-{i}"))),
                value: Some(Bytes::from(format!("value-{i}").repeat(20))),
                headers: [(
                    StrBytes::from_static_str("h"),
                    Some(Bytes::from(vec![i as u8])),
                )]
                .into_iter()
                .collect(),
            })
            .collect()
    }

    fn encode(records: &[KafkaRecord], compression: Compression) -> Bytes {
        let mut out = BytesMut::new();
        RecordBatchEncoder::encode(
            &mut out,
            records,
            &RecordEncodeOptions {
                version: 2,
                compression,
            },
        )
        .unwrap();
        out.freeze()
    }

    /// Every codec's batch becomes one Tern batch with the same records,
    /// and back with the same offsets once the broker assigned them.
    #[test]
    fn batches_of_every_codec_round_trip() {
        for compression in [
            Compression::None,
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            let original = kafka_records(50, None);
            let converted = kafka_to_tern(encode(&original, compression)).unwrap();
            assert_eq!(converted.len(), 1, "{compression:?}");
            let mut stored = BytesMut::from(&converted[0].batch[..]);
            BatchView::set_base_offset(&mut stored, 1_000);
            let view = BatchView::validate(stored.freeze()).unwrap();
            assert_eq!((view.record_count(), view.producer_id()), (50, -1));
            let mut out = BytesMut::new();
            tern_to_kafka(&view, &mut out).unwrap();
            let back = RecordBatchDecoder::decode(&mut out.freeze())
                .unwrap()
                .records;
            assert_eq!(back.len(), 50);
            for (i, (a, b)) in original.iter().zip(&back).enumerate() {
                assert_eq!(b.offset, 1_000 + i as i64);
                assert_eq!(
                    (&a.key, &a.value, a.timestamp),
                    (&b.key, &b.value, b.timestamp)
                );
                assert_eq!(a.headers, b.headers);
                assert_eq!(b.producer_id, -1);
            }
        }
    }

    /// An idempotent producer's id and sequences survive, and the batch
    /// says its sequences count records.
    #[test]
    fn an_idempotent_batch_keeps_producer_and_sequences() {
        let converted =
            kafka_to_tern(encode(&kafka_records(5, Some((42, 10))), Compression::Lz4)).unwrap();
        let view = BatchView::validate(converted[0].batch.clone()).unwrap();
        assert_eq!(
            (
                view.producer_id(),
                view.base_sequence(),
                view.last_sequence()
            ),
            (42, 10, 14)
        );
        let mut out = BytesMut::new();
        tern_to_kafka(&view, &mut out).unwrap();
        let info = RecordBatchDecoder::decode_batch_info(&mut out.freeze()).unwrap();
        assert_eq!((info[0].producer_id, info[0].base_sequence), (42, 10));
    }

    /// A gzip bomb stops at the decompression limit; a forged record count
    /// is refused before the codec reserves room for it; transactions and
    /// garbage are typed refusals.
    #[test]
    fn hostile_batches_are_refused_before_they_cost_memory() {
        let zeros = vec![0u8; DECOMPRESSED_BYTES_MAX + 1024];
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        std::io::Write::write_all(&mut gz, &zeros).unwrap();
        let bomb = gz.finish().unwrap();
        assert!(bomb.len() < 64 * 1024);
        assert!(decompress(&mut Bytes::from(bomb), Compression::Gzip).is_err());

        let mut forged = BytesMut::from(&encode(&kafka_records(1, None), Compression::None)[..]);
        // record_count is the last header field (offset 57); the CRC covers
        // it, so recompute the CRC over bytes 21.. as Kafka defines it.
        forged[57..61].copy_from_slice(&i32::MAX.to_be_bytes());
        let crc = crc32c::crc32c(&forged[21..]);
        forged[17..21].copy_from_slice(&crc.to_be_bytes());
        assert!(matches!(
            kafka_to_tern(forged.freeze()),
            Err(RecordsError::TooLarge(_))
        ));

        let mut txn = kafka_records(1, Some((7, 0)));
        txn[0].transactional = true;
        assert!(matches!(
            kafka_to_tern(encode(&txn, Compression::None)),
            Err(RecordsError::Unsupported(_))
        ));
        assert!(kafka_to_tern(Bytes::from_static(b"not a batch at all, really")).is_err());
        let whole = encode(&kafka_records(3, None), Compression::None);
        for cut in 0..whole.len() {
            assert!(kafka_to_tern(whole.slice(..cut)).is_err(), "cut at {cut}");
        }
    }

    /// The Java client's snappy framing decodes like a raw block.
    #[test]
    fn xerial_framed_snappy_decodes() {
        let payload = b"hello snappy ".repeat(100);
        let block = snap::raw::Encoder::new().compress_vec(&payload).unwrap();
        let mut framed = b"\x82SNAPPY\x00\x00\x00\x00\x01\x00\x00\x00\x01".to_vec();
        framed.extend_from_slice(&(block.len() as u32).to_be_bytes());
        framed.extend_from_slice(&block);
        assert_eq!(unsnappy(&framed).unwrap(), payload);
        assert_eq!(unsnappy(&block).unwrap(), payload);
        assert!(unsnappy(&framed[..framed.len() - 1]).is_err());
    }
}

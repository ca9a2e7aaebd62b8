//! One partition's append-only log.
//!
//! Offsets are assigned here and nowhere else: an append takes the next
//! offsets after `log_end`, writes the batches and their index entries in one
//! RocksDB `WriteBatch` (atomic, and one WAL sync for the whole group), and
//! only then publishes the new `log_end`. Readers never see an offset that is
//! not yet written.

use std::collections::BTreeMap;
use std::sync::{Mutex, RwLock};

use bytes::{Bytes, BytesMut};
use tern_protocol::BatchView;

use crate::{log_key, StorageError, Store, CF_INDEX, CF_LOG, CF_META};

const INDEX_VALUE_BYTES: usize = 16;

#[derive(Debug, Clone, Copy)]
struct BatchMeta {
    records: u32,
    bytes: u32,
    max_timestamp: i64,
}

#[derive(Debug, Default)]
struct LogState {
    log_start: u64,
    log_end: u64,
    bytes: u64,
    /// base offset → batch summary, for every stored batch.
    index: BTreeMap<u64, BatchMeta>,
}

impl LogState {
    fn check_offset(&self, offset: u64) -> Result<(), StorageError> {
        if offset < self.log_start || offset > self.log_end {
            return Err(StorageError::OffsetOutOfRange {
                offset,
                log_start: self.log_start,
                log_end: self.log_end,
            });
        }
        Ok(())
    }
}

/// Result of one appended batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendedBatch {
    /// Offset of its first record.
    pub base_offset: u64,
    /// Records in it.
    pub records: u32,
    /// The stored bytes (base offset patched), for a read cache.
    pub bytes: Bytes,
}

/// Batches read from a partition.
#[derive(Debug, Clone)]
pub struct ReadOutcome {
    /// Whole batches, concatenated, each CRC-checked.
    pub data: Bytes,
    /// Number of batches in `data`.
    pub batches: usize,
    /// First stored offset at the time of the read.
    pub log_start: u64,
    /// Next offset to be written at the time of the read.
    pub log_end: u64,
}

/// What retention removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetentionOutcome {
    /// Batches deleted.
    pub batches: u64,
    /// Bytes deleted.
    pub bytes: u64,
    /// New log start.
    pub log_start: u64,
}

/// The log of one partition. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct PartitionLog {
    store: Store,
    topic_id: u32,
    partition: u32,
    /// Serialises appends and truncations; readers only take `state`.
    write_lock: Mutex<()>,
    state: RwLock<LogState>,
}

pub(crate) fn start_marker_key(topic_id: u32, partition: u32) -> Vec<u8> {
    let mut k = b"log_start/".to_vec();
    k.extend_from_slice(&log_key(topic_id, partition, 0)[..8]);
    k
}

impl PartitionLog {
    pub(crate) fn open(store: Store, topic_id: u32, partition: u32) -> Result<Self, StorageError> {
        let mut state = LogState::default();
        let marker = store
            .db
            .get_cf(store.cf(CF_META), start_marker_key(topic_id, partition))
            .map_err(|e| StorageError::rocks("read log start", e))?;
        if let Some(v) = marker {
            if v.len() == 8 {
                state.log_start = u64::from_le_bytes(v[..8].try_into().expect("8 bytes"));
            }
        }
        let from = log_key(topic_id, partition, 0);
        let to = log_key(topic_id, partition, u64::MAX);
        let mut ro = rocksdb::ReadOptions::default();
        ro.set_iterate_upper_bound(to.to_vec());
        let iter = store.db.iterator_cf_opt(
            store.cf(CF_INDEX),
            ro,
            rocksdb::IteratorMode::From(&from, rocksdb::Direction::Forward),
        );
        for item in iter {
            let (k, v) = item.map_err(|e| StorageError::rocks("scan index", e))?;
            if v.len() != INDEX_VALUE_BYTES || k.len() != 16 {
                return Err(StorageError::CorruptCatalogue {
                    key: format!("index {topic_id}/{partition}"),
                    detail: "bad index entry size".into(),
                });
            }
            let base = u64::from_be_bytes(k[8..16].try_into().expect("8 bytes"));
            let meta = BatchMeta {
                records: u32::from_le_bytes(v[0..4].try_into().expect("4 bytes")),
                bytes: u32::from_le_bytes(v[4..8].try_into().expect("4 bytes")),
                max_timestamp: i64::from_le_bytes(v[8..16].try_into().expect("8 bytes")),
            };
            if state.index.is_empty() {
                state.log_start = state.log_start.max(base);
            }
            state.log_end = base + meta.records as u64;
            state.bytes += meta.bytes as u64;
            state.index.insert(base, meta);
        }
        if state.index.is_empty() {
            state.log_end = state.log_start;
        }
        Ok(PartitionLog {
            store,
            topic_id,
            partition,
            write_lock: Mutex::new(()),
            state: RwLock::new(state),
        })
    }

    /// First stored offset.
    pub fn log_start(&self) -> u64 {
        self.state.read().expect("log state lock").log_start
    }

    /// The offset the next record will get.
    pub fn log_end(&self) -> u64 {
        self.state.read().expect("log state lock").log_end
    }

    /// Bytes stored (batch bytes, excluding RocksDB overhead).
    pub fn size_bytes(&self) -> u64 {
        self.state.read().expect("log state lock").bytes
    }

    /// Appends validated batches as one atomic, durable write, assigning
    /// contiguous offsets. Returns where each batch landed, in order.
    /// On error nothing was appended and offsets are unchanged.
    pub fn append(&self, batches: Vec<BytesMut>) -> Result<Vec<AppendedBatch>, StorageError> {
        let _writer = self.write_lock.lock().expect("log write lock");
        let mut next = self.log_end();
        let mut wb = rocksdb::WriteBatch::default();
        let mut appended = Vec::with_capacity(batches.len());
        let mut metas = Vec::with_capacity(batches.len());
        for mut batch in batches {
            BatchView::set_base_offset(&mut batch, next);
            let view =
                BatchView::check_crc(batch.freeze()).map_err(|cause| StorageError::Corrupt {
                    topic_id: self.topic_id,
                    partition: self.partition,
                    offset: next,
                    cause,
                })?;
            let meta = BatchMeta {
                records: view.record_count(),
                bytes: view.bytes().len() as u32,
                max_timestamp: view.max_timestamp(),
            };
            let key = log_key(self.topic_id, self.partition, next);
            let mut index_value = [0u8; INDEX_VALUE_BYTES];
            index_value[0..4].copy_from_slice(&meta.records.to_le_bytes());
            index_value[4..8].copy_from_slice(&meta.bytes.to_le_bytes());
            index_value[8..16].copy_from_slice(&meta.max_timestamp.to_le_bytes());
            wb.put_cf(self.store.cf(CF_LOG), key, view.bytes());
            wb.put_cf(self.store.cf(CF_INDEX), key, index_value);
            appended.push(AppendedBatch {
                base_offset: next,
                records: meta.records,
                bytes: view.bytes().clone(),
            });
            metas.push((next, meta));
            next += meta.records as u64;
        }
        self.store
            .db
            .write_opt(wb, &self.store.write_options())
            .map_err(|e| StorageError::rocks("append", e))?;
        let mut state = self.state.write().expect("log state lock");
        for (base, meta) in metas {
            state.bytes += meta.bytes as u64;
            state.index.insert(base, meta);
        }
        state.log_end = next;
        Ok(appended)
    }

    /// Reads whole batches starting with the one that contains `offset`,
    /// until `max_bytes` is reached (at least one batch is always returned
    /// when any exists, so a large batch can never stall a consumer).
    pub fn read(&self, offset: u64, max_bytes: usize) -> Result<ReadOutcome, StorageError> {
        let (first_base, log_start, log_end) = {
            let state = self.state.read().expect("log state lock");
            state.check_offset(offset)?;
            let first = state.index.range(..=offset).next_back().map(|(b, _)| *b);
            (first, state.log_start, state.log_end)
        };
        let mut out = ReadOutcome {
            data: Bytes::new(),
            batches: 0,
            log_start,
            log_end,
        };
        let Some(first_base) = first_base.filter(|_| offset < log_end) else {
            return Ok(out);
        };
        let from = log_key(self.topic_id, self.partition, first_base);
        let to = log_key(self.topic_id, self.partition, log_end);
        let mut ro = rocksdb::ReadOptions::default();
        ro.set_iterate_upper_bound(to.to_vec());
        let iter = self.store.db.iterator_cf_opt(
            self.store.cf(CF_LOG),
            ro,
            rocksdb::IteratorMode::From(&from, rocksdb::Direction::Forward),
        );
        let mut buf = BytesMut::new();
        for item in iter {
            let (k, v) = item.map_err(|e| StorageError::rocks("read log", e))?;
            let base = u64::from_be_bytes(k[8..16].try_into().expect("16-byte key"));
            let view = self.verify_stored(base, Bytes::from(v.into_vec()))?;
            if out.batches > 0 && buf.len() + view.bytes().len() > max_bytes {
                break;
            }
            buf.extend_from_slice(view.bytes());
            out.batches += 1;
            if buf.len() >= max_bytes {
                break;
            }
        }
        out.data = buf.freeze();
        Ok(out)
    }

    /// The batches a read from `offset` of up to `max_bytes` needs, as
    /// `(base_offset, bytes)`, from the in-memory index (at least one when
    /// any exists), plus the log start and end at that moment. Lets a caller
    /// serve some batches from a cache and [`Self::read_batch`] the rest.
    #[allow(clippy::type_complexity)]
    pub fn plan_read(
        &self,
        offset: u64,
        max_bytes: usize,
    ) -> Result<(Vec<(u64, u32)>, u64, u64), StorageError> {
        let state = self.state.read().expect("log state lock");
        state.check_offset(offset)?;
        let mut plan = Vec::new();
        if offset < state.log_end {
            let first = state
                .index
                .range(..=offset)
                .next_back()
                .map_or(offset, |(b, _)| *b);
            let mut total = 0usize;
            for (base, meta) in state.index.range(first..) {
                if !plan.is_empty() && total + meta.bytes as usize > max_bytes {
                    break;
                }
                plan.push((*base, meta.bytes));
                total += meta.bytes as usize;
                if total >= max_bytes {
                    break;
                }
            }
        }
        Ok((plan, state.log_start, state.log_end))
    }

    /// Reads one batch by its base offset, CRC-checked.
    pub fn read_batch(&self, base_offset: u64) -> Result<Bytes, StorageError> {
        let key = log_key(self.topic_id, self.partition, base_offset);
        let value = self
            .store
            .db
            .get_cf(self.store.cf(CF_LOG), key)
            .map_err(|e| StorageError::rocks("read batch", e))?
            .ok_or_else(|| {
                // Retention removed it between planning and reading.
                let state = self.state.read().expect("log state lock");
                StorageError::OffsetOutOfRange {
                    offset: base_offset,
                    log_start: state.log_start,
                    log_end: state.log_end,
                }
            })?;
        Ok(self
            .verify_stored(base_offset, Bytes::from(value))?
            .into_bytes())
    }

    /// Checks a batch read from storage: CRC, format, and that it sits under
    /// the key of its own base offset. Corruption is an error, never data.
    fn verify_stored(&self, base_offset: u64, bytes: Bytes) -> Result<BatchView, StorageError> {
        let corrupt = |cause| StorageError::Corrupt {
            topic_id: self.topic_id,
            partition: self.partition,
            offset: base_offset,
            cause,
        };
        let view = BatchView::check_crc(bytes).map_err(corrupt)?;
        if view.base_offset() != base_offset {
            return Err(corrupt(tern_protocol::BatchError::Malformed(format!(
                "stored base offset {} under key {base_offset}",
                view.base_offset()
            ))));
        }
        Ok(view)
    }

    /// Topic id and partition of this log (the read cache keys on them).
    pub fn id(&self) -> (u32, u32) {
        (self.topic_id, self.partition)
    }

    /// The first offset of the first batch whose newest record is at or after
    /// `timestamp_ms`; `log_end` when there is none.
    pub fn offset_for_timestamp(&self, timestamp_ms: i64) -> u64 {
        let state = self.state.read().expect("log state lock");
        state
            .index
            .iter()
            .find(|(_, m)| m.max_timestamp >= timestamp_ms)
            .map_or(state.log_end, |(b, _)| *b)
    }

    /// Deletes the oldest batches while they are older than `retention_ms`
    /// (relative to `now_ms`) or the partition is over `retention_bytes`.
    /// Negative limits are disabled. Offsets never move backwards: an emptied
    /// partition keeps its log end, persisted as the new log start.
    pub fn apply_retention(
        &self,
        now_ms: i64,
        retention_ms: i64,
        retention_bytes: i64,
    ) -> Result<RetentionOutcome, StorageError> {
        let _writer = self.write_lock.lock().expect("log write lock");
        let (cut, outcome) = {
            let state = self.state.read().expect("log state lock");
            let mut outcome = RetentionOutcome {
                log_start: state.log_start,
                ..Default::default()
            };
            let mut remaining = state.bytes;
            let mut cut = None;
            for (base, meta) in &state.index {
                let too_old = retention_ms >= 0 && meta.max_timestamp < now_ms - retention_ms;
                let too_big = retention_bytes >= 0 && remaining > retention_bytes as u64;
                if !(too_old || too_big) {
                    break;
                }
                remaining -= meta.bytes as u64;
                outcome.batches += 1;
                outcome.bytes += meta.bytes as u64;
                let next = base + meta.records as u64;
                cut = Some(next);
                outcome.log_start = next;
            }
            (cut, outcome)
        };
        let Some(new_start) = cut else {
            return Ok(outcome);
        };
        let from = log_key(self.topic_id, self.partition, 0);
        let to = log_key(self.topic_id, self.partition, new_start);
        let mut wb = rocksdb::WriteBatch::default();
        wb.delete_range_cf(self.store.cf(CF_LOG), from, to);
        wb.delete_range_cf(self.store.cf(CF_INDEX), from, to);
        wb.put_cf(
            self.store.cf(CF_META),
            start_marker_key(self.topic_id, self.partition),
            new_start.to_le_bytes(),
        );
        self.store
            .db
            .write_opt(wb, &self.store.write_options())
            .map_err(|e| StorageError::rocks("retention delete", e))?;
        let mut state = self.state.write().expect("log state lock");
        let kept = state.index.split_off(&new_start);
        state.index = kept;
        state.bytes -= outcome.bytes;
        state.log_start = new_start;
        Ok(outcome)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Durability;
    use tern_protocol::{BatchBuilder, Record};

    fn batch(n: u32, ts: i64) -> BytesMut {
        let mut b = BatchBuilder::with_capacity(256);
        for i in 0..n {
            b.push(&Record {
                key: None,
                value: Some(Bytes::from(format!("v{i}"))),
                timestamp_ms: ts,
                headers: vec![],
            });
        }
        BytesMut::from(&b.finish(-1, -1)[..])
    }

    #[test]
    fn offsets_are_contiguous_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path(), Durability::Fsync).unwrap();
            let log = store.partition_log(1, 0).unwrap();
            let a = log.append(vec![batch(3, 1), batch(2, 2)]).unwrap();
            assert_eq!(a[0].base_offset, 0);
            assert_eq!(a[1].base_offset, 3);
            assert_eq!(log.log_end(), 5);
        }
        let store = Store::open(dir.path(), Durability::Fsync).unwrap();
        let log = store.partition_log(1, 0).unwrap();
        assert_eq!(log.log_end(), 5);
        let read = log.read(4, 1 << 20).unwrap();
        assert_eq!(read.batches, 1, "the batch containing offset 4 only");
        let views: Vec<_> = tern_protocol::record::split_batches(read.data)
            .map(|v| v.unwrap())
            .collect();
        assert_eq!(views[0].base_offset(), 3);
        assert!(matches!(
            log.read(6, 100),
            Err(StorageError::OffsetOutOfRange { .. })
        ));
        // Another partition of the same topic is independent.
        assert_eq!(store.partition_log(1, 1).unwrap().log_end(), 0);
    }

    #[test]
    fn a_planned_read_names_the_batches_and_each_reads_back_crc_checked() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Durability::Fsync).unwrap();
        let log = store.partition_log(4, 0).unwrap();
        let appended = log
            .append(vec![batch(2, 1), batch(3, 1), batch(4, 1)])
            .unwrap();
        // From offset 3 (inside the second batch), room for exactly two batches.
        let room = appended[1].bytes.len() + appended[2].bytes.len();
        let (plan, start, end) = log.plan_read(3, room).unwrap();
        assert_eq!((start, end), (0, 9));
        assert_eq!(plan.iter().map(|(b, _)| *b).collect::<Vec<_>>(), vec![2, 5]);
        for ((base, len), a) in plan.iter().zip(&appended[1..]) {
            let bytes = log.read_batch(*base).unwrap();
            assert_eq!(bytes.len(), *len as usize);
            assert_eq!(bytes, a.bytes, "stored bytes are the appended bytes");
        }
        let (only_one, _, _) = log.plan_read(3, 1).unwrap();
        assert_eq!(only_one.len(), 1, "at least one batch, whatever max_bytes");
        assert!(
            log.plan_read(9, 100).unwrap().0.is_empty(),
            "at the end: nothing yet"
        );
        assert!(matches!(
            log.read_batch(1),
            Err(StorageError::OffsetOutOfRange { .. })
        ));
    }

    #[test]
    fn a_corrupted_stored_batch_is_an_error_never_data() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Durability::Fsync).unwrap();
        let log = store.partition_log(5, 0).unwrap();
        let appended = log.append(vec![batch(3, 1)]).unwrap();
        let mut bad = appended[0].bytes.to_vec();
        let last = bad.len() - 1;
        bad[last] ^= 0x01; // one flipped bit in the last record
        store
            .db
            .put_cf(store.cf(CF_LOG), log_key(5, 0, 0), &bad)
            .unwrap();
        for result in [log.read(0, 1 << 20).map(|r| r.data), log.read_batch(0)] {
            assert!(
                matches!(result, Err(StorageError::Corrupt { offset: 0, .. })),
                "{result:?}"
            );
        }
    }

    #[test]
    fn retention_drops_old_batches_and_keeps_offsets_monotonic() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Durability::PageCache).unwrap();
        let log = store.partition_log(2, 0).unwrap();
        log.append(vec![batch(10, 1_000), batch(10, 2_000), batch(10, 3_000)])
            .unwrap();
        let out = log.apply_retention(3_500, 1_000, -1).unwrap();
        assert_eq!(out.batches, 2);
        assert_eq!(log.log_start(), 20);
        let out = log.apply_retention(10_000, 1_000, -1).unwrap();
        assert_eq!(out.log_start, 30);
        drop(log);
        let log = store.partition_log(2, 0).unwrap();
        assert_eq!((log.log_start(), log.log_end()), (30, 30));
        let a = log.append(vec![batch(1, 20_000)]).unwrap();
        assert_eq!(a[0].base_offset, 30);
    }

    #[test]
    fn size_retention_keeps_the_partition_under_its_limit() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Durability::PageCache).unwrap();
        let log = store.partition_log(3, 0).unwrap();
        for _ in 0..10 {
            log.append(vec![batch(5, 1)]).unwrap();
        }
        let one = log.size_bytes() / 10;
        log.apply_retention(0, -1, (one * 3) as i64).unwrap();
        assert_eq!(log.size_bytes(), one * 3);
        assert_eq!(log.log_start(), 35);
    }

    #[test]
    fn deleting_a_topic_removes_its_data_and_ids_are_not_reused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Durability::Fsync).unwrap();
        let cfg = tern_protocol::api::TopicConfig {
            partitions: 2,
            replication_factor: 1,
            retention_ms: -1,
            retention_bytes: -1,
        };
        let t = store.create_topic("a", cfg.clone()).unwrap();
        store
            .partition_log(t.id, 1)
            .unwrap()
            .append(vec![batch(1, 1)])
            .unwrap();
        store.delete_topic(&t).unwrap();
        assert!(store.load_topics().unwrap().is_empty());
        let t2 = store.create_topic("a", cfg).unwrap();
        assert_ne!(t.id, t2.id);
        assert_eq!(store.partition_log(t.id, 1).unwrap().log_end(), 0);
        assert_eq!(store.load_topics().unwrap(), vec![t2]);
    }
}

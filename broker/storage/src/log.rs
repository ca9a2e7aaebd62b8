//! One partition's log: the index of its applied batches over its Raft log.
//!
//! The batches themselves are the payloads of the partition's Raft entries
//! (written by the Raft log store, never copied). [`PartitionLog::apply`] is
//! called by the partition's state machine with committed entries, in Raft
//! order: it assigns offsets — here and nowhere else — and records, per
//! batch, its base offset, size, newest timestamp and Raft index. Readers
//! only ever see applied (committed) batches.

use std::collections::BTreeMap;
use std::sync::{Mutex, RwLock};

use bytes::{Bytes, BytesMut};
use tern_protocol::BatchView;

use crate::raft::{partition_group, split_raft_value};
use crate::{group_key, StorageError, Store, CF_INDEX, CF_LOG, CF_META};

const INDEX_VALUE_BYTES: usize = 24;

#[derive(Debug, Clone, Copy)]
struct BatchMeta {
    records: u32,
    bytes: u32,
    max_timestamp: i64,
    raft_index: u64,
}

impl BatchMeta {
    fn encode(&self) -> [u8; INDEX_VALUE_BYTES] {
        let mut v = [0u8; INDEX_VALUE_BYTES];
        v[0..4].copy_from_slice(&self.records.to_le_bytes());
        v[4..8].copy_from_slice(&self.bytes.to_le_bytes());
        v[8..16].copy_from_slice(&self.max_timestamp.to_le_bytes());
        v[16..24].copy_from_slice(&self.raft_index.to_le_bytes());
        v
    }

    fn decode(v: &[u8]) -> Option<BatchMeta> {
        if v.len() != INDEX_VALUE_BYTES {
            return None;
        }
        Some(BatchMeta {
            records: u32::from_le_bytes(v[0..4].try_into().ok()?),
            bytes: u32::from_le_bytes(v[4..8].try_into().ok()?),
            max_timestamp: i64::from_le_bytes(v[8..16].try_into().ok()?),
            raft_index: u64::from_le_bytes(v[16..24].try_into().ok()?),
        })
    }
}

#[derive(Debug, Default)]
struct LogState {
    log_start: u64,
    log_end: u64,
    bytes: u64,
    /// base offset → batch summary, for every applied batch.
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

/// A committed batch handed to [`PartitionLog::apply`].
#[derive(Debug, Clone)]
pub struct ApplyBatch {
    /// Index of the Raft entry whose payload is the batch.
    pub raft_index: u64,
    /// The offset the state machine assigned to its first record (and
    /// acknowledged to the producer): it must be this log's end, or the
    /// apply is refused whole.
    pub base_offset: u64,
    /// The batch as stored in that entry (CRC-valid, any base offset).
    pub bytes: Bytes,
}

/// Result of one applied batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendedBatch {
    /// Offset of its first record.
    pub base_offset: u64,
    /// Records in it.
    pub records: u32,
    /// The batch with its base offset patched in, for a read cache.
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
    group: u64,
    /// Serialises applies and truncations; readers only take `state`.
    write_lock: Mutex<()>,
    state: RwLock<LogState>,
}

fn start_marker_key(group: u64) -> Vec<u8> {
    let mut k = b"log_start/".to_vec();
    k.extend_from_slice(&group.to_be_bytes());
    k
}

/// The `meta` key of a partition state machine's persisted state.
pub(crate) fn sm_state_key(group: u64) -> Vec<u8> {
    let mut k = b"sm/".to_vec();
    k.extend_from_slice(&group.to_be_bytes());
    k
}

impl PartitionLog {
    pub(crate) fn open(store: Store, topic_id: u32, partition: u32) -> Result<Self, StorageError> {
        let group = partition_group(topic_id, partition);
        let mut state = LogState::default();
        if let Some(v) = store.meta_get(&start_marker_key(group))? {
            if v.len() == 8 {
                state.log_start = u64::from_le_bytes(v[..8].try_into().expect("8 bytes"));
            }
        }
        let from = group_key(group, 0);
        let mut ro = rocksdb::ReadOptions::default();
        ro.set_iterate_upper_bound(group_key(group, u64::MAX).to_vec());
        let iter = store.db.iterator_cf_opt(
            store.cf(CF_INDEX),
            ro,
            rocksdb::IteratorMode::From(&from, rocksdb::Direction::Forward),
        );
        for item in iter {
            let (k, v) = item.map_err(|e| StorageError::rocks("scan index", e))?;
            let meta = BatchMeta::decode(&v)
                .filter(|_| k.len() == 16)
                .ok_or_else(|| StorageError::CorruptCatalogue {
                    key: format!("index {topic_id}/{partition}"),
                    detail: "bad index entry size".into(),
                })?;
            let base = u64::from_be_bytes(k[8..16].try_into().expect("8 bytes"));
            if state.index.is_empty() {
                state.log_start = state.log_start.max(base);
            }
            state.log_end = base + meta.records as u64;
            state.bytes += meta.bytes as u64;
            state.index.insert(base, meta);
        }
        if state.index.is_empty() {
            state.log_end = state.log_end.max(state.log_start);
        }
        Ok(PartitionLog {
            store,
            topic_id,
            partition,
            group,
            write_lock: Mutex::new(()),
            state: RwLock::new(state),
        })
    }

    /// The Raft group id of this partition.
    pub fn group(&self) -> u64 {
        self.group
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

    /// The state machine's persisted state, as last given to [`Self::apply`].
    pub fn sm_state(&self) -> Result<Option<Vec<u8>>, StorageError> {
        self.store.meta_get(&sm_state_key(self.group))
    }

    /// Records committed batches in Raft order, assigning contiguous offsets,
    /// and stores `sm_state` (the caller's applied position and producer
    /// state) in the same atomic write. The write is not synced on its own:
    /// the Raft entries it indexes are already durable, so a crash merely
    /// makes the state machine apply them again from the stored state.
    pub fn apply(
        &self,
        batches: Vec<ApplyBatch>,
        sm_state: &[u8],
    ) -> Result<Vec<AppendedBatch>, StorageError> {
        let _writer = self.write_lock.lock().expect("log write lock");
        let mut next = self.log_end();
        let mut wb = rocksdb::WriteBatch::default();
        let mut appended = Vec::with_capacity(batches.len());
        let mut metas = Vec::with_capacity(batches.len());
        for batch in batches {
            // The state machine assigns offsets (and acknowledges them); the
            // log only checks, in every build, that they are its own end.
            if batch.base_offset != next {
                return Err(StorageError::OffsetMismatch {
                    topic_id: self.topic_id,
                    partition: self.partition,
                    assigned: batch.base_offset,
                    log_end: next,
                });
            }
            let mut patched = BytesMut::from(&batch.bytes[..]);
            BatchView::set_base_offset(&mut patched, next);
            let view =
                BatchView::check_crc(patched.freeze()).map_err(|cause| StorageError::Corrupt {
                    topic_id: self.topic_id,
                    partition: self.partition,
                    offset: next,
                    cause,
                })?;
            let meta = BatchMeta {
                records: view.record_count(),
                bytes: view.bytes().len() as u32,
                max_timestamp: view.max_timestamp(),
                raft_index: batch.raft_index,
            };
            wb.put_cf(
                self.store.cf(CF_INDEX),
                group_key(self.group, next),
                meta.encode(),
            );
            appended.push(AppendedBatch {
                base_offset: next,
                records: meta.records,
                bytes: view.into_bytes(),
            });
            metas.push((next, meta));
            next += meta.records as u64;
        }
        wb.put_cf(self.store.cf(CF_META), sm_state_key(self.group), sm_state);
        let mut w = rocksdb::WriteOptions::default();
        w.set_sync(false);
        self.store
            .db
            .write_opt(wb, &w)
            .map_err(|e| StorageError::rocks("apply", e))?;
        let mut state = self.state.write().expect("log state lock");
        for (base, meta) in metas {
            state.bytes += meta.bytes as u64;
            state.index.insert(base, meta);
        }
        state.log_end = next;
        Ok(appended)
    }

    /// Every stored batch whose Raft entry is at or below `raft_index`, as
    /// `(base_offset, raft_index, batch bytes)` in offset order: the data of
    /// a snapshot sent to a replica that is behind the purge point.
    #[allow(clippy::type_complexity)]
    pub fn batches_upto(&self, raft_index: u64) -> Result<Vec<(u64, u64, Bytes)>, StorageError> {
        let metas: Vec<(u64, BatchMeta)> = {
            let state = self.state.read().expect("log state lock");
            state
                .index
                .iter()
                .filter(|(_, m)| m.raft_index <= raft_index)
                .map(|(b, m)| (*b, *m))
                .collect()
        };
        let mut out = Vec::with_capacity(metas.len());
        for (base, meta) in metas {
            match self.read_batch(base) {
                Ok(bytes) => out.push((base, meta.raft_index, bytes)),
                // Retention removed it meanwhile: the snapshot starts later.
                Err(StorageError::OffsetOutOfRange { .. }) => out.clear(),
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Replaces everything up to Raft index `upto` by a snapshot's content:
    /// `batches` (`(base_offset, raft_index, bytes)`, contiguous, each
    /// CRC-checked here) stored under their Raft indexes, the log starting at
    /// `log_start` and ending at `log_end`. Entries after `upto` are kept.
    #[allow(clippy::type_complexity)]
    pub fn install(
        &self,
        upto: u64,
        log_start: u64,
        log_end: u64,
        batches: Vec<(u64, u64, Bytes)>,
        sm_state: &[u8],
    ) -> Result<(), StorageError> {
        // A snapshot comes from a peer: it must describe one contiguous log
        // from `log_start` to `log_end`, its batches in Raft order, or
        // nothing of it is installed.
        let mut expected = log_start;
        let mut last_index = 0;
        for (base, raft_index, bytes) in &batches {
            let records = BatchView::peek_len(bytes)
                .ok()
                .and_then(|_| BatchView::check_crc(bytes.clone()).ok())
                .map(|v| v.record_count() as u64);
            let contiguous = *base == expected && *raft_index > last_index && *raft_index <= upto;
            match records {
                Some(records) if contiguous => {
                    expected = base.checked_add(records).unwrap_or(u64::MAX);
                    last_index = *raft_index;
                }
                _ => {
                    return Err(StorageError::BadSnapshot {
                        topic_id: self.topic_id,
                        partition: self.partition,
                        detail: format!(
                            "batch at offset {base} (Raft index {raft_index}) does not follow \
                             offset {expected} (Raft index {last_index}) or is corrupt"
                        ),
                    })
                }
            }
        }
        if expected != log_end {
            return Err(StorageError::BadSnapshot {
                topic_id: self.topic_id,
                partition: self.partition,
                detail: format!("batches end at offset {expected}, the snapshot says {log_end}"),
            });
        }
        let _writer = self.write_lock.lock().expect("log write lock");
        let mut wb = rocksdb::WriteBatch::default();
        wb.delete_range_cf(
            self.store.cf(CF_INDEX),
            group_key(self.group, 0),
            group_key(self.group, u64::MAX),
        );
        wb.delete_range_cf(
            self.store.cf(CF_LOG),
            group_key(self.group, 0),
            group_key(self.group, upto.saturating_add(1)),
        );
        let mut state = LogState {
            log_start,
            log_end,
            ..Default::default()
        };
        for (base, raft_index, bytes) in batches {
            let mut patched = BytesMut::from(&bytes[..]);
            BatchView::set_base_offset(&mut patched, base);
            let view =
                BatchView::check_crc(patched.freeze()).map_err(|cause| StorageError::Corrupt {
                    topic_id: self.topic_id,
                    partition: self.partition,
                    offset: base,
                    cause,
                })?;
            let meta = BatchMeta {
                records: view.record_count(),
                bytes: view.bytes().len() as u32,
                max_timestamp: view.max_timestamp(),
                raft_index,
            };
            wb.put_cf(
                self.store.cf(CF_LOG),
                group_key(self.group, raft_index),
                crate::raft::join_raft_value(&[], view.bytes()),
            );
            wb.put_cf(
                self.store.cf(CF_INDEX),
                group_key(self.group, base),
                meta.encode(),
            );
            state.bytes += meta.bytes as u64;
            state.index.insert(base, meta);
        }
        wb.put_cf(
            self.store.cf(CF_META),
            start_marker_key(self.group),
            log_start.to_le_bytes(),
        );
        wb.put_cf(self.store.cf(CF_META), sm_state_key(self.group), sm_state);
        let mut w = rocksdb::WriteOptions::default();
        w.set_sync(true);
        self.store
            .db
            .write_opt(wb, &w)
            .map_err(|e| StorageError::rocks("install snapshot", e))?;
        *self.state.write().expect("log state lock") = state;
        Ok(())
    }

    /// The Raft index below which retention would delete now (the entry of
    /// the first batch it keeps), or `None` if it would delete nothing.
    pub fn retention_cut(
        &self,
        now_ms: i64,
        retention_ms: i64,
        retention_bytes: i64,
    ) -> Option<u64> {
        let state = self.state.read().expect("log state lock");
        let mut remaining = state.bytes;
        let mut cut = None;
        let mut entries = state.index.values().peekable();
        while let Some(meta) = entries.next() {
            let too_old = retention_ms >= 0 && meta.max_timestamp < now_ms - retention_ms;
            let too_big = retention_bytes >= 0 && remaining > retention_bytes as u64;
            if !(too_old || too_big) {
                break;
            }
            remaining -= meta.bytes as u64;
            cut = Some(entries.peek().map_or(meta.raft_index + 1, |m| m.raft_index));
        }
        cut
    }

    /// Reads whole batches starting with the one that contains `offset`,
    /// until `max_bytes` is reached (at least one batch is always returned
    /// when any exists, so a large batch can never stall a consumer).
    pub fn read(&self, offset: u64, max_bytes: usize) -> Result<ReadOutcome, StorageError> {
        let (plan, log_start, log_end) = self.plan_read(offset, max_bytes)?;
        let mut buf = BytesMut::with_capacity(plan.iter().map(|(_, n)| *n as usize).sum());
        let mut batches = 0;
        for (base, _) in plan {
            match self.read_batch(base) {
                Ok(b) => buf.extend_from_slice(&b),
                // Retention removed the rest meanwhile: serve what we have.
                Err(StorageError::OffsetOutOfRange { .. }) if batches > 0 => break,
                Err(e) => return Err(e),
            }
            batches += 1;
        }
        Ok(ReadOutcome {
            data: buf.freeze(),
            batches,
            log_start,
            log_end,
        })
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

    /// Reads one batch by its base offset from its Raft entry, base offset
    /// patched in, CRC-checked.
    pub fn read_batch(&self, base_offset: u64) -> Result<Bytes, StorageError> {
        let out_of_range = |state: &LogState| StorageError::OffsetOutOfRange {
            offset: base_offset,
            log_start: state.log_start,
            log_end: state.log_end,
        };
        let meta = {
            let state = self.state.read().expect("log state lock");
            match state.index.get(&base_offset) {
                Some(m) => *m,
                None => return Err(out_of_range(&state)),
            }
        };
        let corrupt = |detail: &str| StorageError::Corrupt {
            topic_id: self.topic_id,
            partition: self.partition,
            offset: base_offset,
            cause: tern_protocol::BatchError::Malformed(detail.to_owned()),
        };
        let value = self
            .store
            .raft_entry(self.group, meta.raft_index)?
            // Retention removed it between planning and reading.
            .ok_or_else(|| out_of_range(&self.state.read().expect("log state lock")))?;
        let (_, payload) = split_raft_value(&value).ok_or_else(|| corrupt("bad entry framing"))?;
        let mut patched = BytesMut::from(payload);
        if patched.len() != meta.bytes as usize {
            return Err(corrupt("entry size differs from the index"));
        }
        BatchView::set_base_offset(&mut patched, base_offset);
        let view =
            BatchView::check_crc(patched.freeze()).map_err(|cause| StorageError::Corrupt {
                topic_id: self.topic_id,
                partition: self.partition,
                offset: base_offset,
                cause,
            })?;
        if view.record_count() != meta.records {
            return Err(corrupt("record count differs from the index"));
        }
        Ok(view.into_bytes())
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

    /// Deletes the oldest batches (index entries and their Raft entries)
    /// while they are older than `retention_ms` (relative to `now_ms`) or the
    /// partition is over `retention_bytes`. Negative limits are disabled.
    /// Offsets never move backwards: an emptied partition keeps its log end,
    /// persisted as the new log start. Entries at or after `raft_keep_from`
    /// are never deleted (the Raft layer may still need to send them).
    pub fn apply_retention(
        &self,
        now_ms: i64,
        retention_ms: i64,
        retention_bytes: i64,
        raft_keep_from: u64,
    ) -> Result<RetentionOutcome, StorageError> {
        let _writer = self.write_lock.lock().expect("log write lock");
        let (cut, raft_cut, outcome) = {
            let state = self.state.read().expect("log state lock");
            let mut outcome = RetentionOutcome {
                log_start: state.log_start,
                ..Default::default()
            };
            let mut remaining = state.bytes;
            let mut cut = None;
            let mut raft_cut = 0;
            let mut entries = state.index.iter().peekable();
            while let Some((base, meta)) = entries.next() {
                let too_old = retention_ms >= 0 && meta.max_timestamp < now_ms - retention_ms;
                let too_big = retention_bytes >= 0 && remaining > retention_bytes as u64;
                // Delete Raft entries only below the next kept batch's entry.
                let next_raft = entries.peek().map_or(u64::MAX, |(_, m)| m.raft_index);
                if !(too_old || too_big) || meta.raft_index >= raft_keep_from {
                    break;
                }
                remaining -= meta.bytes as u64;
                outcome.batches += 1;
                outcome.bytes += meta.bytes as u64;
                let next = base + meta.records as u64;
                cut = Some(next);
                raft_cut = next_raft.min(raft_keep_from).min(meta.raft_index + 1);
                outcome.log_start = next;
            }
            (cut, raft_cut, outcome)
        };
        let Some(new_start) = cut else {
            return Ok(outcome);
        };
        let mut wb = rocksdb::WriteBatch::default();
        wb.delete_range_cf(
            self.store.cf(CF_LOG),
            group_key(self.group, 0),
            group_key(self.group, raft_cut),
        );
        wb.delete_range_cf(
            self.store.cf(CF_INDEX),
            group_key(self.group, 0),
            group_key(self.group, new_start),
        );
        wb.put_cf(
            self.store.cf(CF_META),
            start_marker_key(self.group),
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

    /// The `meta` keys this partition owns (for dropping the partition).
    pub fn meta_keys(&self) -> Vec<Vec<u8>> {
        vec![start_marker_key(self.group), sm_state_key(self.group)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::join_raft_value;
    use crate::Durability;
    use tern_protocol::{BatchBuilder, Record};

    fn batch(n: u32, ts: i64) -> Bytes {
        let mut b = BatchBuilder::with_capacity(256);
        for i in 0..n {
            b.push(&Record {
                key: None,
                value: Some(Bytes::from(format!("v{i}"))),
                timestamp_ms: ts,
                headers: vec![],
            });
        }
        b.finish(-1, -1)
    }

    /// Stores batches as Raft entries from `first_index` on and applies them,
    /// the way the Raft layer does.
    fn commit(log: &PartitionLog, first_index: u64, batches: Vec<Bytes>) -> Vec<AppendedBatch> {
        let entries: Vec<_> = batches
            .iter()
            .enumerate()
            .map(|(i, b)| (first_index + i as u64, join_raft_value(b"hdr", b)))
            .collect();
        log.store.raft_append(log.group(), &entries).unwrap();
        let mut next = log.log_end();
        let apply = batches
            .into_iter()
            .enumerate()
            .map(|(i, bytes)| {
                let base_offset = next;
                next += BatchView::check_crc(bytes.clone()).unwrap().record_count() as u64;
                ApplyBatch {
                    raft_index: first_index + i as u64,
                    base_offset,
                    bytes,
                }
            })
            .collect();
        log.apply(apply, b"state").unwrap()
    }

    #[test]
    fn offsets_are_contiguous_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path(), Durability::Fsync).unwrap();
            let log = store.partition_log(1, 0).unwrap();
            let a = commit(&log, 1, vec![batch(3, 1), batch(2, 2)]);
            assert_eq!(a[0].base_offset, 0);
            assert_eq!(a[1].base_offset, 3);
            assert_eq!(log.log_end(), 5);
        }
        let store = Store::open(dir.path(), Durability::Fsync).unwrap();
        let log = store.partition_log(1, 0).unwrap();
        assert_eq!(log.log_end(), 5);
        assert_eq!(log.sm_state().unwrap().unwrap(), b"state");
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
        let appended = commit(&log, 10, vec![batch(2, 1), batch(3, 1), batch(4, 1)]);
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
        let appended = commit(&log, 1, vec![batch(3, 1)]);
        let mut bad = appended[0].bytes.to_vec();
        let last = bad.len() - 1;
        bad[last] ^= 0x01; // one flipped bit in the last record
        store
            .raft_append(log.group(), &[(1, join_raft_value(b"hdr", &bad))])
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
        commit(
            &log,
            1,
            vec![batch(10, 1_000), batch(10, 2_000), batch(10, 3_000)],
        );
        let out = log.apply_retention(3_500, 1_000, -1, u64::MAX).unwrap();
        assert_eq!(out.batches, 2);
        assert_eq!(log.log_start(), 20);
        assert_eq!(store.raft_entries(log.group(), 0, 10).unwrap().len(), 1);
        let out = log.apply_retention(10_000, 1_000, -1, u64::MAX).unwrap();
        assert_eq!(out.log_start, 30);
        drop(log);
        let log = store.partition_log(2, 0).unwrap();
        assert_eq!((log.log_start(), log.log_end()), (30, 30));
        let a = commit(&log, 4, vec![batch(1, 20_000)]);
        assert_eq!(a[0].base_offset, 30);
    }

    #[test]
    fn retention_never_deletes_entries_raft_still_needs() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Durability::PageCache).unwrap();
        let log = store.partition_log(3, 1).unwrap();
        commit(&log, 1, vec![batch(1, 1), batch(1, 1), batch(1, 1)]);
        let out = log.apply_retention(100, 1, -1, 2).unwrap();
        assert_eq!((out.batches, out.log_start), (1, 1));
        assert_eq!(
            log.read_batch(1).unwrap().len(),
            log.size_bytes() as usize / 2
        );
    }

    #[test]
    fn size_retention_keeps_the_partition_under_its_limit() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Durability::PageCache).unwrap();
        let log = store.partition_log(3, 0).unwrap();
        for i in 0..10 {
            commit(&log, 1 + i, vec![batch(5, 1)]);
        }
        let one = log.size_bytes() / 10;
        log.apply_retention(0, -1, (one * 3) as i64, u64::MAX)
            .unwrap();
        assert_eq!(log.size_bytes(), one * 3);
        assert_eq!(log.log_start(), 35);
    }

    #[test]
    fn a_snapshot_install_replaces_the_start_and_keeps_later_entries() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Durability::PageCache).unwrap();
        let leader = store.partition_log(6, 0).unwrap();
        commit(&leader, 1, vec![batch(4, 1), batch(2, 1), batch(3, 1)]);
        let shipped = leader.batches_upto(2).unwrap();
        assert_eq!(
            shipped.iter().map(|(b, r, _)| (*b, *r)).collect::<Vec<_>>(),
            vec![(0, 1), (4, 2)]
        );
        let follower = store.partition_log(6, 1).unwrap();
        // An entry after the snapshot point, already replicated: kept.
        store
            .raft_append(
                follower.group(),
                &[(3, join_raft_value(b"h", &batch(3, 1)))],
            )
            .unwrap();
        follower.install(2, 0, 6, shipped, b"snap").unwrap();
        assert_eq!((follower.log_start(), follower.log_end()), (0, 6));
        assert_eq!(
            follower.read_batch(4).unwrap(),
            leader.read_batch(4).unwrap()
        );
        assert!(store.raft_entry(follower.group(), 3).unwrap().is_some());
        drop(follower);
        let follower = store.partition_log(6, 1).unwrap();
        assert_eq!((follower.log_start(), follower.log_end()), (0, 6));
        assert_eq!(follower.sm_state().unwrap().unwrap(), b"snap");
    }

    #[test]
    fn a_snapshot_with_a_hole_or_a_wrong_end_is_refused_whole() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Durability::PageCache).unwrap();
        let leader = store.partition_log(7, 0).unwrap();
        commit(&leader, 1, vec![batch(4, 1), batch(2, 1), batch(3, 1)]);
        let shipped = leader.batches_upto(3).unwrap();
        let follower = store.partition_log(7, 1).unwrap();
        let mut holed = shipped.clone();
        holed.remove(1);
        let err = follower.install(3, 0, 9, holed, b"snap").unwrap_err();
        assert!(matches!(err, StorageError::BadSnapshot { .. }), "{err}");
        let err = follower
            .install(3, 0, 12, shipped.clone(), b"snap")
            .unwrap_err();
        assert!(err.to_string().contains("the snapshot says 12"), "{err}");
        let mut reordered = shipped.clone();
        reordered[2].1 = 1;
        assert!(follower.install(3, 0, 9, reordered, b"snap").is_err());
        assert_eq!((follower.log_start(), follower.log_end()), (0, 0));
        follower.install(3, 0, 9, shipped, b"snap").unwrap();
        assert_eq!(follower.log_end(), 9);
    }
}

//! Raw Raft-log and metadata operations on the `log` and `meta` column
//! families, used by the Raft layer's log store. This module only moves
//! bytes: what an entry means is the caller's business.

use crate::{group_key, StorageError, Store, CF_INDEX, CF_LOG, CF_META};

/// Group id of the metadata Raft group (topic ids start at 1).
pub const META_GROUP: u64 = 0;

/// Group id of a partition's Raft group.
pub fn partition_group(topic_id: u32, partition: u32) -> u64 {
    ((topic_id as u64) << 32) | partition as u64
}

/// Builds a `log` value: `header_len u32 LE | header | payload`.
pub fn join_raft_value(header: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(4 + header.len() + payload.len());
    v.extend_from_slice(&(header.len() as u32).to_le_bytes());
    v.extend_from_slice(header);
    v.extend_from_slice(payload);
    v
}

/// Splits a `log` value into `(header, payload)`; `None` if malformed.
pub fn split_raft_value(value: &[u8]) -> Option<(&[u8], &[u8])> {
    let len = u32::from_le_bytes(value.get(..4)?.try_into().ok()?) as usize;
    let header = value.get(4..4 + len)?;
    Some((header, &value[4 + len..]))
}

impl Store {
    /// Writes Raft entries `(index, value)` of `group` in one atomic write,
    /// synced to disk when the node's durability is `fsync`.
    pub fn raft_append(&self, group: u64, entries: &[(u64, Vec<u8>)]) -> Result<(), StorageError> {
        self.raft_append_with(group, entries, &self.write_options())
    }

    /// Like [`Self::raft_append`] but never syncs: the entries are readable
    /// at once and durable after the next [`Store::after_wal_sync`].
    pub fn raft_append_buffered(
        &self,
        group: u64,
        entries: &[(u64, Vec<u8>)],
    ) -> Result<(), StorageError> {
        self.raft_append_with(group, entries, &rocksdb::WriteOptions::default())
    }

    fn raft_append_with(
        &self,
        group: u64,
        entries: &[(u64, Vec<u8>)],
        options: &rocksdb::WriteOptions,
    ) -> Result<(), StorageError> {
        let mut wb = rocksdb::WriteBatch::default();
        for (index, value) in entries {
            wb.put_cf(self.cf(CF_LOG), group_key(group, *index), value);
        }
        let result = self
            .db
            .write_opt(wb, options)
            .map_err(|e| StorageError::rocks("raft append", e));
        self.note_write(&result);
        result
    }

    /// The entries of `group` with index in `[from, to)`, in order. Missing
    /// indexes are simply absent.
    pub fn raft_entries(
        &self,
        group: u64,
        from: u64,
        to: u64,
    ) -> Result<Vec<(u64, Vec<u8>)>, StorageError> {
        self.raft_entries_limited(group, from, to, usize::MAX)
    }

    /// Like [`Self::raft_entries`], but stops once the values read reach
    /// `max_bytes` (at least one entry is returned when any exists).
    pub fn raft_entries_limited(
        &self,
        group: u64,
        from: u64,
        to: u64,
        max_bytes: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, StorageError> {
        let mut out = Vec::new();
        let mut bytes = 0usize;
        if from >= to {
            return Ok(out);
        }
        let start = group_key(group, from);
        let mut ro = rocksdb::ReadOptions::default();
        ro.set_iterate_upper_bound(group_key(group, to).to_vec());
        let iter = self.db.iterator_cf_opt(
            self.cf(CF_LOG),
            ro,
            rocksdb::IteratorMode::From(&start, rocksdb::Direction::Forward),
        );
        for item in iter {
            let (k, v) = item.map_err(|e| StorageError::rocks("raft read", e))?;
            let index = u64::from_be_bytes(k[8..16].try_into().expect("16-byte key"));
            bytes += v.len();
            out.push((index, v.into_vec()));
            if bytes >= max_bytes {
                break;
            }
        }
        Ok(out)
    }

    /// One entry of `group`, if present.
    pub fn raft_entry(&self, group: u64, index: u64) -> Result<Option<Vec<u8>>, StorageError> {
        self.db
            .get_cf(self.cf(CF_LOG), group_key(group, index))
            .map_err(|e| StorageError::rocks("raft read", e))
    }

    /// The last entry of `group`, if any.
    pub fn raft_last_entry(&self, group: u64) -> Result<Option<(u64, Vec<u8>)>, StorageError> {
        let end = group_key(group, u64::MAX);
        let mut ro = rocksdb::ReadOptions::default();
        ro.set_iterate_lower_bound(group_key(group, 0).to_vec());
        let mut iter = self.db.iterator_cf_opt(
            self.cf(CF_LOG),
            ro,
            rocksdb::IteratorMode::From(&end, rocksdb::Direction::Reverse),
        );
        match iter.next() {
            None => Ok(None),
            Some(item) => {
                let (k, v) = item.map_err(|e| StorageError::rocks("raft read", e))?;
                let index = u64::from_be_bytes(k[8..16].try_into().expect("16-byte key"));
                Ok(Some((index, v.into_vec())))
            }
        }
    }

    /// Deletes the entries of `group` from `index` on (conflicting entries a
    /// new leader overwrote), durably.
    pub fn raft_truncate_from(&self, group: u64, index: u64) -> Result<(), StorageError> {
        let mut wb = rocksdb::WriteBatch::default();
        wb.delete_range_cf(
            self.cf(CF_LOG),
            group_key(group, index),
            group_key(group, u64::MAX),
        );
        self.db
            .write_opt(wb, &self.write_options())
            .map_err(|e| StorageError::rocks("raft truncate", e))
    }

    /// Deletes the entries of `group` below `index`.
    pub fn raft_delete_below(&self, group: u64, index: u64) -> Result<(), StorageError> {
        let mut wb = rocksdb::WriteBatch::default();
        wb.delete_range_cf(
            self.cf(CF_LOG),
            group_key(group, 0),
            group_key(group, index),
        );
        self.db
            .write_opt(wb, &self.write_options())
            .map_err(|e| StorageError::rocks("raft purge", e))
    }

    /// A small value of the `meta` family.
    pub fn meta_get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        self.db
            .get_cf(self.cf(CF_META), key)
            .map_err(|e| StorageError::rocks("meta read", e))
    }

    /// Stores a small value in `meta`; `sync` forces an fsync whatever the
    /// durability mode (Raft votes must never be forgotten).
    pub fn meta_put(&self, key: &[u8], value: &[u8], sync: bool) -> Result<(), StorageError> {
        let mut w = self.write_options();
        if sync {
            w.set_sync(true);
        }
        self.db
            .put_cf_opt(self.cf(CF_META), key, value, &w)
            .map_err(|e| StorageError::rocks("meta write", e))
    }

    /// Removes everything stored for `group`: Raft entries, index and every
    /// `meta` key under `meta_prefix` (the caller's per-group keys).
    pub fn drop_group(&self, group: u64, meta_keys: &[Vec<u8>]) -> Result<(), StorageError> {
        let mut wb = rocksdb::WriteBatch::default();
        let (from, to) = (group_key(group, 0), group_key(group + 1, 0));
        wb.delete_range_cf(self.cf(CF_LOG), from, to);
        wb.delete_range_cf(self.cf(CF_INDEX), from, to);
        for k in meta_keys {
            wb.delete_cf(self.cf(CF_META), k);
        }
        let mut w = rocksdb::WriteOptions::default();
        w.set_sync(true);
        self.db
            .write_opt(wb, &w)
            .map_err(|e| StorageError::rocks("drop group", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Durability;

    #[test]
    fn raft_entries_range_truncate_and_purge() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Durability::PageCache).unwrap();
        let g = partition_group(7, 3);
        let entries: Vec<_> = (1..=5u64)
            .map(|i| (i, join_raft_value(b"h", &[i as u8])))
            .collect();
        store.raft_append(g, &entries).unwrap();
        store
            .raft_append(partition_group(7, 4), &[(1, vec![9])])
            .unwrap();
        let got = store.raft_entries(g, 2, 4).unwrap();
        assert_eq!(got.iter().map(|e| e.0).collect::<Vec<_>>(), vec![2, 3]);
        let (h, p) = split_raft_value(&got[0].1).unwrap();
        assert_eq!((h, p), (&b"h"[..], &[2u8][..]));
        assert_eq!(store.raft_last_entry(g).unwrap().unwrap().0, 5);
        store.raft_truncate_from(g, 4).unwrap();
        assert_eq!(store.raft_last_entry(g).unwrap().unwrap().0, 3);
        store.raft_delete_below(g, 3).unwrap();
        assert_eq!(store.raft_entries(g, 0, 10).unwrap().len(), 1);
        assert!(store
            .raft_last_entry(partition_group(7, 5))
            .unwrap()
            .is_none());
        assert!(split_raft_value(&[1, 0]).is_none());
        assert!(split_raft_value(&[9, 0, 0, 0, 1]).is_none());
    }
}

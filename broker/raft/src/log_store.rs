//! The Raft log store of one group on the node's shared RocksDB.
//!
//! Each entry is one value in the `log` column family under `group | index`:
//! a small bincode header (log id and payload kind) followed, for a partition
//! `Append`, by the record batch's raw bytes — the same bytes a fetch later
//! returns, so a record is written once. Votes, the committed position and
//! the purge point live in `meta`.
//!
//! **Invariant:** `append` acknowledges (calls back) only after the write is
//! on disk per the node's durability; a vote is always fsync'd.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};

use bytes::Bytes;
use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{
    AnyError, EntryPayload, LogState, Membership, OptionalSend, RaftLogReader, StorageIOError, Vote,
};
use serde::{Deserialize, Serialize};
use tern_storage::{join_raft_value, split_raft_value, StorageError, Store};

use crate::types::{Command, Entry, LogId, NodeId, RaftStorageError, TernRaft};

#[derive(Serialize, Deserialize)]
enum StoredPayload {
    Blank,
    Membership(Membership<NodeId, openraft::BasicNode>),
    /// A partition batch: the value's payload bytes.
    Append,
    Command(Command),
}

#[derive(Serialize, Deserialize)]
struct StoredHeader {
    log_id: LogId,
    payload: StoredPayload,
}

/// Encodes an entry as its `log` value.
pub(crate) fn encode_entry(entry: &Entry) -> Vec<u8> {
    let (payload, data): (StoredPayload, &[u8]) = match &entry.payload {
        EntryPayload::Blank => (StoredPayload::Blank, &[]),
        EntryPayload::Membership(m) => (StoredPayload::Membership(m.clone()), &[]),
        EntryPayload::Normal(Command::Append(batch)) => (StoredPayload::Append, &batch[..]),
        EntryPayload::Normal(c) => (StoredPayload::Command(c.clone()), &[]),
    };
    let header = bincode::serialize(&StoredHeader {
        log_id: entry.log_id,
        payload,
    })
    .expect("entry headers always serialize");
    join_raft_value(&header, data)
}

/// Decodes a `log` value.
pub(crate) fn decode_entry(value: &[u8]) -> Result<Entry, String> {
    let (header, data) = split_raft_value(value).ok_or("bad entry framing")?;
    let header: StoredHeader =
        bincode::deserialize(header).map_err(|e| format!("bad entry header: {e}"))?;
    let payload = match header.payload {
        StoredPayload::Blank => EntryPayload::Blank,
        StoredPayload::Membership(m) => EntryPayload::Membership(m),
        StoredPayload::Append => {
            EntryPayload::Normal(Command::Append(Bytes::copy_from_slice(data)))
        }
        StoredPayload::Command(c) => EntryPayload::Normal(c),
    };
    Ok(Entry {
        log_id: header.log_id,
        payload,
    })
}

/// Most entry bytes one AppendEntries message carries (well under the peer
/// frame limit).
pub const REPLICATION_BYTES_MAX: usize = 8 << 20;

/// Runs a blocking RocksDB call without stalling other tasks of a
/// multi-threaded runtime (a synced write can take milliseconds).
pub(crate) fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

fn key(kind: &str, group: u64) -> Vec<u8> {
    let mut k = format!("raft/{kind}/").into_bytes();
    k.extend_from_slice(&group.to_be_bytes());
    k
}

/// The `meta` keys a group's log store owns.
pub(crate) fn meta_keys(group: u64) -> Vec<Vec<u8>> {
    ["vote", "committed", "purged"]
        .iter()
        .map(|k| key(k, group))
        .collect()
}

fn read_err(e: impl std::fmt::Display) -> RaftStorageError {
    RaftStorageError::IO {
        source: StorageIOError::read_logs(AnyError::error(e.to_string())),
    }
}

fn write_err(e: impl std::fmt::Display) -> RaftStorageError {
    RaftStorageError::IO {
        source: StorageIOError::write_logs(AnyError::error(e.to_string())),
    }
}

/// One group's Raft log (cheap to clone: a handle to the shared store).
#[derive(Clone)]
pub struct LogStore {
    store: Store,
    group: u64,
    on_write: WriteHook,
    /// Whether a purge deletes entries (the metadata group) or only moves
    /// Raft's purge point (a partition, whose entries are its data and are
    /// deleted by retention alone).
    purge_deletes: bool,
}

/// Observes each log write: entries, seconds.
pub type WriteHook = std::sync::Arc<dyn Fn(usize, f64) + Send + Sync>;

impl LogStore {
    /// The log of `group` in `store`.
    pub fn new(store: Store, group: u64) -> LogStore {
        LogStore {
            store,
            group,
            on_write: std::sync::Arc::new(|_, _| {}),
            purge_deletes: true,
        }
    }

    /// A partition's log: purging keeps the entries (they are the records
    /// consumers read until retention removes them).
    pub fn keeping_purged_entries(mut self) -> LogStore {
        self.purge_deletes = false;
        self
    }

    /// Reports every append to `hook`.
    pub fn with_write_hook(mut self, hook: WriteHook) -> LogStore {
        self.on_write = hook;
        self
    }

    fn get_meta<T: for<'de> Deserialize<'de>>(
        &self,
        kind: &str,
    ) -> Result<Option<T>, RaftStorageError> {
        match self
            .store
            .meta_get(&key(kind, self.group))
            .map_err(read_err)?
        {
            None => Ok(None),
            Some(v) => bincode::deserialize(&v).map(Some).map_err(read_err),
        }
    }

    fn put_meta<T: Serialize>(
        &self,
        kind: &str,
        value: &T,
        sync: bool,
    ) -> Result<(), RaftStorageError> {
        let v = bincode::serialize(value).map_err(write_err)?;
        blocking(|| self.store.meta_put(&key(kind, self.group), &v, sync)).map_err(write_err)
    }

    /// Whether this group has ever stored a vote or an entry (a node that has
    /// must not be initialised again).
    pub fn is_fresh(&self) -> Result<bool, RaftStorageError> {
        Ok(self.get_meta::<Vote<NodeId>>("vote")?.is_none()
            && self
                .store
                .raft_last_entry(self.group)
                .map_err(read_err)?
                .is_none())
    }
}

impl RaftLogReader<TernRaft> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, RaftStorageError> {
        let from = match range.start_bound() {
            Bound::Included(x) => *x,
            Bound::Excluded(x) => x.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let to = match range.end_bound() {
            Bound::Included(x) => x.saturating_add(1),
            Bound::Excluded(x) => *x,
            Bound::Unbounded => u64::MAX,
        };
        let raw = blocking(|| self.store.raft_entries(self.group, from, to)).map_err(read_err)?;
        raw.iter()
            .map(|(_, v)| decode_entry(v).map_err(read_err))
            .collect()
    }

    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> Result<Vec<Entry>, RaftStorageError> {
        // Bounds one AppendEntries message (and a follower's write) in
        // bytes, whatever the batch size.
        let raw = blocking(|| {
            self.store
                .raft_entries_limited(self.group, start, end, REPLICATION_BYTES_MAX)
        })
        .map_err(read_err)?;
        raw.iter()
            .map(|(_, v)| decode_entry(v).map_err(read_err))
            .collect()
    }
}

impl RaftLogStorage<TernRaft> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TernRaft>, RaftStorageError> {
        let last_purged_log_id: Option<LogId> = self.get_meta("purged")?;
        let last = self.store.raft_last_entry(self.group).map_err(read_err)?;
        let last_log_id = match last {
            // Entries at or below the purge point are data only (e.g. from
            // an installed snapshot), not Raft's log.
            Some((index, _)) if last_purged_log_id.is_some_and(|p| index <= p.index) => {
                last_purged_log_id
            }
            Some((_, v)) => Some(decode_entry(&v).map_err(read_err)?.log_id),
            None => last_purged_log_id,
        };
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), RaftStorageError> {
        self.put_meta("vote", vote, true)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, RaftStorageError> {
        self.get_meta("vote")
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), RaftStorageError> {
        // Only an optimisation (re-applying on restart needs it); no fsync.
        self.put_meta("committed", &committed, false)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, RaftStorageError> {
        Ok(self.get_meta::<Option<LogId>>("committed")?.flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TernRaft>,
    ) -> Result<(), RaftStorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let encoded: Vec<(u64, Vec<u8>)> = entries
            .into_iter()
            .map(|e| (e.log_id.index, encode_entry(&e)))
            .collect();
        let started = std::time::Instant::now();
        // Written unsynced (readable at once, as openraft requires), made
        // durable by the node's WAL sync thread, which reports to openraft
        // through `callback`: the leader replicates while its own fsync
        // runs, and concurrent appends of all groups share one fsync.
        let bytes: usize = encoded.iter().map(|(_, v)| v.len()).sum();
        let write = || self.store.raft_append_buffered(self.group, &encoded);
        let large = bytes > 256 << 10;
        let mut result = if large { blocking(write) } else { write() };
        // A full disk is waited out, not fatal: the group stalls (its
        // leader refuses new produces with DiskFull meanwhile) and resumes
        // when space returns.
        let mut waited = 0u32;
        while let Err(StorageError::DiskFull { .. }) = &result {
            if waited.is_multiple_of(20) {
                tracing::error!(
                    group = self.group,
                    "disk full: Raft log write waits for space"
                );
            }
            waited += 1;
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            result = blocking(|| self.store.raft_append_buffered(self.group, &encoded));
        }
        match result {
            Ok(()) => {
                let (on_write, entries) = (self.on_write.clone(), encoded.len());
                self.store.after_wal_sync(Box::new(move |synced| {
                    on_write(entries, started.elapsed().as_secs_f64());
                    callback.log_io_completed(synced.map_err(std::io::Error::other));
                }));
                Ok(())
            }
            Err(e) => {
                let msg = e.to_string();
                callback.log_io_completed(Err(std::io::Error::other(msg.clone())));
                Err(write_err(msg))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), RaftStorageError> {
        blocking(|| self.store.raft_truncate_from(self.group, log_id.index)).map_err(write_err)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), RaftStorageError> {
        self.put_meta("purged", &log_id, true)?;
        if !self.purge_deletes {
            return Ok(());
        }
        blocking(|| self.store.raft_delete_below(self.group, log_id.index + 1)).map_err(write_err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::CommittedLeaderId;

    #[test]
    fn entries_round_trip_and_a_batch_is_stored_raw() {
        let log_id = LogId::new(CommittedLeaderId::new(3, 2), 17);
        let batch = Bytes::from_static(b"raw batch bytes");
        let e = Entry {
            log_id,
            payload: EntryPayload::Normal(Command::Append(batch.clone())),
        };
        let v = encode_entry(&e);
        assert!(
            v.ends_with(&batch),
            "payload stored as is, after the header"
        );
        assert_eq!(decode_entry(&v).unwrap(), e);
        let c = Entry {
            log_id,
            payload: EntryPayload::Normal(Command::DeleteTopic { name: "t".into() }),
        };
        assert_eq!(decode_entry(&encode_entry(&c)).unwrap(), c);
        assert!(decode_entry(&[1, 0, 0, 0, 9]).is_err());
    }
}

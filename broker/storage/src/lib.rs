//! Tern's storage: one embedded RocksDB per node holding every Raft log (the
//! partitions' data) and every replicated state machine's state.
//!
//! Column families:
//! - `log`: the Raft log of every group. Key `group u64 BE | raft index u64
//!   BE`; a partition's group id is `topic_id << 32 | partition`, the
//!   metadata group is 0. Value: `header_len u32 LE | header | payload`,
//!   where the header is opaque here (the Raft layer's entry metadata) and
//!   the payload of a data entry is the record batch exactly as produced.
//!   **A record is stored once:** the Raft log *is* the partition's data.
//! - `index`: per partition, key `group | base_offset u64 BE`, value =
//!   `record_count u32, bytes u32, max_timestamp i64, raft_index u64` — a
//!   few bytes per applied batch, so opening a partition reads only this and
//!   a fetch finds a batch's Raft entry without scanning.
//! - `meta`: small keyed values: Raft votes, purge points, state-machine
//!   snapshots of each group, log-start markers.
//!
//! Big-endian keys make RocksDB's byte order equal index order, so a group is
//! one contiguous key range: reads are range scans, truncation and retention
//! are `delete_range`s.
//!
//! **Architecture invariant:** this crate knows nothing about the network,
//! requests or Raft's rules. It stores bytes where it is told and checks a
//! batch's CRC on every read: a corrupt batch becomes
//! [`StorageError::Corrupt`], never data. Offsets are assigned only in
//! [`PartitionLog::apply`], in Raft log order, so every replica assigns the
//! same ones.

#![warn(missing_docs, unreachable_pub)]

mod log;
mod raft;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rocksdb::{ColumnFamilyDescriptor, Options, DB};
use thiserror::Error;

pub use log::{AppendedBatch, ApplyBatch, PartitionLog, ReadOutcome, RetentionOutcome};
pub use raft::{join_raft_value, partition_group, split_raft_value, META_GROUP};

const CF_LOG: &str = "log";
const CF_INDEX: &str = "index";
const CF_META: &str = "meta";

/// Storage failures.
#[derive(Debug, Error)]
pub enum StorageError {
    /// RocksDB refused a read or write.
    #[error("rocksdb {operation}: {source}")]
    Rocks {
        /// What was being done.
        operation: &'static str,
        /// The engine's error.
        #[source]
        source: rocksdb::Error,
    },
    /// The disk is full; writes fail until space returns.
    #[error("disk full during {operation}: {message}")]
    DiskFull {
        /// What was being done.
        operation: &'static str,
        /// The engine's message.
        message: String,
    },
    /// A stored batch failed its CRC or structure check.
    #[error("corrupt batch in topic {topic_id} partition {partition} at offset {offset}: {cause}")]
    Corrupt {
        /// Topic id.
        topic_id: u32,
        /// Partition.
        partition: u32,
        /// Base offset of the batch.
        offset: u64,
        /// What failed.
        cause: tern_protocol::BatchError,
    },
    /// The state machine assigned a batch an offset other than the log's
    /// end: the replicas' bookkeeping disagrees, and nothing is written.
    #[error(
        "topic {topic_id} partition {partition}: batch assigned offset {assigned} but the log ends at {log_end}"
    )]
    OffsetMismatch {
        /// Topic id.
        topic_id: u32,
        /// Partition.
        partition: u32,
        /// The offset the state machine assigned (and acknowledged).
        assigned: u64,
        /// Where the log actually ends.
        log_end: u64,
    },
    /// A snapshot received from a peer does not describe one contiguous
    /// log: nothing of it was installed.
    #[error("snapshot of topic {topic_id} partition {partition} refused: {detail}")]
    BadSnapshot {
        /// Topic id.
        topic_id: u32,
        /// Partition.
        partition: u32,
        /// What is wrong.
        detail: String,
    },
    /// The requested offset is outside the log.
    #[error("offset {offset} out of range [{log_start}, {log_end}]")]
    OffsetOutOfRange {
        /// Requested.
        offset: u64,
        /// First stored offset.
        log_start: u64,
        /// Next offset to be written.
        log_end: u64,
    },
    /// A stored catalogue entry cannot be decoded.
    #[error("corrupt catalogue entry {key}: {detail}")]
    CorruptCatalogue {
        /// The key.
        key: String,
        /// What is wrong.
        detail: String,
    },
}

impl StorageError {
    pub(crate) fn rocks(operation: &'static str, source: rocksdb::Error) -> StorageError {
        let message = source.to_string();
        if message.contains("No space left") || message.contains("ENOSPC") {
            StorageError::DiskFull { operation, message }
        } else {
            StorageError::Rocks { operation, source }
        }
    }
}

/// How writes reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Every append is acknowledged only after RocksDB's WAL is fsync'd.
    /// Survives power loss and kernel crashes.
    Fsync,
    /// Appends are acknowledged once written to the WAL in the OS page cache.
    /// Survives a crash of the broker process (SIGKILL included), but a
    /// power loss or kernel crash can lose the most recent acknowledged writes.
    PageCache,
}

/// One node's RocksDB.
#[derive(Clone)]
pub struct Store {
    db: Arc<DB>,
    durability: Durability,
    path: PathBuf,
    /// Set while Raft log writes fail for lack of space.
    disk_full: Arc<std::sync::atomic::AtomicBool>,
    /// Queue of the WAL sync thread (started on first use).
    wal_syncer: Arc<std::sync::OnceLock<std::sync::mpsc::Sender<AfterWalSync>>>,
}

/// Work to run once the WAL is on disk: `Err` carries why syncing failed.
pub type AfterWalSync = Box<dyn FnOnce(Result<(), String>) + Send>;

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.path)
            .field("durability", &self.durability)
            .finish()
    }
}

impl Store {
    /// Opens (or creates) the store under `dir`.
    pub fn open(dir: &Path, durability: Durability) -> Result<Store, StorageError> {
        let mut db_opts = Options::default();
        db_opts.create_if_missing(true);
        db_opts.create_missing_column_families(true);
        db_opts.set_max_background_jobs(2);
        db_opts.set_bytes_per_sync(1 << 20);
        // Logs are written once and read mostly at the tail: large memtables
        // and no compression (payloads are usually already compact or random).
        let cf_opts = || {
            let mut o = Options::default();
            o.set_compression_type(rocksdb::DBCompressionType::None);
            o.set_write_buffer_size(64 << 20);
            o.set_max_write_buffer_number(4);
            o.set_target_file_size_base(64 << 20);
            o.set_level_compaction_dynamic_level_bytes(true);
            o
        };
        let cfs = [CF_LOG, CF_INDEX, CF_META]
            .into_iter()
            .map(|name| ColumnFamilyDescriptor::new(name, cf_opts()));
        let db = DB::open_cf_descriptors(&db_opts, dir, cfs)
            .map_err(|e| StorageError::rocks("open", e))?;
        Ok(Store {
            db: Arc::new(db),
            durability,
            path: dir.to_path_buf(),
            disk_full: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            wal_syncer: Arc::default(),
        })
    }

    /// Runs `job` once every write made so far is durable: at once without
    /// `fsync` durability, else after the next WAL sync. One sync thread
    /// serves every Raft group of the node, and one `fsync` covers all the
    /// writes made while the previous one ran (group commit), so a log
    /// append never waits for the disk on the caller's thread.
    pub fn after_wal_sync(&self, job: AfterWalSync) {
        if self.durability != Durability::Fsync {
            job(Ok(()));
            return;
        }
        let queue = self.wal_syncer.get_or_init(|| {
            let (tx, rx) = std::sync::mpsc::channel::<AfterWalSync>();
            // Only a weak handle: the thread ends when the store is dropped.
            let db = Arc::downgrade(&self.db);
            std::thread::Builder::new()
                .name("tern-wal-sync".into())
                .spawn(move || {
                    while let Ok(first) = rx.recv() {
                        let mut jobs = vec![first];
                        jobs.extend(rx.try_iter());
                        let synced = match db.upgrade() {
                            Some(db) => db.flush_wal(true).map_err(|e| e.to_string()),
                            None => Err("the store is closed".to_owned()),
                        };
                        for job in jobs {
                            job(synced.clone());
                        }
                    }
                })
                .expect("spawn the WAL sync thread");
            tx
        });
        if let Err(std::sync::mpsc::SendError(job)) = queue.send(job) {
            job(Err("the WAL sync thread stopped".to_owned()));
        }
    }

    /// Whether the last Raft log write failed because the disk is full
    /// (cleared by the next successful one).
    pub fn is_disk_full(&self) -> bool {
        self.disk_full.load(std::sync::atomic::Ordering::Acquire)
    }

    pub(crate) fn note_write(&self, result: &Result<(), StorageError>) {
        if matches!(result, Err(StorageError::DiskFull { .. })) {
            self.set_disk_full(true);
        }
    }

    /// Marks the disk full (writes are refused) or not.
    pub fn set_disk_full(&self, full: bool) {
        self.disk_full
            .store(full, std::sync::atomic::Ordering::Release);
    }

    /// Bytes available to this process on the data directory's file system.
    pub fn available_bytes(&self) -> std::io::Result<u64> {
        use std::os::unix::ffi::OsStrExt;
        let path = std::ffi::CString::new(self.path.as_os_str().as_bytes())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        // SAFETY: statvfs(3) with a NUL-terminated path and a zeroed struct
        // it fills; no pointer outlives the call.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(st.f_bavail as u64 * st.f_frsize as u64)
    }

    /// The durability mode appends use.
    pub fn durability(&self) -> Durability {
        self.durability
    }

    pub(crate) fn write_options(&self) -> rocksdb::WriteOptions {
        let mut w = rocksdb::WriteOptions::default();
        w.set_sync(self.durability == Durability::Fsync);
        w
    }

    pub(crate) fn cf(&self, name: &str) -> &rocksdb::ColumnFamily {
        self.db
            .cf_handle(name)
            .expect("column families are created at open")
    }

    /// Opens the log of one partition, recovering its offsets from the index.
    pub fn partition_log(
        &self,
        topic_id: u32,
        partition: u32,
    ) -> Result<PartitionLog, StorageError> {
        PartitionLog::open(self.clone(), topic_id, partition)
    }

    /// The directory of this store.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A RocksDB integer property summed over column families, e.g.
    /// `rocksdb.total-sst-files-size`. `None` if the engine does not know it.
    pub fn int_property(&self, name: &str) -> Option<u64> {
        let mut total = None;
        for cf in [CF_LOG, CF_INDEX, CF_META] {
            if let Ok(Some(v)) = self.db.property_int_value_cf(self.cf(cf), name) {
                total = Some(total.unwrap_or(0) + v);
            }
        }
        total
    }

    /// Flushes memtables and the WAL (used at clean shutdown).
    pub fn flush(&self) -> Result<(), StorageError> {
        self.db
            .flush_wal(true)
            .map_err(|e| StorageError::rocks("flush wal", e))
    }
}

/// `group | index`, big-endian: the key of a Raft entry in `log` and of a
/// batch (by base offset) in `index`.
pub(crate) fn group_key(group: u64, index: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&group.to_be_bytes());
    k[8..].copy_from_slice(&index.to_be_bytes());
    k
}

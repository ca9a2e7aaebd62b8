//! The broker's read cache: recently produced or fetched record batches kept
//! in memory in front of RocksDB, bounded in bytes. Which batches stay is
//! decided by the loaded cache plugin, called once per batch.
//!
//! Entries are keyed by (topic id, partition, base offset). Topic ids are
//! never reused and a batch's bytes never change once written, so an entry
//! can never be stale; batches removed by retention are simply no longer
//! asked for and age out.
//!
//! A failing plugin call (a panic inside the plugin) never fails a fetch: the
//! batch is served from storage and the error is counted and logged.

use std::collections::HashMap;
use std::sync::Mutex;

use bytes::Bytes;
use tern_plugin_host::{CachePolicy, Plugin, PluginError};
use tracing::warn;

use crate::metrics::Metrics;

type BatchKey = (u32, u32, u64);

struct Inner {
    policy: CachePolicy,
    entries: HashMap<u64, (BatchKey, Bytes)>,
    ids: HashMap<BatchKey, u64>,
    next_id: u64,
    bytes: u64,
}

/// A byte-bounded cache of record batches.
pub struct ReadCache {
    inner: Mutex<Inner>,
    metrics: Metrics,
    strategy: String,
}

impl ReadCache {
    /// A cache of `capacity_bytes` driven by the cache plugin.
    pub fn new(
        plugin: &Plugin,
        capacity_bytes: u64,
        metrics: Metrics,
    ) -> Result<ReadCache, PluginError> {
        let strategy = plugin.info().name.clone();
        metrics
            .cache_capacity_bytes
            .with_label_values(&[&strategy])
            .set(capacity_bytes as i64);
        // Counters exist (at 0) from the start, so dashboards show 0, not "no data".
        metrics.cache_hits.with_label_values(&[&strategy]);
        metrics.cache_misses.with_label_values(&[&strategy]);
        metrics.cache_evictions.with_label_values(&[&strategy]);
        metrics.cache_bytes.with_label_values(&[&strategy]);
        Ok(ReadCache {
            inner: Mutex::new(Inner {
                policy: CachePolicy::new(plugin, capacity_bytes)?,
                entries: HashMap::new(),
                ids: HashMap::new(),
                next_id: 0,
                bytes: 0,
            }),
            metrics,
            strategy,
        })
    }

    /// The cached batch, if present (counts a hit or a miss).
    pub fn get(&self, key: BatchKey) -> Option<Bytes> {
        let mut inner = self.inner.lock().expect("cache lock");
        let found = inner
            .ids
            .get(&key)
            .copied()
            .and_then(|id| inner.entries.get(&id).map(|(_, b)| (id, b.clone())));
        match found {
            Some((id, bytes)) => {
                if let Err(e) = inner.policy.on_hit(id) {
                    self.plugin_failed(&e);
                }
                self.metrics
                    .cache_hits
                    .with_label_values(&[&self.strategy])
                    .inc();
                Some(bytes)
            }
            None => {
                self.metrics
                    .cache_misses
                    .with_label_values(&[&self.strategy])
                    .inc();
                None
            }
        }
    }

    /// Offers a batch to the cache; the policy decides.
    pub fn insert(&self, key: BatchKey, bytes: Bytes) {
        let mut inner = self.inner.lock().expect("cache lock");
        if inner.ids.contains_key(&key) {
            return;
        }
        let id = inner.next_id;
        inner.next_id += 1;
        let (admitted, evicted) = match inner.policy.admit(id, bytes.len() as u64) {
            Ok(v) => v,
            Err(e) => {
                self.plugin_failed(&e);
                return;
            }
        };
        let mut evicted_count = 0;
        for victim in evicted {
            if let Some((k, b)) = inner.entries.remove(&victim) {
                inner.ids.remove(&k);
                inner.bytes -= b.len() as u64;
                evicted_count += 1;
            }
        }
        self.metrics
            .cache_evictions
            .with_label_values(&[&self.strategy])
            .inc_by(evicted_count);
        if admitted {
            inner.bytes += bytes.len() as u64;
            inner.ids.insert(key, id);
            inner.entries.insert(id, (key, bytes));
        }
        self.metrics
            .cache_bytes
            .with_label_values(&[&self.strategy])
            .set(inner.bytes as i64);
    }

    fn plugin_failed(&self, e: &PluginError) {
        self.metrics
            .plugin_errors
            .with_label_values(&["cache"])
            .inc();
        warn!(error = %e, "cache plugin call failed; serving from storage");
    }
}

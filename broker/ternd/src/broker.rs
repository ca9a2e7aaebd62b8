//! The broker's request handling, independent of sockets: the topic
//! catalogue in memory, one appender task per partition, and the logic of
//! every request type.
//!
//! Produce is split in two so the connection can keep per-partition order
//! while pipelining: [`Broker::enqueue_produce`] validates the batches and
//! queues them on their partitions' appenders *in the order the requests
//! arrived*; [`finish_produce`] then waits for the acknowledgements.
//!
//! **Invariant:** a produce is acknowledged only after its batch is written
//! by [`PartitionLog::append`] with the node's durability setting; a batch is
//! appended by exactly one appender task, so offsets come from one place.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tern_protocol::api::{
    BrokerInfo, FetchPartition, FetchResult, OffsetSpec, PartitionInfo, ProducePartition,
    ProduceResult, TopicConfig, TopicInfo, RETENTION_BROKER_DEFAULT,
};
use tern_protocol::record::BATCH_BYTES_MAX;
use tern_protocol::{BatchView, ErrorCode, Request, Response};
use tern_storage::{PartitionLog, StorageError, Store, TopicRecord};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{info, warn, Instrument};

use crate::config::Config;
use crate::metrics::{Metrics, PARTITION_SERIES_MAX};
use crate::plugins::Plugins;
use crate::read_cache::ReadCache;

/// Most partitions one topic may have.
pub const PARTITIONS_PER_TOPIC_MAX: u32 = 10_000;
/// Longest topic name.
pub const TOPIC_NAME_BYTES_MAX: usize = 249;
/// Appends queued per partition before producers are slowed (backpressure).
pub const APPEND_QUEUE_DEPTH: usize = 1024;
/// Most batches one storage write groups together.
pub const APPEND_GROUP_BATCHES_MAX: usize = 256;
/// Most bytes one storage write groups together.
pub const APPEND_GROUP_BYTES_MAX: usize = 16 * 1024 * 1024;
/// Longest long-poll a fetch may ask for.
pub const FETCH_WAIT_MS_MAX: u32 = 60_000;
/// Most bytes one fetch response carries.
pub const FETCH_RESPONSE_BYTES_MAX: usize = 8 * 1024 * 1024;

/// A failed request or partition: a wire code and a message for humans.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// Wire code.
    pub code: ErrorCode,
    /// Detail.
    pub message: String,
}

impl Failure {
    fn new(code: ErrorCode, message: impl Into<String>) -> Failure {
        Failure {
            code,
            message: message.into(),
        }
    }

    fn from_storage(e: &StorageError) -> Failure {
        let code = match e {
            StorageError::OffsetOutOfRange { .. } => ErrorCode::OffsetOutOfRange,
            StorageError::DiskFull { .. } => ErrorCode::DiskFull,
            StorageError::Corrupt { .. } => ErrorCode::CorruptBatch,
            _ => ErrorCode::StorageError,
        };
        Failure::new(code, e.to_string())
    }
}

type AppendReply = oneshot::Sender<Result<u64, Failure>>;

struct AppendJob {
    batch: BytesMut,
    records: u32,
    reply: AppendReply,
}

/// One partition hosted by this node.
pub struct Partition {
    topic: Arc<str>,
    index: u32,
    log: Arc<PartitionLog>,
    appender: mpsc::Sender<AppendJob>,
    log_end: watch::Receiver<u64>,
}

/// A topic and its partitions.
pub struct Topic {
    record: TopicRecord,
    partitions: Vec<Arc<Partition>>,
}

/// The broker's state, shared by every connection.
pub struct Broker {
    config: Config,
    store: Store,
    metrics: Metrics,
    topics: RwLock<HashMap<String, Arc<Topic>>>,
    /// Serialises topic creation and deletion.
    admin: tokio::sync::Mutex<()>,
    ready: AtomicBool,
    plugins: Plugins,
    cache: Option<Arc<ReadCache>>,
}

/// A produce partition after enqueueing: either already answered or waiting
/// for its appender.
pub enum PendingAppend {
    /// Answered without touching storage (unknown topic, bad batch...).
    Done(ProduceResult),
    /// Queued; the receiver yields the base offset.
    Queued {
        /// Topic.
        topic: String,
        /// Partition.
        partition: u32,
        /// The appender's answer.
        reply: oneshot::Receiver<Result<u64, Failure>>,
    },
}

impl Broker {
    /// Opens every stored topic and starts its appenders.
    pub fn open(
        config: Config,
        store: Store,
        metrics: Metrics,
        plugins: Plugins,
        cache: Option<ReadCache>,
    ) -> Result<Arc<Broker>, StorageError> {
        let broker = Arc::new(Broker {
            config,
            store,
            metrics,
            topics: RwLock::new(HashMap::new()),
            admin: tokio::sync::Mutex::new(()),
            ready: AtomicBool::new(false),
            plugins,
            cache: cache.map(Arc::new),
        });
        for record in broker.store.load_topics()? {
            let topic = broker.open_topic(record)?;
            broker
                .topics
                .write()
                .expect("topics lock")
                .insert(topic.record.name.clone(), topic);
        }
        broker.refresh_counts();
        Ok(broker)
    }

    /// The resolved configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The loaded strategy plugins.
    pub fn plugins(&self) -> &Plugins {
        &self.plugins
    }

    /// The storage.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Marks the broker as serving (listeners bound, topics opened).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    /// Whether the broker is serving.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    fn open_topic(&self, record: TopicRecord) -> Result<Arc<Topic>, StorageError> {
        let name: Arc<str> = Arc::from(record.name.as_str());
        let mut partitions = Vec::with_capacity(record.config.partitions as usize);
        for index in 0..record.config.partitions {
            let log = Arc::new(self.store.partition_log(record.id, index)?);
            let (tx, rx) = mpsc::channel(APPEND_QUEUE_DEPTH);
            let (end_tx, end_rx) = watch::channel(log.log_end());
            let span = tracing::info_span!("appender", topic = %name, partition = index);
            tokio::spawn(
                run_appender(
                    log.clone(),
                    rx,
                    end_tx,
                    self.metrics.clone(),
                    name.clone(),
                    self.cache.clone(),
                )
                .instrument(span),
            );
            partitions.push(Arc::new(Partition {
                topic: name.clone(),
                index,
                log,
                appender: tx,
                log_end: end_rx,
            }));
        }
        Ok(Arc::new(Topic { record, partitions }))
    }

    fn topic(&self, name: &str) -> Option<Arc<Topic>> {
        self.topics.read().expect("topics lock").get(name).cloned()
    }

    fn partition(&self, topic: &str, partition: u32) -> Result<Arc<Partition>, Failure> {
        self.topic(topic)
            .and_then(|t| t.partitions.get(partition as usize).cloned())
            .ok_or_else(|| {
                Failure::new(
                    ErrorCode::UnknownTopicOrPartition,
                    format!("no partition {partition} of topic {topic:?}"),
                )
            })
    }

    /// Every hosted partition (for retention and metrics).
    pub fn all_partitions(&self) -> Vec<(TopicRecord, Arc<Partition>)> {
        self.topics
            .read()
            .expect("topics lock")
            .values()
            .flat_map(|t| t.partitions.iter().map(|p| (t.record.clone(), p.clone())))
            .collect()
    }

    fn refresh_counts(&self) {
        let topics = self.topics.read().expect("topics lock");
        self.metrics.topics.set(topics.len() as i64);
        self.metrics
            .partitions
            .set(topics.values().map(|t| t.partitions.len() as i64).sum());
    }

    /// Validates each batch and queues it on its partition's appender.
    /// Awaiting here (a full queue) is the backpressure that stops the
    /// connection from reading more.
    pub async fn enqueue_produce(&self, partitions: Vec<ProducePartition>) -> Vec<PendingAppend> {
        let mut pending = Vec::with_capacity(partitions.len());
        for p in partitions {
            let done = |f: Failure| {
                self.metrics
                    .request_errors
                    .with_label_values(&["produce", f.code.name()])
                    .inc();
                PendingAppend::Done(ProduceResult {
                    topic: p.topic.clone(),
                    partition: p.partition,
                    error: f.code,
                    base_offset: 0,
                })
            };
            let target = match self.partition(&p.topic, p.partition) {
                Ok(t) => t,
                Err(f) => {
                    pending.push(done(f));
                    continue;
                }
            };
            if p.batch.len() > BATCH_BYTES_MAX {
                pending.push(done(Failure::new(
                    ErrorCode::MessageTooLarge,
                    "batch too large",
                )));
                continue;
            }
            let view = match BatchView::validate(p.batch.clone()) {
                Ok(v) => v,
                Err(e) => {
                    warn!(topic = %p.topic, partition = p.partition, error = %e, "rejected batch");
                    pending.push(done(Failure::new(ErrorCode::CorruptBatch, e.to_string())));
                    continue;
                }
            };
            let (tx, rx) = oneshot::channel();
            let job = AppendJob {
                records: view.record_count(),
                batch: BytesMut::from(&view.bytes()[..]),
                reply: tx,
            };
            if target.appender.send(job).await.is_err() {
                pending.push(done(Failure::new(
                    ErrorCode::UnknownTopicOrPartition,
                    "topic was deleted",
                )));
                continue;
            }
            pending.push(PendingAppend::Queued {
                topic: p.topic,
                partition: p.partition,
                reply: rx,
            });
        }
        pending
    }

    /// Answers any request other than produce.
    pub async fn handle(&self, request: Request) -> Result<Response, Failure> {
        match request {
            Request::Produce {
                partitions,
                timeout_ms,
                ..
            } => {
                let pending = self.enqueue_produce(partitions).await;
                Ok(finish_produce(pending, timeout_ms, &self.metrics).await)
            }
            Request::Fetch {
                max_wait_ms,
                min_bytes,
                max_bytes,
                partitions,
            } => Ok(self
                .fetch(max_wait_ms, min_bytes, max_bytes, partitions)
                .await),
            Request::Metadata { topics } => Ok(self.metadata(topics)),
            Request::CreateTopic { name, config } => self.create_topic(name, config).await,
            Request::DeleteTopic { name } => self.delete_topic(name).await,
            Request::ListOffsets {
                topic,
                partition,
                spec,
            } => {
                let p = self.partition(&topic, partition)?;
                let offset = match spec {
                    OffsetSpec::Earliest => p.log.log_start(),
                    OffsetSpec::Latest => p.log.log_end(),
                    OffsetSpec::Timestamp(ts) => p.log.offset_for_timestamp(ts),
                };
                Ok(Response::ListOffsets { offset })
            }
        }
    }

    async fn fetch(
        &self,
        max_wait_ms: u32,
        min_bytes: u32,
        max_bytes: u32,
        wanted: Vec<FetchPartition>,
    ) -> Response {
        let deadline =
            Instant::now() + Duration::from_millis(max_wait_ms.min(FETCH_WAIT_MS_MAX) as u64);
        let max_bytes = (max_bytes as usize).clamp(1, FETCH_RESPONSE_BYTES_MAX);
        let targets: Vec<_> = wanted
            .iter()
            .map(|w| self.partition(&w.topic, w.partition))
            .collect();
        let mut watches: Vec<watch::Receiver<u64>> = targets
            .iter()
            .filter_map(|t| t.as_ref().ok().map(|p| p.log_end.clone()))
            .collect();
        loop {
            for w in &mut watches {
                w.borrow_and_update();
            }
            let results = self.read_partitions(&wanted, &targets, max_bytes).await;
            let total: usize = results.iter().map(|r| r.records.len()).sum();
            let any_error = results.iter().any(|r| r.error != ErrorCode::None);
            if total >= min_bytes as usize
                || any_error
                || Instant::now() >= deadline
                || watches.is_empty()
            {
                for (r, t) in results.iter().zip(&targets) {
                    if let Ok(p) = t {
                        self.metrics
                            .bytes_out
                            .with_label_values(&[&p.topic])
                            .inc_by(r.records.len() as u64);
                    }
                }
                return Response::Fetch(results);
            }
            // Long poll: sleep until any partition's log end moves.
            let changed =
                futures::future::select_all(watches.iter_mut().map(|w| Box::pin(w.changed())));
            if tokio::time::timeout_at(deadline.into(), changed)
                .await
                .is_err()
            {
                continue; // one last read at the deadline
            }
        }
    }

    async fn read_partitions(
        &self,
        wanted: &[FetchPartition],
        targets: &[Result<Arc<Partition>, Failure>],
        max_bytes: usize,
    ) -> Vec<FetchResult> {
        let jobs: Vec<_> = wanted
            .iter()
            .zip(targets)
            .map(|(w, t)| (w.clone(), t.clone()))
            .collect();
        let metrics = self.metrics.clone();
        let cache = self.cache.clone();
        let reads = tokio::task::spawn_blocking(move || {
            let mut budget = max_bytes;
            jobs.into_iter()
                .map(|(w, t)| {
                    let mut result = FetchResult {
                        topic: w.topic.clone(),
                        partition: w.partition,
                        error: ErrorCode::None,
                        high_watermark: 0,
                        log_start: 0,
                        records: Bytes::new(),
                    };
                    let p = match t {
                        Ok(p) => p,
                        Err(f) => {
                            result.error = f.code;
                            return result;
                        }
                    };
                    let limit = (w.max_bytes as usize).clamp(1, budget.max(1));
                    match read_through_cache(cache.as_deref(), &p.log, w.offset, limit) {
                        Ok((data, log_start, log_end)) => {
                            budget = budget.saturating_sub(data.len());
                            result.high_watermark = log_end;
                            result.log_start = log_start;
                            result.records = data;
                        }
                        Err(e) => {
                            if !matches!(e, StorageError::OffsetOutOfRange { .. }) {
                                metrics.storage_errors.with_label_values(&["read"]).inc();
                                warn!(topic = %w.topic, partition = w.partition, error = %e, "read failed");
                            }
                            result.error = Failure::from_storage(&e).code;
                            result.high_watermark = p.log.log_end();
                            result.log_start = p.log.log_start();
                        }
                    }
                    result
                })
                .collect::<Vec<_>>()
        })
        .await;
        match reads {
            Ok(r) => r,
            Err(e) => {
                warn!(error = %e, "fetch reader task failed");
                wanted
                    .iter()
                    .map(|w| FetchResult {
                        topic: w.topic.clone(),
                        partition: w.partition,
                        error: ErrorCode::Unknown,
                        high_watermark: 0,
                        log_start: 0,
                        records: Bytes::new(),
                    })
                    .collect()
            }
        }
    }

    fn metadata(&self, wanted: Option<Vec<String>>) -> Response {
        let topics = self.topics.read().expect("topics lock");
        let describe = |t: &Topic| TopicInfo {
            error: ErrorCode::None,
            name: t.record.name.clone(),
            config: t.record.config.clone(),
            partitions: t
                .partitions
                .iter()
                .map(|p| {
                    let end = p.log.log_end();
                    PartitionInfo {
                        partition: p.index,
                        leader: self.config.node_id,
                        replicas: vec![self.config.node_id],
                        in_sync: vec![self.config.node_id],
                        log_start: p.log.log_start(),
                        log_end: end,
                        high_watermark: end,
                    }
                })
                .collect(),
        };
        let mut out: Vec<TopicInfo> = match wanted {
            None => topics.values().map(|t| describe(t)).collect(),
            Some(names) => names
                .into_iter()
                .map(|n| match topics.get(&n) {
                    Some(t) => describe(t),
                    None => TopicInfo {
                        error: ErrorCode::UnknownTopicOrPartition,
                        name: n,
                        config: TopicConfig {
                            partitions: 0,
                            replication_factor: 0,
                            retention_ms: -1,
                            retention_bytes: -1,
                        },
                        partitions: vec![],
                    },
                })
                .collect(),
        };
        out.sort_by(|a, b| a.name.cmp(&b.name));
        let (host, port) = split_host_port(&self.config.advertise);
        Response::Metadata {
            brokers: vec![BrokerInfo {
                node_id: self.config.node_id,
                host,
                port,
            }],
            controller: self.config.node_id,
            topics: out,
        }
    }

    async fn create_topic(
        &self,
        name: String,
        mut config: TopicConfig,
    ) -> Result<Response, Failure> {
        validate_topic_name(&name)?;
        if config.partitions == 0 || config.partitions > PARTITIONS_PER_TOPIC_MAX {
            return Err(Failure::new(
                ErrorCode::InvalidPartitions,
                format!("partitions must be 1..={PARTITIONS_PER_TOPIC_MAX}"),
            ));
        }
        if config.retention_ms == RETENTION_BROKER_DEFAULT {
            config.retention_ms = self.config.default_retention_ms;
        }
        if config.retention_ms < -1 || config.retention_bytes < -1 {
            return Err(Failure::new(
                ErrorCode::InvalidConfig,
                "retention must be -1 (unlimited) or positive",
            ));
        }
        // One node: every partition has exactly one replica. The replication
        // layer raises this cap to the number of brokers.
        config.replication_factor = 1;
        let _admin = self.admin.lock().await;
        if self.topic(&name).is_some() {
            return Err(Failure::new(
                ErrorCode::TopicAlreadyExists,
                format!("topic {name:?} already exists"),
            ));
        }
        let store = self.store.clone();
        let n = name.clone();
        let record = tokio::task::spawn_blocking(move || store.create_topic(&n, config))
            .await
            .map_err(|e| Failure::new(ErrorCode::Unknown, e.to_string()))?
            .map_err(|e| Failure::from_storage(&e))?;
        let topic = self
            .open_topic(record)
            .map_err(|e| Failure::from_storage(&e))?;
        info!(topic = %name, partitions = topic.partitions.len(), "created topic");
        self.topics
            .write()
            .expect("topics lock")
            .insert(name, topic);
        self.refresh_counts();
        Ok(Response::CreateTopic)
    }

    async fn delete_topic(&self, name: String) -> Result<Response, Failure> {
        let _admin = self.admin.lock().await;
        let Some(topic) = self.topics.write().expect("topics lock").remove(&name) else {
            return Err(Failure::new(
                ErrorCode::UnknownTopicOrPartition,
                format!("no topic {name:?}"),
            ));
        };
        let store = self.store.clone();
        let record = topic.record.clone();
        let result = tokio::task::spawn_blocking(move || store.delete_topic(&record))
            .await
            .map_err(|e| Failure::new(ErrorCode::Unknown, e.to_string()))?;
        if let Err(e) = result {
            // Keep serving the topic: its data is still there.
            self.topics
                .write()
                .expect("topics lock")
                .insert(name, topic);
            return Err(Failure::from_storage(&e));
        }
        for p in &topic.partitions {
            let labels = [name.as_str(), &p.index.to_string()];
            let _ = self.metrics.log_start_offset.remove_label_values(&labels);
            let _ = self.metrics.log_end_offset.remove_label_values(&labels);
            let _ = self.metrics.log_size_bytes.remove_label_values(&labels);
        }
        info!(topic = %name, "deleted topic");
        self.refresh_counts();
        Ok(Response::DeleteTopic)
    }

    /// Refreshes per-partition and RocksDB gauges (called on each scrape).
    pub fn update_gauges(&self) {
        for (i, (record, p)) in self.all_partitions().into_iter().enumerate() {
            if i >= PARTITION_SERIES_MAX {
                break;
            }
            let labels = [record.name.as_str(), &p.index.to_string()];
            self.metrics
                .log_start_offset
                .with_label_values(&labels)
                .set(p.log.log_start() as i64);
            self.metrics
                .log_end_offset
                .with_label_values(&labels)
                .set(p.log.log_end() as i64);
            self.metrics
                .log_size_bytes
                .with_label_values(&labels)
                .set(p.log.size_bytes() as i64);
        }
        let prop = |name| self.store.int_property(name).unwrap_or(0) as i64;
        self.metrics
            .rocksdb_sst_bytes
            .set(prop("rocksdb.live-sst-files-size"));
        self.metrics
            .rocksdb_pending_compaction_bytes
            .set(prop("rocksdb.estimate-pending-compaction-bytes"));
        self.metrics
            .rocksdb_write_stopped
            .set(prop("rocksdb.is-write-stopped").min(1));
        self.metrics
            .rocksdb_memtable_bytes
            .set(prop("rocksdb.cur-size-all-mem-tables"));
    }
}

impl Partition {
    /// The partition's log.
    pub fn log(&self) -> &PartitionLog {
        &self.log
    }
    /// The partition index.
    pub fn index(&self) -> u32 {
        self.index
    }
}

/// Waits for every queued append of one produce request and builds the
/// response, giving up on stragglers after `timeout_ms`.
pub async fn finish_produce(
    pending: Vec<PendingAppend>,
    timeout_ms: u32,
    metrics: &Metrics,
) -> Response {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(timeout_ms.max(1) as u64);
    let mut results = Vec::with_capacity(pending.len());
    for p in pending {
        let result = match p {
            PendingAppend::Done(r) => r,
            PendingAppend::Queued {
                topic,
                partition,
                reply,
            } => {
                let (error, base_offset) = match tokio::time::timeout_at(deadline, reply).await {
                    Ok(Ok(Ok(offset))) => (ErrorCode::None, offset),
                    Ok(Ok(Err(f))) => (f.code, 0),
                    Ok(Err(_)) => (ErrorCode::UnknownTopicOrPartition, 0),
                    Err(_) => (ErrorCode::RequestTimedOut, 0),
                };
                if error != ErrorCode::None {
                    metrics
                        .request_errors
                        .with_label_values(&["produce", error.name()])
                        .inc();
                }
                ProduceResult {
                    topic,
                    partition,
                    error,
                    base_offset,
                }
            }
        };
        results.push(result);
    }
    Response::Produce(results)
}

/// Owns all writes to one partition: drains its queue, writes each group of
/// batches with one storage write (one fsync), then answers the producers
/// and wakes long-polling fetches.
async fn run_appender(
    log: Arc<PartitionLog>,
    mut queue: mpsc::Receiver<AppendJob>,
    log_end: watch::Sender<u64>,
    metrics: Metrics,
    topic: Arc<str>,
    cache: Option<Arc<ReadCache>>,
) {
    let records_in = metrics.records_in.with_label_values(&[&topic]);
    let bytes_in = metrics.bytes_in.with_label_values(&[&topic]);
    while let Some(first) = queue.recv().await {
        let mut group = vec![first];
        let mut group_bytes = group[0].batch.len();
        while group.len() < APPEND_GROUP_BATCHES_MAX && group_bytes < APPEND_GROUP_BYTES_MAX {
            match queue.try_recv() {
                Ok(job) => {
                    group_bytes += job.batch.len();
                    group.push(job);
                }
                Err(_) => break,
            }
        }
        let (batches, replies): (Vec<_>, Vec<_>) = group
            .into_iter()
            .map(|j| (j.batch, (j.reply, j.records)))
            .unzip();
        let started = Instant::now();
        let n = batches.len();
        let writer = log.clone();
        let outcome = tokio::task::spawn_blocking(move || writer.append(batches)).await;
        metrics
            .append_seconds
            .observe(started.elapsed().as_secs_f64());
        metrics.append_group_batches.observe(n as f64);
        match outcome {
            Ok(Ok(appended)) => {
                let (topic_id, partition) = log.id();
                for ((reply, records), a) in replies.into_iter().zip(appended) {
                    records_in.inc_by(records as u64);
                    let _ = reply.send(Ok(a.base_offset));
                    // Tailing consumers read what was just written.
                    if let Some(cache) = &cache {
                        cache.insert((topic_id, partition, a.base_offset), a.bytes);
                    }
                }
                bytes_in.inc_by(group_bytes as u64);
                log_end.send_replace(log.log_end());
            }
            Ok(Err(e)) => {
                metrics.storage_errors.with_label_values(&["append"]).inc();
                warn!(error = %e, "append failed; producers get an error and nothing was written");
                let f = Failure::from_storage(&e);
                for (reply, _) in replies {
                    let _ = reply.send(Err(f.clone()));
                }
            }
            Err(e) => {
                warn!(error = %e, "append task failed");
                for (reply, _) in replies {
                    let _ = reply.send(Err(Failure::new(ErrorCode::Unknown, "append task failed")));
                }
            }
        }
    }
}

/// Reads whole batches from `offset`, each from the read cache when it holds
/// it, else from RocksDB (then offered to the cache). Returns the
/// concatenated batches and the log start and end.
fn read_through_cache(
    cache: Option<&ReadCache>,
    log: &PartitionLog,
    offset: u64,
    max_bytes: usize,
) -> Result<(Bytes, u64, u64), StorageError> {
    let Some(cache) = cache else {
        let read = log.read(offset, max_bytes)?;
        return Ok((read.data, read.log_start, read.log_end));
    };
    let (plan, log_start, log_end) = log.plan_read(offset, max_bytes)?;
    let (topic_id, partition) = log.id();
    if let [(base, _)] = plan[..] {
        // One batch: hand out the cached or stored bytes without copying.
        let key = (topic_id, partition, base);
        if let Some(b) = cache.get(key) {
            return Ok((b, log_start, log_end));
        }
        let b = log.read_batch(base)?;
        cache.insert(key, b.clone());
        return Ok((b, log_start, log_end));
    }
    let mut out = BytesMut::with_capacity(plan.iter().map(|(_, n)| *n as usize).sum());
    for (base, _) in plan {
        let key = (topic_id, partition, base);
        let batch = match cache.get(key) {
            Some(b) => b,
            None => match log.read_batch(base) {
                Ok(b) => {
                    cache.insert(key, b.clone());
                    b
                }
                // Retention removed the rest meanwhile: serve what we have.
                Err(StorageError::OffsetOutOfRange { .. }) if !out.is_empty() => break,
                Err(e) => return Err(e),
            },
        };
        out.extend_from_slice(&batch);
    }
    Ok((out.freeze(), log_start, log_end))
}

fn validate_topic_name(name: &str) -> Result<(), Failure> {
    let ok = !name.is_empty()
        && name.len() <= TOPIC_NAME_BYTES_MAX
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(Failure::new(
            ErrorCode::InvalidTopicName,
            format!("topic name {name:?} must be 1..={TOPIC_NAME_BYTES_MAX} characters of [A-Za-z0-9._-]"),
        ))
    }
}

fn split_host_port(addr: &str) -> (String, u16) {
    match addr.rsplit_once(':') {
        Some((h, p)) => (
            h.trim_matches(['[', ']']).to_owned(),
            p.parse().unwrap_or(0),
        ),
        None => (addr.to_owned(), 0),
    }
}

//! The producer: batches records per partition by size and linger time,
//! sends each partition's batches in order with a bounded number in flight,
//! and retries failures without reordering.
//!
//! ```no_run
//! # async fn demo() -> Result<(), tern_client::ClientError> {
//! use tern_client::{Client, Producer, ProducerConfig, ProducerRecord};
//! let client = Client::connect("127.0.0.1:4650").await?;
//! let producer = Producer::new(client, ProducerConfig::default());
//! let meta = producer.send(ProducerRecord::new("orders", "hello").with_key("customer-7")).await?;
//! println!("stored at {}/{}", meta.partition, meta.offset);
//! producer.close().await?;
//! # Ok(()) }
//! ```
//!
//! # Delivery semantics
//!
//! - **Acknowledged = committed**: a [`Delivery`] resolves once the batch is
//!   committed by a majority of the partition's replicas (`acks=all`, the
//!   only mode: leader-only acknowledgement is not offered, since the offset
//!   is assigned when the batch commits).
//! - **Idempotent retries**: every batch carries this producer's random id
//!   and a per-partition sequence number, and a retry resends the same
//!   bytes. The partition's replicated state remembers the last
//!   [`IN_FLIGHT_PER_PARTITION_MAX`] batches of each producer, so a retry of
//!   a batch that was in fact stored (its acknowledgement was lost) is
//!   answered with its original offset and stored once — also across leader
//!   changes. The window holds every batch this producer can have in flight.
//! - **Where duplicates remain possible**: the partition remembers its
//!   10,000 most recently active producers; a retry arriving after this
//!   producer was forgotten is stored again. And the guarantee is per
//!   producer instance and per retry: an application that re-sends a record
//!   after its `Delivery` failed (or from a new `Producer`) sends a new batch,
//!   which is stored again if the first attempt had in fact landed.
//! - **Order**: within a partition, records are stored in `enqueue` order;
//!   a retry holds back every later batch of that partition. The brokers
//!   enforce it too: a producer's batch is stored only right after the one
//!   it sent before (a batch that overtook an earlier one, say by reaching a
//!   new leader while the earlier one failed on the old, is refused with the
//!   retriable `OutOfOrderSequence` and resent after it). Until a partition
//!   has acknowledged one batch of this producer, its batches go one at a
//!   time, since the brokers take any sequence number as a new producer's
//!   first.
//! - **A batch given up** (its `delivery_timeout` passed, or a non-retriable
//!   error) fails its records, and the partition's later batches go on under
//!   a fresh producer id, numbered from 0, so that the gap does not block
//!   them; a later batch is renumbered only once a broker said it was not
//!   stored, so none is stored twice.
//! - **A topic that grows**: keys are routed with the partition count the
//!   producer last learned, re-read every
//!   [`ProducerConfig::metadata_max_age`] by a background task (and at once
//!   for a record naming a partition past it). A key that moves to a new
//!   partition keeps its order there from then on; its earlier records stay
//!   in the old one, so per-key order holds per partition, not across the
//!   growth.
//!
//! # Cancel safety
//!
//! [`Producer::enqueue`] is cancel safe: cancelled, the record was not
//! queued and its queue slot is free again. Once it has returned, the record
//! is on its way whatever happens to the [`Delivery`]: dropping a `Delivery`
//! (or cancelling [`Producer::send`] after the record was queued) only gives
//! up learning its offset.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::stream::FuturesOrdered;
use futures::StreamExt;
use tern_protocol::api::{Acks, ProducePartition};

use crate::Connection;
use tern_protocol::partitioner::partition_for_key;
use tern_protocol::record::{next_sequence, stamp_batch, BATCH_BYTES_MAX, BATCH_HEADER_BYTES};
use tern_protocol::{BatchBuilder, ErrorCode, Record, Request, Response};
use tokio::sync::{mpsc, oneshot, Notify, Semaphore};
use tokio::time::Instant;

use crate::client::Client;
use crate::error::ClientError;
use crate::retry::RetryPolicy;

/// Longest a record waits for its topic (or partition) to appear in the
/// cluster's metadata before it is refused as unknown.
const TOPIC_METADATA_WAIT: Duration = Duration::from_secs(3);
/// Pause between two asks while waiting for a topic's metadata.
const TOPIC_METADATA_RETRY: Duration = Duration::from_millis(100);

/// Most batches of one partition awaiting acknowledgement at once (larger
/// `in_flight_per_partition_max` values are clamped). Equal to the batches
/// per producer a partition remembers for de-duplication
/// (`tern_raft::partition_sm::PRODUCER_WINDOW`, checked by a test): a retried
/// batch is always still in that window.
pub const IN_FLIGHT_PER_PARTITION_MAX: usize = 64;

/// Default [`ProducerConfig::metadata_max_age`]: a topic's growth reaches
/// keyed records within half a minute, for one small metadata request per
/// producer every half minute.
pub const METADATA_MAX_AGE_DEFAULT: Duration = Duration::from_secs(30);

/// Shortest [`ProducerConfig::metadata_max_age`] honoured: a smaller value
/// would turn the refresh into a metadata request loop.
pub const METADATA_MAX_AGE_MIN: Duration = Duration::from_millis(100);

/// Producer settings.
#[derive(Debug, Clone)]
pub struct ProducerConfig {
    /// A batch is sent once it reaches this size.
    pub batch_bytes_max: usize,
    /// A non-full batch is sent this long after its first record.
    pub linger: Duration,
    /// Batches of one partition awaiting acknowledgement at once (at most
    /// [`IN_FLIGHT_PER_PARTITION_MAX`]).
    pub in_flight_per_partition_max: usize,
    /// Records accepted but not yet acknowledged before `enqueue` waits.
    pub queue_records_max: usize,
    /// Attempts after the first for a retriable failure (see also
    /// `delivery_timeout`, which bounds them in time).
    pub retries: u32,
    /// Pause before the first retry of a batch; each further pause doubles,
    /// up to `retry_backoff_max`, plus a random jitter of up to 100 % (so
    /// that producers failed by one broker do not retry in lockstep).
    pub retry_backoff: Duration,
    /// Longest pause between retries (before jitter).
    pub retry_backoff_max: Duration,
    /// How long a batch may be retried, from when it is sealed, before its
    /// records fail (Kafka's `delivery.timeout.ms`): long enough to ride out
    /// leader elections and a paused broker's detection
    /// ([`crate::ClientConfig::liveness_timeout`]).
    pub delivery_timeout: Duration,
    /// How long the broker may take to make a batch durable.
    pub broker_timeout: Duration,
    /// How old the partition counts of the topics it writes to may get
    /// (Kafka's `metadata.max.age.ms`): a topic that grew
    /// ([`crate::Admin::create_partitions`]) gets keyed records on its new
    /// partitions at most this long after the growth. A record sent to an
    /// explicit partition the producer does not know yet makes it ask at
    /// once.
    pub metadata_max_age: Duration,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        ProducerConfig {
            batch_bytes_max: 1024 * 1024,
            linger: Duration::from_millis(5),
            in_flight_per_partition_max: 8,
            queue_records_max: 100_000,
            // Bounded by `delivery_timeout`, like Kafka's producer: an
            // election under load can take several seconds. Pauses of 50,
            // 100, 200, 400, 800 ms then 1 s, each plus up to as much again
            // in jitter: the first retry comes within 0.1 s.
            retries: u32::MAX,
            retry_backoff: Duration::from_millis(50),
            retry_backoff_max: Duration::from_secs(1),
            delivery_timeout: Duration::from_secs(120),
            broker_timeout: Duration::from_secs(30),
            metadata_max_age: METADATA_MAX_AGE_DEFAULT,
        }
    }
}

/// A record to send.
#[derive(Debug, Clone, Default)]
pub struct ProducerRecord {
    /// Topic.
    pub topic: String,
    /// Explicit partition; otherwise chosen by key (consistent hash) or
    /// sticky batches for keyless records.
    pub partition: Option<u32>,
    /// Optional key.
    pub key: Option<Bytes>,
    /// Value (`None` = null).
    pub value: Option<Bytes>,
    /// Headers.
    pub headers: Vec<(String, Bytes)>,
    /// Milliseconds since the epoch; now when `None`.
    pub timestamp_ms: Option<i64>,
}

impl ProducerRecord {
    /// A keyless record.
    pub fn new(topic: impl Into<String>, value: impl Into<Bytes>) -> Self {
        ProducerRecord {
            topic: topic.into(),
            value: Some(value.into()),
            ..Default::default()
        }
    }
    /// Sets the key.
    pub fn with_key(mut self, key: impl Into<Bytes>) -> Self {
        self.key = Some(key.into());
        self
    }
    /// Sets an explicit partition.
    pub fn with_partition(mut self, partition: u32) -> Self {
        self.partition = Some(partition);
        self
    }
    /// Adds a header.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<Bytes>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
}

/// Where a record was stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordMetadata {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: u32,
    /// Offset.
    pub offset: u64,
}

/// The outcome of one sealed batch, shared by the deliveries of its records.
struct BatchOutcome {
    result: OnceLock<Result<u64, ClientError>>,
    wakers: Mutex<Vec<Waker>>,
}

impl BatchOutcome {
    fn new() -> Arc<BatchOutcome> {
        Arc::new(BatchOutcome {
            result: OnceLock::new(),
            wakers: Mutex::new(Vec::new()),
        })
    }

    fn complete(&self, result: Result<u64, ClientError>) {
        let _ = self.result.set(result);
        let wakers = std::mem::take(&mut *self.wakers.lock().expect("wakers lock"));
        for w in wakers {
            w.wake();
        }
    }
}

/// An acknowledgement to come; resolves once the record is durable.
/// Deliveries of one batch share one outcome: no allocation per record.
///
/// # Cancel safety
/// Cancel safe: the record is sent whether or not its `Delivery` is
/// awaited or dropped; dropping it only gives up learning the outcome.
pub struct Delivery {
    state: DeliveryState,
}

enum DeliveryState {
    Done(Option<Result<RecordMetadata, ClientError>>),
    Waiting {
        batch: Arc<BatchOutcome>,
        topic: Arc<str>,
        partition: u32,
        index: u32,
    },
}

impl Delivery {
    fn failed(e: ClientError) -> Delivery {
        Delivery {
            state: DeliveryState::Done(Some(Err(e))),
        }
    }
}

impl Future for Delivery {
    type Output = Result<RecordMetadata, ClientError>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let outcome = match &mut self.state {
            DeliveryState::Done(r) => {
                return Poll::Ready(r.take().unwrap_or(Err(ClientError::Closed)))
            }
            DeliveryState::Waiting {
                batch,
                topic,
                partition,
                index,
            } => {
                let ready = |r: &Result<u64, ClientError>| {
                    r.clone().map(|base| RecordMetadata {
                        topic: topic.to_string(),
                        partition: *partition,
                        offset: base + *index as u64,
                    })
                };
                if let Some(r) = batch.result.get() {
                    Some(ready(r))
                } else {
                    let mut wakers = batch.wakers.lock().expect("wakers lock");
                    // Re-check under the lock: completion takes it to wake.
                    match batch.result.get() {
                        Some(r) => Some(ready(r)),
                        None => {
                            if !wakers.iter().any(|w| w.will_wake(cx.waker())) {
                                wakers.push(cx.waker().clone());
                            }
                            None
                        }
                    }
                }
            }
        };
        match outcome {
            Some(r) => {
                self.state = DeliveryState::Done(None);
                Poll::Ready(r)
            }
            None => Poll::Pending,
        }
    }
}

/// An asynchronous, batching producer. Cloning shares it.
///
/// Records are appended to their partition's open batch by the caller of
/// [`Producer::enqueue`] itself (under a short lock): no task hop and no
/// allocation per record. Sealed batches go to one sender task per partition.
#[derive(Clone)]
pub struct Producer {
    shared: Arc<Shared>,
}

struct Shared {
    client: Client,
    config: ProducerConfig,
    batch_bytes_max: usize,
    state: Mutex<Accumulator>,
    /// One permit per record accepted and not yet acknowledged.
    space: Arc<Semaphore>,
    /// Wakes the linger task when a batch opens.
    linger_wake: Arc<Notify>,
    /// This producer's id for the brokers' de-duplication: random, positive.
    producer_id: i64,
}

#[derive(Default)]
struct Accumulator {
    open: HashMap<(Arc<str>, u32), Open>,
    senders: HashMap<(Arc<str>, u32), mpsc::UnboundedSender<ToSender>>,
    sticky: HashMap<Arc<str>, u32>,
    partition_counts: HashMap<String, (Arc<str>, u32)>,
}

struct Open {
    builder: BatchBuilder,
    outcome: Arc<BatchOutcome>,
    deadline: Instant,
}

/// A sealed batch's bytes: stamped with a producer id and sequence number
/// when the partition's sender first sends it.
enum Body {
    Unstamped(BytesMut),
    Stamped { batch: Bytes, producer_id: i64 },
}

enum ToSender {
    Batch(Sealed),
    Barrier(oneshot::Sender<()>),
}

struct Sealed {
    body: Body,
    outcome: Arc<BatchOutcome>,
    records: u32,
    /// Retried until then at the latest.
    delivery_deadline: Instant,
}

impl Producer {
    /// Starts a producer on `client`.
    pub fn new(client: Client, config: ProducerConfig) -> Producer {
        let linger_wake = Arc::new(Notify::new());
        let shared = Arc::new(Shared {
            batch_bytes_max: config
                .batch_bytes_max
                .clamp(BATCH_HEADER_BYTES + 64, BATCH_BYTES_MAX),
            space: Arc::new(Semaphore::new(config.queue_records_max.max(1))),
            client,
            config,
            state: Mutex::new(Accumulator::default()),
            linger_wake: linger_wake.clone(),
            producer_id: random_producer_id(),
        });
        tokio::spawn(run_linger(Arc::downgrade(&shared), linger_wake));
        tokio::spawn(run_metadata_refresh(Arc::downgrade(&shared)));
        Producer { shared }
    }

    /// Queues a record; waits only if `queue_records_max` records are
    /// already waiting for acknowledgement (or, for the first record of a
    /// topic, for its metadata). Await the returned [`Delivery`] for the
    /// offset. A record the producer can refuse at once (too large, unknown
    /// partition or topic) comes back as a `Delivery` that resolves to the
    /// error.
    ///
    /// # Cancel safety
    /// Cancel safe. Cancelled while it waits (for queue space or for the
    /// topic's metadata), the record was not queued and will not be sent,
    /// and the queue slot it held is free again; a cancelled wait for space
    /// loses its place in line. Once this returns, the record is queued:
    /// there is no await after the record enters its batch.
    pub async fn enqueue(&self, record: ProducerRecord) -> Result<Delivery, ClientError> {
        let sh = &self.shared;
        // The slot stays a `SemaphorePermit` (returned on drop, i.e. on an
        // early return or a cancellation) until the record is in its batch;
        // only then is it handed to the batch's acknowledgement.
        let slot = match sh.space.try_acquire() {
            Ok(p) => p,
            Err(_) => sh.space.acquire().await.map_err(|_| ClientError::Closed)?,
        };
        let known = sh
            .state
            .lock()
            .expect("producer lock")
            .partition_counts
            .get(&record.topic)
            .cloned();
        let (topic, partitions) = match known {
            // An explicit partition past the known count: the topic may
            // have grown since; ask before refusing the record.
            Some((_, n)) if record.partition.is_some_and(|p| p >= n) => {
                match sh.count_covering(&record.topic, record.partition).await {
                    Ok(k) => k,
                    Err(e) => return Ok(Delivery::failed(e)),
                }
            }
            Some(k) => k,
            None => match sh.client.topic(&record.topic).await {
                Ok(t)
                    if record
                        .partition
                        .is_none_or(|p| p < t.partitions.len() as u32) =>
                {
                    sh.learn_count(&record.topic, t.partitions.len() as u32)
                }
                Ok(_) | Err(ClientError::UnknownTopic(_)) => {
                    match sh.count_covering(&record.topic, record.partition).await {
                        Ok(k) => k,
                        Err(e) => return Ok(Delivery::failed(e)),
                    }
                }
                Err(e) => return Ok(Delivery::failed(e)),
            },
        };
        let rec = Record {
            key: record.key,
            value: record.value,
            timestamp_ms: record.timestamp_ms.unwrap_or_else(now_ms),
            headers: record.headers,
        };
        let invalid = |e: ClientError| Ok(Delivery::failed(e));
        if rec.encoded_len() + BATCH_HEADER_BYTES > BATCH_BYTES_MAX {
            return invalid(ClientError::InvalidArgument(format!(
                "record of {} bytes exceeds the batch limit of {BATCH_BYTES_MAX}",
                rec.encoded_len()
            )));
        }
        let mut st = sh.state.lock().expect("producer lock");
        let partition = match (record.partition, &rec.key) {
            (Some(p), _) if p < partitions => p,
            (Some(p), _) => {
                drop(st);
                return invalid(ClientError::Partition {
                    topic: record.topic,
                    partition: p,
                    code: ErrorCode::UnknownTopicOrPartition,
                });
            }
            (None, Some(k)) => partition_for_key(k, partitions),
            (None, None) => {
                // Kept below the partition count: `seal` moves it on only
                // when the sealed batch is the sticky partition's, so an
                // unreduced value (past the last partition) would never
                // match again and keyless records would stay on one
                // partition for good.
                let sticky = st.sticky.entry(topic.clone()).or_insert(0);
                *sticky %= partitions;
                *sticky
            }
        };
        let key = (topic.clone(), partition);
        if let Some(o) = st.open.get(&key) {
            if o.builder.len() + rec.encoded_len() > sh.batch_bytes_max {
                sh.seal(&mut st, &key);
            }
        }
        let opened = !st.open.contains_key(&key);
        let o = st.open.entry(key.clone()).or_insert_with(|| Open {
            builder: BatchBuilder::with_capacity(sh.batch_bytes_max.min(256 * 1024)),
            outcome: BatchOutcome::new(),
            deadline: Instant::now() + sh.config.linger,
        });
        let index = o.builder.record_count();
        o.builder.push(&rec);
        // From here the slot belongs to the batch: its sender returns it
        // when the batch is acknowledged or fails.
        slot.forget();
        let delivery = Delivery {
            state: DeliveryState::Waiting {
                batch: o.outcome.clone(),
                topic,
                partition,
                index,
            },
        };
        if o.builder.len() >= sh.batch_bytes_max {
            sh.seal(&mut st, &key);
        } else if opened {
            sh.linger_wake.notify_one();
        }
        Ok(delivery)
    }

    /// Sends a record and waits until it is acknowledged.
    ///
    /// # Cancel safety
    /// Not cancel safe: cancelled before the record was queued, it is not
    /// sent; cancelled after, it is still sent and stored, but the offset is
    /// lost. Use [`Producer::enqueue`] to tell the two apart.
    pub async fn send(&self, record: ProducerRecord) -> Result<RecordMetadata, ClientError> {
        self.enqueue(record).await?.await
    }

    /// Sends every queued record now and waits until each batch sealed so
    /// far is acknowledged or has failed (the outcome of each record is in
    /// its [`Delivery`]).
    ///
    /// # Cancel safety
    /// Cancel safe: the batches are sealed and sent at the first poll; a
    /// cancelled flush only stops waiting for them.
    pub async fn flush(&self) -> Result<(), ClientError> {
        let barriers = {
            let mut st = self.shared.state.lock().expect("producer lock");
            self.shared.seal_all(&mut st);
            st.senders
                .values()
                .filter_map(|s| {
                    let (tx, rx) = oneshot::channel();
                    s.send(ToSender::Barrier(tx)).ok().map(|_| rx)
                })
                .collect::<Vec<_>>()
        };
        for b in barriers {
            let _ = b.await;
        }
        Ok(())
    }

    /// Flushes and stops this handle. Other clones of the producer keep
    /// working.
    ///
    /// # Cancel safety
    /// Cancel safe, as [`Producer::flush`]: the records are still sent.
    pub async fn close(self) -> Result<(), ClientError> {
        self.flush().await
    }
}

impl Shared {
    /// Seals the open batch of `key` and hands it to the partition's sender.
    fn seal(&self, st: &mut Accumulator, key: &(Arc<str>, u32)) {
        let Some(o) = st.open.remove(key) else { return };
        // Keyless records stick to one partition per batch; move on once sealed.
        if let Some(s) = st.sticky.get_mut(&key.0) {
            if *s == key.1 {
                *s = s.wrapping_add(1);
            }
        }
        let sealed = Sealed {
            records: o.builder.record_count(),
            body: Body::Unstamped(o.builder.finish_unstamped()),
            outcome: o.outcome,
            delivery_deadline: Instant::now() + self.config.delivery_timeout,
        };
        if !st.senders.contains_key(key) {
            // A producer dropped outside any runtime cannot start a sender.
            let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                sealed.outcome.complete(Err(ClientError::Closed));
                self.space.add_permits(sealed.records as usize);
                return;
            };
            let (tx, rx) = mpsc::unbounded_channel();
            runtime.spawn(run_partition_sender(
                self.client.clone(),
                key.0.to_string(),
                key.1,
                self.config.clone(),
                self.space.clone(),
                Stamper::new(self.producer_id),
                rx,
            ));
            st.senders.insert(key.clone(), tx);
        }
        let sender = &st.senders[key];
        if let Err(mpsc::error::SendError(ToSender::Batch(s))) =
            sender.send(ToSender::Batch(sealed))
        {
            s.outcome.complete(Err(ClientError::Closed));
            self.space.add_permits(s.records as usize);
        }
    }

    fn seal_all(&self, st: &mut Accumulator) {
        let keys: Vec<_> = st.open.keys().cloned().collect();
        for key in keys {
            self.seal(st, &key);
        }
    }
}

impl Drop for Shared {
    /// Records enqueued but not flushed are still sent when the last handle goes.
    fn drop(&mut self) {
        if let Ok(mut st) = self.state.lock() {
            let keys: Vec<_> = st.open.keys().cloned().collect();
            for key in keys {
                self.seal(&mut st, &key);
            }
        }
        self.linger_wake.notify_one();
    }
}

/// Seals batches whose linger time has passed. Holds only a weak reference,
/// so dropping the last `Producer` ends it.
impl Shared {
    /// Records a topic's partition count; it only grows (partitions are
    /// never removed; an older answer must not undo a newer one).
    fn learn_count(&self, topic: &str, count: u32) -> (Arc<str>, u32) {
        let mut st = self.state.lock().expect("producer lock");
        let entry = st
            .partition_counts
            .entry(topic.to_owned())
            .or_insert_with(|| (Arc::from(topic), count));
        entry.1 = entry.1.max(count);
        entry.clone()
    }

    /// `topic`'s partition count, asked of the cluster again (every
    /// [`TOPIC_METADATA_RETRY`], for up to [`TOPIC_METADATA_WAIT`]) while
    /// the topic is unknown or has no partition `partition`: a topic just
    /// created or grown through one broker reaches the others' metadata a
    /// moment later (Kafka's producer likewise waits for a topic's
    /// metadata). Past the wait, the last answer (or error) stands.
    async fn count_covering(
        &self,
        topic: &str,
        partition: Option<u32>,
    ) -> Result<(Arc<str>, u32), ClientError> {
        let deadline = tokio::time::Instant::now() + TOPIC_METADATA_WAIT;
        loop {
            let answer = self.refresh_count(topic).await;
            let wait_more = match &answer {
                Ok((_, n)) => *n == 0 || partition.is_some_and(|p| p >= *n),
                // Unknown to the broker asked, so far; any other error
                // (access denied, no broker reachable) is the answer.
                Err(ClientError::UnknownTopic(_)) => true,
                Err(_) => false,
            };
            if !wait_more || tokio::time::Instant::now() >= deadline {
                return answer;
            }
            tokio::time::sleep(TOPIC_METADATA_RETRY).await;
        }
    }

    /// Asks the cluster for `topic`'s partition count now.
    async fn refresh_count(&self, topic: &str) -> Result<(Arc<str>, u32), ClientError> {
        let answer = self
            .client
            .refresh_metadata(Some(vec![topic.to_owned()]))
            .await?;
        match answer.into_iter().next() {
            Some(t) if t.error == ErrorCode::None => {
                Ok(self.learn_count(topic, t.partitions.len() as u32))
            }
            Some(t) if t.error == ErrorCode::AccessDenied => Err(ClientError::Broker {
                code: ErrorCode::AccessDenied,
                message: format!("not allowed to describe topic {topic:?}"),
            }),
            _ => Err(ClientError::UnknownTopic(topic.to_owned())),
        }
    }
}

/// Every `metadata_max_age`, learns the partition counts of the topics
/// this producer writes to, in one metadata request, so keyed records
/// follow a topic's growth. Ends with the producer.
async fn run_metadata_refresh(shared: std::sync::Weak<Shared>) {
    let period = match shared.upgrade() {
        Some(sh) => sh.config.metadata_max_age.max(METADATA_MAX_AGE_MIN),
        None => return,
    };
    loop {
        tokio::time::sleep(period).await;
        let Some(sh) = shared.upgrade() else { return };
        let topics: Vec<String> = sh
            .state
            .lock()
            .expect("producer lock")
            .partition_counts
            .keys()
            .cloned()
            .collect();
        if topics.is_empty() {
            continue;
        }
        match sh.client.refresh_metadata(Some(topics)).await {
            Ok(answer) => {
                for t in answer.iter().filter(|t| t.error == ErrorCode::None) {
                    let known = sh
                        .state
                        .lock()
                        .expect("producer lock")
                        .partition_counts
                        .get(&t.name)
                        .map_or(0, |k| k.1);
                    let count = sh.learn_count(&t.name, t.partitions.len() as u32).1;
                    if count > known {
                        tracing::info!(topic = %t.name, from = known, to = count, "topic grew; routing keys over the new partitions");
                    }
                }
            }
            Err(e) => tracing::debug!(error = %e, "metadata refresh failed; will try again"),
        }
    }
}

async fn run_linger(shared: std::sync::Weak<Shared>, wake: Arc<Notify>) {
    loop {
        let next = {
            let Some(sh) = shared.upgrade() else { return };
            let mut st = sh.state.lock().expect("producer lock");
            let now = Instant::now();
            let due: Vec<_> = st
                .open
                .iter()
                .filter(|(_, o)| o.deadline <= now)
                .map(|(k, _)| k.clone())
                .collect();
            for key in due {
                sh.seal(&mut st, &key);
            }
            st.open.values().map(|o| o.deadline).min()
        };
        match next {
            Some(deadline) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(deadline) => {}
                    _ = wake.notified() => {}
                }
            }
            None => wake.notified().await,
        }
    }
}

type InFlight = Pin<Box<dyn Future<Output = (Sealed, Result<u64, ClientError>)> + Send>>;

/// A partition's producer identity as its brokers see it, and the sequence
/// number of the next batch it sends.
///
/// The brokers store a known producer's batches only in sequence (a batch
/// that overtook an earlier one is refused with `OutOfOrderSequence`), so a
/// batch given up for good leaves a gap that would refuse every later one.
/// The sender then takes a new producer id and numbers from 0 again; a batch
/// stamped under the old id is restamped only once a broker said it was not
/// stored (`OutOfOrderSequence`), so no batch is ever stored twice.
struct Stamper {
    producer_id: i64,
    next_sequence: i32,
    /// Whether a batch of `producer_id` was acknowledged. Until one is, the
    /// brokers do not know this id and would take any sequence as its first,
    /// so batches go one at a time (two in flight could land out of order).
    known: bool,
}

impl Stamper {
    fn new(producer_id: i64) -> Stamper {
        Stamper {
            producer_id,
            next_sequence: 0,
            known: false,
        }
    }

    /// Stamps `s` with this identity's next sequence number, unless it
    /// already carries this identity, or carries an old one and may have
    /// been stored under it (`definitely_not_stored` is false).
    fn stamp(&mut self, s: &mut Sealed, definitely_not_stored: bool) {
        let unstamped = match &mut s.body {
            Body::Unstamped(buf) => std::mem::take(buf),
            Body::Stamped { producer_id, .. } if *producer_id == self.producer_id => return,
            Body::Stamped { .. } if !definitely_not_stored => return,
            Body::Stamped { batch, .. } => BytesMut::from(&batch[..]),
        };
        let sequence = self.next_sequence;
        self.next_sequence = next_sequence(sequence);
        s.body = Body::Stamped {
            batch: stamp_batch(unstamped, self.producer_id, sequence),
            producer_id: self.producer_id,
        };
    }

    /// Starts over under a new producer id after a batch of the current one
    /// was given up (it may have left a gap in the sequence).
    fn renew_after_giving_up(&mut self, s: &Sealed) {
        if matches!(s.body, Body::Stamped { producer_id, .. } if producer_id == self.producer_id) {
            *self = Stamper::new(random_producer_id());
        }
    }

    fn acknowledged(&mut self, s: &Sealed) {
        if matches!(s.body, Body::Stamped { producer_id, .. } if producer_id == self.producer_id) {
            self.known = true;
        }
    }
}

/// Whether a failed produce certainly stored nothing: the broker refused
/// the batch before or instead of appending it.
fn definitely_not_stored(result: &Result<u64, ClientError>) -> bool {
    matches!(
        result,
        Err(ClientError::Partition {
            code: ErrorCode::OutOfOrderSequence,
            ..
        })
    )
}

/// Sends one partition's batches in order, at most
/// `in_flight_per_partition_max` at once. On a retriable failure it stops
/// taking new batches, lets the in-flight ones finish, and resends the failed
/// ones one at a time, in their original order, before continuing.
async fn run_partition_sender(
    client: Client,
    topic: String,
    partition: u32,
    config: ProducerConfig,
    space: Arc<Semaphore>,
    mut stamper: Stamper,
    mut queue: mpsc::UnboundedReceiver<ToSender>,
) {
    let complete = |s: Sealed, result: Result<u64, ClientError>| {
        s.outcome.complete(result);
        space.add_permits(s.records as usize);
    };
    let in_time = |s: &Sealed| Instant::now() < s.delivery_deadline;
    let window_max = config
        .in_flight_per_partition_max
        .clamp(1, IN_FLIGHT_PER_PARTITION_MAX);
    let pacing = RetryPolicy {
        first: config.retry_backoff,
        max: config.retry_backoff_max,
        // `retries` bounds the attempts below.
        attempts_max: None,
    };
    let mut window: FuturesOrdered<InFlight> = FuturesOrdered::new();
    let mut retry: VecDeque<Sealed> = VecDeque::new();
    let mut barriers: Vec<oneshot::Sender<()>> = Vec::new();
    let mut open = true;
    // Set when a send failed or a batch was given up: take no new batch
    // until the window is empty and the failed ones are resent, so that no
    // later batch overtakes them.
    let mut hold = false;
    // Every batch of one window goes to the same broker: a failure seen on
    // one batch must not send the next to another leader before the failed
    // one is retried (that could reorder them).
    let mut leader: Option<Connection> = None;
    loop {
        if window.is_empty() {
            // Failed batches go first, one at a time, in order. Pause after
            // a failure only: once one reached the new leader, the next
            // follows at once.
            let mut pause = true;
            while let Some(mut s) = retry.pop_front() {
                let mut attempt = 0;
                let mut restamp = false;
                let mut pauses = pacing.backoff();
                loop {
                    attempt += 1;
                    stamper.stamp(&mut s, restamp);
                    if pause {
                        pauses.wait().await;
                    }
                    client.invalidate(&topic);
                    leader = None;
                    let (sent, result) =
                        send_batch(&client, &mut leader, &topic, partition, &config, s)
                            .await
                            .await;
                    s = sent;
                    // Refused only because it was stamped under an identity
                    // given up since: restamp and resend at once.
                    restamp = definitely_not_stored(&result)
                        && !matches!(s.body, Body::Stamped { producer_id, .. } if producer_id == stamper.producer_id);
                    pause = result.is_err() && !restamp;
                    match result {
                        Err(e)
                            if (restamp || retriable_for_produce(&e))
                                && attempt < config.retries
                                && in_time(&s) => {}
                        Ok(offset) => {
                            stamper.acknowledged(&s);
                            complete(s, Ok(offset));
                            break;
                        }
                        Err(e) => {
                            stamper.renew_after_giving_up(&s);
                            complete(s, Err(e));
                            break;
                        }
                    }
                }
            }
            hold = false;
            for b in barriers.drain(..) {
                let _ = b.send(());
            }
            if !open {
                return;
            }
        }
        let in_flight_max = if stamper.known { window_max } else { 1 };
        let can_take = open && !hold && retry.is_empty() && window.len() < in_flight_max;
        tokio::select! {
            next = queue.recv(), if can_take => match next {
                None => open = false,
                Some(ToSender::Barrier(b)) => {
                    if window.is_empty() { let _ = b.send(()); } else { barriers.push(b); }
                }
                Some(ToSender::Batch(mut s)) => {
                    stamper.stamp(&mut s, false);
                    window.push_back(
                        send_batch(&client, &mut leader, &topic, partition, &config, s).await,
                    );
                    // No connection to the leader took it: the next batch
                    // would go through a new lookup, perhaps to another
                    // broker, ahead of this one's retry.
                    hold |= leader.is_none();
                }
            },
            Some((s, result)) = window.next(), if !window.is_empty() => {
                match result {
                    Err(e) if retriable_for_produce(&e) && config.retries > 0 && in_time(&s) => {
                        tracing::debug!(%topic, partition, error = %e, "batch failed; will retry in order");
                        client.invalidate(&topic);
                        leader = None;
                        hold = true;
                        retry.push_back(s);
                    }
                    Ok(offset) => {
                        stamper.acknowledged(&s);
                        complete(s, Ok(offset));
                    }
                    Err(e) => {
                        stamper.renew_after_giving_up(&s);
                        hold = true;
                        complete(s, Err(e));
                    }
                }
            }
        }
    }
}

/// Whether a failed batch is sent again: the retriable errors, and an
/// unknown topic or partition — a broker whose copy of the metadata has
/// not yet applied a topic just created or grown answers that (Kafka's
/// producer retries `UNKNOWN_TOPIC_OR_PARTITION` too). Either way the
/// retries and the delivery timeout bound it.
fn retriable_for_produce(e: &ClientError) -> bool {
    e.is_retriable() || e.code() == Some(ErrorCode::UnknownTopicOrPartition)
}

/// Writes the batch to the leader's socket now (so wire order is call
/// order) and returns the future of its acknowledgement.
async fn send_batch(
    client: &Client,
    leader: &mut Option<Connection>,
    topic: &str,
    partition: u32,
    config: &ProducerConfig,
    s: Sealed,
) -> InFlight {
    let request = Request::Produce {
        acks: Acks::All,
        timeout_ms: config.broker_timeout.as_millis().min(u32::MAX as u128) as u32,
        partitions: vec![ProducePartition {
            topic: topic.to_owned(),
            partition,
            batch: match &s.body {
                Body::Stamped { batch, .. } => batch.clone(),
                // Stamped by the caller; never sent without a producer id.
                Body::Unstamped(buf) => buf.clone().freeze(),
            },
        }],
    };
    let conn = match leader.take() {
        Some(c) => Ok(c),
        None => client.leader(topic, partition).await,
    };
    let submitted = match conn {
        Ok(c) => {
            let submitted = c.submit(request).await;
            if submitted.is_ok() {
                *leader = Some(c);
            }
            submitted
        }
        Err(e) => Err(e),
    };
    let wait = client.config().request_timeout + config.broker_timeout;
    let (topic, client) = (topic.to_owned(), client.clone());
    Box::pin(async move {
        let answer = match submitted {
            Err(e) => Err(e),
            Ok(rx) => match tokio::time::timeout(wait, rx).await {
                Err(_) => Err(ClientError::Timeout(wait)),
                Ok(Err(_)) => Err(ClientError::Closed),
                Ok(Ok(r)) => r,
            },
        };
        let result = answer.and_then(|response| match response {
            Response::Produce(results) => match results.first() {
                Some(r) if r.error == ErrorCode::None => Ok(r.base_offset),
                Some(r) => Err(ClientError::Partition {
                    topic: topic.clone(),
                    partition,
                    code: r.error,
                }),
                None => Err(ClientError::Decode("empty produce response".into())),
            },
            _ => Err(ClientError::Decode(
                "produce answered with another type".into(),
            )),
        });
        if matches!(&result, Err(e) if e.is_retriable()) {
            client.invalidate(&topic);
        }
        (s, result)
    })
}

/// A random positive producer id (collisions between producers of one
/// partition are what matters; 63 random bits make them negligible).
fn random_producer_id() -> i64 {
    (crate::client::random_u64() & i64::MAX as u64) as i64
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_protocol::{BatchView, Record};

    fn sealed() -> Sealed {
        let mut b = BatchBuilder::with_capacity(64);
        b.push(&Record {
            value: Some(Bytes::from_static(b"v")),
            ..Default::default()
        });
        Sealed {
            body: Body::Unstamped(b.finish_unstamped()),
            outcome: BatchOutcome::new(),
            records: 1,
            delivery_deadline: Instant::now(),
        }
    }

    fn stamp_of(s: &Sealed) -> (i64, i32) {
        let Body::Stamped { batch, .. } = &s.body else {
            panic!("not stamped")
        };
        let view = BatchView::validate(batch.clone()).expect("a valid batch");
        (view.producer_id(), view.base_sequence())
    }

    #[test]
    fn batches_are_numbered_once_and_renumbered_only_when_surely_not_stored() {
        let mut stamper = Stamper::new(5);
        let (mut a, mut b, mut c) = (sealed(), sealed(), sealed());
        stamper.stamp(&mut a, false);
        stamper.stamp(&mut b, false);
        assert_eq!((stamp_of(&a), stamp_of(&b)), ((5, 0), (5, 1)));
        // A retry keeps its stamp.
        stamper.stamp(&mut a, true);
        assert_eq!(stamp_of(&a), (5, 0));
        assert!(!stamper.known, "one at a time until the id is known");
        stamper.acknowledged(&a);
        assert!(stamper.known);
        // `b` is given up: a gap may follow it, so a new id starts at 0.
        stamper.renew_after_giving_up(&b);
        assert_ne!(stamper.producer_id, 5);
        assert!(!stamper.known);
        let renewed = stamper.producer_id;
        stamper.stamp(&mut c, false);
        assert_eq!(stamp_of(&c), (renewed, 0));
        // A batch of the old id that may have been stored keeps its stamp;
        // one refused as out of order is renumbered under the new id.
        stamper.stamp(&mut b, false);
        assert_eq!(stamp_of(&b), (5, 1));
        stamper.stamp(&mut b, true);
        assert_eq!(stamp_of(&b), (renewed, 1));
        // Giving up an old id's batch does not renew again.
        let mut old = sealed();
        old.body = Body::Stamped {
            batch: BatchBuilder::with_capacity(64).finish(5, 9),
            producer_id: 5,
        };
        stamper.renew_after_giving_up(&old);
        assert_eq!(stamper.producer_id, renewed);
    }
}

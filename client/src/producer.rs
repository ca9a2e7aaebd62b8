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
//! Delivery semantics: at-least-once. A batch whose acknowledgement is lost
//! (connection dropped after the broker wrote it) is retried and may be
//! stored twice; order within a partition is kept because a retry holds back
//! every later batch of that partition.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::stream::FuturesOrdered;
use futures::StreamExt;
use tern_protocol::api::{Acks, ProducePartition};
use tern_protocol::partitioner::partition_for_key;
use tern_protocol::record::{BATCH_BYTES_MAX, BATCH_HEADER_BYTES};
use tern_protocol::{BatchBuilder, ErrorCode, Record, Request, Response};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::client::Client;
use crate::error::ClientError;

/// Producer settings.
#[derive(Debug, Clone)]
pub struct ProducerConfig {
    /// A batch is sent once it reaches this size.
    pub batch_bytes_max: usize,
    /// A non-full batch is sent this long after its first record.
    pub linger: Duration,
    /// Batches of one partition awaiting acknowledgement at once.
    pub in_flight_per_partition_max: usize,
    /// Records accepted but not yet batched before `send` waits.
    pub queue_records_max: usize,
    /// Durability asked of the broker.
    pub acks: Acks,
    /// Attempts after the first for a retriable failure.
    pub retries: u32,
    /// Wait between attempts.
    pub retry_backoff: Duration,
    /// How long the broker may take to make a batch durable.
    pub broker_timeout: Duration,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        ProducerConfig {
            batch_bytes_max: 1024 * 1024,
            linger: Duration::from_millis(5),
            in_flight_per_partition_max: 8,
            queue_records_max: 100_000,
            acks: Acks::All,
            retries: 10,
            retry_backoff: Duration::from_millis(100),
            broker_timeout: Duration::from_secs(30),
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

type Reply = oneshot::Sender<Result<RecordMetadata, ClientError>>;

enum Command {
    Record(ProducerRecord, Reply),
    Flush(oneshot::Sender<()>),
}

/// An acknowledgement to come; resolves once the record is durable.
pub struct Delivery(oneshot::Receiver<Result<RecordMetadata, ClientError>>);

impl Future for Delivery {
    type Output = Result<RecordMetadata, ClientError>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(ClientError::Closed)))
    }
}

/// An asynchronous, batching producer. Cloning shares it.
#[derive(Clone)]
pub struct Producer {
    commands: mpsc::Sender<Command>,
}

impl Producer {
    /// Starts a producer on `client`.
    pub fn new(client: Client, config: ProducerConfig) -> Producer {
        let (tx, rx) = mpsc::channel(config.queue_records_max.max(1));
        tokio::spawn(run_accumulator(client, config, rx));
        Producer { commands: tx }
    }

    /// Queues a record; waits only if the producer's queue is full. Await
    /// the returned [`Delivery`] for the offset.
    pub async fn enqueue(&self, record: ProducerRecord) -> Result<Delivery, ClientError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Record(record, tx))
            .await
            .map_err(|_| ClientError::Closed)?;
        Ok(Delivery(rx))
    }

    /// Sends a record and waits until it is acknowledged.
    pub async fn send(&self, record: ProducerRecord) -> Result<RecordMetadata, ClientError> {
        self.enqueue(record).await?.await
    }

    /// Sends every queued record now and waits for all acknowledgements.
    pub async fn flush(&self) -> Result<(), ClientError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Flush(tx))
            .await
            .map_err(|_| ClientError::Closed)?;
        rx.await.map_err(|_| ClientError::Closed)
    }

    /// Flushes and stops this handle.
    pub async fn close(self) -> Result<(), ClientError> {
        self.flush().await
    }
}

struct Open {
    builder: BatchBuilder,
    replies: Vec<Reply>,
    deadline: Instant,
}

enum ToSender {
    Batch(Sealed),
    Barrier(oneshot::Sender<()>),
}

struct Sealed {
    batch: Bytes,
    replies: Vec<Reply>,
}

async fn run_accumulator(
    client: Client,
    config: ProducerConfig,
    mut commands: mpsc::Receiver<Command>,
) {
    let batch_bytes_max = config
        .batch_bytes_max
        .clamp(BATCH_HEADER_BYTES + 64, BATCH_BYTES_MAX);
    let mut open: HashMap<(String, u32), Open> = HashMap::new();
    let mut senders: HashMap<(String, u32), mpsc::Sender<ToSender>> = HashMap::new();
    let mut sticky: HashMap<String, u32> = HashMap::new();
    // Partition counts by topic: looked up once, not per record.
    let mut partition_counts: HashMap<String, u32> = HashMap::new();
    loop {
        let next_deadline = open.values().map(|o| o.deadline).min();
        let command = tokio::select! {
            c = commands.recv() => c,
            _ = sleep_until_opt(next_deadline) => {
                let now = Instant::now();
                let due: Vec<_> = open.iter().filter(|(_, o)| o.deadline <= now).map(|(k, _)| k.clone()).collect();
                for key in due {
                    seal(&key, &mut open, &mut senders, &mut sticky, &client, &config).await;
                }
                continue;
            }
        };
        match command {
            None => {
                let keys: Vec<_> = open.keys().cloned().collect();
                for key in keys {
                    seal(&key, &mut open, &mut senders, &mut sticky, &client, &config).await;
                }
                return;
            }
            Some(Command::Flush(done)) => {
                let keys: Vec<_> = open.keys().cloned().collect();
                for key in keys {
                    seal(&key, &mut open, &mut senders, &mut sticky, &client, &config).await;
                }
                let mut barriers = Vec::new();
                for s in senders.values() {
                    let (tx, rx) = oneshot::channel();
                    if s.send(ToSender::Barrier(tx)).await.is_ok() {
                        barriers.push(rx);
                    }
                }
                tokio::spawn(async move {
                    for b in barriers {
                        let _ = b.await;
                    }
                    let _ = done.send(());
                });
            }
            Some(Command::Record(record, reply)) => {
                let partitions = match partition_counts.get(&record.topic) {
                    Some(n) => *n,
                    None => match client.topic(&record.topic).await {
                        Ok(t) => {
                            let n = t.partitions.len() as u32;
                            partition_counts.insert(record.topic.clone(), n);
                            n
                        }
                        Err(e) => {
                            let _ = reply.send(Err(e));
                            continue;
                        }
                    },
                };
                let partition = match (record.partition, &record.key) {
                    (Some(p), _) if p < partitions => p,
                    (Some(p), _) => {
                        let _ = reply.send(Err(ClientError::Partition {
                            topic: record.topic.clone(),
                            partition: p,
                            code: ErrorCode::UnknownTopicOrPartition,
                        }));
                        continue;
                    }
                    (None, Some(k)) => partition_for_key(k, partitions),
                    (None, None) => *sticky.entry(record.topic.clone()).or_insert(0) % partitions,
                };
                let rec = Record {
                    key: record.key,
                    value: record.value,
                    timestamp_ms: record.timestamp_ms.unwrap_or_else(now_ms),
                    headers: record.headers,
                };
                if rec.encoded_len() + BATCH_HEADER_BYTES > BATCH_BYTES_MAX {
                    let _ = reply.send(Err(ClientError::InvalidArgument(format!(
                        "record of {} bytes exceeds the batch limit of {BATCH_BYTES_MAX}",
                        rec.encoded_len()
                    ))));
                    continue;
                }
                let key = (record.topic, partition);
                if let Some(o) = open.get(&key) {
                    if o.builder.len() + rec.encoded_len() > batch_bytes_max {
                        seal(&key, &mut open, &mut senders, &mut sticky, &client, &config).await;
                    }
                }
                let o = open.entry(key.clone()).or_insert_with(|| Open {
                    builder: BatchBuilder::with_capacity(batch_bytes_max.min(64 * 1024)),
                    replies: Vec::new(),
                    deadline: Instant::now() + config.linger,
                });
                o.builder.push(&rec);
                o.replies.push(reply);
                if o.builder.len() >= batch_bytes_max {
                    seal(&key, &mut open, &mut senders, &mut sticky, &client, &config).await;
                }
            }
        }
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => futures::future::pending().await,
    }
}

async fn seal(
    key: &(String, u32),
    open: &mut HashMap<(String, u32), Open>,
    senders: &mut HashMap<(String, u32), mpsc::Sender<ToSender>>,
    sticky: &mut HashMap<String, u32>,
    client: &Client,
    config: &ProducerConfig,
) {
    let Some(o) = open.remove(key) else { return };
    // Keyless records stick to one partition per batch; move on once sealed.
    if let Some(s) = sticky.get_mut(&key.0) {
        if *s == key.1 {
            *s = s.wrapping_add(1);
        }
    }
    let sealed = Sealed {
        batch: o.builder.finish(-1, -1),
        replies: o.replies,
    };
    let sender = senders.entry(key.clone()).or_insert_with(|| {
        let (tx, rx) = mpsc::channel(config.in_flight_per_partition_max.max(1) * 2);
        tokio::spawn(run_partition_sender(
            client.clone(),
            key.0.clone(),
            key.1,
            config.clone(),
            rx,
        ));
        tx
    });
    if let Err(mpsc::error::SendError(ToSender::Batch(s))) =
        sender.send(ToSender::Batch(sealed)).await
    {
        for r in s.replies {
            let _ = r.send(Err(ClientError::Closed));
        }
    }
}

type InFlight = Pin<Box<dyn Future<Output = (Sealed, Result<u64, ClientError>)> + Send>>;

/// Sends one partition's batches in order, at most
/// `in_flight_per_partition_max` at once. On a retriable failure it stops
/// taking new batches, lets the in-flight ones finish, and resends the failed
/// ones one at a time, in their original order, before continuing.
async fn run_partition_sender(
    client: Client,
    topic: String,
    partition: u32,
    config: ProducerConfig,
    mut queue: mpsc::Receiver<ToSender>,
) {
    let window_max = config.in_flight_per_partition_max.max(1);
    let mut window: FuturesOrdered<InFlight> = FuturesOrdered::new();
    let mut retry: VecDeque<Sealed> = VecDeque::new();
    let mut barriers: Vec<oneshot::Sender<()>> = Vec::new();
    let mut open = true;
    loop {
        if window.is_empty() {
            // Failed batches go first, one at a time, in order.
            while let Some(sealed) = retry.pop_front() {
                let mut sealed = Some(sealed);
                let mut attempt = 0;
                loop {
                    attempt += 1;
                    tokio::time::sleep(config.retry_backoff).await;
                    client.invalidate(&topic);
                    let s = sealed.take().expect("batch present");
                    let (s, result) = send_batch(&client, &topic, partition, &config, s)
                        .await
                        .await;
                    match result {
                        Err(e) if e.is_retriable() && attempt < config.retries => sealed = Some(s),
                        result => {
                            complete(&topic, partition, s, result);
                            break;
                        }
                    }
                }
            }
            for b in barriers.drain(..) {
                let _ = b.send(());
            }
            if !open {
                return;
            }
        }
        let can_take = open && retry.is_empty() && window.len() < window_max;
        tokio::select! {
            next = queue.recv(), if can_take => match next {
                None => open = false,
                Some(ToSender::Barrier(b)) => {
                    if window.is_empty() { let _ = b.send(()); } else { barriers.push(b); }
                }
                Some(ToSender::Batch(s)) => {
                    window.push_back(send_batch(&client, &topic, partition, &config, s).await);
                }
            },
            Some((s, result)) = window.next(), if !window.is_empty() => {
                match result {
                    Err(e) if e.is_retriable() && config.retries > 0 => {
                        tracing::debug!(%topic, partition, error = %e, "batch failed; will retry in order");
                        retry.push_back(s);
                    }
                    result => complete(&topic, partition, s, result),
                }
            }
        }
    }
}

/// Writes the batch to the leader's socket now (so wire order is call
/// order) and returns the future of its acknowledgement.
async fn send_batch(
    client: &Client,
    topic: &str,
    partition: u32,
    config: &ProducerConfig,
    s: Sealed,
) -> InFlight {
    let request = Request::Produce {
        acks: config.acks,
        timeout_ms: config.broker_timeout.as_millis().min(u32::MAX as u128) as u32,
        partitions: vec![ProducePartition {
            topic: topic.to_owned(),
            partition,
            batch: s.batch.clone(),
        }],
    };
    let submitted = match client.leader(topic, partition).await {
        Ok(conn) => conn.submit(request).await,
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

fn complete(topic: &str, partition: u32, s: Sealed, result: Result<u64, ClientError>) {
    match result {
        Ok(base) => {
            for (i, r) in s.replies.into_iter().enumerate() {
                let _ = r.send(Ok(RecordMetadata {
                    topic: topic.to_owned(),
                    partition,
                    offset: base + i as u64,
                }));
            }
        }
        Err(e) => {
            for r in s.replies {
                let _ = r.send(Err(e.clone()));
            }
        }
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

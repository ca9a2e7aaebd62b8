//! The consumer: reads assigned partitions from their leaders with
//! long-polling fetches, in offset order per partition, and exposes them as
//! a `futures::Stream`.
//!
//! ```no_run
//! # async fn demo() -> Result<(), tern_client::ClientError> {
//! use futures::StreamExt;
//! use tern_client::{Client, Consumer, ConsumerConfig, Offset};
//! let client = Client::connect("127.0.0.1:4650").await?;
//! let mut consumer = Consumer::new(client, ConsumerConfig::default());
//! consumer.assign_all("orders", Offset::Earliest).await?;
//! let mut records = consumer.into_stream();
//! while let Some(record) = records.next().await {
//!     let record = record?;
//!     println!("{}@{}: {:?}", record.partition, record.offset, record.value);
//! }
//! # Ok(()) }
//! ```

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Duration;

use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt};
use tern_protocol::api::{FetchPartition, OffsetSpec};
use tern_protocol::record::split_batches;
use tern_protocol::{ErrorCode, Request, Response};

use crate::client::Client;
use crate::error::ClientError;

/// Where to start reading a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offset {
    /// The oldest stored record.
    Earliest,
    /// Only records produced from now on.
    Latest,
    /// This exact offset.
    At(u64),
    /// The first record at or after this many ms since the epoch.
    Timestamp(i64),
}

/// What to do when the position is no longer stored (retention removed it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffsetReset {
    /// Jump to the oldest stored record.
    Earliest,
    /// Jump to the end.
    Latest,
    /// Return [`ClientError::Partition`] with `OffsetOutOfRange`.
    Fail,
}

/// Consumer settings.
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    /// Longest time a fetch waits at the broker for new data.
    pub max_wait: Duration,
    /// A fetch returns as soon as this many bytes are available.
    pub min_bytes: u32,
    /// Most bytes per fetch response.
    pub max_bytes: u32,
    /// Most bytes per partition per fetch.
    pub partition_max_bytes: u32,
    /// Policy when a position falls out of the log.
    pub offset_reset: OffsetReset,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        ConsumerConfig {
            max_wait: Duration::from_millis(500),
            min_bytes: 1,
            max_bytes: 8 * 1024 * 1024,
            partition_max_bytes: 2 * 1024 * 1024,
            offset_reset: OffsetReset::Earliest,
        }
    }
}

/// A consumed record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerRecord {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: u32,
    /// Offset.
    pub offset: u64,
    /// Milliseconds since the epoch.
    pub timestamp_ms: i64,
    /// Key.
    pub key: Option<Bytes>,
    /// Value.
    pub value: Option<Bytes>,
    /// Headers.
    pub headers: Vec<(String, Bytes)>,
}

/// A consumer of explicitly assigned partitions.
pub struct Consumer {
    client: Client,
    config: ConsumerConfig,
    positions: BTreeMap<(String, u32), u64>,
    buffered: VecDeque<ConsumerRecord>,
}

impl Consumer {
    /// A consumer with no assignment.
    pub fn new(client: Client, config: ConsumerConfig) -> Consumer {
        Consumer {
            client,
            config,
            positions: BTreeMap::new(),
            buffered: VecDeque::new(),
        }
    }

    /// Adds partitions of `topic`, each starting at `start`.
    pub async fn assign(
        &mut self,
        topic: &str,
        partitions: &[u32],
        start: Offset,
    ) -> Result<(), ClientError> {
        let info = self.client.topic(topic).await?;
        for &p in partitions {
            if p as usize >= info.partitions.len() {
                return Err(ClientError::Partition {
                    topic: topic.to_owned(),
                    partition: p,
                    code: ErrorCode::UnknownTopicOrPartition,
                });
            }
            self.seek(topic, p, start).await?;
        }
        Ok(())
    }

    /// Adds every partition of `topic`, each starting at `start`.
    pub async fn assign_all(&mut self, topic: &str, start: Offset) -> Result<(), ClientError> {
        let n = self.client.topic(topic).await?.partitions.len() as u32;
        let all: Vec<u32> = (0..n).collect();
        self.assign(topic, &all, start).await
    }

    /// Moves the position of one partition (assigning it if needed).
    pub async fn seek(
        &mut self,
        topic: &str,
        partition: u32,
        to: Offset,
    ) -> Result<(), ClientError> {
        let offset = match to {
            Offset::At(o) => o,
            Offset::Earliest => {
                self.list_offset(topic, partition, OffsetSpec::Earliest)
                    .await?
            }
            Offset::Latest => {
                self.list_offset(topic, partition, OffsetSpec::Latest)
                    .await?
            }
            Offset::Timestamp(t) => {
                self.list_offset(topic, partition, OffsetSpec::Timestamp(t))
                    .await?
            }
        };
        self.buffered
            .retain(|r| !(r.topic == topic && r.partition == partition));
        self.positions.insert((topic.to_owned(), partition), offset);
        Ok(())
    }

    /// The next offset to be read from a partition.
    pub fn position(&self, topic: &str, partition: u32) -> Option<u64> {
        self.positions.get(&(topic.to_owned(), partition)).copied()
    }

    async fn list_offset(
        &self,
        topic: &str,
        partition: u32,
        spec: OffsetSpec,
    ) -> Result<u64, ClientError> {
        let conn = self.client.leader(topic, partition).await?;
        match conn
            .request(Request::ListOffsets {
                topic: topic.to_owned(),
                partition,
                spec,
            })
            .await?
        {
            Response::ListOffsets { offset } => Ok(offset),
            _ => Err(ClientError::Decode(
                "list offsets answered with another type".into(),
            )),
        }
    }

    /// The next record, waiting for one if none is buffered.
    pub async fn next_record(&mut self) -> Result<ConsumerRecord, ClientError> {
        loop {
            if let Some(r) = self.buffered.pop_front() {
                return Ok(r);
            }
            self.fetch_once().await?;
        }
    }

    /// One round of fetches; returns what arrived (possibly nothing after
    /// `max_wait`).
    pub async fn poll(&mut self) -> Result<Vec<ConsumerRecord>, ClientError> {
        if self.buffered.is_empty() {
            self.fetch_once().await?;
        }
        Ok(self.buffered.drain(..).collect())
    }

    /// Turns the consumer into a stream of records.
    pub fn into_stream(self) -> BoxStream<'static, Result<ConsumerRecord, ClientError>> {
        futures::stream::unfold(self, |mut c| async move {
            let r = c.next_record().await;
            Some((r, c))
        })
        .boxed()
    }

    async fn fetch_once(&mut self) -> Result<(), ClientError> {
        if self.positions.is_empty() {
            return Err(ClientError::InvalidArgument("no partition assigned".into()));
        }
        // Group partitions by leader connection address.
        let mut by_leader: HashMap<String, (crate::Connection, Vec<FetchPartition>)> =
            HashMap::new();
        for ((topic, partition), offset) in &self.positions {
            let conn = self.client.leader(topic, *partition).await?;
            by_leader
                .entry(conn.addr().to_owned())
                .or_insert_with(|| (conn, Vec::new()))
                .1
                .push(FetchPartition {
                    topic: topic.clone(),
                    partition: *partition,
                    offset: *offset,
                    max_bytes: self.config.partition_max_bytes,
                });
        }
        let requests = by_leader.into_values().map(|(conn, partitions)| {
            let request = Request::Fetch {
                max_wait_ms: self.config.max_wait.as_millis().min(u32::MAX as u128) as u32,
                min_bytes: self.config.min_bytes,
                max_bytes: self.config.max_bytes,
                partitions,
            };
            let extra = self.config.max_wait;
            async move { conn.request_with(request, extra).await }
        });
        // Answer with the first broker that has something: waiting for every
        // broker would hold ready records back for the long poll of a broker
        // whose partitions are drained. The other fetches are dropped; their
        // partitions' positions did not move, so nothing is skipped.
        let mut in_flight: futures::stream::FuturesUnordered<_> = requests.collect();
        let mut answers = Vec::new();
        while let Some(answer) = in_flight.next().await {
            let has_news = match &answer {
                Ok(Response::Fetch(results)) => results
                    .iter()
                    .any(|r| !r.records.is_empty() || r.error != ErrorCode::None),
                _ => true,
            };
            answers.push(answer);
            if has_news {
                break;
            }
        }
        for answer in answers {
            let results = match answer {
                Ok(Response::Fetch(results)) => results,
                Ok(_) => {
                    return Err(ClientError::Decode(
                        "fetch answered with another type".into(),
                    ))
                }
                Err(e) => {
                    if e.is_retriable() {
                        for (topic, _) in self.positions.keys() {
                            self.client.invalidate(topic);
                        }
                    }
                    return Err(e);
                }
            };
            for r in results {
                let key = (r.topic.clone(), r.partition);
                let Some(&position) = self.positions.get(&key) else {
                    continue;
                };
                match r.error {
                    ErrorCode::None => {}
                    ErrorCode::OffsetOutOfRange => {
                        let reset = match self.config.offset_reset {
                            OffsetReset::Earliest if position < r.log_start => r.log_start,
                            OffsetReset::Earliest | OffsetReset::Latest => r.high_watermark,
                            OffsetReset::Fail => {
                                return Err(ClientError::Partition {
                                    topic: r.topic,
                                    partition: r.partition,
                                    code: r.error,
                                })
                            }
                        };
                        tracing::warn!(topic = %r.topic, partition = r.partition, position, reset, "offset out of range; resetting");
                        self.positions.insert(key, reset);
                        continue;
                    }
                    code if code.is_retriable() => {
                        self.client.invalidate(&r.topic);
                        continue;
                    }
                    code => {
                        return Err(ClientError::Partition {
                            topic: r.topic,
                            partition: r.partition,
                            code,
                        })
                    }
                }
                let mut next = position;
                for batch in split_batches(r.records) {
                    let batch = batch.map_err(|e| ClientError::CorruptBatch {
                        topic: r.topic.clone(),
                        partition: r.partition,
                        detail: e.to_string(),
                    })?;
                    for record in batch.records() {
                        let record = record.map_err(|e| ClientError::CorruptBatch {
                            topic: r.topic.clone(),
                            partition: r.partition,
                            detail: e.to_string(),
                        })?;
                        if record.offset < next {
                            continue; // the batch started before our position
                        }
                        next = record.offset + 1;
                        self.buffered.push_back(ConsumerRecord {
                            topic: r.topic.clone(),
                            partition: r.partition,
                            offset: record.offset,
                            timestamp_ms: record.timestamp_ms,
                            key: record.key,
                            value: record.value,
                            headers: record.headers,
                        });
                    }
                }
                self.positions.insert(key, next);
            }
        }
        Ok(())
    }
}

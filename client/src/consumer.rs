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
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt};
use tern_protocol::api::{FetchPartition, OffsetSpec};
use tern_protocol::coord::{GroupRequest, GroupResponse};
use tern_protocol::record::split_batches;
use tern_protocol::{ErrorCode, Request, Response};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::client::{random_u64, Client};
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
    /// Policy when a position falls out of the log, and where a group
    /// member starts a partition with no committed offset (`Fail` starts at
    /// the earliest record).
    pub offset_reset: OffsetReset,
    /// Group members: removed from the group after this long without a
    /// heartbeat (heartbeats go every third of it).
    pub session_timeout: Duration,
    /// Group members: commit consumed offsets this often (`None`: only
    /// on [`Consumer::commit`] and [`Consumer::close`]).
    pub auto_commit_interval: Option<Duration>,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        ConsumerConfig {
            max_wait: Duration::from_millis(500),
            min_bytes: 1,
            max_bytes: 8 * 1024 * 1024,
            partition_max_bytes: 2 * 1024 * 1024,
            offset_reset: OffsetReset::Earliest,
            session_timeout: Duration::from_secs(10),
            auto_commit_interval: Some(Duration::from_secs(5)),
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

/// A consumer of explicitly assigned partitions, or of the partitions a
/// consumer group gives it ([`Consumer::subscribe`]).
pub struct Consumer {
    client: Client,
    config: ConsumerConfig,
    positions: BTreeMap<(String, u32), u64>,
    buffered: VecDeque<ConsumerRecord>,
    /// Offset after the last record handed to the application, per
    /// partition: what a commit records (at-least-once).
    consumed: BTreeMap<(String, u32), u64>,
    group: Option<GroupMembership>,
}

impl Consumer {
    /// A consumer with no assignment.
    pub fn new(client: Client, config: ConsumerConfig) -> Consumer {
        Consumer {
            client,
            config,
            positions: BTreeMap::new(),
            buffered: VecDeque::new(),
            consumed: BTreeMap::new(),
            group: None,
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
            self.follow_group().await?;
            if let Some(r) = self.buffered.pop_front() {
                self.consumed
                    .insert((r.topic.clone(), r.partition), r.offset + 1);
                return Ok(r);
            }
            self.fetch_once().await?;
        }
    }

    /// One round of fetches; returns what arrived (possibly nothing after
    /// `max_wait`).
    pub async fn poll(&mut self) -> Result<Vec<ConsumerRecord>, ClientError> {
        self.follow_group().await?;
        if self.buffered.is_empty() {
            self.fetch_once().await?;
        }
        let records: Vec<ConsumerRecord> = self.buffered.drain(..).collect();
        for r in &records {
            self.consumed
                .insert((r.topic.clone(), r.partition), r.offset + 1);
        }
        Ok(records)
    }

    /// Joins consumer group `group` for `topics`: the group's members share
    /// the topics' partitions (the cluster's balancer plugin assigns them),
    /// each partition starting at the group's committed offset. Heartbeats
    /// run in the background; a rebalance takes effect at the next
    /// [`Consumer::poll`] or [`Consumer::next_record`].
    #[tracing::instrument(level = "debug", skip(self))]
    pub async fn subscribe(&mut self, group: &str, topics: &[&str]) -> Result<(), ClientError> {
        if self.group.is_some() {
            return Err(ClientError::InvalidArgument(
                "this consumer is already in a group".into(),
            ));
        }
        let member = random_u64();
        let topics: Vec<String> = topics.iter().map(|t| (*t).to_owned()).collect();
        let session = self.config.session_timeout;
        let first = join(&self.client, group, member, &topics, session).await?;
        let (tx, mut rx) = watch::channel(first);
        rx.mark_changed();
        let heartbeat = tokio::spawn(heartbeat(
            self.client.clone(),
            group.to_owned(),
            member,
            topics,
            session,
            tx,
        ));
        self.positions.clear();
        self.buffered.clear();
        self.consumed.clear();
        self.group = Some(GroupMembership {
            name: group.to_owned(),
            member,
            generation: 0,
            assignment: rx,
            heartbeat,
            last_commit: Instant::now(),
        });
        self.follow_group().await
    }

    /// The group generation this consumer reads in (0 outside a group).
    pub fn generation(&self) -> u64 {
        self.group.as_ref().map_or(0, |g| g.generation)
    }

    /// This consumer's member id in its group.
    pub fn member_id(&self) -> Option<u64> {
        self.group.as_ref().map(|g| g.member)
    }

    /// Partitions this consumer reads now.
    pub fn assignment(&self) -> Vec<(String, u32)> {
        self.positions.keys().cloned().collect()
    }

    /// Commits the offsets of every record handed out so far (group
    /// members only). Refused with `IllegalGeneration` once the group has
    /// rebalanced: the partitions may be someone else's now.
    pub async fn commit(&mut self) -> Result<(), ClientError> {
        let Some(g) = &mut self.group else {
            return Err(ClientError::InvalidArgument(
                "commit needs a group: subscribe first".into(),
            ));
        };
        g.last_commit = Instant::now();
        let offsets: Vec<(String, u32, u64)> = self
            .consumed
            .iter()
            .filter(|(k, _)| self.positions.contains_key(*k))
            .map(|((t, p), o)| (t.clone(), *p, *o))
            .collect();
        if offsets.is_empty() {
            return Ok(());
        }
        let request = Request::Group(GroupRequest::Commit {
            group: g.name.clone(),
            member: g.member,
            generation: g.generation,
            offsets,
        });
        self.client.coordinate_retrying(request).await.map(drop)
    }

    /// Commits (group members), leaves the group so its partitions move at
    /// once, and stops heartbeating. A final commit the group refuses
    /// because it rebalanced meanwhile is not an error (the records will be
    /// delivered again: at-least-once).
    pub async fn close(mut self) -> Result<(), ClientError> {
        if self.group.is_none() {
            return Ok(());
        }
        let committed = self.commit().await;
        let g = self.group.take().expect("checked above");
        g.heartbeat.abort();
        let leave = Request::Group(GroupRequest::Leave {
            group: g.name.clone(),
            member: g.member,
        });
        self.client.coordinate(leave, Duration::ZERO).await?;
        match committed {
            // The group rebalanced since the last poll: the partitions are
            // someone else's, who resumes from the last accepted commit.
            Err(e)
                if matches!(
                    e.code(),
                    Some(ErrorCode::IllegalGeneration | ErrorCode::UnknownMember)
                ) =>
            {
                tracing::info!(error = %e, "final commit refused after a rebalance");
                Ok(())
            }
            other => other,
        }
    }

    /// Applies a new assignment from the heartbeat task, and auto-commits.
    async fn follow_group(&mut self) -> Result<(), ClientError> {
        let Some(g) = &mut self.group else {
            return Ok(());
        };
        let due = self
            .config
            .auto_commit_interval
            .is_some_and(|i| g.last_commit.elapsed() >= i);
        if !g.assignment.has_changed().unwrap_or(false) {
            if due {
                if let Err(e) = self.commit().await {
                    tracing::warn!(error = %e, "auto-commit failed");
                }
            }
            return Ok(());
        }
        // Commit what was consumed under the old generation while it may
        // still be accepted (the group moved on: usually refused, harmless).
        if g.generation != 0 {
            if let Err(e) = self.commit().await {
                tracing::debug!(error = %e, "commit at rebalance refused");
            }
        }
        let g = self.group.as_mut().expect("in a group");
        let view = g.assignment.borrow_and_update().clone();
        g.generation = view.generation;
        tracing::info!(group = %g.name, generation = view.generation, partitions = view.partitions.len(), "group assignment");
        // A partition this member keeps goes on from what it handed out
        // (or from the group's commit, if another member got further in
        // between): no re-delivery for what stays, and commits never go back.
        let kept = std::mem::take(&mut self.consumed);
        self.positions.clear();
        self.buffered.clear();
        let start = match self.config.offset_reset {
            OffsetReset::Latest => Offset::Latest,
            OffsetReset::Earliest | OffsetReset::Fail => Offset::Earliest,
        };
        let mut keeps_any = false;
        for (topic, partition, committed) in view.partitions {
            let key = (topic.clone(), partition);
            let committed = (committed != u64::MAX).then_some(committed);
            let from = match (kept.get(&key).copied(), committed) {
                (Some(mine), c) => {
                    keeps_any = true;
                    Offset::At(mine.max(c.unwrap_or(0)))
                }
                (None, Some(c)) => Offset::At(c),
                (None, None) => start,
            };
            self.seek(&topic, partition, from).await?;
            let at = self.positions[&key];
            self.consumed.insert(key, at);
        }
        if keeps_any {
            if let Err(e) = self.commit().await {
                tracing::debug!(error = %e, "commit after rebalance failed");
            }
        }
        Ok(())
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
            if let Some(g) = &mut self.group {
                // A member with no partitions waits for a rebalance.
                let _ = tokio::time::timeout(self.config.max_wait, g.assignment.changed()).await;
                return Ok(());
            }
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

/// A member's view of its group, as the heartbeat task last saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct GroupView {
    generation: u64,
    /// `(topic, partition, committed offset or u64::MAX)`.
    partitions: Vec<(String, u32, u64)>,
}

struct GroupMembership {
    name: String,
    member: u64,
    /// Generation the consumer reads in now.
    generation: u64,
    assignment: watch::Receiver<GroupView>,
    heartbeat: JoinHandle<()>,
    last_commit: Instant,
}

impl Drop for GroupMembership {
    fn drop(&mut self) {
        // Without `close`, the member's session simply runs out.
        self.heartbeat.abort();
    }
}

fn member_view(answer: Response) -> Result<GroupView, ClientError> {
    match answer {
        Response::Group(GroupResponse::Member {
            generation,
            assignment,
        }) => Ok(GroupView {
            generation,
            partitions: assignment,
        }),
        other => Err(ClientError::Decode(format!(
            "group request answered with {other:?}"
        ))),
    }
}

async fn join(
    client: &Client,
    group: &str,
    member: u64,
    topics: &[String],
    session: Duration,
) -> Result<GroupView, ClientError> {
    let request = Request::Group(GroupRequest::Join {
        group: group.to_owned(),
        member,
        topics: topics.to_vec(),
        session_timeout_ms: session.as_millis() as u64,
    });
    let deadline = Instant::now() + session.max(Duration::from_secs(10));
    loop {
        match client.coordinate(request.clone(), Duration::ZERO).await {
            Ok(answer) => return member_view(answer),
            Err(e) if e.is_retriable() && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Heartbeats every third of the session; the broker holds each answer
/// until the group's generation changes, so a rebalance is seen at once.
/// A member the group forgot (its session ran out) joins again.
async fn heartbeat(
    client: Client,
    group: String,
    member: u64,
    topics: Vec<String>,
    session: Duration,
    view: watch::Sender<GroupView>,
) {
    let hold = session / 3;
    loop {
        let generation = view.borrow().generation;
        let request = Request::Group(GroupRequest::Heartbeat {
            group: group.clone(),
            member,
            generation,
            wait_ms: hold.as_millis() as u64,
        });
        match client.coordinate(request, hold).await.and_then(member_view) {
            Ok(v) => {
                view.send_if_modified(|current| {
                    let changed = v.generation != current.generation;
                    if changed {
                        *current = v;
                    }
                    changed
                });
            }
            Err(e) if e.code() == Some(ErrorCode::UnknownMember) => {
                tracing::warn!(%group, member, "the group forgot this member; joining again");
                if let Ok(v) = join(&client, &group, member, &topics, session).await {
                    view.send_replace(v);
                }
            }
            Err(e) => {
                tracing::debug!(%group, error = %e, "heartbeat failed; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

//! The consumer: reads assigned partitions from their leaders with
//! long-polling fetches, in offset order per partition, as a
//! `futures::Stream` borrowed from the consumer ([`Consumer::stream`]), so
//! that it can still commit, seek and close.
//!
//! ```no_run
//! # async fn demo() -> Result<(), tern_client::ClientError> {
//! use futures::StreamExt;
//! use tern_client::{Client, Consumer, ConsumerConfig, Offset};
//! let client = Client::connect("127.0.0.1:4650").await?;
//! let mut consumer = Consumer::new(
//!     client,
//!     ConsumerConfig { auto_commit_interval: None, ..Default::default() },
//! );
//! consumer.subscribe("billing", &["orders"]).await?;
//! let mut handled = 0;
//! while handled < 1000 {
//!     let mut records = consumer.stream().take(100);
//!     while let Some(record) = records.next().await {
//!         let record = record?;
//!         println!("{}@{}: {:?}", record.partition, record.offset, record.value);
//!         handled += 1;
//!     }
//!     drop(records); // the stream borrows the consumer: give it back
//!     consumer.commit().await?; // what was handed out so far
//! }
//! consumer.close().await?; // commits, and the group rebalances at once
//! # Ok(()) }
//! ```
//!
//! # Groups
//!
//! A consumer that [subscribes](Consumer::subscribe) to a group reads the
//! partitions the group assigns it. A [`RebalanceListener`] learns when they
//! change. Positions are at-least-once: a commit records the offset after
//! the last record handed out, and a partition that moves to another member
//! resumes there. Closing a member — or just dropping it, which sends the
//! commit and the leave in the background — lets the group rebalance at
//! once instead of waiting out the member's session.
//!
//! # Cancel safety
//!
//! Every async method of [`Consumer`] is cancel safe in the sense that
//! matters for a consumer: no record is lost or skipped. A record leaves the
//! consumer only when a call returns it, and positions move only together
//! with the records fetched, without an await in between; a rebalance is
//! applied whole or not at all (a cancelled one is redone by the next
//! call). What a cancelled call cannot undo is a request already sent (a
//! commit may or may not be recorded); each method says so.

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

use crate::client::{random_secret, random_u64, Client};
use crate::error::ClientError;
use crate::retry::RetryPolicy;

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

/// Told when a group member's partitions change (see
/// [`Consumer::set_rebalance_listener`]). Both methods are called from the
/// consumer's own [`poll`](Consumer::poll) /
/// [`next_record`](Consumer::next_record) (so from the task that drives the
/// consumer, never concurrently with it), and must not block for long:
/// the group waits for no one, but this member reads nothing meanwhile.
pub trait RebalanceListener: Send {
    /// The member no longer owns `partitions` (a rebalance gave them to
    /// another member, or the consumer is closing). Called before any
    /// position moves and before a record of the new assignment is handed
    /// out. Records of these partitions still buffered are dropped; the
    /// group has already moved to a new generation, so a commit for them is
    /// refused and their new owner resumes from the last accepted commit.
    fn on_revoked(&mut self, partitions: &[(String, u32)]) {
        let _ = partitions;
    }

    /// The member now owns `partitions` in addition to those it kept
    /// ([`Consumer::assignment`] lists them all). Called once their
    /// positions are set (from the group's commit, or
    /// [`ConsumerConfig::offset_reset`]) and before any of their records is
    /// handed out.
    fn on_assigned(&mut self, partitions: &[(String, u32)]) {
        let _ = partitions;
    }
}

/// A consumer of explicitly assigned partitions, or of the partitions a
/// consumer group gives it ([`Consumer::subscribe`]).
///
/// Dropping a group member without [`Consumer::close`] still leaves the
/// group promptly: the drop sends (when auto-commit is on) a commit of
/// what was handed out, then the leave, from a background task of the
/// current Tokio runtime. Outside a runtime the member's session runs out.
pub struct Consumer {
    client: Client,
    config: ConsumerConfig,
    positions: BTreeMap<(String, u32), u64>,
    buffered: VecDeque<ConsumerRecord>,
    /// Offset after the last record handed to the application, per
    /// partition: what a commit records (at-least-once).
    consumed: BTreeMap<(String, u32), u64>,
    /// After a seek by timestamp: records before the first one at or after
    /// this time are skipped (the broker finds the batch, not the record).
    time_floor: HashMap<(String, u32), i64>,
    group: Option<GroupMembership>,
    /// In a mutex only so that `Consumer` stays `Sync` without asking it of
    /// listeners; called through `get_mut`, never locked.
    listener: Option<std::sync::Mutex<Box<dyn RebalanceListener>>>,
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
            time_floor: HashMap::new(),
            group: None,
            listener: None,
        }
    }

    /// Calls `listener` whenever the group changes this member's
    /// partitions, the first assignment included: set it before
    /// [`Consumer::subscribe`]. Replaces an earlier listener.
    pub fn set_rebalance_listener(&mut self, listener: impl RebalanceListener + 'static) {
        self.listener = Some(std::sync::Mutex::new(Box::new(listener)));
    }

    fn listener(&mut self) -> Option<&mut Box<dyn RebalanceListener>> {
        // A listener that panicked is still called: its state is its own.
        self.listener
            .as_mut()
            .map(|l| l.get_mut().unwrap_or_else(|e| e.into_inner()))
    }

    /// Adds partitions of `topic`, each starting at `start`.
    ///
    /// # Cancel safety
    /// Cancel safe: the partitions are added together once every start
    /// offset is known, or not at all.
    pub async fn assign(
        &mut self,
        topic: &str,
        partitions: &[u32],
        start: Offset,
    ) -> Result<(), ClientError> {
        let info = self.client.topic(topic).await?;
        let mut starts = Vec::with_capacity(partitions.len());
        for &p in partitions {
            if p as usize >= info.partitions.len() {
                return Err(ClientError::Partition {
                    topic: topic.to_owned(),
                    partition: p,
                    code: ErrorCode::UnknownTopicOrPartition,
                });
            }
            starts.push((p, self.resolve(topic, p, start).await?));
        }
        for (p, offset) in starts {
            self.set_position(topic, p, offset, start);
        }
        Ok(())
    }

    /// Adds every partition of `topic`, each starting at `start`.
    ///
    /// # Cancel safety
    /// Cancel safe, as [`Consumer::assign`].
    pub async fn assign_all(&mut self, topic: &str, start: Offset) -> Result<(), ClientError> {
        let n = self.client.topic(topic).await?.partitions.len() as u32;
        let all: Vec<u32> = (0..n).collect();
        self.assign(topic, &all, start).await
    }

    /// Moves the position of one partition (assigning it if needed); the
    /// next record of that partition handed out is the one at the new
    /// position. A group member should seek only partitions it owns
    /// ([`Consumer::assignment`]).
    ///
    /// # Cancel safety
    /// Cancel safe: the position changes only once the offset is known.
    pub async fn seek(
        &mut self,
        topic: &str,
        partition: u32,
        to: Offset,
    ) -> Result<(), ClientError> {
        let offset = self.resolve(topic, partition, to).await?;
        self.set_position(topic, partition, offset, to);
        Ok(())
    }

    /// The offset `to` stands for in one partition, looked up if needed.
    async fn resolve(&self, topic: &str, partition: u32, to: Offset) -> Result<u64, ClientError> {
        Ok(match to {
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
        })
    }

    fn set_position(&mut self, topic: &str, partition: u32, offset: u64, to: Offset) {
        self.buffered
            .retain(|r| !(r.topic == topic && r.partition == partition));
        let key = (topic.to_owned(), partition);
        match to {
            Offset::Timestamp(t) => self.time_floor.insert(key.clone(), t),
            _ => self.time_floor.remove(&key),
        };
        self.positions.insert(key, offset);
    }

    /// The offset of the next record of a partition this consumer will
    /// hand out (`None`: not assigned). Records fetched but not yet handed
    /// out do not count: after `n` records from offset `o`, it is `o + n`.
    /// After a seek by timestamp and before the first fetch, it is the start
    /// of the batch holding that time (the records before the time are
    /// skipped when fetched).
    pub fn position(&self, topic: &str, partition: u32) -> Option<u64> {
        let fetch_from = self
            .positions
            .get(&(topic.to_owned(), partition))
            .copied()?;
        Some(
            self.buffered
                .iter()
                .find(|r| r.partition == partition && r.topic == topic)
                .map_or(fetch_from, |r| r.offset),
        )
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
    ///
    /// # Cancel safety
    /// Cancel safe: a record is handed out only by a call that returns it,
    /// so a cancelled call loses nothing (its fetch is repeated). It may
    /// have sent an auto-commit or applied a rebalance.
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
    ///
    /// # Cancel safety
    /// Cancel safe, as [`Consumer::next_record`].
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
    /// [`Consumer::poll`] or [`Consumer::next_record`] (calling the
    /// [`RebalanceListener`]).
    ///
    /// # Cancel safety
    /// Cancel safe: cancelled before the group answered the join, the
    /// member leaves again in the background; cancelled after, the consumer
    /// is in the group and its next poll takes up the assignment.
    #[tracing::instrument(level = "debug", skip(self))]
    pub async fn subscribe(&mut self, group: &str, topics: &[&str]) -> Result<(), ClientError> {
        if self.group.is_some() {
            return Err(ClientError::InvalidArgument(
                "this consumer is already in a group".into(),
            ));
        }
        // The member id is public (`tern group describe`); the secret
        // proves the membership is this consumer's.
        let member = (random_u64(), random_secret());
        let topics: Vec<String> = topics.iter().map(|t| (*t).to_owned()).collect();
        let session = self.config.session_timeout;
        let mut pending = LeaveOnDrop {
            client: Some(self.client.clone()),
            group: group.to_owned(),
            member,
        };
        let first = join(&self.client, group, member, &topics, session).await;
        // Joined (or refused): from here the membership, if any, leaves
        // when dropped.
        pending.client = None;
        let first = first?;
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
            client: self.client.clone(),
            name: group.to_owned(),
            member: member.0,
            secret: member.1,
            generation: 0,
            assignment: rx,
            heartbeat,
            last_commit: Instant::now(),
            left: false,
        });
        self.follow_group().await
    }

    /// The group generation this consumer reads in (0 outside a group).
    pub fn generation(&self) -> u64 {
        self.group.as_ref().map_or(0, |g| g.generation)
    }

    /// This consumer's member id in its group.
    pub fn member_id(&self) -> Option<u64> {
        // Only the id: the secret never leaves the consumer.
        self.group.as_ref().map(|g| g.member)
    }

    /// Partitions this consumer reads now.
    pub fn assignment(&self) -> Vec<(String, u32)> {
        self.positions.keys().cloned().collect()
    }

    /// Commits the offsets of every record handed out so far (group
    /// members only). Refused with `IllegalGeneration` once the group has
    /// rebalanced: the partitions may be someone else's now.
    ///
    /// # Cancel safety
    /// Cancel safe locally (nothing in the consumer changes); the commit
    /// may or may not have been recorded.
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
            secret: g.secret,
            generation: g.generation,
            offsets,
        });
        self.client.coordinate_retrying(request).await.map(drop)
    }

    /// Commits exactly these positions, `(topic, partition, offset)`, where
    /// `offset` is the next offset to read (the one after the last record
    /// processed), for partitions this member owns. For applications that
    /// commit what they have processed rather than what was handed out:
    /// turn auto-commit off (`auto_commit_interval: None`), or it commits
    /// the handed-out positions on its next tick. Refused whole, with
    /// `IllegalGeneration`, after a rebalance (like [`Consumer::commit`]) or
    /// if any partition is not this member's.
    ///
    /// # Cancel safety
    /// Cancel safe locally (nothing in the consumer changes); the commit
    /// may or may not have been recorded.
    pub async fn commit_offsets(&self, offsets: &[(&str, u32, u64)]) -> Result<(), ClientError> {
        let Some(g) = &self.group else {
            return Err(ClientError::InvalidArgument(
                "commit needs a group: subscribe first".into(),
            ));
        };
        if offsets.is_empty() {
            return Ok(());
        }
        let request = Request::Group(GroupRequest::Commit {
            group: g.name.clone(),
            member: g.member,
            secret: g.secret,
            generation: g.generation,
            offsets: offsets
                .iter()
                .map(|(t, p, o)| ((*t).to_owned(), *p, *o))
                .collect(),
        });
        self.client.coordinate_retrying(request).await.map(drop)
    }

    /// Commits (group members), tells the [`RebalanceListener`] that every
    /// partition is revoked, leaves the group so its partitions move at
    /// once, and stops heartbeating. A final commit the group refuses
    /// because it rebalanced meanwhile is not an error (the records will be
    /// delivered again: at-least-once).
    ///
    /// # Cancel safety
    /// Cancel safe: whatever a cancelled `close` has not done yet (the
    /// commit, the leave) is sent in the background, as when a consumer is
    /// dropped.
    pub async fn close(mut self) -> Result<(), ClientError> {
        if self.group.is_none() {
            return Ok(());
        }
        let committed = self.commit().await;
        let mut g = self.group.take().expect("checked above");
        g.heartbeat.abort();
        let owned: Vec<(String, u32)> = std::mem::take(&mut self.positions).into_keys().collect();
        if let Some(listener) = self.listener() {
            if !owned.is_empty() {
                listener.on_revoked(&owned);
            }
        }
        let leave = Request::Group(GroupRequest::Leave {
            group: g.name.clone(),
            member: g.member,
            secret: g.secret,
        });
        let left = self.client.coordinate_retrying(leave).await;
        // Sent (or failed for good): `g`'s drop need not send it again.
        g.left = true;
        left?;
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
    ///
    /// Cancel safe: the new positions are computed first (the awaits), then
    /// applied with the listener calls in one step; the assignment is
    /// marked seen only then, so a cancelled rebalance is redone.
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
        let g = self.group.as_ref().expect("in a group");
        let view = g.assignment.borrow().clone();
        tracing::info!(group = %g.name, generation = view.generation, partitions = view.partitions.len(), "group assignment");
        // A partition this member keeps goes on from what it handed out
        // (or from the group's commit, if another member got further in
        // between): no re-delivery for what stays, and commits never go back.
        let start = match self.config.offset_reset {
            OffsetReset::Latest => Offset::Latest,
            OffsetReset::Earliest | OffsetReset::Fail => Offset::Earliest,
        };
        let mut next: BTreeMap<(String, u32), u64> = BTreeMap::new();
        let mut keeps_any = false;
        for (topic, partition, committed) in &view.partitions {
            let key = (topic.clone(), *partition);
            let committed = (*committed != u64::MAX).then_some(*committed);
            let from = match (self.consumed.get(&key).copied(), committed) {
                (Some(mine), c) => {
                    keeps_any = true;
                    Offset::At(mine.max(c.unwrap_or(0)))
                }
                (None, Some(c)) => Offset::At(c),
                (None, None) => start,
            };
            let at = self.resolve(topic, *partition, from).await?;
            next.insert(key, at);
        }
        // No await from here until the new assignment is in place.
        let revoked: Vec<(String, u32)> = self
            .positions
            .keys()
            .filter(|k| !next.contains_key(*k))
            .cloned()
            .collect();
        let assigned: Vec<(String, u32)> = next
            .keys()
            .filter(|k| !self.positions.contains_key(*k))
            .cloned()
            .collect();
        if let Some(listener) = self.listener() {
            if !revoked.is_empty() {
                listener.on_revoked(&revoked);
            }
        }
        self.buffered.clear();
        self.time_floor.clear();
        self.consumed = next.clone();
        self.positions = next;
        let g = self.group.as_mut().expect("in a group");
        g.generation = view.generation;
        if g.assignment.borrow_and_update().generation != view.generation {
            // Yet another rebalance arrived meanwhile: apply it next time.
            g.assignment.mark_changed();
        }
        if let Some(listener) = self.listener() {
            if !assigned.is_empty() {
                listener.on_assigned(&assigned);
            }
        }
        if keeps_any {
            if let Err(e) = self.commit().await {
                tracing::debug!(error = %e, "commit after rebalance failed");
            }
        }
        Ok(())
    }

    /// The consumer's records as a stream, borrowing the consumer: drop the
    /// stream (or stop polling it) to [`commit`](Consumer::commit),
    /// [`seek`](Consumer::seek) or [`close`](Consumer::close), then take a
    /// new one. Each item is [`Consumer::next_record`]; an error does not
    /// end the stream (a retriable one may clear up on the next item).
    ///
    /// # Cancel safety
    /// Dropping the stream between items, or while it waits for one, loses
    /// no record: the next stream (or call) starts where it left off.
    pub fn stream(&mut self) -> BoxStream<'_, Result<ConsumerRecord, ClientError>> {
        // Boxed so that it is `Unpin`: `.next()` works without pinning.
        futures::stream::unfold(self, |c| async move {
            let r = c.next_record().await;
            Some((r, c))
        })
        .boxed()
    }

    /// Turns the consumer into a stream of records that owns it. Without
    /// access to the consumer there is no explicit commit, seek or close:
    /// prefer [`Consumer::stream`]. Dropping the stream drops the consumer
    /// (a group member then commits, if auto-commit is on, and leaves in
    /// the background).
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
                let news = tokio::time::timeout(self.config.max_wait, g.assignment.changed()).await;
                if let Ok(Ok(())) = news {
                    // `changed` marked the new view seen: mark it unseen
                    // again, or `follow_group` would never apply it.
                    g.assignment.mark_changed();
                }
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
                let mut floor = self.time_floor.get(&key).copied();
                for batch in split_batches(r.records) {
                    let batch = batch.map_err(|source| ClientError::CorruptBatch {
                        topic: r.topic.clone(),
                        partition: r.partition,
                        source,
                    })?;
                    for record in batch.records() {
                        let record = record.map_err(|source| ClientError::CorruptBatch {
                            topic: r.topic.clone(),
                            partition: r.partition,
                            source,
                        })?;
                        if record.offset < next {
                            continue; // the batch started before our position
                        }
                        next = record.offset + 1;
                        match floor {
                            Some(t) if record.timestamp_ms < t => continue,
                            Some(_) => floor = None,
                            None => {}
                        }
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
                if floor.is_none() {
                    self.time_floor.remove(&key);
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
    client: Client,
    name: String,
    member: u64,
    /// Proves the membership is this consumer's (never shown).
    secret: u128,
    /// Generation the consumer reads in now.
    generation: u64,
    assignment: watch::Receiver<GroupView>,
    heartbeat: JoinHandle<()>,
    last_commit: Instant,
    /// The leave was sent (by `close`).
    left: bool,
}

impl Drop for GroupMembership {
    /// Leaves the group in the background unless `close` did: waiting out
    /// the session would leave this member's partitions unread that long.
    fn drop(&mut self) {
        self.heartbeat.abort();
        if !self.left {
            leave_in_background(
                self.client.clone(),
                self.name.clone(),
                (self.member, self.secret),
            );
        }
    }
}

impl Drop for Consumer {
    /// A group member dropped without `close` commits what it handed out
    /// (when auto-commit is on, as `close` would) and then leaves, from a
    /// background task; the leave must follow the commit, which the group
    /// refuses from a member that left.
    fn drop(&mut self) {
        let Some(g) = self.group.take() else { return };
        let offsets: Vec<(String, u32, u64)> = self
            .consumed
            .iter()
            .filter(|(k, _)| self.positions.contains_key(*k))
            .map(|((t, p), o)| (t.clone(), *p, *o))
            .collect();
        if self.config.auto_commit_interval.is_none() || offsets.is_empty() {
            return; // dropping `g` leaves
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let commit = Request::Group(GroupRequest::Commit {
            group: g.name.clone(),
            member: g.member,
            secret: g.secret,
            generation: g.generation,
            offsets,
        });
        runtime.spawn(async move {
            if let Err(e) = g.client.coordinate_retrying(commit).await {
                tracing::debug!(group = %g.name, error = %e, "commit on drop refused");
            }
            drop(g); // leaves
        });
    }
}

/// Sends a `Leave` from a task of the current runtime, if there is one.
fn leave_in_background(client: Client, group: String, (member, secret): (u64, u128)) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    runtime.spawn(async move {
        let leave = Request::Group(GroupRequest::Leave {
            group,
            member,
            secret,
        });
        if let Err(e) = client.coordinate_retrying(leave).await {
            tracing::debug!(error = %e, "leave on drop failed; the session will run out");
        }
    });
}

/// Leaves the group in the background if a join is dropped before its
/// answer was seen (the join may have been recorded), unless disarmed.
struct LeaveOnDrop {
    client: Option<Client>,
    group: String,
    member: (u64, u128),
}

impl Drop for LeaveOnDrop {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            leave_in_background(client, std::mem::take(&mut self.group), self.member);
        }
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
    (member, secret): (u64, u128),
    topics: &[String],
    session: Duration,
) -> Result<GroupView, ClientError> {
    let request = Request::Group(GroupRequest::Join {
        group: group.to_owned(),
        member,
        secret,
        topics: topics.to_vec(),
        session_timeout_ms: session.as_millis() as u64,
    });
    let deadline = Instant::now() + session.max(Duration::from_secs(10));
    let mut pauses = RetryPolicy::BACKGROUND.backoff();
    loop {
        match client.coordinate(request.clone(), Duration::ZERO).await {
            Ok(answer) => return member_view(answer),
            Err(e) if e.is_retriable() && Instant::now() < deadline => {
                let left = deadline.saturating_duration_since(Instant::now());
                let pause = pauses.next_pause().unwrap_or(left).min(left);
                tokio::time::sleep(pause).await;
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
    member: (u64, u128),
    topics: Vec<String>,
    session: Duration,
    view: watch::Sender<GroupView>,
) {
    let hold = session / 3;
    let mut pauses = RetryPolicy::BACKGROUND.capped(hold).backoff();
    loop {
        let generation = view.borrow().generation;
        let request = Request::Group(GroupRequest::Heartbeat {
            group: group.clone(),
            member: member.0,
            secret: member.1,
            generation,
            wait_ms: hold.as_millis() as u64,
        });
        match client.coordinate(request, hold).await.and_then(member_view) {
            Ok(v) => {
                pauses = RetryPolicy::BACKGROUND.capped(hold).backoff();
                view.send_if_modified(|current| {
                    let changed = v.generation != current.generation;
                    if changed {
                        *current = v;
                    }
                    changed
                });
            }
            Err(e) if e.code() == Some(ErrorCode::UnknownMember) => {
                tracing::warn!(%group, member = member.0, "the group forgot this member; joining again");
                if let Ok(v) = join(&client, &group, member, &topics, session).await {
                    view.send_replace(v);
                }
            }
            Err(e) => {
                tracing::debug!(%group, error = %e, "heartbeat failed; retrying");
                pauses.wait().await;
            }
        }
    }
}

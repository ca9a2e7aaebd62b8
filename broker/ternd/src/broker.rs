//! The broker's request handling, independent of sockets: the topics this
//! node hosts (following the replicated catalogue), and the logic of every
//! request type.
//!
//! Produce is split in two so the connection can keep per-partition order
//! while pipelining: [`Broker::enqueue_produce`] validates the batches and
//! hands them to their partitions' Raft groups *in the order the requests
//! arrived*; [`finish_produce`] then waits for the commits.
//!
//! **Invariant:** a produce is acknowledged only after its batch is
//! committed by the partition's Raft group — stored by a majority of its
//! replicas per their durability setting — and applied, which is where its
//! offset is assigned. Fetches return only applied (committed) batches.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use openraft::error::ClientWriteError;
use openraft::raft::ClientWriteResponse;
use tern_protocol::acl::{AclRequest, AclResponse, ACL_LIST_PAGE_MAX};
use tern_protocol::api::{
    BrokerInfo, FetchPartition, FetchResult, OffsetSpec, PartitionInfo, ProducePartition,
    ProduceResult, TopicConfig, TopicInfo, FETCH_PARTITIONS_MAX, RETENTION_BROKER_DEFAULT,
};
use tern_protocol::record::BATCH_BYTES_MAX;
use tern_protocol::{BatchView, ErrorCode, Request, Response};
use tern_raft::{
    place_replicas_in_racks, placement_seed, Catalogue, ClusterChange, Command, CommandResponse,
    NodeId, Raft, RaftNode, TernRaft, TopicEntry, TopicSettings, WriteError,
};
use tern_storage::{PartitionLog, StorageError, Store};
use tokio::sync::{oneshot, watch};
use tracing::{info, warn, Instrument};

use crate::config::Config;
use crate::metrics::{Metrics, PARTITION_SERIES_MAX};
use crate::plugins::Plugins;
use crate::read_cache::ReadCache;
use crate::session::Session;

mod authz;
mod coordination;
mod kafka_groups;
mod leader_balance;
mod rebalance;

pub(crate) use rebalance::run_rebalances;
pub use rebalance::{MOVE_ATTEMPT_TIMEOUT, REBALANCE_CONCURRENT_MOVES_DEFAULT};

pub use kafka_groups::{
    KafkaGroupDescription, KafkaGroupError, KafkaJoinRequest, KafkaJoined, KafkaMemberDescription,
    KAFKA_JOIN_WAIT_MS_MAX, KAFKA_REBALANCE_MS_MAX, KAFKA_SESSION_MS_RANGE, KAFKA_SYNC_WAIT_MS_MAX,
};
pub use leader_balance::{
    BalanceReport, BALANCE_REQUEST_WINDOW, ELECTIONS_PER_SECOND_MAX, ELECTION_RETRY_MIN,
    LEADER_BALANCE_INTERVAL, PREFERRED_HOLD, PREFERRED_LAG_ENTRIES_MAX,
};

/// Most partitions one topic may have.
pub const PARTITIONS_PER_TOPIC_MAX: u32 = 10_000;
/// Longest topic name.
pub const TOPIC_NAME_BYTES_MAX: usize = 249;
/// Longest long-poll a fetch may ask for.
pub const FETCH_WAIT_MS_MAX: u32 = 60_000;
/// Most record bytes one fetch response carries (the first partition with
/// data may exceed the request's own budget by one batch, never this).
pub const FETCH_RESPONSE_BYTES_MAX: usize = 8 * 1024 * 1024;
/// Bytes of one partition's entry in a fetch response besides its records:
/// topic length, partition, error, high watermark, log start, records length.
const FETCH_RESULT_FIXED_BYTES: usize = 2 + 4 + 2 + 8 + 8 + 4;
/// Bytes of a response frame's header and the list count.
const RESPONSE_HEADER_BYTES_MAX: usize = 4 + 2 + 2 + 2 + 4;

// The largest fetch response — every partition named, each with a topic of
// the longest name, records at their cap (the request's budget, or one
// batch when that is larger) — always fits in a frame: a fetch can never
// build an answer the connection cannot send.
const _: () = assert!(
    RESPONSE_HEADER_BYTES_MAX
        + FETCH_PARTITIONS_MAX * (FETCH_RESULT_FIXED_BYTES + TOPIC_NAME_BYTES_MAX)
        + if FETCH_RESPONSE_BYTES_MAX > BATCH_BYTES_MAX {
            FETCH_RESPONSE_BYTES_MAX
        } else {
            BATCH_BYTES_MAX
        }
        <= tern_protocol::FRAME_BYTES_MAX
);
/// How long a catalogue change (create/delete topic) may take.
pub const ADMIN_TIMEOUT: Duration = Duration::from_secs(15);
/// A follower whose log is more than this many entries behind the leader's
/// is reported out of sync.
pub const IN_SYNC_LAG_ENTRIES_MAX: u64 = 1_000;

/// A failed request or partition: a wire code and a message for humans.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// Wire code.
    pub code: ErrorCode,
    /// Detail.
    pub message: String,
}

impl Failure {
    pub(crate) fn new(code: ErrorCode, message: impl Into<String>) -> Failure {
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

/// This node's replica of one partition.
pub struct Partition {
    topic: Arc<str>,
    index: u32,
    log: Arc<PartitionLog>,
    raft: Raft,
    log_end: watch::Receiver<u64>,
    /// Bytes of batches proposed and not yet committed or failed, at most
    /// [`PARTITION_UNCOMMITTED_BYTES_MAX`] (openraft's proposal queue is
    /// unbounded: this is its bound).
    uncommitted: Arc<tokio::sync::Semaphore>,
}

/// Most bytes of batches one partition holds between accepting them and
/// their commit (or failure). Over it a produce is answered `Busy`
/// (retriable): when a partition cannot commit (its followers are gone)
/// producers back off instead of growing the leader's memory. A permit is
/// held until the proposal's outcome is known, even when the produce
/// request's own timeout answered it earlier.
pub const PARTITION_UNCOMMITTED_BYTES_MAX: usize = 64 << 20;

/// A topic of the catalogue and the partitions this node hosts.
pub struct Topic {
    entry: TopicEntry,
    /// `None` where another broker holds the replicas.
    partitions: Vec<Option<Arc<Partition>>>,
}

/// The broker's state, shared by every connection.
pub struct Broker {
    config: Config,
    store: Store,
    metrics: Metrics,
    topics: RwLock<HashMap<String, Arc<Topic>>>,
    /// Serialises reconciliations with the catalogue.
    reconcile_lock: tokio::sync::Mutex<()>,
    ready: AtomicBool,
    plugins: Plugins,
    cache: Option<Arc<ReadCache>>,
    raft: Arc<RaftNode>,
    /// Leaders of partitions hosted elsewhere, as their replicas said, and
    /// when: metadata answers with them instead of a guess.
    remote_leaders: std::sync::Mutex<HashMap<(String, u32), (NodeId, Instant)>>,
    /// Why the cluster refused this broker, if it did.
    refusal: std::sync::Mutex<Option<String>>,
    /// Where the next multi-partition fetch starts reading (see
    /// `read_partitions`).
    fetch_rotation: std::sync::atomic::AtomicUsize,
    /// The configured super-users (the rules are the metadata group's).
    authorizer: tern_acl::Authorizer,
    /// Client authentication (decoy secret, failures per source).
    auth: crate::auth::Authenticator,
    /// Test hook: this many replica opens fail before any is attempted
    /// (`TERN_FAILPOINT_REPLICA_OPEN_FAILURES`; 0 in production), so tests
    /// can prove that a replica that failed to open is retried.
    replica_open_failpoint: std::sync::atomic::AtomicU32,
    /// Which partitions to campaign for as their preferred leader (one
    /// balancing round at a time; see `leader_balance`).
    leader_balance: tokio::sync::Mutex<leader_balance::Planner>,
}

/// First pause before retrying a replica that failed to open.
pub const REPLICA_RETRY_FIRST: Duration = Duration::from_secs(1);
/// Longest pause between retries of a replica that failed to open.
pub const REPLICA_RETRY_MAX: Duration = Duration::from_secs(30);

impl Topic {
    /// Partitions whose replicas on broker `me` the catalogue assigns but
    /// that are not open.
    fn unopened(&self, me: NodeId) -> usize {
        self.entry
            .replicas
            .iter()
            .zip(&self.partitions)
            .filter(|(replicas, open)| replicas.contains(&me) && open.is_none())
            .count()
    }
}

/// How long a remote partition's leader is trusted without asking again.
const REMOTE_LEADER_TTL: Duration = Duration::from_millis(500);

type CommitReceiver = oneshot::Receiver<
    Result<ClientWriteResponse<TernRaft>, ClientWriteError<NodeId, openraft::BasicNode>>,
>;

/// A produce partition after enqueueing: either already answered or waiting
/// for its Raft commit.
pub enum PendingAppend {
    /// Answered without touching storage (unknown topic, bad batch...).
    Done(ProduceResult),
    /// Proposed; the receiver yields the commit.
    Queued {
        /// Topic.
        topic: String,
        /// Partition.
        partition: u32,
        /// Records in the batch.
        records: u32,
        /// Bytes in the batch.
        bytes: usize,
        /// The group's answer.
        reply: CommitReceiver,
        /// The batch's share of the partition's uncommitted bytes, held
        /// until `reply` resolves.
        uncommitted: tokio::sync::OwnedSemaphorePermit,
    },
}

impl Broker {
    /// Builds the broker over a started replication node and opens the
    /// replicas the catalogue assigns to this node.
    pub async fn open(
        config: Config,
        store: Store,
        metrics: Metrics,
        plugins: Plugins,
        cache: Option<ReadCache>,
        raft: Arc<RaftNode>,
    ) -> Arc<Broker> {
        let broker = Arc::new(Broker {
            authorizer: tern_acl::Authorizer::new(config.super_users.iter().cloned()),
            config,
            store,
            metrics,
            topics: RwLock::new(HashMap::new()),
            reconcile_lock: tokio::sync::Mutex::new(()),
            ready: AtomicBool::new(false),
            plugins,
            cache: cache.map(Arc::new),
            raft,
            remote_leaders: std::sync::Mutex::new(HashMap::new()),
            refusal: std::sync::Mutex::new(None),
            fetch_rotation: std::sync::atomic::AtomicUsize::new(0),
            auth: crate::auth::Authenticator::default(),
            leader_balance: tokio::sync::Mutex::new(leader_balance::Planner::new(Instant::now())),
            replica_open_failpoint: std::sync::atomic::AtomicU32::new(
                std::env::var("TERN_FAILPOINT_REPLICA_OPEN_FAILURES")
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0),
            ),
        });
        broker.reconcile().await;
        broker
    }

    /// The resolved configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Client authentication state.
    pub(crate) fn auth(&self) -> &crate::auth::Authenticator {
        &self.auth
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

    /// The replication node.
    pub fn raft(&self) -> &Arc<RaftNode> {
        &self.raft
    }

    /// Records that the cluster refused this broker (it then stops).
    pub fn set_refusal(&self, reason: String) {
        *self.refusal.lock().expect("refusal lock") = Some(reason);
    }

    /// Why the cluster refused this broker, if it did.
    pub fn refusal(&self) -> Option<String> {
        self.refusal.lock().expect("refusal lock").clone()
    }

    /// Marks the broker as serving (listeners bound, topics opened).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    /// Whether the broker is serving: listeners bound and the metadata
    /// group has a leader this node hears from.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
            && self.raft.meta().metrics().borrow().current_leader.is_some()
    }

    /// Follows the catalogue until `shutdown`, opening and closing replicas.
    /// A replica that failed to open is retried with a growing pause
    /// ([`REPLICA_RETRY_FIRST`] doubling to [`REPLICA_RETRY_MAX`]) until it
    /// opens, even if the catalogue does not change meanwhile.
    pub async fn follow_catalogue(self: Arc<Self>, shutdown: tokio_util::sync::CancellationToken) {
        let mut catalogue = self.raft.catalogue();
        let mut pause = REPLICA_RETRY_FIRST;
        let mut unopened = 0;
        loop {
            let retry = tokio::time::sleep(pause);
            tokio::select! {
                _ = shutdown.cancelled() => return,
                changed = catalogue.changed() => if changed.is_err() { return },
                _ = retry, if unopened > 0 => {
                    info!(replicas = unopened, "retrying replicas that failed to open");
                }
            }
            unopened = self.reconcile().await;
            pause = if unopened > 0 {
                (pause * 2).min(REPLICA_RETRY_MAX)
            } else {
                REPLICA_RETRY_FIRST
            };
        }
    }

    /// Makes the hosted topics match the catalogue. Returns how many
    /// replicas this broker should host but could not open.
    async fn reconcile(&self) -> usize {
        let _one_at_a_time = self.reconcile_lock.lock().await;
        let catalogue: Arc<Catalogue> = self.raft.catalogue().borrow().clone();
        let me = self.raft.node_id();
        let current: Vec<(String, Arc<Topic>)> = self
            .topics
            .read()
            .expect("topics lock")
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (name, topic) in current {
            let still = catalogue.topics.get(&name).map(|e| e.id) == Some(topic.entry.id);
            if still {
                continue;
            }
            self.topics.write().expect("topics lock").remove(&name);
            for p in topic.partitions.iter().flatten() {
                self.close_partition(&name, p).await;
            }
            info!(topic = %name, "deleted topic");
        }
        let mut unopened = 0;
        for (name, entry) in &catalogue.topics {
            let existing = self.topic(name);
            if existing
                .as_ref()
                .is_some_and(|t| t.entry == *entry && t.unopened(me) == 0)
            {
                continue;
            }
            let mut partitions = Vec::with_capacity(entry.settings.partitions as usize);
            for index in 0..entry.settings.partitions {
                let hosted_now = existing
                    .as_ref()
                    .and_then(|t| t.partitions.get(index as usize).cloned().flatten());
                let should_host = entry
                    .replicas
                    .get(index as usize)
                    .is_some_and(|r| r.contains(&me));
                match (hosted_now, should_host) {
                    (Some(p), true) => partitions.push(Some(p)),
                    (Some(p), false) => {
                        // Moved away: this broker's copy is no longer needed.
                        self.close_partition(name, &p).await;
                        info!(topic = %name, partition = index, "replica moved away; deleted");
                        partitions.push(None);
                    }
                    (None, false) => partitions.push(None),
                    (None, true) => match self.open_partition(entry, index).await {
                        Ok(p) => partitions.push(Some(p)),
                        Err(e) => {
                            warn!(topic = %name, partition = index, error = %e,
                                  "cannot open replica; will retry");
                            self.metrics.replica_open_failures.inc();
                            unopened += 1;
                            partitions.push(None);
                        }
                    },
                }
            }
            if existing.is_none() {
                info!(topic = %name, partitions = partitions.len(),
                      hosted = partitions.iter().flatten().count(), "opened topic");
            }
            self.topics.write().expect("topics lock").insert(
                name.clone(),
                Arc::new(Topic {
                    entry: entry.clone(),
                    partitions,
                }),
            );
        }
        let topics = self.topics.read().expect("topics lock");
        self.metrics.topics.set(topics.len() as i64);
        self.metrics.partitions.set(
            topics
                .values()
                .map(|t| t.partitions.iter().flatten().count() as i64)
                .sum(),
        );
        self.metrics.replicas_unopened.set(unopened as i64);
        unopened
    }

    async fn close_partition(&self, topic: &str, p: &Partition) {
        self.raft.close_partition(&p.log, true).await;
        let labels = [topic, &p.index.to_string()];
        let _ = self.metrics.log_start_offset.remove_label_values(&labels);
        let _ = self.metrics.log_end_offset.remove_label_values(&labels);
        let _ = self.metrics.log_size_bytes.remove_label_values(&labels);
    }

    async fn open_partition(
        &self,
        entry: &TopicEntry,
        index: u32,
    ) -> Result<Arc<Partition>, tern_raft::RaftStartError> {
        let failpoint = &self.replica_open_failpoint;
        if failpoint
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(tern_raft::RaftStartError::Config(
                "failpoint TERN_FAILPOINT_REPLICA_OPEN_FAILURES".into(),
            ));
        }
        let (end_tx, end_rx) = watch::channel(0u64);
        let cache = self.cache.clone();
        let topic_id = entry.id;
        let on_apply: tern_raft::OnApply = Arc::new(move |appended, log_end| {
            // Tailing consumers read what was just committed.
            if let Some(cache) = &cache {
                for a in appended {
                    cache.insert((topic_id, index, a.base_offset), a.bytes.clone());
                }
            }
            end_tx.send_replace(log_end);
        });
        let span = tracing::info_span!("replica", topic = %entry.name, partition = index);
        let (raft, log) = self
            .raft
            .open_partition(entry, index, on_apply.clone())
            .instrument(span)
            .await?;
        on_apply(&[], log.log_end());
        tokio::spawn(count_leader_changes(
            raft.clone(),
            self.metrics
                .raft_leader_changes
                .with_label_values(&["partition"]),
        ));
        Ok(Arc::new(Partition {
            topic: Arc::from(entry.name.as_str()),
            index,
            log,
            raft,
            log_end: end_rx,
            uncommitted: Arc::new(tokio::sync::Semaphore::new(PARTITION_UNCOMMITTED_BYTES_MAX)),
        }))
    }

    fn topic(&self, name: &str) -> Option<Arc<Topic>> {
        self.topics.read().expect("topics lock").get(name).cloned()
    }

    fn partition(&self, topic: &str, partition: u32) -> Result<Arc<Partition>, Failure> {
        let t = self.topic(topic).ok_or_else(|| {
            Failure::new(
                ErrorCode::UnknownTopicOrPartition,
                format!("no topic {topic:?}"),
            )
        })?;
        match t.partitions.get(partition as usize) {
            None => Err(Failure::new(
                ErrorCode::UnknownTopicOrPartition,
                format!("no partition {partition} of topic {topic:?}"),
            )),
            Some(None) => Err(Failure::new(
                ErrorCode::NotLeader,
                format!(
                    "broker {} holds no replica of {topic}/{partition}",
                    self.raft.node_id()
                ),
            )),
            Some(Some(p)) => Ok(p.clone()),
        }
    }

    /// Every hosted partition (for retention and metrics).
    pub fn all_partitions(&self) -> Vec<(TopicEntry, Arc<Partition>)> {
        self.topics
            .read()
            .expect("topics lock")
            .values()
            .flat_map(|t| {
                t.partitions
                    .iter()
                    .flatten()
                    .map(|p| (t.entry.clone(), p.clone()))
            })
            .collect()
    }

    /// Validates each batch and proposes it to its partition's Raft group.
    /// A partition holding [`PARTITION_UNCOMMITTED_BYTES_MAX`] uncommitted
    /// bytes answers `Busy` instead (openraft's queue is unbounded).
    pub async fn enqueue_produce(
        &self,
        session: &Session,
        partitions: Vec<ProducePartition>,
    ) -> Vec<PendingAppend> {
        let acls = self.acls();
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
            // Before anything else: whether the topic exists is not for a
            // principal that may not produce to it to learn.
            if let Some(acls) = &acls {
                let topic = tern_acl::Resource::Topic(&p.topic);
                if !self.allows(acls, session, topic, tern_acl::Operation::Produce) {
                    pending.push(done(Failure::new(
                        ErrorCode::AccessDenied,
                        format!(
                            "{} may not produce to {topic}",
                            authz::principal_name(session)
                        ),
                    )));
                    continue;
                }
            }
            let target = match self.partition(&p.topic, p.partition) {
                Ok(t) => t,
                Err(f) => {
                    pending.push(done(f));
                    continue;
                }
            };
            if let Err(f) = target.check_leader(self.raft.node_id()) {
                pending.push(done(f));
                continue;
            }
            if self.store.is_disk_full() {
                pending.push(done(Failure::new(
                    ErrorCode::DiskFull,
                    "the broker's disk is full; writes resume when space returns",
                )));
                continue;
            }
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
            let records = view.record_count();
            let bytes = view.bytes().len();
            // A batch is at most BATCH_BYTES_MAX (8 MiB), well under the limit.
            let Ok(uncommitted) = target
                .uncommitted
                .clone()
                .try_acquire_many_owned(bytes as u32)
            else {
                self.metrics
                    .limit_refusals
                    .with_label_values(&["partition_uncommitted_bytes_max"])
                    .inc();
                pending.push(done(Failure::new(
                    ErrorCode::Busy,
                    format!(
                        "{}/{} holds {} MiB of batches waiting to commit \
                         (partition_uncommitted_bytes_max); retry after a backoff",
                        p.topic,
                        p.partition,
                        PARTITION_UNCOMMITTED_BYTES_MAX >> 20
                    ),
                )));
                continue;
            };
            match target
                .raft
                .client_write_ff(Command::Append(view.into_bytes()))
                .await
            {
                Ok(reply) => pending.push(PendingAppend::Queued {
                    topic: p.topic,
                    partition: p.partition,
                    records,
                    bytes,
                    reply,
                    uncommitted,
                }),
                Err(e) => pending.push(done(Failure::new(
                    ErrorCode::NotLeader,
                    format!("replica stopped: {e}"),
                ))),
            }
        }
        pending
    }

    /// Answers any request (the connection sends produce to
    /// [`Self::enqueue_produce`] itself). When authorization is on, the
    /// request is checked first (see `authz`).
    pub async fn handle(&self, session: &Session, request: Request) -> Result<Response, Failure> {
        self.authorize_request(session, &request)?;
        let admin = authz::is_admin(&request).then(|| format!("{request:?}"));
        let result = self.handle_authorized(session, request).await;
        if let (Some(what), Ok(_)) = (admin, &result) {
            info!(
                target: "tern::security",
                principal = %authz::principal_name(session),
                peer = %session.peer(),
                request = %what,
                "admin request done"
            );
        }
        result
    }

    async fn handle_authorized(
        &self,
        session: &Session,
        request: Request,
    ) -> Result<Response, Failure> {
        match request {
            Request::Produce {
                partitions,
                timeout_ms,
                ..
            } => {
                let pending = self.enqueue_produce(session, partitions).await;
                Ok(finish_produce(pending, timeout_ms, &self.metrics).await)
            }
            Request::Fetch {
                max_wait_ms,
                min_bytes,
                max_bytes,
                partitions,
            } => {
                self.check_fetch(&partitions)?;
                Ok(self
                    .fetch(max_wait_ms, min_bytes, max_bytes, partitions)
                    .await)
            }
            Request::Metadata { topics } => {
                self.learn_remote_leaders(topics.as_deref()).await;
                Ok(self.metadata(session, topics))
            }
            Request::CreateTopic { name, config } => self.create_topic(name, config).await,
            Request::DeleteTopic { name } => self.delete_topic(name).await,
            Request::CreatePartitions { topic, count } => {
                let span = tracing::info_span!("create_partitions", topic = %topic, count);
                self.create_partitions(topic, count).instrument(span).await
            }
            Request::AddBroker { node_id, peer_addr } => {
                if node_id == 0 {
                    return Err(Failure::new(
                        ErrorCode::InvalidRequest,
                        "node ids start at 1",
                    ));
                }
                self.raft
                    .change_cluster(ClusterChange::Add(node_id as u64, peer_addr), ADMIN_TIMEOUT)
                    .await
                    .map_err(write_failure)?;
                if self.config.auto_rebalance {
                    self.rebalance_after_join(node_id as u64).await;
                }
                Ok(Response::AddBroker)
            }
            Request::RemoveBroker { node_id } => {
                let node = node_id as u64;
                let holding = || -> Vec<String> {
                    let catalogue = self.raft.catalogue().borrow().clone();
                    catalogue
                        .topics
                        .values()
                        .flat_map(|t| {
                            t.replicas
                                .iter()
                                .enumerate()
                                .filter(|(_, r)| r.contains(&node))
                                .map(move |(p, _)| format!("{}/{p}", t.name))
                        })
                        .collect()
                };
                // Moves just committed elsewhere may take a moment to apply
                // on this broker's copy of the catalogue.
                let deadline = Instant::now() + Duration::from_secs(5);
                let mut still = holding();
                while !still.is_empty() && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    still = holding();
                }
                if !still.is_empty() {
                    return Err(Failure::new(
                        ErrorCode::InvalidRequest,
                        format!(
                            "broker {node} still holds replicas of {}; move them first (tern cluster remove-broker does)",
                            still.join(", ")
                        ),
                    ));
                }
                // Catalogue first, while the broker is still a voter and the
                // metadata group is stable; then the membership change.
                self.catalogue_write(Command::RemoveBroker { node_id: node })
                    .await?;
                self.raft
                    .change_cluster(ClusterChange::Remove(node), ADMIN_TIMEOUT)
                    .await
                    .map_err(write_failure)?;
                Ok(Response::RemoveBroker)
            }
            Request::ReassignPartition {
                topic,
                partition,
                replicas,
            } => self.reassign(topic, partition, replicas).await,
            Request::Lock(l) => self.lock(session, l).await,
            Request::Group(g) => self.group(session, g).await,
            Request::Acl(a) => self.acl(a).await,
            Request::BalanceLeaders => {
                let report = self.balance_leaders_round(true).await;
                Ok(Response::BalanceLeaders {
                    not_preferred: report.not_preferred,
                    elections: report.elections,
                })
            }
            Request::Rebalance(r) => {
                let span = tracing::info_span!("rebalance");
                self.rebalance(r).instrument(span).await
            }
            Request::User(u) => self.user_admin(session, u).await,
            Request::SaslHandshake { .. } | Request::SaslAuthenticate { .. } => Err(Failure::new(
                ErrorCode::InvalidRequest,
                "SASL requests belong to a connection's exchange (Broker::sasl_step)",
            )),
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

    /// Refuses, before anything is read, a fetch that names more partitions
    /// than [`FETCH_PARTITIONS_MAX`], one partition twice, or a topic no
    /// topic can be named: each would let a small request make the broker
    /// read and send far more than the response budget.
    fn check_fetch(&self, wanted: &[FetchPartition]) -> Result<(), Failure> {
        if wanted.len() > FETCH_PARTITIONS_MAX {
            self.metrics
                .limit_refusals
                .with_label_values(&["fetch_partitions_max"])
                .inc();
            return Err(Failure::new(
                ErrorCode::LimitExceeded,
                format!(
                    "a fetch names {} partitions, over fetch_partitions_max = {FETCH_PARTITIONS_MAX}",
                    wanted.len()
                ),
            ));
        }
        let mut seen = std::collections::HashSet::with_capacity(wanted.len());
        for w in wanted {
            if w.topic.len() > TOPIC_NAME_BYTES_MAX {
                return Err(Failure::new(
                    ErrorCode::InvalidRequest,
                    format!(
                        "a fetch names a topic of {} bytes; topic names are at most {TOPIC_NAME_BYTES_MAX}",
                        w.topic.len()
                    ),
                ));
            }
            if !seen.insert((w.topic.as_str(), w.partition)) {
                return Err(Failure::new(
                    ErrorCode::InvalidRequest,
                    format!(
                        "a fetch names partition {}/{} more than once",
                        w.topic, w.partition
                    ),
                ));
            }
        }
        Ok(())
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
        // Partitions are read from a rotating start: the budget goes to the
        // first ones read, and a fixed order would starve the partitions a
        // client always lists last while the first ones have a backlog.
        let rotation = if jobs.len() > 1 {
            self.fetch_rotation.fetch_add(1, Ordering::Relaxed) % jobs.len()
        } else {
            0
        };
        let reads = tokio::task::spawn_blocking(move || {
            // Record bytes the response may still carry. The first partition
            // read that has data may go over it by one batch (a consumer must
            // never be stuck behind a batch larger than its budget); every
            // later one only serves what fits.
            let mut budget = max_bytes;
            let mut served = false;
            let n = jobs.len();
            let mut results: Vec<Option<FetchResult>> = vec![None; n];
            for k in 0..n {
                let i = (rotation + k) % n;
                let (w, t) = &jobs[i];
                let mut result = FetchResult {
                    topic: w.topic.clone(),
                    partition: w.partition,
                    error: ErrorCode::None,
                    high_watermark: 0,
                    log_start: 0,
                    records: Bytes::new(),
                };
                match t {
                    Err(f) => result.error = f.code,
                    Ok(p) => {
                        let limit = (w.max_bytes as usize).clamp(1, budget.max(1));
                        let first_batch_max = if served { budget } else { usize::MAX };
                        match read_through_cache(
                            cache.as_deref(),
                            &p.log,
                            w.offset,
                            limit,
                            first_batch_max,
                        ) {
                            Ok((data, log_start, log_end)) => {
                                budget = budget.saturating_sub(data.len());
                                served |= !data.is_empty();
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
                    }
                }
                results[i] = Some(result);
            }
            results
                .into_iter()
                .map(|r| r.expect("every partition was read"))
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

    /// Asks, for the wanted partitions this broker does not host, their
    /// replicas who leads them (one call per broker, cached briefly).
    async fn learn_remote_leaders(&self, wanted: Option<&[String]>) {
        let now = Instant::now();
        let mut asks = Vec::new();
        {
            let topics = self.topics.read().expect("topics lock");
            let cache = self.remote_leaders.lock().expect("leader cache lock");
            for t in topics.values() {
                if wanted.is_some_and(|w| !w.contains(&t.entry.name)) {
                    continue;
                }
                for (i, p) in t.partitions.iter().enumerate() {
                    let key = (t.entry.name.clone(), i as u32);
                    let fresh = cache
                        .get(&key)
                        .is_some_and(|(_, at)| now.duration_since(*at) < REMOTE_LEADER_TTL);
                    if p.is_none() && !fresh {
                        let group = tern_storage::partition_group(t.entry.id, i as u32);
                        let replicas = t.entry.replicas.get(i).cloned().unwrap_or_default();
                        asks.push((key, group, replicas));
                    }
                }
            }
        }
        let (keys, asks): (Vec<_>, Vec<_>) = asks
            .into_iter()
            .map(|(key, group, replicas)| (key, (group, replicas)))
            .unzip();
        let answers = keys.into_iter().zip(self.raft.leaders_of(&asks).await);
        let mut cache = self.remote_leaders.lock().expect("leader cache lock");
        for (key, leader) in answers {
            match leader {
                Some(l) => {
                    cache.insert(key, (l, now));
                }
                None => {
                    cache.remove(&key);
                }
            }
        }
    }

    /// Describes the cluster. With authorization on, only topics the
    /// session may describe: the others are left out of an all-topics
    /// answer and answered `AccessDenied` (existing or not) when named.
    fn metadata(&self, session: &Session, wanted: Option<Vec<String>>) -> Response {
        let acls = self.acls();
        let me = self.raft.node_id();
        let topics = self.topics.read().expect("topics lock");
        let remote = self
            .remote_leaders
            .lock()
            .expect("leader cache lock")
            .clone();
        let describe = |t: &Topic| TopicInfo {
            error: ErrorCode::None,
            name: t.entry.name.clone(),
            config: TopicConfig {
                partitions: t.entry.settings.partitions,
                replication_factor: t.entry.settings.replication_factor,
                retention_ms: t.entry.settings.retention_ms,
                retention_bytes: t.entry.settings.retention_bytes,
            },
            partitions: t
                .partitions
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    let replicas: Vec<u32> = t
                        .entry
                        .replicas
                        .get(i)
                        .map(|r| r.iter().map(|n| *n as u32).collect())
                        .unwrap_or_default();
                    match p {
                        Some(p) => p.describe(me, replicas),
                        // Hosted elsewhere: the leader its replicas named, else
                        // the first replica as a hint (the client is told
                        // `not_leader` if it is wrong and asks again).
                        None => PartitionInfo {
                            partition: i as u32,
                            leader: remote
                                .get(&(t.entry.name.clone(), i as u32))
                                .map(|(l, _)| *l as u32)
                                .or_else(|| replicas.first().copied())
                                .unwrap_or(0),
                            in_sync: replicas.clone(),
                            replicas,
                            log_start: 0,
                            log_end: 0,
                            high_watermark: 0,
                        },
                    }
                })
                .collect(),
        };
        let empty = |error: ErrorCode, name: String| TopicInfo {
            error,
            name,
            config: TopicConfig {
                partitions: 0,
                replication_factor: 0,
                retention_ms: -1,
                retention_bytes: -1,
            },
            partitions: vec![],
        };
        let mut out: Vec<TopicInfo> = match wanted {
            None => topics
                .values()
                .filter(|t| {
                    acls.as_ref()
                        .is_none_or(|a| self.may_describe(a, session, &t.entry.name))
                })
                .map(|t| describe(t))
                .collect(),
            Some(names) => names
                .into_iter()
                .map(|n| match topics.get(&n) {
                    _ if acls.as_ref().is_some_and(|a| {
                        !self.allows(
                            a,
                            session,
                            tern_acl::Resource::Topic(&n),
                            tern_acl::Operation::Describe,
                        )
                    }) =>
                    {
                        empty(ErrorCode::AccessDenied, n)
                    }
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
        let catalogue = self.raft.catalogue().borrow().clone();
        let mut brokers: Vec<BrokerInfo> = catalogue
            .brokers
            .iter()
            .map(|(id, b)| {
                let (host, port) = split_host_port(&b.client_addr);
                BrokerInfo {
                    node_id: *id as u32,
                    host,
                    port,
                }
            })
            .collect();
        if !catalogue.brokers.contains_key(&me) {
            // Not registered yet: still tell clients how to reach this node.
            let (host, port) = split_host_port(&self.config.advertise);
            brokers.push(BrokerInfo {
                node_id: me as u32,
                host,
                port,
            });
        }
        Response::Metadata {
            brokers,
            controller: self
                .raft
                .meta()
                .metrics()
                .borrow()
                .current_leader
                .unwrap_or(0) as u32,
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
        if self.topic(&name).is_some() {
            return Err(Failure::new(
                ErrorCode::TopicAlreadyExists,
                format!("topic {name:?} already exists"),
            ));
        }
        self.check_catalogue_room(config.partitions, true)?;
        // The replication factor is capped by the number of brokers.
        let brokers = self.raft.voters();
        let rf = (config.replication_factor.max(1) as usize).min(brokers.len());
        let seed = placement_seed(&name);
        let racks = self.raft.catalogue().borrow().racks.clone();
        let replicas = (0..config.partitions)
            .map(|p| place_replicas_in_racks(seed, p, &brokers, &racks, rf))
            .collect();
        let command = Command::CreateTopic {
            name: name.clone(),
            settings: TopicSettings {
                partitions: config.partitions,
                replication_factor: rf as u16,
                retention_ms: config.retention_ms,
                retention_bytes: config.retention_bytes,
            },
            replicas,
        };
        self.catalogue_write(command).await?;
        // Answer once this node serves the topic and its local replicas know
        // their leaders, so the creator can produce right away.
        if self.wait_elected(&name, config.partitions).await {
            info!(topic = %name, partitions = config.partitions, replication_factor = rf, "created topic");
            return Ok(Response::CreateTopic);
        }
        Err(Failure::new(
            ErrorCode::RequestTimedOut,
            "topic created but its partitions have not elected leaders yet",
        ))
    }

    /// Waits (up to `ADMIN_TIMEOUT`) until this node serves `name` with
    /// `partitions` partitions and every replica it hosts knows its leader.
    async fn wait_elected(&self, name: &str, partitions: u32) -> bool {
        let deadline = Instant::now() + ADMIN_TIMEOUT;
        while Instant::now() < deadline {
            self.reconcile().await;
            if let Some(t) = self.topic(name) {
                let elected = t.partitions.len() >= partitions as usize
                    && t.partitions
                        .iter()
                        .flatten()
                        .all(|p| p.raft.metrics().borrow().current_leader.is_some());
                if elected {
                    return true;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    /// Grows `topic` to `count` partitions in all. The new partitions are
    /// placed like a topic created that large on today's brokers (same
    /// rendezvous seed and replication factor), appended after the old
    /// ones, which keep their data and replicas. The command carries the
    /// placement and the count it was planned against, so applying it is
    /// deterministic and a concurrent growth makes it fail rather than
    /// misplace. Answers once this node serves the new partitions and they
    /// have leaders.
    async fn create_partitions(&self, topic: String, count: u32) -> Result<Response, Failure> {
        let entry = self
            .raft
            .catalogue()
            .borrow()
            .topics
            .get(&topic)
            .cloned()
            .ok_or_else(|| {
                Failure::new(
                    ErrorCode::UnknownTopicOrPartition,
                    format!("no topic {topic:?}"),
                )
            })?;
        let from = entry.settings.partitions;
        if count <= from {
            return Err(Failure::new(
                ErrorCode::InvalidPartitions,
                format!(
                    "topic {topic:?} has {from} partitions; the count given is the new total \
                     and must be larger (partitions cannot be removed)"
                ),
            ));
        }
        if count > PARTITIONS_PER_TOPIC_MAX {
            return Err(Failure::new(
                ErrorCode::InvalidPartitions,
                format!("partitions must be 1..={PARTITIONS_PER_TOPIC_MAX}"),
            ));
        }
        self.check_catalogue_room(count - from, false)?;
        let brokers = self.raft.voters();
        let rf = (entry.settings.replication_factor.max(1) as usize).min(brokers.len());
        let seed = placement_seed(&topic);
        let racks = self.raft.catalogue().borrow().racks.clone();
        let replicas = (from..count)
            .map(|p| place_replicas_in_racks(seed, p, &brokers, &racks, rf))
            .collect();
        self.catalogue_write(Command::AddPartitions {
            name: topic.clone(),
            topic_id: entry.id,
            from,
            replicas,
        })
        .await?;
        if self.wait_elected(&topic, count).await {
            info!(topic = %topic, from, to = count, replication_factor = rf, "added partitions");
            return Ok(Response::CreatePartitions);
        }
        Err(Failure::new(
            ErrorCode::RequestTimedOut,
            "partitions added but the new ones have not elected leaders yet",
        ))
    }

    /// Refuses a topic (`new_topic`) or a growth that would take the
    /// cluster over `cluster_topics_max` or `cluster_partitions_max`: every
    /// partition is a Raft group on each of its replicas and a line of every
    /// metadata answer. Checked against this broker's copy of the catalogue
    /// before proposing, so concurrent creations through several brokers
    /// may overshoot by those few topics.
    fn check_catalogue_room(&self, partitions: u32, new_topic: bool) -> Result<(), Failure> {
        let catalogue = self.raft.catalogue().borrow().clone();
        let topics = catalogue.topics.len();
        let existing: u64 = catalogue
            .topics
            .values()
            .map(|t| t.settings.partitions as u64)
            .sum();
        let refuse = |limit: &'static str, message: String| {
            self.metrics
                .limit_refusals
                .with_label_values(&[limit])
                .inc();
            Err(Failure::new(ErrorCode::LimitExceeded, message))
        };
        if new_topic && topics >= self.config.cluster_topics_max {
            return refuse(
                "cluster_topics_max",
                format!(
                    "the cluster has {topics} topics, its cluster_topics_max ({}); delete one first",
                    self.config.cluster_topics_max
                ),
            );
        }
        if existing + partitions as u64 > self.config.cluster_partitions_max {
            return refuse(
                "cluster_partitions_max",
                format!(
                    "the cluster has {existing} partitions; {partitions} more would pass its cluster_partitions_max ({})",
                    self.config.cluster_partitions_max
                ),
            );
        }
        Ok(())
    }

    async fn delete_topic(&self, name: String) -> Result<Response, Failure> {
        if self.topic(&name).is_none() {
            return Err(Failure::new(
                ErrorCode::UnknownTopicOrPartition,
                format!("no topic {name:?}"),
            ));
        }
        self.catalogue_write(Command::DeleteTopic { name: name.clone() })
            .await?;
        let deadline = Instant::now() + ADMIN_TIMEOUT;
        while self.topic(&name).is_some() && Instant::now() < deadline {
            self.reconcile().await;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(Response::DeleteTopic)
    }

    async fn reassign(
        &self,
        topic: String,
        partition: u32,
        replicas: Vec<u32>,
    ) -> Result<Response, Failure> {
        let p = self.partition(&topic, partition)?;
        p.check_leader(self.raft.node_id())?;
        let voters = self.raft.voters();
        let mut target: Vec<NodeId> = Vec::new();
        for r in replicas {
            let r = r as u64;
            if !voters.contains(&r) {
                return Err(Failure::new(
                    ErrorCode::InvalidRequest,
                    format!("broker {r} is not in the cluster (brokers: {voters:?})"),
                ));
            }
            if !target.contains(&r) {
                target.push(r);
            }
        }
        if target.is_empty() {
            return Err(Failure::new(ErrorCode::InvalidRequest, "no replicas given"));
        }
        let entry = self
            .topic(&topic)
            .map(|t| t.entry.clone())
            .ok_or_else(|| Failure::new(ErrorCode::UnknownTopicOrPartition, "topic deleted"))?;
        info!(%topic, partition, ?target, "moving partition");
        self.raft
            .move_partition(&p.raft, &entry, partition, target, ADMIN_TIMEOUT)
            .await
            .map_err(write_failure)?;
        self.reconcile().await;
        Ok(Response::ReassignPartition)
    }

    /// Creates, changes, deletes or lists users (replicated through the
    /// metadata group) once [`Broker::require_cluster_admin`] allows it.
    async fn user_admin(
        &self,
        session: &Session,
        request: tern_protocol::auth::UserRequest,
    ) -> Result<Response, Failure> {
        use tern_protocol::auth::{UserRequest, UserResponse};
        let principal = session.principal();
        let principal = principal.as_deref().unwrap_or("anonymous");
        if let Err(refused) = self.require_cluster_admin(session) {
            warn!(target: "tern::security", principal, peer = %session.peer(), "user administration refused: not a super-user");
            return Err(refused);
        }
        let invalid =
            |e: tern_auth::ScramError| Failure::new(ErrorCode::InvalidRequest, e.to_string());
        match request {
            UserRequest::List => Ok(Response::User(UserResponse::List(
                self.raft.users().keys().cloned().collect(),
            ))),
            UserRequest::Upsert { name, credential } => {
                tern_auth::validate_username(&name).map_err(invalid)?;
                let credential = tern_auth::StoredCredential::from_parts(
                    &credential.salt,
                    credential.iterations,
                    &credential.stored_key,
                    &credential.server_key,
                )
                .map_err(invalid)?;
                let existed = self.raft.users().contains_key(&name);
                self.catalogue_write(Command::PutUser {
                    name: name.clone(),
                    credential,
                    create_only: false,
                })
                .await?;
                info!(target: "tern::security", principal, peer = %session.peer(), user = %name, operation = if existed { "change" } else { "create" }, "user administration");
                Ok(Response::User(UserResponse::Done))
            }
            UserRequest::Delete { name } => {
                self.catalogue_write(Command::DeleteUser { name: name.clone() })
                    .await?;
                info!(target: "tern::security", principal, peer = %session.peer(), user = %name, operation = "delete", "user administration");
                Ok(Response::User(UserResponse::Done))
            }
        }
    }

    /// Adds, removes or lists authorization rules. A change is answered
    /// once this broker has applied it, so the caller's next request here
    /// is checked against it.
    async fn acl(&self, request: AclRequest) -> Result<Response, Failure> {
        let (rule, add) = match request {
            AclRequest::List { start } => {
                let acls = self.raft.acls();
                let rules = acls
                    .rules()
                    .skip(start as usize)
                    .take(ACL_LIST_PAGE_MAX)
                    .cloned()
                    .collect();
                return Ok(Response::Acl(AclResponse::List {
                    total: acls.len() as u32,
                    rules,
                }));
            }
            AclRequest::Add(rule) => (rule, true),
            AclRequest::Remove(rule) => (rule, false),
        };
        rule.validate()
            .map_err(|e| Failure::new(ErrorCode::InvalidRequest, e.to_string()))?;
        let command = if add {
            Command::AddAcl(rule.clone())
        } else {
            Command::RemoveAcl(rule.clone())
        };
        self.catalogue_write(command).await?;
        let mut applied = self.raft.follow_acls();
        let seen = matches!(
            tokio::time::timeout(
                ADMIN_TIMEOUT,
                applied.wait_for(|acls| acls.contains(&rule) == add),
            )
            .await,
            Ok(Ok(_))
        );
        if !seen {
            return Err(Failure::new(
                ErrorCode::RequestTimedOut,
                "the rule was committed but this broker has not applied it yet",
            ));
        }
        Ok(Response::Acl(AclResponse::Done))
    }

    async fn catalogue_write(&self, command: Command) -> Result<(), Failure> {
        match self.raft.meta_write(command, ADMIN_TIMEOUT).await {
            Ok(CommandResponse::Rejected { code, message }) => {
                Err(Failure::new(ErrorCode::from_u16(code), message))
            }
            Ok(_) => Ok(()),
            Err(e) => Err(Failure::new(ErrorCode::LeaderNotAvailable, e.to_string())),
        }
    }

    /// Refreshes per-partition and RocksDB gauges (called on each scrape).
    pub fn update_gauges(&self) {
        for (i, (entry, p)) in self.all_partitions().into_iter().enumerate() {
            if i >= PARTITION_SERIES_MAX {
                break;
            }
            let labels = [entry.name.as_str(), &p.index.to_string()];
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
        self.update_raft_gauges();
        self.update_coordination_gauges();
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

impl Broker {
    /// Raft gauges over every group of this node.
    fn update_raft_gauges(&self) {
        let me = self.raft.node_id();
        let mut roles: HashMap<&'static str, i64> = HashMap::new();
        let (mut apply_lag, mut replication_lag) = (0u64, 0u64);
        for (_, raft) in self.raft.transport().groups() {
            let m = raft.metrics().borrow().clone();
            let role = match m.state {
                openraft::ServerState::Leader => "leader",
                openraft::ServerState::Candidate => "candidate",
                openraft::ServerState::Learner => "learner",
                _ => "follower",
            };
            *roles.entry(role).or_default() += 1;
            let last = m.last_log_index.unwrap_or(0);
            apply_lag += last.saturating_sub(m.last_applied.map_or(0, |l| l.index));
            if let Some(followers) = &m.replication {
                replication_lag += followers
                    .iter()
                    .filter(|(id, _)| **id != me)
                    .map(|(_, matched)| last.saturating_sub(matched.map_or(0, |l| l.index)))
                    .sum::<u64>();
            }
        }
        for role in ["leader", "follower", "candidate", "learner"] {
            self.metrics
                .raft_groups
                .with_label_values(&[role])
                .set(roles.get(role).copied().unwrap_or(0));
        }
        self.metrics.raft_apply_lag_entries.set(apply_lag as i64);
        self.metrics
            .raft_replication_lag_entries
            .set(replication_lag as i64);
        self.metrics
            .raft_metadata_term
            .set(self.raft.meta().metrics().borrow().current_term as i64);
        let (mut under, mut offline, mut led, mut off_preferred) = (0, 0, 0, 0);
        for (entry, p) in self.all_partitions() {
            let m = p.raft.metrics().borrow().clone();
            let preferred = entry.replicas.get(p.index as usize).and_then(|r| r.first());
            if preferred == Some(&me) && m.current_leader != Some(me) {
                off_preferred += 1;
            }
            match m.current_leader {
                None => offline += 1,
                Some(l) if l == me => {
                    led += 1;
                    let replicas = entry.replicas.get(p.index as usize).map_or(0, Vec::len);
                    let in_sync = p.describe(me, vec![]).in_sync.len();
                    if in_sync < replicas {
                        under += 1;
                    }
                }
                Some(_) => {}
            }
        }
        self.metrics.partitions_under_replicated.set(under);
        self.metrics.partitions_offline.set(offline);
        self.metrics
            .partition_leaders
            .with_label_values(&[&me.to_string()])
            .set(led);
        self.metrics
            .partitions_off_preferred_leader
            .set(off_preferred);
    }
}

/// Counts the leader changes a Raft group observes, until it shuts down.
pub async fn count_leader_changes(raft: Raft, counter: prometheus::IntCounter) {
    let mut metrics = raft.metrics();
    let mut last = metrics.borrow().current_leader;
    while metrics.changed().await.is_ok() {
        let now = metrics.borrow().current_leader;
        if now != last && now.is_some() {
            counter.inc();
        }
        last = now;
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

    /// The partition's Raft group.
    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    /// The id of the partition's Raft group.
    pub fn group(&self) -> u64 {
        let (topic_id, partition) = self.log.id();
        tern_storage::partition_group(topic_id, partition)
    }

    fn check_leader(&self, me: NodeId) -> Result<(), Failure> {
        match self.raft.metrics().borrow().current_leader {
            Some(l) if l == me => Ok(()),
            Some(l) => Err(Failure::new(
                ErrorCode::NotLeader,
                format!("broker {l} leads {}/{}", self.topic, self.index),
            )),
            None => Err(Failure::new(
                ErrorCode::LeaderNotAvailable,
                format!("{}/{} is electing a leader", self.topic, self.index),
            )),
        }
    }

    fn describe(&self, me: NodeId, replicas: Vec<u32>) -> PartitionInfo {
        let m = self.raft.metrics().borrow().clone();
        let leader = m.current_leader.unwrap_or(0) as u32;
        let last = m.last_log_index.unwrap_or(0);
        let in_sync = match (&m.replication, m.current_leader == Some(me)) {
            (Some(followers), true) => followers
                .iter()
                .filter(|(_, matched)| {
                    last.saturating_sub(matched.map_or(0, |l| l.index)) <= IN_SYNC_LAG_ENTRIES_MAX
                })
                .map(|(id, _)| *id as u32)
                .collect(),
            // Only the leader knows who is in sync.
            _ => vec![],
        };
        let end = self.log.log_end();
        PartitionInfo {
            partition: self.index,
            leader,
            replicas,
            in_sync,
            log_start: self.log.log_start(),
            log_end: end,
            high_watermark: end,
        }
    }
}

/// Waits for every proposed batch of one produce request and builds the
/// response, giving up on stragglers after `timeout_ms` (a timed-out batch
/// may still commit: an idempotent producer's retry is then answered with
/// its original offset).
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
                records,
                bytes,
                mut reply,
                uncommitted,
            } => {
                let outcome = tokio::time::timeout_at(deadline, &mut reply).await;
                if outcome.is_err() {
                    // Answered by its timeout, the batch is still queued in
                    // its group: its bytes count until the group decides.
                    tokio::spawn(async move {
                        let _ = reply.await;
                        drop(uncommitted);
                    });
                }
                let (error, base_offset) = match outcome {
                    Ok(Ok(Ok(committed))) => match committed.data {
                        CommandResponse::Appended { base_offset, .. } => {
                            metrics
                                .records_in
                                .with_label_values(&[&topic])
                                .inc_by(records as u64);
                            metrics
                                .bytes_in
                                .with_label_values(&[&topic])
                                .inc_by(bytes as u64);
                            (ErrorCode::None, base_offset)
                        }
                        CommandResponse::Rejected { code, .. } => (ErrorCode::from_u16(code), 0),
                        CommandResponse::Done | CommandResponse::Coord(_) => {
                            (ErrorCode::Unknown, 0)
                        }
                    },
                    Ok(Ok(Err(ClientWriteError::ForwardToLeader(_)))) => (ErrorCode::NotLeader, 0),
                    Ok(Ok(Err(_))) => (ErrorCode::Unknown, 0),
                    // The group dropped the proposal (leadership lost).
                    Ok(Err(_)) => (ErrorCode::NotLeader, 0),
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

/// Reads whole batches from `offset`, each from the read cache when it holds
/// it, else from RocksDB (then offered to the cache). Returns the
/// concatenated batches and the log start and end. The first batch is read
/// even when larger than `max_bytes`, but only up to `first_batch_max`:
/// over that, nothing is read.
fn read_through_cache(
    cache: Option<&ReadCache>,
    log: &PartitionLog,
    offset: u64,
    max_bytes: usize,
    first_batch_max: usize,
) -> Result<(Bytes, u64, u64), StorageError> {
    let (plan, log_start, log_end) = log.plan_read(offset, max_bytes)?;
    if plan
        .first()
        .is_some_and(|(_, bytes)| *bytes as usize > first_batch_max)
    {
        return Ok((Bytes::new(), log_start, log_end));
    }
    let (topic_id, partition) = log.id();
    let read = |base: u64| -> Result<Bytes, StorageError> {
        let key = (topic_id, partition, base);
        if let Some(b) = cache.and_then(|c| c.get(key)) {
            return Ok(b);
        }
        let b = log.read_batch(base)?;
        if let Some(c) = cache {
            c.insert(key, b.clone());
        }
        Ok(b)
    };
    if let [(base, _)] = plan[..] {
        // One batch: hand out the cached or stored bytes without copying.
        return Ok((read(base)?, log_start, log_end));
    }
    let mut out = BytesMut::with_capacity(plan.iter().map(|(_, n)| *n as usize).sum());
    for (base, _) in plan {
        match read(base) {
            Ok(batch) => out.extend_from_slice(&batch),
            // Retention removed the rest meanwhile: serve what we have.
            Err(StorageError::OffsetOutOfRange { .. }) if !out.is_empty() => break,
            Err(e) => return Err(e),
        }
    }
    Ok((out.freeze(), log_start, log_end))
}

fn write_failure(e: WriteError) -> Failure {
    match e {
        WriteError::Rejected(code, message) => Failure::new(ErrorCode::from_u16(code), message),
        WriteError::NoLeader(_) => Failure::new(ErrorCode::LeaderNotAvailable, e.to_string()),
        other => Failure::new(ErrorCode::Unknown, other.to_string()),
    }
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

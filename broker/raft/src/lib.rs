//! Tern's replication layer, on openraft.
//!
//! Every partition is its own Raft group; the cluster catalogue is another
//! (the metadata group, id 0, with every node a voter). All groups of a node
//! share its one RocksDB ([`log_store`]) and one peer connection per remote
//! node ([`network`]). A partition group's entries *are* the partition's
//! data: its state machine ([`partition_sm`]) only indexes them.
//!
//! [`RaftNode`] ties it together for the broker: it starts the metadata
//! group, opens and closes partition groups as the catalogue says, and
//! forwards catalogue writes to the metadata leader.
//!
//! **Invariants:** a write is acknowledged only once committed — on a
//! majority of the group's voters, each of which stored it per its
//! durability mode before answering. State machines are deterministic.
//! This crate never interprets client requests.

#![warn(missing_docs, unreachable_pub)]
// openraft's storage traits fix the error type (`openraft::StorageError`, a
// large enum); our helpers return it as is rather than boxing and unboxing.
#![allow(clippy::result_large_err)]

mod catalogue_v1;
pub mod coord;
mod coord_v1;
mod coord_v2;
pub mod log_store;
pub mod meta_sm;
pub mod network;
pub mod partition_sm;
pub mod types;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{ClientWriteError, InitializeError, RaftError};
use openraft::{BasicNode, ChangeMembers, SnapshotPolicy};
use tern_storage::{partition_group, PartitionLog, Store, META_GROUP};
use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use coord::{
    CoordOp, CoordPlugins, CoordResult, CoordState, KafkaGroup, KafkaMember, KafkaRefusal,
    LockMode, LockSemantics,
};
pub use log_store::LogStore;
pub use meta_sm::{CoordView, MetaStateMachine};
pub use network::{PeerError, Transport};
pub use partition_sm::{OnApply, PartitionStateMachine};
pub use types::{
    place_replicas, place_replicas_in_racks, placement_seed, BrokerEntry, Catalogue, Command,
    CommandResponse, NodeId, PartitionMove, Raft, RebalancePlan, TernRaft, TopicEntry,
    TopicSettings, Users, KAFKA_LISTENER, RACK_BYTES_MAX, REBALANCE_CONCURRENT_MOVES_MAX,
    REBALANCE_MOVES_MAX, USERS_MAX,
};

/// Timing of every group.
#[derive(Debug, Clone)]
pub struct RaftTiming {
    /// Leader heartbeat period.
    pub heartbeat_ms: u64,
    /// Election timeout range: a follower that hears no leader for a random
    /// time in `[min, max)` starts an election.
    pub election_min_ms: u64,
    /// See `election_min_ms`.
    pub election_max_ms: u64,
}

impl Default for RaftTiming {
    fn default() -> Self {
        RaftTiming {
            heartbeat_ms: 100,
            election_min_ms: 500,
            election_max_ms: 1000,
        }
    }
}

/// Callbacks through which the replication layer reports to metrics.
#[derive(Clone)]
pub struct RaftHooks {
    /// One Raft log write: entries written, seconds taken (fsync included).
    pub on_log_write: Arc<dyn Fn(usize, f64) + Send + Sync>,
    /// One answered peer call: peer, round-trip seconds.
    pub on_peer_rtt: Arc<dyn Fn(NodeId, f64) + Send + Sync>,
    /// A snapshot was installed on a local group.
    pub on_snapshot_installed: Arc<dyn Fn() + Send + Sync>,
}

impl Default for RaftHooks {
    fn default() -> Self {
        RaftHooks {
            on_log_write: Arc::new(|_, _| {}),
            on_peer_rtt: Arc::new(|_, _| {}),
            on_snapshot_installed: Arc::new(|| {}),
        }
    }
}

/// How a node joins its cluster.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// This node.
    pub node_id: NodeId,
    /// Peers refuse nodes of another cluster name.
    pub cluster_name: String,
    /// Every voter of the metadata group: node id → peer address
    /// (`--initial-cluster`). Includes this node.
    pub initial_cluster: BTreeMap<NodeId, String>,
    /// Timing.
    pub timing: RaftTiming,
    /// Join an existing cluster (never bootstrap): the node waits until a
    /// broker of the cluster adds it (`tern cluster add-broker`).
    pub join: bool,
    /// The coordination plugins this broker runs (lock and balancer): they decide replicated
    /// state, so a broker is only added to a cluster running the same one.
    pub coord_plugins: String,
    /// Mutual TLS under the cluster CA on every peer connection, when set.
    pub tls: Option<Arc<tern_tls::TlsContext>>,
}

/// A change of the cluster's brokers (the metadata group's voters).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub enum ClusterChange {
    /// Add a broker, reachable at this peer address.
    Add(NodeId, String),
    /// Remove a broker.
    Remove(NodeId),
}

/// Why replication could not start or a group could not open.
#[derive(Debug, Error)]
pub enum RaftStartError {
    /// The configuration is inconsistent.
    #[error("cluster configuration: {0}")]
    Config(String),
    /// openraft refused to start a group.
    #[error("start raft group {group:#x}: {message}")]
    Group {
        /// The group.
        group: u64,
        /// openraft's error.
        message: String,
    },
    /// Storage failed.
    #[error("storage: {0}")]
    Storage(#[from] tern_storage::StorageError),
    /// The data directory is empty but the cluster knows this node: its
    /// data was lost. Starting would let it vote twice in a term.
    #[error(
        "this broker's data directory is empty, but broker {peer} of the cluster knows node {node}: \
         its data was lost. To bring it back empty: `tern cluster remove-broker {node}`, \
         restart it with --join, then `tern cluster add-broker {node} <its peer address>` \
         and move partitions back with `tern topic reassign`"
    )]
    DataLost {
        /// This node.
        node: NodeId,
        /// The peer that remembers it.
        peer: NodeId,
    },
}

/// Why a catalogue write failed.
#[derive(Debug, Error)]
pub enum WriteError {
    /// No leader could be reached in time.
    #[error("no metadata leader reachable within {0:?}")]
    NoLeader(Duration),
    /// The group stopped.
    #[error("metadata group failed: {0}")]
    Fatal(String),
    /// A membership change failed.
    #[error("membership change failed: {0}")]
    Membership(String),
    /// The catalogue refused the change.
    #[error("refused: {1}")]
    Rejected(u16, String),
}

/// This node's replication: the metadata group, the partition groups, the
/// peer transport.
pub struct RaftNode {
    node_id: NodeId,
    store: Store,
    transport: Arc<Transport>,
    meta: Raft,
    catalogue: watch::Receiver<Arc<Catalogue>>,
    users: watch::Receiver<Arc<Users>>,
    acls: watch::Receiver<Arc<tern_acl::AclSet>>,
    partition_config: Arc<openraft::Config>,
    initial_cluster: BTreeMap<NodeId, String>,
    hooks: RaftHooks,
    coord_plugins: String,
    coord: Arc<CoordView>,
    coord_queue: tokio::sync::mpsc::UnboundedSender<QueuedCoordOp>,
    /// Started with `--join` (not yet necessarily a member).
    joining: bool,
}

/// A coordination operation waiting for the next batch, and where its
/// outcome goes.
type QueuedCoordOp = (
    CoordOp,
    tokio::sync::oneshot::Sender<Result<Result<CoordResult, (u16, String)>, WriteError>>,
);

/// Coordination batches one node may have in flight at once.
const COORD_BATCHES_IN_FLIGHT: usize = 2;
/// Most operations in one batch (tokens number them in 16 bits).
const COORD_BATCH_OPS_MAX: usize = 1024;
/// How long one coordination batch may take to commit.
const COORD_WRITE_TIMEOUT: Duration = Duration::from_secs(10);

fn raft_config(
    cluster: &ClusterConfig,
    snapshots: SnapshotPolicy,
) -> Result<Arc<openraft::Config>, RaftStartError> {
    let config = openraft::Config {
        cluster_name: cluster.cluster_name.clone(),
        heartbeat_interval: cluster.timing.heartbeat_ms,
        election_timeout_min: cluster.timing.election_min_ms,
        election_timeout_max: cluster.timing.election_max_ms,
        install_snapshot_timeout: 5_000,
        max_payload_entries: 512,
        snapshot_policy: snapshots,
        ..Default::default()
    };
    config
        .validate()
        .map(Arc::new)
        .map_err(|e| RaftStartError::Config(e.to_string()))
}

fn members(
    ids: impl IntoIterator<Item = NodeId>,
    addrs: &BTreeMap<NodeId, String>,
) -> BTreeMap<NodeId, BasicNode> {
    ids.into_iter()
        .map(|id| {
            let addr = addrs.get(&id).cloned().unwrap_or_default();
            (id, BasicNode { addr })
        })
        .collect()
}

impl RaftNode {
    /// Starts the peer server on `peer_listener` and the metadata group; a
    /// fresh node of the initial cluster bootstraps the group (all do, with
    /// the same membership, which openraft allows).
    pub async fn start(
        cluster: ClusterConfig,
        store: Store,
        peer_listener: TcpListener,
        hooks: RaftHooks,
        plugins: Option<Arc<dyn CoordPlugins>>,
        shutdown: CancellationToken,
    ) -> Result<Arc<RaftNode>, RaftStartError> {
        if !cluster.initial_cluster.contains_key(&cluster.node_id) {
            return Err(RaftStartError::Config(format!(
                "node id {} is not in the initial cluster {:?}",
                cluster.node_id,
                cluster.initial_cluster.keys().collect::<Vec<_>>()
            )));
        }
        let transport = Transport::new(
            cluster.node_id,
            cluster.cluster_name.clone(),
            cluster
                .initial_cluster
                .iter()
                .map(|(k, v)| (*k, v.clone()))
                .collect::<HashMap<_, _>>(),
            cluster.tls.clone(),
        );
        transport.observe_rtt(hooks.on_peer_rtt.clone());
        let meta_config = raft_config(&cluster, SnapshotPolicy::LogsSinceLast(1_000))?;
        // Partition groups never snapshot on their own: their log is their
        // data, purged only by retention.
        let partition_config = raft_config(&cluster, SnapshotPolicy::Never)?;
        let log =
            LogStore::new(store.clone(), META_GROUP).with_write_hook(hooks.on_log_write.clone());
        let fresh = log
            .is_fresh()
            .map_err(|e| RaftStartError::Config(e.to_string()))?;
        let (sm, catalogue, coord, users, acls) = MetaStateMachine::open(store.clone(), plugins)
            .map_err(|e| RaftStartError::Config(e.to_string()))?;
        let meta = Raft::new(
            cluster.node_id,
            meta_config,
            network::GroupNetwork::new(transport.clone(), META_GROUP),
            log,
            sm,
        )
        .await
        .map_err(|e| RaftStartError::Group {
            group: META_GROUP,
            message: e.to_string(),
        })?;
        transport.register(META_GROUP, meta.clone());
        let (meta_view, catalogue_view) = (meta.clone(), catalogue.clone());
        transport.on_member_view(Arc::new(move || {
            let membership = meta_view.metrics().borrow().membership_config.clone();
            let addrs: HashMap<NodeId, String> = membership
                .membership()
                .nodes()
                .map(|(id, node)| (*id, node.addr.clone()))
                .collect();
            let mut members: BTreeSet<NodeId> = addrs.keys().copied().collect();
            let joined = !members.is_empty();
            members.extend(catalogue_view.borrow().brokers.keys().copied());
            network::MemberView {
                joined,
                members,
                addrs,
            }
        }));
        tokio::spawn(transport.clone().serve(peer_listener, shutdown.clone()));
        if fresh && !cluster.join {
            // A wiped data dir must not bootstrap (nor vote) as if new.
            for (&peer, _) in cluster
                .initial_cluster
                .iter()
                .filter(|(p, _)| **p != cluster.node_id)
            {
                let body = network::encode(&cluster.node_id).map_err(RaftStartError::Config)?;
                let answer = transport
                    .call(
                        peer,
                        None,
                        META_GROUP,
                        network::KIND_WAS_MEMBER,
                        body,
                        Duration::from_secs(1),
                    )
                    .await;
                if let Ok(a) = answer {
                    if network::decode::<bool>(&a) == Ok(true) {
                        shutdown.cancel();
                        return Err(RaftStartError::DataLost {
                            node: cluster.node_id,
                            peer,
                        });
                    }
                }
            }
            let m = members(
                cluster.initial_cluster.keys().copied(),
                &cluster.initial_cluster,
            );
            initialize(&meta, META_GROUP, m).await?;
            info!(
                voters = ?cluster.initial_cluster.keys().collect::<Vec<_>>(),
                "bootstrapped the metadata group"
            );
        }
        let (coord_queue, coord_rx) = tokio::sync::mpsc::unbounded_channel();
        let node = Arc::new(RaftNode {
            node_id: cluster.node_id,
            store,
            transport: transport.clone(),
            meta,
            catalogue,
            users,
            acls,
            partition_config,
            initial_cluster: cluster.initial_cluster,
            hooks,
            coord_plugins: cluster.coord_plugins.clone(),
            coord,
            coord_queue,
            joining: cluster.join,
        });
        tokio::spawn(tick_coordination(Arc::downgrade(&node), shutdown.clone()));
        tokio::spawn(batch_coordination(Arc::downgrade(&node), coord_rx));
        let plugin = cluster.coord_plugins.clone();
        transport.on_coord_plugins(Arc::new(move || plugin.clone()));
        let catalogue_view = node.catalogue.clone();
        transport.on_was_member(Arc::new(move |n| {
            catalogue_view.borrow().brokers.contains_key(&n)
        }));
        let weak = Arc::downgrade(&node);
        transport.on_cluster_change(Arc::new(move |change| {
            let node = weak.clone();
            Box::pin(async move {
                match node.upgrade() {
                    Some(n) => n
                        .change_cluster_locally(change)
                        .await
                        .map_err(|e| e.to_string()),
                    None => Err("node is stopping".to_owned()),
                }
            })
        }));
        Ok(node)
    }

    /// The peer address of `node`: from `--initial-cluster`, else from the
    /// metadata group's membership (brokers added later).
    pub fn peer_addr(&self, node: NodeId) -> Option<String> {
        if let Some(a) = self.initial_cluster.get(&node) {
            return Some(a.clone());
        }
        let m = self.meta.metrics().borrow().membership_config.clone();
        m.membership().get_node(&node).map(|n| n.addr.clone())
    }

    /// Adds or removes a broker: a membership change of the metadata group,
    /// run by its leader (forwarded there from any broker).
    pub async fn change_cluster(
        &self,
        change: ClusterChange,
        timeout: Duration,
    ) -> Result<(), WriteError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let leader = self.meta.metrics().borrow().current_leader;
            match leader {
                Some(l) if l == self.node_id => return self.change_cluster_locally(change).await,
                Some(l) => {
                    let body = network::encode(&change).map_err(WriteError::Fatal)?;
                    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                    match self
                        .transport
                        .call(
                            l,
                            None,
                            META_GROUP,
                            network::KIND_CLUSTER_CHANGE,
                            body,
                            left,
                        )
                        .await
                    {
                        Ok(answer) => {
                            return match network::decode::<Result<(), String>>(&answer) {
                                Ok(Ok(())) => Ok(()),
                                Ok(Err(e)) => Err(WriteError::Membership(
                                    e.trim_start_matches("membership change failed: ")
                                        .to_owned(),
                                )),
                                Err(e) => Err(WriteError::Fatal(e)),
                            }
                        }
                        Err(e) => {
                            warn!(leader = l, error = %e, "forwarding a cluster change failed")
                        }
                    }
                }
                None => {}
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(WriteError::NoLeader(timeout));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn change_cluster_locally(&self, change: ClusterChange) -> Result<(), WriteError> {
        let fail = |e: &dyn std::fmt::Display| WriteError::Membership(e.to_string());
        match change {
            ClusterChange::Add(node, addr) => {
                // A member keeps its address: adding it again at the same
                // address is a retried request (finish it), at another one
                // is refused — it would redirect the node's Raft traffic.
                let membership = self.meta.metrics().borrow().membership_config.clone();
                if let Some(known) = membership.membership().get_node(&node) {
                    if known.addr != addr {
                        return Err(WriteError::Membership(format!(
                            "broker {node} is already a member at {}; remove it before adding it at {addr}",
                            known.addr
                        )));
                    }
                }
                // Refuse before it becomes a voter: its coordination plugins must be
                // ours. (It may still be starting: ask for a few seconds.) The
                // address is only recorded once every check passed.
                let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
                let theirs = loop {
                    let answer = self
                        .transport
                        .call(
                            node,
                            Some(&addr),
                            META_GROUP,
                            network::KIND_COORD_PLUGINS,
                            Vec::new(),
                            Duration::from_secs(2),
                        )
                        .await;
                    match answer {
                        Ok(a) => break network::decode::<String>(&a).map_err(|e| fail(&e))?,
                        Err(e) if tokio::time::Instant::now() >= deadline => return Err(fail(&e)),
                        Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                    }
                };
                if theirs != self.coord_plugins {
                    return Err(WriteError::Membership(format!(
                        "broker {node} runs coordination plugins {theirs} but the cluster runs {}",
                        self.coord_plugins
                    )));
                }
                self.transport.set_addr(node, addr.clone());
                self.meta
                    .add_learner(node, BasicNode { addr }, true)
                    .await
                    .map_err(|e| fail(&e))?;
                self.meta
                    .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([node])), false)
                    .await
                    .map_err(|e| fail(&e))?;
                info!(node, "broker joined the cluster");
            }
            ClusterChange::Remove(node) => {
                self.meta
                    .change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([node])), false)
                    .await
                    .map_err(|e| fail(&e))?;
                info!(node, "broker left the cluster");
            }
        }
        Ok(())
    }

    /// Moves one partition to `target` brokers; `raft` must be its group on
    /// this node, the leader. The new brokers are first added to the
    /// catalogue (they open empty replicas), caught up as learners, then
    /// made the voters in one joint-consensus change; only then does the
    /// catalogue drop the old brokers, which delete their replicas.
    pub async fn move_partition(
        &self,
        raft: &Raft,
        topic: &TopicEntry,
        partition: u32,
        target: Vec<NodeId>,
        timeout: Duration,
    ) -> Result<(), WriteError> {
        let fail = |e: &dyn std::fmt::Display| WriteError::Membership(e.to_string());
        let current = topic
            .replicas
            .get(partition as usize)
            .cloned()
            .unwrap_or_default();
        let mut union = current.clone();
        union.extend(target.iter().filter(|n| !current.contains(n)));
        if union != current {
            self.set_replicas(&topic.name, partition, union, timeout)
                .await?;
        }
        // Learners are added for every target the group does not have yet —
        // judged by the group's membership, not the catalogue, so a move
        // interrupted after the catalogue listed the new brokers (a leader
        // failover) is finished by running it again.
        let in_group: BTreeSet<NodeId> = raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .nodes()
            .map(|(id, _)| *id)
            .collect();
        let deadline = tokio::time::Instant::now() + timeout;
        for node in target.iter().filter(|n| !in_group.contains(n)) {
            let addr = self
                .peer_addr(*node)
                .ok_or_else(|| WriteError::Membership(format!("no address for broker {node}")))?;
            tokio::time::timeout(timeout, raft.add_learner(*node, BasicNode { addr }, true))
                .await
                .map_err(|_| {
                    WriteError::Membership(format!("broker {node} did not catch up in {timeout:?}"))
                })?
                .map_err(|e| fail(&e))?;
        }
        // openraft's blocking add_learner may return before the learner
        // has the log; becoming a voter then would make the joint
        // configuration wait for its whole catch-up (writes stall when it
        // is needed for a majority) and would copy the data outside the
        // learner throttle. So: every new replica first catches up as a
        // learner, to within LEARNER_CAUGHT_UP_LAG entries.
        for node in target.iter().filter(|n| !current.contains(n)) {
            wait_caught_up(raft, *node, deadline).await?;
        }
        let voters: BTreeSet<NodeId> = target.iter().copied().collect();
        raft.change_membership(voters, false)
            .await
            .map_err(|e| fail(&e))?;
        self.set_replicas(&topic.name, partition, target, timeout)
            .await
    }

    async fn set_replicas(
        &self,
        name: &str,
        partition: u32,
        replicas: Vec<NodeId>,
        timeout: Duration,
    ) -> Result<(), WriteError> {
        let command = Command::SetReplicas {
            name: name.to_owned(),
            partition,
            replicas,
        };
        match self.meta_write(command, timeout).await? {
            CommandResponse::Rejected { code, message } => Err(WriteError::Rejected(code, message)),
            _ => Ok(()),
        }
    }

    /// The leaders of groups this node does not host, each as one of its
    /// replicas sees it (`asks[i]` is a group and its replicas; the answer's
    /// `i`th entry its leader, `None` if no replica named one). Replicas are
    /// asked in rounds, one call per broker per round: first each group's
    /// first other replica, then, for the groups still unanswered, the
    /// next. A cluster's Metadata request costs a few calls, not one per
    /// partition hosted elsewhere.
    pub async fn leaders_of(&self, asks: &[(u64, Vec<NodeId>)]) -> Vec<Option<NodeId>> {
        let mut leaders: Vec<Option<NodeId>> = vec![None; asks.len()];
        let others: Vec<Vec<NodeId>> = asks
            .iter()
            .map(|(_, replicas)| {
                replicas
                    .iter()
                    .copied()
                    .filter(|r| *r != self.node_id)
                    .collect()
            })
            .collect();
        let rounds = others.iter().map(Vec::len).max().unwrap_or(0);
        for round in 0..rounds {
            // Which asks go to which broker this round.
            let mut by_broker: BTreeMap<NodeId, Vec<usize>> = BTreeMap::new();
            for (i, candidates) in others.iter().enumerate() {
                if leaders[i].is_none() {
                    if let Some(broker) = candidates.get(round) {
                        by_broker.entry(*broker).or_default().push(i);
                    }
                }
            }
            if by_broker.is_empty() {
                break;
            }
            let calls = by_broker.into_iter().flat_map(|(broker, asked)| {
                asked
                    .chunks(network::LEADER_ASKS_PER_CALL_MAX)
                    .map(|chunk| (broker, chunk.to_vec()))
                    .collect::<Vec<_>>()
            });
            let answers = futures::future::join_all(calls.map(|(broker, asked)| async move {
                let groups: Vec<u64> = asked.iter().map(|i| asks[*i].0).collect();
                let answer = match network::encode(&groups) {
                    Ok(body) => self
                        .transport
                        .call(
                            broker,
                            None,
                            META_GROUP,
                            network::KIND_LEADERS_OF,
                            body,
                            Duration::from_millis(500),
                        )
                        .await
                        .ok()
                        .and_then(|a| network::decode::<Vec<Option<NodeId>>>(&a).ok()),
                    Err(_) => None,
                };
                (asked, answer)
            }))
            .await;
            for (asked, answer) in answers {
                // An answer of the wrong length is ignored whole.
                if let Some(found) = answer.filter(|a| a.len() == asked.len()) {
                    for (i, leader) in asked.into_iter().zip(found) {
                        leaders[i] = leader;
                    }
                }
            }
        }
        leaders
    }

    /// The last log index of each of `groups` at `leader`, where `leader`
    /// leads it (`None` where it does not, or did not answer within
    /// `timeout`; an older broker that does not know the question answers
    /// nothing). The preferred-leader balancer asks this before a replica
    /// campaigns: the leader grants its vote only to a log at least as long
    /// as its own. One call per [`network::LEADER_ASKS_PER_CALL_MAX`] groups.
    pub async fn log_ends_at(
        &self,
        leader: NodeId,
        groups: &[u64],
        timeout: Duration,
    ) -> Vec<Option<u64>> {
        let calls = groups
            .chunks(network::LEADER_ASKS_PER_CALL_MAX)
            .map(|chunk| async move {
                let answer = match network::encode(&chunk) {
                    Ok(body) => self
                        .transport
                        .call(
                            leader,
                            None,
                            META_GROUP,
                            network::KIND_LOG_ENDS_OF,
                            body,
                            timeout,
                        )
                        .await
                        .ok()
                        .and_then(|a| network::decode::<Vec<Option<u64>>>(&a).ok()),
                    Err(_) => None,
                };
                // An answer of the wrong length is ignored whole.
                answer
                    .filter(|a| a.len() == chunk.len())
                    .unwrap_or_else(|| vec![None; chunk.len()])
            });
        futures::future::join_all(calls)
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    /// Proposes one coordination operation: its result, or its refusal
    /// (wire code, message). Operations queued while earlier batches are in
    /// flight are proposed together as one Raft entry (group commit: one
    /// log write and fsync for all of them). Every operation is idempotent,
    /// so the forwarding retries of [`Self::meta_write`] are harmless.
    pub async fn coord_write(
        &self,
        op: CoordOp,
    ) -> Result<Result<CoordResult, (u16, String)>, WriteError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.coord_queue
            .send((op, tx))
            .map_err(|_| WriteError::Fatal("the node is stopping".into()))?;
        rx.await
            .map_err(|_| WriteError::Fatal("the node is stopping".into()))?
    }

    /// The coordination state (locks, groups) as this node has applied it.
    pub fn coord(&self) -> &Arc<CoordView> {
        &self.coord
    }

    /// Asks every other voter of the metadata group which coordination
    /// plugins it runs; `Err` names the first that runs others. Brokers that
    /// do not answer are not counted: a whole-cluster restart may switch
    /// plugins, a broker joining a running cluster may not.
    pub async fn check_plugins(&self) -> Result<(), String> {
        // A broker waiting to be added is checked by add-broker before it
        // becomes a voter. Others ask the voters they know (the initial
        // cluster while the group has not loaded its membership yet).
        let member = self
            .meta
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .next()
            .is_some();
        if self.joining && !member {
            return Ok(());
        }
        for peer in self.voters().into_iter().filter(|v| *v != self.node_id) {
            let answer = self
                .transport
                .call(
                    peer,
                    None,
                    META_GROUP,
                    network::KIND_COORD_PLUGINS,
                    Vec::new(),
                    Duration::from_secs(1),
                )
                .await;
            if let Ok(theirs) = answer.map(|a| network::decode::<String>(&a)) {
                let theirs = theirs?;
                if theirs != self.coord_plugins {
                    return Err(format!(
                        "broker {} runs coordination plugins {} but broker {peer} of the cluster runs {theirs}",
                        self.node_id, self.coord_plugins
                    ));
                }
            }
        }
        Ok(())
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// The metadata group.
    pub fn meta(&self) -> &Raft {
        &self.meta
    }

    /// The transport (for metrics and tests).
    pub fn transport(&self) -> &Arc<Transport> {
        &self.transport
    }

    /// The authorization rules as this node has applied them (cheap: an
    /// `Arc` of the indexed set, replaced on every change).
    pub fn acls(&self) -> Arc<tern_acl::AclSet> {
        self.acls.borrow().clone()
    }

    /// Follows the authorization rules.
    pub fn follow_acls(&self) -> watch::Receiver<Arc<tern_acl::AclSet>> {
        self.acls.clone()
    }

    /// Follows the catalogue.
    pub fn catalogue(&self) -> watch::Receiver<Arc<Catalogue>> {
        self.catalogue.clone()
    }

    /// The users as this node's metadata state machine last applied them.
    pub fn users(&self) -> Arc<Users> {
        self.users.borrow().clone()
    }

    /// Ids of the metadata group's voters (the brokers of the cluster).
    pub fn voters(&self) -> Vec<NodeId> {
        let m = self.meta.metrics().borrow().membership_config.clone();
        let set: BTreeSet<NodeId> = m.membership().voter_ids().collect();
        if set.is_empty() {
            self.initial_cluster.keys().copied().collect()
        } else {
            set.into_iter().collect()
        }
    }

    /// Proposes a catalogue command, forwarding it to the metadata leader
    /// when this node is not it, retrying through elections until `timeout`.
    pub async fn meta_write(
        &self,
        command: Command,
        timeout: Duration,
    ) -> Result<CommandResponse, WriteError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut command = command;
        loop {
            stamp(&self.meta, &mut command);
            let leader = match self.meta.client_write(command.clone()).await {
                Ok(r) => return Ok(r.data),
                Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => f.leader_id,
                Err(RaftError::APIError(e)) => return Err(WriteError::Fatal(e.to_string())),
                Err(RaftError::Fatal(e)) => return Err(WriteError::Fatal(e.to_string())),
            };
            if let Some(leader) = leader.filter(|l| *l != self.node_id) {
                let body = network::encode(&command).map_err(WriteError::Fatal)?;
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                match self
                    .transport
                    .call(
                        leader,
                        None,
                        META_GROUP,
                        network::KIND_META_WRITE,
                        body,
                        left,
                    )
                    .await
                {
                    Ok(answer) => {
                        type Forwarded = Result<
                            CommandResponse,
                            RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>,
                        >;
                        if let Ok(Ok(r)) = network::decode::<Forwarded>(&answer) {
                            return Ok(r);
                        }
                    }
                    Err(e) => warn!(leader, error = %e, "forwarding to the metadata leader failed"),
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(WriteError::NoLeader(timeout));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Opens this node's replica of a partition: its log, state machine and
    /// Raft group, registered with the transport. A replica that has never
    /// stored anything bootstraps the group with the catalogue's replicas.
    pub async fn open_partition(
        &self,
        topic: &TopicEntry,
        partition: u32,
        on_apply: OnApply,
    ) -> Result<(Raft, Arc<PartitionLog>), RaftStartError> {
        let group = partition_group(topic.id, partition);
        let log = Arc::new(self.store.partition_log(topic.id, partition)?);
        let log_store = LogStore::new(self.store.clone(), group)
            .with_write_hook(self.hooks.on_log_write.clone())
            .keeping_purged_entries();
        let cfg_err = |e: openraft::StorageError<NodeId>| RaftStartError::Group {
            group,
            message: e.to_string(),
        };
        let fresh = log_store.is_fresh().map_err(cfg_err)?;
        let sm = PartitionStateMachine::open(
            log.clone(),
            on_apply,
            self.hooks.on_snapshot_installed.clone(),
        )
        .map_err(cfg_err)?;
        let raft = Raft::new(
            self.node_id,
            self.partition_config.clone(),
            network::GroupNetwork::new(self.transport.clone(), group),
            log_store,
            sm,
        )
        .await
        .map_err(|e| RaftStartError::Group {
            group,
            message: e.to_string(),
        })?;
        self.transport.register(group, raft.clone());
        // Only the creation-time replicas bootstrap the group; a replica
        // added by a move waits for the leader to add it as a learner.
        let bootstrap = topic
            .initial_replicas
            .get(partition as usize)
            .cloned()
            .unwrap_or_default();
        if fresh && bootstrap.contains(&self.node_id) {
            let addrs: BTreeMap<NodeId, String> = bootstrap
                .iter()
                .filter_map(|n| self.peer_addr(*n).map(|a| (*n, a)))
                .collect();
            let preferred = bootstrap.first() == Some(&self.node_id);
            initialize(&raft, group, members(bootstrap, &addrs)).await?;
            // The first replica (spread evenly over brokers by the
            // placement) campaigns at once: leaders start balanced instead
            // of going to whichever broker's timer fires first, and a new
            // topic is writable without waiting for an election timeout.
            if preferred {
                let _ = raft.trigger().elect().await;
            }
        }
        Ok((raft, log))
    }

    /// Stops a partition group; with `drop_data`, deletes its log and state.
    pub async fn close_partition(&self, log: &PartitionLog, drop_data: bool) {
        let group = log.group();
        if let Some(raft) = self.transport.unregister(group) {
            if let Err(e) = raft.shutdown().await {
                warn!(group, error = %e, "raft group did not stop cleanly");
            }
        }
        if drop_data {
            let mut keys = log.meta_keys();
            keys.extend(log_store::meta_keys(group));
            if let Err(e) = self.store.drop_group(group, &keys) {
                warn!(group, error = %e, "could not delete a deleted partition's data");
            }
        }
    }

    /// Stops every group.
    pub async fn shutdown(&self) {
        for (_, raft) in self.transport.groups() {
            let _ = raft.shutdown().await;
        }
    }
}

/// Stamps a coordination command with this node's clock and term (the
/// metadata leader restamps what it is forwarded, so the stamp that counts
/// is always the leader's).
pub(crate) fn stamp(meta: &Raft, command: &mut Command) {
    if let Command::Coord { stamp_ms, term, .. } = command {
        *stamp_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        *term = meta.metrics().borrow().current_term;
    }
}

/// On the metadata leader, proposes a `Tick` whenever a lease or session is
/// due, so expiry happens on the replicated clock within ~20 ms.
async fn tick_coordination(node: std::sync::Weak<RaftNode>, shutdown: CancellationToken) {
    let mut interval = tokio::time::interval(Duration::from_millis(20));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = interval.tick() => {}
        }
        let Some(node) = node.upgrade() else { return };
        if node.meta.metrics().borrow().current_leader != Some(node.node_id) {
            continue;
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let due = node
            .coord
            .read(|c| c.next_deadline_ms())
            .is_some_and(|d| d <= now);
        if due {
            if let Err(e) = node.coord_write(CoordOp::Tick).await {
                warn!(error = %e, "coordination tick failed");
            }
        }
    }
}

/// Drains queued coordination operations into batches: while up to
/// [`COORD_BATCHES_IN_FLIGHT`] batches are being committed, new operations
/// wait and join the next one.
async fn batch_coordination(
    node: std::sync::Weak<RaftNode>,
    mut queue: tokio::sync::mpsc::UnboundedReceiver<QueuedCoordOp>,
) {
    let in_flight = Arc::new(tokio::sync::Semaphore::new(COORD_BATCHES_IN_FLIGHT));
    while let Some(first) = queue.recv().await {
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < COORD_BATCH_OPS_MAX {
            match queue.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        let Some(node) = node.upgrade() else { return };
        tokio::spawn(async move {
            let (ops, replies): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
            let count = ops.len();
            let command = Command::Coord {
                stamp_ms: 0,
                term: 0,
                ops,
            };
            match node.meta_write(command, COORD_WRITE_TIMEOUT).await {
                Ok(CommandResponse::Coord(answers)) if answers.len() == count => {
                    for (reply, answer) in replies.into_iter().zip(answers) {
                        let _ = reply.send(Ok(answer));
                    }
                }
                Ok(CommandResponse::Rejected { code, message }) => {
                    for reply in replies {
                        let _ = reply.send(Ok(Err((code, message.clone()))));
                    }
                }
                Ok(other) => {
                    for reply in replies {
                        let message = format!("unexpected coordination answer {other:?}");
                        let _ = reply.send(Err(WriteError::Fatal(message)));
                    }
                }
                Err(e) => {
                    let message = e.to_string();
                    for reply in replies {
                        let _ = reply.send(Err(match &e {
                            WriteError::NoLeader(t) => WriteError::NoLeader(*t),
                            _ => WriteError::Fatal(message.clone()),
                        }));
                    }
                }
            }
            drop(permit);
        });
    }
}

async fn initialize(
    raft: &Raft,
    group: u64,
    members: BTreeMap<NodeId, BasicNode>,
) -> Result<(), RaftStartError> {
    match raft.initialize(members).await {
        Ok(()) => Ok(()),
        // Already initialised (a peer's entries arrived first): fine.
        Err(RaftError::APIError(InitializeError::NotAllowed(_))) => Ok(()),
        Err(e) => Err(RaftStartError::Group {
            group,
            message: e.to_string(),
        }),
    }
}

/// Entries a learner may still lack when it counts as caught up (the rest
/// arrive within a heartbeat or two once it is a voter).
pub const LEARNER_CAUGHT_UP_LAG: u64 = 64;

/// Waits, as `raft`'s leader, until `node`'s replica holds the log to
/// within [`LEARNER_CAUGHT_UP_LAG`] entries; fails at `deadline` or when
/// this node stops leading (the move is then retried by the new leader).
async fn wait_caught_up(
    raft: &Raft,
    node: NodeId,
    deadline: tokio::time::Instant,
) -> Result<(), WriteError> {
    let mut metrics = raft.metrics();
    loop {
        let (caught_up, leading) = {
            let m = metrics.borrow_and_update();
            let last = m.last_log_index.unwrap_or(0);
            let matched = m
                .replication
                .as_ref()
                .and_then(|r| r.get(&node))
                .and_then(|l| l.as_ref())
                .map(|l| l.index);
            (
                matched.is_some_and(|i| i + LEARNER_CAUGHT_UP_LAG >= last),
                m.replication.is_some(),
            )
        };
        if caught_up {
            return Ok(());
        }
        if !leading {
            return Err(WriteError::Membership(format!(
                "lost the leadership while broker {node} caught up"
            )));
        }
        match tokio::time::timeout_at(deadline, metrics.changed()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => {
                return Err(WriteError::Membership("the group stopped".into()));
            }
            Err(_) => {
                return Err(WriteError::Membership(format!(
                    "broker {node} did not catch up by the move's deadline"
                )));
            }
        }
    }
}

//! The one Raft type configuration every group uses, and the commands its
//! log carries. Partition groups carry `Append`; the metadata group carries
//! the catalogue commands.

use std::collections::BTreeMap;
use std::io::Cursor;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// A broker's id in the cluster.
pub type NodeId = u64;

openraft::declare_raft_types!(
    /// Tern's Raft types: u64 node ids, nodes addressed by their peer address.
    pub TernRaft:
        D = Command,
        R = CommandResponse,
        NodeId = NodeId,
        Node = openraft::BasicNode,
        SnapshotData = Cursor<Vec<u8>>,
);

/// A Raft handle of any Tern group.
pub type Raft = openraft::Raft<TernRaft>;
/// An entry of any Tern group.
pub type Entry = openraft::Entry<TernRaft>;
/// A Raft log position.
pub type LogId = openraft::LogId<NodeId>;
/// A group's membership as stored.
pub type StoredMembership = openraft::StoredMembership<NodeId, openraft::BasicNode>;
/// Storage failure as openraft wants it.
pub type RaftStorageError = openraft::StorageError<NodeId>;

/// A snapshot taken when openraft asked for a builder (the state is copied
/// then, so building never races with applying); both state machines use it.
pub struct PrebuiltSnapshot(pub(crate) Result<openraft::Snapshot<TernRaft>, RaftStorageError>);

impl openraft::RaftSnapshotBuilder<TernRaft> for PrebuiltSnapshot {
    async fn build_snapshot(&mut self) -> Result<openraft::Snapshot<TernRaft>, RaftStorageError> {
        match &self.0 {
            Ok(s) => Ok(openraft::Snapshot {
                meta: s.meta.clone(),
                snapshot: Box::new(Cursor::new(s.snapshot.get_ref().clone())),
            }),
            Err(e) => Err(e.clone()),
        }
    }
}

/// Settings of a topic, as replicated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicSettings {
    /// Partition count.
    pub partitions: u32,
    /// Replicas per partition.
    pub replication_factor: u16,
    /// Time retention in ms, -1 for none.
    pub retention_ms: i64,
    /// Size retention in bytes per partition, -1 for none.
    pub retention_bytes: i64,
}

/// What a Raft entry asks the state machine to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Partition group: append one validated record batch.
    Append(Bytes),
    /// Metadata group: create a topic with this placement (`replicas[p]` are
    /// the brokers of partition `p`, decided by the proposer so applying is
    /// deterministic).
    CreateTopic {
        /// Name.
        name: String,
        /// Settings.
        settings: TopicSettings,
        /// Replicas per partition.
        replicas: Vec<Vec<NodeId>>,
    },
    /// Metadata group: set the brokers holding one partition (a replica
    /// move adds the new ones first, then drops the old ones).
    SetReplicas {
        /// Topic name.
        name: String,
        /// Partition.
        partition: u32,
        /// Its brokers from now on.
        replicas: Vec<NodeId>,
    },
    /// Metadata group: a broker left the cluster.
    RemoveBroker {
        /// The broker.
        node_id: NodeId,
    },
    /// Metadata group: delete a topic.
    DeleteTopic {
        /// Name.
        name: String,
    },
    /// Metadata group: a broker announces the address clients should use.
    RegisterBroker {
        /// The broker.
        node_id: NodeId,
        /// host:port for clients.
        client_addr: String,
        /// The coordination plugins it runs (all brokers must agree).
        coord_plugins: String,
    },
    /// Metadata group: lock and consumer-group operations (batched: every
    /// operation a broker has queued while its previous batch was in
    /// flight), stamped by the metadata leader with its clock and term when
    /// it proposed them.
    Coord {
        /// Leader wall clock, ms since the epoch.
        stamp_ms: u64,
        /// Leader term.
        term: u64,
        /// The operations, applied in order.
        ops: Vec<crate::coord::CoordOp>,
    },
    /// Metadata group: grow a topic from `from` partitions to
    /// `from + replicas.len()`, `replicas[i]` being the brokers of the new
    /// partition `from + i` (placed by the proposer, so applying is
    /// deterministic). Refused unless the topic still has id `topic_id` and
    /// exactly `from` partitions: a concurrent growth, or a deletion and
    /// re-creation, in between makes the placement stale.
    AddPartitions {
        /// Topic name.
        name: String,
        /// The topic's id when the placement was made.
        topic_id: u32,
        /// Its partition count then.
        from: u32,
        /// Replicas of each new partition.
        replicas: Vec<Vec<NodeId>>,
    },
    /// Metadata group: create a user or replace its credential.
    PutUser {
        /// Username (checked by `tern_auth::validate_username`).
        name: String,
        /// What the brokers check its exchanges against.
        credential: tern_auth::StoredCredential,
        /// Only create: an existing user is left as it is (the bootstrap
        /// user of `TERN_BOOTSTRAP_USER`, proposed at every start, must
        /// never undo a later password change).
        create_only: bool,
    },
    /// Metadata group: delete a user.
    DeleteUser {
        /// Username.
        name: String,
    },
    /// Metadata group: add an authorization rule (refused past
    /// `tern_acl::RULES_MAX` rules).
    AddAcl(tern_acl::AclRule),
    /// Metadata group: remove an authorization rule.
    RemoveAcl(tern_acl::AclRule),
    /// Metadata group: a broker announces the addresses clients should use
    /// (its native client address and those of its other listeners, such as
    /// `kafka`). Supersedes [`Command::RegisterBroker`], which older log
    /// entries still hold (applied with no other listener).
    Register {
        /// The broker.
        node_id: NodeId,
        /// host:port for native clients.
        client_addr: String,
        /// The coordination plugins it runs (all brokers must agree).
        coord_plugins: String,
        /// Other listeners' advertised `host:port` by listener name.
        listeners: BTreeMap<String, String>,
    },
    /// Metadata group: a broker declares its rack (`None`: none), proposed
    /// with every registration.
    SetRack {
        /// The broker.
        node_id: NodeId,
        /// Its rack, at most [`RACK_BYTES_MAX`] bytes.
        rack: Option<String>,
    },
    /// Metadata group: start a rebalance (refused while another runs).
    StartRebalance(RebalancePlan),
    /// Metadata group: a move of the running plan `plan_id` finished
    /// (`error: None`) or failed once (it is retried).
    RebalanceMove {
        /// The plan.
        plan_id: u64,
        /// The move's index in the plan.
        index: u32,
        /// Bytes of the partition's log copied to each new replica.
        bytes: u64,
        /// Why this attempt failed, if it did.
        error: Option<String>,
    },
    /// Metadata group: stop the running plan (moves under way finish).
    CancelRebalance {
        /// The plan.
        plan_id: u64,
    },
}

/// A state machine's answer to one command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandResponse {
    /// The batch is in the log at `base_offset` (`duplicate`: it was there
    /// already, from an earlier attempt of the same producer sequence).
    Appended {
        /// First offset of the batch.
        base_offset: u64,
        /// Whether this was a retry of a committed batch.
        duplicate: bool,
    },
    /// The command was refused; `code` is a `tern_protocol::ErrorCode`.
    Rejected {
        /// Wire error code.
        code: u16,
        /// For humans.
        message: String,
    },
    /// Done (membership, blank, catalogue changes).
    Done,
    /// Each coordination operation's outcome, in order: its result, or
    /// its refusal (wire error code, message).
    Coord(Vec<Result<crate::coord::CoordResult, (u16, String)>>),
}

/// Most users the cluster holds; creating one more is refused with
/// `LimitExceeded`.
pub const USERS_MAX: usize = 10_000;

/// The users of the cluster by name, as replicated by the metadata group.
pub type Users = BTreeMap<String, tern_auth::StoredCredential>;

/// The cluster catalogue held by the metadata group.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Catalogue {
    /// Topics by name.
    pub topics: BTreeMap<String, TopicEntry>,
    /// Next topic id (ids are never reused).
    pub next_topic_id: u32,
    /// Registered brokers.
    pub brokers: BTreeMap<NodeId, BrokerEntry>,
    /// Each broker's rack, if it declared one. (Persisted beside the
    /// catalogue, not in its layout: see `meta_sm`'s `tern-ms4`.)
    #[serde(skip)]
    pub racks: BTreeMap<NodeId, String>,
    /// The last rebalance (running, finished or cancelled). (Persisted
    /// beside the catalogue, as `racks`.)
    #[serde(skip)]
    pub rebalance: Option<RebalancePlan>,
}

/// Longest rack name, in bytes.
pub const RACK_BYTES_MAX: usize = 64;
/// Most moves one rebalance plan may hold (one per partition at most).
pub const REBALANCE_MOVES_MAX: usize = 100_000;
/// Most moves a plan may run at once, cluster-wide.
pub const REBALANCE_CONCURRENT_MOVES_MAX: u32 = 64;
/// Longest error text kept per move.
pub const REBALANCE_ERROR_BYTES_MAX: usize = 256;

/// A rebalance: the moves that bring every partition to its placement for
/// the brokers the plan was computed for. Stored in the metadata group, so
/// whichever broker leads a partition runs its move, and a failover of any
/// leader resumes the plan where it was.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RebalancePlan {
    /// Its id: the proposer's wall clock in ms at creation (unique enough:
    /// one plan runs at a time, and the id only names it in commands).
    pub id: u64,
    /// Most moves running at once, cluster-wide: the first this many moves
    /// that are not done form the window every broker works on.
    pub max_concurrent_moves: u32,
    /// Replication bandwidth to new replicas, bytes per second per broker
    /// sending them (0: unthrottled).
    pub throttle_bytes_per_sec: u64,
    /// Brokers left out of the placement (being removed).
    pub excluded: Vec<NodeId>,
    /// The moves, in the order they run.
    pub moves: Vec<PartitionMove>,
    /// Set when it was cancelled.
    pub cancelled: bool,
}

impl RebalancePlan {
    /// Whether moves are still to run.
    pub fn running(&self) -> bool {
        !self.cancelled && self.moves.iter().any(|m| !m.done)
    }

    /// Indexes of the moves that may run now: the first
    /// `max_concurrent_moves` not done yet.
    pub fn window(&self) -> impl Iterator<Item = usize> + '_ {
        self.moves
            .iter()
            .enumerate()
            .filter(|(_, m)| !m.done)
            .take(if self.cancelled {
                0
            } else {
                self.max_concurrent_moves.max(1) as usize
            })
            .map(|(i, _)| i)
    }
}

/// One partition's move in a [`RebalancePlan`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionMove {
    /// Topic.
    pub topic: String,
    /// The topic's id when planned (a topic deleted and re-created since
    /// is not moved).
    pub topic_id: u32,
    /// Partition.
    pub partition: u32,
    /// Its replicas when planned.
    pub from: Vec<NodeId>,
    /// Its replicas afterwards (the first is its preferred leader).
    pub to: Vec<NodeId>,
    /// Finished.
    pub done: bool,
    /// Bytes copied to each new replica (the partition's log when moved).
    pub bytes: u64,
    /// Failed attempts so far.
    pub failures: u32,
    /// The last failure, if any.
    pub last_error: Option<String>,
}

/// A registered broker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokerEntry {
    /// host:port for clients.
    pub client_addr: String,
    /// Its coordination plugins (lock and balancer, which decide replicated state).
    pub coord_plugins: String,
    /// Other listeners' advertised `host:port` by name ([`KAFKA_LISTENER`]).
    pub listeners: BTreeMap<String, String>,
}

/// The name of the Kafka listener in [`BrokerEntry::listeners`].
pub const KAFKA_LISTENER: &str = "kafka";

/// Most listeners a broker may register, and longest name or address:
/// registration is a metadata write every broker keeps.
pub const LISTENERS_MAX: usize = 8;
/// Longest listener name or address, in bytes.
pub const LISTENER_BYTES_MAX: usize = 255;

/// A topic in the catalogue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicEntry {
    /// Id, part of every partition's group id.
    pub id: u32,
    /// Name.
    pub name: String,
    /// Settings.
    pub settings: TopicSettings,
    /// Brokers holding each partition now.
    pub replicas: Vec<Vec<NodeId>>,
    /// Brokers that held each partition at creation: the only ones that
    /// may bootstrap its Raft group (a replica added later joins it).
    pub initial_replicas: Vec<Vec<NodeId>>,
}

/// The seed of a topic's placement: both creation and growth place
/// partition `p` with `place_replicas(placement_seed(name), p, ..)`, so a
/// grown partition lands where it would have, had the topic been created
/// that large on the same brokers.
pub fn placement_seed(name: &str) -> u32 {
    xxhash_rust::xxh3::xxh3_64(name.as_bytes()) as u32
}

/// Picks `count` distinct brokers for partition `partition` of topic
/// `topic_id` by rendezvous (highest-random-weight) hashing: each broker
/// scores `xxh3(topic, partition, broker)` and the best `count` win. Adding
/// a broker moves a partition's replica only where the newcomer outscores an
/// existing one, ~1/N of replicas; removing one moves only its own.
pub fn place_replicas(
    topic_id: u32,
    partition: u32,
    brokers: &[NodeId],
    count: usize,
) -> Vec<NodeId> {
    let mut scored: Vec<(u64, NodeId)> = brokers
        .iter()
        .map(|b| {
            let mut key = [0u8; 16];
            key[..4].copy_from_slice(&topic_id.to_le_bytes());
            key[4..8].copy_from_slice(&partition.to_le_bytes());
            key[8..].copy_from_slice(&b.to_le_bytes());
            (xxhash_rust::xxh3::xxh3_64(&key), *b)
        })
        .collect();
    scored.sort_unstable_by(|a, b| b.cmp(a));
    scored.into_iter().take(count).map(|(_, b)| b).collect()
}

/// [`place_replicas`] with racks: the same rendezvous scores, but the
/// first pass takes the best-scoring broker of each rack not used yet, so a
/// partition's replicas span `min(count, racks)` racks; a broker without a
/// rack is a rack of its own. The rest are filled by score. With no racks
/// declared this is exactly [`place_replicas`]; adding a broker still moves
/// a replica only where the newcomer outscores one (of its rack, or
/// overall), about 1/N of them.
pub fn place_replicas_in_racks(
    topic_id: u32,
    partition: u32,
    brokers: &[NodeId],
    racks: &BTreeMap<NodeId, String>,
    count: usize,
) -> Vec<NodeId> {
    let ranked = place_replicas(topic_id, partition, brokers, brokers.len());
    let rack_of = |b: &NodeId| racks.get(b).cloned().unwrap_or_else(|| format!("\0{b}"));
    let mut chosen: Vec<NodeId> = Vec::with_capacity(count);
    let mut used = std::collections::BTreeSet::new();
    for b in &ranked {
        if chosen.len() == count {
            break;
        }
        if used.insert(rack_of(b)) {
            chosen.push(*b);
        }
    }
    for b in &ranked {
        if chosen.len() == count {
            break;
        }
        if !chosen.contains(b) {
            chosen.push(*b);
        }
    }
    chosen
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn racked_placement_spans_racks_and_stays_consistent() {
        let brokers: Vec<NodeId> = (1..=6).collect();
        let racks: BTreeMap<NodeId, String> = brokers
            .iter()
            .map(|b| (*b, format!("r{}", (b - 1) / 2)))
            .collect();
        for p in 0..500 {
            let r = place_replicas_in_racks(7, p, &brokers, &racks, 3);
            let spanned: std::collections::BTreeSet<&String> =
                r.iter().map(|b| &racks[b]).collect();
            assert_eq!(spanned.len(), 3, "partition {p}: {r:?}");
            // Without racks it is plain rendezvous placement.
            assert_eq!(
                place_replicas_in_racks(7, p, &brokers, &BTreeMap::new(), 3),
                place_replicas(7, p, &brokers, 3)
            );
        }
        // Two racks for RF 3: both used, the third replica by score.
        let two: BTreeMap<NodeId, String> = brokers
            .iter()
            .map(|b| (*b, format!("r{}", b % 2)))
            .collect();
        for p in 0..100 {
            let r = place_replicas_in_racks(7, p, &brokers, &two, 3);
            let spanned: std::collections::BTreeSet<&String> = r.iter().map(|b| &two[b]).collect();
            assert_eq!((r.len(), spanned.len()), (3, 2));
        }
    }

    #[test]
    fn placement_is_stable_and_adding_a_broker_moves_about_one_in_n() {
        let three: Vec<NodeId> = vec![1, 2, 3];
        let four: Vec<NodeId> = vec![1, 2, 3, 4];
        let mut moved = 0;
        let total = 3000;
        for p in 0..1000 {
            let a = place_replicas(9, p, &three, 3);
            assert_eq!(a, place_replicas(9, p, &three, 3), "deterministic");
            let mut sorted = a.clone();
            sorted.sort();
            sorted.dedup();
            assert_eq!(sorted.len(), 3, "distinct brokers");
            let b = place_replicas(9, p, &four, 3);
            moved += a.iter().filter(|n| !b.contains(n)).count();
        }
        // Each partition has 3 of 4 slots: the newcomer takes ~3/4 of
        // partitions one replica each, i.e. ~1/4 of all replicas.
        let share = moved as f64 / total as f64;
        assert!((0.2..0.3).contains(&share), "moved share {share}");
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

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

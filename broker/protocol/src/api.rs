//! Requests and responses, and their encodings.
//!
//! A request frame body is `version u16, api u16, correlation_id u32`, then
//! the request. A response frame body is `correlation_id u32, api u16,
//! error_code u16, error_message string`, then — only when the code is 0 —
//! the response. Per-partition results carry their own error codes, so one
//! bad partition never fails a whole produce or fetch.
//!
//! Strings are `u16` length + UTF-8; byte strings are `u32` length + bytes;
//! lists are `u32` count + elements. All integers are little-endian.

use bytes::{BufMut, Bytes, BytesMut};

use crate::acl::{AclRequest, AclResponse};
use crate::auth::{UserRequest, UserResponse, SASL_BYTES_MAX};
use crate::coord::{GroupRequest, GroupResponse, LockRequest, LockResponse};
use crate::error::{DecodeError, ErrorCode};
use crate::frame::{FRAME_BYTES_MAX, PROTOCOL_VERSION};
use crate::rebalance::{RebalanceRequest, RebalanceResponse};
use crate::wire::{put_bytes, put_string, Reader};

/// Request types. Numbers are stable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum ApiKey {
    /// Append record batches.
    Produce = 0,
    /// Read record batches.
    Fetch = 1,
    /// Brokers, topics, partitions and their offsets.
    Metadata = 2,
    /// Create a topic.
    CreateTopic = 3,
    /// Delete a topic.
    DeleteTopic = 4,
    /// Find an offset by position or timestamp.
    ListOffsets = 5,
    /// Add a broker to the cluster (Raft membership of the metadata group).
    AddBroker = 6,
    /// Remove a broker from the cluster.
    RemoveBroker = 7,
    /// Move a partition's replicas to another set of brokers.
    ReassignPartition = 8,
    /// Distributed locks (see [`crate::coord`]).
    Lock = 9,
    /// Consumer groups (see [`crate::coord`]).
    Group = 10,
    /// Start authenticating: choose a SASL mechanism (see [`crate::auth`]).
    SaslHandshake = 11,
    /// One message of the chosen SASL mechanism.
    SaslAuthenticate = 12,
    /// User administration (create, change, delete, list).
    User = 13,
    /// Grow a topic to a new total partition count.
    CreatePartitions = 15,
    /// Authorization rules: add, remove, list (see [`crate::acl`]).
    Acl = 14,
    /// Ask a broker to campaign now for the partitions it is the preferred
    /// leader of (the first broker of their replica list).
    BalanceLeaders = 16,
    /// Rebalance the cluster's replicas (see [`crate::rebalance`]).
    Rebalance = 20,
}

impl ApiKey {
    /// All request types, for metrics registration.
    pub const ALL: [ApiKey; 18] = [
        ApiKey::Produce,
        ApiKey::Fetch,
        ApiKey::Metadata,
        ApiKey::CreateTopic,
        ApiKey::DeleteTopic,
        ApiKey::ListOffsets,
        ApiKey::AddBroker,
        ApiKey::RemoveBroker,
        ApiKey::ReassignPartition,
        ApiKey::Lock,
        ApiKey::Group,
        ApiKey::SaslHandshake,
        ApiKey::SaslAuthenticate,
        ApiKey::User,
        ApiKey::CreatePartitions,
        ApiKey::Acl,
        ApiKey::BalanceLeaders,
        ApiKey::Rebalance,
    ];

    fn from_u16(v: u16) -> Result<ApiKey, DecodeError> {
        ApiKey::ALL
            .into_iter()
            .find(|k| *k as u16 == v)
            .ok_or(DecodeError::UnknownApi(v))
    }

    /// Stable name, used in metric labels and logs.
    pub fn name(self) -> &'static str {
        match self {
            ApiKey::Produce => "produce",
            ApiKey::Fetch => "fetch",
            ApiKey::Metadata => "metadata",
            ApiKey::CreateTopic => "create_topic",
            ApiKey::DeleteTopic => "delete_topic",
            ApiKey::ListOffsets => "list_offsets",
            ApiKey::AddBroker => "add_broker",
            ApiKey::RemoveBroker => "remove_broker",
            ApiKey::ReassignPartition => "reassign_partition",
            ApiKey::Lock => "lock",
            ApiKey::Group => "group",
            ApiKey::SaslHandshake => "sasl_handshake",
            ApiKey::SaslAuthenticate => "sasl_authenticate",
            ApiKey::User => "user",
            ApiKey::CreatePartitions => "create_partitions",
            ApiKey::Acl => "acl",
            ApiKey::BalanceLeaders => "balance_leaders",
            ApiKey::Rebalance => "rebalance",
        }
    }
}

/// How durable a write must be before it is acknowledged.
///
/// Only `All` is a mode: the broker acknowledges every produce once its
/// Raft entry is committed, whatever the request says. Leader-only
/// acknowledgement (Kafka's `acks=1`) is not offered, because a batch's
/// offset is assigned when it is applied after the commit, so there is no
/// earlier point at which to answer with it. `tern-client` always sends `All`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Acks {
    /// Reserved wire value, accepted and treated as `All`.
    Leader = 1,
    /// Acknowledge once a majority of replicas have the batch durably.
    All = 2,
}

/// One partition's data in a produce request.
#[derive(Debug, Clone, PartialEq)]
pub struct ProducePartition {
    /// Topic name.
    pub topic: String,
    /// Partition index.
    pub partition: u32,
    /// One encoded record batch (see [`crate::record`]).
    pub batch: Bytes,
}

/// One partition's result in a produce response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProduceResult {
    /// Topic name.
    pub topic: String,
    /// Partition index.
    pub partition: u32,
    /// Outcome.
    pub error: ErrorCode,
    /// Offset given to the batch's first record (when `error` is `None`).
    pub base_offset: u64,
}

/// Most partitions one fetch may name; a longer fetch is refused whole
/// with `LimitExceeded` (so are duplicates, with `InvalidRequest`): together
/// they bound what one small request can make a broker read and send.
pub const FETCH_PARTITIONS_MAX: usize = 10_000;

/// One partition to read in a fetch request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchPartition {
    /// Topic name.
    pub topic: String,
    /// Partition index.
    pub partition: u32,
    /// First offset wanted.
    pub offset: u64,
    /// Most bytes to return for this partition. Its first batch is returned
    /// whatever its size (so a consumer never gets stuck) as long as the
    /// response's budget has room for it — or when it is the first
    /// partition the broker reads that has data (the broker rotates where it
    /// starts, so every partition gets that turn).
    pub max_bytes: u32,
}

/// One partition's data in a fetch response.
#[derive(Debug, Clone, PartialEq)]
pub struct FetchResult {
    /// Topic name.
    pub topic: String,
    /// Partition index.
    pub partition: u32,
    /// Outcome.
    pub error: ErrorCode,
    /// Offset after the last committed record.
    pub high_watermark: u64,
    /// First offset still stored (older ones were removed by retention).
    pub log_start: u64,
    /// Zero or more whole batches; the first may start before the requested
    /// offset (the client skips those records).
    pub records: Bytes,
}

/// A broker in metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerInfo {
    /// Node id.
    pub node_id: u32,
    /// Host clients connect to.
    pub host: String,
    /// Client port.
    pub port: u16,
}

/// A partition in metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionInfo {
    /// Partition index.
    pub partition: u32,
    /// Leader node id.
    pub leader: u32,
    /// Replica node ids.
    pub replicas: Vec<u32>,
    /// Replicas in sync with the leader.
    pub in_sync: Vec<u32>,
    /// First stored offset.
    pub log_start: u64,
    /// Offset after the last appended record.
    pub log_end: u64,
    /// Offset after the last committed record (what consumers may read).
    pub high_watermark: u64,
}

/// `retention_ms` value asking for the broker's configured default.
pub const RETENTION_BROKER_DEFAULT: i64 = -2;

/// Topic settings chosen at creation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicConfig {
    /// Number of partitions.
    pub partitions: u32,
    /// Copies of each partition.
    pub replication_factor: u16,
    /// Delete batches whose newest record is older than this; -1 = forever,
    /// [`RETENTION_BROKER_DEFAULT`] = the broker's default.
    pub retention_ms: i64,
    /// Delete oldest batches while a partition is larger than this; -1 = no limit.
    pub retention_bytes: i64,
}

/// A topic in metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicInfo {
    /// `None`, or `UnknownTopicOrPartition` for a requested unknown name.
    pub error: ErrorCode,
    /// Topic name.
    pub name: String,
    /// Settings.
    pub config: TopicConfig,
    /// Partitions, in index order.
    pub partitions: Vec<PartitionInfo>,
}

/// Where [`Request::ListOffsets`] should look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffsetSpec {
    /// The first stored offset.
    Earliest,
    /// The offset the next record will get.
    Latest,
    /// The first offset whose batch's newest timestamp is at or after this
    /// many ms since the epoch (or `Latest` when none is).
    Timestamp(i64),
}

impl OffsetSpec {
    fn encode(self) -> i64 {
        match self {
            OffsetSpec::Earliest => -2,
            OffsetSpec::Latest => -1,
            OffsetSpec::Timestamp(t) => t,
        }
    }
    fn decode(v: i64) -> Result<OffsetSpec, DecodeError> {
        match v {
            -2 => Ok(OffsetSpec::Earliest),
            -1 => Ok(OffsetSpec::Latest),
            t if t >= 0 => Ok(OffsetSpec::Timestamp(t)),
            t => Err(DecodeError::Invalid {
                field: "offset spec",
                detail: t.to_string(),
            }),
        }
    }
}

/// A request.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// Append batches.
    Produce {
        /// Durability wanted.
        acks: Acks,
        /// How long the broker may take before answering `RequestTimedOut`.
        timeout_ms: u32,
        /// Batches, one per partition entry.
        partitions: Vec<ProducePartition>,
    },
    /// Read batches, waiting up to `max_wait_ms` for `min_bytes`.
    Fetch {
        /// Longest wait for data, in ms.
        max_wait_ms: u32,
        /// Answer as soon as this many bytes are available.
        min_bytes: u32,
        /// Most record bytes for the whole response; only the first
        /// partition read that has data may exceed it, by at most one batch.
        max_bytes: u32,
        /// Partitions to read, each at most once, at most
        /// [`FETCH_PARTITIONS_MAX`].
        partitions: Vec<FetchPartition>,
    },
    /// Describe brokers and topics; `None` means every topic.
    Metadata {
        /// Topics wanted.
        topics: Option<Vec<String>>,
    },
    /// Create a topic.
    CreateTopic {
        /// Name (`[A-Za-z0-9._-]`, 1..=249 bytes).
        name: String,
        /// Settings.
        config: TopicConfig,
    },
    /// Delete a topic and all its data.
    DeleteTopic {
        /// Name.
        name: String,
    },
    /// Look up an offset.
    ListOffsets {
        /// Topic.
        topic: String,
        /// Partition.
        partition: u32,
        /// What to look for.
        spec: OffsetSpec,
    },
    /// Add a broker (started with `--join`) to the cluster.
    AddBroker {
        /// Its node id.
        node_id: u32,
        /// Its peer (Raft) address, `HOST:PORT`.
        peer_addr: String,
    },
    /// Remove a broker from the cluster (move its replicas away first).
    RemoveBroker {
        /// Its node id.
        node_id: u32,
    },
    /// Move a partition's replicas; sent to the partition's leader.
    ReassignPartition {
        /// Topic.
        topic: String,
        /// Partition.
        partition: u32,
        /// The brokers that will hold it.
        replicas: Vec<u32>,
    },
    /// A lock operation.
    Lock(LockRequest),
    /// A consumer-group operation.
    Group(GroupRequest),
    /// Choose the SASL mechanism of this connection's authentication.
    SaslHandshake {
        /// E.g. `SCRAM-SHA-256`.
        mechanism: String,
    },
    /// One client message of the SASL exchange.
    SaslAuthenticate {
        /// The mechanism's message, at most [`SASL_BYTES_MAX`] bytes.
        auth_bytes: Bytes,
    },
    /// A user administration operation.
    User(UserRequest),
    /// Grow a topic to `count` partitions in all (like Kafka's
    /// CreatePartitions: the new total, not the number to add). Existing
    /// partitions keep their data and replicas; keyed records of about
    /// `(count - old) / count` of the keys go to the new partitions from
    /// then on.
    CreatePartitions {
        /// Topic.
        topic: String,
        /// The new total, larger than the current count and at most
        /// `PARTITIONS_PER_TOPIC_MAX`.
        count: u32,
    },
    /// An authorization-rule operation.
    Acl(AclRequest),
    /// Make the receiving broker campaign, without its usual waiting, for
    /// the partitions whose preferred leader (the first broker of the
    /// replica list) it is but that another broker leads, where its replica
    /// is caught up. Each broker answers for its own preferred partitions:
    /// a client balances the cluster by asking every broker.
    BalanceLeaders,
    /// A rebalance operation.
    Rebalance(RebalanceRequest),
}

/// A successful response (errors of a whole request travel in the frame).
#[derive(Debug, Clone, PartialEq)]
pub enum Response {
    /// Per-partition outcome, in request order.
    Produce(Vec<ProduceResult>),
    /// Per-partition data, in request order.
    Fetch(Vec<FetchResult>),
    /// Cluster description.
    Metadata {
        /// Known brokers.
        brokers: Vec<BrokerInfo>,
        /// Node id of the controller (the metadata leader).
        controller: u32,
        /// Topics.
        topics: Vec<TopicInfo>,
    },
    /// The topic was created.
    CreateTopic,
    /// The topic was deleted.
    DeleteTopic,
    /// The broker was added.
    AddBroker,
    /// The broker was removed.
    RemoveBroker,
    /// The partition now lives on the requested replicas.
    ReassignPartition,
    /// The offset found.
    ListOffsets {
        /// The offset.
        offset: u64,
    },
    /// A lock answer.
    Lock(LockResponse),
    /// A consumer-group answer.
    Group(GroupResponse),
    /// The mechanism is accepted; these are all the broker offers.
    SaslHandshake {
        /// Mechanism names.
        mechanisms: Vec<String>,
    },
    /// The server's next message of the SASL exchange.
    SaslAuthenticate {
        /// The mechanism's message.
        auth_bytes: Bytes,
    },
    /// A user administration answer.
    User(UserResponse),
    /// The topic now has the requested partition count, and every new
    /// partition has elected a leader.
    CreatePartitions,
    /// An authorization-rule answer.
    Acl(AclResponse),
    /// What the broker found among the partitions it is the preferred
    /// leader of.
    BalanceLeaders {
        /// Partitions it is the preferred leader of that it does not lead.
        not_preferred: u32,
        /// Elections it triggered for them now (the others are led
        /// elsewhere by a replica it has not caught up with, leaderless, or
        /// wait for the broker's elections-per-second limit).
        elections: u32,
    },
    /// A rebalance plan and its progress.
    Rebalance(RebalanceResponse),
}

impl Request {
    /// The request's type.
    pub fn api_key(&self) -> ApiKey {
        match self {
            Request::Produce { .. } => ApiKey::Produce,
            Request::Fetch { .. } => ApiKey::Fetch,
            Request::Metadata { .. } => ApiKey::Metadata,
            Request::CreateTopic { .. } => ApiKey::CreateTopic,
            Request::DeleteTopic { .. } => ApiKey::DeleteTopic,
            Request::ListOffsets { .. } => ApiKey::ListOffsets,
            Request::AddBroker { .. } => ApiKey::AddBroker,
            Request::RemoveBroker { .. } => ApiKey::RemoveBroker,
            Request::ReassignPartition { .. } => ApiKey::ReassignPartition,
            Request::Lock(_) => ApiKey::Lock,
            Request::Group(_) => ApiKey::Group,
            Request::SaslHandshake { .. } => ApiKey::SaslHandshake,
            Request::SaslAuthenticate { .. } => ApiKey::SaslAuthenticate,
            Request::User(_) => ApiKey::User,
            Request::CreatePartitions { .. } => ApiKey::CreatePartitions,
            Request::Acl(_) => ApiKey::Acl,
            Request::BalanceLeaders => ApiKey::BalanceLeaders,
            Request::Rebalance(_) => ApiKey::Rebalance,
        }
    }

    fn encode_body(&self, out: &mut BytesMut) {
        match self {
            Request::Produce {
                acks,
                timeout_ms,
                partitions,
            } => {
                out.put_u8(*acks as u8);
                out.put_u32_le(*timeout_ms);
                out.put_u32_le(partitions.len() as u32);
                for p in partitions {
                    put_string(out, &p.topic);
                    out.put_u32_le(p.partition);
                    put_bytes(out, &p.batch);
                }
            }
            Request::Fetch {
                max_wait_ms,
                min_bytes,
                max_bytes,
                partitions,
            } => {
                out.put_u32_le(*max_wait_ms);
                out.put_u32_le(*min_bytes);
                out.put_u32_le(*max_bytes);
                out.put_u32_le(partitions.len() as u32);
                for p in partitions {
                    put_string(out, &p.topic);
                    out.put_u32_le(p.partition);
                    out.put_u64_le(p.offset);
                    out.put_u32_le(p.max_bytes);
                }
            }
            Request::Metadata { topics } => match topics {
                None => out.put_u8(0),
                Some(t) => {
                    out.put_u8(1);
                    out.put_u32_le(t.len() as u32);
                    for name in t {
                        put_string(out, name);
                    }
                }
            },
            Request::CreateTopic { name, config } => {
                put_string(out, name);
                encode_topic_config(out, config);
            }
            Request::DeleteTopic { name } => put_string(out, name),
            Request::ListOffsets {
                topic,
                partition,
                spec,
            } => {
                put_string(out, topic);
                out.put_u32_le(*partition);
                out.put_i64_le(spec.encode());
            }
            Request::AddBroker { node_id, peer_addr } => {
                out.put_u32_le(*node_id);
                put_string(out, peer_addr);
            }
            Request::RemoveBroker { node_id } => out.put_u32_le(*node_id),
            Request::ReassignPartition {
                topic,
                partition,
                replicas,
            } => {
                put_string(out, topic);
                out.put_u32_le(*partition);
                put_u32_list(out, replicas);
            }
            Request::Lock(l) => l.encode(out),
            Request::Group(g) => g.encode(out),
            Request::SaslHandshake { mechanism } => put_string(out, mechanism),
            Request::SaslAuthenticate { auth_bytes } => put_bytes(out, auth_bytes),
            Request::User(u) => u.encode(out),
            Request::CreatePartitions { topic, count } => {
                put_string(out, topic);
                out.put_u32_le(*count);
            }
            Request::Acl(a) => a.encode(out),
            Request::BalanceLeaders => {}
            Request::Rebalance(r) => r.encode(out),
        }
    }

    fn decode_body(api: ApiKey, r: &mut Reader) -> Result<Request, DecodeError> {
        Ok(match api {
            ApiKey::Produce => {
                let acks = match r.u8("acks")? {
                    1 => Acks::Leader,
                    2 => Acks::All,
                    other => {
                        return Err(DecodeError::Invalid {
                            field: "acks",
                            detail: other.to_string(),
                        })
                    }
                };
                let timeout_ms = r.u32("timeout_ms")?;
                let n = r.list_len("produce partitions", 2 + 4 + 4)?;
                let mut partitions = Vec::with_capacity(n);
                for _ in 0..n {
                    partitions.push(ProducePartition {
                        topic: r.string("topic")?,
                        partition: r.u32("partition")?,
                        batch: r.bytes("batch", FRAME_BYTES_MAX)?,
                    });
                }
                Request::Produce {
                    acks,
                    timeout_ms,
                    partitions,
                }
            }
            ApiKey::Fetch => {
                let max_wait_ms = r.u32("max_wait_ms")?;
                let min_bytes = r.u32("min_bytes")?;
                let max_bytes = r.u32("max_bytes")?;
                let n = r.list_len("fetch partitions", 2 + 4 + 8 + 4)?;
                let mut partitions = Vec::with_capacity(n);
                for _ in 0..n {
                    partitions.push(FetchPartition {
                        topic: r.string("topic")?,
                        partition: r.u32("partition")?,
                        offset: r.u64("offset")?,
                        max_bytes: r.u32("partition max_bytes")?,
                    });
                }
                Request::Fetch {
                    max_wait_ms,
                    min_bytes,
                    max_bytes,
                    partitions,
                }
            }
            ApiKey::Metadata => {
                let topics = if r.bool("has topics")? {
                    let n = r.list_len("metadata topics", 2)?;
                    let mut t = Vec::with_capacity(n);
                    for _ in 0..n {
                        t.push(r.string("topic")?);
                    }
                    Some(t)
                } else {
                    None
                };
                Request::Metadata { topics }
            }
            ApiKey::CreateTopic => Request::CreateTopic {
                name: r.string("topic")?,
                config: decode_topic_config(r)?,
            },
            ApiKey::DeleteTopic => Request::DeleteTopic {
                name: r.string("topic")?,
            },
            ApiKey::ListOffsets => Request::ListOffsets {
                topic: r.string("topic")?,
                partition: r.u32("partition")?,
                spec: OffsetSpec::decode(r.i64("offset spec")?)?,
            },
            ApiKey::AddBroker => Request::AddBroker {
                node_id: r.u32("node_id")?,
                peer_addr: r.string("peer_addr")?,
            },
            ApiKey::RemoveBroker => Request::RemoveBroker {
                node_id: r.u32("node_id")?,
            },
            ApiKey::ReassignPartition => Request::ReassignPartition {
                topic: r.string("topic")?,
                partition: r.u32("partition")?,
                replicas: u32_list(r, "replicas")?,
            },
            ApiKey::Lock => Request::Lock(LockRequest::decode(r)?),
            ApiKey::Group => Request::Group(GroupRequest::decode(r)?),
            ApiKey::SaslHandshake => Request::SaslHandshake {
                mechanism: r.string("mechanism")?,
            },
            ApiKey::SaslAuthenticate => Request::SaslAuthenticate {
                auth_bytes: r.bytes("auth_bytes", SASL_BYTES_MAX)?,
            },
            ApiKey::User => Request::User(UserRequest::decode(r)?),
            ApiKey::CreatePartitions => Request::CreatePartitions {
                topic: r.string("topic")?,
                count: r.u32("count")?,
            },
            ApiKey::Acl => Request::Acl(AclRequest::decode(r)?),
            ApiKey::BalanceLeaders => Request::BalanceLeaders,
            ApiKey::Rebalance => Request::Rebalance(RebalanceRequest::decode(r)?),
        })
    }
}

fn encode_topic_config(out: &mut BytesMut, c: &TopicConfig) {
    out.put_u32_le(c.partitions);
    out.put_u16_le(c.replication_factor);
    out.put_i64_le(c.retention_ms);
    out.put_i64_le(c.retention_bytes);
}

fn decode_topic_config(r: &mut Reader) -> Result<TopicConfig, DecodeError> {
    Ok(TopicConfig {
        partitions: r.u32("partitions")?,
        replication_factor: r.u16("replication_factor")?,
        retention_ms: r.i64("retention_ms")?,
        retention_bytes: r.i64("retention_bytes")?,
    })
}

fn put_u32_list(out: &mut BytesMut, v: &[u32]) {
    out.put_u32_le(v.len() as u32);
    for x in v {
        out.put_u32_le(*x);
    }
}

fn u32_list(r: &mut Reader, field: &'static str) -> Result<Vec<u32>, DecodeError> {
    let n = r.list_len(field, 4)?;
    (0..n).map(|_| r.u32(field)).collect()
}

impl Response {
    fn api_key(&self) -> ApiKey {
        match self {
            Response::Produce(_) => ApiKey::Produce,
            Response::Fetch(_) => ApiKey::Fetch,
            Response::Metadata { .. } => ApiKey::Metadata,
            Response::CreateTopic => ApiKey::CreateTopic,
            Response::DeleteTopic => ApiKey::DeleteTopic,
            Response::ListOffsets { .. } => ApiKey::ListOffsets,
            Response::AddBroker => ApiKey::AddBroker,
            Response::RemoveBroker => ApiKey::RemoveBroker,
            Response::ReassignPartition => ApiKey::ReassignPartition,
            Response::Lock(_) => ApiKey::Lock,
            Response::Group(_) => ApiKey::Group,
            Response::SaslHandshake { .. } => ApiKey::SaslHandshake,
            Response::SaslAuthenticate { .. } => ApiKey::SaslAuthenticate,
            Response::User(_) => ApiKey::User,
            Response::CreatePartitions => ApiKey::CreatePartitions,
            Response::Acl(_) => ApiKey::Acl,
            Response::BalanceLeaders { .. } => ApiKey::BalanceLeaders,
            Response::Rebalance(_) => ApiKey::Rebalance,
        }
    }

    fn encode_body(&self, out: &mut BytesMut) {
        match self {
            Response::Produce(results) => {
                out.put_u32_le(results.len() as u32);
                for p in results {
                    put_string(out, &p.topic);
                    out.put_u32_le(p.partition);
                    out.put_u16_le(p.error.as_u16());
                    out.put_u64_le(p.base_offset);
                }
            }
            Response::Fetch(results) => {
                out.put_u32_le(results.len() as u32);
                for p in results {
                    put_string(out, &p.topic);
                    out.put_u32_le(p.partition);
                    out.put_u16_le(p.error.as_u16());
                    out.put_u64_le(p.high_watermark);
                    out.put_u64_le(p.log_start);
                    put_bytes(out, &p.records);
                }
            }
            Response::Metadata {
                brokers,
                controller,
                topics,
            } => {
                out.put_u32_le(brokers.len() as u32);
                for b in brokers {
                    out.put_u32_le(b.node_id);
                    put_string(out, &b.host);
                    out.put_u16_le(b.port);
                }
                out.put_u32_le(*controller);
                out.put_u32_le(topics.len() as u32);
                for t in topics {
                    out.put_u16_le(t.error.as_u16());
                    put_string(out, &t.name);
                    encode_topic_config(out, &t.config);
                    out.put_u32_le(t.partitions.len() as u32);
                    for p in &t.partitions {
                        out.put_u32_le(p.partition);
                        out.put_u32_le(p.leader);
                        put_u32_list(out, &p.replicas);
                        put_u32_list(out, &p.in_sync);
                        out.put_u64_le(p.log_start);
                        out.put_u64_le(p.log_end);
                        out.put_u64_le(p.high_watermark);
                    }
                }
            }
            Response::CreateTopic
            | Response::DeleteTopic
            | Response::AddBroker
            | Response::RemoveBroker
            | Response::ReassignPartition
            | Response::CreatePartitions => {}
            Response::ListOffsets { offset } => out.put_u64_le(*offset),
            Response::Lock(l) => l.encode(out),
            Response::Group(g) => g.encode(out),
            Response::SaslHandshake { mechanisms } => {
                out.put_u32_le(mechanisms.len() as u32);
                for m in mechanisms {
                    put_string(out, m);
                }
            }
            Response::SaslAuthenticate { auth_bytes } => put_bytes(out, auth_bytes),
            Response::User(u) => u.encode(out),
            Response::Acl(a) => a.encode(out),
            Response::BalanceLeaders {
                not_preferred,
                elections,
            } => {
                out.put_u32_le(*not_preferred);
                out.put_u32_le(*elections);
            }
            Response::Rebalance(r) => r.encode(out),
        }
    }

    fn decode_body(api: ApiKey, r: &mut Reader) -> Result<Response, DecodeError> {
        Ok(match api {
            ApiKey::Produce => {
                let n = r.list_len("produce results", 2 + 4 + 2 + 8)?;
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(ProduceResult {
                        topic: r.string("topic")?,
                        partition: r.u32("partition")?,
                        error: ErrorCode::from_u16(r.u16("error")?),
                        base_offset: r.u64("base_offset")?,
                    });
                }
                Response::Produce(v)
            }
            ApiKey::Fetch => {
                let n = r.list_len("fetch results", 2 + 4 + 2 + 8 + 8 + 4)?;
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(FetchResult {
                        topic: r.string("topic")?,
                        partition: r.u32("partition")?,
                        error: ErrorCode::from_u16(r.u16("error")?),
                        high_watermark: r.u64("high_watermark")?,
                        log_start: r.u64("log_start")?,
                        records: r.bytes("records", FRAME_BYTES_MAX)?,
                    });
                }
                Response::Fetch(v)
            }
            ApiKey::Metadata => {
                let n = r.list_len("brokers", 4 + 2 + 2)?;
                let mut brokers = Vec::with_capacity(n);
                for _ in 0..n {
                    brokers.push(BrokerInfo {
                        node_id: r.u32("node_id")?,
                        host: r.string("host")?,
                        port: r.u16("port")?,
                    });
                }
                let controller = r.u32("controller")?;
                let n = r.list_len("topics", 2 + 2 + 26 + 4)?;
                let mut topics = Vec::with_capacity(n);
                for _ in 0..n {
                    let error = ErrorCode::from_u16(r.u16("error")?);
                    let name = r.string("topic")?;
                    let config = decode_topic_config(r)?;
                    let np = r.list_len("partitions", 4 + 4 + 4 + 4 + 24)?;
                    let mut partitions = Vec::with_capacity(np);
                    for _ in 0..np {
                        partitions.push(PartitionInfo {
                            partition: r.u32("partition")?,
                            leader: r.u32("leader")?,
                            replicas: u32_list(r, "replicas")?,
                            in_sync: u32_list(r, "in_sync")?,
                            log_start: r.u64("log_start")?,
                            log_end: r.u64("log_end")?,
                            high_watermark: r.u64("high_watermark")?,
                        });
                    }
                    topics.push(TopicInfo {
                        error,
                        name,
                        config,
                        partitions,
                    });
                }
                Response::Metadata {
                    brokers,
                    controller,
                    topics,
                }
            }
            ApiKey::CreateTopic => Response::CreateTopic,
            ApiKey::DeleteTopic => Response::DeleteTopic,
            ApiKey::AddBroker => Response::AddBroker,
            ApiKey::RemoveBroker => Response::RemoveBroker,
            ApiKey::ReassignPartition => Response::ReassignPartition,
            ApiKey::ListOffsets => Response::ListOffsets {
                offset: r.u64("offset")?,
            },
            ApiKey::Lock => Response::Lock(LockResponse::decode(r)?),
            ApiKey::Group => Response::Group(GroupResponse::decode(r)?),
            ApiKey::SaslHandshake => {
                let n = r.list_len("mechanisms", 2)?;
                let mut mechanisms = Vec::with_capacity(n);
                for _ in 0..n {
                    mechanisms.push(r.string("mechanism")?);
                }
                Response::SaslHandshake { mechanisms }
            }
            ApiKey::SaslAuthenticate => Response::SaslAuthenticate {
                auth_bytes: r.bytes("auth_bytes", SASL_BYTES_MAX)?,
            },
            ApiKey::User => Response::User(UserResponse::decode(r)?),
            ApiKey::CreatePartitions => Response::CreatePartitions,
            ApiKey::Acl => Response::Acl(AclResponse::decode(r)?),
            ApiKey::BalanceLeaders => Response::BalanceLeaders {
                not_preferred: r.u32("not_preferred")?,
                elections: r.u32("elections")?,
            },
            ApiKey::Rebalance => Response::Rebalance(RebalanceResponse::decode(r)?),
        })
    }
}

/// A request with its frame header.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestFrame {
    /// Echoed in the response so a client can pipeline requests.
    pub correlation_id: u32,
    /// The request.
    pub request: Request,
}

/// What went wrong decoding a request frame, with what is needed to answer.
#[derive(Debug)]
pub struct BadRequest {
    /// The correlation id, when the header was readable.
    pub correlation_id: Option<u32>,
    /// The request type, when known.
    pub api: Option<ApiKey>,
    /// The cause.
    pub error: DecodeError,
}

impl RequestFrame {
    /// Encodes into a frame body (without the length prefix).
    pub fn encode(&self, out: &mut BytesMut) {
        out.put_u16_le(PROTOCOL_VERSION);
        out.put_u16_le(self.request.api_key() as u16);
        out.put_u32_le(self.correlation_id);
        self.request.encode_body(out);
    }

    /// Decodes a frame body. On failure, says whether the header was readable
    /// so the broker can answer with an error instead of dropping the link.
    pub fn decode(body: Bytes) -> Result<RequestFrame, BadRequest> {
        let mut r = Reader::new(body);
        let header = (|| {
            let version = r.u16("version")?;
            let api = r.u16("api")?;
            let correlation_id = r.u32("correlation_id")?;
            Ok::<_, DecodeError>((version, api, correlation_id))
        })();
        let (version, api, correlation_id) = header.map_err(|error| BadRequest {
            correlation_id: None,
            api: None,
            error,
        })?;
        let bad = |api, error| BadRequest {
            correlation_id: Some(correlation_id),
            api,
            error,
        };
        if version != PROTOCOL_VERSION {
            return Err(bad(None, DecodeError::UnsupportedVersion(version)));
        }
        let api = ApiKey::from_u16(api).map_err(|e| bad(None, e))?;
        let request = Request::decode_body(api, &mut r).map_err(|e| bad(Some(api), e))?;
        r.finish().map_err(|e| bad(Some(api), e))?;
        Ok(RequestFrame {
            correlation_id,
            request,
        })
    }
}

/// A response with its frame header.
#[derive(Debug, Clone, PartialEq)]
pub struct ResponseFrame {
    /// Copied from the request.
    pub correlation_id: u32,
    /// The response, or the error that failed the whole request.
    pub result: Result<Response, ErrorReply>,
}

/// A whole-request failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorReply {
    /// The request type as sent (may be one this build does not know).
    pub api: u16,
    /// Why.
    pub code: ErrorCode,
    /// Human-readable detail.
    pub message: String,
}

impl ResponseFrame {
    /// Encodes into a frame body (without the length prefix).
    pub fn encode(&self, out: &mut BytesMut) {
        out.put_u32_le(self.correlation_id);
        match &self.result {
            Ok(resp) => {
                out.put_u16_le(resp.api_key() as u16);
                out.put_u16_le(ErrorCode::None.as_u16());
                put_string(out, "");
                resp.encode_body(out);
            }
            Err(e) => {
                out.put_u16_le(e.api);
                out.put_u16_le(e.code.as_u16());
                put_string(out, &e.message);
            }
        }
    }

    /// Decodes a frame body.
    pub fn decode(body: Bytes) -> Result<ResponseFrame, DecodeError> {
        let mut r = Reader::new(body);
        let correlation_id = r.u32("correlation_id")?;
        let api = r.u16("api")?;
        let code = ErrorCode::from_u16(r.u16("error")?);
        let message = r.string("error message")?;
        let result = if code == ErrorCode::None {
            Ok(Response::decode_body(ApiKey::from_u16(api)?, &mut r)?)
        } else {
            Err(ErrorReply { api, code, message })
        };
        r.finish()?;
        Ok(ResponseFrame {
            correlation_id,
            result,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(request: Request) {
        let frame = RequestFrame {
            correlation_id: 99,
            request,
        };
        let mut buf = BytesMut::new();
        frame.encode(&mut buf);
        let back = RequestFrame::decode(buf.freeze()).unwrap();
        assert_eq!(back, frame);
    }

    fn config() -> TopicConfig {
        TopicConfig {
            partitions: 3,
            replication_factor: 1,
            retention_ms: -1,
            retention_bytes: 1 << 30,
        }
    }

    #[test]
    fn rebalance_requests_and_answers_round_trip() {
        use crate::rebalance::{MoveInfo, PlanState};
        round_trip(Request::Rebalance(RebalanceRequest::Start {
            dry_run: true,
            max_concurrent_moves: 4,
            throttle_bytes_per_sec: 1 << 20,
            exclude: vec![5, 6],
        }));
        round_trip(Request::Rebalance(RebalanceRequest::Status));
        round_trip(Request::Rebalance(RebalanceRequest::Cancel));
        let answer = Response::Rebalance(RebalanceResponse {
            plan_id: 7,
            state: PlanState::Running,
            max_concurrent_moves: 2,
            throttle_bytes_per_sec: 0,
            replicas_total: 9,
            racks: vec![(1, "a".into()), (4, "b".into())],
            moves: vec![MoveInfo {
                topic: "t".into(),
                partition: 1,
                from: vec![1, 2, 3],
                to: vec![4, 2, 3],
                done: false,
                bytes: 0,
                failures: 1,
                last_error: "broker 4 did not catch up".into(),
            }],
        });
        let frame = ResponseFrame {
            correlation_id: 3,
            result: Ok(answer),
        };
        let mut buf = BytesMut::new();
        frame.encode(&mut buf);
        assert_eq!(ResponseFrame::decode(buf.freeze()).unwrap(), frame);
    }

    #[test]
    fn every_request_round_trips() {
        round_trip(Request::Produce {
            acks: Acks::All,
            timeout_ms: 5000,
            partitions: vec![ProducePartition {
                topic: "t".into(),
                partition: 2,
                batch: Bytes::from_static(b"batch"),
            }],
        });
        round_trip(Request::Fetch {
            max_wait_ms: 500,
            min_bytes: 1,
            max_bytes: 1 << 20,
            partitions: vec![FetchPartition {
                topic: "t".into(),
                partition: 0,
                offset: 7,
                max_bytes: 1024,
            }],
        });
        round_trip(Request::Metadata { topics: None });
        round_trip(Request::Metadata {
            topics: Some(vec!["a".into(), "b".into()]),
        });
        round_trip(Request::CreateTopic {
            name: "orders".into(),
            config: config(),
        });
        round_trip(Request::DeleteTopic { name: "x".into() });
        round_trip(Request::AddBroker {
            node_id: 4,
            peer_addr: "h:1".into(),
        });
        round_trip(Request::RemoveBroker { node_id: 3 });
        round_trip(Request::ReassignPartition {
            topic: "t".into(),
            partition: 2,
            replicas: vec![1, 2, 4],
        });
        round_trip(Request::ListOffsets {
            topic: "t".into(),
            partition: 1,
            spec: OffsetSpec::Timestamp(123),
        });
        round_trip(Request::CreatePartitions {
            topic: "orders".into(),
            count: 12,
        });
    }

    /// ApiKey 15 is CreatePartitions: topic string, then the new total as
    /// a `u32`; nothing may follow (strict codec), and its answer is empty.
    #[test]
    fn create_partitions_layout_is_pinned_and_strict() {
        let frame = RequestFrame {
            correlation_id: 9,
            request: Request::CreatePartitions {
                topic: "t".into(),
                count: 6,
            },
        };
        let mut buf = BytesMut::new();
        frame.encode(&mut buf);
        let mut expected = Vec::new();
        expected.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
        expected.extend_from_slice(&15u16.to_le_bytes());
        expected.extend_from_slice(&9u32.to_le_bytes());
        expected.extend_from_slice(&1u16.to_le_bytes());
        expected.push(b't');
        expected.extend_from_slice(&6u32.to_le_bytes());
        assert_eq!(&buf[..], &expected[..]);
        let mut trailing = buf.clone();
        trailing.put_u8(0);
        assert!(RequestFrame::decode(trailing.freeze()).is_err());
        let truncated = buf.split_to(buf.len() - 1);
        assert!(RequestFrame::decode(truncated.freeze()).is_err());
        let answer = ResponseFrame {
            correlation_id: 9,
            result: Ok(Response::CreatePartitions),
        };
        let mut out = BytesMut::new();
        answer.encode(&mut out);
        assert_eq!(ResponseFrame::decode(out.freeze()).unwrap(), answer);
    }

    /// ApiKey 16 is BalanceLeaders: an empty request; its answer is two
    /// `u32`s (partitions not on this preferred leader, elections started).
    #[test]
    fn balance_leaders_layout_is_pinned_and_strict() {
        let frame = RequestFrame {
            correlation_id: 7,
            request: Request::BalanceLeaders,
        };
        let mut buf = BytesMut::new();
        frame.encode(&mut buf);
        let mut expected = Vec::new();
        expected.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
        expected.extend_from_slice(&16u16.to_le_bytes());
        expected.extend_from_slice(&7u32.to_le_bytes());
        assert_eq!(&buf[..], &expected[..]);
        assert_eq!(RequestFrame::decode(buf.clone().freeze()).unwrap(), frame);
        let mut trailing = buf.clone();
        trailing.put_u8(0);
        assert!(RequestFrame::decode(trailing.freeze()).is_err());
        let answer = ResponseFrame {
            correlation_id: 7,
            result: Ok(Response::BalanceLeaders {
                not_preferred: 3,
                elections: 2,
            }),
        };
        let mut out = BytesMut::new();
        answer.encode(&mut out);
        assert_eq!(&out[out.len() - 8..], &[3, 0, 0, 0, 2, 0, 0, 0]);
        assert_eq!(ResponseFrame::decode(out.clone().freeze()).unwrap(), answer);
        let truncated = out.split_to(out.len() - 1);
        assert!(ResponseFrame::decode(truncated.freeze()).is_err());
    }

    #[test]
    fn responses_round_trip_including_errors() {
        let frames = [
            ResponseFrame {
                correlation_id: 1,
                result: Ok(Response::Metadata {
                    brokers: vec![BrokerInfo {
                        node_id: 1,
                        host: "127.0.0.1".into(),
                        port: 7070,
                    }],
                    controller: 1,
                    topics: vec![TopicInfo {
                        error: ErrorCode::None,
                        name: "t".into(),
                        config: config(),
                        partitions: vec![PartitionInfo {
                            partition: 0,
                            leader: 1,
                            replicas: vec![1],
                            in_sync: vec![1],
                            log_start: 0,
                            log_end: 10,
                            high_watermark: 10,
                        }],
                    }],
                }),
            },
            ResponseFrame {
                correlation_id: 2,
                result: Err(ErrorReply {
                    api: ApiKey::Fetch as u16,
                    code: ErrorCode::InvalidRequest,
                    message: "nope".into(),
                }),
            },
            ResponseFrame {
                correlation_id: 3,
                result: Ok(Response::Fetch(vec![FetchResult {
                    topic: "t".into(),
                    partition: 0,
                    error: ErrorCode::OffsetOutOfRange,
                    high_watermark: 5,
                    log_start: 0,
                    records: Bytes::new(),
                }])),
            },
        ];
        for f in frames {
            let mut buf = BytesMut::new();
            f.encode(&mut buf);
            assert_eq!(ResponseFrame::decode(buf.freeze()).unwrap(), f);
        }
    }

    #[test]
    fn coordination_messages_round_trip() {
        use crate::coord::*;
        let requests = [
            Request::Lock(LockRequest::Acquire {
                name: "l".into(),
                owner: 7,
                secret: u128::MAX - 1,
                mode: LockMode::Shared,
                lease_ms: 10_000,
                wait_ms: 5,
            }),
            Request::Lock(LockRequest::KeepAlive {
                name: "l".into(),
                owner: 7,
                secret: 1 << 100,
            }),
            Request::Lock(LockRequest::Release {
                name: "l".into(),
                owner: 7,
                secret: 3,
            }),
            Request::Lock(LockRequest::List),
            Request::Group(GroupRequest::Join {
                group: "g".into(),
                member: 3,
                secret: 5 << 70,
                topics: vec!["a".into(), "b".into()],
                session_timeout_ms: 6000,
            }),
            Request::Group(GroupRequest::Heartbeat {
                group: "g".into(),
                member: 3,
                secret: 6,
                generation: 9,
                wait_ms: 1000,
            }),
            Request::Group(GroupRequest::Leave {
                group: "g".into(),
                member: 3,
                secret: 7,
            }),
            Request::Group(GroupRequest::Commit {
                group: "g".into(),
                member: 3,
                secret: 8,
                generation: 9,
                offsets: vec![("a".into(), 1, 42)],
            }),
            Request::Group(GroupRequest::List),
            Request::Group(GroupRequest::Describe { group: "g".into() }),
            Request::Group(GroupRequest::ResetOffsets {
                group: "g".into(),
                offsets: vec![("a".into(), 0, 5)],
            }),
        ];
        for r in requests {
            round_trip(r);
        }
        let holder = LockHolder {
            owner: 1,
            mode: LockMode::Exclusive,
            token: 12,
            expires_ms: 99,
        };
        let responses = [
            Response::Lock(LockResponse::Granted {
                token: 12,
                expires_ms: 99,
                remaining_ms: 10,
            }),
            Response::Lock(LockResponse::Released { was_holder: true }),
            Response::Lock(LockResponse::List(vec![LockInfo {
                name: "l".into(),
                holders: vec![holder.clone()],
                waiters: vec![holder],
            }])),
            Response::Group(GroupResponse::Member {
                generation: 2,
                assignment: vec![("a".into(), 0, u64::MAX)],
            }),
            Response::Group(GroupResponse::Done),
            Response::Group(GroupResponse::List(vec!["g".into()])),
            Response::Group(GroupResponse::Describe(GroupInfo {
                group: "g".into(),
                generation: 2,
                members: vec![GroupMemberInfo {
                    member: 3,
                    topics: vec!["a".into()],
                    session_timeout_ms: 6000,
                    assignment: vec![("a".into(), 0)],
                }],
                offsets: vec![GroupOffset {
                    topic: "a".into(),
                    partition: 0,
                    committed: 4,
                    high_watermark: 10,
                }],
            })),
        ];
        for r in responses {
            let f = ResponseFrame {
                correlation_id: 5,
                result: Ok(r),
            };
            let mut buf = BytesMut::new();
            f.encode(&mut buf);
            assert_eq!(ResponseFrame::decode(buf.freeze()).unwrap(), f);
        }
    }

    #[test]
    fn authentication_messages_round_trip_and_are_bounded() {
        use crate::auth::*;
        let credential = UserCredential {
            salt: Bytes::from_static(&[1; 16]),
            iterations: 4096,
            stored_key: Bytes::from_static(&[2; 32]),
            server_key: Bytes::from_static(&[3; 32]),
        };
        for r in [
            Request::SaslHandshake {
                mechanism: "SCRAM-SHA-256".into(),
            },
            Request::SaslAuthenticate {
                auth_bytes: Bytes::from_static(b"n,,n=user,r=abc"),
            },
            Request::User(UserRequest::Upsert {
                name: "alice".into(),
                credential,
            }),
            Request::User(UserRequest::Delete {
                name: "alice".into(),
            }),
            Request::User(UserRequest::List),
        ] {
            round_trip(r);
        }
        for r in [
            Response::SaslHandshake {
                mechanisms: vec!["SCRAM-SHA-256".into()],
            },
            Response::SaslAuthenticate {
                auth_bytes: Bytes::from_static(b"v=abc"),
            },
            Response::User(UserResponse::Done),
            Response::User(UserResponse::List(vec!["a".into(), "b".into()])),
        ] {
            let f = ResponseFrame {
                correlation_id: 6,
                result: Ok(r),
            };
            let mut buf = BytesMut::new();
            f.encode(&mut buf);
            assert_eq!(ResponseFrame::decode(buf.freeze()).unwrap(), f);
        }
        let mut buf = BytesMut::new();
        RequestFrame {
            correlation_id: 1,
            request: Request::SaslAuthenticate {
                auth_bytes: Bytes::from(vec![b'a'; SASL_BYTES_MAX + 1]),
            },
        }
        .encode(&mut buf);
        let err = RequestFrame::decode(buf.freeze()).unwrap_err();
        assert!(matches!(err.error, DecodeError::TooLarge { .. }));
        assert_eq!(err.api, Some(ApiKey::SaslAuthenticate));
        assert_eq!(ApiKey::from_u16(11), Ok(ApiKey::SaslHandshake));
        assert_eq!(ApiKey::from_u16(12), Ok(ApiKey::SaslAuthenticate));
        assert_eq!(ApiKey::from_u16(13), Ok(ApiKey::User));
    }

    #[test]
    fn a_bad_body_keeps_the_correlation_id_for_the_error_reply() {
        let mut buf = BytesMut::new();
        buf.put_u16_le(PROTOCOL_VERSION);
        buf.put_u16_le(ApiKey::Fetch as u16);
        buf.put_u32_le(77);
        buf.put_u32_le(1); // max_wait only, then truncated
        let err = RequestFrame::decode(buf.freeze()).unwrap_err();
        assert_eq!(err.correlation_id, Some(77));
        assert_eq!(err.api, Some(ApiKey::Fetch));
    }

    #[test]
    fn a_forged_list_count_is_refused_before_allocating() {
        let mut buf = BytesMut::new();
        buf.put_u16_le(PROTOCOL_VERSION);
        buf.put_u16_le(ApiKey::Metadata as u16);
        buf.put_u32_le(1);
        buf.put_u8(1);
        buf.put_u32_le(u32::MAX);
        let err = RequestFrame::decode(buf.freeze()).unwrap_err();
        assert!(matches!(err.error, DecodeError::TooLarge { .. }));
    }

    #[test]
    fn unknown_api_and_version_are_typed_errors() {
        let mut buf = BytesMut::new();
        buf.put_u16_le(PROTOCOL_VERSION);
        buf.put_u16_le(999);
        buf.put_u32_le(5);
        let err = RequestFrame::decode(buf.freeze()).unwrap_err();
        assert_eq!(err.error, DecodeError::UnknownApi(999));
        let mut buf = BytesMut::new();
        buf.put_u16_le(PROTOCOL_VERSION + 1);
        buf.put_u16_le(0);
        buf.put_u32_le(5);
        let err = RequestFrame::decode(buf.freeze()).unwrap_err();
        assert_eq!(
            err.error,
            DecodeError::UnsupportedVersion(PROTOCOL_VERSION + 1)
        );
    }

    #[test]
    fn random_frames_never_panic() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        for _ in 0..50_000 {
            let len = rng.random_range(0..64);
            let mut body: Vec<u8> = (0..len).map(|_| rng.random()).collect();
            if body.len() >= 4 {
                body[0..2].copy_from_slice(&PROTOCOL_VERSION.to_le_bytes());
                body[2] = rng.random_range(0..ApiKey::ALL.len() as u8);
                body[3] = 0;
            }
            let _ = RequestFrame::decode(Bytes::from(body.clone()));
            let _ = ResponseFrame::decode(Bytes::from(body));
        }
    }
}

//! Coordination messages: distributed locks (api 9) and consumer groups
//! (api 10). Each request carries a one-byte operation, then its fields;
//! the response starts with the same operation byte.
//!
//! These are the wire types only: the replicated coordination state has its
//! own types (`tern_raft::coord`), so the protocol and the Raft log can
//! evolve separately; the broker converts between them.
//!
//! **Ownership.** An owner (lock) or member (group) id is visible to
//! anyone (`tern lock list`, `tern group describe`), so it proves nothing.
//! Every acquisition and every membership also carries a `secret`: 128
//! random bits the client picks with the id and presents on every later
//! request for it (renew, release; heartbeat, commit, leave). The cluster
//! keeps only its SHA-256 digest, with the principal of the connection that
//! acquired or joined; a request with another secret, or from another
//! principal, is refused as if it did not hold the lock (`lock_not_held`)
//! or were not a member (`unknown_member`). A retry after a lost connection
//! sends the same id and secret, so it keeps its place.
//!
//! Times on the wire are milliseconds. `expires_ms` values are on the
//! cluster's replicated clock (the metadata leader's wall clock when it
//! stamped the command), not on the client's clock; `remaining_ms` says how
//! long is left as the broker saw it when answering.

use bytes::{BufMut, BytesMut};

use crate::error::DecodeError;
use crate::wire::{put_string, Reader};

/// Lock mode on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockMode {
    /// One holder at a time.
    Exclusive,
    /// Shared with other shared holders (with a read-write lock plugin;
    /// other plugins treat it as exclusive).
    Shared,
}

/// A lock request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockRequest {
    /// Acquire `name`, waiting up to `wait_ms` (0: try once).
    Acquire {
        /// Lock name.
        name: String,
        /// Caller-chosen owner id, unique per acquisition; retrying with the
        /// same id after a lost connection keeps the place in the queue.
        owner: u64,
        /// Random secret chosen with `owner`; later requests present it.
        secret: u128,
        /// Mode.
        mode: LockMode,
        /// Lease: the lock is freed this long after the last keepalive.
        lease_ms: u64,
        /// Longest wait for the grant.
        wait_ms: u64,
    },
    /// Renew the lease of a held lock.
    KeepAlive {
        /// Lock name.
        name: String,
        /// Holder.
        owner: u64,
        /// The acquisition's secret.
        secret: u128,
    },
    /// Release a lock (or stop waiting).
    Release {
        /// Lock name.
        name: String,
        /// Holder or waiter.
        owner: u64,
        /// The acquisition's secret.
        secret: u128,
    },
    /// Every lock with a holder or waiter.
    List,
}

/// A holder or waiter in a [`LockInfo`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockHolder {
    /// Owner id.
    pub owner: u64,
    /// Mode.
    pub mode: LockMode,
    /// Fencing token (0 for a waiter).
    pub token: u64,
    /// Lease end on the replicated clock (0 for a waiter).
    pub expires_ms: u64,
}

/// One lock as `List` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockInfo {
    /// Name.
    pub name: String,
    /// Holders.
    pub holders: Vec<LockHolder>,
    /// Waiters in queue order.
    pub waiters: Vec<LockHolder>,
}

/// A lock response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockResponse {
    /// The caller holds the lock (after `Acquire` or `KeepAlive`).
    Granted {
        /// Fencing token: grows with every grant of the lock; a protected
        /// resource should refuse writes with a smaller token than it saw.
        token: u64,
        /// Lease end, replicated clock.
        expires_ms: u64,
        /// Lease left when the broker answered.
        remaining_ms: u64,
    },
    /// Released.
    Released {
        /// It held the lock (rather than waited for it).
        was_holder: bool,
    },
    /// Locks.
    List(Vec<LockInfo>),
}

/// A consumer-group request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupRequest {
    /// Join (or re-join) `group`.
    Join {
        /// Group.
        group: String,
        /// Member id, chosen by the consumer.
        member: u64,
        /// Random secret chosen with `member`; later requests present it.
        secret: u128,
        /// Topics consumed.
        topics: Vec<String>,
        /// Removed after this long without a heartbeat.
        session_timeout_ms: u64,
    },
    /// Still alive. Answered at once if the generation differs from
    /// `generation`, else after up to `wait_ms` or as soon as it changes.
    Heartbeat {
        /// Group.
        group: String,
        /// Member.
        member: u64,
        /// The membership's secret.
        secret: u128,
        /// Generation the member runs in.
        generation: u64,
        /// Longest hold of the answer.
        wait_ms: u64,
    },
    /// Leave cleanly (partitions move at once).
    Leave {
        /// Group.
        group: String,
        /// Member.
        member: u64,
        /// The membership's secret.
        secret: u128,
    },
    /// Commit next-offsets of owned partitions.
    Commit {
        /// Group.
        group: String,
        /// Member.
        member: u64,
        /// The membership's secret.
        secret: u128,
        /// Generation consumed in.
        generation: u64,
        /// `(topic, partition, next offset)`.
        offsets: Vec<(String, u32, u64)>,
    },
    /// Every group's name.
    List,
    /// One group in full.
    Describe {
        /// Group.
        group: String,
    },
    /// Set a group's committed offsets (the group must have no members;
    /// the admin client resolves "earliest"/"latest" against the leaders).
    ResetOffsets {
        /// Group.
        group: String,
        /// `(topic, partition, next offset)`.
        offsets: Vec<(String, u32, u64)>,
    },
}

/// A member in a [`GroupInfo`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupMemberInfo {
    /// Member id.
    pub member: u64,
    /// Topics.
    pub topics: Vec<String>,
    /// Session timeout.
    pub session_timeout_ms: u64,
    /// Partitions owned.
    pub assignment: Vec<(String, u32)>,
}

/// One partition's progress in a [`GroupInfo`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupOffset {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: u32,
    /// Committed next offset (`u64::MAX`: none).
    pub committed: u64,
    /// Partition's high watermark as the answering broker knows it
    /// (`u64::MAX`: unknown).
    pub high_watermark: u64,
}

/// A group as `Describe` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupInfo {
    /// Name.
    pub group: String,
    /// Generation.
    pub generation: u64,
    /// Members.
    pub members: Vec<GroupMemberInfo>,
    /// Offsets per partition.
    pub offsets: Vec<GroupOffset>,
}

/// A consumer-group response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupResponse {
    /// The member's view (after `Join` or `Heartbeat`).
    Member {
        /// Current generation.
        generation: u64,
        /// Partitions the member owns in it, with committed offsets
        /// (`u64::MAX`: none committed).
        assignment: Vec<(String, u32, u64)>,
    },
    /// Done (leave, commit, reset).
    Done,
    /// Group names.
    List(Vec<String>),
    /// One group.
    Describe(GroupInfo),
}

const OP_ACQUIRE: u8 = 1;
const OP_KEEPALIVE: u8 = 2;
const OP_RELEASE: u8 = 3;
const OP_LIST: u8 = 4;
const OP_JOIN: u8 = 1;
const OP_HEARTBEAT: u8 = 2;
const OP_LEAVE: u8 = 3;
const OP_COMMIT: u8 = 4;
const OP_GROUP_LIST: u8 = 5;
const OP_DESCRIBE: u8 = 6;
const OP_RESET: u8 = 7;
const OP_DONE: u8 = 8;

fn put_mode(out: &mut BytesMut, mode: LockMode) {
    out.put_u8(match mode {
        LockMode::Exclusive => 0,
        LockMode::Shared => 1,
    });
}

fn mode(r: &mut Reader) -> Result<LockMode, DecodeError> {
    match r.u8("lock mode")? {
        0 => Ok(LockMode::Exclusive),
        1 => Ok(LockMode::Shared),
        other => Err(invalid("lock mode", other)),
    }
}

fn invalid(field: &'static str, value: impl ToString) -> DecodeError {
    DecodeError::Invalid {
        field,
        detail: value.to_string(),
    }
}

fn put_strings(out: &mut BytesMut, v: &[String]) {
    out.put_u32_le(v.len() as u32);
    for s in v {
        put_string(out, s);
    }
}

fn strings(r: &mut Reader, field: &'static str) -> Result<Vec<String>, DecodeError> {
    let n = r.list_len(field, 2)?;
    (0..n).map(|_| r.string(field)).collect()
}

fn put_holders(out: &mut BytesMut, v: &[LockHolder]) {
    out.put_u32_le(v.len() as u32);
    for h in v {
        out.put_u64_le(h.owner);
        put_mode(out, h.mode);
        out.put_u64_le(h.token);
        out.put_u64_le(h.expires_ms);
    }
}

fn holders(r: &mut Reader) -> Result<Vec<LockHolder>, DecodeError> {
    let n = r.list_len("lock holders", 25)?;
    (0..n)
        .map(|_| {
            Ok(LockHolder {
                owner: r.u64("owner")?,
                mode: mode(r)?,
                token: r.u64("token")?,
                expires_ms: r.u64("expires_ms")?,
            })
        })
        .collect()
}

fn put_offsets(out: &mut BytesMut, v: &[(String, u32, u64)]) {
    out.put_u32_le(v.len() as u32);
    for (t, p, o) in v {
        put_string(out, t);
        out.put_u32_le(*p);
        out.put_u64_le(*o);
    }
}

fn offsets(r: &mut Reader) -> Result<Vec<(String, u32, u64)>, DecodeError> {
    let n = r.list_len("offsets", 14)?;
    (0..n)
        .map(|_| Ok((r.string("topic")?, r.u32("partition")?, r.u64("offset")?)))
        .collect()
}

fn put_partitions(out: &mut BytesMut, v: &[(String, u32)]) {
    out.put_u32_le(v.len() as u32);
    for (t, p) in v {
        put_string(out, t);
        out.put_u32_le(*p);
    }
}

fn partitions(r: &mut Reader) -> Result<Vec<(String, u32)>, DecodeError> {
    let n = r.list_len("partitions", 6)?;
    (0..n)
        .map(|_| Ok((r.string("topic")?, r.u32("partition")?)))
        .collect()
}

impl LockRequest {
    pub(crate) fn encode(&self, out: &mut BytesMut) {
        match self {
            LockRequest::Acquire {
                name,
                owner,
                secret,
                mode,
                lease_ms,
                wait_ms,
            } => {
                out.put_u8(OP_ACQUIRE);
                put_string(out, name);
                out.put_u64_le(*owner);
                out.put_u128_le(*secret);
                put_mode(out, *mode);
                out.put_u64_le(*lease_ms);
                out.put_u64_le(*wait_ms);
            }
            LockRequest::KeepAlive {
                name,
                owner,
                secret,
            } => {
                out.put_u8(OP_KEEPALIVE);
                put_string(out, name);
                out.put_u64_le(*owner);
                out.put_u128_le(*secret);
            }
            LockRequest::Release {
                name,
                owner,
                secret,
            } => {
                out.put_u8(OP_RELEASE);
                put_string(out, name);
                out.put_u64_le(*owner);
                out.put_u128_le(*secret);
            }
            LockRequest::List => out.put_u8(OP_LIST),
        }
    }

    pub(crate) fn decode(r: &mut Reader) -> Result<LockRequest, DecodeError> {
        Ok(match r.u8("lock op")? {
            OP_ACQUIRE => LockRequest::Acquire {
                name: r.string("lock name")?,
                owner: r.u64("owner")?,
                secret: r.u128("secret")?,
                mode: mode(r)?,
                lease_ms: r.u64("lease_ms")?,
                wait_ms: r.u64("wait_ms")?,
            },
            OP_KEEPALIVE => LockRequest::KeepAlive {
                name: r.string("lock name")?,
                owner: r.u64("owner")?,
                secret: r.u128("secret")?,
            },
            OP_RELEASE => LockRequest::Release {
                name: r.string("lock name")?,
                owner: r.u64("owner")?,
                secret: r.u128("secret")?,
            },
            OP_LIST => LockRequest::List,
            other => return Err(invalid("lock op", other)),
        })
    }
}

impl LockResponse {
    pub(crate) fn encode(&self, out: &mut BytesMut) {
        match self {
            LockResponse::Granted {
                token,
                expires_ms,
                remaining_ms,
            } => {
                out.put_u8(OP_ACQUIRE);
                out.put_u64_le(*token);
                out.put_u64_le(*expires_ms);
                out.put_u64_le(*remaining_ms);
            }
            LockResponse::Released { was_holder } => {
                out.put_u8(OP_RELEASE);
                out.put_u8(u8::from(*was_holder));
            }
            LockResponse::List(locks) => {
                out.put_u8(OP_LIST);
                out.put_u32_le(locks.len() as u32);
                for l in locks {
                    put_string(out, &l.name);
                    put_holders(out, &l.holders);
                    put_holders(out, &l.waiters);
                }
            }
        }
    }

    pub(crate) fn decode(r: &mut Reader) -> Result<LockResponse, DecodeError> {
        Ok(match r.u8("lock op")? {
            OP_ACQUIRE => LockResponse::Granted {
                token: r.u64("token")?,
                expires_ms: r.u64("expires_ms")?,
                remaining_ms: r.u64("remaining_ms")?,
            },
            OP_RELEASE => LockResponse::Released {
                was_holder: r.bool("was_holder")?,
            },
            OP_LIST => {
                let n = r.list_len("locks", 10)?;
                let mut locks = Vec::with_capacity(n);
                for _ in 0..n {
                    locks.push(LockInfo {
                        name: r.string("lock name")?,
                        holders: holders(r)?,
                        waiters: holders(r)?,
                    });
                }
                LockResponse::List(locks)
            }
            other => return Err(invalid("lock op", other)),
        })
    }
}

impl GroupRequest {
    pub(crate) fn encode(&self, out: &mut BytesMut) {
        match self {
            GroupRequest::Join {
                group,
                member,
                secret,
                topics,
                session_timeout_ms,
            } => {
                out.put_u8(OP_JOIN);
                put_string(out, group);
                out.put_u64_le(*member);
                out.put_u128_le(*secret);
                put_strings(out, topics);
                out.put_u64_le(*session_timeout_ms);
            }
            GroupRequest::Heartbeat {
                group,
                member,
                secret,
                generation,
                wait_ms,
            } => {
                out.put_u8(OP_HEARTBEAT);
                put_string(out, group);
                out.put_u64_le(*member);
                out.put_u128_le(*secret);
                out.put_u64_le(*generation);
                out.put_u64_le(*wait_ms);
            }
            GroupRequest::Leave {
                group,
                member,
                secret,
            } => {
                out.put_u8(OP_LEAVE);
                put_string(out, group);
                out.put_u64_le(*member);
                out.put_u128_le(*secret);
            }
            GroupRequest::Commit {
                group,
                member,
                secret,
                generation,
                offsets,
            } => {
                out.put_u8(OP_COMMIT);
                put_string(out, group);
                out.put_u64_le(*member);
                out.put_u128_le(*secret);
                out.put_u64_le(*generation);
                put_offsets(out, offsets);
            }
            GroupRequest::List => out.put_u8(OP_GROUP_LIST),
            GroupRequest::Describe { group } => {
                out.put_u8(OP_DESCRIBE);
                put_string(out, group);
            }
            GroupRequest::ResetOffsets { group, offsets } => {
                out.put_u8(OP_RESET);
                put_string(out, group);
                put_offsets(out, offsets);
            }
        }
    }

    pub(crate) fn decode(r: &mut Reader) -> Result<GroupRequest, DecodeError> {
        Ok(match r.u8("group op")? {
            OP_JOIN => GroupRequest::Join {
                group: r.string("group")?,
                member: r.u64("member")?,
                secret: r.u128("secret")?,
                topics: strings(r, "topics")?,
                session_timeout_ms: r.u64("session_timeout_ms")?,
            },
            OP_HEARTBEAT => GroupRequest::Heartbeat {
                group: r.string("group")?,
                member: r.u64("member")?,
                secret: r.u128("secret")?,
                generation: r.u64("generation")?,
                wait_ms: r.u64("wait_ms")?,
            },
            OP_LEAVE => GroupRequest::Leave {
                group: r.string("group")?,
                member: r.u64("member")?,
                secret: r.u128("secret")?,
            },
            OP_COMMIT => GroupRequest::Commit {
                group: r.string("group")?,
                member: r.u64("member")?,
                secret: r.u128("secret")?,
                generation: r.u64("generation")?,
                offsets: offsets(r)?,
            },
            OP_GROUP_LIST => GroupRequest::List,
            OP_DESCRIBE => GroupRequest::Describe {
                group: r.string("group")?,
            },
            OP_RESET => GroupRequest::ResetOffsets {
                group: r.string("group")?,
                offsets: offsets(r)?,
            },
            other => return Err(invalid("group op", other)),
        })
    }
}

impl GroupResponse {
    pub(crate) fn encode(&self, out: &mut BytesMut) {
        match self {
            GroupResponse::Member {
                generation,
                assignment,
            } => {
                out.put_u8(OP_JOIN);
                out.put_u64_le(*generation);
                put_offsets(out, assignment);
            }
            GroupResponse::Done => out.put_u8(OP_DONE),
            GroupResponse::List(names) => {
                out.put_u8(OP_GROUP_LIST);
                put_strings(out, names);
            }
            GroupResponse::Describe(g) => {
                out.put_u8(OP_DESCRIBE);
                put_string(out, &g.group);
                out.put_u64_le(g.generation);
                out.put_u32_le(g.members.len() as u32);
                for m in &g.members {
                    out.put_u64_le(m.member);
                    put_strings(out, &m.topics);
                    out.put_u64_le(m.session_timeout_ms);
                    put_partitions(out, &m.assignment);
                }
                out.put_u32_le(g.offsets.len() as u32);
                for o in &g.offsets {
                    put_string(out, &o.topic);
                    out.put_u32_le(o.partition);
                    out.put_u64_le(o.committed);
                    out.put_u64_le(o.high_watermark);
                }
            }
        }
    }

    pub(crate) fn decode(r: &mut Reader) -> Result<GroupResponse, DecodeError> {
        Ok(match r.u8("group op")? {
            OP_JOIN => GroupResponse::Member {
                generation: r.u64("generation")?,
                assignment: offsets(r)?,
            },
            OP_DONE => GroupResponse::Done,
            OP_GROUP_LIST => GroupResponse::List(strings(r, "groups")?),
            OP_DESCRIBE => {
                let group = r.string("group")?;
                let generation = r.u64("generation")?;
                let n = r.list_len("members", 24)?;
                let mut members = Vec::with_capacity(n);
                for _ in 0..n {
                    members.push(GroupMemberInfo {
                        member: r.u64("member")?,
                        topics: strings(r, "topics")?,
                        session_timeout_ms: r.u64("session_timeout_ms")?,
                        assignment: partitions(r)?,
                    });
                }
                let n = r.list_len("group offsets", 22)?;
                let mut offsets = Vec::with_capacity(n);
                for _ in 0..n {
                    offsets.push(GroupOffset {
                        topic: r.string("topic")?,
                        partition: r.u32("partition")?,
                        committed: r.u64("committed")?,
                        high_watermark: r.u64("high_watermark")?,
                    });
                }
                GroupResponse::Describe(GroupInfo {
                    group,
                    generation,
                    members,
                    offsets,
                })
            }
            other => return Err(invalid("group op", other)),
        })
    }
}

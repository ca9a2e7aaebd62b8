//! Kafka consumer groups: the typed API the Kafka listener's group
//! handlers call (`JoinGroup`, `SyncGroup`, `Heartbeat`, `LeaveGroup`,
//! `OffsetCommit`, `OffsetFetch`, `ListGroups`, `DescribeGroups`). It knows
//! nothing of Kafka's wire format: requests come in as plain values, and
//! every refusal is a [`KafkaGroupError`] the listener maps to the Kafka
//! error of the same name.
//!
//! The group state lives in the same replicated `GroupRecord` as Tern's own
//! groups (`tern_raft::coord`): one name space, one generation count, one
//! set of committed offsets, so `tern group describe` and a Kafka
//! `OffsetFetch` read the same offsets. A group holds Tern or Kafka members,
//! never both.
//!
//! Waiting: Kafka's coordinator holds `JoinGroup` answers until every member
//! has joined the new generation, and `SyncGroup` answers until the leader
//! sent the assignments. Both holds are here, on this broker's applied copy
//! of the coordination state (like the native heartbeat hold), bounded by
//! the member's rebalance timeout and [`KAFKA_JOIN_WAIT_MS_MAX`] /
//! [`KAFKA_SYNC_WAIT_MS_MAX`]; while held, the member's session is renewed
//! by re-proposing its (idempotent) join or sync.
//!
//! Ownership: Kafka member ids are bearer secrets (random, made up by the
//! broker), so a member's [`Proof`] is the SHA-256 of its id and the
//! session's principal: another principal that learns the id still cannot
//! act for the member.
//!
//! Must never: decide anything about a group itself — every decision is
//! the state machine's, so all replicas agree.

use std::ops::RangeInclusive;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tern_acl::{Operation, Resource};
use tern_protocol::ErrorCode;
use tern_raft::coord::{kafka_generation, KafkaRefusal, Proof};
use tern_raft::{CoordOp, CoordResult, CoordState};
use tracing::{debug, instrument};

use super::coordination::check_name;
use super::{Broker, Failure};
use crate::session::Session;

/// Shortest and longest Kafka session (Kafka's brokers default to
/// 6 s..=30 min; clients default to 45 s).
pub const KAFKA_SESSION_MS_RANGE: RangeInclusive<u64> = 1_000..=1_800_000;
/// Longest rebalance timeout kept (Kafka Streams used to send
/// `i32::MAX`); longer ones are cut to it.
pub const KAFKA_REBALANCE_MS_MAX: u64 = 1_800_000;
/// Longest a `JoinGroup` answer is held waiting for the other members.
pub const KAFKA_JOIN_WAIT_MS_MAX: u64 = 60_000;
/// Longest a `SyncGroup` answer is held waiting for the leader.
pub const KAFKA_SYNC_WAIT_MS_MAX: u64 = 60_000;

/// A `JoinGroup` request.
#[derive(Debug, Clone)]
pub struct KafkaJoinRequest {
    /// Group id.
    pub group: String,
    /// Member id; empty for a consumer joining for the first time (the
    /// broker makes one up).
    pub member_id: String,
    /// Kafka client id.
    pub client_id: String,
    /// Client address, as Kafka shows it (`/127.0.0.1`).
    pub client_host: String,
    /// `consumer` for consumers.
    pub protocol_type: String,
    /// (protocol name, metadata), most preferred first.
    pub protocols: Vec<(String, Bytes)>,
    /// Session timeout.
    pub session_timeout_ms: u64,
    /// Rebalance timeout (the session timeout for JoinGroup v0).
    pub rebalance_timeout_ms: u64,
}

/// A `JoinGroup` answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaJoined {
    /// Generation.
    pub generation: i32,
    /// The protocol every member supports.
    pub protocol: String,
    /// The leader's member id.
    pub leader: String,
    /// The caller's member id (made up if it sent none).
    pub member_id: String,
    /// (member id, metadata for `protocol`), for the leader only.
    pub members: Vec<(String, Bytes)>,
}

/// A group as `DescribeGroups` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaGroupDescription {
    /// Group id.
    pub group: String,
    /// `Empty`, `PreparingRebalance`, `CompletingRebalance` or `Stable`.
    pub state: String,
    /// `consumer` (or what its members joined with); `tern` for a group of
    /// Tern consumers.
    pub protocol_type: String,
    /// The chosen protocol (empty without members).
    pub protocol: String,
    /// Generation.
    pub generation: i32,
    /// Members in id order.
    pub members: Vec<KafkaMemberDescription>,
}

/// A member as `DescribeGroups` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaMemberDescription {
    /// Member id (a Tern member's id in hex).
    pub member_id: String,
    /// Kafka client id (empty for Tern members).
    pub client_id: String,
    /// Client address (empty for Tern members).
    pub client_host: String,
    /// Its metadata for the chosen protocol.
    pub metadata: Bytes,
    /// Its assignment (empty until the leader sent it).
    pub assignment: Bytes,
}

/// Why a Kafka group request failed; each maps to the Kafka error of its
/// name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KafkaGroupError {
    /// No such member: join again without a member id.
    #[error("unknown member")]
    UnknownMember,
    /// Not the member's generation.
    #[error("illegal generation")]
    IllegalGeneration,
    /// The group is rebalancing: join again.
    #[error("rebalance in progress")]
    RebalanceInProgress,
    /// No protocol in common, another protocol type, or a Tern group.
    #[error("inconsistent group protocol")]
    InconsistentGroupProtocol,
    /// Outside [`KAFKA_SESSION_MS_RANGE`].
    #[error("invalid session timeout")]
    InvalidSessionTimeout,
    /// A coordination limit (`GROUPS_MAX`, `GROUP_MEMBERS_MAX`,
    /// `KAFKA_MEMBER_BYTES_MAX`, `KAFKA_GROUP_BYTES_MAX`).
    #[error("group full: {0}")]
    GroupFull(String),
    /// A malformed request (bad group id, empty protocol list, ...).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// A commit names a partition that does not exist.
    #[error("unknown topic or partition: {0}")]
    UnknownTopicOrPartition(String),
    /// No metadata leader, a timeout, no coordination plugins: retriable.
    #[error("coordinator unavailable: {0}")]
    CoordinatorUnavailable(String),
    /// The ACL rules do not allow it.
    #[error("not authorized: {0}")]
    NotAuthorized(String),
}

impl From<Failure> for KafkaGroupError {
    fn from(f: Failure) -> KafkaGroupError {
        match f.code {
            ErrorCode::UnknownMember => KafkaGroupError::UnknownMember,
            ErrorCode::IllegalGeneration => KafkaGroupError::IllegalGeneration,
            ErrorCode::LimitExceeded => KafkaGroupError::GroupFull(f.message),
            ErrorCode::AccessDenied => KafkaGroupError::NotAuthorized(f.message),
            ErrorCode::UnknownTopicOrPartition => {
                KafkaGroupError::UnknownTopicOrPartition(f.message)
            }
            ErrorCode::InvalidRequest => KafkaGroupError::InvalidRequest(f.message),
            // No leader, a write that timed out or failed, no plugins
            // loaded: nothing the request itself did wrong.
            _ => KafkaGroupError::CoordinatorUnavailable(f.message),
        }
    }
}

fn refused(refusal: KafkaRefusal, message: &str) -> KafkaGroupError {
    debug!(?refusal, message, "Kafka group request refused");
    match refusal {
        KafkaRefusal::UnknownMember => KafkaGroupError::UnknownMember,
        KafkaRefusal::IllegalGeneration => KafkaGroupError::IllegalGeneration,
        KafkaRefusal::RebalanceInProgress => KafkaGroupError::RebalanceInProgress,
        KafkaRefusal::InconsistentGroupProtocol => KafkaGroupError::InconsistentGroupProtocol,
    }
}

fn unexpected(answer: CoordResult) -> KafkaGroupError {
    KafkaGroupError::CoordinatorUnavailable(format!("unexpected group answer {answer:?}"))
}

/// What a request acting as `member_id` on `session` proves: the id is the
/// member's secret, bound to the connection's principal.
fn kafka_proof(session: &Session, member_id: &str) -> Proof {
    let digest = ring::digest::digest(&ring::digest::SHA256, member_id.as_bytes());
    let mut bytes = [0u8; 32];
    bytes.copy_from_slice(digest.as_ref());
    Proof {
        digest: bytes,
        principal: session.principal().map(|p| p.to_string()),
    }
}

/// A new member id, `<client id>-<128 random bits as a UUID>` like Kafka's.
fn new_member_id(client_id: &str) -> Result<String, KafkaGroupError> {
    let mut random = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut random).map_err(
        |_| KafkaGroupError::CoordinatorUnavailable("no randomness for a member id".into()),
    )?;
    let hex: String = random.iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!(
        "{client_id}-{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    ))
}

/// How long to wait at most before renewing a held member's session.
fn renew_every(session_timeout_ms: u64) -> Duration {
    Duration::from_millis((session_timeout_ms / 3).max(100))
}

/// Where a held join stands, read from the applied state.
enum JoinView {
    /// The member was removed (session or rebalance timeout).
    Gone,
    /// The group moved to a generation the member has not joined.
    Behind,
    /// Some members have not joined this generation yet.
    Waiting,
    /// Every member has joined this generation.
    Complete,
}

fn join_view(c: &CoordState, group: &str, member_id: &str) -> JoinView {
    let Some((generation, k)) = c
        .groups
        .get(group)
        .and_then(|g| Some((g.generation, g.kafka.as_ref()?)))
    else {
        return JoinView::Gone;
    };
    match k.members.get(member_id) {
        None => JoinView::Gone,
        Some(m) if m.generation < generation => JoinView::Behind,
        Some(_) if k.members.values().all(|m| m.generation == generation) => JoinView::Complete,
        Some(_) => JoinView::Waiting,
    }
}

impl Broker {
    /// Proposes one Kafka group command.
    async fn kafka_write(&self, op: CoordOp) -> Result<CoordResult, KafkaGroupError> {
        Ok(self.coord_write(op).await?)
    }

    /// Refuses unless `session` may `Consume` `group` and `topics`.
    fn kafka_authorize<'a>(
        &self,
        session: &Session,
        group: &str,
        topics: impl IntoIterator<Item = &'a str>,
    ) -> Result<(), KafkaGroupError> {
        let Some(acls) = self.acls() else {
            return Ok(());
        };
        if !self.allows(&acls, session, Resource::Group(group), Operation::Consume) {
            return Err(KafkaGroupError::NotAuthorized(format!("group {group:?}")));
        }
        for topic in topics {
            if !self.allows(&acls, session, Resource::Topic(topic), Operation::Consume) {
                return Err(KafkaGroupError::NotAuthorized(format!("topic {topic:?}")));
            }
        }
        Ok(())
    }

    /// `JoinGroup`: joins (or re-joins) `req.member_id`, or a new member if
    /// it is empty, and answers once every member has joined the
    /// generation (or the rebalance timeout, at most
    /// [`KAFKA_JOIN_WAIT_MS_MAX`], passed: then with the members that did).
    #[instrument(level = "debug", skip_all, fields(group = %req.group))]
    pub async fn kafka_join(
        &self,
        session: &Session,
        req: KafkaJoinRequest,
    ) -> Result<KafkaJoined, KafkaGroupError> {
        check_name("group", &req.group)?;
        if !KAFKA_SESSION_MS_RANGE.contains(&req.session_timeout_ms) {
            return Err(KafkaGroupError::InvalidSessionTimeout);
        }
        if req.protocol_type.is_empty() || req.protocols.is_empty() {
            return Err(KafkaGroupError::InconsistentGroupProtocol);
        }
        self.kafka_authorize(session, &req.group, [])?;
        let member_id = if req.member_id.is_empty() {
            new_member_id(&req.client_id)?
        } else {
            req.member_id.clone()
        };
        let rebalance_timeout_ms = req.rebalance_timeout_ms.clamp(1, KAFKA_REBALANCE_MS_MAX);
        let op = CoordOp::KafkaJoin {
            group: req.group.clone(),
            member_id: member_id.clone(),
            client_id: req.client_id,
            client_host: req.client_host,
            protocol_type: req.protocol_type,
            protocols: req
                .protocols
                .into_iter()
                .map(|(name, metadata)| (name, metadata.to_vec()))
                .collect(),
            session_timeout_ms: req.session_timeout_ms,
            rebalance_timeout_ms,
            proof: kafka_proof(session, &member_id),
        };
        let deadline = Instant::now()
            + Duration::from_millis(rebalance_timeout_ms.min(KAFKA_JOIN_WAIT_MS_MAX));
        let mut changes = self.raft.coord().subscribe();
        changes.borrow_and_update();
        let mut answer = self.kafka_write(op.clone()).await?;
        let mut renew_at = Instant::now() + renew_every(req.session_timeout_ms);
        loop {
            match answer {
                CoordResult::KafkaJoined { .. } => {}
                CoordResult::KafkaRefused { refusal, message } => {
                    return Err(refused(refusal, &message))
                }
                other => return Err(unexpected(other)),
            }
            let view = self
                .raft
                .coord()
                .read(|c| join_view(c, &req.group, &member_id));
            let rejoin = match view {
                JoinView::Complete => break,
                JoinView::Gone => return Err(KafkaGroupError::UnknownMember),
                // Someone joined meanwhile: join the new generation too
                // (the same protocols start none).
                JoinView::Behind => true,
                JoinView::Waiting => {
                    let wake = renew_at.min(deadline);
                    match tokio::time::timeout_at(wake.into(), changes.changed()).await {
                        Ok(Ok(())) => false,
                        Ok(Err(_)) => {
                            return Err(KafkaGroupError::CoordinatorUnavailable(
                                "broker stopping".into(),
                            ))
                        }
                        // Past the deadline: answer with who has joined.
                        Err(_) if Instant::now() >= deadline => break,
                        // Renew the session while held.
                        Err(_) => true,
                    }
                }
            };
            if rejoin {
                answer = self.kafka_write(op.clone()).await?;
                renew_at = Instant::now() + renew_every(req.session_timeout_ms);
            }
        }
        // The member list the leader gets is the applied state's now (the
        // answer of the last proposal may predate re-joins).
        let CoordResult::KafkaJoined {
            generation,
            protocol,
            leader,
            member_id,
            members,
        } = answer
        else {
            unreachable!("checked in the loop");
        };
        let members = if leader == member_id {
            self.raft
                .coord()
                .read(|c| leader_view(c, &req.group, generation, &protocol))
                .unwrap_or(members)
                .into_iter()
                .map(|(id, metadata)| (id, Bytes::from(metadata)))
                .collect()
        } else {
            Vec::new()
        };
        Ok(KafkaJoined {
            generation,
            protocol,
            leader,
            member_id,
            members,
        })
    }

    /// `SyncGroup`: the leader brings every member's assignment; every
    /// member gets its own, held until the leader's arrived (at most its
    /// rebalance timeout and [`KAFKA_SYNC_WAIT_MS_MAX`], then
    /// `RebalanceInProgress`).
    #[instrument(level = "debug", skip_all, fields(group))]
    pub async fn kafka_sync(
        &self,
        session: &Session,
        group: &str,
        member_id: &str,
        generation: i32,
        assignments: Vec<(String, Bytes)>,
    ) -> Result<Bytes, KafkaGroupError> {
        check_name("group", group)?;
        self.kafka_authorize(session, group, [])?;
        let op = CoordOp::KafkaSync {
            group: group.to_owned(),
            member_id: member_id.to_owned(),
            generation,
            assignments: assignments
                .into_iter()
                .map(|(m, a)| (m, a.to_vec()))
                .collect(),
            proof: kafka_proof(session, member_id),
        };
        let mut changes = self.raft.coord().subscribe();
        changes.borrow_and_update();
        let started = Instant::now();
        let mut answer = self.kafka_write(op.clone()).await?;
        // Timeouts of the member as the group knows it.
        let timeouts = self.raft.coord().read(|c| {
            c.groups
                .get(group)
                .and_then(|g| g.kafka.as_ref()?.members.get(member_id))
                .map(|m| (m.session_timeout_ms, m.rebalance_timeout_ms))
        });
        let (session_ms, rebalance_ms) = timeouts.unwrap_or((1, 1));
        let deadline = started + Duration::from_millis(rebalance_ms.min(KAFKA_SYNC_WAIT_MS_MAX));
        let mut renew_at = Instant::now() + renew_every(session_ms);
        loop {
            match answer {
                CoordResult::KafkaAssignment {
                    assignment: Some(bytes),
                } => return Ok(Bytes::from(bytes)),
                CoordResult::KafkaAssignment { assignment: None } => {}
                CoordResult::KafkaRefused { refusal, message } => {
                    return Err(refused(refusal, &message))
                }
                other => return Err(unexpected(other)),
            }
            // Pending: the leader's sync arrives with some later command.
            loop {
                let now = self.raft.coord().read(|c| {
                    let g = c.groups.get(group)?;
                    let m = g.kafka.as_ref()?.members.get(member_id)?;
                    Some((kafka_generation(g.generation), m.assignment.clone()))
                });
                match now {
                    None => return Err(KafkaGroupError::UnknownMember),
                    Some((current, _)) if current != generation => {
                        return Err(KafkaGroupError::RebalanceInProgress)
                    }
                    Some((_, Some(bytes))) => return Ok(Bytes::from(bytes)),
                    Some((_, None)) => {}
                }
                let wake = renew_at.min(deadline);
                match tokio::time::timeout_at(wake.into(), changes.changed()).await {
                    Ok(Ok(())) => continue,
                    Ok(Err(_)) => {
                        return Err(KafkaGroupError::CoordinatorUnavailable(
                            "broker stopping".into(),
                        ))
                    }
                    Err(_) if Instant::now() >= deadline => {
                        return Err(KafkaGroupError::RebalanceInProgress)
                    }
                    Err(_) => break,
                }
            }
            // Renew the session while held: the same sync again.
            answer = self.kafka_write(op.clone()).await?;
            renew_at = Instant::now() + renew_every(session_ms);
        }
    }

    /// `Heartbeat`: `RebalanceInProgress` tells the member to re-join.
    #[instrument(level = "debug", skip_all, fields(group))]
    pub async fn kafka_heartbeat(
        &self,
        session: &Session,
        group: &str,
        member_id: &str,
        generation: i32,
    ) -> Result<(), KafkaGroupError> {
        check_name("group", group)?;
        self.kafka_authorize(session, group, [])?;
        let op = CoordOp::KafkaHeartbeat {
            group: group.to_owned(),
            member_id: member_id.to_owned(),
            generation,
            proof: kafka_proof(session, member_id),
        };
        match self.kafka_write(op).await? {
            CoordResult::Done => Ok(()),
            CoordResult::KafkaRefused { refusal, message } => Err(refused(refusal, &message)),
            other => Err(unexpected(other)),
        }
    }

    /// `LeaveGroup`: the members leave (all or none: one id that is not
    /// this principal's member refuses all); ids no longer in the group
    /// are ignored.
    #[instrument(level = "debug", skip_all, fields(group))]
    pub async fn kafka_leave(
        &self,
        session: &Session,
        group: &str,
        member_ids: Vec<String>,
    ) -> Result<(), KafkaGroupError> {
        check_name("group", group)?;
        self.kafka_authorize(session, group, [])?;
        let members = member_ids
            .into_iter()
            .map(|id| {
                let proof = kafka_proof(session, &id);
                (id, proof)
            })
            .collect();
        let op = CoordOp::KafkaLeave {
            group: group.to_owned(),
            members,
        };
        match self.kafka_write(op).await? {
            CoordResult::Done => Ok(()),
            CoordResult::KafkaRefused { refusal, message } => Err(refused(refusal, &message)),
            other => Err(unexpected(other)),
        }
    }

    /// `OffsetCommit`: by a member in its current generation, or with
    /// generation -1 and no member id for a group without members.
    #[instrument(level = "debug", skip_all, fields(group))]
    pub async fn kafka_commit(
        &self,
        session: &Session,
        group: &str,
        member_id: &str,
        generation: i32,
        offsets: Vec<(String, u32, u64)>,
    ) -> Result<(), KafkaGroupError> {
        check_name("group", group)?;
        let mut topics: Vec<&str> = offsets.iter().map(|(t, _, _)| t.as_str()).collect();
        topics.sort_unstable();
        topics.dedup();
        self.kafka_authorize(session, group, topics)?;
        let op = CoordOp::KafkaCommit {
            group: group.to_owned(),
            member_id: member_id.to_owned(),
            generation,
            offsets,
            proof: kafka_proof(session, member_id),
        };
        match self.kafka_write(op).await? {
            CoordResult::Done => Ok(()),
            CoordResult::KafkaRefused { refusal, message } => Err(refused(refusal, &message)),
            other => Err(unexpected(other)),
        }
    }

    /// `OffsetFetch`: the group's committed offsets (next offset to
    /// consume) as this broker applied them; none for an unknown group.
    pub fn kafka_committed(&self, group: &str) -> Vec<(String, u32, u64)> {
        self.raft.coord().read(|c| {
            c.groups.get(group).map_or_else(Vec::new, |g| {
                g.offsets
                    .iter()
                    .map(|((t, p), o)| (t.clone(), *p, *o))
                    .collect()
            })
        })
    }

    /// `ListGroups`: every group with its protocol type (`tern` for Tern
    /// groups) and state.
    pub fn kafka_groups(&self) -> Vec<(String, String, String)> {
        self.raft.coord().read(|c| {
            c.groups
                .iter()
                .map(|(name, g)| {
                    let (protocol_type, state) = match &g.kafka {
                        Some(k) => (k.protocol_type.clone(), k.state(g.generation)),
                        None => ("tern".to_string(), tern_state(g.members.is_empty())),
                    };
                    (name.clone(), protocol_type, state.to_string())
                })
                .collect()
        })
    }

    /// `DescribeGroups`: one group, `None` if there is no such group.
    pub fn kafka_describe(&self, group: &str) -> Option<KafkaGroupDescription> {
        self.raft.coord().read(|c| {
            let g = c.groups.get(group)?;
            let generation = kafka_generation(g.generation);
            let description = match &g.kafka {
                Some(k) => {
                    let protocol = k.protocol.clone().unwrap_or_default();
                    KafkaGroupDescription {
                        group: group.to_owned(),
                        state: k.state(g.generation).to_string(),
                        protocol_type: k.protocol_type.clone(),
                        generation,
                        members: k
                            .members
                            .iter()
                            .map(|(id, m)| KafkaMemberDescription {
                                member_id: id.clone(),
                                client_id: m.client_id.clone(),
                                client_host: m.client_host.clone(),
                                metadata: m
                                    .protocols
                                    .iter()
                                    .find(|(n, _)| *n == protocol)
                                    .map(|(_, md)| Bytes::from(md.clone()))
                                    .unwrap_or_default(),
                                assignment: m
                                    .assignment
                                    .clone()
                                    .map(Bytes::from)
                                    .unwrap_or_default(),
                            })
                            .collect(),
                        protocol,
                    }
                }
                None => KafkaGroupDescription {
                    group: group.to_owned(),
                    state: tern_state(g.members.is_empty()).to_string(),
                    protocol_type: "tern".to_string(),
                    protocol: String::new(),
                    generation,
                    members: g
                        .members
                        .keys()
                        .map(|id| KafkaMemberDescription {
                            member_id: format!("{id:x}"),
                            client_id: String::new(),
                            client_host: String::new(),
                            metadata: Bytes::new(),
                            assignment: Bytes::new(),
                        })
                        .collect(),
                },
            };
            Some(description)
        })
    }
}

/// A Tern group's state in Kafka's words (Tern assigns at once).
fn tern_state(empty: bool) -> &'static str {
    if empty {
        "Empty"
    } else {
        "Stable"
    }
}

/// Every member of `group` in join order with its metadata for
/// `protocol`, if the group is still in `generation`.
fn leader_view(
    c: &CoordState,
    group: &str,
    generation: i32,
    protocol: &str,
) -> Option<Vec<(String, Vec<u8>)>> {
    let g = c.groups.get(group)?;
    let k = g.kafka.as_ref()?;
    if kafka_generation(g.generation) != generation {
        return None;
    }
    let mut members: Vec<_> = k.members.iter().collect();
    members.sort_by_key(|(_, m)| m.joined);
    Some(
        members
            .into_iter()
            .map(|(id, m)| {
                let metadata = m
                    .protocols
                    .iter()
                    .find(|(n, _)| n == protocol)
                    .map(|(_, md)| md.clone())
                    .unwrap_or_default();
                (id.clone(), metadata)
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_ids_are_the_client_id_and_a_fresh_uuid() {
        let a = new_member_id("app").unwrap();
        let b = new_member_id("app").unwrap();
        assert_ne!(a, b);
        let uuid = a.strip_prefix("app-").expect("client id first");
        let parts: Vec<usize> = uuid.split('-').map(str::len).collect();
        assert_eq!(parts, vec![8, 4, 4, 4, 12]);
    }

    #[test]
    fn a_kafka_proof_binds_the_member_id_to_the_principal() {
        let anonymous = Session::new("127.0.0.1:1".parse().unwrap());
        let alice = Session::new("127.0.0.1:2".parse().unwrap());
        alice.set_principal("alice".into());
        let p = kafka_proof(&anonymous, "app-1");
        assert!(p.admits(&kafka_proof(&anonymous, "app-1")));
        assert!(!p.admits(&kafka_proof(&anonymous, "app-2")));
        assert!(!p.admits(&kafka_proof(&alice, "app-1")));
    }

    #[test]
    fn refusals_keep_their_kafka_meaning() {
        let cases = [
            (ErrorCode::LimitExceeded, "GroupFull"),
            (ErrorCode::InvalidRequest, "InvalidRequest"),
            (ErrorCode::LeaderNotAvailable, "CoordinatorUnavailable"),
            (ErrorCode::InvalidConfig, "CoordinatorUnavailable"),
            (ErrorCode::AccessDenied, "NotAuthorized"),
            (
                ErrorCode::UnknownTopicOrPartition,
                "UnknownTopicOrPartition",
            ),
            (ErrorCode::UnknownMember, "UnknownMember"),
        ];
        for (code, name) in cases {
            let e = KafkaGroupError::from(Failure::new(code, "m"));
            assert!(format!("{e:?}").starts_with(name), "{code:?} → {e:?}");
        }
        assert_eq!(
            refused(KafkaRefusal::RebalanceInProgress, "m"),
            KafkaGroupError::RebalanceInProgress
        );
        assert_eq!(
            refused(KafkaRefusal::InconsistentGroupProtocol, "m"),
            KafkaGroupError::InconsistentGroupProtocol
        );
    }
}

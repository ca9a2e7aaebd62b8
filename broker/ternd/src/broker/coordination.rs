//! Lock and consumer-group requests: turns them into coordination commands
//! of the metadata group, waits for grants and rebalances on this broker's
//! applied copy of the coordination state, and exports its metrics.
//!
//! Any broker serves these requests: writes are forwarded to the metadata
//! leader (which stamps them with the replicated clock); reads (`list`,
//! `describe`) answer from this broker's applied state, which may trail the
//! leader by a few milliseconds.
//!
//! Ownership: a request that acts as a lock owner or group member carries
//! its client's secret; this module turns it into a [`Proof`] (SHA-256 of
//! the secret, and the session's proven principal) and the state machine
//! compares proofs. The secret itself goes no further than this module.
//!
//! Must never: decide anything about a lock or group itself — every
//! decision is the state machine's, so all replicas agree.

use std::time::{Duration, Instant};

use tern_protocol::coord::{
    GroupInfo, GroupMemberInfo, GroupOffset, GroupRequest, GroupResponse, LockHolder, LockInfo,
    LockMode as WireMode, LockRequest, LockResponse,
};
use tern_protocol::{ErrorCode, Response};
use tern_raft::coord::{GroupRecord, LockMode, Proof};
use tern_raft::{CoordOp, CoordResult, CoordState};
use tracing::{debug, instrument};

use super::{write_failure, Broker, Failure};
use crate::session::Session;

/// What a request presenting `secret` on `session` proves: only the
/// digest of the secret is replicated, with the connection's principal.
fn proof(session: &Session, secret: u128) -> Proof {
    let digest = ring::digest::digest(&ring::digest::SHA256, &secret.to_le_bytes());
    let mut bytes = [0u8; 32];
    bytes.copy_from_slice(digest.as_ref());
    Proof {
        digest: bytes,
        principal: session.principal().map(|p| p.to_string()),
    }
}

/// Longest a lock request may wait for its grant in one call.
const LOCK_WAIT_MS_MAX: u64 = 300_000;
/// Shortest and longest lease.
const LEASE_MS_RANGE: std::ops::RangeInclusive<u64> = 100..=3_600_000;
/// Shortest and longest consumer session.
const SESSION_MS_RANGE: std::ops::RangeInclusive<u64> = 500..=600_000;
/// Longest a heartbeat answer is held waiting for a rebalance.
const HEARTBEAT_WAIT_MS_MAX: u64 = 10_000;
/// Lock and group names: bounded like topic names.
const NAME_BYTES_MAX: usize = 249;
/// Most per-partition group series exported.
const GROUP_PARTITION_SERIES_MAX: usize = 1_000;

/// Most consumer groups that get their own per-group series (members,
/// generation, rebalances); more groups than this still work, unexported.
pub(super) const GROUP_SERIES_MAX: usize = 1_000;

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

pub(super) fn check_name(kind: &str, name: &str) -> Result<(), Failure> {
    if name.is_empty() || name.len() > NAME_BYTES_MAX || name.chars().any(char::is_control) {
        return Err(Failure::new(
            ErrorCode::InvalidRequest,
            format!("{kind} name must be 1..={NAME_BYTES_MAX} bytes without control characters"),
        ));
    }
    Ok(())
}

fn check_range(what: &str, v: u64, range: &std::ops::RangeInclusive<u64>) -> Result<(), Failure> {
    if range.contains(&v) {
        Ok(())
    } else {
        Err(Failure::new(
            ErrorCode::InvalidRequest,
            format!(
                "{what} {v} ms is outside {}..={} ms",
                range.start(),
                range.end()
            ),
        ))
    }
}

fn raft_mode(mode: WireMode) -> LockMode {
    match mode {
        WireMode::Exclusive => LockMode::Exclusive,
        WireMode::Shared => LockMode::Shared,
    }
}

fn wire_mode(mode: LockMode) -> WireMode {
    match mode {
        LockMode::Exclusive => WireMode::Exclusive,
        LockMode::Shared => WireMode::Shared,
    }
}

fn granted(token: u64, expires_ms: u64) -> Response {
    Response::Lock(LockResponse::Granted {
        token,
        expires_ms,
        remaining_ms: expires_ms.saturating_sub(now_ms()),
    })
}

impl Broker {
    /// Proposes one coordination command and returns its outcome. A
    /// refusal by a coordination limit counts in `tern_limit_refusals_total`.
    pub(super) async fn coord_write(&self, op: CoordOp) -> Result<CoordResult, Failure> {
        match self.raft.coord_write(op).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err((code, message))) => {
                let code = ErrorCode::from_u16(code);
                if code == ErrorCode::LimitExceeded {
                    if let Some(limit) = tern_raft::coord::limit_label(&message) {
                        self.metrics
                            .limit_refusals
                            .with_label_values(&[limit])
                            .inc();
                        debug!(limit, %message, "coordination limit reached");
                    }
                }
                Err(Failure::new(code, message))
            }
            Err(e) => Err(write_failure(e)),
        }
    }

    /// Answers a lock request.
    #[instrument(level = "debug", skip_all, fields(lock))]
    pub(super) async fn lock(
        &self,
        session: &Session,
        request: LockRequest,
    ) -> Result<Response, Failure> {
        match request {
            LockRequest::Acquire {
                name,
                owner,
                secret,
                mode,
                lease_ms,
                wait_ms,
            } => {
                check_name("lock", &name)?;
                check_range("lease", lease_ms, &LEASE_MS_RANGE)?;
                let started = Instant::now();
                let deadline = started + Duration::from_millis(wait_ms.min(LOCK_WAIT_MS_MAX));
                let mut changes = self.raft.coord().subscribe();
                changes.borrow_and_update();
                tracing::Span::current().record("lock", name.as_str());
                let proof = proof(session, secret);
                let op = CoordOp::Acquire {
                    name: name.clone(),
                    owner,
                    proof: proof.clone(),
                    mode: raft_mode(mode),
                    lease_ms,
                };
                if let CoordResult::Granted { token, expires_ms } = self.coord_write(op).await? {
                    self.metrics
                        .lock_acquire_seconds
                        .observe(started.elapsed().as_secs_f64());
                    return Ok(granted(token, expires_ms));
                }
                // Queued: the grant arrives with some later command (a
                // release, an expiry) as this broker applies it.
                loop {
                    let holder = self.raft.coord().read(|c| {
                        c.locks
                            .get(&name)
                            .and_then(|l| l.holders.iter().find(|h| h.owner == owner))
                            .map(|h| (h.token, h.expires_ms))
                    });
                    if let Some((token, expires_ms)) = holder {
                        self.metrics
                            .lock_acquire_seconds
                            .observe(started.elapsed().as_secs_f64());
                        return Ok(granted(token, expires_ms));
                    }
                    let changed = tokio::time::timeout_at(deadline.into(), changes.changed()).await;
                    match changed {
                        Ok(Ok(())) => continue,
                        Ok(Err(_)) => {
                            return Err(Failure::new(ErrorCode::Unknown, "broker stopping"))
                        }
                        Err(_) => break,
                    }
                }
                // Gave up: leave the queue. Had the grant just arrived, this
                // releases it — the caller was told it timed out.
                let cancel = CoordOp::Release {
                    name: name.clone(),
                    owner,
                    proof,
                };
                if let Err(e) = self.coord_write(cancel).await {
                    debug!(lock = %name, error = %e.message, "cancelling a timed-out wait failed");
                }
                Err(Failure::new(
                    ErrorCode::LockWaitTimeout,
                    format!("lock {name:?} not granted within {wait_ms} ms"),
                ))
            }
            LockRequest::KeepAlive {
                name,
                owner,
                secret,
            } => {
                check_name("lock", &name)?;
                let proof = proof(session, secret);
                match self
                    .coord_write(CoordOp::KeepAlive { name, owner, proof })
                    .await?
                {
                    CoordResult::Granted { token, expires_ms } => Ok(granted(token, expires_ms)),
                    other => Err(Failure::new(
                        ErrorCode::Unknown,
                        format!("unexpected keepalive answer {other:?}"),
                    )),
                }
            }
            LockRequest::Release {
                name,
                owner,
                secret,
            } => {
                check_name("lock", &name)?;
                let proof = proof(session, secret);
                match self
                    .coord_write(CoordOp::Release { name, owner, proof })
                    .await?
                {
                    CoordResult::Released { was_holder } => {
                        Ok(Response::Lock(LockResponse::Released { was_holder }))
                    }
                    other => Err(Failure::new(
                        ErrorCode::Unknown,
                        format!("unexpected release answer {other:?}"),
                    )),
                }
            }
            LockRequest::List => Ok(Response::Lock(LockResponse::List(
                self.raft.coord().read(list_locks),
            ))),
        }
    }

    /// Answers a consumer-group request.
    #[instrument(level = "debug", skip_all)]
    pub(super) async fn group(
        &self,
        session: &Session,
        request: GroupRequest,
    ) -> Result<Response, Failure> {
        match request {
            GroupRequest::Join {
                group,
                member,
                secret,
                topics,
                session_timeout_ms,
            } => {
                check_name("group", &group)?;
                check_range("session timeout", session_timeout_ms, &SESSION_MS_RANGE)?;
                let op = CoordOp::Join {
                    group: group.clone(),
                    member,
                    proof: proof(session, secret),
                    topics,
                    session_timeout_ms,
                };
                let answer = self.coord_write(op).await?;
                self.member_view(&group, answer)
            }
            GroupRequest::Heartbeat {
                group,
                member,
                secret,
                generation,
                wait_ms,
            } => {
                check_name("group", &group)?;
                let mut changes = self.raft.coord().subscribe();
                changes.borrow_and_update();
                let op = CoordOp::Heartbeat {
                    group: group.clone(),
                    member,
                    proof: proof(session, secret),
                };
                let answer = self.coord_write(op).await?;
                if matches!(answer, CoordResult::Member { generation: g, .. } if g == generation) {
                    // Hold the answer until the group changes or the wait ends,
                    // so members learn of a rebalance at once.
                    let deadline =
                        Instant::now() + Duration::from_millis(wait_ms.min(HEARTBEAT_WAIT_MS_MAX));
                    loop {
                        let current = self.raft.coord().read(|c| {
                            c.groups
                                .get(&group)
                                .filter(|g| g.members.contains_key(&member))
                                .map(|g| g.generation)
                        });
                        if current != Some(generation) {
                            break;
                        }
                        let changed =
                            tokio::time::timeout_at(deadline.into(), changes.changed()).await;
                        if !matches!(changed, Ok(Ok(()))) {
                            break;
                        }
                    }
                    let view = self.raft.coord().read(|c| {
                        c.groups
                            .get(&group)
                            .filter(|g| g.members.contains_key(&member))
                            .map(|g| CoordResult::Member {
                                generation: g.generation,
                                assignment: g.assigned_to(member),
                            })
                    });
                    return match view {
                        Some(v) => self.member_view(&group, v),
                        None => Err(Failure::new(
                            ErrorCode::UnknownMember,
                            format!("member {member:x} left group {group:?} (session expired?): join again"),
                        )),
                    };
                }
                self.member_view(&group, answer)
            }
            GroupRequest::Leave {
                group,
                member,
                secret,
            } => {
                check_name("group", &group)?;
                let proof = proof(session, secret);
                self.coord_write(CoordOp::Leave {
                    group,
                    member,
                    proof,
                })
                .await?;
                Ok(Response::Group(GroupResponse::Done))
            }
            GroupRequest::Commit {
                group,
                member,
                secret,
                generation,
                offsets,
            } => {
                check_name("group", &group)?;
                let op = CoordOp::Commit {
                    group,
                    member,
                    proof: proof(session, secret),
                    generation,
                    offsets,
                };
                self.coord_write(op).await?;
                Ok(Response::Group(GroupResponse::Done))
            }
            GroupRequest::List => Ok(Response::Group(GroupResponse::List(
                self.raft
                    .coord()
                    .read(|c| c.groups.keys().cloned().collect()),
            ))),
            GroupRequest::Describe { group } => {
                let record = self.raft.coord().read(|c| c.groups.get(&group).cloned());
                let record = record.ok_or_else(|| {
                    Failure::new(ErrorCode::InvalidRequest, format!("no group {group:?}"))
                })?;
                Ok(Response::Group(GroupResponse::Describe(
                    self.describe_group(group, &record),
                )))
            }
            GroupRequest::ResetOffsets { group, offsets } => {
                check_name("group", &group)?;
                let catalogue = self.raft.catalogue().borrow().clone();
                for (topic, partition, _) in &offsets {
                    let known = catalogue
                        .topics
                        .get(topic)
                        .is_some_and(|t| *partition < t.settings.partitions);
                    if !known {
                        return Err(Failure::new(
                            ErrorCode::UnknownTopicOrPartition,
                            format!("no partition {topic}/{partition}"),
                        ));
                    }
                }
                self.coord_write(CoordOp::SetOffsets { group, offsets })
                    .await?;
                Ok(Response::Group(GroupResponse::Done))
            }
        }
    }

    /// A member's answer: its generation and partitions with their
    /// committed offsets.
    fn member_view(&self, group: &str, answer: CoordResult) -> Result<Response, Failure> {
        let CoordResult::Member {
            generation,
            assignment,
        } = answer
        else {
            return Err(Failure::new(
                ErrorCode::Unknown,
                format!("unexpected group answer {answer:?}"),
            ));
        };
        let offsets = self.raft.coord().read(|c| {
            c.groups
                .get(group)
                .map(|g| g.offsets.clone())
                .unwrap_or_default()
        });
        let assignment = assignment
            .into_iter()
            .map(|(t, p)| {
                let committed = offsets.get(&(t.clone(), p)).copied().unwrap_or(u64::MAX);
                (t, p, committed)
            })
            .collect();
        Ok(Response::Group(GroupResponse::Member {
            generation,
            assignment,
        }))
    }

    fn describe_group(&self, group: String, g: &GroupRecord) -> GroupInfo {
        let members = g
            .members
            .iter()
            .map(|(id, m)| GroupMemberInfo {
                member: *id,
                topics: m.topics.clone(),
                session_timeout_ms: m.session_timeout_ms,
                assignment: g.assigned_to(*id),
            })
            .collect();
        let mut partitions: Vec<(String, u32)> = g.assignment.keys().cloned().collect();
        partitions.extend(g.offsets.keys().cloned());
        partitions.sort();
        partitions.dedup();
        let offsets = partitions
            .into_iter()
            .map(|(topic, partition)| {
                let high_watermark = self
                    .partition(&topic, partition)
                    .map_or(u64::MAX, |p| p.log.log_end());
                GroupOffset {
                    committed: g
                        .offsets
                        .get(&(topic.clone(), partition))
                        .copied()
                        .unwrap_or(u64::MAX),
                    topic,
                    partition,
                    high_watermark,
                }
            })
            .collect();
        GroupInfo {
            group,
            generation: g.generation,
            members,
            offsets,
        }
    }

    /// Lock and group gauges from this broker's applied coordination state.
    pub(super) fn update_coordination_gauges(&self) {
        let state = self.raft.coord().read(CoordState::clone);
        let m = &self.metrics;
        m.locks.set(state.locks.len() as i64);
        m.lock_holders
            .set(state.locks.values().map(|l| l.holders.len()).sum::<usize>() as i64);
        m.lock_waiters
            .set(state.locks.values().map(|l| l.waiters.len()).sum::<usize>() as i64);
        let advance = |c: &prometheus::IntCounter, replicated: u64| {
            c.inc_by(replicated.saturating_sub(c.get()));
        };
        advance(&m.lock_grants, state.counters.grants);
        advance(&m.lock_expirations, state.counters.expirations);
        advance(&m.coord_expiry_failures, state.counters.expiry_failures);
        advance(&m.group_sessions_expired, state.counters.sessions_expired);
        advance(&m.groups_expired, state.counters.groups_expired);
        m.group_members.reset();
        m.group_generation.reset();
        m.group_committed_offset.reset();
        m.group_lag.reset();
        let mut series = 0;
        // Group names are chosen by clients: only the first
        // GROUP_SERIES_MAX groups (in name order) get per-group series, so
        // no client can grow the scrape without bound.
        for (name, g) in state.groups.iter().take(GROUP_SERIES_MAX) {
            m.group_members
                .with_label_values(&[name])
                .set(g.members.len() as i64);
            m.group_generation
                .with_label_values(&[name])
                .set(g.generation as i64);
            advance(&m.group_rebalances.with_label_values(&[name]), g.rebalances);
            for ((topic, partition), committed) in &g.offsets {
                if series >= GROUP_PARTITION_SERIES_MAX {
                    break;
                }
                series += 1;
                let p = partition.to_string();
                let labels = [name.as_str(), topic.as_str(), p.as_str()];
                m.group_committed_offset
                    .with_label_values(&labels)
                    .set(*committed as i64);
                // Lag where this broker leads the partition (one series per
                // partition across the cluster).
                if let Ok(part) = self.partition(topic, *partition) {
                    if part.raft.metrics().borrow().current_leader == Some(self.raft.node_id()) {
                        m.group_lag
                            .with_label_values(&labels)
                            .set(part.log.log_end().saturating_sub(*committed) as i64);
                    }
                }
            }
        }
    }
}

fn list_locks(c: &CoordState) -> Vec<LockInfo> {
    c.locks
        .iter()
        .map(|(name, l)| LockInfo {
            name: name.clone(),
            holders: l
                .holders
                .iter()
                .map(|h| LockHolder {
                    owner: h.owner,
                    mode: wire_mode(h.mode),
                    token: h.token,
                    expires_ms: h.expires_ms,
                })
                .collect(),
            waiters: l
                .waiters
                .iter()
                .map(|w| LockHolder {
                    owner: w.owner,
                    mode: wire_mode(w.mode),
                    token: 0,
                    expires_ms: 0,
                })
                .collect(),
        })
        .collect()
}

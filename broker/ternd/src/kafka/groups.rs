//! Kafka's consumer-group APIs over Tern's replicated group state: the
//! broker calls in `broker/kafka_groups.rs` decide, this module translates.
//! Kafka's client-side assignment works unchanged — the leader member's
//! assignment is stored in the replicated state and handed to each member —
//! and committed offsets are the group's own, the same through OffsetFetch
//! and `tern group describe`.
//!
//! Authorization follows the native group requests: joining, syncing,
//! heartbeats, leaving and committing need `consume` on the group (and
//! committing, `consume` on each topic) — the broker's calls check those;
//! fetching offsets and describing need `describe` on the group, listing
//! `describe` on the cluster — checked here, as those calls only read.

use bytes::Bytes;
use tern_acl::{Operation, Resource};
use tern_kafka::kafka_protocol::error::ResponseError;
use tern_kafka::kafka_protocol::messages::{
    describe_groups_response::{DescribedGroup, DescribedGroupMember},
    join_group_response::JoinGroupResponseMember,
    leave_group_response::MemberResponse,
    list_groups_response::ListedGroup,
    offset_commit_response::{OffsetCommitResponsePartition, OffsetCommitResponseTopic},
    offset_fetch_response::{OffsetFetchResponsePartition, OffsetFetchResponseTopic},
    DescribeGroupsRequest, DescribeGroupsResponse, GroupId, HeartbeatRequest, HeartbeatResponse,
    JoinGroupRequest, JoinGroupResponse, LeaveGroupRequest, LeaveGroupResponse, ListGroupsRequest,
    ListGroupsResponse, OffsetCommitRequest, OffsetCommitResponse, OffsetFetchRequest,
    OffsetFetchResponse, RequestKind, ResponseKind, SyncGroupRequest, SyncGroupResponse, TopicName,
};
use tern_kafka::kafka_protocol::protocol::StrBytes;

use super::handlers::{count_error, str};
use crate::broker::{Broker, KafkaGroupError, KafkaJoinRequest};
use crate::session::Session;

/// The Kafka error code of a group refusal.
fn code(e: &KafkaGroupError) -> i16 {
    match e {
        KafkaGroupError::UnknownMember => ResponseError::UnknownMemberId,
        KafkaGroupError::IllegalGeneration => ResponseError::IllegalGeneration,
        KafkaGroupError::RebalanceInProgress => ResponseError::RebalanceInProgress,
        KafkaGroupError::InconsistentGroupProtocol => ResponseError::InconsistentGroupProtocol,
        KafkaGroupError::InvalidSessionTimeout => ResponseError::InvalidSessionTimeout,
        KafkaGroupError::GroupFull(_) => ResponseError::GroupMaxSizeReached,
        KafkaGroupError::InvalidRequest(_) => ResponseError::InvalidRequest,
        KafkaGroupError::UnknownTopicOrPartition(_) => ResponseError::UnknownTopicOrPartition,
        KafkaGroupError::CoordinatorUnavailable(_) => ResponseError::CoordinatorNotAvailable,
        KafkaGroupError::NotAuthorized(_) => ResponseError::GroupAuthorizationFailed,
    }
    .code()
}

/// Whether `session` may do `operation` on group `group` (always, when
/// authorization is off).
fn allowed(broker: &Broker, session: &Session, group: &str, operation: Operation) -> bool {
    match broker.acls() {
        None => true,
        Some(acls) => broker.allows(&acls, session, Resource::Group(group), operation),
    }
}

/// Answers a group API.
pub(super) async fn handle(
    broker: &Broker,
    session: &Session,
    client_id: &str,
    body: RequestKind,
    version: i16,
) -> ResponseKind {
    match body {
        RequestKind::JoinGroup(r) => {
            ResponseKind::JoinGroup(join(broker, session, client_id, r, version).await)
        }
        RequestKind::SyncGroup(r) => {
            ResponseKind::SyncGroup(sync(broker, session, r, version).await)
        }
        RequestKind::Heartbeat(r) => ResponseKind::Heartbeat(heartbeat(broker, session, r).await),
        RequestKind::LeaveGroup(r) => {
            ResponseKind::LeaveGroup(leave(broker, session, r, version).await)
        }
        RequestKind::OffsetCommit(r) => {
            ResponseKind::OffsetCommit(commit(broker, session, r).await)
        }
        RequestKind::OffsetFetch(r) => {
            ResponseKind::OffsetFetch(offset_fetch(broker, session, r, version))
        }
        RequestKind::ListGroups(r) => ResponseKind::ListGroups(list(broker, session, r)),
        RequestKind::DescribeGroups(r) => {
            ResponseKind::DescribeGroups(describe(broker, session, r))
        }
        other => {
            // Only advertised APIs get past decoding, and each has an arm
            // above or in `handlers::handle`.
            unreachable!("no handler for an advertised API: {other:?}")
        }
    }
}

async fn join(
    broker: &Broker,
    session: &Session,
    client_id: &str,
    r: JoinGroupRequest,
    version: i16,
) -> JoinGroupResponse {
    let mut response = JoinGroupResponse::default();
    let request = KafkaJoinRequest {
        group: r.group_id.0.to_string(),
        member_id: r.member_id.to_string(),
        client_id: client_id.to_string(),
        client_host: session.peer().ip().to_string(),
        protocol_type: r.protocol_type.to_string(),
        protocols: r
            .protocols
            .into_iter()
            .map(|p| (p.name.to_string(), p.metadata))
            .collect(),
        session_timeout_ms: r.session_timeout_ms.max(0) as u64,
        rebalance_timeout_ms: if version >= 1 {
            r.rebalance_timeout_ms.max(0) as u64
        } else {
            r.session_timeout_ms.max(0) as u64
        },
    };
    match broker.kafka_join(session, request).await {
        Ok(joined) => {
            response.generation_id = joined.generation;
            response.protocol_name = Some(str(&joined.protocol));
            if version >= 7 {
                response.protocol_type = Some(str(&r.protocol_type));
            }
            response.leader = str(&joined.leader);
            response.member_id = str(&joined.member_id);
            response.members = joined
                .members
                .into_iter()
                .map(|(id, metadata)| {
                    JoinGroupResponseMember::default()
                        .with_member_id(str(&id))
                        .with_metadata(metadata)
                })
                .collect();
        }
        Err(e) => {
            response.error_code = code(&e);
            response.member_id = r.member_id;
            count_error(broker, "JoinGroup", response.error_code);
        }
    }
    response
}

async fn sync(
    broker: &Broker,
    session: &Session,
    r: SyncGroupRequest,
    version: i16,
) -> SyncGroupResponse {
    let group = r.group_id.0.to_string();
    let mut response = SyncGroupResponse::default();
    let assignments = r
        .assignments
        .into_iter()
        .map(|a| (a.member_id.to_string(), a.assignment))
        .collect();
    match broker
        .kafka_sync(session, &group, &r.member_id, r.generation_id, assignments)
        .await
    {
        Ok(assignment) => {
            response.assignment = assignment;
            if version >= 5 {
                response.protocol_type = r.protocol_type;
                response.protocol_name = r.protocol_name;
            }
        }
        Err(e) => {
            response.error_code = code(&e);
            response.assignment = Bytes::new();
            count_error(broker, "SyncGroup", response.error_code);
        }
    }
    response
}

async fn heartbeat(broker: &Broker, session: &Session, r: HeartbeatRequest) -> HeartbeatResponse {
    let group = r.group_id.0.to_string();
    let mut response = HeartbeatResponse::default();
    response.error_code = match broker
        .kafka_heartbeat(session, &group, &r.member_id, r.generation_id)
        .await
    {
        Ok(()) => 0,
        Err(e) => code(&e),
    };
    count_error(broker, "Heartbeat", response.error_code);
    response
}

async fn leave(
    broker: &Broker,
    session: &Session,
    r: LeaveGroupRequest,
    version: i16,
) -> LeaveGroupResponse {
    let group = r.group_id.0.to_string();
    let mut response = LeaveGroupResponse::default();
    let ids: Vec<String> = if version >= 3 {
        r.members.iter().map(|m| m.member_id.to_string()).collect()
    } else {
        vec![r.member_id.to_string()]
    };
    let error = match broker.kafka_leave(session, &group, ids.clone()).await {
        Ok(()) => 0,
        Err(e) => code(&e),
    };
    if version >= 3 {
        response.members = ids
            .iter()
            .map(|id| {
                MemberResponse::default()
                    .with_member_id(str(id))
                    .with_error_code(error)
            })
            .collect();
    }
    response.error_code = error;
    count_error(broker, "LeaveGroup", error);
    response
}

async fn commit(
    broker: &Broker,
    session: &Session,
    r: OffsetCommitRequest,
) -> OffsetCommitResponse {
    let group = r.group_id.0.to_string();
    let valid = |p: &tern_kafka::kafka_protocol::messages::offset_commit_request::OffsetCommitRequestPartition| {
        p.partition_index >= 0 && p.committed_offset >= 0
    };
    let offsets: Vec<(String, u32, u64)> = r
        .topics
        .iter()
        .flat_map(|t| {
            t.partitions.iter().filter(|p| valid(p)).map(|p| {
                (
                    t.name.0.to_string(),
                    p.partition_index as u32,
                    p.committed_offset as u64,
                )
            })
        })
        .collect();
    let outcome = if offsets.is_empty() {
        Ok(())
    } else {
        broker
            .kafka_commit(
                session,
                &group,
                &r.member_id,
                r.generation_id_or_member_epoch,
                offsets,
            )
            .await
    };
    let topics = r
        .topics
        .iter()
        .map(|t| {
            let partitions = t
                .partitions
                .iter()
                .map(|p| {
                    let error = if !valid(p) {
                        ResponseError::InvalidCommitOffsetSize.code()
                    } else {
                        outcome.as_ref().err().map_or(0, code)
                    };
                    count_error(broker, "OffsetCommit", error);
                    OffsetCommitResponsePartition::default()
                        .with_partition_index(p.partition_index)
                        .with_error_code(error)
                })
                .collect();
            OffsetCommitResponseTopic::default()
                .with_name(t.name.clone())
                .with_partitions(partitions)
        })
        .collect();
    OffsetCommitResponse::default().with_topics(topics)
}

fn offset_fetch(
    broker: &Broker,
    session: &Session,
    r: OffsetFetchRequest,
    version: i16,
) -> OffsetFetchResponse {
    let group = r.group_id.0.to_string();
    let mut response = OffsetFetchResponse::default();
    if !allowed(broker, session, &group, Operation::Describe) {
        let code = ResponseError::GroupAuthorizationFailed.code();
        count_error(broker, "OffsetFetch", code);
        if version >= 2 {
            response.error_code = code;
        }
        return response;
    }
    let committed = broker.kafka_committed(&group);
    let wanted: Vec<(String, Vec<i32>)> = match r.topics {
        Some(topics) => topics
            .into_iter()
            .map(|t| (t.name.0.to_string(), t.partition_indexes))
            .collect(),
        None => {
            // All topics with a committed offset.
            let mut all: Vec<(String, Vec<i32>)> = Vec::new();
            for (topic, partition, _) in &committed {
                match all.iter_mut().find(|(t, _)| t == topic) {
                    Some((_, ps)) => ps.push(*partition as i32),
                    None => all.push((topic.clone(), vec![*partition as i32])),
                }
            }
            all
        }
    };
    response.topics = wanted
        .into_iter()
        .map(|(topic, partitions)| {
            let partitions = partitions
                .into_iter()
                .map(|p| {
                    let offset = committed
                        .iter()
                        .find(|(t, q, _)| *t == topic && *q as i32 == p)
                        .map_or(-1, |(_, _, o)| *o as i64);
                    OffsetFetchResponsePartition::default()
                        .with_partition_index(p)
                        .with_committed_offset(offset)
                        .with_metadata(Some(StrBytes::new()))
                })
                .collect();
            OffsetFetchResponseTopic::default()
                .with_name(TopicName(str(&topic)))
                .with_partitions(partitions)
        })
        .collect();
    response
}

fn list(broker: &Broker, session: &Session, r: ListGroupsRequest) -> ListGroupsResponse {
    let mut response = ListGroupsResponse::default();
    let may = match broker.acls() {
        None => true,
        Some(acls) => broker.allows(&acls, session, Resource::Cluster, Operation::Describe),
    };
    if !may {
        response.error_code = ResponseError::ClusterAuthorizationFailed.code();
        count_error(broker, "ListGroups", response.error_code);
        return response;
    }
    response.groups = broker
        .kafka_groups()
        .into_iter()
        .filter(|(_, _, state)| {
            r.states_filter.is_empty() || r.states_filter.iter().any(|s| s.as_str() == state)
        })
        .map(|(group, protocol_type, state)| {
            ListedGroup::default()
                .with_group_id(GroupId(str(&group)))
                .with_protocol_type(str(&protocol_type))
                .with_group_state(str(&state))
        })
        .collect();
    response
}

fn describe(
    broker: &Broker,
    session: &Session,
    r: DescribeGroupsRequest,
) -> DescribeGroupsResponse {
    let groups = r
        .groups
        .into_iter()
        .map(|g| {
            let name = g.0.to_string();
            let mut d = DescribedGroup::default().with_group_id(g);
            if !allowed(broker, session, &name, Operation::Describe) {
                d.error_code = ResponseError::GroupAuthorizationFailed.code();
                count_error(broker, "DescribeGroups", d.error_code);
                return d;
            }
            match broker.kafka_describe(&name) {
                None => d.group_state = str("Dead"),
                Some(desc) => {
                    d.group_state = str(&desc.state);
                    d.protocol_type = str(&desc.protocol_type);
                    d.protocol_data = str(&desc.protocol);
                    d.members = desc
                        .members
                        .into_iter()
                        .map(|m| {
                            DescribedGroupMember::default()
                                .with_member_id(str(&m.member_id))
                                .with_client_id(str(&m.client_id))
                                .with_client_host(str(&m.client_host))
                                .with_member_metadata(m.metadata)
                                .with_member_assignment(m.assignment)
                        })
                        .collect();
                }
            }
            d
        })
        .collect();
    DescribeGroupsResponse::default().with_groups(groups)
}

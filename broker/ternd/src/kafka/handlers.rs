//! One function per Kafka API: the Kafka request becomes Tern requests to
//! [`Broker::handle`] (or the produce path), and their answers become the
//! Kafka response. Per-partition errors are counted in
//! `tern_kafka_request_errors_total`.

use bytes::{Bytes, BytesMut};
use tern_kafka::errors::kafka_code;
use tern_kafka::kafka_protocol::error::ResponseError;
use tern_kafka::kafka_protocol::messages::{
    api_versions_response::ApiVersion,
    create_partitions_response::CreatePartitionsTopicResult,
    create_topics_response::CreatableTopicResult,
    delete_topics_response::DeletableTopicResult,
    describe_configs_response::{DescribeConfigsResourceResult, DescribeConfigsResult},
    fetch_response::{FetchableTopicResponse, PartitionData},
    find_coordinator_response::Coordinator,
    list_offsets_response::{ListOffsetsPartitionResponse, ListOffsetsTopicResponse},
    metadata_response::{MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic},
    produce_response::{PartitionProduceResponse, TopicProduceResponse},
    ApiVersionsResponse, BrokerId, CreatePartitionsRequest, CreatePartitionsResponse,
    CreateTopicsRequest, CreateTopicsResponse, DeleteTopicsRequest, DeleteTopicsResponse,
    DescribeConfigsRequest, DescribeConfigsResponse, FetchRequest, FetchResponse,
    FindCoordinatorRequest, FindCoordinatorResponse, InitProducerIdRequest, InitProducerIdResponse,
    ListOffsetsRequest, ListOffsetsResponse, MetadataRequest, MetadataResponse, ProduceRequest,
    ProduceResponse, ProducerId, RequestKind, ResponseKind, SaslAuthenticateRequest,
    SaslAuthenticateResponse, SaslHandshakeRequest, SaslHandshakeResponse, TopicName,
};
use tern_kafka::kafka_protocol::protocol::StrBytes;
use tern_kafka::records::{kafka_to_tern, tern_to_kafka, RecordsError};
use tern_kafka::versions::SUPPORTED;
use tern_protocol::api::{
    FetchPartition, OffsetSpec, ProducePartition, ProduceResult, TopicConfig,
    RETENTION_BROKER_DEFAULT,
};
use tern_protocol::record::split_batches;
use tern_protocol::{ErrorCode, Request, Response};

use super::groups;
use crate::auth::SaslState;
use crate::broker::{finish_produce as tern_finish_produce, Broker, PendingAppend};
use crate::session::Session;

/// Counts one failed request or partition of `api`.
pub(super) fn count_error(broker: &Broker, api: &str, code: i16) {
    if code == 0 {
        return;
    }
    let name = ResponseError::try_from_code(code)
        .map(|e| format!("{e:?}"))
        .unwrap_or_else(|| code.to_string());
    broker
        .metrics()
        .kafka_request_errors
        .with_label_values(&[api, &name])
        .inc();
}

pub(super) fn str(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_owned())
}

fn topic_name(s: &str) -> TopicName {
    TopicName(str(s))
}

/// Splits `host:port` (the port last, so IPv6 `[::1]:9092` works).
fn host_port(addr: &str) -> Option<(String, i32)> {
    let (host, port) = addr.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Some((host.to_string(), port.parse().ok()?))
}

/// Every broker's Kafka listener from the catalogue: `(id, host, port)`.
fn kafka_brokers(broker: &Broker) -> Vec<(u32, String, i32)> {
    let catalogue = broker.raft().catalogue().borrow().clone();
    catalogue
        .brokers
        .iter()
        .filter_map(|(id, b)| {
            let (host, port) = host_port(b.listeners.get(tern_raft::KAFKA_LISTENER)?)?;
            Some((*id as u32, host, port))
        })
        .collect()
}

/// The `ApiVersions` answer: every API and version range Tern answers.
pub(super) fn api_versions(error_code: i16) -> ResponseKind {
    let api_keys = SUPPORTED
        .iter()
        .map(|&(api, lo, hi)| {
            ApiVersion::default()
                .with_api_key(api as i16)
                .with_min_version(lo)
                .with_max_version(hi)
        })
        .collect();
    ResponseKind::ApiVersions(
        ApiVersionsResponse::default()
            .with_error_code(error_code)
            .with_api_keys(api_keys),
    )
}

/// `SaslHandshake`: the same exchange as the native listener's. Returns the
/// answer and whether to close the connection after it.
pub(super) async fn sasl_handshake(
    broker: &Broker,
    session: &Session,
    state: &mut SaslState,
    request: SaslHandshakeRequest,
) -> (ResponseKind, bool) {
    let outcome = broker
        .sasl_step(
            session,
            state,
            Request::SaslHandshake {
                mechanism: request.mechanism.to_string(),
            },
        )
        .await;
    let mechanisms = vec![str(tern_auth::SCRAM_SHA_256)];
    let code = match &outcome.result {
        Ok(_) => 0,
        Err(f) if f.code == ErrorCode::InvalidRequest && session.principal().is_none() => {
            ResponseError::UnsupportedSaslMechanism.code()
        }
        Err(_) => ResponseError::IllegalSaslState.code(),
    };
    count_error(broker, "SaslHandshake", code);
    let response = SaslHandshakeResponse::default()
        .with_error_code(code)
        .with_mechanisms(mechanisms);
    (ResponseKind::SaslHandshake(response), outcome.close)
}

/// `SaslAuthenticate`: one SCRAM message.
pub(super) async fn sasl_authenticate(
    broker: &Broker,
    session: &Session,
    state: &mut SaslState,
    request: SaslAuthenticateRequest,
    version: i16,
) -> (ResponseKind, bool) {
    let outcome = broker
        .sasl_step(
            session,
            state,
            Request::SaslAuthenticate {
                auth_bytes: request.auth_bytes,
            },
        )
        .await;
    let mut response = SaslAuthenticateResponse::default();
    match outcome.result {
        Ok(Response::SaslAuthenticate { auth_bytes }) => response.auth_bytes = auth_bytes,
        Ok(_) => {}
        Err(f) => {
            response.error_code = ResponseError::SaslAuthenticationFailed.code();
            response.error_message = Some(str(&f.message));
            count_error(broker, "SaslAuthenticate", response.error_code);
        }
    }
    if version < 1 {
        response.session_lifetime_ms = 0;
    }
    (ResponseKind::SaslAuthenticate(response), outcome.close)
}

/// A produce request after its batches were queued.
pub(super) struct PendingProduce {
    acks: i16,
    timeout_ms: u32,
    /// Per Kafka partition: topic, index, and either a local refusal or
    /// the range of `pending` holding its batches.
    partitions: Vec<(String, i32, Result<std::ops::Range<usize>, i16>)>,
    pending: Vec<PendingAppend>,
}

/// Converts and queues every partition's batches, in request order.
pub(super) async fn enqueue_produce(
    broker: &Broker,
    session: &Session,
    request: ProduceRequest,
) -> PendingProduce {
    let mut partitions = Vec::new();
    let mut batches = Vec::new();
    let refused = if request.transactional_id.is_some() {
        Some(ResponseError::TransactionalIdAuthorizationFailed.code())
    } else {
        None
    };
    for topic in request.topic_data {
        let name = topic.name.0.to_string();
        for p in topic.partition_data {
            let converted = match (refused, p.index, p.records) {
                (Some(code), _, _) => Err(code),
                (_, index, _) if index < 0 => Err(ResponseError::UnknownTopicOrPartition.code()),
                (_, _, None) => Err(ResponseError::CorruptMessage.code()),
                (_, _, Some(records)) => kafka_to_tern(records).map_err(|e| {
                    tracing::debug!(topic = %name, partition = p.index, error = %e, "refused Kafka batch");
                    match e {
                        RecordsError::Corrupt(_) => ResponseError::CorruptMessage.code(),
                        RecordsError::TooLarge(_) => ResponseError::MessageTooLarge.code(),
                        RecordsError::Unsupported(_) => {
                            ResponseError::UnsupportedForMessageFormat.code()
                        }
                    }
                }),
            };
            let entry = converted.map(|converted| {
                let start = batches.len();
                batches.extend(converted.into_iter().map(|c| ProducePartition {
                    topic: name.clone(),
                    partition: p.index as u32,
                    batch: c.batch,
                }));
                start..batches.len()
            });
            partitions.push((name.clone(), p.index, entry));
        }
    }
    let pending = broker.enqueue_produce(session, batches).await;
    PendingProduce {
        acks: request.acks,
        timeout_ms: request.timeout_ms.clamp(1, i32::MAX) as u32,
        partitions,
        pending,
    }
}

/// Waits for the queued batches; `None` for `acks=0` (no answer is sent).
pub(super) async fn finish_produce(
    broker: &Broker,
    produce: PendingProduce,
) -> Option<ProduceResponse> {
    let results: Vec<ProduceResult> =
        match tern_finish_produce(produce.pending, produce.timeout_ms, broker.metrics()).await {
            Response::Produce(r) => r,
            _ => Vec::new(),
        };
    if produce.acks == 0 {
        return None;
    }
    let mut topics: Vec<TopicProduceResponse> = Vec::new();
    for (topic, index, entry) in produce.partitions {
        let mut response = PartitionProduceResponse::default().with_index(index);
        match entry {
            Err(code) => response.error_code = code,
            Ok(range) => {
                let mine = results.get(range).unwrap_or_default();
                match mine.iter().find(|r| r.error != ErrorCode::None) {
                    Some(failed) => response.error_code = kafka_code(failed.error),
                    None => {
                        response.base_offset = mine.first().map_or(-1, |r| r.base_offset as i64)
                    }
                }
            }
        }
        count_error(broker, "Produce", response.error_code);
        match topics.last_mut() {
            Some(t) if t.name.0.as_str() == topic => t.partition_responses.push(response),
            _ => topics.push(
                TopicProduceResponse::default()
                    .with_name(topic_name(&topic))
                    .with_partition_responses(vec![response]),
            ),
        }
    }
    Some(ProduceResponse::default().with_responses(topics))
}

/// Sends an admin request; a refusal as the Kafka code and message the
/// per-topic results carry.
async fn admin(broker: &Broker, session: &Session, request: Request) -> Result<(), (i16, String)> {
    broker
        .handle(session, request)
        .await
        .map(|_| ())
        .map_err(|f| (kafka_code(f.code), f.message))
}

/// Every other API.
pub(super) async fn handle(
    broker: &Broker,
    session: &Session,
    client_id: &str,
    body: RequestKind,
    version: i16,
) -> ResponseKind {
    match body {
        RequestKind::Metadata(r) => {
            ResponseKind::Metadata(metadata(broker, session, r, version).await)
        }
        RequestKind::Fetch(r) => ResponseKind::Fetch(fetch(broker, session, r, version).await),
        RequestKind::ListOffsets(r) => {
            ResponseKind::ListOffsets(list_offsets(broker, session, r).await)
        }
        RequestKind::CreateTopics(r) => {
            ResponseKind::CreateTopics(create_topics(broker, session, r).await)
        }
        RequestKind::DeleteTopics(r) => {
            ResponseKind::DeleteTopics(delete_topics(broker, session, r).await)
        }
        RequestKind::CreatePartitions(r) => {
            ResponseKind::CreatePartitions(create_partitions(broker, session, r).await)
        }
        RequestKind::InitProducerId(r) => ResponseKind::InitProducerId(init_producer_id(broker, r)),
        RequestKind::FindCoordinator(r) => {
            ResponseKind::FindCoordinator(find_coordinator(broker, r, version))
        }
        RequestKind::DescribeConfigs(r) => {
            ResponseKind::DescribeConfigs(describe_configs(broker, session, r).await)
        }
        other => groups::handle(broker, session, client_id, other, version).await,
    }
}

async fn metadata(
    broker: &Broker,
    session: &Session,
    request: MetadataRequest,
    version: i16,
) -> MetadataResponse {
    let wanted = request.topics.map(|ts| {
        ts.into_iter()
            .filter_map(|t| t.name.map(|n| n.0.to_string()))
            .collect()
    });
    let kafka = kafka_brokers(broker);
    let mut response = MetadataResponse::default().with_brokers(
        kafka
            .iter()
            .map(|(id, host, port)| {
                MetadataResponseBroker::default()
                    .with_node_id(BrokerId(*id as i32))
                    .with_host(str(host))
                    .with_port(*port)
            })
            .collect(),
    );
    if version >= 2 {
        response.cluster_id = Some(str(&broker.config().cluster_name));
    }
    let has_kafka = |id: u32| kafka.iter().any(|(k, _, _)| *k == id);
    match broker
        .handle(session, Request::Metadata { topics: wanted })
        .await
    {
        Ok(Response::Metadata {
            controller, topics, ..
        }) => {
            response.controller_id = BrokerId(if has_kafka(controller) {
                controller as i32
            } else {
                -1
            });
            response.topics = topics
                .into_iter()
                .map(|t| {
                    let partitions = t
                        .partitions
                        .iter()
                        .map(|p| {
                            let leader = (p.leader != 0 && has_kafka(p.leader)).then_some(p.leader);
                            let ids = |v: &[u32]| v.iter().map(|&n| BrokerId(n as i32)).collect();
                            MetadataResponsePartition::default()
                                .with_error_code(match leader {
                                    Some(_) => 0,
                                    None => ResponseError::LeaderNotAvailable.code(),
                                })
                                .with_partition_index(p.partition as i32)
                                .with_leader_id(BrokerId(leader.map_or(-1, |l| l as i32)))
                                .with_replica_nodes(ids(&p.replicas))
                                .with_isr_nodes(ids(&p.in_sync))
                        })
                        .collect();
                    let code = kafka_code(t.error);
                    count_error(broker, "Metadata", code);
                    MetadataResponseTopic::default()
                        .with_error_code(code)
                        .with_name(Some(topic_name(&t.name)))
                        .with_partitions(partitions)
                })
                .collect();
        }
        Ok(_) => {}
        Err(f) => {
            // A refused metadata request still describes the brokers, so
            // the client can retry elsewhere.
            count_error(broker, "Metadata", kafka_code(f.code));
        }
    }
    response
}

async fn fetch(
    broker: &Broker,
    session: &Session,
    request: FetchRequest,
    version: i16,
) -> FetchResponse {
    let mut wanted = Vec::new();
    for t in &request.topics {
        for p in &t.partitions {
            wanted.push(FetchPartition {
                topic: t.topic.0.to_string(),
                partition: p.partition.max(0) as u32,
                offset: p.fetch_offset.max(0) as u64,
                max_bytes: p.partition_max_bytes.max(0) as u32,
            });
        }
    }
    let tern = Request::Fetch {
        max_wait_ms: request.max_wait_ms.max(0) as u32,
        min_bytes: request.min_bytes.max(0) as u32,
        max_bytes: if version >= 3 {
            request.max_bytes.max(0) as u32
        } else {
            i32::MAX as u32
        },
        partitions: wanted,
    };
    let mut response = FetchResponse::default();
    let results = match broker.handle(session, tern).await {
        Ok(Response::Fetch(results)) => results,
        Ok(_) => Vec::new(),
        Err(f) => {
            // Refused whole (too many partitions, a duplicate): every
            // partition carries the error.
            let code = kafka_code(f.code);
            count_error(broker, "Fetch", code);
            response.responses = request
                .topics
                .iter()
                .map(|t| {
                    FetchableTopicResponse::default()
                        .with_topic(t.topic.clone())
                        .with_partitions(
                            t.partitions
                                .iter()
                                .map(|p| {
                                    PartitionData::default()
                                        .with_partition_index(p.partition)
                                        .with_error_code(code)
                                })
                                .collect(),
                        )
                })
                .collect();
            return response;
        }
    };
    let mut topics: Vec<FetchableTopicResponse> = Vec::new();
    for r in results {
        let mut data = PartitionData::default()
            .with_partition_index(r.partition as i32)
            .with_error_code(kafka_code(r.error))
            .with_high_watermark(r.high_watermark as i64)
            .with_last_stable_offset(r.high_watermark as i64)
            .with_log_start_offset(r.log_start as i64);
        if r.error == ErrorCode::None {
            let mut out = BytesMut::with_capacity(r.records.len() + 64);
            for batch in split_batches(r.records) {
                let converted = batch
                    .map_err(|e| RecordsError::Corrupt(e.to_string()))
                    .and_then(|view| tern_to_kafka(&view, &mut out));
                if let Err(e) = converted {
                    tracing::error!(topic = %r.topic, partition = r.partition, error = %e, "stored batch could not be served to a Kafka client");
                    data.error_code = ResponseError::CorruptMessage.code();
                    break;
                }
            }
            data.records = Some(out.freeze());
        } else {
            data.records = Some(Bytes::new());
        }
        count_error(broker, "Fetch", data.error_code);
        match topics.last_mut() {
            Some(t) if t.topic.0.as_str() == r.topic => t.partitions.push(data),
            _ => topics.push(
                FetchableTopicResponse::default()
                    .with_topic(topic_name(&r.topic))
                    .with_partitions(vec![data]),
            ),
        }
    }
    response.responses = topics;
    response
}

async fn list_offsets(
    broker: &Broker,
    session: &Session,
    request: ListOffsetsRequest,
) -> ListOffsetsResponse {
    let mut topics = Vec::new();
    for t in request.topics {
        let name = t.name.0.to_string();
        let mut partitions = Vec::new();
        for p in t.partitions {
            let spec = match p.timestamp {
                -2 => OffsetSpec::Earliest,
                -1 => OffsetSpec::Latest,
                ts => OffsetSpec::Timestamp(ts),
            };
            let mut answer = ListOffsetsPartitionResponse::default()
                .with_partition_index(p.partition_index)
                .with_timestamp(-1)
                .with_offset(-1);
            let tern = Request::ListOffsets {
                topic: name.clone(),
                partition: p.partition_index.max(0) as u32,
                spec,
            };
            match broker.handle(session, tern).await {
                Ok(Response::ListOffsets { offset }) => answer.offset = offset as i64,
                Ok(_) => {}
                Err(f) => answer.error_code = kafka_code(f.code),
            }
            count_error(broker, "ListOffsets", answer.error_code);
            partitions.push(answer);
        }
        topics.push(
            ListOffsetsTopicResponse::default()
                .with_name(topic_name(&name))
                .with_partitions(partitions),
        );
    }
    ListOffsetsResponse::default().with_topics(topics)
}

/// A topic's Kafka configs that Tern has: `retention.ms`, `retention.bytes`.
fn parse_topic_configs(
    configs: impl IntoIterator<Item = (String, Option<String>)>,
) -> Result<(i64, i64), String> {
    let (mut retention_ms, mut retention_bytes) = (RETENTION_BROKER_DEFAULT, -1);
    for (name, value) in configs {
        let value = value.unwrap_or_default();
        let parse = |v: &str| {
            v.parse::<i64>()
                .map_err(|_| format!("{name}={v:?} is not a number"))
        };
        match name.as_str() {
            "retention.ms" => retention_ms = parse(&value)?,
            "retention.bytes" => retention_bytes = parse(&value)?,
            "cleanup.policy" if value == "delete" => {}
            _ => return Err(format!("Tern does not support the topic config {name}")),
        }
    }
    Ok((retention_ms, retention_bytes))
}

async fn create_topics(
    broker: &Broker,
    session: &Session,
    request: CreateTopicsRequest,
) -> CreateTopicsResponse {
    let mut results = Vec::new();
    for t in request.topics {
        let name = t.name.0.to_string();
        let mut result = CreatableTopicResult::default().with_name(t.name.clone());
        let configs = t
            .configs
            .iter()
            .map(|c| (c.name.to_string(), c.value.as_ref().map(|v| v.to_string())));
        let outcome = match parse_topic_configs(configs) {
            Err(message) => Err((ResponseError::InvalidConfig.code(), message)),
            Ok(_) if !t.assignments.is_empty() => Err((
                ResponseError::InvalidReplicaAssignment.code(),
                "Tern places replicas itself (consistent hashing); manual assignments are not supported".into(),
            )),
            Ok(_) if request.validate_only => Ok(()),
            Ok((retention_ms, retention_bytes)) => {
                let brokers = broker.raft().catalogue().borrow().brokers.len().max(1);
                let config = TopicConfig {
                    partitions: if t.num_partitions < 0 { 1 } else { t.num_partitions as u32 },
                    replication_factor: if t.replication_factor < 0 {
                        brokers.min(3) as u16
                    } else {
                        t.replication_factor as u16
                    },
                    retention_ms,
                    retention_bytes,
                };
                result.num_partitions = config.partitions as i32;
                result.replication_factor = config.replication_factor as i16;
                admin(broker, session, Request::CreateTopic { name, config }).await
            }
        };
        if let Err((code, message)) = outcome {
            result.error_code = code;
            result.error_message = Some(str(&message));
            count_error(broker, "CreateTopics", code);
        }
        results.push(result);
    }
    CreateTopicsResponse::default().with_topics(results)
}

async fn delete_topics(
    broker: &Broker,
    session: &Session,
    request: DeleteTopicsRequest,
) -> DeleteTopicsResponse {
    let names: Vec<TopicName> = request
        .topic_names
        .into_iter()
        .chain(request.topics.into_iter().filter_map(|t| t.name))
        .collect();
    let mut results = Vec::new();
    for name in names {
        let mut result = DeletableTopicResult::default().with_name(Some(name.clone()));
        let tern = Request::DeleteTopic {
            name: name.0.to_string(),
        };
        if let Err(f) = broker.handle(session, tern).await {
            result.error_code = kafka_code(f.code);
            count_error(broker, "DeleteTopics", result.error_code);
        }
        results.push(result);
    }
    DeleteTopicsResponse::default().with_responses(results)
}

async fn create_partitions(
    broker: &Broker,
    session: &Session,
    request: CreatePartitionsRequest,
) -> CreatePartitionsResponse {
    let mut results = Vec::new();
    for t in request.topics {
        let mut result = CreatePartitionsTopicResult::default().with_name(t.name.clone());
        let outcome = if t.assignments.is_some() {
            Err((
                ResponseError::InvalidReplicaAssignment.code(),
                "Tern places replicas itself; manual assignments are not supported".to_string(),
            ))
        } else if request.validate_only {
            Ok(())
        } else {
            let tern = Request::CreatePartitions {
                topic: t.name.0.to_string(),
                count: t.count.max(0) as u32,
            };
            admin(broker, session, tern).await
        };
        if let Err((code, message)) = outcome {
            result.error_code = code;
            result.error_message = Some(str(&message));
            count_error(broker, "CreatePartitions", code);
        }
        results.push(result);
    }
    CreatePartitionsResponse::default().with_results(results)
}

/// A producer id for an idempotent producer: random, like the ids Tern's
/// own producers choose (2^62 of them: a collision between live producers
/// is not a practical concern). Transactions are not supported.
fn init_producer_id(broker: &Broker, request: InitProducerIdRequest) -> InitProducerIdResponse {
    let mut response = InitProducerIdResponse::default();
    if request.transactional_id.is_some() {
        response.error_code = ResponseError::TransactionalIdAuthorizationFailed.code();
        count_error(broker, "InitProducerId", response.error_code);
        return response;
    }
    let mut bytes = [0u8; 8];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .expect("the system's random source works");
    let id = (u64::from_le_bytes(bytes) >> 2) as i64;
    response.producer_id = ProducerId(id.max(1));
    response.producer_epoch = 0;
    response
}

/// Any broker coordinates any group (group state is replicated and writes
/// are forwarded to the metadata leader): the coordinator is this broker.
fn find_coordinator(
    broker: &Broker,
    request: FindCoordinatorRequest,
    version: i16,
) -> FindCoordinatorResponse {
    let me = broker.config().node_id;
    let mine = kafka_brokers(broker)
        .into_iter()
        .find(|(id, _, _)| *id == me)
        .or_else(|| {
            let (host, port) = host_port(broker.config().kafka_advertise.as_deref()?)?;
            Some((me, host, port))
        });
    let answer = |key: StrBytes| {
        let mut c = Coordinator::default().with_key(key);
        match (&mine, request.key_type) {
            (Some((id, host, port)), 0) => {
                c.node_id = BrokerId(*id as i32);
                c.host = str(host);
                c.port = *port;
            }
            (_, 0) => c.error_code = ResponseError::CoordinatorNotAvailable.code(),
            _ => {
                c.error_code = ResponseError::InvalidRequest.code();
                c.error_message = Some(str("Tern does not support Kafka transactions"));
            }
        }
        c
    };
    let mut response = FindCoordinatorResponse::default();
    if version >= 4 {
        response.coordinators = request.coordinator_keys.into_iter().map(answer).collect();
        for c in &response.coordinators {
            count_error(broker, "FindCoordinator", c.error_code);
        }
    } else {
        let c = answer(request.key);
        count_error(broker, "FindCoordinator", c.error_code);
        response.error_code = c.error_code;
        if version >= 1 {
            response.error_message = c.error_message;
        }
        response.node_id = c.node_id;
        response.host = c.host;
        response.port = c.port;
    }
    response
}

/// Kafka resource types in `DescribeConfigs`.
const RESOURCE_TOPIC: i8 = 2;
const RESOURCE_BROKER: i8 = 4;

async fn describe_configs(
    broker: &Broker,
    session: &Session,
    request: DescribeConfigsRequest,
) -> DescribeConfigsResponse {
    let mut results = Vec::new();
    for resource in request.resources {
        let name = resource.resource_name.to_string();
        let mut result = DescribeConfigsResult::default()
            .with_resource_type(resource.resource_type)
            .with_resource_name(resource.resource_name.clone());
        let entry = |k: &str, v: String| {
            DescribeConfigsResourceResult::default()
                .with_name(str(k))
                .with_value(Some(str(&v)))
                .with_read_only(true)
        };
        match resource.resource_type {
            RESOURCE_TOPIC => {
                let tern = Request::Metadata {
                    topics: Some(vec![name.clone()]),
                };
                match broker.handle(session, tern).await {
                    Ok(Response::Metadata { topics, .. }) => match topics.first() {
                        Some(t) if t.error == ErrorCode::None => {
                            let retention_ms = if t.config.retention_ms == RETENTION_BROKER_DEFAULT
                            {
                                broker.config().default_retention_ms
                            } else {
                                t.config.retention_ms
                            };
                            result.configs = vec![
                                entry("retention.ms", retention_ms.to_string()),
                                entry("retention.bytes", t.config.retention_bytes.to_string()),
                                entry("cleanup.policy", "delete".into()),
                                entry(
                                    "min.insync.replicas",
                                    (t.config.replication_factor / 2 + 1).to_string(),
                                ),
                            ];
                        }
                        Some(t) => result.error_code = kafka_code(t.error),
                        None => result.error_code = ResponseError::UnknownTopicOrPartition.code(),
                    },
                    Ok(_) => {}
                    Err(f) => result.error_code = kafka_code(f.code),
                }
            }
            RESOURCE_BROKER => {
                result.configs = vec![
                    entry("broker.id", broker.config().node_id.to_string()),
                    entry("auto.create.topics.enable", "false".into()),
                ];
            }
            _ => {
                result.error_code = ResponseError::InvalidRequest.code();
                result.error_message = Some(str("Tern describes topic and broker configs only"));
            }
        }
        if let Some(keys) = &resource.configuration_keys {
            result.configs.retain(|c| keys.iter().any(|k| k == &c.name));
        }
        count_error(broker, "DescribeConfigs", result.error_code);
        results.push(result);
    }
    DescribeConfigsResponse::default().with_results(results)
}

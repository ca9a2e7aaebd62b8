//! Cluster administration: topics, brokers, consumer groups, ACL rules.

use std::time::Duration;

use tern_protocol::acl::{AclRequest, AclResponse, AclRule};
use tern_protocol::api::{
    FetchPartition, OffsetSpec, TopicConfig, TopicInfo, RETENTION_BROKER_DEFAULT,
};
use tern_protocol::auth::{UserRequest, UserResponse};
use tern_protocol::coord::{GroupInfo, GroupRequest, GroupResponse};
use tern_protocol::rebalance::{PlanState, RebalanceRequest, RebalanceResponse};
use tern_protocol::{ErrorCode, Request, Response};

use crate::client::Client;
use crate::consumer::Offset;
use crate::error::ClientError;
use crate::retry::RetryPolicy;

/// Retries of a partition move through leader changes: pauses from 100 ms
/// doubling to 1 s, 15 retries (12.5–25 s of pauses).
const REASSIGN_RETRY: RetryPolicy = RetryPolicy {
    first: Duration::from_millis(100),
    max: Duration::from_secs(1),
    attempts_max: Some(15),
};

/// Settings of a topic to create.
#[derive(Debug, Clone)]
pub struct NewTopic {
    /// Number of partitions.
    pub partitions: u32,
    /// Copies of each partition (capped by the number of brokers).
    pub replication_factor: u16,
    /// Retention by age in ms; `None` = the broker's default, `Some(-1)` = forever.
    pub retention_ms: Option<i64>,
    /// Retention by size per partition in bytes; `None` = unlimited.
    pub retention_bytes: Option<i64>,
}

impl NewTopic {
    /// A topic with `partitions` partitions and default settings.
    pub fn new(partitions: u32) -> NewTopic {
        NewTopic {
            partitions,
            replication_factor: 3,
            retention_ms: None,
            retention_bytes: None,
        }
    }
}

/// How a rebalance runs (see [`Admin::rebalance`]).
#[derive(Debug, Clone, Default)]
pub struct RebalanceOptions {
    /// Only compute the plan and answer it.
    pub dry_run: bool,
    /// Most moves at once, cluster-wide (0: the brokers' default, 2).
    pub max_concurrent_moves: u32,
    /// Replication bandwidth to new replicas, bytes/s per sending broker
    /// (0: unthrottled).
    pub throttle_bytes_per_sec: u64,
    /// Brokers to leave out of the placement (about to be removed).
    pub exclude: Vec<u32>,
}

/// How often [`Admin::wait_rebalance`] looks at the plan.
const REBALANCE_POLL: Duration = Duration::from_millis(500);

/// Topic operations.
///
/// ```no_run
/// # async fn demo() -> Result<(), tern_client::ClientError> {
/// use tern_client::{Admin, Client, NewTopic};
/// let admin = Admin::new(Client::connect("127.0.0.1:4650").await?);
/// admin.create_topic("orders", NewTopic::new(6)).await?;
/// let t = admin.describe_topic("orders").await?;
/// assert_eq!(t.partitions.len(), 6);
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Admin {
    client: Client,
}

impl Admin {
    /// Admin operations on `client`'s cluster.
    pub fn new(client: Client) -> Admin {
        Admin { client }
    }

    /// Creates a topic.
    ///
    /// # Cancel safety
    /// Cancelled, the request may or may not have been carried out (it is
    /// one request: all or nothing); look before repeating it.
    pub async fn create_topic(&self, name: &str, topic: NewTopic) -> Result<(), ClientError> {
        let request = Request::CreateTopic {
            name: name.to_owned(),
            config: TopicConfig {
                partitions: topic.partitions,
                replication_factor: topic.replication_factor,
                retention_ms: topic.retention_ms.unwrap_or(RETENTION_BROKER_DEFAULT),
                retention_bytes: topic.retention_bytes.unwrap_or(-1),
            },
        };
        match self.client.request_any(request).await? {
            Response::CreateTopic => {
                self.client.invalidate(name);
                Ok(())
            }
            _ => Err(ClientError::Decode(
                "create answered with another type".into(),
            )),
        }
    }

    /// Grows `name` to `total` partitions in all — the new total, like
    /// `kafka-topics --alter --partitions`, not the number to add. Existing
    /// partitions keep their records and replicas; from then on about
    /// `(total - old) / total` of the keys are routed to the new partitions
    /// (their older records stay where they were: per-key order holds
    /// within each partition, not across the growth). Producers see the new
    /// count within their `metadata_max_age`; consumer groups reading the
    /// topic rebalance at once. Returns when the new partitions have
    /// leaders.
    ///
    /// Errors: `invalid_partitions` if `total` is not larger than the
    /// current count or over the per-topic limit, `limit_exceeded` over the
    /// cluster's `cluster_partitions_max`, `unknown_topic_or_partition` for
    /// an unknown topic.
    ///
    /// ```no_run
    /// # async fn demo(admin: tern_client::Admin) -> Result<(), tern_client::ClientError> {
    /// admin.create_partitions("orders", 12).await?; // orders had 6
    /// # Ok(()) }
    /// ```
    ///
    /// # Cancel safety
    /// Cancelled, the request may or may not have been carried out (it is
    /// one request: all or nothing); look before repeating it.
    pub async fn create_partitions(&self, name: &str, total: u32) -> Result<(), ClientError> {
        let r = self
            .client
            .request_any(Request::CreatePartitions {
                topic: name.to_owned(),
                count: total,
            })
            .await;
        self.client.invalidate(name);
        match r? {
            Response::CreatePartitions => Ok(()),
            _ => Err(ClientError::Decode(
                "create partitions answered with another type".into(),
            )),
        }
    }

    /// Deletes a topic and its data.
    ///
    /// # Cancel safety
    /// Cancelled, the request may or may not have been carried out (it is
    /// one request: all or nothing); look before repeating it.
    pub async fn delete_topic(&self, name: &str) -> Result<(), ClientError> {
        let r = self
            .client
            .request_any(Request::DeleteTopic {
                name: name.to_owned(),
            })
            .await;
        self.client.invalidate(name);
        match r? {
            Response::DeleteTopic => Ok(()),
            _ => Err(ClientError::Decode(
                "delete answered with another type".into(),
            )),
        }
    }

    /// The client this admin uses.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Adds a broker, started with `--join`, to the cluster.
    ///
    /// # Cancel safety
    /// Cancelled, the request may or may not have been carried out (it is
    /// one request: all or nothing); look before repeating it.
    pub async fn add_broker(&self, node_id: u32, peer_addr: &str) -> Result<(), ClientError> {
        match self
            .client
            .any_connection()
            .await?
            .request_with(
                Request::AddBroker {
                    node_id,
                    peer_addr: peer_addr.to_owned(),
                },
                MEMBERSHIP_WAIT,
            )
            .await?
        {
            Response::AddBroker => Ok(()),
            _ => Err(ClientError::Decode(
                "add broker answered with another type".into(),
            )),
        }
    }

    /// Moves one partition to `replicas` (sent to its leader, retried
    /// through leader changes). Returns once the new replicas are the
    /// partition's voters and the old ones are gone.
    ///
    /// # Cancel safety
    /// Cancelled, the move may go on at the cluster (its leader carries it
    /// through once asked); calling again with the same replicas is safe.
    pub async fn reassign_partition(
        &self,
        topic: &str,
        partition: u32,
        replicas: &[u32],
    ) -> Result<(), ClientError> {
        let request = Request::ReassignPartition {
            topic: topic.to_owned(),
            partition,
            replicas: replicas.to_vec(),
        };
        let mut pauses = REASSIGN_RETRY.backoff();
        loop {
            let answer = match self.client.leader(topic, partition).await {
                // The leader answers once the new replicas caught up.
                Ok(conn) => conn.request_with(request.clone(), MEMBERSHIP_WAIT).await,
                Err(e) => Err(e),
            };
            match answer {
                Ok(Response::ReassignPartition) => {
                    self.client.invalidate(topic);
                    return Ok(());
                }
                Ok(_) => {
                    return Err(ClientError::Decode(
                        "reassign answered with another type".into(),
                    ))
                }
                Err(e) if e.is_retriable() => {
                    self.client.invalidate(topic);
                    if !pauses.wait().await {
                        return Err(e);
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Computes the consistent-hash placement of every partition for the
    /// current brokers (less `options.exclude`) and, unless a dry run,
    /// starts moving the replicas whose placement changed — online, a few
    /// at a time, by the partitions' leaders. Answers the plan; follow it
    /// with [`Admin::rebalance_status`] or [`Admin::wait_rebalance`].
    ///
    /// # Cancel safety
    /// Cancel safe in the sense that the plan, once stored, runs whether
    /// or not this call's answer arrives.
    pub async fn rebalance(
        &self,
        options: &RebalanceOptions,
    ) -> Result<RebalanceResponse, ClientError> {
        let request = RebalanceRequest::Start {
            dry_run: options.dry_run,
            max_concurrent_moves: options.max_concurrent_moves,
            throttle_bytes_per_sec: options.throttle_bytes_per_sec,
            exclude: options.exclude.clone(),
        };
        self.rebalance_request(request).await
    }

    /// The last rebalance and its progress.
    ///
    /// # Cancel safety
    /// Cancel safe: it only reads.
    pub async fn rebalance_status(&self) -> Result<RebalanceResponse, ClientError> {
        self.rebalance_request(RebalanceRequest::Status).await
    }

    /// Stops the running rebalance (moves under way finish).
    ///
    /// # Cancel safety
    /// Cancel safe: the cancellation is one metadata write.
    pub async fn cancel_rebalance(&self) -> Result<RebalanceResponse, ClientError> {
        self.rebalance_request(RebalanceRequest::Cancel).await
    }

    /// Waits until rebalance `plan_id` is no longer running (finished, or
    /// cancelled, or superseded by a newer plan), within `timeout`. A
    /// broker whose copy of the metadata has not yet applied the plan
    /// answers an older one (plan ids grow): that is waited out too.
    ///
    /// # Cancel safety
    /// Cancel safe: it only reads.
    pub async fn wait_rebalance(
        &self,
        plan_id: u64,
        timeout: Duration,
    ) -> Result<RebalanceResponse, ClientError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match self.rebalance_status().await {
                Ok(status) if status.plan_id > plan_id => return Ok(status),
                Ok(status) if status.plan_id == plan_id && status.state != PlanState::Running => {
                    return Ok(status)
                }
                Ok(_) => {}
                Err(e) if e.is_retriable() => {}
                Err(e) => return Err(e),
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ClientError::Timeout(timeout));
            }
            tokio::time::sleep(REBALANCE_POLL).await;
        }
    }

    async fn rebalance_request(
        &self,
        request: RebalanceRequest,
    ) -> Result<RebalanceResponse, ClientError> {
        match self.client.request_any(Request::Rebalance(request)).await? {
            Response::Rebalance(r) => Ok(r),
            _ => Err(ClientError::Decode(
                "rebalance answered with another type".into(),
            )),
        }
    }

    /// Removes a broker from the cluster: first a rebalance that leaves it
    /// out of the placement (only its replicas move, each to where
    /// consistent hashing puts it among the others), waiting up to
    /// `timeout` for it; then removes it from the metadata group, after
    /// which the broker stops itself.
    ///
    /// # Cancel safety
    /// Not cancel safe: cancelled midway, some replicas may have moved and
    /// the broker may still be a member; calling again finishes the job.
    pub async fn remove_broker(&self, node_id: u32, timeout: Duration) -> Result<(), ClientError> {
        let plan = self
            .rebalance(&RebalanceOptions {
                exclude: vec![node_id],
                ..RebalanceOptions::default()
            })
            .await?;
        if !plan.moves.is_empty() {
            let done = self.wait_rebalance(plan.plan_id, timeout).await?;
            if done.plan_id != plan.plan_id || done.state != PlanState::Finished {
                return Err(ClientError::Broker {
                    code: ErrorCode::InvalidRequest,
                    message: format!(
                        "the rebalance moving broker {node_id}'s replicas away ended {:?} \
                         before every move was done",
                        done.state
                    ),
                });
            }
        }
        match self
            .client
            .any_connection()
            .await?
            .request_with(Request::RemoveBroker { node_id }, MEMBERSHIP_WAIT)
            .await?
        {
            Response::RemoveBroker => Ok(()),
            _ => Err(ClientError::Decode(
                "remove broker answered with another type".into(),
            )),
        }
    }

    /// Moves leadership back to preferred leaders now: asks every broker
    /// of the cluster to campaign, without its usual wait, for the
    /// partitions it is the preferred leader of (the first broker of each
    /// replica list) that another broker leads, where its replica is
    /// caught up. Brokers do this by themselves a few seconds after a
    /// restart unless started with `--auto-leader-balance=false`. Elections
    /// take about an election timeout; partitions over a broker's
    /// elections-per-second limit, and elections lost, are retried by the
    /// broker for the next 30 s. A broker that cannot be asked is listed
    /// in [`LeaderBalance::unreachable`]; only when none answers is it an
    /// error.
    ///
    /// # Cancel safety
    /// Cancelled, some brokers may have been asked; asking again is
    /// harmless.
    pub async fn balance_leaders(&self) -> Result<LeaderBalance, ClientError> {
        self.client.refresh_metadata(Some(Vec::new())).await?;
        let asks = self
            .client
            .brokers()
            .into_iter()
            .map(|(node, addr)| async move {
                let answer = match self.client.connection(&addr).await {
                    Ok(conn) => conn.request(Request::BalanceLeaders).await,
                    Err(e) => Err(e),
                };
                (node, answer)
            });
        let mut balance = LeaderBalance::default();
        let mut first_error = None;
        for (node, answer) in futures::future::join_all(asks).await {
            match answer {
                Ok(Response::BalanceLeaders {
                    not_preferred,
                    elections,
                }) => balance.brokers.push(BrokerBalance {
                    node_id: node,
                    not_preferred,
                    elections,
                }),
                Ok(_) => {
                    return Err(ClientError::Decode(
                        "balance leaders answered with another type".into(),
                    ))
                }
                Err(e) => {
                    balance.unreachable.push((node, e.to_string()));
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) if balance.brokers.is_empty() => Err(e),
            _ => Ok(balance),
        }
    }

    /// Every topic, sorted by name.
    ///
    /// # Cancel safety
    /// Cancel safe: it only reads.
    pub async fn list_topics(&self) -> Result<Vec<TopicInfo>, ClientError> {
        self.client.refresh_metadata(None).await
    }

    /// One topic, fresh from the brokers: each partition as its leader sees
    /// it (only a leader knows which replicas are in sync and its log end).
    ///
    /// # Cancel safety
    /// Cancel safe: it only reads.
    pub async fn describe_topic(&self, name: &str) -> Result<TopicInfo, ClientError> {
        self.client.invalidate(name);
        let mut topic = self.client.topic(name).await?;
        let mut from_leader: std::collections::HashMap<u32, Vec<TopicInfo>> = Default::default();
        for p in topic.partitions.iter_mut() {
            if let std::collections::hash_map::Entry::Vacant(slot) = from_leader.entry(p.leader) {
                let Ok(conn) = self.client.leader(name, p.partition).await else {
                    continue;
                };
                let answer = conn
                    .request(Request::Metadata {
                        topics: Some(vec![name.to_owned()]),
                    })
                    .await;
                if let Ok(Response::Metadata { topics, .. }) = answer {
                    slot.insert(topics);
                }
            }
            let fresh = from_leader
                .get(&p.leader)
                .and_then(|ts| ts.first())
                .and_then(|t| t.partitions.iter().find(|q| q.partition == p.partition));
            if let Some(fresh) = fresh.filter(|q| q.leader == p.leader) {
                *p = fresh.clone();
            }
        }
        Ok(topic)
    }

    /// Reads a partition's committed log from one broker's own replica
    /// (`addr`, whether it leads or not) and digests it: the tool to check
    /// that replicas converged byte for byte.
    ///
    /// # Cancel safety
    /// Cancel safe: it only reads.
    pub async fn replica_digest(
        &self,
        addr: &str,
        topic: &str,
        partition: u32,
    ) -> Result<ReplicaDigest, ClientError> {
        let conn = self.client.connection(addr).await?;
        let mut hasher = xxhash_rust::xxh3::Xxh3::new();
        let mut digest = ReplicaDigest {
            addr: addr.to_owned(),
            log_start: 0,
            log_end: 0,
            records: 0,
            xxh3: 0,
        };
        let mut offset = 0;
        let mut first = true;
        loop {
            let response = conn
                .request(Request::Fetch {
                    max_wait_ms: 0,
                    min_bytes: 0,
                    max_bytes: 4 << 20,
                    partitions: vec![FetchPartition {
                        topic: topic.to_owned(),
                        partition,
                        offset,
                        max_bytes: 4 << 20,
                    }],
                })
                .await?;
            let Response::Fetch(results) = response else {
                return Err(ClientError::Decode(
                    "fetch answered with another type".into(),
                ));
            };
            let r = results
                .into_iter()
                .next()
                .ok_or_else(|| ClientError::Decode("empty fetch response".into()))?;
            match r.error {
                ErrorCode::None => {}
                // Retention moved the start: begin there.
                ErrorCode::OffsetOutOfRange if first && r.log_start > offset => {
                    offset = r.log_start;
                    first = false;
                    continue;
                }
                code => {
                    return Err(ClientError::Partition {
                        topic: topic.to_owned(),
                        partition,
                        code,
                    })
                }
            }
            if first {
                digest.log_start = r.log_start;
                first = false;
            }
            digest.log_end = r.high_watermark;
            if r.records.is_empty() {
                break;
            }
            for view in tern_protocol::record::split_batches(r.records) {
                let view = view.map_err(|source| ClientError::CorruptBatch {
                    topic: topic.to_owned(),
                    partition,
                    source,
                })?;
                hasher.update(view.bytes());
                digest.records += view.record_count() as u64;
                offset = view.next_offset();
            }
            if offset >= digest.log_end {
                break;
            }
        }
        digest.xxh3 = hasher.digest();
        Ok(digest)
    }

    /// Creates user `name` with `password`, or changes its password. The
    /// stored credential is derived here; the password is never sent. On a
    /// broker that requires authentication, this client must be
    /// authenticated as a super-user.
    ///
    /// # Cancel safety
    /// Cancelled after the request was written, it may still be carried out.
    pub async fn upsert_user(&self, name: &str, password: &str) -> Result<(), ClientError> {
        tern_auth::validate_username(name)
            .map_err(|e| ClientError::InvalidArgument(e.to_string()))?;
        let credential = crate::auth::derive_credential(password)?;
        self.user_request(UserRequest::Upsert {
            name: name.to_owned(),
            credential,
        })
        .await
        .map(|_| ())
    }

    /// Deletes user `name` (connections it already opened stay open).
    ///
    /// # Cancel safety
    /// Cancelled after the request was written, it may still be carried out.
    pub async fn delete_user(&self, name: &str) -> Result<(), ClientError> {
        self.user_request(UserRequest::Delete {
            name: name.to_owned(),
        })
        .await
        .map(|_| ())
    }

    /// Every username, sorted.
    ///
    /// # Cancel safety
    /// Cancel safe: it only reads.
    pub async fn list_users(&self) -> Result<Vec<String>, ClientError> {
        match self.user_request(UserRequest::List).await? {
            UserResponse::List(names) => Ok(names),
            other => Err(ClientError::Decode(format!("answered with {other:?}"))),
        }
    }

    async fn user_request(&self, request: UserRequest) -> Result<UserResponse, ClientError> {
        match self.client.request_any(Request::User(request)).await? {
            Response::User(answer) => Ok(answer),
            other => Err(ClientError::Decode(format!("answered with {other:?}"))),
        }
    }

    /// Adds an authorization rule (adding one that exists changes
    /// nothing). Answered once the broker that took it applies it.
    ///
    /// # Cancel safety
    /// Cancelled, the rule may or may not have been added; adding it again
    /// is harmless.
    pub async fn add_acl(&self, rule: AclRule) -> Result<(), ClientError> {
        self.acl_change(AclRequest::Add(rule)).await
    }

    /// Removes an authorization rule (removing one that does not exist
    /// changes nothing).
    ///
    /// # Cancel safety
    /// Cancelled, the rule may or may not have been removed; removing it
    /// again is harmless.
    pub async fn remove_acl(&self, rule: AclRule) -> Result<(), ClientError> {
        self.acl_change(AclRequest::Remove(rule)).await
    }

    async fn acl_change(&self, request: AclRequest) -> Result<(), ClientError> {
        match self.client.request_any(Request::Acl(request)).await? {
            Response::Acl(AclResponse::Done) => Ok(()),
            other => Err(ClientError::Decode(format!("answered with {other:?}"))),
        }
    }

    /// Every authorization rule of the cluster, read a page at a time from
    /// one broker.
    ///
    /// # Cancel safety
    /// Cancel safe: it only reads.
    pub async fn list_acls(&self) -> Result<Vec<AclRule>, ClientError> {
        let conn = self.client.any_connection().await?;
        let mut rules = Vec::new();
        loop {
            let start = u32::try_from(rules.len())
                .map_err(|_| ClientError::Decode("more ACL rules than a u32 counts".into()))?;
            match conn
                .request(Request::Acl(AclRequest::List { start }))
                .await?
            {
                Response::Acl(AclResponse::List { total, rules: page }) => {
                    let done = page.is_empty() || rules.len() + page.len() >= total as usize;
                    rules.extend(page);
                    if done {
                        return Ok(rules);
                    }
                }
                other => return Err(ClientError::Decode(format!("answered with {other:?}"))),
            }
        }
    }

    /// Names of every consumer group.
    ///
    /// # Cancel safety
    /// Cancel safe: it only reads.
    pub async fn list_groups(&self) -> Result<Vec<String>, ClientError> {
        match self
            .client
            .coordinate(Request::Group(GroupRequest::List), Duration::ZERO)
            .await?
        {
            Response::Group(GroupResponse::List(names)) => Ok(names),
            other => Err(ClientError::Decode(format!("answered with {other:?}"))),
        }
    }

    /// One group: members, assignment, committed offsets. The high
    /// watermarks are each partition leader's, so lag is exact.
    ///
    /// # Cancel safety
    /// Cancel safe: it only reads.
    pub async fn describe_group(&self, group: &str) -> Result<GroupInfo, ClientError> {
        let request = Request::Group(GroupRequest::Describe {
            group: group.to_owned(),
        });
        let mut info = match self.client.coordinate(request, Duration::ZERO).await? {
            Response::Group(GroupResponse::Describe(info)) => info,
            other => return Err(ClientError::Decode(format!("answered with {other:?}"))),
        };
        for o in &mut info.offsets {
            if let Ok(end) = self
                .list_offset(&o.topic, o.partition, OffsetSpec::Latest)
                .await
            {
                o.high_watermark = end;
            }
        }
        Ok(info)
    }

    /// Sets a group's committed offsets for every partition of `topic`
    /// (the group must have no members): to each partition's first or
    /// next offset, or to one offset everywhere.
    ///
    /// # Cancel safety
    /// Cancelled, the offsets may or may not have been set (one request
    /// sets them all, after the offsets were looked up).
    pub async fn reset_group_offsets(
        &self,
        group: &str,
        topic: &str,
        to: Offset,
    ) -> Result<Vec<(String, u32, u64)>, ClientError> {
        let offsets = self.group_offset_targets(topic, to).await?;
        let request = Request::Group(GroupRequest::ResetOffsets {
            group: group.to_owned(),
            offsets: offsets.clone(),
        });
        self.client.coordinate(request, Duration::ZERO).await?;
        Ok(offsets)
    }

    /// The offsets [`Admin::reset_group_offsets`] would set for `topic`,
    /// `(topic, partition, offset)` per partition, changing nothing (a dry
    /// run).
    pub async fn group_offset_targets(
        &self,
        topic: &str,
        to: Offset,
    ) -> Result<Vec<(String, u32, u64)>, ClientError> {
        let partitions = self.client.topic(topic).await?.partitions.len() as u32;
        let mut offsets = Vec::with_capacity(partitions as usize);
        for p in 0..partitions {
            let offset = match to {
                Offset::Earliest => self.list_offset(topic, p, OffsetSpec::Earliest).await?,
                Offset::Latest => self.list_offset(topic, p, OffsetSpec::Latest).await?,
                Offset::At(o) => o,
                Offset::Timestamp(t) => {
                    self.list_offset(topic, p, OffsetSpec::Timestamp(t)).await?
                }
            };
            offsets.push((topic.to_owned(), p, offset));
        }
        Ok(offsets)
    }

    /// An offset of a partition: earliest, latest, or by timestamp.
    ///
    /// # Cancel safety
    /// Cancel safe: it only reads.
    pub async fn list_offset(
        &self,
        topic: &str,
        partition: u32,
        spec: OffsetSpec,
    ) -> Result<u64, ClientError> {
        let conn = self.client.leader(topic, partition).await?;
        match conn
            .request(Request::ListOffsets {
                topic: topic.to_owned(),
                partition,
                spec,
            })
            .await?
        {
            Response::ListOffsets { offset } => Ok(offset),
            _ => Err(ClientError::Decode(
                "list offsets answered with another type".into(),
            )),
        }
    }
}

/// Extra time membership requests may take beyond the request timeout
/// (a new replica copies the partition before the broker answers; brokers
/// give up after 15 s).
pub(crate) const MEMBERSHIP_WAIT: std::time::Duration = std::time::Duration::from_secs(20);

/// What [`Admin::balance_leaders`] found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaderBalance {
    /// Each broker that answered, by node id.
    pub brokers: Vec<BrokerBalance>,
    /// Brokers that could not be asked: node id and why.
    pub unreachable: Vec<(u32, String)>,
}

impl LeaderBalance {
    /// Partitions not led by their preferred leader, as the preferred
    /// leaders that answered counted them.
    pub fn not_preferred(&self) -> u32 {
        self.brokers.iter().map(|b| b.not_preferred).sum()
    }

    /// Elections started.
    pub fn elections(&self) -> u32 {
        self.brokers.iter().map(|b| b.elections).sum()
    }
}

/// One broker's answer to [`Admin::balance_leaders`], about the partitions
/// it is the preferred leader of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BrokerBalance {
    /// The broker.
    pub node_id: u32,
    /// Partitions it is the preferred leader of but does not lead.
    pub not_preferred: u32,
    /// Elections it started for them.
    pub elections: u32,
}

/// One replica's committed log, summarised by [`Admin::replica_digest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaDigest {
    /// The broker read.
    pub addr: String,
    /// First offset it holds.
    pub log_start: u64,
    /// Its committed log end (high watermark).
    pub log_end: u64,
    /// Records read.
    pub records: u64,
    /// XXH3-64 over every batch's bytes, in order.
    pub xxh3: u64,
}

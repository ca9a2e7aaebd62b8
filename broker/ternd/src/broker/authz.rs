//! Authorization of every request against the cluster's ACL rules.
//!
//! [`needs`] is the one place that says what each request kind needs —
//! which operation on which resources — so no request kind can skip the
//! check: its `match` is exhaustive over [`Request`], and a unit test walks
//! every [`ApiKey`]. [`Broker::authorize_request`] runs it before a request
//! does anything; produce is checked per partition in `enqueue_produce` (the
//! connection calls it directly), metadata filters the topics the principal
//! may not describe.
//!
//! The principal always comes from the connection's [`Session`] (proven by
//! a TLS client certificate or a SCRAM exchange), never from the request. A denial is counted in
//! `tern_acl_denied_total{operation}` and logged on the `tern::security`
//! target with the principal, peer, operation and resource; admin requests
//! that succeed are logged there too.
//!
//! Must never: decide by anything but the rules and the configured
//! super-users, or let a request through when authorization is on and no
//! rule allows it.

use tern_acl::{AclSet, Operation, Resource};
use tern_protocol::acl::AclRequest;
use tern_protocol::auth::UserRequest;
use tern_protocol::coord::{GroupRequest, LockRequest};
use tern_protocol::rebalance::RebalanceRequest;
use tern_protocol::{ErrorCode, Request};

use super::{Broker, Failure};
use crate::session::Session;

/// What one request needs to be allowed.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Needs<'a> {
    /// Every `(resource, operation)` must be allowed, or the whole request
    /// is refused with `AccessDenied`.
    All(Vec<(Resource<'a>, Operation)>),
    /// Produce: each partition's topic is checked on its own; a refused
    /// partition answers `AccessDenied`, the others go on.
    ProducePerTopic,
    /// Metadata: `Describe` on each topic; topics not allowed are left out
    /// of an all-topics answer and answered `AccessDenied` when named.
    DescribeTopics,
}

fn topics<'a>(
    names: impl IntoIterator<Item = &'a String>,
    operation: Operation,
) -> impl Iterator<Item = (Resource<'a>, Operation)> {
    names
        .into_iter()
        .map(move |t| (Resource::Topic(t.as_str()), operation))
}

/// What `request` needs: the single mapping from request kinds to
/// resources and operations.
pub(crate) fn needs(request: &Request) -> Needs<'_> {
    use Operation::*;
    fn one(r: Resource<'_>, o: Operation) -> Vec<(Resource<'_>, Operation)> {
        vec![(r, o)]
    }
    Needs::All(match request {
        Request::Produce { .. } => return Needs::ProducePerTopic,
        Request::Metadata { .. } => return Needs::DescribeTopics,
        Request::Fetch { partitions, .. } => {
            let mut v: Vec<_> = topics(partitions.iter().map(|p| &p.topic), Consume).collect();
            v.dedup();
            v
        }
        Request::ListOffsets { topic, .. } => one(Resource::Topic(topic), Consume),
        Request::CreateTopic { name, .. } => one(Resource::Topic(name), Create),
        Request::DeleteTopic { name } => one(Resource::Topic(name), Delete),
        Request::AddBroker { .. }
        | Request::RemoveBroker { .. }
        | Request::ReassignPartition { .. } => one(Resource::Cluster, Alter),
        Request::Lock(l) => match l {
            LockRequest::Acquire { name, .. }
            | LockRequest::KeepAlive { name, .. }
            | LockRequest::Release { name, .. } => one(Resource::Lock(name), Lock),
            LockRequest::List => one(Resource::Cluster, Describe),
        },
        Request::Group(g) => match g {
            GroupRequest::Join {
                group, topics: t, ..
            } => {
                let mut v = one(Resource::Group(group), Consume);
                v.extend(topics(t, Consume));
                v
            }
            GroupRequest::Heartbeat { group, .. } | GroupRequest::Leave { group, .. } => {
                one(Resource::Group(group), Consume)
            }
            GroupRequest::Commit { group, offsets, .. }
            | GroupRequest::ResetOffsets { group, offsets } => {
                let mut v = one(Resource::Group(group), Consume);
                v.extend(topics(offsets.iter().map(|(t, _, _)| t), Consume));
                v.dedup();
                v
            }
            GroupRequest::List => one(Resource::Cluster, Describe),
            GroupRequest::Describe { group } => one(Resource::Group(group), Describe),
        },
        Request::Acl(a) => match a {
            AclRequest::Add(_) | AclRequest::Remove(_) => one(Resource::Cluster, Alter),
            AclRequest::List { .. } => one(Resource::Cluster, Describe),
        },
        // Moving leadership changes the cluster (Kafka: ALTER on the
        // cluster for preferred-leader elections).
        Request::BalanceLeaders => one(Resource::Cluster, Alter),
        Request::Rebalance(r) => match r {
            RebalanceRequest::Start { dry_run: true, .. } | RebalanceRequest::Status => {
                one(Resource::Cluster, Describe)
            }
            RebalanceRequest::Start { .. } | RebalanceRequest::Cancel => {
                one(Resource::Cluster, Alter)
            }
        },
        // Growing a topic changes it (Kafka: ALTER on the topic).
        Request::CreatePartitions { topic, .. } => one(Resource::Topic(topic), Alter),
        Request::User(u) => match u {
            UserRequest::Upsert { .. } | UserRequest::Delete { .. } => {
                one(Resource::Cluster, Alter)
            }
            UserRequest::List => one(Resource::Cluster, Describe),
        },
        // Authenticating is how a connection gets a principal: it needs
        // nothing (and is carried by the connection, not `handle`).
        Request::SaslHandshake { .. } | Request::SaslAuthenticate { .. } => Vec::new(),
    })
}

/// Whether a request changes the cluster's configuration: logged with its
/// principal on `tern::security` when it succeeds.
pub(crate) fn is_admin(request: &Request) -> bool {
    matches!(
        request,
        Request::CreateTopic { .. }
            | Request::DeleteTopic { .. }
            | Request::AddBroker { .. }
            | Request::RemoveBroker { .. }
            | Request::ReassignPartition { .. }
            | Request::Group(GroupRequest::ResetOffsets { .. })
            | Request::CreatePartitions { .. }
            | Request::BalanceLeaders
            | Request::User(UserRequest::Upsert { .. } | UserRequest::Delete { .. })
            | Request::Acl(AclRequest::Add(_) | AclRequest::Remove(_))
            | Request::Rebalance(
                RebalanceRequest::Start { dry_run: false, .. } | RebalanceRequest::Cancel
            )
    )
}

/// A principal for logs: its name, or `anonymous`.
pub(crate) fn principal_name(session: &Session) -> String {
    session
        .principal()
        .map_or_else(|| "anonymous".to_string(), |p| p.to_string())
}

impl Broker {
    /// The rules to check against, or `None` when authorization is off.
    pub(crate) fn acls(&self) -> Option<std::sync::Arc<AclSet>> {
        self.config.authorization.then(|| self.raft.acls())
    }

    /// Whether `session` may do `operation` on `resource` under `acls`; a
    /// denial is counted and logged.
    pub(crate) fn allows(
        &self,
        acls: &AclSet,
        session: &Session,
        resource: Resource<'_>,
        operation: Operation,
    ) -> bool {
        let principal = session.principal();
        let decision = self
            .authorizer
            .authorize(acls, principal.as_deref(), resource, operation);
        if !decision.is_allowed() {
            self.metrics
                .acl_denied
                .with_label_values(&[operation.name()])
                .inc();
            tracing::warn!(
                target: "tern::security",
                principal = %principal.as_deref().unwrap_or("anonymous"),
                peer = %session.peer(),
                operation = %operation,
                resource = %resource,
                reason = ?decision,
                "access denied"
            );
        }
        decision.is_allowed()
    }

    /// Whether `session` may describe `topic` (metadata filtering: not
    /// counted nor logged as a denial, as the topic was not asked for).
    pub(crate) fn may_describe(&self, acls: &AclSet, session: &Session, topic: &str) -> bool {
        let principal = session.principal();
        self.authorizer
            .authorize(
                acls,
                principal.as_deref(),
                Resource::Topic(topic),
                Operation::Describe,
            )
            .is_allowed()
    }

    /// Refuses `request` with `AccessDenied` unless everything [`needs`]
    /// lists is allowed (produce and metadata check their topics as they
    /// go).
    pub(crate) fn authorize_request(
        &self,
        session: &Session,
        request: &Request,
    ) -> Result<(), Failure> {
        let Some(acls) = self.acls() else {
            return Ok(());
        };
        if let Needs::All(list) = needs(request) {
            for (resource, operation) in list {
                if !self.allows(&acls, session, resource, operation) {
                    return Err(Failure::new(
                        ErrorCode::AccessDenied,
                        format!("{} may not {operation} {resource}", principal_name(session)),
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use tern_protocol::api::{FetchPartition, OffsetSpec, TopicConfig};
    use tern_protocol::coord::LockMode;
    use tern_protocol::ApiKey;

    use super::*;

    /// One request of every kind (and every coordination operation).
    fn one_of_each() -> Vec<Request> {
        use Operation::*;
        let rule = tern_acl::AclRule {
            principal: "p".into(),
            resource: tern_acl::ResourcePattern::cluster(),
            operation: Alter,
            effect: tern_acl::Effect::Allow,
        };
        vec![
            Request::Produce {
                acks: tern_protocol::api::Acks::All,
                timeout_ms: 1,
                partitions: vec![],
            },
            Request::Fetch {
                max_wait_ms: 0,
                min_bytes: 0,
                max_bytes: 0,
                partitions: vec![
                    FetchPartition {
                        topic: "t".into(),
                        partition: 0,
                        offset: 0,
                        max_bytes: 1,
                    },
                    FetchPartition {
                        topic: "t".into(),
                        partition: 1,
                        offset: 0,
                        max_bytes: 1,
                    },
                ],
            },
            Request::Metadata { topics: None },
            Request::CreateTopic {
                name: "t".into(),
                config: TopicConfig {
                    partitions: 1,
                    replication_factor: 1,
                    retention_ms: -1,
                    retention_bytes: -1,
                },
            },
            Request::DeleteTopic { name: "t".into() },
            Request::ListOffsets {
                topic: "t".into(),
                partition: 0,
                spec: OffsetSpec::Latest,
            },
            Request::AddBroker {
                node_id: 2,
                peer_addr: "h:1".into(),
            },
            Request::RemoveBroker { node_id: 2 },
            Request::ReassignPartition {
                topic: "t".into(),
                partition: 0,
                replicas: vec![1],
            },
            Request::Lock(LockRequest::Acquire {
                name: "l".into(),
                owner: 1,
                secret: 1,
                mode: LockMode::Exclusive,
                lease_ms: 1000,
                wait_ms: 0,
            }),
            Request::Lock(LockRequest::KeepAlive {
                name: "l".into(),
                owner: 1,
                secret: 1,
            }),
            Request::Lock(LockRequest::Release {
                name: "l".into(),
                owner: 1,
                secret: 1,
            }),
            Request::Lock(LockRequest::List),
            Request::Group(GroupRequest::Join {
                group: "g".into(),
                member: 1,
                secret: 1,
                topics: vec!["t".into(), "u".into()],
                session_timeout_ms: 1000,
            }),
            Request::Group(GroupRequest::Heartbeat {
                group: "g".into(),
                member: 1,
                secret: 1,
                generation: 1,
                wait_ms: 0,
            }),
            Request::Group(GroupRequest::Leave {
                group: "g".into(),
                member: 1,
                secret: 1,
            }),
            Request::Group(GroupRequest::Commit {
                group: "g".into(),
                member: 1,
                secret: 1,
                generation: 1,
                offsets: vec![("t".into(), 0, 1)],
            }),
            Request::Group(GroupRequest::List),
            Request::Group(GroupRequest::Describe { group: "g".into() }),
            Request::Group(GroupRequest::ResetOffsets {
                group: "g".into(),
                offsets: vec![("t".into(), 0, 1)],
            }),
            Request::Acl(AclRequest::Add(rule.clone())),
            Request::Acl(AclRequest::Remove(rule)),
            Request::Acl(AclRequest::List { start: 0 }),
            // 23..
            Request::CreatePartitions {
                topic: "t".into(),
                count: 4,
            },
            Request::User(UserRequest::Upsert {
                name: "alice".into(),
                credential: tern_protocol::auth::UserCredential {
                    salt: bytes::Bytes::from_static(b"salt"),
                    iterations: 4096,
                    stored_key: bytes::Bytes::from_static(&[0; 32]),
                    server_key: bytes::Bytes::from_static(&[0; 32]),
                },
            }),
            Request::User(UserRequest::Delete {
                name: "alice".into(),
            }),
            Request::User(UserRequest::List),
            Request::SaslHandshake {
                mechanism: "SCRAM-SHA-256".into(),
            },
            Request::SaslAuthenticate {
                auth_bytes: bytes::Bytes::from_static(b"n,,n=alice,r=abc"),
            },
            Request::BalanceLeaders,
            Request::Rebalance(RebalanceRequest::Start {
                dry_run: false,
                max_concurrent_moves: 2,
                throttle_bytes_per_sec: 0,
                exclude: vec![],
            }),
            Request::Rebalance(RebalanceRequest::Cancel),
            Request::Rebalance(RebalanceRequest::Status),
            Request::Rebalance(RebalanceRequest::Start {
                dry_run: true,
                max_concurrent_moves: 0,
                throttle_bytes_per_sec: 0,
                exclude: vec![3],
            }),
        ]
    }

    #[test]
    fn every_request_kind_needs_something() {
        let requests = one_of_each();
        for api in ApiKey::ALL {
            assert!(
                requests.iter().any(|r| r.api_key() == api),
                "no example of {api:?}: add one, and its line in `needs`"
            );
        }
        for r in &requests {
            match needs(r) {
                // Authenticating is how a connection gets a principal.
                Needs::All(list)
                    if matches!(
                        r,
                        Request::SaslHandshake { .. } | Request::SaslAuthenticate { .. }
                    ) =>
                {
                    assert!(list.is_empty())
                }
                Needs::All(list) => assert!(!list.is_empty(), "{r:?} checks nothing"),
                Needs::ProducePerTopic => assert_eq!(r.api_key(), ApiKey::Produce),
                Needs::DescribeTopics => assert_eq!(r.api_key(), ApiKey::Metadata),
            }
        }
    }

    #[test]
    fn the_mapping_names_the_right_resources_and_operations() {
        use Operation::*;
        let r = one_of_each();
        let all = |i: usize| match needs(&r[i]) {
            Needs::All(v) => v,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            all(1),
            vec![(Resource::Topic("t"), Consume)],
            "fetch, deduplicated"
        );
        assert_eq!(all(3), vec![(Resource::Topic("t"), Create)]);
        assert_eq!(all(4), vec![(Resource::Topic("t"), Delete)]);
        assert_eq!(all(5), vec![(Resource::Topic("t"), Consume)]);
        for admin in [6, 7, 8, 20, 21] {
            assert_eq!(
                all(admin),
                vec![(Resource::Cluster, Alter)],
                "{:?}",
                r[admin]
            );
            assert!(is_admin(&r[admin]));
        }
        let balance = r.len() - 5;
        assert_eq!(r[balance], Request::BalanceLeaders);
        assert_eq!(all(balance), vec![(Resource::Cluster, Alter)]);
        assert!(is_admin(&r[balance]));
        assert_eq!(all(23), vec![(Resource::Topic("t"), Alter)], "grow a topic");
        let base = r.len() - 4;
        for admin in [base, base + 1] {
            assert_eq!(all(admin), vec![(Resource::Cluster, Alter)]);
            assert!(is_admin(&r[admin]));
        }
        for look in [base + 2, base + 3] {
            assert_eq!(all(look), vec![(Resource::Cluster, Describe)]);
            assert!(!is_admin(&r[look]));
        }
        assert!(is_admin(&r[23]));
        for user_change in [24, 25] {
            assert_eq!(all(user_change), vec![(Resource::Cluster, Alter)]);
            assert!(is_admin(&r[user_change]));
        }
        assert_eq!(all(26), vec![(Resource::Cluster, Describe)], "list users");
        for lock in [9, 10, 11] {
            assert_eq!(all(lock), vec![(Resource::Lock("l"), Lock)]);
        }
        assert_eq!(
            all(13),
            vec![
                (Resource::Group("g"), Consume),
                (Resource::Topic("t"), Consume),
                (Resource::Topic("u"), Consume)
            ]
        );
        assert_eq!(all(15), vec![(Resource::Group("g"), Consume)]);
        assert_eq!(
            all(19),
            vec![
                (Resource::Group("g"), Consume),
                (Resource::Topic("t"), Consume)
            ]
        );
        assert!(!is_admin(&r[0]) && !is_admin(&r[22]));
    }
}

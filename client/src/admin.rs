//! Topic administration.

use tern_protocol::api::{OffsetSpec, TopicConfig, TopicInfo, RETENTION_BROKER_DEFAULT};
use tern_protocol::{Request, Response};

use crate::client::Client;
use crate::error::ClientError;

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

    /// Deletes a topic and its data.
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

    /// Every topic, sorted by name.
    pub async fn list_topics(&self) -> Result<Vec<TopicInfo>, ClientError> {
        self.client.refresh_metadata(None).await
    }

    /// One topic, fresh from the brokers: each partition as its leader sees
    /// it (only a leader knows which replicas are in sync and its log end).
    pub async fn describe_topic(&self, name: &str) -> Result<TopicInfo, ClientError> {
        self.client.invalidate(name);
        let mut topic = self.client.topic(name).await?;
        let mut from_leader: std::collections::HashMap<u32, Vec<TopicInfo>> = Default::default();
        for p in topic.partitions.iter_mut() {
            if !from_leader.contains_key(&p.leader) {
                let Ok(conn) = self.client.leader(name, p.partition).await else {
                    continue;
                };
                let answer = conn
                    .request(Request::Metadata {
                        topics: Some(vec![name.to_owned()]),
                    })
                    .await;
                if let Ok(Response::Metadata { topics, .. }) = answer {
                    from_leader.insert(p.leader, topics);
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

    /// An offset of a partition: earliest, latest, or by timestamp.
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

//! The cluster handle: seed brokers, one shared connection per broker, and
//! a metadata cache mapping each partition to its leader's address.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tern_protocol::api::{BrokerInfo, TopicInfo};
use tern_protocol::{ErrorCode, Request, Response};

use crate::connection::Connection;

/// How long a coordination answer may take beyond the time the broker may
/// hold it.
const COORDINATION_MARGIN: Duration = Duration::from_secs(3);
use crate::error::ClientError;
use crate::retry::RetryPolicy;

/// Connection settings.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Longest wait to open a TCP connection.
    pub connect_timeout: Duration,
    /// Longest wait for any answer (fetch adds its long-poll time).
    pub request_timeout: Duration,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
        }
    }
}

/// A handle on a Tern cluster. Cheap to clone; clones share connections.
///
/// ```no_run
/// # async fn demo() -> Result<(), tern_client::ClientError> {
/// let client = tern_client::Client::connect("127.0.0.1:4650").await?;
/// let topics = tern_client::Admin::new(client).list_topics().await?;
/// println!("{} topics", topics.len());
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Client {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    seeds: Vec<String>,
    config: ClientConfig,
    connections: tokio::sync::Mutex<HashMap<String, Connection>>,
    brokers: RwLock<HashMap<u32, String>>,
    topics: RwLock<HashMap<String, TopicInfo>>,
    last_good_seed: Mutex<usize>,
    /// The metadata leader as last reported (0: unknown).
    controller: std::sync::atomic::AtomicU32,
}

impl Client {
    /// Connects using a comma-separated list of seed brokers (`host:port,...`).
    ///
    /// # Cancel safety
    /// Cancel safe: a cancelled connect leaves nothing behind.
    pub async fn connect(seeds: &str) -> Result<Client, ClientError> {
        Self::connect_with(seeds, ClientConfig::default()).await
    }

    /// Like [`Client::connect`] with explicit settings.
    ///
    /// # Cancel safety
    /// Cancel safe, as [`Client::connect`].
    pub async fn connect_with(seeds: &str, config: ClientConfig) -> Result<Client, ClientError> {
        let seeds: Vec<String> = seeds
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        if seeds.is_empty() {
            return Err(ClientError::InvalidArgument("no seed broker given".into()));
        }
        let client = Client {
            inner: Arc::new(Inner {
                seeds,
                config,
                connections: tokio::sync::Mutex::new(HashMap::new()),
                brokers: RwLock::new(HashMap::new()),
                topics: RwLock::new(HashMap::new()),
                last_good_seed: Mutex::new(0),
                controller: std::sync::atomic::AtomicU32::new(0),
            }),
        };
        client.refresh_metadata(None).await?;
        Ok(client)
    }

    /// The settings.
    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// A (possibly cached) connection to `addr`.
    ///
    /// # Cancel safety
    /// Cancel safe: a connection is cached only once it is open.
    pub async fn connection(&self, addr: &str) -> Result<Connection, ClientError> {
        let mut conns = self.inner.connections.lock().await;
        if let Some(c) = conns.get(addr) {
            if !c.is_closed() {
                return Ok(c.clone());
            }
        }
        let c = Connection::connect(
            addr,
            self.inner.config.connect_timeout,
            self.inner.config.request_timeout,
        )
        .await?;
        conns.insert(addr.to_owned(), c.clone());
        Ok(c)
    }

    /// A connection to any live broker, trying seeds then known brokers.
    ///
    /// # Cancel safety
    /// Cancel safe, as [`Client::connection`].
    pub async fn any_connection(&self) -> Result<Connection, ClientError> {
        let mut candidates = self.inner.seeds.clone();
        let start = *self.inner.last_good_seed.lock().expect("seed lock") % candidates.len();
        candidates.rotate_left(start);
        candidates.extend(
            self.inner
                .brokers
                .read()
                .expect("brokers lock")
                .values()
                .cloned(),
        );
        let mut last_error = None;
        for (i, addr) in candidates.iter().enumerate() {
            match self.connection(addr).await {
                Ok(c) => {
                    if i < self.inner.seeds.len() {
                        *self.inner.last_good_seed.lock().expect("seed lock") =
                            (start + i) % self.inner.seeds.len();
                    }
                    return Ok(c);
                }
                Err(e) => last_error = Some(Box::new(e)),
            }
        }
        Err(ClientError::NoBrokerReachable {
            seeds: self.inner.seeds.clone(),
            last_error,
        })
    }

    /// Sends a request to any broker (admin and metadata requests).
    ///
    /// # Cancel safety
    /// Cancelled after the request was written, it may still be carried
    /// out; only the answer is lost.
    pub async fn request_any(&self, request: Request) -> Result<Response, ClientError> {
        self.any_connection().await?.request(request).await
    }

    /// Fetches metadata for `topics` (all when `None`) and updates the cache.
    ///
    /// # Cancel safety
    /// Cancel safe: nothing changes until an answer arrives.
    pub async fn refresh_metadata(
        &self,
        topics: Option<Vec<String>>,
    ) -> Result<Vec<TopicInfo>, ClientError> {
        let all = topics.is_none();
        let response = self.request_any(Request::Metadata { topics }).await?;
        let Response::Metadata {
            brokers,
            topics,
            controller,
        } = response
        else {
            return Err(ClientError::Decode(
                "metadata answered with another type".into(),
            ));
        };
        self.store_brokers(&brokers);
        self.inner
            .controller
            .store(controller, std::sync::atomic::Ordering::Relaxed);
        let mut cache = self.inner.topics.write().expect("topics lock");
        if all {
            cache.clear();
        }
        for t in &topics {
            if t.error == ErrorCode::None {
                cache.insert(t.name.clone(), t.clone());
            } else {
                cache.remove(&t.name);
            }
        }
        Ok(topics)
    }

    fn store_brokers(&self, brokers: &[BrokerInfo]) {
        let mut map = self.inner.brokers.write().expect("brokers lock");
        map.clear();
        for b in brokers {
            map.insert(b.node_id, format!("{}:{}", b.host, b.port));
        }
    }

    /// Cached topic metadata, fetched when missing.
    ///
    /// # Cancel safety
    /// Cancel safe: nothing changes until an answer arrives.
    pub async fn topic(&self, name: &str) -> Result<TopicInfo, ClientError> {
        if let Some(t) = self.inner.topics.read().expect("topics lock").get(name) {
            return Ok(t.clone());
        }
        let topics = self.refresh_metadata(Some(vec![name.to_owned()])).await?;
        match topics.into_iter().next() {
            Some(t) if t.error == ErrorCode::None => Ok(t),
            _ => Err(ClientError::UnknownTopic(name.to_owned())),
        }
    }

    /// Node id of the metadata group's leader (fresh metadata).
    ///
    /// # Cancel safety
    /// Cancel safe: nothing changes until an answer arrives.
    pub async fn controller(&self) -> Result<u32, ClientError> {
        match self
            .request_any(Request::Metadata {
                topics: Some(vec![]),
            })
            .await?
        {
            Response::Metadata {
                brokers,
                controller,
                ..
            } => {
                self.store_brokers(&brokers);
                self.inner
                    .controller
                    .store(controller, std::sync::atomic::Ordering::Relaxed);
                Ok(controller)
            }
            _ => Err(ClientError::Decode(
                "metadata answered with another type".into(),
            )),
        }
    }

    /// Sends a coordination request (lock, group) to any broker, allowing it
    /// `hold` to answer (a lock wait, a held heartbeat) plus a short margin.
    /// A broker that does not answer in time, or whose connection fails, is
    /// skipped by the next call: a paused or cut-off broker must not hold
    /// a lease hostage.
    ///
    /// # Cancel safety
    /// Cancelled after the request was written, the operation may still
    /// be carried out by the cluster; only the answer is lost.
    pub async fn coordinate(
        &self,
        request: Request,
        hold: Duration,
    ) -> Result<Response, ClientError> {
        // Any broker serves coordination (it forwards to the metadata
        // leader); the leader itself saves the forwarding hop.
        let controller = self
            .inner
            .controller
            .load(std::sync::atomic::Ordering::Relaxed);
        let leader_addr = self
            .inner
            .brokers
            .read()
            .expect("brokers lock")
            .get(&controller)
            .cloned();
        let conn = match leader_addr {
            Some(addr) => match self.connection(&addr).await {
                Ok(c) => c,
                Err(_) => self.any_connection().await?,
            },
            None => self.any_connection().await?,
        };
        let limit = hold + COORDINATION_MARGIN;
        let answer = tokio::time::timeout(limit, conn.request_with(request, hold)).await;
        let answer = answer.unwrap_or(Err(ClientError::Timeout(limit)));
        if let Err(e) = &answer {
            if matches!(
                e,
                ClientError::Timeout(_)
                    | ClientError::ConnectionClosed { .. }
                    | ClientError::Connect { .. }
            ) || e.code() == Some(ErrorCode::LeaderNotAvailable)
            {
                self.skip_broker(conn.addr()).await;
                self.inner
                    .controller
                    .store(0, std::sync::atomic::Ordering::Relaxed);
                // Learn the new metadata leader in the background.
                let me = self.clone();
                tokio::spawn(async move {
                    let _ = me.controller().await;
                });
            }
        }
        answer
    }

    /// [`Self::coordinate`] without holding, retried through retriable
    /// failures (an election, a broker going away) with exponential backoff
    /// and jitter: 8 retries, pauses from 50 ms up to 0.5 s (2.5–5 s).
    ///
    /// # Cancel safety
    /// As [`Client::coordinate`]: an attempt already sent may take effect.
    pub async fn coordinate_retrying(&self, request: Request) -> Result<Response, ClientError> {
        RetryPolicy::COORDINATION
            .retry(|| self.coordinate(request.clone(), Duration::ZERO))
            .await
    }

    /// Stops preferring `addr`: drops its connection and moves the seed
    /// rotation past it.
    async fn skip_broker(&self, addr: &str) {
        self.inner.connections.lock().await.remove(addr);
        let mut good = self.inner.last_good_seed.lock().expect("seed lock");
        *good = (*good + 1) % self.inner.seeds.len();
    }

    /// Known brokers (node id, client address), from the last metadata.
    pub fn brokers(&self) -> Vec<(u32, String)> {
        let mut out: Vec<(u32, String)> = self
            .inner
            .brokers
            .read()
            .expect("brokers lock")
            .iter()
            .map(|(id, addr)| (*id, addr.clone()))
            .collect();
        out.sort();
        out
    }

    /// Forgets cached metadata of `topic` (after a `NotLeader` or a dead link).
    pub fn invalidate(&self, topic: &str) {
        self.inner
            .topics
            .write()
            .expect("topics lock")
            .remove(topic);
    }

    /// A connection to the leader of `topic`/`partition`.
    ///
    /// # Cancel safety
    /// Cancel safe, as [`Client::connection`].
    pub async fn leader(&self, topic: &str, partition: u32) -> Result<Connection, ClientError> {
        let info = self.topic(topic).await?;
        let p = info
            .partitions
            .iter()
            .find(|p| p.partition == partition)
            .ok_or_else(|| ClientError::Partition {
                topic: topic.to_owned(),
                partition,
                code: ErrorCode::UnknownTopicOrPartition,
            })?;
        let addr = self
            .inner
            .brokers
            .read()
            .expect("brokers lock")
            .get(&p.leader)
            .cloned();
        match addr {
            Some(addr) => match self.connection(&addr).await {
                Ok(c) => Ok(c),
                // An advertised address we cannot reach (e.g. behind NAT):
                // fall back to the seeds.
                Err(_) => self.any_connection().await,
            },
            None => self.any_connection().await,
        }
    }
}

/// 64 random bits (producer ids, lock owners, group members): std's
/// randomly keyed hasher over the time, so no RNG dependency is needed.
pub(crate) fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}

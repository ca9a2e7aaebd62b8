//! The cluster handle: seed brokers, one shared connection per broker, and
//! a metadata cache mapping each partition to its leader's address.
//!
//! Getting metadata is what every retry path falls back on (a leader moved,
//! a broker died), so it must not wait on a broker that cannot answer: it
//! asks the brokers in turn — last the ones whose connection was just
//! declared dead — and asks the next one as well whenever the current one
//! is slow ([`METADATA_HEDGE_DELAY`]); the first answer wins. Connecting
//! ([`Client::connect`]) retries the whole seed list until
//! [`ClientConfig::bootstrap_timeout`], like a Kafka client's bootstrap: a
//! seed that is still starting, restarting or paused is not a failure yet.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures::stream::FuturesUnordered;
use futures::StreamExt;
use tern_protocol::api::{BrokerInfo, TopicInfo};
use tern_protocol::{ErrorCode, Request, Response};
use tokio::time::Instant;

use crate::connection::{Connection, Suspects, Timeouts, LIVENESS_TIMEOUT_DEFAULT};
use crate::error::ClientError;

/// How long a coordination answer may take beyond the time the broker may
/// hold it.
const COORDINATION_MARGIN: Duration = Duration::from_secs(3);

/// A metadata request not answered within this long is also sent to the
/// next broker (metadata is read-only, so asking twice is harmless).
const METADATA_HEDGE_DELAY: Duration = Duration::from_millis(500);

/// First and longest pause between two rounds over the seeds while
/// bootstrapping (doubling, with jitter).
const BOOTSTRAP_PAUSE_MIN: Duration = Duration::from_millis(50);
const BOOTSTRAP_PAUSE_MAX: Duration = Duration::from_secs(1);
use crate::retry::RetryPolicy;

/// Connection settings.
///
/// With the defaults, a request to a broker that stops answering without
/// closing its connections (paused, hung) fails over within about
/// `liveness_timeout` (3 s) plus a metadata round trip, instead of waiting
/// out `request_timeout`.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Longest wait to open one TCP connection (and complete TLS).
    pub connect_timeout: Duration,
    /// Longest wait for any answer (fetch adds its long-poll time).
    pub request_timeout: Duration,
    /// How long [`Client::connect`] keeps trying the seed list (with
    /// backoff) before it gives up; like Kafka's bootstrap, a broker that is
    /// still starting is retried. Zero: one round over the seeds.
    pub bootstrap_timeout: Duration,
    /// A connection with requests waiting that hears nothing for this long
    /// — although it pings the broker every third of it — is declared dead
    /// and its requests fail with the retriable
    /// [`ClientError::Unresponsive`]. Catches paused or hung brokers, which
    /// TCP does not report. Zero disables the check.
    pub liveness_timeout: Duration,
    /// TLS to every broker, when set (brokers started with `--tls-*`).
    pub tls: Option<ClientTls>,
    /// SCRAM-SHA-256 credentials: every connection (each reconnect
    /// included) authenticates right after it opens, before any request.
    pub credentials: Option<crate::Credentials>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            bootstrap_timeout: Duration::from_secs(30),
            liveness_timeout: LIVENESS_TIMEOUT_DEFAULT,
            tls: None,
            credentials: None,
        }
    }
}

impl ClientConfig {
    /// These settings, authenticating every connection as `username`
    /// with `password` (SCRAM-SHA-256; the password is never sent). A
    /// refused password fails with the non-retriable
    /// [`ClientError::AuthenticationFailed`].
    pub fn credentials(mut self, username: &str, password: &str) -> ClientConfig {
        self.credentials = Some(crate::Credentials::new(username, password));
        self
    }
}

impl ClientTls {
    /// The rustls connector these settings describe (files read now).
    pub(crate) fn connector(&self) -> Result<tern_tls::TlsConnector, ClientError> {
        tern_tls::client_connector(
            &self.ca,
            self.identity
                .as_ref()
                .map(|(c, k)| (c.as_path(), k.as_path())),
        )
        .map_err(|e| ClientError::InvalidArgument(format!("TLS settings: {e}")))
    }
}

/// The connector built from [`ClientTls`] (rustls's has no `Debug`).
struct Tls(tern_tls::TlsConnector);

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsConnector")
    }
}

/// TLS settings of a client: the CA that signed the brokers' certificates
/// and, for mutual TLS, a client certificate whose common name is the
/// principal the brokers see (`tern cert issue --client NAME`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientTls {
    /// PEM file of the cluster CA.
    pub ca: std::path::PathBuf,
    /// PEM client certificate and its key, for mutual TLS.
    pub identity: Option<(std::path::PathBuf, std::path::PathBuf)>,
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
    /// Built once from `config.tls`.
    tls: Option<Tls>,
    connections: Mutex<HashMap<String, Connection>>,
    brokers: RwLock<HashMap<u32, String>>,
    topics: RwLock<HashMap<String, TopicInfo>>,
    last_good_seed: Mutex<usize>,
    /// The metadata leader as last reported (0: unknown).
    controller: std::sync::atomic::AtomicU32,
    /// Brokers whose connection was declared dead lately.
    suspects: Suspects,
    /// A background refresh of `controller` is under way.
    relearning: std::sync::atomic::AtomicBool,
}

impl Client {
    /// Connects using a comma-separated list of seed brokers (`host:port,...`),
    /// retrying them until [`ClientConfig::bootstrap_timeout`].
    ///
    /// # Cancel safety
    /// Cancel safe: a cancelled connect leaves nothing behind.
    pub async fn connect(seeds: &str) -> Result<Client, ClientError> {
        Self::connect_with(seeds, ClientConfig::default()).await
    }

    /// Like [`Client::connect`] with explicit settings.
    ///
    /// Returns once one broker answered a metadata request. Until the
    /// bootstrap deadline, every failure to get one (refused, closed or
    /// unanswered connections) leads to another round over all seeds after
    /// a pause; at the deadline the last failure is returned as
    /// [`ClientError::NoBrokerReachable`].
    ///
    /// # Cancel safety
    /// Cancel safe, as [`Client::connect`].
    #[tracing::instrument(level = "debug", skip(config))]
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
        let tls = match &config.tls {
            None => None,
            Some(t) => Some(Tls(t.connector()?)),
        };
        let bootstrap = config.bootstrap_timeout;
        let client = Client {
            inner: Arc::new(Inner {
                seeds,
                tls,
                config,
                connections: Mutex::new(HashMap::new()),
                brokers: RwLock::new(HashMap::new()),
                topics: RwLock::new(HashMap::new()),
                last_good_seed: Mutex::new(0),
                controller: std::sync::atomic::AtomicU32::new(0),
                suspects: Suspects::default(),
                relearning: std::sync::atomic::AtomicBool::new(false),
            }),
        };
        let started = Instant::now();
        let deadline = started + bootstrap;
        let mut pause = BOOTSTRAP_PAUSE_MIN;
        let mut rounds = 0u32;
        loop {
            rounds += 1;
            let round = client.refresh_metadata(None);
            let outcome = if bootstrap.is_zero() {
                round.await
            } else {
                let remaining = deadline.saturating_duration_since(Instant::now());
                tokio::time::timeout(remaining, round)
                    .await
                    .unwrap_or(Err(ClientError::Timeout(remaining)))
            };
            let error = match outcome {
                Ok(_) => return Ok(client),
                Err(e) if !e.is_retriable() => return Err(e.surface_authentication_failure()),
                Err(e) => e,
            };
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                tracing::debug!(
                    rounds,
                    elapsed = ?started.elapsed(),
                    ?bootstrap,
                    "bootstrap timeout: no broker answered metadata"
                );
                return Err(ClientError::NoBrokerReachable {
                    seeds: client.inner.seeds.clone(),
                    last_error: Some(Box::new(error)),
                });
            }
            tracing::debug!(%error, rounds, "bootstrap: no broker answered yet; retrying");
            let jitter = Duration::from_millis(random_u64() % 50);
            tokio::time::sleep((pause + jitter).min(remaining)).await;
            pause = (pause * 2).min(BOOTSTRAP_PAUSE_MAX);
        }
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
        if let Some(c) = self.cached(addr) {
            return Ok(c);
        }
        // Connect without holding the map: one slow connect must not hold
        // up connections to other brokers.
        let config = &self.inner.config;
        let timeouts = Timeouts {
            connect: config.connect_timeout,
            request: config.request_timeout,
            liveness: config.liveness_timeout,
        };
        let fresh = Connection::open(
            addr,
            timeouts,
            self.inner.tls.as_ref().map(|t| &t.0),
            Some(self.inner.suspects.clone()),
            config.credentials.as_ref(),
        )
        .await?;
        let mut conns = self.inner.connections.lock().expect("connections lock");
        match conns.get(addr) {
            // Another caller connected meanwhile: share theirs.
            Some(c) if !c.is_closed() => Ok(c.clone()),
            _ => {
                conns.insert(addr.to_owned(), fresh.clone());
                Ok(fresh)
            }
        }
    }

    fn cached(&self, addr: &str) -> Option<Connection> {
        let conns = self.inner.connections.lock().expect("connections lock");
        conns.get(addr).filter(|c| !c.is_closed()).cloned()
    }

    /// Whether `addr`'s connection was declared dead lately (and nothing
    /// was heard from it since).
    fn is_suspect(&self, addr: &str) -> bool {
        let suspects = self.inner.suspects.lock().expect("suspects lock");
        suspects
            .get(addr)
            .is_some_and(|until| *until > std::time::Instant::now())
    }

    /// Every broker address worth trying, in order: the seeds from the last
    /// one that worked, then the brokers named by metadata; suspects last.
    fn candidates(&self) -> Vec<String> {
        let seeds = &self.inner.seeds;
        let start = *self.inner.last_good_seed.lock().expect("seed lock") % seeds.len();
        let mut all: Vec<String> = seeds[start..]
            .iter()
            .chain(&seeds[..start])
            .cloned()
            .collect();
        let mut known: Vec<String> = self
            .inner
            .brokers
            .read()
            .expect("brokers lock")
            .values()
            .cloned()
            .collect();
        known.sort();
        for addr in known {
            if !all.contains(&addr) {
                all.push(addr);
            }
        }
        // Stable: the order above holds within each group.
        all.sort_by_key(|a| self.is_suspect(a));
        all
    }

    fn note_good_seed(&self, addr: &str) {
        if let Some(i) = self.inner.seeds.iter().position(|s| s == addr) {
            *self.inner.last_good_seed.lock().expect("seed lock") = i;
        }
    }

    /// A connection to any live broker, trying seeds then known brokers
    /// (those whose connection was just declared dead last).
    ///
    /// # Cancel safety
    /// Cancel safe, as [`Client::connection`].
    pub async fn any_connection(&self) -> Result<Connection, ClientError> {
        let mut last_error = None;
        for addr in self.candidates() {
            match self.connection(&addr).await {
                Ok(c) => {
                    self.note_good_seed(&addr);
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

    /// Sends a read-only request (metadata) to the brokers in
    /// [`Self::candidates`] order: the next is asked at once when one
    /// fails, and also when one has not answered within
    /// [`METADATA_HEDGE_DELAY`]; the first answer wins.
    async fn request_hedged(&self, request: Request) -> Result<Response, ClientError> {
        let candidates = self.candidates();
        let ask = |addr: String| {
            let (me, request) = (self.clone(), request.clone());
            async move {
                let answer = match me.connection(&addr).await {
                    Ok(conn) => conn.request(request).await,
                    Err(e) => Err(e),
                };
                (addr, answer)
            }
        };
        let mut next = candidates.into_iter();
        let mut asking = FuturesUnordered::new();
        let mut last_error = None;
        if let Some(addr) = next.next() {
            asking.push(ask(addr));
        }
        while !asking.is_empty() {
            tokio::select! {
                Some((addr, answer)) = asking.next() => match answer {
                    Ok(response) => {
                        self.note_good_seed(&addr);
                        return Ok(response);
                    }
                    Err(e) => {
                        tracing::debug!(%addr, error = %e, "metadata request failed; asking the next broker");
                        last_error = Some(Box::new(e));
                        if let Some(addr) = next.next() {
                            asking.push(ask(addr));
                        }
                    }
                },
                _ = tokio::time::sleep(METADATA_HEDGE_DELAY), if next.len() > 0 => {
                    if let Some(addr) = next.next() {
                        asking.push(ask(addr));
                    }
                }
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
        let response = self.request_hedged(Request::Metadata { topics }).await?;
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
            Some(t) if t.error == ErrorCode::AccessDenied => Err(ClientError::Broker {
                code: ErrorCode::AccessDenied,
                message: format!("not allowed to describe topic {name:?}"),
            }),
            _ => Err(ClientError::UnknownTopic(name.to_owned())),
        }
    }

    /// Node id of the metadata group's leader (fresh metadata).
    ///
    /// # Cancel safety
    /// Cancel safe: nothing changes until an answer arrives.
    pub async fn controller(&self) -> Result<u32, ClientError> {
        match self
            .request_hedged(Request::Metadata {
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
                Err(_) => {
                    self.relearn_controller();
                    self.any_connection().await?
                }
            },
            None => {
                self.relearn_controller();
                self.any_connection().await?
            }
        };
        let limit = hold + COORDINATION_MARGIN;
        let answer = tokio::time::timeout(limit, conn.request_with(request, hold)).await;
        let answer = answer.unwrap_or(Err(ClientError::Timeout(limit)));
        if let Err(e) = &answer {
            if matches!(
                e,
                ClientError::Timeout(_)
                    | ClientError::ConnectionClosed { .. }
                    | ClientError::Unresponsive { .. }
                    | ClientError::Connect { .. }
            ) || e.code() == Some(ErrorCode::LeaderNotAvailable)
            {
                self.skip_broker(conn.addr());
                self.relearn_controller();
            }
        }
        answer
    }

    /// Forgets the metadata leader and learns it again in the background,
    /// one refresh at a time. Asked during an election, a broker may name
    /// the old leader or none: every call that then finds no reachable
    /// leader asks again, so a wrong answer does not stick (a follower
    /// serves coordination by forwarding, but its own view of it lags).
    fn relearn_controller(&self) {
        use std::sync::atomic::Ordering;
        self.inner.controller.store(0, Ordering::Relaxed);
        if self.inner.relearning.swap(true, Ordering::AcqRel) {
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            let _ = me.controller().await;
            me.inner.relearning.store(false, Ordering::Release);
        });
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
    fn skip_broker(&self, addr: &str) {
        self.inner
            .connections
            .lock()
            .expect("connections lock")
            .remove(addr);
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
        let mut info = self.topic(topic).await?;
        if !info.partitions.iter().any(|p| p.partition == partition) {
            // A partition newer than the cached metadata (the topic grew
            // since it was fetched): ask once more before refusing.
            self.invalidate(topic);
            info = self.topic(topic).await?;
        }
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
                Ok(c) if self.is_suspect(&addr) => self.probe(c).await,
                Ok(c) => Ok(c),
                // An advertised address we cannot reach (e.g. behind NAT):
                // fall back to the seeds.
                Err(_) => self.any_connection().await,
            },
            None => self.any_connection().await,
        }
    }

    /// Checks that a suspect broker answers before sending it work: until
    /// a new leader is elected, metadata still names a hung one, and a
    /// request sent there would wait out a whole liveness timeout.
    async fn probe(&self, conn: Connection) -> Result<Connection, ClientError> {
        let limit = self.inner.config.liveness_timeout / 3;
        if limit.is_zero() {
            return Ok(conn);
        }
        let ping = conn.request(Request::Metadata {
            topics: Some(Vec::new()),
        });
        match tokio::time::timeout(limit, ping).await {
            // Hearing from it cleared the suspicion.
            Ok(Ok(_)) => Ok(conn),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(ClientError::Unresponsive {
                addr: conn.addr().to_owned(),
            }),
        }
    }
}

/// 64 random bits (producer ids, lock owners, group members): std's
/// randomly keyed hasher over the time, so no RNG dependency is needed.
/// A secret that proves a lock acquisition or group membership (see
/// `tern_protocol::coord`): 128 bits from the OS-seeded CSPRNG, never
/// shown, sent only with requests for that acquisition or membership.
pub(crate) fn random_secret() -> u128 {
    rand::random()
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connection::tests::{Behaviour, FakeBroker};
    use std::sync::atomic::Ordering;

    fn config(bootstrap: Duration) -> ClientConfig {
        ClientConfig {
            connect_timeout: Duration::from_secs(1),
            bootstrap_timeout: bootstrap,
            ..ClientConfig::default()
        }
    }

    /// A port nothing listens on (bound, then released).
    fn refused_addr() -> String {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    }

    #[tokio::test]
    async fn connect_retries_every_seed_until_the_bootstrap_deadline() {
        let closing = FakeBroker::start(|_| Behaviour::Close).await;
        let seeds = format!("{},{}", refused_addr(), closing.addr);
        let started = Instant::now();
        let outcome = Client::connect_with(&seeds, config(Duration::from_millis(1_500))).await;
        let waited = started.elapsed();
        let Err(ClientError::NoBrokerReachable {
            seeds: tried,
            last_error,
        }) = outcome
        else {
            panic!("expected NoBrokerReachable, got {outcome:?}");
        };
        assert_eq!(tried.len(), 2);
        assert!(
            last_error.is_some(),
            "the last failure is kept as the source"
        );
        assert!(
            waited >= Duration::from_millis(1_500),
            "gave up early: {waited:?}"
        );
        assert!(waited < Duration::from_secs(5), "{waited:?}");
        // Several rounds, not one: the closing seed was tried again and again.
        let tries = closing.accepted.load(Ordering::SeqCst);
        assert!(tries >= 4, "the closing seed was tried {tries} times");
    }

    #[tokio::test]
    async fn connect_gets_through_once_a_starting_broker_answers() {
        // The first connections are closed, as by a broker still starting.
        let starting = FakeBroker::start(|i| {
            if i < 3 {
                Behaviour::Close
            } else {
                Behaviour::Serve {
                    hold: Duration::ZERO,
                }
            }
        })
        .await;
        let seeds = format!("{},{}", refused_addr(), starting.addr);
        let client = Client::connect_with(&seeds, config(Duration::from_secs(30)))
            .await
            .unwrap();
        assert!(starting.accepted.load(Ordering::SeqCst) >= 4);
        assert_eq!(client.brokers(), vec![(1, starting.addr.clone())]);
    }

    #[tokio::test]
    async fn metadata_is_asked_of_another_broker_while_one_hangs() {
        let hung = FakeBroker::start(|_| Behaviour::Hang).await;
        let serving = FakeBroker::start(|_| Behaviour::Serve {
            hold: Duration::ZERO,
        })
        .await;
        // The hung broker is asked first; the hedge asks the next one.
        let seeds = format!("{},{}", hung.addr, serving.addr);
        let started = Instant::now();
        let client = Client::connect_with(&seeds, config(Duration::from_secs(30)))
            .await
            .unwrap();
        let waited = started.elapsed();
        assert!(waited < Duration::from_secs(2), "{waited:?}");
        assert_eq!(hung.accepted.load(Ordering::SeqCst), 1);
        assert_eq!(client.controller().await.unwrap(), 1);
    }
}

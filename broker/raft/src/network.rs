//! The peer transport: one TCP connection from this node to each peer,
//! shared by every Raft group (requests carry their group id), plus the
//! server that dispatches incoming requests to the local groups.
//!
//! Frames are length-delimited (tokio-util). A connection starts with a
//! hello that names the protocol version, the cluster and both node ids; a
//! peer of another cluster, another version or an unexpected id is refused
//! and logged. Requests are pipelined: each carries a correlation id and is
//! served in its own task, so a slow group never blocks another.
//!
//! With TLS configured (`tern_tls::TlsContext`), every peer connection is
//! mutual TLS under the cluster CA: the dialling side verifies that the
//! server's certificate proves the node id it meant to reach
//! (`tern-node-<id>`), and the accepting side requires a client certificate
//! and accepts the hello only if the node id the certificate proves is the
//! hello's sender. A process without a broker certificate of this cluster's
//! CA cannot speak to the peer port at all.
//!
//! With or without TLS, the hello's sender (proven by its certificate when
//! TLS is on) must also be a member: in the metadata group's membership
//! (voters, and learners — brokers being added) or a registered broker, in
//! this node's view or, because that view may lag, in another member's
//! ([`KIND_IS_MEMBER`]). A broker that has not joined a cluster yet admits
//! any peer: it holds nothing, and the member adding it must reach it. An
//! admitted connection whose peer later leaves the membership is closed.
//!
//! **Invariant:** nothing a peer sends can panic this node; every decode
//! failure is an error answer or a closed connection.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use openraft::error::{InstallSnapshotError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use serde::de::DeserializeOwned;
use serde::Serialize;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio_util::codec::{Framed, LengthDelimitedCodec};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument};

use crate::types::{Command, NodeId, Raft, TernRaft};

/// Version of the peer protocol; a peer speaking another is refused.
pub const PEER_PROTOCOL_VERSION: u16 = 1;
/// Largest peer frame (an AppendEntries of many batches).
pub const PEER_FRAME_BYTES_MAX: usize = 64 << 20;
/// Longest a peer may take to complete the TLS handshake and send its hello.
pub const PEER_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// A peer connection's byte stream: plain TCP or TLS over it.
trait PeerIo: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> PeerIo for T {}
type PeerStream = Box<dyn PeerIo>;

const KIND_HELLO: u8 = 1;
const KIND_APPEND: u8 = 2;
const KIND_VOTE: u8 = 3;
const KIND_SNAPSHOT: u8 = 4;
/// A client write forwarded to the metadata leader.
pub(crate) const KIND_META_WRITE: u8 = 5;
/// A broker added or removed, forwarded to the metadata leader.
pub(crate) const KIND_CLUSTER_CHANGE: u8 = 6;
/// "Has this node id ever registered with the cluster?" (asked by a
/// starting broker whose data directory is empty).
pub(crate) const KIND_WAS_MEMBER: u8 = 7;

/// "Who leads this group?", asked of a replica by a broker that hosts none.
/// Brokers now ask [`KIND_LEADERS_OF`]; this one is still answered for
/// brokers of earlier versions during a rolling upgrade.
pub(crate) const KIND_LEADER_OF: u8 = 8;

/// "How long is your Raft log in each of these groups you lead?", asked of
/// a partition's leader by its preferred replica before it campaigns: a
/// replica whose log is shorter than the leader's cannot win, and its
/// campaign would only unseat the leader for an election timeout. The body
/// is a list of group ids (at most [`LEADER_ASKS_PER_CALL_MAX`]), the answer
/// one `Option<u64>` per id: the last log index where the answering node
/// leads the group, `None` where it does not (or does not host it).
pub(crate) const KIND_LOG_ENDS_OF: u8 = 12;

/// "Which coordination (lock, balancer) plugins do you run?", asked of a broker before adding it.
pub(crate) const KIND_COORD_PLUGINS: u8 = 9;

/// "Who leads each of these groups?", asked of a replica by a broker that
/// hosts none of them: one call per broker for a whole Metadata request
/// instead of one per partition. The body is a list of group ids, the answer
/// one `Option<NodeId>` per id (`None`: not hosted there, or no leader known).
pub(crate) const KIND_LEADERS_OF: u8 = 10;

/// Most group ids one [`KIND_LEADERS_OF`] call may name (a larger ask is
/// refused whole; the asker splits its asks into calls of at most this).
pub const LEADER_ASKS_PER_CALL_MAX: usize = 10_000;

/// "Is this node a member of the cluster (or being added)?", asked of the
/// other members by a broker that an unknown peer dialled: its own view may
/// lag the cluster's (it has not yet applied the entry that added the peer).
pub(crate) const KIND_IS_MEMBER: u8 = 11;

/// Longest a broker waits for the other members to vouch for a peer it does
/// not know (see [`Transport::admit`]).
pub const PEER_VOUCH_TIMEOUT: Duration = Duration::from_secs(2);

/// How often an admitted peer connection re-checks that its peer is still a
/// member (a removed broker loses its connections within about this long).
pub const PEER_MEMBERSHIP_RECHECK: Duration = Duration::from_secs(1);

/// This node's view of who belongs to the cluster.
#[derive(Debug, Clone, Default)]
pub struct MemberView {
    /// Whether this node belongs to a cluster yet (a broker started with
    /// `--join` has no membership until a member adds it).
    pub joined: bool,
    /// Every node of the metadata group's membership (voters and learners,
    /// i.e. brokers being added) and every registered broker.
    pub members: std::collections::BTreeSet<NodeId>,
    /// Peer addresses from the membership (to ask members to vouch).
    pub addrs: HashMap<NodeId, String>,
}

/// Computes this node's [`MemberView`].
pub type MemberViewHandler = Arc<dyn Fn() -> MemberView + Send + Sync>;

/// Answers [`KIND_COORD_PLUGINS`].
pub type CoordPluginsHandler = Arc<dyn Fn() -> String + Send + Sync>;

/// Answers [`KIND_WAS_MEMBER`] from the local catalogue.
pub type WasMemberHandler = Arc<dyn Fn(NodeId) -> bool + Send + Sync>;

/// Runs a cluster change on the metadata leader (set by `RaftNode`).
pub type ClusterChangeHandler = Arc<
    dyn Fn(crate::ClusterChange) -> futures::future::BoxFuture<'static, Result<(), String>>
        + Send
        + Sync,
>;
const KIND_RESPONSE: u8 = 0x80;

/// Why a peer call failed.
#[derive(Debug, Error)]
pub enum PeerError {
    /// No address is known for the peer.
    #[error("no address for node {0}")]
    UnknownNode(NodeId),
    /// Connecting or writing failed.
    #[error("peer {node} at {addr}: {message}")]
    Io {
        /// The peer.
        node: NodeId,
        /// Its address.
        addr: String,
        /// What happened.
        message: String,
    },
    /// The peer did not answer in time.
    #[error("peer {0} did not answer within {1:?}")]
    Timeout(NodeId, Duration),
    /// The peer answered with an error (e.g. it does not host the group yet).
    #[error("peer {0} refused: {1}")]
    Refused(NodeId, String),
    /// An answer could not be decoded.
    #[error("bad answer from peer {0}: {1}")]
    Decode(NodeId, String),
}

/// Observes a peer call's round trip: peer, seconds.
pub type RttHook = Arc<dyn Fn(NodeId, f64) + Send + Sync>;

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Result<Bytes, String>>>>>;

struct Link {
    frames: mpsc::Sender<Bytes>,
    pending: Pending,
    closed: CancellationToken,
}

/// Most bytes one incoming snapshot may grow to (it is held in memory until
/// installed): a larger one is refused chunk by chunk.
pub const SNAPSHOT_BYTES_MAX: u64 = 8 << 30;

/// How far each hosted group's incoming snapshot has been written, so that
/// a chunk can only continue it (or rewrite what is there, as a retried
/// chunk does): openraft writes a chunk at the offset it names, and a chunk
/// at offset 2^40 would otherwise grow the snapshot buffer to that size.
#[derive(Debug, Default)]
struct SnapshotIntake {
    /// group → (snapshot id, bytes written so far).
    written: HashMap<u64, (String, u64)>,
}

impl SnapshotIntake {
    /// Admits a chunk of `len` bytes at `offset` of snapshot `id` of
    /// `group`, or says why not (nothing of the chunk is written then).
    fn admit(
        &mut self,
        group: u64,
        id: &str,
        offset: u64,
        len: u64,
        done: bool,
    ) -> Result<(), String> {
        let written = match self.written.get(&group) {
            Some((current, written)) if current == id => *written,
            _ => 0,
        };
        if offset > written {
            return Err(format!(
                "snapshot {id} chunk at offset {offset} would leave a hole: {written} bytes \
                 written so far"
            ));
        }
        let end = offset
            .checked_add(len)
            .filter(|end| *end <= SNAPSHOT_BYTES_MAX)
            .ok_or_else(|| {
                format!("snapshot {id} would pass {SNAPSHOT_BYTES_MAX} bytes (snapshot_bytes_max)")
            })?;
        if done {
            self.written.remove(&group);
        } else {
            self.written
                .insert(group, (id.to_owned(), written.max(end)));
        }
        Ok(())
    }
}

/// Bounds the bytes per second this broker sends to *learners* of
/// partition groups — the replicas a move is adding — so a rebalance does
/// not take the bandwidth producers and followers need. A token bucket of
/// one second of rate: a message waits until the bucket holds its size (or
/// is full, for a message larger than the bucket, which then leaves a
/// debt), so over any span the bytes sent are at most the rate times the
/// span plus one message. A send that openraft times out while it waits
/// costs nothing (tokens are taken only when it goes), and the next
/// attempt finds the bucket fuller, so a throttled learner always
/// progresses.
#[derive(Debug)]
pub struct LearnerThrottle {
    state: Mutex<ThrottleState>,
}

#[derive(Debug)]
struct ThrottleState {
    /// Bytes per second; 0 = unthrottled.
    rate: u64,
    /// Bytes that may be sent now (negative: owed by a message larger
    /// than the bucket).
    balance: f64,
    refilled: std::time::Instant,
}

impl LearnerThrottle {
    fn new() -> LearnerThrottle {
        LearnerThrottle {
            state: Mutex::new(ThrottleState {
                rate: 0,
                balance: 0.0,
                refilled: std::time::Instant::now(),
            }),
        }
    }

    /// Sets the rate (0: unthrottled).
    pub fn set_rate(&self, bytes_per_sec: u64) {
        let mut s = self.state.lock().expect("throttle lock");
        if s.rate != bytes_per_sec {
            s.rate = bytes_per_sec;
            s.balance = 0.0;
            s.refilled = std::time::Instant::now();
        }
    }

    /// The rate in bytes per second (0: unthrottled).
    pub fn rate(&self) -> u64 {
        self.state.lock().expect("throttle lock").rate
    }

    /// Waits until `bytes` may be sent, and counts them.
    pub async fn admit(&self, bytes: usize) {
        loop {
            let wait = self
                .state
                .lock()
                .expect("throttle lock")
                .take(std::time::Instant::now(), bytes);
            match wait {
                None => return,
                Some(wait) => tokio::time::sleep(wait).await,
            }
        }
    }
}

impl ThrottleState {
    /// At `now`: takes `bytes` and answers `None` (send), or answers how
    /// long to wait before asking again.
    fn take(&mut self, now: std::time::Instant, bytes: usize) -> Option<Duration> {
        if self.rate == 0 {
            return None;
        }
        let rate = self.rate as f64;
        let idle = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.balance = (self.balance + idle * rate).min(rate);
        self.refilled = now;
        let needed = (bytes as f64).min(rate);
        if self.balance >= needed {
            self.balance -= bytes as f64;
            return None;
        }
        Some(Duration::from_secs_f64(
            ((needed - self.balance) / rate).max(0.001),
        ))
    }
}

#[cfg(test)]
mod learner_throttle_tests {
    use super::*;

    /// Sends `sizes` as fast as the throttle lets them, on a simulated
    /// clock; answers when the last one went.
    fn send_all(rate: u64, sizes: &[usize]) -> Duration {
        let start = std::time::Instant::now();
        let mut state = ThrottleState {
            rate,
            balance: 0.0,
            refilled: start,
        };
        let mut now = start;
        for &size in sizes {
            while let Some(wait) = state.take(now, size) {
                now += wait;
            }
        }
        now - start
    }

    #[test]
    fn the_rate_holds_within_one_message() {
        // 30 messages of 1,000 B at 10,000 B/s: 3 s (the first 1,000 B
        // wait for the empty bucket too).
        let took = send_all(10_000, &[1_000; 30]);
        assert!(took >= Duration::from_millis(2_900), "{took:?}");
        assert!(took <= Duration::from_millis(3_100), "{took:?}");
        // Messages larger than the bucket (one second) still go, each
        // once the bucket is full, and the debt they leave is paid: 10 of
        // 25,000 B at 10,000 B/s take about 25 s.
        let took = send_all(10_000, &[25_000; 10]);
        assert!(took >= Duration::from_secs(22), "{took:?}");
        assert!(took <= Duration::from_secs(26), "{took:?}");
        // Unthrottled: nothing waits.
        assert_eq!(send_all(0, &[1 << 30; 3]), Duration::ZERO);
    }
}

/// Connections to peers and the registry of local groups.
pub struct Transport {
    node_id: NodeId,
    cluster: String,
    /// Mutual TLS on every peer connection when set.
    tls: Option<Arc<tern_tls::TlsContext>>,
    addrs: RwLock<HashMap<NodeId, String>>,
    links: tokio::sync::Mutex<HashMap<NodeId, Arc<Link>>>,
    next_id: AtomicU64,
    groups: RwLock<HashMap<u64, Raft>>,
    /// Round-trip times of peer calls, for metrics: `(peer, seconds)`.
    rtt_observer: RwLock<Option<RttHook>>,
    cluster_change: RwLock<Option<ClusterChangeHandler>>,
    was_member: RwLock<Option<WasMemberHandler>>,
    coord_plugins: RwLock<Option<CoordPluginsHandler>>,
    member_view: RwLock<Option<MemberViewHandler>>,
    learner_throttle: LearnerThrottle,
    snapshot_intake: Mutex<SnapshotIntake>,
}

impl Transport {
    /// A transport for `node_id` in `cluster`, knowing `addrs` of peers;
    /// with `tls`, every connection is mutual TLS under the cluster CA.
    pub fn new(
        node_id: NodeId,
        cluster: String,
        addrs: HashMap<NodeId, String>,
        tls: Option<Arc<tern_tls::TlsContext>>,
    ) -> Arc<Self> {
        Arc::new(Transport {
            node_id,
            cluster,
            tls,
            addrs: RwLock::new(addrs),
            links: tokio::sync::Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            groups: RwLock::new(HashMap::new()),
            rtt_observer: RwLock::new(None),
            cluster_change: RwLock::new(None),
            was_member: RwLock::new(None),
            coord_plugins: RwLock::new(None),
            member_view: RwLock::new(None),
            learner_throttle: LearnerThrottle::new(),
            snapshot_intake: Mutex::new(SnapshotIntake::default()),
        })
    }

    /// Sets a callback observing each successful call's round-trip time.
    pub fn observe_rtt(&self, f: RttHook) {
        *self.rtt_observer.write().expect("rtt lock") = Some(f);
    }

    /// Sets what runs a forwarded cluster change.
    pub fn on_cluster_change(&self, handler: ClusterChangeHandler) {
        *self.cluster_change.write().expect("handler lock") = Some(handler);
    }

    /// Sets what answers "which coordination plugins?".
    pub fn on_coord_plugins(&self, handler: CoordPluginsHandler) {
        *self.coord_plugins.write().expect("handler lock") = Some(handler);
    }

    /// Sets what answers "was this node a member?".
    pub fn on_was_member(&self, handler: WasMemberHandler) {
        *self.was_member.write().expect("handler lock") = Some(handler);
    }

    /// Sets what tells who is a member; until it is set, every peer is
    /// refused (the node is starting).
    pub fn on_member_view(&self, handler: MemberViewHandler) {
        *self.member_view.write().expect("handler lock") = Some(handler);
    }

    fn member_view(&self) -> Option<MemberView> {
        let handler = self.member_view.read().expect("handler lock").clone();
        handler.map(|h| h())
    }

    /// Whether `peer` may speak to this node: a member (voter, learner being
    /// added, or registered broker) in this node's view, or — since that view
    /// may lag — in the view of another member that vouches for it. A node
    /// that has not joined a cluster yet has nothing to protect and admits
    /// any peer (that is how the member adding it reaches it). `Err` says
    /// why not.
    async fn admit(&self, peer: NodeId) -> Result<(), String> {
        let Some(view) = self.member_view() else {
            return Err("this broker is still starting".to_owned());
        };
        if !view.joined || view.members.contains(&peer) {
            return Ok(());
        }
        let body = encode(&peer)?;
        let mut asks: futures::stream::FuturesUnordered<_> = view
            .members
            .iter()
            .filter(|&&m| m != self.node_id && m != peer)
            .map(|&m| {
                self.call(
                    m,
                    view.addrs.get(&m).map(String::as_str),
                    crate::META_GROUP,
                    KIND_IS_MEMBER,
                    body.clone(),
                    PEER_VOUCH_TIMEOUT,
                )
            })
            .collect();
        while let Some(answer) = asks.next().await {
            if answer.is_ok_and(|a| decode::<bool>(&a) == Ok(true)) {
                return Ok(());
            }
        }
        Err(format!(
            "node {peer} is not a member of the cluster nor being added"
        ))
    }

    /// The throttle of replication to learners (replicas being added).
    pub fn learner_throttle(&self) -> &LearnerThrottle {
        &self.learner_throttle
    }

    /// Registers a local group so peers can reach it.
    pub fn register(&self, group: u64, raft: Raft) {
        self.groups
            .write()
            .expect("groups lock")
            .insert(group, raft);
    }

    /// Unregisters a local group.
    pub fn unregister(&self, group: u64) -> Option<Raft> {
        self.groups.write().expect("groups lock").remove(&group)
    }

    /// The local group `group`, if hosted.
    pub fn group(&self, group: u64) -> Option<Raft> {
        self.groups
            .read()
            .expect("groups lock")
            .get(&group)
            .cloned()
    }

    /// Every local group.
    pub fn groups(&self) -> Vec<(u64, Raft)> {
        self.groups
            .read()
            .expect("groups lock")
            .iter()
            .map(|(g, r)| (*g, r.clone()))
            .collect()
    }

    /// Learns (or updates) a peer's address.
    pub fn set_addr(&self, node: NodeId, addr: String) {
        self.addrs.write().expect("addrs lock").insert(node, addr);
    }

    async fn link(&self, node: NodeId, addr_hint: Option<&str>) -> Result<Arc<Link>, PeerError> {
        let mut links = self.links.lock().await;
        if let Some(l) = links.get(&node) {
            if !l.closed.is_cancelled() {
                return Ok(l.clone());
            }
        }
        // The configured address (`--initial-cluster`, this node's view of
        // how to reach the peer) wins over the one in the group membership.
        let configured = self.addrs.read().expect("addrs lock").get(&node).cloned();
        let addr = configured
            .or_else(|| addr_hint.map(str::to_owned))
            .ok_or(PeerError::UnknownNode(node))?;
        let io = |message: String| PeerError::Io {
            node,
            addr: addr.clone(),
            message,
        };
        let stream = tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(&addr))
            .await
            .map_err(|_| io("connect timed out".into()))?
            .map_err(|e| io(e.to_string()))?;
        let _ = stream.set_nodelay(true);
        let stream: PeerStream = match &self.tls {
            None => Box::new(stream),
            Some(tls) => Box::new(
                tokio::time::timeout(
                    PEER_HANDSHAKE_TIMEOUT,
                    tls.peer_connector()
                        .connect(tern_tls::node_server_name(node), stream),
                )
                .await
                .map_err(|_| io("TLS handshake timed out".into()))?
                .map_err(|e| io(format!("TLS handshake: {e}")))?,
            ),
        };
        let mut framed = Framed::new(stream, codec());
        let mut hello = BytesMut::new();
        hello.put_u8(KIND_HELLO);
        hello.put_u16(PEER_PROTOCOL_VERSION);
        hello.put_u64(self.node_id);
        hello.put_u64(node);
        hello.put_slice(self.cluster.as_bytes());
        framed
            .send(hello.freeze())
            .await
            .map_err(|e| io(e.to_string()))?;
        let (mut sink, mut stream) = framed.split();
        let (tx, mut rx) = mpsc::channel::<Bytes>(1024);
        let pending: Pending = Arc::new(Mutex::new(HashMap::new()));
        let closed = CancellationToken::new();
        let link = Arc::new(Link {
            frames: tx,
            pending: pending.clone(),
            closed: closed.clone(),
        });
        let writer_closed = closed.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = writer_closed.cancelled() => break,
                    frame = rx.recv() => match frame {
                        Some(f) => if sink.send(f).await.is_err() { break },
                        None => break,
                    }
                }
            }
            writer_closed.cancel();
        });
        tokio::spawn(async move {
            loop {
                let frame = tokio::select! {
                    _ = closed.cancelled() => break,
                    f = stream.next() => f,
                };
                let Some(Ok(mut frame)) = frame else { break };
                if frame.len() < 10 || frame[0] != KIND_RESPONSE {
                    break;
                }
                frame.advance(1);
                let id = frame.get_u64();
                let ok = frame.get_u8() == 0;
                let waiter = pending.lock().expect("pending lock").remove(&id);
                if let Some(w) = waiter {
                    let body = frame.freeze();
                    let _ = w.send(if ok {
                        Ok(body)
                    } else {
                        Err(String::from_utf8_lossy(&body).into_owned())
                    });
                }
            }
            closed.cancel();
            // Fail every call still waiting on this connection.
            pending.lock().expect("pending lock").clear();
        });
        links.insert(node, link.clone());
        debug!(peer = node, %addr, "connected to peer");
        Ok(link)
    }

    /// Sends one request to `node` for `group` and waits for the answer.
    pub(crate) async fn call(
        &self,
        node: NodeId,
        addr_hint: Option<&str>,
        group: u64,
        kind: u8,
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<Bytes, PeerError> {
        let started = std::time::Instant::now();
        let link = self.link(node, addr_hint).await?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut frame = BytesMut::with_capacity(17 + body.len());
        frame.put_u8(kind);
        frame.put_u64(id);
        frame.put_u64(group);
        frame.put_slice(&body);
        let (tx, rx) = oneshot::channel();
        link.pending.lock().expect("pending lock").insert(id, tx);
        let io = |message: &str| PeerError::Io {
            node,
            addr: addr_hint.unwrap_or_default().to_owned(),
            message: message.to_owned(),
        };
        if link.frames.send(frame.freeze()).await.is_err() {
            link.pending.lock().expect("pending lock").remove(&id);
            return Err(io("connection closed"));
        }
        let answer = match tokio::time::timeout(timeout, rx).await {
            Err(_) => {
                link.pending.lock().expect("pending lock").remove(&id);
                return Err(PeerError::Timeout(node, timeout));
            }
            Ok(Err(_)) => return Err(io("connection lost")),
            Ok(Ok(a)) => a,
        };
        if let Some(observe) = self.rtt_observer.read().expect("rtt lock").as_ref() {
            observe(node, started.elapsed().as_secs_f64());
        }
        answer.map_err(|m| PeerError::Refused(node, m))
    }

    /// Accepts peer connections until `shutdown`; each request is dispatched
    /// to its local group.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, shutdown: CancellationToken) {
        loop {
            let accepted = tokio::select! {
                _ = shutdown.cancelled() => return,
                a = listener.accept() => a,
            };
            let (stream, remote) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    warn!(error = %e, "peer accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let me = self.clone();
            let stop = shutdown.clone();
            let span = tracing::info_span!("peer_conn", %remote);
            tokio::spawn(async move { me.serve_connection(stream, stop).await }.instrument(span));
        }
    }

    /// The peer's stream after the TLS handshake (if TLS is on) and the
    /// node id its certificate proves; `None` when refused (logged).
    async fn accept_tls(&self, stream: TcpStream) -> Option<(PeerStream, Option<NodeId>)> {
        let Some(tls) = &self.tls else {
            return Some((Box::new(stream), None));
        };
        let accepted =
            tokio::time::timeout(PEER_HANDSHAKE_TIMEOUT, tls.peer_acceptor().accept(stream)).await;
        let stream = match accepted {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                warn!(target: "tern::security", error = %e, "refused peer: TLS handshake failed");
                return None;
            }
            Err(_) => {
                warn!("refused peer: TLS handshake timed out");
                return None;
            }
        };
        let proven = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(tern_tls::node_id_of);
        let Some(proven) = proven else {
            warn!(
                target: "tern::security",
                "refused peer: its certificate proves no node id (not a broker certificate)"
            );
            return None;
        };
        Some((Box::new(stream), Some(proven)))
    }

    async fn serve_connection(self: Arc<Self>, stream: TcpStream, shutdown: CancellationToken) {
        let handshake = tokio::select! {
            _ = shutdown.cancelled() => return,
            a = self.accept_tls(stream) => a,
        };
        let Some((stream, proven)) = handshake else {
            return;
        };
        let (mut sink, mut frames) = Framed::new(stream, codec()).split();
        // Hello first.
        let hello = tokio::select! {
            _ = shutdown.cancelled() => return,
            h = tokio::time::timeout(PEER_HANDSHAKE_TIMEOUT, frames.next()) => h,
        };
        let Ok(Some(Ok(mut hello))) = hello else {
            return;
        };
        if hello.len() < 19 || hello[0] != KIND_HELLO {
            warn!("peer sent no hello; closing");
            return;
        }
        hello.advance(1);
        let version = hello.get_u16();
        let from = hello.get_u64();
        let to = hello.get_u64();
        let cluster = String::from_utf8_lossy(&hello).into_owned();
        if version != PEER_PROTOCOL_VERSION || to != self.node_id || cluster != self.cluster {
            warn!(
                peer = from,
                version,
                expected_version = PEER_PROTOCOL_VERSION,
                addressed_to = to,
                node_id = self.node_id,
                peer_cluster = %cluster,
                cluster = %self.cluster,
                "refused peer: wrong protocol version, node id or cluster"
            );
            return;
        }
        if proven.is_some_and(|id| id != from) {
            warn!(
                target: "tern::security",
                peer = from,
                certificate_node_id = proven,
                "refused peer: the hello's sender is not the node its certificate proves"
            );
            return;
        }
        if let Err(why) = self.admit(from).await {
            warn!(target: "tern::security", peer = from, %why, "refused peer");
            return;
        }
        info!(peer = from, tls = proven.is_some(), "peer connected");
        let (tx, mut rx) = mpsc::channel::<Bytes>(1024);
        let writer = tokio::spawn(async move {
            while let Some(f) = rx.recv().await {
                if sink.send(f).await.is_err() {
                    break;
                }
            }
        });
        // Once this node has seen the peer among its members, the peer
        // leaving that view means it was removed: its connection ends.
        let mut seen_as_member = false;
        let mut checked = std::time::Instant::now() - PEER_MEMBERSHIP_RECHECK;
        loop {
            let frame = tokio::select! {
                _ = shutdown.cancelled() => break,
                f = frames.next() => f,
            };
            let Some(Ok(mut frame)) = frame else { break };
            if checked.elapsed() >= PEER_MEMBERSHIP_RECHECK {
                checked = std::time::Instant::now();
                let view = self.member_view().unwrap_or_default();
                if view.members.contains(&from) {
                    seen_as_member = true;
                } else if seen_as_member && view.joined {
                    warn!(
                        target: "tern::security",
                        peer = from,
                        "closing the connection of a peer that is no longer a member"
                    );
                    break;
                }
            }
            if frame.len() < 17 {
                warn!(peer = from, "short peer frame; closing");
                break;
            }
            let kind = frame.get_u8();
            let id = frame.get_u64();
            let group = frame.get_u64();
            let body = frame.freeze();
            let me = self.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let answer = me.dispatch(kind, group, body).await;
                let mut out = BytesMut::new();
                out.put_u8(KIND_RESPONSE);
                out.put_u64(id);
                match answer {
                    Ok(b) => {
                        out.put_u8(0);
                        out.put_slice(&b);
                    }
                    Err(m) => {
                        out.put_u8(1);
                        out.put_slice(m.as_bytes());
                    }
                }
                let _ = tx.send(out.freeze()).await;
            });
        }
        drop(tx);
        let _ = writer.await;
    }

    async fn dispatch(&self, kind: u8, group: u64, body: Bytes) -> Result<Vec<u8>, String> {
        if kind == KIND_WAS_MEMBER {
            let node: NodeId = decode(&body)?;
            let handler = self.was_member.read().expect("handler lock").clone();
            return encode(&handler.is_some_and(|h| h(node)));
        }
        if kind == KIND_IS_MEMBER {
            let node: NodeId = decode(&body)?;
            let view = self.member_view().unwrap_or_default();
            return encode(&view.members.contains(&node));
        }
        if kind == KIND_COORD_PLUGINS {
            let handler = self.coord_plugins.read().expect("handler lock").clone();
            // Not answering until the broker has set it: an empty answer
            // would read as "runs other plugins".
            let handler = handler.ok_or("the broker is still starting")?;
            return encode(&handler());
        }
        if kind == KIND_LEADERS_OF {
            let groups = decode_group_asks(&body)?;
            let leaders: Vec<Option<NodeId>> = groups
                .iter()
                .map(|g| {
                    self.group(*g)
                        .and_then(|raft| raft.metrics().borrow().current_leader)
                })
                .collect();
            return encode(&leaders);
        }
        if kind == KIND_LEADER_OF {
            let raft = self.group(group).ok_or("group not hosted here")?;
            let leader = raft.metrics().borrow().current_leader;
            return encode(&leader);
        }
        if kind == KIND_LOG_ENDS_OF {
            let groups = decode_group_asks(&body)?;
            let ends: Vec<Option<u64>> = groups
                .iter()
                .map(|g| {
                    let metrics = self.group(*g)?.metrics();
                    let m = metrics.borrow();
                    (m.current_leader == Some(self.node_id)).then(|| m.last_log_index.unwrap_or(0))
                })
                .collect();
            return encode(&ends);
        }
        if kind == KIND_CLUSTER_CHANGE {
            let change: crate::ClusterChange = decode(&body)?;
            let handler = self
                .cluster_change
                .read()
                .expect("handler lock")
                .clone()
                .ok_or("cluster changes are not served here")?;
            return encode(&handler(change).await);
        }
        let raft = self
            .group(group)
            .ok_or_else(|| format!("node {} does not host group {group:#x}", self.node_id))?;
        match kind {
            KIND_APPEND => {
                let rpc: AppendEntriesRequest<TernRaft> = decode(&body)?;
                encode(&raft.append_entries(rpc).await)
            }
            KIND_VOTE => {
                let rpc: VoteRequest<NodeId> = decode(&body)?;
                encode(&raft.vote(rpc).await)
            }
            KIND_SNAPSHOT => {
                let rpc: InstallSnapshotRequest<TernRaft> = decode(&body)?;
                let admitted = self
                    .snapshot_intake
                    .lock()
                    .expect("snapshot intake lock")
                    .admit(
                        group,
                        &rpc.meta.snapshot_id,
                        rpc.offset,
                        rpc.data.len() as u64,
                        rpc.done,
                    );
                if let Err(refused) = admitted {
                    warn!(target: "tern::security", group, %refused, "refused a snapshot chunk");
                    return Err(refused);
                }
                encode(&raft.install_snapshot(rpc).await)
            }
            KIND_META_WRITE => {
                let mut command: Command = decode(&body)?;
                crate::stamp(&raft, &mut command);
                encode(&raft.client_write(command).await.map(|r| r.data))
            }
            other => Err(format!("unknown peer request kind {other}")),
        }
    }
}

/// The group ids of a [`KIND_LEADERS_OF`] or [`KIND_LOG_ENDS_OF`] ask,
/// refused whole past [`LEADER_ASKS_PER_CALL_MAX`].
fn decode_group_asks(body: &[u8]) -> Result<Vec<u64>, String> {
    let groups: Vec<u64> = decode(body)?;
    if groups.len() > LEADER_ASKS_PER_CALL_MAX {
        return Err(format!(
            "{} groups asked in one call; at most {LEADER_ASKS_PER_CALL_MAX} \
             (leader_asks_per_call_max)",
            groups.len()
        ));
    }
    Ok(groups)
}

fn codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .max_frame_length(PEER_FRAME_BYTES_MAX)
        .new_codec()
}

pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, String> {
    bincode::serialize(value).map_err(|e| e.to_string())
}

pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    bincode::deserialize(bytes).map_err(|e| format!("undecodable peer message: {e}"))
}

/// Creates the per-target clients openraft uses for one group.
#[derive(Clone)]
pub struct GroupNetwork {
    transport: Arc<Transport>,
    group: u64,
}

impl GroupNetwork {
    /// The network of `group` over `transport`.
    pub fn new(transport: Arc<Transport>, group: u64) -> Self {
        GroupNetwork { transport, group }
    }
}

/// One group's link to one peer.
pub struct GroupPeer {
    transport: Arc<Transport>,
    group: u64,
    target: NodeId,
    addr: String,
}

impl RaftNetworkFactory<TernRaft> for GroupNetwork {
    type Network = GroupPeer;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> GroupPeer {
        GroupPeer {
            transport: self.transport.clone(),
            group: self.group,
            target,
            addr: node.addr.clone(),
        }
    }
}

impl GroupPeer {
    /// Whether the target is a learner of this group (a replica being
    /// added), not a voter.
    fn to_learner(&self) -> bool {
        self.transport.group(self.group).is_some_and(|raft| {
            !raft
                .metrics()
                .borrow()
                .membership_config
                .membership()
                .voter_ids()
                .any(|v| v == self.target)
        })
    }

    async fn rpc<Req: Serialize, Resp: DeserializeOwned, E>(
        &self,
        kind: u8,
        request: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>
    where
        E: std::error::Error + DeserializeOwned,
        Result<Resp, RaftError<NodeId, E>>: DeserializeOwned,
    {
        let body = encode(request).map_err(|e| {
            RPCError::Unreachable(Unreachable::new(&PeerError::Decode(self.target, e)))
        })?;
        if matches!(kind, KIND_APPEND | KIND_SNAPSHOT)
            && self.group != crate::META_GROUP
            && self.transport.learner_throttle.rate() > 0
            && self.to_learner()
        {
            self.transport.learner_throttle.admit(body.len()).await;
        }
        let answer = self
            .transport
            .call(
                self.target,
                Some(&self.addr),
                self.group,
                kind,
                body,
                option.hard_ttl(),
            )
            .await
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))?;
        let result: Result<Resp, RaftError<NodeId, E>> = decode(&answer).map_err(|e| {
            RPCError::Unreachable(Unreachable::new(&PeerError::Decode(self.target, e)))
        })?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TernRaft> for GroupPeer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TernRaft>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.rpc(KIND_APPEND, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TernRaft>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.rpc(KIND_SNAPSHOT, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.rpc(KIND_VOTE, &rpc, &option).await
    }
}

#[cfg(test)]
mod snapshot_intake_tests {
    use super::*;

    #[test]
    fn a_snapshot_grows_only_by_contiguous_chunks_and_within_its_cap() {
        let mut intake = SnapshotIntake::default();
        intake.admit(7, "a", 0, 100, false).unwrap();
        intake.admit(7, "a", 100, 100, false).unwrap();
        // A retried chunk rewrites what is there.
        intake.admit(7, "a", 100, 100, false).unwrap();
        // A hole (or a chunk far away) is refused, and changes nothing.
        let err = intake.admit(7, "a", 1 << 40, 1, false).unwrap_err();
        assert!(err.contains("hole"), "{err}");
        intake.admit(7, "a", 200, 50, true).unwrap();
        // A new snapshot of the group starts at 0, not in the middle.
        assert!(intake.admit(7, "b", 10, 1, false).is_err());
        intake.admit(7, "b", 0, 10, false).unwrap();
        // Other groups are tracked apart.
        intake.admit(8, "a", 0, 10, false).unwrap();
        // The cap holds, overflow included.
        let mut big = SnapshotIntake::default();
        assert!(big.admit(1, "x", 0, SNAPSHOT_BYTES_MAX + 1, false).is_err());
        big.admit(1, "x", 0, SNAPSHOT_BYTES_MAX, false).unwrap();
        assert!(big
            .admit(1, "x", SNAPSHOT_BYTES_MAX, u64::MAX, false)
            .is_err());
    }
}

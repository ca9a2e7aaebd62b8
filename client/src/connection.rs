//! One TCP connection to one broker, with pipelining: many requests in
//! flight, answers matched by correlation id. Requests are written in the
//! order [`Connection::request`] is called, which the producer relies on for
//! per-partition ordering.
//!
//! A connection also owns its **liveness check**. A broker that is paused
//! (SIGSTOP, a frozen VM, a stalled host) keeps its TCP connections open —
//! its kernel still acknowledges every byte and answers keepalives — so
//! neither a reset nor TCP keepalive ever reports it. Instead, while at least
//! one request awaits its answer, a connection that has heard nothing for a
//! third of `liveness_timeout` sends a ping (an empty metadata request,
//! answered by the broker locally, concurrently with anything it holds),
//! and one that has heard nothing for the whole `liveness_timeout` is
//! declared dead: every waiting request fails with the retriable
//! [`ClientError::Unresponsive`], the socket is dropped, and the address is
//! noted as suspect so metadata is asked of other brokers first. A broker
//! that is only busy still answers pings, so long polls and lock waits held
//! by the broker are not mistaken for a dead peer.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use tern_protocol::{FrameCodec, Request, RequestFrame, Response, ResponseFrame};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::AbortHandle;
use tokio::time::Instant;
use tokio_util::codec::{FramedRead, FramedWrite};

use crate::error::ClientError;

/// A connection's byte stream: plain TCP or TLS over it.
trait ByteStream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> ByteStream for T {}

/// The name a broker's certificate must carry for `addr` (`host:port`): an
/// IP address or a DNS name.
fn server_name(addr: &str) -> Option<tern_tls::ServerName<'static>> {
    let (host, _port) = addr.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    tern_tls::ServerName::try_from(host.to_owned()).ok()
}

/// Requests queued for the socket before callers wait.
const WRITE_QUEUE_DEPTH: usize = 1024;

/// Liveness timeout of connections opened with [`Connection::connect`]
/// (the [`crate::ClientConfig`] default).
pub(crate) const LIVENESS_TIMEOUT_DEFAULT: Duration = Duration::from_secs(3);

type Pending = Arc<Mutex<HashMap<u32, oneshot::Sender<Result<Response, ClientError>>>>>;

/// Addresses whose last connection was declared dead, with when that
/// suspicion lapses. Shared by a client's connections.
pub(crate) type Suspects = Arc<Mutex<HashMap<String, std::time::Instant>>>;

/// How long an address stays suspect after its connection was declared dead,
/// unless a new connection hears from it first.
const SUSPECT_MS: u64 = 30_000;

/// The timeouts a connection applies.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timeouts {
    pub(crate) connect: Duration,
    pub(crate) request: Duration,
    /// Zero disables the liveness check.
    pub(crate) liveness: Duration,
}

/// A pipelined connection. Cloning shares the socket.
#[derive(Clone, Debug)]
pub struct Connection {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    addr: String,
    next_id: AtomicU32,
    pending: Pending,
    writer: mpsc::Sender<Bytes>,
    closed: AtomicBool,
    /// Set when the liveness check gave up on the broker.
    unresponsive: AtomicBool,
    timeout: Duration,
    /// When the connection opened; `heard_ms` counts from here.
    opened: Instant,
    /// Milliseconds after `opened` when the broker was last heard from, or
    /// when a request started waiting on a quiet connection.
    heard_ms: AtomicU64,
    /// The reader and writer tasks, aborted when the connection is declared
    /// dead (dropping the socket).
    tasks: Mutex<Vec<AbortHandle>>,
    suspects: Option<Suspects>,
}

impl Connection {
    /// Connects to `addr` (`host:port`); answers that take longer than
    /// `request_timeout` fail with [`ClientError::Timeout`], and a broker
    /// that stops answering altogether is detected after the default
    /// liveness timeout of 3 s (see the module documentation).
    ///
    /// # Cancel safety
    /// Cancel safe: the socket is dropped with the future.
    pub async fn connect(
        addr: &str,
        connect_timeout: Duration,
        request_timeout: Duration,
    ) -> Result<Connection, ClientError> {
        let timeouts = Timeouts {
            connect: connect_timeout,
            request: request_timeout,
            liveness: LIVENESS_TIMEOUT_DEFAULT,
        };
        Self::open(addr, timeouts, None, None, None).await
    }

    /// Connects to `addr` with the timeouts and TLS settings of `config`
    /// (one connection, no seed list, no metadata: see [`crate::Client`] for
    /// that).
    ///
    /// # Cancel safety
    /// Cancel safe: the socket is dropped with the future.
    pub async fn connect_with(
        addr: &str,
        config: &crate::ClientConfig,
    ) -> Result<Connection, ClientError> {
        let tls = config.tls.as_ref().map(|t| t.connector()).transpose()?;
        let timeouts = Timeouts {
            connect: config.connect_timeout,
            request: config.request_timeout,
            liveness: config.liveness_timeout,
        };
        Self::open(
            addr,
            timeouts,
            tls.as_ref(),
            None,
            config.credentials.as_ref(),
        )
        .await
    }

    /// Connects with every timeout given, over TLS when `tls` is given (the
    /// broker's certificate must name the host of `addr` and chain to the
    /// configured CA; the handshake counts towards the connect timeout); a
    /// connection declared dead marks `addr` in `suspects`, a connection
    /// that hears from it clears it. With `credentials`, the connection
    /// authenticates (SCRAM-SHA-256) before it is handed out; the exchange
    /// counts towards the connect timeout too.
    pub(crate) async fn open(
        addr: &str,
        timeouts: Timeouts,
        tls: Option<&tern_tls::TlsConnector>,
        suspects: Option<Suspects>,
        credentials: Option<&crate::Credentials>,
    ) -> Result<Connection, ClientError> {
        let failed = |message: String| ClientError::connect(addr, std::io::Error::other(message));
        let open = async {
            let stream = TcpStream::connect(addr)
                .await
                .map_err(|e| ClientError::connect(addr, e))?;
            let _ = stream.set_nodelay(true);
            let mut stream = match tls {
                None => Box::new(stream) as Box<dyn ByteStream>,
                Some(tls) => {
                    let name = server_name(addr)
                        .ok_or_else(|| failed("no host name in address".into()))?;
                    let stream = tls
                        .connect(name, stream)
                        .await
                        .map_err(|e| failed(format!("TLS handshake: {e}")))?;
                    Box::new(stream) as Box<dyn ByteStream>
                }
            };
            if let Some(credentials) = credentials {
                crate::auth::authenticate(&mut stream, addr, credentials).await?;
            }
            Ok(stream)
        };
        let stream = tokio::time::timeout(timeouts.connect, open)
            .await
            .map_err(|_| {
                let timed_out = std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("timed out after {:?}", timeouts.connect),
                );
                ClientError::connect(addr, timed_out)
            })??;
        let (r, w) = tokio::io::split(stream);
        let (tx, mut rx) = mpsc::channel::<Bytes>(WRITE_QUEUE_DEPTH);
        let inner = Arc::new(Inner {
            addr: addr.to_owned(),
            next_id: AtomicU32::new(1),
            pending: Arc::new(Mutex::new(HashMap::new())),
            writer: tx,
            closed: AtomicBool::new(false),
            unresponsive: AtomicBool::new(false),
            timeout: timeouts.request,
            opened: Instant::now(),
            heard_ms: AtomicU64::new(0),
            tasks: Mutex::new(Vec::new()),
            suspects,
        });
        // The tasks hold the shared state, not the handle: dropping every
        // `Connection` closes the write half, the broker then closes its end,
        // and the reader ends.
        let shared = Arc::downgrade(&inner);
        let (pending, addr_w) = (inner.pending.clone(), addr.to_owned());
        let writer = tokio::spawn(async move {
            let mut sink = FramedWrite::new(w, FrameCodec::default());
            'write: while let Some(first) = rx.recv().await {
                if sink.feed(first).await.is_err() {
                    break;
                }
                while let Ok(more) = rx.try_recv() {
                    if sink.feed(more).await.is_err() {
                        break 'write;
                    }
                }
                if sink.flush().await.is_err() {
                    break;
                }
            }
            if let Some(inner) = shared.upgrade() {
                inner.closed.store(true, Ordering::Release);
            }
            fail_all(&pending, || ClientError::ConnectionClosed {
                addr: addr_w.clone(),
            });
        });
        let shared = Arc::downgrade(&inner);
        let (pending, addr_r) = (inner.pending.clone(), addr.to_owned());
        let was_suspect = inner.is_suspect();
        let reader = tokio::spawn(async move {
            let mut frames = FramedRead::new(r, FrameCodec::default());
            let mut clear_suspicion = was_suspect;
            while let Some(Ok(body)) = frames.next().await {
                if let Some(inner) = shared.upgrade() {
                    inner.heard();
                    if clear_suspicion {
                        clear_suspicion = false;
                        inner.set_suspect(false);
                    }
                }
                let Ok(frame) = ResponseFrame::decode(body) else {
                    break; // a broker we cannot understand: drop the link
                };
                let reply = pending
                    .lock()
                    .expect("pending lock")
                    .remove(&frame.correlation_id);
                if let Some(reply) = reply {
                    let _ = reply.send(frame.result.map_err(|e| ClientError::Broker {
                        code: e.code,
                        message: e.message,
                    }));
                }
            }
            if let Some(inner) = shared.upgrade() {
                inner.closed.store(true, Ordering::Release);
            }
            fail_all(&pending, || ClientError::ConnectionClosed {
                addr: addr_r.clone(),
            });
        });
        inner
            .tasks
            .lock()
            .expect("tasks lock")
            .extend([writer.abort_handle(), reader.abort_handle()]);
        if !timeouts.liveness.is_zero() {
            tokio::spawn(watch_liveness(Arc::downgrade(&inner), timeouts.liveness));
        }
        Ok(Connection { inner })
    }

    /// The broker address.
    pub fn addr(&self) -> &str {
        &self.inner.addr
    }

    /// Whether the socket is gone (a new connection is needed).
    pub fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::Acquire)
    }

    /// Whether the liveness check declared the broker dead.
    pub fn is_unresponsive(&self) -> bool {
        self.inner.unresponsive.load(Ordering::Acquire)
    }

    /// Sends a request and waits for its answer, up to the connection's
    /// request timeout plus `extra` (for long-polling fetches).
    ///
    /// # Cancel safety
    /// Cancelled before the request reached the write queue, it is not
    /// sent; after, it is sent and may take effect, and its answer is
    /// dropped on arrival.
    pub async fn request_with(
        &self,
        request: Request,
        extra: Duration,
    ) -> Result<Response, ClientError> {
        let answer = self.submit(request).await?;
        let limit = self.inner.timeout + extra;
        match tokio::time::timeout(limit, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(ClientError::ConnectionClosed {
                addr: self.inner.addr.clone(),
            }),
            Err(_) => Err(ClientError::Timeout(limit)),
        }
    }

    /// Sends a request and waits for its answer.
    ///
    /// # Cancel safety
    /// As [`Connection::request_with`].
    pub async fn request(&self, request: Request) -> Result<Response, ClientError> {
        self.request_with(request, Duration::ZERO).await
    }

    /// Queues a request on the socket and returns the receiver of its
    /// answer. Requests are written in the order `submit` is called.
    ///
    /// # Cancel safety
    /// Cancelled while the write queue is full, the request is not sent
    /// (and keeps no place in the order); once this returns, it is queued.
    pub async fn submit(
        &self,
        request: Request,
    ) -> Result<oneshot::Receiver<Result<Response, ClientError>>, ClientError> {
        if self.is_closed() {
            return Err(self.inner.closed_error());
        }
        let correlation_id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let mut buf = BytesMut::new();
        RequestFrame {
            correlation_id,
            request,
        }
        .encode(&mut buf);
        let (tx, rx) = oneshot::channel();
        {
            let mut pending = self.inner.pending.lock().expect("pending lock");
            // The liveness clock starts when a request starts waiting on a
            // connection that had nothing to wait for: an idle connection
            // is silent by right.
            if pending.is_empty() {
                self.inner.heard();
            }
            pending.insert(correlation_id, tx);
        }
        // Closing marks the connection closed, then fails what is waiting:
        // a request inserted after that sweep sees the mark here.
        if self.is_closed() || self.inner.writer.send(buf.freeze()).await.is_err() {
            self.inner
                .pending
                .lock()
                .expect("pending lock")
                .remove(&correlation_id);
            return Err(self.inner.closed_error());
        }
        Ok(rx)
    }
}

impl Inner {
    fn now_ms(&self) -> u64 {
        self.opened.elapsed().as_millis() as u64
    }

    fn heard(&self) {
        self.heard_ms.store(self.now_ms(), Ordering::Release);
    }

    fn closed_error(&self) -> ClientError {
        if self.unresponsive.load(Ordering::Acquire) {
            ClientError::Unresponsive {
                addr: self.addr.clone(),
            }
        } else {
            ClientError::ConnectionClosed {
                addr: self.addr.clone(),
            }
        }
    }

    fn is_suspect(&self) -> bool {
        let Some(suspects) = &self.suspects else {
            return false;
        };
        let mut suspects = suspects.lock().expect("suspects lock");
        match suspects.get(&self.addr) {
            Some(until) if *until > std::time::Instant::now() => true,
            Some(_) => {
                suspects.remove(&self.addr);
                false
            }
            None => false,
        }
    }

    fn set_suspect(&self, suspect: bool) {
        let Some(suspects) = &self.suspects else {
            return;
        };
        let mut suspects = suspects.lock().expect("suspects lock");
        if suspect {
            let until = std::time::Instant::now() + Duration::from_millis(SUSPECT_MS);
            suspects.insert(self.addr.clone(), until);
        } else {
            suspects.remove(&self.addr);
        }
    }

    /// Gives up on the broker: fails every waiting request, drops the socket.
    fn declare_dead(&self, silent: Duration) {
        tracing::warn!(
            addr = %self.addr,
            silent_ms = silent.as_millis() as u64,
            "broker sent nothing while requests waited, pings included; dropping the connection"
        );
        self.unresponsive.store(true, Ordering::Release);
        self.closed.store(true, Ordering::Release);
        self.set_suspect(true);
        for task in self.tasks.lock().expect("tasks lock").drain(..) {
            task.abort();
        }
        fail_all(&self.pending, || ClientError::Unresponsive {
            addr: self.addr.clone(),
        });
    }

    /// Queues a ping unless the write queue is full (then the socket is
    /// already busy sending and a ping would add nothing).
    fn ping(&self) {
        let correlation_id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut buf = BytesMut::new();
        RequestFrame {
            correlation_id,
            // Answered from the broker's memory: no topic, no Raft, no peer.
            request: Request::Metadata {
                topics: Some(Vec::new()),
            },
        }
        .encode(&mut buf);
        // Nobody waits for the answer: any frame heard is proof of life,
        // and the reader drops answers without a waiting request.
        let _ = self.writer.try_send(buf.freeze());
    }
}

/// Fails every waiting request with `error()`.
fn fail_all(pending: &Pending, error: impl Fn() -> ClientError) {
    let waiting: Vec<_> = pending.lock().expect("pending lock").drain().collect();
    for (_, reply) in waiting {
        let _ = reply.send(Err(error()));
    }
}

/// The liveness check of one connection (see the module documentation).
/// Ends when the connection closes or every handle on it is dropped.
async fn watch_liveness(conn: Weak<Inner>, liveness: Duration) {
    let liveness_ms = liveness.as_millis().max(3) as u64;
    let ping_after_ms = liveness_ms / 3;
    let tick = Duration::from_millis((liveness_ms / 12).max(1));
    let mut last_ping_ms: Option<u64> = None;
    let mut woke = Instant::now();
    loop {
        tokio::time::sleep(tick).await;
        let Some(inner) = conn.upgrade() else { return };
        if inner.closed.load(Ordering::Acquire) {
            return;
        }
        // A late wake-up means this process, not the broker, was stalled
        // (an overloaded machine, a blocked runtime): answers may be sitting
        // unread in the socket. Judge only time this check was awake for.
        let late = woke.elapsed().saturating_sub(tick);
        woke = Instant::now();
        if late.as_millis() as u64 >= ping_after_ms {
            inner.heard();
            continue;
        }
        if inner.pending.lock().expect("pending lock").is_empty() {
            last_ping_ms = None;
            continue;
        }
        let now = inner.now_ms();
        let heard = inner.heard_ms.load(Ordering::Acquire);
        let silent_ms = now.saturating_sub(heard);
        if silent_ms >= liveness_ms {
            inner.declare_dead(Duration::from_millis(silent_ms));
            return;
        }
        let pinged_since_heard = last_ping_ms.is_some_and(|p| p >= heard);
        let ping_due = match last_ping_ms {
            Some(p) if pinged_since_heard => now.saturating_sub(p) >= ping_after_ms,
            _ => silent_ms >= ping_after_ms,
        };
        if ping_due {
            inner.ping();
            last_ping_ms = Some(now);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    //! A fake broker on loopback, scripted per connection, for the client's
    //! connect, liveness and bootstrap rules.

    use super::*;
    use std::sync::atomic::AtomicUsize;
    use tern_protocol::api::BrokerInfo;
    use tokio::net::TcpListener;

    /// What the fake broker does with one accepted connection.
    #[derive(Clone, Copy, Debug)]
    pub(crate) enum Behaviour {
        /// Closes it at once (a broker still starting, or going away).
        Close,
        /// Reads requests and never answers (a paused process: its kernel
        /// keeps the connection open).
        Hang,
        /// Answers metadata at once and holds other requests this long.
        Serve { hold: Duration },
    }

    /// A fake broker: connection `i` gets `script(i)`.
    pub(crate) struct FakeBroker {
        pub(crate) addr: String,
        pub(crate) accepted: Arc<AtomicUsize>,
        task: tokio::task::JoinHandle<()>,
    }

    impl Drop for FakeBroker {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    impl FakeBroker {
        pub(crate) async fn start(
            script: impl Fn(usize) -> Behaviour + Send + Sync + 'static,
        ) -> FakeBroker {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let addr = listener.local_addr().expect("addr").to_string();
            let accepted = Arc::new(AtomicUsize::new(0));
            let counter = accepted.clone();
            let port = listener.local_addr().expect("addr").port();
            let task = tokio::spawn(async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        return;
                    };
                    let i = counter.fetch_add(1, Ordering::SeqCst);
                    match script(i) {
                        Behaviour::Close => drop(stream),
                        behaviour => {
                            tokio::spawn(serve(stream, behaviour, port));
                        }
                    }
                }
            });
            FakeBroker {
                addr,
                accepted,
                task,
            }
        }
    }

    async fn serve(stream: TcpStream, behaviour: Behaviour, port: u16) {
        let (r, w) = stream.into_split();
        let mut frames = FramedRead::new(r, FrameCodec::default());
        let (tx, mut rx) = mpsc::unbounded_channel::<Bytes>();
        tokio::spawn(async move {
            let mut sink = FramedWrite::new(w, FrameCodec::default());
            while let Some(b) = rx.recv().await {
                if sink.send(b).await.is_err() {
                    return;
                }
            }
        });
        while let Some(Ok(body)) = frames.next().await {
            let Behaviour::Serve { hold } = behaviour else {
                continue; // hung: read, never answer
            };
            let frame = RequestFrame::decode(body).expect("a request");
            let (response, delay) = match frame.request {
                Request::Metadata { .. } => (
                    Response::Metadata {
                        brokers: vec![BrokerInfo {
                            node_id: 1,
                            host: "127.0.0.1".into(),
                            port,
                        }],
                        topics: vec![],
                        controller: 1,
                    },
                    Duration::ZERO,
                ),
                _ => (Response::DeleteTopic, hold),
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let mut buf = BytesMut::new();
                ResponseFrame {
                    correlation_id: frame.correlation_id,
                    result: Ok(response),
                }
                .encode(&mut buf);
                let _ = tx.send(buf.freeze());
            });
        }
    }

    fn timeouts(liveness_ms: u64) -> Timeouts {
        Timeouts {
            connect: Duration::from_secs(1),
            request: Duration::from_secs(30),
            liveness: Duration::from_millis(liveness_ms),
        }
    }

    fn delete() -> Request {
        Request::DeleteTopic { name: "t".into() }
    }

    #[tokio::test]
    async fn a_broker_that_stops_answering_fails_requests_within_the_liveness_timeout() {
        let broker = FakeBroker::start(|_| Behaviour::Hang).await;
        let suspects = Suspects::default();
        let conn = Connection::open(
            &broker.addr,
            timeouts(600),
            None,
            Some(suspects.clone()),
            None,
        )
        .await
        .unwrap();
        let started = Instant::now();
        let answer = conn.request(delete()).await;
        let waited = started.elapsed();
        assert!(
            matches!(answer, Err(ClientError::Unresponsive { .. })),
            "{answer:?}"
        );
        assert!(answer.unwrap_err().is_retriable());
        // The request timeout is 30 s: only the liveness check ends it.
        assert!(waited >= Duration::from_millis(600), "{waited:?}");
        assert!(waited < Duration::from_secs(5), "{waited:?}");
        assert!(conn.is_closed() && conn.is_unresponsive());
        assert!(suspects.lock().unwrap().contains_key(&broker.addr));
        let again = conn.submit(delete()).await;
        assert!(matches!(again, Err(ClientError::Unresponsive { .. })));
    }

    #[tokio::test]
    async fn a_broker_holding_a_request_but_answering_pings_is_alive() {
        let broker = FakeBroker::start(|_| Behaviour::Serve {
            hold: Duration::from_millis(2_000),
        })
        .await;
        let suspects = Suspects::default();
        // A suspect that answers is cleared.
        suspects.lock().unwrap().insert(
            broker.addr.clone(),
            std::time::Instant::now() + Duration::from_secs(60),
        );
        let conn = Connection::open(
            &broker.addr,
            timeouts(600),
            None,
            Some(suspects.clone()),
            None,
        )
        .await
        .unwrap();
        // Held for more than three liveness timeouts: the pings keep it.
        let answer = conn.request(delete()).await;
        assert!(matches!(answer, Ok(Response::DeleteTopic)), "{answer:?}");
        assert!(!conn.is_closed());
        assert!(suspects.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_request_after_a_long_idle_spell_is_judged_from_when_it_was_sent() {
        let broker = FakeBroker::start(|_| Behaviour::Serve {
            hold: Duration::from_millis(200),
        })
        .await;
        let conn = Connection::open(&broker.addr, timeouts(300), None, None, None)
            .await
            .unwrap();
        // Idle for several liveness timeouts: nothing waits, so the silence
        // is normal and must not count against the next request.
        tokio::time::sleep(Duration::from_millis(1_000)).await;
        assert!(!conn.is_closed());
        let answer = conn.request(delete()).await;
        assert!(matches!(answer, Ok(Response::DeleteTopic)), "{answer:?}");
    }
}
